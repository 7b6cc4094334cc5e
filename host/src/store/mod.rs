//! Durable state in sled: one database per data dir, one tree per kind of
//! record. The record types here *are* the on-disk schema.
//!
//! | tree | key | value |
//! | --- | --- | --- |
//! | `meta` | `schema_version` | `u32` big-endian |
//! | `sessions` | session id | [`SessionRecord`] as JSON (small: no history) |
//! | `sessions_by_time` | created ms (u64 BE), session id | — (listing, newest first) |
//! | `sessions_by_meta` | key, value (each u32-BE length-prefixed), created ms, id | — (listing by metadata) |
//! | `sessions_by_scope` | [`SessionScope`] index key (project, or project + end user), created ms, id | — (a tenant's listing) |
//! | `events` | session id, `0x00`, seq (u64 BE) | [`Envelope`](karta_harness::Envelope) JSON |
//! | `history` | session id, `0x00`, index (u64 BE) | a model message (Anthropic shape) |
//! | `transcript` | session id, `0x00`, index (u64 BE) | [`TranscriptMessage`] JSON |
//!
//! Next to sled's files, `karta-journal-<generation>.log`: the write-ahead
//! journal of the session log ([`Durability::Process`]; `journal/`).
//!
//! Big-endian integers make a prefix scan return a session's rows in order,
//! and a session id (`[A-Za-z0-9_-]`) never contains the `0x00` separator.
//! Listing and readiness read the index trees and never the histories, so
//! they cost the same with ten sessions as with a million histories.
//!
//! | file | what it does |
//! | --- | --- |
//! | `mod.rs` | [`Store`]: opening, the schema and its migration, the keys |
//! | `records.rs` | the record types: [`SessionRecord`], [`TranscriptMessage`], … |
//! | `sessions.rs` | session records and the listing indexes |
//! | `log.rs` | each session's events, history and transcript; [`Tail`] |
//! | `flush.rs` | [`Durability`], the flushes and their group commit |
//! | `journal/` | the session log's write-ahead journal: checkpoints (`mod.rs`), a journaled write (`write.rs`), the file format and replay (`format.rs`) |
//! | `faults.rs` | the storage failures tests inject |

mod faults;
mod flush;
mod journal;
mod log;
mod records;
mod sessions;

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use faults::Faults;
pub use flush::Durability;
use flush::{DurableFlush, FlushGroup};
pub(crate) use journal::JournalWrite;
pub use log::Tail;
pub use records::{
    Participant, ParticipantType, Role, SessionRecord, SessionScope, TranscriptMessage,
};
pub use sessions::SessionPage;

/// The most memory sled's page cache may hold (its default is 1 GiB):
/// with sessions on disk and only those in use in memory, the cache is
/// what grows with the data, and this bounds it.
pub const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// The schema this build writes and reads. Version 1 kept each session's
/// history inside its record; [`Store::open`] moves it out.
pub const SCHEMA_VERSION: u32 = 2;

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
    /// A failure injected by a test (feature `fault-injection`).
    #[error("injected storage failure")]
    Injected,
}

/// The sled database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    meta: sled::Tree,
    sessions: sled::Tree,
    by_time: sled::Tree,
    by_meta: sled::Tree,
    by_scope: sled::Tree,
    events: sled::Tree,
    history: sled::Tree,
    transcript: sled::Tree,
    /// The webhook outbox ([`crate::webhooks`]): an event and the
    /// deliveries it causes are written in one transaction.
    outbox: sled::Tree,
    faults: Arc<Faults>,
    /// The group commit of [`Store::flush`].
    flushes: Arc<FlushGroup>,
    /// What every flush runs.
    durable: DurableFlush,
}

/// How long [`Store::open`] waits for sled's file lock to be free.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens sled, waiting a little while its file lock is held. Why wait: a
/// process this one forks gets a copy of every descriptor — the lock's
/// too — until it execs (close-on-exec acts only then), and a jailed
/// harness spends milliseconds between the two building its jail. A host
/// shut down just before a child was forked elsewhere in the process would
/// otherwise find its own data dir "locked" when it starts again. A lock
/// that outlasts the wait (another process really holds the data dir) is
/// the error it always was.
fn open_waiting_for_lock(dir: &Path) -> Result<sled::Db, StoreError> {
    let started = std::time::Instant::now();
    loop {
        match sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            .open()
        {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && started.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            result => return Ok(result?),
        }
    }
}

