//! `karta tool`: a plugin (a WebAssembly component) loaded and called the
//! way the host runs it, with the same limits; answers are JSON on stdout,
//! and the exit code tells the caller's mistakes (2) from the plugin's
//! failures (1).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use karta_host::plugin::{
    CallFailure, CallOptions, ErrorKind, Limits, PluginGrant, WorkspaceAccess,
};
use serde_json::json;

use crate::ToolCommand;

/// Runs a `karta tool` command.
pub(crate) async fn run(command: ToolCommand) -> anyhow::Result<ExitCode> {
    match command {
        ToolCommand::List { component, runtime } => {
            let runtime = runtime.runtime(Vec::new())?;
            match runtime.load_file(&component, PluginGrant::default()).await {
                Ok(plugin) => {
                    println!("{}", serde_json::to_string_pretty(plugin.tools())?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(print_error("invalid_component", &e.to_string())),
            }
        }
        ToolCommand::Call {
            component,
            tool,
            input,
            limits,
            dir,
            allow_hosts,
            allow_net,
            logs,
            runtime,
        } => {
            let input = read_input(input)?;
            let (workspace, access) = match dir.as_deref() {
                Some(spec) => {
                    let (path, access) = parse_dir(spec);
                    let path = std::fs::canonicalize(path)
                        .with_context(|| format!("--dir {spec}: no such directory"))?;
                    anyhow::ensure!(path.is_dir(), "--dir {spec}: not a directory");
                    (Some(path), access)
                }
                None => (None, WorkspaceAccess::None),
            };
            let grant = PluginGrant {
                limits: Limits {
                    fuel: limits.fuel,
                    memory_mib: limits.memory_mib,
                    timeout_ms: limits.timeout_ms,
                    max_output_bytes: limits.max_output_bytes,
                },
                workspace: access,
                allowed_hosts: allow_hosts,
            };
            let runtime = runtime.runtime(allow_net)?;
            let plugin = match runtime.load_file(&component, grant).await {
                Ok(plugin) => plugin,
                Err(e) => return Ok(print_error("invalid_component", &e.to_string())),
            };
            let options = CallOptions {
                workspace,
                fuel_cap: None,
            };
            match plugin.call(&tool, &input, &options).await {
                Ok(outcome) => {
                    if logs {
                        print_logs(&outcome.logs);
                    }
                    let answer = json!({
                        "output": outcome.output,
                        "fuel_consumed": outcome.fuel_consumed,
                        "duration_us": outcome.duration_us,
                    });
                    println!("{answer}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(failure) => {
                    if logs {
                        print_logs(&failure.logs);
                    }
                    Ok(print_failure(&failure))
                }
            }
        }
    }
}

/// `PATH` or `PATH:ro` (also `:rw`, the default).
fn parse_dir(spec: &str) -> (&Path, WorkspaceAccess) {
    if let Some(path) = spec.strip_suffix(":ro") {
        (Path::new(path), WorkspaceAccess::ReadOnly)
    } else if let Some(path) = spec.strip_suffix(":rw") {
        (Path::new(path), WorkspaceAccess::ReadWrite)
    } else {
        (Path::new(spec), WorkspaceAccess::ReadWrite)
    }
}

fn read_input(input: String) -> anyhow::Result<String> {
    if input != "-" {
        return Ok(input);
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
        .context("cannot read the input from stdin")?;
    Ok(text)
}

fn print_logs(logs: &[karta_host::plugin::LogLine]) {
    for line in logs {
        eprintln!("[{}] {}", line.level, line.message);
    }
}

fn print_error(kind: &str, message: &str) -> ExitCode {
    println!(
        "{}",
        json!({ "error": { "kind": kind, "message": message } })
    );
    ExitCode::FAILURE
}

fn print_failure(failure: &CallFailure) -> ExitCode {
    let answer = json!({
        "error": { "kind": failure.kind, "message": failure.message },
        "fuel_consumed": failure.fuel_consumed,
        "duration_us": failure.duration_us,
    });
    println!("{answer}");
    // Distinct exit codes let scripts tell the caller's mistakes (2) from
    // the plugin's failures (1).
    match failure.kind {
        ErrorKind::InvalidInput | ErrorKind::UnknownTool => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_specs_parse() {
        assert_eq!(
            parse_dir("a/b:ro"),
            (Path::new("a/b"), WorkspaceAccess::ReadOnly)
        );
        assert_eq!(
            parse_dir("a:rw"),
            (Path::new("a"), WorkspaceAccess::ReadWrite)
        );
        assert_eq!(parse_dir("a"), (Path::new("a"), WorkspaceAccess::ReadWrite));
    }
}
