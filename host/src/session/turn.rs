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

use std::sync::Arc;
use std::time::Instant;

use karta_harness::builtin::BuiltinHarness;
use karta_harness::{
    Emitted, ErrorCode, ErrorData, Event, Harness, SessionInfo, TurnContext, TurnOutcome,
    TurnRequest, TurnStatus, Usage,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::approvals::{TurnApprovals, TurnGate};
use super::deltas::Deltas;
use super::live::LiveRef;
use super::log::{Published, reserve_seqs};
use super::tools::SessionTurnHost;
use super::{MessageRequest, SessionError, Sessions, StartedTurn, TurnSummary, lock, now};
use crate::metrics::HostPhase;
use crate::store::{
    Participant, ParticipantType, Role, SessionRecord, Store, StoreError, TranscriptMessage,
};

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

/// A message taken in, ready to run (its writes follow: [`persist_message`]).
struct Prepared {
    /// The sequence number before the turn's first event.
    after: u64,
    request: TurnRequest,
    agent: Option<String>,
    /// What to restore if the message never becomes durable.
    undo: Arc<Undo>,
}

/// A message's writes, to take back.
struct Undo {
    /// The message's place in the transcript, once it is written there.
    message_index: std::sync::OnceLock<u64>,
    /// The session's record before the message.
    record: SessionRecord,
}

/// Takes the user's message in: marks the turn running and reserves its
/// sequence numbers in the session's record, in memory, and builds the
/// harness's request. Nothing is written: [`persist_message`] does that
/// while the harness starts.
async fn prepare_message(
    sessions: &Sessions,
    live: &LiveRef,
    message: &MessageRequest,
) -> Result<(Prepared, TranscriptMessage), SessionError> {
    let mut state = live.state.lock().await;
    if live.is_deleted() {
        return Err(SessionError::NotFound(live.id.clone()));
    }
    // The builtin loop sends the conversation with every step; a process
    // harness keeps its own, and reading it would cost a read of the whole
    // history on every message.
    let history = if sessions.harness.is_none() {
        sessions.store.history(&live.id)?
    } else {
        Vec::new()
    };
    let before = state.record.clone();
    let participant = Participant {
        name: message
            .participant_name
            .clone()
            .unwrap_or_else(|| "user".into()),
        kind: message.participant_type.unwrap_or_default(),
    };
    let (stamp, _) = now();
    let record = &mut state.record;
    if let Some(agent) = &message.agent {
        record.current_agent = Some(agent.clone());
    }
    if !record.participants.contains(&participant) {
        record.participants.push(participant.clone());
    }
    record.updated_at = stamp.clone();
    record.turn_running = true;
    let several_speakers = record.participants.len() > 1;
    let agent = record.current_agent.clone();
    reserve_seqs(&mut state);
    let user_message = TranscriptMessage {
        id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
        role: Role::User,
        text: message.text.clone(),
        participant_name: participant.name.clone(),
        participant_type: participant.kind,
        agent: None,
        status: None,
        usage: None,
        created_at: stamp,
    };
    let text = if participant.kind == ParticipantType::Ai || several_speakers {
        // Several speakers: tell the model who says what.
        format!("[{}]: {}", participant.name, message.text)
    } else {
        message.text.clone()
    };
    let request = TurnRequest {
        system: sessions.system_prompt(agent.as_deref()),
        history,
        text,
        thinking: message.thinking,
        model: agent
            .as_deref()
            .and_then(|a| sessions.app.agents.get(a))
            .and_then(|a| a.model.clone())
            .unwrap_or_else(|| sessions.config.default_model.clone()),
        agent: agent.clone(),
        session: SessionInfo::default(),
    };
    let prepared = Prepared {
        after: state.next_seq - 1,
        request,
        agent,
        undo: Arc::new(Undo {
            message_index: std::sync::OnceLock::new(),
            record: before,
        }),
    };
    Ok((prepared, user_message))
}

/// Writes the user's message and the session's record as
/// [`prepare_message`] left it (the turn running, its sequence numbers
/// reserved), and flushes them. On failure the writes that were made are
/// taken back by the turn's `abandon`.
async fn persist_message(
    sessions: &Sessions,
    live: &LiveRef,
    user_message: &TranscriptMessage,
    undo: Arc<Undo>,
) -> Result<(), SessionError> {
    let store = &sessions.store;
    {
        let mut state = live.state.lock().await;
        if live.is_deleted() {
            return Err(SessionError::NotFound(live.id.clone()));
        }
        let index = store.append_message(&live.id, user_message, &mut state.transcript_tail)?;
        let _ = undo.message_index.set(index);
        store.put_session(&state.record)?;
    }
    store.flush_log().await?;
    Ok(())
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

/// What the writer saw of a turn.
struct Written {
    /// The terminal event, held back.
    terminal: Option<Emitted>,
    /// Whether the turn's message became durable (else nothing was written).
    durable: bool,
    /// Whether an event could not be written (the turn was cancelled).
    failed: bool,
}

/// Why the turn's event writer woke.
#[expect(
    clippy::large_enum_variant,
    reason = "it lives for one turn of the writer's loop, on its stack; a box would allocate per event"
)]
enum Woken {
    /// The harness emitted an event.
    Event(Emitted),
    /// A held delta is due.
    Due,
    /// The turn emits no more.
    Closed,
}

