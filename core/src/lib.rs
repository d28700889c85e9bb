//! Convoy's domain: the fleet config, cluster targeting, bundle status and conditions.
//!
//! This crate does no I/O. It parses and validates text it is handed, matches
//! labels, and defines the vocabulary every other crate speaks (hub, agent,
//! CLI). gRPC and Kubernetes types never appear here; adapters convert at
//! their edges.

pub mod backoff;
pub mod chartsrc;
pub mod clock;
pub mod config;
pub mod duration;
pub mod hmac;
pub mod identity;
pub mod labels;
pub mod pipeline;
pub mod rollout;
pub mod selector;
pub mod status;
pub mod substitute;
pub mod tenancy;
pub mod yaml;

mod error;

pub use error::{Error, Result};

/// The API version of every fleet config document.
pub const API_VERSION: &str = "convoy.dev/v1";

/// The field manager the agent uses for server-side apply.
pub const FIELD_MANAGER: &str = "convoy-agent";

/// Annotation that opts an object out of pruning when set to "disabled".
pub const PRUNE_ANNOTATION: &str = "convoy.dev/prune";

/// Label the agent puts on every object it applies, naming the bundle.
pub const BUNDLE_LABEL: &str = "convoy.dev/bundle";
