//! What the agent reports: per-bundle status (phase, Kubernetes-style
//! conditions, object counts, timings) and events, in domain form. The gRPC
//! edge (`convert`) turns them into convoy.v1 messages for the outbox.

use std::collections::BTreeMap;

use convoy_core::status::{Condition, Phase, Severity};

/// Object counts of a bundle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObjectCounts {
    /// Objects in the bundle.
    pub total: u32,
    /// Healthy objects.
    pub ready: u32,
    /// Created by the last apply.
    pub created: u32,
    /// Changed by the last apply.
    pub configured: u32,
    /// In sync at the last apply.
    pub unchanged: u32,
    /// Pruned by the last apply.
    pub pruned: u32,
    /// Drift corrections since this generation was applied.
    pub drift_corrected: u32,
    /// Objects drifted and not corrected (detect mode).
    pub drifted: u32,
}

/// The state of one bundle on this cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundleState {
    /// The bundle.
    pub bundle: String,
    /// The generation worked on or applied.
    pub generation: u64,
    /// Its source revision.
    pub revision: String,
    /// Its digest.
    pub digest: String,
    /// The phase.
    pub phase: Phase,
    /// Ready, Reconciling, Stalled, Healthy, Drifted.
    pub conditions: Vec<Condition>,
    /// Counts.
    pub objects: ObjectCounts,
    /// One line: why this phase.
    pub message: String,
    /// Last apply duration.
    pub apply_duration_ms: u64,
    /// Last apply plus wait duration.
    pub ready_duration_ms: u64,
    /// When observed.
    pub observed_unix_ms: i64,
    /// The generation applied successfully (kept on failure).
    pub applied_generation: u64,
    /// The revision applied successfully.
    pub applied_revision: String,
}

/// Something that happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentEvent {
    /// How serious.
    pub severity: Severity,
    /// CamelCase reason.
    pub reason: String,
    /// Human text.
    pub message: String,
    /// The bundle.
    pub bundle: String,
    /// The object (`Kind/ns/name`), if one.
    pub object: String,
    /// The revision concerned.
    pub revision: String,
    /// When (Unix ms).
    pub time_unix_ms: i64,
    /// Field paths, counts, ...
    pub details: BTreeMap<String, String>,
}

impl AgentEvent {
    /// A new event for a bundle.
    pub fn new(severity: Severity, reason: &str, bundle: &str, message: impl Into<String>) -> Self {
        Self {
            severity,
            reason: reason.into(),
            bundle: bundle.into(),
            message: message.into(),
            time_unix_ms: crate::identity::now_ms(),
            ..Default::default()
        }
    }

    /// Name the object.
    pub fn object(mut self, o: impl ToString) -> Self {
        self.object = o.to_string();
        self
    }

    /// Name the revision.
    pub fn revision(mut self, r: &str) -> Self {
        self.revision = r.into();
        self
    }

    /// Add a detail.
    pub fn detail(mut self, k: &str, v: impl ToString) -> Self {
        self.details.insert(k.into(), v.to_string());
        self
    }
}
