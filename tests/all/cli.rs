//! `karta tool list` / `karta tool call` as a plugin author uses them: the
//! real binary, real components, JSON on stdout, the exit code.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::support::component;

/// One compile cache for all CLI runs of this test binary, so each fixture is
/// compiled once, not once per run.
fn cache_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"))
        .path()
}

fn karta(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_karta"))
        .args(args)
        .env("KARTA_CACHE_DIR", cache_dir())
        .output()
        .expect("karta runs")
}

/// Runs `karta tool call` and returns (exit code, the JSON it printed).
fn call(fixture: &str, tool: &str, input: &str, extra: &[&str]) -> (i32, Value) {
    let path = component(fixture);
    let mut args = vec![
        "tool",
        "call",
        path.to_str().expect("utf-8 path"),
        tool,
        input,
    ];
    args.extend_from_slice(extra);
    let output = karta(&args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().unwrap_or(-1), value)
}

fn error_kind(value: &Value) -> &str {
    value["error"]["kind"].as_str().unwrap_or("<none>")
}

#[test]
fn tool_list_prints_tools_and_schemas() {
    let path = component("units");
    let output = karta(&["tool", "list", path.to_str().expect("utf-8")]);
    assert!(output.status.success(), "{output:?}");
    let tools: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(tools[0]["name"], "convert");
    assert_eq!(
        tools[0]["input_schema"]["properties"]["from"]["type"],
        "string"
    );
    assert_eq!(tools[1]["name"], "calc");
}

#[test]
fn tool_call_prints_output_fuel_and_duration() {
    let (code, value) = call(
        "units",
        "convert",
        r#"{"value":100,"from":"degC","to":"degF"}"#,
        &[],
    );
    assert_eq!(code, 0, "{value}");
    assert_eq!(value["output"]["value"], json!(212.0));
    assert!(
        value["fuel_consumed"].as_u64().is_some_and(|f| f > 0),
        "{value}"
    );
    assert!(value["duration_us"].is_u64(), "{value}");
}

