#!/usr/bin/env bash
# The relay's allocator after bursts of short connections (issue 20; BENCHMARKS.md "After a burst
# of connections"). Builds the release relay three ways (jemalloc: the default; mimalloc; the
# system allocator), one agent and nowconnect-bench, then runs the bench's burst workload and a
# one-stream bulk and ping-pong sanity check against each relay, alternating, ROUNDS times.
# Extra arguments go to every bench run (e.g. `--burst-conns 5000`, `--bulk-secs 3`).
#   NO_BUILD=1   use the relays already in $CARGO_TARGET_DIR/alloc/{jemalloc,mimalloc,system}
#   ROUNDS=N     runs per allocator (default 2)
#   ALLOCS="jemalloc system"  the allocators to run (default: all three)
#   OUT=DIR      where each run's report goes (default: $CARGO_TARGET_DIR/alloc/runs)
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
dir=$target/alloc
allocs=${ALLOCS:-jemalloc mimalloc system}
out=${OUT:-$dir/runs}
mkdir -p "$out"

feature_args() {
  case "$1" in
    jemalloc) ;;
    mimalloc) echo "--no-default-features --features mimalloc" ;;
    system) echo "--no-default-features" ;;
    *) echo "unknown allocator $1" >&2; exit 2 ;;
  esac
}

if [[ "${NO_BUILD:-0}" != 1 ]]; then
  cargo build --release -p nowconnect-agent -p nowconnect --bin nowconnect-agent --bin nowconnect-bench >&2
  for a in $allocs; do
    echo "==> relay with $a" >&2
    # shellcheck disable=SC2046 # the feature flags are separate words
    cargo build --release -p nowconnect-relay $(feature_args "$a") >&2
    mkdir -p "$dir/$a"
    cp "$target/release/nowconnect-relay" "$dir/$a/"
    cp "$target/release/nowconnect-agent" "$dir/$a/"
  done
fi

# Two bursts of 20,000 connections leave up to a few thousand streams open at once.
ulimit -n 65536 2>/dev/null || ulimit -n 16384 2>/dev/null || true
echo "date: $(date -u +%FT%TZ); commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' (dirty tree)')"
echo "host: $(uname -srm); $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "${ROUNDS:-2}"); do
  for a in $allocs; do
    echo "==> round $r: relay with $a" >&2
    "$target/release/nowconnect-bench" --bin-dir "$dir/$a" --only burst,bulk1,pingpong \
      --ldap off --bulk-secs 3 --pingpong 5000 --json "$out/$a-$r.json" "$@" | tee "$out/$a-$r.md"
  done
done
