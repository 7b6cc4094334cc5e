//! # karta-guest — write Karta tool plugins in plain Rust
//!
//! A Karta plugin is a WebAssembly component that offers one or more *tools*
//! to an agent. With this crate a tool is an ordinary Rust function from a
//! `serde` input type to a `serde` output type; its JSON Schema (what the model
//! sees) is derived from the input type with [`schemars`], and one macro,
//! [`export_plugin!`], turns a list of such functions into the component's
//! exports. The WIT plumbing stays hidden.
//!
//! ```no_run
//! use karta_guest::{ToolError, export_plugin};
//! use schemars::JsonSchema;
//! use serde::{Deserialize, Serialize};
//!
//! /// Input of `add`; doc comments become the schema's descriptions.
//! #[derive(Deserialize, JsonSchema)]
//! struct AddInput {
//!     /// The first addend.
//!     a: f64,
//!     /// The second addend.
//!     b: f64,
//! }
//!
//! #[derive(Serialize)]
//! struct AddOutput {
//!     sum: f64,
//! }
//!
//! fn add(input: AddInput) -> Result<AddOutput, ToolError> {
//!     let sum = input.a + input.b;
//!     if !sum.is_finite() {
//!         return Err(ToolError::failed("the sum is not a finite number"));
//!     }
//!     Ok(AddOutput { sum })
//! }
//!
//! export_plugin! {
//!     tool("add", "Adds two numbers and returns their sum.", add),
//! }
//! ```
//!
//! A plugin crate is a `cdylib` that depends on `karta-guest`, `serde` (with
//! `derive`) and `schemars` 1.x (whose derive names the `schemars` crate, so it
//! must be a direct dependency):
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! karta-guest = "0.1"
//! serde = { version = "1", features = ["derive"] }
//! schemars = "1"
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2 --release` and try it
//! with the Karta CLI:
//!
//! ```text
//! karta tool list target/wasm32-wasip2/release/my_plugin.wasm
//! karta tool call target/wasm32-wasip2/release/my_plugin.wasm add '{"a":1,"b":2}'
//! ```
//!
//! ## What a plugin may touch
//!
//! Nothing but what its grant in the app's `karta.toml` allows:
//! - the session workspace, mounted at [`WORKSPACE`] (read-only or
//!   read-write), through `std::fs`;
//! - outbound HTTP to the granted hosts, through [`http`];
//! - the host log, through [`log`].
//!
//! There are no environment variables, no sockets and no other files. A
//! denied file access shows up as an `std::io::Error`; map it with
//! [`ToolError::from_io`] so the caller sees `access_denied`.
//!
//! Every call runs in a fresh instance under a fuel (work) budget, a memory
//! cap and a wall-clock deadline: keep no state between calls.

use std::fmt;

pub use schemars::JsonSchema;

#[doc(hidden)]
pub mod __bindings {
    //! Raw bindings generated from `wit/plugin.wit`; not a public API.
    #![allow(missing_docs, unsafe_code, clippy::all)]
    wit_bindgen::generate!({
        world: "plugin",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_karta_world",
        default_bindings_module: "karta_guest::__bindings",
    });
}

#[doc(hidden)]
pub use serde_json as __serde_json;

pub mod http;
pub mod log;

/// Where the session workspace is mounted inside the plugin, when the grant
/// gives one. Paths outside it do not exist for the plugin.
pub const WORKSPACE: &str = "/workspace";

/// Why a tool call failed. The host reports the variant as the error kind
/// (`invalid_input`, `tool_error`, `access_denied`) with the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolError {
    /// The input was wrong; the message should say which field and why.
    InvalidInput(String),
    /// The tool could not do the work.
    Failed(String),
    /// The tool needed something its grant does not allow.
    AccessDenied(String),
}

