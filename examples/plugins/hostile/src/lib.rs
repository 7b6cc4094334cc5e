//! `hostile` — test fixtures that try to hurt the host. Each tool attacks one
//! limit; the host must turn every attack into one failed call of its own
//! kind and then serve the next call normally. Never grant this plugin
//! anything in a real app.
//!
//! | tool          | attacks                         | expected kind    |
//! |---------------|---------------------------------|------------------|
//! | `spin`        | fuel (infinite loop)            | `out_of_fuel` / `timeout` |
//! | `alloc`       | memory (allocates without end)  | `out_of_memory`  |
//! | `read_path`   | the file sandbox                | `access_denied`  |
//! | `panic`       | the host's stability            | `trap`           |
//! | `huge_output` | the output cap                  | `output_too_large` |
//! | `recurse`     | the stack                       | `trap`           |
//! | `fetch`       | the HTTP allow-list             | `access_denied`  |
//! | `sleep`       | the deadline, from a host call  | `timeout`        |
//! | `count`       | nothing: a deterministic loop   | (fuel figures)   |
//! | `env`         | the environment                 | (returns it: must be empty) |
//! | `print`       | stdout/stderr capture           | (succeeds; output kept up to the cap) |
//! | `log_huge`    | host copies paid in fuel        | `out_of_fuel` when repeated enough |

use std::hint::black_box;

use karta_guest::{ToolError, export_plugin};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

/// No input.
#[derive(Deserialize, JsonSchema)]
pub struct Nothing {}

/// A count.
#[derive(Deserialize, JsonSchema)]
pub struct Count {
    /// How many.
    pub n: u64,
}

/// A path.
#[derive(Deserialize, JsonSchema)]
pub struct PathInput {
    /// The path to read.
    pub path: String,
}

/// How much to log.
#[derive(Deserialize, JsonSchema)]
pub struct LogInput {
    /// Bytes per line.
    pub n: u64,
    /// Lines.
    pub times: u64,
}

/// A URL.
#[derive(Deserialize, JsonSchema)]
pub struct UrlInput {
    /// The URL to fetch.
    pub url: String,
}

/// Loops forever.
pub fn spin(_: Nothing) -> Result<Value, ToolError> {
    let mut x: u64 = 0;
    loop {
        x = black_box(x.wrapping_add(1));
    }
}

/// Allocates 1 MiB blocks, touching each, until something stops it.
pub fn alloc(_: Nothing) -> Result<Value, ToolError> {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = vec![0u8; 1024 * 1024];
        block[0] = 1;
        blocks.push(black_box(block));
    }
}

/// Reads any path and returns its content (it must never succeed outside the
/// workspace).
pub fn read_path(input: PathInput) -> Result<Value, ToolError> {
    match std::fs::read_to_string(&input.path) {
        Ok(text) => Ok(json!({ "read": text })),
        Err(e) => Err(ToolError::from_io(&input.path, &e)),
    }
}

/// Panics.
pub fn panic(_: Nothing) -> Result<Value, ToolError> {
    panic!("the hostile plugin panicked on purpose")
}

/// Returns a string of `n` bytes.
pub fn huge_output(input: Count) -> Result<Value, ToolError> {
    Ok(Value::String("x".repeat(input.n as usize)))
}

/// Small frames, so that the engine's own stack limit (not the guest's
/// in-memory stack) is what stops it.
#[inline(never)]
fn depth(n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        black_box(depth(black_box(n - 1))).wrapping_add(1)
    }
}

/// Recurses `n` levels deep.
pub fn recurse(input: Count) -> Result<Value, ToolError> {
    Ok(json!(depth(input.n)))
}

/// Fetches a URL through the host.
pub fn fetch(input: UrlInput) -> Result<Value, ToolError> {
    let response = karta_guest::http::get(&input.url)?;
    Ok(json!({ "status": response.status, "body": response.text()? }))
}

/// Sleeps `n` milliseconds in a host call (the guest uses no fuel meanwhile).
pub fn sleep(input: Count) -> Result<Value, ToolError> {
    std::thread::sleep(std::time::Duration::from_millis(input.n));
    Ok(json!({ "slept_ms": input.n }))
}

/// Sums `n` numbers: a deterministic amount of work.
pub fn count(input: Count) -> Result<Value, ToolError> {
    let mut sum: u64 = 0;
    for i in 0..input.n {
        sum = black_box(sum.wrapping_add(i));
    }
    karta_guest::log::info(&format!("counted to {}", input.n));
    Ok(json!({ "sum": sum }))
}

/// Returns the environment and arguments the plugin sees.
pub fn env(_: Nothing) -> Result<Value, ToolError> {
    let vars: Vec<(String, String)> = std::env::vars().collect();
    let args: Vec<String> = std::env::args().collect();
    Ok(json!({ "vars": vars, "args": args }))
}

/// Prints `n` lines of 100 bytes to stdout and to stderr.
pub fn print(input: Count) -> Result<Value, ToolError> {
    let line = "y".repeat(99);
    for _ in 0..input.n {
        println!("{line}");
        eprintln!("{line}");
    }
    Ok(json!({ "printed": input.n }))
}

/// Logs one string of `n` bytes `times` times: a few instructions in the
/// guest per line, megabytes of copying in the host unless it is paid for.
pub fn log_huge(input: LogInput) -> Result<Value, ToolError> {
    let line = "x".repeat(input.n as usize);
    for _ in 0..input.times {
        karta_guest::log::info(&line);
    }
    Ok(json!({ "logged": input.n.saturating_mul(input.times) }))
}

export_plugin! {
    tool("spin", "Loops forever.", spin),
    tool("alloc", "Allocates memory until stopped.", alloc),
    tool("read_path", "Reads any path.", read_path),
    tool("panic", "Panics.", panic),
    tool("huge_output", "Returns n bytes.", huge_output),
    tool("recurse", "Recurses n levels.", recurse),
    tool("fetch", "Fetches a URL.", fetch),
    tool("sleep", "Sleeps n milliseconds.", sleep),
    tool("count", "Sums 0..n.", count),
    tool("env", "Shows the environment.", env),
    tool("print", "Prints n lines to stdout and stderr.", print),
    tool("log_huge", "Logs an n-byte line `times` times.", log_huge),
}
