//! The guard's own tests: a guarded process and its children (including
//! `git daemon`'s real `git-daemon` child and a descendant that left the
//! process group) end on drop, on panic and on SIGINT/SIGTERM of the owner;
//! the leak check catches a deliberately leaked process; test directories
//! are removed, or kept when the test fails.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use convoy_testsupport::{GUARD_VAR, MARKER_VAR, ProcessGuard, TestDir, group_members, tagged};

/// Poll `f` every 20 ms for up to 10 s; panic with `what` otherwise.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sleepers() -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", "sleep 300 & sleep 300 & wait"]).stdin(Stdio::null());
    c
}

#[test]
fn drop_ends_the_leader_and_its_children() {
    let g = ProcessGuard::spawn("sleepers", &mut sleepers()).unwrap();
    let (tag, pgid) = (g.tag().to_string(), g.id() as i32);
    eventually("sh and two sleeps", || tagged(GUARD_VAR, &tag).len() == 3);
    assert_eq!(group_members(pgid).len(), 3, "all three in the guard's process group");
    drop(g);
    eventually("nothing of the guard left", || tagged(GUARD_VAR, &tag).is_empty());
    assert!(group_members(pgid).is_empty());
}

/// The bug of issue 19: killing `git daemon` (the `git` wrapper) left the
/// real `git-daemon` running. The guard ends both.
#[test]
fn git_daemon_and_its_real_daemon_child_end_on_drop() {
    let base = TestDir::new("guard-git-").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let g = ProcessGuard::spawn(
        "git daemon",
        Command::new("git")
            .args(["daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.path().display()))
            .stdin(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let tag = g.tag().to_string();
    eventually("git daemon listening", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let procs = tagged(GUARD_VAR, &tag);
    assert!(
        procs.iter().any(|p| p.cmdline.contains("git-daemon") && p.pid != g.id() as i32),
        "git daemon runs a separate git-daemon process: {procs:?}"
    );
    drop(g);
    eventually("git and git-daemon gone", || tagged(GUARD_VAR, &tag).is_empty());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "nothing listens any more");
}

#[test]
fn a_descendant_that_left_the_group_is_found_by_its_tag() {
    let g = ProcessGuard::spawn(
        "escaper",
        Command::new("sh").args(["-c", "setsid sleep 300 & wait"]).stdin(Stdio::null()),
    )
    .unwrap();
    let (tag, pgid) = (g.tag().to_string(), g.id() as i32);
    eventually("the escaped sleep", || {
        tagged(GUARD_VAR, &tag)
            .iter()
            .any(|p| p.cmdline == "sleep 300" && !group_members(pgid).contains(&p.pid))
    });
    drop(g);
    eventually("the escaped sleep ended too", || tagged(GUARD_VAR, &tag).is_empty());
}

#[test]
fn a_daemon_named_by_a_pid_file_is_ended() {
    let dir = TestDir::new("guard-pid-").unwrap();
    let pid_file = dir.path().join("daemon.pid");
    // A daemon that detaches into its own session and clears its
    // environment (so neither the group nor the tag finds it): only its pid
    // file does.
    let mut g = ProcessGuard::spawn(
        "detaching daemon",
        Command::new("sh")
            .arg("-c")
            .arg(format!("setsid env -i sleep 300 & echo $! > {}; wait", pid_file.display()))
            .stdin(Stdio::null()),
    )
    .unwrap();
    g.watch_pid_file(&pid_file);
    let mut pid = 0;
    eventually("the pid file", || {
        pid = std::fs::read_to_string(&pid_file).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        pid > 0
    });
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !matches!(s[s.rfind(')').unwrap() + 2..].chars().next(), Some('Z' | 'X')))
    };
    assert!(alive(pid));
    drop(g);
    eventually("the daemon ended", || !alive(pid));
}

#[test]
fn a_panicking_owner_ends_its_processes() {
    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::thread::spawn(move || {
        let g = ProcessGuard::spawn("sleepers", &mut sleepers()).unwrap();
        tx.send(g.tag().to_string()).unwrap();
        eventually("started", || tagged(GUARD_VAR, g.tag()).len() == 3);
        panic!("a failing test");
    })
    .join();
    assert!(r.is_err(), "the owner panicked");
    let tag = rx.recv().unwrap();
    eventually("nothing left after the panic", || tagged(GUARD_VAR, &tag).is_empty());
}

/// Ctrl-C (SIGINT) or a test runner's SIGTERM to the owning process: its
/// handler kills the guarded group, then the signal ends the owner as it
/// would have without the handler.
#[test]
fn sigint_or_sigterm_to_the_owner_ends_its_groups() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let mut owner = ProcessGuard::spawn(
            "guard-hold",
            Command::new(env!("CARGO_BIN_EXE_convoy-guard-hold")).stdin(Stdio::null()).stdout(Stdio::piped()),
        )
        .unwrap();
        let mut line = String::new();
        BufReader::new(owner.child_mut().stdout.take().unwrap()).read_line(&mut line).unwrap();
        let inner: i32 = line.trim().parse().unwrap();
        assert_ne!(inner, owner.id() as i32, "the held sleepers have their own group");
        eventually("the held sleepers", || group_members(inner).len() == 3);
        owner.signal(sig);
        let status = owner.wait_timeout(Duration::from_secs(10)).unwrap().expect("the owner exited");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(sig), "the default action of the signal still ends the owner");
        eventually("the owner's guarded group is gone", || group_members(inner).is_empty());
    }
}

