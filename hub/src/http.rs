//! The HTTP port (health, and the pipeline's webhooks under `/hooks/...`) and
//! the separate metrics port (`/metrics`), both on axum.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

use crate::metrics::Metrics;

/// Serve `router` on `listener` until `shutdown`.
pub fn serve(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(
        async move {
            if let Err(e) =
                axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await
            {
                warn!(error = %e, "HTTP server failed");
            }
        }
        .instrument(info_span!("http", server = name)),
    )
}

/// `/healthz` (alive) and `/readyz` (ready unless draining), plus `extra`
/// (the pipeline's webhook routes).
pub fn health_router(drain: CancellationToken, extra: Option<Router>) -> Router {
    let ready = drain.clone();
    let r = Router::new().route("/healthz", get(|| async { "ok\n" })).route(
        "/readyz",
        get(move || {
            let ready = ready.clone();
            async move {
                if ready.is_cancelled() {
                    (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else {
                    (StatusCode::OK, "ok\n")
                }
            }
        }),
    );
    match extra {
        Some(x) => r.merge(x),
        None => r,
    }
}

/// `/metrics` in the Prometheus text format.
pub fn metrics_router(metrics: Arc<Metrics>) -> Router {
    Router::new().route("/metrics", get(render)).with_state(metrics)
}

async fn render(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], m.encode())
}
