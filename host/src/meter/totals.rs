//! Reading the aggregates: [`Meter::totals`] for usage reports.
//!
//! Every answer is read from the `meter_totals` counter rows — never from
//! the records — so its cost depends on the number of buckets and
//! members, not on the number of calls:
//!
//! | group by | filters it takes | rows read |
//! | --- | --- | --- |
//! | `none`, `day`, `month` | org; and project, or project + end user, or project + session | one row per bucket of the range (month rows when there is no day range and the scope has them) |
//! | `project` | org (+ project) | the org's project rows in the range |
//! | `end_user` | org + project (+ end user) | the org's end-user rows in the range |
//! | `session` | org (+ project, + session) | the org's session rows (days) in the range |
//! | `model` | org (+ project) | the org's model rows (days) in the range |
//! | `key` | org | the org's key rows in the range (records with a credential only) |
//!
//! Other combinations (an end user or a session without its project, an
//! end user *and* a session, a session filter grouped by model, …) are
//! refused with 400: the counters do not hold them, and a scan of the
//! records would cost what the counters exist to avoid. Without a day
//! range, "the range" is every bucket the org has a counter for.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Meter;
use super::calendar::{Day, month_label};
use super::counters::{Counters, DAY, MONTH, counter_key, counter_prefix, dim};
use super::error::MeterError;

/// Which usage to total: always one org, optionally narrower.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageFilter {
    /// The org (required: a report never crosses orgs).
    pub org_id: String,
    /// Only this project.
    #[serde(default)]
    pub project_id: Option<String>,
    /// Only this session (needs `project_id`).
    #[serde(default)]
    pub session_id: Option<String>,
    /// Only this end user of the project (needs `project_id`).
    #[serde(default)]
    pub end_user_id: Option<String>,
    /// From this UTC day, inclusive.
    #[serde(default)]
    pub from_day: Option<Day>,
    /// To this UTC day, inclusive.
    #[serde(default)]
    pub to_day: Option<Day>,
}

/// How [`Meter::totals`] splits its answer; the row key is named below.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// One row, key `total`.
    #[default]
    None,
    /// Per project, key = project id.
    Project,
    /// Per session, key = session id.
    Session,
    /// Per end user of the filter's project, key = end user id.
    EndUser,
    /// Per UTC day with usage, key `YYYY-MM-DD`.
    Day,
    /// Per UTC month with usage, key `YYYY-MM`.
    Month,
    /// Per model name (summed across projects), key = the model, or
    /// `tool:<name>` for tool calls.
    Model,
    /// Per credential the sessions were created with (API key or embed
    /// key id; usage without one is in no row), across projects.
    #[serde(alias = "credential")]
    Key,
}

/// One row of a usage report. Rows come sorted by key (so days and
/// months are in time order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TotalRow {
    /// What the row totals (see [`GroupBy`]).
    pub key: String,
    /// Cost, micro-units.
    pub cost_micros: u64,
    /// Uncached input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Input tokens read from a cache.
    pub cache_read_tokens: u64,
    /// Input tokens written to a cache.
    pub cache_write_tokens: u64,
    /// Wasmtime fuel consumed by tools.
    pub fuel: u64,
    /// Tool calls.
    pub tool_calls: u64,
    /// Model calls.
    pub model_calls: u64,
}

impl TotalRow {
    fn new(key: String, c: Counters) -> Self {
        TotalRow {
            key,
            cost_micros: c.cost_micros,
            input_tokens: c.input_tokens,
            output_tokens: c.output_tokens,
            cache_read_tokens: c.cache_read_tokens,
            cache_write_tokens: c.cache_write_tokens,
            fuel: c.fuel,
            tool_calls: c.tool_calls,
            model_calls: c.model_calls,
        }
    }
}

/// A checked filter: the day range as bucket numbers.
struct Query<'a> {
    org: &'a str,
    project: Option<&'a str>,
    session: Option<&'a str>,
    end_user: Option<&'a str>,
    days: Option<(u32, u32)>,
}

