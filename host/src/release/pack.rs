//! Packing an app folder for publishing, on the builder's machine.
//!
//! The archive is deterministic — members sorted by name, mtime 0, owner
//! 0:0, modes 0644/0755 (only the exec bit is kept) — so the same folder
//! gives the same bytes, hence the same digest, and a republish of an
//! unchanged app shares its unpacked tree on the host.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use flate2::{Compression, GzBuilder};
use karta_harness::safe_fs::{Kind, SafeDir};

use super::{ReleaseError, UploadLimits};
use crate::app::AppError;

/// Directories never packed, at any depth: version control, the data dir
/// `karta serve` keeps inside an app by default, and build or dependency
/// output that the host does not run.
const SKIPPED_DIRS: &[&str] = &[".git", ".karta", "node_modules", "target", "__pycache__"];

/// Files never packed, at any depth: `.env` holds the builder's secrets
/// (dev mode binds `[env]` from it); on the host, values come from the
/// operator's environment.
const SKIPPED_FILES: &[&str] = &[".env"];

/// One member to pack.
struct Member {
    /// The name in the archive (`/`-separated, relative).
    name: String,
    /// The file's content, or `None` for a directory.
    data: Option<Vec<u8>>,
    /// Whether any exec bit is set.
    executable: bool,
}

/// Packs the app folder `dir` into a deterministic tar.gz for publishing.
///
/// Members are sorted by name, with mtime 0, uid/gid 0 and mode 0644 (0755
/// for a file with any exec bit, and for directories). Skipped at any
/// depth: the directories `.git/`, `.karta/`, `node_modules/`, `target/`,
/// `__pycache__/`, and `.env` files — **secrets stay on the builder's
/// machine**; the host binds `[env]` from its operator's environment.
///
/// A symbolic link whose target stays inside the folder is packed as the
/// file it points to; a link out of the folder, a link to a directory, a
/// FIFO, a socket or a device is a [`ReleaseError::InvalidApp`] naming it.
/// An archive larger than the host accepts (see [`UploadLimits`]) is
/// [`ReleaseError::TooLarge`], found here rather than after the upload.
pub fn pack_dir(dir: &Path) -> Result<Vec<u8>, ReleaseError> {
    let root = std::fs::canonicalize(dir)?;
    // Links are followed only while they stay beneath the folder.
    let safe = SafeDir::open_app(&root)?;
    let limits = UploadLimits::default();
    let mut members = Vec::new();
    let mut total: u64 = 0;
    collect(
        &safe,
        &root,
        Path::new(""),
        &limits,
        &mut total,
        &mut members,
    )?;
    // Sorted by name; a directory sorts before what it holds (its name is
    // a prefix of theirs).
    members.sort_by(|a, b| a.name.cmp(&b.name));

    // Fixed gzip header (mtime 0, no file name) and level: same input,
    // same bytes.
    let encoder = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::default());
    let mut builder = tar::Builder::new(encoder);
    for member in &members {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        match &member.data {
            Some(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(if member.executable { 0o755 } else { 0o644 });
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, &member.name, data.as_slice())?;
            }
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder.append_data(&mut header, &member.name, std::io::empty())?;
            }
        }
    }
    let mut encoder = builder.into_inner()?;
    encoder.flush()?;
    let archive = encoder.finish()?;
    if archive.len() as u64 > limits.max_archive_bytes {
        return Err(ReleaseError::TooLarge(format!(
            "{}: the archive is {} bytes; the host accepts at most {}",
            root.display(),
            archive.len(),
            limits.max_archive_bytes
        )));
    }
    Ok(archive)
}

/// An [`AppError`] naming a file of the folder.
fn refuse(path: PathBuf, message: impl Into<String>) -> ReleaseError {
    ReleaseError::InvalidApp(AppError {
        file: path,
        line: None,
        message: message.into(),
    })
}

/// Adds the members under `relative` (a directory of the folder).
fn collect(
    safe: &SafeDir,
    root: &Path,
    relative: &Path,
    limits: &UploadLimits,
    total: &mut u64,
    members: &mut Vec<Member>,
) -> Result<(), ReleaseError> {
    for (name, kind) in safe.list(relative)? {
        let path = relative.join(&name);
        let shown = root.join(&path);
        let Some(text) = path.to_str().map(str::to_owned) else {
            return Err(refuse(shown, "a file name that is not UTF-8"));
        };
        let name = name.to_string_lossy();
        // `.git` may also be a file (a worktree or a submodule).
        if name == ".git" {
            continue;
        }
        if members.len() >= limits.max_entries as usize {
            return Err(ReleaseError::TooLarge(format!(
                "{}: more than {} files and directories",
                root.display(),
                limits.max_entries
            )));
        }
        if path.components().count() > limits.max_depth || text.len() > limits.max_path_bytes {
            return Err(refuse(
                shown,
                "nested too deep or named too long to publish",
            ));
        }
        // What the entry is once a link (inside the folder) is followed;
        // a link out is refused by the lookup itself.
        let resolved = match kind {
            Kind::Link => safe.resolved_kind(&path).map_err(|e| {
                refuse(
                    shown.clone(),
                    format!("a link that leaves the app folder or is broken: {e}"),
                )
            })?,
            other => other,
        };
        match (kind, resolved) {
            (Kind::Dir, _) => {
                if SKIPPED_DIRS.contains(&name.as_ref()) {
                    continue;
                }
                members.push(Member {
                    name: text,
                    data: None,
                    executable: false,
                });
                collect(safe, root, &path, limits, total, members)?;
            }
            (_, Kind::Dir) => {
                return Err(refuse(
                    shown,
                    "a link to a directory (replace it with the directory itself)",
                ));
            }
            (_, Kind::File(_)) => {
                if SKIPPED_FILES.contains(&name.as_ref()) {
                    continue;
                }
                let remaining = limits.max_unpacked_bytes.saturating_sub(*total);
                let data = safe.read(&path, remaining).map_err(|e| {
                    if karta_harness::safe_fs::is_too_large(&e) {
                        ReleaseError::TooLarge(format!(
                            "{}: the files add up to more than {} bytes",
                            root.display(),
                            limits.max_unpacked_bytes
                        ))
                    } else {
                        refuse(shown.clone(), format!("cannot read: {e}"))
                    }
                })?;
                *total += data.len() as u64;
                // The link was checked to stay inside; its target's mode
                // says whether it is a program.
                let executable = std::fs::metadata(&shown)?.permissions().mode() & 0o111 != 0;
                members.push(Member {
                    name: text,
                    data: Some(data),
                    executable,
                });
            }
            _ => {
                return Err(refuse(
                    shown,
                    "a FIFO, socket or device cannot be published",
                ));
            }
        }
    }
    Ok(())
}

/// The folder's git commit when it is a checkout (`git rev-parse HEAD`),
/// with `-dirty` appended when `git status --porcelain` lists anything;
/// `None` when git is missing, the folder is not a checkout, or anything
/// else fails.
pub fn git_commit(dir: &Path) -> Option<String> {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            // A status must not take the index lock from a running editor.
            .env("GIT_OPTIONAL_LOCKS", "0")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8(out.stdout).ok())
    };
    let commit = git(&["rev-parse", "HEAD"])?.trim().to_owned();
    if commit.is_empty() || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let status = git(&["status", "--porcelain"])?;
    Some(if status.trim().is_empty() {
        commit
    } else {
        format!("{commit}-dirty")
    })
}
