#!/usr/bin/env bash
# The demo: installs what it needs, starts a local S3 server (s3s-fs), uploads a generated
# package (a head object, three channel tails and a manifest), and serves it with tailgate
# in the foreground until Ctrl-C; then stops the S3 server it started.
set -euo pipefail
cd "$(dirname "$0")/.."

S3S_FS=$(bash scripts/setup.sh | tail -n 1)
cargo build --release --quiet
TAILGATE=target/release/tailgate

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

# s3 METHOD PATH [curl args...]: a SigV4-signed request with curl's own signer.
s3() {
    local method=$1 path=$2
    shift 2
    curl -sS --fail-with-body --aws-sigv4 "aws:amz:us-east-1:s3" \
        --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
        -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -X "$method" "$@" "$TAILGATE_S3_ENDPOINT$path"
}
# put KEY FILE: uploads and prints the ETag exactly as S3 returned it.
put() {
    s3 PUT "/apks/$1" -T "$2" -D - -o /dev/null | tr -d '\r' | sed -n 's/^[Ee][Tt][Aa][Gg]: //p'
}

s3 PUT /apks -o /dev/null
PKG=apps/demo/1.0.0
head -c $((24 * 1024 * 1024)) /dev/urandom >"$WORK/base.apk"
HEAD_ETAG=$(put "$PKG/base.apk" "$WORK/base.apk")
TAILS=""
for ch in huawei xiaomi oppo; do
    head -c $((40000 + RANDOM)) /dev/urandom >"$WORK/$ch.tail"
    etag=$(put "$PKG/tails/$ch" "$WORK/$ch.tail")
    len=$(stat -c %s "$WORK/$ch.tail")
    TAILS="$TAILS${TAILS:+,}\"$ch\": {\"key\": \"$PKG/tails/$ch\", \"offset\": 0, \"length\": $len, \"etag\": $(printf '%s' "$etag" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')}"
done
HEAD_LEN=$(stat -c %s "$WORK/base.apk")
cat >"$WORK/manifest.json" <<JSON
{"format": "tailgate/1", "content_type": "application/vnd.android.package-archive",
 "last_modified": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
 "head": {"key": "$PKG/base.apk", "offset": 0, "length": $HEAD_LEN, "etag": $(printf '%s' "$HEAD_ETAG" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')},
 "tails": {$TAILS}}
JSON
put "$PKG/manifest.json" "$WORK/manifest.json" >/dev/null

"$TAILGATE" check -c conf/tailgate.conf
cat <<TXT

tailgate serves http://$TAILGATE_LISTEN  (S3: $TAILGATE_S3_ENDPOINT, bucket apks, package $PKG)
Try, in another terminal:
  curl -o huawei.apk http://$TAILGATE_LISTEN/apk/$PKG/huawei.apk
  curl -s -D - -o /dev/null -H 'Range: bytes=$((HEAD_LEN - 10))-$((HEAD_LEN + 9))' http://$TAILGATE_LISTEN/apk/$PKG/xiaomi.apk
  cmp <(curl -s http://$TAILGATE_LISTEN/apk/$PKG/oppo.apk) <(cat $WORK/base.apk $WORK/oppo.tail) && echo identical
Ctrl-C stops tailgate and the S3 server.

TXT
"$TAILGATE" serve -c conf/tailgate.conf || true
