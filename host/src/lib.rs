//! # karta-host — the Karta data plane as a library
//!
//! Karta serves agent *harness apps* as metered HTTP services. What sets it
//! apart is that every tool call the agent makes runs as a WebAssembly
//! component in wasmtime, under a fuel budget (which becomes the cost cap), a
//! memory cap and a wall-clock deadline, with only the capabilities its grant
//! lists.
//!
//! This crate is built one module per capability (see `docs/ARCHITECTURE.md`).
//! Today it holds the [`plugin`] runtime:
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

pub mod api;
pub mod app;
pub mod gateway;
mod host;
pub mod plugin;
pub mod session;
pub mod store;

pub use host::{Host, HostConfig, HostError};
