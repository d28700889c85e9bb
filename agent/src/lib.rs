//! The Convoy agent: one per cluster. It verifies what the hub sends, applies
//! it with server-side apply in stages, prunes what left a bundle, checks
//! health, corrects drift, and streams status and events back through a
//! durable outbox, going on with its last verified state while the hub is away.
//!
//! The public facade is small: the agent ([`Agent`], [`AgentConfig`]), the
//! one-shot commands ([`oneshot`]), and, for the `convoy-agent` binary, the
//! benchmarks and `convoy dev`, the apply engine and what its signature
//! names ([`engine`], [`objects`], [`inventory`], [`health`], [`bundle`]),
//! the metrics registry ([`metrics`]), flags ([`cli`], [`config`]) and the
//! allocator knob ([`mem`]). Everything else is private to the crate.

pub mod bundle;
pub mod cli;
pub mod config;
pub mod engine;
pub mod health;
pub mod helmrelease;
pub mod inventory;
pub mod mem;
pub mod metrics;
pub mod objects;
pub mod oneshot;
pub mod policy;
pub mod resource;
pub mod sops;

mod agent;
mod cache;
mod controller;
mod convert;
mod diff;
mod discovery;
mod drift;
mod error;
mod helmsync;
mod helmtest;
mod identity;
mod kubeapi;
mod outbox;
mod ownership;
mod reconcile;
mod status;
mod store;
mod sync;

pub use agent::{Agent, RunningAgent};
pub use config::{AgentConfig, KubeSource, Tuning};
pub use error::{Error, FieldConflict, HubCode, ImmutableField, Result};
pub use oneshot::{OneShotOptions, apply_dir, diff_dir};
