//! The gRPC edge: convoy.v1 messages to domain types (deployments) and back
//! (applied bundles). Statuses and events go through the mappings shared with
//! the hub, in `convoy_proto::convert`.

use std::time::Duration;

use convoy_proto::v1 as pb;

use crate::bundle::{AppliedRevision, BundleOptions, Deployment, DriftMode};

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
            drift,
            tenancy: convoy_core::tenancy::Tenancy {
                allowed_namespaces: o.allowed_namespaces,
                allowed_kinds: o.allowed_kinds,
                allow_cluster_scoped: !o.deny_cluster_scoped,
            },
        },
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

    /// The unsigned `rollback` flag is gone from the protocol (field 8 of
    /// ApplyOptions is reserved): whatever an old or hostile hub sets there,
    /// the agent decodes nothing that could lower a bundle's generation floor.
    #[test]
    fn the_removed_rollback_flag_cannot_lower_the_generation_floor() {
        use crate::bundle::{Decision, decide};
        use prost::Message;
        // ApplyOptions as a hub that still knows field 8 (`bool rollback`) encodes it.
        let mut bytes = pb::ApplyOptions { prune: true, ..Default::default() }.encode_to_vec();
        bytes.extend_from_slice(&[0x40, 0x01]); // field 8, varint, true
        let options = pb::ApplyOptions::decode(bytes.as_slice()).unwrap();
        let d = deployment(pb::BundleDeployment {
            name: "app".into(),
            generation: 4,
            digest: "sha256:b".into(),
            options: Some(options),
            ..Default::default()
        });
        assert!(d.options.prune, "the rest of the options still decode");
        let applied = AppliedRevision {
            generation: 5,
            digest: "sha256:a".into(),
            revision: "main@sha1:aa".into(),
            statement: vec![],
            signature: vec![],
            options: BundleOptions::default(),
        };
        assert!(
            matches!(decide(&d, Some(&applied)), Decision::Refuse("GenerationRollback", _)),
            "an older generation is refused whatever the unsigned options say"
        );
    }

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
