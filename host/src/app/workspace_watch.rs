//! Knowing in one `read` whether a session workspace's harness files
//! changed since their last sync: inotify watches on what the set owns
//! (used by [`super::SyncMemo`]; the stamps it falls back to cost a `stat`
//! per entry on the way to every turn).
//!
//! One inotify instance serves every workspace of the process
//! ([`Watches::shared`]: the kernel allows 128 per user, shared with the
//! harnesses' own file watchers, and a host loads a set per release). A
//! workspace is watched for one memo (one release's set) at a time: a turn
//! of another memo finds it not watched for itself and compares in full.
//! A watched workspace has a watch on
//!
//! - its root, for the managed names ([`super::harness_files`]'s `MANAGED`)
//!   appearing, going or being renamed — events for other names there are
//!   read and dropped;
//! - every directory of the set (and `.opencode`, which is always pruned),
//!   for an entry appearing, going or being renamed, for its own mode
//!   changing and for itself going;
//! - every file of the set, for its bytes or metadata changing through any
//!   name it has (a hard link made to it changes its link count, an event
//!   too), for it going, and for it being closed after a write.
//!
//! Each entry is opened the safe way and watched through
//! `/proc/self/fd/N` ([`SafeDir::watch`]): a link planted in the workspace
//! is never watched through. Any event marks its workspace changed; a lost
//! event (the queue overflowed) or a failed read marks every workspace
//! changed. A changed (or new) workspace is watched afresh *before* the
//! sync compares it in full, so every change is either undone by that sync
//! or seen as an event by the next turn. A sync that had to write marks the
//! workspace changed again (its writes replaced the inodes watched), so
//! the turn after it compares once more and finds nothing to do.
//!
//! When the kernel has no watch left for the user (`ENOSPC`: the per-user
//! limit, shared with the harnesses' own file watchers, is reached), a
//! workspace that cannot be watched whole is left unwatched and compared by
//! its stamps, and no workspace tries to add watches for
//! [`NO_ROOM_PAUSE`] or until a workspace is forgotten (its watches freed):
//! without that pause every turn of every session would open and try to
//! watch each entry of its set again, and take the watches back, before
//! comparing its stamps anyway.
//!
//! What neither this nor the stamps see: bytes written through a shared
//! writable mapping of a harness file made before the last sync (no system
//! call per write). The harness files are read-write in the jail like the
//! rest of the workspace.

use std::collections::HashMap;
use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use karta_harness::safe_fs::SafeDir;
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::io::Errno;

/// The most workspaces watched at once; past that the least recently
/// synced one stops being watched (its next turn compares in full and
/// watches it again). A watch pins its inode in the kernel's memory, and
/// the user's watches are shared with the harnesses' own.
const MAX_WATCHED: usize = 1024;

/// How long no workspace tries to add watches after the kernel had none
/// left (see the module docs).
const NO_ROOM_PAUSE: Duration = Duration::from_secs(30);

/// On a directory: an entry appearing, going or renamed.
const ENTRY_EVENTS: WatchFlags = WatchFlags::CREATE
    .union(WatchFlags::DELETE)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::ONLYDIR);

/// On a workspace's root: those events (counted for managed names only).
const ROOT_EVENTS: WatchFlags = ENTRY_EVENTS;

/// On a directory of the set: any entry's events, its own mode, itself
/// going.
const DIR_EVENTS: WatchFlags = ENTRY_EVENTS
    .union(WatchFlags::ATTRIB)
    .union(WatchFlags::DELETE_SELF)
    .union(WatchFlags::MOVE_SELF);

/// On a file of the set: its bytes, its metadata (mode, owner, times, link
/// count), a writer closing it, itself going.
const FILE_EVENTS: WatchFlags = WatchFlags::MODIFY
    .union(WatchFlags::ATTRIB)
    .union(WatchFlags::CLOSE_WRITE)
    .union(WatchFlags::DELETE_SELF)
    .union(WatchFlags::MOVE_SELF);

/// What `karta doctor` says about the check before every process-harness
/// turn: whether it is one `read` of inotify events, and the kernel's
/// per-user limits (shared with the harnesses' own file watchers).
pub fn doctor_line() -> String {
    let limit = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/fs/inotify/{name}"))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|_| "?".into())
    };
    match Watches::shared() {
        Some(_) => format!(
            "inotify: one read a turn, whatever the app's size (per-user limits: {} instances, {} watches)",
            limit("max_user_instances"),
            limit("max_user_watches")
        ),
        None => "no inotify instance: a stat per harness file on every turn (stamps)".into(),
    }
}

/// The watches of every session workspace (see the module docs).
#[derive(Debug)]
pub(super) struct Watches {
    inotify: OwnedFd,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// What each watch is on: its workspace, and whether it is that
    /// workspace's root (whose events count only for managed names).
    by_wd: HashMap<i32, (Arc<Path>, bool)>,
    workspaces: HashMap<Arc<Path>, Watched>,
    /// Counts syncs, to find the least recently synced workspace.
    clock: u64,
    /// Until when no watch is tried: the kernel had none left.
    no_room_until: Option<Instant>,
    /// How many times watching a workspace reached the kernel (tests).
    #[cfg(test)]
    tries: u64,
    /// The most watches this instance may hold, as if the kernel's limit
    /// were that (tests).
    #[cfg(test)]
    limit: Option<usize>,
}

