//! What one call's `Store` holds: its WASI context, its limiter, its log, its
//! grant. Built fresh for every call and dropped with it, so nothing leaks
//! from one call (or one session) into the next.
//!
//! Also the two ways host work is tied to the guest's own limits: the
//! [`MemoryCap`] knows how much memory the guest has left (the HTTP import
//! reads no more than that), and bytes that cross into the host through an
//! import (log lines, stdout/stderr, HTTP) are charged as fuel by
//! [`charge_host_bytes`] when the import returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::component::ResourceTable;
use wasmtime::{CallHook, ResourceLimiter, StoreContextMut, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::karta::plugin::log;
use super::grant::PluginGrant;
use super::http::HttpClient;

/// Most bytes of log text one call may produce; later lines are dropped and
/// counted, so a chatty plugin cannot fill the host's memory.
pub(crate) const MAX_LOG_BYTES: usize = 64 * 1024;

/// Fuel charged for each byte a guest passes to the host or receives from it
/// through an import (log text, stdout/stderr, HTTP requests and responses).
///
/// Wasm instructions cost about one unit each, but a guest can fill a
/// megabyte with one `memory.fill` and hand it to the host again and again;
/// every time, the host copies and validates it. Charging per byte makes that
/// work count against the same budget as the guest's own: at one unit per
/// byte, the default budget (10⁹) buys about 1 GB through the host per call.
pub const FUEL_PER_HOST_BYTE: u64 = 1;

/// The data of one call's store.
pub(crate) struct CallState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryCap,
    pub(crate) log: LogBuffer,
    pub(crate) grant: Arc<PluginGrant>,
    pub(crate) http: HttpClient,
    /// Bytes that crossed into or out of the host since the last charge;
    /// shared with the stdout/stderr pipes.
    pub(crate) unbilled: Arc<AtomicU64>,
    /// Keeps the epoch ticking while the store lives (its deadline).
    pub(crate) _ticks: super::engine::TickHold,
}

