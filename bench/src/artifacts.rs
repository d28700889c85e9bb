//! The artifacts area: building and signing an artifact from a git commit
//! against `git archive HEAD | gzip` of the same tree, the latency of a poll
//! that finds nothing new, and peak memory while fetching and building from a
//! large repository.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, bail};
use convoy_artifact::{SigningKey, Statement};
use convoy_bench::report::{Measurement, median};
use convoy_core::config::RefSpec;
use convoy_sources::git::{FetchOptions, GitCache};
use convoy_sources::redact::Secrets;
use convoy_sources::render::{RenderOptions, render};

use crate::Ctx;

/// The area entry point (see `AREAS` in main.rs).
pub fn run(
    ctx: Ctx,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Vec<Measurement>>>>> {
    Box::pin(async move { tokio::task::spawn_blocking(move || run_blocking(&ctx)).await? })
}

fn m(name: &str, unit: &str, samples: &[f64], target: &str) -> Measurement {
    Measurement::from_samples("artifacts", name, unit, samples, target, None)
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .args(["-c", "user.name=bench", "-c", "user.email=bench@convoy.dev", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .with_context(|| format!("git {args:?}"))?;
    if !out.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let t = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &t)?;
        } else {
            std::fs::copy(e.path(), &t)?;
        }
    }
    Ok(())
}

