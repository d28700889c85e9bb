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
