//! Cost of metering, on a real sled store in a tempdir.
//!
//! Run: `cargo bench --bench meter`
//!
//! - `meter/record_tool_call`: [`Meter::record`] of one tool-call record
//!   with an end user and a key: validated, priced and queued for the
//!   group-commit writer (what metering adds to a tool call; the goal is
//!   ≤ 5 µs). The writer thread commits in the background meanwhile.
//! - `meter/reserve_settle`: [`Meter::reserve`] against the four scopes
//!   of a call (an org budget set), then [`Reservation::settle`] with the
//!   same kind of record.
//! - `meter/check`: [`Meter::check`] of those scopes (a turn's admission).
//!
//! After the criterion runs it times, one by one, for medians (criterion's
//! headline number is a mean): the enqueue; `record` + [`Meter::flush`]
//! (one durable record: a batch and an `fsync`); a batch of N records
//! queued then flushed (the writer's throughput); and the disk's floor,
//! a 4 KiB write + `fdatasync` of a file in the same directory.
//!
//! Then sled's flush (of a 1 KiB insert; sled writes with
//! `sync_file_range`) and that floor again, each back to back and after
//! the disk idled 50 ms (as at a warm turn's end), and after the same
//! pause the store's flush from a tokio worker both ways
//! ([`Store::flush`], [`Store::flush_here`]), into
//! `target/bench-results/meter.json` (for `scripts/bench.sh`).

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use karta_host::meter::{Budget, BudgetScope, Meter, Period, PriceTable, UsageKind, UsageRecord};
use karta_host::store::Store;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The `n`th tool-call record of one session.
fn tool_call(n: u64, at_ms: u64) -> UsageRecord {
    UsageRecord {
        id: format!("ses_0123456789abcdef/{}/{}", n / 8, n % 8),
        at_ms,
        org_id: "org_5d0e8c2a4b0f4c7e9a51".into(),
        project_id: "prj_8f3b2d1c7a6e4f0b9c22".into(),
        version: 3,
        session_id: "ses_0123456789abcdef".into(),
        end_user_id: Some("user-42".into()),
        credential_id: Some("key_3e1f9a7b2c8d4e6f".into()),
        kind: UsageKind::Tool {
            tool: "calc".into(),
            fuel: 184_233,
            wall_us: 41,
        },
    }
}

/// How long the disk idles before each "after idle" sample: about a warm
/// Claude Code turn, from its message's flush to its end's.
const IDLE_MS: u64 = 50;

