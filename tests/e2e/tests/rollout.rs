//! Health-gated progressive rollouts (issue 15, docs/rollouts.md) end to end:
//! a real git server, the hub, kube-sim clusters with real agents, the real
//! `convoy` and `kubectl` binaries. One bundle `web` (a Namespace and a
//! Deployment) targets every cluster; clusters carry a `wave` label that the
//! rollout's waves select. The first generation goes everywhere at once (there
//! is nothing to hold clusters on); each test then commits a second revision.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use convoy_e2e::fleet::cell_ready_at;
use convoy_e2e::{Cluster, ClusterSpec, Fleet, FleetOptions, HubMode, commit_of, eventually};
use convoy_proto::v1 as pb;

fn convoy_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_convoy-e2e-convoy"))
}

const MANIFEST: &str = "app/app.yaml";
const GOOD: &str = "ghcr.io/stefanprodan/podinfo:6.7.0";
const GOOD2: &str = "ghcr.io/stefanprodan/podinfo:6.7.1";
const BAD: &str = "ghcr.io/stefanprodan/podinfo:does-not-exist";

fn manifest(image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: app\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: app\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n        - name: web\n          image: {image}\n"
    )
}

/// The `web` Bundle with `rollout` (YAML, indented under `spec.rollout`).
fn bundle(rollout: &str) -> String {
    let rollout: String = rollout.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: convoy.dev/v1\nkind: Bundle\nmetadata:\n  name: web\nspec:\n  source: fleet\n  path: app\n  prune: true\n  wait: true\n  timeout: 2s\n  targets:\n    - clusterSelector: {{}}\n  rollout:\n{rollout}"
    )
}

/// A wave selecting `wave=<name>`.
fn wave(name: &str, extra: &str) -> String {
    format!("- name: {name}\n  selector: {{matchLabels: {{wave: {name}}}}}\n{extra}")
}

fn clusters(list: &[(&str, &str)]) -> Vec<ClusterSpec> {
    list.iter().map(|(n, w)| ClusterSpec::new(n, &format!("wave={w}"))).collect()
}

const SIX: [(&str, &str); 6] =
    [("a1", "one"), ("a2", "one"), ("b1", "two"), ("b2", "two"), ("c1", "three"), ("c2", "three")];

async fn start(list: &[(&str, &str)], rollout: &str, opts: FleetOptions) -> Fleet {
    let fleet = Fleet::start(FleetOptions {
        clusters: clusters(list),
        files: vec![(MANIFEST.into(), manifest(GOOD).into_bytes())],
        bundles_yaml: bundle(rollout),
        ..opts
    })
    .await
    .unwrap();
    let b = fleet.wait_converged(120).await;
    assert_eq!(b[0].generation, 1);
    fleet
}

async fn commit_image(fleet: &Fleet, from: &str, to: &str) -> String {
    fleet.repo.replace(MANIFEST, from, to).unwrap();
    fleet.repo.commit(&format!("web {to}")).unwrap();
    fleet.push().await.unwrap()
}

async fn get_rollout(fleet: &Fleet) -> Option<pb::RolloutView> {
    fleet
        .admin()
        .get_rollout(pb::GetRolloutRequest { bundle: "web".into() })
        .await
        .ok()
        .map(|r| r.into_inner())
}

async fn wait_rollout(
    fleet: &Fleet,
    secs: u64,
    what: &str,
    ok: impl Fn(&pb::RolloutView) -> bool,
) -> pb::RolloutView {
    eventually(secs, what, || async { get_rollout(fleet).await.filter(|r| ok(r)) }).await
}

fn cluster_state<'a>(r: &'a pb::RolloutView, name: &str) -> Option<&'a str> {
    r.waves
        .iter()
        .flat_map(|w| &w.clusters)
        .chain(&r.unwaved)
        .find(|c| c.name == name)
        .map(|c| c.state.as_str())
}

fn cell<'a>(b: &'a pb::BundleView, cluster: &str) -> &'a pb::ClusterBundleStatus {
    b.clusters.iter().find(|c| c.cluster == cluster).unwrap_or_else(|| panic!("no cell {cluster}"))
}

/// Wait until `cluster` reports the bundle Ready at `generation`; returns its status.
async fn wait_ready_at(fleet: &Fleet, cluster: &str, generation: u64, secs: u64) -> pb::BundleStatus {
    let what = format!("{cluster} Ready at generation {generation}");
    eventually(secs, &what, || async {
        let b = fleet.bundle("web").await.ok()?;
        let c = b.clusters.iter().find(|c| c.cluster == cluster)?;
        cell_ready_at(c, generation).then(|| c.status.clone().unwrap())
    })
    .await
}

