//! The OpenCode harness: the real `opencode` binary as a headless server,
//! one per live session.
//!
//! On a session's first turn the harness starts
//! `opencode serve --hostname 127.0.0.1 --port N` in the session workspace
//! (populated with the app's `AGENTS.md` and `.opencode/`) with a cleared
//! environment, a scratch `HOME`, and a config (`OPENCODE_CONFIG`) that
//! gives it exactly one provider — the host's gateway, OpenAI-compatible,
//! with the session's gateway key — and exactly one MCP server, the host's,
//! with the session's token. OpenCode's own tools that act on the machine
//! (`bash`, `edit`, `write`, `read`, `webfetch`, …) are switched off; the
//! session's plugin tools (`karta_<tool>`) remain, and those that need
//! approval are set to `ask`. The title-generation call is skipped (the
//! session is created with a title).
//!
//! A turn is `POST /session/{id}/prompt_async`; its events come from the
//! server's `GET /event` stream:
//!
//! | OpenCode event | protocol event |
//! | --- | --- |
//! | `message.part.delta` / `message.part.updated` (text, reasoning) | `text` / `reasoning` |
//! | `message.part.updated` `step-start` / `step-finish` | `step_start` / `step_finish` (tokens) |
//! | `message.part.updated` `tool` (running, completed, error) | `tool_use`, with the fuel the MCP call used |
//! | `permission.asked` | `input_required`; the answer goes to `POST /permission/{id}/reply` |
//! | `session.error` | `error` |
//! | `session.idle` | `done` |
//!
//! **One server per session, not per app.** A server costs seconds to start
//! and a few hundred MiB (see BENCHMARKS.md), but OpenCode's provider key
//! and MCP URL are per process: sharing one server between sessions would
//! meter every session's model calls to one key and hand every session's
//! MCP token to all of them. The server is stopped on cancel, after
//! [`OpencodeConfig::idle_timeout`] without a turn, on session delete and
//! when the harness is dropped; OpenCode keeps the conversation in the
//! session's `HOME`, so the next server continues the same OpenCode session.
//!
//! **A `HOME` may be shared.** The host gives every session of one end user
//! the same `HOME` (their memory), and two of their servers may run at
//! once. OpenCode's data dir (`XDG_DATA_HOME`, left at `~/.local/share`:
//! its SQLite database of conversations, which OpenCode opens in WAL mode
//! with a busy timeout, so running servers can share it; a new one creates
//! and migrates it before it listens, so servers of one `HOME` *start* one
//! at a time) and its state dir are the
//! end user's, shared. What is one session's is named after it: the config
//! (`karta-opencode-<session id>.json`, carrying the session's gateway key
//! and MCP token), the remembered OpenCode session id
//! (`karta-opencode-session-<session id>`), and the config and cache dirs
//! (`.karta/<session id>/config`, `.karta/<session id>/cache`). The config
//! dir cannot be shared: OpenCode reads fixed names there
//! (`opencode/opencode.json`, `agent/`, `plugin/`) and merges them into the
//! session's config, and installs its plugin package there in the
//! background, which two servers at once would race on. The cache dir
//! stays per session, as it was: what OpenCode remembers of conversations
//! is in its data dir, not there.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::http::HttpClient;
use crate::lines::{BoundedLines, Line};
use crate::process::{HarnessProcess, JailLimits, JailSpec, Spawn, session_env};
use crate::safe_fs::SafeDir;
use crate::slots::{
    ReportedResult, Slots, TurnFailure, cpu_so_far, finish_turn, finished_tool_use, new_message_id,
    outcome, remember, remembered, slot_process, stop_when_idle,
};
use crate::{
    BoxFuture, ErrorCode, Event, Harness, Prestarted, SessionInfo, TurnContext, TurnOutcome,
    TurnRequest, TurnStatus, Usage,
};

/// The name of the host's MCP server in OpenCode's config; its tools are
/// `karta_<tool>`.
pub const MCP_SERVER_NAME: &str = "karta";

/// The provider id of the host's gateway in OpenCode's config.
pub const PROVIDER_ID: &str = "karta";

/// OpenCode's own tools that stay on: they act only through the model
/// (sub-agents, skills, to-do lists). Every other built-in tool (`bash`,
/// `edit`, `read`, `webfetch`, …) is switched off: each acts on the machine
/// or the network outside the WebAssembly runtime.
pub const KEPT_BUILTIN_TOOLS: &[&str] = &["task", "skill", "todowrite"];

/// How long a permission request waits for its tool's input to show up
/// before it is put to a person without it.
const PERMISSION_INPUT_WAIT: Duration = Duration::from_secs(2);

/// The lock that lets one server of `home` start at a time (see
/// `OpencodeHarness::start`). Locks of homes with no server starting are
/// dropped as the map grows.
fn start_lock(home: &Path) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: std::sync::LazyLock<
        std::sync::Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
    > = std::sync::LazyLock::new(Default::default);
    let mut locks = LOCKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if locks.len() > 1024 {
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
    }
    locks.entry(home.to_path_buf()).or_default().clone()
}

/// How long a new server may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest line of opencode's stdout kept (its log lines, and the one
/// saying where it listens); longer ones are skipped.
const MAX_LOG_LINE_BYTES: usize = 64 * 1024;

/// How long a pooled server's warm-up exchange may take.
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// What a pooled server's throwaway prompt says (see
/// `OpencodeHarness::warm_up_conversation`).
const WARM_UP_MESSAGE: &str = "(Karta warm-up: this session is deleted before anyone uses it)";

/// Where an app configures OpenCode plugins, which hook into prompts:
/// plugin directories, and config files whose `plugin` key lists packages.
const APP_PLUGIN_DIRS: &[&str] = &[".opencode/plugin", ".opencode/plugins"];
const APP_CONFIG_FILES: &[&str] = &[
    "opencode.json",
    "opencode.jsonc",
    ".opencode/opencode.json",
    ".opencode/opencode.jsonc",
];

