//! The store's write-ahead journal: how a turn's writes survive the host
//! process dying without waiting for the disk.
//!
//! **Why.** The default promise, [`super::Durability::Process`], is that an
//! acknowledged write survives `kill -9`, a panic or the OOM killer — for
//! which the kernel holding the bytes is enough: what a `write(2)` returned
//! for is in the page cache and outlives the process. sled's own flush
//! promises more than that and charges for it: it ends every log write with
//! `sync_file_range`, which waits for the device (0.2–0.6 ms on the
//! project's machine, and a built-in turn needs two: BENCHMARKS.md). So
//! under that promise the session log's writes are journaled: each write
//! through the store's own methods (the session trees, the webhook outbox
//! rows written with an event) and the meter's journal rows goes to sled
//! *and* is encoded, under one lock, into an in-memory buffer;
//! [`Journal::commit`] — what a turn's flush is — appends the buffer to the
//! journal file with one `write(2)`, no sync.
//!
//! **Checkpoints.** Every so often ([`CHECKPOINT_BYTES`] written or
//! [`CHECKPOINT_AFTER`] since the journal's first byte, on a thread of its
//! own) and on every full flush ([`super::Store::flush`] and friends, which
//! other modules use), [`Journal::checkpoint`] starts a new journal file,
//! flushes sled (which covers every write made before), and deletes the
//! older files. A commit does not wait for a checkpoint that runs: the
//! checkpoint first appends what is pending to the file it leaves, so every
//! write made before the new file is in a journal file, and that file is
//! deleted only once sled's flush covers it. (Only a journal that failed —
//! an append that did not go through — makes commits wait for a checkpoint
//! of their own.)
//!
//! **Recovery.** [`Journal::open`] replays every journal file left in the
//! store's directory, oldest first, into sled, flushes sled and deletes them — before
//! the store reads anything. Replaying a write sled already had is harmless:
//! the journal holds the final value of each write in the order they were
//! made (a write and its journal entry happen under the same lock), so the
//! replay ends where the process did. A file's torn tail (a frame whose
//! length or checksum does not hold: a crash of the machine mid-write, which
//! this promise does not cover) ends that file's replay.
//!
//! **What is not journaled** (other modules' trees: keys, releases, the
//! ledger's records) is made durable by their full flushes, as before.
//! Where a tree has writes of both kinds — the meter's journal rows are
//! removed when applied, the webhook outbox's rows when delivered — a replay
//! may bring back a row whose removal was not flushed; both are idempotent
//! there (an applied usage record counts once, a webhook is delivered at
//! least once).
//!
//! **Format.** A file `karta-journal-<generation>.log` next to sled's files
//! in the store's directory (`db/` of a host's data dir), a
//! sequence of frames: payload length (u32 LE), CRC-32 of the payload (u32
//! LE), payload. A payload is one store write's operations, each: kind
//! (1 insert, 2 remove), tree name (u16 LE length, bytes), key (u32 LE
//! length, bytes), and for an insert the value (u32 LE length, bytes).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

mod format;
mod write;

use format::{create_file, journal_files, replay};
pub(crate) use write::JournalWrite;

/// A journal this size starts a checkpoint.
pub const CHECKPOINT_BYTES: u64 = 8 * 1024 * 1024;
/// A journal this old (since its first byte) starts a checkpoint at the
/// next commit.
pub const CHECKPOINT_AFTER: Duration = Duration::from_secs(2);

/// Journaled writes this large are written out without waiting for a
/// commit.
const PENDING_LIMIT: usize = 1024 * 1024;

/// The journal of one data dir; cheap to clone.
#[derive(Clone)]
pub(super) struct Journal {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    db: sled::Db,
    state: Mutex<State>,
    /// Held by a checkpoint for its whole run: one checkpoint at a time. A
    /// commit takes it only when the journal has failed.
    checkpoint: Mutex<()>,
    /// A background checkpoint is scheduled or running.
    scheduled: AtomicBool,
}

struct State {
    file: File,
    generation: u64,
    /// Frames of writes made since the last commit.
    pending: Vec<u8>,
    /// Bytes in the current file.
    size: u64,
    /// When the current file got its first byte.
    started: Option<Instant>,
    /// A checkpoint's sled flush, or a write of the journal outside a
    /// commit, failed: writes may be neither in a journal file nor flushed,
    /// so no commit succeeds until a checkpoint (with a new file) does.
    failed: bool,
}

impl State {
    /// Appends the pending frames to the current file. `false` when the
    /// journal has failed (this append, or one before it, or a
    /// checkpoint's flush): the file may end in a torn frame, and only a
    /// checkpoint makes writes durable until one succeeds.
    fn append_pending(&mut self) -> bool {
        if self.failed {
            return false;
        }
        if self.pending.is_empty() {
            return true;
        }
        match self.file.write_all(&self.pending) {
            Ok(()) => {
                self.size += self.pending.len() as u64;
                self.pending.clear();
                self.started.get_or_insert_with(Instant::now);
                true
            }
            Err(e) => {
                tracing::warn!(
                    "cannot append to the store's journal ({e}); a checkpoint flushes the store instead"
                );
                self.failed = true;
                false
            }
        }
    }
}