/// The Deployment's image and every image its ReplicaSets ever had, by kubectl.
async fn kubectl_images(c: &Cluster) -> (String, String) {
    let deploy = c
        .kubectl_ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "app",
            "-o",
            "jsonpath={.spec.template.spec.containers[*].image}",
        ])
        .await
        .unwrap();
    let rs = c.kubectl_ok(&["get", "rs", "-n", "app", "-o", "jsonpath={..image}"]).await.unwrap();
    (deploy.trim().to_string(), rs)
}

/// Six clusters in three waves of two: a good revision rolls wave by wave.
/// The order and the soak are read from the clusters' own statuses: each
/// cluster of wave k+1 started applying the new generation (observed time
/// minus the apply-and-wait duration) at least `soak` after the last cluster
/// of wave k reported it Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_good_revision_rolls_wave_by_wave_with_soak() {
    let waves: String =
        ["one", "two", "three"].iter().map(|w| wave(w, "  soak: 2s\n  progressDeadline: 60s\n")).collect();
    let fleet = start(&SIX, &format!("waves:\n{waves}onFailure: rollback\n"), FleetOptions::default()).await;
    assert!(get_rollout(&fleet).await.is_none(), "a first generation goes everywhere at once");
    let commit = commit_image(&fleet, GOOD, GOOD2).await;
    let b = fleet.wait_rolled_out("web", &commit, 120).await;
    assert_eq!(b.generation, 2);
    let mut ready = BTreeMap::new();
    let mut started = BTreeMap::new();
    for (name, _) in SIX {
        let st = cell(&b, name).status.clone().unwrap();
        assert_eq!(st.generation, 2);
        ready.insert(name, st.observed_unix_ms);
        started.insert(name, st.observed_unix_ms - st.ready_duration_ms as i64);
    }
    let group = |w: &str| SIX.iter().filter(|(_, x)| *x == w).map(|(n, _)| *n).collect::<Vec<_>>();
    for (prev, next) in [("one", "two"), ("two", "three")] {
        let last_ready = group(prev).iter().map(|n| ready[n]).max().unwrap();
        let first_start = group(next).iter().map(|n| started[n]).min().unwrap();
        assert!(
            first_start >= last_ready + 2000,
            "wave {next} started at {first_start}, {} ms after wave {prev} was Ready (soak 2s): ready {ready:?} started {started:?}",
            first_start - last_ready
        );
    }
    let r = wait_rollout(&fleet, 30, "the rollout Complete", |r| r.status == "Complete").await;
    assert_eq!(commit_of(r.revision.split_whitespace().next().unwrap()), commit);
    let done: Vec<i64> = r.waves.iter().map(|w| w.completed_unix_ms).collect();
    assert!(done.windows(2).all(|w| 0 < w[0] && w[0] < w[1]), "waves completed in order: {done:?}");
    for w in &r.waves {
        assert_eq!(w.clusters.len(), 2, "{w:?}");
        assert!(w.clusters.iter().all(|c| c.state == "Done"), "{w:?}");
    }
    // The operator's view.
    let out = fleet.convoy_ok(&convoy_bin(), &["rollout", "status", "web", "-o", "json"]).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "Complete", "{out}");
    assert_eq!(v["waves"].as_array().unwrap().len(), 3, "{out}");
    let table = fleet.convoy_ok(&convoy_bin(), &["rollout", "status", "web"]).await.unwrap();
    assert!(table.contains("Status:    Complete") && table.contains("Done=2"), "{table}");
    for c in &fleet.clusters {
        assert_eq!(c.deployment_image("app", "web").as_deref(), Some(GOOD2), "{}", c.name);
    }
    fleet.shutdown().await;
}

