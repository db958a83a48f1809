#!/usr/bin/env bash
# bench/ldap-syscalls.sh WRAPPER[:VARIANT] SCENARIO DURATION -- syscalls of a tunnel during LDAP searches.
# Starts a wrapper of the team harness (../shared/bench/tools/README.md) to the harness slapd
# (127.0.0.1:3890, ../shared/bench/setup.sh), runs ldap_perf.py SCENARIO for DURATION s with
# strace -c -f on the server and client processes, prints the search count and both summaries.
# Counts, not times: strace slows everything. Example:
#   bench/ldap-syscalls.sh bench/nowconnect-wrapper.sh:wss baseline 5
set -euo pipefail
spec=$1; scen=$2; dur=$3
w=${spec%%:*}; v=${spec#*:}; [[ $v == "$spec" ]] && v=""
W=$(mktemp -d /tmp/ls.XXXX); LP=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
export CERT_DIR=${CERT_DIR:-/tmp/bench-certs} VARIANT=$v
[[ -s $CERT_DIR/ca.pem ]] || bash "$(dirname "$0")/../../shared/bench/mkcerts.sh" "$CERT_DIR" >/dev/null
"$w" start "$W" "$LP:127.0.0.1:3890"
for i in $(seq 100); do python3 -c "import socket;socket.create_connection(('127.0.0.1',$LP),timeout=1).close()" 2>/dev/null && break || sleep 0.2; done
sp=$(cat $W/server.pid); cp=$(cat $W/client.pid)
python3 $(dirname "$0")/../../shared/bench/ldap_perf.py --uri ldap://127.0.0.1:$LP --scenario baseline --duration 2 >/dev/null
strace -c -f -p $sp -o $W/relay.strace & s1=$!
strace -c -f -p $cp -o $W/agent.strace & s2=$!
sleep 0.5
python3 $(dirname "$0")/../../shared/bench/ldap_perf.py --uri ldap://127.0.0.1:$LP --scenario $scen --duration $dur > $W/ldap.json
kill -INT $s1 $s2; wait $s1 $s2 || true
"$w" stop "$W" || true
python3 -c "import json;j=json.load(open('$W/ldap.json'));print('searches',j['requests_total'],'rps',j['achieved_rps'])"
echo "--relay"; head -14 $W/relay.strace; echo "--agent"; head -14 $W/agent.strace
