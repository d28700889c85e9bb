//! The one error type of convoy-hub.

use std::path::PathBuf;

/// Everything that can go wrong in the hub library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The hub or fleet configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// A domain error from convoy-core (YAML, validation, names, selectors).
    #[error(transparent)]
    Core(#[from] convoy_core::Error),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A socket or other I/O operation without a file failed.
    #[error("{context}: {source}")]
    Net {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The state store failed.
    #[error("store: {0}")]
    Store(String),
    /// Certificates, keys or TLS set-up failed.
    #[error("tls: {0}")]
    Tls(String),
    /// Loading, generating or saving a signing key failed.
    #[error("signing: {0}")]
    Signing(#[source] convoy_artifact::Error),
    /// A request was refused by domain rules (bad token, unknown cluster, ...).
    #[error("{0}")]
    Rejected(#[from] crate::domain::Rejection),
    /// The source pipeline failed or refused an action.
    #[error("sources: {0}")]
    Sources(#[source] convoy_sources::Error),
    /// The hub is shutting down.
    #[error("the hub is shutting down")]
    ShuttingDown,
    /// An operator's rollout command was refused; the gRPC edge maps the
    /// reason's [`kind`](crate::domain::rollout::Refusal::kind) to a code.
    #[error("rollout of {bundle:?}: {command} refused: {reason}")]
    RolloutRefused {
        /// The bundle.
        bundle: String,
        /// The command's verb (`pause`, ...).
        command: &'static str,
        /// Why.
        reason: crate::domain::rollout::Refusal,
    },
    /// A rollout record was not written: another hub replica wrote a newer
    /// version after this replica read it (the version fence of the etcd store).
    #[error(
        "the rollout of {bundle} changed on another hub replica (stored version {stored}, this \
         replica's decision was made on version {seen}); try again"
    )]
    RolloutChanged {
        /// The bundle.
        bundle: String,
        /// The stored record's version.
        stored: u64,
        /// The version this replica decided on.
        seen: u64,
    },
    /// This hub replica lost its etcd lease (etcd unreachable or the lease
    /// expired): it writes nothing until etcd grants it a new one.
    #[error(
        "etcd: hub replica {replica} lost its lease (etcd unreachable or the lease expired); it writes \
         nothing until etcd grants it a new one"
    )]
    LeaseLost {
        /// The replica's id.
        replica: String,
    },
}

impl Error {
    /// Wrap an I/O error with the file it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

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

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
