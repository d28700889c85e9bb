//! Drift watchers: one metadata-only watch per resource type that some
//! bundle's inventory holds, cluster-wide, selecting objects that carry the
//! bundle label. Events are reduced to what drift detection needs (key,
//! resourceVersion, generation, labels, annotations) and sent to the
//! controller; whole objects are never kept. The set of watches follows the
//! inventories (bounded by the number of distinct resource types).

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::discovery::ResourceInfo;
use crate::kubeapi::MetaOnly;
use crate::objects::ObjKey;

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

    /// How many watches run.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    /// Whether none run.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Stop every watch and wait for them.
    pub async fn stop(&mut self) {
        for (_, (token, task)) in self.running.drain() {
            token.cancel();
            let _ = task.await;
        }
    }
}

fn key_of(res: &ResourceInfo, m: &PartialObjectMeta<DynamicObject>) -> ObjKey {
    ObjKey {
        group: res.group.clone(),
        kind: res.kind.clone(),
        namespace: m.metadata.namespace.clone().filter(|_| res.namespaced),
        name: m.metadata.name.clone().unwrap_or_default(),
    }
}

async fn watch(
    client: kube::Client,
    res: ResourceInfo,
    tx: mpsc::Sender<DriftSignal>,
    cancel: CancellationToken,
) {
    let ar = res.api_resource();
    let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client, &ar);
    let cfg = watcher::Config::default().labels(convoy_core::BUNDLE_LABEL).page_size(100);
    let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
    let mut present: HashSet<ObjKey> = HashSet::new();
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => return,
            ev = stream.next() => ev,
        };
        let Some(ev) = ev else { return };
        let signal = match ev {
            Ok(Event::Init) => {
                present.clear();
                continue;
            }
            Ok(Event::InitApply(m)) => {
                let key = key_of(&res, &m);
                present.insert(key.clone());
                DriftSignal::Seen { key, meta: Box::new(MetaOnly { metadata: m.metadata }) }
            }
            Ok(Event::InitDone) => DriftSignal::Relisted {
                group: res.group.clone(),
                kind: res.kind.clone(),
                present: std::mem::take(&mut present),
            },
            Ok(Event::Apply(m)) => {
                let key = key_of(&res, &m);
                DriftSignal::Seen { key, meta: Box::new(MetaOnly { metadata: m.metadata }) }
            }
            Ok(Event::Delete(m)) => DriftSignal::Gone { key: key_of(&res, &m) },
            Err(error) => {
                tracing::debug!(%error, "drift watch error; the watcher retries with backoff");
                continue;
            }
        };
        if tx.send(signal).await.is_err() {
            return;
        }
    }
}
