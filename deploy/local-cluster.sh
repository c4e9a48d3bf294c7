#!/usr/bin/env bash
# Runs a three-node wmail cluster on this machine, with SeaweedFS as the shared S3 blob
# store, to try the cluster: `deploy/local-cluster.sh` starts it (and prints how to use
# it), `deploy/local-cluster.sh stop` stops it. Everything lives in $LOCAL_CLUSTER_DIR
# (default ./wmail-cluster); remove that directory to start from scratch.
#
# Ports (127.0.0.1): node N (1-3) serves HTTP on 18N80 (18180, 18280, 18380), SMTP on
# 18N25, submission 18N87, IMAP 18N43, IMAPS 18N93, POP3 18N10, POP3S 18N95, and the
# cluster (QUIC) on 18N44. S3 listens on 18333.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
source "$repo/tools/dev/env.sh"
dir="$(realpath -m "${LOCAL_CLUSTER_DIR:-./wmail-cluster}")"

stop() {
  for pidfile in "$dir"/*.pid; do
    [ -e "$pidfile" ] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

if [ "${1:-start}" = stop ]; then
  stop
  echo "stopped the cluster in $dir"
  exit 0
fi

"$repo/tools/dev/deps.sh" cluster
if [ ! -x "$CARGO_TARGET_DIR/release/wmail" ] || [ -n "$(find "$repo" -name '*.rs' -newer "$CARGO_TARGET_DIR/release/wmail" -print -quit)" ]; then
  echo "building wmail (release)..." >&2
  (cd "$repo" && cargo build --release -p wmail)
fi
wmail="$CARGO_TARGET_DIR/release/wmail"
mkdir -p "$dir/s3/data"

running() { # name: whether the process of $dir/name.pid is alive (a zombie is not)
  local state
  [ -e "$dir/$1.pid" ] || return 1
  state="$(ps -o stat= -p "$(cat "$dir/$1.pid")" 2>/dev/null || true)"
  [ -n "$state" ] && [ "${state#Z}" = "$state" ]
}

wait_http() { # url what log
  for _ in $(seq 1 600); do
    curl -sf "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$2 did not start; its log: $3" >&2
  exit 1
}

echo '{"identities":[{"name":"wmail","credentials":[{"accessKey":"wmail","secretKey":"wmail-local-secret"}],"actions":["Admin","Read","Write","List","Tagging"]}]}' >"$dir/s3/s3.json"
if ! running s3; then
  (cd "$dir/s3" && exec "$WMAIL_WEED" mini -dir=data -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
    -master.telemetry.url=http://127.0.0.1:9/ -s3.config=s3.json -bucket=wmail -admin.ui=false -webdav=false \
    -s3.port.iceberg=0 -s3.port.lance=0 -s3.port=18333 -master.port=18334 -volume.port=18335 \
    -filer.port=18336 -admin.port=18337 >"$dir/s3.log" 2>&1) &
  echo $! >"$dir/s3.pid"
fi
# Ready once the S3 API answers for the bucket (403 without credentials).
for _ in $(seq 1 900); do
  code="$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18333/wmail || true)"
  [ "$code" = 403 ] || [ "$code" = 200 ] && break
  sleep 0.1
done

for n in 1 2 3; do
  cat >"$dir/node$n.toml" <<TOML
# Node $n of the local test cluster (deploy/local-cluster.sh).
[server]
hostname = "node$n.local.test"
data_dir = "$dir/node$n"

[listen]
http = ["127.0.0.1:18${n}80"]
smtp = ["127.0.0.1:18${n}25"]
submission = ["127.0.0.1:18${n}87"]
imap = ["127.0.0.1:18${n}43"]
imaps = ["127.0.0.1:18${n}93"]
pop3 = ["127.0.0.1:18${n}10"]
pop3s = ["127.0.0.1:18${n}95"]
# HAProxy (deploy/haproxy/haproxy.cfg) connects from 127.0.0.3 with PROXY v2 headers.
proxy_protocol_from = ["127.0.0.3"]

[blob]
backend = "s3"
bucket = "wmail"
endpoint = "http://127.0.0.1:18333"
region = "us-east-1"
access_key_id = "wmail"
secret_access_key = "wmail-local-secret"

[cluster]
listen = "127.0.0.1:18${n}44"
TOML
done

spawn_node() { # n [serve args...]; a node already running is left alone
  local n="$1"
  shift
  running "node$n" && return 0
  "$wmail" serve --config "$dir/node$n.toml" "$@" >>"$dir/node$n.log" 2>&1 &
  echo $! >"$dir/node$n.pid"
}

# Members first, all at once: a restarted member is only ready once a majority is up.
for n in 1 2 3; do
  if [ "$n" = 1 ] || [ -e "$dir/node$n/cluster/identity.json" ]; then
    spawn_node "$n"
  fi
done
for n in 1 2 3; do
  if [ "$n" = 1 ] || [ -e "$dir/node$n/cluster/identity.json" ]; then
    wait_http "http://127.0.0.1:18${n}80/readyz" "node $n" "$dir/node$n.log"
  fi
done
# Then the nodes that have not joined yet, one by one, with tokens from node 1.
for n in 2 3; do
  if [ ! -e "$dir/node$n/cluster/identity.json" ]; then
    token="$("$wmail" --server http://127.0.0.1:18180 --data-dir "$dir/node1" cluster token --json |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')"
    spawn_node "$n" --join 127.0.0.1:18144 --join-token "$token"
    wait_http "http://127.0.0.1:18${n}80/readyz" "node $n" "$dir/node$n.log"
  fi
done

"$wmail" --server http://127.0.0.1:18180 --data-dir "$dir/node1" cluster status
cat <<TEXT

The cluster runs in $dir (logs: node1.log ... node3.log, s3.log).
  admin CLI:  $wmail --server http://127.0.0.1:18180 --data-dir $dir/node1 domain add example.com
  any node:   SMTP 127.0.0.1:18125 / 18225 / 18325, IMAPS 18193 / 18293 / 18393, POP3S 18195 / 18295 / 18395
  failover:   kill -9 \$(cat $dir/node1.pid), then use nodes 2 and 3; run this script again to restart it
  stop:       $0 stop
TEXT
