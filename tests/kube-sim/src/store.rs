//! In-memory object storage: one lock per group-resource (held only for the
//! short commit, never across `.await`), a global resourceVersion counter, and
//! per-resource event history (a ring buffer) plus a broadcast channel for watches.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::registry::GroupResource;

/// Watch event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change to one object.
#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    pub typ: EventType,
    pub gr: GroupResource,
    pub object: Arc<Value>,
    /// The object before the change (for MODIFIED/DELETED).
    pub old: Option<Arc<Value>>,
}

/// (namespace, name); namespace is "" for cluster-scoped objects.
pub type Key = (String, String);

struct TypeStore {
    objects: BTreeMap<Key, Arc<Value>>,
    history: VecDeque<Arc<Event>>,
    /// Events with rv <= compacted are no longer in history.
    compacted: u64,
    tx: broadcast::Sender<Arc<Event>>,
}

/// Why a commit failed.
#[derive(Debug, PartialEq)]
pub enum CommitError {
    /// The stored object changed (or appeared/disappeared) since it was read.
    Changed,
}

/// Where a watch starts.
pub enum WatchStart {
    /// Replay of stored events after the requested version, then live events.
    Events(Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>),
    /// The requested version is older than the history: 410 Gone.
    Gone,
}

/// All objects.
pub struct Store {
    rv: AtomicU64,
    history_limit: usize,
    types: RwLock<HashMap<GroupResource, Arc<Mutex<TypeStore>>>>,
    /// Every event of every type, for the simulated controllers.
    all_tx: broadcast::Sender<Arc<Event>>,
}

impl Store {
    pub fn new(history_limit: usize) -> Store {
        let (all_tx, _) = broadcast::channel(65536);
        Store { rv: AtomicU64::new(1), history_limit, types: RwLock::new(HashMap::new()), all_tx }
    }

    fn ts(&self, gr: &GroupResource) -> Arc<Mutex<TypeStore>> {
        if let Some(t) = self.types.read().get(gr) {
            return t.clone();
        }
        let mut w = self.types.write();
        w.entry(gr.clone())
            .or_insert_with(|| {
                let (tx, _) = broadcast::channel(16384);
                Arc::new(Mutex::new(TypeStore {
                    objects: BTreeMap::new(),
                    history: VecDeque::new(),
                    compacted: self.current_rv(),
                    tx,
                }))
            })
            .clone()
    }

    /// The latest resourceVersion handed out.
    pub fn current_rv(&self) -> u64 {
        self.rv.load(Ordering::SeqCst)
    }

    pub fn subscribe_all(&self) -> broadcast::Receiver<Arc<Event>> {
        self.all_tx.subscribe()
    }

    pub fn get(&self, gr: &GroupResource, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.ts(gr).lock().objects.get(&(ns.to_string(), name.to_string())).cloned()
    }

