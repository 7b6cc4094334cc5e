//! The Claude Code harness: the real `claude` CLI, one process per live
//! session, driven over stream-json.
//!
//! The process is started on a session's first turn with
//!
//! ```text
//! claude -p --input-format stream-json --output-format stream-json --verbose
//!        --include-partial-messages --permission-prompt-tool stdio
//!        --mcp-config <home>/karta-mcp-<session id>.json --strict-mcp-config
//!        --tools <KEPT_BUILTIN_TOOLS> --allowedTools mcp__karta__<tool>,…
//!        [--agent A] [--model M] [--resume <claude session id>]
//! ```
//!
//! in the session workspace (which the host populated with the app's
//! `CLAUDE.md` and `.claude/`), with a cleared environment: a `HOME` (where
//! the folder is marked trusted, so project settings apply),
//! `ANTHROPIC_BASE_URL` = the host's gateway and `ANTHROPIC_API_KEY` = the
//! session's gateway key. Its only tools are the session's plugin tools,
//! reached over MCP (`mcp__karta__<tool>`), plus Claude Code's own
//! non-acting tools (sub-agents, skills, to-dos); the tools that would touch
//! the machine (`Bash`, `Read`, `Write`, `WebFetch`, …) are switched off.
//!
//! Each turn writes one `user` line and maps the output until the `result`
//! line:
//!
//! | claude line | protocol event |
//! | --- | --- |
//! | `stream_event` text / thinking deltas | `text` / `reasoning` |
//! | `stream_event` `message_start` / `message_delta` | `step_start` / `step_finish` (usage) |
//! | `assistant` `tool_use` block | `tool_use` running |
//! | `user` `tool_result` block | `tool_use` completed or error, with the fuel the MCP call used |
//! | `control_request` `can_use_tool` | `input_required`; the answer goes back as a `control_response` |
//! | `system` `init` / `api_retry` | `system` |
//! | `result` | `done`, or `error` when `is_error` |
//!
//! Several turns run in one process. A session that names an agent before
//! its first turn runs as that agent (`--agent`); Claude Code fixes the main
//! agent when a conversation starts (it ignores `--agent` on `--resume`), so
//! a later switch is reported in a `system` event and the app's agents stay
//! available as sub-agents (the `Agent` tool). The process is killed on cancel, after
//! [`ClaudeCodeConfig::idle_timeout`] without a turn, on session delete, and
//! when the harness is dropped; the next turn starts a new one with
//! `--resume`, so the conversation survives (Claude Code keeps it in the
//! session's `HOME`).
//!
//! **A `HOME` may be shared.** The host gives every session of one end user
//! the same `HOME` (their memory: Claude Code's `~/.claude`), and two of
//! them may run at once. So what is one session's in it is named after the
//! session: the MCP config (it carries the session's MCP token) is
//! `karta-mcp-<session id>.json` and the remembered conversation id
//! `karta-claude-session-<session id>`. Claude Code's own state
//! (`.claude.json`, where the workspace is marked trusted, by its path,
//! which is the session's own) is the end user's, shared.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::process::{ChildStdin, ChildStdout};

use crate::lines::{BoundedLines, Line};
use crate::model_stream::{AnthropicEvent, AnthropicMessage, AnthropicUsage, StreamDelta};
use crate::process::{HarnessProcess, JailLimits, JailSpec, Spawn, session_env};
use crate::safe_fs::SafeDir;
use crate::slots::{
    ReportedResult, Slots, TurnFailure, cpu_so_far, finish_turn, finished_tool_use, forget,
    new_message_id, outcome, remember, remembered, slot_process, stop_when_idle,
};
use crate::{
    BoxFuture, ErrorCode, Event, Harness, Prestarted, SessionInfo, TurnContext, TurnOutcome,
    TurnRequest, TurnStatus, Usage,
};

/// The name the host's MCP server has in Claude Code's config; its tools
/// are `mcp__karta__<tool>`.
pub const MCP_SERVER_NAME: &str = "karta";

/// Claude Code's own tools that stay on: they act only through the model
/// (sub-agents, skills, to-do lists), never on the machine.
pub const KEPT_BUILTIN_TOOLS: &[&str] = &["Task", "Agent", "Skill", "TodoWrite"];

/// The longest one output line may be (a tool result can be large).
const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// How long the process may take to answer the `initialize` request.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a pooled process may take to settle its MCP connections.
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// The pause between two `mcp_status` requests of a warm-up.
const WARM_UP_POLL: Duration = Duration::from_millis(20);

/// What a pooled process's throwaway first message says (see
/// `ClaudeProcess::warm_up_conversation`).
const WARM_UP_MESSAGE: &str = "(Karta warm-up: this conversation is cleared before anyone uses it)";

/// The settings files of an app that may configure hooks, in its
/// workspace.
const APP_SETTINGS_FILES: &[&str] = &[".claude/settings.json", ".claude/settings.local.json"];

/// The largest settings file read to look for hooks.
const MAX_SETTINGS_BYTES: u64 = 1024 * 1024;

/// Settings of the Claude Code harness.
#[derive(Debug, Clone)]
pub struct ClaudeCodeConfig {
    /// The `claude` binary.
    pub program: PathBuf,
    /// A session's process is stopped after this long without a turn.
    pub idle_timeout: Duration,
    /// The limits of each process's jail; `None` runs it unjailed (only
    /// with the operator's `--no-jail`).
    pub jail: Option<JailLimits>,
    /// The nice value of each process ([`crate::process::Spawn::nice`]).
    pub nice: Option<i32>,
}

/// The Claude Code harness (see the module docs).
pub struct ClaudeCodeHarness {
    config: ClaudeCodeConfig,
    /// Each session's process slot (empty when stopped).
    sessions: Slots<ClaudeProcess>,
}

/// One running `claude`.
struct ClaudeProcess {
    process: HarnessProcess,
    stdin: ChildStdin,
    lines: BoundedLines<ChildStdout>,
    last_used: Instant,
    /// Whether `system/init` was reported (once per process).
    announced: bool,
    /// The agent it runs as (`--agent`), if any.
    agent: Option<String>,
    /// Its conversation id, as last remembered in the session's `HOME`.
    conversation: Option<String>,
}

/// The file in `HOME` that remembered Claude Code's own session id while
/// every session had a `HOME` of its own; a session's own file is
/// [`resume_file`].
const LEGACY_RESUME_FILE: &str = "karta-claude-session";

