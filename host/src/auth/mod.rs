//! Orgs, projects, API keys, session tokens and embed keys: who a request
//! acts as (PROTOCOL.md, "Addressing").
//!
//! - **API keys** (`kt_live_` + 32 random base62 characters) act for a
//!   whole org with a scope (`read < write < admin`). Only the key's
//!   SHA-256 digest and its first 12 characters are stored; the key itself
//!   is shown once, when it is made.
//! - **Session tokens** are HS256 JWTs bound to one project, with claims
//!   `org_id, project_id, project_slug, scope, exp, iat, jti` and `sub`
//!   when the end user is known. They live 15 minutes by default (at most
//!   24 hours) and are verified offline; the header's `kid` names the
//!   signing key (see `secrets.rs`: the key file under
//!   `<data_dir>/secrets/`, rotated with [`Auth::rotate_token_secret`]).
//! - **Embed keys** (`pk_live_` + 32 base62 characters) are publishable:
//!   a page on one of the key's allowed origins trades one for a `write`
//!   session token of the key's project ([`Auth::mint_embed_token`]).
//! - **Identity tokens** prove an end user's id. The customer's backend
//!   computes, with the project's identity secret (64 hex characters from
//!   [`Auth::identity_secret`]; the HMAC key is the 32 bytes they encode):
//!
//!   ```text
//!   <base64url-nopad(end_user_id)>.<hex(HMAC-SHA256(identity_secret_bytes, end_user_id))>
//!   ```
//!
//!   e.g. in Python:
//!   `base64.urlsafe_b64encode(uid.encode()).rstrip(b"=").decode() + "." +
//!   hmac.new(bytes.fromhex(secret), uid.encode(), "sha256").hexdigest()`.
//!   A session token minted with a valid one carries the id as `sub`.
//!   End user ids are checked by [`valid_end_user_id`].
//!
//! Ids are a type prefix and a random uuid (`org_…`, `prj_…`, `key_…`,
//! `emb_…`, and `tok_…` for a session token's `jti`): unguessable, so an
//! id in a URL reveals nothing.
//!
//! Files: `types.rs` (the records and [`Principal`]), `error.rs`,
//! `orgs.rs` (orgs, projects, slugs), `keys.rs` (API keys), `tokens.rs`
//! (session tokens), `authenticate.rs` (a bearer credential to a
//! principal), `secrets.rs` (the signing key file), `embed.rs` (embed keys
//! and origins), `identity.rs` (identity secrets and tokens, end user ids).
//!
//! Every mutating call flushes the database before it answers. The one
//! write on the request path — an API key's `last_used_at`, at most once a
//! minute — does not wait for a flush.
//!
//! | tree | key | value |
//! | --- | --- | --- |
//! | `auth_orgs` | org id | [`Org`] as JSON |
//! | `auth_org_slugs` | org slug | org id |
//! | `auth_projects` | project id | [`Project`] as JSON, plus `identity_secret` (hex) once made |
//! | `auth_project_slugs` | org id, `0x00`, project slug | project id (an org's projects, by slug) |
//! | `auth_api_keys` | key id | [`ApiKeyInfo`] as JSON, plus `digest` (SHA-256 of the key, hex) |
//! | `auth_api_key_digests` | SHA-256 of the key (32 bytes) | key id |
//! | `auth_org_api_keys` | org id, `0x00`, sequence (u64 BE) | key id (an org's keys, oldest first) |
//! | `auth_embed_keys` | embed key id | [`EmbedKeyInfo`] as JSON |
//! | `auth_embed_key_values` | the `pk_live_…` key | embed key id |
//! | `auth_org_embed_keys` | org id, `0x00`, sequence (u64 BE) | embed key id (an org's embed keys, oldest first) |
//!
//! Ids and slugs never contain `0x00`, so a prefix scan of an index tree
//! returns exactly one org's rows. The sequence numbers come from sled's
//! monotonic id generator, so listings are in creation order even for
//! keys made within one millisecond. A record and its index rows are
//! written in one sled transaction.

mod authenticate;
mod embed;
mod error;
mod identity;
mod keys;
mod orgs;
pub(crate) mod secrets;
mod tokens;
mod types;

