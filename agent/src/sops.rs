//! SOPS on the agent: owns the agent's age keys (its own key pair in a
//! Secret of its namespace, an operator's shared key Secret, `--age-key-file`
//! files) and decrypts SOPS files in memory, just before their documents
//! become objects. Plaintext is never logged, stored or reported: errors name
//! the file, the recipients and the failing path only.

use std::path::PathBuf;

use base64::Engine as _;
use convoy_sops::{AgeKeys, KeyProvider};
use serde_json::{Value, json};

use crate::discovery::ResourceInfo;
use crate::kubeapi::ObjApi;
use crate::objects::{Manifest, ObjKey, Origin};
use crate::{Error, Result};

/// The Secret (in the agent's namespace) holding the agent's own age key.
pub const KEY_SECRET: &str = "convoy-agent-age";
/// The data key of the identity in [`KEY_SECRET`].
pub const KEY_FIELD: &str = "age.agekey";

/// Whether a file may hold SOPS documents: a cheap test on the bytes (the
/// word `sops` appears), confirmed by parsing in [`decrypt_file`].
pub fn maybe_sops(_path: &str, content: &[u8]) -> bool {
    content.windows(4).any(|w| w == b"sops")
}

fn decryption_error(file: &str, e: convoy_sops::Error) -> Error {
    Error::Decryption { file: file.to_string(), message: e.to_string() }
}

/// Decrypt a SOPS file into manifests. `Ok(None)` when no document of the
/// file is SOPS (the caller parses it as plain YAML). Every document must
/// decrypt and the file's MAC must verify, or nothing of it is returned.
pub fn decrypt_file(path: &str, content: &[u8], keys: &dyn KeyProvider) -> Result<Option<Vec<Manifest>>> {
    // A file that does not parse is left to the plain path, which reports
    // the problem with its line.
    let Ok(text) = std::str::from_utf8(content) else { return Ok(None) };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // (document index, value), null documents skipped as everywhere else.
    let mut docs: Vec<(usize, Value)> = Vec::new();
    if path.to_ascii_lowercase().ends_with(".json") {
        let Ok(v) = serde_json::from_str(text) else { return Ok(None) };
        docs.push((0, v));
    } else {
        for d in convoy_core::yaml::documents(text) {
            let Ok(v) = convoy_core::yaml::parse_document::<Value>(path, &d) else { return Ok(None) };
            if !v.is_null() {
                docs.push((d.index, v));
            }
        }
    }
    if !docs.iter().any(|(_, v)| convoy_sops::is_sops(v)) {
        return Ok(None);
    }
    let values: Vec<Value> = docs.iter().map(|(_, v)| v.clone()).collect();
    let plain = convoy_sops::decrypt(&values, keys).map_err(|e| decryption_error(path, e))?;
    drop(values);
    let mut out = Vec::new();
    for ((index, _), v) in docs.into_iter().zip(plain) {
        out.extend(Manifest::from_value(Origin { file: path.to_string(), index }, v)?);
    }
    Ok(Some(out))
}

/// Read age identity files (`--age-key-file`, repeatable).
pub fn load_key_files(paths: &[PathBuf]) -> Result<AgeKeys> {
    let mut keys = AgeKeys::new();
    for p in paths {
        let text = std::fs::read_to_string(p).map_err(|e| Error::io(format!("read {}", p.display()), e))?;
        let k = AgeKeys::parse(&text).map_err(|e| Error::Config(format!("{}: {e}", p.display())))?;
        if k.is_empty() {
            return Err(Error::Config(format!("{}: no age identity in the file", p.display())));
        }
        keys.extend(k);
    }
    Ok(keys)
}

fn secrets() -> ResourceInfo {
    ResourceInfo {
        group: String::new(),
        version: "v1".into(),
        kind: "Secret".into(),
        plural: "secrets".into(),
        namespaced: true,
    }
}

/// The age identities in every data value of a Secret (`None`: no Secret).
async fn secret_keys(client: &kube::Client, namespace: &str, name: &str) -> Result<Option<AgeKeys>> {
    let key = ObjKey::new("", "Secret", Some(namespace), name);
    let Some(s) = ObjApi::new(client, &secrets(), &key).get().await? else {
        return Ok(None);
    };
    let mut keys = AgeKeys::new();
    if let Some(data) = s["data"].as_object() {
        for (field, v) in data {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or_default())
                .map_err(|_| Error::Config(format!("Secret {namespace}/{name}: {field} is not base64")))?;
            let text = String::from_utf8(bytes)
                .map_err(|_| Error::Config(format!("Secret {namespace}/{name}: {field} is not text")))?;
            let k = AgeKeys::parse(&text)
                .map_err(|e| Error::Config(format!("Secret {namespace}/{name}: {field}: {e}")))?;
            keys.extend(k);
        }
    }
    Ok(Some(keys))
}

