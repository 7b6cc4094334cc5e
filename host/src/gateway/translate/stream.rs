//! A provider's SSE answer rewritten, event by event, into the caller's
//! shape while it streams.
//!
//! The relay feeds each provider event's `data` to a [`StreamTranslator`]
//! as the shared SSE reader yields it (after metering it) and sends on
//! whatever SSE text comes out, so the caller sees each token as soon as
//! the provider sent it. The translators keep only what the other shape
//! needs later: which content block is open, which OpenAI tool call maps
//! to which Anthropic block, the stop reason and the usage so far.
//!
//! - OpenAI `chat.completion.chunk`s → Anthropic: the first chunk opens the
//!   message (`message_start`); text and tool calls open, fill
//!   (`text_delta`, `input_json_delta` — argument fragments go on as they
//!   come) and close content blocks; `finish_reason` closes the open
//!   block, and the `message_delta` (stop reason, usage) and
//!   `message_stop` wait for `[DONE]`, since the usage chunk comes after
//!   the finish chunk.
//! - Anthropic events → OpenAI: a role chunk first, content and tool-call
//!   deltas, then at `message_stop` the finish chunk, a usage chunk when
//!   the caller asked for one (`stream_options.include_usage`), and
//!   `data: [DONE]`.
//!
//! An upstream stream that ends without its end marker but after its stop
//! reason is closed properly; one cut off before is left cut off, so the
//! caller sees it incomplete, as it would have untranslated.

use std::collections::HashMap;

use karta_harness::Usage;
use karta_harness::model_stream::{AnthropicEvent, BlockDelta, OpenAiUsage, UsageMeter, WireShape};
use serde::Deserialize;
use serde_json::{Value, json};

use super::response::{anthropic_usage, openai_usage, unix_now};
use crate::gateway::UpstreamKind;

/// Rewrites one streamed answer from the provider's shape into the
/// caller's.
pub(crate) enum StreamTranslator {
    /// From an OpenAI-compatible provider to an Anthropic caller.
    ToAnthropic(ToAnthropic),
    /// From Anthropic to an OpenAI-shaped caller.
    ToOpenAi(ToOpenAi),
}

impl StreamTranslator {
    /// A translator of an answer from a provider of shape `from`, for a
    /// caller that asked for `model` (and, OpenAI-shaped, whether it wants
    /// a usage chunk).
    pub(crate) fn new(from: UpstreamKind, model: &str, include_usage: bool) -> Self {
        match from {
            UpstreamKind::Openai => Self::ToAnthropic(ToAnthropic {
                model: model.to_owned(),
                ..ToAnthropic::default()
            }),
            UpstreamKind::Anthropic => Self::ToOpenAi(ToOpenAi {
                id: String::new(),
                model: model.to_owned(),
                created: unix_now(),
                include_usage,
                meter: UsageMeter::new(WireShape::Anthropic),
                tools: HashMap::new(),
                stop: None,
                done: false,
            }),
        }
    }

    /// Takes in one provider event's data; appends the caller's SSE text.
    pub(crate) fn event(&mut self, data: &str, out: &mut Vec<u8>) {
        match self {
            Self::ToAnthropic(t) => t.event(data, out),
            Self::ToOpenAi(t) => t.event(data, out),
        }
    }

    /// The provider's stream ended: closes the answer if it had stopped.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        match self {
            Self::ToAnthropic(t) if t.finish.is_some() => t.end(out),
            Self::ToOpenAi(t) if t.stop.is_some() => t.end(out),
            _ => {}
        }
    }
}

fn anthropic_event(out: &mut Vec<u8>, data: &Value) {
    let name = data["type"].as_str().unwrap_or("error");
    out.extend_from_slice(format!("event: {name}\ndata: {data}\n\n").as_bytes());
}

fn openai_event(out: &mut Vec<u8>, data: &Value) {
    out.extend_from_slice(format!("data: {data}\n\n").as_bytes());
}

// ---- OpenAI chunks → Anthropic events ----

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<OpenAiUsage>,
    #[serde(default)]
    error: Option<ChunkError>,
}

#[derive(Deserialize)]
struct ChunkError {
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<ChunkDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChunkDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ToolCallDelta>,
}

#[derive(Deserialize)]
struct ToolCallDelta {
    #[serde(default)]
    index: usize,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

/// The content block open in the Anthropic answer.
#[derive(Clone, Copy)]
enum Open {
    Text,
    /// A tool call, by its OpenAI index.
    Tool(usize),
}

/// OpenAI chunks → Anthropic events.
#[derive(Default)]
pub(crate) struct ToAnthropic {
    model: String,
    started: bool,
    /// The next content block's index.
    next: usize,
    open: Option<Open>,
    finish: Option<String>,
    usage: Usage,
    done: bool,
}

impl ToAnthropic {
    fn event(&mut self, data: &str, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if data.trim() == "[DONE]" {
            return self.end(out);
        }
        let Ok(chunk) = serde_json::from_str::<Chunk>(data) else {
            return;
        };
        if let Some(error) = chunk.error {
            self.done = true;
            let error = json!({ "type": "api_error", "message": error.message });
            return anthropic_event(out, &json!({ "type": "error", "error": error }));
        }
        self.start(chunk.id.as_deref(), out);
        if let Some(usage) = chunk.usage {
            self.usage = usage.to_usage();
        }
        for choice in chunk.choices.into_iter().take(1) {
            if let Some(delta) = choice.delta {
                if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                    if !matches!(self.open, Some(Open::Text)) {
                        self.open_block(Open::Text, json!({ "type": "text", "text": "" }), out);
                    }
                    self.delta(json!({ "type": "text_delta", "text": text }), out);
                }
                for call in delta.tool_calls {
                    let function = call.function.unwrap_or(FunctionDelta {
                        name: None,
                        arguments: None,
                    });
                    let same = matches!(self.open, Some(Open::Tool(i)) if i == call.index);
                    if !same {
                        let id = call
                            .id
                            .unwrap_or_else(|| format!("toolu_{}", uuid::Uuid::new_v4().simple()));
                        let block = json!({
                            "type": "tool_use", "id": id,
                            "name": function.name.unwrap_or_default(), "input": {},
                        });
                        self.open_block(Open::Tool(call.index), block, out);
                    }
                    if let Some(arguments) = function.arguments.filter(|a| !a.is_empty()) {
                        let delta =
                            json!({ "type": "input_json_delta", "partial_json": arguments });
                        self.delta(delta, out);
                    }
                }
            }
            if let Some(finish) = choice.finish_reason {
                self.close(out);
                self.finish = Some(finish);
            }
        }
    }

