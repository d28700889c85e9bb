//! The gRPC edge: convoy.v1 messages to domain types (deployments) and back
//! (statuses, events, applied bundles).

use std::time::Duration;

use convoy_core::status::{ConditionStatus, Phase, Severity};
use convoy_proto::v1 as pb;

use crate::bundle::{AppliedRevision, BundleOptions, Deployment, DriftMode};
use crate::status::{AgentEvent, BundleState};

/// A hub deployment in domain form.
pub fn deployment(d: pb::BundleDeployment) -> Deployment {
    let o = d.options.unwrap_or_default();
    let drift = match pb::DriftMode::try_from(o.drift_mode).unwrap_or(pb::DriftMode::Unspecified) {
        pb::DriftMode::Correct => Some(DriftMode::Correct),
        pb::DriftMode::Detect => Some(DriftMode::Detect),
        pb::DriftMode::Unspecified => None,
    };
    Deployment {
        name: d.name,
        statement: d.statement,
        signature: d.signature,
        digest: d.digest,
        size: d.size,
        generation: d.generation,
        options: BundleOptions {
            target_namespace: Some(o.target_namespace).filter(|s| !s.is_empty()),
            prune: o.prune,
            wait: o.wait,
            timeout: (o.timeout_seconds > 0).then(|| Duration::from_secs(o.timeout_seconds as u64)),
            depends_on: o.depends_on,
            suspend: o.suspend,
            force: o.force,
            rollback: o.rollback,
            drift,
        },
    }
}

fn phase(p: Phase) -> pb::Phase {
    match p {
        Phase::Unknown => pb::Phase::Unspecified,
        Phase::Pending => pb::Phase::Pending,
        Phase::Reconciling => pb::Phase::Reconciling,
        Phase::Ready => pb::Phase::Ready,
        Phase::NotReady => pb::Phase::NotReady,
        Phase::Stalled => pb::Phase::Stalled,
        Phase::Suspended => pb::Phase::Suspended,
    }
}

fn severity(s: Severity) -> pb::Severity {
    match s {
        Severity::Info => pb::Severity::Info,
        Severity::Warning => pb::Severity::Warning,
        Severity::Error => pb::Severity::Error,
    }
}

/// A status for the wire.
pub fn status(s: &BundleState) -> pb::BundleStatus {
    pb::BundleStatus {
        bundle: s.bundle.clone(),
        generation: s.generation,
        revision: s.revision.clone(),
        digest: s.digest.clone(),
        phase: phase(s.phase) as i32,
        conditions: s
            .conditions
            .iter()
            .map(|c| pb::Condition {
                r#type: c.type_.clone(),
                status: match c.status {
                    ConditionStatus::True => "True",
                    ConditionStatus::False => "False",
                    ConditionStatus::Unknown => "Unknown",
                }
                .into(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                last_transition_unix_ms: c.last_transition_unix_ms,
            })
            .collect(),
        objects: Some(pb::ObjectCounts {
            total: s.objects.total,
            ready: s.objects.ready,
            created: s.objects.created,
            configured: s.objects.configured,
            unchanged: s.objects.unchanged,
            pruned: s.objects.pruned,
            drift_corrected: s.objects.drift_corrected,
            drifted: s.objects.drifted,
        }),
        message: s.message.clone(),
        apply_duration_ms: s.apply_duration_ms,
        ready_duration_ms: s.ready_duration_ms,
        observed_unix_ms: s.observed_unix_ms,
        applied_generation: s.applied_generation,
        applied_revision: s.applied_revision.clone(),
    }
}

/// An event for the wire.
pub fn event(e: &AgentEvent) -> pb::Event {
    pb::Event {
        severity: severity(e.severity) as i32,
        reason: e.reason.clone(),
        message: e.message.clone(),
        bundle: e.bundle.clone(),
        object: e.object.clone(),
        revision: e.revision.clone(),
        time_unix_ms: e.time_unix_ms,
        details: e.details.clone().into_iter().collect(),
    }
}

/// An applied revision for Hello.
pub fn applied(bundle: &str, a: &AppliedRevision) -> pb::AppliedBundle {
    pb::AppliedBundle {
        bundle: bundle.to_string(),
        generation: a.generation,
        digest: a.digest.clone(),
        revision: a.revision.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_map() {
        let d = deployment(pb::BundleDeployment {
            name: "a".into(),
            generation: 3,
            options: Some(pb::ApplyOptions {
                target_namespace: "x".into(),
                prune: true,
                timeout_seconds: 30,
                drift_mode: pb::DriftMode::Detect as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(d.options.target_namespace.as_deref(), Some("x"));
        assert!(d.options.prune);
        assert_eq!(d.options.timeout, Some(Duration::from_secs(30)));
        assert_eq!(d.options.drift, Some(DriftMode::Detect));
        let d = deployment(pb::BundleDeployment { name: "b".into(), ..Default::default() });
        assert_eq!(d.options.target_namespace, None);
        assert_eq!(d.options.timeout, None);
        assert_eq!(d.options.drift, None);
    }
}
