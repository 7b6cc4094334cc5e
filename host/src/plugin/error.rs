//! Errors of the plugin runtime, each telling *which* limit or step failed.
//!
//! A failed tool call is a [`CallFailure`]: an [`ErrorKind`] a program can act
//! on, a message a person can read, and what the call consumed before it
//! failed (a call that runs out of fuel still used all of it, and is billed).

/// Why a tool call failed: the protocol's tool error kinds, serialized in
/// `snake_case` (`out_of_fuel`, …), the names the CLI and the APIs report.
/// The runtime produces every kind but `denied`, which a harness reports
/// when a person refuses a call.
pub use karta_harness::ToolErrorKind as ErrorKind;

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
