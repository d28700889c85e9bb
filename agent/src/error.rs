//! The one error type of convoy-agent.

use std::fmt;

/// Everything that can go wrong in the agent library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag, env var or file the agent was given is not usable.
    #[error("configuration: {0}")]
    Config(String),

    /// Verification refused a bundle: nothing is applied.
    #[error("{reason}: {message}")]
    Verification {
        /// CamelCase reason: SignatureInvalid, DigestMismatch, BundleMismatch,
        /// GenerationRollback, GenerationTampered, ArtifactInvalid, ...
        reason: &'static str,
        /// What exactly failed.
        message: String,
    },

    /// A manifest in the bundle is not usable; the bundle is refused whole.
    #[error("{file}: document {index}: {message}")]
    Manifest {
        /// The file inside the artifact.
        file: String,
        /// The 0-based document index in the file.
        index: usize,
        /// Why.
        message: String,
    },

    /// A Kubernetes API call failed.
    #[error("{context}: {}", KubeMsg(.source))]
    Kube {
        /// What we were doing (`apply Deployment/ns/x`).
        context: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },

    /// Several objects failed (the message lists them).
    #[error("{message}")]
    Apply {
        /// Every failure, `; `-separated.
        message: String,
        /// Whether every failure was transient.
        transient: bool,
    },

    /// Server-side apply found fields owned by other managers.
    #[error("{}", Conflicts(.0))]
    Conflict(Vec<FieldConflict>),

    /// Waiting for something timed out.
    #[error("timed out: {0}")]
    Timeout(String),

    /// The hub refused or failed a call.
    #[error("hub: {code}: {message}")]
    Hub {
        /// The gRPC status code name.
        code: String,
        /// The status message.
        message: String,
    },

    /// The gRPC transport could not connect.
    #[error("hub transport: {0}")]
    Transport(String),

    /// Certificates, keys or TLS setup.
    #[error("tls: {0}")]
    Tls(String),

    /// The on-disk state store.
    #[error("state store: {0}")]
    Store(String),

    /// Local file I/O.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// An artifact error from convoy-artifact (unpack, limits, manifests).
    #[error("{message}")]
    Artifact {
        /// convoy-artifact's CamelCase reason (LimitExceeded, InvalidPath, ...).
        reason: &'static str,
        /// Its message.
        message: String,
    },

    /// The operation was cancelled by shutdown.
    #[error("cancelled")]
    Cancelled,

    /// A SOPS file could not be decrypted or verified (no key, MAC
    /// mismatch, malformed metadata); the bundle is refused whole.
    #[error("{file}: SOPS: {message}")]
    Decryption {
        /// The file inside the artifact.
        file: String,
        /// Why (names recipients and paths, never plaintext).
        message: String,
    },
}

/// A field owned by another field manager, from a 409 apply response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldConflict {
    /// The object, `Kind/namespace/name`.
    pub object: String,
    /// The field path, `.spec.replicas`.
    pub field: String,
    /// The API server's message, naming the other manager.
    pub message: String,
}

struct KubeMsg<'a>(&'a kube::Error);

impl fmt::Display for KubeMsg<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            kube::Error::Api(s) => write!(f, "{} {}: {}", s.code, s.reason, s.message),
            e => {
                write!(f, "{e}")?;
                let mut src = std::error::Error::source(e);
                while let Some(s) = src {
                    write!(f, ": {s}")?;
                    src = s.source();
                }
                Ok(())
            }
        }
    }
}

struct Conflicts<'a>(&'a [FieldConflict]);

impl fmt::Display for Conflicts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field conflicts with other managers (set force to take ownership):")?;
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ";")?;
            }
            write!(f, " {} {} ({})", c.object, c.field, c.message)?;
        }
        Ok(())
    }
}

impl Error {
    /// Wrap a kube error with what we were doing.
    pub fn kube(context: impl Into<String>, source: kube::Error) -> Self {
        Error::Kube { context: context.into(), source }
    }

    /// Wrap an I/O error with what we were doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }

    /// A verification failure.
    pub fn verification(reason: &'static str, message: impl Into<String>) -> Self {
        Error::Verification { reason, message: message.into() }
    }

    /// The CamelCase reason for status conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Config(_) => "ConfigInvalid",
            Error::Verification { reason, .. } => reason,
            Error::Manifest { .. } => "ManifestInvalid",
            Error::Kube { .. } | Error::Apply { .. } => "ApplyFailed",
            Error::Conflict(_) => "FieldConflict",
            Error::Timeout(_) => "Timeout",
            Error::Hub { .. } | Error::Transport(_) => "HubUnavailable",
            Error::Tls(_) => "TlsError",
            Error::Store(_) | Error::Io { .. } => "LocalStateError",
            Error::Artifact { reason, .. } => reason,
            Error::Cancelled => "Cancelled",
            Error::Decryption { .. } => "DecryptionFailed",
        }
    }

    /// Whether retrying later can succeed without a change to the bundle.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Kube { source, .. } => crate::kubeapi::is_transient(source),
            Error::Apply { transient, .. } => *transient,
            Error::Hub { code, .. } => code != "PermissionDenied" && code != "InvalidArgument",
            Error::Transport(_) | Error::Timeout(_) | Error::Io { .. } | Error::Store(_) => true,
            _ => false,
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<redb::Error> for Error {
    fn from(e: redb::Error) -> Self {
        Error::Store(e.to_string())
    }
}

macro_rules! store_err {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Store(e.to_string())
            }
        }
    )*};
}
store_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Error::Hub { code: format!("{:?}", s.code()), message: s.message().to_string() }
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(e: tonic::transport::Error) -> Self {
        use std::error::Error as _;
        let mut msg = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        Error::Transport(msg)
    }
}
