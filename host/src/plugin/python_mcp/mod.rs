//! An app's stdio MCP server written in Python, run as a WebAssembly
//! component: compiled once at load ([`compile()`]), then every MCP request
//! runs in a fresh instance under fuel, memory and time limits, like a
//! plugin call.
//!
//! - [`compile()`] turns `python3 tools/x.py` (stdlib only) into a
//!   `wasi:cli/command` component with componentize-py, cached by content.
//!   When it cannot (the command is not a Python script, componentize-py is
//!   missing, the script imports a native or third-party module), it says
//!   why in a [`PyCompileError`]: the caller runs the server as a jailed
//!   process instead.
//! - [`PluginRuntime::load_python_server`] compiles the component to native
//!   code with the runtime's one engine (the artifact cached on disk beside
//!   the component, by the plugin cache's rules), links it with WASI only
//!   (the plugins' linker), and asks it once for its
//!   `initialize` answer and its `tools/list`, which are then served from
//!   memory.
//! - [`PythonMcpServer::request`] serves one JSON-RPC request: a fresh
//!   instance gets on stdin the lines a client sends a newly started server
//!   (`initialize`, `notifications/initialized`, the request), then end of
//!   input; the server answers and exits; the answer with the request's id
//!   is taken from its stdout. Nothing survives between calls (a server's
//!   globals start as the snapshot taken at compile time, every time).
//!
//! What the server sees: its working directory is the app folder, mounted
//! read-only at `/app` — where `.mcp.json`'s relative paths point and where
//! a process started by the harness (in the app's folder, read-only in the
//! jail) would find `data/*.log` too. When the caller passes the session's
//! workspace it is mounted read-only at `/workspace`. No environment but
//! the `.mcp.json` entry's `env`, no network, no other files.

mod compile;
mod servers;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wasmtime::Trap;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

pub use compile::{
    COMPONENTIZE_PY_LOCAL, COMPONENTIZE_PY_VERSION, CompiledPythonServer, PyCompileError, compile,
    locate_componentize_py,
};
pub use servers::{AppPythonServers, PythonMcpConfig};

use super::state::{CallState, CappedOutput};
use super::{
    ArtifactSource, CallFailure, ErrorKind, Limits, LoadError, PluginGrant, PluginRuntime,
    RunReport, RuntimeInner,
};

/// Where the app folder (the server's working directory) appears inside.
pub const GUEST_APP: &str = "/app";

/// Default limits of one request to a compiled Python server.
///
/// Python is an interpreter running in wasm: a fresh instance answering
/// `initialize` and `ping` costs ~2.8 M fuel, the example's `error_rate`
/// over 2 000 log lines ~39 M (BENCHMARKS.md). 5 G leaves room for real
/// scans of large logs while still stopping a loop in a few seconds.
/// Memory: the interpreter's snapshot is ~20 MiB before the tool allocates.
pub const DEFAULT_LIMITS: Limits = Limits {
    fuel: 5_000_000_000,
    memory_mib: 256,
    timeout_ms: 30_000,
    max_output_bytes: 4 * 1024 * 1024,
};

/// The `initialize` request sent ahead of every request (and at load).
fn initialize_request(id: &str) -> Value {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "initialize",
        "params": {
            "protocolVersion": crate::mcp::PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": { "name": "karta", "version": env!("CARGO_PKG_VERSION") },
        },
    })
}

/// The id of the `initialize` Karta sends first; a client's own id is
/// never a string with this prefix in practice, and a clash only means the
/// client's request is answered by our initialize (checked below).
const INIT_ID: &str = "karta-initialize";

/// A compiled Python MCP server, linked and ready. Cheap to clone.
#[derive(Clone)]
pub struct PythonMcpServer {
    inner: Arc<ServerInner>,
}

struct ServerInner {
    runtime: Arc<RuntimeInner>,
    pre: CommandPre<CallState>,
    name: String,
    app_root: PathBuf,
    env: Vec<(String, String)>,
    limits: Limits,
    initialize: Value,
    tools: Vec<Value>,
    compiled: CompiledPythonServer,
    source: ArtifactSource,
    native_compile_time: Duration,
}

/// What the caller supplies for one request: the plugins' own call options
/// (the session's workspace, mounted read-only at `/workspace` here, and a
/// lower fuel cap).
pub type ServerCallOptions = super::CallOptions;

