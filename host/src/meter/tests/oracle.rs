//! The oracle: what a report should say, computed from the records alone,
//! and the assertions that compare the meter's reports with it.

use std::collections::{BTreeMap, HashSet};

use super::*;

/// The report `records` should give, computed from the records alone:
/// first record of each (org, id) wins, filter, group, add.
pub(super) fn expected(
    records: &[UsageRecord],
    filter: &UsageFilter,
    group_by: GroupBy,
) -> Vec<TotalRow> {
    let mut seen = HashSet::new();
    let mut rows = BTreeMap::<String, TotalRow>::new();
    for r in records {
        if !seen.insert((r.org_id.clone(), r.id.clone())) || r.org_id != filter.org_id {
            continue;
        }
        let day = Day::from_unix_ms(r.at_ms);
        let keep = filter
            .project_id
            .as_ref()
            .is_none_or(|p| *p == r.project_id)
            && filter
                .session_id
                .as_ref()
                .is_none_or(|s| *s == r.session_id)
            && filter
                .end_user_id
                .as_ref()
                .is_none_or(|u| Some(u) == r.end_user_id.as_ref())
            && filter.from_day.is_none_or(|from| day >= from)
            && filter.to_day.is_none_or(|to| day <= to);
        let key = match group_by {
            GroupBy::None => Some("total".to_owned()),
            GroupBy::Project => Some(r.project_id.clone()),
            GroupBy::Session => Some(r.session_id.clone()),
            GroupBy::EndUser => r.end_user_id.clone(),
            GroupBy::Day => Some(day.to_string()),
            GroupBy::Month => Some(day.to_string()[..7].to_owned()),
            GroupBy::Key => r.credential_id.clone(),
            GroupBy::Model => Some(match &r.kind {
                UsageKind::Model { model, .. } => model.clone(),
                UsageKind::Tool { tool, .. } => format!("tool:{tool}"),
            }),
        };
        let (true, Some(key)) = (keep, key) else {
            continue;
        };
        let row = rows.entry(key.clone()).or_insert_with(|| TotalRow {
            key,
            ..TotalRow::default()
        });
        row.cost_micros += expected_cost(&r.kind);
        match &r.kind {
            UsageKind::Model {
                input_tokens,
                output_tokens,
                cache_read_tokens,
                cache_write_tokens,
                ..
            } => {
                row.input_tokens += input_tokens;
                row.output_tokens += output_tokens;
                row.cache_read_tokens += cache_read_tokens;
                row.cache_write_tokens += cache_write_tokens;
                row.model_calls += 1;
            }
            UsageKind::Tool { fuel, .. } => {
                row.fuel += fuel;
                row.tool_calls += 1;
            }
        }
    }
    if rows.is_empty() && group_by == GroupBy::None {
        rows.insert(
            "total".into(),
            TotalRow {
                key: "total".into(),
                ..TotalRow::default()
            },
        );
    }
    rows.into_values().collect()
}

pub(super) const GROUPS: [GroupBy; 8] = [
    GroupBy::None,
    GroupBy::Project,
    GroupBy::Session,
    GroupBy::EndUser,
    GroupBy::Day,
    GroupBy::Month,
    GroupBy::Model,
    GroupBy::Key,
];

/// Whether the module documents `group_by` over `filter` as served.
pub(super) fn served(filter: &UsageFilter, group_by: GroupBy) -> bool {
    let (p, s, u) = (
        filter.project_id.is_some(),
        filter.session_id.is_some(),
        filter.end_user_id.is_some(),
    );
    if (s || u) && !p || s && u {
        return false;
    }
    match group_by {
        GroupBy::Project | GroupBy::Model => !s && !u,
        GroupBy::Key => !p && !s && !u,
        GroupBy::EndUser => p && !s,
        GroupBy::Session => !u,
        _ => true,
    }
}

/// Every filter over `org` worth asking: none, each project, each
/// session and end user of it, and day ranges around the boundary.
pub(super) fn filters(records: &[UsageRecord], org: &str) -> Vec<UsageFilter> {
    let base = UsageFilter {
        org_id: org.into(),
        ..UsageFilter::default()
    };
    let mut filters = vec![base.clone()];
    let eve = Day::from_unix_ms(EVE);
    let next = Day::from_unix_ms(EVE + DAY_MS);
    for (from, to) in [
        (Some(eve), Some(eve)),
        (Some(next), None),
        (None, Some(eve)),
        (Some(next), Some(eve)),
    ] {
        filters.push(UsageFilter {
            from_day: from,
            to_day: to,
            ..base.clone()
        });
    }
    let mut seen = HashSet::new();
    for r in records.iter().filter(|r| r.org_id == org) {
        let project = Some(r.project_id.clone());
        if seen.insert(("p", r.project_id.clone())) {
            filters.push(UsageFilter {
                project_id: project.clone(),
                ..base.clone()
            });
            filters.push(UsageFilter {
                project_id: project.clone(),
                from_day: Some(next),
                ..base.clone()
            });
        }
        if seen.insert(("s", format!("{}/{}", r.project_id, r.session_id))) {
            filters.push(UsageFilter {
                project_id: project.clone(),
                session_id: Some(r.session_id.clone()),
                ..base.clone()
            });
        }
        if let Some(user) = &r.end_user_id
            && seen.insert(("u", format!("{}/{user}", r.project_id)))
        {
            filters.push(UsageFilter {
                project_id: project.clone(),
                end_user_id: Some(user.clone()),
                ..base.clone()
            });
            filters.push(UsageFilter {
                project_id: project,
                end_user_id: Some(user.clone()),
                to_day: Some(eve),
                ..base.clone()
            });
        }
    }
    filters
}

/// Asserts every served report of both orgs equals what the records give.
pub(super) fn assert_reports_match(meter: &Meter, records: &[UsageRecord]) {
    for org in ["org_a", "org_b", "org_none"] {
        for filter in filters(records, org) {
            for group_by in GROUPS {
                let got = meter.totals(&filter, group_by);
                if served(&filter, group_by) {
                    let got = got.unwrap_or_else(|e| panic!("{filter:?} {group_by:?}: {e}"));
                    assert_eq!(
                        got,
                        expected(records, &filter, group_by),
                        "{filter:?} by {group_by:?}"
                    );
                } else {
                    let error = got.expect_err("not served");
                    assert_eq!(error.status(), 400, "{filter:?} by {group_by:?}: {error}");
                }
            }
        }
    }
}

/// Sum of the org's record rows against its counters, for every group-by
/// the org alone serves.
pub(super) fn assert_consistent(meter: &Meter, org: &str) -> usize {
    let entries = meter.entries(org).expect("entries");
    let records: Vec<UsageRecord> = entries
        .iter()
        .map(|e| {
            assert_eq!(e.cost_micros, expected_cost(&e.record.kind));
            e.record.clone()
        })
        .collect();
    let filter = UsageFilter {
        org_id: org.into(),
        ..UsageFilter::default()
    };
    for group_by in GROUPS.into_iter().filter(|g| *g != GroupBy::EndUser) {
        assert_eq!(
            meter.totals(&filter, group_by).expect("totals"),
            expected(&records, &filter, group_by),
            "{group_by:?} after reopening with {} records",
            records.len()
        );
    }
    records.len()
}
