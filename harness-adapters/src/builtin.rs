//! The built-in harness: a native agent loop over the host's gateway.
//!
//! Each step sends the conversation to the gateway's Anthropic Messages
//! endpoint (`POST {gateway}/v1/messages`, with the session's gateway key so
//! the gateway knows whose turn it meters), turns the answer's content blocks
//! into events, runs every `tool_use` through the host (asking for approval
//! where the grant says so), and feeds the results back, until the model stops
//! asking for tools or [`MAX_STEPS`] is reached.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::{
    BoxFuture, Decision, Harness, HarnessEvent, ToolStatus, TurnContext, TurnOutcome, TurnRequest,
    Usage,
};

/// Model steps one turn may take before it is stopped.
pub const MAX_STEPS: u32 = 16;

/// The largest answer accepted from the gateway.
const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// The native agent loop.
#[derive(Clone)]
pub struct BuiltinHarness {
    gateway: String,
    key: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl BuiltinHarness {
    /// A harness that calls the gateway at `gateway_url` (e.g.
    /// `http://127.0.0.1:41234`) with `key` (the session's gateway key).
    pub fn new(gateway_url: impl Into<String>, key: impl Into<String>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Self {
            gateway: gateway_url.into().trim_end_matches('/').to_owned(),
            key: key.into(),
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// One `POST /v1/messages` (unary). Errors are `(code, message)`.
    async fn complete(&self, body: &Value) -> Result<Value, (String, String)> {
        let request = hyper::Request::post(format!("{}/v1/messages", self.gateway))
            .header("content-type", "application/json")
            .header("x-api-key", &self.key)
            .header("anthropic-version", "2023-06-01")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| ("model_error".to_owned(), e.to_string()))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| ("model_unreachable".to_owned(), format!("{e:#}")))?;
        let status = response.status();
        let bytes = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| ("model_error".to_owned(), e.to_string()))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            (
                "model_error".to_owned(),
                format!(
                    "the model's answer is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                ),
            )
        })?;
        if !status.is_success() {
            let message = value["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            return Err((
                "model_error".to_owned(),
                format!("the model answered HTTP {}: {message}", status.as_u16()),
            ));
        }
        Ok(value)
    }

    async fn turn(&self, request: TurnRequest, cx: TurnContext<'_>) -> TurnOutcome {
        let message_id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        let user = json!({ "role": "user", "content": [{ "type": "text", "text": request.text }] });
        let mut messages = request.history.clone();
        messages.push(user.clone());
        let mut new_messages = vec![user];
        let mut usage = Usage::default();
        let mut final_text = String::new();
        let mut status = "completed".to_owned();

        let tools: Vec<Value> = cx
            .host
            .tools()
            .into_iter()
            .map(|t| json!({ "name": t.name, "description": t.description, "input_schema": t.input_schema }))
            .collect();

        let mut ended_by_error = None;
        for step_index in 0..MAX_STEPS {
            if cx.cancel.is_cancelled() {
                status = "cancelled".into();
                break;
            }
            cx.emit(HarnessEvent::StepStart { step_index });
            let mut body = json!({
                "model": request.model,
                "max_tokens": 4096,
                "system": request.system,
                "messages": messages,
            });
            if !tools.is_empty() {
                body["tools"] = Value::Array(tools.clone());
            }
            if request.thinking {
                body["thinking"] = json!({ "type": "enabled", "budget_tokens": 1024 });
            }
            let answer = tokio::select! {
                answer = self.complete(&body) => answer,
                () = cx.cancel.cancelled() => { status = "cancelled".into(); break; }
            };
            let answer = match answer {
                Ok(answer) => answer,
                Err((code, message)) => {
                    ended_by_error = Some((code, message));
                    break;
                }
            };
            let step_usage = Usage {
                input_tokens: answer["usage"]["input_tokens"].as_u64().unwrap_or(0),
                output_tokens: answer["usage"]["output_tokens"].as_u64().unwrap_or(0),
            };
            usage.add(step_usage);
            let content = answer["content"].as_array().cloned().unwrap_or_default();
            let mut tool_uses = Vec::new();
            let mut step_text = String::new();
            for (index, block) in content.iter().enumerate() {
                let part_id = format!("{message_id}_{step_index}_{index}");
                match block["type"].as_str() {
                    Some("text") => {
                        let text = block["text"].as_str().unwrap_or_default().to_owned();
                        step_text.push_str(&text);
                        cx.emit(HarnessEvent::Text { part_id, text });
                    }
                    Some("thinking") => cx.emit(HarnessEvent::Reasoning {
                        part_id,
                        text: block["thinking"].as_str().unwrap_or_default().to_owned(),
                    }),
                    Some("tool_use") => tool_uses.push(block.clone()),
                    _ => {}
                }
            }
            if !step_text.is_empty() {
                final_text = step_text;
            }
            let stop_reason = answer["stop_reason"]
                .as_str()
                .unwrap_or("end_turn")
                .to_owned();
            cx.emit(HarnessEvent::StepFinish {
                step_index,
                usage: step_usage,
                stop_reason,
            });
            let assistant = json!({ "role": "assistant", "content": content });
            messages.push(assistant.clone());
            new_messages.push(assistant);
            if tool_uses.is_empty() {
                break;
            }

            let mut results = Vec::new();
            for block in tool_uses {
                let id = block["id"].as_str().unwrap_or_default().to_owned();
                let tool = block["name"].as_str().unwrap_or_default().to_owned();
                let input = block["input"].clone();
                let (result, denied) = self.run_tool(&cx, &id, &tool, &input).await;
                if denied {
                    status = "denied".into();
                }
                results.push(result);
            }
            let tool_results = json!({ "role": "user", "content": results });
            messages.push(tool_results.clone());
            new_messages.push(tool_results);
            if cx.cancel.is_cancelled() {
                status = "cancelled".into();
                break;
            }
        }

        if let Some((code, message)) = ended_by_error {
            cx.emit(HarnessEvent::Error { code, message });
            status = "error".into();
        } else {
            cx.emit(HarnessEvent::Done {
                message_id,
                usage,
                status: status.clone(),
            });
        }
        TurnOutcome {
            new_messages,
            text: final_text,
            usage,
            status,
        }
    }

    /// Runs one tool call with its approval; returns the `tool_result` block
    /// and whether a person denied it.
    async fn run_tool(
        &self,
        cx: &TurnContext<'_>,
        id: &str,
        tool: &str,
        input: &Value,
    ) -> (Value, bool) {
        if cx.host.needs_approval(tool) {
            let decision = tokio::select! {
                d = cx.host.request_approval(tool, input) => d,
                () = cx.cancel.cancelled() => None,
            };
            match decision {
                Some(Decision::ApproveOnce | Decision::ApproveSession) => {}
                Some(Decision::Deny) | None => {
                    let why = if decision.is_none() {
                        "the approval request timed out or the turn was cancelled"
                    } else {
                        "a person denied this tool call"
                    };
                    cx.emit(HarnessEvent::ToolUse {
                        part_id: id.to_owned(),
                        tool: tool.to_owned(),
                        status: ToolStatus::Error,
                        input: input.clone(),
                        output: None,
                        error: Some(json!({ "kind": "denied", "message": why })),
                        fuel: None,
                        duration_ms: None,
                    });
                    let result = json!({
                        "type": "tool_result", "tool_use_id": id, "is_error": true,
                        "content": format!("Tool call denied: {why}."),
                    });
                    return (result, true);
                }
            }
        }
        cx.emit(HarnessEvent::ToolUse {
            part_id: id.to_owned(),
            tool: tool.to_owned(),
            status: ToolStatus::Running,
            input: input.clone(),
            output: None,
            error: None,
            fuel: None,
            duration_ms: None,
        });
        let result = cx.host.call_tool(tool, input).await;
        let (status, output, error, content, is_error) = match &result.content {
            Ok(output) => (
                ToolStatus::Completed,
                Some(output.clone()),
                None,
                output.to_string(),
                false,
            ),
            Err(failure) => (
                ToolStatus::Error,
                None,
                Some(json!({ "kind": failure.kind, "message": failure.message })),
                format!("{}: {}", failure.kind, failure.message),
                true,
            ),
        };
        cx.emit(HarnessEvent::ToolUse {
            part_id: id.to_owned(),
            tool: tool.to_owned(),
            status,
            input: input.clone(),
            output,
            error,
            fuel: result.fuel,
            duration_ms: Some(result.duration_ms),
        });
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
