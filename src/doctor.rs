//! `karta doctor`: what this machine can run — the harness binaries, the
//! kernel's jail features, the warm pool, the model upstream — and, for an
//! app folder, which harness it gets, its settings, setup and tools.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `doctor`'s warm-pool section: what `serve` pools by default, and the
/// slots a host serving this data dir holds now (each pooled process has a
/// directory `<data>/pool/pool.<id>` while it is idle or starting).
fn print_pool(binaries: &karta_host::harness::HarnessBinaries, data_dir: &Path) {
    println!("warm pool:");
    let pooled: Vec<&str> = [
        ("claude_code", binaries.claude.is_some()),
        ("opencode", binaries.opencode.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, installed)| installed.then_some(name))
    .collect();
    if pooled.is_empty() {
        println!("  nothing to pool: neither claude_code nor opencode is installed");
    } else {
        println!(
            "  `serve` keeps 2 started, jailed {} processes per served release (--pool N, 0 disables;",
            pooled.join(" / ")
        );
        println!(
            "  --pool-memory-mib bounds their RSS, default 1024); live: GET /metrics karta_pool_*"
        );
    }
    let slots = std::fs::read_dir(data_dir.join("pool"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(karta_host::session::SLOT_PREFIX)
        })
        .count();
    println!(
        "  {slots} pooled process slot(s) in {} (idle or starting, of a host serving this data dir)",
        data_dir.join("pool").display()
    );
}

