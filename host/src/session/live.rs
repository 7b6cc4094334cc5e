//! Sessions in memory: one [`LiveSession`] per session that something is
//! using, and the map that keeps memory bounded.
//!
//! A session is loaded from the store when a request, a turn or a
//! subscriber needs it, and leaves memory when the last of them lets go:
//! every holder has a [`LiveRef`], and dropping the last one evicts the
//! session (its state is on disk). So 10,000 sessions created and left
//! alone cost the store, not RAM.
//!
//! One exception: a session whose harness process is alive stays between
//! its turns ([`LiveMap::keep_while_process_lives`]), so its next turn does
//! not read and decode its record and scan its log again before the
//! harness gets the message. Such a session costs its record and its last
//! published events (at most [`CHANNEL_CAPACITY`]) beside a process of
//! ~200 MiB, so memory stays bounded by the harness's own process limit; the periodic sweep ([`LiveMap::sweep`]) lets it go once
//! its process has stopped.
//!
//! Loading is also where a crash is repaired: a record saved with a turn
//! running belongs to a turn the host did not finish. Its log gets an
//! `interrupted` error, numbered above every sequence number the turn could
//! have handed out (`seq_reserved`), before anyone else may touch the
//! session.

use std::collections::{HashMap, VecDeque};
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use karta_harness::{ErrorCode, Event, Harness, ToolResult};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::approvals::Approvals;
use super::log::Published;
use super::{SessionError, lock};
use crate::credentials::Credentials;
use crate::metrics::Metrics;
use crate::store::{SessionRecord, Store, Tail};

/// How many published events a slow subscriber may lag behind before it
/// catches up from the store. Every live session allocates this many slots
/// (~64 bytes each) whether anyone lags or not: 1,024 cost ~64 KiB a
/// session, 64 MiB at 1,000 streaming sessions; 128 cost 8 KiB, and a
/// turn's burst of deltas that outruns a reader is read back from the log.
const CHANNEL_CAPACITY: usize = 128;

/// MCP tool runs kept for the harness to report (a harness that never
/// reports them must not grow the list without end).
const MAX_UNREPORTED_RUNS: usize = 64;

/// What the state lock guards: the record and the log's next number. Every
/// write to a session happens under it, so events are numbered, written
/// and published in one order.
pub(crate) struct SessionState {
    /// The record as it is (or is about to be) on disk.
    pub(crate) record: SessionRecord,
    /// The next event sequence number.
    pub(crate) next_seq: u64,
    /// Where the session's transcript ends, once an append has looked.
    pub(crate) transcript_tail: Tail,
    /// Where its model history ends, likewise.
    pub(crate) history_tail: Tail,
}

/// A session in memory.
pub(crate) struct LiveSession {
    pub(crate) id: String,
    pub(crate) state: tokio::sync::Mutex<SessionState>,
    /// Subscribers of the log.
    pub(crate) events: broadcast::Sender<Published>,
    /// The running turn's cancel token, while one runs.
    pub(crate) turn: Mutex<Option<CancellationToken>>,
    /// Approval requests waiting for a person.
    pub(crate) approvals: Approvals,
    /// Tool calls made over MCP that the harness has not reported yet:
    /// (tool, input, result).
    tool_runs: Mutex<VecDeque<(String, Value, ToolResult)>>,
    /// Set by delete: nothing writes to the session any more.
    deleted: AtomicBool,
    /// Set while its harness process lives: the session stays in memory
    /// when the last [`LiveRef`] goes (see the module docs).
    resident: AtomicBool,
}

impl LiveSession {
    fn new(record: SessionRecord, next_seq: u64) -> Self {
        Self {
            id: record.id.clone(),
            state: tokio::sync::Mutex::new(SessionState {
                record,
                next_seq,
                transcript_tail: Tail::default(),
                history_tail: Tail::default(),
            }),
            events: broadcast::channel(CHANNEL_CAPACITY).0,
            turn: Mutex::default(),
            approvals: Approvals::default(),
            tool_runs: Mutex::default(),
            deleted: AtomicBool::new(false),
            resident: AtomicBool::new(false),
        }
    }

