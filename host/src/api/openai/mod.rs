//! The OpenAI adapters: `POST …/v1/chat/completions` ([`chat`]) and
//! `POST …/v1/responses` ([`responses`]), so the official OpenAI SDKs talk
//! to a harness app with only `base_url` and `api_key` changed.
//!
//! They are served where the session routes are: on every project's routes
//! (`/{org}/{project}/v1/…`) and flat (`/v1/…`: a session token's project,
//! or the folder `karta serve DIR` serves) — [`Tenant`] decides, with the
//! same 401/403/404 answers, in OpenAI's error shape ([`errors`]).
//!
//! Each call is a turn of a session, run exactly as `POST
//! /v1/sessions/{id}/messages` runs one: the budget is checked before it
//! (402), a new session is pinned to the project's active release, usage is
//! the turn's metered `done` usage. What is particular to the adapters:
//!
//! - **The conversation is folded into the turn's message** ([`fold`]):
//!   system/developer messages (and `instructions`) become an
//!   `[Instructions]` block, earlier user/assistant messages a
//!   `[Conversation so far]` block, then the last user message. A single
//!   user message with nothing else is sent verbatim. (The app's own system
//!   prompt stays the app's; the folded instructions come on top of it.)
//!   Every chat completion is a fresh session; a response continues the
//!   session of its `previous_response_id`, whose memory already holds the
//!   earlier turns.
//! - **Approvals are denied.** Neither OpenAI API has a way to ask a person,
//!   so a tool call that needs approval (`input_required`) is answered
//!   `deny` at once: the model is told, the turn goes on and ends normally.
//!   Approve such tools through the native routes or managed agents.
//! - **The app's tools run on the host.** They are never offered to the
//!   client as `tool_calls` (it could not run them); client-defined `tools`
//!   are refused. Responses shows each call as an `mcp_call` output item.
//! - `model` is echoed back; the app's agent picks the model it runs.

mod chat;
mod errors;
mod response_events;
mod responses;

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event as Frame, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use karta_harness::{Decision, ErrorCode, Event};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::tenant::Tenant;
use crate::meter::BudgetScope;
use crate::projects::Projects;
use crate::session::{MessageRequest, Published, Sessions, Subscription};
pub use errors::OpenAiError;

pub(super) fn routes() -> OpenApiRouter<Arc<Projects>> {
    OpenApiRouter::new()
        .routes(routes!(chat::create))
        .routes(routes!(responses::create))
}

/// Seconds since the epoch (OpenAI's `created`).
fn now_secs() -> u64 {
    crate::billing::now_ms() / 1000
}

/// A random id with OpenAI's prefix (`chatcmpl-…`, `resp_…`, `msg_…`).
fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// Who said an earlier message of a folded conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speaker {
    User,
    Assistant,
}

/// The text of one turn for a conversation: the instructions, the earlier
/// messages and the last user message (see the module docs).
fn fold(instructions: &[String], history: &[(Speaker, String)], last: &str) -> String {
    if instructions.is_empty() && history.is_empty() {
        return last.to_owned();
    }
    let mut text = String::new();
    if !instructions.is_empty() {
        text.push_str("[Instructions]\n");
        text.push_str(&instructions.join("\n\n"));
        text.push_str("\n\n");
    }
    if !history.is_empty() {
        text.push_str("[Conversation so far]\n");
        for (speaker, said) in history {
            let who = match speaker {
                Speaker::User => "User",
                Speaker::Assistant => "Assistant",
            };
            text.push_str(&format!("{who}: {said}\n"));
        }
        text.push('\n');
    }
    text.push_str("[Message]\n");
    text.push_str(last);
    text
}

