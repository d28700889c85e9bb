//! `convoy keygen`, `convoy build` and `convoy verify` as a user runs them,
//! checked with the real openssl.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn convoy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_convoy"))
        .args(args)
        .env("CONVOY_LOG", "error")
        .output()
        .expect("convoy runs")
}

fn corpus() -> PathBuf {
    std::env::var_os("CONVOY_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn openssl_ok(key: &Path, dir: &Path) -> bool {
    Command::new("openssl")
        .args(["dgst", "-sha256", "-verify", s(key), "-signature"])
        .arg(dir.join("statement.sig"))
        .arg(dir.join("statement.json"))
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn keygen_build_verify_and_tampering() {
    let d = tempfile::tempdir().unwrap();
    let keys = d.path().join("keys");
    let out = convoy(&["keygen", "--out", s(&keys)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("sha256:"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(keys.join("signing.key")).unwrap().permissions().mode() & 0o777, 0o600);
    let again = convoy(&["keygen", "--out", s(&keys)]);
    assert_eq!(again.status.code(), Some(2), "never overwrites a key");

    // A kustomize bundle from the corpus.
    let built = d.path().join("podinfo");
    let podinfo = corpus().join("podinfo/kustomize");
    let out = convoy(&[
        "build",
        "--dir",
        s(&podinfo),
        "--key",
        s(&keys.join("signing.key")),
        "--out",
        s(&built),
        "--name",
        "podinfo",
        "--revision",
        "main@sha1:0123456789abcdef0123456789abcdef01234567",
        "--generation",
        "7",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let digest = text(&out.stdout).trim().to_string();
    assert!(digest.starts_with("sha256:") && digest.len() == 71, "{digest}");
    assert!(text(&out.stderr).contains("(kustomize)"), "{}", text(&out.stderr));
    let statement: serde_json::Value =
        serde_json::from_slice(&std::fs::read(built.join("statement.json")).unwrap()).unwrap();
    assert_eq!(statement["artifact"]["digest"], digest.as_str());
    assert_eq!(statement["generation"], 7);
    assert_eq!(statement["bundle"], "podinfo");

    // Same input, same digest and same statement bytes.
    let built2 = d.path().join("podinfo2");
    let out = convoy(&[
        "build",
        "--dir",
        s(&podinfo),
        "--key",
        s(&keys.join("signing.key")),
        "--out",
        s(&built2),
        "--name",
        "podinfo",
        "--revision",
        "main@sha1:0123456789abcdef0123456789abcdef01234567",
        "--generation",
        "7",
    ]);
    assert_eq!(text(&out.stdout).trim(), digest);
    assert_eq!(
        std::fs::read(built.join("statement.json")).unwrap(),
        std::fs::read(built2.join("statement.json")).unwrap()
    );
    assert_eq!(
        std::fs::read(built.join("artifact.tar.gz")).unwrap(),
        std::fs::read(built2.join("artifact.tar.gz")).unwrap()
    );

    let pubkey = keys.join("signing.pub");
    let ok = convoy(&["verify", "--key", s(&pubkey), s(&built)]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).starts_with("OK: bundle podinfo generation 7"), "{}", text(&ok.stdout));
    assert!(openssl_ok(&pubkey, &built));
    let wrong_name = convoy(&["verify", "--key", s(&pubkey), "--bundle", "other", s(&built)]);
    assert_eq!(wrong_name.status.code(), Some(1));
    assert!(text(&wrong_name.stderr).contains("bundle"), "{}", text(&wrong_name.stderr));

    // One byte of the artifact: the digest check fails, the signature holds.
    let art = built.join("artifact.tar.gz");
    let good_art = std::fs::read(&art).unwrap();
    let mut bad = good_art.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    std::fs::write(&art, &bad).unwrap();
    let v = convoy(&["verify", "--key", s(&pubkey), s(&built)]);
    assert_eq!(v.status.code(), Some(1));
    assert!(text(&v.stderr).contains("digest"), "{}", text(&v.stderr));
    assert!(openssl_ok(&pubkey, &built), "the statement itself is intact");
    std::fs::write(&art, &good_art).unwrap();

    // One byte of the statement: the signature check fails, for openssl too.
    let st = built.join("statement.json");
    let good_st = std::fs::read(&st).unwrap();
    let mut bad = good_st.clone();
    let i = bad.iter().position(|b| *b == b'7').unwrap();
    bad[i] = b'8';
    std::fs::write(&st, &bad).unwrap();
    let v = convoy(&["verify", "--key", s(&pubkey), s(&built)]);
    assert_eq!(v.status.code(), Some(1));
    assert!(text(&v.stderr).contains("signature"), "{}", text(&v.stderr));
    assert!(!openssl_ok(&pubkey, &built));
    std::fs::write(&st, &good_st).unwrap();

    // Another key: refused; both keys (rotation): accepted.
    let keys2 = d.path().join("keys2");
    assert!(convoy(&["keygen", "--out", s(&keys2)]).status.success());
    let other = keys2.join("signing.pub");
    assert_eq!(convoy(&["verify", "--key", s(&other), s(&built)]).status.code(), Some(1));
    let both = format!("{},{}", s(&other), s(&pubkey));
    assert!(convoy(&["verify", "--key", &both, s(&built)]).status.success());

    // Missing files are input errors.
    assert_eq!(convoy(&["verify", "--key", s(&pubkey), s(d.path())]).status.code(), Some(2));
}

#[test]
fn build_errors_name_the_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let keys = d.path().join("keys");
    assert!(convoy(&["keygen", "--out", s(&keys)]).status.success());
    let bundle = d.path().join("app");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(bundle.join("ok.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n")
        .unwrap();
    std::fs::write(bundle.join("bad.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [\n")
        .unwrap();
    let out = convoy(&[
        "build",
        "--dir",
        s(&bundle),
        "--key",
        s(&keys.join("signing.key")),
        "--out",
        s(&d.path().join("o")),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("bad.yaml") && err.contains("line"), "{err}");
    assert!(!d.path().join("o/statement.json").exists(), "nothing written on failure");
}
