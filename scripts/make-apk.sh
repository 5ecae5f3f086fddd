#!/usr/bin/env bash
# make-apk.sh OUT.apk [MIB] [v1only]: a real signed APK for tests and the demo. A placeholder
# AndroidManifest.xml plus MIB MiB of random stored entries, zipaligned, then signed by
# apksigner with v1+v2+v3 (or v1 only) with a throwaway key.
set -euo pipefail
out=$1
mib=${2:-3}
mode=${3:-all}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work/unsigned.apk" "$mib" <<'PY'
import os, sys, zipfile
path, mib = sys.argv[1], int(sys.argv[2])
with zipfile.ZipFile(path, "w") as z:
    z.writestr(zipfile.ZipInfo("AndroidManifest.xml"), b"<manifest package=\"com.example.tailgate\"/>")
    for i in range(max(mib, 1)):
        z.writestr(zipfile.ZipInfo(f"assets/blob{i:03}.bin"), os.urandom(1 << 20))
    z.writestr(zipfile.ZipInfo("classes.dex"), os.urandom(4096))
PY
zipalign -p -f 4 "$work/unsigned.apk" "$work/aligned.apk"
keytool -genkeypair -keystore "$work/key.p12" -storetype PKCS12 -storepass tailgate -keypass tailgate \
    -alias k -keyalg RSA -keysize 2048 -validity 3650 -dname "CN=tailgate test" >/dev/null 2>&1
if [ "$mode" = v1only ]; then
    flags="--v1-signing-enabled true --v2-signing-enabled false --v3-signing-enabled false --min-sdk-version 23"
else
    flags="--v1-signing-enabled true --v2-signing-enabled true --v3-signing-enabled true --min-sdk-version 24"
fi
# shellcheck disable=SC2086
apksigner sign --ks "$work/key.p12" --ks-pass pass:tailgate --ks-key-alias k $flags \
    --out "$out" "$work/aligned.apk"
rm -f "$out.idsig"