    /// Whether a turn runs.
    pub(crate) fn is_running(&self) -> bool {
        lock(&self.turn).is_some()
    }

    /// Whether the session was deleted (checked under the state lock
    /// before every write, so a delete cannot be undone by a write racing
    /// it).
    pub(crate) fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::SeqCst)
    }

    pub(crate) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::SeqCst);
    }

    /// Records a tool call made over MCP, for the harness to report.
    pub(crate) fn record_tool_run(&self, tool: &str, input: &Value, result: &ToolResult) {
        let mut runs = lock(&self.tool_runs);
        if runs.len() == MAX_UNREPORTED_RUNS {
            runs.pop_front();
        }
        runs.push_back((tool.to_owned(), input.clone(), result.clone()));
    }

    /// The latest MCP run of `tool` with `input`, taken so it is reported
    /// once.
    pub(crate) fn take_tool_run(&self, tool: &str, input: &Value) -> Option<ToolResult> {
        let mut runs = lock(&self.tool_runs);
        let index = runs.iter().rposition(|(t, i, _)| t == tool && i == input)?;
        runs.remove(index).map(|(_, _, result)| result)
    }
}

/// The sessions in memory.
pub(crate) struct LiveMap {
    map: Mutex<HashMap<String, Arc<LiveSession>>>,
    store: Store,
    credentials: Arc<Credentials>,
    harness: Option<Arc<dyn Harness>>,
    metrics: Arc<Metrics>,
}

/// A hold on a session in memory; the last one dropped evicts it.
pub(crate) struct LiveRef {
    /// Always `Some` until dropped (taken in `drop`, under the map's lock).
    session: Option<Arc<LiveSession>>,
    map: Arc<LiveMap>,
}

impl Deref for LiveRef {
    type Target = LiveSession;

    fn deref(&self) -> &LiveSession {
        match &self.session {
            Some(session) => session,
            None => unreachable!("a LiveRef is only emptied by its drop"),
        }
    }
}

impl Clone for LiveRef {
    fn clone(&self) -> Self {
        Self {
            session: self.session.clone(),
            map: self.map.clone(),
        }
    }
}

impl Drop for LiveRef {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        // Every reference is taken or released under the map's lock, so
        // when the map holds the only one left nobody can be about to take
        // another.
        let mut map = lock(&self.map.map);
        let id = session.id.clone();
        drop(session);
        let unused = map
            .get(&id)
            .is_some_and(|s| Arc::strong_count(s) == 1 && !s.resident.load(Ordering::SeqCst));
        if unused {
            map.remove(&id);
            self.map.metrics.live_sessions.set(map.len() as i64);
        }
    }
}