/// Whether the app in `workspace` has no OpenCode plugin: only then may a
/// pooled server exchange a warm-up prompt, because a plugin's hooks run
/// the app's code on every prompt, and a warm-up runs nothing of the
/// app's. Conservative: a plugin directory, any config file that mentions
/// `plugin` at all, or one that cannot be read counts as a plugin. (The
/// host copies no plugin into a workspace today, so this is the second
/// line, as for Claude Code's hooks.)
fn app_has_no_plugins(workspace: &Path) -> bool {
    let Ok(dir) = SafeDir::open(workspace) else {
        return false;
    };
    let no_dirs = APP_PLUGIN_DIRS
        .iter()
        .all(|name| matches!(dir.kind(Path::new(name)), Ok(None)));
    no_dirs
        && APP_CONFIG_FILES.iter().all(|name| {
            match dir.read_optional(Path::new(name), MAX_APP_CONFIG_BYTES) {
                Ok(None) => true,
                Ok(Some(bytes)) => !bytes.windows(6).any(|w| w == b"plugin"),
                Err(_) => false,
            }
        })
}

/// The largest app config file read to look for plugins.
const MAX_APP_CONFIG_BYTES: u64 = 1024 * 1024;

/// Settings of the OpenCode harness.
#[derive(Clone)]
pub struct OpencodeConfig {
    /// The `opencode` binary.
    pub program: PathBuf,
    /// A session's server is stopped after this long without a turn.
    pub idle_timeout: Duration,
    /// The host's shared HTTP client, for the servers' loopback APIs.
    pub client: HttpClient,
    /// The limits of each server's jail; `None` runs it unjailed (only
    /// with the operator's `--no-jail`).
    pub jail: Option<JailLimits>,
    /// The nice value of each server ([`crate::process::Spawn::nice`]).
    pub nice: Option<i32>,
}

/// The OpenCode harness (see the module docs).
pub struct OpencodeHarness {
    config: OpencodeConfig,
    client: HttpClient,
    /// Each session's server slot (empty when stopped).
    sessions: Slots<OpencodeServer>,
}

slot_process!(OpencodeServer);

/// One running `opencode serve`.
struct OpencodeServer {
    process: HarnessProcess,
    /// `http://127.0.0.1:N`.
    base: String,
    /// Events of the server's `/event` stream.
    events: mpsc::UnboundedReceiver<Value>,
    /// OpenCode's session id.
    session: String,
    /// The id of the user message of the server's latest turn (see
    /// `drive`: a turn's own events start after its own
    /// user message).
    last_user_message: Option<String>,
    last_used: Instant,
}

/// The file in `HOME` that remembered OpenCode's session id while every
/// session had a `HOME` of its own; a session's own file is
/// [`resume_file`].
const LEGACY_RESUME_FILE: &str = "karta-opencode-session";

/// The file in `HOME` that remembers OpenCode's session id of `session`.
/// Named after the session: sessions sharing a `HOME` each continue their
/// own conversation.
fn resume_file(session: &SessionInfo) -> String {
    format!("{LEGACY_RESUME_FILE}-{}", session.id)
}

/// `session`'s OpenCode config (`OPENCODE_CONFIG`), in its `HOME`. Named
/// after the session: it carries the session's gateway key and MCP token.
fn config_file(session: &SessionInfo) -> String {
    format!("karta-opencode-{}.json", session.id)
}

/// `session`'s own dirs in its `HOME`: OpenCode's config dir
/// (`XDG_CONFIG_HOME`) and cache dir (`XDG_CACHE_HOME`), relative to the
/// `HOME` (see the module docs for why they are not shared).
fn xdg_dirs(session: &SessionInfo) -> [PathBuf; 2] {
    let own = Path::new(".karta").join(&session.id);
    [own.join("config"), own.join("cache")]
}

/// OpenCode's session id remembered for `session`: in its own file, or
/// else under the name every session used while each had its own `HOME`
/// (a session from before then continues its conversation). The host never
/// writes that name in a shared `HOME`; only a server of the same end user
/// could, and it is already in their trust domain.
fn remembered_conversation(session: &SessionInfo) -> Option<String> {
    remembered(&session.home, &resume_file(session))
        .or_else(|| remembered(&session.home, LEGACY_RESUME_FILE))
}

/// The project config files OpenCode would merge over ours.
pub const PROJECT_CONFIG_FILES: &[&str] = &["opencode.json", "opencode.jsonc"];

impl OpencodeHarness {
    /// A harness running `config.program`.
    pub fn new(config: OpencodeConfig) -> Self {
        Self {
            client: config.client.clone(),
            config,
            sessions: Slots::default(),
        }
    }

