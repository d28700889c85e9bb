//! Planning: resolving a bundle's manifests against the cluster's API
//! (discovery, or a CRD of the same bundle), then normalizing them (namespace,
//! labels, compact JSON, hash) off the async threads. Nothing is written.

use std::collections::HashMap;

use super::{Engine, Plan};
use crate::discovery::crd_resources;
use crate::objects::{DesiredObject, Manifest, ObjKey};
use crate::resource::ResourceInfo;
use crate::{Error, Result};

impl Engine {
    /// Resolve every manifest against the cluster's API. Nothing is written.
    /// Fails, naming file and document, when a kind is not served and no CRD
    /// of the bundle defines it, or when two documents describe one object.
    pub async fn plan(
        &self,
        bundle: &str,
        revision: &str,
        generation: u64,
        digest: &str,
        manifests: Vec<Manifest>,
        target_namespace: Option<&str>,
    ) -> Result<Plan> {
        let from_crds = crd_resources(&manifests);
        let default_ns = target_namespace.filter(|s| !s.is_empty()).unwrap_or("default").to_string();
        let mut resolved: Vec<(Manifest, ResourceInfo)> = Vec::with_capacity(manifests.len());
        for m in manifests {
            let found = self.discovery.resolve(&m.api_version, &m.kind).await?;
            let info = match found {
                Some(i) => i,
                None => match from_crds.iter().find(|r| r.api_version() == m.api_version && r.kind == m.kind)
                {
                    Some(i) => i.clone(),
                    None => {
                        return Err(Error::Manifest {
                            file: m.origin.file.clone(),
                            index: m.origin.index,
                            message: format!(
                                "{} {}: the cluster does not serve kind {} in {} and no CustomResourceDefinition in the bundle defines it",
                                m.kind, m.name, m.kind, m.api_version
                            ),
                        });
                    }
                },
            };
            resolved.push((m, info));
        }
        // Normalizing (parse, label, namespace, serialize, hash) is CPU work:
        // do it off the async threads, on up to four threads.
        let bundle_name = bundle.to_string();
        let built: Vec<DesiredObject> =
            tokio::task::spawn_blocking(move || build_objects(resolved, &bundle_name, &default_ns))
                .await
                .map_err(|e| Error::Config(format!("planning task failed: {e}")))??;
        let mut objects = Vec::with_capacity(built.len());
        let mut seen: HashMap<ObjKey, (String, usize)> = HashMap::new();
        for obj in built {
            if let Some((file, index)) = seen.get(&obj.key) {
                return Err(Error::Manifest {
                    file: obj.origin.file.clone(),
                    index: obj.origin.index,
                    message: format!("{} is also defined in {file} document {index}", obj.key),
                });
            }
            seen.insert(obj.key.clone(), (obj.origin.file.clone(), obj.origin.index));
            objects.push(obj);
        }
        objects.sort_by_key(|o| o.stage);
        Ok(Plan {
            bundle: bundle.into(),
            revision: revision.into(),
            generation,
            digest: digest.into(),
            objects,
        })
    }
}

/// Build desired objects in order, on up to four threads for large bundles.
fn build_objects(
    resolved: Vec<(Manifest, ResourceInfo)>,
    bundle: &str,
    default_ns: &str,
) -> Result<Vec<DesiredObject>> {
    let total: usize = resolved.iter().map(|(m, _)| m.body.len()).sum();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 4);
    if threads == 1 || total < 256 * 1024 || resolved.len() < 2 {
        return resolved.into_iter().map(|(m, i)| DesiredObject::build(m, i, bundle, default_ns)).collect();
    }
    // Contiguous chunks of about equal size keep the order.
    let per = total.div_ceil(threads);
    let mut chunks: Vec<Vec<(Manifest, ResourceInfo)>> = vec![Vec::new()];
    let mut acc = 0;
    for item in resolved {
        acc += item.0.body.len();
        chunks.last_mut().expect("a chunk").push(item);
        if acc >= per && chunks.len() < threads {
            chunks.push(Vec::new());
            acc = 0;
        }
    }
    let results: Vec<Result<Vec<DesiredObject>>> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|c| {
                s.spawn(move || {
                    c.into_iter().map(|(m, i)| DesiredObject::build(m, i, bundle, default_ns)).collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(Error::Config("planning thread panicked".into()))))
            .collect()
    });
    let mut out = Vec::new();
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}
