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

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

criterion_group!(benches, bench);
criterion_main!(benches);
