//! Deterministic bundle artifacts, signed statements and safe unpacking.
//!
//! One implementation for both ends of a signature: the hub and `convoy
//! build` pack and sign with it, the agent and `convoy verify` check and
//! unpack with it.
//!
//! # Packing
//!
//! An artifact is a gzipped tar of exactly the manifests the agent will
//! apply. Its digest is `sha256:<hex>` of the `.tar.gz` bytes, and the bytes
//! depend only on the packed paths and contents ([`pack`] module docs list
//! the fixed header fields; the gzip stream comes from a pinned `miniz_oxide`
//! at level 6 with a fixed header).
//!
//! - [`pack_tree`] walks a [`Tree`] (a directory on disk, [`FsTree`], or a git
//!   tree in convoy-sources, read blob by blob without a checkout) from a
//!   base directory. It packs `*.yaml`, `*.yml` and `*.json` files, skips
//!   everything else, and applies [`IgnoreRules`]: the [`DEFAULT_RULES`]
//!   (hidden files and directories, a few CI files), every `.convoyignore`
//!   in the tree (gitignore syntax, deeper files win), and rules from config.
//!   `.convoyignore` files are hidden, hence never packed, so a change to
//!   one that excludes nothing leaves the digest unchanged.
//! - [`pack_files`] packs `(path, bytes)` pairs (any order), [`Packer`] adds
//!   files one by one in sorted order (e.g. rendered kustomize output).
//! - Symlinks: see [`tree`]; in short, links named like manifests must
//!   resolve to a regular file inside the tree and are packed as that file;
//!   directory links are not followed.
//! - Every packed file is parsed (multi-document YAML, JSON, `v1/List`), and
//!   every object must have `apiVersion`, `kind` and `metadata.name`. Errors
//!   name the file, document and line ([`Error::Manifest`]). [`Limits`] bound
//!   the total size, file count and file size ([`Error::Limit`]).
//!
//! # Statements and signatures
//!
//! A [`Statement`] is canonical JSON binding bundle, source URL, revision,
//! artifact digest and size, and a per-bundle generation (format in
//! [`statement`]). [`SigningKey::sign`] makes an ECDSA P-256 / SHA-256 DER
//! signature over the exact bytes, so `openssl dgst -sha256 -verify
//! signing.pub -signature statement.sig statement.json` checks it too.
//! [`TrustedKeys`] holds several public keys for rotation.
//! [`verify_bundle`] checks signature, bundle name, digest and size, and
//! says which one failed ([`VerifyFailure`]).
//!
//! # Unpacking
//!
//! [`unpack`] reads an artifact into memory, refusing links, devices,
//! traversal and absolute paths, duplicates and anything over the limits;
//! [`load_manifests`] also parses every object.
//!
//! # The `convoy build` directory layout
//!
//! `artifact.tar.gz`, `statement.json` (the exact signed bytes) and
//! `statement.sig` (DER), named by [`ARTIFACT_FILE`], [`STATEMENT_FILE`] and
//! [`SIGNATURE_FILE`]; `convoy verify` and `convoy-agent apply` read it.

mod gzip;
pub mod keys;
pub mod manifest;
pub mod pack;
pub mod rules;
pub mod statement;
pub mod tree;
pub mod unpack;

mod error;

pub use error::{Error, Result, VerifyFailure};
pub use keys::{PublicKey, SigningKey, TrustedKeys, check_artifact, verify_bundle, verify_statement};
pub use manifest::{
    Manifest, check_object, for_each_in_document, for_each_manifest, for_each_manifest_within, is_list,
    parse_file, parse_file_within, parse_files,
};
pub use pack::{
    Limits, PackedArtifact, Packer, check_path, digest_of, is_valid_digest, pack_dir, pack_files,
    pack_selected, pack_tree,
};
pub use rules::{DEFAULT_RULES, IGNORE_FILE, IgnoreRules};
pub use statement::{Statement, StatementArtifact, StatementHelm, StatementSource};
pub use tree::{EntryKind, FsTree, SelectedFile, Selection, Tree, TreeEntry, select_files};
pub use unpack::{UnpackedFile, load_manifests, unpack};

/// The artifact's file name in a build directory.
pub const ARTIFACT_FILE: &str = "artifact.tar.gz";
/// The statement's file name in a build directory.
pub const STATEMENT_FILE: &str = "statement.json";
/// The signature's file name in a build directory.
pub const SIGNATURE_FILE: &str = "statement.sig";
/// The private key's file name written by `convoy keygen`.
pub const PRIVATE_KEY_FILE: &str = "signing.key";
/// The public key's file name written by `convoy keygen`.
pub const PUBLIC_KEY_FILE: &str = "signing.pub";
