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
pub use etcd_store::{COMMIT_MARGIN_BYTES, ETCD_DEFAULT_MAX_REQUEST_BYTES, EtcdOptions, EtcdStore};
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
        const EVENT: usize = EVENT_OPS;
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

    /// An upper bound of the bytes this write adds to an etcd transaction
    /// request: each key it puts, deletes or compares (without the store's
    /// key prefix, which [`Store::max_commit_bytes`] accounts for) with
    /// [`KEY_OVERHEAD_BYTES`] of framing, and each value as the store
    /// encodes it (JSON; timestamps the store stamps counted at their
    /// longest). Pure, but it encodes every record: the writer asks only
    /// when the store bounds bytes.
    pub fn bytes(&self) -> usize {
        let key = |prefix: &str, name: &str| key_bytes(prefix.len() + name.len());
        match self {
            Write::PutCluster(c) => key("clusters/", &c.name) + json_len(c),
            // Compared (the stored uses) and put.
            Write::PutToken(t) => 2 * key("tokens/", &t.id) + json_len(t),
            Write::PutDeployment(d) => 2 * key("deployments/", &d.bundle) + json_len(d),
            Write::SetSuspended { bundle, .. } => key("suspended/", bundle),
            Write::SetSourceSuspended { source, .. } => key("suspended-sources/", source),
            Write::PutLiveness(rows) => rows.iter().map(|(name, l)| liveness_row_bytes(name, l)).sum(),
            Write::SeedStatuses { cluster, statuses } => {
                statuses.iter().map(|s| seed_bytes(cluster, s)).sum()
            }
            Write::PutRollout(r) => 2 * key("rollouts/", &r.bundle) + json_len(r),
            Write::DeleteRollout(bundle) => key("rollouts/", bundle),
            Write::AppendEvents(evs) if evs.is_empty() => 0,
            Write::AppendEvents(evs) => {
                NEXT_EVENT_ID_BYTES + evs.iter().map(|(cluster, e)| event_bytes(cluster, e)).sum::<usize>()
            }
            Write::AgentBatch(b) => {
                let events = b.entries.iter().any(|(_, e)| matches!(e, OutboxEntry::Event(_)));
                // An event answering a command also deletes the command's record.
                let answered: usize = b
                    .entries
                    .iter()
                    .filter_map(|(_, e)| match e {
                        OutboxEntry::Event(ev) => crate::domain::commands::answered(ev),
                        _ => None,
                    })
                    .map(|id| key("commands/", &format!("{}/{id}", b.cluster)))
                    .sum();
                batch_base_bytes(&b.cluster)
                    + b.entries.iter().map(|(_, e)| entry_bytes(&b.cluster, e)).sum::<usize>()
                    + if events { NEXT_EVENT_ID_BYTES } else { 0 }
                    + answered
            }
            Write::PutVariant(v) => key("variants/", &v.store_key()) + json_len(v),
            Write::PutAdminCert(r) => key("admin-certs/", &r.serial) + json_len(r),
            // The cluster's pending commands listed (a range compare), the put.
            Write::PutCommand(c) => {
                key("commands/", &format!("{}/", c.cluster)) + key("commands/", &c.store_key()) + json_len(c)
            }
            // The record read and deleted, the event appended.
            Write::ExpireCommand { cluster, request_id, event } => {
                2 * key("commands/", &format!("{cluster}/{request_id}"))
                    + NEXT_EVENT_ID_BYTES
                    + event_bytes(cluster, event)
            }
        }
    }

    /// [`Write::ops`] and, if `with_bytes`, [`Write::bytes`] (else 0).
    pub fn size(&self, with_bytes: bool) -> CommitSize {
        CommitSize { ops: self.ops(), bytes: if with_bytes { self.bytes() } else { 0 } }
    }
}

/// How much of a store transaction writes take, or may take: etcd bounds
/// a transaction both by its operations (`--max-txn-ops`) and by the size
/// of its request (`--max-request-bytes`). The writer's group commits and
/// liveness flushes stay within the store's [`Store::commit_bound`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitSize {
    /// Keys put, deleted or compared ([`Write::ops`]).
    pub ops: usize,
    /// An upper bound of the encoded request bytes ([`Write::bytes`]).
    pub bytes: usize,
}

