//! Enforces `policy` against the cluster before a plan is applied: reads the
//! bundle's inventory and, when the plan has objects new to the bundle, the
//! other bundles' inventories; refuses the bundle on any violation; and moves
//! objects taken over with the takeover annotation out of their old bundle's
//! inventory, so that bundle no longer prunes them.

use std::collections::{BTreeMap, BTreeSet};

use convoy_core::tenancy::Tenancy;

use crate::engine::{Engine, Plan};
use crate::inventory::{self, Entry};
use crate::objects::ObjKey;
use crate::policy::{self, Candidate, Context, TAKEOVER_ANNOTATION, Takeover};
use crate::{Error, Result};

/// Judge `plan` under `tenancy` and the ownership recorded in the cluster's
/// inventories; carry out the takeovers it allows. Nothing of the bundle is
/// written when this fails: the error is [`Error::Policy`].
///
/// `desired`: the bundles the hub still wants on this cluster. The inventory
/// of a bundle that left the cluster (its removal and prune pending) claims
/// nothing, so an object moving between bundles with a label change is taken
/// by the bundle that stays, and the leaving bundle's prune skips it (its live
/// bundle label names the new owner). `None` (one-shot mode): every inventory
/// counts.
pub async fn enforce(
    engine: &Engine,
    plan: &Plan,
    tenancy: &Tenancy,
    desired: Option<&BTreeSet<String>>,
) -> Result<()> {
    let namespace = engine.namespace();
    let own: BTreeSet<ObjKey> = engine
        .inventory(&plan.bundle)
        .await?
        .map(|inv| inv.entries.iter().map(Entry::key).collect())
        .unwrap_or_default();
    // Only objects new to the bundle can conflict: an unchanged bundle costs
    // no list of the other inventories.
    let has_new = plan.objects.iter().any(|o| !own.contains(&o.key));
    let others = if has_new { inventory::list_all(engine.client(), namespace).await? } else { Vec::new() };
    let mut owners: BTreeMap<ObjKey, String> = BTreeMap::new();
    let claims =
        |i: &&inventory::Inventory| i.bundle != plan.bundle && desired.is_none_or(|d| d.contains(&i.bundle));
    for inv in others.iter().filter(claims) {
        for e in &inv.entries {
            owners.entry(e.key()).or_insert_with(|| inv.bundle.clone());
        }
    }
    // The annotation is read only for objects another bundle holds.
    let named: Vec<Option<String>> = plan
        .objects
        .iter()
        .map(|o| {
            (owners.contains_key(&o.key) && !own.contains(&o.key)).then(|| takeover_of(&o.body)).flatten()
        })
        .collect();
    let candidates: Vec<Candidate<'_>> = plan
        .objects
        .iter()
        .zip(&named)
        .map(|(o, n)| Candidate { key: &o.key, takeover_from: n.as_deref() })
        .collect();
    let ctx =
        Context { bundle: &plan.bundle, agent_namespace: namespace, tenancy, own: &own, owners: &owners };
    let takeovers = policy::check(&ctx, &candidates).map_err(Error::Policy)?;
    release(engine, &others, &plan.bundle, takeovers).await
}

/// Remove taken-over objects from their old bundles' inventories.
async fn release(
    engine: &Engine,
    inventories: &[inventory::Inventory],
    to: &str,
    takeovers: Vec<Takeover>,
) -> Result<()> {
    let mut by_bundle: BTreeMap<String, BTreeSet<ObjKey>> = BTreeMap::new();
    for t in takeovers {
        by_bundle.entry(t.from).or_default().insert(t.object);
    }
    for (from, keys) in by_bundle {
        let Some(mut inv) = inventories.iter().find(|i| i.bundle == from).cloned() else { continue };
        inv.entries.retain(|e| !keys.contains(&e.key()));
        inventory::save(engine.client(), engine.namespace(), &inv).await?;
        for k in &keys {
            tracing::info!(object = %k, from = %from, to, "object taken over ({TAKEOVER_ANNOTATION})");
        }
    }
    Ok(())
}

/// The bundle an object's takeover annotation names.
fn takeover_of(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v["metadata"]["annotations"][TAKEOVER_ANNOTATION].as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_takeover_annotation() {
        let body = r#"{"metadata":{"name":"x","annotations":{"convoy.dev/takeover-from":"old"}}}"#;
        assert_eq!(takeover_of(body).as_deref(), Some("old"));
        assert_eq!(takeover_of(r#"{"metadata":{"name":"x"}}"#), None);
        assert_eq!(takeover_of("not json"), None);
    }
}
