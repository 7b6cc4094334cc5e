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
//! | `events` | session id, `0x00`, seq (u64 BE) | [`Envelope`] JSON |
//! | `history` | session id, `0x00`, index (u64 BE) | a model message (Anthropic shape) |
//! | `transcript` | session id, `0x00`, index (u64 BE) | [`TranscriptMessage`] JSON |
//!
//! Next to sled's files, `karta-journal-<generation>.log`: the write-ahead
//! journal of the session log ([`Durability::Process`]; `journal.rs`).
//!
//! Big-endian integers make a prefix scan return a session's rows in order,
//! and a session id (`[A-Za-z0-9_-]`) never contains the `0x00` separator.
//! Listing and readiness read the index trees and never the histories, so
//! they cost the same with ten sessions as with a million histories.

mod journal;
mod records;
mod sessions;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use karta_harness::Envelope;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub(crate) use journal::JournalWrite;
pub use records::{
    Participant, ParticipantType, Role, SessionRecord, SessionScope, TranscriptMessage,
};
pub use sessions::SessionPage;

/// The most memory sled's page cache may hold (its default is 1 GiB):
/// with sessions on disk and only those in use in memory, the cache is
/// what grows with the data, and this bounds it.
pub const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// How far a write is durable once a flush has acknowledged it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// It survives the host process dying (`kill -9`, a panic, the OOM
    /// killer): the session log is journaled (`store/journal.rs`: a flush
    /// of it is one `write(2)` into the kernel, which outlives the
    /// process) and every other flush is sled's, which writes its log
    /// through to the device with `sync_file_range` — neither flushes the
    /// device's cache nor commits the file's size, and sled syncs its log
    /// on its own every 500 ms; values over 128 KiB (sled's blobs) are
    /// written with no sync at all. A crash of the machine or a power cut
    /// can lose what the last ~0.5 s acknowledged. The default.
    #[default]
    Process,
    /// It also survives the machine: no journal, and every flush (the
    /// session log's too) ends with a `syncfs` of the data dir's file
    /// system, which makes sled's log, its blobs and their directory
    /// entries stable and flushes the device's cache. One
    /// more disk sync per flush (~1–1.5 ms on the project's machine: the
    /// built-in turn 1.9–2.5 → 3.9–5.8 ms, BENCHMARKS.md); it also writes
    /// out whatever else is dirty on that file system, so give the data dir
    /// one of its own when the cost must be predictable.
    Machine,
}

/// The flush that acknowledges writes: sled's, then, for
/// [`Durability::Machine`], the file system's.
#[derive(Clone)]
struct DurableFlush {
    db: sled::Db,
    /// The data dir, open, when every flush must reach stable storage.
    disk: Option<Arc<std::fs::File>>,
    /// File-system syncs done (tests and `/metrics` see it happen).
    syncs: prometheus_client::metrics::counter::Counter,
    /// The journal that makes the session log's writes survive the process
    /// without a disk wait ([`Durability::Process`] only).
    journal: Option<journal::Journal>,
    /// How many journaled writes opening the store replayed.
    replayed: u64,
}

impl DurableFlush {
    /// Replays the journal a crash left (under [`Durability::Process`]).
    fn new(db: sled::Db, dir: &Path, durability: Durability) -> Result<Self, StoreError> {
        let (disk, journal, replayed) = match durability {
            Durability::Process => {
                let (journal, replayed) = journal::Journal::open(&db, dir)?;
                (None, Some(journal), replayed)
            }
            // A journal a Process-durability run left is replayed all the
            // same, and none is kept.
            Durability::Machine => {
                let (_, replayed) = journal::Journal::open(&db, dir)?;
                let disk = Arc::new(std::fs::File::open(dir).map_err(sled::Error::Io)?);
                (Some(disk), None, replayed)
            }
        };
        Ok(Self {
            db,
            disk,
            syncs: Default::default(),
            journal,
            replayed,
        })
    }

    /// Makes every write so far durable (a checkpoint of the journal).
    fn flush(&self) -> Result<(), sled::Error> {
        match &self.journal {
            Some(journal) => journal.checkpoint()?,
            None => {
                self.db.flush()?;
            }
        }
        if let Some(dir) = &self.disk {
            rustix::fs::syncfs(dir.as_ref()).map_err(|e| sled::Error::Io(e.into()))?;
            self.syncs.inc();
        }
        Ok(())
    }

    /// Makes every journaled write so far durable: a journal commit, or
    /// a full flush when there is no journal.
    fn commit(&self) -> Result<(), sled::Error> {
        match &self.journal {
            Some(journal) => journal.commit(),
            None => self.flush(),
        }
    }
}

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

