//! API keys: `kt_live_` + 32 random base62 characters (about 190 bits),
//! acting for a whole org with a scope.
//!
//! Only the key's SHA-256 digest and its first 12 characters are stored. A
//! plain hash (no salt, no slow KDF) is enough because the key is random,
//! not a password: there is no dictionary to try. The digest is also the
//! lookup key, so authenticating is one index read and one record read.

use std::time::{Duration, SystemTime};

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::Transactional;

use super::{
    ApiKeyInfo, Auth, AuthError, CredentialKind, Principal, Scope, constant_time_eq, index_prefix,
    is_random_key, new_id, now_rfc3339, random_base62, read, read_id, update,
};

/// What every API key starts with.
pub(super) const API_KEY_PREFIX: &str = "kt_live_";

/// Random characters after the prefix.
const API_KEY_RANDOM_CHARS: usize = 32;

/// How much of the key is stored and shown: the prefix and 4 characters.
const SHOWN_CHARS: usize = 12;

/// `last_used_at` is written at most this often per key, so a busy key
/// does not turn every request into a database write.
const LAST_USED_EVERY: Duration = Duration::from_secs(60);

/// Longest key name, in characters.
const MAX_NAME_CHARS: usize = 200;

/// An API key as stored.
#[derive(Debug, Serialize, Deserialize)]
struct ApiKeyRecord {
    #[serde(flatten)]
    info: ApiKeyInfo,
    /// SHA-256 of the whole key, hex.
    digest: String,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Auth {
    /// Makes an API key for an org. Returns its description and the key
    /// itself, which is shown this once: only its digest and prefix are
    /// kept. [`AuthError::NotFound`] for an unknown org.
    pub fn create_api_key(
        &self,
        org_id: &str,
        scope: Scope,
        name: &str,
    ) -> Result<(ApiKeyInfo, SecretString), AuthError> {
        if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(AuthError::bad_input(
                "name",
                format!("at most {MAX_NAME_CHARS} characters, no control characters"),
            ));
        }
        if self.org(org_id)?.is_none() {
            return Err(AuthError::NotFound);
        }
        let key = SecretString::from(format!(
            "{API_KEY_PREFIX}{}",
            random_base62(&self.inner.rng, API_KEY_RANDOM_CHARS)?
        ));
        let secret = secrecy::ExposeSecret::expose_secret(&key);
        let digest = digest(secret);
        let record = ApiKeyRecord {
            info: ApiKeyInfo {
                id: new_id("key"),
                org_id: org_id.to_owned(),
                prefix: secret[..SHOWN_CHARS].to_owned(),
                scope,
                name: name.to_owned(),
                created_at: now_rfc3339(),
                last_used_at: None,
                revoked_at: None,
            },
            digest: hex::encode(digest),
        };
        let json = serde_json::to_vec(&record)?;
        let id = record.info.id.as_bytes();
        let by_org = self.ordered_key(org_id)?;
        let t = self.trees();
        (&t.api_keys, &t.api_key_digests, &t.org_api_keys).transaction(
            |(keys, digests, by_org_tree)| {
                keys.insert(id, json.as_slice())?;
                digests.insert(&digest[..], id)?;
                by_org_tree.insert(by_org.as_slice(), id)?;
                Ok::<_, sled::transaction::ConflictableTransactionError<AuthError>>(())
            },
        )?;
        self.flush()?;
        Ok((record.info, key))
    }

    /// An org's API keys, revoked ones included, oldest first.
    /// [`AuthError::NotFound`] for an unknown org.
    pub fn api_keys(&self, org_id: &str) -> Result<Vec<ApiKeyInfo>, AuthError> {
        if self.org(org_id)?.is_none() {
            return Err(AuthError::NotFound);
        }
        let mut keys = Vec::new();
        for row in self
            .trees()
            .org_api_keys
            .scan_prefix(index_prefix(&[org_id]))
        {
            let (_, id) = row?;
            if let Some(record) = read::<ApiKeyRecord>(&self.trees().api_keys, &id)? {
                keys.push(record.info);
            }
        }
        Ok(keys)
    }

