//! One-shot apply/diff and the engine against kube-sim: real corpus bundles,
//! zero writes when unchanged, prune, refusals that apply nothing.

mod common;

use common::*;
use convoy_agent::engine::Action;
use convoy_agent::oneshot::{OneShotOptions, apply_dir, diff_dir};
use convoy_artifact::SigningKey;
use tokio_util::sync::CancellationToken;

fn opts(dir: &std::path::Path, key: &std::path::Path) -> OneShotOptions {
    let mut o = OneShotOptions::new(dir, vec![key.to_path_buf()]);
    o.target_namespace = Some("apps".into());
    o
}

#[tokio::test]
async fn heavy_argo_cd_applies_then_reapplies_with_zero_writes() {
    init();
    let sim = sim().await;
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let pubkey = write_pub(tmp.path(), &key);
    let packed = pack_dir(&corpus().join("argo-cd/manifests"));
    let dir = tmp.path().join("out");
    write_build_dir(&dir, &key, "argo-cd", 1, &packed);
    let cancel = CancellationToken::new();
    let mut o = opts(&dir, &pubkey);
    o.target_namespace = Some("argocd".into());

    let r = apply_dir(client(&sim), &o, &cancel).await.unwrap();
    assert!(r.apply.error.is_none(), "{}", r.render());
    let c = r.apply.counts();
    let objects = r.apply.inventory.entries.len() as u32;
    assert!(objects >= 58, "{}", r.render());
    assert_eq!(c.created, objects, "{}", r.render());
    assert!(sim.object("apps", "deployments", "argocd", "argocd-server").is_some());
    assert!(
        sim.object("apiextensions.k8s.io", "customresourcedefinitions", "", "applications.argoproj.io")
            .is_some()
    );
    let inv = sim.object("", "configmaps", "convoy-system", "convoy-inventory-argo-cd").expect("inventory");
    assert_eq!(inv["data"]["generation"], "1");

    sim.reset_stats();
    let r = apply_dir(client(&sim), &o, &cancel).await.unwrap();
    assert!(r.apply.error.is_none(), "{}", r.render());
    assert_eq!(r.apply.counts().unchanged, objects, "{}", r.render());
    assert_eq!(r.apply.writes, 0);
    assert_eq!(sim.stats().writes, 0, "an unchanged bundle costs no writes: {:?}", sim.stats());

    // diff agrees: nothing would change.
    let d = diff_dir(client(&sim), &o).await.unwrap();
    assert!(!d.changes(), "{}", d.render());
}

#[tokio::test]
async fn ingress_nginx_applies_with_namespace_first_and_webhook_last() {
    init();
    let sim = sim().await;
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let pubkey = write_pub(tmp.path(), &key);
    // Its two admission Jobs have `ttlSecondsAfterFinished: 0`: deleted by the
    // TTL-after-finished controller as they complete, they count as done for
    // `--wait` (a Job deleted by its TTL finished).
    let text =
        std::fs::read_to_string(corpus().join("ingress-nginx/deploy/static/provider/cloud/deploy.yaml"))
            .unwrap();
    assert_eq!(text.matches("  ttlSecondsAfterFinished: 0\n").count(), 2, "the corpus manifest as described");
    let packed = pack(&[("deploy.yaml", text)]);
    let dir = tmp.path().join("out");
    write_build_dir(&dir, &key, "ingress-nginx", 1, &packed);
    let mut o = opts(&dir, &pubkey);
    o.wait = true;
    o.timeout = std::time::Duration::from_secs(60);
    let r = apply_dir(client(&sim), &o, &CancellationToken::new()).await.unwrap();
    assert!(r.ok(), "{}", r.render());
    let kinds: Vec<&str> = r.apply.objects.iter().map(|o| o.key.kind.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"Namespace"));
    assert_eq!(kinds.last(), Some(&"ValidatingWebhookConfiguration"));
    assert!(sim.object("", "services", "ingress-nginx", "ingress-nginx-controller").is_some());
}

