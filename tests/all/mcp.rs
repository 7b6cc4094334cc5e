//! The MCP server: JSON-RPC over streamable HTTP, scoped to one session by
//! its token, running the session's tools in wasmtime.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::sessions::{Server, send, sse, support_bot};

async fn rpc(url: &str, method: &str, params: Value) -> (u16, Value) {
    send(
        "POST",
        url,
        json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_lists_and_calls_the_session_tools() {
    let app = support_bot();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(app.path(), data.path()).await;
    let (_, session) = server.post("/v1/sessions", json!({})).await;
    let id = session["id"].as_str().expect("id");
    let token = server.host.sessions().issue_mcp_token(id).expect("token");
    let url = format!("{}/mcp/{token}", server.host.mcp_url());

    let (status, init) = rpc(&url, "initialize", json!({
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": { "name": "test", "version": "0" },
    }))
    .await;
    assert_eq!(status, 200);
    assert_eq!(init["result"]["protocolVersion"], "2025-11-25");
    assert!(init["result"]["capabilities"]["tools"].is_object());
    let (status, _) = send(
        "POST",
        &url,
        json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }),
    )
    .await;
    assert_eq!(status, 202);

    let (_, list) = rpc(&url, "tools/list", json!({})).await;
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["convert", "calc", "search", "read", "write", "load_skill"]
    );
    assert_eq!(list["result"]["tools"][0]["inputSchema"]["type"], "object");

    let (_, call) = rpc(
        &url,
        "tools/call",
        json!({
            "name": "convert", "arguments": { "value": 1, "from": "kg", "to": "lb" },
        }),
    )
    .await;
    let result = &call["result"];
    assert_eq!(result["isError"], false, "{call}");
    assert_eq!(result["structuredContent"]["unit"], "lb");
    assert!(
        result["_meta"]["karta/fuel"]
            .as_u64()
            .is_some_and(|f| f > 0),
        "ran in wasmtime"
    );

    let (_, failed) = rpc(
        &url,
        "tools/call",
        json!({ "name": "calc", "arguments": { "expression": "1/" } }),
    )
    .await;
    assert_eq!(failed["result"]["isError"], true);
    assert_eq!(
        failed["result"]["structuredContent"]["error"]["kind"],
        "invalid_input"
    );

    let (_, unknown) = rpc(&url, "server/discover", json!({})).await;
    assert_eq!(unknown["error"]["code"], -32601);
    let (status, _) = rpc(
        &format!("{}/mcp/kmcp_forged", server.host.mcp_url()),
        "tools/list",
        json!({}),
    )
    .await;
    assert_eq!(status, 404, "a forged token learns nothing");

    // Deleting the session revokes its token.
    let (status, _) = server.delete(&format!("/v1/sessions/{id}")).await;
    assert_eq!(status, 204);
    let (status, _) = rpc(&url, "tools/list", json!({})).await;
    assert_eq!(status, 404);
    server.stop().await;
}

/// A served support bot, a session, its MCP endpoint and its workspace.
struct McpSession {
    server: Server,
    id: String,
    url: String,
    workspace: PathBuf,
    _dirs: [tempfile::TempDir; 2],
}

async fn session_with_mcp(approval_timeout: Duration) -> McpSession {
    let app = support_bot();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::try_start_with(app.path(), data.path(), |config| {
        config.approval_timeout = approval_timeout;
    })
    .await
    .expect("host starts");
    let (status, session) = server.post("/v1/sessions", json!({})).await;
    assert_eq!(status, 201, "{session}");
    let id = session["id"].as_str().expect("id").to_owned();
    let token = server.host.sessions().issue_mcp_token(&id).expect("token");
    McpSession {
        url: format!("{}/mcp/{token}", server.host.mcp_url()),
        workspace: data.path().join("workspaces").join(&id),
        server,
        id,
        _dirs: [app, data],
    }
}

