//! [`Store`] on redb: one file in the data dir, ACID transactions, fsync on commit.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Loaded, Store, Write, WriteOutcome};
use crate::domain::commands::CommandRecord;
use crate::domain::{AgentBatch, BatchOutcome, EventFilter, OutboxEntry, StoredEvent, fresh_entries};
use crate::{Error, Result};

const CLUSTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("clusters");
const LIVENESS: TableDefinition<&str, &[u8]> = TableDefinition::new("liveness");
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
const DEPLOYMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("deployments");
/// Per-cluster variants, keyed `<bundle>/<variant key>`.
const VARIANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("variants");
const SUSPENDED: TableDefinition<&str, u8> = TableDefinition::new("suspended_bundles");
const SUSPENDED_SOURCES: TableDefinition<&str, u8> = TableDefinition::new("suspended_sources");
/// (cluster, bundle) -> StatusRecord
const STATUSES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("statuses");
/// (cluster, outbox epoch) -> last stored seq
const SEQS: TableDefinition<(&str, u64), u64> = TableDefinition::new("outbox_seqs");
/// event id -> StoredEvent
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// (cluster, event id) -> 0: events of a cluster, in id order
const EVENTS_BY_CLUSTER: TableDefinition<(&str, u64), u8> = TableDefinition::new("events_by_cluster");
/// (bundle, event id) -> 0: events of a bundle, in id order
const EVENTS_BY_BUNDLE: TableDefinition<(&str, u64), u8> = TableDefinition::new("events_by_bundle");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Rollouts by bundle (JSON `RolloutRecord`).
const ROLLOUTS: TableDefinition<&str, &[u8]> = TableDefinition::new("rollouts");
/// Admin certificate records by serial.
const ADMIN_CERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("admin_certs");
/// (cluster, request id) -> pending agent command (JSON `CommandRecord`).
const COMMANDS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("commands");
const NEXT_EVENT_ID: &str = "next_event_id";
const SCHEMA_VERSION_KEY: &str = "schema_version";

/// The layout version of `state.redb` this hub writes. A hub refuses to open a
/// file written by a newer layout (a downgrade would misread it); older
/// layouts are migrated on open (there are none yet). A new table is not a
/// new layout: it is created on open, and a hub that does not know it leaves
/// it alone (`admin_certs`, `commands` were added so).
pub const SCHEMA_VERSION: u64 = 1;

/// The redb-backed store.
pub struct RedbStore {
    /// `None` after an I/O error closed it, until it is reopened.
    db: std::sync::RwLock<Option<Database>>,
    /// Opens the database again: redb refuses every operation after an I/O
    /// error (`StorageError::PreviousIo`) until the file is closed and reopened.
    reopen: Box<dyn Fn() -> Result<Database> + Send + Sync>,
    event_capacity: u64,
}

fn enc<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Store(format!("encode: {e}")))
}

fn dec<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| Error::Store(format!("decode: {e}")))
}

impl RedbStore {
    /// Open (or create) the database file. `event_capacity` bounds the event
    /// log: the oldest events are dropped beyond it. `cache_bytes` bounds
    /// redb's page cache.
    pub fn open(path: &Path, event_capacity: u64, cache_bytes: usize) -> Result<Self> {
        let path = path.to_path_buf();
        Self::open_with(
            move || {
                let db = Database::builder().set_cache_size(cache_bytes).create(&path)?;
                prepare(db, &path.display().to_string())
            },
            event_capacity,
        )
    }

    /// A store on the database `open` makes (and makes again after an I/O
    /// error; `open` also prepares the tables, see [`prepare`]).
    pub(crate) fn open_with(
        open: impl Fn() -> Result<Database> + Send + Sync + 'static,
        event_capacity: u64,
    ) -> Result<Self> {
        let db = open()?;
        Ok(Self {
            db: std::sync::RwLock::new(Some(db)),
            reopen: Box::new(open),
            event_capacity: event_capacity.max(1),
        })
    }

