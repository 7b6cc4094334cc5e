//! `hello-stdio` — the `greet` tool as a native program speaking JSON lines on
//! stdin/stdout, like a stdio MCP server: one request per line
//! (`{"name": "Ada"}`), one answer per line. The baseline the plugin runtime
//! is measured against in `benches/tool_call.rs`.

#[path = "../../hello/src/greet.rs"]
mod greet;

use std::io::{BufRead, Write};

fn main() {
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let answer = match serde_json::from_str(&line) {
            Ok(input) => match greet::greet(input) {
                Ok(output) => serde_json::json!({ "output": output }),
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            },
            Err(e) => serde_json::json!({ "error": format!("invalid input: {e}") }),
        };
        if writeln!(stdout, "{answer}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            break;
        }
    }
}
