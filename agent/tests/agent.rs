//! The agent against a fake hub (in-process tonic server with a test CA) and
//! kube-sim: registration and identity Secret, sync with snapshot/updates,
//! verification refusals, prune, drift correction (also with the hub down),
//! the durable outbox across disconnects, certificate renewal, restart from disk.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::fakehub::FakeHub;
use common::*;
use convoy_agent::{Agent, AgentConfig, KubeSource, RunningAgent, Tuning};
use convoy_artifact::{SigningKey, Statement};
use convoy_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "bootstrap-token-123";

struct Env {
    sim: kube_sim::KubeSim,
    hub: FakeHub,
    key: SigningKey,
    tmp: tempfile::TempDir,
    pubkey: PathBuf,
}

impl Env {
    async fn new(cert_ttl: Duration) -> Env {
        init();
        let sim = sim_with(kube_sim::SimConfig {
            readiness_delay: Duration::from_millis(100),
            ..Default::default()
        })
        .await;
        let hub = FakeHub::start(TOKEN, cert_ttl).await;
        let tmp = tempfile::tempdir().unwrap();
        let key = SigningKey::generate().unwrap();
        let pubkey = write_pub(tmp.path(), &key);
        std::fs::write(tmp.path().join("token"), format!("{TOKEN}\n")).unwrap();
        std::fs::write(tmp.path().join("hub-ca.pem"), &hub.ca.ca_pem).unwrap();
        Env { sim, hub, key, tmp, pubkey }
    }

    fn config(&self) -> AgentConfig {
        let mut cfg = AgentConfig::new(&self.hub.url(), "c1", self.tmp.path().join("state"));
        cfg.kube = KubeSource::Client(client(&self.sim));
        cfg.hub_ca = Some(self.tmp.path().join("hub-ca.pem"));
        cfg.token_file = Some(self.tmp.path().join("token"));
        cfg.trusted_keys = vec![self.pubkey.clone()];
        cfg.metrics_address = Some("127.0.0.1:0".parse().unwrap());
        cfg.tuning = Tuning {
            heartbeat: Duration::from_millis(500),
            reconnect_base: Duration::from_millis(100),
            reconnect_cap: Duration::from_millis(500),
            drift_debounce: Duration::from_millis(200),
            health_recheck: Duration::from_secs(1),
            default_timeout: Duration::from_secs(20),
            retry_base: Duration::from_millis(200),
            retry_cap: Duration::from_secs(2),
            ..Tuning::default()
        };
        cfg
    }

    async fn start(&self, cfg: AgentConfig) -> (RunningAgent, CancellationToken) {
        let token = CancellationToken::new();
        let a = Agent::start(cfg, token.clone()).await.expect("agent starts");
        (a, token)
    }

    /// A signed deployment of `files` for `bundle` at `generation`, served by the hub.
    fn deployment(
        &self,
        bundle: &str,
        generation: u64,
        files: &[(&str, String)],
        opts: pb::ApplyOptions,
    ) -> pb::BundleDeployment {
        let packed = pack(files);
        signed_deployment(&self.hub, &self.key, bundle, generation, packed.bytes, opts)
    }

    fn kubeconfig(&self) -> PathBuf {
        let p = self.tmp.path().join("kubeconfig");
        self.sim.write_kubeconfig(&p).unwrap();
        p
    }
}

fn signed_deployment(
    hub: &FakeHub,
    key: &SigningKey,
    bundle: &str,
    generation: u64,
    bytes: Vec<u8>,
    opts: pb::ApplyOptions,
) -> pb::BundleDeployment {
    let digest = hub.add_artifact(bytes.clone());
    let st = Statement::new(
        bundle,
        "https://git.example/fleet.git",
        format!("main@sha1:{generation:040x}"),
        digest.clone(),
        bytes.len() as u64,
        generation,
    );
    let (stmt, sig) = key.sign_statement(&st).unwrap();
    // Additive proto changes must not break this: keep `..Default::default()`.
    #[allow(clippy::needless_update)]
    pb::BundleDeployment {
        name: bundle.into(),
        statement: stmt,
        signature: sig,
        digest,
        size: bytes.len() as u64,
        generation,
        options: Some(opts),
        ..Default::default()
    }
}

fn opts(ns: &str) -> pb::ApplyOptions {
    pb::ApplyOptions {
        target_namespace: ns.into(),
        prune: true,
        wait: true,
        timeout_seconds: 20,
        ..Default::default()
    }
}

async fn phase_of(hub: &FakeHub, bundle: &str, generation: u64, phase: pb::Phase) -> pb::BundleStatus {
    eventually(60, &format!("{bundle} generation {generation} {phase:?}"), || async {
        hub.status(bundle).filter(|s| s.generation == generation && s.phase == phase as i32)
    })
    .await
}

async fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let out = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("kubectl runs");
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn stop(agent: RunningAgent, token: CancellationToken) {
    token.cancel();
    agent.join().await.expect("agent stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_registers_applies_reports_and_restarts_without_registering_again() {
    let env = Env::new(Duration::from_secs(3600)).await;
    let d = env.deployment(
        "app",
        1,
        &[("cm.yaml", configmap("a", "1")), ("dep.yaml", deployment("web", "nginx:1.27", 1))],
        opts("apps"),
    );
    env.hub.set_desired(vec![d]);
    let (agent, token) = env.start(env.config()).await;
    let st = phase_of(&env.hub, "app", 1, pb::Phase::Ready).await;
    let objs = st.objects.unwrap();
    assert_eq!((objs.total, objs.created, objs.ready), (2, 2, 2), "{st:?}");
    assert_eq!(st.applied_generation, 1);
    assert_eq!(env.hub.state.registrations.load(Ordering::Relaxed), 1);
    let secret =
        env.sim.object("", "secrets", "convoy-system", "convoy-agent-identity").expect("identity Secret");
    assert!(secret["data"]["tls.key"].is_string() && secret["data"]["ca.crt"].is_string());
    assert!(env.hub.events().iter().any(|e| e.reason == "Applied" && e.bundle == "app"));
    assert!(env.sim.object("apps", "deployments", "apps", "web").is_some());

    // /readyz and /metrics.
    let addr = agent.metrics_address.unwrap();
    let metrics = http_get(addr, "/metrics").await;
    assert!(metrics.contains("convoy_agent_hub_connected 1"), "{metrics}");
    assert!(metrics.contains("convoy_agent_applies_total{bundle=\"app\",result=\"success\"} 1"), "{metrics}");
    assert!(metrics.contains("convoy_agent_events_total{bundle=\"app\",reason=\"Applied\"} 1"), "{metrics}");
    assert!(http_get(addr, "/readyz").await.contains("ok"));
    eventually(30, "heartbeats on the idle stream", || async {
        (env.hub.state.heartbeats.load(Ordering::Relaxed) >= 2).then_some(())
    })
    .await;
    stop(agent, token).await;

    // Restart: the identity comes from the Secret, the applied state from disk;
    // the same generation is not applied again.
    env.sim.reset_stats();
    let before = env.hub.state.hellos.lock().len();
    let (agent, token) = env.start(env.config()).await;
    eventually(30, "second Hello", || async { (env.hub.state.hellos.lock().len() > before).then_some(()) })
        .await;
    let hello = env.hub.state.hellos.lock().last().cloned().unwrap();
    assert_eq!(hello.applied.len(), 1);
    assert_eq!(hello.applied[0].generation, 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(env.hub.state.registrations.load(Ordering::Relaxed), 1, "no second registration");
    assert_eq!(
        env.sim.stats().writes,
        0,
        "an unchanged bundle is not re-applied after a restart: {:?}",
        env.sim.stats()
    );
    assert_eq!(env.hub.state.duplicates.load(Ordering::Relaxed), 0);
    stop(agent, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_refuses_wrong_key_replay_tamper_and_broken_yaml_keeping_the_applied_revision() {
    let env = Env::new(Duration::from_secs(3600)).await;
    let good = env.deployment("app", 2, &[("cm.yaml", configmap("a", "2"))], opts("apps"));
    env.hub.set_desired(vec![good.clone()]);
    let (agent, token) = env.start(env.config()).await;
    phase_of(&env.hub, "app", 2, pb::Phase::Ready).await;
    let value = || env.sim.object("", "configmaps", "apps", "a").unwrap()["data"]["k"].clone();
    assert_eq!(value(), "2");

    let stalled = |generation: u64, reason: &'static str| {
        let hub = &env.hub;
        async move {
            let st = phase_of(hub, "app", generation, pb::Phase::Stalled).await;
            assert_eq!(st.applied_generation, 2, "the previous revision stays applied: {st:?}");
            let ready = st.conditions.iter().find(|c| c.r#type == "Ready").unwrap();
            assert_eq!(ready.reason, reason, "{st:?}");
            eventually(20, reason, || async {
                hub.events()
                    .iter()
                    .any(|e| e.reason == reason && e.severity == pb::Severity::Error as i32)
                    .then_some(())
            })
            .await;
            st
        }
    };

    // Signed by a key the agent does not trust.
    let other = SigningKey::generate().unwrap();
    let packed = pack(&[("cm.yaml", configmap("a", "wrong-key"))]);
    env.hub.set_desired(vec![signed_deployment(&env.hub, &other, "app", 3, packed.bytes, opts("apps"))]);
    stalled(3, "SignatureInvalid").await;

    // A replay of an older generation (validly signed).
    let old = env.deployment("app", 1, &[("cm.yaml", configmap("a", "1"))], opts("apps"));
    env.hub.set_desired(vec![old]);
    stalled(1, "GenerationRollback").await;

    // The hub serves bytes that are not the signed artifact.
    let mut tampered = env.deployment("app", 4, &[("cm.yaml", configmap("a", "4"))], opts("apps"));
    let evil = pack(&[("cm.yaml", configmap("a", "evil"))]);
    env.hub.state.artifacts.lock().insert(tampered.digest.clone(), evil.bytes);
    tampered.options.as_mut().unwrap().force = false;
    env.hub.set_desired(vec![tampered]);
    let st = phase_of(&env.hub, "app", 4, pb::Phase::Stalled).await;
    let reason = &st.conditions.iter().find(|c| c.r#type == "Ready").unwrap().reason;
    assert!(reason == "DigestMismatch" || reason == "SizeMismatch", "{st:?}");
    assert_eq!(st.applied_generation, 2);
    assert!(st.message.contains("nothing applied"), "{}", st.message);

    // A broken YAML document: refused whole, naming file and document.
    let broken =
        format!("{}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: [x\n", configmap("b", "5"));
    let raw = raw_targz(&[("ok.yaml", &configmap("c", "5")), ("bad.yaml", &broken)]);
    env.hub.set_desired(vec![signed_deployment(&env.hub, &env.key, "app", 5, raw, opts("apps"))]);
    let st = stalled(5, "ManifestInvalid").await;
    assert!(st.message.contains("bad.yaml") && st.message.contains("document 1"), "{}", st.message);

    assert_eq!(value(), "2", "nothing of the refused revisions was applied");
    assert!(env.sim.object("", "configmaps", "apps", "c").is_none());

    // A good new generation still applies.
    env.hub.set_desired(vec![env.deployment("app", 6, &[("cm.yaml", configmap("a", "6"))], opts("apps"))]);
    phase_of(&env.hub, "app", 6, pb::Phase::Ready).await;
    assert_eq!(value(), "6");
    stop(agent, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_prunes_removed_objects_and_bundles_and_orphans_without_prune() {
    let env = Env::new(Duration::from_secs(3600)).await;
    let a1 = env.deployment(
        "a",
        1,
        &[("x.yaml", configmap("cm-x", "1")), ("y.yaml", configmap("cm-y", "1"))],
        opts("ns-a"),
    );
    let mut o = opts("ns-b");
    o.prune = false;
    let b1 = env.deployment("b", 1, &[("z.yaml", configmap("cm-z", "1"))], o);
    env.hub.set_desired(vec![a1, b1.clone()]);
    let (agent, token) = env.start(env.config()).await;
    phase_of(&env.hub, "a", 1, pb::Phase::Ready).await;
    phase_of(&env.hub, "b", 1, pb::Phase::Ready).await;

    // A new revision without y prunes y.
    let a2 = env.deployment("a", 2, &[("x.yaml", configmap("cm-x", "2"))], opts("ns-a"));
    env.hub.set_desired(vec![a2.clone(), b1]);
    let st = phase_of(&env.hub, "a", 2, pb::Phase::Ready).await;
    assert_eq!(st.objects.unwrap().pruned, 1);
    assert!(env.sim.object("", "configmaps", "ns-a", "cm-y").is_none());

    // Removing bundles from the fleet: a (prune on) is pruned, b (prune off) orphaned.
    env.hub.set_desired(vec![]);
    eventually(30, "a pruned", || async {
        env.sim.object("", "configmaps", "ns-a", "cm-x").is_none().then_some(())
    })
    .await;
    eventually(30, "removed events", || async {
        (env.hub.events().iter().filter(|e| e.reason == "Removed").count() == 2).then_some(())
    })
    .await;
    assert!(env.sim.object("", "configmaps", "ns-b", "cm-z").is_some(), "orphaned, not deleted");
    assert!(env.sim.object("", "configmaps", "convoy-system", "convoy-inventory-a").is_none());
    stop(agent, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_drift_is_corrected_while_the_hub_is_down_and_reported_on_reconnect() {
    let mut env = Env::new(Duration::from_secs(3600)).await;
    let kc = env.kubeconfig();
    env.hub.set_desired(vec![env.deployment(
        "app",
        1,
        &[("dep.yaml", deployment("web", "nginx:1.27", 2))],
        opts("apps"),
    )]);
    let (agent, token) = env.start(env.config()).await;
    phase_of(&env.hub, "app", 1, pb::Phase::Ready).await;

    env.hub.stop().await;
    eventually(20, "hub disconnected", || async { (!env.hub.connected()).then_some(()) }).await;
    kubectl(&kc, &["-n", "apps", "scale", "deployment/web", "--replicas=5"]).await;
    let replicas =
        || env.sim.object("apps", "deployments", "apps", "web").unwrap()["spec"]["replicas"].as_i64();
    eventually(30, "replicas put back", || async { (replicas() == Some(2)).then_some(()) }).await;
    // Deleted outside the agent: re-created.
    kubectl(&kc, &["-n", "apps", "delete", "deployment", "web", "--wait=false"]).await;
    eventually(30, "deployment re-created", || async {
        env.sim
            .object("apps", "deployments", "apps", "web")
            .filter(|d| d["spec"]["replicas"] == 2)
            .map(|_| ())
    })
    .await;

    env.hub.restart().await;
    let ev = eventually(60, "DriftCorrected delivered", || async {
        env.hub
            .events()
            .into_iter()
            .find(|e| e.reason == "DriftCorrected" && e.message.contains(".spec.replicas"))
    })
    .await;
    assert_eq!(ev.object, "Deployment/apps/web");
    assert!(ev.details.get("fields").unwrap().contains(".spec.replicas"));
    eventually(30, "recreation reported", || async {
        env.hub
            .events()
            .iter()
            .any(|e| e.reason == "DriftCorrected" && e.message.contains("(deleted)"))
            .then_some(())
    })
    .await;
    eventually(30, "status counts drift", || async {
        env.hub
            .status("app")
            .filter(|s| s.objects.as_ref().is_some_and(|o| o.drift_corrected >= 2))
            .map(|_| ())
    })
    .await;
    let seqs = env.hub.seqs();
    let mut sorted = seqs.clone();
    sorted.dedup();
    assert_eq!(seqs, sorted, "no seq twice");
    stop(agent, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_detect_only_mode_reports_drift_without_correcting() {
    let env = Env::new(Duration::from_secs(3600)).await;
    let kc = env.kubeconfig();
    let mut o = opts("apps");
    o.drift_mode = pb::DriftMode::Detect as i32;
    env.hub.set_desired(vec![env.deployment("app", 1, &[("cm.yaml", configmap("a", "1"))], o)]);
    let (agent, token) = env.start(env.config()).await;
    phase_of(&env.hub, "app", 1, pb::Phase::Ready).await;
    kubectl(&kc, &["-n", "apps", "patch", "configmap", "a", "-p", r#"{"data":{"k":"changed"}}"#]).await;
    let ev = eventually(30, "DriftDetected", || async {
        env.hub.events().into_iter().find(|e| e.reason == "DriftDetected")
    })
    .await;
    assert_eq!(ev.object, "ConfigMap/apps/a");
    assert!(ev.message.contains(".data.k"), "{}", ev.message);
    eventually(30, "drifted count", || async {
        env.hub.status("app").filter(|s| s.objects.as_ref().is_some_and(|o| o.drifted == 1)).map(|_| ())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.sim.object("", "configmaps", "apps", "a").unwrap()["data"]["k"],
        "changed",
        "not corrected"
    );
    stop(agent, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_outbox_survives_disconnects_without_loss_or_duplicates() {
    let env = Env::new(Duration::from_secs(3600)).await;
    let (agent, token) = env.start(env.config()).await;
    eventually(30, "connected", || async { env.hub.connected().then_some(()) }).await;
    // The hub stores nothing for a while: entries stay in the agent's outbox.
    env.hub.set_acking(false);
    for g in 1..=3u64 {
        env.hub.set_desired(vec![env.deployment(
            "app",
            g,
            &[("cm.yaml", configmap("a", &g.to_string()))],
            opts("apps"),
        )]);
        eventually(30, "applied", || async {
            env.sim
                .object("", "configmaps", "apps", "a")
                .filter(|c| c["data"]["k"].as_str() == Some(g.to_string().as_str()))
                .map(|_| ())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(env.hub.events().is_empty());
    let depth = http_get(agent.metrics_address.unwrap(), "/metrics").await;
    assert!(!depth.contains("convoy_agent_outbox_depth 0"), "{depth}");
    env.hub.drop_streams();
    env.hub.set_acking(true);
    let st = phase_of(&env.hub, "app", 3, pb::Phase::Ready).await;
    assert_eq!(st.applied_generation, 3);
    eventually(30, "three Applied events", || async {
        (env.hub.events().iter().filter(|e| e.reason == "Applied").count() == 3).then_some(())
    })
    .await;
    let seqs = env.hub.seqs();
    assert!(seqs.windows(2).all(|w| w[0].1 < w[1].1), "{seqs:?}");
    eventually(30, "outbox drained", || async {
        http_get(agent.metrics_address.unwrap(), "/metrics")
            .await
            .contains("convoy_agent_outbox_depth 0")
            .then_some(())
    })
    .await;
    stop(agent, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_certificate_is_renewed_and_the_stream_reconnects_with_it() {
    let env = Env::new(Duration::from_secs(6)).await;
    let (agent, token) = env.start(env.config()).await;
    eventually(30, "connected", || async { env.hub.connected().then_some(()) }).await;
    let first = env.sim.object("", "secrets", "convoy-system", "convoy-agent-identity").unwrap();
    eventually(30, "renewed", || async {
        (env.hub.state.renewals.load(Ordering::Relaxed) >= 1).then_some(())
    })
    .await;
    // The renewed certificate is stored once the agent has it.
    let second = eventually(30, "renewed certificate stored", || async {
        env.sim
            .object("", "secrets", "convoy-system", "convoy-agent-identity")
            .filter(|s| s["data"]["tls.crt"] != first["data"]["tls.crt"])
    })
    .await;
    assert_ne!(first["data"]["tls.key"], second["data"]["tls.key"], "a new key with each renewal");
    // The agent goes on working with the renewed certificate.
    let hellos = env.hub.state.hellos.lock().len();
    eventually(30, "reconnected", || async {
        (env.hub.state.hellos.lock().len() > hellos || env.hub.connected()).then_some(())
    })
    .await;
    env.hub.set_desired(vec![env.deployment("app", 1, &[("cm.yaml", configmap("a", "1"))], opts("apps"))]);
    phase_of(&env.hub, "app", 1, pb::Phase::Ready).await;
    assert_eq!(env.hub.state.registrations.load(Ordering::Relaxed), 1);
    stop(agent, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_restart_with_the_hub_down_resumes_from_disk_and_corrects_drift() {
    let mut env = Env::new(Duration::from_secs(3600)).await;
    let kc = env.kubeconfig();
    env.hub.set_desired(vec![env.deployment("app", 1, &[("cm.yaml", configmap("a", "1"))], opts("apps"))]);
    let (agent, token) = env.start(env.config()).await;
    phase_of(&env.hub, "app", 1, pb::Phase::Ready).await;
    stop(agent, token).await;
    env.hub.stop().await;

    // Changed while the agent was down, and again once it runs without a hub.
    kubectl(&kc, &["-n", "apps", "patch", "configmap", "a", "-p", r#"{"data":{"k":"offline-1"}}"#]).await;
    let (agent, token) = env.start(env.config()).await;
    let value = || env.sim.object("", "configmaps", "apps", "a").unwrap()["data"]["k"].clone();
    eventually(30, "corrected after restart", || async { (value() == "1").then_some(()) }).await;
    let addr = agent.metrics_address.unwrap();
    eventually(30, "ready without a hub", || async {
        http_get(addr, "/readyz").await.contains("ok").then_some(())
    })
    .await;
    kubectl(&kc, &["-n", "apps", "patch", "configmap", "a", "-p", r#"{"data":{"k":"offline-2"}}"#]).await;
    eventually(30, "corrected again", || async { (value() == "1").then_some(()) }).await;
    env.hub.restart().await;
    eventually(60, "drift events delivered", || async {
        (env.hub.events().iter().filter(|e| e.reason == "DriftCorrected").count() >= 2).then_some(())
    })
    .await;
    stop(agent, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_depends_on_waits_and_suspend_leaves_the_bundle_alone() {
    let env = Env::new(Duration::from_secs(3600)).await;
    let kc = env.kubeconfig();
    let mut o = opts("apps");
    o.depends_on = vec!["infra".into()];
    let app = env.deployment("app", 1, &[("cm.yaml", configmap("app", "1"))], o);
    env.hub.set_desired(vec![app.clone()]);
    let (agent, token) = env.start(env.config()).await;
    let st = phase_of(&env.hub, "app", 1, pb::Phase::Pending).await;
    assert!(st.message.contains("infra"), "{}", st.message);
    assert!(env.sim.object("", "configmaps", "apps", "app").is_none());
    let infra = env.deployment("infra", 1, &[("cm.yaml", configmap("infra", "1"))], opts("infra"));
    env.hub.set_desired(vec![app.clone(), infra.clone()]);
    phase_of(&env.hub, "app", 1, pb::Phase::Ready).await;

    // Suspended: drift is left alone.
    let mut suspended = app.clone();
    suspended.options.as_mut().unwrap().suspend = true;
    env.hub.set_desired(vec![suspended, infra.clone()]);
    phase_of(&env.hub, "app", 1, pb::Phase::Suspended).await;
    kubectl(&kc, &["-n", "apps", "patch", "configmap", "app", "-p", r#"{"data":{"k":"manual"}}"#]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(env.sim.object("", "configmaps", "apps", "app").unwrap()["data"]["k"], "manual");
    // Resumed: corrected.
    env.hub.set_desired(vec![app, infra]);
    eventually(30, "corrected after resume", || async {
        (env.sim.object("", "configmaps", "apps", "app").unwrap()["data"]["k"] == "1").then_some(())
    })
    .await;
    stop(agent, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_interrupted_download_resumes_from_its_offset() {
    let env = Env::new(Duration::from_secs(3600)).await;
    let packed = pack_dir(&corpus().join("argo-cd/manifests"));
    assert!(packed.bytes.len() > 64 * 1024, "big enough for several chunks: {}", packed.bytes.len());
    *env.hub.state.fail_download_after.lock() = Some(64 * 1024);
    let d = signed_deployment(&env.hub, &env.key, "argo-cd", 1, packed.bytes, opts("argocd"));
    env.hub.set_desired(vec![d]);
    let (agent, token) = env.start(env.config()).await;
    phase_of(&env.hub, "argo-cd", 1, pb::Phase::Ready).await;
    let offsets = env.hub.state.download_offsets.lock().clone();
    assert_eq!(offsets.first(), Some(&0));
    assert!(offsets.iter().skip(1).any(|o| *o >= 64 * 1024), "resumed from the partial file: {offsets:?}");
    stop(agent, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_server_errors_and_latency_are_retried_until_the_bundle_converges() {
    let env = Env::new(Duration::from_secs(3600)).await;
    let files: Vec<(String, String)> =
        (0..12).map(|i| (format!("cm{i}.yaml"), configmap(&format!("cm-{i}"), "v"))).collect();
    let refs: Vec<(&str, String)> = files.iter().map(|(p, c)| (p.as_str(), c.clone())).collect();
    let (agent, token) = env.start(env.config()).await;
    eventually(30, "connected", || async { env.hub.connected().then_some(()) }).await;
    // Most writes fail with 500 for a while, and every request is slow.
    env.sim.faults().set(kube_sim::FaultConfig {
        latency_ms: 30,
        error_rate: 0.95,
        verbs: vec!["patch".into()],
        ..Default::default()
    });
    env.hub.set_desired(vec![env.deployment("app", 1, &refs, opts("apps"))]);
    // The agent reports that it is retrying ...
    eventually(60, "a transient failure", || async {
        env.hub.events().into_iter().find(|e| e.bundle == "app" && e.severity == pb::Severity::Warning as i32)
    })
    .await;
    // ... and converges while half of the writes still fail.
    env.sim.faults().set_error_rate(0.5);
    let st = phase_of(&env.hub, "app", 1, pb::Phase::Ready).await;
    assert_eq!(st.objects.unwrap().total, 12);
    assert!(env.sim.stats().injected_errors > 0);
    let ours = env
        .sim
        .objects("", "configmaps")
        .into_iter()
        .filter(|c| c["metadata"]["labels"]["convoy.dev/bundle"] == "app")
        .count();
    assert_eq!(ours, 12);
    stop(agent, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_lost_state_dir_still_refuses_replays_from_the_cluster_inventory() {
    let env = Env::new(Duration::from_secs(3600)).await;
    env.hub.set_desired(vec![env.deployment("app", 2, &[("cm.yaml", configmap("a", "2"))], opts("apps"))]);
    let (agent, token) = env.start(env.config()).await;
    phase_of(&env.hub, "app", 2, pb::Phase::Ready).await;
    stop(agent, token).await;
    // The pod comes back with an empty state directory (emptyDir) and the hub
    // (or someone impersonating it) offers an older, validly signed generation.
    env.hub.set_desired(vec![env.deployment("app", 1, &[("cm.yaml", configmap("a", "1"))], opts("apps"))]);
    let mut cfg = env.config();
    cfg.state_dir = env.tmp.path().join("fresh-state");
    let (agent, token) = env.start(cfg).await;
    let st = phase_of(&env.hub, "app", 1, pb::Phase::Stalled).await;
    assert_eq!(
        st.conditions.iter().find(|c| c.r#type == "Ready").unwrap().reason,
        "GenerationRollback",
        "{st:?}"
    );
    assert_eq!(env.sim.object("", "configmaps", "apps", "a").unwrap()["data"]["k"], "2");
    stop(agent, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_removed_bundle_keeps_its_generation_floor_in_a_tombstone() {
    let env = Env::new(Duration::from_secs(3600)).await;
    env.hub.set_desired(vec![env.deployment("app", 3, &[("cm.yaml", configmap("a", "3"))], opts("apps"))]);
    let (agent, token) = env.start(env.config()).await;
    phase_of(&env.hub, "app", 3, pb::Phase::Ready).await;
    // The bundle leaves the cluster: pruned, inventory gone, tombstone kept.
    env.hub.set_desired(vec![]);
    eventually(30, "app removed", || async {
        env.sim.object("", "configmaps", "convoy-system", "convoy-inventory-app").is_none().then_some(())
    })
    .await;
    let tomb = env.sim.object("", "configmaps", "convoy-system", "convoy-tombstone-app").expect("tombstone");
    assert_eq!(tomb["data"]["generation"], "3");
    stop(agent, token).await;
    // It comes back with an older, validly signed generation (a replay),
    // even to an agent that lost its state directory: refused.
    env.hub.set_desired(vec![env.deployment("app", 2, &[("cm.yaml", configmap("a", "2"))], opts("apps"))]);
    let mut cfg = env.config();
    cfg.state_dir = env.tmp.path().join("fresh-state");
    let (agent, token) = env.start(cfg).await;
    let st = phase_of(&env.hub, "app", 2, pb::Phase::Stalled).await;
    assert_eq!(
        st.conditions.iter().find(|c| c.r#type == "Ready").unwrap().reason,
        "GenerationRollback",
        "{st:?}"
    );
    assert!(env.sim.object("", "configmaps", "apps", "a").is_none(), "the replay applied nothing");
    // A newer generation is applied as usual.
    env.hub.set_desired(vec![env.deployment("app", 4, &[("cm.yaml", configmap("a", "4"))], opts("apps"))]);
    phase_of(&env.hub, "app", 4, pb::Phase::Ready).await;
    assert_eq!(env.sim.object("", "configmaps", "apps", "a").unwrap()["data"]["k"], "4");
    stop(agent, token).await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Issue 12 items 2-3 through the agent: two bundles declaring one object,
/// a bundle reaching for the agent's identity Secret, and a tenancy rule are
/// each Stalled with the reason named, nothing of them applied, while the
/// owner keeps its object; the takeover annotation moves the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_ownership_reserved_objects_and_tenancy_are_enforced_before_apply() {
    let env = Env::new(Duration::from_secs(3600)).await;
    let shared =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shared\n  namespace: team\ndata:\n  k: \"v\"\n";
    let a1 = env.deployment("a", 1, &[("s.yaml", shared.to_string())], opts("team"));
    env.hub.set_desired(vec![a1.clone()]);
    let (agent, token) = env.start(env.config()).await;
    phase_of(&env.hub, "a", 1, pb::Phase::Ready).await;

    // b declares a's ConfigMap plus one of its own: Stalled, nothing applied.
    let b1 = env.deployment(
        "b",
        1,
        &[("s.yaml", shared.replace("\"v\"", "\"from-b\"")), ("own.yaml", configmap("b-own", "1"))],
        opts("team"),
    );
    // c reaches for the agent's identity Secret.
    let c1 = env.deployment(
        "c",
        1,
        &[(
            "id.yaml",
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: convoy-agent-identity\n  namespace: convoy-system\nstringData:\n  tls.key: stolen\n"
                .to_string(),
        )],
        opts("team"),
    );
    // d may only use namespace `d-*` and ConfigMaps.
    let mut d_opts = opts("elsewhere");
    d_opts.allowed_namespaces = vec!["d-*".into()];
    d_opts.allowed_kinds = vec!["ConfigMap".into()];
    let d1 = env.deployment("d", 1, &[("x.yaml", configmap("d-x", "1"))], d_opts);
    env.hub.set_desired(vec![a1.clone(), b1, c1, d1]);

    let b = phase_of(&env.hub, "b", 1, pb::Phase::Stalled).await;
    assert!(b.message.contains("ConfigMap/team/shared belongs to bundle a"), "{}", b.message);
    assert!(b.conditions.iter().any(|c| c.reason == "OwnershipConflict"), "{:?}", b.conditions);
    let c = phase_of(&env.hub, "c", 1, pb::Phase::Stalled).await;
    assert!(c.conditions.iter().any(|c| c.reason == "Reserved"), "{:?}", c.conditions);
    let d = phase_of(&env.hub, "d", 1, pb::Phase::Stalled).await;
    assert!(d.conditions.iter().any(|c| c.reason == "NotAllowed"), "{:?}", d.conditions);
    assert!(
        d.message.contains("namespace elsewhere is not in the bundle's allowedNamespaces"),
        "{}",
        d.message
    );

    let cm = env.sim.object("", "configmaps", "team", "shared").expect("a's ConfigMap");
    assert_eq!(cm["data"]["k"], "v", "b did not overwrite a's object");
    assert_eq!(cm["metadata"]["labels"]["convoy.dev/bundle"], "a");
    assert!(env.sim.object("", "configmaps", "team", "b-own").is_none(), "nothing of b applied");
    assert!(env.sim.object("", "configmaps", "elsewhere", "d-x").is_none(), "nothing of d applied");
    let id = env.sim.object("", "secrets", "convoy-system", "convoy-agent-identity").expect("identity");
    assert!(id["data"]["tls.key"].as_str().is_some_and(|k| !k.is_empty()) && id["stringData"].is_null());
    assert!(env.sim.object("", "configmaps", "convoy-system", "convoy-inventory-b").is_none());

    // With the takeover annotation b takes the object; a, whose next
    // revision drops it, no longer prunes it.
    let taken = shared.replace(
        "  namespace: team\n",
        "  namespace: team\n  annotations:\n    convoy.dev/takeover-from: a\n",
    );
    let b2 = env.deployment(
        "b",
        2,
        &[("s.yaml", taken.replace("\"v\"", "\"from-b\"")), ("own.yaml", configmap("b-own", "1"))],
        opts("team"),
    );
    env.hub.set_desired(vec![a1, b2.clone()]);
    phase_of(&env.hub, "b", 2, pb::Phase::Ready).await;
    let cm = env.sim.object("", "configmaps", "team", "shared").unwrap();
    assert_eq!(cm["data"]["k"], "from-b");
    assert_eq!(cm["metadata"]["labels"]["convoy.dev/bundle"], "b");
    let a2 = env.deployment("a", 2, &[("other.yaml", configmap("a-other", "1"))], opts("team"));
    env.hub.set_desired(vec![a2, b2]);
    let st = phase_of(&env.hub, "a", 2, pb::Phase::Ready).await;
    assert_eq!(st.objects.unwrap().pruned, 0, "a no longer holds the taken object");
    assert!(env.sim.object("", "configmaps", "team", "shared").is_some(), "not pruned by its old bundle");
    stop(agent, token).await;
}

/// A Deployment whose selector is `app: <app>` (template labels to match).
fn deployment_selecting(name: &str, app: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: 1\n  selector:\n    matchLabels:\n      app: {app}\n  template:\n    metadata:\n      labels:\n        app: {app}\n    spec:\n      containers:\n      - name: app\n        image: nginx:1.27\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_immutable_selector_stalls_and_force_recreates() {
    let env = Env::new(Duration::from_secs(3600)).await;
    let files = |app: &str| {
        vec![("cm.yaml", configmap("settings", app)), ("web.yaml", deployment_selecting("web", app))]
    };
    env.hub.set_desired(vec![env.deployment("app", 1, &files("web"), opts("apps"))]);
    let (agent, token) = env.start(env.config()).await;
    phase_of(&env.hub, "app", 1, pb::Phase::Ready).await;
    let uid = |sim: &kube_sim::KubeSim| {
        sim.object("apps", "deployments", "apps", "web").unwrap()["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let first_uid = uid(&env.sim);

    // Generation 2 changes the selector: the API server refuses it in place.
    env.hub.set_desired(vec![env.deployment("app", 2, &files("web-v2"), opts("apps"))]);
    let st = phase_of(&env.hub, "app", 2, pb::Phase::Stalled).await;
    let ready = st.conditions.iter().find(|c| c.r#type == "Ready").unwrap();
    assert_eq!(ready.reason, "Immutable", "{st:?}");
    assert!(
        st.message.contains("Deployment/apps/web") && st.message.contains("spec.selector"),
        "{}",
        st.message
    );
    assert!(st.message.contains("stage 3 workloads failed"), "the failed stage is named: {}", st.message);
    assert_eq!(st.applied_generation, 1, "the applied revision does not change: {st:?}");
    eventually(20, "an Immutable event", || async {
        env.hub.events().iter().any(|e| e.reason == "Immutable").then_some(())
    })
    .await;
    let live = env.sim.object("apps", "deployments", "apps", "web").unwrap();
    assert_eq!(live["spec"]["selector"]["matchLabels"]["app"], "web", "the Deployment is not half-changed");
    assert_eq!(uid(&env.sim), first_uid);

    // With force the Deployment is deleted, awaited and created again.
    let mut forced = opts("apps");
    forced.force = true;
    env.hub.set_desired(vec![env.deployment("app", 3, &files("web-v2"), forced)]);
    phase_of(&env.hub, "app", 3, pb::Phase::Ready).await;
    let live = env.sim.object("apps", "deployments", "apps", "web").unwrap();
    assert_eq!(live["spec"]["selector"]["matchLabels"]["app"], "web-v2");
    assert_ne!(uid(&env.sim), first_uid, "a new object");
    let ev = eventually(20, "a Recreated event", || async {
        env.hub.events().into_iter().find(|e| e.reason == "Recreated")
    })
    .await;
    assert_eq!(ev.object, "Deployment/apps/web", "{ev:?}");
    assert_eq!(ev.details.get("fields").map(String::as_str), Some("spec.selector"), "{ev:?}");
    assert_eq!(ev.severity, pb::Severity::Warning as i32);
    stop(agent, token).await;
}

/// A Job with `ttlSecondsAfterFinished` (ingress-nginx's static manifest has
/// two): the cluster deletes it once it completes. The bundle is Ready (the
/// Job counts as done, not NotFound), its deletion is not drift (creating it
/// again would run it again), and the next revision applies it again, as
/// `kubectl apply` and `helm upgrade` do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_job_deleted_by_its_ttl_counts_as_done_and_is_not_run_again() {
    let env = Env::new(Duration::from_secs(3600)).await;
    let kc = env.kubeconfig();
    let job = "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: migrate\nspec:\n  ttlSecondsAfterFinished: 0\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: m\n        image: busybox:1.36\n".to_string();
    let files =
        |greeting: &str| vec![("job.yaml", job.clone()), ("cm.yaml", configmap("settings", greeting))];
    env.hub.set_desired(vec![env.deployment("jobs", 1, &files("hi"), opts("apps"))]);
    let (agent, token) = env.start(env.config()).await;
    let st = phase_of(&env.hub, "jobs", 1, pb::Phase::Ready).await;
    assert_eq!(st.objects.unwrap().total, 2);
    let created = || env.sim.changes(&[("batch", "jobs")]).iter().filter(|c| c.kind == "ADDED").count();
    eventually(30, "the Job completed and deleted by its TTL", || async {
        (created() == 1 && env.sim.object("batch", "jobs", "apps", "migrate").is_none()).then_some(())
    })
    .await;

    // A drift the agent must correct, made after the Job was gone: once it
    // is corrected, the Job's deletion (seen before it) was judged too.
    kubectl(&kc, &["-n", "apps", "patch", "configmap", "settings", "-p", r#"{"data":{"k":"edited"}}"#]).await;
    eventually(30, "the ConfigMap put back", || async {
        env.hub
            .events()
            .into_iter()
            .find(|e| e.reason == "DriftCorrected" && e.object == "ConfigMap/apps/settings")
    })
    .await;
    assert_eq!(created(), 1, "the Job was not created again");
    assert!(env.sim.object("batch", "jobs", "apps", "migrate").is_none());
    let drift: Vec<_> = env
        .hub
        .events()
        .into_iter()
        .filter(|e| e.reason.starts_with("Drift") && e.object.contains("Job"))
        .collect();
    assert!(drift.is_empty(), "a Job gone after it finished is not drift: {drift:?}");
    // The periodic health check counts it done: the bundle stays Ready.
    let st = env.hub.status("jobs").unwrap();
    assert_eq!((st.generation, st.phase), (1, pb::Phase::Ready as i32), "{st:?}");

    // The next revision applies it again (it runs again), and is Ready.
    env.hub.set_desired(vec![env.deployment("jobs", 2, &files("hello"), opts("apps"))]);
    phase_of(&env.hub, "jobs", 2, pb::Phase::Ready).await;
    assert_eq!(created(), 2, "applied again by the next revision");
    stop(agent, token).await;
}
