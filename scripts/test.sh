#!/usr/bin/env bash
# The whole test suite: set-up, format and lint gates, then every test.
# This is the README's test command, and .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked --features convoy-hub/etcd -- -D warnings

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --features convoy-hub/etcd --profile ci
else
  cargo test --workspace --locked --features convoy-hub/etcd
fi
