//! The hub-driven agent (controller path) with a Helm bundle: the release
//! record in the artifact is never applied as an object, the pre-install
//! hook Job runs before the release's objects, Helm's release Secret is
//! written after success, an upgrade is numbered from the existing records
//! (revision 1 superseded, 2 deployed), and a failing pre-upgrade hook is
//! recorded as a `failed` revision without touching the release's objects.

mod common;

use std::time::Duration;

use common::*;
use convoy_agent::{Agent, AgentConfig, KubeSource, Tuning};
use convoy_helm::release::{ReleaseSpec, decode_release};
use convoy_proto::v1 as pb;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const FLEET: &str = "apiVersion: convoy.dev/v1\nkind: GitSource\nmetadata:\n  name: repo\nspec:\n  url: https://git.example/fleet.git\n---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata:\n  name: web\nspec:\n  source: repo\n  path: web\n  prune: true\n  wait: true\n  timeout: 4s\n  targets:\n    - clusterSelector: {}\n";

fn record(greeting: &str) -> String {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_controller_installs_and_upgrades_a_helm_release_with_hooks_and_records() {
    init();
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = convoy_hub::StaticPipeline::new(tmp.path().join("artifacts"));
    let fleet_cfg = convoy_core::config::FleetConfig::parse([("fleet.yaml", FLEET)]).unwrap();
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
    let publish = |generation: u64, bytes: &[u8]| {
        pipeline
            .publish(
                "web",
                "repo",
                "https://git.example/fleet.git",
                &format!("main@sha1:{generation:040x}"),
                bytes,
            )
            .unwrap()
    };
    let pre = hook_job("migrate", "pre-install,pre-upgrade", "");
    publish(1, &helm_artifact("hi", &pre));
    let token = hub
        .create_token(Some("c1"), Default::default(), Duration::from_secs(3600), false)
        .await
        .unwrap()
        .token;

    let sim =
        sim_with(kube_sim::SimConfig { readiness_delay: Duration::from_millis(50), ..Default::default() })
            .await;
    // As with Helm, the release namespace exists before the install.
    let ns: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client(&sim));
    ns.create(&Default::default(), &serde_json::from_value(json!({"metadata": {"name": "apps"}})).unwrap())
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
    let ch = Endpoint::from_shared(hub.endpoint()).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
    let fleet = pb::fleet_client::FleetClient::new(ch);
    let ready = |generation: u64| {
        let fleet = fleet.clone();
        async move {
            eventually(60, &format!("web Ready at generation {generation}"), || {
                let mut f = fleet.clone();
                async move {
                    cell(&mut f)
                        .await
                        .filter(|s| s.phase == pb::Phase::Ready as i32 && s.generation == generation)
                }
            })
            .await
        }
    };

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
    let recs = records(&sim);
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!((recs[0].0, recs[0].1.as_str()), (1, "deployed"));
    assert_eq!(recs[0].2["config"], json!({"greeting": "hi"}));
    assert_eq!(recs[0].2["info"]["description"], "Install complete");
    assert_eq!(recs[0].2["chart"]["metadata"]["name"], "demo");

    // Upgrade: numbered from the existing records.
    publish(2, &helm_artifact("hello", &pre));
    ready(2).await;
    assert_eq!(sim.object("", "configmaps", "apps", "web-settings").unwrap()["data"]["k"], "hello");
    let recs = eventually(10, "two release records", || async {
        let r = records(&sim);
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
    publish(3, &helm_artifact("broken", &stuck));
    let failed = eventually(60, "a failed revision 3", || async {
        records(&sim).into_iter().find(|r| r.0 == 3 && r.1 == "failed")
    })
    .await;
    assert!(
        failed.2["info"]["description"].as_str().unwrap().contains("pre-upgrade hook Job/migrate-stuck"),
        "{}",
        failed.2["info"]
    );
    assert_eq!(sim.object("", "configmaps", "apps", "web-settings").unwrap()["data"]["k"], "hello");
    let st = cell(&mut fleet.clone()).await.unwrap();
    assert_ne!(st.phase, pb::Phase::Ready as i32, "{st:?}");
    // Revision 2 stays the deployed one.
    assert!(records(&sim).iter().any(|r| r.0 == 2 && r.1 == "deployed"));

    shutdown.cancel();
    agent.join().await.unwrap();
    hub.shutdown().await.unwrap();
}
