//! The reliability suite (docs/reliability.md): scripted fault scenarios at
//! a size CI can afford, each checking that the fleet recovers and that
//! nothing was lost, stored twice or shown before it was durable.

use std::path::PathBuf;
use std::time::Duration;

use convoy_e2e::fleet::{all_ready, cell_ready_at};
use convoy_e2e::{ClusterSpec, Fleet, FleetOptions, HubMode, HubRunner, eventually};
use convoy_proto::v1 as pb;
use convoy_testsupport::TestDir;

const DEPLOYMENT: &str = "apps/web/base/deployment.yaml";
const SERVICE: &str = "apps/web/base/service.yaml";
const IMAGE: &str = "ghcr.io/stefanprodan/podinfo:6.7.0";

fn convoy_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_convoy-e2e-convoy"))
}

fn staging_only() -> Vec<ClusterSpec> {
    vec![ClusterSpec::new("staging", "env=staging,region=eu")]
}

/// The bundles that target `staging` (the others target no cluster here).
const STAGING_BUNDLES: [&str; 2] = ["infra", "web-staging"];

/// Wait until every bundle staging gets is Ready there; returns them.
async fn wait_staging_ready(fleet: &Fleet) -> Vec<pb::BundleView> {
    let mut out = Vec::new();
    for name in STAGING_BUNDLES {
        out.push(fleet.wait_bundle(name, 120, &format!("{name} Ready on staging"), all_ready).await);
    }
    out
}

fn bundle_ref(name: &str) -> pb::ObjectRef {
    pb::ObjectRef { kind: pb::ObjectKind::Bundle as i32, name: name.into() }
}

/// `Applied` events the hub stored for `bundle` on `cluster`, by generation.
async fn applied_generations(fleet: &Fleet, cluster: &str, bundle: &str) -> Vec<String> {
    let mut v: Vec<String> = fleet
        .events(cluster)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| e.event)
        .filter(|e| e.bundle == bundle && e.reason == "Applied")
        .map(|e| e.details.get("generation").cloned().unwrap_or_default())
        .collect();
    v.sort();
    v
}