/// The file in `HOME` that remembers Claude Code's own session id of
/// `session`, for `--resume`. Named after the session: sessions sharing a
/// `HOME` each continue their own conversation.
fn resume_file(session: &SessionInfo) -> String {
    format!("{LEGACY_RESUME_FILE}-{}", session.id)
}

/// The file in `HOME` that names the host's MCP server to `session`'s
/// process (`--mcp-config`). Named after the session: it carries the
/// session's MCP token, and a session sharing the `HOME` must not replace
/// it with its own.
fn mcp_config_file(session: &SessionInfo) -> String {
    format!("karta-mcp-{}.json", session.id)
}

/// Claude Code's session id remembered for `session`: in its own file, or
/// else under the name every session used while each had its own `HOME`
/// (a session from before then continues its conversation). The host never
/// writes that name in a shared `HOME`; only a harness of the same end user
/// could, and that harness is already in their trust domain.
fn remembered_conversation(session: &SessionInfo) -> Option<String> {
    remembered(&session.home, &resume_file(session))
        .or_else(|| remembered(&session.home, LEGACY_RESUME_FILE))
}

/// Forgets `session`'s conversation under both names (a forgotten id must
/// not come back through the fallback).
fn forget_conversation(session: &SessionInfo) {
    forget(&session.home, &resume_file(session));
    forget(&session.home, LEGACY_RESUME_FILE);
}

/// Claude Code's own state file in its `HOME`, where the workspace is
/// marked trusted.
const CLAUDE_STATE_FILE: &str = ".claude.json";

/// The largest `.claude.json` read back (Claude Code keeps per-project
/// state there; a bigger one is started afresh rather than read whole).
const MAX_CLAUDE_STATE_BYTES: u64 = 16 * 1024 * 1024;

impl ClaudeCodeHarness {
    /// A harness running `config.program`.
    pub fn new(config: ClaudeCodeConfig) -> Self {
        Self {
            config,
            sessions: Slots::default(),
        }
    }