    /// Objects in a namespace ("" = all), sorted by key, and the list resourceVersion.
    pub fn list(&self, gr: &GroupResource, ns: Option<&str>) -> (Vec<Arc<Value>>, u64) {
        let t = self.ts(gr);
        let t = t.lock();
        let rv = self.current_rv();
        let items = match ns {
            Some(ns) => t
                .objects
                .range((ns.to_string(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, v)| v.clone())
                .collect(),
            None => t.objects.values().cloned().collect(),
        };
        (items, rv)
    }

    /// Every group-resource that has a store.
    pub fn resources(&self) -> Vec<GroupResource> {
        self.types.read().keys().cloned().collect()
    }

    /// Count of all objects (for stats).
    pub fn object_count(&self) -> usize {
        self.types.read().values().map(|t| t.lock().objects.len()).sum()
    }

    /// Store `new` (or delete when None) if the stored object still has the
    /// resourceVersion of `expected` (None = must not exist). Assigns and
    /// returns the new resourceVersion.
    pub fn commit(
        &self,
        gr: &GroupResource,
        key: &Key,
        expected: Option<&Arc<Value>>,
        new: Option<Value>,
    ) -> Result<(u64, Option<Arc<Value>>), CommitError> {
        let t = self.ts(gr);
        let mut t = t.lock();
        let cur = t.objects.get(key).cloned();
        let same = match (&cur, expected) {
            (None, None) => true,
            (Some(c), Some(e)) => Arc::ptr_eq(c, e) || rv_of(c) == rv_of(e),
            _ => false,
        };
        if !same {
            return Err(CommitError::Changed);
        }
        let rv = self.rv.fetch_add(1, Ordering::SeqCst) + 1;
        let (typ, obj) = match new {
            Some(mut v) => {
                if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.insert("resourceVersion".into(), Value::String(rv.to_string()));
                }
                let v = Arc::new(v);
                t.objects.insert(key.clone(), v.clone());
                (if cur.is_some() { EventType::Modified } else { EventType::Added }, v)
            }
            None => {
                let Some(c) = cur.clone() else { return Err(CommitError::Changed) };
                t.objects.remove(key);
                // the DELETED event carries the final state with a new resourceVersion
                let mut v = (*c).clone();
                if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.insert("resourceVersion".into(), Value::String(rv.to_string()));
                }
                (EventType::Deleted, Arc::new(v))
            }
        };
        let ev = Arc::new(Event { rv, typ, gr: gr.clone(), object: obj.clone(), old: cur });
        t.history.push_back(ev.clone());
        while t.history.len() > self.history_limit {
            if let Some(e) = t.history.pop_front() {
                t.compacted = e.rv;
            }
        }
        let _ = t.tx.send(ev.clone());
        let _ = self.all_tx.send(ev);
        Ok((rv, if typ == EventType::Deleted { None } else { Some(obj) }))
    }

    /// Start a watch after `from_rv` (None = now, without replay).
    pub fn watch(&self, gr: &GroupResource, from_rv: Option<u64>) -> WatchStart {
        let t = self.ts(gr);
        let t = t.lock();
        let rx = t.tx.subscribe();
        match from_rv {
            None => WatchStart::Events(vec![], rx),
            Some(rv) => {
                if rv < t.compacted {
                    return WatchStart::Gone;
                }
                let evs = t.history.iter().filter(|e| e.rv > rv).cloned().collect();
                WatchStart::Events(evs, rx)
            }
        }
    }

    /// The events still in the watch history of `gr`, oldest first (what a
    /// watch from the oldest retained resourceVersion replays).
    pub fn history(&self, gr: &GroupResource) -> Vec<Arc<Event>> {
        self.ts(gr).lock().history.iter().cloned().collect()
    }

    /// Snapshot of current objects plus a subscription that starts right after them.
    pub fn snapshot_and_watch(
        &self,
        gr: &GroupResource,
    ) -> (Vec<Arc<Value>>, u64, broadcast::Receiver<Arc<Event>>) {
        let t = self.ts(gr);
        let t = t.lock();
        let rx = t.tx.subscribe();
        (t.objects.values().cloned().collect(), self.current_rv(), rx)
    }

    /// Drop every history entry (tests of 410 Gone use it through `KubeSim::compact`).
    pub fn compact(&self) {
        let rv = self.current_rv();
        for t in self.types.read().values() {
            let mut t = t.lock();
            t.history.clear();
            t.compacted = rv;
        }
    }

    /// Load objects (from a snapshot) without events.
    pub fn load(&self, gr: &GroupResource, objects: Vec<Value>) {
        let t = self.ts(gr);
        let mut t = t.lock();
        for o in objects {
            let ns = o.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("").to_string();
            let name = o.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
            let rv = rv_of(&o);
            self.rv.fetch_max(rv, Ordering::SeqCst);
            t.objects.insert((ns, name), Arc::new(o));
        }
        t.compacted = self.current_rv();
    }

    /// Every object of every type (for snapshots).
    pub fn dump(&self) -> Vec<(GroupResource, Vec<Arc<Value>>)> {
        self.types
            .read()
            .iter()
            .map(|(gr, t)| (gr.clone(), t.lock().objects.values().cloned().collect()))
            .collect()
    }
}

/// metadata.resourceVersion as a number.
pub fn rv_of(v: &Value) -> u64 {
    v.pointer("/metadata/resourceVersion").and_then(Value::as_str).and_then(|s| s.parse().ok()).unwrap_or(0)
}
