//! Issue 9 item 8: the dev-mode API over a real socket refuses what a web
//! page in the user's browser could send it — a foreign `Origin` (CSRF), a
//! foreign `Host` (DNS rebinding), a JSON body labelled as text or a form —
//! and still serves a plain loopback client.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::sessions::{Server, support_bot};

/// Sends `body` with exactly `headers` (hyper adds `Host` only when none is
/// given); returns the status and the JSON answer.
async fn request(
    server: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(server.url(path));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = client.request(request).await.expect("response");
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

const JSON: (&str, &str) = ("content-type", "application/json");

/// How many sessions exist.
fn session_count(server: &Server) -> usize {
    server
        .host
        .sessions()
        .list(None, &Default::default(), 1, 100)
        .expect("list")
        .1
}

async fn start() -> (Server, [tempfile::TempDir; 2]) {
    let app = support_bot();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(app.path(), data.path()).await;
    (server, [app, data])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_issue9_api_refuses_foreign_origins() {
    let (server, _dirs) = start().await;
    let evil = ("origin", "https://evil.example");
    let (status, body) = request(&server, "POST", "/v1/sessions", &[JSON, evil], "{}").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "origin_not_allowed", "{body}");
    assert_eq!(
        session_count(&server),
        0,
        "a foreign page created a session"
    );

    // A page's `fetch` with no body (a "simple" request) too.
    let (status, _) = request(&server, "POST", "/v1/sessions", &[evil], "").await;
    assert_eq!(status, 403);
    // A sandboxed page's opaque origin.
    let (status, _) = request(
        &server,
        "POST",
        "/v1/sessions",
        &[JSON, ("origin", "null")],
        "{}",
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(session_count(&server), 0);

    // A foreign page cannot send a message in an existing session either.
    let (status, session) = server.post("/v1/sessions", json!({})).await;
    assert_eq!(status, 201);
    let id = session["id"].as_str().expect("id");
    let path = format!("/v1/sessions/{id}/messages");
    let (status, _) = request(&server, "POST", &path, &[JSON, evil], r#"{"text": "hi"}"#).await;
    assert_eq!(status, 403);
    let transcript = server.host.sessions().transcript(id).expect("transcript");
    assert!(transcript.is_empty(), "{transcript:?}");

    // A page served from loopback (a local dev UI) may call it.
    let local = ("origin", "http://localhost:5173");
    let (status, body) = request(&server, "POST", "/v1/sessions", &[JSON, local], "{}").await;
    assert_eq!(status, 201, "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_issue9_api_refuses_foreign_hosts() {
    let (server, _dirs) = start().await;
    // A DNS-rebound page: the browser sends its own name as `Host`.
    let evil = ("host", "evil.example");
    let (status, body) = request(&server, "POST", "/v1/sessions", &[JSON, evil], "{}").await;
    assert_eq!(status, 421, "{body}");
    assert_eq!(body["error"], "host_not_allowed", "{body}");
    assert_eq!(session_count(&server), 0);
    // Reads too: rebinding would let the page see the answer.
    let port = server.addr.port().to_string();
    let evil_port = format!("evil.example:{port}");
    let (status, _) = request(&server, "GET", "/v1/sessions", &[("host", &evil_port)], "").await;
    assert_eq!(status, 421);
    let (status, _) = request(&server, "GET", "/metrics", &[("host", &evil_port)], "").await;
    assert_eq!(status, 421);

    // Loopback names with any port are ours.
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "[::1]".to_owned(),
    ] {
        let (status, body) = request(&server, "GET", "/v1/sessions", &[("host", &host)], "").await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_issue9_api_json_bodies_need_a_json_content_type() {
    let (server, _dirs) = start().await;
    let body = r#"{"metadata": {"customer_id": "c1"}}"#;
    // What a page may send anywhere without a CORS preflight.
    for content_type in [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let headers = [("content-type", content_type)];
        let (status, answer) = request(&server, "POST", "/v1/sessions", &headers, body).await;
        assert_eq!(status, 415, "{content_type}: {answer}");
        assert_eq!(answer["error"], "unsupported_media_type", "{answer}");
    }
    // A body with no label is not known to be JSON.
    let (status, _) = request(&server, "POST", "/v1/sessions", &[], body).await;
    assert_eq!(status, 415);
    assert_eq!(
        session_count(&server),
        0,
        "a mislabelled body created a session"
    );

    let headers = [("content-type", "application/json; charset=utf-8")];
    let (status, answer) = request(&server, "POST", "/v1/sessions", &headers, body).await;
    assert_eq!(status, 201, "{answer}");
    // No body at all needs no label (`curl -XPOST …/sessions`).
    let (status, answer) = request(&server, "POST", "/v1/sessions", &[], "").await;
    assert_eq!(status, 201, "{answer}");
    server.stop().await;
}

/// A plain client — no `Origin`, `Host: 127.0.0.1:port` — is served as
/// before: create, send, read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_issue9_api_serves_a_plain_loopback_client() {
    let (server, _dirs) = start().await;
    let host = format!("127.0.0.1:{}", server.addr.port());
    let headers = [JSON, ("host", host.as_str())];
    let (status, session) = request(&server, "POST", "/v1/sessions", &headers, "{}").await;
    assert_eq!(status, 201, "{session}");
    let id = session["id"].as_str().expect("id");
    let path = format!("/v1/sessions/{id}/messages");
    let (status, answer) = request(&server, "POST", &path, &headers, r#"{"text": "hello"}"#).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["text"], "You said: \"hello\".", "{answer}");
    let (status, _) = request(&server, "GET", "/healthz", &[("host", host.as_str())], "").await;
    assert_eq!(status, 200);
    server.stop().await;
}