    /// The command line for `session` (see the module docs).
    fn spawn_for(&self, request: &TurnRequest) -> std::io::Result<Spawn> {
        let session = &request.session;
        let env = session_env(session, &self.config.program, claude_env(session))?;
        let mcp_config_name = mcp_config_file(session);
        let mcp_config = session.home.join(&mcp_config_name);
        // The process writes its HOME: a link it left there is replaced,
        // never written through.
        let home = SafeDir::open(&session.home)?;
        home.write(
            Path::new(&mcp_config_name),
            &serde_json::to_vec_pretty(&mcp_config_json(session))?,
        )?;
        trust_workspace(&home, &session.workspace)?;

        let mut args: Vec<String> = [
            "-p",
            "--input-format",
            "stream-json",
            "--output-format",
            "stream-json",
            "--verbose",
            "--include-partial-messages",
            "--permission-prompt-tool",
            "stdio",
            "--strict-mcp-config",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        args.push("--mcp-config".into());
        args.push(mcp_config.display().to_string());
        args.push("--tools".into());
        if session.access.builtin_tools {
            // Its own tools work on the workspace, inside the jail; the web
            // ones could only fail there (no way out but the gateway).
            args.push("default".into());
            args.push("--disallowedTools".into());
            args.push(OFFLINE_TOOLS.join(","));
        } else {
            args.push(KEPT_BUILTIN_TOOLS.join(","));
        }
        if session.access.autonomous {
            // Nothing asks (IS_SANDBOX=1 lets it run as the jail's uid 0);
            // Karta's own approval tools are still asked by the MCP server.
            args.push("--permission-mode".into());
            args.push("bypassPermissions".into());
        }
        if !session.preapproved_tools.is_empty() {
            args.push("--allowedTools".into());
            args.push(
                session
                    .preapproved_tools
                    .iter()
                    .map(|t| format!("mcp__{MCP_SERVER_NAME}__{t}"))
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        if let Some(agent) = &request.agent {
            args.push("--agent".into());
            args.push(agent.clone());
        }
        if !request.model.is_empty() {
            args.push("--model".into());
            args.push(request.model.clone());
        }
        if let Some(previous) = remembered_conversation(session) {
            args.push("--resume".into());
            args.push(previous);
        }

        Ok(Spawn {
            program: self.config.program.clone(),
            args,
            cwd: session.workspace.clone(),
            env,
            stdin: true,
            stdout: true,
            jail: self.config.jail.map(|limits| {
                let mut spec = JailSpec::for_session(
                    session,
                    &self.config.program,
                    Vec::new(),
                    Vec::new(),
                    limits,
                );
                spec.read.extend(session.access.app_root.iter().cloned());
                spec.hidden.extend(session.access.hidden.iter().cloned());
                spec
            }),
            nice: self.config.nice,
        })
    }

    async fn start(&self, request: &TurnRequest) -> Result<ClaudeProcess, TurnFailure> {
        let spawn = self
            .spawn_for(request)
            .map_err(|e| TurnFailure::harness(format!("cannot prepare claude: {e}")))?;
        let mut process = HarnessProcess::start(&spawn).map_err(|e| {
            TurnFailure::new(
                ErrorCode::HarnessUnavailable,
                format!("cannot start {}: {e}", spawn.program.display()),
            )
        })?;
        let (Some(stdin), Some(stdout)) = (process.child.stdin.take(), process.child.stdout.take())
        else {
            return Err(TurnFailure::harness("claude has no pipes"));
        };
        let mut claude = ClaudeProcess {
            process,
            stdin,
            lines: BoundedLines::new(stdout, 64 * 1024, MAX_LINE_BYTES),
            last_used: Instant::now(),
            announced: false,
            agent: request.agent.clone(),
            conversation: remembered_conversation(&request.session),
        };
        let request_id = format!("init_{}", uuid::Uuid::new_v4().simple());
        claude
            .send(&json!({
                "type": "control_request",
                "request_id": request_id,
                "request": { "subtype": "initialize", "hooks": null },
            }))
            .await?;
        // Wait for the answer, so a process that cannot start fails here,
        // with its stderr, rather than in the middle of the turn.
        let answered = tokio::time::timeout(START_TIMEOUT, async {
            loop {
                let line = claude.next_line().await?;
                if line["type"] == "control_response" {
                    let response = &line["response"];
                    if response["subtype"] == "error" {
                        return Err(TurnFailure::harness(format!(
                            "claude refused to start: {}",
                            response["error"]
                        )));
                    }
                    return Ok(());
                }
            }
        })
        .await;
        match answered {
            Ok(Ok(())) => Ok(claude),
            Ok(Err(failure)) => Err(failure),
            Err(_) => Err(TurnFailure::harness(format!(
                "claude did not answer its initialize request within {}s",
                START_TIMEOUT.as_secs()
            ))),
        }
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
        outcome(&request.text, turn.text, turn.usage, status)
    }

    /// Sends the message and maps the output until the turn's `result`.
    async fn drive(
        &self,
        slot: &mut Option<ClaudeProcess>,
        request: &TurnRequest,
        cx: &TurnContext<'_>,
        turn: &mut TurnState,
    ) -> Result<TurnStatus, TurnFailure> {
        if slot.is_none() {
            let started = match self.start(request).await {
                // A conversation Claude Code cannot resume (its files are
                // gone) must not fail every later turn: start afresh once.
                Err(failure) if remembered_conversation(&request.session).is_some() => {
                    tracing::warn!(
                        session = %request.session.id,
                        "claude could not resume ({}); starting a new conversation",
                        failure.message()
                    );
                    forget_conversation(&request.session);
                    self.start(request).await?
                }
                started => started?,
            };
            *slot = Some(started);
        }
        let Some(claude) = slot.as_mut() else {
            return Err(TurnFailure::harness("no claude process"));
        };
        if claude.agent != request.agent {
            // Claude Code fixes its main agent when its conversation starts
            // (`--agent` is ignored on `--resume`); say so rather than
            // pretend.
            cx.emit(Event::System(json!({
                "harness": "claude_code",
                "notice": format!(
                    "Claude Code keeps the agent this conversation started with ({}); the app's agents stay available as sub-agents",
                    claude.agent.as_deref().unwrap_or("the main agent")
                ),
            })));
        }
        claude.send(&user_line(&request.text)).await?;
        loop {
            let text = claude.next_text_line().await?;
            // Most of a turn's lines are `stream_event`s (a dozen for a short
            // answer) and a repeated `init`: read those typed, as they are
            // written; the few others whole.
            if let Ok(head) = serde_json::from_str::<LineHead<'_>>(&text) {
                match (head.kind.as_ref(), head.subtype.as_deref()) {
                    ("stream_event", _) => {
                        turn.stream_event(head.event.map(RawValue::get), cx)?;
                        continue;
                    }
                    // Already announced, the conversation already remembered.
                    ("system", Some("init"))
                        if claude.announced
                            && head.session_id.is_some_and(|id| {
                                claude.conversation.as_deref() == Some(id.as_ref())
                            }) =>
                    {
                        continue;
                    }
                    _ => {}
                }
            }
            let Ok(line) = serde_json::from_str::<Value>(&text) else {
                // Claude Code writes only JSON here; anything else is noise
                // worth a log line, not a failed turn.
                tracing::debug!("claude wrote a non-JSON line: {text}");
                continue;
            };
            match line["type"].as_str() {
                Some("stream_event") => {
                    let event = serde_json::to_string(&line["event"]).unwrap_or_default();
                    turn.stream_event(Some(&event), cx)?;
                }
                Some("assistant") => turn.assistant(&line, cx, claude.process.cpu_time()),
                Some("user") => turn.tool_results(&line, cx, claude.process.cpu_time()),
                Some("control_request") => {
                    let answer = answer_control_request(&line, cx, turn).await;
                    claude.send(&answer).await?;
                }
                Some("system") => {
                    if line["subtype"] == "init" {
                        // Claude Code repeats `init` every turn; the file is
                        // written only when its conversation id changes.
                        if let Some(id) = line["session_id"].as_str()
                            && claude.conversation.as_deref() != Some(id)
                        {
                            remember(&request.session.home, &resume_file(&request.session), id);
                            claude.conversation = Some(id.to_owned());
                        }
                        if !claude.announced {
                            claude.announced = true;
                            let summary = json!({
                                "harness": "claude_code",
                                "subtype": "init",
                                "confined": claude.process.confined(),
                                "model": line["model"],
                                "claude_session_id": line["session_id"],
                                "tools": line["tools"],
                                "mcp_servers": line["mcp_servers"],
                                "agents": line["agents"],
                            });
                            cx.emit_raw(Event::System(summary), line);
                        }
                    } else if line["subtype"] == "api_retry" {
                        let summary = json!({ "harness": "claude_code", "subtype": "api_retry" });
                        cx.emit_raw(Event::System(summary), line);
                    }
                }
                Some("result") => return turn.result(&line),
                _ => {}
            }
        }
    }
}

/// What the drive loop reads first of each of `claude`'s lines (the rest
/// is skipped, not built): its type, and what the lines that come many
/// times a turn need. A line this cannot read (a field of another type, or
/// named twice) is read again whole, as any other line.
#[derive(Deserialize)]
struct LineHead<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    subtype: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    session_id: Option<std::borrow::Cow<'a, str>>,
    /// A `stream_event`'s Anthropic event, as written.
    #[serde(default, borrow)]
    event: Option<&'a RawValue>,
}

/// Claude Code's tools that reach the web: off even when its own tools are
/// on (the jail has no way out but the gateway and the MCP server).
pub const OFFLINE_TOOLS: &[&str] = &["WebFetch", "WebSearch"];

/// `--mcp-config`: Karta's MCP server, and the app's own servers — stdio
/// ones run from the app's read-only folder inside the jail, the others
/// reached over HTTP.
fn mcp_config_json(session: &SessionInfo) -> Value {
    let mut servers = serde_json::Map::new();
    for server in &session.access.mcp_servers {
        let entry = match &server.transport {
            crate::McpTransport::Stdio { command, args, env } => {
                let Some(app_root) = &session.access.app_root else {
                    continue;
                };
                let mut line = crate::AppMcpServer::stdio_in(app_root, command, args);
                let program = line.remove(0);
                json!({ "type": "stdio", "command": program, "args": line, "env": env })
            }
            crate::McpTransport::Http { url } => json!({ "type": "http", "url": url }),
        };
        servers.insert(server.name.clone(), entry);
    }
    // Karta's own last: an app server of the same name does not replace it.
    servers.insert(
        MCP_SERVER_NAME.to_owned(),
        json!({ "type": "http", "url": session.mcp_url }),
    );
    json!({ "mcpServers": servers })
}

/// The variables that point Claude Code at the gateway and keep it offline
/// and quiet.
fn claude_env(session: &SessionInfo) -> BTreeMap<String, String> {
    [
        ("ANTHROPIC_BASE_URL", session.gateway_url.as_str()),
        ("ANTHROPIC_API_KEY", session.gateway_key.as_str()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
        ("DISABLE_TELEMETRY", "1"),
        ("DISABLE_AUTOUPDATER", "1"),
        ("DISABLE_ERROR_REPORTING", "1"),
        ("DISABLE_BUG_COMMAND", "1"),
        // MCP tools go straight into the model's tool list instead of
        // behind a search tool.
        ("ENABLE_TOOL_SEARCH", "false"),
        ("CLAUDE_CODE_MAX_RETRIES", "2"),
        ("IS_SANDBOX", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Marks `workspace` trusted in `home/.claude.json`, so the app's
/// `.claude/settings.json` applies.
///
/// The file is Claude Code's (so the process may have made it a link, a
/// FIFO or a huge file): it is read without following a link, bounded, and
/// anything unreadable is started afresh; it is written by replacing it.
fn trust_workspace(home: &SafeDir, workspace: &Path) -> std::io::Result<()> {
    let file = Path::new(CLAUDE_STATE_FILE);
    let mut config: Value = home
        .read(file, MAX_CLAUDE_STATE_BYTES)
        .inspect_err(|e| {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("starting {CLAUDE_STATE_FILE} afresh: {e}");
            }
        })
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    let key = workspace.display().to_string();
    config["hasCompletedOnboarding"] = json!(true);
    if !config["projects"].is_object() {
        config["projects"] = json!({});
    }
    config["projects"][key]["hasTrustDialogAccepted"] = json!(true);
    home.write(file, &serde_json::to_vec_pretty(&config)?)
}

/// The stream-json line of a user message saying `text`.
fn user_line(text: &str) -> Value {
    json!({
        "type": "user",
        "message": { "role": "user", "content": [{ "type": "text", "text": text }] },
        "parent_tool_use_id": null,
        "session_id": "",
    })
}

/// Whether the app in `workspace` configures no hooks and no plugins
/// (which may bring hooks): only then may a pooled process exchange a
/// warm-up message, because hooks (`UserPromptSubmit`, `Stop`,
/// `SessionStart` on `/clear`, …) run the app's commands, and a warm-up
/// runs nothing of the app's. A settings file that cannot be read or
/// parsed counts as having hooks. (The host copies no hooks into a
/// workspace today — it reduces an app's settings to permission rules —
/// so this is the second line: it keeps a warm-up from ever running one
/// if that changes, or for a harness given a workspace some other way.)
fn app_has_no_hooks(workspace: &Path) -> bool {
    let Ok(dir) = SafeDir::open(workspace) else {
        return false;
    };
    APP_SETTINGS_FILES.iter().all(|file| {
        match dir.read_optional(Path::new(file), MAX_SETTINGS_BYTES) {
            Ok(None) => true,
            Ok(Some(bytes)) => serde_json::from_slice::<Value>(&bytes).is_ok_and(|settings| {
                ["hooks", "enabledPlugins"]
                    .iter()
                    .all(|key| settings.get(key).is_none_or(is_empty_json))
            }),
            Err(_) => false,
        }
    })
}

fn is_empty_json(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => map.is_empty(),
        Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

/// Removes the transcript of Claude Code's conversation `conversation`
/// from `home` (`.claude/projects/<workspace key>/<id>.jsonl`), without
/// following a link the process may have made. Best effort: a transcript
/// left behind is only the warm-up's two lines.
fn forget_transcript(home: &Path, conversation: &str) {
    if conversation.is_empty()
        || conversation.contains(['/', '\0'])
        || conversation.starts_with('.')
    {
        return;
    }
    let Ok(home) = SafeDir::open(home) else {
        return;
    };
    let projects = Path::new(".claude/projects");
    let Ok(entries) = home.list(projects) else {
        return;
    };
    for (name, kind) in entries {
        if matches!(kind, crate::safe_fs::Kind::Dir) {
            let transcript = projects.join(name).join(format!("{conversation}.jsonl"));
            if let Err(e) = home.remove(&transcript) {
                tracing::debug!(
                    "cannot remove the warm-up transcript {}: {e}",
                    transcript.display()
                );
            }
        }
    }
}

slot_process!(ClaudeProcess);

impl ClaudeProcess {
    /// The warm-up of a pooled process (see [`Harness::prestart`]):
    /// waits until none of its MCP servers is still connecting.
    ///
    /// Claude Code 2.1.332 answers `initialize` before its MCP connections
    /// are made (they go on in the background, with its other start-up
    /// work); a first message that arrives meanwhile waits for them. Its
    /// `mcp_status` control request reports each server as `pending` until
    /// then, and asks nothing of the model or of a server. What the first
    /// message does besides (the `system/init` line, the first attachments
    /// of the conversation) belongs to the conversation: no control request
    /// of this version does it without starting one (measured: none of
    /// `mcp_status`, `get_settings`, `get_status`, `get_context_usage`
    /// makes the first turn faster), so it stays with the first turn.
    async fn warm_up(&mut self) -> Result<(), TurnFailure> {
        let settled = tokio::time::timeout(WARM_UP_TIMEOUT, async {
            loop {
                let request_id = format!("warm_{}", uuid::Uuid::new_v4().simple());
                self.send(&json!({
                    "type": "control_request",
                    "request_id": request_id,
                    "request": { "subtype": "mcp_status" },
                }))
                .await?;
                let status = loop {
                    let line = self.next_line().await?;
                    let response = &line["response"];
                    if line["type"] == "control_response" && response["request_id"] == request_id {
                        break response.clone();
                    }
                };
                if status["subtype"] == "error" {
                    return Err(TurnFailure::harness(format!(
                        "claude refused its mcp_status request: {}",
                        status["error"]
                    )));
                }
                let pending = status["response"]["mcpServers"]
                    .as_array()
                    .is_some_and(|servers| servers.iter().any(|s| s["status"] == "pending"));
                if !pending {
                    return Ok(());
                }
                tokio::time::sleep(WARM_UP_POLL).await;
            }
        })
        .await;
        settled.unwrap_or_else(|_| {
            Err(TurnFailure::harness(format!(
                "claude's MCP servers were still connecting after {}s",
                WARM_UP_TIMEOUT.as_secs()
            )))
        })
    }

    /// The second half of a pooled process's warm-up: one throwaway
    /// exchange, then `/clear`.
    ///
    /// A conversation's first message costs Claude Code 2.1.332 ~60–80 ms
    /// that a later one does not (the first run of its per-message code,
    /// measured unjailed: message → model request 93–131 ms first, 23–43 ms
    /// second), and no control request does that work without a message.
    /// So the warm-up sends one — its model call is the pool slot's, which
    /// the gateway answers itself (a fixed `ok`, no provider, nothing
    /// metered) — and then `/clear`, which starts a new, empty
    /// conversation (a new conversation id: the session's first message
    /// is its first, and the request carries nothing of the warm-up; the
    /// pool test asserts it). Measured the same way, the first message
    /// after this costs 40–55 ms, a later one 24–31 ms. The warm-up's own
    /// transcript is removed from `home`, so the session's `HOME` holds
    /// only its own conversation. Apps with hooks skip this (see
    /// [`app_has_no_hooks`]).
    async fn warm_up_conversation(&mut self, home: &Path) -> Result<(), TurnFailure> {
        let exchanged = tokio::time::timeout(WARM_UP_TIMEOUT, async {
            self.send(&user_line(WARM_UP_MESSAGE)).await?;
            let warm = self.until_result().await?;
            self.send(&user_line("/clear")).await?;
            self.until_result().await?;
            Ok::<_, TurnFailure>(warm)
        })
        .await
        .unwrap_or_else(|_| {
            Err(TurnFailure::harness(format!(
                "claude's warm-up exchange took more than {}s",
                WARM_UP_TIMEOUT.as_secs()
            )))
        })?;
        if let Some(conversation) = exchanged["session_id"].as_str() {
            forget_transcript(home, conversation);
        }
        Ok(())
    }

    /// Reads to the next `result` line; anything asking for an answer on
    /// the way (a warm-up never should) fails the warm-up.
    async fn until_result(&mut self) -> Result<Value, TurnFailure> {
        loop {
            let line = self.next_line().await?;
            match line["type"].as_str() {
                Some("result") if line["is_error"] == true => {
                    return Err(TurnFailure::harness(format!(
                        "claude's warm-up exchange failed: {}",
                        line["result"]
                    )));
                }
                Some("result") => return Ok(line),
                Some("control_request") => {
                    return Err(TurnFailure::harness(
                        "claude asked for an answer during its warm-up",
                    ));
                }
                _ => {}
            }
        }
    }

    async fn send(&mut self, line: &Value) -> Result<(), TurnFailure> {
        let mut bytes = serde_json::to_vec(line)
            .map_err(|e| TurnFailure::harness(format!("cannot encode: {e}")))?;
        bytes.push(b'\n');
        let written = async {
            self.stdin.write_all(&bytes).await?;
            self.stdin.flush().await
        }
        .await;
        written.map_err(|e| self.died(&format!("cannot write to claude: {e}")))
    }

    /// The next JSON line; the process ending is an error.
    async fn next_line(&mut self) -> Result<Value, TurnFailure> {
        loop {
            let line = self.next_text_line().await?;
            match serde_json::from_str(&line) {
                Ok(value) => return Ok(value),
                // Claude Code writes only JSON here; anything else is noise
                // worth a log line, not a failed turn.
                Err(_) => tracing::debug!("claude wrote a non-JSON line: {line}"),
            }
        }
    }

    /// The next line that is not blank, trimmed; the process ending is an
    /// error.
    async fn next_text_line(&mut self) -> Result<String, TurnFailure> {
        loop {
            let line = match self.lines.next_line().await {
                Ok(Some(Line::Text(line))) => line,
                // Not kept: the line would grow the host, outside the
                // jail's memory limit. The turn fails and the process goes.
                Ok(Some(Line::TooLong { .. })) => {
                    return Err(TurnFailure::harness(format!(
                        "claude wrote a line longer than {} MiB",
                        MAX_LINE_BYTES >> 20
                    )));
                }
                Ok(None) => return Err(self.died("claude exited")),
                Err(e) => return Err(self.died(&format!("cannot read claude's output: {e}"))),
            };
            let trimmed = line.trim();
            if trimmed.is_empty() {
                continue;
            }
            return Ok(if trimmed.len() == line.len() {
                line
            } else {
                trimmed.to_owned()
            });
        }
    }

    fn died(&mut self, what: &str) -> TurnFailure {
        let status = self.process.child.try_wait().ok().flatten();
        let tail = self.process.stderr_tail();
        let mut message = what.to_owned();
        if let Some(status) = status {
            message.push_str(&format!(" ({status})"));
        }
        if !tail.is_empty() {
            message.push_str(&format!("; its last words: {tail}"));
        }
        TurnFailure::harness(message)
    }
}

/// What one turn has seen so far.
#[derive(Default)]
struct TurnState {
    /// The model message being streamed (the latest one), assembled from
    /// Claude Code's partial messages.
    message: Option<AnthropicMessage>,
    /// The id of the latest model message.
    message_id: Option<String>,
    step_index: u32,
    usage: Usage,
    /// Text of the latest assistant message.
    text: String,
    /// Tool-use id -> (karta tool name, input).
    /// Calls in flight: tool, input, and the jail's CPU time when it began.
    tool_uses: HashMap<String, (String, Value, Option<Duration>)>,
    /// Tool calls a person denied, by tool-use id (else by tool and input):
    /// their results are reported as denials.
    denied: HashSet<String>,
    /// Whether a person denied a call this turn.
    any_denied: bool,
}

/// The karta tool behind a Claude Code tool name (`mcp__karta__calc` ->
/// `calc`); other names stay as they are.
fn karta_tool(name: &str) -> &str {
    name.strip_prefix("mcp__")
        .and_then(|rest| rest.strip_prefix(MCP_SERVER_NAME))
        .and_then(|rest| rest.strip_prefix("__"))
        .unwrap_or(name)
}

impl TurnState {
    fn message_id(&self) -> String {
        self.message_id.clone().unwrap_or_else(new_message_id)
    }

    /// A raw Anthropic streaming event (partial messages): deltas become
    /// `text` / `reasoning`, a message's start and end become its step.
    fn stream_event(
        &mut self,
        event: Option<&str>,
        cx: &TurnContext<'_>,
    ) -> Result<(), TurnFailure> {
        let event = event.unwrap_or("null");
        let Ok(event) = AnthropicEvent::from_json(event) else {
            tracing::debug!("claude sent a stream event that is not Anthropic's: {event}");
            return Ok(());
        };
        let starts = matches!(event, AnthropicEvent::MessageStart { .. });
        let finishes = matches!(event, AnthropicEvent::MessageDelta { .. });
        if starts {
            self.message = Some(AnthropicMessage::default());
            self.text.clear();
        }
        let Some(message) = self.message.as_mut() else {
            return Ok(());
        };
        let delta = message
            .apply(event)
            .map_err(|e| TurnFailure::new(ErrorCode::ModelError, e.to_string()))?;
        if starts {
            self.message_id = Some(message.id.clone().unwrap_or_else(new_message_id));
            cx.emit(Event::step_start(self.step_index));
        }
        let part =
            |index: usize| format!("{}_{index}", self.message_id.as_deref().unwrap_or("msg"));
        match delta {
            Some(StreamDelta::Text { index, text }) => {
                self.text.push_str(&text);
                cx.emit(Event::text(part(index), text));
            }
            Some(StreamDelta::Reasoning { index, text }) => {
                cx.emit(Event::reasoning(part(index), text));
            }
            None => {}
        }
        if finishes && let Some(message) = self.message.take() {
            let usage = message.usage();
            self.usage.add(usage);
            cx.emit(Event::step_finish(
                self.step_index,
                usage,
                message.stop_reason(),
            ));
            self.step_index += 1;
        }
        Ok(())
    }

    /// A finished assistant content block: tool calls start here.
    fn assistant(&mut self, line: &Value, cx: &TurnContext<'_>, cpu: Option<Duration>) {
        for block in line["message"]["content"].as_array().into_iter().flatten() {
            if block["type"] != "tool_use" {
                continue;
            }
            let id = block["id"].as_str().unwrap_or_default().to_owned();
            if self.tool_uses.contains_key(&id) {
                continue;
            }
            let tool = karta_tool(block["name"].as_str().unwrap_or_default()).to_owned();
            let input = block["input"].clone();
            cx.emit(Event::tool_running(id.clone(), tool.clone(), input.clone()));
            self.tool_uses.insert(id, (tool, input, cpu));
        }
    }

    /// Tool results: each finishes a tool call, with what it cost — the
    /// MCP call's fuel for Karta's tools, the jail's CPU time for the
    /// harness's own.
    fn tool_results(&mut self, line: &Value, cx: &TurnContext<'_>, cpu: Option<Duration>) {
        for block in line["message"]["content"].as_array().into_iter().flatten() {
            if block["type"] != "tool_result" {
                continue;
            }
            let id = block["tool_use_id"].as_str().unwrap_or_default();
            let Some((tool, input, cpu_at_start)) = self.tool_uses.get(id).cloned() else {
                continue;
            };
            let text = result_text(&block["content"]);
            let is_error = block["is_error"].as_bool().unwrap_or(false);
            let denied = self.denied.remove(id) || self.denied.remove(&denial_key(&tool, &input));
            let run = cx.host.take_tool_run(&tool, &input);
            let reported = ReportedResult {
                text,
                is_error,
                denied,
            };
            let mut event = finished_tool_use(id.to_owned(), tool, input, run, reported);
            if let (Event::ToolUse(data), Some(start), Some(now)) = (&mut event, cpu_at_start, cpu)
                && data.fuel.is_none()
            {
                data.cpu_ms = Some(now.saturating_sub(start).as_millis() as u64);
            }
            cx.emit(event);
        }
    }

    /// The turn's `result` line: how it ended.
    fn result(&mut self, line: &Value) -> Result<TurnStatus, TurnFailure> {
        if line["is_error"].as_bool().unwrap_or(false) {
            let message = line["result"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    format!("claude ended the turn with an error ({})", line["subtype"])
                });
            return Err(TurnFailure::new(ErrorCode::ModelError, message));
        }
        if let Some(text) = line["result"].as_str().filter(|t| !t.is_empty()) {
            self.text = text.to_owned();
        }
        // Claude Code's own total of the turn; the steps' sum is what the
        // turn reports (the host replaces both with what the gateway metered).
        if let Ok(reported) = serde_json::from_value::<AnthropicUsage>(line["usage"].clone()) {
            let mut total = Usage::default();
            reported.update(&mut total);
            if total != self.usage {
                tracing::debug!(
                    "claude's turn usage {total:?} differs from its steps' {:?}",
                    self.usage
                );
            }
        }
        Ok(if self.any_denied {
            TurnStatus::Denied
        } else {
            TurnStatus::Completed
        })
    }
}

/// How a denied call without a tool-use id is remembered.
fn denial_key(tool: &str, input: &Value) -> String {
    format!("{tool}\u{0}{input}")
}

/// The text of a `tool_result` content (a string or text blocks).
fn result_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_string(),
    }
}

/// Answers a control request from claude: permission prompts go to a
/// person (unless the tool needs no approval); anything else is declined.
async fn answer_control_request(line: &Value, cx: &TurnContext<'_>, turn: &mut TurnState) -> Value {
    let request_id = line["request_id"].clone();
    let request = &line["request"];
    if request["subtype"] != "can_use_tool" {
        return json!({
            "type": "control_response",
            "response": {
                "subtype": "error",
                "request_id": request_id,
                "error": format!("the Karta host does not handle `{}` requests", request["subtype"].as_str().unwrap_or("?")),
            },
        });
    }
    let tool = karta_tool(request["tool_name"].as_str().unwrap_or_default()).to_owned();
    let input = request["input"].clone();
    let response = match cx.approve(&tool, &input).await {
        Ok(()) => json!({ "behavior": "allow", "updatedInput": input }),
        Err(why) => {
            turn.any_denied = true;
            turn.denied.insert(match request["tool_use_id"].as_str() {
                Some(id) => id.to_owned(),
                None => denial_key(&tool, &input),
            });
            json!({ "behavior": "deny", "message": format!("Tool call denied: {why}.") })
        }
    };
    json!({
        "type": "control_response",
        "response": { "subtype": "success", "request_id": request_id, "response": response },
    })
}

impl Harness for ClaudeCodeHarness {
    fn name(&self) -> &'static str {
        "claude_code"
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
                let mut claude = self.start(&request).await?;
                let began = Instant::now();
                claude.warm_up().await?;
                if app_has_no_hooks(&request.session.workspace) {
                    claude.warm_up_conversation(&request.session.home).await?;
                }
                Ok::<_, TurnFailure>(Prestarted::new(claude).warmed_up(began.elapsed()))
            };
            Some(warmed.await.map_err(|f| f.message().to_owned()))
        })
    }

    fn adopt(&self, prestarted: Prestarted, session: &SessionInfo) -> Result<(), Prestarted> {
        let claude = prestarted.take::<ClaudeProcess>()?;
        match self.sessions.adopt(&session.id, claude) {
            Ok(slot) => {
                stop_when_idle(&session.id, &slot, self.config.idle_timeout);
                Ok(())
            }
            Err(claude) => Err(Prestarted::new(claude)),
        }
    }
}

