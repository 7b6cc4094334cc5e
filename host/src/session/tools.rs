//! A session's tools: which ones an agent may use, how one runs (a plugin
//! in wasmtime with the session workspace as its only directory, or the
//! built-in `load_skill`), and the [`TurnHost`] a harness calls during a
//! turn.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use karta_harness::{
    BoxFuture, Decision, Emitted, ToolDef, ToolError, ToolErrorKind, ToolResult, TurnHost,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::approvals::TurnApprovals;
use super::live::LiveRef;
use crate::app::AppSpec;
use crate::billing::Ledger;
use crate::meter::UsageKind;
use crate::metrics::{Metrics, ToolKind};
use crate::plugin::{CallOptions, Plugin};

/// One tool a session may call.
#[derive(Clone)]
pub struct SessionTool {
    /// How the model sees it.
    pub def: ToolDef,
    /// The plugin that runs it; `None` for the built-in `load_skill`.
    pub plugin: Option<Plugin>,
    /// Whether each call needs approval.
    pub approval: bool,
}

/// The tools of an app.
#[derive(Clone)]
pub(crate) struct Toolbox {
    pub(crate) app: Arc<AppSpec>,
    /// Every tool of the app.
    all: Arc<[SessionTool]>,
    /// The tools of each agent that lists its own, made once: every turn
    /// and every MCP tool call asks for them, and a copy of a tool's schema
    /// is a tree of allocations.
    by_agent: Arc<std::collections::HashMap<String, Arc<[SessionTool]>>>,
    pub(crate) metrics: Arc<Metrics>,
    /// Where tool calls are billed (and budgets checked); `None` bills
    /// nothing (an embedder's host without projects).
    pub(crate) ledger: Option<Ledger>,
}

/// The fuel `micros` buys at `fuel_per_mfuel` micro-units per million
/// fuel (all of it when fuel is free).
fn fuel_bought(micros: u64, fuel_per_mfuel: u64) -> u64 {
    if fuel_per_mfuel == 0 {
        return u64::MAX;
    }
    u64::try_from(u128::from(micros) * 1_000_000 / u128::from(fuel_per_mfuel)).unwrap_or(u64::MAX)
}

impl Toolbox {
    /// The toolbox of `app`, whose tools are `tools`.
    pub(crate) fn new(
        app: Arc<AppSpec>,
        tools: Vec<SessionTool>,
        metrics: Arc<Metrics>,
        ledger: Option<Ledger>,
    ) -> Self {
        let by_agent = app
            .agents
            .iter()
            .filter_map(|(name, agent)| {
                let names = agent.tools.as_ref()?;
                let own: Arc<[SessionTool]> = tools
                    .iter()
                    .filter(|t| t.plugin.is_none() || names.contains(&t.def.name))
                    .cloned()
                    .collect();
                Some((name.clone(), own))
            })
            .collect();
        Self {
            app,
            all: tools.into(),
            by_agent: Arc::new(by_agent),
            metrics,
            ledger,
        }
    }

    /// The tools `agent` may use (every tool without an agent, or when the
    /// agent lists none; `load_skill` always).
    pub(crate) fn for_agent(&self, agent: Option<&str>) -> Arc<[SessionTool]> {
        agent
            .and_then(|a| self.by_agent.get(a))
            .unwrap_or(&self.all)
            .clone()
    }

    /// Runs `tool` from `tools` with `workspace` as its directory, for
    /// `session`: billed to its tenant, its fuel capped by what the
    /// tenant's budgets still buy. The call's whole fuel limit is reserved
    /// before it runs and settled with what it used, so concurrent calls
    /// never take the same room twice.
    pub(crate) async fn run(
        &self,
        session: &str,
        tools: &[SessionTool],
        workspace: &Path,
        tool: &str,
        input: &Value,
    ) -> ToolResult {
        let called = tools.iter().find(|t| t.def.name == tool);
        let kind = match called {
            Some(SessionTool {
                plugin: Some(_), ..
            }) => ToolKind::Plugin,
            Some(_) => ToolKind::Skill,
            None => ToolKind::Unknown,
        };
        let own_fuel = called
            .and_then(|t| t.plugin.as_ref())
            .map(|plugin| plugin.grant().limits.fuel);
        let billing = self
            .ledger
            .as_ref()
            .and_then(|ledger| Some((ledger, ledger.scope_of(session)?)));
        let mut fuel_cap = None;
        let mut reservation = None;
        if let (Some((ledger, scope)), Some(own)) = (&billing, own_fuel) {
            match reserve_fuel(ledger, scope, tool, own) {
                Ok((cap, held)) => {
                    fuel_cap = cap;
                    reservation = held;
                }
                Err(refusal) => return refusal,
            }
        }
        let mut result = run_tool(&self.app, tools, workspace, tool, input, fuel_cap).await;
        self.metrics.record_tool_call(kind, &result);
        if let (Some((ledger, scope)), Some(fuel)) = (&billing, result.fuel) {
            let record = Ledger::record_for(
                scope,
                session,
                format!("{session}/tool/{}", uuid::Uuid::new_v4().simple()),
                UsageKind::Tool {
                    tool: tool.to_owned(),
                    fuel,
                    wall_us: result.duration_ms.saturating_mul(1000),
                },
            );
            result.cost_micros = Some(ledger.bill(&record, reservation));
        }
        result
    }
}

