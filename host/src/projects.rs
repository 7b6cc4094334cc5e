//! The projects this host serves, and how a request finds the code a
//! session runs on.
//!
//! A project's code is a published release (see [`crate::release`]); a
//! session is pinned to the release that was active when it was created. So
//! the host keeps one session manager ([`Sessions`]) per *loaded release*:
//! the release's app, its plugins, its harness and its setup layer, over the
//! store, gateway, credentials and MCP server every release shares. A
//! release is loaded the first time a session needs it — a new session on
//! the active release, or a request for a session pinned to an older one —
//! and stays loaded while the host runs (its compiled plugins come from the
//! artifact cache publishing filled, so loading never compiles them).
//!
//! `karta serve DIR` serves one folder as a project of the `dev` org:
//! [`Projects::dev`], pinned as version 0 (a folder is not a published
//! release). Both kinds sit in the same map, so the API, the MCP server and
//! shutdown treat them alike.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use karta_harness::ToolDef;
use karta_harness::http::HttpClient;

use crate::app::{self, AppSpec};
use crate::auth::{Auth, Org, Project};
use crate::credentials::Credentials;
use crate::gateway::Gateway;
use crate::host::{HostConfig, HostError};
use crate::metrics::Metrics;
use crate::plugin::PluginRuntime;
use crate::release::Releases;
use crate::session::{
    SessionConfig, SessionError, SessionObject, SessionParts, SessionTool, Sessions,
};
use crate::store::{SessionRecord, SessionScope, Store};

/// The org `karta serve DIR` serves its folder in.
pub const DEV_ORG: &str = "dev";

/// What every loaded release shares.
pub(crate) struct Shared {
    pub store: Store,
    pub runtime: PluginRuntime,
    pub gateway: Gateway,
    pub gateway_url: String,
    pub mcp_url: String,
    pub credentials: Arc<Credentials>,
    pub metrics: Arc<Metrics>,
    pub http: HttpClient,
    pub data_dir: PathBuf,
    pub config: HostConfig,
    pub ledger: crate::billing::Ledger,
    pub webhooks: crate::webhooks::Webhooks,
}

/// The folder `karta serve DIR` serves, as a project of the dev org.
pub struct DevApp {
    /// The dev org.
    pub org: Org,
    /// The folder's project.
    pub project: Project,
    /// Its sessions.
    pub sessions: Arc<Sessions>,
    /// Why the app does not run on the harness it asks for, when it does
    /// not.
    pub harness_notice: Option<String>,
}