#[tokio::test]
async fn new_revision_prunes_removed_objects_but_not_opted_out_ones() {
    init();
    let sim = sim().await;
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let pubkey = write_pub(tmp.path(), &key);
    let keep_ann = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: keep\n  annotations:\n    convoy.dev/prune: disabled\ndata:\n  k: v\n";
    let v1 = pack(&[
        ("a.yaml", configmap("a", "1")),
        ("b.yaml", configmap("b", "1")),
        ("keep.yaml", keep_ann.to_string()),
    ]);
    let d1 = tmp.path().join("v1");
    write_build_dir(&d1, &key, "app", 1, &v1);
    let mut o = opts(&d1, &pubkey);
    o.prune = true;
    let cancel = CancellationToken::new();
    let r = apply_dir(client(&sim), &o, &cancel).await.unwrap();
    assert!(r.ok(), "{}", r.render());
    // Someone else's object with the same kind must never be touched.
    let foreign = pack(&[("f.yaml", configmap("foreign", "x"))]);
    let df = tmp.path().join("foreign");
    write_build_dir(&df, &key, "other", 1, &foreign);
    apply_dir(client(&sim), &opts(&df, &pubkey), &cancel).await.unwrap();

    let v2 = pack(&[("a.yaml", configmap("a", "2"))]);
    let d2 = tmp.path().join("v2");
    write_build_dir(&d2, &key, "app", 2, &v2);
    o.dir = d2.clone();
    // diff shows the change and the prune first.
    let d = diff_dir(client(&sim), &o).await.unwrap();
    assert!(d.changes());
    let would: Vec<(String, Action)> = d.objects.iter().map(|o| (o.key.to_string(), o.action)).collect();
    assert!(would.contains(&("ConfigMap/apps/a".into(), Action::WouldConfigure)), "{would:?}");
    assert!(would.contains(&("ConfigMap/apps/b".into(), Action::WouldPrune)), "{would:?}");
    assert!(would.contains(&("ConfigMap/apps/keep".into(), Action::PruneSkipped)), "{would:?}");

    let r = apply_dir(client(&sim), &o, &cancel).await.unwrap();
    assert!(r.ok(), "{}", r.render());
    let configured = r.apply.objects.iter().find(|x| x.key.name == "a").unwrap();
    assert_eq!(configured.action, Action::Configured);
    assert_eq!(configured.fields, vec![".data.k".to_string()]);
    assert!(sim.object("", "configmaps", "apps", "b").is_none(), "b pruned");
    assert!(sim.object("", "configmaps", "apps", "keep").is_some(), "opted out of prune");
    assert!(sim.object("", "configmaps", "apps", "foreign").is_some(), "never created by this bundle");
    assert_eq!(sim.object("", "configmaps", "apps", "a").unwrap()["data"]["k"], "2");
}

#[tokio::test]
async fn wrong_key_tampered_artifact_replay_and_broken_yaml_apply_nothing() {
    init();
    let sim = sim().await;
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let other = SigningKey::generate().unwrap();
    let pubkey = write_pub(tmp.path(), &key);
    let cancel = CancellationToken::new();
    let count = || {
        sim.objects("", "configmaps")
            .iter()
            .filter(|c| c["metadata"]["labels"]["convoy.dev/bundle"].is_string())
            .count()
    };
    let before = count();

    // Wrong key.
    let packed = pack(&[("a.yaml", configmap("a", "1"))]);
    let d = tmp.path().join("wrongkey");
    write_build_dir(&d, &other, "app", 1, &packed);
    let e = apply_dir(client(&sim), &opts(&d, &pubkey), &cancel).await.unwrap_err();
    assert_eq!(e.reason(), "SignatureInvalid", "{e}");

    // Tampered artifact (signed statement, different bytes).
    let d = tmp.path().join("tampered");
    write_build_dir(&d, &key, "app", 1, &packed);
    let evil = pack(&[("a.yaml", configmap("a", "evil"))]);
    std::fs::write(d.join("artifact.tar.gz"), &evil.bytes).unwrap();
    let e = apply_dir(client(&sim), &opts(&d, &pubkey), &cancel).await.unwrap_err();
    assert!(matches!(e.reason(), "DigestMismatch" | "SizeMismatch"), "{e}");

    // Broken YAML in the second document of a file (built by hand: the packer refuses it).
    let broken =
        format!("{}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: [x\n", configmap("b", "1"));
    let raw = raw_targz(&[("ok.yaml", &configmap("c", "1")), ("bad.yaml", &broken)]);
    let d = tmp.path().join("broken");
    std::fs::create_dir_all(&d).unwrap();
    let st = convoy_artifact::Statement::new(
        "app",
        "u",
        "r",
        convoy_artifact::digest_of(&raw),
        raw.len() as u64,
        1,
    );
    let (sb, sig) = key.sign_statement(&st).unwrap();
    std::fs::write(d.join("artifact.tar.gz"), &raw).unwrap();
    std::fs::write(d.join("statement.json"), sb).unwrap();
    std::fs::write(d.join("statement.sig"), sig).unwrap();
    let e = apply_dir(client(&sim), &opts(&d, &pubkey), &cancel).await.unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("bad.yaml") && msg.contains("document 1"), "{msg}");
    assert_eq!(count(), before, "nothing applied");

    // Replay: generation 2 applied, then generation 1 offered again.
    let g2 = pack(&[("a.yaml", configmap("a", "2"))]);
    let d2 = tmp.path().join("g2");
    write_build_dir(&d2, &key, "app", 2, &g2);
    apply_dir(client(&sim), &opts(&d2, &pubkey), &cancel).await.unwrap();
    let d1 = tmp.path().join("g1");
    write_build_dir(&d1, &key, "app", 1, &packed);
    sim.reset_stats();
    let e = apply_dir(client(&sim), &opts(&d1, &pubkey), &cancel).await.unwrap_err();
    assert_eq!(e.reason(), "GenerationRollback", "{e}");
    assert_eq!(sim.stats().writes, 0);
    assert_eq!(sim.object("", "configmaps", "apps", "a").unwrap()["data"]["k"], "2");
}

