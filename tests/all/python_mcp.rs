//! Python MCP servers compiled to components (issue 10 item 4): the example
//! app's `sre_tools` server over the host's MCP route answers exactly as the
//! same script run as a process; limits hold (a spinning tool runs out of
//! fuel, a hungry one out of memory); a server importing a native module
//! fails to compile with a clear reason and is left to run as a process.
//!
//! Needs componentize-py (`scripts/install-componentize-py.sh`, run here on
//! first use); the tests skip, saying why, only when it cannot be installed.
//! Components and their native code are cached in `target/pymcp-test-cache`,
//! so only the first run compiles (~30 s a server).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use karta_host::plugin::ErrorKind;
use karta_host::plugin::python_mcp::{
    self, DEFAULT_LIMITS, PyCompileError, PythonMcpConfig, ServerCallOptions,
};
use karta_host::plugin::{Limits, PluginRuntime};
use serde_json::{Value, json};

use crate::sessions::{Server, send};
use crate::support;

fn example() -> PathBuf {
    support::root().join("examples/incident-investigator")
}

/// Shared by the tests and kept between runs: compiling is the slow part.
fn cache_dir() -> PathBuf {
    support::root().join("target/pymcp-test-cache")
}

/// Whether componentize-py is there, installing it once through the
/// project's script; the reason when it cannot be.
fn componentize_py() -> Result<(), String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            if python_mcp::locate_componentize_py().is_ok() {
                return Ok(());
            }
            let script = support::root().join("scripts/install-componentize-py.sh");
            let output = Command::new(&script)
                .output()
                .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
            if !output.status.success() {
                return Err(format!(
                    "scripts/install-componentize-py.sh failed: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
            python_mcp::locate_componentize_py()
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .clone()
}

macro_rules! require_componentize_py {
    () => {
        if let Err(reason) = componentize_py() {
            eprintln!("SKIPPED: componentize-py cannot be installed: {reason}");
            return;
        }
    };
}

/// Runs `python3 tools/sre_tools.py` in the app as a plain process with
/// `requests` on stdin; returns its response lines.
fn run_as_process(app: &Path, requests: &[Value]) -> Vec<Value> {
    let mut child = Command::new("python3")
        .arg("tools/sre_tools.py")
        .current_dir(app)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut stdin = child.stdin.take().expect("stdin");
    for request in requests {
        writeln!(stdin, "{request}").expect("write");
    }
    drop(stdin);
    let output = child.wait_with_output().expect("exits");
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn request(id: u64, method: &str, params: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })
}

/// A response's `result` without Karta's `_meta`.
fn without_meta(mut response: Value) -> Value {
    if let Some(result) = response.get_mut("result").and_then(Value::as_object_mut) {
        result.remove("_meta");
    }
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_server_over_http_answers_as_the_process_does() {
    require_componentize_py!();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::try_start_with(&example(), data.path(), |config| {
        config.python_mcp = PythonMcpConfig {
            compile: true,
            cache_dir: Some(cache_dir()),
        };
    })
    .await
    .expect("host starts");
    let sessions = server.host.sessions();
    assert_eq!(sessions.compiled_mcp_servers(), ["sre_tools"]);
    let (_, session) = server.post("/v1/sessions", json!({})).await;
    let id = session["id"].as_str().expect("id");
    let token = sessions.issue_mcp_token(id).expect("token");
    let url = sessions
        .compiled_mcp_server_url(&token, "sre_tools")
        .expect("compiled");
    assert_eq!(
        url,
        format!("{}/mcp/{token}/servers/sre_tools", server.host.mcp_url())
    );
    assert_eq!(sessions.compiled_mcp_server_url(&token, "nope"), None);

    // The same conversation a harness has with the stdio server.
    let init = request(
        1,
        "initialize",
        json!({ "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": { "name": "t", "version": "0" } }),
    );
    let list = request(2, "tools/list", json!({}));
    let calls = [
        request(
            3,
            "tools/call",
            json!({ "name": "error_rate", "arguments": { "service": "checkout" } }),
        ),
        request(
            4,
            "tools/call",
            json!({ "name": "top_errors", "arguments": { "limit": 3 } }),
        ),
        request(
            5,
            "tools/call",
            json!({ "name": "top_errors", "arguments": { "service": "auth" } }),
        ),
        request(
            6,
            "tools/call",
            json!({ "name": "slow_requests", "arguments": { "threshold_ms": 3000, "limit": 4 } }),
        ),
        request(
            7,
            "tools/call",
            json!({ "name": "slow_requests", "arguments": {} }),
        ),
        request(
            8,
            "tools/call",
            json!({ "name": "no_such_tool", "arguments": {} }),
        ),
    ];
    let mut all = vec![
        init.clone(),
        json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }),
        list.clone(),
    ];
    all.extend(calls.iter().cloned());
    let expected = run_as_process(&example(), &all);
    assert_eq!(expected.len(), 2 + calls.len());

    let (status, answer) = send("POST", &url, init).await;
    assert_eq!(status, 200);
    assert_eq!(answer, expected[0], "initialize");
    let (status, _) = send(
        "POST",
        &url,
        json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }),
    )
    .await;
    assert_eq!(status, 202);
    let (_, answer) = send("POST", &url, list).await;
    assert_eq!(answer, expected[1], "tools/list");
    assert_eq!(answer["result"]["tools"].as_array().map(Vec::len), Some(3));

    for (call, expected) in calls.iter().zip(&expected[2..]) {
        let (status, answer) = send("POST", &url, call.clone()).await;
        assert_eq!(status, 200);
        if answer.get("result").is_some() {
            let fuel = answer["result"]["_meta"]["karta/fuel"]
                .as_u64()
                .unwrap_or(0);
            assert!(fuel > 1_000_000, "fuel is reported: {answer}");
        }
        assert_eq!(&without_meta(answer), expected, "{call}");
    }
    // The unknown tool is the server's own JSON-RPC error, passed on.
    assert_eq!(
        expected.last().map(|r| r["error"]["code"].clone()),
        Some(json!(-32603))
    );
    // Each call is counted as a compiled MCP server's, with its outcome.
    let failed = expected[2..]
        .iter()
        .filter(|r| r.get("error").is_some() || r["result"]["isError"] == true)
        .count();
    let metrics = crate::sessions::get_text(&server.url("/metrics")).await;
    for (outcome, count) in [("ok", calls.len() - failed), ("tool_error", failed)] {
        let line =
            format!("karta_tool_calls_total{{kind=\"mcp_server\",outcome=\"{outcome}\"}} {count}");
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }

    // Unknown servers and tokens learn nothing.
    let base = format!("{}/mcp/{token}/servers", server.host.mcp_url());
    let (status, _) = send(
        "POST",
        &format!("{base}/nope"),
        request(1, "tools/list", json!({})),
    )
    .await;
    assert_eq!(status, 404);
    let bad = format!(
        "{}/mcp/not-a-token/servers/sre_tools",
        server.host.mcp_url()
    );
    let (status, _) = send("POST", &bad, request(1, "tools/list", json!({}))).await;
    assert_eq!(status, 404);
    server.host.shutdown().await;
}

