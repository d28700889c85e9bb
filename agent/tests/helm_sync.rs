//! The hub-driven agent (controller path) with a Helm bundle: the release
//! record in the artifact is never applied as an object, the pre-install
//! hook Job runs before the release's objects, Helm's release Secret is
//! written after success, an upgrade is numbered from the existing records
//! (revision 1 superseded, 2 deployed), and a failing pre-upgrade hook is
//! recorded as a `failed` revision without touching the release's objects,
//! then retried with backoff as a new revision (never left pending); the
//! chart's `crds/` under `crds: Create` (created when missing, never changed,
//! never pruned) and `CreateReplace` (updated).

mod common;

use std::time::Duration;

use common::*;
use convoy_agent::{Agent, AgentConfig, KubeSource, Tuning};
use convoy_helm::release::{CrdPolicy, ReleaseSpec, decode_release};
use convoy_proto::v1 as pb;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const FLEET: &str = "apiVersion: convoy.dev/v1\nkind: GitSource\nmetadata:\n  name: repo\nspec:\n  url: https://git.example/fleet.git\n---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata:\n  name: web\nspec:\n  source: repo\n  path: web\n  prune: true\n  wait: true\n  timeout: 4s\n  targets:\n    - clusterSelector: {}\n";

fn record(greeting: &str) -> String {
    record_with(greeting, CrdPolicy::CreateReplace)
}

fn record_with(greeting: &str, crds: CrdPolicy) -> String {
    let spec = ReleaseSpec {
        name: "web".into(),
        namespace: "apps".into(),
        chart_metadata: json!({"apiVersion": "v2", "name": "demo", "version": "1.0.0"}),
        chart_values: json!({"greeting": "default"}),
        config: json!({"greeting": greeting}),
        notes: String::new(),
        manifest: configmap("web-settings", greeting),
        chart_digest: format!("sha256:{}", "a".repeat(64)),
        values_digest: format!("sha256:{}", "b".repeat(64)),
        max_history: 0,
        crds,
    };
    serde_json::to_string(&spec.to_object()).unwrap()
}

fn hook_job(name: &str, events: &str, extra_annotations: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\n  annotations:\n    helm.sh/hook: {events}\n{extra_annotations}spec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: m\n        image: busybox\n"
    )
}

fn helm_artifact(greeting: &str, pre_hook: &str) -> Vec<u8> {
    pack(&[
        ("helm/release.yaml", record(greeting)),
        ("helm/hooks/pre.yaml", pre_hook.to_string()),
        (
            "helm/hooks/post.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: post-marker\n  annotations:\n    helm.sh/hook: post-install,post-upgrade\ndata:\n  k: done\n".into(),
        ),
        ("helm/templates/cm.yaml", configmap("web-settings", greeting)),
    ])
    .bytes
}

/// The release records in the sim: version -> (status label, decoded release).
fn records(sim: &kube_sim::KubeSim) -> Vec<(u64, String, Value)> {
    let mut v: Vec<_> = sim
        .objects("", "secrets")
        .into_iter()
        .filter(|s| s["type"] == "helm.sh/release.v1" && s["metadata"]["namespace"] == "apps")
        .map(|s| {
            let labels = &s["metadata"]["labels"];
            let version = labels["version"].as_str().unwrap().parse().unwrap();
            let b64 = s["data"]["release"].as_str().unwrap();
            let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap();
            let release = decode_release(std::str::from_utf8(&bytes).unwrap()).unwrap();
            (version, labels["status"].as_str().unwrap().to_string(), release)
        })
        .collect();
    v.sort_by_key(|r| r.0);
    v
}

async fn cell(
    fleet: &mut pb::fleet_client::FleetClient<tonic::transport::Channel>,
) -> Option<pb::BundleStatus> {
    let b = fleet
        .get_bundle(pb::GetBundleRequest { name: "web".into(), ..Default::default() })
        .await
        .ok()?
        .into_inner();
    b.clusters.into_iter().find(|c| c.cluster == "c1").and_then(|c| c.status)
}

/// A hub with a static pipeline, one kube-sim cluster `c1` (namespace `apps`
/// created) and its agent.
struct Env {
    pipeline: std::sync::Arc<convoy_hub::StaticPipeline>,
    hub: convoy_hub::HubHandle,
    sim: kube_sim::KubeSim,
    agent: convoy_agent::RunningAgent,
    fleet: pb::fleet_client::FleetClient<tonic::transport::Channel>,
    shutdown: CancellationToken,
    _tmp: tempfile::TempDir,
}

