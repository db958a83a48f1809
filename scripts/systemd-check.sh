#!/usr/bin/env bash
# Checks the systemd units: `systemd-analyze verify` must pass with no warning, and
# `systemd-analyze security` must rate the agent 2.0 or lower. Prints both scores.
# Runs offline against a scratch root, so nothing is installed on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v systemd-analyze >/dev/null || {
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends systemd >/dev/null
}
root=$(mktemp -d); trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/local/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd"
cp -r /usr/lib/systemd/system "$root/usr/lib/systemd/"
for b in nowconnect-agent nowconnect-relay; do cp /bin/true "$root/usr/local/bin/$b"; done
cp systemd/*.service "$root/etc/systemd/system/"
units=(nowconnect-agent.service nowconnect-relay.service)
out=$(systemd-analyze verify --root="$root" "${units[@]}" 2>&1) || { echo "$out"; exit 1; }
if [ -n "$out" ]; then echo "systemd-analyze verify warned:"; echo "$out"; exit 1; fi
echo "systemd-analyze verify: ${units[*]} OK"
for u in "${units[@]}"; do
  line=$(systemd-analyze security --offline=true --root="$root" "$u" 2>/dev/null | grep "Overall exposure level")
  echo "systemd-analyze security: $line"
  score=$(sed -E 's/.*: ([0-9.]+) .*/\1/' <<<"$line")
  if [ "$u" = nowconnect-agent.service ] && awk "BEGIN{exit !($score > 2.0)}"; then
    echo "agent unit exposure $score is above the 2.0 budget" >&2; exit 1
  fi
done