impl CommitSize {
    /// No bound (redb).
    pub const UNBOUNDED: CommitSize = CommitSize { ops: usize::MAX, bytes: usize::MAX };

    /// Both dimensions added (saturating).
    pub fn plus(self, other: CommitSize) -> CommitSize {
        CommitSize { ops: self.ops.saturating_add(other.ops), bytes: self.bytes.saturating_add(other.bytes) }
    }

    /// Whether this size is within `bound` in both dimensions.
    pub fn fits(self, bound: CommitSize) -> bool {
        self.ops <= bound.ops && self.bytes <= bound.bytes
    }

    /// Whether byte sizes need computing at all under `self` as a bound
    /// (they cost a JSON encoding of every record; redb has no bound).
    pub fn bounds_bytes(self) -> bool {
        self.bytes != usize::MAX
    }
}

/// The bytes one key takes in an etcd request besides the key itself: the
/// protobuf framing of its operation (a put, a delete or a compare: tags,
/// lengths, the compared revision or a lease). An upper bound.
pub const KEY_OVERHEAD_BYTES: usize = 32;

/// The longest cluster or bundle name (`convoy_core::identity::validate_name`):
/// the estimate for the index keys of an event pushed out of the ring,
/// whose names a commit does not know before it reads that event.
const NAME_MAX: usize = 253;

/// Room for a decimal `u64`/`i64` (ids, sequence numbers, timestamps).
const NUMBER_MAX: usize = 20;