use std::fmt;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};
use std::time::SystemTime;

use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::Store;

pub use error::AuthError;
pub use identity::valid_end_user_id;
pub use tokens::{DEFAULT_TOKEN_TTL, MAX_TOKEN_TTL};
pub use types::{
    ApiKeyInfo, CredentialKind, EmbedKeyInfo, MintedToken, Org, Principal, Project, ProjectRef,
    Scope,
};

use secrets::SigningKeys;

/// The auth state of a host: the records in the store and the token
/// signing keys. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    trees: Trees,
    /// Written only by rotation; every verification reads it.
    signing: RwLock<SigningKeys>,
    /// `<data_dir>/secrets/token-signing.json`.
    signing_path: std::path::PathBuf,
    rng: SystemRandom,
}

/// The trees of the table in the module doc, opened once.
struct Trees {
    orgs: sled::Tree,
    org_slugs: sled::Tree,
    projects: sled::Tree,
    project_slugs: sled::Tree,
    api_keys: sled::Tree,
    api_key_digests: sled::Tree,
    org_api_keys: sled::Tree,
    embed_keys: sled::Tree,
    embed_key_values: sled::Tree,
    org_embed_keys: sled::Tree,
}

impl fmt::Debug for Auth {
    // Nothing here is worth printing, and the signing keys must never be.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

impl Auth {
    /// Opens the auth trees in `store` and reads (or creates) the token
    /// signing keys under `data_dir/secrets/`.
    pub fn open(store: Store, data_dir: &Path) -> Result<Self, AuthError> {
        let rng = SystemRandom::new();
        let signing = SigningKeys::load_or_create(data_dir, &rng)?;
        let trees = Trees {
            orgs: store.tree("auth_orgs")?,
            org_slugs: store.tree("auth_org_slugs")?,
            projects: store.tree("auth_projects")?,
            project_slugs: store.tree("auth_project_slugs")?,
            api_keys: store.tree("auth_api_keys")?,
            api_key_digests: store.tree("auth_api_key_digests")?,
            org_api_keys: store.tree("auth_org_api_keys")?,
            embed_keys: store.tree("auth_embed_keys")?,
            embed_key_values: store.tree("auth_embed_key_values")?,
            org_embed_keys: store.tree("auth_org_embed_keys")?,
        };
        Ok(Auth {
            inner: Arc::new(Inner {
                store,
                trees,
                signing: RwLock::new(signing),
                signing_path: SigningKeys::path(data_dir),
                rng,
            }),
        })
    }

    fn trees(&self) -> &Trees {
        &self.inner.trees
    }

    /// Makes the writes so far durable; every mutating call ends with it.
    fn flush(&self) -> Result<(), AuthError> {
        self.inner.store.flush_blocking()?;
        Ok(())
    }

    fn signing(&self) -> RwLockReadGuard<'_, SigningKeys> {
        // The keys are replaced whole, so a panic elsewhere cannot leave
        // them half-written: a poisoned lock still holds good keys.
        self.inner
            .signing
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn random(&self, buf: &mut [u8]) -> Result<(), AuthError> {
        fill_random(&self.inner.rng, buf)
    }