impl Env {
    async fn start(fleet_yaml: &str) -> Env {
        init();
        let tmp = tempfile::tempdir().unwrap();
        let pipeline = convoy_hub::StaticPipeline::new(tmp.path().join("artifacts"));
        let fleet_cfg = convoy_core::config::FleetConfig::parse([("fleet.yaml", fleet_yaml)]).unwrap();
        let hub = convoy_hub::Hub::start(
            convoy_hub::HubConfig::local(tmp.path().join("hub")),
            convoy_hub::HubOptions {
                pipeline: Some(pipeline.clone()),
                fleet: Some(fleet_cfg),
                ..Default::default()
            },
        )
        .await
        .expect("hub starts");
        let token = hub
            .create_token(Some("c1"), Default::default(), Duration::from_secs(3600), false)
            .await
            .unwrap()
            .token;
        let sim = sim_with(kube_sim::SimConfig {
            readiness_delay: Duration::from_millis(50),
            ..Default::default()
        })
        .await;
        // As with Helm, the release namespace exists before the install.
        let ns: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client(&sim));
        ns.create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": "apps"}})).unwrap(),
        )
        .await
        .unwrap();
        std::fs::write(tmp.path().join("ca.pem"), &hub.ca_pem).unwrap();
        std::fs::write(tmp.path().join("keys.pem"), &hub.trusted_keys_pem).unwrap();
        std::fs::write(tmp.path().join("token"), &token).unwrap();
        let mut cfg = AgentConfig::new(&hub.endpoint(), "c1", tmp.path().join("state"));
        cfg.kube = KubeSource::Client(client(&sim));
        cfg.hub_ca = Some(tmp.path().join("ca.pem"));
        cfg.token_file = Some(tmp.path().join("token"));
        cfg.trusted_keys = vec![tmp.path().join("keys.pem")];
        cfg.tuning = Tuning { drift_debounce: Duration::from_millis(200), ..Tuning::default() };
        let shutdown = CancellationToken::new();
        let agent = Agent::start(cfg, shutdown.clone()).await.unwrap();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&hub.admin.ca_pem))
            .domain_name(hub.server_name())
            .identity(Identity::from_pem(&hub.admin.cert_pem, &hub.admin.key_pem));
        let ch =
            Endpoint::from_shared(hub.endpoint()).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
        let fleet = pb::fleet_client::FleetClient::new(ch);
        Env { pipeline, hub, sim, agent, fleet, shutdown, _tmp: tmp }
    }

    fn publish(&self, generation: u64, bytes: &[u8]) {
        self.pipeline
            .publish(
                "web",
                "repo",
                "https://git.example/fleet.git",
                &format!("main@sha1:{generation:040x}"),
                bytes,
            )
            .unwrap();
    }

    async fn phase(&self, generation: u64, phase: pb::Phase) -> pb::BundleStatus {
        eventually(60, &format!("web {phase:?} at generation {generation}"), || {
            let mut f = self.fleet.clone();
            async move { cell(&mut f).await.filter(|s| s.phase == phase as i32 && s.generation == generation) }
        })
        .await
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.agent.join().await.unwrap();
        self.hub.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_controller_installs_and_upgrades_a_helm_release_with_hooks_and_records() {
    let env = Env::start(FLEET).await;
    let sim = &env.sim;
    let pre = hook_job("migrate", "pre-install,pre-upgrade", "");
    env.publish(1, &helm_artifact("hi", &pre));
    let ready = |generation: u64| env.phase(generation, pb::Phase::Ready);

    // Install: only the release's object is in the inventory (no record, no hooks).
    let st = ready(1).await;
    assert_eq!(st.objects.unwrap().total, 1, "the record and hooks are not objects of the bundle");
    assert_eq!(sim.object("", "configmaps", "apps", "web-settings").unwrap()["data"]["k"], "hi");
    let job = sim
        .object("batch", "jobs", "apps", "migrate")
        .expect("the pre-install hook Job ran in the release namespace");
    assert!(
        job["status"]["conditions"].as_array().unwrap().iter().any(|c| c["type"] == "Complete"),
        "the hook Job was waited for until Complete: {job}"
    );
    assert!(sim.object("", "configmaps", "apps", "post-marker").is_some(), "the post-install hook ran");
    let recs = records(sim);
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!((recs[0].0, recs[0].1.as_str()), (1, "deployed"));
    assert_eq!(recs[0].2["config"], json!({"greeting": "hi"}));
    assert_eq!(recs[0].2["info"]["description"], "Install complete");
    assert_eq!(recs[0].2["chart"]["metadata"]["name"], "demo");

    // Upgrade: numbered from the existing records.
    env.publish(2, &helm_artifact("hello", &pre));
    ready(2).await;
    assert_eq!(sim.object("", "configmaps", "apps", "web-settings").unwrap()["data"]["k"], "hello");
    let recs = eventually(10, "two release records", || async {
        let r = records(sim);
        (r.len() == 2).then_some(r)
    })
    .await;
    assert_eq!((recs[0].0, recs[0].1.as_str()), (1, "superseded"));
    assert_eq!((recs[1].0, recs[1].1.as_str()), (2, "deployed"));
    assert_eq!(recs[1].2["config"], json!({"greeting": "hello"}));
    assert_eq!(recs[1].2["info"]["description"], "Upgrade complete");
    assert_eq!(recs[1].2["info"]["first_deployed"], recs[0].2["info"]["first_deployed"]);

    // A pre-upgrade hook that never finishes: recorded `failed`, the
    // release's objects untouched, the bundle not Ready at generation 3.
    let stuck = hook_job("migrate-stuck", "pre-upgrade", "    kube-sim.convoy.dev/unpullable: \"true\"\n");
    env.publish(3, &helm_artifact("broken", &stuck));
    let failed = eventually(60, "a failed revision 3", || async {
        records(sim).into_iter().find(|r| r.0 == 3 && r.1 == "failed")
    })
    .await;
    assert!(
        failed.2["info"]["description"].as_str().unwrap().contains("pre-upgrade hook Job/migrate-stuck"),
        "{}",
        failed.2["info"]
    );
    assert_eq!(sim.object("", "configmaps", "apps", "web-settings").unwrap()["data"]["k"], "hello");
    let st = cell(&mut env.fleet.clone()).await.unwrap();
    assert_ne!(st.phase, pb::Phase::Ready as i32, "{st:?}");
    // Revision 2 stays the deployed one.
    assert!(records(sim).iter().any(|r| r.0 == 2 && r.1 == "deployed"));
    // The failed upgrade is retried with backoff, each attempt a new recorded
    // revision; nothing is ever left pending.
    eventually(60, "a retried, failed revision 4", || async {
        records(sim).into_iter().find(|r| r.0 == 4 && r.1 == "failed")
    })
    .await;
    let recs = records(sim);
    assert!(recs.iter().all(|r| !r.1.starts_with("pending")), "{recs:?}");
    assert!(recs.iter().any(|r| r.0 == 2 && r.1 == "deployed"), "{recs:?}");

    env.stop().await;
}

/// Hooks and the release record are judged by the bundle's tenancy before
/// anything of the release is written: a hook kind the bundle may not
/// contain refuses the revision (Stalled, NotAllowed), no hook runs, no
/// record is written, and the release's objects are not applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_controller_refuses_a_helm_release_whose_hook_breaks_the_tenancy_rules() {
    let fleet = FLEET.replace("  prune: true\n", "  prune: true\n  allowedKinds: [ConfigMap]\n");
    let env = Env::start(&fleet).await;
    env.publish(1, &helm_artifact("hi", &hook_job("migrate", "pre-install", "")));
    let st = env.phase(1, pb::Phase::Stalled).await;
    let reason = st.conditions.iter().map(|c| c.reason.as_str()).collect::<Vec<_>>();
    assert!(reason.contains(&"NotAllowed"), "{st:?}");
    assert!(st.message.contains("Job") && st.message.contains("migrate"), "{}", st.message);
    assert!(env.sim.object("batch", "jobs", "apps", "migrate").is_none(), "the hook never ran");
    assert!(records(&env.sim).is_empty(), "no release record");
    assert!(env.sim.object("", "configmaps", "apps", "web-settings").is_none(), "nothing applied");
    env.stop().await;
}

