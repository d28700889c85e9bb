//! [`Store`] on etcd (feature `etcd`): small records under one key prefix,
//! every [`Store::commit`] one etcd transaction, fenced on the keys it read
//! (optimistic concurrency, as etcd's STM). Artifacts never go into etcd.
//!
//! Layout under `prefix` (`/convoy/` by default):
//!
//! | key | value |
//! |---|---|
//! | `meta/schema` | the layout version |
//! | `meta/commit` | `<counter> <replica id>`: every commit puts it, naming its replica (never compared) |
//! | `meta/next-event-id` | the next event id |
//! | `clusters/<name>`, `tokens/<id>`, `liveness/<name>`, `deployments/<bundle>` | JSON records |
//! | `variants/<bundle>/<variant key>` | JSON per-cluster variant records |
//! | `suspended/<bundle>`, `suspended-sources/<source>` | empty |
//! | `rollouts/<bundle>` | JSON rollout record (state and held deployments) |
//! | `status/<cluster>/<bundle>` | JSON status |
//! | `seq/<cluster>/<epoch:020>` | last stored outbox seq |
//! | `events/<id:020>`, `ev-cluster/<cluster>/<id:020>`, `ev-bundle/<bundle>/<id:020>` | the event ring and its indexes |
//! | `commands/<cluster>/<request id>` | JSON pending agent command (`convoy test`), deleted with its answer or expiry |
//!
//! `commands/` was added without a new schema version: a hub that does not
//! know it neither reads nor deletes it (its change feed skips unknown
//! tables), so it may run beside newer replicas; commands answered through
//! such a replica stay until they expire and are then reported expired.
//!
//! A commit first reads every key its writes decide on (a token's uses, a
//! bundle's generation, a rollout's version, an outbox's stored seq, the
//! next event id), 128 keys per round trip, then reads through an overlay
//! (later writes of the same commit see earlier ones). It sends one
//! transaction whose condition is its read set: each key read still has the
//! mod revision it had when read (or is still absent), and no key under a
//! prefix it listed changed since. If another replica changed one of them
//! in between, the transaction fails and the whole commit is computed again
//! from fresh reads. So commits are serializable across replicas with no
//! lock held between them, and commits that touch different keys (status
//! batches of different clusters, say) never make each other retry. Writes
//! that decide on nothing they read (a status, a cluster record) are
//! last-writer-wins in etcd's order. Commits that append events all read
//! `meta/next-event-id`, so those serialize among themselves.
//!
//! Hubs up to commit 0d36d23 fenced every commit on `meta/commit` alone (the
//! layout, schema v1, is the same). Every commit still puts it, so such a
//! replica's commit still fails when any other commit landed in between,
//! and the two kinds can run side by side during a rolling upgrade.
//!
//! etcd limits one transaction to `--max-txn-ops` operations (128 by default;
//! the writes and the conditions count separately) and `--max-request-bytes`
//! (1.5 MiB). A group commit of many statuses could need more (a batch of N
//! clusters writes 2N keys and is conditioned on N outbox seq keys): the
//! store tells the writer both bounds ([`Store::max_commit_ops`],
//! [`Store::max_commit_bytes`], from `store.maxTxnOps` and
//! `store.maxTxnBytes`), and the writer never groups beyond them. A commit
//! over the server's limits (one job too large on its own, or limits set
//! above the server's) fails as a whole with the server's error: nothing is
//! half-written. [`EtcdStore::last_request_bytes`] measures what was sent.
//! The store's other requests are small: reads go [`READS_PER_TXN`] keys per
//! transaction, locks, the lease and the schema one key each; whole tables
//! are read in pages; the event ring and an outbox's old epochs are trimmed
//! inside the commit that pushes them out (counted in [`Write::ops`] and
//! [`Write::bytes`]).
//!
//! Two records are also fenced on their stored value, since replicas decide
//! on their in-memory copy: a token's use counts the stored uses (a
//! single-use token used by another replica in between fails the commit),
//! and a bundle's generation must be above the stored one, or equal with the
//! same digest (so generations stay unique and monotonic per bundle).
//!
//! Every replica holds an etcd lease (`store.leaseTtl`, 10 s by default),
//! kept alive every third of its TTL, with `replicas/<replica id>` attached
//! to it. Every commit's transaction also compares that key's lease with the
//! replica's current lease: a replica whose lease expired (a partition, a
//! long pause) cannot write, and a replica that has not heard etcd renew its
//! lease for two thirds of the TTL stops writing and gives up its locks on
//! its own, before etcd could hand them to another replica. Locks
//! (`locks/<name>`, [`Store::coordinate`]) are keys created only if absent,
//! attached to the lease: they vanish with it, and the others' watch of
//! `locks/` makes one of them take the lock at once.
//!
//! [`Store::follow`] is the change feed of several replicas: an etcd watch
//! of the prefix, from the revision [`Store::load`] read everything at (one
//! consistent revision), that skips this replica's own commits (their
//! `meta/commit` names it) and decodes the rest ([`crate::ha::changes`]).
//!
//! The trait is blocking (callers use `spawn_blocking`); the store runs its
//! client on a small runtime of its own and waits for each answer.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, PutOptions,
    SortOrder, SortTarget, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use std::sync::Arc;
use tokio::sync::{Notify, mpsc, watch};

use crate::domain::commands::CommandRecord;
use crate::domain::{DeploymentRecord, Rejection, TokenRecord};
use crate::ha::follow::Feed;

use super::{Loaded, Store, Write, WriteOutcome};
use crate::domain::{
    AgentBatch, BatchOutcome, EventFilter, EventRecord, OutboxEntry, StoredEvent, fresh_entries,
};
use crate::{Error, Result};

/// The layout version this hub writes under the prefix.
pub const SCHEMA_VERSION: u64 = 1;

/// How many times a commit is recomputed when another replica committed in between.
const COMMIT_ATTEMPTS: usize = 64;

/// Where etcd is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// `http://host:port` or `https://host:port` client URLs.
    pub endpoints: Vec<String>,
    /// Key prefix; every key the hub writes starts with it.
    pub prefix: String,
    /// CA PEM to verify etcd's certificate (https endpoints).
    pub ca_pem: Option<String>,
    /// Client certificate and key PEM, for etcd's client-certificate auth.
    pub identity_pem: Option<(String, String)>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// The replica's lease TTL (whole seconds, at least 1): how long its
    /// locks outlive it, and how long a cut-off replica may still write.
    pub lease_ttl: Duration,
    /// etcd's `--max-txn-ops`: no commit puts, deletes or compares more keys.
    pub max_txn_ops: usize,
    /// etcd's `--max-request-bytes`: no commit's request is larger
    /// ([`EtcdStore::max_commit_bytes`] says what room that leaves).
    pub max_txn_bytes: usize,
}

/// etcd's default `--max-request-bytes` (1.5 MiB).
pub const ETCD_DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// The room a commit keeps under `--max-request-bytes` besides its writes'
/// [`Write::bytes`] and the key prefix: the commit's own keys
/// (`meta/commit`, the lease condition and the failure branch's read), an
/// outbox's finished epochs deleted with its first batch (as many as the
/// ops margin of [`Store::max_commit_ops`]), the raft request's header
/// (request id, user name) and the framing of the request itself.
pub const COMMIT_MARGIN_BYTES: usize = 8 * 1024;

impl EtcdOptions {
    /// Plain options for `endpoints` under `prefix`.
    pub fn new(endpoints: Vec<String>, prefix: &str) -> Self {
        Self {
            endpoints,
            prefix: prefix.to_string(),
            ca_pem: None,
            identity_pem: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            lease_ttl: Duration::from_secs(10),
            max_txn_ops: 10_000,
            max_txn_bytes: ETCD_DEFAULT_MAX_REQUEST_BYTES,
        }
    }
}

