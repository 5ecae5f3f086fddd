#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then format, lints and every test
# (unit, property, and integration tests against the real binary, s3s-fs and nginx).
set -euo pipefail
cd "$(dirname "$0")/.."

TAILGATE_S3S_FS=$(bash scripts/setup.sh | tail -n 1)
export TAILGATE_S3S_FS
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
# The fuzz targets (run with cargo-fuzz on nightly) must keep compiling against the library.
(cd fuzz && cargo check --quiet)
# So must the bench's bare relays (bench/floor, run by `BENCH_FLOOR=1 bench/run`).
(cd bench/floor && cargo fmt -- --check && cargo clippy --quiet -- -D warnings)
# And the harness itself must parse (it runs only by hand: bench/run).
python3 -c 'import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])' bench/run

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --all-targets 2>&1 | tee "$log" || status=$?
# One closing line over every test binary.
totals=$(awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { printf "%d passed, %d failed", p, f }' "$log")
echo "tailgate: $totals"
exit "$status"
