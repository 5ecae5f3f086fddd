#!/usr/bin/env bash
# bench/pack.sh [MIB] [CHANNELS]: time `tailgate pack` for many channels of one large signed
# APK into a real s3s-fs, and report the bytes written next to what one full copy per
# channel would need.
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-256}
N=${2:-1000}
S3S_FS=$(bash scripts/setup.sh | tail -n 1)
cargo build --release --quiet
WORK=$(mktemp -d /tmp/tailgate-pack-bench.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT" AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret
mkdir -p "$WORK/data"
"$S3S_FS" --host 127.0.0.1 --port "$PORT" --access-key bench --secret-key bench-secret "$WORK/data" >/dev/null 2>&1 &
S3_PID=$!
trap 'kill $S3_PID 2>/dev/null; rm -rf "$WORK"' EXIT
sleep 0.5
curl -sS --fail --aws-sigv4 aws:amz:us-east-1:s3 --user bench:bench-secret \
    -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -X PUT -o /dev/null "$AWS_ENDPOINT_URL/apks"
bash scripts/make-apk.sh "$WORK/base.apk" "$MIB"
for i in $(seq -w 1 "$N"); do echo "channel$i"; done >"$WORK/channels.txt"
APK_BYTES=$(stat -c %s "$WORK/base.apk")
start=$(date +%s.%N)
target/release/tailgate pack --apk "$WORK/base.apk" --channels "$WORK/channels.txt" \
    --dest s3://apks/bench/1 2>"$WORK/pack.log"
end=$(date +%s.%N)
STORED=$(du -sb --apparent-size "$WORK/data/apks/bench" | cut -f1)
python3 - "$start" "$end" "$APK_BYTES" "$N" "$STORED" <<'PY'
import sys
start, end, apk, n, stored = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
full = apk * n
print(f"pack: {n} channels of a {apk/2**20:.1f} MiB APK in {end-start:.2f} s (base upload included)")
print(f"stored: {stored/2**20:.1f} MiB (base + tails + manifest); one full copy per channel: {full/2**30:.1f} GiB ({full/stored:.0f}x more)")
PY
