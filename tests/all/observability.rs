//! What an operator sees: `/metrics`, `/openapi.json`, logs from `karta
//! serve`, and one count of tokens everywhere.

use serde_json::{Value, json};

use crate::sessions::{
    get_text, new_session, support_bot, support_bot_server, turn_with_one_usage,
};
use crate::support::ServeProcess;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_builtin_turn_counts_its_tokens_once_and_shows_in_the_metrics() {
    let (server, _app, _data) = support_bot_server().await;
    let id = new_session(&server, json!({})).await;
    // Two model steps (a tool call, then the answer): the second reads the
    // system prompt from the offline model's cache, the first writes it.
    let events = turn_with_one_usage(
        &server,
        &id,
        "/tool calc {\"expression\": \"2+2\"}\n/say four",
        true,
    )
    .await;
    let done: karta_host::Usage =
        serde_json::from_value(events.last().expect("done")["data"]["usage"].clone())
            .expect("usage");
    assert!(
        done.cache_read_tokens > 0 && done.cache_write_tokens > 0,
        "every kind of token is counted: {done:?}"
    );

    // The turn's task counts it just after it publishes `done` (the client
    // is not kept waiting for the bookkeeping), and the session leaves
    // memory once its stream is gone: read until both have happened.
    let expected = [
        "karta_turns_total{harness=\"builtin\",outcome=\"completed\"} 1",
        "karta_tool_calls_total{kind=\"plugin\",outcome=\"ok\"} 1",
        "karta_live_sessions 0",
        "karta_harness_processes 0",
    ];
    let mut metrics = String::new();
    for _ in 0..250 {
        metrics = get_text(&server.url("/metrics")).await;
        if expected
            .iter()
            .all(|line| metrics.lines().any(|l| l == *line))
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for line in expected {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    assert!(
        metrics.contains("karta_turn_duration_seconds_count{harness=\"builtin\"} 1"),
        "{metrics}"
    );
    // The host's own parts of the turn, each timed once.
    for phase in ["start", "end"] {
        let value = |what: &str| -> f64 {
            let prefix =
                format!("karta_turn_host_seconds_{what}{{harness=\"builtin\",phase=\"{phase}\"}} ");
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("{prefix} in\n{metrics}"))
        };
        assert_eq!(value("count"), 1.0, "phase {phase}");
        assert!(value("sum") > 0.0, "phase {phase} took time");
    }
    let fuel: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("karta_tool_fuel_total "))
        .and_then(|n| n.trim().parse().ok())
        .expect("fuel counted");
    assert!(fuel > 0);
    server.stop().await;
}

/// Every route of the router is in the OpenAPI document, and everything
/// the document names is routed: both come from the same annotations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_names_every_route() {
    let (server, _app, _data) = support_bot_server().await;
    let document: Value =
        serde_json::from_str(&get_text(&server.url("/openapi.json")).await).expect("JSON");
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3."))
    );
    let paths = document["paths"].as_object().expect("paths");
    let mut documented = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().expect("path item").keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    let session_routes = [
        "POST /v1/sessions",
        "GET /v1/sessions",
        "GET /v1/sessions/{id}",
        "DELETE /v1/sessions/{id}",
        "POST /v1/sessions/{id}/messages",
        "PUT /v1/sessions/{id}/inputs/{request_id}",
        "GET /v1/sessions/{id}/transcript",
        "GET /v1/sessions/{id}/events",
        "POST /v1/sessions/{id}/cancel",
        "POST /v1/managed-agents/sessions",
        "GET /v1/managed-agents/sessions",
        "GET /v1/managed-agents/sessions/{id}",
        "POST /v1/managed-agents/sessions/{id}/events",
        "GET /v1/managed-agents/sessions/{id}/events/stream",
        "GET /v1/managed-agents/sessions/{id}/transcript",
        "POST /v1/managed-agents/sessions/{id}/files",
        "POST /v1/chat/completions",
        "POST /v1/responses",
    ];
    let project = "/v1/admin/orgs/{org}/projects/{project}";
    let mut expected: Vec<String> = [
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /openapi.json",
        "GET /",
        "GET /_karta/chat.js",
        "GET /_karta/chat.css",
        "GET /{org}/{project}",
        "GET /{org}/{project}/",
        "POST /v1/embed/session-tokens",
        "GET /v1/admin/orgs",
        "POST /v1/admin/orgs",
        "GET /v1/admin/orgs/{org}/projects",
        "POST /v1/admin/orgs/{org}/projects",
        "GET /v1/admin/orgs/{org}/keys",
        "POST /v1/admin/orgs/{org}/keys",
        "DELETE /v1/admin/orgs/{org}/keys/{key_id}",
        "POST /v1/admin/token-secret/rotate",
        "GET /v1/admin/orgs/{org}/provider-keys",
        "POST /v1/admin/orgs/{org}/provider-keys",
        "DELETE /v1/admin/orgs/{org}/provider-keys/{provider}",
        "GET /v1/admin/orgs/{org}/usage",
        "GET /v1/admin/orgs/{org}/budgets",
        "PUT /v1/admin/orgs/{org}/budgets",
        "GET /v1/admin/orgs/{org}/webhooks",
        "POST /v1/admin/orgs/{org}/webhooks",
        "DELETE /v1/admin/orgs/{org}/webhooks/{webhook_id}",
        "POST /v1/admin/orgs/{org}/webhooks/{webhook_id}/enable",
        "GET /v1/admin/orgs/{org}/webhooks/{webhook_id}/deliveries",
    ]
    .map(str::to_owned)
    .into_iter()
    // The session routes, flat and on every project's routes.
    .chain(session_routes.iter().map(|r| r.to_string()))
    .chain(
        session_routes
            .iter()
            .map(|r| r.replacen(" /v1", " /{org}/{project}/v1", 1)),
    )
    .chain(
        [
            "GET {p}/embed-keys",
            "POST {p}/embed-keys",
            "DELETE {p}/embed-keys/{key_id}",
            "POST {p}/identity-secret",
            "POST {p}/tokens",
            "GET {p}/releases",
            "POST {p}/releases",
            "POST {p}/activate",
            "POST {p}/rollback",
            "GET {p}/audit",
        ]
        .map(|r| r.replace("{p}", project)),
    )
    .collect();
    expected.sort();
    assert_eq!(documented, expected);

    // Everything documented is routed (not the fallback's "no such route").
    for route in &documented {
        let (method, path) = route.split_once(' ').expect("method and path");
        // The folder served is the dev org's project (an unknown project's
        // page is the same 404 as an unknown route).
        let path = path
            .replace("{org}", karta_host::projects::DEV_ORG)
            .replace("{project}", &karta_host::projects::slug_of("support-bot"))
            .replace("{id}", "ses_none")
            .replace("{request_id}", "req_none");
        let (_, body) =
            crate::sessions::send(method, &server.url(&path), json!({"text": "x"})).await;
        assert_ne!(body["message"], "no such route", "{route}");
    }
    let (status, body) = server.get("/v1/not-a-route").await;
    assert_eq!(
        (status, body["message"].as_str()),
        (404, Some("no such route"))
    );
    server.stop().await;
}

