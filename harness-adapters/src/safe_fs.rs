//! File operations under a directory someone else can change, that never
//! follow a link they made.
//!
//! The host reads and writes in places a guest also writes: a session's
//! workspace (every plugin with a read-write workspace, and the harness
//! process) and its `HOME` (the harness process). A guest can plant a
//! relative symbolic link there — `.opencode -> ../../db`,
//! `karta-mcp.json -> /some/host/file` — and a host that opens a path by
//! name would then read, write or delete whatever the link names, with the
//! host's rights. It can also plant a FIFO (an `open` that never returns)
//! or a file of any size.
//!
//! A [`SafeDir`] is a directory opened once by the host; every operation
//! names a path *relative* to it and resolves it with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`
//! (on kernels before 5.6, one `openat(O_NOFOLLOW)` per component, which
//! refuses the same links): any link on the way, `..`, or an absolute path
//! is an error, never followed. The last component is never followed
//! either: it is looked at with `AT_SYMLINK_NOFOLLOW`, opened with
//! `O_NOFOLLOW`, and replaced (`renameat`) or removed (`unlinkat`) as the
//! entry itself. Reads refuse anything but a regular file (checked on the
//! open descriptor, so a swap after the check changes nothing) and read at
//! most the size asked for. Writes go to a fresh file in the same directory
//! that is then renamed over the name: a link or a FIFO that was there is
//! replaced, not written through, and a reader never sees half a file.
//!
//! An app folder is different: it is not a guest's, and its links may
//! point at other files of the app ([`SafeDir::open_app`]). There links are
//! followed while they stay beneath the folder (`RESOLVE_BENEATH` refuses
//! one that leaves it, and `RESOLVE_NO_MAGICLINKS` the `/proc` kind);
//! special files are refused the same way.
//!
//! This is what `cap-std` does too; `rustix` is already a dependency, and
//! the few operations needed here are smaller than a second file API.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// What is at a path, not following a link there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file of this many bytes.
    File(u64),
    /// A directory.
    Dir,
    /// A symbolic link (never followed).
    Link,
    /// A FIFO, socket or device.
    Special,
}

/// How a [`SafeDir`] treats links on a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Links {
    /// Any link is refused (a guest's directory).
    Refuse,
    /// Links are followed while they stay beneath the directory (an app).
    Beneath,
}

/// An entry's identity and change times, to tell cheaply whether it
/// changed since (see [`SafeDir::stamps`]).
///
/// The kernel sets `ctime` on every change to an inode — its bytes, its
/// mode, its links, an entry added to or removed from a directory, a
/// rename — and no system call sets it to a chosen value, so a guest
/// cannot change an entry and put its `ctime` back. A change in the same
/// clock granule as the stamp's `ctime` could still leave it equal: a
/// stamp is only a witness for changes after [`Stamp::settled_before`]
/// says its `ctime` is old enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    mode: u32,
    nlink: u64,
    size: i64,
    mtime: (i64, u64),
    ctime: (i64, u64),
}

impl Stamp {
    // `st_nlink` and the nanoseconds are `u32` on some targets.
    #[allow(clippy::unnecessary_cast)]
    fn of(stat: &rustix::fs::Stat) -> Self {
        Self {
            dev: stat.st_dev as u64,
            ino: stat.st_ino as u64,
            mode: stat.st_mode as u32,
            nlink: stat.st_nlink as u64,
            size: stat.st_size as i64,
            mtime: (stat.st_mtime as i64, stat.st_mtime_nsec as u64),
            ctime: (stat.st_ctime as i64, stat.st_ctime_nsec as u64),
        }
    }

    /// Whether the entry's last change (`ctime`) was at least `margin`
    /// before `now` (the wall clock, which `ctime` follows): then any
    /// later change gets a later `ctime`, and an equal stamp proves there
    /// was none. A `ctime` in the future (the clock moved back) is not
    /// settled.
    pub fn settled_before(&self, now: std::time::SystemTime, margin: std::time::Duration) -> bool {
        let (secs, nanos) = self.ctime;
        let ctime = u64::try_from(secs)
            .ok()
            .map(|secs| std::time::UNIX_EPOCH + std::time::Duration::new(secs, 0))
            .and_then(|t| t.checked_add(std::time::Duration::from_nanos(nanos)));
        match (ctime, now.checked_sub(margin)) {
            (Some(ctime), Some(limit)) => ctime <= limit,
            _ => false,
        }
    }
}

