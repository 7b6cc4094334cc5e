//! The jail's steps in the child, between `fork` and `exec` — the only
//! place in the workspace with `unsafe` system calls besides process
//! spawning.
//!
//! The host process is multi-threaded, so the child must not allocate or
//! take locks another thread may have held at `fork`: everything here was
//! prepared by the host (paths as `CString`s, the seccomp programs, the
//! Landlock ruleset, open `cgroup.procs` files) and the steps only make
//! system calls. Each step has a name; a failing step writes its number and
//! `errno` to a report pipe so the host can say *which* step failed
//! ([`Step`]).
//!
//! Order, and why (Firecracker's jailer does the same dance):
//!
//! 1. **die with the host** (`PR_SET_PDEATHSIG`), first, so nothing below
//!    can outlive a crashed host;
//! 2. **new pid namespace**, then `fork`: `unshare(CLONE_NEWPID)` applies
//!    to children only. The first child stays outside and waits (its exit
//!    status is the harness's; killing it kills the jail, see 4); the
//!    grandchild is pid 1 of the new namespace, and when it dies the kernel
//!    kills everything left in it — a `setsid()` grandchild included;
//! 3. the waiting parent **moves the grandchild into the cgroups** while
//!    the grandchild builds its root (both wait for an RCU grace period;
//!    together they wait for one), and the grandchild waits for that before
//!    going on — every process of the harness is counted and limited;
//! 4. in the grandchild: **die with the waiting parent** again;
//! 5. **join the network namespace** the host prepared (loopback and the
//!    relayed ports only), **new mount, ipc and uts namespaces**;
//! 6. **mounts private** (nothing propagates back to the host), **build
//!    the root** on a tmpfs, **pivot_root** into it and detach the old
//!    root, remount the root read-only; wait until in the cgroups;
//! 7. **hostname**, **working directory**;
//! 8. **rlimits**;
//! 9. **drop every capability** (bounding set, then the sets, with
//!    securebits locked so `exec` cannot give root its capabilities back):
//!    after the mounts, which needed them;
//! 10. **no_new_privs**, then **Landlock** (writes only to the session's
//!     trees, TCP only to the relayed ports) — it must come after the
//!     mounts, which a Landlock domain forbids;
//! 11. **close-on-exec on every descriptor but stdin, stdout and stderr**
//!     (`close_range(3, ~0, CLOSE_RANGE_CLOEXEC)`): the host opens its own
//!     with close-on-exec, but what its parent passed down without it (a
//!     supervisor's socket, a shell's pipe, a jobserver) would otherwise
//!     reach the harness, which could read or write what they name
//!     outside every rule above — and so would the `/proc/self/pagemap`
//!     descriptor that wasmtime's fork hook `dup2`s into every child
//!     (`dup2` clears close-on-exec). Marked rather than closed, so the
//!     report pipe still works until `exec`;
//! 12. **seccomp** last: the steps above use calls it denies.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::Mutex;

use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use seccompiler::BpfProgram;

use super::mounts::{MountOp, MountPlan};

/// A step of building the jail in the child (reported when one fails).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    /// `PR_SET_PDEATHSIG`.
    DieWithHost = 1,
    /// Writing to `cgroup.procs`.
    JoinCgroup,
    /// `unshare(CLONE_NEWPID)`.
    PidNamespace,
    /// `fork` into the pid namespace.
    Fork,
    /// `setns` into the jail's network namespace.
    JoinNetwork,
    /// `unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS)`.
    Namespaces,
    /// Making every mount private.
    PrivateMounts,
    /// Mounting the root tmpfs.
    RootTmpfs,
    /// A directory, file or link of the root.
    RootEntry,
    /// A bind mount.
    Bind,
    /// Mounting `/proc` or a tmpfs.
    Filesystem,
    /// `pivot_root` and detaching the old root.
    PivotRoot,
    /// Remounting the root read-only.
    ReadOnlyRoot,
    /// `sethostname`.
    Hostname,
    /// `chdir` to the workspace.
    WorkingDirectory,
    /// `setrlimit`.
    Rlimits,
    /// Dropping capabilities.
    Capabilities,
    /// `PR_SET_NO_NEW_PRIVS`.
    NoNewPrivileges,
    /// Enforcing the Landlock ruleset.
    Landlock,
    /// Installing the seccomp filters.
    Seccomp,
    /// Marking every descriptor above stderr close-on-exec.
    Descriptors,
}

