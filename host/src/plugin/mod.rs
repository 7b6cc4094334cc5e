//! The plugin runtime: tool plugins as WebAssembly components in wasmtime.
//!
//! - A [`PluginRuntime`] owns one engine (pooling allocator, fuel and epochs
//!   on), the linker with WASI preview 2 and the `karta:plugin` imports, a
//!   cache of compiled components, and the epoch thread.
//! - [`PluginRuntime::load`] compiles a component once (or maps its
//!   precompiled artifact), checks that it is a `karta:plugin` plugin, links it
//!   into an `InstancePre`, and asks it once for its tools.
//! - [`Plugin::call`] runs one tool in a *fresh* instance, under the grant's
//!   limits: fuel, memory, wall clock and output size, with a WASI context
//!   that has an empty environment, no sockets and, at most, the caller's
//!   workspace directory mounted at `/workspace`. It reports the fuel used and
//!   the time taken, or a [`CallFailure`] whose [`ErrorKind`] says which limit
//!   or step failed.
//!
//! A guest that traps, loops, or runs out of fuel or memory costs one failed
//! call, never the host: the store is dropped, the pool slot reused. What a
//! guest makes the host do is bounded by the guest's own limits: bytes through
//! imports cost fuel, an HTTP body may not outgrow the guest's memory, and the
//! operator caps every grant's deadline ([`RuntimeConfig::max_timeout`]).

mod bindings;
mod cache;
mod engine;
mod error;
mod grant;
mod http;
pub(crate) mod net;
pub mod python_mcp;
mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, Store, Trap};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

pub use cache::ArtifactSource;
pub use error::{CallFailure, ErrorKind, LoadError, RuntimeError};
pub use grant::{Limits, PluginGrant, WorkspaceAccess};
/// A CIDR range, as [`RuntimeConfig::allow_net`] takes it.
pub use ipnet::IpNet;
pub use state::{FUEL_PER_HOST_BYTE, LogLine};

use bindings::{Plugin as PluginWorld, PluginPre};
use state::{CallState, CappedOutput, LogBuffer, MemoryCap, MemoryLimitExceeded};

/// Where the workspace appears inside a plugin.
pub const GUEST_WORKSPACE: &str = "/workspace";

/// Limits for listing a plugin's tools at load time.
const LISTING_LIMITS: Limits = Limits {
    fuel: 1_000_000_000,
    memory_mib: 64,
    timeout_ms: 10_000,
    max_output_bytes: 4 * 1024 * 1024,
};

/// Fuel a store gets beyond the budget, so that the budget can be enforced
/// to the unit (see [`Plugin::run`]).
const FUEL_CHECK_MARGIN: u64 = 1_000_000;

/// Bytes of stdout/stderr a call may print (kept in its log).
const MAX_STDIO_BYTES: usize = 64 * 1024;

/// Settings of a [`PluginRuntime`].
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Directory for precompiled artifacts; `None` keeps them in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Use the pooling allocator (fast instantiation, pre-reserved slots).
    pub pooling: bool,
    /// Instances that may be live at once (pool slots). A call beyond that
    /// fails with [`ErrorKind::Busy`].
    pub max_concurrent_instances: u32,
    /// The most linear memory any grant may ask for, in bytes (the pool's slot
    /// size).
    pub max_memory_bytes: usize,
    /// A guest's stack; deeper recursion traps.
    pub max_wasm_stack_bytes: usize,
    /// Resolution of the wall-clock deadline.
    pub epoch_tick: Duration,
    /// Address ranges plugin HTTP may reach although they are internal
    /// (loopback, private, link-local, …; see the `net` module). Empty: none.
    pub allow_net: Vec<IpNet>,
    /// The longest `timeout_ms` a grant may ask for. A sleeping guest holds a
    /// pool slot for as long as its deadline, so the operator bounds it; a
    /// grant above it is refused at load ([`LoadError::Grant`]), like a
    /// memory cap above [`Self::max_memory_bytes`], rather than silently
    /// shortened.
    pub max_timeout: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            pooling: true,
            max_concurrent_instances: 256,
            max_memory_bytes: 1024 * 1024 * 1024,
            max_wasm_stack_bytes: 512 * 1024,
            epoch_tick: Duration::from_millis(5),
            allow_net: Vec::new(),
            max_timeout: DEFAULT_MAX_TIMEOUT,
        }
    }
}

