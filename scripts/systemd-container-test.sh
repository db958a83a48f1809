#!/usr/bin/env bash
# The Debian packages under a real systemd: boots Debian bookworm with systemd-nspawn (a
# debootstrapped tree cached as a tar in /var/cache/nowconnect-ci/, keyed on its package list),
# installs nowconnect-relay and nowconnect-agent there the way README.md says, and checks, each as
# a step that fails the script with its reason:
#   install: units enabled, not failed; token file root:nowconnect-agent 0640; conffiles
#   `systemctl start` of both returns after readiness (relay READY=1, agent READY on its health port)
#   an LDAP search through the tunnel (slapd on the host's loopback; the container shares it)
#   the relay's audit file and state directory where cloud.yaml says, owned by its user
#   a replaced token file is used at the next connect, no restart (the first token expires)
#   RELOAD_CHECKS=1 (default): `systemctl reload` serves an added listener while a stream opened
#     before keeps flowing byte-exact; an invalid file is refused in one journal line, the old
#     configuration keeps serving
#   `systemctl stop` exits 0 within the grace period; the journal never holds a token
#   `dpkg -r` keeps /etc/nowconnect, `dpkg -P` removes it (and the relay's state and logs)
# Needs root (sudo otherwise). CI=true: never skips. Ports: free loopback ports picked at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
if [ "$(id -u)" -ne 0 ]; then exec sudo -E "$0" "$@"; fi
RELOAD_CHECKS=${RELOAD_CHECKS:-1}
t_start=$(date +%s)

step() { printf '\n--> %s\n' "$*"; }
fail() {
  echo "systemd-container-test: FAILED: $*" >&2
  if [ -n "${cpid:-}" ] && [ -d "/proc/$cpid" ]; then
    echo "---- journal of the container (last 80 lines) ----" >&2
    inside journalctl --no-pager -n 80 >&2 || true
  fi
  exit 1
}

# ---- host tools -------------------------------------------------------------------------------
need=()
for pair in systemd-nspawn:systemd-container debootstrap:debootstrap openssl:openssl \
    slapd:slapd ldapsearch:ldap-utils python3:python3 nsenter:util-linux; do
  cmd=${pair%%:*}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  # No recommends: systemd-container recommends libnss-mymachines, which edits nsswitch.conf.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# ---- packages ---------------------------------------------------------------------------------
step "building the amd64 packages"
scripts/build-debs.sh agent-amd64 relay-amd64
target_dir=${CARGO_TARGET_DIR:-$repo/target}
debs=$(mktemp -d /var/tmp/nc-debs.XXXXXX)
version=$(cargo metadata --no-deps --format-version 1 | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="nowconnect-relay"))')
for p in nowconnect-agent nowconnect-relay; do
  f="$target_dir/debian/${p}_${version}-1_amd64.deb"
  [ -f "$f" ] || f=$(ls -t "$target_dir"/debian/"${p}"_*_amd64.deb 2>/dev/null | head -1)
  [ -f "$f" ] || fail "no $p amd64 package in $target_dir/debian"
  cp "$f" "$debs/"
done