    /// Revokes an org's key (again: a no-op that answers the key).
    /// Another org's key is [`AuthError::NotFound`], as a missing one.
    pub fn revoke_api_key(&self, org_id: &str, key_id: &str) -> Result<ApiKeyInfo, AuthError> {
        let revoked = update(
            &self.trees().api_keys,
            key_id.as_bytes(),
            |record: &mut ApiKeyRecord| {
                if record.info.org_id != org_id {
                    return Err(AuthError::NotFound);
                }
                if record.info.revoked_at.is_some() {
                    return Ok(false);
                }
                record.info.revoked_at = Some(now_rfc3339());
                Ok(true)
            },
        )?
        .ok_or(AuthError::NotFound)?;
        self.flush()?;
        Ok(revoked.info)
    }

    /// Whether any API key was ever made, revoked ones included: one read.
    /// Dev mode (no auth) is for a host that never had keys; revoking the
    /// last key must not open the host to everyone.
    pub fn has_api_keys(&self) -> Result<bool, AuthError> {
        Ok(!self.trees().api_keys.is_empty())
    }

    /// Resolves a `kt_live_…` key to its org's principal.
    pub(super) fn authenticate_api_key(&self, key: &str) -> Result<Principal, AuthError> {
        if !is_random_key(key, API_KEY_PREFIX, API_KEY_RANDOM_CHARS) {
            return Err(AuthError::Invalid);
        }
        let digest = digest(key);
        let t = self.trees();
        let id = read_id(&t.api_key_digests, &digest)?.ok_or(AuthError::Invalid)?;
        let old = t.api_keys.get(id.as_bytes())?.ok_or(AuthError::Invalid)?;
        let record: ApiKeyRecord = serde_json::from_slice(&old)?;
        // The index found the row by digest; comparing the stored digest
        // again, in constant time, guards against an index row pointing at
        // the wrong record.
        let stored = hex::decode(&record.digest).unwrap_or_default();
        if !constant_time_eq(&stored, &digest) {
            return Err(AuthError::Invalid);
        }
        if record.info.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        let org = self.org(&record.info.org_id)?.ok_or(AuthError::Invalid)?;
        let scope = record.info.scope;
        self.touch(&id, &old, record)?;
        Ok(Principal {
            org_id: org.id,
            org_slug: org.slug,
            project: None,
            scope,
            sub: None,
            credential_id: id,
            kind: CredentialKind::ApiKey,
            embed_key_id: None,
        })
    }

