//! A turn's user message: taken in ([`prepare_message`]), written while
//! the harness starts ([`persist_message`]), and taken back when it never
//! becomes durable ([`abandon`]).

use std::sync::Arc;

use karta_harness::{SessionInfo, TurnRequest, TurnStatus, Usage};

use super::storage_failure;
use crate::session::live::LiveRef;
use crate::session::log::{Published, reserve_seqs};
use crate::session::{MessageRequest, SessionError, Sessions, TurnSummary, lock, now};
use crate::store::{Participant, ParticipantType, Role, SessionRecord, TranscriptMessage};

/// A message taken in, ready to run (its writes follow: [`persist_message`]).
pub(super) struct Prepared {
    /// The sequence number before the turn's first event.
    pub(super) after: u64,
    pub(super) request: TurnRequest,
    pub(super) agent: Option<String>,
    /// What to restore if the message never becomes durable.
    pub(super) undo: Arc<Undo>,
}

/// A message's writes, to take back.
pub(super) struct Undo {
    /// The message's place in the transcript, once it is written there.
    message_index: std::sync::OnceLock<u64>,
    /// The session's record before the message.
    record: SessionRecord,
}

/// Takes the user's message in: marks the turn running and reserves its
/// sequence numbers in the session's record, in memory, and builds the
/// harness's request. Nothing is written: [`persist_message`] does that
/// while the harness starts.
pub(super) async fn prepare_message(
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
pub(super) async fn persist_message(
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

/// Takes back a turn whose message could not be made durable: the message
/// and the record's changes go, nothing is published, the session is free.
pub(super) async fn abandon(
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