impl Step {
    /// The step with number `n`, as reported through the pipe.
    pub fn from_number(n: u8) -> Option<Self> {
        use Step::*;
        [
            DieWithHost,
            JoinCgroup,
            PidNamespace,
            Fork,
            JoinNetwork,
            Namespaces,
            PrivateMounts,
            RootTmpfs,
            RootEntry,
            Bind,
            Filesystem,
            PivotRoot,
            ReadOnlyRoot,
            Hostname,
            WorkingDirectory,
            Rlimits,
            Capabilities,
            NoNewPrivileges,
            Landlock,
            Seccomp,
            Descriptors,
        ]
        .into_iter()
        .find(|s| *s as u8 == n)
    }

    /// What the step does, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Step::DieWithHost => "asking to die with the host (PR_SET_PDEATHSIG)",
            Step::JoinCgroup => "joining the jail's cgroups",
            Step::PidNamespace => "creating a pid namespace",
            Step::Fork => "forking into the pid namespace",
            Step::JoinNetwork => "joining the jail's network namespace",
            Step::Namespaces => "creating mount, ipc and uts namespaces",
            Step::PrivateMounts => "making mounts private",
            Step::RootTmpfs => "mounting the jail's root tmpfs",
            Step::RootEntry => "creating a directory, file or link of the root",
            Step::Bind => "bind-mounting a path into the jail",
            Step::Filesystem => "mounting /proc or a tmpfs",
            Step::PivotRoot => "pivot_root into the jail's root",
            Step::ReadOnlyRoot => "remounting the root read-only",
            Step::Hostname => "setting the hostname",
            Step::WorkingDirectory => "entering the workspace",
            Step::Rlimits => "setting rlimits",
            Step::Capabilities => "dropping capabilities",
            Step::NoNewPrivileges => "setting no_new_privs",
            Step::Landlock => "enforcing the Landlock ruleset",
            Step::Seccomp => "installing the seccomp filter",
            Step::Descriptors => "marking inherited descriptors close-on-exec",
        }
    }
}

/// Resource limits set in the child.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rlimits {
    pub open_files: u64,
    pub file_bytes: u64,
}

/// Everything the child needs, prepared by the host.
pub(crate) struct ChildPlan {
    pub cgroup_procs: Vec<RawFd>,
    pub network: RawFd,
    pub mounts: MountPlan,
    pub rlimits: Rlimits,
    pub seccomp: Vec<BpfProgram>,
    pub landlock: Mutex<Option<landlock::RulesetCreated>>,
    /// Write end of the report pipe.
    pub report: RawFd,
}

