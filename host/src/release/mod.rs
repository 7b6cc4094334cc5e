//! Published releases of projects: immutable versions of an app, and the
//! one pointer that says which is served.
//!
//! A publish uploads the app folder as a tar.gz ([`pack_dir`] makes one).
//! [`Releases::publish`] unpacks it as hostile input ([`unpack`]),
//! validates it as [`crate::app::load`] does at start-up, compiles every
//! plugin into the runtime's artifact cache (so activating or serving it
//! later never compiles), and records it as the project's next version
//! (v1, v2, …). Publishing never changes what is served:
//! [`Releases::activate`] flips the pointer, [`Releases::rollback`] flips
//! it back, and both are one sled transaction with their audit entry.
//!
//! ## Durable state
//!
//! | tree | key | value |
//! | --- | --- | --- |
//! | `releases` | project id, `0x00`, version (u32 BE) | [`ReleaseInfo`] as JSON |
//! | `release_active` | project id | the active version (u32 BE) |
//! | `release_audit` | project id, `0x00`, counter (u64 BE) | [`AuditEntry`] as JSON |
//!
//! Big-endian numbers make a prefix scan list a project's versions (and
//! its audit log) in order; a project id never contains `0x00`.
//!
//! | file | what |
//! | --- | --- |
//! | `<data_dir>/releases/blobs/<sha256>.tar.gz` | the archive as uploaded, named by its SHA-256 |
//! | `<data_dir>/releases/trees/<sha256>/` | the unpacked app: files 0444 (0555 if executable), directories 0555 |
//! | `<data_dir>/releases/staging/<uuid>/` | a publish in progress: removed when it fails, swept on open |
//!
//! Blobs and trees are content-addressed and immutable: publishing the same
//! bytes twice gives two versions that share one tree. They reach their
//! final name by a rename, after their contents are synced, and before the
//! transaction that refers to them commits — so a crash at any point
//! leaves either no new version, or a version whose files are all there.
//! A crash may leave a tree or blob no version refers to (harmless: the
//! next publish of those bytes reuses it).
//!
//! Every mutating call flushes the database before it answers.

mod activation;
mod archive;
mod members;
mod pack;
mod publish;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub use activation::{Activation, AuditEntry};
pub use archive::{MAX_PAX_BYTES, UnpackStats, UploadLimits, unpack};
pub use pack::{git_commit, pack_dir};

use crate::app::AppError;
use crate::store::{Store, StoreError};

/// One published version of a project's app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReleaseInfo {
    /// The project it belongs to.
    pub project_id: String,
    /// Its version: 1, 2, … in publishing order.
    pub version: u32,
    /// SHA-256 of the archive as uploaded (hex); names its blob and tree.
    pub digest: String,
    /// The archive's size, compressed.
    pub size_bytes: u64,
    /// Regular files in the app.
    pub files: u32,
    /// When it was published (RFC 3339).
    pub created_at: String,
    /// Who published it.
    pub publisher: String,
    /// The git commit it was built from, if the publisher said
    /// (`-dirty` when the checkout had changes).
    pub git_commit: Option<String>,
    /// The app's name: `karta.toml` `name`, else the project's (the part
    /// of its id after the last `/`). An archive does not carry the name of
    /// the folder it was packed from, and [`Releases::app_dir`] is named by
    /// digest, so code serving a release should name the app by this.
    pub app_name: String,
    /// The harness it asks for, as `karta.toml` spells it (`builtin`,
    /// `claude-code`, `opencode`).
    pub harness: String,
    /// Its plugins' names.
    pub plugins: Vec<String>,
}

/// What a publish is given.
#[derive(Debug, Clone)]
pub struct PublishRequest<'a> {
    /// The project (its id; never contains `0x00`).
    pub project_id: &'a str,
    /// The app folder as a tar.gz.
    pub archive: &'a [u8],
    /// Who publishes (recorded, and in the audit log).
    pub publisher: &'a str,
    /// The commit the archive was built from ([`git_commit`]).
    pub git_commit: Option<String>,
    /// The name of the folder it was packed from: the app's name when its
    /// `karta.toml` gives none (an archive does not carry it).
    pub app_name: Option<String>,
}

