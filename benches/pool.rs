//! What the warm pool buys a new session (issue 14): message-to-first-text
//! of a new session's first turn with the pool, without it, and of a warm
//! turn, for `claude_code` and `opencode`, on the support-bot app and the
//! offline model, jailed (run as root).
//!
//! Run: `scripts/install-harnesses.sh && cargo bench --bench pool`
//!
//! - `pool_first_text/warm/<harness>`: the second message of a session
//!   (its process already runs).
//! - `pool_first_text/pooled/<harness>`: the first message of a new session
//!   on a host with `--pool 2`, once the pool holds an idle process (the
//!   wait for the refill is not timed).
//! - `pool_first_text/cold/<harness>`: the same on a host with `--pool 0`:
//!   the turn starts the process.
//! - After the groups it prints the resident memory of each idle pooled
//!   process (its process tree's RSS, as the pool measures it).

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use karta_host::app::HarnessKind;
use karta_host::harness::HarnessBinaries;
use karta_host::session::{PoolConfig, Sessions};
use karta_host::{Host, HostConfig};

fn binaries() -> HarnessBinaries {
    let bin = common::root().join("harnesses/node_modules/.bin");
    let found = |name: &str| Some(bin.join(name)).filter(|p| p.exists());
    HarnessBinaries {
        claude: found("claude"),
        opencode: found("opencode"),
    }
}

async fn start(
    kind: HarnessKind,
    app: &std::path::Path,
    data: &std::path::Path,
    pool: usize,
) -> Host {
    let mut config = HostConfig::new(app);
    config.data_dir = data.to_path_buf();
    config.harness = Some(kind);
    config.harness_binaries = binaries();
    config.pool = PoolConfig {
        size: pool,
        memory_bytes: 4 << 30,
    };
    Host::start(config).await.expect("host starts")
}

async fn first_text(sessions: &Arc<Sessions>, id: &str, text: &str) -> Duration {
    common::in_process_turn(sessions, id, text).await.0
}

async fn new_session(sessions: &Sessions) -> String {
    sessions
        .create(None, Default::default())
        .await
        .expect("create")
        .id
}

/// Waits until the pool has an idle process and nothing starting (so the
/// timed turn does not share the CPU with a refill).
async fn pool_ready(sessions: &Sessions, size: usize) {
    loop {
        let stats = sessions.pool_stats().expect("a pool");
        if stats.idle >= size && stats.starting == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn bench(c: &mut Criterion) {
    let rt = common::runtime();
    let app = common::support_bot_app();
    let installed = binaries();
    let mut memory = Vec::new();
    for (kind, name) in [
        (HarnessKind::ClaudeCode, "claude_code"),
        (HarnessKind::Opencode, "opencode"),
    ] {
        if installed.for_kind(kind).is_none() {
            println!("{name}: not installed (scripts/install-harnesses.sh); skipped");
            continue;
        }
        let mut group = c.benchmark_group("pool_first_text");
        group
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(5))
            .sampling_mode(SamplingMode::Flat);

        let data = tempfile::tempdir().expect("tempdir");
        let host = rt.block_on(start(kind, app.path(), data.path(), 1));
        let sessions = host.sessions().clone();
        group.bench_function(format!("warm/{name}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        pool_ready(&sessions, 1).await;
                        let id = new_session(&sessions).await;
                        first_text(&sessions, &id, "warm up").await;
                        pool_ready(&sessions, 1).await;
                        total += first_text(&sessions, &id, "hello there").await;
                        sessions.delete(&id).await.expect("delete");
                    }
                    total
                })
            })
        });
        group.bench_function(format!("pooled/{name}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        pool_ready(&sessions, 1).await;
                        let id = new_session(&sessions).await;
                        total += first_text(&sessions, &id, "hello there").await;
                        sessions.delete(&id).await.expect("delete");
                    }
                    total
                })
            })
        });
        rt.block_on(pool_ready(&sessions, 1));
        let stats = sessions.pool_stats().expect("a pool");
        memory.push((
            name,
            stats.idle_rss_bytes.clone(),
            stats.claimed,
            stats.misses,
        ));
        rt.block_on(host.shutdown());
        drop(sessions);
        drop(host);

        let data = tempfile::tempdir().expect("tempdir");
        let host = rt.block_on(start(kind, app.path(), data.path(), 0));
        let sessions = host.sessions().clone();
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
        rt.block_on(host.shutdown());
    }
    println!();
    println!("idle pooled process (process tree RSS), claims and misses:");
    for (name, rss, claimed, misses) in memory {
        let mib: Vec<String> = rss
            .iter()
            .map(|b| format!("{:.1} MiB", *b as f64 / (1 << 20) as f64))
            .collect();
        println!(
            "  {name:<12} {} (claimed {claimed}, misses {misses})",
            mib.join(", ")
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