/// One request served.
#[derive(Debug, Clone)]
pub struct ServerOutcome {
    /// The server's JSON-RPC response (with the request's id), as it wrote
    /// it: `result` or `error`.
    pub response: Value,
    /// Fuel used: instantiation, the `initialize` exchange and the request.
    pub fuel_consumed: u64,
    /// Wall-clock time, in microseconds.
    pub duration_us: u64,
    /// What the server wrote to stderr.
    pub logs: Vec<super::LogLine>,
}

impl PluginRuntime {
    /// Loads the component `compiled` (from [`compile()`]) of the server
    /// `name` of the app at `app_root`: native code from the artifact cache
    /// beside the component (compiled now the first time: ~15 s, the
    /// component holds a whole interpreter), linked against WASI, and asked once for
    /// its `initialize` answer and its tools.
    pub async fn load_python_server(
        &self,
        name: &str,
        compiled: &CompiledPythonServer,
        app_root: &Path,
        limits: Limits,
    ) -> Result<PythonMcpServer, LoadError> {
        self.load_python_server_with_env(name, compiled, app_root, &[], limits)
            .await
    }

    /// [`Self::load_python_server`] with the environment the server's
    /// `.mcp.json` entry gives it (`"env": {…}`), and nothing else of the
    /// host's.
    pub async fn load_python_server_with_env(
        &self,
        name: &str,
        compiled: &CompiledPythonServer,
        app_root: &Path,
        env: &[(String, String)],
        limits: Limits,
    ) -> Result<PythonMcpServer, LoadError> {
        let inner = &self.inner;
        if limits.memory_bytes() > inner.config.max_memory_bytes as u64 {
            return Err(LoadError::Grant(format!(
                "memory_mib = {} is above this host's maximum of {} MiB",
                limits.memory_mib,
                inner.config.max_memory_bytes / (1024 * 1024)
            )));
        }
        let bytes = tokio::fs::read(&compiled.wasm_path)
            .await
            .map_err(|source| LoadError::Read {
                path: compiled.wasm_path.display().to_string(),
                source,
            })?;
        let started = Instant::now();
        // The native artifact is kept beside the component (same private
        // folder, named by content and engine settings like the plugin
        // cache's), so it lives as long as the compiled component does,
        // whatever data dir the host runs with.
        let cache = match compiled.wasm_path.parent() {
            Some(dir) => super::cache::ArtifactCache::new(&inner.engine, Some(dir.to_path_buf()))
                .map_err(|e| LoadError::Compile(wasmtime::format_err!("{e}")))?,
            None => super::cache::ArtifactCache::new(&inner.engine, None)
                .map_err(|e| LoadError::Compile(wasmtime::format_err!("{e}")))?,
        };
        let (component, _digest, source) = {
            let engine = inner.engine.clone();
            // Cranelift on an 18 MB component takes ~20 s: off the async
            // executor's threads.
            tokio::task::spawn_blocking(move || cache.component(&engine, &bytes))
                .await
                .map_err(|e| {
                    LoadError::Compile(wasmtime::format_err!("compile task failed: {e}"))
                })??
        };
        let native_compile_time = started.elapsed();
        let instance_pre = inner
            .linker
            .instantiate_pre(&component)
            .map_err(LoadError::World)?;
        let pre = CommandPre::new(instance_pre).map_err(LoadError::World)?;
        let mut server = ServerInner {
            runtime: inner.clone(),
            pre,
            name: name.to_owned(),
            app_root: app_root.to_path_buf(),
            env: env.to_vec(),
            limits,
            initialize: Value::Null,
            tools: Vec::new(),
            compiled: compiled.clone(),
            source,
            native_compile_time,
        };
        // Listing is the host's setup step: it runs under the server's
        // memory limit but a generous fuel and time budget.
        let list_limits = Limits {
            fuel: limits.fuel.max(DEFAULT_LIMITS.fuel),
            timeout_ms: limits.timeout_ms.max(DEFAULT_LIMITS.timeout_ms),
            ..limits
        };
        let list = json!({ "jsonrpc": "2.0", "id": "karta-tools-list", "method": "tools/list" });
        let (lines, report) = server
            .exchange(&list, list_limits, &ServerCallOptions::default())
            .await
            .map_err(|f| LoadError::Tools(f.to_string()))?;
        let init = find_response(&lines, &json!(INIT_ID)).ok_or_else(|| {
            LoadError::Tools(format!(
                "the server did not answer `initialize`{}",
                stderr_tail(&report.logs)
            ))
        })?;
        server.initialize = init
            .get("result")
            .cloned()
            .ok_or_else(|| LoadError::Tools(format!("`initialize` failed: {}", init["error"])))?;
        let listed = find_response(&lines, &json!("karta-tools-list")).ok_or_else(|| {
            LoadError::Tools(format!(
                "the server did not answer `tools/list`{}",
                stderr_tail(&report.logs)
            ))
        })?;
        server.tools = listed["result"]["tools"]
            .as_array()
            .cloned()
            .ok_or_else(|| {
                LoadError::Tools(format!(
                    "`tools/list` answered no `tools` array: {}",
                    listed.get("error").unwrap_or(&listed["result"])
                ))
            })?;
        Ok(PythonMcpServer {
            inner: Arc::new(server),
        })
    }
}

