//! The state store: a narrow, transactional trait and its redb implementation.
//!
//! The hub keeps its working indexes in memory, fed by single writer tasks;
//! the store is the source of truth after a restart. Every mutation goes
//! through [`Store::commit`], which applies a list of [`Write`]s in ONE
//! transaction, so a batch of agent statuses and the new last-acked sequence
//! number land together or not at all. A distributed backend (etcd, for several
//! hub replicas) implements the same trait.
//!
//! Calls block: callers run them in `spawn_blocking`.

#[cfg(feature = "etcd")]
mod etcd_store;
mod open;
mod redb_store;

use std::collections::BTreeSet;

#[cfg(feature = "etcd")]
pub use etcd_store::{EtcdOptions, EtcdStore};
pub use open::open_configured;
pub use redb_store::RedbStore;

use crate::Result;
use crate::domain::commands::CommandRecord;
use crate::domain::{
    AgentBatch, BatchOutcome, ClusterRecord, DeploymentRecord, EventFilter, EventRecord, Liveness,
    OutboxEntry, StatusRecord, StoredEvent, TokenRecord,
};

/// Everything the in-memory indexes are rebuilt from at start.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Registered clusters.
    pub clusters: Vec<ClusterRecord>,
    /// Bootstrap tokens (hashed).
    pub tokens: Vec<TokenRecord>,
    /// Last seen and agent version, by cluster.
    pub liveness: Vec<(String, Liveness)>,
    /// The current signed generation of each bundle.
    pub deployments: Vec<DeploymentRecord>,
    /// Bundles an operator suspended.
    pub suspended: BTreeSet<String>,
    /// Sources an operator suspended.
    pub suspended_sources: BTreeSet<String>,
    /// The last status of every cluster × bundle: (cluster, status).
    pub statuses: Vec<(String, StatusRecord)>,
    /// The id of the newest stored event (0 if none).
    pub last_event_id: u64,
    /// Progressive rollouts, by bundle (docs/rollouts.md).
    pub rollouts: Vec<crate::domain::rollout::RolloutRecord>,
    /// The signed per-cluster variants of bundles.
    pub variants: Vec<crate::domain::variants::VariantRecord>,
    /// Admin certificates the hub issued, revoked ones included.
    pub admin_certs: Vec<crate::domain::admins::AdminCertRecord>,
    /// Pending agent commands ([`crate::domain::commands`]), every cluster's.
    pub commands: Vec<CommandRecord>,
}

/// One mutation, applied inside a [`Store::commit`] transaction.
#[derive(Debug, Clone)]
pub enum Write {
    /// Insert or replace a cluster.
    PutCluster(ClusterRecord),
    /// Insert or replace a token.
    PutToken(TokenRecord),
    /// Insert or replace a bundle's current generation.
    PutDeployment(DeploymentRecord),
    /// Mark a bundle suspended (or not) by an operator.
    SetSuspended {
        /// The bundle.
        bundle: String,
        /// Suspended or resumed.
        suspended: bool,
    },
    /// Mark a source suspended (or not) by an operator.
    SetSourceSuspended {
        /// The source.
        source: String,
        /// Suspended or resumed.
        suspended: bool,
    },
    /// Record last seen / agent version of clusters.
    PutLiveness(Vec<(String, Liveness)>),
    /// Store statuses that carry no sequence number (seeded from a Hello's
    /// applied list when the hub has none for that bundle).
    SeedStatuses {
        /// The cluster.
        cluster: String,
        /// Statuses to store where none exists yet.
        statuses: Vec<StatusRecord>,
    },
    /// Insert or replace a bundle's rollout.
    PutRollout(Box<crate::domain::rollout::RolloutRecord>),
    /// Forget a bundle's rollout.
    DeleteRollout(String),
    /// Append events to the bounded log.
    AppendEvents(Vec<(String, EventRecord)>),
    /// Store an agent's outbox entries with seq above the stored one, and the
    /// new last seq, idempotently.
    AgentBatch(AgentBatch),
    /// Insert or replace the signed variant (bundle, variant key).
    PutVariant(crate::domain::variants::VariantRecord),
    /// Insert or replace an admin certificate record (keyed by serial).
    PutAdminCert(crate::domain::admins::AdminCertRecord),
    /// Store a pending agent command, unless its cluster already has
    /// [`crate::domain::commands::MAX_PENDING`] (counted in the store, so the
    /// bound holds across replicas): [`WriteOutcome::CommandQueued`] says
    /// which. A refusal fails nothing else of the commit.
    PutCommand(CommandRecord),
    /// A pending command expired: if it is still stored (not answered, not
    /// expired by another replica), delete it and append `event` (its report);
    /// else do nothing. [`WriteOutcome::Events`] holds the event if stored.
    ExpireCommand {
        /// The cluster.
        cluster: String,
        /// The command's request id.
        request_id: String,
        /// The event reporting it ([`crate::domain::commands::expired_event`]).
        event: EventRecord,
    },
}

