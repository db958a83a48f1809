#!/usr/bin/env bash
# Static release builds of the agent for ARM (and x86-64 musl) without Docker.
# Usage: scripts/cross-build.sh [TARGET...]   default: aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf
# Installs the rustup targets and Debian cross compilers when missing. Prints each binary's path and size.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf)

sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
need_apt=()
for t in "${targets[@]}"; do
  case "$t" in
    aarch64-*) command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross) ;;
    armv7-*) command -v arm-linux-gnueabihf-gcc >/dev/null || need_apt+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross) ;;
    x86_64-*-musl) command -v x86_64-linux-musl-gcc >/dev/null || need_apt+=(musl-tools) ;;
  esac
done
if [ ${#need_apt[@]} -gt 0 ]; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
installed=$(rustup target list --installed)
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$installed" || rustup target add "$t"
done

for t in "${targets[@]}"; do
  echo "==> building nowconnect-agent for $t"
  cargo build --release -p nowconnect-agent --target "$t"
  bin="${CARGO_TARGET_DIR:-target}/$t/release/nowconnect-agent"
  if file "$bin" | grep -qE "dynamically linked|interpreter"; then
    echo "$bin is not static:" >&2; file "$bin" >&2; exit 1
  fi
  printf '%s\t%s bytes\n' "$bin" "$(stat -c %s "$bin")"
done
