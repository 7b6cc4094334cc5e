//! The model gateway: the only model endpoint a harness ever sees.
//!
//! It listens on a loopback port of its own and speaks two wire shapes:
//! Anthropic Messages (`POST /v1/messages`, unary and SSE) and OpenAI Chat
//! Completions (`POST /v1/chat/completions`, unary and SSE). Each request
//! carries a per-session gateway key (`x-api-key` or `Authorization: Bearer`),
//! so the gateway knows whose turn it is and records the tokens used; an
//! unknown key is refused with 401.
//!
//! Behind it sits either the [offline model](offline) or a real upstream
//! (Anthropic, or any OpenAI-compatible base URL) reached with the
//! platform's key, which the harness never sees.

pub mod offline;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// Which wire shape an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamKind {
    /// Anthropic Messages (`/v1/messages`).
    Anthropic,
    /// OpenAI-compatible Chat Completions (`/v1/chat/completions`).
    Openai,
}

/// A real model provider behind the gateway.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The wire shape.
    pub kind: UpstreamKind,
    /// Base URL, e.g. `https://api.anthropic.com` (no trailing `/v1`).
    pub base_url: String,
    /// The platform's key for it. Never logged, never given to a harness.
    pub api_key: String,
}

/// Tokens the gateway counted for one session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeteredUsage {
    /// Model requests.
    pub requests: u64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
}

/// The gateway's shared state.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<GatewayInner>,
}

struct GatewayInner {
    upstream: Option<Upstream>,
    /// gateway key -> session id
    keys: Mutex<HashMap<String, String>>,
    /// session id -> usage
    usage: Mutex<HashMap<String, MeteredUsage>>,
    /// The last requests received, newest last (for `doctor`-style checks
    /// and tests that assert what reached the model).
    recent: Mutex<Vec<Value>>,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// Requests kept in [`Gateway::recent_requests`].
const RECENT_REQUESTS: usize = 32;

/// Largest request body the gateway accepts.
const MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;

impl Gateway {
    /// A gateway in front of `upstream`, or of the offline model when `None`.
    pub fn new(upstream: Option<Upstream>) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Self {
            inner: Arc::new(GatewayInner {
                upstream,
                keys: Mutex::default(),
                usage: Mutex::default(),
                recent: Mutex::default(),
                client: Client::builder(TokioExecutor::new()).build(connector),
            }),
        }
    }

    /// Whether a real upstream is configured.
    pub fn upstream(&self) -> Option<&Upstream> {
        self.inner.upstream.as_ref()
    }

    /// Mints a gateway key for `session_id`: an unguessable token that lets a
    /// harness call the gateway on that session's account.
    pub fn issue_key(&self, session_id: &str) -> String {
        let key = format!("kgw_{}", uuid::Uuid::new_v4().simple());
        lock(&self.inner.keys).insert(key.clone(), session_id.to_owned());
        key
    }

    /// Revokes every key of `session_id`.
    pub fn revoke_session(&self, session_id: &str) {
        lock(&self.inner.keys).retain(|_, s| s != session_id);
    }

    /// What the gateway counted for `session_id`.
    pub fn usage(&self, session_id: &str) -> MeteredUsage {
        lock(&self.inner.usage)
            .get(session_id)
            .copied()
            .unwrap_or_default()
    }

    /// The last requests the gateway received (bodies), oldest first.
    pub fn recent_requests(&self) -> Vec<Value> {
        lock(&self.inner.recent).clone()
    }

