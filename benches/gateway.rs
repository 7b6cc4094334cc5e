//! The model gateway's hop: one streamed model call through Karta's
//! gateway to a provider, against the same call made straight to that
//! provider (the floor: a harness with no Karta in front of it).
//!
//! Run: `cargo bench --bench gateway`
//!
//! The provider is a standalone offline gateway on loopback (the stand-in
//! for Anthropic everywhere in this project); Karta's gateway is a real
//! host's (`Host::start`, the embedded defaults), forwarding to it with
//! the platform key, so a call through it pays what every model call of a
//! harness pays: the session key checked, the request read and its head
//! parsed, the org's provider key looked up, the budget reservation, the
//! forward over a pooled connection, the answer metered event by event
//! into the ledger. The request is shaped like Claude Code's (a system
//! prompt, tool schemas, a conversation, `stream: true`) at three sizes:
//! a harness's requests grow with its conversation, and the gateway reads
//! each one whole.
//!
//! - `gateway/direct/<size>` and `gateway/through_karta/<size>`: criterion,
//!   each route on its own (calls back to back);
//! - then interleaved rounds (one call of each route per round, 5 ms
//!   apart, as a harness's model calls come): the median of the per-round
//!   differences is the hop, into `target/bench-results/gateway.json`
//!   (for `scripts/bench.sh`).

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use karta_host::gateway::{Upstream, UpstreamKind};
use karta_host::{Host, HostConfig};
use serde_json::{Value, json};

use common::HttpClient;

/// Request sizes: a short conversation, a long one, a very long one.
const SIZES: [(&str, usize); 3] = [
    ("10KiB", 10 * 1024),
    ("100KiB", 100 * 1024),
    ("1MiB", 1024 * 1024),
];

/// A request shaped like Claude Code's, about `size` bytes of JSON.
fn claude_like_request(size: usize) -> Bytes {
    let tools: Vec<Value> = (0..12)
        .map(|i| {
            json!({
                "name": format!("Tool{i}"),
                "description": "Reads or changes something in the workspace. ".repeat(6),
                "input_schema": {
                    "type": "object",
                    "properties": {
                        "path": { "type": "string", "description": "An absolute path." },
                        "limit": { "type": "integer", "minimum": 1 },
                        "flags": { "type": "array", "items": { "type": "string", "enum": ["a", "b", "c"] } },
                    },
                    "required": ["path"],
                    "additionalProperties": false,
                },
            })
        })
        .collect();
    let mut request = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 32000,
        "stream": true,
        "system": [{ "type": "text", "text": "You are a support agent. ".repeat(80) }],
        "tools": tools,
        "metadata": { "user_id": "user_0123456789abcdef" },
        "messages": [],
    });
    let mut messages = Vec::new();
    let mut n = 0;
    while request.to_string().len()
        + messages
            .iter()
            .map(|m: &Value| m.to_string().len())
            .sum::<usize>()
        < size
    {
        messages.push(json!({
            "role": "user",
            "content": [{ "type": "text", "text": format!("Question {n}: where is order {n}? ").repeat(8) }],
        }));
        messages.push(json!({
            "role": "assistant",
            "content": [
                { "type": "text", "text": "Let me look that up for you. ".repeat(6) },
                { "type": "tool_use", "id": format!("toolu_{n:020}"), "name": "Tool1",
                  "input": { "path": format!("/orders/{n}.json"), "limit": 5 } },
            ],
        }));
        messages.push(json!({
            "role": "user",
            "content": [{ "type": "tool_result", "tool_use_id": format!("toolu_{n:020}"),
                          "content": "{\"status\": \"shipped\", \"eta\": \"tomorrow\"}" }],
        }));
        messages.push(json!({
            "role": "assistant",
            "content": [{ "type": "text", "text": format!("Order {n} has shipped. ") }],
        }));
        n += 1;
    }
    messages.push(json!({ "role": "user", "content": "hello" }));
    request["messages"] = Value::Array(messages);
    Bytes::from(request.to_string())
}

/// One streamed call: POST `body` to `url` with `key`, read the answer to
/// its end; the time it took.
async fn call(client: &HttpClient, url: &str, key: &str, body: &Bytes) -> Duration {
    let started = Instant::now();
    let request = hyper::Request::post(url)
        .header("content-type", "application/json")
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .body(Full::new(body.clone()))
        .expect("request");
    let response = client.request(request).await.expect("the call answers");
    assert_eq!(response.status(), 200, "the call succeeds");
    let answer = response
        .into_body()
        .collect()
        .await
        .expect("the answer")
        .to_bytes();
    let elapsed = started.elapsed();
    assert!(
        answer.ends_with(b"\n\n") && has_message_stop(&answer),
        "a whole streamed answer"
    );
    elapsed
}

