//! Control groups of a jail: a memory limit, a process-count limit, and a
//! CPU-time account (what the jail's work will be metered by).
//!
//! Each controller is used where this machine has it: the v1 hierarchy of
//! that controller when mounted, else the v2 (unified) hierarchy when it
//! offers the controller. A group is created *under the host's own group*
//! of that controller (read from `/proc/self/cgroup`), never at a
//! hard-coded path: in a container that is the only place the host may
//! create one. A controller that is missing is reported, not faked: the
//! jail runs without that limit and [`Cgroups::missing`] says so.
//!
//! The child joins by writing `0` to each group's `cgroup.procs` (opened
//! here, written between `fork` and `exec`), so it is limited before it
//! runs a single instruction of the harness.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::JailLimits;

/// The cgroup of one jail.
#[derive(Debug, Default)]
pub struct Cgroups {
    /// Groups created (removed when the jail ends).
    dirs: Vec<PathBuf>,
    /// `cgroup.procs` of each, for the child to join.
    procs: Vec<OwnedFd>,
    /// Where CPU time is read, and in which format.
    cpu: Option<CpuAccount>,
    /// Controllers this machine lacks.
    missing: Vec<&'static str>,
}

/// The file CPU time is read from, open: each turn reads it at its start,
/// at each model answer and at its end, and one `pread` costs a fraction
/// of an open, a read and a close of a cgroup file.
#[derive(Debug)]
enum CpuAccount {
    /// v1 `cpuacct.usage`: nanoseconds.
    V1(std::fs::File),
    /// v2 `cpu.stat`: `usage_usec`.
    V2(std::fs::File),
}

impl CpuAccount {
    /// The file's text now (a cgroup file is generated again by each read
    /// from offset 0). `cpu.stat` is a few hundred bytes.
    ///
    /// A read that leaves room in the buffer is the whole file: the kernel
    /// fills a read of a cgroup file (a `seq_file`) until it is full or the
    /// text ends. So a turn's reads take one system call each, not two (it
    /// reads this file when it starts, at each model answer and at its end).
    fn read(file: &std::fs::File) -> Option<String> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 4096];
        let mut len = 0;
        while len < buf.len() {
            match file.read_at(&mut buf[len..], len as u64) {
                Ok(0) => break,
                Ok(n) => {
                    len += n;
                    if len < buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        String::from_utf8(buf[..len].to_vec()).ok()
    }
}

/// A hierarchy: its mount point and the host's own group in it.
#[derive(Debug, Clone)]
struct Hierarchy {
    /// `/sys/fs/cgroup/memory` + `/process_api/…`.
    own: PathBuf,
    /// v2 (unified), else v1.
    unified: bool,
}

impl Cgroups {
    /// Creates the groups of jail `name` with `limits`.
    pub fn create(name: &str, limits: &JailLimits) -> std::io::Result<Self> {
        let mut groups = Self::default();
        let group = format!("karta-{name}");
        // Memory.
        match hierarchy("memory") {
            Some(h) => {
                let dir = groups.make(&h, &group)?;
                if h.unified {
                    write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
                    let _ = write(&dir.join("memory.swap.max"), "0");
                } else {
                    write(
                        &dir.join("memory.limit_in_bytes"),
                        &limits.memory_bytes.to_string(),
                    )?;
                }
            }
            None => groups.missing.push("memory"),
        }
        // Processes.
        match hierarchy("pids") {
            Some(h) => {
                let dir = groups.make(&h, &group)?;
                write(&dir.join("pids.max"), &limits.max_processes.to_string())?;
            }
            None => groups.missing.push("pids"),
        }
        // CPU time.
        if let Some(h) = hierarchy("cpuacct") {
            let dir = groups.make(&h, &group)?;
            let file = std::fs::File::open(dir.join("cpuacct.usage"))?;
            groups.cpu = Some(CpuAccount::V1(file));
        } else if let Some(h) = hierarchy("cpu").filter(|h| h.unified) {
            let dir = groups.make(&h, &group)?;
            let file = std::fs::File::open(dir.join("cpu.stat"))?;
            groups.cpu = Some(CpuAccount::V2(file));
        } else {
            groups.missing.push("cpuacct");
        }
        Ok(groups)
    }

    fn make(&mut self, hierarchy: &Hierarchy, group: &str) -> std::io::Result<PathBuf> {
        let dir = hierarchy.own.join(group);
        if self.dirs.contains(&dir) {
            return Ok(dir);
        }
        sweep_stale(&hierarchy.own);
        std::fs::create_dir(&dir)?;
        self.dirs.push(dir.clone());
        let procs = OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))?;
        self.procs.push(OwnedFd::from(procs));
        Ok(dir)
    }

    /// The `cgroup.procs` descriptors the child writes `0` to.
    pub(crate) fn join_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// Controllers this machine lacks (their limit does not apply).
    pub fn missing(&self) -> &[&'static str] {
        &self.missing
    }

    /// CPU time used by every process of the jail so far.
    pub fn cpu_time(&self) -> Option<Duration> {
        match self.cpu.as_ref()? {
            CpuAccount::V1(file) => {
                let nanos: u64 = CpuAccount::read(file)?.trim().parse().ok()?;
                Some(Duration::from_nanos(nanos))
            }
            CpuAccount::V2(file) => {
                let stat = CpuAccount::read(file)?;
                let micros: u64 = stat
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))?
                    .trim()
                    .parse()
                    .ok()?;
                Some(Duration::from_micros(micros))
            }
        }
    }

    /// Removes the groups once their processes are gone. A group whose
    /// processes are still dying is retried for a few seconds on a thread
    /// of its own (the kernel refuses to remove a group with members).
    pub fn remove(&mut self) {
        self.procs.clear();
        self.cpu = None;
        let dirs = std::mem::take(&mut self.dirs);
        if dirs.is_empty() {
            return;
        }
        let remaining: Vec<PathBuf> = dirs
            .into_iter()
            .filter(|d| std::fs::remove_dir(d).is_err() && d.exists())
            .collect();
        if remaining.is_empty() {
            return;
        }
        let _ = std::thread::Builder::new()
            .name("karta-cgroup-reaper".into())
            .spawn(move || {
                for _ in 0..100 {
                    std::thread::sleep(Duration::from_millis(50));
                    if remaining
                        .iter()
                        .all(|d| std::fs::remove_dir(d).is_ok() || !d.exists())
                    {
                        return;
                    }
                }
                tracing::warn!("cgroups left behind (processes still in them): {remaining:?}");
            });
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        self.remove();
    }
}

