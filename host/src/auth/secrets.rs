//! The HS256 keys session tokens are signed with, kept in
//! `<data_dir>/secrets/token-signing.json`.
//!
//! The directory is made with mode 0700 and the file is always written
//! with mode 0600 (a new file, then renamed over the old one, so a crash
//! never leaves half a key file): whoever reads it can mint tokens for
//! every project. A file or directory found with wider permissions is
//! narrowed, with a warning.
//!
//! The file holds the current key and at most [`MAX_PREVIOUS`] earlier
//! ones. Rotation makes a new current key and keeps the old current one,
//! so tokens minted before a rotation still verify until they expire
//! (their header's `kid` names the key).
//!
//! ```json
//! {"version": 1,
//!  "current": {"kid": "…", "created_at": "RFC 3339", "secret": "<base64 of 32 bytes>"},
//!  "previous": [{"kid": "…", "created_at": "…", "secret": "…"}]}
//! ```

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::rand::SystemRandom;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde::{Deserialize, Deserializer, Serialize};

use super::{AuthError, fill_random, now_rfc3339};

/// How many keys before the current one stay valid for verification. Two
/// rotations within one token lifetime still verify every live token.
pub(super) const MAX_PREVIOUS: usize = 2;

/// Bytes of a signing key (HS256 wants at least the hash's 32).
const KEY_BYTES: usize = 32;

/// The file's format version.
const VERSION: u32 = 1;

/// One HS256 key.
pub(super) struct SigningKey {
    /// The key id, written as the JWT header's `kid`.
    pub(super) kid: String,
    /// The key itself; never leaves the auth module.
    pub(super) secret: SecretSlice<u8>,
    /// When it was made (RFC 3339).
    created_at: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    fn generate(rng: &SystemRandom) -> Result<Self, AuthError> {
        let mut bytes = vec![0u8; KEY_BYTES];
        fill_random(rng, &mut bytes)?;
        Ok(SigningKey {
            kid: uuid::Uuid::new_v4().simple().to_string(),
            secret: SecretSlice::from(bytes),
            created_at: now_rfc3339(),
        })
    }
}

/// The current key and those kept from before rotations.
#[derive(Debug)]
pub(super) struct SigningKeys {
    /// New tokens are signed with this one.
    pub(super) current: SigningKey,
    /// Newest first; at most [`MAX_PREVIOUS`].
    previous: Vec<SigningKey>,
}

/// The file's shape. Secrets pass through it as base64 text.
#[derive(Deserialize)]
struct KeyFile {
    version: u32,
    current: KeyEntry,
    #[serde(default)]
    previous: Vec<KeyEntry>,
}

#[derive(Deserialize)]
struct KeyEntry {
    kid: String,
    created_at: String,
    #[serde(deserialize_with = "secret_string")]
    secret: SecretString,
}

#[derive(Serialize)]
struct KeyFileOut<'a> {
    version: u32,
    current: KeyEntryOut<'a>,
    previous: Vec<KeyEntryOut<'a>>,
}

#[derive(Serialize)]
struct KeyEntryOut<'a> {
    kid: &'a str,
    created_at: &'a str,
    secret: String,
}

/// Moves the secret's text straight into a `SecretString`, which wipes it
/// on drop.
fn secret_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SecretString, D::Error> {
    String::deserialize(deserializer).map(SecretString::from)
}

fn invalid_data(message: String) -> AuthError {
    AuthError::Io(io::Error::new(io::ErrorKind::InvalidData, message))
}

impl SigningKeys {
    /// The path of the key file under a data dir.
    pub(super) fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("secrets").join("token-signing.json")
    }

    /// Reads the key file under `data_dir`, or makes a first key and
    /// writes it. A file that cannot be parsed is an error, never replaced:
    /// replacing it would silently invalidate every live token.
    pub(super) fn load_or_create(data_dir: &Path, rng: &SystemRandom) -> Result<Self, AuthError> {
        secrets_dir(data_dir)?;
        let path = Self::path(data_dir);
        match fs::metadata(&path) {
            Ok(_) => {
                narrow_permissions(&path, 0o600)?;
                Self::parse(&SecretSlice::from(fs::read(&path)?), &path)
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let keys = SigningKeys {
                    current: SigningKey::generate(rng)?,
                    previous: Vec::new(),
                };
                keys.save(&path)?;
                Ok(keys)
            }
            Err(error) => Err(error.into()),
        }
    }

    fn parse(bytes: &SecretSlice<u8>, path: &Path) -> Result<Self, AuthError> {
        let file: KeyFile = serde_json::from_slice(bytes.expose_secret())
            .map_err(|e| invalid_data(format!("{}: {e}", path.display())))?;
        if file.version != VERSION {
            return Err(invalid_data(format!(
                "{}: version {} (this build reads {VERSION})",
                path.display(),
                file.version
            )));
        }
        let decode = |entry: KeyEntry| -> Result<SigningKey, AuthError> {
            let bytes = STANDARD
                .decode(entry.secret.expose_secret())
                .map_err(|e| invalid_data(format!("{}: key {}: {e}", path.display(), entry.kid)))?;
            if bytes.len() < KEY_BYTES || entry.kid.is_empty() {
                return Err(invalid_data(format!(
                    "{}: key {:?} is malformed",
                    path.display(),
                    entry.kid
                )));
            }
            Ok(SigningKey {
                kid: entry.kid,
                secret: SecretSlice::from(bytes),
                created_at: entry.created_at,
            })
        };
        let current = decode(file.current)?;
        let previous = file
            .previous
            .into_iter()
            .take(MAX_PREVIOUS)
            .map(decode)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SigningKeys { current, previous })
    }

    /// The key named `kid`, current or previous.
    pub(super) fn get(&self, kid: &str) -> Option<&SigningKey> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|key| key.kid == kid)
    }

    /// These keys after one rotation: a new current key, the old current
    /// one first among the previous, the oldest dropped past
    /// [`MAX_PREVIOUS`].
    pub(super) fn rotated(&self, rng: &SystemRandom) -> Result<Self, AuthError> {
        let copy = |key: &SigningKey| SigningKey {
            kid: key.kid.clone(),
            secret: key.secret.clone(),
            created_at: key.created_at.clone(),
        };
        let previous = std::iter::once(&self.current)
            .chain(&self.previous)
            .take(MAX_PREVIOUS)
            .map(copy)
            .collect();
        Ok(SigningKeys {
            current: SigningKey::generate(rng)?,
            previous,
        })
    }

    /// Writes the keys to `path`: a new 0600 file beside it, synced, then
    /// renamed over it, then the directory synced.
    pub(super) fn save(&self, path: &Path) -> Result<(), AuthError> {
        fn entry(key: &SigningKey) -> KeyEntryOut<'_> {
            KeyEntryOut {
                kid: &key.kid,
                created_at: &key.created_at,
                secret: STANDARD.encode(key.secret.expose_secret()),
            }
        }
        let out = KeyFileOut {
            version: VERSION,
            current: entry(&self.current),
            previous: self.previous.iter().map(entry).collect(),
        };
        let json = SecretSlice::from(serde_json::to_vec_pretty(&out)?);
        drop(out);
        write_private_file(path, json.expose_secret())?;
        Ok(())
    }
}

