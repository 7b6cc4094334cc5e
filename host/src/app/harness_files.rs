//! The app's files a harness process reads from its working directory, and
//! keeping a session workspace's copy of them exactly the app's.
//!
//! The set is read once, when the app loads ([`HarnessFiles::collect`]):
//! the instructions and the markdown that configures agents, commands and
//! skills, plus Claude Code settings reduced to permission rules. Before
//! every harness turn [`HarnessFiles::sync`] makes the workspace hold
//! exactly that set — the workspace is also the plugins' `/workspace`, so a
//! plugin may have changed it — by removing what is not the app's and
//! writing only the files that differ. A file already right is not touched:
//! rewriting them every turn cost the host CPU and made Claude Code reload
//! its settings (BENCHMARKS.md, "overhead"). A session's turns sync through
//! [`HarnessFiles::sync_with`], which skips the sync when nothing the set
//! owns changed since the last one ([`SyncMemo`]): it learns that from
//! inotify watches on those entries (one `read` of pending events, see
//! `workspace_watch`), or where those cannot be had from one `stat` per
//! entry compared with what the last sync left — instead of listing
//! directories and reading every file on the way to the harness.
//!
//! Nothing is ever read, written or removed *through* a symbolic link in
//! the workspace: every operation there goes through
//! [`karta_harness::safe_fs::SafeDir`] (`openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), so a link a plugin or the
//! harness planted (`.opencode -> ../../db`, `.claude -> ../other-home`) is
//! removed and replaced by a real directory or file, never entered. In the
//! app, links are followed only while they stay inside it; one leading out,
//! a FIFO, a socket or a device is an error naming the file (see
//! [`super::load`]).
//!
//! The markdown that configures agents, commands and skills reaches the
//! harness with its front matter reduced to [`FRONT_MATTER_KEYS`]: Claude
//! Code honours `hooks`, `mcpServers`, `permissionMode` and `allowed-tools`
//! there, OpenCode `tools: {bash: true}`, `permission` and `prompt:
//! {file:…}` — each a way past the host's tool set or its approvals.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use karta_harness::safe_fs::{self, Kind, SafeDir, Stamp};

use super::workspace_watch::Watches;
use super::{AppError, app_file_error, error};

/// What of an app a harness process may read from its working directory:
/// the instructions, and the markdown that configures agents, commands and
/// skills. Everything else under `.claude/` and `.opencode/` is left out —
/// hooks, plugins and custom tools there would run native code in the
/// harness process, outside the WebAssembly runtime.
pub const HARNESS_FILES: &[&str] = &[
    "CLAUDE.md",
    "AGENTS.md",
    ".claude/agents",
    ".claude/commands",
    ".claude/skills",
    ".claude/output-styles",
    ".opencode/agent",
    ".opencode/agents",
    ".opencode/command",
    ".opencode/commands",
    ".opencode/skill",
    ".opencode/skills",
    ".opencode/mode",
    ".opencode/modes",
];

/// Claude Code settings files, copied with only their permission rules
/// (see [`sanitize_claude_settings`]).
pub const CLAUDE_SETTINGS_FILES: &[&str] =
    &[".claude/settings.json", ".claude/settings.local.json"];

/// The most the harness files may weigh (a hostile app must not fill the
/// disk one session at a time, nor the host's memory).
pub const MAX_HARNESS_COPY_BYTES: u64 = 64 * 1024 * 1024;

/// How deep the copied trees may go.
const MAX_DEPTH: usize = 16;

/// The places in a workspace the harness files own: anything in them that
/// is not an app file is removed (but OpenCode's `.opencode/node_modules`).
/// `opencode.json` / `opencode.jsonc` are never app files: OpenCode would
/// merge them over the host's config (an MCP `command` there runs code).
pub(super) const MANAGED: &[&str] = &[
    "CLAUDE.md",
    "AGENTS.md",
    ".claude",
    ".opencode",
    "opencode.json",
    "opencode.jsonc",
];

