//! What the host counts, for `GET /metrics` (Prometheus text format).
//!
//! | metric | kind | labels |
//! | --- | --- | --- |
//! | `karta_turns_total` | counter | `harness`, `outcome` (completed, denied, cancelled, error) |
//! | `karta_turn_duration_seconds` | histogram | `harness` |
//! | `karta_turn_host_seconds` | histogram | `harness`, `phase` (`start`: message accepted → handed to the harness; `end`: harness returned → terminal event saved, flushed and published) |
//! | `karta_tool_calls_total` | counter | `kind` (`plugin`, `skill`: the built-in `load_skill`, `mcp_server`: a compiled MCP server of the app, `unknown`: a name no tool has), `outcome` (`ok` or the error kind) |
//! | `karta_tool_fuel_total` | counter | — |
//! | `karta_model_tokens_total` | counter | `kind` (input, output, cache_read, cache_write) |
//! | `karta_live_sessions` | gauge | — (sessions in memory) |
//! | `karta_harness_processes` | gauge | — (Claude Code / OpenCode processes running) |
//! | `karta_pool_size` | gauge | — (idle processes the warm pools aim for, over every release) |
//! | `karta_pool_idle` | gauge | — (pooled processes ready to be claimed) |
//! | `karta_pool_idle_rss_bytes` | gauge | — (their resident memory) |
//! | `karta_pool_claimed_total` | counter | — (pooled processes new sessions took) |
//! | `karta_pool_misses_total` | counter | — (new sessions that started their own process) |
//! | `karta_pool_spawn_failures_total` | counter | — (pooled starts that failed) |
//! | `karta_store_disk_syncs_total` | counter | — (file-system syncs of `--durability machine` flushes; 0 by default) |
//!
//! One registry per host (not a global), so several hosts in one process —
//! an embedder's, or the tests' — count apart.

use std::time::Duration;

use karta_harness::{ToolResult, TurnStatus, Usage};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TurnLabels {
    harness: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HarnessLabel {
    harness: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    harness: &'static str,
    phase: &'static str,
}

/// The two parts of a turn that are the host's alone, on the path between
/// a client and its harness (what the host adds to every turn's latency).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostPhase {
    /// From the message's arrival at the session (checked, not yet saved)
    /// to the harness being handed the turn: saving the message, starting
    /// the turn's task, the session's paths and harness files.
    Start,
    /// From the harness's return to the terminal event published: the
    /// turn's last records written, flushed to disk, and sent.
    End,
}

