//! The caller's side of rendering: worker processes, reused across renders
//! (loading Helm's library and starting its Go runtime once per worker, not
//! once per render), each render bounded in time (the worker is killed, with
//! its process group, at the deadline, and never reused after a failure), in
//! memory (`RLIMIT_AS` set in the child before exec, and `GOMEMLIMIT` so Go's
//! collector works under it) and in input size (charts over the limit are
//! refused before a worker starts). Blocking: async callers use
//! `spawn_blocking`.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use crate::locate::find_library;
use crate::output::{Rendered, assemble, error_from_helm};
use crate::protocol::{Capabilities, ChartInput, WorkerReply, WorkerRequest};
use crate::{Error, Result};

/// The environment variable naming the worker program.
pub const WORKER_ENV: &str = "CONVOY_HELM_WORKER";
/// The worker binary's file name.
pub const WORKER_BIN: &str = "convoy-helm-worker";

/// Bounds on one render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time before the worker is killed. Default 60 s.
    pub time: Duration,
    /// The worker's address-space limit (`RLIMIT_AS`). Default 2 GiB.
    pub memory_bytes: u64,
    /// The largest chart accepted: archive bytes, or the sum of a chart
    /// directory's file sizes. Default 20 MiB.
    pub max_chart_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { time: Duration::from_secs(60), memory_bytes: 2 << 30, max_chart_bytes: 20 << 20 }
    }
}

/// How to start a worker: a program and its arguments (e.g. the
/// `convoy-helm-worker` binary, or `convoy helm-worker`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerCommand {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

impl WorkerCommand {
    /// `CONVOY_HELM_WORKER` if set, else `convoy-helm-worker` next to the
    /// running executable (or one directory up, for test binaries in `deps/`).
    pub fn discover() -> Result<Self> {
        if let Some(p) = std::env::var_os(WORKER_ENV).filter(|p| !p.is_empty()) {
            return Ok(Self { program: p.into(), args: vec![] });
        }
        let exe = std::env::current_exe().map_err(|e| Error::Worker(format!("current_exe: {e}")))?;
        let dir = exe.parent().unwrap_or(Path::new("."));
        for d in [Some(dir), dir.parent()].into_iter().flatten() {
            let c = d.join(WORKER_BIN);
            if c.is_file() {
                return Ok(Self { program: c, args: vec![] });
            }
        }
        Err(Error::HelmUnavailable(format!(
            "the render worker {WORKER_BIN} is not next to {}; set {WORKER_ENV}",
            exe.display()
        )))
    }
}

/// One render's inputs.
#[derive(Debug, Clone)]
pub struct RenderRequest {
    /// The chart.
    pub chart: ChartInput,
    /// The merged user values (Helm adds the chart's defaults under them).
    pub values: serde_json::Value,
    /// `.Release.Name`.
    pub release_name: String,
    /// `.Release.Namespace`.
    pub namespace: String,
    /// `.Release.Revision` (at least 1).
    pub revision: u64,
    /// `.Release.IsUpgrade`.
    pub is_upgrade: bool,
    /// `.Capabilities`.
    pub capabilities: Capabilities,
}

/// Renders charts in worker processes.
#[derive(Debug, Clone)]
pub struct Renderer {
    worker: WorkerCommand,
    library: PathBuf,
    limits: Limits,
    /// Idle workers, reused across renders (and clones of this renderer).
    pool: Arc<Pool>,
}

impl Renderer {
    /// A renderer using the library [`find_library`] finds; `HelmUnavailable` without one.
    pub fn new(worker: WorkerCommand, limits: Limits) -> Result<Self> {
        Ok(Self::with_library(worker, find_library()?, limits))
    }

    /// A renderer with an explicit library path.
    pub fn with_library(worker: WorkerCommand, library: PathBuf, limits: Limits) -> Self {
        Self { worker, library, limits, pool: Arc::default() }
    }

    /// Idle workers waiting for a render.
    pub fn idle_workers(&self) -> usize {
        self.pool.idle()
    }

