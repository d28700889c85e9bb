//! Key providers: who can open a SOPS data key. [`AgeKeys`] (X25519
//! identities) is the one provider today; a cloud KMS provider implements
//! [`KeyProvider`] for its [`KeyKind`] the same way, without touching the
//! tree walk or the MAC check.

// SOPS 3.11 reads and writes classic X25519 age recipients (`age1…`); age
// 0.13 marks them deprecated in favour of post-quantum ones SOPS does not
// support yet, so they are used on purpose here.
#![allow(deprecated)]

use std::str::FromStr;

use age::secrecy::ExposeSecret;

use crate::metadata::{KeyKind, MasterKey};
use crate::{Error, Result};

/// A SOPS data key (AES-256).
pub type DataKey = [u8; 32];

/// Something that can recover a file's data key from one of its master keys.
pub trait KeyProvider: Send + Sync {
    /// Open `key`'s copy of the data key. `Ok(None)` when this provider holds
    /// no key for it (another provider, or no one, may); an error when it
    /// holds the key but the copy does not open.
    fn data_key(&self, key: &MasterKey) -> Result<Option<DataKey>>;
}

/// Providers tried in order; the first that opens a copy wins.
impl KeyProvider for [&dyn KeyProvider] {
    fn data_key(&self, key: &MasterKey) -> Result<Option<DataKey>> {
        for p in self {
            if let Some(k) = p.data_key(key)? {
                return Ok(Some(k));
            }
        }
        Ok(None)
    }
}

/// A set of age X25519 identities (private keys).
#[derive(Default)]
pub struct AgeKeys {
    identities: Vec<age::x25519::Identity>,
}

impl std::fmt::Debug for AgeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private keys.
        f.debug_struct("AgeKeys").field("recipients", &self.recipients()).finish()
    }
}

impl AgeKeys {
    /// No identities.
    pub fn new() -> Self {
        Self::default()
    }

    /// A fresh identity.
    pub fn generate() -> Self {
        Self { identities: vec![age::x25519::Identity::generate()] }
    }

    /// Parse an age identity file (`age-keygen` output, `SOPS_AGE_KEY`):
    /// `AGE-SECRET-KEY-1…` lines; `#` comments and blank lines are skipped.
    pub fn parse(text: &str) -> Result<Self> {
        let mut identities = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if !line.starts_with("AGE-SECRET-KEY-1") {
                return Err(Error::Key(format!(
                    "line {}: not an age X25519 identity (plugin and SSH identities are not supported)",
                    i + 1
                )));
            }
            let id = age::x25519::Identity::from_str(line)
                .map_err(|_| Error::Key(format!("line {}: invalid age identity", i + 1)))?;
            identities.push(id);
        }
        Ok(Self { identities })
    }

    /// Add every identity of `other`.
    pub fn extend(&mut self, other: AgeKeys) {
        for id in other.identities {
            if !self.recipients().contains(&id.to_public().to_string()) {
                self.identities.push(id);
            }
        }
    }

    /// No identities at all.
    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }

    /// The public recipients (`age1…`), in order.
    pub fn recipients(&self) -> Vec<String> {
        self.identities.iter().map(|i| i.to_public().to_string()).collect()
    }

    /// The identity file text (secret: for the agent's key Secret only).
    pub fn to_identity_file(&self) -> String {
        let mut out = String::new();
        for id in &self.identities {
            out.push_str(&format!("# public key: {}\n", id.to_public()));
            out.push_str(id.to_string().expose_secret());
            out.push('\n');
        }
        out
    }
}

impl KeyProvider for AgeKeys {
    fn data_key(&self, key: &MasterKey) -> Result<Option<DataKey>> {
        if key.kind != KeyKind::Age {
            return Ok(None);
        }
        // The identity whose public key is the stated recipient first; any
        // other after (the stanza, not the label, is what counts).
        let mut order: Vec<&age::x25519::Identity> = self.identities.iter().collect();
        order.sort_by_key(|i| i.to_public().to_string() != key.id);
        for id in order {
            match age::decrypt(id, key.enc.as_bytes()) {
                Ok(bytes) => {
                    let dk: DataKey = bytes.as_slice().try_into().map_err(|_| Error::DataKey {
                        recipient: key.id.clone(),
                        message: format!("the data key is {} bytes, not 32", bytes.len()),
                    })?;
                    return Ok(Some(dk));
                }
                Err(age::DecryptError::NoMatchingKeys) => continue,
                Err(e) => return Err(Error::DataKey { recipient: key.id.clone(), message: e.to_string() }),
            }
        }
        Ok(None)
    }
}

/// Encrypt a data key for an age recipient (armored, as SOPS stores it).
pub(crate) fn age_wrap(recipient: &str, dk: &DataKey) -> Result<MasterKey> {
    let r = age::x25519::Recipient::from_str(recipient)
        .map_err(|e| Error::Key(format!("recipient {recipient:?}: {e}")))?;
    let enc = age::encrypt_and_armor(&r, dk).map_err(|e| Error::Encrypt(e.to_string()))?;
    Ok(MasterKey { kind: KeyKind::Age, id: r.to_string(), enc })
}

/// Check that a string is an age X25519 recipient.
pub fn parse_recipient(s: &str) -> Result<String> {
    age::x25519::Recipient::from_str(s.trim())
        .map(|r| r.to_string())
        .map_err(|e| Error::Key(format!("recipient {s:?}: {e}")))
}