fn test_pod(name: &str, weight: i64, extra_annotations: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  annotations:\n    helm.sh/hook: test\n    helm.sh/hook-weight: \"{weight}\"\n{extra_annotations}spec:\n  restartPolicy: Never\n  containers:\n  - name: t\n    image: curlimages/curl:7.69.0\n"
    )
}

fn artifact_with_tests(greeting: &str, tests: &[(&str, String)]) -> Vec<u8> {
    let mut files = vec![
        ("helm/release.yaml".to_string(), record(greeting)),
        ("helm/templates/cm.yaml".to_string(), configmap("web-settings", greeting)),
    ];
    for (name, body) in tests {
        files.push((format!("helm/tests/demo/templates/tests/{name}.yaml"), body.clone()));
    }
    let refs: Vec<(&str, String)> = files.iter().map(|(p, b)| (p.as_str(), b.clone())).collect();
    pack(&refs).bytes
}

/// Publish a Helm build (its statement names the chart, as the hub's Helm
/// builds do).
fn publish_helm(env: &Env, generation: u64, bytes: &[u8]) {
    let helm = convoy_core::pipeline::BuiltHelm {
        chart: "demo".into(),
        version: "1.0.0".into(),
        chart_digest: format!("sha256:{}", "a".repeat(64)),
        values_digest: format!("sha256:{}", "b".repeat(64)),
        warnings: Vec::new(),
        input: None,
    };
    env.pipeline
        .publish_helm("web", &format!("main@sha1:{generation:040x}"), bytes, helm, b"render input")
        .unwrap();
}

