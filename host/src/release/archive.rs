//! Unpacking an uploaded tar.gz that nobody vouches for.
//!
//! The archive comes from a customer's machine (or from whoever holds a
//! publish token), so every member is treated as hostile: only regular
//! files and directories are created, every name is checked before it
//! becomes a path, files are created with `create_new` (an existing entry
//! is never overwritten or followed), and modes are reduced to 0644/0755.
//! Sizes are counted as the gzip stream is *decompressed*, so a gzip bomb
//! is stopped after `max_unpacked_bytes` whatever its headers say.
//!
//! The tar crate's ordinary iterator reads GNU long names and PAX headers
//! whole into memory, however large they claim to be; here the archive is
//! read *raw* and those extension headers are handled below, each bounded
//! (a long name by `max_path_bytes`, a PAX header by [`MAX_PAX_BYTES`]).

use std::io::{self, Read};
use std::path::Path;

use flate2::read::GzDecoder;
use tar::{Archive, PaxExtensions};

use super::ReleaseError;
use super::members::{kind_name, make_dir, member_name, relative_path, write_file};

/// The largest PAX extended header read (path, xattrs, times of one
/// member); a real one is a few hundred bytes.
pub const MAX_PAX_BYTES: u64 = 64 * 1024;

/// What an upload may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadLimits {
    /// The archive as uploaded (compressed): 64 MiB.
    pub max_archive_bytes: u64,
    /// The tar stream once decompressed (headers included): 512 MiB.
    pub max_unpacked_bytes: u64,
    /// Members (files and directories): 20 000.
    pub max_entries: u32,
    /// A member's name, in bytes: 1024.
    pub max_path_bytes: usize,
    /// Components of a member's name: 32.
    pub max_depth: usize,
}

impl Default for UploadLimits {
    fn default() -> Self {
        Self {
            max_archive_bytes: 64 * 1024 * 1024,
            max_unpacked_bytes: 512 * 1024 * 1024,
            max_entries: 20_000,
            max_path_bytes: 1024,
            max_depth: 32,
        }
    }
}

/// What [`unpack`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackStats {
    /// Regular files created.
    pub files: u32,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Counts the bytes coming out of the decompressor and fails once there
/// are more than `limit`: the check is on what is decompressed, not on
/// what a header claims, so a bomb stops after `limit` bytes of work.
struct Counting<R> {
    inner: R,
    count: u64,
    limit: u64,
    exceeded: bool,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.limit {
            self.exceeded = true;
            return Err(io::Error::other("decompressed size limit reached"));
        }
        Ok(n)
    }
}

/// Unpacks a hostile tar.gz into `dest`, an existing empty directory.
///
/// Only regular files and directories are created. A member whose name is
/// absolute, has `..` (or any component other than a plain name; a
/// leading `./` is allowed, as `tar -C dir .` writes it), is not UTF-8, is
/// longer than `max_path_bytes` or deeper than `max_depth` is a
/// [`ReleaseError::BadArchive`] naming it, and so is a symbolic or hard
/// link, a device, a FIFO, a sparse file, a duplicate name, data that is
/// not gzip or not tar, or a truncated stream. More than `max_entries`
/// members, more than `max_unpacked_bytes` decompressed, or an archive
/// over `max_archive_bytes` is [`ReleaseError::TooLarge`]. Nothing is ever
/// written outside `dest`; on an error, what was written inside it is
/// left for the caller to remove.
pub fn unpack(
    archive: &[u8],
    dest: &Path,
    limits: &UploadLimits,
) -> Result<UnpackStats, ReleaseError> {
    if archive.len() as u64 > limits.max_archive_bytes {
        return Err(ReleaseError::TooLarge(format!(
            "the archive is {} bytes; at most {} are accepted",
            archive.len(),
            limits.max_archive_bytes
        )));
    }
    if !archive.starts_with(&[0x1f, 0x8b]) {
        return Err(ReleaseError::BadArchive(
            "not a gzip stream (expected a .tar.gz)".into(),
        ));
    }
    if std::fs::read_dir(dest)?.next().is_some() {
        return Err(ReleaseError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not empty", dest.display()),
        )));
    }
    let mut reader = Counting {
        inner: GzDecoder::new(archive),
        count: 0,
        limit: limits.max_unpacked_bytes,
        exceeded: false,
    };
    let result = unpack_from(&mut reader, dest, limits);
    // Whatever the tar crate made of the error, a limit reached by the
    // decompressor is the answer: the archive is too large.
    if reader.exceeded {
        return Err(ReleaseError::TooLarge(format!(
            "the archive unpacks to more than {} bytes",
            limits.max_unpacked_bytes
        )));
    }
    result
}

/// The extension headers seen since the last member, applying to the next.
#[derive(Default)]
struct Pending {
    /// A GNU long name (`L`) or a PAX `path`.
    name: Option<Vec<u8>>,
    /// A PAX `size`, which must agree with the header (parsers that
    /// disagree on sizes are how smuggled members are made).
    pax_size: Option<u64>,
    /// Whether a PAX header was seen (two in a row are refused).
    pax: bool,
}