/// The etcd-backed store.
pub struct EtcdStore {
    rt: Option<tokio::runtime::Runtime>,
    client: Client,
    prefix: String,
    event_capacity: u64,
    /// This process's id, written in `meta/commit` by its commits.
    replica: String,
    /// The revision the last [`Store::load`] read at (0: not loaded).
    loaded_rev: AtomicI64,
    /// The lease this replica writes under (0: lost, being granted again).
    lease: watch::Receiver<i64>,
    /// Commits sent by this replica (the counter in `meta/commit`).
    commits: Arc<AtomicU64>,
    /// etcd's `--max-txn-ops`.
    max_txn_ops: usize,
    /// etcd's `--max-request-bytes`.
    max_txn_bytes: usize,
    /// The encoded size of the last commit request sent ([`txn_request_len`]).
    last_request: Arc<AtomicUsize>,
    /// Commits computed again because a key they read changed meanwhile.
    retries: Arc<AtomicU64>,
    /// Wakes the lease task when a commit found the lease gone at etcd.
    lease_gone: Arc<Notify>,
    /// The gRPC endpoint this replica advertises (`peers/<id>`, on the lease).
    advertised: Arc<std::sync::Mutex<Option<String>>>,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropping a runtime may block; the hub drops its store on an async thread.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn etcd_err(context: &str) -> impl Fn(etcd_client::Error) -> Error + '_ {
    move |e| Error::Store(format!("etcd: {context}: {e}"))
}

fn enc<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Store(format!("encode: {e}")))
}

fn dec<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| Error::Store(format!("decode: {e}")))
}

fn id_key(id: u64) -> String {
    format!("{id:020}")
}

/// The key after every key starting with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl EtcdStore {
    /// Connect, check the layout version (refusing a newer one) and record ours.
    pub fn open(opts: &EtcdOptions, event_capacity: u64) -> Result<Self> {
        if opts.endpoints.is_empty() {
            return Err(Error::Config("store.etcd.endpoints: at least one endpoint is needed".into()));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-store")
            .enable_all()
            .build()
            .map_err(|e| Error::Store(format!("etcd store runtime: {e}")))?;
        let mut co = ConnectOptions::new()
            .with_connect_timeout(opts.connect_timeout)
            .with_timeout(opts.request_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if opts.ca_pem.is_some() || opts.identity_pem.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &opts.ca_pem {
                tls = tls.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &opts.identity_pem {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            co = co.with_tls(tls);
        }
        let endpoints = opts.endpoints.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(Client::connect(endpoints, Some(co)).await);
        });
        let client = rx
            .recv()
            .map_err(|_| Error::Store("etcd store runtime stopped".into()))?
            .map_err(etcd_err("connect"))?;
        let replica = format!("{:016x}", rand::random::<u64>());
        let (lease_tx, mut lease) = watch::channel(0i64);
        let ttl = opts.lease_ttl.max(Duration::from_secs(1));
        let lease_gone = Arc::new(Notify::new());
        let advertised = Arc::new(std::sync::Mutex::new(None));
        rt.spawn(lease_loop(
            client.clone(),
            opts.prefix.clone(),
            replica.clone(),
            ttl,
            lease_tx,
            lease_gone.clone(),
            advertised.clone(),
        ));
        // The first lease, before any write (every write is fenced on it).
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let within = opts.connect_timeout + opts.request_timeout;
        rt.spawn(async move {
            let got = tokio::time::timeout(within, lease.wait_for(|l| *l != 0)).await;
            let _ = tx.send((got.is_ok_and(|r| r.is_ok()), lease));
        });
        let (granted, lease) = rx.recv().map_err(|_| Error::Store("etcd store runtime stopped".into()))?;
        if !granted {
            return Err(Error::Store("etcd: no lease granted to this replica in time".into()));
        }
        let store = Self {
            rt: Some(rt),
            client,
            prefix: opts.prefix.clone(),
            event_capacity: event_capacity.max(1),
            replica,
            loaded_rev: AtomicI64::new(0),
            lease,
            commits: Arc::new(AtomicU64::new(0)),
            max_txn_ops: opts.max_txn_ops,
            max_txn_bytes: opts.max_txn_bytes,
            last_request: Arc::new(AtomicUsize::new(0)),
            retries: Arc::new(AtomicU64::new(0)),
            lease_gone,
            advertised,
        };
        store.check_schema()?;
        Ok(store)
    }

    /// Run `f` on the store's runtime and wait for it.
    fn run<T: Send + 'static>(&self, f: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.as_ref().expect("runtime until drop").spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().map_err(|_| Error::Store("etcd store runtime stopped".into()))?
    }

    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}{rest}", self.prefix).into_bytes()
    }

    fn check_schema(&self) -> Result<()> {
        let mut c = self.client.clone();
        let key = self.key("meta/schema");
        self.run(async move {
            let got = c.get(key.clone(), None).await.map_err(etcd_err("read schema"))?;
            match got.kvs().first() {
                Some(kv) => {
                    let v: u64 = std::str::from_utf8(kv.value()).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
                    if v > SCHEMA_VERSION {
                        return Err(Error::Store(format!(
                            "the etcd prefix holds state written by a newer hub (schema v{v}; this hub knows \
                             v{SCHEMA_VERSION}): run the newer hub, or restore an etcd snapshot made with this version"
                        )));
                    }
                    Ok(())
                }
                None => {
                    let txn = Txn::new()
                        .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(key, SCHEMA_VERSION.to_string(), None)]);
                    c.txn(txn).await.map_err(etcd_err("write schema"))?;
                    Ok(())
                }
            }
        })
    }

    /// The encoded size of the last commit request this store sent (0 if
    /// none): what etcd compares with `--max-request-bytes`, less the raft
    /// header's few dozen bytes.
    pub fn last_request_bytes(&self) -> usize {
        self.last_request.load(Ordering::SeqCst)
    }

    /// This replica's id (in `meta/commit` after each of its commits).
    pub fn replica_id(&self) -> &str {
        &self.replica
    }

    /// Every key under `prefix` at revision `rev`, [`RANGE_PAGE`] keys per
    /// request, so that no answer outgrows gRPC's message limit (200,000
    /// statuses of 10,000 clusters × 20 bundles are far above 4 MiB).
    async fn range(c: &mut Client, prefix: Vec<u8>, rev: i64) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let end = prefix_end(&prefix);
        let mut from = prefix;
        let mut out = Vec::new();
        loop {
            let mut resp = c
                .get(
                    from.clone(),
                    Some(GetOptions::new().with_range(end.clone()).with_revision(rev).with_limit(RANGE_PAGE)),
                )
                .await
                .map_err(etcd_err("range"))?;
            let more = resp.more();
            let kvs = resp.take_kvs();
            let Some(last) = kvs.last().map(|kv| kv.key().to_vec()) else { break };
            out.extend(kvs.into_iter().map(|kv| (kv.key().to_vec(), kv.value().to_vec())));
            if !more {
                break;
            }
            from = [last, vec![0]].concat();
        }
        Ok(out)
    }

    /// The current revision of the etcd cluster.
    async fn revision(c: &mut Client, key: Vec<u8>) -> Result<i64> {
        let r = c.get(key, Some(GetOptions::new().with_count_only())).await.map_err(etcd_err("revision"))?;
        Ok(r.header().map(|h| h.revision()).unwrap_or(0))
    }
}

/// A key and its new value (`None`: deleted).
type KeyChange = (Vec<u8>, Option<Vec<u8>>);

