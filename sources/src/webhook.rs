//! The webhook receiver: `POST /hooks/<source>` on the hub's HTTP port.
//!
//! A GitSource opts in with `webhook: {secretFile: ..., type: ...}`. The
//! request must carry one of (or, with `type` set, exactly that one):
//! - GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`
//! - GitLab: `X-Gitlab-Token: <secret>`
//! - generic: `X-Signature: sha256=<hex HMAC-SHA256(secret, body)>`
//!
//! Comparisons are constant-time. A good request triggers an immediate fetch
//! of that source and gets `202 Accepted`; a missing or bad signature gets
//! `401` and does nothing; an unknown source, or one without a webhook, gets
//! `404`; a suspended source `409`. The secret file is read on every request,
//! so rotating it needs no restart. Bodies are limited to 1 MiB.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use std::sync::Arc;

use convoy_core::config::FleetConfig;

use crate::{Error, Result};

/// The header GitHub signs with.
pub const GITHUB_SIGNATURE: &str = "x-hub-signature-256";
/// The header GitLab sends its token in.
pub const GITLAB_TOKEN: &str = "x-gitlab-token";
/// The header of the generic HMAC variant.
pub const GENERIC_SIGNATURE: &str = "x-signature";

/// What the receiver acts on: the fleet config in force and a way to fetch a
/// source now. The controller implements it; this module does not know the
/// controller (no controller <-> webhook cycle).
pub trait HookTarget: Clone + Send + Sync + 'static {
    /// The fleet config in force (webhook settings of each source).
    fn fleet(&self) -> Arc<FleetConfig>;
    /// Fetch `source` now.
    fn reconcile(&self, source: &str) -> Result<()>;
}

/// The receiver's routes over `target`.
pub fn router<T: HookTarget>(target: T) -> Router {
    Router::new()
        .route("/hooks/{source}", post(receive::<T>))
        .layer(DefaultBodyLimit::max(1 << 20))
        .with_state(target)
}

async fn receive<T: HookTarget>(
    State(sources): State<T>,
    Path(source): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let fleet = sources.fleet();
    let Some(hook) = fleet.sources.get(&source).and_then(|s| s.spec.webhook.clone()) else {
        return (StatusCode::NOT_FOUND, "no such webhook\n");
    };
    let secret = match tokio::fs::read(&hook.secret_file).await {
        Ok(s) => trim_newline(s),
        Err(error) => {
            warn!(%error, source = %source, file = %hook.secret_file, "cannot read the webhook secret");
            return (StatusCode::INTERNAL_SERVER_ERROR, "webhook secret unavailable\n");
        }
    };
    if secret.is_empty() || !authentic(hook.type_.as_deref(), &secret, &headers, &body) {
        warn!(source = %source, "webhook with a missing or bad signature refused");
        return (StatusCode::UNAUTHORIZED, "bad signature\n");
    }
    match sources.reconcile(&source) {
        Ok(()) => {
            info!(source = %source, "webhook: fetching now");
            (StatusCode::ACCEPTED, "fetching\n")
        }
        Err(Error::Suspended(_)) => (StatusCode::CONFLICT, "source is suspended\n"),
        Err(Error::UnknownSource(_)) => (StatusCode::NOT_FOUND, "no such source\n"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
    }
}

fn trim_newline(mut s: Vec<u8>) -> Vec<u8> {
    while s.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        s.pop();
    }
    s
}

/// Whether the request carries a valid signature or token for `secret`.
pub fn authentic(kind: Option<&str>, secret: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let allowed = |k: &str| kind.is_none_or(|t| t == k);
    if allowed("github")
        && let Some(sig) = header(GITHUB_SIGNATURE)
    {
        return hmac_ok(secret, body, sig);
    }
    if allowed("gitlab")
        && let Some(token) = header(GITLAB_TOKEN)
    {
        return bool::from(token.as_bytes().ct_eq(secret));
    }
    if allowed("generic")
        && let Some(sig) = header(GENERIC_SIGNATURE)
    {
        return hmac_ok(secret, body, sig);
    }
    false
}

fn hmac_ok(secret: &[u8], body: &[u8], header: &str) -> bool {
    convoy_core::hmac::verify(secret, body, header)
}

/// `sha256=<hex>` of HMAC-SHA256(secret, body): what senders put in
/// `X-Hub-Signature-256` or `X-Signature` ([`convoy_core::hmac::sign`]).
pub use convoy_core::hmac::sign;

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn github_gitlab_and_generic() {
        let (secret, body) = (b"s3cret".as_slice(), br#"{"ref":"refs/heads/main"}"#.as_slice());
        let good = sign(secret, body);
        // GitHub's documented example: secret "It's a Secret to Everybody", body "Hello, World!".
        assert_eq!(
            sign(b"It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        assert!(authentic(None, secret, &headers(&[(GITHUB_SIGNATURE, &good)]), body));
        assert!(authentic(Some("github"), secret, &headers(&[(GITHUB_SIGNATURE, &good)]), body));
        assert!(!authentic(Some("gitlab"), secret, &headers(&[(GITHUB_SIGNATURE, &good)]), body));
        assert!(!authentic(None, secret, &headers(&[(GITHUB_SIGNATURE, &good)]), b"tampered"));
        assert!(!authentic(None, b"other", &headers(&[(GITHUB_SIGNATURE, &good)]), body));
        assert!(!authentic(None, secret, &headers(&[(GITHUB_SIGNATURE, "sha256=zz")]), body));
        assert!(!authentic(
            None,
            secret,
            &headers(&[(GITHUB_SIGNATURE, good.trim_start_matches("sha256="))]),
            body
        ));
        assert!(authentic(None, secret, &headers(&[(GITLAB_TOKEN, "s3cret")]), body));
        assert!(!authentic(None, secret, &headers(&[(GITLAB_TOKEN, "s3cre")]), body));
        assert!(authentic(Some("generic"), secret, &headers(&[(GENERIC_SIGNATURE, &good)]), body));
        assert!(!authentic(Some("github"), secret, &headers(&[(GENERIC_SIGNATURE, &good)]), body));
        assert!(!authentic(None, secret, &HeaderMap::new(), body));
    }
}
