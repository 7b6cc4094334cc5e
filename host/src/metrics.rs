//! What the host counts, for `GET /metrics` (Prometheus text format).
//!
//! | metric | kind | labels |
//! | --- | --- | --- |
//! | `karta_turns_total` | counter | `harness`, `outcome` (completed, denied, cancelled, error) |
//! | `karta_turn_duration_seconds` | histogram | `harness` |
//! | `karta_tool_calls_total` | counter | `outcome` (`ok` or the error kind) |
//! | `karta_tool_fuel_total` | counter | — |
//! | `karta_model_tokens_total` | counter | `kind` (input, output, cache_read, cache_write) |
//! | `karta_live_sessions` | gauge | — (sessions in memory) |
//! | `karta_harness_processes` | gauge | — (Claude Code / OpenCode processes running) |
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
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenKind {
    kind: &'static str,
}

type HistogramFamily = Family<HarnessLabel, Histogram, fn() -> Histogram>;

/// The host's metrics.
pub struct Metrics {
    registry: Registry,
    turns: Family<TurnLabels, Counter>,
    turn_seconds: HistogramFamily,
    tool_calls: Family<OutcomeLabel, Counter>,
    fuel: Counter,
    tokens: Family<TokenKind, Counter>,
    /// Sessions in memory (kept by the live-session map).
    pub(crate) live_sessions: Gauge,
    /// Harness processes running (set when scraped).
    pub(crate) harness_processes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
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
        let turn_seconds: HistogramFamily = Family::new_with_constructor(turn_buckets);
        let tool_calls = Family::<OutcomeLabel, Counter>::default();
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
        Self {
            registry,
            turns,
            turn_seconds,
            tool_calls,
            fuel,
            tokens,
            live_sessions,
            harness_processes,
        }
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

    /// Counts a tool call and its fuel.
    pub fn record_tool_call(&self, result: &ToolResult) {
        let outcome = match &result.content {
            Ok(_) => "ok",
            Err(error) => error.kind.as_str(),
        };
        self.tool_calls
            .get_or_create(&OutcomeLabel { outcome })
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
