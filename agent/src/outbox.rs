//! The outbox writer: the one task that appends statuses and events to the
//! durable outbox, in the order the controller produced them, off the
//! controller's thread (each append is an fsynced transaction), then wakes
//! the hub session to send them.

use std::sync::Arc;

use tokio::sync::{Notify, mpsc};

use crate::metrics::Metrics;
use crate::store::{OutboxItem, Store};

/// After a batch: outbox depth, events dropped so far, (bundle, reason) of each event recorded.
type Appended = (u64, u64, Vec<(String, String)>);

/// The sending side (cheap to clone).
#[derive(Clone)]
pub struct OutboxWriter {
    tx: mpsc::UnboundedSender<OutboxItem>,
}

impl OutboxWriter {
    /// Queue an item; it is appended in order.
    pub fn push(&self, item: OutboxItem) {
        if self.tx.send(item).is_err() {
            tracing::error!("the outbox writer has stopped; an item was lost");
        }
    }
}

/// Start the writer; it ends when every sender is dropped and the queue is drained.
pub fn start(
    store: Store,
    notify: Arc<Notify>,
    metrics: Arc<Metrics>,
) -> (OutboxWriter, impl std::future::Future<Output = ()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<OutboxItem>();
    let fut = async move {
        while let Some(first) = rx.recv().await {
            // Append whatever is queued in one blocking hop.
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            let s = store.clone();
            let r = tokio::task::spawn_blocking(move || -> crate::Result<Appended> {
                let mut recorded = Vec::new();
                for item in &batch {
                    s.append(item)?;
                    if let OutboxItem::Event(bytes) = item
                        && let Ok(e) = <convoy_proto::v1::Event as prost::Message>::decode(bytes.as_slice())
                    {
                        recorded.push((e.bundle, e.reason));
                    }
                }
                Ok((s.depth()?, s.dropped_events(), recorded))
            })
            .await;
            match r {
                Ok(Ok((depth, dropped, recorded))) => {
                    for (bundle, reason) in recorded {
                        metrics.events.get_or_create(&crate::metrics::BundleReason { bundle, reason }).inc();
                    }
                    metrics.outbox_depth.set(depth as i64);
                    let seen = metrics.outbox_dropped.get();
                    if dropped > seen {
                        metrics.outbox_dropped.inc_by(dropped - seen);
                    }
                    notify.notify_one();
                }
                Ok(Err(error)) => tracing::error!(%error, "cannot append to the outbox"),
                Err(error) => tracing::error!(%error, "outbox append task failed"),
            }
        }
    };
    (OutboxWriter { tx }, fut)
}