    /// The library in use.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// The limits in use.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Render one chart. Blocking.
    pub fn render(&self, req: &RenderRequest) -> Result<Rendered> {
        let chart_name = match &req.chart {
            ChartInput::Path(p) => p.display().to_string(),
            ChartInput::Archive(_) => "(archive)".to_string(),
        };
        let size = chart_size(&req.chart)?;
        if size > self.limits.max_chart_bytes {
            return Err(Error::ChartTooLarge { chart: chart_name, size, limit: self.limits.max_chart_bytes });
        }
        let wreq = WorkerRequest {
            library: self.library.clone(),
            chart: req.chart.clone(),
            values: req.values.clone(),
            release_name: req.release_name.clone(),
            namespace: req.namespace.clone(),
            revision: req.revision,
            is_upgrade: req.is_upgrade,
            capabilities: req.capabilities.clone(),
        };
        let input = serde_json::to_vec(&wreq).map_err(|e| Error::Worker(e.to_string()))?;
        let out = self.run(&input, &chart_name)?;
        match serde_json::from_slice::<WorkerReply>(&out) {
            Ok(WorkerReply::Ok(raw)) => assemble(*raw),
            Ok(WorkerReply::Err { code, message }) => Err(error_from_helm(code, &message, &chart_name)),
            Err(e) => Err(Error::Worker(format!("unreadable reply: {e}"))),
        }
    }

    /// Run `input` on a worker (an idle one, or a new one); returns its
    /// reply. A reused worker that turns out to be gone is replaced once.
    fn run(&self, input: &[u8], chart: &str) -> Result<Vec<u8>> {
        let reused = self.pool.take();
        let was_reused = reused.is_some();
        let worker = match reused {
            Some(w) => w,
            None => self.spawn()?,
        };
        match self.exchange(worker, input, chart) {
            Err(Exchange::Gone(_)) if was_reused => match self.exchange(self.spawn()?, input, chart) {
                Ok(out) => Ok(out),
                Err(Exchange::Failed(e) | Exchange::Gone(e)) => Err(e),
            },
            Ok(out) => Ok(out),
            Err(Exchange::Failed(e) | Exchange::Gone(e)) => Err(e),
        }
    }

    /// Start a worker: its own process group, `RLIMIT_AS`, `GOMEMLIMIT`, no
    /// core dumps, framed requests ([`crate::worker::FRAMES_ENV`]).
    fn spawn(&self) -> Result<Worker> {
        let limit = self.limits.memory_bytes;
        let mut cmd = Command::new(&self.worker.program);
        cmd.args(&self.worker.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env(crate::worker::FRAMES_ENV, "1")
            // Go's collector aims under this, well inside the hard RLIMIT_AS.
            .env("GOMEMLIMIT", format!("{}MiB", (limit / 2) >> 20))
            .env("GOTRACEBACK", "none")
            // glibc reserves 64 MiB of address space per thread arena; under
            // RLIMIT_AS that starves the Go runtime's own threads.
            .env("MALLOC_ARENA_MAX", "1");
        // SAFETY: only async-signal-safe calls (setpgid, setrlimit) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let r = libc::rlimit { rlim_cur: limit as libc::rlim_t, rlim_max: limit as libc::rlim_t };
                if libc::setrlimit(libc::RLIMIT_AS, &r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                libc::setrlimit(libc::RLIMIT_CORE, &none);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| Error::WorkerSpawn {
            program: self.worker.program.display().to_string(),
            source,
        })?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        // Drained all along (a full pipe would stall the worker); the last
        // 64 KiB are kept to say why it died.
        let tail = Arc::new(Mutex::new(Vec::new()));
        let keep = tail.clone();
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut t = keep.lock().unwrap_or_else(|p| p.into_inner());
                t.extend_from_slice(&buf[..n]);
                let over = t.len().saturating_sub(64 << 10);
                t.drain(..over);
            }
        });
        Ok(Worker {
            child,
            stdin,
            stdout,
            stderr: tail,
            stderr_reader: Some(stderr_reader),
            renders: 0,
            reaped: false,
        })
    }

    /// One request on `worker`, within the time limit. A worker that
    /// answered goes back to the pool (until it has served
    /// [`RENDERS_PER_WORKER`]); one that overran, died or broke the protocol
    /// is killed with its process group.
    fn exchange(
        &self,
        mut worker: Worker,
        input: &[u8],
        chart: &str,
    ) -> std::result::Result<Vec<u8>, Exchange> {
        let pgid = worker.child.id() as i32;
        let frame = [&(input.len() as u64).to_be_bytes()[..], input].concat();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let r = worker.stdin.write_all(&frame).and_then(|()| worker.stdin.flush()).and_then(|()| {
                let mut len = [0u8; 8];
                worker.stdout.read_exact(&mut len)?;
                let n = u64::from_be_bytes(len);
                if n > crate::worker::MAX_FRAME {
                    return Err(std::io::Error::other(format!("a reply of {n} bytes")));
                }
                let mut out = vec![0u8; n as usize];
                worker.stdout.read_exact(&mut out)?;
                Ok(out)
            });
            let _ = tx.send((worker, r));
        });
        match rx.recv_timeout(self.limits.time) {
            Ok((mut worker, Ok(out))) => {
                worker.renders += 1;
                if worker.renders < RENDERS_PER_WORKER {
                    self.pool.put(worker);
                }
                Ok(out)
            }
            Ok((worker, Err(io))) => Err(Exchange::Gone(self.died(worker, io, chart))),
            Err(_) => {
                // SAFETY: signalling our own child's process group; the
                // exchange thread then sees its pipes close and hands the
                // worker back to be reaped.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                drop(rx.recv_timeout(Duration::from_secs(5)));
                Err(Exchange::Failed(Error::Timeout { chart: chart.to_string(), limit: self.limits.time }))
            }
        }
    }

    /// Why a worker stopped answering: its exit status and the end of its stderr.
    fn died(&self, mut worker: Worker, io: std::io::Error, chart: &str) -> Error {
        // SAFETY: as above; it is no use any more (a broken frame leaves it
        // out of step with us).
        unsafe { libc::kill(-(worker.child.id() as i32), libc::SIGKILL) };
        let status = worker.child.wait();
        worker.reaped = true;
        if let Some(r) = worker.stderr_reader.take() {
            let _ = r.join();
        }
        let stderr =
            String::from_utf8_lossy(&worker.stderr.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
        if is_out_of_memory(&stderr) {
            return Error::MemoryLimit { chart: chart.to_string(), limit_bytes: self.limits.memory_bytes };
        }
        let tail: String =
            stderr.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        match status {
            Ok(s) => Error::Worker(format!("exited with {s} ({io}): {tail}")),
            Err(e) => Error::Worker(format!("waiting for the worker: {e}")),
        }
    }
}

