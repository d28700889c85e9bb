//! Git sources and the artifact pipeline of the hub: fetch with gix, render
//! bundles (plain YAML or kustomize), store artifacts by digest, webhooks.

pub mod git;
pub mod redact;
pub mod render;
pub mod store;

mod error;

pub use error::{Error, Result};
pub use store::ArtifactStore;
