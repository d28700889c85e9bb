//! `RunTests` (`convoy test`) at the gRPC edge, in process: admin only; a
//! clear status for an unknown cluster or bundle, a bundle that is not Helm,
//! nothing applied yet, or an agent not connected to this replica; and the
//! command delivered on the agent's Sync stream, once per call, never
//! coalesced with desired-state changes.

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

fn built() -> convoy_core::pipeline::BuiltHelm {
    convoy_core::pipeline::BuiltHelm {
        chart: "web".into(),
        version: "1.0.0".into(),
        chart_digest: format!("sha256:{}", "c".repeat(64)),
        values_digest: format!("sha256:{}", "d".repeat(64)),
        warnings: Vec::new(),
        input: None,
    }
}

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
    t.pipeline.publish_helm("web", "main@sha1:1", b"release one", built(), b"input one").unwrap();
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
    t.pipeline.publish_helm("web", "main@sha1:2", b"release two", built(), b"input two").unwrap();
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

    // An agent that reported and went away: not connected to this replica.
    let mut s2 = connect(hub, &c2, "web", 2).await;
    report_applied(&mut s2, 1, "web", 2).await;
    assert_eq!(admin.run_tests(req("web", "c2")).await.unwrap().into_inner().generation, 2);
    drop(s2);
    let e = eventually(|| {
        let mut admin = admin.clone();
        async move { admin.run_tests(req("web", "c2")).await.err() }
    })
    .await;
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("is not connected to this hub replica"), "{e:?}");

    drop(s1);
    t.hub.shutdown().await.unwrap();
}
