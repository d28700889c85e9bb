//! `RunTests` (`convoy test`) at the gRPC edge, in process: admin only; a
//! clear status for an unknown cluster or bundle, a bundle that is not Helm,
//! or nothing applied yet; the command stored and delivered on the agent's
//! Sync stream, once per call, never coalesced with desired-state changes;
//! one asked for while the agent is away delivered when it connects, and
//! one that expired first reported and never delivered. (Across replicas:
//! hub/tests/ha.rs.)

mod common;

use common::*;
use convoy_proto::v1 as pb;
use convoy_proto::v1::agent_message::Msg as In;
use convoy_proto::v1::hub_message::Msg as Out;
use tonic::Code;

const FLEET_HELM: &str = concat!(
    repo_and_web!(),
    r#"---
apiVersion: convoy.dev/v1
kind: Bundle
metadata: {name: plain}
spec:
  source: repo
  path: plain
  targets: [{clusterSelector: {matchLabels: {env: prod}}}]
"#
);

/// Report `bundle` applied at `generation` (seq `seq`) and wait for the ack
/// (the hub stores it before it acknowledges, and shows it once stored).
async fn report_applied(s: &mut Stream, seq: u64, bundle: &str, generation: u64) {
    let status = pb::BundleStatus {
        bundle: bundle.into(),
        generation,
        applied_generation: generation,
        phase: pb::Phase::Ready as i32,
        ..Default::default()
    };
    s.tx.send(pb::AgentMessage { msg: Some(In::Status(pb::StatusReport { seq, status: Some(status) })) })
        .await
        .unwrap();
    s.until_ack(seq).await;
}

/// Open the agent's stream and wait until it was given `bundle` at `generation`.
async fn connect(hub: &convoy_hub::HubHandle, id: &AgentIdentity, bundle: &str, generation: u64) -> Stream {
    let (mut s, _, snap) = open(hub, id, 1).await.unwrap();
    if !snap.bundles.iter().any(|b| b.name == bundle && b.generation == generation) {
        s.until_generation(bundle, generation).await;
    }
    s
}

fn req(bundle: &str, cluster: &str) -> pb::RunTestsRequest {
    pb::RunTestsRequest { bundle: bundle.into(), cluster: cluster.into(), timeout_seconds: 30 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_tests_is_admin_only_refused_clearly_and_delivered_once_per_call() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), FLEET_HELM).await;
    let hub = &t.hub;
    let c1 = register(hub, "c1", &[("env", "prod")]).await;
    let c2 = register(hub, "c2", &[("env", "prod")]).await;
    t.pipeline.publish_helm("web", "main@sha1:1", b"release one", built_helm(), b"input one").unwrap();
    t.pipeline
        .publish("plain", "repo", "https://git.example/fleet.git", "main@sha1:1", b"plain one")
        .unwrap();
    let mut admin = admin(hub).await;

    // Authorization: a cluster certificate and an anonymous caller are refused.
    let mut as_agent =
        pb::fleet_client::FleetClient::new(channel(hub, Some((&c1.cert_pem, &c1.key_pem))).await);
    assert_eq!(as_agent.run_tests(req("web", "c1")).await.unwrap_err().code(), Code::PermissionDenied);
    let mut anon = pb::fleet_client::FleetClient::new(channel(hub, None).await);
    assert_eq!(anon.run_tests(req("web", "c1")).await.unwrap_err().code(), Code::Unauthenticated);

    // Unknown names, missing arguments.
    let e = admin.run_tests(req("web", "nope")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = admin.run_tests(req("nope", "c1")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(admin.run_tests(req("", "c1")).await.unwrap_err().code(), Code::InvalidArgument);

    // Connected, but nothing reported applied yet.
    let mut s1 = connect(hub, &c1, "web", 1).await;
    let e = admin.run_tests(req("web", "c1")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("has not reported bundle \"web\" applied"), "{e:?}");

    // Delivered: the command reaches the agent with the applied generation.
    report_applied(&mut s1, 1, "web", 1).await;
    report_applied(&mut s1, 2, "plain", 1).await;
    let r = admin.run_tests(req("web", "c1")).await.unwrap().into_inner();
    assert_eq!(r.generation, 1);
    assert_eq!(r.request_id.len(), 32, "{r:?}");
    let got = s1.until(|m| matches!(m, Out::RunTests(_)).then(|| m.clone())).await;
    assert_eq!(
        got,
        Out::RunTests(pb::RunTests {
            request_id: r.request_id.clone(),
            bundle: "web".into(),
            generation: 1,
            timeout_seconds: 30
        })
    );

    // Not coalesced: two calls around a desired-state change are two
    // commands, in order, and the change arrives too.
    let a = admin.run_tests(req("web", "c1")).await.unwrap().into_inner().request_id;
    t.pipeline.publish_helm("web", "main@sha1:2", b"release two", built_helm(), b"input two").unwrap();
    let b = admin.run_tests(req("web", "c1")).await.unwrap().into_inner().request_id;
    assert_ne!(a, b);
    let mut seen = Vec::new();
    let mut update = false;
    s1.until(|m| {
        match m {
            Out::RunTests(c) => seen.push(c.request_id.clone()),
            Out::Update(u) if u.upserts.iter().any(|d| d.name == "web" && d.generation == 2) => update = true,
            _ => {}
        }
        (seen.len() == 2 && update).then_some(())
    })
    .await;
    assert_eq!(seen, [a, b]);

    // Not a Helm bundle: no test hooks to run.
    let e = admin.run_tests(req("plain", "c1")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("not a Helm bundle"), "{e:?}");

    // An agent that reported and went away: the runs asked for meanwhile
    // are stored (at most MAX_PENDING per cluster, then RESOURCE_EXHAUSTED)
    // and sent, in order, when it connects again.
    let mut s2 = connect(hub, &c2, "web", 2).await;
    report_applied(&mut s2, 1, "web", 2).await;
    let first = admin.run_tests(req("web", "c2")).await.unwrap().into_inner();
    assert_eq!(first.generation, 2);
    s2.until(|m| matches!(m, Out::RunTests(c) if c.request_id == first.request_id).then_some(())).await;
    drop(s2);
    eventually(|| async { (!hub.state().view().clusters["c2"].shared.connected()).then_some(()) }).await;
    // `first` was sent and not answered: it is pending too.
    let mut asked = vec![first.request_id.clone()];
    for _ in 1..convoy_hub::domain::commands::MAX_PENDING {
        asked.push(admin.run_tests(req("web", "c2")).await.unwrap().into_inner().request_id);
    }
    let e = admin.run_tests(req("web", "c2")).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("commands pending already"), "{e:?}");
    let (mut s2, _, _) = open(hub, &c2, 1).await.unwrap();
    let mut got = Vec::new();
    s2.until(|m| {
        if let Out::RunTests(c) = m {
            got.push(c.request_id.clone());
        }
        (got.len() == asked.len()).then_some(())
    })
    .await;
    // In the order asked to the millisecond (ties in request id order).
    got.sort();
    asked.sort();
    assert_eq!(got, asked, "every pending run once");

    // Answered: the record goes with the stored answer, and a new run is
    // queued again (the bound counts pending records only).
    s2.tx.send(test_answer(2, &first.request_id)).await.unwrap();
    s2.until_ack(2).await;
    let next = admin.run_tests(req("web", "c2")).await.unwrap().into_inner().request_id;
    s2.until(|m| matches!(m, Out::RunTests(c) if c.request_id == next).then_some(())).await;

    drop(s1);
    drop(s2);
    t.hub.shutdown().await.unwrap();
}

