//! Alerts out, through the real hub: events from fake agents over the real
//! gRPC Sync stream and from the hub itself (a failed build from the
//! StaticPipeline) are routed by Alert rules to local HTTP receivers, which
//! check the payloads and verify the HMAC independently.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use common::*;
use convoy_hub::{Hub, HubConfig, HubOptions, StaticPipeline};
use convoy_proto::v1 as pb;
use convoy_proto::v1::agent_message::Msg as In;
use hmac::{Hmac, KeyInit, Mac};
use parking_lot::Mutex;
use serde_json::Value;
use sha2::Sha256;

// ---------------------------------------------------------------------------
// Receivers
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Mode {
    /// Answer 200.
    Ok,
    /// Answer 503 to the first n requests, then 200.
    FailFirst(usize),
    /// Always answer this status.
    Status(u16),
    /// Accept the request and never answer.
    Hang,
}

#[derive(Debug, Clone)]
struct Hit {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

struct Inner {
    mode: Mode,
    attempts: AtomicUsize,
    delivered: Mutex<Vec<Hit>>,
}

/// A local HTTP endpoint recording what it accepted.
struct Receiver {
    addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(inner): State<Arc<Inner>>, uri: Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = inner.attempts.fetch_add(1, Ordering::SeqCst);
    match inner.mode {
        Mode::Hang => std::future::pending().await,
        Mode::Status(s) => return StatusCode::from_u16(s).unwrap(),
        Mode::FailFirst(k) if n < k => return StatusCode::SERVICE_UNAVAILABLE,
        _ => {}
    }
    inner.delivered.lock().push(Hit { path: uri.path().to_string(), headers, body });
    StatusCode::OK
}

impl Receiver {
    async fn start(mode: Mode) -> Self {
        let inner =
            Arc::new(Inner { mode, attempts: AtomicUsize::new(0), delivered: Mutex::new(Vec::new()) });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(handle).with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, inner, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self) -> Vec<Hit> {
        self.inner.delivered.lock().clone()
    }

    fn attempts(&self) -> usize {
        self.inner.attempts.load(Ordering::SeqCst)
    }

    /// Wait until at least `n` deliveries were accepted.
    async fn wait(&self, n: usize) -> Vec<Hit> {
        eventually(|| async {
            let h = self.hits();
            (h.len() >= n).then_some(h)
        })
        .await
    }
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn hmac_hex(key: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

// ---------------------------------------------------------------------------
// Hub and agents
// ---------------------------------------------------------------------------

/// `repo` and `web`, `db` on cluster c2, and `all` everywhere.
const SOURCES: &str = concat!(
    repo_and_web!(),
    r#"---
apiVersion: convoy.dev/v1
kind: Bundle
metadata: {name: db}
spec:
  source: repo
  path: db
  targets: [{clusterName: c2}]
---
apiVersion: convoy.dev/v1
kind: Bundle
metadata: {name: all}
spec:
  source: repo
  path: all
  targets: [{clusterSelector: {}}]
"#
);

fn provider(name: &str, type_: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: convoy.dev/v1\nkind: Provider\nmetadata: {{name: {name}}}\nspec:\n  type: {type_}\n{extra}"
    )
}

fn alert(name: &str, provider: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: convoy.dev/v1\nkind: Alert\nmetadata: {{name: {name}}}\nspec:\n  providerRef: {provider}\n{extra}"
    )
}

fn config(dir: &std::path::Path) -> HubConfig {
    let mut cfg = HubConfig::local(dir.join("data"));
    cfg.alerts.hub_name = Some("test-hub".into());
    cfg.alerts.backoff_base = convoy_core::duration::HumanDuration(Duration::from_millis(20));
    cfg.alerts.backoff_max = convoy_core::duration::HumanDuration(Duration::from_millis(200));
    cfg
}

async fn start_hub(dir: &std::path::Path, fleet_text: &str, cfg: HubConfig) -> TestHub {
    start_hub_with_clock(dir, fleet_text, cfg, None).await
}

/// [`start_hub`] with the hub reading `clock` (suppression windows included).
async fn start_hub_with_clock(
    dir: &std::path::Path,
    fleet_text: &str,
    cfg: HubConfig,
    clock: Option<convoy_core::clock::SharedClock>,
) -> TestHub {
    init();
    let pipeline = StaticPipeline::new(dir.join("artifacts"));
    let options = HubOptions { pipeline: Some(pipeline.clone()), fleet: Some(fleet(fleet_text)), clock };
    let hub = Hub::start(cfg, options).await.unwrap();
    TestHub { hub, pipeline, dir: dir.to_path_buf() }
}

/// A registered fake agent with an open Sync stream.
struct Agent {
    stream: Stream,
    seq: u64,
}

async fn agent(hub: &convoy_hub::HubHandle, name: &str, labels: &[(&str, &str)]) -> Agent {
    let id = register(hub, name, labels).await;
    let (stream, _, _) = open(hub, &id, 1).await.unwrap();
    Agent { stream, seq: 0 }
}

impl Agent {
    /// Send an event and wait until the hub acknowledged (stored) it.
    async fn event(&mut self, severity: pb::Severity, bundle: &str, reason: &str, message: &str) {
        self.send(severity, bundle, reason, message).await;
        self.stream.until_ack(self.seq).await;
    }

