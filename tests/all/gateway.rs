//! The model gateway: both wire shapes, keys, forwarding to an upstream (the
//! offline model of another gateway stands in for a provider), and what the
//! app's instructions look like when they reach the model.

use karta_host::gateway::{Gateway, Upstream, UpstreamKind};
use karta_host::listen::ServerTask;
use serde_json::{Value, json};

use crate::sessions::{Server, new_session, support_bot};

/// Serves `gateway` on a loopback port; it stops when the task is dropped.
async fn serve(gateway: &Gateway) -> (String, ServerTask) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    gateway.serve(listener).expect("serve")
}

fn key(gateway: &Gateway, session: &str) -> String {
    gateway.credentials().for_session(session).gateway_key
}

/// POSTs `body` with a gateway key; returns status and raw text.
async fn post(url: &str, key: &str, body: &Value) -> (u16, String) {
    post_raw(url, key, body.to_string()).await
}

/// POSTs `body` as it is (not necessarily JSON) with a gateway key.
async fn post_raw(url: &str, key: &str, body: String) -> (u16, String) {
    use http_body_util::BodyExt;
    let authorization = format!("Bearer {key}");
    let response = post_with(url, &[("authorization", &authorization)], body).await;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// POSTs `body` as JSON with `headers` (the caller's key among them);
/// returns the response as it arrives.
async fn post_with(
    url: &str,
    headers: &[(&str, &str)],
    body: String,
) -> hyper::Response<hyper::body::Incoming> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let mut request = hyper::Request::post(url).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .expect("request");
    client.request(request).await.expect("response")
}

/// A gateway whose upstream is the Anthropic-shaped provider at `provider`,
/// with the platform key `platform`.
fn forwarding_to_anthropic(provider: std::net::SocketAddr) -> Gateway {
    Gateway::standalone(Some(Upstream {
        kind: UpstreamKind::Anthropic,
        base_url: format!("http://{provider}"),
        api_key: "platform".into(),
        org_key: false,
    }))
}

fn sse_data(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_openai_shape_streams_chunks_like_openai() {
    let gateway = Gateway::standalone(None);
    let (url, _gateway_server) = serve(&gateway).await;
    let key = key(&gateway, "s1");
    let body = json!({
        "model": "m", "stream": true, "stream_options": { "include_usage": true },
        "messages": [{ "role": "user", "content": "/tool calc {\"expression\": \"1+1\"}" }],
    });
    let (status, text) = post(&format!("{url}/v1/chat/completions"), &key, &body).await;
    assert_eq!(status, 200);
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk JSON"))
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let call = chunks
        .iter()
        .find_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0).cloned())
        .expect("a tool call chunk");
    assert_eq!(call["function"]["name"], "calc");
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str())
        .expect("a finish chunk");
    assert_eq!(finish, "tool_calls");
    assert!(chunks.last().expect("usage")["usage"]["prompt_tokens"].as_u64() > Some(0));
    assert_eq!(gateway.usage("s1").requests, 1);

    let (status, text) = post(
        &format!("{url}/v1/chat/completions"),
        &key,
        &json!({ "model": "m", "messages": [{ "role": "user", "content": "hi" }] }),
    )
    .await;
    assert_eq!(status, 200);
    let completion: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(
        completion["choices"][0]["message"]["content"],
        "You said: \"hi\"."
    );
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn the_anthropic_shape_streams_message_events() {
    let gateway = Gateway::standalone(None);
    let (url, _gateway_server) = serve(&gateway).await;
    let key = key(&gateway, "s1");
    let body = json!({
        "model": "m", "stream": true, "max_tokens": 100,
        "messages": [{ "role": "user", "content": [{ "type": "text", "text": "/think a\n/say b c d e f g h" }] }],
    });
    let (status, text) = post(&format!("{url}/v1/messages"), &key, &body).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    assert!(names.contains(&"content_block_delta"));
    let joined: String = sse_data(&text)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["delta"]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(joined, "b c d e f g h");
}

#[tokio::test]
async fn unknown_keys_and_bad_bodies_are_refused() {
    let gateway = Gateway::standalone(None);
    let (url, _gateway_server) = serve(&gateway).await;
    let (status, text) = post(&format!("{url}/v1/messages"), "kgw_forged", &json!({})).await;
    assert_eq!(status, 401, "{text}");
    let key = key(&gateway, "s1");
    let (status, _) = post(&format!("{url}/v1/messages"), &key, &json!("not an object")).await;
    assert_eq!(
        status, 200,
        "a JSON string is JSON; the offline model answers it"
    );
    gateway.credentials().revoke("s1");
    let (status, _) = post(&format!("{url}/v1/messages"), &key, &json!({})).await;
    assert_eq!(status, 401, "revoked keys stop working");
}