/// kube-sim answers 500 and 429 to a third of the agent's requests with
/// 50 ms of added latency while a commit rolls out; then the API server is
/// paused and every watch dropped while a second commit is pushed. Both
/// generations become Ready, each is applied once (one `Applied` event per
/// generation), and the hub holds exactly the events the agent sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_kube_api_errors_latency_dropped_watches_and_pause() {
    let fleet = Fleet::start(FleetOptions {
        clusters: staging_only(),
        readiness_delay: Duration::from_millis(100),
        poll_interval: "1h".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let before = wait_staging_ready(&fleet).await;
    let gen0 = before.iter().find(|b| b.name == "web-staging").unwrap().generation;
    let staging = fleet.cluster("staging");
    let faults = staging.sim.faults();

    // 1. Errors, throttling and latency during a rollout.
    staging.sim.reset_stats();
    faults.set_error_rate(0.2);
    faults.set_throttle_rate(0.15);
    faults.set_latency(Duration::from_millis(50));
    // The rates are random: an apply of few requests can draw none of them.
    // The first two requests fail whatever the draw.
    faults.fail_next(2);
    fleet.repo.replace(DEPLOYMENT, IMAGE, "ghcr.io/stefanprodan/podinfo:6.7.1").unwrap();
    fleet.repo.commit("web 6.7.1").unwrap();
    let c1 = fleet.push().await.unwrap();
    let b = fleet.wait_rolled_out("web-staging", &c1, 120).await;
    assert_eq!(b.generation, gen0 + 1);
    let injected = staging.sim.stats().injected_errors;
    assert!(injected > 0, "the faults were hit: {injected} injected errors");
    faults.clear();

    // 2. A paused API server with every watch dropped while a commit arrives.
    faults.pause();
    faults.drop_watches();
    fleet.repo.replace(DEPLOYMENT, "podinfo:6.7.1", "podinfo:6.7.2").unwrap();
    fleet.repo.commit("web 6.7.2").unwrap();
    let c2 = fleet.push().await.unwrap();
    fleet
        .wait_bundle("web-staging", 60, "the hub built the second commit", |b| b.generation == gen0 + 2)
        .await;
    // Paused: nothing can be applied (the image is the old one) and the
    // cell is not Ready at the new generation.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(staging.deployment_image("web", "web").unwrap().ends_with(":6.7.1"));
    let b = fleet.bundle("web-staging").await.unwrap();
    assert!(!b.clusters.iter().any(|c| cell_ready_at(c, gen0 + 2)), "not Ready while paused: {b:?}");
    faults.resume();
    let b = fleet.wait_rolled_out("web-staging", &c2, 120).await;
    assert!(all_ready(&b));
    assert!(staging.deployment_image("web", "web").unwrap().ends_with(":6.7.2"));

    // Nothing applied twice, nothing lost.
    fleet.assert_hub_holds_what_agents_sent(60).await;
    let applied = applied_generations(&fleet, "staging", "web-staging").await;
    let mut want: Vec<String> = [gen0, gen0 + 1, gen0 + 2].iter().map(|g| g.to_string()).collect();
    want.sort();
    assert_eq!(applied, want, "one Applied event per generation");
    fleet.shutdown().await;
}

/// The hub's data dir on a 24 MiB tmpfs made by the test, filled to
/// ENOSPC. A commit pushed meanwhile cannot be fetched or built: the source
/// reports the failure (Ready=False, failures counted) and no new
/// generation is signed or shown; operator writes keep their answer
/// (success only if durable, else an error, never a hang) and the hub
/// process keeps serving. When space returns, a reconcile builds the commit,
/// it rolls out, an operator write made after recovery survives SIGKILL and
/// restart, and the agent's events sent meanwhile are all stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_full_disk_on_the_hub_data_dir_fails_writes_cleanly_then_recovers() {
    let mut fleet = Fleet::start(FleetOptions {
        clusters: staging_only(),
        hub: HubMode::Process(convoy_bin()),
        hub_data_tmpfs: Some(24 << 20),
        poll_interval: "1h".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let before = wait_staging_ready(&fleet).await;
    let gen0 = before.iter().find(|b| b.name == "web-staging").unwrap().generation;
    let (filler, bytes) = fleet.hub.tmpfs().unwrap().fill("filler").unwrap();
    assert!(bytes > 0, "the tmpfs had room to fill");

    // A commit while the disk is full: the fetch/build fails visibly.
    fleet.repo.replace(DEPLOYMENT, IMAGE, "ghcr.io/stefanprodan/podinfo:6.7.1").unwrap();
    fleet.repo.commit("web 6.7.1").unwrap();
    let commit = fleet.push().await.unwrap();
    let source = eventually(30, "the source reports the failed fetch", || async {
        let s = fleet.admin().list_sources(pb::ListSourcesRequest::default()).await.ok()?.into_inner();
        let s = s.sources.into_iter().find(|s| s.name == "fleet")?;
        (s.failures > 0).then_some(s)
    })
    .await;
    let ready = source.conditions.iter().find(|c| c.r#type == "Ready").expect("a Ready condition");
    eprintln!("source on a full disk: {ready:?}");
    assert_ne!(ready.status, "True", "a failed fetch is not Ready: {ready:?}");
    assert!(!ready.message.is_empty(), "the failure says why: {ready:?}");
    assert_ne!(convoy_e2e::commit_of(&source.revision), commit, "the new commit was not resolved");
    assert_eq!(fleet.bundle("web-staging").await.unwrap().generation, gen0, "no generation signed");

    // Operator writes: durable success or a clean error, never a hang.
    let r =
        tokio::time::timeout(Duration::from_secs(20), fleet.admin().suspend(bundle_ref("monitoring"))).await;
    match r {
        Ok(Ok(_)) => {
            assert!(fleet.bundle("monitoring").await.unwrap().suspended, "a reported write is visible")
        }
        Ok(Err(status)) => {
            eprintln!("suspend on a full disk: {status:?}");
            assert!(!fleet.bundle("monitoring").await.unwrap().suspended, "a failed write is not shown");
        }
        Err(_) => panic!("a write on a full disk hung for 20 s"),
    }
    assert!(fleet.hub.exited().is_none(), "the hub survives a full disk");
    assert!(fleet.hub_cluster("staging").await.unwrap().cluster.unwrap().connected);

    // Space returns: the commit is built and rolls out.
    std::fs::remove_file(&filler).unwrap();
    fleet.reconcile().await.unwrap();
    eventually(30, "Suspend succeeds once space returns", || async {
        fleet.admin().suspend(bundle_ref("monitoring")).await.ok()
    })
    .await;
    fleet.wait_rolled_out("web-staging", &commit, 120).await;
    assert_eq!(fleet.bundle("web-staging").await.unwrap().generation, gen0 + 1);

    fleet.hub.kill().unwrap();
    fleet.hub.restart().await.unwrap();
    assert!(fleet.bundle("monitoring").await.unwrap().suspended, "the write after recovery is durable");
    fleet.admin().resume(bundle_ref("monitoring")).await.unwrap();
    wait_staging_ready(&fleet).await;
    fleet.assert_hub_holds_what_agents_sent(60).await;
    fleet.shutdown().await;
}

/// A hub whose `state.redb` is corrupted (its header overwritten) refuses
/// to start with an error naming the store; it does not start empty, and
/// the file is left as it was for the operator (restore a backup).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_corrupted_state_file_is_refused_not_reset() {
    convoy_e2e::init();
    let dir = TestDir::new("convoy-rel-redb-").unwrap();
    let mut hub = HubRunner::start(dir.path(), HubMode::Process(convoy_bin())).await.unwrap();
    let mut admin = hub.admin().await.unwrap();
    admin
        .create_token(pb::CreateTokenRequest {
            cluster: "edge".into(),
            ttl_seconds: 3600,
            ..Default::default()
        })
        .await
        .unwrap();
    hub.shutdown().await;
    let state = hub.data_dir.join("state.redb");
    let mut bytes = std::fs::read(&state).unwrap();
    assert!(bytes.len() > 4096, "a state file to corrupt");
    for b in &mut bytes[..4096] {
        *b = 0xA5;
    }
    std::fs::write(&state, &bytes).unwrap();

    let err = hub.restart().await.expect_err("a hub with a corrupted state file must not start");
    let text = format!("{err:#}");
    eprintln!("{text}");
    assert!(text.contains("exited at start"), "it stops by itself with an error: {text}");
    assert!(
        text.to_lowercase().contains("state") || text.contains("redb"),
        "the error names the store: {text}"
    );
    assert_eq!(
        std::fs::read(&state).unwrap(),
        bytes,
        "the corrupted file is left untouched (no silent reset)"
    );
    let others: Vec<_> = std::fs::read_dir(&hub.data_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".redb") && n != "state.redb")
        .collect();
    assert!(others.is_empty(), "no fresh store beside it: {others:?}");
}

/// A commit changes two objects of `web-staging` (the Deployment's image and
/// an annotation on the Service). The real `convoy-agent run` process is
/// SIGKILLed as soon as the first of them shows the new content (one object
/// at a time, kube-sim adding 300 ms per request: the inventory, written
/// after the objects, still records the previous generation, which the test
/// asserts), then restarted on the same state dir. The hub
/// never shows that generation Ready before the restarted agent finished
/// it; afterwards it is Ready with the new image, and the inventory
/// ConfigMap records exactly the bundle's objects live in the cluster at
/// that generation and revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_agent_killed_mid_apply_restarts_with_a_consistent_inventory() {
    use std::process::{Command, Stdio};

    use convoy_testsupport::ProcessGuard;
    use kube_sim::{KubeSim, SimConfig};

    let fleet =
        Fleet::start(FleetOptions { clusters: Vec::new(), poll_interval: "1h".into(), ..Default::default() })
            .await
            .unwrap();
    let dir = fleet.root().join("agent-process");
    std::fs::create_dir_all(&dir).unwrap();
    let sim = KubeSim::start(SimConfig {
        readiness_delay: Duration::from_millis(500),
        name: "staging".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let kc = dir.join("kubeconfig");
    sim.write_kubeconfig(&kc).unwrap();
    let token = fleet
        .admin()
        .create_token(pb::CreateTokenRequest {
            cluster: "staging".into(),
            labels: [("env", "staging"), ("region", "eu")].map(|(k, v)| (k.into(), v.into())).into(),
            ttl_seconds: 3600,
            single_use: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let token_file = dir.join("token");
    std::fs::write(&token_file, token).unwrap();
    let mut starts = 0;
    let mut spawn_agent = || {
        starts += 1;
        let log = std::fs::File::create(dir.join(format!("agent-{starts}.log"))).unwrap();
        ProcessGuard::spawn(
            "convoy-agent run",
            Command::new(env!("CARGO_BIN_EXE_convoy-e2e-agent"))
                .arg("run")
                .args(["--hub-address", &fleet.hub.endpoint()])
                .arg("--hub-ca")
                .arg(fleet.hub.ca_file())
                .arg("--token-file")
                .arg(&token_file)
                .args(["--cluster-name", "staging"])
                .arg("--trusted-key")
                .arg(fleet.hub.trusted_keys_file())
                .arg("--kubeconfig")
                .arg(&kc)
                .arg("--state-dir")
                .arg(dir.join("state"))
                .args(["--metrics-address", "127.0.0.1:0", "--reconnect-max", "1s", "--health-recheck", "1s"])
                .env("CONVOY_LOG", "info")
                // One object at a time: the kill lands between two writes.
                .env("CONVOY_APPLY_CONCURRENCY", "1")
                .env_remove("CONVOY_TRUSTED_KEYS")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        )
        .unwrap()
    };
    let mut agent = spawn_agent();
    let before = wait_staging_ready(&fleet).await;
    let gen0 = before.iter().find(|b| b.name == "web-staging").unwrap().generation;

    sim.faults().set_latency(Duration::from_millis(300));
    fleet.repo.replace(DEPLOYMENT, IMAGE, "ghcr.io/stefanprodan/podinfo:6.7.1").unwrap();
    fleet
        .repo
        .replace(SERVICE, "  name: web\n", "  name: web\n  annotations:\n    convoy.test/rev: \"2\"\n")
        .unwrap();
    fleet.repo.commit("web 6.7.1, service annotated").unwrap();
    let commit = fleet.push().await.unwrap();
    // Observe the cluster every 2 ms; kill the agent as soon as one of the
    // two changed objects shows the new generation's content.
    let state = || {
        let image = sim.object("apps", "deployments", "web", "web").unwrap()["spec"]["template"]["spec"]
            ["containers"][0]["image"]
            .as_str()
            .map(|i| i.ends_with(":6.7.1"))
            .unwrap_or(false);
        let svc = sim.object("", "services", "web", "web").unwrap()["metadata"]["annotations"]["convoy.test/rev"]
            == "2";
        let inv = sim.object("", "configmaps", "convoy-system", "convoy-inventory-web-staging").unwrap()["data"]
            ["generation"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        (image, svc, inv)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let st = state();
        if st.0 || st.1 {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "the new generation was never applied");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    agent.kill().unwrap();
    eprintln!(
        "killed with deployment updated={} service updated={} inventory generation={}",
        seen.0, seen.1, seen.2
    );
    assert_eq!(seen.2, gen0.to_string(), "the inventory was not yet written for the new generation");
    let b = fleet.bundle("web-staging").await.unwrap();
    assert_eq!(b.generation, gen0 + 1, "the hub signed the new generation");
    assert!(!b.clusters.iter().any(|c| cell_ready_at(c, gen0 + 1)), "not Ready mid-apply: {b:?}");
    drop(agent);

    sim.faults().clear();
    let _agent = spawn_agent();
    let b = fleet.wait_rolled_out("web-staging", &commit, 120).await;
    assert!(all_ready(&b));
    let image =
        sim.object("apps", "deployments", "web", "web").unwrap()["spec"]["template"]["spec"]["containers"][0]
            ["image"]
            .clone();
    assert_eq!(image, "ghcr.io/stefanprodan/podinfo:6.7.1");

    let inv =
        sim.object("", "configmaps", "convoy-system", "convoy-inventory-web-staging").expect("an inventory");
    assert_eq!(inv["data"]["generation"], (gen0 + 1).to_string(), "{inv}");
    assert!(inv["data"]["revision"].as_str().unwrap().contains(&commit), "{inv}");
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(inv["data"]["objects"].as_str().unwrap()).unwrap();
    let mut listed: Vec<String> = entries
        .iter()
        .map(|e| match e["ns"].as_str() {
            Some(ns) => format!("{}/{ns}/{}", e["k"].as_str().unwrap(), e["n"].as_str().unwrap()),
            None => format!("{}/{}", e["k"].as_str().unwrap(), e["n"].as_str().unwrap()),
        })
        .collect();
    listed.sort();
    let live = convoy_e2e::cluster::bundle_objects(&sim, "web-staging");
    assert!(!live.is_empty());
    assert_eq!(listed, live, "the inventory lists exactly the bundle's live objects");
    let applied = applied_generations(&fleet, "staging", "web-staging").await;
    assert!(applied.contains(&(gen0 + 1).to_string()), "the restarted agent reported the apply: {applied:?}");
    fleet.shutdown().await;
    sim.shutdown().await;
}

/// Peak resident memory (VmHWM) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The number of agents in the reconnect herd (CI size).
const HERD: usize = 100;

/// A reconnect herd at CI size: 100 clusters (a kube-sim and a real agent
/// each) hold one small bundle; the `convoy hub` process is SIGKILLed and
/// restarted, and every agent reconnects at once. All come back connected
/// and Ready at the same generation, and the hub holds exactly the events
/// each agent sent (none lost, none twice). The restarted hub's peak RSS is
/// printed (docs/reliability.md states it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_reconnect_herd_after_a_hub_restart() {
    let files = vec![(
        "tiny/configmap.yaml".to_string(),
        b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: tiny\n  namespace: default\ndata:\n  k: v\n"
            .to_vec(),
    )];
    let bundles = "apiVersion: convoy.dev/v1\nkind: Bundle\nmetadata:\n  name: tiny\nspec:\n  source: fleet\n  path: tiny\n  targets:\n    - clusterSelector: {}\n".to_string();
    let clusters = (0..HERD).map(|i| ClusterSpec::new(&format!("c{i:03}"), "env=herd")).collect();
    let mut fleet = Fleet::start(FleetOptions {
        clusters,
        hub: HubMode::Process(convoy_bin()),
        readiness_delay: Duration::ZERO,
        poll_interval: "1h".into(),
        files,
        bundles_yaml: bundles,
        ..Default::default()
    })
    .await
    .unwrap();
    // Converged with every agent registered (the view lists only the clusters
    // registered so far, so a late registration would converge early).
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let before = loop {
        let b = fleet.wait_converged(120).await;
        if b[0].clusters.len() == HERD || std::time::Instant::now() > deadline {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(before[0].clusters.len(), HERD);
    let generation = before[0].generation;

    fleet.hub.kill().unwrap();
    eventually(30, "every agent saw the hub go", || async {
        fleet.clusters.iter().all(|c| !c.agent_connected()).then_some(())
    })
    .await;
    let t = std::time::Instant::now();
    fleet.hub.restart().await.unwrap();
    eventually(60, "every agent reconnected", || async {
        fleet.clusters.iter().all(|c| c.agent_connected()).then_some(())
    })
    .await;
    let after = fleet.wait_converged(60).await;
    let back = t.elapsed();
    assert_eq!(after[0].generation, generation, "the restarted hub kept the generation");
    assert!(after[0].clusters.iter().all(|c| cell_ready_at(c, generation)));
    for c in &fleet.clusters {
        assert!(fleet.hub_cluster(&c.name).await.unwrap().cluster.unwrap().connected, "{}", c.name);
    }
    fleet.assert_hub_holds_what_agents_sent(60).await;
    let peak = peak_rss_kib(fleet.hub.pid().unwrap());
    eprintln!(
        "reconnect herd: {HERD} agents back and Ready {:.1} s after the restart began; hub peak RSS {:.1} MiB",
        back.as_secs_f64(),
        peak as f64 / 1024.0
    );
    assert!(peak > 0);
    fleet.shutdown().await;
}

/// How long the silent partition lasts: several times the keepalive bound.
const PARTITION: Duration = Duration::from_secs(10);

/// A silent partition (no RST; the proxy holds the sockets and passes
/// nothing, like dropped packets) between staging's agent and the hub, for
/// longer than the agent's keepalive (1 s ping, 2 s timeout). The agent
/// notices within the keepalive bound, not at the end of the partition;
/// meanwhile it corrects drift made by hand on its own; when the partition
/// ends it reconnects, and the hub holds every status and event the agent
/// recorded meanwhile (none lost, none stored twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_silent_partition_longer_than_the_keepalive() {
    let mut fleet =
        Fleet::start(FleetOptions { clusters: staging_only(), proxies: true, ..Default::default() })
            .await
            .unwrap();
    wait_staging_ready(&fleet).await;
    let tuning = convoy_agent::Tuning {
        keepalive_interval: Duration::from_secs(1),
        keepalive_timeout: Duration::from_secs(2),
        ..convoy_e2e::cluster::test_tuning()
    };
    fleet.cluster_mut("staging").restart_agent_with(tuning).await.unwrap();
    let st = fleet.cluster("staging");
    eventually(30, "staging's agent reconnected", || async {
        (st.agent_connected() && st.outbox_depth() == 0).then_some(())
    })
    .await;
    // The restarted agent counts its events from zero: compare with what the
    // hub stores from here on.
    let hub_before = convoy_e2e::fleet::event_counts(&fleet.events("staging").await.unwrap());
    assert!(st.agent_event_counts().is_empty(), "an unchanged agent restart records nothing");
    let proxy = st.proxy.as_ref().unwrap();
    let accepted = proxy.accepted();

    proxy.stall();
    let t = std::time::Instant::now();
    eventually(15, "the agent noticed the silent partition", || async {
        (!st.agent_connected()).then_some(())
    })
    .await;
    let noticed = t.elapsed();
    assert!(noticed < PARTITION / 2, "noticed only after {noticed:?}");

    // Drift by hand while partitioned: the agent corrects it alone.
    st.kubectl_ok(&["-n", "web", "scale", "deployment", "web", "--replicas=4"]).await.unwrap();
    eventually(30, "staging's agent corrected the drift on its own", || async {
        let d = st.object("apps", "deployments", "web", "web")?;
        (d["spec"]["replicas"] == 1).then_some(())
    })
    .await;
    eventually(10, "the correction waits in the outbox", || async { (st.outbox_depth() > 0).then_some(()) })
        .await;
    let rest = PARTITION.saturating_sub(t.elapsed());
    tokio::time::sleep(rest).await; // the partition's length, not a wait for an outcome
    assert!(!st.agent_connected(), "no byte passed: the agent cannot be connected");
    proxy.restore();

    eventually(30, "the agent reconnected after the partition", || async {
        (st.agent_connected() && st.outbox_depth() == 0).then_some(())
    })
    .await;
    assert!(proxy.accepted() > accepted, "a new connection was made");
    let evs = fleet.events("staging").await.unwrap();
    assert!(
        evs.iter()
            .filter_map(|e| e.event.as_ref())
            .any(|e| e.reason == "DriftCorrected" && e.object == "Deployment/web/web"),
        "{evs:?}"
    );
    let b = fleet.bundle("web-staging").await.unwrap();
    let cell = b.clusters.iter().find(|c| c.cluster == "staging").unwrap();
    assert!(cell_ready_at(cell, b.generation), "{cell:?}");
    assert!(cell.status.as_ref().unwrap().objects.unwrap().drift_corrected >= 1, "{cell:?}");
    // None lost, none twice: what the hub stored since the restart equals
    // what the agent recorded.
    let agent = st.agent_event_counts();
    let hub_after = convoy_e2e::fleet::event_counts(&fleet.events("staging").await.unwrap());
    let mut stored = hub_after.clone();
    for (k, n) in &hub_before {
        *stored.entry(k.clone()).or_default() -= n;
    }
    stored.retain(|_, n| *n > 0);
    assert_eq!(stored, agent, "hub events since the restart {hub_after:?} - {hub_before:?} != agent events");
    eprintln!(
        "silent partition: the agent noticed after {:.1} s (keepalive 1 s + 2 s)",
        noticed.as_secs_f64()
    );
    fleet.shutdown().await;
}

/// Protocol-level agents writing into the hub process at once (each
/// outbox entry one event; the hub stores them through its group-commit
/// writer and acks only after the commit).
const WRITERS: usize = 40;
/// Events each writer sends at most (under the per-stream event burst, so
/// no rate limit interferes).
const WRITES_EACH: u64 = 400;

/// `kill -9` of the hub process while 40 agents stream events into its
/// group-commit writer (bursts of 8 every 40 ms each), at an instant when
/// sent entries are unacknowledged (their commits queued or running). After a restart on the same data dir, each agent's stream
/// reports a stored seq at least as high as the last ack it received
/// (nothing acknowledged is lost); each agent re-sends its outbox from a
/// few entries *below* that seq (as after a lost ack), and the hub then
/// holds every entry exactly once, in order (nothing stored twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_hub_killed_during_group_commits_loses_no_ack_and_stores_nothing_twice() {
    use convoy_e2e::wire::{WireAgent, event, stored_seqs, token};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    convoy_e2e::init();
    let dir = TestDir::new("group-commit-kill").unwrap();
    let mut hub = HubRunner::start(dir.path(), HubMode::Process(convoy_bin())).await.unwrap();
    let tok = token(&hub).await.unwrap();
    let mut agents = Vec::new();
    for i in 0..WRITERS {
        agents.push(WireAgent::register(&hub, &tok, &format!("w{i:02}")).await.unwrap());
    }
    // Every writer streams events; a reader per stream records the acks.
    let mut progress = Vec::new();
    let mut tasks = Vec::new();
    for a in &agents {
        let s = a.connect(&hub, 1).await.unwrap();
        let (sent, acked) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(s.acked)));
        let (tx, mut rx) = (s.tx, s.rx);
        let st = sent.clone();
        tasks.push(tokio::spawn(async move {
            for seq in 1..=WRITES_EACH {
                if tx.send(event(seq, "Wire")).await.is_err() {
                    break;
                }
                st.store(seq, Ordering::SeqCst);
                // Bursts of 8, so that commits queue up behind each other.
                if seq % 8 == 0 {
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
            }
            // Hold the stream open until the hub goes.
            tx.closed().await;
        }));
        let ak = acked.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(m)) = rx.message().await {
                if let Some(pb::hub_message::Msg::Ack(a)) = m.msg {
                    ak.fetch_max(a.acked_seq, Ordering::SeqCst);
                }
            }
        }));
        progress.push((sent, acked));
    }
    // Writes are flowing everywhere: kill the hub at an instant when sent
    // entries are still unacknowledged (their commit queued or running).
    let in_flight = eventually(60, "every writer has acks, and writes in flight", || async {
        let in_flight: u64 = progress
            .iter()
            .map(|(s, a)| s.load(Ordering::SeqCst).saturating_sub(a.load(Ordering::SeqCst)))
            .sum();
        (progress.iter().all(|(_, a)| a.load(Ordering::SeqCst) >= 40) && in_flight > 0).then_some(in_flight)
    })
    .await;
    hub.kill().unwrap();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    // Final: acks can only have come from the hub before it died.
    let acked: Vec<u64> = progress.iter().map(|(_, a)| a.load(Ordering::SeqCst)).collect();
    let sent: Vec<u64> = progress.iter().map(|(s, _)| s.load(Ordering::SeqCst)).collect();
    assert!(sent.iter().all(|s| *s < WRITES_EACH), "the kill came after the writers finished: {sent:?}");

    hub.restart().await.unwrap();
    let mut stored_above_ack = 0;
    for (i, a) in agents.iter().enumerate() {
        let mut s = a.reconnect(&hub, 1, Duration::from_secs(30)).await.unwrap();
        assert!(
            s.acked >= acked[i],
            "{}: the hub stored up to {} but had acked {}",
            a.name,
            s.acked,
            acked[i]
        );
        assert!(s.acked <= sent[i], "{}: stored {} of {} sent", a.name, s.acked, sent[i]);
        stored_above_ack += s.acked - acked[i];
        // Re-send the outbox from a few entries below the stored seq.
        let from = s.acked.saturating_sub(5).max(1);
        for seq in from..=sent[i] {
            s.send_event(seq, "Wire").await.unwrap();
        }
        s.until_ack(sent[i], Duration::from_secs(30)).await.unwrap();
        let seqs = stored_seqs(&hub, &a.name, "Wire").await.unwrap();
        let want: Vec<u64> = (1..=sent[i]).collect();
        assert_eq!(seqs, want, "{}: every entry exactly once, in order", a.name);
    }
    eprintln!(
        "group-commit kill: {WRITERS} writers, {} entries sent, {in_flight} unacknowledged at the kill, {stored_above_ack} of them found stored after the restart",
        sent.iter().sum::<u64>()
    );
    hub.shutdown().await;
}

