//! # karta-harness — agent harnesses behind one trait
//!
//! A *harness* runs an agent turn: it talks to the model, runs tools, asks for
//! approvals, and reports what happens as a stream of protocol [`Event`]s. The
//! host (`karta-host`) owns sessions, storage and the wire protocol; a harness
//! owns only the turn.
//!
//! - [`Harness`] is the trait every adapter implements.
//! - [`TurnContext`] is what the host gives a turn: where to send events, how
//!   to run a tool, how to ask for approval, and a cancellation token.
//! - [`builtin::BuiltinHarness`] is the native agent loop: it calls the model
//!   through the host's gateway (Anthropic Messages shape) and tools through
//!   the host's plugin runtime. It needs no Node and, with the offline model,
//!   no network.
//! - [`claude_code::ClaudeCodeHarness`] runs the real `claude` CLI, one
//!   process per live session, in stream-json mode.
//! - [`opencode::OpencodeHarness`] runs the real `opencode` binary as a
//!   headless server, one per live session.
//!
//! Process harnesses reach the model only through the host's gateway (their
//! base URL and key point there) and tools only through the host's MCP
//! server ([`SessionInfo::mcp_url`]); [`process`] starts and stops them.

pub mod builtin;
pub mod claude_code;
mod events;
pub mod http;
pub mod jail;
mod lines;
pub mod model_stream;
pub mod opencode;
pub mod process;
pub mod safe_fs;
pub mod setup_layer;
mod slots;
pub mod sse;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

pub use events::{
    DoneData, Envelope, ErrorCode, ErrorData, Event, InputKind, InputRequiredData, ReasoningData,
    ReasoningPart, Source, StepFinishData, StepStartData, StreamItem, TextData, TextPart,
    ToolError, ToolErrorKind, ToolPart, ToolState, ToolStatus, ToolUseData, TurnStatus, Usage,
};
use serde::{Deserialize, Serialize};
pub use setup_layer::SetupLayer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A boxed future, for object-safe async trait methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One tool as the model sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDef {
    /// The tool's name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of its input.
    pub input_schema: serde_json::Value,
}

/// What a tool call produced, as the harness reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    /// The output (JSON) or the error.
    pub content: Result<serde_json::Value, ToolError>,
    /// Fuel the call used, when it ran in wasm.
    pub fuel: Option<u64>,
    /// Wall-clock time of the call.
    pub duration_ms: u64,
    /// What the call cost, integer micro-units, when the host bills it.
    pub cost_micros: Option<u64>,
}

impl ToolResult {
    /// A call that failed before anything ran.
    pub fn failed(kind: ToolErrorKind, message: impl Into<String>) -> Self {
        Self {
            content: Err(ToolError {
                kind,
                message: message.into(),
            }),
            fuel: None,
            duration_ms: 0,
            cost_micros: None,
        }
    }

    /// The finished `tool_use` event of this call.
    pub fn event(
        &self,
        part_id: impl Into<String>,
        tool: impl Into<String>,
        input: serde_json::Value,
    ) -> Event {
        let mut event = Event::tool_finished(
            part_id,
            tool,
            input,
            self.content.clone(),
            self.fuel,
            Some(self.duration_ms),
        );
        if let Event::ToolUse(data) = &mut event {
            data.cost_micros = self.cost_micros;
        }
        event
    }
}

/// A person's answer to an approval request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Run this call. (`allow` is accepted as an old name of it.)
    #[serde(alias = "allow")]
    ApproveOnce,
    /// Run this call and every later call of the same tool in this session.
    ApproveSession,
    /// Do not run it.
    Deny,
}

/// What the host does for a turn: tools and approvals.
pub trait TurnHost: Send + Sync {
    /// The tools the current agent may use.
    fn tools(&self) -> Vec<ToolDef>;

    /// Whether calling `tool` needs a person's approval first (already
    /// approved for the session counts as no).
    fn needs_approval(&self, tool: &str) -> bool;

