//! SOPS on the agent against kube-sim, with files made by the real `sops`
//! and `age-keygen` (scripts/setup.sh installs both): one-shot apply with
//! `--age-key-file`, the agent's own generated key, refusals that apply
//! nothing, and no plaintext in logs, status, events, metrics or local state.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fakehub::FakeHub;
use common::*;
use convoy_agent::oneshot::{OneShotOptions, apply_dir};
use convoy_agent::{Agent, AgentConfig, KubeSource, Tuning};
use convoy_artifact::{SigningKey, Statement};
use convoy_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "hunter2-sops-plaintext";
const TOKEN_VALUE: &str = "tok-3n5-plaintext";
const JSON_VALUE: &str = "json-sops-plaintext";

fn run(cmd: &mut Command) -> Vec<u8> {
    let out =
        cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/setup.sh installs sops and age)"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    run(Command::new("age-keygen").arg("-o").arg(&path));
    let text = std::fs::read_to_string(&path).unwrap();
    (path, text.lines().find_map(|l| l.strip_prefix("# public key: ")).unwrap().to_string())
}

fn sops(dir: &Path, file: &str, text: &str, args: &[&str]) -> String {
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    String::from_utf8(run(Command::new("sops").current_dir(dir).arg("encrypt").args(args).arg(&path)))
        .unwrap()
}

fn secret_yaml(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: apps\ntype: Opaque\n\
         stringData:\n  password: {PASSWORD}\ndata:\n  token: {}\n",
        b64(TOKEN_VALUE)
    )
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The files of a bundle: whole-file YAML, `encrypted_regex` YAML, JSON, and
/// a plain ConfigMap, all encrypted for `recipient`.
fn bundle_files(dir: &Path, recipient: &str) -> Vec<(&'static str, String)> {
    let json = format!(
        r#"{{"apiVersion":"v1","kind":"Secret","metadata":{{"name":"json","namespace":"apps"}},"stringData":{{"v":"{JSON_VALUE}"}}}}"#
    );
    vec![
        ("whole.yaml", sops(dir, "whole.yaml", &secret_yaml("whole"), &["--age", recipient])),
        (
            "regex.yaml",
            sops(
                dir,
                "regex.yaml",
                &secret_yaml("regex"),
                &["--age", recipient, "--encrypted-regex", "^(data|stringData)$"],
            ),
        ),
        ("json.json", sops(dir, "json.json", &json, &["--age", recipient])),
        ("cm.yaml", configmap("plain", "k: v")),
    ]
}

async fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let out = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("kubectl runs");
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// kubectl reads the Secrets' data as the plaintext.
async fn assert_secrets_readable(sim: &kube_sim::KubeSim, dir: &Path) {
    let kc = dir.join("kubeconfig");
    sim.write_kubeconfig(&kc).unwrap();
    for name in ["whole", "regex"] {
        let pw =
            kubectl(&kc, &["-n", "apps", "get", "secret", name, "-o", "jsonpath={.data.password}"]).await;
        assert_eq!(pw, b64(PASSWORD), "{name}");
        let tok = kubectl(&kc, &["-n", "apps", "get", "secret", name, "-o", "jsonpath={.data.token}"]).await;
        assert_eq!(tok, b64(TOKEN_VALUE), "{name}");
    }
    let v = kubectl(&kc, &["-n", "apps", "get", "secret", "json", "-o", "jsonpath={.data.v}"]).await;
    assert_eq!(v, b64(JSON_VALUE));
}

