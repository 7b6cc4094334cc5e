//! Per-call cost of a tiny tool: the plugin runtime against what a user would
//! pick instead.
//!
//! Run: `cargo bench --bench tool_call` (builds the fixtures first).
//!
//! - `wasm/pooling`: a fresh instance from `InstancePre` with the pooling
//!   allocator, call, drop — what every tool call in Karta costs.
//! - `wasm/on_demand`: the same without the pool (mmap per instance).
//! - `stdio/spawn_per_call`: the same tool as a native program speaking JSON
//!   lines, spawned for every call (a stdio MCP server started per call).
//! - `stdio/warm`: that program kept running, one line in, one line out.

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use karta_host::plugin::{CallOptions, PluginGrant, PluginRuntime, RuntimeConfig};

const INPUT: &str = r#"{"name":"Ada"}"#;

fn bench(c: &mut Criterion) {
    let wasm_dir = common::build_plugins(&["hello-stdio"]);
    let wasm = wasm_dir.join("hello.wasm");
    let native = common::plugins().join("target/release/hello-stdio");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let options = CallOptions::default();

    let mut group = c.benchmark_group("tool_call");
    for (name, pooling) in [("wasm/pooling", true), ("wasm/on_demand", false)] {
        let runtime = PluginRuntime::new(RuntimeConfig {
            pooling,
            ..RuntimeConfig::default()
        })
        .expect("runtime");
        let plugin = rt
            .block_on(runtime.load_file(&wasm, PluginGrant::default()))
            .expect("load hello.wasm");
        group.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(plugin.call("greet", INPUT, &options))
                    .expect("greet")
            })
        });
    }

    group.bench_function("stdio/spawn_per_call", |b| {
        b.iter(|| {
            let mut child = Command::new(&native)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn");
            let mut stdin = child.stdin.take().expect("stdin");
            writeln!(stdin, "{INPUT}").expect("write");
            drop(stdin);
            let mut line = String::new();
            BufReader::new(child.stdout.take().expect("stdout"))
                .read_line(&mut line)
                .expect("read");
            child.wait().expect("wait");
            assert!(line.contains("Hello, Ada!"));
        })
    });

    let mut child = Command::new(&native)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    group.bench_function("stdio/warm", |b| {
        b.iter(|| {
            writeln!(stdin, "{INPUT}").expect("write");
            stdin.flush().expect("flush");
            line.clear();
            stdout.read_line(&mut line).expect("read");
        })
    });
    drop(stdin);
    let _ = child.wait();
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
