#!/usr/bin/env bash
# Checks the systemd units: `systemd-analyze verify` must pass with no warning, and
# `systemd-analyze security` must rate the agent 1.2 or lower and the relay 1.6 or lower.
# Prints both scores.
# Runs offline against a scratch root, so nothing is installed on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v systemd-analyze >/dev/null || {
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends systemd >/dev/null
}
root=$(mktemp -d); trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd"
cp -r /usr/lib/systemd/system "$root/usr/lib/systemd/"
for b in nowconnect-agent nowconnect-relay; do cp /bin/true "$root/usr/bin/$b"; done
mkdir -p "$root/bin"; cp /bin/kill "$root/bin/kill"
cp systemd/*.service "$root/etc/systemd/system/"
units=(nowconnect-agent.service nowconnect-relay.service)
out=$(systemd-analyze verify --root="$root" "${units[@]}" 2>&1) || { echo "$out"; exit 1; }
if [ -n "$out" ]; then echo "systemd-analyze verify warned:"; echo "$out"; exit 1; fi
echo "systemd-analyze verify: ${units[*]} OK"
# Exposure budgets (systemd-analyze security, lower is safer): today's scores, never worse.
declare -A budget=([nowconnect-agent.service]=1.2 [nowconnect-relay.service]=1.6)
for u in "${units[@]}"; do
  line=$(systemd-analyze security --offline=true --root="$root" "$u" 2>/dev/null | grep "Overall exposure level")
  echo "systemd-analyze security: $u $line (budget ${budget[$u]})"
  score=$(sed -E 's/.*: ([0-9.]+) .*/\1/' <<<"$line")
  if awk "BEGIN{exit !($score > ${budget[$u]})}"; then
    echo "$u exposure $score is above its ${budget[$u]} budget" >&2; exit 1
  fi
done
