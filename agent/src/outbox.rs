//! The outbox writer: the one task that appends statuses and events to the
//! durable outbox, in the order the controller produced them, off the
//! controller's thread (each append is an fsynced transaction), then wakes
//! the hub session to send them.
//!
//! Nothing is lost silently: a batch whose append fails stays queued and is
//! retried (with backoff) until it is durable; a status is acknowledged to
//! the controller (marked published) only once its append has committed;
//! statuses coalesce in the store (the latest per bundle wins); and events
//! the bounded store had to drop are counted (metric) and reported by an
//! `EventsDropped` event.

use std::sync::Arc;
use std::time::Duration;

use convoy_core::status::Severity;
use prost::Message;
use tokio::sync::{Notify, mpsc};

use crate::metrics::{BundleReason, Metrics};
use crate::status::{BundleStatus, Event};
use crate::store::{OutboxItem, Store};

/// A status the writer made durable: the controller marks it published.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Published {
    /// The bundle.
    pub bundle: String,
    /// The status appended.
    pub status: BundleStatus,
}

/// One queued entry, with what the writer needs besides the wire bytes.
#[derive(Debug)]
enum Queued {
    Status(BundleStatus, OutboxItem),
    /// The event's bundle and reason (for metrics), and its wire bytes.
    Event {
        bundle: String,
        reason: String,
        item: OutboxItem,
    },
}

impl Queued {
    fn item(&self) -> &OutboxItem {
        match self {
            Queued::Status(_, item) | Queued::Event { item, .. } => item,
        }
    }
}

/// The sending side (cheap to clone).
#[derive(Clone)]
pub struct OutboxWriter {
    tx: mpsc::UnboundedSender<Queued>,
}

impl OutboxWriter {
    /// Queue a bundle status; it is appended in order, then acknowledged.
    pub fn push_status(&self, status: &BundleStatus) {
        let bytes = convoy_proto::convert::status_to_pb(status).encode_to_vec();
        let item = OutboxItem::Status { bundle: status.bundle.clone(), bytes };
        self.send(Queued::Status(status.clone(), item));
    }

    /// Queue an event; it is appended in order.
    pub fn push_event(&self, ev: &Event) {
        let bytes = convoy_proto::convert::event_to_pb(ev).encode_to_vec();
        self.send(Queued::Event {
            bundle: ev.bundle.clone(),
            reason: ev.reason.clone(),
            item: OutboxItem::Event(bytes),
        });
    }

    fn send(&self, q: Queued) {
        if self.tx.send(q).is_err() {
            // Only after shutdown, when the writer has drained and stopped.
            tracing::error!("the outbox writer has stopped; an item was not recorded");
        }
    }
}

/// The event that reports events the full outbox dropped.
fn dropped_event(total: u64, new: u64) -> Event {
    crate::status::event(
        Severity::Warning,
        "EventsDropped",
        "",
        format!(
            "the outbox was full while the hub was away: {new} older events were dropped ({total} since the agent started); statuses are kept (latest per bundle)"
        ),
    )
    .detail("dropped", new)
    .detail("dropped_total", total)
}