    /// The command line and config for `request`'s session.
    fn spawn_for(&self, request: &TurnRequest, port: u16) -> std::io::Result<Spawn> {
        let session = &request.session;
        let config_name = config_file(session);
        let config_file = session.home.join(&config_name);
        let [config_dir, cache_dir] = xdg_dirs(session);
        let env = session_env(
            session,
            &self.config.program,
            [
                ("OPENCODE_CONFIG", config_file.display().to_string()),
                // The config and cache dirs are the session's own, in its
                // HOME: a dir shared by every session's server would let
                // one session leave config (agents, plugins) for the next,
                // and the end user's sessions share the HOME itself.
                // OpenCode only tries, in the background, to install its
                // plugin package there; without network that fails and
                // start-up takes as long as with a warm shared dir
                // (measured with opencode 1.18.33 in an empty network
                // namespace: 3.1-3.6 s fresh, 4.2-4.3 s shared, on a loaded
                // 2-core machine).
                (
                    "XDG_CONFIG_HOME",
                    session.home.join(&config_dir).display().to_string(),
                ),
                (
                    "XDG_CACHE_HOME",
                    session.home.join(&cache_dir).display().to_string(),
                ),
                // The project's config is not OpenCode's to find: a
                // workspace `opencode.json` (which a plugin can write) would
                // be merged over ours — an MCP `command` is code execution.
                // This also stops the search for `.opencode/` and `AGENTS.md`
                // up from the workspace, so the app's `.opencode/` (synced by
                // the host before every turn) is named directly, and the
                // instructions are in our config (`instructions`).
                ("OPENCODE_DISABLE_PROJECT_CONFIG", "1".into()),
                (
                    "OPENCODE_CONFIG_DIR",
                    session.workspace.join(".opencode").display().to_string(),
                ),
                ("OPENCODE_DISABLE_MODELS_FETCH", "1".into()),
                ("OPENCODE_DISABLE_AUTOUPDATE", "1".into()),
                ("OPENCODE_DISABLE_SHARE", "1".into()),
                ("OPENCODE_DISABLE_LSP_DOWNLOAD", "1".into()),
                ("OPENCODE_DISABLE_DEFAULT_PLUGINS", "1".into()),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        )?;
        // `session_env` made the home. The server writes there too: a link
        // it left is replaced, never written through.
        let home = SafeDir::open(&session.home)?;
        for dir in [&config_dir, &cache_dir] {
            home.create_dirs(dir)?;
        }
        home.write(
            Path::new(&config_name),
            &serde_json::to_vec_pretty(&opencode_config(session, &request.model))?,
        )?;
        // OpenCode does not read these (project config is off); removed
        // anyway, so no later change of that setting brings them back.
        let workspace = SafeDir::open(&session.workspace)?;
        for name in PROJECT_CONFIG_FILES {
            workspace.remove(Path::new(name))?;
        }
        Ok(Spawn {
            program: self.config.program.clone(),
            args: vec![
                "serve".into(),
                "--hostname".into(),
                "127.0.0.1".into(),
                "--port".into(),
                port.to_string(),
            ],
            cwd: session.workspace.clone(),
            env,
            stdin: false,
            stdout: true,
            jail: self.config.jail.map(|limits| {
                let mut spec = JailSpec::for_session(
                    session,
                    &self.config.program,
                    Vec::new(),
                    vec![port],
                    limits,
                );
                spec.read.extend(session.access.app_root.iter().cloned());
                spec.hidden.extend(session.access.hidden.iter().cloned());
                spec
            }),
            nice: self.config.nice,
        })
    }

    async fn start(&self, request: &TurnRequest) -> Result<OpencodeServer, TurnFailure> {
        // Servers of one `HOME` start one at a time: a new server creates
        // and migrates the shared SQLite database before it listens, and
        // two doing it at once fail (`CREATE TABLE` of a table the other
        // has just made: seen with two sessions of one end user on a busy
        // host). Once listening, they share it safely.
        let starting = start_lock(&request.session.home);
        let _one_at_a_time = starting.lock().await;
        let port = free_port().map_err(|e| TurnFailure::harness(format!("no free port: {e}")))?;
        let spawn = self
            .spawn_for(request, port)
            .map_err(|e| TurnFailure::harness(format!("cannot prepare opencode: {e}")))?;
        let mut process = HarnessProcess::start(&spawn).map_err(|e| {
            TurnFailure::new(
                ErrorCode::HarnessUnavailable,
                format!("cannot start {}: {e}", spawn.program.display()),
            )
        })?;
        // Ready once it says where it listens (it binds late, and a
        // connection made before that can stall).
        let Some(stdout) = process.child.stdout.take() else {
            return Err(TurnFailure::harness("opencode has no stdout"));
        };
        // Bounded: what a jailed process writes is read into the host.
        let mut lines = BoundedLines::new(stdout, 8 * 1024, MAX_LOG_LINE_BYTES);
        let listening = tokio::time::timeout(START_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Line::Text(line) = line
                    && let Some((_, url)) = line.split_once("listening on ")
                {
                    return Some(url.trim().trim_end_matches('/').to_owned());
                }
            }
            None
        })
        .await;
        let base = match listening {
            // In a jail the server listens in the jail's network namespace;
            // the host reaches it through the jail's relay.
            Ok(Some(_)) => format!("http://127.0.0.1:{}", process.host_port(port)),
            Ok(None) => {
                let status = process.child.wait().await.ok();
                return Err(TurnFailure::harness(format!(
                    "opencode exited before listening ({}); its last words: {}",
                    status.map(|s| s.to_string()).unwrap_or_default(),
                    process.stderr_tail()
                )));
            }
            Err(_) => {
                return Err(TurnFailure::harness(format!(
                    "opencode did not start listening within {}s; its last words: {}",
                    START_TIMEOUT.as_secs(),
                    process.stderr_tail()
                )));
            }
        };
        // Keep draining its stdout, so it never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Line::Text(line) = line {
                    tracing::debug!(target: "karta_harness::opencode", "{line}");
                }
            }
        });
        let (tx, events) = mpsc::unbounded_channel();
        let mut attempt = 0;
        loop {
            let subscribed = tokio::time::timeout(
                Duration::from_secs(5),
                self.client.subscribe(&format!("{base}/event"), tx.clone()),
            )
            .await;
            match subscribed {
                Ok(Ok(())) => break,
                failed if attempt >= 20 => {
                    let why = match failed {
                        Ok(Err(e)) => e,
                        _ => "no answer within 5 s".to_owned(),
                    };
                    return Err(TurnFailure::harness(format!(
                        "cannot follow opencode's events: {why}"
                    )));
                }
                _ => attempt += 1,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !base.ends_with(&format!(":{port}")) {
            tracing::warn!("opencode listens on {base}, not on the port it was given ({port})");
        }
        self.open_session(process, base, events, request).await
    }

    /// The warm-up of a pooled server (see [`Harness::prestart`]): the
    /// per-directory bootstrap OpenCode 1.18.33 otherwise leaves to the
    /// first prompt, made by the read-only endpoints that need it.
    ///
    /// Its instance of a directory loads lazily: listening, `/event` and
    /// `POST /session` do not load the provider SDK (`/config/providers`:
    /// ~1.2 s of the first prompt's ~1.9 s unjailed on a quiet machine),
    /// the agents, the MCP clients or the tool registry
    /// (`/experimental/tool` builds the tool definitions the model gets for
    /// this provider and model, MCP tools included). None of them calls
    /// the model, runs a tool or touches the conversation. No request names
    /// `?directory=`: like the turns, they go to the instance of the
    /// server's own working directory, the slot's workspace at its path in
    /// the jail — which a claim does not change (the host renames the
    /// directory outside the jail; the jail's bind mount keeps the path).
    async fn warm_up(&self, server: &OpencodeServer, model: &str) -> Result<(), TurnFailure> {
        let tools = format!(
            "/experimental/tool?provider={}&model={}",
            query_value(PROVIDER_ID),
            query_value(model)
        );
        for path in [
            "/config/providers",
            "/agent",
            "/mcp",
            "/command",
            "/experimental/tool/ids",
            tools.as_str(),
        ] {
            let (status, answer) = self
                .client
                .json("GET", &format!("{}{path}", server.base), None)
                .await
                .map_err(TurnFailure::harness)?;
            if status >= 300 {
                return Err(TurnFailure::harness(format!(
                    "opencode's warm-up failed: GET {path}: {status} {answer}"
                )));
            }
        }
        Ok(())
    }

    /// The second half of a pooled server's warm-up: one throwaway
    /// exchange in an OpenCode session of its own, deleted after.
    ///
    /// An OpenCode 1.18.33 server's first prompt costs ~300 ms that a
    /// later one — in any of its sessions — does not (the first run of its
    /// prompt loop; the read-only endpoints of [`Self::warm_up`] do not
    /// reach it). So the warm-up prompts once, in a session that is not
    /// the conversation the pool hands over: its model call is the pool
    /// slot's, which the gateway answers itself (a fixed `ok`, no
    /// provider, nothing metered), and the session is deleted, so the
    /// claiming session's conversation holds nothing of it (the pool test
    /// asserts it). Apps with plugins skip this (see [`app_has_no_plugins`]).
    async fn warm_up_conversation(
        &self,
        server: &mut OpencodeServer,
        model: &str,
    ) -> Result<(), TurnFailure> {
        let base = server.base.clone();
        let exchange = async {
            let (status, created) = self
                .client
                .json(
                    "POST",
                    &format!("{base}/session"),
                    Some(&json!({ "title": "karta warm-up" })),
                )
                .await?;
            let Some(id) = created["id"].as_str().filter(|_| status < 300) else {
                return Err(format!("POST /session: {status} {created}"));
            };
            let body = prompt_body(model, WARM_UP_MESSAGE);
            let (status, answer) = self
                .client
                .json("POST", &format!("{base}/session/{id}/message"), Some(&body))
                .await?;
            if status >= 300 {
                return Err(format!("POST /session/{id}/message: {status} {answer}"));
            }
            let (status, answer) = self
                .client
                .json("DELETE", &format!("{base}/session/{id}"), None)
                .await?;
            if status >= 300 {
                return Err(format!("DELETE /session/{id}: {status} {answer}"));
            }
            Ok(())
        };
        match tokio::time::timeout(WARM_UP_TIMEOUT, exchange).await {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                return Err(TurnFailure::harness(format!(
                    "opencode's warm-up exchange failed: {message}"
                )));
            }
            Err(_) => {
                return Err(TurnFailure::harness(format!(
                    "opencode's warm-up exchange took more than {}s",
                    WARM_UP_TIMEOUT.as_secs()
                )));
            }
        }
        // Its events are no turn's.
        while server.events.try_recv().is_ok() {}
        Ok(())
    }

    /// Continues the session's OpenCode session, or creates one.
    async fn open_session(
        &self,
        process: HarnessProcess,
        base: String,
        events: mpsc::UnboundedReceiver<Value>,
        request: &TurnRequest,
    ) -> Result<OpencodeServer, TurnFailure> {
        if let Some(previous) = remembered_conversation(&request.session) {
            let (status, _) = self
                .client
                .json("GET", &format!("{base}/session/{previous}"), None)
                .await
                .map_err(TurnFailure::harness)?;
            if status == 200 {
                return Ok(OpencodeServer {
                    process,
                    base,
                    events,
                    session: previous,
                    last_user_message: None,
                    last_used: Instant::now(),
                });
            }
        }
        let (status, created) = self
            .client
            .json(
                "POST",
                &format!("{base}/session"),
                Some(&json!({ "title": format!("karta {}", request.session.id) })),
            )
            .await
            .map_err(TurnFailure::harness)?;
        let Some(id) = created["id"].as_str().filter(|_| status < 300) else {
            return Err(TurnFailure::harness(format!(
                "opencode did not create a session ({status}): {created}"
            )));
        };
        remember(&request.session.home, &resume_file(&request.session), id);
        Ok(OpencodeServer {
            process,
            base,
            events,
            session: id.to_owned(),
            last_user_message: None,
            last_used: Instant::now(),
        })
    }

    async fn turn(&self, request: TurnRequest, cx: TurnContext<'_>) -> TurnOutcome {
        let slot = self.sessions.slot(&request.session.id);
        let mut guard = slot.lock().await;
        let cpu_start = cpu_so_far(&guard);
        let mut turn = TurnState::default();
        let result = tokio::select! {
            result = self.drive(&mut guard, &request, &cx, &mut turn) => result,
            () = cx.cancel.cancelled() => Err(TurnFailure::cancelled()),
        };
        let status = finish_turn(
            &mut guard,
            result,
            &cx,
            turn.message_id(),
            turn.usage,
            cpu_start,
        )
        .await;
        drop(guard);
        stop_when_idle(&request.session.id, &slot, self.config.idle_timeout);
        outcome(&request.text, turn.final_text(), turn.usage, status)
    }

    async fn drive(
        &self,
        slot: &mut Option<OpencodeServer>,
        request: &TurnRequest,
        cx: &TurnContext<'_>,
        turn: &mut TurnState,
    ) -> Result<TurnStatus, TurnFailure> {
        if slot.is_none() {
            *slot = Some(self.start(request).await?);
        }
        let Some(server) = slot.as_mut() else {
            return Err(TurnFailure::harness("no opencode server"));
        };
        // Events of an earlier turn (late updates) are not this turn's.
        while server.events.try_recv().is_ok() {}
        let mut body = prompt_body(&request.model, &request.text);
        if let Some(agent) = &request.agent {
            if is_opencode_agent(&request.session.workspace, agent) {
                body["agent"] = json!(agent);
            } else {
                cx.emit(Event::System(json!({
                    "harness": "opencode",
                    "notice": format!(
                        "`{agent}` is not an OpenCode agent of this app (.opencode/agents/); OpenCode answers with its default agent"
                    ),
                })));
            }
        }
        let url = format!("{}/session/{}/prompt_async", server.base, server.session);
        let (status, answer) = self
            .client
            .json("POST", &url, Some(&body))
            .await
            .map_err(TurnFailure::harness)?;
        if status >= 300 {
            return Err(TurnFailure::harness(format!(
                "opencode refused the message ({status}): {answer}"
            )));
        }
        // Permission requests whose tool input has not shown up yet: OpenCode
        // announces the request before the tool part carrying the input.
        let mut waiting: Vec<(Value, Instant)> = Vec::new();
        // OpenCode ends a turn with a tail that can reach us after the
        // next message was sent (the drain above runs too early for it):
        // after a failed call, its assistant message again (with the
        // error), a second `session.status` idle and `session.idle`; after
        // others, that turn's user message again. Taken as this turn's,
        // the tail ended it at once with the last turn's error. A prompt's
        // own events start with its user message (`message.updated`, role
        // `user`, an id the last turn's is not): until then only user
        // messages are read (their roles keep their echoed parts out of
        // the answer).
        let mut started = false;
        loop {
            let next = if waiting.is_empty() {
                server.events.recv().await
            } else {
                // A quiet stream must not keep a request from being asked.
                tokio::time::timeout(PERMISSION_INPUT_WAIT, server.events.recv())
                    .await
                    .unwrap_or(Some(Value::Null))
            };
            let Some(event) = next else {
                let tail = server.process.stderr_tail();
                return Err(TurnFailure::harness(format!(
                    "opencode's event stream ended; its last words: {tail}"
                )));
            };
            let properties = &event["properties"];
            let ours = event_session(&event).is_none_or(|s| s == server.session);
            if ours && !started {
                let info = &properties["info"];
                if event["type"] == "message.updated" && info["role"] == "user" {
                    turn.message_updated(info);
                    let id = info["id"].as_str();
                    if id.is_some() && id != server.last_user_message.as_deref() {
                        started = true;
                        server.last_user_message = id.map(str::to_owned);
                    }
                }
            } else if ours {
                match event["type"].as_str() {
                    Some("message.updated") => turn.message_updated(&properties["info"]),
                    Some("message.part.delta") => turn.part_delta(properties, cx),
                    Some("message.part.updated") => turn.part_updated(properties, cx),
                    Some("permission.asked") => waiting.push((properties.clone(), Instant::now())),
                    Some("session.error") => {
                        let error = &properties["error"];
                        let message = error["data"]["message"]
                            .as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| error.to_string());
                        if error["name"] == "MessageAbortedError" {
                            return Err(TurnFailure::cancelled());
                        }
                        turn.error = Some(message);
                    }
                    // The end of every turn (`session.status` idle comes
                    // just before it; matching both would end the next turn
                    // early).
                    Some("session.idle") => return turn.finish(),
                    _ => {}
                }
            }
            // Ask about every request whose input is known, or that has
            // waited long enough.
            let mut index = 0;
            while index < waiting.len() {
                let call = waiting[index].0["tool"]["callID"]
                    .as_str()
                    .unwrap_or_default();
                let ready = turn.inputs.contains_key(call)
                    || waiting[index].1.elapsed() >= PERMISSION_INPUT_WAIT;
                if !ready {
                    index += 1;
                    continue;
                }
                let (request, _) = waiting.remove(index);
                let reply = answer_permission(&request, cx, turn).await;
                let id = request["id"].as_str().unwrap_or_default();
                let url = format!("{}/permission/{id}/reply", server.base);
                let (status, answer) = self
                    .client
                    .json("POST", &url, Some(&reply))
                    .await
                    .map_err(TurnFailure::harness)?;
                if status >= 300 {
                    return Err(TurnFailure::harness(format!(
                        "opencode refused the permission reply ({status}): {answer}"
                    )));
                }
            }
        }
    }
}

