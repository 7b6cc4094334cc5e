//! Filling the pool: the refill task, which starts one slot's process at
//! a time, and the memory budget it keeps to (see the pool's module docs).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use karta_harness::TurnRequest;

use super::{Entry, Pool, SLOT_PREFIX, slot_paths};
use crate::session::{Sessions, lock};

/// How often the refill task looks at the pool when nothing wakes it.
const TICK: Duration = Duration::from_secs(2);

/// How long a refill waits after a claim: a start takes a core for up to
/// seconds, and right after a claim that would be the claiming session's
/// first turn's core (measured: a refill started at the claim made the
/// first text of a pooled session several times slower on 2 cores).
pub(super) const CLAIM_GRACE: Duration = Duration::from_secs(1);

/// The longest pause after failed starts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Resident memory of `pid` and its descendants, bytes (0 once gone).
pub fn tree_rss_bytes(pid: u32) -> u64 {
    let mut total = 0;
    let mut stack = vec![pid];
    let mut seen = HashSet::new();
    while let Some(p) = stack.pop() {
        if !seen.insert(p) {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024;
        for task in std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            stack.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    total
}

impl Pool {
    /// Re-measures the idle processes; their total, bytes.
    fn measure(&self) -> u64 {
        let mut idle = lock(&self.idle);
        for entry in idle.iter_mut() {
            if let Some(pid) = entry.process.harness_pid() {
                entry.rss_bytes = tree_rss_bytes(pid);
            }
        }
        idle.iter().map(|e| e.rss_bytes).sum()
    }

    /// Whether one more process fits the budget: the idle ones' RSS plus
    /// the largest of them or the last one started (the first always may
    /// start; the measurement after its start decides whether it stays).
    fn fits(&self) -> bool {
        let total = self.measure();
        let largest = lock(&self.idle)
            .iter()
            .map(|e| e.rss_bytes)
            .max()
            .unwrap_or(0)
            .max(self.last_rss.load(Ordering::SeqCst));
        total + largest <= self.config.memory_bytes
    }

    /// How long a refill still waits for the last claim's turn
    /// ([`CLAIM_GRACE`]). Also when the pool is empty: a session arriving
    /// meanwhile starts its own process, as it would while the refill
    /// were starting.
    fn grace_left(&self) -> Duration {
        lock(&self.last_claim).map_or(Duration::ZERO, |at| {
            CLAIM_GRACE.saturating_sub(at.elapsed())
        })
    }
}

impl Sessions {
    /// Prepares and starts one slot's process.
    async fn start_slot(&self, pool: &Pool) -> Result<Entry, String> {
        let slot = format!("{SLOT_PREFIX}{}", uuid::Uuid::new_v4().simple());
        let dir = pool.root.join(&slot);
        let (workspace, home) = slot_paths(&dir);
        lock(&pool.slots).insert(slot.clone());
        let prepared = (|| {
            for d in [&workspace, &home] {
                crate::session::context::private_dir(d)?;
            }
            self.app.harness_files.sync(&workspace)?;
            self.app.project_files.copy_into(&workspace)
        })();
        // Undone on an error and when the start is dropped (shutdown
        // cancels a start under way).
        let mut undo_guard = SlotUndo {
            pool,
            slot: slot.clone(),
            dir: dir.clone(),
            armed: true,
        };
        if let Err(e) = prepared {
            return Err(format!("cannot prepare the slot's workspace: {e}"));
        }
        let credentials = pool.credentials.for_pool_slot(&slot);
        let tools = self.toolbox.for_agent(None);
        let request = TurnRequest {
            system: String::new(),
            history: Vec::new(),
            text: String::new(),
            thinking: false,
            model: pool.model.clone(),
            agent: None,
            session: self.harness_session(&slot, workspace, home, &credentials, &tools),
        };
        match pool.harness.prestart(request).await {
            Some(Ok(process)) => {
                undo_guard.armed = false;
                let rss_bytes = process.harness_pid().map_or(0, tree_rss_bytes);
                Ok(Entry {
                    slot,
                    dir,
                    process,
                    rss_bytes,
                })
            }
            Some(Err(e)) => Err(e),
            None => Err("the harness keeps no process to pool".into()),
        }
    }
}

/// Forgets a slot whose start did not finish — failed, or dropped midway
/// — and removes its directory.
struct SlotUndo<'a> {
    pool: &'a Pool,
    slot: String,
    dir: PathBuf,
    armed: bool,
}

impl Drop for SlotUndo<'_> {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.pool.slots).remove(&self.slot);
            self.pool.credentials.revoke(&self.slot);
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The refill task of `pool` (see the module docs).
pub(super) async fn refill(sessions: Weak<Sessions>, pool: Arc<Pool>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        if pool.stop.is_cancelled() {
            return;
        }
        let mut pause = TICK;
        if !(pool.active)() {
            pool.drain().await;
        } else if lock(&pool.idle).len() < pool.config.size
            && let grace = pool.grace_left()
            && !grace.is_zero()
        {
            pause = grace;
        } else if lock(&pool.idle).len() < pool.config.size && pool.fits() {
            let Some(manager) = sessions.upgrade() else {
                return;
            };
            pool.starting.fetch_add(1, Ordering::SeqCst);
            let started = tokio::select! {
                started = manager.start_slot(&pool) => Some(started),
                () = pool.stop.cancelled() => None,
            };
            pool.starting.fetch_sub(1, Ordering::SeqCst);
            drop(manager);
            match started {
                None => return,
                Some(Ok(entry)) => {
                    backoff = Duration::from_secs(1);
                    pool.last_rss.store(entry.rss_bytes, Ordering::SeqCst);
                    let total = pool.measure() + entry.rss_bytes;
                    if total > pool.config.memory_bytes {
                        tracing::info!(
                            rss_mib = entry.rss_bytes >> 20,
                            "a pooled process would take the pool over its memory budget; not kept"
                        );
                        pool.over_budget.fetch_add(1, Ordering::SeqCst);
                        pool.discard(entry).await;
                    } else if !(pool.active)() {
                        pool.discard(entry).await;
                    } else {
                        lock(&pool.idle).push_back(entry);
                        continue;
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!("cannot start a pooled harness process: {e}");
                    pool.spawn_failures.fetch_add(1, Ordering::SeqCst);
                    *lock(&pool.last_failure) = Some(e);
                    if let Some(manager) = sessions.upgrade() {
                        manager.metrics.pool_spawn_failures.inc();
                    }
                    pause = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        tokio::select! {
            () = pool.wake.notified() => {}
            () = tokio::time::sleep(pause) => {}
            () = pool.stop.cancelled() => return,
        }
    }
}
