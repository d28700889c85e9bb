//! Prometheus metrics (prometheus-client) and the HTTP endpoint serving
//! `/metrics`, `/healthz` (the process runs) and `/readyz` (state restored,
//! controller running; the hub being away does not make the agent unready:
//! it keeps the cluster at its last verified state).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// Labels: bundle and result.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BundleResult {
    /// The bundle.
    pub bundle: String,
    /// success, failure, refused.
    pub result: String,
}

/// Labels: bundle and object action.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BundleAction {
    /// The bundle.
    pub bundle: String,
    /// created, configured, unchanged, pruned.
    pub action: String,
}

/// Labels: bundle and event reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BundleReason {
    /// The bundle ("" for events about no bundle).
    pub bundle: String,
    /// The event reason.
    pub reason: String,
}

/// Labels: bundle.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BundleLabel {
    /// The bundle.
    pub bundle: String,
}

type HistogramFamily = Family<BundleResult, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 16))
}

/// Every agent metric.
pub struct Metrics {
    registry: Registry,
    /// convoy_agent_apply_duration_seconds{bundle,result}
    pub apply_duration: HistogramFamily,
    /// convoy_agent_applies_total{bundle,result}
    pub applies: Family<BundleResult, Counter>,
    /// convoy_agent_objects_total{bundle,action}
    pub objects: Family<BundleAction, Counter>,
    /// convoy_agent_events_total{bundle,reason}: events recorded in the
    /// durable outbox (what the agent sends; the hub acks each one).
    pub events: Family<BundleReason, Counter>,
    /// convoy_agent_drift_corrections_total{bundle}
    pub drift_corrections: Family<BundleLabel, Counter>,
    /// convoy_agent_drift_detected_total{bundle}
    pub drift_detected: Family<BundleLabel, Counter>,
    /// convoy_agent_bundle_ready{bundle}: 1 when Ready.
    pub bundle_ready: Family<BundleLabel, Gauge>,
    /// convoy_agent_hub_connected: 1 while a Sync stream is open.
    pub hub_connected: Gauge,
    /// convoy_agent_hub_reconnects_total
    pub reconnects: Counter,
    /// convoy_agent_outbox_depth: entries waiting for the hub's ack.
    pub outbox_depth: Gauge,
    /// convoy_agent_outbox_dropped_events_total
    pub outbox_dropped: Counter,
    /// convoy_agent_certificate_expiry_timestamp_seconds
    pub cert_expiry: Gauge,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Register every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("convoy_agent");
        let apply_duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let applies = Family::<BundleResult, Counter>::default();
        let objects = Family::<BundleAction, Counter>::default();
        let drift_corrections = Family::<BundleLabel, Counter>::default();
        let events = Family::<BundleReason, Counter>::default();
        let drift_detected = Family::<BundleLabel, Counter>::default();
        let bundle_ready = Family::<BundleLabel, Gauge>::default();
        let hub_connected = Gauge::default();
        let reconnects = Counter::default();
        let outbox_depth = Gauge::default();
        let outbox_dropped = Counter::default();
        let cert_expiry = Gauge::default();
        registry.register_with_unit(
            "apply_duration",
            "Time to apply a bundle (apply and prune, without the health wait)",
            prometheus_client::registry::Unit::Seconds,
            apply_duration.clone(),
        );
        registry.register("applies", "Bundle applies by result", applies.clone());
        registry.register("objects", "Objects handled by applies, by action", objects.clone());
        registry.register("drift_corrections", "Drifted objects put back", drift_corrections.clone());
        registry.register("events", "Events recorded in the outbox, by bundle and reason", events.clone());
        registry.register(
            "drift_detected",
            "Drifted objects reported in detect-only mode",
            drift_detected.clone(),
        );
        registry.register("bundle_ready", "1 when the bundle is Ready", bundle_ready.clone());
        registry.register(
            "hub_connected",
            "1 while the Sync stream to the hub is open",
            hub_connected.clone(),
        );
        registry.register("hub_reconnects", "Sync stream (re)connection attempts", reconnects.clone());
        registry.register(
            "outbox_depth",
            "Statuses and events waiting for the hub's ack",
            outbox_depth.clone(),
        );
        registry.register(
            "outbox_dropped_events",
            "Events dropped because the outbox was full",
            outbox_dropped.clone(),
        );
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the cluster certificate expires (Unix seconds)",
            cert_expiry.clone(),
        );
        Self {
            registry,
            apply_duration,
            applies,
            objects,
            events,
            drift_corrections,
            drift_detected,
            bundle_ready,
            hub_connected,
            reconnects,
            outbox_depth,
            outbox_dropped,
            cert_expiry,
            ready: AtomicBool::new(false),
        }
    }

    /// Mark the agent ready (or not) for /readyz.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether /readyz answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }

    /// Shorthand: count objects of an apply.
    pub fn count_objects(&self, bundle: &str, action: &str, n: u32) {
        if n > 0 {
            self.objects
                .get_or_create(&BundleAction { bundle: bundle.into(), action: action.into() })
                .inc_by(n as u64);
        }
    }
}

async fn metrics_handler(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        m.encode(),
    )
}

async fn readyz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.is_ready() { (StatusCode::OK, "ok") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready") }
}

/// The HTTP router.
pub fn router(m: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(m)
}

/// Bind the metrics address (port 0 picks one); returns the bound address
/// and the server future, which stops at `shutdown`.
pub async fn bind(
    addr: SocketAddr,
    m: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("bind metrics {addr}"), e))?;
    let bound = listener.local_addr().map_err(|e| Error::io("metrics address", e))?;
    let fut = async move {
        let r = axum::serve(listener, router(m)).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        if let Err(error) = r {
            tracing::warn!(%error, "metrics server stopped");
        }
    };
    Ok((bound, fut))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names() {
        let m = Metrics::new();
        m.applies.get_or_create(&BundleResult { bundle: "a".into(), result: "success".into() }).inc();
        m.apply_duration
            .get_or_create(&BundleResult { bundle: "a".into(), result: "success".into() })
            .observe(0.2);
        m.hub_connected.set(1);
        m.count_objects("a", "created", 3);
        m.events.get_or_create(&BundleReason { bundle: "a".into(), reason: "Applied".into() }).inc();
        let text = m.encode();
        for name in [
            "convoy_agent_applies_total{bundle=\"a\",result=\"success\"} 1",
            "convoy_agent_apply_duration_seconds_bucket",
            "convoy_agent_hub_connected 1",
            "convoy_agent_objects_total{bundle=\"a\",action=\"created\"} 3",
            "convoy_agent_outbox_depth 0",
            "convoy_agent_events_total{bundle=\"a\",reason=\"Applied\"} 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
