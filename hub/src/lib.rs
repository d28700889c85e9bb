//! The Convoy hub: identities and mTLS, the state store, the desired-state
//! fan-out to agents over gRPC, and the fleet query API.
//!
//! Layers (linkerd2 policy-controller style):
//! - [`domain`]: no I/O. Records, targeting and desired-state diffs, phase
//!   summaries, authorization decisions, token rules, outbox sequence rules.
//! - [`store`]: the [`store::Store`] trait (narrow, transactional) and its redb
//!   implementation.
//! - [`state`] and [`writer`]: the single-writer tasks that own the in-memory
//!   indexes (fleet view and per-cluster desired state; statuses and events).
//! - [`grpc`]: tonic adapters for Registration, Agent and Fleet, plus health
//!   and reflection; proto types are converted here and nowhere else.
//! - [`alerts`]: routes stored events to notification providers (webhook,
//!   HMAC, Slack, Teams, Discord, Alertmanager) by the fleet's Alert rules.
//! - [`runtime`]: wires it together with TLS, HTTP, metrics, config reload and
//!   one `CancellationToken` drain. [`Hub::start`] runs a hub in-process.

pub mod accept;
pub mod admins;
pub mod alerts;
pub mod commands;
pub mod config;
pub mod domain;
pub mod files;
pub mod grpc;
pub mod ha;
pub mod http;
pub mod index;
pub mod limits;
pub mod metrics;
pub mod pipeline;
pub mod pki;
pub mod rollout;
pub mod runtime;
pub mod secret_paths;
pub mod sources_pipeline;
pub mod state;
pub mod store;
pub mod tls;
pub mod variants;
pub mod writer;

mod error;

pub use config::HubConfig;
pub use error::{Error, Result};
pub use pipeline::{SourcePipeline, StaticPipeline};
pub use runtime::{AdminCredentials, Hub, HubHandle, HubOptions};

/// The current time in Unix milliseconds (the system clock of [`convoy_core::clock`]).
pub use convoy_core::clock::now_ms;
