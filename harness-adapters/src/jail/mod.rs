//! The jail around harness processes: namespaces, a root of its own,
//! Landlock, seccomp, rlimits and cgroups, failing closed.
//!
//! A harness (`claude`, `opencode`) runs what a model chooses — its Bash
//! tool runs anything — so its process is treated as hostile. Its jail:
//!
//! - **pid namespace**: it sees only its own processes and is pid 1 of
//!   them; when it dies, every process it left (a `setsid()` daemon
//!   included) dies with it;
//! - **mount namespace** with a fresh read-only root holding only the
//!   system's programs and libraries, its own package, and the session's
//!   workspace and `HOME` read-write ([`mounts`](self) plans it): no data
//!   dir, no other session, no `/root`, no host `/proc`;
//! - **network namespace** with only a loopback on which the host relays
//!   the gateway's and the MCP server's ports ([`net`]);
//! - **ipc and uts namespaces** (no shared SysV memory, a hostname of its
//!   own);
//! - **no capabilities** (bounding set emptied, securebits locked),
//!   `no_new_privs`, **Landlock** (writes only beneath the session's trees,
//!   TCP only to the relayed ports) as a second wall behind the mounts, and
//!   a **seccomp** deny list ([`seccomp`]);
//! - **rlimits** (no core dumps, open files, file size) and **cgroups**
//!   (memory, process count, CPU time — [`cgroup`]) where the machine has
//!   the controller.
//! - **no descriptor of the host** but the harness's stdin, stdout and
//!   stderr survives its `exec`, whatever the host itself inherited.
//!
//! A jail that cannot be built refuses to start the process (a
//! [`JailError`] naming the step); only the operator's `--no-jail` runs a
//! harness without one. It needs root (or `CAP_SYS_ADMIN`) to create the
//! namespaces.
//!
//! The order of the steps in the child is documented in `child.rs`.

pub mod cgroup;
mod child;
mod mounts;
pub mod net;
pub mod seccomp;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::safe_fs::SafeDir;
use cgroup::Cgroups;
pub use child::Step;
use net::JailNetwork;

/// Limits of one jailed process tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JailLimits {
    /// Memory of the whole tree (cgroup), bytes.
    pub memory_bytes: u64,
    /// Processes and threads of the whole tree (cgroup `pids.max`).
    pub max_processes: u64,
    /// Open files per process (`RLIMIT_NOFILE`).
    pub open_files: u64,
    /// Largest file a process may write (`RLIMIT_FSIZE`), bytes.
    pub file_bytes: u64,
}

impl Default for JailLimits {
    /// Room for a Claude Code or OpenCode process and the tools it runs
    /// (each idles at 200–400 MiB and runs a few dozen threads).
    fn default() -> Self {
        Self {
            memory_bytes: 2 << 30,
            max_processes: 512,
            open_files: 8192,
            file_bytes: 4 << 30,
        }
    }
}

/// What one jailed process may reach.
#[derive(Debug, Clone, Default)]
pub struct JailSpec {
    /// Trees bound read-only besides the system's (the harness's package).
    pub read: Vec<PathBuf>,
    /// Trees bound read-write (the workspace, the `HOME`, …).
    pub write: Vec<PathBuf>,
    /// Paths inside the read-only trees hidden under an empty tmpfs (e.g.
    /// a data dir inside the app's folder).
    pub hidden: Vec<PathBuf>,
    /// The process's `TMPDIR`, bound at `/tmp`; `/dev/shm` is its sibling
    /// `.shm`. `None`: both are made under the first writable tree.
    pub scratch: Option<PathBuf>,
    /// Host loopback ports relayed into the jail at the same numbers.
    pub connect_ports: Vec<u16>,
    /// Ports the process listens on that the host reaches (see
    /// [`crate::process::HarnessProcess::host_port`]).
    pub bind_ports: Vec<u16>,
    /// Limits.
    pub limits: JailLimits,
}

impl JailSpec {
    /// The jail of a harness process for `session`: it reads its own
    /// package (`program`'s `node_modules`, else its directory), writes its
    /// workspace, its `HOME` and `extra_write`, reaches the gateway and the
    /// MCP server, and listens on `bind_ports`.
    pub fn for_session(
        session: &crate::SessionInfo,
        program: &Path,
        extra_write: Vec<PathBuf>,
        bind_ports: Vec<u16>,
        limits: JailLimits,
    ) -> Self {
        let program = std::fs::canonicalize(program).unwrap_or_else(|_| program.to_path_buf());
        let package = program
            .ancestors()
            .find(|a| a.file_name().is_some_and(|n| n == "node_modules"))
            .or_else(|| program.parent())
            .map(Path::to_path_buf);
        let mut write = vec![session.workspace.clone(), session.home.clone()];
        write.extend(extra_write);
        // The app's setup layer, read-only, at the path it was built at.
        let layer = session.access.setup_layer.iter().map(|l| l.home.clone());
        Self {
            read: package.into_iter().chain(layer).collect(),
            write,
            hidden: Vec::new(),
            scratch: Some(session.home.join("tmp")),
            connect_ports: [&session.gateway_url, &session.mcp_url]
                .into_iter()
                .filter_map(|url| crate::process::url_port(url))
                .collect(),
            bind_ports,
            limits,
        }
    }
}

