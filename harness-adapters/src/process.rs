//! Harness processes: how `claude` and `opencode` are started and stopped.
//!
//! A harness process gets a cleared environment (only what it needs is set
//! back), its own scratch `HOME`, the session workspace as its working
//! directory, and its own process group. It never outlives its owner:
//!
//! - dropping a [`HarnessProcess`] kills its whole process group;
//! - the child asks the kernel for `SIGKILL` when the Karta process dies
//!   (`PR_SET_PDEATHSIG`), so even a `kill -9` of the host leaves no orphan.
//!
//! With a [`JailSpec`] the process is also confined with Landlock before it
//! starts: it may read the system and its own binary's package, write only
//! its workspace, its `HOME` (with its own `TMPDIR`) and `/dev`, connect
//! only to the TCP
//! ports it is given (the gateway's and the MCP server's) and bind only its
//! own. On a kernel without Landlock this is best effort: the process runs
//! unconfined and [`HarnessProcess::confined`] says so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// The most stderr kept per process, for error messages.
const STDERR_TAIL_BYTES: usize = 8 * 1024;

/// What to start.
#[derive(Debug, Clone)]
pub struct Spawn {
    /// The binary.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// The working directory.
    pub cwd: PathBuf,
    /// The whole environment (nothing is inherited).
    pub env: BTreeMap<String, String>,
    /// Whether the caller writes to the process's stdin.
    pub stdin: bool,
    /// Whether the caller reads the process's stdout.
    pub stdout: bool,
    /// Confine it with Landlock.
    pub jail: Option<JailSpec>,
}

/// What a confined harness process may reach.
#[derive(Debug, Clone, Default)]
pub struct JailSpec {
    /// Trees it may read and execute (besides the system directories).
    pub read: Vec<PathBuf>,
    /// Trees it may read and write.
    pub write: Vec<PathBuf>,
    /// TCP ports it may connect to (any address).
    pub connect_ports: Vec<u16>,
    /// TCP ports it may bind.
    pub bind_ports: Vec<u16>,
}

/// System trees every confined process may read (libraries, certificates,
/// `/proc` for itself; Landlock keeps it from tracing or reading the
/// environment of processes outside its domain).
const SYSTEM_READ: &[&str] = &[
    "/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc", "/proc", "/sys", "/opt",
];

/// Trees every confined process may write: `/dev` for `null`, `tty` and
/// shared memory. Not `/tmp`: sessions would share it; a harness gets its own
/// (`TMPDIR` in its `HOME`, see [`base_env`]).
const SYSTEM_WRITE: &[&str] = &["/dev"];

impl JailSpec {
    /// The Landlock ruleset, ready to enforce in the child.
    fn ruleset(&self) -> Result<landlock::RulesetCreated, landlock::RulesetError> {
        use landlock::{
            ABI, Access, AccessFs, AccessNet, NetPort, Ruleset, RulesetAttr, RulesetCreatedAttr,
            path_beneath_rules,
        };
        let abi = ABI::V5;
        let read: Vec<PathBuf> = SYSTEM_READ
            .iter()
            .map(PathBuf::from)
            .chain(self.read.iter().cloned())
            .collect();
        let write: Vec<PathBuf> = SYSTEM_WRITE
            .iter()
            .map(PathBuf::from)
            .chain(self.write.iter().cloned())
            .collect();
        let mut ruleset = Ruleset::default()
            .handle_access(AccessFs::from_all(abi))?
            .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)?
            .create()?
            .add_rules(path_beneath_rules(&read, AccessFs::from_read(abi)))?
            .add_rules(path_beneath_rules(&write, AccessFs::from_all(abi)))?;
        for port in &self.connect_ports {
            ruleset = ruleset.add_rule(NetPort::new(*port, AccessNet::ConnectTcp))?;
        }
        for port in &self.bind_ports {
            ruleset = ruleset.add_rule(NetPort::new(*port, AccessNet::BindTcp))?;
        }
        Ok(ruleset)
    }
}