/// Why a release call failed; [`ReleaseError::status`] and
/// [`ReleaseError::code`] give its HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The upload is not an acceptable tar.gz; the reason names the member.
    #[error("invalid archive: {0}")]
    BadArchive(String),
    /// The upload is over a limit of [`UploadLimits`].
    #[error("archive too large: {0}")]
    TooLarge(String),
    /// The archive unpacked, but is not an app this host serves.
    #[error("invalid app: {0}")]
    InvalidApp(AppError),
    /// A plugin of the app does not load.
    #[error("plugin `{name}` does not load: {message}")]
    Plugin {
        /// The plugin's name.
        name: String,
        /// Why.
        message: String,
    },
    /// No such project release, or nothing to roll back to.
    #[error("{0}")]
    NotFound(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The file system failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<AppError> for ReleaseError {
    fn from(error: AppError) -> Self {
        Self::InvalidApp(error)
    }
}

impl From<sled::Error> for ReleaseError {
    fn from(error: sled::Error) -> Self {
        Self::Store(StoreError::Sled(error))
    }
}

impl ReleaseError {
    /// The error with its "not found" message prefixed by the project's
    /// name (`acme/shop`): the release store knows projects by id only,
    /// which says nothing to the person who typed the name.
    pub fn in_project(self, name: &str) -> Self {
        match self {
            Self::NotFound(message) => Self::NotFound(format!("{name}: {message}")),
            other => other,
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadArchive(_) | Self::InvalidApp(_) | Self::Plugin { .. } => 400,
            Self::TooLarge(_) => 413,
            Self::NotFound(_) => 404,
            Self::Store(_) => 503,
            Self::Io(_) => 500,
        }
    }

    /// The machine-readable error code of the answer.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadArchive(_) => "invalid_archive",
            Self::TooLarge(_) => "archive_too_large",
            Self::InvalidApp(_) => "invalid_app",
            Self::Plugin { .. } => "invalid_plugin",
            Self::NotFound(_) => "not_found",
            Self::Store(_) => "storage_unavailable",
            Self::Io(_) => "internal",
        }
    }
}

/// The directories under `<data_dir>/releases/`.
#[derive(Debug)]
struct Dirs {
    blobs: PathBuf,
    trees: PathBuf,
    staging: PathBuf,
}

/// The releases of every project of one data dir. Cheap to clone; clones
/// share one lock, so versions and audit counters are handed out one
/// at a time.
#[derive(Clone)]
pub struct Releases {
    store: Store,
    releases: sled::Tree,
    active: sled::Tree,
    audit: sled::Tree,
    dirs: Arc<Dirs>,
    limits: UploadLimits,
    /// Held while a version or an audit counter is chosen and written
    /// (never across an `.await`). The transactions also check that the
    /// key they write is free, so two `Releases` of one store are still
    /// correct, only retried.
    commit: Arc<Mutex<()>>,
    /// The webhook outbox: a flip's `release.activated` deliveries are
    /// written in the flip's transaction.
    outbox: sled::Tree,
    /// Who builds those deliveries (set once, by the host).
    notices: Arc<std::sync::OnceLock<Arc<dyn FlipNotices>>>,
}

/// Builds the webhook deliveries of an activation or a rollback, before
/// its transaction (which writes them), and hears that it committed.
pub trait FlipNotices: Send + Sync {
    /// The deliveries telling `project_id`'s org of `flip` (its `from` is
    /// the version active when the flip was decided).
    fn prepare(&self, project_id: &str, flip: &AuditEntry) -> crate::webhooks::Prepared;
    /// A flip whose deliveries were not empty committed: send them now.
    fn committed(&self);
}

/// The key of `version` of `project` in `releases` (and the audit log's
/// with a u64).
fn key(project_id: &str, tail: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(project_id.len() + 1 + tail.len());
    key.extend_from_slice(project_id.as_bytes());
    key.push(0);
    key.extend_from_slice(tail);
    key
}

/// The prefix of every row of `project_id`.
fn prefix(project_id: &str) -> Vec<u8> {
    key(project_id, &[])
}

fn release_key(project_id: &str, version: u32) -> Vec<u8> {
    key(project_id, &version.to_be_bytes())
}

