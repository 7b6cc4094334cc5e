#!/usr/bin/env bash
# The main job, from a fresh clone: serve the example app `support-bot` on the
# embedded defaults — sled in a local data dir (./.karta), the built-in
# harness, the offline model — at http://127.0.0.1:8000.
#
#   scripts/run.sh                 # then, in another terminal:
#   target/release/karta chat      # or curl, see README.md
#
# Extra arguments go to `karta serve` (e.g. --listen 127.0.0.1:9000).
#
# KARTA_HARNESS picks the harness (default: builtin). The app is a Claude
# Code folder, so after scripts/install-harnesses.sh it also runs on the
# real binaries:
#
#   KARTA_HARNESS=claude-code scripts/run.sh
#   KARTA_HARNESS=opencode scripts/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2 >/dev/null
echo "==> building the example plugins (wasm32-wasip2) and karta" >&2
cargo build --manifest-path examples/plugins/Cargo.toml --target wasm32-wasip2 --release --locked -q
cargo build --release --locked -q
cp examples/plugins/target/wasm32-wasip2/release/units.wasm \
   examples/plugins/target/wasm32-wasip2/release/files.wasm \
   examples/support-bot/plugins/

exec target/release/karta serve examples/support-bot --data .karta \
    --harness "${KARTA_HARNESS:-builtin}" "$@"
