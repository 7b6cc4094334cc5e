//! A journaled store write: its operations go to sled at once and to the
//! journal's pending frames when it is dropped.

use std::sync::MutexGuard;

use super::format::{INSERT, REMOVE, encode_op};
use super::{PENDING_LIMIT, State};

/// The operations of one store write, journaled when it is dropped (see
/// [`Journal::begin`](super::Journal::begin)). Without a journal ([`crate::store::Durability::Machine`])
/// it only writes to sled.
pub(crate) struct JournalWrite<'a> {
    pub(super) journal: Option<(MutexGuard<'a, State>, Vec<u8>)>,
}

impl JournalWrite<'_> {
    /// A write that goes to sled only (no journal: [`crate::store::Durability::Machine`]).
    pub(in crate::store) fn unjournaled() -> Self {
        Self { journal: None }
    }

    /// Inserts into `tree`, journaled.
    pub(crate) fn insert(
        &mut self,
        tree: &sled::Tree,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<(), sled::Error> {
        tree.insert(key.as_ref(), value.as_ref())?;
        self.inserted(tree, key.as_ref(), value.as_ref());
        Ok(())
    }

    /// Removes from `tree`, journaled.
    pub(crate) fn remove(
        &mut self,
        tree: &sled::Tree,
        key: impl AsRef<[u8]>,
    ) -> Result<(), sled::Error> {
        tree.remove(key.as_ref())?;
        self.removed(tree, key.as_ref());
        Ok(())
    }

    /// Journals an insert already made (in a transaction).
    pub(crate) fn inserted(&mut self, tree: &sled::Tree, key: &[u8], value: &[u8]) {
        if let Some((_, frame)) = &mut self.journal {
            encode_op(frame, INSERT, &tree.name(), key, Some(value));
        }
    }

    fn removed(&mut self, tree: &sled::Tree, key: &[u8]) {
        if let Some((_, frame)) = &mut self.journal {
            encode_op(frame, REMOVE, &tree.name(), key, None);
        }
    }
}

impl Drop for JournalWrite<'_> {
    /// Journals what was written, even when a later operation of the same
    /// write failed: the journal mirrors sled.
    fn drop(&mut self) {
        if let Some((state, frame)) = &mut self.journal
            && !frame.is_empty()
        {
            let crc = crc32fast::hash(frame);
            let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
            state.pending.extend_from_slice(&len.to_le_bytes());
            state.pending.extend_from_slice(&crc.to_le_bytes());
            state.pending.extend_from_slice(frame);
            // Writes that no commit follows (there are none on today's
            // paths, but nothing forbids them) do not pile up in memory.
            if state.pending.len() >= PENDING_LIMIT {
                // On failure the next commit checkpoints instead (sled's
                // flush covers what the file may have lost).
                state.append_pending();
            }
        }
    }
}
