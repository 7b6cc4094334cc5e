//! Who pays for a model call, and with which key: the gateway asks
//! [`ProviderKeys`] per call (it is the gateway's [`CallRouter`]), and
//! hands it every usage increment for the [`Ledger`].
//!
//! The ledger ([`crate::meter`]) gets one record per usage increment of a
//! model call (`<call id>/<n>`: the gateway reads usage as the answer
//! streams, so a call is usually two records, its input and its output) and
//! one per tool call, each tied to the session's org, project, release, end
//! user and credential (the API key or embed key it was created with) from
//! the session's record. Records are queued as the usage passes (the
//! meter's group commit) and acknowledged by the turn before its `done` or
//! `error` event is written ([`Ledger::acknowledge`]: committed and on
//! disk): what a client was told in `done` survives a crash.
//!
//! A session's org may have its own key for a provider (BYOK, sealed at
//! rest by [`crate::byok`]). A call whose model names a provider
//! (`openai/…`, `openrouter/…`, `anthropic/…`) goes out with the org's key
//! for that provider; one with a bare model name in the Anthropic shape with
//! the org's `anthropic` key, in the OpenAI shape with its `openai` key, else
//! its `openrouter` key — to that provider's base URL (configurable, so an
//! operator can point one at a proxy and tests at a fake provider). The
//! gateway translates when that provider speaks the other shape. An org
//! without such a key falls back to the platform's upstream only if the
//! operator configured one, else to the offline model (see
//! [`crate::gateway`] for when a named provider is refused instead).
//!
//! The key is unsealed for the one request and lives in the upstream
//! request's header only: never in a harness's environment, the jail, a log
//! line (`Upstream`'s `Debug` leaves it out) or an answer.

use std::collections::BTreeMap;

use secrecy::ExposeSecret;

use karta_harness::Usage;

use crate::byok::{Byok, Provider};
use crate::gateway::{CallRouter, ModelCall, Upstream, UpstreamKind, Wanted};
use crate::meter::{BudgetScope, Meter, UsageKind, UsageRecord};
use crate::store::{SessionScope, Store};

/// Now, Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Sessions whose tenant [`Ledger::scope_of`] keeps in memory at most.
const MAX_CACHED_SCOPES: usize = 10_000;

/// The usage ledger as sessions and the gateway write to it.
#[derive(Clone)]
pub struct Ledger {
    store: Store,
    meter: Meter,
    /// What each session's records cost since its turn last took it (the
    /// `done` event's `cost_micros`).
    turn_costs: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
    /// Sessions' tenants, read once each: a session's scope never changes,
    /// and a model call asks for it up to four times (its upstream, its
    /// reservation, each usage increment). Bounded; a deleted session is
    /// forgotten, as its id may be chosen again by another tenant.
    scopes: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, SessionScope>>>,
    /// The room each model call in flight holds in its tenant's budgets,
    /// by call id (released when the call ends).
    calls: std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<String, crate::meter::Reservation>>,
    >,
    /// Sessions whose model call a budget refused since their turn last
    /// asked, with the reason.
    refusals: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
}

impl Ledger {
    /// A ledger over `meter`, finding sessions' tenants in `store`.
    pub fn new(store: Store, meter: Meter) -> Self {
        Self {
            store,
            meter,
            turn_costs: Default::default(),
            scopes: Default::default(),
            calls: Default::default(),
            refusals: Default::default(),
        }
    }

    fn add_cost(&self, session: &str, micros: u64) {
        let mut costs = self
            .turn_costs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let cost = costs.entry(session.to_owned()).or_default();
        *cost = cost.saturating_add(micros);
    }

    /// Takes what `session`'s records cost since the last take (a turn
    /// takes its own at its end).
    pub fn take_turn_cost(&self, session: &str) -> u64 {
        self.turn_costs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(session)
            .unwrap_or(0)
    }

    /// Bills `record`, settling `reservation` if the call held one;
    /// returns its cost.
    pub fn bill(
        &self,
        record: &UsageRecord,
        reservation: Option<crate::meter::Reservation>,
    ) -> u64 {
        let cost = self.meter.prices().cost_micros(&record.kind);
        let written = match reservation {
            Some(held) => held.settle(record).map(|_| ()),
            None => self.meter.record(record).map(|_| ()),
        };
        if let Err(e) = written {
            tracing::error!(id = %record.id, "cannot write a usage record: {e}");
        }
        self.add_cost(&record.session_id, cost);
        cost
    }

    /// Waits until every record queued so far is committed to the
    /// database (woken by the meter's writer; no blocking thread held);
    /// `Err` if one of `session`'s records could not be written. A turn
    /// calls it before it writes its terminal event and flushes the store —
    /// the same sled database — so the records are on disk before the
    /// client is told what the turn cost, with one `fsync` on the path to
    /// `done` rather than two.
    pub async fn acknowledge(&self, session: &str) -> Result<(), crate::meter::MeterError> {
        self.meter.commit_session_async(session).await
    }

