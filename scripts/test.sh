#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs, runs every
# gate, and ends with one "N passed, N failed" line.
#
#   scripts/test.sh
#
# Gates, in order (the first failure stops the run):
#   1. rustfmt on the host workspace and the guest plugins
#   2. clippy with -D warnings (host workspace, all targets; guests for wasm)
#   3. rustdoc with -D warnings, the public docs and the private items'
#      (the module maps a newcomer reads link private parts)
#   4. the guest fixtures built for wasm32-wasip2 (once, shared by all tests)
#   5. the pinned harness CLIs (Claude Code, OpenCode) from npm into
#      harnesses/node_modules (not globally; skipped when already there)
#   6. the pinned componentize-py from PyPI into tools/componentize-py/venv
#      (compiles the apps' Python MCP servers into components; skipped when
#      already there)
#   7. Debian's chromium and the pinned playwright-core from npm into
#      browser/node_modules (the chat page's browser test; skipped when there)
#   8. the pinned official OpenAI Python SDK from PyPI into
#      tools/openai-python/venv (the OpenAI adapters' client test; skipped
#      when already there)
#   9. cargo test for the whole workspace (unit, integration, doc tests,
#      end-to-end tests that run the real claude and opencode binaries)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain: wasm32-wasip2 target, rustfmt, clippy"
rustup target add wasm32-wasip2
rustup component add rustfmt clippy >/dev/null 2>&1 || true

guests=(--manifest-path examples/plugins/Cargo.toml)

step "cargo fmt --check"
cargo fmt --all -- --check
cargo fmt "${guests[@]}" --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy "${guests[@]}" --target wasm32-wasip2 --locked -- -D warnings

step "cargo doc -D warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --document-private-items

step "guest fixtures (wasm32-wasip2)"
cargo build "${guests[@]}" --target wasm32-wasip2 --release --locked

step "harness CLIs from npm (scripts/install-harnesses.sh)"
scripts/install-harnesses.sh

step "componentize-py from PyPI (scripts/install-componentize-py.sh)"
scripts/install-componentize-py.sh

step "Chromium and playwright-core (scripts/install-browser.sh)"
scripts/install-browser.sh

step "openai-python from PyPI (scripts/install-openai-python.sh)"
scripts/install-openai-python.sh

step "cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

passed=$(grep -Eo 'test result: [A-Za-z]+\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s += $1} END {print s + 0}')
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
    # cargo failed before or outside a test (a build error, a crash).
    failed=1
fi
echo
echo "${passed} passed, ${failed} failed"
exit "$status"