/// Watch `prefix` from `rev + 1` on, forever: send the other replicas'
/// commits, one message per revision; after a compaction or a lost watch
/// that cannot resume, read everything again ([`Feed::Resync`]).
async fn follow_loop(client: Client, prefix: String, replica: String, mut rev: i64, tx: mpsc::Sender<Feed>) {
    let commit_key = format!("{prefix}meta/commit");
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut c = client.clone();
        let opts = WatchOptions::new().with_prefix().with_start_revision(rev + 1);
        let mut watcher = c.watch_client().max_decoding_message_size(WATCH_MESSAGE_LIMIT);
        let mut stream = match watcher.watch(prefix.clone(), Some(opts)).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "etcd watch: cannot start; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        loop {
            let resp = match stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "etcd watch: stream failed; resuming at revision {}", rev + 1);
                    break;
                }
            };
            backoff = Duration::from_millis(100);
            if resp.compact_revision() > 0 || resp.canceled() {
                // Changes were compacted away: read the whole state again.
                tracing::warn!(
                    compacted = resp.compact_revision(),
                    "etcd watch: history compacted past this replica; reloading the state"
                );
                match resync(&mut c, &prefix).await {
                    Ok((r, changes)) => {
                        rev = r;
                        if tx.send(Feed::Resync(changes)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "etcd watch: reload failed; retrying");
                        tokio::time::sleep(backoff).await;
                    }
                }
                break;
            }
            // Group by revision: one commit is one revision, never split.
            let mut by_rev: BTreeMap<i64, Vec<KeyChange>> = BTreeMap::new();
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let value = match ev.event_type() {
                    EventType::Put => Some(kv.value().to_vec()),
                    EventType::Delete => None,
                };
                by_rev.entry(kv.mod_revision()).or_default().push((kv.key().to_vec(), value));
            }
            for (r, events) in by_rev {
                rev = rev.max(r);
                let own = events.iter().any(|(k, v)| {
                    k == commit_key.as_bytes()
                        && v.as_deref().is_some_and(|v| {
                            std::str::from_utf8(v).ok().and_then(|s| s.split_whitespace().nth(1))
                                == Some(replica.as_str())
                        })
                });
                if own {
                    continue;
                }
                let mut changes = Vec::new();
                for (k, v) in events {
                    let rest = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                    match crate::ha::changes::decode(&rest, v.as_deref()) {
                        Ok(Some(ch)) => changes.push(ch),
                        Ok(None) => {}
                        Err(u) => tracing::warn!(key = %u.key, reason = %u.reason, revision = r,
                            "etcd watch: a record another replica wrote cannot be decoded; skipped"),
                    }
                }
                if !changes.is_empty() && tx.send(Feed::Changes { revision: r, changes }).await.is_err() {
                    return;
                }
            }
        }
        tokio::time::sleep(backoff).await;
    }
}

fn lease_lost(replica: &str) -> Error {
    Error::LeaseLost { replica: replica.to_string() }
}

/// Hold a lease for this replica for as long as the process lives: grant
/// it, attach `replicas/<id>` to it, keep it alive every third of `ttl`,
/// and publish its id (0 once it is lost: no renewal heard for two thirds
/// of `ttl`, or etcd said it expired). A lost lease is revoked (best
/// effort, to free its locks at once) and a new one granted.
async fn lease_loop(
    client: Client,
    prefix: String,
    replica: String,
    ttl: Duration,
    tx: watch::Sender<i64>,
    gone: Arc<Notify>,
    advertised: Arc<std::sync::Mutex<Option<String>>>,
) {
    let key = format!("{prefix}replicas/{replica}").into_bytes();
    let peer_key = format!("{prefix}peers/{replica}").into_bytes();
    let secs = ttl.as_secs().max(1) as i64;
    let renew = ttl / 3;
    let pause = renew.min(Duration::from_millis(500));
    let margin = ttl * 2 / 3;
    let mut old = 0i64;
    loop {
        let mut c = client.clone();
        if old != 0 {
            let _ = tokio::time::timeout(renew, c.lease_revoke(old)).await;
        }
        let granted = async {
            let id = c.lease_grant(secs, None).await?.id();
            c.put(key.clone(), replica.clone(), Some(PutOptions::new().with_lease(id))).await?;
            let endpoint = advertised.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(e) = endpoint {
                c.put(peer_key.clone(), e, Some(PutOptions::new().with_lease(id))).await?;
            }
            let (keeper, stream) = c.lease_keep_alive(id).await?;
            Ok::<_, etcd_client::Error>((id, keeper, stream))
        };
        let (id, mut keeper, mut stream) = match tokio::time::timeout(ttl, granted).await {
            Ok(Ok(g)) => g,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "etcd: cannot get a lease for this replica; retrying");
                tokio::time::sleep(pause).await;
                continue;
            }
            Err(_) => {
                tracing::warn!("etcd: no lease for this replica in time; retrying");
                continue;
            }
        };
        old = id;
        tracing::info!(lease = id, replica = %replica, "etcd lease held");
        if tx.send(id).is_err() {
            return;
        }
        let mut deadline = tokio::time::Instant::now() + margin;
        let mut tick = tokio::time::interval(renew);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if keeper.keep_alive().await.is_err() {
                        break;
                    }
                }
                m = stream.message() => match m {
                    Ok(Some(r)) if r.ttl() > 0 => deadline = tokio::time::Instant::now() + margin,
                    Ok(Some(_)) => {
                        tracing::warn!(lease = id, "etcd: this replica's lease expired");
                        break;
                    }
                    Ok(None) | Err(_) => break,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(lease = id, "etcd: lease not renewed in time; this replica stops writing");
                    break;
                }
                _ = gone.notified() => {
                    tracing::warn!(lease = id, "etcd: a commit found this replica's lease gone");
                    break;
                }
            }
        }
        if tx.send(0).is_err() {
            return;
        }
        tokio::time::sleep(pause).await;
    }
}

