//! # karta-host — the Karta data plane as a library
//!
//! Karta serves agent *harness apps* as metered HTTP services. What sets it
//! apart is that every tool call the agent makes runs as a WebAssembly
//! component in wasmtime, under a fuel budget (which becomes the cost cap), a
//! memory cap and a wall-clock deadline, with only the capabilities its grant
//! lists.
//!
//! This crate is built one module per capability (see `docs/ARCHITECTURE.md`):
//! [`app`] loads a harness folder, [`store`] keeps state in sled,
//! [`session`] runs turns and their event logs, [`gateway`] is the model
//! endpoint (with the offline model), [`mcp`] gives harness processes the
//! session's tools, [`harness`] picks the harness (builtin, Claude Code,
//! OpenCode), [`api`] is the HTTP protocol, [`plugin`] runs tools in
//! wasmtime, and [`setup`] runs an app's setup script once per version.
//! [`Host`] puts them together.
//!
//! Embedding a host — build it from a folder, open a session, send a
//! message, read the events:
//!
//! ```
//! use karta_host::session::{MessageRequest, Published};
//! use karta_host::{Event, Host, HostConfig};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app = tempfile::tempdir()?;
//! std::fs::write(app.path().join("AGENTS.md"), "Be brief.")?;
//! let data = tempfile::tempdir()?;
//!
//! let mut config = HostConfig::new(app.path());
//! config.data_dir = data.path().to_path_buf();
//! // An AGENTS.md folder asks for OpenCode; run it on the native loop.
//! config.harness = Some(karta_host::app::HarnessKind::Builtin);
//! let host = Host::start(config).await?; // the offline model: no network
//!
//! let session = host.sessions().create(None, Default::default()).await?;
//! let turn = host
//!     .sessions()
//!     .send(&session.id, MessageRequest { text: "hi".into(), ..Default::default() })
//!     .await?;
//! let mut events = host.sessions().subscribe(&session.id, turn.after).await?;
//! let mut kinds = Vec::new();
//! while let Some(Published::Event(envelope)) = events.recv().await {
//!     kinds.push(envelope.event.kind());
//!     if let Event::Done(done) = &envelope.event {
//!         assert!(done.usage.total() > 0, "the gateway metered the turn");
//!     }
//! }
//! kinds.dedup(); // text arrives as several deltas
//! assert_eq!(kinds, ["step_start", "text", "step_finish", "done"]);
//! assert_eq!(turn.finished.await?.text, "You said: \"hi\".");
//! host.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The plugin runtime on its own:
//!
//! ```no_run
//! use karta_host::plugin::{CallOptions, PluginGrant, PluginRuntime, RuntimeConfig};
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let runtime = PluginRuntime::new(RuntimeConfig::default())?;
//! let plugin = runtime
//!     .load_file("units.wasm".as_ref(), PluginGrant::default())
//!     .await?;
//! for tool in plugin.tools() {
//!     println!("{}: {}", tool.name, tool.description);
//! }
//! let outcome = plugin
//!     .call("convert", r#"{"value": 1, "from": "mi", "to": "km"}"#, &CallOptions::default())
//!     .await?;
//! println!("{} (fuel {})", outcome.output, outcome.fuel_consumed);
//! # Ok(()) }
//! ```

/// The allocator of every program that links the host: mimalloc, because
/// a turn allocates and frees many short-lived buffers from several threads
/// (event JSON, HTTP frames, sled nodes) and glibc's `malloc` spent ~15 % of
/// the host's CPU per turn on it (BENCHMARKS.md). A program that wants its
/// own allocator builds the host with `default-features = false`.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod api;
pub mod app;
pub mod auth;
pub mod billing;
pub mod byok;
pub mod credentials;
pub mod gateway;
pub mod harness;
mod host;
pub mod listen;
pub mod mcp;
pub mod meter;
pub mod metrics;
pub mod plugin;
pub mod projects;
pub mod release;
pub mod session;
pub mod setup;
pub mod store;
pub mod webhooks;

/// The protocol's events, as every part of the host speaks them.
pub use karta_harness::{Envelope, ErrorCode, Event, TurnStatus, Usage};

pub use host::{Host, HostConfig, HostError};

/// Helpers shared by the crate's unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    /// Runs `test` (an `#[ignore]`d test of this binary, by its full path)
    /// as a child process with `env` set, its stdout piped: a crash test's
    /// writer, to be killed with `kill -9` while it writes.
    pub(crate) fn spawn_test_child(
        test: &str,
        env: (&str, &std::path::Path),
    ) -> std::process::Child {
        let exe = std::env::current_exe().expect("test binary");
        std::process::Command::new(exe)
            .args([
                test,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(env.0, env.1)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn the child")
    }
}
