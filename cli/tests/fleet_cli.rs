//! The real `convoy` binary against hubs: one in-process (fleet commands,
//! tables, JSON, exit codes) and one spawned with `convoy hub --config`.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use convoy_core::config::FleetConfig;
use convoy_hub::{Hub, HubConfig, HubOptions, StaticPipeline};

const FLEET: &str = r#"
apiVersion: convoy.dev/v1
kind: GitSource
metadata: {name: repo}
spec: {url: "file:///nonexistent/convoy-test/fleet.git"}
---
apiVersion: convoy.dev/v1
kind: Bundle
metadata: {name: web}
spec:
  source: repo
  path: web
  targets: [{clusterSelector: {matchLabels: {env: prod}}}]
"#;

fn convoy(args: &[&str], creds: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_convoy"))
        .args(args)
        .env("CONVOY_CREDENTIALS", creds)
        .env("CONVOY_LOG", "error")
        .output()
        .expect("run convoy")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_fleet_commands_print_tables_json_and_meaningful_exit_codes() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let pipeline = StaticPipeline::new(dir.path().join("artifacts"));
    let fleet = FleetConfig::parse([("fleet.yaml", FLEET)]).unwrap();
    let hub = Hub::start(
        HubConfig::local(dir.path().join("data")),
        HubOptions { pipeline: Some(pipeline.clone()), fleet: Some(fleet), ..Default::default() },
    )
    .await
    .unwrap();
    pipeline
        .publish("web", "repo", "https://git.example/fleet.git", "main@sha1:0123456789abcdef", b"bytes")
        .unwrap();
    let creds = hub.admin.file.clone();
    let c = creds.clone();
    let out = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let o = convoy(&["get", "bundles", "-o", "json"], &c);
            if stdout(&o).contains("\"generation\": 1") || Instant::now() > deadline {
                return o;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["name"], "web");
    assert_eq!(v[0]["generation"], 1);
    assert_eq!(v[0]["revision"], "main@sha1:0123456789abcdef");

    let c = creds.clone();
    tokio::task::spawn_blocking(move || {
        // Tables.
        let o = convoy(&["get", "bundles"], &c);
        assert!(o.status.success());
        let s = stdout(&o);
        assert!(s.starts_with("NAME"), "{s}");
        assert!(s.contains("web") && s.contains("main@0123456"), "{s}");
        let o = convoy(&["status", "web"], &c);
        assert!(o.status.success(), "{o:?}");
        assert!(stdout(&o).contains("Generation: 1"), "{}", stdout(&o));

        // A token, as JSON.
        let o = convoy(
            &["token", "create", "--cluster", "edge-1", "--label", "env=prod", "--ttl", "1h", "-o", "json"],
            &c,
        );
        assert!(o.status.success(), "{o:?}");
        let t: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(t["token"].as_str().unwrap().starts_with("cvt_"));

        // Actions and events.
        let o = convoy(&["suspend", "bundle", "web"], &c);
        assert!(o.status.success(), "{o:?}");
        assert_eq!(stdout(&o).trim(), "bundle web suspended");
        let o = convoy(&["events", "--cluster", "hub", "-o", "json"], &c);
        assert!(o.status.success());
        assert!(stdout(&o).lines().any(|l| l.contains("\"reason\":\"BundleSuspended\"")), "{}", stdout(&o));
        let o = convoy(&["get", "clusters", "-o", "yaml"], &c);
        assert!(o.status.success());

        // Exit codes: not found 5, usage 2, not authorized 4, unreachable 3.
        let o = convoy(&["status", "nope"], &c);
        assert_eq!(o.status.code(), Some(5), "{o:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("not found"));
        let o = convoy(&["get", "clusters", "-l", "a in b"], &c);
        assert_eq!(o.status.code(), Some(2), "{o:?}");
        let o = convoy(&["get", "widgets"], &c);
        assert_eq!(o.status.code(), Some(2));
        let o = Command::new(env!("CARGO_BIN_EXE_convoy"))
            .args(["get", "clusters", "--credentials"])
            .arg(&c)
            .args(["--admin-token", "wrong"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(4), "{o:?}");
        let o = Command::new(env!("CARGO_BIN_EXE_convoy"))
            .args(["get", "clusters", "--credentials"])
            .arg(&c)
            .args(["--hub", "https://127.0.0.1:1", "--timeout", "2s"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(3), "{o:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("unreachable"));
    })
    .await
    .unwrap();
    hub.shutdown().await.unwrap();
}

/// The hub process; its guard ends it and its process group on drop, panic or Ctrl-C.
struct Kill(convoy_testsupport::ProcessGuard);

#[test]
fn heavy_convoy_hub_serves_its_config_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hub.yaml");
    std::fs::write(
        &cfg,
        format!(
            "apiVersion: convoy.dev/v1\nkind: HubConfig\nspec:\n  dataDir: data\n  grpc: {{listen: \"127.0.0.1:0\"}}\n  http: {{listen: \"127.0.0.1:0\"}}\n  metrics: {{listen: \"127.0.0.1:0\"}}\n---\n{}",
            FLEET.trim_start()
        ),
    )
    .unwrap();
    let mut child = Kill(
        convoy_testsupport::ProcessGuard::spawn(
            "convoy hub",
            Command::new(env!("CARGO_BIN_EXE_convoy"))
                .args(["hub", "--config"])
                .arg(&cfg)
                .env("CONVOY_LOG", "warn"),
        )
        .unwrap(),
    );
    let creds = dir.path().join("data/admin-credentials.yaml");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !creds.exists() {
        assert!(Instant::now() < deadline, "the hub did not write its credentials");
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = convoy(&["get", "bundles", "-o", "json"], &creds);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains("\"name\": \"web\""));
    // A bad config file is refused with a usage error naming the file.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: convoy.dev/v1\nkind: HubConfig\nspec:\n  dataDir: d\n  bogus: 1\n")
        .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_convoy")).args(["hub", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.yaml"));
    // SIGTERM: the hub drains and exits 0.
    let pid = child.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the hub did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
}