/// Start the writer; it ends when every sender is dropped and the queue is
/// drained. Durable statuses are sent on `acks`.
pub(crate) fn start(
    store: Store,
    notify: Arc<Notify>,
    metrics: Arc<Metrics>,
    acks: mpsc::UnboundedSender<Published>,
) -> (OutboxWriter, impl std::future::Future<Output = ()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Queued>();
    let fut = async move {
        let mut reported = 0u64;
        let mut backoff = convoy_backoff();
        while let Some(first) = rx.recv().await {
            // Append whatever is queued in one blocking hop.
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            let batch = Arc::new(batch);
            // A failed append is retried, from the first item not yet
            // durable, until it is: nothing queued is lost or duplicated.
            let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let (depth, dropped) = loop {
                let s = store.clone();
                let b = batch.clone();
                let done = done.clone();
                let r = tokio::task::spawn_blocking(move || -> crate::Result<(u64, u64)> {
                    use std::sync::atomic::Ordering;
                    for q in &b[done.load(Ordering::Relaxed)..] {
                        s.append(q.item())?;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((s.depth()?, s.dropped_events()))
                })
                .await;
                match r {
                    Ok(Ok(v)) => break v,
                    Ok(Err(error)) => {
                        let delay = backoff.next_delay();
                        tracing::error!(%error, retry_ms = delay.as_millis() as u64, items = batch.len(), "cannot append to the outbox; retrying");
                        tokio::time::sleep(delay).await;
                    }
                    Err(error) => {
                        tracing::error!(%error, "outbox append task failed; retrying");
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            };
            backoff.reset();
            for q in batch.iter() {
                match q {
                    Queued::Status(st, _) => {
                        let _ = acks.send(Published { bundle: st.bundle.clone(), status: st.clone() });
                    }
                    Queued::Event { bundle, reason, .. } => {
                        metrics
                            .events
                            .get_or_create(&BundleReason { bundle: bundle.clone(), reason: reason.clone() })
                            .inc();
                    }
                }
            }
            metrics.outbox_depth.set(depth as i64);
            let seen = metrics.outbox_dropped.get();
            if dropped > seen {
                metrics.outbox_dropped.inc_by(dropped - seen);
            }
            if dropped > reported {
                // Say so, durably. Appending it may push out one more old
                // event: that one is counted in the metric and the next report.
                let ev = dropped_event(dropped, dropped - reported);
                let item = OutboxItem::Event(convoy_proto::convert::event_to_pb(&ev).encode_to_vec());
                let s = store.clone();
                match tokio::task::spawn_blocking(move || s.append(&item).map(|_| s.dropped_events())).await {
                    Ok(Ok(now)) => {
                        metrics
                            .events
                            .get_or_create(&BundleReason { bundle: String::new(), reason: ev.reason.clone() })
                            .inc();
                        if now > dropped {
                            metrics.outbox_dropped.inc_by(now - dropped);
                        }
                        reported = now;
                    }
                    Ok(Err(error)) => tracing::error!(%error, "cannot record the EventsDropped event"),
                    Err(error) => tracing::error!(%error, "outbox append task failed"),
                }
            }
            notify.notify_one();
        }
    };
    (OutboxWriter { tx }, fut)
}

fn convoy_backoff() -> convoy_core::backoff::Backoff {
    convoy_core::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(bundle: &str, message: &str) -> BundleStatus {
        BundleStatus { bundle: bundle.into(), message: message.into(), ..Default::default() }
    }

    #[tokio::test]
    async fn statuses_are_acked_after_append_and_drops_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 2).unwrap();
        let metrics = Arc::new(Metrics::default());
        let notify = Arc::new(Notify::new());
        let (ack_tx, mut acks) = mpsc::unbounded_channel();
        let (w, fut) = start(store.clone(), notify, metrics.clone(), ack_tx);
        let task = tokio::spawn(fut);
        w.push_status(&status("a", "one"));
        let ack = acks.recv().await.unwrap();
        assert_eq!(ack.bundle, "a");
        assert_eq!(ack.status.message, "one");
        // The ack comes after the append: the store has it.
        assert_eq!(store.pending(0, 10).unwrap().len(), 1);
        // Four events into a store that keeps two: two are dropped, counted and reported.
        for i in 0..4 {
            w.push_event(&crate::status::event(Severity::Info, "Applied", "a", format!("e{i}")));
        }
        w.push_status(&status("a", "two"));
        assert_eq!(acks.recv().await.unwrap().status.message, "two");
        drop(w);
        task.await.unwrap();
        assert!(metrics.outbox_dropped.get() >= 2, "drops are counted");
        let pending = store.pending(0, 100).unwrap();
        let reasons: Vec<String> = pending
            .iter()
            .filter_map(|(_, i)| match i {
                OutboxItem::Event(b) => Some(convoy_proto::v1::Event::decode(b.as_slice()).unwrap().reason),
                _ => None,
            })
            .collect();
        assert!(reasons.contains(&"EventsDropped".to_string()), "{reasons:?}");
        let statuses = pending.iter().filter(|(_, i)| matches!(i, OutboxItem::Status { .. })).count();
        assert_eq!(statuses, 1, "the latest status of a bundle replaces the older one");
    }
}