#[tokio::test]
async fn oneshot_applies_sops_files_with_age_key_files_and_refuses_without() {
    init();
    let sim = sim().await;
    let tmp = tempfile::tempdir().unwrap();
    let (key_file, recipient) = keygen(tmp.path(), "age.txt");
    let (other_file, _) = keygen(tmp.path(), "other.txt");
    let key = SigningKey::generate().unwrap();
    let pubkey = write_pub(tmp.path(), &key);
    let files = bundle_files(tmp.path(), &recipient);
    let out = tmp.path().join("out");
    write_build_dir(&out, &key, "secrets", 1, &pack(&files));
    let cancel = CancellationToken::new();
    let mut o = OneShotOptions::new(&out, vec![pubkey.clone()]);

    // Not a recipient: DecryptionFailed names the file and the recipient; nothing applied.
    o.age_key_files = vec![other_file.clone()];
    let e = apply_dir(client(&sim), &o, &cancel).await.unwrap_err();
    assert_eq!(e.reason(), "DecryptionFailed", "{e}");
    assert!(e.to_string().contains(&recipient), "{e}");
    let cms = sim.objects("", "configmaps");
    assert!(cms.iter().all(|c| c["metadata"]["name"] != "plain"), "nothing of the bundle is applied");
    assert!(sim.objects("", "secrets").iter().all(|s| s["metadata"]["namespace"] != "apps"));
    // No key at all: the same.
    o.age_key_files = Vec::new();
    assert_eq!(apply_dir(client(&sim), &o, &cancel).await.unwrap_err().reason(), "DecryptionFailed");

    // One byte of one ciphertext changed (signed again, so only SOPS can tell).
    let mut tampered = files.clone();
    let t = &mut tampered[1].1;
    let at = t.find("password: ENC[AES256_GCM,data:").unwrap() + "password: ENC[AES256_GCM,data:".len();
    let c = if t.as_bytes()[at] == b'A' { "B" } else { "A" };
    t.replace_range(at..at + 1, c);
    let bad = tmp.path().join("bad");
    write_build_dir(&bad, &key, "secrets", 1, &pack(&tampered));
    let mut ob = OneShotOptions::new(&bad, vec![pubkey.clone()]);
    ob.age_key_files = vec![key_file.clone()];
    let e = apply_dir(client(&sim), &ob, &cancel).await.unwrap_err();
    assert!(e.to_string().contains("MAC mismatch") && e.to_string().contains("regex.yaml"), "{e}");
    assert!(sim.object("", "configmaps", "default", "plain").is_none(), "nothing applied");

    // The recipient's key (with a non-matching one first): applied and readable.
    o.age_key_files = vec![other_file, key_file];
    let r = apply_dir(client(&sim), &o, &cancel).await.unwrap();
    assert!(r.apply.error.is_none(), "{}", r.render());
    assert_eq!(r.apply.counts().created, 4, "{}", r.render());
    assert!(!r.render().contains(PASSWORD));
    assert_secrets_readable(&sim, tmp.path()).await;
}

