//! The OpenCode harness: the real `opencode` binary as a headless server,
//! one per live session.
//!
//! On a session's first turn the harness starts
//! `opencode serve --hostname 127.0.0.1 --port N` in the session workspace
//! (populated with the app's `AGENTS.md` and `.opencode/`) with a cleared
//! environment, a scratch `HOME`, and a config (`OPENCODE_CONFIG`) that
//! gives it exactly one provider — the host's gateway, OpenAI-compatible,
//! with the session's gateway key — and the MCP servers: the host's, with
//! the session's token, and the app's own (stdio ones run from the app's
//! read-only folder inside the jail). Its tools: the session's plugin tools
//! (`karta_<tool>`, each set to `ask` unless the app lets it run unasked),
//! the app's servers' tools, and OpenCode's own (`bash`, `edit`, `write`,
//! `read`, … acting on the workspace inside the jail; `webfetch` off, as
//! the jail's only ways out are the gateway and the MCP server) — unless
//! the operator turned the harness's own tools off
//! ([`crate::HarnessAccess::builtin_tools`]), which leaves only its
//! non-acting ones ([`KEPT_BUILTIN_TOOLS`]). Its acting tools and the app's
//! servers ask, unless the app runs autonomous. The title-generation call
//! is skipped (the session is created with a title).
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
//!
//! | file | what it does |
//! | --- | --- |
//! | `mod.rs` | the harness: the command line, starting a server, following its events, a turn's drive loop |
//! | `warm_up.rs` | a pooled server's warm-up |
//! | `translate.rs` | its events as protocol events (the table above) |
//! | `home.rs` | its config, its dirs and remembered session in `HOME`, the app's plugins |

mod home;
mod translate;
mod warm_up;

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
    outcome, remember, remembered, slot_harness_methods, slot_process, stop_when_idle,
};
use crate::{
    BoxFuture, ErrorCode, Event, Harness, Prestarted, SessionInfo, TurnContext, TurnOutcome,
    TurnRequest, TurnStatus, Usage,
};
use home::{
    app_has_no_plugins, config_file, is_opencode_agent, opencode_config, remembered_conversation,
    resume_file, start_lock, xdg_dirs,
};
use translate::{TurnState, answer_permission};

/// The name of the host's MCP server in OpenCode's config; its tools are
/// `karta_<tool>`.
pub const MCP_SERVER_NAME: &str = "karta";

/// The provider id of the host's gateway in OpenCode's config.
pub const PROVIDER_ID: &str = "karta";

/// OpenCode's own tools that stay on when the operator turned the
/// harness's own acting tools off ([`crate::HarnessAccess::builtin_tools`]):
/// they act only through the model (sub-agents, skills, to-do lists). With
/// its own tools on, every one but `webfetch` is on, acting inside the
/// jail.
pub const KEPT_BUILTIN_TOOLS: &[&str] = &["task", "skill", "todowrite"];

/// How long a permission request waits for its tool's input to show up
/// before it is put to a person without it.
const PERMISSION_INPUT_WAIT: Duration = Duration::from_secs(2);

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

impl Harness for OpencodeHarness {
    fn name(&self) -> &'static str {
        "opencode"
    }

    slot_harness_methods!();

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
mod tests;
