//! Create-only objects ([`WriteMode::CreateOnly`], a Helm chart's `crds/`
//! under `crds: Create`): the pure decision of what the apply, the drift
//! check and the diff do with one, given what the cluster holds and what the
//! inventory recorded. A create-only object stays in the plan and in the
//! inventory whatever is decided, so leaving it alone never makes it stale
//! (prunable).

use super::{entry_for, live_matches};
use crate::inventory::Entry;
use crate::kubeapi::MetaOnly;
use crate::objects::{DesiredObject, WriteMode};

/// What the report says about a create-only object that exists and was left alone.
pub(super) const KEPT: &str = "exists; create-only (crds: Create), not changed";

/// What to do with a create-only object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    /// It does not exist: create it.
    Create,
    /// It exists: write nothing, record this inventory entry.
    Keep(Box<Entry>),
}

/// Decide for `obj` (create-only) with its previous inventory entry and its
/// live metadata (`None`: it does not exist). Pure.
///
/// The entry kept for an existing object claims the desired content (the
/// desired hash) only when the inventory already did and the object has not
/// changed since (same resourceVersion, or same generation and labels and
/// annotations): it is then exactly what this bundle created. Otherwise it
/// records the live metadata with an empty hash ("not written as desired"),
/// so that a later revision that applies the object (`CreateReplace`) never
/// takes it for in sync.
pub(super) fn step(obj: &DesiredObject, prev: Option<&Entry>, live: Option<&MetaOnly>) -> Step {
    debug_assert_eq!(obj.write, WriteMode::CreateOnly);
    let Some(live) = live else { return Step::Create };
    match prev {
        Some(p) if !p.hash.is_empty() && p.hash == obj.hash && live_matches(p, live, &obj.meta_keys) => {
            Step::Keep(Box::new(p.clone()))
        }
        _ => Step::Keep(Box::new(entry_for(obj, Some(live), String::new()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{Manifest, Origin};
    use crate::resource::ResourceInfo;
    use serde_json::json;

    fn crd(description: &str) -> DesiredObject {
        let m = Manifest::from_value(
            Origin { file: "helm/crds/widgets.yaml".into(), index: 0 },
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                   "metadata": {"name": "widgets.example.com"},
                   "spec": {"group": "example.com", "description": description}}),
        )
        .unwrap()
        .remove(0);
        let res = ResourceInfo::test(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
        );
        let mut o = DesiredObject::build(m, res, "web", "apps").unwrap();
        o.write = WriteMode::CreateOnly;
        o
    }

    fn live(rv: &str, generation: i64, bundle: Option<&str>) -> MetaOnly {
        let mut m = MetaOnly::default();
        m.metadata.resource_version = Some(rv.into());
        m.metadata.generation = Some(generation);
        m.metadata.labels =
            bundle.map(|b| [(convoy_core::BUNDLE_LABEL.to_string(), b.to_string())].into_iter().collect());
        m
    }

    #[test]
    fn a_missing_object_is_created_whatever_the_inventory_says() {
        let o = crd("v1");
        assert_eq!(step(&o, None, None), Step::Create);
        // Recorded (created by an earlier revision), deleted out of band since.
        let e = entry_for(&o, Some(&live("5", 1, Some("web"))), o.hash.clone());
        assert_eq!(step(&o, Some(&e), None), Step::Create);
        // Recorded as left alone (empty hash), gone since.
        let kept = entry_for(&o, Some(&live("5", 1, None)), String::new());
        assert_eq!(step(&o, Some(&kept), None), Step::Create);
    }

    #[test]
    fn an_existing_object_is_never_written() {
        let o = crd("v1");
        // Not in the inventory (another tool made it): kept, recorded as not ours to vouch for.
        let l = live("7", 3, None);
        let Step::Keep(e) = step(&o, None, Some(&l)) else { panic!("an existing object is kept") };
        assert_eq!((e.hash.as_str(), e.rv.as_str(), e.generation), ("", "7", 3));
        assert_eq!(e.key(), o.key);
    }

    #[test]
    fn the_entry_claims_the_desired_content_only_when_it_is_what_this_bundle_created() {
        let o = crd("v1");
        let l = live("5", 1, Some("web"));
        let created = entry_for(&o, Some(&l), o.hash.clone());
        // Unchanged since this bundle created it: the same entry (no inventory write).
        assert_eq!(step(&o, Some(&created), Some(&l)), Step::Keep(Box::new(created.clone())));
        // Status moved the resourceVersion only: still ours as created.
        assert_eq!(
            step(&o, Some(&created), Some(&live("6", 1, Some("web")))),
            Step::Keep(Box::new(created.clone()))
        );
        // Changed out of band (generation moved): left alone, no longer claimed.
        let edited = live("8", 2, Some("web"));
        let Step::Keep(e) = step(&o, Some(&created), Some(&edited)) else { panic!() };
        assert_eq!((e.hash.as_str(), e.rv.as_str()), ("", "8"));
        // The chart changed the object (a new desired hash): left alone, not claimed.
        let newer = crd("v2");
        let Step::Keep(e) = step(&newer, Some(&created), Some(&l)) else { panic!() };
        assert_eq!((e.hash.as_str(), e.rv.as_str()), ("", "5"));
        // Already recorded as left alone: the same entry again while nothing moves.
        assert_eq!(step(&newer, Some(&e), Some(&l)), Step::Keep(e.clone()));
    }
}
