#!/usr/bin/env bash
# Cluster measurements on one machine, on the cluster of deploy/local-cluster.sh:
#
#   tools/cluster-bench.sh failover [KILLS]      kill -9 the leader KILLS times (default 20);
#       each time, the time until another node accepts an SMTP message, then the dead
#       node is restarted and catches up. Prints every gap and the distribution.
#   tools/cluster-bench.sh snapshot [MESSAGES]   deliver MESSAGES (default 100000) over SMTP,
#       then time a brand-new node joining, which catches up by snapshot install.
#   tools/cluster-bench.sh throughput [SECONDS]  durable SMTP accepts/s (10 KB messages, 1, 16
#       and 64 sessions, SECONDS each, default 10) through the leader, through a follower,
#       spread over all three, and on a one-node cluster on the same S3 server; prints a
#       Markdown table with the 3-node/1-node ratios and latencies.
#   tools/cluster-bench.sh load [SECONDS]        wmail-bench smtp on all three nodes for
#       SECONDS (default 30); a third of the way in the leader is killed (-9), a third later
#       restarted. Prints the errors clients saw (by reply code) and the time from the kill
#       to the first accepted message after it.
#
# Uses $LOCAL_CLUSTER_DIR (default ./wmail-cluster); `deploy/local-cluster.sh stop` ends it.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
source "$repo/tools/dev/env.sh"
export LOCAL_CLUSTER_DIR="${LOCAL_CLUSTER_DIR:-./wmail-cluster}"
dir="$(realpath -m "$LOCAL_CLUSTER_DIR")"
wmail="$CARGO_TARGET_DIR/release/wmail"
what="${1:-failover}"
"$repo/deploy/local-cluster.sh" >/dev/null
admin() { "$wmail" --server http://127.0.0.1:18180 --data-dir "$dir/node1" "$@"; }
admin domain add bench.test >/dev/null 2>&1 || true
echo "bench password" | admin account add user0@bench.test --password-stdin >/dev/null 2>&1 || true
# The leader's directory number N (its cluster address is 127.0.0.1:18N44; node ids may differ).
leader() {
  admin cluster status --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(next(m["addr"] for m in s["members"] if m["id"] == s["leader"])[-3])'
}

# Waits (up to 60 s) until every member answers and none lags behind the leader; says how
# long the restarted node $1 took.
caught_up() {
  local start end
  start="$(date +%s.%N)"
  for _ in $(seq 1 600); do
    if admin cluster status --json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
sys.exit(0 if all(m.get("status") and m.get("lag") == 0 for m in s["members"]) else 1)'; then
      end="$(date +%s.%N)"
      echo "  node $1 restarted and caught up in $(python3 -c "print(f'{$end - $start:.2f}')") s"
      return 0
    fi
    sleep 0.1
  done
  echo "  node $1 had not caught up after 60 s" >&2
}

case "$what" in
failover)
  kills="${2:-20}"
  gaps=()
  for i in $(seq 1 "$kills"); do
    id="$(leader)"
    kill -9 "$(cat "$dir/node$id.pid")"
    # The first message another node accepts after the kill (clients retry every 20 ms).
    gap="$(python3 - "$id" <<'PY'
import smtplib, sys, time
dead = int(sys.argv[1])
ports = [18000 + n * 100 + 25 for n in (1, 2, 3) if n != dead]
start = time.monotonic()
while time.monotonic() - start < 60:
    for port in ports:
        try:
            s = smtplib.SMTP("127.0.0.1", port, timeout=30)
            s.sendmail("x@remote.test", ["user0@bench.test"], b"Subject: failover\r\n\r\nx\r\n")
            s.quit()
            print(f"{time.monotonic() - start:.3f}")
            sys.exit(0)
        except (smtplib.SMTPException, OSError):
            time.sleep(0.02)
sys.exit("no node accepted mail within 60 s after the kill")
PY
)"
    gaps+=("$gap")
    echo "kill $i: node $id was the leader; first accepted message after ${gap} s"
    "$repo/deploy/local-cluster.sh" >/dev/null   # restarts the dead node; it catches up
    # Before the next kill every node must have caught up: a leader killed while a voter
    # is still behind leaves one survivor that cannot win (Raft refuses a stale log), which
    # measures the catch-up, not the failover.
    caught_up "$id"
  done
  printf '%s\n' "${gaps[@]}" | python3 -c '
