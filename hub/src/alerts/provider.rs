//! One Provider's delivery: its bounded queue and its worker task, which
//! renders each notification for the provider type, signs or authenticates
//! it, POSTs it with a per-attempt timeout and retries with exponential
//! backoff and jitter. A slow or dead endpoint only ever fills its own queue
//! (the oldest entries are dropped): it never blocks the hub or other
//! providers. Endpoint URLs and secrets never reach logs or errors.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use convoy_core::config::ProviderSpec;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::payload::{self, Notification, RenderOptions};
use crate::metrics::{AlertSentLabels, Metrics, ProviderLabels};

/// The header carrying the HMAC of a `generic-hmac` body.
pub const SIGNATURE_HEADER: &str = "x-signature";

/// The provider types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// Generic JSON POST.
    Webhook,
    /// Generic JSON POST with `X-Signature: sha256=<hex>`.
    GenericHmac,
    /// Slack incoming webhook.
    Slack,
    /// Microsoft Teams (Adaptive Card).
    Teams,
    /// Discord webhook.
    Discord,
    /// Prometheus Alertmanager API v2.
    Alertmanager,
}

impl ProviderKind {
    /// From the `spec.type` string.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "webhook" => Self::Webhook,
            "generic-hmac" => Self::GenericHmac,
            "slack" => Self::Slack,
            "teams" => Self::Teams,
            "discord" => Self::Discord,
            "alertmanager" => Self::Alertmanager,
            _ => return None,
        })
    }
}

/// The `sha256=<hex>` signature of `body` with `key` ([`convoy_core::hmac::sign`]).
pub use convoy_core::hmac::sign;

/// Retry and shutdown settings.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per notification, the first included.
    pub max_attempts: u32,
    /// The first retry delay.
    pub base: Duration,
    /// The longest retry delay.
    pub max: Duration,
    /// How long a draining hub keeps delivering what is queued.
    pub flush: Duration,
}

impl RetryPolicy {
    /// The delay before retry number `attempt` (1 = after the first
    /// failure): full jitter ([`convoy_core::backoff`]) below a ceiling of
    /// `base * 2^(attempt-1)` capped at `max`, so retries of many hubs do not align.
    pub fn delay(&self, attempt: u32) -> Duration {
        convoy_core::backoff::delay(attempt.saturating_sub(1), self.base, self.max)
    }
}

/// A bounded queue of notifications; when full the oldest is dropped.
pub struct Queue {
    items: Mutex<VecDeque<Arc<Notification>>>,
    notify: Notify,
    capacity: usize,
}

impl Queue {
    /// A queue of at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self { items: Mutex::new(VecDeque::new()), notify: Notify::new(), capacity: capacity.max(1) }
    }

    /// Append; returns the entry dropped to make room, if any.
    pub fn push(&self, n: Arc<Notification>) -> Option<Arc<Notification>> {
        let mut q = self.items.lock();
        let dropped = if q.len() >= self.capacity { q.pop_front() } else { None };
        q.push_back(n);
        drop(q);
        self.notify.notify_one();
        dropped
    }

    /// Put an entry back at the head (an interrupted delivery); returns
    /// false when the queue filled up meanwhile and it was dropped instead.
    fn push_front(&self, n: Arc<Notification>) -> bool {
        let mut q = self.items.lock();
        let room = q.len() < self.capacity;
        if room {
            q.push_front(n);
        }
        drop(q);
        self.notify.notify_one();
        room
    }

    /// Take the head, if any.
    pub fn try_pop(&self) -> Option<Arc<Notification>> {
        self.items.lock().pop_front()
    }

    /// Wait for an entry.
    pub async fn pop(&self) -> Arc<Notification> {
        loop {
            if let Some(n) = self.try_pop() {
                return n;
            }
            // notify_one stores a permit when nobody waits: no lost wake-up.
            self.notify.notified().await;
        }
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.items.lock().len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Everything a worker needs to deliver for one Provider.
#[derive(Clone)]
pub struct Delivery {
    /// The Provider name (the only provider detail that is ever logged).
    pub name: String,
    /// Its type.
    pub kind: ProviderKind,
    /// Its spec.
    pub spec: ProviderSpec,
    /// The shared HTTP client (`None` when none could be built).
    pub client: Option<reqwest::Client>,
    /// Retries and flushing.
    pub retry: RetryPolicy,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// Why an attempt failed, without the URL or any secret.
#[derive(Debug)]
pub enum AttemptError {
    /// Worth retrying (connection, timeout, 5xx, 408, 429), maybe after a
    /// delay the endpoint asked for.
    Transient(String, Option<Duration>),
    /// Retrying will not help (bad config, a 4xx refusal).
    Permanent(String),
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::Transient(m, _) | AttemptError::Permanent(m) => f.write_str(m),
        }
    }
}