/// The size of the protocol-level reconnect herd (`CONVOY_HERD` overrides:
/// docs/reliability.md gives the 5,000 command).
fn wire_herd() -> usize {
    std::env::var("CONVOY_HERD").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

/// A reconnect herd of protocol-level agents (1,000 in CI): each holds a
/// Sync stream to the `convoy hub` process with one acknowledged outbox
/// entry; the hub is SIGKILLed, each agent records a second entry while it
/// is gone, and on restart all reconnect at once (full-jitter backoff, as
/// agents do; the hub's per-address handshake cap makes some retry). All
/// come back, the hub shows every cluster connected, and each cluster's two
/// entries are stored exactly once. The restarted hub's peak RSS is printed
/// (docs/reliability.md states it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_reconnect_herd_of_protocol_agents() {
    use convoy_e2e::wire::{WireAgent, stored_seqs, token};
    convoy_e2e::init();
    let n = wire_herd();
    let dir = TestDir::new("wire-herd").unwrap();
    let mut hub = HubRunner::start(dir.path(), HubMode::Process(convoy_bin())).await.unwrap();
    let tok = token(&hub).await.unwrap();
    // Register and connect, 32 at a time; each stores entry 1.
    let mut agents = Vec::with_capacity(n);
    let mut sessions = Vec::with_capacity(n);
    let started = std::time::Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(32) {
        let joins = chunk.iter().map(|i| {
            let (hub, tok) = (&hub, &tok);
            async move {
                let a = WireAgent::register(hub, tok, &format!("h{i:05}")).await?;
                let mut s = a.connect(hub, 1).await?;
                s.send_event(1, "Herd").await?;
                s.until_ack(1, Duration::from_secs(30)).await?;
                anyhow::Ok((a, s))
            }
        });
        for r in futures::future::join_all(joins).await {
            let (a, s) = r.unwrap();
            agents.push(a);
            sessions.push(s);
        }
    }
    let setup = started.elapsed();
    hub.kill().unwrap();
    drop(sessions);
    let t = std::time::Instant::now();
    hub.restart().await.unwrap();
    let restarted = t.elapsed();
    let pid = hub.pid().unwrap();
    // All at once.
    let reconnects = agents.iter().map(|a| {
        let hub = &hub;
        async move {
            let mut s = a.reconnect(hub, 1, Duration::from_secs(120)).await?;
            anyhow::ensure!(s.acked >= 1, "{}: entry 1 was acked before the kill but not stored", a.name);
            s.send_event(2, "Herd").await?;
            s.until_ack(2, Duration::from_secs(60)).await?;
            anyhow::Ok(s)
        }
    });
    let back: Vec<_> = futures::future::join_all(reconnects).await.into_iter().map(|r| r.unwrap()).collect();
    let all_back = t.elapsed();
    assert_eq!(back.len(), n);
    let mut admin = hub.admin().await.unwrap();
    let clusters =
        admin.list_clusters(pb::ListClustersRequest::default()).await.unwrap().into_inner().clusters;
    assert_eq!(clusters.len(), n);
    let offline: Vec<&str> = clusters.iter().filter(|c| !c.connected).map(|c| c.name.as_str()).collect();
    assert!(offline.is_empty(), "not connected after the herd: {offline:?}");
    let peak = peak_rss_kib(pid);
    for a in &agents {
        assert_eq!(stored_seqs(&hub, &a.name, "Herd").await.unwrap(), vec![1, 2], "{}", a.name);
    }
    eprintln!(
        "protocol herd: {n} agents set up in {:.1} s; hub restarted in {:.1} s; all {n} reconnected and acked in {:.1} s after the restart began; restarted hub peak RSS {:.1} MiB",
        setup.as_secs_f64(),
        restarted.as_secs_f64(),
        all_back.as_secs_f64(),
        peak as f64 / 1024.0
    );
    assert!(peak > 0);
    drop(back);
    hub.shutdown().await;
}

