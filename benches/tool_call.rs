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
//!
//! After criterion, `tool_call/threads`: the pooling runtime called from
//! `KARTA_BENCH_THREADS` threads at once (default 1 and 2, each with a
//! current-thread runtime of its own, the same plugin shared), each call
//! timed: calls/s over all threads and the p50 / p99 of one call.
//! Both write their medians to `target/bench-results/tool_call.json` (for
//! `scripts/bench.sh`). `tool_call/bare/1` and `/2`: the floor on one and
//! on two threads at once — the same component instantiated from its
//! `InstancePre` in a bare wasmtime store (no WASI context, no fuel, no
//! limits, no JSON checks), `greet` called, dropped.
//!
//! Last, `tool_call/after_idle` and `tool_call/bare/after_idle`: the same
//! calls, each after the thread slept 1.5 ms (`KARTA_BENCH_IDLE_CALLS`
//! of them, default 2,000) — how a turn's tool calls come, never back to
//! back — and `machine/touch_512_pages`: 512 pages read hot and after the
//! same sleep, what this machine charges for the pages a call touches
//! once an interrupt has passed.

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

mod common;

use criterion::{Criterion, criterion_group};
use karta_host::plugin::{CallOptions, Plugin, PluginGrant, PluginRuntime, RuntimeConfig};

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

/// Calls `greet` from `threads` threads for `per_thread` calls each;
/// returns calls/s and every call's latency, sorted.
fn threaded(plugin: &Plugin, threads: usize, per_thread: usize) -> (f64, Vec<Duration>) {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let plugin = plugin.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio");
                let options = CallOptions::default();
                let mut latencies = Vec::with_capacity(per_thread);
                // Warm up this thread's share of the pool.
                for _ in 0..200 {
                    rt.block_on(plugin.call("greet", INPUT, &options))
                        .expect("greet");
                }
                barrier.wait();
                for _ in 0..per_thread {
                    let started = Instant::now();
                    rt.block_on(plugin.call("greet", INPUT, &options))
                        .expect("greet");
                    latencies.push(started.elapsed());
                }
                latencies
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let mut all: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("thread"))
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    ((threads * per_thread) as f64 / elapsed, all)
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e6
}

