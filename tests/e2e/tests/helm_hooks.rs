//! ingress-nginx's admission-webhook hooks, end to end: the real corpus chart
//! (`../shared/corpus/charts/ingress-nginx`, copied at test time into the
//! test's git repository, never into ours) with `controller.admissionWebhooks`
//! and its NetworkPolicy enabled, rendered by the real `convoy hub` process,
//! installed and then upgraded by a real agent on kube-sim.
//!
//! The chart's hooks: a NetworkPolicy, a ServiceAccount, a ClusterRole and
//! binding, a Role and binding (each `pre-install,pre-upgrade,post-install,
//! post-upgrade`), the `-create` Job (`pre-install,pre-upgrade`) and the
//! `-patch` Job (`post-install,post-upgrade`), every one with
//! `before-hook-creation,hook-succeeded` and weight 0 (so Helm orders them by
//! kind: NetworkPolicy, ServiceAccount, ClusterRole, ClusterRoleBinding, Role,
//! RoleBinding, Job). The order is asserted from kube-sim's record of
//! committed changes (`KubeSim::changes`, resourceVersion order), where
//! deleted hooks stay visible: pre hooks created in order, the Job complete
//! before anything else is created, every pre hook deleted once the phase
//! succeeded, then the release's objects, the Deployment ready (`wait`),
//! then the post hooks in the same way, and the release `deployed` in
//! Helm's own record (helm-python-sdk).

use std::path::{Path, PathBuf};

use convoy_e2e::cluster::ClusterSpec;
use convoy_e2e::examples::{corpus, files_under};
use convoy_e2e::{Fleet, FleetOptions, HubMode};
use kube_sim::Change;
use serde_json::Value;

fn convoy_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_convoy-e2e-convoy"))
}

/// The corpus chart's files as repository files under `charts/ingress-nginx/`.
fn chart_files() -> Vec<(String, Vec<u8>)> {
    let root = corpus().join("charts/ingress-nginx");
    let out = files_under(&root, "charts/ingress-nginx/");
    assert!(out.iter().any(|(p, _)| p.ends_with("job-createSecret.yaml")), "{}", root.display());
    out
}

const VALUES: &str = "controller:\n  admissionWebhooks:\n    enabled: true\n    patch:\n      enabled: true\n      networkPolicy:\n        enabled: true\n  config:\n    use-gzip: \"false\"\n";

const BUNDLE: &str = r#"---
apiVersion: convoy.dev/v1
kind: Bundle
metadata:
  name: ingress
spec:
  source: fleet
  wait: true
  timeout: 90s
  targets:
  - clusterSelector: {}
  helm:
    path: charts/ingress-nginx
    releaseName: ingress-nginx
    namespace: default
    valuesFiles: [values/ingress.yaml]
"#;

/// The kinds the release and its hooks write, as kube-sim resources.
const RESOURCES: &[(&str, &str)] = &[
    ("networking.k8s.io", "networkpolicies"),
    ("", "serviceaccounts"),
    ("", "configmaps"),
    ("", "services"),
    ("rbac.authorization.k8s.io", "clusterroles"),
    ("rbac.authorization.k8s.io", "clusterrolebindings"),
    ("rbac.authorization.k8s.io", "roles"),
    ("rbac.authorization.k8s.io", "rolebindings"),
    ("batch", "jobs"),
    ("apps", "deployments"),
    ("networking.k8s.io", "ingressclasses"),
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations"),
];

/// The hooks of one phase, in the order Helm runs them (weight 0 for all:
/// kind order), as `resource/name`.
fn hooks(job: &str) -> Vec<String> {
    [
        "networkpolicies/ingress-nginx-admission",
        "serviceaccounts/ingress-nginx-admission",
        "clusterroles/ingress-nginx-admission",
        "clusterrolebindings/ingress-nginx-admission",
        "roles/ingress-nginx-admission",
        "rolebindings/ingress-nginx-admission",
    ]
    .into_iter()
    .map(String::from)
    .chain([format!("jobs/ingress-nginx-admission-{job}")])
    .collect()
}

fn is_hook(c: &Change) -> bool {
    c.object.pointer("/metadata/annotations/helm.sh~1hook").is_some()
}

