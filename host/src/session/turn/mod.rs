//! Running a turn: the turn is claimed and the user's message taken in
//! ([`start`]); a task runs the harness, one writer appends its events in
//! order, and the turn is saved and its terminal event published
//! ([`run`]). The harness gets the message before the store does: the
//! message's writes and their flush are made while the harness starts (it
//! takes far longer to ask the model). The writer holds the turn's events
//! until the message is durable, the client is answered only then, and
//! writes that fail take the turn back (`abandon`) before the client gets
//! its 503.
//!
//! The terminal event (`done` / `error`) is held back until the turn is
//! saved — history, transcript, the record with the approvals it gathered
//! and the end of its sequence reservation, flushed — and the session is
//! free for the next message. A client that sees `done` may send at once,
//! and that turn sees this one. Its `usage` is what the gateway metered for
//! the session during the turn, so `done`, the transcript and the meter
//! agree by construction.

mod finish;
mod message;
mod writer;

use std::sync::Arc;
use std::time::Instant;

use karta_harness::builtin::BuiltinHarness;
use karta_harness::{
    Emitted, ErrorCode, Event, Harness, TurnContext, TurnOutcome, TurnStatus, Usage,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::approvals::{TurnApprovals, TurnGate};
use super::live::LiveRef;
use super::tools::SessionTurnHost;
use super::{MessageRequest, SessionError, Sessions, StartedTurn, TurnSummary, lock};
use crate::metrics::HostPhase;
use finish::{Ended, finish, storage_failure};
use message::{Prepared, abandon, persist_message, prepare_message};
use writer::{Written, write_events};

/// Saves `message` and starts its turn.
pub(super) async fn start(
    sessions: &Arc<Sessions>,
    id: &str,
    message: MessageRequest,
) -> Result<StartedTurn, SessionError> {
    if message.text.trim().is_empty() {
        return Err(SessionError::Invalid("`text` must not be empty".into()));
    }
    if let Some(agent) = &message.agent
        && !sessions.app.agents.contains_key(agent)
    {
        return Err(SessionError::Invalid(format!(
            "no agent `{agent}`; this app has: {}",
            sessions
                .app
                .agents
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    // The host's part of the turn starts here (see `HostPhase::Start`).
    let accepted = Instant::now();
    let live = sessions.live.get(id).await?;
    let cancel = CancellationToken::new();
    {
        let mut turn = lock(&live.turn);
        if turn.is_some() {
            return Err(SessionError::TurnInProgress(id.to_owned()));
        }
        *turn = Some(cancel.clone());
    }
    let (prepared, user_message) = match prepare_message(sessions, &live, &message).await {
        Ok(prepared) => prepared,
        Err(e) => {
            lock(&live.turn).take();
            return Err(e);
        }
    };
    // The harness gets the message first and the store second: the model's
    // first answer takes far longer than these writes and their flush, so
    // they are done while the harness works, not before it starts. The
    // turn's events are written only once the message is durable, and the
    // client hears of the turn only then; writes that fail take the turn
    // back (`abandon`) before the client gets its 503.
    let (durable_tx, durable) = oneshot::channel();
    let (finished_tx, mut finished) = oneshot::channel();
    let task_sessions = sessions.clone();
    let after = prepared.after;
    let undo = prepared.undo.clone();
    let turn_cancel = cancel.clone();
    let turn_live = live.clone();
    sessions.turns.spawn(async move {
        let summary = run(
            task_sessions,
            turn_live,
            prepared,
            turn_cancel,
            durable,
            accepted,
        )
        .await;
        let _ = finished_tx.send(summary);
    });
    // The turn's task waits in this worker's LIFO slot (where no other
    // worker can take it) until this task yields: it runs next, up to the
    // harness waiting for its process's first words, with the message
    // handed over; the writes below follow it (or run beside it, if another
    // worker takes this task meanwhile). A process harness whose message
    // then cannot be written has it already, as when the flush fails: the
    // turn is cancelled, which ends the process.
    tokio::task::yield_now().await;
    match persist_message(sessions, &live, &user_message, undo).await {
        Ok(()) => {
            let _ = durable_tx.send(true);
            Ok(StartedTurn { after, finished })
        }
        Err(e) => {
            // Undone before the answer: the session is as it was.
            cancel.cancel();
            let _ = durable_tx.send(false);
            let _ = (&mut finished).await;
            Err(e)
        }
    }
}

/// Runs a turn to its end and saves it (see the module docs).
async fn run(
    sessions: Arc<Sessions>,
    live: LiveRef,
    prepared: Prepared,
    cancel: CancellationToken,
    durable: oneshot::Receiver<bool>,
    accepted: Instant,
) -> TurnSummary {
    let Prepared {
        mut request,
        agent,
        undo,
        ..
    } = prepared;
    let span = tracing::info_span!("turn", session = %live.id, harness = sessions.harness_name());
    async move {
        let started = Instant::now();
        let credentials = sessions.credentials.for_session(&live.id);
        let (events_tx, events_rx) = mpsc::unbounded_channel::<Emitted>();
        let (approved, scope) = {
            let state = live.state.lock().await;
            // The scope picks the harness's HOME (its end user's, if any).
            (
                state.record.approved_tools.clone(),
                state.record.scope.clone(),
            )
        };
        let host = SessionTurnHost {
            live: live.clone(),
            toolbox: sessions.toolbox.clone(),
            tools: sessions.toolbox.for_agent(agent.as_deref()),
            approvals: Arc::new(TurnApprovals::new(
                approved,
                sessions.config.approval_timeout,
            )),
            events: events_tx.clone(),
            workspace: sessions.workspace(&live.id),
            cancel: cancel.clone(),
            autonomous: sessions.config.access.autonomous,
        };
        let writer = tokio::spawn(write_events(
            sessions.store.clone(),
            live.clone(),
            events_rx,
            durable,
            cancel.clone(),
        ));
        // MCP calls of the harness process ask through this turn while its
        // harness runs (see `approvals`).
        let gate = live.approvals.open_gate(TurnGate::new(
            host.approvals.clone(),
            events_tx.clone(),
            cancel.child_token(),
        ));
        let context = TurnContext {
            host: &host,
            events: events_tx,
            cancel,
        };
        let outcome = match &sessions.harness {
            Some(harness) => {
                // A new session's first turn may claim a pooled process.
                let info = sessions.session_info_from_pool(
                    &live.id,
                    scope.as_ref(),
                    &credentials,
                    &host.tools,
                    &request,
                );
                match info {
                    Ok(info) => {
                        request.session = info;
                        host_phase(&sessions, HostPhase::Start, accepted);
                        harness.run_turn(request, context).await
                    }
                    Err(message) => {
                        context.emit(Event::error(ErrorCode::AppError, message));
                        failed_outcome()
                    }
                }
            }
            None => {
                let builtin = BuiltinHarness::in_process(
                    sessions.model_service.clone(),
                    credentials.gateway_key.as_str(),
                );
                host_phase(&sessions, HostPhase::Start, accepted);
                builtin.run_turn(request, context).await
            }
        };
        let returned = Instant::now();
        // Closed before the approvals are read and the writer is awaited:
        // no MCP call can approve or log anything for this turn after.
        drop(gate);
        let approved = host.approvals.approved();
        drop(host);
        // The turn's usage records are all queued by now (the gateway
        // meters an answer before the harness reads its end; a tool call
        // is billed before it returns): their commit runs while the writer
        // catches up.
        let acknowledged = async {
            match &sessions.toolbox.ledger {
                Some(ledger) => ledger.acknowledge(&live.id).await,
                None => Ok(()),
            }
        };
        let (written, acknowledged) = tokio::join!(writer, acknowledged);
        let written = written.unwrap_or(Written {
            terminal: None,
            durable: true,
            failed: false,
        });
        let metered = sessions.gateway.take_usage(&live.id);
        if !written.durable {
            return abandon(&sessions, &live, undo, agent).await;
        }
        // A turn whose events could not all be logged ends with the
        // storage error, not with what the harness said.
        let terminal = if written.failed {
            Some(Emitted {
                event: Event::Error(storage_failure()),
                raw: None,
            })
        } else {
            written.terminal
        };
        if metered != outcome.usage {
            tracing::debug!(harness = ?outcome.usage, ?metered, "the harness counted other tokens than the gateway metered");
        }
        let ended = Ended {
            terminal,
            outcome,
            agent,
            metered,
            approved,
            acknowledged,
        };
        let summary = finish(&sessions, &live, ended).await;
        host_phase(&sessions, HostPhase::End, returned);
        // Its next turn finds it in memory while its process lives.
        sessions.live.keep_while_process_lives(&live);
        sessions
            .metrics
            .record_turn(sessions.harness_name(), summary.status, started.elapsed());
        summary
    }
    .instrument(span)
    .await
}

/// Times one of the host's own parts of a turn, `since` its start.
fn host_phase(sessions: &Sessions, phase: HostPhase, since: Instant) {
    sessions
        .metrics
        .record_host_phase(sessions.harness_name(), phase, since.elapsed());
}

fn failed_outcome() -> TurnOutcome {
    TurnOutcome {
        new_messages: Vec::new(),
        text: String::new(),
        usage: Usage::default(),
        status: TurnStatus::Error,
    }
}
