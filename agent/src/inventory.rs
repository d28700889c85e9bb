//! The per-bundle inventory kept in the cluster: a ConfigMap
//! `convoy-inventory-<bundle>` in the agent's namespace listing every object the
//! bundle applied (with its stage, content hash and the resourceVersion,
//! generation and label/annotation hash the apply produced), plus the
//! revision, generation and digest. Prune deletes what left it; the in-sync
//! check compares with it; it is written only when something changed.
//!
//! When a bundle leaves the cluster its inventory is replaced by a tombstone
//! `convoy-tombstone-<bundle>` (no objects; generation, digest and revision
//! kept), so the bundle's generation floor survives its removal: a re-added
//! bundle cannot be fed an older signed statement. [`load`] falls back to the
//! tombstone (as an inventory with no objects) when there is no inventory.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::kubeapi::ObjApi;
use crate::objects::{ObjKey, Stage, group_of, hash_hex, version_of};
use crate::resource::ResourceInfo;
use crate::{Error, Result};

/// ConfigMaps may hold 1 MiB; stay clear of it.
const MAX_INVENTORY_BYTES: usize = 900 * 1024;

/// Label on inventory ConfigMaps naming their bundle (not the bundle label:
/// the inventory is not one of the bundle's objects).
pub const INVENTORY_LABEL: &str = "convoy.dev/inventory-of";

/// One applied object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Apply stage.
    #[serde(rename = "s")]
    pub stage: Stage,
    /// The apiVersion it was applied as.
    #[serde(rename = "v")]
    pub api_version: String,
    /// Kind.
    #[serde(rename = "k")]
    pub kind: String,
    /// Plural resource name (prune must work after discovery forgot the kind).
    #[serde(rename = "p")]
    pub plural: String,
    /// Namespace, for namespaced objects.
    #[serde(rename = "ns", default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    #[serde(rename = "n")]
    pub name: String,
    /// Hash of the applied body.
    #[serde(rename = "h")]
    pub hash: String,
    /// resourceVersion right after the apply.
    #[serde(rename = "rv", default)]
    pub rv: String,
    /// metadata.generation right after the apply (0 when the kind has none).
    #[serde(rename = "g", default)]
    pub generation: i64,
    /// Hash of the live values of the labels/annotations the bundle sets.
    #[serde(rename = "m", default)]
    pub meta_hash: String,
}

impl Entry {
    /// The object's key.
    pub fn key(&self) -> ObjKey {
        ObjKey {
            group: group_of(&self.api_version).into(),
            kind: self.kind.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// How to reach it.
    pub fn resource(&self) -> ResourceInfo {
        ResourceInfo {
            group: group_of(&self.api_version).into(),
            version: version_of(&self.api_version).into(),
            kind: self.kind.clone(),
            plural: self.plural.clone(),
            namespaced: self.namespace.is_some(),
        }
    }
}

/// A bundle's inventory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// The bundle.
    pub bundle: String,
    /// The source revision applied.
    pub revision: String,
    /// The statement generation applied.
    pub generation: u64,
    /// The artifact digest applied.
    pub digest: String,
    /// Every object, in apply order.
    pub entries: Vec<Entry>,
}

impl Inventory {
    /// Entries by key.
    pub fn by_key(&self) -> BTreeMap<ObjKey, &Entry> {
        self.entries.iter().map(|e| (e.key(), e)).collect()
    }
}

/// The inventory ConfigMap's name for a bundle.
pub fn configmap_name(bundle: &str) -> String {
    let name = format!("convoy-inventory-{bundle}");
    if name.len() <= 253 {
        name
    } else {
        format!("convoy-inventory-{}-{}", &bundle[..200], &hash_hex(bundle.as_bytes())[..10])
    }
}

fn configmaps() -> ResourceInfo {
    ResourceInfo {
        group: String::new(),
        version: "v1".into(),
        kind: "ConfigMap".into(),
        plural: "configmaps".into(),
        namespaced: true,
    }
}

/// The tombstone ConfigMap's name for a removed bundle.
pub fn tombstone_name(bundle: &str) -> String {
    let name = format!("convoy-tombstone-{bundle}");
    if name.len() <= 253 {
        name
    } else {
        format!("convoy-tombstone-{}-{}", &bundle[..200], &hash_hex(bundle.as_bytes())[..10])
    }
}

/// Read a bundle's inventory; without one, its tombstone (an inventory with
/// no objects that keeps the generation floor); `None` when it has neither.
pub async fn load(client: &kube::Client, namespace: &str, bundle: &str) -> Result<Option<Inventory>> {
    match load_named(client, namespace, bundle, &configmap_name(bundle)).await? {
        Some(inv) => Ok(Some(inv)),
        None => Ok(load_named(client, namespace, bundle, &tombstone_name(bundle))
            .await?
            .map(|t| Inventory { entries: Vec::new(), ..t })),
    }
}

async fn load_named(
    client: &kube::Client,
    namespace: &str,
    bundle: &str,
    name: &str,
) -> Result<Option<Inventory>> {
    let key = ObjKey::new("", "ConfigMap", Some(namespace), name);
    let Some(cm) = ObjApi::new(client, &configmaps(), &key).get().await? else {
        return Ok(None);
    };
    parse(&cm, namespace, &key.name, bundle).map(Some)
}

/// Every bundle's inventory in `namespace` (one list by the inventory label).
pub async fn list_all(client: &kube::Client, namespace: &str) -> Result<Vec<Inventory>> {
    let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
        client.clone(),
        namespace,
        &kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
    );
    let params = kube::api::ListParams::default().labels(INVENTORY_LABEL);
    let list = crate::kubeapi::retry_transient("list inventories", || api.list(&params))
        .await
        .map_err(|e| Error::Kube { context: format!("list inventories in {namespace}"), source: e })?;
    let mut out = Vec::with_capacity(list.items.len());
    for cm in list.items {
        let name = cm.metadata.name.clone().unwrap_or_default();
        let bundle =
            cm.metadata.labels.as_ref().and_then(|l| l.get(INVENTORY_LABEL)).cloned().unwrap_or_default();
        let v = serde_json::json!({ "data": cm.data["data"] });
        out.push(parse(&v, namespace, &name, &bundle)?);
    }
    Ok(out)
}