/// A directory opened once; every operation is relative to it and stays
/// beneath it (see the module docs).
#[derive(Debug)]
pub struct SafeDir {
    fd: OwnedFd,
    path: PathBuf,
    links: Links,
}

/// What [`SafeDir::read`] refused, and why (inside an `io::Error`).
#[derive(Debug)]
struct Refused {
    message: String,
    /// A link (rather than a special file or a directory).
    link: bool,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refused {}

fn refused(message: String, link: bool) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, Refused { message, link })
}

/// The error for a path that is not a regular file.
fn not_regular(path: &Path, kind: Kind) -> std::io::Error {
    let what = match kind {
        Kind::Dir => "a directory",
        Kind::Link => "a symbolic link (not followed)",
        Kind::Special => "a FIFO, socket or device",
        Kind::File(_) => "a file",
    };
    refused(
        format!("{} is {what}, not a regular file", path.display()),
        kind == Kind::Link,
    )
}

/// Names the path in a refusal by the kernel: a link on the way
/// (`RESOLVE_NO_SYMLINKS`, `O_NOFOLLOW`: `ELOOP`) or one leading out of the
/// directory (`RESOLVE_BENEATH`: `EXDEV`). Other errors pass unchanged.
fn explain(path: &Path, error: std::io::Error) -> std::io::Error {
    match error.raw_os_error() {
        Some(code) if code == Errno::LOOP.raw_os_error() => refused(
            format!(
                "{} is or passes through a symbolic link (not followed)",
                path.display()
            ),
            true,
        ),
        Some(code) if code == Errno::XDEV.raw_os_error() => refused(
            format!("{} is a link that leads out of its folder", path.display()),
            true,
        ),
        _ => error,
    }
}

fn refusal(error: &std::io::Error) -> Option<&Refused> {
    error.get_ref().and_then(|e| e.downcast_ref::<Refused>())
}

/// Whether an error means a link was refused: one on the way or at the end
/// (never followed), or one leading out of the directory.
pub fn is_link_refused(error: &std::io::Error) -> bool {
    refusal(error).is_some_and(|r| r.link)
        || matches!(
            error.raw_os_error(),
            Some(code) if code == Errno::LOOP.raw_os_error() || code == Errno::XDEV.raw_os_error()
        )
}

/// Whether an error is a refused special file or directory (from
/// [`SafeDir::read`]).
pub fn is_not_regular(error: &std::io::Error) -> bool {
    refusal(error).is_some_and(|r| !r.link)
}

/// Whether an error is a file over the size asked for (from
/// [`SafeDir::read`]).
pub fn is_too_large(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::FileTooLarge
}

fn kind_of(stat: &rustix::fs::Stat) -> Kind {
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => Kind::File(u64::try_from(stat.st_size).unwrap_or(0)),
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Link,
        _ => Kind::Special,
    }
}

/// The components of a relative path, each a plain name: `..`, `.`, and an
/// absolute path are refused (nothing we open is named that way).
fn names(relative: &Path) -> std::io::Result<Vec<&OsStr>> {
    relative
        .components()
        .map(|component| match component {
            Component::Normal(name) => Ok(name),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is not a plain relative path", relative.display()),
            )),
        })
        .collect()
}

