//! The real kubectl (/usr/bin/kubectl) against the simulator: server-side
//! apply of the corpus, get, wait, delete, watch, field-manager conflicts,
//! diff, client-side apply, short names, TLS.

mod common;

use std::time::Duration;

use common::{Sim, corpus, eventually};
use kube_sim::SimConfig;
use serde_json::Value;

const NS_ARGOCD: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: argocd\n";

fn count_lines(s: &str, needle: &str) -> usize {
    s.lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_kubectl_server_side_apply_of_the_corpus() {
    let s = Sim::start().await;
    let nginx = corpus().join("ingress-nginx/deploy/static/provider/cloud");
    let argo = corpus().join("argo-cd/manifests/install.yaml");

    // ingress-nginx: every file of the directory (kustomization.yaml is kustomize input, applied with -k)
    let out =
        s.kubectl_ok(&["apply", "--server-side", "-f", nginx.join("deploy.yaml").to_str().unwrap()]).await;
    assert_eq!(count_lines(&out, "serverside-applied"), 19, "{out}");
    let out = s.kubectl_ok(&["apply", "--server-side", "-k", nginx.to_str().unwrap()]).await;
    assert_eq!(count_lines(&out, "serverside-applied"), 19, "{out}");

    // argo-cd: big CRDs and 50+ objects
    s.kubectl_stdin(&["apply", "-f", "-"], Some(NS_ARGOCD)).await;
    let out = s.kubectl_ok(&["apply", "--server-side", "-n", "argocd", "-f", argo.to_str().unwrap()]).await;
    let applied = count_lines(&out, "serverside-applied");
    assert!(applied >= 55, "only {applied} objects applied:\n{out}");
    assert_eq!(s.kubectl_ok(&["get", "crd", "-o", "name"]).await.lines().count(), 3);
    let ar = s.kubectl_ok(&["api-resources", "--api-group=argoproj.io", "-o", "name"]).await;
    assert!(ar.contains("applications.argoproj.io"), "{ar}");

    // re-applying everything unchanged changes nothing. ingress-nginx's two
    // admission Jobs have `ttlSecondsAfterFinished: 0`: the TTL-after-finished
    // controller deletes them once they complete, and re-applying them creates
    // (and runs) them again, as on a real cluster; so wait for that, and
    // re-apply the manifest without them.
    for job in ["ingress-nginx-admission-create", "ingress-nginx-admission-patch"] {
        let path = format!("/apis/batch/v1/namespaces/ingress-nginx/jobs/{job}");
        common::eventually(30, || async { (s.get(&path).await.0 == 404).then_some(()) }).await;
    }
    let nginx_text = std::fs::read_to_string(nginx.join("deploy.yaml")).unwrap();
    let without_jobs: Vec<&str> =
        nginx_text.split("\n---\n").filter(|d| !d.contains("\nkind: Job\n")).collect();
    assert_eq!(nginx_text.split("\n---\n").count() - without_jobs.len(), 2);
    let without_jobs = without_jobs.join("\n---\n");
    let before = s.sim.stats();
    s.kubectl_ok(&["apply", "--server-side", "-n", "argocd", "-f", argo.to_str().unwrap()]).await;
    let (code, out, err) = s.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&without_jobs)).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let after = s.sim.stats();
    assert!(after.writes > before.writes);
    assert_eq!(after.changed, before.changed, "an unchanged re-apply must not change state");

    // diff --server-side: nothing to show (exit 0); then a change shows (exit 1)
    let (code, out, err) =
        s.kubectl(&["diff", "--server-side", "-n", "argocd", "-f", argo.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let changed = std::fs::read_to_string(nginx.join("deploy.yaml"))
        .unwrap()
        .replace("--election-id=ingress-nginx-leader", "--election-id=changed");
    let (code, out, err) = s.kubectl_stdin(&["diff", "--server-side", "-f", "-"], Some(&changed)).await;
    assert_eq!(code, 1, "{err}");
    assert!(out.contains("+        - --election-id=changed"), "{out}");
    assert!(out.contains("-        - --election-id=ingress-nginx-leader"), "{out}");

    // get -o yaml, wait for Available, jobs complete
    let y = s
        .kubectl_ok(&["get", "deploy", "-n", "ingress-nginx", "ingress-nginx-controller", "-o", "yaml"])
        .await;
    assert!(y.contains("kind: Deployment") && y.contains("progressDeadlineSeconds: 600"), "{y}");
    s.kubectl_ok(&["wait", "--for=condition=Available", "deploy", "--all", "-n", "argocd", "--timeout=60s"])
        .await;
    // ingress-nginx's admission Jobs completed, then their TTL (0) deleted
    // them (so `kubectl wait --for=condition=Complete job --all` finds none,
    // as on a real cluster).
    let changes = s.sim.changes(&[("batch", "jobs")]);
    for job in ["ingress-nginx-admission-create", "ingress-nginx-admission-patch"] {
        let of = |kind: &str, complete: bool| {
            changes.iter().position(|c| {
                c.name == job
                    && c.kind == kind
                    && (!complete
                        || c.object["status"]["conditions"].as_array().is_some_and(|a| {
                            a.iter().any(|x| x["type"] == "Complete" && x["status"] == "True")
                        }))
            })
        };
        let (complete, deleted) = (of("MODIFIED", true), of("DELETED", false));
        assert!(complete.is_some() && complete < deleted, "{job}: {changes:?}");
    }
    let out = s.kubectl_ok(&["get", "job", "-n", "ingress-nginx", "-o", "name"]).await;
    assert!(out.trim().is_empty(), "{out}");
    s.kubectl_ok(&[
        "rollout",
        "status",
        "statefulset/argocd-application-controller",
        "-n",
        "argocd",
        "--timeout=60s",
    ])
    .await;
    let svc = eventually(30, || async {
        let out = s
            .kubectl_ok(&[
                "get",
                "svc",
                "-n",
                "ingress-nginx",
                "ingress-nginx-controller",
                "-o",
                "jsonpath={.status.loadBalancer.ingress[0].ip}",
            ])
            .await;
        (!out.is_empty()).then_some(out)
    })
    .await;
    assert!(svc.starts_with("172.18.255."), "{svc}");

    // tables with short names
    let out = s.kubectl_ok(&["get", "deploy,sts,svc,cm", "-n", "argocd"]).await;
    assert!(out.contains("deployment.apps/argocd-server") && out.contains("1/1"), "{out}");
    assert!(out.contains("statefulset.apps/argocd-application-controller"), "{out}");
    let out = s.kubectl_ok(&["get", "appproj,crds"]).await;
    assert!(out.contains("applications.argoproj.io"), "{out}");

    // delete the namespace: its content goes, cluster-scoped objects stay
    s.kubectl_ok(&["delete", "ns", "ingress-nginx", "--timeout=60s"]).await;
    let (code, _, err) = s.kubectl(&["get", "ns", "ingress-nginx"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("NotFound") || err.contains("not found"), "{err}");
    assert!(
        s.sim.objects("apps", "deployments").iter().all(|d| d["metadata"]["namespace"] != "ingress-nginx")
    );
    s.kubectl_ok(&["get", "clusterrole", "ingress-nginx"]).await;
    s.kubectl_ok(&["delete", "-n", "argocd", "-f", argo.to_str().unwrap(), "--timeout=60s"]).await;
    assert!(s.kubectl_ok(&["get", "crd", "-o", "name"]).await.trim().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_kubectl_client_side_apply_of_big_crds_fails_like_a_real_cluster() {
    let s = Sim::start().await;
    let argo = corpus().join("argo-cd/manifests/install.yaml");
    s.kubectl_stdin(&["apply", "-f", "-"], Some(NS_ARGOCD)).await;
    // the last-applied annotation of the ApplicationSet CRD exceeds the 256 KiB annotation limit
    let (code, out, err) = s.kubectl(&["apply", "-n", "argocd", "-f", argo.to_str().unwrap()]).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("The CustomResourceDefinition \"applicationsets.argoproj.io\" is invalid: metadata.annotations: Too long: must have at most 262144 bytes"),
        "{err}"
    );
    assert!(
        out.contains("customresourcedefinition.apiextensions.k8s.io/applications.argoproj.io created"),
        "{out}"
    );
    assert!(out.contains("deployment.apps/argocd-server created"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_kubectl_field_manager_conflict_and_force() {
    let s = Sim::start().await;
    let cm = |v: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shared\ndata:\n  key: \"{v}\"\n")
    };
    s.kubectl_stdin(&["apply", "--server-side", "--field-manager=team-a", "-f", "-"], Some(&cm("a"))).await;
    let (code, _, err) = s
        .kubectl_stdin(&["apply", "--server-side", "--field-manager=team-b", "-f", "-"], Some(&cm("b")))
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("Apply failed with 1 conflict: conflict with \"team-a\": .data.key"), "{err}");
    assert!(err.contains("--force-conflicts"), "{err}");
    let (code, out, err) = s
        .kubectl_stdin(
            &["apply", "--server-side", "--field-manager=team-b", "--force-conflicts", "-f", "-"],
            Some(&cm("b")),
        )
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("configmap/shared serverside-applied"));
    let json = s.kubectl_ok(&["get", "cm", "shared", "-o", "json", "--show-managed-fields"]).await;
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["data"]["key"], "b");
    let mf = v["metadata"]["managedFields"].as_array().unwrap();
    let a = mf.iter().find(|e| e["manager"] == "team-a");
    assert!(a.is_none_or(|a| a["fieldsV1"]["f:data"].get("f:key").is_none()), "{mf:?}");
    // diff as team-a now conflicts
    let (code, _, err) = s
        .kubectl_stdin(&["diff", "--server-side", "--field-manager=team-a", "-f", "-"], Some(&cm("a")))
        .await;
    assert!(code > 1, "{err}");
    assert!(err.contains("conflict with \"team-b\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_kubectl_client_side_apply_edit_scale_and_delete() {
    let s = Sim::start().await;
    let dep = |image: &str, extra_env: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n      - name: nginx\n        image: {image}\n        ports:\n        - containerPort: 80\n        env:\n        - {{name: A, value: \"1\"}}\n{extra_env}"
        )
    };
    let (code, out, err) = s
        .kubectl_stdin(&["apply", "-f", "-"], Some(&dep("nginx:1.25", "        - {name: B, value: \"2\"}\n")))
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deployment.apps/web created"));
    // client-side apply again with a change and one env var removed: strategic merge patch with the last-applied annotation
    let (code, out, err) = s.kubectl_stdin(&["apply", "-f", "-"], Some(&dep("nginx:1.26", ""))).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    let v: Value =
        serde_json::from_str(&s.kubectl_ok(&["get", "deploy", "web", "-o", "json"]).await).unwrap();
    let c = &v["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "nginx:1.26");
    assert_eq!(c["env"].as_array().unwrap().len(), 1, "{c}");
    assert_eq!(v["metadata"]["generation"], 2);
    let (code, out, _) = s.kubectl_stdin(&["apply", "-f", "-"], Some(&dep("nginx:1.26", ""))).await;
    assert_eq!(code, 0);
    assert!(out.contains("deployment.apps/web unchanged"), "{out}");
    // label, annotate, scale, patch
    s.kubectl_ok(&["label", "deploy", "web", "tier=frontend"]).await;
    s.kubectl_ok(&["annotate", "deploy", "web", "note=hello"]).await;
    s.kubectl_ok(&["scale", "deploy", "web", "--replicas=3"]).await;
    s.kubectl_ok(&["patch", "deploy", "web", "--type=merge", "-p", "{\"spec\":{\"minReadySeconds\":1}}"])
        .await;
    let v: Value =
        serde_json::from_str(&s.kubectl_ok(&["get", "deploy", "web", "-o", "json"]).await).unwrap();
    assert_eq!(v["metadata"]["labels"]["tier"], "frontend");
    assert_eq!(v["metadata"]["annotations"]["note"], "hello");
    assert_eq!(v["spec"]["replicas"], 3);
    assert_eq!(v["spec"]["minReadySeconds"], 1);
    s.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=60s"]).await;
    // short names and label selectors
    let out = s.kubectl_ok(&["get", "deploy", "-l", "tier=frontend", "-o", "name"]).await;
    assert_eq!(out.trim(), "deployment.apps/web");
    let out = s.kubectl_ok(&["get", "ns,sa,cm,svc", "-n", "default"]).await;
    assert!(
        out.contains("namespace/default")
            && out.contains("serviceaccount/default")
            && out.contains("service/kubernetes"),
        "{out}"
    );
    // delete and wait
    let out = s.kubectl_ok(&["delete", "deploy", "web", "--timeout=60s"]).await;
    assert!(out.contains("deployment.apps \"web\" deleted"), "{out}");
    let (code, _, err) = s.kubectl(&["get", "deploy", "web"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("Error from server (NotFound): deployments.apps \"web\" not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_kubectl_client_side_to_server_side_upgrade() {
    let s = Sim::start().await;
    let cm =
        |b: &str| format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: up\ndata:\n  a: \"1\"\n{b}");
    s.kubectl_stdin(&["apply", "-f", "-"], Some(&cm("  b: \"2\"\n"))).await;
    // the first server-side apply changes a field owned by client-side apply: no conflict for kubectl
    let (code, out, err) =
        s.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&cm("  b: \"3\"\n"))).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("serverside-applied"));
    let v: Value = serde_json::from_str(
        &s.kubectl_ok(&["get", "cm", "up", "-o", "json", "--show-managed-fields"]).await,
    )
    .unwrap();
    assert_eq!(v["data"]["b"], "3");
    let mf = v["metadata"]["managedFields"].as_array().unwrap();
    assert!(
        mf.iter().all(|e| e["manager"] != "kubectl-client-side-apply"),
        "kubectl migrated ownership: {mf:?}"
    );
    let la =
        v["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"].as_str().unwrap();
    assert!(la.contains("\"b\":\"3\""), "last-applied kept in sync: {la}");
    // after the migration, dropping a field removes it
    s.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&cm(""))).await;
    let v: Value = serde_json::from_str(&s.kubectl_ok(&["get", "cm", "up", "-o", "json"]).await).unwrap();
    assert_eq!(v["data"], serde_json::json!({"a": "1"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_kubectl_get_watch_sees_changes() {
    let s = Sim::start().await;
    let (mut child, lines) = s.kubectl_lines(&["get", "cm", "--watch", "-o", "name"]);
    // the initial list arrives first
    eventually(30, || async { lines.lock().iter().any(|l| l.contains("kube-root-ca.crt")).then_some(()) })
        .await;
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: watched\ndata:\n  a: \"1\"\n"),
    )
    .await;
    eventually(30, || async { lines.lock().iter().any(|l| l.contains("configmap/watched")).then_some(()) })
        .await;
    s.kubectl_ok(&["delete", "cm", "watched"]).await;
    eventually(30, || async {
        (lines.lock().iter().filter(|l| l.contains("configmap/watched")).count() >= 2).then_some(())
    })
    .await;
    // the table form of --watch (server-side Table events)
    let (mut child2, lines2) = s.kubectl_lines(&["get", "cm", "--watch-only"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut i = 0;
    eventually(30, || {
        i += 1;
        let body =
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: table{i}\ndata:\n  a: \"1\"\n");
        let s = &s;
        let lines2 = lines2.clone();
        async move {
            s.kubectl_stdin(&["apply", "-f", "-"], Some(&body)).await;
            let l = lines2.lock();
            (l.iter().any(|x| x.starts_with("table") && x.contains(" 1 "))).then_some(())
        }
    })
    .await;
    let _ = child.kill().await;
    let _ = child2.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_kubectl_wait_readiness_and_unpullable_image() {
    let s = Sim::with(SimConfig { readiness_delay: Duration::from_millis(300), ..Default::default() }).await;
    let dep = |name: &str, image: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  progressDeadlineSeconds: 3\n  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      containers:\n      - name: c\n        image: {image}\n"
        )
    };
    s.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&dep("good", "nginx:1.27"))).await;
    s.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&dep("bad", "nginx:does-not-exist"))).await;
    s.kubectl_ok(&["wait", "--for=condition=Available", "deploy/good", "--timeout=60s"]).await;
    let (code, _, err) =
        s.kubectl(&["wait", "--for=condition=Available", "deploy/bad", "--timeout=2s"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("timed out"), "{err}");
    s.kubectl_ok(&["wait", "--for=condition=Progressing=false", "deploy/bad", "--timeout=60s"]).await;
    let v: Value =
        serde_json::from_str(&s.kubectl_ok(&["get", "deploy", "bad", "-o", "json"]).await).unwrap();
    let conds = v["status"]["conditions"].as_array().unwrap();
    let avail = conds.iter().find(|c| c["type"] == "Available").unwrap();
    assert_eq!(avail["status"], "False");
    assert_eq!(avail["reason"], "MinimumReplicasUnavailable");
    let prog = conds.iter().find(|c| c["type"] == "Progressing").unwrap();
    assert_eq!(prog["reason"], "ProgressDeadlineExceeded");
    assert!(v["status"].get("readyReplicas").is_none());
    let (code, _, err) = s.kubectl(&["rollout", "status", "deploy/bad", "--timeout=5s"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("exceeded its progress deadline"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_kubectl_create_generators_send_protobuf() {
    let s = Sim::start().await;
    s.kubectl_ok(&["create", "namespace", "gen"]).await;
    s.kubectl_ok(&["create", "configmap", "c", "-n", "gen", "--from-literal=a=1", "--from-literal=b=two"])
        .await;
    s.kubectl_ok(&["create", "secret", "generic", "s", "-n", "gen", "--from-literal=pw=hunter2"]).await;
    s.kubectl_ok(&["create", "serviceaccount", "robot", "-n", "gen"]).await;
    s.kubectl_ok(&[
        "create",
        "deployment",
        "web",
        "-n",
        "gen",
        "--image=nginx:1.27",
        "--port=8080",
        "--replicas=2",
    ])
    .await;
    let cm: Value =
        serde_json::from_str(&s.kubectl_ok(&["get", "cm", "c", "-n", "gen", "-o", "json"]).await).unwrap();
    assert_eq!(cm["data"], serde_json::json!({"a": "1", "b": "two"}));
    assert!(cm["metadata"].get("generateName").is_none());
    let sec: Value =
        serde_json::from_str(&s.kubectl_ok(&["get", "secret", "s", "-n", "gen", "-o", "json"]).await)
            .unwrap();
    assert_eq!(sec["data"]["pw"], "aHVudGVyMg==");
    assert_eq!(sec["type"], "Opaque");
    let d: Value =
        serde_json::from_str(&s.kubectl_ok(&["get", "deploy", "web", "-n", "gen", "-o", "json"]).await)
            .unwrap();
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:1.27");
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"], 8080);
    s.kubectl_ok(&["rollout", "status", "deploy/web", "-n", "gen", "--timeout=60s"]).await;
    let pods = s.kubectl_ok(&["get", "pods", "-n", "gen", "-l", "app=web", "-o", "name"]).await;
    assert_eq!(pods.lines().count(), 2, "{pods}");
    // set image, roll back: the old ReplicaSet is reused with the next revision
    s.kubectl_ok(&["set", "image", "deploy/web", "-n", "gen", "nginx=nginx:1.28"]).await;
    s.kubectl_ok(&["rollout", "status", "deploy/web", "-n", "gen", "--timeout=60s"]).await;
    s.kubectl_ok(&["rollout", "undo", "deploy/web", "-n", "gen"]).await;
    s.kubectl_ok(&["rollout", "status", "deploy/web", "-n", "gen", "--timeout=60s"]).await;
    let hist = s.kubectl_ok(&["rollout", "history", "deploy/web", "-n", "gen"]).await;
    let revs: Vec<&str> = hist
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(revs, vec!["2", "3"], "{hist}");
    let rs = s.kubectl_ok(&["get", "rs", "-n", "gen", "-o", "name"]).await;
    assert_eq!(rs.lines().count(), 2, "{rs}");
    // a paused Deployment rolls nothing out until resumed
    s.kubectl_ok(&["rollout", "pause", "deploy/web", "-n", "gen"]).await;
    s.kubectl_ok(&["set", "image", "deploy/web", "-n", "gen", "nginx=nginx:1.29"]).await;
    let (code, out, _) = s.kubectl(&["rollout", "status", "deploy/web", "-n", "gen", "--timeout=2s"]).await;
    assert_ne!(code, 0);
    assert!(out.contains("0 out of 2 new replicas have been updated"), "{out}");
    assert_eq!(s.kubectl_ok(&["get", "rs", "-n", "gen", "-o", "name"]).await.lines().count(), 2);
    s.kubectl_ok(&["rollout", "resume", "deploy/web", "-n", "gen"]).await;
    s.kubectl_ok(&["rollout", "status", "deploy/web", "-n", "gen", "--timeout=60s"]).await;
    assert_eq!(s.kubectl_ok(&["get", "rs", "-n", "gen", "-o", "name"]).await.lines().count(), 3);
    s.kubectl_ok(&["create", "service", "clusterip", "web", "-n", "gen", "--tcp=80:8080"]).await;
    s.kubectl_ok(&["create", "job", "once", "-n", "gen", "--image=busybox:1", "--", "echo", "hi"]).await;
    s.kubectl_ok(&["create", "role", "reader", "-n", "gen", "--verb=get,list", "--resource=pods"]).await;
    s.kubectl_ok(&[
        "create",
        "rolebinding",
        "reader",
        "-n",
        "gen",
        "--role=reader",
        "--serviceaccount=gen:robot",
    ])
    .await;
    s.kubectl_ok(&["wait", "--for=condition=Complete", "job/once", "-n", "gen", "--timeout=60s"]).await;
    let svc: Value =
        serde_json::from_str(&s.kubectl_ok(&["get", "svc", "web", "-n", "gen", "-o", "json"]).await).unwrap();
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    assert_eq!(svc["spec"]["selector"]["app"], "web");
    let role: Value =
        serde_json::from_str(&s.kubectl_ok(&["get", "role", "reader", "-n", "gen", "-o", "json"]).await)
            .unwrap();
    assert_eq!(
        role["rules"],
        serde_json::json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}])
    );
    let rb: Value = serde_json::from_str(
        &s.kubectl_ok(&["get", "rolebinding", "reader", "-n", "gen", "-o", "json"]).await,
    )
    .unwrap();
    assert_eq!(rb["subjects"][0]["name"], "robot");
    assert_eq!(rb["roleRef"]["kind"], "Role");
    // a generator kind without a protobuf table is refused with a clear message
    let (code, _, err) = s
        .kubectl(&[
            "create",
            "poddisruptionbudget",
            "p",
            "-n",
            "gen",
            "--selector=app=web",
            "--min-available=1",
        ])
        .await;
    assert_ne!(code, 0);
    assert!(err.contains("not supported by kube-sim"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_kubectl_over_tls() {
    let s = Sim::with(SimConfig { tls: true, ..Default::default() }).await;
    assert!(s.sim.url().starts_with("https://127.0.0.1:"));
    let out = s.kubectl_ok(&["get", "ns", "-o", "name"]).await;
    assert!(out.contains("namespace/kube-system"), "{out}");
    let out = s.kubectl_ok(&["version", "-o", "json"]).await;
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["serverVersion"]["minor"], "32");
}
