//! Fixtures shared by the benches: the guest plugins built from source, and
//! a one-plugin app around `units.wasm`.

#![allow(dead_code)] // each bench uses a part

use std::path::{Path, PathBuf};
use std::process::Command;

/// The runtime the benches serve on: two workers, as the project's
/// machine has two cores (`KARTA_BENCH_WORKERS=N` for another count, to
/// see what the runtime's scheduling costs; BENCHMARKS.md, issue 8).
pub fn runtime() -> tokio::runtime::Runtime {
    let workers = std::env::var("KARTA_BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio")
}

/// The provider a bench's Karta gateway forwards to, as Anthropic would
/// be: a standalone offline gateway on a loopback port of `rt`. Its key,
/// its base URL, and the task serving it (it stops when that is dropped).
pub fn offline_provider(
    rt: &tokio::runtime::Runtime,
) -> (
    karta_host::gateway::Gateway,
    String,
    String,
    karta_host::listen::ServerTask,
) {
    offline_provider_around(rt, |router| router)
}

/// [`offline_provider`] with its router wrapped by `wrap` (a bench's own
/// middleware, e.g. one that stamps each call).
pub fn offline_provider_around(
    rt: &tokio::runtime::Runtime,
    wrap: impl FnOnce(axum::Router) -> axum::Router,
) -> (
    karta_host::gateway::Gateway,
    String,
    String,
    karta_host::listen::ServerTask,
) {
    let provider = karta_host::gateway::Gateway::standalone(None);
    let key = provider.credentials().for_session("provider").gateway_key;
    let (url, server) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("the provider's address");
        let server =
            karta_host::listen::spawn_server("provider", listener, wrap(provider.router()));
        (format!("http://{addr}"), server)
    });
    (provider, key, url, server)
}

