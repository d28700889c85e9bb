//! The SOPS tree walk: which leaves are encrypted, decrypting them and
//! checking the MAC over a whole file, the keyless well-formedness check,
//! and encryption.

use serde_json::Value;
use sha2::{Digest, Sha256, Sha512};

use crate::cipher;
use crate::keys::{DataKey, KeyProvider, age_wrap};
use crate::metadata::{Matcher, Metadata, Rules, SOPS_KEY, metadata, to_value};
use crate::{Error, Result};

/// Call `f` on every non-null scalar with its path (mapping keys from the
/// root; list items add nothing, as in SOPS).
fn walk(
    v: &mut Value,
    path: &mut Vec<String>,
    f: &mut dyn FnMut(&mut Value, &[String]) -> Result<()>,
) -> Result<()> {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                path.push(k.clone());
                walk(child, path, f)?;
                path.pop();
            }
            Ok(())
        }
        Value::Array(items) => items.iter_mut().try_for_each(|i| walk(i, path, f)),
        Value::Null => Ok(()),
        leaf => f(leaf, path),
    }
}

/// SOPS's additional data for a value: `key:key:`.
fn path_string(path: &[String]) -> String {
    let mut s = path.join(":");
    s.push(':');
    s
}

/// The metadata of a file's documents: the first document's, and every
/// document must carry the same MAC (SOPS writes one per document).
fn file_metadata(docs: &[Value]) -> Result<Metadata> {
    let first = docs.first().ok_or_else(|| Error::Metadata("no documents".into()))?;
    let meta = metadata(first)?;
    for (i, d) in docs.iter().enumerate().skip(1) {
        let same =
            d.get(SOPS_KEY).and_then(|m| m.get("mac")).and_then(Value::as_str) == Some(meta.mac.as_str());
        if !same {
            return Err(Error::Metadata(format!(
                "document {i} does not carry the file's sops metadata (every document of a SOPS file does)"
            )));
        }
    }
    Ok(meta)
}

fn body(doc: &Value) -> Result<Value> {
    let mut d = doc.clone();
    let Value::Object(m) = &mut d else {
        return Err(Error::Metadata("a SOPS document must be a mapping".into()));
    };
    m.shift_remove(SOPS_KEY);
    Ok(d)
}

/// Check a SOPS file without keys, as the hub does: the metadata is
/// well-formed and every value the rules say is encrypted is an `ENC[...]`
/// value (a file decrypted in place but still carrying metadata is refused).
pub fn check(docs: &[Value]) -> Result<Metadata> {
    let meta = file_metadata(docs)?;
    let m: Matcher = meta.rules.matcher()?;
    for doc in docs {
        let mut d = body(doc)?;
        walk(&mut d, &mut Vec::new(), &mut |v, path| {
            if !m.encrypted(path) {
                return Ok(());
            }
            match v {
                Value::String(s) if s.is_empty() => Ok(()),
                Value::String(s) => cipher::parse(s)
                    .map(|_| ())
                    .map_err(|e| Error::Value { path: path_string(path), message: e }),
                _ => Err(Error::Value {
                    path: path_string(path),
                    message: "a value the rules encrypt is in plaintext".into(),
                }),
            }
        })?;
    }
    Ok(meta)
}

