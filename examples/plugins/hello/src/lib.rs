//! `hello` — the smallest useful plugin: one tool, one function.
//!
//! Build: `cargo build --manifest-path examples/plugins/Cargo.toml --target wasm32-wasip2 --release`
//! Try:   `karta tool call examples/plugins/target/wasm32-wasip2/release/hello.wasm greet '{"name":"Ada"}'`

mod greet;

pub use greet::{GreetInput, GreetOutput, greet};
use karta_guest::export_plugin;

export_plugin! {
    tool("greet", "Greets someone by name.", greet),
}
