//! What a plugin is allowed to use: its limits and capabilities.
//!
//! A [`PluginGrant`] is exactly what an app's `karta.toml` holds for one
//! plugin, so the CLI, the app loader and tests all describe plugins the same
//! way:
//!
//! ```toml
//! [[plugins]]
//! path = "plugins/units.wasm"
//! workspace = "read-only"            # none (default) | read-only | read-write
//! allowed_hosts = ["api.example.com", "*.example.org", "127.0.0.1:8080"]
//!
//! [plugins.limits]
//! fuel = 1_000_000_000               # deterministic work budget per call
//! memory_mib = 64                    # linear memory cap per call
//! timeout_ms = 5_000                 # wall clock per call
//! max_output_bytes = 1_048_576       # size of the JSON a tool may return
//! ```
//!
//! Everything is denied unless listed: no workspace, no hosts.

use serde::{Deserialize, Serialize};

/// Limits and capabilities of one plugin. The default grants nothing but
/// logging, with [`Limits::default`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginGrant {
    /// Per-call resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// Whether the plugin sees the session workspace, and how.
    #[serde(default)]
    pub workspace: WorkspaceAccess,
    /// Hosts the plugin may send HTTP requests to: `name`, `name:port`, or
    /// `*.domain` for any subdomain. Empty denies all outbound HTTP.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

/// Per-call limits. Every call gets a fresh instance with these budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Fuel: the deterministic work budget (roughly one unit per wasm
    /// instruction). The same call on the same input always uses the same
    /// fuel, which is why it doubles as the cost cap.
    pub fuel: u64,
    /// Cap on the instance's linear memory, in MiB.
    pub memory_mib: u32,
    /// Wall-clock deadline for the call, in milliseconds, including time spent
    /// in host imports such as HTTP.
    pub timeout_ms: u64,
    /// Largest output, in bytes, a tool may return.
    pub max_output_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 1_000_000_000,
            memory_mib: 64,
            timeout_ms: 10_000,
            max_output_bytes: 1024 * 1024,
        }
    }
}

impl Limits {
    /// The memory cap in bytes.
    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.memory_mib) * 1024 * 1024
    }
}

/// How a plugin may touch the session workspace (mounted at `/workspace`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkspaceAccess {
    /// No file system at all.
    #[default]
    None,
    /// Read files and list directories.
    ReadOnly,
    /// Read, create, write and remove.
    ReadWrite,
}

impl PluginGrant {
    /// Whether this grant lets a request reach `host` on `port`.
    ///
    /// Matching is exact and case-insensitive on the host name; an entry
    /// without a port allows any port, `*.example.com` allows subdomains of
    /// `example.com` (not `example.com` itself).
    pub fn allows_host(&self, host: &str, port: u16) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allowed_hosts.iter().any(|entry| {
            let entry = entry.trim().to_ascii_lowercase();
            let (pattern, entry_port) = split_port(&entry);
            if entry_port.is_some_and(|p| p != port) {
                return false;
            }
            match pattern.strip_prefix("*.") {
                Some(domain) => host
                    .strip_suffix(domain)
                    .is_some_and(|prefix| prefix.ends_with('.') && prefix.len() > 1),
                None => pattern == host,
            }
        })
    }
}

/// Splits `host:port` (or `[v6]:port`) into the host and the port, if any.
fn split_port(entry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = entry.strip_prefix('[') {
        // [::1]:8080 or [::1]
        return match rest.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (entry, None),
        };
    }
    match entry.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(port) => (host, Some(port)),
            Err(_) => (entry, None),
        },
        _ => (entry, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(hosts: &[&str]) -> PluginGrant {
        PluginGrant {
            allowed_hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            ..PluginGrant::default()
        }
    }

    #[test]
    fn nothing_is_allowed_by_default() {
        assert!(!PluginGrant::default().allows_host("example.com", 443));
    }

    #[test]
    fn hosts_match_exactly_with_optional_ports() {
        let g = grant(&["API.example.com", "127.0.0.1:8080", "[::1]:9000"]);
        assert!(g.allows_host("api.example.com", 443));
        assert!(g.allows_host("api.example.com.", 80));
        assert!(!g.allows_host("example.com", 443));
        assert!(!g.allows_host("evil-api.example.com", 443));
        assert!(g.allows_host("127.0.0.1", 8080));
        assert!(!g.allows_host("127.0.0.1", 8081));
        assert!(g.allows_host("::1", 9000));
        assert!(!g.allows_host("::1", 9001));
    }

    #[test]
    fn wildcards_cover_subdomains_only() {
        let g = grant(&["*.example.org"]);
        assert!(g.allows_host("a.example.org", 443));
        assert!(g.allows_host("a.b.example.org", 443));
        assert!(!g.allows_host("example.org", 443));
        assert!(!g.allows_host("badexample.org", 443));
    }

    #[test]
    fn grants_read_from_toml_shaped_json() {
        let g: PluginGrant = serde_json::from_value(serde_json::json!({
            "workspace": "read-only",
            "allowed_hosts": ["x.test"],
            "limits": {"fuel": 5, "memory_mib": 2}
        }))
        .expect("valid grant");
        assert_eq!(g.workspace, WorkspaceAccess::ReadOnly);
        assert_eq!(g.limits.fuel, 5);
        assert_eq!(g.limits.timeout_ms, Limits::default().timeout_ms);
        let bad = serde_json::from_value::<PluginGrant>(serde_json::json!({"fuell": 1}));
        assert!(bad.is_err());
    }
}
