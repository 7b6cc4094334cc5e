//! `[environment] setup`: the app's setup script, run once per app version
//! in the jail, its `HOME` kept as a read-only layer every session starts
//! from.
//!
//! **When.** In dev mode, at the first `karta serve` of an app's content:
//! the version is [`app_hash`], a SHA-256 of the app's files (paths and
//! bytes; not `.git`, `node_modules`, `__pycache__`, `.karta`, `target`,
//! the data dir when it lies in the app, nor `.env` — the operator's
//! values are not the app's version, and a hash of secrets is not shown
//! around). An unchanged app does not run its script again; a changed
//! byte does. (Publishing, which will run it once per published version,
//! comes with a later issue.)
//!
//! **Where.** `<data_dir>/setup/<hash>/`:
//!
//! - `home/` — the script's `HOME`, writable while it runs, then the layer
//!   ([`karta_harness::SetupLayer`]: bound read-only into every session's
//!   jail at this same path, with `PYTHONUSERBASE`, `PATH` and
//!   `KARTA_SETUP_HOME` pointing there);
//! - `run/` — its `/tmp` and `/dev/shm` (not part of the layer; download
//!   caches go there: `XDG_CACHE_HOME`, `npm_config_cache`);
//! - `state.json` — [`SetupRecord`]: done or failed, with the output's
//!   tail; the script cannot reach it. A missing or failed record means the
//!   next start removes the directory and runs the script afresh (a
//!   failure may be a registry's hiccup).
//!
//! **How.** The script runs in the jail ([`HarnessProcess::start`] with a
//! [`JailSpec`]): its working directory is **the app's folder,
//! read-only** (the same tree sessions see) — what it produces belongs in
//! `$HOME`, the only writable tree; a script that writes beside itself
//! fails loudly instead of producing output that would be thrown away. Its
//! interpreter is its `#!` line (else `/bin/sh`); stdout and stderr are
//! one stream, logged line by line and kept (the last 16 KiB) for the
//! error. The jail's cgroup limits (memory, processes) are the sessions'
//! ones; the time limit is [`SetupConfig::timeout`] (`karta serve
//! --setup-timeout-secs`, default 10 minutes), after which the whole tree
//! is killed.
//!
//! **Network.** Only through the host's [`EgressProxy`] (see `proxy.rs`),
//! relayed into the jail's network namespace like the gateway's port for a
//! harness, which reaches only the operator's allow-list
//! ([`DEFAULT_ALLOW_HOSTS`] plus `--setup-allow-host`). The script's
//! environment names it for the usual clients: `HTTP(S)_PROXY` and their
//! lowercase forms, `PIP_PROXY`, `npm_config_proxy`/`https_proxy`; pip
//! gets `PIP_BREAK_SYSTEM_PACKAGES=1` (a `--user` install goes into the
//! layer, never the read-only system) and, like Node, the system's trust
//! roots (`/etc/ssl/certs/ca-certificates.crt`, when present). Besides
//! these, the script gets the app's `[env]` (minus the names the host
//! sets), `HOME`, `PATH` (with `$HOME/.local/bin` and `$HOME/bin`),
//! `TMPDIR`, `KARTA_SETUP=1` and `KARTA_APP_DIR`.
//!
//! **Failure** refuses the app: [`SetupError::Failed`] carries the exit
//! status and the output's tail (plus what the proxy refused), and
//! `karta doctor APP` shows it until the next start retries.
//!
//! Without the jail (the operator's `--no-jail`) the script runs
//! unconfined, with the same environment — the proxy variables are then a
//! convention, not a wall; a warning says so.

mod proxy;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use karta_harness::SetupLayer;
use karta_harness::process::{HarnessProcess, JailLimits, JailSpec, Spawn};
use karta_harness::safe_fs::{Kind, SafeDir};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

pub use proxy::{EgressPolicy, EgressProxy};

use crate::app::AppSpec;

/// The registries a setup script reaches unless the operator says more.
pub const DEFAULT_ALLOW_HOSTS: &[&str] =
    &["pypi.org", "files.pythonhosted.org", "registry.npmjs.org"];