fn threads_and_floor() {
    let wasm = common::build_plugins(&["hello-stdio"]).join("hello.wasm");
    let runtime = PluginRuntime::new(RuntimeConfig::default()).expect("runtime");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let plugin = rt
        .block_on(runtime.load_file(&wasm, PluginGrant::default()))
        .expect("load hello.wasm");
    let threads: Vec<usize> = std::env::var("KARTA_BENCH_THREADS")
        .unwrap_or_else(|_| "1,2".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let per_thread: usize = std::env::var("KARTA_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let mut results = Vec::new();
    for n in threads {
        let (rate, latencies) = threaded(&plugin, n, per_thread);
        results.push((format!("calls_per_s_{n}_threads"), rate, "/s"));
        results.push((
            format!("p50_{n}_threads"),
            percentile(&latencies, 0.5),
            "us",
        ));
        println!(
            "tool_call/threads/{n}: {rate:.0} calls/s, p50 {:.2} µs, p99 {:.2} µs ({} calls)",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.len()
        );
    }
    // The floor on as many threads as the runtime was called from: what
    // instantiating per call costs there, Karta or not.
    let bare = Bare::new(&wasm);
    for n in [1, 2] {
        let latencies = bare.threaded(n, per_thread);
        println!(
            "tool_call/bare/{n}: p50 {:.2} µs, p99 {:.2} µs on {n} thread(s) (instantiate from InstancePre, call, drop; pooling, no WASI context, no fuel, no limits)",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99)
        );
        let key = if n == 1 {
            "bare_p50".to_owned()
        } else {
            format!("bare_p50_{n}_threads")
        };
        results.push((key, percentile(&latencies, 0.5), "us"));
    }
    results.extend(after_idle(&rt, &plugin, &bare));
    write_results("tool_call", &results);
}

/// `calls` runs of `before` then `run`, each `run` timed; sorted.
fn timed(calls: usize, mut before: impl FnMut(), mut run: impl FnMut()) -> Vec<Duration> {
    let mut latencies: Vec<Duration> = (0..calls)
        .map(|_| {
            before();
            let started = Instant::now();
            run();
            started.elapsed()
        })
        .collect();
    latencies.sort();
    latencies
}

/// How long a thread sleeps before each call of [`after_idle`]: about
/// what separates two tool calls of a real turn (the model's answer
/// streams in between), and more than the hot loops above ever leave.
const IDLE: Duration = Duration::from_micros(1500);

/// A call after the thread slept [`IDLE`] — as a turn's tool calls come —
/// through Karta and bare; and the machine's own part of that: touching
/// 512 pages of memory hot and after the same sleep. On a virtual machine
/// where an interrupt leaves translations cold (a PVM guest here: the cost
/// follows pages more than cache lines, see BENCHMARKS.md), every page a
/// call touches after a sleep costs a page walk again; the hot loops hide
/// it.
fn after_idle(
    rt: &tokio::runtime::Runtime,
    plugin: &Plugin,
    bare: &Bare,
) -> Vec<(String, f64, &'static str)> {
    let calls: usize = std::env::var("KARTA_BENCH_IDLE_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let options = CallOptions::default();
    let sleep = || std::thread::sleep(IDLE);
    let karta = timed(calls, sleep, || {
        rt.block_on(plugin.call("greet", INPUT, &options))
            .expect("greet");
    });
    let floor = timed(calls, sleep, || bare.call_once());

    const PAGES: usize = 512;
    let memory = vec![1u8; PAGES * 4096];
    let touch = || {
        let sum: u64 = (0..PAGES).map(|page| u64::from(memory[page * 4096])).sum();
        std::hint::black_box(sum);
    };
    let pages_hot = timed(calls, touch, touch);
    let pages_after_sleep = timed(
        calls,
        || {
            touch();
            sleep();
        },
        touch,
    );

    let idle_us = IDLE.as_micros();
    println!(
        "tool_call/after_idle: p50 {:.2} µs, p99 {:.2} µs ({calls} calls, each after a {idle_us} µs sleep)",
        percentile(&karta, 0.5),
        percentile(&karta, 0.99),
    );
    println!(
        "tool_call/bare/after_idle: p50 {:.2} µs, p99 {:.2} µs (the floor, each after a {idle_us} µs sleep)",
        percentile(&floor, 0.5),
        percentile(&floor, 0.99),
    );
    println!(
        "machine/touch_{PAGES}_pages: p50 {:.2} µs hot, {:.2} µs after a {idle_us} µs sleep (what a sleep costs here, mostly page translations)",
        percentile(&pages_hot, 0.5),
        percentile(&pages_after_sleep, 0.5),
    );
    vec![
        ("p50_after_idle".into(), percentile(&karta, 0.5), "us"),
        ("bare_p50_after_idle".into(), percentile(&floor, 0.5), "us"),
        ("touch_pages_hot".into(), percentile(&pages_hot, 0.5), "us"),
        (
            "touch_pages_after_idle".into(),
            percentile(&pages_after_sleep, 0.5),
            "us",
        ),
    ]
}

/// Merges `figures` (key, value, unit) into
/// `target/bench-results/<file>.json`, where `scripts/bench_report.py`
/// reads the figures `benches/targets.toml` names.
fn write_results(file: &str, figures: &[(String, f64, &str)]) {
    let dir = common::root().join("target/bench-results");
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

/// The floor of a call: the component instantiated in a bare store of an
/// engine with the same pooling settings but no fuel or epochs, `greet`
/// called with the same input, the store dropped.
struct Bare {
    engine: wasmtime::Engine,
    pre: wasmtime::component::InstancePre<BareState>,
}

/// A bare store's data: an empty WASI context, as a host must build one.
struct BareState {
    wasi: wasmtime_wasi::WasiCtx,
    table: wasmtime::component::ResourceTable,
}

impl wasmtime_wasi::WasiView for BareState {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl Bare {
    fn new(wasm: &std::path::Path) -> Self {
        use wasmtime::component::{Component, Linker};
        use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

        let mut pool = PoolingAllocationConfig::new();
        pool.linear_memory_keep_resident(4 * 1024 * 1024)
            .table_keep_resident(64 * 1024)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut config = Config::new();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).expect("engine");
        let component = Component::from_file(&engine, wasm).expect("component");
        let mut linker = Linker::<BareState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).expect("wasi");
        // The plugin's own imports (log, http) are never called by `greet`:
        // stubbed so the component links.
        linker
            .define_unknown_imports_as_traps(&component)
            .expect("stub imports");
        let pre = linker.instantiate_pre(&component).expect("pre");
        Self { engine, pre }
    }

    /// `calls` calls on each of `threads` threads at once; every call's
    /// latency, sorted.
    fn threaded(&self, threads: usize, calls: usize) -> Vec<Duration> {
        let barrier = Barrier::new(threads);
        let mut all: Vec<Duration> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| scope.spawn(|| self.calls(calls, &barrier)))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("thread"))
                .collect()
        });
        all.sort();
        all
    }

    /// One thread's share: 200 warm-up calls, then `calls` timed ones.
    fn calls(&self, calls: usize, start: &Barrier) -> Vec<Duration> {
        let mut latencies = Vec::with_capacity(calls);
        for i in 0..calls + 200 {
            if i == 200 {
                start.wait();
            }
            let started = Instant::now();
            self.call_once();
            if i >= 200 {
                latencies.push(started.elapsed());
            }
        }
        latencies
    }

    /// One call: a store, the instance, `greet`, the store dropped.
    fn call_once(&self) {
        use wasmtime::Store;
        use wasmtime::component::{ResourceTable, Val};

        let mut store = Store::new(
            &self.engine,
            BareState {
                wasi: wasmtime_wasi::WasiCtx::builder().build(),
                table: ResourceTable::new(),
            },
        );
        let instance = self.pre.instantiate(&mut store).expect("instantiate");
        let tools = instance
            .get_export_index(&mut store, None, "karta:plugin/tools@0.1.0")
            .expect("tools interface");
        let call = instance
            .get_export_index(&mut store, Some(&tools), "call")
            .expect("call export");
        let func = instance.get_func(&mut store, call).expect("func");
        let mut results = [Val::Bool(false)];
        func.call(
            &mut store,
            &[Val::String("greet".into()), Val::String(INPUT.into())],
            &mut results,
        )
        .expect("call");
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    threads_and_floor();
    Criterion::default().configure_from_args().final_summary();
}