/// A revision whose image cannot be pulled: wave 1 stays NotReady past its
/// progressDeadline and fails its threshold; `onFailure: rollback` gives both
/// wave-1 clusters their previous content back as generation 3 (signed,
/// above the bad generation 2). Waves 2 and 3 never see the bad revision:
/// the hub never sent it to them, and kubectl finds no trace of its image in
/// their ReplicaSets. An event and an alert name the wave, clusters and reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_unpullable_image_fails_wave_one_and_rolls_back() {
    let waves: String =
        ["one", "two", "three"].iter().map(|w| wave(w, "  soak: 1s\n  progressDeadline: 4s\n")).collect();
    let fleet = start(
        &SIX,
        &format!("waves:\n{waves}onFailure: rollback\n"),
        FleetOptions { alerts: true, ..Default::default() },
    )
    .await;
    let good_digest = fleet.bundle("web").await.unwrap().digest;
    commit_image(&fleet, GOOD, BAD).await;
    // Until wave 1 is back on the good content, waves 2 and 3 stay on generation 1.
    let saw_bad = std::sync::atomic::AtomicBool::new(false);
    eventually(90, "wave one rolled back to the good content at generation 3", || async {
        let b = fleet.bundle("web").await.ok()?;
        for n in ["b1", "b2", "c1", "c2"] {
            let c = cell(&b, n);
            assert_eq!(c.desired_generation, 1, "{n} was sent the bad revision: {c:?}");
            assert!(c.status.as_ref().is_none_or(|s| s.generation == 1), "{n}: {c:?}");
        }
        for n in ["a1", "a2"] {
            if cell(&b, n).status.as_ref().is_some_and(|s| s.generation == 2) {
                saw_bad.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        ["a1", "a2"]
            .iter()
            .all(|n| {
                let c = cell(&b, n);
                cell_ready_at(c, 3) && c.status.as_ref().is_some_and(|s| s.digest == good_digest)
            })
            .then_some(())
    })
    .await;
    assert!(
        saw_bad.load(std::sync::atomic::Ordering::Relaxed),
        "wave one had the bad generation before the rollback"
    );
    let r = get_rollout(&fleet).await.unwrap();
    assert_eq!(r.status, "RolledBack", "{r:?}");
    assert!(r.reason.contains("wave one failed its threshold"), "{}", r.reason);
    assert!(r.waves[0].failed);
    assert_eq!(cluster_state(&r, "a1"), Some("RolledBack"));
    assert!(r.waves[1].clusters.is_empty() && r.waves[1].started_unix_ms == 0, "{r:?}");
    for c in &fleet.clusters {
        let (deploy, rs) = kubectl_images(c).await;
        assert_eq!(deploy, GOOD, "{}", c.name);
        if c.name.starts_with('a') {
            assert!(rs.contains("does-not-exist"), "{}: wave one had the bad revision: {rs}", c.name);
        } else {
            assert!(!rs.contains("does-not-exist"), "{} saw the bad revision: {rs}", c.name);
        }
    }
    let events = fleet.events("hub").await.unwrap();
    let rolled = events
        .iter()
        .filter_map(|e| e.event.as_ref())
        .find(|e| e.reason == "RolloutRolledBack")
        .expect("a RolloutRolledBack event");
    for part in ["wave one", "a1", "a2", "past progressDeadline"] {
        assert!(rolled.message.contains(part), "{part:?} not in {:?}", rolled.message);
    }
    let receiver = fleet.receiver.as_ref().unwrap();
    eventually(30, "the rollback alert", || async {
        receiver
            .notifications()
            .iter()
            .any(|n| n.reason == "RolloutRolledBack" && n.bundle == "web")
            .then_some(())
    })
    .await;
    fleet.shutdown().await;
}

/// An approval gate holds wave 2 until `convoy rollout approve web`; the
/// approval is an event naming the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_approval_gate_holds_wave_two_until_approved() {
    let rollout =
        format!("waves:\n{}{}", wave("one", "  soak: 0s\n"), wave("two", "  soak: 0s\n  gate: approval\n"));
    let fleet = start(&[("a1", "one"), ("b1", "two")], &rollout, FleetOptions::default()).await;
    commit_image(&fleet, GOOD, GOOD2).await;
    wait_ready_at(&fleet, "a1", 2, 60).await;
    let r = wait_rollout(&fleet, 30, "wave two awaiting approval", |r| r.status == "AwaitingApproval").await;
    assert_eq!(r.current_wave, "two");
    let table = fleet.convoy_ok(&convoy_bin(), &["rollout", "status", "web"]).await.unwrap();
    assert!(table.contains("approval (waiting)"), "{table}");
    // Held: b1 is still sent generation 1 while the gate is closed.
    let b = fleet.bundle("web").await.unwrap();
    assert_eq!(cell(&b, "b1").desired_generation, 1, "{r:?} {:?}", fleet.events("hub").await.unwrap());
    assert_eq!(fleet.cluster("b1").deployment_image("app", "web").as_deref(), Some(GOOD));
    // Approving the rollout of a bundle that has none is refused.
    let out = fleet.convoy(&convoy_bin(), &["rollout", "approve", "nope"]).await.unwrap();
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("approve refused: the bundle has no rollout"), "{stderr}");
    // Pause and resume show at once; resuming what is not paused is refused.
    fleet.convoy_ok(&convoy_bin(), &["rollout", "pause", "web"]).await.unwrap();
    assert_eq!(get_rollout(&fleet).await.unwrap().status, "Paused");
    fleet.convoy_ok(&convoy_bin(), &["rollout", "resume", "web"]).await.unwrap();
    assert_ne!(get_rollout(&fleet).await.unwrap().status, "Paused");
    let out = fleet.convoy(&convoy_bin(), &["rollout", "resume", "web"]).await.unwrap();
    assert_eq!(out.status.code(), Some(1), "not paused: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused: rollout of \"web\": resume refused: the rollout is not paused"),
        "the CLI prints the hub's reason: {stderr}"
    );
    wait_rollout(&fleet, 30, "wave two awaiting approval again", |r| r.status == "AwaitingApproval").await;
    assert_eq!(fleet.cluster("b1").deployment_image("app", "web").as_deref(), Some(GOOD));
    fleet.convoy_ok(&convoy_bin(), &["rollout", "approve", "web"]).await.unwrap();
    wait_ready_at(&fleet, "b1", 2, 60).await;
    wait_rollout(&fleet, 30, "the rollout Complete", |r| r.status == "Complete").await;
    let events = fleet.events("hub").await.unwrap();
    assert!(
        events.iter().filter_map(|e| e.event.as_ref()).any(|e| e.reason == "RolloutApproved"
            && e.message.contains("admin:")
            && e.message.contains("wave two")),
        "an approval event naming the caller"
    );
    fleet.shutdown().await;
}

