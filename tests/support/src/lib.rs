//! Test hygiene shared by every test, the e2e harness and the benchmarks:
//! nothing they start outlives them.
//!
//! - [`ProcessGuard`] owns an external process started in its own process
//!   group and ends it **and its children** (the whole group, any pid file
//!   it names, and every process carrying the guard's environment tag) on
//!   drop, on panic, and on SIGINT/SIGTERM/SIGHUP (a signal handler kills
//!   every live group, then lets the signal do what it did before).
//! - [`TestDir`] is a temporary directory removed on drop, or kept with its
//!   path printed when the test is failing (panicking) or `CONVOY_KEEP_TMP`
//!   is set.
//! - [`etcd`]: a real etcd on loopback and a TCP proxy to it that a test
//!   cuts and heals (the HA tests and the `ha` benchmark area).
//! - [`leaked`] lists every live process that carries the run marker
//!   ([`MARKER_VAR`], exported by `scripts/test.sh` and inherited by every
//!   child); the `convoy-leakcheck` binary fails a run that left any.

pub mod etcd;
pub mod process;
pub mod procscan;
pub mod tmp;

pub use process::ProcessGuard;
pub use procscan::{ProcInfo, group_members, leaked, tagged};
pub use tmp::TestDir;

use std::sync::OnceLock;

/// The run marker: every process a test run starts carries
/// `CONVOY_TEST_RUN=<id>` in its environment, so that the leak check finds
/// what outlived the run.
pub const MARKER_VAR: &str = "CONVOY_TEST_RUN";

/// The per-guard tag: `CONVOY_TEST_GUARD=<uuid>`, unique to one
/// [`ProcessGuard`], so that a descendant that left the process group (a
/// daemon calling `setsid`) is still found and ended.
pub const GUARD_VAR: &str = "CONVOY_TEST_GUARD";

/// This run's marker: `CONVOY_TEST_RUN` when the environment has it (the
/// test script exports one per run), else a fresh id for this process (the
/// benchmark runner's case), which every guarded process is given.
pub fn run_marker() -> &'static str {
    static MARKER: OnceLock<String> = OnceLock::new();
    MARKER.get_or_init(|| match std::env::var(MARKER_VAR) {
        Ok(v) if !v.is_empty() => v,
        _ => format!("local-{}", uuid::Uuid::new_v4()),
    })
}

/// List, end (SIGKILL) and report every process still carrying this run's
/// marker (except this process and its ancestors). Returns the processes
/// found: a runner fails when the list is not empty.
pub fn reap_leaks(marker: &str) -> Vec<ProcInfo> {
    let found = leaked(marker);
    for p in &found {
        // SAFETY: kill(2) with a pid read from /proc; a vanished pid gives ESRCH.
        unsafe {
            libc::kill(p.pid, libc::SIGKILL);
        }
    }
    found
}
