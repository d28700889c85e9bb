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
use convoy_hub::{Hub, HubConfig, HubHandle, HubOptions, StaticPipeline};
use convoy_proto::v1 as pb;

/// A replica on `etcd`; `shared` is the first replica's data dir, whose CA
/// and signing key every other replica uses (like the chart's Secrets).
async fn replica(
    dir: &Path,
    etcd: &str,
    shared: Option<&Path>,
) -> (HubHandle, std::sync::Arc<StaticPipeline>) {
    init();
    let pipeline = StaticPipeline::new(dir.join("artifacts"));
    let mut cfg = HubConfig::local(dir.join("data"));
    cfg.certificates.cluster_ttl = convoy_core::duration::HumanDuration::from_secs(3600);
    cfg.store.type_ = StoreType::Etcd;
    cfg.store.endpoints = vec![etcd.to_string()];
    cfg.store.prefix = "/ha/".into();
    if let Some(s) = shared {
        cfg.tls.ca_cert_file = Some(s.join("ca.crt"));
        cfg.tls.ca_key_file = Some(s.join("ca.key"));
        cfg.signing.key_file = Some(s.join(convoy_artifact::PRIVATE_KEY_FILE));
    }
    let hub = Hub::start(
        cfg,
        HubOptions { pipeline: Some(pipeline.clone()), fleet: Some(fleet(FLEET)), ..Default::default() },
    )
    .await
    .unwrap();
    (hub, pipeline)
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
    let (b, _pb) = replica(db.path(), &etcd.url, Some(&da.path().join("data"))).await;

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
    let on_a = a.state().view().records["web"].clone();
    assert_eq!((d.digest.as_str(), d.statement.as_slice()), (on_a.digest.as_str(), on_a.statement.as_slice()));
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
    tokio::time::timeout(WAIT, async {
        while let Ok(Some(_)) = s.rx.message().await {}
    })
    .await
    .expect("the stream on B closes once A revoked the cluster");

    // Generations stayed monotonic on both.
    assert_eq!(a.state().view().records["web"].generation, 2);
    assert_eq!(b.state().view().records["web"].generation, 2);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
