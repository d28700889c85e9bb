//! The Helm chart (charts/convoy-agent) linted and rendered by Helm's own Go
//! engine through helm-python-sdk (installed by scripts/setup.sh), and the
//! rendered objects checked: kinds, RBAC, identity Secret permissions, every
//! env var one the binary reads, probes, resources, variants and schema.

use std::collections::BTreeMap;
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

fn env(dep: &Value) -> BTreeMap<String, Value> {
    dep["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e.get("value").cloned().unwrap_or(e["valueFrom"].clone()),
            )
        })
        .collect()
}

#[test]
fn heavy_chart_lints_and_renders_with_helm() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let chart = root.join("charts/convoy-agent");
    let values = json!({
        "hub": {"address": "https://hub.example.com:8443",
                "ca": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"},
        "cluster": {"name": "prod-eu-1", "labels": {"env": "prod", "region": "eu"}},
        "bootstrap": {"token": "s3cret-token"},
        "trustedKeys": ["-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----",
                        "-----BEGIN PUBLIC KEY-----\nMFkx\n-----END PUBLIC KEY-----"],
    });
    let out = Command::new("python3")
        .arg(root.join("agent/tests/chart.py"))
        .arg(&chart)
        .arg(values.to_string())
        .output()
        .expect("python3 runs (scripts/setup.sh installs helm-python-sdk)");
    assert!(out.status.success(), "chart.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).expect("chart.py prints JSON");

    // Lint: no errors, no warnings in strict mode.
    assert_eq!(r["lint"]["errors"], json!([]), "{}", r["lint"]);
    assert!(
        r["lint"]["messages"].as_array().unwrap().iter().all(|m| m["severity"].as_i64().unwrap() < 2),
        "{}",
        r["lint"]
    );
    assert_eq!(r["metadata"]["name"], "convoy-agent");

    let objs = objects(&r["render"]);
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
    ] {
        assert_eq!(find(&objs, kind).len(), 1, "one {kind}");
    }
    // Bootstrap token Secret, trusted keys and hub CA ConfigMaps.
    let secret = find(&objs, "Secret")[0];
    assert_eq!(secret["stringData"]["token"], "s3cret-token");
    let cms = find(&objs, "ConfigMap");
    let keys = cms.iter().find(|c| c["metadata"]["name"] == "convoy-agent-trusted-keys").unwrap();
    assert!(keys["data"]["key-1.pem"].as_str().unwrap().contains("MFkx"));
    assert!(
        cms.iter().any(|c| c["data"]["ca.crt"].as_str().is_some_and(|s| s.contains("BEGIN CERTIFICATE")))
    );

    // RBAC: explicit cluster-wide rules (no cluster-admin binding), the
    // identity Secret by name in the agent's namespace.
    let cr = find(&objs, "ClusterRole")[0];
    let rules = cr["rules"].as_array().unwrap();
    assert!(rules.iter().any(|r| r["verbs"].as_array().unwrap().iter().any(|v| v == "escalate")));
    assert_ne!(find(&objs, "ClusterRoleBinding")[0]["roleRef"]["name"], "cluster-admin");
    let role = find(&objs, "Role")[0];
    assert_eq!(role["metadata"]["namespace"], "convoy-system");
    assert!(
        role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["resourceNames"] == json!(["convoy-agent-identity"])
                && r["verbs"].as_array().unwrap().iter().any(|v| v == "patch"))
    );

    // The Deployment: singleton, env names the binary reads, probes, resources.
    let dep = find(&objs, "Deployment")[0];
    assert_eq!(dep["spec"]["replicas"], 1);
    assert_eq!(dep["spec"]["strategy"]["type"], "Recreate");
    let e = env(dep);
    assert_eq!(e["CONVOY_HUB_ADDRESS"], "https://hub.example.com:8443");
    assert_eq!(e["CONVOY_CLUSTER_NAME"], "prod-eu-1");
    assert_eq!(e["CONVOY_CLUSTER_LABELS"], "env=prod,region=eu");
    assert_eq!(
        e["CONVOY_TRUSTED_KEYS"],
        "/etc/convoy/trusted-keys/key-0.pem,/etc/convoy/trusted-keys/key-1.pem"
    );
    assert_eq!(e["CONVOY_NAMESPACE"]["fieldRef"]["fieldPath"], "metadata.namespace");
    assert_eq!(e["CONVOY_METRICS_ADDRESS"], "0.0.0.0:9091");
    let help = Command::new(env!("CARGO_BIN_EXE_convoy-agent")).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    for name in e.keys() {
        assert!(
            help.contains(&format!("env: {name}=")),
            "the chart sets {name}, which `convoy-agent run` does not read"
        );
    }
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["args"], json!(["run"]));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["ports"][0]["containerPort"], 9091);
    assert_eq!(c["resources"]["requests"]["memory"], "32Mi");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    let vols = dep["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
    let boot = vols.iter().find(|v| v["name"] == "bootstrap").unwrap();
    assert_eq!(boot["secret"]["optional"], true, "the token may be deleted after registration");
    assert!(vols.iter().any(|v| v["name"] == "state" && v["emptyDir"].is_object()));
    let svc = find(&objs, "Service")[0];
    assert_eq!(svc["spec"]["ports"][0]["port"], 9091);

    // A variant: existing Secret and key ConfigMap, persistence, ServiceMonitor.
    let objs = objects(&r["render_variant"]);
    assert!(find(&objs, "Secret").is_empty(), "an existing token Secret is not rendered");
    let cms = find(&objs, "ConfigMap");
    assert!(
        cms.iter().all(|c| c["metadata"]["name"] == "edge-convoy-agent-hub-ca"),
        "only the hub CA: {cms:?}"
    );
    assert_eq!(find(&objs, "PersistentVolumeClaim").len(), 1);
    assert_eq!(find(&objs, "ServiceMonitor").len(), 1);
    let dep = find(&objs, "Deployment")[0];
    let e = env(dep);
    assert_eq!(e["CONVOY_TRUSTED_KEYS"], "/etc/convoy/trusted-keys", "a mounted ConfigMap directory");
    assert_eq!(e["CONVOY_METRICS_ADDRESS"], "0.0.0.0:9191");
    let vols = dep["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
    assert!(vols.iter().any(|v| v["configMap"]["name"] == "fleet-keys"));
    assert!(vols.iter().any(|v| v["secret"]["secretName"] == "my-token"));
    assert!(vols.iter().any(|v| v["persistentVolumeClaim"]["claimName"] == "edge-convoy-agent-state"));

    // rbac.mode restricted: no escalate/bind, no pods/exec (no wildcard
    // resources either), no cluster-wide list/watch of Secrets; extraRules added.
    assert_eq!(r["lint_restricted"]["errors"], json!([]), "{}", r["lint_restricted"]);
    let objs = objects(&r["render_restricted"]);
    let rules = find(&objs, "ClusterRole")[0]["rules"].as_array().unwrap().clone();
    let has = |r: &Value, field: &str, v: &str| r[field].as_array().is_some_and(|a| a.iter().any(|x| x == v));
    for rule in &rules {
        assert!(!has(rule, "verbs", "escalate") && !has(rule, "verbs", "bind"), "{rule}");
        assert!(
            !has(rule, "verbs", "*") && !has(rule, "resources", "*") && !has(rule, "apiGroups", "*"),
            "{rule}"
        );
        assert!(!has(rule, "resources", "pods/exec"), "{rule}");
        if has(rule, "resources", "secrets") {
            assert!(!has(rule, "verbs", "list") && !has(rule, "verbs", "watch"), "{rule}");
        }
    }
    assert!(rules.iter().any(|r| has(r, "resources", "deployments") && has(r, "verbs", "patch")));
    assert!(rules.iter().any(|r| has(r, "apiGroups", "example.com")), "extraRules are added");
    // The agent's own Role is the same in both modes.
    assert!(
        find(&objs, "Role")[0]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["resourceNames"] == json!(["convoy-agent-identity"]))
    );

    // values.schema.json and required values.
    for k in ["drift", "address", "concurrency", "rbac_mode"] {
        assert!(r["schema_errors"][k].is_string(), "schema accepts a bad {k}: {}", r["schema_errors"]);
    }
    assert!(r["missing_keys_error"].as_str().unwrap().contains("trustedKeys"));
}