/// Why a jail could not be built. The process is not started.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// Not root: namespaces cannot be created.
    #[error(
        "the jail needs root (CAP_SYS_ADMIN) to create namespaces; run karta as root, or pass --no-jail to run harnesses unconfined"
    )]
    NotPrivileged,
    /// The kernel does not enforce Landlock.
    #[error(
        "this kernel does not enforce Landlock (file and TCP rules); pass --no-jail to run harnesses without the jail"
    )]
    NoLandlock,
    /// The Landlock ruleset could not be made.
    #[error("cannot build the Landlock rules: {0}")]
    LandlockRules(String),
    /// The seccomp filter could not be compiled.
    #[error("cannot build the seccomp filter: {0}")]
    Seccomp(String),
    /// A cgroup could not be created or written.
    #[error("cannot create the jail's cgroups: {0}")]
    Cgroup(std::io::Error),
    /// The network namespace or its relays failed.
    #[error("cannot create the jail's network: {0}")]
    Network(std::io::Error),
    /// The root could not be planned (a path is missing or invalid).
    #[error("cannot plan the jail's root: {0}")]
    Root(std::io::Error),
    /// A step in the child failed.
    #[error("cannot jail the process: {} failed: {source}", step.describe())]
    Step {
        /// The step.
        step: Step,
        /// Its error.
        source: std::io::Error,
    },
}

/// A prepared jail: what the host keeps while the process runs.
#[derive(Debug)]
pub struct Jail {
    network: JailNetwork,
    cgroups: Cgroups,
    /// Read end of the child's report pipe.
    report: Option<OwnedFd>,
    /// Kept open until the child has started (the child writes to it).
    report_write: Option<OwnedFd>,
    /// Directories the child binds by descriptor, until it has started.
    held: Vec<OwnedFd>,
}

impl Jail {
    /// Prepares the jail for `spec` (cgroups, network, the root's plan,
    /// filters) and installs its steps on `command`, whose working
    /// directory inside is `cwd`.
    pub fn prepare(
        spec: &JailSpec,
        cwd: &Path,
        command: &mut tokio::process::Command,
    ) -> Result<Self, JailError> {
        if !privileged() {
            return Err(JailError::NotPrivileged);
        }
        if !landlock_available() {
            return Err(JailError::NoLandlock);
        }
        let scratch = spec
            .scratch
            .clone()
            .or_else(|| spec.write.first().map(|w| w.join(".tmp")))
            .ok_or_else(|| JailError::Root(std::io::Error::other("no writable tree")))?;
        // `tmp` and `.shm` lie in the session's HOME, which the harness
        // writes: made and opened without following links, and bound by
        // descriptor.
        let (home, tmp_name) = match (scratch.parent(), scratch.file_name()) {
            (Some(home), Some(name)) => (home, Path::new(name)),
            _ => {
                return Err(JailError::Root(std::io::Error::other(format!(
                    "{} is no directory in a HOME",
                    scratch.display()
                ))));
            }
        };
        let home = SafeDir::open(home).map_err(JailError::Root)?;
        let mut scratch_dirs = Vec::new();
        for name in [tmp_name, Path::new(".shm")] {
            home.create_dirs(name).map_err(JailError::Root)?;
            scratch_dirs.push(home.open_dir(name).map_err(JailError::Root)?);
        }
        let (tmp, shm) = (scratch.clone(), scratch.with_file_name(".shm"));
        let root = jail_root().map_err(JailError::Root)?;
        let mounts = mounts::MountPlan::new(
            &root,
            &mounts::Layout {
                read: &spec.read,
                write: &spec.write,
                hidden: &spec.hidden,
                tmp: &tmp,
                shm: &shm,
                cwd,
            },
        )
        .map_err(JailError::Root)?;
        let seccomp = seccomp::filters().map_err(|e| JailError::Seccomp(e.to_string()))?;
        let landlock = landlock_rules(spec, &scratch_dirs)
            .map_err(|e| JailError::LandlockRules(e.to_string()))?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let cgroups = Cgroups::create(&id, &spec.limits).map_err(JailError::Cgroup)?;
        for controller in cgroups.missing() {
            tracing::warn!(
                "no {controller} cgroup controller on this machine: a jailed harness runs without that limit"
            );
        }
        let network = JailNetwork::create(&spec.connect_ports, &spec.bind_ports)
            .map_err(JailError::Network)?;
        let (report, report_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| JailError::Root(e.into()))?;
        child::install(
            command,
            child::ChildPlan {
                cgroup_procs: cgroups.join_fds(),
                network: network.namespace().as_raw_fd(),
                mounts,
                rlimits: child::Rlimits {
                    open_files: spec.limits.open_files,
                    file_bytes: spec.limits.file_bytes,
                },
                seccomp,
                landlock: Mutex::new(Some(landlock)),
                report: report_write.as_raw_fd(),
            },
        );
        Ok(Self {
            network,
            cgroups,
            report: Some(report),
            report_write: Some(report_write),
            held: scratch_dirs,
        })
    }

