# shellcheck shell=bash
# Sourced by scripts/test.sh (and by its own test in tests/support/tests/guard.rs).
#
# Gives the run a marker every process inherits (CONVOY_TEST_RUN) and its own
# TMPDIR (/tmp/convoy-run-XXXXXX: short, for unix socket paths), and installs
# an EXIT trap that runs convoy-leakcheck: every process still carrying the
# marker is listed, killed, and the run fails (exit 1 if it had passed).
# Whatever is left in the run's TMPDIR is listed (failing tests keep their
# directory on purpose and print its path). CONVOY_LEAKCHECK overrides the
# command that runs the check (default: cargo run of convoy-leakcheck).

export CONVOY_TEST_RUN="${CONVOY_TEST_RUN:-$(cat /proc/sys/kernel/random/uuid)}"
RUN_TMP="$(mktemp -d "${TMPDIR:-/tmp}/convoy-run-XXXXXX")"
export TMPDIR="$RUN_TMP"

leak_guard() {
  local status=$?
  trap - EXIT INT TERM
  echo "== leak check (run $CONVOY_TEST_RUN)"
  local check
  if [ -n "${CONVOY_LEAKCHECK:-}" ]; then
    check=("$CONVOY_LEAKCHECK")
  else
    check=(cargo run --quiet --locked -p convoy-testsupport --bin convoy-leakcheck --)
  fi
  if ! "${check[@]}" "$CONVOY_TEST_RUN"; then
    echo "leak guard: processes started by the run outlived it (listed above)" >&2
    [ "$status" -ne 0 ] || status=1
  fi
  if [ -n "$(ls -A "$RUN_TMP" 2>/dev/null)" ]; then
    echo "leak guard: temporary files left in $RUN_TMP (kept for failed tests, or not removed):" >&2
    ls -A "$RUN_TMP" | sed 's/^/  /' >&2
  else
    rmdir "$RUN_TMP" 2>/dev/null || true
  fi
  exit "$status"
}
trap leak_guard EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
