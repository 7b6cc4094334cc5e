//! The master key every BYOK key is sealed under.
//!
//! It comes from `KARTA_MASTER_KEY` (64 hex characters, or the standard
//! base64 of 32 bytes, e.g. `openssl rand -hex 32`) when that is set, and
//! otherwise from `<data_dir>/secrets/master.key`, made on first start
//! with 32 bytes from the system random source:
//!
//! | path | mode | content |
//! | --- | --- | --- |
//! | `<data_dir>/secrets/` | 0700 | the host's secret files (see `auth/secrets.rs`) |
//! | `<data_dir>/secrets/master.key` | 0600 | 64 lowercase hex characters and a newline |
//!
//! The file holds the same text the variable takes, so an operator can
//! move the key into a secret manager by copying it. Losing it loses every
//! sealed key (orgs set theirs again); a copy of it and of the database
//! together gives every key away, so back them up apart.
//!
//! [`MasterKey::id`] names a master key without revealing it; each sealed
//! key records the id it was sealed under, so a host started with another
//! master key says so instead of failing to decrypt.

use std::fmt;
use std::fs;
use std::io;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretBox};
use sha2::{Digest, Sha256};

use super::ByokError;
use crate::auth::secrets::{narrow_permissions, secrets_dir, write_private_file};

/// The environment variable that overrides the key file.
pub const MASTER_KEY_ENV: &str = "KARTA_MASTER_KEY";

/// The key file's name under `<data_dir>/secrets/`.
const FILE_NAME: &str = "master.key";

/// Bytes of a master key (AES-256).
const KEY_BYTES: usize = 32;

/// The 32-byte key BYOK keys are sealed under. Wiped from memory when
/// dropped; `Debug` shows only its [`id`](MasterKey::id).
pub struct MasterKey {
    bytes: SecretBox<[u8; KEY_BYTES]>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// `KARTA_MASTER_KEY` (64 hex characters or base64 of 32 bytes) if
    /// set, else `<data_dir>/secrets/master.key` (created 0600 in a 0700
    /// dir on first start with 32 random bytes). A malformed variable is
    /// an error naming it, never echoing its value; so is one set but
    /// empty (likely a template whose secret did not expand — falling back
    /// to the file would seal keys under a key nobody meant).
    pub fn load(data_dir: &Path) -> Result<Self, ByokError> {
        match std::env::var_os(MASTER_KEY_ENV) {
            None => Self::load_from(None, data_dir),
            Some(value) => {
                let value = Zeroizing::new(value.into_string().map_err(|_| malformed_env())?);
                Self::load_from(Some(value.as_str()), data_dir)
            }
        }
    }

    /// [`load`](Self::load) with the variable's value given, so tests need
    /// not change the process's environment.
    pub(crate) fn load_from(env: Option<&str>, data_dir: &Path) -> Result<Self, ByokError> {
        if let Some(value) = env {
            return parse(value).ok_or_else(malformed_env);
        }
        let path = secrets_dir(data_dir)?.join(FILE_NAME);
        match read_file(&path)? {
            Some(key) => Ok(key),
            None => create_file(&path),
        }
    }

    /// A master key of these bytes.
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        MasterKey {
            bytes: SecretBox::new(Box::new(bytes)),
        }
    }

    /// `mk_` and 16 hex digits of a SHA-256 of the key (domain-separated,
    /// so it is no hash anything else computes): names the key without
    /// revealing it.
    pub fn id(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(b"karta byok master key id\0");
        hash.update(self.bytes.expose_secret());
        format!("mk_{}", hex::encode(&hash.finalize()[..8]))
    }

    /// The key's bytes, for deriving the sealing key.
    pub(super) fn expose(&self) -> &[u8; KEY_BYTES] {
        self.bytes.expose_secret()
    }
}

/// The error for a malformed `KARTA_MASTER_KEY`: it names the variable
/// and the expected forms, and says nothing about the value.
fn malformed_env() -> ByokError {
    ByokError::MasterKey(format!(
        "{MASTER_KEY_ENV} is malformed: expected 64 hex characters or the base64 of 32 bytes"
    ))
}

/// 64 hex characters, or standard base64 of 32 bytes; whitespace around
/// it is ignored (a trailing newline from a file). `None` otherwise —
/// decoding errors are dropped, since they quote the offending character.
fn parse(text: &str) -> Option<MasterKey> {
    let text = text.trim();
    let bytes = Zeroizing::new(if text.len() == 2 * KEY_BYTES {
        hex::decode(text).ok()?
    } else {
        STANDARD.decode(text).ok()?
    });
    let array: [u8; KEY_BYTES] = bytes.as_slice().try_into().ok()?;
    Some(MasterKey::from_bytes(array))
}

/// The key in `path`, `None` when there is no file. A file that does not
/// parse is an error, never replaced: replacing it would lose every
/// sealed key.
fn read_file(path: &Path) -> Result<Option<MasterKey>, ByokError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => Zeroizing::new(bytes),
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    narrow_permissions(path, 0o600)?;
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(parse)
        .map(Some)
        .ok_or_else(|| {
            ByokError::MasterKey(format!(
                "{} is malformed: expected 64 hex characters",
                path.display()
            ))
        })
}