/// Why a project's sessions cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// The project has no active release.
    #[error("the project has no active release; publish one and activate it")]
    NoActiveRelease,
    /// The release a session is pinned to is gone or did not load.
    #[error("release v{version} cannot be served: {message}")]
    Unavailable {
        /// The version.
        version: u32,
        /// Why.
        message: String,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Builds `release.activated` for a project's org.
struct ReleaseNotices {
    webhooks: crate::webhooks::Webhooks,
    auth: Auth,
}

impl crate::release::FlipNotices for ReleaseNotices {
    fn prepare(
        &self,
        project_id: &str,
        flip: &crate::release::AuditEntry,
    ) -> crate::webhooks::Prepared {
        let project = match self.auth.project(project_id) {
            Ok(Some(project)) => project,
            Ok(None) => return Default::default(),
            Err(e) => {
                tracing::error!(
                    project_id,
                    "cannot queue the release.activated webhook: {e}"
                );
                return Default::default();
            }
        };
        let org_slug = match self.auth.org(&project.org_id) {
            Ok(org) => org.map(|org| org.slug).unwrap_or_default(),
            Err(e) => {
                tracing::error!(
                    project_id,
                    "cannot queue the release.activated webhook: {e}"
                );
                return Default::default();
            }
        };
        let data = serde_json::json!({
            "project": format!("{org_slug}/{}", project.slug),
            "project_id": project.id,
            "version": flip.to,
            "previous": flip.from,
            "action": flip.action,
            "actor": flip.actor,
        });
        let event_id = format!("evt_{}", uuid::Uuid::new_v4().simple());
        self.webhooks
            .prepare(
                &project.org_id,
                crate::webhooks::EventType::ReleaseActivated,
                &event_id,
                &data,
            )
            .unwrap_or_else(|e| {
                tracing::error!(
                    project_id,
                    "cannot queue the release.activated webhook: {e}"
                );
                Default::default()
            })
    }

    fn committed(&self) {
        self.webhooks.wake();
    }
}

/// A release: project id and version.
type ReleaseKey = (String, u32);

/// A release's sessions, once loaded.
type ReleaseCell = Arc<tokio::sync::OnceCell<Arc<Sessions>>>;

/// Every loaded release, by project id and version.
pub struct Projects {
    shared: Shared,
    auth: Auth,
    releases: Releases,
    byok: crate::byok::Byok,
    dev: Option<DevApp>,
    /// SHA-256 of the operator's token (`secrets/operator-token`).
    operator_digest: Vec<u8>,
    /// One cell per release, so two requests that need it at once load it
    /// once.
    loaded: Mutex<HashMap<ReleaseKey, ReleaseCell>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A project slug from an app's name: lowercase, `[a-z0-9-]`, at most 63
/// characters; `app` when nothing is left.
pub fn slug_of(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug: String = slug.trim_end_matches('-').chars().take(63).collect();
    let slug = slug.trim_end_matches('-').to_owned();
    if slug.is_empty() { "app".into() } else { slug }
}

impl Projects {
    /// The registry; with `dev_app`, that folder is loaded now as the dev
    /// org's project (and a failure to load it fails the host's start).
    pub(crate) async fn new(
        shared: Shared,
        auth: Auth,
        releases: Releases,
        byok: crate::byok::Byok,
        dev_app: Option<&Path>,
    ) -> Result<Self, HostError> {
        let operator_digest = {
            let token = operator_token(&shared.data_dir).map_err(|e| HostError::DataDir {
                path: shared.data_dir.display().to_string(),
                message: format!("cannot read or create the operator token: {e}"),
            })?;
            ring::digest::digest(&ring::digest::SHA256, token.trim().as_bytes())
                .as_ref()
                .to_vec()
        };
        releases.set_notices(Arc::new(ReleaseNotices {
            webhooks: shared.webhooks.clone(),
            auth: auth.clone(),
        }));
        // Slots of an earlier run: their processes died with it.
        let _ = std::fs::remove_dir_all(shared.data_dir.join("pool"));
        let mut projects = Self {
            shared,
            auth,
            releases,
            byok,
            dev: None,
            operator_digest,
            loaded: Mutex::default(),
        };
        if let Some(dir) = dev_app {
            let app = app::load(dir)?;
            let org = match projects.auth.org_by_slug(DEV_ORG)? {
                Some(org) => org,
                None => projects.auth.create_org(DEV_ORG, Some("Development"))?,
            };
            let project = projects.auth.ensure_project(&org.id, &slug_of(&app.name))?;
            let scope = SessionScope {
                org_id: org.id.clone(),
                org_slug: org.slug.clone(),
                project_id: project.id.clone(),
                project_slug: project.slug.clone(),
                version: 0,
                end_user_id: None,
                credential_id: None,
            };
            let adopted = projects.shared.store.adopt_unscoped_sessions(&scope)?;
            if adopted > 0 {
                tracing::info!(adopted, project = %project.slug, "sessions from before projects now belong to the served folder");
            }
            let (sessions, harness_notice) = projects.build(app, scope).await?;
            lock(&projects.loaded).insert(
                (project.id.clone(), 0),
                Arc::new(tokio::sync::OnceCell::new_with(Some(sessions.clone()))),
            );
            projects.dev = Some(DevApp {
                org,
                project,
                sessions,
                harness_notice,
            });
        }
        Ok(projects)
    }

    /// Whether `token` is the operator's (compared as digests: no timing
    /// tells a prefix of the token).
    pub fn is_operator_token(&self, token: &str) -> bool {
        ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref()
            == self.operator_digest.as_slice()
    }

    /// The folder `karta serve DIR` serves, if any.
    pub fn dev(&self) -> Option<&DevApp> {
        self.dev.as_ref()
    }

    /// Orgs, projects and credentials.
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// Orgs' own provider keys (sealed).
    pub fn byok(&self) -> &crate::byok::Byok {
        &self.byok
    }

    /// Published releases.
    pub fn releases(&self) -> &Releases {
        &self.releases
    }

    /// The store every release shares.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// The plugin runtime (publishing compiles into its artifact cache).
    pub fn runtime(&self) -> &PluginRuntime {
        &self.shared.runtime
    }

    /// The model provider the gateway forwards to (`None`: the offline
    /// model).
    pub fn upstream(&self) -> Option<&crate::gateway::Upstream> {
        self.shared.gateway.upstream()
    }

    /// Orgs' webhook endpoints and their deliveries.
    pub fn webhooks(&self) -> &crate::webhooks::Webhooks {
        &self.shared.webhooks
    }

    /// The usage ledger, prices and budgets.
    pub fn ledger(&self) -> &crate::billing::Ledger {
        &self.shared.ledger
    }

    /// Counters every release adds to.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Every release loaded so far.
    pub fn loaded(&self) -> Vec<Arc<Sessions>> {
        lock(&self.loaded)
            .values()
            .filter_map(|cell| cell.get().cloned())
            .collect()
    }

    /// The sessions of the release new sessions of `project` start on: the
    /// dev folder for the dev project, else the active release.
    pub async fn for_new_session(
        &self,
        org: &Org,
        project: &Project,
    ) -> Result<Arc<Sessions>, ProjectError> {
        if let Some(dev) = self.dev.as_ref().filter(|d| d.project.id == project.id) {
            return Ok(dev.sessions.clone());
        }
        let active = self
            .releases
            .active(&project.id)
            .map_err(|e| ProjectError::Unavailable {
                version: 0,
                message: e.to_string(),
            })?
            .ok_or(ProjectError::NoActiveRelease)?;
        self.release(org, project, active.version).await
    }

    /// The sessions of the release a stored session is pinned to.
    pub async fn for_record(&self, record: &SessionRecord) -> Result<Arc<Sessions>, ProjectError> {
        let Some(scope) = &record.scope else {
            // Made by a single-app host before projects: the dev folder's.
            return self.dev.as_ref().map(|d| d.sessions.clone()).ok_or(
                ProjectError::Unavailable {
                    version: 0,
                    message: "the session predates projects and no folder is served".into(),
                },
            );
        };
        let unavailable = |message: &str| ProjectError::Unavailable {
            version: scope.version,
            message: message.into(),
        };
        let org = self
            .auth
            .org(&scope.org_id)
            .map_err(|e| unavailable(&e.to_string()))?
            .ok_or_else(|| unavailable("its org is gone"))?;
        let project = self
            .auth
            .project(&scope.project_id)
            .map_err(|e| unavailable(&e.to_string()))?
            .ok_or_else(|| unavailable("its project is gone"))?;
        self.release(&org, &project, scope.version).await
    }

    /// [`Projects::for_record`] for a record of `project` (of `org`), both
    /// read by the caller already: they are not read again. A record of
    /// another project (or of none) is looked up as `for_record` does.
    pub async fn for_record_of(
        &self,
        org: &Org,
        project: &Project,
        record: &SessionRecord,
    ) -> Result<Arc<Sessions>, ProjectError> {
        match &record.scope {
            Some(scope) if scope.project_id == project.id && scope.org_id == org.id => {
                self.release(org, project, scope.version).await
            }
            _ => self.for_record(record).await,
        }
    }

    /// The sessions of `version` of `project`, loaded on first use.
    async fn release(
        &self,
        org: &Org,
        project: &Project,
        version: u32,
    ) -> Result<Arc<Sessions>, ProjectError> {
        let cell = lock(&self.loaded)
            .entry((project.id.clone(), version))
            .or_default()
            .clone();
        let unavailable = |message: String| ProjectError::Unavailable { version, message };
        cell.get_or_try_init(|| async {
            if version == 0 {
                return Err(unavailable("the folder it ran on is not served".into()));
            }
            let info = self
                .releases
                .get(&project.id, version)
                .map_err(|e| unavailable(e.to_string()))?
                .ok_or_else(|| unavailable("no such release".into()))?;
            let dir = self.releases.app_dir(&info);
            let mut app = app::load(&dir).map_err(|e| unavailable(e.to_string()))?;
            // The tree is named by its digest; the release knows the name.
            app.name = info.app_name.clone();
            let scope = SessionScope {
                org_id: org.id.clone(),
                org_slug: org.slug.clone(),
                project_id: project.id.clone(),
                project_slug: project.slug.clone(),
                version,
                end_user_id: None,
                credential_id: None,
            };
            let (sessions, notice) = self
                .build(app, scope)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            if let Some(notice) = notice {
                tracing::warn!(project = %project.slug, version, "{notice}");
            }
            tracing::info!(org = %org.slug, project = %project.slug, version, "release loaded");
            Ok(sessions)
        })
        .await
        .cloned()
    }

    /// The session an MCP token was issued to, with the sessions of its
    /// release (only loaded ones: a harness holding a token runs a turn of
    /// a loaded release).
    pub fn for_mcp_token(&self, token: &str) -> Option<(Arc<Sessions>, String)> {
        let session = self.shared.credentials.session_for_mcp_token(token)?;
        if session.starts_with(crate::session::SLOT_PREFIX) {
            // A pooled process no session has claimed yet: its release's.
            let sessions = self
                .loaded()
                .into_iter()
                .find(|s| s.is_pool_slot(&session))?;
            return Some((sessions, session));
        }
        let record = self.shared.store.session(&session).ok()??;
        let key = match &record.scope {
            Some(scope) => (scope.project_id.clone(), scope.version),
            None => (self.dev.as_ref()?.project.id.clone(), 0),
        };
        let sessions = lock(&self.loaded).get(&key)?.get()?.clone();
        Some((sessions, session))
    }

    /// Builds the session manager of one app: its setup layer, plugins,
    /// compiled MCP servers and harness over the shared parts.
    async fn build(
        &self,
        mut app: AppSpec,
        scope: SessionScope,
    ) -> Result<(Arc<Sessions>, Option<String>), HostError> {
        let shared = &self.shared;
        let config = &shared.config;
        let setup_layer =
            crate::setup::ensure(&app, &shared.data_dir, &config.setup, config.jail).await?;
        let tools = load_tools(&shared.runtime, &app).await?;
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
            .unwrap_or_else(|| shared.data_dir.join("python-mcp"));
        let python_servers = Arc::new(
            crate::plugin::python_mcp::AppPythonServers::load(
                &shared.runtime,
                &app.root,
                &app.command_servers,
                &config.python_mcp,
                &python_cache,
            )
            .await,
        );
        let selection = crate::harness::select(
            config.harness.unwrap_or(app.harness),
            &config.harness_binaries,
            config.harness_idle_timeout,
            &shared.http,
            config.jail,
            crate::harness::harness_nice(config.harness_nice),
        );
        let mut access = harness_access(config, &app, &shared.data_dir);
        access.setup_layer = setup_layer;
        let sessions = Arc::new(Sessions::new(SessionParts {
            store: shared.store.clone(),
            app: Arc::new(app),
            tools,
            gateway: shared.gateway.clone(),
            gateway_url: shared.gateway_url.clone(),
            config: SessionConfig {
                workspaces: shared.data_dir.join("workspaces"),
                homes: shared.data_dir.join("homes"),
                mcp_url: shared.mcp_url.clone(),
                approval_timeout: config.approval_timeout,
                default_model: config.default_model.clone(),
                access,
                scope: Some(scope.clone()),
            },
            harness: selection.harness,
            credentials: shared.credentials.clone(),
            metrics: shared.metrics.clone(),
            ledger: Some(shared.ledger.clone()),
            webhooks: Some(shared.webhooks.clone()),
        }));
        sessions.set_python_servers(python_servers);
        // The warm pool serves new sessions, so only while this release is
        // the one they start on: the dev folder always, a release while it
        // is its project's active one.
        let releases = self.releases.clone();
        let (project, version) = (scope.project_id.clone(), scope.version);
        sessions.start_pool(config.pool, move || {
            version == 0
                || releases
                    .active(&project)
                    .ok()
                    .flatten()
                    .is_some_and(|active| active.version == version)
        });
        Ok((sessions, selection.notice))
    }

    /// Stops every loaded release's turns and harness processes.
    pub async fn shutdown(&self) {
        for sessions in self.loaded() {
            sessions.shutdown().await;
        }
    }

    /// The periodic sweep of every loaded release ([`Sessions::sweep`]):
    /// sessions whose harness process stopped leave memory, and credentials
    /// no harness process holds any more are revoked.
    pub fn sweep(&self, idle: std::time::Duration) {
        for sessions in self.loaded() {
            sessions.sweep(idle);
        }
    }

    /// A page of the sessions under `scope` (a project's or an end user's
    /// index key) matching `filters`, each described by the release that
    /// holds it in memory, if one does.
    pub fn list_sessions(
        &self,
        scope: &[u8],
        filters: &std::collections::BTreeMap<String, String>,
        page: usize,
        per_page: usize,
    ) -> Result<(Vec<SessionObject>, usize), SessionError> {
        let found =
            crate::session::list_page(&self.shared.store, Some(scope), filters, page, per_page)?;
        let loaded = lock(&self.loaded).clone();
        let objects = found
            .records
            .iter()
            .map(|record| {
                let manager = record
                    .scope
                    .as_ref()
                    .and_then(|s| loaded.get(&(s.project_id.clone(), s.version)))
                    .and_then(|cell| cell.get());
                match manager {
                    Some(sessions) => sessions.describe(record),
                    None => SessionObject::new(record, false, None),
                }
            })
            .collect();
        Ok((objects, found.total))
    }

    /// The warm pools of the loaded releases that have one.
    pub fn pool_stats(&self) -> Vec<crate::session::PoolStats> {
        self.loaded()
            .iter()
            .filter_map(|s| s.pool_stats())
            .collect()
    }

    /// Harness processes running, over every loaded release.
    pub fn harness_process_count(&self) -> usize {
        self.loaded()
            .iter()
            .map(|s| s.harness_process_count())
            .sum()
    }
}

/// Where the operator's token lives: whoever can read the data dir runs
/// the host, and the CLI proves it to a running server with this token.
pub fn operator_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("secrets").join("operator-token")
}

/// The operator's token, created (0600, in a 0700 directory) on first
/// use.
pub fn operator_token(data_dir: &Path) -> std::io::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = operator_token_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(token) => return Ok(token.trim().to_owned()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| std::io::Error::other("no randomness"))?;
    let token = format!("kop_{}", hex::encode(bytes));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all(token.as_bytes())?;
    file.sync_all()?;
    Ok(token)
}

/// Whether `addr` is a loopback address (dev mode serves only there).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// What harness processes may use of their own: their tools (unless the
/// operator turned them off), the app's command MCP servers run from its
/// folder, the folder itself read-only in the jail — minus the data dir
/// when it lies inside (other sessions' workspaces, the store).
fn harness_access(
    config: &HostConfig,
    app: &app::AppSpec,
    data_dir: &Path,
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
        // Set by `build` once the setup script has run.
        setup_layer: None,
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

#[cfg(test)]
mod tests {
    use super::slug_of;

    #[test]
    fn slugs_from_app_names() {
        assert_eq!(slug_of("Support Bot"), "support-bot");
        assert_eq!(slug_of("  --hello__world-- "), "hello-world");
        assert_eq!(slug_of("ÜBER"), "ber");
        assert_eq!(slug_of("!!!"), "app");
        assert_eq!(slug_of(&"a".repeat(100)).len(), 63);
    }
}
