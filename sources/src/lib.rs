//! Git sources and the artifact pipeline of the hub: fetch with gix, render
//! bundles (plain YAML or kustomize), store artifacts by digest, webhooks.

pub mod chartdeps;
pub mod chartsrc;
pub mod controller;
pub mod deps;
pub mod git;
pub mod helmrender;
pub mod helmrepo;
pub mod local;
pub mod oci;
pub mod redact;
pub mod render;
pub mod store;
pub mod verify;
pub mod webhook;

mod error;

pub use controller::{Sources, SourcesConfig};
pub use error::{Error, Result};
pub use store::ArtifactStore;
