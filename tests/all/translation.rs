//! Issue 12: the gateway translates between the Anthropic and OpenAI wire
//! shapes, so the model name an app asks for picks its provider whatever
//! its harness speaks. The real Claude Code CLI (Anthropic-shaped) runs an
//! app whose agent asks for `openai/gpt-4o-mini` against a fake
//! OpenAI-compatible provider, and the real OpenCode (OpenAI-shaped) one
//! asking for `anthropic/claude-haiku-4-5` against a fake Anthropic — each
//! reached with the org's own key (BYOK), each turn with a plugin tool
//! call. The fake providers are small axum servers on loopback that record
//! what they were asked and stream scripted answers, splitting a tool's
//! arguments over several deltas; the test checks the provider saw its own
//! shape, the org's key and the stripped model name, and that the turn's
//! `done` usage, what the provider reported and the ledger are the same.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use karta_host::Usage;
use karta_host::app::HarnessKind;
use karta_host::auth::Scope;
use karta_host::byok::Provider;
use serde_json::{Value, json};

use crate::tenancy::Platform;

/// What a fake provider was asked, and the usage it reported.
#[derive(Clone, Default)]
struct Fake {
    requests: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
    reported: Arc<Mutex<Usage>>,
}

impl Fake {
    /// Serves the fake on a loopback port; returns its base URL.
    async fn serve(&self) -> String {
        let router = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(openai))
            .route("/v1/messages", axum::routing::post(anthropic))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}")
    }

    /// Records a request; returns its number (from 0) and the usage this
    /// answer reports.
    fn take(&self, headers: HeaderMap, body: &Value) -> Usage {
        let mut requests = self.requests.lock().expect("lock");
        requests.push((headers, body.clone()));
        let n = requests.len() as u64;
        let usage = Usage {
            input_tokens: 100 + 10 * n,
            output_tokens: 7 + n,
            cache_read_tokens: 16,
            cache_write_tokens: 0,
        };
        self.reported.lock().expect("lock").add(usage);
        usage
    }

    fn requests(&self) -> Vec<(HeaderMap, Value)> {
        self.requests.lock().expect("lock").clone()
    }
}

/// The name of the offered tool ending in `convert`, unless the last
/// message already carries a tool's result (then the answer is text).
fn convert_tool(body: &Value, tools: &[String]) -> Option<String> {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let answered = messages.iter().any(|m| {
        m["role"] == "tool"
            || m["content"]
                .as_array()
                .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"))
    });
    if answered {
        return None;
    }
    tools.iter().find(|t| t.ends_with("convert")).cloned()
}

const ARGUMENTS: [&str; 3] = ["{\"value\": 3,", " \"from\": \"mi\",", " \"to\": \"km\"}"];
const ANSWER: &str = "3 mi is about 4.83 km — done ✓";

fn sse(events: impl IntoIterator<Item = String>) -> Response {
    let body: String = events.into_iter().collect();
    ([("content-type", "text/event-stream")], body).into_response()
}

/// A fake OpenAI-compatible provider: a tool call whose arguments stream in
/// three deltas, then (given the result) a text answer with a multi-byte
/// character; the usage chunk last, as `stream_options.include_usage` asks.
async fn openai(State(fake): State<Fake>, headers: HeaderMap, body: String) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if body["model"] == "rate-limited" {
        let error = json!({ "error": { "message": "slow down", "type": "rate_limit_exceeded" } });
        return (axum::http::StatusCode::TOO_MANY_REQUESTS, axum::Json(error)).into_response();
    }
    let usage = fake.take(headers, &body);
    let tools: Vec<String> = body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["function"]["name"].as_str().map(str::to_owned))
        .collect();
    if body["stream"] != true {
        let prompt = usage.input_tokens + usage.cache_read_tokens;
        let completion = json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "model": body["model"],
            "choices": [{ "index": 0, "finish_reason": "stop",
                "message": { "role": "assistant", "content": ANSWER } }],
            "usage": { "prompt_tokens": prompt, "completion_tokens": usage.output_tokens,
                "prompt_tokens_details": { "cached_tokens": usage.cache_read_tokens } },
        });
        return axum::Json(completion).into_response();
    }
    let chunk = |delta: Value, finish: Value| {
        let chunk = json!({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": body["model"],
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
        });
        format!("data: {chunk}\n\n")
    };
    let mut events = vec![chunk(
        json!({ "role": "assistant", "content": "" }),
        Value::Null,
    )];
    let finish = match convert_tool(&body, &tools) {
        Some(name) => {
            events.push(chunk(
                json!({ "tool_calls": [{ "index": 0, "id": "call_fake_1", "type": "function",
                    "function": { "name": name, "arguments": "" } }] }),
                Value::Null,
            ));
            for part in ARGUMENTS {
                events.push(chunk(
                    json!({ "tool_calls": [{ "index": 0, "function": { "arguments": part } }] }),
                    Value::Null,
                ));
            }
            "tool_calls"
        }
        None => {
            for word in ANSWER.split_inclusive(' ') {
                events.push(chunk(json!({ "content": word }), Value::Null));
            }
            "stop"
        }
    };
    events.push(chunk(json!({}), json!(finish)));
    let prompt = usage.input_tokens + usage.cache_read_tokens;
    let report = json!({
        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": [],
        "usage": { "prompt_tokens": prompt, "completion_tokens": usage.output_tokens,
            "total_tokens": prompt + usage.output_tokens,
            "prompt_tokens_details": { "cached_tokens": usage.cache_read_tokens } },
    });
    events.push(format!("data: {report}\n\n"));
    events.push("data: [DONE]\n\n".into());
    sse(events)
}

