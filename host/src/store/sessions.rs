//! Session records and the indexes that list them without reading them all.

use std::collections::BTreeMap;

use super::{SessionRecord, Store, StoreError, decode, encode};

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionPage {
    /// The records of the page, newest first.
    pub records: Vec<SessionRecord>,
    /// How many sessions match, over all pages.
    pub total: usize,
}

/// `sessions_by_time` key: newest last, so a reverse scan is newest first.
fn time_key(record: &SessionRecord) -> Vec<u8> {
    let mut key = record.created_ms.to_be_bytes().to_vec();
    key.extend_from_slice(record.id.as_bytes());
    key
}

/// `sessions_by_meta` prefix of one metadata pair (length-prefixed, so no
/// byte of a key or value can be mistaken for a separator).
fn meta_prefix(name: &str, value: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + name.len() + value.len());
    for part in [name, value] {
        key.extend_from_slice(&(part.len() as u32).to_be_bytes());
        key.extend_from_slice(part.as_bytes());
    }
    key
}

fn scope_key(mut prefix: Vec<u8>, record: &SessionRecord) -> Vec<u8> {
    prefix.extend_from_slice(&time_key(record));
    prefix
}

fn meta_key(name: &str, value: &str, record: &SessionRecord) -> Vec<u8> {
    let mut key = meta_prefix(name, value);
    key.extend_from_slice(&time_key(record));
    key
}

impl Store {
    /// Writes a new session and its index entries.
    pub fn create_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.put_session(record)?;
        self.index_session(record)
    }

    /// [`Store::create_session`] with the webhook deliveries the new
    /// session causes (`session.started`), written in the record's
    /// transaction; the index entries follow it.
    pub fn create_session_notifying(
        &self,
        record: &SessionRecord,
        deliveries: &crate::webhooks::Prepared,
    ) -> Result<(), StoreError> {
        let value = encode(record)?;
        self.with_outbox(&self.sessions, record.id.as_bytes(), &value, deliveries)?;
        self.index_session(record)
    }

    /// Rewrites a session record.
    pub fn put_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let value = encode(record)?;
        self.write()
            .insert(&self.sessions, record.id.as_bytes(), value)?;
        Ok(())
    }

    pub(super) fn index_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let mut write = self.write();
        write.insert(&self.by_time, time_key(record), [])?;
        for (name, value) in &record.metadata {
            write.insert(&self.by_meta, meta_key(name, value, record), [])?;
        }
        for prefix in record.scope.iter().flat_map(|s| s.index_keys()) {
            write.insert(&self.by_scope, scope_key(prefix, record), [])?;
        }
        Ok(())
    }

    /// Gives every session without a scope (made before projects existed)
    /// `scope`, and lists it under it: a data dir from before projects keeps
    /// its sessions when its folder is served again. Done once per data dir
    /// (a flag in `meta`); returns how many sessions were adopted.
    pub fn adopt_unscoped_sessions(
        &self,
        scope: &super::SessionScope,
    ) -> Result<usize, StoreError> {
        const DONE: &str = "unscoped_sessions_adopted";
        if self.meta.contains_key(DONE)? {
            return Ok(0);
        }
        let mut adopted = 0;
        for item in self.sessions.iter() {
            let (_, bytes) = item?;
            let mut record: SessionRecord = decode(&bytes)?;
            if record.scope.is_some() {
                continue;
            }
            record.scope = Some(scope.clone());
            self.put_session(&record)?;
            let mut write = self.write();
            for prefix in scope.index_keys() {
                write.insert(&self.by_scope, scope_key(prefix, &record), [])?;
            }
            adopted += 1;
        }
        self.meta.insert(DONE, &[1])?;
        self.flush_blocking()?;
        Ok(adopted)
    }

    /// Reads a session record.
    pub fn session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        match self.sessions.get(id.as_bytes())? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Whether a session exists, without reading it.
    pub fn contains_session(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.sessions.contains_key(id.as_bytes())?)
    }

    /// Deletes a session with its index entries, events, history and
    /// transcript.
    pub fn delete_session(&self, id: &str) -> Result<(), StoreError> {
        if let Some(record) = self.session(id)? {
            let mut write = self.write();
            write.remove(&self.by_time, time_key(&record))?;
            for (name, value) in &record.metadata {
                write.remove(&self.by_meta, meta_key(name, value, &record))?;
            }
            for prefix in record.scope.iter().flat_map(|s| s.index_keys()) {
                write.remove(&self.by_scope, scope_key(prefix, &record))?;
            }
        }
        for tree in [&self.events, &self.history, &self.transcript] {
            self.clear(tree, id)?;
        }
        self.write().remove(&self.sessions, id.as_bytes())?;
        Ok(())
    }

    /// The sessions under `scope` (a `SessionScope` index key: a
    /// project's, or an end user's; `None`: every session) whose metadata
    /// holds every `filters` pair, newest first: `limit` of them after
    /// skipping `offset`. Reads index keys, and records only for the page
    /// (and, with a scope and a filter or with two or more filters, for the
    /// sessions that match the first).
    pub fn list_sessions(
        &self,
        scope: Option<&[u8]>,
        filters: &BTreeMap<String, String>,
        offset: usize,
        limit: usize,
    ) -> Result<SessionPage, StoreError> {
        let mut filters = filters.iter();
        let (ids, rest): (Box<dyn Iterator<Item = _>>, Vec<(&String, &String)>) =
            match (scope, filters.next()) {
                (Some(prefix), first) => {
                    let keys = self.by_scope.scan_prefix(prefix).keys();
                    (
                        ids_newest_first(keys, prefix.len()),
                        first.into_iter().chain(filters).collect(),
                    )
                }
                (None, None) => (ids_newest_first(self.by_time.iter().keys(), 0), Vec::new()),
                (None, Some((name, value))) => {
                    let prefix = meta_prefix(name, value);
                    let skip = prefix.len();
                    let keys = self.by_meta.scan_prefix(prefix).keys();
                    (ids_newest_first(keys, skip), filters.collect())
                }
            };
        let mut matching = 0;
        let mut records = Vec::new();
        for id in ids {
            let id = id?;
            let in_page = matching >= offset && records.len() < limit;
            if rest.is_empty() && !in_page {
                matching += 1;
                continue;
            }
            let Some(record) = self.session(&id)? else {
                continue;
            };
            if rest
                .iter()
                .all(|(name, value)| record.metadata.get(*name) == Some(value))
            {
                if in_page {
                    records.push(record);
                }
                matching += 1;
            }
        }
        Ok(SessionPage {
            records,
            total: matching,
        })
    }
}

/// Session ids from index keys (`<skip bytes>`, created ms, id), newest
/// first, read as the caller goes.
fn ids_newest_first<'a>(
    keys: impl DoubleEndedIterator<Item = sled::Result<sled::IVec>> + 'a,
    skip: usize,
) -> Box<dyn Iterator<Item = Result<String, StoreError>> + 'a> {
    Box::new(keys.rev().map(move |key| {
        let key = key?;
        let id = key.get(skip + 8..).unwrap_or_default();
        Ok(String::from_utf8_lossy(id).into_owned())
    }))
}
