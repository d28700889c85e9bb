//! Conversions between convoy.v1 messages and the shared domain types of
//! `convoy-core` (phases, severities, conditions, bundle statuses, events).
//! Agent and hub both convert at their gRPC edge through these functions, so
//! the mapping exists once.

use convoy_core::status::{BundleStatus, Condition, ConditionStatus, Event, ObjectCounts, Phase, Severity};

use crate::v1 as pb;

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

/// Proto phase (as sent, an i32) to domain; unknown values read as `Unknown`.
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

/// Proto severity to domain (unspecified and unknown values read as info).
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

fn counts_to_pb(o: &ObjectCounts) -> pb::ObjectCounts {
    pb::ObjectCounts {
        total: o.total,
        ready: o.ready,
        created: o.created,
        configured: o.configured,
        unchanged: o.unchanged,
        pruned: o.pruned,
        drift_corrected: o.drift_corrected,
        drifted: o.drifted,
    }
}

fn counts_from_pb(o: &pb::ObjectCounts) -> ObjectCounts {
    ObjectCounts {
        total: o.total,
        ready: o.ready,
        created: o.created,
        configured: o.configured,
        unchanged: o.unchanged,
        pruned: o.pruned,
        drift_corrected: o.drift_corrected,
        drifted: o.drifted,
    }
}

/// A bundle status to proto.
pub fn status_to_pb(s: &BundleStatus) -> pb::BundleStatus {
    pb::BundleStatus {
        bundle: s.bundle.clone(),
        generation: s.generation,
        revision: s.revision.clone(),
        digest: s.digest.clone(),
        phase: phase_to_pb(s.phase) as i32,
        conditions: s.conditions.iter().map(condition_to_pb).collect(),
        objects: Some(counts_to_pb(&s.objects)),
        message: s.message.clone(),
        apply_duration_ms: s.apply_duration_ms,
        ready_duration_ms: s.ready_duration_ms,
        observed_unix_ms: s.observed_unix_ms,
        applied_generation: s.applied_generation,
        applied_revision: s.applied_revision.clone(),
    }
}

/// A proto bundle status to domain.
pub fn status_from_pb(s: &pb::BundleStatus) -> BundleStatus {
    BundleStatus {
        bundle: s.bundle.clone(),
        generation: s.generation,
        revision: s.revision.clone(),
        digest: s.digest.clone(),
        phase: phase_from_pb(s.phase),
        conditions: s.conditions.iter().map(condition_from_pb).collect(),
        objects: counts_from_pb(&s.objects.unwrap_or_default()),
        message: s.message.clone(),
        apply_duration_ms: s.apply_duration_ms,
        ready_duration_ms: s.ready_duration_ms,
        observed_unix_ms: s.observed_unix_ms,
        applied_generation: s.applied_generation,
        applied_revision: s.applied_revision.clone(),
    }
}

/// An event to proto.
pub fn event_to_pb(e: &Event) -> pb::Event {
    pb::Event {
        severity: severity_to_pb(e.severity) as i32,
        reason: e.reason.clone(),
        message: e.message.clone(),
        bundle: e.bundle.clone(),
        object: e.object.clone(),
        revision: e.revision.clone(),
        time_unix_ms: e.time_unix_ms,
        details: e.details.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

/// A proto event to domain.
pub fn event_from_pb(e: &pb::Event) -> Event {
    Event {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_event_round_trip() {
        let s = BundleStatus {
            bundle: "web".into(),
            generation: 3,
            phase: Phase::NotReady,
            conditions: vec![Condition::new("Ready", false, "Waiting", "2/3 ready")],
            objects: ObjectCounts { total: 3, ready: 2, drifted: 1, ..Default::default() },
            message: "m".into(),
            applied_revision: "main@sha1:ab".into(),
            ..Default::default()
        };
        assert_eq!(status_from_pb(&status_to_pb(&s)), s);
        let e = Event {
            severity: Severity::Warning,
            reason: "DriftCorrected".into(),
            details: [("fields".to_string(), "spec.replicas".to_string())].into(),
            ..Default::default()
        };
        assert_eq!(event_from_pb(&event_to_pb(&e)), e);
        for p in Phase::ALL {
            assert_eq!(phase_from_pb(phase_to_pb(p) as i32), p);
        }
        assert_eq!(phase_from_pb(999), Phase::Unknown);
        assert_eq!(severity_from_pb(0), Severity::Info);
        assert_eq!(severity_from_pb(severity_to_pb(Severity::Error) as i32), Severity::Error);
    }
}
