//! Sessions: the public face of everything a session is, in parts named
//! for what they do.
//!
//! | part | file | owns |
//! | --- | --- | --- |
//! | [`Sessions`] | `mod.rs` | the API the HTTP routes and embedders call |
//! | live sessions | `live.rs` | the sessions in memory, bounded; crash repair on load |
//! | event log | `log.rs` | numbering, writing and publishing events; replay; subscriptions |
//! | turn runner | `turn.rs` | saving a message, running the harness, saving the turn |
//! | approvals | `approvals.rs` | requests waiting for a person, and their answers |
//! | tools | `tools.rs` | which tools a turn may use, and running them |
//! | harness context | `context.rs` | the system prompt, and what a harness process is given |
//! | types | `types.rs` | the requests, answers and errors of the API above |
//!
//! Records, histories and logs live in [`crate::store`]; the gateway keys
//! and MCP tokens a turn carries out in [`crate::credentials`].
//!
//! One turn runs at a time per session; a message sent while a turn runs is
//! refused with [`SessionError::TurnInProgress`] (HTTP 409) rather than
//! queued, so a client always knows which turn its message started. A turn
//! runs in a task of its own: it goes on when the client that started it
//! disconnects, and stops on cancel, delete or shutdown.

mod approvals;
mod context;
mod deltas;
mod live;
mod log;
mod notices;
mod pool;
mod tools;
mod turn;
mod types;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use karta_harness::{
    Decision, Envelope, ErrorCode, ErrorData, Harness, ToolDef, ToolErrorKind, ToolResult,
};
use serde_json::Value;
use tokio_util::task::TaskTracker;

use crate::app::AppSpec;
use crate::credentials::Credentials;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::plugin::python_mcp::AppPythonServers;
use crate::store::{SessionRecord, Store, TranscriptMessage};
use live::LiveMap;
pub use log::{Published, Subscription};
pub use pool::{PoolConfig, PoolStats, SLOT_PREFIX, tree_rss_bytes};
pub use tools::SessionTool;
use tools::Toolbox;
pub use types::{
    MessageRequest, ProjectPin, SessionConfig, SessionError, SessionObject, SessionParts,
    SessionStatus, StartedTurn, TurnSummary,
};

/// The session manager.
pub struct Sessions {
    store: Store,
    app: Arc<AppSpec>,
    toolbox: Toolbox,
    gateway: Gateway,
    /// The gateway as the builtin loop calls it: in-process, through the
    /// gateway's own request handler ([`Gateway::service`]).
    model_service: Arc<dyn karta_harness::builtin::ModelService>,
    gateway_url: String,
    config: SessionConfig,
    harness: Option<Arc<dyn Harness>>,
    live: Arc<LiveMap>,
    credentials: Arc<Credentials>,
    metrics: Arc<Metrics>,
    /// Every running turn's task, so shutdown can wait for them.
    turns: TaskTracker,
    /// The app's Python MCP servers that run as components (set once, at
    /// start, by [`Sessions::set_python_servers`]).
    python_servers: std::sync::OnceLock<Arc<AppPythonServers>>,
    /// Where sessions' events are told to their org's endpoints (`None`:
    /// nowhere).
    webhooks: Option<crate::webhooks::Webhooks>,
    /// The release's warm pool of harness processes, once started
    /// ([`Sessions::start_pool`]).
    pool: std::sync::OnceLock<Arc<pool::Pool>>,
    /// What each workspace's harness files were after their last sync
    /// (a turn skips the sync when they are unchanged).
    harness_sync: crate::app::SyncMemo,
}

/// Now, as RFC 3339 (milliseconds) and as milliseconds since the epoch.
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

