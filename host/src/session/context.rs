//! What a turn is given: the system prompt the builtin loop sends, and
//! the session as a harness process sees it (its workspace with the app's
//! files, its home, its two ways out).
//!
//! # Homes: the end user is the memory boundary
//!
//! A harness keeps what it remembers (Claude Code's `~/.claude`, OpenCode's
//! `~/.local/share/opencode` database) in its `HOME`. Where that is decides
//! what a harness remembers about whom:
//!
//! - A session of an end user (its record's [`SessionScope`] names one)
//!   gets `<data>/users/<project id>/<hex SHA-256 of the end user id>/home`,
//!   shared by every session of that end user in that project and kept
//!   when a session is deleted. The id is hashed so that any id the API
//!   accepts makes one safe path component of fixed length; the project id
//!   is the host's own (`prj_<uuid>`, unique across orgs).
//! - Any other session gets its own scratch `<data>/homes/<session id>`,
//!   removed with the session.
//!
//! **Trust decision.** Sessions of one end user share a `HOME`, so they are
//! one trust domain: a harness process of one of them can read and change
//! what the others keep there — their conversations, the per-session files
//! the adapters write beside them (the MCP config carrying that session's
//! MCP token, the remembered conversation id; see `karta_harness`'s
//! `claude_code` and `opencode`), and their `/tmp` (a jail's is
//! `HOME/tmp`). That is what a shared memory means: all of it is that one
//! user's. Different end users, projects and orgs never share a `HOME`, and
//! a session without an end user shares with nobody. The adapters still
//! give every per-session file a per-session name, so two sessions of one
//! end user running at once do not overwrite each other's, and the host
//! still writes there without following a link a harness planted
//! (`karta_harness::safe_fs`). Deleting a session leaves its per-session
//! files in a shared `HOME` (small; its MCP token is revoked with it), as
//! it leaves what the harness remembered of it.
//!
//! Whether a harness turn is a session's first — when the app's project
//! files are copied into its workspace — is marked per session by
//! `<data>/homes/<session id>` (for an end user's session an empty state
//! dir, removed with the session), never by the shared `HOME`, which
//! exists from that end user's first session on.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use karta_harness::SessionInfo;
use sha2::{Digest, Sha256};