/// How long before a stamp is taken an entry's last change must be for the
/// stamp to witness any later change ([`Stamp::settled_before`]): the
/// coarsest timestamps of a filesystem a workspace may be on (FAT keeps
/// 2 s; ext4, xfs, btrfs and tmpfs follow the kernel's coarse clock, a few
/// milliseconds).
const SETTLED: Duration = Duration::from_secs(2);

/// The most workspaces a [`SyncMemo`] remembers; past that it starts over
/// (forgetting only costs the next turn of each a full sync).
const MAX_REMEMBERED: usize = 4096;

/// The largest Claude Code settings file read.
const MAX_SETTINGS_BYTES: u64 = 1024 * 1024;

/// The front matter keys a harness gets of the app's agent, command and
/// skill markdown; every other key is dropped at load. Kept because they
/// only name, describe or display the file, or narrow what it may do:
///
/// - `name`, `description`: what the harness lists and the model reads.
/// - `model`: the model asked for; every model call goes through the
///   gateway with the session's key whatever the name.
/// - `tools`: only the app's own tools (see [`HarnessFiles::restrict_tools`])
///   and the harness's non-acting tools the host leaves on; in OpenCode's
///   map form a `false` (which only takes a tool away) is kept too.
/// - `argument-hint`, `color`: display only.
/// - `mode` (`primary`, `subagent`, `all`): where OpenCode offers an agent.
///
/// Dropped, among others: `hooks`, `mcpServers`, `permissionMode`,
/// `allowed-tools` (runs tools unasked), `permission`, `prompt` (`{file:…}`
/// reads any file), `memory`, `isolation`; what is not on this list is
/// dropped, so a key a harness adds later is dropped too.
pub const FRONT_MATTER_KEYS: &[&str] = &[
    "name",
    "description",
    "model",
    "tools",
    "argument-hint",
    "color",
    "mode",
];

/// The harnesses' own tools the host leaves on (they act only through the
/// model): an agent's `tools` may name them.
const KEPT_HARNESS_TOOLS: &[&str] = &[
    "Task",
    "Agent",
    "Skill",
    "TodoWrite",
    "task",
    "skill",
    "todowrite",
];

/// OpenCode installs its plugin package here; it stays.
const KEPT: &str = ".opencode/node_modules";

/// One file of the set.
#[derive(Debug, Clone, PartialEq)]
struct HarnessFile {
    /// Relative to the app root and the workspace.
    path: PathBuf,
    bytes: Arc<[u8]>,
    /// For markdown with front matter: the reduced front matter and the
    /// body, to render again when the app's tools are known.
    front: Option<(serde_yaml_ng::Mapping, String)>,
}

/// The app's harness files, as the harness gets them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HarnessFiles {
    files: Vec<HarnessFile>,
    /// Every directory that holds a file of the set (relative).
    dirs: BTreeSet<PathBuf>,
    /// Every file of the set (relative).
    paths: BTreeSet<PathBuf>,
}

