//! Active-active hub replicas on a shared store (etcd): what another
//! replica committed, decoded and turned into changes of this replica's
//! in-memory state ([`changes`], pure), and the follower task that feeds
//! them from the store's watch to the state actor and the status index
//! ([`follow`]).
//!
//! Architecture invariant: a replica learns about other replicas' commits
//! ONLY through the store's change feed (an etcd watch started at the
//! revision its state was loaded at), never by polling; its own commits are
//! skipped there (it applied them before publishing).

pub mod changes;
pub mod follow;

pub use changes::{RemoteChange, RemotePlan, plan};