    /// The key of an org's next row in a creation-ordered index: the org
    /// id, `0x00`, and the next number of sled's monotonic id generator.
    fn ordered_key(&self, org_id: &str) -> Result<Vec<u8>, AuthError> {
        let mut key = index_prefix(&[org_id]);
        let seq = self.inner.store.db().generate_id()?;
        key.extend_from_slice(&seq.to_be_bytes());
        Ok(key)
    }
}

/// A new id: `prefix`, `_`, and a random uuid without dashes.
fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Now, RFC 3339 with milliseconds (as sessions write it).
fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Fills `buf` from the operating system's random source.
fn fill_random(rng: &SystemRandom, buf: &mut [u8]) -> Result<(), AuthError> {
    rng.fill(buf)
        .map_err(|_| AuthError::Io(std::io::Error::other("the system random source failed")))
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `len` uniformly random base62 characters. Bytes of 248 and above are
/// dropped (rejection sampling): 248 = 4 × 62, so `byte % 62` of the rest
/// favours no character.
fn random_base62(rng: &SystemRandom, len: usize) -> Result<String, AuthError> {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        fill_random(rng, &mut buf)?;
        for &byte in buf.iter().filter(|&&b| b < 248) {
            if out.len() == len {
                break;
            }
            out.push(char::from(BASE62[usize::from(byte % 62)]));
        }
    }
    Ok(out)
}

/// Whether `s` is `prefix` followed by exactly `len` base62 characters.
fn is_random_key(s: &str, prefix: &str, len: usize) -> bool {
    s.strip_prefix(prefix)
        .is_some_and(|rest| rest.len() == len && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// An index key: the parts joined by `0x00`.
fn index_key(parts: &[&str]) -> Vec<u8> {
    let mut key = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            key.push(0);
        }
        key.extend_from_slice(part.as_bytes());
    }
    key
}

/// The prefix of every index key that starts with `parts`.
fn index_prefix(parts: &[&str]) -> Vec<u8> {
    let mut key = index_key(parts);
    key.push(0);
    key
}

/// Reads one JSON record.
fn read<T: DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>, AuthError> {
    match tree.get(key)? {
        Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
        None => Ok(None),
    }
}

/// Reads a string value (an index row's id).
fn read_id(tree: &sled::Tree, key: &[u8]) -> Result<Option<String>, AuthError> {
    Ok(tree
        .get(key)?
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
}

/// Changes one JSON record with compare-and-swap, retrying when another
/// writer got there first, so concurrent changes (a revocation and a
/// `last_used_at` update) never undo each other. `change` answers whether
/// it changed anything; `None` when there is no record.
fn update<T: Serialize + DeserializeOwned>(
    tree: &sled::Tree,
    key: &[u8],
    mut change: impl FnMut(&mut T) -> Result<bool, AuthError>,
) -> Result<Option<T>, AuthError> {
    loop {
        let Some(old) = tree.get(key)? else {
            return Ok(None);
        };
        let mut record: T = serde_json::from_slice(&old)?;
        if !change(&mut record)? {
            return Ok(Some(record));
        }
        let new = serde_json::to_vec(&record)?;
        if tree.compare_and_swap(key, Some(&old), Some(new))?.is_ok() {
            return Ok(Some(record));
        }
    }
}

#[cfg(test)]
mod testing {
    //! What the tests of every file start from.

    use super::*;

    /// A fresh auth in a temporary data dir (kept alive by the `TempDir`).
    pub(super) fn auth() -> (tempfile::TempDir, Auth) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("db")).expect("store");
        let auth = Auth::open(store, dir.path()).expect("auth");
        (dir, auth)
    }

    /// An org `acme` with a project `support`.
    pub(super) fn org_and_project(auth: &Auth) -> (Org, Project) {
        let org = auth.create_org("acme", Some("Acme")).expect("org");
        let project = auth.create_project(&org.id, "support").expect("project");
        (org, project)
    }

    /// [`org_and_project`] as the org's id and a project reference.
    pub(super) fn project_ref(auth: &Auth) -> (String, ProjectRef) {
        let (org, project) = org_and_project(auth);
        (org.id, ProjectRef::from(&project))
    }

    /// The `kid` of a token's header.
    pub(super) fn kid_of(token: &str) -> Option<String> {
        jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_base62_is_long_enough_and_varied() {
        let rng = SystemRandom::new();
        let a = random_base62(&rng, 32).expect("random");
        let b = random_base62(&rng, 32).expect("random");
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
        // Every character turns up in a long enough sample: nothing in the
        // alphabet is unreachable.
        let long = random_base62(&rng, 62 * 200).expect("random");
        for &c in BASE62 {
            assert!(long.as_bytes().contains(&c), "{}", char::from(c));
        }
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn index_keys_keep_orgs_apart() {
        let key = index_key(&["org_1", "prj_2", "emb_3"]);
        assert_eq!(key, b"org_1\0prj_2\0emb_3");
        assert!(key.starts_with(&index_prefix(&["org_1"])));
        assert!(!index_key(&["org_10", "x"]).starts_with(&index_prefix(&["org_1"])));
    }
}