fn write(path: &Path, value: &str) -> std::io::Result<()> {
    let mut file = OpenOptions::new().write(true).open(path)?;
    file.write_all(value.as_bytes())
}

/// Groups of jails whose host died (`karta-*`, empty): removed once per
/// hierarchy. Groups with members are refused by the kernel and stay.
fn sweep_stale(parent: &Path) {
    static SWEPT: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let Ok(mut swept) = SWEPT.lock() else {
        return;
    };
    if swept.iter().any(|p| p == parent) {
        return;
    }
    swept.push(parent.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(parent) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("karta-") {
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }
}

/// Where `controller` can be used: its v1 hierarchy, else the unified one
/// when it offers the controller.
fn hierarchy(controller: &str) -> Option<Hierarchy> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut unified_mount = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = left.split(' ').nth(4)?;
        let mut right = right.split(' ');
        let fstype = right.next()?;
        let super_options = right.nth(1).unwrap_or_default();
        if fstype == "cgroup" && super_options.split(',').any(|o| o == controller) {
            // The host's own group in this hierarchy.
            let path = own.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                controllers
                    .split(',')
                    .any(|c| c == controller)
                    .then(|| path.to_owned())
            })?;
            return Some(Hierarchy {
                own: join_cgroup(mount_point, &path),
                unified: false,
            });
        }
        if fstype == "cgroup2" {
            unified_mount = Some(mount_point.to_owned());
        }
    }
    let mount_point = unified_mount?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?.to_owned();
    let own_dir = join_cgroup(&mount_point, &path);
    // A controller is usable by a child group when enabled in the parent's
    // subtree_control.
    let enabled = std::fs::read_to_string(own_dir.join("cgroup.subtree_control")).ok()?;
    enabled
        .split_whitespace()
        .any(|c| c == controller)
        .then_some(Hierarchy {
            own: own_dir,
            unified: true,
        })
}

fn join_cgroup(mount_point: &str, path: &str) -> PathBuf {
    let mut dir = PathBuf::from(mount_point);
    for part in path.split('/').filter(|p| !p.is_empty() && *p != "..") {
        dir.push(part);
    }
    dir
}

/// What `karta doctor` says about control groups: which controllers a jail
/// gets and where.
pub fn describe() -> String {
    ["memory", "pids", "cpuacct"]
        .iter()
        .map(|c| match hierarchy(c) {
            Some(h) => format!(
                "{c}: {} ({})",
                h.own.display(),
                if h.unified { "v2" } else { "v1" }
            ),
            None => format!("{c}: missing (no limit)"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}
