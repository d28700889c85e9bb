//! `convoy-guard-hold`: a helper for the guard's own tests. It starts a
//! guarded shell that forks two `sleep`s (children of the guarded leader),
//! prints the leader's pid (the process group) and waits forever; the test
//! sends it SIGINT/SIGTERM and checks that the group died with it.

use std::process::{Command, Stdio};

fn main() {
    let guard = convoy_testsupport::ProcessGuard::spawn(
        "sleepers",
        Command::new("sh").args(["-c", "sleep 300 & sleep 300 & wait"]).stdin(Stdio::null()),
    )
    .expect("spawn sh");
    println!("{}", guard.id());
    loop {
        std::thread::park();
    }
}
