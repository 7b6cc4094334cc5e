//! Sessions: the event log, turns, approvals, subscribers.
//!
//! Each live session is one `LiveSession` whose `log` mutex serializes every
//! write to it: an event gets its sequence number, is written to sled, and
//! only then is sent to subscribers — so what a client sees is always in the
//! log, and a reconnecting client (`after = <last seq it saw>`) gets exactly
//! the events it missed, once each.
//!
//! One turn runs at a time per session; a message sent while a turn runs is
//! refused with [`SessionError::TurnInProgress`] (HTTP 409) rather than
//! queued, so a client always knows which turn its message started. A turn
//! runs in a task of its own: it goes on when the client that started it
//! disconnects, and stops on cancel or delete.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use karta_harness::builtin::BuiltinHarness;
use karta_harness::{
    BoxFuture, Decision, Harness, HarnessEvent, SessionInfo, ToolDef, ToolFailure, ToolResult,
    TurnContext, TurnHost, TurnRequest, Usage,
};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::app::AppSpec;
use crate::gateway::Gateway;
use crate::plugin::{CallOptions, Plugin};
use crate::store::{Participant, SessionRecord, Store, StoreError};

/// Why a session operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No such session (or not yours).
    #[error("no session `{0}`")]
    NotFound(String),
    /// A turn is already running in this session.
    #[error("a turn is already running in session `{0}`; wait for its `done` event or cancel it")]
    TurnInProgress(String),
    /// No pending input request with that id.
    #[error("no pending input request `{0}` in this session")]
    NoSuchInput(String),
    /// The request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One tool a session may call.
#[derive(Clone)]
pub struct SessionTool {
    /// How the model sees it.
    pub def: ToolDef,
    /// The plugin that runs it; `None` for the built-in `load_skill`.
    pub plugin: Option<Plugin>,
    /// Whether each call needs approval.
    pub approval: bool,
}

/// Settings of the session manager.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Where session workspaces live (`<dir>/<session id>`).
    pub workspaces: PathBuf,
    /// How long a turn waits for an approval before treating it as denied.
    pub approval_timeout: Duration,
    /// The model name sent when the agent names none.
    pub default_model: String,
    /// Where harness processes get their scratch `HOME`s
    /// (`<dir>/<session id>`).
    pub homes: PathBuf,
    /// The MCP server's base URL; a session's endpoint is
    /// `{mcp_url}/mcp/{token}`.
    pub mcp_url: String,
}

/// What a new message carries.
#[derive(Debug, Clone, Default)]
pub struct MessageRequest {
    /// The text.
    pub text: String,
    /// Switch to this agent first (it stays the session's agent).
    pub agent: Option<String>,
    /// Who is speaking.
    pub participant_name: Option<String>,
    /// `human` (default) or `ai`.
    pub participant_type: Option<String>,
    /// Ask the model to think first.
    pub thinking: bool,
}

/// A started turn: the sequence number before its first event, and a
/// receiver that resolves when the turn ends.
pub struct StartedTurn {
    /// Events of this turn have sequence numbers above this.
    pub after: u64,
    /// Resolves with the outcome when the turn ends.
    pub finished: oneshot::Receiver<TurnSummary>,
}

/// How a turn ended, for unary answers.
#[derive(Debug, Clone)]
pub struct TurnSummary {
    /// The final assistant text.
    pub text: String,
    /// The assistant message id.
    pub message_id: String,
    /// The agent that answered.
    pub agent: Option<String>,
    /// Tokens used.
    pub usage: Usage,
    /// `completed`, `denied`, `cancelled`, `error`.
    pub status: String,
}

/// The session manager.
pub struct Sessions {
    store: Store,
    app: Arc<AppSpec>,
    tools: Arc<Vec<SessionTool>>,
    gateway: Gateway,
    gateway_url: String,
    config: SessionConfig,
    /// The process harness (Claude Code, OpenCode) that runs turns; `None`
    /// runs them on the builtin loop.
    harness: Option<Arc<dyn Harness>>,
    live: Mutex<HashMap<String, Arc<LiveSession>>>,
    /// MCP token -> session id (see [`crate::mcp`]).
    mcp_tokens: Mutex<HashMap<String, String>>,
}

