//! `POST …/v1/chat/completions`: OpenAI Chat Completions over a turn of a
//! fresh session fed the conversation (see the parent module).
//!
//! Unary: a `chat.completion` with `choices[0].message` (the turn's text;
//! text parts split by tool calls are joined with a blank line),
//! `finish_reason: "stop"` and `usage` (`prompt_tokens` = every input
//! token, cached or not; `completion_tokens`; `total_tokens`). Streaming:
//! `chat.completion.chunk`s — the role chunk first, one content delta per
//! text event, the finish chunk, a usage chunk (`choices: []`) when
//! `stream_options.include_usage`, then `data: [DONE]`. A failed turn
//! answers OpenAI's error object (402 for a budget, 422 for a rejected
//! provider key, 5xx else); mid-stream it is the last `data:` and there
//! is no `[DONE]` (the SDKs raise `APIError`).

use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::Event as Frame;
use axum::response::{IntoResponse, Response};
use karta_harness::{Event, Usage};
use serde::Deserialize;
use serde_json::{Value, json};

use super::errors::OpenAiErrorBody;
use super::errors::{OpenAiError, parse_body};
use super::{Speaker, Target, fold, new_id, now_secs, sse, start};
use crate::api::{ApiError, ApiJson, Tenant};
use crate::projects::Projects;

/// A Chat Completions request. Parameters that tune the model are accepted
/// and left to the app (its agent picks the model and its settings); those
/// that would change what the answer is, and cannot be honoured, are 400.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // the accepted, unused parameters
pub(super) struct ChatRequest {
    /// Echoed back as `model`.
    model: String,
    /// The conversation; the last message is the user's.
    #[schema(value_type = Vec<Object>)]
    messages: Vec<ChatMessage>,
    #[serde(default)]
    stream: Option<bool>,
    #[schema(value_type = Option<Object>)]
    stream_options: Option<StreamOptions>,
    n: Option<u32>,
    #[schema(value_type = Option<Vec<Object>>)]
    tools: Option<Vec<Value>>,
    #[schema(value_type = Option<Vec<Object>>)]
    functions: Option<Vec<Value>>,
    #[schema(value_type = Option<Object>)]
    response_format: Option<Value>,
    logprobs: Option<bool>,
    #[schema(value_type = Option<Object>)]
    audio: Option<Value>,
    // Accepted, not used.
    #[schema(value_type = Option<Object>)]
    tool_choice: Option<Value>,
    #[schema(value_type = Option<Object>)]
    function_call: Option<Value>,
    #[schema(value_type = Option<Object>)]
    parallel_tool_calls: Option<Value>,
    #[schema(value_type = Option<Object>)]
    top_logprobs: Option<Value>,
    #[schema(value_type = Option<Object>)]
    temperature: Option<Value>,
    #[schema(value_type = Option<Object>)]
    top_p: Option<Value>,
    #[schema(value_type = Option<Object>)]
    max_tokens: Option<Value>,
    #[schema(value_type = Option<Object>)]
    max_completion_tokens: Option<Value>,
    #[schema(value_type = Option<Object>)]
    stop: Option<Value>,
    #[schema(value_type = Option<Object>)]
    seed: Option<Value>,
    #[schema(value_type = Option<Object>)]
    presence_penalty: Option<Value>,
    #[schema(value_type = Option<Object>)]
    frequency_penalty: Option<Value>,
    #[schema(value_type = Option<Object>)]
    logit_bias: Option<Value>,
    #[schema(value_type = Option<Object>)]
    user: Option<Value>,
    #[schema(value_type = Option<Object>)]
    safety_identifier: Option<Value>,
    #[schema(value_type = Option<Object>)]
    prompt_cache_key: Option<Value>,
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    #[schema(value_type = Option<Object>)]
    store: Option<Value>,
    #[schema(value_type = Option<Object>)]
    reasoning_effort: Option<Value>,
    #[schema(value_type = Option<Object>)]
    service_tier: Option<Value>,
    #[schema(value_type = Option<Object>)]
    verbosity: Option<Value>,
    #[schema(value_type = Option<Object>)]
    modalities: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
    #[serde(default)]
    include_obfuscation: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // what a message may carry; only its role and content count
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<Value>,
    name: Option<String>,
    tool_calls: Option<Value>,
    tool_call_id: Option<String>,
    refusal: Option<Value>,
    audio: Option<Value>,
    function_call: Option<Value>,
}