    /// Asks for approval of one call; resolves with the decision, or `None`
    /// when the request timed out or the turn was cancelled.
    fn request_approval<'a>(
        &'a self,
        tool: &'a str,
        input: &'a serde_json::Value,
    ) -> BoxFuture<'a, Option<Decision>>;

    /// Runs a tool.
    fn call_tool<'a>(
        &'a self,
        tool: &'a str,
        input: &'a serde_json::Value,
    ) -> BoxFuture<'a, ToolResult>;

    /// How a tool call made by the harness process itself (over MCP) went:
    /// the latest run of `tool` with `input` in this session, taken so that
    /// it is reported once. A process harness learns fuel and timing here.
    fn take_tool_run(&self, _tool: &str, _input: &serde_json::Value) -> Option<ToolResult> {
        None
    }
}

/// An event as a harness emits it, with its native payload when that is
/// worth logging (the envelope's `raw`).
#[derive(Debug, Clone, PartialEq)]
pub struct Emitted {
    /// The event.
    pub event: Event,
    /// The harness's own payload.
    pub raw: Option<serde_json::Value>,
}

/// Everything a harness needs for one turn.
pub struct TurnContext<'a> {
    /// The host side: tools and approvals.
    pub host: &'a dyn TurnHost,
    /// Where events go, in order. A closed channel means nobody listens any
    /// more; the turn goes on regardless.
    pub events: mpsc::UnboundedSender<Emitted>,
    /// Cancelled when the turn must stop (cancel route, session delete).
    pub cancel: CancellationToken,
}

impl TurnContext<'_> {
    /// Sends an event (ignoring a closed channel: the host logs events, and a
    /// turn must not fail because a listener left).
    pub fn emit(&self, event: Event) {
        let _ = self.events.send(Emitted { event, raw: None });
    }

    /// Sends an event with the harness's native payload, kept in the log as
    /// the envelope's `raw`.
    pub fn emit_raw(&self, event: Event, raw: serde_json::Value) {
        let _ = self.events.send(Emitted {
            event,
            raw: Some(raw),
        });
    }

    /// Whether `tool` may run with `input`: at once when it needs no
    /// approval, else once a person approves. `Err` says why not (a denial,
    /// or no answer: a timed-out request or a cancelled turn).
    pub async fn approve(&self, tool: &str, input: &serde_json::Value) -> Result<(), &'static str> {
        if !self.host.needs_approval(tool) {
            return Ok(());
        }
        if self.cancel.is_cancelled() {
            // No question to a person for a turn that is over.
            return Err("the turn was cancelled");
        }
        let decision = tokio::select! {
            decision = self.host.request_approval(tool, input) => decision,
            () = self.cancel.cancelled() => None,
        };
        match decision {
            Some(Decision::ApproveOnce | Decision::ApproveSession) => Ok(()),
            Some(Decision::Deny) => Err("a person denied this tool call"),
            None => Err("the approval request timed out or the turn was cancelled"),
        }
    }
}

/// The input of one turn.
#[derive(Debug, Clone)]
pub struct TurnRequest {
    /// The system prompt: instructions, agent prompt, skill index.
    pub system: String,
    /// The conversation so far, as Anthropic Messages `messages` entries
    /// (empty for process harnesses, which keep their own).
    pub history: Vec<serde_json::Value>,
    /// The new user message.
    pub text: String,
    /// Ask the model to think first.
    pub thinking: bool,
    /// The model name to ask for (from the agent, or the default).
    pub model: String,
    /// The agent the turn runs as, if the session has switched to one.
    pub agent: Option<String>,
    /// The session the turn belongs to.
    pub session: SessionInfo,
}

/// What a harness knows about the session a turn belongs to: where its
/// process lives and the only two ways out it has.
#[derive(Debug, Clone, Default)]
pub struct SessionInfo {
    /// The session id.
    pub id: String,
    /// The session workspace, populated with the app's harness files; the
    /// process's working directory.
    pub workspace: PathBuf,
    /// The process's `HOME`: it holds the harness's own conversation
    /// state, for resuming. The host may give several sessions (those of
    /// one end user) the same `HOME`, some at once, so a harness names
    /// what is one session's in it after [`SessionInfo::id`].
    pub home: PathBuf,
    /// The model gateway's base URL (`http://127.0.0.1:N`).
    pub gateway_url: String,
    /// The session's gateway key: the gateway meters the turn to it.
    pub gateway_key: String,
    /// The session's MCP endpoint (its token is in the URL).
    pub mcp_url: String,
    /// Extra environment from the app's `karta.toml` `[env]`.
    pub env: BTreeMap<String, String>,
    /// Tools that need no approval (the harness may allow them up front).
    pub preapproved_tools: Vec<String>,
    /// What the harness may use of its own: its built-in tools, the app's
    /// MCP servers (issue 10). The default is none of them.
    pub access: HarnessAccess,
}