    /// The meter (prices, budgets, totals).
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// The tenant of a session (`None`: not a tenant's session).
    pub fn scope_of(&self, session: &str) -> Option<SessionScope> {
        let scopes = || {
            self.scopes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some(scope) = scopes().get(session) {
            return Some(scope.clone());
        }
        let scope = match self.store.session(session) {
            Ok(record) => record.and_then(|r| r.scope)?,
            Err(e) => {
                tracing::error!("cannot read session {session} for the ledger: {e}");
                return None;
            }
        };
        let mut cached = scopes();
        if cached.len() >= MAX_CACHED_SCOPES {
            cached.clear();
        }
        cached.insert(session.to_owned(), scope.clone());
        Some(scope)
    }

    /// Forgets a deleted session's tenant.
    pub fn forget(&self, session: &str) {
        self.scopes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(session);
        self.take_refusal(session);
    }

    /// Why a budget refused a model call of `session` since the last take
    /// (a turn takes it at its end): a process harness reports the
    /// gateway's 402 as a model error, and the turn corrects it to
    /// `budget_exhausted`.
    pub fn take_refusal(&self, session: &str) -> Option<String> {
        self.refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(session)
    }

    /// Refuses a new turn of `session` when a budget it counts against has
    /// run out (a session billed to no one passes): the check every route
    /// that starts a turn makes before anything runs.
    pub fn check_session_budgets(&self, session: &str) -> Result<(), crate::meter::MeterError> {
        match self.scope_of(session) {
            Some(scope) => self.meter.check(&Self::budget_scopes(&scope), now_ms()),
            None => Ok(()),
        }
    }

    /// Every budget scope a call of this tenant counts against.
    pub fn budget_scopes(scope: &SessionScope) -> Vec<BudgetScope> {
        BudgetScope::for_call(
            &scope.org_id,
            &scope.project_id,
            scope.end_user_id.as_deref(),
            scope.credential_id.as_deref(),
        )
    }

    /// The record of `kind` for `session` under `scope`.
    pub fn record_for(
        scope: &SessionScope,
        session: &str,
        id: String,
        kind: UsageKind,
    ) -> UsageRecord {
        UsageRecord {
            id,
            at_ms: now_ms(),
            org_id: scope.org_id.clone(),
            project_id: scope.project_id.clone(),
            version: scope.version,
            session_id: session.to_owned(),
            end_user_id: scope.end_user_id.clone(),
            credential_id: scope.credential_id.clone(),
            kind,
        }
    }

    /// Bills `fuel` of a tool call of `session` that ran outside the
    /// toolbox (a compiled MCP server); returns its cost.
    pub fn tool_usage(&self, session: &str, tool: &str, fuel: u64, wall_us: u64) -> Option<u64> {
        let scope = self.scope_of(session)?;
        let record = Self::record_for(
            &scope,
            session,
            format!("{session}/tool/{}", uuid::Uuid::new_v4().simple()),
            UsageKind::Tool {
                tool: tool.to_owned(),
                fuel,
                wall_us,
            },
        );
        Some(self.bill(&record, None))
    }

    /// Before a model call: reserves what it may cost at most — its
    /// `max_tokens` of output, and its request's size as input (about four
    /// bytes a token: generous, as JSON framing is counted too) — in every
    /// budget of its tenant; refused when a budget has no such room.
    pub fn begin_call(
        &self,
        call: &ModelCall,
        max_tokens: u64,
        request_bytes: usize,
    ) -> Result<(), String> {
        let Some(scope) = self.scope_of(&call.session) else {
            return Ok(());
        };
        let estimate = UsageKind::Model {
            provider: call.provider.clone(),
            model: call.model.clone(),
            input_tokens: (request_bytes as u64).div_ceil(4),
            output_tokens: max_tokens,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            // The estimate's input is the whole prompt (a long one is held
            // at its long-context price).
            prompt_tokens: 0,
        };
        let amount = self.meter.prices().cost_micros(&estimate);
        match self
            .meter
            .reserve(&Self::budget_scopes(&scope), amount, now_ms())
        {
            Ok(held) => {
                self.calls
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(call.id.clone(), held);
                Ok(())
            }
            Err(crate::meter::MeterError::Exhausted(e)) => {
                // A process harness sees only the gateway's 402 and reports
                // a model error; the turn's end asks why (`take_refusal`).
                self.refusals
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(call.session.clone(), e.to_string());
                Err(e.to_string())
            }
            Err(e) => {
                // The ledger failing must not stop the model: logged,
                // unreserved.
                tracing::error!("cannot reserve a model call's budget: {e}");
                Ok(())
            }
        }
    }

    /// After a model call: its reservation is released (its usage is in
    /// the ledger by now, recorded as the answer passed).
    pub fn end_call(&self, call: &ModelCall) {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&call.id);
    }

