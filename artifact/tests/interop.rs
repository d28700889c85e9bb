//! Interop with the real `openssl` and `tar`/`gzip` tools, and determinism on
//! the shared real-world corpus.

use std::path::{Path, PathBuf};
use std::process::Command;

use convoy_artifact::{
    Error, FsTree, IgnoreRules, Limits, PublicKey, SigningKey, Statement, TrustedKeys, VerifyFailure,
    digest_of, load_manifests, pack_dir, pack_files, pack_tree, verify_bundle,
};

fn corpus() -> PathBuf {
    std::env::var_os("CONVOY_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"))
}

fn run(cmd: &mut Command) -> std::process::Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn openssl_verify(dir: &Path, pubkey: &Path) -> bool {
    let out = run(Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(pubkey)
        .arg("-signature")
        .arg(dir.join("statement.sig"))
        .arg(dir.join("statement.json")));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.success(),
        text.contains("Verified OK"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.success()
}

#[test]
fn openssl_verifies_our_signatures_and_catches_tampering() {
    let d = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    key.save(&d.path().join("signing.key")).unwrap();
    key.public_key().save(&d.path().join("signing.pub")).unwrap();
    // openssl reads both of our PEMs.
    let out = run(Command::new("openssl").args(["pkey", "-noout", "-in"]).arg(d.path().join("signing.key")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(Command::new("openssl")
        .args(["pkey", "-pubin", "-outform", "DER", "-in"])
        .arg(d.path().join("signing.pub")));
    assert!(out.status.success());
    assert_eq!(key.public_key().key_id(), digest_of(&out.stdout), "keyId is sha256 of the SPKI DER");

    let art =
        pack_dir(&corpus().join("ingress-nginx/deploy/static/provider/cloud").join("."), &Limits::default());
    // The directory holds a kustomization.yaml, which is not a Kubernetes object.
    assert!(matches!(art, Err(Error::Manifest { ref file, .. }) if file == "kustomization.yaml"), "{art:?}");
    let yaml =
        std::fs::read(corpus().join("ingress-nginx/deploy/static/provider/cloud/deploy.yaml")).unwrap();
    let art = pack_files(vec![("deploy.yaml".into(), yaml)], &Limits::default()).unwrap();
    let st =
        Statement::new("ingress", "https://git.example/x.git", "main@sha1:1234", &art.digest, art.size, 1);
    let (bytes, sig) = key.sign_statement(&st).unwrap();
    let out = d.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("statement.json"), &bytes).unwrap();
    std::fs::write(out.join("statement.sig"), &sig).unwrap();
    assert!(openssl_verify(&out, &d.path().join("signing.pub")));

    // One flipped byte in the statement: openssl and we both refuse.
    for i in [0, bytes.len() / 2, bytes.len() - 1] {
        let mut t = bytes.clone();
        t[i] ^= 0x01;
        std::fs::write(out.join("statement.json"), &t).unwrap();
        assert!(!openssl_verify(&out, &d.path().join("signing.pub")), "byte {i}");
        let trusted = TrustedKeys::new([key.public_key()]);
        let err = verify_bundle(&t, &sig, &art.bytes, &trusted, "ingress").unwrap_err();
        assert!(matches!(err, Error::Verify(VerifyFailure::Signature { .. })), "{err}");
    }
    // One flipped byte in the artifact: the signature holds, the digest does not.
    let trusted = TrustedKeys::new([key.public_key()]);
    for i in [0, art.bytes.len() / 2, art.bytes.len() - 1] {
        let mut a = art.bytes.clone();
        a[i] ^= 0x80;
        let err = verify_bundle(&bytes, &sig, &a, &trusted, "ingress").unwrap_err();
        assert!(matches!(err, Error::Verify(VerifyFailure::Digest { .. })), "byte {i}: {err}");
    }
    verify_bundle(&bytes, &sig, &art.bytes, &trusted, "ingress").unwrap();
}

#[test]
fn we_verify_openssl_signatures_and_load_openssl_keys() {
    let d = tempfile::tempdir().unwrap();
    let key = d.path().join("k.pem");
    let out = run(Command::new("openssl")
        .args(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"])
        .arg(&key));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(d.path().join("k.pub")));
    assert!(out.status.success());
    let msg = d.path().join("m.json");
    std::fs::write(&msg, br#"{"hello":"world"}"#).unwrap();
    let out = run(Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&key)
        .arg("-out")
        .arg(d.path().join("m.sig"))
        .arg(&msg));
    assert!(out.status.success());
    let public = PublicKey::load(&d.path().join("k.pub")).unwrap();
    assert!(public.verify(br#"{"hello":"world"}"#, &std::fs::read(d.path().join("m.sig")).unwrap()));
    // The openssl private key signs for us too, and the public halves agree.
    let ours = SigningKey::load(&key).unwrap();
    assert_eq!(ours.public_key(), public);
    let sig = ours.sign(b"x").unwrap();
    assert!(public.verify(b"x", &sig));
}

#[test]
fn gnu_tar_lists_exactly_the_manifests_with_fixed_metadata() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("tree");
    let flux = corpus().join("flux2-kustomize-helm-example/clusters/production");
    copy_dir(&flux, &root);
    std::fs::remove_file(root.join("flux-system/kustomization.yaml")).unwrap();
    let art = pack_dir(&root, &Limits::default()).unwrap();
    let path = d.path().join("a.tar.gz");
    std::fs::write(&path, &art.bytes).unwrap();
    let out = run(Command::new("tar").args(["--numeric-owner", "-tvzf"]).arg(&path));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listing = String::from_utf8(out.stdout).unwrap();
    let names: Vec<&str> = listing.lines().map(|l| l.rsplit(' ').next().unwrap()).collect();
    assert_eq!(
        names,
        [
            "apps.yaml",
            "artifacts.yaml",
            "flux-system/gotk-components.yaml",
            "flux-system/gotk-sync.yaml",
            "infrastructure.yaml"
        ]
    );
    for l in listing.lines() {
        assert!(l.starts_with("-rw-r--r-- 0/0"), "{l}");
        assert!(l.contains("1970-01-01 00:00"), "{l}");
    }
    let out = run(Command::new("gzip").args(["-lv"]).arg(&path));
    assert!(out.status.success(), "gzip -t accepts it");
    assert_eq!(art.objects as usize, load_manifests(&art.bytes, &Limits::default()).unwrap().len());
}

#[test]
fn corpus_packs_deterministically() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a");
    let b = d.path().join("b");
    copy_dir(&corpus().join("argo-cd"), &a);
    copy_dir(&corpus().join("argo-cd"), &b);
    // Different mtimes and permissions, an extra non-manifest file and a
    // no-op .convoyignore in the second copy.
    std::fs::write(b.join("manifests/NOTES.txt"), "x").unwrap();
    std::fs::write(b.join(".convoyignore"), "# nothing\n*.txt\n").unwrap();
    std::fs::set_permissions(
        b.join("manifests/install.yaml"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let pa = pack_tree(&FsTree::new(&a), "manifests", &IgnoreRules::default(), &Limits::default()).unwrap();
    let pb = pack_tree(&FsTree::new(&b), "manifests", &IgnoreRules::default(), &Limits::default()).unwrap();
    assert_eq!(pa.digest, pb.digest);
    assert_eq!(pa.bytes, pb.bytes);
    assert!(pa.objects > 50, "argo-cd has many objects: {}", pa.objects);
    // Built again: same bytes.
    assert_eq!(
        pack_tree(&FsTree::new(&a), "manifests", &IgnoreRules::default(), &Limits::default()).unwrap().bytes,
        pa.bytes
    );
}

/// The exact digest of a fixed input. If this changes, every artifact digest
/// in every fleet changes: only on purpose, with a release note.
#[test]
fn golden_digest() {
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: golden\ndata:\n  k: v\n";
    let files = vec![
        ("b/c.yaml".to_string(), cm.as_bytes().to_vec()),
        ("a.yaml".to_string(), cm.as_bytes().to_vec()),
    ];
    let p = pack_files(files, &Limits::default()).unwrap();
    assert_eq!(p.digest, GOLDEN, "artifact bytes changed");
}

const GOLDEN: &str = "sha256:ab4730eb7bbbb87a66569012de92c08a783f43f85c4bdcb68c447d454ed8bfd2";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}

/// The fast manifest check and the full parse agree on every real-world file.
#[test]
fn fast_check_agrees_with_full_parse_on_the_corpus() {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if convoy_artifact::tree::is_manifest_name(&p.to_string_lossy()) {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&corpus(), &mut files);
    assert!(files.len() > 20, "{files:?}");
    let mut objects = 0;
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let name = f.to_string_lossy();
        let full = convoy_artifact::parse_file(&name, &bytes).map(|v| v.len()).map_err(|e| e.to_string());
        let fast = convoy_artifact::manifest::check_file(&name, &bytes).map_err(|e| e.to_string());
        assert_eq!(fast, full, "{name}");
        objects += full.unwrap_or(0);
    }
    assert!(objects > 100, "{objects}");
}
