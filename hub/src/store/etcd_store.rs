//! [`Store`] on etcd (feature `etcd`): small records under one key prefix,
//! every [`Store::commit`] one etcd transaction, serialized across hub
//! replicas by a commit counter key. Artifacts never go into etcd.
//!
//! Layout under `prefix` (`/convoy/` by default):
//!
//! | key | value |
//! |---|---|
//! | `meta/schema` | the layout version |
//! | `meta/commit` | a counter every commit bumps (the fence) |
//! | `meta/next-event-id` | the next event id |
//! | `clusters/<name>`, `tokens/<id>`, `liveness/<name>`, `deployments/<bundle>` | JSON records |
//! | `suspended/<bundle>`, `suspended-sources/<source>` | empty |
//! | `status/<cluster>/<bundle>` | JSON status |
//! | `seq/<cluster>/<epoch:020>` | last stored outbox seq |
//! | `events/<id:020>`, `ev-cluster/<cluster>/<id:020>`, `ev-bundle/<bundle>/<id:020>` | the event ring and its indexes |
//!
//! A commit reads what it needs (through an overlay, so later writes of the
//! same commit see earlier ones), then sends one transaction whose only
//! condition is that `meta/commit` did not move since the commit started. A
//! commit by another replica in between makes it fail, and the whole commit
//! is computed again from fresh reads. So commits are serializable across
//! replicas with no lock held between them.
//!
//! etcd limits one transaction to `--max-txn-ops` operations (128 by default)
//! and `--max-request-bytes` (1.5 MiB). A group commit of many statuses needs
//! more: run etcd with `--max-txn-ops=10000 --max-request-bytes=10485760`
//! (docs/operations.md). A commit over the server's limits fails as a whole
//! with the server's error: nothing is half-written.
//!
//! The trait is blocking (callers use `spawn_blocking`); the store runs its
//! client on a small runtime of its own and waits for each answer.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, SortOrder, SortTarget,
    TlsOptions, Txn, TxnOp,
};

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
}

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
        }
    }
}

/// The etcd-backed store.
pub struct EtcdStore {
    rt: Option<tokio::runtime::Runtime>,
    client: Client,
    prefix: String,
    event_capacity: u64,
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
        let store =
            Self { rt: Some(rt), client, prefix: opts.prefix.clone(), event_capacity: event_capacity.max(1) };
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

    async fn range(c: &mut Client, prefix: Vec<u8>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut resp =
            c.get(prefix, Some(GetOptions::new().with_prefix())).await.map_err(etcd_err("range"))?;
        Ok(resp.take_kvs().into_iter().map(|kv| (kv.key().to_vec(), kv.value().to_vec())).collect())
    }
}

