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

/// A journal this size starts a checkpoint.
pub const CHECKPOINT_BYTES: u64 = 8 * 1024 * 1024;
/// A journal this old (since its first byte) starts a checkpoint at the
/// next commit.
pub const CHECKPOINT_AFTER: Duration = Duration::from_secs(2);

/// Journaled writes this large are written out without waiting for a
/// commit.
const PENDING_LIMIT: usize = 1024 * 1024;

const FILE_PREFIX: &str = "karta-journal-";
const FILE_SUFFIX: &str = ".log";
const INSERT: u8 = 1;
const REMOVE: u8 = 2;
/// Frame header: payload length and checksum.
const HEADER: usize = 8;

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

/// The operations of one store write, journaled when it is dropped (see
/// [`Journal::begin`]). Without a journal ([`super::Durability::Machine`])
/// it only writes to sled.
pub(crate) struct JournalWrite<'a> {
    journal: Option<(MutexGuard<'a, State>, Vec<u8>)>,
}

impl JournalWrite<'_> {
    /// A write that goes to sled only (no journal: [`super::Durability::Machine`]).
    pub(super) fn unjournaled() -> Self {
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

fn encode_op(frame: &mut Vec<u8>, kind: u8, tree: &[u8], key: &[u8], value: Option<&[u8]>) {
    frame.push(kind);
    let tree_len = u16::try_from(tree.len()).unwrap_or(u16::MAX);
    frame.extend_from_slice(&tree_len.to_le_bytes());
    frame.extend_from_slice(&tree[..usize::from(tree_len)]);
    for bytes in std::iter::once(key).chain(value) {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(bytes);
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

/// The journal files in `dir`, oldest first.
fn journal_files(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(generation) = name
            .to_str()
            .and_then(|n| n.strip_prefix(FILE_PREFIX))
            .and_then(|n| n.strip_suffix(FILE_SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        files.push((generation, entry.path()));
    }
    files.sort();
    Ok(files)
}

fn create_file(dir: &Path, generation: u64) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(dir.join(format!("{FILE_PREFIX}{generation:020}{FILE_SUFFIX}")))
}

/// Applies the frames of one journal file to `db`; returns how many
/// writes (frames) it applied and whether the file ends in a torn frame.
fn replay(
    db: &sled::Db,
    mut bytes: &[u8],
    trees: &mut HashMap<Vec<u8>, sled::Tree>,
) -> Result<(u64, bool), sled::Error> {
    let mut writes = 0;
    while !bytes.is_empty() {
        let Some(payload) = frame(&mut bytes) else {
            return Ok((writes, true));
        };
        let Some(ops) = decode_ops(payload) else {
            return Ok((writes, true));
        };
        for (kind, tree, key, value) in ops {
            let tree = match trees.get(tree) {
                Some(tree) => tree,
                None => trees.entry(tree.to_vec()).or_insert(db.open_tree(tree)?),
            };
            match (kind, value) {
                (INSERT, Some(value)) => {
                    tree.insert(key, value)?;
                }
                _ => {
                    tree.remove(key)?;
                }
            }
        }
        writes += 1;
    }
    Ok((writes, false))
}

/// The next frame's payload, if it is whole and its checksum holds.
fn frame<'b>(bytes: &mut &'b [u8]) -> Option<&'b [u8]> {
    let header = bytes.get(..HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    let payload = bytes.get(HEADER..HEADER.checked_add(len)?)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    *bytes = &bytes[HEADER + len..];
    Some(payload)
}

type Op<'b> = (u8, &'b [u8], &'b [u8], Option<&'b [u8]>);

/// A payload's operations (`None`: it does not parse).
fn decode_ops(mut payload: &[u8]) -> Option<Vec<Op<'_>>> {
    fn take<'b>(bytes: &mut &'b [u8], n: usize) -> Option<&'b [u8]> {
        let (head, rest) = (bytes.get(..n)?, bytes.get(n..)?);
        *bytes = rest;
        Some(head)
    }
    fn field<'b>(bytes: &mut &'b [u8]) -> Option<&'b [u8]> {
        let len = u32::from_le_bytes(take(bytes, 4)?.try_into().ok()?) as usize;
        take(bytes, len)
    }
    let mut ops = Vec::new();
    while !payload.is_empty() {
        let kind = take(&mut payload, 1)?[0];
        let tree_len = u16::from_le_bytes(take(&mut payload, 2)?.try_into().ok()?);
        let tree = take(&mut payload, usize::from(tree_len))?;
        let key = field(&mut payload)?;
        let value = match kind {
            INSERT => Some(field(&mut payload)?),
            REMOVE => None,
            _ => return None,
        };
        ops.push((kind, tree, key, value));
    }
    Some(ops)
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, Write as _};

    use super::*;
    use crate::store::{Durability, SessionRecord, Store};

    const CRASH_DIR: &str = "KARTA_JOURNAL_CRASH_DIR";

    fn record(id: &str) -> SessionRecord {
        serde_json::from_value(serde_json::json!({
            "v": 2, "id": id, "metadata": {}, "created_at": "t", "updated_at": "t",
            "created_ms": 1, "participants": [], "approved_tools": [],
            "turn_running": false, "seq_reserved": 0, "scope": null,
        }))
        .expect("a session record")
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// The child of [`a_logged_write_survives_kill_9_without_a_store_flush`]:
    /// writes sessions through the store, each followed by `flush_log`,
    /// and says which it was told are durable, until it is killed.
    #[test]
    #[ignore = "run as a child process by the crash test"]
    fn journal_crash_child() {
        crash_child(false);
    }

    /// The child of [`a_logged_write_survives_kill_9_while_checkpoints_run`]:
    /// the same, with checkpoints running back to back on another thread,
    /// so that commits are answered while one runs.
    #[test]
    #[ignore = "run as a child process by the crash test"]
    fn journal_crash_child_with_checkpoints() {
        crash_child(true);
    }

    fn crash_child(checkpoints: bool) {
        let Some(dir) = std::env::var_os(CRASH_DIR) else {
            return;
        };
        let store = Store::open(Path::new(&dir)).expect("open");
        if checkpoints {
            let journal = store.durable.journal.clone().expect("a journal");
            std::thread::spawn(move || {
                loop {
                    journal.checkpoint().expect("checkpoint");
                }
            });
        }
        let runtime = runtime();
        let mut stdout = std::io::stdout().lock();
        for i in 0u64.. {
            let id = format!("ses_{i}");
            store.create_session(&record(&id)).expect("create");
            store
                .append_history(
                    &id,
                    &[serde_json::json!({"role": "user", "content": "hi"})],
                    &mut crate::store::Tail::default(),
                )
                .expect("history");
            runtime.block_on(store.flush_log()).expect("flush_log");
            writeln!(stdout, "ack {id}").expect("stdout");
            stdout.flush().expect("stdout");
        }
    }

    /// `kill -9` of a process writing the session log: every session it
    /// was told is durable (its `flush_log` returned) is there after a
    /// reopen — put there by the journal's replay, since the child never
    /// ran a checkpoint (sled's flush) for them.
    #[test]
    fn a_logged_write_survives_kill_9_without_a_store_flush() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = acknowledged_survive_kill_9("journal_crash_child", dir.path());
        assert!(
            store.journal_replayed() > 0,
            "the reopen replayed the journal"
        );
        // The replayed files are gone; only the new one is left.
        assert_eq!(journal_files(dir.path()).expect("files").len(), 1);
    }

    /// The same while checkpoints run back to back: a commit answered
    /// while a checkpoint flushes sled (it does not wait for it any more)
    /// is durable all the same — what was pending when the checkpoint
    /// started its new file went to the file it left.
    #[test]
    fn a_logged_write_survives_kill_9_while_checkpoints_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        acknowledged_survive_kill_9("journal_crash_child_with_checkpoints", dir.path());
    }

    /// Runs crash child `child` in `dir`, kills it with SIGKILL after it
    /// acknowledged 40 sessions, and checks that each is in the reopened
    /// store, which it returns.
    fn acknowledged_survive_kill_9(child: &str, dir: &Path) -> Store {
        let mut child = crate::test_support::spawn_test_child(
            &format!("store::journal::tests::{child}"),
            (CRASH_DIR, dir),
        );
        let lines = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut acknowledged = Vec::new();
        for line in lines.lines() {
            let line = line.expect("a line");
            if let Some(id) = line.strip_prefix("ack ") {
                acknowledged.push(id.to_owned());
                if acknowledged.len() == 40 {
                    break;
                }
            }
        }
        child.kill().expect("kill -9");
        child.wait().expect("wait");
        assert_eq!(acknowledged.len(), 40, "the child acknowledged 40 sessions");

        let store = Store::open(dir).expect("reopen");
        for id in &acknowledged {
            assert!(
                store.session(id).expect("read").is_some(),
                "acknowledged session {id} is there"
            );
            assert_eq!(store.history(id).expect("history").len(), 1, "{id}");
        }
        store
    }

    /// What was pending when a checkpoint starts its new file is in the
    /// file it leaves — which is what lets a commit meanwhile answer
    /// without waiting for the checkpoint's flush.
    #[test]
    fn a_checkpoint_leaves_what_was_pending_in_the_file_it_leaves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = runtime();
        let store = Store::open(dir.path()).expect("open");
        let journal = store.durable.journal.clone().expect("a journal");
        store.create_session(&record("ses_1")).expect("create");
        let left = {
            let mut state = journal.shared.lock_state();
            assert!(!state.pending.is_empty(), "the write is pending");
            journal
                .shared
                .leave_file(&mut state, false)
                .expect("a new file")
                .expect("a file left")
        };
        let (_, path) = journal_files(dir.path())
            .expect("files")
            .into_iter()
            .find(|(generation, _)| *generation == left)
            .expect("the file left is kept until the flush");
        let bytes = std::fs::read(path).expect("read");
        let mut rest = bytes.as_slice();
        let payload = frame(&mut rest).expect("a whole frame");
        let ops = decode_ops(payload).expect("operations");
        assert!(
            ops.iter().any(|(_, _, key, _)| *key == b"ses_1".as_slice()),
            "the pending write is in the file left"
        );
        runtime.block_on(store.flush_log()).expect("a commit");
        assert_eq!(journal.size(), 0, "nothing was left to write");
    }

    /// A commit while a checkpoint runs (here: holds the checkpoint's lock,
    /// as it does through sled's flush) is answered without waiting for it,
    /// from the journal file.
    #[test]
    fn a_commit_does_not_wait_for_a_running_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let journal = store.durable.journal.clone().expect("a journal");
        store.create_session(&record("ses_1")).expect("create");
        let running = journal.shared.lock_checkpoint();
        let (answered, answer) = std::sync::mpsc::channel();
        let committer = {
            let store = store.clone();
            std::thread::spawn(move || {
                let committed = runtime().block_on(store.flush_log()).is_ok();
                let _ = answered.send(committed);
            })
        };
        // A bound on waiting, not a speed: a commit that waits for the
        // checkpoint is never answered while it holds the lock.
        let before_the_checkpoint_ended = answer.recv_timeout(Duration::from_secs(60));
        drop(running);
        committer.join().expect("the committer");
        assert_eq!(
            before_the_checkpoint_ended,
            Ok(true),
            "the commit was answered while the checkpoint ran"
        );
        assert!(journal.size() > 0, "from the journal file");
    }

    fn frame_of(ops: &[Op<'_>]) -> Vec<u8> {
        let mut payload = Vec::new();
        for (kind, tree, key, value) in ops {
            encode_op(&mut payload, *kind, tree, key, *value);
        }
        let mut frame = Vec::new();
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        frame
    }

    /// A journal whose tail is torn (or damaged) is replayed up to the
    /// damage, in order: an insert then a remove of the same key leave it
    /// removed; nothing after the damage is applied; the files are gone.
    #[test]
    fn a_torn_journal_is_replayed_up_to_the_tear() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(Store::open(dir.path()).expect("create"));
        let a = serde_json::to_vec(&record("ses_a")).expect("json");
        let b = serde_json::to_vec(&record("ses_b")).expect("json");
        let mut bytes = frame_of(&[
            (INSERT, b"sessions", b"ses_a", Some(&a)),
            (INSERT, b"sessions", b"ses_b", Some(&b)),
        ]);
        bytes.extend(frame_of(&[(REMOVE, b"sessions", b"ses_b", None)]));
        let mut damaged = frame_of(&[(INSERT, b"sessions", b"ses_c", Some(&a))]);
        let last = damaged.len() - 1;
        damaged[last] ^= 0xff;
        bytes.extend(damaged);
        bytes.extend(frame_of(&[(INSERT, b"sessions", b"ses_d", Some(&a))]));
        bytes.extend_from_slice(&[7, 0, 0]);
        std::fs::write(
            dir.path().join("karta-journal-00000000000000000009.log"),
            bytes,
        )
        .expect("write a journal");

        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.journal_replayed(), 2);
        assert!(store.session("ses_a").expect("read").is_some());
        assert!(store.session("ses_b").expect("read").is_none(), "removed");
        assert!(store.session("ses_c").expect("read").is_none(), "damaged");
        assert!(
            store.session("ses_d").expect("read").is_none(),
            "after the damage"
        );
        let files = journal_files(dir.path()).expect("files");
        assert_eq!(files.iter().map(|f| f.0).collect::<Vec<_>>(), [10]);
    }

    /// A commit whose append fails (here: the file handle cannot write)
    /// is acknowledged by a checkpoint instead — sled's flush, a new file,
    /// the old one gone — and the journal goes on in the new file.
    #[test]
    fn a_failed_append_falls_back_to_a_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = runtime();
        let store = Store::open(dir.path()).expect("open");
        let journal = store.durable.journal.clone().expect("a journal");
        store.create_session(&record("ses_1")).expect("create");
        let generation = {
            let mut state = journal.shared.lock_state();
            let (_, path) = journal_files(dir.path()).expect("files").remove(0);
            state.file = File::open(path).expect("a read-only handle");
            state.generation
        };
        runtime
            .block_on(store.flush_log())
            .expect("acknowledged by the checkpoint");
        {
            let state = journal.shared.lock_state();
            assert!(!state.failed);
            assert_eq!(state.generation, generation + 1);
        }
        let files = journal_files(dir.path()).expect("files");
        assert_eq!(
            files.iter().map(|f| f.0).collect::<Vec<_>>(),
            [generation + 1]
        );
        store.create_session(&record("ses_2")).expect("create");
        runtime.block_on(store.flush_log()).expect("a commit again");
        assert!(journal.size() > 0, "appended to the new file");
    }

    /// Journaled writes that no commit follows are written out once they
    /// reach [`PENDING_LIMIT`], not kept in memory.
    #[test]
    fn uncommitted_writes_do_not_pile_up_in_memory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let journal = store.durable.journal.clone().expect("a journal");
        let big = serde_json::json!({ "text": "x".repeat(64 * 1024) });
        for i in 0..20 {
            store
                .append_history(
                    &format!("ses_{i}"),
                    std::slice::from_ref(&big),
                    &mut crate::store::Tail::default(),
                )
                .expect("history");
        }
        assert!(journal.size() >= PENDING_LIMIT as u64, "written out");
        assert!(journal.shared.lock_state().pending.len() < PENDING_LIMIT);
    }

    /// A commit appends to the journal file; a full flush is a checkpoint
    /// that starts a new file and deletes the old; reopening after a clean
    /// close replays nothing. A Machine-durability store keeps no journal.
    #[test]
    fn a_full_flush_checkpoints_the_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = runtime();
        {
            let store = Store::open(dir.path()).expect("open");
            let journal = store.durable.journal.clone().expect("a journal");
            store.create_session(&record("ses_1")).expect("create");
            assert_eq!(journal.size(), 0, "nothing written before a commit");
            runtime.block_on(store.flush_log()).expect("flush_log");
            let size = journal.size();
            assert!(size > 0);
            runtime.block_on(store.flush_log()).expect("again");
            assert_eq!(journal.size(), size, "an empty commit writes nothing");
            let before = journal_files(dir.path()).expect("files");
            runtime.block_on(store.flush()).expect("flush");
            assert_eq!(journal.size(), 0);
            let after = journal_files(dir.path()).expect("files");
            assert_eq!(after.len(), 1);
            assert_eq!(after[0].0, before[0].0 + 1, "a new generation");
        }
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.journal_replayed(), 0);
        assert!(store.session("ses_1").expect("read").is_some());
        drop(store);
        let machine = Store::open_with(dir.path(), Durability::Machine).expect("machine");
        machine.create_session(&record("ses_2")).expect("create");
        runtime.block_on(machine.flush_log()).expect("flush_log");
        assert!(journal_files(dir.path()).expect("files").is_empty());
    }
}