impl ToolError {
    /// An [`ToolError::InvalidInput`] with this message.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::InvalidInput(message.into())
    }

    /// A [`ToolError::Failed`] with this message.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed(message.into())
    }

    /// An [`ToolError::AccessDenied`] with this message.
    pub fn access_denied(message: impl Into<String>) -> Self {
        Self::AccessDenied(message.into())
    }

    /// Maps a file-system error on `path` to a tool error: a path the sandbox
    /// hides or refuses (or any path, when no workspace is granted) becomes
    /// [`ToolError::AccessDenied`], anything else [`ToolError::Failed`].
    ///
    /// Inside the sandbox a path outside the workspace either does not exist
    /// (no preopened directory contains it) or is refused, so both kinds count
    /// as denied when the path leaves [`WORKSPACE`].
    pub fn from_io(path: &str, error: &std::io::Error) -> Self {
        use std::io::ErrorKind;
        if !std::path::Path::new(WORKSPACE).is_dir() {
            return Self::AccessDenied(format!(
                "{path}: this plugin has no workspace (its grant gives no file access)"
            ));
        }
        let outside = !path_is_inside_workspace(path);
        match error.kind() {
            ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => {
                Self::AccessDenied(format!("{path}: {error}"))
            }
            ErrorKind::NotFound if outside => Self::AccessDenied(format!(
                "{path}: outside the workspace ({WORKSPACE}) nothing is reachable"
            )),
            _ if outside => Self::AccessDenied(format!("{path}: {error}")),
            _ => Self::Failed(format!("{path}: {error}")),
        }
    }
}

/// Whether `path`, taken lexically (`.` and `..` resolved without touching the
/// file system), stays inside [`WORKSPACE`].
fn path_is_inside_workspace(path: &str) -> bool {
    let absolute = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{WORKSPACE}/{path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in absolute.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return false;
                }
            }
            other => parts.push(other),
        }
    }
    parts.first() == Some(&WORKSPACE.trim_start_matches('/'))
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidInput(m) => write!(f, "invalid input: {m}"),
            Self::Failed(m) => write!(f, "failed: {m}"),
            Self::AccessDenied(m) => write!(f, "access denied: {m}"),
        }
    }
}

impl std::error::Error for ToolError {}

impl From<ToolError> for __bindings::karta::plugin::types::ToolError {
    fn from(error: ToolError) -> Self {
        use __bindings::karta::plugin::types::ToolError as Wit;
        match error {
            ToolError::InvalidInput(m) => Wit::InvalidInput(m),
            ToolError::Failed(m) => Wit::Failed(m),
            ToolError::AccessDenied(m) => Wit::AccessDenied(m),
        }
    }
}

/// A tool function with its input decoding and output encoding around it.
type ErasedFn = dyn Fn(&str) -> Result<String, ToolError>;

/// One tool of a plugin, type-erased so that tools with different input and
/// output types fit in one list. Made by [`tool`].
pub struct Tool {
    name: &'static str,
    description: &'static str,
    schema: fn() -> String,
    run: Box<ErasedFn>,
}

impl Tool {
    /// The tool's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The tool's description.
    pub fn description(&self) -> &'static str {
        self.description
    }

    /// The JSON Schema of the tool's input, as JSON text.
    pub fn input_schema(&self) -> String {
        (self.schema)()
    }

    /// Runs the tool on a JSON text: decodes the input (a decoding error names
    /// the field), runs the function, encodes the output.
    pub fn call(&self, input: &str) -> Result<String, ToolError> {
        (self.run)(input)
    }
}

/// Declares a tool: `name` (unique in the plugin, `[a-z0-9_-]`), a
/// `description` for the model, and the function that does the work.
///
/// The function's input type must implement `Deserialize` and [`JsonSchema`];
/// its output type `Serialize`.
pub fn tool<I, O>(
    name: &'static str,
    description: &'static str,
    function: fn(I) -> Result<O, ToolError>,
) -> Tool
where
    I: serde::de::DeserializeOwned + JsonSchema + 'static,
    O: serde::Serialize + 'static,
{
    Tool {
        name,
        description,
        schema: || {
            let schema = schemars::schema_for!(I);
            serde_json::to_string(&schema).unwrap_or_else(|_| "{}".to_owned())
        },
        run: Box::new(move |input| {
            let decoder = &mut serde_json::Deserializer::from_str(input);
            let value: I = serde_path_to_error::deserialize(decoder).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if path == "." {
                    ToolError::InvalidInput(inner.to_string())
                } else {
                    ToolError::InvalidInput(format!("at `{path}`: {inner}"))
                }
            })?;
            let output = function(value)?;
            serde_json::to_string(&output)
                .map_err(|e| ToolError::Failed(format!("could not encode the output: {e}")))
        }),
    }
}

