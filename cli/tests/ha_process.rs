//! Two `convoy hub` processes on one etcd prefix (feature `etcd`, real etcd
//! on loopback) and one git source: kill -9 of the replica holding the
//! source lock, and the other fetches and signs the next commit once the
//! dead replica's lease has expired. Generations stay monotonic.
#![cfg(feature = "etcd")]

#[path = "../../hub/tests/etcd_server/mod.rs"]
mod etcd_server;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use convoy_testsupport::ProcessGuard;
use serde_json::Value;

const TTL_SECS: u64 = 2;

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn commit(repo: &Path, value: &str) {
    std::fs::write(
        repo.join("web/cm.yaml"),
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings, namespace: apps}}\ndata: {{k: \"{value}\"}}\n"),
    )
    .unwrap();
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", value]);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Start replica `name` under `root`; `shared` is the first replica's data dir.
fn start(root: &Path, name: &str, etcd: &str, shared: Option<&Path>) -> ProcessGuard {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = format!(
        "apiVersion: convoy.dev/v1\nkind: HubConfig\nspec:\n  dataDir: data\n  grpc: {{listen: \"127.0.0.1:{}\"}}\n  http: {{listen: \"\"}}\n  metrics: {{listen: \"\"}}\n  fleet: {{paths: [{}], reloadInterval: 500ms}}\n  store: {{type: etcd, endpoints: [\"{etcd}\"], prefix: /proc/, leaseTtl: {TTL_SECS}s}}\n",
        free_port(),
        root.join("fleet").display()
    );
    if let Some(s) = shared {
        cfg.push_str(&format!(
            "  tls: {{caCertFile: {}, caKeyFile: {}}}\n  signing: {{keyFile: {}}}\n",
            s.join("ca.crt").display(),
            s.join("ca.key").display(),
            s.join(convoy_artifact::PRIVATE_KEY_FILE).display()
        ));
    }
    std::fs::write(dir.join("hub.yaml"), cfg).unwrap();
    let log = std::fs::File::create(dir.join("hub.log")).unwrap();
    ProcessGuard::spawn(
        name,
        Command::new(env!("CARGO_BIN_EXE_convoy"))
            .args(["hub", "--config"])
            .arg(dir.join("hub.yaml"))
            .env("CONVOY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    )
    .unwrap()
}

/// Whether replica `dir` keeps source `repo` suspended (standby: another
/// replica holds its lock).
fn standing_by(dir: &Path) -> Option<bool> {
    let out = Command::new(env!("CARGO_BIN_EXE_convoy"))
        .args(["get", "sources", "-o", "json"])
        .env("CONVOY_CREDENTIALS", dir.join("data/admin-credentials.yaml"))
        .env("CONVOY_LOG", "error")
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v.as_array()?.iter().find(|s| s["name"] == "repo")?["suspended"].as_bool()
}

/// The generation and digest of bundle `web` as replica `dir` serves it.
fn web(dir: &Path) -> Option<(u64, String)> {
    let creds = dir.join("data/admin-credentials.yaml");
    if !creds.exists() {
        return None;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_convoy"))
        .args(["get", "bundles", "-o", "json"])
        .env("CONVOY_CREDENTIALS", &creds)
        .env("CONVOY_LOG", "error")
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let b = v.as_array()?.iter().find(|b| b["name"] == "web")?;
    Some((b["generation"].as_u64()?, b["digest"].as_str().unwrap_or_default().to_string()))
}

fn until<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn heavy_kill_9_of_the_source_lock_holder_moves_fetching_to_another_replica() {
    let etcd = etcd_server::Server::start();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let repo = root.join("repo");
    std::fs::create_dir_all(repo.join("web")).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    commit(&repo, "1");
    std::fs::create_dir_all(root.join("fleet")).unwrap();
    std::fs::write(
        root.join("fleet/fleet.yaml"),
        format!(
            "apiVersion: convoy.dev/v1\nkind: GitSource\nmetadata: {{name: repo}}\nspec:\n  url: file://{}\n  ref: {{branch: main}}\n  interval: 1s\n---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata: {{name: web}}\nspec:\n  source: repo\n  path: web\n  targets: [{{clusterSelector: {{}}}}]\n",
            repo.display()
        ),
    )
    .unwrap();

    let a = start(root, "a", &etcd.url, None);
    let first = until("replica a signs generation 1", Duration::from_secs(60), || {
        web(&root.join("a")).filter(|g| g.0 > 0)
    });
    assert_eq!(first.0, 1);
    let _b = start(root, "b", &etcd.url, Some(&root.join("a/data")));
    until("replica b serves generation 1", Duration::from_secs(60), || {
        web(&root.join("b")).filter(|g| *g == first)
    });

    // a holds the source lock (it started first); b stands by.
    assert_eq!(standing_by(&root.join("a")), Some(false));
    until("b stands by", Duration::from_secs(10), || standing_by(&root.join("b")).filter(|s| *s));
    // kill -9 of a, then a new commit: b takes the lock and fetches it.
    a.signal(9);
    let killed = Instant::now();
    commit(&repo, "2");
    let second = until("replica b fetches and signs the next commit", Duration::from_secs(30), || {
        web(&root.join("b")).filter(|g| g.0 > 1)
    });
    let took = killed.elapsed();
    eprintln!(
        "kill -9 to the next commit signed by the other replica: {took:?} (lease TTL {TTL_SECS}s, poll 1s)"
    );
    assert_eq!(second.0, 2, "the next generation, none skipped or repeated");
    assert_ne!(second.1, first.1);
    assert!(took < Duration::from_secs(TTL_SECS + 10), "took {took:?}");
    assert_eq!(standing_by(&root.join("b")), Some(false), "b polls the source now");
}