# ---- the cached Debian tree -------------------------------------------------------------------
cache=/var/cache/nowconnect-ci
include="systemd,systemd-sysv,dbus,procps"
key=$(printf '%s bookworm minbase' "$include" | sha256sum | cut -c1-12)
tarball=$cache/bookworm-$key.tar
mkdir -p "$cache"
if [ ! -s "$tarball" ]; then
  step "debootstrap bookworm ($include) into $tarball (cold cache)"
  mirror=$(sed -nE 's/^URIs: *(http[^ ]*debian)\/?$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
  [ -n "$mirror" ] || mirror=$(sed -nE 's/^deb +(http[^ ]*debian)\/? +bookworm .*/\1/p' /etc/apt/sources.list 2>/dev/null | head -1)
  [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
  build=$(mktemp -d "$cache/build.XXXXXX")
  debootstrap --variant=minbase --include="$include" bookworm "$build/root" "$mirror" >"$build/log" 2>&1 \
    || { tail -20 "$build/log" >&2; rm -rf "$build"; fail "debootstrap failed"; }
  tar -C "$build/root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
  rm -rf "$build"
  find "$cache" -maxdepth 1 -name 'bookworm-*.tar' ! -name "bookworm-$key.tar" -delete
fi

work=$(mktemp -d /var/tmp/nc-nspawn.XXXXXX)
root=$work/root share=$work/share
mkdir -p "$root" "$share"
tar -C "$root" -xf "$tarball"
nspawn_pid="" cpid="" slapd_pid="" py_pids=()
cleanup() {
  set +e
  if [ -n "$cpid" ] && [ -d "/proc/$cpid" ]; then
    nsenter -t "$cpid" -a systemctl poweroff >/dev/null 2>&1
  fi
  if [ -n "$nspawn_pid" ]; then
    for _ in $(seq 1 300); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$nspawn_pid" 2>/dev/null && kill -KILL "$nspawn_pid"
    wait "$nspawn_pid" 2>/dev/null
  fi
  # Without a host systemd nothing else reaps a container whose nspawn died: end its PID 1
  # (that ends its whole PID namespace).
  if [ -n "$cpid" ] && [ -d "/proc/$cpid" ]; then
    kill -KILL "$cpid"
    for _ in $(seq 1 50); do [ -d "/proc/$cpid" ] || break; sleep 0.1; done
  fi
  [ -n "$slapd_pid" ] && kill "$slapd_pid" 2>/dev/null
  for p in "${py_pids[@]}"; do kill "$p" 2>/dev/null; done
  # nspawn without a host systemd leaves its (empty) cgroups and state behind.
  for base in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do
    for d in payload supervisor; do
      [ -d "$base/$d" ] && find "$base/$d" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
  done
  rm -rf /run/systemd/nspawn/* 2>/dev/null
  rm -rf "$work" "$debs"
}
trap cleanup EXIT

# ---- free loopback ports and the host's servers -----------------------------------------------
read -r P_TUN P_LDAP P_ECHO P_NEW P_HEALTH P_SLAPD P_ECHO_T < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(7)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)

step "slapd on 127.0.0.1:$P_SLAPD (host loopback, shared with the container)"
ldap=$work/ldap
mkdir -p "$ldap/db"
cat >"$ldap/slapd.conf" <<EOF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile $ldap/slapd.pid
argsfile $ldap/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
maxsize 16777216
suffix "dc=example,dc=org"
rootdn "cn=admin,dc=example,dc=org"
rootpw secret
directory $ldap/db
EOF
cat >"$ldap/data.ldif" <<'EOF'
dn: dc=example,dc=org
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: uid=alice,dc=example,dc=org
objectClass: inetOrgPerson
uid: alice
cn: Alice Example
sn: Example
mail: alice@example.org
EOF
slapadd -q -f "$ldap/slapd.conf" -l "$ldap/data.ldif" || fail "slapadd failed"
slapd -h "ldap://127.0.0.1:$P_SLAPD/" -f "$ldap/slapd.conf" -d 0 >"$ldap/log" 2>&1 &
slapd_pid=$!
search() { # search PORT: the alice entry through that port
  ldapsearch -x -LLL -o nettimeout=5 -H "ldap://127.0.0.1:$1" -b dc=example,dc=org '(uid=alice)' mail 2>&1
}
for _ in $(seq 1 100); do search "$P_SLAPD" | grep -q '^mail: alice@example.org' && break; sleep 0.1; done
search "$P_SLAPD" | grep -q '^mail: alice@example.org' || fail "slapd does not answer on $P_SLAPD"

# Echo target for the long stream (agent side), on the host's loopback.
python3 - "$P_ECHO_T" >"$work/echo.log" 2>&1 <<'EOF' &
import socket, sys, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(16)
def serve(c):
    with c:
        while True:
            b = c.recv(65536)
            if not b:
                c.shutdown(socket.SHUT_WR); return
            c.sendall(b)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
EOF
py_pids+=($!)

# ---- PKI and tokens ---------------------------------------------------------------------------
step "a private CA, the relay's certificate, an Ed25519 IdP key and two tokens"
pki=$share/pki
mkdir -p "$pki"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=nowconnect-test-ca \
  -keyout "$pki/ca.key" -out "$pki/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
  -keyout "$pki/tls.key" -out "$pki/tls.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$pki/ext"
openssl x509 -req -in "$pki/tls.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial -days 2 \
  -extfile "$pki/ext" -out "$pki/tls.crt" 2>/dev/null
openssl genpkey -algorithm ed25519 -out "$pki/idp.key"
b64url() { basenc --base64url -w0 | tr -d '='; }
x=$(openssl pkey -in "$pki/idp.key" -pubout -outform DER | tail -c 32 | b64url)
printf '{"keys":[{"kty":"OKP","crv":"Ed25519","x":"%s","kid":"test-1","use":"sig","alg":"EdDSA"}]}\n' "$x" >"$pki/jwks.json"
mint() { # mint JTI EXP: an EdDSA JWT for agent premise-01 and its two connectors
  local head body sig
  head=$(printf '{"alg":"EdDSA","typ":"JWT","kid":"test-1"}' | b64url)
  body=$(printf '{"sub":"premise-01","agent_id":"premise-01","aud":"nowconnect","iat":%s,"exp":%s,"jti":"%s","connectors":["addomain","echo"]}' \
    "$(date +%s)" "$2" "$1" | b64url)
  printf '%s.%s' "$head" "$body" >"$pki/signing-input"
  sig=$(openssl pkeyutl -sign -inkey "$pki/idp.key" -rawin -in "$pki/signing-input" | b64url)
  printf '%s.%s.%s' "$head" "$body" "$sig"
}
mint tok-b $(( $(date +%s) + 3600 )) >"$share/token-b.jwt"

cat >"$share/cloud.yaml" <<EOF
# Written by scripts/systemd-container-test.sh
listeners:
  - {name: ldap, bind: "127.0.0.1:$P_LDAP", connector: addomain}
  - {name: echo, bind: "127.0.0.1:$P_ECHO", connector: echo}
tunnel:
  host: 127.0.0.1
  port: $P_TUN
  tls:
    cert_file: /etc/nowconnect/tls.crt
    key_file: /etc/nowconnect/tls.key
limits:
  shutdown_grace_ms: 3000
security:
  jwks_url: file:///etc/nowconnect/jwks.json
  audience: nowconnect
  require_connector_scopes: true
  leeway_sec: 0
state_dir: /var/lib/nowconnect
portal:
  audience: nowconnect-portal
audit:
  file: /var/log/nowconnect/audit.jsonl
EOF
cat >"$share/premise.yaml" <<EOF
# Written by scripts/systemd-container-test.sh
tunnel:
  url: wss://127.0.0.1:$P_TUN/tunnel
  agent_id: premise-01
  exported_connectors: [addomain, echo]
  auth:
    token_file: /etc/nowconnect/token
    refresh_before_exp_sec: 50
targets:
  addomain: {host: 127.0.0.1, port: $P_SLAPD}
  echo: {host: 127.0.0.1, port: $P_ECHO_T}
proxy:
  ca_bundle: /etc/nowconnect/ca.pem
  ca_bundle_only: true
health:
  host: 127.0.0.1
  port: $P_HEALTH
EOF

# ---- boot -------------------------------------------------------------------------------------
step "booting the container"
# nspawn without a host systemd puts every container in the same payload/supervisor cgroups:
# empty ones left by an earlier run go; busy ones mean another container runs here.
for base in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do
  for d in payload supervisor; do
    [ -d "$base/$d" ] || continue
    find "$base/$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    [ -d "$base/$d" ] && fail "$base/$d is busy: another systemd-nspawn container runs on this machine"
  done
done
t_boot=$(date +%s)
systemd-nspawn -D "$root" --boot --register=no --keep-unit --console=pipe --volatile=overlay \
  --bind-ro="$debs:/debs" --bind="$share:/share" >"$work/console.log" 2>&1 </dev/null &
nspawn_pid=$!
mypidns=$(readlink /proc/self/ns/pid)
for _ in $(seq 1 200); do  # ~20 s
  for child in $(cat /proc/"$nspawn_pid"/task/*/children 2>/dev/null); do
    for g in $(cat /proc/"$child"/task/*/children 2>/dev/null) "$child"; do
      # PID 1 of its own namespace (NSpid ends in 1), not a fork of it that has not exec'd yet.
      if [ "$(cat /proc/"$g"/comm 2>/dev/null)" = systemd ] && [ "$(readlink /proc/"$g"/ns/pid)" != "$mypidns" ] \
          && [ "$(awk '/^NSpid:/{print $NF}' /proc/"$g"/status 2>/dev/null)" = 1 ]; then
        cpid=$g
      fi
    done
  done
  [ -n "$cpid" ] && break
  kill -0 "$nspawn_pid" 2>/dev/null || { cat "$work/console.log" >&2; fail "systemd-nspawn exited"; }
  sleep 0.1
done
echo "container PID 1: $cpid ($(grep NSpid /proc/$cpid/status))"
[ -n "$cpid" ] || fail "no systemd (PID 1 of its own PID namespace) under systemd-nspawn $nspawn_pid"
[ "$(readlink /proc/"$cpid"/ns/pid)" != "$mypidns" ] || fail "PID $cpid shares our PID namespace"
inside() { nsenter -t "$cpid" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }
# systemctl needs the manager's socket, which PID 1 makes a moment after it starts.
for _ in $(seq 1 300); do inside test -S /run/systemd/private 2>/dev/null && break; sleep 0.1; done
state=$(inside timeout 60 systemctl is-system-running --wait 2>"$work/state.err" || true)
[ -s "$work/state.err" ] && cat "$work/state.err" >&2
case "$state" in
  running) ;;
  degraded) echo "container degraded:"; inside systemctl --failed --no-pager ;;
  *) fail "container systemd is '$state', not running" ;;
esac
echo "booted in $(( $(date +%s) - t_boot )) s (systemd PID $cpid on the host)"

# ---- install ----------------------------------------------------------------------------------
step "apt install ./nowconnect-relay_*.deb ./nowconnect-agent_*.deb"
for p in relay agent; do
  inside sh -c "cd /debs && DEBIAN_FRONTEND=noninteractive apt install -y -q ./nowconnect-${p}_*.deb" \
    >>"$work/apt.log" 2>&1 || { cat "$work/apt.log" >&2; fail "apt install ./nowconnect-${p}_*.deb failed"; }
done
grep -E "^nowconnect-(agent|relay):" "$work/apt.log" || true
for u in nowconnect-agent nowconnect-relay; do
  [ "$(inside systemctl is-enabled $u.service)" = enabled ] || fail "$u.service is not enabled after install"
  inside systemctl is-failed --quiet $u.service && fail "$u.service failed after install (no configuration yet)"
done
inside systemctl is-active --quiet nowconnect-agent.service && fail "agent runs with an empty token"
[ "$(inside stat -c '%U:%G %a %s' /etc/nowconnect/token)" = "root:nowconnect-agent 640 0" ] \
  || fail "/etc/nowconnect/token is $(inside stat -c '%U:%G %a %s' /etc/nowconnect/token), not root:nowconnect-agent 640, empty"
for f in premise.yaml agent.env cloud.yaml relay.env; do
  inside dpkg-query -W -f='${Conffiles}\n' nowconnect-agent nowconnect-relay | grep -q "/etc/nowconnect/$f " \
    || fail "/etc/nowconnect/$f is not a conffile"
done
inside id nowconnect-agent >/dev/null && inside id nowconnect-relay >/dev/null || fail "sysusers made no service users"
echo "installed: units enabled, agent skipped until it has a token, token file root:nowconnect-agent 0640"

# ---- configure (what an operator does) --------------------------------------------------------
step "configuring /etc/nowconnect (cloud.yaml, premise.yaml, TLS, JWKS, token)"
# Token A expires soon: the agent reconnects 50 s before (refresh_before_exp_sec) with what the
# file holds then, which will be token B. The relay allows no clock leeway here.
exp_a=$(( $(date +%s) + 62 ))
mint tok-a "$exp_a" >"$share/token-a.jwt"
inside sh -ec '
  install -m 0640 -o root -g nowconnect-relay /share/cloud.yaml /etc/nowconnect/cloud.yaml
  install -m 0640 -o root -g nowconnect-agent /share/premise.yaml /etc/nowconnect/premise.yaml
  install -m 0644 /share/pki/tls.crt /share/pki/ca.pem /share/pki/jwks.json /etc/nowconnect/
  install -m 0640 -o root -g nowconnect-relay /share/pki/tls.key /etc/nowconnect/tls.key
  install -m 0640 -o root -g nowconnect-agent /share/token-a.jwt /etc/nowconnect/token
  nowconnect-relay --check --config /etc/nowconnect/cloud.yaml
  nowconnect-agent --check --config /etc/nowconnect/premise.yaml
' || fail "configuration refused by --check"

# ---- start ------------------------------------------------------------------------------------
tcp_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
health() { timeout 2 bash -c "head -c 16 < /dev/tcp/127.0.0.1/$P_HEALTH" 2>/dev/null | tr -d '\r\n'; }

step "systemctl start nowconnect-relay (returns after READY=1)"
t0=$(date +%s%N)
inside systemctl start nowconnect-relay || fail "systemctl start nowconnect-relay failed"
echo "returned after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
for p in "$P_TUN" "$P_LDAP" "$P_ECHO"; do tcp_open "$p" || fail "relay returned from start but 127.0.0.1:$p is not bound"; done
status=$(inside systemctl show -p StatusText --value nowconnect-relay)
[[ "$status" == serving:* ]] || fail "relay STATUS is '$status'"
echo "relay STATUS: $status"

step "systemctl start nowconnect-agent (returns after the relay's HELLO_ACK)"
t0=$(date +%s%N)
inside systemctl start nowconnect-agent || fail "systemctl start nowconnect-agent failed"
echo "returned after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
[ "$(health)" = READY ] || fail "agent returned from start but its health port says '$(health)', not READY"
echo "agent health: READY"
inside systemctl status --no-pager nowconnect-agent | head -5
inside journalctl -u nowconnect-agent --no-pager | tail -3

step "token rotation: replace /etc/nowconnect/token (token B) while token A is in use"
inside install -m 0640 -o root -g nowconnect-agent /share/token-b.jwt /etc/nowconnect/token

step "ldapsearch through the tunnel (relay listener 127.0.0.1:$P_LDAP -> agent -> slapd)"
out=$(search "$P_LDAP") || true
grep -q '^mail: alice@example.org' <<<"$out" || fail "ldapsearch through the tunnel: $out"
echo "uid=alice found through the tunnel"

step "audit file and state directory where cloud.yaml says"
for _ in $(seq 1 50); do inside grep -q '"action":"open"' /var/log/nowconnect/audit.jsonl 2>/dev/null && break; sleep 0.1; done
inside grep -q '"action":"hello"' /var/log/nowconnect/audit.jsonl || fail "no hello record in /var/log/nowconnect/audit.jsonl"
inside grep -q '"action":"open"' /var/log/nowconnect/audit.jsonl || fail "no open record in /var/log/nowconnect/audit.jsonl"
[ "$(inside stat -c %U /var/log/nowconnect/audit.jsonl)" = nowconnect-relay ] || fail "audit file not owned by nowconnect-relay"
[ "$(inside stat -c '%U %a' /var/lib/nowconnect)" = "nowconnect-relay 750" ] || fail "/var/lib/nowconnect is $(inside stat -c '%U %a' /var/lib/nowconnect)"
echo "audit: $(inside sh -c 'wc -l < /var/log/nowconnect/audit.jsonl') records in /var/log/nowconnect/audit.jsonl; state dir /var/lib/nowconnect"

# ---- reload (the relay's SIGHUP) --------------------------------------------------------------
if [ "$RELOAD_CHECKS" = 1 ]; then
  step "reload: a long stream through 'echo' keeps flowing while a listener is added"
  python3 - "$P_ECHO" >"$work/stream.out" 2>&1 <<'EOF' &
import hashlib, os, socket, sys, threading, time
total, chunk = 4 * 1024 * 1024, 16 * 1024          # 4 MiB over ~12 s
data = os.urandom(total)
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
got = bytearray()
def reader():
    while True:
        b = s.recv(65536)
        if not b: return
        got.extend(b)
t = threading.Thread(target=reader); t.start()
for i in range(0, total, chunk):
    s.sendall(data[i:i + chunk]); time.sleep(0.045)
s.shutdown(socket.SHUT_WR); t.join(60)
ok = hashlib.sha256(bytes(got)).digest() == hashlib.sha256(data).digest()
print("byte-exact" if ok else f"MISMATCH: sent {total} got {len(got)}")
EOF
  stream_pid=$!
  for _ in $(seq 1 50); do [ -n "$(ss -Htn state established "( sport = :$P_ECHO )" 2>/dev/null)" ] && break; sleep 0.1; done
  relay_pid=$(inside systemctl show -p MainPID --value nowconnect-relay)
  inside sh -ec "sed -i 's|^  - {name: echo, .*|&\n  - {name: ldap2, bind: \"127.0.0.1:$P_NEW\", connector: addomain}|' /etc/nowconnect/cloud.yaml"
  inside systemctl reload nowconnect-relay || fail "systemctl reload nowconnect-relay failed"
  for _ in $(seq 1 100); do search "$P_NEW" | grep -q '^mail: alice' && break; sleep 0.1; done
  search "$P_NEW" | grep -q '^mail: alice' || fail "the listener added by reload (127.0.0.1:$P_NEW) does not serve"
  [ "$(inside systemctl show -p MainPID --value nowconnect-relay)" = "$relay_pid" ] || fail "reload restarted the relay"
  inside journalctl -u nowconnect-relay --no-pager -o cat | grep -q 'reload applied' || fail "journal has no 'reload applied' line"

  step "reload: an invalid cloud.yaml is refused, the old configuration keeps serving"
  inside cp /etc/nowconnect/cloud.yaml /root/cloud.good
  inside sh -ec 'echo "not_a_key: 1" >> /etc/nowconnect/cloud.yaml'
  inside systemctl reload nowconnect-relay || true
  for _ in $(seq 1 50); do inside journalctl -u nowconnect-relay --no-pager -o cat | grep -q 'reload refused' && break; sleep 0.1; done
  refused=$(inside journalctl -u nowconnect-relay --no-pager -o cat | grep -c 'reload refused' || true)
  [ "$refused" = 1 ] || fail "expected one 'reload refused' journal line, found $refused"
  inside journalctl -u nowconnect-relay --no-pager -o cat | grep 'reload refused'
  inside systemctl is-active --quiet nowconnect-relay || fail "relay not active after a refused reload"
  [ "$(inside systemctl show -p MainPID --value nowconnect-relay)" = "$relay_pid" ] || fail "refused reload restarted the relay"
  search "$P_NEW" | grep -q '^mail: alice' || fail "after a refused reload 127.0.0.1:$P_NEW stopped serving"
  inside cp /root/cloud.good /etc/nowconnect/cloud.yaml
  wait "$stream_pid" || true
  grep -qx byte-exact "$work/stream.out" || fail "the stream across the reloads: $(cat "$work/stream.out")"
  echo "4 MiB stream opened before the reloads: byte-exact"
else
  echo "RELOAD_CHECKS=0: reload steps skipped"
fi

# ---- rotation, concluded ----------------------------------------------------------------------
step "token rotation: token A expires at $(date -u -d @"$exp_a" +%T); the agent must have moved to B"
while [ "$(date +%s)" -le $(( exp_a + 3 )) ]; do sleep 1; done
[ "$(health)" = READY ] || fail "after token A's exp the agent is '$(health)': the replaced token was not used"
out=$(search "$P_LDAP") || true
grep -q '^mail: alice@example.org' <<<"$out" || fail "ldapsearch after token A's exp: $out"
hellos=$(inside grep -c '"action":"hello","success":true' /var/log/nowconnect/audit.jsonl || true)
[ "${hellos:-0}" -ge 2 ] || fail "expected a second successful hello (reconnect with token B), audit has $hellos"
[ "$(inside systemctl show -p NRestarts --value nowconnect-agent)" = 0 ] || fail "the agent was restarted"
echo "reconnected with the new token (hello records: $hellos), no restart, READY past token A's exp"

# ---- stop -------------------------------------------------------------------------------------
step "systemctl stop (exit 0 within the grace period)"
for u in nowconnect-agent nowconnect-relay; do
  t0=$(date +%s%N)
  inside systemctl stop $u || fail "systemctl stop $u failed"
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  result=$(inside systemctl show -p Result --value $u) code=$(inside systemctl show -p ExecMainStatus --value $u)
  [ "$result" = success ] && [ "$code" = 0 ] || fail "$u stopped with Result=$result ExecMainStatus=$code"
  [ "$ms" -lt 10000 ] || fail "$u took $ms ms to stop"
  echo "$u stopped in $ms ms, exit 0"
done

step "the journal never holds a token"
inside journalctl --no-pager -o cat >"$work/journal.txt"
cat "$work/console.log" >>"$work/journal.txt"
for t in "$share/token-a.jwt" "$share/token-b.jwt"; do
  sig=$(cut -d. -f3 "$t") body=$(cut -d. -f2 "$t")
  if grep -qF -e "$sig" -e "$body" "$work/journal.txt"; then fail "the journal holds a token"; fi
done
echo "no token (nor its payload or signature) in $(wc -l <"$work/journal.txt") journal lines"

# ---- remove and purge -------------------------------------------------------------------------
step "dpkg -r keeps /etc/nowconnect"
inside dpkg -r nowconnect-agent nowconnect-relay >/dev/null || fail "dpkg -r failed"
for f in premise.yaml agent.env cloud.yaml relay.env token; do
  inside test -e /etc/nowconnect/$f || fail "dpkg -r removed /etc/nowconnect/$f"
done
inside test -e /usr/bin/nowconnect-agent && fail "dpkg -r left /usr/bin/nowconnect-agent"
inside test -d /var/log/nowconnect || fail "dpkg -r removed the audit trail"
echo "removed: binaries gone, configuration, token, state and audit kept"

step "dpkg -P removes the configuration, the token, the state and the logs"
inside dpkg -P nowconnect-agent nowconnect-relay >/dev/null 2>&1 || fail "dpkg -P failed"
for f in premise.yaml agent.env cloud.yaml relay.env token; do
  inside test -e /etc/nowconnect/$f && fail "dpkg -P left /etc/nowconnect/$f"
done
for d in /var/lib/nowconnect /var/log/nowconnect; do inside test -e $d && fail "dpkg -P left $d"; done
echo "purged (the operator's own files stay: $(inside ls /etc/nowconnect | tr '\n' ' '))"

printf '\nsystemd-container-test: all checks passed in %s s\n' "$(( $(date +%s) - t_start ))"
