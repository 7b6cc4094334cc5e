//! Budgets: a cap on what a scope (an org, a project, a key, an end user)
//! may spend in a UTC day or month, kept in sled and mirrored in memory so
//! that a check reads no budget row.
//!
//! Every scope names its org, and both the budget rows and the counters
//! they are checked against are keyed under that org: a scope built with
//! one org's id and another org's project id reads that org's (empty)
//! counters and can never see or change the other org's budgets.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Meter;
use super::calendar::{Day, month_of_ms};
use super::counters::{Counters, DAY, MONTH, counter_key, dim};
use super::error::MeterError;

/// Who a budget caps.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BudgetScope {
    /// A whole org.
    Org {
        /// The org.
        org_id: String,
    },
    /// One project.
    Project {
        /// The project's org.
        org_id: String,
        /// The project.
        project_id: String,
    },
    /// The sessions opened with one credential (API key or embed key).
    Key {
        /// The credential's org.
        org_id: String,
        /// The credential's id, as records carry it.
        credential_id: String,
    },
    /// One end user of one project.
    EndUser {
        /// The project's org.
        org_id: String,
        /// The project.
        project_id: String,
        /// The end user's id within the project.
        end_user_id: String,
    },
}

impl BudgetScope {
    /// Every scope a call of this session counts against — what a turn
    /// checks and a call reserves: the org, the project, and the end user
    /// and the credential when there are.
    pub fn for_call(
        org_id: &str,
        project_id: &str,
        end_user_id: Option<&str>,
        credential_id: Option<&str>,
    ) -> Vec<Self> {
        let mut scopes = vec![
            BudgetScope::Org {
                org_id: org_id.into(),
            },
            BudgetScope::Project {
                org_id: org_id.into(),
                project_id: project_id.into(),
            },
        ];
        if let Some(end_user_id) = end_user_id {
            scopes.push(BudgetScope::EndUser {
                org_id: org_id.into(),
                project_id: project_id.into(),
                end_user_id: end_user_id.into(),
            });
        }
        if let Some(credential_id) = credential_id {
            scopes.push(BudgetScope::Key {
                org_id: org_id.into(),
                credential_id: credential_id.into(),
            });
        }
        scopes
    }

    /// The org the scope belongs to.
    pub fn org_id(&self) -> &str {
        match self {
            BudgetScope::Org { org_id }
            | BudgetScope::Project { org_id, .. }
            | BudgetScope::Key { org_id, .. }
            | BudgetScope::EndUser { org_id, .. } => org_id,
        }
    }

    /// The counter dimension and member that hold this scope's spending.
    fn dim_member(&self) -> (u8, Vec<&str>) {
        match self {
            BudgetScope::Org { .. } => (dim::ORG, vec![]),
            BudgetScope::Project { project_id, .. } => (dim::PROJECT, vec![project_id]),
            BudgetScope::Key { credential_id, .. } => (dim::KEY, vec![credential_id]),
            BudgetScope::EndUser {
                project_id,
                end_user_id,
                ..
            } => (dim::END_USER, vec![project_id, end_user_id]),
        }
    }

    /// `org 0x00 dim (member-part 0x00)* period`: the scope's budget row.
    fn budget_key(&self, period: Period) -> Vec<u8> {
        let (dim, member) = self.dim_member();
        let mut key = self.org_id().as_bytes().to_vec();
        key.extend_from_slice(&[0, dim]);
        for part in member {
            key.extend_from_slice(part.as_bytes());
            key.push(0);
        }
        key.push(period.tag());
        key
    }

    fn validate(&self) -> Result<(), MeterError> {
        let (_, member) = self.dim_member();
        for part in member.into_iter().chain([self.org_id()]) {
            if part.is_empty() || part.contains('\0') {
                return Err(MeterError::bad_input(
                    "scope",
                    "an id is empty or contains NUL",
                ));
            }
        }
        Ok(())
    }
}

