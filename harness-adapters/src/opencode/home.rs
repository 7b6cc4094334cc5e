//! What a session's `opencode` server is given and finds: its config (the
//! gateway as its one provider, the host's and the app's MCP servers, its
//! tools and their permissions, the app's instructions), its config and
//! cache dirs and remembered OpenCode session in a `HOME` that may be
//! shared, whether the app brings plugins, and the lock that starts the
//! servers of one `HOME` one at a time.

use super::*;

/// The lock that lets one server of `home` start at a time (see
/// `OpencodeHarness::start`). Locks of homes with no server starting are
/// dropped as the map grows.
pub(super) fn start_lock(home: &Path) -> Arc<tokio::sync::Mutex<()>> {
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

/// Where an app configures OpenCode plugins, which hook into prompts:
/// plugin directories, and config files whose `plugin` key lists packages.
pub(super) const APP_PLUGIN_DIRS: &[&str] = &[".opencode/plugin", ".opencode/plugins"];

pub(super) const APP_CONFIG_FILES: &[&str] = &[
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
pub(super) fn app_has_no_plugins(workspace: &Path) -> bool {
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
pub(super) const MAX_APP_CONFIG_BYTES: u64 = 1024 * 1024;

/// The file in `HOME` that remembered OpenCode's session id while every
/// session had a `HOME` of its own; a session's own file is
/// [`resume_file`].
pub(super) const LEGACY_RESUME_FILE: &str = "karta-opencode-session";

/// The file in `HOME` that remembers OpenCode's session id of `session`.
/// Named after the session: sessions sharing a `HOME` each continue their
/// own conversation.
pub(super) fn resume_file(session: &SessionInfo) -> String {
    format!("{LEGACY_RESUME_FILE}-{}", session.id)
}

/// `session`'s OpenCode config (`OPENCODE_CONFIG`), in its `HOME`. Named
/// after the session: it carries the session's gateway key and MCP token.
pub(super) fn config_file(session: &SessionInfo) -> String {
    format!("karta-opencode-{}.json", session.id)
}

/// `session`'s own dirs in its `HOME`: OpenCode's config dir
/// (`XDG_CONFIG_HOME`) and cache dir (`XDG_CACHE_HOME`), relative to the
/// `HOME` (see the module docs for why they are not shared).
pub(super) fn xdg_dirs(session: &SessionInfo) -> [PathBuf; 2] {
    let own = Path::new(".karta").join(&session.id);
    [own.join("config"), own.join("cache")]
}

/// OpenCode's session id remembered for `session`: in its own file, or
/// else under the name every session used while each had its own `HOME`
/// (a session from before then continues its conversation). The host never
/// writes that name in a shared `HOME`; only a server of the same end user
/// could, and it is already in their trust domain.
pub(super) fn remembered_conversation(session: &SessionInfo) -> Option<String> {
    remembered(&session.home, &resume_file(session))
        .or_else(|| remembered(&session.home, LEGACY_RESUME_FILE))
}

/// Whether `.opencode/agent(s)/<name>.md` exists in the workspace (OpenCode
/// knows the agent; the app's Claude Code agents it does not).
pub(super) fn is_opencode_agent(workspace: &std::path::Path, name: &str) -> bool {
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

/// OpenCode's config for one session: the gateway as its only provider,
/// the host's MCP server as its only tools.
pub(super) fn opencode_config(session: &SessionInfo, model: &str) -> Value {
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
pub(super) fn instructions(workspace: &Path) -> Vec<String> {
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