/// A failed step: reported to the host, then returned.
fn fail(report: RawFd, step: Step, errno: i32) -> std::io::Error {
    let mut message = [0u8; 5];
    message[0] = step as u8;
    message[1..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: writing a stack buffer to a descriptor the host opened for
    // this; a failed write only loses the step's name.
    unsafe {
        libc::write(report, message.as_ptr().cast(), message.len());
    }
    std::io::Error::from_raw_os_error(errno)
}

fn check(report: RawFd, step: Step, result: rustix::io::Result<()>) -> std::io::Result<()> {
    result.map_err(|e| fail(report, step, e.raw_os_error()))
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Installs the jail's steps on `command`.
pub(crate) fn install(command: &mut tokio::process::Command, plan: ChildPlan) {
    // SAFETY: the closure runs in the child between fork and exec. It makes
    // system calls only, on data the host prepared; the one lock (the
    // Landlock ruleset's mutex) was never shared with another thread of the
    // child, which has only this one.
    unsafe {
        command.pre_exec(move || enter(&plan));
    }
}

fn enter(plan: &ChildPlan) -> std::io::Result<()> {
    let report = plan.report;
    // 1. Die with the host.
    check(
        report,
        Step::DieWithHost,
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL)),
    )?;
    // 2. Pid namespace, then fork. The waiting parent moves the grandchild
    // into the cgroups while the grandchild builds its root: a cgroup
    // migration waits for an RCU grace period, and so does detaching the
    // old root — done at the same time, one grace period covers both
    // (BENCHMARKS.md, "jail"). The grandchild runs nothing of the harness
    // before the parent says it is in (the `joined` pipe).
    // SAFETY: CLONE_NEWPID does not touch the descriptor table.
    check(report, Step::PidNamespace, unsafe {
        rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWPID)
    })?;
    let mut joined = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills the two-element array we own.
    if unsafe { libc::pipe2(joined.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(fail(report, Step::JoinCgroup, last_errno()));
    }
    let [joined_read, joined_write] = joined;
    // SAFETY: this child has a single thread; the grandchild only makes
    // system calls before it execs.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(fail(report, Step::Fork, last_errno()));
    }
    if pid > 0 {
        // 3. The waiting parent: join the grandchild to the cgroups, tell
        // it, then wait.
        let answer: &[u8] = match join_cgroups(&plan.cgroup_procs, pid) {
            Ok(()) => b"y",
            Err(errno) => {
                fail(report, Step::JoinCgroup, errno);
                b"n"
            }
        };
        // SAFETY: a write of a static buffer to our own pipe.
        unsafe {
            libc::write(joined_write, answer.as_ptr().cast(), 1);
        }
        wait_and_exit(pid);
    }
    // SAFETY: closing the grandchild's copy of the pipe's write end, so a
    // parent that dies leaves it reading end-of-file, not blocked.
    unsafe {
        libc::close(joined_write);
    }
    // 4. The grandchild, pid 1 of the jail: die with the waiting parent.
    check(
        report,
        Step::DieWithHost,
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL)),
    )?;
    // 5. Namespaces.
    // SAFETY: the descriptor is the host's open namespace file.
    let network = unsafe { BorrowedFd::borrow_raw(plan.network) };
    check(
        report,
        Step::JoinNetwork,
        rustix::thread::move_into_link_name_space(
            network,
            Some(rustix::thread::LinkNameSpaceType::Network),
        ),
    )?;
    // SAFETY: none of these flags touches the descriptor table.
    check(report, Step::Namespaces, unsafe {
        rustix::thread::unshare_unsafe(
            rustix::thread::UnshareFlags::NEWNS
                | rustix::thread::UnshareFlags::NEWIPC
                | rustix::thread::UnshareFlags::NEWUTS,
        )
    })?;
    // 6. The root.
    build_root(report, &plan.mounts)?;
    // In the cgroups before anything else happens.
    let mut answer = [0u8; 1];
    // SAFETY: reading one byte into a stack buffer from our own pipe.
    let read = unsafe { libc::read(joined_read, answer.as_mut_ptr().cast(), 1) };
    if read != 1 || answer[0] != b'y' {
        // The parent reported the failing write already.
        return Err(std::io::Error::from_raw_os_error(libc::EIO));
    }
    // SAFETY: closing our own pipe's read end.
    unsafe {
        libc::close(joined_read);
    }
    // 7. Hostname, working directory.
    check(
        report,
        Step::Hostname,
        rustix::system::sethostname(b"karta"),
    )?;
    check(
        report,
        Step::WorkingDirectory,
        rustix::process::chdir(plan.mounts.cwd.as_c_str()),
    )?;
    // 8. Rlimits.
    set_rlimits(report, plan.rlimits)?;
    // 9. Capabilities.
    drop_capabilities(report)?;
    // 10. no_new_privs, Landlock.
    check(
        report,
        Step::NoNewPrivileges,
        rustix::thread::set_no_new_privs(true),
    )?;
    let ruleset = plan.landlock.lock().ok().and_then(|mut r| r.take());
    if let Some(ruleset) = ruleset {
        match ruleset.restrict_self() {
            Ok(status) if status.ruleset == landlock::RulesetStatus::FullyEnforced => {}
            Ok(_) => return Err(fail(report, Step::Landlock, libc::EOPNOTSUPP)),
            Err(_) => return Err(fail(report, Step::Landlock, libc::EPERM)),
        }
    }
    // 11. Nothing but stdin, stdout and stderr survives the `exec`.
    // SAFETY: marks this process's own descriptors; none is closed.
    let marked =
        unsafe { libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int) };
    if marked != 0 {
        return Err(fail(report, Step::Descriptors, last_errno()));
    }
    // 12. Seccomp.
    for filter in &plan.seccomp {
        if seccompiler::apply_filter(filter).is_err() {
            return Err(fail(report, Step::Seccomp, libc::EPERM));
        }
    }
    Ok(())
}

/// `n` in decimal, formatted without allocating (a stack buffer and its
/// length, as a fixed-capacity vector of digits).
struct Decimal {
    digits: [u8; 10],
    start: usize,
}

impl std::ops::Deref for Decimal {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.digits[self.start..]
    }
}

fn decimal(n: u32) -> Decimal {
    let mut digits = [0u8; 10];
    let mut start = digits.len();
    let mut rest = n;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    Decimal { digits, start }
}

