//! Errors of the plugin runtime, each telling *which* limit or step failed.
//!
//! A failed tool call is a [`CallFailure`]: an [`ErrorKind`] a program can act
//! on, a message a person can read, and what the call consumed before it
//! failed (a call that runs out of fuel still used all of it, and is billed).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a tool call failed. Serialized in `snake_case` (`out_of_fuel`, …), the
/// names the CLI and the APIs report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The call used its whole fuel budget.
    OutOfFuel,
    /// The instance tried to grow its memory past the cap.
    OutOfMemory,
    /// The call ran past its wall-clock deadline.
    Timeout,
    /// The guest trapped: a panic, a stack overflow, an invalid operation.
    Trap,
    /// The input was not JSON, or the tool rejected it.
    InvalidInput,
    /// The tool ran and reported a failure of its own.
    ToolError,
    /// The tool needed a capability its grant does not give.
    AccessDenied,
    /// The tool's output was larger than the grant allows.
    OutputTooLarge,
    /// The tool's output was not JSON.
    InvalidOutput,
    /// No tool of that name in this plugin.
    UnknownTool,
    /// The host has no free instance slot right now; retry later.
    Busy,
    /// Something failed in the host itself (not the plugin's fault).
    Internal,
}

impl ErrorKind {
    /// The `snake_case` name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OutOfFuel => "out_of_fuel",
            Self::OutOfMemory => "out_of_memory",
            Self::Timeout => "timeout",
            Self::Trap => "trap",
            Self::InvalidInput => "invalid_input",
            Self::ToolError => "tool_error",
            Self::AccessDenied => "access_denied",
            Self::OutputTooLarge => "output_too_large",
            Self::InvalidOutput => "invalid_output",
            Self::UnknownTool => "unknown_tool",
            Self::Busy => "busy",
            Self::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tool call that did not produce output.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct CallFailure {
    /// What went wrong.
    pub kind: ErrorKind,
    /// The details, for a person.
    pub message: String,
    /// Fuel used before the failure (the whole budget for `out_of_fuel`).
    pub fuel_consumed: u64,
    /// Wall-clock time of the call, in microseconds.
    pub duration_us: u64,
    /// What the plugin logged (and wrote to stdout/stderr) before failing.
    pub logs: Vec<super::LogLine>,
}

impl CallFailure {
    /// A failure found before anything ran (no fuel used).
    pub(crate) fn before_run(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            fuel_consumed: 0,
            duration_us: 0,
            logs: Vec::new(),
        }
    }
}

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The component file could not be read.
    #[error("cannot read the plugin {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not a valid WebAssembly component (a core module, a
    /// corrupt file, or features the host does not enable).
    #[error("not a valid WebAssembly component: {0:#}")]
    Compile(wasmtime::Error),
    /// The component does not fit the `karta:plugin` world: it exports no
    /// `karta:plugin/tools`, or imports something the host does not provide.
    #[error("the component is not a karta:plugin@0.1.0 plugin: {0:#}")]
    World(wasmtime::Error),
    /// The grant asks for more than the host allows.
    #[error("invalid grant: {0}")]
    Grant(String),
    /// The plugin's `list` export failed or returned bad tool descriptions.
    #[error("the plugin's tool list is unusable: {0}")]
    Tools(String),
}

/// Why the runtime itself could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The wasmtime engine rejected the configuration (for example, the
    /// pooling allocator could not reserve its address space).
    #[error("cannot create the wasmtime engine: {0:#}")]
    Engine(wasmtime::Error),
    /// The linker could not be set up.
    #[error("cannot link host imports: {0:#}")]
    Linker(wasmtime::Error),
    /// The artifact cache directory could not be created.
    #[error("cannot use the cache directory {path}: {source}")]
    Cache {
        /// The directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The HTTP client could not be built.
    #[error("cannot set up outbound HTTP: {0}")]
    Http(String),
}
