//! Tests of per-cluster Helm variants through the state actor: each cluster's
//! Capabilities and `helmValues`, the fleet-wide render cache, and variant
//! builds running off the actor's turn. Helm's engine is replaced by a
//! [`HelmRender`] double that writes what it was asked to render into the
//! artifact and counts its renders (the real engine is exercised in
//! `sources/tests/helm_caps.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use convoy_artifact::{SigningKey, Statement};
use convoy_core::config::FleetConfig;
use convoy_core::pipeline::BuiltHelm;
use convoy_sources::helmrender::{Capabilities, HelmInput, HelmRendered};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::domain::{EventFilter, StoredEvent};
use crate::pipeline::{SourcePipeline, StaticPipeline};
use crate::store::{Store, WriteOutcome};
use crate::variants::{HelmRender, VariantStore};

/// A store that accepts every commit and keeps nothing.
struct NullStore;

impl Store for NullStore {
    fn load(&self) -> Result<Loaded> {
        Ok(Loaded::default())
    }
    fn last_seq(&self, _: &str, _: u64) -> Result<u64> {
        Ok(0)
    }
    fn list_events(&self, _: &EventFilter) -> Result<Vec<StoredEvent>> {
        Ok(Vec::new())
    }
    fn commands(&self, _: &str) -> Result<Vec<crate::domain::commands::CommandRecord>> {
        Ok(Vec::new())
    }
    fn commit(&self, writes: Vec<Write>, _: i64) -> Result<Vec<WriteOutcome>> {
        Ok(writes.iter().map(|_| WriteOutcome::Done).collect())
    }
}

/// Helm's engine stand-in: one ConfigMap holding the Kubernetes version,
/// the API versions and the merged values it was asked to render with. Its
/// hooks: `failing` makes renders fail (a transient fault), `hold` makes a
/// render wait for [`FakeHelm::release`] (a slow build), counted in `entered`.
#[derive(Default)]
struct FakeHelm {
    renders: AtomicUsize,
    failing: std::sync::atomic::AtomicBool,
    hold: std::sync::atomic::AtomicBool,
    released: (std::sync::Mutex<bool>, std::sync::Condvar),
    entered: AtomicUsize,
}

impl FakeHelm {
    fn release(&self) {
        *self.released.0.lock().unwrap() = true;
        self.released.1.notify_all();
    }
}

impl HelmRender for FakeHelm {
    fn render(
        &self,
        input: &HelmInput,
        caps: &Capabilities,
        extra: &[Value],
    ) -> convoy_sources::Result<HelmRendered> {
        self.renders.fetch_add(1, Ordering::SeqCst);
        if self.hold.load(Ordering::SeqCst) {
            self.entered.fetch_add(1, Ordering::SeqCst);
            let mut released = self.released.0.lock().unwrap();
            while !*released {
                released = self.released.1.wait(released).unwrap();
            }
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(convoy_sources::Error::Config("injected render fault".into()));
        }
        let values = input.values_with(extra);
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": input.release, "namespace": input.namespace},
            "data": {
                "kubeVersion": caps.kube_version,
                "apiVersions": caps.api_versions.join(","),
                "values": convoy_helm_values(&values),
            },
        });
        let artifact = convoy_artifact::pack_files(
            [("helm/templates/cm.yaml".to_string(), serde_saphyr::to_string(&cm).unwrap().into_bytes())],
            &convoy_artifact::Limits::default(),
        )?;
        Ok(HelmRendered {
            artifact,
            helm: BuiltHelm {
                chart: "web".into(),
                version: "1.0.0".into(),
                chart_digest: input.chart_digest()?,
                values_digest: values_digest(&values),
                warnings: vec![],
                input: None,
            },
            input: None,
        })
    }
}

fn convoy_helm_values(v: &Value) -> String {
    convoy_sources::helmrender::canonical_values(v)
}

fn values_digest(v: &Value) -> String {
    let c = convoy_helm_values(v);
    convoy_artifact::digest_of(c.as_bytes())
}

