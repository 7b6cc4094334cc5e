//! The plugin runtime against real components: every limit, every hostile
//! fixture, the workspace sandbox, the HTTP allow-list, the artifact cache.

use karta_host::plugin::{
    ArtifactSource, CallFailure, CallOptions, ErrorKind, Limits, LoadError, PluginGrant,
    PluginRuntime, RuntimeConfig, WorkspaceAccess,
};
use serde_json::json;

use crate::support::{component, http_server, load, load_allowing_loopback, runtime};

fn limits(fuel: u64, memory_mib: u32, timeout_ms: u64) -> Limits {
    Limits {
        fuel,
        memory_mib,
        timeout_ms,
        ..Limits::default()
    }
}

fn grant_with(limits: Limits) -> PluginGrant {
    PluginGrant {
        limits,
        ..PluginGrant::default()
    }
}

async fn fail(plugin: &karta_host::plugin::Plugin, tool: &str, input: &str) -> CallFailure {
    match plugin.call(tool, input, &CallOptions::default()).await {
        Ok(outcome) => panic!("{tool} should fail, returned {}", outcome.output),
        Err(failure) => failure,
    }
}

/// After an attack, the same plugin must serve a normal call correctly.
async fn still_serves(plugin: &karta_host::plugin::Plugin) {
    let outcome = plugin
        .call("count", r#"{"n": 10}"#, &CallOptions::default())
        .await
        .expect("a normal call after an attack");
    assert_eq!(outcome.output, json!({"sum": 45}));
}

#[tokio::test]
async fn a_useful_plugin_converts_and_calculates() {
    let units = load("units", PluginGrant::default()).await;
    let names: Vec<&str> = units.tools().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["convert", "calc"]);
    let schema = &units.tools()[0].input_schema;
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["required"], json!(["value", "from", "to"]));

    let out = units
        .call(
            "convert",
            r#"{"value": 3, "from": "mi", "to": "km"}"#,
            &CallOptions::default(),
        )
        .await
        .expect("convert");
    assert_eq!(
        out.output,
        json!({"value": 4.828032, "unit": "km", "dimension": "length"})
    );
    assert!(out.fuel_consumed > 0);

    let out = units
        .call(
            "calc",
            r#"{"expression": "2^10 / (3 + 1)"}"#,
            &CallOptions::default(),
        )
        .await
        .expect("calc");
    assert_eq!(out.output, json!({"value": 256.0}));
}