import sys, statistics
g = sorted(float(x) for x in sys.stdin)
q = lambda p: g[min(len(g) - 1, int(p * len(g)))]
print(f"failover gap over {len(g)} leader kills: min {g[0]:.2f} s, p50 {q(0.5):.2f} s, p90 {q(0.9):.2f} s, max {g[-1]:.2f} s, mean {statistics.mean(g):.2f} s")'
  ;;
snapshot)
  messages="${3:-${2:-100000}}"
  "$CARGO_TARGET_DIR/release/wmail-bench" --server http://127.0.0.1:18180 --token "$(cat "$dir/node1/admin-token")" \
    smtp --smtp 127.0.0.1:18125 --concurrency 16 --seconds 3600 --requests "$messages" --size 4096
  # A learner: it catches up the same way and leaves the voters alone when it goes.
  token="$(admin cluster token --learner --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"
  rm -rf "$dir/node4"
  sed -e 's/127\.0\.0\.1:181\(80\|25\|87\|43\|93\|10\|95\|44\)/127.0.0.1:184\1/g; s/node1/node4/g' \
    "$dir/node1.toml" >"$dir/node4.toml"
  start="$(date +%s.%N)"
  "$wmail" serve --config "$dir/node4.toml" --join 127.0.0.1:18144 --join-token "$token" >"$dir/node4.log" 2>&1 &
  echo $! >"$dir/node4.pid"
  until curl -sf http://127.0.0.1:18480/readyz >/dev/null; do sleep 0.05; done
  end="$(date +%s.%N)"
  snapshot="$("$wmail" --server http://127.0.0.1:18480 --data-dir "$dir/node4" cluster status --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["snapshot_index"])')"
  seconds="$(python3 -c "print(f'{$end - $start:.1f}')")"
  echo "a new node joined a cluster holding $messages messages in $seconds s (its snapshot covers log index $snapshot)"
  "$wmail" --server http://127.0.0.1:18480 --data-dir "$dir/node4" cluster status
  du -sh "$dir/node4/state" "$dir/node4/snapshots" 2>/dev/null || true
  id="$("$wmail" --server http://127.0.0.1:18480 --data-dir "$dir/node4" cluster status --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["node_id"])')"
  admin cluster leave "$id" >/dev/null
  kill "$(cat "$dir/node4.pid")"
  rm -f "$dir/node4.pid"
  ;;
load)
  seconds="${2:-30}"
  id="$(leader)"
  "$CARGO_TARGET_DIR/release/wmail-bench" --server http://127.0.0.1:18180 --token "$(cat "$dir/node1/admin-token")" \
    smtp --smtp 127.0.0.1:18125,127.0.0.1:18225,127.0.0.1:18325 --concurrency 16 --seconds "$seconds" \
    --size 4096 --accounts 16 --json >"$dir/load.json" &
  load=$!
  sleep "$(python3 -c "print($seconds / 3)")"
  killed="$(date +%s%3N)"
  kill -9 "$(cat "$dir/node$id.pid")"
  sleep "$(python3 -c "print($seconds / 3)")"
  "$repo/deploy/local-cluster.sh" >/dev/null   # the killed node comes back and catches up
  if ! wait "$load"; then
    echo "wmail-bench failed (its output: $dir/load.json)" >&2
    exit 1
  fi
  python3 - "$killed" "$id" "$dir/load.json" <<'PY'
import json, sys
killed, node = int(sys.argv[1]), sys.argv[2]
r = json.loads(open(sys.argv[3]).read().strip().splitlines()[-1])
killed_at = (killed - r["started_unix_ms"]) / 1000
errors = ", ".join(f"{code}: {n}" for code, n in r["errors"].items()) or "none"
print(f"{r['delivered']} messages accepted in {r['seconds']:.0f} s by 16 sessions on 3 nodes "
      f"({r['accepts_per_second']:.0f}/s, p99 {r['p99_ms']:.0f} ms, max {r['max_ms']:.0f} ms)")
