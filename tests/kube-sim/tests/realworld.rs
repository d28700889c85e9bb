//! Real-world manifests and limits, judged by the real kubectl: List kinds
//! validated through `/openapi/v2` (no `--validate=false`), APIService,
//! Service names and cluster IPs, request and object size limits.

mod common;

use common::{Sim, eventually};
use kube_sim::SimConfig;
use serde_json::{Value, json};

const LIST: &str = "apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: from-list, namespace: default}
  data: {k: v}
- apiVersion: v1
  kind: ServiceAccount
  metadata: {name: from-list, namespace: default}
";

const CM_LIST: &str = "apiVersion: v1
kind: ConfigMapList
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: cm-a, namespace: default}
  data: {a: '1'}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: cm-b, namespace: default}
";

const ROLE_LIST: &str = "apiVersion: rbac.authorization.k8s.io/v1
kind: RoleList
items:
- apiVersion: rbac.authorization.k8s.io/v1
  kind: Role
  metadata: {name: reader, namespace: default}
  rules: [{apiGroups: [''], resources: [pods], verbs: [get, list]}]
";

const ROLE_BINDING_LIST: &str = "apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBindingList
items:
- apiVersion: rbac.authorization.k8s.io/v1
  kind: RoleBinding
  metadata: {name: reader, namespace: default}
  roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}
  subjects: [{kind: ServiceAccount, name: default, namespace: default}]
";

const API_SERVICES: &str = "apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.metrics.k8s.io}
spec:
  group: metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  insecureSkipTLSVerify: true
  service: {name: metrics-server, namespace: kube-system, port: 443}
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1.example.com}
spec:
  group: example.com
  version: v1
  groupPriorityMinimum: 1000
  versionPriority: 15
";

