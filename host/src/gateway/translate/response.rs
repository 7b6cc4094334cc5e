//! A provider's whole (unary) answer, or its error, in the caller's shape.
//!
//! A unary answer is one JSON document, so it is read whole (it was metered
//! whole too, in the provider's shape, before this runs). Usage is carried
//! over with each API's convention: OpenAI's `prompt_tokens` include the
//! cached input, Anthropic's `input_tokens` do not — the same split
//! [`karta_harness::model_stream`] meters by.

use karta_harness::Usage;
use karta_harness::model_stream::{AnthropicUsage, OpenAiUsage};
use serde::Deserialize;
use serde_json::{Value, json};

use super::request::{OpenAiToolCall, tool_input};

/// A usage as Anthropic reports it.
pub(crate) fn anthropic_usage(usage: Usage) -> Value {
    json!({
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
    })
}

/// A usage as OpenAI reports it (cache writes are plain input there).
pub(crate) fn openai_usage(usage: Usage) -> Value {
    let prompt = usage.prompt_tokens();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": usage.output_tokens,
        "total_tokens": prompt + usage.output_tokens,
        "prompt_tokens_details": { "cached_tokens": usage.cache_read_tokens },
    })
}

#[derive(Deserialize)]
struct Completion {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<OpenAiUsage>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    message: Option<ChoiceMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<OpenAiToolCall>,
}

/// An OpenAI completion as an Anthropic message.
pub(crate) fn openai_to_anthropic(body: &[u8]) -> Result<Value, String> {
    let completion: Completion = serde_json::from_slice(body)
        .map_err(|e| format!("the provider's answer is not a chat completion: {e}"))?;
    let choice = completion.choices.into_iter().next();
    let finish = choice
        .as_ref()
        .and_then(|c| c.finish_reason.clone())
        .unwrap_or_default();
    let mut content = Vec::new();
    if let Some(message) = choice.and_then(|c| c.message) {
        if let Some(text) = message.content.filter(|t| !t.is_empty()) {
            content.push(json!({ "type": "text", "text": text }));
        }
        for call in message.tool_calls {
            content.push(json!({
                "type": "tool_use", "id": call.id, "name": call.function.name,
                "input": tool_input(&call.function.arguments),
            }));
        }
    }
    let usage = completion.usage.unwrap_or_default().to_usage();
    Ok(json!({
        "id": completion.id,
        "type": "message",
        "role": "assistant",
        "model": completion.model,
        "content": content,
        "stop_reason": super::stop_reason(&finish),
        "stop_sequence": null,
        "usage": anthropic_usage(usage),
    }))
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    content: Vec<Block>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: AnthropicUsage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    Thinking {
        thinking: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    #[serde(other)]
    Other,
}

/// An Anthropic message as an OpenAI completion.
pub(crate) fn anthropic_to_openai(body: &[u8]) -> Result<Value, String> {
    let message: Message = serde_json::from_slice(body)
        .map_err(|e| format!("the provider's answer is not a message: {e}"))?;
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    for block in message.content {
        match block {
            Block::Text { text: t } => text.push_str(&t),
            Block::Thinking { thinking } => reasoning.push_str(&thinking),
            Block::ToolUse { id, name, input } => tool_calls.push(json!({
                "id": id, "type": "function",
                "function": { "name": name, "arguments": input.to_string() },
            })),
            Block::Other => {}
        }
    }
    let mut out = json!({
        "role": "assistant",
        "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { json!(text) },
    });
    if !tool_calls.is_empty() {
        out["tool_calls"] = Value::Array(tool_calls);
    }
    if !reasoning.is_empty() {
        out["reasoning_content"] = json!(reasoning);
    }
    let mut usage = Usage::default();
    message.usage.update(&mut usage);
    let finish = super::finish_reason(message.stop_reason.as_deref().unwrap_or("end_turn"));
    Ok(json!({
        "id": message.id,
        "object": "chat.completion",
        "created": unix_now(),
        "model": message.model,
        "choices": [{ "index": 0, "message": out, "finish_reason": finish }],
        "usage": openai_usage(usage),
    }))
}

/// What a provider's error body says (`error.message` in both shapes).
pub(crate) fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Carrier {
        error: Detail,
    }
    #[derive(Deserialize)]
    struct Detail {
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Carrier>(body) {
        Ok(carrier) if !carrier.error.message.is_empty() => carrier.error.message,
        _ => String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
    }
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