/// Writes `pid` to each `cgroup.procs`; the `errno` of the first failure.
fn join_cgroups(procs: &[RawFd], pid: libc::pid_t) -> Result<(), i32> {
    let text = decimal(pid.unsigned_abs());
    for fd in procs {
        // SAFETY: a write of a stack buffer to a descriptor the host opened.
        let written = unsafe { libc::write(*fd, text.as_ptr().cast(), text.len()) };
        if written != text.len() as isize {
            return Err(last_errno());
        }
    }
    Ok(())
}

/// The first child: close everything (the host waits for its exec-status
/// pipe to close, and the harness's pipes must end with the harness), wait
/// for the jail's pid 1 and exit as it did.
fn wait_and_exit(pid: libc::pid_t) -> ! {
    // Named for `top` and `ps -o comm` (its command line stays the host's:
    // it is a fork of it, sharing its pages).
    let _ = rustix::thread::set_name(c"karta-jail");
    // SAFETY: closing this process's own descriptors; nothing here uses
    // them afterwards.
    unsafe {
        libc::close_range(0, u32::MAX, 0);
    }
    let mut status = 0;
    let code = loop {
        // SAFETY: waiting for our own child into a stack variable.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        if waited == pid {
            if libc::WIFEXITED(status) {
                break libc::WEXITSTATUS(status);
            }
            if libc::WIFSIGNALED(status) {
                break 128 + libc::WTERMSIG(status);
            }
        } else if waited < 0 && last_errno() != libc::EINTR {
            break 1;
        }
    };
    // SAFETY: ends this process without running the host's exit handlers.
    unsafe { libc::_exit(code) }
}

fn build_root(report: RawFd, plan: &MountPlan) -> std::io::Result<()> {
    use rustix::mount::{mount, mount_bind_recursive, mount_change, mount_remount, unmount};
    let private = MountPropagationFlags::PRIVATE | MountPropagationFlags::REC;
    check(report, Step::PrivateMounts, mount_change(c"/", private))?;
    let hardened = MountFlags::NOSUID | MountFlags::NODEV;
    check(
        report,
        Step::RootTmpfs,
        mount(
            c"tmpfs",
            plan.root.as_c_str(),
            c"tmpfs",
            hardened,
            plan.root_options.as_c_str(),
        ),
    )?;
    let mode = rustix::fs::Mode::from_raw_mode(0o755);
    for op in &plan.ops {
        match op {
            MountOp::Dir(path) => match rustix::fs::mkdir(path.as_c_str(), mode) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(fail(report, Step::RootEntry, e.raw_os_error())),
            },
            MountOp::File(path) => {
                let file = rustix::fs::open(
                    path.as_c_str(),
                    rustix::fs::OFlags::CREATE
                        | rustix::fs::OFlags::WRONLY
                        | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::from_raw_mode(0o644),
                )
                .map_err(|e| fail(report, Step::RootEntry, e.raw_os_error()))?;
                drop(file);
            }
            MountOp::Symlink { target, link } => check(
                report,
                Step::RootEntry,
                rustix::fs::symlink(target.as_c_str(), link.as_c_str()),
            )?,
            MountOp::Bind {
                source,
                target,
                writable,
                devices,
            } => {
                check(
                    report,
                    Step::Bind,
                    mount_bind_recursive(source.as_c_str(), target.as_c_str()),
                )?;
                let mut flags = MountFlags::BIND | MountFlags::NOSUID;
                if !writable {
                    flags |= MountFlags::RDONLY;
                }
                if !devices {
                    flags |= MountFlags::NODEV;
                }
                check(
                    report,
                    Step::Bind,
                    mount_remount(target.as_c_str(), flags, c""),
                )?;
            }
            MountOp::BindDirNoFollow { source, target } => {
                let dir = rustix::fs::open(
                    source.as_c_str(),
                    rustix::fs::OFlags::PATH
                        | rustix::fs::OFlags::DIRECTORY
                        | rustix::fs::OFlags::NOFOLLOW
                        | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map_err(|e| fail(report, Step::Bind, e.raw_os_error()))?;
                // `/proc/self/fd/N`, formatted without allocating.
                let mut path = [0u8; 40];
                let prefix = b"/proc/self/fd/";
                path[..prefix.len()].copy_from_slice(prefix);
                let digits = decimal(dir.as_raw_fd().unsigned_abs());
                let end = prefix.len() + digits.len();
                path[prefix.len()..end].copy_from_slice(&digits);
                let path = std::ffi::CStr::from_bytes_until_nul(&path)
                    .map_err(|_| fail(report, Step::Bind, libc::EINVAL))?;
                check(
                    report,
                    Step::Bind,
                    rustix::mount::mount_bind(path, target.as_c_str()),
                )?;
                drop(dir);
                check(
                    report,
                    Step::Bind,
                    mount_remount(
                        target.as_c_str(),
                        MountFlags::BIND | MountFlags::NOSUID | MountFlags::NODEV,
                        c"",
                    ),
                )?;
            }
            MountOp::Proc(target) => check(
                report,
                Step::Filesystem,
                mount(
                    c"proc",
                    target.as_c_str(),
                    c"proc",
                    hardened | MountFlags::NOEXEC,
                    None,
                ),
            )?,
            MountOp::Tmpfs { target, options } => check(
                report,
                Step::Filesystem,
                mount(
                    c"tmpfs",
                    target.as_c_str(),
                    c"tmpfs",
                    MountFlags::NOSUID | MountFlags::NOEXEC,
                    options.as_c_str(),
                ),
            )?,
        }
    }
    // pivot_root(".", ".") stacks the old root on the new one; detaching
    // it leaves only the new root (runc does the same).
    check(
        report,
        Step::PivotRoot,
        rustix::process::chdir(plan.root.as_c_str()),
    )?;
    check(
        report,
        Step::PivotRoot,
        rustix::process::pivot_root(c".", c"."),
    )?;
    check(report, Step::PivotRoot, unmount(c".", UnmountFlags::DETACH))?;
    check(report, Step::PivotRoot, rustix::process::chdir(c"/"))?;
    check(
        report,
        Step::ReadOnlyRoot,
        mount_remount(c"/", MountFlags::BIND | MountFlags::RDONLY | hardened, c""),
    )?;
    Ok(())
}