    /// Sets `last_used_at` if it is unset or older than
    /// [`LAST_USED_EVERY`]. One compare-and-swap against the bytes just
    /// read: if the record changed meanwhile (a revocation) the update is
    /// skipped rather than undoing it. No flush: losing a minute of
    /// `last_used_at` to a crash is fine, a disk sync per request is not.
    fn touch(&self, id: &str, old: &[u8], mut record: ApiKeyRecord) -> Result<(), AuthError> {
        let now = SystemTime::now();
        let recent = record
            .info
            .last_used_at
            .as_deref()
            .and_then(|at| humantime::parse_rfc3339(at).ok())
            .is_some_and(|at| now.duration_since(at).unwrap_or_default() < LAST_USED_EVERY);
        if recent {
            return Ok(());
        }
        record.info.last_used_at = Some(humantime::format_rfc3339_millis(now).to_string());
        let new = serde_json::to_vec(&record)?;
        let _ = self
            .trees()
            .api_keys
            .compare_and_swap(id.as_bytes(), Some(old), Some(new))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::super::testing::{auth, org_and_project};
    use super::*;

    #[test]
    fn create_and_authenticate_a_key() {
        let (_dir, auth) = auth();
        let (org, _) = org_and_project(&auth);
        assert!(!auth.has_api_keys().expect("has"));
        let (info, key) = auth
            .create_api_key(&org.id, Scope::Write, "ci")
            .expect("key");
        let key = key.expose_secret();
        assert!(auth.has_api_keys().expect("has"));
        assert!(
            is_random_key(key, API_KEY_PREFIX, API_KEY_RANDOM_CHARS),
            "{key}"
        );
        assert_eq!(info.prefix, key[..12]);
        assert!(info.id.starts_with("key_"));
        assert_eq!((info.scope, info.name.as_str()), (Scope::Write, "ci"));

        let principal = auth.authenticate(key).expect("authenticate");
        assert_eq!(principal.org_id, org.id);
        assert_eq!(principal.org_slug, "acme");
        assert_eq!(principal.project, None);
        assert_eq!(principal.scope, Scope::Write);
        assert_eq!(principal.credential_id, info.id);
        assert_eq!(principal.kind, CredentialKind::ApiKey);
        assert!(principal.require(Scope::Admin).is_err());
    }

    #[test]
    fn the_secret_is_not_stored() {
        let (_dir, auth) = auth();
        let (org, _) = org_and_project(&auth);
        let (_, key) = auth.create_api_key(&org.id, Scope::Read, "k").expect("key");
        let secret = key.expose_secret().as_bytes();
        for tree in [&auth.trees().api_keys, &auth.trees().api_key_digests] {
            for row in tree.iter() {
                let (k, v) = row.expect("row");
                assert!(!k.windows(secret.len()).any(|w| w == secret));
                assert!(!v.windows(secret.len()).any(|w| w == secret));
            }
        }
    }

    #[test]
    fn wrong_keys_are_invalid() {
        let (_dir, auth) = auth();
        let (org, _) = org_and_project(&auth);
        let (_, key) = auth
            .create_api_key(&org.id, Scope::Admin, "k")
            .expect("key");
        let key = key.expose_secret();
        let mut wrong = key.to_owned();
        let last = if wrong.ends_with('a') { "b" } else { "a" };
        wrong.replace_range(wrong.len() - 1.., last);
        for bad in [
            wrong.as_str(),
            &key[..key.len() - 1],
            "kt_live_",
            "",
            &format!("{key}x"),
            &key.replace("kt_live_", "kt_test_"),
        ] {
            assert!(
                matches!(auth.authenticate(bad), Err(AuthError::Invalid)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn revoked_keys_are_refused_and_listed() {
        let (_dir, auth) = auth();
        let (org, _) = org_and_project(&auth);
        let (info, key) = auth
            .create_api_key(&org.id, Scope::Write, "k")
            .expect("key");
        let (other, _) = auth
            .create_api_key(&org.id, Scope::Read, "k2")
            .expect("key");
        let stranger = auth.create_org("beta", None).expect("org");
        assert!(matches!(
            auth.revoke_api_key(&stranger.id, &info.id),
            Err(AuthError::NotFound)
        ));
        assert!(matches!(
            auth.revoke_api_key(&org.id, "key_missing"),
            Err(AuthError::NotFound)
        ));
        let revoked = auth.revoke_api_key(&org.id, &info.id).expect("revoke");
        assert!(revoked.revoked_at.is_some());
        let again = auth.revoke_api_key(&org.id, &info.id).expect("again");
        assert_eq!(again.revoked_at, revoked.revoked_at);
        let error = auth.authenticate(key.expose_secret()).expect_err("revoked");
        assert!(matches!(error, AuthError::Revoked), "{error:?}");
        assert_eq!(error.status(), 401);

        let listed = auth.api_keys(&org.id).expect("list");
        assert_eq!(
            listed.iter().map(|k| &k.id).collect::<Vec<_>>(),
            [&info.id, &other.id]
        );
        assert!(listed[0].revoked_at.is_some() && listed[1].revoked_at.is_none());
        assert!(auth.api_keys(&stranger.id).expect("list").is_empty());
        assert!(
            auth.has_api_keys().expect("has"),
            "revoked keys still count"
        );
    }

    #[test]
    fn last_used_is_set_once_a_minute() {
        let (_dir, auth) = auth();
        let (org, _) = org_and_project(&auth);
        let (info, key) = auth.create_api_key(&org.id, Scope::Read, "k").expect("key");
        assert_eq!(info.last_used_at, None);
        auth.authenticate(key.expose_secret()).expect("auth");
        let first = auth.api_keys(&org.id).expect("list")[0]
            .last_used_at
            .clone();
        assert!(first.is_some());
        auth.authenticate(key.expose_secret()).expect("auth");
        let second = auth.api_keys(&org.id).expect("list")[0]
            .last_used_at
            .clone();
        assert_eq!(first, second, "not rewritten within a minute");
    }

    #[test]
    fn keys_need_a_known_org_and_a_clean_name() {
        let (_dir, auth) = auth();
        assert!(matches!(
            auth.create_api_key("org_missing", Scope::Read, "k"),
            Err(AuthError::NotFound)
        ));
        assert!(matches!(
            auth.api_keys("org_missing"),
            Err(AuthError::NotFound)
        ));
        let (org, _) = org_and_project(&auth);
        assert!(matches!(
            auth.create_api_key(&org.id, Scope::Read, "a\u{7}"),
            Err(AuthError::BadInput { field: "name", .. })
        ));
    }
}
