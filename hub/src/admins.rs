//! The recorded admin certificates: the one place that writes them (through
//! the store writer, durable before visible) and publishes the set to the
//! gRPC edge through a `watch` channel, so a revocation refuses the next call
//! and ends open admin streams at once.

use std::sync::Arc;

use convoy_core::clock::Clock;
use tokio::sync::watch;

use crate::Result;
use crate::domain::admins::{AdminCertRecord, AdminCerts, RevokeTarget, revoke};
use convoy_core::status::Severity;

use crate::domain::EventRecord;
use crate::store::Write;
use crate::writer::WriterHandle;

/// The source name of the hub's own events (as in the state actor).
const HUB_EVENT_SOURCE: &str = "hub";

/// Owns the admin certificate records. Cheap to share (`Arc`).
pub struct AdminRegistry {
    tx: watch::Sender<Arc<AdminCerts>>,
    writer: WriterHandle,
    clock: Arc<dyn Clock>,
}

impl AdminRegistry {
    /// Start from the records loaded from the store.
    pub fn new(loaded: Vec<AdminCertRecord>, writer: WriterHandle, clock: Arc<dyn Clock>) -> Self {
        let certs: AdminCerts = loaded.into_iter().map(|r| (r.serial.clone(), r)).collect();
        let (tx, _) = watch::channel(Arc::new(certs));
        Self { tx, writer, clock }
    }

    /// The current (committed) records.
    pub fn view(&self) -> Arc<AdminCerts> {
        self.tx.borrow().clone()
    }

    /// Follow the records (open admin streams end when their serial is revoked).
    pub fn subscribe(&self) -> watch::Receiver<Arc<AdminCerts>> {
        self.tx.subscribe()
    }

    /// Record a certificate the hub issued. Committed, then visible; a record
    /// already stored is left as it is (a revoked serial stays revoked). Called
    /// at start, before the gRPC port serves, so no revocation races it.
    pub async fn record(&self, rec: AdminCertRecord) -> Result<()> {
        if self.view().contains_key(&rec.serial) {
            return Ok(());
        }
        self.writer.commit(vec![Write::PutAdminCert(rec.clone())]).await?;
        self.tx.send_modify(|m| {
            Arc::make_mut(m).entry(rec.serial.clone()).or_insert(rec);
        });
        Ok(())
    }

    /// Take the records another hub replica committed (already durable, from
    /// the store's change feed): published at once, so a revocation made on
    /// any replica refuses the certificate here too and ends its streams.
    pub fn apply_remote(&self, remote: &[AdminCertRecord]) {
        if remote.is_empty() {
            return;
        }
        self.tx.send_modify(|m| *m = Arc::new(crate::domain::admins::merge_remote(m, remote)));
    }

    /// Revoke by name or serial: the records are committed with an
    /// `AdminCertificateRevoked` hub event, then published. Returns what was
    /// revoked. Two revocations at once are harmless: both only set
    /// `revoked`, and publishing merges.
    pub async fn revoke(&self, target: &RevokeTarget, by: &str) -> Result<Vec<AdminCertRecord>> {
        let changed = revoke(&self.view(), target)?;
        let serials: Vec<&str> = changed.iter().map(|r| r.serial.as_str()).collect();
        let names: std::collections::BTreeSet<&str> = changed.iter().map(|r| r.name.as_str()).collect();
        let names: Vec<&str> = names.into_iter().collect();
        let message =
            format!("admin certificate(s) {} of {} revoked by {by}", serials.join(", "), names.join(", "));
        let mut writes: Vec<Write> = changed.iter().cloned().map(Write::PutAdminCert).collect();
        writes.push(Write::AppendEvents(vec![(
            HUB_EVENT_SOURCE.to_string(),
            EventRecord::new(Severity::Warning, "AdminCertificateRevoked", "", message, self.clock.now_ms()),
        )]));
        self.writer.commit(writes).await?;
        self.tx.send_modify(|m| {
            let m = Arc::make_mut(m);
            for r in &changed {
                m.insert(r.serial.clone(), r.clone());
            }
        });
        Ok(changed)
    }
}