const FLEET: &str = r#"
apiVersion: convoy.dev/v1
kind: GitSource
metadata: {name: repo}
spec: {url: "https://git.example/fleet.git"}
---
apiVersion: convoy.dev/v1
kind: Bundle
metadata: {name: web}
spec:
  source: repo
  helm: {path: charts/web, releaseName: web, namespace: apps}
  targets:
    - clusterSelector: {}
    - clusterSelector: {matchLabels: {tier: gold}}
      helmValues: {replicas: 3}
---
apiVersion: convoy.dev/v1
kind: Bundle
metadata: {name: web-gold}
spec:
  source: repo
  helm: {path: charts/web, releaseName: web, namespace: apps, values: {replicas: 3}}
  targets:
    - clusterSelector: {matchLabels: {tier: gold}}
---
apiVersion: convoy.dev/v1
kind: Bundle
metadata: {name: plain}
spec:
  source: repo
  path: plain
  targets: [{clusterSelector: {}}]
"#;

/// The render input of `web` (`web-gold`'s has `replicas: 3` in its values).
fn helm_input(replicas: u32) -> HelmInput {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    HelmInput {
        chart_path: "charts/web".into(),
        files: vec![("Chart.yaml".into(), b64("apiVersion: v2\nname: web\nversion: 1.0.0\n"))],
        values: json!({"replicas": replicas, "image": "web:1"}),
        release: "web".into(),
        namespace: "apps".into(),
        max_history: 0,
        include_crds: true,
        crds_create_only: false,
        expect_chart: None,
        expect_version: None,
        default_capabilities: Capabilities { kube_version: "v1.28.0".into(), api_versions: vec![] },
        archive: false,
    }
}

struct Fleet {
    state: StateHandle,
    pipeline: Arc<StaticPipeline>,
    helm: Arc<FakeHelm>,
    store: Arc<VariantStore>,
    _dir: tempfile::TempDir,
    _stop: tokio_util::sync::DropGuard,
}

