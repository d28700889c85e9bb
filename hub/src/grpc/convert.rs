//! Conversions between convoy.v1 proto messages and domain records. This is
//! the only place that knows both.

use convoy_core::config::DriftMode;
use convoy_core::pipeline::SourceStatus;
use convoy_core::status::{Condition, ConditionStatus, Phase, Severity};
use convoy_proto::v1 as pb;

use crate::domain::desired::Deployment;
use crate::domain::summary::PhaseCounts;
use crate::domain::{EventRecord, ObjectCounts, StatusRecord, StoredEvent};

/// Domain phase to proto.
pub fn phase_to_pb(p: Phase) -> pb::Phase {
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

/// Proto phase (as sent, an i32) to domain.
pub fn phase_from_pb(p: i32) -> Phase {
    match pb::Phase::try_from(p).unwrap_or(pb::Phase::Unspecified) {
        pb::Phase::Unspecified => Phase::Unknown,
        pb::Phase::Pending => Phase::Pending,
        pb::Phase::Reconciling => Phase::Reconciling,
        pb::Phase::Ready => Phase::Ready,
        pb::Phase::NotReady => Phase::NotReady,
        pb::Phase::Stalled => Phase::Stalled,
        pb::Phase::Suspended => Phase::Suspended,
    }
}

/// Domain severity to proto.
pub fn severity_to_pb(s: Severity) -> pb::Severity {
    match s {
        Severity::Info => pb::Severity::Info,
        Severity::Warning => pb::Severity::Warning,
        Severity::Error => pb::Severity::Error,
    }
}

/// Proto severity to domain (unspecified reads as info).
pub fn severity_from_pb(s: i32) -> Severity {
    match pb::Severity::try_from(s).unwrap_or(pb::Severity::Unspecified) {
        pb::Severity::Warning => Severity::Warning,
        pb::Severity::Error => Severity::Error,
        pb::Severity::Info | pb::Severity::Unspecified => Severity::Info,
    }
}

/// Domain condition to proto.
pub fn condition_to_pb(c: &Condition) -> pb::Condition {
    pb::Condition {
        r#type: c.type_.clone(),
        status: c.status.as_str().into(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        last_transition_unix_ms: c.last_transition_unix_ms,
    }
}

/// Proto condition to domain.
pub fn condition_from_pb(c: &pb::Condition) -> Condition {
    Condition {
        type_: c.r#type.clone(),
        status: ConditionStatus::parse(&c.status),
        reason: c.reason.clone(),
        message: c.message.clone(),
        last_transition_unix_ms: c.last_transition_unix_ms,
    }
}

/// An agent's status report to a record.
pub fn status_from_pb(s: &pb::BundleStatus) -> StatusRecord {
    let o = s.objects.unwrap_or_default();
    StatusRecord {
        bundle: s.bundle.clone(),
        generation: s.generation,
        revision: s.revision.clone(),
        digest: s.digest.clone(),
        phase: phase_from_pb(s.phase),
        conditions: s.conditions.iter().map(condition_from_pb).collect(),
        objects: ObjectCounts {
            total: o.total,
            ready: o.ready,
            created: o.created,
            configured: o.configured,
            unchanged: o.unchanged,
            pruned: o.pruned,
            drift_corrected: o.drift_corrected,
            drifted: o.drifted,
        },
        message: s.message.clone(),
        apply_duration_ms: s.apply_duration_ms,
        ready_duration_ms: s.ready_duration_ms,
        observed_unix_ms: s.observed_unix_ms,
        applied_generation: s.applied_generation,
        applied_revision: s.applied_revision.clone(),
        updated_unix_ms: 0,
    }
}

/// A stored status to proto.
pub fn status_to_pb(s: &StatusRecord) -> pb::BundleStatus {
    let o = &s.objects;
    pb::BundleStatus {
        bundle: s.bundle.clone(),
        generation: s.generation,
        revision: s.revision.clone(),
        digest: s.digest.clone(),
        phase: phase_to_pb(s.phase) as i32,
        conditions: s.conditions.iter().map(condition_to_pb).collect(),
        objects: Some(pb::ObjectCounts {
            total: o.total,
            ready: o.ready,
            created: o.created,
            configured: o.configured,
            unchanged: o.unchanged,
            pruned: o.pruned,
            drift_corrected: o.drift_corrected,
            drifted: o.drifted,
        }),
        message: s.message.clone(),
        apply_duration_ms: s.apply_duration_ms,
        ready_duration_ms: s.ready_duration_ms,
        observed_unix_ms: s.observed_unix_ms,
        applied_generation: s.applied_generation,
        applied_revision: s.applied_revision.clone(),
    }
}

/// An agent's event to a record.
pub fn event_from_pb(e: &pb::Event) -> EventRecord {
    EventRecord {
        severity: severity_from_pb(e.severity),
        reason: e.reason.clone(),
        message: e.message.clone(),
        bundle: e.bundle.clone(),
        object: e.object.clone(),
        revision: e.revision.clone(),
        time_unix_ms: e.time_unix_ms,
        details: e.details.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

/// A stored event to proto.
pub fn stored_event_to_pb(e: &StoredEvent) -> pb::StoredEvent {
    let ev = &e.event;
    pb::StoredEvent {
        id: e.id,
        cluster: e.cluster.clone(),
        event: Some(pb::Event {
            severity: severity_to_pb(ev.severity) as i32,
            reason: ev.reason.clone(),
            message: ev.message.clone(),
            bundle: ev.bundle.clone(),
            object: ev.object.clone(),
            revision: ev.revision.clone(),
            time_unix_ms: ev.time_unix_ms,
            details: ev.details.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }),
        stored_unix_ms: e.stored_unix_ms,
    }
}

/// A desired deployment to the proto entry agents receive.
pub fn deployment_to_pb(d: &Deployment) -> pb::BundleDeployment {
    let r = &d.record;
    let o = &d.options;
    pb::BundleDeployment {
        name: r.bundle.clone(),
        statement: r.statement.clone(),
        signature: r.signature.clone(),
        digest: r.digest.clone(),
        size: r.size,
        generation: r.generation,
        options: Some(pb::ApplyOptions {
            target_namespace: o.target_namespace.clone(),
            prune: o.prune,
            wait: o.wait,
            timeout_seconds: o.timeout_seconds,
            depends_on: o.depends_on.clone(),
            suspend: o.suspend,
            force: o.force,
            rollback: o.rollback,
            drift_mode: match o.drift {
                DriftMode::Correct => pb::DriftMode::Correct,
                DriftMode::Detect => pb::DriftMode::Detect,
            } as i32,
        }),
    }
}

/// Phase counts to proto.
pub fn summary_to_pb(c: &PhaseCounts) -> pb::PhaseSummary {
    pb::PhaseSummary {
        total: c.total,
        ready: c.ready,
        progressing: c.progressing,
        not_ready: c.not_ready,
        stalled: c.stalled,
        suspended: c.suspended,
    }
}

/// A source status to proto.
pub fn source_to_pb(s: &SourceStatus) -> pb::SourceView {
    pb::SourceView {
        name: s.name.clone(),
        url: s.url.clone(),
        r#ref: s.reference.clone(),
        revision: s.revision.clone().unwrap_or_default(),
        conditions: s.conditions.iter().map(condition_to_pb).collect(),
        last_fetch_unix_ms: s.last_fetch_unix_ms,
        failures: s.failures,
        suspended: s.suspended,
        interval_seconds: u32::try_from(s.interval.as_secs()).unwrap_or(u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips() {
        let s = StatusRecord {
            bundle: "web".into(),
            generation: 3,
            phase: Phase::NotReady,
            conditions: vec![Condition::new("Ready", false, "Waiting", "2/3 ready")],
            objects: ObjectCounts { total: 3, ready: 2, ..Default::default() },
            message: "m".into(),
            ..Default::default()
        };
        assert_eq!(status_from_pb(&status_to_pb(&s)), s);
        for p in Phase::ALL {
            assert_eq!(phase_from_pb(phase_to_pb(p) as i32), p);
        }
        assert_eq!(severity_from_pb(0), Severity::Info);
        assert_eq!(severity_from_pb(severity_to_pb(Severity::Error) as i32), Severity::Error);
    }
}
