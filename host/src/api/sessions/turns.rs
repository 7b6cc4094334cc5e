//! A session's turns: a message (answered as JSON or as the turn's SSE),
//! an approval's answer (with the continuation), the event stream (replay,
//! then live), and cancelling the running turn.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use karta_harness::{Decision, Envelope, Event, ReasoningPart, StreamItem, TextPart, ToolPart};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::error::{ApiError, ErrorBody};
use crate::api::extract::{ApiJson, ApiPath, ApiQuery};
use crate::api::sse;
use crate::api::tenant::TenantSession;
use crate::projects::Projects;
use crate::session::{MessageRequest, Published};
use crate::store::ParticipantType;

pub(super) fn routes() -> OpenApiRouter<Arc<Projects>> {
    OpenApiRouter::new()
        .routes(routes!(send_message))
        .routes(routes!(answer_input))
        .routes(routes!(events))
        .routes(routes!(cancel))
}

/// An approval's path, past its session (which [`TenantSession`] reads).
#[derive(Deserialize)]
struct InputPath {
    request_id: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SendMessage {
    /// What the participant says.
    text: String,
    /// Switch to this agent first.
    agent: Option<String>,
    /// Who speaks (default `user`).
    participant_name: Option<String>,
    /// `human` (default) or `ai`.
    #[schema(value_type = Option<String>)]
    participant_type: Option<ParticipantType>,
    /// Ask the model to think first.
    #[serde(default)]
    thinking: bool,
    /// Answer with an SSE stream of the turn's events.
    #[serde(default)]
    stream: bool,
}

/// A part of an assistant message, as the unary answer lists them.
#[derive(Serialize)]
#[serde(untagged)]
enum MessagePart {
    Text(TextPart),
    Reasoning(ReasoningPart),
    Tool(ToolPart),
}

/// Starts a turn. With `stream: true` the answer is the turn's events as
/// SSE, ending after `done` / `error` or at an `input_required`; without,
/// a turn paused at an `input_required` answers `status: "waiting_input"`
/// with `pending_input` and the text so far; else the
/// turn's text, parts and metered usage once it ends.
#[utoipa::path(post, path = "/v1/sessions/{id}/messages", tag = "sessions", request_body = SendMessage,
    responses(
        (status = 200, description = "The turn (JSON), or its events (text/event-stream)"),
        (status = 400, body = ErrorBody), (status = 402, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ))]
async fn send_message(
    State(projects): State<Arc<Projects>>,
    TenantSession { id, sessions, .. }: TenantSession,
    ApiJson(request): ApiJson<SendMessage>,
) -> Result<Response, ApiError> {
    // Over a budget: refused before anything runs.
    projects.ledger().check_session_budgets(&id)?;
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
    let mut events = sessions.subscribe(&id, started.after).await?;
    if stream {
        return Ok(sse::stream(events));
    }
    // A turn that stops for a person ends this answer as it ends a stream:
    // the client gets what the turn said so far and the pending input, and
    // the `PUT` of the decision returns the rest. (Waiting for the turn's
    // end here would hold the request until the approval timed out.)
    let mut finished = started.finished;
    let mut ended = None;
    loop {
        // A turn taken back (its message never durable) publishes nothing:
        // its end comes only through `finished`.
        let item = tokio::select! {
            item = events.recv() => item,
            summary = &mut finished => {
                ended = Some(summary);
                None
            }
        };
        let Some(Published::Event(envelope)) = item else {
            break;
        };
        if let Event::InputRequired(pending) = &envelope.event {
            let events = sessions.events_after(&id, started.after)?;
            let text: String = events
                .iter()
                .filter_map(|e| match &e.event {
                    Event::Text(data) => Some(data.part.text.as_str()),
                    _ => None,
                })
                .collect();
            return Ok(axum::Json(json!({
                "text": text,
                "session_id": id,
                "status": "waiting_input",
                "pending_input": pending,
                "messages": [{ "role": "assistant", "text": text, "parts": parts_of(&events) }],
            }))
            .into_response());
        }
        if envelope.event.ends_stream() {
            break;
        }
    }
    let summary = match ended {
        Some(summary) => summary,
        None => finished.await,
    }
    .map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "turn_lost",
            "the turn ended unexpectedly",
        )
    })?;
    let events = sessions.events_after(&id, started.after)?;
    // The org's own provider key refused: the protocol's 422, so the
    // caller knows its key (not the platform) needs fixing.
    if let Some(Event::Error(error)) = events.last().map(|e| &e.event)
        && error.code == karta_harness::ErrorCode::ByokKeyRejected
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "byok_key_rejected",
            error.message.clone(),
        ));
    }
    Ok(axum::Json(json!({
        "text": summary.text,
        "session_id": id,
        "agent": summary.agent,
        "status": summary.status,
        "messages": [{
            "id": summary.message_id, "role": "assistant", "text": summary.text,
            "parts": parts_of(&events),
        }],
        "usage": summary.usage,
    }))
    .into_response())
}

