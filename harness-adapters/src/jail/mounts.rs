//! The jail's file system, planned in the host and carried out in the child.
//!
//! The child sees a fresh, read-only `tmpfs` root holding only:
//!
//! - read-only binds of what a harness needs to run: `/usr` (and the
//!   merged-`/usr` links `/bin`, `/lib`, `/lib64`, `/sbin` recreated as
//!   links), a short list of `/etc` files (no `shadow`, no keys), and the
//!   harness's own package;
//! - read-write binds of the session's workspace and `HOME` (at the same
//!   paths as outside, so paths in configs stay true), with `/tmp` and
//!   `/dev/shm` bound from directories in that `HOME` (a session's scratch
//!   space counts against its own directory, and no two sessions share it);
//! - a `/dev` with only `null`, `zero`, `full`, `random`, `urandom` and
//!   `tty`, and a `/proc` of the jail's own pid namespace.
//!
//! Nothing of the data dir, other sessions, the host's home or its keys is
//! mounted, so nothing of them can be named from inside.
//!
//! Every path is turned into a `CString` here, in the host: the child runs
//! between `fork` and `exec` of a multi-threaded process and must not
//! allocate (see `child.rs`).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// `/etc` entries a harness needs (user names, name resolution, time zone,
/// TLS roots, the dynamic loader's cache, `alternatives` links for tools
/// such as `awk`). Missing ones are skipped.
const ETC_ENTRIES: &[&str] = &[
    "passwd",
    "group",
    "hosts",
    "host.conf",
    "resolv.conf",
    "nsswitch.conf",
    "gai.conf",
    "localtime",
    "timezone",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "alternatives",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "mime.types",
    "protocols",
    "services",
    "bash.bashrc",
    "profile",
    "inputrc",
    "debian_version",
    "os-release",
];

/// Top-level system trees bound read-only (or recreated as links when they
/// are links, as on merged-`/usr` systems).
const SYSTEM_TREES: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32",
];

/// Device nodes bound into the jail's `/dev`.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// One step of building the root, in order.
#[derive(Debug)]
pub(crate) enum MountOp {
    /// `mkdir` (an existing directory is fine).
    Dir(CString),
    /// An empty file to bind a file onto.
    File(CString),
    /// A symbolic link `link -> target`.
    Symlink {
        /// What the link points to.
        target: CString,
        /// The link, under the new root.
        link: CString,
    },
    /// A recursive bind mount, then a remount with the right flags.
    Bind {
        /// The host path.
        source: CString,
        /// Under the new root.
        target: CString,
        /// Read-write (else read-only).
        writable: bool,
        /// Device nodes stay usable (only for `/dev` entries).
        devices: bool,
    },
    /// A fresh `proc` for the jail's pid namespace.
    Proc(CString),
    /// A writable bind of a directory in a tree the harness writes: opened
    /// in the child with `O_NOFOLLOW` (a link put in its place since the
    /// host checked it fails the step) and bound through its descriptor.
    BindDirNoFollow {
        /// The host path (its parent is the host's; its last component may
        /// be the harness's).
        source: CString,
        /// Under the new root.
        target: CString,
    },
    /// A `tmpfs` with the given options.
    Tmpfs {
        /// Under the new root.
        target: CString,
        /// `mode=…,size=…`.
        options: CString,
    },
}

/// The whole plan: where the new root is mounted and what goes in it.
#[derive(Debug)]
pub(crate) struct MountPlan {
    /// An empty host directory the child mounts its root `tmpfs` on (only in
    /// its own mount namespace: the host never sees it used).
    pub root: CString,
    /// The root `tmpfs`'s options.
    pub root_options: CString,
    /// The steps, in order.
    pub ops: Vec<MountOp>,
    /// The working directory, inside.
    pub cwd: CString,
}

/// What to put in the jail.
pub(crate) struct Layout<'a> {
    /// Extra trees bound read-only (the harness's package).
    pub read: &'a [PathBuf],
    /// Trees bound read-write (workspace, `HOME`, …).
    pub write: &'a [PathBuf],
    /// Paths hidden under an empty tmpfs, after the read-only binds.
    pub hidden: &'a [PathBuf],
    /// Bound at `/tmp`: a directory in the session's `HOME`, which the
    /// harness writes (made by the host without following links, bound by
    /// the child without following them either).
    pub tmp: &'a Path,
    /// Bound at `/dev/shm`, the same way.
    pub shm: &'a Path,
    /// The working directory.
    pub cwd: &'a Path,
}

/// Turns a path into a C string, refusing interior NULs.
pub(crate) fn c_path(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} holds a NUL byte", path.display()),
        )
    })
}

