//! Bundle phases, Kubernetes-style conditions, event severities, and what an
//! agent reports about a bundle (status and events), shared by agent and hub.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The Ready condition type: the bundle is applied and healthy.
pub const READY: &str = "Ready";
/// The Reconciling condition type: work is in progress.
pub const RECONCILING: &str = "Reconciling";
/// The Stalled condition type: no progress without a change.
pub const STALLED: &str = "Stalled";
/// The Healthy condition type: every object passed its health check.
pub const HEALTHY: &str = "Healthy";
/// The Drifted condition type: objects differ from the desired state.
pub const DRIFTED: &str = "Drifted";

/// A bundle's phase on one cluster (or a source's, on the hub).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub enum Phase {
    /// Nothing reported yet.
    #[default]
    Unknown,
    /// Waiting for dependencies or the artifact.
    Pending,
    /// Applying or waiting for health.
    Reconciling,
    /// Applied and healthy.
    Ready,
    /// Applied, not healthy.
    NotReady,
    /// Cannot progress without a change.
    Stalled,
    /// Suspended by an operator.
    Suspended,
}

impl Phase {
    /// All phases, in display order.
    pub const ALL: [Phase; 7] = [
        Phase::Unknown,
        Phase::Pending,
        Phase::Reconciling,
        Phase::Ready,
        Phase::NotReady,
        Phase::Stalled,
        Phase::Suspended,
    ];

    /// The CamelCase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Unknown => "Unknown",
            Phase::Pending => "Pending",
            Phase::Reconciling => "Reconciling",
            Phase::Ready => "Ready",
            Phase::NotReady => "NotReady",
            Phase::Stalled => "Stalled",
            Phase::Suspended => "Suspended",
        }
    }

    /// Parse a phase name, case-insensitively, with or without `-`/`_`.
    pub fn parse(s: &str) -> Option<Phase> {
        let norm: String =
            s.chars().filter(|c| *c != '-' && *c != '_').collect::<String>().to_ascii_lowercase();
        let norm = norm.strip_prefix("phase").unwrap_or(&norm).to_string();
        Phase::ALL.into_iter().find(|p| p.as_str().to_ascii_lowercase() == norm)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A condition's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Not known yet.
    #[default]
    Unknown,
}

impl ConditionStatus {
    /// "True", "False" or "Unknown".
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }

    /// Parse "True", "False" or anything else as Unknown.
    pub fn parse(s: &str) -> Self {
        match s {
            "True" => ConditionStatus::True,
            "False" => ConditionStatus::False,
            _ => ConditionStatus::Unknown,
        }
    }
}

impl From<bool> for ConditionStatus {
    fn from(b: bool) -> Self {
        if b { ConditionStatus::True } else { ConditionStatus::False }
    }
}

/// A Kubernetes-style condition.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Ready, Reconciling, Stalled, ...
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: ConditionStatus,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
    /// When the status last changed (Unix ms).
    pub last_transition_unix_ms: i64,
}

impl Condition {
    /// A new condition.
    pub fn new(
        type_: &str,
        status: impl Into<ConditionStatus>,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_unix_ms: 0,
        }
    }
}

/// Set `cond` in `conds`, keeping the old transition time when the status did
/// not change (as Kubernetes' meta.SetStatusCondition does).
pub fn set_condition(conds: &mut Vec<Condition>, mut cond: Condition, now_unix_ms: i64) {
    if let Some(old) = conds.iter_mut().find(|c| c.type_ == cond.type_) {
        cond.last_transition_unix_ms =
            if old.status == cond.status { old.last_transition_unix_ms } else { now_unix_ms };
        *old = cond;
    } else {
        cond.last_transition_unix_ms = now_unix_ms;
        conds.push(cond);
    }
}

/// Mark a resource stalled: `Ready` false and `Stalled` true, both with
/// `reason` and `message`.
pub fn set_stalled(conds: &mut Vec<Condition>, reason: &str, message: &str, now_unix_ms: i64) {
    set_condition(conds, Condition::new(READY, false, reason, message), now_unix_ms);
    set_condition(conds, Condition::new(STALLED, true, reason, message), now_unix_ms);
}