use super::tools::SessionTool;
use super::{SessionError, Sessions};
use crate::credentials::SessionCredentials;
use crate::store::SessionScope;

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

    /// The `HOME` a harness process of session `id` gets (see the module
    /// docs): its end user's shared home when the session has an end user,
    /// its own `<data>/homes/<id>` otherwise. Read from the stored record;
    /// made on the session's first harness turn, so it need not exist yet.
    pub fn home_of(&self, id: &str) -> Result<PathBuf, SessionError> {
        let record = self
            .store
            .session(id)?
            .ok_or_else(|| SessionError::NotFound(id.to_owned()))?;
        self.home_for(id, record.scope.as_ref())
            .map_err(SessionError::Invalid)
    }

    /// The `HOME` of session `id`, whose record's scope is `scope`.
    fn home_for(&self, id: &str, scope: Option<&SessionScope>) -> Result<PathBuf, String> {
        match scope {
            Some(SessionScope {
                project_id,
                end_user_id: Some(end_user),
                ..
            }) => end_user_home(&self.end_user_homes(), project_id, end_user),
            _ => Ok(self.config.homes.join(id)),
        }
    }

    /// Where end users' homes live: `users` beside
    /// [`super::SessionConfig::homes`] (`<data>/users` beside
    /// `<data>/homes`), so no setting is added. Not inside it: a session
    /// may be called `users`.
    fn end_user_homes(&self) -> PathBuf {
        self.config.homes.with_file_name("users")
    }

    /// What a process harness needs about the session: its workspace
    /// (populated with the app's harness files), its `HOME` (its end
    /// user's, or its own; see the module docs), and its two ways out — the
    /// gateway with the session's key and the MCP server with the session's
    /// token. `scope` is the session record's.
    pub(super) fn session_info(
        &self,
        id: &str,
        scope: Option<&SessionScope>,
        credentials: &SessionCredentials,
        tools: &[SessionTool],
    ) -> Result<SessionInfo, String> {
        let workspace = self.workspace(id);
        let home = self.home_for(id, scope)?;
        // A session's first harness turn starts its workspace as a copy of
        // the app's folder (its data, scripts, docs), once: what the session
        // changes there stays. Its state dir `<data>/homes/<id>` is made
        // after that copy, so its absence marks that first turn. (It is the
        // HOME of a session without an end user. An end user's shared HOME
        // exists from their first session on, so it cannot mark this
        // session's first turn.)
        let state = self.config.homes.join(id);
        let fresh = !state.exists();
        // Before every turn: a plugin or the harness may have changed them
        // since (skipped when their metadata says nothing did). A harness
        // without the app's instructions would answer as someone else, so a
        // failed copy fails the turn.
        self.app
            .harness_files
            .sync_with(&workspace, &self.harness_sync)
            .map_err(|e| format!("cannot give the harness the app's files: {e}"))?;
        if fresh {
            self.app
                .project_files
                .copy_into(&workspace)
                .map_err(|e| format!("cannot copy the app's files into the workspace: {e}"))?;
        }
        // Made on the session's first turn. An end user's shared home may
        // be another session's to make, so it is checked (one `stat`) on
        // every turn; the session's own state dir is not looked up again.
        let missing = |dir: &PathBuf| fresh || (*dir != state && !dir.is_dir());
        for dir in [&state, &home].into_iter().filter(|dir| missing(dir)) {
            private_dir(dir).map_err(|e| format!("cannot make the session's home: {e}"))?;
        }
        Ok(self.harness_session(id, workspace, home, credentials, tools))
    }

    /// The harness access of one session: the app's MCP servers that were
    /// compiled to WebAssembly components are reached over HTTP at this
    /// session's endpoint (fuel-metered, in wasmtime) instead of started as
    /// processes in the jail.
    pub(super) fn session_access(&self, mcp_token: &str) -> karta_harness::HarnessAccess {
        let mut access = self.config.access.clone();
        for server in &mut access.mcp_servers {
            if let Some(url) = self.compiled_mcp_server_url(mcp_token, &server.name) {
                server.transport = karta_harness::McpTransport::Http { url };
            }
        }
        access
    }

    /// What a harness process of `id` (a session or a slot) is given, with
    /// its workspace and `HOME` already made.
    pub(super) fn harness_session(
        &self,
        id: &str,
        workspace: PathBuf,
        home: PathBuf,
        credentials: &SessionCredentials,
        tools: &[SessionTool],
    ) -> SessionInfo {
        SessionInfo {
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
        }
    }
}

/// The shared home of end user `end_user` of project `project_id` under
/// `users`: `<users>/<project id>/<hex SHA-256 of the end user id>/home`.
/// (`home` is a level down so host-only state of the end user can live
/// beside it one day, out of the harness's reach.) The project id is the
/// host's own; one that is not a plain path component is refused rather
/// than joined.
fn end_user_home(users: &Path, project_id: &str, end_user: &str) -> Result<PathBuf, String> {
    let plain = !project_id.is_empty()
        && project_id.len() <= 128
        && !project_id.starts_with('.')
        && project_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !plain {
        return Err(format!(
            "cannot give the session a home: project id `{project_id}` is not a plain name"
        ));
    }
    Ok(users
        .join(project_id)
        .join(hex::encode(Sha256::digest(end_user.as_bytes())))
        .join("home"))
}

/// Makes `dir` and its missing parents, each only for the host's user (a
/// home holds what a harness remembers about someone).
pub(super) fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_user_homes_are_per_project_and_per_end_user() {
        let users = Path::new("/data/users");
        let alice = end_user_home(users, "prj_1", "alice").expect("home");
        assert_eq!(
            alice,
            Path::new("/data/users/prj_1")
                .join(hex::encode(Sha256::digest(b"alice")))
                .join("home")
        );
        assert_eq!(end_user_home(users, "prj_1", "alice").expect("home"), alice);
        assert_ne!(end_user_home(users, "prj_2", "alice").expect("home"), alice);
        assert_ne!(end_user_home(users, "prj_1", "bob").expect("home"), alice);
        // Any id the API accepts is one component under the project.
        let odd = end_user_home(users, "prj_1", "a:b c\u{e9}").expect("home");
        assert_eq!(
            odd.parent().and_then(Path::parent),
            Some(users.join("prj_1").as_path())
        );
        for bad in ["", "..", ".hidden", "a/b", "a\\b"] {
            assert!(end_user_home(users, bad, "alice").is_err(), "{bad:?}");
        }
    }
}
