//! Group commit: [`Meter::record`] queues a record in memory and returns;
//! one writer thread takes everything queued while its last transaction
//! ran and writes it in **one** sled transaction, summing the counter
//! deltas per row.
//!
//! - **Idempotency.** A record id already stored, queued or being written
//!   is [`Recorded::Duplicate`] at once (checked under the queue's lock);
//!   the batch's transaction checks again (an id twice in one batch, or
//!   stored by another meter of the database, counts once).
//! - **Budgets see a record at once.** The queue keeps, per budget counter
//!   row (org, project, end user, key; day and month), the deltas of the
//!   records queued and of the batch being written. [`Meter::spent`] adds
//!   them to the stored row under the queue's lock. Every row the writer
//!   writes carries the batch's *stamp* (its last sequence number), so a
//!   reader can tell whether the stored row already holds the batch in
//!   flight: the deltas are counted exactly once, never zero times.
//! - **Acknowledgement = [`Meter::flush`].** It returns when everything
//!   queued before it is committed *and* on disk (sled's `flush`, an
//!   `fsync`): the writer flushes after a batch whenever a caller waits, so
//!   one `fsync` covers every waiter of the batch. What a caller was told
//!   after a flush returned survives `kill -9`; a record queued but not
//!   flushed may be lost with its counters (never one without the other).
//!   [`Meter::flush_session`] also reports records of that session the
//!   writer could not write (below).
//! - **Failure.** A batch whose transaction fails (an I/O error, a damaged
//!   counter row) is retried record by record; a record that still fails
//!   is dropped, logged, and remembered by its session: that session's
//!   next [`Meter::flush_session`] fails, so it is never acknowledged.
//! - **Shutdown.** The last clone of the meter dropped, the writer commits
//!   what is queued and stops.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use super::counters::Counters;
use super::error::MeterError;
use super::ledger::{Recorded, UsageRecord};

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

/// The batch being written, as readers of the counters see it.
#[derive(Default)]
struct InFlight {
    /// The batch's stamp: the sequence number of its last record.
    stamp: u64,
    /// Its deltas per budget counter row.
    deltas: HashMap<Vec<u8>, Counters>,
    /// Its record rows' keys.
    ids: HashSet<Vec<u8>>,
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
    /// The batch being written, if one is.
    in_flight: Option<InFlight>,
    /// Every record up to this sequence number is committed (or lost).
    committed: u64,
    /// Every record up to this sequence number is on disk.
    durable: u64,
    /// A flush waits for this sequence number to be on disk.
    wanted: u64,
    /// The last failed disk flush: what it was to cover, and why.
    flush_failed: Option<(u64, String)>,
    /// Why records of a session were lost, by session id.
    lost: HashMap<String, String>,
    /// The writer waits for work.
    idle: bool,
    /// The meter is being dropped.
    shutdown: bool,
    /// The writer thread is gone (it panicked, or shut down).
    gone: bool,
}

/// The trees the writer writes, and the queue.
struct Shared {
    db: sled::Db,
    records: sled::Tree,
    totals: sled::Tree,
    queue: Mutex<Queue>,
    /// The writer waits here for work.
    work: Condvar,
    /// Flushes and commit waits wait here.
    done: Condvar,
    /// Async commit waits ([`Writer::committed`]) wait here: woken with
    /// `done`.
    done_async: tokio::sync::Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing under the lock leaves the queue half-changed on a panic.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
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
        self.0.done.notify_all();
        self.0.done_async.notify_waiters();
    }
}