/// `karta doctor`: what this machine can run.
pub(crate) async fn doctor(app_dir: Option<PathBuf>, data_dir: &Path) -> anyhow::Result<ExitCode> {
    use karta_host::app::HarnessKind;
    use karta_host::harness::{self, HarnessBinaries};

    let binaries = HarnessBinaries::locate();
    println!("harnesses:");
    println!("  builtin      ready (native loop, no binary needed)");
    for (kind, pinned) in [
        (HarnessKind::ClaudeCode, harness::CLAUDE_CODE_VERSION),
        (HarnessKind::Opencode, harness::OPENCODE_VERSION),
    ] {
        let name = kind.as_str();
        match binaries.for_kind(kind) {
            None => println!(
                "  {name:<12} not installed: {}",
                harness::install_hint(kind)
            ),
            Some(path) => match harness::binary_version(path).await {
                Ok(version) => {
                    let note = if version.contains(pinned) {
                        String::new()
                    } else {
                        format!(" (Karta is tested with {pinned})")
                    };
                    println!("  {name:<12} ready: {version} at {}{note}", path.display());
                }
                Err(e) => println!("  {name:<12} broken: {} {e}", path.display()),
            },
        }
    }
    println!("jail features of this kernel:");
    for feature in harness::jail_features() {
        let state = if feature.available { "yes" } else { "no " };
        println!("  {state} {:<20} {}", feature.name, feature.detail);
    }
    println!("  (harness processes run jailed: pid, mount, net, ipc and uts namespaces, a");
    println!("   read-only root with only the session's workspace and HOME writable, no");
    println!("   capabilities, Landlock, seccomp, rlimits, cgroups; a jail that cannot be");
    println!("   built refuses to start them unless `serve --no-jail` is passed)");
    if karta_harness::process::may_set_nice(-1) {
        println!(
            "  yes priority             `serve --harness-nice -N` may run harness processes ahead of the host's threads"
        );
    } else {
        println!(
            "  no  priority             no CAP_SYS_NICE: harness processes run at the host's own nice value"
        );
    }
    println!("harness files (kept the app's before every process-harness turn):");
    println!("  {}", karta_host::app::harness_file_check());
    print_pool(&binaries, data_dir);
    println!("model upstream:");
    match std::env::var("KARTA_UPSTREAM_KEY") {
        Ok(key) if !key.trim().is_empty() => {
            println!(
                "  KARTA_UPSTREAM_KEY is set: `serve --upstream anthropic|openai` forwards to a real provider"
            )
        }
        _ => println!(
            "  none configured: turns use the OFFLINE model (set KARTA_UPSTREAM_KEY and pass --upstream)"
        ),
    }
    if let Some(dir) = app_dir {
        match karta_host::app::load(&dir) {
            Ok(app) => {
                let selection = harness::select(
                    app.harness,
                    &binaries,
                    std::time::Duration::from_secs(1),
                    &karta_harness::http::HttpClient::new(),
                    Some(Default::default()),
                    None,
                );
                let running = selection.harness.as_ref().map_or("builtin", |h| h.name());
                println!("app `{}` ({}):", app.name, dir.display());
                let version = app
                    .harness_version
                    .as_ref()
                    .map(|v| format!(" (version {v})"))
                    .unwrap_or_default();
                println!(
                    "  asks for {}{version}; would run on {running}",
                    app.harness.as_str()
                );
                if let Some(notice) = selection.notice {
                    println!("  {notice}");
                }
                print_app_settings(&app);
                print_setup_state(&app, data_dir);
                print_app_tools(&app, running, data_dir);
            }
            Err(e) => {
                println!("app {}: {e}", dir.display());
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `karta doctor APP` says of the tools the model will be offered:
/// the app's plugins (wasm), the harness's own tools (in the jail), and
/// each MCP server with how it runs.
fn print_app_tools(app: &karta_host::app::AppSpec, running: &str, data_dir: &Path) {
    let plugins: Vec<&str> = app.plugins.iter().map(|p| p.name.as_str()).collect();
    println!(
        "  plugins (WebAssembly, fuel-metered, through Karta's MCP server): {}",
        if plugins.is_empty() {
            "none".to_owned()
        } else {
            plugins.join(", ")
        }
    );
    match running {
        "claude_code" => println!(
            "  Claude Code's own tools, in the jail: Bash, Read, Edit, Write, NotebookEdit, Agent, Skill, … (WebFetch and WebSearch off; `serve --no-harness-tools` turns the rest off)"
        ),
        "opencode" => println!(
            "  OpenCode's own tools, in the jail: bash, read, edit, write, glob, grep, task, skill, … (webfetch off; `serve --no-harness-tools` turns the rest off)"
        ),
        _ => println!("  the builtin harness offers only the app's plugins and skills"),
    }
    for server in &app.command_servers {
        let how = if running == "builtin" {
            "not started (the builtin harness does not start commands)".to_owned()
        } else if std::path::Path::new(&server.command)
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("python"))
        {
            // Compiled into the data dir's cache, as `karta serve` would
            // (then it starts without compiling): the answer is the real one.
            use karta_host::plugin::python_mcp::compile;
            match compile(
                &app.root,
                &server.command,
                &server.args,
                &data_dir.join("python-mcp"),
            ) {
                Ok(compiled) => format!(
                    "compiled to a WebAssembly component ({}; fuel-metered, in wasmtime)",
                    if compiled.cached {
                        "cached".to_owned()
                    } else {
                        format!(
                            "compiled now in {:.1} s",
                            compiled.compile_time.as_secs_f64()
                        )
                    }
                ),
                Err(why) => format!("a process in each session's jail (not compiled: {why})"),
            }
        } else {
            "a process in each session's jail, from the app's read-only folder (CPU metered)"
                .to_owned()
        };
        println!(
            "  MCP server `{}` ({} {}): {how}",
            server.name,
            server.command,
            server.args.join(" ")
        );
    }
}

/// What `karta doctor APP` says of the app's setup script: not run for
/// this version of the app, done (with the version's hash), or failed
/// (with the end of its output).
fn print_setup_state(app: &karta_host::app::AppSpec, data_dir: &Path) {
    use karta_host::setup::{SetupRecord, SetupState};

    let Some(script) = &app.setup_script else {
        println!("  setup script: none");
        return;
    };
    let script = script.display();
    match karta_host::setup::state(app, data_dir) {
        Err(e) => println!("  setup script {script}: cannot tell its state: {e}"),
        Ok(SetupState::NoScript) => println!("  setup script: none"),
        Ok(SetupState::NotRun { hash }) => println!(
            "  setup script {script}: not run for this version of the app (hash {hash}); `karta serve --data {}` runs it at start",
            data_dir.display()
        ),
        Ok(SetupState::Ran(SetupRecord::Done {
            hash, duration_ms, ..
        })) => println!(
            "  setup script {script}: done (hash {hash}, {:.1} s); every session's harness starts from its HOME, read-only",
            duration_ms as f64 / 1000.0
        ),
        Ok(SetupState::Ran(SetupRecord::Failed {
            hash, how, output, ..
        })) => {
            println!(
                "  setup script {script}: FAILED (hash {hash}): it {how}; the next `karta serve` runs it again. Its last output:"
            );
            let lines: Vec<&str> = output.lines().collect();
            for line in &lines[lines.len().saturating_sub(20)..] {
                println!("    | {line}");
            }
        }
    }
}

/// What `karta doctor APP` says of the app's Karta files: env names (never
/// their values), the setup script, the permission mode, unknown keys.
fn print_app_settings(app: &karta_host::app::AppSpec) {
    use karta_host::app::EnvSource;

    let names = |host: bool, bound: bool| -> Vec<String> {
        app.env_vars
            .iter()
            .filter(|v| (v.source == Some(EnvSource::Host)) == host && v.source.is_some() == bound)
            .map(|v| match (v.source, &v.description) {
                (Some(EnvSource::Host), _) => v.name.clone(),
                (Some(source), _) => format!("{} ({})", v.name, source.as_str()),
                (None, Some(d)) => format!("{} (optional: {d})", v.name),
                (None, None) => format!("{} (optional)", v.name),
            })
            .collect()
    };
    let list = |items: Vec<String>| {
        if items.is_empty() {
            "none".to_owned()
        } else {
            items.join(", ")
        }
    };
    println!("  env bound: {}", list(names(false, true)));
    println!("  env unbound: {}", list(names(false, false)));
    let host = names(true, true);
    if !host.is_empty() {
        println!(
            "  env set by the host (the app's value is not used): {}",
            host.join(", ")
        );
    }
    println!("  permission mode: {}", app.permission_mode.as_str());
    if app.unknown_keys.is_empty() {
        println!("  unknown keys: none");
    } else {
        println!("  unknown keys (warned, ignored):");
        for key in &app.unknown_keys {
            println!("    {key}");
        }
    }
    for notice in &app.notices {
        println!("  {notice}");
    }
}
