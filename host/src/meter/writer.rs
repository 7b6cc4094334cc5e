//! Group commit through a journal: [`super::Meter::record`] queues a record in
//! memory and returns; one writer thread takes everything queued as a
//! *batch*, logs it with **one** insert into the journal (`meter_journal`),
//! and later *applies* many logged batches at once — every record row and
//! counter row they touch, and the removal of their journal rows — in one
//! sled transaction.
//!
//! Why two steps: a sled transaction (or batch) is dear whatever it holds:
//! sled seals its log buffer twice for it, and each seal is a write, a
//! `sync_file_range` and a wake-up of sled's I/O threads. One transaction
//! per turn doubled the disk writes of a built-in turn. A journal row is a
//! plain insert, atomic on its own, so a batch is in the database — and
//! covered by the next flush of the store — at the cost of one insert; the
//! transactions come once per [`APPLY_AFTER`], [`MAX_UNAPPLIED`] batches or
//! [`MAX_UNAPPLIED_RECORDS`] records, or when a reader of the trees asks. A
//! batch of more than [`MAX_ROW`] records (a flood) takes several rows,
//! each whole records, so a row never grows into one of sled's blobs.
//!
//! - **When a batch is logged.** At once when someone waits for it (a turn
//!   acknowledging its usage, a reader, a flush) or the queue holds
//!   [`MAX_BATCH`] records; otherwise [`LOG_AFTER`] after the oldest was
//!   queued. A turn acknowledging its usage logs the queue on its own
//!   thread when nobody else is logging (one insert; no hand-off to the
//!   writer and back), so the records of one turn (its model calls and
//!   tool calls) share one journal row; otherwise the writer logs. One
//!   logger at a time, so batches are logged in the order they were taken.
//! - **When the writer wakes.** When a deadline it set comes (the queued
//!   records' log, the oldest logged batch's apply), or when someone waits
//!   for it. Queuing a record wakes it only when it waits with no deadline
//!   at all (nothing queued or unapplied) or the queue is full: during a
//!   stream of turns it is not woken in the middle of each one, where its
//!   thread would take a CPU from the harness and the wake-up would sit on
//!   the model answer's way back to the harness (the gateway queues the
//!   call's records as the answer passes).
//! - **Idempotency.** A record id already stored, queued, logged or being
//!   applied is [`Recorded::Duplicate`] at once (checked under the queue's
//!   lock); applying checks the records tree again (an id twice in one
//!   batch, or stored by another meter of the database, counts once).
//! - **Budgets see a record at once.** The queue keeps, per budget counter
//!   row (org, project, end user, key; day and month), the deltas of the
//!   records queued and of every batch not yet applied. [`super::Meter::spent`]
//!   adds them to the stored row under the queue's lock. Every counter row
//!   an apply writes carries the *stamp* of the last batch it applied (a
//!   batch's stamp is the sequence number of its last record; stamps rise
//!   across restarts, see the journal's `hw` row), so a reader can tell
//!   which batches the stored row already holds: each delta is counted
//!   exactly once, never zero times.
//! - **Acknowledgement.** [`super::Meter::commit_session_async`] returns once
//!   everything queued before it is logged (in the database, not yet on
//!   disk): a turn flushes the store itself before it tells anyone, and that
//!   flush carries the journal rows. [`super::Meter::flush`] returns when it is
//!   applied *and* on disk. What a caller was told after a flush survives
//!   `kill -9`; a record queued but not flushed may be lost with its
//!   counters (never one without the other: a journal row holds both).
//! - **Recovery.** Opening the meter applies every journal row left by a
//!   crash before anything else, in one transaction that also removes them:
//!   exactly once.
//! - **Failure.** A journal insert that fails loses its batch; applying
//!   retries batch by batch, then record by record; a record that still
//!   fails (a damaged counter row) is dropped and logged. Either way the
//!   record's session is remembered: its next acknowledgement or
//!   [`super::Meter::flush_session`] fails.
//! - **Shutdown.** The last clone of the meter dropped, the writer logs and
//!   applies what is queued and stops.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::counters::Counters;
use super::error::MeterError;
use super::ledger::{Recorded, UsageRecord};

/// How long records nobody waits for may stay queued before the writer
/// logs them (see the module's docs). A turn's records are logged sooner,
/// by its own acknowledgement; this bounds the rest (a call whose turn
/// ended without one).
pub(crate) const LOG_AFTER: Duration = Duration::from_millis(100);

/// Records queued that make the writer log them at once, waiter or not.
pub(crate) const MAX_BATCH: usize = 512;

/// Records in one journal row at most (~0.5 KiB each: a row stays far
/// below sled's 128 KiB blob threshold).
pub(crate) const MAX_ROW: usize = 64;

/// How long a logged batch waits to be applied when nobody reads.
pub(crate) const APPLY_AFTER: Duration = Duration::from_millis(100);

/// Logged batches that make the writer apply them at once.
pub(crate) const MAX_UNAPPLIED: usize = 64;

/// Logged records that make the writer apply them at once (the size of
/// one apply transaction, roughly).
pub(crate) const MAX_UNAPPLIED_RECORDS: usize = 4096;

/// The journal's row holding the highest stamp ever applied (journal rows
/// themselves are keyed by the sequence number of their last record, 8
/// bytes big-endian).
const HIGH_WATER: &[u8] = b"hw";

/// Sessions whose lost records are remembered at most (a session that
/// never flushes must not grow the map without bound).
const MAX_LOST_SESSIONS: usize = 10_000;

/// A record waiting for the writer.
pub(crate) struct Pending {
    pub(crate) row_key: Vec<u8>,
    pub(crate) record: UsageRecord,
    pub(crate) cost_micros: u64,
    pub(crate) delta: Counters,
}

