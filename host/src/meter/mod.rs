//! Metering: what each tenant used and what it cost, and budgets that
//! refuse work once a cap is reached.
//!
//! - **Ledger** (`ledger.rs`, `writer.rs`): [`Meter::record`] queues a
//!   [`UsageRecord`] (a model call's tokens or a tool call's fuel) and
//!   returns at once (~1 µs); a writer thread logs each batch of queued
//!   records in a journal row (one insert), then applies logged batches —
//!   their rows and every aggregate counter they bump — in **one sled
//!   transaction** that also removes their journal rows, idempotent on
//!   the record's id. Totals never disagree with the records, and a crash
//!   leaves both or neither (the meter applies a crash's journal rows when
//!   it opens). Budgets count a record from the moment it is queued.
//!   **Acknowledgement:** a record is durable once a [`Meter::flush`]
//!   called after it has returned `Ok` (everything queued before is then
//!   applied and `fsync`ed), or once the caller's own flush of the same
//!   database returned after [`Meter::commit_session`] or
//!   [`Meter::commit_session_async`]. A turn's end waits for its records
//!   to be logged, writes its terminal event and
//!   flushes the store (one `fsync` for both) before it publishes `done` or
//!   `error`; the usage routes flush before they answer.
//! - **Prices** (`prices.rs`): a [`PriceTable`] in integer micro-units
//!   (1/1,000,000 of a currency unit), from TOML or the documented
//!   default; a cost is rounded up once per record and stored with it.
//! - **Totals** (`totals.rs`): [`Meter::totals`] reports by project,
//!   session, end user, day, month or model from the counters alone (the
//!   served combinations are tabled there); [`Meter::spent`] is one read.
//! - **Budgets** (`budgets.rs`, `reserve.rs`): a [`Budget`] caps a
//!   [`BudgetScope`] per UTC day or month. [`Meter::check`] refuses a
//!   turn at the cap; [`Meter::reserve`] takes room for a call under one
//!   lock and [`Reservation::settle`] records the call, then releases.
//!   **Guarantee:** a budget is never overspent except by what calls cost
//!   *beyond what they reserved*, plus records written with no
//!   reservation at all; if every call reserves at least its cost, the cap
//!   holds exactly (the precise bound is on [`Meter::reserve`]).
//! - `writer.rs`: the group-commit writer (queue, batches, the journal,
//!   the pending view budgets read, flushes); `counters.rs`: the counter
//!   rows' keys and values; `calendar.rs`: UTC
//!   [`Day`]s and months; `error.rs`: [`MeterError`] and
//!   [`BudgetExhausted`] (402). Tests of several parts at once are in
//!   `tests/`; `benches/meter.rs` times `record`, a batch's commit, a
//!   flush and `reserve` + `settle`.
//!
//! Trees (keys are byte strings; `0x00` separates parts — ids and names
//! never contain it, the meter refuses them — and buckets are `u32`
//! big-endian, so one prefix scan returns an org's rows of one dimension in
//! time order):
//!
//! | tree | key | value |
//! | --- | --- | --- |
//! | `meter_records` | org id, `0x00`, record id | `{cost_micros, record}` JSON ([`UsageRecord`] and what it was billed) |
//! | `meter_totals` | org id, `0x00`, dimension, period, bucket (u32 BE), member | 8 × u64 LE: cost, input, output, cache read, cache write tokens, fuel, tool calls, model calls; then the stamp (u64 LE) of the batch that last wrote it (absent in rows from before group commit) |
//! | `meter_journal` | the sequence number of the row's last record (u64 BE); `hw` | up to 64 records of one batch, each with its row, counter keys and deltas (binary, `writer.rs`), until applied; `hw`: the highest stamp ever applied (u64 BE) |
//! | `meter_budgets` | org id, `0x00`, dimension, (member part, `0x00`)*, period | [`Budget`] JSON |
//!
//! Period is `d` (bucket = days since 1970-01-01 UTC) or `m` (bucket =
//! year × 12 + month − 1). The counter rows one record bumps:
//!
//! | dimension | member | periods | serves |
//! | --- | --- | --- | --- |
//! | `o` org | — | `d`, `m` | org budgets; org totals |
//! | `p` project | project id | `d`, `m` | project budgets; per-project totals |
//! | `u` end user | project id, end user id | `d`, `m` | end-user budgets; per-end-user totals |
//! | `k` key | credential id | `d`, `m` | per-key budgets |
//! | `s` session | project id, session id | `d` | per-session totals |
//! | `n` model | project id, model name or `tool:<name>` | `d` | per-model totals |
//!
//! That is 6 to 10 counter rows and one record row per record; a batch
//! writes each counter row once, with the sum of its records' deltas.
//!
//! ```
//! use karta_host::meter::{
//!     Budget, BudgetScope, GroupBy, Meter, Period, PriceTable, Recorded, UsageFilter,
//!     UsageKind, UsageRecord,
//! };
//! use karta_host::store::Store;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let meter = Meter::open(&Store::open(dir.path())?, PriceTable::default())?;
//! let now = 1_750_000_000_000;
//! let scopes = BudgetScope::for_call("org_a", "prj_a", None, None);
//! meter.set_budget(&Budget { scope: scopes[0].clone(), period: Period::Day, cap_micros: 50_000 })?;
//!
//! // Before a call: reserve an estimate; after it: settle with the truth.
//! let reservation = meter.reserve(&scopes, 20_000, now)?;
//! let record = UsageRecord {
//!     id: "ses_1/1/1".into(),
//!     at_ms: now,
//!     org_id: "org_a".into(),
//!     project_id: "prj_a".into(),
//!     version: 1,
//!     session_id: "ses_1".into(),
//!     end_user_id: None,
//!     credential_id: None,
//!     kind: UsageKind::Model {
//!         provider: "anthropic".into(),
//!         model: "claude-sonnet-4-5-20250929".into(),
//!         input_tokens: 1000,
//!         output_tokens: 500,
//!         cache_read_tokens: 0,
//!         cache_write_tokens: 0,
//!         prompt_tokens: 1000,
//!     },
//! };
//! assert_eq!(reservation.settle(&record)?, Recorded::New { cost_micros: 10_500 });
//! assert_eq!(meter.record(&record)?, Recorded::Duplicate);
//! meter.flush()?;
//!
//! assert_eq!(meter.affordable(&scopes, now)?, Some(39_500));
//! let filter = UsageFilter { org_id: "org_a".into(), ..Default::default() };
//! assert_eq!(meter.totals(&filter, GroupBy::None)?[0].cost_micros, 10_500);
//! # Ok(()) }
//! ```

