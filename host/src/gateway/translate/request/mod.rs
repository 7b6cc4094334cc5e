//! A request in one shape, rewritten for a provider of the other.
//!
//! The caller's body is read into typed structs (so an unexpected shape is
//! a clear 400, not a silently wrong request) and the provider's body is
//! built from them. What maps: the system prompt; messages with text,
//! images (base64 or URL), tool calls and tool results; tools with their
//! JSON schema; `tool_choice` (and parallel tool use); `max_tokens`,
//! `temperature`, `top_p`, stop sequences; `stream` — an OpenAI-compatible
//! provider is always asked for `stream_options.include_usage`, since the
//! usage chunk is what the gateway meters.
//!
//! Two structural differences: OpenAI puts each tool result in a message
//! of its own (`role: tool`) while Anthropic puts them in the next user
//! message, so a user message's tool results become tool messages ahead of
//! its text ([`from_anthropic`]), and consecutive tool messages become one
//! user message ([`from_openai`]); and Anthropic requires `max_tokens`, so
//! a request without it asks for the gateway's default.

mod from_anthropic;
mod from_openai;

use serde::Deserialize;
use serde_json::{Map, Value, json};

pub(crate) use from_anthropic::anthropic_to_openai;
pub(crate) use from_openai::openai_to_anthropic;

/// A request as the provider wants it.
pub(crate) struct Translated {
    /// The provider's body.
    pub body: Vec<u8>,
    /// Whether the caller (OpenAI-shaped) asked for a usage chunk.
    pub include_usage: bool,
}

/// A tool call of an assistant message (also a unary completion's).
#[derive(Deserialize)]
pub(crate) struct OpenAiToolCall {
    #[serde(default)]
    pub id: String,
    pub function: FunctionCall,
}

/// The function of a tool call.
#[derive(Deserialize)]
pub(crate) struct FunctionCall {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub arguments: String,
}

/// A tool call's JSON arguments as an input object (a model's broken JSON
/// is handed on as a string rather than refused).
pub(crate) fn tool_input(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    serde_json::from_str(arguments).unwrap_or_else(|_| json!({ "arguments": arguments }))
}

fn insert_some(out: &mut Map<String, Value>, key: &str, value: Option<f64>) {
    if let Some(value) = value {
        out.insert(key.into(), json!(value));
    }
}