/// Appends the harness's events in order, once the turn's message is
/// durable, holding back the terminal one. An event that cannot be written
/// cancels the turn and nothing after it is written (a log with a gap in
/// the middle of a turn would replay as a different turn); the turn's end
/// then says why, once the session is free again (see [`finish`]).
async fn write_events(
    store: Store,
    live: LiveRef,
    mut events: mpsc::UnboundedReceiver<Emitted>,
    durable: oneshot::Receiver<bool>,
    cancel: CancellationToken,
) -> Written {
    if !durable.await.unwrap_or(false) {
        // The turn is being abandoned: drain, write nothing.
        while events.recv().await.is_some() {}
        return Written {
            terminal: None,
            durable: false,
            failed: false,
        };
    }
    let mut terminal = None;
    let mut failed = false;
    // Deltas in a burst go out as one (see `deltas`); `due` is when a held
    // one must be written if nothing else comes.
    let mut deltas = Deltas::default();
    let mut out = Vec::new();
    loop {
        let woken = match deltas.due() {
            Some(due) => tokio::select! {
                next = events.recv() => next.map_or(Woken::Closed, Woken::Event),
                () = tokio::time::sleep_until(due.into()) => Woken::Due,
            },
            None => events.recv().await.map_or(Woken::Closed, Woken::Event),
        };
        let closed = matches!(woken, Woken::Closed);
        let mut next = match woken {
            Woken::Event(emitted) => Some(emitted),
            // The held delta's window has passed, or no more events come:
            // it goes out now (last, at the end).
            Woken::Due | Woken::Closed => {
                out.extend(deltas.take(Instant::now()));
                None
            }
        };
        // Whatever else is queued is written under the same hold of the
        // state lock (a harness emits in bursts: deltas, a tool's events).
        while let Some(emitted) = next.take() {
            if emitted.event.ends_turn() {
                terminal.get_or_insert(emitted);
            } else {
                deltas.push(emitted, Instant::now(), &mut out);
            }
            next = events.try_recv().ok();
        }
        if !out.is_empty() {
            let mut state = live.state.lock().await;
            for emitted in out.drain(..) {
                if !failed
                    && let Err(e) = live
                        .append(&store, &mut state, emitted.event, emitted.raw)
                        .await
                {
                    tracing::error!("cannot write an event: {e}; the turn is cancelled");
                    failed = true;
                    cancel.cancel();
                }
            }
        }
        if closed {
            break;
        }
    }
    Written {
        terminal,
        durable: true,
        failed,
    }
}

/// Takes back a turn whose message could not be made durable: the message
/// and the record's changes go, nothing is published, the session is free.
async fn abandon(
    sessions: &Sessions,
    live: &LiveRef,
    undo: Arc<Undo>,
    agent: Option<String>,
) -> TurnSummary {
    let mut state = live.state.lock().await;
    if !live.is_deleted() {
        if let Some(&index) = undo.message_index.get() {
            let _ = sessions
                .store
                .remove_message(&live.id, index, &mut state.transcript_tail);
        }
        state.record = undo.record.clone();
        let _ = sessions.store.put_session(&state.record);
    }
    lock(&live.turn).take();
    // Whoever followed the turn meanwhile saw none of it: their stream
    // ends with the reason instead of waiting for a turn that never was.
    live.publish(Published::Failed(storage_failure()));
    TurnSummary {
        text: String::new(),
        message_id: String::new(),
        agent,
        usage: Usage::default(),
        status: TurnStatus::Cancelled,
    }
}

fn storage_failure() -> ErrorData {
    ErrorData {
        code: ErrorCode::StorageUnavailable,
        message: "the session log could not be written; the turn's end is not recorded".into(),
    }
}