/// A session in memory.
struct LiveSession {
    id: String,
    /// The record; held while appending so events stay in order.
    log: tokio::sync::Mutex<SessionRecord>,
    events: broadcast::Sender<Value>,
    turn: Mutex<Option<CancellationToken>>,
    pending: Mutex<HashMap<String, PendingInput>>,
    gateway_key: String,
    /// The session's MCP token, minted on first use (see
    /// [`Sessions::issue_mcp_token`]).
    mcp_token: Mutex<Option<String>>,
    /// Tool calls made over MCP, not yet reported by the harness: (tool,
    /// input, result). Bounded by [`MAX_UNREPORTED_RUNS`].
    tool_runs: Mutex<Vec<(String, Value, ToolResult)>>,
    /// Set by delete: a turn still winding down writes nothing more.
    deleted: std::sync::atomic::AtomicBool,
}

/// MCP tool runs kept for the harness to report (a harness that never
/// reports them must not grow the list without end).
const MAX_UNREPORTED_RUNS: usize = 64;

struct PendingInput {
    event: Value,
    tool: String,
    answer: oneshot::Sender<Decision>,
}

fn now() -> (String, u64) {
    let time = SystemTime::now();
    let ms = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    (humantime::format_rfc3339_millis(time).to_string(), ms)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A session id a client may choose: `[A-Za-z0-9_-]{1,64}`.
pub fn valid_session_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Sessions {
    /// A manager over `store` for `app`.
    pub fn new(
        store: Store,
        app: Arc<AppSpec>,
        tools: Vec<SessionTool>,
        gateway: Gateway,
        gateway_url: String,
        config: SessionConfig,
    ) -> Self {
        Self {
            store,
            app,
            tools: Arc::new(tools),
            gateway,
            gateway_url,
            config,
            harness: None,
            live: Mutex::default(),
            mcp_tokens: Mutex::default(),
        }
    }

    /// Runs turns on `harness` (a process harness) instead of the builtin
    /// loop.
    pub fn with_harness(mut self, harness: Arc<dyn Harness>) -> Self {
        self.harness = Some(harness);
        self
    }

    /// The name of the harness that runs turns.
    pub fn harness_name(&self) -> &'static str {
        self.harness.as_ref().map_or("builtin", |h| h.name())
    }

    /// The harness process serving `session_id`, if one runs.
    pub fn harness_process_id(&self, session_id: &str) -> Option<u32> {
        self.harness.as_ref()?.process_id(session_id)
    }

    /// The MCP token of `session_id`: an unguessable bearer of the
    /// session's tools, for a harness process's MCP client. Minted on first
    /// use; revoked when the session is deleted.
    pub fn issue_mcp_token(&self, session_id: &str) -> Result<String, SessionError> {
        let live = self.live(session_id)?;
        Ok(self.mcp_token(&live))
    }

    fn mcp_token(&self, live: &LiveSession) -> String {
        lock(&live.mcp_token)
            .get_or_insert_with(|| {
                let token = format!("kmcp_{}", uuid::Uuid::new_v4().simple());
                lock(&self.mcp_tokens).insert(token.clone(), live.id.clone());
                token
            })
            .clone()
    }

    /// The session an MCP token belongs to.
    pub fn session_for_mcp_token(&self, token: &str) -> Option<String> {
        lock(&self.mcp_tokens).get(token).cloned()
    }

    /// The tools the session's current agent may use.
    pub async fn session_tools(&self, id: &str) -> Result<Vec<ToolDef>, SessionError> {
        let live = self.live(id)?;
        let agent = live.log.lock().await.current_agent.clone();
        // A process harness reads the app's skills itself, natively; it gets
        // only the plugin tools.
        let process_harness = self.harness.is_some();
        Ok(self
            .tools_for(agent.as_deref())
            .into_iter()
            .filter(|t| t.plugin.is_some() || !process_harness)
            .map(|t| t.def)
            .collect())
    }

    /// Runs one of the session's tools outside a builtin turn (for a harness
    /// that calls tools over MCP), with the session workspace as its preopen.
    pub async fn call_tool(
        &self,
        id: &str,
        tool: &str,
        input: &Value,
    ) -> Result<ToolResult, SessionError> {
        let live = self.live(id)?;
        let agent = live.log.lock().await.current_agent.clone();
        let tools = self.tools_for(agent.as_deref());
        let workspace = self.config.workspaces.join(id);
        let result = run_tool(&self.app, &tools, &workspace, tool, input).await;
        let mut runs = lock(&live.tool_runs);
        if runs.len() == MAX_UNREPORTED_RUNS {
            runs.remove(0);
        }
        runs.push((tool.to_owned(), input.clone(), result.clone()));
        Ok(result)
    }

    /// The app being served.
    pub fn app(&self) -> &AppSpec {
        &self.app
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The gateway.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Creates a session, or returns the existing one when `session_id` names
    /// one (resume). Durable before it returns.
    pub async fn create(
        &self,
        session_id: Option<String>,
        metadata: BTreeMap<String, String>,
    ) -> Result<Value, SessionError> {
        if metadata.len() > 50 {
            return Err(SessionError::Invalid(
                "metadata may hold at most 50 keys".into(),
            ));
        }
        if let Some(id) = &session_id {
            if !valid_session_id(id) {
                return Err(SessionError::Invalid(
                    "session_id must be 1-64 characters of [A-Za-z0-9_-]".into(),
                ));
            }
            if self.store.session(id)?.is_some() {
                return self.object(id).await;
            }
        }
        let id = session_id.unwrap_or_else(|| format!("ses_{}", uuid::Uuid::new_v4().simple()));
        let (stamp, ms) = now();
        let record = SessionRecord {
            v: 1,
            id: id.clone(),
            metadata,
            current_agent: None,
            created_at: stamp.clone(),
            updated_at: stamp,
            created_ms: ms,
            participants: Vec::new(),
            history: Vec::new(),
            approved_tools: Default::default(),
            next_seq: 1,
            message_count: 0,
        };
        std::fs::create_dir_all(self.config.workspaces.join(&id)).map_err(|e| {
            SessionError::Invalid(format!("cannot create the session workspace: {e}"))
        })?;
        self.store.put_session(&record)?;
        self.store.flush().await?;
        self.object(&id).await
    }

    fn live(&self, id: &str) -> Result<Arc<LiveSession>, SessionError> {
        if let Some(live) = lock(&self.live).get(id) {
            return Ok(live.clone());
        }
        let mut record = self
            .store
            .session(id)?
            .ok_or_else(|| SessionError::NotFound(id.to_owned()))?;
        // The log, not the record, is the truth about sequence numbers.
        let last = self.store.last_seq(id)?;
        record.next_seq = last + 1;
        // A turn that was running when the host stopped never got its
        // terminal event; close it so clients waiting on it are not left
        // hanging.
        let interrupted = self
            .store
            .events_after(id, last.saturating_sub(1))?
            .last()
            .is_some_and(|e| !matches!(e["type"].as_str(), Some("done" | "error")));
        if interrupted {
            let envelope = json!({
                "type": "error", "source": "karta", "session_id": id, "timestamp": now().0,
                "seq": record.next_seq,
                "data": { "code": "interrupted", "message": "the host stopped during this turn" },
            });
            self.store.put_event(id, record.next_seq, &envelope)?;
            record.next_seq += 1;
        }
        let mut live = lock(&self.live);
        let entry = live.entry(id.to_owned()).or_insert_with(|| {
            Arc::new(LiveSession {
                id: id.to_owned(),
                log: tokio::sync::Mutex::new(record),
                events: broadcast::channel(1024).0,
                turn: Mutex::default(),
                pending: Mutex::default(),
                gateway_key: self.gateway.issue_key(id),
                mcp_token: Mutex::default(),
                tool_runs: Mutex::default(),
                deleted: Default::default(),
            })
        });
        Ok(entry.clone())
    }

    /// The protocol's session object.
    pub async fn object(&self, id: &str) -> Result<Value, SessionError> {
        let live = self.live(id)?;
        let record = live.log.lock().await.clone();
        Ok(session_object(&record, &live))
    }

    /// Sessions whose metadata contains every `filters` pair, newest first,
    /// one page (1-based).
    pub async fn list(
        &self,
        filters: &BTreeMap<String, String>,
        page: usize,
        per_page: usize,
    ) -> Result<(Vec<Value>, usize), SessionError> {
        let mut records: Vec<SessionRecord> = self
            .store
            .sessions()?
            .into_iter()
            .filter(|r| filters.iter().all(|(k, v)| r.metadata.get(k) == Some(v)))
            .collect();
        records.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.id.cmp(&a.id)));
        let total = records.len();
        let mut page_objects = Vec::new();
        for record in records
            .into_iter()
            .skip((page - 1) * per_page)
            .take(per_page)
        {
            page_objects.push(self.object(&record.id).await?);
        }
        Ok((page_objects, total))
    }

    /// Deletes a session: cancels its turn, drops its log, transcript and
    /// workspace.
    pub async fn delete(&self, id: &str) -> Result<(), SessionError> {
        let live = self.live(id)?;
        live.deleted
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(cancel) = lock(&live.turn).take() {
            cancel.cancel();
        }
        lock(&live.pending).clear();
        let _guard = live.log.lock().await;
        self.store.delete_session(id)?;
        self.store.flush().await?;
        lock(&self.live).remove(id);
        lock(&self.mcp_tokens).retain(|_, s| s != id);
        self.gateway.revoke_session(id);
        if let Some(harness) = &self.harness {
            harness.end_session(id).await;
        }
        let _ = std::fs::remove_dir_all(self.config.workspaces.join(id));
        let _ = std::fs::remove_dir_all(self.config.homes.join(id));
        Ok(())
    }

    /// The transcript: every message with its sender.
    pub fn transcript(&self, id: &str) -> Result<Vec<Value>, SessionError> {
        if self.store.session(id)?.is_none() {
            return Err(SessionError::NotFound(id.to_owned()));
        }
        Ok(self.store.messages(id)?)
    }

    /// Events with a sequence number above `after`.
    pub fn events_after(&self, id: &str, after: u64) -> Result<Vec<Value>, SessionError> {
        Ok(self.store.events_after(id, after)?)
    }

    /// Whether a turn is running in the session.
    pub fn is_running(&self, id: &str) -> bool {
        lock(&self.live)
            .get(id)
            .is_some_and(|live| lock(&live.turn).is_some())
    }

    /// A live subscription: replays the log after `after`, then follows new
    /// events while a turn runs, and ends after that turn's terminal event
    /// (or at once, after the replay, when no turn runs).
    pub fn subscribe(&self, id: &str, after: u64) -> Result<mpsc::Receiver<Value>, SessionError> {
        let live = self.live(id)?;
        // Subscribe before reading the log, then skip what the log already
        // gave: nothing is lost between the two and nothing is sent twice.
        let mut rx = live.events.subscribe();
        let replay = self.store.events_after(id, after)?;
        let running = lock(&live.turn).is_some();
        let (tx, out) = mpsc::channel(256);
        let store = self.store.clone();
        let session = id.to_owned();
        tokio::spawn(async move {
            let mut last = after;
            for event in replay {
                last = event["seq"].as_u64().unwrap_or(last);
                if tx.send(event).await.is_err() {
                    return;
                }
            }
            if !running {
                return;
            }
            loop {
                match rx.recv().await {
                    Ok(event) => {
                        let seq = event["seq"].as_u64().unwrap_or(0);
                        if seq <= last {
                            continue;
                        }
                        last = seq;
                        let terminal = matches!(event["type"].as_str(), Some("done" | "error"));
                        if tx.send(event).await.is_err() || terminal {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // A slow subscriber fell behind the channel: catch up
                        // from the log, which has everything.
                        let Ok(missed) = store.events_after(&session, last) else {
                            return;
                        };
                        for event in missed {
                            last = event["seq"].as_u64().unwrap_or(last);
                            let terminal = matches!(event["type"].as_str(), Some("done" | "error"));
                            if tx.send(event).await.is_err() || terminal {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(out)
    }

    /// Starts a turn with `message`.
    pub async fn send(
        self: &Arc<Self>,
        id: &str,
        message: MessageRequest,
    ) -> Result<StartedTurn, SessionError> {
        let live = self.live(id)?;
        if message.text.trim().is_empty() {
            return Err(SessionError::Invalid("`text` must not be empty".into()));
        }
        let participant_type = message
            .participant_type
            .clone()
            .unwrap_or_else(|| "human".into());
        if participant_type != "human" && participant_type != "ai" {
            return Err(SessionError::Invalid(
                "`participant_type` must be \"human\" or \"ai\"".into(),
            ));
        }
        if let Some(agent) = &message.agent
            && !self.app.agents.contains_key(agent)
        {
            return Err(SessionError::Invalid(format!(
                "no agent `{agent}`; this app has: {}",
                self.app
                    .agents
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let cancel = CancellationToken::new();
        {
            let mut turn = lock(&live.turn);
            if turn.is_some() {
                return Err(SessionError::TurnInProgress(id.to_owned()));
            }
            *turn = Some(cancel.clone());
        }

        let (after, request, agent) = {
            let mut record = live.log.lock().await;
            if let Some(agent) = &message.agent {
                record.current_agent = Some(agent.clone());
            }
            let participant = Participant {
                name: message
                    .participant_name
                    .clone()
                    .unwrap_or_else(|| "user".into()),
                kind: participant_type.clone(),
            };
            if !record.participants.contains(&participant) {
                record.participants.push(participant.clone());
            }
            let (stamp, _) = now();
            let user_message = json!({
                "id": format!("msg_{}", uuid::Uuid::new_v4().simple()),
                "role": "user",
                "text": message.text,
                "participant_name": participant.name,
                "participant_type": participant.kind,
                "created_at": stamp,
            });
            let index = record.message_count;
            record.message_count += 1;
            record.updated_at = stamp;
            let stored = self
                .store
                .put_message(id, index, &user_message)
                .and_then(|()| self.store.put_session(&record));
            if let Err(e) = stored {
                lock(&live.turn).take();
                return Err(e.into());
            }
            let agent = record.current_agent.clone();
            let text = if participant.kind == "ai" || record.participants.len() > 1 {
                // Several speakers: tell the model who says what.
                format!("[{}]: {}", participant.name, message.text)
            } else {
                message.text.clone()
            };
            let request = TurnRequest {
                system: self.system_prompt(agent.as_deref()),
                history: record.history.clone(),
                text,
                thinking: message.thinking,
                model: agent
                    .as_deref()
                    .and_then(|a| self.app.agents.get(a))
                    .and_then(|a| a.model.clone())
                    .unwrap_or_else(|| self.config.default_model.clone()),
                agent: agent.clone(),
                session: SessionInfo::default(),
            };
            (record.next_seq - 1, request, agent)
        };
        self.store.flush().await?;

        let (finished_tx, finished) = oneshot::channel();
        let sessions = self.clone();
        tokio::spawn(async move {
            // `run_turn` frees the session itself, before publishing `done`;
            // clearing the flag here again could clear the *next* turn's.
            let summary = sessions.run_turn(live, request, agent, cancel).await;
            let _ = finished_tx.send(summary);
        });
        Ok(StartedTurn { after, finished })
    }

    /// Cancels the running turn, if any; returns whether one was running.
    pub fn cancel(&self, id: &str) -> Result<bool, SessionError> {
        let live = self.live(id)?;
        let running = lock(&live.turn).clone();
        match running {
            Some(cancel) => {
                cancel.cancel();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Answers a pending input request.
    pub fn answer(
        &self,
        id: &str,
        request_id: &str,
        decision: Decision,
    ) -> Result<(), SessionError> {
        let live = self.live(id)?;
        let pending = lock(&live.pending)
            .remove(request_id)
            .ok_or_else(|| SessionError::NoSuchInput(request_id.to_owned()))?;
        if decision == Decision::ApproveSession {
            // Recorded before the turn continues, so the very next call of
            // the same tool is already approved.
            let live = live.clone();
            let tool = pending.tool.clone();
            let store = self.store.clone();
            tokio::spawn(async move {
                let mut record = live.log.lock().await;
                record.approved_tools.insert(tool);
                let _ = store.put_session(&record);
            });
        }
        let _ = pending.answer.send(decision);
        Ok(())
    }

    /// The last event sequence number written.
    pub async fn last_seq(&self, id: &str) -> Result<u64, SessionError> {
        let live = self.live(id)?;
        let record = live.log.lock().await;
        Ok(record.next_seq - 1)
    }

    fn system_prompt(&self, agent: Option<&str>) -> String {
        let mut prompt = self.app.instructions.trim().to_owned();
        if let Some(agent) = agent.and_then(|a| self.app.agents.get(a)) {
            prompt.push_str(&format!("\n\n# Agent: {}\n\n{}", agent.name, agent.prompt));
        }
        if !self.app.skills.is_empty() {
            prompt.push_str("\n\n# Skills\n\nCall `load_skill` with a skill's name to read its instructions before using it.\n");
            for skill in &self.app.skills {
                prompt.push_str(&format!("- {}: {}\n", skill.name, skill.description));
            }
        }
        prompt.trim().to_owned()
    }

    /// What a process harness needs about the session: its workspace
    /// (populated with the app's harness files), a scratch `HOME`, and its
    /// two ways out — the gateway with the session's key and the MCP server
    /// with the session's token.
    fn session_info(
        &self,
        live: &LiveSession,
        tools: &[SessionTool],
    ) -> Result<SessionInfo, String> {
        let workspace = self.config.workspaces.join(&live.id);
        // Before every turn: a plugin may have changed them since. A harness
        // without the app's instructions would answer as someone else, so a
        // failed copy fails the turn.
        crate::app::copy_harness_files(&self.app.root, &workspace)
            .map_err(|e| format!("cannot give the harness the app's files: {e}"))?;
        let token = self.mcp_token(live);
        Ok(SessionInfo {
            id: live.id.clone(),
            workspace,
            home: self.config.homes.join(&live.id),
            gateway_url: self.gateway_url.clone(),
            gateway_key: live.gateway_key.clone(),
            mcp_url: format!("{}/mcp/{token}", self.config.mcp_url),
            env: self.app.env.clone(),
            preapproved_tools: tools
                .iter()
                .filter(|t| !t.approval)
                .map(|t| t.def.name.clone())
                .collect(),
        })
    }

    fn tools_for(&self, agent: Option<&str>) -> Vec<SessionTool> {
        let allowed = agent
            .and_then(|a| self.app.agents.get(a))
            .and_then(|a| a.tools.clone());
        self.tools
            .iter()
            .filter(|t| {
                allowed
                    .as_ref()
                    .is_none_or(|names| t.plugin.is_none() || names.contains(&t.def.name))
            })
            .cloned()
            .collect()
    }

    async fn run_turn(
        self: Arc<Self>,
        live: Arc<LiveSession>,
        request: TurnRequest,
        agent: Option<String>,
        cancel: CancellationToken,
    ) -> TurnSummary {
        let (events_tx, mut events_rx) = mpsc::unbounded_channel::<HarnessEvent>();
        let approved = live.log.lock().await.approved_tools.clone();
        let host = SessionTurnHost {
            sessions: self.clone(),
            live: live.clone(),
            tools: self.tools_for(agent.as_deref()),
            approved: Mutex::new(approved),
            events: events_tx.clone(),
            workspace: self.config.workspaces.join(&live.id),
            cancel: cancel.clone(),
        };
        let mut request = request;
        let builtin;
        let mut unprepared = None;
        let harness: &dyn Harness = match &self.harness {
            Some(harness) => {
                match self.session_info(&live, &host.tools) {
                    Ok(info) => request.session = info,
                    Err(message) => unprepared = Some(message),
                }
                harness.as_ref()
            }
            None => {
                builtin = BuiltinHarness::new(&self.gateway_url, &live.gateway_key);
                &builtin
            }
        };

        // Events are appended in order by one writer task. The terminal event
        // is held back: it is published only once the turn is saved and the
        // session is free for the next message (see below).
        let writer = {
            let sessions = self.clone();
            let live = live.clone();
            tokio::spawn(async move {
                let mut terminal = None;
                while let Some(event) = events_rx.recv().await {
                    if event.is_terminal() {
                        terminal.get_or_insert(event);
                        continue;
                    }
                    let mut record = live.log.lock().await;
                    if let Err(e) = sessions.append(&live, &mut record, &event) {
                        tracing::error!(session = %live.id, "cannot write an event: {e}");
                    }
                }
                terminal
            })
        };
        let context = TurnContext {
            host: &host,
            events: events_tx,
            cancel: cancel.clone(),
        };
        let outcome = match unprepared {
            None => harness.run_turn(request, context).await,
            Some(message) => {
                context.emit(HarnessEvent::Error {
                    code: "app_error".into(),
                    message,
                });
                karta_harness::TurnOutcome {
                    new_messages: Vec::new(),
                    text: String::new(),
                    usage: Usage::default(),
                    status: "error".into(),
                }
            }
        };
        drop(host);
        // Every turn ends with a terminal event, whatever the harness did.
        let terminal = writer.await.ok().flatten().unwrap_or(HarnessEvent::Error {
            code: "harness_error".into(),
            message: "the harness ended the turn without a done event".into(),
        });
        let message_id = match &terminal {
            HarnessEvent::Done { message_id, .. } => message_id.clone(),
            _ => format!("msg_{}", uuid::Uuid::new_v4().simple()),
        };

        // Save the turn, free the session and publish the terminal event under
        // one hold of the log: a client that sees `done` can send its next
        // message at once, and that turn sees this one in its history.
        let mut record = live.log.lock().await;
        if !live.deleted.load(std::sync::atomic::Ordering::SeqCst) {
            record.history.extend(outcome.new_messages.iter().cloned());
            let (stamp, _) = now();
            let assistant = json!({
                "id": message_id,
                "role": "assistant",
                "text": outcome.text,
                "participant_name": agent.clone().unwrap_or_else(|| self.app.name.clone()),
                "participant_type": "ai",
                "agent": agent,
                "status": outcome.status,
                "usage": outcome.usage.to_json(),
                "created_at": stamp,
            });
            let index = record.message_count;
            record.message_count += 1;
            record.updated_at = stamp;
            if let Err(e) = self
                .store
                .put_message(&live.id, index, &assistant)
                .and_then(|()| self.store.put_session(&record))
            {
                tracing::error!(session = %live.id, "cannot save the turn: {e}");
            }
        }
        lock(&live.turn).take();
        match self.append_unpublished(&live, &mut record, &terminal) {
            Ok(envelope) => {
                if let Err(e) = self.store.flush().await {
                    tracing::error!(session = %live.id, "cannot flush the turn: {e}");
                }
                if !envelope.is_null() {
                    let _ = live.events.send(envelope);
                }
            }
            Err(e) => tracing::error!(session = %live.id, "cannot write the terminal event: {e}"),
        }
        drop(record);
        TurnSummary {
            text: outcome.text,
            message_id,
            agent,
            usage: outcome.usage,
            status: outcome.status,
        }
    }

    /// Gives `event` the next sequence number, writes it, then publishes it.
    /// The caller holds the log (`record`), which keeps events in order.
    fn append(
        &self,
        live: &LiveSession,
        record: &mut SessionRecord,
        event: &HarnessEvent,
    ) -> Result<(), StoreError> {
        let envelope = self.append_unpublished(live, record, event)?;
        if !envelope.is_null() {
            let _ = live.events.send(envelope);
        }
        Ok(())
    }

    /// Writes `event` at the next sequence number without publishing it;
    /// returns the envelope (`null` when the session was deleted).
    fn append_unpublished(
        &self,
        live: &LiveSession,
        record: &mut SessionRecord,
        event: &HarnessEvent,
    ) -> Result<Value, StoreError> {
        if live.deleted.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(Value::Null);
        }
        let seq = record.next_seq;
        let (stamp, _) = now();
        let envelope = json!({
            "type": event.kind(),
            "source": "karta",
            "session_id": live.id,
            "timestamp": stamp,
            "seq": seq,
            "data": event.data(),
        });
        self.store.put_event(&live.id, seq, &envelope)?;
        record.next_seq = seq + 1;
        Ok(envelope)
    }
}

fn session_object(record: &SessionRecord, live: &LiveSession) -> Value {
    let pending = lock(&live.pending).values().next().map(|p| p.event.clone());
    let running = lock(&live.turn).is_some();
    let status = match (&pending, running) {
        (Some(_), _) => "waiting_input",
        (None, true) => "running",
        (None, false) => "idle",
    };
    json!({
        "id": record.id,
        "metadata": record.metadata,
        "current_agent": record.current_agent,
        "status": status,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "parent_id": null,
        "pending_input": pending,
        "permission_mode": "default",
        "participants": record.participants,
    })
}

/// The host side of one turn: tools through the plugin runtime, approvals
/// through pending inputs.
struct SessionTurnHost {
    sessions: Arc<Sessions>,
    live: Arc<LiveSession>,
    tools: Vec<SessionTool>,
    approved: Mutex<std::collections::BTreeSet<String>>,
    events: mpsc::UnboundedSender<HarnessEvent>,
    workspace: PathBuf,
    cancel: CancellationToken,
}

impl TurnHost for SessionTurnHost {
    fn tools(&self) -> Vec<ToolDef> {
        self.tools.iter().map(|t| t.def.clone()).collect()
    }

    fn needs_approval(&self, tool: &str) -> bool {
        let approval = self.tools.iter().any(|t| t.def.name == tool && t.approval);
        approval && !lock(&self.approved).contains(tool)
    }

    fn request_approval<'a>(
        &'a self,
        tool: &'a str,
        input: &'a Value,
    ) -> BoxFuture<'a, Option<Decision>> {
        Box::pin(async move {
            let request_id = format!("req_{}", uuid::Uuid::new_v4().simple());
            let event = HarnessEvent::InputRequired {
                request_id: request_id.clone(),
                tool: tool.to_owned(),
                input: input.clone(),
                message: format!("Allow the tool `{tool}` to run with this input?"),
            };
            let (tx, rx) = oneshot::channel();
            lock(&self.live.pending).insert(
                request_id.clone(),
                PendingInput {
                    event: event.data(),
                    tool: tool.to_owned(),
                    answer: tx,
                },
            );
            let _ = self.events.send(event);
            let timeout = self.sessions.config.approval_timeout;
            let decision = tokio::select! {
                answer = tokio::time::timeout(timeout, rx) => answer.ok().and_then(Result::ok),
                () = self.cancel.cancelled() => None,
            };
            lock(&self.live.pending).remove(&request_id);
            if decision == Some(Decision::ApproveSession) {
                lock(&self.approved).insert(tool.to_owned());
            }
            decision
        })
    }

    fn take_tool_run(&self, tool: &str, input: &Value) -> Option<ToolResult> {
        let mut runs = lock(&self.live.tool_runs);
        let index = runs.iter().rposition(|(t, i, _)| t == tool && i == input)?;
        Some(runs.remove(index).2)
    }

    fn call_tool<'a>(&'a self, tool: &'a str, input: &'a Value) -> BoxFuture<'a, ToolResult> {
        Box::pin(run_tool(
            &self.sessions.app,
            &self.tools,
            &self.workspace,
            tool,
            input,
        ))
    }
}

/// Runs `tool` from `tools`: a plugin tool in wasmtime with the session
/// workspace as its preopen, or the built-in `load_skill`.
async fn run_tool(
    app: &AppSpec,
    tools: &[SessionTool],
    workspace: &std::path::Path,
    tool: &str,
    input: &Value,
) -> ToolResult {
    let Some(spec) = tools.iter().find(|t| t.def.name == tool) else {
        return ToolResult {
            content: Err(ToolFailure {
                kind: "unknown_tool".into(),
                message: format!("no tool `{tool}` in this session"),
            }),
            fuel: None,
            duration_ms: 0,
        };
    };
    let Some(plugin) = &spec.plugin else {
        return load_skill(app, input);
    };
    let options = CallOptions {
        workspace: Some(workspace.to_path_buf()),
        fuel_cap: None,
    };
    match plugin.call(tool, &input.to_string(), &options).await {
        Ok(outcome) => ToolResult {
            content: Ok(outcome.output),
            fuel: Some(outcome.fuel_consumed),
            duration_ms: outcome.duration_us / 1000,
        },
        Err(failure) => ToolResult {
            content: Err(ToolFailure {
                kind: failure.kind.as_str().into(),
                message: failure.message,
            }),
            fuel: Some(failure.fuel_consumed),
            duration_ms: failure.duration_us / 1000,
        },
    }
}

/// The built-in `load_skill` tool: returns a skill's instructions.
fn load_skill(app: &AppSpec, input: &Value) -> ToolResult {
    let name = input["name"].as_str().unwrap_or_default();
    let content = match app.skills.iter().find(|s| s.name == name) {
        Some(skill) => Ok(json!({ "name": skill.name, "instructions": skill.body })),
        None => Err(ToolFailure {
            kind: "invalid_input".into(),
            message: format!(
                "no skill `{name}`; skills: {}",
                app.skills
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    };
    ToolResult {
        content,
        fuel: None,
        duration_ms: 0,
    }
}
