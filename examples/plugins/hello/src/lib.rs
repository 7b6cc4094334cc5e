//! `hello` — the smallest useful plugin: one tool, one function.
//!
//! Build: `cargo build --manifest-path examples/plugins/Cargo.toml --target wasm32-wasip2 --release`
//! Try:   `karta tool call examples/plugins/target/wasm32-wasip2/release/hello.wasm greet '{"name":"Ada"}'`

use karta_guest::{ToolError, export_plugin};
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

export_plugin! {
    tool("greet", "Greets someone by name.", greet),
}
