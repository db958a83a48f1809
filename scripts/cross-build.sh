#!/usr/bin/env bash
# Static release builds of the agent for ARM (and x86-64 musl) without Docker.
# Usage: scripts/cross-build.sh [--package nowconnect-relay] [TARGET...]
#   default package nowconnect-agent; default targets aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf
#   (the relay: scripts/cross-build.sh --package nowconnect-relay x86_64-unknown-linux-musl, for FROM scratch)
# Installs the rustup targets and Debian cross compilers when missing. Prints each binary's path and size.
# Honours CARGO_TARGET_DIR and cargo's CARGO_PROFILE_RELEASE_* overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
package=nowconnect-agent
if [ "${1:-}" = "--package" ]; then package=${2:?--package needs a name}; shift 2; fi
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
  echo "==> building $package for $t"
  cargo build --release -p "$package" --target "$t"
  bin="${CARGO_TARGET_DIR:-target}/$t/release/$package"
  if file "$bin" | grep -qE "dynamically linked|interpreter"; then
    echo "$bin is not static:" >&2; file "$bin" >&2; exit 1
  fi
  printf '%s\t%s bytes\n' "$bin" "$(stat -c %s "$bin")"
done
