//! Several hub replicas on one etcd prefix (feature `etcd`, real etcd on
//! loopback): what one replica commits reaches the agents and queries of
//! every other, through each replica's etcd change feed.
#![cfg(feature = "etcd")]

mod common;
mod etcd_server;

use std::path::Path;
use std::time::Duration;

use common::*;
use convoy_hub::config::StoreType;
use convoy_hub::pipeline::SourcePipeline;
use convoy_hub::{Hub, HubConfig, HubHandle, HubOptions, StaticPipeline};
use convoy_proto::v1 as pb;

/// A replica on `etcd`; `shared` is the first replica's data dir, whose CA
/// and signing key every other replica uses (like the chart's Secrets).
async fn replica(
    dir: &Path,
    etcd: &str,
    shared: Option<&Path>,
) -> (HubHandle, std::sync::Arc<StaticPipeline>) {
    replica_with(dir, etcd, shared, FLEET, 10).await
}

/// [`replica`] with a fleet of its own and a lease TTL (seconds).
async fn replica_with(
    dir: &Path,
    etcd: &str,
    shared: Option<&Path>,
    fleet_text: &str,
    lease_ttl: u64,
) -> (HubHandle, std::sync::Arc<StaticPipeline>) {
    replica_opts(dir, etcd, shared, fleet_text, lease_ttl, None, 10_000).await
}

/// A replica on its own clock (`None`: the system clock), told etcd's
/// `--max-txn-ops` (`store.maxTxnOps`).
async fn replica_opts(
    dir: &Path,
    etcd: &str,
    shared: Option<&Path>,
    fleet_text: &str,
    lease_ttl: u64,
    clock: Option<convoy_core::clock::SharedClock>,
    max_txn_ops: usize,
) -> (HubHandle, std::sync::Arc<StaticPipeline>) {
    init();
    let pipeline = StaticPipeline::new(dir.join("artifacts"));
    let mut cfg = HubConfig::local(dir.join("data"));
    cfg.certificates.cluster_ttl = convoy_core::duration::HumanDuration::from_secs(3600);
    cfg.store.type_ = StoreType::Etcd;
    cfg.store.endpoints = vec![etcd.to_string()];
    cfg.store.prefix = "/ha/".into();
    cfg.store.lease_ttl = convoy_core::duration::HumanDuration::from_secs(lease_ttl);
    cfg.store.max_txn_ops = max_txn_ops;
    if let Some(s) = shared {
        cfg.tls.ca_cert_file = Some(s.join("ca.crt"));
        cfg.tls.ca_key_file = Some(s.join("ca.key"));
        cfg.signing.key_file = Some(s.join(convoy_artifact::PRIVATE_KEY_FILE));
    }
    let hub = Hub::start(
        cfg,
        HubOptions { pipeline: Some(pipeline.clone()), fleet: Some(fleet(fleet_text)), clock },
    )
    .await
    .unwrap();
    (hub, pipeline)
}

/// Open `id`'s Sync stream on `hub`, wait for `web` generation 1 and report it
/// applied and Ready (seq 1, acknowledged).
async fn report_web_applied(hub: &HubHandle, id: &AgentIdentity) -> Stream {
    let (mut s, _, snap) = open(hub, id, 1).await.unwrap();
    if !snap.bundles.iter().any(|d| d.name == "web" && d.generation == 1) {
        s.until_generation("web", 1).await;
    }
    let applied = pb::BundleStatus {
        bundle: "web".into(),
        generation: 1,
        applied_generation: 1,
        phase: pb::Phase::Ready as i32,
        ..Default::default()
    };
    s.tx.send(pb::AgentMessage {
        msg: Some(convoy_proto::v1::agent_message::Msg::Status(pb::StatusReport {
            seq: 1,
            status: Some(applied),
        })),
    })
    .await
    .unwrap();
    s.until_ack(1).await;
    s
}

