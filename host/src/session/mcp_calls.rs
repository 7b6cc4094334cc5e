//! What a harness process's MCP client reaches through the host's MCP
//! server, on the session's side: its credentials (the MCP token), the
//! tools it may call and their runs under the session's approvals, and the
//! app's Python MCP servers compiled to components.

use std::sync::Arc;

use karta_harness::{ToolDef, ToolErrorKind, ToolResult};
use serde_json::Value;

use super::{SessionError, Sessions};
use crate::plugin::python_mcp::AppPythonServers;

impl Sessions {
    /// Gives the sessions the app's compiled Python MCP servers (once; a
    /// second call is ignored). The host does this at start, before the MCP
    /// server listens.
    pub fn set_python_servers(&self, servers: Arc<AppPythonServers>) {
        let _ = self.python_servers.set(servers);
    }

    /// The app's command MCP servers by how they run: the compiled ones and,
    /// with the reason, those that run as processes.
    pub fn python_servers(&self) -> Option<&AppPythonServers> {
        self.python_servers.get().map(|s| &**s)
    }

    /// Names of the app's MCP servers (`.mcp.json`) that were compiled to
    /// WebAssembly components; each is served at
    /// [`Self::compiled_mcp_server_url`] and must not be started as a
    /// process.
    pub fn compiled_mcp_servers(&self) -> Vec<String> {
        self.python_servers()
            .map(AppPythonServers::compiled_names)
            .unwrap_or_default()
    }

    /// Where a harness reaches the compiled MCP server `name` for the
    /// session whose MCP token is `mcp_token` (streamable HTTP:
    /// `{"type": "http", "url": …}`), or `None` when `name` is not compiled
    /// (then it runs as a process).
    pub fn compiled_mcp_server_url(&self, mcp_token: &str, name: &str) -> Option<String> {
        self.python_servers()?.get(name)?;
        Some(format!(
            "{}/mcp/{mcp_token}/servers/{name}",
            self.config.mcp_url
        ))
    }

    /// The MCP token of `session_id`: an unguessable bearer of the
    /// session's tools, for a harness process's MCP client.
    pub fn issue_mcp_token(&self, session_id: &str) -> Result<String, SessionError> {
        if !self.store.contains_session(session_id)? {
            return Err(SessionError::NotFound(session_id.to_owned()));
        }
        Ok(self.credentials.for_session(session_id).mcp_token)
    }

    /// The session an MCP token belongs to.
    pub fn session_for_mcp_token(&self, token: &str) -> Option<String> {
        self.credentials.session_for_mcp_token(token)
    }

    /// Records a call of the app's compiled MCP server `server` (its fuel
    /// and time): in the metrics, and for the harness's `tool_use` of it
    /// to report them as it does for plugins, under the names Claude Code
    /// (`mcp__<server>__<tool>`) and OpenCode (`<server>_<tool>`) give it.
    pub fn record_app_server_run(
        &self,
        session: &str,
        server: &str,
        tool: &str,
        input: &serde_json::Value,
        result: &karta_harness::ToolResult,
    ) {
        self.metrics
            .record_tool_call(crate::metrics::ToolKind::McpServer, result);
        if let Some(live) = self.live.peek(session) {
            live.record_tool_run(&format!("mcp__{server}__{tool}"), input, result);
            live.record_tool_run(&format!("{server}_{tool}"), input, result);
        }
    }

    /// Bills a tool call that ran outside the toolbox (a compiled MCP
    /// server) to the session's tenant; its cost, when billed.
    pub fn bill_fuel(&self, session: &str, tool: &str, fuel: u64, wall_us: u64) -> Option<u64> {
        self.toolbox
            .ledger
            .as_ref()?
            .tool_usage(session, tool, fuel, wall_us)
    }

    /// The tools the session's current agent may use.
    pub async fn session_tools(&self, id: &str) -> Result<Vec<ToolDef>, SessionError> {
        // A pooled process, before a session claims it, runs as the main
        // agent.
        let agent = if self.is_pool_slot(id) {
            None
        } else {
            self.record(id)?.current_agent
        };
        // A process harness reads the app's skills itself, natively; it gets
        // only the plugin tools.
        let process_harness = self.harness.is_some();
        Ok(self
            .toolbox
            .for_agent(agent.as_deref())
            .iter()
            .filter(|t| t.plugin.is_some() || !process_harness)
            .map(|t| t.def.clone())
            .collect())
    }

    /// Runs one of the session's tools outside a builtin turn (for a harness
    /// that calls tools over MCP), with the session workspace as its preopen.
    ///
    /// A tool that needs approval runs only if it was approved for the
    /// session, or for this call through the running turn (a person is
    /// asked there if need be: `input_required`, then the `PUT` answer).
    /// Otherwise — denied, timed out, no turn running — it does not run and
    /// the result is a `denied` tool error. The harness's own settings are
    /// not trusted to have asked.
    pub async fn call_tool(
        &self,
        id: &str,
        tool: &str,
        input: &Value,
    ) -> Result<ToolResult, SessionError> {
        let live = self.live.get(id).await?;
        let (agent, approved_before) = {
            let state = live.state.lock().await;
            let record = &state.record;
            let approved = record.approved_tools.contains(tool);
            (record.current_agent.clone(), approved)
        };
        let tools = self.toolbox.for_agent(agent.as_deref());
        let needs_approval = tools.iter().any(|t| t.def.name == tool && t.approval);
        let authorized = if needs_approval {
            live.approvals.authorize(tool, input, approved_before).await
        } else {
            Ok(())
        };
        let result = match authorized {
            Ok(()) => {
                self.toolbox
                    .run(id, &tools, &self.workspace(id), tool, input)
                    .await
            }
            Err(why) => ToolResult::failed(ToolErrorKind::Denied, why),
        };
        // Denials too: the harness adapter reports the call with the host's
        // verdict, whatever the harness makes of the MCP error.
        live.record_tool_run(tool, input, &result);
        Ok(result)
    }
}
