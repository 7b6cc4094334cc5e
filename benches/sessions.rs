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
//!   (`HarnessFiles::sync_with`): the pending events of the memo's inotify
//!   watches read (none), and no sync.
//! - `harness_files/sync_unchanged_stamps`: the same where inotify cannot
//!   be had (`SyncMemo::stamps_only`): one `stat` per entry, compared with
//!   what the last sync left.
//! - `harness_files/*_60`: the two for an app of 60 skills.
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
    let many = tempfile::tempdir().expect("tempdir");
    std::fs::write(many.path().join("CLAUDE.md"), "Be brief.").expect("write");
    for i in 0..60 {
        let dir = many.path().join(format!(".claude/skills/s{i}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let skill = format!("---\nname: s{i}\ndescription: skill {i}\n---\nDo {i}.");
        std::fs::write(dir.join("SKILL.md"), skill).expect("write");
    }
    let data = tempfile::tempdir().expect("tempdir");
    let mut group = c.benchmark_group("harness_files");
    for (app, suffix) in [(app.path(), ""), (many.path(), "_60")] {
        let files = HarnessFiles::collect(app).expect("the app's harness files");
        let workspace = data.path().join(format!("workspace{suffix}"));
        let watched = SyncMemo::default();
        let stamps = SyncMemo::stamps_only();
        files.sync(&workspace).expect("first sync");
        // Stamps are remembered once the files' last change is 2 s old.
        std::thread::sleep(std::time::Duration::from_millis(2100));
        for memo in [&watched, &stamps] {
            while files.sync_with(&workspace, memo).expect("sync") {}
            assert!(
                !files.sync_with(&workspace, memo).expect("sync"),
                "an unchanged workspace is not synced again"
            );
        }
        group.bench_function(format!("sync{suffix}"), |b| {
            b.iter(|| files.sync(&workspace).expect("sync"))
        });
        group.bench_function(format!("sync_unchanged{suffix}"), |b| {
            b.iter(|| files.sync_with(&workspace, &watched).expect("sync"))
        });
        group.bench_function(format!("sync_unchanged_stamps{suffix}"), |b| {
            b.iter(|| files.sync_with(&workspace, &stamps).expect("sync"))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench, harness_files
}
criterion_main!(benches);