impl PythonMcpServer {
    /// The server's name in the app's `.mcp.json`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// What the server answered to `initialize` at load.
    pub fn initialize_result(&self) -> &Value {
        &self.inner.initialize
    }

    /// Its tools, as its `tools/list` gave them (MCP tool objects).
    pub fn tools(&self) -> &[Value] {
        &self.inner.tools
    }

    /// How it was compiled (paths, digest, componentize-py time).
    pub fn compiled(&self) -> &CompiledPythonServer {
        &self.inner.compiled
    }

    /// Where the native code came from, and how long getting it took.
    pub fn artifact(&self) -> (ArtifactSource, Duration) {
        (self.inner.source, self.inner.native_compile_time)
    }

    /// The limits each request runs under.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Serves one JSON-RPC request (with an `id`) in a fresh instance.
    /// A server that answers with a JSON-RPC error is an `Ok` whose
    /// `response` carries the `error`; a server that runs out of fuel,
    /// memory or time, traps, or exits without answering is a
    /// [`CallFailure`] saying which.
    pub async fn request(
        &self,
        request: &Value,
        options: &ServerCallOptions,
    ) -> Result<ServerOutcome, CallFailure> {
        let Some(id) = request.get("id").filter(|id| !id.is_null()) else {
            return Err(CallFailure::before_run(
                ErrorKind::InvalidInput,
                "a request needs an `id` (notifications are not forwarded)",
            ));
        };
        if *id == json!(INIT_ID) {
            return Err(CallFailure::before_run(
                ErrorKind::InvalidInput,
                format!("the id `{INIT_ID}` is reserved"),
            ));
        }
        let mut limits = self.inner.limits;
        if let Some(cap) = options.fuel_cap {
            limits.fuel = limits.fuel.min(cap);
        }
        let (lines, mut report) = self.inner.exchange(request, limits, options).await?;
        match find_response(&lines, id) {
            Some(response) => Ok(ServerOutcome {
                response,
                fuel_consumed: report.fuel_consumed,
                duration_us: report.started.elapsed().as_micros() as u64,
                logs: std::mem::take(&mut report.logs),
            }),
            None => {
                let tail = stderr_tail(&report.logs);
                Err(report.fail(
                    ErrorKind::InvalidOutput,
                    format!("the server exited without answering request {id}{tail}"),
                ))
            }
        }
    }

    /// `tools/call` of `tool` with `arguments`: a convenience over
    /// [`Self::request`].
    pub async fn call_tool(
        &self,
        tool: &str,
        arguments: &Value,
        options: &ServerCallOptions,
    ) -> Result<ServerOutcome, CallFailure> {
        let request = json!({
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": { "name": tool, "arguments": arguments },
        });
        self.request(&request, options).await
    }
}