fn available(s: &Sim, name: &str) -> Option<(String, String)> {
    let a = s.sim.object("apiregistration.k8s.io", "apiservices", "", name)?;
    let c = a.pointer("/status/conditions/0")?;
    Some((c["status"].as_str()?.to_string(), c["reason"].as_str()?.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_list_files_with_validation_client_and_server_side() {
    let s = Sim::start().await;
    for (file, names) in [
        (LIST, &[("configmaps", "from-list"), ("serviceaccounts", "from-list")][..]),
        (CM_LIST, &[("configmaps", "cm-a"), ("configmaps", "cm-b")][..]),
        (ROLE_LIST, &[("roles", "reader")][..]),
        (ROLE_BINDING_LIST, &[("rolebindings", "reader")][..]),
    ] {
        for how in [&["apply", "-f", "-"][..], &["apply", "--server-side", "-f", "-"][..]] {
            let (code, out, err) = s.kubectl_stdin(how, Some(file)).await;
            assert_eq!(code, 0, "kubectl {how:?} of\n{file}\nfailed: {err}");
            assert!(!err.contains("validat"), "{err}");
            for (res, name) in names {
                assert!(out.contains(&format!("/{name}")), "{out}");
                let group = if res.starts_with("role") { "rbac.authorization.k8s.io" } else { "" };
                assert!(s.sim.object(group, res, "default", name).is_some(), "{res}/{name} missing");
            }
        }
    }
    // validation is on: a List item with an unknown field is refused by the server (Strict)
    let bad = CM_LIST.replace("data: {a: '1'}", "data: {a: '1'}\n  bogus: 1");
    let (code, _, err) = s.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&bad)).await;
    assert_ne!(code, 0);
    assert!(err.contains("bogus"), "{err}");

    // /openapi/v2 in both forms: every served kind's PATCH with fieldValidation, CRD schemas with their GVK
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object",
                    "properties": {"size": {"type": "integer"}}}}}}}]}});
    s.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&crd.to_string())).await;
    let (code, v2) = s.get("/openapi/v2").await;
    assert_eq!(code, 200);
    let paths = v2["paths"].as_object().unwrap();
    let cm = &paths["/api/v1/namespaces/{namespace}/configmaps/{name}"]["patch"];
    assert_eq!(
        cm["x-kubernetes-group-version-kind"],
        json!({"group": "", "version": "v1", "kind": "ConfigMap"})
    );
    assert!(cm["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "fieldValidation"));
    assert!(paths.contains_key("/apis/example.com/v1/namespaces/{namespace}/widgets/{name}"));
    assert!(paths.contains_key("/apis/apiregistration.k8s.io/v1/apiservices/{name}"));
    let w = &v2["definitions"]["com.example.v1.Widget"];
    assert_eq!(w["x-kubernetes-group-version-kind"][0]["kind"], "Widget");
    assert_eq!(w["properties"]["spec"]["properties"]["size"]["type"], "integer");
    // consistent with the v3 document of the group
    let (_, v3) = s.get("/openapi/v3/apis/example.com/v1").await;
    assert_eq!(
        v3["components"]["schemas"]["com.example.v1.Widget"]["x-kubernetes-group-version-kind"],
        w["x-kubernetes-group-version-kind"]
    );
    let resp = s
        .http
        .get(s.url("/openapi/v2"))
        .header("accept", "application/com.github.proto-openapi.spec.v2@v1.0+protobuf")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/com.github.proto-openapi.spec.v2.v1.0+protobuf");
    let body = resp.bytes().await.unwrap();
    assert!(body.starts_with(b"\x0a\x032.0"), "swagger field first");
    // a Widget in a List validates against the published schema on the client side
    let wl = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: example.com/v1\n  kind: Widget\n  metadata: {name: w, namespace: default}\n  spec: {size: 3}\n";
    let (code, _, err) = s.kubectl_stdin(&["apply", "-f", "-"], Some(wl)).await;
    assert_eq!(code, 0, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_services_are_available_when_local_or_when_their_service_exists() {
    let s = Sim::start().await;
    for how in [&["apply", "-f", "-"][..], &["apply", "--server-side", "-f", "-"][..]] {
        let (code, out, err) = s.kubectl_stdin(how, Some(API_SERVICES)).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("apiservice.apiregistration.k8s.io/v1beta1.metrics.k8s.io"), "{out}");
    }
    eventually(10, || async {
        (available(&s, "v1.example.com") == Some(("True".into(), "Local".into()))).then_some(())
    })
    .await;
    eventually(10, || async {
        (available(&s, "v1beta1.metrics.k8s.io") == Some(("False".into(), "ServiceNotFound".into())))
            .then_some(())
    })
    .await;
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: metrics-server, namespace: kube-system}\nspec:\n  ports: [{port: 443}]\n";
    s.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(svc)).await;
    eventually(10, || async {
        (available(&s, "v1beta1.metrics.k8s.io") == Some(("True".into(), "Passed".into()))).then_some(())
    })
    .await;
    let out = s.kubectl_ok(&["get", "apiservices"]).await;
    assert!(out.contains("v1beta1.metrics.k8s.io"), "{out}");
    s.kubectl_ok(&["delete", "svc", "-n", "kube-system", "metrics-server"]).await;
    eventually(10, || async {
        (available(&s, "v1beta1.metrics.k8s.io") == Some(("False".into(), "ServiceNotFound".into())))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_names_and_cluster_ips_follow_the_api_server() {
    let s = Sim::with(SimConfig { service_cidr: "10.100.0.0/24".into(), ..Default::default() }).await;
    let svc = |name: &str, ip: Option<&str>| {
        let ip = ip.map(|i| format!("  clusterIP: {i}\n")).unwrap_or_default();
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{ip}  ports: [{{port: 80}}]\n"
        )
    };
    let (code, _, err) =
        s.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&svc("1web", None))).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("The Service \"1web\" is invalid: metadata.name: Invalid value: \"1web\": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"),
        "{err}"
    );
    // the kubernetes Service holds the range's first address; others are unique
    let k = s.sim.object("", "services", "default", "kubernetes").unwrap();
    assert_eq!(k["spec"]["clusterIP"], "10.100.0.1");
    let mut seen = std::collections::HashSet::from(["10.100.0.1".to_string()]);
    for i in 0..5 {
        s.kubectl_ok(&["create", "service", "clusterip", &format!("web{i}"), "--tcp=80:80"]).await;
        let ip = s.sim.object("", "services", "default", &format!("web{i}")).unwrap()["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(ip.starts_with("10.100.0."), "{ip}");
        assert!(seen.insert(ip.clone()), "{ip} handed out twice");
    }
    // requested: free, taken, out of range
    let (code, _, err) =
        s.kubectl_stdin(&["create", "-f", "-"], Some(&svc("pinned", Some("10.100.0.200")))).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = s
        .kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&svc("again", Some("10.100.0.200"))))
        .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("The Service \"again\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.100.0.200\"}: failed to allocate IP 10.100.0.200: provided IP is already allocated"),
        "{err}"
    );
    let (code, _, err) =
        s.kubectl_stdin(&["create", "-f", "-"], Some(&svc("far", Some("192.168.7.7")))).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("spec.clusterIPs: Invalid value: []string{\"192.168.7.7\"}: failed to allocate IP 192.168.7.7: the provided IP (192.168.7.7) is not in the valid range. The range of valid IPs is 10.100.0.0/24"),
        "{err}"
    );
    // a deleted Service frees its IP
    s.kubectl_ok(&["delete", "svc", "pinned"]).await;
    let (code, _, err) =
        s.kubectl_stdin(&["create", "-f", "-"], Some(&svc("again", Some("10.100.0.200")))).await;
    assert_eq!(code, 0, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_object_size_limits() {
    let s = Sim::start().await;
    // over 3 MiB: 413 before anything is decoded
    let big = "x".repeat(3 * 1024 * 1024 + 10);
    let body =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}, "data": {"a": big}});
    let (code, st) =
        s.req("POST", "/api/v1/namespaces/default/configmaps", "application/json", Some(body.clone())).await;
    assert_eq!(code, 413, "{st}");
    assert_eq!(st["reason"], "RequestEntityTooLarge");
    assert_eq!(st["message"], "Request entity too large: limit is 3145728");
    let file = s.dir.path().join("big.json");
    std::fs::write(&file, body.to_string()).unwrap();
    let (code, _, err) = s.kubectl(&["create", "-f", file.to_str().unwrap()]).await;
    assert_eq!(code, 1);
    assert!(err.contains("Request entity too large: limit is 3145728"), "{err}");

    // a CRD of 1.2 MiB is accepted (server-side apply: no last-applied annotation)
    let crd = |name: &str, kib: usize| {
        let props: serde_json::Map<String, Value> = (0..kib)
            .map(|i| (format!("field{i:05}"), json!({"type": "string", "description": "d".repeat(1000)})))
            .collect();
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{name}s.example.com")},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": format!("{name}s"), "singular": name, "kind": "Big", "listKind": "BigList"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "properties": props}}}}}]}})
    };
    let c = crd("big", 1200);
    let size = c.to_string().len();
    assert!(size > 1200 * 1024 && size < 3 * 1024 * 1024, "{size}");
    let f = s.dir.path().join("crd.json");
    std::fs::write(&f, c.to_string()).unwrap();
    let (code, out, err) = s.kubectl(&["apply", "--server-side", "-f", f.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("customresourcedefinition.apiextensions.k8s.io/bigs.example.com serverside-applied")
    );

    // an object whose stored form is over etcd's 1.5 MiB (but the body under 3 MiB): etcd's refusal, a 500
    let huge = crd("huge", 1700);
    let (code, st) = s
        .req(
            "POST",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            "application/json",
            Some(huge.clone()),
        )
        .await;
    assert_eq!(code, 500, "{st}");
    assert_eq!(st["message"], "etcdserver: request is too large");
    assert!(st.get("reason").is_none(), "{st}");
    assert!(
        s.sim.object("apiextensions.k8s.io", "customresourcedefinitions", "", "huges.example.com").is_none()
    );
    let f = s.dir.path().join("huge.json");
    std::fs::write(&f, huge.to_string()).unwrap();
    let (code, _, err) = s.kubectl(&["apply", "--server-side", "-f", f.to_str().unwrap()]).await;
    assert_eq!(code, 1);
    assert!(err.contains("etcdserver: request is too large"), "{err}");
    // dry-run never reaches etcd
    let (code, st) = s
        .req(
            "POST",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions?dryRun=All",
            "application/json",
            Some(huge),
        )
        .await;
    assert_eq!(code, 201, "{st}");
}