impl Journal {
    /// Replays the journal files a crash left in `dir` into `db`, flushes
    /// sled, deletes them and starts a new file. Returns the journal and
    /// how many writes were replayed.
    pub(super) fn open(db: &sled::Db, dir: &Path) -> Result<(Self, u64), sled::Error> {
        let files = journal_files(dir)?;
        let mut trees = HashMap::new();
        let mut replayed = 0;
        for (_, path) in &files {
            let bytes = std::fs::read(path)?;
            let (writes, torn) = replay(db, &bytes, &mut trees)?;
            replayed += writes;
            if torn {
                tracing::warn!(
                    file = %path.display(),
                    "the journal ends in a torn write; replayed what precedes it"
                );
            }
        }
        if !files.is_empty() {
            db.flush()?;
            for (_, path) in &files {
                std::fs::remove_file(path)?;
            }
            tracing::info!(writes = replayed, "replayed the store's journal");
        }
        let generation = files.last().map_or(1, |(generation, _)| generation + 1);
        let state = State {
            file: create_file(dir, generation)?,
            generation,
            pending: Vec::new(),
            size: 0,
            started: None,
            failed: false,
        };
        let journal = Self {
            shared: Arc::new(Shared {
                dir: dir.to_owned(),
                db: db.clone(),
                state: Mutex::new(state),
                checkpoint: Mutex::new(()),
                scheduled: AtomicBool::new(false),
            }),
        };
        Ok((journal, replayed))
    }

    /// Starts a journaled write: what it writes is journaled, in order with
    /// every other journaled write, when it is dropped.
    pub(super) fn begin(&self) -> JournalWrite<'_> {
        JournalWrite {
            journal: Some((self.shared.lock_state(), Vec::new())),
        }
    }

    /// Makes every journaled write so far survive the process: appends them
    /// to the journal file (one `write(2)`). When that fails, or a
    /// checkpoint failed before, a checkpoint (sled's flush) has to succeed
    /// instead.
    pub(super) fn commit(&self) -> Result<(), sled::Error> {
        let shared = &*self.shared;
        let mut state = shared.lock_state();
        // Not waiting for a checkpoint that runs: what was pending when it
        // started a new file is in the file it left (see the module docs).
        if state.append_pending() {
            if state.size >= CHECKPOINT_BYTES
                || state
                    .started
                    .is_some_and(|started| started.elapsed() >= CHECKPOINT_AFTER)
            {
                self.checkpoint_in_background();
            }
            return Ok(());
        }
        // The journal failed: only sled's flush covers these writes, and
        // only one that begins after them. One checkpoint at a time: wait
        // for one that runs, then run one (with a new file, as the current
        // one may end in part of a frame).
        drop(state);
        let _one = shared.lock_checkpoint();
        shared.checkpoint_with(shared.lock_state(), true)
    }

    /// Makes every write so far durable through sled's flush, and deletes
    /// the journal files that covered them.
    pub(super) fn checkpoint(&self) -> Result<(), sled::Error> {
        let _one = self.shared.lock_checkpoint();
        self.shared.checkpoint_locked()
    }

    /// A checkpoint on a thread of its own (one at a time).
    fn checkpoint_in_background(&self) {
        if self.shared.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let journal = self.clone();
        let spawned = std::thread::Builder::new()
            .name("karta-checkpoint".into())
            .spawn(move || {
                if let Err(e) = journal.checkpoint() {
                    tracing::error!("the store's checkpoint failed: {e}");
                }
                journal.shared.scheduled.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            // The next commit tries again.
            self.shared.scheduled.store(false, Ordering::Release);
        }
    }

    /// Bytes written to the current journal file (tests).
    #[cfg(test)]
    pub(super) fn size(&self) -> u64 {
        self.shared.lock_state().size
    }
}

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_checkpoint(&self) -> MutexGuard<'_, ()> {
        self.checkpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A checkpoint; the caller holds the checkpoint lock.
    fn checkpoint_locked(&self) -> Result<(), sled::Error> {
        self.checkpoint_with(self.lock_state(), false)
    }

    /// A checkpoint's first step, under the state lock: starts a new file
    /// (when the current one holds anything, or `rotate`, or the journal
    /// failed) and returns the generation the flush that follows covers.
    fn leave_file(&self, state: &mut State, rotate: bool) -> Result<Option<u64>, sled::Error> {
        // What is pending goes to the file it follows first, so that a
        // commit meanwhile finds nothing of it left to write and need not
        // wait for the flush: the file is deleted only once the flush covers
        // it. (If the append fails, commits wait for a checkpoint anyway.)
        state.append_pending();
        // Every write journaled so far is in sled already (a write and its
        // journal entry are made under the state lock), so the flush that
        // follows covers the pending ones and every file up to this
        // generation.
        let covered = (state.size > 0 || rotate || state.failed).then_some(state.generation);
        if covered.is_some() {
            let next = state.generation + 1;
            state.file = create_file(&self.dir, next)?;
            state.generation = next;
            state.size = 0;
            state.started = None;
        }
        state.pending.clear();
        Ok(covered)
    }

    /// A checkpoint from a locked state (unlocked during sled's flush, so
    /// that journaled writes go on meanwhile); `rotate`: start a new file
    /// even if this one is empty (it may end in a torn frame).
    fn checkpoint_with(
        &self,
        mut state: MutexGuard<'_, State>,
        rotate: bool,
    ) -> Result<(), sled::Error> {
        let covered = self.leave_file(&mut state, rotate)?;
        drop(state);
        let flushed = self.db.flush();
        let mut state = self.lock_state();
        match flushed {
            Ok(_) => {
                state.failed = false;
                drop(state);
                if let Some(covered) = covered {
                    for (generation, path) in journal_files(&self.dir)? {
                        if generation <= covered {
                            std::fs::remove_file(path)?;
                        }
                    }
                }
                Ok(())
            }
            Err(e) => {
                state.failed = true;
                Err(e)
            }
        }
    }
}

impl Drop for Shared {
    /// The store is closed: sled flushes, and the journal is no longer
    /// needed.
    fn drop(&mut self) {
        if self.db.flush().is_ok()
            && let Ok(files) = journal_files(&self.dir)
        {
            for (_, path) in files {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

#[cfg(test)]
mod tests;
