//! The ledger: one row per usage record, and the aggregate counters bumped
//! in the same sled transaction (its batch's: see `writer.rs`).
//!
//! [`Meter::record`] is idempotent on the record's `id`: an id stored,
//! queued or being written is [`Recorded::Duplicate`] and changes nothing
//! (the first one's content wins), and the batch's transaction looks each
//! id up again. Because the record rows and every counter they bump
//! commit together, a total read at any moment — or after a crash at any
//! moment — is exactly the sum of the records present.

use serde::{Deserialize, Serialize};

use super::Meter;
use super::calendar::{Day, month_of_ms};
use super::counters::{Counters, DAY, MONTH, counter_key, dim};
use super::error::MeterError;
use super::writer::Pending;

/// One metered event: a model call's tokens or a tool call's fuel, with
/// the tenant it is billed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// The caller's idempotency id, unique within the org, e.g.
    /// `"<session>/<turn>/<call>"`: recording it again counts nothing.
    pub id: String,
    /// When the usage happened, Unix milliseconds; picks the UTC day and
    /// month buckets.
    pub at_ms: u64,
    /// The org billed.
    pub org_id: String,
    /// The project within the org.
    pub project_id: String,
    /// The release version of the project the session is pinned to.
    pub version: u32,
    /// The session the usage belongs to.
    pub session_id: String,
    /// The project's end user, when the session has one.
    pub end_user_id: Option<String>,
    /// The credential (API key or embed key id) the session was opened
    /// with, for per-key budgets.
    pub credential_id: Option<String>,
    /// What was used.
    pub kind: UsageKind,
}

/// What a record measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum UsageKind {
    /// One model call (one request through the gateway).
    Model {
        /// Who served it (`anthropic`, `offline`, …).
        provider: String,
        /// The model's name as the request gave it; prices match on it.
        model: String,
        /// Uncached input tokens.
        input_tokens: u64,
        /// Output tokens.
        output_tokens: u64,
        /// Input tokens read from the provider's cache.
        cache_read_tokens: u64,
        /// Input tokens written to the provider's cache.
        cache_write_tokens: u64,
        /// The whole prompt of the call this record is part of — its
        /// input, cache reads and cache writes, as the answer reported
        /// them — which picks a long-context price
        /// ([`super::LongContextPrice`]). A call's usage comes in several
        /// records (its input at the answer's start, its output at the
        /// end), and the output's price depends on the prompt too. 0 in
        /// records from before it was kept: their own input decides.
        #[serde(default, skip_serializing_if = "is_zero")]
        prompt_tokens: u64,
    },
    /// One tool call in wasmtime.
    Tool {
        /// The tool's name.
        tool: String,
        /// The fuel it consumed.
        fuel: u64,
        /// Its wall-clock time, microseconds (kept in the record, not
        /// priced).
        wall_us: u64,
    },
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl UsageKind {
    /// The name this usage is grouped under by [`GroupBy::Model`]: the
    /// model's name, or `tool:<name>` for a tool.
    ///
    /// [`GroupBy::Model`]: super::GroupBy::Model
    pub fn group_name(&self) -> String {
        match self {
            UsageKind::Model { model, .. } => model.clone(),
            UsageKind::Tool { tool, .. } => format!("tool:{tool}"),
        }
    }
}

/// What [`Meter::record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The record is new and counted.
    New {
        /// What it cost, as billed (micro-units).
        cost_micros: u64,
    },
    /// A record with this id was already there; nothing changed.
    Duplicate,
}

/// A record row: the record and the cost billed when it was written.
#[derive(Serialize)]
struct EntryRef<'a> {
    cost_micros: u64,
    record: &'a UsageRecord,
}