/// The body of a prompt saying `text` to the gateway's `model`.
fn prompt_body(model: &str, text: &str) -> Value {
    json!({
        "model": { "providerID": PROVIDER_ID, "modelID": model },
        "parts": [{ "type": "text", "text": text }],
    })
}

/// Whether `.opencode/agent(s)/<name>.md` exists in the workspace (OpenCode
/// knows the agent; the app's Claude Code agents it does not).
fn is_opencode_agent(workspace: &std::path::Path, name: &str) -> bool {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    valid
        && ["agent", "agents"].iter().any(|dir| {
            workspace
                .join(".opencode")
                .join(dir)
                .join(format!("{name}.md"))
                .is_file()
        })
}

/// The session an event belongs to, when it says.
fn event_session(event: &Value) -> Option<&str> {
    let p = &event["properties"];
    p["sessionID"]
        .as_str()
        .or_else(|| p["info"]["sessionID"].as_str())
        .or_else(|| p["part"]["sessionID"].as_str())
}

/// A free loopback port for a new server.
fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// `value` percent-encoded for a URL query (unreserved bytes as they are).
fn query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// OpenCode's config for one session: the gateway as its only provider,
/// the host's MCP server as its only tools.
fn opencode_config(session: &SessionInfo, model: &str) -> Value {
    let mut tools = serde_json::Map::new();
    if session.access.builtin_tools {
        // Its own tools work on the workspace, inside the jail; the web
        // one could only fail there.
        tools.insert("webfetch".into(), json!(false));
    } else {
        tools.insert("*".into(), json!(false));
        for tool in KEPT_BUILTIN_TOOLS {
            tools.insert((*tool).to_owned(), json!(true));
        }
    }
    tools.insert(format!("{MCP_SERVER_NAME}_*"), json!(true));
    for server in &session.access.mcp_servers {
        tools.insert(format!("{}_*", server.name), json!(true));
    }
    // Every plugin tool asks, except those the app lets run unasked (the
    // more specific key wins); the harness's own acting tools and the
    // app's servers ask unless the app runs autonomous.
    let mut permission = serde_json::Map::new();
    let own = if session.access.autonomous {
        "allow"
    } else {
        "ask"
    };
    if session.access.builtin_tools {
        for tool in ["bash", "edit", "write", "patch"] {
            permission.insert(tool.into(), json!(own));
        }
    }
    for server in &session.access.mcp_servers {
        permission.insert(format!("{}_*", server.name), json!(own));
    }
    permission.insert(format!("{MCP_SERVER_NAME}_*"), json!("ask"));
    for tool in &session.preapproved_tools {
        permission.insert(format!("{MCP_SERVER_NAME}_{tool}"), json!("allow"));
    }
    let mut mcp = serde_json::Map::new();
    for server in &session.access.mcp_servers {
        let entry = match &server.transport {
            crate::McpTransport::Stdio { command, args, env } => {
                let Some(app_root) = &session.access.app_root else {
                    continue;
                };
                json!({
                    "type": "local",
                    "command": crate::AppMcpServer::stdio_in(app_root, command, args),
                    "environment": env,
                    "enabled": true,
                })
            }
            crate::McpTransport::Http { url } => {
                json!({ "type": "remote", "url": url, "enabled": true })
            }
        };
        mcp.insert(server.name.clone(), entry);
    }
    mcp.insert(
        MCP_SERVER_NAME.to_owned(),
        json!({ "type": "remote", "url": session.mcp_url, "enabled": true }),
    );
    json!({
        "$schema": "https://opencode.ai/config.json",
        "autoupdate": false,
        "share": "disabled",
        "provider": {
            PROVIDER_ID: {
                "npm": "@ai-sdk/openai-compatible",
                "name": "Karta gateway",
                "options": {
                    "baseURL": format!("{}/v1", session.gateway_url),
                    "apiKey": session.gateway_key,
                },
                "models": { model: { "name": model } },
            }
        },
        "model": format!("{PROVIDER_ID}/{model}"),
        "small_model": format!("{PROVIDER_ID}/{model}"),
        "mcp": mcp,
        "tools": tools,
        "permission": permission,
        "instructions": instructions(&session.workspace),
    })
}