    /// One increment of a model call's usage, billed as the dearer of
    /// the model asked for and the one the answer says answered: a
    /// provider that falls back to another model (OpenRouter's `models`,
    /// say) bills what answered, and an answer naming a cheaper or
    /// unpriced model never bills below what was asked for.
    ///
    /// `prompt_tokens` is the call's whole prompt as the answer has
    /// reported it so far (it picks a long-context price, the output's
    /// too).
    pub fn model_usage(
        &self,
        call: &ModelCall,
        seq: u32,
        usage: Usage,
        answered_by: Option<&str>,
        prompt_tokens: u64,
    ) {
        let Some(scope) = self.scope_of(&call.session) else {
            return;
        };
        let kind_for = |model: &str| UsageKind::Model {
            provider: call.provider.clone(),
            model: model.to_owned(),
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cache_read_tokens: usage.cache_read_tokens,
            cache_write_tokens: usage.cache_write_tokens,
            prompt_tokens,
        };
        let asked = kind_for(&call.model);
        let kind = match answered_by.filter(|answered| *answered != call.model) {
            Some(answered) => {
                let answered = kind_for(answered);
                let prices = self.meter.prices();
                if prices.cost_micros(&answered) > prices.cost_micros(&asked) {
                    answered
                } else {
                    asked
                }
            }
            None => asked,
        };
        let record = Self::record_for(&scope, &call.session, format!("{}/{seq}", call.id), kind);
        self.bill(&record, None);
    }
}

/// Each provider's API base URL (no trailing `/v1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderUrls(pub BTreeMap<Provider, String>);

impl Default for ProviderUrls {
    fn default() -> Self {
        Self(BTreeMap::from([
            (Provider::Anthropic, "https://api.anthropic.com".into()),
            (Provider::Openai, "https://api.openai.com".into()),
            (Provider::Openrouter, "https://openrouter.ai/api".into()),
        ]))
    }
}

/// The gateway's per-call router: the session's org's own key, and the
/// ledger.
pub struct ProviderKeys {
    byok: Byok,
    urls: ProviderUrls,
    ledger: Ledger,
}

impl ProviderKeys {
    /// A router over the sealed keys of `byok`, recording into `ledger`.
    pub fn new(byok: Byok, urls: ProviderUrls, ledger: Ledger) -> Self {
        Self { byok, urls, ledger }
    }
}

impl CallRouter for ProviderKeys {
    fn begin(&self, call: &ModelCall, max_tokens: u64, request_bytes: usize) -> Result<(), String> {
        self.ledger.begin_call(call, max_tokens, request_bytes)
    }

    fn end(&self, call: &ModelCall) {
        self.ledger.end_call(call);
    }

    fn record(
        &self,
        call: &ModelCall,
        seq: u32,
        usage: Usage,
        answered_by: Option<&str>,
        prompt_tokens: u64,
    ) {
        self.ledger
            .model_usage(call, seq, usage, answered_by, prompt_tokens);
    }

    fn upstream_for(&self, session: &str, wanted: Wanted) -> Result<Option<Upstream>, String> {
        let unavailable = |e: &dyn std::fmt::Display| {
            tracing::error!("cannot read the org's provider key: {e}");
            "the org's provider key cannot be read; try again".to_owned()
        };
        let Some(org_id) = self.ledger.scope_of(session).map(|scope| scope.org_id) else {
            return Ok(None);
        };
        // The provider the model name named, else one of the request's
        // own shape.
        let providers: &[Provider] = match wanted {
            Wanted::Provider(provider) => &[provider][..],
            Wanted::Shape(UpstreamKind::Anthropic) => &[Provider::Anthropic],
            Wanted::Shape(UpstreamKind::Openai) => &[Provider::Openai, Provider::Openrouter],
        };
        for provider in providers {
            let Some(key) = self
                .byok
                .key_for(&org_id, *provider)
                .map_err(|e| unavailable(&e))?
            else {
                continue;
            };
            let Some(base_url) = self.urls.0.get(provider) else {
                continue;
            };
            return Ok(Some(Upstream {
                kind: crate::gateway::translate::shape_of(*provider),
                base_url: base_url.clone(),
                api_key: key.expose_secret().to_owned(),
                org_key: true,
            }));
        }
        Ok(None)
    }

    fn has_own_keys(&self, session: &str) -> bool {
        let Some(org_id) = self.ledger.scope_of(session).map(|scope| scope.org_id) else {
            return false;
        };
        // Unreadable keys count as keys: the call is refused, not quietly
        // answered by the offline model.
        self.byok
            .keys(&org_id)
            .map_or(true, |keys| !keys.is_empty())
    }
}