#[test]
fn tool_call_reports_every_error_kind() {
    let cases: &[(&str, &str, &[&str], &str)] = &[
        ("spin", "{}", &["--fuel", "1000000"], "out_of_fuel"),
        (
            "spin",
            "{}",
            &["--fuel", "100000000000000", "--timeout-ms", "200"],
            "timeout",
        ),
        (
            "alloc",
            "{}",
            &["--memory-mib", "8", "--fuel", "100000000000"],
            "out_of_memory",
        ),
        ("panic", "{}", &[], "trap"),
        ("recurse", r#"{"n":100000000}"#, &[], "trap"),
        (
            "huge_output",
            r#"{"n":100000}"#,
            &["--max-output-bytes", "1000"],
            "output_too_large",
        ),
        (
            "read_path",
            r#"{"path":"/etc/passwd"}"#,
            &[],
            "access_denied",
        ),
        (
            "fetch",
            r#"{"url":"http://127.0.0.1:9/"}"#,
            &[],
            "access_denied",
        ),
        ("count", r#"{"n":"many"}"#, &[], "invalid_input"),
        ("nope", "{}", &[], "unknown_tool"),
    ];
    for (tool, input, extra, kind) in cases {
        let (code, value) = call("hostile", tool, input, extra);
        assert_eq!(error_kind(&value), *kind, "{tool}: {value}");
        assert!(
            value["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert_ne!(code, 0, "{tool} must exit non-zero");
    }
    // tool_error: the units plugin reports a result that is not finite.
    let (code, value) = call("units", "calc", r#"{"expression":"10^400"}"#, &[]);
    assert_eq!(error_kind(&value), "tool_error", "{value}");
    assert_eq!(code, 1);
}

#[test]
fn tool_call_mounts_a_directory_read_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.txt"), "alpha").expect("write");
    let ro = format!("{}:ro", dir.path().display());
    let (code, value) = call("files", "read", r#"{"path":"a.txt"}"#, &["--dir", &ro]);
    assert_eq!(code, 0, "{value}");
    assert_eq!(value["output"]["text"], "alpha");
    let (_, value) = call(
        "files",
        "write",
        r#"{"path":"b.txt","content":"x"}"#,
        &["--dir", &ro],
    );
    assert_eq!(error_kind(&value), "access_denied", "{value}");
    assert!(!dir.path().join("b.txt").exists());
}

#[test]
fn bad_files_are_reported_as_invalid_components() {
    let dir = tempfile::tempdir().expect("tempdir");
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\0\0\0").expect("write");
    let output = karta(&["tool", "call", junk.to_str().expect("utf-8"), "x", "{}"]);
    assert_eq!(output.status.code(), Some(1));
    let value: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(error_kind(&value), "invalid_component");
    assert!(
        value["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("wasm32-wasip2")),
        "{value}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn karta_chat_holds_a_conversation_with_an_approval() {
    use std::io::Write;

    let app = crate::sessions::support_bot();
    let data = tempfile::tempdir().expect("tempdir");
    let server = crate::sessions::Server::start(app.path(), data.path()).await;
    let url = server.url("");
    let script = "hello\n\
                  /agent technical\n\
                  /tool write {\"path\": \"n.txt\", \"content\": \"x\"}\n\
                  o\n\
                  what did I say first?\n\
                  /quit\n";
    let output = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_karta"))
            .args(["chat", &url])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("karta chat starts");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write");
        child.wait_with_output().expect("karta chat ends")
    })
    .await
    .expect("task");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("You said: \"hello\"."), "{stdout}");
    assert!(stdout.contains("? Allow the tool `write`"), "{stdout}");
    assert!(stdout.contains("✓ write"), "{stdout}");
    assert!(stdout.contains("Earlier you said"), "{stdout}\n{stderr}");
    assert!(stderr.contains("session ses_"), "{stderr}");
    server.stop().await;
}

#[test]
fn serve_refuses_a_broken_app_naming_the_file_and_line() {
    let app = tempfile::tempdir().expect("tempdir");
    std::fs::write(app.path().join("CLAUDE.md"), "hi").expect("write");
    std::fs::write(
        app.path().join("karta.toml"),
        "name = \"x\"\n[[plugins]]\nname = \"p\"\n",
    )
    .expect("write");
    let data = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_karta"))
        .args([
            "serve",
            app.path().to_str().expect("utf-8"),
            "--listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(data.path())
        .output()
        .expect("karta runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("karta.toml:2"), "{stderr}");
    assert!(stderr.contains("path"), "names the missing field: {stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_karta"))
        .args([
            "serve",
            app.path().to_str().expect("utf-8"),
            "--listen",
            "0.0.0.0:0",
        ])
        .output()
        .expect("karta runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("loopback"));
}

/// `karta serve` on a Claude Code folder whose binary is missing says so
/// plainly on start-up and serves on the builtin harness.
#[test]
fn serve_says_plainly_when_the_harness_binary_is_missing() {
    use std::io::BufRead;

    let app = tempfile::tempdir().expect("tempdir");
    std::fs::write(app.path().join("CLAUDE.md"), "Be brief.").expect("write");
    let data = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_karta"))
        .args([
            "serve",
            app.path().to_str().expect("utf-8"),
            "--listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(data.path())
        // No claude anywhere: not on PATH, not in ./harnesses, and an
        // explicit path that does not exist.
        .current_dir(data.path())
        .env("PATH", "/usr/bin:/bin")
        .env("KARTA_CLAUDE_BIN", data.path().join("no-such-claude"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("karta runs");
    let stderr = child.stderr.take().expect("stderr");
    let mut banner = Vec::new();
    for line in std::io::BufReader::new(stderr).lines() {
        let line = line.expect("line");
        let done = line.contains("listening on");
        banner.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let banner = banner.join("\n");
    assert!(
        banner.contains("asks for the claude-code harness, but its binary is not installed")
            && banner.contains("using the builtin harness")
            && banner.contains("install-harnesses.sh"),
        "{banner}"
    );
}

/// `karta doctor` names each harness with its state and version, the
/// kernel's jail features, how the harness files are checked, and what an
/// app would run on.
#[test]
fn doctor_reports_harnesses_jail_features_and_the_app() {
    // A copy with its plugins built in (a fresh clone has no .wasm files).
    let app = crate::sessions::support_bot();
    let output = Command::new(env!("CARGO_BIN_EXE_karta"))
        .args(["doctor"])
        .arg(app.path())
        .env("PATH", "/usr/bin:/bin")
        .env("KARTA_CLAUDE_BIN", "/nonexistent/claude")
        .env("KARTA_OPENCODE_BIN", "/nonexistent/opencode")
        .output()
        .expect("karta runs");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "builtin      ready",
        "claude-code  not installed",
        "opencode     not installed",
        "network namespaces",
        "seccomp",
        "system calls denied to jailed processes",
        "harness files (kept the app's before every process-harness turn):",
        "inotify: one read a turn",
        "OFFLINE model",
        "app `support-bot`",
        "asks for claude-code; would run on builtin",
        "plugins (WebAssembly, fuel-metered, through Karta's MCP server):",
        "the builtin harness offers only the app's plugins and skills",
    ] {
        assert!(stdout.contains(expected), "missing `{expected}`:\n{stdout}");
    }
}

/// The example app in Karta's documented shape (`examples/karta-shaped`).
fn karta_shaped() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/karta-shaped")
}

/// `karta doctor` on an app written for Karta lists its env names (never a
/// value), its setup script, its permission mode and its unknown keys.
#[test]
fn doctor_lists_env_names_setup_permission_mode_and_unknown_keys() {
    let data = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_karta"))
        .args(["doctor"])
        .arg(karta_shaped())
        .arg("--data")
        .arg(data.path())
        .env("SUPPORT_EMAIL", "escalations-secret@example.com")
        .env("KARTA_CLAUDE_BIN", "/nonexistent/claude")
        .output()
        .expect("karta runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    for expected in [
        "app `karta-shaped`",
        "asks for claude-code (version 2)",
        "env bound: APP_GREETING (karta.toml), LOG_LEVEL (default), SUPPORT_EMAIL (operator environment)",
        "env unbound: ORDER_API_TOKEN (optional: Token for the order API, when there is one)",
        "setup script setup.sh: not run for this version of the app (hash ",
        "permission mode: autonomous",
        "unknown keys: none",
        "[genui] is kept but not used",
    ] {
        assert!(stdout.contains(expected), "missing `{expected}`:\n{stdout}");
    }
    assert!(
        !stdout.contains("escalations-secret") && !stdout.contains("Hello from Beans"),
        "values are never shown:\n{stdout}"
    );

    // Unknown keys are listed with their lines, and the app still loads.
    let app = tempfile::tempdir().expect("tempdir");
    std::fs::write(app.path().join("CLAUDE.md"), "hi").expect("write");
    std::fs::write(
        app.path().join("karta.toml"),
        "name = \"x\"\ndeploy = true\nregion = \"eu\"\n",
    )
    .expect("write");
    std::fs::write(
        app.path().join("karta.jsonc"),
        "{\n  // typo\n  \"runtime\": {\"permision_mode\": \"autonomous\"}\n}\n",
    )
    .expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_karta"))
        .args(["doctor"])
        .arg(app.path())
        .output()
        .expect("karta runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    for expected in [
        "karta.toml:3: unknown key `region` (ignored)",
        "karta.jsonc:3: unknown key `runtime.permision_mode` (ignored)",
        "permission mode: default",
        "env bound: none",
    ] {
        assert!(stdout.contains(expected), "missing `{expected}`:\n{stdout}");
    }
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("unknown key `region`"),
        "warned too: {output:?}"
    );
}

/// A required env name left unbound refuses the app, naming it; `karta
/// serve` says so too.
#[test]
fn an_unbound_required_env_name_is_named_by_doctor_and_serve() {
    let output = Command::new(env!("CARGO_BIN_EXE_karta"))
        .args(["doctor"])
        .arg(karta_shaped())
        .env_remove("SUPPORT_EMAIL")
        .output()
        .expect("karta runs");
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(
            "karta.toml:13: [env] `SUPPORT_EMAIL` (Where escalations go) is required but not bound"
        ),
        "{stdout}"
    );

    let data = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_karta"))
        .arg("serve")
        .arg(karta_shaped())
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .env_remove("SUPPORT_EMAIL")
        .output()
        .expect("karta runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`SUPPORT_EMAIL` (Where escalations go) is required"),
        "{stderr}"
    );
}

/// `karta doctor APP` says how each of the app's MCP servers runs — a
/// Python one it can compile as a component, one with a native import as a
/// process in the jail, with the reason.
#[test]
fn doctor_says_how_each_mcp_server_runs() {
    let app = tempfile::tempdir().expect("tempdir");
    let data = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(app.path().join("tools")).expect("mkdir");
    std::fs::write(app.path().join("CLAUDE.md"), "An app.\n").expect("write");
    std::fs::write(
        app.path().join("tools/native.py"),
        "import numpy\nimport sys\nfor line in sys.stdin:\n    pass\n",
    )
    .expect("write");
    std::fs::write(
        app.path().join(".mcp.json"),
        r#"{"mcpServers": {
            "native": {"command": "python3", "args": ["tools/native.py"]},
            "shell": {"command": "bash", "args": ["tools/run.sh"]}
        }}"#,
    )
    .expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_karta"))
        .args(["doctor"])
        .arg(app.path())
        .arg("--data")
        .arg(data.path())
        .env(
            "KARTA_CLAUDE_BIN",
            crate::support::root().join("harnesses/node_modules/.bin/claude"),
        )
        .output()
        .expect("karta runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.contains(&format!("MCP server `{name}`")))
            .unwrap_or_else(|| panic!("no line for `{name}`:\n{stdout}"))
            .to_owned()
    };
    let native = line("native");
    assert!(
        native.contains("a process in each session's jail (not compiled:")
            && native.contains("numpy"),
        "{native}"
    );
    assert!(
        line("shell").contains("a process in each session's jail, from the app's read-only folder"),
        "{stdout}"
    );
}
