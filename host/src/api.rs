//! The HTTP API: Karta's session protocol on axum.
//!
//! [`router`] is a plain function of the shared state, so tests can drive it
//! without a socket and `karta serve` puts it on one. Routes (flat, dev mode):
//!
//! | route | |
//! | --- | --- |
//! | `GET /healthz`, `GET /readyz` | liveness, readiness |
//! | `POST /v1/sessions` | create or resume (`session_id`) |
//! | `GET /v1/sessions` | list; query = metadata filters, `page`, `per_page` |
//! | `GET /v1/sessions/{id}` | the session object |
//! | `DELETE /v1/sessions/{id}` | delete (cancels a running turn) |
//! | `POST /v1/sessions/{id}/messages` | start a turn; `stream: true` answers SSE |
//! | `PUT /v1/sessions/{id}/inputs/{request_id}` | answer an approval |
//! | `GET /v1/sessions/{id}/transcript` | messages with senders |
//! | `GET /v1/sessions/{id}/events` | SSE replay (`?after=` / `Last-Event-ID`), then live until the turn ends |
//! | `POST /v1/sessions/{id}/cancel` | stop the running turn |
//!
//! Errors are `{"error": "<code>", "message": "…"}` with the protocol's
//! status codes; internal details are logged, not sent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use bytes::Bytes;
use http_body_util::BodyExt;
use karta_harness::Decision;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::session::{MessageRequest, SessionError, Sessions};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.code, "message": self.message });
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<SessionError> for ApiError {
    fn from(error: SessionError) -> Self {
        match error {
            SessionError::NotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "not_found", error.to_string())
            }
            SessionError::TurnInProgress(_) => {
                Self::new(StatusCode::CONFLICT, "turn_in_progress", error.to_string())
            }
            SessionError::NoSuchInput(_) => {
                Self::new(StatusCode::NOT_FOUND, "not_found", error.to_string())
            }
            SessionError::Invalid(message) => Self::bad_request(message),
            SessionError::Store(e) => {
                tracing::error!("storage failure: {e}");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "the session store failed; try again",
                )
            }
        }
    }
}

/// The router over `sessions`.
pub fn router(sessions: Arc<Sessions>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(readyz))
        .route("/v1/sessions", post(create_session).get(list_sessions))
        .route("/v1/sessions/{id}", get(get_session).delete(delete_session))
        .route("/v1/sessions/{id}/messages", post(send_message))
        .route("/v1/sessions/{id}/inputs/{request_id}", put(answer_input))
        .route("/v1/sessions/{id}/transcript", get(transcript))
        .route("/v1/sessions/{id}/events", get(events))
        .route("/v1/sessions/{id}/cancel", post(cancel))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .with_state(sessions)
}

/// Reads a JSON body of at most [`MAX_BODY_BYTES`]: 413 past that, 400 with
/// the line and column of a syntax error, 400 naming the field of a type
/// error.
async fn json_body<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes: Bytes = match http_body_util::Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
            ));
        }
    };
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
        Bytes::from_static(b"{}")
    } else {
        bytes
    };
    let decoder = &mut serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(decoder).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let at = format!("line {} column {}", inner.line(), inner.column());
        if inner.is_syntax() || inner.is_eof() {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not valid JSON: {inner} (at {at})"),
            )
        } else if path == "." {
            ApiError::bad_request(format!("{inner}"))
        } else {
            ApiError::bad_request(format!("field `{path}`: {inner}"))
        }
    })
}

async fn readyz(State(sessions): State<Arc<Sessions>>) -> Response {
    match sessions.store().sessions() {
        Ok(_) => {
            axum::Json(json!({ "status": "ready", "app": sessions.app().name })).into_response()
        }
        Err(e) => {
            tracing::error!("not ready: {e}");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the store is unavailable",
            )
            .into_response()
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSession {
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    session_id: Option<String>,
}

async fn create_session(
    State(sessions): State<Arc<Sessions>>,
    body: Body,
) -> Result<Response, ApiError> {
    let request: CreateSession = json_body(body).await?;
    let object = sessions
        .create(request.session_id, request.metadata)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(object)).into_response())
}

async fn list_sessions(
    State(sessions): State<Arc<Sessions>>,
    Query(mut query): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let number = |value: Option<String>, name: &str, default: usize| match value {
        None => Ok(default),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| ApiError::bad_request(format!("`{name}` must be a whole number ≥ 1"))),
    };
    let page = number(query.remove("page"), "page", 1)?;
    let per_page = number(query.remove("per_page"), "per_page", 20)?.min(100);
    let (list, total) = sessions.list(&query, page, per_page).await?;
    Ok(axum::Json(json!({
        "sessions": list, "page": page, "per_page": per_page, "total": total,
    }))
    .into_response())
}

