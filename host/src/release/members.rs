//! One member of an uploaded archive: its name checked before it becomes
//! a path, and its file or directory created without overwriting or
//! following anything.
//!
//! Everything under the destination was made here, from checked plain
//! names, and nothing here ever makes a link — so no path walked below can
//! lead out of it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

use super::{ReleaseError, UploadLimits};

/// A member's name as text, for checks and messages.
pub(super) fn member_name(raw: &[u8], limits: &UploadLimits) -> Result<String, ReleaseError> {
    let shown = String::from_utf8_lossy(raw);
    if raw.len() > limits.max_path_bytes {
        return Err(ReleaseError::BadArchive(format!(
            "{}…: a member name longer than {} bytes",
            shown.chars().take(64).collect::<String>(),
            limits.max_path_bytes
        )));
    }
    let name = String::from_utf8(raw.to_vec()).map_err(|_| {
        ReleaseError::BadArchive(format!("{shown}: a member name that is not UTF-8"))
    })?;
    if name.is_empty() || name.contains('\0') {
        return Err(ReleaseError::BadArchive(format!(
            "{name:?}: an empty or NUL-containing member name"
        )));
    }
    Ok(name)
}

/// The relative path a member name stands for: plain names only; `None`
/// for the archive's root itself (`./`).
pub(super) fn relative_path(
    name: &str,
    limits: &UploadLimits,
) -> Result<Option<PathBuf>, ReleaseError> {
    let mut path = PathBuf::new();
    let mut depth = 0;
    for component in Path::new(name).components() {
        match component {
            Component::Normal(part) => {
                depth += 1;
                path.push(part);
            }
            // `./app/x`, as `tar -C dir .` writes names.
            Component::CurDir => {}
            Component::RootDir => {
                return Err(ReleaseError::BadArchive(format!(
                    "{name}: an absolute member name"
                )));
            }
            Component::ParentDir | Component::Prefix(_) => {
                return Err(ReleaseError::BadArchive(format!(
                    "{name}: a member name with `..`"
                )));
            }
        }
    }
    if depth > limits.max_depth {
        return Err(ReleaseError::BadArchive(format!(
            "{name}: nested deeper than {} levels",
            limits.max_depth
        )));
    }
    Ok((depth > 0).then_some(path))
}

/// Creates a directory member and its parents. Everything under `dest`
/// was made by this function or [`write_file`] from checked plain names,
/// and neither ever makes a link, so nothing on the way can lead out.
pub(super) fn make_dir(dest: &Path, relative: &Path, name: &str) -> Result<(), ReleaseError> {
    let path = dest.join(relative);
    match std::fs::create_dir_all(&path) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::AlreadyExists | io::ErrorKind::NotADirectory
            ) =>
        {
            Err(ReleaseError::BadArchive(format!(
                "{name}: a directory where a file of the archive already is"
            )))
        }
        Err(e) => Err(ReleaseError::Io(e)),
    }
}

/// Writes one regular file member with `create_new`: a second member of
/// the same name is refused, never written over the first.
pub(super) fn write_file(
    entry: &mut impl Read,
    dest: &Path,
    relative: &Path,
    name: &str,
    size: u64,
    mode: u32,
) -> Result<(), ReleaseError> {
    if let Some(parent) = relative.parent().filter(|p| !p.as_os_str().is_empty()) {
        make_dir(dest, parent, name)?;
    }
    // `create_new` is O_CREAT | O_EXCL, which fails on any existing name,
    // a symbolic link included (it is never followed).
    let mut file: File = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(dest.join(relative))
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(ReleaseError::BadArchive(format!(
                "{name}: a second member of the same name"
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            return Err(ReleaseError::BadArchive(format!(
                "{name}: inside a path that is a file of the archive"
            )));
        }
        Err(e) => return Err(ReleaseError::Io(e)),
    };
    // Copy by hand to tell the archive's errors (bad data, the limit) from
    // the disk's (full, read-only).
    let mut buffer = vec![0u8; 64 * 1024];
    let mut written: u64 = 0;
    loop {
        let n = entry.read(&mut buffer).map_err(|e| {
            ReleaseError::BadArchive(format!("{name}: the archive data is corrupt: {e}"))
        })?;
        if n == 0 {
            break;
        }
        file.write_all(&buffer[..n])?;
        written += n as u64;
    }
    if written != size {
        return Err(ReleaseError::BadArchive(format!(
            "{name}: the archive is truncated ({written} of {size} bytes)"
        )));
    }
    Ok(())
}

/// What a refused member is, in words.
pub(super) fn kind_name(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Symlink => "symbolic link",
        EntryType::Link => "hard link",
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Fifo => "FIFO",
        EntryType::GNUSparse => "sparse file",
        EntryType::Continuous => "contiguous file",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str) -> Result<Option<PathBuf>, String> {
        relative_path(name, &UploadLimits::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn plain_names_pass_and_a_leading_dot_slash_is_dropped() {
        assert_eq!(path("a/b.md"), Ok(Some(PathBuf::from("a/b.md"))));
        assert_eq!(path("./a//b/"), Ok(Some(PathBuf::from("a/b"))));
        assert_eq!(path("./"), Ok(None));
    }

    #[test]
    fn names_that_leave_are_refused_naming_the_member() {
        for (name, says) in [
            ("../x", "`..`"),
            ("a/../../x", "`..`"),
            ("a/..", "`..`"),
            ("/etc/x", "absolute"),
        ] {
            let e = path(name).expect_err(name);
            assert!(e.contains(name) && e.contains(says), "{e}");
        }
        let deep = vec!["d"; 33].join("/");
        assert!(path(&deep).expect_err("deep").contains("deeper than 32"));
    }

    #[test]
    fn names_must_be_utf8_short_and_free_of_nul() {
        let limits = UploadLimits::default();
        assert!(member_name(b"caf\xe9", &limits).is_err());
        assert!(member_name(b"a\0b", &limits).is_err());
        assert!(member_name(b"", &limits).is_err());
        assert!(member_name(&[b'n'; 1025], &limits).is_err());
        assert_eq!(
            member_name(b"ok.md", &limits).ok().as_deref(),
            Some("ok.md")
        );
    }
}
