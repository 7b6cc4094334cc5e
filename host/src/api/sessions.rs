//! The session routes.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use karta_harness::{Decision, Envelope, Event, ReasoningPart, TextPart, ToolPart};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::sse;
use super::tenant::Tenant;
use crate::projects::Projects;
use crate::session::{MessageRequest, Published};
use crate::store::ParticipantType;

/// A session route's path: its session (project routes also carry `org`
/// and `project`, which [`Tenant`] reads).
#[derive(Deserialize)]
struct SessionPath {
    id: String,
}

/// An approval's path.
#[derive(Deserialize)]
struct InputPath {
    id: String,
    request_id: String,
}

pub(super) fn routes() -> OpenApiRouter<Arc<Projects>> {
    OpenApiRouter::new()
        .routes(routes!(create_session, list_sessions))
        .routes(routes!(get_session, delete_session))
        .routes(routes!(send_message))
        .routes(routes!(answer_input))
        .routes(routes!(transcript))
        .routes(routes!(events))
        .routes(routes!(cancel))
}

/// Names the session in the request's span.
fn in_span(id: &str) {
    tracing::Span::current().record("session", id);
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateSession {
    /// Searchable string pairs (at most 50), e.g. `customer_id`.
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    /// Resume this session if it exists, else create it with this id
    /// (`[A-Za-z0-9_-]{1,64}`).
    session_id: Option<String>,
}

/// Creates a session, or resumes the one `session_id` names.
#[utoipa::path(post, path = "/v1/sessions", tag = "sessions", request_body = CreateSession,
    responses(
        (status = 201, description = "The session object"),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody),
    ))]
async fn create_session(
    State(projects): State<Arc<Projects>>,
    tenant: Tenant,
    ApiJson(mut request): ApiJson<CreateSession>,
) -> Result<Response, ApiError> {
    let end_user = tenant.end_user_for(&mut request.metadata)?;
    // A known id resumes — the caller's own session only. Another
    // tenant's id is taken, and saying more would tell whose it is.
    if let Some(id) = &request.session_id {
        let existing = projects
            .store()
            .session(id)
            .map_err(crate::session::SessionError::from)?;
        if let Some(record) = existing {
            if !tenant.owns(&projects, &record) {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "session_id_taken",
                    "this session_id is in use; choose another",
                ));
            }
            let sessions = projects.for_record(&record).await?;
            let object = sessions.object(id).await?;
            in_span(&object.id);
            return Ok((StatusCode::CREATED, axum::Json(object)).into_response());
        }
    }
    let sessions = projects
        .for_new_session(&tenant.org, &tenant.project)
        .await?;
    let object = sessions
        .create_billed(
            request.session_id,
            request.metadata,
            end_user,
            tenant.caller.billing_credential(),
        )
        .await?;
    in_span(&object.id);
    Ok((StatusCode::CREATED, axum::Json(object)).into_response())
}

/// Lists the project's sessions, newest first; every query parameter but
/// `page`, `per_page` (1–100, default 20) and `end_user` (that end user's
/// sessions; a token's verified end user overrides it) filters on
/// metadata.
#[utoipa::path(get, path = "/v1/sessions", tag = "sessions",
    params(
        ("page" = Option<u64>, Query, description = "1-based page"),
        ("per_page" = Option<u64>, Query, description = "Sessions per page, 1-100"),
        ("end_user" = Option<String>, Query, description = "Only this end user's sessions"),
    ),
    responses((status = 200, description = "`{sessions, page, per_page, total}`"), (status = 400, body = ErrorBody)))]
async fn list_sessions(
    State(projects): State<Arc<Projects>>,
    tenant: Tenant,
    ApiQuery(mut query): ApiQuery<BTreeMap<String, String>>,
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
    let end_user = query.remove("end_user");
    let scope = tenant.listing_key(end_user.as_deref());
    let (list, total) = projects.list_sessions(&scope, &query, page, per_page)?;
    Ok(axum::Json(json!({
        "sessions": list, "page": page, "per_page": per_page, "total": total,
    }))
    .into_response())
}

/// The session object.
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions",
    responses((status = 200, description = "The session object"), (status = 404, body = ErrorBody)))]
