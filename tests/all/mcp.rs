//! The MCP server: JSON-RPC over streamable HTTP, scoped to one session by
//! its token, running the session's tools in wasmtime.

use serde_json::{Value, json};

use crate::sessions::{Server, send, support_bot};

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
