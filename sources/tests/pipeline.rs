//! The running pipeline: polling, builds, errors that keep the last good
//! artifact, config changes, suspension, webhooks, timeouts, GC.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use convoy_core::config::FleetConfig;
use convoy_core::pipeline::{BundleBuildState, SourceStatus};
use convoy_core::status::Phase;
use convoy_sources::{Sources, SourcesConfig};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

fn fleet(url: &str, extra_source: &str, bundles: &[(&str, &str)]) -> Arc<FleetConfig> {
    let mut text = format!(
        "apiVersion: convoy.dev/v1\nkind: GitSource\nmetadata:\n  name: fleet\nspec:\n  url: {url}\n  interval: 300ms\n  timeout: 20s\n{extra_source}"
    );
    for (name, path) in bundles {
        text.push_str(&format!(
            "---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata:\n  name: {name}\nspec:\n  source: fleet\n  path: {path}\n  targets:\n  - clusterSelector: {{}}\n"
        ));
    }
    Arc::new(FleetConfig::parse([("fleet.yaml", text.as_str())]).unwrap())
}

async fn wait_for<T: Clone + std::fmt::Debug>(
    rx: &mut watch::Receiver<T>,
    what: &str,
    mut ok: impl FnMut(&T) -> bool,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        {
            let v = rx.borrow_and_update().clone();
            if ok(&v) {
                return v;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, rx.changed()).await.is_err() {
            panic!("timed out waiting for {what}; last seen: {:#?}", rx.borrow());
        }
    }
}

type Statuses = Arc<std::collections::BTreeMap<String, SourceStatus>>;
type Builds = Arc<std::collections::BTreeMap<String, BundleBuildState>>;

