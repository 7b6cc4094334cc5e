//! The Claude Code harness: the real `claude` CLI, one process per live
//! session, driven over stream-json.
//!
//! The process is started on a session's first turn with
//!
//! ```text
//! claude -p --input-format stream-json --output-format stream-json --verbose
//!        --include-partial-messages --permission-prompt-tool stdio
//!        --mcp-config <home>/karta-mcp-<session id>.json --strict-mcp-config
//!        --tools default --disallowedTools WebFetch,WebSearch
//!          (or, with the harness's own tools off: --tools <KEPT_BUILTIN_TOOLS>)
//!        [--permission-mode bypassPermissions] --allowedTools mcp__karta__<tool>,…
//!        [--agent A] [--model M] [--resume <claude session id>]
//! ```
//!
//! in the session workspace (which the host populated with the app's
//! `CLAUDE.md` and `.claude/`), with a cleared environment: a `HOME` (where
//! the folder is marked trusted, so project settings apply),
//! `ANTHROPIC_BASE_URL` = the host's gateway and `ANTHROPIC_API_KEY` = the
//! session's gateway key. Its tools: the session's plugin tools, reached
//! over MCP (`mcp__karta__<tool>`); the app's own MCP servers (stdio ones
//! run from the app's read-only folder inside the jail); and Claude Code's
//! own — `Bash`, `Read`, `Write`, … acting on the workspace inside the jail,
//! less the web ones ([`OFFLINE_TOOLS`]: the jail's only ways out are the
//! gateway and the MCP server) — unless the operator turned the harness's
//! own tools off ([`crate::HarnessAccess::builtin_tools`]), which leaves
//! only its non-acting ones ([`KEPT_BUILTIN_TOOLS`]: sub-agents, skills,
//! to-dos). An autonomous app (`runtime.permission_mode = "autonomous"`)
//! runs with `--permission-mode bypassPermissions`; otherwise `claude` asks
//! the host (`--permission-prompt-tool stdio`) for what the app's settings
//! do not allow.
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
//!
//! | file | what it does |
//! | --- | --- |
//! | `mod.rs` | the harness: the command line, starting a process, a turn's drive loop |
//! | `process.rs` | one running `claude`: its lines in and out, its warm-up |
//! | `translate.rs` | its lines as protocol events (the table above) |
//! | `home.rs` | what it finds in its `HOME` and workspace, and its environment |

mod home;
mod process;
mod translate;

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
    new_message_id, outcome, remember, remembered, slot_harness_methods, slot_process,
    stop_when_idle,
};
use crate::{
    BoxFuture, ErrorCode, Event, Harness, Prestarted, SessionInfo, TurnContext, TurnOutcome,
    TurnRequest, TurnStatus, Usage,
};
use home::{
    app_has_no_hooks, claude_env, forget_conversation, forget_transcript, mcp_config_file,
    mcp_config_json, remembered_conversation, resume_file, trust_workspace,
};
use process::{ClaudeProcess, user_line};
use translate::{TurnState, answer_control_request};

/// The name the host's MCP server has in Claude Code's config; its tools
/// are `mcp__karta__<tool>`.
pub const MCP_SERVER_NAME: &str = "karta";

/// Claude Code's own tools that stay on when the operator turned the
/// harness's own acting tools off ([`crate::HarnessAccess::builtin_tools`]):
/// they act only through the model (sub-agents, skills, to-do lists), never
/// on the machine.
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

impl Harness for ClaudeCodeHarness {
    fn name(&self) -> &'static str {
        "claude_code"
    }

    slot_harness_methods!();

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
mod tests;
