//! The one error type of convoy-core.

/// Everything that can go wrong while parsing or validating domain input.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// A YAML document did not parse.
    #[error("{file}: document {index}{}: {message}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Yaml {
        /// The file the text came from (as given by the caller).
        file: String,
        /// The 0-based document index in the file.
        index: usize,
        /// The 1-based line in the file, when known.
        line: Option<u32>,
        /// What the parser said.
        message: String,
    },
    /// A YAML budget (see [`crate::yaml::Budget`]) was exceeded.
    #[error("{file}: document {index}{}: {what} {actual} exceeds the limit of {limit}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Limit {
        /// The file the text came from.
        file: String,
        /// The 0-based document index in the file.
        index: usize,
        /// The 1-based line in the file, when known.
        line: Option<u32>,
        /// Which limit.
        what: &'static str,
        /// The limit.
        limit: u64,
        /// The value that passed it (a lower bound when the parser stopped early).
        actual: u64,
    },
    /// A document parsed but is not valid.
    #[error("{file}: {kind} {name:?}: {message}")]
    Invalid {
        /// The file the document came from.
        file: String,
        /// The document kind.
        kind: String,
        /// The document name (may be empty when missing).
        name: String,
        /// Why it is invalid.
        message: String,
    },
    /// A label selector did not parse.
    #[error("invalid label selector {selector:?}: {message}")]
    Selector {
        /// The selector text.
        selector: String,
        /// Why it is invalid.
        message: String,
    },
    /// A duration did not parse.
    #[error("invalid duration {value:?}: {message}")]
    Duration {
        /// The text.
        value: String,
        /// Why it is invalid.
        message: String,
    },
    /// A name or identity is not valid.
    #[error("invalid name {name:?}: {message}")]
    Name {
        /// The name.
        name: String,
        /// Why it is invalid.
        message: String,
    },
    /// Cluster-variable substitution failed for one cluster (see `substitute`).
    #[error("{file}: {} substitution problem(s): {}", problems.len(), problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Substitution {
        /// The file the documents came from.
        file: String,
        /// Every problem found, in document order.
        problems: Vec<crate::substitute::Problem>,
    },
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `impl From<T> for $target` for each listed `T`, converting with `$ctor(e.to_string())`.
///
/// The one helper for error types whose variant keeps only the message (e.g.
/// the several redb error types that all become a `Store(String)`): each
/// library crate invokes it for its own error enum.
#[macro_export]
macro_rules! from_display {
    ($ctor:path; $($t:ty),* $(,)?) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                $ctor(e.to_string())
            }
        }
    )*};
}
