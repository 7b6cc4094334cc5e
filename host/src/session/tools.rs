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
use crate::metrics::Metrics;
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
    pub(crate) tools: Arc<Vec<SessionTool>>,
    pub(crate) metrics: Arc<Metrics>,
}

impl Toolbox {
    /// The tools `agent` may use (every tool without an agent, or when the
    /// agent lists none; `load_skill` always).
    pub(crate) fn for_agent(&self, agent: Option<&str>) -> Vec<SessionTool> {
        let allowed = agent
            .and_then(|a| self.app.agents.get(a))
            .and_then(|a| a.tools.clone());
        self.tools
            .iter()
            .filter(|t| {
                allowed
                    .as_ref()
                    .is_none_or(|names| t.plugin.is_none() || names.contains(&t.def.name))
            })
            .cloned()
            .collect()
    }

    /// Runs `tool` from `tools` with `workspace` as its directory.
    pub(crate) async fn run(
        &self,
        tools: &[SessionTool],
        workspace: &Path,
        tool: &str,
        input: &Value,
    ) -> ToolResult {
        let result = run_tool(&self.app, tools, workspace, tool, input).await;
        self.metrics.record_tool_call(&result);
        result
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
        fuel_cap: None,
    };
    match plugin.call(tool, &input.to_string(), &options).await {
        Ok(outcome) => ToolResult {
            content: Ok(outcome.output),
            fuel: Some(outcome.fuel_consumed),
            duration_ms: outcome.duration_us / 1000,
        },
        Err(failure) => ToolResult {
            content: Err(ToolError {
                kind: failure.kind,
                message: failure.message,
            }),
            fuel: Some(failure.fuel_consumed),
            duration_ms: failure.duration_us / 1000,
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
    pub(crate) tools: Vec<SessionTool>,
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
        Box::pin(self.toolbox.run(&self.tools, &self.workspace, tool, input))
    }
}