async fn get_session(
    State(sessions): State<Arc<Sessions>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(sessions.object(&id).await?).into_response())
}

async fn delete_session(
    State(sessions): State<Arc<Sessions>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    sessions.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendMessage {
    text: String,
    agent: Option<String>,
    participant_name: Option<String>,
    participant_type: Option<String>,
    #[serde(default)]
    thinking: bool,
    #[serde(default)]
    stream: bool,
}

async fn send_message(
    State(sessions): State<Arc<Sessions>>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let request: SendMessage = json_body(body).await?;
    let stream = request.stream;
    let started = sessions
        .send(
            &id,
            MessageRequest {
                text: request.text,
                agent: request.agent,
                participant_name: request.participant_name,
                participant_type: request.participant_type,
                thinking: request.thinking,
            },
        )
        .await?;
    if stream {
        let events = sessions.subscribe(&id, started.after)?;
        return Ok(sse(events));
    }
    let summary = started.finished.await.map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "turn_lost",
            "the turn ended unexpectedly",
        )
    })?;
    let events = sessions.events_after(&id, started.after)?;
    let parts = parts_of(&events);
    Ok(axum::Json(json!({
        "text": summary.text,
        "session_id": id,
        "agent": summary.agent,
        "status": summary.status,
        "messages": [{
            "id": summary.message_id, "role": "assistant", "text": summary.text, "parts": parts,
        }],
        "usage": summary.usage.to_json(),
    }))
    .into_response())
}

/// The message parts of a turn's events: text and reasoning deltas joined
/// by part id, tool calls in their last state.
fn parts_of(events: &[Value]) -> Vec<Value> {
    let mut parts: Vec<Value> = Vec::new();
    for event in events {
        let part = &event["data"]["part"];
        if part.is_null() {
            continue;
        }
        let id = &part["id"];
        match parts.iter_mut().find(|p| &p["id"] == id) {
            Some(existing) if part["type"] == "tool" => *existing = part.clone(),
            Some(existing) => {
                let joined = format!(
                    "{}{}",
                    existing["text"].as_str().unwrap_or_default(),
                    part["text"].as_str().unwrap_or_default()
                );
                existing["text"] = json!(joined);
            }
            None => parts.push(part.clone()),
        }
    }
    parts
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerInput {
    decision: Decision,
}

async fn answer_input(
    State(sessions): State<Arc<Sessions>>,
    Path((id, request_id)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    let request: AnswerInput = json_body(body).await?;
    let after = sessions.last_seq(&id).await?;
    let mut events = sessions.subscribe(&id, after)?;
    sessions.answer(&id, &request_id, request.decision)?;
    // The continuation: everything up to the turn's end or its next pause.
    let mut continuation = Vec::new();
    while let Some(event) = events.recv().await {
        let stop = matches!(
            event["type"].as_str(),
            Some("done" | "error" | "input_required")
        );
        continuation.push(event);
        if stop {
            break;
        }
    }
    Ok(axum::Json(json!({
        "events": continuation,
        "session": sessions.object(&id).await?,
    }))
    .into_response())
}

async fn transcript(
    State(sessions): State<Arc<Sessions>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let messages = sessions.transcript(&id)?;
    Ok(axum::Json(json!({ "session_id": id, "messages": messages })).into_response())
}

#[derive(Deserialize)]
struct EventsQuery {
    after: Option<String>,
}

async fn events(
    State(sessions): State<Arc<Sessions>>,
    Path(id): Path<String>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let header = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let after = match query.after.or(header) {
        None => 0,
        Some(text) => text.trim().parse::<u64>().map_err(|_| {
            ApiError::bad_request("`after` / `Last-Event-ID` must be an event sequence number")
        })?,
    };
    let events = sessions.subscribe(&id, after)?;
    Ok(sse(events))
}

async fn cancel(
    State(sessions): State<Arc<Sessions>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let cancelled = sessions.cancel(&id)?;
    Ok(axum::Json(json!({
        "cancelled": cancelled,
        "session": sessions.object(&id).await?,
    }))
    .into_response())
}

/// Event envelopes as Server-Sent Events (`event:`, `id:`, `data:`), with a
/// comment line every 15 s so idle connections (a turn waiting for an
/// approval) are not cut by proxies.
fn sse(mut events: mpsc::Receiver<Value>) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::convert::Infallible>>(64);
    tokio::spawn(async move {
        let mut keepalive = tokio::time::interval(Duration::from_secs(15));
        keepalive.tick().await;
        loop {
            let chunk = tokio::select! {
                event = events.recv() => match event {
                    Some(event) => format!(
                        "event: {}\nid: {}\ndata: {}\n\n",
                        event["type"].as_str().unwrap_or("message"),
                        event["seq"],
                        event
                    ),
                    None => break,
                },
                _ = keepalive.tick() => ": keep-alive\n\n".to_owned(),
            };
            if tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