/// How a turn ended, as [`finish`] saves it.
struct Ended {
    /// The terminal event the writer held back.
    terminal: Option<Emitted>,
    outcome: TurnOutcome,
    agent: Option<String>,
    /// What the gateway metered for the turn.
    metered: Usage,
    /// The tools approved for the rest of the session.
    approved: std::collections::BTreeSet<String>,
    /// Whether the turn's usage records were committed to the ledger.
    acknowledged: Result<(), crate::meter::MeterError>,
}

/// Saves the turn, frees the session and publishes the terminal event,
/// under one hold of the state lock.
async fn finish(sessions: &Sessions, live: &LiveRef, ended: Ended) -> TurnSummary {
    let Ended {
        terminal,
        outcome,
        agent,
        metered,
        approved,
        acknowledged,
    } = ended;
    let mut terminal = terminal.unwrap_or_else(|| Emitted {
        event: Event::error(
            ErrorCode::HarnessError,
            "the harness ended the turn without a done event",
        ),
        raw: None,
    });
    // What the turn's usage records cost is committed (and made durable
    // by the flush below) before the terminal event tells anyone.
    if let Err(e) = acknowledged {
        tracing::error!("cannot make the turn's usage durable: {e}");
        terminal = Emitted {
            event: Event::error(
                ErrorCode::StorageUnavailable,
                "the usage ledger could not be written; the turn's cost is not recorded",
            ),
            raw: None,
        };
    }
    // A process harness whose model call a budget refused saw only the
    // gateway's 402 and calls it a model error; the ledger knows better.
    if let Some(reason) = sessions
        .toolbox
        .ledger
        .as_ref()
        .and_then(|ledger| ledger.take_refusal(&live.id))
        && let Event::Error(error) = &mut terminal.event
        && error.code != ErrorCode::BudgetExhausted
    {
        error.code = ErrorCode::BudgetExhausted;
        error.message = reason;
    }
    let (message_id, status) = match &mut terminal.event {
        Event::Done(done) => {
            done.usage = metered;
            done.cost_micros = sessions
                .toolbox
                .ledger
                .as_ref()
                .map(|ledger| ledger.take_turn_cost(&live.id));
            (done.message_id.clone(), done.status)
        }
        other => {
            if let Event::Error(error) = other {
                tracing::warn!(code = %error.code, reason = %error.message, "the turn failed");
            }
            (
                format!("msg_{}", uuid::Uuid::new_v4().simple()),
                TurnStatus::Error,
            )
        }
    };
    let summary = TurnSummary {
        text: outcome.text.clone(),
        message_id: message_id.clone(),
        agent: agent.clone(),
        usage: metered,
        status,
    };
    let store = &sessions.store;
    let mut state = live.state.lock().await;
    if live.is_deleted() {
        lock(&live.turn).take();
        return summary;
    }
    // The session takes a new message from now on: a client that reads
    // the terminal event in the log (not the stream) and sends at once must
    // not be told a turn is running. A new turn waits for this state lock
    // to save its message, so its events still come after this one's.
    lock(&live.turn).take();
    let (stamp, _) = now();
    let assistant = TranscriptMessage {
        id: message_id,
        role: Role::Assistant,
        text: outcome.text,
        participant_name: agent.clone().unwrap_or_else(|| sessions.app.name.clone()),
        participant_type: ParticipantType::Ai,
        agent,
        status: Some(status),
        usage: Some(metered),
        created_at: stamp.clone(),
    };
    let saved: Result<_, StoreError> = async {
        store.append_history(&live.id, &outcome.new_messages, &mut state.history_tail)?;
        store.append_message(&live.id, &assistant, &mut state.transcript_tail)?;
        let deliveries = sessions.notice_turn_end(&state.record, state.next_seq, &terminal.event);
        let envelope = live
            .write(store, &mut state, terminal.event, terminal.raw, &deliveries)
            .await?;
        if !deliveries.is_empty() {
            sessions.wake_webhooks();
        }
        let record = &mut state.record;
        record.turn_running = false;
        record.seq_reserved = envelope.seq;
        record.updated_at = stamp;
        record.approved_tools = approved;
        store.put_session(record)?;
        // Nothing else to do until it is durable: flushed on this thread.
        store.flush_log_here().await?;
        Ok(envelope)
    }
    .await;
    match saved {
        Ok(envelope) => live.publish(Published::Event(envelope)),
        Err(e) => {
            tracing::error!("cannot save the turn: {e}");
            state.record.turn_running = false;
            live.publish(Published::Failed(storage_failure()));
        }
    }
    summary
}