fn parse(cm: &serde_json::Value, namespace: &str, name: &str, bundle: &str) -> Result<Inventory> {
    let key = ObjKey::new("", "ConfigMap", Some(namespace), name);
    let data = &cm["data"];
    let s = |k: &str| data[k].as_str().unwrap_or("").to_string();
    let entries: Vec<Entry> = match data["objects"].as_str() {
        Some(text) => serde_json::from_str(text)
            .map_err(|e| Error::Store(format!("inventory {namespace}/{}: objects: {e}", key.name)))?,
        None => Vec::new(),
    };
    Ok(Inventory {
        bundle: bundle.to_string(),
        revision: s("revision"),
        generation: s("generation").parse().unwrap_or(0),
        digest: s("digest"),
        entries,
    })
}

/// Write a bundle's inventory (server-side apply, the agent owns it).
pub async fn save(client: &kube::Client, namespace: &str, inv: &Inventory) -> Result<()> {
    let objects = serde_json::to_string(&inv.entries).map_err(|e| Error::Store(e.to_string()))?;
    if objects.len() > MAX_INVENTORY_BYTES {
        return Err(Error::Store(format!(
            "inventory of bundle {} is {} bytes ({} objects), over the {} byte ConfigMap budget",
            inv.bundle,
            objects.len(),
            inv.entries.len(),
            MAX_INVENTORY_BYTES
        )));
    }
    let name = configmap_name(&inv.bundle);
    let body = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                INVENTORY_LABEL: inv.bundle,
                "app.kubernetes.io/managed-by": convoy_core::FIELD_MANAGER,
            },
        },
        "data": {
            "bundle": inv.bundle,
            "revision": inv.revision,
            "generation": inv.generation.to_string(),
            "digest": inv.digest,
            "objects": objects,
        },
    })
    .to_string();
    let key = ObjKey::new("", "ConfigMap", Some(namespace), &name);
    let api = ObjApi::new(client, &configmaps(), &key);
    api.apply_own(&body, namespace).await
}

/// Delete a bundle's inventory, leaving a tombstone with its generation,
/// digest and revision (the generation floor outlives the bundle).
pub async fn delete(client: &kube::Client, namespace: &str, bundle: &str) -> Result<()> {
    let name = configmap_name(bundle);
    if let Some(inv) = load_named(client, namespace, bundle, &name).await?
        && inv.generation > 0
    {
        let tomb = tombstone_name(bundle);
        let body = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": tomb,
                "namespace": namespace,
                "labels": {
                    INVENTORY_LABEL: bundle,
                    "app.kubernetes.io/managed-by": convoy_core::FIELD_MANAGER,
                },
            },
            "data": {
                "bundle": bundle,
                "revision": inv.revision,
                "generation": inv.generation.to_string(),
                "digest": inv.digest,
                "removed": "true",
            },
        })
        .to_string();
        let key = ObjKey::new("", "ConfigMap", Some(namespace), &tomb);
        ObjApi::new(client, &configmaps(), &key).apply_own(&body, namespace).await?;
    }
    let key = ObjKey::new("", "ConfigMap", Some(namespace), &name);
    ObjApi::new(client, &configmaps(), &key).delete().await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_compactly() {
        let e = Entry {
            stage: Stage::Workloads,
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            plural: "deployments".into(),
            namespace: Some("x".into()),
            name: "d".into(),
            hash: "abc".into(),
            rv: "12".into(),
            generation: 1,
            meta_hash: "m".into(),
        };
        let s = serde_json::to_string(&e).unwrap();
        assert_eq!(
            s,
            r#"{"s":3,"v":"apps/v1","k":"Deployment","p":"deployments","ns":"x","n":"d","h":"abc","rv":"12","g":1,"m":"m"}"#
        );
        let back: Entry = serde_json::from_str(&s).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.key().to_string(), "Deployment/x/d");
        assert_eq!(back.resource().url_path(Some("x")), "/apis/apps/v1/namespaces/x/deployments");
    }

    #[test]
    fn long_bundle_names_fit() {
        assert_eq!(configmap_name("app"), "convoy-inventory-app");
        assert!(configmap_name(&"a".repeat(253)).len() <= 253);
        assert_eq!(tombstone_name("app"), "convoy-tombstone-app");
        assert!(tombstone_name(&"a".repeat(253)).len() <= 253);
    }
}