/// A fake Anthropic: the same script in Anthropic's events.
async fn anthropic(State(fake): State<Fake>, headers: HeaderMap, body: String) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let usage = fake.take(headers, &body);
    let tools: Vec<String> = body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect();
    let event = |data: Value| {
        format!(
            "event: {}\ndata: {data}\n\n",
            data["type"].as_str().unwrap_or("")
        )
    };
    let mut events = vec![event(json!({ "type": "message_start", "message": {
        "id": "msg_fake", "type": "message", "role": "assistant", "model": body["model"],
        "content": [], "stop_reason": null,
        "usage": { "input_tokens": usage.input_tokens, "cache_read_input_tokens": usage.cache_read_tokens,
            "cache_creation_input_tokens": 0, "output_tokens": 1 },
    }}))];
    let stop = match convert_tool(&body, &tools) {
        Some(name) => {
            events.push(event(json!({ "type": "content_block_start", "index": 0,
                "content_block": { "type": "tool_use", "id": "toolu_fake_1", "name": name, "input": {} } })));
            for part in ARGUMENTS {
                events.push(event(json!({ "type": "content_block_delta", "index": 0,
                    "delta": { "type": "input_json_delta", "partial_json": part } })));
            }
            "tool_use"
        }
        None => {
            events.push(event(json!({ "type": "content_block_start", "index": 0,
                "content_block": { "type": "text", "text": "" } })));
            for word in ANSWER.split_inclusive(' ') {
                events.push(event(json!({ "type": "content_block_delta", "index": 0,
                    "delta": { "type": "text_delta", "text": word } })));
            }
            "end_turn"
        }
    };
    events.push(event(json!({ "type": "content_block_stop", "index": 0 })));
    events.push(event(
        json!({ "type": "message_delta", "delta": { "stop_reason": stop },
        "usage": { "output_tokens": usage.output_tokens } }),
    ));
    events.push(event(json!({ "type": "message_stop" })));
    sse(events)
}

/// A platform whose acme/bot runs the support-bot app on `harness`, its
/// `metric` agent asking for `model`, with `provider`'s URL at the fake.
async fn platform(harness: HarnessKind, model: &str, provider: Provider, url: String) -> Platform {
    let app = crate::sessions::support_bot();
    // An agent of the app's own that names its model (and, unlike the
    // support bot's, no tool list, which Claude Code would read as its own
    // tool names).
    std::fs::write(
        app.path().join(".claude/agents/metric.md"),
        format!(
            "---\nname: metric\ndescription: Converts units.\nmodel: {model}\n---\n\
             You convert units with the convert tool.\n"
        ),
    )
    .expect("write agent");
    let binaries = crate::harnesses::binaries();
    let platform = Platform::start_with(move |config| {
        config.harness = Some(harness);
        config.harness_binaries = binaries;
        config.provider_urls.0.insert(provider, url);
    })
    .await;
    platform.add_project("acme", "bot", app.path()).await;
    platform
}

