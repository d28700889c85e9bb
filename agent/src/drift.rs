//! Drift watchers: one metadata-only list+watch per resource type that some
//! bundle's inventory holds, cluster-wide, selecting objects that carry the
//! bundle label. Events are reduced to what drift detection needs (key,
//! resourceVersion, generation, labels, annotations, parsed lean: even
//! managedFields are never allocated) and sent to the controller; whole
//! objects are never kept. The set of watches follows the inventories
//! (bounded by the number of distinct resource types). A watch resumes from
//! its last resourceVersion (bookmarks keep it fresh) and relists on 410 Gone.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{ListParams, WatchParams};
use kube::core::{Request, WatchEvent};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::kubeapi::{LeanMeta, MetaOnly};
use crate::objects::ObjKey;
use crate::resource::ResourceInfo;
use convoy_core::backoff::Backoff;

/// What a watch saw.
#[derive(Debug, Clone)]
pub enum DriftSignal {
    /// An object with the bundle label was added or changed (or listed).
    Seen {
        /// The object.
        key: ObjKey,
        /// Its metadata.
        meta: Box<MetaOnly>,
    },
    /// An object was deleted, or lost the bundle label.
    Gone {
        /// The object.
        key: ObjKey,
    },
    /// A (re)list of a resource type finished: these objects exist; tracked
    /// objects of that type not among them are gone.
    Relisted {
        /// The resource type (group, kind).
        group: String,
        /// Kind.
        kind: String,
        /// Objects present.
        present: HashSet<ObjKey>,
    },
}

/// Identity of a watch: one per (group, kind).
type WatchId = (String, String);

/// The running watches.
pub struct Watchers {
    client: kube::Client,
    tx: mpsc::Sender<DriftSignal>,
    shutdown: CancellationToken,
    running: HashMap<WatchId, (CancellationToken, JoinHandle<()>)>,
}

impl Watchers {
    /// No watches yet; signals go to `tx`.
    pub fn new(client: kube::Client, tx: mpsc::Sender<DriftSignal>, shutdown: CancellationToken) -> Self {
        Self { client, tx, shutdown, running: HashMap::new() }
    }

    /// Watch exactly these resource types.
    pub fn ensure(&mut self, wanted: &HashSet<ResourceInfo>) {
        let mut by_id: HashMap<WatchId, &ResourceInfo> = HashMap::new();
        for r in wanted {
            by_id.entry((r.group.clone(), r.kind.clone())).or_insert(r);
        }
        self.running.retain(|id, (token, _)| {
            let keep = by_id.contains_key(id);
            if !keep {
                token.cancel();
            }
            keep
        });
        for (id, res) in by_id {
            if self.running.contains_key(&id) {
                continue;
            }
            let token = self.shutdown.child_token();
            let span = tracing::info_span!("drift-watch", group = %res.group, kind = %res.kind);
            let task = tokio::spawn(
                watch(self.client.clone(), res.clone(), self.tx.clone(), token.clone()).instrument(span),
            );
            self.running.insert(id, (token, task));
        }
    }

    /// Stop every watch and wait for them.
    pub async fn stop(&mut self) {
        for (_, (token, task)) in self.running.drain() {
            token.cancel();
            let _ = task.await;
        }
    }
}

fn key_of(res: &ResourceInfo, m: &LeanMeta) -> ObjKey {
    ObjKey {
        group: res.group.clone(),
        kind: res.kind.clone(),
        namespace: m.namespace.clone().filter(|_| res.namespaced),
        name: m.name.clone().unwrap_or_default(),
    }
}

#[derive(Debug, Clone, Deserialize)]
struct LeanList {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<MetaOnly>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default, rename = "continue")]
    continue_: Option<String>,
}