/// Find a condition by type.
pub fn find_condition<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

/// How serious an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Normal operation.
    #[default]
    Info,
    /// Worth a look.
    Warning,
    /// A failure.
    Error,
}

impl Severity {
    /// "info", "warning" or "error".
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }

    /// Parse "info", "warning"/"warn" or "error", case-insensitively.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "info" => Some(Severity::Info),
            "warning" | "warn" => Some(Severity::Warning),
            "error" => Some(Severity::Error),
            _ => None,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Object counts of a bundle on one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ObjectCounts {
    /// Objects in the bundle.
    pub total: u32,
    /// Healthy objects.
    pub ready: u32,
    /// Created by the last apply.
    pub created: u32,
    /// Changed by the last apply.
    pub configured: u32,
    /// Already in sync at the last apply.
    pub unchanged: u32,
    /// Deleted by prune at the last apply.
    pub pruned: u32,
    /// Drift corrections since this generation was applied.
    pub drift_corrected: u32,
    /// Drifted and not corrected (detect mode).
    pub drifted: u32,
}

/// The status of one bundle on one cluster, as its agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BundleStatus {
    /// The bundle name.
    pub bundle: String,
    /// The generation the agent works on or applied.
    pub generation: u64,
    /// Its source revision.
    pub revision: String,
    /// Its artifact digest.
    pub digest: String,
    /// The phase.
    pub phase: Phase,
    /// Ready, Reconciling, Stalled, Healthy, Drifted.
    pub conditions: Vec<Condition>,
    /// Object counts.
    pub objects: ObjectCounts,
    /// One line: why this phase.
    pub message: String,
    /// Last apply duration.
    pub apply_duration_ms: u64,
    /// Last apply plus wait duration.
    pub ready_duration_ms: u64,
    /// When the agent observed it (agent clock, Unix ms).
    pub observed_unix_ms: i64,
    /// The last generation applied successfully (kept on failure).
    pub applied_generation: u64,
    /// The last revision applied successfully.
    pub applied_revision: String,
}

/// Something that happened on a cluster or in the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Event {
    /// How serious.
    pub severity: Severity,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable text.
    pub message: String,
    /// The bundle concerned, or empty.
    pub bundle: String,
    /// The object concerned (`Kind/namespace/name`), or empty.
    pub object: String,
    /// The revision concerned, or empty.
    pub revision: String,
    /// When it happened (reporter's clock, Unix ms).
    pub time_unix_ms: i64,
    /// Field paths, counts, ...
    pub details: BTreeMap<String, String>,
}

impl Event {
    /// A new event about a bundle (empty for none), at `time_unix_ms`.
    pub fn new(
        severity: Severity,
        reason: &str,
        bundle: &str,
        message: impl Into<String>,
        time_unix_ms: i64,
    ) -> Self {
        Self {
            severity,
            reason: reason.into(),
            bundle: bundle.into(),
            message: message.into(),
            time_unix_ms,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_kept_when_status_same() {
        let mut conds = vec![];
        set_condition(&mut conds, Condition::new(READY, false, "Progressing", "a"), 10);
        set_condition(&mut conds, Condition::new(READY, false, "Progressing", "b"), 20);
        assert_eq!(conds[0].last_transition_unix_ms, 10);
        assert_eq!(conds[0].message, "b");
        set_condition(&mut conds, Condition::new(READY, true, "Applied", "c"), 30);
        assert_eq!(conds[0].last_transition_unix_ms, 30);
        assert_eq!(conds.len(), 1);
    }

    #[test]
    fn phase_parse() {
        assert_eq!(Phase::parse("ready"), Some(Phase::Ready));
        assert_eq!(Phase::parse("NOT_READY"), Some(Phase::NotReady));
        assert_eq!(Phase::parse("PHASE_STALLED"), Some(Phase::Stalled));
        assert_eq!(Phase::parse("nope"), None);
    }
}