/// Callers of [`Store::flush`] waiting for the next flush, and whether a
/// flusher runs.
#[derive(Default)]
struct FlushGroup {
    state: std::sync::Mutex<FlushState>,
}

#[derive(Default)]
struct FlushState {
    /// Whether a flusher is on the blocking pool (it flushes until nobody
    /// waits).
    running: bool,
    /// Who waits for a flush that starts after they joined.
    waiting: Vec<tokio::sync::oneshot::Sender<Result<(), sled::Error>>>,
}

/// The flusher's task. If it never runs (the runtime is shutting down) or
/// panics, dropping it frees the flusher's place and drops the waiters'
/// senders: they get an error, not a hang.
struct Flusher {
    group: Arc<FlushGroup>,
    flush: DurableFlush,
    finished: bool,
}

impl Flusher {
    fn run(mut self) {
        self.group.run(&self.flush);
        self.finished = true;
    }

    /// Serves whoever waits now with one flush; returns the flusher if
    /// others joined meanwhile (to run on elsewhere), `None` once nobody
    /// waits (the group is free again).
    fn one_round(mut self) -> Option<Self> {
        if self.group.round(&self.flush) {
            Some(self)
        } else {
            self.finished = true;
            None
        }
    }
}

/// Where the first round of a flush runs (see [`Store::flush_here`]).
#[derive(Clone, Copy)]
enum FlushThread {
    Caller,
    BlockingPool,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        if !self.finished {
            let mut group = self.group.lock();
            group.running = false;
            group.waiting.clear();
        }
    }
}

impl FlushGroup {
    fn lock(&self) -> std::sync::MutexGuard<'_, FlushState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The flusher: takes everyone waiting, flushes once, answers them
    /// all; again while anyone waits.
    fn run(&self, flush: &DurableFlush) {
        while self.round(flush) {}
    }

    /// One round: takes everyone waiting, flushes once, answers them.
    /// Whether anyone waits again (else the group is marked free).
    fn round(&self, flush: &DurableFlush) -> bool {
        let batch = {
            let mut group = self.lock();
            if group.waiting.is_empty() {
                group.running = false;
                return false;
            }
            std::mem::take(&mut group.waiting)
        };
        let result = flush.flush();
        // The group's next state is settled before anyone is answered: a
        // caller answered by the last round finds the group free, and one
        // that joined during the flush is served by the next round.
        let again = {
            let mut group = self.lock();
            let again = !group.waiting.is_empty();
            if !again {
                group.running = false;
            }
            again
        };
        for waiter in batch {
            let _ = waiter.send(result.clone());
        }
        again
    }
}

/// Failures a test asked for: the next N flushes / event writes /
/// transcript writes fail.
#[derive(Default)]
struct Faults {
    flushes: AtomicU32,
    event_writes: AtomicU32,
    message_writes: AtomicU32,
    /// How long a failing flush takes before it fails (ms), so that a test
    /// can see what a turn does while its message's flush is running.
    failing_flush_ms: AtomicU32,
}

impl Faults {
    fn take(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
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

    /// Makes every write so far durable, on this thread (it blocks: for
    /// code that is not async, or is on a blocking thread already). No
    /// group commit: [`Store::flush`] is the one for turns.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        Ok(self.durable.flush()?)
    }

    /// How durable an acknowledged write is.
    pub fn durability(&self) -> Durability {
        if self.durable.disk.is_some() {
            Durability::Machine
        } else {
            Durability::Process
        }
    }

    /// How many journaled writes opening the store replayed (the writes a
    /// killed process had acknowledged but sled had not flushed).
    pub fn journal_replayed(&self) -> u64 {
        self.durable.replayed
    }

    /// How many file-system syncs flushes have made ([`Durability::Machine`]
    /// only; always 0 otherwise).
    pub fn disk_syncs(&self) -> u64 {
        self.durable.syncs.get()
    }

    /// The counter behind [`Store::disk_syncs`], for a metrics registry
    /// (`karta_store_disk_syncs_total`).
    pub fn disk_sync_counter(&self) -> prometheus_client::metrics::counter::Counter {
        self.durable.syncs.clone()
    }

