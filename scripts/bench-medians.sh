#!/usr/bin/env bash
# Prints the median of every criterion benchmark under target/criterion
# (criterion's console line shows a mean-based interval; BENCHMARKS.md quotes
# medians). Run after `cargo bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
find target/criterion -path '*/new/estimates.json' | sort | while read -r file; do
    name=${file#target/criterion/}
    name=${name%/new/estimates.json}
    python3 -c 'import json,sys; e=json.load(open(sys.argv[1])); m=e["median"]["point_estimate"]; print(f"{sys.argv[2]:50} median {m/1000:10.2f} µs")' "$file" "$name"
done