    /// Run `f` on the database. If it fails and the database is latched by an
    /// I/O error (redb answers `PreviousIo` to everything after one: a full
    /// disk inside a commit), close and reopen it, so the next call can work
    /// once the cause is gone; without this only a restart would recover.
    fn with_db<T>(&self, f: impl FnOnce(&Database) -> Result<T>) -> Result<T> {
        if self.db.read().unwrap_or_else(|p| p.into_inner()).is_none() {
            // Closed after an I/O error and not reopened yet: try now.
            self.reopen_closed(false);
        }
        let (r, latched) = {
            let g = self.db.read().unwrap_or_else(|p| p.into_inner());
            match g.as_ref() {
                None => {
                    (Err(Error::Store("the database was closed after an I/O error; reopening".into())), false)
                }
                Some(db) => {
                    let r = f(db);
                    // A write transaction meets the latch (a read may not).
                    let latched = r.is_err()
                        && match db.begin_write() {
                            Err(redb::TransactionError::Storage(redb::StorageError::PreviousIo)) => true,
                            Ok(tx) => matches!(tx.abort(), Err(redb::StorageError::PreviousIo)),
                            Err(_) => false,
                        };
                    (r, latched)
                }
            }
        };
        if latched {
            self.reopen_closed(true);
        }
        r
    }

    /// Close the database (`close`: a latched one) and open it again; if that
    /// fails (the disk is still full), it stays closed and the next call
    /// tries again.
    fn reopen_closed(&self, close: bool) {
        let mut g = self.db.write().unwrap_or_else(|p| p.into_inner());
        if close {
            // Close it first: redb holds a lock on the file while open.
            *g = None;
        }
        if g.is_some() {
            return;
        }
        match (self.reopen)() {
            Ok(db) => {
                tracing::warn!("the state database was reopened after an I/O error");
                *g = Some(db);
            }
            Err(e) => tracing::warn!(error = %e, "cannot reopen the state database yet"),
        }
    }
}

/// Create every table and check the schema version (`what` names the file).
fn prepare(db: Database, what: &str) -> Result<Database> {
    {
        let tx = db.begin_write()?;
        {
            // Create every table so read transactions never meet a missing one.
            tx.open_table(CLUSTERS)?;
            tx.open_table(ADMIN_CERTS)?;
            tx.open_table(COMMANDS)?;
            tx.open_table(LIVENESS)?;
            tx.open_table(TOKENS)?;
            tx.open_table(DEPLOYMENTS)?;
            tx.open_table(VARIANTS)?;
            tx.open_table(SUSPENDED)?;
            tx.open_table(SUSPENDED_SOURCES)?;
            tx.open_table(ROLLOUTS)?;
            tx.open_table(STATUSES)?;
            tx.open_table(SEQS)?;
            tx.open_table(EVENTS)?;
            tx.open_table(EVENTS_BY_CLUSTER)?;
            tx.open_table(EVENTS_BY_BUNDLE)?;
            let mut meta = tx.open_table(META)?;
            let found = meta.get(SCHEMA_VERSION_KEY)?.map(|v| v.value());
            match found {
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(Error::Store(format!(
                        "{what} was written by a newer hub (state schema v{v}; this hub knows v{SCHEMA_VERSION}): \
                         run the newer hub, or restore a backup of the data dir made with this version"
                    )));
                }
                Some(_) => {}
                None => {
                    meta.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)?;
                }
            }
        }
        tx.commit()?;
    }
    Ok(db)
}

impl Store for RedbStore {
    fn load(&self) -> Result<Loaded> {
        self.with_db(|db| {
            let tx = db.begin_read()?;
            let mut out = Loaded::default();
            for row in tx.open_table(CLUSTERS)?.iter()? {
                let (_, v) = row?;
                out.clusters.push(dec(v.value())?);
            }
            for row in tx.open_table(TOKENS)?.iter()? {
                let (_, v) = row?;
                out.tokens.push(dec(v.value())?);
            }
            for row in tx.open_table(LIVENESS)?.iter()? {
                let (k, v) = row?;
                out.liveness.push((k.value().to_string(), dec(v.value())?));
            }
            for row in tx.open_table(DEPLOYMENTS)?.iter()? {
                let (_, v) = row?;
                out.deployments.push(dec(v.value())?);
            }
            for row in tx.open_table(VARIANTS)?.iter()? {
                let (_, v) = row?;
                out.variants.push(dec(v.value())?);
            }
            for row in tx.open_table(SUSPENDED)?.iter()? {
                let (k, _) = row?;
                out.suspended.insert(k.value().to_string());
            }
            for row in tx.open_table(SUSPENDED_SOURCES)?.iter()? {
                let (k, _) = row?;
                out.suspended_sources.insert(k.value().to_string());
            }
            for row in tx.open_table(ROLLOUTS)?.iter()? {
                let (_, v) = row?;
                out.rollouts.push(dec(v.value())?);
            }
            for row in tx.open_table(STATUSES)?.iter()? {
                let (k, v) = row?;
                let (cluster, _) = k.value();
                out.statuses.push((cluster.to_string(), dec(v.value())?));
            }
            out.last_event_id = tx.open_table(EVENTS)?.last()?.map(|(k, _)| k.value()).unwrap_or(0);
            for row in tx.open_table(ADMIN_CERTS)?.iter()? {
                let (_, v) = row?;
                out.admin_certs.push(dec(v.value())?);
            }
            for row in tx.open_table(COMMANDS)?.iter()? {
                let (_, v) = row?;
                out.commands.push(dec(v.value())?);
            }
            Ok(out)
        })
    }