    fn start(&mut self, id: Option<&str>, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let id = id.map_or_else(
            || format!("msg_{}", uuid::Uuid::new_v4().simple()),
            str::to_owned,
        );
        let message = json!({
            "id": id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": { "input_tokens": 0, "output_tokens": 0 },
        });
        anthropic_event(out, &json!({ "type": "message_start", "message": message }));
    }

    fn open_block(&mut self, open: Open, block: Value, out: &mut Vec<u8>) {
        self.close(out);
        self.open = Some(open);
        let event =
            json!({ "type": "content_block_start", "index": self.next, "content_block": block });
        anthropic_event(out, &event);
    }

    fn delta(&self, delta: Value, out: &mut Vec<u8>) {
        let event = json!({ "type": "content_block_delta", "index": self.next, "delta": delta });
        anthropic_event(out, &event);
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if self.open.take().is_some() {
            anthropic_event(
                out,
                &json!({ "type": "content_block_stop", "index": self.next }),
            );
            self.next += 1;
        }
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.done = true;
        self.start(None, out);
        self.close(out);
        let stop = super::stop_reason(self.finish.as_deref().unwrap_or("stop"));
        let delta = json!({ "stop_reason": stop, "stop_sequence": null });
        let event = json!({ "type": "message_delta", "delta": delta, "usage": anthropic_usage(self.usage) });
        anthropic_event(out, &event);
        anthropic_event(out, &json!({ "type": "message_stop" }));
    }
}

// ---- Anthropic events → OpenAI chunks ----

/// The start of an Anthropic content block, as far as OpenAI cares.
#[derive(Deserialize)]
struct BlockStart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    text: String,
}

/// Anthropic events → OpenAI chunks.
pub(crate) struct ToOpenAi {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    /// The answer's usage so far, for the usage chunk.
    meter: UsageMeter,
    /// Anthropic block index → OpenAI tool call index.
    tools: HashMap<usize, usize>,
    stop: Option<String>,
    done: bool,
}

impl ToOpenAi {
    fn chunk(&self, delta: Value, finish: Value) -> Value {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
        })
    }

    fn event(&mut self, data: &str, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let Ok(event) = AnthropicEvent::from_json(data) else {
            return;
        };
        self.meter.observe_anthropic(&event);
        let delta = match event {
            AnthropicEvent::MessageStart { message } => {
                self.id = message
                    .id
                    .unwrap_or_else(|| format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()));
                json!({ "role": "assistant", "content": "" })
            }
            AnthropicEvent::ContentBlockStart {
                index,
                content_block,
            } => match serde_json::from_value::<BlockStart>(content_block) {
                Ok(block) if block.kind == "tool_use" => {
                    let tool = self.tools.len();
                    self.tools.insert(index, tool);
                    json!({ "tool_calls": [{
                        "index": tool, "id": block.id, "type": "function",
                        "function": { "name": block.name, "arguments": "" },
                    }]})
                }
                Ok(block) if block.kind == "text" && !block.text.is_empty() => {
                    json!({ "content": block.text })
                }
                _ => return,
            },
            AnthropicEvent::ContentBlockDelta { index, delta } => match delta {
                BlockDelta::TextDelta { text } => json!({ "content": text }),
                BlockDelta::ThinkingDelta { thinking } => json!({ "reasoning_content": thinking }),
                BlockDelta::InputJsonDelta { partial_json } => match self.tools.get(&index) {
                    Some(tool) => json!({ "tool_calls": [{
                        "index": tool, "function": { "arguments": partial_json },
                    }]}),
                    None => return,
                },
                BlockDelta::SignatureDelta { .. } | BlockDelta::Other => return,
            },
            AnthropicEvent::MessageDelta { delta, .. } => {
                if delta.stop_reason.is_some() {
                    self.stop = delta.stop_reason;
                }
                return;
            }
            AnthropicEvent::MessageStop => return self.end(out),
            AnthropicEvent::Error { error } => {
                self.done = true;
                let error = json!({ "type": error.kind, "message": error.message });
                return openai_event(out, &json!({ "error": error }));
            }
            AnthropicEvent::ContentBlockStop { .. }
            | AnthropicEvent::Ping
            | AnthropicEvent::Other => return,
        };
        openai_event(out, &self.chunk(delta, Value::Null));
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.done = true;
        let finish = super::finish_reason(self.stop.as_deref().unwrap_or("end_turn"));
        openai_event(out, &self.chunk(json!({}), json!(finish)));
        if self.include_usage {
            let mut last = self.chunk(json!({}), Value::Null);
            last["choices"] = json!([]);
            last["usage"] = openai_usage(self.meter.usage());
            openai_event(out, &last);
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
    }
}
