//! [`Host`]: everything `karta serve` runs, as one value an embedder can
//! build in-process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use karta_harness::ToolDef;

use crate::app::{self, AppError, AppSpec, HarnessKind};
use crate::gateway::{Gateway, Upstream};
use crate::harness::HarnessBinaries;
use crate::plugin::{LoadError, PluginRuntime, RuntimeConfig, RuntimeError};
use crate::session::{SessionConfig, SessionTool, Sessions};
use crate::store::{Store, StoreError};

/// How to build a [`Host`].
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The harness app folder.
    pub app_dir: PathBuf,
    /// Where state lives (sled database, workspaces, compiled plugins).
    pub data_dir: PathBuf,
    /// A real model provider; `None` uses the offline model.
    pub upstream: Option<Upstream>,
    /// How long a turn waits for an approval.
    pub approval_timeout: Duration,
    /// The model name asked for when an agent names none.
    pub default_model: String,
    /// Where the Claude Code and OpenCode binaries are.
    pub harness_binaries: HarnessBinaries,
    /// Run this harness whatever the app asks for.
    pub harness: Option<HarnessKind>,
    /// A harness process is stopped after this long without a turn.
    pub harness_idle_timeout: Duration,
}

impl HostConfig {
    /// Defaults for `app_dir`: data in `./.karta`, the offline model.
    pub fn new(app_dir: impl Into<PathBuf>) -> Self {
        Self {
            app_dir: app_dir.into(),
            data_dir: PathBuf::from(".karta"),
            upstream: None,
            approval_timeout: Duration::from_secs(600),
            default_model: "karta-offline".into(),
            harness_binaries: HarnessBinaries::locate(),
            harness: None,
            harness_idle_timeout: Duration::from_secs(600),
        }
    }
}

/// Why a host could not start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The app folder is invalid.
    #[error("the app is invalid: {0}")]
    App(#[from] AppError),
    /// The data dir could not be used.
    #[error("cannot use the data dir {path}: {message}")]
    DataDir {
        /// The directory.
        path: String,
        /// What failed.
        message: String,
    },
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The plugin runtime could not start.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A plugin of the app could not be loaded.
    #[error("plugin `{name}` ({file}): {source}")]
    Plugin {
        /// The plugin's name.
        name: String,
        /// Where it was declared.
        file: String,
        /// Why.
        source: LoadError,
    },
    /// Two plugins offer the same tool name.
    #[error("tool `{tool}` is offered by both `{first}` and `{second}`; rename one")]
    DuplicateTool {
        /// The tool.
        tool: String,
        /// One plugin.
        first: String,
        /// The other.
        second: String,
    },
    /// The gateway or the MCP server could not listen.
    #[error("cannot start a loopback listener (model gateway, MCP): {0}")]
    Gateway(std::io::Error),
}