/// Where a call's turn runs.
enum Target {
    /// A new session, created for `api` (stamped in its metadata as
    /// `api`, so the operator can tell adapter sessions apart).
    Fresh { api: &'static str },
    /// An existing session of the tenant.
    Existing { session_id: String },
}

/// Starts a turn with `text`: in a new session of the tenant's project
/// (pinned to its active release), or in an existing one. Over a budget:
/// 402 before anything is created or run.
async fn start(
    projects: &Arc<Projects>,
    tenant: &Tenant,
    target: Target,
    text: String,
) -> Result<TurnRun, OpenAiError> {
    let meter = projects.ledger().meter();
    let now = crate::billing::now_ms();
    let (sessions, id) = match target {
        Target::Fresh { api } => {
            let mut metadata = BTreeMap::from([("api".to_owned(), api.to_owned())]);
            let end_user = tenant.end_user_for(&mut metadata)?;
            let credential = tenant.caller.billing_credential();
            let scopes = BudgetScope::for_call(
                &tenant.org.id,
                &tenant.project.id,
                end_user.as_deref(),
                credential.as_deref(),
            );
            meter.check(&scopes, now)?;
            let sessions = projects
                .for_new_session(&tenant.org, &tenant.project)
                .await?;
            let object = sessions
                .create_billed(None, metadata, end_user, credential)
                .await?;
            (sessions, object.id)
        }
        Target::Existing { session_id } => {
            let sessions = tenant.session(projects, &session_id).await?;
            projects.ledger().check_session_budgets(&session_id)?;
            (sessions, session_id)
        }
    };
    tracing::Span::current().record("session", id.as_str());
    let started = sessions
        .send(
            &id,
            MessageRequest {
                text,
                ..MessageRequest::default()
            },
        )
        .await?;
    let events = sessions.subscribe(&id, started.after).await?;
    Ok(TurnRun {
        sessions,
        session_id: id,
        events,
        ended: false,
    })
}

/// A running turn's events, in order, up to and including its terminal
/// `done` or `error`; approvals it asks for are denied on the way.
struct TurnRun {
    sessions: Arc<Sessions>,
    session_id: String,
    events: Subscription,
    ended: bool,
}

impl TurnRun {
    /// The next event; `None` after the terminal one. A stream that stops
    /// without one (the session deleted, the log unwritable) ends with an
    /// `error`.
    async fn next(&mut self) -> Option<Event> {
        if self.ended {
            return None;
        }
        loop {
            let event = match self.events.recv().await {
                Some(Published::Event(envelope)) => match &envelope.event {
                    Event::InputRequired(pending) => {
                        match self.deny(envelope.seq, &pending.request_id).await {
                            Ok(()) => continue,
                            Err(error) => Event::error(ErrorCode::HarnessError, error.to_string()),
                        }
                    }
                    event => event.clone(),
                },
                Some(Published::Failed(error)) => Event::Error(error),
                None => Event::error(ErrorCode::HarnessError, "the turn ended without an answer"),
            };
            self.ended = event.ends_turn();
            return Some(event);
        }
    }

    /// Answers `deny` to the approval the turn waits for, and follows the
    /// continuation (events after `seq`).
    async fn deny(
        &mut self,
        seq: u64,
        request_id: &str,
    ) -> Result<(), crate::session::SessionError> {
        self.events = self.sessions.subscribe(&self.session_id, seq).await?;
        self.sessions
            .answer(&self.session_id, request_id, Decision::Deny)
            .await
    }
}

/// The turn as Server-Sent Events: `first`, then what `map` makes of each
/// event (a keep-alive comment every 15 s while nothing happens).
fn sse<F>(run: TurnRun, first: Vec<Frame>, map: F) -> Response
where
    F: FnMut(&Event) -> Vec<Frame> + Send + 'static,
{
    let state = (Some(run), map, VecDeque::from(first));
    let frames =
        futures_util::stream::unfold(state, |(mut run, mut map, mut pending)| async move {
            loop {
                if let Some(frame) = pending.pop_front() {
                    return Some((Ok(frame), (run, map, pending)));
                }
                let event = run.as_mut()?.next().await;
                match event {
                    Some(event) => pending.extend(map(&event)),
                    None => run = None,
                }
            }
        });
    let frames: std::pin::Pin<Box<dyn Stream<Item = Result<Frame, Infallible>> + Send>> =
        Box::pin(frames);
    Sse::new(frames)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[cfg(test)]
mod tests;
