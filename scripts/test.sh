#!/usr/bin/env bash
# Runs every check and test of the project, the same way locally and in CI.
# Installs what the tests need when it is missing (Debian packages, rustup components, cargo tools).
#   FUZZ_SECONDS   seconds per fuzz target (default 60; 0 skips fuzzing)
#   CI=true        a test that cannot find its server fails instead of skipping
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

step() { printf '\n==> %s\n' "$*"; }

step "installing test dependencies"
scripts/install-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "no import cycle between modules (shared, agent, relay)"
for crate in nowconnect-shared nowconnect-agent nowconnect-relay; do
  python3 scripts/module-cycles.py "$crate" --lib --cfg-test
done

step "cargo test (workspace)"
if command -v cargo-nextest >/dev/null; then
  cargo nextest run --workspace --locked --no-fail-fast
  cargo test --workspace --doc --locked
else
  cargo test --workspace --locked --no-fail-fast
fi

step "systemd units: verify and security score"
scripts/systemd-check.sh

step "Kubernetes manifests (schemas, offline) and the static relay"
scripts/k8s-check.sh

step "ARM agents under qemu-user against the x86-64 relay (wss://, private CA)"
scripts/qemu-smoke.sh

step "Debian packages (agent amd64/arm64/armhf, relay amd64)"
scripts/build-debs.sh

step "the packages under a booted systemd (systemd-nspawn)"
scripts/systemd-container-test.sh

step "agent footprint"
scripts/footprint.sh

fuzz_seconds=${FUZZ_SECONDS:-60}
if [ "$fuzz_seconds" -gt 0 ]; then
  if cargo +nightly --version >/dev/null 2>&1; then
    step "fuzzing each decoder for ${fuzz_seconds}s"
    scripts/fuzz.sh "$fuzz_seconds"
  elif [ "${CI:-}" = "true" ]; then
    echo "no nightly toolchain: cargo-fuzz cannot run in CI" >&2
    exit 1
  else
    echo "no nightly toolchain: skipping cargo-fuzz (the bounded random decoder tests ran above)"
  fi
fi
step "all checks passed"