/// The default of [`RuntimeConfig::max_timeout`].
pub const DEFAULT_MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs tool plugins. Cheap to share (`Arc` inside); create one per process.
#[derive(Clone)]
pub struct PluginRuntime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<CallState>,
    cache: cache::ArtifactCache,
    http: http::HttpClient,
    config: RuntimeConfig,
    // Declared last: dropped after the engine users above.
    ticker: engine::EpochTicker,
}

impl RuntimeInner {
    /// The store of one call, plugin or compiled MCP server alike: the
    /// memory cap, fuel paid for every byte moved by imports, the fuel
    /// budget and the epoch deadline.
    ///
    /// Wasmtime checks fuel at function entries and loop headers, so a call
    /// can finish a little past its budget unnoticed. The store gets a
    /// margin on top, and [`fuel_consumed`] decides: over budget by one
    /// unit is out of fuel, and never more than the budget is billed.
    fn limited_store(
        &self,
        wasi: wasmtime_wasi::WasiCtx,
        grant: Arc<PluginGrant>,
        limits: &Limits,
        unbilled: Arc<AtomicU64>,
    ) -> Result<Store<CallState>, CallFailure> {
        let state = CallState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryCap::new(usize::try_from(limits.memory_bytes()).unwrap_or(usize::MAX)),
            log: LogBuffer::default(),
            grant,
            http: self.http.clone(),
            unbilled,
            // The deadline below counts ticks: they must come.
            _ticks: self.ticker.hold(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        // Bytes moved by imports are paid in fuel when each import returns.
        store.call_hook(state::charge_host_bytes);
        store
            .set_fuel(limits.fuel.saturating_add(FUEL_CHECK_MARGIN))
            .map_err(|e| CallFailure::before_run(ErrorKind::Internal, format!("{e:#}")))?;
        let tick = self.config.epoch_tick.as_millis().max(1) as u64;
        store.set_epoch_deadline(limits.timeout_ms.div_ceil(tick) + 1);
        store.epoch_deadline_trap();
        Ok(store)
    }
}

/// The fuel a finished call used out of `fuel`: what the store burnt past
/// its margin, plus bytes no later return from the host charged (stdout
/// that WASI's writer task flushed after the last import).
fn fuel_consumed(store: &Store<CallState>, fuel: u64, unbilled: &AtomicU64) -> u64 {
    let late = unbilled
        .swap(0, std::sync::atomic::Ordering::Relaxed)
        .saturating_mul(state::FUEL_PER_HOST_BYTE);
    fuel.saturating_add(FUEL_CHECK_MARGIN)
        .saturating_sub(store.get_fuel().unwrap_or(0))
        .saturating_add(late)
}

/// One tool as the plugin describes it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ToolSpec {
    /// The tool's name, unique within the plugin.
    pub name: String,
    /// What the tool does, for the model.
    pub description: String,
    /// JSON Schema of the input.
    pub input_schema: serde_json::Value,
}

/// A loaded plugin: compiled, linked, its tools known. Cheap to clone.
#[derive(Clone)]
pub struct Plugin {
    runtime: Arc<RuntimeInner>,
    pre: PluginPre<CallState>,
    tools: Arc<[ToolSpec]>,
    grant: Arc<PluginGrant>,
    digest: String,
    source: ArtifactSource,
}

