//! The hub's Helm chart (charts/convoy-hub) linted and rendered by Helm's own
//! Go engine through helm-python-sdk, in single and HA mode: the objects each
//! mode needs, a HubConfig the hub itself parses, no Kubernetes RBAC at all
//! (the hub never calls the API), the agent chart's security context, schema
//! and required-value failures; then every rendered object applied with the
//! real kubectl to kube-sim, which must accept it.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

fn docs(text: &str) -> Vec<Value> {
    convoy_core::yaml::documents(text)
        .iter()
        .map(|d| convoy_core::yaml::parse_document::<Value>("rendered", d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn objects(rendered: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for (name, text) in rendered.as_object().unwrap() {
        if name.ends_with(".yaml") {
            out.extend(docs(text.as_str().unwrap()));
        }
    }
    out
}

fn find<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

/// The HubConfig the chart wrote, parsed by the hub's own config loader.
fn hub_config(objs: &[Value]) -> convoy_hub::HubConfig {
    let cm =
        find(objs, "ConfigMap").into_iter().find(|c| c["data"]["hub.yaml"].is_string()).expect("hub.yaml");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.yaml");
    std::fs::write(&path, cm["data"]["hub.yaml"].as_str().unwrap()).unwrap();
    convoy_hub::HubConfig::from_file(&path).expect("the hub parses the chart's config")
}

fn render() -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("python3")
        .arg(root.join("hub/tests/chart.py"))
        .arg(root.join("charts/convoy-hub"))
        .arg(root.join("charts/convoy-agent"))
        .output()
        .expect("python3 runs (scripts/setup.sh installs helm-python-sdk)");
    assert!(out.status.success(), "chart.py failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("chart.py prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_hub_chart_renders_single_and_ha_and_kube_sim_accepts_it() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let r = render();
    for mode in ["single", "ha", "variant"] {
        assert_eq!(r["lint"][mode]["errors"], json!([]), "{mode}: {}", r["lint"][mode]);
        assert!(
            r["lint"][mode]["messages"]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m["severity"].as_i64().unwrap() < 2),
            "{mode}: {}",
            r["lint"][mode]
        );
    }

    // Single: a StatefulSet with a PVC for state.redb; the redb store.
    let single = objects(&r["render"]["single"]);
    let sts = find(&single, "StatefulSet");
    assert_eq!(sts.len(), 1);
    assert!(find(&single, "Deployment").is_empty() && find(&single, "PodDisruptionBudget").is_empty());
    assert_eq!(sts[0]["spec"]["replicas"], 1);
    assert_eq!(sts[0]["spec"]["volumeClaimTemplates"][0]["metadata"]["name"], "data");
    let cfg = hub_config(&single);
    assert_eq!(cfg.store.type_, convoy_hub::config::StoreType::Redb);
    assert_eq!(cfg.data_dir, Path::new("/var/lib/convoy"));
    assert!(cfg.grpc.server_names.contains(&"convoy-hub.convoy.svc".to_string()));

    // HA: a Deployment of N spread replicas, a PDB, etcd with TLS, the CA,
    // signing key and admin token from Secrets.
    let ha = objects(&r["render"]["ha"]);
    assert!(find(&ha, "StatefulSet").is_empty());
    let dep = find(&ha, "Deployment")[0];
    assert_eq!(dep["spec"]["replicas"], 3);
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(
        pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
            ["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert_eq!(find(&ha, "PodDisruptionBudget")[0]["spec"]["maxUnavailable"], 1);
    let secrets: Vec<&str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["secret"]["secretName"].as_str())
        .collect();
    assert_eq!(secrets, ["hub-ca", "hub-signing", "hub-admin", "etcd-client"]);
    assert!(
        pod["volumes"].as_array().unwrap().iter().any(|v| v["name"] == "data" && v["emptyDir"].is_object())
    );
    let cfg = hub_config(&ha);
    assert_eq!(cfg.store.type_, convoy_hub::config::StoreType::Etcd);
    assert_eq!(cfg.store.endpoints, ["https://etcd-0.etcd:2379", "https://etcd-1.etcd:2379"]);
    assert_eq!(cfg.store.tls.as_ref().unwrap().cert.as_deref(), Some(Path::new("/etc/convoy/etcd/tls.crt")));
    // Peers fetch artifact bytes from the pod IP (the downward API sets POD_IP).
    assert_eq!(cfg.store.advertise.as_deref(), Some("https://${POD_IP}:8443"));
    let env = pod["containers"][0]["env"].as_array().unwrap();
    assert!(
        env.iter()
            .any(|e| e["name"] == "POD_IP" && e["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP")
    );
    assert_eq!(cfg.tls.ca_key_file.as_deref(), Some(Path::new("/etc/convoy/ca/tls.key")));
    assert_eq!(cfg.signing.key_file.as_deref(), Some(Path::new("/etc/convoy/signing/signing.key")));
    assert_eq!(cfg.events.retain, 5000, "hub.extraConfig is merged");
    assert!(cfg.grpc.server_names.contains(&"hub.example.com".to_string()));

    // RBAC: the hub calls no Kubernetes API, so the chart grants nothing and
    // mounts no token; the agent chart's security context.
    for (mode, objs) in [("single", &single), ("ha", &ha), ("variant", &objects(&r["render"]["variant"]))] {
        for kind in ["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"] {
            assert!(find(objs, kind).is_empty(), "{mode}: the hub chart renders no {kind}");
        }
        assert_eq!(find(objs, "ServiceAccount")[0]["automountServiceAccountToken"], false, "{mode}");
        let w = objs.iter().find(|o| o["kind"] == "Deployment" || o["kind"] == "StatefulSet").unwrap();
        let spec = &w["spec"]["template"]["spec"];
        assert_eq!(spec["automountServiceAccountToken"], false, "{mode}");
        assert_eq!(spec["securityContext"], r["agent_security"]["pod"], "{mode}");
        assert_eq!(spec["containers"][0]["securityContext"], r["agent_security"]["container"], "{mode}");
        let svc = find(objs, "Service")[0];
        let ports: Vec<&str> =
            svc["spec"]["ports"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(ports, ["grpc", "http", "metrics"], "{mode}");
    }
    let variant = objects(&r["render"]["variant"]);
    let ing = find(&variant, "Ingress")[0];
    assert_eq!(ing["spec"]["rules"][0]["http"]["paths"][0]["path"], "/hooks", "webhooks only");
    assert_eq!(find(&variant, "ServiceMonitor").len(), 1);
    assert!(find(&variant, "StatefulSet")[0]["spec"]["volumeClaimTemplates"].is_null());

    // Schema and required values.
    for k in ["mode", "endpoint", "port"] {
        assert!(r["schema_errors"][k].is_string(), "schema accepts a bad {k}: {}", r["schema_errors"]);
    }
    assert!(r["fail"]["no_etcd"].as_str().unwrap().contains("store.etcd.endpoints"));
    assert!(r["fail"]["no_ca"].as_str().unwrap().contains("ca.existingSecret"));
    assert!(r["fail"]["no_signing"].as_str().unwrap().contains("signing.existingSecret"));

    // Every rendered object (but the ServiceMonitor, whose CRD kube-sim does
    // not have) is accepted by kube-sim through the real kubectl.
    let sim = kube_sim::KubeSim::start(kube_sim::SimConfig::default()).await.expect("kube-sim starts");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).unwrap();
    let kubectl = |args: &[&str]| {
        let out = Command::new("kubectl").arg("--kubeconfig").arg(&kubeconfig).args(args).output().unwrap();
        assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    kubectl(&["create", "namespace", "convoy"]);
    for (mode, objs) in [("single", single), ("ha", ha), ("variant", variant)] {
        // One JSON file per object (kubectl reads a file starting with `{` as one JSON document).
        let files = dir.path().join(mode);
        std::fs::create_dir(&files).unwrap();
        let applied: Vec<&Value> = objs.iter().filter(|o| o["kind"] != "ServiceMonitor").collect();
        for (i, o) in applied.iter().enumerate() {
            std::fs::write(files.join(format!("{i:02}.json")), serde_json::to_string(o).unwrap()).unwrap();
        }
        let files = files.to_str().unwrap();
        let out = kubectl(&["apply", "--server-side", "--field-manager", mode, "-f", files]);
        assert_eq!(out.lines().count(), applied.len(), "{mode}: every object applied: {out}");
        kubectl(&["delete", "-f", files, "--wait=false"]);
    }
}