    fn last_seq(&self, cluster: &str, epoch: u64) -> Result<u64> {
        self.with_db(|db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(SEQS)?;
            Ok(t.get((cluster, epoch))?.map(|v| v.value()).unwrap_or(0))
        })
    }

    fn commands(&self, cluster: &str) -> Result<Vec<CommandRecord>> {
        self.with_db(|db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(COMMANDS)?;
            let mut out = Vec::new();
            for row in t.range((cluster, "")..)? {
                let (k, v) = row?;
                if k.value().0 != cluster {
                    break;
                }
                out.push(dec(v.value())?);
            }
            Ok(out)
        })
    }

    fn list_events(&self, f: &EventFilter) -> Result<Vec<StoredEvent>> {
        let limit = if f.limit == 0 { 100 } else { f.limit };
        self.with_db(|db| {
            let tx = db.begin_read()?;
            let events = tx.open_table(EVENTS)?;
            let mut out = Vec::new();
            let start = f.after_id.saturating_add(1);
            // Walk the most selective index newest-first, keep the newest `limit`.
            let mut ids: Box<dyn Iterator<Item = Result<u64>>> = if let Some(c) = &f.cluster {
                let idx = tx.open_table(EVENTS_BY_CLUSTER)?;
                let rows: Vec<_> = idx
                    .range((c.as_str(), start)..=(c.as_str(), u64::MAX))?
                    .rev()
                    .map(|r| r.map(|(k, _)| k.value().1).map_err(Error::from))
                    .collect();
                Box::new(rows.into_iter())
            } else if let Some(b) = &f.bundle {
                let idx = tx.open_table(EVENTS_BY_BUNDLE)?;
                let rows: Vec<_> = idx
                    .range((b.as_str(), start)..=(b.as_str(), u64::MAX))?
                    .rev()
                    .map(|r| r.map(|(k, _)| k.value().1).map_err(Error::from))
                    .collect();
                Box::new(rows.into_iter())
            } else {
                let rows: Vec<_> = events
                    .range(start..)?
                    .rev()
                    .map(|r| r.map(|(k, _)| k.value()).map_err(Error::from))
                    .collect();
                Box::new(rows.into_iter())
            };
            for id in ids.by_ref() {
                let id = id?;
                let Some(v) = events.get(id)? else { continue };
                let e: StoredEvent = dec(v.value())?;
                if f.matches(&e) {
                    out.push(e);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            out.reverse();
            Ok(out)
        })
    }

    fn commit(&self, writes: Vec<Write>, now: i64) -> Result<Vec<WriteOutcome>> {
        self.with_db(|db| {
            let tx = db.begin_write()?;
            let mut outcomes = Vec::with_capacity(writes.len());
            {
                let mut clusters = tx.open_table(CLUSTERS)?;
                let mut liveness = tx.open_table(LIVENESS)?;
                let mut tokens = tx.open_table(TOKENS)?;
                let mut deployments = tx.open_table(DEPLOYMENTS)?;
                let mut variants = tx.open_table(VARIANTS)?;
                let mut suspended = tx.open_table(SUSPENDED)?;
                let mut suspended_sources = tx.open_table(SUSPENDED_SOURCES)?;
                let mut rollouts = tx.open_table(ROLLOUTS)?;
                let mut statuses = tx.open_table(STATUSES)?;
                let mut seqs = tx.open_table(SEQS)?;
                let mut commands = tx.open_table(COMMANDS)?;
                let mut log = EventLog {
                    events: tx.open_table(EVENTS)?,
                    by_cluster: tx.open_table(EVENTS_BY_CLUSTER)?,
                    by_bundle: tx.open_table(EVENTS_BY_BUNDLE)?,
                    meta: tx.open_table(META)?,
                    capacity: self.event_capacity,
                };
                for w in writes {
                    let outcome = match w {
                        Write::PutCluster(c) => {
                            clusters.insert(c.name.as_str(), enc(&c)?.as_slice())?;
                            WriteOutcome::Done
                        }
                        Write::PutToken(t) => {
                            tokens.insert(t.id.as_str(), enc(&t)?.as_slice())?;
                            WriteOutcome::Done
                        }
                        Write::PutDeployment(d) => {
                            deployments.insert(d.bundle.as_str(), enc(&d)?.as_slice())?;
                            WriteOutcome::Done
                        }
                        Write::PutVariant(v) => {
                            variants.insert(v.store_key().as_str(), enc(&v)?.as_slice())?;
                            WriteOutcome::Done
                        }
                        Write::SetSuspended { bundle, suspended: s } => {
                            if s {
                                suspended.insert(bundle.as_str(), 0)?;
                            } else {
                                suspended.remove(bundle.as_str())?;
                            }
                            WriteOutcome::Done
                        }
                        Write::SetSourceSuspended { source, suspended: s } => {
                            if s {
                                suspended_sources.insert(source.as_str(), 0)?;
                            } else {
                                suspended_sources.remove(source.as_str())?;
                            }
                            WriteOutcome::Done
                        }
                        Write::PutRollout(r) => {
                            rollouts.insert(r.bundle.as_str(), enc(&r)?.as_slice())?;
                            WriteOutcome::Done
                        }
                        Write::DeleteRollout(bundle) => {
                            rollouts.remove(bundle.as_str())?;
                            WriteOutcome::Done
                        }
                        Write::PutLiveness(rows) => {
                            for (name, l) in rows {
                                liveness.insert(name.as_str(), enc(&l)?.as_slice())?;
                            }
                            WriteOutcome::Done
                        }
                        Write::SeedStatuses { cluster, statuses: seeds } => {
                            let mut stored = Vec::new();
                            for mut s in seeds {
                                if statuses.get((cluster.as_str(), s.status.bundle.as_str()))?.is_none() {
                                    s.updated_unix_ms = now;
                                    statuses.insert(
                                        (cluster.as_str(), s.status.bundle.as_str()),
                                        enc(&s)?.as_slice(),
                                    )?;
                                    stored.push(s);
                                }
                            }
                            WriteOutcome::Seeded { cluster, statuses: stored }
                        }
                        Write::AppendEvents(evs) => {
                            let mut stored = Vec::with_capacity(evs.len());
                            for (cluster, event) in evs {
                                stored.push(log.append(cluster, event, now)?);
                            }
                            WriteOutcome::Events(stored)
                        }
                        Write::AgentBatch(batch) => {
                            let out = store_batch(batch, now, &mut statuses, &mut seqs, &mut log)?;
                            // A stored answer ends its command.
                            for e in &out.events {
                                if let Some(id) = crate::domain::commands::answered(&e.event) {
                                    commands.remove((out.cluster.as_str(), id))?;
                                }
                            }
                            WriteOutcome::Batch(out)
                        }
                        Write::PutCommand(c) => {
                            let key = (c.cluster.as_str(), c.request_id.as_str());
                            let pending = commands
                                .range((c.cluster.as_str(), "")..)?
                                .take_while(|r| r.as_ref().is_ok_and(|(k, _)| k.value().0 == c.cluster))
                                .count();
                            let queued = commands.get(key)?.is_some()
                                || pending < crate::domain::commands::MAX_PENDING;
                            if queued {
                                commands.insert(key, enc(&c)?.as_slice())?;
                            }
                            WriteOutcome::CommandQueued(queued)
                        }
                        Write::ExpireCommand { cluster, request_id, event } => {
                            let existed = commands.remove((cluster.as_str(), request_id.as_str()))?.is_some();
                            let mut stored = Vec::new();
                            if existed {
                                stored.push(log.append(cluster, event, now)?);
                            }
                            WriteOutcome::Events(stored)
                        }
                        Write::PutAdminCert(r) => {
                            tx.open_table(ADMIN_CERTS)?.insert(r.serial.as_str(), enc(&r)?.as_slice())?;
                            WriteOutcome::Done
                        }
                    };
                    outcomes.push(outcome);
                }
            }
            tx.commit()?;
            Ok(outcomes)
        })
    }
}

struct EventLog<'t> {
    events: redb::Table<'t, u64, &'static [u8]>,
    by_cluster: redb::Table<'t, (&'static str, u64), u8>,
    by_bundle: redb::Table<'t, (&'static str, u64), u8>,
    meta: redb::Table<'t, &'static str, u64>,
    capacity: u64,
}