impl MountPlan {
    /// Plans the root for `layout`, to be mounted on `root`.
    pub(crate) fn new(root: &Path, layout: &Layout<'_>) -> std::io::Result<Self> {
        let mut plan = Planner {
            root: root.to_path_buf(),
            ops: Vec::new(),
            made: std::collections::BTreeSet::new(),
        };
        for tree in SYSTEM_TREES {
            let tree = Path::new(tree);
            match std::fs::symlink_metadata(tree) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    let target = std::fs::read_link(tree)?;
                    plan.symlink(&target, tree)?;
                }
                Ok(meta) if meta.is_dir() => plan.bind(tree, tree, false, false)?,
                _ => {}
            }
        }
        for entry in ETC_ENTRIES {
            let path = Path::new("/etc").join(entry);
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    let target = std::fs::read_link(&path)?;
                    plan.symlink(&target, &path)?;
                }
                Ok(meta) if meta.is_dir() || meta.is_file() => {
                    plan.bind(&path, &path, false, false)?;
                }
                _ => {}
            }
        }
        // `/tmp` before the session's trees: a data dir under `/tmp` (tests
        // make them there) must stay visible, not be hidden by this mount.
        plan.bind_descriptor(layout.tmp, Path::new("/tmp"))?;
        // A read-only tree inside a hidden one (an app's setup layer in a
        // data dir that lies in the app's folder) is bound after the tmpfs
        // that hides the rest, or the tmpfs would hide it too.
        let (late, early): (Vec<&PathBuf>, Vec<&PathBuf>) = layout
            .read
            .iter()
            .partition(|tree| layout.hidden.iter().any(|h| tree.starts_with(h)));
        for tree in early {
            plan.bind(tree, tree, false, false)?;
        }
        for path in layout.hidden {
            if path.is_dir() {
                plan.tmpfs(path, "mode=0755,size=64k")?;
            }
        }
        for tree in late {
            plan.bind(tree, tree, false, false)?;
        }
        for tree in layout.write {
            plan.bind(tree, tree, true, false)?;
        }
        // `/dev`: a small tmpfs with a handful of nodes, not the host's.
        plan.tmpfs(Path::new("/dev"), "mode=0755,size=64k")?;
        for device in DEVICES {
            let path = Path::new("/dev").join(device);
            if path.exists() {
                plan.bind(&path, &path, true, true)?;
            }
        }
        for (link, target) in [
            ("/dev/fd", "/proc/self/fd"),
            ("/dev/stdin", "/proc/self/fd/0"),
            ("/dev/stdout", "/proc/self/fd/1"),
            ("/dev/stderr", "/proc/self/fd/2"),
        ] {
            plan.symlink(Path::new(target), Path::new(link))?;
        }
        plan.bind_descriptor(layout.shm, Path::new("/dev/shm"))?;
        plan.dir(Path::new("/proc"))?;
        let proc_target = plan.inside(Path::new("/proc"))?;
        plan.ops.push(MountOp::Proc(proc_target));
        Ok(Self {
            root: c_path(root)?,
            root_options: CString::new("mode=0755,size=1m").map_err(std::io::Error::other)?,
            ops: plan.ops,
            cwd: c_path(layout.cwd)?,
        })
    }
}

struct Planner {
    root: PathBuf,
    ops: Vec<MountOp>,
    made: std::collections::BTreeSet<PathBuf>,
}

impl Planner {
    /// `path` (absolute, as seen inside) under the new root.
    fn inside(&self, path: &Path) -> std::io::Result<CString> {
        c_path(&self.join(path))
    }

    fn join(&self, path: &Path) -> PathBuf {
        let mut joined = self.root.clone();
        for component in path.components() {
            if let Component::Normal(part) = component {
                joined.push(part);
            }
        }
        joined
    }

