//! The webhook receiver: `POST /hooks/<source>` on the hub's HTTP port.
//!
//! A GitSource opts in with `webhook: {secretFile: ..., type: ...}`. The
//! request must carry one of (or, with `type` set, exactly that one):
//! - GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`
//! - GitLab: `X-Gitlab-Token: <secret>`
//! - generic: `X-Signature-Timestamp: <unix seconds>` and
//!   `X-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`;
//!   the timestamp must be within [`REPLAY_WINDOW_SECS`] of the hub's clock,
//!   so a captured request cannot be replayed later.
//!
//! Comparisons are constant-time. A good request triggers an immediate fetch
//! of that source and gets `202 Accepted`; a missing or bad signature, an
//! unknown source and a source without a webhook all get the same `401`
//! (so the answer does not reveal which sources exist); an authenticated
//! request for a suspended source gets `409`. The secret file is read on
//! every request, so rotating it needs no restart. Bodies are limited to 1 MiB.

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
/// The timestamp header of the generic HMAC variant (Unix seconds, signed).
pub const GENERIC_TIMESTAMP: &str = "x-signature-timestamp";
/// How far a generic webhook's timestamp may be from the hub's clock.
pub const REPLAY_WINDOW_SECS: i64 = 300;

/// The one answer for an unknown source, a source without a webhook and a bad
/// signature: a caller cannot tell which sources exist.
const REFUSED: (StatusCode, &str) = (StatusCode::UNAUTHORIZED, "bad signature\n");

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
        warn!(source = %source, "webhook for an unknown source (or one without a webhook) refused");
        return REFUSED;
    };
    let secret = match tokio::fs::read(&hook.secret_file).await {
        Ok(s) => trim_newline(s),
        Err(error) => {
            warn!(%error, source = %source, file = %hook.secret_file, "cannot read the webhook secret");
            return (StatusCode::INTERNAL_SERVER_ERROR, "webhook secret unavailable\n");
        }
    };
    if secret.is_empty() || !authentic(hook.type_.as_deref(), &secret, &headers, &body) {
        warn!(source = %source, "webhook with a missing, bad or stale signature refused");
        return REFUSED;
    }
    match sources.reconcile(&source) {
        Ok(()) => {
            info!(source = %source, "webhook: fetching now");
            (StatusCode::ACCEPTED, "fetching\n")
        }
        Err(Error::Suspended(_)) => (StatusCode::CONFLICT, "source is suspended\n"),
        Err(Error::UnknownSource(_)) => REFUSED,
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
    }
}

/// Whether a bearer token may be sent to `url`: only over https, or over
/// plain http to a loopback IP literal (127.0.0.0/8, ::1), where it never
/// leaves the machine. Shared by git fetches; the hub's alert providers apply
/// the same rule.
pub fn bearer_allowed(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url.trim()) else { return false };
    match u.scheme() {
        "https" => true,
        "http" => u
            .host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<std::net::IpAddr>().ok())
            .is_some_and(|ip| ip.is_loopback()),
        _ => false,
    }
}

fn trim_newline(mut s: Vec<u8>) -> Vec<u8> {
    while s.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        s.pop();
    }
    s
}

/// Whether the request carries a valid signature or token for `secret`, at
/// the hub's current time.
pub fn authentic(kind: Option<&str>, secret: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    authentic_at(kind, secret, headers, body, now)
}

/// [`authentic`] at `now_unix_secs`.
pub fn authentic_at(
    kind: Option<&str>,
    secret: &[u8],
    headers: &HeaderMap,
    body: &[u8],
    now_unix_secs: i64,
) -> bool {
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
        // Replay protection: the signed timestamp must be fresh.
        let Some(ts) = header(GENERIC_TIMESTAMP) else { return false };
        let Ok(t) = ts.trim().parse::<i64>() else { return false };
        if (now_unix_secs - t).abs() > REPLAY_WINDOW_SECS {
            return false;
        }
        return hmac_ok(secret, &timestamped(t, body), sig);
    }
    false
}

fn timestamped(t: i64, body: &[u8]) -> Vec<u8> {
    let mut m = format!("{t}.").into_bytes();
    m.extend_from_slice(body);
    m
}

/// The `X-Signature` of the generic variant for a request sent at
/// `unix_secs` (which goes in `X-Signature-Timestamp`).
pub fn sign_generic(secret: &[u8], unix_secs: i64, body: &[u8]) -> String {
    sign(secret, &timestamped(unix_secs, body))
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
        let now = 1_800_000_000;
        let generic = sign_generic(secret, now, body);
        let ts = now.to_string();
        let h = headers(&[(GENERIC_SIGNATURE, &generic), (GENERIC_TIMESTAMP, &ts)]);
        assert!(authentic_at(Some("generic"), secret, &h, body, now));
        assert!(authentic_at(None, secret, &h, body, now + REPLAY_WINDOW_SECS));
        assert!(!authentic_at(Some("github"), secret, &h, body, now));
        assert!(!authentic_at(Some("generic"), secret, &h, b"tampered", now));
        assert!(!authentic(None, secret, &HeaderMap::new(), body));
    }

    #[test]
    fn bearer_tokens_go_only_over_https_or_loopback() {
        assert!(bearer_allowed("https://git.example/fleet.git"));
        assert!(bearer_allowed("http://127.0.0.1:8080/fleet.git"));
        assert!(bearer_allowed("http://[::1]:8080/x"));
        assert!(!bearer_allowed("http://git.example/fleet.git"));
        assert!(!bearer_allowed("http://localhost/fleet.git"), "a name can resolve anywhere");
        assert!(!bearer_allowed("http://10.0.0.1/fleet.git"));
        assert!(!bearer_allowed("git://git.example/fleet.git"));
        assert!(!bearer_allowed("not a url"));
    }

    #[test]
    fn generic_webhooks_need_a_fresh_signed_timestamp() {
        let (secret, body) = (b"s3cret".as_slice(), b"{}".as_slice());
        let now = 1_800_000_000;
        // Without a timestamp (the old format): refused.
        let bare = sign(secret, body);
        assert!(!authentic_at(Some("generic"), secret, &headers(&[(GENERIC_SIGNATURE, &bare)]), body, now));
        // A captured request replayed after the window: refused.
        let sig = sign_generic(secret, now, body);
        let ts = now.to_string();
        let h = headers(&[(GENERIC_SIGNATURE, &sig), (GENERIC_TIMESTAMP, &ts)]);
        assert!(authentic_at(None, secret, &h, body, now + 60));
        assert!(!authentic_at(None, secret, &h, body, now + REPLAY_WINDOW_SECS + 1));
        assert!(!authentic_at(None, secret, &h, body, now - REPLAY_WINDOW_SECS - 1));
        // The timestamp is signed: moving it forward breaks the signature.
        let later = (now + 100).to_string();
        let moved = headers(&[(GENERIC_SIGNATURE, &sig), (GENERIC_TIMESTAMP, &later)]);
        assert!(!authentic_at(None, secret, &moved, body, now + 100));
        let junk = headers(&[(GENERIC_SIGNATURE, &sig), (GENERIC_TIMESTAMP, "soon")]);
        assert!(!authentic_at(None, secret, &junk, body, now));
    }
}
