//! The agent's durable local state, one redb file in the state directory:
//! the outbox (statuses and events with sequence numbers, until the hub acks
//! them), its epoch, and per bundle the last desired deployment and the
//! applied revision, so that a restart with the hub away resumes from disk.
//!
//! Writes are small synchronous transactions; async callers run them in
//! `spawn_blocking`. The outbox is bounded: an unacked status is replaced by
//! a newer status of the same bundle (the hub only needs the latest), and
//! beyond `max_events` the oldest events are dropped and counted.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::bundle::{AppliedRevision, Deployment};
use crate::{Error, Result};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// Unacked status entries by bundle (bundle -> seq), for coalescing.
const STATUS_SEQ: TableDefinition<&str, u64> = TableDefinition::new("status_seq");
const BUNDLES: TableDefinition<&str, &[u8]> = TableDefinition::new("bundles");

/// One outbox entry: the encoded wire message (a StatusReport or EventReport
/// body) and, for statuses, the bundle it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxItem {
    /// A prost-encoded `BundleStatus`.
    Status {
        /// The bundle.
        bundle: String,
        /// Encoded status.
        bytes: Vec<u8>,
    },
    /// A prost-encoded `Event`.
    Event(Vec<u8>),
}

impl OutboxItem {
    fn encode(&self) -> Vec<u8> {
        // One tag byte, then for statuses the bundle name length-prefixed.
        match self {
            OutboxItem::Status { bundle, bytes } => {
                let mut v = Vec::with_capacity(bytes.len() + bundle.len() + 5);
                v.push(b'S');
                v.extend_from_slice(&(bundle.len() as u32).to_be_bytes());
                v.extend_from_slice(bundle.as_bytes());
                v.extend_from_slice(bytes);
                v
            }
            OutboxItem::Event(bytes) => {
                let mut v = Vec::with_capacity(bytes.len() + 1);
                v.push(b'E');
                v.extend_from_slice(bytes);
                v
            }
        }
    }

    fn decode(b: &[u8]) -> Option<OutboxItem> {
        match b.first()? {
            b'S' => {
                let len = u32::from_be_bytes(b.get(1..5)?.try_into().ok()?) as usize;
                let bundle = std::str::from_utf8(b.get(5..5 + len)?).ok()?.to_string();
                Some(OutboxItem::Status { bundle, bytes: b.get(5 + len..)?.to_vec() })
            }
            b'E' => Some(OutboxItem::Event(b[1..].to_vec())),
            _ => None,
        }
    }
}

/// What the agent remembers about one bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRecord {
    /// The last desired deployment from the hub (`None` once removed).
    pub desired: Option<Deployment>,
    /// The revision applied on the cluster.
    pub applied: Option<AppliedRevision>,
}

/// The state store (cheap to clone).
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    epoch: u64,
    max_events: usize,
    dropped: Arc<AtomicU64>,
}

fn meta_get(t: &impl ReadableTable<&'static str, u64>, k: &str) -> Result<Option<u64>> {
    Ok(t.get(k)?.map(|v| v.value()))
}

