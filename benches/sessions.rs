//! Host overhead of sessions, on the embedded defaults (sled, builtin
//! harness, offline model over the loopback gateway).
//!
//! Run: `cargo bench --bench sessions`
//!
//! - `session/create`: a new session, flushed to disk before it returns.
//! - `session/turn_with_tool`: one turn whose model step calls a wasm tool
//!   (`calc`), then answers: two model calls through the gateway, one plugin
//!   call, ~9 events written to sled and published, the turn saved.
//! - `harness_files/sync`: what a process-harness turn used to do before
//!   the harness heard of the message — make the session workspace's
//!   harness files the app's (support-bot's: `CLAUDE.md`, an agent, a
//!   skill, settings), finding them already right: directories listed,
//!   every file read and compared.
//! - `harness_files/sync_unchanged`: what it does now on that path
//!   (`HarnessFiles::sync_with`): one `stat` per entry, compared with what
//!   the last sync left, and no sync.
//!
//! `KARTA_BENCH_DURABILITY=machine` runs the session benches on a store
//! whose flushes also sync the file system (`karta serve --durability
//! machine`).

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

mod common;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use karta_host::app::{HarnessFiles, SyncMemo};
use karta_host::session::MessageRequest;
use karta_host::{Host, HostConfig};

fn bench(c: &mut Criterion) {
    let rt = common::runtime();
    let app = common::calculator_app();
    let data = tempfile::tempdir().expect("tempdir");
    let mut config = HostConfig::new(app.path());
    // The app has an AGENTS.md; these benches measure the builtin loop.
    config.harness = Some(karta_host::app::HarnessKind::Builtin);
    config.data_dir = data.path().to_path_buf();
    if std::env::var("KARTA_BENCH_DURABILITY").is_ok_and(|d| d == "machine") {
        config.durability = karta_host::store::Durability::Machine;
    }
    let host = rt.block_on(Host::start(config)).expect("host");
    let sessions = host.sessions().clone();

    let mut group = c.benchmark_group("session");
    group.bench_function("create", |b| {
        b.iter(|| {
            rt.block_on(sessions.create(None, Default::default()))
                .expect("create")
        })
    });
    group.bench_function("turn_with_tool", |b| {
        b.iter_batched(
            || {
                rt.block_on(sessions.create(None, Default::default()))
                    .expect("create")
                    .id
            },
            |id| {
                rt.block_on(async {
                    let turn = sessions
                        .send(
                            &id,
                            MessageRequest {
                                text: "/tool calc {\"expression\": \"6*7\"}".into(),
                                ..MessageRequest::default()
                            },
                        )
                        .await
                        .expect("send");
                    let summary = turn.finished.await.expect("turn");
                    assert!(summary.text.contains("42"), "{}", summary.text);
                })
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn harness_files(c: &mut Criterion) {
    let app = common::support_bot_app();
    let files = HarnessFiles::collect(app.path()).expect("the app's harness files");
    let data = tempfile::tempdir().expect("tempdir");
    let workspace = data.path().join("workspace");
    let memo = SyncMemo::default();
    files.sync(&workspace).expect("first sync");
    // Stamps are remembered once the files' last change is 2 s old.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    files.sync_with(&workspace, &memo).expect("sync");
    assert!(
        !files.sync_with(&workspace, &memo).expect("sync"),
        "an unchanged workspace is not synced again"
    );

    let mut group = c.benchmark_group("harness_files");
    group.bench_function("sync", |b| b.iter(|| files.sync(&workspace).expect("sync")));
    group.bench_function("sync_unchanged", |b| {
        b.iter(|| files.sync_with(&workspace, &memo).expect("sync"))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench, harness_files
}
criterion_main!(benches);