/// One turn of the app's `metric` agent on `harness`, its model
/// `model` served by the fake `provider` with the org's own key: the
/// provider's requests, the turn's answer and the ledger row.
async fn turn_on(
    harness: HarnessKind,
    model: &str,
    provider: Provider,
    key: &str,
) -> (Vec<(HeaderMap, Value)>, Usage, Value, Value) {
    let fake = Fake::default();
    let url = fake.serve().await;
    let platform = platform(harness, model, provider, url).await;
    let admin = platform.key("acme", Scope::Admin);
    let set = platform
        .call(
            "POST",
            "/v1/admin/orgs/acme/provider-keys",
            Some(&admin),
            json!({ "provider": provider.as_str(), "key": key }),
        )
        .await;
    assert_eq!(set.status, 201, "{}", set.body);
    let created = platform
        .call("POST", "/acme/bot/v1/sessions", Some(&admin), json!({}))
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let session = created.json()["id"].as_str().expect("id").to_owned();
    let turn = platform
        .call(
            "POST",
            &format!("/acme/bot/v1/sessions/{session}/messages"),
            Some(&admin),
            json!({ "text": "How many km is 3 miles? Use the convert tool.", "agent": "metric" }),
        )
        .await;
    assert_eq!(turn.status, 200, "{}", turn.body);
    let answer = turn.json();
    let usage = platform
        .call(
            "GET",
            &format!("/v1/admin/orgs/acme/usage?project=bot&session={session}"),
            Some(&admin),
            Value::Null,
        )
        .await;
    assert_eq!(usage.status, 200, "{}", usage.body);
    let row = usage.json()["rows"][0].clone();
    let reported = *fake.reported.lock().expect("lock");
    (fake.requests(), reported, answer, row)
}

/// The turn's answer and the ledger both say `reported`, and the answer
/// holds the provider's text after a completed tool call.
fn check_usage_and_answer(reported: Usage, answer: &Value, row: &Value) {
    assert!(
        answer.to_string().contains("4.83 km — done ✓"),
        "the provider's answer came back whole: {answer:#}"
    );
    let done = &answer["usage"];
    for (field, value) in [
        ("input_tokens", reported.input_tokens),
        ("output_tokens", reported.output_tokens),
        ("cache_read_tokens", reported.cache_read_tokens),
    ] {
        assert_eq!(done[field], value, "done {field}: {answer:#}");
        assert_eq!(row[field], value, "ledger {field}: {row:#}");
    }
    assert_eq!(row["cache_write_tokens"], 0, "{row:#}");
    assert_eq!(row["tool_calls"], 1, "the plugin ran once: {row:#}");
}

/// Claude Code (Anthropic-shaped) on an OpenAI-compatible provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_runs_on_an_openai_compatible_provider_with_the_orgs_key() {
    if !crate::support::can_jail(
        "claude_code_runs_on_an_openai_compatible_provider_with_the_orgs_key",
    ) {
        return;
    }
    let key = "sk-acme-openai-0123456789";
    let (requests, reported, answer, row) = turn_on(
        HarnessKind::ClaudeCode,
        "openai/gpt-4o-mini",
        Provider::Openai,
        key,
    )
    .await;
    assert!(
        requests.len() >= 2,
        "a tool call and an answer: {} requests; {answer:#}; {:#}",
        requests.len(),
        Value::Array(requests.iter().map(|(_, b)| b.clone()).collect())
    );
    for (headers, body) in &requests {
        assert_eq!(
            headers.get("authorization").and_then(|v| v.to_str().ok()),
            Some(format!("Bearer {key}").as_str())
        );
        assert_eq!(body["model"], "gpt-4o-mini", "the prefix is stripped");
        assert!(
            body["messages"].is_array() && body.get("system").is_none(),
            "{body:#}"
        );
        assert_eq!(body["stream_options"]["include_usage"], true, "{body:#}");
    }
    // The tool's result came back as an OpenAI tool message.
    let last = &requests.last().expect("requests").1;
    let tool = last["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "tool"))
        .unwrap_or_else(|| panic!("a tool message: {last:#}"));
    assert_eq!(tool["tool_call_id"], "call_fake_1");
    assert!(tool["content"].to_string().contains("4.8"), "{tool:#}");
    check_usage_and_answer(reported, &answer, &row);
}