impl JailSpec {
    /// The jail of a harness process for `session`: it reads its own
    /// package (`program`'s `node_modules`, else its directory), writes its
    /// workspace, its `HOME` and `extra_write`, connects to the gateway and
    /// the MCP server, and binds `bind_ports`.
    pub fn for_session(
        session: &crate::SessionInfo,
        program: &Path,
        extra_write: Vec<PathBuf>,
        bind_ports: Vec<u16>,
    ) -> Self {
        let program = std::fs::canonicalize(program).unwrap_or_else(|_| program.to_path_buf());
        let package = program
            .ancestors()
            .find(|a| a.file_name().is_some_and(|n| n == "node_modules"))
            .or_else(|| program.parent())
            .map(Path::to_path_buf);
        let mut write = vec![session.workspace.clone(), session.home.clone()];
        write.extend(extra_write);
        Self {
            read: package.into_iter().collect(),
            write,
            connect_ports: [&session.gateway_url, &session.mcp_url]
                .into_iter()
                .filter_map(|url| url_port(url))
                .collect(),
            bind_ports,
        }
    }
}

/// The port of an `http://host:port/...` URL.
pub fn url_port(url: &str) -> Option<u16> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next()?;
    authority.rsplit_once(':')?.1.parse().ok()
}

/// Whether this kernel enforces Landlock file and TCP rules.
pub fn landlock_available() -> bool {
    use landlock::{ABI, Access, AccessFs, AccessNet, Compatible, Ruleset, RulesetAttr};
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // Creating (not enforcing) a ruleset in hard-requirement mode fails when
    // the kernel cannot enforce it. The kernel does not change underneath
    // us: asked once.
    *AVAILABLE.get_or_init(|| {
        Ruleset::default()
            .set_compatibility(landlock::CompatLevel::HardRequirement)
            .handle_access(AccessFs::from_all(ABI::V4))
            .and_then(|r| r.handle_access(AccessNet::ConnectTcp))
            .and_then(|r| r.create())
            .is_ok()
    })
}

/// A running harness process.
pub struct HarnessProcess {
    /// The child (stdin/stdout taken by the caller when piped).
    pub child: Child,
    pid: Option<u32>,
    stderr_tail: Arc<Mutex<String>>,
    confined: bool,
}

impl HarnessProcess {
    /// Starts `spawn`.
    pub fn start(spawn: &Spawn) -> std::io::Result<Self> {
        let mut command = Command::new(&spawn.program);
        command
            .args(&spawn.args)
            .current_dir(&spawn.cwd)
            .env_clear()
            .envs(&spawn.env)
            .stdin(if spawn.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(if spawn.stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let ruleset = match &spawn.jail {
            Some(jail) => Some(jail.ruleset().map_err(|e| {
                std::io::Error::other(format!("cannot build the Landlock rules: {e}"))
            })?),
            None => None,
        };
        let confined = ruleset.is_some() && landlock_available();
        prepare_child(&mut command, ruleset);
        let mut child = command.spawn()?;
        let pid = child.id();
        let stderr_tail = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(keep_tail(stderr, stderr_tail.clone()));
        }
        Ok(Self {
            child,
            pid,
            stderr_tail,
            confined,
        })
    }

    /// Whether the process runs confined by Landlock.
    pub fn confined(&self) -> bool {
        self.confined
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The last lines the process wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        self.stderr_tail
            .lock()
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    }

    /// Kills the process and everything it started, and reaps it.
    pub async fn kill(mut self) {
        kill_group(self.pid.take());
        let _ = self.child.kill().await;
    }
}

impl Drop for HarnessProcess {
    fn drop(&mut self) {
        kill_group(self.pid.take());
    }
}

fn kill_group(pid: Option<u32>) {
    let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) else {
        return;
    };
    // The child leads its own group (`process_group(0)`): this reaches
    // anything it started too.
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
}

/// Between fork and exec: ask the kernel to `SIGKILL` the child when its
/// parent dies, then enforce the Landlock ruleset (built in the parent).
#[allow(unsafe_code)]
fn prepare_child(command: &mut Command, ruleset: Option<landlock::RulesetCreated>) {
    let ruleset = std::sync::Mutex::new(ruleset);
    // SAFETY: the closure runs in the child between fork and exec. It makes
    // system calls only (prctl, then landlock_restrict_self on the ruleset
    // fd the parent prepared) and allocates nothing on success; the mutex
    // was never shared with another thread of the child.
    unsafe {
        command.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)?;
            let ruleset = ruleset.lock().ok().and_then(|mut r| r.take());
            if let Some(ruleset) = ruleset {
                ruleset
                    .restrict_self()
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
            }
            Ok(())
        });
    }
}

