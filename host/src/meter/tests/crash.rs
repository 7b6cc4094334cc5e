//! Crash safety: a reopen after a flush, a clean drop without one,
//! `kill -9` of a child process in the middle of writing (no acknowledged
//! record lost), and a batch that fails half way.

use super::oracle::{GROUPS, assert_consistent};
use super::*;

#[test]
fn flushed_records_survive_a_reopen_and_unflushed_ones_are_all_or_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records = scripted(200, 7);
    let before: Vec<_> = {
        let (_store, meter) = open(dir.path());
        for r in &records {
            meter.record(r).expect("record");
        }
        meter.flush().expect("flush");
        GROUPS
            .iter()
            .map(|g| {
                meter.totals(
                    &UsageFilter {
                        org_id: "org_a".into(),
                        ..UsageFilter::default()
                    },
                    *g,
                )
            })
            .map(|t| t.map_err(|e| e.to_string()))
            .collect()
    };
    {
        let (_store, meter) = open(dir.path());
        let after: Vec<_> = GROUPS
            .iter()
            .map(|g| {
                meter.totals(
                    &UsageFilter {
                        org_id: "org_a".into(),
                        ..UsageFilter::default()
                    },
                    *g,
                )
            })
            .map(|t| t.map_err(|e| e.to_string()))
            .collect();
        assert_eq!(before, after);
        // One more, not flushed, then a clean drop.
        let late = record("late", EVE, "org_a", "prj_9", "s9", tool(123));
        assert!(matches!(meter.record(&late), Ok(Recorded::New { .. })));
    }
    let (_store, meter) = open(dir.path());
    let count = assert_consistent(&meter, "org_a");
    let late_there = meter
        .entries("org_a")
        .expect("entries")
        .iter()
        .any(|e| e.record.id == "late");
    let prj_9 = meter
        .totals(
            &UsageFilter {
                org_id: "org_a".into(),
                ..UsageFilter::default()
            },
            GroupBy::Project,
        )
        .expect("totals")
        .into_iter()
        .any(|r| r.key == "prj_9");
    assert_eq!(
        late_there, prj_9,
        "the record and its counters come back together"
    );
    assert!(count >= records.iter().filter(|r| r.org_id == "org_a").count() / 2);
}

/// Set by the parent of [`crash_child_writer`]: the data dir to write to.
const CRASH_DIR: &str = "KARTA_METER_CRASH_DIR";

/// Not a test on its own: the child that `kill -9` interrupts. Records
/// forever through the real meter (group commit) into the dir its parent
/// names, in bursts of 1 to 40 records; after each burst's
/// [`Meter::flush`] returns it prints `ack <id>` for each of them — what
/// it acknowledged. Records of the next burst are queued (and often
/// committed, not flushed) when the kill lands.
#[test]
#[ignore = "run by killed_mid_write_loses_no_acknowledged_record"]
fn crash_child_writer() {
    use std::io::Write;
    let Some(dir) = std::env::var_os(CRASH_DIR) else {
        return;
    };
    let (_store, meter) = open(Path::new(&dir));
    let start = std::process::id();
    let mut stdout = std::io::stdout().lock();
    let mut rng = Rng(u64::from(start) | 1);
    let mut i = 0u64;
    loop {
        let burst = 1 + rng.next(40);
        let mut ids = Vec::new();
        for _ in 0..burst {
            i += 1;
            let kind = if i.is_multiple_of(2) {
                tool(i % 1000)
            } else {
                model("mx-1", i % 97, i % 13, 1, 0)
            };
            let session = format!("s{}", i % 7);
            let r = record(
                &format!("{start}-{i}"),
                EVE + (i % 5) * 40_000_000,
                "org_a",
                "prj_1",
                &session,
                kind,
            );
            meter.record(&r).expect("record");
            ids.push(r.id);
        }
        meter.flush().expect("flush");
        for id in ids {
            writeln!(stdout, "ack {id}").expect("stdout");
        }
        stdout.flush().expect("stdout");
    }
}

/// The record `crash_child_writer` wrote as `id` (`<pid>-<i>`), rebuilt.
fn crash_record(id: &str) -> UsageRecord {
    let i: u64 = id
        .rsplit_once('-')
        .and_then(|(_, i)| i.parse().ok())
        .expect("id");
    let kind = if i.is_multiple_of(2) {
        tool(i % 1000)
    } else {
        model("mx-1", i % 97, i % 13, 1, 0)
    };
    record(
        id,
        EVE + (i % 5) * 40_000_000,
        "org_a",
        "prj_1",
        &format!("s{}", i % 7),
        kind,
    )
}

