//! The one error type of convoy-artifact.

use std::fmt;

/// Everything that can go wrong while packing, signing, verifying or unpacking.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file (or directory) involved.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A configured limit was exceeded.
    #[error("{}", limit_message(what, *limit, *actual, path.as_deref()))]
    Limit {
        /// Which limit: "artifact size", "file count", "file size".
        what: &'static str,
        /// The limit.
        limit: u64,
        /// The value that exceeded it (a lower bound when reading stopped early).
        actual: u64,
        /// The file concerned, for per-file limits.
        path: Option<String>,
    },
    /// A path is absolute, contains `..`, is not UTF-8, or otherwise leaves the tree.
    #[error("{path}: {message}")]
    Path {
        /// The offending path as found.
        path: String,
        /// Why it is refused.
        message: String,
    },
    /// A symlink that cannot be packed (dangling, leaving the tree, too many hops).
    #[error("{path}: symlink: {message}")]
    Symlink {
        /// The link's path in the tree.
        path: String,
        /// Why it is refused.
        message: String,
    },
    /// A manifest did not parse or is not a Kubernetes object.
    #[error("{file}: document {index}{}: {message}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Manifest {
        /// The file inside the bundle.
        file: String,
        /// The 0-based document index in the file.
        index: usize,
        /// The 1-based line in the file, when known.
        line: Option<u32>,
        /// What is wrong.
        message: String,
    },
    /// An ignore rule did not parse.
    #[error("ignore rules {origin}: {message}")]
    Ignore {
        /// Where the rule came from (a `.convoyignore` path or "config").
        origin: String,
        /// What the matcher said.
        message: String,
    },
    /// A tar archive is malformed or holds something an artifact may not hold.
    #[error("archive: {0}")]
    Archive(String),
    /// A statement is malformed.
    #[error("statement: {0}")]
    Statement(String),
    /// A key could not be generated, loaded or encoded.
    #[error("key: {0}")]
    Key(String),
    /// Verification failed; says which check.
    #[error("verification failed: {0}")]
    Verify(VerifyFailure),
    /// A rendering step outside this crate failed (used by callers that feed
    /// rendered output, e.g. kustomize, through [`crate::Packer`]).
    #[error("{0}")]
    Other(String),
}

fn limit_message(what: &str, limit: u64, actual: u64, path: Option<&str>) -> String {
    match path {
        Some(p) => format!("{p}: {what} {actual} exceeds the limit of {limit}"),
        None => format!("{what} {actual} exceeds the limit of {limit}"),
    }
}

/// Which check of [`crate::verify_bundle`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyFailure {
    /// No trusted key verifies the signature over the statement bytes.
    Signature {
        /// How many trusted keys were tried.
        keys_tried: usize,
    },
    /// The statement bytes are not a valid statement (after the signature held).
    Statement(String),
    /// The statement names another bundle.
    Bundle {
        /// The bundle the caller expected.
        expected: String,
        /// The bundle in the statement.
        actual: String,
    },
    /// The artifact's digest differs from the statement's.
    Digest {
        /// The digest in the statement.
        expected: String,
        /// The digest of the bytes.
        actual: String,
    },
    /// The artifact's size differs from the statement's.
    Size {
        /// The size in the statement.
        expected: u64,
        /// The size of the bytes.
        actual: u64,
    },
}

impl VerifyFailure {
    /// A short CamelCase reason for status conditions and events:
    /// `SignatureInvalid`, `StatementInvalid`, `BundleMismatch`,
    /// `DigestMismatch`, `SizeMismatch`.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyFailure::Signature { .. } => "SignatureInvalid",
            VerifyFailure::Statement(_) => "StatementInvalid",
            VerifyFailure::Bundle { .. } => "BundleMismatch",
            VerifyFailure::Digest { .. } => "DigestMismatch",
            VerifyFailure::Size { .. } => "SizeMismatch",
        }
    }
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyFailure::Signature { keys_tried } => {
                write!(f, "signature: no trusted key verifies it ({keys_tried} tried)")
            }
            VerifyFailure::Statement(m) => write!(f, "statement: {m}"),
            VerifyFailure::Bundle { expected, actual } => {
                write!(f, "bundle: the statement is for {actual:?}, expected {expected:?}")
            }
            VerifyFailure::Digest { expected, actual } => {
                write!(f, "digest: the artifact is {actual}, the statement says {expected}")
            }
            VerifyFailure::Size { expected, actual } => {
                write!(f, "size: the artifact has {actual} bytes, the statement says {expected}")
            }
        }
    }
}

impl Error {
    /// An I/O error about `path`.
    pub fn io(path: impl fmt::Display, source: std::io::Error) -> Self {
        Error::Io { path: path.to_string(), source }
    }

    /// A short CamelCase reason for status conditions: `LimitExceeded`,
    /// `InvalidManifest`, `InvalidPath`, `VerificationFailed`, ...
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Io { .. } => "IOError",
            Error::Limit { .. } => "LimitExceeded",
            Error::Path { .. } | Error::Symlink { .. } => "InvalidPath",
            Error::Manifest { .. } => "InvalidManifest",
            Error::Ignore { .. } => "InvalidIgnoreRules",
            Error::Archive(_) => "InvalidArchive",
            Error::Statement(_) => "InvalidStatement",
            Error::Key(_) => "InvalidKey",
            Error::Verify(v) => v.reason(),
            Error::Other(_) => "BuildFailed",
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
