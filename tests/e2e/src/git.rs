//! Real git for the scenarios: a working repository the test edits and
//! commits in (with the git CLI, as a user would), a bare repository it pushes
//! to, and `git daemon` serving that bare repository to the hub (which
//! fetches with gix, never with the git CLI).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use convoy_testsupport::ProcessGuard;

/// Run git in `dir` isolated from the machine's git config, with a fixed
/// identity; returns trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "core.hooksPath=/dev/null",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Convoy E2E")
        .env("GIT_AUTHOR_EMAIL", "e2e@convoy.test")
        .env("GIT_COMMITTER_NAME", "Convoy E2E")
        .env("GIT_COMMITTER_EMAIL", "e2e@convoy.test")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run git {args:?} (is git installed?)"))?;
    if !out.status.success() {
        bail!("git {args:?} in {} failed: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A working repository on branch `main`, optionally pushing to a bare one.
#[derive(Debug, Clone)]
pub struct GitRepo {
    /// The working tree.
    pub work: PathBuf,
    /// The bare repository `push` updates (served by git daemon).
    pub bare: Option<PathBuf>,
}

impl GitRepo {
    /// Create `work` with `files` committed on `main` ("initial fleet").
    pub fn init(work: &Path, files: &[(String, Vec<u8>)]) -> Result<GitRepo> {
        std::fs::create_dir_all(work).with_context(|| format!("create {}", work.display()))?;
        git(work, &["init", "-q", "-b", "main"])?;
        let repo = GitRepo { work: work.to_path_buf(), bare: None };
        for (path, bytes) in files {
            repo.write_bytes(path, bytes)?;
        }
        repo.commit("initial fleet")?;
        Ok(repo)
    }

    /// Create `work` with `files`, and a bare clone at `bare` that `push` updates.
    pub fn init_with_bare(work: &Path, bare: &Path, files: &[(String, Vec<u8>)]) -> Result<GitRepo> {
        let mut repo = GitRepo::init(work, files)?;
        let parent = bare.parent().context("bare repository path has a parent")?;
        std::fs::create_dir_all(parent)?;
        git(parent, &["clone", "-q", "--bare", &work.to_string_lossy(), &bare.to_string_lossy()])?;
        git(work, &["remote", "add", "origin", &bare.to_string_lossy()])?;
        repo.bare = Some(bare.to_path_buf());
        repo.push()?;
        Ok(repo)
    }

    /// Write a file (creating directories).
    pub fn write(&self, path: &str, text: &str) -> Result<()> {
        self.write_bytes(path, text.as_bytes())
    }

    fn write_bytes(&self, path: &str, bytes: &[u8]) -> Result<()> {
        let p = self.work.join(path);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(&p, bytes).with_context(|| format!("write {}", p.display()))
    }

    /// Read a file of the working tree.
    pub fn read(&self, path: &str) -> Result<String> {
        std::fs::read_to_string(self.work.join(path)).with_context(|| format!("read {path}"))
    }

    /// Replace `from` by `to` in a file (which must contain `from`).
    pub fn replace(&self, path: &str, from: &str, to: &str) -> Result<()> {
        let text = self.read(path)?;
        if !text.contains(from) {
            bail!("{path} does not contain {from:?}");
        }
        self.write(path, &text.replacen(from, to, 1))
    }

    /// Delete a file.
    pub fn remove(&self, path: &str) -> Result<()> {
        std::fs::remove_file(self.work.join(path)).with_context(|| format!("remove {path}"))
    }

    /// Stage everything and commit; returns the new commit id.
    pub fn commit(&self, message: &str) -> Result<String> {
        git(&self.work, &["add", "-A"])?;
        git(&self.work, &["commit", "-q", "-m", message])?;
        self.head()
    }

    /// The commit id of HEAD.
    pub fn head(&self) -> Result<String> {
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// Push `main` to the bare repository.
    pub fn push(&self) -> Result<()> {
        if self.bare.is_some() {
            git(&self.work, &["push", "-q", "origin", "main"])?;
        }
        Ok(())
    }
}

/// `git daemon` exporting every repository under a base directory. Its
/// [`ProcessGuard`] ends the `git` wrapper and the real `git-daemon` it
/// runs (one process group) on drop, on panic and on Ctrl-C.
pub struct GitDaemon {
    _guard: ProcessGuard,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
}

impl GitDaemon {
    /// Serve the repositories under `base` as `git://127.0.0.1:<port>/<name>`.
    pub fn start(base: &Path) -> Result<GitDaemon> {
        for _ in 0..5 {
            let port = crate::free_port();
            // The real `git-daemon` (git's child) writes its pid here; the
            // guard ends it by pid too, not only by process group.
            let pid_file = base.parent().unwrap_or(base).join(format!("git-daemon-{port}.pid"));
            let mut child = ProcessGuard::spawn(
                "git daemon",
                Command::new("git")
                    .args([
                        "daemon",
                        "--reuseaddr",
                        "--export-all",
                        "--informative-errors",
                        "--listen=127.0.0.1",
                    ])
                    .arg(format!("--port={port}"))
                    .arg(format!("--pid-file={}", pid_file.display()))
                    .arg(format!("--base-path={}", base.display()))
                    .arg(base)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )
            .context("start git daemon (is git installed?)")?;
            child.watch_pid_file(&pid_file);
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if child.try_wait()?.is_some() {
                    break; // port taken: try another
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(GitDaemon { _guard: child, port });
                }
                if Instant::now() > deadline {
                    bail!("git daemon did not listen on port {port}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        bail!("git daemon did not start")
    }

    /// The URL of repository `name` (a directory under the base).
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}
