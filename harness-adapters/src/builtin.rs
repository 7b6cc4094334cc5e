//! The built-in harness: a native agent loop over the host's gateway.
//!
//! Each step sends the conversation to the gateway's Anthropic Messages
//! endpoint (`POST {gateway}/v1/messages`, streaming, with the session's
//! gateway key so the gateway knows whose turn it meters), emits text and
//! reasoning deltas as they arrive, runs every `tool_use` through the host (asking for approval
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
    BoxFuture, Harness, HarnessEvent, ToolStatus, TurnContext, TurnOutcome, TurnRequest, Usage,
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

    /// One streaming `POST /v1/messages`: emits text and reasoning deltas
    /// as they arrive (part ids `<part_prefix>_<block index>`) and returns
    /// the assembled message (`content`, `stop_reason`, `usage`). Errors are
    /// `(code, message)`.
    async fn stream_step(
        &self,
        body: &Value,
        part_prefix: &str,
        cx: &TurnContext<'_>,
    ) -> Result<Value, (String, String)> {
        let model_error = |message: String| ("model_error".to_owned(), message);
        let mut body = body.clone();
        body["stream"] = json!(true);
        let request = hyper::Request::post(format!("{}/v1/messages", self.gateway))
            .header("content-type", "application/json")
            .header("x-api-key", &self.key)
            .header("anthropic-version", "2023-06-01")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| model_error(e.to_string()))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| ("model_unreachable".to_owned(), format!("{e:#}")))?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = http_body_util::Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let message = value["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(model_error(format!(
                "the model answered HTTP {}: {message}",
                status.as_u16()
            )));
        }

        let mut message = StreamedMessage::default();
        let mut buffer = String::new();
        let mut received = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| model_error(format!("the stream broke: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            received += data.len();
            if received > MAX_RESPONSE_BYTES {
                return Err(model_error("the model's answer is too large".into()));
            }
            buffer.push_str(&String::from_utf8_lossy(&data));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let data: String = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if data.is_empty() {
                    continue;
                }
                let event: Value = serde_json::from_str(&data).map_err(|e| {
                    model_error(format!("a stream event is not JSON ({e}): {data}"))
                })?;
                message.apply(&event, part_prefix, cx)?;
            }
        }
        if !message.stopped {
            return Err(model_error(
                "the model's stream ended before message_stop".into(),
            ));
        }
        Ok(message.finish())
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
            let part_prefix = format!("{message_id}_{step_index}");
            let answer = tokio::select! {
                answer = self.stream_step(&body, &part_prefix, &cx) => answer,
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
        if let Err(why) = cx.approve(tool, input).await {
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
        cx.emit(HarnessEvent::tool_running(
            id.to_owned(),
            tool.to_owned(),
            input.clone(),
        ));
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

/// An Anthropic message assembled from its stream events.
#[derive(Default)]
struct StreamedMessage {
    blocks: Vec<Value>,
    /// Partial JSON of tool inputs, by block index.
    partial_inputs: Vec<String>,
    stop_reason: Option<String>,
    usage: Usage,
    stopped: bool,
}

impl StreamedMessage {
    /// Folds one stream event in; text and thinking deltas are emitted.
    fn apply(
        &mut self,
        event: &Value,
        part_prefix: &str,
        cx: &TurnContext<'_>,
    ) -> Result<(), (String, String)> {
        let index = event["index"].as_u64().unwrap_or(0) as usize;
        match event["type"].as_str() {
            Some("message_start") => {
                let usage = &event["message"]["usage"];
                self.usage.input_tokens = usage["input_tokens"].as_u64().unwrap_or(0);
                self.usage.output_tokens = usage["output_tokens"].as_u64().unwrap_or(0);
            }
            Some("content_block_start") => {
                while self.blocks.len() <= index {
                    self.blocks.push(Value::Null);
                    self.partial_inputs.push(String::new());
                }
                self.blocks[index] = event["content_block"].clone();
            }
            Some("content_block_delta") => {
                let Some(block) = self.blocks.get_mut(index) else {
                    return Ok(());
                };
                let delta = &event["delta"];
                let part_id = format!("{part_prefix}_{index}");
                match delta["type"].as_str() {
                    Some("text_delta") => {
                        let text = delta["text"].as_str().unwrap_or_default();
                        let joined =
                            format!("{}{text}", block["text"].as_str().unwrap_or_default());
                        block["text"] = json!(joined);
                        cx.emit(HarnessEvent::Text {
                            part_id,
                            text: text.to_owned(),
                        });
                    }
                    Some("thinking_delta") => {
                        let text = delta["thinking"].as_str().unwrap_or_default();
                        let joined =
                            format!("{}{text}", block["thinking"].as_str().unwrap_or_default());
                        block["thinking"] = json!(joined);
                        cx.emit(HarnessEvent::Reasoning {
                            part_id,
                            text: text.to_owned(),
                        });
                    }
                    Some("signature_delta") => {
                        block["signature"] = delta["signature"].clone();
                    }
                    Some("input_json_delta") => {
                        if let Some(partial) = self.partial_inputs.get_mut(index) {
                            partial.push_str(delta["partial_json"].as_str().unwrap_or_default());
                        }
                    }
                    _ => {}
                }
            }
            Some("content_block_stop") => {
                let partial = self.partial_inputs.get(index).cloned().unwrap_or_default();
                if let Some(block) = self.blocks.get_mut(index)
                    && block["type"] == "tool_use"
                    && !partial.is_empty()
                {
                    block["input"] = serde_json::from_str(&partial).map_err(|e| {
                        (
                            "model_error".to_owned(),
                            format!("the model sent tool input that is not JSON ({e}): {partial}"),
                        )
                    })?;
                }
            }
            Some("message_delta") => {
                if let Some(reason) = event["delta"]["stop_reason"].as_str() {
                    self.stop_reason = Some(reason.to_owned());
                }
                let usage = &event["usage"];
                if let Some(output) = usage["output_tokens"].as_u64() {
                    self.usage.output_tokens = output;
                }
                if let Some(input) = usage["input_tokens"].as_u64() {
                    self.usage.input_tokens = input;
                }
            }
            Some("message_stop") => self.stopped = true,
            Some("error") => {
                return Err((
                    "model_error".to_owned(),
                    event["error"]["message"]
                        .as_str()
                        .unwrap_or("the model's stream reported an error")
                        .to_owned(),
                ));
            }
            _ => {}
        }
        Ok(())
    }

    fn finish(self) -> Value {
        json!({
            "content": self.blocks.into_iter().filter(|b| !b.is_null()).collect::<Vec<_>>(),
            "stop_reason": self.stop_reason.unwrap_or_else(|| "end_turn".into()),
            "usage": { "input_tokens": self.usage.input_tokens, "output_tokens": self.usage.output_tokens },
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Decision, ToolDef, ToolResult, TurnHost};

    struct NoHost;

    impl TurnHost for NoHost {
        fn tools(&self) -> Vec<ToolDef> {
            Vec::new()
        }
        fn needs_approval(&self, _: &str) -> bool {
            false
        }
        fn request_approval<'a>(
            &'a self,
            _: &'a str,
            _: &'a Value,
        ) -> BoxFuture<'a, Option<Decision>> {
            Box::pin(async { None })
        }
        fn call_tool<'a>(&'a self, _: &'a str, _: &'a Value) -> BoxFuture<'a, ToolResult> {
            Box::pin(async {
                ToolResult {
                    content: Ok(Value::Null),
                    fuel: None,
                    duration_ms: 0,
                }
            })
        }
    }

    #[test]
    fn stream_events_assemble_into_a_message_and_emit_deltas() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let cx = TurnContext {
            host: &NoHost,
            events: tx,
            cancel: Default::default(),
        };
        let mut message = StreamedMessage::default();
        let events = [
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 7, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t1", "name": "calc", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"expression\":"}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": " \"1+1\"}"}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 12}}),
            json!({"type": "message_stop"}),
        ];
        for event in &events {
            message.apply(event, "m_0", &cx).expect("valid event");
        }
        assert!(message.stopped);
        let assembled = message.finish();
        assert_eq!(
            assembled["content"][0],
            json!({"type": "text", "text": "Hello"})
        );
        assert_eq!(
            assembled["content"][1]["input"],
            json!({"expression": "1+1"})
        );
        assert_eq!(assembled["stop_reason"], "tool_use");
        assert_eq!(
            assembled["usage"],
            json!({"input_tokens": 7, "output_tokens": 12})
        );
        let deltas: Vec<HarnessEvent> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(
            deltas,
            [
                HarnessEvent::Text {
                    part_id: "m_0_0".into(),
                    text: "Hel".into()
                },
                HarnessEvent::Text {
                    part_id: "m_0_0".into(),
                    text: "lo".into()
                },
            ]
        );

        let mut broken = StreamedMessage::default();
        broken.apply(&events[5], "m_0", &cx).expect("start");
        broken
            .apply(&json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{oops"}}), "m_0", &cx)
            .expect("delta");
        let error = broken
            .apply(
                &json!({"type": "content_block_stop", "index": 1}),
                "m_0",
                &cx,
            )
            .expect_err("bad tool input JSON");
        assert!(error.1.contains("not JSON"), "{error:?}");
    }
}
