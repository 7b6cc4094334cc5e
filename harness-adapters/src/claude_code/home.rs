//! What a session's `claude` finds in its `HOME` and workspace, and how
//! it is pointed at the host: the remembered conversation (`--resume`),
//! the MCP config, the workspace marked trusted, the environment, whether
//! the app has hooks, and the warm-up's transcript removed. Every file is
//! read and written without following a link the process may have made.

use super::*;

/// The file in `HOME` that remembered Claude Code's own session id while
/// every session had a `HOME` of its own; a session's own file is
/// [`resume_file`].
pub(super) const LEGACY_RESUME_FILE: &str = "karta-claude-session";

/// The file in `HOME` that remembers Claude Code's own session id of
/// `session`, for `--resume`. Named after the session: sessions sharing a
/// `HOME` each continue their own conversation.
pub(super) fn resume_file(session: &SessionInfo) -> String {
    format!("{LEGACY_RESUME_FILE}-{}", session.id)
}

/// The file in `HOME` that names the host's MCP server to `session`'s
/// process (`--mcp-config`). Named after the session: it carries the
/// session's MCP token, and a session sharing the `HOME` must not replace
/// it with its own.
pub(super) fn mcp_config_file(session: &SessionInfo) -> String {
    format!("karta-mcp-{}.json", session.id)
}

/// Claude Code's session id remembered for `session`: in its own file, or
/// else under the name every session used while each had its own `HOME`
/// (a session from before then continues its conversation). The host never
/// writes that name in a shared `HOME`; only a harness of the same end user
/// could, and that harness is already in their trust domain.
pub(super) fn remembered_conversation(session: &SessionInfo) -> Option<String> {
    remembered(&session.home, &resume_file(session))
        .or_else(|| remembered(&session.home, LEGACY_RESUME_FILE))
}

/// Forgets `session`'s conversation under both names (a forgotten id must
/// not come back through the fallback).
pub(super) fn forget_conversation(session: &SessionInfo) {
    forget(&session.home, &resume_file(session));
    forget(&session.home, LEGACY_RESUME_FILE);
}

/// Claude Code's own state file in its `HOME`, where the workspace is
/// marked trusted.
pub(super) const CLAUDE_STATE_FILE: &str = ".claude.json";

/// The largest `.claude.json` read back (Claude Code keeps per-project
/// state there; a bigger one is started afresh rather than read whole).
const MAX_CLAUDE_STATE_BYTES: u64 = 16 * 1024 * 1024;

/// `--mcp-config`: Karta's MCP server, and the app's own servers — stdio
/// ones run from the app's read-only folder inside the jail, the others
/// reached over HTTP.
pub(super) fn mcp_config_json(session: &SessionInfo) -> Value {
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
pub(super) fn claude_env(session: &SessionInfo) -> BTreeMap<String, String> {
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
pub(super) fn trust_workspace(home: &SafeDir, workspace: &Path) -> std::io::Result<()> {
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

/// Whether the app in `workspace` configures no hooks and no plugins
/// (which may bring hooks): only then may a pooled process exchange a
/// warm-up message, because hooks (`UserPromptSubmit`, `Stop`,
/// `SessionStart` on `/clear`, …) run the app's commands, and a warm-up
/// runs nothing of the app's. A settings file that cannot be read or
/// parsed counts as having hooks. (The host copies no hooks into a
/// workspace today — it reduces an app's settings to permission rules —
/// so this is the second line: it keeps a warm-up from ever running one
/// if that changes, or for a harness given a workspace some other way.)
pub(super) fn app_has_no_hooks(workspace: &Path) -> bool {
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
pub(super) fn forget_transcript(home: &Path, conversation: &str) {
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
