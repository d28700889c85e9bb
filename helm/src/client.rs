//! The caller's side of rendering: start one worker process per render,
//! bounded in time (killed, with its process group, at the deadline), in
//! memory (`RLIMIT_AS` set in the child before exec, and `GOMEMLIMIT` so Go's
//! collector works under it) and in input size (charts over the limit are
//! refused before a worker starts). Blocking: async callers use
//! `spawn_blocking`.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
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
}

impl Renderer {
    /// A renderer using the library [`find_library`] finds; `HelmUnavailable` without one.
    pub fn new(worker: WorkerCommand, limits: Limits) -> Result<Self> {
        Ok(Self::with_library(worker, find_library()?, limits))
    }

    /// A renderer with an explicit library path.
    pub fn with_library(worker: WorkerCommand, library: PathBuf, limits: Limits) -> Self {
        Self { worker, library, limits }
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

    /// Run the worker on `input`; returns its stdout.
    fn run(&self, input: &[u8], chart: &str) -> Result<Vec<u8>> {
        let limit = self.limits.memory_bytes;
        let mut cmd = Command::new(&self.worker.program);
        cmd.args(&self.worker.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
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
        let guard = KillGroup(child.id() as i32);
        let mut stdin = child.stdin.take().expect("piped");
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            // A worker that dies early closes the pipe; its exit status tells why.
            let _ = stdin.write_all(&input);
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut stdout = child.stdout.take().expect("piped");
            let mut stderr = child.stderr.take().expect("piped");
            let err_reader = std::thread::spawn(move || {
                let mut e = Vec::new();
                let _ = stderr.read_to_end(&mut e);
                e
            });
            let mut out = Vec::new();
            let _ = stdout.read_to_end(&mut out);
            let status = child.wait();
            let err = err_reader.join().unwrap_or_default();
            let _ = tx.send((status, out, err));
        });
        let result = rx.recv_timeout(self.limits.time);
        let _ = writer.join();
        let (status, out, err) = match result {
            Ok(r) => r,
            Err(_) => {
                drop(guard); // kills the group; the waiter thread then reaps it
                let _ = rx.recv_timeout(Duration::from_secs(5));
                return Err(Error::Timeout { chart: chart.to_string(), limit: self.limits.time });
            }
        };
        guard.disarm();
        let status = status.map_err(|e| Error::Worker(format!("waiting for the worker: {e}")))?;
        if status.success() {
            return Ok(out);
        }
        let stderr = String::from_utf8_lossy(&err);
        if is_out_of_memory(&stderr) {
            return Err(Error::MemoryLimit { chart: chart.to_string(), limit_bytes: limit });
        }
        let tail: String =
            stderr.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        Err(Error::Worker(format!("exited with {status}: {tail}")))
    }
}

/// What the Go runtime (or glibc) prints when the address-space limit is hit.
fn is_out_of_memory(stderr: &str) -> bool {
    ["out of memory", "cannot allocate memory", "failed to reserve", "pthread_create failed"]
        .iter()
        .any(|m| stderr.contains(m))
}

/// Kills a process group on drop unless disarmed.
struct KillGroup(i32);

impl KillGroup {
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for KillGroup {
    fn drop(&mut self) {
        // SAFETY: signalling our own child's process group.
        unsafe { libc::kill(-self.0, libc::SIGKILL) };
    }
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
