//! Harness processes: how `claude` and `opencode` are started and stopped.
//!
//! A harness process gets a cleared environment (only what it needs is set
//! back), its own scratch `HOME`, the session workspace as its working
//! directory, and its own process group. It never outlives its owner:
//!
//! - dropping a [`HarnessProcess`] kills its whole process group (and, when
//!   jailed, the pid namespace goes with it);
//! - the child asks the kernel for `SIGKILL` when the Karta process dies
//!   (`PR_SET_PDEATHSIG`), so even a `kill -9` of the host leaves no orphan.
//!
//! With a [`JailSpec`] the process starts in the jail ([`crate::jail`]):
//! namespaces, a root of its own, no capabilities, Landlock, seccomp,
//! rlimits and cgroups. A jail that cannot be built is an error: the
//! process is not started. Without one (the operator's `--no-jail`) it runs
//! unconfined.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncRead;
use tokio::process::{Child, Command};

use crate::lines::{BoundedLines, Line};

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
    /// Its jail (`None`: unconfined, only with the operator's `--no-jail`).
    pub jail: Option<JailSpec>,
    /// Its nice value (`None`: the host's own), set before anything else
    /// runs in it, so every thread and process it starts has it too (see
    /// [`DEFAULT_HARNESS_NICE`]); a value the host may not give (see
    /// [`may_set_nice`]) leaves the host's own.
    pub nice: Option<i32>,
}

/// The nice value harness processes get by default: the host's own (0).
///
/// Below 0 (`karta serve --harness-nice -5`, say) a harness runs ahead of
/// the host's threads: a wake-up of one of them during a turn (a line of
/// the harness's output to read, an event to log and stream) then takes the
/// CPU from a busy harness less often. Measured on a warm Claude Code turn
/// on two vCPUs (BENCHMARKS.md, "Thirty-first session"): at -5 `claude`'s
/// main thread was put on a CPU ~35 times a turn instead of ~38–39 and the
/// turn's part after the model call was ~0.1 ms shorter, but the host's
/// threads waited ~0.5 ms longer for a CPU and the whole turn was not
/// faster (six alternated pairs: −0.07 ± 0.12 ms). And when harnesses keep
/// every CPU busy, the host's threads — which serve every tenant — would
/// get a third of the weight each. So it is the operator's choice, not the
/// default.
pub const DEFAULT_HARNESS_NICE: i32 = 0;

/// Whether this process may give a child the nice value `nice`: a thread
/// made for the question tries it on itself (Linux keeps a nice value per
/// thread) and ends. Lowering a nice value takes `CAP_SYS_NICE` or a
/// `RLIMIT_NICE` that allows it; raising it is always allowed.
#[allow(unsafe_code)]
pub fn may_set_nice(nice: i32) -> bool {
    std::thread::Builder::new()
        .name("karta-nice-check".into())
        .spawn(move || {
            // SAFETY: a system call on the calling thread, integer arguments.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) == 0 }
        })
        .ok()
        .and_then(|thread| thread.join().ok())
        .unwrap_or(false)
}

/// The nice value of process `pid` (field 19 of `/proc/<pid>/stat`).
pub fn nice_of(pid: u32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in brackets, may hold spaces: count after it.
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(16)?.parse().ok()
}

use crate::jail::Jail;
pub use crate::jail::{JailLimits, JailSpec, landlock_available};

/// The port of an `http://host:port/...` URL.
pub fn url_port(url: &str) -> Option<u16> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next()?;
    authority.rsplit_once(':')?.1.parse().ok()
}

/// A running harness process.
pub struct HarnessProcess {
    /// The child (stdin/stdout taken by the caller when piped).
    pub child: Child,
    pid: Option<u32>,
    stderr_tail: Arc<Mutex<String>>,
    jail: Option<Jail>,
}