fn data_key(meta: &Metadata, keys: &dyn KeyProvider) -> Result<DataKey> {
    let mut first_err = None;
    for k in &meta.keys {
        match keys.data_key(k) {
            Ok(Some(dk)) => return Ok(dk),
            Ok(None) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or_else(|| Error::NoKey { recipients: meta.recipients() }))
}

fn new_mac(rules: &Rules) -> Sha512 {
    let mut h = Sha512::new();
    if rules.mac_only_encrypted {
        // SOPS seeds this MAC with sha256("sops") so that it always differs
        // from the MAC over all values.
        h.update(Sha256::digest(b"sops"));
    }
    h
}

/// Decrypt every document of one SOPS file (the `sops` key removed) and
/// verify the MAC. Nothing is returned unless the whole file verifies.
pub fn decrypt(docs: &[Value], keys: &dyn KeyProvider) -> Result<Vec<Value>> {
    let meta = file_metadata(docs)?;
    let m = meta.rules.matcher()?;
    let dk = data_key(&meta, keys)?;
    let mut hash = new_mac(&meta.rules);
    let mut out = Vec::with_capacity(docs.len());
    for doc in docs {
        let mut d = body(doc)?;
        walk(&mut d, &mut Vec::new(), &mut |v, path| {
            let enc = m.encrypted(path);
            let bytes = if enc {
                let Value::String(s) = &*v else {
                    return Err(Error::Value {
                        path: path_string(path),
                        message: "a value the rules encrypt is not an ENC[...] string".into(),
                    });
                };
                let (plain, bytes) = cipher::decrypt_value(&dk, s, &path_string(path))?;
                *v = plain;
                bytes
            } else {
                cipher::leaf_bytes(v).unwrap_or_default()
            };
            if !meta.rules.mac_only_encrypted || enc {
                hash.update(&bytes);
            }
            Ok(())
        })?;
        out.push(d);
    }
    let computed = hex::encode_upper(hash.finalize().as_slice());
    let stored = cipher::parse(&meta.mac).map_err(|e| Error::Metadata(format!("mac: {e}")))?;
    let stored = cipher::open(&dk, &stored, &meta.lastmodified).ok_or(Error::MacMismatch)?;
    if stored != computed.as_bytes() {
        return Err(Error::MacMismatch);
    }
    Ok(out)
}

/// How to encrypt.
#[derive(Debug, Clone, Default)]
pub struct EncryptOptions {
    /// age recipients (`age1…`); each gets its own copy of the data key.
    pub recipients: Vec<String>,
    /// Which values to encrypt (none set: SOPS's default, everything but keys
    /// ending in `_unencrypted`).
    pub rules: Rules,
    /// `lastmodified` (default: now, UTC, whole seconds).
    pub lastmodified: Option<String>,
}

/// Encrypt the documents of one file for age recipients, the way `sops
/// encrypt` does. Documents must be mappings without `sops` metadata.
pub fn encrypt(docs: &[Value], opts: &EncryptOptions) -> Result<Vec<Value>> {
    if opts.recipients.is_empty() {
        return Err(Error::Encrypt("no recipients".into()));
    }
    let mut rules = opts.rules.clone();
    let r = &rules;
    if r.unencrypted_suffix.is_none()
        && r.encrypted_suffix.is_none()
        && r.unencrypted_regex.is_none()
        && r.encrypted_regex.is_none()
    {
        rules.unencrypted_suffix = Some("_unencrypted".into());
    }
    let m = rules.matcher()?;
    let dk: DataKey = rand::random();
    let mut hash = new_mac(&rules);
    let mut out = Vec::with_capacity(docs.len());
    for doc in docs {
        if !doc.is_object() || crate::is_sops(doc) {
            return Err(Error::Encrypt("each document must be a mapping without sops metadata".into()));
        }
        let mut d = doc.clone();
        walk(&mut d, &mut Vec::new(), &mut |v, path| {
            let enc = m.encrypted(path);
            if !rules.mac_only_encrypted || enc {
                hash.update(cipher::leaf_bytes(v).unwrap_or_default());
            }
            if enc {
                *v = cipher::encrypt_value(&dk, v, &path_string(path))?;
            }
            Ok(())
        })?;
        out.push(d);
    }
    let lastmodified = opts
        .lastmodified
        .clone()
        .unwrap_or_else(|| jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
    let mac =
        cipher::seal(&dk, hex::encode_upper(hash.finalize().as_slice()).as_bytes(), &lastmodified, "str");
    let keys = opts.recipients.iter().map(|r| age_wrap(r, &dk)).collect::<Result<Vec<_>>>()?;
    let meta = to_value(&keys, &lastmodified, &mac, &rules);
    for d in &mut out {
        if let Value::Object(map) = d {
            map.insert(SOPS_KEY.into(), meta.clone());
        }
    }
    Ok(out)
}
