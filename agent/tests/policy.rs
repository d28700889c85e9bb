//! Ownership, reserved objects and tenancy in one-shot mode (the same
//! `ownership::enforce` the agent runs before every apply), against kube-sim.

mod common;

use common::*;
use convoy_agent::oneshot::{OneShotOptions, apply_dir};
use convoy_artifact::SigningKey;
use tokio_util::sync::CancellationToken;

struct Bundles {
    tmp: tempfile::TempDir,
    key: SigningKey,
    pubkey: std::path::PathBuf,
}

impl Bundles {
    fn new() -> Self {
        init();
        let tmp = tempfile::tempdir().unwrap();
        let key = SigningKey::generate().unwrap();
        let pubkey = write_pub(tmp.path(), &key);
        Bundles { tmp, key, pubkey }
    }

    /// A signed build directory of `files` for `bundle` at `generation`, and options to apply it.
    fn build(&self, bundle: &str, generation: u64, files: &[(&str, String)]) -> OneShotOptions {
        let dir = self.tmp.path().join(format!("{bundle}-{generation}"));
        write_build_dir(&dir, &self.key, bundle, generation, &pack(files));
        let mut o = OneShotOptions::new(&dir, vec![self.pubkey.clone()]);
        o.target_namespace = Some("apps".into());
        o.prune = true;
        o
    }
}

fn reason(e: &convoy_agent::Error) -> &'static str {
    e.reason()
}

#[tokio::test]
async fn a_second_bundle_cannot_take_an_object_without_the_takeover_annotation() {
    let b = Bundles::new();
    let sim = sim().await;
    let cancel = CancellationToken::new();
    let first = b.build("first", 1, &[("cm.yaml", configmap("shared", "first"))]);
    let r = apply_dir(client(&sim), &first, &cancel).await.unwrap();
    assert!(r.apply.error.is_none(), "{}", r.render());

    let second = b.build("second", 1, &[("cm.yaml", configmap("shared", "second"))]);
    let err = apply_dir(client(&sim), &second, &cancel).await.unwrap_err();
    assert_eq!(reason(&err), "OwnershipConflict");
    assert!(err.to_string().contains("ConfigMap/apps/shared belongs to bundle first"), "{err}");
    assert_eq!(sim.object("", "configmaps", "apps", "shared").unwrap()["data"]["k"], "first");
    assert!(sim.object("", "configmaps", "convoy-system", "convoy-inventory-second").is_none());

    // Naming the wrong bundle in the annotation does not help.
    let wrong = configmap("shared", "second")
        .replace("  name: shared\n", "  name: shared\n  annotations:\n    convoy.dev/takeover-from: third\n");
    let err =
        apply_dir(client(&sim), &b.build("second", 2, &[("cm.yaml", wrong)]), &cancel).await.unwrap_err();
    assert!(err.to_string().contains("not third as its convoy.dev/takeover-from annotation says"), "{err}");

    // The annotation naming the owner moves it; the old owner's next apply
    // (which no longer has it) does not prune it.
    let taken = configmap("shared", "second")
        .replace("  name: shared\n", "  name: shared\n  annotations:\n    convoy.dev/takeover-from: first\n");
    let r = apply_dir(client(&sim), &b.build("second", 3, &[("cm.yaml", taken)]), &cancel).await.unwrap();
    assert!(r.apply.error.is_none(), "{}", r.render());
    assert_eq!(sim.object("", "configmaps", "apps", "shared").unwrap()["data"]["k"], "second");
    let r = apply_dir(client(&sim), &b.build("first", 2, &[("o.yaml", configmap("other", "x"))]), &cancel)
        .await
        .unwrap();
    assert!(r.apply.error.is_none(), "{}", r.render());
    assert_eq!(r.apply.counts().pruned, 0, "{}", r.render());
    assert!(sim.object("", "configmaps", "apps", "shared").is_some());

    // And the first bundle cannot take it back without the annotation.
    let back = b.build("first", 3, &[("cm.yaml", configmap("shared", "first"))]);
    let err = apply_dir(client(&sim), &back, &cancel).await.unwrap_err();
    assert!(err.to_string().contains("belongs to bundle second"), "{err}");
}