/// The real `convoy hub` process is SIGKILLed while wave 1 soaks and
/// restarted: the rollout resumes where it was (same start, wave 1 not
/// restarted, no new generation signed) and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_hub_killed_mid_wave_resumes_the_rollout() {
    let rollout = format!("waves:\n{}{}", wave("one", "  soak: 4s\n"), wave("two", "  soak: 0s\n"));
    let mut fleet = start(
        &[("a1", "one"), ("b1", "two")],
        &rollout,
        FleetOptions { hub: HubMode::Process(convoy_bin()), ..Default::default() },
    )
    .await;
    let commit = commit_image(&fleet, GOOD, GOOD2).await;
    let before =
        wait_rollout(&fleet, 60, "wave one soaking", |r| cluster_state(r, "a1") == Some("Soaking")).await;
    fleet.hub.kill().unwrap();
    fleet.hub.restart().await.unwrap();
    let after = get_rollout(&fleet).await.expect("the rollout survived the restart");
    assert_eq!(after.started_unix_ms, before.started_unix_ms);
    assert_eq!(after.waves[0].started_unix_ms, before.waves[0].started_unix_ms, "wave one was not restarted");
    assert!(matches!(cluster_state(&after, "a1"), Some("Soaking" | "Done")), "{after:?}");
    let b = fleet.wait_rolled_out("web", &commit, 120).await;
    assert_eq!(b.generation, 2, "no generation signed again");
    let r = wait_rollout(&fleet, 30, "the rollout Complete", |r| r.status == "Complete").await;
    assert!(
        0 < r.waves[0].completed_unix_ms && r.waves[0].completed_unix_ms <= r.waves[1].started_unix_ms,
        "{r:?}"
    );
    fleet.shutdown().await;
}

/// A new commit while wave 2 waits for approval, with `onNewRevision:
/// supersede`: the rollout of the first revision ends and the new one starts
/// from wave 1; wave 2 never gets the superseded revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_new_commit_supersedes_the_rollout() {
    let rollout = format!(
        "waves:\n{}{}onNewRevision: supersede\n",
        wave("one", "  soak: 0s\n"),
        wave("two", "  soak: 0s\n  gate: approval\n")
    );
    let fleet = start(&[("a1", "one"), ("b1", "two")], &rollout, FleetOptions::default()).await;
    let first = commit_image(&fleet, GOOD, GOOD2).await;
    wait_ready_at(&fleet, "a1", 2, 60).await;
    wait_rollout(&fleet, 30, "wave two awaiting approval", |r| r.status == "AwaitingApproval").await;
    let third = "ghcr.io/stefanprodan/podinfo:6.7.2";
    let second = commit_image(&fleet, GOOD2, third).await;
    let r = wait_rollout(&fleet, 60, "the new revision's rollout", |r| {
        commit_of(r.revision.split_whitespace().next().unwrap_or("")) == second
    })
    .await;
    assert_ne!(first, second);
    assert!(r.waves[0].started_unix_ms > 0 || r.status == "Progressing", "{r:?}");
    wait_ready_at(&fleet, "a1", 3, 60).await;
    wait_rollout(&fleet, 30, "wave two awaiting approval again", |r| r.status == "AwaitingApproval").await;
    assert_eq!(fleet.cluster("b1").deployment_image("app", "web").as_deref(), Some(GOOD), "b1 is held");
    let events = fleet.events("hub").await.unwrap();
    assert!(events.iter().filter_map(|e| e.event.as_ref()).any(|e| e.reason == "RolloutSuperseded"));
    fleet.convoy_ok(&convoy_bin(), &["rollout", "approve", "web"]).await.unwrap();
    fleet.wait_rolled_out("web", &second, 60).await;
    let (_, rs) = kubectl_images(fleet.cluster("b1")).await;
    assert!(!rs.contains("6.7.1"), "b1 never got the superseded revision: {rs}");
    fleet.shutdown().await;
}

