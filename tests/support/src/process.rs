//! The process guard: an external process (and everything it starts) that
//! is ended when its owner is dropped, panics, or gets SIGINT/SIGTERM/SIGHUP.
//!
//! The process is spawned as the leader of a new process group
//! (`process_group(0)`), with the run marker and a per-guard tag in its
//! environment. Ending it means: SIGKILL to the whole group (so `git daemon`'s
//! real `git-daemon` child, nginx's workers, fcgiwrap's CGI children and
//! sshd's sessions go too), SIGKILL to any pid named in a pid file the guard
//! was given, SIGKILL to every process still carrying the guard's tag (a
//! descendant that called `setsid` and left the group), then reaping the
//! leader. On a fatal signal a handler (async-signal-safe: only `killpg`)
//! kills every live guarded group, then restores the previous disposition.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::Once;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// An external process owned by a test; see the module docs.
pub struct ProcessGuard {
    name: String,
    child: Child,
    tag: String,
    pid_files: Vec<PathBuf>,
    status: Option<ExitStatus>,
    ended: bool,
}

impl std::fmt::Debug for ProcessGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGuard").field("name", &self.name).field("pid", &self.child.id()).finish()
    }
}

impl ProcessGuard {
    /// Spawn `cmd` as the leader of a new process group, with the run
    /// marker and this guard's tag in its environment. `name` is for
    /// messages.
    pub fn spawn(name: &str, cmd: &mut Command) -> io::Result<ProcessGuard> {
        install_signal_handlers();
        let tag = uuid::Uuid::new_v4().to_string();
        cmd.process_group(0).env(crate::MARKER_VAR, crate::run_marker()).env(crate::GUARD_VAR, &tag);
        let child = cmd.spawn().map_err(|e| io::Error::new(e.kind(), format!("spawn {name}: {e}")))?;
        register(child.id() as i32);
        Ok(ProcessGuard { name: name.into(), child, tag, pid_files: Vec::new(), status: None, ended: false })
    }

    /// The leader's pid (also the process group id).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The guard's tag (the value of `CONVOY_TEST_GUARD` in its processes).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The child, e.g. to take its stdout. Do not kill or wait on it
    /// directly: use the guard, which ends the whole group.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Also end the process whose pid this file holds (read when ending):
    /// for a daemon that writes one and might leave the process group.
    pub fn watch_pid_file(&mut self, path: impl Into<PathBuf>) {
        self.pid_files.push(path.into());
    }

    /// The leader's exit status if it has exited (reaps it; the rest of the
    /// group is still ended on drop).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Send `sig` to the leader only (a graceful stop: SIGTERM, SIGINT).
    pub fn signal(&self, sig: i32) {
        if self.status.is_none() {
            // SAFETY: kill(2) on our own unreaped child's pid.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, sig);
            }
        }
    }

    /// Wait up to `limit` for the leader to exit (polling every 20 ms).
    pub fn wait_timeout(&mut self, limit: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Graceful stop: `sig` to the leader, at most `grace` to exit, then
    /// everything left in the group is killed. Returns the leader's status.
    pub fn stop(&mut self, sig: i32, grace: Duration) -> io::Result<ExitStatus> {
        self.signal(sig);
        let _ = self.wait_timeout(grace)?;
        self.kill()
    }

    /// SIGKILL the whole group (and pid files, and tagged escapees), reap
    /// the leader. Returns its exit status. Idempotent.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        if !self.ended {
            self.ended = true;
            let pgid = self.child.id() as libc::pid_t;
            // SAFETY: killpg/kill(2); the leader is not reaped yet (or its
            // group still has members), so the group id is still ours.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
            for f in &self.pid_files {
                if let Some(pid) = std::fs::read_to_string(f).ok().and_then(|s| s.trim().parse::<i32>().ok())
                    && pid > 1
                {
                    // SAFETY: as above.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
            let me = std::process::id() as i32;
            for p in crate::tagged(crate::GUARD_VAR, &self.tag) {
                if p.pid != me {
                    // SAFETY: as above.
                    unsafe {
                        libc::kill(p.pid, libc::SIGKILL);
                    }
                }
            }
            unregister(pgid);
        }
        match self.status {
            Some(s) => Ok(s),
            None => {
                let s = self.child.wait()?;
                self.status = Some(s);
                Ok(s)
            }
        }
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            eprintln!("process guard: ending {} (pid {}): {e}", self.name, self.child.id());
        }
    }
}

/// Process groups of live guards, for the signal handler (0 = free slot).
/// A fixed array: the handler may only do async-signal-safe things.
const SLOTS: usize = 1024;
static GROUPS: [AtomicI32; SLOTS] = [const { AtomicI32::new(0) }; SLOTS];

fn register(pgid: i32) {
    for s in &GROUPS {
        if s.compare_exchange(0, pgid, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            return;
        }
    }
    eprintln!(
        "process guard: more than {SLOTS} live guards; pgid {pgid} is not covered by the signal handler"
    );
}

fn unregister(pgid: i32) {
    for s in &GROUPS {
        if s.compare_exchange(pgid, 0, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            return;
        }
    }
}

/// Kill every live guarded group now (what the signal handler does).
pub fn kill_all_groups() {
    for s in &GROUPS {
        let g = s.load(Ordering::SeqCst);
        if g > 0 {
            // SAFETY: killpg is async-signal-safe.
            unsafe {
                libc::killpg(g, libc::SIGKILL);
            }
        }
    }
}

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];
static mut PREVIOUS: [std::mem::MaybeUninit<libc::sigaction>; 3] =
    [const { std::mem::MaybeUninit::zeroed() }; 3];

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    kill_all_groups();
    let Some(i) = SIGNALS.iter().position(|s| *s == sig) else { return };
    // SAFETY: PREVIOUS is written once, before the handler is installed, and only read here.
    let prev = unsafe { (*std::ptr::addr_of!(PREVIOUS))[i].assume_init() };
    let handler = prev.sa_sigaction;
    if handler == libc::SIG_IGN {
        return;
    }
    if handler == libc::SIG_DFL {
        // SAFETY: signal/raise are async-signal-safe; the default action ends the process.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
        return;
    }
    // SAFETY: chaining to the handler that was installed before ours, with its own convention.
    unsafe {
        if prev.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(handler);
            f(sig, info, ctx);
        } else {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
            f(sig);
        }
    }
}

fn install_signal_handlers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for (i, sig) in SIGNALS.iter().enumerate() {
            // SAFETY: sigaction with a zeroed, then filled, struct; PREVIOUS
            // is written before our handler can run for this signal.
            unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(*sig, std::ptr::null(), &mut old) != 0 {
                    continue;
                }
                (*std::ptr::addr_of_mut!(PREVIOUS))[i] = std::mem::MaybeUninit::new(old);
                let mut new: libc::sigaction = std::mem::zeroed();
                new.sa_sigaction = on_signal as *const () as usize;
                new.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
                libc::sigemptyset(&mut new.sa_mask);
                libc::sigaction(*sig, &new, std::ptr::null_mut());
            }
        }
    });
}