/// List every labelled object (paginated); their keys and metadata, and the
/// list's resourceVersion to watch from.
async fn list(
    client: &kube::Client,
    req: &Request,
    res: &ResourceInfo,
) -> Result<(Vec<MetaOnly>, String), kube::Error> {
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().labels(convoy_core::BUNDLE_LABEL).limit(200);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let r = req.list_metadata(&lp).map_err(kube::Error::BuildRequest)?;
        let page: LeanList = client.request(r).await?;
        items.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(t) => token = Some(t),
            None => {
                let rv = page.metadata.resource_version.unwrap_or_default();
                tracing::debug!(kind = %res.kind, objects = items.len(), %rv, "listed");
                return Ok((items, rv));
            }
        }
    }
}

enum WatchEnd {
    /// The resourceVersion is too old: list again.
    Gone,
    /// The stream ended (timeout) or failed: watch again from the last version.
    Again,
}

async fn watch(
    client: kube::Client,
    res: ResourceInfo,
    tx: mpsc::Sender<DriftSignal>,
    cancel: CancellationToken,
) {
    let req = Request::new(res.url_path(None));
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut rv: Option<String> = None;
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let version = match rv.clone() {
            Some(v) => v,
            None => {
                let listed = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = list(&client, &req, &res) => r,
                };
                match listed {
                    Ok((items, version)) => {
                        let mut present = HashSet::with_capacity(items.len());
                        for m in items {
                            let key = key_of(&res, &m.metadata);
                            present.insert(key.clone());
                            if tx.send(DriftSignal::Seen { key, meta: Box::new(m) }).await.is_err() {
                                return;
                            }
                        }
                        let relisted = DriftSignal::Relisted {
                            group: res.group.clone(),
                            kind: res.kind.clone(),
                            present,
                        };
                        if tx.send(relisted).await.is_err() {
                            return;
                        }
                        rv = Some(version.clone());
                        version
                    }
                    Err(error) => {
                        let d = backoff.next_delay();
                        tracing::debug!(%error, retry_ms = d.as_millis() as u64, "drift list failed");
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(d) => continue,
                        }
                    }
                }
            }
        };
        let end = tokio::select! {
            _ = cancel.cancelled() => return,
            e = watch_once(&client, &req, &res, &version, &tx, &mut rv) => e,
        };
        match end {
            Ok(WatchEnd::Gone) => {
                rv = None;
                backoff.reset();
            }
            Ok(WatchEnd::Again) => backoff.reset(),
            Err(error) => {
                let d = backoff.next_delay();
                tracing::debug!(%error, retry_ms = d.as_millis() as u64, "drift watch failed");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(d) => {}
                }
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}

async fn watch_once(
    client: &kube::Client,
    req: &Request,
    res: &ResourceInfo,
    version: &str,
    tx: &mpsc::Sender<DriftSignal>,
    rv: &mut Option<String>,
) -> Result<WatchEnd, kube::Error> {
    let wp = WatchParams::default().labels(convoy_core::BUNDLE_LABEL).timeout(290);
    let r = req.watch_metadata(&wp, version).map_err(kube::Error::BuildRequest)?;
    let stream = client.request_events::<MetaOnly>(r).await?;
    let mut stream = std::pin::pin!(stream);
    let res_of = |m: &MetaOnly| m.metadata.resource_version.clone();
    while let Some(ev) = stream.next().await {
        let signal = match ev? {
            WatchEvent::Added(m) | WatchEvent::Modified(m) => {
                *rv = res_of(&m).or(rv.take());
                let key = key_of(res, &m.metadata);
                DriftSignal::Seen { key, meta: Box::new(m) }
            }
            WatchEvent::Deleted(m) => {
                *rv = res_of(&m).or(rv.take());
                let key = key_of(res, &m.metadata);
                DriftSignal::Gone { key }
            }
            WatchEvent::Bookmark(b) => {
                *rv = Some(b.metadata.resource_version);
                continue;
            }
            WatchEvent::Error(s) if s.code == 410 => return Ok(WatchEnd::Gone),
            WatchEvent::Error(s) => return Err(kube::Error::Api(s)),
        };
        if tx.send(signal).await.is_err() {
            return Ok(WatchEnd::Again);
        }
    }
    Ok(WatchEnd::Again)
}