/// One record as the journal holds it: everything applying it needs.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    session: String,
    row_key: Vec<u8>,
    row: Vec<u8>,
    counter_keys: Vec<Vec<u8>>,
    delta: Counters,
}

/// A batch taken from the queue and not yet applied, as readers of the
/// counters see it.
struct Batch {
    /// The sequence number of its first record.
    first: u64,
    /// Its stamp: the sequence number of its last record.
    stamp: u64,
    /// Its deltas per budget counter row.
    deltas: HashMap<Vec<u8>, Counters>,
    /// Its record rows' keys.
    ids: HashSet<Vec<u8>>,
    /// Its records and journal rows, once logged; `None` while being
    /// logged.
    logged: Option<Logged>,
}

/// A batch's records as logged, the keys of its journal rows, and when.
#[derive(Clone)]
struct Logged {
    stamp: u64,
    entries: Arc<[Entry]>,
    rows: Arc<[u64]>,
    at: Instant,
}

/// What the queue's lock guards.
#[derive(Default)]
struct Queue {
    /// The sequence number of the last record queued.
    queued_seq: u64,
    /// Records queued, not yet taken by the writer.
    queued: Vec<Pending>,
    /// Their deltas per budget counter row.
    queued_deltas: HashMap<Vec<u8>, Counters>,
    /// Their record rows' keys.
    queued_ids: HashSet<Vec<u8>>,
    /// Batches taken and not yet applied, oldest first.
    unapplied: VecDeque<Batch>,
    /// Every record up to this sequence number is logged or applied (or
    /// lost).
    logged: u64,
    /// Every record up to this sequence number is applied (or lost).
    applied: u64,
    /// Every record up to this sequence number is applied and on disk.
    durable: u64,
    /// A flush waits for this sequence number to be applied and on disk.
    wanted: u64,
    /// An acknowledgement waits for this sequence number to be logged.
    log_wanted: u64,
    /// A reader waits for this sequence number to be applied.
    apply_wanted: u64,
    /// The last failed disk flush: what it was to cover, and why.
    flush_failed: Option<(u64, String)>,
    /// Why records of a session were lost, by session id.
    lost: HashMap<String, String>,
    /// A batch is being logged, by the writer or by a waiter
    /// ([`Writer::logged`]): one logger at a time, so batches are logged in
    /// the order they were taken and `logged` only rises.
    logging: bool,
    /// The writer waits for work with no deadline (nothing queued, nothing
    /// to apply): only a notification wakes it. A writer waiting for a
    /// deadline needs none for new records: it logs them when they are due.
    sleeping: bool,
    /// When the oldest record queued was queued.
    queued_since: Option<Instant>,
    /// Times [`Writer::enqueue`] woke the writer (tests read it).
    #[cfg(test)]
    woken_by_enqueue: u64,
    /// Tests hold the writer still (it takes no work while set).
    #[cfg(test)]
    held: bool,
    /// Batches logged by waiters rather than by the writer (tests read it).
    #[cfg(test)]
    logged_by_waiters: u64,
    /// The meter is being dropped.
    shutdown: bool,
    /// The writer thread is gone (it panicked, or shut down).
    gone: bool,
}

impl Queue {
    /// `applied` from the batches left: everything before the oldest
    /// unapplied batch.
    fn settle_applied(&mut self) {
        self.applied = match self.unapplied.front() {
            Some(batch) => batch.first - 1,
            None => self.logged,
        };
    }

    fn lose(&mut self, session: String, why: String) {
        if self.lost.len() >= MAX_LOST_SESSIONS {
            self.lost.clear();
        }
        self.lost.insert(session, why);
    }

    /// Whether logged batches should be applied now.
    fn apply_due(&self, now: Instant) -> bool {
        let (batches, records) = self
            .unapplied
            .iter()
            .filter_map(|b| b.logged.as_ref())
            .fold((0, 0), |(n, r), l| (n + 1, r + l.entries.len()));
        if batches == 0 {
            return false;
        }
        self.shutdown
            || self.apply_wanted > self.applied
            || self.wanted > self.applied
            || batches >= MAX_UNAPPLIED
            || records >= MAX_UNAPPLIED_RECORDS
            || self.apply_deadline().is_some_and(|at| at <= now)
    }

    /// When the oldest logged batch is due to be applied.
    fn apply_deadline(&self) -> Option<Instant> {
        self.unapplied
            .iter()
            .find_map(|b| b.logged.as_ref().map(|l| l.at))
            .map(|at| at + APPLY_AFTER)
    }

    /// When the queued records are due to be logged, nobody waiting.
    fn log_deadline(&self) -> Option<Instant> {
        self.queued_since.map(|at| at + LOG_AFTER)
    }

    /// Whether queued records are to be logged now.
    fn log_due(&self, now: Instant) -> bool {
        !self.queued.is_empty()
            && !self.logging
            && (self.log_urgent() || self.log_deadline().is_some_and(|at| at <= now))
    }

    /// Whether a test holds the writer still.
    fn is_held(&self) -> bool {
        #[cfg(test)]
        return self.held;
        #[cfg(not(test))]
        false
    }

    /// Whether someone waits for the queued records.
    fn log_urgent(&self) -> bool {
        let waited = self.log_wanted.max(self.apply_wanted).max(self.wanted);
        self.shutdown || waited > self.logged || self.queued.len() >= MAX_BATCH
    }
}

/// The trees the writer writes, and the queue.
struct Shared {
    /// Its flush makes the ledger durable as the store's flushes do.
    store: crate::store::Store,
    records: sled::Tree,
    totals: sled::Tree,
    journal: sled::Tree,
    queue: Mutex<Queue>,
    /// The writer waits here for work.
    work: Condvar,
    /// Flushes and apply waits wait here.
    done: Condvar,
    /// Async log waits ([`Writer::logged`]) wait here: woken with `done`.
    done_async: tokio::sync::Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing under the lock leaves the queue half-changed on a panic.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify_done(&self) {
        self.done.notify_all();
        self.done_async.notify_waiters();
    }
}

