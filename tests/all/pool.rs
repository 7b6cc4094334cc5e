//! The warm pool (issue 14) with the real harness binaries: a new session's
//! first turn runs on a pre-started, jailed process that it claims; the
//! process's workspace and credentials become the session's and nobody
//! else's; the pool refills, drains on shutdown, and `--pool 0` starts
//! nothing. They need root for the jail (`support::can_jail`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use karta_host::app::HarnessKind;
use karta_host::session::PoolStats;
use serde_json::{Value, json};

use crate::harnesses::binaries;
use crate::sessions::{Server, get_text, new_session, send, sse, support_bot};

async fn start(kind: HarnessKind, size: usize) -> (Server, tempfile::TempDir, tempfile::TempDir) {
    let app = support_bot();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::try_start_with(app.path(), data.path(), |config| {
        config.harness = Some(kind);
        config.harness_binaries = binaries();
        config.harness_idle_timeout = Duration::from_secs(1);
        config.pool = karta_host::session::PoolConfig {
            size,
            memory_bytes: 4 << 30,
        };
    })
    .await
    .expect("host starts");
    (server, app, data)
}

fn stats(server: &Server) -> PoolStats {
    server.host.sessions().pool_stats().expect("a pool")
}

/// Waits until the pool holds `idle` idle processes (a start takes seconds;
/// the bound is only there so a broken pool fails the test).
async fn wait_idle(server: &Server, idle: usize) -> PoolStats {
    for _ in 0..600 {
        let now = stats(server);
        if now.idle >= idle {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the pool never held {idle} idle processes: {:?}",
        stats(server)
    );
}

async fn turn(server: &Server, id: &str, text: &str) -> Vec<Value> {
    let url = server.url(&format!("/v1/sessions/{id}/messages"));
    sse(
        "POST",
        &url,
        Some(json!({ "text": text, "stream": true })),
        &[],
        usize::MAX,
    )
    .await
}

fn text_of(events: &[Value]) -> String {
    events
        .iter()
        .filter(|e| e["type"] == "text")
        .filter_map(|e| e["data"]["part"]["text"].as_str())
        .collect()
}

/// Whether `pid` is gone (or a zombie).
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.contains(") Z ") || stat.contains(") X "),
        Err(_) => true,
    }
}