impl LiveMap {
    pub(crate) fn new(
        store: Store,
        credentials: Arc<Credentials>,
        harness: Option<Arc<dyn Harness>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            map: Mutex::default(),
            store,
            credentials,
            harness,
            metrics,
        }
    }

    /// How many sessions are in memory.
    pub(crate) fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// The session if it is in memory, without loading it.
    pub(crate) fn peek(self: &Arc<Self>, id: &str) -> Option<LiveRef> {
        let map = lock(&self.map);
        map.get(id).map(|session| LiveRef {
            session: Some(session.clone()),
            map: self.clone(),
        })
    }

    /// The session, loaded (and repaired after a crash) if it is not in
    /// memory.
    pub(crate) async fn get(self: &Arc<Self>, id: &str) -> Result<LiveRef, SessionError> {
        if let Some(live) = self.peek(id) {
            return Ok(live);
        }
        let record = self
            .store
            .session(id)?
            .ok_or_else(|| SessionError::NotFound(id.to_owned()))?;
        let last = self.store.last_seq(id)?;
        let crashed = record.turn_running;
        // After a crash, numbers up to `seq_reserved` may have reached a
        // client without reaching the disk: never give them again.
        let next_seq = if crashed {
            last.max(record.seq_reserved) + 1
        } else {
            last + 1
        };
        let session = Arc::new(LiveSession::new(record, next_seq));
        // Nobody may use the session before it is repaired: hold its state
        // from before it is visible.
        let Ok(mut state) = session.state.try_lock() else {
            unreachable!("a new session's state is free")
        };
        let live = {
            let mut map = lock(&self.map);
            if let Some(existing) = map.get(id) {
                // Someone else loaded it meanwhile; use theirs.
                return Ok(LiveRef {
                    session: Some(existing.clone()),
                    map: self.clone(),
                });
            }
            // A delete may have run since the record was read.
            if !self.store.contains_session(id)? {
                return Err(SessionError::NotFound(id.to_owned()));
            }
            map.insert(id.to_owned(), session.clone());
            self.metrics.live_sessions.set(map.len() as i64);
            LiveRef {
                session: Some(session.clone()),
                map: self.clone(),
            }
        };
        if crashed {
            let interrupted =
                Event::error(ErrorCode::Interrupted, "the host stopped during this turn");
            let written = async {
                let envelope = live
                    .write(
                        &self.store,
                        &mut state,
                        interrupted,
                        None,
                        &crate::webhooks::Prepared::default(),
                    )
                    .await?;
                state.record.turn_running = false;
                state.record.seq_reserved = envelope.seq;
                self.store.put_session(&state.record)?;
                self.store.flush_log().await
            };
            written.await?;
        }
        drop(state);
        Ok(live)
    }

    /// Cancels every running turn.
    pub(crate) fn cancel_turns(&self) {
        for session in lock(&self.map).values() {
            if let Some(cancel) = lock(&session.turn).as_ref() {
                cancel.cancel();
            }
        }
    }

    /// Forgets a deleted session.
    pub(crate) fn remove(&self, id: &str) {
        let mut map = lock(&self.map);
        map.remove(id);
        self.metrics.live_sessions.set(map.len() as i64);
    }

    /// Whether the harness has a process for session `id`.
    fn has_process(&self, id: &str) -> bool {
        self.harness.as_ref().is_some_and(|h| h.has_process(id))
    }

    /// Keeps session `live` in memory between its turns while the harness
    /// has a process for it (see the module docs); nothing without a
    /// harness process, or once the session is deleted.
    pub(crate) fn keep_while_process_lives(&self, live: &LiveSession) {
        if self.has_process(&live.id) && !live.is_deleted() {
            live.resident.store(true, Ordering::SeqCst);
        }
    }

    /// The periodic sweep: lets the sessions kept for their harness process
    /// go once that process has stopped (when nothing else holds them),
    /// then revokes idle credentials ([`Self::sweep_credentials`]).
    pub(crate) fn sweep(&self, idle: Duration) {
        {
            let mut map = lock(&self.map);
            map.retain(|_, session| {
                if !session.resident.load(Ordering::SeqCst) || self.has_process(&session.id) {
                    return true;
                }
                session.resident.store(false, Ordering::SeqCst);
                // Every reference is taken and released under the map's
                // lock (see `LiveRef::drop`): held by nobody else, it goes;
                // held, it goes with the last `LiveRef`.
                Arc::strong_count(session) > 1
            });
            self.metrics.live_sessions.set(map.len() as i64);
        }
        self.sweep_credentials(idle);
    }

    /// Revokes the credentials unused for `idle` of every session that is
    /// neither in memory nor served by a harness process (a process stopped
    /// after its idle time leaves its session's credentials behind). Under
    /// the map's lock: a turn that would hand them to a new process first
    /// takes its session from the map.
    fn sweep_credentials(&self, idle: Duration) {
        let map = lock(&self.map);
        for id in self.credentials.idle_sessions(idle) {
            if !map.contains_key(&id) && !self.has_process(&id) {
                self.credentials.revoke(&id);
            }
        }
    }
}