impl HarnessFiles {
    /// Reads the set from the app at `root`: links are followed only while
    /// they stay inside the app; one leading out, a FIFO, a socket or a
    /// device is an error naming the file, and so is more than
    /// [`MAX_HARNESS_COPY_BYTES`] in all. Markdown front matter is reduced
    /// to [`FRONT_MATTER_KEYS`].
    pub fn collect(root: &Path) -> Result<Self, AppError> {
        let app = SafeDir::open_app(root)
            .map_err(|e| error(root, None, format!("cannot open the app folder: {e}")))?;
        let mut set = Self::default();
        let mut total = 0u64;
        for name in HARNESS_FILES {
            set.collect_tree(&app, Path::new(name), &mut total, 0)?;
        }
        for name in CLAUDE_SETTINGS_FILES {
            let from = root.join(name);
            let bytes = match app.read_optional(Path::new(name), MAX_SETTINGS_BYTES) {
                Ok(bytes) => bytes,
                Err(e) if safe_fs::is_too_large(&e) => {
                    return Err(error(
                        &from,
                        None,
                        format!("larger than {} KiB", MAX_SETTINGS_BYTES >> 10),
                    ));
                }
                Err(e) => return Err(app_file_error(&from, &e)),
            };
            let Some(bytes) = bytes else { continue };
            let Ok(settings) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                tracing::warn!(
                    "{} is not valid JSON; the harness does not get it",
                    from.display()
                );
                continue;
            };
            let bytes = serde_json::to_vec_pretty(&sanitize_claude_settings(&settings))
                .map_err(|e| error(&from, None, e.to_string()))?;
            set.add(PathBuf::from(name), bytes, None);
        }
        Ok(set)
    }

    fn add(
        &mut self,
        path: PathBuf,
        bytes: Vec<u8>,
        front: Option<(serde_yaml_ng::Mapping, String)>,
    ) {
        let mut parent = path.parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            self.dirs.insert(dir.to_path_buf());
            parent = dir.parent();
        }
        self.paths.insert(path.clone());
        self.files.push(HarnessFile {
            path,
            bytes: bytes.into(),
            front,
        });
    }

    fn collect_tree(
        &mut self,
        app: &SafeDir,
        relative: &Path,
        total: &mut u64,
        depth: usize,
    ) -> Result<(), AppError> {
        let from = app.path().join(relative);
        let kind = match app.resolved_kind(relative) {
            Ok(kind) => kind,
            // Absent, or a link to nothing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(app_file_error(&from, &e)),
        };
        match kind {
            Kind::File(_) => {
                let too_many = || {
                    error(
                        &from,
                        None,
                        format!(
                            "the harness files (CLAUDE.md, AGENTS.md, agents, commands, skills) take more than {} MiB; at most {} MiB reach the harness",
                            MAX_HARNESS_COPY_BYTES >> 20,
                            MAX_HARNESS_COPY_BYTES >> 20
                        ),
                    )
                };
                // The size is checked on what is read, not on a `stat`
                // beforehand.
                let bytes = match app.read(relative, MAX_HARNESS_COPY_BYTES - *total) {
                    Ok(bytes) => bytes,
                    Err(e) if safe_fs::is_too_large(&e) => return Err(too_many()),
                    Err(e) => return Err(app_file_error(&from, &e)),
                };
                *total += bytes.len() as u64;
                let is_config_markdown = relative.extension().is_some_and(|e| e == "md")
                    && relative.components().count() > 1;
                if is_config_markdown {
                    let (bytes, front) = reduce_front_matter(&bytes, None)
                        .map_err(|message| error(&from, Some(1), message))?;
                    self.add(relative.to_path_buf(), bytes, front);
                } else {
                    self.add(relative.to_path_buf(), bytes, None);
                }
            }
            Kind::Dir if depth < MAX_DEPTH => {
                let entries = app
                    .list(relative)
                    .map_err(|e| error(&from, None, format!("cannot list: {e}")))?;
                for (name, _) in entries {
                    self.collect_tree(app, &relative.join(name), total, depth + 1)?;
                }
            }
            Kind::Dir => {}
            Kind::Link | Kind::Special => {
                return Err(error(
                    &from,
                    None,
                    "is a FIFO, socket or device; an app holds only files and folders",
                ));
            }
        }
        Ok(())
    }

    /// Limits every markdown `tools` list to the app's own tools (`tools`:
    /// their names, as the builtin harness, Claude Code
    /// (`mcp__karta__<tool>`) and OpenCode (`karta_<tool>`) call them) and
    /// the harnesses' non-acting tools. Called once the plugins are loaded;
    /// until then [`HarnessFiles::collect`] has kept only names of those
    /// shapes.
    pub fn restrict_tools<'t>(&mut self, tools: impl IntoIterator<Item = &'t str>) {
        let known: BTreeSet<&str> = tools.into_iter().collect();
        for file in &mut self.files {
            let Some((front, body)) = &mut file.front else {
                continue;
            };
            if let Some(value) = front.get_mut("tools") {
                *value = filter_tools(value, Some(&known));
            }
            file.bytes = render_front_matter(front, body).into();
        }
    }

    /// Makes the harness files in `workspace` exactly the set: removes what
    /// is not in it (under `CLAUDE.md`, `AGENTS.md`, `.claude/`,
    /// `.opencode/`, keeping `.opencode/node_modules`), writes what differs,
    /// leaves the rest of the workspace alone.
    pub fn sync(&self, workspace: &Path) -> std::io::Result<()> {
        // Every operation is relative to the workspace and refuses links
        // (module docs): what a guest planted is removed, never entered.
        self.sync_in(&SafeDir::create(workspace)?).map(|_| ())
    }

    /// [`HarnessFiles::sync`], skipped when nothing the set owns in
    /// `workspace` changed since the last sync `memo` remembers there;
    /// `true` when it synced. Where the kernel gives inotify, the memo
    /// watches what the set owns and a turn reads its pending events (one
    /// `read`; see `workspace_watch`). Otherwise — or when no watch is
    /// left — what it compares is one [`Stamp`] per entry
    /// the set owns or would remove (the managed names, every directory
    /// and file of the set): any change to them — bytes, mode, an entry
    /// added, removed, renamed or linked in — changes a stamp, so the
    /// workspace is right whenever the stamps are those of the last sync.
    /// A sync's stamps are remembered only once every entry's last change
    /// is 2 s old (a change in the same clock granule could leave
    /// a stamp equal), so a turn soon after a sync that wrote files syncs
    /// again. A link in the way makes the stamps unreadable: synced.
    pub fn sync_with(&self, workspace: &Path, memo: &SyncMemo) -> std::io::Result<bool> {
        self.sync_settled(workspace, memo, SETTLED)
    }

    /// [`HarnessFiles::sync_with`] with `settled` for [`SETTLED`] (tests
    /// wait less than 2 s).
    pub(super) fn sync_settled(
        &self,
        workspace: &Path,
        memo: &SyncMemo,
        settled: Duration,
    ) -> std::io::Result<bool> {
        if let Some(watches) = &memo.watches {
            if watches.unchanged(memo.id, workspace) {
                return Ok(false);
            }
            let ws = SafeDir::create(workspace)?;
            // Watched before the full comparison: a change during it is an
            // event for the next turn (see `workspace_watch`).
            let dirs = self.dirs.iter().map(PathBuf::as_path).chain(
                (!self.dirs.contains(Path::new(".opencode"))).then(|| Path::new(".opencode")),
            );
            if watches
                .watch(
                    memo.id,
                    &ws,
                    workspace,
                    dirs,
                    self.paths.iter().map(PathBuf::as_path),
                )
                .is_ok()
            {
                let synced = self.sync_in(&ws);
                if !matches!(synced, Ok(false)) {
                    // Written (the watched inodes replaced) or failed.
                    watches.changed(workspace);
                }
                return synced.map(|_| true);
            }
        }
        let ws = SafeDir::create(workspace)?;
        if let Some(before) = memo.get(workspace)
            && self.stamps(&ws).is_ok_and(|now| now == before)
        {
            return Ok(false);
        }
        memo.forget(workspace);
        self.sync_in(&ws)?;
        // The clock before the stamps: a change after a stamp then gets a
        // `ctime` past this instant.
        let taken = SystemTime::now();
        if let Ok(stamps) = self.stamps(&ws)
            && stamps
                .iter()
                .flatten()
                .all(|stamp| stamp.settled_before(taken, settled))
        {
            memo.remember(workspace, stamps);
        }
        Ok(true)
    }

    /// One stamp per entry the set owns in `ws` or would remove there:
    /// the managed names, then every directory and file of the set
    /// (`None` where nothing is).
    fn stamps(&self, ws: &SafeDir) -> std::io::Result<Vec<Option<Stamp>>> {
        ws.stamps(
            MANAGED
                .iter()
                .map(Path::new)
                .chain(self.dirs.iter().map(PathBuf::as_path))
                .chain(self.paths.iter().map(PathBuf::as_path)),
        )
    }

    /// Makes `ws` hold exactly the set; `true` when that took a change
    /// (something removed or written).
    fn sync_in(&self, ws: &SafeDir) -> std::io::Result<bool> {
        let mut changed = false;
        for name in MANAGED {
            let name = Path::new(name);
            if let Some(kind) = ws.kind(name)? {
                changed |= self.prune(ws, name, kind, 0)?;
            }
        }
        for file in &self.files {
            // Read first (bounded by the app's size: anything larger,
            // missing, not a regular file or behind a link is simply not
            // the same), and its directories made only when it must be
            // written: a sync that finds everything right (every turn but
            // the first) costs one read per file, on the path to the
            // harness.
            let same = ws
                .read(&file.path, file.bytes.len() as u64)
                .is_ok_and(|bytes| *bytes == *file.bytes);
            if !same {
                if let Some(parent) = file.path.parent() {
                    ws.create_dirs(parent)?;
                }
                // Replaces whatever is there (a link, a FIFO, a directory)
                // by renaming a new file over it.
                ws.write(&file.path, &file.bytes)?;
                changed = true;
            }
        }
        Ok(changed)
    }

    /// Removes from `workspace/relative`, which is a `kind`, whatever the
    /// set does not have; `true` when it removed anything. (The kind of a
    /// directory's entries comes from its listing, which looked at each
    /// without following it: looking again per entry cost a directory open
    /// and a stat each. Whatever a guest swaps in meanwhile is still never
    /// followed: a directory is listed through a descriptor that refuses
    /// links, and an entry is removed as itself.)
    fn prune(
        &self,
        ws: &SafeDir,
        relative: &Path,
        kind: Kind,
        depth: usize,
    ) -> std::io::Result<bool> {
        if relative == Path::new(KEPT) {
            return Ok(false);
        }
        let keeps_dir = self.dirs.contains(relative) || relative == Path::new(".opencode");
        match kind {
            Kind::Dir if keeps_dir && depth < MAX_DEPTH => {
                let mut removed = false;
                for (name, kind) in ws.list(relative)? {
                    removed |= self.prune(ws, &relative.join(name), kind, depth + 1)?;
                }
                Ok(removed)
            }
            Kind::File(_) if self.paths.contains(relative) => Ok(false),
            // A link, a stranger, a special file: removed (a link itself,
            // not what it names).
            _ => ws.remove(relative).map(|()| true),
        }
    }
}