/// The text of a message's `content`: a string, or its `text` parts.
pub(super) fn content_text(
    content: Option<&Value>,
    param: &str,
    text_types: &[&str],
) -> Result<String, OpenAiError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::new();
            for (index, part) in parts.iter().enumerate() {
                let kind = part["type"].as_str().unwrap_or_default();
                match part["text"].as_str() {
                    Some(text) if text_types.contains(&kind) => texts.push(text),
                    _ if kind == "refusal" => {}
                    _ => {
                        return Err(OpenAiError::invalid(
                            Some(&format!("{param}[{index}]")),
                            format!("content parts of type `{kind}` are not supported; send text"),
                        ));
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        Some(_) => Err(OpenAiError::invalid(
            Some(param),
            "content must be a string or an array of parts",
        )),
    }
}

impl ChatRequest {
    /// Refuses what cannot be honoured; the turn's text.
    fn turn_text(&self) -> Result<String, OpenAiError> {
        let refuse = |param: &str, message: &str| Err(OpenAiError::invalid(Some(param), message));
        if self.n.is_some_and(|n| n != 1) {
            return refuse("n", "only n = 1 is supported");
        }
        let client_tools =
            |tools: &Option<Vec<Value>>| tools.as_ref().is_some_and(|t| !t.is_empty());
        if client_tools(&self.tools) || client_tools(&self.functions) {
            return refuse(
                "tools",
                "client-defined tools are not supported: the app's own tools run on the host",
            );
        }
        if self.logprobs == Some(true) {
            return refuse("logprobs", "logprobs are not available");
        }
        if self.audio.as_ref().is_some_and(|a| !a.is_null()) {
            return refuse("audio", "audio output is not supported");
        }
        if let Some(format) = &self.response_format
            && !format.is_null()
            && format["type"] != "text"
        {
            return refuse(
                "response_format",
                "only the `text` response format is supported",
            );
        }
        let Some((last, earlier)) = self.messages.split_last() else {
            return refuse("messages", "messages must not be empty");
        };
        if last.role != "user" {
            return refuse("messages", "the last message must be the user's");
        }
        let mut instructions = Vec::new();
        let mut history = Vec::new();
        for (index, message) in earlier.iter().enumerate() {
            let param = format!("messages[{index}].content");
            let text = content_text(message.content.as_ref(), &param, &["text"])?;
            match message.role.as_str() {
                "system" | "developer" => instructions.push(text),
                "user" => history.push((Speaker::User, text)),
                "assistant" => history.push((Speaker::Assistant, text)),
                other => {
                    return refuse(
                        &format!("messages[{index}].role"),
                        &format!(
                            "`{other}` messages are not supported: the app's tools run on the host"
                        ),
                    );
                }
            }
        }
        let param = format!("messages[{}].content", self.messages.len() - 1);
        let text = content_text(last.content.as_ref(), &param, &["text"])?;
        Ok(fold(&instructions, &history, &text))
    }
}

/// OpenAI's `usage` of a turn's metered usage (the gateway's translation
/// of a provider's answer writes the same).
pub(super) fn usage(usage: &Usage) -> Value {
    crate::gateway::translate::response::openai_usage(*usage)
}

/// What the stream sends for an event.
#[derive(Debug, PartialEq)]
pub(super) enum ChatOut {
    /// A `chat.completion.chunk`.
    Chunk(Value),
    /// The turn failed: the error object, the stream's last `data:`.
    Error(OpenAiError),
    /// `data: [DONE]`.
    Done,
}

/// A turn's events as chat completion chunks.
pub(super) struct Chunks {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// The text part being written, and all the text so far.
    part: Option<String>,
    text: String,
}

impl Chunks {
    pub(super) fn new(model: &str, include_usage: bool) -> Self {
        Self {
            id: new_id("chatcmpl-"),
            created: now_secs(),
            model: model.to_owned(),
            include_usage,
            part: None,
            text: String::new(),
        }
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        let mut chunk = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason }],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    /// The first chunk: the assistant's role.
    pub(super) fn role(&self) -> Value {
        self.chunk(
            json!({ "role": "assistant", "content": "", "refusal": null }),
            None,
        )
    }

    /// What `event` adds to the stream.
    pub(super) fn on_event(&mut self, event: &Event) -> Vec<ChatOut> {
        match event {
            Event::Text(data) if !data.part.text.is_empty() => {
                let mut delta = String::new();
                if self.part.as_deref() != Some(&data.part.id) {
                    if !self.text.is_empty() {
                        delta.push_str("\n\n");
                    }
                    self.part = Some(data.part.id.clone());
                }
                delta.push_str(&data.part.text);
                self.text.push_str(&delta);
                vec![ChatOut::Chunk(
                    self.chunk(json!({ "content": delta }), None),
                )]
            }
            Event::Done(done) => {
                let mut out = vec![ChatOut::Chunk(self.chunk(json!({}), Some("stop")))];
                if self.include_usage {
                    let mut chunk = self.chunk(json!({}), None);
                    chunk["choices"] = json!([]);
                    chunk["usage"] = usage(&done.usage);
                    out.push(ChatOut::Chunk(chunk));
                }
                out.push(ChatOut::Done);
                out
            }
            Event::Error(error) => vec![ChatOut::Error(OpenAiError::from_turn(error))],
            // Reasoning has no place in a chat completion; tool calls ran on
            // the host (offering them as `tool_calls` would ask the client
            // to run them).
            _ => Vec::new(),
        }
    }

    /// The unary answer of a finished turn.
    pub(super) fn completion(&self, usage_of_turn: &Usage) -> Value {
        json!({
            "id": self.id, "object": "chat.completion", "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": self.text, "refusal": null, "annotations": [] },
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": usage(usage_of_turn),
        })
    }
}