    /// Makes every write so far durable.
    ///
    /// **Group commit**: one flush at a time runs, on the blocking pool,
    /// and serves every caller that was waiting when it started — under N
    /// concurrent turns, one `fsync` acknowledges them all instead of N
    /// queued one behind the other. A caller that arrives while a flush
    /// runs waits for the next one (the running one may have started
    /// before its writes), which starts as soon as the running one ends.
    ///
    /// Runs sled's blocking `flush` on the blocking pool: `flush_async`
    /// stalled for good under a few hundred concurrent callers here (the
    /// 500-session bench hung with it). Not `block_in_place`: it turns the
    /// calling worker into a blocking thread that later exits, and a harness
    /// process spawned from that thread dies with it (`PR_SET_PDEATHSIG`
    /// follows the spawning *thread*) — seen in the overhead bench.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.flush_on(FlushThread::BlockingPool).await
    }

    /// [`Store::flush`] for a caller with nothing else to do meanwhile (a
    /// turn's end, about to publish its terminal event): when no flush
    /// runs, the round that serves it runs right here, on this task's
    /// thread, instead of one hop away on the blocking pool.
    ///
    /// Why: that hop and the wake-up back cost 0.08–0.27 ms a flush on
    /// this kind of machine (BENCHMARKS.md, *The disk after idling*), up to
    /// half of what sled's flush itself takes. The thread is held for one
    /// round only (~0.1–0.6 ms; as long as the disk takes, if it stalls):
    /// callers that joined meanwhile are served by a flusher on the
    /// blocking pool, as with [`Store::flush`], so under many turns no
    /// worker thread is kept flushing. Not for a caller whose task should
    /// go on while the flush runs (a message's flush runs beside its
    /// turn's start).
    pub async fn flush_here(&self) -> Result<(), StoreError> {
        self.flush_on(FlushThread::Caller).await
    }

    /// Makes durable every write made through this store's own methods —
    /// the session trees, the webhook outbox rows written with them — and
    /// through `Store::write` (the meter's journal rows). Writes to any
    /// other tree need [`Store::flush`].
    ///
    /// Under [`Durability::Process`] that is a commit of the store's
    /// journal: one `write(2)` of the writes made since the last one, on
    /// this thread, and no wait for the disk (`store/journal.rs` says why
    /// that keeps the promise); it waits only when a checkpoint (sled's
    /// flush, every few seconds) runs. Under [`Durability::Machine`] it is
    /// [`Store::flush`].
    pub async fn flush_log(&self) -> Result<(), StoreError> {
        self.flush_log_on(FlushThread::BlockingPool).await
    }

    /// [`Store::flush_log`]; under [`Durability::Machine`],
    /// [`Store::flush_here`].
    pub async fn flush_log_here(&self) -> Result<(), StoreError> {
        self.flush_log_on(FlushThread::Caller).await
    }

    async fn flush_log_on(&self, thread: FlushThread) -> Result<(), StoreError> {
        if self.durable.journal.is_none() {
            return self.flush_on(thread).await;
        }
        self.injected_flush_failure().await?;
        Ok(self.durable.commit()?)
    }

    /// A write to sled whose operations the journal records (under
    /// [`Durability::Process`]), so that [`Store::flush_log`] makes it
    /// durable. Holds the journal's lock until dropped: make one write's
    /// operations and drop it, calling no other method of the store.
    pub(crate) fn write(&self) -> JournalWrite<'_> {
        match &self.durable.journal {
            Some(journal) => journal.begin(),
            None => JournalWrite::unjournaled(),
        }
    }

    /// A failure a test injected into the next flush (feature
    /// `fault-injection`), after the delay it asked for.
    async fn injected_flush_failure(&self) -> Result<(), StoreError> {
        if Faults::take(&self.faults.flushes) {
            let delay = self.faults.failing_flush_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(delay.into())).await;
            }
            return Err(StoreError::Injected);
        }
        Ok(())
    }

    async fn flush_on(&self, thread: FlushThread) -> Result<(), StoreError> {
        self.injected_flush_failure().await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let lead = {
            let mut group = self.flushes.lock();
            group.waiting.push(tx);
            !std::mem::replace(&mut group.running, true)
        };
        if lead {
            let flusher = Flusher {
                group: self.flushes.clone(),
                flush: self.durable.clone(),
                finished: false,
            };
            match thread {
                FlushThread::Caller => {
                    if let Some(rest) = flusher.one_round() {
                        drop(tokio::task::spawn_blocking(move || rest.run()));
                    }
                }
                // Not awaited: the flusher serves whoever waits.
                FlushThread::BlockingPool => {
                    drop(tokio::task::spawn_blocking(move || flusher.run()))
                }
            }
        }
        match rx.await {
            Ok(result) => Ok(result?),
            Err(_) => Err(StoreError::Sled(sled::Error::Unsupported(
                "the flush task stopped".into(),
            ))),
        }
    }

    /// Makes the next `flushes` flushes and the next `event_writes` event
    /// writes fail, for tests of what the host does when storage fails.
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub fn inject_failures(&self, flushes: u32, event_writes: u32) {
        self.faults.flushes.store(flushes, Ordering::SeqCst);
        self.faults
            .event_writes
            .store(event_writes, Ordering::SeqCst);
        self.faults.failing_flush_ms.store(0, Ordering::SeqCst);
    }

    /// Makes the next `writes` transcript writes fail.
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub fn inject_message_write_failures(&self, writes: u32) {
        self.faults.message_writes.store(writes, Ordering::SeqCst);
    }

    /// Makes the next flush fail after `delay` (it runs as long as that).
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub fn inject_slow_flush_failure(&self, delay: std::time::Duration) {
        let ms = u32::try_from(delay.as_millis()).unwrap_or(u32::MAX);
        self.faults.failing_flush_ms.store(ms, Ordering::SeqCst);
        self.faults.flushes.store(1, Ordering::SeqCst);
    }

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
    fn with_outbox(
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
    fn clear(&self, tree: &sled::Tree, session: &str) -> Result<(), StoreError> {
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

/// The last index of `session`'s rows in `tree`.
/// Where one of a session's lists (its transcript, its history) ends: the
/// index its next entry takes, once known. A session in memory keeps one
/// of each under its state lock, which every append of its lists holds, so
/// only its first append after a load looks the end up in the tree (a
/// reverse scan, tens of µs on a cold cache, that would otherwise run
/// several times a turn).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tail(Option<u64>);

impl Tail {
    /// The index the next entry of `session` in `tree` takes.
    fn index(&self, tree: &sled::Tree, session: &str) -> Result<u64, StoreError> {
        match self.0 {
            Some(index) => Ok(index),
            None => Ok(last_index(tree, session)?.map_or(0, |last| last + 1)),
        }
    }
}

fn last_index(tree: &sled::Tree, session: &str) -> Result<Option<u64>, StoreError> {
    match tree.scan_prefix(prefix(session)).keys().next_back() {
        Some(key) => Ok(Some(tail_u64(&key?))),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Every kind of flush of a [`Durability::Machine`] store syncs the
    /// file system once, and what it acknowledged is there after a reopen;
    /// a [`Durability::Process`] store never syncs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn machine_durability_syncs_on_every_kind_of_flush() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open_with(dir.path(), Durability::Machine).expect("store");
            assert_eq!(store.durability(), Durability::Machine);
            let start = store.disk_syncs();
            store.meta.insert("probe", b"1".as_slice()).expect("insert");
            store.flush().await.expect("flush");
            assert_eq!(store.disk_syncs(), start + 1);
            store.flush_here().await.expect("flush here");
            assert_eq!(store.disk_syncs(), start + 2);
            store.flush_blocking().expect("flush blocking");
            assert_eq!(store.disk_syncs(), start + 3);
        }
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.durability(), Durability::Process);
        assert_eq!(
            store.meta.get("probe").expect("read").as_deref(),
            Some(b"1".as_slice())
        );
        store.flush().await.expect("flush");
        store.flush_blocking().expect("flush blocking");
        assert_eq!(store.disk_syncs(), 0);
    }

    /// Many callers at once, over and over, flushing on their own thread
    /// or not: every one is answered (one that joined during a caller's
    /// round is served by the flusher that round hands over to), and the
    /// group is free after, so later flushes run too. A round that forgot
    /// its waiters, or left the group marked running with no flusher,
    /// hangs here.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flushes_on_the_callers_thread_serve_everyone_and_free_the_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let tree = store.tree("flush_test").expect("tree");
        for round in 0..40u64 {
            let callers = (0..16u64).map(|i| {
                let store = store.clone();
                let tree = tree.clone();
                tokio::spawn(async move {
                    tree.insert((round * 100 + i).to_be_bytes(), vec![1u8; 512])
                        .expect("insert");
                    if i % 4 == 3 {
                        store.flush().await
                    } else {
                        store.flush_here().await
                    }
                })
            });
            let all = futures_util::future::join_all(callers);
            let results = tokio::time::timeout(std::time::Duration::from_secs(30), all)
                .await
                .expect("every flush answered");
            for result in results {
                result.expect("the task").expect("the flush");
            }
        }
        {
            let group = store.flushes.lock();
            assert!(!group.running, "the group is free again");
            assert!(group.waiting.is_empty());
        }
        for _ in 0..2 {
            tokio::time::timeout(std::time::Duration::from_secs(30), async {
                store.flush_here().await.expect("a later flush here");
                store.flush().await.expect("a later flush");
            })
            .await
            .expect("later flushes run");
        }
    }
}