/// Samples of each "after idle" figure (each costs `IDLE_MS`).
const IDLE_SAMPLES: usize = 60;

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let meter = Meter::open(&store, PriceTable::default()).expect("meter");
    let at_ms = now_ms();
    let scopes = BudgetScope::for_call(
        "org_5d0e8c2a4b0f4c7e9a51",
        "prj_8f3b2d1c7a6e4f0b9c22",
        Some("user-42"),
        Some("key_3e1f9a7b2c8d4e6f"),
    );
    meter
        .set_budget(&Budget {
            scope: scopes[0].clone(),
            period: Period::Month,
            cap_micros: u64::MAX / 2,
        })
        .expect("budget");
    let mut n = 0u64;
    let mut next = || {
        n += 1;
        tool_call(n, at_ms)
    };

    let mut group = c.benchmark_group("meter");
    group.bench_function("record_tool_call", |b| {
        b.iter_batched(
            &mut next,
            |record| meter.record(&record).expect("record"),
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("reserve_settle", |b| {
        b.iter_batched(
            &mut next,
            |record| {
                meter
                    .reserve(&scopes, 1_000, at_ms)
                    .expect("reserve")
                    .settle(&record)
                    .expect("settle")
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("check", |b| {
        b.iter(|| meter.check(&scopes, at_ms).expect("check"))
    });
    group.finish();

    // One by one, for medians.
    meter.flush().expect("flush");
    const SAMPLES: usize = 20_000;
    let time = |samples: usize, op: &mut dyn FnMut()| {
        let samples = (0..samples)
            .map(|_| {
                let start = Instant::now();
                op();
                start.elapsed()
            })
            .collect();
        median(samples)
    };
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let record = time(SAMPLES, &mut || {
        let r = next();
        meter.record(&r).expect("record");
    });
    meter.flush().expect("flush");
    let reserve_settle = time(SAMPLES, &mut || {
        let r = next();
        meter
            .reserve(&scopes, 1_000, at_ms)
            .expect("reserve")
            .settle(&r)
            .expect("settle");
    });
    let check = time(SAMPLES, &mut || meter.check(&scopes, at_ms).expect("check"));
    meter.flush().expect("flush");
    println!(
        "meter medians ({SAMPLES} each): record_tool_call (enqueue) {:.2} µs, reserve_settle {:.2} µs, check {:.2} µs",
        us(record),
        us(reserve_settle),
        us(check),
    );

    // Durable: one record, then the acknowledgement barrier.
    let durable_one = time(300, &mut || {
        let r = next();
        meter.record(&r).expect("record");
        meter.flush().expect("flush");
    });
    // The disk's floor: what one fsync of a small write costs here.
    let probe = dir.path().join("fsync-probe");
    let mut file = std::fs::File::create(&probe).expect("probe");
    let page = [7u8; 4096];
    let fsync = time(300, &mut || {
        use std::io::{Seek, Write};
        file.seek(std::io::SeekFrom::Start(0)).expect("seek");
        file.write_all(&page).expect("write");
        file.sync_data().expect("fdatasync");
    });
    println!(
        "durable: record + flush {:.0} µs; disk floor (4 KiB write + fdatasync) {:.0} µs",
        us(durable_one),
        us(fsync),
    );

    disk_after_idle(&store, &mut file, &page);

    // Throughput: N records queued, then one flush (group commit).
    for batch in [100usize, 1_000, 10_000] {
        let rounds = (100_000 / batch).clamp(5, 50);
        let mut per_record = Vec::new();
        let mut enqueue_share = Vec::new();
        for _ in 0..rounds {
            let records: Vec<_> = (0..batch).map(|_| next()).collect();
            let start = Instant::now();
            for r in &records {
                meter.record(r).expect("record");
            }
            let queued = start.elapsed();
            meter.flush().expect("flush");
            let total = start.elapsed();
            per_record.push(total / batch as u32);
            enqueue_share.push(queued / batch as u32);
        }
        let per_record = median(per_record);
        println!(
            "batch of {batch}: {:.2} µs a record queued → durable ({:.0} records/s), of which {:.2} µs enqueue",
            us(per_record),
            1.0 / per_record.as_secs_f64(),
            us(median(enqueue_share)),
        );
    }
    println!("{n} records in the store");
}

/// The disk's floors and the store's flush, back to back and after the
/// disk idled [`IDLE_MS`] (as at a warm turn's end, ~60 ms after its
/// message's flush): on this kind of machine the device answers the first
/// write after a pause several times slower than one that follows
/// another. Each sample times the write and its sync alone, after the
/// pause. Also the store's two ways to flush from a tokio worker, taking
/// turns sample by sample: [`Store::flush`] (the blocking pool) and
/// [`Store::flush_here`] (this thread).
fn disk_after_idle(store: &Store, file: &mut std::fs::File, page: &[u8]) {
    let idle = Duration::from_millis(IDLE_MS);
    let tree = store.tree("bench_idle").expect("tree");
    let mut key = 0u64;
    let mut next_key = move || {
        key += 1;
        key.to_be_bytes()
    };
    let value = vec![3u8; 1024];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let sampled = |pause: Duration, samples: usize, op: &mut dyn FnMut() -> Duration| {
        median(
            (0..samples)
                .map(|_| {
                    std::thread::sleep(pause);
                    op()
                })
                .collect(),
        )
    };
    let mut sled_flush = || {
        tree.insert(next_key(), value.as_slice()).expect("insert");
        let start = Instant::now();
        store.db().flush().expect("flush");
        start.elapsed()
    };
    let sled_hot = sampled(Duration::ZERO, 300, &mut sled_flush);
    let sled_idle = sampled(idle, IDLE_SAMPLES, &mut sled_flush);
    let mut fdatasync = || {
        use std::io::{Seek, Write};
        file.seek(std::io::SeekFrom::Start(0)).expect("seek");
        file.write_all(page).expect("write");
        let start = Instant::now();
        file.sync_data().expect("fdatasync");
        start.elapsed()
    };
    let fsync_hot = sampled(Duration::ZERO, 300, &mut fdatasync);
    let fsync_idle = sampled(idle, IDLE_SAMPLES, &mut fdatasync);

    let runtime = common::runtime();
    let (pool, here) = runtime.block_on({
        let store = store.clone();
        let tree = tree.clone();
        async move {
            tokio::spawn(async move {
                let (mut pool, mut here) = (Vec::new(), Vec::new());
                for i in 0..2 * IDLE_SAMPLES as u64 {
                    tokio::time::sleep(idle).await;
                    tree.insert((u64::MAX - i).to_be_bytes(), vec![3u8; 1024])
                        .expect("insert");
                    let start = Instant::now();
                    if i % 2 == 0 {
                        store.flush().await.expect("flush");
                        pool.push(start.elapsed());
                    } else {
                        store.flush_here().await.expect("flush here");
                        here.push(start.elapsed());
                    }
                }
                (median(pool), median(here))
            })
            .await
            .expect("the sampling task")
        }
    });
    println!(
        "after {IDLE_MS} ms idle / back to back ({IDLE_SAMPLES} / 300 samples): sled's flush of a 1 KiB insert (it writes with `sync_file_range`) {:.0} / {:.0} µs; a 4 KiB write's fdatasync {:.0} / {:.0} µs",
        us(sled_idle),
        us(sled_hot),
        us(fsync_idle),
        us(fsync_hot),
    );
    println!(
        "from a tokio worker after {IDLE_MS} ms idle: Store::flush (on the blocking pool) {:.0} µs, Store::flush_here {:.0} µs",
        us(pool),
        us(here),
    );
    common::write_results(
        "meter",
        &[
            ("sled_flush_p50".into(), us(sled_hot), "us"),
            ("sled_flush_after_idle_p50".into(), us(sled_idle), "us"),
            ("fdatasync_p50".into(), us(fsync_hot), "us"),
            ("fdatasync_after_idle_p50".into(), us(fsync_idle), "us"),
            ("store_flush_after_idle_p50".into(), us(pool), "us"),
            ("store_flush_here_after_idle_p50".into(), us(here), "us"),
        ],
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