impl Meter {
    /// Totals of `filter`'s usage, split by `group_by` (see the module doc
    /// for which combinations are served). Read from the counters, which
    /// always equal the sum of the records. Waits for the records queued
    /// before the call to be committed (a batch, not a disk flush), so a
    /// report includes everything recorded before it: blocking, like
    /// [`Meter::flush`].
    pub fn totals(
        &self,
        filter: &UsageFilter,
        group_by: GroupBy,
    ) -> Result<Vec<TotalRow>, MeterError> {
        self.inner.writer.wait_committed()?;
        let Some(query) = self.query(filter, group_by)? else {
            return Ok(empty(group_by));
        };
        let mut rows = BTreeMap::<String, Counters>::new();
        match group_by {
            GroupBy::None | GroupBy::Day | GroupBy::Month => {
                self.series(&query, group_by, &mut rows)?
            }
            _ => self.listing(&query, group_by, &mut rows)?,
        }
        if rows.is_empty() {
            return Ok(empty(group_by));
        }
        Ok(rows
            .into_iter()
            .map(|(key, c)| TotalRow::new(key, c))
            .collect())
    }

    /// Checks the filter; `None` when nothing can match (no usage at all,
    /// or a range outside the org's).
    fn query<'a>(
        &self,
        filter: &'a UsageFilter,
        group_by: GroupBy,
    ) -> Result<Option<Query<'a>>, MeterError> {
        let ids = [
            ("org_id", Some(&filter.org_id)),
            ("project_id", filter.project_id.as_ref()),
            ("session_id", filter.session_id.as_ref()),
            ("end_user_id", filter.end_user_id.as_ref()),
        ];
        for (field, id) in ids {
            if id.is_some_and(|id| id.is_empty() || id.contains('\0')) {
                return Err(MeterError::bad_input(field, "empty or contains NUL"));
            }
        }
        if filter.project_id.is_none()
            && (filter.session_id.is_some() || filter.end_user_id.is_some())
        {
            return Err(MeterError::bad_input(
                "project_id",
                "a session or end user filter needs its project",
            ));
        }
        if filter.session_id.is_some() && filter.end_user_id.is_some() {
            return Err(MeterError::bad_input(
                "session_id",
                "filter by a session or by an end user, not both",
            ));
        }
        served(filter, group_by)?;
        // The org's first and last day with usage bound every range.
        let Some((first, last)) = self.bounds(&filter.org_id, DAY)? else {
            return Ok(None);
        };
        let from = filter
            .from_day
            .map_or(first, |d| d.days_since_epoch().max(first));
        let to = filter
            .to_day
            .map_or(last, |d| d.days_since_epoch().min(last));
        if from > to {
            return Ok(None);
        }
        let ranged = filter.from_day.is_some() || filter.to_day.is_some();
        Ok(Some(Query {
            org: &filter.org_id,
            project: filter.project_id.as_deref(),
            session: filter.session_id.as_deref(),
            end_user: filter.end_user_id.as_deref(),
            days: ranged.then_some((from, to)),
        }))
    }

    /// The first and last bucket of the org's rows of `period`.
    fn bounds(&self, org: &str, period: u8) -> Result<Option<(u32, u32)>, MeterError> {
        let prefix = counter_prefix(org, dim::ORG, period);
        let tree = &self.inner.totals;
        // Two scans, one from each end: the first and the last row.
        let first = tree.scan_prefix(&prefix).keys().next().transpose()?;
        let last = tree.scan_prefix(&prefix).keys().next_back().transpose()?;
        Ok(first.zip(last).map(|(first, last)| {
            (
                bucket_at(&first, prefix.len()),
                bucket_at(&last, prefix.len()),
            )
        }))
    }

    /// `none`, `day`, `month`: one scope's rows, bucket by bucket.
    fn series(
        &self,
        q: &Query<'_>,
        group_by: GroupBy,
        rows: &mut BTreeMap<String, Counters>,
    ) -> Result<(), MeterError> {
        let (dim, member, has_months): (u8, Vec<&str>, bool) =
            match (q.project, q.session, q.end_user) {
                (Some(p), Some(s), _) => (dim::SESSION, vec![p, s], false),
                (Some(p), None, Some(u)) => (dim::END_USER, vec![p, u], true),
                (Some(p), None, None) => (dim::PROJECT, vec![p], true),
                _ => (dim::ORG, vec![], true),
            };
        let months = has_months && q.days.is_none() && group_by != GroupBy::Day;
        let (period, (from, to)) = if months {
            match self.bounds(q.org, MONTH)? {
                Some(bounds) => (MONTH, bounds),
                None => return Ok(()),
            }
        } else {
            match q.days {
                Some(days) => (DAY, days),
                None => match self.bounds(q.org, DAY)? {
                    Some(bounds) => (DAY, bounds),
                    None => return Ok(()),
                },
            }
        };
        for bucket in from..=to {
            let key = counter_key(q.org, dim, period, bucket, &member);
            let Some(bytes) = self.inner.totals.get(key)? else {
                continue;
            };
            let label = match (group_by, period) {
                (GroupBy::Day, _) => Day::from_days_since_epoch(bucket).to_string(),
                (GroupBy::Month, MONTH) => month_label(bucket),
                (GroupBy::Month, _) => month_label(Day::from_days_since_epoch(bucket).month()),
                _ => "total".to_owned(),
            };
            rows.entry(label)
                .or_default()
                .add(&Counters::decode(&bytes)?);
        }
        Ok(())
    }

    /// `project`, `end_user`, `session`, `model`: every member's rows in
    /// the range.
    fn listing(
        &self,
        q: &Query<'_>,
        group_by: GroupBy,
        rows: &mut BTreeMap<String, Counters>,
    ) -> Result<(), MeterError> {
        let (dim, has_months) = match group_by {
            GroupBy::Project => (dim::PROJECT, true),
            GroupBy::Key => (dim::KEY, true),
            GroupBy::EndUser => (dim::END_USER, true),
            GroupBy::Session => (dim::SESSION, false),
            _ => (dim::NAME, false),
        };
        let period = if has_months && q.days.is_none() {
            MONTH
        } else {
            DAY
        };
        let prefix = counter_prefix(q.org, dim, period);
        let scan = match q.days {
            Some((from, to)) => {
                let bound = |bucket: u32| [prefix.as_slice(), &bucket.to_be_bytes()].concat();
                // `to + 1` cannot overflow: `to` is a day of the org's data.
                self.inner
                    .totals
                    .range(bound(from)..bound(to.saturating_add(1)))
            }
            None => self.inner.totals.scan_prefix(&prefix),
        };
        for row in scan {
            let (key, bytes) = row?;
            let member: Vec<&[u8]> = key
                .get(prefix.len() + 4..)
                .unwrap_or_default()
                .split(|&b| b == 0)
                .collect();
            let part = |i: usize| member.get(i).copied().unwrap_or_default();
            let wanted =
                |filter: Option<&str>, i: usize| filter.is_none_or(|f| f.as_bytes() == part(i));
            // Key rows name no project (and a key filter is refused).
            if group_by != GroupBy::Key && !wanted(q.project, 0) {
                continue;
            }
            let label = match group_by {
                GroupBy::Project => part(0),
                GroupBy::EndUser if wanted(q.end_user, 1) => part(1),
                GroupBy::Session if wanted(q.session, 1) => part(1),
                GroupBy::Model => part(1),
                GroupBy::Key => part(0),
                _ => continue,
            };
            rows.entry(String::from_utf8_lossy(label).into_owned())
                .or_default()
                .add(&Counters::decode(&bytes)?);
        }
        Ok(())
    }
}

