//! `files` — search and read the session workspace, and nothing else.
//!
//! The plugin sees only the directory its grant mounts at `/workspace`; every
//! other path simply does not exist for it (and `..` or a symlink out of the
//! workspace fails inside the sandbox).
//!
//! Tools:
//! - `search`: files whose relative path contains `name` and, if given, whose
//!   text contains `contains` (with the matching lines).
//! - `read`: one file's text, up to `max_bytes`.
//! - `write`: create or replace a file (needs a read-write grant).
//!
//! Try: `karta tool call examples/plugins/target/wasm32-wasip2/release/files.wasm search '{"contains":"fuel"}' --dir .:ro`

use std::fs;
use std::path::{Path, PathBuf};

use karta_guest::{ToolError, WORKSPACE, export_plugin};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Input of `search`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchInput {
    /// Part of the relative path to match (case-insensitive); empty matches all.
    #[serde(default)]
    pub name: String,
    /// Text the file must contain (case-sensitive); omit to match on names only.
    #[serde(default)]
    pub contains: Option<String>,
    /// Most files to return (default 50, at most 1000).
    #[serde(default = "default_limit")]
    pub limit: usize,
}

fn default_limit() -> usize {
    50
}

/// One file found by `search`.
#[derive(Serialize, Debug)]
pub struct Hit {
    /// Path relative to the workspace.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Matching lines as `(line number, text)`, when `contains` was given.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<(usize, String)>,
}

/// Output of `search`.
#[derive(Serialize, Debug)]
pub struct SearchOutput {
    /// The files found, in path order.
    pub hits: Vec<Hit>,
    /// Whether the limit cut the list short.
    pub truncated: bool,
}

/// Files larger than this are matched by name only.
const MAX_SCANNED_FILE: u64 = 4 * 1024 * 1024;

/// Searches the workspace.
pub fn search(input: SearchInput) -> Result<SearchOutput, ToolError> {
    let limit = input.limit.clamp(1, 1000);
    let needle = input.name.to_lowercase();
    let mut files = Vec::new();
    walk(Path::new(WORKSPACE), &mut files)?;
    files.sort();
    let mut hits = Vec::new();
    let mut truncated = false;
    for path in files {
        let relative = path
            .strip_prefix(WORKSPACE)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        if !relative.to_lowercase().contains(&needle) {
            continue;
        }
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let mut lines = Vec::new();
        if let Some(text) = &input.contains {
            if size > MAX_SCANNED_FILE {
                continue;
            }
            let Ok(content) = fs::read_to_string(&path) else {
                continue;
            };
            lines = content
                .lines()
                .enumerate()
                .filter(|(_, l)| l.contains(text.as_str()))
                .take(20)
                .map(|(i, l)| (i + 1, l.chars().take(300).collect()))
                .collect();
            if lines.is_empty() {
                continue;
            }
        }
        if hits.len() == limit {
            truncated = true;
            break;
        }
        hits.push(Hit {
            path: relative,
            size,
            lines,
        });
    }
    Ok(SearchOutput { hits, truncated })
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ToolError> {
    let entries = fs::read_dir(dir).map_err(|e| ToolError::from_io(&dir.to_string_lossy(), &e))?;
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            walk(&entry.path(), out)?;
        } else if kind.is_file() {
            out.push(entry.path());
        }
        // Symlinks are skipped: the sandbox would refuse the ones leading out,
        // and following the others could loop.
    }
    Ok(())
}

/// Resolves a tool path: relative paths are taken inside the workspace.
fn workspace_path(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{WORKSPACE}/{path}")
    }
}

/// Input of `read`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadInput {
    /// The file, relative to the workspace (or absolute under `/workspace`).
    pub path: String,
    /// Most bytes to return (default 65536).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
}

fn default_max_bytes() -> usize {
    65536
}

/// Output of `read`.
#[derive(Serialize, Debug)]
pub struct ReadOutput {
    /// The text (lossy UTF-8), cut at `max_bytes`.
    pub text: String,
    /// The file's size.
    pub size: u64,
    /// Whether the text was cut.
    pub truncated: bool,
}

/// Reads a file.
pub fn read(input: ReadInput) -> Result<ReadOutput, ToolError> {
    let path = workspace_path(&input.path);
    let bytes = fs::read(&path).map_err(|e| ToolError::from_io(&path, &e))?;
    let size = bytes.len() as u64;
    let cut = bytes.len().min(input.max_bytes);
    Ok(ReadOutput {
        text: String::from_utf8_lossy(&bytes[..cut]).into_owned(),
        size,
        truncated: cut < bytes.len(),
    })
}

/// Input of `write`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteInput {
    /// The file, relative to the workspace.
    pub path: String,
    /// The new content.
    pub content: String,
}

/// Output of `write`.
#[derive(Serialize, Debug)]
pub struct WriteOutput {
    /// Bytes written.
    pub bytes: usize,
}

/// Creates or replaces a file.
pub fn write(input: WriteInput) -> Result<WriteOutput, ToolError> {
    let path = workspace_path(&input.path);
    if let Some(parent) = Path::new(&path).parent() {
        fs::create_dir_all(parent).map_err(|e| ToolError::from_io(&path, &e))?;
    }
    fs::write(&path, &input.content).map_err(|e| ToolError::from_io(&path, &e))?;
    Ok(WriteOutput {
        bytes: input.content.len(),
    })
}

export_plugin! {
    tool("search", "Finds files in the workspace by path and, optionally, by text they contain.", search),
    tool("read", "Reads a text file from the workspace.", read),
    tool("write", "Creates or replaces a file in the workspace.", write),
}
