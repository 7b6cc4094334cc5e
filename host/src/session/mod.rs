//! Sessions: the public face of everything a session is, in parts named
//! for what they do.
//!
//! | part | file | owns |
//! | --- | --- | --- |
//! | [`Sessions`] | `mod.rs` | the API the HTTP routes and embedders call |
//! | live sessions | `live.rs` | the sessions in memory, bounded; crash repair on load |
//! | event log | `log.rs` | numbering, writing and publishing events; replay; subscriptions |
//! | session records | `lifecycle.rs` | creating, describing, listing and deleting sessions |
//! | turn runner | `turn/` | the message (`message.rs`), the harness run (`mod.rs`), its events (`writer.rs`), the turn's end (`finish.rs`) |
//! | delta bursts | `deltas.rs` | text and reasoning deltas that come faster than a client reads, written as one |
//! | webhook notices | `notices.rs` | the webhook events a session causes, as outbox rows |
//! | approvals | `approvals.rs` | requests waiting for a person, and their answers |
//! | tools | `tools.rs` | which tools a turn may use, and running them |
//! | MCP calls | `mcp_calls.rs` | what the MCP server asks: tokens, a session's tools, a call under its approvals, compiled servers |
//! | warm pool | `pool/` | pre-started harness processes; the refill task and its memory budget (`refill.rs`); a first turn's claim (`claim.rs`) |
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
mod lifecycle;
mod live;
mod log;
mod mcp_calls;
mod notices;
mod pool;
mod tools;
mod turn;
mod types;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use karta_harness::{Decision, Envelope, Harness};
use tokio_util::task::TaskTracker;

use crate::app::AppSpec;
use crate::credentials::Credentials;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::plugin::python_mcp::AppPythonServers;
use crate::store::{Store, TranscriptMessage};
pub use lifecycle::{list_page, valid_session_id};
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

    /// The host's periodic sweep: sessions kept in memory for their
    /// harness process leave it once the process has stopped, and the
    /// credentials unused for `idle` of sessions that have left memory and
    /// have no harness process any more are revoked.
    pub fn sweep(&self, idle: Duration) {
        self.live.sweep(idle);
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