    /// Send an event without waiting for the ack.
    async fn send(&mut self, severity: pb::Severity, bundle: &str, reason: &str, message: &str) {
        self.seq += 1;
        let event = pb::Event {
            severity: severity as i32,
            reason: reason.into(),
            message: message.into(),
            bundle: bundle.into(),
            object: if bundle.is_empty() {
                String::new()
            } else {
                format!("apps/v1/Deployment/default/{bundle}")
            },
            revision: "main@sha1:aaaa".into(),
            time_unix_ms: 1_795_000_000_000 + self.seq as i64,
            details: [("attempt".to_string(), "1".to_string())].into(),
        };
        self.stream
            .tx
            .send(pb::AgentMessage {
                msg: Some(In::Event(pb::EventReport { seq: self.seq, event: Some(event) })),
            })
            .await
            .unwrap();
    }
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

async fn wait_metric(hub: &convoy_hub::HubHandle, series: &str, want: f64) {
    eventually(|| async { (metric(&hub.metrics_text(), series) == Some(want)).then_some(()) }).await
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// The generic JSON and HMAC providers, end to end: an agent's error event
/// and a hub-side build failure arrive with the full cluster identity, and
/// the signature verifies over the exact body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_and_hmac_deliver_agent_events_and_build_failures_with_identity() {
    let dir = tempfile::tempdir().unwrap();
    let plain = Receiver::start(Mode::Ok).await;
    let signed = Receiver::start(Mode::Ok).await;
    let key_file = dir.path().join("hmac-key");
    std::fs::write(&key_file, "k3y-s3cret\n").unwrap();
    let fleet_text = format!(
        "{SOURCES}{}{}{}{}",
        provider("plain", "webhook", &format!("  address: \"{}\"\n", plain.url("/hook"))),
        provider(
            "signed",
            "generic-hmac",
            &format!("  address: \"{}\"\n  secretFile: {}\n", signed.url("/signed"), key_file.display())
        ),
        alert("errors", "plain", "  severity: error\n"),
        alert("web", "signed", "  severity: warning\n  bundles: [web]\n"),
    );
    let t = start_hub(dir.path(), &fleet_text, config(dir.path())).await;
    // `hub` is the origin of hub events: no cluster may pass as it.
    let tok = t.hub.create_token(None, Default::default(), Duration::from_secs(60), false).await.unwrap();
    let e = register_with(&t.hub, &tok.token, "hub", &[]).await.err().expect("refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let mut c1 = agent(&t.hub, "c1", &[("env", "prod"), ("region", "eu")]).await;

    c1.event(pb::Severity::Error, "web", "ApplyFailed", "Deployment web: field is immutable").await;
    let hit = &plain.wait(1).await[0];
    assert_eq!(hit.path, "/hook");
    assert_eq!(hit.headers["content-type"], "application/json");
    assert!(hit.headers.get("x-signature").is_none());
    let v = hit.json();
    assert_eq!(v["apiVersion"], "convoy.dev/v1");
    assert_eq!(v["kind"], "Notification");
    assert_eq!(v["hub"], "test-hub");
    assert_eq!(v["alert"], "errors");
    assert!(v["eventId"].as_u64().unwrap() > 0);
    assert_eq!(v["severity"], "error");
    assert_eq!(v["reason"], "ApplyFailed");
    assert_eq!(v["message"], "Deployment web: field is immutable");
    assert_eq!(v["origin"], "cluster");
    assert_eq!(v["cluster"]["name"], "c1");
    assert_eq!(v["cluster"]["identity"], "spiffe://convoy/cluster/c1");
    assert_eq!(v["cluster"]["labels"], serde_json::json!({"env": "prod", "region": "eu"}));
    assert_eq!(v["bundle"], "web");
    assert_eq!(v["revision"], "main@sha1:aaaa");
    assert_eq!(v["object"], "apps/v1/Deployment/default/web");
    assert_eq!(v["details"]["attempt"], "1");
    assert_eq!(v["timeUnixMs"], 1_795_000_000_001i64);
    assert_eq!(v["time"], "2026-11-18T11:06:40.001Z");
    assert_eq!(v["suppressed"], 0);

    // The same event through generic-hmac: same document, signed.
    let hit = &signed.wait(1).await[0];
    let sig = hit.headers["x-signature"].to_str().unwrap();
    assert_eq!(sig, format!("sha256={}", hmac_hex(b"k3y-s3cret", &hit.body)), "HMAC over the exact body");
    assert_ne!(sig, format!("sha256={}", hmac_hex(b"other", &hit.body)));
    assert_eq!(hit.json()["alert"], "web");
    assert_eq!(hit.json()["cluster"]["identity"], "spiffe://convoy/cluster/c1");

    // A broken commit: the hub records BuildFailed and both providers hear it.
    t.pipeline.fail("web", "InvalidManifest", "web/deploy.yaml line 3: mapping values are not allowed");
    let hits = plain.wait(2).await;
    let v = hits[1].json();
    assert_eq!(v["reason"], "BuildFailed");
    assert_eq!(v["origin"], "hub");
    assert_eq!(v["cluster"], Value::Null);
    assert_eq!(v["bundle"], "web");
    assert!(v["message"].as_str().unwrap().contains("web/deploy.yaml line 3"), "{v}");
    let hit = &signed.wait(2).await[1];
    assert_eq!(hit.json()["reason"], "BuildFailed");
    assert_eq!(
        hit.headers["x-signature"].to_str().unwrap(),
        format!("sha256={}", hmac_hex(b"k3y-s3cret", &hit.body))
    );

    wait_metric(&t.hub, "convoy_hub_alerts_sent_total{provider=\"plain\",result=\"ok\"}", 2.0).await;
    let m = t.hub.metrics_text();
    assert!(m.contains("convoy_hub_alerts_queue_depth{provider=\"signed\"} 0"), "{m}");
    assert!(!m.contains("k3y-s3cret"));
    t.hub.shutdown().await.unwrap();
}

/// Severity, bundle, reason and cluster-label filters. Every absence is
/// asserted after a later positive control reached the same receiver (one
/// provider delivers in event order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn severity_bundle_reason_and_cluster_label_filters() {
    let dir = tempfile::tempdir().unwrap();
    let r = Receiver::start(Mode::Ok).await;
    let prod_builds = Receiver::start(Mode::Ok).await;
    let dev_builds = Receiver::start(Mode::Ok).await;
    let fleet_text = format!(
        "{SOURCES}{}{}{}{}{}{}",
        provider("r", "webhook", &format!("  address: \"{}\"\n", r.url("/"))),
        provider("pb", "webhook", &format!("  address: \"{}\"\n", prod_builds.url("/"))),
        provider("db", "webhook", &format!("  address: \"{}\"\n", dev_builds.url("/"))),
        alert(
            "prod-web",
            "r",
            "  severity: warning\n  bundles: [web]\n  reasons: [ApplyFailed, HealthFailed]\n  clusterSelector: {matchLabels: {env: prod}}\n"
        ),
        alert(
            "prod-builds",
            "pb",
            "  reasons: [BuildFailed]\n  clusterSelector: {matchExpressions: [{key: env, operator: In, values: [prod]}]}\n"
        ),
        alert("dev-builds", "db", "  reasons: [BuildFailed]\n  clusterSelector: {matchLabels: {env: dev}}\n"),
    );
    let t = start_hub(dir.path(), &fleet_text, config(dir.path())).await;
    let mut c1 = agent(&t.hub, "c1", &[("env", "prod")]).await;
    let mut c2 = agent(&t.hub, "c2", &[("env", "dev")]).await;

    c2.event(pb::Severity::Error, "web", "ApplyFailed", "wrong cluster labels").await;
    c1.event(pb::Severity::Info, "web", "ApplyFailed", "below the severity").await;
    c1.event(pb::Severity::Error, "db", "ApplyFailed", "another bundle").await;
    c1.event(pb::Severity::Error, "", "ApplyFailed", "no bundle").await;
    c1.event(pb::Severity::Error, "web", "Pruned", "another reason").await;
    c1.event(pb::Severity::Warning, "web", "HealthFailed", "control").await;
    let hits = r.wait(1).await;
    assert_eq!(hits.len(), 1, "only the control: {:?}", hits.iter().map(Hit::json).collect::<Vec<_>>());
    assert_eq!(hits[0].json()["message"], "control");
    assert_eq!(hits[0].json()["cluster"]["labels"]["env"], "prod");

    // Hub events pass a cluster selector through the clusters their bundle
    // targets: web goes to prod (c1), db to c2 (dev), all to both.
    t.pipeline.fail("web", "InvalidManifest", "web broke");
    assert_eq!(prod_builds.wait(1).await[0].json()["bundle"], "web");
    t.pipeline.fail("db", "InvalidManifest", "db broke");
    assert_eq!(dev_builds.wait(1).await[0].json()["bundle"], "db");
    t.pipeline.fail("all", "InvalidManifest", "all broke");
    let p = prod_builds.wait(2).await;
    let d = dev_builds.wait(2).await;
    let bundles =
        |h: &[Hit]| h.iter().map(|h| h.json()["bundle"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(bundles(&p), ["web", "all"], "db targets no prod cluster");
    assert_eq!(bundles(&d), ["db", "all"], "web targets no dev cluster");

    // A cluster's labels at event time count: c2 becomes prod.
    t.hub.state().set_labels("c2".into(), [("env".to_string(), "prod".to_string())].into()).await.unwrap();
    c2.event(pb::Severity::Error, "web", "ApplyFailed", "c2 is prod now").await;
    let hits = r.wait(2).await;
    assert_eq!(hits[1].json()["cluster"]["name"], "c2");
    assert_eq!(hits[1].json()["cluster"]["labels"]["env"], "prod");
    t.hub.shutdown().await.unwrap();
}

/// Identical events within the window are suppressed and counted (up to its
/// last millisecond, on the hub's injected clock); the next one after the
/// window is delivered with the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_suppressed_within_the_window_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let r = Receiver::start(Mode::Ok).await;
    let window = Duration::from_secs(4);
    let fleet_text = format!(
        "{SOURCES}{}{}",
        provider("r", "webhook", &format!("  address: \"{}\"\n", r.url("/"))),
        alert("dedup", "r", "  severity: warning\n  suppressWindow: 4s\n"),
    );
    // The hub's clock moves only when the test advances it: the window is
    // open for the first part whatever the machine's speed, closed after.
    let clock = convoy_core::clock::FakeClock::at_system_now();
    let t = start_hub_with_clock(dir.path(), &fleet_text, config(dir.path()), Some(clock.shared())).await;
    let mut c1 = agent(&t.hub, "c1", &[("env", "prod")]).await;
    let mut c2 = agent(&t.hub, "c2", &[("env", "prod")]).await;

    for _ in 0..3 {
        c1.send(pb::Severity::Error, "web", "ApplyFailed", "same").await;
    }
    c1.stream.until_ack(3).await;
    // Not duplicates: another cluster, another message.
    c2.event(pb::Severity::Error, "web", "ApplyFailed", "same").await;
    c1.event(pb::Severity::Error, "web", "ApplyFailed", "different").await;
    let hits = r.wait(3).await;
    let seen: Vec<(String, String, u64)> = hits
        .iter()
        .map(|h| {
            let v = h.json();
            (
                v["cluster"]["name"].as_str().unwrap().into(),
                v["message"].as_str().unwrap().into(),
                v["suppressed"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("c1".into(), "same".into(), 0),
            ("c2".into(), "same".into(), 0),
            ("c1".into(), "different".into(), 0)
        ]
    );
    wait_metric(&t.hub, "convoy_hub_alerts_suppressed_total{alert=\"dedup\"}", 2.0).await;

    // After the window: delivered again, with the count of what was held back.
    clock.advance(window - Duration::from_millis(1));
    c1.event(pb::Severity::Error, "web", "ApplyFailed", "same").await;
    wait_metric(&t.hub, "convoy_hub_alerts_suppressed_total{alert=\"dedup\"}", 3.0).await;
    clock.advance(Duration::from_millis(1));
    c1.event(pb::Severity::Error, "web", "ApplyFailed", "same").await;
    let hits = r.wait(4).await;
    assert_eq!(hits.len(), 4);
    let v = hits[3].json();
    assert_eq!((v["message"].as_str().unwrap(), v["suppressed"].as_u64().unwrap()), ("same", 3));
    t.hub.shutdown().await.unwrap();
}

/// A receiver failing the first attempts gets the notification once it
/// recovers (exponential backoff); a 4xx refusal is not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_is_retried_until_the_endpoint_recovers_and_refusals_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let flaky = Receiver::start(Mode::FailFirst(3)).await;
    let refusing = Receiver::start(Mode::Status(400)).await;
    let fleet_text = format!(
        "{SOURCES}{}{}{}{}",
        provider("flaky", "webhook", &format!("  address: \"{}\"\n", flaky.url("/"))),
        provider("refusing", "webhook", &format!("  address: \"{}\"\n", refusing.url("/"))),
        alert("a", "flaky", "  severity: error\n"),
        alert("b", "refusing", "  severity: error\n"),
    );
    let t = start_hub(dir.path(), &fleet_text, config(dir.path())).await;
    let mut c1 = agent(&t.hub, "c1", &[("env", "prod")]).await;
    c1.event(pb::Severity::Error, "web", "ApplyFailed", "retry me").await;

    let hits = flaky.wait(1).await;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].json()["message"], "retry me");
    assert_eq!(flaky.attempts(), 4, "three 503s, then delivered");
    wait_metric(&t.hub, "convoy_hub_alerts_sent_total{provider=\"flaky\",result=\"ok\"}", 1.0).await;

    wait_metric(&t.hub, "convoy_hub_alerts_sent_total{provider=\"refusing\",result=\"error\"}", 1.0).await;
    assert_eq!(refusing.attempts(), 1, "a 400 is final");
    t.hub.shutdown().await.unwrap();
}

/// A dead endpoint (one that never answers, and a closed port) neither
/// delays another provider nor the hub's event storage, fills only its own
/// bounded queue (dropping the oldest), and does not hold up the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_dead_endpoints_block_neither_other_providers_nor_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let hang = Receiver::start(Mode::Hang).await;
    let good = Receiver::start(Mode::Ok).await;
    let closed = format!("http://127.0.0.1:{}/", closed_port());
    let fleet_text = format!(
        "{SOURCES}{}{}{}{}{}{}",
        provider("hang", "webhook", &format!("  address: \"{}\"\n  timeout: 30s\n", hang.url("/"))),
        provider("closed", "webhook", &format!("  address: \"{closed}\"\n")),
        provider("good", "webhook", &format!("  address: \"{}\"\n", good.url("/"))),
        alert("to-hang", "hang", "  reasons: [ApplyFailed]\n"),
        alert("to-closed", "closed", "  reasons: [ApplyFailed]\n"),
        alert("to-good", "good", "  reasons: [ApplyFailed]\n"),
    );
    let mut cfg = config(dir.path());
    cfg.alerts.queue_size = 4;
    cfg.alerts.backoff_base = convoy_core::duration::HumanDuration(Duration::from_secs(1));
    cfg.alerts.backoff_max = convoy_core::duration::HumanDuration(Duration::from_secs(5));
    cfg.alerts.shutdown_flush = convoy_core::duration::HumanDuration(Duration::from_secs(1));
    let t = start_hub(dir.path(), &fleet_text, cfg).await;
    let mut c1 = agent(&t.hub, "c1", &[("env", "prod")]).await;