/// The message parts of a turn's events: text and reasoning deltas joined
/// by part id, tool calls in their last state.
fn parts_of(events: &[Envelope]) -> Vec<MessagePart> {
    let mut parts: Vec<MessagePart> = Vec::new();
    for envelope in events {
        let part = match &envelope.event {
            Event::Text(data) => MessagePart::Text(data.part.clone()),
            Event::Reasoning(data) => MessagePart::Reasoning(data.part.clone()),
            Event::ToolUse(data) => MessagePart::Tool(data.part.clone()),
            _ => continue,
        };
        let existing = parts.iter_mut().find(|p| match (&**p, &part) {
            (MessagePart::Text(a), MessagePart::Text(b)) => a.id == b.id,
            (MessagePart::Reasoning(a), MessagePart::Reasoning(b)) => a.id == b.id,
            (MessagePart::Tool(a), MessagePart::Tool(b)) => a.id == b.id,
            _ => false,
        });
        match (existing, part) {
            (Some(MessagePart::Text(a)), MessagePart::Text(b)) => a.text.push_str(&b.text),
            (Some(MessagePart::Reasoning(a)), MessagePart::Reasoning(b)) => {
                a.text.push_str(&b.text)
            }
            (Some(existing), part) => *existing = part,
            (None, part) => parts.push(part),
        }
    }
    parts
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AnswerInput {
    /// `approve_once`, `approve_session` or `deny` (`allow` = `approve_once`).
    #[schema(value_type = String)]
    decision: Decision,
}

/// Answers an approval; returns the continuation — the turn's events up to
/// its end or its next `input_required` — and the session.
#[utoipa::path(put, path = "/v1/sessions/{id}/inputs/{request_id}", tag = "sessions", request_body = AnswerInput,
    responses((status = 200, description = "`{events, session}`"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn answer_input(
    TenantSession { id, sessions, .. }: TenantSession,
    ApiPath(InputPath { request_id }): ApiPath<InputPath>,
    ApiJson(request): ApiJson<AnswerInput>,
) -> Result<Response, ApiError> {
    let after = sessions.last_seq(&id).await?;
    let mut events = sessions.subscribe(&id, after).await?;
    sessions.answer(&id, &request_id, request.decision).await?;
    let mut continuation: Vec<StreamItem> = Vec::new();
    while let Some(item) = events.recv().await {
        match item {
            Published::Event(envelope) => {
                let ends = envelope.event.ends_stream();
                continuation.push(StreamItem::Logged(Envelope::clone(&envelope)));
                if ends {
                    break;
                }
            }
            Published::Failed(error) => {
                continuation.push(StreamItem::Unlogged(Event::Error(error)));
                break;
            }
        }
    }
    Ok(axum::Json(json!({
        "events": continuation,
        "session": sessions.object(&id).await?,
    }))
    .into_response())
}

#[derive(Deserialize)]
struct EventsQuery {
    after: Option<String>,
}

/// The log as SSE: every event after `after` (or `Last-Event-ID`), then the
/// running turn live until it ends or pauses.
#[utoipa::path(get, path = "/v1/sessions/{id}/events", tag = "sessions",
    params(("after" = Option<u64>, Query, description = "Replay events above this sequence number")),
    responses((status = 200, description = "text/event-stream"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn events(
    TenantSession { id, sessions, .. }: TenantSession,
    ApiQuery(query): ApiQuery<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let after = sse::resume_after(query.after, &headers)?;
    let events = sessions.subscribe(&id, after).await?;
    Ok(sse::stream(events))
}

/// Stops the running turn (it ends with `done`, status `cancelled`).
#[utoipa::path(post, path = "/v1/sessions/{id}/cancel", tag = "sessions",
    responses((status = 200, description = "`{cancelled, session}`"), (status = 404, body = ErrorBody)))]
async fn cancel(TenantSession { id, sessions, .. }: TenantSession) -> Result<Response, ApiError> {
    let cancelled = sessions.cancel(&id).await?;
    Ok(axum::Json(json!({
        "cancelled": cancelled,
        "session": sessions.object(&id).await?,
    }))
    .into_response())
}
