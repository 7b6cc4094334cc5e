//! The offline model's answers in each wire shape: Anthropic Messages
//! (a message, or its SSE event sequence) and OpenAI Chat Completions (a
//! completion, or its chunks), with the usage fields each provider sends.

use serde_json::{Value, json};

use super::offline;
use super::translate::response::{anthropic_usage, openai_usage};

fn anthropic_blocks(reply: &offline::Reply) -> Vec<Value> {
    let mut content = Vec::new();
    if let Some(thinking) = &reply.thinking {
        content.push(json!({ "type": "thinking", "thinking": thinking, "signature": "offline" }));
    }
    if let Some(text) = &reply.text {
        content.push(json!({ "type": "text", "text": text }));
    }
    for (id, name, input) in &reply.tool_calls {
        content.push(json!({ "type": "tool_use", "id": id, "name": name, "input": input }));
    }
    content
}

fn stop_reason(reply: &offline::Reply) -> &'static str {
    if reply.tool_calls.is_empty() {
        "end_turn"
    } else {
        "tool_use"
    }
}

pub(super) fn anthropic_message(reply: &offline::Reply, model: &str) -> Value {
    json!({
        "id": format!("msg_offline_{}", uuid::Uuid::new_v4().simple()),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": anthropic_blocks(reply),
        "stop_reason": stop_reason(reply),
        "stop_sequence": null,
        "usage": anthropic_usage(reply.usage()),
    })
}

/// The Anthropic SSE event sequence for a reply.
pub(super) fn anthropic_stream(
    reply: &offline::Reply,
    model: &str,
) -> Vec<(Option<&'static str>, Value)> {
    let mut message = anthropic_message(reply, model);
    message["content"] = json!([]);
    message["stop_reason"] = Value::Null;
    message["usage"]["output_tokens"] = json!(1);
    let mut events = vec![(
        Some("message_start"),
        json!({ "type": "message_start", "message": message }),
    )];
    for (index, block) in anthropic_blocks(reply).into_iter().enumerate() {
        let (start, deltas): (Value, Vec<Value>) = match block["type"].as_str() {
            Some("thinking") => (
                json!({ "type": "thinking", "thinking": "" }),
                offline::deltas(block["thinking"].as_str().unwrap_or_default())
                    .into_iter()
                    .map(|d| json!({ "type": "thinking_delta", "thinking": d }))
                    .chain([json!({ "type": "signature_delta", "signature": "offline" })])
                    .collect(),
            ),
            Some("text") => (
                json!({ "type": "text", "text": "" }),
                offline::deltas(block["text"].as_str().unwrap_or_default())
                    .into_iter()
                    .map(|d| json!({ "type": "text_delta", "text": d }))
                    .collect(),
            ),
            _ => (
                json!({ "type": "tool_use", "id": block["id"], "name": block["name"], "input": {} }),
                vec![
                    json!({ "type": "input_json_delta", "partial_json": block["input"].to_string() }),
                ],
            ),
        };
        events.push((
            Some("content_block_start"),
            json!({ "type": "content_block_start", "index": index, "content_block": start }),
        ));
        for delta in deltas {
            events.push((
                Some("content_block_delta"),
                json!({ "type": "content_block_delta", "index": index, "delta": delta }),
            ));
        }
        events.push((
            Some("content_block_stop"),
            json!({ "type": "content_block_stop", "index": index }),
        ));
    }
    events.push((
        Some("message_delta"),
        json!({
            "type": "message_delta",
            "delta": { "stop_reason": stop_reason(reply), "stop_sequence": null },
            "usage": anthropic_usage(reply.usage()),
        }),
    ));
    events.push((Some("message_stop"), json!({ "type": "message_stop" })));
    events
}

fn openai_tool_calls(reply: &offline::Reply) -> Vec<Value> {
    reply
        .tool_calls
        .iter()
        .enumerate()
        .map(|(index, (id, name, input))| {
            json!({
                "index": index, "id": id, "type": "function",
                "function": { "name": name, "arguments": input.to_string() },
            })
        })
        .collect()
}

fn finish_reason(reply: &offline::Reply) -> &'static str {
    if reply.tool_calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    }
}

pub(super) fn openai_completion(reply: &offline::Reply, model: &str) -> Value {
    let mut message = json!({ "role": "assistant", "content": reply.text });
    if !reply.tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(openai_tool_calls(reply));
    }
    if let Some(thinking) = &reply.thinking {
        message["reasoning_content"] = json!(thinking);
    }
    json!({
        "id": format!("chatcmpl-offline-{}", uuid::Uuid::new_v4().simple()),
        "object": "chat.completion",
        "created": unix_now(),
        "model": model,
        "choices": [{ "index": 0, "message": message, "finish_reason": finish_reason(reply) }],
        "usage": openai_usage(reply.usage()),
    })
}

pub(super) fn openai_stream(
    reply: &offline::Reply,
    model: &str,
    include_usage: bool,
) -> Vec<(Option<&'static str>, Value)> {
    let id = format!("chatcmpl-offline-{}", uuid::Uuid::new_v4().simple());
    let created = unix_now();
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
        })
    };
    let mut events = vec![(
        None,
        chunk(json!({ "role": "assistant", "content": "" }), Value::Null),
    )];
    if let Some(thinking) = &reply.thinking {
        for d in offline::deltas(thinking) {
            events.push((None, chunk(json!({ "reasoning_content": d }), Value::Null)));
        }
    }
    if let Some(text) = &reply.text {
        for d in offline::deltas(text) {
            events.push((None, chunk(json!({ "content": d }), Value::Null)));
        }
    }
    for call in openai_tool_calls(reply) {
        events.push((None, chunk(json!({ "tool_calls": [call] }), Value::Null)));
    }
    events.push((None, chunk(json!({}), json!(finish_reason(reply)))));
    if include_usage {
        let mut last = chunk(json!({}), Value::Null);
        last["choices"] = json!([]);
        last["usage"] = openai_usage(reply.usage());
        events.push((None, last));
    }
    events.push((None, Value::String("[DONE]".into())));
    events
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An SSE body from a list of `(event name, data)`; a string datum is sent
/// as it is (`[DONE]`). Returns the content type and the text.
/// The offline model's `reply` to a request of shape `kind`, as the
/// provider would send it: an SSE stream or one JSON body, with its
/// content type.
pub(super) fn answer(
    kind: super::UpstreamKind,
    streaming: bool,
    include_usage: bool,
    reply: &offline::Reply,
    model: &str,
) -> (&'static str, String) {
    use super::UpstreamKind;
    match (kind, streaming) {
        (UpstreamKind::Anthropic, true) => sse(anthropic_stream(reply, model)),
        (UpstreamKind::Anthropic, false) => json(&anthropic_message(reply, model)),
        (UpstreamKind::Openai, true) => sse(openai_stream(reply, model, include_usage)),
        (UpstreamKind::Openai, false) => json(&openai_completion(reply, model)),
    }
}

pub(super) fn sse(events: Vec<(Option<&'static str>, Value)>) -> (&'static str, String) {
    let mut text = String::new();
    for (name, data) in events {
        if let Some(name) = name {
            text.push_str(&format!("event: {name}\n"));
        }
        match data {
            Value::String(s) => text.push_str(&format!("data: {s}\n\n")),
            other => text.push_str(&format!("data: {other}\n\n")),
        }
    }
    ("text/event-stream", text)
}

/// A JSON body: the content type and the text.
pub(super) fn json(value: &Value) -> (&'static str, String) {
    ("application/json", value.to_string())
}