fn fetch(cache: &GitCache, url: &str, last: Option<&str>) -> anyhow::Result<convoy_sources::git::Resolved> {
    Ok(cache.fetch(
        url,
        &RefSpec::Branch("main".into()),
        &FetchOptions::default(),
        &Secrets::default(),
        last,
        &AtomicBool::new(false),
    )?)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn run_blocking(ctx: &Ctx) -> anyhow::Result<Vec<Measurement>> {
    let tmp = tempfile::tempdir()?;
    let work = tmp.path().join("argo-cd");
    copy_dir(&ctx.corpus.join("argo-cd"), &work).context("copying ../shared/corpus/argo-cd")?;
    git(&work, &["init", "-q"])?;
    git(&work, &["add", "-A"])?;
    git(&work, &["commit", "-q", "-m", "argo-cd"])?;
    let url = work.display().to_string();
    let cache = GitCache::new(tmp.path().join("cache.git"));
    let commit = fetch(&cache, &url, None)?.commit;
    let key = SigningKey::generate()?;
    let opts = RenderOptions::default();

    // Build and sign from the git object database (what the hub does for a
    // new commit) vs git archive | gzip, interleaved.
    let rounds = if ctx.quick { 7 } else { 25 };
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    let mut digest = String::new();
    for i in 0..rounds + 2 {
        let t = Instant::now();
        let tree = cache.tree(&commit)?;
        let r = render(&tree, "", &format!("main@sha1:{commit}"), &opts)?;
        let st = Statement::new(
            "argo-cd",
            &url,
            format!("main@sha1:{commit}"),
            &r.artifact.digest,
            r.artifact.size,
            1,
        );
        let (bytes, sig) = key.sign_statement(&st)?;
        let ours_ms = ms(t);
        std::hint::black_box((bytes, sig));
        digest = r.artifact.digest;
        let t = Instant::now();
        let status = Command::new("sh")
            .args(["-c", "git archive HEAD | gzip -c > /dev/null"])
            .current_dir(&work)
            .status()
            .context("git archive | gzip")?;
        let base_ms = ms(t);
        if !status.success() {
            bail!("git archive | gzip failed");
        }
        if i >= 2 {
            ours.push(ours_ms);
            base.push(base_ms);
        }
    }
    let mut build = m("build+sign argo-cd from git (1.9 MB install.yaml)", "ms", &ours, "<= 1.5x baseline");
    build.baseline = Some("git archive HEAD | gzip".into());
    build.baseline_value = Some(median(&base));
    build.pass = build.ratio().map(|r| r <= 1.5);
    eprintln!("argo-cd artifact {digest}");
    let mut out = vec![build];

    // A poll of an unchanged remote: handshake + ls-refs, no pack.
    let polls = if ctx.quick { 10 } else { 40 };
    let mut file_polls = Vec::new();
    for _ in 0..polls {
        let t = Instant::now();
        let r = fetch(&cache, &format!("file://{url}"), Some(&commit))?;
        file_polls.push(ms(t));
        if r.fetched {
            bail!("an unchanged poll fetched a pack");
        }
    }
    let mut p = m("no-change poll, file://", "ms", &file_polls, "< 50 ms");
    p.pass = Some(p.value < 50.0);
    out.push(p);
    let daemon = GitDaemon::start(&work)?;
    let daemon_url = format!("git://127.0.0.1:{}/", daemon.port);
    fetch(&cache, &daemon_url, Some(&commit))?;
    let mut daemon_polls = Vec::new();
    for _ in 0..polls {
        let t = Instant::now();
        let r = fetch(&cache, &daemon_url, Some(&commit))?;
        daemon_polls.push(ms(t));
        if r.fetched {
            bail!("an unchanged poll fetched a pack");
        }
    }
    let mut p = m("no-change poll, git daemon", "ms", &daemon_polls, "< 50 ms");
    p.pass = Some(p.value < 50.0);
    out.push(p);
    drop(daemon);

    out.extend(large_repo(ctx, tmp.path())?);
    Ok(out)
}

/// `git daemon`; its guard ends the `git` wrapper and the real
/// `git-daemon` child (one process group) on drop, panic or Ctrl-C.
struct GitDaemon {
    _child: convoy_testsupport::ProcessGuard,
    port: u16,
}

impl GitDaemon {
    fn start(repo: &Path) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let pid_file = repo.parent().unwrap_or(repo).join(format!("git-daemon-{port}.pid"));
        let mut child = convoy_testsupport::ProcessGuard::spawn(
            "git daemon",
            Command::new("git")
                .args(["daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1"])
                .arg(format!("--port={port}"))
                .arg(format!("--pid-file={}", pid_file.display()))
                .arg(format!("--base-path={}", repo.display()))
                .arg(repo)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .context("git daemon")?;
        child.watch_pid_file(&pid_file);
        let d = GitDaemon { _child: child, port };
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("git daemon did not start");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(d)
    }
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

/// A generated repository with large incompressible blobs outside the
/// bundle and thousands of manifests in it; peak RSS of a fresh shallow
/// fetch plus a build of the bundle.
fn large_repo(ctx: &Ctx, tmp: &Path) -> anyhow::Result<Vec<Measurement>> {
    let (blobs, manifests) = if ctx.quick { (48usize, 500usize) } else { (384, 4000) };
    let repo = tmp.join("large.git");
    std::fs::create_dir_all(&repo)?;
    git(&repo, &["init", "-q", "--bare"])?;
    let mut fi = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(&repo)
        .stdin(Stdio::piped())
        .spawn()
        .context("git fast-import")?;
    {
        let mut w = std::io::BufWriter::new(fi.stdin.take().context("stdin")?);
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut mark = 0usize;
        let mut paths = Vec::new();
        let mut chunk = vec![0u8; 1 << 20];
        for i in 0..blobs {
            for b in chunk.chunks_mut(8) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                b.copy_from_slice(&seed.to_le_bytes()[..b.len()]);
            }
            mark += 1;
            write!(w, "blob\nmark :{mark}\ndata {}\n", chunk.len())?;
            w.write_all(&chunk)?;
            writeln!(w)?;
            paths.push((format!("data/{:03}/blob-{i}.bin", i % 64), mark));
        }
        for i in 0..manifests {
            let text = format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i}\n  namespace: bench\n  labels: {{app: bench, shard: \"{}\"}}\ndata:\n{}",
                i % 16,
                (0..40).map(|k| format!("  key-{k}: value-{i}-{k}-{}\n", "x".repeat(48))).collect::<String>()
            );
            mark += 1;
            write!(w, "blob\nmark :{mark}\ndata {}\n{text}\n", text.len())?;
            paths.push((format!("bundle/{:02}/cm-{i}.yaml", i % 50), mark));
        }
        write!(
            w,
            "commit refs/heads/main\ncommitter bench <bench@convoy.dev> 1767225600 +0000\ndata 5\nlarge\n"
        )?;
        for (p, mk) in &paths {
            writeln!(w, "M 100644 :{mk} {p}")?;
        }
        writeln!(w)?;
        w.flush()?;
    }
    if !fi.wait()?.success() {
        bail!("git fast-import failed");
    }
    let pack_bytes: u64 = walk_size(&repo.join("objects"));

    let cache = GitCache::new(tmp.join("large-cache.git"));
    // Peak anonymous memory (heap) while fetching and building, sampled
    // every 2 ms; file-backed pages of the mmapped pack are page cache, not
    // ours, and are reported separately (VmHWM).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before_anon = rss_kib("RssAnon:");
    let before_total = rss_kib("VmRSS:");
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib("RssAnon:"));
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            peak.max(rss_kib("RssAnon:"))
        })
    };
    let t = Instant::now();
    let r = fetch(&cache, &repo.display().to_string(), None)?;
    let fetch_ms = ms(t);
    let t = Instant::now();
    let tree = cache.tree(&r.commit)?;
    let built = render(&tree, "bundle", "large", &RenderOptions::default())?;
    let build_ms = ms(t);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak_anon = sampler.join().unwrap_or(0);
    let peak_total = rss_kib("VmHWM:");
    let growth_mib = peak_anon.saturating_sub(before_anon) as f64 / 1024.0;
    let repo_mib = pack_bytes as f64 / (1 << 20) as f64;
    eprintln!(
        "large repo: {repo_mib:.0} MiB packed, {manifests} manifests; fetch {fetch_ms:.0} ms, build {build_ms:.0} ms \
         ({} objects, {} bytes); anon RSS {before_anon} -> peak {peak_anon} KiB; total RSS {before_total} -> \
         VmHWM {peak_total} KiB (includes the mmapped pack)",
        built.artifact.objects, built.artifact.size
    );
    let mut mem = m(
        &format!("peak heap (RssAnon) growth: fetch + build, {repo_mib:.0} MiB repo, {manifests} manifests"),
        "MiB",
        &[growth_mib],
        "< 25% of repo size",
    );
    mem.pass = Some(growth_mib < repo_mib * 0.25);
    let mut f = m(&format!("first fetch of the {repo_mib:.0} MiB repo (file)"), "ms", &[fetch_ms], "");
    f.pass = None;
    let b = m(
        &format!("build {manifests} manifests from git ({} KiB artifact)", built.artifact.size >> 10),
        "ms",
        &[build_ms],
        "",
    );
    Ok(vec![mem, f, b])
}

fn walk_size(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => walk_size(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}