fn digest(b: &Builds, bundle: &str) -> Option<String> {
    b.get(bundle).and_then(|s| s.artifact.as_ref()).map(|a| a.digest.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_polls_builds_keeps_last_good_and_follows_config() {
    let up = Upstream::new(
        "fleet",
        &[
            ("apps/a.yaml", &configmap("a")),
            ("kz/kustomization.yaml", "resources: [cm.yaml]\nnamePrefix: p-\n"),
            ("kz/cm.yaml", &configmap("k")),
            ("other/o.yaml", &configmap("o")),
        ],
    );
    let url = up.bare.to_str().unwrap().to_string();
    let (fleet_tx, fleet_rx) = watch::channel(fleet(&url, "", &[("plain", "apps"), ("kz", "kz")]));
    let data = tempfile::tempdir().unwrap();
    let mut cfg = SourcesConfig::new(data.path());
    cfg.artifact_retention = Some(Duration::ZERO);
    cfg.gc_interval = Duration::from_millis(200);
    // A fetch that meets a push half-done fails and is retried: quickly here
    // (the default backoff, 2 s doubling, could outlast a wait below).
    cfg.backoff_base = Duration::from_millis(100);
    cfg.backoff_max = Duration::from_secs(1);
    let shutdown = CancellationToken::new();
    let (sources, task) = Sources::start(cfg, fleet_rx, shutdown.clone()).unwrap();
    let mut st = sources.statuses();
    let mut builds = sources.builds();

    let c1 = up.head();
    let s = wait_for(&mut st, "first revision", |m: &Statuses| {
        m.get("fleet").is_some_and(|s| s.phase == Phase::Ready)
    })
    .await;
    assert_eq!(s["fleet"].revision.as_deref(), Some(format!("main@sha1:{c1}").as_str()));
    assert_eq!(s["fleet"].reference, "branch main");
    let b = wait_for(&mut builds, "both bundles", |m: &Builds| {
        digest(m, "plain").is_some() && digest(m, "kz").is_some()
    })
    .await;
    let plain1 = b["plain"].artifact.clone().unwrap();
    assert_eq!((plain1.files, plain1.revision.as_str()), (1, format!("main@sha1:{c1}").as_str()));
    assert!(sources.store().path(&plain1.digest).is_some());
    let kz_bytes = sources.store().read(&digest(&b, "kz").unwrap()).unwrap();
    let ms = convoy_artifact::load_manifests(&kz_bytes, &Default::default()).unwrap();
    assert_eq!(ms[0].name(), "p-k", "kustomize ran");

    // Unchanged polls do no build work.
    let fetched = s["fleet"].last_fetch_unix_ms;
    wait_for(&mut st, "two more polls", |m: &Statuses| m["fleet"].last_fetch_unix_ms > fetched + 300).await;
    assert_eq!(
        builds.borrow().get("plain").unwrap().artifact.as_ref().unwrap().built_unix_ms,
        plain1.built_unix_ms
    );

    // A new commit with a broken manifest: error recorded, last good artifact kept.
    let c2 =
        up.commit(&[("apps/bad.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [\n")], "bad");
    up.push(&["origin", "main"]);
    let b = wait_for(&mut builds, "build error", |m: &Builds| m["plain"].error.is_some()).await;
    let err = b["plain"].error.clone().unwrap();
    assert_eq!(err.reason, "InvalidManifest");
    assert!(err.message.starts_with("apps/bad.yaml: document 0"), "{}", err.message);
    assert!(err.message.contains("line"), "{}", err.message);
    assert_eq!(err.revision.as_deref(), Some(format!("main@sha1:{c2}").as_str()));
    assert_eq!(b["plain"].artifact.as_ref().unwrap().digest, plain1.digest, "last good kept");
    assert_eq!(b["plain"].phase(), Phase::Stalled);
    // kz did not change content: a new build at c2 with the same digest.
    // Fixing it clears the error.
    let c3 = up.commit(&[("apps/bad.yaml", &configmap("fixed"))], "fix");
    up.push(&["origin", "main"]);
    let b = wait_for(&mut builds, "fixed", |m: &Builds| {
        m["plain"].error.is_none() && m["plain"].artifact.as_ref().is_some_and(|a| a.revision.ends_with(&c3))
    })
    .await;
    let plain3 = b["plain"].artifact.clone().unwrap();
    assert_eq!(plain3.files, 2);

    // The old artifact is garbage-collected once unreferenced.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sources.store().path(&plain1.digest).is_some() {
        assert!(Instant::now() < deadline, "old artifact not collected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sources.store().path(&plain3.digest).is_some());

    // A config change (bundle path) rebuilds without a new commit.
    fleet_tx.send(fleet(&url, "", &[("plain", "other"), ("kz", "kz")])).unwrap();
    let b = wait_for(&mut builds, "rebuilt for the new path", |m: &Builds| {
        m["plain"].artifact.as_ref().is_some_and(|a| a.digest != plain3.digest)
    })
    .await;
    assert!(b["plain"].artifact.as_ref().unwrap().revision.ends_with(&c3));

    // Removing a bundle forgets it.
    fleet_tx.send(fleet(&url, "", &[("plain", "other")])).unwrap();
    wait_for(&mut builds, "kz removed", |m: &Builds| !m.contains_key("kz")).await;

    // A deleted branch stalls the source; bundles keep their artifacts.
    up.push(&["origin", "--delete", "main"]);
    let s = wait_for(&mut st, "stalled", |m: &Statuses| m["fleet"].phase == Phase::Stalled).await;
    assert!(s["fleet"].failures >= 1);
    let ready = s["fleet"].conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.reason, "RefNotFound");
    assert!(builds.borrow()["plain"].artifact.is_some());
    up.push(&["origin", "main"]);
    wait_for(&mut st, "recovered", |m: &Statuses| {
        m["fleet"].phase == Phase::Ready && m["fleet"].failures == 0
    })
    .await;

    // Suspension.
    sources.set_suspended("fleet", true).unwrap();
    wait_for(&mut st, "suspended", |m: &Statuses| m["fleet"].phase == Phase::Suspended).await;
    assert!(matches!(sources.reconcile("fleet"), Err(convoy_sources::Error::Suspended(_))));
    assert!(matches!(sources.reconcile("nope"), Err(convoy_sources::Error::UnknownSource(_))));
    sources.set_suspended("fleet", false).unwrap();
    wait_for(&mut st, "resumed", |m: &Statuses| m["fleet"].phase == Phase::Ready).await;

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task).await.expect("stops").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_webhooks_trigger_fetches_and_bad_signatures_do_nothing() {
    let up = Upstream::new("fleet", &[("apps/a.yaml", &configmap("a"))]);
    let url = up.bare.to_str().unwrap().to_string();
    let secrets = tempfile::tempdir().unwrap();
    let secret_file = secrets.path().join("hook");
    std::fs::write(&secret_file, "hook-secret\n").unwrap();
    // A long interval: only webhooks (or reconcile) fetch after the first poll.
    let extra = format!("  webhook:\n    secretFile: {}\n", secret_file.display());
    let f = fleet(&url, &extra, &[("plain", "apps")]);
    let mut f2 = (*f).clone();
    f2.sources.get_mut("fleet").unwrap().spec.interval =
        convoy_core::duration::HumanDuration::from_secs(3600);
    let (_fleet_tx, fleet_rx) = watch::channel(Arc::new(f2));
    let data = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let (sources, task) =
        Sources::start(SourcesConfig::new(data.path()), fleet_rx, shutdown.clone()).unwrap();
    let mut st = sources.statuses();
    wait_for(&mut st, "ready", |m: &Statuses| m.get("fleet").is_some_and(|s| s.phase == Phase::Ready)).await;
    let router = sources.webhook_router();
    let body = br#"{"ref":"refs/heads/main"}"#.to_vec();
    let post = |headers: Vec<(&'static str, String)>, path: &str| {
        let mut r = Request::post(path);
        for (k, v) in headers {
            r = r.header(k, v);
        }
        r.body(Body::from(body.clone())).unwrap()
    };

    let c2 = up.commit(&[("apps/b.yaml", &configmap("b"))], "two");
    up.push(&["origin", "main"]);
    // Bad signature, wrong token, no header, unknown source: nothing happens.
    let bad = convoy_sources::webhook::sign(b"wrong", &body);
    for (req, want) in [
        (post(vec![("x-hub-signature-256", bad)], "/hooks/fleet"), StatusCode::UNAUTHORIZED),
        (post(vec![("x-gitlab-token", "nope".into())], "/hooks/fleet"), StatusCode::UNAUTHORIZED),
        (post(vec![], "/hooks/fleet"), StatusCode::UNAUTHORIZED),
        // Same answer as a bad signature: the caller cannot tell which sources exist.
        (post(vec![("x-gitlab-token", "hook-secret".into())], "/hooks/other"), StatusCode::UNAUTHORIZED),
    ] {
        assert_eq!(router.clone().oneshot(req).await.unwrap().status(), want);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!st.borrow()["fleet"].revision.as_deref().unwrap().ends_with(&c2), "no fetch after bad requests");

    // A good GitHub signature fetches at once.
    let good = convoy_sources::webhook::sign(b"hook-secret", &body);
    let resp =
        router.clone().oneshot(post(vec![("x-hub-signature-256", good)], "/hooks/fleet")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    wait_for(&mut st, "webhook fetch", |m: &Statuses| {
        m["fleet"].revision.as_deref().is_some_and(|r| r.ends_with(&c2))
    })
    .await;

    // And a GitLab token.
    let c3 = up.commit(&[("apps/c.yaml", &configmap("c"))], "three");
    up.push(&["origin", "main"]);
    let resp =
        router.oneshot(post(vec![("x-gitlab-token", "hook-secret".into())], "/hooks/fleet")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    wait_for(&mut st, "gitlab fetch", |m: &Statuses| {
        m["fleet"].revision.as_deref().is_some_and(|r| r.ends_with(&c3))
    })
    .await;

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_silent_server_times_out_and_secrets_stay_out_of_status() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in listener.incoming().take(8) {
            conns.push(c);
        }
    });
    let secrets = tempfile::tempdir().unwrap();
    let pw = secrets.path().join("pw");
    std::fs::write(&pw, "Very-Secret-Password\n").unwrap();
    let url = format!("https://user:Url-Password-123@127.0.0.1:{port}/repo.git?token=Query-Secret");
    let text = format!(
        "apiVersion: convoy.dev/v1\nkind: GitSource\nmetadata:\n  name: slow\nspec:\n  url: \"{url}\"\n  timeout: 1s\n  interval: 1h\n  auth:\n    basic:\n      username: user\n      passwordFile: {}\n",
        pw.display()
    );
    let f = Arc::new(FleetConfig::parse([("f.yaml", text.as_str())]).unwrap());
    let (_tx, rx) = watch::channel(f);
    let data = tempfile::tempdir().unwrap();
    let mut cfg = SourcesConfig::new(data.path());
    cfg.backoff_base = Duration::from_millis(100);
    let shutdown = CancellationToken::new();
    let (sources, task) = Sources::start(cfg, rx, shutdown.clone()).unwrap();
    let mut st = sources.statuses();
    let s = wait_for(&mut st, "timeout", |m: &Statuses| m.get("slow").is_some_and(|s| s.failures >= 2)).await;
    let s = &s["slow"];
    assert_eq!(s.phase, Phase::Stalled);
    let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.reason, "Timeout", "{ready:?}");
    let all = format!("{s:?}");
    for secret in ["Url-Password-123", "Query-Secret", "Very-Secret-Password"] {
        assert!(!all.contains(secret), "{secret} leaked: {all}");
    }
    assert_eq!(s.url, format!("https://127.0.0.1:{port}/repo.git"));
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task).await.unwrap().unwrap();
    drop(hold);
}