/// The app's instructions in the workspace, as OpenCode would have found
/// them itself (`AGENTS.md`, else `CLAUDE.md`) were project config on.
fn instructions(workspace: &Path) -> Vec<String> {
    let Ok(dir) = SafeDir::open(workspace) else {
        return Vec::new();
    };
    ["AGENTS.md", "CLAUDE.md"]
        .into_iter()
        .find(|name| {
            matches!(
                dir.kind(Path::new(name)),
                Ok(Some(crate::safe_fs::Kind::File(_)))
            )
        })
        .map(|name| workspace.join(name).display().to_string())
        .into_iter()
        .collect()
}

/// What one turn has seen so far.
#[derive(Default)]
struct TurnState {
    /// Assistant message ids of this turn.
    messages: Vec<String>,
    /// Message id -> role.
    roles: HashMap<String, String>,
    /// Part id -> text so far (text parts), to turn full updates into deltas.
    texts: BTreeMap<String, String>,
    /// Part ids of reasoning parts.
    reasoning: HashSet<String>,
    /// The last text part, for the final answer.
    last_text_part: Option<String>,
    /// Tool-call ids already reported running / finished.
    running: HashSet<String>,
    finished: HashSet<String>,
    /// Tool-call id -> its input, once known.
    inputs: HashMap<String, Value>,
    /// Tool-call ids a person denied.
    denied: HashSet<String>,
    any_denied: bool,
    step_index: u32,
    usage: Usage,
    error: Option<String>,
}