impl EventLog<'_> {
    fn append(
        &mut self,
        cluster: String,
        event: crate::domain::EventRecord,
        now: i64,
    ) -> Result<StoredEvent> {
        let id = self.meta.get(NEXT_EVENT_ID)?.map(|v| v.value()).unwrap_or(1);
        self.meta.insert(NEXT_EVENT_ID, id + 1)?;
        let stored = StoredEvent { id, cluster, event, stored_unix_ms: now };
        self.events.insert(id, enc(&stored)?.as_slice())?;
        self.by_cluster.insert((stored.cluster.as_str(), id), 0)?;
        if !stored.event.bundle.is_empty() {
            self.by_bundle.insert((stored.event.bundle.as_str(), id), 0)?;
        }
        // The ring: drop the event that fell out of the window.
        if id > self.capacity {
            let old_id = id - self.capacity;
            let old = self.events.remove(old_id)?.map(|v| dec::<StoredEvent>(v.value())).transpose()?;
            if let Some(old) = old {
                self.by_cluster.remove((old.cluster.as_str(), old_id))?;
                if !old.event.bundle.is_empty() {
                    self.by_bundle.remove((old.event.bundle.as_str(), old_id))?;
                }
            }
        }
        Ok(stored)
    }
}

fn store_batch(
    batch: AgentBatch,
    now: i64,
    statuses: &mut redb::Table<'_, (&'static str, &'static str), &'static [u8]>,
    seqs: &mut redb::Table<'_, (&'static str, u64), u64>,
    log: &mut EventLog<'_>,
) -> Result<BatchOutcome> {
    let cluster = batch.cluster.as_str();
    let existing = seqs.get((cluster, batch.epoch))?.map(|v| v.value());
    let stored = existing.unwrap_or(0);
    let (last, keep) = fresh_entries(stored, &batch.entries);
    let mut out = BatchOutcome { cluster: batch.cluster.clone(), acked_seq: last, ..Default::default() };
    if keep.is_empty() {
        return Ok(out);
    }
    if existing.is_none() {
        // A new outbox epoch: earlier epochs of this cluster are finished.
        let old: Vec<u64> = seqs
            .range((cluster, 0)..=(cluster, u64::MAX))?
            .map(|r| r.map(|(k, _)| k.value().1))
            .collect::<std::result::Result<_, _>>()?;
        for e in old {
            seqs.remove((cluster, e))?;
        }
    }
    let mut entries: Vec<Option<(u64, OutboxEntry)>> = batch.entries.into_iter().map(Some).collect();
    for i in keep {
        let Some((_, entry)) = entries[i].take() else { continue };
        match entry {
            OutboxEntry::Status(mut s) => {
                s.updated_unix_ms = now;
                statuses.insert((cluster, s.status.bundle.as_str()), enc(&s)?.as_slice())?;
                out.statuses.push(s);
            }
            OutboxEntry::Event(e) => out.events.push(log.append(cluster.to_string(), e, now)?),
        }
    }
    seqs.insert((cluster, batch.epoch), last)?;
    Ok(out)
}

