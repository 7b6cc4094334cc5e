//! Resident memory of `karta serve` as sessions pile up: the release binary
//! serving `examples/hello` on the builtin harness, driven over HTTP the way
//! issue 8 measured it (10,000 `POST /v1/sessions`), then with a turn in
//! 1,000 of them. Sessions live on disk; only those in use are in memory,
//! so RSS should stay flat.
//!
//! Run: `cargo bench --bench session_memory` (prints a table; set
//! `KARTA_BENCH_SESSIONS` for another count).

use std::io::BufRead;
use std::process::{Command, Stdio};

mod common;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// Requests in flight at once.
const CONCURRENCY: usize = 8;

fn main() {
    let n: usize = std::env::var("KARTA_BENCH_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let data = tempfile::tempdir().expect("tempdir");
    let mut server = Command::new(env!("CARGO_BIN_EXE_karta"))
        .arg("serve")
        .arg(common::root().join("examples/hello"))
        .args(["--listen", "127.0.0.1:0", "--harness", "builtin", "--data"])
        .arg(data.path())
        .stderr(Stdio::piped())
        .spawn()
        .expect("karta serve starts");
    let pid = server.id();
    let mut lines = std::io::BufReader::new(server.stderr.take().expect("stderr")).lines();
    let url = loop {
        let line = lines.next().expect("a banner line").expect("utf-8");
        if let Some((_, rest)) = line.split_once("listening on ") {
            break rest.split_whitespace().next().expect("url").to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});

    let rt = common::runtime();
    let mib = || common::rss_kib(pid) / 1024.0;
    let mut rows = vec![("started".to_owned(), mib())];
    let ids = rt.block_on(async {
        let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let mut ids = Vec::with_capacity(n);
        let quarter = (n / 4).max(1);
        while ids.len() < n {
            let batch = CONCURRENCY.min(n - ids.len());
            let created = futures_util::future::join_all((0..batch).map(|_| {
                post(
                    &client,
                    format!("{url}/v1/sessions"),
                    json!({ "metadata": { "k": "v" } }),
                )
            }))
            .await;
            for session in created {
                ids.push(session["id"].as_str().expect("id").to_owned());
            }
            if ids.len() % quarter < batch {
                rows.push((format!("{} sessions created", ids.len()), mib()));
            }
        }
        let turns = (n / 10).max(1);
        for chunk in ids[..turns].chunks(CONCURRENCY) {
            futures_util::future::join_all(chunk.iter().map(|id| {
                post(
                    &client,
                    format!("{url}/v1/sessions/{id}/messages"),
                    json!({ "text": "hello" }),
                )
            }))
            .await;
        }
        rows.push((format!("+ a turn in {turns} of them"), mib()));
        let listed = get(&client, format!("{url}/v1/sessions?k=v&per_page=100")).await;
        assert_eq!(listed["total"], n);
        rows.push(("+ list them (by metadata)".to_owned(), mib()));
        ids
    });
    let _ = server.kill();
    let _ = server.wait();
    println!();
    println!(
        "karta serve examples/hello, RSS as sessions pile up ({} sessions):",
        ids.len()
    );
    println!("| after | RSS (MiB) |");
    println!("| --- | ---: |");
    for (what, mib) in &rows {
        println!("| {what} | {mib:.1} |");
    }
    let growth = rows.last().map_or(0.0, |r| r.1) - rows[0].1;
    println!(
        "growth: {growth:.1} MiB in all, {:.2} KiB per session",
        growth * 1024.0 / ids.len() as f64
    );
}

async fn post(client: &Client<HttpConnector, Full<Bytes>>, url: String, body: Value) -> Value {
    let request = hyper::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    read(client.request(request).await.expect("response")).await
}

async fn get(client: &Client<HttpConnector, Full<Bytes>>, url: String) -> Value {
    let request = hyper::Request::get(url)
        .body(Full::new(Bytes::new()))
        .expect("request");
    read(client.request(request).await.expect("response")).await
}

async fn read(response: hyper::Response<hyper::body::Incoming>) -> Value {
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert!(
        status.is_success(),
        "{status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    serde_json::from_slice(&bytes).expect("JSON")
}