/// A hub started with a fixed fleet config drops the config sender at once:
/// the pipeline must go on polling and publishing builds with the last config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_keeps_building_after_the_config_sender_is_gone() {
    let up = Upstream::new("fleet", &[("apps/a.yaml", &configmap("a"))]);
    let url = up.bare.to_str().unwrap().to_string();
    let (fleet_tx, fleet_rx) = watch::channel(fleet(&url, "", &[("plain", "apps")]));
    drop(fleet_tx);
    let data = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let (sources, task) =
        Sources::start(SourcesConfig::new(data.path()), fleet_rx, shutdown.clone()).unwrap();
    let mut builds = sources.builds();
    let c1 = up.head();
    wait_for(&mut builds, "the first build", |m: &Builds| {
        m.get("plain").and_then(|s| s.artifact.as_ref()).is_some_and(|a| a.revision.ends_with(&c1))
    })
    .await;
    // Later commits are still picked up (polls and build reports go on).
    let c2 = up.commit(&[("apps/b.yaml", &configmap("b"))], "more");
    up.push(&["origin", "main"]);
    let b = wait_for(&mut builds, "the second build", |m: &Builds| {
        m.get("plain").and_then(|s| s.artifact.as_ref()).is_some_and(|a| a.revision.ends_with(&c2))
    })
    .await;
    assert_eq!(b["plain"].artifact.as_ref().unwrap().files, 2);
    // Reconcile and shutdown still work.
    sources.reconcile("fleet").unwrap();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task).await.expect("stops").unwrap();
}
