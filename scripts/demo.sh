#!/usr/bin/env bash
# The demo: installs what it needs, starts a local S3 server (s3s-fs), generates a signed APK
# and packs three channels of it into the bucket with `tailgate pack`, then serves them with
# tailgate in the foreground until Ctrl-C; then stops the S3 server it started.
set -euo pipefail
cd "$(dirname "$0")/.."

S3S_FS=$(bash scripts/setup.sh | tail -n 1)
cargo build --release --quiet
TAILGATE=$PWD/target/release/tailgate

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

WORK=$(mktemp -d /tmp/tailgate-demo.XXXXXX)
S3_PORT=$(free_port)
TG_PORT=$(free_port)
export AWS_ACCESS_KEY_ID=demo-access-key
export AWS_SECRET_ACCESS_KEY=demo-secret-key
export TAILGATE_S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
export TAILGATE_LISTEN="127.0.0.1:$TG_PORT"

mkdir -p "$WORK/data"
"$S3S_FS" --host 127.0.0.1 --port "$S3_PORT" --access-key "$AWS_ACCESS_KEY_ID" \
    --secret-key "$AWS_SECRET_ACCESS_KEY" "$WORK/data" >"$WORK/s3s-fs.log" 2>&1 &
S3_PID=$!
cleanup() {
    kill "$S3_PID" 2>/dev/null || true
    wait "$S3_PID" 2>/dev/null || true
    rm -rf "$WORK"
    echo "demo: stopped the S3 server" >&2
}
trap cleanup EXIT
for _ in $(seq 100); do
    curl -s -o /dev/null "$TAILGATE_S3_ENDPOINT" && break
    sleep 0.1
done

# The bucket, then a real signed APK (v1+v2+v3) packed into it: the base once, one tail per
# channel, the manifest last.
curl -sS --fail-with-body --aws-sigv4 "aws:amz:us-east-1:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
    -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -X PUT -o /dev/null "$TAILGATE_S3_ENDPOINT/apks"
PKG=apps/demo/1.0.0
bash scripts/make-apk.sh "$WORK/base.apk" 24
printf '# one channel per line\nhuawei\nxiaomi\noppo\n' >"$WORK/channels.txt"
AWS_ENDPOINT_URL="$TAILGATE_S3_ENDPOINT" "$TAILGATE" pack --apk "$WORK/base.apk" \
    --channels "$WORK/channels.txt" --dest "s3://apks/$PKG" --extra source=demo

"$TAILGATE" check -c conf/tailgate.conf
cat <<TXT

tailgate serves http://$TAILGATE_LISTEN  (S3: $TAILGATE_S3_ENDPOINT, bucket apks, package $PKG)
Try, in another terminal:
  curl -o huawei.apk http://$TAILGATE_LISTEN/apk/$PKG/huawei.apk
  apksigner verify -v --min-sdk-version 24 huawei.apk && $TAILGATE channel huawei.apk
  curl -s -D - -o /dev/null -H 'Range: bytes=-100' http://$TAILGATE_LISTEN/apk/$PKG/xiaomi.apk
Ctrl-C stops tailgate and the S3 server.

TXT
"$TAILGATE" serve -c conf/tailgate.conf || true