/// An MCP `tools/call` of the files plugin's `write` (approval = "always"
/// in the support bot's karta.toml), in a task of its own: it may wait for
/// a person.
fn call_write(url: &str, path: &str) -> JoinHandle<(u16, Value)> {
    let url = url.to_owned();
    let arguments = json!({ "path": path, "content": "written over MCP" });
    tokio::spawn(async move {
        rpc(
            &url,
            "tools/call",
            json!({ "name": "write", "arguments": arguments }),
        )
        .await
    })
}

/// Starts a streamed builtin turn that stops at its own `input_required`
/// (the turn then runs, paused); returns that event.
async fn paused_turn(server: &Server, id: &str) -> Value {
    let url = server.url(&format!("/v1/sessions/{id}/messages"));
    let text = "/tool write {\"path\": \"turn.txt\", \"content\": \"from the turn\"}";
    let events = sse(
        "POST",
        &url,
        Some(json!({ "text": text, "stream": true })),
        &[],
        usize::MAX,
    )
    .await;
    let request = events.last().cloned().expect("events");
    assert_eq!(request["type"], "input_required", "{events:#?}");
    request
}

/// The session's stream after `after`: replayed, then followed until the
/// next `input_required` (or the turn's end); returns its last event.
async fn next_stop(server: &Server, id: &str, after: &Value) -> Value {
    let url = server.url(&format!("/v1/sessions/{id}/events?after={after}"));
    let events = tokio::time::timeout(
        Duration::from_secs(20),
        sse("GET", &url, None, &[], usize::MAX),
    )
    .await
    .expect("the session's stream stops");
    events.last().cloned().expect("an event")
}

/// Answers `request` in a task of its own: the answer's continuation runs
/// until the turn moves on, which here may be after later answers.
fn answer(server: &Server, id: &str, request: &Value, decision: &str) -> JoinHandle<(u16, Value)> {
    let request_id = request["data"]["request_id"].as_str().expect("request id");
    let url = server.url(&format!("/v1/sessions/{id}/inputs/{request_id}"));
    let body = json!({ "decision": decision });
    tokio::spawn(async move { send("PUT", &url, body).await })
}

async fn finished(call: JoinHandle<(u16, Value)>) -> Value {
    let (status, body) = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("the call finishes")
        .expect("the task runs");
    assert_eq!(status, 200, "{body}");
    body
}

fn assert_denied(call: &Value) {
    let result = &call["result"];
    assert_eq!(result["isError"], true, "{call}");
    assert_eq!(
        result["structuredContent"]["error"]["kind"], "denied",
        "{call}"
    );
}

fn assert_ran(call: &Value, file: &Path) {
    assert_eq!(call["result"]["isError"], false, "{call}");
    assert_eq!(
        std::fs::read_to_string(file).expect("the tool wrote its file"),
        "written over MCP"
    );
}

/// Issue 9 item 6: an approval tool called over MCP with no turn running
/// has nobody to ask, so it is denied and does not run; a tool that needs
/// no approval still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_issue9_mcp_approval_tool_without_a_turn_is_denied() {
    let McpSession {
        server,
        url,
        workspace,
        _dirs,
        ..
    } = session_with_mcp(Duration::from_secs(30)).await;
    let call = finished(call_write(&url, "note.txt")).await;
    assert_denied(&call);
    assert!(
        !workspace.join("note.txt").exists(),
        "the write ran without approval"
    );

    let (_, convert) = rpc(
        &url,
        "tools/call",
        json!({ "name": "convert", "arguments": { "value": 1, "from": "kg", "to": "lb" } }),
    )
    .await;
    assert_eq!(convert["result"]["isError"], false, "{convert}");
    server.stop().await;
}