/// The key of row `index` of `session` in a per-session tree.
fn child_key(session: &str, index: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(session.len() + 9);
    key.extend_from_slice(session.as_bytes());
    key.push(0);
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// The prefix of every row of `session` in a per-session tree.
fn prefix(session: &str) -> Vec<u8> {
    let mut key = session.as_bytes().to_vec();
    key.push(0);
    key
}

/// The trailing big-endian `u64` of a key.
fn tail_u64(key: &[u8]) -> u64 {
    key.len()
        .checked_sub(8)
        .and_then(|start| key[start..].try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    Ok(serde_json::from_slice(bytes)?)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    Ok(serde_json::to_vec(value)?)
}

impl Store {
    /// Opens (or creates) the database in `dir`, moving an older schema
    /// forward; flushes are [`Durability::Process`].
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, Durability::Process)
    }

    /// [`Store::open`] with flushes as durable as `durability` says.
    pub fn open_with(dir: &Path, durability: Durability) -> Result<Self, StoreError> {
        let db = open_waiting_for_lock(dir)?;
        let store = Self {
            durable: DurableFlush::new(db.clone(), dir, durability)?,
            meta: db.open_tree("meta")?,
            sessions: db.open_tree("sessions")?,
            by_time: db.open_tree("sessions_by_time")?,
            by_meta: db.open_tree("sessions_by_meta")?,
            by_scope: db.open_tree("sessions_by_scope")?,
            events: db.open_tree("events")?,
            history: db.open_tree("history")?,
            transcript: db.open_tree("transcript")?,
            outbox: db.open_tree(crate::webhooks::OUTBOX_TREE)?,
            faults: Arc::default(),
            flushes: Arc::default(),
            db,
        };
        match store.schema_version()? {
            None => {
                store
                    .meta
                    .insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
            }
            Some(found) if found > SCHEMA_VERSION => return Err(StoreError::Schema { found }),
            Some(1) => {
                store.migrate_from_v1()?;
                store.flush_blocking()?;
            }
            Some(_) => {}
        }
        Ok(store)
    }

    fn schema_version(&self) -> Result<Option<u32>, StoreError> {
        Ok(self.meta.get("schema_version")?.map(|bytes| {
            bytes
                .as_ref()
                .try_into()
                .map(u32::from_be_bytes)
                .unwrap_or(u32::MAX)
        }))
    }

    /// A tree of another module (`auth`, `release`, …) in the same
    /// database, so one flush makes every module's writes durable and one
    /// lock keeps a second process off the data dir. Each module documents
    /// its own trees.
    pub fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    /// The database itself, for multi-tree transactions of other modules.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Whether the database answers: one read of one key, whatever the
    /// number of sessions (for `/readyz`).
    pub fn check(&self) -> Result<(), StoreError> {
        self.schema_version().map(|_| ())
    }

    /// Version 1 kept the history inside the session record and had no
    /// listing indexes: move the history out, build the indexes.
    fn migrate_from_v1(&self) -> Result<(), StoreError> {
        for entry in self.sessions.iter() {
            let (_, bytes) = entry?;
            let mut old: Value = decode(&bytes)?;
            let history = old
                .get_mut("history")
                .map(Value::take)
                .and_then(|h| match h {
                    Value::Array(messages) => Some(messages),
                    _ => None,
                })
                .unwrap_or_default();
            let mut record = SessionRecord::from_v1(old)?;
            // Version 1 knew a crashed turn by its log not ending in a
            // terminal event; version 2 keeps a flag.
            record.turn_running = self
                .last_event(&record.id)
                .ok()
                .flatten()
                .is_some_and(|last| !last.event.ends_turn());
            self.clear(&self.history, &record.id)?;
            self.append_history(&record.id, &history, &mut Tail::default())?;
            self.put_session(&record)?;
            self.index_session(&record)?;
        }
        self.meta
            .insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
        Ok(())
    }
}
