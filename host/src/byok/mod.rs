//! BYOK — bring your own key: an org's own model-provider key, one active
//! key per (org, [`Provider`]).
//!
//! Keys are sealed with AES-256-GCM under the host's [`MasterKey`]
//! (`KARTA_MASTER_KEY`, or `<data_dir>/secrets/master.key`, see
//! `master.rs`) and stored in sled. Only [`ByokKeyInfo`] — the key id, a
//! fingerprint, the last four characters — is ever shown. The key is
//! unsealed only by [`Byok::key_for`], for the gateway to put on one
//! upstream request of one of the org's sessions: it is never logged,
//! never answered by a route, and never in a harness's environment or
//! jail. No type here has a `Debug` or `Display` that shows a key, and
//! buffers that held one are wiped (`secrecy`, `zeroize`).
//!
//! Files: `types.rs` (the public types and the checks), `master.rs` (the
//! master key and its file), `seal.rs` (AES-256-GCM and what a ciphertext
//! is bound to), `tests.rs`.
//!
//! | tree | key | value |
//! | --- | --- | --- |
//! | `byok_keys` | key id (`byok_…`) | the record as JSON (below) |
//! | `byok_active` | org id, `0x00`, provider | the id of the org's active key for the provider |
//! | `byok_org_keys` | org id, `0x00`, sequence (u64 BE) | key id (an org's keys, oldest first) |
//!
//! A record is the [`ByokKeyInfo`] fields and, while the key is active,
//! the sealed key:
//!
//! ```json
//! {"id": "byok_…", "org_id": "org_…", "provider": "anthropic",
//!  "fingerprint": "sha256:<16 hex>", "last4": "…", "created_at": "RFC 3339", "replaced_at": null,
//!  "sealed": {"v": 1, "master_key_id": "mk_<16 hex>",
//!             "nonce": "<base64 of 12 bytes>", "ciphertext": "<base64 of ciphertext ‖ 16-byte tag>"}}
//! ```
//!
//! Replacing or removing a key sets its `replaced_at` and deletes its
//! `sealed`, so the database holds one ciphertext per (org, provider);
//! the record stays, so an org can see which keys it had and when. Org
//! ids never contain `0x00` (checked), so a prefix scan returns exactly
//! one org's rows. Each change is one sled transaction over the trees it
//! touches, and is flushed before the call returns.

mod master;
mod seal;
mod types;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use crate::store::Store;

pub use master::{MASTER_KEY_ENV, MasterKey};
pub use types::{ByokError, ByokKeyInfo, MAX_KEY_BYTES, Provider};

use seal::{Sealed, Sealer};
use types::{check_key, check_org, fingerprint, last4};

/// The org's BYOK keys in the store, and the sealer. Cheap to clone (an
/// `Arc` inside).
#[derive(Clone)]
pub struct Byok {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// `byok_keys`: key id → record.
    keys: sled::Tree,
    /// `byok_active`: org id, `0x00`, provider → key id.
    active: sled::Tree,
    /// `byok_org_keys`: org id, `0x00`, sequence → key id.
    org_keys: sled::Tree,
    sealer: Sealer,
}

impl fmt::Debug for Byok {
    // The master key id is not secret and tells an operator which key the
    // host runs with; nothing else here is worth printing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Byok")
            .field("master_key_id", &self.master_key_id())
            .finish_non_exhaustive()
    }
}

/// A key's record as stored (see the module doc). No `Debug`: it holds
/// the ciphertext, which is no one's business either.
#[derive(Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    info: ByokKeyInfo,
    /// Present while the key is active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<Sealed>,
}

/// The `byok_active` key of `(org_id, provider)`.
fn slot(org_id: &str, provider: Provider) -> Vec<u8> {
    let mut key = prefix(org_id);
    key.extend_from_slice(provider.as_str().as_bytes());
    key
}

/// The prefix of an org's rows in `byok_active` and `byok_org_keys`.
fn prefix(org_id: &str) -> Vec<u8> {
    let mut key = org_id.as_bytes().to_vec();
    key.push(0);
    key
}

/// Now, RFC 3339 with milliseconds (as the rest of the store writes it).
fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Marks the record `id` replaced at `at` and deletes its ciphertext,
/// inside a transaction; `None` when there is no such record.
fn retire(
    keys: &TransactionalTree,
    id: &[u8],
    at: &str,
) -> Result<Option<ByokKeyInfo>, ConflictableTransactionError<ByokError>> {
    let Some(bytes) = keys.get(id)? else {
        return Ok(None);
    };
    let abort = |e: serde_json::Error| ConflictableTransactionError::Abort(e.into());
    let mut record: Record = serde_json::from_slice(&bytes).map_err(abort)?;
    record.info.replaced_at.get_or_insert_with(|| at.to_owned());
    record.sealed = None;
    keys.insert(id, serde_json::to_vec(&record).map_err(abort)?)?;
    Ok(Some(record.info))
}

