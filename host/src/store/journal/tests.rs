//! The journal's tests: kill -9 survival, checkpoints, torn files.

use std::io::{BufRead, Write as _};

use super::format::{INSERT, Op, REMOVE, decode_ops, encode_op, frame};
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
