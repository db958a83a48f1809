#!/usr/bin/env bash
# Builds the static ARM agents and runs each under qemu-user against the x86-64 relay on loopback,
# over wss:// with a private CA made at run time (so ring's TLS runs on both ARM targets): READY on
# the health port and a byte-exact transfer through the tunnel; then the same binary trusting
# another CA must refuse the relay's certificate.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v qemu-aarch64 >/dev/null && command -v qemu-arm >/dev/null || {
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends qemu-user >/dev/null
}
scripts/cross-build.sh aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf
cargo build -q --bin nowconnect-smoke
t=${CARGO_TARGET_DIR:-target}
"$t/debug/nowconnect-smoke" -- qemu-aarch64 "$t/aarch64-unknown-linux-musl/release/nowconnect-agent"
"$t/debug/nowconnect-smoke" -- qemu-arm "$t/armv7-unknown-linux-gnueabihf/release/nowconnect-agent"
