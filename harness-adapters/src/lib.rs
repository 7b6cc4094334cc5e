//! # karta-harness — agent harnesses behind one trait
//!
//! A *harness* runs an agent turn: it talks to the model, runs tools, asks for
//! approvals, and reports what happens as a stream of [`HarnessEvent`]s. The
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

pub mod builtin;
mod events;

use std::future::Future;
use std::pin::Pin;

pub use events::{HarnessEvent, ToolStatus, Usage};
use serde::{Deserialize, Serialize};
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
    /// The output (JSON) or the error message.
    pub content: Result<serde_json::Value, ToolFailure>,
    /// Fuel the call used, when it ran in wasm.
    pub fuel: Option<u64>,
    /// Wall-clock time of the call.
    pub duration_ms: u64,
}

/// A tool call that failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolFailure {
    /// The error kind (`out_of_fuel`, `access_denied`, …).
    pub kind: String,
    /// The message.
    pub message: String,
}

/// A person's answer to an approval request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Run this call.
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
}

/// Everything a harness needs for one turn.
pub struct TurnContext<'a> {
    /// The host side: tools and approvals.
    pub host: &'a dyn TurnHost,
    /// Where events go, in order. A closed channel means nobody listens any
    /// more; the turn goes on regardless.
    pub events: mpsc::UnboundedSender<HarnessEvent>,
    /// Cancelled when the turn must stop (cancel route, session delete).
    pub cancel: CancellationToken,
}

impl TurnContext<'_> {
    /// Sends an event (ignoring a closed channel: the host logs events, and a
    /// turn must not fail because a listener left).
    pub fn emit(&self, event: HarnessEvent) {
        let _ = self.events.send(event);
    }
}

/// The input of one turn.
#[derive(Debug, Clone)]
pub struct TurnRequest {
    /// The system prompt: instructions, agent prompt, skill index.
    pub system: String,
    /// The conversation so far, as Anthropic Messages `messages` entries.
    pub history: Vec<serde_json::Value>,
    /// The new user message.
    pub text: String,
    /// Ask the model to think first.
    pub thinking: bool,
    /// The model name to ask for (from the agent, or the default).
    pub model: String,
}

/// How a turn ended.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnOutcome {
    /// The messages to append to the history (the user message, the
    /// assistant's and the tool results), in Anthropic Messages shape.
    pub new_messages: Vec<serde_json::Value>,
    /// The final assistant text of the turn.
    pub text: String,
    /// Tokens used by the turn.
    pub usage: Usage,
    /// `completed`, `denied`, `cancelled` or `error`.
    pub status: String,
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
}
