//! API discovery, cached per group-version: which resource serves a kind and
//! whether it is namespaced. Refreshed for a group-version on a miss and after
//! CRDs become Established.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::objects::Manifest;
pub use crate::resource::ResourceInfo;
use crate::resource::{group_of, version_of};
use crate::{Error, Result};

type GvResources = Arc<Vec<ResourceInfo>>;

/// A discovery cache shared by every apply (cheap to clone).
#[derive(Clone)]
pub struct Discovery {
    client: kube::Client,
    cache: Arc<Mutex<HashMap<String, Option<GvResources>>>>,
}

impl Discovery {
    /// An empty cache.
    pub fn new(client: kube::Client) -> Self {
        Self { client, cache: Arc::default() }
    }

    /// Resolve `kind` in `api_version`: `Ok(None)` when the cluster does not
    /// serve it (yet).
    pub async fn resolve(&self, api_version: &str, kind: &str) -> Result<Option<ResourceInfo>> {
        let cached = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(api_version).cloned();
        let list = match cached {
            Some(Some(l)) if l.iter().any(|r| r.kind == kind) => l,
            // A miss or an absent group-version: ask again (a CRD may have
            // been established since).
            _ => self.fetch(api_version).await?.unwrap_or_default(),
        };
        Ok(list.iter().find(|r| r.kind == kind).cloned())
    }

    /// Fill the cache for every group at once with aggregated discovery
    /// (two requests: `/api` and `/apis`). Best effort: an API server
    /// without it is discovered per group-version on demand instead.
    pub async fn prefetch(&self) {
        let (core, groups) = tokio::join!(
            self.client.list_core_api_versions_aggregated(),
            self.client.list_api_groups_aggregated()
        );
        let mut n = 0;
        for list in [core, groups].into_iter().flatten() {
            for g in list.items {
                let group = g.metadata.as_ref().and_then(|m| m.name.clone()).unwrap_or_default();
                for v in g.versions {
                    let Some(version) = v.version else { continue };
                    let infos: Vec<ResourceInfo> = v
                        .resources
                        .into_iter()
                        .filter_map(|r| {
                            let plural = r.resource?;
                            let kind = r.response_kind.and_then(|k| k.kind)?;
                            Some(ResourceInfo {
                                group: group.clone(),
                                version: version.clone(),
                                kind,
                                plural,
                                namespaced: r.scope.as_deref() == Some("Namespaced"),
                            })
                        })
                        .collect();
                    let av = if group.is_empty() { version.clone() } else { format!("{group}/{version}") };
                    n += infos.len();
                    self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(av, Some(Arc::new(infos)));
                }
            }
        }
        tracing::debug!(resources = n, "aggregated discovery");
    }

    /// Forget a group-version so the next resolve asks the API server.
    pub fn invalidate(&self, api_version: &str) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).remove(api_version);
    }

    async fn fetch(&self, api_version: &str) -> Result<Option<GvResources>> {
        let res = crate::kubeapi::retry_transient(&format!("discover {api_version}"), || async {
            if api_version.contains('/') {
                self.client.list_api_group_resources(api_version).await
            } else {
                self.client.list_core_api_resources(api_version).await
            }
        })
        .await;
        let list = match res {
            Ok(l) => l,
            Err(kube::Error::Api(s)) if s.is_not_found() => {
                self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(api_version.into(), None);
                return Ok(None);
            }
            Err(e) => return Err(Error::kube(format!("discover {api_version}"), e)),
        };
        let group = group_of(api_version).to_string();
        let version = version_of(api_version).to_string();
        let infos: Vec<ResourceInfo> = list
            .resources
            .into_iter()
            .filter(|r| !r.name.contains('/'))
            .map(|r| ResourceInfo {
                group: group.clone(),
                version: version.clone(),
                kind: r.kind,
                plural: r.name,
                namespaced: r.namespaced,
            })
            .collect();
        let infos = Arc::new(infos);
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(api_version.into(), Some(infos.clone()));
        Ok(Some(infos))
    }
}

/// The kinds that CRDs in a bundle define, so that custom resources of the
/// same bundle can be planned before their CRD exists in the cluster. Reads
/// only the names, scope and versions (a CRD's schema is skipped, not parsed).
pub fn crd_resources(manifests: &[Manifest]) -> Vec<ResourceInfo> {
    #[derive(serde::Deserialize)]
    struct Crd {
        spec: Spec,
    }
    #[derive(serde::Deserialize)]
    struct Spec {
        group: String,
        names: Names,
        #[serde(default)]
        scope: Option<String>,
        #[serde(default)]
        versions: Vec<Version>,
        #[serde(default)]
        version: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Names {
        kind: String,
        plural: String,
    }
    #[derive(serde::Deserialize)]
    struct Version {
        name: String,
        #[serde(default = "yes")]
        served: bool,
    }
    fn yes() -> bool {
        true
    }
    let mut out = Vec::new();
    for m in manifests {
        if m.group() != "apiextensions.k8s.io" || m.kind != "CustomResourceDefinition" {
            continue;
        }
        let Ok(crd) = serde_json::from_str::<Crd>(&m.body) else { continue };
        let spec = crd.spec;
        let namespaced = spec.scope.as_deref() != Some("Cluster");
        let versions: Vec<String> = if spec.versions.is_empty() {
            spec.version.into_iter().collect()
        } else {
            spec.versions.into_iter().filter(|v| v.served).map(|v| v.name).collect()
        };
        for v in versions {
            out.push(ResourceInfo {
                group: spec.group.clone(),
                version: v,
                kind: spec.names.kind.clone(),
                plural: spec.names.plural.clone(),
                namespaced,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::Origin;
    use serde_json::json;

    #[test]
    fn urls() {
        let r = ResourceInfo::test("apps", "v1", "Deployment", "deployments", true);
        assert_eq!(r.url_path(Some("x")), "/apis/apps/v1/namespaces/x/deployments");
        assert_eq!(r.url_path(None), "/apis/apps/v1/deployments");
        let r = ResourceInfo::test("", "v1", "Namespace", "namespaces", false);
        assert_eq!(r.url_path(Some("x")), "/api/v1/namespaces");
        assert_eq!(r.api_version(), "v1");
    }

    #[test]
    fn crd_kinds_from_bundle() {
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Cluster",
                     "names": {"kind": "Widget", "plural": "widgets"},
                     "versions": [{"name": "v1", "served": true}, {"name": "v0", "served": false}]}});
        let ms = Manifest::from_value(Origin { file: "c.yaml".into(), index: 0 }, crd).unwrap();
        let rs = crd_resources(&ms);
        assert_eq!(rs, vec![ResourceInfo::test("example.com", "v1", "Widget", "widgets", false)]);
    }
}