/// A reqwest error as text, without its URL.
pub fn describe(e: reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {}", convoy_core::duration::HumanDuration(timeout));
    }
    let e = e.without_url();
    let mut s = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

async fn read_trimmed(path: &str, what: &str) -> Result<String, AttemptError> {
    match tokio::fs::read_to_string(path).await {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Ok(_) => Err(AttemptError::Transient(format!("{what} {path} is empty"), None)),
        Err(e) => Err(AttemptError::Transient(format!("cannot read {what} {path}: {e}"), None)),
    }
}

impl Delivery {
    fn options(&self) -> RenderOptions {
        RenderOptions { channel: self.spec.channel.clone(), username: self.spec.username.clone() }
    }

    /// The body for this provider type.
    pub fn render(&self, n: &Notification) -> Vec<u8> {
        match self.kind {
            ProviderKind::Webhook | ProviderKind::GenericHmac => payload::json_body(n),
            ProviderKind::Slack => payload::slack_body(n, &self.options()),
            ProviderKind::Teams => payload::teams_body(n),
            ProviderKind::Discord => payload::discord_body(n, &self.options()),
            ProviderKind::Alertmanager => payload::alertmanager_body(n),
        }
    }

    /// The endpoint URL (read from addressFile on every use, so rotating it
    /// needs no restart). Errors never contain the URL.
    async fn url(&self) -> Result<reqwest::Url, AttemptError> {
        let raw = match (&self.spec.address, &self.spec.address_file) {
            (Some(a), _) => a.trim().to_string(),
            (None, Some(f)) => read_trimmed(f, "addressFile").await?,
            (None, None) => return Err(AttemptError::Permanent("no address".into())),
        };
        let mut url = reqwest::Url::parse(&raw)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| AttemptError::Permanent("the address is not an http(s) URL".into()))?;
        if self.kind == ProviderKind::Alertmanager
            && !url.path().trim_end_matches('/').ends_with("/api/v2/alerts")
        {
            let path = format!("{}/api/v2/alerts", url.path().trim_end_matches('/'));
            url.set_path(&path);
        }
        Ok(url)
    }

    /// One POST of `body`.
    pub async fn attempt(&self, body: &[u8], timeout: Duration) -> Result<(), AttemptError> {
        let Some(client) = &self.client else {
            return Err(AttemptError::Permanent(
                "no HTTP client: install a rustls crypto provider before starting the hub".into(),
            ));
        };
        let url = self.url().await?;
        let url_for_auth = url.clone();
        let mut req = client
            .post(url)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        if let Some(f) = &self.spec.secret_file {
            let secret = read_trimmed(f, "secretFile").await?;
            req = match self.kind {
                ProviderKind::GenericHmac => req.header(SIGNATURE_HEADER, sign(secret.as_bytes(), body)),
                _ if !convoy_sources::webhook::bearer_allowed_with(
                    url_for_auth.as_str(),
                    self.spec.allow_insecure_loopback,
                ) =>
                {
                    return Err(AttemptError::Permanent(
                        "refusing to send the bearer token over plain http: use an https address (allowInsecureLoopback allows http to a loopback IP only)".into(),
                    ));
                }
                _ => req.bearer_auth(secret),
            };
        }
        let resp = req.send().await.map_err(|e| AttemptError::Transient(describe(e, timeout), None))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let msg = format!("the endpoint answered HTTP {status}");
        if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            Err(AttemptError::Transient(msg, retry_after))
        } else {
            Err(AttemptError::Permanent(msg))
        }
    }

    fn count(&self, result: &'static str) {
        self.metrics
            .alerts_sent
            .get_or_create(&AlertSentLabels { provider: self.name.clone(), result })
            .inc();
    }

    fn gauge(&self, queue: &Queue) {
        self.metrics
            .alerts_queue_depth
            .get_or_create(&ProviderLabels { provider: self.name.clone() })
            .set(queue.len() as i64);
    }
}