// The helpers below are shared with `crate::byok` (its master key file).

/// `<data_dir>/secrets`, made with mode 0700 (and `data_dir` with it) if
/// missing, or narrowed to 0700 if found wider.
pub(crate) fn secrets_dir(data_dir: &Path) -> io::Result<PathBuf> {
    fs::create_dir_all(data_dir)?;
    let dir = data_dir.join("secrets");
    DirBuilder::new().mode(0o700).recursive(true).create(&dir)?;
    narrow_permissions(&dir, 0o700)?;
    Ok(dir)
}

/// Writes `bytes` to `path` with mode 0600: a new file `<path>.tmp`
/// beside it, synced, renamed over `path`, then the directory synced — a
/// crash leaves the old file or the new one, never half of one.
pub(crate) fn write_private_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    match fs::remove_file(&tmp) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Takes away any permission beyond `mode` (the umask could have left a
/// directory group-readable; someone could have chmodded the file).
pub(crate) fn narrow_permissions(path: &Path, mode: u32) -> io::Result<()> {
    let current = fs::metadata(path)?.permissions().mode() & 0o777;
    if current & !mode != 0 {
        tracing::warn!(
            path = %path.display(),
            "permissions {current:o} were wider than {mode:o}; narrowed"
        );
        fs::set_permissions(path, fs::Permissions::from_mode(current & mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_private_and_survives_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rng = SystemRandom::new();
        let keys = SigningKeys::load_or_create(dir.path(), &rng).expect("create");
        let path = SigningKeys::path(dir.path());
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("dir")), 0o700);

        let again = SigningKeys::load_or_create(dir.path(), &rng).expect("reload");
        assert_eq!(again.current.kid, keys.current.kid);
        assert_eq!(
            again.current.secret.expose_secret(),
            keys.current.secret.expose_secret()
        );
        assert_eq!(keys.current.secret.expose_secret().len(), KEY_BYTES);
    }

    #[test]
    fn rotation_keeps_two_previous_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rng = SystemRandom::new();
        let first = SigningKeys::load_or_create(dir.path(), &rng).expect("create");
        let second = first.rotated(&rng).expect("rotate");
        let third = second.rotated(&rng).expect("rotate");
        let fourth = third.rotated(&rng).expect("rotate");
        assert!(third.get(&first.current.kid).is_some());
        assert!(fourth.get(&second.current.kid).is_some());
        assert!(fourth.get(&third.current.kid).is_some());
        assert!(fourth.get(&first.current.kid).is_none(), "only 2 kept");
        assert_ne!(fourth.current.kid, third.current.kid);
    }

    #[test]
    fn a_loose_file_is_narrowed_and_a_corrupt_one_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rng = SystemRandom::new();
        SigningKeys::load_or_create(dir.path(), &rng).expect("create");
        let path = SigningKeys::path(dir.path());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        SigningKeys::load_or_create(dir.path(), &rng).expect("reload");
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        fs::write(&path, "{not json").expect("write");
        assert!(matches!(
            SigningKeys::load_or_create(dir.path(), &rng),
            Err(AuthError::Io(_))
        ));
        assert_eq!(fs::read_to_string(&path).expect("read"), "{not json");
    }

    #[test]
    fn debug_shows_no_secret() {
        let rng = SystemRandom::new();
        let key = SigningKey::generate(&rng).expect("key");
        let shown = format!("{key:?}");
        let b64 = STANDARD.encode(key.secret.expose_secret());
        assert!(!shown.contains(&b64) && shown.contains(&key.kid), "{shown}");
    }
}
