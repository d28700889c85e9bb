//! `convoy hub` processes on one etcd prefix (feature `etcd`, real etcd on
//! loopback) and one git source: kill -9 of the replica holding the source
//! lock, and another fetches and signs the next commit once the dead
//! replica's lease has expired; kill -9 of the replica real agents (on
//! kube-sim) are connected to, and they move to another replica and lose
//! no status or event; a replica whose etcd connection goes through a TCP
//! proxy the test cuts stops writing (checked in etcd's own history) and
//! stops claiming work, and rejoins as a follower once healed. Generations
//! stay monotonic.
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

/// The fleet every replica reads: GitSource `repo` (polled every second)
/// and Bundle `web` (its `web` directory) on every cluster.
fn write_fleet(root: &Path, repo: &Path) {
    std::fs::create_dir_all(root.join("fleet")).unwrap();
    std::fs::write(
        root.join("fleet/fleet.yaml"),
        format!(
            "apiVersion: convoy.dev/v1\nkind: GitSource\nmetadata: {{name: repo}}\nspec:\n  url: file://{}\n  ref: {{branch: main}}\n  interval: 1s\n---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata: {{name: web}}\nspec:\n  source: repo\n  path: web\n  targets: [{{clusterSelector: {{}}}}]\n",
            repo.display()
        ),
    )
    .unwrap();
}

