//! The render-ready transcript: `{messages: [{id, role, parts, created_at}]}`
//! where `parts` are `{type: "text", text}` and `{type: "tool", tool, input,
//! output, is_error}` in the order they happened.
//!
//! Messages come from the stored transcript; an assistant message's parts
//! from its turn's events. Turns are told apart in the log by their
//! terminal events (`done`, `error`): the k-th user message started the
//! k-th turn (a message whose turn could not start is removed from the
//! transcript; a turn cut by a crash ends with an `interrupted` error), and
//! its answer, if saved, follows it. A running turn's answer is not here
//! yet — a client replays it from the log.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use karta_harness::{Envelope, Event, ToolStatus};
use serde::Deserialize;
use serde_json::{Value, json};

use super::super::error::{ApiError, ErrorBody};
use super::super::extract::ApiQuery;
use super::super::tenant::{TenantSession, not_found};
use crate::projects::Projects;
use crate::session::SessionError;
use crate::store::{Role, TranscriptMessage};

/// The longest title, in characters.
const TITLE_CHARS: usize = 80;

/// A listing's title: the first message's first line, shortened.
pub(super) fn title(text: &str) -> String {
    let line = text.trim().lines().next().unwrap_or_default().trim();
    if line.chars().count() <= TITLE_CHARS {
        return line.to_owned();
    }
    let mut short: String = line.chars().take(TITLE_CHARS - 1).collect();
    short.push('…');
    short
}

/// The parts of one turn's events: text deltas joined by part id, tool
/// calls in their last state.
fn parts(events: &[&Envelope]) -> Vec<Value> {
    let mut parts: Vec<(String, Value)> = Vec::new();
    for envelope in events {
        match &envelope.event {
            Event::Text(data) => {
                let key = format!("text:{}", data.part.id);
                match parts.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, part)) => {
                        let joined = format!(
                            "{}{}",
                            part["text"].as_str().unwrap_or_default(),
                            data.part.text
                        );
                        part["text"] = json!(joined);
                    }
                    None => parts.push((key, json!({ "type": "text", "text": data.part.text }))),
                }
            }
            Event::ToolUse(data) => {
                let key = format!("tool:{}", data.part.id);
                let state = &data.part.state;
                let output = match (&state.output, &state.error) {
                    (_, Some(error)) => json!(error.message),
                    (Some(output), None) => output.clone(),
                    (None, None) => Value::Null,
                };
                let part = json!({
                    "type": "tool",
                    "id": data.part.id,
                    "tool": data.part.tool,
                    "input": state.input,
                    "output": output,
                    "is_error": state.status == ToolStatus::Error,
                    "fuel": data.fuel,
                    "duration_ms": data.duration_ms,
                });
                match parts.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, existing)) => *existing = part,
                    None => parts.push((key, part)),
                }
            }
            _ => {}
        }
    }
    parts.into_iter().map(|(_, part)| part).collect()
}

/// The messages of a transcript, with the parts of the turns in `log`.
pub(super) fn render(messages: &[TranscriptMessage], log: &[Envelope]) -> Vec<Value> {
    // The log cut into turns at their terminal events.
    let mut turns: Vec<Vec<&Envelope>> = vec![Vec::new()];
    for envelope in log {
        if let Some(turn) = turns.last_mut() {
            turn.push(envelope);
        }
        if envelope.event.ends_turn() {
            turns.push(Vec::new());
        }
    }
    let mut turn = None::<usize>;
    let mut rendered = Vec::new();
    for message in messages {
        let mut message_parts = Vec::new();
        match message.role {
            Role::User => turn = Some(turn.map_or(0, |t| t + 1)),
            Role::Assistant => {
                if let Some(events) = turn.and_then(|t| turns.get(t)) {
                    message_parts = parts(events);
                }
            }
        }
        let has_text = message_parts.iter().any(|p| p["type"] == "text");
        if !has_text && !message.text.is_empty() {
            message_parts.push(json!({ "type": "text", "text": message.text }));
        }
        let role = match message.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        rendered.push(json!({
            "id": message.id,
            "role": role,
            "parts": message_parts,
            "created_at": message.created_at,
            "status": message.status,
        }));
    }
    rendered
}

#[derive(Deserialize)]
pub(super) struct TranscriptQuery {
    end_user: Option<String>,
}

/// The session's messages, render-ready; the end user (the token's `sub`,
/// else `?end_user=`) must be the session's (else 404).
#[utoipa::path(get, path = "/v1/managed-agents/sessions/{id}/transcript", tag = "managed-agents",
    params(("end_user" = Option<String>, Query, description = "The session's end user (a verified token's end user wins)")),
    responses((status = 200, description = "`{messages: [{id, role, parts, created_at}]}`"), (status = 404, body = ErrorBody)))]
pub(super) async fn transcript(
    State(projects): State<Arc<Projects>>,
    TenantSession {
        id,
        sessions,
        tenant,
    }: TenantSession,
    ApiQuery(query): ApiQuery<TranscriptQuery>,
) -> Result<Response, ApiError> {
    let end_user = tenant.end_user.clone().or(query.end_user);
    let record = projects
        .store()
        .session(&id)
        .map_err(SessionError::from)?
        .ok_or_else(not_found)?;
    let owner = record.scope.as_ref().and_then(|s| s.end_user_id.clone());
    if owner != end_user {
        return Err(not_found());
    }
    let messages = sessions.transcript(&id)?;
    let log = sessions.events_after(&id, 0)?;
    Ok(axum::Json(json!({
        "session_id": id,
        "messages": render(&messages, &log),
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_one_short_line() {
        assert_eq!(title("  hello\nworld"), "hello");
        let long = "x".repeat(200);
        assert_eq!(title(&long).chars().count(), TITLE_CHARS);
        assert!(title(&long).ends_with('…'));
    }
}