    const N: u64 = 20;
    let started = Instant::now();
    // One at a time (each acked, so stored, before the next): a burst
    // larger than the queue would overflow even a healthy provider's queue.
    for i in 0..N {
        c1.event(pb::Severity::Error, "web", "ApplyFailed", &format!("event {i}")).await;
    }
    let stored = started.elapsed();
    let hits = good.wait(N as usize).await;
    let delivered = started.elapsed();
    let messages: Vec<String> =
        hits.iter().map(|h| h.json()["message"].as_str().unwrap().to_string()).collect();
    assert_eq!(messages, (0..N).map(|i| format!("event {i}")).collect::<Vec<_>>(), "all, in order");
    // The hung endpoint's attempt alone lasts 30 s: anything it blocked would
    // take longer than that.
    assert!(stored < Duration::from_secs(10), "events stored in {stored:?}");
    assert!(delivered < Duration::from_secs(15), "good provider served in {delivered:?}");
    let mut fleet_client = admin(&t.hub).await;
    let events = fleet_client
        .list_events(pb::ListEventsRequest { cluster: "c1".into(), limit: 1000, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(
        events.iter().filter(|e| e.event.as_ref().unwrap().reason == "ApplyFailed").count(),
        N as usize
    );

    // The hung provider holds one in flight and a full queue; the rest were dropped.
    eventually(|| async { (hang.attempts() == 1).then_some(()) }).await;
    wait_metric(&t.hub, "convoy_hub_alerts_dropped_total{provider=\"hang\"}", (N - 5) as f64).await;
    wait_metric(&t.hub, "convoy_hub_alerts_queue_depth{provider=\"hang\"}", 4.0).await;
    let m = t.hub.metrics_text();
    assert!(metric(&m, "convoy_hub_alerts_dropped_total{provider=\"closed\"}").unwrap_or(0.0) > 0.0, "{m}");
    assert_eq!(metric(&m, "convoy_hub_alerts_dropped_total{provider=\"good\"}"), None, "{m}");
    assert_eq!(hang.attempts(), 1);

    let t0 = Instant::now();
    t.hub.shutdown().await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(8), "drain took {:?}", t0.elapsed());
}

/// Provider and Alert documents are replaced live when the fleet files change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_and_providers_reload_live_from_fleet_files() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let one = Receiver::start(Mode::Ok).await;
    let two = Receiver::start(Mode::Ok).await;
    let fleet_dir = dir.path().join("fleet");
    std::fs::create_dir(&fleet_dir).unwrap();
    let p_one = provider("one", "webhook", &format!("  address: \"{}\"\n", one.url("/")));
    let p_two = provider("two", "webhook", &format!("  address: \"{}\"\n", two.url("/")));
    std::fs::write(
        fleet_dir.join("fleet.yaml"),
        format!("{SOURCES}{p_one}{}", alert("a", "one", "  reasons: [First]\n")),
    )
    .unwrap();
    let cfg_file = dir.path().join("hub.yaml");
    std::fs::write(
        &cfg_file,
        "apiVersion: convoy.dev/v1\nkind: HubConfig\nspec:\n  dataDir: data\n  grpc: {listen: \"127.0.0.1:0\"}\n  http: {listen: \"\"}\n  metrics: {listen: \"\"}\n  fleet: {paths: [fleet], reloadInterval: 100ms}\n  alerts: {hubName: reload-hub, backoffBase: 20ms}\n",
    )
    .unwrap();
    let cfg = HubConfig::from_file(&cfg_file).unwrap();
    let pipeline = StaticPipeline::new(dir.path().join("artifacts"));
    let hub = Hub::start(cfg, HubOptions { pipeline: Some(pipeline), fleet: None, ..Default::default() })
        .await
        .unwrap();
    let mut c1 = agent(&hub, "c1", &[("env", "prod")]).await;
    c1.event(pb::Severity::Info, "web", "First", "before").await;
    assert_eq!(one.wait(1).await[0].json()["hub"], "reload-hub");