impl Store for EtcdStore {
    fn load(&self) -> Result<Loaded> {
        let mut c = self.client.clone();
        let p = self.prefix.clone();
        self.run(async move {
            let mut out = Loaded::default();
            let key = |s: &str| format!("{p}{s}").into_bytes();
            let suffix =
                |k: &[u8], pre: &str| String::from_utf8_lossy(&k[p.len() + pre.len()..]).into_owned();
            for (_, v) in Self::range(&mut c, key("clusters/")).await? {
                out.clusters.push(dec(&v)?);
            }
            for (_, v) in Self::range(&mut c, key("tokens/")).await? {
                out.tokens.push(dec(&v)?);
            }
            for (_, v) in Self::range(&mut c, key("admin-certs/")).await? {
                out.admin_certs.push(dec(&v)?);
            }
            for (k, v) in Self::range(&mut c, key("liveness/")).await? {
                out.liveness.push((suffix(&k, "liveness/"), dec(&v)?));
            }
            for (_, v) in Self::range(&mut c, key("deployments/")).await? {
                out.deployments.push(dec(&v)?);
            }
            for (k, _) in Self::range(&mut c, key("suspended/")).await? {
                out.suspended.insert(suffix(&k, "suspended/"));
            }
            for (k, _) in Self::range(&mut c, key("suspended-sources/")).await? {
                out.suspended_sources.insert(suffix(&k, "suspended-sources/"));
            }
            for (k, v) in Self::range(&mut c, key("status/")).await? {
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
            Ok(out)
        })
    }

    fn last_seq(&self, cluster: &str, epoch: u64) -> Result<u64> {
        let mut c = self.client.clone();
        let key = self.key(&format!("seq/{cluster}/{}", id_key(epoch)));
        self.run(async move {
            let r = c.get(key, None).await.map_err(etcd_err("get seq"))?;
            Ok(r.kvs().first().and_then(|kv| std::str::from_utf8(kv.value()).ok()?.parse().ok()).unwrap_or(0))
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
        self.run(async move {
            for _ in 0..COMMIT_ATTEMPTS {
                let mut tx = Tx::begin(client.clone(), &prefix).await?;
                let mut outcomes = Vec::with_capacity(writes.len());
                for w in writes.iter().cloned() {
                    outcomes.push(apply(&mut tx, w, now, capacity).await?);
                }
                if tx.commit().await? {
                    return Ok(outcomes);
                }
                tracing::debug!("etcd commit raced another replica; recomputing");
            }
            Err(Error::Store(format!(
                "etcd: commit lost the race {COMMIT_ATTEMPTS} times in a row to other replicas"
            )))
        })
    }
}

/// One commit in progress: reads through an overlay of its own writes.
struct Tx {
    client: Client,
    prefix: String,
    /// `meta/commit`'s mod revision when the commit started (0: absent).
    fence: i64,
    counter: u64,
    reads: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Tx {
    async fn begin(mut client: Client, prefix: &str) -> Result<Self> {
        let key = format!("{prefix}meta/commit");
        let r = client.get(key, None).await.map_err(etcd_err("read commit counter"))?;
        let (fence, counter) = match r.kvs().first() {
            Some(kv) => (
                kv.mod_revision(),
                std::str::from_utf8(kv.value()).ok().and_then(|s| s.parse().ok()).unwrap_or(0),
            ),
            None => (0, 0),
        };
        Ok(Self {
            client,
            prefix: prefix.to_string(),
            fence,
            counter,
            reads: BTreeMap::new(),
            writes: BTreeMap::new(),
        })
    }

    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}{rest}", self.prefix).into_bytes()
    }

    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(w) = self.writes.get(key) {
            return Ok(w.clone());
        }
        if let Some(r) = self.reads.get(key) {
            return Ok(r.clone());
        }
        let r = self.client.get(key.to_vec(), None).await.map_err(etcd_err("read"))?;
        let v = r.kvs().first().map(|kv| kv.value().to_vec());
        self.reads.insert(key.to_vec(), v.clone());
        Ok(v)
    }

    /// Keys under `prefix`, as this commit sees them.
    async fn keys(&mut self, prefix: &[u8]) -> Result<BTreeSet<Vec<u8>>> {
        let r = self
            .client
            .get(prefix.to_vec(), Some(GetOptions::new().with_prefix().with_keys_only()))
            .await
            .map_err(etcd_err("range"))?;
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

    /// Send the transaction; false when another commit moved the fence.
    async fn commit(mut self) -> Result<bool> {
        if self.writes.is_empty() {
            return Ok(true);
        }
        let fence_key = self.key("meta/commit");
        let cmp = if self.fence == 0 {
            Compare::version(fence_key.clone(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(fence_key.clone(), CompareOp::Equal, self.fence)
        };
        let mut ops: Vec<TxnOp> = Vec::with_capacity(self.writes.len() + 1);
        for (k, v) in std::mem::take(&mut self.writes) {
            ops.push(match v {
                Some(v) => TxnOp::put(k, v, None),
                None => TxnOp::delete(k, None),
            });
        }
        ops.push(TxnOp::put(fence_key, (self.counter + 1).to_string(), None));
        let r = self.client.txn(Txn::new().when([cmp]).and_then(ops)).await.map_err(etcd_err("commit"))?;
        Ok(r.succeeded())
    }
}

async fn apply(tx: &mut Tx, w: Write, now: i64, capacity: u64) -> Result<WriteOutcome> {
    Ok(match w {
        Write::PutCluster(c) => {
            let k = tx.key(&format!("clusters/{}", c.name));
            tx.put(k, enc(&c)?);
            WriteOutcome::Done
        }
        Write::PutToken(t) => {
            let k = tx.key(&format!("tokens/{}", t.id));
            tx.put(k, enc(&t)?);
            WriteOutcome::Done
        }
        Write::PutDeployment(d) => {
            let k = tx.key(&format!("deployments/{}", d.bundle));
            tx.put(k, enc(&d)?);
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
        Write::AgentBatch(batch) => WriteOutcome::Batch(store_batch(tx, batch, now, capacity).await?),
        Write::PutAdminCert(r) => {
            let k = tx.key(&format!("admin-certs/{}", r.serial));
            tx.put(k, enc(&r)?);
            WriteOutcome::Done
        }
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

    #[test]
    fn ids_sort_as_keys() {
        assert!(id_key(9) < id_key(10));
        assert!(id_key(u64::MAX) > id_key(u64::MAX - 1));
    }
}