/// An app folder with `tools/server.py`: a stdlib MCP server whose tools
/// misbehave on request.
fn hostile_app() -> tempfile::TempDir {
    let app = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(app.path().join("tools")).expect("mkdir");
    std::fs::write(
        app.path().join("tools/server.py"),
        r#"import json, sys
CALLS = 0
TOOLS = [{"name": n, "description": n, "inputSchema": {"type": "object"}}
         for n in ("spin", "hog", "count", "sleep")]

def call(name):
    global CALLS
    CALLS += 1
    if name == "spin":
        while True:
            pass
    if name == "hog":
        chunks = []
        while True:
            chunks.append(bytearray(16 * 1024 * 1024))
    if name == "sleep":
        import time
        time.sleep(60)
    return {"calls": CALLS}

for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m:
        continue
    if m["method"] == "initialize":
        r = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
             "serverInfo": {"name": "hostile", "version": "0"}}
    elif m["method"] == "tools/list":
        r = {"tools": TOOLS}
    else:
        r = {"content": [{"type": "text", "text": json.dumps(call(m["params"]["name"]))}]}
    print(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": r}), flush=True)
"#,
    )
    .expect("write");
    app
}

fn runtime() -> &'static PluginRuntime {
    support::runtime()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_server_limits_hold_and_calls_are_isolated() {
    require_componentize_py!();
    let app = hostile_app();
    let compiled = python_mcp::compile(
        app.path(),
        "python3",
        &["tools/server.py".into()],
        &cache_dir(),
    )
    .unwrap_or_else(|e| panic!("compiles: {e}"));
    let limits = Limits {
        fuel: 3_000_000_000,
        memory_mib: 128,
        timeout_ms: 2_000,
        ..DEFAULT_LIMITS
    };
    let server = runtime()
        .load_python_server("hostile", &compiled, app.path(), limits)
        .await
        .unwrap_or_else(|e| panic!("loads: {e}"));
    assert_eq!(server.tools().len(), 4);
    let options = ServerCallOptions::default();

    // A fresh instance per call: the global counter is 1 every time.
    for _ in 0..2 {
        let outcome = server
            .call_tool("count", &json!({}), &options)
            .await
            .unwrap_or_else(|e| panic!("count: {e}"));
        assert_eq!(
            outcome.response["result"]["content"][0]["text"],
            r#"{"calls": 1}"#
        );
        assert!(outcome.fuel_consumed > 0 && outcome.fuel_consumed < limits.fuel);
    }

    let spin = server.call_tool("spin", &json!({}), &options).await;
    let failure = spin.expect_err("a spinning tool does not finish");
    assert_eq!(failure.kind, ErrorKind::OutOfFuel, "{failure}");
    assert_eq!(failure.fuel_consumed, limits.fuel);

    // A caller's lower cap (the org's remaining budget) wins.
    let capped = ServerCallOptions {
        fuel_cap: Some(50_000_000),
        ..Default::default()
    };
    let failure = server
        .call_tool("spin", &json!({}), &capped)
        .await
        .expect_err("capped");
    assert_eq!(failure.kind, ErrorKind::OutOfFuel);
    assert_eq!(failure.fuel_consumed, 50_000_000);

    let failure = server
        .call_tool("hog", &json!({}), &options)
        .await
        .expect_err("a hungry tool does not finish");
    assert_eq!(failure.kind, ErrorKind::OutOfMemory, "{failure}");

    let failure = server
        .call_tool("sleep", &json!({}), &options)
        .await
        .expect_err("a sleeping tool does not finish");
    assert_eq!(failure.kind, ErrorKind::Timeout, "{failure}");

    // The server is still fine after all that.
    assert!(
        server
            .call_tool("count", &json!({}), &options)
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_that_cannot_be_compiled_say_why_and_fall_back() {
    require_componentize_py!();
    let app = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(app.path().join("tools")).expect("mkdir");
    std::fs::write(
        app.path().join("tools/native.py"),
        "import json, sys\nimport numpy\nfor line in sys.stdin:\n    pass\n",
    )
    .expect("write");
    let error = python_mcp::compile(
        app.path(),
        "python3",
        &["tools/native.py".into()],
        &cache_dir(),
    )
    .expect_err("numpy is not in the standard library");
    assert!(
        matches!(&error, PyCompileError::MissingModule(m) if m.contains("`numpy`") && m.contains("tools/native.py")),
        "{error}"
    );

    let error = python_mcp::compile(app.path(), "node", &["server.js".into()], &cache_dir())
        .expect_err("not python");
    assert!(matches!(error, PyCompileError::NotPython(_)), "{error}");
    let error = python_mcp::compile(
        app.path(),
        "python3",
        &["tools/missing.py".into()],
        &cache_dir(),
    )
    .expect_err("no such script");
    assert!(matches!(error, PyCompileError::Script(_)), "{error}");

    // In a host: the app still starts; the server is listed as a process,
    // with the reason.
    std::fs::write(app.path().join("CLAUDE.md"), "Investigate.").expect("write");
    std::fs::write(
        app.path().join(".mcp.json"),
        r#"{"mcpServers": {"native": {"command": "python3", "args": ["tools/native.py"]}}}"#,
    )
    .expect("write");
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::try_start_with(app.path(), data.path(), |config| {
        config.python_mcp.cache_dir = Some(cache_dir());
    })
    .await
    .expect("host starts");
    let sessions = server.host.sessions();
    assert!(sessions.compiled_mcp_servers().is_empty());
    let reason = sessions
        .python_servers()
        .and_then(|s| s.fallbacks().get("native").cloned())
        .expect("a reason");
    assert!(reason.contains("numpy"), "{reason}");
    server.host.shutdown().await;
}