/// How long a setup script may run unless the operator says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// How much of the script's output is kept for the error and the record.
const OUTPUT_TAIL_BYTES: usize = 16 * 1024;

/// Part of every hash: how a script is run. Changing what a script gets
/// (its environment, its mounts) changes this, so layers are rebuilt.
const SETUP_FORMAT: &[u8] = b"karta-setup-1";

/// The most the app's files may weigh, hashed at every start.
const MAX_HASHED_BYTES: u64 = 2 << 30;

/// How deep the hashed tree may go.
const MAX_DEPTH: usize = 32;

/// Names never hashed, at any depth (build output, caches, version control).
const SKIPPED_ANYWHERE: &[&str] = &[".git", "node_modules", "__pycache__", ".DS_Store"];

/// Names never hashed at the app's root: the default data dir, build
/// output, and the operator's `.env`.
const SKIPPED_AT_ROOT: &[&str] = &[".karta", "target", ".env"];

/// The system's trust roots, given to pip and Node when present (a
/// machine whose egress re-signs TLS trusts its CA there).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The operator's settings for setup scripts.
#[derive(Debug, Clone)]
pub struct SetupConfig {
    /// Host names the script may reach through the proxy (`name` or
    /// `*.domain`).
    pub allow_hosts: Vec<String>,
    /// Internal address ranges the proxy may connect to anyway (loopback,
    /// private, … are refused otherwise, whatever a name resolves to).
    pub allow_net: Vec<IpNet>,
    /// How long the script may run.
    pub timeout: Duration,
}

impl Default for SetupConfig {
    fn default() -> Self {
        Self {
            allow_hosts: DEFAULT_ALLOW_HOSTS
                .iter()
                .map(|h| (*h).to_owned())
                .collect(),
            allow_net: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Why the setup could not give a layer; the app is refused.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The app's files could not be read for the hash.
    #[error("setup: cannot hash the app's files: {0}")]
    Hash(String),
    /// The setup directory could not be made or written.
    #[error("setup: cannot use {path}: {cause}")]
    Dir {
        /// The path.
        path: String,
        /// Why.
        cause: std::io::Error,
    },
    /// The proxy could not listen.
    #[error("setup: cannot start the setup proxy: {0}")]
    Proxy(std::io::Error),
    /// The script could not be started (the jail could not be built, …).
    #[error("setup: cannot start the setup script {script}: {cause}")]
    Start {
        /// The script, relative to the app.
        script: String,
        /// Why.
        cause: std::io::Error,
    },
    /// The script failed or ran out of time.
    #[error(
        "the setup script {script} {how}; the app is refused. Its output (last lines):\n{output}"
    )]
    Failed {
        /// The script, relative to the app.
        script: String,
        /// `exited with status 3`, `timed out after 600 s`, …
        how: String,
        /// The tail of its stdout and stderr, then what the proxy refused.
        output: String,
    },
}

/// What `state.json` says of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SetupRecord {
    /// The script succeeded; `home/` is the layer.
    Done {
        /// The app hash it ran for.
        hash: String,
        /// The script, relative to the app.
        script: String,
        /// When it finished (Unix seconds).
        finished_at: u64,
        /// How long it ran.
        duration_ms: u64,
    },
    /// The script failed (the next start tries again).
    Failed {
        /// The app hash it ran for.
        hash: String,
        /// The script, relative to the app.
        script: String,
        /// When it finished (Unix seconds).
        finished_at: u64,
        /// How it failed.
        how: String,
        /// The tail of its output.
        output: String,
    },
}

/// The setup state of an app, for `karta doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetupState {
    /// The app declares no setup script.
    NoScript,
    /// Not run for this version of the app yet (the next start runs it).
    NotRun {
        /// The app hash.
        hash: String,
    },
    /// Ran, and a record says how.
    Ran(SetupRecord),
}