/// The median of `values` (the upper one of an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The workspace root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `examples/plugins`.
pub fn plugins() -> PathBuf {
    root().join("examples/plugins")
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`, …); 0 when
/// the process is gone.
pub fn status_kib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0)
}

/// The resident memory of `pid` now, in KiB.
pub fn rss_kib(pid: u32) -> f64 {
    status_kib(pid, "VmRSS")
}

/// A temporary copy of `examples/support-bot` with its plugins built in.
pub fn support_bot_app() -> tempfile::TempDir {
    let wasm = build_plugins(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&root().join("examples/support-bot"), dir.path());
    for name in ["units", "files"] {
        std::fs::copy(
            wasm.join(format!("{name}.wasm")),
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
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// Builds the guest plugins for wasm32-wasip2 (and, with `native`, the
/// native packages named) and returns the wasm output directory.
pub fn build_plugins(native: &[&str]) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = plugins().join("target");
    let mut builds = vec![vec!["--target".to_owned(), "wasm32-wasip2".to_owned()]];
    for package in native {
        builds.push(vec!["-p".to_owned(), (*package).to_owned()]);
    }
    for extra in builds {
        let status = Command::new(&cargo)
            .args(["build", "--release", "--manifest-path"])
            .arg(plugins().join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .args(extra)
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "building the bench fixtures failed; is the wasm32-wasip2 target installed? \
             (rustup target add wasm32-wasip2)"
        );
    }
    target.join("wasm32-wasip2/release")
}

/// A temporary app: `AGENTS.md` and the `units` plugin.
pub fn calculator_app() -> tempfile::TempDir {
    let wasm = build_plugins(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("AGENTS.md"), "You are a calculator.").expect("write");
    std::fs::create_dir(dir.path().join("plugins")).expect("mkdir");
    std::fs::copy(
        wasm.join("units.wasm"),
        dir.path().join("plugins/units.wasm"),
    )
    .expect("copy");
    std::fs::write(
        dir.path().join("karta.toml"),
        "[[plugins]]\npath = \"plugins/units.wasm\"\n",
    )
    .expect("write");
    dir
}

/// One turn through the session manager in-process: the times from `send`
/// to the first `text` event and to the `done` event (panics if the turn
/// fails). The turn has ended when it returns.
pub async fn in_process_turn(
    sessions: &std::sync::Arc<karta_host::session::Sessions>,
    id: &str,
    text: &str,
) -> (std::time::Duration, std::time::Duration) {
    use karta_host::Event;
    use karta_host::session::{MessageRequest, Published};

    let started = std::time::Instant::now();
    let turn = sessions
        .send(
            id,
            MessageRequest {
                text: text.into(),
                ..MessageRequest::default()
            },
        )
        .await
        .expect("send");
    let mut events = sessions.subscribe(id, turn.after).await.expect("subscribe");
    let mut first_text = None;
    let mut done = None;
    while let Some(item) = events.recv().await {
        let Published::Event(envelope) = item else {
            panic!("the stream failed: {item:?}");
        };
        match &envelope.event {
            Event::Text(_) if first_text.is_none() => first_text = Some(started.elapsed()),
            Event::Done(_) => done = Some(started.elapsed()),
            Event::Error(error) => panic!("the turn failed: {error:?}"),
            _ => {}
        }
    }
    let summary = turn.finished.await.expect("turn ends");
    assert_eq!(
        summary.status,
        karta_host::TurnStatus::Completed,
        "{summary:?}"
    );
    (
        first_text.expect("a text event"),
        done.expect("a done event"),
    )
}

/// Merges `figures` (key, value, unit) into
/// `target/bench-results/<file>.json`, where `scripts/bench_report.py`
/// reads the figures `benches/targets.toml` names.
pub fn write_results(file: &str, figures: &[(String, f64, &str)]) {
    let dir = root().join("target/bench-results");
    let path = dir.join(format!("{file}.json"));
    let mut all: serde_json::Map<String, serde_json::Value> = std::fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    for (key, value, unit) in figures {
        all.insert(
            key.clone(),
            serde_json::json!({ "value": value, "unit": unit }),
        );
    }
    std::fs::create_dir_all(&dir).expect("mkdir target/bench-results");
    std::fs::write(&path, serde_json::to_vec_pretty(&all).expect("JSON")).expect("write results");
}

/// A client of the benches' own servers and proxies.
pub type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

/// The floor of any proxy on this machine: an axum server that reads the
/// request whole, sends it on to `upstream` with one shared hyper client
/// (`TCP_NODELAY` both ways) and streams the answer back — no key check,
/// no parse, no metering. Its base URL, and the task serving it.
pub async fn bare_proxy(upstream: String, key: String) -> (String, tokio::task::JoinHandle<()>) {
    use axum::body::Body;
    use axum::extract::State;
    use http_body_util::{BodyExt, Full};
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    let state = std::sync::Arc::new((client, upstream, key));
    let router =
        axum::Router::new()
            .route(
                "/v1/messages",
                axum::routing::post(
                    |State(state): State<std::sync::Arc<(HttpClient, String, String)>>,
                     body: Body| async move {
                        let (client, upstream, key) = &*state;
                        let bytes = body.collect().await.expect("the body").to_bytes();
                        let request = hyper::Request::post(format!("{upstream}/v1/messages"))
                            .header("content-type", "application/json")
                            .header("x-api-key", key.as_str())
                            .body(Full::new(bytes))
                            .expect("request");
                        let response = client.request(request).await.expect("the upstream answers");
                        response.map(Body::new)
                    },
                ),
            )
            .with_state(state);
    let (addr, task) = serve_on_loopback(router).await;
    (format!("http://{addr}"), task)
}

/// Serves `router` on a new loopback port (`TCP_NODELAY` on every accepted
/// socket): its address, and the task serving it.
pub async fn serve_on_loopback(
    router: axum::Router,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let incoming = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(incoming, router).await.expect("serve");
    });
    (addr, task)
}
