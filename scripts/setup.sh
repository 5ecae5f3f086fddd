#!/usr/bin/env bash
# Installs what the demo and the tests need, idempotently, on Debian 12:
# Debian's nginx and curl, unshare and mount (tests/endpoints.rs), and the s3s-fs S3
# server (pinned) under $TAILGATE_TOOLS.
set -euo pipefail

TOOLS="${TAILGATE_TOOLS:-$HOME/.cache/tailgate-tools}"
S3S_VERSION="0.14.1"

need_apt=()
for pkg in nginx curl iproute2 util-linux mount ca-certificates openssl apksigner zipalign python3; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ "${#need_apt[@]}" -gt 0 ]; then
    echo "setup: installing ${need_apt[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# The Prometheus project's own Python client parses /metrics in the tests.
if ! python3 -c 'import prometheus_client' 2>/dev/null; then
    echo "setup: installing prometheus-client (pip)" >&2
    python3 -m pip install --quiet --disable-pip-version-check prometheus-client >/dev/null 2>&1 ||
        python3 -m pip install --quiet --break-system-packages prometheus-client >/dev/null
fi

stamp="$TOOLS/s3s-fs.version"
if [ ! -x "$TOOLS/bin/s3s-fs" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$S3S_VERSION" ]; then
    echo "setup: building s3s-fs $S3S_VERSION (a few minutes, once)" >&2
    mkdir -p "$TOOLS"
    cargo install --quiet --locked "s3s-fs@$S3S_VERSION" --features binary --root "$TOOLS"
    echo "$S3S_VERSION" > "$stamp"
fi
echo "$TOOLS/bin/s3s-fs"