/// The group-commit writer of one meter.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Sets `gone` when the writer thread ends, however it ends.
struct GoneOnExit(Arc<Shared>);

impl Drop for GoneOnExit {
    fn drop(&mut self) {
        let mut queue = self.0.lock();
        queue.gone = true;
        drop(queue);
        self.0.notify_done();
    }
}

impl Writer {
    /// Applies what the journal holds (a crash's leftovers), then starts
    /// the writer of `records` and `totals`, flushing through `store`.
    pub(crate) fn start(
        store: crate::store::Store,
        records: sled::Tree,
        totals: sled::Tree,
        journal: sled::Tree,
    ) -> Result<Self, MeterError> {
        let base = recover(&records, &totals, &journal)?;
        let shared = Arc::new(Shared {
            store,
            records,
            totals,
            journal,
            queue: Mutex::new(Queue {
                queued_seq: base,
                logged: base,
                applied: base,
                durable: base,
                wanted: base,
                log_wanted: base,
                apply_wanted: base,
                ..Queue::default()
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            done_async: tokio::sync::Notify::new(),
        });
        let running = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("karta-meter-writer".into())
            .spawn(move || {
                let _gone = GoneOnExit(Arc::clone(&running));
                run(&running);
            })
            .map_err(|e| MeterError::Unwritten(format!("cannot start the writer: {e}")))?;
        Ok(Writer {
            shared,
            thread: Some(thread),
        })
    }

    /// Queues `pending` unless its id is stored, queued, logged or being
    /// applied; `budget_keys` are the budget counter rows it bumps.
    pub(crate) fn enqueue(
        &self,
        pending: Pending,
        budget_keys: Vec<Vec<u8>>,
    ) -> Result<Recorded, MeterError> {
        let shared = &*self.shared;
        let mut queue = shared.lock();
        if queue.gone {
            return Err(MeterError::Unwritten("the ledger's writer stopped".into()));
        }
        let known = queue.queued_ids.contains(&pending.row_key)
            || queue
                .unapplied
                .iter()
                .any(|b| b.ids.contains(&pending.row_key));
        // Read under the lock: the writer drops a batch from `unapplied`
        // under it only after the batch is applied, so an id is always in
        // one of the places.
        if known || shared.records.contains_key(&pending.row_key)? {
            return Ok(Recorded::Duplicate);
        }
        for key in budget_keys {
            queue
                .queued_deltas
                .entry(key)
                .or_default()
                .add(&pending.delta);
        }
        queue.queued_ids.insert(pending.row_key.clone());
        queue.queued_seq += 1;
        let cost_micros = pending.cost_micros;
        queue.queued.push(pending);
        queue.queued_since.get_or_insert_with(Instant::now);
        // A writer waiting for a deadline logs these when they are due (or
        // the turn's acknowledgement logs them first): waking it would put
        // its thread beside the harness in the middle of the turn, and the
        // wake-up on the model answer's way back. Only a writer waiting
        // without a deadline has to be told.
        if queue.sleeping || queue.queued.len() >= MAX_BATCH {
            #[cfg(test)]
            {
                queue.woken_by_enqueue += 1;
            }
            wake(shared, &mut queue);
        }
        Ok(Recorded::New { cost_micros })
    }

    /// What the records queued or not yet applied add to the budget counter
    /// row `key` whose stored value carries `stamp`, plus that stored
    /// value: read by `read_stored` under the queue's lock.
    pub(crate) fn with_pending(
        &self,
        key: &[u8],
        read_stored: impl FnOnce() -> Result<(Counters, u64), MeterError>,
    ) -> Result<Counters, MeterError> {
        let queue = self.shared.lock();
        let (mut counters, stamp) = read_stored()?;
        if let Some(delta) = queue.queued_deltas.get(key) {
            counters.add(delta);
        }
        // A row stamped with a batch's stamp (or a later one) holds it.
        for batch in queue.unapplied.iter().filter(|b| b.stamp > stamp) {
            if let Some(delta) = batch.deltas.get(key) {
                counters.add(delta);
            }
        }
        Ok(counters)
    }

    /// The records' tree (tests read it).
    #[cfg(test)]
    pub(crate) fn records(&self) -> &sled::Tree {
        &self.shared.records
    }

    /// Waits until every record queued before the call is applied to the
    /// records and counters (in sled's page cache, not necessarily on
    /// disk): what a reader of those trees needs.
    pub(crate) fn wait_committed(&self) -> Result<(), MeterError> {
        let shared = &*self.shared;
        let mut queue = shared.lock();
        let target = queue.queued_seq;
        if queue.applied < target {
            queue.apply_wanted = queue.apply_wanted.max(target);
            wake(shared, &mut queue);
        }
        while queue.applied < target {
            if queue.gone {
                return Err(MeterError::Unwritten("the ledger's writer stopped".into()));
            }
            queue = shared
                .done
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
        }
        Ok(())
    }

    /// Waits, without a blocking thread, until every record queued before
    /// the call is logged: in the database, so that the next flush of the
    /// store makes it durable.
    ///
    /// When nobody is logging, the caller logs the queue itself — one
    /// journal insert, what the writer would do — rather than wake the
    /// writer and wait to be woken: at a turn's end that is two thread
    /// hand-offs off the path to `done`, on a machine where the harness
    /// keeps every CPU busy. The writer, not woken by the records (it waits
    /// for a deadline), finds the queue empty; it still applies the batch
    /// later.
    pub(crate) async fn logged(&self) -> Result<(), MeterError> {
        let shared = &*self.shared;
        let target = shared.lock().queued_seq;
        loop {
            let notified = shared.done_async.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check: a log between the check and the
            // wait still wakes this waiter.
            notified.as_mut().enable();
            {
                let mut queue = shared.lock();
                if queue.logged >= target {
                    return Ok(());
                }
                if queue.gone {
                    return Err(MeterError::Unwritten("the ledger's writer stopped".into()));
                }
                if !queue.logging && !queue.queued.is_empty() {
                    // Records up to `target` are queued, being logged or
                    // logged: none is being logged, so they are queued.
                    let stop_on_panic = StopOnPanic(shared);
                    queue = log(shared, queue);
                    drop(stop_on_panic);
                    #[cfg(test)]
                    {
                        queue.logged_by_waiters += 1;
                    }
                    if queue.sleeping {
                        // Waiting without a deadline: the new batch must
                        // be applied within `APPLY_AFTER`.
                        wake(shared, &mut queue);
                    }
                    continue;
                }
                if queue.log_wanted < target {
                    queue.log_wanted = target;
                    wake(shared, &mut queue);
                }
            }
            notified.await;
        }
    }

    /// Takes (and reports) the records of `session` that were lost since
    /// the last take.
    pub(crate) fn take_lost(&self, session: &str) -> Result<(), MeterError> {
        match self.shared.lock().lost.remove(session) {
            Some(why) => Err(MeterError::Unwritten(format!(
                "usage records of this session could not be written: {why}"
            ))),
            None => Ok(()),
        }
    }

    /// Waits until every record queued before the call is applied and on
    /// disk; then takes (and reports) the records of `session` that were
    /// lost, if asked to.
    pub(crate) fn flush(&self, session: Option<&str>) -> Result<(), MeterError> {
        let shared = &*self.shared;
        let mut queue = shared.lock();
        let target = queue.queued_seq;
        if queue.durable < target {
            queue.wanted = queue.wanted.max(target);
            wake(shared, &mut queue);
        }
        while queue.durable < target {
            if let Some((covered, why)) = &queue.flush_failed
                && *covered >= target
            {
                return Err(MeterError::Unwritten(format!(
                    "the ledger could not be flushed: {why}"
                )));
            }
            if queue.gone {
                return Err(MeterError::Unwritten("the ledger's writer stopped".into()));
            }
            queue = shared
                .done
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
        }
        match session.and_then(|session| queue.lost.remove(session)) {
            Some(why) => Err(MeterError::Unwritten(format!(
                "usage records of this session could not be written: {why}"
            ))),
            None => Ok(()),
        }
    }
}

/// Stops the meter when a waiter's logging panics, as a panic of the writer
/// thread stops it ([`GoneOnExit`]): `logging` would stay set and every
/// later acknowledgement wait for ever; this way each gets an error.
struct StopOnPanic<'a>(&'a Shared);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.lock().gone = true;
            self.0.notify_done();
        }
    }
}

