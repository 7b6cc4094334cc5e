//! N concurrent streaming sessions over real HTTP on loopback: every session
//! sends one message whose turn calls a wasm tool, and reads its SSE stream to
//! the end. Prints events/s, turns/s and the process's peak RSS (server and
//! clients share the process, so the figure bounds the server's).
//!
//! Run: `cargo bench --bench concurrent_sessions` (N = 500; set
//! `KARTA_BENCH_SESSIONS` to change it).

use std::time::Instant;

mod common;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use karta_host::{Host, HostConfig};
use serde_json::{Value, json};

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let n: usize = std::env::var("KARTA_BENCH_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(run(n));
}

fn peak_rss_mib() -> f64 {
    common::status_kib(std::process::id(), "VmHWM") / 1024.0
}

async fn run(n: usize) {
    let app = common::calculator_app();
    let data = tempfile::tempdir().expect("tempdir");
    let mut config = HostConfig::new(app.path());
    // The app has an AGENTS.md; these benches measure the builtin loop.
    config.harness = Some(karta_host::app::HarnessKind::Builtin);
    config.data_dir = data.path().to_path_buf();
    let host = Host::start(config).await.expect("host");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = host.clone();
    tokio::spawn(async move { server.serve(listener, std::future::pending()).await });

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(n)
        .build(connector);
    let post = move |path: String, body: Value| {
        let client = client.clone();
        async move {
            let request = hyper::Request::post(format!("http://{addr}{path}"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .expect("request");
            client.request(request).await.expect("response")
        }
    };

    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let response = post("/v1/sessions".into(), json!({})).await;
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let session: Value = serde_json::from_slice(&bytes).expect("JSON");
        ids.push(session["id"].as_str().expect("id").to_owned());
    }
    let rss_before = peak_rss_mib();

    let started = Instant::now();
    let tasks: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let post = post.clone();
            tokio::spawn(async move {
                let response = post(
                    format!("/v1/sessions/{id}/messages"),
                    json!({ "text": "/tool calc {\"expression\": \"6*7\"}", "stream": true }),
                )
                .await;
                let mut body = response.into_body();
                let mut events = 0usize;
                let mut done = false;
                while let Some(frame) = body.frame().await {
                    let Ok(data) = frame.expect("frame").into_data() else {
                        continue;
                    };
                    let text = String::from_utf8_lossy(&data);
                    events += text.matches("\nid: ").count();
                    done |= text.contains("event: done");
                }
                assert!(done, "every stream ends with done");
                events
            })
        })
        .collect();
    let mut events = 0;
    for task in tasks {
        events += task.await.expect("task");
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("concurrent_sessions: N = {n}");
    println!("  wall time          {elapsed:.2} s");
    println!(
        "  events             {events} ({:.0} events/s)",
        events as f64 / elapsed
    );
    println!(
        "  turns              {n} ({:.0} turns/s)",
        n as f64 / elapsed
    );
    println!(
        "  peak RSS           {:.0} MiB (after creating the sessions: {rss_before:.0} MiB)",
        peak_rss_mib()
    );
}