#[derive(Debug)]
struct Watched {
    /// The memo it is watched for.
    owner: u64,
    wds: Vec<i32>,
    /// Nothing watched changed since the watches were set.
    unchanged: bool,
    last_used: u64,
}

impl Watches {
    /// The process's instance (made on first use); `None` when the kernel
    /// gives none.
    pub(super) fn shared() -> Option<Arc<Self>> {
        static SHARED: OnceLock<Option<Arc<Watches>>> = OnceLock::new();
        SHARED.get_or_init(|| Self::new().map(Arc::new)).clone()
    }

    /// A new inotify instance; `None` (logged) when the kernel gives none,
    /// and the memo keeps to stamps.
    pub(super) fn new() -> Option<Self> {
        match inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK) {
            Ok(inotify) => Some(Self {
                inotify,
                state: Mutex::default(),
            }),
            Err(e) => {
                tracing::warn!(
                    "no inotify instance ({e}): every turn stats the session's harness files instead"
                );
                None
            }
        }
    }

    /// Whether `workspace` is watched for memo `owner` and nothing it
    /// watches changed since its watches were set (every pending event is
    /// read first).
    pub(super) fn unchanged(&self, owner: u64, workspace: &Path) -> bool {
        let mut state = self.lock();
        self.read_events(&mut state);
        state.clock += 1;
        let now = state.clock;
        match state.workspaces.get_mut(workspace) {
            Some(watched) if watched.unchanged && watched.owner == owner => {
                watched.last_used = now;
                true
            }
            _ => false,
        }
    }

    /// Watches `workspace` afresh for memo `owner` (opened as `ws`): its
    /// root, `dirs` and `files` (relative; those missing or behind a link
    /// are not watched — the sync that follows makes them), marked
    /// unchanged. An error (no watch left) leaves it unwatched: the caller
    /// falls back to stamps.
    pub(super) fn watch<'p>(
        &self,
        owner: u64,
        ws: &SafeDir,
        workspace: &Path,
        dirs: impl IntoIterator<Item = &'p Path>,
        files: impl IntoIterator<Item = &'p Path>,
    ) -> std::io::Result<()> {
        let mut state = self.lock();
        state.unwatch(&self.inotify, workspace);
        match state.no_room_until {
            Some(until) if Instant::now() < until => return Err(Errno::NOSPC.into()),
            Some(_) => state.no_room_until = None,
            None => {}
        }
        #[cfg(test)]
        {
            state.tries += 1;
        }
        if state.workspaces.len() >= MAX_WATCHED {
            let oldest = state
                .workspaces
                .iter()
                .min_by_key(|(_, watched)| watched.last_used)
                .map(|(path, _)| Arc::clone(path));
            if let Some(oldest) = oldest {
                state.unwatch(&self.inotify, &oldest);
            }
        }
        let key: Arc<Path> = Arc::from(workspace);
        let entries = std::iter::once((Path::new(""), ROOT_EVENTS))
            .chain(dirs.into_iter().map(|dir| (dir, DIR_EVENTS)))
            .chain(files.into_iter().map(|file| (file, FILE_EVENTS)));
        let mut wds = Vec::new();
        for (relative, flags) in entries {
            let watched = if state.at_test_limit() {
                Err(Errno::NOSPC.into())
            } else {
                ws.watch(self.inotify.as_fd(), relative, flags)
            };
            match watched {
                Ok(Some(wd)) => {
                    // Two names of one inode (a hard link the guest made)
                    // share a watch descriptor: kept once.
                    if !wds.contains(&wd) {
                        wds.push(wd);
                        state
                            .by_wd
                            .insert(wd, (Arc::clone(&key), relative.as_os_str().is_empty()));
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    for wd in wds {
                        state.by_wd.remove(&wd);
                        let _ = inotify::remove_watch(&self.inotify, wd);
                    }
                    if matches!(Errno::from_io_error(&e), Some(Errno::NOSPC | Errno::NOMEM)) {
                        if state.no_room_until.is_none() {
                            tracing::warn!(
                                "no inotify watch left ({e}; /proc/sys/fs/inotify/max_user_watches \
                                 is shared with the harnesses' own watchers): workspaces not watched \
                                 are compared by stamps, and none is watched anew for {}s or until \
                                 a session's watches are freed",
                                NO_ROOM_PAUSE.as_secs()
                            );
                        }
                        state.no_room_until = Some(Instant::now() + NO_ROOM_PAUSE);
                    }
                    return Err(e);
                }
            }
        }
        state.clock += 1;
        let last_used = state.clock;
        state.workspaces.insert(
            key,
            Watched {
                owner,
                wds,
                unchanged: true,
                last_used,
            },
        );
        Ok(())
    }

    /// Marks `workspace` changed: its next turn compares it in full.
    pub(super) fn changed(&self, workspace: &Path) {
        if let Some(watched) = self.lock().workspaces.get_mut(workspace) {
            watched.unchanged = false;
        }
    }

    /// Stops watching `workspace` (its session was deleted); its watches
    /// freed, other workspaces may be watched again at once.
    pub(super) fn forget(&self, workspace: &Path) {
        let mut state = self.lock();
        if state.unwatch(&self.inotify, workspace) {
            state.no_room_until = None;
        }
    }

    /// Stops watching every workspace watched for memo `owner` (the memo
    /// is gone with its release).
    pub(super) fn forget_owner(&self, owner: u64) {
        let mut state = self.lock();
        let owned: Vec<Arc<Path>> = state
            .workspaces
            .iter()
            .filter(|(_, watched)| watched.owner == owner)
            .map(|(path, _)| Arc::clone(path))
            .collect();
        if !owned.is_empty() {
            state.no_room_until = None;
        }
        for workspace in owned {
            state.unwatch(&self.inotify, &workspace);
        }
    }

    /// Makes this instance refuse watches past `limit` as the kernel does
    /// past its per-user limit (tests).
    #[cfg(test)]
    pub(super) fn limit_to(&self, limit: usize) {
        self.lock().limit = Some(limit);
    }

    /// How many times watching a workspace reached the kernel (tests).
    #[cfg(test)]
    pub(super) fn tries(&self) -> u64 {
        self.lock().tries
    }

    /// Ends the pause after the kernel had no watch left, as if it had run
    /// out (tests).
    #[cfg(test)]
    pub(super) fn end_pause(&self) {
        if let Some(until) = &mut self.lock().no_room_until {
            *until = Instant::now();
        }
    }

    /// How many workspaces are watched (for tests).
    #[cfg(test)]
    pub(super) fn watched(&self) -> usize {
        self.lock().workspaces.len()
    }

    /// The inodes watched, as the kernel lists them (for tests).
    #[cfg(test)]
    pub(super) fn watched_inodes(&self) -> Vec<u64> {
        use std::os::fd::AsRawFd;
        let info =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", self.inotify.as_raw_fd()))
                .expect("fdinfo");
        info.lines()
            .filter(|line| line.starts_with("inotify "))
            .filter_map(|line| {
                let ino = line
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix("ino:"))?;
                u64::from_str_radix(ino, 16).ok()
            })
            .collect()
    }

    /// Reads every pending event and marks the workspaces they concern.
    fn read_events(&self, state: &mut State) {
        // Room for many events, and at least one with the longest name.
        let mut buffer = [MaybeUninit::<u8>::uninit(); 8192];
        let mut reader = inotify::Reader::new(&self.inotify, &mut buffer);
        loop {
            match reader.next() {
                Ok(event) => state.apply(event.wd(), event.events(), event.file_name()),
                Err(Errno::AGAIN) => return,
                Err(Errno::INTR) => continue,
                Err(e) => {
                    tracing::warn!("cannot read the workspaces' inotify events: {e}");
                    state.all_changed();
                    return;
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// Whether the limit a test set is reached (as the kernel's would be).
    #[cfg(test)]
    fn at_test_limit(&self) -> bool {
        self.limit.is_some_and(|limit| self.by_wd.len() >= limit)
    }

    #[cfg(not(test))]
    fn at_test_limit(&self) -> bool {
        false
    }

    /// One event: its workspace is changed, unless it is about a name in a
    /// root that the set does not own.
    fn apply(&mut self, wd: i32, events: ReadFlags, name: Option<&CStr>) {
        if events.contains(ReadFlags::QUEUE_OVERFLOW) {
            self.all_changed();
            return;
        }
        let Some((workspace, root)) = self.by_wd.get(&wd) else {
            // A watch already removed (its `IN_IGNORED`, or a late event).
            return;
        };
        let owned = || {
            name.and_then(|name| name.to_str().ok())
                .is_some_and(|name| super::harness_files::MANAGED.contains(&name))
        };
        if *root && !events.contains(ReadFlags::IGNORED) && !owned() {
            return;
        }
        let workspace = Arc::clone(workspace);
        if events.contains(ReadFlags::IGNORED) {
            // The watched inode is gone (or its file system): the watch is
            // too.
            self.by_wd.remove(&wd);
        }
        if let Some(watched) = self.workspaces.get_mut(&workspace) {
            watched.unchanged = false;
        }
    }

    fn all_changed(&mut self) {
        for watched in self.workspaces.values_mut() {
            watched.unchanged = false;
        }
    }

    /// Stops watching `workspace`; whether it was watched.
    fn unwatch(&mut self, inotify: &OwnedFd, workspace: &Path) -> bool {
        let Some(watched) = self.workspaces.remove(workspace) else {
            return false;
        };
        for wd in watched.wds {
            // Only a watch still this workspace's: one inode under two
            // paths (a workspace renamed) has one watch descriptor, and the
            // path watched last owns it.
            if self
                .by_wd
                .get(&wd)
                .is_some_and(|(owner, _)| **owner == *workspace)
            {
                self.by_wd.remove(&wd);
                // Its `IN_IGNORED` comes later, for a descriptor no longer
                // known.
                let _ = inotify::remove_watch(inotify, wd);
            }
        }
        true
    }
}
