//! Rendering a bundle path into an artifact: plain YAML directories are
//! packed as they are; a directory with a kustomization is built by a real
//! kustomize and its output is packed. The hub and `convoy build` both call
//! [`render`], so they produce the same bytes for the same tree.
//!
//! Kustomize: `kustomize build` when a `kustomize` binary is on `PATH`,
//! otherwise `kubectl kustomize`; with neither, the build fails with
//! [`Error::Kustomize`] saying so. The input is materialized into a private
//! temp directory from the tree (a git commit, read blob by blob; no
//! checkout): the bundle directory and, following `resources`, `bases`,
//! `components`, `generators`, `transformers` and `validators` entries that
//! are directories, every kustomization root it refers to, recursively
//! (kustomize's default load restrictor keeps each root's other files inside
//! the root). Ignore rules apply to that input without the built-in
//! dotfile defaults (`.env` files feed generators). Remote resources (URLs,
//! `github.com/...`) are refused: an artifact must be a function of the
//! commit alone. kustomize runs with an empty environment (only `PATH`, and
//! `HOME` set to the temp dir) and a timeout; its output becomes the single
//! file [`RENDERED_FILE`] of the artifact.
//!
//! Per-cluster variables are a later step: [`render`] is a pure function of
//! (tree, path, options), so substitution would be a pass over its output
//! keyed by cluster, producing one artifact per distinct set of values.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use convoy_artifact::tree::{join, normalize, resolve_link};
use convoy_artifact::{
    EntryKind, IgnoreRules, Limits, PackedArtifact, Packer, Selection, Tree, pack_selected, select_files,
};

use crate::{Error, Result};

/// The names kustomize accepts for a kustomization file.
pub const KUSTOMIZATION_FILES: [&str; 3] = ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// The file name of kustomize's output in an artifact.
pub const RENDERED_FILE: &str = "kustomize.yaml";

/// Which kustomize to run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Kustomize {
    /// `kustomize` on `PATH`, else `kubectl` on `PATH`.
    #[default]
    Auto,
    /// This binary; `kubectl` (by file name) is run as `kubectl kustomize`.
    Binary(PathBuf),
}

/// How to render.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    /// Artifact limits (also bound the kustomize input and output).
    pub limits: Limits,
    /// Extra ignore rules from config (gitignore syntax, anchored at the tree root).
    pub ignore: Option<String>,
    /// Which kustomize.
    pub kustomize: Kustomize,
    /// How long kustomize may run.
    pub timeout: Duration,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            ignore: None,
            kustomize: Kustomize::Auto,
            timeout: Duration::from_secs(120),
        }
    }
}

/// A rendered bundle.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The artifact.
    pub artifact: PackedArtifact,
    /// Whether kustomize built it.
    pub kustomized: bool,
}

/// Render the bundle at `path` in `tree`. `revision` names the tree in
/// messages (a revision, or a directory for `convoy build`).
pub fn render(tree: &dyn Tree, path: &str, revision: &str, opts: &RenderOptions) -> Result<Rendered> {
    let path = normalize(path).map_err(|m| Error::Config(format!("bundle path {path:?}: {m}")))?;
    match tree.kind(&path)? {
        Some(EntryKind::Dir) => {}
        _ => return Err(Error::PathNotFound { path: display_path(&path), revision: revision.to_string() }),
    }
    if kustomization_in(tree, &path)?.is_some() {
        let artifact = kustomize(tree, &path, opts).map_err(|e| in_repo(e, &path, true))?;
        return Ok(Rendered { artifact, kustomized: true });
    }
    let rules = IgnoreRules::new(opts.ignore.as_deref())?;
    let selected = select_files(tree, &path, &rules, Selection::Manifests)?;
    if let Some(nested) = selected.iter().find(|f| {
        let name = f.path.rsplit('/').next().unwrap_or(&f.path);
        KUSTOMIZATION_FILES.contains(&name)
    }) {
        return Err(Error::Kustomize(format!(
            "{} is a kustomization inside the plain-YAML bundle {}: point a Bundle at its directory, \
             or add a kustomization.yaml at the bundle root",
            join(&path, &nested.path),
            display_path(&path)
        )));
    }
    let artifact =
        pack_selected(tree, selected, &opts.limits).map_err(|e| in_repo(e.into(), &path, false))?;
    Ok(Rendered { artifact, kustomized: false })
}