/// What the caller supplies for one call, on top of the plugin's grant.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// The host directory to mount at `/workspace`, with the access the grant
    /// gives. Ignored (nothing mounted) when the grant says `none`.
    pub workspace: Option<PathBuf>,
    /// A lower fuel cap for this call (for example, what the org's remaining
    /// budget buys). The call gets the smaller of this and the grant's fuel.
    pub fuel_cap: Option<u64>,
}

/// A tool call that produced output.
#[derive(Debug, Clone)]
pub struct CallOutcome {
    /// The tool's output (valid JSON).
    pub output: serde_json::Value,
    /// Fuel the call used: instantiation plus the call itself.
    pub fuel_consumed: u64,
    /// Wall-clock time of the call (instantiate, run, drop), in microseconds.
    pub duration_us: u64,
    /// What the plugin logged and printed.
    pub logs: Vec<LogLine>,
}

impl PluginRuntime {
    /// Creates the engine, the linker and the cache, and starts the epoch
    /// thread.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let engine = engine::build_engine(&config)?;
        let mut linker = Linker::<CallState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(RuntimeError::Linker)?;
        PluginWorld::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
            .map_err(RuntimeError::Linker)?;
        let cache = cache::ArtifactCache::new(&engine, config.cache_dir.clone())?;
        let ticker = engine::EpochTicker::start(&engine, config.epoch_tick);
        Ok(Self {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                cache,
                http: http::HttpClient::new(net::NetPolicy::new(config.allow_net.clone()))?,
                config,
                ticker,
            }),
        })
    }

    /// Whether the epoch thread is asleep: no call has been running for
    /// a while (about 200 ticks), so it stopped waking up; the next call
    /// wakes it before it runs.
    pub fn epoch_ticker_asleep(&self) -> bool {
        self.inner.ticker.is_asleep()
    }

    /// Loads the component at `path` under `grant`.
    pub async fn load_file(&self, path: &Path, grant: PluginGrant) -> Result<Plugin, LoadError> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|source| LoadError::Read {
                path: path.display().to_string(),
                source,
            })?;
        self.load(&bytes, grant).await
    }

    /// Loads a component from its bytes under `grant`: compile (or reuse),
    /// link, and list its tools once.
    pub async fn load(&self, bytes: &[u8], grant: PluginGrant) -> Result<Plugin, LoadError> {
        let inner = &self.inner;
        if grant.limits.memory_bytes() > inner.config.max_memory_bytes as u64 {
            return Err(LoadError::Grant(format!(
                "memory_mib = {} is above this host's maximum of {} MiB",
                grant.limits.memory_mib,
                inner.config.max_memory_bytes / (1024 * 1024)
            )));
        }
        let max_timeout = inner.config.max_timeout.as_millis();
        if u128::from(grant.limits.timeout_ms) > max_timeout {
            return Err(LoadError::Grant(format!(
                "timeout_ms = {} is above this host's maximum of {max_timeout} ms \
                 (karta serve --plugin-max-timeout-ms)",
                grant.limits.timeout_ms
            )));
        }
        let (component, digest, source) = {
            let engine = inner.engine.clone();
            let runtime = inner.clone();
            let bytes = bytes.to_vec();
            // Compiling takes from milliseconds to seconds: keep it off the
            // async executor's threads.
            tokio::task::spawn_blocking(move || runtime.cache.component(&engine, &bytes))
                .await
                .map_err(|e| {
                    LoadError::Compile(wasmtime::format_err!("compile task failed: {e}"))
                })??
        };
        let instance_pre = inner
            .linker
            .instantiate_pre(&component)
            .map_err(LoadError::World)?;
        let pre = PluginPre::new(instance_pre).map_err(LoadError::World)?;
        let mut plugin = Plugin {
            runtime: inner.clone(),
            pre,
            tools: Arc::from(Vec::new()),
            grant: Arc::new(grant),
            digest,
            source,
        };
        plugin.tools = Arc::from(plugin.list_tools().await?);
        Ok(plugin)
    }

    /// The wasmtime engine (for embedders that precompile or inspect).
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }
}