    /// `mkdir -p` of `path` inside, each directory once.
    fn dir(&mut self, path: &Path) -> std::io::Result<()> {
        let mut partial = PathBuf::from("/");
        for component in path.components() {
            match component {
                Component::Normal(part) => partial.push(part),
                Component::RootDir => continue,
                _ => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("{} is not a plain absolute path", path.display()),
                    ));
                }
            }
            if self.made.insert(partial.clone()) {
                let target = self.inside(&partial)?;
                self.ops.push(MountOp::Dir(target));
            }
        }
        Ok(())
    }

    fn parent_dirs(&mut self, path: &Path) -> std::io::Result<()> {
        match path.parent() {
            Some(parent) if parent != Path::new("/") => self.dir(parent),
            _ => Ok(()),
        }
    }

    fn bind(
        &mut self,
        source: &Path,
        target: &Path,
        writable: bool,
        devices: bool,
    ) -> std::io::Result<()> {
        // Canonical on the host side: the source is resolved by the host,
        // now, never by the child through a link someone planted later.
        let source = std::fs::canonicalize(source)?;
        if source.is_dir() {
            self.dir(target)?;
        } else {
            self.parent_dirs(target)?;
            let inside = self.inside(target)?;
            if self.made.insert(target.to_path_buf()) {
                self.ops.push(MountOp::File(inside));
            }
        }
        self.ops.push(MountOp::Bind {
            source: c_path(&source)?,
            target: self.inside(target)?,
            writable,
            devices,
        });
        Ok(())
    }

    /// A writable bind of `source`, a directory the harness could replace
    /// with a link: not resolved here (see [`MountOp::BindDirNoFollow`]).
    fn bind_descriptor(&mut self, source: &Path, target: &Path) -> std::io::Result<()> {
        self.dir(target)?;
        self.ops.push(MountOp::BindDirNoFollow {
            source: c_path(source)?,
            target: self.inside(target)?,
        });
        Ok(())
    }

    fn symlink(&mut self, target: &Path, link: &Path) -> std::io::Result<()> {
        self.parent_dirs(link)?;
        self.made.insert(link.to_path_buf());
        self.ops.push(MountOp::Symlink {
            target: c_path(target)?,
            link: self.inside(link)?,
        });
        Ok(())
    }

    fn tmpfs(&mut self, target: &Path, options: &str) -> std::io::Result<()> {
        self.dir(target)?;
        self.ops.push(MountOp::Tmpfs {
            target: self.inside(target)?,
            options: CString::new(options).map_err(std::io::Error::other)?,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_binds_the_session_and_the_system_but_nothing_else() {
        let base = std::env::temp_dir().join(format!("karta-plan-{}", std::process::id()));
        let (ws, home) = (base.join("ws"), base.join("home"));
        for dir in [&ws, &home, &home.join("tmp"), &home.join(".shm")] {
            std::fs::create_dir_all(dir).expect("mkdir");
        }
        let plan = MountPlan::new(
            Path::new("/run/karta-root"),
            &Layout {
                read: &[],
                write: &[ws.clone(), home.clone()],
                hidden: &[],
                tmp: &home.join("tmp"),
                shm: &home.join(".shm"),
                cwd: &ws,
            },
        )
        .expect("plan");
        let binds: Vec<(String, bool)> = plan
            .ops
            .iter()
            .filter_map(|op| match op {
                MountOp::Bind {
                    target, writable, ..
                } => Some((target.to_string_lossy().into_owned(), *writable)),
                MountOp::BindDirNoFollow { target, .. } => {
                    Some((target.to_string_lossy().into_owned(), true))
                }
                _ => None,
            })
            .collect();
        let writable: Vec<&str> = binds
            .iter()
            .filter(|(_, w)| *w)
            .map(|(t, _)| t.as_str())
            .filter(|t| !t.starts_with("/run/karta-root/dev/") || t.ends_with("/shm"))
            .collect();
        let ws_inside = format!("/run/karta-root{}", ws.display());
        let home_inside = format!("/run/karta-root{}", home.display());
        assert_eq!(
            writable,
            [
                "/run/karta-root/tmp",
                ws_inside.as_str(),
                home_inside.as_str(),
                "/run/karta-root/dev/shm",
            ]
        );
        assert!(binds.iter().any(|(t, w)| t == "/run/karta-root/usr" && !w));
        assert!(
            !binds.iter().any(|(t, _)| t.ends_with("/etc/shadow")),
            "{binds:?}"
        );
        let _ = std::fs::remove_dir_all(base);
    }

    #[test]
    fn a_read_tree_inside_a_hidden_one_is_bound_after_the_tmpfs() {
        let base = std::env::temp_dir().join(format!("karta-plan-late-{}", std::process::id()));
        let app = base.join("app");
        let data = app.join(".data");
        let layer = data.join("setup/abc/home");
        let home = data.join("homes/s1");
        for dir in [&layer, &home.join("tmp"), &home.join(".shm")] {
            std::fs::create_dir_all(dir).expect("mkdir");
        }
        let plan = MountPlan::new(
            Path::new("/run/karta-root"),
            &Layout {
                read: &[layer.clone(), app.clone()],
                write: std::slice::from_ref(&home),
                hidden: std::slice::from_ref(&data),
                tmp: &home.join("tmp"),
                shm: &home.join(".shm"),
                cwd: &home,
            },
        )
        .expect("plan");
        let position = |wanted: &Path| {
            let wanted = format!("/run/karta-root{}", wanted.display());
            plan.ops
                .iter()
                .position(|op| match op {
                    MountOp::Bind { target, .. } | MountOp::Tmpfs { target, .. } => {
                        target.to_string_lossy() == wanted
                    }
                    _ => false,
                })
                .expect("planned")
        };
        assert!(position(&app) < position(&data), "the app, then the tmpfs");
        assert!(
            position(&data) < position(&layer),
            "the layer after the tmpfs that hides the data dir"
        );
        let _ = std::fs::remove_dir_all(base);
    }
}