impl Byok {
    /// Opens the BYOK trees in `store`, sealing with `master` (which is
    /// not kept: only the key derived from it).
    pub fn open(store: Store, master: MasterKey) -> Result<Self, ByokError> {
        let sealer = Sealer::new(&master)?;
        drop(master);
        Ok(Byok {
            inner: Arc::new(Inner {
                keys: store.tree("byok_keys")?,
                active: store.tree("byok_active")?,
                org_keys: store.tree("byok_org_keys")?,
                store,
                sealer,
            }),
        })
    }

    /// [`MasterKey::id`] of the master key this host seals with (for
    /// `karta doctor` and start-up logs; it reveals nothing of the key).
    pub fn master_key_id(&self) -> &str {
        self.inner.sealer.master_key_id()
    }

    /// Seals and stores the org's key for the provider, replacing the
    /// active one (the old record is kept as replaced, its ciphertext
    /// deleted). The key is checked lightly: 1 to [`MAX_KEY_BYTES`] bytes
    /// of printable ASCII, no whitespace. Flushes before it returns.
    pub fn set_key(
        &self,
        org_id: &str,
        provider: Provider,
        key: SecretString,
    ) -> Result<ByokKeyInfo, ByokError> {
        check_org(org_id)?;
        check_key(&key)?;
        let id = format!("byok_{}", uuid::Uuid::new_v4().simple());
        let sealed = self.inner.sealer.seal(&key, org_id, provider, &id)?;
        let info = ByokKeyInfo {
            id,
            org_id: org_id.to_owned(),
            provider,
            fingerprint: fingerprint(&key),
            last4: last4(&key),
            created_at: now_rfc3339(),
            replaced_at: None,
        };
        drop(key);
        let json = serde_json::to_vec(&Record {
            info: info.clone(),
            sealed: Some(sealed),
        })?;
        let slot = slot(org_id, provider);
        let mut ordered = prefix(org_id);
        // sled's monotonic ids keep the listing in creation order even
        // within one millisecond.
        ordered.extend_from_slice(&self.inner.store.db().generate_id()?.to_be_bytes());
        let id = info.id.as_bytes();
        let i = &self.inner;
        (&i.keys, &i.active, &i.org_keys).transaction(|(keys, active, org_keys)| {
            if let Some(old) = active.insert(slot.as_slice(), id)? {
                retire(keys, &old, &info.created_at)?;
            }
            keys.insert(id, json.as_slice())?;
            org_keys.insert(ordered.as_slice(), id)?;
            Ok(())
        })?;
        self.flush()?;
        Ok(info)
    }

    /// The org's keys, active and replaced, oldest first — never a key.
    pub fn keys(&self, org_id: &str) -> Result<Vec<ByokKeyInfo>, ByokError> {
        check_org(org_id)?;
        let mut out = Vec::new();
        for row in self.inner.org_keys.scan_prefix(prefix(org_id)) {
            let (_, id) = row?;
            if let Some(bytes) = self.inner.keys.get(&id)? {
                let record: Record = serde_json::from_slice(&bytes)?;
                out.push(record.info);
            }
        }
        Ok(out)
    }

    /// Removes the org's active key for the provider: its record is kept
    /// as replaced, its ciphertext deleted. `None` when there was none.
    /// Flushes before it returns.
    pub fn remove_key(
        &self,
        org_id: &str,
        provider: Provider,
    ) -> Result<Option<ByokKeyInfo>, ByokError> {
        check_org(org_id)?;
        let slot = slot(org_id, provider);
        let at = now_rfc3339();
        let i = &self.inner;
        let removed = (&i.keys, &i.active).transaction(|(keys, active)| {
            match active.remove(slot.as_slice())? {
                Some(id) => retire(keys, &id, &at),
                None => Ok(None),
            }
        })?;
        if removed.is_some() {
            self.flush()?;
        }
        Ok(removed)
    }

    /// The org's active key for the provider, unsealed, for the gateway to
    /// put on one upstream request of one of the org's sessions. `None`
    /// when the org has none. A key sealed under another master key, or a
    /// record that was altered or moved, is [`ByokError::MasterKey`].
    pub fn key_for(
        &self,
        org_id: &str,
        provider: Provider,
    ) -> Result<Option<SecretString>, ByokError> {
        check_org(org_id)?;
        let Some(id) = self.inner.active.get(slot(org_id, provider))? else {
            return Ok(None);
        };
        let id = String::from_utf8_lossy(&id);
        let unreadable = |why: &str| {
            ByokError::MasterKey(format!(
                "the {provider} key {id} of org {org_id} is unreadable: {why}"
            ))
        };
        let bytes = self
            .inner
            .keys
            .get(id.as_bytes())?
            .ok_or_else(|| unreadable("its record is missing"))?;
        let record: Record = serde_json::from_slice(&bytes)?;
        let sealed = record
            .sealed
            .ok_or_else(|| unreadable("its record holds no ciphertext"))?;
        // The additional data is built from what was asked for, not from
        // the record: a record moved under another org does not open.
        self.inner
            .sealer
            .open(&sealed, org_id, provider, &id)
            .map(Some)
    }

    fn flush(&self) -> Result<(), ByokError> {
        self.inner.store.flush_blocking()?;
        Ok(())
    }
}
