//! The SOPS file format (getsops/sops 3.x), for Convoy's agents and hub:
//! decrypt-and-verify with age identities, the metadata check the hub runs
//! without keys, and encrypt (for `convoy dev` and tests).
//!
//! A SOPS file is a tree (one or more YAML documents, or one JSON value) with
//! a `sops:` mapping in each document. Values selected by the rules are
//! `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]` strings, encrypted with one
//! 32-byte data key and the value's path (`key:key:`) as additional data. The
//! data key is stored once per master key (age recipient, KMS key...). The
//! MAC is SHA-512 over every plaintext value in walk order (only encrypted
//! ones with `mac_only_encrypted`), upper-case hex, itself encrypted with the
//! data key and `lastmodified` as additional data. All documents of a file
//! share one MAC.
//!
//! Pure: no I/O, no logging. Errors never contain plaintext.

mod cipher;
mod error;
mod keys;
mod metadata;
mod tree;

pub use error::{Error, Result};
pub use keys::{AgeKeys, DataKey, KeyProvider, parse_recipient};
pub use metadata::{KeyKind, MasterKey, Metadata, Rules, SOPS_KEY, is_sops, metadata};
pub use tree::{EncryptOptions, check, decrypt, encrypt};

/// The SOPS format version our encrypt writes (the sops release whose
/// format it follows).
pub const FORMAT_VERSION: &str = "3.11.0";
