//! The `sops:` metadata of a document: master keys (age now; KMS, PGP and
//! Vault entries are read so errors can name them), `lastmodified`, `mac`,
//! and the rules that say which values are encrypted.

use regex::Regex;
use serde_json::{Map, Value};

use crate::{Error, Result};

/// The top-level key SOPS stores its metadata under.
pub const SOPS_KEY: &str = "sops";

/// Which backend protects a copy of the data key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// An age X25519 recipient (`age1…`).
    Age,
    /// AWS KMS.
    AwsKms,
    /// GCP KMS.
    GcpKms,
    /// Azure Key Vault.
    AzureKv,
    /// HashiCorp Vault transit.
    HcVault,
    /// OpenPGP.
    Pgp,
}

impl KeyKind {
    fn field(self) -> &'static str {
        match self {
            KeyKind::Age => "age",
            KeyKind::AwsKms => "kms",
            KeyKind::GcpKms => "gcp_kms",
            KeyKind::AzureKv => "azure_kv",
            KeyKind::HcVault => "hc_vault",
            KeyKind::Pgp => "pgp",
        }
    }
    const ALL: [KeyKind; 6] =
        [KeyKind::Age, KeyKind::AwsKms, KeyKind::GcpKms, KeyKind::AzureKv, KeyKind::HcVault, KeyKind::Pgp];
}

/// One master key entry: a copy of the data key, encrypted for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterKey {
    /// The backend.
    pub kind: KeyKind,
    /// Who can open it: the age recipient, the KMS ARN / resource id, the
    /// PGP fingerprint, the Vault key.
    pub id: String,
    /// The encrypted data key as SOPS stores it (armored age file, base64 KMS
    /// ciphertext...).
    pub enc: String,
}

impl MasterKey {
    /// `age:age1…`, `kms:arn:…`: how errors name it.
    pub fn label(&self) -> String {
        match self.kind {
            KeyKind::Age => self.id.clone(),
            k => format!("{}:{}", k.field(), self.id),
        }
    }
}

/// Which values of the tree are encrypted. Mirrors SOPS's `shouldBeEncrypted`.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Values under a key ending with this stay plaintext.
    pub unencrypted_suffix: Option<String>,
    /// Only values under a key ending with this are encrypted.
    pub encrypted_suffix: Option<String>,
    /// Values under a key matching this stay plaintext.
    pub unencrypted_regex: Option<String>,
    /// Only values under a key matching this are encrypted.
    pub encrypted_regex: Option<String>,
    /// The MAC covers only encrypted values.
    pub mac_only_encrypted: bool,
}

/// Compiled [`Rules`].
pub(crate) struct Matcher {
    unencrypted_suffix: Option<String>,
    encrypted_suffix: Option<String>,
    unencrypted_regex: Option<Regex>,
    encrypted_regex: Option<Regex>,
}

impl Rules {
    pub(crate) fn matcher(&self) -> Result<Matcher> {
        let re = |field: &'static str, s: &Option<String>| -> Result<Option<Regex>> {
            s.as_deref().map(|r| Regex::new(r).map_err(|source| Error::Regex { field, source })).transpose()
        };
        Ok(Matcher {
            unencrypted_suffix: self.unencrypted_suffix.clone(),
            encrypted_suffix: self.encrypted_suffix.clone(),
            unencrypted_regex: re("unencrypted_regex", &self.unencrypted_regex)?,
            encrypted_regex: re("encrypted_regex", &self.encrypted_regex)?,
        })
    }
}

impl Matcher {
    /// Whether the value at `path` (the keys from the root; list positions
    /// add nothing) is encrypted.
    pub(crate) fn encrypted(&self, path: &[String]) -> bool {
        let mut enc = true;
        if let Some(s) = &self.unencrypted_suffix
            && path.iter().any(|k| k.ends_with(s.as_str()))
        {
            enc = false;
        }
        if let Some(s) = &self.encrypted_suffix {
            enc = path.iter().any(|k| k.ends_with(s.as_str()));
        }
        if let Some(r) = &self.unencrypted_regex
            && path.iter().any(|k| r.is_match(k))
        {
            enc = false;
        }
        if let Some(r) = &self.encrypted_regex {
            enc = path.iter().any(|k| r.is_match(k));
        }
        enc
    }
}

/// The parsed `sops:` metadata of a document.
#[derive(Debug, Clone)]
pub struct Metadata {
    /// Every copy of the data key (one key group).
    pub keys: Vec<MasterKey>,
    /// `lastmodified`, exactly as stored: the additional data of the MAC.
    pub lastmodified: String,
    /// The encrypted MAC (`ENC[...]`).
    pub mac: String,
    /// The encryption rules.
    pub rules: Rules,
    /// The SOPS version that wrote the file.
    pub version: Option<String>,
}

impl Metadata {
    /// The labels of every master key (for error messages and status).
    pub fn recipients(&self) -> Vec<String> {
        self.keys.iter().map(MasterKey::label).collect()
    }
}

/// Whether a document carries SOPS metadata (a top-level `sops` mapping).
pub fn is_sops(doc: &Value) -> bool {
    doc.get(SOPS_KEY).is_some_and(Value::is_object)
}

fn opt_str(m: &Map<String, Value>, k: &str) -> Result<Option<String>> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Error::Metadata(format!("{k} must be a string"))),
    }
}

