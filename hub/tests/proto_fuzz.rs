//! Property tests of what the hub does with the bytes of an agent→hub
//! message (issue 12, "Fuzzing"): arbitrary and mutated bytes decoded as an
//! `AgentMessage`, then the hub's conversions of every kind of message
//! (status and event to records, as stored, and back to proto) never panic,
//! and what decodes round-trips. Bounded in CI by `PROPTEST_CASES` (64 unless
//! set); docs/fuzzing.md has the longer command.

use std::sync::LazyLock;

use convoy_hub::grpc::convert::{
    event_from_pb, phase_from_pb, severity_from_pb, status_from_pb, status_to_pb,
};
use convoy_proto::v1 as pb;
use convoy_proto::v1::agent_message::Msg;
use proptest::prelude::*;
use prost::Message;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// What the hub does with one decoded message (session.rs: statuses and
/// events become records that are stored as JSON; a Hello's applied bundles
/// seed statuses).
fn hub_handles(m: &pb::AgentMessage) {
    match &m.msg {
        Some(Msg::Status(s)) => {
            if let Some(st) = &s.status {
                let record = status_from_pb(st);
                let stored = serde_json::to_vec(&record).unwrap();
                let back: convoy_hub::domain::StatusRecord = serde_json::from_slice(&stored).unwrap();
                assert_eq!(back, record, "a status record reads back as stored");
                let _ = status_to_pb(&record);
            }
        }
        Some(Msg::Event(e)) => {
            if let Some(ev) = &e.event {
                let event = event_from_pb(ev);
                let stored = serde_json::to_vec(&event).unwrap();
                let _: serde_json::Value = serde_json::from_slice(&stored).unwrap();
                let _ = severity_from_pb(ev.severity);
            }
        }
        Some(Msg::Hello(h)) => {
            for a in &h.applied {
                let _ = (a.bundle.len(), a.generation, a.revision.len(), a.digest.len());
            }
        }
        Some(Msg::Heartbeat(_)) | None => {}
    }
}

/// One message of each kind, filled in.
static SAMPLES: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let status = pb::BundleStatus {
        bundle: "web".into(),
        generation: 7,
        phase: pb::Phase::Ready as i32,
        message: "4/4 objects ready".into(),
        conditions: vec![pb::Condition {
            r#type: "Ready".into(),
            status: "True".into(),
            reason: "Applied".into(),
            message: "ok".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let event = pb::Event {
        severity: pb::Severity::Warning as i32,
        reason: "DriftCorrected".into(),
        message: "put back .spec.replicas".into(),
        object: "Deployment/apps/web".into(),
        bundle: "web".into(),
        details: [("fields".to_string(), ".spec.replicas".to_string())].into(),
        ..Default::default()
    };
    [
        Msg::Hello(pb::Hello {
            agent_version: "0.1.0".into(),
            outbox_epoch: 3,
            applied: vec![pb::AppliedBundle { bundle: "web".into(), generation: 7, ..Default::default() }],
            age_recipients: vec!["age1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq8qwld8".into()],
            kube_version: "v1.31.0".into(),
            api_versions: vec!["v1".into(), "apps/v1".into()],
        }),
        Msg::Status(pb::StatusReport { seq: 1, status: Some(status) }),
        Msg::Event(pb::EventReport { seq: 2, event: Some(event) }),
        Msg::Heartbeat(pb::Heartbeat { time_unix_ms: 1_700_000_000_000 }),
    ]
    .into_iter()
    .map(|msg| pb::AgentMessage { msg: Some(msg) }.encode_to_vec())
    .collect()
});

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_the_decode_or_the_hub(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        if let Ok(m) = pb::AgentMessage::decode(bytes.as_slice()) {
            hub_handles(&m);
            // What decodes re-encodes to something that decodes to the same message.
            prop_assert_eq!(pb::AgentMessage::decode(m.encode_to_vec().as_slice()).unwrap(), m);
        }
    }

    #[test]
    fn mutated_messages_never_panic_the_decode_or_the_hub(
        which in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..6),
        cut in proptest::option::of(any::<prop::sample::Index>()),
        tail in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut bytes = SAMPLES[which.index(SAMPLES.len())].clone();
        for (at, x) in &flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x;
        }
        if let Some(c) = cut {
            bytes.truncate(c.index(bytes.len()));
        }
        bytes.extend(tail);
        if let Ok(m) = pb::AgentMessage::decode(bytes.as_slice()) {
            hub_handles(&m);
        }
    }

    #[test]
    fn any_enum_value_converts(phase in any::<i32>(), severity in any::<i32>()) {
        let _ = phase_from_pb(phase);
        let _ = severity_from_pb(severity);
        let st = pb::BundleStatus { bundle: "b".into(), phase, ..Default::default() };
        let m = pb::AgentMessage { msg: Some(Msg::Status(pb::StatusReport { seq: 1, status: Some(st) })) };
        hub_handles(&m);
    }
}