impl Writer {
    /// Starts the writer of `records` and `totals` in `db`.
    pub(crate) fn start(
        db: sled::Db,
        records: sled::Tree,
        totals: sled::Tree,
    ) -> Result<Self, MeterError> {
        let shared = Arc::new(Shared {
            db,
            records,
            totals,
            queue: Mutex::default(),
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

    /// Queues `pending` unless its id is stored, queued or being written;
    /// `budget_keys` are the budget counter rows it bumps.
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
                .in_flight
                .as_ref()
                .is_some_and(|f| f.ids.contains(&pending.row_key));
        // Read under the lock: the writer takes a batch out of `in_flight`
        // under it only after the batch is committed, so an id is always
        // in one of the three places.
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
        if queue.idle {
            queue.idle = false;
            shared.work.notify_one();
        }
        Ok(Recorded::New { cost_micros })
    }

    /// What the records queued or being written add to the budget counter
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
        if let Some(flight) = &queue.in_flight {
            // A row stamped with the batch's stamp already holds it.
            if stamp < flight.stamp
                && let Some(delta) = flight.deltas.get(key)
            {
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

    /// Waits until every record queued before the call is committed (in
    /// sled's page cache, not necessarily on disk).
    pub(crate) fn wait_committed(&self) -> Result<(), MeterError> {
        let shared = &*self.shared;
        let mut queue = shared.lock();
        let target = queue.queued_seq;
        while queue.committed < target {
            if queue.gone {
                return Err(MeterError::Unwritten("the ledger's writer stopped".into()));
            }
            if queue.idle {
                queue.idle = false;
                shared.work.notify_one();
            }
            queue = shared
                .done
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
        }
        Ok(())
    }

    /// [`Writer::wait_committed`] for async callers, without a blocking
    /// thread: the writer wakes them when it commits a batch.
    pub(crate) async fn committed(&self) -> Result<(), MeterError> {
        let shared = &*self.shared;
        let target = shared.lock().queued_seq;
        loop {
            let notified = shared.done_async.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check: a commit between the check and
            // the wait still wakes this waiter.
            notified.as_mut().enable();
            {
                let mut queue = shared.lock();
                if queue.committed >= target {
                    return Ok(());
                }
                if queue.gone {
                    return Err(MeterError::Unwritten("the ledger's writer stopped".into()));
                }
                if queue.idle {
                    queue.idle = false;
                    shared.work.notify_one();
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

    /// Waits until every record queued before the call is committed and on
    /// disk; then takes (and reports) the records of `session` that were
    /// lost, if asked to.
    pub(crate) fn flush(&self, session: Option<&str>) -> Result<(), MeterError> {
        let shared = &*self.shared;
        let mut queue = shared.lock();
        let target = queue.queued_seq;
        if queue.durable < target {
            queue.wanted = queue.wanted.max(target);
            if queue.idle {
                queue.idle = false;
                shared.work.notify_one();
            }
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

impl Drop for Writer {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.work.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread: batches while there are records, a disk flush when
/// someone waits for one.
fn run(shared: &Shared) {
    loop {
        let mut queue = shared.lock();
        while queue.queued.is_empty() && queue.wanted <= queue.durable && !queue.shutdown {
            queue.idle = true;
            queue = shared
                .work
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
        }
        queue.idle = false;
        if !queue.queued.is_empty() {
            let batch = std::mem::take(&mut queue.queued);
            let stamp = queue.queued_seq;
            queue.in_flight = Some(InFlight {
                stamp,
                deltas: std::mem::take(&mut queue.queued_deltas),
                ids: std::mem::take(&mut queue.queued_ids),
            });
            drop(queue);
            let lost = commit(shared, &batch, stamp);
            let mut queue = shared.lock();
            queue.in_flight = None;
            queue.committed = stamp;
            for (session, why) in lost {
                if queue.lost.len() >= MAX_LOST_SESSIONS {
                    queue.lost.clear();
                }
                queue.lost.insert(session, why);
            }
            let flush_now = queue.wanted > queue.durable;
            drop(queue);
            shared.done.notify_all();
            shared.done_async.notify_waiters();
            if !flush_now {
                continue;
            }
        } else if queue.wanted <= queue.durable {
            // Shutting down with nothing left to do.
            return;
        } else {
            drop(queue);
        }
        // Someone waits for the disk: one flush covers every record
        // committed so far.
        let covered = shared.lock().committed;
        let flushed = shared.db.flush();
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
        shared.done.notify_all();
    }
}

/// Writes `batch` in one transaction, else record by record; returns the
/// sessions of the records that could not be written, with why.
fn commit(shared: &Shared, batch: &[Pending], stamp: u64) -> Vec<(String, String)> {
    let encoded: Result<Vec<_>, MeterError> = batch
        .iter()
        .map(|p| {
            Ok((
                p,
                super::ledger::encode_row(&p.record, p.cost_micros)?,
                super::ledger::counter_keys(&p.record),
            ))
        })
        .collect();
    let encoded = match encoded {
        Ok(encoded) => encoded,
        // A record that cannot be encoded: record by record finds which.
        Err(_) if batch.len() > 1 => return one_by_one(shared, batch, stamp),
        Err(e) => return vec![(batch[0].record.session_id.clone(), e.to_string())],
    };
    match write(shared, &encoded, stamp) {
        Ok(()) => Vec::new(),
        Err(_) if batch.len() > 1 => one_by_one(shared, batch, stamp),
        Err(e) => {
            let record = &batch[0].record;
            tracing::error!(id = %record.id, "cannot write a usage record: {e}");
            vec![(record.session_id.clone(), e.to_string())]
        }
    }
}

fn one_by_one(shared: &Shared, batch: &[Pending], stamp: u64) -> Vec<(String, String)> {
    batch
        .iter()
        .flat_map(|p| commit(shared, std::slice::from_ref(p), stamp))
        .collect()
}

/// A record ready for the transaction: its row's value and the counter
/// rows it bumps.
type Encoded<'a> = (&'a Pending, Vec<u8>, Vec<Vec<u8>>);

/// One transaction: each new record's row, and every counter row it bumps
/// bumped once by the sum of the batch's deltas, stamped.
fn write(shared: &Shared, encoded: &[Encoded<'_>], stamp: u64) -> Result<(), MeterError> {
    (&shared.records, &shared.totals).transaction(|(records, totals)| {
        let mut seen = HashSet::with_capacity(encoded.len());
        let mut deltas: HashMap<&[u8], Counters> = HashMap::new();
        for (pending, row, keys) in encoded {
            let key = pending.row_key.as_slice();
            if !seen.insert(key) || records.get(key)?.is_some() {
                continue;
            }
            records.insert(key, row.as_slice())?;
            for counter in keys {
                deltas
                    .entry(counter.as_slice())
                    .or_default()
                    .add(&pending.delta);
            }
        }
        for (key, delta) in deltas {
            let mut counters = match totals.get(key)? {
                Some(bytes) => {
                    Counters::decode(&bytes).map_err(ConflictableTransactionError::Abort)?
                }
                None => Counters::default(),
            };
            counters.add(&delta);
            totals.insert(key, &counters.encode(stamp)[..])?;
        }
        Ok(())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::{PriceTable, UsageKind};

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

    /// The batch's transaction counts an id once even when the batch holds
    /// it twice (the queue's check is bypassed here) or it is stored.
    #[test]
    fn a_batch_counts_each_id_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::Store::open(dir.path()).expect("store");
        let meter = crate::meter::Meter::open(&store, PriceTable::default()).expect("meter");
        let shared = &meter.inner.writer.shared;
        assert!(commit(shared, &[pending("a", 10)], 1).is_empty());
        let batch = [pending("a", 10), pending("b", 20), pending("b", 20)];
        assert!(commit(shared, &batch, 2).is_empty());
        let scope = crate::meter::BudgetScope::Key {
            org_id: "org_a".into(),
            credential_id: "key_1".into(),
        };
        let spent = meter
            .spent(&scope, crate::meter::Period::Day, 1_750_000_000_000)
            .expect("spent");
        assert_eq!(spent, 30);
        assert_eq!(meter.entries("org_a").expect("entries").len(), 2);
    }
}