    /// The router: `/v1/messages`, `/v1/chat/completions`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/messages", post(anthropic_messages))
            .route("/v1/chat/completions", post(openai_chat))
            .with_state(self.clone())
    }

    /// Serves the gateway on `listener` until the task is dropped; returns
    /// its base URL.
    pub async fn serve(&self, listener: tokio::net::TcpListener) -> std::io::Result<String> {
        let addr: SocketAddr = listener.local_addr()?;
        let router = self.router();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!("the model gateway stopped: {e}");
            }
        });
        Ok(format!("http://{addr}"))
    }

    fn session_for(&self, headers: &HeaderMap) -> Option<String> {
        let key = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .or_else(|| {
                headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
            })?;
        lock(&self.inner.keys).get(key.trim()).cloned()
    }

    fn record(&self, session: &str, input_tokens: u64, output_tokens: u64) {
        let mut usage = lock(&self.inner.usage);
        let entry = usage.entry(session.to_owned()).or_default();
        entry.requests += 1;
        entry.input_tokens += input_tokens;
        entry.output_tokens += output_tokens;
    }

    fn remember(&self, body: &Value) {
        let mut recent = lock(&self.inner.recent);
        if recent.len() == RECENT_REQUESTS {
            recent.remove(0);
        }
        recent.push(body.clone());
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The shape of an error answer, per wire format.
fn error_response(kind: UpstreamKind, status: StatusCode, code: &str, message: &str) -> Response {
    let body = match kind {
        UpstreamKind::Anthropic => json!({
            "type": "error", "error": { "type": code, "message": message },
        }),
        UpstreamKind::Openai => json!({
            "error": { "type": code, "code": code, "message": message },
        }),
    };
    (status, axum::Json(body)).into_response()
}

/// Reads and checks a request: key, size, JSON.
async fn admit(
    gateway: &Gateway,
    kind: UpstreamKind,
    headers: &HeaderMap,
    body: Body,
) -> Result<(String, Bytes, Value), Response> {
    let Some(session) = gateway.session_for(headers) else {
        return Err(error_response(
            kind,
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "unknown gateway key: the gateway serves only keys the Karta host issued",
        ));
    };
    let bytes = match http_body_util::Limited::new(body, MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Err(error_response(
                kind,
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                "the request body is larger than the gateway accepts",
            ));
        }
    };
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        error_response(
            kind,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            &format!("the body is not valid JSON: {e}"),
        )
    })?;
    gateway.remember(&value);
    Ok((session, bytes, value))
}

async fn anthropic_messages(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(gateway, UpstreamKind::Anthropic, headers, body).await
}

async fn openai_chat(State(gateway): State<Gateway>, headers: HeaderMap, body: Body) -> Response {
    handle(gateway, UpstreamKind::Openai, headers, body).await
}

/// One model request in either shape: admit it, then forward it to the
/// upstream or answer it with the offline model in the same shape.
async fn handle(gateway: Gateway, kind: UpstreamKind, headers: HeaderMap, body: Body) -> Response {
    let (session, bytes, request) = match admit(&gateway, kind, &headers, body).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    if let Some(upstream) = gateway.upstream().cloned() {
        return forward(&gateway, &upstream, kind, &session, bytes, &request).await;
    }
    let conversation = match kind {
        UpstreamKind::Anthropic => offline::from_anthropic(&request),
        UpstreamKind::Openai => offline::from_openai(&request),
    };
    let reply = match offline::reply(&conversation) {
        Ok(reply) => reply,
        Err(failure) => {
            let status = StatusCode::from_u16(failure.status).unwrap_or(StatusCode::BAD_GATEWAY);
            return error_response(kind, status, "api_error", &failure.message);
        }
    };
    gateway.record(&session, reply.input_tokens, reply.output_tokens);
    let model = request["model"].as_str().unwrap_or("karta-offline");
    let stream = request["stream"].as_bool().unwrap_or(false);
    let include_usage = request["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    match (kind, stream) {
        (UpstreamKind::Anthropic, true) => sse_response(anthropic_stream(&reply, model)),
        (UpstreamKind::Anthropic, false) => {
            axum::Json(anthropic_message(&reply, model)).into_response()
        }
        (UpstreamKind::Openai, true) => sse_response(openai_stream(&reply, model, include_usage)),
        (UpstreamKind::Openai, false) => {
            axum::Json(openai_completion(&reply, model)).into_response()
        }
    }
}

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