fn id(c: &Change) -> String {
    format!("{}/{}", c.resource, c.name)
}

fn job_complete(c: &Change) -> bool {
    c.object["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|x| x["type"] == "Complete" && x["status"] == "True"))
}

/// The release's (and its hooks') changes after resourceVersion `after`.
fn release_changes(changes: &[Change], after: u64) -> Vec<&Change> {
    changes.iter().filter(|c| c.resource_version > after && c.name.starts_with("ingress-nginx")).collect()
}

/// Check one install or upgrade in kube-sim's record: pre hooks, release
/// objects, post hooks, each phase as Helm runs it. Returns a readable
/// trace for failure messages.
fn assert_hook_phases(changes: &[&Change], upgrade: bool) {
    let trace: Vec<String> = changes
        .iter()
        .map(|c| {
            format!(
                "{:>6} {:<8} {}{}{}",
                c.resource_version,
                c.kind,
                id(c),
                if is_hook(c) { " (hook)" } else { "" },
                if c.resource == "jobs" && job_complete(c) { " Complete" } else { "" }
            )
        })
        .collect();
    let trace = trace.join("\n");
    // Where each hook was created, completed (Jobs) and deleted.
    let pos = |f: &dyn Fn(&Change) -> bool| changes.iter().position(|c| f(c));
    let added = |h: &str, from: usize| {
        changes[from..]
            .iter()
            .position(|c| c.kind == "ADDED" && is_hook(c) && id(c) == h)
            .map(|i| i + from)
            .unwrap_or_else(|| panic!("{h} created after #{from}:\n{trace}"))
    };
    let deleted = |h: &str, from: usize| {
        changes[from..]
            .iter()
            .position(|c| c.kind == "DELETED" && is_hook(c) && id(c) == h)
            .map(|i| i + from)
            .unwrap_or_else(|| panic!("{h} deleted after #{from} (hook-succeeded):\n{trace}"))
    };
    // The release's own objects: the first write to one (a create on
    // install, a patch of the ConfigMap on upgrade), and the last.
    let release = |c: &Change| !is_hook(c) && c.kind != "DELETED";
    let first_release = pos(&|c| release(c) && (c.kind == "ADDED" || c.resource == "configmaps"))
        .unwrap_or_else(|| panic!("no release object written:\n{trace}"));

    // Pre hooks: created in Helm's order, the Job waited for until Complete,
    // all deleted (hook-succeeded) once the phase succeeded, and all of it
    // before the release's first object is written.
    let pre = hooks("create");
    let mut at = 0;
    let mut pre_added = Vec::new();
    for h in &pre {
        let i = added(h, at);
        pre_added.push(i);
        at = i + 1;
    }
    let create_done = changes[at..]
        .iter()
        .position(|c| id(c) == pre[6] && job_complete(c))
        .map(|i| i + at)
        .unwrap_or_else(|| panic!("the create Job completed:\n{trace}"));
    let pre_deleted: Vec<usize> = pre.iter().map(|h| deleted(h, create_done)).collect();
    assert!(
        pre_deleted.iter().all(|d| *d < first_release),
        "pre hooks run and go before the release's objects (upgrade: {upgrade}):\n{trace}"
    );

    // Post hooks: none before the release's objects are in place and the
    // controller Deployment is ready (`wait: true`); then the same steps.
    let post = hooks("patch");
    // The controller Deployment's last change before the post hooks shows it
    // ready at its generation (on an upgrade that leaves it alone, it has
    // no change at all and stayed ready).
    let is_controller = |c: &Change| c.resource == "deployments" && c.name == "ingress-nginx-controller";
    let generation = |c: &Change| c.object["metadata"]["generation"].as_i64().unwrap_or(0);
    let last_generation = changes.iter().filter(|c| is_controller(c)).map(|c| generation(c)).max();
    let ready = changes.iter().position(|c| {
        is_controller(c)
            && Some(generation(c)) == last_generation
            && c.object["status"]["readyReplicas"].as_i64().unwrap_or(0) >= 1
            && c.object["status"]["observedGeneration"].as_i64() == Some(generation(c))
    });
    let controller_changed = changes.iter().any(|c| is_controller(c));
    assert!(!controller_changed || ready.is_some(), "the controller Deployment got ready:\n{trace}");
    let ready = ready.unwrap_or(first_release);
    let mut at = first_release;
    let mut post_added = Vec::new();
    for h in &post {
        let i = added(h, at);
        post_added.push(i);
        at = i + 1;
    }
    assert!(post_added[0] > ready, "post hooks only after the release is ready:\n{trace}");
    let last_release_write =
        changes.iter().rposition(|c| release(c) && c.kind == "ADDED").unwrap_or(first_release);
    assert!(post_added[0] > last_release_write, "post hooks after every release object:\n{trace}");
    let patch_done = changes[at..]
        .iter()
        .position(|c| id(c) == post[6] && job_complete(c))
        .map(|i| i + at)
        .unwrap_or_else(|| panic!("the patch Job completed:\n{trace}"));
    for h in &post {
        deleted(h, patch_done);
    }
}

/// Helm's view (helm-python-sdk) of release `ingress-nginx` in `default`.
fn helm_view(kubeconfig: &Path) -> Value {
    convoy_e2e::helmview::helm_release(kubeconfig, "default", "ingress-nginx")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_ingress_nginx_admission_webhook_hooks_run_in_order_on_install_and_upgrade() {
    let mut files = chart_files();
    files.push(("values/ingress.yaml".into(), VALUES.as_bytes().to_vec()));
    let opts = FleetOptions {
        hub: HubMode::Process(convoy_bin()),
        clusters: vec![ClusterSpec::new("edge", "env=edge")],
        files,
        bundles_yaml: BUNDLE.to_string(),
        ..Default::default()
    };
    let fleet = Fleet::start(opts).await.unwrap();
    let views = fleet.wait_converged(180).await;
    assert_eq!(views.len(), 1);
    let c = fleet.cluster("edge");

    // Install.
    let changes = c.sim.changes(RESOURCES);
    let install = release_changes(&changes, 0);
    assert_hook_phases(&install, false);
    let mark = c.sim.resource_version();
    for (g, r, n) in [
        ("batch", "jobs", "ingress-nginx-admission-create"),
        ("batch", "jobs", "ingress-nginx-admission-patch"),
        ("", "serviceaccounts", "ingress-nginx-admission"),
        ("networking.k8s.io", "networkpolicies", "ingress-nginx-admission"),
    ] {
        assert!(c.sim.object(g, r, "default", n).is_none(), "{r}/{n}: hook-succeeded deleted it");
    }
    let vwc = c
        .sim
        .object(
            "admissionregistration.k8s.io",
            "validatingwebhookconfigurations",
            "",
            "ingress-nginx-admission",
        )
        .expect("the release's ValidatingWebhookConfiguration");
    assert!(vwc.pointer("/metadata/annotations/helm.sh~1hook").is_none(), "{vwc}");
    let h = helm_view(&c.kubeconfig);
    assert_eq!(h["list"][0]["name"], "ingress-nginx", "{h}");
    assert_eq!(h["list"][0]["status"], "deployed", "{h}");
    assert_eq!(h["history"].as_array().map(Vec::len), Some(1), "{h}");

    // Upgrade: a new controller setting; pre-upgrade and post-upgrade hooks
    // run again around the release's change.
    fleet
        .repo
        .write("values/ingress.yaml", &VALUES.replace("use-gzip: \"false\"", "use-gzip: \"true\""))
        .unwrap();
    fleet.repo.commit("ingress: gzip on").unwrap();
    let commit = fleet.push().await.unwrap();
    fleet.wait_rolled_out("ingress", &commit, 180).await;
    let cm =
        c.sim.object("", "configmaps", "default", "ingress-nginx-controller").expect("controller ConfigMap");
    assert_eq!(cm["data"]["use-gzip"], "true", "{cm}");
    let changes = c.sim.changes(RESOURCES);
    let upgrade = release_changes(&changes, mark);
    assert_hook_phases(&upgrade, true);
    let h = helm_view(&c.kubeconfig);
    let mut history: Vec<(u64, String)> = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["revision"].as_u64().unwrap_or(0), x["status"].as_str().unwrap_or("").to_string()))
        .collect();
    history.sort();
    assert_eq!(history, [(1, "superseded".to_string()), (2, "deployed".to_string())], "{h}");

    fleet.shutdown().await;
}