/// A state actor with `clusters` (name, labels, reported Kubernetes version)
/// loaded from the store, the fleet above, and builds of its three bundles.
async fn fleet(clusters: Vec<(String, Labels, &'static str)>, helm: Arc<FakeHelm>) -> Fleet {
    fleet_with(clusters, helm, |_, _| {}).await
}

/// [`fleet`], with `setup` given what the store loads and the variant store
/// before the actor starts.
async fn fleet_with(
    clusters: Vec<(String, Labels, &'static str)>,
    helm: Arc<FakeHelm>,
    setup: impl FnOnce(&mut Loaded, &VariantStore),
) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let pipeline = StaticPipeline::new(dir.path());
    for (b, replicas) in [("web", 1), ("web-gold", 3)] {
        let input = helm_input(replicas);
        let base = FakeHelm::default().render(&input, &input.default_capabilities, &[]).unwrap();
        pipeline
            .publish_helm(b, "main@sha1:1", &base.artifact.bytes, base.helm.clone(), &input.to_bytes())
            .unwrap();
    }
    let plain = convoy_artifact::pack_files(
        [("cm.yaml".to_string(), b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: plain}\n".to_vec())],
        &convoy_artifact::Limits::default(),
    )
    .unwrap();
    pipeline.publish("plain", "repo", "https://git.example/fleet.git", "main@sha1:1", &plain.bytes).unwrap();
    let apis = vec!["apps/v1".to_string(), "v1".to_string()];
    let mut loaded = Loaded {
        liveness: clusters
            .iter()
            .filter(|(_, _, v)| !v.is_empty())
            .map(|(n, _, v)| {
                (
                    n.clone(),
                    Liveness {
                        kube_version: v.to_string(),
                        api_versions: apis.clone(),
                        ..Default::default()
                    },
                )
            })
            .collect(),
        clusters: clusters
            .into_iter()
            .map(|(name, labels, _)| ClusterRecord { name, labels, ..Default::default() })
            .collect(),
        ..Default::default()
    };
    let store = VariantStore::with_helm(dir.path().join("variants"), helm.clone());
    // Retries within tens of milliseconds (production: 5 s, doubling to 5 min).
    store.set_retry_backoff(Duration::from_millis(20), Duration::from_millis(50));
    setup(&mut loaded, &store);
    let ca =
        Ca::load_or_create(&dir.path().join("ca.crt"), &dir.path().join("ca.key"), crate::now_ms()).unwrap();
    let statuses = Arc::new(StatusIndex::default());
    let metrics = Arc::new(Metrics::new());
    let (events, _) = broadcast::channel(16);
    let (writer, _) = crate::writer::spawn(
        Arc::new(NullStore),
        statuses.clone(),
        Box::new(Vec::new),
        events,
        metrics.clone(),
        shutdown.clone(),
    );
    let (view_tx, _) = watch::channel(Arc::new(FleetView::default()));
    let fleet = Arc::new(FleetConfig::parse([("fleet.yaml", FLEET)]).unwrap());
    let statics = pipeline.clone();
    let pipeline: Arc<dyn SourcePipeline> = crate::variants::ServingVariants::new(pipeline, store.clone());
    let (state, _) = spawn(
        loaded,
        fleet,
        pipeline.builds(),
        StateDeps {
            ca: Arc::new(ca),
            signer: Arc::new(SigningKey::generate().unwrap()),
            writer,
            metrics,
            cluster_cert_ttl: Duration::from_secs(3600),
            statuses,
            pipeline,
            clock: convoy_core::clock::system(),
            variant_store: store.clone(),
            rollout_tick: crate::rollout::TICK,
            ha: Default::default(),
        },
        view_tx,
        shutdown.clone(),
    );
    assert!(state.wait_ready(Duration::from_secs(60)).await, "first variant computation");
    Fleet { state, pipeline: statics, helm, store, _dir: dir, _stop: shutdown.drop_guard() }
}

fn labels(tier: &str) -> Labels {
    [("tier".to_string(), tier.to_string())].into()
}

/// The ConfigMap a cluster was given of `bundle`, and its statement.
fn given(f: &Fleet, cluster: &str, bundle: &str) -> (Value, Statement) {
    let d = f.state.view().clusters[cluster].shared.desired().bundles[bundle].clone();
    let path = f.store.path(&d.record.digest).expect("a variant artifact stored by the hub");
    let files = crate::variants::unpack(&std::fs::read(path).unwrap()).unwrap();
    let cm: Value = serde_saphyr::from_str(std::str::from_utf8(&files[0].1).unwrap()).unwrap();
    (cm, Statement::parse(&d.record.statement).unwrap())
}

#[tokio::test]
async fn a_thousand_clusters_on_three_versions_with_two_value_sets_render_six_times() {
    let versions = ["v1.29.3", "v1.30.1", "v1.31.0"];
    let clusters = (0..1000)
        .map(|i| (format!("c{i}"), labels(if i % 2 == 0 { "gold" } else { "silver" }), versions[i % 3]))
        .collect();
    let f = fleet(clusters, Arc::new(FakeHelm::default())).await;
    // 3 versions x 2 value sets: 6 render inputs in all, each rendered once
    // for the fleet. `web-gold` (its own base, values `replicas: 3` of its
    // own) renders exactly what `web` renders on gold clusters: from the cache.
    assert_eq!(f.helm.renders.load(Ordering::SeqCst), 6, "renders");
    assert_eq!(f.store.helm().renders(), 6);
    assert_eq!(f.store.helm().hits(), 3, "web-gold's three variants come from the cache");
    let v = f.state.view();
    assert_eq!(v.variants.keys().filter(|(n, _)| n == "web").count(), 6, "web: one variant per input");
    assert_eq!(v.variants.keys().filter(|(n, _)| n == "web-gold").count(), 3);
    // A plain bundle does not split by Kubernetes version: every cluster has its base.
    assert!(v.variants.keys().all(|(b, _)| b != "plain"));
    let plain = &v.records["plain"];
    assert!(v.clusters.values().all(|c| c.shared.desired().bundles["plain"].record.digest == plain.digest));

    // Each cluster got its own Capabilities and values; the statement names
    // the values it was rendered with.
    for (name, kube, replicas) in
        [("c0", "v1.29.3", 3), ("c1", "v1.30.1", 1), ("c5", "v1.31.0", 1), ("c4", "v1.30.1", 3)]
    {
        let (cm, st) = given(&f, name, "web");
        assert_eq!(cm["data"]["kubeVersion"], kube, "{name}");
        assert_eq!(cm["data"]["apiVersions"], "apps/v1,v1", "{name}");
        let values = json!({"image": "web:1", "replicas": replicas});
        assert_eq!(cm["data"]["values"], convoy_helm_values(&values), "{name}");
        let helm = st.helm.expect("a Helm variant's statement names the chart");
        assert_eq!(helm.values_digest, values_digest(&values), "{name}");
        assert!(st.variant.is_some());
    }
    // Same version and values: one artifact; different version: another.
    let d = |c: &str| f.state.view().clusters[c].shared.desired().bundles["web"].record.digest.clone();
    assert_eq!(d("c0"), d("c6"));
    assert_ne!(d("c0"), d("c2"));
    // The same render is the same artifact, whichever bundle it is for.
    assert_eq!(d("c0"), f.state.view().clusters["c0"].shared.desired().bundles["web-gold"].record.digest);
}

#[tokio::test]
async fn a_cluster_that_has_not_reported_renders_with_the_default_capabilities() {
    let clusters = vec![
        ("quiet".to_string(), labels("silver"), ""),
        ("quiet-gold".to_string(), labels("gold"), ""),
        ("loud".to_string(), labels("silver"), "v1.31.0"),
    ];
    let f = fleet(clusters, Arc::new(FakeHelm::default())).await;
    let v = f.state.view();
    // No version and no values layer: the base artifact itself (rendered with the default).
    assert_eq!(v.clusters["quiet"].shared.desired().bundles["web"].record.digest, v.records["web"].digest);
    // A values layer but no version: a variant rendered with the default Capabilities.
    let (cm, _) = given(&f, "quiet-gold", "web");
    assert_eq!(cm["data"]["kubeVersion"], "v1.28.0");
    assert_eq!(cm["data"]["values"], convoy_helm_values(&json!({"image": "web:1", "replicas": 3})));
    let (cm, _) = given(&f, "loud", "web");
    assert_eq!(cm["data"]["kubeVersion"], "v1.31.0");
    // The agent reports a new version: the cluster moves to a new render.
    let before = f.helm.renders.load(Ordering::SeqCst);
    let shared = f.state.view().clusters["quiet"].shared.clone();
    assert!(shared.set_kube("v1.32.0", &["v1".to_string()]));
    f.state.refresh_variants("quiet".into()).await.unwrap();
    let (cm, st) = given(&f, "quiet", "web");
    assert_eq!(
        (cm["data"]["kubeVersion"].as_str(), cm["data"]["apiVersions"].as_str()),
        (Some("v1.32.0"), Some("v1"))
    );
    assert!(st.generation >= 1 && st.variant.is_some());
    assert_eq!(f.helm.renders.load(Ordering::SeqCst), before + 1, "one new input, one render");
    // What it reported is kept for the store (persisted with the liveness).
    assert_eq!(shared.liveness().api_versions, vec!["v1".to_string()]);
    let _ = BTreeMap::<String, String>::new();
}

/// Poll `cond` until it holds (bounded: the event it waits for would have
/// happened long before).
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_variant_build_does_not_delay_other_commands() {
    let clusters =
        vec![("c0".to_string(), labels("gold"), "v1.30.0"), ("c1".to_string(), labels("silver"), "v1.30.0")];
    let f = fleet(clusters, Arc::new(FakeHelm::default())).await;
    let before = given(&f, "c1", "web").1.generation;
    // c1's agent reports a new version; its new render is held in the engine.
    f.helm.hold.store(true, Ordering::SeqCst);
    let shared = f.state.view().clusters["c1"].shared.clone();
    assert!(shared.set_kube("v1.33.0", &["v1".to_string()]));
    let state = f.state.clone();
    let refresh = tokio::spawn(async move { state.refresh_variants("c1".into()).await });
    until("the render to start", || f.helm.entered.load(Ordering::SeqCst) == 1).await;
    // While it runs, the actor answers unrelated commands at once.
    let quick = Duration::from_secs(10);
    tokio::time::timeout(quick, f.state.create_token(TokenInput::default()))
        .await
        .expect("a token is created while a variant builds")
        .unwrap();
    tokio::time::timeout(quick, f.state.set_labels("c0".into(), labels("gold")))
        .await
        .expect("labels are set while a variant builds")
        .unwrap();
    assert!(!refresh.is_finished(), "c1's refresh is answered once its variant is built");
    assert_eq!(f.helm.entered.load(Ordering::SeqCst), 1);
    let (cm, _) = given(&f, "c1", "web");
    assert_eq!(cm["data"]["kubeVersion"], "v1.30.0", "c1 keeps its generation until the new one is built");
    f.helm.release();
    tokio::time::timeout(quick, refresh).await.expect("answered once built").unwrap().unwrap();
    let (cm, st) = given(&f, "c1", "web");
    assert_eq!(cm["data"]["kubeVersion"], "v1.33.0");
    assert!(st.generation > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_variant_build_is_retried_with_backoff_until_it_succeeds() {
    let helm = Arc::new(FakeHelm::default());
    helm.failing.store(true, Ordering::SeqCst);
    let f = fleet(vec![("c1".to_string(), labels("silver"), "v1.30.0")], helm).await;
    // The build failed: the cluster's placement says why, and it has nothing
    // of `web` (it never had a good generation).
    let failed = |f: &Fleet| match f.state.view().placements.get("c1").and_then(|p| p.get("web")) {
        Some(Placed::Failed(m)) => Some(m.clone()),
        _ => None,
    };
    let m = failed(&f).expect("a failed placement");
    assert!(m.contains("injected render fault"), "{m}");
    assert!(!f.state.view().clusters["c1"].shared.desired().bundles.contains_key("web"));
    // Nothing changes (no new base, no new config), yet the build is retried.
    until("two retries", || f.helm.renders.load(Ordering::SeqCst) >= 3).await;
    assert!(failed(&f).is_some(), "still failing, still reported");
    // The fault clears: the next retry builds and the cluster gets its variant.
    f.helm.failing.store(false, Ordering::SeqCst);
    until("the variant", || f.state.view().clusters["c1"].shared.desired().bundles.contains_key("web")).await;
    let (cm, _) = given(&f, "c1", "web");
    assert_eq!(cm["data"]["kubeVersion"], "v1.30.0");
    assert!(failed(&f).is_none());
    // And it is not retried any more: a successful build stays cached.
    let renders = f.helm.renders.load(Ordering::SeqCst);
    f.state.refresh_variants("c1".into()).await.unwrap();
    assert_eq!(f.helm.renders.load(Ordering::SeqCst), renders);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variant_artifacts_no_one_references_are_collected_and_those_in_use_are_kept() {
    let clusters =
        vec![("c0".to_string(), labels("gold"), "v1.30.0"), ("c1".to_string(), labels("silver"), "v1.30.0")];
    let f = fleet(clusters, Arc::new(FakeHelm::default())).await;
    f.store.set_gc_grace(Duration::ZERO);
    let digest =
        |c: &str, b: &str| f.state.view().clusters[c].shared.desired().bundles[b].record.digest.clone();
    let old = [digest("c0", "web"), digest("c1", "web")];
    let gold = digest("c0", "web-gold");
    assert_eq!(f.state.collect_variants().await.unwrap(), 0, "everything is in use");

    // A new build of `web` whose variants cannot be built yet: both clusters
    // keep their old variants, so those stay.
    f.helm.failing.store(true, Ordering::SeqCst);
    let mut input = helm_input(1);
    input.values = json!({"replicas": 1, "image": "web:2"});
    let base = FakeHelm::default().render(&input, &input.default_capabilities, &[]).unwrap();
    f.pipeline
        .publish_helm("web", "main@sha1:2", &base.artifact.bytes, base.helm, &input.to_bytes())
        .unwrap();
    until("the new base", || f.state.view().records["web"].revision == "main@sha1:2").await;
    until("the failed builds", || {
        let v = f.state.view();
        ["c0", "c1"].iter().all(|c| matches!(v.placements[*c].get("web"), Some(Placed::Failed(_))))
    })
    .await;
    assert_eq!(f.state.collect_variants().await.unwrap(), 0, "the clusters still run them");
    assert!(old.iter().all(|d| f.store.path(d).is_some()));

    // The builds succeed on retry: the clusters move on, and the old
    // variants referenced by nothing now are collected. c0's old `web`
    // variant is byte for byte `web-gold`'s (same render), which c0 still
    // runs: it stays.
    assert_eq!(old[0], gold);
    f.helm.failing.store(false, Ordering::SeqCst);
    until("the new variants", || !old.contains(&digest("c0", "web")) && !old.contains(&digest("c1", "web")))
        .await;
    assert_eq!(f.state.collect_variants().await.unwrap(), 1);
    assert!(f.store.path(&old[1]).is_none(), "collected");
    for d in [digest("c0", "web"), digest("c1", "web"), gold] {
        assert!(f.store.path(&d).is_some(), "{d} is in use and stays");
    }
    assert_eq!(f.store.collected(), 1);
    assert_eq!(f.state.collect_variants().await.unwrap(), 0);
}

/// A rollout record keeps the variant artifacts it names (what clusters held
/// before the rollout, its base, what it gave, what it rolled back to), even
/// when no cluster's desired set and no current variant names them: a
/// rollback must be able to serve them again. The clusters the record names
/// are not registered here, so nothing but the record refers to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variant_artifacts_a_rollout_record_names_are_kept() {
    use crate::domain::rollout::{RolloutRecord, RolloutState, RolloutStatus};
    let clusters = vec![("c0".to_string(), labels("gold"), "v1.30.0")];
    let digests = std::sync::Mutex::new(BTreeMap::new());
    let f = fleet_with(clusters, Arc::new(FakeHelm::default()), |loaded, store| {
        let record = |name: &str| {
            let cm = format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\n");
            let art = convoy_artifact::pack_files(
                [("cm.yaml".to_string(), cm.into_bytes())],
                &convoy_artifact::Limits::default(),
            )
            .unwrap();
            store.put(&art).unwrap();
            digests.lock().unwrap().insert(name.to_string(), art.digest.clone());
            DeploymentRecord {
                bundle: "web".into(),
                generation: 1,
                digest: art.digest.clone(),
                size: art.bytes.len() as u64,
                revision: "main@sha1:0".into(),
                source: "repo".into(),
                statement: Vec::new(),
                signature: Vec::new(),
                created_unix_ms: 0,
            }
        };
        let spec: convoy_core::rollout::RolloutSpec =
            serde_saphyr::from_str("waves: [{name: all}]\n").unwrap();
        let mut state = RolloutState::new(&spec, "main@sha1:0", 0);
        state.status = RolloutStatus::RolledBack { reason: "test".into() };
        let mut rec = RolloutRecord {
            bundle: "web".into(),
            state,
            held: Default::default(),
            base: Some(record("base")),
            given: Default::default(),
            rolled_back: Default::default(),
            max_generation: 1,
            version: 1,
        };
        rec.held.insert("gone-held".into(), record("held"));
        rec.given.insert("gone-given".into(), record("given"));
        rec.rolled_back.insert("gone-rolled-back".into(), record("rolled-back"));
        loaded.rollouts.push(rec);
        // And one artifact nothing names.
        record("stray");
    })
    .await;
    f.store.set_gc_grace(Duration::ZERO);
    let digests = digests.into_inner().unwrap();
    assert_eq!(f.state.collect_variants().await.unwrap(), 1, "only the stray artifact goes");
    assert!(f.store.path(&digests["stray"]).is_none());
    for name in ["base", "held", "given", "rolled-back"] {
        assert!(f.store.path(&digests[name]).is_some(), "{name}: named by the rollout record, kept");
    }
}
