//! The warm pool: pre-started, jailed harness processes a new session's
//! first turn claims instead of starting its own (issue 14).
//!
//! Starting Claude Code costs about half a second and OpenCode seconds;
//! a warm turn costs neither. So each loaded release whose harness is a
//! process harness keeps up to [`PoolConfig::size`] processes started ahead
//! of need — never more than [`PoolConfig::memory_bytes`] of resident memory
//! between them — each as a **slot**: an id no session can have
//! (`pool.<uuid>`), a directory `<data>/pool/<slot>/` holding a `workspace`
//! (the app's harness and project files, as a session's first turn makes
//! them) and a `HOME`, and credentials of its own (a gateway key and an MCP
//! token, [`Credentials::for_pool_slot`]). The process is started exactly
//! as a session's would be, in its jail, which binds only the slot's own
//! workspace and `HOME`: it cannot see another slot, a session, or the data
//! dir. "Started" means done with its start-up and warmed up: Claude Code
//! has answered its `initialize` control request and its MCP servers are
//! connected (`mcp_status`); OpenCode listens, the host follows its event
//! stream, its conversation is open, and its per-directory bootstrap
//! (providers, agents, MCP clients, tool registry) is done by read-only
//! requests. Then each makes one throwaway exchange, which it clears
//! (Claude Code: `/clear`) or deletes (OpenCode: a session of its own), so
//! its first prompt is no slower than a later one; the gateway answers
//! the slot's key itself, so the warm-up reaches no model, is metered to
//! no one, runs no tool and leaves nothing in the conversation handed over
//! ([`Harness::prestart`]).
//!
//! **Claim.** A session's first harness turn takes an idle slot when the
//! slot can be the session's without anything of another showing through:
//!
//! - the session is new: it never ran a harness turn (its state dir
//!   `<data>/homes/<id>` does not exist, so there is no conversation to
//!   resume) and its workspace is empty;
//! - it has no end user: an end user's `HOME` is shared by their sessions
//!   and persistent, and a pooled process's `HOME` was fixed when it
//!   started. Binding the end user's home into a running jail is possible
//!   (a mount into its namespace) but would hand a process started for
//!   nobody a person's memory before anyone checked it was theirs, so these
//!   sessions start their own process, as before;
//! - it asks for the pool's model (the release's default) and, on Claude
//!   Code, no agent (Claude Code fixes both when it starts; OpenCode picks
//!   the agent per message, so any agent fits).
//!
//! The claim renames the slot's workspace to the session's workspace path
//! and its `HOME` to the session's `<data>/homes/<id>` — same filesystem, so
//! nothing is copied, and the process, which holds both by inode (its jail
//! bound them when it started, at the slot's paths), goes on writing where
//! the session's files are. The credentials registry re-binds the slot's
//! key and token to the session ([`Credentials::rebind`]): the gateway
//! meters the process's calls to the session, the MCP server runs its tools
//! as the session's, the slot holds nothing any more, and what the session
//! had minted for its turn is revoked. Then the harness adopts the process
//! as the session's ([`karta_harness::Harness::adopt`]) and the turn runs
//! on it. A slot is claimed once: it leaves the pool before anything else
//! happens, and a failure after that kills its process. Anything that does
//! not fit is a miss (counted), and the session starts its own process.
//!
//! **Refill** runs in the background, one start at a time (so the pool
//! never takes both cores from the turns): after a claim, after a failure
//! (with a growing pause), and every few seconds. After a claim it waits
//! [`CLAIM_GRACE`](refill::CLAIM_GRACE) first, so the new start does not take a core from the
//! claiming session's first turn. A process whose start
//! would take the idle processes' resident memory (their process trees'
//! RSS) over the budget is not started, or killed if the measurement after
//! its start says so.
//!
//! **Drain.** The pool empties when its release stops being the one new
//! sessions start on (a release change: the active release of its project
//! is another one), and on shutdown, which kills every pooled process and
//! waits for it (`Sessions::shutdown`).

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use karta_harness::{Harness, Prestarted};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod claim;
mod refill;

pub use refill::tree_rss_bytes;

use super::{Sessions, lock};
use crate::credentials::Credentials;

/// The prefix of pool slot ids: a `.` is not allowed in session ids, so no
/// session can be called like a slot.
pub const SLOT_PREFIX: &str = "pool.";

/// The size of the warm pool of each loaded release (`karta serve --pool`,
/// `--pool-memory-mib`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Idle processes kept per release; 0 disables the pool.
    pub size: usize,
    /// The most resident memory (RSS of their process trees) the idle
    /// processes of one release may take together, bytes.
    pub memory_bytes: u64,
}

impl PoolConfig {
    /// No pool.
    pub const OFF: Self = Self {
        size: 0,
        memory_bytes: 0,
    };
}

impl Default for PoolConfig {
    /// Off: an embedder asks for a pool (`karta serve` defaults to 2).
    fn default() -> Self {
        Self::OFF
    }
}

