//! The HTTP port (health, and the pipeline's webhooks under `/hooks/...`) and
//! the separate metrics port (`/metrics`), both on axum, each behind the same
//! hardening: at most [`MAX_CONNECTIONS`] open connections (more wait in the
//! kernel's backlog), request headers within [`HEADER_READ_TIMEOUT`] (which
//! also closes an idle keep-alive connection), a connection lives at most
//! [`MAX_CONNECTION_AGE`], and request bodies are capped at [`BODY_LIMIT`].

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};

use crate::metrics::Metrics;

/// Open connections per HTTP port; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 1024;
/// A client must send a request's headers within this (slowloris), and an
/// idle keep-alive connection is closed after it.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connection may stay open, requests included.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);
/// The largest request body (webhooks are the only routes that take one).
pub const BODY_LIMIT: usize = 1 << 20;

/// Serve `router` on `listener` until `shutdown`, with the limits above.
pub fn serve(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let router = router.layer(DefaultBodyLimit::max(BODY_LIMIT));
    let stop = shutdown.clone();
    tokio::spawn(
        crate::accept::capped(listener, MAX_CONNECTIONS, stop, move |tcp, remote, permit| {
            let svc = TowerToHyperService::new(router.clone());
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let _permit = permit;
                // HTTP/1.1 only (health, webhooks, metrics): the header
                // timer runs from the start, so a socket that sends
                // nothing is closed too.
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(tcp), svc);
                tokio::pin!(conn);
                let age = tokio::time::sleep(MAX_CONNECTION_AGE);
                tokio::pin!(age);
                let mut closing = false;
                loop {
                    tokio::select! {
                        r = conn.as_mut() => {
                            if let Err(e) = r {
                                debug!(%remote, error = %e, "HTTP connection ended");
                            }
                            break;
                        }
                        _ = &mut age, if !closing => {
                            closing = true;
                            conn.as_mut().graceful_shutdown();
                        }
                        _ = shutdown.cancelled(), if !closing => {
                            closing = true;
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
            });
        })
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
