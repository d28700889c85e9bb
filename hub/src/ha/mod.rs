//! Active-active hub replicas on a shared store (etcd): what another
//! replica committed, decoded and turned into changes of this replica's
//! in-memory state ([`changes`], pure), and the follower task that feeds
//! them from the store's watch to the state actor and the status index
//! ([`follow`]).
//!
//! Architecture invariant: a replica learns about other replicas' commits
//! ONLY through the store's change feed (an etcd watch started at the
//! revision its state was loaded at), never by polling; its own commits are
//! skipped there (it applied them before publishing).

pub mod artifacts;
pub mod changes;
pub mod follow;
pub mod locks;
pub mod standby;

pub use changes::{RemoteChange, RemotePlan, plan};

use std::sync::Arc;

use convoy_core::config::FleetConfig;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::pipeline::SourcePipeline;
use crate::store::Store;

/// What the state actor knows of the other replicas: whether it leads
/// (runs the rollouts' state machines), which bundles it signs (those of
/// the sources whose lock it holds: base generations and per-cluster
/// variants), and where to fetch a base artifact it never built. The
/// default is a hub on its own: it leads and signs everything.
#[derive(Clone, Default)]
pub struct Coordination {
    /// Leadership and the locks held.
    pub leadership: locks::Leadership,
    /// The other replicas' artifacts (a shared store only).
    pub peers: Option<Arc<artifacts::PeerArtifacts>>,
    /// Digests whose fetch failed lately, and when: not tried again within
    /// [`FETCH_RETRY`], so the state actor does not wait on a dead peer
    /// for every cluster it places.
    pub failed_fetches: Arc<parking_lot::Mutex<std::collections::HashMap<String, std::time::Instant>>>,
}

/// How long a failed fetch of a base artifact from the peers is not tried again.
pub const FETCH_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a cluster another replica heard from counts as connected for
/// the rollouts this replica leads: replicas store a cluster's liveness when
/// its agent connects and then every minute while it stays
/// ([`crate::writer`]), so two and a half periods.
pub const PRESENCE_WINDOW_MS: i64 = 150_000;

/// Whether a cluster last heard from at `last_seen` (by any replica,
/// through the change feed) counts as connected at `now`.
pub fn connected_elsewhere(last_seen: i64, now: i64) -> bool {
    last_seen > 0 && now.saturating_sub(last_seen) <= PRESENCE_WINDOW_MS
}

impl Coordination {
    /// Whether this replica signs the generations of a bundle built from
    /// `source`, base and per-cluster variants: the holder of the source's
    /// lock (it built the base, so it has its bytes), or the leader for a
    /// source without a lock. A hub alone signs everything.
    pub fn signs_bundle(&self, fleet: &FleetConfig, source: &str) -> bool {
        if fleet.sources.contains_key(source) {
            self.leadership.signs_for(source)
        } else {
            self.leadership.is_leader()
        }
    }

    /// The file of artifact `digest` fetched from a peer replica (checked
    /// against the digest), for a replica that never built it.
    pub async fn fetch(&self, digest: &str) -> crate::Result<std::path::PathBuf> {
        let Some(p) = &self.peers else {
            return Err(crate::domain::Rejection::NotFound(format!(
                "artifact {digest} is not stored on the hub"
            ))
            .into());
        };
        if self.failed_fetches.lock().get(digest).is_some_and(|at| at.elapsed() < FETCH_RETRY) {
            return Err(crate::domain::Rejection::NotFound(format!(
                "artifact {digest}: fetching it from the peer replicas failed less than {FETCH_RETRY:?} ago"
            ))
            .into());
        }
        let got = p.path(digest).await;
        let mut failed = self.failed_fetches.lock();
        match &got {
            Ok(_) => {
                failed.remove(digest);
            }
            Err(_) => {
                failed.retain(|_, at| at.elapsed() < FETCH_RETRY);
                failed.insert(digest.to_string(), std::time::Instant::now());
            }
        }
        got
    }
}

/// Named background tasks, as the runtime keeps them.
pub type Tasks = Vec<(&'static str, tokio::task::JoinHandle<()>)>;

/// Work gated on this replica's locks: on a shared store, `pipeline` is
/// wrapped so that only the holder of a source's lock polls and builds it,
/// and leadership follows the `leader` lock; on a store of its own (redb)
/// the hub does all the work and always leads. The tasks run until
/// `shutdown`.
pub fn gate(
    store: &dyn Store,
    pipeline: Arc<dyn SourcePipeline>,
    fleet: watch::Receiver<Arc<FleetConfig>>,
    shutdown: CancellationToken,
) -> (Arc<dyn SourcePipeline>, locks::Leadership, Tasks) {
    let (wanted_tx, wanted_rx) = watch::channel(locks::wanted(&fleet.borrow()));
    let Some(held) = store.coordinate(wanted_rx) else {
        return (pipeline, locks::Leadership::always(), Vec::new());
    };
    let mut f = fleet.clone();
    let stop = shutdown.clone();
    let wanted_task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                r = f.changed() => if r.is_err() { return },
            }
            let w = locks::wanted(&f.borrow_and_update());
            wanted_tx.send_if_modified(|cur| {
                let changed = *cur != w;
                *cur = w;
                changed
            });
        }
    });
    let leadership = locks::Leadership::from_held(held.clone());
    let (gated, standby_task) = standby::StandbyPipeline::wrap(pipeline, held, fleet, shutdown);
    (gated, leadership, vec![("replica_locks", wanted_task), ("source_standby", standby_task)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_counts_as_connected_elsewhere_within_the_presence_window() {
        assert!(connected_elsewhere(1_000, 1_000 + PRESENCE_WINDOW_MS));
        assert!(!connected_elsewhere(1_000, 1_001 + PRESENCE_WINDOW_MS));
        assert!(!connected_elsewhere(0, 10), "never heard from");
    }

    #[tokio::test]
    async fn the_source_holder_signs_a_bundle_and_the_leader_one_without_a_lock() {
        let fleet = FleetConfig::parse([(
            "f.yaml",
            "apiVersion: convoy.dev/v1\nkind: GitSource\nmetadata: {name: repo}\nspec: {url: \"https://x/r.git\"}\n",
        )])
        .unwrap();
        let (tx, rx) = watch::channel(std::collections::BTreeSet::from(["leader".to_string()]));
        let c = Coordination { leadership: locks::Leadership::from_held(rx), ..Default::default() };
        assert!(!c.signs_bundle(&fleet, "repo"), "another replica holds source/repo");
        assert!(c.signs_bundle(&fleet, "charts"), "no lock: the leader signs");
        tx.send(std::collections::BTreeSet::from(["source/repo".to_string()])).unwrap();
        assert!(c.signs_bundle(&fleet, "repo"));
        assert!(Coordination::default().signs_bundle(&fleet, "repo"), "a hub alone signs everything");
        assert!(c.fetch("sha256:00").await.is_err(), "no peers to fetch from");
    }
}
