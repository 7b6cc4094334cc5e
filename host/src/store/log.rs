//! A session's lists: its event log (numbered envelopes, written with the
//! webhook deliveries they cause), its model history and its transcript,
//! each a run of rows keyed by session id and index, and the [`Tail`] that
//! remembers where each ends.

use karta_harness::Envelope;
use serde_json::Value;

use super::faults::Faults;
use super::{Store, StoreError, TranscriptMessage, child_key, decode, encode, prefix, tail_u64};

impl Store {
    /// Appends an event at its `seq`.
    pub fn put_event(&self, envelope: &Envelope) -> Result<(), StoreError> {
        if Faults::take(&self.faults.event_writes) {
            return Err(StoreError::Injected);
        }
        let value = encode(envelope)?;
        self.write().insert(
            &self.events,
            child_key(&envelope.session_id, envelope.seq),
            value,
        )?;
        Ok(())
    }

    /// [`Store::put_event`] and the webhook deliveries it causes, in one
    /// transaction: both are written or neither.
    pub fn put_event_notifying(
        &self,
        envelope: &Envelope,
        deliveries: &crate::webhooks::Prepared,
    ) -> Result<(), StoreError> {
        if deliveries.is_empty() {
            return self.put_event(envelope);
        }
        if Faults::take(&self.faults.event_writes) {
            return Err(StoreError::Injected);
        }
        let key = child_key(&envelope.session_id, envelope.seq);
        let value = encode(envelope)?;
        self.with_outbox(&self.events, &key, &value, deliveries)
    }

    /// Inserts `key` → `value` into `tree` and writes `deliveries` to the
    /// webhook outbox, in one transaction (journaled as one write).
    pub(super) fn with_outbox(
        &self,
        tree: &sled::Tree,
        key: &[u8],
        value: &[u8],
        deliveries: &crate::webhooks::Prepared,
    ) -> Result<(), StoreError> {
        use sled::Transactional;
        let mut write = self.write();
        (tree, &self.outbox)
            .transaction(|(tree, outbox)| {
                tree.insert(key, value)?;
                deliveries.write_in(outbox)?;
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => StoreError::from(e),
                sled::transaction::TransactionError::Abort(()) => {
                    StoreError::from(sled::Error::Unsupported("transaction aborted".into()))
                }
            })?;
        write.inserted(tree, key, value);
        for (key, value) in deliveries.rows() {
            write.inserted(&self.outbox, key, value);
        }
        Ok(())
    }

    /// The events with a sequence number above `after`, in order.
    pub fn events_after(&self, session: &str, after: u64) -> Result<Vec<Envelope>, StoreError> {
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        self.events
            .range(child_key(session, first)..=child_key(session, u64::MAX))
            .values()
            .map(|v| decode(&v?))
            .collect()
    }

    /// The highest event sequence number of a session (0 when none).
    pub fn last_seq(&self, session: &str) -> Result<u64, StoreError> {
        last_index(&self.events, session).map(|last| last.unwrap_or(0))
    }

    /// The last event of a session.
    pub fn last_event(&self, session: &str) -> Result<Option<Envelope>, StoreError> {
        match self
            .events
            .scan_prefix(prefix(session))
            .values()
            .next_back()
        {
            Some(value) => Ok(Some(decode(&value?)?)),
            None => Ok(None),
        }
    }

    /// Appends model messages to a session's history. `next` is where the
    /// history ends, if the caller knows it (see [`Tail`]).
    pub fn append_history(
        &self,
        session: &str,
        messages: &[Value],
        next: &mut Tail,
    ) -> Result<(), StoreError> {
        let encoded = messages.iter().map(encode).collect::<Result<Vec<_>, _>>()?;
        let mut write = self.write();
        let mut index = next.index(&self.history, session)?;
        for message in encoded {
            write.insert(&self.history, child_key(session, index), message)?;
            index += 1;
            next.0 = Some(index);
        }
        Ok(())
    }

    /// A session's history, oldest first.
    pub fn history(&self, session: &str) -> Result<Vec<Value>, StoreError> {
        self.history
            .scan_prefix(prefix(session))
            .values()
            .map(|v| decode(&v?))
            .collect()
    }

    /// Appends a transcript message; returns its index. `next` is where the
    /// transcript ends, if the caller knows it (see [`Tail`]).
    pub fn append_message(
        &self,
        session: &str,
        message: &TranscriptMessage,
        next: &mut Tail,
    ) -> Result<u64, StoreError> {
        if Faults::take(&self.faults.message_writes) {
            return Err(StoreError::Injected);
        }
        let value = encode(message)?;
        let mut write = self.write();
        let index = next.index(&self.transcript, session)?;
        write.insert(&self.transcript, child_key(session, index), value)?;
        next.0 = Some(index + 1);
        Ok(index)
    }

