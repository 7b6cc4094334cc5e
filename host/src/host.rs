//! [`Host`]: everything `karta serve` runs, as one value an embedder can
//! build in-process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use karta_harness::http::HttpClient;

use crate::app::{AppError, AppSpec, HarnessKind};
use crate::auth::Auth;
use crate::credentials::Credentials;
use crate::gateway::{Gateway, Upstream};
use crate::harness::HarnessBinaries;
use crate::listen::ServerTask;
use crate::metrics::Metrics;
use crate::plugin::{LoadError, PluginRuntime, RuntimeConfig, RuntimeError};
use crate::projects::{Projects, Shared};
use crate::release::Releases;
use crate::session::Sessions;
use crate::store::{Store, StoreError};

/// How to build a [`Host`].
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The harness app folder served as the dev org's project (`karta
    /// serve DIR`); `None` serves only published projects.
    pub app_dir: Option<PathBuf>,
    /// Where state lives (sled database, workspaces, compiled plugins).
    pub data_dir: PathBuf,
    /// How far an acknowledged write is durable: the host process dying
    /// (the default), or the machine too (every flush ends with a
    /// file-system sync; see [`crate::store::Durability`]).
    pub durability: crate::store::Durability,
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
    /// The nice value of harness processes (see
    /// [`karta_harness::process::DEFAULT_HARNESS_NICE`]); 0 runs them as
    /// the host.
    pub harness_nice: i32,
    /// The warm pool of pre-started harness processes per loaded release
    /// (off by default here; `karta serve` asks for 2). See
    /// [`crate::session::PoolConfig`].
    pub pool: crate::session::PoolConfig,
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
    /// Where an org's own provider keys (BYOK) send its model calls.
    pub provider_urls: crate::billing::ProviderUrls,
    /// What tokens and fuel cost (integer micro-units).
    pub prices: crate::meter::PriceTable,
    /// How webhook deliveries are retried and endpoints disabled. Where
    /// endpoints may point is `plugin_allow_net`'s policy.
    pub webhooks: crate::webhooks::WebhookConfig,
    /// Whether the gateway keeps the last model requests' bodies for
    /// [`crate::gateway::Gateway::recent_requests`] (tests, benches). Off by
    /// default: they are end users' conversations.
    pub keep_model_requests: bool,
}

impl HostConfig {
    /// Defaults for serving `app_dir`: data in `./.karta`, the offline
    /// model.
    pub fn new(app_dir: impl Into<PathBuf>) -> Self {
        Self {
            app_dir: Some(app_dir.into()),
            data_dir: PathBuf::from(".karta"),
            durability: Default::default(),
            upstream: None,
            approval_timeout: Duration::from_secs(600),
            default_model: "karta-offline".into(),
            harness_binaries: HarnessBinaries::locate(),
            harness: None,
            harness_idle_timeout: Duration::from_secs(600),
            harness_nice: karta_harness::process::DEFAULT_HARNESS_NICE,
            pool: crate::session::PoolConfig::OFF,
            plugin_allow_net: Vec::new(),
            plugin_max_timeout: crate::plugin::DEFAULT_MAX_TIMEOUT,
            jail: Some(Default::default()),
            python_mcp: Default::default(),
            harness_tools: true,
            setup: Default::default(),
            provider_urls: Default::default(),
            prices: Default::default(),
            webhooks: Default::default(),
            keep_model_requests: false,
        }
    }

