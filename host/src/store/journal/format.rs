//! The journal's file format (see the module docs' **Format**): frames
//! written and read back, and the files' names.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

pub(super) const FILE_PREFIX: &str = "karta-journal-";
pub(super) const FILE_SUFFIX: &str = ".log";
pub(super) const INSERT: u8 = 1;
pub(super) const REMOVE: u8 = 2;
/// Frame header: payload length and checksum.
pub(super) const HEADER: usize = 8;

pub(super) fn encode_op(
    frame: &mut Vec<u8>,
    kind: u8,
    tree: &[u8],
    key: &[u8],
    value: Option<&[u8]>,
) {
    frame.push(kind);
    let tree_len = u16::try_from(tree.len()).unwrap_or(u16::MAX);
    frame.extend_from_slice(&tree_len.to_le_bytes());
    frame.extend_from_slice(&tree[..usize::from(tree_len)]);
    for bytes in std::iter::once(key).chain(value) {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(bytes);
    }
}

/// The journal files in `dir`, oldest first.
pub(super) fn journal_files(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(generation) = name
            .to_str()
            .and_then(|n| n.strip_prefix(FILE_PREFIX))
            .and_then(|n| n.strip_suffix(FILE_SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        files.push((generation, entry.path()));
    }
    files.sort();
    Ok(files)
}

pub(super) fn create_file(dir: &Path, generation: u64) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(dir.join(format!("{FILE_PREFIX}{generation:020}{FILE_SUFFIX}")))
}

/// Applies the frames of one journal file to `db`; returns how many
/// writes (frames) it applied and whether the file ends in a torn frame.
pub(super) fn replay(
    db: &sled::Db,
    mut bytes: &[u8],
    trees: &mut HashMap<Vec<u8>, sled::Tree>,
) -> Result<(u64, bool), sled::Error> {
    let mut writes = 0;
    while !bytes.is_empty() {
        let Some(payload) = frame(&mut bytes) else {
            return Ok((writes, true));
        };
        let Some(ops) = decode_ops(payload) else {
            return Ok((writes, true));
        };
        for (kind, tree, key, value) in ops {
            let tree = match trees.get(tree) {
                Some(tree) => tree,
                None => trees.entry(tree.to_vec()).or_insert(db.open_tree(tree)?),
            };
            match (kind, value) {
                (INSERT, Some(value)) => {
                    tree.insert(key, value)?;
                }
                _ => {
                    tree.remove(key)?;
                }
            }
        }
        writes += 1;
    }
    Ok((writes, false))
}

/// The next frame's payload, if it is whole and its checksum holds.
pub(super) fn frame<'b>(bytes: &mut &'b [u8]) -> Option<&'b [u8]> {
    let header = bytes.get(..HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    let payload = bytes.get(HEADER..HEADER.checked_add(len)?)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    *bytes = &bytes[HEADER + len..];
    Some(payload)
}

pub(super) type Op<'b> = (u8, &'b [u8], &'b [u8], Option<&'b [u8]>);

/// A payload's operations (`None`: it does not parse).
pub(super) fn decode_ops(mut payload: &[u8]) -> Option<Vec<Op<'_>>> {
    fn take<'b>(bytes: &mut &'b [u8], n: usize) -> Option<&'b [u8]> {
        let (head, rest) = (bytes.get(..n)?, bytes.get(n..)?);
        *bytes = rest;
        Some(head)
    }
    fn field<'b>(bytes: &mut &'b [u8]) -> Option<&'b [u8]> {
        let len = u32::from_le_bytes(take(bytes, 4)?.try_into().ok()?) as usize;
        take(bytes, len)
    }
    let mut ops = Vec::new();
    while !payload.is_empty() {
        let kind = take(&mut payload, 1)?[0];
        let tree_len = u16::from_le_bytes(take(&mut payload, 2)?.try_into().ok()?);
        let tree = take(&mut payload, usize::from(tree_len))?;
        let key = field(&mut payload)?;
        let value = match kind {
            INSERT => Some(field(&mut payload)?),
            REMOVE => None,
            _ => return None,
        };
        ops.push((kind, tree, key, value));
    }
    Some(ops)
}