/// What a harness process may use besides Karta's MCP server: its own
/// acting tools (Claude Code's `Bash`, `Read`, …; OpenCode's `bash`,
/// `read`, …), which work on the workspace inside the jail, and the app's
/// own MCP servers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HarnessAccess {
    /// The harness's own acting tools are on (the operator may turn them
    /// off per host).
    pub builtin_tools: bool,
    /// Tools run without asking a person (`karta.jsonc`
    /// `runtime.permission_mode = "autonomous"`); otherwise the harness
    /// asks for what the app's settings do not allow, and the host asks a
    /// person.
    pub autonomous: bool,
    /// The app's own MCP servers (`.mcp.json`, OpenCode's `mcp`).
    pub mcp_servers: Vec<AppMcpServer>,
    /// The app's folder: bound read-only into the jail, where the app's
    /// stdio MCP servers run from (never from the writable workspace).
    pub app_root: Option<PathBuf>,
    /// Trees inside `app_root` the jail must not show (the data dir, when
    /// the host was started inside the app's folder): an empty tmpfs is
    /// mounted over them.
    pub hidden: Vec<PathBuf>,
    /// What the app's setup script installed: bound read-only into the
    /// jail, the process's environment pointing at it ([`SetupLayer`]).
    pub setup_layer: Option<SetupLayer>,
}

/// One of the app's MCP servers, as the harness should reach it.
#[derive(Debug, Clone, PartialEq)]
pub struct AppMcpServer {
    /// Its name in the app's config (`mcp__<name>__<tool>` in Claude Code).
    pub name: String,
    /// How it is reached.
    pub transport: McpTransport,
}

/// How an app's MCP server is reached.
#[derive(Debug, Clone, PartialEq)]
pub enum McpTransport {
    /// A command the harness starts (stdio), inside the jail, in the app's
    /// folder.
    Stdio {
        /// The program.
        command: String,
        /// Its arguments.
        args: Vec<String>,
        /// Extra environment.
        env: BTreeMap<String, String>,
    },
    /// An HTTP endpoint (e.g. the host serving the server compiled to a
    /// WebAssembly component).
    Http {
        /// Its URL.
        url: String,
    },
}

impl AppMcpServer {
    /// The command line that runs a stdio server from `app_root`:
    /// `sh -c 'cd "$1" && shift && exec "$@"' sh <app_root> <command> <args…>`
    /// (a harness starts stdio servers in its own working directory, the
    /// writable workspace; the app's files are the read-only ones).
    pub fn stdio_in(app_root: &std::path::Path, command: &str, args: &[String]) -> Vec<String> {
        let mut line = vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            r#"cd "$1" && shift && exec "$@""#.to_owned(),
            "sh".to_owned(),
            app_root.display().to_string(),
            command.to_owned(),
        ];
        line.extend(args.iter().cloned());
        line
    }
}

/// How a turn ended.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnOutcome {
    /// The messages to append to the history (the user message, the
    /// assistant's and the tool results), in Anthropic Messages shape.
    pub new_messages: Vec<serde_json::Value>,
    /// The final assistant text of the turn.
    pub text: String,
    /// Tokens used by the turn, as the harness counted them.
    pub usage: Usage,
    /// How it ended.
    pub status: TurnStatus,
}

/// An agent harness.
pub trait Harness: Send + Sync {
    /// The harness's name (`builtin`, `claude_code`, `opencode`).
    fn name(&self) -> &'static str;

