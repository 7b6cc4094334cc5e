//! `POST …/v1/responses`: OpenAI Responses over a turn of a session — a new
//! one, or the session of `previous_response_id` (see the parent module).
//!
//! The answer is a `response` object (`output`: `message` items of
//! `output_text`, and an `mcp_call` item per tool call the app ran;
//! `usage` with `input_tokens`/`output_tokens`/`total_tokens`). Streaming
//! sends, each with a rising `sequence_number` from 0:
//! `response.created`, `response.in_progress`, then per message
//! `response.output_item.added`, `response.content_part.added`,
//! `response.output_text.delta` (only the new text), and at its end
//! `response.output_text.done`, `response.content_part.done`,
//! `response.output_item.done`; per tool call `output_item.added` /
//! `output_item.done`; last `response.completed` or `response.failed`.
//!
//! A response's id continues its session as `previous_response_id`: ids
//! are kept in the store's `openai_responses` tree (id → session and
//! project) unless `store: false`. Another tenant's id, or an unknown one,
//! is 404 `previous_response_not_found`. Sessions cannot branch: continuing
//! from an older response of a session continues the session as it is now.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::Event as Frame;
use axum::response::{IntoResponse, Response};
use karta_harness::{ErrorData, Event};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::chat::content_text;
use super::errors::{OpenAiError, OpenAiErrorBody, parse_body};
use super::response_events::ResponseEvents;
use super::{Speaker, Target, fold, start};
use crate::api::{ApiError, ApiJson, Tenant};
use crate::projects::Projects;
use crate::session::SessionError;

/// The store tree of response ids: `resp_…` → [`StoredResponse`].
const TREE: &str = "openai_responses";

/// Where a response id leads.
#[derive(Serialize, Deserialize)]
struct StoredResponse {
    session_id: String,
    project_id: String,
}

/// A Responses request (model tuning parameters are accepted and left to
/// the app, as for chat completions).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // the accepted, unused parameters
pub(super) struct ResponsesRequest {
    /// Echoed back as `model`.
    model: Option<String>,
    /// A string, or a list of messages (the last one the user's).
    #[schema(value_type = Object)]
    input: Value,
    /// Instructions for this turn.
    instructions: Option<String>,
    /// Continue that response's session.
    previous_response_id: Option<String>,
    /// `false`: the id is not kept (it cannot be continued).
    store: Option<bool>,
    stream: Option<bool>,
    #[schema(value_type = Option<Vec<Object>>)]
    tools: Option<Vec<Value>>,
    background: Option<bool>,
    #[schema(value_type = Option<Object>)]
    conversation: Option<Value>,
    #[schema(value_type = Option<Object>)]
    prompt: Option<Value>,
    // Accepted, not used.
    #[schema(value_type = Option<Object>)]
    tool_choice: Option<Value>,
    #[schema(value_type = Option<Object>)]
    parallel_tool_calls: Option<Value>,
    #[schema(value_type = Option<Object>)]
    max_tool_calls: Option<Value>,
    #[schema(value_type = Option<Object>)]
    temperature: Option<Value>,
    #[schema(value_type = Option<Object>)]
    top_p: Option<Value>,
    #[schema(value_type = Option<Object>)]
    top_logprobs: Option<Value>,
    #[schema(value_type = Option<Object>)]
    max_output_tokens: Option<Value>,
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    #[schema(value_type = Option<Object>)]
    user: Option<Value>,
    #[schema(value_type = Option<Object>)]
    safety_identifier: Option<Value>,
    #[schema(value_type = Option<Object>)]
    prompt_cache_key: Option<Value>,
    #[schema(value_type = Option<Object>)]
    prompt_cache_retention: Option<Value>,
    #[schema(value_type = Option<Object>)]
    reasoning: Option<Value>,
    #[schema(value_type = Option<Object>)]
    text: Option<Value>,
    #[schema(value_type = Option<Object>)]
    truncation: Option<Value>,
    #[schema(value_type = Option<Object>)]
    service_tier: Option<Value>,
    #[schema(value_type = Option<Object>)]
    include: Option<Value>,
    #[schema(value_type = Option<Object>)]
    stream_options: Option<Value>,
}