/// The length of `v` encoded as JSON, as the stores encode records.
fn json_len<T: serde::Serialize>(v: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Encoding a record into memory only fails for non-string map keys, which no record has.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// A key mention: the key (without the store's prefix) and its framing.
fn key_bytes(key_len: usize) -> usize {
    key_len + KEY_OVERHEAD_BYTES
}

/// The bytes of appending one event: the next-id key is counted once per
/// write by the caller. The record and its two index keys, and the three
/// keys of the event it pushes out of the ring (compared, then deleted).
fn event_bytes(cluster: &str, event: &EventRecord) -> usize {
    let stored = StoredEvent {
        id: u64::MAX,
        cluster: cluster.to_string(),
        event: event.clone(),
        stored_unix_ms: i64::MIN,
    };
    let id_key = "events/".len() + NUMBER_MAX;
    let record = key_bytes(id_key) + json_len(&stored);
    let indexes = key_bytes("ev-cluster//".len() + cluster.len() + NUMBER_MAX)
        + key_bytes("ev-bundle//".len() + event.bundle.len() + NUMBER_MAX);
    let old = 2 * key_bytes(id_key)
        + key_bytes("ev-cluster//".len() + NAME_MAX + NUMBER_MAX)
        + key_bytes("ev-bundle//".len() + NAME_MAX + NUMBER_MAX);
    record + indexes + old
}

/// [`Write::bytes`] of an agent batch of `cluster` besides its entries:
/// the outbox position, compared and put, and its cluster's epochs listed
/// (a range compare: the key and its end).
fn batch_base_bytes(cluster: &str) -> usize {
    let seq = 2 * key_bytes("seq//".len() + cluster.len() + NUMBER_MAX) + NUMBER_MAX;
    seq + key_bytes(2 * ("seq//".len() + cluster.len()))
}

/// [`Write::bytes`] of one outbox entry of an agent batch of `cluster`
/// (the next event id is counted once per batch, by the caller).
fn entry_bytes(cluster: &str, entry: &OutboxEntry) -> usize {
    match entry {
        OutboxEntry::Status(s) => {
            key_bytes("status//".len() + cluster.len() + s.status.bundle.len()) + json_len(s) + NUMBER_MAX
        }
        OutboxEntry::Event(e) => event_bytes(cluster, e),
    }
}

/// How many of `entries`, from the first, one [`Write::AgentBatch`] of
/// `cluster` carries within `bound` ([`Write::size`] of that batch): the
/// rest go in the next batch. At least one of a non-empty list, so that an
/// entry over the bound on its own is still tried (and its error reported).
/// Pure.
pub fn agent_batch_fitting(cluster: &str, entries: &[(u64, OutboxEntry)], bound: CommitSize) -> usize {
    let with_bytes = bound.bounds_bytes();
    let base = CommitSize { ops: 2, bytes: if with_bytes { batch_base_bytes(cluster) } else { 0 } };
    let mut events = false;
    prefix_fitting(entries, base, bound, |(_, e)| {
        let is_event = matches!(e, OutboxEntry::Event(_));
        let ops = if is_event { EVENT_OPS } else { 1 };
        let bytes = if !with_bytes {
            0
        } else if is_event && !events {
            entry_bytes(cluster, e) + NEXT_EVENT_ID_BYTES
        } else {
            entry_bytes(cluster, e)
        };
        events |= is_event;
        CommitSize { ops, bytes }
    })
}

/// How many of `statuses`, from the first, one [`Write::SeedStatuses`] of
/// `cluster` carries within `bound` (at least one of a non-empty list). Pure.
pub fn seed_fitting(cluster: &str, statuses: &[StatusRecord], bound: CommitSize) -> usize {
    let with_bytes = bound.bounds_bytes();
    prefix_fitting(statuses, CommitSize::default(), bound, |s| CommitSize {
        ops: 1,
        bytes: if with_bytes { seed_bytes(cluster, s) } else { 0 },
    })
}

/// The longest prefix of `items` whose sizes, added to `base`, fit `bound`;
/// at least one item of a non-empty list.
fn prefix_fitting<T>(
    items: &[T],
    base: CommitSize,
    bound: CommitSize,
    mut size: impl FnMut(&T) -> CommitSize,
) -> usize {
    if bound == CommitSize::UNBOUNDED {
        return items.len();
    }
    let mut total = base;
    for (i, item) in items.iter().enumerate() {
        total = total.plus(size(item));
        if !total.fits(bound) {
            return i.max(1);
        }
    }
    items.len()
}

/// [`Write::bytes`] of one status of a [`Write::SeedStatuses`]: its key,
/// compared (absent) and put, and the status with its stamped time.
fn seed_bytes(cluster: &str, s: &StatusRecord) -> usize {
    2 * key_bytes("status//".len() + cluster.len() + s.status.bundle.len()) + json_len(s) + NUMBER_MAX
}

/// [`Write::ops`] of one event: its record, its two index keys and the
/// three keys of the event it pushes out of the ring.
const EVENT_OPS: usize = 6;

/// The next event id, read (compared) and put once per write that appends events.
const NEXT_EVENT_ID_BYTES: usize = 2 * ("meta/next-event-id".len() + KEY_OVERHEAD_BYTES) + NUMBER_MAX;

/// [`Write::bytes`] of one row of a [`Write::PutLiveness`].
pub fn liveness_row_bytes(cluster: &str, l: &Liveness) -> usize {
    key_bytes("liveness/".len() + cluster.len()) + json_len(l)
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
    /// At most how many [`Write::bytes`] one commit may carry (etcd's
    /// `--max-request-bytes`, less room for the key prefix, the commit's
    /// own keys and the request's framing); unbounded for redb. The writer
    /// never groups more into one commit, and splits liveness rows to fit.
    fn max_commit_bytes(&self) -> usize {
        usize::MAX
    }
    /// Both bounds of one commit.
    fn commit_bound(&self) -> CommitSize {
        CommitSize { ops: self.max_commit_ops(), bytes: self.max_commit_bytes() }
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
        // Bytes: each key at least with its framing, the record as encoded.
        let key = |k: &str| k.len() + KEY_OVERHEAD_BYTES;
        assert_eq!(
            Write::PutCommand(rec.clone()).bytes(),
            key("commands/c/") + key("commands/c/r") + serde_json::to_vec(&rec).unwrap().len()
        );
        assert!(expire.bytes() >= 2 * key("commands/c/r") + NEXT_EVENT_ID_BYTES);
        assert_eq!(
            batch(answer.clone()).bytes(),
            // Not an answer, its reason as long.
            batch(EventRecord { reason: "TESTSUCCEEDED".into(), ..answer.clone() }).bytes()
                + key("commands/c/r"),
            "an answer also deletes its command's key"
        );
        answer.reason = "Applied".into();
        assert_eq!(batch(answer).ops(), 8);
    }
}