impl Write {
    /// At most how many keys this write puts, deletes or conditions on in a
    /// store transaction (etcd bounds each of those per transaction by
    /// `--max-txn-ops`). An event counts its record, its two index keys and
    /// the three keys of the event it pushes out of the ring. Pure.
    pub fn ops(&self) -> usize {
        const EVENT: usize = 6;
        // An event answering a command also deletes the command's record.
        let answers = |e: &OutboxEntry| matches!(e, OutboxEntry::Event(ev) if crate::domain::commands::answered(ev).is_some());
        match self {
            Write::PutLiveness(rows) => rows.len(),
            Write::SeedStatuses { statuses, .. } => statuses.len(),
            Write::AppendEvents(evs) => 1 + EVENT * evs.len(),
            Write::AgentBatch(b) => {
                let events = b.entries.iter().filter(|(_, e)| matches!(e, OutboxEntry::Event(_))).count();
                // The outbox position (read and put), old epochs deleted, the next event id.
                2 + (b.entries.len() - events)
                    + EVENT * events
                    + b.entries.iter().filter(|(_, e)| answers(e)).count()
            }
            // The cluster's pending commands listed (a range condition), the put.
            Write::PutCommand(_) => 2,
            // The record read and deleted, the event.
            Write::ExpireCommand { .. } => 2 + EVENT,
            Write::PutCluster(_)
            | Write::PutToken(_)
            | Write::PutDeployment(_)
            | Write::SetSuspended { .. }
            | Write::SetSourceSuspended { .. }
            | Write::PutRollout(_)
            | Write::DeleteRollout(_)
            | Write::PutVariant(_)
            | Write::PutAdminCert(_) => 1,
        }
    }
}

/// What one [`Write`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Nothing to report.
    Done,
    /// Statuses that were actually stored (SeedStatuses).
    Seeded {
        /// The cluster.
        cluster: String,
        /// The statuses stored.
        statuses: Vec<StatusRecord>,
    },
    /// The events as stored, with ids (AppendEvents).
    Events(Vec<StoredEvent>),
    /// The result of an AgentBatch.
    Batch(BatchOutcome),
    /// Whether a PutCommand was stored (false: its cluster has
    /// [`crate::domain::commands::MAX_PENDING`] pending commands already).
    CommandQueued(bool),
}

/// The hub's durable state.
pub trait Store: Send + Sync + 'static {
    /// Read everything the in-memory indexes need.
    fn load(&self) -> Result<Loaded>;
    /// The last stored outbox seq of a cluster's epoch (0 for an unknown epoch).
    fn last_seq(&self, cluster: &str, epoch: u64) -> Result<u64>;
    /// Events matching a filter, oldest first, at most `filter.limit` (the newest).
    fn list_events(&self, filter: &EventFilter) -> Result<Vec<StoredEvent>>;
    /// The pending commands of one cluster ([`Write::PutCommand`]), expired
    /// ones included (the caller compares with its clock).
    fn commands(&self, cluster: &str) -> Result<Vec<CommandRecord>>;
    /// Apply `writes` in order in one transaction: all or nothing. `now` stamps
    /// stored statuses and events.
    fn commit(&self, writes: Vec<Write>, now_unix_ms: i64) -> Result<Vec<WriteOutcome>>;
    /// The commits of other hub replicas sharing this store, from the
    /// revision the last [`Store::load`] read at ([`crate::ha`]). `None` for a
    /// store only this hub writes (redb).
    fn follow(&self) -> Option<tokio::sync::mpsc::Receiver<crate::ha::follow::Feed>> {
        None
    }
    /// Hold the locks named by `wanted` that no other replica holds, under
    /// this replica's lease ([`crate::ha::locks`]); the receiver says which
    /// are held now (all are lost with the lease). `None` for a store only
    /// this hub uses (redb): it does all the work.
    fn coordinate(
        &self,
        wanted: tokio::sync::watch::Receiver<std::collections::BTreeSet<String>>,
    ) -> Option<tokio::sync::watch::Receiver<std::collections::BTreeSet<String>>> {
        let _ = wanted;
        None
    }
    /// Whether other hub replicas share this store (etcd).
    fn is_shared(&self) -> bool {
        false
    }
    /// Tell the other replicas where this one serves gRPC (for artifact
    /// bytes, [`crate::ha::artifacts`]); kept while the replica holds its lease.
    fn advertise(&self, endpoint: &str) -> Result<()> {
        let _ = endpoint;
        Ok(())
    }
    /// The gRPC endpoints the other live replicas advertised.
    fn peers(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
    /// At most how many [`Write::ops`] one commit may carry (etcd's
    /// `--max-txn-ops`, less room for the commit's own keys); unbounded for
    /// redb. The writer never groups more into one commit, and splits
    /// liveness rows to fit.
    fn max_commit_ops(&self) -> usize {
        usize::MAX
    }
    /// How many commits were computed again since the store opened, because
    /// another hub replica changed a key they read (0 for redb).
    fn commit_retries(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::commands::CommandRecord;

    #[test]
    fn command_writes_count_their_keys() {
        let rec = CommandRecord {
            cluster: "c".into(),
            request_id: "r".into(),
            bundle: "web".into(),
            generation: 1,
            timeout_seconds: 0,
            created_unix_ms: 0,
            expires_unix_ms: 0,
        };
        assert_eq!(Write::PutCommand(rec.clone()).ops(), 2, "the cluster's listing and the put");
        let expire = Write::ExpireCommand {
            cluster: "c".into(),
            request_id: "r".into(),
            event: crate::domain::commands::expired_event(&rec, 0),
        };
        assert_eq!(expire.ops(), 8, "the record read and deleted, and an event");
        let mut answer = EventRecord { reason: "TestSucceeded".into(), ..Default::default() };
        answer.details.insert("requestId".into(), "r".into());
        let batch = |e: EventRecord| {
            Write::AgentBatch(AgentBatch {
                cluster: "c".into(),
                epoch: 1,
                entries: vec![(1, OutboxEntry::Event(e))],
            })
        };
        assert_eq!(batch(answer.clone()).ops(), 9, "an answer also deletes its command");
        answer.reason = "Applied".into();
        assert_eq!(batch(answer).ops(), 8);
    }
}