/// `karta serve` logs each request (with its session) and a failed turn,
/// as JSON lines with `--log-format json`, and serves `/metrics` and
/// `/openapi.json`.
#[test]
fn serve_logs_requests_and_failed_turns() {
    let app = support_bot();
    let data = tempfile::tempdir().expect("tempdir");
    let mut server = ServeProcess::start(
        app.path(),
        data.path(),
        &["--log-format", "json"],
        &[("RUST_LOG", "info")],
    );
    let url = server.url.clone();
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let id = runtime.block_on(async {
        let (_, session) =
            crate::sessions::send("POST", &format!("{url}/v1/sessions"), json!({})).await;
        let id = session["id"].as_str().expect("id").to_owned();
        let (status, answer) = crate::sessions::send(
            "POST",
            &format!("{url}/v1/sessions/{id}/messages"),
            json!({ "text": "/fail 500 the model broke" }),
        )
        .await;
        assert_eq!((status, answer["status"].as_str()), (200, Some("error")));
        // The process serves its metrics and its OpenAPI document too.
        let metrics = get_text(&format!("{url}/metrics")).await;
        // (The turn is counted just after its end is published: its line
        // may not be there yet, the family's is.)
        assert!(
            metrics.lines().any(|l| l == "# TYPE karta_turns counter"),
            "{metrics}"
        );
        let document: Value =
            serde_json::from_str(&get_text(&format!("{url}/openapi.json")).await).expect("JSON");
        assert!(document["paths"]["/v1/sessions/{id}/messages"]["post"].is_object());
        id
    });
    server.kill();
    let json_lines: Vec<Value> = server
        .stderr
        .iter()
        .filter_map(|line| serde_json::from_str(&line).ok())
        .collect();
    let failed = json_lines
        .iter()
        .find(|l| l["message"] == "the turn failed")
        .unwrap_or_else(|| panic!("a failed-turn line in {json_lines:#?}"));
    assert_eq!(failed["code"], "model_error", "{failed}");
    assert!(
        failed.to_string().contains(&id),
        "the turn's span names its session: {failed}"
    );
    assert!(
        json_lines.iter().any(|l| {
            l["message"] == "finished processing request" && l.to_string().contains(&id)
        }),
        "requests are logged with their session: {json_lines:#?}"
    );
    // The model call the turn made went through the gateway in a span of
    // its own, naming the session (its 500 is logged there).
    let gateway_failure = json_lines
        .iter()
        .find(|l| l["span"]["server"] == "gateway" && l["span"]["route"] == "/v1/messages");
    let gateway_failure =
        gateway_failure.unwrap_or_else(|| panic!("a gateway request's line in {json_lines:#?}"));
    assert_eq!(
        gateway_failure["span"]["session"],
        id.as_str(),
        "{gateway_failure}"
    );
}