/// Page `page` (1-based) of `per_page` of the stored sessions a listing
/// asks for.
pub fn list_page(
    store: &Store,
    scope: Option<&[u8]>,
    filters: &BTreeMap<String, String>,
    page: usize,
    per_page: usize,
) -> Result<crate::store::SessionPage, SessionError> {
    let offset = page
        .checked_sub(1)
        .and_then(|p| p.checked_mul(per_page))
        .ok_or_else(|| SessionError::Invalid("`page` × `per_page` is too large".into()))?;
    Ok(store.list_sessions(scope, filters, offset, per_page)?)
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
    /// A manager over `parts`.
    pub fn new(parts: SessionParts) -> Self {
        let live = Arc::new(LiveMap::new(
            parts.store.clone(),
            parts.credentials.clone(),
            parts.harness.clone(),
            parts.metrics.clone(),
        ));
        Self {
            toolbox: Toolbox::new(
                parts.app.clone(),
                parts.tools,
                parts.metrics.clone(),
                parts.ledger.clone(),
            ),
            store: parts.store,
            app: parts.app,
            model_service: parts.gateway.service(),
            gateway: parts.gateway,
            gateway_url: parts.gateway_url,
            config: parts.config,
            harness: parts.harness,
            live,
            credentials: parts.credentials,
            metrics: parts.metrics,
            turns: TaskTracker::new(),
            python_servers: std::sync::OnceLock::new(),
            webhooks: parts.webhooks,
            pool: std::sync::OnceLock::new(),
            harness_sync: crate::app::SyncMemo::default(),
        }
    }

    /// Tells the webhook delivery loop that deliveries were just written.
    pub(crate) fn wake_webhooks(&self) {
        if let Some(webhooks) = &self.webhooks {
            webhooks.wake();
        }
    }

    /// Gives the sessions the app's compiled Python MCP servers (once; a
    /// second call is ignored). The host does this at start, before the MCP
    /// server listens.
    pub fn set_python_servers(&self, servers: Arc<AppPythonServers>) {
        let _ = self.python_servers.set(servers);
    }

    /// The app's command MCP servers by how they run: the compiled ones and,
    /// with the reason, those that run as processes.
    pub fn python_servers(&self) -> Option<&AppPythonServers> {
        self.python_servers.get().map(|s| &**s)
    }

    /// Names of the app's MCP servers (`.mcp.json`) that were compiled to
    /// WebAssembly components; each is served at
    /// [`Self::compiled_mcp_server_url`] and must not be started as a
    /// process.
    pub fn compiled_mcp_servers(&self) -> Vec<String> {
        self.python_servers()
            .map(AppPythonServers::compiled_names)
            .unwrap_or_default()
    }

    /// Where a harness reaches the compiled MCP server `name` for the
    /// session whose MCP token is `mcp_token` (streamable HTTP:
    /// `{"type": "http", "url": …}`), or `None` when `name` is not compiled
    /// (then it runs as a process).
    pub fn compiled_mcp_server_url(&self, mcp_token: &str, name: &str) -> Option<String> {
        self.python_servers()?.get(name)?;
        Some(format!(
            "{}/mcp/{mcp_token}/servers/{name}",
            self.config.mcp_url
        ))
    }

    /// The name of the harness that runs turns.
    pub fn harness_name(&self) -> &'static str {
        self.harness.as_ref().map_or("builtin", |h| h.name())
    }

    /// How many harness processes run.
    pub fn harness_process_count(&self) -> usize {
        self.harness.as_ref().map_or(0, |h| h.process_count())
    }

    /// The harness process serving `session_id`, if one runs.
    pub fn harness_process_id(&self, session_id: &str) -> Option<u32> {
        self.harness.as_ref()?.process_id(session_id)
    }

    /// Bills a tool call that ran outside the toolbox (a compiled MCP
    /// server) to the session's tenant; its cost, when billed.
    pub fn bill_fuel(&self, session: &str, tool: &str, fuel: u64, wall_us: u64) -> Option<u64> {
        self.toolbox
            .ledger
            .as_ref()?
            .tool_usage(session, tool, fuel, wall_us)
    }

    /// What the app's setup script installed (`None`: the app has none):
    /// the read-only layer every session's harness starts from.
    pub fn setup_layer(&self) -> Option<&karta_harness::SetupLayer> {
        self.config.access.setup_layer.as_ref()
    }

    /// The org, project and release these sessions run on.
    pub fn scope(&self) -> Option<&crate::store::SessionScope> {
        self.config.scope.as_ref()
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

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// How many sessions are in memory now.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// The MCP token of `session_id`: an unguessable bearer of the
    /// session's tools, for a harness process's MCP client.
    pub fn issue_mcp_token(&self, session_id: &str) -> Result<String, SessionError> {
        if !self.store.contains_session(session_id)? {
            return Err(SessionError::NotFound(session_id.to_owned()));
        }
        Ok(self.credentials.for_session(session_id).mcp_token)
    }

    /// The session an MCP token belongs to.
    pub fn session_for_mcp_token(&self, token: &str) -> Option<String> {
        self.credentials.session_for_mcp_token(token)
    }

    /// Records a call of the app's compiled MCP server `server` (its fuel
    /// and time), so the harness's `tool_use` of it reports them as it does
    /// for plugins: under the names Claude Code (`mcp__<server>__<tool>`)
    /// and OpenCode (`<server>_<tool>`) give the tool.
    pub fn record_app_server_run(
        &self,
        session: &str,
        server: &str,
        tool: &str,
        input: &serde_json::Value,
        result: &karta_harness::ToolResult,
    ) {
        if let Some(live) = self.live.peek(session) {
            live.record_tool_run(&format!("mcp__{server}__{tool}"), input, result);
            live.record_tool_run(&format!("{server}_{tool}"), input, result);
        }
    }

    /// The host's periodic sweep: sessions kept in memory for their
    /// harness process leave it once the process has stopped, and the
    /// credentials unused for `idle` of sessions that have left memory and
    /// have no harness process any more are revoked.
    pub fn sweep(&self, idle: Duration) {
        self.live.sweep(idle);
    }

    /// The tools the session's current agent may use.
    pub async fn session_tools(&self, id: &str) -> Result<Vec<ToolDef>, SessionError> {
        // A pooled process, before a session claims it, runs as the main
        // agent.
        let agent = if self.is_pool_slot(id) {
            None
        } else {
            self.record(id)?.current_agent
        };
        // A process harness reads the app's skills itself, natively; it gets
        // only the plugin tools.
        let process_harness = self.harness.is_some();
        Ok(self
            .toolbox
            .for_agent(agent.as_deref())
            .iter()
            .filter(|t| t.plugin.is_some() || !process_harness)
            .map(|t| t.def.clone())
            .collect())
    }

    /// Runs one of the session's tools outside a builtin turn (for a harness
    /// that calls tools over MCP), with the session workspace as its preopen.
    ///
    /// A tool that needs approval runs only if it was approved for the
    /// session, or for this call through the running turn (a person is
    /// asked there if need be: `input_required`, then the `PUT` answer).
    /// Otherwise — denied, timed out, no turn running — it does not run and
    /// the result is a `denied` tool error. The harness's own settings are
    /// not trusted to have asked.
    pub async fn call_tool(
        &self,
        id: &str,
        tool: &str,
        input: &Value,
    ) -> Result<ToolResult, SessionError> {
        let live = self.live.get(id).await?;
        let (agent, approved_before) = {
            let state = live.state.lock().await;
            let record = &state.record;
            let approved = record.approved_tools.contains(tool);
            (record.current_agent.clone(), approved)
        };
        let tools = self.toolbox.for_agent(agent.as_deref());
        let needs_approval = tools.iter().any(|t| t.def.name == tool && t.approval);
        let authorized = if needs_approval {
            live.approvals.authorize(tool, input, approved_before).await
        } else {
            Ok(())
        };
        let result = match authorized {
            Ok(()) => {
                self.toolbox
                    .run(id, &tools, &self.workspace(id), tool, input)
                    .await
            }
            Err(why) => ToolResult::failed(ToolErrorKind::Denied, why),
        };
        // Denials too: the harness adapter reports the call with the host's
        // verdict, whatever the harness makes of the MCP error.
        live.record_tool_run(tool, input, &result);
        Ok(result)
    }

    fn record(&self, id: &str) -> Result<SessionRecord, SessionError> {
        self.store
            .session(id)?
            .ok_or_else(|| SessionError::NotFound(id.to_owned()))
    }

    /// Creates a session, or returns the existing one when `session_id` names
    /// one (resume). Durable before it returns; it does not stay in memory.
    pub async fn create(
        &self,
        session_id: Option<String>,
        metadata: BTreeMap<String, String>,
    ) -> Result<SessionObject, SessionError> {
        self.create_for(session_id, metadata, None).await
    }

    /// [`Sessions::create`] for an end user: the session is stamped with
    /// this manager's project and release and with `end_user_id`, and is
    /// listed under them. (Whether an existing `session_id` belongs to the
    /// caller is the API's check, made before this.)
    pub async fn create_for(
        &self,
        session_id: Option<String>,
        metadata: BTreeMap<String, String>,
        end_user_id: Option<String>,
    ) -> Result<SessionObject, SessionError> {
        self.create_billed(session_id, metadata, end_user_id, None)
            .await
    }

    /// [`Sessions::create_for`], also stamped with the credential the
    /// session is created with (`credential_id`: its usage counts against
    /// that key's budgets).
    pub async fn create_billed(
        &self,
        session_id: Option<String>,
        metadata: BTreeMap<String, String>,
        end_user_id: Option<String>,
        credential_id: Option<String>,
    ) -> Result<SessionObject, SessionError> {
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
            if self.store.contains_session(id)? {
                return self.object(id).await;
            }
        }
        let id = session_id.unwrap_or_else(|| format!("ses_{}", uuid::Uuid::new_v4().simple()));
        let (stamp, ms) = now();
        let record = SessionRecord {
            v: 2,
            id: id.clone(),
            metadata,
            current_agent: None,
            created_at: stamp.clone(),
            updated_at: stamp,
            created_ms: ms,
            participants: Vec::new(),
            approved_tools: Default::default(),
            turn_running: false,
            seq_reserved: 0,
            scope: self.config.scope.clone().map(|mut scope| {
                scope.end_user_id = end_user_id;
                scope.credential_id = credential_id;
                scope
            }),
        };
        std::fs::create_dir_all(self.workspace(&id)).map_err(|e| {
            SessionError::Invalid(format!("cannot create the session workspace: {e}"))
        })?;
        let deliveries = self.notice_started(&record);
        self.store.create_session_notifying(&record, &deliveries)?;
        self.store.flush_log().await?;
        if !deliveries.is_empty() {
            self.wake_webhooks();
        }
        Ok(SessionObject::new(&record, false, None))
    }

    /// The protocol's session object.
    pub async fn object(&self, id: &str) -> Result<SessionObject, SessionError> {
        let live = self.live.get(id).await?;
        let record = live.state.lock().await.record.clone();
        Ok(SessionObject::new(
            &record,
            live.is_running(),
            live.approvals.first_pending(),
        ))
    }

    /// Sessions under `scope` (a [`crate::store::SessionScope`] index key;
    /// `None`: all) whose metadata contains every `filters` pair, newest
    /// first: page `page` (1-based) of `per_page`, and how many match in
    /// all.
    pub fn list(
        &self,
        scope: Option<&[u8]>,
        filters: &BTreeMap<String, String>,
        page: usize,
        per_page: usize,
    ) -> Result<(Vec<SessionObject>, usize), SessionError> {
        let found = list_page(&self.store, scope, filters, page, per_page)?;
        let objects = found.records.iter().map(|r| self.describe(r)).collect();
        Ok((objects, found.total))
    }

    /// The session object of a stored record, with its turn and approvals
    /// when this manager holds it in memory.
    pub fn describe(&self, record: &SessionRecord) -> SessionObject {
        match self.live.peek(&record.id) {
            Some(live) => {
                SessionObject::new(record, live.is_running(), live.approvals.first_pending())
            }
            None => SessionObject::new(record, false, None),
        }
    }

    /// Deletes a session: cancels its turn, drops its log, transcript and
    /// workspace, revokes its credentials, stops its harness process. Its
    /// subscribers' streams end with a `session_deleted` error frame.
    pub async fn delete(&self, id: &str) -> Result<(), SessionError> {
        let live = self.live.get(id).await?;
        live.mark_deleted();
        if let Some(cancel) = lock(&live.turn).clone() {
            cancel.cancel();
        }
        live.approvals.clear();
        {
            let _state = live.state.lock().await;
            self.store.delete_session(id)?;
            self.store.flush_log().await?;
        }
        live.publish(Published::Failed(ErrorData {
            code: ErrorCode::SessionDeleted,
            message: format!("session `{id}` was deleted"),
        }));
        self.live.remove(id);
        self.credentials.revoke(id);
        self.gateway.take_usage(id);
        if let Some(ledger) = &self.toolbox.ledger {
            ledger.forget(id);
            ledger.take_turn_cost(id);
        }
        if let Some(harness) = &self.harness {
            harness.end_session(id).await;
        }
        self.harness_sync.forget(&self.workspace(id));
        let _ = std::fs::remove_dir_all(self.workspace(id));
        let _ = std::fs::remove_dir_all(self.config.homes.join(id));
        Ok(())
    }

    /// The transcript: every message with its sender.
    pub fn transcript(&self, id: &str) -> Result<Vec<TranscriptMessage>, SessionError> {
        if !self.store.contains_session(id)? {
            return Err(SessionError::NotFound(id.to_owned()));
        }
        Ok(self.store.messages(id)?)
    }

    /// Events with a sequence number above `after`.
    pub fn events_after(&self, id: &str, after: u64) -> Result<Vec<Envelope>, SessionError> {
        if !self.store.contains_session(id)? {
            return Err(SessionError::NotFound(id.to_owned()));
        }
        Ok(self.store.events_after(id, after)?)
    }

    /// Whether a turn is running in the session.
    pub fn is_running(&self, id: &str) -> bool {
        self.live.peek(id).is_some_and(|live| live.is_running())
    }

    /// A live subscription: replays the log after `after`, then follows the
    /// running turn until its end or its next `input_required`.
    pub async fn subscribe(&self, id: &str, after: u64) -> Result<Subscription, SessionError> {
        let live = self.live.get(id).await?;
        log::subscribe(live, self.store.clone(), after).await
    }

    /// Starts a turn with `message`.
    pub async fn send(
        self: &Arc<Self>,
        id: &str,
        message: MessageRequest,
    ) -> Result<StartedTurn, SessionError> {
        turn::start(self, id, message).await
    }

    /// Cancels the running turn, if any; returns whether one was running.
    pub async fn cancel(&self, id: &str) -> Result<bool, SessionError> {
        let live = self.live.get(id).await?;
        let running = lock(&live.turn).clone();
        Ok(running.map(|cancel| cancel.cancel()).is_some())
    }

    /// Answers a pending input request.
    pub async fn answer(
        &self,
        id: &str,
        request_id: &str,
        decision: Decision,
    ) -> Result<(), SessionError> {
        let live = self.live.get(id).await?;
        live.approvals.answer(request_id, decision)
    }

    /// The last event sequence number written.
    pub async fn last_seq(&self, id: &str) -> Result<u64, SessionError> {
        let live = self.live.get(id).await?;
        let state = live.state.lock().await;
        Ok(state.next_seq - 1)
    }

    /// Stops every running turn and waits for their tasks to end (each
    /// saves its turn as cancelled).
    pub async fn shutdown(&self) {
        self.shutdown_pool().await;
        self.live.cancel_turns();
        self.turns.close();
        self.turns.wait().await;
        if let Some(harness) = &self.harness {
            for id in self.credentials.idle_sessions(Duration::ZERO) {
                harness.end_session(&id).await;
            }
        }
    }
}