#[tokio::test]
async fn requests_are_forwarded_to_a_real_upstream_with_the_platform_key() {
    // The "provider": a gateway with the offline model, which accepts only
    // the platform key it issued.
    let provider = Gateway::standalone(None);
    let (provider_url, _provider_server) = serve(&provider).await;
    let platform_key = key(&provider, "platform");

    for (kind, path) in [
        (UpstreamKind::Anthropic, "/v1/messages"),
        (UpstreamKind::Openai, "/v1/chat/completions"),
    ] {
        let gateway = Gateway::standalone(Some(Upstream {
            kind,
            base_url: provider_url.clone(),
            api_key: platform_key.clone(),
            org_key: false,
        }));
        let (url, _gateway_server) = serve(&gateway).await;
        let session_key = key(&gateway, "s1");
        for stream in [false, true] {
            let body = json!({
                "model": "m", "max_tokens": 50, "stream": stream,
                "stream_options": { "include_usage": true },
                "messages": [{ "role": "user", "content": "forwarded?" }],
            });
            let (status, text) = post(&format!("{url}{path}"), &session_key, &body).await;
            assert_eq!(status, 200, "{kind:?} stream={stream}: {text}");
            assert!(text.contains("forwarded?"), "{text}");
        }
        let usage = gateway.usage("s1");
        assert_eq!(usage.requests, 2, "{kind:?}");
        assert!(
            usage.usage.input_tokens > 0 && usage.usage.output_tokens > 0,
            "{kind:?}: {usage:?}"
        );
        // The session's key never reaches the provider; the platform's does,
        // and both count the same tokens (one formula, read as the answer
        // streams through).
        let at_provider = provider.usage("platform");
        assert!(at_provider.requests >= 2);
        assert_eq!(
            provider.take_usage("platform"),
            gateway.take_usage("s1"),
            "{kind:?}"
        );
    }
}