impl HostPhase {
    fn as_str(self) -> &'static str {
        match self {
            HostPhase::Start => "start",
            HostPhase::End => "end",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolLabels {
    kind: &'static str,
    outcome: &'static str,
}

/// What ran a tool call the host made. (The harness's own tools — Claude
/// Code's `Bash`, `Read`… — run inside its process, in its jail; they show
/// in the turn's `tool_use` events, not here.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolKind {
    /// A plugin's tool, in wasmtime.
    Plugin,
    /// The built-in `load_skill`.
    Skill,
    /// A tool of one of the app's MCP servers compiled to a component.
    McpServer,
    /// A name no tool of the session has (the call failed before running).
    Unknown,
}

impl ToolKind {
    fn as_str(self) -> &'static str {
        match self {
            ToolKind::Plugin => "plugin",
            ToolKind::Skill => "skill",
            ToolKind::McpServer => "mcp_server",
            ToolKind::Unknown => "unknown",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenKind {
    kind: &'static str,
}

/// A histogram per label set `L`, each made with its family's buckets.
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The host's metrics.
pub struct Metrics {
    registry: Registry,
    turns: Family<TurnLabels, Counter>,
    turn_seconds: HistogramFamily<HarnessLabel>,
    host_seconds: HistogramFamily<PhaseLabels>,
    tool_calls: Family<ToolLabels, Counter>,
    fuel: Counter,
    tokens: Family<TokenKind, Counter>,
    /// Sessions in memory (kept by the live-session map).
    pub(crate) live_sessions: Gauge,
    /// Harness processes running (set when scraped).
    pub(crate) harness_processes: Gauge,
    /// Warm pools: their target size, idle processes and those processes'
    /// RSS (set when scraped).
    pub(crate) pool_size: Gauge,
    pub(crate) pool_idle: Gauge,
    pub(crate) pool_idle_rss_bytes: Gauge,
    /// Warm pools: claims, misses and failed starts.
    pub(crate) pool_claimed: Counter,
    pub(crate) pool_misses: Counter,
    pub(crate) pool_spawn_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn host_buckets() -> Histogram {
    // 50 µs to ~100 ms: the host's part of a turn is a millisecond or two.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 12))
}

fn turn_buckets() -> Histogram {
    // 1 ms to ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Metrics {
    /// A registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("karta");
        let turns = Family::<TurnLabels, Counter>::default();
        let turn_seconds: HistogramFamily<HarnessLabel> =
            Family::new_with_constructor(turn_buckets);
        let host_seconds: HistogramFamily<PhaseLabels> = Family::new_with_constructor(host_buckets);
        let tool_calls = Family::<ToolLabels, Counter>::default();
        let fuel = Counter::default();
        let tokens = Family::<TokenKind, Counter>::default();
        let live_sessions = Gauge::default();
        let harness_processes = Gauge::default();
        registry.register("turns", "Turns by harness and outcome", turns.clone());
        registry.register(
            "turn_duration_seconds",
            "Turn latency, from the message to the terminal event",
            turn_seconds.clone(),
        );
        registry.register(
            "turn_host_seconds",
            "The host's own part of a turn's latency: phase start (message accepted to harness) and end (harness returned to terminal event published)",
            host_seconds.clone(),
        );
        registry.register(
            "tool_calls",
            "Tool calls by outcome (ok or the error kind)",
            tool_calls.clone(),
        );
        registry.register("tool_fuel", "Fuel used by tool calls", fuel.clone());
        registry.register(
            "model_tokens",
            "Model tokens metered by the gateway",
            tokens.clone(),
        );
        registry.register("live_sessions", "Sessions in memory", live_sessions.clone());
        registry.register(
            "harness_processes",
            "Harness processes running",
            harness_processes.clone(),
        );
        let pool_size = Gauge::default();
        let pool_idle = Gauge::default();
        let pool_idle_rss_bytes = Gauge::default();
        let pool_claimed = Counter::default();
        let pool_misses = Counter::default();
        let pool_spawn_failures = Counter::default();
        registry.register(
            "pool_size",
            "Idle harness processes the warm pools aim for",
            pool_size.clone(),
        );
        registry.register(
            "pool_idle",
            "Pooled harness processes ready to be claimed",
            pool_idle.clone(),
        );
        registry.register(
            "pool_idle_rss_bytes",
            "Resident memory of the idle pooled processes",
            pool_idle_rss_bytes.clone(),
        );
        registry.register(
            "pool_claimed",
            "Pooled processes new sessions claimed",
            pool_claimed.clone(),
        );
        registry.register(
            "pool_misses",
            "New sessions that started their own process though a pool exists",
            pool_misses.clone(),
        );
        registry.register(
            "pool_spawn_failures",
            "Pooled process starts that failed",
            pool_spawn_failures.clone(),
        );
        Self {
            registry,
            turns,
            turn_seconds,
            host_seconds,
            tool_calls,
            fuel,
            tokens,
            live_sessions,
            harness_processes,
            pool_size,
            pool_idle,
            pool_idle_rss_bytes,
            pool_claimed,
            pool_misses,
            pool_spawn_failures,
        }
    }

    /// [`Metrics::new`] with the store's own counters registered.
    pub fn with_store(store: &crate::store::Store) -> Self {
        let mut metrics = Self::new();
        metrics.registry.register(
            "store_disk_syncs",
            "File-system syncs that flushes made (--durability machine)",
            store.disk_sync_counter(),
        );
        metrics
    }

    /// Counts a finished turn.
    pub fn record_turn(&self, harness: &'static str, status: TurnStatus, took: Duration) {
        self.turns
            .get_or_create(&TurnLabels {
                harness,
                outcome: status.as_str(),
            })
            .inc();
        self.turn_seconds
            .get_or_create(&HarnessLabel { harness })
            .observe(took.as_secs_f64());
    }

    /// Times one of the host's own parts of a turn.
    pub fn record_host_phase(&self, harness: &'static str, phase: HostPhase, took: Duration) {
        self.host_seconds
            .get_or_create(&PhaseLabels {
                harness,
                phase: phase.as_str(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts a tool call of `kind` and its fuel.
    pub fn record_tool_call(&self, kind: ToolKind, result: &ToolResult) {
        let outcome = match &result.content {
            Ok(_) => "ok",
            Err(error) => error.kind.as_str(),
        };
        self.tool_calls
            .get_or_create(&ToolLabels {
                kind: kind.as_str(),
                outcome,
            })
            .inc();
        if let Some(fuel) = result.fuel {
            self.fuel.inc_by(fuel);
        }
    }

    /// Counts metered model tokens.
    pub fn record_tokens(&self, usage: Usage) {
        for (kind, n) in [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read", usage.cache_read_tokens),
            ("cache_write", usage.cache_write_tokens),
        ] {
            if n > 0 {
                self.tokens.get_or_create(&TokenKind { kind }).inc_by(n);
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!("cannot encode the metrics: {e}");
        }
        text
    }
}