/// Take and give up `locks/<name>` keys under this replica's lease, as
/// `wanted` asks ([`crate::ha::locks::plan`]); publish the locks held. On a
/// new lease every lock is taken again from nothing. Wakes on a change of
/// `wanted`, of the lease, of any lock key (another replica's lock vanished
/// with its lease), and every `retry` anyway.
async fn lock_loop(
    client: Client,
    prefix: String,
    replica: String,
    mut lease: watch::Receiver<i64>,
    mut wanted: watch::Receiver<BTreeSet<String>>,
    held_tx: watch::Sender<BTreeSet<String>>,
    retry: Duration,
) {
    let locks = format!("{prefix}locks/");
    let mut held_under = 0i64;
    let mut held: BTreeSet<String> = BTreeSet::new();
    let mut watch_stream = None;
    loop {
        let lease_id = *lease.borrow_and_update();
        if lease_id != held_under {
            held.clear();
            held_under = lease_id;
        }
        if lease_id != 0 {
            let w = wanted.borrow_and_update().clone();
            let plan = crate::ha::locks::plan(&w, &held);
            let mut c = client.clone();
            for name in plan.release {
                let k = format!("{locks}{name}");
                let txn = Txn::new()
                    .when([Compare::lease(k.clone(), CompareOp::Equal, lease_id)])
                    .and_then([TxnOp::delete(k, None)]);
                if let Err(e) = c.txn(txn).await {
                    tracing::warn!(lock = %name, error = %e, "etcd: cannot release a lock; it ends with the lease");
                }
                held.remove(&name);
            }
            for name in plan.acquire {
                let k = format!("{locks}{name}");
                let txn = Txn::new()
                    .when([Compare::version(k.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(k, replica.clone(), Some(PutOptions::new().with_lease(lease_id)))]);
                match c.txn(txn).await {
                    Ok(r) if r.succeeded() => {
                        tracing::info!(lock = %name, "lock taken: this replica does the work");
                        held.insert(name);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(lock = %name, error = %e, "etcd: cannot take a lock; retrying"),
                }
            }
            if watch_stream.is_none() {
                let opts = WatchOptions::new().with_prefix();
                watch_stream = c.watch(locks.clone(), Some(opts)).await.ok();
            }
        } else {
            watch_stream = None;
        }
        held_tx.send_if_modified(|h| {
            let changed = *h != held;
            if changed {
                h.clone_from(&held);
            }
            changed
        });
        tokio::select! {
            r = lease.changed() => if r.is_err() { return },
            r = wanted.changed() => if r.is_err() { return },
            _ = held_tx.closed() => return,
            m = async {
                match watch_stream.as_mut() {
                    Some(s) => s.message().await,
                    None => std::future::pending().await,
                }
            } => if !matches!(m, Ok(Some(_))) { watch_stream = None },
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

/// Everything under `prefix` as changes, and the revision it was read at.
async fn resync(c: &mut Client, prefix: &str) -> Result<(i64, Vec<crate::ha::RemoteChange>)> {
    let rev = EtcdStore::revision(c, format!("{prefix}meta/schema").into_bytes()).await?;
    let mut changes = Vec::new();
    let mut suspended = BTreeSet::new();
    for table in [
        "clusters/",
        "tokens/",
        "deployments/",
        "status/",
        "liveness/",
        "suspended-sources/",
        "admin-certs/",
        "rollouts/",
        "variants/",
        "commands/",
    ] {
        for (k, v) in EtcdStore::range(c, format!("{prefix}{table}").into_bytes(), rev).await? {
            let rest = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            match crate::ha::changes::decode(&rest, Some(&v)) {
                Ok(Some(ch)) => changes.push(ch),
                Ok(None) => {}
                Err(u) => {
                    tracing::warn!(key = %u.key, reason = %u.reason, "reload: a record cannot be decoded; skipped")
                }
            }
        }
    }
    for (k, _) in EtcdStore::range(c, format!("{prefix}suspended/").into_bytes(), rev).await? {
        suspended.insert(String::from_utf8_lossy(&k[prefix.len() + "suspended/".len()..]).into_owned());
    }
    changes.push(crate::ha::RemoteChange::SuspendedSet(suspended));
    Ok((rev, changes))
}

impl EtcdStore {}

impl Store for EtcdStore {
    fn load(&self) -> Result<Loaded> {
        let mut c = self.client.clone();
        let p = self.prefix.clone();
        let (out, rev) = self.run(async move {
            // One revision for every read: a consistent state, and where the
            // change feed starts.
            let rev = Self::revision(&mut c, format!("{p}meta/schema").into_bytes()).await?;
            let mut out = Loaded::default();
            let key = |s: &str| format!("{p}{s}").into_bytes();
            let suffix =
                |k: &[u8], pre: &str| String::from_utf8_lossy(&k[p.len() + pre.len()..]).into_owned();
            for (_, v) in Self::range(&mut c, key("clusters/"), rev).await? {
                out.clusters.push(dec(&v)?);
            }
            for (_, v) in Self::range(&mut c, key("tokens/"), rev).await? {
                out.tokens.push(dec(&v)?);
            }
            for (_, v) in Self::range(&mut c, key("admin-certs/"), rev).await? {
                out.admin_certs.push(dec(&v)?);
            }
            for (k, v) in Self::range(&mut c, key("liveness/"), rev).await? {
                out.liveness.push((suffix(&k, "liveness/"), dec(&v)?));
            }
            for (_, v) in Self::range(&mut c, key("deployments/"), rev).await? {
                out.deployments.push(dec(&v)?);
            }
            for (_, v) in Self::range(&mut c, key("variants/"), rev).await? {
                out.variants.push(dec(&v)?);
            }
            for (k, _) in Self::range(&mut c, key("suspended/"), rev).await? {
                out.suspended.insert(suffix(&k, "suspended/"));
            }
            for (k, _) in Self::range(&mut c, key("suspended-sources/"), rev).await? {
                out.suspended_sources.insert(suffix(&k, "suspended-sources/"));
            }
            for (_, v) in Self::range(&mut c, key("rollouts/"), rev).await? {
                out.rollouts.push(dec(&v)?);
            }
            for (_, v) in Self::range(&mut c, key("commands/"), rev).await? {
                out.commands.push(dec(&v)?);
            }
            for (k, v) in Self::range(&mut c, key("status/"), rev).await? {
                let rest = suffix(&k, "status/");
                let cluster = rest.split_once('/').map(|(c, _)| c.to_string()).unwrap_or(rest);
                out.statuses.push((cluster, dec(&v)?));
            }
            let events = key("events/");
            let last = c
                .get(
                    events.clone(),
                    Some(
                        GetOptions::new()
                            .with_range(prefix_end(&events))
                            .with_revision(rev)
                            .with_sort(SortTarget::Key, SortOrder::Descend)
                            .with_limit(1)
                            .with_keys_only(),
                    ),
                )
                .await
                .map_err(etcd_err("last event"))?;
            out.last_event_id = last
                .kvs()
                .first()
                .and_then(|kv| std::str::from_utf8(&kv.key()[events.len()..]).ok()?.parse().ok())
                .unwrap_or(0);
            Ok((out, rev))
        })?;
        self.loaded_rev.store(rev, Ordering::SeqCst);
        Ok(out)
    }

    fn coordinate(
        &self,
        wanted: watch::Receiver<BTreeSet<String>>,
    ) -> Option<watch::Receiver<BTreeSet<String>>> {
        let (tx, rx) = watch::channel(BTreeSet::new());
        let rt = self.rt.as_ref()?;
        let retry = Duration::from_secs(1);
        rt.spawn(lock_loop(
            self.client.clone(),
            self.prefix.clone(),
            self.replica.clone(),
            self.lease.clone(),
            wanted,
            tx,
            retry,
        ));
        Some(rx)
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn advertise(&self, endpoint: &str) -> Result<()> {
        *self.advertised.lock().unwrap_or_else(|p| p.into_inner()) = Some(endpoint.to_string());
        let lease = *self.lease.borrow();
        if lease == 0 {
            // Put with the next lease.
            return Ok(());
        }
        let mut c = self.client.clone();
        let key = self.key(&format!("peers/{}", self.replica));
        let endpoint = endpoint.to_string();
        self.run(async move {
            c.put(key, endpoint, Some(PutOptions::new().with_lease(lease)))
                .await
                .map_err(etcd_err("advertise"))?;
            Ok(())
        })
    }

    fn max_commit_ops(&self) -> usize {
        // Room for the commit's own keys (`meta/commit`, the lease condition)
        // and an outbox's finished epochs deleted with its first batch.
        self.max_txn_ops.saturating_sub(16).max(1)
    }

    fn max_commit_bytes(&self) -> usize {
        commit_bytes_bound(self.max_txn_bytes, self.max_txn_ops, self.prefix.len())
    }

    fn commit_retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    fn peers(&self) -> Result<Vec<String>> {
        let mut c = self.client.clone();
        let prefix = self.key("peers/");
        let own = self.key(&format!("peers/{}", self.replica));
        self.run(async move {
            let r = c.get(prefix, Some(GetOptions::new().with_prefix())).await.map_err(etcd_err("peers"))?;
            Ok(r.kvs()
                .iter()
                .filter(|kv| kv.key() != own.as_slice())
                .filter_map(|kv| std::str::from_utf8(kv.value()).ok().map(str::to_string))
                .collect())
        })
    }

    fn follow(&self) -> Option<mpsc::Receiver<Feed>> {
        let rev = self.loaded_rev.load(Ordering::SeqCst);
        let (tx, rx) = mpsc::channel(1024);
        let rt = self.rt.as_ref()?;
        rt.spawn(follow_loop(self.client.clone(), self.prefix.clone(), self.replica.clone(), rev, tx));
        Some(rx)
    }

    fn last_seq(&self, cluster: &str, epoch: u64) -> Result<u64> {
        let mut c = self.client.clone();
        let key = self.key(&format!("seq/{cluster}/{}", id_key(epoch)));
        self.run(async move {
            let r = c.get(key, None).await.map_err(etcd_err("get seq"))?;
            Ok(r.kvs().first().and_then(|kv| std::str::from_utf8(kv.value()).ok()?.parse().ok()).unwrap_or(0))
        })
    }

    fn commands(&self, cluster: &str) -> Result<Vec<CommandRecord>> {
        let mut c = self.client.clone();
        let key = self.key(&format!("commands/{cluster}/"));
        self.run(async move {
            let r = c.get(key, Some(GetOptions::new().with_prefix())).await.map_err(etcd_err("commands"))?;
            r.kvs().iter().map(|kv| dec(kv.value())).collect()
        })
    }

    fn list_events(&self, f: &EventFilter) -> Result<Vec<StoredEvent>> {
        let limit = if f.limit == 0 { 100 } else { f.limit };
        let mut c = self.client.clone();
        let p = self.prefix.clone();
        let f = f.clone();
        self.run(async move {
            // Walk the most selective index newest-first, keep the newest `limit`.
            let index = match (&f.cluster, &f.bundle) {
                (Some(cl), _) => format!("{p}ev-cluster/{cl}/"),
                (None, Some(b)) => format!("{p}ev-bundle/{b}/"),
                (None, None) => format!("{p}events/"),
            }
            .into_bytes();
            let start = [index.clone(), id_key(f.after_id.saturating_add(1)).into_bytes()].concat();
            let mut end = prefix_end(&index);
            let page = (limit * 2).clamp(16, 1000) as i64;
            let mut out = Vec::new();
            'pages: loop {
                let r = c
                    .get(
                        start.clone(),
                        Some(
                            GetOptions::new()
                                .with_range(end.clone())
                                .with_sort(SortTarget::Key, SortOrder::Descend)
                                .with_limit(page)
                                .with_keys_only(),
                        ),
                    )
                    .await
                    .map_err(etcd_err("list events"))?;
                let keys: Vec<Vec<u8>> = r.kvs().iter().map(|kv| kv.key().to_vec()).collect();
                for k in &keys {
                    let id = &k[index.len()..];
                    let ev = c
                        .get([p.as_bytes(), b"events/", id].concat(), None)
                        .await
                        .map_err(etcd_err("get event"))?;
                    let Some(kv) = ev.kvs().first() else { continue };
                    let e: StoredEvent = dec(kv.value())?;
                    if f.matches(&e) {
                        out.push(e);
                        if out.len() >= limit {
                            break 'pages;
                        }
                    }
                }
                match keys.last() {
                    Some(last) if keys.len() as i64 == page => end = last.clone(),
                    _ => break,
                }
            }
            out.reverse();
            Ok(out)
        })
    }

    fn commit(&self, writes: Vec<Write>, now: i64) -> Result<Vec<WriteOutcome>> {
        let client = self.client.clone();
        let prefix = self.prefix.clone();
        let capacity = self.event_capacity;
        let replica = self.replica.clone();
        let lease = self.lease.clone();
        let lease_gone = self.lease_gone.clone();
        let commits = self.commits.clone();
        let last_request = self.last_request.clone();
        let retries = self.retries.clone();
        self.run(async move {
            for _ in 0..COMMIT_ATTEMPTS {
                let lease_id = *lease.borrow();
                if lease_id == 0 {
                    return Err(lease_lost(&replica));
                }
                let mut tx = Tx::begin(client.clone(), &prefix, &replica, lease_id);
                tx.prefetch(writes.iter().flat_map(|w| read_set(&prefix, w))).await?;
                let mut outcomes = Vec::with_capacity(writes.len());
                for w in writes.iter().cloned() {
                    outcomes.push(apply(&mut tx, w, now, capacity).await?);
                }
                let counter = commits.fetch_add(1, Ordering::Relaxed) + 1;
                match tx.commit(counter, &last_request).await {
                    Ok(true) => return Ok(outcomes),
                    Ok(false) => {}
                    Err(e) => {
                        if matches!(&e, Error::LeaseLost { .. }) {
                            // etcd no longer has the lease: the lease task gets a new one.
                            lease_gone.notify_one();
                        }
                        return Err(e);
                    }
                }
                retries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("etcd commit: a key it read changed meanwhile; recomputing");
            }
            Err(Error::Store(format!(
                "etcd: commit found a key it read changed by another replica {COMMIT_ATTEMPTS} times in a row"
            )))
        })
    }
}

/// Keys per request when reading a whole table ([`EtcdStore::range`]).
const RANGE_PAGE: i64 = 1000;

/// The largest watch message this replica accepts. etcd sends the events of
/// several revisions in one message when a watcher catches up, and a group
/// commit of thousands of statuses is one revision: gRPC's default of 4 MiB
/// left a replica that fell behind unable ever to catch up (seen at 10,000
/// agents × 20 bundles: a 36 MiB message, refused on every retry).
const WATCH_MESSAGE_LIMIT: usize = 1 << 30;

/// How many reads go into one read-only etcd transaction (etcd's default
/// `--max-txn-ops` is 128, so this works on an etcd left at its defaults).
const READS_PER_TXN: usize = 128;

/// One commit in progress: reads through an overlay of its own writes, and
/// remembers every key it read with the key's mod revision at the time (its
/// read set), which [`Tx::commit`] makes the transaction's condition.
struct Tx {
    client: Client,
    prefix: String,
    replica: String,
    /// The lease every write of this commit is fenced on.
    lease: i64,
    /// The read set: each key's value and mod revision when read (0: absent).
    reads: BTreeMap<Vec<u8>, (Option<Vec<u8>>, i64)>,
    /// Listed prefixes, each with the revision it was listed at.
    ranges: Vec<(Vec<u8>, i64)>,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// How many etcd round trips this commit's reads took.
    round_trips: usize,
}

impl Tx {
    fn begin(client: Client, prefix: &str, replica: &str, lease: i64) -> Self {
        Self {
            client,
            prefix: prefix.to_string(),
            replica: replica.to_string(),
            lease,
            reads: BTreeMap::new(),
            ranges: Vec::new(),
            writes: BTreeMap::new(),
            round_trips: 0,
        }
    }

    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}{rest}", self.prefix).into_bytes()
    }

    /// Read `keys` not read yet into the read set, [`READS_PER_TXN`] per
    /// round trip (a read-only transaction of gets), instead of one round
    /// trip per key as [`Tx::get`] alone would.
    async fn prefetch(&mut self, keys: impl IntoIterator<Item = Vec<u8>>) -> Result<()> {
        let wanted: BTreeSet<Vec<u8>> = keys
            .into_iter()
            .filter(|k| !self.reads.contains_key(k) && !self.writes.contains_key(k))
            .collect();
        let wanted: Vec<Vec<u8>> = wanted.into_iter().collect();
        for chunk in wanted.chunks(READS_PER_TXN) {
            let ops: Vec<TxnOp> = chunk.iter().map(|k| TxnOp::get(k.clone(), None)).collect();
            let r = self.client.txn(Txn::new().and_then(ops)).await.map_err(etcd_err("read"))?;
            self.round_trips += 1;
            for (key, resp) in chunk.iter().zip(r.op_responses()) {
                let TxnOpResponse::Get(g) = resp else {
                    return Err(Error::Store(
                        "etcd: a read transaction answered a get with something else".into(),
                    ));
                };
                let got = g.kvs().first().map(|kv| (Some(kv.value().to_vec()), kv.mod_revision()));
                self.reads.insert(key.clone(), got.unwrap_or((None, 0)));
            }
        }
        Ok(())
    }

    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(w) = self.writes.get(key) {
            return Ok(w.clone());
        }
        if let Some((v, _)) = self.reads.get(key) {
            return Ok(v.clone());
        }
        let r = self.client.get(key.to_vec(), None).await.map_err(etcd_err("read"))?;
        self.round_trips += 1;
        let got = r.kvs().first().map(|kv| (Some(kv.value().to_vec()), kv.mod_revision()));
        let got = got.unwrap_or((None, 0));
        self.reads.insert(key.to_vec(), got.clone());
        Ok(got.0)
    }

    /// Keys under `prefix`, as this commit sees them.
    async fn keys(&mut self, prefix: &[u8]) -> Result<BTreeSet<Vec<u8>>> {
        let r = self
            .client
            .get(prefix.to_vec(), Some(GetOptions::new().with_prefix().with_keys_only()))
            .await
            .map_err(etcd_err("range"))?;
        self.round_trips += 1;
        let rev = r.header().map(|h| h.revision()).unwrap_or(0);
        self.ranges.push((prefix.to_vec(), rev));
        let mut keys: BTreeSet<Vec<u8>> = r.kvs().iter().map(|kv| kv.key().to_vec()).collect();
        for (k, v) in self.writes.range(prefix.to_vec()..prefix_end(prefix)) {
            match v {
                Some(_) => keys.insert(k.clone()),
                None => keys.remove(k),
            };
        }
        Ok(keys)
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    /// The transaction's condition: every key read is as it was read, and
    /// no key under a listed prefix changed since it was listed.
    fn fences(&self) -> Vec<Compare> {
        let mut cmps = Vec::with_capacity(self.reads.len() + self.ranges.len() + 1);
        for (k, (_, rev)) in &self.reads {
            cmps.push(if *rev == 0 {
                Compare::version(k.clone(), CompareOp::Equal, 0)
            } else {
                Compare::mod_revision(k.clone(), CompareOp::Equal, *rev)
            });
        }
        for (prefix, rev) in &self.ranges {
            cmps.push(
                Compare::mod_revision(prefix.clone(), CompareOp::Less, rev + 1)
                    .with_range(prefix_end(prefix)),
            );
        }
        cmps
    }

    /// The encoded size of the request [`Tx::commit`] sends ([`txn_request_len`]).
    fn request_len(&self, own: &[u8], commit_key: &[u8], commit_value: usize) -> usize {
        let mut compares: Vec<(usize, usize, u64)> = self
            .reads
            .iter()
            .map(|(k, (_, rev))| (k.len(), 0, *rev as u64))
            .chain(self.ranges.iter().map(|(p, rev)| (p.len(), prefix_end(p).len(), (*rev + 1) as u64)))
            .collect();
        compares.push((own.len(), 0, self.lease as u64));
        let mut success: Vec<(usize, Option<usize>)> =
            self.writes.iter().map(|(k, v)| (k.len(), v.as_ref().map(Vec::len))).collect();
        success.push((commit_key.len(), Some(commit_value)));
        txn_request_len(&compares, &success, &[own.len()])
    }

    /// Send the transaction; false when another commit changed a key this
    /// one read (its decisions are stale and must be made again).
    async fn commit(mut self, counter: u64, request_bytes: &AtomicUsize) -> Result<bool> {
        if self.writes.is_empty() {
            return Ok(true);
        }
        let own = self.key(&format!("replicas/{}", self.replica));
        let commit_key = self.key("meta/commit");
        let commit_value = format!("{counter} {}", self.replica);
        request_bytes.store(self.request_len(&own, &commit_key, commit_value.len()), Ordering::SeqCst);
        let mut cmps = self.fences();
        // The lease fence: this replica's key still lives on the lease it writes under.
        cmps.push(Compare::lease(own.clone(), CompareOp::Equal, self.lease));
        let mut ops: Vec<TxnOp> = Vec::with_capacity(self.writes.len() + 1);
        for (k, v) in std::mem::take(&mut self.writes) {
            ops.push(match v {
                Some(v) => TxnOp::put(k, v, None),
                None => TxnOp::delete(k, None),
            });
        }
        // Names this replica as the writer, for the change feed (a put, never
        // compared: commits that touch different keys do not serialize on it).
        ops.push(TxnOp::put(commit_key, commit_value, None));
        let txn = Txn::new().when(cmps).and_then(ops).or_else([TxnOp::get(own, None)]);
        let r = self.client.txn(txn).await.map_err(etcd_err("commit"))?;
        if r.succeeded() {
            return Ok(true);
        }
        let lease_now = r.op_responses().into_iter().find_map(|o| match o {
            TxnOpResponse::Get(g) => Some(g.kvs().first().map(|kv| kv.lease()).unwrap_or(0)),
            _ => None,
        });
        if lease_now != Some(self.lease) {
            return Err(lease_lost(&self.replica));
        }
        Ok(false)
    }
}

/// The encoded size of an etcd `TxnRequest` (etcd's rpc.proto, by prost's
/// length rules): `compares` as (key length, range end length, compared
/// value), `success` as (key length, the put value's length or `None` for
/// a delete), `failure` as the key lengths of gets. Enum fields are counted
/// as if set, so this is exact or a few bytes over. etcd refuses a request
/// whose raft entry (this plus a header of a few dozen bytes and the user
/// name) is over `--max-request-bytes`. Pure.
fn txn_request_len(
    compares: &[(usize, usize, u64)],
    success: &[(usize, Option<usize>)],
    failure: &[usize],
) -> usize {
    use prost::encoding::encoded_len_varint as varint;
    let bytes = |tag_len: usize, len: usize| if len == 0 { 0 } else { tag_len + varint(len as u64) + len };
    let message = |tag_len: usize, len: usize| tag_len + varint(len as u64) + len;
    let mut total = 0;
    for &(key, range_end, target) in compares {
        // result and target (1 + 1 each at most), key (3), the target
        // union (4..8, encoded even when 0), range_end (64: a 2-byte tag).
        let inner = 2 + 2 + bytes(1, key) + 1 + varint(target) + bytes(2, range_end);
        total += message(1, inner);
    }
    for &(key, value) in success {
        // RequestOp.request_put (2) { key (1), value (2) } or request_delete_range (3) { key (1) }.
        let inner = bytes(1, key) + value.map_or(0, |v| bytes(1, v));
        total += message(1, message(1, inner));
    }
    for &key in failure {
        // RequestOp.request_range (1) { key (1) }.
        total += message(1, message(1, bytes(1, key)));
    }
    total
}

/// The bound of [`Write::bytes`] in one commit: etcd's
/// `--max-request-bytes` less [`COMMIT_MARGIN_BYTES`] and the key prefix,
/// which [`Write::bytes`] leaves out, of every key a commit may name (it
/// puts or deletes at most `--max-txn-ops` keys and compares at most as
/// many, plus its own few keys). Pure.
fn commit_bytes_bound(max_txn_bytes: usize, max_txn_ops: usize, prefix_len: usize) -> usize {
    let prefixes = prefix_len.saturating_mul(max_txn_ops.saturating_mul(2).saturating_add(4));
    max_txn_bytes.saturating_sub(COMMIT_MARGIN_BYTES).saturating_sub(prefixes).max(1)
}

/// The keys `w` will read, so that a commit reads them all in a few round
/// trips before [`apply`] decides on them one by one.
fn read_set(prefix: &str, w: &Write) -> Vec<Vec<u8>> {
    let key = |rest: String| format!("{prefix}{rest}").into_bytes();
    match w {
        Write::PutToken(t) => vec![key(format!("tokens/{}", t.id))],
        Write::PutDeployment(d) => vec![key(format!("deployments/{}", d.bundle))],
        Write::PutRollout(r) => vec![key(format!("rollouts/{}", r.bundle))],
        Write::SeedStatuses { cluster, statuses } => {
            statuses.iter().map(|s| key(format!("status/{cluster}/{}", s.status.bundle))).collect()
        }
        Write::AppendEvents(evs) if !evs.is_empty() => vec![key("meta/next-event-id".into())],
        Write::ExpireCommand { cluster, request_id, .. } => {
            vec![key(format!("commands/{cluster}/{request_id}")), key("meta/next-event-id".into())]
        }
        Write::AgentBatch(b) => {
            let mut keys = vec![key(format!("seq/{}/{}", b.cluster, id_key(b.epoch)))];
            if b.entries.iter().any(|(_, e)| matches!(e, OutboxEntry::Event(_))) {
                keys.push(key("meta/next-event-id".into()));
            }
            keys
        }
        Write::PutCluster(_)
        | Write::PutVariant(_)
        | Write::SetSuspended { .. }
        | Write::SetSourceSuspended { .. }
        | Write::DeleteRollout(_)
        | Write::PutLiveness(_)
        | Write::AppendEvents(_)
        | Write::PutCommand(_)
        | Write::PutAdminCert(_) => Vec::new(),
    }
}

async fn apply(tx: &mut Tx, w: Write, now: i64, capacity: u64) -> Result<WriteOutcome> {
    Ok(match w {
        Write::PutCluster(c) => {
            let k = tx.key(&format!("clusters/{}", c.name));
            tx.put(k, enc(&c)?);
            WriteOutcome::Done
        }
        Write::PutToken(mut t) => {
            let k = tx.key(&format!("tokens/{}", t.id));
            if let Some(stored) = tx.get(&k).await? {
                let stored: TokenRecord = dec(&stored)?;
                t.uses = token_uses(&stored, &t)?;
            }
            tx.put(k, enc(&t)?);
            WriteOutcome::Done
        }
        Write::PutDeployment(d) => {
            let k = tx.key(&format!("deployments/{}", d.bundle));
            if let Some(stored) = tx.get(&k).await? {
                check_generation(&dec(&stored)?, &d)?;
            }
            tx.put(k, enc(&d)?);
            WriteOutcome::Done
        }
        Write::PutVariant(v) => {
            let k = tx.key(&format!("variants/{}", v.store_key()));
            tx.put(k, enc(&v)?);
            WriteOutcome::Done
        }
        Write::SetSuspended { bundle, suspended } => {
            let k = tx.key(&format!("suspended/{bundle}"));
            if suspended {
                tx.put(k, Vec::new())
            } else {
                tx.delete(k)
            }
            WriteOutcome::Done
        }
        Write::SetSourceSuspended { source, suspended } => {
            let k = tx.key(&format!("suspended-sources/{source}"));
            if suspended {
                tx.put(k, Vec::new())
            } else {
                tx.delete(k)
            }
            WriteOutcome::Done
        }
        Write::PutRollout(r) => {
            let k = tx.key(&format!("rollouts/{}", r.bundle));
            if let Some(stored) = tx.get(&k).await? {
                check_rollout_version(&dec(&stored)?, &r)?;
            }
            tx.put(k, enc(&r)?);
            WriteOutcome::Done
        }
        Write::DeleteRollout(bundle) => {
            let k = tx.key(&format!("rollouts/{bundle}"));
            tx.delete(k);
            WriteOutcome::Done
        }
        Write::PutLiveness(rows) => {
            for (name, l) in rows {
                let k = tx.key(&format!("liveness/{name}"));
                tx.put(k, enc(&l)?);
            }
            WriteOutcome::Done
        }
        Write::SeedStatuses { cluster, statuses } => {
            let mut stored = Vec::new();
            for mut s in statuses {
                let k = tx.key(&format!("status/{cluster}/{}", s.status.bundle));
                if tx.get(&k).await?.is_none() {
                    s.updated_unix_ms = now;
                    tx.put(k, enc(&s)?);
                    stored.push(s);
                }
            }
            WriteOutcome::Seeded { cluster, statuses: stored }
        }
        Write::AppendEvents(evs) => {
            let mut stored = Vec::with_capacity(evs.len());
            for (cluster, event) in evs {
                stored.push(append_event(tx, cluster, event, now, capacity).await?);
            }
            WriteOutcome::Events(stored)
        }
        Write::AgentBatch(batch) => {
            let out = store_batch(tx, batch, now, capacity).await?;
            // A stored answer ends its command (a delete of an absent key is nothing).
            for e in &out.events {
                if let Some(id) = crate::domain::commands::answered(&e.event) {
                    let k = tx.key(&format!("commands/{}/{id}", out.cluster));
                    tx.delete(k);
                }
            }
            WriteOutcome::Batch(out)
        }
        Write::PutCommand(c) => {
            // Counted in the store and fenced on the listing: the bound holds
            // whichever replicas queue commands for the cluster at once.
            let k = tx.key(&format!("commands/{}", c.store_key()));
            let dir = tx.key(&format!("commands/{}/", c.cluster));
            let pending = tx.keys(&dir).await?;
            let queued = pending.contains(&k) || pending.len() < crate::domain::commands::MAX_PENDING;
            if queued {
                tx.put(k, enc(&c)?);
            }
            WriteOutcome::CommandQueued(queued)
        }
        Write::ExpireCommand { cluster, request_id, event } => {
            // Read (so fenced): of two replicas expiring it at once, one reports it.
            let k = tx.key(&format!("commands/{cluster}/{request_id}"));
            let mut stored = Vec::new();
            if tx.get(&k).await?.is_some() {
                tx.delete(k);
                stored.push(append_event(tx, cluster, event, now, capacity).await?);
            }
            WriteOutcome::Events(stored)
        }
        Write::PutAdminCert(r) => {
            let k = tx.key(&format!("admin-certs/{}", r.serial));
            tx.put(k, enc(&r)?);
            WriteOutcome::Done
        }
    })
}

/// The uses to store for `new`, a replica's copy of a token whose stored
/// record is `stored`. A token is written when created (0 uses) and when a
/// registration uses it (the replica's uses + 1). If the replica's copy was
/// behind (another replica used the token since), a single-use token is
/// refused and a multi-use one counts the use on top of the stored uses.
fn token_uses(stored: &TokenRecord, new: &TokenRecord) -> Result<u32> {
    if new.uses == 0 || new.uses > stored.uses {
        return Ok(new.uses.max(stored.uses));
    }
    if new.single_use {
        return Err(Rejection::PermissionDenied(format!(
            "token {} was already used (on another hub replica)",
            new.id
        ))
        .into());
    }
    Ok(stored.uses + 1)
}

/// A bundle's generation only goes up, across replicas: the same
/// generation again must be the same artifact.
fn check_generation(stored: &DeploymentRecord, new: &DeploymentRecord) -> Result<()> {
    if new.generation > stored.generation
        || (new.generation == stored.generation && new.digest == stored.digest)
    {
        return Ok(());
    }
    Err(Error::Store(format!(
        "bundle {}: generation {} ({}) is not above the stored generation {} ({}) another replica signed",
        new.bundle, new.generation, new.digest, stored.generation, stored.digest
    )))
}

/// A rollout record is written only above the stored version: a replica
/// that decided on a stale copy (another replica advanced, approved or
/// started the rollout in between) is refused, and decides again on the
/// record the change feed brings it.
fn check_rollout_version(
    stored: &crate::domain::rollout::RolloutRecord,
    new: &crate::domain::rollout::RolloutRecord,
) -> Result<()> {
    if new.version > stored.version {
        return Ok(());
    }
    Err(Error::RolloutChanged {
        bundle: new.bundle.clone(),
        stored: stored.version,
        seen: new.version.saturating_sub(1),
    })
}

async fn append_event(
    tx: &mut Tx,
    cluster: String,
    event: EventRecord,
    now: i64,
    capacity: u64,
) -> Result<StoredEvent> {
    let next_key = tx.key("meta/next-event-id");
    let id: u64 = match tx.get(&next_key).await? {
        Some(v) => std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()).unwrap_or(1),
        None => 1,
    };
    tx.put(next_key, (id + 1).to_string().into_bytes());
    let stored = StoredEvent { id, cluster, event, stored_unix_ms: now };
    let k = tx.key(&format!("events/{}", id_key(id)));
    tx.put(k, enc(&stored)?);
    let k = tx.key(&format!("ev-cluster/{}/{}", stored.cluster, id_key(id)));
    tx.put(k, Vec::new());
    if !stored.event.bundle.is_empty() {
        let k = tx.key(&format!("ev-bundle/{}/{}", stored.event.bundle, id_key(id)));
        tx.put(k, Vec::new());
    }
    // The ring: drop the event that fell out of the window, with its index keys.
    if id > capacity {
        let old_id = id - capacity;
        let old_key = tx.key(&format!("events/{}", id_key(old_id)));
        if let Some(v) = tx.get(&old_key).await? {
            let old: StoredEvent = dec(&v)?;
            tx.delete(old_key);
            let k = tx.key(&format!("ev-cluster/{}/{}", old.cluster, id_key(old_id)));
            tx.delete(k);
            if !old.event.bundle.is_empty() {
                let k = tx.key(&format!("ev-bundle/{}/{}", old.event.bundle, id_key(old_id)));
                tx.delete(k);
            }
        }
    }
    Ok(stored)
}

async fn store_batch(tx: &mut Tx, batch: AgentBatch, now: i64, capacity: u64) -> Result<BatchOutcome> {
    let cluster = batch.cluster.clone();
    let seq_key = tx.key(&format!("seq/{cluster}/{}", id_key(batch.epoch)));
    let existing: Option<u64> =
        tx.get(&seq_key).await?.and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok());
    let stored = existing.unwrap_or(0);
    let (last, keep) = fresh_entries(stored, &batch.entries);
    let mut out = BatchOutcome { cluster: cluster.clone(), acked_seq: last, ..Default::default() };
    if keep.is_empty() {
        return Ok(out);
    }
    if existing.is_none() {
        // A new outbox epoch: earlier epochs of this cluster are finished.
        let epochs = tx.key(&format!("seq/{cluster}/"));
        for k in tx.keys(&epochs).await? {
            tx.delete(k);
        }
    }
    let mut entries: Vec<Option<(u64, OutboxEntry)>> = batch.entries.into_iter().map(Some).collect();
    for i in keep {
        let Some((_, entry)) = entries[i].take() else { continue };
        match entry {
            OutboxEntry::Status(mut s) => {
                s.updated_unix_ms = now;
                let k = tx.key(&format!("status/{cluster}/{}", s.status.bundle));
                tx.put(k, enc(&s)?);
                out.statuses.push(s);
            }
            OutboxEntry::Event(e) => {
                out.events.push(append_event(tx, cluster.clone(), e, now, capacity).await?)
            }
        }
    }
    tx.put(seq_key, last.to_string().into_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"/convoy/events/"), b"/convoy/events0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    fn token(uses: u32, single_use: bool) -> TokenRecord {
        TokenRecord {
            id: "t1".into(),
            hash: String::new(),
            created_unix_ms: 0,
            expires_unix_ms: i64::MAX,
            single_use,
            uses,
            cluster: None,
            labels: Default::default(),
            name_prefix: None,
            agent_label_keys: Vec::new(),
        }
    }

    #[test]
    fn a_token_use_counts_on_the_stored_uses() {
        // Created, and one use on top of what the replica saw.
        assert_eq!(token_uses(&token(0, true), &token(0, true)).unwrap(), 0);
        assert_eq!(token_uses(&token(0, true), &token(1, true)).unwrap(), 1);
        assert_eq!(token_uses(&token(2, false), &token(3, false)).unwrap(), 3);
        // Another replica used it in between.
        let err = token_uses(&token(1, true), &token(1, true)).unwrap_err();
        assert!(err.to_string().contains("already used"), "{err}");
        assert_eq!(token_uses(&token(3, false), &token(3, false)).unwrap(), 4);
        assert_eq!(token_uses(&token(5, false), &token(2, false)).unwrap(), 6);
    }

    #[test]
    fn a_generation_only_goes_up_across_replicas() {
        let d = |generation: u64, digest: &str| DeploymentRecord {
            bundle: "web".into(),
            generation,
            digest: digest.into(),
            size: 1,
            revision: String::new(),
            source: String::new(),
            statement: Vec::new(),
            signature: Vec::new(),
            created_unix_ms: 0,
        };
        assert!(check_generation(&d(1, "a"), &d(2, "b")).is_ok());
        assert!(check_generation(&d(2, "b"), &d(2, "b")).is_ok(), "the same record again");
        assert!(check_generation(&d(2, "b"), &d(2, "c")).is_err(), "one generation, two artifacts");
        assert!(check_generation(&d(3, "b"), &d(2, "c")).is_err(), "backwards");
    }

    #[test]
    fn a_rollout_is_written_only_above_its_stored_version() {
        let spec: convoy_core::rollout::RolloutSpec =
            serde_json::from_value(serde_json::json!({"waves": [{"name": "eu"}]})).unwrap();
        let r = |version: u64| crate::domain::rollout::RolloutRecord {
            bundle: "web".into(),
            state: crate::domain::rollout::RolloutState::new(&spec, "r", 0),
            held: Default::default(),
            base: None,
            given: Default::default(),
            rolled_back: Default::default(),
            max_generation: 1,
            version,
        };
        assert!(check_rollout_version(&r(3), &r(4)).is_ok());
        let err = check_rollout_version(&r(4), &r(4)).unwrap_err();
        assert!(matches!(err, Error::RolloutChanged { stored: 4, seen: 3, .. }), "{err}");
        assert!(err.to_string().contains("another hub replica"), "{err}");
        assert!(check_rollout_version(&r(4), &r(2)).is_err(), "backwards");
    }

    #[test]
    fn the_byte_bound_leaves_room_for_prefixes_and_the_commits_own_keys() {
        // etcd's defaults, the default prefix: 1.5 MiB less 8 KiB and 8 bytes of 260 keys.
        assert_eq!(commit_bytes_bound(1_572_864, 128, 8), 1_572_864 - 8192 - 8 * 260);
        // The raised limits docs/operations.md recommends.
        assert_eq!(commit_bytes_bound(10_485_760, 10_000, 8), 10_485_760 - 8192 - 8 * 20_004);
        // A longer prefix leaves less; a bound too small for anything still lets one job through alone.
        assert!(commit_bytes_bound(1_572_864, 128, 64) < commit_bytes_bound(1_572_864, 128, 8));
        assert_eq!(commit_bytes_bound(4096, 128, 8), 1);
    }

    #[test]
    fn a_request_is_measured_as_protobuf_encodes_it() {
        // put "abc" = "xy": PutRequest 0a 03 abc 12 02 xy (9), RequestOp 12 09 .. (11), success 12 0b .. (13).
        assert_eq!(txn_request_len(&[], &[(3, Some(2))], &[]), 13);
        // delete "abc": DeleteRangeRequest 0a 03 abc (5), RequestOp 1a 05 .. (7), success (9).
        assert_eq!(txn_request_len(&[], &[(3, None)], &[]), 9);
        // get "abc" in the failure branch: the same shape.
        assert_eq!(txn_request_len(&[], &[], &[3]), 9);
        // mod_revision("abc") == 5 is 11 bytes on the wire (result EQUAL is the
        // default, not sent); counted with both enums: 2 bytes over at most.
        assert_eq!(txn_request_len(&[(3, 0, 5)], &[], &[]), 13);
        // A range compare adds its range end (field 64: a 2-byte tag).
        assert_eq!(txn_request_len(&[(3, 3, 5)], &[], &[]), 13 + 2 + 1 + 3);
        // Long values take multi-byte lengths.
        assert_eq!(
            txn_request_len(&[], &[(3, Some(1000))], &[]),
            1 + 2 + (1 + 2 + ((1 + 1 + 3) + (1 + 2 + 1000)))
        );
    }

    #[test]
    fn ids_sort_as_keys() {
        assert!(id_key(9) < id_key(10));
        assert!(id_key(u64::MAX) > id_key(u64::MAX - 1));
    }
}