impl Store {
    /// Open (or create) `<dir>/state.redb`. A new store gets a random outbox epoch.
    pub fn open(dir: &Path, max_events: usize) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let path = dir.join("state.redb");
        // A small page cache: the agent's state is tiny and memory matters.
        let db = Database::builder().set_cache_size(128 * 1024).create(&path)?;
        let tx = db.begin_write()?;
        let epoch = {
            let mut meta = tx.open_table(META)?;
            tx.open_table(OUTBOX)?;
            tx.open_table(STATUS_SEQ)?;
            tx.open_table(BUNDLES)?;
            match meta_get(&meta, "epoch")? {
                Some(e) => e,
                None => {
                    let e = rand::random::<u64>().max(1);
                    meta.insert("epoch", e)?;
                    meta.insert("next_seq", 1)?;
                    e
                }
            }
        };
        tx.commit()?;
        Ok(Store { db: Arc::new(db), epoch, max_events: max_events.max(1), dropped: Arc::default() })
    }

    /// The outbox epoch sent in Hello.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Events dropped because the outbox was full (since this process started).
    pub fn dropped_events(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Append to the outbox; returns the assigned sequence number.
    pub fn append(&self, item: &OutboxItem) -> Result<u64> {
        let tx = self.db.begin_write()?;
        let seq = {
            let mut meta = tx.open_table(META)?;
            let mut outbox = tx.open_table(OUTBOX)?;
            let mut status_seq = tx.open_table(STATUS_SEQ)?;
            let seq = meta_get(&meta, "next_seq")?.unwrap_or(1);
            meta.insert("next_seq", seq + 1)?;
            if let OutboxItem::Status { bundle, .. } = item {
                // The hub needs only the latest status of a bundle.
                if let Some(old) = status_seq.insert(bundle.as_str(), seq)?.map(|v| v.value()) {
                    outbox.remove(old)?;
                }
            }
            outbox.insert(seq, item.encode().as_slice())?;
            // Bound the events.
            let events = (outbox.len()? - status_seq.len()?) as usize;
            if events > self.max_events {
                let over = events - self.max_events;
                let mut victims = Vec::new();
                for e in outbox.iter()? {
                    let (k, v) = e?;
                    if victims.len() >= over {
                        break;
                    }
                    if v.value().first() == Some(&b'E') {
                        victims.push(k.value());
                    }
                }
                for k in &victims {
                    outbox.remove(*k)?;
                }
                self.dropped.fetch_add(victims.len() as u64, Ordering::Relaxed);
            }
            seq
        };
        tx.commit()?;
        Ok(seq)
    }

    /// Entries with seq > `after`, in order, at most `limit`.
    pub fn pending(&self, after: u64, limit: usize) -> Result<Vec<(u64, OutboxItem)>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(OUTBOX)?;
        let mut out = Vec::new();
        for e in t.range(after.saturating_add(1)..)? {
            let (k, v) = e?;
            if let Some(item) = OutboxItem::decode(v.value()) {
                out.push((k.value(), item));
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Drop every entry with seq <= `acked` (cumulative ack from the hub).
    pub fn ack(&self, acked: u64) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut outbox = tx.open_table(OUTBOX)?;
            let mut status_seq = tx.open_table(STATUS_SEQ)?;
            let mut meta = tx.open_table(META)?;
            let keys: Vec<u64> = outbox
                .range(..=acked)?
                .map(|e| e.map(|(k, _)| k.value()))
                .collect::<std::result::Result<_, _>>()?;
            if keys.is_empty() {
                return Ok(());
            }
            for k in keys {
                outbox.remove(k)?;
            }
            let acked_status: Vec<String> = status_seq
                .iter()?
                .filter_map(|e| e.ok())
                .filter(|(_, v)| v.value() <= acked)
                .map(|(k, _)| k.value().to_string())
                .collect();
            for b in acked_status {
                status_seq.remove(b.as_str())?;
            }
            let prev = meta_get(&meta, "acked")?.unwrap_or(0);
            meta.insert("acked", prev.max(acked))?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Entries waiting for an ack.
    pub fn depth(&self) -> Result<u64> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(OUTBOX)?.len()?)
    }

    /// Every bundle record.
    pub fn bundles(&self) -> Result<BTreeMap<String, BundleRecord>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(BUNDLES)?;
        let mut out = BTreeMap::new();
        for e in t.iter()? {
            let (k, v) = e?;
            let rec: BundleRecord = serde_json::from_slice(v.value())
                .map_err(|e| Error::Store(format!("bundle {}: {e}", k.value())))?;
            out.insert(k.value().to_string(), rec);
        }
        Ok(out)
    }

    /// Write (or with `None`, delete) a bundle record.
    pub fn put_bundle(&self, name: &str, rec: Option<&BundleRecord>) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(BUNDLES)?;
            match rec {
                Some(r) => {
                    let bytes = serde_json::to_vec(r).map_err(|e| Error::Store(e.to_string()))?;
                    t.insert(name, bytes.as_slice())?;
                }
                None => {
                    t.remove(name)?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(b: &str, x: u8) -> OutboxItem {
        OutboxItem::Status { bundle: b.into(), bytes: vec![x] }
    }

    #[test]
    fn seqs_increase_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 100).unwrap();
        let epoch = s.epoch();
        assert_eq!(s.append(&OutboxItem::Event(vec![1])).unwrap(), 1);
        assert_eq!(s.append(&status("a", 1)).unwrap(), 2);
        assert_eq!(s.append(&OutboxItem::Event(vec![2])).unwrap(), 3);
        drop(s);
        let s = Store::open(dir.path(), 100).unwrap();
        assert_eq!(s.epoch(), epoch, "the epoch persists with the outbox");
        assert_eq!(s.append(&OutboxItem::Event(vec![3])).unwrap(), 4);
        let p = s.pending(0, 10).unwrap();
        assert_eq!(p.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(p[1].1, status("a", 1));
        s.ack(2).unwrap();
        assert_eq!(s.pending(0, 10).unwrap().iter().map(|(k, _)| *k).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(s.pending(3, 10).unwrap().len(), 1);
        assert_eq!(s.depth().unwrap(), 2);
        // A new store directory is a new epoch.
        let other = tempfile::tempdir().unwrap();
        assert_ne!(Store::open(other.path(), 100).unwrap().epoch(), epoch);
    }

    #[test]
    fn statuses_coalesce_per_bundle_and_events_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 3).unwrap();
        s.append(&status("a", 1)).unwrap();
        s.append(&status("b", 1)).unwrap();
        let latest = s.append(&status("a", 2)).unwrap();
        let p = s.pending(0, 10).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p.last().unwrap(), &(latest, status("a", 2)));
        for i in 0..5 {
            s.append(&OutboxItem::Event(vec![i])).unwrap();
        }
        let p = s.pending(0, 100).unwrap();
        let events: Vec<&OutboxItem> =
            p.iter().map(|(_, i)| i).filter(|i| matches!(i, OutboxItem::Event(_))).collect();
        assert_eq!(
            events,
            [&OutboxItem::Event(vec![2]), &OutboxItem::Event(vec![3]), &OutboxItem::Event(vec![4])]
        );
        assert_eq!(s.dropped_events(), 2);
        // Statuses are never dropped for events.
        assert_eq!(p.iter().filter(|(_, i)| matches!(i, OutboxItem::Status { .. })).count(), 2);
        // An acked status is no longer coalesced with.
        s.ack(latest).unwrap();
        s.append(&status("a", 3)).unwrap();
        assert!(s.pending(0, 100).unwrap().iter().any(|(_, i)| i == &status("a", 3)));
    }

    #[test]
    fn bundle_records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 10).unwrap();
        let rec = BundleRecord { desired: None, applied: None };
        s.put_bundle("x", Some(&rec)).unwrap();
        assert_eq!(s.bundles().unwrap().get("x"), Some(&rec));
        s.put_bundle("x", None).unwrap();
        assert!(s.bundles().unwrap().is_empty());
    }
}