#[cfg(test)]
/// Statuses of one cluster from a loaded snapshot, for tests.
pub fn statuses_of<'a>(
    loaded: &'a Loaded,
    cluster: &'a str,
) -> impl Iterator<Item = &'a crate::domain::StatusRecord> + 'a {
    loaded.statuses.iter().filter(move |(c, _)| c == cluster).map(|(_, s)| s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ClusterRecord, EventRecord, StatusRecord};
    use convoy_core::status::{BundleStatus, Phase, Severity};
    use std::sync::Arc;

    #[test]
    fn refuses_a_state_file_from_a_newer_hub() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        drop(RedbStore::open(&path, 10, 1 << 20).unwrap());
        {
            // Reopening the same version is fine, and the version was recorded.
            let s = RedbStore::open(&path, 10, 1 << 20).unwrap();
            let g = s.db.read().unwrap();
            let tx = g.as_ref().unwrap().begin_write().unwrap();
            {
                let mut meta = tx.open_table(META).unwrap();
                assert_eq!(meta.get(SCHEMA_VERSION_KEY).unwrap().unwrap().value(), SCHEMA_VERSION);
                meta.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION + 1).unwrap();
            }
            tx.commit().unwrap();
        }
        let err = RedbStore::open(&path, 10, 1 << 20).err().expect("a newer schema must be refused");
        assert!(err.to_string().contains("newer hub"), "{err}");
    }

    /// A file backend whose writes and syncs fail while `full` is set (a
    /// full disk).
    #[derive(Debug)]
    struct FlakyDisk {
        file: redb::backends::FileBackend,
        full: Arc<std::sync::atomic::AtomicBool>,
    }

    impl redb::StorageBackend for FlakyDisk {
        fn len(&self) -> std::result::Result<u64, std::io::Error> {
            self.file.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::result::Result<(), std::io::Error> {
            self.file.read(offset, out)
        }
        fn set_len(&self, len: u64) -> std::result::Result<(), std::io::Error> {
            self.fail()?;
            self.file.set_len(len)
        }
        fn sync_data(&self) -> std::result::Result<(), std::io::Error> {
            self.fail()?;
            self.file.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::result::Result<(), std::io::Error> {
            self.fail()?;
            self.file.write(offset, data)
        }
    }

    impl FlakyDisk {
        fn fail(&self) -> std::result::Result<(), std::io::Error> {
            if self.full.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(28));
            }
            Ok(())
        }
    }

    /// A commit that meets a full disk latches redb (every later call is
    /// `PreviousIo`); the store reopens the database, so once space returns
    /// the next commit works, without a restart, and nothing of the failed
    /// commit is there.
    #[test]
    fn a_commit_that_met_a_full_disk_does_not_latch_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = full.clone();
        let store = RedbStore::open_with(
            move || {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
                    .map_err(|e| Error::Store(e.to_string()))?;
                let backend = FlakyDisk { file: redb::backends::FileBackend::new(file)?, full: f.clone() };
                prepare(Database::builder().create_with_backend(backend)?, "state.redb")
            },
            10,
        )
        .unwrap();
        let put = |n: &str| {
            store.commit(vec![Write::PutCluster(ClusterRecord { name: n.into(), ..Default::default() })], 1)
        };
        put("before").unwrap();
        full.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(put("during").is_err(), "a commit on a full disk fails");
        full.store(false, std::sync::atomic::Ordering::SeqCst);
        put("after").expect("the store works again once space returns");
        let names: Vec<String> = store.load().unwrap().clusters.into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["after", "before"]);
    }

    fn open(dir: &tempfile::TempDir, cap: u64) -> RedbStore {
        RedbStore::open(&dir.path().join("state.redb"), cap, 8 << 20).unwrap()
    }

    fn status(b: &str, gen_: u64) -> OutboxEntry {
        OutboxEntry::Status(StatusRecord {
            status: BundleStatus {
                bundle: b.into(),
                generation: gen_,
                phase: Phase::Ready,
                ..Default::default()
            },
            ..Default::default()
        })
    }

    fn event(b: &str, reason: &str) -> OutboxEntry {
        OutboxEntry::Event(EventRecord { bundle: b.into(), reason: reason.into(), ..Default::default() })
    }

    #[test]
    fn agent_batches_are_idempotent_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(&dir, 100);
            let b = AgentBatch {
                cluster: "c1".into(),
                epoch: 7,
                entries: vec![(1, status("a", 1)), (2, event("a", "Applied"))],
            };
            let out = s.commit(vec![Write::AgentBatch(b.clone())], 5).unwrap();
            let WriteOutcome::Batch(o) = &out[0] else { panic!() };
            assert_eq!(o.acked_seq, 2);
            assert_eq!(o.statuses.len(), 1);
            assert_eq!(o.events.len(), 1);
            // Resending the same entries stores nothing new but still acks.
            let out = s.commit(vec![Write::AgentBatch(b)], 6).unwrap();
            let WriteOutcome::Batch(o) = &out[0] else { panic!() };
            assert_eq!(o.acked_seq, 2);
            assert!(o.statuses.is_empty() && o.events.is_empty());
        }
        let s = open(&dir, 100);
        assert_eq!(s.last_seq("c1", 7).unwrap(), 2);
        assert_eq!(s.last_seq("c1", 8).unwrap(), 0);
        let loaded = s.load().unwrap();
        assert_eq!(statuses_of(&loaded, "c1").count(), 1);
        assert_eq!(s.list_events(&EventFilter::default()).unwrap().len(), 1);
        // A new epoch replaces the old one.
        let b = AgentBatch { cluster: "c1".into(), epoch: 9, entries: vec![(1, status("a", 2))] };
        s.commit(vec![Write::AgentBatch(b)], 7).unwrap();
        assert_eq!(s.last_seq("c1", 7).unwrap(), 0);
        assert_eq!(s.last_seq("c1", 9).unwrap(), 1);
    }

    #[test]
    fn event_log_is_a_bounded_indexed_ring() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir, 5);
        for i in 0..12u64 {
            let cluster = if i % 2 == 0 { "even" } else { "odd" };
            let ev = EventRecord {
                bundle: format!("b{}", i % 3),
                severity: if i == 11 { Severity::Error } else { Severity::Info },
                ..Default::default()
            };
            s.commit(vec![Write::AppendEvents(vec![(cluster.into(), ev)])], i as i64).unwrap();
        }
        let all = s.list_events(&EventFilter { limit: 100, ..Default::default() }).unwrap();
        assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), vec![8, 9, 10, 11, 12]);
        let odd = s
            .list_events(&EventFilter { cluster: Some("odd".into()), limit: 100, ..Default::default() })
            .unwrap();
        assert_eq!(odd.iter().map(|e| e.id).collect::<Vec<_>>(), vec![8, 10, 12]);
        let b1 = s
            .list_events(&EventFilter { bundle: Some("b1".into()), limit: 100, ..Default::default() })
            .unwrap();
        assert!(b1.iter().all(|e| e.event.bundle == "b1"));
        let newest = s.list_events(&EventFilter { limit: 2, ..Default::default() }).unwrap();
        assert_eq!(newest.iter().map(|e| e.id).collect::<Vec<_>>(), vec![11, 12]);
        let after = s.list_events(&EventFilter { after_id: 10, limit: 100, ..Default::default() }).unwrap();
        assert_eq!(after.len(), 2);
        let errors = s
            .list_events(&EventFilter { min_severity: Severity::Error, limit: 100, ..Default::default() })
            .unwrap();
        assert_eq!(errors.len(), 1);
        assert_eq!(s.load().unwrap().last_event_id, 12);
    }

    #[test]
    fn commit_is_all_or_nothing_per_call_and_records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir, 5);
        let c = ClusterRecord { name: "c1".into(), ..Default::default() };
        s.commit(
            vec![
                Write::PutCluster(c.clone()),
                Write::SetSuspended { bundle: "web".into(), suspended: true },
                Write::SetSourceSuspended { source: "repo".into(), suspended: true },
                Write::SeedStatuses {
                    cluster: "c1".into(),
                    statuses: vec![StatusRecord {
                        status: BundleStatus { bundle: "x".into(), ..Default::default() },
                        ..Default::default()
                    }],
                },
            ],
            1,
        )
        .unwrap();
        let out = s
            .commit(
                vec![Write::SeedStatuses {
                    cluster: "c1".into(),
                    statuses: vec![StatusRecord {
                        status: BundleStatus { bundle: "x".into(), generation: 9, ..Default::default() },
                        ..Default::default()
                    }],
                }],
                2,
            )
            .unwrap();
        assert_eq!(
            out,
            vec![WriteOutcome::Seeded { cluster: "c1".into(), statuses: vec![] }],
            "seeding never overwrites"
        );
        let l = s.load().unwrap();
        assert_eq!(l.clusters, vec![c]);
        assert!(l.suspended.contains("web"));
        assert!(l.suspended_sources.contains("repo"));
        assert_eq!(l.statuses.len(), 1);
    }
}