/// The version of an app as setup sees it: a SHA-256 (hex) over its
/// files' relative paths and bytes, in name order (see the module docs for
/// what is left out). `data_dir` (canonical) is skipped when it lies in the
/// app.
pub fn app_hash(app: &AppSpec, data_dir: &Path) -> Result<String, SetupError> {
    let root = canonical_root(app);
    let dir = SafeDir::open_app(&root).map_err(|e| SetupError::Hash(e.to_string()))?;
    let mut hasher = Sha256::new();
    hasher.update(SETUP_FORMAT);
    hasher.update([0u8]);
    if let Some(script) = &app.setup_script {
        hasher.update(script.as_os_str().as_bytes());
    }
    hasher.update([0u8]);
    let mut walk = HashWalk {
        root: &root,
        data_dir,
        hasher,
        bytes: 0,
    };
    walk.dir(&dir, Path::new(""), 0)?;
    Ok(hex::encode(walk.hasher.finalize()))
}

struct HashWalk<'a> {
    root: &'a Path,
    data_dir: &'a Path,
    hasher: Sha256,
    bytes: u64,
}

impl HashWalk<'_> {
    fn dir(&mut self, dir: &SafeDir, relative: &Path, depth: usize) -> Result<(), SetupError> {
        if depth > MAX_DEPTH {
            return Err(SetupError::Hash(format!(
                "{} is nested deeper than {MAX_DEPTH} directories",
                self.root.join(relative).display()
            )));
        }
        let entries = dir
            .list(relative)
            .map_err(|e| SetupError::Hash(e.to_string()))?;
        for (name, _) in entries {
            let shown = name.to_string_lossy();
            if SKIPPED_ANYWHERE.contains(&shown.as_ref())
                || (depth == 0 && SKIPPED_AT_ROOT.contains(&shown.as_ref()))
            {
                continue;
            }
            let path = relative.join(&name);
            let full = self.root.join(&path);
            if full == self.data_dir {
                continue;
            }
            // Links inside the app count as what they name; links out,
            // FIFOs and devices are refused by `open_app`.
            let kind = dir
                .resolved_kind(&path)
                .map_err(|e| SetupError::Hash(e.to_string()))?;
            match kind {
                Kind::Dir => {
                    self.hasher.update(b"D\0");
                    self.hasher.update(path.as_os_str().as_bytes());
                    self.hasher.update([0u8]);
                    self.dir(dir, &path, depth + 1)?;
                }
                Kind::File(size) => {
                    self.hasher.update(b"F\0");
                    self.hasher.update(path.as_os_str().as_bytes());
                    self.hasher.update([0u8]);
                    self.file(&full, size)?;
                }
                Kind::Link | Kind::Special => {
                    return Err(SetupError::Hash(format!(
                        "{}: not a regular file or directory",
                        full.display()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Hashes a file's bytes, streamed; its length first, so the boundary
    /// between two files is unambiguous.
    fn file(&mut self, path: &Path, size: u64) -> Result<(), SetupError> {
        let failed = |e: std::io::Error| SetupError::Hash(format!("{}: {e}", path.display()));
        self.bytes += size;
        if self.bytes > MAX_HASHED_BYTES {
            return Err(SetupError::Hash(format!(
                "the app's files weigh more than {} MiB",
                MAX_HASHED_BYTES >> 20
            )));
        }
        // Bounded by the size seen when listing: a file that grows (or was
        // swapped for something endless) is read only that far.
        let mut file = std::fs::File::open(path).map_err(failed)?.take(size);
        let mut buffer = vec![0u8; 64 * 1024];
        let mut read_total = 0u64;
        loop {
            let read = file.read(&mut buffer).map_err(failed)?;
            if read == 0 {
                break;
            }
            read_total += read as u64;
            self.hasher.update(&buffer[..read]);
        }
        self.hasher.update(read_total.to_le_bytes());
        Ok(())
    }
}

fn canonical_root(app: &AppSpec) -> PathBuf {
    std::fs::canonicalize(&app.root).unwrap_or_else(|_| app.root.clone())
}

/// `<data_dir>/setup/<hash>`.
fn setup_dir(data_dir: &Path, hash: &str) -> PathBuf {
    data_dir.join("setup").join(hash)
}

/// What is recorded for `hash` (nothing: not run).
fn read_record(dir: &Path) -> Option<SetupRecord> {
    let bytes = std::fs::read(dir.join("state.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn write_record(dir: &Path, record: &SetupRecord) -> Result<(), SetupError> {
    let path = dir.join("state.json");
    let dir_error = |cause| SetupError::Dir {
        path: path.display().to_string(),
        cause,
    };
    let bytes =
        serde_json::to_vec_pretty(record).map_err(|e| dir_error(std::io::Error::other(e)))?;
    // A new file renamed over the name: a crash leaves the old record or
    // the new, never half of one.
    let partial = dir.join("state.json.partial");
    std::fs::write(&partial, bytes).map_err(dir_error)?;
    std::fs::rename(&partial, &path).map_err(dir_error)
}

/// The setup state of `app` with its data in `data_dir` (which may not
/// exist yet).
pub fn state(app: &AppSpec, data_dir: &Path) -> Result<SetupState, SetupError> {
    if app.setup_script.is_none() {
        return Ok(SetupState::NoScript);
    }
    let data_dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let hash = app_hash(app, &data_dir)?;
    Ok(match read_record(&setup_dir(&data_dir, &hash)) {
        Some(record) => SetupState::Ran(record),
        None => SetupState::NotRun { hash },
    })
}

/// Runs the app's setup script unless this version of the app already ran
/// it; returns the layer sessions start from (`None`: no script). `data_dir`
/// is canonical; `jail` is `None` only with the operator's `--no-jail`.
pub async fn ensure(
    app: &AppSpec,
    data_dir: &Path,
    config: &SetupConfig,
    jail: Option<JailLimits>,
) -> Result<Option<SetupLayer>, SetupError> {
    let Some(script) = &app.setup_script else {
        return Ok(None);
    };
    let hash = app_hash(app, data_dir)?;
    let dir = setup_dir(data_dir, &hash);
    let home = dir.join("home");
    if let Some(SetupRecord::Done { .. }) = read_record(&dir)
        && home.is_dir()
    {
        tracing::info!(
            target: "karta_host::setup",
            "setup script {} already ran for this version of the app ({})",
            script.display(),
            short(&hash)
        );
        return Ok(Some(SetupLayer { home }));
    }
    let started = Instant::now();
    tracing::info!(
        target: "karta_host::setup",
        "running the setup script {} for this version of the app ({}); its network reaches only: {}",
        script.display(),
        short(&hash),
        config.allow_hosts.join(", ")
    );
    let outcome = run(app, script, &dir, config, jail).await;
    let finished_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let shown = script.display().to_string();
    match outcome {
        Ok(()) => {
            write_record(
                &dir,
                &SetupRecord::Done {
                    hash: hash.clone(),
                    script: shown,
                    finished_at,
                    duration_ms: started.elapsed().as_millis() as u64,
                },
            )?;
            tracing::info!(
                target: "karta_host::setup",
                "setup script {} done in {:.1} s; sessions start from {}",
                script.display(),
                started.elapsed().as_secs_f64(),
                home.display()
            );
            Ok(Some(SetupLayer { home }))
        }
        Err(SetupError::Failed {
            script,
            how,
            output,
        }) => {
            // Recorded for `karta doctor`; an error writing it must not
            // hide the script's own failure.
            if let Err(e) = write_record(
                &dir,
                &SetupRecord::Failed {
                    hash,
                    script: script.clone(),
                    finished_at,
                    how: how.clone(),
                    output: output.clone(),
                },
            ) {
                tracing::warn!(target: "karta_host::setup", "{e}");
            }
            Err(SetupError::Failed {
                script,
                how,
                output,
            })
        }
        Err(other) => Err(other),
    }
}

/// The first 12 hex digits of a hash, for log lines.
fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// One run of the script in a fresh `dir`.
async fn run(
    app: &AppSpec,
    script: &Path,
    dir: &Path,
    config: &SetupConfig,
    jail: Option<JailLimits>,
) -> Result<(), SetupError> {
    let shown = script.display().to_string();
    let dir_error = |path: &Path| {
        let path = path.display().to_string();
        move |cause| SetupError::Dir { path, cause }
    };
    // What a failed or interrupted run left is not a layer: start afresh.
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(dir_error(dir))?;
    }
    let home = dir.join("home");
    let run_dir = dir.join("run");
    for path in [&home, &run_dir] {
        std::fs::create_dir_all(path).map_err(dir_error(path))?;
    }
    let app_root = canonical_root(app);
    let data_dir = dir
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let script_path = app_root.join(script);
    let interpreter = interpreter(&app_root, script);

    let proxy = EgressProxy::start(EgressPolicy::new(
        &config.allow_hosts,
        config.allow_net.clone(),
    ))
    .await
    .map_err(SetupError::Proxy)?;

    let tmp = if jail.is_some() {
        PathBuf::from("/tmp")
    } else {
        let tmp = run_dir.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(dir_error(&tmp))?;
        tmp
    };
    let env = script_env(app, &home, &tmp, &app_root, &proxy.url());
    // `exec 2>&1`: stdout and stderr as one stream, in the order written.
    let mut args = vec![
        "-c".to_owned(),
        r#"exec 2>&1; exec "$@""#.to_owned(),
        "karta-setup".to_owned(),
    ];
    args.extend(interpreter);
    args.push(script_path.display().to_string());
    if jail.is_none() {
        tracing::warn!(
            target: "karta_host::setup",
            "--no-jail: the setup script runs UNCONFINED; its network is not limited to the allow-list"
        );
    }
    let spawn = Spawn {
        program: PathBuf::from("/bin/sh"),
        args,
        cwd: app_root.clone(),
        env,
        stdin: false,
        stdout: true,
        jail: jail.map(|limits| JailSpec {
            read: vec![app_root.clone()],
            write: vec![home.clone()],
            hidden: if data_dir.starts_with(&app_root) {
                vec![data_dir.clone()]
            } else {
                Vec::new()
            },
            scratch: Some(run_dir.join("tmp")),
            connect_ports: vec![proxy.port()],
            bind_ports: Vec::new(),
            limits,
        }),
        // A setup script is build work: at the host's own priority, not
        // ahead of it as a session's harness.
        nice: None,
    };
    let mut process = HarnessProcess::start(&spawn).map_err(|cause| SetupError::Start {
        script: shown.clone(),
        cause,
    })?;
    let tail = Arc::new(Mutex::new(String::new()));
    let reader = process
        .child
        .stdout
        .take()
        .map(|stdout| tokio::spawn(keep_output(stdout, tail.clone())));
    let waited = tokio::time::timeout(config.timeout, process.child.wait()).await;
    let how = match waited {
        Ok(Ok(status)) if status.success() => None,
        Ok(Ok(status)) => Some(match status.code() {
            Some(code) => format!("exited with status {code}"),
            None => format!("was killed ({status})"),
        }),
        Ok(Err(e)) => Some(format!("could not be waited for: {e}")),
        Err(_) => Some(format!(
            "ran longer than its time limit of {} s (karta serve --setup-timeout-secs) and was killed",
            config.timeout.as_secs()
        )),
    };
    let jail_said = process.stderr_tail();
    // Whatever the script left running (unjailed: a daemon holding stdout)
    // goes with it; then the output ends.
    process.kill().await;
    if let Some(reader) = reader {
        let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
    }
    let Some(how) = how else {
        return Ok(());
    };
    let mut output = tail.lock().map(|t| t.clone()).unwrap_or_default();
    if !jail_said.is_empty() {
        output.push_str(&jail_said);
        output.push('\n');
    }
    let refused = proxy.refused();
    if !refused.is_empty() {
        output.push_str("the setup proxy refused:\n");
        for line in refused {
            output.push_str("  ");
            output.push_str(&line);
            output.push('\n');
        }
    }
    if output.trim().is_empty() {
        output = "(no output)".to_owned();
    }
    Err(SetupError::Failed {
        script: shown,
        how,
        output: output.trim_end().to_owned(),
    })
}

/// How the kernel would run the script: its `#!` interpreter and optional
/// argument, else `/bin/sh` (a script uploaded without its execute bit
/// still runs; one with `#!/usr/bin/env python3` runs as Python).
fn interpreter(app_root: &Path, script: &Path) -> Vec<String> {
    let first_line = SafeDir::open_app(app_root)
        .and_then(|dir| dir.read(script, 1 << 20))
        .ok()
        .and_then(|bytes| {
            let line = bytes.split(|b| *b == b'\n').next()?.to_vec();
            String::from_utf8(line).ok()
        })
        .unwrap_or_default();
    let Some(shebang) = first_line.strip_prefix("#!") else {
        return vec!["/bin/sh".to_owned()];
    };
    let shebang = shebang.trim();
    match shebang.split_once([' ', '\t']) {
        // Like the kernel: everything after the interpreter is one argument.
        Some((program, argument)) => vec![program.to_owned(), argument.trim().to_owned()],
        None if !shebang.is_empty() => vec![shebang.to_owned()],
        None => vec!["/bin/sh".to_owned()],
    }
}

/// The script's whole environment (see the module docs).
fn script_env(
    app: &AppSpec,
    home: &Path,
    tmp: &Path,
    app_root: &Path,
    proxy: &str,
) -> BTreeMap<String, String> {
    let mut env = karta_harness::process::app_env(&app.env);
    let home_text = home.display().to_string();
    let mut set = |name: &str, value: &str| {
        env.insert(name.to_owned(), value.to_owned());
    };
    set("HOME", &home_text);
    set("TMPDIR", &tmp.display().to_string());
    set(
        "PATH",
        &format!("{home_text}/.local/bin:{home_text}/bin:/usr/local/bin:/usr/bin:/bin"),
    );
    set("LANG", "C.UTF-8");
    set("TERM", "dumb");
    set("NO_COLOR", "1");
    set("KARTA_SETUP", "1");
    set("KARTA_APP_DIR", &app_root.display().to_string());
    for name in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "PIP_PROXY",
        "npm_config_proxy",
        "npm_config_https_proxy",
    ] {
        set(name, proxy);
    }
    // Download caches in the scratch space, not in the layer.
    let tmp_text = tmp.display().to_string();
    set("XDG_CACHE_HOME", &format!("{tmp_text}/.cache"));
    set("npm_config_cache", &format!("{tmp_text}/.npm"));
    set("PIP_BREAK_SYSTEM_PACKAGES", "1");
    set("PIP_ROOT_USER_ACTION", "ignore");
    set("PIP_DISABLE_PIP_VERSION_CHECK", "1");
    set("PIP_NO_INPUT", "1");
    if Path::new(SYSTEM_CA_BUNDLE).is_file() {
        set("PIP_CERT", SYSTEM_CA_BUNDLE);
        set("NODE_EXTRA_CA_CERTS", SYSTEM_CA_BUNDLE);
    }
    env
}

/// Reads the script's output to its end: each line logged, the last
/// [`OUTPUT_TAIL_BYTES`] kept.
async fn keep_output(stream: impl AsyncRead + Unpin, tail: Arc<Mutex<String>>) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Bytes, not `lines()`: a script may print anything, valid UTF-8
        // or not.
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        tracing::info!(target: "karta_host::setup", "setup: {text}");
        if let Ok(mut tail) = tail.lock() {
            tail.push_str(text);
            tail.push('\n');
            if tail.len() > OUTPUT_TAIL_BYTES {
                let cut = tail.len() - OUTPUT_TAIL_BYTES;
                let cut = (cut..tail.len())
                    .find(|&i| tail.is_char_boundary(i))
                    .unwrap_or(0);
                tail.drain(..cut);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interpreter_follows_the_shebang() {
        let app = tempfile::tempdir().expect("tempdir");
        let cases = [
            ("echo hi\n", vec!["/bin/sh"]),
            ("#!/bin/bash\necho hi\n", vec!["/bin/bash"]),
            ("#!/usr/bin/env python3\n", vec!["/usr/bin/env", "python3"]),
            ("#! /bin/sh -eu \n", vec!["/bin/sh", "-eu"]),
            ("#!\n", vec!["/bin/sh"]),
        ];
        for (text, expected) in cases {
            std::fs::write(app.path().join("setup.sh"), text).expect("write");
            assert_eq!(
                interpreter(app.path(), Path::new("setup.sh")),
                expected,
                "{text:?}"
            );
        }
    }
}
