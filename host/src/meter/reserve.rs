//! Admission against budgets: [`Meter::check`] before a turn,
//! [`Meter::reserve`] before a call, [`Reservation::settle`] after it.
//!
//! One mutex holds the budgets' caps (a mirror of the `meter_budgets`
//! tree) and the amounts reserved by calls in flight, per scope. A check or
//! a reservation reads each budget's spending *under that lock*, and a
//! settlement records the usage first and takes the lock to release
//! second. So while a reader holds the lock, each call in flight is
//! counted at least once — by its reservation until the release, and its
//! record can only have been added, never the reservation removed, before
//! the reader's read of the counters. `spent + reserved` as seen under the
//! lock is never below what admitted calls have committed, and two
//! reservations cannot both take the last room.
//!
//! The lock is held for a few counter reads (~1 µs each), never across I/O
//! beyond sled's page cache, and never across an `.await`.

use std::collections::HashMap;
use std::sync::{MutexGuard, PoisonError};

use super::Meter;
use super::budgets::{BudgetScope, Period};
use super::error::{BudgetExhausted, MeterError};
use super::ledger::{Recorded, UsageRecord};

/// The caps of one scope, by period.
#[derive(Debug, Default, Clone, Copy)]
struct Caps {
    day: Option<u64>,
    month: Option<u64>,
}

impl Caps {
    fn iter(self) -> impl Iterator<Item = (Period, u64)> {
        [(Period::Day, self.day), (Period::Month, self.month)]
            .into_iter()
            .filter_map(|(period, cap)| cap.map(|cap| (period, cap)))
    }
}

/// What the lock guards: the budgets' caps and the reservations in flight.
#[derive(Debug, Default)]
pub(crate) struct BudgetState {
    caps: HashMap<BudgetScope, Caps>,
    reserved: HashMap<BudgetScope, u64>,
}

impl BudgetState {
    /// Sets or clears one cap of the mirror.
    pub(crate) fn set_cap(&mut self, scope: &BudgetScope, period: Period, cap: Option<u64>) {
        let caps = self.caps.entry(scope.clone()).or_default();
        match period {
            Period::Day => caps.day = cap,
            Period::Month => caps.month = cap,
        }
        if caps.day.is_none() && caps.month.is_none() {
            self.caps.remove(scope);
        }
    }
}

/// One budget as seen under the lock.
struct Room {
    scope: BudgetScope,
    period: Period,
    cap: u64,
    spent: u64,
    reserved: u64,
}

impl Room {
    fn used(&self) -> u64 {
        self.spent.saturating_add(self.reserved)
    }

    fn exhausted(self) -> BudgetExhausted {
        BudgetExhausted {
            scope: self.scope,
            period: self.period,
            cap_micros: self.cap,
            spent_micros: self.spent,
            reserved_micros: self.reserved,
        }
    }
}

/// Room reserved against some budgets by one call in flight. Settle it
/// with the call's usage; dropping it unsettled releases the room (a call
/// that never ran).
#[derive(Debug)]
#[must_use = "dropping a reservation releases it at once"]
pub struct Reservation {
    meter: Meter,
    scopes: Vec<BudgetScope>,
    amount_micros: u64,
}

impl Reservation {
    /// The amount reserved against each scope, micro-units.
    pub fn amount_micros(&self) -> u64 {
        self.amount_micros
    }

    /// Records the call's real usage (idempotent, like [`Meter::record`])
    /// and then releases the reservation — in that order, so that
    /// `spent + reserved` never drops below the truth for a moment. The
    /// reservation is released even when the record fails (the error is
    /// returned: the usage is then not counted, and the caller decides).
    pub fn settle(self, record: &UsageRecord) -> Result<Recorded, MeterError> {
        let recorded = self.meter.record(record);
        drop(self);
        recorded
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut state = self.meter.lock_state();
        for scope in &self.scopes {
            if let Some(reserved) = state.reserved.get_mut(scope) {
                *reserved = reserved.saturating_sub(self.amount_micros);
                if *reserved == 0 {
                    state.reserved.remove(scope);
                }
            }
        }
    }
}