async fn get_session(
    State(projects): State<Arc<Projects>>,
    tenant: Tenant,
    ApiPath(SessionPath { id }): ApiPath<SessionPath>,
) -> Result<Response, ApiError> {
    in_span(&id);
    let sessions = tenant.session(&projects, &id).await?;
    Ok(axum::Json(sessions.object(&id).await?).into_response())
}

/// Deletes a session (cancelling its turn).
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "sessions",
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody)))]
async fn delete_session(
    State(projects): State<Arc<Projects>>,
    tenant: Tenant,
    ApiPath(SessionPath { id }): ApiPath<SessionPath>,
) -> Result<Response, ApiError> {
    in_span(&id);
    let sessions = tenant.session(&projects, &id).await?;
    sessions.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
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
    tenant: Tenant,
    ApiPath(SessionPath { id }): ApiPath<SessionPath>,
    ApiJson(request): ApiJson<SendMessage>,
) -> Result<Response, ApiError> {
    in_span(&id);
    let sessions = tenant.session(&projects, &id).await?;
    // Over a budget: refused before anything runs.
    let ledger = projects.ledger();
    if let Some(scope) = ledger.scope_of(&id) {
        ledger
            .meter()
            .check(
                &crate::billing::Ledger::budget_scopes(&scope),
                crate::billing::now_ms(),
            )
            .map_err(ApiError::from)?;
    }
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
    State(projects): State<Arc<Projects>>,
    tenant: Tenant,
    ApiPath(InputPath { id, request_id }): ApiPath<InputPath>,
    ApiJson(request): ApiJson<AnswerInput>,
) -> Result<Response, ApiError> {
    in_span(&id);
    let sessions = tenant.session(&projects, &id).await?;
    let after = sessions.last_seq(&id).await?;
    let mut events = sessions.subscribe(&id, after).await?;
    sessions.answer(&id, &request_id, request.decision).await?;
    let mut continuation: Vec<Value> = Vec::new();
    while let Some(item) = events.recv().await {
        match item {
            Published::Event(envelope) => {
                let ends = envelope.event.ends_stream();
                continuation.push(json!(&*envelope));
                if ends {
                    break;
                }
            }
            Published::Failed(error) => {
                continuation.push(json!({ "type": "error", "data": error }));
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

/// The transcript: every message with its sender.
#[utoipa::path(get, path = "/v1/sessions/{id}/transcript", tag = "sessions",
    responses((status = 200, description = "`{session_id, messages}`"), (status = 404, body = ErrorBody)))]
async fn transcript(
    State(projects): State<Arc<Projects>>,
    tenant: Tenant,
    ApiPath(SessionPath { id }): ApiPath<SessionPath>,
) -> Result<Response, ApiError> {
    in_span(&id);
    let sessions = tenant.session(&projects, &id).await?;
    let messages = sessions.transcript(&id)?;
    Ok(axum::Json(json!({ "session_id": id, "messages": messages })).into_response())
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
    State(projects): State<Arc<Projects>>,
    tenant: Tenant,
    ApiPath(SessionPath { id }): ApiPath<SessionPath>,
    ApiQuery(query): ApiQuery<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    in_span(&id);
    let sessions = tenant.session(&projects, &id).await?;
    let after = sse::resume_after(query.after, &headers)?;
    let events = sessions.subscribe(&id, after).await?;
    Ok(sse::stream(events))
}

/// Stops the running turn (it ends with `done`, status `cancelled`).
#[utoipa::path(post, path = "/v1/sessions/{id}/cancel", tag = "sessions",
    responses((status = 200, description = "`{cancelled, session}`"), (status = 404, body = ErrorBody)))]
async fn cancel(
    State(projects): State<Arc<Projects>>,
    tenant: Tenant,
    ApiPath(SessionPath { id }): ApiPath<SessionPath>,
) -> Result<Response, ApiError> {
    in_span(&id);
    let sessions = tenant.session(&projects, &id).await?;
    let cancelled = sessions.cancel(&id).await?;
    Ok(axum::Json(json!({
        "cancelled": cancelled,
        "session": sessions.object(&id).await?,
    }))
    .into_response())
}