/// Wakes the writer, idle or not: someone waits.
fn wake(shared: &Shared, queue: &mut Queue) {
    queue.sleeping = false;
    shared.work.notify_one();
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.work.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread: logs what is queued, applies what is logged when due,
/// flushes when someone waits for the disk.
fn run(shared: &Shared) {
    loop {
        let mut queue = shared.lock();
        loop {
            let now = Instant::now();
            let flush_due = queue.wanted > queue.durable && queue.applied >= queue.wanted;
            // Records queued while a waiter logs wait for its end (it
            // wakes the writer if it finds it sleeping).
            let log_due = queue.log_due(now);
            if (log_due || queue.apply_due(now) || flush_due) && !queue.is_held() {
                break;
            }
            if queue.shutdown {
                return;
            }
            // Due next: the oldest logged batch's apply, or the queued
            // records' log (unless a waiter is logging: it wakes the
            // writer when done if it must).
            let log_deadline = queue.log_deadline().filter(|_| !queue.logging);
            let deadline = match (queue.apply_deadline(), log_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            queue.sleeping = deadline.is_none();
            // Held by a test: no deadline wakes it, only its release.
            queue = match deadline.filter(|_| !queue.is_held()) {
                Some(at) => {
                    shared
                        .work
                        .wait_timeout(queue, at.saturating_duration_since(now))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => shared
                    .work
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner),
            };
            queue.sleeping = false;
        }
        if !queue.queued.is_empty() && !queue.logging {
            queue = log(shared, queue);
        }
        if queue.apply_due(Instant::now()) {
            queue = apply(shared, queue);
        }
        if queue.wanted > queue.durable && queue.applied >= queue.wanted {
            // One flush covers every record applied so far.
            let covered = queue.applied;
            drop(queue);
            let flushed = shared.store.flush_blocking();
            let mut queue = shared.lock();
            match flushed {
                Ok(_) => {
                    queue.durable = queue.durable.max(covered);
                    queue.flush_failed = None;
                }
                Err(e) => {
                    tracing::error!("cannot flush the usage ledger: {e}");
                    queue.flush_failed = Some((covered, e.to_string()));
                    // Not asked again until a new flush asks.
                    queue.wanted = queue.durable;
                }
            }
            drop(queue);
            shared.notify_done();
        }
    }
}

/// Takes the queue as a batch and logs it in the journal: one insert (one
/// per [`MAX_ROW`] records), each row keyed by the sequence number of its
/// last record.
///
/// Called by the writer or by a waiter ([`Writer::logged`]), never by two
/// at once: `logging` is set while the lock is dropped.
fn log<'a>(shared: &'a Shared, mut queue: MutexGuard<'a, Queue>) -> MutexGuard<'a, Queue> {
    debug_assert!(!queue.logging, "one logger at a time");
    queue.logging = true;
    queue.queued_since = None;
    let pending = std::mem::take(&mut queue.queued);
    let stamp = queue.queued_seq;
    let first = queue.logged + 1;
    let batch = Batch {
        first,
        stamp,
        deltas: std::mem::take(&mut queue.queued_deltas),
        ids: std::mem::take(&mut queue.queued_ids),
        logged: None,
    };
    queue.unapplied.push_back(batch);
    drop(queue);
    let mut lost = Vec::new();
    // Each entry with its record's sequence number.
    let mut entries = Vec::with_capacity(pending.len());
    for (seq, p) in (first..).zip(pending) {
        match super::ledger::encode_row(&p.record, p.cost_micros) {
            Ok(row) => entries.push((
                seq,
                Entry {
                    counter_keys: super::ledger::counter_keys(&p.record),
                    session: p.record.session_id,
                    row_key: p.row_key,
                    row,
                    delta: p.delta,
                },
            )),
            Err(e) => {
                tracing::error!(id = %p.record.id, "cannot encode a usage record: {e}");
                lost.push((p.record.session_id, e.to_string()));
            }
        }
    }
    let mut logged = Vec::with_capacity(entries.len());
    let mut rows = Vec::new();
    let mut entries = entries.into_iter().peekable();
    while entries.peek().is_some() {
        let (seqs, row): (Vec<u64>, Vec<Entry>) = entries.by_ref().take(MAX_ROW).unzip();
        let key = seqs.last().copied().unwrap_or(stamp);
        // Through the store's journal: the turn's flush of its log makes
        // the row durable with it.
        let encoded = encode_batch(&row);
        let inserted = shared
            .store
            .write()
            .insert(&shared.journal, key.to_be_bytes(), encoded);
        match inserted {
            Ok(_) => {
                rows.push(key);
                logged.extend(row);
            }
            Err(e) => {
                tracing::error!("cannot log {} usage records: {e}", row.len());
                let why = e.to_string();
                lost.extend(row.into_iter().map(|e| (e.session, why.clone())));
            }
        }
    }
    let mut queue = shared.lock();
    if rows.is_empty() {
        queue.unapplied.retain(|b| b.stamp != stamp);
    } else {
        let batch = queue
            .unapplied
            .iter_mut()
            .find(|b| b.stamp == stamp)
            .expect("the batch being logged");
        batch.logged = Some(Logged {
            stamp,
            entries: Arc::from(logged),
            rows: Arc::from(rows),
            at: Instant::now(),
        });
    }
    for (session, why) in lost {
        queue.lose(session, why);
    }
    queue.logged = stamp;
    queue.logging = false;
    queue.settle_applied();
    drop(queue);
    shared.notify_done();
    shared.lock()
}

/// Applies every logged batch in one transaction; a transaction that fails
/// is retried batch by batch, then record by record.
fn apply<'a>(shared: &'a Shared, queue: MutexGuard<'a, Queue>) -> MutexGuard<'a, Queue> {
    let batches: Vec<Logged> = queue
        .unapplied
        .iter()
        .map_while(|b| b.logged.clone())
        .collect();
    drop(queue);
    let mut lost = Vec::new();
    if apply_batches(shared, &batches).is_err() {
        for batch in &batches {
            if apply_batches(shared, std::slice::from_ref(batch)).is_ok() {
                continue;
            }
            for entry in batch.entries.iter() {
                let single = Logged {
                    entries: Arc::from(vec![entry.clone()]),
                    rows: Arc::from(Vec::new()),
                    ..batch.clone()
                };
                if let Err(e) = apply_batches(shared, &[single]) {
                    tracing::error!(
                        "cannot apply a usage record of session {}: {e}",
                        entry.session
                    );
                    lost.push((entry.session.clone(), e.to_string()));
                }
            }
            for row in batch.rows.iter() {
                if let Err(e) = shared.journal.remove(row.to_be_bytes()) {
                    tracing::error!("cannot remove a journal row: {e}");
                }
            }
        }
    }
    let mut queue = shared.lock();
    let applied: HashSet<u64> = batches.iter().map(|b| b.stamp).collect();
    queue.unapplied.retain(|b| !applied.contains(&b.stamp));
    for (session, why) in lost {
        queue.lose(session, why);
    }
    queue.settle_applied();
    drop(queue);
    shared.notify_done();
    shared.lock()
}

/// [`apply_logged`] of the writer's trees, stamped with the last batch's
/// stamp.
fn apply_batches(shared: &Shared, batches: &[Logged]) -> Result<(), MeterError> {
    let Some(stamp) = batches.iter().map(|b| b.stamp).max() else {
        return Ok(());
    };
    apply_logged(
        (&shared.records, &shared.totals, &shared.journal),
        batches,
        stamp,
    )
}

/// One transaction: each new record's row of `batches`, every counter row
/// they bump bumped once by the sum of their deltas and stamped `stamp`,
/// their journal rows removed and the high-water stamp raised to `stamp`.
fn apply_logged(
    (records, totals, journal): (&sled::Tree, &sled::Tree, &sled::Tree),
    batches: &[Logged],
    stamp: u64,
) -> Result<(), MeterError> {
    (records, totals, journal).transaction(|(records, totals, journal)| {
        apply_in(
            records,
            totals,
            batches.iter().flat_map(|b| b.entries.iter()),
            stamp,
        )?;
        for row in batches.iter().flat_map(|b| b.rows.iter()) {
            journal.remove(&row.to_be_bytes())?;
        }
        raise_high_water(journal, stamp)?;
        Ok(())
    })?;
    Ok(())
}

/// Writes `entries` into the trees of a transaction: a record already
/// stored (or twice in `entries`) counts once.
fn apply_in<'e>(
    records: &TransactionalTree,
    totals: &TransactionalTree,
    entries: impl Iterator<Item = &'e Entry>,
    stamp: u64,
) -> Result<(), ConflictableTransactionError<MeterError>> {
    let mut seen = HashSet::new();
    let mut deltas: HashMap<&[u8], Counters> = HashMap::new();
    for entry in entries {
        let key = entry.row_key.as_slice();
        if !seen.insert(key) || records.get(key)?.is_some() {
            continue;
        }
        records.insert(key, entry.row.as_slice())?;
        for counter in &entry.counter_keys {
            deltas
                .entry(counter.as_slice())
                .or_default()
                .add(&entry.delta);
        }
    }
    for (key, delta) in deltas {
        let mut counters = match totals.get(key)? {
            Some(bytes) => Counters::decode(&bytes).map_err(ConflictableTransactionError::Abort)?,
            None => Counters::default(),
        };
        counters.add(&delta);
        totals.insert(key, &counters.encode(stamp)[..])?;
    }
    Ok(())
}

fn raise_high_water(
    journal: &TransactionalTree,
    stamp: u64,
) -> Result<(), ConflictableTransactionError<MeterError>> {
    let stored = journal.get(HIGH_WATER)?.and_then(|v| stamp_of(&v));
    if stored.is_none_or(|s| s < stamp) {
        journal.insert(HIGH_WATER, &stamp.to_be_bytes())?;
    }
    Ok(())
}

fn stamp_of(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// Applies the journal rows a crash left, exactly once, and returns the
/// stamp new batches start after: above every stamp ever written.
fn recover(
    records: &sled::Tree,
    totals: &sled::Tree,
    journal: &sled::Tree,
) -> Result<u64, MeterError> {
    let mut base = match journal.get(HIGH_WATER)? {
        Some(bytes) => stamp_of(&bytes)
            .ok_or_else(|| MeterError::corrupt("the journal's high-water row is not 8 bytes"))?,
        // A database from before the journal: its rows' stamps restarted
        // at 0 with every process, so start above all of them.
        None => {
            let mut max = 0;
            for row in totals.iter().values() {
                max = max.max(Counters::decode_stamped(&row?)?.1);
            }
            max
        }
    };
    let mut batches = Vec::new();
    for row in journal.iter() {
        let (key, value) = row?;
        let Some(stamp) = stamp_of(&key) else {
            continue;
        };
        base = base.max(stamp);
        batches.push(Logged {
            stamp,
            entries: Arc::from(decode_batch(&value)?),
            rows: Arc::from([stamp]),
            at: Instant::now(),
        });
    }
    if !batches.is_empty() {
        // Stamped (and the high-water raised) to `base`: a database from
        // before the journal may hold stamps above every journal row.
        apply_logged((records, totals, journal), &batches, base)?;
    }
    Ok(base)
}

/// A journal row: its entries, each as length-prefixed (u32 LE) session,
/// row key, row and counter keys (after their count), then the delta's 72
/// bytes.
fn encode_batch(entries: &[Entry]) -> Vec<u8> {
    fn put(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    let mut out = Vec::with_capacity(entries.len() * 512);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for entry in entries {
        put(&mut out, entry.session.as_bytes());
        put(&mut out, &entry.row_key);
        put(&mut out, &entry.row);
        out.extend_from_slice(&(entry.counter_keys.len() as u32).to_le_bytes());
        for key in &entry.counter_keys {
            put(&mut out, key);
        }
        out.extend_from_slice(&entry.delta.encode(0));
    }
    out
}

/// The entries of a journal row written by [`encode_batch`].
fn decode_batch(mut bytes: &[u8]) -> Result<Vec<Entry>, MeterError> {
    fn corrupt() -> MeterError {
        MeterError::corrupt("a journal row is damaged")
    }
    fn take<'b>(bytes: &mut &'b [u8], n: usize) -> Result<&'b [u8], MeterError> {
        if bytes.len() < n {
            return Err(corrupt());
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Ok(head)
    }
    fn count(bytes: &mut &[u8]) -> Result<usize, MeterError> {
        let raw = take(bytes, 4)?;
        Ok(u32::from_le_bytes(raw.try_into().map_err(|_| corrupt())?) as usize)
    }
    fn field(bytes: &mut &[u8]) -> Result<Vec<u8>, MeterError> {
        let n = count(bytes)?;
        Ok(take(bytes, n)?.to_vec())
    }
    let n = count(&mut bytes)?;
    let mut entries = Vec::with_capacity(n.min(MAX_BATCH * 4));
    for _ in 0..n {
        let session = String::from_utf8(field(&mut bytes)?).map_err(|_| corrupt())?;
        let row_key = field(&mut bytes)?;
        let row = field(&mut bytes)?;
        let keys = count(&mut bytes)?;
        let counter_keys = (0..keys)
            .map(|_| field(&mut bytes))
            .collect::<Result<Vec<_>, _>>()?;
        let delta = Counters::decode(take(&mut bytes, super::counters::STAMPED_LEN)?)?;
        entries.push(Entry {
            session,
            row_key,
            row,
            counter_keys,
            delta,
        });
    }
    if !bytes.is_empty() {
        return Err(corrupt());
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::{PriceTable, UsageKind};

    /// A meter on a new store in a temporary directory (kept while the
    /// returned guard lives).
    fn fresh_meter() -> (tempfile::TempDir, crate::meter::Meter) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::Store::open(dir.path()).expect("store");
        let meter = crate::meter::Meter::open(&store, PriceTable::default()).expect("meter");
        (dir, meter)
    }

    fn pending(id: &str, fuel: u64) -> Pending {
        let record = UsageRecord {
            id: id.into(),
            at_ms: 1_750_000_000_000,
            org_id: "org_a".into(),
            project_id: "prj_a".into(),
            version: 1,
            session_id: "ses_1".into(),
            end_user_id: None,
            credential_id: Some("key_1".into()),
            kind: UsageKind::Tool {
                tool: "t".into(),
                fuel,
                wall_us: 0,
            },
        };
        Pending {
            row_key: super::super::ledger::record_key("org_a", id),
            cost_micros: fuel,
            delta: Counters::of(&record.kind, fuel),
            record,
        }
    }

    /// What the test records' key spent on their day.
    fn key_spent(meter: &crate::meter::Meter) -> u64 {
        let scope = crate::meter::BudgetScope::Key {
            org_id: "org_a".into(),
            credential_id: "key_1".into(),
        };
        meter
            .spent(&scope, crate::meter::Period::Day, 1_750_000_000_000)
            .expect("spent")
    }

    fn entry(p: &Pending) -> Entry {
        Entry {
            session: p.record.session_id.clone(),
            row_key: p.row_key.clone(),
            row: crate::meter::ledger::encode_row(&p.record, p.cost_micros).expect("row"),
            counter_keys: crate::meter::ledger::counter_keys(&p.record),
            delta: p.delta,
        }
    }

    /// Records nobody waits for still reach the trees: the writer logs
    /// them when due ([`LOG_AFTER`]) and applies them on its own.
    #[test]
    fn records_nobody_waits_for_are_applied_on_their_own() {
        let (_dir, meter) = fresh_meter();
        let writer = &meter.inner.writer;
        let row = pending("late", 7);
        let key = row.row_key.clone();
        assert!(matches!(
            writer.enqueue(row, Vec::new()).expect("enqueue"),
            Recorded::New { .. }
        ));
        // Read the tree itself: `wait_committed` would ask for the apply.
        // The writer counts the batch applied just after its transaction,
        // so the row can be seen a moment before the count: wait for both.
        let started = Instant::now();
        loop {
            let applied = writer.shared.lock().applied;
            if applied == 1 && writer.records().contains_key(&key).expect("read") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the record was never applied"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let queue = writer.shared.lock();
        assert_eq!((queue.logged, queue.applied), (1, 1));
        assert!(queue.unapplied.is_empty());
        drop(queue);
        assert!(
            writer
                .shared
                .journal
                .get(1u64.to_be_bytes())
                .expect("read")
                .is_none(),
            "the journal row is removed once applied"
        );
    }

    /// Applying counts an id once even when the batches hold it twice (the
    /// queue's check is bypassed here) or it is stored.
    #[test]
    fn applying_counts_each_id_once() {
        let (_dir, meter) = fresh_meter();
        let shared = &meter.inner.writer.shared;
        let logged = |stamp, entries: Vec<Entry>| Logged {
            stamp,
            entries: Arc::from(entries),
            rows: Arc::from(Vec::new()),
            at: Instant::now(),
        };
        let first = logged(1, vec![entry(&pending("a", 10))]);
        apply_batches(shared, &[first]).expect("apply");
        let second = logged(
            2,
            vec![
                entry(&pending("a", 10)),
                entry(&pending("b", 20)),
                entry(&pending("b", 20)),
            ],
        );
        apply_batches(shared, &[second]).expect("apply");
        assert_eq!(key_spent(&meter), 30);
        assert_eq!(meter.entries("org_a").expect("entries").len(), 2);
    }

    /// A flood takes several journal rows of whole records; all of them
    /// are applied, counted once, and removed.
    #[test]
    fn a_flood_takes_several_rows_and_all_are_applied() {
        let (_dir, meter) = fresh_meter();
        let writer = &meter.inner.writer;
        let n = MAX_ROW * 3 + 5;
        for i in 0..n {
            let row = pending(&format!("r{i}"), 1);
            assert!(matches!(
                writer.enqueue(row, Vec::new()).expect("enqueue"),
                Recorded::New { .. }
            ));
        }
        meter.flush().expect("flush");
        assert_eq!(meter.entries("org_a").expect("entries").len(), n);
        assert_eq!(key_spent(&meter), n as u64);
        assert!(journal_is_drained(writer), "every journal row is removed");
    }

    /// Every journal row but the high-water mark is gone.
    fn journal_is_drained(writer: &Writer) -> bool {
        writer
            .shared
            .journal
            .iter()
            .keys()
            .all(|k| k.expect("key").as_ref() == HIGH_WATER)
    }

    /// A turn's acknowledgement logs the queue on its own thread when
    /// nobody else logs: it returns while the writer is held still, the
    /// budgets see the records at once, and the writer applies the batch
    /// once let go. (Before, the acknowledgement woke the writer and waited
    /// for it: held, it never returned.)
    #[tokio::test]
    async fn an_acknowledgement_logs_on_its_own_thread() {
        let (_dir, meter) = fresh_meter();
        let writer = &meter.inner.writer;
        writer.shared.lock().held = true;
        for i in 0..3 {
            let row = pending(&format!("w{i}"), 5);
            // Every counter row as a budget row: `spent` reads the deltas.
            let budget_keys = crate::meter::ledger::counter_keys(&row.record);
            assert!(matches!(
                writer.enqueue(row, budget_keys).expect("enqueue"),
                Recorded::New { .. }
            ));
        }
        tokio::time::timeout(Duration::from_secs(30), writer.logged())
            .await
            .expect("acknowledged with the writer held")
            .expect("logged");
        let queue = writer.shared.lock();
        assert_eq!(
            (queue.logged, queue.applied, queue.logged_by_waiters),
            (3, 0, 1)
        );
        assert!(!queue.logging && queue.queued.is_empty());
        drop(queue);
        assert!(
            writer
                .shared
                .journal
                .get(3u64.to_be_bytes())
                .expect("read")
                .is_some(),
            "one journal row, keyed by its last record, holds the three"
        );
        assert_eq!(key_spent(&meter), 15, "budgets see logged records");
        {
            let mut queue = writer.shared.lock();
            queue.held = false;
            wake(&writer.shared, &mut queue);
        }
        meter.flush().expect("flush");
        assert_eq!(key_spent(&meter), 15);
        assert_eq!(meter.entries("org_a").expect("entries").len(), 3);
        assert!(journal_is_drained(writer), "the batch is applied once");
    }

    /// A record queued while the writer waits for a deadline does not wake
    /// it: the turn's acknowledgement logs it (or the writer, when it is
    /// due). Only a writer waiting with no deadline is woken. (Before, every
    /// record queued while the writer waited woke it: with the condition
    /// put back, the second assertion fails.)
    #[tokio::test]
    async fn a_record_queued_while_the_writer_waits_for_a_deadline_does_not_wake_it() {
        let (_dir, meter) = fresh_meter();
        let writer = &meter.inner.writer;
        // Held, the writer never applies: its deadline stays, whatever the
        // time this test takes.
        writer.shared.lock().held = true;
        let enqueue = |id: &str| {
            assert!(matches!(
                writer.enqueue(pending(id, 2), Vec::new()).expect("enqueue"),
                Recorded::New { .. }
            ));
        };
        // Nothing queued or unapplied: once started, the writer waits with
        // no deadline, and the first record wakes it.
        let started = Instant::now();
        while !writer.shared.lock().sleeping {
            assert!(started.elapsed() < Duration::from_secs(30), "never waited");
            std::thread::sleep(Duration::from_millis(1));
        }
        enqueue("d0");
        assert_eq!(writer.shared.lock().woken_by_enqueue, 1);
        writer.logged().await.expect("logged");
        // A logged batch waits to be applied: the writer has a deadline.
        enqueue("d1");
        {
            let queue = writer.shared.lock();
            assert_eq!(queue.woken_by_enqueue, 1, "the writer was not woken");
            assert_eq!(queue.queued.len(), 1);
        }
        writer.logged().await.expect("logged");
        {
            let queue = writer.shared.lock();
            assert_eq!((queue.logged, queue.logged_by_waiters), (2, 2));
        }
        {
            let mut queue = writer.shared.lock();
            queue.held = false;
            wake(&writer.shared, &mut queue);
        }
        meter.flush().expect("flush");
        assert_eq!(meter.entries("org_a").expect("entries").len(), 2);
        assert!(journal_is_drained(writer));
    }

    /// Waiters and the writer log side by side and every record is counted
    /// once: tasks on four threads queue records (and a duplicate of each)
    /// and acknowledge them while a thread asks for applies.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn waiters_and_the_writer_log_each_record_once() {
        const TASKS: u64 = 8;
        const EACH: u64 = 60;
        let (_dir, meter) = fresh_meter();
        let reader = {
            let meter = meter.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    meter.commit_session("ses_1").expect("committed");
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let meter = meter.clone();
                tokio::spawn(async move {
                    let writer = &meter.inner.writer;
                    for i in 0..EACH {
                        let id = format!("t{task}-{i}");
                        let first = writer.enqueue(pending(&id, 1), Vec::new());
                        assert!(matches!(first, Ok(Recorded::New { .. })));
                        let again = writer.enqueue(pending(&id, 1), Vec::new());
                        assert!(matches!(again, Ok(Recorded::Duplicate)), "{id} twice");
                        if i % 3 != 2 {
                            writer.logged().await.expect("logged");
                        }
                        if i % 5 == 0 {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                    writer.logged().await.expect("logged");
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        reader.join().expect("reader");
        meter.flush().expect("flush");
        let writer = &meter.inner.writer;
        let queue = writer.shared.lock();
        let n = TASKS * EACH;
        assert_eq!((queue.queued_seq, queue.logged, queue.applied), (n, n, n));
        assert!(queue.unapplied.is_empty() && !queue.logging);
        assert!(queue.logged_by_waiters > 0, "the waiters logged too");
        drop(queue);
        assert_eq!(key_spent(&meter), n);
        assert_eq!(meter.entries("org_a").expect("entries").len() as u64, n);
        assert!(journal_is_drained(writer));
    }

    /// A journal row reads back as written; a cut or padded one is refused.
    #[test]
    fn journal_rows_round_trip_and_damage_is_refused() {
        let entries = vec![entry(&pending("a", 10)), entry(&pending("b", 20))];
        let bytes = encode_batch(&entries);
        assert_eq!(decode_batch(&bytes).expect("decode"), entries);
        assert!(decode_batch(&bytes[..bytes.len() - 1]).is_err());
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(decode_batch(&padded).is_err());
        assert!(decode_batch(&[0xff; 4]).is_err());
    }

    /// A journal row left by a crash is applied when the meter opens, once,
    /// and new stamps start above it.
    #[test]
    fn opening_applies_the_journal_left_by_a_crash_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = crate::store::Store::open(dir.path()).expect("store");
            let journal = store.tree("meter_journal").expect("journal");
            let batch = vec![entry(&pending("a", 10)), entry(&pending("b", 20))];
            journal
                .insert(41u64.to_be_bytes(), encode_batch(&batch))
                .expect("insert");
            store.db().flush().expect("flush");
        }
        for _ in 0..2 {
            let store = crate::store::Store::open(dir.path()).expect("store");
            let meter = crate::meter::Meter::open(&store, PriceTable::default()).expect("meter");
            assert_eq!(key_spent(&meter), 30, "applied exactly once");
            let queue = meter.inner.writer.shared.lock();
            assert!(queue.queued_seq >= 41, "stamps start above the journal's");
            drop(queue);
            assert!(
                meter
                    .inner
                    .writer
                    .shared
                    .journal
                    .get(41u64.to_be_bytes())
                    .expect("read")
                    .is_none()
            );
            meter.flush().expect("flush");
        }
    }
}