/// Makes the key file with a new random key — or, if another process made
/// it meanwhile, reads theirs. The file is written whole under a unique
/// name, then hard-linked to `path`, which fails if `path` exists: two
/// hosts starting at once never end up with different keys.
fn create_file(path: &Path) -> Result<MasterKey, ByokError> {
    let mut bytes = Zeroizing::new([0u8; KEY_BYTES]);
    SystemRandom::new()
        .fill(&mut bytes[..])
        .map_err(|_| io::Error::other("the system random source failed"))?;
    let text = Zeroizing::new(format!("{}\n", hex::encode(bytes.as_ref())));
    let unique = path.with_file_name(format!("{FILE_NAME}.{}.new", uuid::Uuid::new_v4().simple()));
    write_private_file(&unique, text.as_bytes())?;
    let linked = fs::hard_link(&unique, path);
    fs::remove_file(&unique)?;
    match linked {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                fs::File::open(dir)?.sync_all()?;
            }
            tracing::info!(path = %path.display(), "made a new BYOK master key");
            Ok(MasterKey::from_bytes(*bytes))
        }
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => read_file(path)?
            .ok_or_else(|| ByokError::MasterKey(format!("{} vanished", path.display()))),
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn the_key_file_is_made_private_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = MasterKey::load_from(None, dir.path()).expect("create");
        let path = dir.path().join("secrets").join(FILE_NAME);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("dir")), 0o700);
        let text = fs::read_to_string(&path).expect("read");
        assert_eq!(text.trim(), hex::encode(first.expose()));
        // Nothing left beside it but the key file.
        let names: Vec<_> = fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [FILE_NAME]);

        let again = MasterKey::load_from(None, dir.path()).expect("reload");
        assert_eq!(again.id(), first.id());
        assert_eq!(again.expose(), first.expose());

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        MasterKey::load_from(None, dir.path()).expect("reload");
        assert_eq!(mode(&path), 0o600, "a loose file is narrowed");
    }

    #[test]
    fn a_corrupt_key_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        MasterKey::load_from(None, dir.path()).expect("create");
        let path = dir.path().join("secrets").join(FILE_NAME);
        fs::write(&path, "0123abcd-not-a-key").expect("write");
        let error = MasterKey::load_from(None, dir.path()).expect_err("corrupt");
        let message = error.to_string();
        assert!(matches!(error, ByokError::MasterKey(_)));
        assert!(message.contains("master.key is malformed"), "{message}");
        assert!(!message.contains("0123abcd"), "{message}");
        assert_eq!(
            fs::read_to_string(&path).expect("read"),
            "0123abcd-not-a-key"
        );
    }

    #[test]
    fn the_variable_overrides_the_file_in_hex_or_base64() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file_key = MasterKey::load_from(None, dir.path()).expect("file");
        let bytes = [7u8; KEY_BYTES];
        let expected = MasterKey::from_bytes(bytes).id();
        for value in [
            hex::encode(bytes),
            hex::encode_upper(bytes),
            STANDARD.encode(bytes),
            format!("  {}\n", hex::encode(bytes)),
        ] {
            let key = MasterKey::load_from(Some(&value), dir.path()).expect("env");
            assert_eq!(key.id(), expected, "{value:?}");
            assert_ne!(key.id(), file_key.id());
        }
        // The variable does not need (or touch) a data dir.
        let empty = tempfile::tempdir().expect("tempdir");
        MasterKey::load_from(Some(&hex::encode(bytes)), empty.path()).expect("env");
        assert!(!empty.path().join("secrets").exists());
    }

    #[test]
    fn a_malformed_variable_is_named_never_echoed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secretish = "S3CRETVALUE";
        for value in [
            format!("{secretish}-not-hex"),
            format!("{secretish}{}", "a".repeat(53)), // 64 chars, not hex
            hex::encode([1u8; 31]),                   // too short
            STANDARD.encode([1u8; 33]),               // too long
            format!("{secretish}!@#$"),               // base64 decode error quotes a byte
            String::new(),
        ] {
            let error = MasterKey::load_from(Some(&value), dir.path()).expect_err(&value);
            let message = error.to_string();
            assert!(matches!(error, ByokError::MasterKey(_)), "{message}");
            assert!(message.contains(MASTER_KEY_ENV), "{message}");
            assert!(!message.contains(secretish), "{message}");
            assert!(!format!("{error:?}").contains(secretish));
            if value.len() > 8 {
                assert!(!message.contains(&value[..8]), "{message}");
            }
        }
    }

    #[test]
    fn ids_differ_and_debug_shows_only_the_id() {
        let a = MasterKey::from_bytes([1; KEY_BYTES]);
        let b = MasterKey::from_bytes([2; KEY_BYTES]);
        assert_ne!(a.id(), b.id());
        assert!(a.id().starts_with("mk_") && a.id().len() == 3 + 16);
        let shown = format!("{a:?}");
        assert!(shown.contains(&a.id()), "{shown}");
        assert!(!shown.contains(&hex::encode([1u8; KEY_BYTES])), "{shown}");
        assert!(!shown.contains("1, 1, 1"), "{shown}");
    }
}
