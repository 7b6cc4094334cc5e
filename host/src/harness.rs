//! Choosing the harness that runs an app's turns, and what `karta doctor`
//! reports about this machine.
//!
//! The app asks for a harness (its folder, or `karta.toml` `harness`); the
//! host runs it when its binary is installed and falls back to `builtin`
//! with a [`Selection::notice`] saying why when it is not. Binaries are found
//! in this order:
//!
//! 1. `KARTA_CLAUDE_BIN` / `KARTA_OPENCODE_BIN`;
//! 2. `harnesses/node_modules/.bin/` under the working directory (where
//!    `scripts/install-harnesses.sh` puts the pinned versions);
//! 3. `PATH`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use karta_harness::Harness;
use karta_harness::claude_code::{ClaudeCodeConfig, ClaudeCodeHarness};
use karta_harness::http::HttpClient;
use karta_harness::opencode::{OpencodeConfig, OpencodeHarness};
use karta_harness::process::{JailLimits, find_on_path, is_executable};

use crate::app::HarnessKind;

/// The Claude Code version Karta is tested with.
pub const CLAUDE_CODE_VERSION: &str = "2.1.332";
/// The OpenCode version Karta is tested with.
pub const OPENCODE_VERSION: &str = "1.18.33";

/// Where the harness binaries are, when installed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HarnessBinaries {
    /// The `claude` CLI.
    pub claude: Option<PathBuf>,
    /// The `opencode` binary.
    pub opencode: Option<PathBuf>,
}

impl HarnessBinaries {
    /// Finds the binaries (see the module docs for the order).
    pub fn locate() -> Self {
        let path = std::env::var("PATH").unwrap_or_default();
        let local = PathBuf::from("harnesses/node_modules/.bin");
        let find = |var: &str, name: &str| {
            if let Some(explicit) = std::env::var_os(var).filter(|v| !v.is_empty()) {
                // Named explicitly: that or nothing (a wrong path is "not
                // installed", not a silent fallback to another binary).
                return Some(PathBuf::from(explicit)).filter(|p| is_executable(p));
            }
            let candidate = local.join(name);
            if is_executable(&candidate) {
                return std::fs::canonicalize(candidate).ok();
            }
            find_on_path(name, &path)
        };
        Self {
            claude: find("KARTA_CLAUDE_BIN", "claude"),
            opencode: find("KARTA_OPENCODE_BIN", "opencode"),
        }
    }

    /// The binary for `kind` (`None` for builtin or when missing).
    pub fn for_kind(&self, kind: HarnessKind) -> Option<&Path> {
        match kind {
            HarnessKind::Builtin => None,
            HarnessKind::ClaudeCode => self.claude.as_deref(),
            HarnessKind::Opencode => self.opencode.as_deref(),
        }
    }
}

/// How to install the harness `kind`, for messages.
pub fn install_hint(kind: HarnessKind) -> String {
    match kind {
        HarnessKind::Builtin => String::new(),
        HarnessKind::ClaudeCode => format!(
            "install it with `scripts/install-harnesses.sh` (or `npm install @anthropic-ai/claude-code@{CLAUDE_CODE_VERSION}`) or set KARTA_CLAUDE_BIN"
        ),
        HarnessKind::Opencode => format!(
            "install it with `scripts/install-harnesses.sh` (or `npm install opencode-ai@{OPENCODE_VERSION}`) or set KARTA_OPENCODE_BIN"
        ),
    }
}

/// The harness chosen for an app.
pub struct Selection {
    /// The process harness, or `None` for the builtin loop.
    pub harness: Option<Arc<dyn Harness>>,
    /// What the app asked for.
    pub asked: HarnessKind,
    /// Why the app does not get what it asked for, when it does not.
    pub notice: Option<String>,
}

