//! The claim: a new session's first turn takes an idle pooled process
//! when one fits (the conditions are in the pool's module docs), its
//! workspace and `HOME` moved to the session's paths and its credentials
//! re-bound; otherwise the session starts its own process.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use karta_harness::{Prestarted, SessionInfo, TurnRequest};

use super::{Pool, slot_paths};
use crate::credentials::SessionCredentials;
use crate::session::{SessionTool, Sessions, lock};
use crate::store::SessionScope;

impl Sessions {
    /// The process-harness view of session `id` for a turn of `request`,
    /// on a pooled process when one fits (see the module docs), else as
    /// [`Sessions::session_info`] makes it.
    pub(in crate::session) fn session_info_from_pool(
        &self,
        id: &str,
        scope: Option<&SessionScope>,
        credentials: &SessionCredentials,
        tools: &[SessionTool],
        request: &TurnRequest,
    ) -> Result<SessionInfo, String> {
        let Some(pool) = self.pool.get() else {
            return self.session_info(id, scope, credentials, tools);
        };
        let claimed = self.claim(pool, id, scope, request);
        let credentials = claimed
            .as_ref()
            .map_or_else(|| credentials.clone(), |(c, _)| c.clone());
        let info = self.session_info(id, scope, &credentials, tools);
        if let Some((_, process)) = claimed {
            match &info {
                Ok(info) => {
                    if let Err(process) = pool.harness.adopt(process, info) {
                        tracing::warn!(session = %id, "the harness did not adopt its pooled process");
                        tokio::spawn(process.kill());
                    }
                }
                Err(_) => {
                    tokio::spawn(process.kill());
                }
            }
        }
        info
    }

    /// Takes an idle slot for session `id` when one fits: moves its
    /// workspace and `HOME` to the session's paths and re-binds its
    /// credentials. `None`: the session starts its own process.
    fn claim(
        &self,
        pool: &Arc<Pool>,
        id: &str,
        scope: Option<&SessionScope>,
        request: &TurnRequest,
    ) -> Option<(SessionCredentials, Prestarted)> {
        let state = self.config.homes.join(id);
        let new_session = !state.exists();
        if !new_session {
            // A session that ran before has its own conversation: not a
            // pool matter at all.
            return None;
        }
        let miss = |why: &str| {
            tracing::debug!(session = %id, "not from the warm pool: {why}");
            pool.misses.fetch_add(1, Ordering::SeqCst);
            self.metrics.pool_misses.inc();
            None
        };
        if scope.is_some_and(|s| s.end_user_id.is_some()) {
            return miss("its end user has a home of their own");
        }
        if request.model != pool.model
            || (request.agent.is_some() && pool.harness.name() == "claude_code")
        {
            return miss("it asks for another model or agent than the pool's processes run");
        }
        let workspace = self.workspace(id);
        let untouched = std::fs::read_dir(&workspace).map_or(true, |mut d| d.next().is_none());
        if !untouched {
            return miss("its workspace has files already");
        }
        let entry = lock(&pool.idle).pop_front();
        let Some(entry) = entry else {
            pool.wake.notify_one();
            return miss("no idle process");
        };
        // The slot leaves the pool now, whatever happens next: a process is
        // never offered twice.
        lock(&pool.slots).remove(&entry.slot);
        *lock(&pool.last_claim) = Some(std::time::Instant::now());
        pool.wake.notify_one();
        let (slot_workspace, slot_home) = slot_paths(&entry.dir);
        let moved = (|| -> std::io::Result<()> {
            // The session's workspace is the empty dir its creation made; a
            // workspace with anything in it is not replaced.
            match std::fs::remove_dir(&workspace) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            if let Some(parent) = state.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(&slot_home, &state)?;
            std::fs::rename(&slot_workspace, &workspace)
        })();
        if let Err(e) = moved {
            tracing::warn!(session = %id, "cannot give the session a pooled workspace: {e}");
            let _ = std::fs::create_dir_all(&workspace);
            // Its HOME may have become the session's state dir already.
            let _ = std::fs::remove_dir_all(&state);
            let pool = pool.clone();
            tokio::spawn(async move { pool.discard(entry).await });
            return miss("its workspace could not be moved");
        }
        let _ = std::fs::remove_dir_all(&entry.dir);
        let Some(credentials) = pool.credentials.rebind(&entry.slot, id) else {
            tokio::spawn(entry.process.kill());
            let _ = std::fs::remove_dir_all(&state);
            return miss("its slot lost its credentials");
        };
        pool.claimed.fetch_add(1, Ordering::SeqCst);
        self.metrics.pool_claimed.inc();
        tracing::debug!(session = %id, slot = %entry.slot, "a pooled process serves the session");
        Some((credentials, entry.process))
    }
}
