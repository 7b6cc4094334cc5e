//! The session protocol's events, typed: one [`Event`] variant per event
//! type of `PROTOCOL.md`, and the [`Envelope`] every event travels in.
//!
//! The serde shapes *are* the wire format: an envelope serializes to
//!
//! ```json
//! {"type": "text", "data": {"part": {"type": "text", "id": "…", "text": "Hel"}},
//!  "source": "karta", "session_id": "ses_…", "timestamp": "…", "seq": 17}
//! ```
//!
//! so the SSE writer, the event log, the transcript and every adapter map
//! from these types, and nothing decides what an event is by looking at JSON
//! text. Statuses, error codes and tool error kinds are enums for the same
//! reason.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Decision;

/// Token counts, split the one way every part of Karta counts them: the
/// gateway while a model answer streams through, the harnesses for their
/// steps, the `done` event and the transcript for the turn.
///
/// `input_tokens` are the input tokens read at full price (Anthropic's
/// `input_tokens`; OpenAI's `prompt_tokens` minus the cached ones);
/// cache reads and writes are counted apart because they are priced apart.
/// On the wire it also carries `total_tokens`, the sum of all four.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "UsageWire", into = "UsageWire")]
pub struct Usage {
    /// Input tokens read without a cache.
    pub input_tokens: u64,
    /// Tokens the model wrote (reasoning included).
    pub output_tokens: u64,
    /// Input tokens read from the provider's prompt cache.
    pub cache_read_tokens: u64,
    /// Input tokens written to the provider's prompt cache.
    pub cache_write_tokens: u64,
}

impl Usage {
    /// Every token: input (cached or not) and output.
    pub fn total(&self) -> u64 {
        self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens
    }

    /// The prompt: every input token, cached or not (what a provider's
    /// long-context price tier is decided by).
    pub fn prompt_tokens(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.cache_read_tokens)
            .saturating_add(self.cache_write_tokens)
    }

    /// Adds `other` to `self`.
    pub fn add(&mut self, other: Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cache_read_tokens += other.cache_read_tokens;
        self.cache_write_tokens += other.cache_write_tokens;
    }

    /// Whether nothing was counted.
    pub fn is_zero(&self) -> bool {
        self.total() == 0
    }
}

#[derive(Serialize, Deserialize)]
struct UsageWire {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_read_tokens: u64,
    #[serde(default)]
    cache_write_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
}

impl From<UsageWire> for Usage {
    fn from(wire: UsageWire) -> Self {
        Self {
            input_tokens: wire.input_tokens,
            output_tokens: wire.output_tokens,
            cache_read_tokens: wire.cache_read_tokens,
            cache_write_tokens: wire.cache_write_tokens,
        }
    }
}

impl From<Usage> for UsageWire {
    fn from(usage: Usage) -> Self {
        Self {
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cache_read_tokens: usage.cache_read_tokens,
            cache_write_tokens: usage.cache_write_tokens,
            total_tokens: usage.total(),
        }
    }
}

/// Where a tool call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolStatus {
    /// Started.
    Running,
    /// Finished with output.
    Completed,
    /// Finished with an error.
    Error,
}

/// Why a tool call failed. The plugin runtime's kinds, plus the two a
/// harness adds: a person's denial and a failure of a tool that did not run
/// in wasm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolErrorKind {
    /// The call used its whole fuel budget.
    OutOfFuel,
    /// The guest tried to grow memory past its cap.
    OutOfMemory,
    /// The wall-clock deadline passed.
    Timeout,
    /// The guest trapped (a panic, a stack overflow, an out-of-bounds access).
    Trap,
    /// The input was rejected (not JSON, or the tool's own validation).
    InvalidInput,
    /// The tool reported a failure of its own.
    ToolError,
    /// The guest reached for something its grant does not allow.
    AccessDenied,
    /// The output is larger than the grant allows.
    OutputTooLarge,
    /// The output is not JSON.
    InvalidOutput,
    /// No such tool.
    UnknownTool,
    /// Every instance slot is busy; try again.
    Busy,
    /// The host failed.
    Internal,
    /// A person denied the call (or did not answer in time).
    Denied,
}

impl ToolErrorKind {
    /// The kind as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OutOfFuel => "out_of_fuel",
            Self::OutOfMemory => "out_of_memory",
            Self::Timeout => "timeout",
            Self::Trap => "trap",
            Self::InvalidInput => "invalid_input",
            Self::ToolError => "tool_error",
            Self::AccessDenied => "access_denied",
            Self::OutputTooLarge => "output_too_large",
            Self::InvalidOutput => "invalid_output",
            Self::UnknownTool => "unknown_tool",
            Self::Busy => "busy",
            Self::Internal => "internal",
            Self::Denied => "denied",
        }
    }
}