/// A running Karta host: the app, its plugins, the store, the gateway and
/// the session manager.
#[derive(Clone)]
pub struct Host {
    sessions: Arc<Sessions>,
    gateway_url: String,
    mcp_url: String,
    harness_notice: Option<String>,
    /// Stops the MCP server when the last clone of the host is dropped: its
    /// task holds the sessions (and so the sled database and its lock).
    _mcp_server: Arc<AbortOnDrop>,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Host {
    /// Loads the app, opens the store, loads every plugin, and starts the
    /// model gateway on a loopback port. Refuses to start on any error.
    pub async fn start(config: HostConfig) -> Result<Self, HostError> {
        let app = app::load(&config.app_dir)?;
        let data_error = |e: std::io::Error| HostError::DataDir {
            path: config.data_dir.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(&config.data_dir).map_err(data_error)?;
        let data_dir = std::fs::canonicalize(&config.data_dir).map_err(data_error)?;
        let store = Store::open(&data_dir.join("db"))?;
        let runtime = PluginRuntime::new(RuntimeConfig {
            cache_dir: Some(data_dir.join("components")),
            ..RuntimeConfig::default()
        })?;
        let tools = load_tools(&runtime, &app).await?;

        let gateway = Gateway::new(config.upstream.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .map_err(HostError::Gateway)?;
        let gateway_url = gateway.serve(listener).await.map_err(HostError::Gateway)?;
        // The MCP server harness processes reach, on a loopback port of its
        // own (like the gateway: the only two ways out of a harness).
        let mcp_listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .map_err(HostError::Gateway)?;
        let mcp_url = format!(
            "http://{}",
            mcp_listener.local_addr().map_err(HostError::Gateway)?
        );
        let selection = crate::harness::select(
            config.harness.unwrap_or(app.harness),
            &config.harness_binaries,
            config.harness_idle_timeout,
        );
        let mut sessions = Sessions::new(
            store,
            Arc::new(app),
            tools,
            gateway,
            gateway_url.clone(),
            SessionConfig {
                workspaces: data_dir.join("workspaces"),
                homes: data_dir.join("homes"),
                mcp_url: mcp_url.clone(),
                approval_timeout: config.approval_timeout,
                default_model: config.default_model,
            },
        );
        if let Some(harness) = selection.harness {
            sessions = sessions.with_harness(harness);
        }
        let sessions = Arc::new(sessions);
        let mcp_router = crate::mcp::router(sessions.clone());
        let mcp_server = tokio::spawn(async move {
            if let Err(e) = axum::serve(mcp_listener, mcp_router).await {
                tracing::error!("the MCP server stopped: {e}");
            }
        });
        Ok(Self {
            sessions,
            gateway_url,
            mcp_url,
            harness_notice: selection.notice,
            _mcp_server: Arc::new(AbortOnDrop(mcp_server)),
        })
    }

    /// The session manager (create sessions, send messages, subscribe).
    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// The app being served.
    pub fn app(&self) -> &AppSpec {
        self.sessions.app()
    }

    /// The harness that runs turns (`builtin`, `claude_code`, `opencode`).
    pub fn harness_name(&self) -> &'static str {
        self.sessions.harness_name()
    }

    /// Why the app does not run on the harness it asks for, when it does
    /// not (its binary is missing).
    pub fn harness_notice(&self) -> Option<&str> {
        self.harness_notice.as_deref()
    }

    /// The model gateway's base URL (loopback).
    pub fn gateway_url(&self) -> &str {
        &self.gateway_url
    }

    /// The MCP server's base URL (loopback); a session's endpoint is
    /// `{mcp_url}/mcp/{token}` with a token from
    /// [`Sessions::issue_mcp_token`].
    pub fn mcp_url(&self) -> &str {
        &self.mcp_url
    }

    /// The HTTP API router.
    pub fn router(&self) -> axum::Router {
        crate::api::router(self.sessions.clone())
    }

    /// Serves the API on `listener` until `shutdown` resolves.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }
}

/// Loads every plugin of the app and collects the session's tool list.
async fn load_tools(runtime: &PluginRuntime, app: &AppSpec) -> Result<Vec<SessionTool>, HostError> {
    let mut tools: Vec<(SessionTool, String)> = Vec::new();
    for spec in &app.plugins {
        let plugin = runtime
            .load_file(&spec.path, spec.grant.clone())
            .await
            .map_err(|source| HostError::Plugin {
                name: spec.name.clone(),
                file: spec.declared_in.display().to_string(),
                source,
            })?;
        for tool in plugin.tools() {
            if let Some((_, first)) = tools.iter().find(|(t, _)| t.def.name == tool.name) {
                return Err(HostError::DuplicateTool {
                    tool: tool.name.clone(),
                    first: first.clone(),
                    second: spec.name.clone(),
                });
            }
            tools.push((
                SessionTool {
                    def: ToolDef {
                        name: tool.name.clone(),
                        description: tool.description.clone(),
                        input_schema: tool.input_schema.clone(),
                    },
                    plugin: Some(plugin.clone()),
                    approval: spec.approval,
                },
                spec.name.clone(),
            ));
        }
    }
    if !app.skills.is_empty() {
        tools.push((
            SessionTool {
                def: ToolDef {
                    name: "load_skill".into(),
                    description: "Reads the instructions of one of the app's skills.".into(),
                    input_schema: serde_json::json!({
                        "type": "object",
                        "properties": { "name": { "type": "string", "description": "The skill's name." } },
                        "required": ["name"],
                    }),
                },
                plugin: None,
                approval: false,
            },
            "skills".into(),
        ));
    }
    Ok(tools.into_iter().map(|(t, _)| t).collect())
}
