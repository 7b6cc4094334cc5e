//! The app's own files — its data, scripts, docs — copied into a new
//! session's workspace, so instructions like "grep the large log in
//! `data/`" work for a harness whose tools act on its working directory.
//!
//! A harness app is a folder; the harness runs in that folder. Each session
//! gets its own copy (its workspace is writable, and one session's edits
//! must not reach another's), made once, when the workspace is created —
//! never again, so what the session changed stays. What is not copied:
//!
//! - the harness files ([`super::HarnessFiles`] keeps those exactly the
//!   app's before every turn);
//! - Karta's own files (`karta.toml`, `karta.jsonc`) and `.env` (the
//!   operator's values, bound into the environment, not shown);
//! - `.mcp.json` and `opencode.json(c)`: the host gives the harness its MCP
//!   servers itself;
//! - version control and build output (`.git`, `node_modules`, `target`,
//!   `.karta`, `__pycache__`);
//! - links that leave the app, FIFOs, sockets and devices (refused at load
//!   by [`SafeDir::open_app`]; a link inside the app is copied as the file
//!   it names).
//!
//! The set is listed at load (names and sizes, not contents) and capped at
//! [`MAX_PROJECT_BYTES`]; a bigger app is refused with a clear error rather
//! than copied in part.

use std::path::{Path, PathBuf};

use karta_harness::safe_fs::{Kind, SafeDir};

use super::AppError;

/// The most an app's project files may weigh, copied per session.
pub const MAX_PROJECT_BYTES: u64 = 512 * 1024 * 1024;

/// How deep the copied tree may go.
const MAX_DEPTH: usize = 24;

/// Names never copied, at any depth.
const SKIPPED_ANYWHERE: &[&str] = &[".git", "node_modules", "__pycache__", ".DS_Store"];

/// Names never copied at the app's root.
const SKIPPED_AT_ROOT: &[&str] = &[
    "CLAUDE.md",
    "AGENTS.md",
    ".claude",
    ".opencode",
    ".mcp.json",
    "opencode.json",
    "opencode.jsonc",
    "karta.toml",
    "karta.jsonc",
    ".env",
    ".karta",
    "target",
];

/// The app's project files, as listed at load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectFiles {
    /// The app's folder.
    root: PathBuf,
    /// Directories to make, parents first (relative).
    dirs: Vec<PathBuf>,
    /// Files to copy (relative).
    files: Vec<PathBuf>,
    /// Their total size.
    bytes: u64,
}

impl ProjectFiles {
    /// Lists the project files of the app at `root`.
    pub fn collect(root: &Path) -> Result<Self, AppError> {
        let dir = SafeDir::open_app(root).map_err(|e| super::error(root, None, e.to_string()))?;
        let mut files = Self {
            root: root.to_path_buf(),
            ..Self::default()
        };
        files.walk(&dir, Path::new(""), 0)?;
        Ok(files)
    }

    fn walk(&mut self, dir: &SafeDir, relative: &Path, depth: usize) -> Result<(), AppError> {
        let here = self.root.join(relative);
        if depth > MAX_DEPTH {
            return Err(super::error(
                &here,
                None,
                format!("nested deeper than {MAX_DEPTH} directories"),
            ));
        }
        let entries = dir
            .list(relative)
            .map_err(|e| super::error(&here, None, e.to_string()))?;
        for (name, _) in entries {
            let name_str = name.to_string_lossy();
            if SKIPPED_ANYWHERE.contains(&name_str.as_ref())
                || (depth == 0 && SKIPPED_AT_ROOT.contains(&name_str.as_ref()))
            {
                continue;
            }
            let path = relative.join(&name);
            // Links inside the app count as what they name; links out,
            // FIFOs, sockets and devices are refused by `open_app`.
            let kind = dir
                .resolved_kind(&path)
                .map_err(|e| super::error(&self.root.join(&path), None, e.to_string()))?;
            match kind {
                Kind::Dir => {
                    self.dirs.push(path.clone());
                    self.walk(dir, &path, depth + 1)?;
                }
                Kind::File(size) => {
                    self.bytes += size;
                    if self.bytes > MAX_PROJECT_BYTES {
                        return Err(super::error(
                            &self.root,
                            None,
                            format!(
                                "the app's files weigh more than {} MiB, copied into every session; move large data out of the app folder",
                                MAX_PROJECT_BYTES >> 20
                            ),
                        ));
                    }
                    self.files.push(path);
                }
                Kind::Link | Kind::Special => {
                    return Err(super::error(
                        &self.root.join(&path),
                        None,
                        "not a regular file or directory",
                    ));
                }
            }
        }
        Ok(())
    }

    /// How many files, and how many bytes.
    pub fn size(&self) -> (usize, u64) {
        (self.files.len(), self.bytes)
    }

    /// Copies the files into `workspace`, a directory made just now (no
    /// process has run in it: nothing there to follow).
    pub fn copy_into(&self, workspace: &Path) -> std::io::Result<()> {
        let target = SafeDir::create(workspace)?;
        for dir in &self.dirs {
            target.create_dirs(dir)?;
        }
        for file in &self.files {
            // The app's side was checked at load (links stay inside it);
            // `copy` streams, so a large log is not held in memory.
            std::fs::copy(self.root.join(file), workspace.join(file))?;
        }
        Ok(())
    }
}