impl ResponsesRequest {
    /// Refuses what cannot be honoured; the turn's text.
    fn turn_text(&self) -> Result<String, OpenAiError> {
        let refuse = |param: &str, message: &str| Err(OpenAiError::invalid(Some(param), message));
        if self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return refuse(
                "tools",
                "client-defined tools are not supported: the app's own tools run on the host",
            );
        }
        if self.background == Some(true) {
            return refuse("background", "background responses are not supported");
        }
        if self.conversation.as_ref().is_some_and(|c| !c.is_null()) {
            return refuse("conversation", "use previous_response_id to continue");
        }
        if self.prompt.as_ref().is_some_and(|p| !p.is_null()) {
            return refuse("prompt", "prompt templates are not supported");
        }
        let mut instructions: Vec<String> = self.instructions.iter().cloned().collect();
        let items = match &self.input {
            Value::String(text) => return Ok(fold(&instructions, &[], text)),
            Value::Array(items) => items,
            _ => return refuse("input", "input must be a string or a list of messages"),
        };
        let mut history = Vec::new();
        let mut last = None;
        for (index, item) in items.iter().enumerate() {
            let param = format!("input[{index}]");
            if item.get("type").is_some_and(|t| t != "message") {
                return refuse(&param, "only message items are supported");
            }
            let text = content_text(
                item.get("content"),
                &format!("{param}.content"),
                &["input_text", "output_text"],
            )?;
            let role = item["role"].as_str().unwrap_or_default();
            let is_last = index + 1 == items.len();
            match role {
                "user" if is_last => last = Some(text),
                "user" => history.push((Speaker::User, text)),
                "assistant" => history.push((Speaker::Assistant, text)),
                "system" | "developer" => instructions.push(text),
                _ => return refuse(&format!("{param}.role"), "unknown role"),
            }
        }
        match last {
            Some(last) => Ok(fold(&instructions, &history, &last)),
            None => refuse("input", "the last input item must be the user's message"),
        }
    }
}

/// The session a previous response id leads to, if it is the tenant's.
fn previous_session(projects: &Projects, tenant: &Tenant, id: &str) -> Result<String, OpenAiError> {
    let not_found = || OpenAiError {
        status: StatusCode::NOT_FOUND,
        kind: "invalid_request_error",
        param: Some("previous_response_id".into()),
        code: Some("previous_response_not_found".into()),
        message: format!("Previous response with id '{id}' not found."),
    };
    let tree = projects.store().tree(TREE).map_err(SessionError::from)?;
    let stored: StoredResponse = match tree
        .get(id)
        .map_err(|e| SessionError::from(crate::store::StoreError::from(e)))?
    {
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|_| not_found())?,
        None => return Err(not_found()),
    };
    let record = projects
        .store()
        .session(&stored.session_id)
        .map_err(SessionError::from)?
        .filter(|record| stored.project_id == tenant.project.id && tenant.owns(projects, record))
        .ok_or_else(not_found)?;
    Ok(record.id)
}

/// Keeps `response_id` → the session, for `previous_response_id`.
fn remember(
    projects: &Projects,
    tenant: &Tenant,
    response_id: &str,
    session_id: &str,
) -> Result<(), OpenAiError> {
    let stored = StoredResponse {
        session_id: session_id.to_owned(),
        project_id: tenant.project.id.clone(),
    };
    let bytes = serde_json::to_vec(&stored).map_err(|e| SessionError::Invalid(e.to_string()))?;
    let tree = projects.store().tree(TREE).map_err(SessionError::from)?;
    tree.insert(response_id, bytes)
        .map_err(|e| SessionError::from(crate::store::StoreError::from(e)))?;
    Ok(())
}

/// OpenAI Responses: a turn of a new session, or of `previous_response_id`'s;
/// `stream: true` answers the Responses stream events as SSE.
#[utoipa::path(post, path = "/v1/responses", tag = "openai", request_body = ResponsesRequest,
    responses(
        (status = 200, description = "A `response` (JSON), or `response.*` events (text/event-stream)"),
        (status = 400, body = OpenAiErrorBody), (status = 401, body = OpenAiErrorBody), (status = 402, body = OpenAiErrorBody),
        (status = 404, body = OpenAiErrorBody), (status = 409, body = OpenAiErrorBody), (status = 413, body = OpenAiErrorBody),
    ))]
pub(super) async fn create(
    State(projects): State<Arc<Projects>>,
    tenant: Result<Tenant, ApiError>,
    body: Result<ApiJson<Value>, ApiError>,
) -> Result<Response, OpenAiError> {
    let tenant = tenant?;
    let request: ResponsesRequest = parse_body(body)?;
    let text = request.turn_text()?;
    let target = match &request.previous_response_id {
        Some(previous) => Target::Existing {
            session_id: previous_session(&projects, &tenant, previous)?,
        },
        None => Target::Fresh {
            api: "openai.responses",
        },
    };
    let mut run = start(&projects, &tenant, target, text).await?;
    let mut events = ResponseEvents::new(
        request.model.as_deref().unwrap_or("karta"),
        request.instructions.clone(),
        request.previous_response_id.clone(),
        &run.sessions.app().name,
    );
    if request.store != Some(false) {
        remember(&projects, &tenant, &events.id, &run.session_id)?;
    }
    let frame = |event: Value| {
        let kind = event["type"].as_str().unwrap_or_default().to_owned();
        Frame::default().event(kind).data(event.to_string())
    };
    if request.stream == Some(true) {
        let first = events.start().into_iter().map(frame).collect();
        return Ok(super::sse(run, first, move |event| {
            events.on_event(event).into_iter().map(frame).collect()
        }));
    }
    while let Some(event) = run.next().await {
        events.on_event(&event);
        match &event {
            Event::Done(_) => return Ok(axum::Json(events.response()).into_response()),
            Event::Error(error) => return Err(OpenAiError::from_turn(error)),
            _ => {}
        }
    }
    Err(OpenAiError::from_turn(&ErrorData {
        code: karta_harness::ErrorCode::HarnessError,
        message: "the turn ended without an answer".into(),
    }))
}