/// `root/repo` with commit "1" of `web/cm.yaml`, and the fleet on it.
fn repo_and_fleet(root: &Path) -> std::path::PathBuf {
    let repo = root.join("repo");
    std::fs::create_dir_all(repo.join("web")).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    commit(&repo, "1");
    write_fleet(root, &repo);
    repo
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
    let repo = repo_and_fleet(root);

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

/// The endpoint replica `dir` serves gRPC on (from its admin credentials).
fn endpoint(dir: &Path) -> String {
    convoy_hub::runtime::CredentialsFile::load(&dir.join("data/admin-credentials.yaml")).unwrap().hub
}

/// `convoy ARGS -o json` against replica `dir`, parsed (one document, or
/// one per line).
fn json(dir: &Path, args: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_convoy"))
        .args(args)
        .args(["-o", "json"])
        .env("CONVOY_CREDENTIALS", dir.join("data/admin-credentials.yaml"))
        .env("CONVOY_LOG", "error")
        .output()
        .unwrap();
    assert!(out.status.success(), "convoy {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(v)) => v,
        Ok(v) => vec![v],
        Err(_) => text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect(),
    }
}

/// Whether replica `dir` holds `cluster`'s Sync stream.
fn connected_on(dir: &Path, cluster: &str) -> bool {
    json(dir, &["get", "clusters"]).iter().any(|c| c["name"] == cluster && c["connected"] == true)
}

/// The `k` value of ConfigMap `default/settings` on a simulated cluster.
fn settings(sim: &kube_sim::KubeSim) -> Option<String> {
    sim.objects("", "configmaps")
        .into_iter()
        .find(|o| o["metadata"]["name"] == "settings")
        .and_then(|o| o["data"]["k"].as_str().map(String::from))
}

/// Every event an agent recorded, by (bundle, reason), from its metrics.
fn agent_events(m: &convoy_agent::metrics::Metrics) -> std::collections::BTreeMap<(String, String), u64> {
    let mut out = std::collections::BTreeMap::new();
    for line in m.encode().lines() {
        let Some(rest) = line.strip_prefix("convoy_agent_events_total{") else { continue };
        let Some((labels, value)) = rest.split_once("} ") else { continue };
        let label = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let n: f64 = value.trim().parse().unwrap_or(0.0);
        if n > 0.0 {
            out.insert((label("bundle"), label("reason")), n as u64);
        }
    }
    out
}

/// Three replicas, two clusters on kube-sim with real agents that know
/// every replica's address (they connect to the first, `a`): kill -9 of
/// `a`, the replica they are connected to (and that holds the source
/// lock). They reconnect to another replica, the next commit reaches them,
/// and the hub stores each of their events exactly once and their last
/// status.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heavy_kill_9_of_the_replica_agents_are_connected_to_moves_them_and_loses_nothing() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let etcd = etcd_server::Server::start();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let repo = root.join("repo");
    std::fs::create_dir_all(repo.join("web")).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    let commit_default = |value: &str| {
        std::fs::write(
            repo.join("web/cm.yaml"),
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings, namespace: default}}\ndata: {{k: \"{value}\"}}\n"),
        )
        .unwrap();
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", value]);
    };
    commit_default("1");
    write_fleet(root, &repo);
    let blocking = |f: &mut dyn FnMut()| tokio::task::block_in_place(f);
    let a = start(root, "a", &etcd.url, None);
    let mut first = None;
    blocking(&mut || {
        first = Some(until("a signs generation 1", Duration::from_secs(60), || {
            web(&root.join("a")).filter(|g| g.0 > 0)
        }))
    });
    let first = first.unwrap();
    let shared = root.join("a/data");
    let _b = start(root, "b", &etcd.url, Some(&shared));
    let _c = start(root, "c", &etcd.url, Some(&shared));
    blocking(&mut || {
        for r in ["b", "c"] {
            until("every replica serves generation 1", Duration::from_secs(60), || {
                web(&root.join(r)).filter(|g| *g == first)
            });
        }
    });
    let addresses = ["a", "b", "c"].map(|r| endpoint(&root.join(r))).join(",");
    let token = json(&root.join("b"), &["token", "create", "--name-prefix", "c", "--ttl", "1h"])[0]["token"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(root.join("token"), &token).unwrap();

    // Two clusters whose agents take the replicas in order: both on a.
    let mut clusters = Vec::new();
    for name in ["c1", "c2"] {
        let sim = kube_sim::KubeSim::start(kube_sim::SimConfig { name: name.into(), ..Default::default() })
            .await
            .unwrap();
        let mut kcfg = kube::Config::new(sim.url().parse().unwrap());
        kcfg.read_timeout = Some(Duration::from_secs(60));
        let mut cfg = convoy_agent::AgentConfig::new(&addresses, name, root.join(name).join("state"));
        cfg.kube = convoy_agent::KubeSource::Client(kube::Client::try_from(kcfg).unwrap());
        cfg.hub_ca = Some(shared.join("ca.crt"));
        cfg.token_file = Some(root.join("token"));
        cfg.trusted_keys = vec![shared.join("trusted-keys.pem")];
        cfg.tuning = convoy_agent::Tuning {
            heartbeat: Duration::from_secs(5),
            reconnect_base: Duration::from_millis(100),
            reconnect_cap: Duration::from_secs(1),
            retry_base: Duration::from_millis(200),
            retry_cap: Duration::from_secs(2),
            ..Default::default()
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let agent = convoy_agent::Agent::start(cfg, stop.clone()).await.unwrap();
        clusters.push((name, sim, agent, stop));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !clusters.iter().all(|(_, sim, ..)| settings(sim).as_deref() == Some("1")) {
        assert!(Instant::now() < deadline, "generation 1 applied on both clusters");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    blocking(&mut || {
        until("both agents on a", Duration::from_secs(30), || {
            ["c1", "c2"].iter().all(|c| connected_on(&root.join("a"), c)).then_some(())
        })
    });

    // kill -9 of a; then a new commit.
    a.signal(9);
    let killed = Instant::now();
    commit_default("2");
    let deadline = Instant::now() + Duration::from_secs(45);
    while !clusters.iter().all(|(_, sim, ..)| settings(sim).as_deref() == Some("2")) {
        assert!(
            Instant::now() < deadline,
            "the next commit reaches both clusters through the other replicas"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "kill -9 of the agents' replica to the next commit applied on both clusters: {:?}",
        killed.elapsed()
    );
    // Every agent's outbox drained: the hub acknowledged everything it sent.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !clusters.iter().all(|(_, _, agent, _)| agent.metrics.outbox_depth.get() == 0) {
        assert!(Instant::now() < deadline, "the agents' outboxes drain on the other replicas");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    blocking(&mut || {
        for (name, _, agent, _) in &clusters {
            until("the agent is connected to b or c", Duration::from_secs(30), || {
                ["b", "c"].iter().any(|r| connected_on(&root.join(r), name)).then_some(())
            });
            // Each event the agent recorded is stored once (not lost with a,
            // not stored twice by the replica it moved to).
            let sent = agent_events(&agent.metrics);
            let mut stored = std::collections::BTreeMap::new();
            for e in json(&root.join("c"), &["events", "--cluster", name, "--limit", "1000"]) {
                if e["cluster"] == *name {
                    let k = (
                        e["bundle"].as_str().unwrap_or("").to_string(),
                        e["reason"].as_str().unwrap_or("").to_string(),
                    );
                    *stored.entry(k).or_insert(0u64) += 1;
                }
            }
            assert!(!sent.is_empty(), "the agent recorded events");
            assert_eq!(stored, sent, "{name}: every event exactly once across the replicas");
            // Its last status is what it applied, on every live replica.
            for r in ["b", "c"] {
                until("the last status on every replica", Duration::from_secs(30), || {
                    let v = json(&root.join(r), &["status", "web"]);
                    let rows = v
                        .first()?
                        .get("clusters")
                        .and_then(|c| c.as_array().cloned())
                        .or_else(|| Some(v.clone()))?;
                    rows.iter()
                        .any(|row| {
                            row["cluster"] == *name && row["generation"] == 2 && row["phase"] == "Ready"
                        })
                        .then_some(())
                });
            }
        }
    });
    for r in ["b", "c"] {
        let g = web(&root.join(r)).unwrap();
        assert_eq!(g.0, 2, "one new generation, none skipped or repeated");
    }
    for (_, sim, agent, stop) in clusters {
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), agent.join()).await;
        sim.shutdown().await;
    }
}

/// One etcd `Range` through its JSON gateway: `(revision, [(key, value)])`
/// of the keys under `prefix` (relative to the hub's `/proc/`) at store
/// revision `at` (0: now), only those put at revision `at` when `only_at`.
fn etcd_range(url: &str, prefix: &str, at: i64, only_at: bool) -> (i64, Vec<(String, String)>) {
    use base64::Engine;
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    let key = format!("/proc/{prefix}").into_bytes();
    let mut end = key.clone();
    *end.last_mut().unwrap() += 1;
    let mut body = serde_json::json!({"key": b64(&key), "range_end": b64(&end)});
    if at > 0 {
        body["revision"] = at.into();
    }
    if only_at {
        body["min_mod_revision"] = at.into();
        body["max_mod_revision"] = at.into();
    }
    let http = etcd_server::gateway(url, "/v3/kv/range", &body.to_string());
    let json = http.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("etcd range: {e}: {http}"));
    let rev = v["header"]["revision"].as_str().and_then(|r| r.parse().ok()).expect("a revision");
    let text = |f: &Value| {
        let raw = base64::engine::general_purpose::STANDARD.decode(f.as_str().unwrap_or_default()).unwrap();
        String::from_utf8_lossy(&raw).to_string()
    };
    let kvs: Option<Vec<(String, String)>> =
        v["kvs"].as_array().map(|kvs| kvs.iter().map(|kv| (text(&kv["key"]), text(&kv["value"]))).collect());
    (rev, kvs.unwrap_or_default())
}

/// Whether a key put in etcd was written by replica `id`: a commit (every
/// commit puts `meta/commit` = `<counter> <replica>`), a lock it took (the
/// lock's value is its holder), or its own lease keys.
fn written_by(id: &str, (key, value): &(String, String)) -> bool {
    let key = key.trim_start_matches("/proc/");
    (key == "meta/commit" && value.split_whitespace().nth(1) == Some(id))
        || (key.starts_with("locks/") && value == id)
        || key == format!("replicas/{id}")
        || key == format!("peers/{id}")
}

/// A `convoy hub` process whose etcd connection goes through a TCP proxy the
/// test controls holds the source lock; the proxy is cut. From the cut to
/// the heal, nothing it writes lands in etcd (every key put at every etcd
/// revision in between is read back and none is its), it drops its lock
/// (its pipeline stands by) and publishes nothing it could not commit, and
/// the other replica takes the lock within the lease TTL and fetches and
/// signs the next commit. Healed, it rejoins as a follower: it gets a new
/// lease, serves what the other signed, and leaves the lock where it is.
#[test]
fn heavy_a_replica_cut_off_from_etcd_stops_writing_and_claiming_work_and_rejoins_as_a_follower() {
    let etcd = etcd_server::Server::start();
    let proxy = etcd_server::Proxy::start(&etcd.url);
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let repo = repo_and_fleet(root);

    // a, through the proxy, starts first: it takes the source lock.
    let _a = start(root, "a", &proxy.url, None);
    let first = until("replica a signs generation 1", Duration::from_secs(60), || {
        web(&root.join("a")).filter(|g| g.0 > 0)
    });
    let a_id = until("a's replica key", Duration::from_secs(10), || {
        let (_, kvs) = etcd_range(&etcd.url, "replicas/", 0, false);
        kvs.first().map(|(k, _)| k.trim_start_matches("/proc/replicas/").to_string())
    });
    let _b = start(root, "b", &etcd.url, Some(&root.join("a/data")));
    until("replica b serves generation 1", Duration::from_secs(60), || {
        web(&root.join("b")).filter(|g| *g == first)
    });
    until("b stands by", Duration::from_secs(10), || standing_by(&root.join("b")).filter(|s| *s));
    let lock_holder =
        || etcd_range(&etcd.url, "locks/source/repo", 0, false).1.first().map(|kv| kv.1.clone());
    assert_eq!(lock_holder(), Some(a_id.clone()), "a holds the source lock");
    let b_id = until("b's replica key", Duration::from_secs(10), || {
        let (_, kvs) = etcd_range(&etcd.url, "replicas/", 0, false);
        kvs.iter().map(|(k, _)| k.trim_start_matches("/proc/replicas/").to_string()).find(|id| *id != a_id)
    });

    // Cut a off, then commit: a would fetch it (it held the lock), b must.
    proxy.cut();
    let cut = Instant::now();
    let (cut_rev, _) = etcd_range(&etcd.url, "meta/", 0, false);
    commit(&repo, "2");
    let second = until("b takes the lock and signs the next commit", Duration::from_secs(30), || {
        web(&root.join("b")).filter(|g| g.0 > 1)
    });
    let took = cut.elapsed();
    eprintln!(
        "etcd cut-off of the lock holder to the next commit signed by the other replica: {took:?} (lease TTL {TTL_SECS}s, poll 1s)"
    );
    assert_eq!(second.0, 2, "the next generation, none skipped or repeated");
    assert_ne!(second.1, first.1);
    assert!(took < Duration::from_secs(TTL_SECS + 10), "took {took:?}");
    assert_eq!(lock_holder(), Some(b_id.clone()), "b holds the source lock");
    // a stops claiming work: its pipeline stands by (it dropped the lock on
    // its own, no renewal heard), and it published no generation it could
    // not commit (durable before visible).
    until("a stands by while cut off", Duration::from_secs(TTL_SECS * 3), || {
        standing_by(&root.join("a")).filter(|s| *s)
    });
    assert_eq!(web(&root.join("a")), Some(first.clone()), "a serves only what it committed");

    // Nothing a wrote landed in etcd after the cut: every key put at every
    // revision since is someone else's.
    let (heal_rev, _) = etcd_range(&etcd.url, "meta/", 0, false);
    let mut puts = 0;
    for rev in cut_rev + 1..=heal_rev {
        let (_, kvs) = etcd_range(&etcd.url, "", rev, true);
        for kv in &kvs {
            assert!(
                !written_by(&a_id, kv),
                "a wrote {kv:?} at etcd revision {rev}, after the cut at {cut_rev}"
            );
        }
        puts += kvs.len();
    }
    assert!(puts > 0, "b's commits are in etcd's history between revisions {cut_rev} and {heal_rev}");

    // Healed: a rejoins as a follower.
    proxy.heal();
    until("a serves what b signed", Duration::from_secs(30), || {
        web(&root.join("a")).filter(|g| *g == second)
    });
    until("a has a lease again", Duration::from_secs(30), || {
        etcd_range(&etcd.url, &format!("replicas/{a_id}"), 0, false).1.first().map(|_| ())
    });
    assert_eq!(standing_by(&root.join("a")), Some(true), "a follows");
    assert_eq!(lock_holder(), Some(b_id.clone()), "the lock stays with b");
    commit(&repo, "3");
    let third = until("b signs the next commit", Duration::from_secs(30), || {
        web(&root.join("b")).filter(|g| g.0 > 2)
    });
    assert_eq!(third.0, 3, "generations stay monotonic across the cut");
    until("a gets it through the change feed", Duration::from_secs(30), || {
        web(&root.join("a")).filter(|g| *g == third)
    });
    assert_eq!(lock_holder(), Some(b_id), "the lock stays with b");
}
