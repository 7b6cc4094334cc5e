//! Publishing: staging, validating, installing content-addressed files,
//! and giving the release its version.
//!
//! The order is what makes a crash harmless: everything is built in
//! `staging/<uuid>/`, synced, and renamed to its content-addressed name
//! (`trees/<digest>/`, `blobs/<digest>.tar.gz`) *before* the sled
//! transaction that records the version commits. A crash before the
//! commit leaves at most an unreferenced tree or blob (the next publish of
//! the same bytes reuses it) and a staging directory that
//! [`Releases::open`] sweeps.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::PoisonError;

use sha2::{Digest, Sha256};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::activation::{AuditEntry, PUBLISH, RETRIES, audit_key, contended};
use super::{
    Dirs, PublishRequest, ReleaseError, ReleaseInfo, Releases, check_project, encode, now_rfc3339,
    prefix, release_key, unpack,
};
use crate::app::{AppError, AppSpec};
use crate::plugin::PluginRuntime;

impl Releases {
    /// Publishes an app archive as the project's next version.
    ///
    /// Unpacks the archive into staging with [`unpack`], validates it with
    /// [`crate::app::load`] (an error is [`ReleaseError::InvalidApp`],
    /// naming the file relative to the app), and loads every plugin through
    /// `runtime` — which compiles each component into the runtime's
    /// on-disk artifact cache, so activating or serving the release later
    /// never compiles. Then the tree moves to `trees/<digest>/` (read-only),
    /// the archive to `blobs/<digest>.tar.gz`, and one sled transaction
    /// gives the release version = highest + 1 and appends a `publish`
    /// audit entry. Never activates. Publishing identical bytes twice makes
    /// two versions sharing one tree.
    pub async fn publish(
        &self,
        runtime: &PluginRuntime,
        request: PublishRequest<'_>,
    ) -> Result<ReleaseInfo, ReleaseError> {
        check_project(request.project_id)?;
        if request.archive.len() as u64 > self.limits.max_archive_bytes {
            return Err(ReleaseError::TooLarge(format!(
                "the archive is {} bytes; at most {} are accepted",
                request.archive.len(),
                self.limits.max_archive_bytes
            )));
        }
        let digest = hex::encode(Sha256::digest(request.archive));
        let staging = Staging::create(&self.dirs.staging)?;

        let archive = request.archive.to_vec();
        let limits = self.limits.clone();
        let work = staging.path.clone();
        let name = digest.clone();
        let (stats, spec, archive) = blocking(move || {
            // Named like its tree will be, so the app loads here exactly as
            // it will when served (an app without `name` is named after
            // its folder).
            let app = work.join(name);
            std::fs::create_dir(&app)?;
            let stats = unpack(&archive, &app, &limits)?;
            let app = std::fs::canonicalize(&app)?;
            let spec = crate::app::load(&app).map_err(|e| relative_to(e, &app))?;
            Ok((stats, spec, archive))
        })
        .await?;

        for plugin in &spec.plugins {
            runtime
                .load_file(&plugin.path, plugin.grant.clone())
                .await
                .map_err(|e| ReleaseError::Plugin {
                    name: plugin.name.clone(),
                    message: e
                        .to_string()
                        .replace(&format!("{}/", spec.root.display()), ""),
                })?;
        }

        let dirs = self.dirs.clone();
        let work = staging.path.clone();
        let name = digest.clone();
        blocking(move || install(&dirs, &work, &name, &archive)).await?;

        let info = ReleaseInfo {
            project_id: request.project_id.to_owned(),
            version: 0,
            digest: digest.clone(),
            size_bytes: request.archive.len() as u64,
            files: stats.files,
            created_at: now_rfc3339(),
            publisher: request.publisher.to_owned(),
            git_commit: request.git_commit,
            app_name: app_name(
                &spec,
                &digest,
                request.app_name.as_deref(),
                request.project_id,
            ),
            harness: spec.harness.as_str().to_owned(),
            plugins: plugin_names(&spec),
        };
        let info = self.record(info)?;
        self.store.flush().await?;
        // What is left in staging is small (the moved tree is gone), but
        // removing it is still file system work: not on a runtime thread.
        let _ = tokio::task::spawn_blocking(move || drop(staging)).await;
        Ok(info)
    }

    /// Gives `info` the next version and appends its audit entry, in one
    /// transaction.
    fn record(&self, mut info: ReleaseInfo) -> Result<ReleaseInfo, ReleaseError> {
        let project = info.project_id.clone();
        let _commit = self.commit.lock().unwrap_or_else(PoisonError::into_inner);
        for _ in 0..RETRIES {
            info.version = match self.last_version(&project)? {
                None => 1,
                Some(last) => last.checked_add(1).ok_or_else(|| {
                    ReleaseError::Io(std::io::Error::other(format!(
                        "{project} has no version numbers left"
                    )))
                })?,
            };
            let entry = AuditEntry {
                at: info.created_at.clone(),
                actor: info.publisher.clone(),
                action: PUBLISH.to_owned(),
                from: None,
                to: info.version,
            };
            let release = release_key(&project, info.version);
            let audit = audit_key(&project, self.next_audit_counter(&project)?);
            let (release_value, audit_value) = (encode(&info)?, encode(&entry)?);
            let result = (&self.releases, &self.audit).transaction(|(releases, log)| {
                if releases.get(&release)?.is_some() || log.get(&audit)?.is_some() {
                    return Err(ConflictableTransactionError::Abort(()));
                }
                releases.insert(release.as_slice(), release_value.as_slice())?;
                log.insert(audit.as_slice(), audit_value.as_slice())?;
                Ok(())
            });
            match result {
                Ok(()) => return Ok(info),
                Err(TransactionError::Abort(())) => continue,
                Err(TransactionError::Storage(e)) => return Err(e.into()),
            }
        }
        Err(contended())
    }