    /// After the spawn: closes the host's copy of the report pipe's write
    /// end and, when the spawn failed, says which step failed.
    pub fn started(&mut self, spawned: std::io::Result<()>) -> Result<(), JailError> {
        self.report_write = None;
        self.held.clear();
        let report = self.report.take();
        let Err(error) = spawned else {
            return Ok(());
        };
        let mut message = [0u8; 5];
        let step = report
            .and_then(|fd| {
                let read = rustix::io::read(&fd, &mut message).ok()?;
                (read == message.len()).then_some(())
            })
            .and_then(|()| Step::from_number(message[0]));
        Err(match step {
            Some(step) => {
                let errno = i32::from_ne_bytes([message[1], message[2], message[3], message[4]]);
                JailError::Step {
                    step,
                    source: std::io::Error::from_raw_os_error(errno),
                }
            }
            None => JailError::Step {
                step: Step::Fork,
                source: error,
            },
        })
    }

    /// The host port reaching `inside`, a port the process listens on.
    pub fn host_port(&self, inside: u16) -> Option<u16> {
        self.network.host_port(inside)
    }

    /// CPU time used by the jail's processes so far (`None` without a CPU
    /// accounting controller).
    pub fn cpu_time(&self) -> Option<Duration> {
        self.cgroups.cpu_time()
    }

    /// Stops the relays and removes the cgroups (once empty).
    pub fn release(&mut self) {
        self.network.shutdown();
        self.cgroups.remove();
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        self.release();
    }
}

/// An empty directory the jail's root tmpfs is mounted on, in each jail's
/// own mount namespace (the host's stays empty). Root's own, not in the
/// world-writable `/tmp`.
fn jail_root() -> std::io::Result<PathBuf> {
    let base = if Path::new("/run").is_dir() {
        PathBuf::from("/run/karta")
    } else {
        std::env::temp_dir().join("karta-run")
    };
    let root = base.join("jail-root");
    std::fs::create_dir_all(&root)?;
    let meta = std::fs::symlink_metadata(&root)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory",
            root.display()
        )));
    }
    Ok(root)
}

/// The Landlock ruleset: the jail's second wall. Reads are bounded by what
/// is mounted; Landlock bounds *writes* to the session's trees (and the
/// device nodes), and TCP to the relayed ports. Rules name host paths: the
/// binds inside are the same inodes.
fn landlock_rules(
    spec: &JailSpec,
    scratch: &[OwnedFd],
) -> Result<landlock::RulesetCreated, landlock::RulesetError> {
    use landlock::{
        ABI, AccessFs, AccessNet, NetPort, PathBeneath, Ruleset, RulesetAttr, RulesetCreatedAttr,
        path_beneath_rules,
    };
    let abi = ABI::V5;
    let mut writable: Vec<PathBuf> = spec.write.clone();
    writable.extend(
        ["null", "zero", "full", "random", "urandom", "tty"]
            .iter()
            .map(|d| Path::new("/dev").join(d))
            .filter(|p| p.exists()),
    );
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_write(abi))?
        .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)?
        .create()?
        .add_rules(path_beneath_rules(&writable, AccessFs::from_write(abi)))?
        .add_rules(scratch.iter().map(|fd| {
            Ok::<_, landlock::RulesetError>(PathBeneath::new(fd, AccessFs::from_write(abi)))
        }))?;
    for port in &spec.connect_ports {
        ruleset = ruleset.add_rule(NetPort::new(*port, AccessNet::ConnectTcp))?;
    }
    for port in &spec.bind_ports {
        ruleset = ruleset.add_rule(NetPort::new(*port, AccessNet::BindTcp))?;
    }
    Ok(ruleset)
}

/// Whether this process may build jails (it runs as root).
pub fn privileged() -> bool {
    rustix::process::geteuid().is_root()
}

/// Whether this kernel enforces Landlock file and TCP rules.
pub fn landlock_available() -> bool {
    use landlock::{ABI, Access, AccessFs, AccessNet, Ruleset, RulesetAttr};
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // Creating (not enforcing) a ruleset in hard-requirement mode fails when
    // the kernel cannot enforce it. The kernel does not change underneath
    // us: asked once.
    *AVAILABLE.get_or_init(|| {
        landlock::Compatible::set_compatibility(
            Ruleset::default(),
            landlock::CompatLevel::HardRequirement,
        )
        .handle_access(AccessFs::from_all(ABI::V5))
        .and_then(|r| r.handle_access(AccessNet::ConnectTcp))
        .and_then(|r| r.create())
        .is_ok()
    })
}
