#!/usr/bin/env bash
# Runs every decoder fuzz target for a bounded time each (default 60 s).
# Usage: scripts/fuzz.sh [SECONDS]   e.g. scripts/fuzz.sh 3600 for a long local run.
# Needs a nightly toolchain and cargo-fuzz; installs cargo-fuzz if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for target in decode_v2 decode_v1 client_hello; do
  mkdir -p "fuzz/corpus/$target"
  echo "== fuzz $target for ${secs}s"
  log=$(mktemp)
  if ! cargo +nightly fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
      -max_total_time="$secs" -max_len=70000 -rss_limit_mb=1024 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz target $target FAILED (crash input saved under fuzz/artifacts/$target)"
    exit 1
  fi
  grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb)" "$log" || true
  rm -f "$log"
done