/// Issue 9 item 6: an MCP call of an approval tool asks through the
/// session's running turn — `input_required` on the session's stream, the
/// call waiting — and runs only as the person decides: deny → not run,
/// approve_once → runs once, approve_session → runs and later calls run
/// without asking (also after the turn, since it is saved with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_issue9_mcp_approval_tool_waits_for_a_person() {
    let McpSession {
        server,
        id,
        url,
        workspace,
        _dirs,
    } = session_with_mcp(Duration::from_secs(30)).await;
    let turn_request = paused_turn(&server, &id).await;

    // Denied: the call waits for the answer, then fails as denied.
    let call = call_write(&url, "denied.txt");
    let request = next_stop(&server, &id, &turn_request["seq"]).await;
    assert_eq!(request["type"], "input_required", "{request}");
    assert_eq!(request["data"]["tool"], "write");
    assert_eq!(request["data"]["input"]["path"], "denied.txt");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!call.is_finished(), "the call waits for a person");
    assert!(!workspace.join("denied.txt").exists());
    let (status, session) = server.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(session["status"], "waiting_input", "{session}");
    let answered_deny = answer(&server, &id, &request, "deny");
    assert_denied(&finished(call).await);
    assert!(!workspace.join("denied.txt").exists(), "a denied call ran");

    // Approved once: it runs, and the next call asks again.
    let call = call_write(&url, "once.txt");
    let request = next_stop(&server, &id, &request["seq"]).await;
    assert_eq!(request["data"]["input"]["path"], "once.txt", "{request}");
    let answered_once = answer(&server, &id, &request, "approve_once");
    assert_ran(&finished(call).await, &workspace.join("once.txt"));

    let call = call_write(&url, "session.txt");
    let request = next_stop(&server, &id, &request["seq"]).await;
    assert_eq!(request["data"]["input"]["path"], "session.txt", "{request}");
    let answered_session = answer(&server, &id, &request, "approve_session");
    assert_ran(&finished(call).await, &workspace.join("session.txt"));

    // Approved for the session: no more asking.
    let last = server
        .host
        .sessions()
        .last_seq(&id)
        .await
        .expect("last seq");
    assert_ran(
        &finished(call_write(&url, "again.txt")).await,
        &workspace.join("again.txt"),
    );
    let asked = server
        .host
        .sessions()
        .events_after(&id, last)
        .expect("events")
        .iter()
        .any(|e| matches!(e.event, karta_host::Event::InputRequired(_)));
    assert!(!asked, "an approve_session answer is remembered");

    // The turn's own request, answered, ends the turn; every answer's
    // continuation ends with it.
    let (status, rest) = finished_put(answer(&server, &id, &turn_request, "deny")).await;
    assert_eq!(status, 200, "{rest}");
    let events = rest["events"].as_array().expect("events");
    assert_eq!(events.last().expect("events")["type"], "done", "{rest}");
    for answered in [answered_deny, answered_once, answered_session] {
        let (status, body) = finished_put(answered).await;
        assert_eq!(status, 200, "{body}");
    }
    assert!(
        !workspace.join("turn.txt").exists(),
        "the turn's write was denied"
    );

    // Saved with the turn: approved for the session after it too.
    assert_ran(
        &finished(call_write(&url, "after.txt")).await,
        &workspace.join("after.txt"),
    );
    server.stop().await;
}

async fn finished_put(answered: JoinHandle<(u16, Value)>) -> (u16, Value) {
    tokio::time::timeout(Duration::from_secs(20), answered)
        .await
        .expect("the answer returns")
        .expect("the task runs")
}

/// Issue 9 item 6: nobody answers an MCP call's request → denied when the
/// approval times out, never run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_issue9_mcp_approval_timeout_denies() {
    let McpSession {
        server,
        id,
        url,
        workspace,
        _dirs,
    } = session_with_mcp(Duration::from_secs(2)).await;
    let turn_request = paused_turn(&server, &id).await;
    let call = call_write(&url, "late.txt");
    let request = next_stop(&server, &id, &turn_request["seq"]).await;
    assert_eq!(request["data"]["input"]["path"], "late.txt", "{request}");
    assert_denied(&finished(call).await);
    assert!(!workspace.join("late.txt").exists(), "a timed-out call ran");
    // Too late now: the request is gone.
    let (status, _) = finished_put(answer(&server, &id, &request, "approve_once")).await;
    assert_eq!(status, 404);
    assert!(!workspace.join("late.txt").exists());
    server.stop().await;
}
