//! An app's command MCP servers at load: which ones run compiled (and
//! their loaded components), which ones fall back to a process, and why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{DEFAULT_LIMITS, PyCompileError, PythonMcpServer, compile};
use crate::app::CommandServer;
use crate::plugin::PluginRuntime;

/// How a host treats an app's Python stdio MCP servers.
#[derive(Debug, Clone)]
pub struct PythonMcpConfig {
    /// Compile them into components (the default). Off: every command
    /// server runs as a (jailed) process.
    pub compile: bool,
    /// Where compiled components and their native artifacts are kept;
    /// `None`: `{data_dir}/python-mcp`.
    pub cache_dir: Option<PathBuf>,
}

impl Default for PythonMcpConfig {
    fn default() -> Self {
        Self {
            compile: true,
            cache_dir: None,
        }
    }
}

/// The app's command servers, sorted by how they run.
#[derive(Clone, Default)]
pub struct AppPythonServers {
    compiled: BTreeMap<String, PythonMcpServer>,
    fallbacks: BTreeMap<String, String>,
}

impl std::fmt::Debug for AppPythonServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppPythonServers")
            .field("compiled", &self.compiled.keys().collect::<Vec<_>>())
            .field("fallbacks", &self.fallbacks)
            .finish()
    }
}

impl AppPythonServers {
    /// Compiles and loads every server of `servers` that is a Python
    /// script, one at a time (each build takes a core for seconds). A
    /// server that cannot be compiled or loaded is recorded with the
    /// reason, never an error: it runs as a process instead.
    pub async fn load(
        runtime: &PluginRuntime,
        app_root: &Path,
        servers: &[CommandServer],
        config: &PythonMcpConfig,
        cache_dir: &Path,
    ) -> Self {
        let mut this = Self::default();
        for server in servers {
            if !config.compile {
                this.fallbacks.insert(
                    server.name.clone(),
                    "compiling Python MCP servers is turned off on this host".into(),
                );
                continue;
            }
            match Self::load_one(runtime, app_root, server, cache_dir).await {
                Ok(loaded) => {
                    let compiled = loaded.compiled();
                    let (source, native) = loaded.artifact();
                    tracing::info!(
                        server = %server.name,
                        script = %compiled.script.display(),
                        cached = compiled.cached,
                        componentize_ms = compiled.compile_time.as_millis() as u64,
                        native = ?source,
                        native_ms = native.as_millis() as u64,
                        tools = loaded.tools().len(),
                        "MCP server compiled to a WebAssembly component"
                    );
                    this.compiled.insert(server.name.clone(), loaded);
                }
                Err(reason) => {
                    tracing::info!(server = %server.name, "MCP server runs as a process: {reason}");
                    this.fallbacks.insert(server.name.clone(), reason);
                }
            }
        }
        this
    }

    async fn load_one(
        runtime: &PluginRuntime,
        app_root: &Path,
        server: &CommandServer,
        cache_dir: &Path,
    ) -> Result<PythonMcpServer, String> {
        let compiled = {
            let (root, command, args, cache) = (
                app_root.to_path_buf(),
                server.command.clone(),
                server.args.clone(),
                cache_dir.to_path_buf(),
            );
            // componentize-py runs for seconds: off the async executor.
            tokio::task::spawn_blocking(move || compile(&root, &command, &args, &cache))
                .await
                .map_err(|e| format!("the compile task failed: {e}"))?
                .map_err(|e: PyCompileError| e.to_string())?
        };
        let env: Vec<(String, String)> = server
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        runtime
            .load_python_server_with_env(&server.name, &compiled, app_root, &env, DEFAULT_LIMITS)
            .await
            .map_err(|e| format!("the compiled component does not work: {e}"))
    }

    /// Names of the servers that run as components, sorted.
    pub fn compiled_names(&self) -> Vec<String> {
        self.compiled.keys().cloned().collect()
    }

    /// The compiled server `name`, if it is one.
    pub fn get(&self, name: &str) -> Option<&PythonMcpServer> {
        self.compiled.get(name)
    }

    /// Servers that run as processes, with the reason (for `karta doctor`).
    pub fn fallbacks(&self) -> &BTreeMap<String, String> {
        &self.fallbacks
    }
}
