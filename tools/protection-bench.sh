#!/usr/bin/env bash
# What the inbound checks cost: SMTP accepts/s on the MX listener of a one-node wmail
# (release build) with the checks off, then adding them one group at a time. DNS is
# answered locally by dnsmasq (SPF and DMARC records for bench.test), clamd is a real
# clamd with a one-signature database.
#
#   tools/protection-bench.sh [SECONDS] [CONCURRENCY]     (defaults: 10 s, 16 sessions)
#
# Prints one Markdown row per configuration: accepts/s, p50 and p99 latency.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
source "$repo/tools/dev/env.sh"
seconds="${1:-10}"
concurrency="${2:-16}"
cargo build --release -p wmail -p wmail-bench >&2
wmail="$CARGO_TARGET_DIR/release/wmail"
bench="$CARGO_TARGET_DIR/release/wmail-bench"
work="$(mktemp -d)"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

dns_port="$(port)"
dnsmasq --no-daemon --no-resolv --no-hosts --bind-interfaces --pid-file= --listen-address=127.0.0.1 \
  --local=/test/ --port="$dns_port" --user=root \
  "--txt-record=bench.test,v=spf1 ip4:127.0.0.1 -all" "--txt-record=_dmarc.bench.test,v=DMARC1; p=none" \
  >"$work/dnsmasq.log" 2>&1 &
pids+=($!)
clamd_port="$(port)"
mkdir -p "$work/clamav"
echo "Wmail.Test.EICAR:0:*:$(printf 'EICAR-STANDARD-ANTIVIRUS-TEST-FILE' | od -An -tx1 | tr -d ' \n')" >"$work/clamav/test.ndb"
printf 'Foreground yes\nDatabaseDirectory %s\nTCPSocket %s\nTCPAddr 127.0.0.1\nBytecode no\n' \
  "$work/clamav" "$clamd_port" >"$work/clamd.conf"
clamd --config-file "$work/clamd.conf" >"$work/clamd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$clamd_port") 2>/dev/null && break; sleep 0.1; done

run() { # NAME, extra config
  local name="$1" extra="$2" dir="$work/node-$RANDOM" smtp http
  smtp="$(port)"; http="$(port)"
  mkdir -p "$dir"
  cat >"$dir/wmail.toml" <<EOF
[server]
hostname = "mx.bench.test"
data_dir = "$dir/data"
[listen]
smtp = ["127.0.0.1:$smtp"]
submission = []
submissions = []
pop3 = []
pop3s = []
imap = []
imaps = []
http = ["127.0.0.1:$http"]
[dns]
servers = ["127.0.0.1:$dns_port"]
$extra
EOF
  "$wmail" serve --config "$dir/wmail.toml" >"$dir/log" 2>&1 &
  local pid=$!
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$http/readyz" >/dev/null && break; sleep 0.1; done
  "$bench" --server "http://127.0.0.1:$http" --token "$(cat "$dir/data/admin-token")" \
    smtp --smtp "127.0.0.1:$smtp" --concurrency "$concurrency" --seconds "$seconds" --json |
    python3 -c "
import json, sys
r = json.loads(sys.stdin.readline())
print(f'| $name | {r[\"accepts_per_second\"]:.0f} | {r[\"p50_ms\"]:.1f} | {r[\"p99_ms\"]:.1f} | {r[\"failed\"]} |')"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

checked='[antispam]
trusted_networks = []'
echo "| checks ($concurrency sessions, ${seconds} s) | accepts/s | p50 ms | p99 ms | failed |"
echo "| --- | ---: | ---: | ---: | ---: |"
run "off" '[antispam]
enabled = false'
run "iprev + SPF" "$checked
dkim = false
arc = false
dmarc = \"off\""
run "+ DKIM, ARC, DMARC, content" "$checked"
run "+ DNSBL (2 zones)" "$checked
dnsbl = [{ zone = \"bl1.test\", action = \"reject\" }, { zone = \"bl2.test\", action = \"score\" }]"
run "+ clamd" "$checked
dnsbl = [{ zone = \"bl1.test\", action = \"reject\" }, { zone = \"bl2.test\", action = \"score\" }]
[antivirus]
clamd = \"127.0.0.1:$clamd_port\""
