//! The webhook receiver: `POST /hooks/<source>` on the hub's HTTP port.
//!
//! A GitSource opts in with `webhook: {secretFile: ..., type: ...}`. The
//! request must carry one of (or, with `type` set, exactly that one):
//! - GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`
//! - GitLab: `X-Gitlab-Token: <secret>`
//! - generic: `X-Signature-Timestamp: <unix seconds>` and
//!   `X-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`;
//!   the timestamp must be within [`REPLAY_WINDOW_SECS`] of the hub's clock,
//!   so a captured request cannot be replayed later, and each signed request
//!   is accepted once: the [`ReplayCache`] remembers it until its timestamp
//!   leaves the window, so the same request replayed inside the window gets
//!   the bad-signature answer too.
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
/// How many accepted generic requests the [`ReplayCache`] of one receiver
/// remembers at most (32 bytes of key plus index each, about 3 MiB in all).
pub const REPLAY_CACHE_CAPACITY: usize = 50_000;

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

/// The receiver's routes over `target`, with its own [`ReplayCache`].
pub fn router<T: HookTarget>(target: T) -> Router {
    Router::new()
        .route("/hooks/{source}", post(receive::<T>))
        .layer(DefaultBodyLimit::max(1 << 20))
        .with_state(Receiver { sources: target, seen: Arc::new(ReplayCache::new(REPLAY_CACHE_CAPACITY)) })
}

/// The receiver's state: the target and the generic requests already accepted.
#[derive(Clone)]
struct Receiver<T> {
    sources: T,
    seen: Arc<ReplayCache>,
}