/// A request that did not get an answer: the worker is gone (it may be
/// retried on a new one if it was reused), or the render itself failed.
enum Exchange {
    Gone(Error),
    Failed(Error),
}

/// How many renders one worker serves before it is retired (bounds what a
/// long-lived Go heap can accumulate), and how many idle workers are kept.
pub const RENDERS_PER_WORKER: u32 = 200;
const MAX_IDLE: usize = 2;

/// A running worker process, its own process group leader. Killed (with its
/// group) and reaped when dropped.
struct Worker {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::process::ChildStdout,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    renders: u32,
    /// Waited for already: its pid may belong to someone else now.
    reaped: bool,
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        // SAFETY: signalling our own child's process group, not reaped yet.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Idle workers, shared by a renderer's clones.
#[derive(Default)]
struct Pool(Mutex<Vec<Worker>>);

impl Pool {
    fn take(&self) -> Option<Worker> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn put(&self, w: Worker) {
        let mut idle = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(w);
        }
    }

    fn idle(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({} idle)", self.idle())
    }
}

/// What the Go runtime (or glibc) prints when the address-space limit is hit.
fn is_out_of_memory(stderr: &str) -> bool {
    ["out of memory", "cannot allocate memory", "failed to reserve", "pthread_create failed"]
        .iter()
        .any(|m| stderr.contains(m))
}

/// Archive bytes, a file's size, or the sum of a directory's file sizes.
pub fn chart_size(chart: &ChartInput) -> Result<u64> {
    match chart {
        ChartInput::Archive(b) => Ok(b.len() as u64),
        ChartInput::Path(p) => dir_size(p),
    }
}

fn dir_size(p: &Path) -> Result<u64> {
    let io = |source| Error::Io { path: p.display().to_string(), source };
    let meta = std::fs::symlink_metadata(p).map_err(io)?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    if !meta.is_dir() {
        return Ok(0);
    }
    let mut total = 0;
    for entry in std::fs::read_dir(p).map_err(io)? {
        total += dir_size(&entry.map_err(io)?.path())?;
    }
    Ok(total)
}