impl std::fmt::Display for ToolErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed tool call: `{kind, message}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolError {
    /// What kind of failure.
    pub kind: ToolErrorKind,
    /// The details, for the model and for people.
    pub message: String,
}

/// Why a turn failed: the `code` of an `error` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The model (or the provider) answered with an error.
    ModelError,
    /// The model could not be reached.
    ModelUnreachable,
    /// The harness process failed or broke its protocol.
    HarnessError,
    /// The harness binary could not be started.
    HarnessUnavailable,
    /// The app could not be given to the harness (its files).
    AppError,
    /// The host stopped while the turn ran.
    Interrupted,
    /// The event log could not be written.
    StorageUnavailable,
    /// The session was deleted while the stream was open.
    SessionDeleted,
    /// A budget of the session's org, project or end user ran out during
    /// the turn (the gateway refused a model call it could not pay for).
    BudgetExhausted,
    /// The org's own provider key (BYOK) was rejected by the provider.
    ByokKeyRejected,
    /// The host failed in a way it does not foresee (an event it could not
    /// encode); its log says more.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ModelError => "model_error",
            Self::ModelUnreachable => "model_unreachable",
            Self::HarnessError => "harness_error",
            Self::HarnessUnavailable => "harness_unavailable",
            Self::AppError => "app_error",
            Self::Interrupted => "interrupted",
            Self::StorageUnavailable => "storage_unavailable",
            Self::SessionDeleted => "session_deleted",
            Self::BudgetExhausted => "budget_exhausted",
            Self::ByokKeyRejected => "byok_key_rejected",
            Self::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnStatus {
    /// The model finished.
    Completed,
    /// A person denied a tool call (the model heard why and went on).
    Denied,
    /// The turn was cancelled.
    Cancelled,
    /// The turn failed (its last event is an `error`).
    Error,
}

impl TurnStatus {
    /// The status as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Denied => "denied",
            Self::Cancelled => "cancelled",
            Self::Error => "error",
        }
    }
}

/// A text part delta: `{"type": "text", "id", "text"}`. Deltas with the
/// same id concatenate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "text")]
pub struct TextPart {
    /// The part id.
    pub id: String,
    /// The delta.
    pub text: String,
}

/// A reasoning part delta: `{"type": "reasoning", "id", "text"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "reasoning")]
pub struct ReasoningPart {
    /// The part id.
    pub id: String,
    /// The delta.
    pub text: String,
}

/// A tool part: `{"type": "tool", "id", "tool", "state"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "tool")]
pub struct ToolPart {
    /// The part id (the model's tool-use id).
    pub id: String,
    /// The tool's name.
    pub tool: String,
    /// Where the call is.
    pub state: ToolState,
}

/// The state of a tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolState {
    /// Running, completed or failed.
    pub status: ToolStatus,
    /// The input.
    pub input: Value,
    /// The output, when completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The error, when failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ToolError>,
}

/// `text` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextData {
    /// The delta.
    pub part: TextPart,
}

/// `reasoning` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasoningData {
    /// The delta.
    pub part: ReasoningPart,
}

/// `tool_use` data: the part, and what the host measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolUseData {
    /// The call.
    pub part: ToolPart,
    /// Fuel used, when it ran in wasm and finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Wall-clock time, when finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// What the call cost (its fuel at the host's price), integer
    /// micro-units, when the host bills it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_micros: Option<u64>,
    /// CPU time the harness's jail used while a tool of the harness's own
    /// (Bash, Read, an app's stdio MCP server …) ran, ms: what such a tool
    /// costs, as fuel is for a WebAssembly one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
}

/// `step_start` data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepStartData {
    /// 0-based step number within the turn.
    pub step_index: u32,
}

/// `step_finish` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepFinishData {
    /// 0-based step number within the turn.
    pub step_index: u32,
    /// Tokens of this step.
    pub usage: Usage,
    /// Why the model stopped (`end_turn`, `tool_use`, …), as it said.
    pub stop_reason: String,
}

/// What an `input_required` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// May this tool call run?
    ToolPermission,
}

/// `input_required` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputRequiredData {
    /// Answer with `PUT …/inputs/{request_id}`.
    pub request_id: String,
    /// What is asked.
    pub kind: InputKind,
    /// The tool that wants to run.
    pub tool: String,
    /// Its input.
    pub input: Value,
    /// A sentence for the person.
    pub message: String,
    /// The answers a person may give.
    pub options: Vec<Decision>,
}

/// `error` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorData {
    /// A stable code.
    pub code: ErrorCode,
    /// The details.
    pub message: String,
}