/// A run asked for while the agent is away waits for it until it expires
/// (its timeout plus the slack, on the hub's clock); then the leader deletes
/// it and stores one `TestExpired` event naming it, and the agent that
/// connects afterwards never gets it (it gets the run asked for next).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_expired_before_the_agent_connected_is_reported_and_never_sent() {
    let dir = tempfile::tempdir().unwrap();
    let clock = convoy_core::clock::FakeClock::at_system_now();
    let t = start_clocked(dir.path(), FLEET_HELM, Some(clock.shared())).await;
    let hub = &t.hub;
    let c1 = register(hub, "c1", &[("env", "prod")]).await;
    t.pipeline.publish_helm("web", "main@sha1:1", b"release one", built_helm(), b"input one").unwrap();
    let mut admin = admin(hub).await;
    let mut s = connect(hub, &c1, "web", 1).await;
    report_applied(&mut s, 1, "web", 1).await;
    drop(s);
    eventually(|| async { (!hub.state().view().clusters["c1"].shared.connected()).then_some(()) }).await;

    let old = admin.run_tests(req("web", "c1")).await.unwrap().into_inner().request_id;
    // 30 s per hook + 60 s: expired at 90 s.
    clock.advance(std::time::Duration::from_secs(90));
    let events = |after: u64| pb::ListEventsRequest {
        cluster: "c1".into(),
        bundle: "web".into(),
        after_id: after,
        limit: 100,
        min_severity: 0,
    };
    let expired = eventually(|| {
        let mut admin = admin.clone();
        let old = old.clone();
        async move {
            let evs = admin.list_events(events(0)).await.unwrap().into_inner().events;
            evs.into_iter().find(|e| {
                e.event.as_ref().is_some_and(|e| e.reason == "TestExpired" && e.details["requestId"] == old)
            })
        }
    })
    .await;
    let ev = expired.event.unwrap();
    assert_eq!(ev.severity, pb::Severity::Warning as i32);
    assert!(ev.message.contains("no answer from the agent of cluster c1 within 90s"), "{}", ev.message);

    // The next run, asked for after the expiry, is the first the agent gets.
    let new = admin.run_tests(req("web", "c1")).await.unwrap().into_inner().request_id;
    let (mut s, _, _) = open(hub, &c1, 1).await.unwrap();
    let first = s
        .until(|m| match m {
            Out::RunTests(c) => Some(c.request_id.clone()),
            _ => None,
        })
        .await;
    assert_eq!(first, new, "the expired run {old} is never sent");
    // Reported once, however many expiry ticks passed.
    clock.advance(std::time::Duration::from_secs(1));
    let (mut later, _, _) = open(hub, &c1, 1).await.unwrap();
    let again = later
        .until(|m| match m {
            Out::RunTests(c) => Some(c.request_id.clone()),
            _ => None,
        })
        .await;
    assert_eq!(again, new, "a new session sends the pending run again; still not the expired one");
    let evs = admin.list_events(events(0)).await.unwrap().into_inner().events;
    let n = evs.iter().filter(|e| e.event.as_ref().is_some_and(|e| e.reason == "TestExpired")).count();
    assert_eq!(n, 1);
    drop(s);
    drop(later);
    t.hub.shutdown().await.unwrap();
}
