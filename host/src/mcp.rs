//! The MCP server a harness process sees: the session's plugin tools over
//! MCP's streamable HTTP transport (protocol revision 2025-11-25).
//!
//! One endpoint, `POST /mcp/{token}`, where the token (minted by
//! [`Sessions::issue_mcp_token`]) is unguessable and scopes every request to
//! one session. It answers JSON-RPC with a single JSON response:
//!
//! | method | answer |
//! | --- | --- |
//! | `initialize` | protocol version, `tools` capability, server info |
//! | `notifications/*` | 202, no body |
//! | `ping` | `{}` |
//! | `tools/list` | the session's tools with their JSON Schemas |
//! | `tools/call` | runs the tool in wasmtime; a tool failure is a result with `isError: true` and the error kind in `structuredContent` |
//! | anything else (`server/discover`, …) | JSON-RPC error -32601, method not found |
//!
//! `GET` (a server-initiated stream) is answered 405: this server never
//! sends requests of its own.
//!
//! `POST /mcp/{token}/servers/{name}` is the app's own stdio MCP server
//! `name` (`.mcp.json`) when it was compiled to a WebAssembly component
//! (see [`crate::plugin::python_mcp`]): `initialize` and `tools/list` are
//! answered from what the server said at load, `ping` here, and every other
//! request (`tools/call`, …) runs in a fresh instance of the server under
//! its fuel, memory and time limits, with the app folder as its working
//! directory and the session's workspace read-only at `/workspace`. Its
//! answer is passed on as it is, with `_meta.karta/fuel` added to a
//! `tools/call` result; a call that runs out of a limit is an `isError`
//! result saying which. A harness given `{"type": "http", "url": …}` sees the
//! same tools as with the stdio server. A name that is not compiled is 404.
//!
//! Approvals are enforced here, not left to the harness's settings (which
//! live in a workspace a plugin may write): `tools/call` of a tool with
//! `approval = "always"` goes through [`Sessions::call_tool`], which asks a
//! person through the session's running turn and answers a denial (or a
//! timeout, or no turn to ask in) as an `isError` result of kind `denied`.
//!
//! No `Host` / `Origin` check as on the API: every request must carry the
//! session's token, which a web page (even a DNS-rebound one) does not know.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::projects::Projects;
use crate::session::Sessions;

/// The MCP protocol revision spoken.
pub const PROTOCOL_VERSION: &str = "2025-11-25";

/// Largest JSON-RPC message accepted.
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The MCP router: `POST /mcp/{token}` (served by the host on its own
/// loopback port, through [`crate::listen::spawn_server`]).
pub fn router(projects: Arc<Projects>) -> Router {
    let routes = Router::new()
        .route(
            "/mcp/{token}",
            post(handle).get(|| async { StatusCode::METHOD_NOT_ALLOWED }),
        )
        .route(
            "/mcp/{token}/servers/{name}",
            post(handle_app_server).get(|| async { StatusCode::METHOD_NOT_ALLOWED }),
        )
        .with_state(projects);
    crate::listen::with_request_spans(routes, "mcp")
}

fn rpc_error(id: Value, code: i64, message: &str) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } })
}