/// OpenAI Chat Completions: one turn of a fresh session fed the
/// conversation; `stream: true` answers `chat.completion.chunk`s as SSE.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai", request_body = ChatRequest,
    responses(
        (status = 200, description = "`chat.completion` (JSON), or `chat.completion.chunk`s then `[DONE]` (text/event-stream)"),
        (status = 400, body = OpenAiErrorBody), (status = 401, body = OpenAiErrorBody), (status = 402, body = OpenAiErrorBody),
        (status = 404, body = OpenAiErrorBody), (status = 413, body = OpenAiErrorBody),
    ))]
pub(super) async fn create(
    State(projects): State<Arc<Projects>>,
    tenant: Result<Tenant, ApiError>,
    body: Result<ApiJson<Value>, ApiError>,
) -> Result<Response, OpenAiError> {
    let tenant = tenant?;
    let request: ChatRequest = parse_body(body)?;
    let text = request.turn_text()?;
    let include_usage = request
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let mut chunks = Chunks::new(&request.model, include_usage);
    let mut run = start(
        &projects,
        &tenant,
        Target::Fresh { api: "openai.chat" },
        text,
    )
    .await?;
    if request.stream == Some(true) {
        let first = vec![Frame::default().data(chunks.role().to_string())];
        return Ok(sse(run, first, move |event| {
            chunks
                .on_event(event)
                .into_iter()
                .map(|out| match out {
                    ChatOut::Chunk(chunk) => Frame::default().data(chunk.to_string()),
                    ChatOut::Error(error) => Frame::default().data(error.body().to_string()),
                    ChatOut::Done => Frame::default().data("[DONE]"),
                })
                .collect()
        }));
    }
    while let Some(event) = run.next().await {
        chunks.on_event(&event);
        match &event {
            Event::Done(done) => {
                return Ok(axum::Json(chunks.completion(&done.usage)).into_response());
            }
            Event::Error(error) => return Err(OpenAiError::from_turn(error)),
            _ => {}
        }
    }
    Err(OpenAiError::from_turn(&karta_harness::ErrorData {
        code: karta_harness::ErrorCode::HarnessError,
        message: "the turn ended without an answer".into(),
    }))
}
