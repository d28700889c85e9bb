//! The runtime around the gRPC services: fleet config reload from files,
//! the HTTP health and metrics ports, and a restart keeping signed generations.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use convoy_hub::{Hub, HubConfig, HubOptions, StaticPipeline};
use convoy_proto::v1 as pb;

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_files_reload_live_and_a_bad_file_keeps_the_old_config() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let fleet_dir = dir.path().join("fleet");
    std::fs::create_dir(&fleet_dir).unwrap();
    std::fs::write(fleet_dir.join("fleet.yaml"), FLEET).unwrap();
    let cfg_file = dir.path().join("hub.yaml");
    std::fs::write(
        &cfg_file,
        "apiVersion: convoy.dev/v1\nkind: HubConfig\nspec:\n  dataDir: data\n  grpc: {listen: \"127.0.0.1:0\"}\n  http: {listen: \"127.0.0.1:0\"}\n  metrics: {listen: \"127.0.0.1:0\"}\n  fleet: {paths: [fleet], reloadInterval: 100ms}\n",
    )
    .unwrap();
    let cfg = HubConfig::from_file(&cfg_file).unwrap();
    let pipeline = StaticPipeline::new(dir.path().join("artifacts"));
    let hub =
        Hub::start(cfg, HubOptions { pipeline: Some(pipeline.clone()), fleet: None, ..Default::default() })
            .await
            .unwrap();
    pipeline.publish("web", "repo", "https://git.example/fleet.git", "main@sha1:aaaa", b"web").unwrap();
    let c1 = register(&hub, "c1", &[("env", "prod")]).await;
    eventually(|| async { hub.state().view().records.contains_key("web").then_some(()) }).await;
    let (mut s, _, snap) = open(&hub, &c1, 1).await.unwrap();
    assert_eq!(snap.bundles.len(), 1);

    // Retarget web to dev clusters: c1 loses it without a restart.
    std::fs::write(fleet_dir.join("fleet.yaml"), FLEET.replace("env: prod", "env: dev")).unwrap();
    s.until_removed("web").await;

    // A broken file: the previous config stays, and an error event names the file and line.
    std::fs::write(
        fleet_dir.join("broken.yaml"),
        "apiVersion: convoy.dev/v1\nkind: Bundle\nmetadata: {name: x\n",
    )
    .unwrap();
    let mut fleet = admin(&hub).await;
    let ev = eventually(|| {
        let mut fleet = fleet.clone();
        async move {
            let evs = fleet
                .list_events(pb::ListEventsRequest { cluster: "hub".into(), ..Default::default() })
                .await
                .unwrap()
                .into_inner()
                .events;
            evs.into_iter().map(|e| e.event.unwrap()).find(|e| e.reason == "FleetConfigInvalid")
        }
    })
    .await;
    assert!(ev.message.contains("broken.yaml") && ev.message.contains("line"), "{}", ev.message);
    let b = fleet
        .get_bundle(pb::GetBundleRequest { name: "web".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.generation, 1);
    assert!(b.clusters.is_empty(), "still the dev-only config");

    // Fixing it applies the next config.
    std::fs::remove_file(fleet_dir.join("broken.yaml")).unwrap();
    std::fs::write(fleet_dir.join("fleet.yaml"), FLEET).unwrap();
    s.until_generation("web", 1).await;

    // Health and metrics ports.
    let http = hub.http_addr.unwrap();
    let metrics = hub.metrics_addr.unwrap();
    let (h, r, m) = tokio::task::spawn_blocking(move || {
        (http_get(http, "/healthz"), http_get(http, "/readyz"), http_get(metrics, "/metrics"))
    })
    .await
    .unwrap();
    assert!(h.starts_with("HTTP/1.1 200") && r.starts_with("HTTP/1.1 200"), "{h}\n{r}");
    for name in [
        "convoy_hub_connected_agents 1",
        "convoy_hub_stream_messages_total",
        "convoy_hub_send_queue_depth",
        "convoy_hub_query_duration_seconds",
        "convoy_hub_artifact_bytes_served_total",
        "convoy_hub_config_reloads_total{result=\"error\"}",
        "convoy_hub_store_commit_duration_seconds",
    ] {
        assert!(m.contains(name), "{name} missing from:\n{m}");
    }
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn restart_keeps_generations_statement_bytes_and_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), FLEET).await;
    t.pipeline.publish("web", "repo", "https://git.example/fleet.git", "main@sha1:aaaa", b"one").unwrap();
    let c1 = register(&t.hub, "c1", &[("env", "prod")]).await;
    eventually(|| async { t.hub.state().view().records.contains_key("web").then_some(()) }).await;
    let (s, _, snap) = open(&t.hub, &c1, 1).await.unwrap();
    let before = snap.bundles.iter().find(|b| b.name == "web").unwrap().clone();
    drop(s);
    let path = t.dir.clone();
    t.hub.shutdown().await.unwrap();

    // Same data dir, and the pipeline reports the same build again: same
    // generation, byte-identical statement and signature, no re-signing.
    let t = start(&path, FLEET).await;
    t.pipeline.publish("web", "repo", "https://git.example/fleet.git", "main@sha1:aaaa", b"one").unwrap();
    let (_s, _, snap) = open(&t.hub, &c1, 1).await.unwrap();
    let after = snap.bundles.iter().find(|b| b.name == "web").expect("served right after restart").clone();
    assert_eq!(after.generation, 1);
    assert_eq!(after.statement, before.statement);
    assert_eq!(after.signature, before.signature);
    // A new digest after the restart continues the sequence.
    t.pipeline.publish("web", "repo", "https://git.example/fleet.git", "main@sha1:bbbb", b"two").unwrap();
    eventually(|| async { (t.hub.state().view().records["web"].generation == 2).then_some(()) }).await;
    t.hub.shutdown().await.unwrap();
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .current_dir(dir)
        .args(["-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false"])
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A hub started with a fixed fleet config (`HubOptions::fleet`) and the
/// default git pipeline builds its bundles, and `set_fleet` reaches the
/// pipeline: a bundle added later is fetched, built and signed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_fleet_with_the_git_pipeline_builds_and_follows_set_fleet() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    for (p, name) in [("a/cm.yaml", "a"), ("b/cm.yaml", "b")] {
        let f = repo.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n")).unwrap();
    }
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "fleet"]);
    let source = format!(
        "apiVersion: convoy.dev/v1\nkind: GitSource\nmetadata: {{name: repo}}\nspec: {{url: \"file://{}\", interval: 1h}}\n",
        repo.display()
    );
    let bundle = |n: &str| {
        format!(
            "---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata: {{name: {n}}}\nspec: {{source: repo, path: {n}, targets: [{{clusterSelector: {{}}}}]}}\n"
        )
    };
    let hub = Hub::start(
        HubConfig::local(dir.path().join("data")),
        HubOptions {
            pipeline: None,
            fleet: Some(fleet(&format!("{source}{}", bundle("a")))),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let generation = |name: &str| hub.state().view().records.get(name).map(|r| r.generation);
    let deadline = std::time::Instant::now() + WAIT;
    while generation("a").is_none() {
        assert!(std::time::Instant::now() < deadline, "bundle a was never built and signed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    hub.set_fleet(fleet(&format!("{source}{}{}", bundle("a"), bundle("b")))).await.unwrap();
    while generation("b").is_none() {
        assert!(std::time::Instant::now() < deadline, "bundle b, added with set_fleet, was never built");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(generation("a"), Some(1));
    // The pipeline's render counters are on /metrics: adding b rendered b only.
    let metrics = hub.metrics_addr.unwrap();
    let m = tokio::task::spawn_blocking(move || http_get(metrics, "/metrics")).await.unwrap();
    for line in [
        "convoy_hub_bundle_renders_total 2",
        "convoy_hub_bundle_renders_skipped_total 0",
        "convoy_hub_bundle_render_whole_tree_total 0",
    ] {
        assert!(m.lines().any(|l| l == line), "{line} missing from:\n{m}");
    }
    hub.shutdown().await.unwrap();
}