fn set_rlimits(report: RawFd, limits: Rlimits) -> std::io::Result<()> {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let pairs = [
        // No core dumps: they would hold the harness's memory (keys, the
        // conversation) in the workspace.
        (Resource::Core, 0),
        (Resource::Nofile, limits.open_files),
        (Resource::Fsize, limits.file_bytes),
    ];
    for (resource, value) in pairs {
        check(
            report,
            Step::Rlimits,
            setrlimit(
                resource,
                Rlimit {
                    current: Some(value),
                    maximum: Some(value),
                },
            ),
        )?;
    }
    Ok(())
}

fn drop_capabilities(report: RawFd) -> std::io::Result<()> {
    use rustix::thread::{CapabilitiesSecureBits, CapabilitySet, CapabilitySets};
    // The bounding set first (needs CAP_SETPCAP, dropped below).
    for capability in 0..64 {
        // SAFETY: a prctl with integer arguments.
        let dropped = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, capability, 0, 0, 0) };
        if dropped != 0 && last_errno() != libc::EINVAL {
            return Err(fail(report, Step::Capabilities, last_errno()));
        }
    }
    // Root keeps uid 0 but must not get capabilities back on exec.
    check(
        report,
        Step::Capabilities,
        rustix::thread::set_capabilities_secure_bits(
            CapabilitiesSecureBits::NO_ROOT
                | CapabilitiesSecureBits::NO_ROOT_LOCKED
                | CapabilitiesSecureBits::NO_SETUID_FIXUP
                | CapabilitiesSecureBits::NO_SETUID_FIXUP_LOCKED
                | CapabilitiesSecureBits::KEEP_CAPS_LOCKED,
        ),
    )?;
    check(
        report,
        Step::Capabilities,
        rustix::thread::set_capabilities(
            None,
            CapabilitySets {
                effective: CapabilitySet::empty(),
                permitted: CapabilitySet::empty(),
                inheritable: CapabilitySet::empty(),
            },
        ),
    )?;
    // SAFETY: a prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    Ok(())
}

/// On the calling thread: a new network namespace (the host's namespace
/// thread, see `net.rs`).
pub(crate) fn unshare_network() -> std::io::Result<()> {
    // SAFETY: CLONE_NEWNET does not touch the descriptor table.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
        .map_err(Into::into)
}

/// On the calling thread: enter `namespace` (a network namespace).
pub(crate) fn enter_network(namespace: BorrowedFd<'_>) -> std::io::Result<()> {
    rustix::thread::move_into_link_name_space(
        namespace,
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(Into::into)
}

/// Brings `lo` up in the calling thread's network namespace (a new one
/// starts with it down, and `127.0.0.1` unusable).
pub(crate) fn loopback_up() -> std::io::Result<()> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    // SAFETY: `ifreq` is plain old data; zeroed is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS / SIOCSIFFLAGS read and write the `ifreq` we own.
    unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
