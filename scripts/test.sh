#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then format, lints and every test
# (unit, property, and integration tests against the real binary, s3s-fs and nginx).
set -euo pipefail
cd "$(dirname "$0")/.."

export TAILGATE_S3S_FS=$(bash scripts/setup.sh | tail -n 1)
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets
cargo test --doc --quiet