/// The leak check catches a deliberately leaked process: a `sleep` carrying
/// a fresh run marker, in its own group, owned by nothing.
#[test]
fn leakcheck_catches_a_leaked_process_then_passes() {
    let marker = format!("leak-test-{}", std::process::id());
    let mut leaked = Command::new("sleep")
        .arg("300")
        .env(MARKER_VAR, &marker)
        .process_group(0)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    use std::os::unix::process::CommandExt as _;
    let check = || Command::new(env!("CARGO_BIN_EXE_convoy-leakcheck")).arg(&marker).output().unwrap();
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "the leak check fails the run: {stderr}");
    assert!(stderr.contains(&format!("pid {} ", leaked.id())), "it names the leaked process: {stderr}");
    assert!(stderr.contains("sleep 300"), "{stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(leaked.wait().unwrap().signal(), Some(libc::SIGKILL), "and kills it");
    let out = check();
    assert!(out.status.success(), "nothing left: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no process of run"));
}

#[test]
fn leakcheck_without_a_marker_refuses() {
    let out = Command::new(env!("CARGO_BIN_EXE_convoy-leakcheck")).env_remove(MARKER_VAR).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn test_dirs_are_removed_or_kept_when_the_test_fails() {
    let d = TestDir::new("guard-dir-").unwrap();
    std::fs::write(d.path().join("f"), "x").unwrap();
    let p = d.path().to_path_buf();
    drop(d);
    assert!(!p.exists(), "removed on a passing test");

    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::thread::spawn(move || {
        let d = TestDir::new("guard-dir-").unwrap();
        tx.send(d.path().to_path_buf()).unwrap();
        panic!("failing");
    })
    .join();
    assert!(r.is_err());
    let kept = rx.recv().unwrap();
    assert!(kept.is_dir(), "kept on a failing test");
    std::fs::remove_dir_all(kept).unwrap();
}

/// scripts/leak-guard.sh (what scripts/test.sh sources) run by a tiny
/// "suite" that leaks a `sleep` (in its own session, so nothing but the
/// marker finds it) and otherwise succeeds: the run fails, names the sleep
/// and kills it. The same suite without the leak passes.
#[test]
fn the_test_script_guard_fails_a_run_that_leaks_a_process() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/leak-guard.sh");
    let tmp = TestDir::new("guard-script-").unwrap();
    let run = |suite: &str, marker: &str| {
        Command::new("bash")
            .arg("-c")
            .arg(format!(". {}; {suite}", script.display()))
            .env("CONVOY_LEAKCHECK", env!("CARGO_BIN_EXE_convoy-leakcheck"))
            .env(MARKER_VAR, marker)
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let marker = format!("script-leak-{}", std::process::id());
    let out = run("setsid sleep 300 < /dev/null > /dev/null 2>&1 & echo leaked $!; exit 0", &marker);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "a leaking run fails: {stdout} {stderr}");
    let pid: i32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("leaked "))
        .and_then(|p| p.trim().parse().ok())
        .expect("the suite printed the pid it leaked");
    assert!(stderr.contains(&format!("pid {pid} ")) && stderr.contains("sleep 300"), "{stderr}");
    eventually("the leaked sleep killed", || tagged(MARKER_VAR, &marker).is_empty());

    let out = run("true", &format!("script-clean-{}", std::process::id()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run("exit 3", &format!("script-fail-{}", std::process::id()));
    assert_eq!(out.status.code(), Some(3), "a failing run keeps its status");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "empty run directories are removed");
}
