#!/usr/bin/env bash
# The whole test suite: set-up, format and lint gates, then every test.
# This is the README's test command, and .ci/run calls exactly this.
#
# Leak guard: every process of this run inherits CONVOY_TEST_RUN=<id>. When
# the script ends (passed, failed or interrupted), convoy-leakcheck lists
# every process still carrying it, kills them and fails the run if there was
# any (see docs/reliability.md, "Test hygiene"). TMPDIR is a per-run
# directory /tmp/convoy-run-XXXXXX; whatever is left in it is listed.
set -euo pipefail
cd "$(dirname "$0")/.."

export CONVOY_TEST_RUN="${CONVOY_TEST_RUN:-$(cat /proc/sys/kernel/random/uuid)}"
# Temporary files of this run in one place: what is left there at the end is
# listed (a failing test keeps its directory on purpose and prints its path).
# (Short: unix socket paths made under it must stay under 108 bytes.)
RUN_TMP="$(mktemp -d "${TMPDIR:-/tmp}/convoy-run-XXXXXX")"
export TMPDIR="$RUN_TMP"

leak_guard() {
  local status=$?
  trap - EXIT INT TERM
  echo "== leak check (run $CONVOY_TEST_RUN)"
  if ! cargo run --quiet --locked -p convoy-testsupport --bin convoy-leakcheck -- "$CONVOY_TEST_RUN"; then
    echo "test.sh: processes started by the suite outlived it (listed above)" >&2
    [ "$status" -ne 0 ] || status=1
  fi
  if [ -n "$(ls -A "$RUN_TMP" 2>/dev/null)" ]; then
    echo "test.sh: temporary files left in $RUN_TMP (kept for failed tests, or not removed):" >&2
    ls -A "$RUN_TMP" | sed 's/^/  /' >&2
  else
    rmdir "$RUN_TMP" 2>/dev/null || true
  fi
  exit "$status"
}
trap leak_guard EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

./scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --profile ci
else
  cargo test --workspace --locked
fi