mod budgets;
mod calendar;
mod counters;
mod error;
mod ledger;
mod prices;
mod reserve;
mod totals;
mod writer;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::store::Store;

pub use budgets::{Budget, BudgetScope, Period};
pub use calendar::{BadDay, Day};
pub use error::{BudgetExhausted, MeterError};

pub use ledger::{Recorded, UsageKind, UsageRecord};
pub use prices::{LongContextPrice, ModelPrice, PriceTable};
pub use reserve::Reservation;
pub use totals::{GroupBy, TotalRow, UsageFilter};

/// The meter: the ledger, its counters, the prices and the budgets. Cheap
/// to clone (one `Arc`); every clone is the same meter.
#[derive(Clone)]
pub struct Meter {
    inner: Arc<Inner>,
}

struct Inner {
    /// The group-commit writer: records go through it.
    writer: writer::Writer,
    totals: sled::Tree,
    budgets: sled::Tree,
    prices: RwLock<Arc<PriceTable>>,
    state: Mutex<reserve::BudgetState>,
    /// Told of every refusal ([`Meter::on_exhausted`]): the webhooks'
    /// `budget.exceeded`.
    on_exhausted: std::sync::OnceLock<ExhaustedHook>,
}

/// What [`Meter::on_exhausted`] calls.
pub type ExhaustedHook = Arc<dyn Fn(&BudgetExhausted) + Send + Sync>;

