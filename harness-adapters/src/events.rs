//! The events a harness emits, one variant per protocol event type.
//!
//! The host wraps each in the protocol's envelope (`type`, `source`,
//! `session_id`, `timestamp`, `seq`, `data`); [`HarnessEvent::kind`] is the
//! `type` and [`HarnessEvent::data`] the `data`.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Token counts, as providers report them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens read.
    pub input_tokens: u64,
    /// Tokens written.
    pub output_tokens: u64,
}

impl Usage {
    /// Adds `other` to `self`.
    pub fn add(&mut self, other: Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
    }

    /// The protocol's usage object, with the total.
    pub fn to_json(self) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
        })
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

/// One thing that happened in a turn.
#[derive(Debug, Clone, PartialEq)]
pub enum HarnessEvent {
    /// A model step begins.
    StepStart {
        /// 0-based step number within the turn.
        step_index: u32,
    },
    /// A model step ended.
    StepFinish {
        /// 0-based step number within the turn.
        step_index: u32,
        /// Tokens of this step.
        usage: Usage,
        /// Why the model stopped (`end_turn`, `tool_use`, …).
        stop_reason: String,
    },
    /// Text from the model; parts with the same id concatenate.
    Text {
        /// The part id.
        part_id: String,
        /// The delta.
        text: String,
    },
    /// Reasoning from the model.
    Reasoning {
        /// The part id.
        part_id: String,
        /// The delta.
        text: String,
    },
    /// A tool call started or finished.
    ToolUse {
        /// The part id (the model's tool-use id).
        part_id: String,
        /// The tool's name.
        tool: String,
        /// Where the call is.
        status: ToolStatus,
        /// The input.
        input: Value,
        /// The output, when completed.
        output: Option<Value>,
        /// The error, when failed: `{kind, message}`.
        error: Option<Value>,
        /// Fuel used, when it ran in wasm and finished.
        fuel: Option<u64>,
        /// Wall-clock time, when finished.
        duration_ms: Option<u64>,
    },
    /// The turn waits for a person.
    InputRequired {
        /// Answer with `PUT …/inputs/{request_id}`.
        request_id: String,
        /// The tool that wants to run.
        tool: String,
        /// Its input.
        input: Value,
        /// A sentence for the person.
        message: String,
    },
    /// Something failed; the turn ends.
    Error {
        /// A stable code (`model_error`, `cancelled`, …).
        code: String,
        /// The details.
        message: String,
    },
    /// The turn ended.
    Done {
        /// The id of the assistant message.
        message_id: String,
        /// Tokens of the whole turn.
        usage: Usage,
        /// `completed`, `denied` or `cancelled`.
        status: String,
    },
    /// Harness housekeeping, hidden from end users by default.
    System {
        /// The payload.
        data: Value,
    },
}

impl HarnessEvent {
    /// A tool call that has started.
    pub fn tool_running(part_id: impl Into<String>, tool: impl Into<String>, input: Value) -> Self {
        Self::ToolUse {
            part_id: part_id.into(),
            tool: tool.into(),
            status: ToolStatus::Running,
            input,
            output: None,
            error: None,
            fuel: None,
            duration_ms: None,
        }
    }

    /// The protocol event `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::StepStart { .. } => "step_start",
            Self::StepFinish { .. } => "step_finish",
            Self::Text { .. } => "text",
            Self::Reasoning { .. } => "reasoning",
            Self::ToolUse { .. } => "tool_use",
            Self::InputRequired { .. } => "input_required",
            Self::Error { .. } => "error",
            Self::Done { .. } => "done",
            Self::System { .. } => "system",
        }
    }

    /// Whether this event ends a turn.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Done { .. } | Self::Error { .. })
    }

    /// The protocol event `data`.
    pub fn data(&self) -> Value {
        match self {
            Self::StepStart { step_index } => json!({ "step_index": step_index }),
            Self::StepFinish {
                step_index,
                usage,
                stop_reason,
            } => json!({
                "step_index": step_index,
                "usage": usage.to_json(),
                "stop_reason": stop_reason,
            }),
            Self::Text { part_id, text } => {
                json!({ "part": { "id": part_id, "type": "text", "text": text } })
            }
            Self::Reasoning { part_id, text } => {
                json!({ "part": { "id": part_id, "type": "reasoning", "text": text } })
            }
            Self::ToolUse {
                part_id,
                tool,
                status,
                input,
                output,
                error,
                fuel,
                duration_ms,
            } => {
                let mut state = json!({ "status": status, "input": input });
                if let Some(output) = output {
                    state["output"] = output.clone();
                }
                if let Some(error) = error {
                    state["error"] = error.clone();
                }
                let mut data = json!({
                    "part": { "id": part_id, "type": "tool", "tool": tool, "state": state }
                });
                if let Some(fuel) = fuel {
                    data["fuel"] = json!(fuel);
                }
                if let Some(ms) = duration_ms {
                    data["duration_ms"] = json!(ms);
                }
                data
            }
            Self::InputRequired {
                request_id,
                tool,
                input,
                message,
            } => json!({
                "request_id": request_id,
                "kind": "tool_permission",
                "tool": tool,
                "input": input,
                "message": message,
                "options": ["approve_once", "approve_session", "deny"],
            }),
            Self::Error { code, message } => json!({ "code": code, "message": message }),
            Self::Done {
                message_id,
                usage,
                status,
            } => json!({
                "message_id": message_id,
                "usage": usage.to_json(),
                "status": status,
            }),
            Self::System { data } => data.clone(),
        }
    }
}
