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
//!
//! A process harness (Claude Code, OpenCode) calls plugin tools over MCP
//! (`crate::mcp`), outside the turn's own code. Those calls are gated here
//! too: while a turn runs, its [`TurnGate`] is open on the session and an
//! MCP call of a tool that needs approval asks through it — the same
//! `input_required` event in the same log, the same `PUT` answer. With no
//! turn running there is nobody to ask in, so such a call is denied.
//!
//! A harness usually asks first through its own permission prompt
//! (`TurnHost::request_approval`); an `approve_once` given there leaves a
//! one-shot grant for exactly that tool and input, which the MCP call that
//! follows consumes, so a person is not asked twice for one call.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
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

/// One-shot grants kept per turn (a harness that asks and never calls must
/// not grow the list without end).
const MAX_GRANTS: usize = 64;

/// Requests of a session waiting for a person, and the running turn's gate.
#[derive(Default)]
pub(crate) struct Approvals {
    pending: Mutex<HashMap<String, Pending>>,
    /// The running turn's gate, while its harness runs.
    gate: Mutex<Option<Arc<TurnGate>>>,
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

    /// Opens `gate` for calls made from outside the turn (MCP) until the
    /// returned guard is dropped.
    pub(crate) fn open_gate(&self, gate: TurnGate) -> GateGuard<'_> {
        *lock(&self.gate) = Some(Arc::new(gate));
        GateGuard { approvals: self }
    }

    /// Whether a call of `tool` (which needs approval) with `input`, made
    /// from outside the turn's own code, may run. `approved_before`: the
    /// session's record already approves `tool` (`approve_session` in an
    /// earlier turn). Otherwise the running turn's approvals decide — a
    /// session approval or a one-shot grant from this turn — and failing
    /// those, a person asked through the running turn. `Err` says why not.
    pub(crate) async fn authorize(
        &self,
        tool: &str,
        input: &Value,
        approved_before: bool,
    ) -> Result<(), &'static str> {
        if approved_before {
            return Ok(());
        }
        let Some(gate) = lock(&self.gate).clone() else {
            return Err("this tool needs a person's approval, and no turn is running to ask in");
        };
        let approvals = &gate.approvals;
        if approvals.is_approved(tool) || approvals.take_grant(tool, input) {
            return Ok(());
        }
        let emit = |event| gate.emit(event);
        match approvals.ask(self, emit, &gate.open, tool, input).await {
            Some(Decision::ApproveOnce | Decision::ApproveSession) => Ok(()),
            Some(Decision::Deny) => Err("a person denied this tool call"),
            None => Err("the approval request timed out or the turn ended"),
        }
    }
}

/// Closes a [`TurnGate`] when dropped.
pub(crate) struct GateGuard<'a> {
    approvals: &'a Approvals,
}

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        if let Some(gate) = lock(&self.approvals.gate).take() {
            gate.close();
        }
    }
}

/// The running turn's approvals as seen from outside the turn (an MCP call
/// of a process harness): its approvals, and a way to put an
/// `input_required` into its event channel while its harness runs.
pub(crate) struct TurnGate {
    approvals: Arc<TurnApprovals>,
    /// The turn's event channel; taken when the gate closes, so nothing
    /// from outside lands in the log after the harness's last event, and
    /// the turn's writer is not kept waiting by a call in flight.
    events: Mutex<Option<mpsc::UnboundedSender<Emitted>>>,
    /// Cancelled when the gate closes or the turn is cancelled: a request
    /// still waiting then counts as unanswered (denied).
    open: CancellationToken,
}

impl TurnGate {
    /// A gate over a turn's `approvals` and `events`; `open` is a child of
    /// the turn's cancel token.
    pub(crate) fn new(
        approvals: Arc<TurnApprovals>,
        events: mpsc::UnboundedSender<Emitted>,
        open: CancellationToken,
    ) -> Self {
        Self {
            approvals,
            events: Mutex::new(Some(events)),
            open,
        }
    }

    /// Sends `event` into the turn, unless the gate closed; under the lock
    /// `close` takes, so the two cannot interleave.
    fn emit(&self, event: Event) -> bool {
        match lock(&self.events).as_ref() {
            Some(events) => events.send(Emitted { event, raw: None }).is_ok(),
            None => false,
        }
    }

    fn close(&self) {
        lock(&self.events).take();
        self.open.cancel();
    }
}

/// One turn's side of approvals: what was approved for the session, and
/// how to ask.
pub(crate) struct TurnApprovals {
    /// Tools approved for the whole session (loaded from the record, grown
    /// by `approve_session`, saved when the turn ends).
    approved: Mutex<BTreeSet<String>>,
    /// `approve_once` answers given to the harness's own permission prompt,
    /// each good for one run of that tool with that input (the MCP call
    /// the harness makes next).
    grants: Mutex<VecDeque<(String, Value)>>,
    timeout: Duration,
}

impl TurnApprovals {
    pub(crate) fn new(approved: BTreeSet<String>, timeout: Duration) -> Self {
        Self {
            approved: Mutex::new(approved),
            grants: Mutex::default(),
            timeout,
        }
    }

    /// Remembers one approved run of `tool` with `input`.
    pub(crate) fn grant_once(&self, tool: &str, input: &Value) {
        let mut grants = lock(&self.grants);
        if grants.len() == MAX_GRANTS {
            grants.pop_front();
        }
        grants.push_back((tool.to_owned(), input.clone()));
    }

    /// Takes the one-shot grant for `tool` with exactly `input`, if any.
    pub(crate) fn take_grant(&self, tool: &str, input: &Value) -> bool {
        let mut grants = lock(&self.grants);
        match grants.iter().position(|(t, i)| t == tool && i == input) {
            Some(index) => grants.remove(index).is_some(),
            None => false,
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

    /// Asks a person about one call of `tool` with `input`, putting the
    /// request into the turn with `emit` (false: it could not, the turn is
    /// over); resolves with the decision, or `None` when the request could
    /// not be made, timed out or the turn was cancelled.
    pub(crate) async fn ask(
        &self,
        session: &Approvals,
        emit: impl FnOnce(Event) -> bool,
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
        if cancel.is_cancelled() || !emit(Event::InputRequired(request)) {
            // Nobody would see the request: no answer, so no run.
            lock(&session.pending).remove(&request_id);
            return None;
        }
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
