//! The session protocol over a real socket: `karta-host` serving the
//! support-bot example on 127.0.0.1:0, driven with a plain HTTP client.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use karta_harness::sse;
use karta_host::{Host, HostConfig};
use serde_json::{Value, json};

use crate::support::{component, root};

/// A copy of `examples/support-bot` with its plugins built and copied in.
pub fn support_bot() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&root().join("examples/support-bot"), dir.path());
    for name in ["units", "files"] {
        std::fs::copy(
            component(name),
            dir.path().join(format!("plugins/{name}.wasm")),
        )
        .expect("copy plugin");
    }
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.path().extension().is_none_or(|e| e != "wasm") {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// A host serving an app on a real loopback socket.
pub struct Server {
    pub addr: SocketAddr,
    pub host: Host,
}

impl Server {
    pub async fn start(app: &Path, data: &Path) -> Self {
        Self::try_start(app, data).await.expect("host starts")
    }

    pub async fn try_start(app: &Path, data: &Path) -> Result<Self, karta_host::HostError> {
        Self::try_start_with(app, data, |_| {}).await
    }

    /// Starts a host on the builtin harness (whatever is installed here),
    /// after `configure` has had its say.
    pub async fn try_start_with(
        app: &Path,
        data: &Path,
        configure: impl FnOnce(&mut HostConfig),
    ) -> Result<Self, karta_host::HostError> {
        let mut config = HostConfig::new(app);
        config.data_dir = data.to_path_buf();
        config.approval_timeout = Duration::from_secs(30);
        config.harness = Some(karta_host::app::HarnessKind::Builtin);
        // Tests assert what reached the model.
        config.keep_model_requests = true;
        // Compiled Python MCP servers are keyed by their content: one cache
        // for the whole run, so each is compiled once, not once per test.
        config.python_mcp.cache_dir =
            Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-mcp-cache"));
        configure(&mut config);
        let host = Host::start(config).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = host.spawn_api(listener).await.expect("serve");
        Ok(Self { addr, host })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `GET path`: the status and the JSON answer.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        send("GET", &self.url(path), Value::Null).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        send("POST", &self.url(path), body).await
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        send("PUT", &self.url(path), body).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        send("DELETE", &self.url(path), Value::Null).await
    }

    /// Stops the host; its data dir can be opened again at once.
    pub async fn stop(self) {
        self.host.shutdown().await;
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Sends a request with a raw body; returns the status and the JSON answer.
pub async fn send_raw(method: &str, url: &str, body: impl Into<Bytes>) -> (u16, Value) {
    let (status, bytes) = fetch(method, url, body).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Sends a request; returns the status and the raw answer.
pub async fn fetch(method: &str, url: &str, body: impl Into<Bytes>) -> (u16, Bytes) {
    let request = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .expect("request");
    let response = client().request(request).await.expect("response");
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, bytes)
}

/// `GET url` as text (asserting 200).
pub async fn get_text(url: &str) -> String {
    let (status, bytes) = fetch("GET", url, Bytes::new()).await;
    assert_eq!(status, 200, "GET {url}");
    String::from_utf8_lossy(&bytes).into_owned()
}

pub async fn send(method: &str, url: &str, body: Value) -> (u16, Value) {
    send_raw(method, url, body.to_string()).await
}

/// Reads an SSE response until it ends, or until `limit` events; returns
/// the envelopes (and checks `id:` matches `seq`).
pub async fn sse(
    method: &str,
    url: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
    limit: usize,
) -> Vec<Value> {
    let mut builder = hyper::Request::builder().method(method).uri(url);
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let response = client()
        .request(builder.body(Full::new(Bytes::from(body))).expect("request"))
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "an SSE answer"
    );
    let mut frames = sse::body_events(response.into_body(), 16 * 1024 * 1024);
    let mut events = Vec::new();
    while events.len() < limit {
        let Some(frame) = frames.next().await else {
            break;
        };
        let frame = frame.expect("a well-formed SSE stream");
        let event: Value = sse::json_data(&frame).expect("JSON data");
        match &frame.id {
            Some(id) => assert_eq!(id, &event["seq"].to_string(), "id is the seq"),
            None => assert_eq!(event["type"], "error", "only an error frame has no id"),
        }
        events.push(event);
    }
    events
}

pub fn types(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["type"].as_str()).collect()
}

/// The text of each `text` event, in order.
fn text_deltas(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .filter(|e| e["type"] == "text")
        .filter_map(|e| e["data"]["part"]["text"].as_str())
        .collect()
}

pub async fn new_session(server: &Server, body: Value) -> String {
    let (status, session) = server.post("/v1/sessions", body).await;
    assert_eq!(status, 201, "{session}");
    session["id"].as_str().expect("id").to_owned()
}

async fn start(app: &Path) -> (Server, tempfile::TempDir) {
    let data = tempfile::tempdir().expect("tempdir");
    (Server::start(app, data.path()).await, data)
}

/// A host serving a fresh copy of the support-bot app on a fresh data dir
/// (keep the two directories as long as the server).
pub async fn support_bot_server() -> (Server, tempfile::TempDir, tempfile::TempDir) {
    let app = support_bot();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(app.path(), data.path()).await;
    (server, app, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_calls_a_plugin_in_wasmtime_and_streams_events() {
    let app = support_bot();
    let (server, _data) = start(app.path()).await;
    let id = new_session(&server, json!({ "metadata": { "customer_id": "c42" } })).await;
    let events = sse(
        "POST",
        &server.url(&format!("/v1/sessions/{id}/messages")),
        Some(json!({
            "text": "/think units first\n/tool convert {\"value\": 3, \"from\": \"mi\", \"to\": \"km\"}\n/say That is about 4.8 km.",
            "stream": true,
        })),
        &[],
        usize::MAX,
    )
    .await;
    // Text and reasoning stream as deltas; collapse runs of them to read
    // the shape of the turn.
    let mut shape: Vec<&str> = types(&events);
    shape.dedup_by(|a, b| a == b && (*a == "text" || *a == "reasoning"));
    assert_eq!(
        shape,
        [
            "step_start",
            "reasoning",
            "step_finish",
            "tool_use",
            "tool_use",
            "step_start",
            "reasoning",
            "text",
            "step_finish",
            "done"
        ]
    );
    let text_events: Vec<&Value> = events.iter().filter(|e| e["type"] == "text").collect();
    assert!(text_events.len() > 1, "text arrives in several deltas");
    let part_id = &text_events[0]["data"]["part"]["id"];
    assert!(
        text_events
            .iter()
            .all(|e| &e["data"]["part"]["id"] == part_id),
        "one part"
    );
    let text: String = text_events
        .iter()
        .filter_map(|e| e["data"]["part"]["text"].as_str())
        .collect();
    assert!(text.ends_with("That is about 4.8 km."), "{text}");
    assert!(text.starts_with("Tool convert returned: "), "{text}");

    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "seq rises by one"
    );
    let completed = &events[4]["data"];
    assert_eq!(completed["part"]["state"]["status"], "completed");
    assert_eq!(completed["part"]["state"]["output"]["value"], 4.828032);
    assert!(
        completed["fuel"].as_u64().is_some_and(|f| f > 0),
        "ran in wasmtime: {completed}"
    );
    let done = events.last().expect("events");
    assert_eq!(done["type"], "done");
    assert!(
        done["data"]["usage"]["total_tokens"]
            .as_u64()
            .is_some_and(|t| t > 0)
    );
    for event in &events {
        assert_eq!(event["source"], "karta");
        assert_eq!(event["session_id"], id.as_str());
    }

    // Found again by metadata.
    let (status, list) = server.get("/v1/sessions?customer_id=c42").await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 1);
    assert_eq!(list["sessions"][0]["id"], id.as_str());
    let (_, none) = server.get("/v1/sessions?customer_id=other").await;
    assert_eq!(none["total"], 0);
    server.stop().await;
}

/// An answer that arrives at once (the offline model sends the whole
/// stream in one chunk, ~a delta per word) reaches the client as its
/// first delta and then the rest joined, not as hundreds of events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_deltas_streams_as_its_first_delta_then_the_rest_joined() {
    let app = support_bot();
    let (server, _data) = start(app.path()).await;
    let id = new_session(&server, json!({})).await;
    let said: String = (0..300).map(|i| format!("word{i} ")).collect();
    let said = said.trim_end();
    let events = sse(
        "POST",
        &server.url(&format!("/v1/sessions/{id}/messages")),
        Some(json!({ "text": format!("/say {said}"), "stream": true })),
        &[],
        usize::MAX,
    )
    .await;
    let texts = text_deltas(&events);
    assert_eq!(texts.concat(), said, "the deltas concatenate to the answer");
    // ~150 deltas came from the model; the first went out alone, the rest
    // were held and joined (a loaded machine may split them once or twice
    // more, at 10 ms apart).
    assert!(
        texts[0].len() < 20,
        "the first delta is not held: {:?}",
        texts[0]
    );
    assert!(
        (2..10).contains(&texts.len()),
        "{} text events: {texts:?}",
        texts.len()
    );
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert_eq!(events.last().expect("events")["type"], "done");

    // The log replays what was streamed.
    let replayed = sse(
        "GET",
        &server.url(&format!("/v1/sessions/{id}/events?after=0")),
        None,
        &[],
        usize::MAX,
    )
    .await;
    assert_eq!(text_deltas(&replayed), texts);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_messages_answer_with_text_parts_and_usage() {
    let app = support_bot();
    let (server, _data) = start(app.path()).await;
    let id = new_session(&server, json!({})).await;
    let url = server.url(&format!("/v1/sessions/{id}/messages"));
    let (status, answer) = send("POST", &url, json!({ "text": "hello there" })).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["text"], "You said: \"hello there\".");
    assert_eq!(answer["session_id"], id.as_str());
    assert_eq!(answer["messages"][0]["role"], "assistant");
    assert_eq!(answer["messages"][0]["parts"][0]["text"], answer["text"]);
    assert!(
        answer["usage"]["input_tokens"]
            .as_u64()
            .is_some_and(|t| t > 0)
    );

    // A second turn remembers the first.
    let (_, answer) = send("POST", &url, json!({ "text": "again" })).await;
    assert_eq!(
        answer["text"],
        "You said: \"again\". Earlier you said: \"hello there\"."
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_replays_exactly_the_missed_events() {
    let app = support_bot();
    let (server, _data) = start(app.path()).await;
    let id = new_session(&server, json!({})).await;
    let message = json!({
        "text": "/tool calc {\"expression\": \"6*7\"}\n/say forty-two",
        "stream": true,
    });
    // Read three events, then hang up mid-turn.
    let first = sse(
        "POST",
        &server.url(&format!("/v1/sessions/{id}/messages")),
        Some(message),
        &[],
        3,
    )
    .await;
    assert_eq!(first.len(), 3);
    let last_seen = first[2]["seq"].as_u64().expect("seq");

    // The turn went on without its client; reconnecting with Last-Event-ID
    // gets the rest, each event once, ending with `done`.
    let events_url = server.url(&format!("/v1/sessions/{id}/events"));
    let rest = sse(
        "GET",
        &events_url,
        None,
        &[("last-event-id", &last_seen.to_string())],
        usize::MAX,
    )
    .await;
    let mut seqs: Vec<u64> = first
        .iter()
        .chain(&rest)
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    let all = seqs.clone();
    seqs.dedup();
    assert_eq!(seqs, all, "no duplicates");
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "no gaps");
    assert_eq!(rest.last().map(|e| e["type"].clone()), Some(json!("done")));

    // `?after=` works the same, and a client joining after the turn ended
    // still gets the terminal event.
    let tail = sse(
        "GET",
        &format!("{events_url}?after={}", all.len() - 1),
        None,
        &[],
        usize::MAX,
    )
    .await;
    assert_eq!(types(&tail), ["done"]);
    let everything = sse("GET", &events_url, None, &[], usize::MAX).await;
    assert_eq!(everything.len(), all.len());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_are_attributed() {
    let app = support_bot();
    let (server, _data) = start(app.path()).await;
    let id = new_session(&server, json!({})).await;
    let url = server.url(&format!("/v1/sessions/{id}/messages"));
    let (status, _) = send(
        "POST",
        &url,
        json!({ "text": "hi from alice", "participant_name": "alice", "participant_type": "human" }),
    )
    .await;
    assert_eq!(status, 200);
    let (status, answer) = send(
        "POST",
        &url,
        json!({ "text": "hi from the triage bot", "participant_name": "triage", "participant_type": "ai", "agent": "billing" }),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer["agent"], "billing");

    let (_, transcript) = server.get(&format!("/v1/sessions/{id}/transcript")).await;
    let senders: Vec<(String, String, String)> = transcript["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap_or_default().to_owned(),
                m["participant_name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                m["participant_type"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    let expected = [
        ("user", "alice", "human"),
        ("assistant", "support-bot", "ai"),
        ("user", "triage", "ai"),
        ("assistant", "billing", "ai"),
    ];
    let expected: Vec<(String, String, String)> = expected
        .iter()
        .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned()))
        .collect();
    assert_eq!(senders, expected);

    let (_, session) = server.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(session["current_agent"], "billing", "the agent persists");
    assert_eq!(
        session["participants"],
        json!([{ "name": "alice", "type": "human" }, { "name": "triage", "type": "ai" }])
    );
    let (status, bad) = send("POST", &url, json!({ "text": "x", "agent": "nobody" })).await;
    assert_eq!(status, 400);
    assert!(
        bad["message"]
            .as_str()
            .is_some_and(|m| m.contains("billing")),
        "{bad}"
    );
    server.stop().await;
}

/// Starts a turn that writes a file (the `files` plugin needs approval) and
/// returns the session id and the pending request id.
async fn turn_waiting_for_approval(server: &Server, path: &str) -> (String, String) {
    let id = new_session(server, json!({})).await;
    let url = server.url(&format!("/v1/sessions/{id}/messages"));
    let text = format!(
        "/tool write {{\"path\": \"{path}\", \"content\": \"note\"}}\n/tool write {{\"path\": \"second-{path}\", \"content\": \"note\"}}"
    );
    let events = sse(
        "POST",
        &url,
        Some(json!({ "text": text, "agent": "technical", "stream": true })),
        &[],
        3,
    )
    .await;
    assert_eq!(
        types(&events),
        ["step_start", "step_finish", "input_required"]
    );
    let request = &events[2]["data"];
    assert_eq!(request["tool"], "write");
    assert_eq!(request["kind"], "tool_permission");
    assert_eq!(
        request["options"],
        json!(["approve_once", "approve_session", "deny"])
    );
    let (_, session) = server.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(session["status"], "waiting_input");
    assert_eq!(
        session["pending_input"]["request_id"],
        request["request_id"]
    );
    (
        id,
        request["request_id"]
            .as_str()
            .expect("request id")
            .to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_allow_and_deny() {
    let app = support_bot();
    let (server, data) = start(app.path()).await;
    let workspace = |id: &str| data.path().join("workspaces").join(id);

    // Denied: nothing is written, the turn ends with status "denied".
    let (id, request) = turn_waiting_for_approval(&server, "denied.txt").await;
    let input_url = server.url(&format!("/v1/sessions/{id}/inputs/{request}"));
    let (status, answer) = send("PUT", &input_url, json!({ "decision": "deny" })).await;
    assert_eq!(status, 200, "{answer}");
    let continuation = answer["events"].as_array().expect("events");
    assert_eq!(continuation[0]["type"], "tool_use");
    assert_eq!(continuation[0]["data"]["part"]["state"]["status"], "error");
    assert!(!workspace(&id).join("denied.txt").exists());
    // The second call asks again; deny it too.
    let next = continuation.last().expect("an event");
    assert_eq!(next["type"], "input_required");
    let second = next["data"]["request_id"].as_str().expect("id");
    let (_, answer) = server
        .put(
            &format!("/v1/sessions/{id}/inputs/{second}"),
            json!({ "decision": "deny" }),
        )
        .await;
    let done = answer["events"]
        .as_array()
        .and_then(|e| e.last())
        .expect("done");
    assert_eq!(done["type"], "done");
    assert_eq!(done["data"]["status"], "denied");

    // Approved for the session: the first write runs, the second is not asked.
    let (id, request) = turn_waiting_for_approval(&server, "kept.txt").await;
    let input_url = server.url(&format!("/v1/sessions/{id}/inputs/{request}"));
    let (_, answer) = send("PUT", &input_url, json!({ "decision": "approve_session" })).await;
    let kinds: Vec<&str> = answer["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert!(!kinds.contains(&"input_required"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"done"));
    assert_eq!(
        std::fs::read_to_string(workspace(&id).join("kept.txt")).expect("written"),
        "note"
    );
    assert!(workspace(&id).join("second-kept.txt").exists());

    // A request id that is not pending is 404; a bad decision is 400.
    let (status, _) = send("PUT", &input_url, json!({ "decision": "approve_once" })).await;
    assert_eq!(status, 404);
    let (status, body) = send("PUT", &input_url, json!({ "decision": "maybe" })).await;
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("decision")),
        "{body}"
    );
    server.stop().await;
}

/// A tool the model was not offered fails as unknown at once: no person
/// is asked to approve a call of a tool that does not exist (the built-in
/// loop asked before, and the call failed only once approved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_of_an_unknown_tool_fails_without_asking_anyone() {
    let (server, _app, _data) = support_bot_server().await;
    let id = new_session(&server, json!({})).await;
    let events = sse(
        "POST",
        &server.url(&format!("/v1/sessions/{id}/messages")),
        Some(json!({ "text": "/tool no_such_tool {\"x\": 1}", "stream": true })),
        &[],
        usize::MAX,
    )
    .await;
    assert!(!types(&events).contains(&"input_required"), "{events:#?}");
    let failed = events
        .iter()
        .find(|e| e["type"] == "tool_use" && e["data"]["part"]["state"]["status"] == "error")
        .unwrap_or_else(|| panic!("a failed tool_use in {events:#?}"));
    assert_eq!(
        failed["data"]["part"]["state"]["error"]["kind"], "unknown_tool",
        "{failed}"
    );
    let done = events.last().expect("done");
    assert_eq!(
        (done["type"].as_str(), done["data"]["status"].as_str()),
        (Some("done"), Some("completed"))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_turn_refuses_a_second_message_and_can_be_cancelled() {
    let app = support_bot();
    let (server, _data) = start(app.path()).await;
    let (id, _request) = turn_waiting_for_approval(&server, "x.txt").await;
    let (status, body) = server
        .post(
            &format!("/v1/sessions/{id}/messages"),
            json!({ "text": "are you there?" }),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "turn_in_progress");

    let events_url = server.url(&format!("/v1/sessions/{id}/events?after=3"));
    let waiter = tokio::spawn(async move { sse("GET", &events_url, None, &[], usize::MAX).await });
    let (status, answer) = server
        .post(&format!("/v1/sessions/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(answer["cancelled"], true);
    let rest = waiter.await.expect("stream");
    let done = rest.last().expect("a terminal event");
    assert_eq!(done["type"], "done");
    assert_eq!(done["data"]["status"], "cancelled");

    // The session is free again.
    let (status, _) = server
        .post(
            &format!("/v1/sessions/{id}/messages"),
            json!({ "text": "hello again" }),
        )
        .await;
    assert_eq!(status, 200);
    server.stop().await;
}

/// A client that writes its whole request before it reads the answer (as
/// simple clients do) and sends a body over the limit still reads the 413:
/// the host answers once it has read up to the limit, then goes on reading
/// and discarding the rest for a while before it closes. Closed at once,
/// with the rest of the body unread, the connection is reset: the client's
/// write fails and the answer is lost with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_a_whole_oversized_body_still_reads_the_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = support_bot();
    let (server, _data) = start(app.path()).await;
    let id = new_session(&server, json!({})).await;
    let body = format!("{{\"text\": \"{}\"}}", "x".repeat(8 * 1024 * 1024));
    let head = format!(
        "POST /v1/sessions/{id}/messages HTTP/1.1\r\nhost: {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        server.addr,
        body.len()
    );
    let mut tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    tcp.write_all(head.as_bytes()).await.expect("the head");
    tcp.write_all(body.as_bytes())
        .await
        .expect("the whole body is taken, not refused with a reset");
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.expect("the answer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    let app = support_bot();
    let (server, _data) = start(app.path()).await;
    let (status, health) = server.get("/healthz").await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, ready) = server.get("/readyz").await;
    assert_eq!((status, ready["app"].as_str()), (200, Some("support-bot")));

    let (status, body) = send_raw("POST", &server.url("/v1/sessions"), "{\"metadata\": {").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_json");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.matches("line 1 column").count() == 1),
        "the position, once: {body}"
    );

    let (status, body) = server
        .post("/v1/sessions", json!({ "metadata": { "a": 1 } }))
        .await;
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("metadata.a")),
        "{body}"
    );

    let huge = format!("{{\"text\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let id = new_session(&server, json!({})).await;
    let (status, body) = send_raw(
        "POST",
        &server.url(&format!("/v1/sessions/{id}/messages")),
        huge,
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(body["error"], "body_too_large");

    for (method, path) in [
        ("GET", "/v1/sessions/ses_nope"),
        ("DELETE", "/v1/sessions/ses_nope"),
        ("GET", "/v1/sessions/ses_nope/transcript"),
        ("POST", "/v1/sessions/ses_nope/messages"),
        ("GET", "/v1/nothing-here"),
    ] {
        let (status, body) = send(method, &server.url(path), json!({ "text": "x" })).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert_eq!(body["error"], "not_found");
    }
    let (status, _) = server
        .post(
            &format!("/v1/sessions/{id}/messages"),
            json!({ "text": "  " }),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = server
        .post("/v1/sessions", json!({ "session_id": "../../etc" }))
        .await;
    assert_eq!(status, 400);

    // Nothing was lost: the session still works.
    let (status, _) = server
        .post(
            &format!("/v1/sessions/{id}/messages"),
            json!({ "text": "ok" }),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = server.delete(&format!("/v1/sessions/{id}")).await;
    assert_eq!(status, 204);
    let (status, _) = server.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(status, 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_logs_survive_a_restart() {
    let app = support_bot();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(app.path(), data.path()).await;
    let id = new_session(&server, json!({ "metadata": { "customer_id": "r1" } })).await;
    let (_, first) = server
        .post(
            &format!("/v1/sessions/{id}/messages"),
            json!({ "text": "remember me" }),
        )
        .await;
    let before = sse(
        "GET",
        &server.url(&format!("/v1/sessions/{id}/events")),
        None,
        &[],
        usize::MAX,
    )
    .await;
    server.stop().await;

    let server = Server::start(app.path(), data.path()).await;
    let after = sse(
        "GET",
        &server.url(&format!("/v1/sessions/{id}/events")),
        None,
        &[],
        usize::MAX,
    )
    .await;
    assert_eq!(after, before, "the log is the same after a restart");
    let (_, list) = server.get("/v1/sessions?customer_id=r1").await;
    assert_eq!(list["total"], 1);
    let (_, answer) = server
        .post(
            &format!("/v1/sessions/{id}/messages"),
            json!({ "text": "and now?" }),
        )
        .await;
    assert_eq!(
        answer["text"], "You said: \"and now?\". Earlier you said: \"remember me\".",
        "history survived (first answer: {first})"
    );
    let next = sse(
        "GET",
        &server.url(&format!("/v1/sessions/{id}/events?after={}", before.len())),
        None,
        &[],
        1,
    )
    .await;
    assert_eq!(next[0]["seq"], before.len() + 1, "sequence numbers go on");
    server.stop().await;
}

/// Regression: sled's `flush_async` stalled for good under a few hundred
/// concurrent turns (found by the 500-session bench). Many sessions at once
/// must all finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_many_concurrent_turns_all_finish() {
    let app = support_bot();
    let (server, _data) = start(app.path()).await;
    let mut ids = Vec::new();
    for _ in 0..200 {
        ids.push(new_session(&server, json!({})).await);
    }
    // All turns start together, as in the bench that found the hang.
    let turns: Vec<_> = ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| {
            let url = server.url(&format!("/v1/sessions/{id}/messages"));
            tokio::spawn(async move {
                send(
                    "POST",
                    &url,
                    json!({ "text": format!("/tool calc {{\"expression\": \"{i}+1\"}}") }),
                )
                .await
            })
        })
        .collect();
    for (i, turn) in turns.into_iter().enumerate() {
        let (status, answer) = tokio::time::timeout(Duration::from_secs(120), turn)
            .await
            .expect("every turn finishes")
            .expect("task");
        assert_eq!(status, 200, "{answer}");
        let expected = format!("{{\"value\":{}.0}}", i + 1);
        assert!(
            answer["text"]
                .as_str()
                .is_some_and(|t| t.contains(&expected)),
            "{answer}"
        );
    }
    server.stop().await;
}

/// Regression: the task that ran a turn cleared the session's running flag a
/// second time after the turn ended, which could clear the flag of a turn a
/// fast client had already started (its stream then ended empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_message_sent_right_after_done_gets_its_whole_turn() {
    let app = support_bot();
    let (server, _data) = start(app.path()).await;
    let id = new_session(&server, json!({})).await;
    let url = server.url(&format!("/v1/sessions/{id}/messages"));
    for round in 0..20 {
        let events = sse(
            "POST",
            &url,
            Some(json!({ "text": format!("round {round}"), "stream": true })),
            &[],
            usize::MAX,
        )
        .await;
        assert_eq!(
            events.last().map(|e| e["type"].clone()),
            Some(json!("done")),
            "round {round}: {events:?}"
        );
    }
    server.stop().await;
}

/// The tokens the gateway metered so far, by kind, from `GET /metrics`.
pub async fn metered_tokens(server: &Server) -> karta_host::Usage {
    let text = get_text(&server.url("/metrics")).await;
    let count = |kind: &str| -> u64 {
        let prefix = format!("karta_model_tokens_total{{kind=\"{kind}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |n| n.trim().parse().expect("a count"))
    };
    karta_host::Usage {
        input_tokens: count("input"),
        output_tokens: count("output"),
        cache_read_tokens: count("cache_read"),
        cache_write_tokens: count("cache_write"),
    }
}

/// Runs one streamed turn and checks that its tokens are counted once, the
/// same everywhere: the gateway's meter (`/metrics`, the only turn running),
/// the `done` event, the transcript — and, when `steps_agree`, the sum of
/// the `step_finish` events, which the harness counted itself from the
/// model's stream. Returns the turn's events.
pub async fn turn_with_one_usage(
    server: &Server,
    id: &str,
    text: &str,
    steps_agree: bool,
) -> Vec<Value> {
    let before = metered_tokens(server).await;
    let events = sse(
        "POST",
        &server.url(&format!("/v1/sessions/{id}/messages")),
        Some(json!({ "text": text, "stream": true })),
        &[],
        usize::MAX,
    )
    .await;
    let done = events.last().expect("events");
    assert_eq!(done["type"], "done", "{events:#?}");
    let done_usage: karta_host::Usage =
        serde_json::from_value(done["data"]["usage"].clone()).expect("usage");
    let after = metered_tokens(server).await;
    let metered = karta_host::Usage {
        input_tokens: after.input_tokens - before.input_tokens,
        output_tokens: after.output_tokens - before.output_tokens,
        cache_read_tokens: after.cache_read_tokens - before.cache_read_tokens,
        cache_write_tokens: after.cache_write_tokens - before.cache_write_tokens,
    };
    assert!(done_usage.total() > 0, "{events:#?}");
    assert_eq!(done_usage, metered, "done = what the gateway metered");
    let (_, transcript) = server.get(&format!("/v1/sessions/{id}/transcript")).await;
    let answer = transcript["messages"]
        .as_array()
        .and_then(|m| m.last())
        .expect("the answer");
    let transcript_usage: karta_host::Usage =
        serde_json::from_value(answer["usage"].clone()).expect("transcript usage");
    assert_eq!(transcript_usage, done_usage, "transcript = done");
    if steps_agree {
        let mut steps = karta_host::Usage::default();
        for event in events.iter().filter(|e| e["type"] == "step_finish") {
            let usage: karta_host::Usage =
                serde_json::from_value(event["data"]["usage"].clone()).expect("step usage");
            steps.add(usage);
        }
        assert_eq!(steps, done_usage, "the harness's own count = the gateway's");
    }
    events
}

/// A unary message whose turn stops for a person answers at once with the
/// pending input (it used to hold the request until the approval timed
/// out); the decision's `PUT` returns the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_unary_message_answers_at_an_approval() {
    let app = support_bot();
    let (server, data) = start(app.path()).await;
    let id = new_session(&server, json!({})).await;
    let (status, answer) = server
        .post(
            &format!("/v1/sessions/{id}/messages"),
            json!({
                "text": "/tool write {\"path\": \"unary.txt\", \"content\": \"note\"}",
                "agent": "technical",
            }),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "waiting_input", "{answer}");
    assert_eq!(answer["pending_input"]["tool"], "write", "{answer}");
    let request = answer["pending_input"]["request_id"]
        .as_str()
        .expect("request id");
    let (status, rest) = server
        .put(
            &format!("/v1/sessions/{id}/inputs/{request}"),
            json!({ "decision": "approve_once" }),
        )
        .await;
    assert_eq!(status, 200, "{rest}");
    let done = rest["events"]
        .as_array()
        .and_then(|e| e.last())
        .expect("done");
    assert_eq!(done["type"], "done", "{rest}");
    assert!(
        data.path()
            .join("workspaces")
            .join(&id)
            .join("unary.txt")
            .is_file()
    );
}