/// What a pool holds and has done, for `/metrics`, `doctor` and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// The harness (`claude_code`, `opencode`).
    pub harness: &'static str,
    /// The idle processes it aims for.
    pub size: usize,
    /// Idle processes, ready to be claimed.
    pub idle: usize,
    /// Processes starting now.
    pub starting: usize,
    /// The harness process ids of the idle processes.
    pub idle_pids: Vec<u32>,
    /// Their resident memory (process trees), bytes, as last measured.
    pub idle_rss_bytes: Vec<u64>,
    /// How long each one's warm-up took ([`Harness::prestart`]); `None`:
    /// not warmed up (a harness without a warm-up).
    pub idle_warm_up: Vec<Option<Duration>>,
    /// Processes sessions claimed so far.
    pub claimed: u64,
    /// First turns that started their own process though a pool exists.
    pub misses: u64,
    /// Starts that failed.
    pub spawn_failures: u64,
    /// Starts not made, or undone, because of the memory budget.
    pub over_budget: u64,
    /// Why the last failed start failed.
    pub last_failure: Option<String>,
}

/// One pre-started process and what is its.
struct Entry {
    slot: String,
    dir: PathBuf,
    process: Prestarted,
    rss_bytes: u64,
}

/// A release's warm pool.
pub(crate) struct Pool {
    config: PoolConfig,
    harness: Arc<dyn Harness>,
    credentials: Arc<Credentials>,
    root: PathBuf,
    model: String,
    idle: Mutex<VecDeque<Entry>>,
    /// Every slot alive: idle or starting.
    slots: Mutex<HashSet<String>>,
    starting: AtomicUsize,
    claimed: AtomicU64,
    misses: AtomicU64,
    spawn_failures: AtomicU64,
    over_budget: AtomicU64,
    last_failure: Mutex<Option<String>>,
    /// The RSS of the last process started, bytes: the estimate of the
    /// next one's.
    last_rss: AtomicU64,
    /// When a session last claimed a process.
    last_claim: Mutex<Option<std::time::Instant>>,
    wake: Notify,
    stop: CancellationToken,
    active: Box<dyn Fn() -> bool + Send + Sync>,
    tasks: TaskTracker,
}

/// The slot's workspace and `HOME` in its directory.
fn slot_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("workspace"), dir.join("home"))
}

impl Pool {
    fn stats(&self) -> PoolStats {
        let idle = lock(&self.idle);
        PoolStats {
            harness: self.harness.name(),
            size: self.config.size,
            idle: idle.len(),
            starting: self.starting.load(Ordering::SeqCst),
            idle_pids: idle
                .iter()
                .filter_map(|e| e.process.harness_pid())
                .collect(),
            idle_rss_bytes: idle.iter().map(|e| e.rss_bytes).collect(),
            idle_warm_up: idle.iter().map(|e| e.process.warm_up()).collect(),
            claimed: self.claimed.load(Ordering::SeqCst),
            misses: self.misses.load(Ordering::SeqCst),
            spawn_failures: self.spawn_failures.load(Ordering::SeqCst),
            over_budget: self.over_budget.load(Ordering::SeqCst),
            last_failure: lock(&self.last_failure).clone(),
        }
    }

    /// Forgets `slot` and kills its process, removing its directory.
    async fn discard(&self, entry: Entry) {
        self.credentials.revoke(&entry.slot);
        lock(&self.slots).remove(&entry.slot);
        entry.process.kill().await;
        let _ = std::fs::remove_dir_all(&entry.dir);
    }

    /// Kills every idle process.
    async fn drain(&self) {
        let entries: Vec<Entry> = lock(&self.idle).drain(..).collect();
        for entry in entries {
            self.discard(entry).await;
        }
    }

    /// Stops refilling, kills every idle process and waits for the refill
    /// task (a start under way is dropped, which kills its process).
    pub(crate) async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.drain().await;
    }
}

impl Sessions {
    /// Starts this release's warm pool (see the module docs): nothing
    /// when `config.size` is 0, or when the harness is the builtin one.
    /// `active` says whether new sessions still start on this release;
    /// when it stops saying so, the pool drains.
    pub fn start_pool(
        self: &Arc<Self>,
        config: PoolConfig,
        active: impl Fn() -> bool + Send + Sync + 'static,
    ) {
        let Some(harness) = self.harness.clone() else {
            return;
        };
        if config.size == 0 || self.pool.get().is_some() {
            return;
        }
        let pool = Arc::new(Pool {
            config,
            harness,
            credentials: self.credentials.clone(),
            root: self.config.workspaces.with_file_name("pool"),
            model: self.config.default_model.clone(),
            idle: Mutex::default(),
            slots: Mutex::default(),
            starting: AtomicUsize::new(0),
            claimed: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            spawn_failures: AtomicU64::new(0),
            over_budget: AtomicU64::new(0),
            last_failure: Mutex::default(),
            last_rss: AtomicU64::new(0),
            last_claim: Mutex::default(),
            wake: Notify::new(),
            stop: CancellationToken::new(),
            active: Box::new(active),
            tasks: TaskTracker::new(),
        });
        if self.pool.set(pool.clone()).is_err() {
            return;
        }
        pool.tasks
            .spawn(refill::refill(Arc::downgrade(self), pool.clone()));
    }

    /// The warm pool's state, when this release has one.
    pub fn pool_stats(&self) -> Option<PoolStats> {
        Some(self.pool.get()?.stats())
    }

    /// Whether `id` is a live slot of this release's pool.
    pub(crate) fn is_pool_slot(&self, id: &str) -> bool {
        id.starts_with(SLOT_PREFIX)
            && self
                .pool
                .get()
                .is_some_and(|pool| lock(&pool.slots).contains(id))
    }

    /// Drains this release's pool and stops refilling it.
    pub(crate) async fn shutdown_pool(&self) {
        if let Some(pool) = self.pool.get() {
            pool.shutdown().await;
        }
    }
}