fn decode_u32(bytes: &[u8]) -> Option<u32> {
    bytes.try_into().ok().map(u32::from_be_bytes)
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ReleaseError> {
    serde_json::from_slice(bytes).map_err(|e| ReleaseError::Store(StoreError::Codec(e)))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ReleaseError> {
    serde_json::to_vec(value).map_err(|e| ReleaseError::Store(StoreError::Codec(e)))
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// A project id is a key prefix: it must be non-empty and free of the
/// `0x00` separator.
fn check_project(project_id: &str) -> Result<(), ReleaseError> {
    if project_id.is_empty() || project_id.contains('\0') {
        return Err(ReleaseError::NotFound(format!("no project {project_id:?}")));
    }
    Ok(())
}

impl Releases {
    /// Opens the releases of `store`, with files under
    /// `<data_dir>/releases/`; removes what a publish interrupted by a
    /// crash left in `staging/`.
    pub fn open(store: Store, data_dir: &Path) -> Result<Self, ReleaseError> {
        let base = data_dir.join("releases");
        let dirs = Dirs {
            blobs: base.join("blobs"),
            trees: base.join("trees"),
            staging: base.join("staging"),
        };
        for dir in [&dirs.blobs, &dirs.trees, &dirs.staging] {
            std::fs::create_dir_all(dir)?;
        }
        // sled's lock keeps a second process off this data dir, so what
        // is in staging now belongs to no running publish.
        for entry in std::fs::read_dir(&dirs.staging)? {
            publish::remove_tree(&entry?.path())?;
        }
        Ok(Self {
            releases: store.tree("releases")?,
            active: store.tree("release_active")?,
            audit: store.tree("release_audit")?,
            outbox: store.tree(crate::webhooks::OUTBOX_TREE)?,
            store,
            dirs: Arc::new(dirs),
            limits: UploadLimits::default(),
            commit: Arc::default(),
            notices: Arc::default(),
        })
    }

    /// Has `notices` build the webhook deliveries of every activation and
    /// rollback from now on (once; a second call is ignored).
    pub fn set_notices(&self, notices: Arc<dyn FlipNotices>) {
        let _ = self.notices.set(notices);
    }

    /// The same releases, accepting uploads within `limits` instead of
    /// [`UploadLimits::default`].
    pub fn with_limits(mut self, limits: UploadLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The limits uploads are held to.
    pub fn limits(&self) -> &UploadLimits {
        &self.limits
    }

    /// Every release of `project_id`, by version.
    pub fn list(&self, project_id: &str) -> Result<Vec<ReleaseInfo>, ReleaseError> {
        check_project(project_id)?;
        self.releases
            .scan_prefix(prefix(project_id))
            .values()
            .map(|value| decode(&value?))
            .collect()
    }

    /// Release `version` of `project_id`, if there is one.
    pub fn get(&self, project_id: &str, version: u32) -> Result<Option<ReleaseInfo>, ReleaseError> {
        check_project(project_id)?;
        match self.releases.get(release_key(project_id, version))? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The unpacked, read-only app folder of a release (shared by every
    /// release of the same archive).
    pub fn app_dir(&self, info: &ReleaseInfo) -> PathBuf {
        self.dirs.trees.join(&info.digest)
    }

    /// The archive of a release, as uploaded.
    pub fn archive_path(&self, info: &ReleaseInfo) -> PathBuf {
        self.dirs.blobs.join(format!("{}.tar.gz", info.digest))
    }

    /// The release `project_id` serves; `None` before its first
    /// activation.
    pub fn active(&self, project_id: &str) -> Result<Option<ReleaseInfo>, ReleaseError> {
        check_project(project_id)?;
        let Some(version) = self.active_version(project_id)? else {
            return Ok(None);
        };
        self.get(project_id, version)
    }

    fn active_version(&self, project_id: &str) -> Result<Option<u32>, ReleaseError> {
        Ok(self
            .active
            .get(project_id.as_bytes())?
            .and_then(|bytes| decode_u32(&bytes)))
    }

    /// Makes every write so far durable (blocking: sled's `flush`).
    fn flush_blocking(&self) -> Result<(), ReleaseError> {
        self.store.flush_blocking()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::HarnessKind;

    #[test]
    fn harness_names_are_the_serde_names() {
        for kind in [
            HarnessKind::Builtin,
            HarnessKind::ClaudeCode,
            HarnessKind::Opencode,
        ] {
            assert_eq!(
                serde_json::to_value(kind).expect("serializes"),
                serde_json::Value::String(kind.as_str().to_owned())
            );
        }
    }

    #[test]
    fn errors_answer_with_their_status_and_code() {
        let cases = [
            (ReleaseError::BadArchive("x".into()), 400, "invalid_archive"),
            (ReleaseError::TooLarge("x".into()), 413, "archive_too_large"),
            (ReleaseError::NotFound("x".into()), 404, "not_found"),
            (
                ReleaseError::Plugin {
                    name: "p".into(),
                    message: "m".into(),
                },
                400,
                "invalid_plugin",
            ),
            (
                ReleaseError::Io(std::io::Error::other("x")),
                500,
                "internal",
            ),
        ];
        for (error, status, code) in cases {
            assert_eq!((error.status(), error.code()), (status, code), "{error}");
        }
    }

    #[test]
    fn keys_sort_by_version_and_never_mix_projects() {
        assert!(release_key("a", 2) < release_key("a", 10));
        assert!(release_key("a", 255) < release_key("a", 256));
        // "a/b" is not a row of "a": the separator ends the id.
        assert!(!release_key("a/b", 1).starts_with(&prefix("a")));
        assert!(check_project("").is_err() && check_project("a\0b").is_err());
    }
}