fn unpack_from<R: Read>(
    reader: &mut Counting<R>,
    dest: &Path,
    limits: &UploadLimits,
) -> Result<UnpackStats, ReleaseError> {
    let mut archive = Archive::new(reader);
    let bad = |what: String| ReleaseError::BadArchive(what);
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?
        .raw(true);
    let mut stats = UnpackStats { files: 0, bytes: 0 };
    let mut members: u32 = 0;
    let mut pending = Pending::default();
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("not a valid tar archive: {e}")))?;
        let kind = entry.header().entry_type();
        let size = entry.size();

        // Extension headers describe the next member: read them (bounded),
        // never create anything for them.
        if kind.is_gnu_longname() {
            if pending.name.is_some() {
                return Err(bad("two long names for one member".into()));
            }
            let max = limits.max_path_bytes as u64 + 1;
            if size > max {
                return Err(bad(format!(
                    "a member name of {size} bytes (at most {} allowed)",
                    limits.max_path_bytes
                )));
            }
            let mut name = read_bounded(&mut entry, size)?;
            while name.last() == Some(&0) {
                name.pop();
            }
            pending.name = Some(name);
            continue;
        }
        if kind.is_pax_local_extensions() || kind.is_pax_global_extensions() {
            if size > MAX_PAX_BYTES {
                return Err(bad(format!(
                    "a PAX header of {size} bytes (at most {MAX_PAX_BYTES})"
                )));
            }
            let data = read_bounded(&mut entry, size)?;
            // A global header (git archive writes one with the commit) says
            // nothing about a particular member; it still counts, so a
            // stream of them is bounded like members are.
            if kind.is_pax_global_extensions() {
                count_member(&mut members, limits)?;
                continue;
            }
            if pending.pax {
                return Err(bad("two PAX headers for one member".into()));
            }
            pending.pax = true;
            apply_pax(&data, &mut pending)?;
            continue;
        }
        if kind.is_gnu_longlink() {
            return Err(bad(
                "a link member (GNU long link name): only files and directories are accepted"
                    .into(),
            ));
        }

        count_member(&mut members, limits)?;
        let raw_name = pending
            .name
            .take()
            .unwrap_or_else(|| entry.path_bytes().into_owned());
        let pax_size = pending.pax_size.take();
        pending.pax = false;
        let name = member_name(&raw_name, limits)?;
        if let Some(pax_size) = pax_size
            && pax_size != size
        {
            return Err(bad(format!(
                "{name}: its PAX size ({pax_size}) and header size ({size}) disagree"
            )));
        }
        let relative = relative_path(&name, limits)?;

        if kind.is_dir() {
            if let Some(relative) = relative {
                make_dir(dest, &relative, &name)?;
            }
        } else if kind.is_file() {
            let Some(relative) = relative.filter(|_| !name.ends_with('/')) else {
                return Err(bad(format!("{name}: a file member named like a directory")));
            };
            if stats.bytes.saturating_add(size) > limits.max_unpacked_bytes {
                return Err(ReleaseError::TooLarge(format!(
                    "{name}: the files add up to more than {} bytes",
                    limits.max_unpacked_bytes
                )));
            }
            let mode = if entry.header().mode().unwrap_or(0) & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            write_file(&mut entry, dest, &relative, &name, size, mode)?;
            stats.files += 1;
            stats.bytes += size;
        } else {
            return Err(bad(format!(
                "{name}: {} members are not accepted (only files and directories)",
                kind_name(kind)
            )));
        }
    }
    if pending.name.is_some() || pending.pax {
        return Err(bad(
            "the archive ends with a header for a missing member".into()
        ));
    }
    if members == 0 {
        return Err(bad("the archive is empty".into()));
    }
    Ok(stats)
}

fn count_member(members: &mut u32, limits: &UploadLimits) -> Result<(), ReleaseError> {
    *members += 1;
    if *members > limits.max_entries {
        return Err(ReleaseError::TooLarge(format!(
            "the archive has more than {} members",
            limits.max_entries
        )));
    }
    Ok(())
}

/// Reads an extension header's data (its size already checked).
fn read_bounded(entry: &mut impl Read, size: u64) -> Result<Vec<u8>, ReleaseError> {
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    entry
        .take(size)
        .read_to_end(&mut data)
        .map_err(|e| ReleaseError::BadArchive(format!("not a valid tar archive: {e}")))?;
    if data.len() as u64 != size {
        return Err(ReleaseError::BadArchive("the archive is truncated".into()));
    }
    Ok(data)
}

/// Takes `path` and `size` from a PAX header; its other keys (times,
/// owners, extended attributes) are not used.
fn apply_pax(data: &[u8], pending: &mut Pending) -> Result<(), ReleaseError> {
    for extension in PaxExtensions::new(data) {
        let extension = extension
            .map_err(|e| ReleaseError::BadArchive(format!("a malformed PAX header: {e}")))?;
        match extension.key_bytes() {
            b"path" => pending.name = Some(extension.value_bytes().to_vec()),
            b"size" => {
                let size = extension
                    .value()
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| ReleaseError::BadArchive("a malformed PAX size".into()))?;
                pending.pax_size = Some(size);
            }
            _ => {}
        }
    }
    Ok(())
}
