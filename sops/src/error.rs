//! The one error type of convoy-sops. Messages never contain plaintext values:
//! they name paths, recipients and metadata fields only.

/// Everything that can go wrong reading, checking, decrypting or encrypting a
/// SOPS document.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `sops` metadata is missing a field or has a malformed one.
    #[error("malformed SOPS metadata: {0}")]
    Metadata(String),
    /// No key provider holds a key for any of the file's master keys.
    #[error("no key to decrypt it: encrypted for {}; this agent holds none of their keys", recipients_text(.recipients))]
    NoKey {
        /// The master keys the file was encrypted for (age recipients, KMS ids...).
        recipients: Vec<String>,
    },
    /// A key matched but could not open the data key envelope.
    #[error("could not decrypt the data key for {recipient}: {message}")]
    DataKey {
        /// The master key whose envelope failed.
        recipient: String,
        /// Why.
        message: String,
    },
    /// A value failed AES-GCM authentication: its ciphertext, IV, tag or path
    /// was changed after encryption.
    #[error("MAC mismatch: the value at {path} fails authentication (tampered ciphertext)")]
    ValueTampered {
        /// The SOPS path of the value (`stringData:password:`).
        path: String,
    },
    /// The MAC over all values does not verify: a value was changed, added,
    /// removed or reordered after encryption.
    #[error("MAC mismatch: the document's values do not match the SOPS MAC (tampered file)")]
    MacMismatch,
    /// A value is not in the `ENC[AES256_GCM,...]` format, or has an unknown type.
    #[error("malformed encrypted value at {path}: {message}")]
    Value {
        /// The SOPS path of the value.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// A feature of the SOPS format that is not supported here.
    #[error("unsupported SOPS feature: {0}")]
    Unsupported(String),
    /// An age key or recipient could not be parsed or used.
    #[error("age key: {0}")]
    Key(String),
    /// Encryption failed.
    #[error("encrypt: {0}")]
    Encrypt(String),
    /// A regular expression in the metadata does not compile.
    #[error("invalid {field} in SOPS metadata")]
    Regex {
        /// The metadata field.
        field: &'static str,
        /// The regex error.
        #[source]
        source: regex::Error,
    },
}

fn recipients_text(r: &[String]) -> String {
    if r.is_empty() { "no recipients".into() } else { r.join(", ") }
}

impl Error {
    /// A short, stable reason code for status conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::ValueTampered { .. } | Error::MacMismatch => "MACMismatch",
            Error::NoKey { .. } | Error::DataKey { .. } => "NoDecryptionKey",
            Error::Metadata(_) | Error::Value { .. } | Error::Regex { .. } => "MalformedSops",
            Error::Unsupported(_) => "UnsupportedSops",
            Error::Key(_) | Error::Encrypt(_) => "KeyError",
        }
    }
}

/// The result type of convoy-sops.
pub type Result<T, E = Error> = std::result::Result<T, E>;