/// A ConfigMap named `name` in `default` holding `kib` KiB of incompressible
/// text (so the artifact is about as large).
fn big_configmap(name: &str, kib: usize) -> String {
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let data: String =
        (0..kib * 1024).map(|_| alphabet[rand::random_range(0..alphabet.len())] as char).collect();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: default\ndata:\n  blob: {data}\n"
    )
}

/// `kill -9` of the hub process while staging's agent downloads a 2 MiB
/// artifact through a proxy that paces the hub's bytes to 256 KiB/s. At the
/// kill the download is under way (bytes flowing) and unfinished: nothing of
/// the new generation is applied. After the restart the agent downloads
/// again, verifies the digest and signature, and applies the generation
/// once: the objects hold the new content, exactly one `Applied` event for
/// it, and the hub holds exactly the events the agent sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_hub_killed_during_an_artifact_download() {
    let mut files = vec![("big/cm-0.yaml".to_string(), big_configmap("big-0", 1).into_bytes())];
    files.extend(convoy_e2e::examples::fleet_files());
    let bundles = convoy_e2e::examples::bundles_yaml()
        + "\n---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata:\n  name: big\nspec:\n  source: fleet\n  path: big\n  targets:\n    - clusterSelector: {matchLabels: {env: staging}}\n";
    let mut fleet = Fleet::start(FleetOptions {
        clusters: staging_only(),
        hub: HubMode::Process(convoy_bin()),
        proxies: true,
        readiness_delay: Duration::ZERO,
        poll_interval: "1h".into(),
        files,
        bundles_yaml: bundles,
        ..Default::default()
    })
    .await
    .unwrap();
    let b0 = fleet.wait_bundle("big", 120, "big Ready on staging", all_ready).await;
    let gen0 = b0.generation;

    // 4 x 512 KiB of incompressible data: a 2 MiB artifact.
    for i in 0..4 {
        fleet.repo.write(&format!("big/cm-{i}.yaml"), &big_configmap(&format!("big-{i}"), 512)).unwrap();
    }
    fleet.repo.commit("big").unwrap();
    let st = &fleet.clusters[0]; // staging (a field borrow: the hub is killed meanwhile)
    let proxy = st.proxy.as_ref().unwrap();
    proxy.throttle(256 * 1024);
    let before = proxy.bytes_down();
    fleet.push().await.unwrap();
    eventually(60, "the agent is downloading the new artifact", || async {
        (proxy.bytes_down() > before + 384 * 1024).then_some(())
    })
    .await;
    let got = proxy.bytes_down() - before;
    fleet.hub.kill().unwrap();
    assert!(got < 2 * 1024 * 1024, "the download finished before the kill ({got} bytes)");
    // Nothing of the new generation is applied.
    eventually(30, "the agent saw the hub go", || async { (!st.agent_connected()).then_some(()) }).await;
    let cm = st.object("", "configmaps", "default", "big-0").unwrap();
    assert_eq!(cm["data"]["blob"].as_str().unwrap().len(), 1024, "the old content is in place");
    assert!(st.object("", "configmaps", "default", "big-3").is_none());

    proxy.throttle(0);
    fleet.hub.restart().await.unwrap();
    let b = fleet
        .wait_bundle("big", 120, "big Ready at the new generation", |b| {
            b.generation > gen0 && b.clusters.iter().all(|c| cell_ready_at(c, b.generation))
        })
        .await;
    assert_eq!(b.generation, gen0 + 1, "the restarted hub kept the signed generation");
    for i in 0..4 {
        let cm = st.object("", "configmaps", "default", &format!("big-{i}")).expect("applied");
        assert_eq!(cm["data"]["blob"].as_str().unwrap().len(), 512 * 1024, "big-{i}");
    }
    let applied = applied_generations(&fleet, "staging", "big").await;
    let new = (gen0 + 1).to_string();
    assert_eq!(applied.iter().filter(|g| **g == new).count(), 1, "applied once: {applied:?}");
    fleet.assert_hub_holds_what_agents_sent(60).await;
    eprintln!("artifact download cut by the kill after {} KiB", got / 1024);
    fleet.shutdown().await;
}
