#!/usr/bin/env bash
# Builds the Debian packages with cargo-deb into target/debian/ and prints their paths:
#   nowconnect-agent for amd64 (x86_64 musl, static), arm64 (aarch64 musl, static) and armhf
#   (armv7 glibc, static C runtime); nowconnect-relay for amd64.
# Usage: scripts/build-debs.sh [agent-amd64|agent-arm64|agent-armhf|relay-amd64 ...]  (default: all)
# Installs cargo-deb, the rustup targets and the cross compilers when missing (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
which=("$@")
[ ${#which[@]} -gt 0 ] || which=(agent-amd64 agent-arm64 agent-armhf relay-amd64)
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
target_dir=${CARGO_TARGET_DIR:-target}
out=$target_dir/debian
mkdir -p "$out"
built=()
for w in "${which[@]}"; do
  case "$w" in
    agent-amd64) pkg=nowconnect-agent triple=x86_64-unknown-linux-musl ;;
    agent-arm64) pkg=nowconnect-agent triple=aarch64-unknown-linux-musl ;;
    agent-armhf) pkg=nowconnect-agent triple=armv7-unknown-linux-gnueabihf ;;
    relay-amd64) pkg=nowconnect-relay triple="" ;;   # the host build (glibc, dynamic)
    *) echo "unknown package $w (agent-amd64, agent-arm64, agent-armhf, relay-amd64)" >&2; exit 2 ;;
  esac
  echo "==> $pkg for ${triple:-the host}"
  if [ -n "$triple" ]; then
    # The same static build the ARM smoke test runs (cross compilers, rustup target, static check).
    scripts/cross-build.sh "$triple"
    deb=$(cargo deb --no-build --quiet -p "$pkg" --target "$triple" --output "$out")
  else
    cargo build --release --locked -p "$pkg"
    deb=$(cargo deb --no-build --quiet -p "$pkg" --output "$out")
  fi
  built+=("$deb")
done
echo "Debian packages:"
printf '  %s\n' "${built[@]}"
