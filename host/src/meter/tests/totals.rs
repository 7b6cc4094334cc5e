//! Idempotency, and every served report against the oracle.

use std::collections::HashSet;

use super::oracle::assert_reports_match;
use super::*;

#[test]
fn same_id_three_times_is_counted_once_in_every_aggregate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, meter) = open(dir.path());
    let mut r = record(
        "ses_1/1/1",
        EVE,
        "org_a",
        "prj_1",
        "ses_1",
        model("mx-1", 10, 2, 0, 0),
    );
    r.end_user_id = Some("u1".into());
    r.credential_id = Some("key_1".into());
    assert_eq!(
        meter.record(&r).expect("record"),
        Recorded::New { cost_micros: 30 }
    );
    assert_eq!(meter.record(&r).expect("record"), Recorded::Duplicate);
    // Same id, different content: still the first one.
    let mut changed = r.clone();
    changed.kind = tool(1_000);
    assert_eq!(meter.record(&changed).expect("record"), Recorded::Duplicate);
    assert_reports_match(&meter, std::slice::from_ref(&r));
    let filter = UsageFilter {
        org_id: "org_a".into(),
        ..UsageFilter::default()
    };
    let total = &meter.totals(&filter, GroupBy::None).expect("totals")[0];
    assert_eq!(
        (total.cost_micros, total.model_calls, total.tool_calls),
        (30, 1, 0)
    );
    for scope in BudgetScope::for_call("org_a", "prj_1", Some("u1"), Some("key_1")) {
        for period in [Period::Day, Period::Month] {
            assert_eq!(
                meter.spent(&scope, period, EVE).expect("spent"),
                30,
                "{scope} {period}"
            );
        }
        // The next day and month are empty.
        assert_eq!(
            meter
                .spent(&scope, Period::Month, EVE + 1000)
                .expect("spent"),
            0
        );
    }
    assert_eq!(meter.entries("org_a").expect("entries").len(), 1);
}

#[test]
fn totals_equal_the_sum_of_many_distinct_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, meter) = open(dir.path());
    let records = scripted(600, 0x5EED);
    let mut new = 0;
    for r in &records {
        if let Recorded::New { cost_micros } = meter.record(r).expect("record") {
            assert_eq!(cost_micros, expected_cost(&r.kind));
            new += 1;
        }
    }
    let distinct: HashSet<_> = records.iter().map(|r| (&r.org_id, &r.id)).collect();
    assert_eq!(new, distinct.len());
    assert!(new < records.len(), "some ids repeat within an org");
    assert_reports_match(&meter, &records);
}

#[test]
fn totals_by_each_group_by_on_a_scripted_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, meter) = open(dir.path());
    let midnight = EVE + 1000; // 2025-02-01T00:00:00.000Z
    let mut rows = vec![
        record(
            "a1",
            EVE,
            "org_a",
            "prj_1",
            "s1",
            model("mx-1", 100, 10, 0, 0),
        ), // 250
        record("a2", midnight, "org_a", "prj_1", "s1", tool(7)), // 7
        record(
            "a3",
            midnight + 5,
            "org_a",
            "prj_2",
            "s2",
            model("other", 3, 3, 3, 3),
        ), // 12
        // Org B uses the same project and session ids: never in A's rows.
        record(
            "b1",
            EVE,
            "org_b",
            "prj_1",
            "s1",
            model("mx-1", 1000, 0, 0, 0),
        ), // 2000
    ];
    rows[0].end_user_id = Some("u1".into());
    rows[2].end_user_id = Some("u1".into());
    for r in &rows {
        meter.record(r).expect("record");
    }
    let report = |filter: UsageFilter, group_by| -> Vec<(String, u64)> {
        let rows = meter.totals(&filter, group_by).expect("totals");
        rows.into_iter().map(|r| (r.key, r.cost_micros)).collect()
    };
    let a = || UsageFilter {
        org_id: "org_a".into(),
        ..UsageFilter::default()
    };
    let pairs = |v: &[(&str, u64)]| -> Vec<(String, u64)> {
        v.iter().map(|(k, c)| (k.to_string(), *c)).collect()
    };
    assert_eq!(report(a(), GroupBy::None), pairs(&[("total", 269)]));
    assert_eq!(
        report(a(), GroupBy::Day),
        pairs(&[("2025-01-31", 250), ("2025-02-01", 19)])
    );
    assert_eq!(
        report(a(), GroupBy::Month),
        pairs(&[("2025-01", 250), ("2025-02", 19)])
    );
    assert_eq!(
        report(a(), GroupBy::Project),
        pairs(&[("prj_1", 257), ("prj_2", 12)])
    );
    assert_eq!(
        report(a(), GroupBy::Session),
        pairs(&[("s1", 257), ("s2", 12)])
    );
    assert_eq!(
        report(a(), GroupBy::Model),
        pairs(&[("mx-1", 250), ("other", 12), ("tool:calc", 7)])
    );
    let prj_1 = || UsageFilter {
        project_id: Some("prj_1".into()),
        ..a()
    };
    assert_eq!(report(prj_1(), GroupBy::EndUser), pairs(&[("u1", 250)]));
    assert_eq!(
        report(prj_1(), GroupBy::Month),
        pairs(&[("2025-01", 250), ("2025-02", 7)])
    );
    let feb = UsageFilter {
        from_day: Some("2025-02-01".parse().expect("day")),
        ..a()
    };
    assert_eq!(report(feb.clone(), GroupBy::None), pairs(&[("total", 19)]));
    assert_eq!(
        report(feb, GroupBy::Project),
        pairs(&[("prj_1", 7), ("prj_2", 12)])
    );
    let b = UsageFilter {
        org_id: "org_b".into(),
        ..UsageFilter::default()
    };
    assert_eq!(report(b, GroupBy::Session), pairs(&[("s1", 2000)]));
    // An org with no usage has a zero total and no other rows.
    let none = UsageFilter {
        org_id: "org_none".into(),
        ..UsageFilter::default()
    };
    assert_eq!(report(none.clone(), GroupBy::None), pairs(&[("total", 0)]));
    assert_eq!(report(none, GroupBy::Day), pairs(&[]));
    assert_reports_match(&meter, &rows);
}
