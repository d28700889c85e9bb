//! `convoy cluster add`: the real binary against an in-process hub prints a
//! `helm install` command; a POSIX shell hands helm the values it names
//! (hub address, CA, trusted keys, bound token, labels); Helm's own engine
//! (helm-python-sdk) renders charts/convoy-agent with them and the real
//! kubectl applies every object to kube-sim.
#![cfg(feature = "dev")]

use std::path::Path;
use std::process::Command;

use convoy_core::config::FleetConfig;
use convoy_hub::{Hub, HubConfig, HubOptions, StaticPipeline};
use serde_json::{Map, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_cluster_add_prints_a_helm_install_that_renders_and_applies() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let pipeline = StaticPipeline::new(dir.path().join("artifacts"));
    let hub = Hub::start(
        HubConfig::local(dir.path().join("data")),
        HubOptions { pipeline: Some(pipeline), fleet: Some(FleetConfig::default()), ..Default::default() },
    )
    .await
    .unwrap();
    let creds = hub.admin.file.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_convoy"))
            .args(["cluster", "add", "edge-1", "--labels", "env=prod,team=o'neil"])
            .env("CONVOY_CREDENTIALS", &creds)
            .env("CONVOY_LOG", "error")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cmd = String::from_utf8(out.stdout).unwrap();
    assert!(cmd.starts_with("helm install 'convoy-agent' 'charts/convoy-agent'"), "{cmd}");

    // What a shell passes to helm.
    let argv = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "helm() {{ python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' \"$@\"; }}\n{cmd}"
        ))
        .output()
        .unwrap();
    assert!(argv.status.success(), "{}", String::from_utf8_lossy(&argv.stderr));
    let argv: Vec<String> = serde_json::from_slice(&argv.stdout).unwrap();
    let mut values = Map::new();
    for w in argv.windows(2).filter(|w| w[0] == "--set-json") {
        let (k, v) = w[1].split_once('=').unwrap();
        values.insert(k.to_string(), serde_json::from_str(v).unwrap());
    }
    assert_eq!(argv[0..4], ["install", "convoy-agent", "charts/convoy-agent", "--namespace"]);
    assert_eq!(values["hub"]["address"], hub.endpoint().as_str());
    assert_eq!(values["hub"]["ca"], hub.ca_pem.as_str());
    let keys: String =
        values["trustedKeys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(keys, hub.trusted_keys_pem);
    assert_eq!(values["cluster"]["name"], "edge-1");
    assert_eq!(values["cluster"]["labels"]["team"], "o'neil");
    assert!(values["bootstrap"]["token"].as_str().is_some_and(|t| !t.is_empty()));

    // Helm renders the agent chart with them; kube-sim accepts every object.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = "import json,sys\nimport helm_python as helm\nwith helm.Chart.load(sys.argv[1]) as c:\n    print(json.dumps(c.render(json.loads(sys.argv[2]), name='convoy-agent', namespace='convoy-system', is_install=True)))\n";
    let r = Command::new("python3")
        .args(["-c", script])
        .arg(root.join("charts/convoy-agent"))
        .arg(Value::Object(values).to_string())
        .output()
        .expect("python3 runs (scripts/setup.sh installs helm-python-sdk)");
    assert!(r.status.success(), "helm render: {}", String::from_utf8_lossy(&r.stderr));
    let rendered: Value = serde_json::from_slice(&r.stdout).unwrap();
    let mut objs = Vec::new();
    for (name, text) in rendered.as_object().unwrap() {
        if name.ends_with(".yaml") {
            for d in convoy_core::yaml::documents(text.as_str().unwrap()) {
                let v: Value = convoy_core::yaml::parse_document("rendered", &d).unwrap();
                if !v.is_null() {
                    objs.push(v);
                }
            }
        }
    }
    let dep = objs.iter().find(|o| o["kind"] == "Deployment").expect("a Deployment");
    let env = dep["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
    assert!(env.iter().any(|e| e["name"] == "CONVOY_HUB_ADDRESS" && e["value"] == hub.endpoint().as_str()));

    let sim = kube_sim::KubeSim::start(kube_sim::SimConfig::default()).await.unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).unwrap();
    let files = dir.path().join("objects");
    std::fs::create_dir(&files).unwrap();
    for (i, o) in objs.iter().enumerate() {
        std::fs::write(files.join(format!("{i:02}.json")), serde_json::to_string(o).unwrap()).unwrap();
    }
    let kubectl = |args: &[&str]| {
        let out = Command::new("kubectl").arg("--kubeconfig").arg(&kubeconfig).args(args).output().unwrap();
        assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    kubectl(&["create", "namespace", "convoy-system"]);
    let out = kubectl(&["apply", "--server-side", "--field-manager", "helm", "-f", files.to_str().unwrap()]);
    assert_eq!(out.lines().count(), objs.len(), "every object applied: {out}");
    hub.shutdown().await.unwrap();
}
