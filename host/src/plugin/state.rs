//! What one call's `Store` holds: its WASI context, its limiter, its log, its
//! grant. Built fresh for every call and dropped with it, so nothing leaks
//! from one call (or one session) into the next.

use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::karta::plugin::log;
use super::grant::PluginGrant;
use super::http::HttpClient;

/// Most bytes of log text one call may produce; later lines are dropped and
/// counted, so a chatty plugin cannot fill the host's memory.
pub(crate) const MAX_LOG_BYTES: usize = 64 * 1024;

/// The data of one call's store.
pub(crate) struct CallState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryCap,
    pub(crate) log: LogBuffer,
    pub(crate) grant: Arc<PluginGrant>,
    pub(crate) http: HttpClient,
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

/// Caps linear memory and tables for one call.
pub(crate) struct MemoryCap {
    pub(crate) memory_bytes: usize,
    pub(crate) hit: bool,
}

/// Table elements one instance may hold (function references; Rust guests use
/// a few hundred).
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
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
#[derive(Clone)]
pub(crate) struct CappedOutput {
    buffer: Arc<std::sync::Mutex<Vec<u8>>>,
    cap: usize,
}

impl CappedOutput {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            buffer: Arc::default(),
            cap,
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