/// The agent's own age key: read from [`KEY_SECRET`], or generated and
/// stored there on first start (the private key never leaves the cluster).
pub async fn own_key(client: &kube::Client, namespace: &str) -> Result<AgeKeys> {
    if let Some(k) = secret_keys(client, namespace, KEY_SECRET).await?
        && !k.is_empty()
    {
        return Ok(k);
    }
    let k = AgeKeys::generate();
    let body = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": KEY_SECRET,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": convoy_core::FIELD_MANAGER},
            "annotations": {"convoy.dev/age-recipient": k.recipients().join(",")},
        },
        "data": {KEY_FIELD: base64::engine::general_purpose::STANDARD.encode(k.to_identity_file())},
    })
    .to_string();
    let key = ObjKey::new("", "Secret", Some(namespace), KEY_SECRET);
    ObjApi::new(client, &secrets(), &key).apply_own(&body, namespace).await?;
    tracing::info!(namespace, recipient = %k.recipients().join(","), "generated the agent's age key");
    Ok(k)
}

/// Every key the agent decrypts with: its own, plus the operator's shared
/// key Secret when one is named (it must exist).
pub async fn agent_keys(client: &kube::Client, namespace: &str, shared: Option<&str>) -> Result<AgeKeys> {
    let mut keys = own_key(client, namespace).await?;
    if let Some(name) = shared {
        let k = secret_keys(client, namespace, name).await?.ok_or_else(|| {
            Error::Config(format!("shared age key Secret {namespace}/{name} does not exist"))
        })?;
        if k.is_empty() {
            return Err(Error::Config(format!(
                "shared age key Secret {namespace}/{name} holds no age identity"
            )));
        }
        keys.extend(k);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_yaml() -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "apps"},
            "stringData": {"password": "p4ss-plain"}})
    }

    #[test]
    fn sops_files_decrypt_to_manifests_and_plain_files_are_left_alone() {
        let keys = AgeKeys::generate();
        let opts = convoy_sops::EncryptOptions { recipients: keys.recipients(), ..Default::default() };
        let enc = convoy_sops::encrypt(&[secret_yaml()], &opts).unwrap();
        let text = serde_json::to_string(&enc[0]).unwrap();
        for file in ["s.yaml", "s.json"] {
            assert!(maybe_sops(file, text.as_bytes()));
            let ms = decrypt_file(file, text.as_bytes(), &keys).unwrap().unwrap();
            assert_eq!(ms.len(), 1);
            assert_eq!((ms[0].kind.as_str(), ms[0].name.as_str()), ("Secret", "db"));
            assert!(ms[0].body.contains("p4ss-plain") && !ms[0].body.contains("\"sops\""));
        }
        let plain = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n";
        assert!(decrypt_file("c.yaml", plain, &keys).unwrap().is_none());
        assert!(!maybe_sops("c.yaml", plain));
        // A broken file is left to the plain path (which names the line).
        assert!(decrypt_file("b.yaml", b"sops: [unclosed\n", &keys).unwrap().is_none());
        // Not a recipient: the file and the recipients are named, no plaintext.
        let other = AgeKeys::generate();
        let e = decrypt_file("secrets/db.yaml", text.as_bytes(), &other).unwrap_err();
        assert_eq!(e.reason(), "DecryptionFailed");
        let msg = e.to_string();
        assert!(msg.contains("secrets/db.yaml") && msg.contains(&keys.recipients()[0]), "{msg}");
        assert!(!msg.contains("p4ss-plain"));
    }

    /// A SOPS-encrypted `v1 List` is flattened by `Manifest::from_value`'s
    /// List branch: SOPS files reach it without the artifact crate's
    /// flattening, so that branch is not dead code.
    #[test]
    fn an_encrypted_list_is_flattened_into_its_items() {
        let keys = AgeKeys::generate();
        let opts = convoy_sops::EncryptOptions { recipients: keys.recipients(), ..Default::default() };
        let list = json!({"apiVersion": "v1", "kind": "List", "items": [secret_yaml(),
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db2", "namespace": "apps"},
             "stringData": {"password": "other"}}]});
        let enc = convoy_sops::encrypt(&[list], &opts).unwrap();
        let text = serde_json::to_string(&enc[0]).unwrap();
        let ms = decrypt_file("list.yaml", text.as_bytes(), &keys).unwrap().unwrap();
        assert_eq!(ms.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["db", "db2"]);
    }
}