/// A writer every log line of the test goes to.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn signed(
    hub: &FakeHub,
    key: &SigningKey,
    bundle: &str,
    generation: u64,
    bytes: Vec<u8>,
) -> pb::BundleDeployment {
    let digest = hub.add_artifact(bytes.clone());
    let st = Statement::new(
        bundle,
        "https://git.example/fleet.git",
        format!("main@sha1:{generation:040x}"),
        digest.clone(),
        bytes.len() as u64,
        generation,
    );
    let (statement, signature) = key.sign_statement(&st).unwrap();
    // Additive proto changes must not break this: keep `..Default::default()`.
    #[allow(clippy::needless_update)]
    pb::BundleDeployment {
        name: bundle.into(),
        statement,
        signature,
        digest,
        size: bytes.len() as u64,
        generation,
        options: Some(pb::ApplyOptions {
            prune: true,
            wait: true,
            timeout_seconds: 20,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn read_tree(dir: &Path, out: &mut Vec<u8>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            read_tree(&p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            out.extend(b);
        }
    }
}

#[tokio::test]
async fn agent_decrypts_with_its_own_key_and_reports_decryption_failed_without_plaintext() {
    init();
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("convoy_agent=trace,convoy_sops=trace,convoy_artifact=trace")
        .with_writer(move || writer.clone())
        .finish();
    // The test runtime is single-threaded: the agent's tasks log through this.
    let _guard = tracing::subscriber::set_default(subscriber);

    let sim =
        sim_with(kube_sim::SimConfig { readiness_delay: Duration::from_millis(50), ..Default::default() })
            .await;
    let hub = FakeHub::start("bootstrap-token", Duration::from_secs(3600)).await;
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let pubkey = write_pub(tmp.path(), &key);
    std::fs::write(tmp.path().join("token"), "bootstrap-token\n").unwrap();
    std::fs::write(tmp.path().join("hub-ca.pem"), &hub.ca.ca_pem).unwrap();
    let mut cfg = AgentConfig::new(&hub.url(), "c1", tmp.path().join("state"));
    cfg.kube = KubeSource::Client(client(&sim));
    cfg.hub_ca = Some(tmp.path().join("hub-ca.pem"));
    cfg.token_file = Some(tmp.path().join("token"));
    cfg.trusted_keys = vec![pubkey];
    cfg.tuning = Tuning {
        heartbeat: Duration::from_millis(500),
        reconnect_base: Duration::from_millis(100),
        reconnect_cap: Duration::from_millis(500),
        default_timeout: Duration::from_secs(20),
        ..Tuning::default()
    };
    let shutdown = CancellationToken::new();
    let agent = Agent::start(cfg, shutdown.clone()).await.expect("agent starts");

    // The agent generated its key pair; the recipient is public in the Secret.
    let secret = sim.object("", "secrets", "convoy-system", "convoy-agent-age").expect("key Secret");
    let recipient =
        secret["metadata"]["annotations"]["convoy.dev/age-recipient"].as_str().unwrap().to_string();
    assert!(recipient.starts_with("age1"), "{recipient}");
    let (_, stranger) = keygen(tmp.path(), "stranger.txt");

    let good = pack(&bundle_files(tmp.path(), &recipient));
    let foreign = pack(&[
        ("s.yaml", sops(tmp.path(), "f.yaml", &secret_yaml("foreign"), &["--age", &stranger])),
        ("cm.yaml", configmap("foreign-cm", "k: v")),
    ]);
    hub.set_desired(vec![
        signed(&hub, &key, "good", 1, good.bytes),
        signed(&hub, &key, "foreign", 1, foreign.bytes),
    ]);

    let st = eventually(60, "good Ready", || async {
        hub.status("good").filter(|s| s.phase == pb::Phase::Ready as i32)
    })
    .await;
    assert_eq!(st.generation, 1);
    let st = eventually(60, "foreign Stalled", || async {
        hub.status("foreign").filter(|s| s.phase == pb::Phase::Stalled as i32)
    })
    .await;
    assert!(
        st.message.contains("DecryptionFailed")
            || st.conditions.iter().any(|c| c.reason == "DecryptionFailed"),
        "{st:?}"
    );
    assert!(st.message.contains("s.yaml") && st.message.contains(&stranger), "{}", st.message);
    let cms = sim.objects("", "configmaps");
    assert!(
        cms.iter().all(|c| c["metadata"]["name"] != "foreign-cm"),
        "nothing of the refused bundle applied"
    );
    assert_secrets_readable(&sim, tmp.path()).await;
    let events = eventually(30, "DecryptionFailed event", || async {
        let ev = hub.events();
        ev.iter().any(|e| e.reason == "DecryptionFailed").then_some(ev)
    })
    .await;

    // Nowhere in plaintext: logs, status, events, metrics, local state.
    let metrics = agent.metrics.encode();
    shutdown.cancel();
    agent.join().await.unwrap();
    let mut state = Vec::new();
    read_tree(&tmp.path().join("state"), &mut state);
    let logs = String::from_utf8_lossy(&logs.0.lock().unwrap()).to_string();
    assert!(logs.contains("refused"), "logs were captured: {logs}");
    let statuses = format!("{:?}", hub.statuses());
    let events = format!("{events:?}");
    for secret in [PASSWORD, TOKEN_VALUE, JSON_VALUE, &b64(PASSWORD), &b64(TOKEN_VALUE)] {
        assert!(!logs.contains(secret), "plaintext in the logs");
        assert!(!statuses.contains(secret), "plaintext in a status");
        assert!(!events.contains(secret), "plaintext in an event");
        assert!(!metrics.contains(secret), "plaintext in metrics");
        let found = state.windows(secret.len()).any(|w| w == secret.as_bytes());
        assert!(!found, "plaintext in the agent's state directory");
    }
    let _ = std::io::stderr().flush();
}