/// Before a plugin call: the fuel cap the tenant's budgets allow (`None`:
/// no budget applies) and the reservation of the call's whole limit at
/// price; or the refusal when no budget has room.
fn reserve_fuel(
    ledger: &Ledger,
    scope: &crate::store::SessionScope,
    tool: &str,
    own: u64,
) -> Result<(Option<u64>, Option<crate::meter::Reservation>), ToolResult> {
    let meter = ledger.meter();
    let scopes = Ledger::budget_scopes(scope);
    let now = crate::billing::now_ms();
    let prices = meter.prices();
    let exhausted = |e: &dyn std::fmt::Display| {
        ToolResult::failed(ToolErrorKind::Denied, format!("the tool did not run: {e}"))
    };
    let cap = match meter.affordable(&scopes, now) {
        Ok(Some(room)) => {
            let cap = own.min(fuel_bought(room, prices.fuel_per_mfuel));
            if cap == 0 {
                return Err(exhausted(&"the budget is exhausted"));
            }
            Some(cap)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::error!("cannot read the budgets: {e}");
            None
        }
    };
    let limit = cap.unwrap_or(own);
    let amount = prices.cost_micros(&UsageKind::Tool {
        tool: tool.to_owned(),
        fuel: limit,
        wall_us: 0,
    });
    match meter.reserve(&scopes, amount, now) {
        Ok(held) => Ok((cap, Some(held))),
        Err(crate::meter::MeterError::Exhausted(e)) => Err(exhausted(&e)),
        Err(e) => {
            tracing::error!("cannot reserve a tool call's budget: {e}");
            Ok((cap, None))
        }
    }
}

/// Runs `tool` from `tools`: a plugin tool in wasmtime with the session
/// workspace as its preopen, or the built-in `load_skill`.
async fn run_tool(
    app: &AppSpec,
    tools: &[SessionTool],
    workspace: &Path,
    tool: &str,
    input: &Value,
    fuel_cap: Option<u64>,
) -> ToolResult {
    let Some(spec) = tools.iter().find(|t| t.def.name == tool) else {
        return ToolResult::failed(
            ToolErrorKind::UnknownTool,
            format!("no tool `{tool}` in this session"),
        );
    };
    let Some(plugin) = &spec.plugin else {
        return load_skill(app, input);
    };
    let options = CallOptions {
        workspace: Some(workspace.to_path_buf()),
        fuel_cap,
    };
    match plugin.call(tool, &input.to_string(), &options).await {
        Ok(outcome) => ToolResult {
            content: Ok(outcome.output),
            fuel: Some(outcome.fuel_consumed),
            duration_ms: outcome.duration_us / 1000,
            cost_micros: None,
        },
        Err(failure) => ToolResult {
            content: Err(ToolError {
                kind: failure.kind,
                message: failure.message,
            }),
            fuel: Some(failure.fuel_consumed),
            duration_ms: failure.duration_us / 1000,
            cost_micros: None,
        },
    }
}

/// The built-in `load_skill` tool: returns a skill's instructions.
fn load_skill(app: &AppSpec, input: &Value) -> ToolResult {
    let name = input["name"].as_str().unwrap_or_default();
    match app.skills.iter().find(|s| s.name == name) {
        Some(skill) => ToolResult {
            content: Ok(json!({ "name": skill.name, "instructions": skill.body })),
            fuel: None,
            duration_ms: 0,
            cost_micros: None,
        },
        None => ToolResult::failed(
            ToolErrorKind::InvalidInput,
            format!(
                "no skill `{name}`; skills: {}",
                app.skills
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
    }
}

/// The host side of one turn: tools through the plugin runtime, approvals
/// through the session's pending inputs.
pub(crate) struct SessionTurnHost {
    pub(crate) live: LiveRef,
    pub(crate) toolbox: Toolbox,
    pub(crate) tools: Arc<[SessionTool]>,
    /// Shared with the turn's [`super::approvals::TurnGate`], so approvals
    /// given to MCP calls count for the turn and are saved with it.
    pub(crate) approvals: Arc<TurnApprovals>,
    pub(crate) events: mpsc::UnboundedSender<Emitted>,
    pub(crate) workspace: PathBuf,
    pub(crate) cancel: CancellationToken,
    /// The app runs tools without asking (`karta.jsonc`).
    pub(crate) autonomous: bool,
}

impl TurnHost for SessionTurnHost {
    fn tools(&self) -> Vec<ToolDef> {
        self.tools.iter().map(|t| t.def.clone()).collect()
    }

    fn needs_approval(&self, tool: &str) -> bool {
        match self.tools.iter().find(|t| t.def.name == tool) {
            Some(plugin) => plugin.approval && !self.approvals.is_approved(tool),
            // The harness's own tools (Bash, Edit, …) and the app's MCP
            // servers: the harness asks only for what the app's settings do
            // not allow, so a person answers — unless the app runs
            // autonomous.
            None => !self.autonomous && !self.approvals.is_approved(tool),
        }
    }

    fn request_approval<'a>(
        &'a self,
        tool: &'a str,
        input: &'a Value,
    ) -> BoxFuture<'a, Option<Decision>> {
        Box::pin(async move {
            let emit = |event| self.events.send(Emitted { event, raw: None }).is_ok();
            let decision = self
                .approvals
                .ask(&self.live.approvals, emit, &self.cancel, tool, input)
                .await;
            if decision == Some(Decision::ApproveOnce) {
                // A process harness asked before calling over MCP: the call
                // that follows must not ask the person again.
                self.approvals.grant_once(tool, input);
            }
            decision
        })
    }

    fn take_tool_run(&self, tool: &str, input: &Value) -> Option<ToolResult> {
        self.live.take_tool_run(tool, input)
    }

    fn call_tool<'a>(&'a self, tool: &'a str, input: &'a Value) -> BoxFuture<'a, ToolResult> {
        // The builtin loop runs the call it had approved here, not over
        // MCP: use up its one-shot grant so no other call can.
        self.approvals.take_grant(tool, input);
        Box::pin(
            self.toolbox
                .run(&self.live.id, &self.tools, &self.workspace, tool, input),
        )
    }
}