/// Refuses a per-member report with a filter its rows do not carry (the
/// module's table), whether or not the org has usage.
fn served(filter: &UsageFilter, group_by: GroupBy) -> Result<(), MeterError> {
    let narrow = filter.session_id.is_some() || filter.end_user_id.is_some();
    let refusal = match group_by {
        GroupBy::Project | GroupBy::Model if narrow => {
            "per project or model: filter by org and project only"
        }
        GroupBy::Key if filter.project_id.is_some() || narrow => {
            "per key: filter by org only (key rows are per org)"
        }
        GroupBy::EndUser if filter.project_id.is_none() => "per end user: name the project",
        GroupBy::EndUser if filter.session_id.is_some() => "per end user: no session filter",
        GroupBy::Session if filter.end_user_id.is_some() => "per session: no end user filter",
        _ => return Ok(()),
    };
    Err(MeterError::bad_input("group_by", refusal))
}

/// The bucket number right after a counter key's prefix.
fn bucket_at(key: &[u8], prefix_len: usize) -> u32 {
    key.get(prefix_len..prefix_len + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_be_bytes)
}

/// The answer when nothing matched: one zero `total` row for `none`
/// (a total is always one row), no rows otherwise.
fn empty(group_by: GroupBy) -> Vec<TotalRow> {
    match group_by {
        GroupBy::None => vec![TotalRow::new("total".into(), Counters::default())],
        _ => Vec::new(),
    }
}
