//! `convoy-leakcheck [MARKER]`: the guard at the end of `scripts/test.sh`.
//! Lists every live process that carries the run marker (`CONVOY_TEST_RUN`,
//! default: this environment's value), except itself and its ancestors;
//! gives them 2 s to finish exiting, then kills those still there, names
//! them and exits 1. Exits 0 when none is left, 2 without a marker.

use std::time::{Duration, Instant};

fn main() {
    let marker = std::env::args().nth(1).or_else(|| std::env::var(convoy_testsupport::MARKER_VAR).ok());
    let Some(marker) = marker.filter(|m| !m.is_empty()) else {
        eprintln!("convoy-leakcheck: no marker (pass one, or set {})", convoy_testsupport::MARKER_VAR);
        std::process::exit(2);
    };
    // A process killed a moment ago may still be on its way out.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !convoy_testsupport::leaked(&marker).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let found = convoy_testsupport::reap_leaks(&marker);
    if found.is_empty() {
        println!("leak check: no process of run {marker} is left");
        return;
    }
    eprintln!("leak check: {} process(es) of run {marker} outlived it (now killed):", found.len());
    for p in &found {
        eprintln!("  {p}");
    }
    std::process::exit(1);
}