/// A host's gateway keeps no copy of the conversations it relays unless
/// asked to (tests do): before, every host kept its last 32 model requests'
/// bodies in memory, up to 32 MiB each, for nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosts_gateway_keeps_no_request_unless_asked() {
    let app = support_bot();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::try_start_with(app.path(), data.path(), |config| {
        config.keep_model_requests = false;
    })
    .await
    .expect("host starts");
    let id = new_session(&server, json!({})).await;
    let gateway = server.host.sessions().gateway();
    // Not asked for, the first call is not kept; asked for, the second is.
    for (text, keep) in [("a secret", false), ("kept", true)] {
        gateway.keep_recent_requests(keep);
        let (status, answer) = server
            .post(
                &format!("/v1/sessions/{id}/messages"),
                json!({ "text": text }),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
    }
    let kept = gateway.recent_requests();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].to_string().contains("kept"), "{}", kept[0]);
    // Turned off, what was kept goes.
    gateway.keep_recent_requests(false);
    assert_eq!(gateway.recent_requests(), Vec::<Value>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instructions_agents_and_skills_reach_the_model() {
    let app = support_bot();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(app.path(), data.path()).await;
    let (_, session) = server.post("/v1/sessions", json!({})).await;
    let id = session["id"].as_str().expect("id");
    let (status, answer) = server
        .post(
            &format!("/v1/sessions/{id}/messages"),
            json!({ "text": "/tool load_skill {\"name\": \"refunds\"}", "agent": "billing" }),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["text"]
            .as_str()
            .is_some_and(|t| t.contains("within 30 days")),
        "{answer}"
    );

    let requests = server.host.sessions().gateway().recent_requests();
    let request = requests.last().expect("the model was called");
    let system = request["system"].as_str().expect("system prompt");
    assert!(
        system.contains("You are the support assistant of Acme Tools"),
        "{system}"
    );
    assert!(system.contains("# Agent: billing"), "{system}");
    assert!(system.contains("- refunds: The refund policy"), "{system}");
    let tools: Vec<&str> = request["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(
        tools,
        ["calc", "load_skill"],
        "billing may use only its tools"
    );

    // A model failure is an error event, and the session goes on.
    let (status, answer) = server
        .post(
            &format!("/v1/sessions/{id}/messages"),
            json!({ "text": "/fail 503 overloaded" }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(answer["status"], "error");
    let (_, events) = server.get(&format!("/v1/sessions/{id}/transcript")).await;
    assert_eq!(events["messages"].as_array().map(Vec::len), Some(4));
    server.stop().await;
}

/// An Anthropic stream with a 4-byte character and cache counts, as a
/// provider sends it.
const UPSTREAM_STREAM: &[u8] = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m1\",\"usage\":{\"input_tokens\":21,\"cache_read_input_tokens\":400,\"cache_creation_input_tokens\":7,\"output_tokens\":1}}}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"caf\xc3\xa9 \xf0\x9f\x98\x80 ok\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":9}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

#[tokio::test]
async fn a_forwarded_stream_arrives_intact_and_is_metered_exactly_whatever_its_frames() {
    for chunk in [1, 2, 3, 5, 64, UPSTREAM_STREAM.len()] {
        let provider =
            crate::support::trickle_server(UPSTREAM_STREAM, "text/event-stream", chunk).await;
        let gateway = forwarding_to_anthropic(provider);
        let (url, _server) = serve(&gateway).await;
        let body = json!({ "model": "m", "max_tokens": 10, "stream": true, "messages": [] });
        let (status, text) = post(&format!("{url}/v1/messages"), &key(&gateway, "s1"), &body).await;
        assert_eq!(status, 200);
        assert_eq!(
            text.as_bytes(),
            UPSTREAM_STREAM,
            "byte for byte, {chunk}-byte frames"
        );
        assert_eq!(
            gateway.take_usage("s1"),
            karta_host::Usage {
                input_tokens: 21,
                output_tokens: 9,
                cache_read_tokens: 400,
                cache_write_tokens: 7,
            },
            "{chunk}-byte frames"
        );
    }
}

/// A hostile harness names the model twice, or hides the name behind a JSON
/// escape, so that the ledger prices one model while the provider, reading
/// the body its own way, serves another. The gateway prices the model it
/// forwards, so it refuses a request whose head it cannot read one way
/// only, before anything reaches the provider.
#[tokio::test]
async fn a_request_naming_its_model_ambiguously_is_refused_before_the_provider() {
    let provider = Gateway::standalone(None);
    let (provider_url, _provider_server) = serve(&provider).await;
    let platform_key = key(&provider, "platform");
    let gateway = Gateway::standalone(Some(Upstream {
        kind: UpstreamKind::Anthropic,
        base_url: provider_url,
        api_key: platform_key,
        org_key: false,
    }));
    let (url, _gateway_server) = serve(&gateway).await;
    let session_key = key(&gateway, "s1");
    let messages = r#""messages":[{"role":"user","content":"hi"}]"#;
    for (why, body) in [
        (
            "the model twice",
            format!(
                r#"{{"model":"claude-3-haiku","max_tokens":10,{messages},"model":"claude-opus-4"}}"#
            ),
        ),
        (
            "the model twice, the second spelt with an escape",
            format!(
                r#"{{"model":"claude-3-haiku","max_tokens":10,{messages},"mod\u0065l":"claude-opus-4"}}"#
            ),
        ),
        (
            "max_tokens twice",
            format!(r#"{{"model":"m","max_tokens":1,{messages},"max_tokens":100000}}"#),
        ),
        (
            "stream twice",
            format!(r#"{{"model":"m","stream":false,"max_tokens":1,{messages},"stream":true}}"#),
        ),
        (
            "a model that is not a string",
            format!(r#"{{"model":["claude-opus-4"],"max_tokens":10,{messages}}}"#),
        ),
        (
            "max_tokens that is not a whole number",
            format!(r#"{{"model":"m","max_tokens":1e9,{messages}}}"#),
        ),
    ] {
        let (status, text) = post_raw(&format!("{url}/v1/messages"), &session_key, body).await;
        assert_eq!(status, 400, "{why}: {text}");
        assert!(text.contains("invalid_request_error"), "{why}: {text}");
    }
    assert_eq!(
        provider.usage("platform").requests,
        0,
        "nothing reached the provider"
    );
    // A body that is not JSON at all is refused too, and says where.
    let (status, text) = post_raw(
        &format!("{url}/v1/messages"),
        &session_key,
        r#"{"model":"m","#.into(),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("not valid JSON"), "{text}");
}

/// Headers a provider saw, one map per request.
type SeenHeaders = std::sync::Arc<std::sync::Mutex<Vec<hyper::HeaderMap>>>;

/// A provider that answers every request with [`UPSTREAM_STREAM`] and keeps
/// the headers it was sent.
async fn header_keeping_provider() -> (std::net::SocketAddr, SeenHeaders) {
    provider_answering(
        200,
        &[("content-type", "text/event-stream")],
        UPSTREAM_STREAM,
    )
    .await
}

/// A provider that answers every request with `status`, `headers` and
/// `body`, and keeps the headers it was sent.
async fn provider_answering(
    status: u16,
    headers: &'static [(&'static str, &'static str)],
    body: &'static [u8],
) -> (std::net::SocketAddr, SeenHeaders) {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;

    let seen = SeenHeaders::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let kept = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    kept.lock()
                        .expect("headers")
                        .push(request.headers().clone());
                    async move {
                        let mut response = hyper::Response::builder().status(status);
                        for (name, value) in headers {
                            response = response.header(*name, *value);
                        }
                        Ok::<_, Infallible>(
                            response
                                .body(http_body_util::Full::new(bytes::Bytes::from_static(body)))
                                .expect("response"),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// Claude Code's requests use beta features (`context_management`,
/// `output_config.effort`…) that Anthropic's API accepts only with the
/// `anthropic-beta` header naming them: forwarded without it, every turn
/// of a real provider would fail with a 400. What Claude Code 2.1.332
/// sends (captured from the CLI) must reach the provider; the session's
/// key must not.
#[tokio::test]
async fn claude_codes_beta_header_and_user_agent_reach_an_anthropic_provider() {
    const BETAS: &str = "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,effort-2025-11-24";
    const AGENT: &str = "claude-cli/2.1.332 (external, sdk-cli)";
    let (provider, seen) = header_keeping_provider().await;
    let gateway = forwarding_to_anthropic(provider);
    let (url, _server) = serve(&gateway).await;
    let session_key = key(&gateway, "s1");
    let body = json!({
        "model": "claude-sonnet-4-5", "max_tokens": 10, "stream": true,
        "messages": [{ "role": "user", "content": "hi" }],
        "context_management": { "edits": [{ "type": "clear_thinking_20251015", "keep": "all" }] },
        "output_config": { "effort": "medium" },
    });
    let response = post_with(
        &format!("{url}/v1/messages?beta=true"),
        &[
            ("x-api-key", &session_key),
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", BETAS),
            ("user-agent", AGENT),
        ],
        body.to_string(),
    )
    .await;
    assert_eq!(response.status(), 200);

    let seen = seen.lock().expect("headers");
    let headers = seen.last().expect("the provider was called");
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(header("anthropic-beta"), Some(BETAS));
    assert_eq!(header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(header("user-agent"), Some(AGENT));
    assert_eq!(header("x-api-key"), Some("platform"));
    assert!(
        !headers
            .values()
            .any(|v| v.to_str().is_ok_and(|v| v.contains(&session_key))),
        "the session's key reached the provider: {headers:?}"
    );
}

/// A caller of the OpenAI shape served by an Anthropic provider sends a
/// translated body, with no beta feature in it: no `anthropic-beta` is
/// invented, and the one a caller might add is not passed on either.
#[tokio::test]
async fn a_translated_request_carries_no_anthropic_beta() {
    let (provider, seen) = header_keeping_provider().await;
    let gateway = forwarding_to_anthropic(provider);
    let (url, _server) = serve(&gateway).await;
    let body = json!({
        "model": "claude-sonnet-4-5", "max_tokens": 10, "stream": true,
        "messages": [{ "role": "user", "content": "hi" }],
    });
    let authorization = format!("Bearer {}", key(&gateway, "s1"));
    let response = post_with(
        &format!("{url}/v1/chat/completions"),
        &[
            ("authorization", &authorization),
            ("anthropic-beta", "context-management-2025-06-27"),
        ],
        body.to_string(),
    )
    .await;
    assert_eq!(response.status(), 200);
    let seen = seen.lock().expect("headers");
    let headers = seen.last().expect("the provider was called");
    assert_eq!(headers.get("anthropic-beta"), None);
    assert_eq!(
        headers
            .get("anthropic-version")
            .and_then(|v| v.to_str().ok()),
        Some("2023-06-01")
    );
}

/// A provider that is rate limiting says when to try again; Claude Code's
/// and OpenCode's SDKs wait that long. The gateway passes `retry-after`,
/// `x-should-retry` and the provider's request id back in either shape, so
/// a harness does not retry sooner than the provider asked.
#[tokio::test]
async fn a_providers_retry_advice_reaches_the_caller() {
    const LIMITED: &[u8] =
        br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#;
    let (provider, _) = provider_answering(
        429,
        &[
            ("content-type", "application/json"),
            ("retry-after", "7"),
            ("x-should-retry", "true"),
            ("request-id", "req_limited"),
            ("set-cookie", "provider=secret"),
        ],
        LIMITED,
    )
    .await;
    let gateway = forwarding_to_anthropic(provider);
    let (url, _server) = serve(&gateway).await;
    let authorization = format!("Bearer {}", key(&gateway, "s1"));
    for path in ["/v1/messages", "/v1/chat/completions"] {
        let body = json!({
            "model": "claude-sonnet-4-5", "max_tokens": 10, "stream": true,
            "messages": [{ "role": "user", "content": "hi" }],
        });
        let response = post_with(
            &format!("{url}{path}"),
            &[("authorization", &authorization)],
            body.to_string(),
        )
        .await;
        assert_eq!(response.status(), 429, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(header("retry-after").as_deref(), Some("7"), "{path}");
        assert_eq!(header("x-should-retry").as_deref(), Some("true"), "{path}");
        assert_eq!(
            header("request-id").as_deref(),
            Some("req_limited"),
            "{path}"
        );
        assert_eq!(
            header("set-cookie"),
            None,
            "{path}: only the retry advice passes"
        );
    }
}