/// Dispatches a call to the tool named `name` among `tools`.
#[doc(hidden)]
pub fn __dispatch(tools: &[Tool], name: &str, input: &str) -> Result<String, ToolError> {
    match tools.iter().find(|t| t.name == name) {
        Some(tool) => tool.call(input),
        None => Err(ToolError::InvalidInput(format!(
            "no tool named `{name}` in this plugin (it has: {})",
            tools.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Describes `tools` in the shape the host expects.
#[doc(hidden)]
pub fn __describe(tools: &[Tool]) -> Vec<__bindings::karta::plugin::types::ToolInfo> {
    tools
        .iter()
        .map(|t| __bindings::karta::plugin::types::ToolInfo {
            name: t.name.to_owned(),
            description: t.description.to_owned(),
            input_schema: t.input_schema(),
        })
        .collect()
}

/// Exports a plugin made of the listed tools. Use it once per crate, at the
/// top level, with one `tool(name, description, function)` entry per tool
/// (the arguments of [`tool`]):
///
/// ```ignore
/// karta_guest::export_plugin! {
///     tool("add", "Adds two numbers.", add),
///     tool("negate", "Negates a number.", negate),
/// }
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($(tool ( $name:expr, $description:expr, $function:expr $(,)? )),+ $(,)?) => {
        #[doc(hidden)]
        struct __KartaPlugin;

        impl __KartaPlugin {
            fn tools() -> ::std::vec::Vec<$crate::Tool> {
                ::std::vec![$($crate::tool($name, $description, $function)),+]
            }
        }

        impl $crate::__bindings::exports::karta::plugin::tools::Guest for __KartaPlugin {
            fn list_tools() -> ::std::vec::Vec<$crate::__bindings::karta::plugin::types::ToolInfo> {
                $crate::__describe(&Self::tools())
            }

            fn call(
                name: ::std::string::String,
                input: ::std::string::String,
            ) -> ::std::result::Result<
                ::std::string::String,
                $crate::__bindings::karta::plugin::types::ToolError,
            > {
                $crate::__dispatch(&Self::tools(), &name, &input).map_err(::std::convert::Into::into)
            }
        }

        $crate::__bindings::__export_karta_world!(__KartaPlugin with_types_in $crate::__bindings);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_paths_are_judged_lexically() {
        assert!(path_is_inside_workspace("/workspace/a.txt"));
        assert!(path_is_inside_workspace("a/b"));
        assert!(path_is_inside_workspace("/workspace/a/../b"));
        assert!(!path_is_inside_workspace("/workspace/../etc/passwd"));
        assert!(!path_is_inside_workspace("/etc/passwd"));
        assert!(!path_is_inside_workspace("../x"));
        assert!(!path_is_inside_workspace("/workspacex/a"));
    }

    #[derive(serde::Deserialize, JsonSchema)]
    struct Pair {
        a: i64,
        b: i64,
    }

    fn sum(p: Pair) -> Result<i64, ToolError> {
        p.a.checked_add(p.b)
            .ok_or_else(|| ToolError::failed("overflow"))
    }

    #[test]
    fn tools_decode_run_and_encode() {
        let tools = vec![tool("sum", "Adds.", sum)];
        assert_eq!(
            __dispatch(&tools, "sum", r#"{"a":2,"b":3}"#),
            Ok("5".into())
        );
        let err = __dispatch(&tools, "sum", r#"{"a":2,"b":"x"}"#).expect_err("b is no number");
        assert!(
            matches!(&err, ToolError::InvalidInput(m) if m.contains("`b`")),
            "{err}"
        );
        let err = __dispatch(&tools, "nope", "{}").expect_err("no such tool");
        assert!(
            matches!(&err, ToolError::InvalidInput(m) if m.contains("sum")),
            "{err}"
        );
        let schema: serde_json::Value =
            serde_json::from_str(&tools[0].input_schema()).expect("schema is JSON");
        assert_eq!(schema["type"], "object");
        assert!(schema["properties"]["a"].is_object());
    }
}