    /// Removes transcript message `index` (a turn that could not start);
    /// `next` no longer knows where the transcript ends.
    pub fn remove_message(
        &self,
        session: &str,
        index: u64,
        next: &mut Tail,
    ) -> Result<(), StoreError> {
        next.0 = None;
        self.write()
            .remove(&self.transcript, child_key(session, index))?;
        Ok(())
    }

    /// The transcript, in order.
    pub fn messages(&self, session: &str) -> Result<Vec<TranscriptMessage>, StoreError> {
        self.transcript
            .scan_prefix(prefix(session))
            .values()
            .map(|v| decode(&v?))
            .collect()
    }

    /// The transcript's first message (a listing's title), reading only it.
    pub fn first_message(&self, session: &str) -> Result<Option<TranscriptMessage>, StoreError> {
        self.transcript
            .scan_prefix(prefix(session))
            .values()
            .next()
            .map(|v| decode(&v?))
            .transpose()
    }

    /// Removes every row of `session` from a per-session tree.
    pub(super) fn clear(&self, tree: &sled::Tree, session: &str) -> Result<(), StoreError> {
        let mut write = self.write();
        let keys: Vec<sled::IVec> = tree
            .scan_prefix(prefix(session))
            .keys()
            .collect::<Result<_, _>>()?;
        for key in keys {
            write.remove(tree, key)?;
        }
        Ok(())
    }
}

/// Where one of a session's lists (its transcript, its history) ends: the
/// index its next entry takes, once known. A session in memory keeps one
/// of each under its state lock, which every append of its lists holds, so
/// only its first append after a load looks the end up in the tree (a
/// reverse scan, tens of µs on a cold cache, that would otherwise run
/// several times a turn).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tail(pub(super) Option<u64>);

impl Tail {
    /// The index the next entry of `session` in `tree` takes.
    fn index(&self, tree: &sled::Tree, session: &str) -> Result<u64, StoreError> {
        match self.0 {
            Some(index) => Ok(index),
            None => Ok(last_index(tree, session)?.map_or(0, |last| last + 1)),
        }
    }
}

/// The last index of `session`'s rows in `tree`.
fn last_index(tree: &sled::Tree, session: &str) -> Result<Option<u64>, StoreError> {
    match tree.scan_prefix(prefix(session)).keys().next_back() {
        Some(key) => Ok(Some(tail_u64(&key?))),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ParticipantType, Role};

    /// A list's [`Tail`] gives the next index without a look into the
    /// tree; one that does not know (a fresh one, or after a removal)
    /// looks, so nothing is overwritten and no index is skipped.
    #[test]
    fn a_tail_appends_where_the_list_ends() {
        use serde_json::json;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let message = |text: &str| TranscriptMessage {
            id: text.to_owned(),
            role: Role::User,
            text: text.to_owned(),
            participant_name: "user".into(),
            participant_type: ParticipantType::Human,
            agent: None,
            status: None,
            usage: None,
            created_at: String::new(),
        };
        let mut tail = Tail::default();
        for (i, text) in ["a", "b", "c"].into_iter().enumerate() {
            let index = store.append_message("s1", &message(text), &mut tail);
            assert_eq!(index.expect("append"), i as u64);
        }
        assert_eq!(tail, Tail(Some(3)));
        // Another session's list is its own.
        let other = store.append_message("s2", &message("x"), &mut Tail::default());
        assert_eq!(other.expect("append"), 0);
        // A session loaded again knows nothing yet, and looks.
        let mut reloaded = Tail::default();
        let index = store.append_message("s1", &message("d"), &mut reloaded);
        assert_eq!(index.expect("append"), 3);
        store
            .remove_message("s1", 3, &mut reloaded)
            .expect("remove");
        assert_eq!(reloaded, Tail::default(), "a removal forgets the end");
        let index = store.append_message("s1", &message("e"), &mut reloaded);
        assert_eq!(index.expect("append"), 3);
        let texts: Vec<String> = store
            .messages("s1")
            .expect("messages")
            .into_iter()
            .map(|m| m.text)
            .collect();
        assert_eq!(texts, ["a", "b", "c", "e"]);

        let mut history = Tail::default();
        store
            .append_history("s1", &[json!(1), json!(2)], &mut history)
            .expect("history");
        store
            .append_history("s1", &[], &mut history)
            .expect("nothing");
        store
            .append_history("s1", &[json!(3)], &mut Tail::default())
            .expect("history");
        assert_eq!(
            store.history("s1").expect("history"),
            [json!(1), json!(2), json!(3)]
        );
    }
}