impl Plugin {
    /// The tools this plugin offers.
    pub fn tools(&self) -> &[ToolSpec] {
        &self.tools
    }

    /// The grant the plugin runs under.
    pub fn grant(&self) -> &PluginGrant {
        &self.grant
    }

    /// SHA-256 of the component bytes, hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Whether loading compiled the component or reused an artifact.
    pub fn artifact_source(&self) -> ArtifactSource {
        self.source
    }

    /// Runs `tool` on `input` (a JSON text) in a fresh instance under the
    /// grant's limits.
    pub async fn call(
        &self,
        tool: &str,
        input: &str,
        options: &CallOptions,
    ) -> Result<CallOutcome, CallFailure> {
        if !self.tools.iter().any(|t| t.name == tool) {
            return Err(CallFailure::before_run(
                ErrorKind::UnknownTool,
                format!(
                    "no tool named `{tool}`; this plugin offers: {}",
                    self.tool_names()
                ),
            ));
        }
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(input) {
            return Err(CallFailure::before_run(
                ErrorKind::InvalidInput,
                format!("the input is not valid JSON: {e}"),
            ));
        }
        let mut limits = self.grant.limits;
        if let Some(cap) = options.fuel_cap {
            limits.fuel = limits.fuel.min(cap);
        }
        let run = self.run(limits, options.workspace.as_deref(), |world, store| {
            let tool = tool.to_owned();
            let input = input.to_owned();
            Box::pin(async move {
                world
                    .karta_plugin_tools()
                    .call_call(store, &tool, &input)
                    .await
            })
        });
        let (result, mut report) = run.await?;
        let output = match result {
            Ok(Ok(output)) => output,
            Ok(Err(tool_error)) => {
                use bindings::karta::plugin::types::ToolError as E;
                let (kind, message) = match tool_error {
                    E::InvalidInput(m) => (ErrorKind::InvalidInput, m),
                    E::Failed(m) => (ErrorKind::ToolError, m),
                    E::AccessDenied(m) => (ErrorKind::AccessDenied, m),
                };
                return Err(report.fail(kind, message));
            }
            Err(error) => return Err(report.classify(error)),
        };
        let max = self.grant.limits.max_output_bytes;
        if output.len() as u64 > max {
            return Err(report.fail(
                ErrorKind::OutputTooLarge,
                format!(
                    "the tool returned {} bytes; this plugin may return at most {max}",
                    output.len()
                ),
            ));
        }
        let output = match serde_json::from_str(&output) {
            Ok(value) => value,
            Err(e) => {
                return Err(report.fail(
                    ErrorKind::InvalidOutput,
                    format!("the tool's output is not valid JSON: {e}"),
                ));
            }
        };
        report.duration_us = report.started.elapsed().as_micros() as u64;
        Ok(CallOutcome {
            output,
            fuel_consumed: report.fuel_consumed,
            duration_us: report.duration_us,
            logs: std::mem::take(&mut report.logs),
        })
    }