#[tokio::test]
async fn fuel_is_identical_across_runs() {
    let hostile = load("hostile", PluginGrant::default()).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let out = hostile
            .call("count", r#"{"n": 5000}"#, &CallOptions::default())
            .await
            .expect("count");
        seen.push(out.fuel_consumed);
    }
    assert!(seen[0] > 5000, "a 5000-step loop uses fuel: {seen:?}");
    assert!(seen.iter().all(|f| *f == seen[0]), "fuel differs: {seen:?}");

    // And more work costs more fuel.
    let more = hostile
        .call("count", r#"{"n": 50000}"#, &CallOptions::default())
        .await
        .expect("count");
    assert!(more.fuel_consumed > seen[0]);
}

#[tokio::test]
async fn fuel_budget_is_exact_to_the_unit() {
    let probe = load("hostile", PluginGrant::default()).await;
    let needed = probe
        .call("count", r#"{"n": 1000}"#, &CallOptions::default())
        .await
        .expect("probe")
        .fuel_consumed;

    let at_budget = load("hostile", grant_with(limits(needed, 64, 10_000))).await;
    let out = at_budget
        .call("count", r#"{"n": 1000}"#, &CallOptions::default())
        .await
        .expect("a call with exactly the fuel it needs succeeds");
    assert_eq!(out.fuel_consumed, needed);

    let one_short = load("hostile", grant_with(limits(needed - 1, 64, 10_000))).await;
    let failure = fail(&one_short, "count", r#"{"n": 1000}"#).await;
    assert_eq!(failure.kind, ErrorKind::OutOfFuel, "{failure}");
    assert_eq!(failure.fuel_consumed, needed - 1);

    // A per-call cap (what the org's budget buys) works the same way.
    let capped = at_budget
        .call(
            "count",
            r#"{"n": 1000}"#,
            &CallOptions {
                fuel_cap: Some(needed - 1),
                ..CallOptions::default()
            },
        )
        .await
        .expect_err("capped below what the call needs");
    assert_eq!(capped.kind, ErrorKind::OutOfFuel);
}

#[tokio::test]
async fn an_infinite_loop_runs_out_of_fuel() {
    let hostile = load("hostile", grant_with(limits(50_000_000, 64, 30_000))).await;
    let failure = fail(&hostile, "spin", "{}").await;
    assert_eq!(failure.kind, ErrorKind::OutOfFuel, "{failure}");
    assert_eq!(failure.fuel_consumed, 50_000_000);
    still_serves(&hostile).await;
}

#[tokio::test]
async fn an_infinite_loop_with_fuel_to_spare_times_out() {
    let hostile = load("hostile", grant_with(limits(u64::MAX / 2, 64, 200))).await;
    let failure = fail(&hostile, "spin", "{}").await;
    assert_eq!(failure.kind, ErrorKind::Timeout, "{failure}");
    still_serves(&hostile).await;
}

/// The epoch thread sleeps while no call runs; a call that comes then
/// still has its deadline (the thread wakes before the call runs).
#[tokio::test]
async fn an_infinite_loop_after_an_idle_spell_still_times_out() {
    // A runtime of its own, with a 1 ms tick: asleep after ~200 ms idle.
    let runtime = PluginRuntime::new(RuntimeConfig {
        max_concurrent_instances: 4,
        epoch_tick: std::time::Duration::from_millis(1),
        ..RuntimeConfig::default()
    })
    .expect("runtime starts");
    let hostile = runtime
        .load_file(
            &crate::support::component("hostile"),
            // Fuel for tens of seconds of spinning: without the deadline
            // the call fails out of fuel instead of timing out.
            grant_with(limits(20_000_000_000, 64, 200)),
        )
        .await
        .expect("load");
    for round in 0..2 {
        let asleep = async {
            while !runtime.epoch_ticker_asleep() {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), asleep)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the idle epoch thread never slept"));
        let failure = fail(&hostile, "spin", "{}").await;
        assert_eq!(failure.kind, ErrorKind::Timeout, "round {round}: {failure}");
    }
}

#[tokio::test]
async fn a_blocking_host_call_times_out() {
    let hostile = load("hostile", grant_with(limits(1_000_000_000, 64, 200))).await;
    let failure = fail(&hostile, "sleep", r#"{"n": 30000}"#).await;
    assert_eq!(failure.kind, ErrorKind::Timeout, "{failure}");
    still_serves(&hostile).await;
}

#[tokio::test]
async fn a_memory_bomb_hits_the_memory_cap() {
    let hostile = load("hostile", grant_with(limits(10_000_000_000, 16, 30_000))).await;
    let failure = fail(&hostile, "alloc", "{}").await;
    assert_eq!(failure.kind, ErrorKind::OutOfMemory, "{failure}");
    assert!(failure.message.contains("16 MiB"), "{failure}");
    still_serves(&hostile).await;
}

#[tokio::test]
async fn a_panic_is_a_trap_with_the_panic_message() {
    let hostile = load("hostile", PluginGrant::default()).await;
    let failure = fail(&hostile, "panic", "{}").await;
    assert_eq!(failure.kind, ErrorKind::Trap, "{failure}");
    assert!(failure.message.contains("panicked on purpose"), "{failure}");
    still_serves(&hostile).await;
}

#[tokio::test]
async fn deep_recursion_is_a_stack_overflow_trap() {
    let hostile = load("hostile", PluginGrant::default()).await;
    let failure = fail(&hostile, "recurse", r#"{"n": 10000000}"#).await;
    assert_eq!(failure.kind, ErrorKind::Trap, "{failure}");
    assert!(failure.message.contains("stack overflow"), "{failure}");
    still_serves(&hostile).await;
    // Shallow recursion is fine.
    hostile
        .call("recurse", r#"{"n": 100}"#, &CallOptions::default())
        .await
        .expect("shallow recursion");
}

#[tokio::test]
async fn huge_output_is_refused() {
    let hostile = load(
        "hostile",
        grant_with(Limits {
            max_output_bytes: 1000,
            ..Limits::default()
        }),
    )
    .await;
    let failure = fail(&hostile, "huge_output", r#"{"n": 5000}"#).await;
    assert_eq!(failure.kind, ErrorKind::OutputTooLarge, "{failure}");
    // Just under the cap (the JSON string adds two quotes) passes.
    let out = hostile
        .call("huge_output", r#"{"n": 998}"#, &CallOptions::default())
        .await
        .expect("output at the cap");
    assert_eq!(out.output.as_str().map(str::len), Some(998));
}

#[tokio::test]
async fn files_outside_the_workspace_are_unreachable() {
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(outside.path().join("secret.txt"), "top secret").expect("write");
    let workspace = tempfile::tempdir().expect("tempdir");
    std::fs::write(workspace.path().join("inside.txt"), "hello").expect("write");
    std::os::unix::fs::symlink(outside.path(), workspace.path().join("escape")).expect("symlink");
    std::os::unix::fs::symlink(
        outside.path().join("secret.txt"),
        workspace.path().join("secret-link"),
    )
    .expect("symlink");

    let hostile = load(
        "hostile",
        PluginGrant {
            workspace: WorkspaceAccess::ReadWrite,
            ..PluginGrant::default()
        },
    )
    .await;
    let options = CallOptions {
        workspace: Some(workspace.path().to_path_buf()),
        ..CallOptions::default()
    };
    let inside = hostile
        .call(
            "read_path",
            r#"{"path": "/workspace/inside.txt"}"#,
            &options,
        )
        .await
        .expect("a file inside the workspace is readable");
    assert_eq!(inside.output, json!({"read": "hello"}));

    let secret = outside.path().join("secret.txt");
    for path in [
        "/etc/passwd".to_owned(),
        "/workspace/../etc/passwd".to_owned(),
        "/workspace/escape/secret.txt".to_owned(),
        "/workspace/secret-link".to_owned(),
        secret.display().to_string(),
        format!("/workspace/../../../..{}", secret.display()),
    ] {
        let input = json!({ "path": path }).to_string();
        match hostile.call("read_path", &input, &options).await {
            Ok(out) => panic!("{path} was read: {}", out.output),
            Err(failure) => {
                assert_eq!(failure.kind, ErrorKind::AccessDenied, "{path}: {failure}")
            }
        }
    }
    still_serves(&hostile).await;
}

#[tokio::test]
async fn the_workspace_search_reads_only_its_directory() {
    let workspace = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(workspace.path().join("src")).expect("mkdir");
    std::fs::write(
        workspace.path().join("src/a.rs"),
        "fn a() {}\n// needle: b\n",
    )
    .expect("write");
    std::fs::write(workspace.path().join("notes.md"), "nothing here").expect("write");
    let options = CallOptions {
        workspace: Some(workspace.path().to_path_buf()),
        ..CallOptions::default()
    };

    let read_only = load(
        "files",
        PluginGrant {
            workspace: WorkspaceAccess::ReadOnly,
            ..PluginGrant::default()
        },
    )
    .await;
    let out = read_only
        .call("search", r#"{"contains": "needle"}"#, &options)
        .await
        .expect("search");
    assert_eq!(
        out.output,
        json!({"hits": [{"path": "src/a.rs", "size": 23, "lines": [[2, "// needle: b"]]}], "truncated": false})
    );
    let out = read_only
        .call("read", r#"{"path": "notes.md"}"#, &options)
        .await
        .expect("read");
    assert_eq!(out.output["text"], "nothing here");

    // Read-only means read-only.
    let failure = read_only
        .call("write", r#"{"path": "new.txt", "content": "x"}"#, &options)
        .await
        .expect_err("writing a read-only workspace");
    assert_eq!(failure.kind, ErrorKind::AccessDenied, "{failure}");
    assert!(!workspace.path().join("new.txt").exists());

    // Read-write writes through to the host directory.
    let read_write = load(
        "files",
        PluginGrant {
            workspace: WorkspaceAccess::ReadWrite,
            ..PluginGrant::default()
        },
    )
    .await;
    read_write
        .call(
            "write",
            r#"{"path": "out/new.txt", "content": "written"}"#,
            &options,
        )
        .await
        .expect("write");
    assert_eq!(
        std::fs::read_to_string(workspace.path().join("out/new.txt")).expect("file exists"),
        "written"
    );

    // No grant: no file system at all, whatever directory the caller offers.
    let no_files = load("files", PluginGrant::default()).await;
    let failure = no_files
        .call("search", "{}", &options)
        .await
        .expect_err("search without a workspace grant");
    assert_eq!(failure.kind, ErrorKind::AccessDenied, "{failure}");
}

#[tokio::test]
async fn the_environment_is_empty() {
    let hostile = load("hostile", PluginGrant::default()).await;
    let out = hostile
        .call("env", "{}", &CallOptions::default())
        .await
        .expect("env");
    assert_eq!(out.output, json!({"vars": [], "args": []}));
}

/// The local test server is reachable only because this runtime's operator
/// allows 127.0.0.1/32 (`karta serve --plugin-allow-net 127.0.0.1/32`).
#[tokio::test]
async fn http_reaches_only_granted_hosts() {
    let addr = http_server("pong").await;
    let url = format!("http://{addr}/ping");
    let input = json!({ "url": url }).to_string();

    let denied = load_allowing_loopback("hostile", PluginGrant::default()).await;
    let failure = fail(&denied, "fetch", &input).await;
    assert_eq!(failure.kind, ErrorKind::AccessDenied, "{failure}");
    assert!(failure.message.contains("allowed_hosts"), "{failure}");

    let other_port = load_allowing_loopback(
        "hostile",
        PluginGrant {
            allowed_hosts: vec![format!("127.0.0.1:{}", addr.port().wrapping_add(1))],
            ..PluginGrant::default()
        },
    )
    .await;
    let failure = fail(&other_port, "fetch", &input).await;
    assert_eq!(failure.kind, ErrorKind::AccessDenied, "{failure}");

    let granted = load_allowing_loopback(
        "hostile",
        PluginGrant {
            allowed_hosts: vec![format!("127.0.0.1:{}", addr.port())],
            ..PluginGrant::default()
        },
    )
    .await;
    let out = granted
        .call("fetch", &input, &CallOptions::default())
        .await
        .expect("granted fetch");
    assert_eq!(out.output, json!({"status": 200, "body": "pong"}));
    assert!(
        out.logs
            .iter()
            .any(|l| l.level == "http" && l.message.contains("200"))
    );
}

#[tokio::test]
async fn bad_input_is_refused_with_the_reason() {
    let units = load("units", PluginGrant::default()).await;
    let failure = fail(&units, "convert", "{not json").await;
    assert_eq!(failure.kind, ErrorKind::InvalidInput);
    assert!(failure.message.contains("not valid JSON"), "{failure}");
    assert_eq!(failure.fuel_consumed, 0, "refused before running");

    let failure = fail(
        &units,
        "convert",
        r#"{"value": "three", "from": "mi", "to": "km"}"#,
    )
    .await;
    assert_eq!(failure.kind, ErrorKind::InvalidInput);
    assert!(
        failure.message.contains("`value`"),
        "names the field: {failure}"
    );

    let failure = fail(
        &units,
        "convert",
        r#"{"value": 1, "from": "kg", "to": "km"}"#,
    )
    .await;
    assert_eq!(failure.kind, ErrorKind::InvalidInput);

    let failure = fail(&units, "calc", r#"{"expression": "1/0"}"#).await;
    assert_eq!(failure.kind, ErrorKind::InvalidInput, "{failure}");

    let failure = fail(&units, "nope", "{}").await;
    assert_eq!(failure.kind, ErrorKind::UnknownTool);
    assert!(failure.message.contains("convert, calc"), "{failure}");
}

#[tokio::test]
async fn things_that_are_not_plugins_are_refused() {
    let runtime = crate::support::runtime();
    let core_module = b"\0asm\x01\0\0\0";
    match runtime.load(core_module, PluginGrant::default()).await {
        Err(LoadError::Compile(e)) => assert!(format!("{e}").contains("not a component")),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a core module loaded"),
    }
    match runtime.load(b"garbage", PluginGrant::default()).await {
        Err(LoadError::Compile(_)) => {}
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("garbage loaded"),
    }
    // A valid component that is a WASI command, not a karta:plugin.
    let command = component("not-a-plugin");
    match runtime.load_file(&command, PluginGrant::default()).await {
        Err(LoadError::World(e)) => assert!(format!("{e:#}").contains("karta:plugin"), "{e:#}"),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a command component loaded as a plugin"),
    }
    match runtime
        .load_file("/nonexistent/x.wasm".as_ref(), PluginGrant::default())
        .await
    {
        Err(LoadError::Read { path, .. }) => assert_eq!(path, "/nonexistent/x.wasm"),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a missing file loaded"),
    }
    // A grant beyond what the host allows.
    match runtime
        .load_file(&component("hello"), grant_with(limits(1, 1_000_000, 1)))
        .await
    {
        Err(LoadError::Grant(m)) => assert!(m.contains("memory_mib"), "{m}"),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("an oversized grant loaded"),
    }
}

#[tokio::test]
async fn compiled_artifacts_are_cached_on_disk() {
    let cache = tempfile::tempdir().expect("tempdir");
    let config = RuntimeConfig {
        cache_dir: Some(cache.path().join("components")),
        max_concurrent_instances: 8,
        ..RuntimeConfig::default()
    };
    let hello = component("hello");

    let first = PluginRuntime::new(config.clone()).expect("runtime");
    let plugin = first
        .load_file(&hello, PluginGrant::default())
        .await
        .expect("load");
    assert_eq!(plugin.artifact_source(), ArtifactSource::Compiled);
    let again = first
        .load_file(&hello, PluginGrant::default())
        .await
        .expect("load");
    assert_eq!(again.artifact_source(), ArtifactSource::Memory);
    drop(first);

    // A new process (runtime) maps the artifact instead of compiling.
    let second = PluginRuntime::new(config.clone()).expect("runtime");
    let plugin = second
        .load_file(&hello, PluginGrant::default())
        .await
        .expect("load");
    assert_eq!(plugin.artifact_source(), ArtifactSource::Disk);
    let out = plugin
        .call("greet", r#"{"name": "Ada"}"#, &CallOptions::default())
        .await
        .expect("greet from a cached artifact");
    assert_eq!(out.output, json!({"greeting": "Hello, Ada!"}));
    drop(second);

    // A corrupt artifact is discarded and rebuilt, never run.
    let artifacts: Vec<_> = std::fs::read_dir(cache.path().join("components"))
        .expect("cache dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    std::fs::write(&artifacts[0], b"not an artifact").expect("corrupt");
    let third = PluginRuntime::new(config).expect("runtime");
    let plugin = third
        .load_file(&hello, PluginGrant::default())
        .await
        .expect("load after corruption");
    assert_eq!(plugin.artifact_source(), ArtifactSource::Compiled);
    assert!(std::fs::metadata(&artifacts[0]).expect("rewritten").len() > 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_are_isolated() {
    let hostile = load("hostile", PluginGrant::default()).await;
    let calls = (0..16u64).map(|i| {
        let hostile = hostile.clone();
        tokio::spawn(async move {
            let input = json!({ "n": i * 100 }).to_string();
            hostile
                .call("count", &input, &CallOptions::default())
                .await
                .map(|o| o.output)
        })
    });
    for (i, call) in calls.enumerate() {
        let n = i as u64 * 100;
        let output = call.await.expect("task").expect("call");
        assert_eq!(output, json!({ "sum": n * n.saturating_sub(1) / 2 }));
    }
}

/// A finished call's store is dropped off the caller's path (the reaper):
/// until it is, its pool slot is taken. Calls back to back on a pool of
/// one slot must still all run — the next call waits for the slot instead
/// of failing `busy` — and a pool that is really full still says `busy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_one_slot_serves_calls_back_to_back_and_is_busy_only_when_full() {
    let runtime = PluginRuntime::new(RuntimeConfig {
        max_concurrent_instances: 1,
        ..RuntimeConfig::default()
    })
    .expect("runtime starts");
    let hostile = runtime
        .load_file(&component("hostile"), PluginGrant::default())
        .await
        .expect("load");
    for n in 0..300u64 {
        let input = json!({ "n": n }).to_string();
        let outcome = hostile
            .call("count", &input, &CallOptions::default())
            .await
            .unwrap_or_else(|failure| panic!("call {n} on a free pool failed: {failure}"));
        assert_eq!(
            outcome.output,
            json!({ "sum": n * n.saturating_sub(1) / 2 })
        );
    }

    let sleeper = {
        let hostile = hostile.clone();
        tokio::spawn(async move {
            hostile
                .call("sleep", r#"{"n": 1500}"#, &CallOptions::default())
                .await
        })
    };
    // The sleeper holds the only slot for 1.5 s; a call meanwhile is busy.
    let mut busy = None;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        match hostile
            .call("count", r#"{"n": 3}"#, &CallOptions::default())
            .await
        {
            Err(failure) if failure.kind == ErrorKind::Busy => {
                busy = Some(failure);
                break;
            }
            Err(failure) => panic!("wrong failure while the pool is full: {failure}"),
            // The sleeper had not instantiated yet.
            Ok(_) => {}
        }
    }
    let busy = busy.expect("a call while the only slot is taken reports busy");
    assert!(busy.message.contains("retry"), "{busy}");
    sleeper.await.expect("task").expect("the sleeper finishes");
    still_serves(&hostile).await;
}

#[tokio::test]
async fn printing_a_lot_is_kept_bounded_and_never_fails_the_call() {
    let hostile = load("hostile", PluginGrant::default()).await;
    // 2 x 1 MB of output, far past the 64 KiB kept per stream.
    let out = hostile
        .call("print", r#"{"n": 10000}"#, &CallOptions::default())
        .await
        .expect("printing is not an error");
    assert_eq!(out.output, json!({"printed": 10000}));
    let (summary, lines): (Vec<_>, Vec<_>) = out
        .logs
        .iter()
        .partition(|l| l.message.contains("log lines dropped"));
    let kept: usize = lines.iter().map(|l| l.message.len()).sum();
    assert!(kept <= 64 * 1024, "kept {kept} bytes of log");
    assert!(lines.iter().any(|l| l.level == "stdout"));
    assert_eq!(summary.len(), 1, "one line says how much was dropped");
}

#[tokio::test]
async fn logs_are_collected_and_bounded() {
    let hostile = load("hostile", PluginGrant::default()).await;
    let out = hostile
        .call("count", r#"{"n": 3}"#, &CallOptions::default())
        .await
        .expect("count");
    assert!(
        out.logs
            .iter()
            .any(|l| l.level == "info" && l.message == "counted to 3"),
        "{:?}",
        out.logs
    );
}

// ---- issue 9, item 5: plugin HTTP never reaches internal addresses ----

/// Fetches `url` from the hostile plugin under a grant that names `host`, in
/// the shared runtime (no operator exceptions), and returns the failure: the
/// grant passes, so the refusal is the network policy's.
async fn denied_fetch(host: &str, url: &str) -> CallFailure {
    let plugin = load(
        "hostile",
        PluginGrant {
            allowed_hosts: vec![host.to_owned()],
            ..PluginGrant::default()
        },
    )
    .await;
    let failure = fail(&plugin, "fetch", &json!({ "url": url }).to_string()).await;
    assert_eq!(failure.kind, ErrorKind::AccessDenied, "{failure}");
    assert!(
        failure.message.contains("not reachable from plugins"),
        "the network policy, not the grant, refused: {failure}"
    );
    still_serves(&plugin).await;
    failure
}

/// Asserts that nothing connected to `listener`.
async fn never_connected(listener: &tokio::net::TcpListener) {
    let accepted =
        tokio::time::timeout(std::time::Duration::from_millis(200), listener.accept()).await;
    assert!(accepted.is_err(), "a plugin connected to {listener:?}");
}

#[tokio::test]
async fn regression_issue9_fetch_to_a_live_loopback_listener_is_denied() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let failure = denied_fetch("127.0.0.1", &format!("http://{addr}/")).await;
    assert!(
        failure.message.contains("127.0.0.1 is loopback"),
        "{failure}"
    );
    never_connected(&listener).await;
}

#[tokio::test]
async fn regression_issue9_fetch_to_the_metadata_address_is_denied_before_connecting() {
    // Never connected to: the policy decides on the address alone.
    let failure = denied_fetch(
        "169.254.169.254",
        "http://169.254.169.254/latest/meta-data/",
    )
    .await;
    assert!(
        failure.message.contains("169.254.169.254 is link-local"),
        "{failure}"
    );
}

#[tokio::test]
async fn regression_issue9_a_name_resolving_to_loopback_is_denied() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let failure = denied_fetch("localhost", &format!("http://localhost:{port}/")).await;
    assert!(
        failure.message.contains("localhost is not reachable")
            && failure.message.contains("127.0.0.1 is loopback"),
        "{failure}"
    );
    never_connected(&listener).await;
}

#[tokio::test]
async fn regression_issue9_fetch_to_ipv4_mapped_loopback_is_denied() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let failure = denied_fetch(
        "::ffff:127.0.0.1",
        &format!("http://[::ffff:127.0.0.1]:{port}/"),
    )
    .await;
    assert!(
        failure
            .message
            .contains("::ffff:127.0.0.1 is IPv4-mapped IPv6 of a refused IPv4 range"),
        "{failure}"
    );
    never_connected(&listener).await;
}

#[tokio::test]
async fn regression_issue9_fetch_to_ipv6_loopback_is_denied() {
    // A live listener where the machine has IPv6; the denial must not depend
    // on it.
    let listener = tokio::net::TcpListener::bind("[::1]:0").await.ok();
    let port = match &listener {
        Some(l) => l.local_addr().expect("addr").port(),
        None => 9,
    };
    let failure = denied_fetch("::1", &format!("http://[::1]:{port}/")).await;
    assert!(failure.message.contains("::1 is loopback"), "{failure}");
    if let Some(listener) = &listener {
        never_connected(listener).await;
    }
}

#[tokio::test]
async fn an_operator_allow_covers_only_its_range() {
    // 127.0.0.1/32 is allowed in this runtime; ::1 and 127.0.0.2 are not.
    for (host, url) in [
        ("::1", "http://[::1]:9/"),
        ("127.0.0.2", "http://127.0.0.2:9/"),
    ] {
        let plugin = load_allowing_loopback(
            "hostile",
            PluginGrant {
                allowed_hosts: vec![host.to_owned()],
                ..PluginGrant::default()
            },
        )
        .await;
        let failure = fail(&plugin, "fetch", &json!({ "url": url }).to_string()).await;
        assert_eq!(failure.kind, ErrorKind::AccessDenied, "{failure}");
        assert!(failure.message.contains("is loopback"), "{failure}");
    }
}

// ---- issue 9, item 9: what a guest makes the host do is bounded ----

fn log_huge(n: u64, times: u64) -> String {
    json!({ "n": n, "times": times }).to_string()
}

#[tokio::test]
async fn regression_issue9_logging_is_charged_fuel_by_the_byte() {
    let hostile = load("hostile", PluginGrant::default()).await;
    let small = hostile
        .call("log_huge", &log_huge(1, 1), &CallOptions::default())
        .await
        .expect("a small log");
    let mib = 1024 * 1024;
    let big = hostile
        .call("log_huge", &log_huge(mib, 1), &CallOptions::default())
        .await
        .expect("a 1 MiB log line");
    let charged = big.fuel_consumed.saturating_sub(small.fuel_consumed);
    assert!(
        charged >= mib * karta_host::plugin::FUEL_PER_HOST_BYTE,
        "1 MiB through the log import cost only {charged} more fuel"
    );
}

#[tokio::test]
async fn regression_issue9_logging_a_huge_string_over_and_over_runs_out_of_fuel() {
    // Building the 8 MiB line takes few instructions; handing it to the host
    // a thousand times would be 8 GB of host copies.
    let fuel = 100_000_000;
    let hostile = load("hostile", grant_with(limits(fuel, 64, 10_000))).await;
    let started = std::time::Instant::now();
    let failure = fail(&hostile, "log_huge", &log_huge(8 * 1024 * 1024, 1000)).await;
    assert_eq!(failure.kind, ErrorKind::OutOfFuel, "{failure}");
    assert_eq!(failure.fuel_consumed, fuel, "the whole budget is billed");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "stopped early, not by the deadline"
    );
    still_serves(&hostile).await;
}

#[tokio::test]
async fn regression_issue9_printing_is_charged_fuel_by_the_byte() {
    let hostile = load("hostile", PluginGrant::default()).await;
    let few = hostile
        .call("print", r#"{"n": 1}"#, &CallOptions::default())
        .await
        .expect("print");
    let many = hostile
        .call("print", r#"{"n": 10000}"#, &CallOptions::default())
        .await
        .expect("print");
    // 10,000 lines of 100 bytes to each of stdout and stderr; most dropped,
    // all paid for.
    let charged = many.fuel_consumed.saturating_sub(few.fuel_consumed);
    assert!(charged >= 2 * 9_999 * 100, "only {charged} more fuel");
}

#[tokio::test]
async fn regression_issue9_a_response_larger_than_the_guests_free_memory_is_refused() {
    let body: &'static str = Box::leak("z".repeat(3 * 1024 * 1024 + 512 * 1024).into_boxed_str());
    let addr = http_server(body).await;
    let input = json!({ "url": format!("http://{addr}/big") }).to_string();
    let grant = |memory_mib| PluginGrant {
        limits: Limits {
            memory_mib,
            max_output_bytes: 16 * 1024 * 1024,
            ..Limits::default()
        },
        allowed_hosts: vec![addr.to_string()],
        ..PluginGrant::default()
    };
    // 3.5 MiB cannot fit in what a 4 MiB guest has left: the host stops
    // reading there instead of holding it (and failing in the guest).
    let small = load_allowing_loopback("hostile", grant(4)).await;
    let failure = fail(&small, "fetch", &input).await;
    assert_eq!(failure.kind, ErrorKind::ToolError, "{failure}");
    assert!(
        failure
            .message
            .contains("what the plugin's memory cap leaves"),
        "{failure}"
    );
    // With room, the same body arrives whole.
    let roomy = load_allowing_loopback("hostile", grant(64)).await;
    let out = roomy
        .call("fetch", &input, &CallOptions::default())
        .await
        .expect("a body that fits");
    assert_eq!(out.output["body"].as_str().map(str::len), Some(body.len()));
}

#[tokio::test]
async fn regression_issue9_a_deadline_above_the_operators_cap_is_refused() {
    // The shared runtime has the default cap (60 s); a sleeping guest could
    // otherwise hold a pool slot for as long as the app asks.
    let max = karta_host::plugin::DEFAULT_MAX_TIMEOUT.as_millis() as u64;
    let error = runtime()
        .load_file(
            &component("hostile"),
            grant_with(limits(1_000_000_000, 64, max + 1)),
        )
        .await
        .err()
        .expect("a grant above the cap is refused");
    match error {
        LoadError::Grant(message) => assert!(
            message.contains(&format!("timeout_ms = {}", max + 1))
                && message.contains(&format!("maximum of {max} ms")),
            "{message}"
        ),
        other => panic!("expected a grant error, got {other}"),
    }
    // At the cap itself it loads.
    load("hostile", grant_with(limits(1_000_000_000, 64, max))).await;
}
