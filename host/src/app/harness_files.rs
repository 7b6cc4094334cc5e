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
//! its settings (BENCHMARKS.md, "overhead").
//!
//! Nothing is ever written or removed *through* a symbolic link: links in
//! the app are skipped, and a link (or anything but a directory or a
//! regular file) found in the workspace where the set needs a file or a
//! directory is removed and replaced.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
const MANAGED: &[&str] = &["CLAUDE.md", "AGENTS.md", ".claude", ".opencode"];

/// OpenCode installs its plugin package here; it stays.
const KEPT: &str = ".opencode/node_modules";

/// One file of the set.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HarnessFile {
    /// Relative to the app root and the workspace.
    path: PathBuf,
    bytes: Arc<[u8]>,
}

/// The app's harness files, as the harness gets them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HarnessFiles {
    files: Vec<HarnessFile>,
    /// Every directory that holds a file of the set (relative).
    dirs: BTreeSet<PathBuf>,
    /// Every file of the set (relative).
    paths: BTreeSet<PathBuf>,
}

impl HarnessFiles {
    /// Reads the set from the app at `root`. Links and special files are
    /// skipped; more than [`MAX_HARNESS_COPY_BYTES`] in all is an error.
    pub fn collect(root: &Path) -> std::io::Result<Self> {
        let mut set = Self::default();
        let mut total = 0u64;
        for name in HARNESS_FILES {
            set.collect_tree(root, Path::new(name), &mut total, 0)?;
        }
        for name in CLAUDE_SETTINGS_FILES {
            let from = root.join(name);
            if !std::fs::symlink_metadata(&from).is_ok_and(|m| m.is_file()) {
                continue;
            }
            let settings = std::fs::read(&from)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
            let Some(settings) = settings else {
                tracing::warn!(
                    "{} is not valid JSON; the harness does not get it",
                    from.display()
                );
                continue;
            };
            let bytes = serde_json::to_vec_pretty(&sanitize_claude_settings(&settings))
                .map_err(std::io::Error::other)?;
            set.add(PathBuf::from(name), bytes);
        }
        Ok(set)
    }

    fn add(&mut self, path: PathBuf, bytes: Vec<u8>) {
        let mut parent = path.parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            self.dirs.insert(dir.to_path_buf());
            parent = dir.parent();
        }
        self.paths.insert(path.clone());
        self.files.push(HarnessFile {
            path,
            bytes: bytes.into(),
        });
    }

    fn collect_tree(
        &mut self,
        root: &Path,
        relative: &Path,
        total: &mut u64,
        depth: usize,
    ) -> std::io::Result<()> {
        let from = root.join(relative);
        let meta = match std::fs::symlink_metadata(&from) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if meta.is_file() {
            *total += meta.len();
            if *total > MAX_HARNESS_COPY_BYTES {
                return Err(std::io::Error::other(format!(
                    "the harness files (CLAUDE.md, AGENTS.md, agents, commands, skills) take more than {} MiB; at most {} MiB reach the harness",
                    MAX_HARNESS_COPY_BYTES >> 20,
                    MAX_HARNESS_COPY_BYTES >> 20
                )));
            }
            self.add(relative.to_path_buf(), std::fs::read(&from)?);
        } else if meta.is_dir() && depth < MAX_DEPTH {
            let mut names: Vec<_> = std::fs::read_dir(&from)?
                .map(|entry| entry.map(|e| e.file_name()))
                .collect::<Result<_, _>>()?;
            names.sort();
            for name in names {
                self.collect_tree(root, &relative.join(name), total, depth + 1)?;
            }
        }
        Ok(())
    }

    /// Makes the harness files in `workspace` exactly the set: removes what
    /// is not in it (under `CLAUDE.md`, `AGENTS.md`, `.claude/`,
    /// `.opencode/`, keeping `.opencode/node_modules`), writes what differs,
    /// leaves the rest of the workspace alone.
    pub fn sync(&self, workspace: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(workspace)?;
        for name in MANAGED {
            self.prune(workspace, Path::new(name), 0)?;
        }
        for file in &self.files {
            if let Some(parent) = file.path.parent() {
                real_dirs(workspace, parent)?;
            }
            let to = workspace.join(&file.path);
            let current = std::fs::symlink_metadata(&to);
            let same = current.as_ref().is_ok_and(|m| {
                m.is_file()
                    && m.len() == file.bytes.len() as u64
                    && std::fs::read(&to).is_ok_and(|bytes| *bytes == *file.bytes)
            });
            if same {
                continue;
            }
            if current.is_ok() {
                remove_any(&to)?;
            }
            std::fs::write(&to, &file.bytes)?;
        }
        Ok(())
    }

    /// Removes from `workspace/relative` whatever the set does not have.
    fn prune(&self, workspace: &Path, relative: &Path, depth: usize) -> std::io::Result<()> {
        if relative == Path::new(KEPT) {
            return Ok(());
        }
        let path = workspace.join(relative);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            return Ok(());
        };
        let keeps_dir = self.dirs.contains(relative) || relative == Path::new(".opencode");
        if meta.is_dir() && keeps_dir && depth < MAX_DEPTH {
            for entry in std::fs::read_dir(&path)? {
                self.prune(workspace, &relative.join(entry?.file_name()), depth + 1)?;
            }
            Ok(())
        } else if meta.is_file() && self.paths.contains(relative) {
            Ok(())
        } else {
            remove_any(&path)
        }
    }
}

/// Makes every component of `relative` under `workspace` a real directory
/// (a link or a file in the way is removed first).
fn real_dirs(workspace: &Path, relative: &Path) -> std::io::Result<()> {
    let mut path = workspace.to_path_buf();
    for component in relative.components() {
        path.push(component);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => continue,
            Ok(_) => remove_any(&path)?,
            Err(_) => {}
        }
        std::fs::create_dir(&path)?;
    }
    Ok(())
}

/// Removes a file, a link (not what it points to) or a directory tree
/// (`remove_dir_all` does not follow links inside it).
fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    }
}

/// Makes the harness files in a session workspace exactly the app's at
/// `root` (reads the app each time; the host keeps the set it read at load
/// in [`super::AppSpec::harness_files`] and syncs that).
pub fn copy_harness_files(root: &Path, workspace: &Path) -> std::io::Result<()> {
    HarnessFiles::collect(root)?.sync(workspace)
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