enum Outcome {
    Delivered,
    Failed(String),
    Stopped,
}

async fn deliver(d: &Delivery, n: &Notification, stop: &CancellationToken) -> Outcome {
    let body = d.render(n);
    let timeout = d.spec.timeout.get();
    let attempts = d.retry.max_attempts.max(1);
    for attempt in 1..=attempts {
        let r = tokio::select! {
            biased;
            _ = stop.cancelled() => return Outcome::Stopped,
            r = d.attempt(&body, timeout) => r,
        };
        let wait = match r {
            Ok(()) => return Outcome::Delivered,
            Err(AttemptError::Permanent(m)) => return Outcome::Failed(m),
            Err(AttemptError::Transient(m, after)) => {
                if attempt == attempts {
                    return Outcome::Failed(format!("{m} (after {attempts} attempts)"));
                }
                let delay = d.retry.delay(attempt).max(after.unwrap_or_default().min(d.retry.max));
                debug!(provider = %d.name, attempt, error = %m, retry_in_ms = delay.as_millis() as u64, "alert delivery failed; retrying");
                delay
            }
        };
        tokio::select! {
            biased;
            _ = stop.cancelled() => return Outcome::Stopped,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    Outcome::Failed("no attempt made".into())
}

/// The worker of one Provider: deliver queued notifications in order until
/// `stop` is cancelled. When it was `previous`ly served by another worker
/// (the Provider changed), wait for that one to let go first. When the hub
/// drains (`drain`), give what is still queued one attempt each within the
/// flush period.
pub async fn run(
    d: Delivery,
    queue: Arc<Queue>,
    stop: CancellationToken,
    drain: CancellationToken,
    previous: Option<tokio::task::JoinHandle<()>>,
) {
    if let Some(p) = previous {
        let _ = p.await;
    }
    debug!(provider = %d.name, kind = ?d.kind, "alert provider started");
    loop {
        let n = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            n = queue.pop() => n,
        };
        d.gauge(&queue);
        match deliver(&d, &n, &stop).await {
            Outcome::Delivered => {
                d.count("ok");
                debug!(provider = %d.name, alert = %n.alert, event_id = n.event_id, "alert delivered");
            }
            Outcome::Failed(error) => {
                d.count("error");
                warn!(provider = %d.name, alert = %n.alert, event_id = n.event_id, %error, "alert not delivered; giving up");
            }
            Outcome::Stopped => {
                if !queue.push_front(n) {
                    d.metrics
                        .alerts_dropped
                        .get_or_create(&ProviderLabels { provider: d.name.clone() })
                        .inc();
                }
                break;
            }
        }
    }
    if drain.is_cancelled() && !queue.is_empty() {
        flush(&d, &queue).await;
    }
    d.gauge(&queue);
    debug!(provider = %d.name, "alert provider stopped");
}

async fn flush(d: &Delivery, queue: &Queue) {
    let deadline = Instant::now() + d.retry.flush;
    let (mut sent, mut failed) = (0u32, 0u32);
    while let Some(n) = queue.try_pop() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let _ = queue.push_front(n);
            break;
        }
        let body = d.render(&n);
        match d.attempt(&body, d.spec.timeout.get().min(left)).await {
            Ok(()) => {
                d.count("ok");
                sent += 1;
            }
            Err(_) => {
                d.count("error");
                failed += 1;
            }
        }
    }
    let left = queue.len();
    if sent + failed > 0 || left > 0 {
        info!(provider = %d.name, sent, failed, left, "alert queue flushed at shutdown");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_a_known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            flush: Duration::ZERO,
        };
        for _ in 0..50 {
            assert!(p.delay(1) <= Duration::from_millis(100));
            assert!(p.delay(3) <= Duration::from_millis(400));
            assert!(p.delay(9) <= Duration::from_millis(1000));
            assert!(p.delay(u32::MAX) <= Duration::from_millis(1000));
        }
        // The ceilings the draws are taken under.
        let ceil = |a: u32| convoy_core::backoff::ceiling(a.saturating_sub(1), p.base, p.max).as_millis();
        assert_eq!([ceil(1), ceil(2), ceil(3), ceil(4), ceil(5), ceil(9)], [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn queue_drops_the_oldest() {
        let q = Queue::new(2);
        let n = |id| Arc::new(Notification { event_id: id, ..super::super::payload::sample() });
        assert!(q.push(n(1)).is_none());
        assert!(q.push(n(2)).is_none());
        assert_eq!(q.push(n(3)).unwrap().event_id, 1);
        assert_eq!(q.try_pop().unwrap().event_id, 2);
        assert_eq!(q.try_pop().unwrap().event_id, 3);
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn errors_never_contain_the_url_or_secret() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // A closed port: bind, learn the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let url_file = dir.path().join("url");
        std::fs::write(&url_file, format!("http://127.0.0.1:{port}/services/T0/B0/s3cr3t-path\n")).unwrap();
        let d = Delivery {
            name: "ops".into(),
            kind: ProviderKind::Slack,
            spec: ProviderSpec {
                type_: "slack".into(),
                address: None,
                address_file: Some(url_file.display().to_string()),
                secret_file: None,
                timeout: convoy_core::duration::HumanDuration::from_secs(5),
                suspend: false,
                channel: None,
                username: None,
                allow_insecure_loopback: false,
            },
            client: Some(reqwest::Client::new()),
            retry: RetryPolicy {
                max_attempts: 1,
                base: Duration::ZERO,
                max: Duration::ZERO,
                flush: Duration::ZERO,
            },
            metrics: Arc::new(Metrics::new()),
        };
        let err = d.attempt(b"{}", Duration::from_secs(5)).await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, AttemptError::Transient(..)), "{text}");
        assert!(!text.contains("s3cr3t") && !text.contains("services"), "{text}");
        assert!(text.to_lowercase().contains("connect"), "{text}");

        // A malformed address file: the error does not echo it either.
        std::fs::write(&url_file, "not a url s3cr3t").unwrap();
        let err = d.attempt(b"{}", Duration::from_secs(5)).await.unwrap_err().to_string();
        assert!(!err.contains("s3cr3t"), "{err}");
    }

    /// A bearer token goes over plain http to loopback only with the
    /// explicit opt-in: without it the delivery is refused before any
    /// connection; with it, it is attempted (here: a closed port).
    #[tokio::test]
    async fn a_bearer_token_over_plain_http_needs_the_insecure_loopback_opt_in() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t0ken\n").unwrap();
        let delivery = |allow_insecure_loopback| Delivery {
            name: "am".into(),
            kind: ProviderKind::Alertmanager,
            spec: ProviderSpec {
                type_: "alertmanager".into(),
                address: Some(format!("http://127.0.0.1:{port}")),
                address_file: None,
                secret_file: Some(token.display().to_string()),
                timeout: convoy_core::duration::HumanDuration::from_secs(5),
                suspend: false,
                channel: None,
                username: None,
                allow_insecure_loopback,
            },
            client: Some(reqwest::Client::new()),
            retry: RetryPolicy {
                max_attempts: 1,
                base: Duration::ZERO,
                max: Duration::ZERO,
                flush: Duration::ZERO,
            },
            metrics: Arc::new(Metrics::new()),
        };
        let err = delivery(false).attempt(b"[]", Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(&err, AttemptError::Permanent(m) if m.contains("plain http")), "{err}");
        let err = delivery(true).attempt(b"[]", Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(&err, AttemptError::Transient(..)), "attempted with the opt-in: {err}");
    }
}
