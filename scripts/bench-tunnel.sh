#!/usr/bin/env bash
# Tunnel benchmark: direct vs tunnel on loopback, in one run, one table (see BENCHMARKS.md).
#
# Builds the release binaries, makes sure the team harness's slapd is up for the LDAP paged-search
# case (../shared/bench/setup.sh: 127.0.0.1:3890, 2,000 entries; skipped with a note when the
# harness is missing), then runs target/release/nowconnect-bench. Extra arguments go to the bench,
# e.g. `--bulk-secs 10`, `--protocol v1`, `--agent-multi-thread`, `--json out.json`, `--ldap off`.
#   NO_BUILD=1   use the binaries already in target/release
#   NO_SETUP=1   do not run the harness's setup.sh (the LDAP case needs its slapd running)
#   HARNESS=DIR  the team harness (default ../shared/bench); CARGO_TARGET_DIR is honoured
set -euo pipefail
cd "$(dirname "$0")/.."
HARNESS=${HARNESS:-../shared/bench}

if [[ "${NO_BUILD:-0}" != 1 ]]; then
  echo "==> cargo build --release --workspace --bins" >&2
  cargo build --release --workspace --bins >&2
fi
if [[ "${NO_SETUP:-0}" != 1 && -x $HARNESS/setup.sh ]]; then
  echo "==> $HARNESS/setup.sh (slapd on 127.0.0.1:3890)" >&2
  "$HARNESS/setup.sh" >&2 || echo "setup.sh failed: the LDAP case will be skipped" >&2
fi

# 1,000 idle streams need ~2,000 descriptors in the bench and ~1,000 in relay and agent each.
ulimit -n 8192 2>/dev/null || ulimit -n 4096 2>/dev/null || true

echo "date: $(date -u +%FT%TZ); commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' (dirty tree)')"
echo "host: $(uname -srm); $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
exec "${CARGO_TARGET_DIR:-target}/release/nowconnect-bench" "$@"