    /// Runs one turn to its end, emitting events on the way. It ends with a
    /// `done` or `error` event (the host adds one if it does not).
    fn run_turn<'a>(
        &'a self,
        request: TurnRequest,
        context: TurnContext<'a>,
    ) -> BoxFuture<'a, TurnOutcome>;

    /// Stops whatever the harness keeps for `session_id` (its process). The
    /// next turn of the session starts afresh (resuming where it can).
    fn end_session<'a>(&'a self, _session_id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    /// The process serving `session_id`, if one runs (for `doctor` and for
    /// measuring memory per session).
    fn process_id(&self, _session_id: &str) -> Option<u32> {
        None
    }

    /// Whether a process serves `session_id` (a turn holding it counts: it
    /// has or is starting one). Cheaper than [`Self::process_id`], which in
    /// a jail reads `/proc`; the host asks at the end of every turn.
    fn has_process(&self, session_id: &str) -> bool {
        self.process_id(session_id).is_some()
    }

    /// How many harness processes run (for metrics).
    fn process_count(&self) -> usize {
        0
    }

    /// Starts a process for a warm pool: `request` names a pool slot
    /// (its own id, workspace, `HOME` and credentials) instead of a
    /// session. It resolves once the process has finished its start-up
    /// (Claude Code answered `initialize`; OpenCode listens and has opened
    /// its conversation) and its warm-up: the start-up work the harness
    /// leaves to its first message, done ahead by requests that call no
    /// model, run no tool and add nothing to the conversation (Claude
    /// Code: its MCP connections settled; OpenCode: its per-directory
    /// bootstrap — providers, agents, MCP clients, tool registry). A
    /// process whose warm-up fails is not returned. `None`: the harness
    /// keeps no process to pool.
    fn prestart<'a>(
        &'a self,
        _request: TurnRequest,
    ) -> BoxFuture<'a, Option<Result<Prestarted, String>>> {
        Box::pin(async { None })
    }

    /// Makes a pooled process `session`'s own: the next turn of
    /// `session.id` runs on it. `session` is what the host made of the
    /// slot's workspace, `HOME` and credentials once they became the
    /// session's. Gives the process back when it is not this harness's or
    /// the session already has one.
    fn adopt(&self, prestarted: Prestarted, _session: &SessionInfo) -> Result<(), Prestarted> {
        Err(prestarted)
    }
}

/// A process a harness started for a warm pool, not yet any session's
/// ([`Harness::prestart`]).
pub struct Prestarted {
    process: Box<dyn std::any::Any + Send>,
    harness_pid: Option<u32>,
    warm_up: Option<std::time::Duration>,
    kill: fn(Box<dyn std::any::Any + Send>) -> BoxFuture<'static, ()>,
}

impl Prestarted {
    /// Wraps a harness's own process type.
    pub(crate) fn new<P: slots::SlotProcess>(process: P) -> Self {
        Self {
            harness_pid: process.harness_process().harness_pid(),
            warm_up: None,
            process: Box::new(process),
            kill: |any| {
                Box::pin(async move {
                    if let Ok(process) = any.downcast::<P>() {
                        process.into_harness_process().kill().await;
                    }
                })
            },
        }
    }

    /// Marks the process warmed up: its warm-up succeeded and took
    /// `took` ([`Harness::prestart`]).
    pub(crate) fn warmed_up(mut self, took: std::time::Duration) -> Self {
        self.warm_up = Some(took);
        self
    }

    /// The harness's own process id (in a jail, the jail's pid 1).
    pub fn harness_pid(&self) -> Option<u32> {
        self.harness_pid
    }

    /// How long its warm-up took, once it succeeded; `None`: not warmed up.
    pub fn warm_up(&self) -> Option<std::time::Duration> {
        self.warm_up
    }

    /// The harness's process, when it is a `P`.
    pub(crate) fn take<P: 'static>(self) -> Result<P, Self> {
        match self.process.downcast::<P>() {
            Ok(process) => Ok(*process),
            Err(process) => Err(Self { process, ..self }),
        }
    }

    /// Kills the process and everything it started, and reaps it.
    pub async fn kill(self) {
        (self.kill)(self.process).await;
    }
}

impl std::fmt::Debug for Prestarted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prestarted")
            .field("harness_pid", &self.harness_pid)
            .field("warm_up", &self.warm_up)
            .finish_non_exhaustive()
    }
}

/// A session under `base` with its workspace and `HOME` made, for the
/// adapters' unit tests.
#[cfg(test)]
pub(crate) fn test_session(base: &std::path::Path) -> SessionInfo {
    let session = SessionInfo {
        id: "s1".into(),
        workspace: base.join("workspaces/s1"),
        home: base.join("homes/s1"),
        gateway_url: "http://127.0.0.1:1".into(),
        gateway_key: "key".into(),
        mcp_url: "http://127.0.0.1:2/mcp/token".into(),
        ..SessionInfo::default()
    };
    std::fs::create_dir_all(&session.workspace).expect("mkdir");
    std::fs::create_dir_all(&session.home).expect("mkdir");
    session
}