impl HarnessProcess {
    /// Starts `spawn`, in its jail when it has one. A jail that cannot be
    /// built fails the start (the error names the step).
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
        // First in the child, so the jail's processes inherit it.
        if let Some(nice) = spawn.nice {
            set_nice(&mut command, nice);
        }
        let (child, jail) = match &spawn.jail {
            Some(spec) => {
                let mut jail =
                    Jail::prepare(spec, &spawn.cwd, &mut command).map_err(std::io::Error::other)?;
                let spawned = command.spawn();
                let (child, result) = match spawned {
                    Ok(child) => (Some(child), Ok(())),
                    Err(e) => (None, Err(e)),
                };
                jail.started(result).map_err(std::io::Error::other)?;
                let child = child.ok_or_else(|| std::io::Error::other("the jail did not start"))?;
                (child, Some(jail))
            }
            None => {
                die_with_host(&mut command);
                (command.spawn()?, None)
            }
        };
        let mut child = child;
        let pid = child.id();
        let stderr_tail = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(keep_tail(stderr, stderr_tail.clone()));
        }
        Ok(Self {
            child,
            pid,
            stderr_tail,
            jail,
        })
    }

    /// Whether the process runs in a jail.
    pub fn confined(&self) -> bool {
        self.jail.is_some()
    }

    /// The host port that reaches port `inside` the process listens on: the
    /// jail's relay when jailed, else the port itself.
    pub fn host_port(&self, inside: u16) -> u16 {
        self.jail
            .as_ref()
            .and_then(|j| j.host_port(inside))
            .unwrap_or(inside)
    }

    /// CPU time the jail's processes used so far (`None` unjailed, or
    /// without a CPU accounting controller).
    pub fn cpu_time(&self) -> Option<std::time::Duration> {
        self.jail.as_ref()?.cpu_time()
    }

    /// The process id of the child Karta started, while it runs: in a jail
    /// the waiting parent outside it (see [`HarnessProcess::harness_pid`]).
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The harness's own process id (in the host's pid namespace): in a
    /// jail, the waiting parent's only child, the jail's pid 1.
    pub fn harness_pid(&self) -> Option<u32> {
        let pid = self.pid?;
        if self.jail.is_none() {
            return Some(pid);
        }
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// The last lines the process wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        self.stderr_tail
            .lock()
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    }

    /// Kills the process and everything it started, and reaps it. In a jail
    /// the harness is the waiting parent's child: this returns once it has
    /// died too (its pid namespace with it), so a deleted session has no
    /// process left when the answer goes out.
    pub async fn kill(mut self) {
        let harness = self.harness_pid();
        kill_group(self.pid.take());
        let _ = self.child.kill().await;
        if let Some(jail) = self.jail.as_mut() {
            if let Some(pid) = harness {
                wait_until_dead(pid).await;
            }
            jail.release();
        }
    }
}

impl Drop for HarnessProcess {
    fn drop(&mut self) {
        kill_group(self.pid.take());
    }
}

/// Waits (up to 2 s) until `pid` has exited: gone, or a zombie.
async fn wait_until_dead(pid: u32) {
    for _ in 0..400 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) if !stat.contains(") Z ") && !stat.contains(") X ") => {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            _ => return,
        }
    }
    tracing::warn!("the jailed harness process {pid} is still exiting");
}

fn kill_group(pid: Option<u32>) {
    let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) else {
        return;
    };
    // The child leads its own group (`process_group(0)`): this reaches
    // anything it started too (in a jail, killing the group's leader also
    // ends the pid namespace and everything in it).
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
}

/// Between fork and exec of an unjailed process: ask the kernel to
/// `SIGKILL` the child when its parent dies, and let no descriptor but
/// stdin, stdout and stderr through `exec`, as the jail does (its step 11):
/// besides what the host itself inherited, wasmtime's fork hook `dup2`s a
/// `/proc/self/pagemap` descriptor into every child, which clears its
/// close-on-exec.
#[allow(unsafe_code)]
fn die_with_host(command: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec and makes
    // two system calls.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)?;
            if libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Between fork and exec: the child's nice value, as [`Spawn::nice`] asks.
/// Best effort: a host that may not lower it (see [`may_set_nice`]) has
/// said so when it started, and the process runs at the host's own.
#[allow(unsafe_code)]
fn set_nice(command: &mut Command, nice: i32) {
    // SAFETY: the closure runs in the child between fork and exec and makes
    // one system call.
    unsafe {
        command.pre_exec(move || {
            libc::setpriority(libc::PRIO_PROCESS, 0, nice);
            Ok(())
        });
    }
}

async fn keep_tail(stream: impl AsyncRead + Unpin, tail: Arc<Mutex<String>>) {
    let mut lines = BoundedLines::new(stream, 8 * 1024, STDERR_TAIL_BYTES);
    while let Ok(Some(line)) = lines.next_line().await {
        let line = match line {
            Line::Text(line) => line,
            Line::TooLong { at_least } => format!("[a line of more than {at_least} bytes, cut]"),
        };
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
    // The HOME is the harness's to write: `tmp` is made without following
    // a link it left there.
    crate::safe_fs::SafeDir::create(&session.home)?.create_dirs(Path::new("tmp"))?;
    let mut env = app_env(&session.env);
    env.extend(base_env(&session.home, program));
    if let Some(layer) = &session.access.setup_layer {
        layer.apply(&mut env);
    }
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

    #[tokio::test]
    async fn an_endless_stderr_line_is_cut_and_the_tail_goes_on() {
        let mut stderr = vec![b'e'; 1 << 20];
        stderr.extend_from_slice(b"\nits last words\n");
        let tail = Arc::new(Mutex::new(String::new()));
        keep_tail(&stderr[..], tail.clone()).await;
        let tail = tail.lock().expect("tail").clone();
        assert!(tail.len() <= STDERR_TAIL_BYTES, "{} bytes kept", tail.len());
        assert!(
            tail.starts_with("[a line of more than ") && tail.ends_with(", cut]\nits last words\n"),
            "{tail}"
        );
    }

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