fn anthropic_message(reply: &offline::Reply, model: &str) -> Value {
    json!({
        "id": format!("msg_offline_{}", uuid::Uuid::new_v4().simple()),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": anthropic_blocks(reply),
        "stop_reason": stop_reason(reply),
        "stop_sequence": null,
        "usage": { "input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens },
    })
}

/// The Anthropic SSE event sequence for a reply.
fn anthropic_stream(reply: &offline::Reply, model: &str) -> Vec<(Option<&'static str>, Value)> {
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
            "usage": { "input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens },
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

fn openai_usage(reply: &offline::Reply) -> Value {
    json!({
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens,
    })
}

fn finish_reason(reply: &offline::Reply) -> &'static str {
    if reply.tool_calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    }
}

fn openai_completion(reply: &offline::Reply, model: &str) -> Value {
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
        "usage": openai_usage(reply),
    })
}

fn openai_stream(
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
        last["usage"] = openai_usage(reply);
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
/// as it is (`[DONE]`).
fn sse_response(events: Vec<(Option<&'static str>, Value)>) -> Response {
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
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from(text))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Sends the request on to the real provider with the platform's key and
/// streams its answer back, counting the tokens it reports.
async fn forward(
    gateway: &Gateway,
    upstream: &Upstream,
    kind: UpstreamKind,
    session: &str,
    bytes: Bytes,
    request: &Value,
) -> Response {
    let path = match upstream.kind {
        UpstreamKind::Anthropic => "/v1/messages",
        UpstreamKind::Openai => "/v1/chat/completions",
    };
    if upstream.kind != kind {
        return error_response(
            kind,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            &format!(
                "this gateway's upstream speaks {:?}; use {path}",
                upstream.kind
            ),
        );
    }
    let url = format!("{}{path}", upstream.base_url.trim_end_matches('/'));
    let mut builder = hyper::Request::post(url).header("content-type", "application/json");
    builder = match kind {
        UpstreamKind::Anthropic => builder
            .header("x-api-key", &upstream.api_key)
            .header("anthropic-version", "2023-06-01"),
        UpstreamKind::Openai => {
            builder.header("authorization", format!("Bearer {}", upstream.api_key))
        }
    };
    let Ok(outbound) = builder.body(Full::new(bytes)) else {
        return error_response(
            kind,
            StatusCode::BAD_GATEWAY,
            "api_error",
            "bad upstream URL",
        );
    };
    let response = match gateway.inner.client.request(outbound).await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!("upstream unreachable: {e:#}");
            return error_response(
                kind,
                StatusCode::BAD_GATEWAY,
                "api_error",
                "the model provider could not be reached",
            );
        }
    };
    let status = response.status();
    let content_type = response.headers().get("content-type").cloned();
    let streaming = request["stream"].as_bool().unwrap_or(false);
    let gateway = gateway.clone();
    let session = session.to_owned();
    let mut upstream_body = response.into_body();
    // Relay the body chunk by chunk (streams stay streams) while scanning it
    // for the usage the provider reports.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(16);
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(frame) = upstream_body.frame().await {
            let Ok(frame) = frame else { break };
            if let Ok(data) = frame.into_data() {
                seen.extend_from_slice(&data);
                if tx.send(Ok(data)).await.is_err() {
                    break;
                }
            }
        }
        let (input, output) = usage_in(&seen, streaming);
        gateway.record(&session, input, output);
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut response = Response::builder().status(status);
    if let Some(content_type) = content_type {
        response = response.header("content-type", content_type);
    }
    response
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Finds the token counts in a provider's answer (unary JSON or SSE).
fn usage_in(body: &[u8], streaming: bool) -> (u64, u64) {
    let text = String::from_utf8_lossy(body);
    let values: Vec<Value> = if streaming {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str(d.trim()).ok())
            .collect()
    } else {
        serde_json::from_str(&text).into_iter().collect()
    };
    let (mut input, mut output) = (0, 0);
    for v in values {
        for usage in [&v["usage"], &v["message"]["usage"]] {
            let i = usage["input_tokens"]
                .as_u64()
                .or_else(|| usage["prompt_tokens"].as_u64());
            let o = usage["output_tokens"]
                .as_u64()
                .or_else(|| usage["completion_tokens"].as_u64());
            if let Some(i) = i {
                input = input.max(i);
            }
            if let Some(o) = o {
                output = output.max(o);
            }
        }
    }
    (input, output)
}
