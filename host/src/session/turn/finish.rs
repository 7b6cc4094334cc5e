//! A turn's end: saved, the session freed and the terminal event
//! published, under one hold of the state lock.

use karta_harness::{Emitted, ErrorCode, ErrorData, Event, TurnOutcome, TurnStatus, Usage};

use crate::session::live::LiveRef;
use crate::session::log::Published;
use crate::session::{Sessions, TurnSummary, lock, now};
use crate::store::{ParticipantType, Role, StoreError, TranscriptMessage};

/// The error a turn ends with when its log cannot be written.
pub(super) fn storage_failure() -> ErrorData {
    ErrorData {
        code: ErrorCode::StorageUnavailable,
        message: "the session log could not be written; the turn's end is not recorded".into(),
    }
}

/// How a turn ended, as [`finish`] saves it.
pub(super) struct Ended {
    /// The terminal event the writer held back.
    pub(super) terminal: Option<Emitted>,
    pub(super) outcome: TurnOutcome,
    pub(super) agent: Option<String>,
    /// What the gateway metered for the turn.
    pub(super) metered: Usage,
    /// The tools approved for the rest of the session.
    pub(super) approved: std::collections::BTreeSet<String>,
    /// Whether the turn's usage records were committed to the ledger.
    pub(super) acknowledged: Result<(), crate::meter::MeterError>,
}

/// Saves the turn, frees the session and publishes the terminal event,
/// under one hold of the state lock.
pub(super) async fn finish(sessions: &Sessions, live: &LiveRef, ended: Ended) -> TurnSummary {
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
