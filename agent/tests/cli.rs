//! The `convoy-agent` binary in one-shot mode against kube-sim: `apply` and
//! `diff` on a directory made with convoy-artifact, exit codes and reports.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;
use convoy_artifact::SigningKey;

async fn agent(args: &[&str], kubeconfig: &Path) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_convoy-agent"))
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env_remove("CONVOY_TRUSTED_KEYS")
        .env("CONVOY_LOG", "warn")
        .kill_on_drop(true)
        .output()
        .await
        .expect("convoy-agent runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_binary_apply_and_diff_report_and_exit_codes() {
    init();
    let sim = sim().await;
    let tmp = tempfile::tempdir().unwrap();
    let kc = tmp.path().join("kubeconfig");
    sim.write_kubeconfig(&kc).unwrap();
    let key = SigningKey::generate().unwrap();
    let pubkey = write_pub(tmp.path(), &key);
    let pk = pubkey.to_str().unwrap();

    let v1 =
        pack(&[("cm.yaml", configmap("settings", "1")), ("web.yaml", deployment("web", "nginx:1.27", 1))]);
    let d1 = tmp.path().join("v1");
    write_build_dir(&d1, &key, "app", 1, &v1);
    let d1s = d1.to_str().unwrap();

    // diff before anything exists: everything would be created, exit 1.
    let o = agent(&["diff", d1s, "--key", pk, "--target-namespace", "apps"], &kc).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("would create") && text(&o).contains("ConfigMap/apps/settings"),
        "{}",
        text(&o)
    );

    let o =
        agent(&["apply", d1s, "--key", pk, "--target-namespace", "apps", "--wait", "--timeout", "60s"], &kc)
            .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("created") && out.contains("Deployment/apps/web"), "{out}");
    assert!(out.contains("summary: 2 created, 0 configured, 0 unchanged, 0 pruned, 0 not ready"), "{out}");

    // Nothing to change now.
    let o = agent(&["diff", d1s, "--key", pk, "--target-namespace", "apps"], &kc).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = agent(&["apply", d1s, "--key", pk, "--target-namespace", "apps"], &kc).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("0 created, 0 configured, 2 unchanged") && text(&o).contains("0 writes"),
        "{}",
        text(&o)
    );

    // A new revision: diff names the field and the prune; apply --prune does them.
    let v2 = pack(&[("cm.yaml", configmap("settings", "2"))]);
    let d2 = tmp.path().join("v2");
    write_build_dir(&d2, &key, "app", 2, &v2);
    let d2s = d2.to_str().unwrap();
    let o = agent(&["diff", d2s, "--key", pk, "--target-namespace", "apps", "--prune"], &kc).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("would configure") && out.contains(".data.k"), "{out}");
    assert!(out.contains("would prune") && out.contains("Deployment/apps/web"), "{out}");
    let o = agent(&["apply", d2s, "--key", pk, "--target-namespace", "apps", "--prune"], &kc).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("pruned") && sim.object("apps", "deployments", "apps", "web").is_none(),
        "{}",
        text(&o)
    );

    // Refusals exit 2 and apply nothing: a wrong key, a replay of generation 1.
    let other = SigningKey::generate().unwrap();
    let bad = tmp.path().join("bad");
    write_build_dir(&bad, &other, "app", 3, &v1);
    let o = agent(&["apply", bad.to_str().unwrap(), "--key", pk, "--target-namespace", "apps"], &kc).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("signature"), "{}", text(&o));
    let o = agent(&["apply", d1s, "--key", pk, "--target-namespace", "apps"], &kc).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("GenerationRollback") || text(&o).contains("refusing generation 1"),
        "{}",
        text(&o)
    );
    assert_eq!(sim.object("", "configmaps", "apps", "settings").unwrap()["data"]["k"], "2");

    // Not ready within the timeout: exit 1 with the reason.
    let v3 = pack(&[
        ("cm.yaml", configmap("settings", "2")),
        ("bad.yaml", deployment("broken", "does-not-exist", 1)),
    ]);
    let d3 = tmp.path().join("v3");
    write_build_dir(&d3, &key, "app", 3, &v3);
    let o = agent(
        &[
            "apply",
            d3.to_str().unwrap(),
            "--key",
            pk,
            "--target-namespace",
            "apps",
            "--wait",
            "--timeout",
            "3s",
        ],
        &kc,
    )
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("not ready")
            && out.contains("Deployment/apps/broken")
            && out.contains("ImagePullBackOff"),
        "{out}"
    );
}
