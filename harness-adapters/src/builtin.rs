//! The built-in harness: a native agent loop over the host's gateway.
//!
//! Each step sends the conversation to the gateway's Anthropic Messages
//! endpoint (`POST {gateway}/v1/messages`, streaming, with the session's
//! gateway key so the gateway knows whose turn it meters), emits text and
//! reasoning deltas as they arrive, runs every `tool_use` through the host (asking for approval
//! where the grant says so), and feeds the results back, until the model stops
//! asking for tools or [`MAX_STEPS`] is reached.
//!
//! The gateway is reached either over HTTP ([`BuiltinHarness::new`]) or,
//! when the loop runs inside the host, in-process
//! ([`BuiltinHarness::in_process`]): the same HTTP request handed to the
//! gateway's own request handler as a [`ModelService`] — the same key
//! check, budget, routing and metering, without a socket, a connection pool
//! or a second task per call.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use crate::http::{HttpClient, MAX_EVENT_BYTES};
use crate::model_stream::{AnthropicEvent, AnthropicMessage, StreamDelta};
use crate::{
    BoxFuture, ErrorCode, Event, Harness, ToolError, ToolErrorKind, TurnContext, TurnOutcome,
    TurnRequest, TurnStatus, Usage, sse,
};

/// Model steps one turn may take before it is stopped.
pub const MAX_STEPS: u32 = 16;

/// The largest answer accepted from the gateway.
const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// The body of a gateway's answer, however it was reached.
pub type ModelBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// A model gateway called in-process: an HTTP request in (path
/// `/v1/messages`, the session's key in `x-api-key`), its answer out. The
/// host implements it with the very handler its gateway serves over TCP, so
/// there is one path for admission, budgets, routing and metering.
pub trait ModelService: Send + Sync {
    /// Answers one request.
    fn call(&self, request: hyper::Request<Full<Bytes>>) -> BoxFuture<'static, ModelResponse>;
}

/// What a [`ModelService`] answers: a response, or why there is none.
pub type ModelResponse = Result<hyper::Response<ModelBody>, String>;

/// How the loop reaches the gateway.
#[derive(Clone)]
enum Link {
    /// Over HTTP at this base URL.
    Http { client: HttpClient, gateway: String },
    /// In-process.
    Service(Arc<dyn ModelService>),
}

/// The native agent loop.
#[derive(Clone)]
pub struct BuiltinHarness {
    link: Link,
    key: String,
}

/// A failed model step: the turn ends with an `error` event.
type StepFailure = (ErrorCode, String);