    // Alert a now goes to a new provider for another reason; b keeps `one`.
    std::fs::write(
        fleet_dir.join("fleet.yaml"),
        format!(
            "{SOURCES}{p_one}{p_two}{}{}",
            alert("a", "two", "  reasons: [Second]\n"),
            alert("b", "one", "  reasons: [Third]\n")
        ),
    )
    .unwrap();
    eventually(|| async { hub.state().view().fleet.alerts.contains_key("b").then_some(()) }).await;
    c1.event(pb::Severity::Info, "web", "First", "after").await;
    c1.event(pb::Severity::Info, "web", "Second", "to two").await;
    c1.event(pb::Severity::Info, "web", "Third", "control for one").await;
    let h1 = one.wait(2).await;
    let h2 = two.wait(1).await;
    let msgs =
        |h: &[Hit]| h.iter().map(|h| h.json()["message"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(msgs(&h1), ["before", "control for one"], "the old rule is gone");
    assert_eq!(msgs(&h2), ["to two"]);

    // Removing every Alert stops delivery; the Providers may stay.
    std::fs::write(fleet_dir.join("fleet.yaml"), format!("{SOURCES}{p_one}{p_two}")).unwrap();
    eventually(|| async { hub.state().view().fleet.alerts.is_empty().then_some(()) }).await;
    c1.event(pb::Severity::Info, "web", "Third", "no rule for this").await;
    std::fs::write(
        fleet_dir.join("fleet.yaml"),
        format!(
            "{SOURCES}{p_one}{p_two}{}{}",
            alert("c", "two", "  reasons: [Fourth]\n"),
            alert("d", "one", "  reasons: [Fourth]\n")
        ),
    )
    .unwrap();
    eventually(|| async { hub.state().view().fleet.alerts.contains_key("d").then_some(()) }).await;
    c1.event(pb::Severity::Info, "web", "Fourth", "control for both").await;
    assert_eq!(msgs(&two.wait(2).await), ["to two", "control for both"]);
    assert_eq!(msgs(&one.wait(3).await), ["before", "control for one", "control for both"]);
    hub.shutdown().await.unwrap();
}

/// Slack, Teams, Discord and Alertmanager get their own formats, each with
/// the cluster identity; Alertmanager gets the v2 API path and a bearer token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_teams_discord_and_alertmanager_payload_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let r = Receiver::start(Mode::Ok).await;
    let url_file = dir.path().join("slack-url");
    std::fs::write(&url_file, format!("{}\n", r.url("/services/T000/B000/XXXX"))).unwrap();
    let token_file = dir.path().join("am-token");
    std::fs::write(&token_file, "am-t0ken\n").unwrap();
    let fleet_text = format!(
        "{SOURCES}{}{}{}{}{}",
        provider(
            "slack",
            "slack",
            &format!("  addressFile: {}\n  channel: \"#ops\"\n  username: convoy\n", url_file.display())
        ),
        provider("teams", "teams", &format!("  address: \"{}\"\n", r.url("/teams"))),
        provider(
            "discord",
            "discord",
            &format!("  address: \"{}\"\n  username: convoy\n", r.url("/discord"))
        ),
        provider(
            "am",
            "alertmanager",
            &format!(
                "  address: \"{}\"\n  secretFile: {}\n  allowInsecureLoopback: true\n",
                r.url("/am"),
                token_file.display()
            )
        ),
        ["slack", "teams", "discord", "am"]
            .map(|p| alert(&format!("to-{p}"), p, "  severity: error\n"))
            .join(""),
    );
    let t = start_hub(dir.path(), &fleet_text, config(dir.path())).await;
    let mut c1 = agent(&t.hub, "c1", &[("env", "prod"), ("topology.kubernetes.io/region", "eu-west")]).await;
    c1.event(pb::Severity::Error, "web", "ApplyFailed", "Deployment web: <!here> broke").await;
    let hits = r.wait(4).await;
    let by_path =
        |p: &str| hits.iter().find(|h| h.path == p).unwrap_or_else(|| panic!("nothing at {p}")).clone();

    let slack = by_path("/services/T000/B000/XXXX");
    let v = slack.json();
    let text = v["text"].as_str().unwrap();
    assert!(
        text.contains("ApplyFailed") && text.contains("cluster c1") && text.contains("env=prod"),
        "{text}"
    );
    assert!(text.contains("&lt;!here&gt;"), "mentions escaped: {text}");
    assert_eq!(v["channel"], "#ops");
    assert_eq!(v["username"], "convoy");
    let att = &v["attachments"][0];
    assert_eq!(att["color"], "#d50200");
    let blocks = att["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "section");
    let all = serde_json::to_string(blocks).unwrap();
    assert!(all.contains("spiffe://convoy/cluster/c1") && all.contains("hub test-hub"), "{all}");
    assert!(slack.headers.get("authorization").is_none());

    let v = by_path("/teams").json();
    assert_eq!(v["type"], "message");
    let a = &v["attachments"][0];
    assert_eq!(a["contentType"], "application/vnd.microsoft.card.adaptive");
    assert_eq!(a["content"]["type"], "AdaptiveCard");
    let facts = &a["content"]["body"][2]["facts"];
    assert!(
        facts
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["title"] == "Identity" && f["value"] == "spiffe://convoy/cluster/c1"),
        "{facts}"
    );

    let v = by_path("/discord").json();
    assert_eq!(v["username"], "convoy");
    assert_eq!(v["allowed_mentions"]["parse"], serde_json::json!([]));
    let e = &v["embeds"][0];
    assert!(e["title"].as_str().unwrap().contains("ApplyFailed"), "{e}");
    assert_eq!(e["color"], 0xd50200);
    assert!(
        e["fields"].as_array().unwrap().iter().any(|f| f["name"] == "Cluster" && f["value"] == "c1"),
        "{e}"
    );

    let am = by_path("/am/api/v2/alerts");
    assert_eq!(am.headers["authorization"], "Bearer am-t0ken");
    let v = am.json();
    let a = &v.as_array().expect("an array of alerts")[0];
    assert_eq!(a["labels"]["alertname"], "ApplyFailed");
    assert_eq!(a["labels"]["severity"], "error");
    assert_eq!(a["labels"]["cluster"], "c1");
    assert_eq!(a["labels"]["bundle"], "web");
    assert_eq!(a["labels"]["hub"], "test-hub");
    assert_eq!(a["labels"]["label_env"], "prod");
    assert_eq!(a["labels"]["label_topology_kubernetes_io_region"], "eu-west");
    assert_eq!(a["annotations"]["identity"], "spiffe://convoy/cluster/c1");
    assert!(a["startsAt"].as_str().unwrap().ends_with('Z'));
    t.hub.shutdown().await.unwrap();
}