    /// The highest version of `project_id`.
    fn last_version(&self, project_id: &str) -> Result<Option<u32>, ReleaseError> {
        let last = self
            .releases
            .scan_prefix(prefix(project_id))
            .keys()
            .next_back()
            .transpose()?;
        Ok(last.and_then(|key| {
            let start = key.len().checked_sub(4)?;
            super::decode_u32(&key[start..])
        }))
    }
}

/// The app's `karta.toml` `name`, else the folder's name the publisher
/// gave, else the project's name (what follows the last `/` of its id):
/// an archive does not carry the name of the folder it was packed from,
/// and the tree's name is a digest.
fn app_name(spec: &AppSpec, digest: &str, folder: Option<&str>, project_id: &str) -> String {
    if spec.name != digest {
        return spec.name.clone();
    }
    if let Some(folder) = folder
        .map(str::trim)
        .filter(|f| !f.is_empty() && f.len() <= 200)
    {
        return folder.to_owned();
    }
    project_id
        .rsplit('/')
        .next()
        .unwrap_or(project_id)
        .to_owned()
}

fn plugin_names(spec: &AppSpec) -> Vec<String> {
    spec.plugins.iter().map(|p| p.name.clone()).collect()
}

/// Runs file system work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ReleaseError> + Send + 'static,
) -> Result<T, ReleaseError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ReleaseError::Io(std::io::Error::other(format!("publish task failed: {e}"))))?
}

/// An app error about the staging copy, told about the app: file names
/// relative to its folder, as the publisher knows them.
fn relative_to(mut error: AppError, app: &Path) -> ReleaseError {
    if let Ok(relative) = error.file.strip_prefix(app) {
        error.file = if relative.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            relative.to_path_buf()
        };
    }
    error.message = error.message.replace(&format!("{}/", app.display()), "");
    ReleaseError::InvalidApp(error)
}

/// Moves the validated tree and the archive to their content-addressed
/// names, each synced before the rename and the rename synced after.
fn install(dirs: &Dirs, work: &Path, digest: &str, archive: &[u8]) -> Result<(), ReleaseError> {
    let tree = dirs.trees.join(digest);
    if !tree.exists() {
        let app = work.join(digest);
        make_read_only(&app)?;
        sync_tree(&app)?;
        if let Err(e) = std::fs::rename(&app, &tree) {
            // The same bytes published at the same moment: theirs is as
            // good as ours (ours goes with the staging directory).
            if !tree.is_dir() {
                return Err(e.into());
            }
        }
        sync_dir(&dirs.trees)?;
    }
    let blob = dirs.blobs.join(format!("{digest}.tar.gz"));
    if !blob.exists() {
        let temp = work.join("archive.tar.gz");
        let mut file = File::create(&temp)?;
        file.write_all(archive)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o444))?;
        file.sync_all()?;
        std::fs::rename(&temp, &blob)?;
        sync_dir(&dirs.blobs)?;
    }
    Ok(())
}

/// Files 0444 (0555 when executable: a setup script or an MCP server's
/// program must stay runnable), directories 0555. [`super::unpack`] made
/// only files and directories, so there is no link to follow here.
fn make_read_only(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            make_read_only(&entry.path())?;
        } else if kind.is_file() {
            let executable = entry.metadata()?.permissions().mode() & 0o111 != 0;
            let mode = if executable { 0o555 } else { 0o444 };
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))?;
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555))
}

/// Syncs every file and directory of a tree, so that the rename that
/// publishes it never outlives (in a power cut) the files it names.
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            sync_tree(&entry.path())?;
        } else if kind.is_file() {
            File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes a staging directory, read-only parts included (a directory
/// needs its write bit back before its entries can go). Links are never
/// followed: a link is removed, not entered.
pub(super) fn remove_tree(path: &Path) -> std::io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return std::fs::remove_file(path);
    }
    restore_write(path)?;
    std::fs::remove_dir_all(path)
}

fn restore_write(dir: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            restore_write(&entry.path())?;
        }
    }
    Ok(())
}

/// `staging/<uuid>/`, removed when dropped (a failed or cancelled publish
/// leaves nothing behind; a crash leaves it to [`Releases::open`]).
struct Staging {
    path: PathBuf,
}

impl Staging {
    fn create(staging: &Path) -> std::io::Result<Self> {
        let path = staging.join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir(&path)?;
        Ok(Self { path })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a staging directory");
        }
    }
}
