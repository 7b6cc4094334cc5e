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
//! timed: calls/s over all threads and the p50 / p99 of one call. Beside
//! it, two floors on as many threads: `tool_call/bare` — the same
//! component instantiated from its `InstancePre` in a bare wasmtime store
//! (empty WASI context, no fuel, no epochs, a synchronous call, no limits,
//! no JSON checks), `greet` called, dropped — and `tool_call/metered_floor`
//! — the same with what any metered host pays: fuel, epoch interruption
//! and an async call on a fiber, as Karta's engine has them. The three
//! take turns in 10 slices, so that a machine whose speed drifts favours
//! none of them. All write their medians to
//! `target/bench-results/tool_call.json` (for `scripts/bench.sh`).
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
use std::sync::Barrier;
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

/// What the threads of [`threaded`] call: Karta's runtime, or a floor.
#[derive(Clone, Copy)]
enum Caller<'a> {
    Karta(&'a Plugin),
    Floor(&'a Bare),
}

impl Caller<'_> {
    /// One `greet` call, on the calling thread's runtime.
    fn call(self, rt: &tokio::runtime::Runtime) {
        match self {
            Caller::Karta(plugin) => {
                rt.block_on(plugin.call("greet", INPUT, &CallOptions::default()))
                    .expect("greet");
            }
            Caller::Floor(bare) => bare.call(rt),
        }
    }
}

/// Calls of one caller on some threads: the wall time from their common
/// start to the last one's end, and every call's latency.
#[derive(Default)]
struct Run {
    seconds: f64,
    latencies: Vec<Duration>,
}

impl Run {
    fn calls_per_s(&self) -> f64 {
        self.latencies.len() as f64 / self.seconds
    }

    fn add(&mut self, other: Run) {
        self.seconds += other.seconds;
        self.latencies.extend(other.latencies);
    }
}

/// `calls` calls of `caller` on each of `threads` threads at once, each
/// thread with a current-thread tokio runtime of its own and 200 warm-up
/// calls before the common start.
fn threaded(caller: Caller<'_>, threads: usize, calls: usize) -> Run {
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("tokio");
                    for _ in 0..200 {
                        caller.call(&rt);
                    }
                    barrier.wait();
                    let mut latencies = Vec::with_capacity(calls);
                    for _ in 0..calls {
                        let started = Instant::now();
                        caller.call(&rt);
                        latencies.push(started.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        barrier.wait();
        let started = Instant::now();
        let latencies = handles
            .into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect();
        Run {
            seconds: started.elapsed().as_secs_f64(),
            latencies,
        }
    })
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e6
}

/// How many slices the threaded runs are cut into: Karta and the two
/// floors take turns slice by slice, so that a machine whose speed drifts
/// (a shared VM) does not favour whichever ran first.
const ROUNDS: usize = 10;

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
    let bare = Bare::new(&wasm, Floor::Plain);
    let metered = Bare::new(&wasm, Floor::Metered);
    let callers = [
        ("", Caller::Karta(&plugin)),
        ("bare_", Caller::Floor(&bare)),
        ("metered_floor_", Caller::Floor(&metered)),
    ];
    let mut results = Vec::new();
    for n in threads {
        let mut runs: Vec<Run> = callers.iter().map(|_| Run::default()).collect();
        for _ in 0..ROUNDS {
            for ((_, caller), run) in callers.iter().zip(&mut runs) {
                run.add(threaded(*caller, n, per_thread.div_ceil(ROUNDS)));
            }
        }
        for ((prefix, caller), mut run) in callers.iter().zip(runs) {
            run.latencies.sort();
            let (p50, p99) = (
                percentile(&run.latencies, 0.5),
                percentile(&run.latencies, 0.99),
            );
            let name = match caller {
                Caller::Karta(_) => format!("tool_call/threads/{n}"),
                Caller::Floor(floor) => format!("tool_call/{}/{n}", floor.kind.name()),
            };
            let what = match caller {
                Caller::Karta(_) => String::new(),
                Caller::Floor(floor) => format!(" — {}", floor.kind.describe()),
            };
            println!(
                "{name}: {:.0} calls/s, p50 {p50:.2} µs, p99 {p99:.2} µs ({} calls on {n} thread(s), {ROUNDS} rounds interleaved){what}",
                run.calls_per_s(),
                run.latencies.len(),
            );
            results.push((
                format!("{prefix}calls_per_s_{n}_threads"),
                run.calls_per_s(),
                "/s",
            ));
            let p50_key = match (prefix.is_empty(), n) {
                (false, 1) => format!("{prefix}p50"),
                _ => format!("{prefix}p50_{n}_threads"),
            };
            results.push((p50_key, p50, "us"));
        }
    }
    results.extend(after_idle(&rt, &plugin, &bare));
    common::write_results("tool_call", &results);
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
    let floor = timed(calls, sleep, || bare.call(rt));

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