#[cfg(test)]
mod home_file_tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn request(base: &Path) -> TurnRequest {
        let session = crate::test_session(base);
        TurnRequest {
            system: String::new(),
            history: Vec::new(),
            text: "hi".into(),
            thinking: false,
            model: String::new(),
            agent: None,
            session,
        }
    }

    fn harness() -> ClaudeCodeHarness {
        ClaudeCodeHarness::new(ClaudeCodeConfig {
            program: PathBuf::from("/nonexistent/claude"),
            idle_timeout: Duration::from_secs(1),
            jail: None,
            nice: None,
        })
    }

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("karta-cc-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join(".claude")).expect("mkdir");
        dir
    }

    #[test]
    fn a_lines_head_is_read_borrowed_and_a_line_it_cannot_read_goes_whole() {
        let event = r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"say \"hi\""}}"#;
        let line = format!(
            r#"{{"type":"stream_event","event":{event},"session_id":"c1","parent_tool_use_id":null,"uuid":"u"}}"#
        );
        let head: LineHead<'_> = serde_json::from_str(&line).expect("a stream_event head");
        assert_eq!(head.kind, "stream_event");
        assert!(matches!(head.kind, std::borrow::Cow::Borrowed(_)));
        assert_eq!(
            head.event.map(RawValue::get),
            Some(event),
            "the event as written"
        );
        let parsed: AnthropicEvent =
            serde_json::from_str(head.event.expect("event").get()).expect("Anthropic's");
        assert!(matches!(parsed, AnthropicEvent::ContentBlockDelta { .. }));

        let init =
            r#"{"type":"system","subtype":"init","session_id":"c1","tools":["Bash"],"model":"m"}"#;
        let head: LineHead<'_> = serde_json::from_str(init).expect("an init head");
        assert_eq!(
            (
                head.kind.as_ref(),
                head.subtype.as_deref(),
                head.session_id.as_deref()
            ),
            ("system", Some("init"), Some("c1"))
        );
        assert!(head.event.is_none());

        // Not readable as a head: the drive loop reads these whole.
        for odd in [
            r#"{"type":"result","type":"stream_event"}"#,
            r#"{"type":7}"#,
            r#"{"subtype":"init"}"#,
            r#"[1,2]"#,
        ] {
            assert!(serde_json::from_str::<LineHead<'_>>(odd).is_err(), "{odd}");
        }
    }

    #[test]
    fn a_warm_up_exchange_only_in_apps_without_hooks_or_plugins() {
        let app = scratch();
        let settings = app.join(".claude/settings.json");
        assert!(app_has_no_hooks(&app), "no settings at all");
        for (text, quiet) in [
            (r#"{"permissions": {"allow": ["Read"]}}"#, true),
            (r#"{"hooks": {}}"#, true),
            (
                r#"{"hooks": {"Stop": [{"hooks": [{"type": "command", "command": "x"}]}]}}"#,
                false,
            ),
            (r#"{"enabledPlugins": {"p@m": true}}"#, false),
            ("not json", false),
        ] {
            std::fs::write(&settings, text).expect("write");
            assert_eq!(app_has_no_hooks(&app), quiet, "{text}");
        }
        // Hooks in the local settings count too; a link is not followed
        // and counts as hooks.
        std::fs::write(&settings, "{}").expect("write");
        std::fs::write(
            app.join(".claude/settings.local.json"),
            r#"{"hooks": {"Stop": [1]}}"#,
        )
        .expect("write");
        assert!(!app_has_no_hooks(&app));
        std::fs::remove_file(app.join(".claude/settings.local.json")).expect("rm");
        let elsewhere = scratch();
        std::fs::write(elsewhere.join("empty.json"), "{}").expect("write");
        std::fs::remove_file(&settings).expect("rm");
        symlink(elsewhere.join("empty.json"), &settings).expect("link");
        assert!(!app_has_no_hooks(&app));
        std::fs::remove_dir_all(&app).ok();
        std::fs::remove_dir_all(&elsewhere).ok();
    }

    #[test]
    fn the_warm_up_transcript_is_removed_without_following_links() {
        let home = scratch();
        let project = home.join(".claude/projects/-tmp-ws");
        std::fs::create_dir_all(&project).expect("mkdir");
        std::fs::write(project.join("warm.jsonl"), "warm-up").expect("write");
        std::fs::write(project.join("other.jsonl"), "kept").expect("write");
        // A directory the process linked elsewhere holds a file of the same
        // name: it stays.
        let outside = scratch();
        std::fs::write(outside.join("warm.jsonl"), "not the home's").expect("write");
        symlink(&outside, home.join(".claude/projects/linked")).expect("link");
        forget_transcript(&home, "warm");
        forget_transcript(&home, "../other");
        assert!(!project.join("warm.jsonl").exists());
        assert!(project.join("other.jsonl").exists());
        assert!(outside.join("warm.jsonl").exists());
        std::fs::remove_dir_all(&home).ok();
        std::fs::remove_dir_all(&outside).ok();
    }

    #[test]
    fn regression_issue9_links_in_claude_home_are_replaced_not_followed() {
        let base = std::env::temp_dir().join(format!("karta-cc-{}", uuid::Uuid::new_v4().simple()));
        let request = request(&base);
        let home = &request.session.home;
        let (resume, mcp_config) = (
            resume_file(&request.session),
            mcp_config_file(&request.session),
        );
        let outside = base.join("outside");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(outside.join("secret"), "sk-ant-the-upstream-key").expect("write");
        std::fs::write(outside.join("target.json"), "untouched").expect("write");
        std::fs::write(outside.join("claude.json"), r#"{"mine": true}"#).expect("write");
        // What the process could leave in its HOME for the next start.
        symlink(outside.join("secret"), home.join(&resume)).expect("link");
        symlink(outside.join("secret"), home.join(LEGACY_RESUME_FILE)).expect("link");
        symlink("../../outside/target.json", home.join(&mcp_config)).expect("link");
        symlink(outside.join("claude.json"), home.join(CLAUDE_STATE_FILE)).expect("link");

        let spawn = harness().spawn_for(&request).expect("spawn");
        assert!(
            !spawn
                .args
                .iter()
                .any(|a| a.contains("sk-ant") || a == "--resume"),
            "the secret is not on the command line: {:?}",
            spawn.args
        );
        for (file, content) in [
            ("secret", "sk-ant-the-upstream-key"),
            ("target.json", "untouched"),
            ("claude.json", r#"{"mine": true}"#),
        ] {
            assert_eq!(
                std::fs::read_to_string(outside.join(file)).expect("read"),
                content,
                "{file} outside the home is unchanged"
            );
        }
        for file in [mcp_config.as_str(), CLAUDE_STATE_FILE] {
            assert!(
                std::fs::symlink_metadata(home.join(file))
                    .expect("meta")
                    .is_file(),
                "{file} is now a real file"
            );
        }
        let mcp: Value =
            serde_json::from_slice(&std::fs::read(home.join(&mcp_config)).expect("read"))
                .expect("json");
        assert_eq!(
            mcp["mcpServers"][MCP_SERVER_NAME]["url"],
            request.session.mcp_url
        );

        // A FIFO, or text that is not an id, is not taken either; a plain
        // id is, and remembering replaces a link rather than writing
        // through it.
        std::fs::remove_file(home.join(&resume)).expect("rm");
        let fifo = std::process::Command::new("mkfifo")
            .arg(home.join(&resume))
            .status()
            .expect("mkfifo");
        assert!(fifo.success());
        assert_eq!(remembered(home, &resume), None);
        std::fs::remove_file(home.join(&resume)).expect("rm");
        std::fs::write(home.join(&resume), "x --dangerously-skip-permissions").expect("write");
        assert_eq!(remembered(home, &resume), None);
        std::fs::remove_file(home.join(&resume)).expect("rm");
        symlink(outside.join("secret"), home.join(&resume)).expect("link");
        remember(home, &resume, "0b5c7c2e-1111-4222-8333-944445555666");
        assert_eq!(
            std::fs::read_to_string(outside.join("secret")).expect("read"),
            "sk-ant-the-upstream-key"
        );
        let spawn = harness().spawn_for(&request).expect("spawn");
        assert!(
            spawn
                .args
                .windows(2)
                .any(|w| w[0] == "--resume" && w[1] == "0b5c7c2e-1111-4222-8333-944445555666"),
            "{:?}",
            spawn.args
        );
        std::fs::remove_dir_all(&base).expect("cleanup");
    }

    /// The `--mcp-config` and `--resume` arguments of `spawn`.
    fn mcp_config_and_resume(spawn: &Spawn) -> (String, Option<String>) {
        let after = |flag: &str| {
            spawn
                .args
                .windows(2)
                .find(|w| w[0] == flag)
                .map(|w| w[1].clone())
        };
        (
            after("--mcp-config").expect("--mcp-config"),
            after("--resume"),
        )
    }

    #[test]
    fn sessions_sharing_a_home_keep_their_own_mcp_config_and_conversation() {
        let base = std::env::temp_dir().join(format!("karta-cc-{}", uuid::Uuid::new_v4().simple()));
        // Two sessions of one end user: one HOME, their own workspaces and
        // MCP tokens.
        let first = request(&base);
        let mut second = first.clone();
        second.session.id = "s2".into();
        second.session.workspace = base.join("workspaces/s2");
        second.session.mcp_url = "http://127.0.0.1:2/mcp/other-token".into();
        std::fs::create_dir_all(&second.session.workspace).expect("mkdir");
        let home = first.session.home.clone();

        let one = harness().spawn_for(&first).expect("spawn");
        let two = harness().spawn_for(&second).expect("spawn");
        let (config_one, resume_one) = mcp_config_and_resume(&one);
        let (config_two, resume_two) = mcp_config_and_resume(&two);
        assert_ne!(config_one, config_two, "one MCP config per session");
        assert_eq!((resume_one, resume_two), (None, None));
        for (config, session) in [
            (&config_one, &first.session),
            (&config_two, &second.session),
        ] {
            assert_eq!(Path::new(config).parent(), Some(home.as_path()));
            let mcp: Value =
                serde_json::from_slice(&std::fs::read(config).expect("read")).expect("json");
            assert_eq!(
                mcp["mcpServers"][MCP_SERVER_NAME]["url"], session.mcp_url,
                "{config} names its own session's MCP token"
            );
        }

        // Each remembers and resumes its own conversation.
        remember(&home, &resume_file(&first.session), "conversation-one");
        remember(&home, &resume_file(&second.session), "conversation-two");
        assert_ne!(resume_file(&first.session), resume_file(&second.session));
        let (_, resume_one) = mcp_config_and_resume(&harness().spawn_for(&first).expect("spawn"));
        let (_, resume_two) = mcp_config_and_resume(&harness().spawn_for(&second).expect("spawn"));
        assert_eq!(resume_one.as_deref(), Some("conversation-one"));
        assert_eq!(resume_two.as_deref(), Some("conversation-two"));

        // Forgetting one leaves the other's.
        forget_conversation(&first.session);
        assert_eq!(remembered_conversation(&first.session), None);
        assert_eq!(
            remembered_conversation(&second.session).as_deref(),
            Some("conversation-two")
        );
        std::fs::remove_dir_all(&base).expect("cleanup");
    }

    #[test]
    fn a_conversation_remembered_under_the_old_name_is_resumed_then_forgotten() {
        let base = std::env::temp_dir().join(format!("karta-cc-{}", uuid::Uuid::new_v4().simple()));
        let request = request(&base);
        let home = &request.session.home;
        // A session whose HOME was its own, from before homes were shared.
        std::fs::write(home.join(LEGACY_RESUME_FILE), "old-conversation").expect("write");
        let (_, resume) = mcp_config_and_resume(&harness().spawn_for(&request).expect("spawn"));
        assert_eq!(resume.as_deref(), Some("old-conversation"));
        // Its own file wins once written.
        remember(home, &resume_file(&request.session), "new-conversation");
        assert_eq!(
            remembered_conversation(&request.session).as_deref(),
            Some("new-conversation")
        );
        // A forgotten conversation does not come back through the old name.
        forget_conversation(&request.session);
        assert_eq!(remembered_conversation(&request.session), None);
        std::fs::remove_dir_all(&base).expect("cleanup");
    }
}