#[tokio::test]
async fn unpullable_image_reports_not_ready_with_the_reason() {
    init();
    let sim = sim_with(kube_sim::SimConfig {
        readiness_delay: std::time::Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let pubkey = write_pub(tmp.path(), &key);
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bad-pod\nspec:\n  containers:\n  - name: app\n    image: registry.example/app:does-not-exist\n";
    let packed = pack(&[
        ("ok.yaml", deployment("good", "nginx:1.27", 1)),
        ("bad.yaml", deployment("bad", "does-not-exist", 1)),
        ("pod.yaml", pod.to_string()),
    ]);
    let d = tmp.path().join("out");
    write_build_dir(&d, &key, "app", 1, &packed);
    let mut o = opts(&d, &pubkey);
    o.wait = true;
    o.timeout = std::time::Duration::from_secs(4);
    let r = apply_dir(client(&sim), &o, &CancellationToken::new()).await.unwrap();
    assert!(!r.ok());
    let rendered = r.render();
    let bad = r.health.iter().find(|h| h.key.name == "bad").unwrap();
    assert_ne!(bad.status, convoy_agent::health::HealthStatus::Current);
    // The Deployment says it is unavailable (and, where the cluster runs its
    // pods, the pods' image pull reason is appended).
    assert!(
        bad.message.contains("0/1 replicas available") && bad.message.contains("MinimumReplicasUnavailable"),
        "{}",
        bad.message
    );
    let bad_pod = r.health.iter().find(|h| h.key.name == "bad-pod").unwrap();
    assert!(
        bad_pod.message.contains("ImagePullBackOff") && bad_pod.message.contains("does-not-exist"),
        "{}",
        bad_pod.message
    );
    let good = r.health.iter().find(|h| h.key.name == "good").unwrap();
    assert_eq!(good.status, convoy_agent::health::HealthStatus::Current, "{}", good.message);
    assert!(rendered.contains("not ready") && rendered.contains("ImagePullBackOff"), "{rendered}");
}

#[tokio::test]
async fn server_errors_and_latency_are_retried_until_converged() {
    init();
    let sim = sim().await;
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let pubkey = write_pub(tmp.path(), &key);
    let files: Vec<(String, String)> =
        (0..20).map(|i| (format!("cm{i}.yaml"), configmap(&format!("cm{i}"), "v"))).collect();
    let refs: Vec<(&str, String)> = files.iter().map(|(p, c)| (p.as_str(), c.clone())).collect();
    let packed = pack(&refs);
    let d = tmp.path().join("out");
    write_build_dir(&d, &key, "app", 1, &packed);
    sim.faults().set_error_rate(0.3);
    sim.faults().set_latency(std::time::Duration::from_millis(20));
    let r = apply_dir(client(&sim), &opts(&d, &pubkey), &CancellationToken::new()).await.unwrap();
    assert!(r.ok(), "{}", r.render());
    assert!(sim.stats().injected_errors > 0, "faults were injected");
    let ours = sim
        .objects("", "configmaps")
        .into_iter()
        .filter(|c| c["metadata"]["labels"]["convoy.dev/bundle"] == "app")
        .count();
    assert_eq!(ours, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_with_other_managers_name_object_field_and_manager_and_force_takes_over() {
    init();
    let sim = sim().await;
    let tmp = tempfile::tempdir().unwrap();
    let kc = tmp.path().join("kubeconfig");
    sim.write_kubeconfig(&kc).unwrap();
    // Another tool owns .data.k of the same ConfigMap.
    let theirs = tmp.path().join("theirs.yaml");
    std::fs::write(
        &theirs,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shared\n  namespace: apps\ndata:\n  k: theirs\n",
    )
    .unwrap();
    for args in [
        vec!["create", "namespace", "apps"],
        vec!["apply", "--server-side", "--field-manager", "other-tool", "-f", theirs.to_str().unwrap()],
    ] {
        let out = tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kc)
            .args(&args)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let key = SigningKey::generate().unwrap();
    let pubkey = write_pub(tmp.path(), &key);
    let d = tmp.path().join("out");
    write_build_dir(&d, &key, "app", 1, &pack(&[("cm.yaml", configmap("shared", "ours"))]));
    let mut o = opts(&d, &pubkey);
    let r = apply_dir(client(&sim), &o, &CancellationToken::new()).await.unwrap();
    let e = r.apply.error.as_ref().expect("a conflict");
    assert_eq!(e.reason(), "FieldConflict", "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("ConfigMap/apps/shared") && msg.contains(".data.k") && msg.contains("other-tool"),
        "{msg}"
    );
    assert_eq!(sim.object("", "configmaps", "apps", "shared").unwrap()["data"]["k"], "theirs");

    o.force = true;
    let r = apply_dir(client(&sim), &o, &CancellationToken::new()).await.unwrap();
    assert!(r.ok(), "{}", r.render());
    assert_eq!(sim.object("", "configmaps", "apps", "shared").unwrap()["data"]["k"], "ours");
}

#[tokio::test]
async fn custom_resources_apply_after_their_crd_in_the_same_bundle() {
    init();
    let sim = sim().await;
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let pubkey = write_pub(tmp.path(), &key);
    let crd = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: widgets.example.com\nspec:\n  group: example.com\n  scope: Namespaced\n  names:\n    kind: Widget\n    plural: widgets\n    singular: widget\n    listKind: WidgetList\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        properties:\n          spec:\n            type: object\n            properties:\n              size:\n                type: integer\n";
    let cr = "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  size: 3\n";
    let role = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: widget-reader\nrules:\n- apiGroups: [example.com]\n  resources: [widgets]\n  verbs: [get, list]\n";
    // The CR comes first in the files: staging, not file order, decides.
    let packed = pack(&[
        ("a-cr.yaml", cr.to_string()),
        ("b-role.yaml", role.to_string()),
        ("c-crd.yaml", crd.to_string()),
    ]);
    let d = tmp.path().join("out");
    write_build_dir(&d, &key, "widgets", 1, &packed);
    let r = apply_dir(client(&sim), &opts(&d, &pubkey), &CancellationToken::new()).await.unwrap();
    assert!(r.ok(), "{}", r.render());
    let order: Vec<&str> = r.apply.objects.iter().map(|o| o.key.kind.as_str()).collect();
    assert_eq!(order, ["CustomResourceDefinition", "ClusterRole", "Widget"]);
    let w = sim.object("example.com", "widgets", "apps", "w1").expect("the custom resource exists");
    assert_eq!(w["spec"]["size"], 3);
    // And again: all unchanged, no writes.
    sim.reset_stats();
    let r = apply_dir(client(&sim), &opts(&d, &pubkey), &CancellationToken::new()).await.unwrap();
    assert_eq!(r.apply.counts().unchanged, 3, "{}", r.render());
    assert_eq!(sim.stats().writes, 0);
}

#[tokio::test]
async fn force_recreates_an_object_whose_immutable_field_changed() {
    init();
    let sim = sim().await;
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let pubkey = write_pub(tmp.path(), &key);
    let cancel = CancellationToken::new();
    let binding = |role: &str| {
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: rb\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: {role}\nsubjects:\n- kind: ServiceAccount\n  name: default\n  namespace: apps\n"
        )
    };
    let build = |generation: u64, role: &str| {
        let dir = tmp.path().join(format!("out{generation}"));
        write_build_dir(&dir, &key, "rb", generation, &pack(&[("rb.yaml", binding(role))]));
        dir
    };
    let r = apply_dir(client(&sim), &opts(&build(1, "reader"), &pubkey), &cancel).await.unwrap();
    assert!(r.ok(), "{}", r.render());

    // A new roleRef without force: refused, named, nothing changed.
    let dir = build(2, "writer");
    let r = apply_dir(client(&sim), &opts(&dir, &pubkey), &cancel).await.unwrap();
    let err = r.apply.error.as_ref().expect("refused");
    assert!(matches!(err, convoy_agent::Error::Immutable(_)), "{err:?}");
    assert_eq!(err.reason(), "Immutable");
    assert!(err.to_string().contains("RoleBinding/apps/rb roleRef"), "{err}");
    let live = sim.object("rbac.authorization.k8s.io", "rolebindings", "apps", "rb").unwrap();
    assert_eq!(live["roleRef"]["name"], "reader");

    // With --force: deleted, awaited, created again.
    let mut o = opts(&dir, &pubkey);
    o.force = true;
    let r = apply_dir(client(&sim), &o, &cancel).await.unwrap();
    assert!(r.ok(), "{}", r.render());
    let rb = r.apply.objects.iter().find(|o| o.key.kind == "RoleBinding").unwrap();
    assert_eq!(rb.action, Action::Recreated, "{}", r.render());
    assert_eq!(rb.fields, ["roleRef"]);
    assert!(r.render().contains("recreated"), "{}", r.render());
    let live = sim.object("rbac.authorization.k8s.io", "rolebindings", "apps", "rb").unwrap();
    assert_eq!(live["roleRef"]["name"], "writer");
}