/// A cluster that joins while the rollout waits at wave 2 gets the last
/// completed revision (generation 1), not the half-rolled one; once the
/// rollout completes, it gets the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_cluster_joining_mid_rollout_gets_the_last_completed_revision() {
    let rollout =
        format!("waves:\n{}{}", wave("one", "  soak: 0s\n"), wave("two", "  soak: 0s\n  gate: approval\n"));
    let mut fleet = start(&[("a1", "one"), ("b1", "two")], &rollout, FleetOptions::default()).await;
    let commit = commit_image(&fleet, GOOD, GOOD2).await;
    wait_ready_at(&fleet, "a1", 2, 60).await;
    wait_rollout(&fleet, 30, "wave two awaiting approval", |r| r.status == "AwaitingApproval").await;
    // A new cluster in wave one (already completed).
    let spec = ClusterSpec::new("late", "wave=one");
    let token = fleet
        .admin()
        .create_token(pb::CreateTokenRequest {
            cluster: "late".into(),
            labels: spec.labels.clone().into_iter().collect(),
            ttl_seconds: 600,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let dir = fleet.root().join("clusters/late");
    let late =
        Cluster::start(&dir, &spec, Duration::from_millis(100), &fleet.hub, &token, false).await.unwrap();
    fleet.clusters.push(late);
    let st = wait_ready_at(&fleet, "late", 1, 60).await;
    assert_eq!(st.generation, 1);
    assert_eq!(fleet.cluster("late").deployment_image("app", "web").as_deref(), Some(GOOD));
    fleet.convoy_ok(&convoy_bin(), &["rollout", "approve", "web"]).await.unwrap();
    fleet.wait_rolled_out("web", &commit, 60).await;
    assert_eq!(fleet.cluster("late").deployment_image("app", "web").as_deref(), Some(GOOD2));
    fleet.shutdown().await;
}

/// `offlineClusters: skip`: a wave-1 cluster whose agent is down is skipped
/// (an event says so) and keeps its previous deployment, even after the
/// rollout completed and its agent came back; the wave completes without it.
/// (`wait` and `fail` are covered by the state machine's unit tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_offline_cluster_is_skipped() {
    let rollout = format!(
        "waves:\n{}{}offlineClusters: skip\n",
        wave("one", "  soak: 0s\n"),
        wave("two", "  soak: 0s\n")
    );
    let mut fleet =
        start(&[("a1", "one"), ("a2", "one"), ("b1", "two")], &rollout, FleetOptions::default()).await;
    fleet.cluster_mut("a2").stop_agent().await;
    eventually(30, "a2 disconnected", || async {
        (!fleet.hub_cluster("a2").await.ok()?.cluster?.connected).then_some(())
    })
    .await;
    commit_image(&fleet, GOOD, GOOD2).await;
    wait_ready_at(&fleet, "a1", 2, 60).await;
    wait_ready_at(&fleet, "b1", 2, 60).await;
    let r = wait_rollout(&fleet, 30, "the rollout Complete", |r| r.status == "Complete").await;
    assert_eq!(cluster_state(&r, "a2"), Some("Skipped"), "{r:?}");
    fleet.cluster_mut("a2").start_agent().await.unwrap();
    eventually(30, "a2 back", || async {
        fleet.hub_cluster("a2").await.ok()?.cluster?.connected.then_some(())
    })
    .await;
    let st = wait_ready_at(&fleet, "a2", 1, 30).await;
    assert_eq!(st.generation, 1, "the skipped cluster keeps its previous deployment");
    assert_eq!(fleet.cluster("a2").deployment_image("app", "web").as_deref(), Some(GOOD));
    let events = fleet.events("hub").await.unwrap();
    assert!(
        events
            .iter()
            .filter_map(|e| e.event.as_ref())
            .any(|e| e.reason == "RolloutClustersSkipped" && e.message.contains("a2")),
        "the skip is reported"
    );
    fleet.shutdown().await;
}