async fn handle(
    State(projects): State<Arc<Projects>>,
    Path(token): Path<String>,
    body: Body,
) -> Response {
    let Some((sessions, session)) = projects.for_mcp_token(&token) else {
        // Unknown tokens learn nothing, not even whether the route exists.
        return StatusCode::NOT_FOUND.into_response();
    };
    tracing::Span::current().record("session", session.as_str());
    let bytes = match http_body_util::Limited::new(body, MAX_MESSAGE_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return StatusCode::PAYLOAD_TOO_LARGE.into_response(),
    };
    let message: Value = match serde_json::from_slice(&bytes) {
        Ok(message) => message,
        Err(e) => {
            let error = rpc_error(Value::Null, -32700, &format!("parse error: {e}"));
            return (StatusCode::BAD_REQUEST, axum::Json(error)).into_response();
        }
    };
    if message.is_array() {
        let error = rpc_error(Value::Null, -32600, "batches are not supported");
        return (StatusCode::BAD_REQUEST, axum::Json(error)).into_response();
    }
    let Some(method) = message["method"].as_str() else {
        // A response to a request we never sent: accept and ignore.
        return StatusCode::ACCEPTED.into_response();
    };
    let Some(id) = message.get("id").cloned() else {
        // A notification (`notifications/initialized`, `…/cancelled`).
        return StatusCode::ACCEPTED.into_response();
    };
    let params = &message["params"];
    let answer = match method {
        "initialize" => json!({
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": { "tools": { "listChanged": false } },
            "serverInfo": { "name": "karta", "version": env!("CARGO_PKG_VERSION") },
            "instructions": "Tools of this Karta app; each call runs in a WebAssembly sandbox under a fuel budget.",
        }),
        "ping" => json!({}),
        "tools/list" => match sessions.session_tools(&session).await {
            Ok(tools) => json!({
                "tools": tools.into_iter().map(|t| json!({
                    "name": t.name, "description": t.description, "inputSchema": t.input_schema,
                })).collect::<Vec<_>>(),
            }),
            Err(e) => return reply(rpc_error(id, -32603, &e.to_string())),
        },
        "tools/call" => {
            let Some(name) = params["name"].as_str() else {
                return reply(rpc_error(id, -32602, "tools/call needs `params.name`"));
            };
            let arguments = match &params["arguments"] {
                Value::Null => json!({}),
                other => other.clone(),
            };
            match sessions.call_tool(&session, name, &arguments).await {
                Ok(result) => {
                    let meta = json!({ "karta/fuel": result.fuel, "karta/duration_ms": result.duration_ms });
                    match result.content {
                        Ok(output) => json!({
                            "content": [{ "type": "text", "text": output.to_string() }],
                            "structuredContent": output_object(output),
                            "isError": false,
                            "_meta": meta,
                        }),
                        Err(failure) => json!({
                            "content": [{ "type": "text", "text": format!("{}: {}", failure.kind, failure.message) }],
                            "structuredContent": { "error": failure },
                            "isError": true,
                            "_meta": meta,
                        }),
                    }
                }
                Err(e) => return reply(rpc_error(id, -32603, &e.to_string())),
            }
        }
        other => return reply(rpc_error(id, -32601, &format!("method not found: {other}"))),
    };
    reply(json!({ "jsonrpc": "2.0", "id": id, "result": answer }))
}

/// Reads one JSON-RPC message: the body under [`MAX_MESSAGE_BYTES`], a
/// single object. `Err` is the response to send instead.
async fn read_message(body: Body) -> Result<Value, Response> {
    let bytes = match http_body_util::Limited::new(body, MAX_MESSAGE_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Err(StatusCode::PAYLOAD_TOO_LARGE.into_response()),
    };
    let message: Value = match serde_json::from_slice(&bytes) {
        Ok(message) => message,
        Err(e) => {
            let error = rpc_error(Value::Null, -32700, &format!("parse error: {e}"));
            return Err((StatusCode::BAD_REQUEST, axum::Json(error)).into_response());
        }
    };
    if !message.is_object() {
        let error = rpc_error(Value::Null, -32600, "batches are not supported");
        return Err((StatusCode::BAD_REQUEST, axum::Json(error)).into_response());
    }
    Ok(message)
}