/// What each workspace's harness files looked like right after their last
/// sync, so that the next turn skips the sync when nothing changed
/// ([`HarnessFiles::sync_with`]). One memo serves one set of files (a
/// release's): stamps say nothing about another set.
#[derive(Debug)]
pub struct SyncMemo {
    /// Tells this memo's workspaces from another's in the shared watches.
    id: u64,
    /// Watches on each workspace's harness files (`None`: no inotify here,
    /// stamps only).
    watches: Option<Arc<Watches>>,
    /// The stamps of the workspaces not watched.
    stamps: Mutex<HashMap<PathBuf, Vec<Option<Stamp>>>>,
}

impl Default for SyncMemo {
    /// Watches where the kernel gives an inotify instance, else stamps.
    fn default() -> Self {
        Self::with_watches(Watches::shared())
    }
}

impl Drop for SyncMemo {
    fn drop(&mut self) {
        if let Some(watches) = &self.watches {
            watches.forget_owner(self.id);
        }
    }
}

impl SyncMemo {
    /// A memo that only compares stamps, as on a kernel without inotify
    /// (for tests and benches).
    pub fn stamps_only() -> Self {
        Self::with_watches(None)
    }

    /// A memo with an inotify instance of its own (tests that count
    /// watches or overflow the queue stay out of each other's way).
    #[cfg(test)]
    pub(super) fn with_own_watches() -> Self {
        Self::with_watches(Watches::new().map(Arc::new))
    }

