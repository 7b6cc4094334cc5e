//! The `greet` tool itself: plain Rust, shared by the plugin (`lib.rs`) and
//! the native baseline (`../hello-stdio`).

use karta_guest::ToolError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Input of `greet`.
#[derive(Deserialize, JsonSchema)]
pub struct GreetInput {
    /// Who to greet.
    pub name: String,
}

/// Output of `greet`.
#[derive(Serialize)]
pub struct GreetOutput {
    /// The greeting.
    pub greeting: String,
}

/// Greets `name`.
pub fn greet(input: GreetInput) -> Result<GreetOutput, ToolError> {
    let name = input.name.trim();
    if name.is_empty() {
        return Err(ToolError::invalid_input("`name` must not be empty"));
    }
    Ok(GreetOutput {
        greeting: format!("Hello, {name}!"),
    })
}
