//! Per-call cost of an app's Python MCP server (the example app's
//! `sre_tools`): compiled to a component and run in wasmtime, against the
//! same script as a process.
//!
//! Run: `cargo bench --bench python_mcp` (needs componentize-py:
//! `scripts/install-componentize-py.sh`; the component and its native code
//! are cached in `target/pymcp-bench-cache`, so only the first run compiles).
//!
//! - `component/ping`: a fresh instance, `initialize`, `ping` — the fixed
//!   cost of one request.
//! - `component/error_rate`: the same plus the tool (scans 2 000 log lines).
//! - `process/spawn_per_call/error_rate`: `python3 tools/sre_tools.py`
//!   started for the call (initialize, initialized, the call), as a stdio
//!   server started per call.
//! - `process/warm/error_rate`: that process kept running, one request line
//!   in, one response line out (what a harness's long-lived stdio server
//!   costs per call once started).
//! - `jailed/spawn_per_call/error_rate` and `jailed/warm/error_rate`: the
//!   same two, in the jail a harness's stdio server runs in (needs root;
//!   skipped otherwise) — the fallback when a server cannot be compiled.

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use karta_host::plugin::python_mcp::{self, DEFAULT_LIMITS, ServerCallOptions};
use karta_host::plugin::{PluginRuntime, RuntimeConfig};
use serde_json::{Value, json};

fn app() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/incident-investigator")
}

fn call(id: u64) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": { "name": "error_rate", "arguments": { "service": "checkout" } } })
}

const INIT: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"0"}}}"#;
const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

fn bench(c: &mut Criterion) {
    if let Err(e) = python_mcp::locate_componentize_py() {
        eprintln!("python_mcp bench skipped: {e}");
        return;
    }
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pymcp-bench-cache");
    let started = Instant::now();
    let compiled = python_mcp::compile(&app(), "python3", &["tools/sre_tools.py".into()], &cache)
        .expect("sre_tools compiles");
    eprintln!(
        "componentize-py: {:?} (cached: {}), {} bytes",
        started.elapsed(),
        compiled.cached,
        std::fs::metadata(&compiled.wasm_path)
            .map(|m| m.len())
            .unwrap_or(0)
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let runtime = PluginRuntime::new(RuntimeConfig::default()).expect("runtime");
    let started = Instant::now();
    let server = rt
        .block_on(runtime.load_python_server("sre_tools", &compiled, &app(), DEFAULT_LIMITS))
        .expect("loads");
    eprintln!(
        "load: {:?} (native code {:?})",
        started.elapsed(),
        server.artifact()
    );
    let options = ServerCallOptions::default();
    let outcome = rt
        .block_on(server.request(&call(1), &options))
        .expect("error_rate");
    let ping = rt
        .block_on(server.request(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}),
            &options,
        ))
        .expect("ping");
    eprintln!(
        "fuel: ping {} , error_rate {}",
        ping.fuel_consumed, outcome.fuel_consumed
    );

    let mut group = c.benchmark_group("python_mcp");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("component/ping", |b| {
        let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
        b.iter(|| rt.block_on(server.request(&ping, &options)).expect("ping"))
    });
    group.bench_function("component/error_rate", |b| {
        let request = call(1);
        b.iter(|| {
            rt.block_on(server.request(&request, &options))
                .expect("call")
        })
    });

    group.bench_function("process/spawn_per_call/error_rate", |b| {
        let request = call(1).to_string();
        b.iter(|| {
            let mut child = Command::new("python3")
                .arg("tools/sre_tools.py")
                .current_dir(app())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn");
            let mut stdin = child.stdin.take().expect("stdin");
            writeln!(stdin, "{INIT}\n{INITIALIZED}\n{request}").expect("write");
            drop(stdin);
            let output = child.wait_with_output().expect("wait");
            assert!(output.stdout.len() > 100);
        })
    });

    group.bench_function("process/warm/error_rate", |b| {
        let mut child = Command::new("python3")
            .arg("tools/sre_tools.py")
            .current_dir(app())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        writeln!(stdin, "{INIT}\n{INITIALIZED}").expect("write");
        stdout.read_line(&mut line).expect("initialize answer");
        let request = call(1).to_string();
        b.iter(|| {
            writeln!(stdin, "{request}").expect("write");
            line.clear();
            stdout.read_line(&mut line).expect("read");
            assert!(line.len() > 100);
        });
        drop(stdin);
        let _ = child.wait();
    });
    if karta_harness::jail::privileged() {
        jailed(&mut group, &rt);
    } else {
        eprintln!("python_mcp: the jailed variants need root; skipped");
    }
    group.finish();
}

/// The server as a process in the jail (the app's folder read-only, a
/// scratch workspace and home), spawned per call and kept warm.
fn jailed(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
) {
    use karta_harness::process::{HarnessProcess, JailLimits, JailSpec, Spawn};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

    let scratch = tempfile::tempdir().expect("tempdir");
    let (workspace, home) = (scratch.path().join("ws"), scratch.path().join("home"));
    for dir in [&workspace, &home.join("tmp")] {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    let spawn = Spawn {
        program: PathBuf::from("/usr/bin/python3"),
        args: vec!["tools/sre_tools.py".into()],
        cwd: app(),
        env: [("PATH".to_owned(), "/usr/bin:/bin".to_owned())].into(),
        stdin: true,
        stdout: true,
        jail: Some(JailSpec {
            read: vec![app()],
            write: vec![workspace.clone(), home.clone()],
            hidden: Vec::new(),
            scratch: Some(home.join("tmp")),
            connect_ports: Vec::new(),
            bind_ports: Vec::new(),
            limits: JailLimits::default(),
        }),
        nice: None,
    };
    let request = call(1).to_string();
    group.bench_function("jailed/spawn_per_call/error_rate", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut process = HarnessProcess::start(&spawn).expect("jailed");
                let mut stdin = process.child.stdin.take().expect("stdin");
                let stdout = process.child.stdout.take().expect("stdout");
                stdin
                    .write_all(format!("{INIT}\n{INITIALIZED}\n{request}\n").as_bytes())
                    .await
                    .expect("write");
                drop(stdin);
                let mut lines = tokio::io::BufReader::new(stdout).lines();
                let mut answers = 0;
                while let Ok(Some(_)) = lines.next_line().await {
                    answers += 1;
                }
                assert_eq!(answers, 2, "{}", process.stderr_tail());
                let _ = process.child.wait().await;
            })
        })
    });
    group.bench_function("jailed/warm/error_rate", |b| {
        let (mut process, mut stdin, mut lines) = rt.block_on(async {
            let mut process = HarnessProcess::start(&spawn).expect("jailed");
            let mut stdin = process.child.stdin.take().expect("stdin");
            let stdout = process.child.stdout.take().expect("stdout");
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            stdin
                .write_all(format!("{INIT}\n{INITIALIZED}\n").as_bytes())
                .await
                .expect("write");
            lines
                .next_line()
                .await
                .expect("read")
                .expect("initialize answer");
            (process, stdin, lines)
        });
        b.iter(|| {
            rt.block_on(async {
                stdin
                    .write_all(format!("{request}\n").as_bytes())
                    .await
                    .expect("write");
                let line = lines.next_line().await.expect("read").expect("answer");
                assert!(line.len() > 100);
            })
        });
        rt.block_on(async move {
            drop(stdin);
            let _ = process.child.wait().await;
        });
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