/// The karta tool behind an OpenCode tool name (`karta_calc` -> `calc`).
fn karta_tool(name: &str) -> &str {
    name.strip_prefix(MCP_SERVER_NAME)
        .and_then(|rest| rest.strip_prefix('_'))
        .unwrap_or(name)
}

impl TurnState {
    fn message_id(&self) -> String {
        self.messages.last().cloned().unwrap_or_else(new_message_id)
    }

    fn final_text(&self) -> String {
        self.last_text_part
            .as_ref()
            .and_then(|id| self.texts.get(id))
            .cloned()
            .unwrap_or_default()
    }

    fn finish(&mut self) -> Result<TurnStatus, TurnFailure> {
        match self.error.take() {
            Some(message) => Err(TurnFailure::new(ErrorCode::ModelError, message)),
            None => Ok(if self.any_denied {
                TurnStatus::Denied
            } else {
                TurnStatus::Completed
            }),
        }
    }

    fn message_updated(&mut self, info: &Value) {
        let (Some(id), Some(role)) = (info["id"].as_str(), info["role"].as_str()) else {
            return;
        };
        self.roles.insert(id.to_owned(), role.to_owned());
        if role == "assistant" && !self.messages.iter().any(|m| m == id) {
            self.messages.push(id.to_owned());
        }
        if let Some(error) = info["error"].as_object() {
            let message = error
                .get("data")
                .and_then(|d| d["message"].as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| Value::Object(error.clone()).to_string());
            if error.get("name").and_then(Value::as_str) != Some("MessageAbortedError") {
                self.error = Some(message);
            }
        }
    }

    /// Whether a part (or delta) belongs to the user's message, which
    /// OpenCode echoes as parts too.
    fn is_user_part(&self, part: &Value) -> bool {
        part["messageID"]
            .as_str()
            .and_then(|m| self.roles.get(m))
            .is_some_and(|r| r == "user")
    }

    /// A delta of a text or reasoning part.
    fn part_delta(&mut self, p: &Value, cx: &TurnContext<'_>) {
        let (Some(part_id), Some(delta)) = (p["partID"].as_str(), p["delta"].as_str()) else {
            return;
        };
        if self.is_user_part(p) {
            return;
        }
        if self.reasoning.contains(part_id) {
            cx.emit(Event::reasoning(part_id, delta));
        } else {
            self.texts
                .entry(part_id.to_owned())
                .or_default()
                .push_str(delta);
            self.last_text_part = Some(part_id.to_owned());
            cx.emit(Event::text(part_id, delta));
        }
    }

    fn part_updated(&mut self, p: &Value, cx: &TurnContext<'_>) {
        let part = &p["part"];
        if self.is_user_part(part) {
            return;
        }
        let id = part["id"].as_str().unwrap_or_default().to_owned();
        match part["type"].as_str() {
            Some("text") => {
                let full = part["text"].as_str().unwrap_or_default();
                let seen = self.texts.entry(id.clone()).or_default();
                // Updates carry the whole text; report only what is new.
                if let Some(new) = full.strip_prefix(seen.as_str())
                    && !new.is_empty()
                {
                    cx.emit(Event::text(id.clone(), new));
                }
                *seen = full.to_owned();
                self.last_text_part = Some(id);
            }
            Some("reasoning") => {
                let first = self.reasoning.insert(id.clone());
                let text = part["text"].as_str().unwrap_or_default();
                if first && !text.is_empty() {
                    cx.emit(Event::reasoning(id, text));
                }
            }
            Some("step-start") => cx.emit(Event::step_start(self.step_index)),
            Some("step-finish") => {
                let usage = opencode_usage(&part["tokens"]);
                self.usage.add(usage);
                cx.emit(Event::step_finish(
                    self.step_index,
                    usage,
                    part["reason"].as_str().unwrap_or("stop"),
                ));
                self.step_index += 1;
            }
            Some("tool") => self.tool_part(part, cx),
            _ => {}
        }
    }

