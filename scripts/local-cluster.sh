#!/usr/bin/env bash
# Brings up a 3-member litecluster on loopback, writes and reads through different members,
# and leaves it running. `scripts/local-cluster.sh down` stops it and removes its data.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${LITECLUSTER_RUN_DIR:-/tmp/litecluster-local}
BIN=target/release/litecluster-node

down() {
  if [ -d "$RUN" ]; then
    for p in "$RUN"/*.pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null || true; done
    sleep 1
    rm -rf "$RUN"
    echo "local cluster stopped, $RUN removed"
  fi
}

if [ "${1:-up}" = down ]; then down; exit 0; fi
down >/dev/null
echo "building litecluster-node (release)..."
cargo build --release -q -p litecluster-node
mkdir -p "$RUN"
start() { # id http raft extra...
  local id=$1 http=$2 raft=$3; shift 3
  "$BIN" --node-id "$id" --data-dir "$RUN/n$id" --http-addr "127.0.0.1:$http" --raft-addr "127.0.0.1:$raft" "$@" \
    >"$RUN/n$id.log" 2>&1 &
  echo $! >"$RUN/n$id.pid"
}
wait_ready() {
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && return 0; sleep 0.2; done
  echo "member on port $1 did not become ready; log: $RUN" >&2; exit 1
}
start 1 4001 4002 --bootstrap; wait_ready 4001
start 2 4011 4012 --join http://127.0.0.1:4001
start 3 4021 4022 --join http://127.0.0.1:4001
wait_ready 4011; wait_ready 4021
set -x
curl -s -XPOST 'http://127.0.0.1:4011/db/execute?pretty' -H 'Content-Type: application/json' \
  -d '["CREATE TABLE IF NOT EXISTS fruit (id INTEGER PRIMARY KEY, name TEXT)", ["INSERT INTO fruit(name) VALUES(?)", "apple"]]'
curl -s 'http://127.0.0.1:4021/db/query?pretty&level=linearizable&q=SELECT+*+FROM+fruit'
curl -s 'http://127.0.0.1:4001/nodes?pretty'
set +x
echo
echo "3 members running: APIs on http://127.0.0.1:4001, :4011, :4021 (rqlite clients work unchanged)."
echo "logs and data in $RUN; stop with: scripts/local-cluster.sh down"