/// `kill -9` of a child writing through the real meter: every record it
/// acknowledged (printed after its flush returned) is there after a
/// reopen, counted once; the totals equal the sum of the distinct records
/// present; and recording the acknowledged ids again counts nothing.
#[test]
fn killed_mid_write_loses_no_acknowledged_record() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut acknowledged = Vec::<String>::new();
    for round in 0..4u64 {
        let mut child = crate::test_support::spawn_test_child(
            "meter::tests::crash::crash_child_writer",
            (CRASH_DIR, dir.path()),
        );
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        // Kill after a number of acknowledgements that differs by round,
        // so the kill lands at different points of a burst.
        let kill_after = 200 + 370 * round;
        let mut this_round = 0;
        let mut line = String::new();
        let mut read_ack = |line: &mut String, acks: &mut Vec<String>| -> bool {
            line.clear();
            match lines.read_line(line) {
                Ok(0) | Err(_) => false,
                Ok(_) => {
                    // Only whole lines: a line cut by the kill was not
                    // printed in full, so not acknowledged.
                    if let Some(id) = line.strip_prefix("ack ").and_then(|l| l.strip_suffix('\n')) {
                        acks.push(id.to_owned());
                    }
                    true
                }
            }
        };
        while this_round < kill_after && read_ack(&mut line, &mut acknowledged) {
            this_round += 1;
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        // What the child printed before it died was acknowledged too.
        while read_ack(&mut line, &mut acknowledged) {}

        let (_store, meter) = open(dir.path());
        let count = assert_consistent(&meter, "org_a");
        let entries = meter.entries("org_a").expect("entries");
        let present: std::collections::HashMap<&str, usize> =
            entries.iter().fold(Default::default(), |mut seen, e| {
                *seen.entry(e.record.id.as_str()).or_default() += 1;
                seen
            });
        assert!(present.values().all(|n| *n == 1), "a record row twice");
        for id in &acknowledged {
            assert_eq!(present.get(id.as_str()), Some(&1), "acknowledged {id} lost");
        }
        assert!(
            count >= acknowledged.len(),
            "{count} < {}",
            acknowledged.len()
        );
        // Recording the acknowledged ids again after the restart counts
        // nothing.
        let filter = UsageFilter {
            org_id: "org_a".into(),
            ..UsageFilter::default()
        };
        let before = meter.totals(&filter, GroupBy::None).expect("totals");
        for id in acknowledged.iter().rev().take(300) {
            assert_eq!(
                meter.record(&crash_record(id)).expect("record"),
                Recorded::Duplicate,
                "{id}"
            );
        }
        meter.flush().expect("flush");
        assert_eq!(
            meter.totals(&filter, GroupBy::None).expect("totals"),
            before
        );
        assert_eq!(assert_consistent(&meter, "org_a"), count);
    }
    assert!(!acknowledged.is_empty(), "the child acknowledged records");
}

/// All or nothing, deterministically: a transaction that fails half way
/// (at a damaged counter row, after the record row and some counters are
/// staged) leaves neither the record nor any counter. `kill -9` above
/// only rarely lands inside one record's writes; this always does.
#[test]
fn a_record_that_fails_half_way_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, meter) = open(dir.path());
    let r = record("r1", EVE, "org_a", "prj_1", "s1", tool(5));
    // The session row comes after the org and project rows.
    let day = Day::from_unix_ms(EVE).days_since_epoch();
    let session_row = counters::counter_key("org_a", b's', b'd', day, &["prj_1", "s1"]);
    meter
        .inner
        .totals
        .insert(&session_row, &[0u8; 63][..])
        .expect("damage");
    // Queued at once; its batch's transaction aborts at the damaged row,
    // and the session's acknowledgement says so.
    assert_eq!(
        meter.record(&r).expect("queued"),
        Recorded::New { cost_micros: 5 }
    );
    meter.flush().expect("the disk flush itself works");
    let error = meter
        .flush_session("s1")
        .expect_err("the damaged row aborts");
    assert_eq!(error.status(), 503, "{error}");
    meter.flush_session("s1").expect("reported once");
    assert!(meter.entries("org_a").expect("entries").is_empty());
    let org = BudgetScope::Org {
        org_id: "org_a".into(),
    };
    assert_eq!(meter.spent(&org, Period::Day, EVE).expect("spent"), 0);
    // Repaired, the same record counts once.
    meter.inner.totals.remove(&session_row).expect("repair");
    assert_eq!(
        meter.record(&r).expect("record"),
        Recorded::New { cost_micros: 5 }
    );
    meter.flush_session("s1").expect("acknowledged");
    assert_consistent(&meter, "org_a");
}
