//! Opens the store the hub config names: the embedded redb file in the data
//! dir (one hub), or etcd (several replicas, feature `etcd`).

use std::path::Path;
use std::sync::Arc;

use super::{RedbStore, Store};
use crate::config::{StoreSettings, StoreType};
use crate::{Error, Result};

/// The configured store. Blocking (connects, checks the schema): call it
/// from `spawn_blocking` or before the runtime is busy.
pub fn open_configured(s: &StoreSettings, data_dir: &Path, event_capacity: u64) -> Result<Arc<dyn Store>> {
    match s.type_ {
        StoreType::Redb => Ok(Arc::new(RedbStore::open(
            &data_dir.join("state.redb"),
            event_capacity,
            s.cache_mib.max(1) << 20,
        )?)),
        StoreType::Etcd => open_etcd(s, event_capacity),
    }
}

#[cfg(feature = "etcd")]
fn open_etcd(s: &StoreSettings, event_capacity: u64) -> Result<Arc<dyn Store>> {
    let mut o = super::EtcdOptions::new(s.endpoints.clone(), &s.prefix);
    o.lease_ttl = s.lease_ttl.get();
    o.max_txn_ops = s.max_txn_ops;
    o.max_txn_bytes = s.max_txn_bytes;
    if let Some(tls) = &s.tls {
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .map_err(|e| Error::Config(format!("store.tls: read {}: {e}", p.display())))
        };
        o.ca_pem = tls.ca.as_deref().map(read).transpose()?;
        o.identity_pem = match (&tls.cert, &tls.key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            (None, None) => None,
            _ => return Err(Error::Config("store.tls: set both cert and key, or neither".into())),
        };
    }
    Ok(Arc::new(super::EtcdStore::open(&o, event_capacity)?))
}

#[cfg(not(feature = "etcd"))]
fn open_etcd(_: &StoreSettings, _: u64) -> Result<Arc<dyn Store>> {
    Err(Error::Config(
        "store.type: etcd needs a hub built with the `etcd` feature (cargo build --features convoy-hub/etcd)"
            .into(),
    ))
}
