//! `helm.rollbackOnFailure` through the state actor: a Helm bundle's new
//! generation failing on a cluster gives every cluster that got it the last
//! good content back as a new signed generation, and the next commit is
//! deployed normally (docs/helm.md, "Remediation").

use convoy_artifact::Statement;
use convoy_core::pipeline::BuiltHelm;
use convoy_core::status::{BundleStatus, Phase};

use super::*;
use crate::domain::StatusRecord;

const HELM_FLEET: &str = r#"
apiVersion: convoy.dev/v1
kind: GitSource
metadata: {name: repo}
spec: {url: "https://git.example/fleet.git"}
---
apiVersion: convoy.dev/v1
kind: Bundle
metadata: {name: web}
spec:
  source: repo
  timeout: 1h
  targets: [{clusterSelector: {matchLabels: {env: prod}}}]
  helm: {path: charts/web, releaseName: web, namespace: apps, rollbackOnFailure: true}
"#;

fn built(version: &str) -> BuiltHelm {
    BuiltHelm {
        chart: "web".into(),
        version: version.into(),
        chart_digest: format!("sha256:{}", "c".repeat(64)),
        values_digest: format!("sha256:{}", "d".repeat(64)),
        warnings: Vec::new(),
        input: None,
    }
}

fn status(generation: u64, digest: &str, phase: Phase, message: &str) -> StatusRecord {
    StatusRecord {
        status: BundleStatus {
            bundle: "web".into(),
            generation,
            digest: digest.into(),
            phase,
            message: message.into(),
            ..Default::default()
        },
        updated_unix_ms: 0,
    }
}

async fn until(
    c: &Arc<ClusterShared>,
    what: &str,
    ok: impl Fn(&DeploymentRecord) -> bool,
) -> DeploymentRecord {
    let mut rx = c.subscribe_desired();
    let d = tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|d| d.bundles.get("web").is_some_and(|x| ok(&x.record))),
    )
    .await
    .unwrap_or_else(|_| panic!("{what}: {:?}", c.desired().bundles.get("web").map(|d| d.record.generation)))
    .unwrap();
    (*d.bundles["web"].record).clone()
}

#[tokio::test]
async fn a_failed_helm_upgrade_is_rolled_back_as_a_new_signed_generation_of_the_last_good_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let fleet = Arc::new(FleetConfig::parse([("fleet.yaml", HELM_FLEET)]).unwrap());
    let pipeline = StaticPipeline::new(dir.path());
    let one =
        pipeline.publish_helm("web", "main@sha1:1", b"release one", built("1.0.0"), b"input one").unwrap();
    let loaded = Loaded {
        clusters: ["c1", "c2"]
            .iter()
            .map(|n| ClusterRecord { name: n.to_string(), labels: prod(), ..Default::default() })
            .collect(),
        ..Default::default()
    };
    let statuses = Arc::new(StatusIndex::default());
    // The rollout timer ticks in an hour: every decision below comes from a status.
    let (state, _store, _view) = spawn_actor_with(
        dir.path(),
        loaded,
        fleet,
        pipeline.builds(),
        pipeline.clone(),
        &shutdown,
        statuses.clone(),
        Duration::from_secs(3600),
    );
    let shared = |c: &str| state.view().clusters[c].shared.clone();
    let (c1, c2) = (shared("c1"), shared("c2"));
    let _s1 = c1.begin_session(CancellationToken::new(), tokio::sync::mpsc::channel(1).0);
    let _s2 = c2.begin_session(CancellationToken::new(), tokio::sync::mpsc::channel(1).0);

    // Generation 1 (the first install) goes everywhere at once and is Ready.
    let g1 = until(&c1, "generation 1", |r| r.digest == one.digest).await;
    until(&c2, "generation 1 on c2", |r| r.digest == one.digest).await;
    assert!(state.view().rollouts.get("web").is_none(), "a first generation has nothing to go back to");
    for c in ["c1", "c2"] {
        statuses.put(c, &[status(g1.generation, &g1.digest, Phase::Ready, "ready")]);
    }

    // Generation 2 reaches both clusters at once (one implicit wave).
    let two =
        pipeline.publish_helm("web", "main@sha1:2", b"release two", built("1.1.0"), b"input two").unwrap();
    let g2 = until(&c1, "generation 2 on c1", |r| r.digest == two.digest).await;
    until(&c2, "generation 2 on c2", |r| r.digest == two.digest).await;
    assert!(g2.generation > g1.generation);
    let rec = state.view().rollouts["web"].clone();
    assert_eq!(rec.state.waves[0].name, crate::domain::helmops::WAVE);

    // The release fails on c1 (the agent reports Stalled); c2 is fine.
    statuses.put(
        "c1",
        &[status(g2.generation, &g2.digest, Phase::Stalled, "helm release web revision 2 failed: not ready")],
    );
    statuses.put("c2", &[status(g2.generation, &g2.digest, Phase::Ready, "ready")]);

    // Both get generation 1's artifact back, signed again above generation 2.
    let back = until(&c1, "the rollback on c1", |r| r.generation > g2.generation).await;
    assert_eq!(back.digest, g1.digest, "the last good artifact");
    assert_eq!(back.generation, g2.generation + 1);
    let st = Statement::parse(&back.statement).unwrap();
    assert_eq!((st.generation, st.artifact.digest.as_str()), (back.generation, g1.digest.as_str()));
    assert_eq!(st.helm.as_ref().map(|h| h.version.as_str()), Some("1.0.0"), "the old chart version");
    assert!(!back.signature.is_empty() && back.statement != g1.statement);
    let back2 = until(&c2, "the rollback on c2", |r| r.generation > g2.generation).await;
    assert_eq!((back2.generation, back2.digest.as_str()), (back.generation, g1.digest.as_str()));

    // Reported: the record names what failed and what was restored.
    let rec = state.view().rollouts["web"].clone();
    let (reason, rows) = crate::domain::helmops::rollback_report(&rec).expect("a rollback report");
    assert!(reason.contains("c1: Stalled: helm release web revision 2 failed"), "{reason}");
    let c1_row = rows.iter().find(|r| r.cluster == "c1").unwrap();
    assert_eq!(
        (c1_row.failed, c1_row.restored, c1_row.new),
        (Some(g2.generation), g1.generation, back.generation)
    );

    // The rollback failing too does not start another one; the next commit
    // is deployed normally, above the rollback's generation.
    statuses.put("c1", &[status(back.generation, &back.digest, Phase::Stalled, "still failing")]);
    let three = pipeline
        .publish_helm("web", "main@sha1:3", b"release three", built("1.2.0"), b"input three")
        .unwrap();
    let g3 = until(&c1, "generation 3's build on c1", |r| r.digest == three.digest).await;
    assert_eq!(g3.generation, back.generation + 1, "signed above the rollback, no other generation between");
    until(&c2, "generation 3's build on c2", |r| r.digest == three.digest).await;
}
