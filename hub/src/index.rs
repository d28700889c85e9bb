//! The committed status index: the last stored status of every cluster ×
//! bundle, a leaf module (domain types only) shared by the store writer,
//! which is its ONLY writer, and its readers (the state actor's cluster
//! entries, sessions and fleet queries).
//!
//! The writer feeds it after a commit and before answering anyone, so a
//! reader never sees a status that is not durable.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::domain::StatusRecord;

/// Statuses of one cluster, by bundle.
pub type BundleStatuses = BTreeMap<String, Arc<StatusRecord>>;

/// One cluster's committed statuses. Readers hold it; only
/// [`StatusIndex::put`] (the store writer) changes it.
#[derive(Default)]
pub struct ClusterStatuses(ArcSwap<BundleStatuses>);

impl ClusterStatuses {
    /// The last committed status of each bundle on this cluster.
    pub fn get(&self) -> Arc<BundleStatuses> {
        self.0.load_full()
    }

    fn put(&self, statuses: &[StatusRecord]) {
        let mut m = (*self.0.load_full()).clone();
        for s in statuses {
            m.insert(s.status.bundle.clone(), Arc::new(s.clone()));
        }
        self.0.store(Arc::new(m));
    }
}

/// Every cluster's committed statuses.
#[derive(Default)]
pub struct StatusIndex {
    clusters: Mutex<HashMap<String, Arc<ClusterStatuses>>>,
    /// Signalled after every [`StatusIndex::put`]: the state actor decides
    /// active rollouts when statuses change, not only on its timer.
    changed: tokio::sync::Notify,
}

impl StatusIndex {
    /// An index holding what the store loaded at start: (cluster, status).
    pub fn from_loaded(loaded: Vec<(String, StatusRecord)>) -> Self {
        let index = Self::default();
        let mut by_cluster: HashMap<String, Vec<StatusRecord>> = HashMap::new();
        for (c, s) in loaded {
            by_cluster.entry(c).or_default().push(s);
        }
        for (c, s) in by_cluster {
            index.put(&c, &s);
        }
        index
    }

    /// The statuses of `cluster` (created empty if unknown); readers keep it.
    pub fn cluster(&self, cluster: &str) -> Arc<ClusterStatuses> {
        self.clusters.lock().entry(cluster.to_string()).or_default().clone()
    }

    /// Record committed statuses (the store writer only, after a commit).
    pub(crate) fn put(&self, cluster: &str, statuses: &[StatusRecord]) {
        self.cluster(cluster).put(statuses);
        // One stored permit at most: a burst of puts wakes the waiter once.
        self.changed.notify_one();
    }

    /// Completes after the next [`StatusIndex::put`] (at once if one came
    /// since the last wait).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(bundle: &str, generation: u64) -> StatusRecord {
        let mut r = StatusRecord::default();
        r.status.bundle = bundle.into();
        r.status.generation = generation;
        r
    }

    #[test]
    fn readers_see_what_the_writer_puts_latest_wins() {
        let index = StatusIndex::from_loaded(vec![("c1".into(), rec("a", 1))]);
        let reader = index.cluster("c1");
        assert_eq!(reader.get()["a"].status.generation, 1);
        index.put("c1", &[rec("a", 2), rec("b", 1)]);
        assert_eq!(reader.get()["a"].status.generation, 2);
        assert_eq!(reader.get().len(), 2);
        assert!(index.cluster("c2").get().is_empty());
    }
}
