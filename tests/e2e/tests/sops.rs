//! SOPS end to end (issue 17): three kube-sim clusters with real agents, each
//! with its own generated age key. `convoy sops recipients --selector
//! env=prod` lists the prod agents' recipients; a Secret encrypted by the real
//! `sops` for exactly those is committed to the `infra` bundle (every
//! cluster). The prod clusters apply it and kubectl reads the plaintext;
//! staging reports `DecryptionFailed` naming the file and the recipients,
//! applies nothing of that generation, and keeps its other bundles Ready.

use std::path::PathBuf;
use std::process::Command;

use convoy_e2e::fleet::{all_ready, cell_ready_at};
use convoy_e2e::{Fleet, FleetOptions};
use convoy_proto::v1 as pb;

fn convoy_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_convoy-e2e-convoy"))
}

const PLAINTEXT: &str = "prod-db-password-e2e";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_sops_secret_for_prod_applies_on_prod_and_stalls_staging() {
    let fleet = Fleet::start(FleetOptions::default()).await.unwrap();
    let before = fleet.wait_converged(120).await;
    let infra_before = before.iter().find(|b| b.name == "infra").unwrap().clone();

    // The prod agents' recipients, as the operator gets them.
    let out =
        fleet.convoy_ok(&convoy_bin(), &["sops", "recipients", "--selector", "env=prod"]).await.unwrap();
    let prod: Vec<&str> = out.lines().collect();
    assert_eq!(prod.len(), 2, "one generated key per prod agent: {out}");
    assert!(prod.iter().all(|r| r.starts_with("age1")), "{out}");
    let staging = fleet.convoy_ok(&convoy_bin(), &["sops", "recipients", "-l", "env=staging"]).await.unwrap();
    assert!(!prod.contains(&staging.trim()), "staging has its own key");

    // The Secret, encrypted by the real sops for the prod recipients only.
    let plain = fleet.root().join("db-secret.yaml");
    std::fs::write(
        &plain,
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  namespace: web\ntype: Opaque\nstringData:\n  password: {PLAINTEXT}\n"
        ),
    )
    .unwrap();
    let enc = Command::new("sops")
        .current_dir(fleet.root())
        .args(["encrypt", "--encrypted-regex", "^(data|stringData)$", "--age", &prod.join(",")])
        .arg(&plain)
        .output()
        .expect("sops runs (scripts/setup.sh installs it)");
    assert!(enc.status.success(), "{}", String::from_utf8_lossy(&enc.stderr));
    let enc = String::from_utf8(enc.stdout).unwrap();
    assert!(!enc.contains(PLAINTEXT));
    fleet.repo.write("infra/db-secret.yaml", &enc).unwrap();
    fleet.repo.commit("infra: db secret for prod").unwrap();
    let commit = fleet.push().await.unwrap();

    let b = fleet
        .wait_bundle("infra", 120, "infra Ready on prod, DecryptionFailed on staging", |b| {
            b.revision.contains(&commit[..12.min(commit.len())])
                && b.clusters.iter().all(|c| {
                    let phase = c.status.as_ref().map(|s| s.phase).unwrap_or_default();
                    if c.cluster == "staging" {
                        phase == pb::Phase::Stalled as i32
                    } else {
                        cell_ready_at(c, b.generation)
                    }
                })
        })
        .await;
    assert_eq!(b.generation, infra_before.generation + 1);
    let cell = b.clusters.iter().find(|c| c.cluster == "staging").unwrap();
    let st = cell.status.as_ref().unwrap();
    assert!(st.conditions.iter().any(|c| c.reason == "DecryptionFailed"), "{st:?}");
    assert!(st.message.contains("db-secret.yaml"), "{}", st.message);
    for r in &prod {
        assert!(st.message.contains(r), "names the recipients: {}", st.message);
    }
    assert!(!format!("{b:?}").contains(PLAINTEXT));

    // Prod: applied, kubectl reads the plaintext.
    for c in ["prod-eu", "prod-us"] {
        let pw = fleet
            .cluster(c)
            .kubectl_ok(&["-n", "web", "get", "secret", "db", "-o", "jsonpath={.data.password}"])
            .await
            .unwrap();
        use base64::Engine as _;
        let pw = base64::engine::general_purpose::STANDARD.decode(pw.trim()).unwrap();
        assert_eq!(pw, PLAINTEXT.as_bytes(), "{c}");
    }
    // Staging: nothing of that generation, and its other bundles stay Ready.
    assert!(fleet.cluster("staging").object("", "secrets", "web", "db").is_none());
    for v in fleet.bundles().await.unwrap() {
        if v.name == "infra" {
            continue;
        }
        assert!(all_ready(&v), "{} stays Ready: {v:?}", v.name);
    }
    fleet.shutdown().await;
}