impl ServerInner {
    /// Runs the server once with `initialize`, `notifications/initialized`
    /// and `request` on stdin, and returns the JSON lines it printed, with
    /// what the run used. A run that failed (trap, fuel, memory, time) is a
    /// `CallFailure`; a server that returned an error status after printing
    /// its answers is not (its answers count).
    async fn exchange(
        &self,
        request: &Value,
        limits: Limits,
        options: &ServerCallOptions,
    ) -> Result<(Vec<Value>, RunReport), CallFailure> {
        let mut stdin = Vec::new();
        for message in [
            initialize_request(INIT_ID),
            json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }),
            request.clone(),
        ] {
            stdin.extend_from_slice(message.to_string().as_bytes());
            stdin.push(b'\n');
        }

        let started = Instant::now();
        let fuel = limits.fuel;
        let unbilled = Arc::new(AtomicU64::new(0));
        // One byte over the cap tells a full answer from a cut one.
        let out_cap = usize::try_from(limits.max_output_bytes)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        let stdout = CappedOutput::new(out_cap, unbilled.clone());
        let stderr = CappedOutput::new(super::MAX_STDIO_BYTES, unbilled.clone());
        let wasi = self.wasi_context(stdin, options, &stdout, &stderr)?;
        // A WASI command imports nothing of Karta's: no grant, no HTTP.
        // stdin, stdout and stderr bytes cost fuel like a plugin's imports.
        let mut store = self.runtime.limited_store(
            wasi,
            Arc::new(PluginGrant::default()),
            &limits,
            unbilled.clone(),
        )?;

        // Epochs stop guest code; the timeout also stops time in host code.
        let deadline = Duration::from_millis(limits.timeout_ms);
        let timed = tokio::time::timeout(deadline, async {
            let command = self.pre.instantiate_async(&mut store).await?;
            command.wasi_cli_run().call_run(&mut store).await
        })
        .await;
        let result = match timed {
            Ok(result) => result,
            Err(_) => Err(wasmtime::Error::from(Trap::Interrupt)),
        };
        let consumed = super::fuel_consumed(&store, fuel, &unbilled);
        let result = match result {
            Ok(_) if consumed > fuel => Err(wasmtime::Error::from(Trap::OutOfFuel)),
            // `sys.exit(n)` reaches the host as an `I32Exit`: an exit, not a
            // failure of the sandbox; the answers printed before it count.
            Err(e) if e.downcast_ref::<wasmtime_wasi::I32Exit>().is_some() => Ok(Ok(())),
            other => other,
        };
        let state = store.into_data();
        let mut log = state.log;
        for line in stderr.text().lines().filter(|l| !l.trim().is_empty()) {
            log.push("stderr", line);
        }
        let mut report = RunReport {
            fuel_consumed: consumed.min(fuel),
            memory_cap_hit: state.limiter.hit,
            limits,
            started,
            duration_us: started.elapsed().as_micros() as u64,
            logs: log.finish(),
        };
        if let Err(error) = result {
            return Err(report.classify(error));
        }
        let text = stdout.text();
        if text.len() >= out_cap {
            return Err(report.fail(
                ErrorKind::OutputTooLarge,
                format!(
                    "the server wrote more than {} bytes to stdout",
                    limits.max_output_bytes
                ),
            ));
        }
        // A line that is not JSON (a stray print) is skipped, as an MCP
        // client would log and skip it.
        let lines = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect();
        Ok((lines, report))
    }

    fn wasi_context(
        &self,
        stdin: Vec<u8>,
        options: &ServerCallOptions,
        stdout: &CappedOutput,
        stderr: &CappedOutput,
    ) -> Result<wasmtime_wasi::WasiCtx, CallFailure> {
        let mut wasi = WasiCtxBuilder::new();
        // Only the `.mcp.json` entry's environment, no network; argv is set
        // by the entry module.
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .envs(&self.env)
            .stdin(MemoryInputPipe::new(stdin))
            .stdout(stdout.clone())
            .stderr(stderr.clone());
        let open_failed = |dir: &Path, e: wasmtime::Error| {
            CallFailure::before_run(
                ErrorKind::Internal,
                format!("cannot open {}: {e:#}", dir.display()),
            )
        };
        wasi.preopened_dir(&self.app_root, GUEST_APP, FsPerms::ReadOnly)
            .map_err(|e| open_failed(&self.app_root, e))?;
        if let Some(workspace) = &options.workspace {
            wasi.preopened_dir(workspace, super::GUEST_WORKSPACE, FsPerms::ReadOnly)
                .map_err(|e| open_failed(workspace, e))?;
        }
        Ok(wasi.build())
    }
}

/// The response with `id` among the printed lines.
fn find_response(lines: &[Value], id: &Value) -> Option<Value> {
    lines
        .iter()
        .find(|l| {
            l.get("id") == Some(id) && (l.get("result").is_some() || l.get("error").is_some())
        })
        .cloned()
}

fn stderr_tail(logs: &[super::LogLine]) -> String {
    let lines: Vec<&str> = logs
        .iter()
        .filter(|l| l.level == "stderr")
        .map(|l| l.message.as_str())
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    format!(
        "; stderr: {}",
        lines[lines.len().saturating_sub(3)..].join(" | ")
    )
}