/// Which floor a [`Bare`] measures.
#[derive(Clone, Copy)]
enum Floor {
    /// wasmtime at its cheapest: a synchronous call, no fuel, no epochs.
    Plain,
    /// What any metered host must pay on top: fuel (Karta's cost cap),
    /// epoch interruption (its deadline) and async calls on a fiber (a
    /// plugin's HTTP imports are async), as Karta's engine has them.
    Metered,
}

impl Floor {
    fn name(self) -> &'static str {
        match self {
            Floor::Plain => "bare",
            Floor::Metered => "metered_floor",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Floor::Plain => {
                "instantiate from InstancePre, call, drop; pooling, empty WASI context, no fuel, no epochs, sync"
            }
            Floor::Metered => {
                "the same with fuel, epoch interruption and async calls, as Karta's engine"
            }
        }
    }
}

/// The floor of a call: the component instantiated in a bare store of an
/// engine with the same pooling settings, `greet` called with the same
/// input, the store dropped — with or without what metering needs
/// ([`Floor`]).
struct Bare {
    kind: Floor,
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
    fn new(wasm: &std::path::Path, kind: Floor) -> Self {
        use wasmtime::component::{Component, Linker};
        use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

        let metered = matches!(kind, Floor::Metered);
        let mut pool = PoolingAllocationConfig::new();
        pool.linear_memory_keep_resident(4 * 1024 * 1024)
            .table_keep_resident(64 * 1024)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut config = Config::new();
        config
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .consume_fuel(metered)
            .epoch_interruption(metered);
        let engine = Engine::new(&config).expect("engine");
        let component = Component::from_file(&engine, wasm).expect("component");
        let mut linker = Linker::<BareState>::new(&engine);
        if metered {
            wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("wasi");
        } else {
            wasmtime_wasi::p2::add_to_linker_sync(&mut linker).expect("wasi");
        }
        // The plugin's own imports (log, http) are never called by `greet`:
        // stubbed so the component links.
        linker
            .define_unknown_imports_as_traps(&component)
            .expect("stub imports");
        let pre = linker.instantiate_pre(&component).expect("pre");
        Self { kind, engine, pre }
    }

    /// One call: a store, the instance, `greet`, the store dropped (on
    /// `rt` if the floor is async).
    fn call(&self, rt: &tokio::runtime::Runtime) {
        use wasmtime::Store;
        use wasmtime::component::{ResourceTable, Val};

        let mut store = Store::new(
            &self.engine,
            BareState {
                wasi: wasmtime_wasi::WasiCtx::builder().build(),
                table: ResourceTable::new(),
            },
        );
        let params = [Val::String("greet".into()), Val::String(INPUT.into())];
        let mut results = [Val::Bool(false)];
        let export = |store: &mut Store<BareState>, instance: &wasmtime::component::Instance| {
            let tools = instance
                .get_export_index(&mut *store, None, "karta:plugin/tools@0.1.0")
                .expect("tools interface");
            let call = instance
                .get_export_index(&mut *store, Some(&tools), "call")
                .expect("call export");
            instance.get_func(&mut *store, call).expect("func")
        };
        match self.kind {
            Floor::Plain => {
                let instance = self.pre.instantiate(&mut store).expect("instantiate");
                let func = export(&mut store, &instance);
                func.call(&mut store, &params, &mut results).expect("call");
            }
            Floor::Metered => {
                // As much as Karta's grant gives; the deadline never fires.
                store.set_fuel(1 << 40).expect("fuel");
                store.set_epoch_deadline(1 << 30);
                rt.block_on(async {
                    let instance = self
                        .pre
                        .instantiate_async(&mut store)
                        .await
                        .expect("instantiate");
                    let func = export(&mut store, &instance);
                    func.call_async(&mut store, &params, &mut results)
                        .await
                        .expect("call");
                });
            }
        }
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    threads_and_floor();
    Criterion::default().configure_from_args().final_summary();
}