/// Hands a compiled server's `tools/call` (its fuel, its time, its answer)
/// to the session, for the harness's `tool_use` event of it.
fn record_app_server_call(
    sessions: &Sessions,
    session: &str,
    server: &str,
    request: &Value,
    response: &Value,
    fuel: u64,
    duration_us: u64,
) {
    let params = &request["params"];
    let Some(tool) = params["name"].as_str() else {
        return;
    };
    let input = params
        .get("arguments")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let result = &response["result"];
    let text: String = result["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let content = if let Some(error) = response.get("error") {
        // The server's own JSON-RPC error (an unknown tool, a crash in it).
        Err(karta_harness::ToolError {
            kind: karta_harness::ToolErrorKind::ToolError,
            message: error["message"]
                .as_str()
                .unwrap_or("the server answered with an error")
                .to_owned(),
        })
    } else if result["isError"] == true {
        Err(karta_harness::ToolError {
            kind: karta_harness::ToolErrorKind::ToolError,
            message: text,
        })
    } else {
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    };
    // Billed like a plugin's call: fuel is fuel, whichever path ran it.
    let cost_micros = sessions.bill_fuel(session, tool, fuel, duration_us);
    sessions.record_app_server_run(
        session,
        server,
        tool,
        &input,
        &karta_harness::ToolResult {
            content,
            fuel: Some(fuel),
            duration_ms: duration_us / 1000,
            cost_micros,
        },
    );
}

/// `POST /mcp/{token}/servers/{name}`: the app's MCP server `name`, run as
/// a compiled component.
async fn handle_app_server(
    State(projects): State<Arc<Projects>>,
    Path((token, name)): Path<(String, String)>,
    body: Body,
) -> Response {
    let Some((sessions, session)) = projects.for_mcp_token(&token) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    tracing::Span::current().record("session", session.as_str());
    let Some(server) = sessions
        .python_servers()
        .and_then(|s| s.get(&name))
        .cloned()
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let message = match read_message(body).await {
        Ok(message) => message,
        Err(response) => return response,
    };
    let Some(method) = message["method"].as_str() else {
        return StatusCode::ACCEPTED.into_response();
    };
    let Some(id) = message.get("id").cloned() else {
        // Notifications: a fresh instance per request has no state for
        // them to change.
        return StatusCode::ACCEPTED.into_response();
    };
    let answer = match method {
        "initialize" => server.initialize_result().clone(),
        "ping" => json!({}),
        "tools/list" => json!({ "tools": server.tools() }),
        _ => {
            let options = crate::plugin::python_mcp::ServerCallOptions {
                workspace: Some(sessions.workspace(&session)),
                fuel_cap: None,
            };
            return match server.request(&message, &options).await {
                Ok(outcome) => {
                    tracing::debug!(
                        session = %session, server = %name, method,
                        fuel = outcome.fuel_consumed, duration_us = outcome.duration_us,
                        "compiled MCP server answered"
                    );
                    let mut response = outcome.response;
                    if method == "tools/call" {
                        record_app_server_call(
                            &sessions,
                            &session,
                            &name,
                            &message,
                            &response,
                            outcome.fuel_consumed,
                            outcome.duration_us,
                        );
                    }
                    if let Some(result) = response.get_mut("result").and_then(Value::as_object_mut)
                    {
                        let meta = result.entry("_meta").or_insert_with(|| json!({}));
                        if let Some(meta) = meta.as_object_mut() {
                            meta.insert("karta/fuel".into(), outcome.fuel_consumed.into());
                            meta.insert(
                                "karta/duration_ms".into(),
                                (outcome.duration_us / 1000).into(),
                            );
                        }
                    }
                    reply(response)
                }
                Err(failure) if method == "tools/call" => reply(json!({
                    "jsonrpc": "2.0", "id": id, "result": {
                        "content": [{ "type": "text", "text": format!("{}: {}", failure.kind, failure.message) }],
                        "structuredContent": { "error": { "kind": failure.kind, "message": &failure.message } },
                        "isError": true,
                        "_meta": { "karta/fuel": failure.fuel_consumed, "karta/duration_ms": failure.duration_us / 1000 },
                    },
                })),
                Err(failure) => reply(rpc_error(id, -32603, &failure.to_string())),
            };
        }
    };
    reply(json!({ "jsonrpc": "2.0", "id": id, "result": answer }))
}

/// `structuredContent` must be an object; wrap other JSON values.
fn output_object(output: Value) -> Value {
    if output.is_object() {
        output
    } else {
        json!({ "result": output })
    }
}

fn reply(message: Value) -> Response {
    (StatusCode::OK, axum::Json(message)).into_response()
}