impl CallState {
    /// Records `bytes` to be charged as fuel when the current import returns.
    pub(crate) fn charge_host_bytes(&mut self, bytes: usize) {
        self.unbilled.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// The store's call hook: on every return from the host into wasm, takes the
/// bytes the import moved out of the fuel tank. When the tank cannot pay, the
/// guest traps out of fuel right there, before it can make another call.
///
/// A hook rather than a charge inside each import because WASI's stdout and
/// stderr are host code we do not write; their pipes count into the same
/// counter.
pub(crate) fn charge_host_bytes(
    mut store: StoreContextMut<'_, CallState>,
    hook: CallHook,
) -> wasmtime::Result<()> {
    if !matches!(hook, CallHook::ReturningFromHost) {
        return Ok(());
    }
    let bytes = store.data().unbilled.swap(0, Ordering::Relaxed);
    if bytes == 0 {
        return Ok(());
    }
    let cost = bytes.saturating_mul(FUEL_PER_HOST_BYTE);
    let left = store.get_fuel()?;
    if cost > left {
        store.set_fuel(0)?;
        return Err(Trap::OutOfFuel.into());
    }
    store.set_fuel(left - cost)?;
    Ok(())
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// One line a plugin logged.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogLine {
    /// `debug`, `info`, `warn`, `error`, or `stdout` / `stderr` for what the
    /// plugin printed.
    pub level: String,
    /// The text.
    pub message: String,
}

/// A bounded log for one call.
#[derive(Debug, Default)]
pub(crate) struct LogBuffer {
    pub(crate) lines: Vec<LogLine>,
    bytes: usize,
    pub(crate) dropped: usize,
}

impl LogBuffer {
    pub(crate) fn push(&mut self, level: &str, message: &str) {
        if self.bytes + message.len() > MAX_LOG_BYTES {
            self.dropped += 1;
            return;
        }
        self.bytes += message.len();
        self.lines.push(LogLine {
            level: level.to_owned(),
            message: message.to_owned(),
        });
    }

    /// The lines, with a last line counting what was dropped, if anything.
    pub(crate) fn finish(mut self) -> Vec<LogLine> {
        if self.dropped > 0 {
            self.lines.push(LogLine {
                level: "warn".into(),
                message: format!(
                    "{} log lines dropped: a call may log at most {MAX_LOG_BYTES} bytes",
                    self.dropped
                ),
            });
        }
        self.lines
    }
}

// The `types` interface has no functions; the linker still wants its trait.
impl super::bindings::karta::plugin::types::Host for CallState {}

impl log::Host for CallState {
    async fn write(&mut self, level: log::Level, message: String) {
        let level = match level {
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        self.charge_host_bytes(message.len());
        self.log.push(level, &message);
    }
}

/// The error a memory grow past the cap raises. Raising an error (rather than
/// failing the grow) makes out-of-memory a recognisable kind whatever the
/// guest's allocator does on failure.
#[derive(Debug, thiserror::Error)]
#[error("memory limit exceeded: the plugin asked for {desired} bytes, its cap is {cap} bytes")]
pub(crate) struct MemoryLimitExceeded {
    desired: usize,
    cap: usize,
}

/// Caps linear memory and tables for one call, and counts what the guest's
/// memories hold so that host-side buffers can be sized to what is left.
pub(crate) struct MemoryCap {
    pub(crate) memory_bytes: usize,
    pub(crate) hit: bool,
    /// Bytes of linear memory granted so far, over all of the instance's
    /// memories (their initial sizes included: creating a memory asks the
    /// limiter too).
    pub(crate) used: usize,
}

impl MemoryCap {
    pub(crate) fn new(memory_bytes: usize) -> Self {
        Self {
            memory_bytes,
            hit: false,
            used: 0,
        }
    }

    /// How many more bytes the guest's memory may grow by.
    pub(crate) fn room(&self) -> usize {
        self.memory_bytes.saturating_sub(self.used)
    }
}

/// Table elements one instance may hold (function references; Rust guests use
/// a few hundred).
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.hit = true;
            return Err(MemoryLimitExceeded {
                desired,
                cap: self.memory_bytes,
            }
            .into());
        }
        self.used = self.used.saturating_add(desired.saturating_sub(current));
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.hit = true;
            return Err(wasmtime::format_err!(
                "table limit exceeded: {desired} elements asked, the cap is {MAX_TABLE_ELEMENTS}"
            ));
        }
        Ok(true)
    }

    // A component holds a handful of core instances, memories and tables; cap
    // them so a hostile component cannot hoard pool slots.
    fn instances(&self) -> usize {
        16
    }

    fn memories(&self) -> usize {
        4
    }

    fn tables(&self) -> usize {
        8
    }
}

/// A plugin's stdout or stderr: keeps the first `cap` bytes and silently
/// drops the rest.
///
/// Dropping rather than failing matters: Rust's `print!` panics when a write
/// fails, so a stream that refused writes once full would turn a chatty but
/// correct plugin into a trap.
///
/// Every byte written, kept or not, is counted into `unbilled` and charged
/// as fuel.
#[derive(Clone)]
pub(crate) struct CappedOutput {
    buffer: Arc<std::sync::Mutex<Vec<u8>>>,
    cap: usize,
    unbilled: Arc<AtomicU64>,
}

impl CappedOutput {
    pub(crate) fn new(cap: usize, unbilled: Arc<AtomicU64>) -> Self {
        Self {
            buffer: Arc::default(),
            cap,
            unbilled,
        }
    }

    /// What was kept, as text.
    pub(crate) fn text(&self) -> String {
        let buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

impl wasmtime_wasi::cli::IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for CappedOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for CappedOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        bytes: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.unbilled
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        let room = self.cap.saturating_sub(buffer.len());
        buffer.extend_from_slice(&bytes[..bytes.len().min(room)]);
        std::task::Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