    /// Defaults for serving the published projects of a data dir (`karta
    /// serve` without a folder).
    pub fn published(data_dir: impl Into<PathBuf>) -> Self {
        let mut config = Self::new(PathBuf::new());
        config.app_dir = None;
        config.data_dir = data_dir.into();
        config
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
    /// Orgs and credentials could not be read.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// Releases could not be read.
    #[error(transparent)]
    Release(#[from] crate::release::ReleaseError),
    /// The usage ledger could not be opened.
    #[error("cannot open the usage ledger: {0}")]
    Meter(String),
    /// The master key or the sealed provider keys could not be read.
    #[error(transparent)]
    Byok(#[from] crate::byok::ByokError),
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

/// A running Karta host: the projects it serves (a folder, published
/// releases, or both), the store, the gateway, the MCP server. Cheap to
/// clone; [`Host::shutdown`] stops it.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

struct HostInner {
    projects: Arc<Projects>,
    gateway_url: String,
    mcp_url: String,
    /// The API servers [`Host::spawn_api`] started.
    api: tokio::sync::Mutex<Vec<ServerTask>>,
    /// The gateway and the MCP server: stopped after the turns.
    ways_out: tokio::sync::Mutex<Vec<ServerTask>>,
    /// Revokes the credentials of sessions whose harness process stopped
    /// (taken and awaited at shutdown).
    sweeper: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Sends the webhook outbox (stopped at shutdown; what is pending is
    /// sent at the next start).
    webhook_delivery: tokio::sync::Mutex<Option<crate::webhooks::DeliveryTask>>,
}

impl Drop for HostInner {
    fn drop(&mut self) {
        let sweeper = self
            .sweeper
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(sweeper) = sweeper.take() {
            sweeper.abort();
        }
    }
}

/// How often the host sweeps: sessions whose harness process stopped leave
/// memory, and the credentials such processes left are revoked.
const CREDENTIAL_SWEEP: Duration = Duration::from_secs(30);

async fn loopback_listener() -> Result<tokio::net::TcpListener, HostError> {
    tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .map_err(HostError::Gateway)
}

impl Host {
    /// Opens the store, loads the folder (if the config names one) and
    /// every plugin of it, and starts the model gateway and the MCP server
    /// on loopback ports of their own. Published releases are loaded when a
    /// session first needs them. Refuses to start on any error.
    pub async fn start(config: HostConfig) -> Result<Self, HostError> {
        let data_error = |e: std::io::Error| HostError::DataDir {
            path: config.data_dir.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(&config.data_dir).map_err(data_error)?;
        let data_dir = std::fs::canonicalize(&config.data_dir).map_err(data_error)?;
        let store = Store::open_with(&data_dir.join("db"), config.durability)?;
        let auth = Auth::open(store.clone(), &data_dir)?;
        let releases = Releases::open(store.clone(), &data_dir)?;
        let runtime = PluginRuntime::new(RuntimeConfig {
            cache_dir: Some(data_dir.join("components")),
            allow_net: config.plugin_allow_net.clone(),
            max_timeout: config.plugin_max_timeout,
            ..RuntimeConfig::default()
        })?;
        let credentials = Arc::new(Credentials::new());
        let metrics = Arc::new(Metrics::with_store(&store));
        let gateway = Gateway::new(
            config.upstream.clone(),
            credentials.clone(),
            metrics.clone(),
        );
        gateway.keep_recent_requests(config.keep_model_requests);
        // Orgs' own provider keys, sealed under the master key; the gateway
        // asks per call which one a session's org has.
        let byok =
            crate::byok::Byok::open(store.clone(), crate::byok::MasterKey::load(&data_dir)?)?;
        // The usage ledger: model calls as the gateway relays them, tool
        // calls as they run.
        let ledger = crate::billing::Ledger::new(
            store.clone(),
            crate::meter::Meter::open(&store, config.prices.clone())
                .map_err(|e| HostError::Meter(e.to_string()))?,
        );
        // Orgs' webhooks: events are queued in the transaction that writes
        // them and sent by the delivery loop started below.
        let webhooks = crate::webhooks::Webhooks::open(
            store.clone(),
            config.plugin_allow_net.clone(),
            config.webhooks.clone(),
        )
        .map_err(|e| HostError::Meter(format!("cannot open the webhooks: {e}")))?;
        ledger
            .meter()
            .on_exhausted(crate::webhooks::budget_exceeded_hook(webhooks.clone()));
        gateway.set_router(Arc::new(crate::billing::ProviderKeys::new(
            byok.clone(),
            config.provider_urls.clone(),
            ledger.clone(),
        )));
        let (gateway_url, gateway_server) = gateway
            .serve_harnesses(loopback_listener().await?)
            .map_err(HostError::Gateway)?;
        // The MCP server harness processes reach, on a loopback port of its
        // own (like the gateway: the only two ways out of a harness).
        let mcp_listener = loopback_listener().await?;
        let mcp_url = format!(
            "http://{}",
            mcp_listener.local_addr().map_err(HostError::Gateway)?
        );
        let dev_app = config.app_dir.clone();
        let shared = Shared {
            store,
            runtime,
            gateway,
            gateway_url: gateway_url.clone(),
            mcp_url: mcp_url.clone(),
            credentials,
            metrics,
            http: HttpClient::new(),
            data_dir,
            config,
            ledger,
            webhooks: webhooks.clone(),
        };
        let projects =
            Arc::new(Projects::new(shared, auth, releases, byok, dev_app.as_deref()).await?);
        let mcp_server = crate::listen::spawn_way_out(
            "MCP server",
            mcp_listener,
            crate::mcp::router(projects.clone()),
        )
        .map_err(HostError::Gateway)?;
        let sweeper = {
            let projects = Arc::downgrade(&projects);
            tokio::spawn(async move {
                let mut every = tokio::time::interval(CREDENTIAL_SWEEP);
                loop {
                    every.tick().await;
                    match projects.upgrade() {
                        Some(projects) => projects.sweep(CREDENTIAL_SWEEP),
                        None => return,
                    }
                }
            })
        };
        Ok(Self {
            inner: Arc::new(HostInner {
                projects,
                gateway_url,
                mcp_url,
                api: tokio::sync::Mutex::default(),
                ways_out: tokio::sync::Mutex::new(vec![gateway_server, mcp_server]),
                sweeper: std::sync::Mutex::new(Some(sweeper)),
                webhook_delivery: tokio::sync::Mutex::new(Some(webhooks.start())),
            }),
        })
    }

    /// The projects served: orgs and credentials, releases, every loaded
    /// release's sessions.
    pub fn projects(&self) -> &Arc<Projects> {
        &self.inner.projects
    }

    fn dev(&self) -> &crate::projects::DevApp {
        self.inner.projects.dev().expect(
            "this host serves published projects only; it has no folder (use Host::projects)",
        )
    }

    /// The session manager of the folder this host serves (create
    /// sessions, send messages, subscribe). Panics on a host started
    /// without a folder ([`HostConfig::published`]): its sessions are per
    /// release, under [`Host::projects`].
    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.dev().sessions
    }

    /// The folder's app (panics like [`Host::sessions`]).
    pub fn app(&self) -> &AppSpec {
        self.sessions().app()
    }

    /// The harness that runs the folder's turns (`builtin`, `claude_code`,
    /// `opencode`).
    pub fn harness_name(&self) -> &'static str {
        self.sessions().harness_name()
    }

    /// Why the folder's app does not run on the harness it asks for, when
    /// it does not (its binary is missing).
    pub fn harness_notice(&self) -> Option<&str> {
        self.dev().harness_notice.as_deref()
    }

    /// What the folder's setup script installed (`None`: the app has
    /// none): the read-only layer every session's harness starts from.
    pub fn setup_layer(&self) -> Option<&karta_harness::SetupLayer> {
        self.sessions().setup_layer()
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
        crate::api::router(self.inner.projects.clone())
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
        self.inner.projects.shutdown().await;
        let ways_out = std::mem::take(&mut *self.inner.ways_out.lock().await);
        for server in ways_out {
            server.stop().await;
        }
        let sweeper = self
            .inner
            .sweeper
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(sweeper) = sweeper {
            // Aborted at its next await; a sweep under way finishes first.
            sweeper.abort();
            let _ = sweeper.await;
        }
        if let Some(delivery) = self.inner.webhook_delivery.lock().await.take() {
            delivery.stop().await;
        }
    }
}
