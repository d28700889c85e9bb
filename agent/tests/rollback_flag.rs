//! The unsigned `rollback` flag is gone from the protocol (field 8 of
//! ApplyOptions is reserved): whatever an old or hostile hub sets there, the
//! agent decodes nothing that could lower a bundle's generation floor.

use convoy_agent::bundle::{AppliedRevision, BundleOptions, Decision, decide};
use convoy_proto::v1 as pb;
use prost::Message;

#[test]
fn the_removed_rollback_flag_cannot_lower_the_generation_floor() {
    // ApplyOptions as a hub that still knows field 8 (`bool rollback`) encodes it.
    let mut bytes = pb::ApplyOptions { prune: true, ..Default::default() }.encode_to_vec();
    bytes.extend_from_slice(&[0x40, 0x01]); // field 8, varint, true
    let options = pb::ApplyOptions::decode(bytes.as_slice()).unwrap();
    let d = convoy_agent::convert::deployment(pb::BundleDeployment {
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
