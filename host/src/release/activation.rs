//! The active pointer, its flips, and the audit log that remembers them.
//!
//! A flip is one sled transaction that checks the version exists, reads
//! the old pointer, writes the new one and appends the audit entry; the
//! database is flushed before the call answers. sled's log is
//! crash-consistent per transaction, so after a crash (`kill -9` at any
//! instant; the `releases::activation_child` test does it 50 times) the
//! pointer is the old version or the new one — never missing, never a
//! version that does not exist — and the audit log agrees with it.

use std::sync::PoisonError;

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::{
    ReleaseError, Releases, check_project, decode, decode_u32, key, now_rfc3339, prefix,
    release_key,
};

/// The `action` of an audit entry for a publish.
pub(super) const PUBLISH: &str = "publish";
/// The `action` of an audit entry for an activation.
const ACTIVATE: &str = "activate";
/// The `action` of an audit entry for a rollback.
const ROLLBACK: &str = "rollback";

/// How often a transaction is retried when another writer of the same
/// store took the key it chose (only possible with two [`Releases`] of
/// one store; clones share a lock).
pub(super) const RETRIES: usize = 16;

/// One line of a project's audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// When (RFC 3339).
    pub at: String,
    /// Who.
    pub actor: String,
    /// `"publish"`, `"activate"` or `"rollback"`.
    pub action: String,
    /// The version active before (`None` for a publish, or the first
    /// activation).
    pub from: Option<u32>,
    /// The version published or made active.
    pub to: u32,
}

/// What an activation or a rollback did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Activation {
    /// The version active before, if any.
    pub previous: Option<u32>,
    /// The version active now.
    pub active: u32,
}

/// Why a transaction gave up.
#[derive(Debug)]
pub(super) enum Abort {
    /// The key chosen is taken: choose again.
    Taken,
    /// The version to activate does not exist.
    Missing,
    /// The entry could not be encoded.
    Codec(serde_json::Error),
}

/// The key of audit entry `counter` of `project_id`.
pub(super) fn audit_key(project_id: &str, counter: u64) -> Vec<u8> {
    key(project_id, &counter.to_be_bytes())
}

impl Releases {
    /// Makes `version` the active release of `project_id`, recording
    /// `actor` in the audit log.
    ///
    /// The pointer and its audit entry are one sled transaction, flushed
    /// before this returns: a crash at any point leaves the old or the new
    /// version active. A version that does not exist is
    /// [`ReleaseError::NotFound`] and changes nothing. Blocks on the flush
    /// (call it from `spawn_blocking` in async code).
    pub fn activate(
        &self,
        project_id: &str,
        version: u32,
        actor: &str,
    ) -> Result<Activation, ReleaseError> {
        check_project(project_id)?;
        let _commit = self.commit.lock().unwrap_or_else(PoisonError::into_inner);
        self.point(project_id, version, actor, ACTIVATE)
    }

    /// Makes `to` active again or, without `to`, the version that was
    /// active before the current one (from the audit log: the `from` of the
    /// flip that made the current version active — so two rollbacks in a
    /// row return to where they started). [`ReleaseError::NotFound`] says
    /// why when there is nothing to roll back to. Blocks on the flush,
    /// like [`Releases::activate`].
    pub fn rollback(
        &self,
        project_id: &str,
        to: Option<u32>,
        actor: &str,
    ) -> Result<Activation, ReleaseError> {
        check_project(project_id)?;
        // The target is chosen under the lock that also serializes flips,
        // so it is the version before the pointer as it is when written.
        let _commit = self.commit.lock().unwrap_or_else(PoisonError::into_inner);
        let target = match to {
            Some(version) => version,
            None => self.previous_version(project_id)?,
        };
        self.point(project_id, target, actor, ROLLBACK)
    }

    /// The audit log of `project_id`, oldest first.
    pub fn audit(&self, project_id: &str) -> Result<Vec<AuditEntry>, ReleaseError> {
        check_project(project_id)?;
        self.audit
            .scan_prefix(prefix(project_id))
            .values()
            .map(|value| decode(&value?))
            .collect()
    }

