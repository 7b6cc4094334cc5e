//! [`MeterError`] and [`BudgetExhausted`]: how a meter call fails, each
//! with the HTTP status and the protocol's error code the API answers
//! with.

use crate::store::StoreError;

use super::budgets::{BudgetScope, Period};

/// Why a meter call failed.
#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    /// The database failed (503, `storage_unavailable`). Also a counter
    /// row that is not 64 bytes: the meter wrote every one of them.
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// A price table that is not valid TOML or not the documented shape
    /// (400, `invalid_request`). `line` is 1-based, when `toml` knows it.
    #[error("invalid price table{}: {message}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Prices {
        /// The line of the error in the TOML text.
        line: Option<usize>,
        /// What is wrong there.
        message: String,
    },
    /// A malformed argument: an id holding `0x00` (the key separator), or
    /// a filter the aggregates cannot answer (400, `invalid_request`).
    #[error("invalid {field}: {message}")]
    BadInput {
        /// The argument at fault.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A budget has no room (402, `budget_exhausted`).
    #[error(transparent)]
    Exhausted(#[from] BudgetExhausted),
    /// Queued records could not be made durable: the writer lost them, a
    /// disk flush failed, or the writer stopped (503,
    /// `storage_unavailable`).
    #[error("{0}")]
    Unwritten(String),
}

impl MeterError {
    /// The HTTP status the API answers with.
    pub fn status(&self) -> u16 {
        match self {
            MeterError::Storage(_) | MeterError::Unwritten(_) => 503,
            MeterError::Prices { .. } | MeterError::BadInput { .. } => 400,
            MeterError::Exhausted(exhausted) => exhausted.status(),
        }
    }

    /// The protocol's error code for the answer's body.
    pub fn code(&self) -> &'static str {
        match self {
            MeterError::Storage(_) | MeterError::Unwritten(_) => "storage_unavailable",
            MeterError::Prices { .. } | MeterError::BadInput { .. } => "invalid_request",
            MeterError::Exhausted(exhausted) => exhausted.code(),
        }
    }

    pub(crate) fn bad_input(field: &'static str, message: impl Into<String>) -> Self {
        MeterError::BadInput {
            field,
            message: message.into(),
        }
    }

    /// A counter row of the wrong size: only a bug or a damaged disk
    /// writes one, and adding to it would make the totals lie.
    pub(crate) fn corrupt(what: &str) -> Self {
        MeterError::Storage(StoreError::Sled(sled::Error::Unsupported(format!(
            "corrupt meter row: {what}"
        ))))
    }
}

impl From<sled::Error> for MeterError {
    fn from(error: sled::Error) -> Self {
        MeterError::Storage(StoreError::Sled(error))
    }
}

impl From<serde_json::Error> for MeterError {
    fn from(error: serde_json::Error) -> Self {
        MeterError::Storage(StoreError::Codec(error))
    }
}

impl From<sled::transaction::TransactionError<MeterError>> for MeterError {
    fn from(error: sled::transaction::TransactionError<MeterError>) -> Self {
        match error {
            sled::transaction::TransactionError::Abort(error) => error,
            sled::transaction::TransactionError::Storage(error) => error.into(),
        }
    }
}

/// A budget of one of the scopes has no room for what was asked: the
/// turn or the call must not start (402, `budget_exhausted`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the {period} budget of {scope} is exhausted: {spent_micros} spent and {reserved_micros} reserved of {cap_micros} micro-units"
)]
pub struct BudgetExhausted {
    /// The scope whose budget refused.
    pub scope: BudgetScope,
    /// The budget's period.
    pub period: Period,
    /// The budget's cap, micro-units.
    pub cap_micros: u64,
    /// What the records of the current period cost so far, micro-units.
    pub spent_micros: u64,
    /// What calls in flight have reserved against the scope, micro-units.
    pub reserved_micros: u64,
}

impl BudgetExhausted {
    /// The HTTP status the API answers with: 402 Payment Required.
    pub fn status(&self) -> u16 {
        402
    }

    /// The protocol's error code for the answer's body.
    pub fn code(&self) -> &'static str {
        "budget_exhausted"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes() {
        let exhausted = BudgetExhausted {
            scope: BudgetScope::Org {
                org_id: "org_a".into(),
            },
            period: Period::Day,
            cap_micros: 10,
            spent_micros: 10,
            reserved_micros: 0,
        };
        assert_eq!(
            (exhausted.status(), exhausted.code()),
            (402, "budget_exhausted")
        );
        let table = [
            (
                MeterError::from(sled::Error::Unsupported("x".into())),
                503,
                "storage_unavailable",
            ),
            (
                MeterError::Prices {
                    line: Some(3),
                    message: "x".into(),
                },
                400,
                "invalid_request",
            ),
            (MeterError::bad_input("org_id", "x"), 400, "invalid_request"),
            (
                MeterError::Unwritten("x".into()),
                503,
                "storage_unavailable",
            ),
            (MeterError::from(exhausted), 402, "budget_exhausted"),
        ];
        for (error, status, code) in table {
            assert_eq!((error.status(), error.code()), (status, code), "{error}");
        }
        let prices = MeterError::Prices {
            line: Some(3),
            message: "x".into(),
        };
        assert_eq!(prices.to_string(), "invalid price table (line 3): x");
    }
}
