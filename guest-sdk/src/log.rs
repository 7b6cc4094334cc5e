//! Writing to the host's log for the current call.
//!
//! Lines go to the host, which shows them to the operator (and, from the CLI,
//! on standard error). The host bounds how much one call may log; lines past
//! the budget are dropped and counted, never an error.

use crate::__bindings::karta::plugin::log::{Level, write};

/// Logs a debugging detail.
pub fn debug(message: &str) {
    write(Level::Debug, message);
}

/// Logs normal progress.
pub fn info(message: &str) {
    write(Level::Info, message);
}

/// Logs something unexpected that the tool recovered from.
pub fn warn(message: &str) {
    write(Level::Warn, message);
}

/// Logs a failure.
pub fn error(message: &str) {
    write(Level::Error, message);
}