    fn tool_part(&mut self, part: &Value, cx: &TurnContext<'_>) {
        let call = part["callID"]
            .as_str()
            .or_else(|| part["id"].as_str())
            .unwrap_or_default()
            .to_owned();
        let tool = karta_tool(part["tool"].as_str().unwrap_or_default()).to_owned();
        let state = &part["state"];
        let input = state["input"].clone();
        if input.as_object().is_some_and(|o| !o.is_empty()) {
            self.inputs.insert(call.clone(), input.clone());
        }
        match state["status"].as_str() {
            Some("running") if self.running.insert(call.clone()) => {
                cx.emit(Event::tool_running(call, tool, input));
            }
            Some(status @ ("completed" | "error")) if self.finished.insert(call.clone()) => {
                let run = cx.host.take_tool_run(&tool, &input);
                let denied = self.denied.remove(&call);
                let text = state["output"]
                    .as_str()
                    .or_else(|| state["error"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                let reported = ReportedResult {
                    text,
                    is_error: status == "error",
                    denied,
                };
                cx.emit(finished_tool_use(call, tool, input, run, reported));
            }
            _ => {}
        }
    }
}

/// A step's tokens as OpenCode reports them (`{input, output, reasoning,
/// cache: {read, write}}`), split as Karta counts them: its `input` excludes
/// the cache, and reasoning is output.
fn opencode_usage(tokens: &Value) -> Usage {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    Usage {
        input_tokens: n(&tokens["input"]),
        output_tokens: n(&tokens["output"]) + n(&tokens["reasoning"]),
        cache_read_tokens: n(&tokens["cache"]["read"]),
        cache_write_tokens: n(&tokens["cache"]["write"]),
    }
}

/// Asks a person about an OpenCode permission request (unless the tool
/// needs no approval); returns the reply body.
async fn answer_permission(p: &Value, cx: &TurnContext<'_>, turn: &mut TurnState) -> Value {
    let tool = karta_tool(p["permission"].as_str().unwrap_or_default()).to_owned();
    let call = p["tool"]["callID"].as_str().unwrap_or_default().to_owned();
    let input = turn.inputs.get(&call).cloned().unwrap_or_else(|| json!({}));
    match cx.approve(&tool, &input).await {
        Ok(()) => json!({ "reply": "once" }),
        Err(_) => {
            turn.any_denied = true;
            turn.denied.insert(call);
            // With a message the model hears why and the turn goes on.
            json!({ "reply": "reject", "message": "A person denied this tool call." })
        }
    }
}

impl Harness for OpencodeHarness {
    fn name(&self) -> &'static str {
        "opencode"
    }

    fn run_turn<'a>(
        &'a self,
        request: TurnRequest,
        context: TurnContext<'a>,
    ) -> BoxFuture<'a, TurnOutcome> {
        Box::pin(self.turn(request, context))
    }

    fn end_session<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(self.sessions.end(session_id))
    }

    fn process_id(&self, session_id: &str) -> Option<u32> {
        self.sessions.pid(session_id)
    }

    fn has_process(&self, session_id: &str) -> bool {
        self.sessions.has_process(session_id)
    }

    fn process_count(&self) -> usize {
        self.sessions.count()
    }

    fn prestart<'a>(
        &'a self,
        request: TurnRequest,
    ) -> BoxFuture<'a, Option<Result<Prestarted, String>>> {
        Box::pin(async move {
            let warmed = async {
                let mut server = self.start(&request).await?;
                let began = Instant::now();
                self.warm_up(&server, &request.model).await?;
                if app_has_no_plugins(&request.session.workspace) {
                    self.warm_up_conversation(&mut server, &request.model)
                        .await?;
                }
                Ok::<_, TurnFailure>(Prestarted::new(server).warmed_up(began.elapsed()))
            };
            Some(warmed.await.map_err(|f| f.message().to_owned()))
        })
    }

    fn adopt(&self, prestarted: Prestarted, session: &SessionInfo) -> Result<(), Prestarted> {
        let server = prestarted.take::<OpencodeServer>()?;
        // The session continues the conversation the server opened.
        let conversation = server.session.clone();
        match self.sessions.adopt(&session.id, server) {
            Ok(slot) => {
                remember(&session.home, &resume_file(session), &conversation);
                stop_when_idle(&session.id, &slot, self.config.idle_timeout);
                Ok(())
            }
            Err(server) => Err(Prestarted::new(server)),
        }
    }
}

