//! List kinds on the agent: a `ConfigMapList` bundle is applied as ordinary
//! objects, an item removed from the list is pruned on its own, and a
//! `kubectl edit` of an item is drift-corrected like any other object. And the
//! agent's parse path stops an alias bomb split over many documents with a
//! limit error, within a bounded peak RSS (measured in a child process).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::fakehub::FakeHub;
use common::*;
use convoy_agent::{Agent, AgentConfig, KubeSource, Tuning};
use convoy_artifact::{SigningKey, Statement};
use convoy_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "bootstrap-token-lists";

fn config(hub: &FakeHub, sim: &kube_sim::KubeSim, dir: &Path, pubkey: PathBuf) -> AgentConfig {
    let mut cfg = AgentConfig::new(&hub.url(), "c1", dir.join("state"));
    cfg.kube = KubeSource::Client(client(sim));
    cfg.hub_ca = Some(dir.join("hub-ca.pem"));
    cfg.token_file = Some(dir.join("token"));
    cfg.trusted_keys = vec![pubkey];
    cfg.tuning = Tuning {
        heartbeat: Duration::from_millis(500),
        reconnect_base: Duration::from_millis(100),
        reconnect_cap: Duration::from_millis(500),
        drift_debounce: Duration::from_millis(200),
        health_recheck: Duration::from_secs(1),
        default_timeout: Duration::from_secs(20),
        retry_base: Duration::from_millis(200),
        retry_cap: Duration::from_secs(2),
        ..Tuning::default()
    };
    cfg
}

