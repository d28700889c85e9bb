//! Commit signature verification with real ssh-keygen and gpg signatures.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;

use common::*;
use convoy_core::config::{CommitVerification, RefSpec};
use convoy_sources::git::{FetchOptions, GitCache};
use convoy_sources::redact::Secrets;
use convoy_sources::verify::verify_commit;

fn fetch_head(up: &Upstream, cache: &GitCache) -> String {
    cache
        .fetch(
            up.bare.to_str().unwrap(),
            &RefSpec::Branch("main".into()),
            &FetchOptions::default(),
            &Secrets::default(),
            None,
            &AtomicBool::new(false),
        )
        .unwrap()
        .commit
}

fn keygen(path: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "signer", "-f"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::read_to_string(path.with_extension("pub")).unwrap()
}

#[test]
fn ssh_signed_commits_verify_and_others_are_refused() {
    let up = Upstream::new("fleet", &[("a.yaml", &configmap("a"))]);
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("signer");
    let public = keygen(&key);
    let allowed = keys.path().join("allowed_signers");
    std::fs::write(&allowed, format!("test@convoy.dev namespaces=\"git\" {public}")).unwrap();
    let v = CommitVerification { mode: "ssh".into(), keys_file: allowed.display().to_string() };
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = GitCache::new(cache_dir.path().join("c.git"));

    // Unsigned.
    let c = fetch_head(&up, &cache);
    let err = verify_commit(&cache, &c, &v).unwrap_err();
    assert!(err.to_string().contains("not signed"), "{err}");

    // Signed by the allowed key.
    write(&up.work, "b.yaml", &configmap("b"));
    git(&up.work, &["add", "-A"]);
    let signing_key = format!("user.signingkey={}", key.with_extension("pub").display());
    git(&up.work, &["-c", "gpg.format=ssh", "-c", &signing_key, "commit", "-q", "-S", "-m", "signed"]);
    up.push(&["origin", "main"]);
    let c = fetch_head(&up, &cache);
    verify_commit(&cache, &c, &v).unwrap();

    // Signed by another key.
    let other = keys.path().join("other");
    keygen(&other);
    write(&up.work, "c.yaml", &configmap("c"));
    git(&up.work, &["add", "-A"]);
    let other_key = format!("user.signingkey={}", other.with_extension("pub").display());
    git(&up.work, &["-c", "gpg.format=ssh", "-c", &other_key, "commit", "-q", "-S", "-m", "other"]);
    up.push(&["origin", "main"]);
    let c = fetch_head(&up, &cache);
    let err = verify_commit(&cache, &c, &v).unwrap_err();
    assert!(matches!(err, convoy_sources::Error::Verification(_)), "{err}");
    assert_eq!(err.reason(), "VerificationFailed");
}

#[test]
fn gpg_signed_commits_verify_against_the_configured_keyring_only() {
    let up = Upstream::new("fleet", &[("a.yaml", &configmap("a"))]);
    let home = tempfile::tempdir().unwrap();
    let gpg = |args: &[&str]| {
        let out = Command::new("gpg")
            .arg("--homedir")
            .arg(home.path())
            .args(["--batch", "--quiet"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "gpg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    gpg(&[
        "--passphrase",
        "",
        "--quick-gen-key",
        "Convoy Test <test@convoy.dev>",
        "ed25519",
        "sign",
        "never",
    ]);
    let armored = gpg(&["--armor", "--export", "test@convoy.dev"]);
    let keys = tempfile::tempdir().unwrap();
    let keyring = keys.path().join("keys.asc");
    std::fs::write(&keyring, armored).unwrap();
    let v = CommitVerification { mode: "gpg".into(), keys_file: keyring.display().to_string() };

    write(&up.work, "b.yaml", &configmap("b"));
    git(&up.work, &["add", "-A"]);
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Convoy Test",
            "-c",
            "user.email=test@convoy.dev",
            "-c",
            "user.signingkey=test@convoy.dev",
        ])
        .args(["commit", "-q", "-S", "-m", "gpg signed"])
        .current_dir(&up.work)
        .env("GNUPGHOME", home.path())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    up.push(&["origin", "main"]);
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = GitCache::new(cache_dir.path().join("c.git"));
    let c = fetch_head(&up, &cache);
    verify_commit(&cache, &c, &v).unwrap();

    // A keyring without that key refuses it.
    let other_home = tempfile::tempdir().unwrap();
    let out = Command::new("gpg")
        .arg("--homedir")
        .arg(other_home.path())
        .args([
            "--batch",
            "--quiet",
            "--passphrase",
            "",
            "--quick-gen-key",
            "Someone <x@y.z>",
            "ed25519",
            "sign",
            "never",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = Command::new("gpg")
        .arg("--homedir")
        .arg(other_home.path())
        .args(["--armor", "--export", "x@y.z"])
        .output()
        .unwrap();
    std::fs::write(&keyring, out.stdout).unwrap();
    let err = verify_commit(&cache, &c, &v).unwrap_err();
    assert!(matches!(err, convoy_sources::Error::Verification(_)), "{err}");
}
