#!/usr/bin/env bash
# The main job, from a fresh clone: build the example plugins and the `karta`
# binary, then run tools the way the host runs every tool call — a useful one,
# a file search confined to a directory, and each limit failing safely.
#
#   scripts/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2 >/dev/null
echo "==> building the example plugins (wasm32-wasip2) and karta"
cargo build --manifest-path examples/plugins/Cargo.toml --target wasm32-wasip2 --release --locked -q
cargo build --release --locked -q

karta=target/release/karta
plugins=examples/plugins/target/wasm32-wasip2/release

show() {
    printf '\n$ karta %s\n' "$*"
    "$karta" "$@" || true
}

show tool list "$plugins/units.wasm"
show tool call "$plugins/units.wasm" convert '{"value": 3, "from": "mi", "to": "km"}'
show tool call "$plugins/units.wasm" calc '{"expression": "2^10 / (3 + 1)"}'
show tool call "$plugins/files.wasm" search '{"name": ".wit"}' --dir ".:ro"
show tool call "$plugins/hostile.wasm" spin --fuel 1000000
show tool call "$plugins/hostile.wasm" spin --fuel 100000000000000 --timeout-ms 300
show tool call "$plugins/hostile.wasm" alloc --memory-mib 16
show tool call "$plugins/hostile.wasm" read_path '{"path": "/etc/passwd"}' --dir ".:ro"
show tool call "$plugins/hostile.wasm" fetch '{"url": "http://127.0.0.1:9/"}'
show tool call "$plugins/hostile.wasm" panic