async fn receive<T: HookTarget>(
    State(Receiver { sources, seen }): State<Receiver<T>>,
    Path(source): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let fleet = sources.fleet();
    let hook = fleet.sources.get(&source).and_then(|s| s.spec.webhook.clone());
    // Chart repositories take the same webhooks (crate::chartsrc).
    let hook = hook
        .or_else(|| fleet.helm_repositories.get(&source).and_then(|r| r.spec.webhook.clone()))
        .or_else(|| fleet.oci_repositories.get(&source).and_then(|r| r.spec.webhook.clone()));
    let Some(hook) = hook else {
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
    let now = unix_now();
    let verified = if secret.is_empty() {
        None
    } else {
        verify_at(hook.type_.as_deref(), &secret, &headers, &body, now)
    };
    let Some(verified) = verified else {
        warn!(source = %source, "webhook with a missing, bad or stale signature refused");
        return REFUSED;
    };
    if let Verified::Generic { timestamp, mac } = verified {
        match seen.check(replay_key(&source, &mac), timestamp + REPLAY_WINDOW_SECS, now) {
            Seen::New => {}
            Seen::Replayed => {
                warn!(source = %source, "webhook replay (a signed request already accepted) refused");
                return REFUSED;
            }
            Seen::Full => {
                warn!(source = %source, capacity = seen.capacity(), "webhook refused: the replay cache is full of fresh requests");
                return (StatusCode::TOO_MANY_REQUESTS, "too many webhook requests\n");
            }
        }
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

/// Whether a bearer token may be sent to `url`: only over https. Shared by
/// git fetches; the hub's alert providers apply the same rule. Plain http is
/// allowed only with the explicit `allowInsecureLoopback` opt-in, see
/// [`bearer_allowed_with`].
pub fn bearer_allowed(url: &str) -> bool {
    bearer_allowed_with(url, false)
}

/// [`bearer_allowed`], and with `allow_insecure_loopback` (the loudly named
/// opt-in for tests and same-host sidecars) also plain http to a loopback IP
/// literal (127.0.0.0/8, ::1). A host name never qualifies: it can resolve
/// anywhere.
pub fn bearer_allowed_with(url: &str, allow_insecure_loopback: bool) -> bool {
    let Ok(u) = reqwest::Url::parse(url.trim()) else { return false };
    match u.scheme() {
        "https" => true,
        "http" if allow_insecure_loopback => u
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

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Whether the request carries a valid signature or token for `secret`, at
/// the hub's current time. (The signature only: replays of a generic request
/// inside the window are refused by the receiver's [`ReplayCache`].)
pub fn authentic(kind: Option<&str>, secret: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    authentic_at(kind, secret, headers, body, unix_now())
}

/// [`authentic`] at `now_unix_secs`.
pub fn authentic_at(
    kind: Option<&str>,
    secret: &[u8],
    headers: &HeaderMap,
    body: &[u8],
    now_unix_secs: i64,
) -> bool {
    verify_at(kind, secret, headers, body, now_unix_secs).is_some()
}

/// How a request was authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// A valid `X-Hub-Signature-256`.
    Github,
    /// The right `X-Gitlab-Token`.
    Gitlab,
    /// A valid generic signature over a fresh timestamp. `mac` is the
    /// canonical HMAC of `"<timestamp>.<body>"` (whatever the spelling of the
    /// headers), the identity of the signed request for replay detection.
    Generic {
        /// The signed timestamp (Unix seconds).
        timestamp: i64,
        /// HMAC-SHA256(secret, "<timestamp>.<body>").
        mac: [u8; 32],
    },
}

/// How the request is authentic for `secret` at `now_unix_secs`, if it is.
pub fn verify_at(
    kind: Option<&str>,
    secret: &[u8],
    headers: &HeaderMap,
    body: &[u8],
    now_unix_secs: i64,
) -> Option<Verified> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let allowed = |k: &str| kind.is_none_or(|t| t == k);
    if allowed("github")
        && let Some(sig) = header(GITHUB_SIGNATURE)
    {
        return hmac_ok(secret, body, sig).then_some(Verified::Github);
    }
    if allowed("gitlab")
        && let Some(token) = header(GITLAB_TOKEN)
    {
        return bool::from(token.as_bytes().ct_eq(secret)).then_some(Verified::Gitlab);
    }
    if allowed("generic")
        && let Some(sig) = header(GENERIC_SIGNATURE)
    {
        // Replay protection: the signed timestamp must be fresh.
        let t = header(GENERIC_TIMESTAMP)?.trim().parse::<i64>().ok()?;
        if now_unix_secs.checked_sub(t).is_none_or(|d| d.unsigned_abs() > REPLAY_WINDOW_SECS as u64) {
            return None;
        }
        let message = timestamped(t, body);
        return hmac_ok(secret, &message, sig)
            .then(|| Verified::Generic { timestamp: t, mac: convoy_core::hmac::digest(secret, &message) });
    }
    None
}

/// The replay-cache key of an accepted generic request to `source`.
fn replay_key(source: &str, mac: &[u8; 32]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(source.as_bytes());
    h.update([0]);
    h.update(mac);
    h.finalize().into()
}

/// What [`ReplayCache::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not seen before: now remembered until its expiry.
    New,
    /// Already accepted, and still inside the window: a replay.
    Replayed,
    /// Not seen, but the cache holds `capacity` unexpired requests: refused
    /// (failing closed; only authentic requests fill it, so only a sender
    /// holding the secret can, with more than `capacity` requests per window).
    Full,
}

/// The signed generic requests already accepted, each until its timestamp
/// leaves the replay window (after that the timestamp check refuses it
/// anyway). Memory is bounded: at most `capacity` entries; expired ones are
/// evicted, oldest expiry first, on every check. One per receiver; the lock
/// is never held across an `.await`.
pub struct ReplayCache {
    capacity: usize,
    inner: std::sync::Mutex<ReplayInner>,
}

#[derive(Default)]
struct ReplayInner {
    /// key -> expiry (Unix seconds).
    seen: std::collections::HashMap<[u8; 32], i64>,
    /// (expiry, key), for eviction in expiry order.
    by_expiry: std::collections::BTreeSet<(i64, [u8; 32])>,
}

impl ReplayCache {
    /// An empty cache remembering at most `capacity` requests.
    pub fn new(capacity: usize) -> Self {
        Self { capacity, inner: Default::default() }
    }

    /// The most requests it remembers.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many requests it remembers now.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).seen.len()
    }

    /// Whether it remembers nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Check `key` at `now` (Unix seconds) and remember it until
    /// `expires_unix_secs` if it is new. Entries expired at `now` are evicted first.
    pub fn check(&self, key: [u8; 32], expires_unix_secs: i64, now: i64) -> Seen {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *g;
        while let Some(&(exp, k)) = inner.by_expiry.first() {
            if exp >= now {
                break;
            }
            inner.by_expiry.pop_first();
            inner.seen.remove(&k);
        }
        if inner.seen.contains_key(&key) {
            return Seen::Replayed;
        }
        if inner.seen.len() >= self.capacity {
            return Seen::Full;
        }
        inner.seen.insert(key, expires_unix_secs);
        inner.by_expiry.insert((expires_unix_secs, key));
        Seen::New
    }
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
    fn bearer_tokens_go_only_over_https_unless_loopback_is_explicitly_allowed() {
        assert!(bearer_allowed("https://git.example/fleet.git"));
        assert!(bearer_allowed("https://127.0.0.1/fleet.git"));
        // Plain http: never by default, not even to loopback.
        for url in ["http://127.0.0.1:8080/fleet.git", "http://[::1]:8080/x", "http://git.example/fleet.git"]
        {
            assert!(!bearer_allowed(url), "{url}");
        }
        // With the opt-in: loopback IP literals only.
        assert!(bearer_allowed_with("http://127.0.0.1:8080/fleet.git", true));
        assert!(bearer_allowed_with("http://127.8.9.10/x", true));
        assert!(bearer_allowed_with("http://[::1]:8080/x", true));
        assert!(bearer_allowed_with("https://git.example/fleet.git", true));
        assert!(!bearer_allowed_with("http://git.example/fleet.git", true));
        assert!(!bearer_allowed_with("http://localhost/fleet.git", true), "a name can resolve anywhere");
        assert!(!bearer_allowed_with("http://10.0.0.1/fleet.git", true));
        assert!(
            !bearer_allowed_with("http://[::ffff:127.0.0.1]/x", true),
            "mapped addresses are not taken for loopback"
        );
        assert!(!bearer_allowed_with("git://git.example/fleet.git", true));
        assert!(!bearer_allowed_with("not a url", true));
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

    #[test]
    fn the_replay_cache_refuses_a_seen_request_until_it_expires_and_stays_bounded() {
        let c = ReplayCache::new(3);
        let k = |i: u8| [i; 32];
        assert_eq!(c.check(k(1), 100, 0), Seen::New);
        assert_eq!(c.check(k(1), 100, 50), Seen::Replayed);
        assert_eq!(c.check(k(1), 100, 100), Seen::Replayed, "still inside the window at its expiry");
        assert_eq!(c.check(k(2), 200, 10), Seen::New);
        assert_eq!(c.check(k(3), 300, 10), Seen::New);
        // Full of unexpired requests: a new one is refused, and not remembered.
        assert_eq!(c.check(k(4), 400, 10), Seen::Full);
        assert_eq!(c.len(), 3);
        // Past its expiry the first is evicted (and a replay of it is then
        // refused by the timestamp window instead), making room.
        assert_eq!(c.check(k(4), 400, 101), Seen::New);
        assert_eq!(c.len(), 3);
        assert_eq!(c.check(k(2), 200, 101), Seen::Replayed);
        // Everything expires: the cache empties.
        assert_eq!(c.check(k(5), 500, 401), Seen::New);
        assert_eq!(c.len(), 1);
        for i in 0..=255u8 {
            let _ = c.check(k(i), 1000, 402);
            assert!(c.len() <= c.capacity());
        }
    }

    /// A target with one source `fleet` whose generic webhook secret is in
    /// `secret_file`, counting the fetches it is asked for.
    #[derive(Clone)]
    struct Target {
        fleet: Arc<FleetConfig>,
        fetches: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl HookTarget for Target {
        fn fleet(&self) -> Arc<FleetConfig> {
            self.fleet.clone()
        }
        fn reconcile(&self, _source: &str) -> Result<()> {
            self.fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_same_signed_generic_request_is_accepted_once_inside_the_window() {
        use tower::ServiceExt;
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("hook");
        std::fs::write(&secret_file, "hook-secret\n").unwrap();
        let text = format!(
            "apiVersion: convoy.dev/v1\nkind: GitSource\nmetadata:\n  name: fleet\nspec:\n  url: https://git.example/fleet.git\n  webhook:\n    secretFile: {}\n    type: generic\n",
            secret_file.display()
        );
        let fleet = Arc::new(FleetConfig::parse([("fleet.yaml", text.as_str())]).unwrap());
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let router = router(Target { fleet, fetches: fetches.clone() });
        let body = br#"{"ref":"refs/heads/main"}"#;
        let post = |ts: String, sig: String| {
            axum::http::Request::post("/hooks/fleet")
                .header(GENERIC_TIMESTAMP, ts)
                .header(GENERIC_SIGNATURE, sig)
                .body(axum::body::Body::from(body.as_slice()))
                .unwrap()
        };
        let now = unix_now();
        let sig = sign_generic(b"hook-secret", now, body);
        let status = |r: axum::response::Response| r.status();
        assert_eq!(
            status(router.clone().oneshot(post(now.to_string(), sig.clone())).await.unwrap()),
            StatusCode::ACCEPTED
        );
        // The same request again, and respelled (upper-case hex, leading
        // zero in the timestamp): the bad-signature answer, no fetch.
        let respelled = format!("sha256={}", sig.trim_start_matches("sha256=").to_uppercase());
        for (ts, sig) in [(now.to_string(), sig.clone()), (format!("0{now}"), respelled)] {
            let r = router.clone().oneshot(post(ts, sig)).await.unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        }
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1);
        // A new delivery (another timestamp) of the same body is accepted.
        let sig2 = sign_generic(b"hook-secret", now - 1, body);
        assert_eq!(
            status(router.clone().oneshot(post((now - 1).to_string(), sig2)).await.unwrap()),
            StatusCode::ACCEPTED
        );
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