impl BuiltinHarness {
    /// A harness that calls the gateway at `gateway_url` (e.g.
    /// `http://127.0.0.1:41234`) with `key` (the session's gateway key),
    /// over the host's shared `client`.
    pub fn new(client: HttpClient, gateway_url: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            link: Link::Http {
                gateway: gateway_url.into().trim_end_matches('/').to_owned(),
                client,
            },
            key: key.into(),
        }
    }

    /// A harness that calls the gateway in-process through `service`, with
    /// `key` (the session's gateway key).
    pub fn in_process(service: Arc<dyn ModelService>, key: impl Into<String>) -> Self {
        Self {
            link: Link::Service(service),
            key: key.into(),
        }
    }

    /// Sends one request to the gateway.
    async fn send(&self, body: Bytes) -> Result<hyper::Response<ModelBody>, StepFailure> {
        let uri = match &self.link {
            Link::Http { gateway, .. } => format!("{gateway}/v1/messages"),
            Link::Service(_) => "/v1/messages".to_owned(),
        };
        let request = hyper::Request::post(uri)
            .header("content-type", "application/json")
            .header("x-api-key", &self.key)
            .header("anthropic-version", "2023-06-01")
            .body(Full::new(body))
            .map_err(|e| (ErrorCode::ModelError, e.to_string()))?;
        match &self.link {
            Link::Http { client, .. } => {
                let response = client
                    .request(request)
                    .await
                    .map_err(|e| (ErrorCode::ModelUnreachable, format!("{e:#}")))?;
                Ok(response.map(|body| body.map_err(std::io::Error::other).boxed_unsync()))
            }
            Link::Service(service) => service
                .call(request)
                .await
                .map_err(|e| (ErrorCode::ModelUnreachable, e)),
        }
    }

    /// One streaming `POST /v1/messages`: emits text and reasoning deltas
    /// as they arrive (part ids `<part_prefix>_<block index>`) and returns
    /// the assembled message.
    async fn stream_step(
        &self,
        body: &Value,
        part_prefix: &str,
        cx: &TurnContext<'_>,
    ) -> Result<AnthropicMessage, StepFailure> {
        let model_error = |message: String| (ErrorCode::ModelError, message);
        let body = serde_json::to_vec(body).map_err(|e| model_error(e.to_string()))?;
        let response = self.send(Bytes::from(body)).await?;
        let status = response.status();
        if !status.is_success() {
            let bytes = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let message = value["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            // The host's gateway refuses a call the tenant's budget cannot
            // pay for: the turn ends saying so, not as a model failure.
            let code = match (status.as_u16(), value["error"]["type"].as_str()) {
                (402, Some("budget_exhausted")) => ErrorCode::BudgetExhausted,
                (422, Some("byok_key_rejected")) => ErrorCode::ByokKeyRejected,
                _ => ErrorCode::ModelError,
            };
            return Err((
                code,
                format!("the model answered HTTP {}: {message}", status.as_u16()),
            ));
        }

        let mut message = AnthropicMessage::default();
        let mut events = sse::body_events(response.into_body(), MAX_EVENT_BYTES);
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| model_error(e.to_string()))?;
            let Some(data) = event.data.as_deref() else {
                continue;
            };
            let event = AnthropicEvent::from_json(data).map_err(|e| {
                model_error(format!(
                    "a stream event is not an Anthropic event ({e}): {data}"
                ))
            })?;
            match message
                .apply(event)
                .map_err(|e| model_error(e.to_string()))?
            {
                Some(StreamDelta::Text { index, text }) => {
                    cx.emit(Event::text(format!("{part_prefix}_{index}"), text));
                }
                Some(StreamDelta::Reasoning { index, text }) => {
                    cx.emit(Event::reasoning(format!("{part_prefix}_{index}"), text));
                }
                None => {}
            }
        }
        if !message.is_complete() {
            return Err(model_error(
                "the model's stream ended before message_stop".into(),
            ));
        }
        Ok(message)
    }

    async fn turn(&self, request: TurnRequest, cx: TurnContext<'_>) -> TurnOutcome {
        let message_id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        let user = json!({ "role": "user", "content": [{ "type": "text", "text": request.text }] });
        let mut messages = request.history.clone();
        messages.push(user.clone());
        let mut new_messages = vec![user];
        let mut usage = Usage::default();
        let mut final_text = String::new();
        let mut status = TurnStatus::Completed;

        let tools: Vec<Value> = cx
            .host
            .tools()
            .into_iter()
            .map(|t| json!({ "name": t.name, "description": t.description, "input_schema": t.input_schema }))
            .collect();
        // A name the model was not offered is no tool of this loop's: it
        // fails as unknown without asking a person first.
        let offered = |name: &str| tools.iter().any(|t| t["name"] == name);

        let mut ended_by_error = None;
        for step_index in 0..MAX_STEPS {
            if cx.cancel.is_cancelled() {
                status = TurnStatus::Cancelled;
                break;
            }
            cx.emit(Event::step_start(step_index));
            let mut body = json!({
                "model": request.model,
                "max_tokens": 4096,
                "system": request.system,
                "messages": messages,
                "stream": true,
            });
            if !tools.is_empty() {
                body["tools"] = Value::Array(tools.clone());
            }
            if request.thinking {
                body["thinking"] = json!({ "type": "enabled", "budget_tokens": 1024 });
            }
            let part_prefix = format!("{message_id}_{step_index}");
            let answer = tokio::select! {
                answer = self.stream_step(&body, &part_prefix, &cx) => answer,
                () = cx.cancel.cancelled() => { status = TurnStatus::Cancelled; break; }
            };
            let answer = match answer {
                Ok(answer) => answer,
                Err(failure) => {
                    ended_by_error = Some(failure);
                    break;
                }
            };
            let step_usage = answer.usage();
            usage.add(step_usage);
            let content = answer.content();
            let mut tool_uses = Vec::new();
            let mut step_text = String::new();
            // Text and reasoning were emitted as they streamed in.
            for block in &content {
                match block["type"].as_str() {
                    Some("text") => step_text.push_str(block["text"].as_str().unwrap_or_default()),
                    Some("tool_use") => tool_uses.push(block.clone()),
                    _ => {}
                }
            }
            if !step_text.is_empty() {
                final_text = step_text;
            }
            cx.emit(Event::step_finish(
                step_index,
                step_usage,
                answer.stop_reason(),
            ));
            let assistant = json!({ "role": "assistant", "content": content });
            messages.push(assistant.clone());
            new_messages.push(assistant);
            if tool_uses.is_empty() {
                break;
            }

            let mut results = Vec::new();
            for block in tool_uses {
                let id = block["id"].as_str().unwrap_or_default().to_owned();
                if cx.cancel.is_cancelled() {
                    // Every tool_use needs its result in the history, or the
                    // next turn's request is malformed; nothing more runs.
                    results.push(json!({
                        "type": "tool_result", "tool_use_id": id, "is_error": true,
                        "content": "The turn was cancelled before this tool ran.",
                    }));
                    continue;
                }
                let tool = block["name"].as_str().unwrap_or_default().to_owned();
                let input = block["input"].clone();
                let (result, denied) = self.run_tool(&cx, &id, &tool, &input, offered(&tool)).await;
                if denied {
                    status = TurnStatus::Denied;
                }
                results.push(result);
            }
            let tool_results = json!({ "role": "user", "content": results });
            messages.push(tool_results.clone());
            new_messages.push(tool_results);
            if cx.cancel.is_cancelled() {
                status = TurnStatus::Cancelled;
                break;
            }
        }

        if let Some((code, message)) = ended_by_error {
            cx.emit(Event::error(code, message));
            status = TurnStatus::Error;
        } else {
            cx.emit(Event::done(message_id, usage, status));
        }
        TurnOutcome {
            new_messages,
            text: final_text,
            usage,
            status,
        }
    }

    /// Runs one tool call with its approval (none for a tool the model was
    /// not `offered`: it fails as unknown); returns the `tool_result` block
    /// and whether a person denied it.
    async fn run_tool(
        &self,
        cx: &TurnContext<'_>,
        id: &str,
        tool: &str,
        input: &Value,
        offered: bool,
    ) -> (Value, bool) {
        let refused = if offered {
            cx.approve(tool, input).await.err()
        } else {
            None
        };
        if let Some(why) = refused {
            let denial = ToolError {
                kind: ToolErrorKind::Denied,
                message: why.to_owned(),
            };
            cx.emit(Event::tool_finished(
                id,
                tool,
                input.clone(),
                Err(denial),
                None,
                None,
            ));
            let result = json!({
                "type": "tool_result", "tool_use_id": id, "is_error": true,
                "content": format!("Tool call denied: {why}."),
            });
            return (result, true);
        }
        cx.emit(Event::tool_running(id, tool, input.clone()));
        let result = cx.host.call_tool(tool, input).await;
        let (content, is_error) = match &result.content {
            Ok(output) => (output.to_string(), false),
            Err(failure) => (format!("{}: {}", failure.kind, failure.message), true),
        };
        cx.emit(result.event(id, tool, input.clone()));
        let block = json!({
            "type": "tool_result", "tool_use_id": id, "is_error": is_error, "content": content,
        });
        (block, false)
    }
}

impl Harness for BuiltinHarness {
    fn name(&self) -> &'static str {
        "builtin"
    }

    fn run_turn<'a>(
        &'a self,
        request: TurnRequest,
        context: TurnContext<'a>,
    ) -> BoxFuture<'a, TurnOutcome> {
        Box::pin(self.turn(request, context))
    }
}
