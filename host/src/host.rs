//! [`Host`]: everything `karta serve` runs, as one value an embedder can
//! build in-process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use karta_harness::ToolDef;
use karta_harness::http::HttpClient;

use crate::app::{self, AppError, AppSpec, HarnessKind};
use crate::credentials::Credentials;
use crate::gateway::{Gateway, Upstream};
use crate::harness::HarnessBinaries;
use crate::listen::ServerTask;
use crate::metrics::Metrics;
use crate::plugin::{LoadError, PluginRuntime, RuntimeConfig, RuntimeError};
use crate::session::{SessionConfig, SessionParts, SessionTool, Sessions};
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
    /// Internal address ranges (loopback, private, link-local, …) plugin HTTP
    /// may reach anyway; empty refuses them all (see `plugin::RuntimeConfig`).
    pub plugin_allow_net: Vec<crate::plugin::IpNet>,
    /// The longest deadline a plugin grant may ask for; a longer
    /// `timeout_ms` refuses the app at start.
    pub plugin_max_timeout: Duration,
    /// The jail of harness processes and its limits; `None` runs them
    /// unconfined (the operator's `--no-jail`).
    pub jail: Option<karta_harness::process::JailLimits>,
    /// Whether the app's Python stdio MCP servers are compiled to
    /// WebAssembly components, and where they are cached.
    pub python_mcp: crate::plugin::python_mcp::PythonMcpConfig,
    /// Claude Code's and OpenCode's own acting tools (Bash, Read, …) are
    /// on, working on the session workspace inside the jail (the
    /// operator's `--no-harness-tools` turns them off).
    pub harness_tools: bool,
    /// The app's setup script: which hosts it may reach and for how long
    /// it may run (see [`crate::setup`]).
    pub setup: crate::setup::SetupConfig,
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
            plugin_allow_net: Vec::new(),
            plugin_max_timeout: crate::plugin::DEFAULT_MAX_TIMEOUT,
            jail: Some(Default::default()),
            python_mcp: Default::default(),
            harness_tools: true,
            setup: Default::default(),
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
    /// The app's setup script failed (its output is in the message) or
    /// could not run.
    #[error(transparent)]
    Setup(#[from] crate::setup::SetupError),
    /// The gateway or the MCP server could not listen.
    #[error("cannot start a loopback listener (model gateway, MCP): {0}")]
    Gateway(std::io::Error),
}

/// A running Karta host: the app, its plugins, the store, the gateway, the
/// MCP server and the session manager. Cheap to clone; [`Host::shutdown`]
/// stops it.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

struct HostInner {
    sessions: Arc<Sessions>,
    gateway_url: String,
    mcp_url: String,
    harness_notice: Option<String>,
    /// What the app's setup script installed, shared by every session.
    setup_layer: Option<karta_harness::SetupLayer>,
    /// The API servers [`Host::spawn_api`] started.
    api: tokio::sync::Mutex<Vec<ServerTask>>,
    /// The gateway and the MCP server: stopped after the turns.
    ways_out: tokio::sync::Mutex<Vec<ServerTask>>,
    /// Revokes the credentials of sessions whose harness process stopped.
    sweeper: tokio::task::AbortHandle,
}

impl Drop for HostInner {
    fn drop(&mut self) {
        self.sweeper.abort();
    }
}

/// How often credentials left by stopped harness processes are revoked.
const CREDENTIAL_SWEEP: Duration = Duration::from_secs(30);

async fn loopback_listener() -> Result<tokio::net::TcpListener, HostError> {
    tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .map_err(HostError::Gateway)
}

