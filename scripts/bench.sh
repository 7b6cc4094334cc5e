#!/usr/bin/env bash
# Runs the benches and rewrites BENCHMARKS.md's summary table with today's
# medians, the machine, the versions and the date, each figure with its
# target (benches/targets.toml) and whether it is met.
#
#   scripts/bench.sh                 # every bench (tens of minutes: the
#                                    # harness benches start real CLIs)
#   scripts/bench.sh meter sessions  # only these; the others keep the
#                                    # figures measured before (dated)
#   scripts/bench.sh --report        # no bench, just the table from what
#                                    # is on disk
#
# Benches that need the harness CLIs install them first; a bench whose
# dependency is missing says so and is skipped by criterion's filter, and
# its figure reads "not measured here". Run it on a quiet machine: every
# bench shares the two cores with anything else that runs.
set -euo pipefail
cd "$(dirname "$0")/.."

all=(tool_call sessions meter gateway jail python_mcp overhead pool harnesses concurrent_sessions session_memory)
if [ "${1:-}" = "--report" ]; then
    exec python3 scripts/bench_report.py
fi
benches=("$@")
[ ${#benches[@]} -eq 0 ] && benches=("${all[@]}")

scripts/install-harnesses.sh >/dev/null
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
cargo build --manifest-path examples/plugins/Cargo.toml --target wasm32-wasip2 --release --locked >/dev/null
mkdir -p target/bench-logs
load=$(cut -d' ' -f1 /proc/loadavg)
echo "bench: load average ${load} before starting (2 cores: above ~0.5 the figures are noisy)"
for bench in "${benches[@]}"; do
    echo "==> cargo bench --bench ${bench}"
    cargo bench --locked --bench "$bench" 2>&1 | tee "target/bench-logs/${bench}.log" \
        | grep -E '^(\S+/\S+)\s+time:|skipped|not installed|error' || true
done
python3 scripts/bench_report.py