impl fmt::Debug for Meter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Meter").finish_non_exhaustive()
    }
}

impl Meter {
    /// The meter of `store`'s database, billing with `prices`. Reads every
    /// budget into memory (budgets are few: one row per scope and period).
    ///
    /// Open **one** meter per database and clone it: the reservations in
    /// flight live in the meter, and two meters of one database would not
    /// see each other's.
    pub fn open(store: &Store, prices: PriceTable) -> Result<Self, MeterError> {
        let budgets = store.tree("meter_budgets")?;
        let mut state = reserve::BudgetState::default();
        for budget in Meter::all_budgets(&budgets)? {
            state.set_cap(&budget.scope, budget.period, Some(budget.cap_micros));
        }
        let records = store.tree("meter_records")?;
        let totals = store.tree("meter_totals")?;
        let journal = store.tree("meter_journal")?;
        Ok(Meter {
            inner: Arc::new(Inner {
                writer: writer::Writer::start(store.clone(), records, totals.clone(), journal)?,
                totals,
                budgets,
                prices: RwLock::new(Arc::new(prices)),
                state: Mutex::new(state),
                on_exhausted: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Calls `hook` whenever a budget refuses a turn or a reservation
    /// ([`Meter::check`], [`Meter::reserve`]), after the meter's lock is
    /// released (once; a second call is ignored).
    pub fn on_exhausted(&self, hook: ExhaustedHook) {
        let _ = self.inner.on_exhausted.set(hook);
    }

    /// The error of a refusal, after telling the hook of it.
    fn refused(&self, exhausted: BudgetExhausted) -> MeterError {
        if let Some(hook) = self.inner.on_exhausted.get() {
            hook(&exhausted);
        }
        exhausted.into()
    }

    /// The prices new records are billed with.
    pub fn prices(&self) -> Arc<PriceTable> {
        let prices = self
            .inner
            .prices
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(&prices)
    }

    /// Bills records written from now on with `prices`; records already
    /// written keep the cost they were billed.
    pub fn set_prices(&self, prices: PriceTable) {
        *self
            .inner
            .prices
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(prices);
    }

    /// The acknowledgement barrier: returns when every record queued
    /// before the call is committed and on disk (with every budget written
    /// so far: the same database). One `fsync` covers all the callers
    /// waiting on the same batch. Blocks (a batch and a few ms of
    /// `fsync`): from async code call it on the blocking pool. `Store::flush`
    /// is **not** enough: records still queued are not in the database yet.
    pub fn flush(&self) -> Result<(), MeterError> {
        self.inner.writer.flush(None)
    }

    /// [`Meter::flush`], and then `Err` if a record of `session` could not
    /// be written since its last `flush_session` (the writer drops a record
    /// whose transaction fails on its own and remembers its session): what
    /// a turn calls before it tells its client what it cost.
    pub fn flush_session(&self, session: &str) -> Result<(), MeterError> {
        self.inner.writer.flush(Some(session))
    }

    /// [`Meter::flush_session`] without the disk flush: returns when every
    /// record queued before the call is applied to the database's trees
    /// (not yet `fsync`ed), or `Err` if a record of `session` was lost. For
    /// a caller that flushes the same database itself before it tells
    /// anyone — a turn's end flushes the store before its `done` is
    /// published — so the path to `done` pays one `fsync`, not two.
    pub fn commit_session(&self, session: &str) -> Result<(), MeterError> {
        self.inner.writer.wait_committed()?;
        self.inner.writer.take_lost(session)
    }

    /// [`Meter::commit_session`] for async callers, and cheaper: returns
    /// once every record queued before the call is *logged* (its journal
    /// row is in the database, so the caller's next flush makes it
    /// durable), without holding a thread (the writer wakes it). A record
    /// lost when its batch is applied later (a damaged counter row) fails
    /// the session's next acknowledgement instead.
    pub async fn commit_session_async(&self, session: &str) -> Result<(), MeterError> {
        self.inner.writer.logged().await?;
        self.inner.writer.take_lost(session)
    }
}