print(f"node {node} (the leader) killed -9 {killed_at:.1f} s into the run, restarted about {r['seconds'] / 3:.0f} s later")
print(f"errors seen by clients: {errors}")
gap_end = r["longest_gap_ended_unix_ms"]
gap_start = gap_end - r["longest_gap_ms"]
# Messages in flight at the kill may still complete just after it: a pause that starts
# within a second after the kill is the failover's.
if gap_start <= killed + 1000 and killed <= gap_end:
    print(f"first accepted message after the kill: {(gap_end - killed) / 1000:.2f} s "
          f"(no message was accepted for {r['longest_gap_ms'] / 1000:.2f} s)")
else:
    print(f"messages kept being accepted through the kill (longest pause {r['longest_gap_ms'] / 1000:.2f} s, "
          f"{(gap_start - killed) / 1000:+.1f} s from the kill)")
PY
  ;;
throughput)
  seconds="${2:-10}"
  id="$(leader)"
  follower=$(( id % 3 + 1 ))
  # A one-node cluster beside it: same machine, same S3 server and bucket (its blobs are
  # content-addressed, and its garbage collection waits a day before deleting anything).
  rm -rf "$dir/single"
  sed -e 's/127\.0\.0\.1:181\([0-9][0-9]\)/127.0.0.1:185\1/g; s/node1/single/g' "$dir/node1.toml" >"$dir/single.toml"
  "$wmail" serve --config "$dir/single.toml" >"$dir/single.log" 2>&1 &
  echo $! >"$dir/single.pid"
  until curl -sf http://127.0.0.1:18580/readyz >/dev/null; do sleep 0.1; done
  run() { # http smtp-addresses concurrency -> one JSON line
    "$CARGO_TARGET_DIR/release/wmail-bench" --server "http://127.0.0.1:${1}" --token "$(cat "$dir/$2/admin-token")" \
      smtp --smtp "$3" --concurrency "$4" --seconds "$seconds" --size 10240 --accounts 16 --json 2>/dev/null | tail -1
  }
  results="$dir/throughput.jsonl"
  : >"$results"
  for c in 1 16 64; do
    echo "{\"c\": $c, \"target\": \"leader\", \"r\": $(run 18180 node1 "127.0.0.1:18${id}25" "$c")}" >>"$results"
    echo "{\"c\": $c, \"target\": \"follower\", \"r\": $(run 18180 node1 "127.0.0.1:18${follower}25" "$c")}" >>"$results"
    echo "{\"c\": $c, \"target\": \"all\", \"r\": $(run 18180 node1 127.0.0.1:18125,127.0.0.1:18225,127.0.0.1:18325 "$c")}" >>"$results"
    echo "{\"c\": $c, \"target\": \"single\", \"r\": $(run 18580 single 127.0.0.1:18525 "$c")}" >>"$results"
    echo "sessions $c done" >&2
  done
  kill "$(cat "$dir/single.pid")"
  rm -f "$dir/single.pid"
  python3 - "$results" "$id" "$follower" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
get = lambda c, t: next(r["r"] for r in rows if r["c"] == c and r["target"] == t)
print(f"Durable SMTP accepts/s, 10 KB messages (leader: node {sys.argv[2]}, follower: node {sys.argv[3]}); p50/p99 ms")
print()
print("| sessions | via leader | via follower | spread over 3 | one node | 3-node/1-node (spread) |")
print("|---|---|---|---|---|---|")
for c in (1, 16, 64):
    cell = lambda r: f"{r['accepts_per_second']:.0f} ({r['p50_ms']:.1f}/{r['p99_ms']:.1f})"
    leader, follower, spread, single = (get(c, t) for t in ("leader", "follower", "all", "single"))
    ratio = spread["accepts_per_second"] / single["accepts_per_second"]
    print(f"| {c} | {cell(leader)} | {cell(follower)} | {cell(spread)} | {cell(single)} | {ratio:.2f}x |")
PY
  ;;
*)
  echo "usage: $0 failover [KILLS] | snapshot [MESSAGES] | load [SECONDS] | throughput [SECONDS]" >&2
  exit 2
  ;;
esac