fn status_on(hub: &HubHandle, cluster: &str, bundle: &str) -> Option<u64> {
    let view = hub.state().view();
    let s = view.clusters.get(cluster)?.shared.statuses();
    s.get(bundle).map(|s| s.status.generation)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_on_one_replica_reaches_agents_and_queries_on_the_other() {
    let etcd = etcd_server::Server::start();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, pa) = replica(da.path(), &etcd.url, None).await;
    let (b, pb_b) = replica(db.path(), &etcd.url, Some(&da.path().join("data"))).await;

    // A token created on B registers on A; the registered cluster is known on B.
    let labels = [("env".to_string(), "prod".to_string())].into_iter().collect();
    let t = b.create_token(Some("c1"), labels, Duration::from_secs(600), true).await.unwrap();
    let c1 = eventually(|| {
        let (a, token) = (&a, t.token.clone());
        async move { register_with(a, &token, "c1", &[("env", "prod")]).await.ok() }
    })
    .await;
    eventually(|| async { b.state().view().clusters.contains_key("c1").then_some(()) }).await;
    // Single use holds across replicas: the same token fails on B.
    let again = register_with(&b, &t.token, "c1", &[("env", "prod")]).await;
    assert!(again.is_err(), "a single-use token worked twice on two replicas");

    // The agent is connected to B; the build happens on A only.
    let (mut s, _, snap) = open(&b, &c1, 1).await.unwrap();
    assert!(snap.bundles.is_empty());
    pa.publish("web", "repo", "https://git.example/fleet.git", "main@sha1:aaaa", b"one").unwrap();
    let d = s.until_generation("web", 1).await;
    // A published its view after its commit: B's agent may have been faster.
    let on_a = eventually(|| async { a.state().view().records.get("web").cloned() }).await;
    assert_eq!(
        (d.digest.as_str(), d.statement.as_slice()),
        (on_a.digest.as_str(), on_a.statement.as_slice())
    );
    // B never built it: it fetches the bytes from A (over mTLS, checked
    // against the digest) and serves the agent's download.
    assert!(pb_b.artifact_path(&d.digest).is_none(), "B's pipeline never had the artifact");
    let mut ag = agent_client(&b, &c1).await;
    let mut chunks = ag
        .download_artifact(pb::DownloadArtifactRequest { digest: d.digest.clone(), offset: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(c) = chunks.message().await.unwrap() {
        got.extend_from_slice(&c.data);
    }
    assert_eq!(got, b"one");
    // A digest the cluster is not targeted by stays refused on B.
    let denied = ag
        .download_artifact(pb::DownloadArtifactRequest {
            digest: format!("sha256:{}", "0".repeat(64)),
            offset: 0,
        })
        .await;
    assert_eq!(denied.err().map(|e| e.code()), Some(tonic::Code::PermissionDenied));
    pa.publish("web", "repo", "https://git.example/fleet.git", "main@sha1:bbbb", b"two").unwrap();
    s.until_generation("web", 2).await;

    // A status stored by B (which holds the stream) is seen by queries on A;
    // its event is read from the store by any replica.
    s.send_status(1, "web", 2, pb::Phase::Ready).await;
    s.send_event(2, "web", "Applied").await;
    s.until_ack(2).await;
    eventually(|| async { (status_on(&a, "c1", "web") == Some(2)).then_some(()) }).await;
    let mut fleet_a = admin(&a).await;
    let evs = fleet_a
        .list_events(pb::ListEventsRequest { cluster: "c1".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(evs.iter().filter(|e| e.event.as_ref().unwrap().reason == "Applied").count(), 1);

    // An operator change on A (labels) re-targets the agent on B.
    fleet_a
        .set_cluster_labels(pb::SetClusterLabelsRequest {
            name: "c1".into(),
            labels: [("env".to_string(), "dev".to_string())].into_iter().collect(),
        })
        .await
        .unwrap();
    s.until_removed("web").await;

    // A suspension on B is in force on A.
    b.state().set_suspended("db".into(), true).await.unwrap();
    eventually(|| async { a.state().view().suspended.contains("db").then_some(()) }).await;

    // Revoked on A: the stream on B closes.
    fleet_a.revoke_cluster(pb::RevokeClusterRequest { name: "c1".into() }).await.unwrap();
    tokio::time::timeout(WAIT, async { while let Ok(Some(_)) = s.rx.message().await {} })
        .await
        .expect("the stream on B closes once A revoked the cluster");

    // Generations stayed monotonic on both.
    assert_eq!(a.state().view().records["web"].generation, 2);
    assert_eq!(b.state().view().records["web"].generation, 2);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// An agent whose replica goes away moves to another one: what the first
/// stored is never stored twice, what it did not is stored once, and
/// queries on a third replica see each event exactly once (the outbox seq
/// of the cluster lives in etcd, read by whichever replica the agent is on).
/// Admin certificates are recorded and revoked through the store: one
/// replica's record is honoured on the other, and a revocation made on one
/// replica is refused on the other once its change feed delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_certificate_revoked_on_one_replica_is_refused_on_the_other() {
    let etcd = etcd_server::Server::start();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, _pa) = replica(da.path(), &etcd.url, None).await;
    let (b, _pb) = replica(db.path(), &etcd.url, Some(&da.path().join("data"))).await;
    let (cert, key) = (b.admin.cert_pem.clone(), b.admin.key_pem.clone());
    // B recorded its admin certificate after A loaded its state: A learns it
    // from the change feed and honours it.
    let on_a = || async {
        let mut c = pb::fleet_client::FleetClient::new(channel(&a, Some((&cert, &key))).await);
        c.list_clusters(pb::ListClustersRequest::default()).await
    };
    eventually(|| async { on_a().await.ok() }).await;
    // Revoked on B, by name, with B's admin token.
    let token = b.admin.token.clone();
    let mut by_token = pb::fleet_client::FleetClient::with_interceptor(
        channel(&b, None).await,
        move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
            Ok(r)
        },
    );
    by_token
        .revoke_admin(pb::RevokeAdminRequest { name: "admin".into(), serial: String::new() })
        .await
        .unwrap();
    // A refuses it too.
    let e = eventually(|| async { on_a().await.err() }).await;
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("revoked"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_moving_to_another_replica_stores_each_status_and_event_once() {
    let etcd = etcd_server::Server::start();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, pa) = replica(dirs[0].path(), &etcd.url, None).await;
    let shared = dirs[0].path().join("data");
    let (b, _) = replica(dirs[1].path(), &etcd.url, Some(&shared)).await;
    let (c, _) = replica(dirs[2].path(), &etcd.url, Some(&shared)).await;
    let c1 = register(&a, "c1", &[("env", "prod")]).await;
    for r in [&b, &c] {
        eventually(|| async { r.state().view().clusters.contains_key("c1").then_some(()) }).await;
    }
    pa.publish("web", "repo", "https://git.example/fleet.git", "main@sha1:aaaa", b"one").unwrap();

    eventually(|| async { b.state().view().records.contains_key("web").then_some(()) }).await;
    let (mut s, acked, snap) = open(&b, &c1, 7).await.unwrap();
    assert_eq!(acked, 0);
    assert_eq!(snap.bundles.iter().map(|b| b.generation).collect::<Vec<_>>(), vec![1]);
    for seq in 1..=5 {
        s.send_event(seq, "web", &format!("E{seq}")).await;
    }
    s.until_ack(5).await;
    // Sent, and the replica goes away before the agent hears any ack.
    s.send_status(6, "web", 1, pb::Phase::Ready).await;
    for seq in 7..=8 {
        s.send_event(seq, "web", &format!("E{seq}")).await;
    }
    b.shutdown().await.unwrap();
    drop(s);

    // On C: the stream resumes where etcd says; the agent replays from its
    // last ack (6..), and C stores only what B did not.
    let (mut s, acked, snap) = open(&c, &c1, 7).await.unwrap();
    assert!((5..=8).contains(&acked), "C resumes at what B stored: {acked}");
    assert_eq!(snap.bundles.iter().map(|b| b.generation).collect::<Vec<_>>(), vec![1]);
    s.send_status(6, "web", 1, pb::Phase::Ready).await;
    for seq in 7..=10 {
        s.send_event(seq, "web", &format!("E{seq}")).await;
    }
    s.until_ack(10).await;

    let mut fleet_a = admin(&a).await;
    let evs = fleet_a
        .list_events(pb::ListEventsRequest { cluster: "c1".into(), limit: 100, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    let mut reasons: Vec<String> = evs
        .iter()
        .filter_map(|e| e.event.as_ref().map(|e| e.reason.clone()))
        .filter(|r| r.starts_with('E'))
        .collect();
    reasons.sort_by_key(|r| r[1..].parse::<u32>().unwrap());
    let want: Vec<String> = [1, 2, 3, 4, 5, 7, 8, 9, 10].iter().map(|n| format!("E{n}")).collect();
    assert_eq!(reasons, want, "every event exactly once, across two replicas");
    eventually(|| async { (status_on(&a, "c1", "web") == Some(1)).then_some(()) }).await;
    // Generations stayed where they were on every replica.
    for r in [&a, &c] {
        assert_eq!(r.state().view().records["web"].generation, 1);
    }
    a.shutdown().await.unwrap();
    c.shutdown().await.unwrap();
}

/// etcd at its default limits (128 operations per transaction) and a hub
/// told so (`store.maxTxnOps: 128`): an agent's burst of reports, which
/// its session gathers while a commit is in flight (up to 1,024 entries,
/// far more than 128 keys), is stored in batches that fit: every entry is
/// acknowledged on the one stream (a refused commit would close it), every
/// event is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_burst_is_stored_within_etcds_default_limits() {
    let etcd = etcd_server::Server::start_with_default_limits(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (hub, p) = replica_opts(dir.path(), &etcd.url, None, FLEET, 10, None, 128).await;
    let c1 = register(&hub, "c1", &[("env", "prod")]).await;
    p.publish("web", "repo", "https://git.example/fleet.git", "main@sha1:aaaa", b"one").unwrap();
    eventually(|| async { hub.state().view().records.contains_key("web").then_some(()) }).await;
    let (mut s, _, _) = open(&hub, &c1, 1).await.unwrap();
    for seq in 1..=800u64 {
        if seq % 4 == 0 {
            s.send_event(seq, "web", &format!("E{seq}")).await;
        } else {
            s.send_status(seq, "web", 1, pb::Phase::Ready).await;
        }
    }
    s.until_ack(800).await;
    let mut fleet = admin(&hub).await;
    let evs = fleet
        .list_events(pb::ListEventsRequest { cluster: "c1".into(), limit: 1000, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    let stored = evs.iter().filter(|e| e.event.as_ref().is_some_and(|e| e.reason.starts_with('E'))).count();
    assert_eq!(stored, 200, "every event stored once");
    assert_eq!(status_on(&hub, "c1", "web"), Some(1));
    hub.shutdown().await.unwrap();
}

/// `web` rolled out in two waves: `eu` (auto), then `us` behind the gate
/// `GATE` (replaced); no soak.
const ROLLOUT_FLEET: &str = concat!(
    repo_and_web!(),
    r#"  rollout:
    waves:
      - {name: eu, selector: {matchLabels: {region: eu}}}
      - {name: us, selector: {matchLabels: {region: us}}, gate: GATE}
"#
);

/// The rollout fleet with wave `us` gated by `gate` (`auto` or `approval`).
fn rollout_fleet(gate: &str) -> String {
    ROLLOUT_FLEET.replace("GATE", gate)
}

/// An agent's status of `bundle` at `generation` and `digest` (what the
/// rollout compares with what it gave the cluster).
async fn report(s: &Stream, seq: u64, bundle: &str, generation: u64, digest: &str, phase: pb::Phase) {
    use convoy_proto::v1::agent_message::Msg as In;
    let status = pb::BundleStatus {
        bundle: bundle.into(),
        generation,
        digest: digest.into(),
        phase: phase as i32,
        message: format!("seq {seq}"),
        ..Default::default()
    };
    s.tx.send(pb::AgentMessage { msg: Some(In::Status(pb::StatusReport { seq, status: Some(status) })) })
        .await
        .unwrap();
}

/// The generation of `bundle` a replica gives `cluster` now.
fn given(hub: &HubHandle, cluster: &str, bundle: &str) -> Option<u64> {
    let view = hub.state().view();
    let d = view.clusters.get(cluster)?.shared.desired();
    d.bundles.get(bundle).map(|d| d.record.generation)
}

fn rollout_status(hub: &HubHandle, bundle: &str) -> Option<String> {
    hub.state().view().rollouts.get(bundle).map(|r| r.state.status.name().to_string())
}

/// The hub events of `bundle` with `reason`, read from the store (any replica).
async fn hub_events(hub: &HubHandle, bundle: &str, reason: &str) -> Vec<String> {
    let mut f = admin(hub).await;
    f.list_events(pb::ListEventsRequest { bundle: bundle.into(), limit: 1000, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .filter_map(|e| e.event)
        .filter(|e| e.reason == reason)
        .map(|e| e.message)
        .collect()
}

/// Two replicas and two clusters whose agents are connected to B, in two
/// waves; `web` has generation 1 everywhere, Ready, and A leads (it holds
/// the `leader` lock and the source's lock, so it also signs).
struct RolloutSetup {
    a: HubHandle,
    b: HubHandle,
    pa: std::sync::Arc<StaticPipeline>,
    eu: Stream,
    us: Stream,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn rollout_setup(etcd_a: &str, etcd_b: &str, gate: &str, lease_ttl: u64) -> RolloutSetup {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let text = rollout_fleet(gate);
    let (a, pa) = replica_with(da.path(), etcd_a, None, &text, lease_ttl).await;
    eventually(|| async { a.leadership().is_leader().then_some(()) }).await;
    let (b, _) = replica_with(db.path(), etcd_b, Some(&da.path().join("data")), &text, lease_ttl).await;
    assert!(!b.leadership().is_leader(), "A holds the leader lock");
    let c_eu = register(&a, "eu1", &[("env", "prod"), ("region", "eu")]).await;
    let c_us = register(&a, "us1", &[("env", "prod"), ("region", "us")]).await;
    eventually(|| async { (b.state().view().clusters.len() == 2).then_some(()) }).await;
    pa.publish("web", "repo", "https://git.example/fleet.git", "main@sha1:aaaa", b"one").unwrap();
    eventually(|| async { b.state().view().records.contains_key("web").then_some(()) }).await;
    // B published generation 1 before its view: the snapshots hold it.
    let (mut eu, _, snap) = open(&b, &c_eu, 1).await.unwrap();
    let (mut us, _, snap_us) = open(&b, &c_us, 1).await.unwrap();
    let g1 =
        snap.bundles.iter().find(|d| d.name == "web" && d.generation == 1).cloned().expect("web 1 on eu1");
    assert!(snap_us.bundles.iter().any(|d| d.name == "web" && d.generation == 1), "web 1 on us1");
    report(&eu, 1, "web", 1, &g1.digest, pb::Phase::Ready).await;
    report(&us, 1, "web", 1, &g1.digest, pb::Phase::Ready).await;
    eu.until_ack(1).await;
    us.until_ack(1).await;
    RolloutSetup { a, b, pa, eu, us, _dirs: (da, db) }
}

/// Rollouts on several replicas: the leader (A) runs the state machine;
/// its records reach B through the change feed, so an agent connected to B
/// gets the wave's generation, `GetRollout` on B shows A's state, and an
/// operator's approve sent to B advances the rollout A leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_led_by_one_replica_reaches_agents_and_takes_commands_on_another() {
    let etcd = etcd_server::Server::start();
    let RolloutSetup { a, b, pa, mut eu, us, _dirs } =
        rollout_setup(&etcd.url, &etcd.url, "approval", 10).await;

    // Generation 2 starts a rollout (signed and started by A in one commit).
    pa.publish("web", "repo", "https://git.example/fleet.git", "main@sha1:bbbb", b"two").unwrap();
    // A admits eu1 (connected to B: A knows it from the liveness B stored);
    // the agent on B gets generation 2; us1 stays on generation 1.
    let g2 = eu.until_generation("web", 2).await;
    assert_eq!(given(&b, "us1", "web"), Some(1), "the second wave is held");
    report(&eu, 2, "web", 2, &g2.digest, pb::Phase::Ready).await;
    // Wave eu is done; us waits for its approval, on both replicas.
    for r in [&a, &b] {
        eventually(|| async {
            (rollout_status(r, "web").as_deref() == Some("AwaitingApproval")).then_some(())
        })
        .await;
    }
    let view_of = |h: &HubHandle| {
        let h = h.state().view();
        let r = h.rollouts["web"].clone();
        (r.state.clone(), r.version)
    };
    assert_eq!(view_of(&a), view_of(&b), "the same rollout state on every replica");
    let mut fleet_b = admin(&b).await;
    let on_b =
        fleet_b.get_rollout(pb::GetRolloutRequest { bundle: "web".into() }).await.unwrap().into_inner();
    let on_a = admin(&a).await.get_rollout(pb::GetRolloutRequest { bundle: "web".into() }).await.unwrap();
    assert_eq!(on_b, on_a.into_inner(), "`convoy rollout status` answers the same on both");
    assert_eq!(on_b.status, "AwaitingApproval");
    assert_eq!(given(&b, "us1", "web"), Some(1));
    assert_eq!(given(&a, "us1", "web"), Some(1));

    // Approved on B (a fenced write of the rollout record A picks up): A
    // admits us1, whose agent on B gets generation 2.
    fleet_b
        .rollout_action(pb::RolloutActionRequest {
            bundle: "web".into(),
            command: pb::RolloutCommand::Approve as i32,
        })
        .await
        .unwrap();
    let mut us = us;
    let got = us.until_generation("web", 2).await;
    assert_eq!(got.digest, g2.digest);
    report(&us, 2, "web", 2, &got.digest, pb::Phase::Ready).await;
    for r in [&a, &b] {
        eventually(|| async { (rollout_status(r, "web").as_deref() == Some("Complete")).then_some(()) })
            .await;
    }
    // One state machine: each wave started once, one approval recorded
    // (naming the caller), and one generation per revision on both replicas.
    assert_eq!(hub_events(&a, "web", "RolloutWaveStarted").await.len(), 2);
    let approvals = hub_events(&b, "web", "RolloutApproved").await;
    assert_eq!(approvals.len(), 1, "{approvals:?}");
    assert!(approvals[0].contains("admin"), "{approvals:?}");
    for r in [&a, &b] {
        assert_eq!(r.state().view().records["web"].generation, 2);
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// The replica that signs a bundle's new generation (B, the holder of the
/// source lock) is not the leader (A): B starts the rollout in the same
/// commit as the generation, A runs it, and the agents connected to A never
/// see the new generation before their wave admits them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_started_by_the_source_holder_is_run_by_the_leader() {
    const OTHER: &str = r#"
apiVersion: convoy.dev/v1
kind: GitSource
metadata: {name: other}
spec: {url: "https://git.example/other.git"}
"#;
    let etcd = etcd_server::Server::start();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A starts without the source: it leads, and B takes the source lock.
    let (a, _) = replica_with(da.path(), &etcd.url, None, OTHER, 10).await;
    eventually(|| async { a.leadership().is_leader().then_some(()) }).await;
    let text = rollout_fleet("auto");
    let (b, pb_b) = replica_with(db.path(), &etcd.url, Some(&da.path().join("data")), &text, 10).await;
    eventually(|| async { b.leadership().signs_for("repo").then_some(()) }).await;
    a.set_fleet(fleet(&text)).await.unwrap();
    assert!(a.leadership().is_leader() && !b.leadership().is_leader());
    assert!(!a.leadership().signs_for("repo"), "B holds the source lock");

    let c_eu = register(&a, "eu1", &[("env", "prod"), ("region", "eu")]).await;
    let c_us = register(&a, "us1", &[("env", "prod"), ("region", "us")]).await;
    pb_b.publish("web", "repo", "https://git.example/fleet.git", "main@sha1:aaaa", b"one").unwrap();
    eventually(|| async { a.state().view().records.contains_key("web").then_some(()) }).await;
    let (mut eu, _, snap) = open(&a, &c_eu, 1).await.unwrap();
    let (mut us, _, _) = open(&a, &c_us, 1).await.unwrap();
    let g1 = snap.bundles.iter().find(|d| d.name == "web").cloned().expect("web on eu1");
    assert_eq!(g1.generation, 1);
    report(&eu, 1, "web", 1, &g1.digest, pb::Phase::Ready).await;
    report(&us, 1, "web", 1, &g1.digest, pb::Phase::Ready).await;
    us.until_ack(1).await;

    // B signs generation 2 and starts its rollout; A admits eu1 first.
    pb_b.publish("web", "repo", "https://git.example/fleet.git", "main@sha1:bbbb", b"two").unwrap();
    let g2 = eu.until_generation("web", 2).await;
    assert_eq!(given(&a, "us1", "web"), Some(1), "us1 waits for its wave");
    report(&eu, 2, "web", 2, &g2.digest, pb::Phase::Ready).await;
    let got = us.until_generation("web", 2).await;
    assert_eq!(got.digest, g2.digest);
    report(&us, 2, "web", 2, &got.digest, pb::Phase::Ready).await;
    for r in [&a, &b] {
        eventually(|| async { (rollout_status(r, "web").as_deref() == Some("Complete")).then_some(()) })
            .await;
    }
    assert_eq!(hub_events(&a, "web", "RolloutStarted").await.len(), 1);
    assert_eq!(hub_events(&a, "web", "RolloutWaveStarted").await.len(), 2);
    for r in [&a, &b] {
        assert_eq!(r.state().view().records["web"].generation, 2);
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Failover mid-wave: A leads and is cut off from etcd (a TCP proxy the
/// test controls) right after it admitted eu1; within one lease TTL B holds
/// the leader lock and resumes the same wave: eu1 is not admitted again,
/// no wave starts twice, no new generation is signed, and us1 gets the
/// generation eu1 got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_resumes_on_another_replica_when_its_leader_is_cut_off_mid_wave() {
    const TTL: u64 = 2;
    let etcd = etcd_server::Server::start();
    let proxy = etcd_server::Proxy::start(&etcd.url);
    let RolloutSetup { a, b, pa, mut eu, mut us, _dirs } =
        rollout_setup(&proxy.url, &etcd.url, "auto", TTL).await;
    pa.publish("web", "repo", "https://git.example/fleet.git", "main@sha1:bbbb", b"two").unwrap();
    let g2 = eu.until_generation("web", 2).await;
    let admitted_at = |h: &HubHandle| {
        let v = h.state().view();
        v.rollouts["web"].state.clusters.get("eu1").map(|c| c.step.clone())
    };
    // B published eu1's desired set just before its view.
    eventually(|| async { admitted_at(&b).filter(|s| s.name() == "Admitted") }).await;

    // A is cut off mid-wave: it stops writing and gives its locks up; B
    // takes the leader lock within the TTL (plus the lock retry).
    let cut = std::time::Instant::now();
    proxy.cut();
    let mut leads = b.leadership().watch();
    tokio::time::timeout(Duration::from_secs(TTL + 5), leads.wait_for(|l| *l)).await.unwrap().unwrap();
    let took = cut.elapsed();
    eprintln!("B leads {took:?} after A was cut off (lease TTL {TTL}s)");
    assert!(took < Duration::from_secs(TTL + 3), "failover took {took:?}");
    assert!(!a.leadership().is_leader(), "a cut-off replica gives its leadership up");

    // eu1 reports Ready on generation 2 to B, which now runs the rollout
    // from where A left it.
    report(&eu, 2, "web", 2, &g2.digest, pb::Phase::Ready).await;
    let got = us.until_generation("web", 2).await;
    assert_eq!(got.digest, g2.digest, "the same generation, not a new one");
    report(&us, 2, "web", 2, &got.digest, pb::Phase::Ready).await;
    eventually(|| async { (rollout_status(&b, "web").as_deref() == Some("Complete")).then_some(()) }).await;
    let rec = b.state().view().rollouts["web"].clone();
    assert_eq!(
        rec.state.clusters["eu1"].step.name(),
        "Done",
        "eu1 went on from Admitted, not admitted again"
    );
    assert_eq!(
        *rec.given.get("eu1").expect("eu1 was given a record"),
        *b.state().view().records["web"],
        "eu1 kept what A gave it"
    );
    let started = hub_events(&b, "web", "RolloutWaveStarted").await;
    assert_eq!(started.len(), 2, "each wave started once across the failover: {started:?}");
    assert_eq!(b.state().view().records["web"].generation, 2, "no generation issued twice");
    assert_eq!(rec.max_generation, 2);
    proxy.heal();
    drop(eu);
    drop(us);
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

/// Per-cluster variants on several replicas: A holds the source lock and
/// signs the bundle's variants; a cluster connected to B whose vars change
/// on B gets exactly one new signed variant, signed by A and brought to B
/// by the change feed (B fetched the base artifact from A to compute the
/// variant key). When A is cut off, the next vars change waits for the
/// signer and B signs it once it takes the source lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_var_change_on_a_follower_gets_one_variant_signed_by_the_source_holder() {
    const VARIANT_FLEET: &str = r#"
apiVersion: convoy.dev/v1
kind: GitSource
metadata: {name: repo}
spec: {url: "https://git.example/fleet.git"}
---
apiVersion: convoy.dev/v1
kind: Bundle
metadata: {name: app}
spec:
  source: repo
  path: app
  substitute: {}
  targets: [{clusterSelector: {matchLabels: {env: prod}}}]
"#;
    const TTL: u64 = 2;
    let etcd = etcd_server::Server::start();
    let proxy = etcd_server::Proxy::start(&etcd.url);
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, pa) = replica_with(da.path(), &proxy.url, None, VARIANT_FLEET, TTL).await;
    eventually(|| async { (a.leadership().is_leader() && a.leadership().signs_for("repo")).then_some(()) })
        .await;
    let (b, _) = replica_with(db.path(), &etcd.url, Some(&da.path().join("data")), VARIANT_FLEET, TTL).await;
    assert!(!b.leadership().signs_for("repo"), "A holds the source lock");
    let c1 = register(&a, "c1", &[("env", "prod")]).await;
    a.state().set_vars("c1".into(), [("region".to_string(), "eu".to_string())].into(), vec![]).await.unwrap();
    eventually(|| async {
        b.state()
            .view()
            .clusters
            .get("c1")
            .is_some_and(|c| c.record.vars.contains_key("region"))
            .then_some(())
    })
    .await;
    let art = convoy_artifact::pack::pack_files(
        [(
            "cm.yaml".to_string(),
            b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\ndata:\n  region: \"${{ cluster.vars.region }}\"\n"
                .to_vec(),
        )],
        &convoy_artifact::Limits::default(),
    )
    .unwrap();
    pa.publish("app", "repo", "https://git.example/fleet.git", "main@sha1:1", &art.bytes).unwrap();
    // B places c1 on the variant A signed (B never built the base).
    let eu = eventually(|| async {
        let v = b.state().view();
        let d = v.clusters.get("c1")?.shared.desired();
        let d = d.bundles.get("app")?.record.clone();
        (d.digest != art.digest).then_some(d)
    })
    .await;
    let (mut s, _, snap) = open(&b, &c1, 1).await.unwrap();
    assert!(
        snap.bundles
            .iter()
            .any(|d| d.name == "app" && d.generation == eu.generation && d.digest == eu.digest),
        "the agent on B starts on the eu variant: {snap:?}"
    );
    let variants =
        |h: &HubHandle| h.state().view().variants.values().map(|r| (**r).clone()).collect::<Vec<_>>();
    // A publishes its view after its commit: B may have been faster.
    eventually(|| async { (variants(&a).len() == 1).then_some(()) }).await;

    // The vars change on B (its agent is there); A signs the new variant once.
    b.state().set_vars("c1".into(), [("region".to_string(), "us".to_string())].into(), vec![]).await.unwrap();
    let us = s
        .until(|m| {
            use convoy_proto::v1::hub_message::Msg as Out;
            let Out::Update(u) = m else { return None };
            u.upserts.iter().find(|d| d.name == "app" && d.generation > eu.generation).cloned()
        })
        .await;
    assert_ne!(us.digest, eu.digest, "the us variant");
    let on_a = eventually(|| async { (variants(&a).len() == 2).then(|| variants(&a)) }).await;
    let signed = on_a.iter().find(|r| r.digest == us.digest).expect("A signed the variant the agent got");
    assert_eq!((signed.generation, signed.statement.as_slice()), (us.generation, us.statement.as_slice()));
    let statement = convoy_artifact::Statement::parse(&us.statement).unwrap();
    assert!(statement.variant.is_some(), "a variant statement");
    eventually(|| async {
        let mut on_b = variants(&b);
        let mut on_a = variants(&a);
        on_b.sort_by_key(|r| r.generation);
        on_a.sort_by_key(|r| r.generation);
        (on_a == on_b).then_some(())
    })
    .await;
    // Exactly one signing per variant for the whole hub (events of both replicas are in etcd).
    let signed_events = hub_events(&b, "app", "NewGeneration").await;
    let variant_events: Vec<_> = signed_events.iter().filter(|m| m.contains("variant")).collect();
    assert_eq!(variant_events.len(), 2, "one per variant: {signed_events:?}");
    assert!(us.generation > eu.generation, "generations only rise");

    // A is cut off from etcd; a vars change on B meanwhile waits for the
    // signer, and B signs it itself once it holds the source lock (the
    // base's bytes fetched from A, which still serves them).
    proxy.cut();
    b.state().set_vars("c1".into(), [("region".to_string(), "ap".to_string())].into(), vec![]).await.unwrap();
    assert!(!b.leadership().signs_for("repo"), "A's lease has not expired yet");
    let ap = s
        .until(|m| {
            use convoy_proto::v1::hub_message::Msg as Out;
            let Out::Update(u) = m else { return None };
            u.upserts.iter().find(|d| d.name == "app" && d.generation > us.generation).cloned()
        })
        .await;
    assert!(b.leadership().signs_for("repo"), "signed by B once it held the source lock");
    assert!(ap.digest != us.digest && ap.digest != eu.digest, "the ap variant");
    let mine = eventually(|| async { (variants(&b).len() == 3).then(|| variants(&b)) }).await;
    assert!(mine.iter().any(|r| r.digest == ap.digest && r.generation == ap.generation));
    let variant_events: Vec<_> =
        hub_events(&b, "app", "NewGeneration").await.into_iter().filter(|m| m.contains("variant")).collect();
    assert_eq!(variant_events.len(), 3, "one signing per variant: {variant_events:?}");
    proxy.heal();
    drop(s);
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

mod locks {
    use std::collections::BTreeSet;
    use std::time::{Duration, Instant};

    use base64::Engine;
    use convoy_hub::store::{EtcdOptions, EtcdStore, Store, Write};
    use tokio::sync::watch;

    use crate::etcd_server::{Proxy, Server, gateway};

    const TTL: u64 = 2;

    fn opts(url: &str) -> EtcdOptions {
        let mut o = EtcdOptions::new(vec![url.to_string()], "/locks/");
        o.lease_ttl = Duration::from_secs(TTL);
        o.connect_timeout = Duration::from_secs(2);
        o.request_timeout = Duration::from_secs(2);
        o
    }

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    type Held = watch::Receiver<BTreeSet<String>>;

    /// Wait (bounded) until `done` holds for the locks each replica holds,
    /// checking at every look that no lock is held by two replicas.
    fn until(
        held: &[(&str, &Held)],
        within: Duration,
        what: &str,
        done: impl Fn(&[BTreeSet<String>]) -> bool,
    ) {
        let deadline = Instant::now() + within;
        loop {
            let now: Vec<BTreeSet<String>> = held.iter().map(|(_, h)| h.borrow().clone()).collect();
            for (i, a) in now.iter().enumerate() {
                for (j, b) in now.iter().enumerate().skip(i + 1) {
                    let both: Vec<_> = a.intersection(b).collect();
                    assert!(both.is_empty(), "{both:?} held by {} and {} at once", held[i].0, held[j].0);
                }
            }
            if done(&now) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: not within {within:?}; held: {now:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn write(s: &EtcdStore) -> Result<(), String> {
        s.commit(vec![Write::SetSuspended { bundle: "b".into(), suspended: true }], 1)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The lease of `replica` (read through etcd's JSON gateway).
    fn lease_of(url: &str, replica: &str) -> String {
        let key = base64::engine::general_purpose::STANDARD.encode(format!("/locks/replicas/{replica}"));
        let out = gateway(url, "/v3/kv/range", &format!(r#"{{"key":"{key}"}}"#));
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {out}"));
        v["kvs"][0]["lease"].as_str().unwrap_or_else(|| panic!("no lease in {body}")).to_string()
    }

    /// Exactly-once work: every lock has one holder at a time; a replica
    /// cut off from etcd gives its locks up and writes nothing; another
    /// takes them over within about one TTL; the same when the holder dies
    /// (its process gone, lease not revoked).
    #[test]
    fn locks_pass_on_when_the_holder_is_cut_off_or_dies() {
        let etcd = Server::start();
        let proxy = Proxy::start(&etcd.url);
        let wanted = set(&["leader", "source/git"]);
        let (_wanted_tx, wanted_rx) = watch::channel(wanted.clone());
        let a = EtcdStore::open(&opts(&proxy.url), 100).unwrap();
        let ha = a.coordinate(wanted_rx.clone()).unwrap();
        until(&[("a", &ha)], Duration::from_secs(10), "a takes the free locks", |h| h[0] == wanted);
        let b = EtcdStore::open(&opts(&etcd.url), 100).unwrap();
        let hb = b.coordinate(wanted_rx.clone()).unwrap();
        let c = EtcdStore::open(&opts(&etcd.url), 100).unwrap();
        let hc = c.coordinate(wanted_rx.clone()).unwrap();
        write(&a).unwrap();

        // Cut a off: it stops claiming work and stops writing before etcd
        // could hand its locks to another replica; b or c then takes them.
        let cut = Instant::now();
        proxy.cut();
        let all = [("a", &ha), ("b", &hb), ("c", &hc)];
        until(&all, Duration::from_secs(TTL), "a gives its locks up", |h| h[0].is_empty());
        let err = write(&a).unwrap_err();
        assert!(err.contains("lost its lease"), "{err}");
        until(&all, Duration::from_secs(TTL + 3), "b or c takes a's locks", |h| {
            h[1].union(&h[2]).cloned().collect::<BTreeSet<_>>() == wanted
        });
        eprintln!("locks taken over {:?} after the cut (lease TTL {TTL}s)", cut.elapsed());

        // Back in touch: a writes again under a new lease, and the locks stay put.
        proxy.heal();
        let deadline = Instant::now() + Duration::from_secs(15);
        while let Err(e) = write(&a) {
            assert!(Instant::now() < deadline, "a never wrote again: {e}");
            std::thread::sleep(Duration::from_millis(50));
        }
        until(&all, Duration::from_secs(1), "the locks stay with b and c", |h| {
            h[0].is_empty() && h[1].union(&h[2]).cloned().collect::<BTreeSet<_>>() == wanted
        });

        // The leader dies (no revoke): the others take its locks once its lease expires.
        let (dead, rest): (EtcdStore, Vec<(&str, &Held)>) = if hb.borrow().contains("leader") {
            (b, vec![("a", &ha), ("c", &hc)])
        } else {
            (c, vec![("a", &ha), ("b", &hb)])
        };
        let died = Instant::now();
        drop(dead);
        until(&rest, Duration::from_secs(TTL + 3), "the survivors take the dead replica's locks", |h| {
            h[0].union(&h[1]).cloned().collect::<BTreeSet<_>>() == wanted
        });
        eprintln!("locks taken over {:?} after the holder died", died.elapsed());
    }

    /// The fence is checked by etcd too: a replica whose lease was revoked
    /// behind its back cannot write under it, and writes again once it has
    /// a new lease.
    #[test]
    fn a_write_under_a_revoked_lease_is_refused_by_etcd() {
        let etcd = Server::start();
        let mut o = opts(&etcd.url);
        o.lease_ttl = Duration::from_secs(30);
        let a = EtcdStore::open(&o, 100).unwrap();
        write(&a).unwrap();
        let lease = lease_of(&etcd.url, a.replica_id());
        let out = gateway(&etcd.url, "/v3/lease/revoke", &format!(r#"{{"ID":"{lease}"}}"#));
        assert!(out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"), "{out}");
        let err = write(&a).unwrap_err();
        assert!(err.contains("lost its lease"), "{err}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = write(&a) {
            assert!(Instant::now() < deadline, "no new lease: {e}");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_ne!(lease_of(&etcd.url, a.replica_id()), lease, "a new lease");
    }
}

/// The pending commands of `cluster` in the shared store, read by a store
/// of its own (as a third replica would).
async fn stored_commands(etcd: &str, cluster: &str) -> Vec<String> {
    let (url, cluster) = (etcd.to_string(), cluster.to_string());
    tokio::task::spawn_blocking(move || {
        use convoy_hub::store::{EtcdOptions, EtcdStore, Store};
        let s = EtcdStore::open(&EtcdOptions::new(vec![url], "/ha/"), 100).unwrap();
        let mut ids: Vec<String> = s.commands(&cluster).unwrap().into_iter().map(|c| c.request_id).collect();
        ids.sort();
        ids
    })
    .await
    .unwrap()
}

/// `convoy test` across replicas: asked on A while the agent's stream is on
/// B, the command is stored, reaches the agent on B through B's change feed
/// exactly once, its answer (stored by B) is stored once and deletes the
/// record; one asked on A while the agent is away is delivered when it
/// connects to B again, with the one still unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_run_asked_on_one_replica_reaches_the_agent_on_another_once() {
    use convoy_proto::v1::hub_message::Msg as Out;
    let etcd = etcd_server::Server::start();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, pa) = replica(da.path(), &etcd.url, None).await;
    let (b, _pb) = replica(db.path(), &etcd.url, Some(&da.path().join("data"))).await;
    let c1 = register(&a, "c1", &[("env", "prod")]).await;
    eventually(|| async { b.state().view().clusters.contains_key("c1").then_some(()) }).await;
    pa.publish_helm("web", "main@sha1:1", b"release one", built_helm(), b"input one").unwrap();
    eventually(|| async { b.state().view().records.contains_key("web").then_some(()) }).await;

    // The agent is on B and reports the release applied there.
    let mut s = report_web_applied(&b, &c1).await;
    eventually(|| async {
        let view = a.state().view();
        let st = view.clusters.get("c1")?.shared.statuses();
        (st.get("web")?.status.applied_generation == 1).then_some(())
    })
    .await;

    // Asked on A: stored, then sent on B's stream.
    let mut fa = admin(&a).await;
    let req = || pb::RunTestsRequest { bundle: "web".into(), cluster: "c1".into(), timeout_seconds: 30 };
    let r1 = fa.run_tests(req()).await.unwrap().into_inner();
    assert_eq!(r1.generation, 1);
    let got = s
        .until(|m| match m {
            Out::RunTests(c) => Some(c.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        got,
        pb::RunTests {
            request_id: r1.request_id.clone(),
            bundle: "web".into(),
            generation: 1,
            timeout_seconds: 30
        }
    );
    assert_eq!(stored_commands(&etcd.url, "c1").await, vec![r1.request_id.clone()]);

    // The agent's answer, stored by B, deletes the record in the same commit.
    s.tx.send(test_answer(2, &r1.request_id)).await.unwrap();
    s.until_ack(2).await;
    assert!(stored_commands(&etcd.url, "c1").await.is_empty());

    // Exactly once on B: the next run command the agent sees is the next run's.
    let r2 = fa.run_tests(req()).await.unwrap().into_inner().request_id;
    let next = s
        .until(|m| match m {
            Out::RunTests(c) => Some(c.request_id.clone()),
            _ => None,
        })
        .await;
    assert_eq!(next, r2, "{} was sent twice", r1.request_id);
    // Its answer is in the log once, read on A.
    let evs = fa
        .list_events(pb::ListEventsRequest { cluster: "c1".into(), limit: 100, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    let answers = evs
        .iter()
        .filter_map(|e| e.event.as_ref())
        .filter(|e| e.reason == "TestSucceeded" && e.details.get("requestId") == Some(&r1.request_id))
        .count();
    assert_eq!(answers, 1);

    // The agent goes away; a run asked on A meanwhile is stored and, with
    // r2 (sent, never answered), delivered when it connects to B again.
    drop(s);
    eventually(|| async { (!b.state().view().clusters["c1"].shared.connected()).then_some(()) }).await;
    let r3 = fa.run_tests(req()).await.unwrap().into_inner().request_id;
    let mut want = vec![r2.clone(), r3.clone()];
    want.sort();
    assert_eq!(stored_commands(&etcd.url, "c1").await, want);
    let (mut s, _, _) = open(&b, &c1, 1).await.unwrap();
    let mut got = Vec::new();
    s.until(|m| {
        if let Out::RunTests(c) = m {
            got.push(c.request_id.clone());
        }
        (got.len() == 2).then_some(())
    })
    .await;
    got.sort();
    assert_eq!(got, want);
    drop(s);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A run asked on one replica for an agent that is away expires on the
/// replicas' clock: the leader deletes it and stores one `TestExpired` event
/// (whichever replica it was asked on), and the agent connecting to the
/// other replica afterwards is sent only the run asked for next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_run_that_expires_is_reported_once_for_all_replicas_and_never_sent() {
    use convoy_proto::v1::hub_message::Msg as Out;
    let etcd = etcd_server::Server::start();
    let clock = convoy_core::clock::FakeClock::at_system_now();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, pa) = replica_opts(da.path(), &etcd.url, None, FLEET, 10, Some(clock.shared()), 10_000).await;
    let shared = da.path().join("data");
    let (b, _pb) =
        replica_opts(db.path(), &etcd.url, Some(&shared), FLEET, 10, Some(clock.shared()), 10_000).await;
    let c1 = register(&a, "c1", &[("env", "prod")]).await;
    eventually(|| async { b.state().view().clusters.contains_key("c1").then_some(()) }).await;
    pa.publish_helm("web", "main@sha1:1", b"release one", built_helm(), b"input one").unwrap();
    eventually(|| async { b.state().view().records.contains_key("web").then_some(()) }).await;
    // One replica leads (it expires commands).
    eventually(|| async { (a.leadership().is_leader() || b.leadership().is_leader()).then_some(()) }).await;

    // The agent reports the release applied on A, then goes away.
    let s = report_web_applied(&a, &c1).await;
    drop(s);
    eventually(|| async { (!a.state().view().clusters["c1"].shared.connected()).then_some(()) }).await;
    eventually(|| async {
        let view = b.state().view();
        let st = view.clusters.get("c1")?.shared.statuses();
        (st.get("web")?.status.applied_generation == 1).then_some(())
    })
    .await;

    // Asked on B (which never held the stream); stored; expired at 90 s.
    let mut fb = admin(&b).await;
    let req = || pb::RunTestsRequest { bundle: "web".into(), cluster: "c1".into(), timeout_seconds: 30 };
    let old = fb.run_tests(req()).await.unwrap().into_inner().request_id;
    assert_eq!(stored_commands(&etcd.url, "c1").await, vec![old.clone()]);
    clock.advance(Duration::from_secs(90));
    let expired = |fleet: pb::fleet_client::FleetClient<tonic::transport::Channel>, id: String| async move {
        let mut fleet = fleet;
        let evs = fleet
            .list_events(pb::ListEventsRequest { cluster: "c1".into(), limit: 100, ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .events;
        evs.iter()
            .filter_map(|e| e.event.as_ref())
            .filter(|e| e.reason == "TestExpired" && e.details.get("requestId") == Some(&id))
            .count()
    };
    let fa = admin(&a).await;
    eventually(|| {
        let (fa, old) = (fa.clone(), old.clone());
        async move { (expired(fa, old).await > 0).then_some(()) }
    })
    .await;
    assert!(stored_commands(&etcd.url, "c1").await.is_empty());

    // The next run is the first the agent gets, on B; the expired one was
    // reported once.
    let new = fb.run_tests(req()).await.unwrap().into_inner().request_id;
    let (mut s, _, _) = open(&b, &c1, 1).await.unwrap();
    let first = s
        .until(|m| match m {
            Out::RunTests(c) => Some(c.request_id.clone()),
            _ => None,
        })
        .await;
    assert_eq!(first, new, "the expired run {old} is never sent");
    assert_eq!(expired(fa.clone(), old.clone()).await, 1);
    drop(s);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