    /// The next free audit counter of `project_id` (1 for the first).
    pub(super) fn next_audit_counter(&self, project_id: &str) -> Result<u64, ReleaseError> {
        let last = self
            .audit
            .scan_prefix(prefix(project_id))
            .keys()
            .next_back()
            .transpose()?;
        Ok(last.map_or(0, |key| tail_u64(&key)) + 1)
    }

    /// The version active before the current one.
    fn previous_version(&self, project_id: &str) -> Result<u32, ReleaseError> {
        let Some(current) = self.active_version(project_id)? else {
            return Err(ReleaseError::NotFound(
                "no active release to roll back from".into(),
            ));
        };
        for entry in self.audit(project_id)?.into_iter().rev() {
            // The latest flip that made the current version active; a
            // flip to the version already active changed nothing.
            if entry.action != PUBLISH && entry.to == current && entry.from != Some(current) {
                return entry.from.ok_or_else(|| {
                    ReleaseError::NotFound(format!(
                        "v{current} was the first version activated; \
                         there is no earlier one to roll back to"
                    ))
                });
            }
        }
        Err(ReleaseError::NotFound(format!(
            "the audit log does not say which version was active before v{current}"
        )))
    }

    /// Points `project_id` at `version` and appends the audit entry, in
    /// one transaction; then flushes. The caller holds the commit lock.
    fn point(
        &self,
        project_id: &str,
        version: u32,
        actor: &str,
        action: &str,
    ) -> Result<Activation, ReleaseError> {
        let release = release_key(project_id, version);
        for _ in 0..RETRIES {
            let audit = audit_key(project_id, self.next_audit_counter(project_id)?);
            let at = now_rfc3339();
            // Read before the transaction (sled deadlocks on a plain read
            // inside one); the caller's commit lock keeps it current.
            let deliveries = match self.notices.get() {
                Some(notices) if self.releases.contains_key(&release)? => notices.prepare(
                    project_id,
                    &AuditEntry {
                        at: at.clone(),
                        actor: actor.to_owned(),
                        action: action.to_owned(),
                        from: self.active_version(project_id)?,
                        to: version,
                    },
                ),
                _ => crate::webhooks::Prepared::default(),
            };
            let result = (&self.releases, &self.active, &self.audit, &self.outbox).transaction(
                |(releases, active, log, outbox)| {
                    if releases.get(&release)?.is_none() {
                        return Err(ConflictableTransactionError::Abort(Abort::Missing));
                    }
                    if log.get(&audit)?.is_some() {
                        return Err(ConflictableTransactionError::Abort(Abort::Taken));
                    }
                    let previous = active
                        .insert(project_id.as_bytes(), &version.to_be_bytes())?
                        .and_then(|old| decode_u32(&old));
                    let entry = AuditEntry {
                        at: at.clone(),
                        actor: actor.to_owned(),
                        action: action.to_owned(),
                        from: previous,
                        to: version,
                    };
                    let entry = serde_json::to_vec(&entry)
                        .map_err(|e| ConflictableTransactionError::Abort(Abort::Codec(e)))?;
                    log.insert(audit.as_slice(), entry)?;
                    deliveries.write_in(outbox)?;
                    Ok(previous)
                },
            );
            match result {
                Ok(previous) => {
                    self.flush_blocking()?;
                    if let (Some(notices), false) = (self.notices.get(), deliveries.is_empty()) {
                        notices.committed();
                    }
                    return Ok(Activation {
                        previous,
                        active: version,
                    });
                }
                Err(TransactionError::Abort(Abort::Taken)) => continue,
                Err(TransactionError::Abort(Abort::Missing)) => {
                    return Err(ReleaseError::NotFound(format!("no release v{version}")));
                }
                Err(TransactionError::Abort(Abort::Codec(e))) => {
                    return Err(ReleaseError::Store(crate::store::StoreError::Codec(e)));
                }
                Err(TransactionError::Storage(e)) => return Err(e.into()),
            }
        }
        Err(contended())
    }
}

/// The error when every retry found its key taken.
pub(super) fn contended() -> ReleaseError {
    ReleaseError::Io(std::io::Error::other(
        "another writer kept taking the release keys; try again",
    ))
}

/// The trailing big-endian `u64` of a key.
fn tail_u64(key: &[u8]) -> u64 {
    key.len()
        .checked_sub(8)
        .and_then(|start| key[start..].try_into().ok())
        .map_or(0, u64::from_be_bytes)
}
