//! `POST …/managed-agents/sessions/{id}/events`: what the user does, each
//! answered 202 at once; what follows is read from the log
//! ([`super::stream`]).
//!
//! | `type` | fields | effect |
//! | --- | --- | --- |
//! | `user.message` | `text` (or `content: [{type: "text", text}]`) | starts a turn in the background (402 over a budget, 409 while a turn runs) |
//! | `user.tool_confirmation` | `request_id`, `result`: `approve_once` \| `approve_session` \| `deny` (`allow` = `approve_once`) | answers the approval the turn waits for (404: no such pending request) |
//! | `user.interrupt` | | cancels the running turn, if any (its log ends with `session.status_idle`, status `cancelled`) |
//!
//! Any other `type` is a 400. The 202 body is `{type, session_id, after}`:
//! `after` is the log's last `seq` before what this event caused, the
//! cursor to stream from.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use karta_harness::Decision;
use serde::Deserialize;
use serde_json::json;

use super::super::error::{ApiError, ErrorBody};
use super::super::extract::ApiJson;
use super::super::tenant::TenantSession;
use crate::projects::Projects;
use crate::session::MessageRequest;

/// A block of a message's `content`.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum ContentBlock {
    /// Text.
    Text { text: String },
}

/// What the user did.
#[derive(Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub(super) enum UserEvent {
    /// Says something: starts a turn.
    #[serde(rename = "user.message")]
    Message {
        text: Option<String>,
        #[serde(default)]
        content: Vec<ContentBlock>,
    },
    /// Answers an approval.
    #[serde(rename = "user.tool_confirmation")]
    ToolConfirmation {
        request_id: String,
        result: Decision,
    },
    /// Stops the running turn.
    #[serde(rename = "user.interrupt")]
    Interrupt {},
}

/// Sends a user event: a message (starts a turn), a tool confirmation, an
/// interrupt.
#[utoipa::path(post, path = "/v1/managed-agents/sessions/{id}/events", tag = "managed-agents",
    request_body(content = serde_json::Value, description = "`{type: \"user.message\", text}` | `{type: \"user.tool_confirmation\", request_id, result}` | `{type: \"user.interrupt\"}`"),
    responses(
        (status = 202, description = "`{type, session_id, after}`"),
        (status = 400, body = ErrorBody), (status = 402, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody),
    ))]
pub(super) async fn post_event(
    State(projects): State<Arc<Projects>>,
    TenantSession { id, sessions, .. }: TenantSession,
    ApiJson(event): ApiJson<UserEvent>,
) -> Result<Response, ApiError> {
    let (kind, after, extra) = match event {
        UserEvent::Message { text, content } => {
            let text = match text {
                Some(text) => text,
                None => content
                    .into_iter()
                    .map(|ContentBlock::Text { text }| text)
                    .collect::<Vec<_>>()
                    .join("\n"),
            };
            // Over a budget: refused before anything runs.
            projects.ledger().check_session_budgets(&id)?;
            let started = sessions
                .send(
                    &id,
                    MessageRequest {
                        text,
                        ..MessageRequest::default()
                    },
                )
                .await?;
            // The turn goes on in its task; its outcome is in the log.
            drop(started.finished);
            ("user.message", started.after, json!({}))
        }
        UserEvent::ToolConfirmation { request_id, result } => {
            let after = sessions.last_seq(&id).await?;
            sessions.answer(&id, &request_id, result).await?;
            ("user.tool_confirmation", after, json!({}))
        }
        UserEvent::Interrupt {} => {
            let after = sessions.last_seq(&id).await?;
            let cancelled = sessions.cancel(&id).await?;
            ("user.interrupt", after, json!({ "cancelled": cancelled }))
        }
    };
    let mut body = json!({ "type": kind, "session_id": id, "after": after });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}
