//! The hub's domain logic, with no I/O: stored records, targeting and the
//! desired-state computation, phase summaries, authorization decisions and
//! the outbox sequence rules. Everything here is plain data in, plain data out,
//! so it is unit-tested without sockets, disks or clocks.

pub mod admins;
pub mod authz;
pub mod commands;
pub mod desired;
pub mod helmops;
pub mod model;
pub mod rollout;
pub mod summary;
pub mod tokens;
pub mod variants;

pub use model::*;

/// A request refused by the hub's rules. Mapped to a gRPC status at the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The caller presented no usable credentials.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller is known but not allowed to do this.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The named object does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request is malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The request conflicts with the current state.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
}