impl fmt::Display for BudgetScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BudgetScope::Org { org_id } => write!(f, "org {org_id}"),
            BudgetScope::Project { project_id, .. } => write!(f, "project {project_id}"),
            BudgetScope::Key { credential_id, .. } => write!(f, "key {credential_id}"),
            BudgetScope::EndUser {
                project_id,
                end_user_id,
                ..
            } => write!(f, "end user {end_user_id} of project {project_id}"),
        }
    }
}

/// The period a budget resets on: the UTC day or the UTC calendar month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// The UTC day.
    Day,
    /// The UTC calendar month.
    Month,
}

impl Period {
    fn tag(self) -> u8 {
        match self {
            Period::Day => DAY,
            Period::Month => MONTH,
        }
    }

    /// The bucket of the period that contains `now_ms`.
    fn bucket(self, now_ms: u64) -> u32 {
        match self {
            Period::Day => Day::from_unix_ms(now_ms).days_since_epoch(),
            Period::Month => month_of_ms(now_ms),
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Period::Day => "daily",
            Period::Month => "monthly",
        })
    }
}

/// A cap on what a scope may spend in a period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// Who is capped.
    pub scope: BudgetScope,
    /// Over what.
    pub period: Period,
    /// The most the scope may spend in one period, micro-units.
    pub cap_micros: u64,
}

impl Meter {
    /// Sets (or replaces) the budget of `budget.scope` for
    /// `budget.period`. Takes effect at once for every later check and
    /// reservation; durable after the next flush, like a record (an admin
    /// route flushes before it answers).
    pub fn set_budget(&self, budget: &Budget) -> Result<(), MeterError> {
        budget.scope.validate()?;
        let value = serde_json::to_vec(budget)?;
        // Under the lock, so the tree and the mirror change together.
        let mut state = self.lock_state();
        self.inner
            .budgets
            .insert(budget.scope.budget_key(budget.period), value)?;
        state.set_cap(&budget.scope, budget.period, Some(budget.cap_micros));
        Ok(())
    }

    /// Removes the budget of `scope` for `period`; whether there was one.
    pub fn remove_budget(&self, scope: &BudgetScope, period: Period) -> Result<bool, MeterError> {
        let mut state = self.lock_state();
        let removed = self
            .inner
            .budgets
            .remove(scope.budget_key(period))?
            .is_some();
        state.set_cap(scope, period, None);
        Ok(removed)
    }

    /// Every budget of `org_id`'s scopes, in key order (org, projects,
    /// end users, keys; day before month).
    pub fn budgets(&self, org_id: &str) -> Result<Vec<Budget>, MeterError> {
        let mut prefix = org_id.as_bytes().to_vec();
        prefix.push(0);
        self.inner
            .budgets
            .scan_prefix(prefix)
            .values()
            .map(|value| Ok(serde_json::from_slice(&value?)?))
            .collect()
    }

    /// Every budget in the database (to fill the in-memory mirror).
    pub(crate) fn all_budgets(budgets: &sled::Tree) -> Result<Vec<Budget>, MeterError> {
        budgets
            .iter()
            .values()
            .map(|value| Ok(serde_json::from_slice(&value?)?))
            .collect()
    }

    /// What `scope` has spent in the `period` that contains `now_ms`
    /// (UTC), micro-units: every record recorded so far — committed, or
    /// still queued for the writer — and no reservation. One read of one
    /// counter row, and the queue's pending sum for it.
    pub fn spent(
        &self,
        scope: &BudgetScope,
        period: Period,
        now_ms: u64,
    ) -> Result<u64, MeterError> {
        let (dim, member) = scope.dim_member();
        let key = counter_key(
            scope.org_id(),
            dim,
            period.tag(),
            period.bucket(now_ms),
            &member,
        );
        let totals = &self.inner.totals;
        let counters = self
            .inner
            .writer
            .with_pending(&key, || match totals.get(&key)? {
                Some(bytes) => Counters::decode_stamped(&bytes),
                None => Ok((Counters::default(), 0)),
            })?;
        Ok(counters.cost_micros)
    }
}