fn keys_of(group: &Map<String, Value>, out: &mut Vec<MasterKey>) -> Result<()> {
    for kind in KeyKind::ALL {
        let entries = match group.get(kind.field()) {
            None | Some(Value::Null) => continue,
            Some(Value::Array(a)) => a,
            Some(_) => return Err(Error::Metadata(format!("{} must be a list", kind.field()))),
        };
        for (i, e) in entries.iter().enumerate() {
            let e = e
                .as_object()
                .ok_or_else(|| Error::Metadata(format!("{}[{i}] must be a mapping", kind.field())))?;
            let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
            let (id, enc) = match kind {
                KeyKind::Age => (s("recipient"), s("enc")),
                KeyKind::AwsKms => (s("arn"), s("enc")),
                KeyKind::GcpKms => (s("resource_id"), s("enc")),
                KeyKind::AzureKv => (format!("{}/keys/{}", s("vault_url"), s("name")), s("enc")),
                KeyKind::HcVault => (
                    format!("{}/v1/{}/keys/{}", s("vault_address"), s("engine_path"), s("key_name")),
                    s("enc"),
                ),
                KeyKind::Pgp => (s("fp"), s("enc")),
            };
            if id.is_empty() || enc.is_empty() {
                return Err(Error::Metadata(format!("{}[{i}] needs its key id and enc", kind.field())));
            }
            if kind == KeyKind::Age && !enc.contains("-----BEGIN AGE ENCRYPTED FILE-----") {
                return Err(Error::Metadata(format!("age[{i}].enc is not an armored age file")));
            }
            out.push(MasterKey { kind, id, enc });
        }
    }
    Ok(())
}

/// Read and check the `sops:` metadata of a document.
pub fn metadata(doc: &Value) -> Result<Metadata> {
    let m = doc
        .get(SOPS_KEY)
        .and_then(Value::as_object)
        .ok_or_else(|| Error::Metadata("no top-level sops mapping".into()))?;
    let lastmodified =
        opt_str(m, "lastmodified")?.ok_or_else(|| Error::Metadata("lastmodified is missing".into()))?;
    if !looks_rfc3339(&lastmodified) {
        return Err(Error::Metadata("lastmodified is not an RFC 3339 time".into()));
    }
    let mac = opt_str(m, "mac")?.ok_or_else(|| Error::Metadata("mac is missing".into()))?;
    crate::cipher::parse(&mac).map_err(|e| Error::Metadata(format!("mac: {e}")))?;
    let mut keys = Vec::new();
    keys_of(m, &mut keys)?;
    if let Some(groups) = m.get("key_groups").filter(|v| !v.is_null()) {
        let groups = groups.as_array().ok_or_else(|| Error::Metadata("key_groups must be a list".into()))?;
        if groups.len() > 1 {
            return Err(Error::Unsupported(format!(
                "{} key groups (Shamir secret sharing); use one group",
                groups.len()
            )));
        }
        for g in groups {
            let g = g.as_object().ok_or_else(|| Error::Metadata("a key group must be a mapping".into()))?;
            keys_of(g, &mut keys)?;
        }
    }
    if keys.is_empty() {
        return Err(Error::Metadata("no master keys (age, kms, pgp...)".into()));
    }
    for k in ["unencrypted_comment_regex", "encrypted_comment_regex"] {
        if opt_str(m, k)?.is_some() {
            return Err(Error::Unsupported(format!("{k} (comment-based rules)")));
        }
    }
    let rules = Rules {
        unencrypted_suffix: opt_str(m, "unencrypted_suffix")?,
        encrypted_suffix: opt_str(m, "encrypted_suffix")?,
        unencrypted_regex: opt_str(m, "unencrypted_regex")?,
        encrypted_regex: opt_str(m, "encrypted_regex")?,
        mac_only_encrypted: match m.get("mac_only_encrypted") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(Error::Metadata("mac_only_encrypted must be a boolean".into())),
        },
    };
    rules.matcher()?;
    Ok(Metadata { keys, lastmodified, mac, rules, version: opt_str(m, "version")? })
}

/// `YYYY-MM-DDTHH:MM:SS` followed by optional fraction and a zone.
fn looks_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && matches!(b[10], b'T' | b't')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && (s.ends_with('Z') || s.ends_with('z') || s[19..].contains(['+', '-']))
}

/// The SOPS metadata mapping written by [`crate::encrypt`].
pub(crate) fn to_value(keys: &[MasterKey], lastmodified: &str, mac: &str, rules: &Rules) -> Value {
    let mut m = Map::new();
    let age: Vec<Value> = keys
        .iter()
        .filter(|k| k.kind == KeyKind::Age)
        .map(|k| serde_json::json!({"recipient": k.id, "enc": k.enc}))
        .collect();
    m.insert("age".into(), Value::Array(age));
    m.insert("lastmodified".into(), lastmodified.into());
    m.insert("mac".into(), mac.into());
    let mut put = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            m.insert(k.into(), v.clone().into());
        }
    };
    put("unencrypted_suffix", &rules.unencrypted_suffix);
    put("encrypted_suffix", &rules.encrypted_suffix);
    put("unencrypted_regex", &rules.unencrypted_regex);
    put("encrypted_regex", &rules.encrypted_regex);
    if rules.mac_only_encrypted {
        m.insert("mac_only_encrypted".into(), true.into());
    }
    m.insert("version".into(), crate::FORMAT_VERSION.into());
    Value::Object(m)
}
