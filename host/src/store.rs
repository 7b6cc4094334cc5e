//! Durable state in sled: one database per data dir, one tree per kind of
//! record.
//!
//! | tree | key | value |
//! | --- | --- | --- |
//! | `meta` | `schema_version` | `u32` big-endian |
//! | `sessions` | session id | [`SessionRecord`] as JSON |
//! | `events` | session id, `0x00`, seq (u64 big-endian) | event envelope JSON |
//! | `transcript` | session id, `0x00`, index (u64 big-endian) | message JSON |
//!
//! Big-endian integers make a prefix scan return a session's events in
//! order. Values carry a version field (`v`) so later releases can read old
//! records.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The schema this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (I/O, corruption, a lock held by another process).
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    /// A record could not be encoded or decoded.
    #[error("corrupt record: {0}")]
    Codec(#[from] serde_json::Error),
    /// The data dir was written by a newer Karta.
    #[error("the data dir has schema version {found}; this build reads up to {SCHEMA_VERSION}")]
    Schema {
        /// What the data dir says.
        found: u32,
    },
}

/// Someone who takes part in a session.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Participant {
    /// Their name.
    pub name: String,
    /// `human` or `ai`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// A session as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Record version.
    pub v: u32,
    /// The session id.
    pub id: String,
    /// Caller metadata (e.g. `customer_id`), searchable.
    pub metadata: BTreeMap<String, String>,
    /// The agent the session talks to, if one was chosen.
    pub current_agent: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// Milliseconds since the epoch, for ordering.
    pub created_ms: u64,
    /// Who has spoken, in order of first appearance.
    pub participants: Vec<Participant>,
    /// The conversation as the model sees it (Anthropic Messages shape).
    pub history: Vec<Value>,
    /// Tools a person approved for the whole session.
    pub approved_tools: BTreeSet<String>,
    /// The next event sequence number.
    pub next_seq: u64,
    /// Messages in the transcript.
    pub message_count: u64,
}

/// The sled database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    sessions: sled::Tree,
    events: sled::Tree,
    transcript: sled::Tree,
}

fn child_key(session: &str, index: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(session.len() + 9);
    key.extend_from_slice(session.as_bytes());
    key.push(0);
    key.extend_from_slice(&index.to_be_bytes());
    key
}

fn prefix(session: &str) -> Vec<u8> {
    let mut key = session.as_bytes().to_vec();
    key.push(0);
    key
}

impl Store {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::open(dir)?;
        let meta = db.open_tree("meta")?;
        match meta.get("schema_version")? {
            Some(bytes) => {
                let found = bytes
                    .as_ref()
                    .try_into()
                    .map(u32::from_be_bytes)
                    .unwrap_or(u32::MAX);
                if found > SCHEMA_VERSION {
                    return Err(StoreError::Schema { found });
                }
            }
            None => {
                meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
            }
        }
        Ok(Self {
            sessions: db.open_tree("sessions")?,
            events: db.open_tree("events")?,
            transcript: db.open_tree("transcript")?,
            db,
        })
    }

    /// Makes every write so far durable.
    ///
    /// Runs sled's blocking `flush` on the blocking pool: `flush_async`
    /// stalled for good under a few hundred concurrent callers here (the
    /// 500-session bench hung with it).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| {
                StoreError::Sled(sled::Error::Unsupported(format!("flush task failed: {e}")))
            })??;
        Ok(())
    }

    /// Writes a session record.
    pub fn put_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.sessions
            .insert(record.id.as_bytes(), serde_json::to_vec(record)?)?;
        Ok(())
    }

    /// Reads a session record.
    pub fn session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        match self.sessions.get(id.as_bytes())? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Every session record (callers filter and sort).
    pub fn sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        self.sessions
            .iter()
            .values()
            .map(|v| Ok(serde_json::from_slice(&v?)?))
            .collect()
    }

    /// Deletes a session with its events and transcript.
    pub fn delete_session(&self, id: &str) -> Result<(), StoreError> {
        for tree in [&self.events, &self.transcript] {
            let keys: Vec<sled::IVec> = tree
                .scan_prefix(prefix(id))
                .keys()
                .collect::<Result<_, _>>()?;
            for key in keys {
                tree.remove(key)?;
            }
        }
        self.sessions.remove(id.as_bytes())?;
        Ok(())
    }

    /// Appends an event envelope at `seq`.
    pub fn put_event(&self, session: &str, seq: u64, envelope: &Value) -> Result<(), StoreError> {
        self.events
            .insert(child_key(session, seq), serde_json::to_vec(envelope)?)?;
        Ok(())
    }

    /// The events with a sequence number above `after`, in order.
    pub fn events_after(&self, session: &str, after: u64) -> Result<Vec<Value>, StoreError> {
        let start = child_key(session, after.saturating_add(1));
        let end = child_key(session, u64::MAX);
        self.events
            .range(start..=end)
            .values()
            .map(|v| Ok(serde_json::from_slice(&v?)?))
            .collect()
    }

    /// The highest event sequence number of a session (0 when none).
    pub fn last_seq(&self, session: &str) -> Result<u64, StoreError> {
        let last = self.events.scan_prefix(prefix(session)).keys().next_back();
        match last {
            Some(key) => {
                let key = key?;
                let tail: [u8; 8] = key[key.len() - 8..].try_into().unwrap_or([0; 8]);
                Ok(u64::from_be_bytes(tail))
            }
            None => Ok(0),
        }
    }

    /// Appends a transcript message at `index`.
    pub fn put_message(
        &self,
        session: &str,
        index: u64,
        message: &Value,
    ) -> Result<(), StoreError> {
        self.transcript
            .insert(child_key(session, index), serde_json::to_vec(message)?)?;
        Ok(())
    }

    /// The transcript, in order.
    pub fn messages(&self, session: &str) -> Result<Vec<Value>, StoreError> {
        self.transcript
            .scan_prefix(prefix(session))
            .values()
            .map(|v| Ok(serde_json::from_slice(&v?)?))
            .collect()
    }
}
