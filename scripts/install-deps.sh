#!/usr/bin/env bash
# Installs what the test suite needs, only when missing: Debian packages for the real servers the
# end-to-end tests start on loopback (slapd, tinyproxy as the agent's forward proxy, haproxy as a
# PROXY-protocol ingress in front of the relay, redis-server as the HA registry, Chromium and
# chromedriver for the dashboard's browser test, promtool from prometheus for the alert rules),
# rustup components, cargo tools, and schemathesis
# (PyPI) for the portal API fuzz test. Idempotent.
set -euo pipefail
need_apt=()
for pair in slapd:slapd ldapsearch:ldap-utils tinyproxy:tinyproxy openssl:openssl file:file bc:bc \
    qemu-aarch64:qemu-user systemd-analyze:systemd haproxy:haproxy \
    redis-server:redis-server chromium:chromium chromedriver:chromium-driver \
    promtool:prometheus; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "apt-get install ${need_apt[*]}"
  $sudo apt-get update -qq
  # Packages with a service (prometheus, redis-server, slapd, haproxy) must not start it: the
  # tests start their own servers on loopback, on free ports. policy-rc.d says so to
  # invoke-rc.d for this install only.
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
    trap '$sudo rm -f "$policy"' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  if [ -n "$policy" ]; then $sudo rm -f "$policy"; trap - EXIT; fi
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
# cargo-modules: the module graph scripts/module-cycles.py checks (0.28 needs rustc 1.98).
command -v cargo-modules >/dev/null || cargo install cargo-modules --locked --version 0.27.0
if [ "${FUZZ_SECONDS:-60}" -gt 0 ] && cargo +nightly --version >/dev/null 2>&1; then
  command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
fi
# schemathesis: property-based fuzzer for the relay's portal API (relay/tests/portal_openapi.rs).
if ! command -v schemathesis >/dev/null 2>&1; then
  pip=$(command -v pip3 || command -v pip || true)
  if [ -z "$pip" ]; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
    pip=pip3
  fi
  echo "pip install schemathesis"
  # Debian's own Python refuses plain pip installs (PEP 668); then say so explicitly.
  "$pip" install --quiet schemathesis || "$pip" install --quiet --break-system-packages schemathesis
fi