#[cfg(test)]
mod home_file_tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_warm_up_prompt_only_in_apps_without_plugins() {
        let app = std::env::temp_dir().join(format!("karta-oc-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(app.join(".opencode/agent")).expect("mkdir");
        assert!(app_has_no_plugins(&app));
        std::fs::write(app.join("opencode.json"), r#"{"agent": {}}"#).expect("write");
        assert!(app_has_no_plugins(&app));
        std::fs::write(
            app.join(".opencode/opencode.jsonc"),
            r#"{ "plugin": ["x"] }"#,
        )
        .expect("write");
        assert!(!app_has_no_plugins(&app));
        std::fs::remove_file(app.join(".opencode/opencode.jsonc")).expect("rm");
        std::fs::create_dir_all(app.join(".opencode/plugin")).expect("mkdir");
        assert!(!app_has_no_plugins(&app));
        std::fs::remove_dir(app.join(".opencode/plugin")).expect("rm");
        // A link where a plugin directory goes counts as one.
        symlink("/tmp", app.join(".opencode/plugins")).expect("link");
        assert!(!app_has_no_plugins(&app));
        std::fs::remove_dir_all(&app).ok();
    }

    #[test]
    fn regression_issue9_links_in_opencode_home_are_replaced_not_followed() {
        let base = std::env::temp_dir().join(format!("karta-oc-{}", uuid::Uuid::new_v4().simple()));
        let session = crate::test_session(&base);
        let outside = base.join("outside");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(outside.join("secret"), "ses_secret").expect("write");
        std::fs::write(outside.join("target.json"), "untouched").expect("write");
        let home = &session.home;
        let (resume, config_name) = (resume_file(&session), config_file(&session));
        let [config_dir, cache_dir] = xdg_dirs(&session);
        symlink(outside.join("secret"), home.join(&resume)).expect("link");
        symlink(outside.join("secret"), home.join(LEGACY_RESUME_FILE)).expect("link");
        symlink("../../outside/target.json", home.join(&config_name)).expect("link");
        // The per-session dirs' parent, planted as a link out of the HOME.
        symlink("../../outside", home.join(".karta")).expect("link");
        std::fs::write(
            session.workspace.join("opencode.json"),
            r#"{"mcp": {"x": {"type": "local", "command": ["touch", "/tmp/x"]}}}"#,
        )
        .expect("write");
        std::fs::write(session.workspace.join("AGENTS.md"), "Be brief.").expect("write");

        assert_eq!(
            remembered_conversation(&session),
            None,
            "a link is not read"
        );
        let harness = OpencodeHarness::new(OpencodeConfig {
            program: PathBuf::from("/nonexistent/opencode"),
            idle_timeout: Duration::from_secs(1),
            client: HttpClient::new(),
            jail: None,
            nice: None,
        });
        let request = TurnRequest {
            system: String::new(),
            history: Vec::new(),
            text: "hi".into(),
            thinking: false,
            model: "m".into(),
            agent: None,
            session: session.clone(),
        };
        let spawn = harness.spawn_for(&request, 4096).expect("spawn");
        assert_eq!(
            std::fs::read_to_string(outside.join("target.json")).expect("read"),
            "untouched"
        );
        assert_eq!(
            std::fs::read_dir(&outside).expect("read").count(),
            2,
            "nothing created through the .karta link"
        );
        for path in [
            Path::new(&config_name),
            Path::new(".karta"),
            &config_dir,
            &cache_dir,
        ] {
            let meta = std::fs::symlink_metadata(home.join(path)).expect("meta");
            assert!(!meta.file_type().is_symlink(), "{} is real", path.display());
        }
        assert!(
            !session.workspace.join("opencode.json").exists(),
            "the project config is removed"
        );
        assert_eq!(spawn.env["OPENCODE_DISABLE_PROJECT_CONFIG"], "1");
        assert_eq!(
            spawn.env["XDG_CONFIG_HOME"],
            home.join(&config_dir).display().to_string(),
            "the config dir is the session's own"
        );
        let config: Value =
            serde_json::from_slice(&std::fs::read(home.join(&config_name)).expect("read"))
                .expect("json");
        assert_eq!(
            config["instructions"],
            json!([session.workspace.join("AGENTS.md").display().to_string()])
        );
        std::fs::remove_dir_all(&base).expect("cleanup");
    }

    #[test]
    fn sessions_sharing_a_home_keep_their_own_config_dirs_and_conversation() {
        let base = std::env::temp_dir().join(format!("karta-oc-{}", uuid::Uuid::new_v4().simple()));
        // Two sessions of one end user: one HOME, their own workspaces,
        // gateway keys and MCP tokens.
        let first = crate::test_session(&base);
        let mut second = first.clone();
        second.id = "s2".into();
        second.workspace = base.join("workspaces/s2");
        second.gateway_key = "other-key".into();
        second.mcp_url = "http://127.0.0.1:2/mcp/other-token".into();
        std::fs::create_dir_all(&second.workspace).expect("mkdir");
        let home = first.home.clone();
        let harness = OpencodeHarness::new(OpencodeConfig {
            program: PathBuf::from("/nonexistent/opencode"),
            idle_timeout: Duration::from_secs(1),
            client: HttpClient::new(),
            jail: None,
            nice: None,
        });
        let spawn = |session: &SessionInfo| {
            let request = TurnRequest {
                system: String::new(),
                history: Vec::new(),
                text: "hi".into(),
                thinking: false,
                model: "m".into(),
                agent: None,
                session: session.clone(),
            };
            harness.spawn_for(&request, 4096).expect("spawn")
        };
        let (one, two) = (spawn(&first), spawn(&second));
        for name in ["OPENCODE_CONFIG", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"] {
            assert_ne!(one.env[name], two.env[name], "{name} is per session");
        }
        for (spawn, session) in [(&one, &first), (&two, &second)] {
            assert_eq!(spawn.env["HOME"], home.display().to_string(), "one HOME");
            for name in ["XDG_CONFIG_HOME", "XDG_CACHE_HOME"] {
                assert!(Path::new(&spawn.env[name]).is_dir(), "{name} is made");
            }
            let config: Value = serde_json::from_slice(
                &std::fs::read(&spawn.env["OPENCODE_CONFIG"]).expect("read"),
            )
            .expect("json");
            assert_eq!(
                config["mcp"][MCP_SERVER_NAME]["url"], session.mcp_url,
                "its own MCP token"
            );
            assert_eq!(
                config["provider"][PROVIDER_ID]["options"]["apiKey"], session.gateway_key,
                "its own gateway key"
            );
        }
        // OpenCode's data dir (its conversations) is the HOME's default,
        // shared.
        assert!(!one.env.contains_key("XDG_DATA_HOME"));

        // Each remembers and continues its own conversation.
        assert_ne!(resume_file(&first), resume_file(&second));
        remember(&home, &resume_file(&first), "ses_one");
        remember(&home, &resume_file(&second), "ses_two");
        assert_eq!(remembered_conversation(&first).as_deref(), Some("ses_one"));
        assert_eq!(remembered_conversation(&second).as_deref(), Some("ses_two"));
        std::fs::remove_dir_all(&base).expect("cleanup");
    }

    #[test]
    fn a_conversation_remembered_under_the_old_name_is_continued() {
        let base = std::env::temp_dir().join(format!("karta-oc-{}", uuid::Uuid::new_v4().simple()));
        let session = crate::test_session(&base);
        // A session whose HOME was its own, from before homes were shared.
        std::fs::write(session.home.join(LEGACY_RESUME_FILE), "ses_old").expect("write");
        assert_eq!(
            remembered_conversation(&session).as_deref(),
            Some("ses_old")
        );
        // Its own file wins once written.
        remember(&session.home, &resume_file(&session), "ses_new");
        assert_eq!(
            remembered_conversation(&session).as_deref(),
            Some("ses_new")
        );
        std::fs::remove_dir_all(&base).expect("cleanup");
    }
}