impl Meter {
    pub(crate) fn lock_state(&self) -> MutexGuard<'_, BudgetState> {
        // Nothing under the lock can leave the maps half-changed on a
        // panic, so a poisoned lock is still a correct one.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Every budget of `scopes` in the periods that contain `now_ms`, with
    /// what is spent and reserved. Called with the lock held.
    fn rooms(
        &self,
        state: &BudgetState,
        scopes: &[BudgetScope],
        now_ms: u64,
    ) -> Result<Vec<Room>, MeterError> {
        let mut rooms = Vec::new();
        for scope in scopes {
            let Some(caps) = state.caps.get(scope) else {
                continue;
            };
            let reserved = state.reserved.get(scope).copied().unwrap_or(0);
            for (period, cap) in caps.iter() {
                rooms.push(Room {
                    scope: scope.clone(),
                    period,
                    cap,
                    spent: self.spent(scope, period, now_ms)?,
                    reserved,
                });
            }
        }
        Ok(rooms)
    }

    /// Refuses a turn when any budget of `scopes` (for the periods that
    /// contain `now_ms`) is used up: `spent + reserved ≥ cap`. Holds no
    /// room: a turn's calls reserve their own.
    pub fn check(&self, scopes: &[BudgetScope], now_ms: u64) -> Result<(), MeterError> {
        let refused = {
            let state = self.lock_state();
            self.rooms(&state, scopes, now_ms)?
                .into_iter()
                .find(|room| room.used() >= room.cap)
        };
        match refused {
            Some(room) => Err(self.refused(room.exhausted())),
            None => Ok(()),
        }
    }

    /// Reserves `amount_micros` against every one of `scopes` if it fits
    /// under every budget of them: `spent + reserved + amount ≤ cap` (and
    /// room left at all, `spent + reserved < cap`). Check and add are one
    /// step under one lock, so concurrent calls can never both take the
    /// last room.
    ///
    /// **The guarantee.** For each budget, `spent` only grows by records
    /// and each admitted call's room stays reserved until its record is
    /// in. Hence, within a period, a budget's spending never exceeds
    ///
    /// `cap + Σ max(0, actual − reserved)` over the period's settled calls
    /// `+ Σ actual` over records written without a reservation.
    ///
    /// If every call reserves at least what it turns out to cost, `spent +
    /// reserved ≤ cap` at all times and the cap is never passed. A call
    /// can cost more than it reserved (a model answering longer than
    /// estimated): only that excess can pass the cap, and no later call is
    /// admitted until the spending is back under it (the next period, or a
    /// raised cap). Lowering a cap below what is spent refuses every later
    /// call and takes nothing back.
    pub fn reserve(
        &self,
        scopes: &[BudgetScope],
        amount_micros: u64,
        now_ms: u64,
    ) -> Result<Reservation, MeterError> {
        let mut scopes = scopes.to_vec();
        // A scope named twice is reserved once.
        scopes.sort();
        scopes.dedup();
        let mut state = self.lock_state();
        let refused = self
            .rooms(&state, &scopes, now_ms)?
            .into_iter()
            .find(|room| {
                room.used() >= room.cap || room.used().saturating_add(amount_micros) > room.cap
            });
        if let Some(room) = refused {
            drop(state);
            return Err(self.refused(room.exhausted()));
        }
        // Every scope is reserved, budget or not, so a budget set while the
        // call runs still sees it.
        for scope in &scopes {
            let reserved = state.reserved.entry(scope.clone()).or_default();
            *reserved = reserved.saturating_add(amount_micros);
        }
        drop(state);
        Ok(Reservation {
            meter: self.clone(),
            scopes,
            amount_micros,
        })
    }

    /// The most any call may cost now and still fit every budget of
    /// `scopes`: the least `cap − spent − reserved` among them; `None`
    /// when none of them has a budget. A tool's fuel limit can be the
    /// smaller of its own and what this buys.
    pub fn affordable(
        &self,
        scopes: &[BudgetScope],
        now_ms: u64,
    ) -> Result<Option<u64>, MeterError> {
        let state = self.lock_state();
        Ok(self
            .rooms(&state, scopes, now_ms)?
            .iter()
            .map(|room| room.cap.saturating_sub(room.used()))
            .min())
    }

    /// What calls in flight have reserved against `scope`, micro-units.
    pub fn reserved_micros(&self, scope: &BudgetScope) -> u64 {
        self.lock_state().reserved.get(scope).copied().unwrap_or(0)
    }
}
