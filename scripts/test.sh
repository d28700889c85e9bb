#!/usr/bin/env bash
# The whole test suite: set-up, format and lint gates, then every test.
# This is the README's test command, and .ci/run calls exactly this.
#
# Leak guard (scripts/leak-guard.sh): every process of this run inherits
# CONVOY_TEST_RUN=<id>. When the script ends (passed, failed or interrupted),
# convoy-leakcheck lists every process still carrying it, kills them and
# fails the run if there was any (see docs/reliability.md, "Test hygiene").
# TMPDIR is a per-run /tmp/convoy-run-XXXXXX; whatever is left in it is listed.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/leak-guard.sh
. ./scripts/leak-guard.sh

./scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked --features convoy-hub/etcd,convoy-cli/etcd -- -D warnings

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --features convoy-hub/etcd,convoy-cli/etcd --profile ci
else
  cargo test --workspace --locked --features convoy-hub/etcd,convoy-cli/etcd
fi
