//! The Convoy agent: one per cluster. It verifies what the hub sends, applies
//! it with server-side apply in stages, prunes what left a bundle, checks
//! health, corrects drift, and streams status and events back through a
//! durable outbox, going on with its last verified state while the hub is away.

pub mod agent;
pub mod backoff;
pub mod bundle;
pub mod cache;
pub mod cli;
pub mod config;
pub mod controller;
pub mod convert;
pub mod diff;
pub mod discovery;
pub mod drift;
pub mod engine;
pub mod health;
pub mod identity;
pub mod inventory;
pub mod kubeapi;
pub mod mem;
pub mod metrics;
pub mod objects;
pub mod oneshot;
pub mod outbox;
pub mod sops;
pub mod status;
pub mod store;
pub mod sync;

mod error;

pub use agent::{Agent, RunningAgent};
pub use config::{AgentConfig, KubeSource, Tuning};
pub use error::{Error, FieldConflict, Result};
pub use oneshot::{OneShotOptions, apply_dir, diff_dir};