    /// Another memo on the same inotify instance (another release's set).
    #[cfg(test)]
    pub(super) fn sharing_watches(&self) -> Self {
        Self::with_watches(self.watches.clone())
    }

    fn with_watches(watches: Option<Arc<Watches>>) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Self {
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            watches,
            stamps: Mutex::default(),
        }
    }

    /// Whether it watches the workspaces (else it compares stamps).
    #[cfg(test)]
    pub(super) fn watches(&self) -> Option<&Watches> {
        self.watches.as_deref()
    }

    fn get(&self, workspace: &Path) -> Option<Vec<Option<Stamp>>> {
        self.lock().get(workspace).cloned()
    }

    fn remember(&self, workspace: &Path, stamps: Vec<Option<Stamp>>) {
        let mut map = self.lock();
        if map.len() >= MAX_REMEMBERED && !map.contains_key(workspace) {
            map.clear();
        }
        map.insert(workspace.to_path_buf(), stamps);
    }

    /// Forgets `workspace` (its session was deleted: a new one of the same
    /// id starts from a full sync).
    pub fn forget(&self, workspace: &Path) {
        if let Some(watches) = &self.watches {
            watches.forget(workspace);
        }
        self.lock().remove(workspace);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Vec<Option<Stamp>>>> {
        self.stamps.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Makes the harness files in a session workspace exactly the app's at
/// `root` (reads the app each time; the host keeps the set it read at load
/// in [`super::AppSpec::harness_files`] and syncs that).
pub fn copy_harness_files(root: &Path, workspace: &Path) -> std::io::Result<()> {
    HarnessFiles::collect(root)
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .sync(workspace)
}

/// The front matter of a markdown file reduced to [`FRONT_MATTER_KEYS`]
/// (`tools` limited to `known` tools when given, else to names of the
/// app's tool shapes), rendered again; the bytes unchanged when there is no
/// front matter. The harness sees only what this renders, so however it
/// would have parsed the original, it cannot find a key dropped here.
#[allow(clippy::type_complexity)]
fn reduce_front_matter(
    bytes: &[u8],
    known: Option<&BTreeSet<&str>>,
) -> Result<(Vec<u8>, Option<(serde_yaml_ng::Mapping, String)>), String> {
    // Anything that could open front matter for some parser (a BOM, blank
    // lines or spaces before `---`) is treated as front matter here.
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(_) if !bytes.trim_ascii_start().starts_with(b"---") => {
            return Ok((bytes.to_vec(), None));
        }
        Err(_) => return Err("front matter that is not UTF-8".into()),
    };
    let start = text.trim_start_matches('\u{feff}').trim_start();
    if !start.starts_with("---") {
        return Ok((bytes.to_vec(), None));
    }
    let mut lines = start.split_inclusive('\n');
    let first = lines.next().unwrap_or_default();
    if first.trim_end() != "---" {
        return Err("front matter must open with a line `---`".into());
    }
    let mut yaml = String::new();
    let mut closed = false;
    for line in lines.by_ref() {
        if line.trim_end() == "---" {
            closed = true;
            break;
        }
        yaml.push_str(line);
    }
    if !closed {
        return Err("front matter opened with `---` is never closed".into());
    }
    let body: String = lines.collect();
    let value: serde_yaml_ng::Value = if yaml.trim().is_empty() {
        serde_yaml_ng::Value::Mapping(Default::default())
    } else {
        serde_yaml_ng::from_str(&yaml).map_err(|e| format!("invalid front matter: {e}"))?
    };
    let serde_yaml_ng::Value::Mapping(mapping) = value else {
        return Err("front matter must be a mapping of keys".into());
    };
    let mut kept = serde_yaml_ng::Mapping::new();
    for (key, value) in mapping {
        let Some(name) = key.as_str() else { continue };
        if !FRONT_MATTER_KEYS.contains(&name) {
            continue;
        }
        let value = match name {
            "tools" => filter_tools(&value, known),
            "mode" if matches!(value.as_str(), Some("primary" | "subagent" | "all")) => value,
            "mode" => continue,
            // Everything else kept is a plain string.
            _ if value.is_string() => value,
            _ => continue,
        };
        kept.insert(key, value);
    }
    let rendered = render_front_matter(&kept, &body);
    Ok((rendered, Some((kept, body))))
}

/// `---`, the front matter, `---`, the body. Always a front matter block,
/// even an empty one, so a body that starts with `---` is never taken for
/// front matter.
fn render_front_matter(front: &serde_yaml_ng::Mapping, body: &str) -> Vec<u8> {
    let yaml = if front.is_empty() {
        String::new()
    } else {
        serde_yaml_ng::to_string(front).unwrap_or_default()
    };
    format!("---\n{yaml}---\n{body}").into_bytes()
}

/// Whether an agent may name `tool`: a harness's non-acting tool, or one
/// of the app's tools (bare, `mcp__karta__…`, `karta_…`, or the whole
/// server); `known` is the app's tool names once loaded (before that, any
/// name of those shapes).
fn tool_allowed(tool: &str, known: Option<&BTreeSet<&str>>) -> bool {
    if KEPT_HARNESS_TOOLS.contains(&tool) {
        return true;
    }
    if matches!(tool, "mcp__karta" | "mcp__karta__*" | "karta_*" | "karta*") {
        return true;
    }
    let bare = tool
        .strip_prefix("mcp__karta__")
        .or_else(|| tool.strip_prefix("karta_"))
        .unwrap_or(tool);
    let plain = !bare.is_empty()
        && bare
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    plain && known.is_none_or(|known| known.contains(bare))
}

/// A `tools` value with only the allowed names: a list (or `a, b` text)
/// keeps allowed entries; a map (OpenCode's) keeps allowed keys, and any
/// key set to `false` (which only takes a tool away).
fn filter_tools(
    value: &serde_yaml_ng::Value,
    known: Option<&BTreeSet<&str>>,
) -> serde_yaml_ng::Value {
    use serde_yaml_ng::Value;
    match value {
        // Kept as text: Claude Code reads `tools: a, b`.
        Value::String(text) => Value::String(
            text.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty() && tool_allowed(t, known))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        Value::Sequence(list) => Value::Sequence(
            list.iter()
                .filter(|t| t.as_str().is_some_and(|t| tool_allowed(t, known)))
                .cloned()
                .collect(),
        ),
        Value::Mapping(map) => Value::Mapping(
            map.iter()
                .filter(|(k, v)| {
                    k.as_str().is_some_and(|k| {
                        (tool_allowed(k, known) && v.is_bool()) || v.as_bool() == Some(false)
                    })
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        _ => Value::Sequence(Vec::new()),
    }
}

/// The part of a Claude Code settings file a harness may see: its
/// `permissions` `allow` / `ask` / `deny` rules — minus `allow` rules for the
/// host's MCP tools (`karta.toml` decides which plugin tools run unasked).
/// Everything else goes: `env` could point the model traffic elsewhere,
/// `hooks`, `apiKeyHelper` and `statusLine` run commands,
/// `permissions.defaultMode` could skip every approval.
pub fn sanitize_claude_settings(settings: &serde_json::Value) -> serde_json::Value {
    let mut permissions = serde_json::Map::new();
    for key in ["allow", "ask", "deny"] {
        let rules: Vec<serde_json::Value> = settings["permissions"][key]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|rule| rule.is_string())
            .filter(|rule| {
                key != "allow" || !rule.as_str().is_some_and(|r| r.starts_with("mcp__karta"))
            })
            .cloned()
            .collect();
        if !rules.is_empty() {
            permissions.insert(key.to_owned(), serde_json::Value::Array(rules));
        }
    }
    serde_json::json!({ "permissions": permissions })
}
