//! Approvals: a tool call that needs a person waits here until someone
//! answers `PUT …/inputs/{request_id}`, the request times out, or the turn
//! is cancelled.
//!
//! The request is an `input_required` event sent into the turn's own event
//! channel (so it is logged in order with the harness's events); the
//! answer goes back to the waiting call over a oneshot. An
//! `approve_session` answer is remembered by the turn ([`TurnApprovals`])
//! and saved with the turn's record when the turn ends — not by a detached
//! write that a delete could race.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use karta_harness::{Decision, Emitted, Event, InputKind, InputRequiredData};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{SessionError, lock};

/// The answers a person may give.
const OPTIONS: [Decision; 3] = [
    Decision::ApproveOnce,
    Decision::ApproveSession,
    Decision::Deny,
];

/// Requests of a session waiting for a person.
#[derive(Default)]
pub(crate) struct Approvals {
    pending: Mutex<HashMap<String, Pending>>,
}

struct Pending {
    request: InputRequiredData,
    answer: oneshot::Sender<Decision>,
}

impl Approvals {
    /// The first request waiting, for the session object.
    pub(crate) fn first_pending(&self) -> Option<InputRequiredData> {
        lock(&self.pending)
            .values()
            .next()
            .map(|p| p.request.clone())
    }

    /// Answers request `request_id`.
    pub(crate) fn answer(&self, request_id: &str, decision: Decision) -> Result<(), SessionError> {
        let pending = lock(&self.pending)
            .remove(request_id)
            .ok_or_else(|| SessionError::NoSuchInput(request_id.to_owned()))?;
        // The turn may have ended meanwhile; then nobody waits any more.
        let _ = pending.answer.send(decision);
        Ok(())
    }

    /// Drops every request (their turns see no answer).
    pub(crate) fn clear(&self) {
        lock(&self.pending).clear();
    }
}

/// One turn's side of approvals: what was approved for the session, and
/// how to ask.
pub(crate) struct TurnApprovals {
    /// Tools approved for the whole session (loaded from the record, grown
    /// by `approve_session`, saved when the turn ends).
    approved: Mutex<BTreeSet<String>>,
    timeout: Duration,
}

impl TurnApprovals {
    pub(crate) fn new(approved: BTreeSet<String>, timeout: Duration) -> Self {
        Self {
            approved: Mutex::new(approved),
            timeout,
        }
    }

    /// Whether `tool` was approved for the session.
    pub(crate) fn is_approved(&self, tool: &str) -> bool {
        lock(&self.approved).contains(tool)
    }

    /// The tools approved for the session, to save with the turn.
    pub(crate) fn approved(&self) -> BTreeSet<String> {
        lock(&self.approved).clone()
    }

    /// Asks a person about one call of `tool` with `input`; resolves with
    /// the decision, or `None` when the request timed out or the turn was
    /// cancelled.
    pub(crate) async fn ask(
        &self,
        session: &Approvals,
        events: &mpsc::UnboundedSender<Emitted>,
        cancel: &CancellationToken,
        tool: &str,
        input: &Value,
    ) -> Option<Decision> {
        let request_id = format!("req_{}", uuid::Uuid::new_v4().simple());
        let request = InputRequiredData {
            request_id: request_id.clone(),
            kind: InputKind::ToolPermission,
            tool: tool.to_owned(),
            input: input.clone(),
            message: format!("Allow the tool `{tool}` to run with this input?"),
            options: OPTIONS.to_vec(),
        };
        let (tx, rx) = oneshot::channel();
        lock(&session.pending).insert(
            request_id.clone(),
            Pending {
                request: request.clone(),
                answer: tx,
            },
        );
        let _ = events.send(Emitted {
            event: Event::InputRequired(request),
            raw: None,
        });
        let decision = tokio::select! {
            answer = tokio::time::timeout(self.timeout, rx) => answer.ok().and_then(Result::ok),
            () = cancel.cancelled() => None,
        };
        lock(&session.pending).remove(&request_id);
        if decision == Some(Decision::ApproveSession) {
            lock(&self.approved).insert(tool.to_owned());
        }
        decision
    }
}
