//! What the agent reports: per-bundle status (phase, Kubernetes-style
//! conditions, object counts, timings) and events. The types are the shared
//! domain types of `convoy_core::status`, the same the hub stores; the gRPC
//! edge (`convert`) turns them into convoy.v1 messages for the outbox.

use convoy_core::status::Severity;
pub use convoy_core::status::{BundleStatus, Event, ObjectCounts};

/// A new event about a bundle, stamped with this agent's clock.
pub fn event(severity: Severity, reason: &str, bundle: &str, message: impl Into<String>) -> Event {
    Event::new(severity, reason, bundle, message, convoy_core::clock::now_ms())
}
