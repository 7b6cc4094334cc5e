//! What each harness costs a session: message-to-first-text latency and
//! resident memory per live session, for `builtin`, `claude_code` and
//! `opencode`, on the support-bot app and the offline model.
//!
//! Run: `scripts/install-harnesses.sh && cargo bench --bench harnesses`
//!
//! - `first_text/warm/<harness>`: the second message of a session (its
//!   harness process already runs, its history is one turn), until the
//!   first `text` event is published.
//! - `first_text/cold/<harness>`: the same on a new session, so the time
//!   includes starting the process (Claude Code) or the server (OpenCode).
//! - After the groups it prints the resident memory per live session: the
//!   RSS of each session's process tree after one turn (median of three
//!   sessions); for `builtin`, the growth of this process over 200 sessions
//!   with one turn each, divided by 200.
//!
//! A harness whose binary is not installed is skipped, with a line saying so.

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

mod common;

use std::time::Duration;

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use karta_host::app::HarnessKind;
use karta_host::harness::HarnessBinaries;
use karta_host::session::Sessions;
use karta_host::{Host, HostConfig};

/// The harnesses measured, with their names in the report.
const HARNESSES: [(HarnessKind, &str); 3] = [
    (HarnessKind::Builtin, "builtin"),
    (HarnessKind::ClaudeCode, "claude_code"),
    (HarnessKind::Opencode, "opencode"),
];

fn binaries() -> HarnessBinaries {
    let bin = common::root().join("harnesses/node_modules/.bin");
    let found = |name: &str| Some(bin.join(name)).filter(|p| p.exists());
    HarnessBinaries {
        claude: found("claude"),
        opencode: found("opencode"),
    }
}

async fn start(kind: HarnessKind, app: &std::path::Path, data: &std::path::Path) -> Host {
    let mut config = HostConfig::new(app);
    config.data_dir = data.to_path_buf();
    config.harness = Some(kind);
    config.harness_binaries = binaries();
    Host::start(config).await.expect("host starts")
}

/// Sends `text` and returns the time to the first `text` event; waits for
/// the turn to end (outside the measured time).
async fn first_text(sessions: &std::sync::Arc<Sessions>, id: &str, text: &str) -> Duration {
    common::in_process_turn(sessions, id, text).await.0
}

async fn new_session(sessions: &Sessions) -> String {
    let session = sessions
        .create(None, Default::default())
        .await
        .expect("create");
    session.id
}

/// Resident memory of `pid` and all its descendants, in MiB.
fn tree_rss_mib(pid: u32) -> f64 {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = Default::default();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // The field after the `(comm)` is the state, then the parent pid.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        if let Some(parent) = after.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
            children.entry(parent).or_default().push(p);
        }
    }
    let mut total_kib = 0.0;
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        total_kib += common::rss_kib(p);
        stack.extend(children.get(&p).into_iter().flatten());
    }
    total_kib / 1024.0
}

fn bench(c: &mut Criterion) {
    let rt = common::runtime();
    let app = common::support_bot_app();
    let installed = binaries();
    let mut memory = Vec::new();

    for (kind, name) in HARNESSES {
        if kind != HarnessKind::Builtin && installed.for_kind(kind).is_none() {
            println!("{name}: not installed (scripts/install-harnesses.sh); skipped");
            continue;
        }
        let data = tempfile::tempdir().expect("tempdir");
        let host = rt.block_on(start(kind, app.path(), data.path()));
        let sessions = host.sessions().clone();

        let mut group = c.benchmark_group("first_text");
        group
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(5))
            .sampling_mode(SamplingMode::Flat);
        // Warm: the second message of a session, its process already up and
        // its history one turn long (the first turn is not timed).
        group.bench_function(format!("warm/{name}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let id = new_session(&sessions).await;
                        first_text(&sessions, &id, "warm up").await;
                        total += first_text(&sessions, &id, "hello there").await;
                        // Stop its process now, so the machine does not fill
                        // with idle harnesses.
                        sessions.delete(&id).await.expect("delete");
                    }
                    total
                })
            })
        });
        // Cold: the first message of a new session, so the time includes
        // starting its process.
        group.bench_function(format!("cold/{name}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let id = new_session(&sessions).await;
                        total += first_text(&sessions, &id, "hello there").await;
                        sessions.delete(&id).await.expect("delete");
                    }
                    total
                })
            })
        });
        group.finish();

        let per_session = rt.block_on(async {
            if kind == HarnessKind::Builtin {
                let before = common::rss_kib(std::process::id());
                for _ in 0..200 {
                    let id = new_session(&sessions).await;
                    first_text(&sessions, &id, "hello there").await;
                }
                (common::rss_kib(std::process::id()) - before) / 1024.0 / 200.0
            } else {
                let mut samples = Vec::new();
                for _ in 0..3 {
                    let id = new_session(&sessions).await;
                    first_text(&sessions, &id, "hello there").await;
                    let pid = sessions.harness_process_id(&id).expect("a process");
                    samples.push(tree_rss_mib(pid));
                }
                common::median(samples)
            }
        });
        memory.push((name, per_session));
        drop(sessions);
        drop(host);
    }
    println!();
    println!("resident memory per live session (after one turn):");
    for (name, mib) in memory {
        println!("  {name:<12} {mib:>8.1} MiB");
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