/// Name the file of a manifest or per-file limit error by its path in the
/// repository (`apps/web/deploy.yaml`), not in the artifact (`deploy.yaml`), so
/// that an operator reading the hub's status knows which file to fix. For a
/// kustomize bundle the file is the overlay's rendered output.
fn in_repo(e: Error, bundle_path: &str, kustomized: bool) -> Error {
    let locate = |file: String| {
        if kustomized {
            format!("{} (kustomize output)", display_path(bundle_path))
        } else {
            join(bundle_path, &file)
        }
    };
    match e {
        Error::Artifact(convoy_artifact::Error::Manifest { file, index, line, message }) => {
            Error::Artifact(convoy_artifact::Error::Manifest { file: locate(file), index, line, message })
        }
        Error::Artifact(convoy_artifact::Error::Limit { what, limit, actual, path: Some(p) }) => {
            Error::Artifact(convoy_artifact::Error::Limit { what, limit, actual, path: Some(locate(p)) })
        }
        other => other,
    }
}

fn display_path(path: &str) -> String {
    if path.is_empty() { ".".into() } else { path.to_string() }
}

/// The kustomization file in `dir`, if any.
fn kustomization_in(tree: &dyn Tree, dir: &str) -> Result<Option<String>> {
    for name in KUSTOMIZATION_FILES {
        let p = join(dir, name);
        match tree.kind(&p)? {
            Some(EntryKind::File) => return Ok(Some(p)),
            Some(EntryKind::Symlink) => return Ok(Some(resolve_link(tree, &p)?)),
            _ => {}
        }
    }
    Ok(None)
}

fn is_under(path: &str, root: &str) -> bool {
    root.is_empty()
        || path == root
        || (path.starts_with(root) && path.as_bytes().get(root.len()) == Some(&b'/'))
}

fn looks_remote(entry: &str) -> bool {
    if entry.contains("://") || entry.starts_with("git@") || entry.starts_with("git::") {
        return true;
    }
    let first = entry.split('/').next().unwrap_or_default();
    !first.starts_with('.') && first.contains('.') && entry.contains('/')
}

/// Materialize the kustomization at `path` and its local dependencies, run
/// kustomize, pack the output.
fn kustomize(tree: &dyn Tree, path: &str, opts: &RenderOptions) -> Result<PackedArtifact> {
    let (program, args) = kustomize_command(&opts.kustomize)?;
    let tmp = tempfile::Builder::new()
        .prefix("convoy-kustomize-")
        .tempdir()
        .map_err(|e| Error::io("tempdir", e))?;
    let rules = IgnoreRules::without_defaults(opts.ignore.as_deref())?;
    let mut m = Materializer {
        tree,
        out: tmp.path(),
        rules,
        limits: opts.limits,
        files: 0,
        bytes: 0,
        roots: Vec::new(),
    };
    let mut queue = vec![path.to_string()];
    let mut seen = HashSet::new();
    while let Some(root) = queue.pop() {
        if !seen.insert(root.clone()) {
            continue;
        }
        m.dir(&root)?;
        let Some(kfile) = kustomization_in(tree, &root)? else { continue };
        let text = tree.read_file(&kfile)?;
        let k: serde_json::Value = serde_saphyr::from_slice(&text).map_err(|e| {
            Error::Kustomize(format!("{kfile}: {}", e.to_string().lines().next().unwrap_or_default()))
        })?;
        for field in ["resources", "bases", "components", "generators", "transformers", "validators"] {
            let Some(entries) = k.get(field).and_then(|v| v.as_array()) else { continue };
            for entry in entries.iter().filter_map(|e| e.as_str()) {
                let local = normalize(&join(&root, entry));
                let kind = match &local {
                    Ok(p) => tree.kind(p)?,
                    Err(_) => None,
                };
                match (local, kind) {
                    (Ok(p), Some(EntryKind::Dir)) => queue.push(p),
                    (Ok(p), Some(EntryKind::File | EntryKind::Symlink)) => m.file(&p)?,
                    _ if looks_remote(entry) => {
                        return Err(Error::Kustomize(format!(
                            "{kfile}: {field} entry {entry:?} is remote; remote resources are not supported \
                             (an artifact must depend only on the commit): vendor it into the repository"
                        )));
                    }
                    (Err(_), _) => {
                        return Err(Error::Kustomize(format!(
                            "{kfile}: {field} entry {entry:?} escapes the repository"
                        )));
                    }
                    // Missing: kustomize reports it with its own words.
                    _ => {}
                }
            }
        }
    }
    let dir = if path.is_empty() { tmp.path().to_path_buf() } else { tmp.path().join(path) };
    let mut cmd = Command::new(&program);
    cmd.args(&args)
        .arg(&dir)
        .current_dir(tmp.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = run_bounded(cmd, opts.timeout, opts.limits.max_file_bytes)?;
    let scrub = |s: &str| {
        s.replace(&format!("{}/", tmp.path().display()), "").replace(&tmp.path().display().to_string(), ".")
    };
    if !output.success {
        let stderr = scrub(&String::from_utf8_lossy(&output.stderr));
        let lines: Vec<&str> = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).take(20).collect();
        return Err(Error::Kustomize(format!("{} failed: {}", program.display(), lines.join("; "))));
    }
    if output.truncated {
        return Err(Error::Artifact(convoy_artifact::Error::Limit {
            what: "file size",
            limit: opts.limits.max_file_bytes,
            actual: output.stdout.len() as u64,
            path: Some(RENDERED_FILE.into()),
        }));
    }
    let mut p = Packer::new(opts.limits);
    p.add(RENDERED_FILE, &output.stdout)?;
    Ok(p.finish()?)
}