async fn wait_dead(pid: u32) {
    for _ in 0..600 {
        if dead(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("process {pid} is still alive");
}

/// The MCP token in a process's environment or config: read from its
/// `--mcp-config` file (Claude Code) in `home`.
fn mcp_token_in(home: &Path) -> String {
    for entry in std::fs::read_dir(home).expect("home").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("karta-mcp-") && name.ends_with(".json") {
            let config: Value =
                serde_json::from_slice(&std::fs::read(entry.path()).expect("read")).expect("json");
            let url = config["mcpServers"]["karta"]["url"]
                .as_str()
                .expect("url")
                .to_owned();
            return url.rsplit('/').next().expect("token").to_owned();
        }
    }
    panic!("no MCP config in {}", home.display());
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// The slot directories of the pool in `data`.
fn slot_dirs(data: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data.join("pool"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect()
}

/// Every idle process finished its warm-up before the pool offered it,
/// and no warm-up reached a model or ran a tool: the gateway answered a
/// slot's warm-up exchange itself (recording and metering nothing), and no
/// tool call is counted.
async fn assert_warmed_up_quietly(server: &Server, data: &Path, stats: &PoolStats) {
    assert_eq!(stats.idle_warm_up.len(), stats.idle, "{stats:?}");
    assert!(
        stats.idle_warm_up.iter().all(Option::is_some),
        "offered before its warm-up: {stats:?}"
    );
    let gateway = server.host.sessions().gateway();
    assert_eq!(gateway.recent_requests(), Vec::<Value>::new());
    for slot in slot_dirs(data) {
        let slot = slot
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert_eq!(gateway.usage(&slot).requests, 0, "{slot}");
    }
    let metrics = get_text(&server.url("/metrics")).await;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("karta_tool_calls_total{") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

/// The model requests of sessions carry nothing of a pooled process's
/// warm-up exchange (which the gateway answered without recording it).
fn assert_no_warm_up_in_requests(server: &Server) {
    let requests = server.host.sessions().gateway().recent_requests();
    assert!(!requests.is_empty());
    for request in &requests {
        assert!(!request.to_string().contains("Karta warm-up"), "{request}");
    }
}

async fn mcp_call(server: &Server, token: &str, method: &str, params: Value) -> (u16, Value) {
    let mcp = server.host.mcp_url().to_owned();
    send(
        "POST",
        &format!("{mcp}/mcp/{token}"),
        json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_claude_code_sessions_claim_their_own_pooled_process() {
    if !crate::support::can_jail("the warm pool test") {
        return;
    }
    let (server, _app, data) = start(HarnessKind::ClaudeCode, 2).await;
    let before = wait_idle(&server, 2).await;
    assert_eq!(before.claimed, 0);
    assert_eq!(before.idle_pids.len(), 2);
    assert!(before.idle_rss_bytes.iter().all(|b| *b > 0), "{before:?}");
    assert_warmed_up_quietly(&server, data.path(), &before).await;
    let sessions = server.host.sessions().clone();

    // An idle slot's token lists the main agent's tools but runs none: it
    // is no session's yet.
    let slots = slot_dirs(data.path());
    assert_eq!(slots.len(), 2, "{slots:?}");
    let idle_token = mcp_token_in(&slots[0].join("home"));
    let (status, listed) = mcp_call(&server, &idle_token, "tools/list", json!({})).await;
    assert_eq!(status, 200, "{listed}");
    assert!(
        !listed["result"]["tools"]
            .as_array()
            .expect("tools")
            .is_empty()
    );
    let (_, refused) = mcp_call(
        &server,
        &idle_token,
        "tools/call",
        json!({ "name": "convert_units", "arguments": {} }),
    )
    .await;
    assert!(refused.get("error").is_some(), "{refused}");

    // The first session's first turn runs on a pooled process.
    let a = new_session(&server, json!({})).await;
    let first = turn(&server, &a, "hello there").await;
    assert_eq!(
        first.last().expect("events")["data"]["status"],
        "completed",
        "{first:#?}"
    );
    assert!(text_of(&first).contains("You said: \"hello there\"."));
    // The process's warm-up exchanged a message and cleared it: the
    // session's model request carries nothing of it, and the session's
    // HOME holds no transcript of it.
    assert_no_warm_up_in_requests(&server);
    let home_a = data.path().join("homes").join(&a);
    let transcripts = walk(&home_a.join(".claude/projects"));
    assert!(!transcripts.is_empty());
    for transcript in transcripts {
        let text = std::fs::read_to_string(&transcript).expect("read");
        assert!(!text.contains("Karta warm-up"), "{}", transcript.display());
    }
    let pid_a = sessions.harness_process_id(&a).expect("a's process");
    assert!(
        before.idle_pids.contains(&pid_a),
        "claimed, not spawned: {pid_a} {before:?}"
    );
    assert_eq!(stats(&server).claimed, 1);

    // Its workspace is the session's: a file the process writes in its
    // working directory is in the session's workspace, and the app's files
    // are there.
    let workspace = data.path().join("workspaces").join(&a);
    std::fs::write(format!("/proc/{pid_a}/cwd/written-by-a.txt"), "a").expect("write via cwd");
    assert!(workspace.join("written-by-a.txt").exists());
    assert!(workspace.join("CLAUDE.md").exists());
    // Its credentials are the session's now: the slot's token runs tools
    // for the session (and no one else).
    let token_a = mcp_token_in(&home_a);
    assert_eq!(
        sessions.session_for_mcp_token(&token_a).as_deref(),
        Some(a.as_str())
    );

    // The pool refills, and a second session claims another process.
    let refilled = wait_idle(&server, 2).await;
    assert!(
        !refilled.idle_pids.contains(&pid_a),
        "a claimed process is never offered again"
    );
    let b = new_session(&server, json!({})).await;
    let first_b = turn(&server, &b, "hello b").await;
    assert!(
        text_of(&first_b).contains("You said: \"hello b\"."),
        "{first_b:#?}"
    );
    let pid_b = sessions.harness_process_id(&b).expect("b's process");
    assert_ne!(pid_a, pid_b);
    assert!(refilled.idle_pids.contains(&pid_b));
    assert_eq!(stats(&server).claimed, 2);
    let token_b = mcp_token_in(&data.path().join("homes").join(&b));
    assert_ne!(token_a, token_b);
    assert_eq!(
        sessions.session_for_mcp_token(&token_b).as_deref(),
        Some(b.as_str())
    );

    // Escape: b's process sees neither a's workspace nor a pooled slot's.
    let root_b = PathBuf::from(format!("/proc/{pid_b}/root"));
    let inside = |p: &Path| root_b.join(p.strip_prefix("/").expect("absolute"));
    assert!(!inside(&workspace).exists(), "b sees a's workspace");
    assert!(!inside(&home_a).exists(), "b sees a's home");
    for slot in slot_dirs(data.path()) {
        assert!(
            !inside(&slot).exists(),
            "b sees the slot {}",
            slot.display()
        );
    }
    let idle_now = stats(&server).idle_pids;
    for pid in &idle_now {
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let sees = |p: &Path| root.join(p.strip_prefix("/").expect("absolute")).exists();
        assert!(
            !sees(&workspace),
            "a pooled process sees an earlier session's files"
        );
        assert!(!sees(&data.path().join("workspaces").join(&b)));
    }

    // The conversation survives its process: after the idle stop, a new
    // process resumes it from the session's own workspace path.
    wait_dead(pid_a).await;
    let again = turn(&server, &a, "and again").await;
    assert!(
        text_of(&again).contains("Earlier you said: \"hello there\"."),
        "{again:#?}"
    );

    // Shutdown leaves no process behind: not the pooled ones, not the
    // sessions'.
    let mut pids = stats(&server).idle_pids;
    pids.extend(sessions.harness_process_id(&a));
    pids.extend(sessions.harness_process_id(&b));
    drop(sessions);
    server.stop().await;
    for pid in pids {
        wait_dead(pid).await;
    }
    assert!(
        slot_dirs(data.path()).is_empty(),
        "the slots' directories are gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_opencode_first_turn_runs_on_a_pooled_server() {
    if !crate::support::can_jail("the warm pool test") {
        return;
    }
    let (server, _app, data) = start(HarnessKind::Opencode, 1).await;
    let before = wait_idle(&server, 1).await;
    assert_warmed_up_quietly(&server, data.path(), &before).await;
    let sessions = server.host.sessions().clone();
    let a = new_session(&server, json!({})).await;
    let first = turn(&server, &a, "hello there").await;
    assert_eq!(
        first.last().expect("events")["data"]["status"],
        "completed",
        "{first:#?}"
    );
    assert!(text_of(&first).contains("You said: \"hello there\"."));
    // The warm-up prompted in a session of its own, deleted since.
    assert_no_warm_up_in_requests(&server);
    let pid = sessions.harness_process_id(&a).expect("a server");
    assert!(before.idle_pids.contains(&pid), "claimed, not spawned");
    std::fs::write(format!("/proc/{pid}/cwd/written.txt"), "x").expect("write via cwd");
    assert!(
        data.path()
            .join("workspaces")
            .join(&a)
            .join("written.txt")
            .exists()
    );
    // The next turn is the same conversation.
    let second = turn(&server, &a, "and again").await;
    assert!(
        text_of(&second).contains("Earlier you said: \"hello there\"."),
        "{second:#?}"
    );
    let mut pids = vec![pid];
    pids.extend(wait_idle(&server, 1).await.idle_pids);
    drop(sessions);
    server.stop().await;
    for pid in pids {
        wait_dead(pid).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_zero_starts_nothing() {
    let (server, _app, data) = start(HarnessKind::ClaudeCode, 0).await;
    assert_eq!(server.host.sessions().pool_stats(), None);
    assert!(slot_dirs(data.path()).is_empty());
    server.stop().await;
}
