//! The agent against the real hub (convoy-hub in-process, StaticPipeline):
//! register with a token, receive a signed generation, apply it, report
//! Ready to the hub's fleet view; a new generation prunes; drift is corrected
//! and the event reaches the hub's event log.

mod common;

use std::time::Duration;

use common::*;
use convoy_agent::{Agent, AgentConfig, KubeSource, Tuning};
use convoy_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const FLEET: &str = "apiVersion: convoy.dev/v1\nkind: GitSource\nmetadata:\n  name: repo\nspec:\n  url: https://git.example/fleet.git\n---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata:\n  name: app\nspec:\n  source: repo\n  path: app\n  targetNamespace: apps\n  prune: true\n  wait: true\n  timeout: 30s\n  targets:\n    - clusterSelector: {}\n";

async fn cell(
    fleet: &mut pb::fleet_client::FleetClient<tonic::transport::Channel>,
) -> Option<pb::BundleStatus> {
    let b = fleet
        .get_bundle(pb::GetBundleRequest { name: "app".into(), ..Default::default() })
        .await
        .ok()?
        .into_inner();
    b.clusters.into_iter().find(|c| c.cluster == "c1").and_then(|c| c.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_real_hub_registration_apply_prune_and_drift() {
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
    let v1 = pack(&[("a.yaml", configmap("settings", "1")), ("b.yaml", configmap("extra", "1"))]);
    pipeline
        .publish("app", "repo", "https://git.example/fleet.git", &format!("main@sha1:{:040x}", 1), &v1.bytes)
        .unwrap();
    let token = hub
        .create_token(Some("c1"), Default::default(), Duration::from_secs(3600), false)
        .await
        .unwrap()
        .token;

    let sim =
        sim_with(kube_sim::SimConfig { readiness_delay: Duration::from_millis(50), ..Default::default() })
            .await;
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

    let st = eventually(60, "app Ready at generation 1 in the hub's view", || {
        let mut f = fleet.clone();
        async move { cell(&mut f).await.filter(|s| s.phase == pb::Phase::Ready as i32 && s.generation == 1) }
    })
    .await;
    assert_eq!(st.objects.unwrap().total, 2);
    assert_eq!(sim.object("", "configmaps", "apps", "settings").unwrap()["data"]["k"], "1");

    // A new generation without `extra` prunes it.
    let v2 = pack(&[("a.yaml", configmap("settings", "2"))]);
    pipeline
        .publish("app", "repo", "https://git.example/fleet.git", &format!("main@sha1:{:040x}", 2), &v2.bytes)
        .unwrap();
    eventually(60, "generation 2 Ready", || {
        let mut f = fleet.clone();
        async move { cell(&mut f).await.filter(|s| s.phase == pb::Phase::Ready as i32 && s.generation == 2) }
    })
    .await;
    assert!(sim.object("", "configmaps", "apps", "extra").is_none());
    assert_eq!(sim.object("", "configmaps", "apps", "settings").unwrap()["data"]["k"], "2");

    // Drift outside the agent is put back and reported to the hub.
    let kc = tmp.path().join("kubeconfig");
    sim.write_kubeconfig(&kc).unwrap();
    let out = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["-n", "apps", "patch", "configmap", "settings", "-p", r#"{"data":{"k":"hand-edited"}}"#])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually(30, "drift corrected", || async {
        (sim.object("", "configmaps", "apps", "settings").unwrap()["data"]["k"] == "2").then_some(())
    })
    .await;
    let ev = eventually(30, "DriftCorrected in the hub's event log", || {
        let mut f = fleet.clone();
        async move {
            let evs = f
                .list_events(pb::ListEventsRequest { cluster: "c1".into(), ..Default::default() })
                .await
                .ok()?;
            evs.into_inner().events.into_iter().filter_map(|e| e.event).find(|e| e.reason == "DriftCorrected")
        }
    })
    .await;
    assert_eq!(ev.object, "ConfigMap/apps/settings");
    assert!(ev.message.contains(".data.k"), "{}", ev.message);

    shutdown.cancel();
    agent.join().await.unwrap();
    hub.shutdown().await.unwrap();
}

/// Several hub addresses (hub replicas): the first does not answer, the
/// agent moves on to the next, registers there and reports Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_given_several_hub_addresses_moves_past_one_that_is_down() {
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
    let v1 = pack(&[("a.yaml", configmap("settings", "1"))]);
    pipeline
        .publish("app", "repo", "https://git.example/fleet.git", &format!("main@sha1:{:040x}", 1), &v1.bytes)
        .unwrap();
    let token = hub
        .create_token(Some("c1"), Default::default(), Duration::from_secs(3600), true)
        .await
        .unwrap()
        .token;
    let sim = sim_with(kube_sim::SimConfig::default()).await;
    std::fs::write(tmp.path().join("ca.pem"), &hub.ca_pem).unwrap();
    std::fs::write(tmp.path().join("keys.pem"), &hub.trusted_keys_pem).unwrap();
    std::fs::write(tmp.path().join("token"), &token).unwrap();
    // A port nothing listens on (bound, then released).
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addresses = format!("https://127.0.0.1:{down}, {}", hub.endpoint());
    let mut cfg = AgentConfig::new(&addresses, "c1", tmp.path().join("state"));
    cfg.kube = KubeSource::Client(client(&sim));
    cfg.hub_ca = Some(tmp.path().join("ca.pem"));
    cfg.token_file = Some(tmp.path().join("token"));
    cfg.trusted_keys = vec![tmp.path().join("keys.pem")];
    cfg.tuning = Tuning { reconnect_base: Duration::from_millis(50), ..Tuning::default() };
    let shutdown = CancellationToken::new();
    let agent = Agent::start(cfg, shutdown.clone()).await.unwrap();

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&hub.admin.ca_pem))
        .domain_name(hub.server_name())
        .identity(Identity::from_pem(&hub.admin.cert_pem, &hub.admin.key_pem));
    let ch = Endpoint::from_shared(hub.endpoint()).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
    let fleet = pb::fleet_client::FleetClient::new(ch);
    eventually(60, "app Ready at generation 1 through the second address", || {
        let mut f = fleet.clone();
        async move { cell(&mut f).await.filter(|s| s.phase == pb::Phase::Ready as i32 && s.generation == 1) }
    })
    .await;
    assert_eq!(sim.object("", "configmaps", "apps", "settings").unwrap()["data"]["k"], "1");
    shutdown.cancel();
    agent.join().await.unwrap();
    hub.shutdown().await.unwrap();
}
