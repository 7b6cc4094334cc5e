//! Making writes durable: how far ([`Durability`]), the flush that
//! acknowledges them (sled's, the journal's commit, the file system's
//! sync), and the group commit that serves every waiting caller with one
//! flush ([`Store::flush`], [`Store::flush_here`], [`Store::flush_log`]).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::faults::Faults;
use super::{JournalWrite, Store, StoreError, journal};

/// How far a write is durable once a flush has acknowledged it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// It survives the host process dying (`kill -9`, a panic, the OOM
    /// killer): the session log is journaled (`store/journal/`: a flush
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
pub(super) struct DurableFlush {
    db: sled::Db,
    /// The data dir, open, when every flush must reach stable storage.
    disk: Option<Arc<std::fs::File>>,
    /// File-system syncs done (tests and `/metrics` see it happen).
    syncs: prometheus_client::metrics::counter::Counter,
    /// The journal that makes the session log's writes survive the process
    /// without a disk wait ([`Durability::Process`] only).
    pub(super) journal: Option<journal::Journal>,
    /// How many journaled writes opening the store replayed.
    replayed: u64,
}

impl DurableFlush {
    /// Replays the journal a crash left (under [`Durability::Process`]).
    pub(super) fn new(
        db: sled::Db,
        dir: &Path,
        durability: Durability,
    ) -> Result<Self, StoreError> {
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

/// Callers of [`Store::flush`] waiting for the next flush, and whether a
/// flusher runs.
#[derive(Default)]
pub(super) struct FlushGroup {
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

impl Store {
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
    /// this thread, and no wait for the disk (`store/journal/` says why
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