/// OpenCode (OpenAI-shaped) on Anthropic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opencode_runs_on_anthropic_with_the_orgs_key() {
    if !crate::support::can_jail("opencode_runs_on_anthropic_with_the_orgs_key") {
        return;
    }
    let key = "sk-ant-acme-0123456789";
    let (requests, reported, answer, row) = turn_on(
        HarnessKind::Opencode,
        "anthropic/claude-haiku-4-5",
        Provider::Anthropic,
        key,
    )
    .await;
    assert!(
        requests.len() >= 2,
        "a tool call and an answer: {} requests; {answer:#}; {:#}",
        requests.len(),
        Value::Array(requests.iter().map(|(_, b)| b.clone()).collect())
    );
    for (headers, body) in &requests {
        assert_eq!(
            headers.get("x-api-key").and_then(|v| v.to_str().ok()),
            Some(key)
        );
        assert!(headers.contains_key("anthropic-version"));
        assert_eq!(body["model"], "claude-haiku-4-5", "the prefix is stripped");
        assert!(body["max_tokens"].is_u64(), "{body:#}");
        assert!(
            body["messages"]
                .as_array()
                .is_some_and(|m| m.iter().all(|m| m["role"] != "system")),
            "the system prompt is Anthropic's top-level field: {body:#}"
        );
    }
    let last = &requests.last().expect("requests").1;
    let result = last["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
        .find(|b| b["type"] == "tool_result")
        .unwrap_or_else(|| panic!("a tool result: {last:#}"));
    assert_eq!(result["tool_use_id"], "toolu_fake_1");
    assert!(result["content"].to_string().contains("4.8"), "{result:#}");
    check_usage_and_answer(reported, &answer, &row);
}

/// The gateway alone over HTTP: a unary Anthropic request for
/// `openai/...` reaches the platform's OpenAI-compatible upstream
/// translated and comes back as an Anthropic message with the provider's
/// usage; the provider's error comes back in the caller's shape; a
/// provider nothing has a key for is refused, naming it and how to add a
/// key; with no upstream at all the offline model answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_translates_unary_calls_and_errors_and_refuses_unconfigured_providers() {
    use karta_host::gateway::{Gateway, Upstream, UpstreamKind};

    let fake = Fake::default();
    let url = fake.serve().await;
    let gateway = Gateway::standalone(Some(Upstream {
        kind: UpstreamKind::Openai,
        base_url: url,
        api_key: "sk-platform".into(),
        org_key: false,
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (gateway_url, _server) = gateway.serve(listener).expect("serve");
    let key = gateway.credentials().for_session("s1").gateway_key;
    let ask = |gateway_url: String, key: String, model: &'static str| async move {
        let body = json!({
            "model": model, "max_tokens": 64, "system": "Be brief.",
            "messages": [{ "role": "user", "content": "3 mi in km?" }],
        });
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let request = hyper::Request::post(format!("{gateway_url}/v1/messages"))
            .header("x-api-key", key)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))
            .expect("request");
        let response = client.request(request).await.expect("response");
        let status = response.status().as_u16();
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("body")
            .to_bytes();
        (
            status,
            serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
        )
    };

    let (status, message) = ask(gateway_url.clone(), key.clone(), "openai/gpt-4o-mini").await;
    assert_eq!(status, 200, "{message:#}");
    assert_eq!(message["type"], "message");
    assert_eq!(message["content"][0]["text"], ANSWER);
    assert_eq!(message["stop_reason"], "end_turn");
    let reported = *fake.reported.lock().expect("lock");
    assert_eq!(message["usage"]["input_tokens"], reported.input_tokens);
    assert_eq!(
        message["usage"]["cache_read_input_tokens"],
        reported.cache_read_tokens
    );
    assert_eq!(gateway.usage("s1").usage, reported, "metered once");
    let (headers, asked) = fake.requests().pop().expect("a request");
    assert_eq!(
        headers.get("authorization").and_then(|v| v.to_str().ok()),
        Some("Bearer sk-platform")
    );
    assert_eq!(asked["model"], "gpt-4o-mini");
    assert_eq!(
        asked["messages"][0],
        json!({ "role": "system", "content": "Be brief." })
    );

    // The provider's error, in Anthropic's shape with its status.
    let (status, error) = ask(gateway_url.clone(), key.clone(), "openai/rate-limited").await;
    assert_eq!(status, 429, "{error:#}");
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "rate_limit_error");
    assert_eq!(error["error"]["message"], "slow down");

    // Anthropic named, but the only upstream speaks OpenAI: refused.
    let (status, error) = ask(
        gateway_url.clone(),
        key.clone(),
        "anthropic/claude-haiku-4-5",
    )
    .await;
    assert_eq!(status, 422, "{error:#}");
    assert_eq!(error["error"]["type"], "provider_not_configured");
    let said = error["error"]["message"].as_str().unwrap_or_default();
    assert!(
        said.contains("anthropic") && said.contains("karta provider-keys set"),
        "{said}"
    );

    // Nothing configured at all: the offline model answers any name.
    let offline = Gateway::standalone(None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (offline_url, _offline_server) = offline.serve(listener).expect("serve");
    let key = offline.credentials().for_session("s2").gateway_key;
    let (status, message) = ask(offline_url, key, "openai/gpt-4o-mini").await;
    assert_eq!(status, 200, "{message:#}");
    assert_eq!(message["type"], "message");
}