    fn tool_names(&self) -> String {
        self.tools
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Calls the plugin's `list-tools` export once and checks what it returns.
    ///
    /// Listing is the host's own setup step, not a billed call, so it runs
    /// under the host's listing limits rather than the grant's fuel and
    /// deadline (a grant may be far too small to build schemas); memory stays
    /// the grant's.
    async fn list_tools(&self) -> Result<Vec<ToolSpec>, LoadError> {
        let limits = Limits {
            memory_mib: self.grant.limits.memory_mib,
            ..LISTING_LIMITS
        };
        let run = self.run(limits, None, |world, store| {
            Box::pin(async move { world.karta_plugin_tools().call_list_tools(store).await })
        });
        let (result, mut report) = run.await.map_err(|f| LoadError::Tools(f.to_string()))?;
        let listed = result.map_err(|e| LoadError::Tools(report.classify(e).to_string()))?;
        validate_tools(listed)
    }

    /// Instantiates the plugin in a fresh store under `limits`, runs `body`
    /// on it, and measures what it used.
    async fn run<R>(
        &self,
        limits: Limits,
        workspace: Option<&Path>,
        body: impl for<'a> FnOnce(
            &'a PluginWorld,
            &'a mut Store<CallState>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = wasmtime::Result<R>> + Send + 'a>,
        >,
    ) -> Result<(wasmtime::Result<R>, RunReport), CallFailure> {
        let started = Instant::now();
        let fuel = limits.fuel;
        let unbilled = Arc::new(AtomicU64::new(0));
        let stdout = CappedOutput::new(MAX_STDIO_BYTES, unbilled.clone());
        let stderr = CappedOutput::new(MAX_STDIO_BYTES, unbilled.clone());
        let wasi = self.wasi_context(workspace, &stdout, &stderr)?;
        let mut store =
            self.runtime
                .limited_store(wasi, self.grant.clone(), &limits, unbilled.clone())?;

        // The epoch deadline stops guest code; this timeout also stops time
        // spent inside host imports (HTTP, clocks), which epochs cannot
        // interrupt.
        let deadline = Duration::from_millis(limits.timeout_ms);
        let timed = tokio::time::timeout(deadline, async {
            let world = self.pre.instantiate_async(&mut store).await?;
            body(&world, &mut store).await
        })
        .await;
        let result = match timed {
            Ok(result) => result,
            Err(_) => Err(wasmtime::Error::from(Trap::Interrupt)),
        };

        let consumed = fuel_consumed(&store, fuel, &unbilled);
        let result = match result {
            Ok(_) if consumed > fuel => Err(wasmtime::Error::from(Trap::OutOfFuel)),
            other => other,
        };
        let state = store.into_data();
        let mut log = state.log;
        for (name, pipe) in [("stdout", stdout), ("stderr", stderr)] {
            let text = pipe.text();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                log.push(name, line);
            }
        }
        let report = RunReport {
            fuel_consumed: consumed.min(fuel),
            memory_cap_hit: state.limiter.hit,
            limits,
            started,
            duration_us: started.elapsed().as_micros() as u64,
            logs: log.finish(),
        };
        Ok((result, report))
    }

    fn wasi_context(
        &self,
        workspace: Option<&Path>,
        stdout: &CappedOutput,
        stderr: &CappedOutput,
    ) -> Result<wasmtime_wasi::WasiCtx, CallFailure> {
        let mut wasi = WasiCtxBuilder::new();
        // Explicitly: no environment, no arguments, no network of any kind.
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stdout(stdout.clone())
            .stderr(stderr.clone());
        let perms = match self.grant.workspace {
            WorkspaceAccess::None => None,
            WorkspaceAccess::ReadOnly => Some(FsPerms::ReadOnly),
            WorkspaceAccess::ReadWrite => Some(FsPerms::ReadWrite),
        };
        if let (Some(dir), Some(perms)) = (workspace, perms) {
            wasi.preopened_dir(dir, GUEST_WORKSPACE, perms)
                .map_err(|e| {
                    CallFailure::before_run(
                        ErrorKind::Internal,
                        format!("cannot open the workspace {}: {e:#}", dir.display()),
                    )
                })?;
        }
        Ok(wasi.build())
    }
}

/// What a run used, and the pieces a failure report needs.
struct RunReport {
    fuel_consumed: u64,
    memory_cap_hit: bool,
    limits: Limits,
    started: Instant,
    duration_us: u64,
    logs: Vec<LogLine>,
}

impl RunReport {
    fn fail(&mut self, kind: ErrorKind, message: String) -> CallFailure {
        CallFailure {
            kind,
            message,
            fuel_consumed: self.fuel_consumed,
            duration_us: self.started.elapsed().as_micros() as u64,
            logs: std::mem::take(&mut self.logs),
        }
    }