fn signed(
    hub: &FakeHub,
    key: &SigningKey,
    generation: u64,
    files: &[(&str, String)],
) -> pb::BundleDeployment {
    let bytes = pack(files).bytes;
    let digest = hub.add_artifact(bytes.clone());
    let st = Statement::new(
        "lists",
        "https://git.example/fleet.git",
        format!("main@sha1:{generation:040x}"),
        digest.clone(),
        bytes.len() as u64,
        generation,
    );
    let (statement, signature) = key.sign_statement(&st).unwrap();
    #[allow(clippy::needless_update)]
    pb::BundleDeployment {
        name: "lists".into(),
        statement,
        signature,
        digest,
        size: bytes.len() as u64,
        generation,
        options: Some(pb::ApplyOptions {
            target_namespace: "lists".into(),
            prune: true,
            wait: true,
            timeout_seconds: 20,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A `ConfigMapList` as `kubectl get configmaps -o yaml` writes it.
fn config_map_list(names: &[&str]) -> String {
    let mut s =
        String::from("apiVersion: v1\nkind: ConfigMapList\nmetadata:\n  resourceVersion: \"\"\nitems:\n");
    for n in names {
        s.push_str(&format!(
            "- apiVersion: v1\n  kind: ConfigMap\n  metadata:\n    name: {n}\n  data:\n    k: \"1\"\n"
        ));
    }
    s
}

async fn ready(hub: &FakeHub, generation: u64) -> pb::BundleStatus {
    eventually(60, &format!("generation {generation} Ready"), || async {
        hub.status("lists").filter(|s| s.generation == generation && s.phase == pb::Phase::Ready as i32)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_config_map_list_is_applied_pruned_item_by_item_and_drift_corrected() {
    init();
    let sim =
        sim_with(kube_sim::SimConfig { readiness_delay: Duration::from_millis(100), ..Default::default() })
            .await;
    let hub = FakeHub::start(TOKEN, Duration::from_secs(3600)).await;
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let pubkey = write_pub(tmp.path(), &key);
    std::fs::write(tmp.path().join("token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(tmp.path().join("hub-ca.pem"), &hub.ca.ca_pem).unwrap();
    let cm = |name: &str| sim.object("", "configmaps", "lists", name);

    hub.set_desired(vec![signed(&hub, &key, 1, &[("cms.yaml", config_map_list(&["one", "two", "three"]))])]);
    let token = CancellationToken::new();
    let agent =
        Agent::start(config(&hub, &sim, tmp.path(), pubkey), token.clone()).await.expect("agent starts");
    let st = ready(&hub, 1).await;
    assert_eq!(st.objects.unwrap().total, 3, "three objects, not one list");
    for n in ["one", "two", "three"] {
        assert_eq!(cm(n).expect(n)["data"]["k"], "1");
    }
    let inventory =
        sim.object("", "configmaps", "convoy-system", "convoy-inventory-lists").expect("inventory");
    let inventory = inventory.to_string();
    for n in ["one", "two", "three"] {
        assert!(inventory.contains(n), "item {n} in the inventory: {inventory}");
    }
    assert!(!inventory.contains("ConfigMapList"), "{inventory}");

    // The list loses its second item: that item alone is pruned.
    hub.set_desired(vec![signed(&hub, &key, 2, &[("cms.yaml", config_map_list(&["one", "three"]))])]);
    let st = ready(&hub, 2).await;
    assert_eq!(st.objects.unwrap().pruned, 1);
    assert!(cm("two").is_none(), "two pruned");
    assert!(cm("one").is_some() && cm("three").is_some());

    // `kubectl edit` of one item: put back like any object.
    let kc = tmp.path().join("kubeconfig");
    sim.write_kubeconfig(&kc).unwrap();
    let editor = tmp.path().join("editor.sh");
    std::fs::write(&editor, "#!/bin/sh\nsed -i 's/^  k: .*/  k: edited/' \"$1\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&editor, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["-n", "lists", "edit", "configmap", "three"])
        .env("KUBE_EDITOR", &editor)
        .kill_on_drop(true)
        .output()
        .await
        .expect("kubectl runs");
    assert!(out.status.success(), "kubectl edit: {}", String::from_utf8_lossy(&out.stderr));
    let ev = eventually(30, "DriftCorrected for the edited item", || async {
        hub.events().into_iter().find(|e| e.reason == "DriftCorrected" && e.object == "ConfigMap/lists/three")
    })
    .await;
    assert!(ev.message.contains(".data.k"), "{}", ev.message);
    eventually(30, "edit reverted", || async { (cm("three")?["data"]["k"] == "1").then_some(()) }).await;
    assert_eq!(cm("one").unwrap()["data"]["k"], "1");

    token.cancel();
    agent.join().await.expect("agent stops cleanly");
}

/// A ConfigMap of about 4.3 KB whose data expands through aliases to 9^4
/// copies of a 4 KiB string (26 MiB).
fn bomb_document() -> String {
    let mut doc = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: bomb}}\ndata:\n  a0: &a0 \"{}\"\n",
        "x".repeat(4096)
    );
    for i in 1..=4 {
        doc.push_str(&format!("  a{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); 9].join(", ")));
    }
    doc
}

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Runs only in the child process of the test below (so that its peak RSS
/// is the parse's alone); a no-op otherwise.
#[test]
fn alias_bomb_child() {
    if std::env::var_os("CONVOY_BOMB_CHILD").is_none() {
        return;
    }
    // 4 files of 25 documents: 430 KB of YAML that would expand to 2.6 GB.
    let file = vec![bomb_document(); 25].join("---\n");
    let names: Vec<String> = (0..4).map(|i| format!("f{i}.yaml")).collect();
    let files: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), file.as_str())).collect();
    let targz = raw_targz(&files);
    let before = vm_hwm_kib();
    let err = convoy_agent::bundle::load_manifests(&targz, &convoy_artifact::Limits::default()).unwrap_err();
    println!("BOMB_ERROR={err}");
    println!("BOMB_REASON={}", err.reason());
    println!("BOMB_RSS_KIB={before} {}", vm_hwm_kib());
}

#[test]
fn an_alias_bomb_on_the_agent_parse_path_is_a_limit_with_bounded_peak_rss() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "alias_bomb_child", "--nocapture", "--test-threads", "1"])
        .env("CONVOY_BOMB_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let field = |k: &str| {
        stdout
            .lines()
            .find_map(|l| l.find(k).map(|i| &l[i + k.len()..]))
            .unwrap_or_else(|| panic!("{k} in {stdout}"))
    };
    let error = field("BOMB_ERROR=");
    assert_eq!(field("BOMB_REASON="), "LimitExceeded", "{error}");
    assert!(error.contains("YAML bytes in the artifact (aliases expanded)"), "{error}");
    assert!(
        error.contains("exceeds the limit of 134217728") && error.contains(".yaml: document "),
        "{error}"
    );
    let rss: Vec<u64> = field("BOMB_RSS_KIB=").split(' ').map(|n| n.parse().unwrap()).collect();
    let grown_mib = (rss[1] - rss[0]) / 1024;
    eprintln!(
        "alias bomb on the agent path: peak RSS {} MiB ({} MiB over the start)",
        rss[1] / 1024,
        grown_mib
    );
    // Without the artifact-wide budget the parsed bodies alone would be 2.6 GB.
    assert!(grown_mib < 768, "peak RSS grew by {grown_mib} MiB");
}