/// Run the tests through the hub and wait for the run's one event.
async fn run_tests(env: &Env) -> (pb::RunTestsResponse, pb::Event) {
    let mut fleet = env.fleet.clone();
    let r = fleet
        .run_tests(pb::RunTestsRequest { bundle: "web".into(), cluster: "c1".into(), timeout_seconds: 10 })
        .await
        .unwrap()
        .into_inner();
    let id = r.request_id.clone();
    let ev = eventually(60, "the test run's event", || {
        let (mut f, id) = (env.fleet.clone(), id.clone());
        async move {
            let evs = f
                .list_events(pb::ListEventsRequest {
                    cluster: "c1".into(),
                    bundle: "web".into(),
                    limit: 1000,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner()
                .events;
            let mine: Vec<pb::Event> = evs
                .into_iter()
                .filter_map(|e| e.event)
                .filter(|e| e.details.get("requestId") == Some(&id))
                .collect();
            assert!(mine.len() <= 1, "one event per run: {mine:?}");
            mine.into_iter().next()
        }
    })
    .await;
    (r, ev)
}

/// `convoy test` on the agent against kube-sim: test hooks are never run by
/// the install; on demand they run in weight order, each waited for until
/// its Pod ends, with their delete policies; one event reports the run
/// (TestSucceeded, or TestFailed naming the hook, its phase and exit code,
/// later tests not run); the release record lists the test hooks with their
/// last run; a release whose newest revision failed is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_convoy_test_runs_test_hooks_in_order_and_reports_one_event() {
    let env = Env::start(FLEET).await;
    let sim = &env.sim;
    let pods = |sim: &kube_sim::KubeSim| -> Vec<String> {
        let mut v: Vec<String> = sim
            .objects("", "pods")
            .into_iter()
            .filter(|p| p["metadata"]["namespace"] == "apps")
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    let passing = vec![
        ("a", test_pod("web-test-a", 0, "")),
        ("b", test_pod("web-test-b", -1, "    helm.sh/hook-delete-policy: hook-succeeded\n")),
    ];
    publish_helm(&env, 1, &artifact_with_tests("hi", &passing));
    let st = env.phase(1, pb::Phase::Ready).await;
    assert_eq!(st.objects.unwrap().total, 1, "test hooks are not objects of the bundle");
    assert!(pods(sim).is_empty(), "the install runs no test hook");
    // The release record lists the test hooks, never run yet.
    let recs = records(sim);
    let hooks = recs[0].2["hooks"].as_array().expect("the record lists the hooks");
    let names: Vec<_> =
        hooks.iter().map(|h| (h["name"].as_str().unwrap(), h["events"][0].as_str().unwrap())).collect();
    assert_eq!(names, [("web-test-a", "test"), ("web-test-b", "test")]);
    assert_eq!(hooks[0]["path"], "demo/templates/tests/a.yaml");
    assert_eq!(hooks[0]["last_run"]["phase"], "");

    // A passing run: b (weight -1) before a; b deleted (hook-succeeded),
    // a kept (before-hook-creation only).
    let (r, ev) = run_tests(&env).await;
    assert_eq!(r.generation, 1);
    assert_eq!(ev.reason, "TestSucceeded", "{ev:?}");
    assert_eq!(ev.message, "helm release web revision 1: 2 test(s) passed: Pod/web-test-b, Pod/web-test-a");
    assert_eq!(ev.details["releaseRevision"], "1");
    let created: Vec<String> = sim
        .changes(&[("", "pods")])
        .iter()
        .filter(|c| c.kind == "ADDED")
        .map(|c| c.object["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(created, ["web-test-b", "web-test-a"], "weight order");
    assert_eq!(pods(sim), ["web-test-a"]);
    assert_eq!(sim.object("", "pods", "apps", "web-test-a").unwrap()["status"]["phase"], "Succeeded");
    let rec = eventually(10, "the run recorded on revision 1", || async {
        let r = records(sim).into_iter().next()?;
        (r.2["hooks"][0]["last_run"]["phase"] == "Succeeded").then_some(r)
    })
    .await;
    assert_eq!(rec.1, "deployed");
    assert!(rec.2["hooks"][1]["last_run"]["completed_at"].as_str().is_some_and(|t| !t.is_empty()));

    // A failing run: a fails (exit code 1), c (weight 5) never runs; a
    // second run recreates a first (before-hook-creation).
    let failing = vec![
        ("a", test_pod("web-test-a", 0, "    kube-sim.convoy.dev/exit-code: \"1\"\n")),
        ("b", test_pod("web-test-b", -1, "    helm.sh/hook-delete-policy: hook-succeeded\n")),
        ("c", test_pod("web-test-c", 5, "")),
    ];
    publish_helm(&env, 2, &artifact_with_tests("hello", &failing));
    env.phase(2, pb::Phase::Ready).await;
    let (r, ev) = run_tests(&env).await;
    assert_eq!(r.generation, 2);
    assert_eq!(ev.reason, "TestFailed", "{ev:?}");
    assert_eq!(ev.severity, pb::Severity::Error as i32);
    assert_eq!(ev.details["failedHook"], "Pod/web-test-a");
    assert!(
        ev.message.starts_with("helm release web revision 2: test Pod/web-test-a failed: "),
        "{}",
        ev.message
    );
    assert!(ev.message.contains("phase Failed") && ev.message.contains("exit code 1"), "{}", ev.message);
    assert!(ev.message.ends_with("passed before it: Pod/web-test-b"), "{}", ev.message);
    // The run is over (its event was sent): c was never created.
    assert!(sim.object("", "pods", "apps", "web-test-c").is_none());
    assert_eq!(sim.object("", "pods", "apps", "web-test-a").unwrap()["status"]["phase"], "Failed");
    let rec = eventually(10, "the failed run recorded on revision 2", || async {
        records(sim).into_iter().find(|r| r.0 == 2 && r.2["hooks"][0]["last_run"]["phase"] == "Failed")
    })
    .await;
    assert_eq!(rec.2["hooks"][2]["last_run"]["phase"], "", "c never ran");

    // An upgrade whose pre-upgrade hook never finishes leaves a `failed`
    // newest revision: tests of the applied generation are refused, as
    // `helm test` refuses a release that is not deployed; nothing is created.
    let stuck = hook_job("migrate-stuck", "pre-upgrade", "    kube-sim.convoy.dev/unpullable: \"true\"\n");
    let mut files = vec![
        ("helm/release.yaml", record("broken")),
        ("helm/hooks/pre.yaml", stuck),
        ("helm/templates/cm.yaml", configmap("web-settings", "broken")),
    ];
    files.extend(
        failing.iter().map(|(_, body)| ("helm/tests/demo/templates/tests/all.yaml", body.clone())).take(1),
    );
    publish_helm(&env, 3, &pack(&files).bytes);
    eventually(60, "a failed revision 3", || async {
        records(sim).into_iter().find(|r| r.0 == 3 && r.1 == "failed")
    })
    .await;
    // Only the test Pods are compared: the stuck hook's Job keeps being
    // retried by the agent (its upgrade failed), so its Pod's name changes.
    // Each test Pod with its uid and resourceVersion: a re-created or
    // changed Pod would differ.
    let test_pods = |sim: &kube_sim::KubeSim| -> Vec<String> {
        let mut v: Vec<String> = sim
            .objects("", "pods")
            .into_iter()
            .filter(|p| p["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("web-test-")))
            .map(|p| {
                format!(
                    "{} {} {}",
                    p["metadata"]["name"], p["metadata"]["uid"], p["metadata"]["resourceVersion"]
                )
            })
            .collect();
        v.sort();
        v
    };
    let pods_before = test_pods(sim);
    let (r, ev) = run_tests(&env).await;
    assert_eq!(r.generation, 2, "the generation applied");
    assert_eq!(ev.reason, "TestRefused", "{ev:?}");
    assert!(ev.message.contains("helm release web is not deployed: revision"), "{}", ev.message);
    assert_eq!(test_pods(sim), pods_before, "a refused run writes nothing");

    env.stop().await;
}

/// The chart's CRD, `description` marking its content.
fn widget_crd(description: &str) -> String {
    format!(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: widgets.example.com\nspec:\n  group: example.com\n  scope: Namespaced\n  names:\n    plural: widgets\n    singular: widget\n    kind: Widget\n    listKind: WidgetList\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        description: {description}\n        x-kubernetes-preserve-unknown-fields: true\n"
    )
}

/// A Helm artifact whose chart has a CRD in `crds/` and a custom resource of it in its templates.
fn crd_artifact(crds: CrdPolicy, crd_description: &str, greeting: &str) -> Vec<u8> {
    pack(&[
        ("helm/release.yaml", record_with(greeting, crds)),
        ("helm/crds/widgets.yaml", widget_crd(crd_description)),
        (
            "helm/templates/widget.yaml",
            format!(
                "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  size: {greeting}\n"
            ),
        ),
        ("helm/templates/cm.yaml", configmap("web-settings", greeting)),
    ])
    .bytes
}

const CRD: &str = "widgets.example.com";

/// `crds: Create` (Flux helm-controller's semantics): the install creates the
/// chart's CRD; an upgrade whose chart changes the CRD leaves the live CRD
/// exactly as it is (its generation does not move) and keeps its custom
/// resources, and a revision that still has the CRD never deletes it (prune
/// is on); a CRD deleted out of band is created again. Then `CreateReplace`
/// updates it, custom resources kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_crds_create_creates_missing_crds_and_never_changes_or_prunes_an_existing_one() {
    let env = Env::start(FLEET).await;
    let sim = &env.sim;
    let description = |sim: &kube_sim::KubeSim| {
        let crd = sim.object("apiextensions.k8s.io", "customresourcedefinitions", "", CRD)?;
        let d = crd.pointer("/spec/versions/0/schema/openAPIV3Schema/description")?.as_str()?.to_string();
        Some((d, crd["metadata"]["generation"].as_i64().unwrap_or(0), crd["metadata"]["uid"].clone()))
    };
    let widget_uid = |sim: &kube_sim::KubeSim| {
        sim.object("example.com", "widgets", "apps", "w1").map(|w| w["metadata"]["uid"].clone())
    };
    let crd_changes = |sim: &kube_sim::KubeSim, kind: &str| {
        sim.changes(&[("apiextensions.k8s.io", "customresourcedefinitions"), ("example.com", "widgets")])
            .into_iter()
            .filter(|c| c.kind == kind)
            .count()
    };

    // Install: the CRD is created (it is missing), then its custom resource.
    env.publish(1, &crd_artifact(CrdPolicy::Create, "one", "s"));
    let st = env.phase(1, pb::Phase::Ready).await;
    assert_eq!(st.objects.unwrap().total, 3, "the CRD is in the bundle's inventory");
    let (d, generation, crd_uid) = description(sim).expect("the install created the chart's CRD");
    assert_eq!((d.as_str(), generation), ("one", 1));
    let w1 = widget_uid(sim).expect("the custom resource is applied");
    let recs = records(sim);
    assert_eq!((recs[0].0, recs[0].1.as_str()), (1, "deployed"));

    // Upgrade under Create with a changed CRD: the live CRD is not written.
    env.publish(2, &crd_artifact(CrdPolicy::Create, "two", "m"));
    let st = env.phase(2, pb::Phase::Ready).await;
    assert_eq!(st.objects.unwrap().total, 3, "the CRD left alone stays in the inventory");
    assert_eq!(
        description(sim).unwrap(),
        ("one".to_string(), 1, crd_uid.clone()),
        "crds: Create never changes an existing CRD"
    );
    assert_eq!(widget_uid(sim), Some(w1.clone()), "the custom resource is the same object");
    assert_eq!(sim.object("example.com", "widgets", "apps", "w1").unwrap()["spec"]["size"], "m");
    assert_eq!(crd_changes(sim, "DELETED"), 0, "nothing of the CRD or its resources was deleted");
    // A later revision under Create that still has the CRD: still never pruned.
    env.publish(3, &crd_artifact(CrdPolicy::Create, "two", "l"));
    env.phase(3, pb::Phase::Ready).await;
    assert_eq!(description(sim).unwrap(), ("one".to_string(), 1, crd_uid.clone()));
    assert_eq!(widget_uid(sim), Some(w1.clone()));
    assert_eq!(crd_changes(sim, "DELETED"), 0);
    assert!(records(sim).iter().any(|r| r.0 == 3 && r.1 == "deployed"));

    // Deleted out of band: created again (from the chart as it is now).
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(client(sim));
    crds.delete(CRD, &Default::default()).await.unwrap();
    let (d, _, uid) = eventually(30, "the deleted CRD created again", || async {
        description(sim).filter(|(_, _, uid)| *uid != crd_uid)
    })
    .await;
    assert_eq!(d, "two");
    eventually(30, "the custom resource applied again", || async { widget_uid(sim) }).await;

    // CreateReplace: the CRD is updated in place; its custom resource stays.
    let w1 = widget_uid(sim).unwrap();
    env.publish(4, &crd_artifact(CrdPolicy::CreateReplace, "three", "l"));
    env.phase(4, pb::Phase::Ready).await;
    let (d, generation, same_uid) = description(sim).unwrap();
    assert_eq!((d.as_str(), same_uid), ("three", uid));
    assert!(generation >= 2, "updated in place: generation {generation}");
    assert_eq!(widget_uid(sim), Some(w1));

    env.stop().await;
}

/// A hook Job with `ttlSecondsAfterFinished: 0` (ingress-nginx's admission
/// Jobs) is deleted by the TTL-after-finished controller the moment it
/// completes. The agent watches the hook from its creation, so it sees the
/// Job complete (or deleted), and counts it done as Helm does: the release
/// is `deployed`, the Jobs are gone, and both completed before they went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_hook_job_deleted_by_its_ttl_when_it_completes_counts_as_done() {
    let env = Env::start(FLEET).await;
    let sim = &env.sim;
    let ttl_job = |name: &str, events: &str| {
        hook_job(name, events, "")
            .replace("spec:\n  template:", "spec:\n  ttlSecondsAfterFinished: 0\n  template:")
    };
    let pre = format!("{}---\n{}", ttl_job("create-secret", "pre-install"), ttl_job("patch", "post-install"));
    assert!(pre.contains("ttlSecondsAfterFinished: 0"), "{pre}");
    env.publish(1, &helm_artifact("hi", &pre));
    env.phase(1, pb::Phase::Ready).await;
    let recs = records(sim);
    assert_eq!((recs.len(), recs[0].1.as_str()), (1, "deployed"), "{recs:?}");
    let changes = sim.changes(&[("batch", "jobs")]);
    for job in ["create-secret", "patch"] {
        assert!(sim.object("batch", "jobs", "apps", job).is_none(), "{job}: deleted by its TTL");
        let of = |f: &dyn Fn(&kube_sim::Change) -> bool| changes.iter().position(|c| c.name == job && f(c));
        let complete = of(&|c| {
            c.object["status"]["conditions"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["type"] == "Complete" && x["status"] == "True"))
        })
        .unwrap_or_else(|| panic!("{job} completed: {changes:?}"));
        let deleted = of(&|c| c.kind == "DELETED").unwrap_or_else(|| panic!("{job} deleted: {changes:?}"));
        assert!(complete < deleted, "{job}: {changes:?}");
    }
    // The post-install hook ran after the release's object was written.
    assert_eq!(sim.object("", "configmaps", "apps", "web-settings").unwrap()["data"]["k"], "hi");
    env.stop().await;
}