    /// Names the limit or step behind a wasmtime error.
    fn classify(&mut self, error: wasmtime::Error) -> CallFailure {
        let limits = self.limits;
        if self.memory_cap_hit || error.downcast_ref::<MemoryLimitExceeded>().is_some() {
            // The root cause says how much was asked for; the wasm backtrace
            // around it means nothing to the caller.
            return self.fail(
                ErrorKind::OutOfMemory,
                format!(
                    "the plugin exceeded its memory cap of {} MiB ({})",
                    limits.memory_mib,
                    error.root_cause()
                ),
            );
        }
        let trap = error.downcast_ref::<Trap>().copied();
        match trap {
            Some(Trap::OutOfFuel) => self.fail(
                ErrorKind::OutOfFuel,
                format!(
                    "the plugin used its whole fuel budget ({} units) without finishing",
                    self.fuel_consumed
                ),
            ),
            Some(Trap::Interrupt) => self.fail(
                ErrorKind::Timeout,
                format!("the call ran past its deadline of {} ms", limits.timeout_ms),
            ),
            Some(trap) => {
                let what = match trap {
                    Trap::StackOverflow => "stack overflow (recursion too deep)".to_owned(),
                    // Rust and C guests keep part of their stack in linear
                    // memory; running off its bottom looks like this.
                    Trap::MemoryOutOfBounds => "out-of-bounds memory access (in a Rust or C \
                        plugin often its in-memory stack running out: recursion too deep)"
                        .to_owned(),
                    Trap::UnreachableCodeReached => {
                        "wasm `unreachable` executed (a Rust plugin panicked or aborted)".to_owned()
                    }
                    other => other.to_string(),
                };
                let stderr = self.stderr_tail();
                self.fail(
                    ErrorKind::Trap,
                    format!("the plugin trapped: {what}{stderr}"),
                )
            }
            None => {
                let message = error.root_cause().to_string();
                if message.contains("concurrent") && message.contains("limit") {
                    self.fail(
                        ErrorKind::Busy,
                        format!("no free plugin instance slot; retry shortly ({message})"),
                    )
                } else {
                    let stderr = self.stderr_tail();
                    self.fail(
                        ErrorKind::Trap,
                        format!("the plugin failed: {message}{stderr}"),
                    )
                }
            }
        }
    }

    /// The last lines the plugin wrote to stderr (a panic message), for the
    /// error message.
    fn stderr_tail(&self) -> String {
        let lines: Vec<&str> = self
            .logs
            .iter()
            .filter(|l| l.level == "stderr")
            .map(|l| l.message.as_str())
            .collect();
        if lines.is_empty() {
            return String::new();
        }
        let tail = &lines[lines.len().saturating_sub(3)..];
        format!("; stderr: {}", tail.join(" | "))
    }
}

/// Checks the plugin's own description of its tools.
fn validate_tools(
    listed: Vec<bindings::karta::plugin::types::ToolInfo>,
) -> Result<Vec<ToolSpec>, LoadError> {
    let mut tools: Vec<ToolSpec> = Vec::with_capacity(listed.len());
    for info in listed {
        let name_ok = !info.name.is_empty()
            && info.name.len() <= 64
            && info
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(LoadError::Tools(format!(
                "tool name `{}` must be 1-64 characters of [a-z0-9_-]",
                info.name
            )));
        }
        if tools.iter().any(|t| t.name == info.name) {
            return Err(LoadError::Tools(format!(
                "tool `{}` is listed twice",
                info.name
            )));
        }
        let input_schema: serde_json::Value =
            serde_json::from_str(&info.input_schema).map_err(|e| {
                LoadError::Tools(format!(
                    "the input schema of `{}` is not valid JSON: {e}",
                    info.name
                ))
            })?;
        if !input_schema.is_object() {
            return Err(LoadError::Tools(format!(
                "the input schema of `{}` must be a JSON object",
                info.name
            )));
        }
        tools.push(ToolSpec {
            name: info.name,
            description: info.description,
            input_schema,
        });
    }
    Ok(tools)
}
