//! Immutable fields, judged by the real kubectl: each case is created, then
//! changed with `kubectl apply --server-side` and with `kubectl replace` (a PUT
//! as `kubectl edit` sends), and must get the API server's 422 with its
//! wording; the stored object stays as it was.

mod common;

use common::Sim;
use serde_json::Value;

/// One immutable-field case: the object, the same object with the field
/// changed, and what kubectl must print.
struct Case {
    what: String,
    group: &'static str,
    resource: &'static str,
    name: String,
    before: String,
    after: String,
    expect: &'static [&'static str],
}

fn pod_template(label: &str, image: &str) -> String {
    format!(
        "  template:\n    metadata:\n      labels:\n        app: {label}\n    spec:\n      containers:\n      - name: c\n        image: {image}\n"
    )
}

fn workload(kind: &str, name: &str, label: &str, extra: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: {kind}\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  selector:\n    matchLabels:\n      app: {label}\n{extra}{}",
        pod_template(label, "nginx:1.27")
    )
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for (kind, res) in
        [("Deployment", "deployments"), ("ReplicaSet", "replicasets"), ("DaemonSet", "daemonsets")]
    {
        let name = format!("sel-{}", kind.to_lowercase());
        v.push(Case {
            what: format!("{kind} spec.selector"),
            group: "apps",
            resource: res,
            before: workload(kind, &name, "a", ""),
            after: workload(kind, &name, "b", ""),
            name,
            expect: &[
                "is invalid: spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"b\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable",
            ],
        });
    }
    let sts = |svc: &str| workload("StatefulSet", "db", "db", &format!("  serviceName: {svc}\n"));
    v.push(Case {
        what: "StatefulSet spec.serviceName".into(),
        group: "apps",
        resource: "statefulsets",
        name: "db".into(),
        before: sts("db"),
        after: sts("db-other"),
        expect: &["The StatefulSet \"db\" is invalid: spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"],
    });
    let job = |image: &str| {
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: once\n  namespace: default\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: c\n        image: {image}\n"
        )
    };
    v.push(Case {
        what: "Job spec.template".into(),
        group: "batch",
        resource: "jobs",
        name: "once".into(),
        before: job("busybox:1"),
        after: job("busybox:2"),
        expect: &["The Job \"once\" is invalid: spec.template: Invalid value: ", "field is immutable"],
    });
    let job_sel = |label: &str| {
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: manual\n  namespace: default\nspec:\n  manualSelector: true\n  selector:\n    matchLabels:\n      app: {label}\n  template:\n    metadata:\n      labels:\n        app: a\n        also: {label}\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: c\n        image: busybox\n"
        )
    };
    v.push(Case {
        what: "Job spec.selector".into(),
        group: "batch",
        resource: "jobs",
        name: "manual".into(),
        before: job_sel("a"),
        after: job_sel("b"),
        expect: &[
            "spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"b\"}",
            "field is immutable",
        ],
    });
    let svc = |ip: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  clusterIP: {ip}\n  ports:\n  - port: 80\n"
        )
    };
    v.push(Case {
        what: "Service spec.clusterIP".into(),
        group: "",
        resource: "services",
        name: "web".into(),
        before: svc("10.96.100.10"),
        after: svc("10.96.100.11"),
        expect: &["The Service \"web\" is invalid: spec.clusterIPs[0]: Invalid value: []string{\"10.96.100.11\"}: may not change once set"],
    });
    for kind in ["RoleBinding", "ClusterRoleBinding"] {
        let ns = if kind == "RoleBinding" { "  namespace: default\n" } else { "" };
        let rb = move |role: &str| {
            format!(
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: {kind}\nmetadata:\n  name: readers\n{ns}roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: {role}\nsubjects:\n- kind: User\n  name: jane\n  apiGroup: rbac.authorization.k8s.io\n"
            )
        };
        v.push(Case {
            what: format!("{kind} roleRef"),
            group: "rbac.authorization.k8s.io",
            resource: if kind == "RoleBinding" { "rolebindings" } else { "clusterrolebindings" },
            name: "readers".into(),
            before: rb("view"),
            after: rb("edit"),
            expect: &["roleRef: Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"ClusterRole\", Name:\"edit\"}: cannot change roleRef"],
        });
    }
    let cm = |imm: &str, val: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: frozen\n  namespace: default\nimmutable: {imm}\ndata:\n  k: {val}\n"
        )
    };
    v.push(Case {
        what: "immutable ConfigMap data".into(),
        group: "",
        resource: "configmaps",
        name: "frozen".into(),
        before: cm("true", "one"),
        after: cm("true", "two"),
        expect: &["The ConfigMap \"frozen\" is invalid: data: Forbidden: field is immutable when `immutable` is set"],
    });
    let cm2 = |imm: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: frozen2\n  namespace: default\nimmutable: {imm}\ndata:\n  k: v\n"
        )
    };
    v.push(Case {
        what: "ConfigMap immutable back to false".into(),
        group: "",
        resource: "configmaps",
        name: "frozen2".into(),
        before: cm2("true"),
        after: cm2("false"),
        expect: &["immutable: Forbidden: field is immutable when `immutable` is set"],
    });
    let secret = |ty: &str, imm: &str, val: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\n  namespace: default\ntype: {ty}\nimmutable: {imm}\nstringData:\n  password: {val}\n"
        )
    };
    v.push(Case {
        what: "immutable Secret data".into(),
        group: "",
        resource: "secrets",
        name: "creds".into(),
        before: secret("Opaque", "true", "one"),
        after: secret("Opaque", "true", "two"),
        expect: &[
            "The Secret \"creds\" is invalid: data: Forbidden: field is immutable when `immutable` is set",
        ],
    });
    let secret_t = |ty: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: typed\n  namespace: default\ntype: {ty}\ndata:\n  a: YQ==\n"
        )
    };
    v.push(Case {
        what: "Secret type".into(),
        group: "",
        resource: "secrets",
        name: "typed".into(),
        before: secret_t("Opaque"),
        after: secret_t("example.com/other"),
        expect: &[
            "The Secret \"typed\" is invalid: type: Invalid value: \"example.com/other\": field is immutable",
        ],
    });
    let pvc = |mode: &str, size: &str| {
        format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: data\n  namespace: default\nspec:\n  accessModes: [{mode}]\n  resources:\n    requests:\n      storage: {size}\n"
        )
    };
    v.push(Case {
        what: "PersistentVolumeClaim spec.accessModes".into(),
        group: "",
        resource: "persistentvolumeclaims",
        name: "data".into(),
        before: pvc("ReadWriteOnce", "1Gi"),
        after: pvc("ReadWriteMany", "1Gi"),
        expect: &["The PersistentVolumeClaim \"data\" is invalid: spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims"],
    });
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_gets_field_is_immutable_for_every_rule_by_apply_and_by_put() {
    let s = Sim::start().await;
    for c in cases() {
        s.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&c.before)).await;
        let ns = if c.resource.starts_with("cluster") { "" } else { "default" };
        let stored =
            s.sim.object(c.group, c.resource, ns, &c.name).unwrap_or_else(|| panic!("{} created", c.what));
        for how in [&["apply", "--server-side", "-f", "-"][..], &["replace", "-f", "-"][..]] {
            let (code, out, err) = s.kubectl_stdin(how, Some(&c.after)).await;
            assert_eq!(code, 1, "{} by {how:?} accepted: {out}", c.what);
            for e in c.expect {
                assert!(err.contains(e), "{} by {how:?}: expected {e:?} in:\n{err}", c.what);
            }
            let now = s.sim.object(c.group, c.resource, ns, &c.name).expect("still there");
            // (controllers may have written status meanwhile, and the PVC
            // controller may have bound the claim: spec.volumeName)
            let content = |v: &Value| {
                let mut v = v.clone();
                if let Some(m) = v.as_object_mut() {
                    m.shift_remove("status");
                    m.shift_remove("metadata");
                    if let Some(spec) = m.get_mut("spec").and_then(Value::as_object_mut) {
                        spec.shift_remove("volumeName");
                    }
                }
                v
            };
            assert_eq!(content(&now), content(&stored), "{}: refused change stored", c.what);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immutable_rules_keep_the_updatable_fields_updatable_and_answer_the_status_shape() {
    let s = Sim::start().await;
    // StatefulSet replicas/template, PVC requests, Job suspend, binding subjects, Secret data: all accepted
    let sts = workload("StatefulSet", "db", "db", "  serviceName: db\n  replicas: 1\n");
    s.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&sts)).await;
    let sts2 =
        workload("StatefulSet", "db", "db", "  serviceName: db\n  replicas: 3\n  minReadySeconds: 2\n")
            .replace("nginx:1.27", "nginx:1.28");
    let (code, _, err) = s.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&sts2)).await;
    assert_eq!(code, 0, "{err}");
    let pvc = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: data\n  namespace: default\nspec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 1Gi\n";
    s.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(pvc)).await;
    let (code, _, err) =
        s.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&pvc.replace("1Gi", "2Gi"))).await;
    assert_eq!(code, 0, "{err}");
    // a ConfigMap may become immutable, and a Service keeps its IP when the manifest omits it
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  namespace: default\ndata:\n  k: v\n";
    s.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(cm)).await;
    let (code, _, err) =
        s.kubectl_stdin(&["replace", "-f", "-"], Some(&format!("{cm}immutable: true\n"))).await;
    assert_eq!(code, 0, "{err}");
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  ports:\n  - port: 80\n";
    s.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(svc)).await;
    let ip = s.sim.object("", "services", "default", "web").unwrap()["spec"]["clusterIP"].clone();
    let (code, _, err) = s.kubectl_stdin(&["replace", "-f", "-"], Some(svc)).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(s.sim.object("", "services", "default", "web").unwrap()["spec"]["clusterIP"], ip);
    // becoming ExternalName drops the IP; coming back allocates one
    let ext = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  type: ExternalName\n  externalName: web.example.com\n";
    let (code, _, err) = s.kubectl_stdin(&["replace", "-f", "-"], Some(ext)).await;
    assert_eq!(code, 0, "{err}");
    let stored = s.sim.object("", "services", "default", "web").unwrap();
    assert!(stored["spec"].get("clusterIP").is_none(), "{stored}");
    let (code, _, err) = s.kubectl_stdin(&["replace", "-f", "-"], Some(svc)).await;
    assert_eq!(code, 0, "{err}");
    let back = s.sim.object("", "services", "default", "web").unwrap();
    assert!(back["spec"]["clusterIP"].as_str().is_some_and(|ip| ip.starts_with("10.")), "{back}");

    // the raw Status of a PUT (what kubectl edit receives)
    s.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&workload("Deployment", "web", "a", "")))
        .await;
    let mut d = s.sim.object("apps", "deployments", "default", "web").unwrap();
    // no resourceVersion: an unconditional update (the controllers write status meanwhile)
    d["metadata"].as_object_mut().unwrap().shift_remove("resourceVersion");
    d["spec"]["selector"]["matchLabels"]["app"] = "b".into();
    d["spec"]["template"]["metadata"]["labels"]["app"] = "b".into();
    let (code, st) =
        s.req("PUT", "/apis/apps/v1/namespaces/default/deployments/web", "application/json", Some(d)).await;
    assert_eq!(code, 422, "{st}");
    assert_eq!(st["kind"], "Status");
    assert_eq!(st["reason"], "Invalid");
    assert_eq!(st["details"]["kind"], "Deployment");
    assert_eq!(st["details"]["group"], "apps");
    assert_eq!(st["details"]["causes"][0]["field"], "spec.selector");
    assert_eq!(st["details"]["causes"][0]["reason"], "FieldValueInvalid");
    assert!(st["message"].as_str().unwrap().ends_with("field is immutable"), "{st}");
}