#[tokio::test]
async fn the_agents_own_objects_are_reserved() {
    let b = Bundles::new();
    let sim = sim().await;
    let cancel = CancellationToken::new();
    // Give the agent namespace an inventory first.
    let r = apply_dir(client(&sim), &b.build("app", 1, &[("cm.yaml", configmap("x", "1"))]), &cancel)
        .await
        .unwrap();
    assert!(r.apply.error.is_none());
    let inventory_before = sim.object("", "configmaps", "convoy-system", "convoy-inventory-app").unwrap();

    let cases = [
        (
            "identity Secret",
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: convoy-agent-identity\n  namespace: convoy-system\nstringData:\n  tls.key: x\n",
        ),
        (
            "another bundle's inventory",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: convoy-inventory-app\n  namespace: convoy-system\ndata:\n  generation: \"0\"\n",
        ),
        ("the agent's namespace", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: convoy-system\n"),
    ];
    for (i, (what, doc)) in cases.iter().enumerate() {
        let o = b.build(
            "evil",
            i as u64 + 1,
            &[("x.yaml", doc.to_string()), ("ok.yaml", configmap("fine", "1"))],
        );
        let err = apply_dir(client(&sim), &o, &cancel).await.unwrap_err();
        assert_eq!(reason(&err), "Reserved", "{what}: {err}");
        assert!(err.to_string().contains("is reserved for the agent"), "{what}: {err}");
        assert!(sim.object("", "configmaps", "apps", "fine").is_none(), "{what}: nothing applied");
    }
    assert_eq!(
        sim.object("", "configmaps", "convoy-system", "convoy-inventory-app").unwrap()["data"],
        inventory_before["data"]
    );
    assert!(sim.object("", "configmaps", "convoy-system", "convoy-inventory-evil").is_none());
}

#[tokio::test]
async fn tenancy_rules_refuse_before_anything_is_applied() {
    let b = Bundles::new();
    let sim = sim().await;
    let cancel = CancellationToken::new();
    let files = [
        ("cm.yaml", configmap("cm", "1")),
        ("role.yaml", "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: wide\nrules: []\n".to_string()),
    ];
    let mut o = b.build("tenant", 1, &files);
    o.tenancy.allow_cluster_scoped = false;
    let err = apply_dir(client(&sim), &o, &cancel).await.unwrap_err();
    assert_eq!(reason(&err), "NotAllowed");
    assert!(err.to_string().contains("ClusterRole/wide: cluster-scoped objects are not allowed"), "{err}");
    assert!(sim.object("", "configmaps", "apps", "cm").is_none());

    let mut o = b.build("tenant", 2, &files[..1]);
    o.tenancy.allowed_namespaces = vec!["team-*".into()];
    let err = apply_dir(client(&sim), &o, &cancel).await.unwrap_err();
    assert!(err.to_string().contains("namespace apps is not in the bundle's allowedNamespaces"), "{err}");

    let mut o = b.build("tenant", 3, &files[..1]);
    o.tenancy.allowed_kinds = vec!["Secret".into(), "*.apps".into()];
    let err = apply_dir(client(&sim), &o, &cancel).await.unwrap_err();
    assert!(err.to_string().contains("ConfigMap/apps/cm: kind is not in the bundle's allowedKinds"), "{err}");

    // Allowed: applies.
    let mut o = b.build("tenant", 4, &files[..1]);
    o.tenancy.allowed_namespaces = vec!["apps".into()];
    o.tenancy.allowed_kinds = vec!["ConfigMap".into()];
    o.tenancy.allow_cluster_scoped = false;
    let r = apply_dir(client(&sim), &o, &cancel).await.unwrap();
    assert!(r.apply.error.is_none(), "{}", r.render());
    assert!(sim.object("", "configmaps", "apps", "cm").is_some());
}
