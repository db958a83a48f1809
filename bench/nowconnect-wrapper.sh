#!/usr/bin/env bash
# bench/nowconnect-wrapper.sh -- NowConnect as a tool for the team harness (../shared/bench/compare.sh);
# interface in ../shared/bench/tools/README.md:
#
#   nowconnect-wrapper.sh start WORKDIR LPORT:THOST:TPORT...   relay + agent; 127.0.0.1:LPORT -> THOST:TPORT
#   nowconnect-wrapper.sh stop WORKDIR                          TERM, then KILL, the pids it started
#   nowconnect-wrapper.sh binaries                              relay and agent binaries
#
# VARIANT (env): wss (default: TLS, protocol v2) | ws (plain WebSocket, v2) | wss-v1 | ws-v1.
# CERT_DIR (env, from the harness's mkcerts.sh): ca.pem, server.pem, server.key for wss.
# Binaries: NOWCONNECT_RELAY_BIN / NOWCONNECT_AGENT_BIN, default target/release of this repository
# (build them first: cargo build --release --workspace --bins). Never builds anything.
#
# The relay listens on 127.0.0.1:LPORT per mapping (connector cLPORT); its /tunnel, admin and the
# agent's health port are free ports picked at start. Relay pid -> WORKDIR/server.pid, agent pid
# -> WORKDIR/client.pid; configs and logs in WORKDIR. Returns once the agent says READY.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
RELAY=${NOWCONNECT_RELAY_BIN:-$HERE/../target/release/nowconnect-relay}
AGENT=${NOWCONNECT_AGENT_BIN:-$HERE/../target/release/nowconnect-agent}
VARIANT=${VARIANT:-wss}
CERT_DIR=${CERT_DIR:-/tmp/bench-certs}

die() { echo "nowconnect-wrapper: $*" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# until COMMAND succeeds, or PID dies, or 15 s pass
wait_for() {
  local what=$1 pid=$2 i; shift 2
  for ((i = 0; i < 150; i++)); do
    "$@" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || die "$what: process $pid exited (see logs in $W)"
    sleep 0.1
  done
  die "$what: not ready after 15 s (see logs in $W)"
}

relay_ready() {  # GET /readyz on the plain admin port answers 200
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
  local line; IFS= read -r -t 2 line <&3 || { exec 3<&-; return 1; }
  exec 3<&-
  [[ $line == "HTTP/1.1 200"* ]]
}

agent_ready() {  # the health port answers READY
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
  local line; IFS= read -r -t 2 line <&3 || true
  exec 3<&-
  [[ $line == READY* ]]
}

start() {
  W=$1; shift
  (($#)) || die "start: no LPORT:THOST:TPORT mapping"
  [[ -x $RELAY && -x $AGENT ]] || die "binaries missing ($RELAY, $AGENT): cargo build --release --workspace --bins"
  mkdir -p "$W"
  local scheme protocol
  case $VARIANT in
    wss) scheme=wss protocol=v2 ;;
    ws) scheme=ws protocol=v2 ;;
    wss-v1) scheme=wss protocol=v1 ;;
    ws-v1) scheme=ws protocol=v1 ;;
    *) die "unknown VARIANT $VARIANT (wss, ws, wss-v1, ws-v1)" ;;
  esac
  local tport admin health
  tport=$(free_port); admin=$(free_port); health=$(free_port)

  {
    echo "# written by bench/nowconnect-wrapper.sh ($VARIANT)"
    echo "tunnel:"
    echo "  host: 127.0.0.1"
    echo "  port: $tport"
    if [[ $scheme == wss ]]; then
      [[ -s $CERT_DIR/server.pem && -s $CERT_DIR/server.key ]] || die "no certificates in $CERT_DIR (run mkcerts.sh)"
      echo "  tls:"
      echo "    cert_file: '$CERT_DIR/server.pem'"
      echo "    key_file: '$CERT_DIR/server.key'"
    fi
    echo "security:"
    echo "  dev_bypass: true"
    echo "observability:"
    echo "  metrics_port: $admin"
    echo "  log_level: warn"
    echo "listeners:"
    local m
    for m in "$@"; do
      IFS=: read -r lport _ _ <<< "$m"
      echo "  - name: c$lport"
      echo "    bind: 127.0.0.1:$lport"
      echo "    connector: c$lport"
    done
  } > "$W/relay.yaml"

  local names=()
  for m in "$@"; do names+=("c${m%%:*}"); done
  {
    echo "# written by bench/nowconnect-wrapper.sh ($VARIANT)"
    echo "tunnel:"
    echo "  url: $scheme://localhost:$tport/tunnel"
    echo "  agent_id: bench-agent"
    echo "  protocol: $protocol"
    [[ $scheme == ws ]] && echo "  allow_insecure_ws: true"
    echo "  exported_connectors: [$(IFS=,; echo "${names[*]}")]"
    [[ $scheme == wss ]] && { echo "proxy:"; echo "  ca_bundle: '$CERT_DIR/ca.pem'"; }
    echo "health:"
    echo "  host: 127.0.0.1"
    echo "  port: $health"
    echo "logging:"
    echo "  level: warn"
    echo "targets:"
    for m in "$@"; do
      IFS=: read -r lport thost tport2 <<< "$m"
      echo "  c$lport: {host: '$thost', port: $tport2}"
    done
  } > "$W/agent.yaml"

  # Started directly (no subshell in between) so the pids are the tunnel processes themselves.
  "$RELAY" --config "$W/relay.yaml" > "$W/relay.log" 2>&1 &
  echo $! > "$W/server.pid"
  wait_for "relay /readyz" "$(cat "$W/server.pid")" relay_ready "$admin"
  "$AGENT" --config "$W/agent.yaml" > "$W/agent.log" 2>&1 &
  echo $! > "$W/client.pid"
  wait_for "agent READY" "$(cat "$W/client.pid")" agent_ready "$health"
}

stop() {
  local w=$1 f pid i
  for f in "$w/client.pid" "$w/server.pid"; do
    [[ -f $f ]] && kill "$(cat "$f")" 2>/dev/null || true
  done
  for ((i = 0; i < 50; i++)); do
    local alive=0
    for f in "$w/client.pid" "$w/server.pid"; do
      [[ -f $f ]] && kill -0 "$(cat "$f")" 2>/dev/null && alive=1
    done
    ((alive)) || break
    sleep 0.1
  done
  for f in "$w/client.pid" "$w/server.pid"; do
    [[ -f $f ]] || continue
    pid=$(cat "$f")
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$f"
  done
}

case ${1:-} in
  start) shift; (($#)) || die "usage: $0 start WORKDIR MAPPING..."; start "$@" ;;
  stop) [[ -n ${2:-} ]] || die "usage: $0 stop WORKDIR"; stop "$2" ;;
  binaries) echo "$RELAY"; echo "$AGENT" ;;
  *) sed -n '2,17p' "$0" >&2; exit 2 ;;
esac