fn has_message_stop(answer: &[u8]) -> bool {
    answer.windows(12).any(|w| w == b"message_stop")
}

fn bench(c: &mut Criterion) {
    let rt = common::runtime();
    let app = common::calculator_app();
    let data = tempfile::tempdir().expect("tempdir");

    let (_provider, provider_key, provider_url, _provider_server) = common::offline_provider(&rt);
    let host = rt.block_on(async {
        let mut config = HostConfig::new(app.path());
        config.data_dir = data.path().to_path_buf();
        config.upstream = Some(Upstream {
            kind: UpstreamKind::Anthropic,
            base_url: provider_url.clone(),
            api_key: provider_key.clone(),
            org_key: false,
        });
        Host::start(config).await.expect("host starts")
    });
    let sessions = host.sessions().clone();
    let session = rt
        .block_on(sessions.create(None, Default::default()))
        .expect("a session")
        .id;
    let session_key = sessions
        .gateway()
        .credentials()
        .for_session(&session)
        .gateway_key;
    let (proxy_url, _proxy) = rt.block_on(common::bare_proxy(
        provider_url.clone(),
        provider_key.clone(),
    ));
    let proxy_url = format!("{proxy_url}/v1/messages");
    let direct_url = format!("{provider_url}/v1/messages");
    let karta_url = format!("{}/v1/messages", host.gateway_url());

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    let routes = [
        ("direct", direct_url.as_str(), provider_key.as_str()),
        ("through_karta", karta_url.as_str(), session_key.as_str()),
        (
            "through_bare_proxy",
            proxy_url.as_str(),
            provider_key.as_str(),
        ),
    ];

    let mut group = c.benchmark_group("gateway");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    let bodies: Vec<(&str, Bytes)> = SIZES
        .iter()
        .map(|(name, size)| (*name, claude_like_request(*size)))
        .collect();
    for (size, body) in &bodies {
        for (route, url, key) in routes {
            group.bench_function(format!("{route}/{size}"), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            total += call(&client, url, key, body).await;
                        }
                        total
                    })
                })
            });
        }
    }
    group.finish();

    let rounds: usize = std::env::var("KARTA_GATEWAY_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
        .max(1);
    println!();
    println!(
        "gateway: interleaved ({rounds} rounds a size, one call of each route per round, 5 ms apart; medians):"
    );
    println!(
        "  {:<8} {:>9} {:>10} {:>12} {:>14} {:>14} {:>14}",
        "request", "bytes", "direct", "via Karta", "Karta's hop", "bare proxy", "proxy's hop"
    );
    let mut results = Vec::new();
    for (size, body) in &bodies {
        let mut times: [Vec<f64>; 3] = Default::default();
        let mut hops: [Vec<f64>; 2] = Default::default();
        rt.block_on(async {
            for round in 0..rounds {
                let mut this_round = [0.0; 3];
                for i in 0..routes.len() {
                    let which = (round + i) % routes.len();
                    let (_, url, key) = routes[which];
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    this_round[which] = call(&client, url, key, body).await.as_secs_f64() * 1e6;
                }
                for (all, time) in times.iter_mut().zip(this_round) {
                    all.push(time);
                }
                hops[0].push(this_round[1] - this_round[0]);
                hops[1].push(this_round[2] - this_round[0]);
            }
        });
        let [direct, through, proxy] = times.map(common::median);
        let [hop, proxy_hop] = hops.map(common::median);
        println!(
            "  {size:<8} {:>9} {:>7.0} µs {:>9.0} µs {:>+11.0} µs {:>11.0} µs {:>+11.0} µs",
            body.len(),
            direct,
            through,
            hop,
            proxy,
            proxy_hop,
        );
        results.push((format!("direct_{size}_p50"), direct, "us"));
        results.push((format!("through_karta_{size}_p50"), through, "us"));
        results.push((format!("hop_{size}_p50"), hop, "us"));
        results.push((format!("bare_proxy_hop_{size}_p50"), proxy_hop, "us"));
    }
    common::write_results("gateway", &results);
    drop(host);
}

criterion_group!(benches, bench);
criterion_main!(benches);