struct Materializer<'a> {
    tree: &'a dyn Tree,
    out: &'a Path,
    rules: IgnoreRules,
    limits: Limits,
    files: u64,
    bytes: u64,
    roots: Vec<String>,
}

impl Materializer<'_> {
    /// Copy the directory `root` (unless a root above it was copied already).
    fn dir(&mut self, root: &str) -> Result<()> {
        if self.roots.iter().any(|r| is_under(root, r)) {
            return Ok(());
        }
        for f in select_files(self.tree, root, &self.rules, Selection::All)? {
            self.write(&join(root, &f.path), &f.source)?;
        }
        self.roots.push(root.to_string());
        Ok(())
    }

    /// Copy one file referenced from outside the copied roots.
    fn file(&mut self, path: &str) -> Result<()> {
        if self.roots.iter().any(|r| is_under(path, r)) {
            return Ok(());
        }
        let source = match self.tree.kind(path)? {
            Some(EntryKind::Symlink) => resolve_link(self.tree, path)?,
            _ => path.to_string(),
        };
        self.write(path, &source)
    }

    fn write(&mut self, dest: &str, source: &str) -> Result<()> {
        let content = self.tree.read_file(source)?;
        self.files += 1;
        self.bytes += content.len() as u64;
        if self.files > self.limits.max_files as u64 {
            return Err(Error::Artifact(convoy_artifact::Error::Limit {
                what: "kustomize input file count",
                limit: self.limits.max_files as u64,
                actual: self.files,
                path: None,
            }));
        }
        if self.bytes > self.limits.max_total_bytes {
            return Err(Error::Artifact(convoy_artifact::Error::Limit {
                what: "kustomize input size",
                limit: self.limits.max_total_bytes,
                actual: self.bytes,
                path: None,
            }));
        }
        let target = self.out.join(dest);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        std::fs::write(&target, content).map_err(|e| Error::io(&target, e))
    }
}

/// Find an executable on `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// The program and leading arguments that build a kustomization.
pub fn kustomize_command(k: &Kustomize) -> Result<(PathBuf, Vec<String>)> {
    let for_binary = |p: PathBuf| {
        let is_kubectl = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("kubectl"));
        let args = if is_kubectl { vec!["kustomize".to_string()] } else { vec!["build".to_string()] };
        (p, args)
    };
    match k {
        Kustomize::Binary(p) => Ok(for_binary(p.clone())),
        Kustomize::Auto => {
            find_on_path("kustomize").or_else(|| find_on_path("kubectl")).map(for_binary).ok_or_else(|| {
                Error::Kustomize(
                    "this bundle has a kustomization, but neither `kustomize` nor `kubectl` is on PATH; \
                     install one of them on the hub"
                        .into(),
                )
            })
        }
    }
}

struct Output {
    success: bool,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    truncated: bool,
}

/// Run a command with a timeout, keeping at most `max_stdout` bytes of stdout
/// (and 64 KiB of stderr); the child is killed on timeout.
fn run_bounded(mut cmd: Command, timeout: Duration, max_stdout: u64) -> Result<Output> {
    let program = format!("{:?}", cmd.get_program());
    let mut child = cmd.spawn().map_err(|e| Error::Kustomize(format!("cannot run {program}: {e}")))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stdout).take(max_stdout + 1).read_to_end(&mut buf);
        // Drain the rest so the child is not blocked on a full pipe.
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut buf);
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().map_err(|e| Error::Kustomize(format!("waiting for {program}: {e}")))? {
            Some(s) => break s,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Timeout { what: "kustomize".into(), after: timeout });
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    let truncated = stdout.len() as u64 > max_stdout;
    Ok(Output { success: status.success(), stdout, stderr, truncated })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_detection() {
        for r in
            ["https://github.com/x/y", "github.com/kubernetes-sigs/kustomize/examples", "git@h:x/y", "git::x"]
        {
            assert!(looks_remote(r), "{r}");
        }
        for l in ["../base", "deploy.yaml", "./x", "base", "sub/x.yaml"] {
            assert!(!looks_remote(l), "{l}");
        }
    }

    #[test]
    fn kubectl_gets_the_kustomize_subcommand() {
        let (_, a) = kustomize_command(&Kustomize::Binary("/usr/bin/kubectl".into())).unwrap();
        assert_eq!(a, ["kustomize"]);
        let (_, a) = kustomize_command(&Kustomize::Binary("/opt/kustomize".into())).unwrap();
        assert_eq!(a, ["build"]);
    }
}
