//! Compiling components once: precompiled artifacts on disk, keyed by what
//! makes them valid.
//!
//! An artifact is native code produced by this engine for these bytes. It is
//! valid only for the same component bytes *and* the same engine settings and
//! wasmtime version, so its file name carries both: the SHA-256 of the
//! component and a hash of the engine's compatibility settings. A later start
//! loads the file instead of compiling (milliseconds instead of seconds).
//!
//! Loading an artifact runs its native code, so only files this cache wrote
//! are ever loaded: the directory is created private (0700), files are written
//! to a temporary name and renamed into place, and an artifact that fails to
//! load is deleted and recompiled rather than trusted.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::error::{LoadError, RuntimeError};

/// Where a component came from this time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactSource {
    /// Already loaded by this runtime.
    Memory,
    /// Loaded from a precompiled artifact on disk.
    Disk,
    /// Compiled now (and written to disk if the runtime has a cache dir).
    Compiled,
}

/// Compiled components of one engine, in memory and optionally on disk.
pub(crate) struct ArtifactCache {
    dir: Option<PathBuf>,
    engine_key: String,
    loaded: Mutex<HashMap<String, Component>>,
}

impl ArtifactCache {
    pub(crate) fn new(engine: &Engine, dir: Option<PathBuf>) -> Result<Self, RuntimeError> {
        if let Some(dir) = &dir {
            create_private_dir(dir).map_err(|source| RuntimeError::Cache {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
            loaded: Mutex::new(HashMap::new()),
        })
    }

    /// The component for `bytes`, from memory, disk or a fresh compile.
    /// Returns it with its SHA-256 and where it came from.
    pub(crate) fn component(
        &self,
        engine: &Engine,
        bytes: &[u8],
    ) -> Result<(Component, String, ArtifactSource), LoadError> {
        let digest = hex::encode(Sha256::digest(bytes));
        if let Some(component) = self.lock().get(&digest) {
            return Ok((component.clone(), digest, ArtifactSource::Memory));
        }
        let (component, source) = match self.artifact_path(&digest) {
            Some(path) => match load_artifact(engine, &path) {
                Some(component) => (component, ArtifactSource::Disk),
                None => {
                    let component = compile(engine, bytes)?;
                    if let Err(e) = write_artifact(&component, &path) {
                        tracing::warn!(path = %path.display(), "cannot write the compiled artifact: {e:#}");
                    }
                    (component, ArtifactSource::Compiled)
                }
            },
            None => (compile(engine, bytes)?, ArtifactSource::Compiled),
        };
        self.lock().insert(digest.clone(), component.clone());
        Ok((component, digest, source))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Component>> {
        // A poisoned map only means another thread panicked mid-insert; the
        // map itself is still a valid cache.
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn artifact_path(&self, digest: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        Some(dir.join(format!("{digest}-{}.cwasm", self.engine_key)))
    }
}

fn compile(engine: &Engine, bytes: &[u8]) -> Result<Component, LoadError> {
    if bytes.starts_with(b"\0asm") && bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
        return Err(LoadError::Compile(wasmtime::format_err!(
            "this is a core WebAssembly module, not a component; build the plugin \
             for the wasm32-wasip2 target (or wrap it with `wasm-tools component new`)"
        )));
    }
    Component::new(engine, bytes).map_err(LoadError::Compile)
}

/// Loads a precompiled artifact, or `None` when there is none or it is
/// unusable (then it is removed, to be rewritten).
///
/// The file is read into memory rather than mapped: a mapped file that
/// someone truncates under us would turn into SIGBUS at the next touch of its
/// pages, taking the whole host down. Reading costs a copy of a few hundred
/// KiB once per plugin and process.
fn load_artifact(engine: &Engine, path: &Path) -> Option<Component> {
    let bytes = std::fs::read(path).ok()?;
    #[allow(unsafe_code)]
    // SAFETY: `deserialize` trusts the bytes to be an artifact produced by
    // `Component::serialize` of a compatible engine. Only this cache writes
    // files in this private directory, under names derived from the content
    // hash and the engine's compatibility hash, and wasmtime itself checks
    // the header and rejects an artifact from another version or
    // configuration.
    let loaded = unsafe { Component::deserialize(engine, &bytes) };
    match loaded {
        Ok(component) => Some(component),
        Err(e) => {
            tracing::warn!(path = %path.display(), "discarding an unusable compiled artifact: {e:#}");
            let _ = std::fs::remove_file(path);
            None
        }
    }
}

fn write_artifact(component: &Component, path: &Path) -> anyhow::Result<()> {
    let bytes = component.serialize()?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, &bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}
