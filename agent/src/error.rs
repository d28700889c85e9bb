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

    /// The API server refused a change to fields that cannot change (422
    /// Invalid, "field is immutable"). The bundle option `force` recreates
    /// the object instead.
    #[error("{}", Immutables(.0))]
    Immutable(Vec<ImmutableField>),

    /// Waiting for something timed out.
    #[error("timed out: {0}")]
    Timeout(String),

    /// The hub refused or failed a call.
    #[error("hub: {code}: {message}")]
    Hub {
        /// The gRPC status code.
        code: HubCode,
        /// The status message.
        message: String,
        /// The status as received.
        #[source]
        source: Box<tonic::Status>,
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

    /// The bundle touches what it may not (the agent's own objects, another
    /// bundle's objects, or what its tenancy rules exclude): nothing applied.
    #[error("{0}")]
    Policy(crate::policy::Violations),
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

/// A field the API server does not let change, from a 422 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImmutableField {
    /// The object, `Kind/namespace/name`.
    pub object: String,
    /// The field path, `spec.selector` (empty when the server named none).
    pub field: String,
    /// The API server's message.
    pub message: String,
}

struct Immutables<'a>(&'a [ImmutableField]);

impl fmt::Display for Immutables<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "immutable fields changed (set force to recreate the object):")?;
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ";")?;
            }
            if c.field.is_empty() {
                write!(f, " {} ({})", c.object, c.message)?;
            } else {
                write!(f, " {} {} ({})", c.object, c.field, c.message)?;
            }
        }
        Ok(())
    }
}

/// The gRPC status code of a hub answer (the agent's own copy, so that no
/// type of the transport leaks past the gRPC edge into decisions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HubCode {
    /// Not an error.
    Ok,
    /// The call was cancelled.
    Cancelled,
    /// Unknown error.
    Unknown,
    /// The request is invalid.
    InvalidArgument,
    /// The deadline passed.
    DeadlineExceeded,
    /// Not found.
    NotFound,
    /// Already exists.
    AlreadyExists,
    /// The caller may not do this (a revoked or unknown cluster).
    PermissionDenied,
    /// Out of some resource.
    ResourceExhausted,
    /// The system is not in the state the call needs.
    FailedPrecondition,
    /// Aborted.
    Aborted,
    /// Out of range.
    OutOfRange,
    /// Not implemented by the hub.
    Unimplemented,
    /// Internal error.
    Internal,
    /// The hub is unavailable.
    Unavailable,
    /// Data loss.
    DataLoss,
    /// No valid credentials.
    Unauthenticated,
}

impl From<tonic::Code> for HubCode {
    fn from(c: tonic::Code) -> Self {
        use tonic::Code as C;
        match c {
            C::Ok => HubCode::Ok,
            C::Cancelled => HubCode::Cancelled,
            C::Unknown => HubCode::Unknown,
            C::InvalidArgument => HubCode::InvalidArgument,
            C::DeadlineExceeded => HubCode::DeadlineExceeded,
            C::NotFound => HubCode::NotFound,
            C::AlreadyExists => HubCode::AlreadyExists,
            C::PermissionDenied => HubCode::PermissionDenied,
            C::ResourceExhausted => HubCode::ResourceExhausted,
            C::FailedPrecondition => HubCode::FailedPrecondition,
            C::Aborted => HubCode::Aborted,
            C::OutOfRange => HubCode::OutOfRange,
            C::Unimplemented => HubCode::Unimplemented,
            C::Internal => HubCode::Internal,
            C::Unavailable => HubCode::Unavailable,
            C::DataLoss => HubCode::DataLoss,
            C::Unauthenticated => HubCode::Unauthenticated,
        }
    }
}

impl fmt::Display for HubCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
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
            Error::Immutable(_) => "Immutable",
            Error::Timeout(_) => "Timeout",
            Error::Hub { .. } | Error::Transport(_) => "HubUnavailable",
            Error::Tls(_) => "TlsError",
            Error::Store(_) | Error::Io { .. } => "LocalStateError",
            Error::Artifact { reason, .. } => reason,
            Error::Cancelled => "Cancelled",
            Error::Policy(v) => v.reason(),
            Error::Decryption { .. } => "DecryptionFailed",
        }
    }

    /// Whether retrying later can succeed without a change to the bundle.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Kube { source, .. } => is_transient_kube(source),
            Error::Apply { transient, .. } => *transient,
            Error::Hub { code, .. } => !matches!(code, HubCode::PermissionDenied | HubCode::InvalidArgument),
            Error::Transport(_) | Error::Timeout(_) | Error::Io { .. } | Error::Store(_) => true,
            _ => false,
        }
    }
}

/// Whether a Kubernetes client error is worth retrying unchanged.
pub fn is_transient_kube(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code >= 500 || s.code == 429 || s.reason == "ServerTimeout",
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<redb::Error> for Error {
    fn from(e: redb::Error) -> Self {
        Error::Store(e.to_string())
    }
}

convoy_core::from_display!(
    Error::Store;
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Error::Hub { code: HubCode::from(s.code()), message: s.message().to_string(), source: Box::new(s) }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_codes_are_typed_and_classified() {
        let e = Error::from(tonic::Status::permission_denied("revoked"));
        assert!(matches!(&e, Error::Hub { code: HubCode::PermissionDenied, .. }));
        assert!(!e.is_transient());
        assert_eq!(e.to_string(), "hub: PermissionDenied: revoked");
        assert!(std::error::Error::source(&e).is_some(), "the status is kept as the source");
        assert!(!Error::from(tonic::Status::invalid_argument("x")).is_transient());
        assert!(Error::from(tonic::Status::unavailable("x")).is_transient());
        assert!(Error::from(tonic::Status::unauthenticated("x")).is_transient());
    }

    #[test]
    fn immutable_is_stalled_not_retried() {
        let e = Error::Immutable(vec![ImmutableField {
            object: "Deployment/apps/web".into(),
            field: "spec.selector".into(),
            message: "field is immutable".into(),
        }]);
        assert_eq!(e.reason(), "Immutable");
        assert!(!e.is_transient());
        assert!(e.to_string().contains("Deployment/apps/web spec.selector"), "{e}");
    }
}