/// `done` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoneData {
    /// The id of the assistant message.
    pub message_id: String,
    /// Tokens of the whole turn.
    pub usage: Usage,
    /// `completed`, `denied` or `cancelled`.
    pub status: TurnStatus,
    /// What the turn cost (its model calls and tool calls at the host's
    /// prices), integer micro-units, when the host bills it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_micros: Option<u64>,
    /// CPU time the harness's jail used during the turn (the harness
    /// itself and every process it ran), ms; absent for the builtin
    /// harness or without a CPU accounting cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
}

/// One thing that happened in a session: the protocol's `type` and `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum Event {
    /// A model step begins.
    StepStart(StepStartData),
    /// A model step ended.
    StepFinish(StepFinishData),
    /// Text from the model.
    Text(TextData),
    /// Reasoning from the model.
    Reasoning(ReasoningData),
    /// A tool call started or finished.
    ToolUse(ToolUseData),
    /// The turn waits for a person.
    InputRequired(InputRequiredData),
    /// The turn failed; it is over.
    Error(ErrorData),
    /// The turn ended.
    Done(DoneData),
    /// Harness housekeeping, hidden from end users by default.
    System(Value),
}

impl Event {
    /// A text delta.
    pub fn text(part_id: impl Into<String>, text: impl Into<String>) -> Self {
        Self::Text(TextData {
            part: TextPart {
                id: part_id.into(),
                text: text.into(),
            },
        })
    }

    /// A reasoning delta.
    pub fn reasoning(part_id: impl Into<String>, text: impl Into<String>) -> Self {
        Self::Reasoning(ReasoningData {
            part: ReasoningPart {
                id: part_id.into(),
                text: text.into(),
            },
        })
    }

    /// A tool call that has started.
    pub fn tool_running(part_id: impl Into<String>, tool: impl Into<String>, input: Value) -> Self {
        Self::ToolUse(ToolUseData {
            part: ToolPart {
                id: part_id.into(),
                tool: tool.into(),
                state: ToolState {
                    status: ToolStatus::Running,
                    input,
                    output: None,
                    error: None,
                },
            },
            fuel: None,
            duration_ms: None,
            cost_micros: None,
            cpu_ms: None,
        })
    }

    /// A tool call that has finished: with its output, or failed.
    pub fn tool_finished(
        part_id: impl Into<String>,
        tool: impl Into<String>,
        input: Value,
        result: Result<Value, ToolError>,
        fuel: Option<u64>,
        duration_ms: Option<u64>,
    ) -> Self {
        let (status, output, error) = match result {
            Ok(output) => (ToolStatus::Completed, Some(output), None),
            Err(error) => (ToolStatus::Error, None, Some(error)),
        };
        Self::ToolUse(ToolUseData {
            part: ToolPart {
                id: part_id.into(),
                tool: tool.into(),
                state: ToolState {
                    status,
                    input,
                    output,
                    error,
                },
            },
            fuel,
            duration_ms,
            cost_micros: None,
            cpu_ms: None,
        })
    }

    /// A step start.
    pub fn step_start(step_index: u32) -> Self {
        Self::StepStart(StepStartData { step_index })
    }

    /// A step end.
    pub fn step_finish(step_index: u32, usage: Usage, stop_reason: impl Into<String>) -> Self {
        Self::StepFinish(StepFinishData {
            step_index,
            usage,
            stop_reason: stop_reason.into(),
        })
    }

    /// A failure that ends the turn.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error(ErrorData {
            code,
            message: message.into(),
        })
    }

    /// The end of a turn.
    pub fn done(message_id: impl Into<String>, usage: Usage, status: TurnStatus) -> Self {
        Self::Done(DoneData {
            message_id: message_id.into(),
            usage,
            status,
            cost_micros: None,
            cpu_ms: None,
        })
    }

    /// The protocol event `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::StepStart(_) => "step_start",
            Self::StepFinish(_) => "step_finish",
            Self::Text(_) => "text",
            Self::Reasoning(_) => "reasoning",
            Self::ToolUse(_) => "tool_use",
            Self::InputRequired(_) => "input_required",
            Self::Error(_) => "error",
            Self::Done(_) => "done",
            Self::System(_) => "system",
        }
    }

    /// Whether this event ends a turn (`done`, `error`).
    pub fn ends_turn(&self) -> bool {
        matches!(self, Self::Done(_) | Self::Error(_))
    }

    /// Whether a stream of the turn ends after this event: at the turn's
    /// end, and at an `input_required` (the turn is paused; the answer's
    /// `PUT` returns the continuation).
    pub fn ends_stream(&self) -> bool {
        self.ends_turn() || matches!(self, Self::InputRequired(_))
    }
}

/// Who wrote an event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// This host (every event today).
    #[default]
    Karta,
}