async fn keep_tail(stream: impl AsyncRead + Unpin, tail: Arc<Mutex<String>>) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::debug!(target: "karta_harness::process", "{line}");
        if let Ok(mut tail) = tail.lock() {
            tail.push_str(&line);
            tail.push('\n');
            if tail.len() > STDERR_TAIL_BYTES {
                let cut = tail.len() - STDERR_TAIL_BYTES;
                let cut = (cut..tail.len())
                    .find(|&i| tail.is_char_boundary(i))
                    .unwrap_or(0);
                tail.drain(..cut);
            }
        }
    }
}

/// Looks for `name` on `PATH` (as given in `path`).
pub fn find_on_path(name: &str, path: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is an executable file.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Variable names an app's `[env]` may not set for a harness process: they
/// would redirect its model traffic, its tools, its config or its home, or
/// load native code into it.
pub const RESERVED_ENV_PREFIXES: &[&str] = &[
    "ANTHROPIC_",
    "CLAUDE_",
    "OPENCODE_",
    "OPENAI_",
    "XDG_",
    "LD_",
    "NODE_",
    "BUN_",
    "HOME",
    "PATH",
    "DISABLE_",
    "ENABLE_TOOL_SEARCH",
    "IS_SANDBOX",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
];

/// The part of an app's `[env]` a harness process gets: everything but the
/// reserved names (see [`RESERVED_ENV_PREFIXES`]), which are dropped with a
/// warning.
pub fn app_env(env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    env.iter()
        .filter(|(name, _)| {
            let upper = name.to_ascii_uppercase();
            let reserved = RESERVED_ENV_PREFIXES.iter().any(|p| upper.starts_with(p));
            if reserved {
                tracing::warn!("ignoring `{name}` from the app's [env]: the host sets it");
            }
            !reserved
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The whole environment of a harness process for `session`: the app's own
/// `[env]` (minus the names the host sets) first, then [`base_env`], then
/// the harness's own variables — so nothing the app sets can redirect the
/// model traffic, the tools or the home. Creates the `HOME` (and its
/// `TMPDIR`) the environment names.
pub fn session_env(
    session: &crate::SessionInfo,
    program: &Path,
    harness: impl IntoIterator<Item = (String, String)>,
) -> std::io::Result<BTreeMap<String, String>> {
    std::fs::create_dir_all(session.home.join("tmp"))?;
    let mut env = app_env(&session.env);
    env.extend(base_env(&session.home, program));
    env.extend(harness);
    Ok(env)
}

/// The base environment of every harness process: a `PATH` with the
/// system directories and the binary's own, the scratch `HOME` with its own
/// `TMPDIR`, and a neutral locale.
pub fn base_env(home: &Path, program: &Path) -> BTreeMap<String, String> {
    let mut path = String::new();
    if let Some(dir) = program.parent() {
        path.push_str(&dir.display().to_string());
        path.push(':');
    }
    path.push_str("/usr/local/bin:/usr/bin:/bin");
    BTreeMap::from([
        ("HOME".to_owned(), home.display().to_string()),
        ("TMPDIR".to_owned(), home.join("tmp").display().to_string()),
        ("PATH".to_owned(), path),
        ("LANG".to_owned(), "C.UTF-8".to_owned()),
        ("TERM".to_owned(), "dumb".to_owned()),
        ("NO_COLOR".to_owned(), "1".to_owned()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_cannot_redirect_a_harness_through_its_env() {
        let env: BTreeMap<String, String> = [
            ("ANTHROPIC_BASE_URL", "http://evil"),
            ("anthropic_api_key", "x"),
            ("LD_PRELOAD", "/x.so"),
            ("HOME", "/root"),
            ("PATH", "/evil"),
            ("OPENCODE_CONFIG", "/x"),
            ("HTTPS_PROXY", "http://evil"),
            ("APP_GREETING", "hi"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let kept = app_env(&env);
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["APP_GREETING"]);
    }
}
