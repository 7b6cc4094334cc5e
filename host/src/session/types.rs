//! The requests, answers and errors of the session API.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use karta_harness::{Harness, InputRequiredData, TurnStatus, Usage};
use serde::Serialize;
use tokio::sync::oneshot;

use super::SessionTool;
use crate::app::AppSpec;
use crate::credentials::Credentials;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::store::{Participant, ParticipantType, SessionRecord, SessionScope, Store, StoreError};

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
    /// What harness processes may use of their own (their tools, the
    /// app's MCP servers).
    pub access: karta_harness::HarnessAccess,
    /// The org, project and release these sessions run on, stamped on
    /// every session created here (its `end_user_id` is left empty); `None`
    /// for an embedder's host without projects.
    pub scope: Option<SessionScope>,
}

/// What the session manager is built from.
pub struct SessionParts {
    /// The database.
    pub store: Store,
    /// The app served.
    pub app: Arc<AppSpec>,
    /// Its tools.
    pub tools: Vec<SessionTool>,
    /// The model gateway.
    pub gateway: Gateway,
    /// The gateway's base URL.
    pub gateway_url: String,
    /// Settings.
    pub config: SessionConfig,
    /// The process harness that runs turns; `None` runs them on the builtin
    /// loop.
    pub harness: Option<Arc<dyn Harness>>,
    /// The credentials registry the gateway and the MCP server check.
    pub credentials: Arc<Credentials>,
    /// Where turns and tool calls are counted.
    pub metrics: Arc<Metrics>,
    /// Where tool calls are billed, and budgets checked (`None`: nothing
    /// is billed).
    pub ledger: Option<crate::billing::Ledger>,
    /// Where sessions' events (`session.started`, `turn.completed`,
    /// `turn.failed`) are told to their org's webhook endpoints (`None`:
    /// nowhere).
    pub webhooks: Option<crate::webhooks::Webhooks>,
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
    /// A person (default) or an agent.
    pub participant_type: Option<ParticipantType>,
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
    /// Tokens the gateway metered for the turn.
    pub usage: Usage,
    /// How it ended.
    pub status: TurnStatus,
}

/// Where a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    /// No turn runs.
    Idle,
    /// A turn runs.
    Running,
    /// A turn waits for a person (`pending_input`).
    WaitingInput,
}

/// The protocol's session object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionObject {
    /// The session id.
    pub id: String,
    /// Caller metadata.
    pub metadata: BTreeMap<String, String>,
    /// The agent the session talks to.
    pub current_agent: Option<String>,
    /// Where it is.
    pub status: SessionStatus,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// Always `null`: sessions have no parents yet.
    pub parent_id: Option<String>,
    /// The approval a turn waits for.
    pub pending_input: Option<InputRequiredData>,
    /// Always `default`: tools ask as the app's grants say.
    pub permission_mode: &'static str,
    /// Who has spoken.
    pub participants: Vec<Participant>,
    /// The project and release the session is pinned to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<ProjectPin>,
}

/// A session's `project`: which project it belongs to and the release it
/// runs on (it stays there when another release is activated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectPin {
    /// `org/project`.
    #[serde(rename = "ref")]
    pub project_ref: String,
    /// The project's id.
    pub project_id: String,
    /// The release's version (`0`: the folder `karta serve DIR` serves).
    pub version: u32,
    /// The session's end user, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_user_id: Option<String>,
}

impl SessionObject {
    /// The object of a stored record (`running` and `pending` from the
    /// manager that holds it in memory, if one does).
    pub fn new(record: &SessionRecord, running: bool, pending: Option<InputRequiredData>) -> Self {
        let status = match (&pending, running) {
            (Some(_), _) => SessionStatus::WaitingInput,
            (None, true) => SessionStatus::Running,
            (None, false) => SessionStatus::Idle,
        };
        Self {
            id: record.id.clone(),
            metadata: record.metadata.clone(),
            current_agent: record.current_agent.clone(),
            status,
            created_at: record.created_at.clone(),
            updated_at: record.updated_at.clone(),
            parent_id: None,
            pending_input: pending,
            permission_mode: "default",
            participants: record.participants.clone(),
            project: record.scope.as_ref().map(|scope| ProjectPin {
                project_ref: format!("{}/{}", scope.org_slug, scope.project_slug),
                project_id: scope.project_id.clone(),
                version: scope.version,
                end_user_id: scope.end_user_id.clone(),
            }),
        }
    }
}
