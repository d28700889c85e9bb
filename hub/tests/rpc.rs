//! In-process tests of every hub RPC over loopback mTLS, including
//! authorization, fan-out, flow control, and the outbox/ack protocol across
//! disconnects and hub restarts.

mod common;

use std::time::Duration;

use common::*;
use convoy_core::selector::Labels;
use convoy_proto::v1 as pb;
use convoy_proto::v1::hub_message::Msg as Out;
use tonic::Code;

fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test]
async fn registration_enforces_token_rules() {
    let dir = tempfile::tempdir().unwrap();
    // The hub's clock moves only when the test says so: expiry without sleeping.
    let clock = convoy_core::clock::FakeClock::at_system_now();
    let t = start_clocked(dir.path(), FLEET, Some(clock.shared())).await;
    let hub = &t.hub;

    // Garbage and unknown tokens.
    let e = register_with(hub, "nonsense", "c1", &[]).await.err().unwrap();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = register_with(hub, "cvt_abc.def", "c1", &[]).await.err().unwrap();
    assert_eq!(e.code(), Code::Unauthenticated);

    // Expired: valid for a minute, refused once the hub's clock reaches its end.
    let expired = hub.create_token(None, Labels::new(), Duration::from_secs(60), false).await.unwrap();
    clock.advance(Duration::from_secs(60));
    let e = register_with(hub, &expired.token, "c1", &[]).await.err().unwrap();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    // Single use: the second registration is refused.
    let once =
        hub.create_token(None, labels(&[("env", "prod")]), Duration::from_secs(60), true).await.unwrap();
    let id = register_with(hub, &once.token, "c1", &[("env", "dev"), ("zone", "a")]).await.unwrap();
    assert_eq!(id.cluster, "c1");
    let e = register_with(hub, &once.token, "c9", &[]).await.err().unwrap();
    assert_eq!(e.code(), Code::Unauthenticated);

    // Labels come from the token: the agent's env and zone are not its to set.
    let mut fleet = admin(hub).await;
    let c = fleet.get_cluster(pb::GetClusterRequest { name: "c1".into() }).await.unwrap().into_inner();
    let cl = c.cluster.unwrap();
    assert_eq!(cl.labels.get("env").map(String::as_str), Some("prod"));
    assert_eq!(cl.labels.get("zone"), None);
    assert!(cl.certificate_not_after_unix_ms > 0);

    // A token bound to a name registers only that name.
    let bound = hub.create_token(Some("c2"), Labels::new(), Duration::from_secs(60), false).await.unwrap();
    let e = register_with(hub, &bound.token, "c3", &[]).await.err().unwrap();
    assert_eq!(e.code(), Code::PermissionDenied);
    register_with(hub, &bound.token, "c2", &[]).await.unwrap();

    // An unbound token cannot take over an existing cluster name.
    let multi = hub.create_token(None, Labels::new(), Duration::from_secs(60), false).await.unwrap();
    let e = register_with(hub, &multi.token, "c1", &[]).await.err().unwrap();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Bad names and CSRs are refused.
    let e = register_with(hub, &multi.token, "Not_A_Name", &[]).await.err().unwrap();
    assert_eq!(e.code(), Code::InvalidArgument);
    let mut rc = pb::registration_client::RegistrationClient::new(channel(hub, None).await);
    let e = rc
        .register(pb::RegisterRequest {
            token: multi.token.clone(),
            cluster_name: "c5".into(),
            csr_pem: "not a csr".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    t.hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn fleet_and_agent_calls_are_authorized_by_identity() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), FLEET).await;
    let hub = &t.hub;
    let c1 = register(hub, "c1", &[("env", "prod")]).await;

    // An agent certificate can never call fleet RPCs, even with the admin token.
    let ch = channel(hub, Some((&c1.cert_pem, &c1.key_pem))).await;
    let token = hub.admin.token.clone();
    let mut as_agent =
        pb::fleet_client::FleetClient::with_interceptor(ch, move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
            Ok(r)
        });
    let e = as_agent.list_clusters(pb::ListClustersRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = as_agent
        .create_token(pb::CreateTokenRequest { cluster: "x".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // Anonymous: no fleet, no agent calls.
    let mut anon = pb::fleet_client::FleetClient::new(channel(hub, None).await);
    assert_eq!(
        anon.list_clusters(pb::ListClustersRequest::default()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut anon_agent = pb::agent_client::AgentClient::new(channel(hub, None).await);
    let e = anon_agent
        .download_artifact(pb::DownloadArtifactRequest { digest: "sha256:00".into(), offset: 0 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // Admin by bearer token works; a wrong token does not.
    let token = hub.admin.token.clone();
    let mut by_token = pb::fleet_client::FleetClient::with_interceptor(
        channel(hub, None).await,
        move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
            Ok(r)
        },
    );
    let list = by_token.list_clusters(pb::ListClustersRequest::default()).await.unwrap().into_inner();
    assert_eq!(list.clusters.len(), 1);
    let mut wrong = pb::fleet_client::FleetClient::with_interceptor(
        channel(hub, None).await,
        |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", "Bearer wrong".parse().unwrap());
            Ok(r)
        },
    );
    assert_eq!(
        wrong.list_clusters(pb::ListClustersRequest::default()).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // An admin certificate cannot act as an agent.
    let mut admin_agent = pb::agent_client::AgentClient::new(
        channel(hub, Some((&hub.admin.cert_pem, &hub.admin.key_pem))).await,
    );
    let e =
        admin_agent.renew_certificate(pb::RenewCertificateRequest { csr_pem: csr().0 }).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    t.hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn sync_delivers_signed_generations_and_downloads_are_scoped() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), FLEET).await;
    let hub = &t.hub;
    let c1 = register(hub, "c1", &[("env", "prod")]).await;
    let c2 = register(hub, "c2", &[("env", "dev")]).await;
    let (mut s1, ack, snap) = open(hub, &c1, 1).await.unwrap();
    assert_eq!(ack, 0);
    assert!(snap.bundles.is_empty());

    // A build: a signed generation reaches the targeted agent at once.
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let art =
        t.pipeline.publish("web", "repo", "https://git.example/fleet.git", "main@sha1:aaaa", &bytes).unwrap();
    let dep = s1.until_generation("web", 1).await;
    assert_eq!(dep.digest, art.digest);
    assert_eq!(dep.size, bytes.len() as u64);
    let trusted = convoy_artifact::TrustedKeys::from_pem(&hub.trusted_keys_pem).unwrap();
    let st = convoy_artifact::verify_statement(&dep.statement, &dep.signature, &trusted).unwrap();
    assert_eq!(
        (st.bundle.as_str(), st.generation, st.artifact.digest.as_str()),
        ("web", 1, art.digest.as_str())
    );
    let opts = dep.options.unwrap();
    assert!(opts.prune && opts.wait && !opts.suspend);

    // Download in 64 KiB chunks, and resume from an offset.
    let mut got = Vec::new();
    let mut chunks = s1
        .client
        .download_artifact(pb::DownloadArtifactRequest { digest: art.digest.clone(), offset: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(c) = chunks.message().await.unwrap() {
        assert_eq!(c.offset as usize, got.len());
        assert_eq!(c.total_size, bytes.len() as u64);
        assert!(c.data.len() <= 64 * 1024);
        got.extend_from_slice(&c.data);
        n += 1;
    }
    assert_eq!(got, bytes);
    assert_eq!(n, bytes.len().div_ceil(64 * 1024));
    let mut tail = Vec::new();
    let mut chunks = s1
        .client
        .download_artifact(pb::DownloadArtifactRequest { digest: art.digest.clone(), offset: 150_000 })
        .await
        .unwrap()
        .into_inner();
    while let Some(c) = chunks.message().await.unwrap() {
        tail.extend_from_slice(&c.data);
    }
    assert_eq!(tail, bytes[150_000..]);
    let e = s1
        .client
        .download_artifact(pb::DownloadArtifactRequest { digest: art.digest.clone(), offset: 10_000_000 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange);

    // Another cluster (not targeted) cannot fetch it.
    let mut a2 = agent_client(hub, &c2).await;
    let e = a2
        .download_artifact(pb::DownloadArtifactRequest { digest: art.digest.clone(), offset: 0 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // A new digest: generation 2, pushed as an update.
    let art2 = t
        .pipeline
        .publish("web", "repo", "https://git.example/fleet.git", "main@sha1:bbbb", b"second")
        .unwrap();
    let dep2 = s1.until_generation("web", 2).await;
    assert_eq!(dep2.digest, art2.digest);
    // The old digest is no longer downloadable: it is not current anymore.
    let e = s1
        .client
        .download_artifact(pb::DownloadArtifactRequest { digest: art.digest.clone(), offset: 0 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // A failed build keeps generation 2 and shows the bundle Stalled.
    t.pipeline.fail("web", "InvalidManifest", "web/deploy.yaml: document 0, line 3: bad indentation");
    let mut fleet = admin(hub).await;
    let view = eventually(|| {
        let mut fleet = fleet.clone();
        async move {
            let v = fleet
                .get_bundle(pb::GetBundleRequest { name: "web".into(), ..Default::default() })
                .await
                .unwrap()
                .into_inner();
            v.conditions.iter().any(|c| c.r#type == "Stalled" && c.status == "True").then_some(v)
        }
    })
    .await;
    assert_eq!(view.generation, 2);
    assert!(
        view.conditions.iter().any(|c| c.message.contains("deploy.yaml") && c.message.contains("line 3"))
    );
    // The failure is also an event (committed a moment after the view shows it).
    eventually(|| {
        let mut fleet = fleet.clone();
        async move {
            let evs = fleet
                .list_events(pb::ListEventsRequest {
                    cluster: "hub".into(),
                    bundle: "web".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .events;
            evs.iter().any(|e| e.event.as_ref().unwrap().reason == "BuildFailed").then_some(())
        }
    })
    .await;

    // Re-targeting on a label change: c2 becomes prod and gets web.
    let (mut s2, _, snap2) = open(hub, &c2, 1).await.unwrap();
    assert!(snap2.bundles.iter().all(|b| b.name != "web"));
    fleet
        .set_cluster_labels(pb::SetClusterLabelsRequest {
            name: "c2".into(),
            labels: labels(&[("env", "prod")]).into_iter().collect(),
        })
        .await
        .unwrap();
    s2.until_generation("web", 2).await;

    // Re-targeting on a fleet config change: web leaves prod clusters.
    hub.set_fleet(fleet_cfg_without_web_targets()).await.unwrap();
    s1.until_removed("web").await;
    s2.until_removed("web").await;
    t.hub.shutdown().await.unwrap();
}

fn fleet_cfg_without_web_targets() -> convoy_core::config::FleetConfig {
    fleet(&FLEET.replace(
        "targets: [{clusterSelector: {matchLabels: {env: prod}}}]",
        "targets: [{clusterName: nowhere}]",
    ))
}

#[tokio::test]
async fn outbox_is_acked_once_across_disconnect_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), FLEET).await;
    let c1 = register(&t.hub, "c1", &[("env", "prod")]).await;
    let epoch = 0xfeed;
    // Statuses are accepted only for bundles in the cluster's desired set.
    t.pipeline.publish("web", "repo", "https://git.example/fleet.git", "main@sha1:aaaa", b"web").unwrap();
    eventually(|| async {
        t.hub
            .state()
            .view()
            .clusters
            .get("c1")
            .is_some_and(|e| e.shared.desired().bundles.contains_key("web"))
            .then_some(())
    })
    .await;

    let (mut s, ack, _) = open(&t.hub, &c1, epoch).await.unwrap();
    assert_eq!(ack, 0);
    for seq in 1..=5 {
        if seq % 2 == 0 {
            s.send_event(seq, "web", "Applied").await;
        } else {
            s.send_status(seq, "web", 1, pb::Phase::Reconciling).await;
        }
    }
    s.until_ack(5).await;
    // Forced disconnect: drop the stream and channel.
    drop(s);

    // Reconnect: the hub acks 5; the agent resends 4..=8 (4 and 5 are dups).
    let (mut s, ack, _) = open(&t.hub, &c1, epoch).await.unwrap();
    assert_eq!(ack, 5);
    for seq in 4..=8 {
        if seq % 2 == 0 {
            s.send_event(seq, "web", "Applied").await;
        } else {
            s.send_status(seq, "web", 1, pb::Phase::Ready).await;
        }
    }
    s.until_ack(8).await;
    drop(s);

    // Restart the hub on the same data dir.
    let dir_path = t.dir.clone();
    t.hub.shutdown().await.unwrap();
    let t = start(&dir_path, FLEET).await;
    let (mut s, ack, _) = open(&t.hub, &c1, epoch).await.unwrap();
    assert_eq!(ack, 8, "the ack survives a restart");
    for seq in 7..=10 {
        if seq % 2 == 0 {
            s.send_event(seq, "web", "Applied").await;
        } else {
            s.send_status(seq, "web", 1, pb::Phase::Ready).await;
        }
    }
    s.until_ack(10).await;

    // Stored exactly once each: events for seqs 2,4,6,8,10, and the last status is seq 9.
    let mut fleet = admin(&t.hub).await;
    let evs = fleet
        .list_events(pb::ListEventsRequest { cluster: "c1".into(), limit: 1000, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    let msgs: Vec<String> = evs.iter().map(|e| e.event.as_ref().unwrap().message.clone()).collect();
    assert_eq!(msgs, vec!["seq 2", "seq 4", "seq 6", "seq 8", "seq 10"]);
    let c = fleet.get_cluster(pb::GetClusterRequest { name: "c1".into() }).await.unwrap().into_inner();
    let web = c.bundles.iter().find(|b| b.bundle == "web").unwrap();
    assert_eq!(web.status.as_ref().unwrap().message, "seq 9");
    assert_eq!(web.status.as_ref().unwrap().phase, pb::Phase::Ready as i32);

    // A new epoch (the agent lost its outbox) starts from 0.
    drop(s);
    let (_s, ack, _) = open(&t.hub, &c1, epoch + 1).await.unwrap();
    assert_eq!(ack, 0);
    t.hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn renewal_and_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), FLEET).await;
    let hub = &t.hub;
    let c1 = register(hub, "c1", &[("env", "prod")]).await;
    let mut a = agent_client(hub, &c1).await;
    let (csr_pem, key) = csr();
    let r = a.renew_certificate(pb::RenewCertificateRequest { csr_pem }).await.unwrap().into_inner();
    assert!(r.not_after_unix_ms > 0);
    assert_eq!(r.ca_pem, hub.ca_pem);
    let renewed = AgentIdentity { cluster: "c1".into(), cert_pem: r.certificate_pem, key_pem: key };
    // Both the renewed and the previous certificate work during the overlap.
    let (mut s_new, _, _) = open(hub, &renewed, 1).await.unwrap();
    let (mut s_old, _, _) = open(hub, &c1, 1).await.unwrap();
    // The newer stream of the same cluster replaced the first one.
    assert_eq!(next_error(&mut s_new).await.code(), Code::Aborted);

    // Revocation: the open stream is closed at once and every certificate stops working.
    let mut fleet = admin(hub).await;
    fleet.revoke_cluster(pb::RevokeClusterRequest { name: "c1".into() }).await.unwrap();
    assert_eq!(next_error(&mut s_old).await.code(), Code::PermissionDenied);
    assert_eq!(open(hub, &renewed, 2).await.err().unwrap().code(), Code::PermissionDenied);
    let mut a = agent_client(hub, &c1).await;
    let e = a.renew_certificate(pb::RenewCertificateRequest { csr_pem: csr().0 }).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let list = fleet.list_clusters(pb::ListClustersRequest::default()).await.unwrap().into_inner();
    assert!(list.clusters.iter().any(|c| c.name == "c1" && c.revoked && !c.connected));
    let e = fleet.revoke_cluster(pb::RevokeClusterRequest { name: "nope".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Coming back needs a token bound to the name.
    let any = hub.create_token(None, Labels::new(), Duration::from_secs(60), false).await.unwrap();
    assert_eq!(register_with(hub, &any.token, "c1", &[]).await.err().unwrap().code(), Code::PermissionDenied);
    let back = register(hub, "c1", &[]).await;
    let (_s, _, _) = open(hub, &back, 3).await.unwrap();
    t.hub.shutdown().await.unwrap();
}

async fn next_error(s: &mut Stream) -> tonic::Status {
    tokio::time::timeout(WAIT, async {
        loop {
            match s.rx.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("stream ended without a status"),
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("no error in time")
}

#[tokio::test]
async fn fan_out_reaches_every_agent_and_a_slow_agent_is_isolated() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), FLEET).await;
    let hub = &t.hub;
    let mut streams = Vec::new();
    for i in 0..20 {
        let id = register(hub, &format!("c{i}"), &[("env", "prod")]).await;
        streams.push(open(hub, &id, 1).await.unwrap().0);
    }
    // The slow agent never reads its stream while generations pile up; its
    // HTTP/2 window is tiny, so the hub cannot buffer into the socket.
    let slow = register(hub, "slow", &[("env", "prod")]).await;
    let (mut slow_stream, _, _) = open_with_window(hub, &slow, 1, 1024).await.unwrap();

    for g in 1..=30u32 {
        t.pipeline
            .publish(
                "web",
                "repo",
                "https://git.example/fleet.git",
                &format!("main@sha1:{g:04}"),
                &g.to_le_bytes(),
            )
            .unwrap();
        // Let the actor sign each one as a separate generation.
        let want = g as u64;
        eventually(|| async move {
            (hub.state().view().records.get("web").map(|r| r.generation) == Some(want)).then_some(())
        })
        .await;
    }
    for s in &mut streams {
        s.until_generation("web", 30).await;
    }
    // The slow agent now reads: it gets the latest generation after a few
    // messages, not one message per generation (updates collapse).
    let mut seen = 0;
    slow_stream
        .until(|m| {
            seen += 1;
            match m {
                Out::Update(u) => u.upserts.iter().any(|b| b.generation == 30).then_some(()),
                _ => None,
            }
        })
        .await;
    assert!(seen < 20, "the slow agent got {seen} messages for 30 generations");
    t.hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn fleet_queries_and_actions() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), FLEET).await;
    let hub = &t.hub;
    let c1 = register(hub, "c1", &[("env", "prod"), ("region", "eu")]).await;
    let c2 = register(hub, "c2", &[("env", "prod"), ("region", "us")]).await;
    t.pipeline.publish("web", "repo", "https://git.example/fleet.git", "main@sha1:aaaa", b"web").unwrap();
    t.pipeline.publish("db", "repo", "https://git.example/fleet.git", "main@sha1:aaaa", b"db").unwrap();
    t.pipeline.set_source_status(convoy_core::pipeline::SourceStatus {
        name: "repo".into(),
        url: "https://git.example/fleet.git".into(),
        reference: "branch main".into(),
        revision: Some("main@sha1:aaaa".into()),
        phase: convoy_core::status::Phase::Ready,
        ..Default::default()
    });
    eventually(|| async { (hub.state().view().records.len() == 2).then_some(()) }).await;
    let (mut s1, _, snap1) = open(hub, &c1, 1).await.unwrap();
    assert_eq!(snap1.bundles.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(), ["web"]);
    s1.send_status(1, "web", 1, pb::Phase::Ready).await;
    s1.until_ack(1).await;
    let (mut s2, _, snap2) = open(hub, &c2, 1).await.unwrap();
    assert_eq!(snap2.bundles.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(), ["db", "web"]);
    s2.send_status(1, "web", 1, pb::Phase::Stalled).await;
    s2.send_event(2, "web", "VerificationFailed").await;
    s2.until_ack(2).await;

    let mut fleet = admin(hub).await;
    // Follow events of c1 from the newest one on.
    let newest = fleet
        .list_events(pb::ListEventsRequest { limit: 1, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events[0]
        .id;
    let mut follow = fleet
        .follow_events(pb::ListEventsRequest { cluster: "c1".into(), after_id: newest, ..Default::default() })
        .await
        .unwrap()
        .into_inner();

    let list = fleet
        .list_clusters(pb::ListClustersRequest { label_selector: "region=eu".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.clusters.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["c1"]);
    let c = &list.clusters[0];
    assert!(c.connected && c.last_seen_unix_ms > 0);
    assert_eq!(c.agent_version, "test/1");
    assert_eq!(c.bundles.unwrap().ready, 1);
    let e =
        fleet.list_clusters(pb::ListClustersRequest { label_selector: "a in b".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = fleet.get_cluster(pb::GetClusterRequest { name: "nope".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let d = fleet.get_cluster(pb::GetClusterRequest { name: "c2".into() }).await.unwrap().into_inner();
    assert_eq!(d.bundles.iter().map(|b| b.bundle.as_str()).collect::<Vec<_>>(), ["db", "web"]);

    // The status matrix, filtered by phase and by cluster labels.
    let web = fleet
        .get_bundle(pb::GetBundleRequest { name: "web".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(web.clusters.len(), 2);
    assert_eq!(web.summary.unwrap().ready, 1);
    assert_eq!(web.summary.unwrap().stalled, 1);
    assert_eq!(web.generation, 1);
    let stalled = fleet
        .list_bundles(pb::ListBundlesRequest { phase: "Stalled".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stalled.bundles.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(), ["web"]);
    let us = fleet
        .list_bundles(pb::ListBundlesRequest { cluster_selector: "region=us".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let web_us = us.bundles.iter().find(|b| b.name == "web").unwrap();
    assert_eq!(web_us.clusters.iter().map(|c| c.cluster.as_str()).collect::<Vec<_>>(), ["c2"]);
    assert_eq!(web_us.clusters[0].phase, pb::Phase::Stalled as i32);
    let e = fleet
        .get_bundle(pb::GetBundleRequest { name: "nope".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = fleet
        .list_bundles(pb::ListBundlesRequest { phase: "Sleepy".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Sources and source actions.
    let src = fleet.list_sources(pb::ListSourcesRequest {}).await.unwrap().into_inner();
    assert_eq!(src.sources[0].revision, "main@sha1:aaaa");
    let source = |name: &str| pb::ObjectRef { kind: pb::ObjectKind::Source as i32, name: name.into() };
    let bundle = |name: &str| pb::ObjectRef { kind: pb::ObjectKind::Bundle as i32, name: name.into() };
    fleet.reconcile(source("repo")).await.unwrap();
    fleet.reconcile(bundle("web")).await.unwrap();
    fleet.suspend(source("repo")).await.unwrap();
    fleet.resume(source("repo")).await.unwrap();
    assert_eq!(t.pipeline.actions(), ["reconcile repo", "reconcile repo", "suspend repo", "resume repo"]);
    assert_eq!(fleet.reconcile(source("nope")).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(fleet.suspend(bundle("nope")).await.unwrap_err().code(), Code::NotFound);

    // Suspending a bundle reaches its agents as an option change.
    fleet.suspend(bundle("web")).await.unwrap();
    s1.until(|m| match m {
        Out::Update(u) => {
            u.upserts.iter().any(|b| b.name == "web" && b.options.as_ref().unwrap().suspend).then_some(())
        }
        _ => None,
    })
    .await;
    let web = fleet
        .get_bundle(pb::GetBundleRequest { name: "web".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(web.suspended);
    fleet.resume(bundle("web")).await.unwrap();
    s1.until(|m| match m {
        Out::Update(u) => {
            u.upserts.iter().any(|b| b.name == "web" && !b.options.as_ref().unwrap().suspend).then_some(())
        }
        _ => None,
    })
    .await;

    // Tokens from the fleet API.
    let tok = fleet
        .create_token(pb::CreateTokenRequest {
            cluster: "c9".into(),
            ttl_seconds: 60,
            single_use: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(tok.token.starts_with("cvt_") && tok.expires_unix_ms > 0);
    register_with(hub, &tok.token, "c9", &[]).await.unwrap();

    // Events: a new one from c1 arrives on the follow stream; filters work.
    s1.send_event(2, "web", "DriftCorrected").await;
    let got = tokio::time::timeout(WAIT, follow.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(got.cluster, "c1");
    assert_eq!(got.event.unwrap().reason, "DriftCorrected");
    let errs = fleet
        .list_events(pb::ListEventsRequest {
            min_severity: pb::Severity::Warning as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(errs.iter().all(|e| e.event.as_ref().unwrap().severity >= pb::Severity::Warning as i32));
    let hub_events = fleet
        .list_events(pb::ListEventsRequest { cluster: "hub".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    for reason in ["ClusterRegistered", "NewGeneration", "BundleSuspended", "TokenCreated"] {
        assert!(hub_events.iter().any(|e| e.event.as_ref().unwrap().reason == reason), "{reason}");
    }
    // Metrics count what happened.
    let m = hub.metrics_text();
    assert!(m.contains("convoy_hub_connected_agents 2"), "{m}");
    assert!(m.contains("convoy_hub_stream_messages_total{direction=\"in\",kind=\"status\"}"));
    t.hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_can_sync_as_soon_as_its_registration_returns() {
    // Many registrations at once are batched by the state actor; each reply
    // must only arrive once the hub's view already knows the cluster.
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), FLEET).await;
    let token = t.hub.create_token(None, Labels::new(), Duration::from_secs(60), false).await.unwrap().token;
    let hub = &t.hub;
    let results = futures::future::join_all((0..64).map(|i| {
        let token = token.clone();
        async move {
            let id = register_with(hub, &token, &format!("burst-{i}"), &[("env", "prod")]).await?;
            open(hub, &id, 1).await.map(|_| ())
        }
    }))
    .await;
    for r in results {
        r.unwrap();
    }
    t.hub.shutdown().await.unwrap();
}
