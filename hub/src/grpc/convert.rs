//! Conversions between convoy.v1 proto messages and the hub's records. The
//! mappings shared with the agent (statuses, events, conditions) live in
//! `convoy_proto::convert`; this module adds the hub-only ones.

use convoy_core::config::DriftMode;
use convoy_core::pipeline::SourceStatus;
use convoy_proto::v1 as pb;

use crate::domain::desired::Deployment;
use crate::domain::summary::PhaseCounts;
use crate::domain::{StatusRecord, StoredEvent};

pub use convoy_proto::convert::{
    condition_to_pb, event_from_pb, phase_from_pb, phase_to_pb, severity_from_pb,
};

/// An agent's status report to a record (the hub sets `updated_unix_ms` when
/// it stores it).
pub fn status_from_pb(s: &pb::BundleStatus) -> StatusRecord {
    StatusRecord { status: convoy_proto::convert::status_from_pb(s), updated_unix_ms: 0 }
}

/// A stored status to proto.
pub fn status_to_pb(s: &StatusRecord) -> pb::BundleStatus {
    convoy_proto::convert::status_to_pb(&s.status)
}

/// A stored event to proto.
pub fn stored_event_to_pb(e: &StoredEvent) -> pb::StoredEvent {
    pb::StoredEvent {
        id: e.id,
        cluster: e.cluster.clone(),
        event: Some(convoy_proto::convert::event_to_pb(&e.event)),
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
            drift_mode: match o.drift {
                DriftMode::Correct => pb::DriftMode::Correct,
                DriftMode::Detect => pb::DriftMode::Detect,
            } as i32,
            allowed_namespaces: o.tenancy.allowed_namespaces.clone(),
            allowed_kinds: o.tenancy.allowed_kinds.clone(),
            deny_cluster_scoped: !o.tenancy.allow_cluster_scoped,
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
        kind: if s.kind.is_empty() { "GitSource".into() } else { s.kind.clone() },
        charts: s
            .charts
            .iter()
            .map(|c| pb::ResolvedChart {
                bundle: c.bundle.clone(),
                chart: c.chart.clone(),
                constraint: c.constraint.clone(),
                version: c.version.clone(),
                digest: c.digest.clone(),
                manifest_digest: c.manifest_digest.clone(),
            })
            .collect(),
    }
}

/// The chart repositories (HelmRepository, OCIRepository) of the fleet
/// config the pipeline has not reported on yet.
pub fn pending_chart_sources(
    fleet: &convoy_core::config::FleetConfig,
    statuses: &std::collections::BTreeMap<String, SourceStatus>,
) -> Vec<pb::SourceView> {
    let http = fleet
        .helm_repositories
        .iter()
        .map(|(n, r)| (n, "HelmRepository", &r.spec.url, r.spec.suspend, r.spec.interval));
    let oci = fleet
        .oci_repositories
        .iter()
        .map(|(n, r)| (n, "OCIRepository", &r.spec.url, r.spec.suspend, r.spec.interval));
    http.chain(oci)
        .filter(|(name, ..)| !statuses.contains_key(*name))
        .map(|(name, kind, url, suspend, interval)| pb::SourceView {
            name: name.clone(),
            url: convoy_sources::redact::redact_url(url),
            suspended: suspend,
            interval_seconds: u32::try_from(interval.get().as_secs()).unwrap_or(u32::MAX),
            kind: kind.into(),
            conditions: vec![condition_to_pb(&convoy_core::status::Condition::new(
                "Ready",
                false,
                "Pending",
                "not fetched yet",
            ))],
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use convoy_core::status::{BundleStatus, Condition, ObjectCounts, Phase};

    use super::*;

    #[test]
    fn status_record_round_trips() {
        let s = StatusRecord {
            status: BundleStatus {
                bundle: "web".into(),
                generation: 3,
                phase: Phase::NotReady,
                conditions: vec![Condition::new("Ready", false, "Waiting", "2/3 ready")],
                objects: ObjectCounts { total: 3, ready: 2, ..Default::default() },
                message: "m".into(),
                ..Default::default()
            },
            updated_unix_ms: 0,
        };
        assert_eq!(status_from_pb(&status_to_pb(&s)), s);
    }
}