impl SafeDir {
    /// Opens `path` (the host's own: a workspace or a `HOME`), refusing
    /// every link beneath it.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Self::open_with(path, Links::Refuse)
    }

    /// Creates `path` and its parents if missing (the host's own path),
    /// then opens it like [`SafeDir::open`].
    pub fn create(path: &Path) -> std::io::Result<Self> {
        // Opened first: it exists on every call but the first, and
        // `create_dir_all` would look it up once more (a system call on
        // the path to every process-harness turn).
        match Self::open(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(path)?;
                Self::open(path)
            }
            opened => opened,
        }
    }

    /// Opens an app folder: links are followed while they stay inside it.
    pub fn open_app(path: &Path) -> std::io::Result<Self> {
        Self::open_with(path, Links::Beneath)
    }

    fn open_with(path: &Path, links: Links) -> std::io::Result<Self> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            fd,
            path: path.to_path_buf(),
            links,
        })
    }

    /// The directory's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `relative` with `flags` (plus `O_CLOEXEC`, and `O_NOFOLLOW`
    /// unless links beneath are allowed).
    fn open_at(&self, relative: &Path, flags: OFlags) -> std::io::Result<OwnedFd> {
        let parts = names(relative)?;
        if parts.is_empty() {
            return Ok(rustix::fs::openat(
                &self.fd,
                ".",
                flags | OFlags::CLOEXEC,
                Mode::empty(),
            )?);
        }
        let (resolve, flags) = match self.links {
            Links::Refuse => (
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
                // Not O_NOFOLLOW: with it a link at the end would be opened
                // itself (O_PATH) or give ENOTDIR; without it,
                // RESOLVE_NO_SYMLINKS refuses the link (ELOOP).
                flags | OFlags::CLOEXEC,
            ),
            Links::Beneath => (
                ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
                flags | OFlags::CLOEXEC,
            ),
        };
        match rustix::fs::openat2(&self.fd, relative, flags, Mode::empty(), resolve) {
            // No openat2 (Linux before 5.6, or a seccomp filter that does
            // not know it): walk the path one component at a time, never
            // following a link (stricter than `Beneath`, never looser).
            Err(Errno::NOSYS) | Err(Errno::PERM) => {
                let (parent, name) = self.walk_parent(&parts)?;
                Ok(rustix::fs::openat(
                    &parent,
                    name,
                    flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                    Mode::empty(),
                )?)
            }
            other => Ok(other?),
        }
    }

    /// Opens every component but the last as a directory, refusing links.
    fn walk_parent<'p>(&self, parts: &[&'p OsStr]) -> std::io::Result<(OwnedFd, &'p OsStr)> {
        let Some((last, dirs)) = parts.split_last() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "an empty path",
            ));
        };
        let mut dir = rustix::fs::openat(
            &self.fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        for name in dirs {
            dir = rustix::fs::openat(
                &dir,
                *name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::empty(),
            )?;
        }
        Ok((dir, last))
    }

    /// The directory holding `relative` (opened the safe way), and the
    /// last name — for operations on the entry itself, which never follow
    /// it.
    fn parent_of<'p>(&self, relative: &'p Path) -> std::io::Result<(OwnedFd, &'p OsStr)> {
        let parts = names(relative)?;
        let Some((last, _)) = parts.split_last() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "an empty path",
            ));
        };
        let parent = relative.parent().unwrap_or(Path::new(""));
        let dir = self.open_at(parent, OFlags::RDONLY | OFlags::DIRECTORY)?;
        Ok((dir, last))
    }

    /// What is at `relative` (a link is reported, not followed); `None`
    /// when nothing is. A link on the way is an error.
    pub fn kind(&self, relative: &Path) -> std::io::Result<Option<Kind>> {
        let (dir, name) = match self.parent_of(relative) {
            Ok(found) => found,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(kind_of(&stat))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads the regular file at `relative`, at most `max` bytes: a link,
    /// a directory, a FIFO, a socket or a device is refused, and so is a
    /// larger file (`ErrorKind::FileTooLarge`).
    pub fn read(&self, relative: &Path, max: u64) -> std::io::Result<Vec<u8>> {
        let shown = self.path.join(relative);
        // Look before opening: opening a FIFO or a device may block or act.
        // `O_PATH` opens neither.
        let probe = self
            .open_at(relative, OFlags::PATH)
            .map_err(|e| explain(&shown, e))?;
        let kind = kind_of(&rustix::fs::fstat(&probe)?);
        if !matches!(kind, Kind::File(_)) {
            return Err(not_regular(&shown, kind));
        }
        // Then open it for reading and check again what was opened (it
        // may have been swapped in between); O_NONBLOCK so a FIFO swapped
        // in does not block the open.
        let fd = self
            .open_at(relative, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY)
            .map_err(|e| explain(&shown, e))?;
        let kind = kind_of(&rustix::fs::fstat(&fd)?);
        let Kind::File(len) = kind else {
            return Err(not_regular(&shown, kind));
        };
        let too_large = || {
            std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                format!("{} is larger than {max} bytes", shown.display()),
            )
        };
        if len > max {
            return Err(too_large());
        }
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        // One byte more than allowed tells a file that grew since `fstat`.
        std::fs::File::from(fd)
            .take(max.saturating_add(1))
            .read_to_end(&mut bytes)?;
        if bytes.len() as u64 > max {
            return Err(too_large());
        }
        Ok(bytes)
    }

    /// [`SafeDir::read`], with `None` when nothing is there.
    pub fn read_optional(&self, relative: &Path, max: u64) -> std::io::Result<Option<Vec<u8>>> {
        match self.read(relative, max) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Makes `relative` a regular file holding `bytes`, replacing whatever
    /// entry was there (a link or a FIFO is replaced, not written through;
    /// a directory is removed). Its directory must exist and be reached
    /// without a link.
    pub fn write(&self, relative: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let (dir, name) = self.parent_of(relative)?;
        let mut temp = OsString::from(".karta-");
        temp.push(uuid::Uuid::new_v4().simple().to_string());
        let fd = rustix::fs::openat(
            &dir,
            temp.as_os_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )?;
        let written = (|| {
            use std::io::Write;
            let mut file = std::fs::File::from(fd);
            file.write_all(bytes)?;
            match rustix::fs::renameat(&dir, temp.as_os_str(), &dir, name) {
                // A directory (or a non-empty one) in the way: remove it.
                Err(Errno::ISDIR) | Err(Errno::NOTEMPTY) | Err(Errno::EXIST) => {
                    remove_entry(&dir, name, 0)?;
                    rustix::fs::renameat(&dir, temp.as_os_str(), &dir, name)?;
                    Ok(())
                }
                other => Ok(other?),
            }
        })();
        if written.is_err() {
            let _ = rustix::fs::unlinkat(&dir, temp.as_os_str(), AtFlags::empty());
        }
        written
    }

    /// Removes the entry at `relative` — a file, a link (not what it
    /// points to), or a directory tree (whose links are removed, never
    /// followed). Nothing there is fine.
    pub fn remove(&self, relative: &Path) -> std::io::Result<()> {
        let (dir, name) = match self.parent_of(relative) {
            Ok(found) => found,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        remove_entry(&dir, name, 0)
    }

    /// Makes every component of `relative` a real directory: a link, a
    /// file or a special file in the way is removed first.
    pub fn create_dirs(&self, relative: &Path) -> std::io::Result<()> {
        let mut dir = rustix::fs::openat(
            &self.fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        for name in names(relative)? {
            match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) if kind_of(&stat) == Kind::Dir => {}
                Ok(_) => {
                    remove_entry(&dir, name, 0)?;
                    rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755))?;
                }
                // Made meanwhile by another caller (two jails of one end
                // user start at once in their shared HOME) is as good:
                // the open below checks it is a directory, not a link.
                Err(Errno::NOENT) => {
                    match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
            // O_NOFOLLOW: a link swapped in since is refused, not entered.
            dir = rustix::fs::openat(
                &dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::empty(),
            )?;
        }
        Ok(())
    }

    /// An `O_PATH` descriptor of the directory at `relative` (never through
    /// a link): for binding it into a jail by `/proc/self/fd/N`, so the
    /// bind is of exactly what was checked, whatever is swapped in later.
    pub fn open_dir(&self, relative: &Path) -> std::io::Result<OwnedFd> {
        self.open_at(relative, OFlags::PATH | OFlags::DIRECTORY)
            .map_err(|e| explain(&self.path.join(relative), e))
    }

    /// Adds the file or directory at `relative` (`""`: this one) to the
    /// inotify instance `inotify` with `flags`; its watch descriptor, or
    /// `None` when nothing is there or a link is in the way (refused, never
    /// followed). The entry is opened the safe way (`O_PATH`) and watched
    /// through `/proc/self/fd/N`, which names exactly the inode opened: a
    /// link swapped in after the open is not what gets watched.
    pub fn watch(
        &self,
        inotify: std::os::fd::BorrowedFd<'_>,
        relative: &Path,
        flags: rustix::fs::inotify::WatchFlags,
    ) -> std::io::Result<Option<i32>> {
        let fd = match self.open_at(relative, OFlags::PATH) {
            Ok(fd) => fd,
            Err(e)
                if matches!(
                    Errno::from_io_error(&e),
                    Some(Errno::NOENT | Errno::LOOP | Errno::NOTDIR | Errno::XDEV)
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(explain(&self.path.join(relative), e)),
        };
        // No `IN_DONT_FOLLOW`: the magic link is what must be followed (to
        // the inode opened above, never a link itself: `open_at` refuses
        // those).
        let magic = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
        Ok(Some(rustix::fs::inotify::add_watch(inotify, magic, flags)?))
    }

    /// The entries of the directory at `relative` (`""`: this one), with
    /// what each is (links not followed), sorted by name.
    pub fn list(&self, relative: &Path) -> std::io::Result<Vec<(OsString, Kind)>> {
        let dir = self.open_at(relative, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let mut entries = Vec::new();
        for entry in rustix::fs::Dir::read_from(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = OsStr::from_bytes(name).to_os_string();
            let kind = match rustix::fs::statat(&dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => kind_of(&stat),
                // Removed since it was listed.
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            entries.push((name, kind));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(entries)
    }

    /// What each entry at `relatives` is now, by its metadata ([`Stamp`]);
    /// `None` where nothing is. Entries are looked at with
    /// `AT_SYMLINK_NOFOLLOW` from their directory, opened once (`O_PATH`)
    /// the safe way: a link on the way is an error, never followed; a link
    /// at the end is stamped as itself. Two equal stamps taken apart mean
    /// the entry was not changed in between, when the first was taken
    /// after its `ctime` had settled ([`Stamp::settled_before`]).
    pub fn stamps<'p>(
        &self,
        relatives: impl IntoIterator<Item = &'p Path>,
    ) -> std::io::Result<Vec<Option<Stamp>>> {
        // Each directory opened once: a set's files share a few.
        let mut dirs: Vec<(&Path, Option<OwnedFd>)> = Vec::new();
        let mut stamps = Vec::new();
        for relative in relatives {
            let parts = names(relative)?;
            let Some(name) = parts.last() else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "an empty path",
                ));
            };
            let parent = relative.parent().unwrap_or(Path::new(""));
            let index = match dirs.iter().position(|(path, _)| *path == parent) {
                Some(index) => index,
                None => {
                    let fd = match self.open_at(parent, OFlags::PATH | OFlags::DIRECTORY) {
                        Ok(fd) => Some(fd),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                        Err(e) => return Err(explain(&self.path.join(parent), e)),
                    };
                    dirs.push((parent, fd));
                    dirs.len() - 1
                }
            };
            let stamp = match &dirs[index].1 {
                None => None,
                Some(dir) => match rustix::fs::statat(dir, *name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(stat) => Some(Stamp::of(&stat)),
                    Err(Errno::NOENT) => None,
                    Err(e) => return Err(e.into()),
                },
            };
            stamps.push(stamp);
        }
        Ok(stamps)
    }

    /// What `relative` resolves to in an app folder (following links
    /// beneath it): used to check a file before someone reads it by path.
    pub fn resolved_kind(&self, relative: &Path) -> std::io::Result<Kind> {
        let fd = self
            .open_at(relative, OFlags::PATH)
            .map_err(|e| explain(&self.path.join(relative), e))?;
        Ok(kind_of(&rustix::fs::fstat(&fd)?))
    }
}

/// How deep [`remove_entry`] goes (a guest can nest directories deeper
/// than we have stack for).
const MAX_REMOVE_DEPTH: usize = 64;

/// Removes `name` in `dir` without following it: a file or link is
/// unlinked, a directory emptied (through descriptors opened with
/// `O_NOFOLLOW`) and removed.
fn remove_entry(dir: &OwnedFd, name: &OsStr, depth: usize) -> std::io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        // A directory (EISDIR on Linux; EPERM where POSIX says so).
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    if depth >= MAX_REMOVE_DEPTH {
        return Err(std::io::Error::other(
            "a directory tree nested too deep to remove",
        ));
    }
    let child = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&child)? {
        let entry = entry?;
        let entry_name = entry.file_name().to_bytes();
        if entry_name != b"." && entry_name != b".." {
            names.push(OsStr::from_bytes(entry_name).to_os_string());
        }
    }
    for entry_name in names {
        remove_entry(&child, &entry_name, depth + 1)?;
    }
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("safe_fs-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    /// Two jails of one end user start at once in their shared HOME: both
    /// make its scratch directories, and neither fails for the other's.
    #[test]
    fn callers_racing_to_make_the_same_directories_all_succeed() {
        for _ in 0..50 {
            let root = tempdir();
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
            let racers: Vec<_> = (0..4)
                .map(|_| {
                    let (root, barrier) = (root.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        let dir = SafeDir::open(&root).expect("open");
                        barrier.wait();
                        dir.create_dirs(Path::new("a/b/c"))
                    })
                })
                .collect();
            for racer in racers {
                racer.join().expect("a racer").expect("made or found");
            }
            assert!(root.join("a/b/c").is_dir());
            let _ = std::fs::remove_dir_all(&root);
        }
    }

    #[test]
    fn links_are_refused_replaced_or_removed_never_followed() {
        let base = tempdir();
        let root = base.join("root");
        let outside = base.join("outside");
        std::fs::create_dir_all(&root).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(outside.join("secret"), "secret").expect("write");
        symlink(outside.join("secret"), root.join("file-link")).expect("link");
        symlink("../outside", root.join("dir-link")).expect("link");
        let dir = SafeDir::open(&root).expect("open");

        let e = dir.read(Path::new("file-link"), 1024).expect_err("a link");
        assert!(is_link_refused(&e), "{e}");
        let e = dir
            .read(Path::new("dir-link/secret"), 1024)
            .expect_err("a link on the way");
        assert!(is_link_refused(&e), "{e}");
        assert_eq!(
            dir.kind(Path::new("file-link")).expect("kind"),
            Some(Kind::Link)
        );
        let e = dir
            .write(Path::new("dir-link/new"), b"x")
            .expect_err("a write through a link");
        assert!(is_link_refused(&e), "{e}");
        assert!(dir.read(Path::new("../outside/secret"), 1024).is_err());

        dir.write(Path::new("file-link"), b"ours")
            .expect("replaced");
        assert_eq!(
            std::fs::read_to_string(outside.join("secret")).expect("read"),
            "secret"
        );
        assert_eq!(
            dir.read(Path::new("file-link"), 1024).expect("read"),
            b"ours"
        );
        dir.create_dirs(Path::new("dir-link/sub")).expect("dirs");
        assert!(
            std::fs::symlink_metadata(root.join("dir-link"))
                .expect("meta")
                .is_dir()
        );
        dir.remove(Path::new("dir-link")).expect("remove");
        symlink("../outside", root.join("again")).expect("link");
        dir.remove(Path::new("again")).expect("remove a link");
        assert!(outside.join("secret").exists(), "the target stays");
        std::fs::remove_dir_all(&base).expect("cleanup");
    }

    #[test]
    fn reads_refuse_special_files_and_large_ones() {
        let base = tempdir();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            base.join("fifo").as_path(),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .expect("mkfifo");
        std::fs::write(base.join("big"), vec![b'x'; 100]).expect("write");
        let dir = SafeDir::open(&base).expect("open");
        let e = dir.read(Path::new("fifo"), 1024).expect_err("a FIFO");
        assert!(is_not_regular(&e), "{e}");
        let e = dir.read(Path::new("big"), 99).expect_err("too large");
        assert!(is_too_large(&e), "{e}");
        assert_eq!(dir.read(Path::new("big"), 100).expect("read").len(), 100);
        std::fs::remove_dir_all(&base).expect("cleanup");
    }

    #[test]
    fn an_app_dir_follows_links_only_inside() {
        let base = tempdir();
        let app = base.join("app");
        std::fs::create_dir_all(app.join("docs")).expect("mkdir");
        std::fs::write(app.join("docs/a.md"), "a").expect("write");
        symlink("docs/a.md", app.join("inside")).expect("link");
        symlink("/proc/self/environ", app.join("environ")).expect("link");
        symlink("../../../../../../../etc/passwd", app.join("passwd")).expect("link");
        let dir = SafeDir::open_app(&app).expect("open");
        assert_eq!(dir.read(Path::new("inside"), 10).expect("read"), b"a");
        for name in ["environ", "passwd"] {
            let e = dir.read(Path::new(name), 1 << 20).expect_err("outside");
            assert!(is_link_refused(&e), "{name}: {e}");
        }
        std::fs::remove_dir_all(&base).expect("cleanup");
    }
}