/// An event as it is logged and streamed: its place in the session's log
/// and when it happened. `raw` is the harness's own payload, when it is
/// worth keeping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The event (`type` and `data` on the wire).
    #[serde(flatten)]
    pub event: Event,
    /// Who wrote it.
    pub source: Source,
    /// The session.
    pub session_id: String,
    /// RFC 3339, milliseconds.
    pub timestamp: String,
    /// Rises by one per session, never repeats.
    pub seq: u64,
    /// The harness-native payload, optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<Value>,
}

/// One item of a turn's stream, or of an approval's continuation, as the
/// wire carries it: an event of the log, numbered, or the unnumbered
/// `error` that ends a stream the log cannot go on with (the log could not
/// be written, the session was deleted): `{"type": "error", "data": {code,
/// message}}`, an [`Event::Error`] without an envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StreamItem {
    /// An event of the log.
    Logged(Envelope),
    /// The failure that ends the stream, not in the log.
    Unlogged(Event),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stream_items_read_back_logged_events_and_the_unlogged_error() {
        let logged_error = Envelope {
            event: Event::Error(ErrorData {
                code: ErrorCode::ModelError,
                message: "refused".into(),
            }),
            source: Source::Karta,
            session_id: "ses_1".into(),
            timestamp: "2026-11-30T00:00:00.000Z".into(),
            seq: 4,
            raw: None,
        };
        let failure = Event::Error(ErrorData {
            code: ErrorCode::StorageUnavailable,
            message: "the disk is full".into(),
        });
        let items = vec![
            StreamItem::Logged(logged_error),
            StreamItem::Unlogged(failure),
        ];
        let wire = serde_json::to_value(&items).expect("serialize");
        assert_eq!(
            wire[1],
            json!({"type": "error", "data": {"code": "storage_unavailable", "message": "the disk is full"}})
        );
        assert_eq!(wire[0]["seq"], 4);
        let read: Vec<StreamItem> = serde_json::from_value(wire).expect("read back");
        assert_eq!(read, items);
    }

    #[test]
    fn envelopes_have_the_protocol_shape_and_read_back() {
        let envelope = Envelope {
            event: Event::tool_finished(
                "t1",
                "convert",
                json!({"value": 1}),
                Err(ToolError {
                    kind: ToolErrorKind::OutOfFuel,
                    message: "spent".into(),
                }),
                Some(7),
                Some(2),
            ),
            source: Source::Karta,
            session_id: "ses_1".into(),
            timestamp: "2026-11-30T00:00:00.000Z".into(),
            seq: 3,
            raw: None,
        };
        let wire = serde_json::to_value(&envelope).expect("serialize");
        assert_eq!(
            wire,
            json!({
                "type": "tool_use", "source": "karta", "session_id": "ses_1",
                "timestamp": "2026-11-30T00:00:00.000Z", "seq": 3,
                "data": {
                    "part": {"type": "tool", "id": "t1", "tool": "convert", "state": {
                        "status": "error", "input": {"value": 1},
                        "error": {"kind": "out_of_fuel", "message": "spent"},
                    }},
                    "fuel": 7, "duration_ms": 2,
                },
            })
        );
        let back: Envelope = serde_json::from_value(wire).expect("deserialize");
        assert_eq!(back, envelope);
    }

    #[test]
    fn usage_carries_its_total_and_every_event_round_trips() {
        let usage = Usage {
            input_tokens: 1,
            output_tokens: 2,
            cache_read_tokens: 3,
            cache_write_tokens: 4,
        };
        let events = [
            Event::step_start(0),
            Event::step_finish(0, usage, "end_turn"),
            Event::text("p", "Hé"),
            Event::reasoning("r", "hmm"),
            Event::tool_running("t", "calc", json!({})),
            Event::InputRequired(InputRequiredData {
                request_id: "req_1".into(),
                kind: InputKind::ToolPermission,
                tool: "calc".into(),
                input: json!({"x": 1}),
                message: "Allow?".into(),
                options: vec![
                    Decision::ApproveOnce,
                    Decision::ApproveSession,
                    Decision::Deny,
                ],
            }),
            Event::error(ErrorCode::Interrupted, "stopped"),
            Event::done("msg_1", usage, TurnStatus::Denied),
            Event::System(json!({"harness": "claude_code"})),
        ];
        for event in events {
            let wire = serde_json::to_value(&event).expect("serialize");
            assert_eq!(wire["type"], event.kind());
            let back: Event = serde_json::from_value(wire).expect("deserialize");
            assert_eq!(back, event);
        }
        let wire = serde_json::to_value(usage).expect("usage");
        assert_eq!(wire["total_tokens"], 10);
        assert_eq!(
            serde_json::from_value::<Usage>(json!({"input_tokens": 5})).expect("old shape"),
            Usage {
                input_tokens: 5,
                ..Usage::default()
            }
        );
    }
}