/// What harness processes may use of their own: their tools (unless the
/// operator turned them off), the app's command MCP servers run from its
/// folder, the folder itself read-only in the jail — minus the data dir
/// when it lies inside (other sessions' workspaces, the store).
fn harness_access(
    config: &HostConfig,
    app: &app::AppSpec,
    data_dir: &std::path::Path,
) -> karta_harness::HarnessAccess {
    use karta_harness::{AppMcpServer, McpTransport};
    // Absolute: the jail binds it at its own path, and stdio servers `cd`
    // into it from the workspace.
    let app_root = std::fs::canonicalize(&app.root).unwrap_or_else(|_| app.root.clone());
    karta_harness::HarnessAccess {
        builtin_tools: config.harness_tools,
        autonomous: app.permission_mode == app::PermissionMode::Autonomous,
        mcp_servers: app
            .command_servers
            .iter()
            .map(|server| AppMcpServer {
                name: server.name.clone(),
                transport: McpTransport::Stdio {
                    command: server.command.clone(),
                    args: server.args.clone(),
                    env: server.env.clone(),
                },
            })
            .collect(),
        app_root: Some(app_root.clone()),
        hidden: if data_dir.starts_with(&app_root) {
            vec![data_dir.to_path_buf()]
        } else {
            Vec::new()
        },
        // Set by `Host::start` once the setup script has run.
        setup_layer: None,
    }
}

impl Host {
    /// Loads the app, opens the store, loads every plugin, and starts the
    /// model gateway and the MCP server on loopback ports of their own.
    /// Refuses to start on any error.
    pub async fn start(config: HostConfig) -> Result<Self, HostError> {
        let mut app = app::load(&config.app_dir)?;
        let data_error = |e: std::io::Error| HostError::DataDir {
            path: config.data_dir.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(&config.data_dir).map_err(data_error)?;
        let data_dir = std::fs::canonicalize(&config.data_dir).map_err(data_error)?;
        let store = Store::open(&data_dir.join("db"))?;
        // After the store: its lock keeps a second host on this data dir
        // from running the same setup at the same time.
        let setup_layer = crate::setup::ensure(&app, &data_dir, &config.setup, config.jail).await?;
        let runtime = PluginRuntime::new(RuntimeConfig {
            cache_dir: Some(data_dir.join("components")),
            allow_net: config.plugin_allow_net.clone(),
            max_timeout: config.plugin_max_timeout,
            ..RuntimeConfig::default()
        })?;
        let tools = load_tools(&runtime, &app).await?;
        // Agents' `tools` in the harness files name only the app's tools,
        // known now that the plugins are loaded.
        app.harness_files
            .restrict_tools(tools.iter().map(|t| t.def.name.as_str()));

        // The app's Python MCP servers, compiled to components where they
        // can be (the rest run as processes; the reasons are kept).
        let python_cache = config
            .python_mcp
            .cache_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("python-mcp"));
        let python_servers = Arc::new(
            crate::plugin::python_mcp::AppPythonServers::load(
                &runtime,
                &app.root,
                &app.command_servers,
                &config.python_mcp,
                &python_cache,
            )
            .await,
        );

        let credentials = Arc::new(Credentials::new());
        let metrics = Arc::new(Metrics::new());
        let http = HttpClient::new();
        let gateway = Gateway::new(
            config.upstream.clone(),
            credentials.clone(),
            metrics.clone(),
        );
        let (gateway_url, gateway_server) = gateway
            .serve(loopback_listener().await?)
            .map_err(HostError::Gateway)?;
        // The MCP server harness processes reach, on a loopback port of its
        // own (like the gateway: the only two ways out of a harness).
        let mcp_listener = loopback_listener().await?;
        let mcp_url = format!(
            "http://{}",
            mcp_listener.local_addr().map_err(HostError::Gateway)?
        );
        let selection = crate::harness::select(
            config.harness.unwrap_or(app.harness),
            &config.harness_binaries,
            config.harness_idle_timeout,
            &http,
            config.jail,
        );
        let mut access = harness_access(&config, &app, &data_dir);
        access.setup_layer = setup_layer.clone();
        let sessions = Arc::new(Sessions::new(SessionParts {
            store,
            app: Arc::new(app),
            tools,
            gateway,
            gateway_url: gateway_url.clone(),
            config: SessionConfig {
                workspaces: data_dir.join("workspaces"),
                homes: data_dir.join("homes"),
                mcp_url: mcp_url.clone(),
                approval_timeout: config.approval_timeout,
                default_model: config.default_model,
                access,
            },
            harness: selection.harness,
            http,
            credentials,
            metrics,
        }));
        sessions.set_python_servers(python_servers);
        let mcp_server = crate::listen::spawn_server(
            "MCP server",
            mcp_listener,
            crate::mcp::router(sessions.clone()),
        );
        let sweeper = {
            let sessions = Arc::downgrade(&sessions);
            tokio::spawn(async move {
                let mut every = tokio::time::interval(CREDENTIAL_SWEEP);
                loop {
                    every.tick().await;
                    match sessions.upgrade() {
                        Some(sessions) => sessions.sweep_credentials(CREDENTIAL_SWEEP),
                        None => return,
                    }
                }
            })
            .abort_handle()
        };
        Ok(Self {
            inner: Arc::new(HostInner {
                sessions,
                gateway_url,
                mcp_url,
                harness_notice: selection.notice,
                setup_layer,
                api: tokio::sync::Mutex::default(),
                ways_out: tokio::sync::Mutex::new(vec![gateway_server, mcp_server]),
                sweeper,
            }),
        })
    }

