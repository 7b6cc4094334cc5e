//! What a turn is given: the system prompt the builtin loop sends, and
//! the session as a harness process sees it (its workspace with the app's
//! files, its home, its two ways out).

use std::path::PathBuf;

use karta_harness::SessionInfo;

use super::Sessions;
use super::tools::SessionTool;
use crate::credentials::SessionCredentials;

impl Sessions {
    /// The system prompt for `agent`: the app's instructions, the agent's
    /// prompt, the skill index.
    pub(super) fn system_prompt(&self, agent: Option<&str>) -> String {
        let mut prompt = self.app.instructions.trim().to_owned();
        if let Some(agent) = agent.and_then(|a| self.app.agents.get(a)) {
            prompt.push_str(&format!("\n\n# Agent: {}\n\n{}", agent.name, agent.prompt));
        }
        if !self.app.skills.is_empty() {
            prompt.push_str("\n\n# Skills\n\nCall `load_skill` with a skill's name to read its instructions before using it.\n");
            for skill in &self.app.skills {
                prompt.push_str(&format!("- {}: {}\n", skill.name, skill.description));
            }
        }
        prompt.trim().to_owned()
    }

    /// The session's workspace directory.
    pub(crate) fn workspace(&self, id: &str) -> PathBuf {
        self.config.workspaces.join(id)
    }

    /// What a process harness needs about the session: its workspace
    /// (populated with the app's harness files), a scratch `HOME`, and its
    /// two ways out — the gateway with the session's key and the MCP server
    /// with the session's token.
    pub(super) fn session_info(
        &self,
        id: &str,
        credentials: &SessionCredentials,
        tools: &[SessionTool],
    ) -> Result<SessionInfo, String> {
        let workspace = self.workspace(id);
        // A session's first harness turn starts its workspace as a copy of
        // the app's folder (its data, scripts, docs), once: what the session
        // changes there stays. The HOME is made when its first harness
        // process starts, so its absence marks that first turn.
        let home = self.config.homes.join(id);
        let fresh = !home.exists();
        // Before every turn: a plugin may have changed them since. A harness
        // without the app's instructions would answer as someone else, so a
        // failed copy fails the turn.
        self.app
            .harness_files
            .sync(&workspace)
            .map_err(|e| format!("cannot give the harness the app's files: {e}"))?;
        if fresh {
            self.app
                .project_files
                .copy_into(&workspace)
                .map_err(|e| format!("cannot copy the app's files into the workspace: {e}"))?;
        }
        Ok(SessionInfo {
            id: id.to_owned(),
            workspace,
            home,
            gateway_url: self.gateway_url.clone(),
            gateway_key: credentials.gateway_key.clone(),
            mcp_url: format!("{}/mcp/{}", self.config.mcp_url, credentials.mcp_token),
            env: self.app.env.clone(),
            preapproved_tools: tools
                .iter()
                .filter(|t| !t.approval)
                .map(|t| t.def.name.clone())
                .collect(),
            access: self.session_access(&credentials.mcp_token),
        })
    }

    /// The harness access of one session: the app's MCP servers that were
    /// compiled to WebAssembly components are reached over HTTP at this
    /// session's endpoint (fuel-metered, in wasmtime) instead of started as
    /// processes in the jail.
    fn session_access(&self, mcp_token: &str) -> karta_harness::HarnessAccess {
        let mut access = self.config.access.clone();
        for server in &mut access.mcp_servers {
            if let Some(url) = self.compiled_mcp_server_url(mcp_token, &server.name) {
                server.transport = karta_harness::McpTransport::Http { url };
            }
        }
        access
    }
}
