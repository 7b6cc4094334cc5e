//! Issue 13: the OpenAI adapters (`…/v1/chat/completions`, `…/v1/responses`)
//! driven by the official `openai` Python SDK — installed by
//! `scripts/install-openai-python.sh` into `tools/openai-python/venv` —
//! with only `base_url` and `api_key` changed (tests/clients/openai_client.py
//! checks every answer against the SDK's own types, strictly), and the
//! error shape over raw HTTP.

use std::path::PathBuf;
use std::process::Command;

use bytes::Bytes;
use karta_host::auth::Scope;
use serde_json::json;

use crate::support::root;
use crate::tenancy::Platform;

/// The venv's python (`KARTA_OPENAI_PYTHON` overrides); a missing venv
/// fails the test with the command that installs it.
fn python() -> PathBuf {
    let python = std::env::var_os("KARTA_OPENAI_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("tools/openai-python/venv/bin/python"));
    assert!(
        python.exists(),
        "the OpenAI SDK is not installed ({}): run scripts/install-openai-python.sh",
        python.display()
    );
    python
}

/// acme/shop and acme/help run examples/hello; acme/bot the support bot;
/// acme/help has a budget of 0 (every turn refused).
async fn platform() -> Platform {
    let platform = Platform::start().await;
    let app = crate::sessions::support_bot();
    platform.add_project("acme", "bot", app.path()).await;
    let admin = platform.key("acme", Scope::Admin);
    let budget = platform
        .call(
            "PUT",
            "/v1/admin/orgs/acme/budgets",
            Some(&admin),
            json!({ "project": "help", "period": "day", "cap_micros": 0 }),
        )
        .await;
    assert_eq!(budget.status, 200, "{}", budget.body);
    platform
}

/// The official SDK, unary and streaming, both APIs, continuation, tools,
/// approvals, flat routes and errors: see tests/clients/openai_client.py.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_sdk_works_unchanged() {
    let python = python();
    let platform = platform().await;
    let key = platform.key("acme", Scope::Write);
    let globex = platform.key("globex", Scope::Write);
    let token = platform.token("acme", "shop", None, None);
    let script = root().join("tests/clients/openai_client.py");
    let url = format!("http://{}", platform.addr);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .env("KARTA_URL", url)
            .env("KARTA_KEY", key)
            .env("KARTA_GLOBEX_KEY", globex)
            .env("KARTA_TOKEN", token)
            .env("NO_PROXY", "*")
            .env_remove("OPENAI_BASE_URL")
            .env_remove("OPENAI_API_KEY")
            .output()
            .expect("run python")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the OpenAI SDK client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("client checks ok"), "{stdout}\n{stderr}");
}

/// Every refusal on these routes is OpenAI's `{"error": {message, type,
/// param, code}}`: malformed JSON, unknown and missing parameters, a body
/// too large, no credential, another org's project — and nothing ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_take_openais_error_shape() {
    let platform = Platform::start().await;
    let key = platform.key("acme", Scope::Write);
    let globex = platform.key("globex", Scope::Write);
    let bearer = format!("Bearer {key}");
    let headers = [
        ("content-type", "application/json"),
        ("authorization", bearer.as_str()),
    ];
    let big = format!(
        "{{\"model\": \"m\", \"input\": \"{}\"}}",
        "x".repeat(2 << 20)
    );
    let chat = "/acme/shop/v1/chat/completions";
    let responses = "/acme/shop/v1/responses";
    let messages = json!([{ "role": "user", "content": "hi" }]);
    let cases: Vec<(&str, Bytes, u16, Option<&str>)> = vec![
        (chat, Bytes::from("{\"model\": "), 400, None),
        (
            chat,
            Bytes::from(json!({ "model": "m", "messages": messages, "bogus": 1 }).to_string()),
            400,
            Some("bogus"),
        ),
        (
            chat,
            Bytes::from(json!({ "messages": messages }).to_string()),
            400,
            Some("model"),
        ),
        (
            chat,
            Bytes::from(json!({ "model": "m", "messages": messages, "n": 2 }).to_string()),
            400,
            Some("n"),
        ),
        (
            chat,
            Bytes::from(json!({ "model": "m", "messages": [] }).to_string()),
            400,
            Some("messages"),
        ),
        (
            responses,
            Bytes::from(json!({ "model": "m", "input": 5 }).to_string()),
            400,
            Some("input"),
        ),
        (responses, Bytes::from(big), 413, None),
    ];
    for (path, body, status, param) in cases {
        let answer = platform.request("POST", path, &headers, body).await;
        assert_eq!(answer.status, status, "{path}: {}", answer.body);
        let error = &answer.json()["error"];
        assert!(error["message"].is_string(), "{}", answer.body);
        assert!(error["type"].is_string(), "{}", answer.body);
        assert_eq!(error["param"].as_str(), param, "{}", answer.body);
        assert!(error.get("code").is_some(), "{}", answer.body);
    }
    let body = json!({ "model": "m", "input": "hi" });
    for (credential, status) in [(None, 401), (Some(globex.as_str()), 404)] {
        let answer = platform
            .call("POST", responses, credential, body.clone())
            .await;
        assert_eq!(answer.status, status, "{}", answer.body);
        assert!(
            answer.json()["error"]["message"].is_string(),
            "{}",
            answer.body
        );
    }
    let sessions = platform
        .call(
            "GET",
            "/acme/shop/v1/sessions",
            Some(&key),
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(sessions.json()["total"], 0, "{}", sessions.body);
}

/// In dev mode (`karta serve DIR`, no keys) the flat routes reach the
/// folder served, without a credential, as the native routes do — and the
/// sessions they create are the folder's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_serves_the_flat_routes() {
    let (server, _app, _data) = crate::sessions::support_bot_server().await;
    let (status, completion) = server
        .post(
            "/v1/chat/completions",
            json!({ "model": "m", "messages": [{ "role": "user", "content": "/say dev" }] }),
        )
        .await;
    assert_eq!(status, 200, "{completion}");
    assert_eq!(completion["choices"][0]["message"]["content"], "dev");
    let (status, response) = server
        .post("/v1/responses", json!({ "input": "first" }))
        .await;
    assert_eq!(status, 200, "{response}");
    let (status, again) = server
        .post(
            "/v1/responses",
            json!({ "input": "second", "previous_response_id": response["id"] }),
        )
        .await;
    assert_eq!(status, 200, "{again}");
    let text = again["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains("Earlier you said: \"first\""), "{again}");
    let (_, sessions) = server.get("/v1/sessions?api=openai.responses").await;
    assert_eq!(sessions["total"], 1, "{sessions}");
    server.stop().await;
}