    /// The session manager (create sessions, send messages, subscribe).
    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.inner.sessions
    }

    /// The app being served.
    pub fn app(&self) -> &AppSpec {
        self.inner.sessions.app()
    }

    /// The harness that runs turns (`builtin`, `claude_code`, `opencode`).
    pub fn harness_name(&self) -> &'static str {
        self.inner.sessions.harness_name()
    }

    /// Why the app does not run on the harness it asks for, when it does
    /// not (its binary is missing).
    pub fn harness_notice(&self) -> Option<&str> {
        self.inner.harness_notice.as_deref()
    }

    /// What the app's setup script installed (`None`: the app has none):
    /// the read-only layer every session's harness starts from.
    pub fn setup_layer(&self) -> Option<&karta_harness::SetupLayer> {
        self.inner.setup_layer.as_ref()
    }

    /// The model gateway's base URL (loopback).
    pub fn gateway_url(&self) -> &str {
        &self.inner.gateway_url
    }

    /// The MCP server's base URL (loopback); a session's endpoint is
    /// `{mcp_url}/mcp/{token}` with a token from
    /// [`Sessions::issue_mcp_token`].
    pub fn mcp_url(&self) -> &str {
        &self.inner.mcp_url
    }

    /// The HTTP API router.
    pub fn router(&self) -> axum::Router {
        crate::api::router(self.inner.sessions.clone())
    }

    /// Serves the API on `listener` until `shutdown` resolves (the CLI's
    /// way; see [`Host::spawn_api`] for a server the host stops itself).
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let server = crate::listen::spawn_server("API", listener, self.router());
        shutdown.await;
        server.stop().await;
        Ok(())
    }

    /// Serves the API on `listener` in the background until
    /// [`Host::shutdown`]; returns the address it listens on.
    pub async fn spawn_api(
        &self,
        listener: tokio::net::TcpListener,
    ) -> std::io::Result<SocketAddr> {
        let addr = listener.local_addr()?;
        let server = crate::listen::spawn_server("API", listener, self.router());
        self.inner.api.lock().await.push(server);
        Ok(addr)
    }

    /// Stops the host: the API stops accepting, running turns are
    /// cancelled and saved, harness processes are stopped, then the MCP
    /// server and the gateway stop. Once every clone of the host is
    /// dropped, the store is closed and its data dir may be opened again.
    pub async fn shutdown(&self) {
        // The API first, so no new turn starts; then the turns; then the
        // ways out, which the turns were using.
        let api = std::mem::take(&mut *self.inner.api.lock().await);
        for server in api {
            server.stop().await;
        }
        self.inner.sessions.shutdown().await;
        let ways_out = std::mem::take(&mut *self.inner.ways_out.lock().await);
        for server in ways_out {
            server.stop().await;
        }
        self.inner.sweeper.abort();
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