/// A record row, read back (tests).
#[cfg(test)]
#[derive(Deserialize)]
pub(crate) struct Entry {
    pub(crate) cost_micros: u64,
    pub(crate) record: UsageRecord,
}
/// `org 0x00 id`: a record's row.
pub(crate) fn record_key(org: &str, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(org.len() + id.len() + 1);
    key.extend_from_slice(org.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key
}
/// A record's row: the record and what it was billed.
pub(crate) fn encode_row(record: &UsageRecord, cost_micros: u64) -> Result<Vec<u8>, MeterError> {
    Ok(serde_json::to_vec(&EntryRef {
        cost_micros,
        record,
    })?)
}

/// The counter rows of `record` that budgets read: org, project, end user
/// and key, day and month (the first rows of [`counter_keys`]).
fn budget_counter_keys(record: &UsageRecord) -> Vec<Vec<u8>> {
    let day = Day::from_unix_ms(record.at_ms).days_since_epoch();
    let month = month_of_ms(record.at_ms);
    let org = record.org_id.as_str();
    let mut keys = Vec::with_capacity(8);
    let mut both = |dim: u8, member: &[&str]| {
        keys.push(counter_key(org, dim, DAY, day, member));
        keys.push(counter_key(org, dim, MONTH, month, member));
    };
    both(dim::ORG, &[]);
    both(dim::PROJECT, &[&record.project_id]);
    if let Some(user) = &record.end_user_id {
        both(dim::END_USER, &[&record.project_id, user]);
    }
    if let Some(credential) = &record.credential_id {
        both(dim::KEY, &[credential]);
    }
    keys
}

/// The counter rows one record bumps (see the module's tree table).
pub(crate) fn counter_keys(record: &UsageRecord) -> Vec<Vec<u8>> {
    let day = Day::from_unix_ms(record.at_ms).days_since_epoch();
    let month = month_of_ms(record.at_ms);
    let org = record.org_id.as_str();
    let project = record.project_id.as_str();
    let mut keys = Vec::with_capacity(10);
    let mut both = |dim: u8, member: &[&str]| {
        keys.push(counter_key(org, dim, DAY, day, member));
        keys.push(counter_key(org, dim, MONTH, month, member));
    };
    both(dim::ORG, &[]);
    both(dim::PROJECT, &[project]);
    if let Some(user) = &record.end_user_id {
        both(dim::END_USER, &[project, user]);
    }
    if let Some(credential) = &record.credential_id {
        both(dim::KEY, &[credential]);
    }
    // Sessions and model names are many and short-lived: day rows only
    // (a month is at most 31 of them).
    keys.push(counter_key(
        org,
        dim::SESSION,
        DAY,
        day,
        &[project, &record.session_id],
    ));
    let name = record.kind.group_name();
    keys.push(counter_key(org, dim::NAME, DAY, day, &[project, &name]));
    keys
}
/// Refuses what would break the key layout: `0x00` separates key parts.
fn validate(record: &UsageRecord) -> Result<(), MeterError> {
    let fields = [
        ("id", Some(&record.id)),
        ("org_id", Some(&record.org_id)),
        ("project_id", Some(&record.project_id)),
        ("session_id", Some(&record.session_id)),
        ("end_user_id", record.end_user_id.as_ref()),
        ("credential_id", record.credential_id.as_ref()),
    ];
    for (field, value) in fields {
        match value {
            Some(value) if value.is_empty() => {
                return Err(MeterError::bad_input(field, "it is empty"));
            }
            Some(value) if value.contains('\0') => {
                return Err(MeterError::bad_input(field, "it contains NUL"));
            }
            _ => {}
        }
    }
    if record.kind.group_name().contains('\0') {
        return Err(MeterError::bad_input("kind", "the name contains NUL"));
    }
    Ok(())
}

impl Meter {
    /// Records `record` once: its row and every aggregate it bumps (org,
    /// project, session, end user, key and model, by UTC day and month).
    /// The same id again — stored, or still queued — is
    /// [`Recorded::Duplicate`] and changes nothing.
    ///
    /// Queues the record for the group-commit writer (`writer.rs`) and
    /// returns at once: budgets ([`Meter::spent`], [`Meter::check`],
    /// [`Meter::reserve`]) count it from now on, [`Meter::totals`] once
    /// its batch is applied (it waits for that). It is **durable** only
    /// when a later [`Meter::flush`] (or [`Meter::flush_session`]) has
    /// returned `Ok`: a caller that must not lose the record across a
    /// crash — before it answers a client, say — flushes; a crash before
    /// that loses the record *and* its aggregates together, never one of
    /// them. Its row and every counter it bumps travel together: one
    /// journal row (its batch's), then one sled transaction.
    pub fn record(&self, record: &UsageRecord) -> Result<Recorded, MeterError> {
        validate(record)?;
        let cost_micros = self.prices().cost_micros(&record.kind);
        let pending = Pending {
            row_key: record_key(&record.org_id, &record.id),
            record: record.clone(),
            cost_micros,
            delta: Counters::of(&record.kind, cost_micros),
        };
        self.inner
            .writer
            .enqueue(pending, budget_counter_keys(record))
    }

    /// Every record row of `org` with its billed cost (tests).
    #[cfg(test)]
    pub(crate) fn entries(&self, org: &str) -> Result<Vec<Entry>, MeterError> {
        self.inner.writer.wait_committed()?;
        let mut prefix = org.as_bytes().to_vec();
        prefix.push(0);
        self.inner
            .writer
            .records()
            .scan_prefix(prefix)
            .values()
            .map(|value| Ok(serde_json::from_slice(&value?)?))
            .collect()
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_serialize_tagged() {
        let kind = UsageKind::Tool {
            tool: "calc".into(),
            fuel: 1,
            wall_us: 2,
        };
        let json = serde_json::to_value(&kind).expect("json");
        assert_eq!(json["type"], "tool");
        assert_eq!(kind.group_name(), "tool:calc");
    }
}