/// Picks the harness for an app that asks for `asked`.
pub fn select(
    asked: HarnessKind,
    binaries: &HarnessBinaries,
    idle_timeout: Duration,
    http: &HttpClient,
    jail: Option<JailLimits>,
    nice: Option<i32>,
) -> Selection {
    let harness: Option<Arc<dyn Harness>> = match asked {
        HarnessKind::Builtin => None,
        HarnessKind::ClaudeCode => binaries.claude.clone().map(|program| {
            Arc::new(ClaudeCodeHarness::new(ClaudeCodeConfig {
                program,
                idle_timeout,
                jail,
                nice,
            })) as Arc<dyn Harness>
        }),
        HarnessKind::Opencode => binaries.opencode.clone().map(|program| {
            Arc::new(OpencodeHarness::new(OpencodeConfig {
                program,
                idle_timeout,
                client: http.clone(),
                jail,
                nice,
            })) as Arc<dyn Harness>
        }),
    };
    let notice = (asked != HarnessKind::Builtin && harness.is_none()).then(|| {
        format!(
            "the app asks for the {} harness, but its binary is not installed; using the builtin harness ({})",
            asked.as_str(),
            install_hint(asked)
        )
    });
    Selection {
        harness,
        asked,
        notice,
    }
}

/// The nice value harness processes get for a host configured with
/// `wanted` (see [`karta_harness::process::DEFAULT_HARNESS_NICE`]): `None`
/// for 0, or when this process may not give it (then a warning, at each
/// app's load: loads are rare and each probe is one short-lived thread).
pub fn harness_nice(wanted: i32) -> Option<i32> {
    if wanted == 0 {
        return None;
    }
    if karta_harness::process::may_set_nice(wanted) {
        return Some(wanted);
    }
    tracing::warn!(
        "harness processes run at the host's priority: nice {wanted} needs CAP_SYS_NICE \
         (or an RLIMIT_NICE that allows it); drop `--harness-nice` to silence this"
    );
    None
}

/// The version a harness binary reports (`--version`), or why it did not.
pub async fn binary_version(program: &Path) -> Result<String, String> {
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(program)
            .arg("--version")
            .env_clear()
            .env("HOME", std::env::temp_dir())
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| "`--version` did not answer within 20 s".to_owned())?
    .map_err(|e| format!("cannot run it: {e}"))?;
    if !output.status.success() {
        return Err(format!("`--version` failed ({})", output.status));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// One isolation feature of this machine and whether it is usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailFeature {
    /// Its name.
    pub name: &'static str,
    /// Whether the kernel offers it.
    pub available: bool,
    /// What was found.
    pub detail: String,
}

/// The isolation features the kernel offers (namespaces, Landlock, seccomp,
/// cgroups), read from `/proc` and `/sys` without changing anything.
pub fn jail_features() -> Vec<JailFeature> {
    let mut features = Vec::new();
    for ns in ["user", "mnt", "pid", "net", "ipc", "uts"] {
        let path = format!("/proc/self/ns/{ns}");
        let available = Path::new(&path).exists();
        features.push(JailFeature {
            name: match ns {
                "user" => "user namespaces",
                "mnt" => "mount namespaces",
                "pid" => "pid namespaces",
                "net" => "network namespaces",
                "ipc" => "ipc namespaces",
                _ => "uts namespaces",
            },
            available,
            detail: if available { path } else { "absent".into() },
        });
    }
    let landlock = karta_harness::process::landlock_available();
    features.push(JailFeature {
        name: "landlock",
        available: landlock,
        detail: if landlock {
            "file-write and TCP rules enforced (the jail's second wall)".into()
        } else {
            "not enforced by this kernel: the jail refuses to start (--no-jail to run unconfined)"
                .into()
        },
    });
    let root = karta_harness::jail::privileged();
    features.push(JailFeature {
        name: "root",
        available: root,
        detail: if root {
            "namespaces and cgroups can be created".into()
        } else {
            "not root: the jail refuses to start (--no-jail to run unconfined)".into()
        },
    });
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let seccomp = status.lines().any(|l| l.starts_with("Seccomp:"));
    features.push(JailFeature {
        name: "seccomp",
        available: seccomp,
        detail: if seccomp {
            format!(
                "{} system calls denied to jailed processes",
                karta_harness::jail::seccomp::denied_count()
            )
        } else {
            "absent".into()
        },
    });
    let cgroups = karta_harness::jail::cgroup::describe();
    features.push(JailFeature {
        name: "cgroups",
        available: !cgroups.contains("missing"),
        detail: cgroups,
    });
    features
}
