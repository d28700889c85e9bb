//! The one error type of convoy-sources.

use std::path::Path;
use std::time::Duration;

/// Everything that can go wrong while fetching, rendering or storing.
///
/// Messages never hold secrets: URLs are redacted and credential values are
/// scrubbed from transport errors before they get here.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Packing or checking the artifact failed.
    #[error(transparent)]
    Artifact(#[from] convoy_artifact::Error),
    /// No artifact with this digest in the store.
    #[error("no artifact {0} in the store")]
    ArtifactNotFound(String),
    /// A stored artifact does not match its digest.
    #[error("{path}: content does not match {digest}")]
    Corrupt {
        /// The file.
        path: String,
        /// The digest it should have.
        digest: String,
    },
    /// Talking to the git server failed (network, protocol, server error).
    #[error("fetch {url}: {message}")]
    Fetch {
        /// The redacted URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The server refused our credentials, or wanted some we do not have.
    #[error("fetch {url}: authentication failed: {message}")]
    Auth {
        /// The redacted URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The ref does not exist on the remote (or no tag matches the range).
    #[error("fetch {url}: {reference} not found")]
    RefNotFound {
        /// The redacted URL.
        url: String,
        /// The ref, for display.
        reference: String,
    },
    /// A fetch or build took longer than its timeout.
    #[error("{what} timed out after {}", humantime::format_duration(*after))]
    Timeout {
        /// What timed out ("fetch https://...", "kustomize build").
        what: String,
        /// The timeout.
        after: Duration,
    },
    /// The bundle path is not a directory at that revision.
    #[error("path {path:?} not found at {revision}")]
    PathNotFound {
        /// The bundle path.
        path: String,
        /// The revision.
        revision: String,
    },
    /// kustomize failed.
    #[error("kustomize: {0}")]
    Kustomize(String),
    /// Reading a credential file failed (the file name is not secret; its content never appears).
    #[error("credentials: {0}")]
    Credentials(String),
    /// The commit signature did not verify.
    #[error("commit verification: {0}")]
    Verification(String),
    /// No GitSource with this name.
    #[error("no GitSource named {0:?}")]
    UnknownSource(String),
    /// The source is suspended.
    #[error("GitSource {0:?} is suspended")]
    Suspended(String),
    /// A setting is invalid.
    #[error("config: {0}")]
    Config(String),
    /// Creating or reading a local working repository failed.
    #[error("git repository {path}: {message}")]
    LocalRepo {
        /// The repository's directory.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The pipeline has shut down.
    #[error("the source pipeline has shut down")]
    Shutdown,
    /// A downloaded chart does not match the digest its repository's index gives.
    #[error("{url}: the chart's digest is {actual}, the index says {expected}: refused")]
    DigestMismatch {
        /// The redacted download URL.
        url: String,
        /// The digest the index gives.
        expected: String,
        /// The digest of the downloaded bytes.
        actual: String,
    },
    /// A chart dependency listed in `Chart.yaml` (not vendored in `charts/`)
    /// could not be fetched or checked.
    #[error("chart dependency {name} version {version:?} from {repository}: {source}")]
    ChartDependency {
        /// The dependency's chart name.
        name: String,
        /// Its version constraint.
        version: String,
        /// Its repository (redacted).
        repository: String,
        /// Why it could not be fetched.
        #[source]
        source: Box<Error>,
    },
    /// Rendering a Helm chart failed (or Helm's engine is not available).
    #[error("helm: {0}")]
    Helm(#[from] convoy_helm::Error),
}

impl Error {
    /// An I/O error about `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().display().to_string(), source }
    }

    /// A short CamelCase reason for conditions and build errors.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Io { .. } => "IOError",
            Error::Artifact(a) => a.reason(),
            Error::ArtifactNotFound(_) | Error::Corrupt { .. } => "ArtifactStoreError",
            Error::Fetch { .. } => "FetchFailed",
            Error::Auth { .. } => "AuthenticationFailed",
            Error::RefNotFound { .. } => "RefNotFound",
            Error::Timeout { .. } => "Timeout",
            Error::PathNotFound { .. } => "PathNotFound",
            Error::Kustomize(_) => "KustomizeFailed",
            Error::Credentials(_) => "CredentialsUnavailable",
            Error::Verification(_) => "VerificationFailed",
            Error::UnknownSource(_) => "NotFound",
            Error::Suspended(_) => "Suspended",
            Error::Config(_) => "InvalidConfig",
            Error::LocalRepo { .. } => "GitRepositoryError",
            Error::Shutdown => "Shutdown",
            Error::DigestMismatch { .. } => "DigestMismatch",
            Error::ChartDependency { .. } => "ChartDependencyFailed",
            Error::Helm(h) => h.reason(),
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
