//! The follower task: takes the store's change feed (other replicas'
//! commits, [`crate::store::Store::follow`]) and hands each revision's
//! changes to the state actor, which applies them ([`crate::ha::plan`]) and
//! publishes, so agents connected to this replica get what another replica
//! committed. Admin certificates go to the admin registry, agent commands to
//! the command registry ([`crate::commands`]), which sends them to the
//! cluster's session when it is here.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::RemoteChange;
use crate::state::StateHandle;

/// One message of the store's change feed.
#[derive(Debug, Clone)]
pub enum Feed {
    /// What other replicas committed at one store revision.
    Changes {
        /// The store revision.
        revision: i64,
        /// The decoded records, in commit order.
        changes: Vec<RemoteChange>,
    },
    /// The feed lost history (etcd compaction): the whole state, read again.
    Resync(Vec<RemoteChange>),
}

/// Forward the feed to the state actor until it ends or `shutdown`.
pub fn spawn(
    mut feed: mpsc::Receiver<Feed>,
    state: StateHandle,
    admins: std::sync::Arc<crate::admins::AdminRegistry>,
    commands: std::sync::Arc<crate::commands::Commands>,
    clock: convoy_core::clock::SharedClock,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        info!("following the other hub replicas' commits");
        loop {
            let msg = tokio::select! {
                m = feed.recv() => m,
                _ = shutdown.cancelled() => return,
            };
            let Some(msg) = msg else { return };
            let changes = match msg {
                Feed::Changes { revision, changes } => {
                    debug!(revision, changes = changes.len(), "changes from another replica");
                    changes
                }
                Feed::Resync(changes) => {
                    info!(records = changes.len(), "reloaded the shared state after a lost change feed");
                    changes
                }
            };
            // Admin certificates go to the admin registry (a revocation on
            // another replica is refused here at once); the rest to the state actor.
            let (certs, changes): (Vec<_>, Vec<_>) =
                changes.into_iter().partition(|c| matches!(c, RemoteChange::AdminCert(_)));
            let certs: Vec<_> = certs
                .into_iter()
                .filter_map(|c| match c {
                    RemoteChange::AdminCert(r) => Some(r),
                    _ => None,
                })
                .collect();
            admins.apply_remote(&certs);
            // Agent commands go to the command registry, which hands a new
            // one to the cluster's session if it is on this replica.
            let (cmds, changes): (Vec<_>, Vec<_>) = changes
                .into_iter()
                .partition(|c| matches!(c, RemoteChange::Command(_) | RemoteChange::CommandDeleted { .. }));
            if !cmds.is_empty() {
                commands.apply_remote(cmds, &state.view(), clock.now_ms());
            }
            if state.apply_remote(changes).await.is_err() {
                return;
            }
        }
    })
}
