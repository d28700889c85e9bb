//! Alert rules without I/O: which events an Alert selects, and the duplicate
//! suppression window.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use convoy_core::config::AlertSpec;
use convoy_core::selector::{LabelSelector, Labels};
use convoy_core::status::Severity;
use sha2::{Digest, Sha256};

use crate::domain::{EventRecord, HUB_EVENT_SOURCE, StoredEvent};

/// An Alert document compiled for matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The Alert name.
    pub name: String,
    /// The Provider it delivers to.
    pub provider: String,
    /// The least severity delivered.
    pub severity: Severity,
    /// Only these bundles (`None`: every event, with or without a bundle).
    pub bundles: Option<BTreeSet<String>>,
    /// Only these reasons (`None`: all).
    pub reasons: Option<BTreeSet<String>>,
    /// Only clusters matching this selector (`None`: all, hub events too).
    pub cluster_selector: Option<LabelSelector>,
    /// Identical events within this window are suppressed (zero: never).
    pub suppress_window: Duration,
}

/// Where an event comes from, as the rules see it.
pub enum Subject<'a> {
    /// A cluster, with its labels at event time (`None`: not in the
    /// cluster index, e.g. deleted since).
    Cluster(Option<&'a Labels>),
    /// The hub itself. `targets` tells whether the event's bundle is
    /// targeted at a registered cluster matching a selector.
    Hub {
        /// Whether some cluster matching the selector gets the event's bundle.
        targets: &'a dyn Fn(&LabelSelector) -> bool,
    },
}

impl Rule {
    /// Compile an Alert spec.
    pub fn new(name: &str, spec: &AlertSpec) -> Self {
        let bundles = (!spec.bundles.is_empty() && !spec.bundles.iter().any(|b| b == "*"))
            .then(|| spec.bundles.iter().cloned().collect());
        let reasons = (!spec.reasons.is_empty()).then(|| spec.reasons.iter().cloned().collect());
        Self {
            name: name.into(),
            provider: spec.provider_ref.clone(),
            severity: spec.severity,
            bundles,
            reasons,
            cluster_selector: spec.cluster_selector.clone(),
            suppress_window: spec.suppress_window.get(),
        }
    }

    /// Whether the rule selects `event` from `subject`.
    ///
    /// A cluster selector is evaluated against the reporting cluster's
    /// labels. Hub events (build failures, config errors, registrations) have
    /// no cluster: they pass a selector only when they name a bundle that is
    /// targeted at some registered cluster the selector matches, so a rule
    /// for `env=prod` also hears that a bundle deployed to prod failed to build.
    pub fn matches(&self, event: &EventRecord, subject: &Subject<'_>) -> bool {
        if event.severity < self.severity {
            return false;
        }
        if let Some(b) = &self.bundles
            && !b.contains(&event.bundle)
        {
            return false;
        }
        if let Some(r) = &self.reasons
            && !r.contains(&event.reason)
        {
            return false;
        }
        match (&self.cluster_selector, subject) {
            (None, _) => true,
            (Some(sel), Subject::Cluster(labels)) => labels.is_some_and(|l| sel.matches(l)),
            (Some(sel), Subject::Hub { targets }) => !event.bundle.is_empty() && targets(sel),
        }
    }
}

/// The identity of a notification for suppression: the rule, cluster,
/// bundle, object, reason and message (a digest, so keys stay small).
pub type DedupKey = [u8; 16];

/// The suppression key of `event` under `rule`.
pub fn dedup_key(rule: &str, e: &StoredEvent) -> DedupKey {
    let mut h = Sha256::new();
    for part in [rule, &e.cluster, &e.event.bundle, &e.event.object, &e.event.reason, &e.event.message] {
        // Length-prefixed, so ("ab","c") and ("a","bc") differ.
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let d = h.finalize();
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    k
}

/// What to do with a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it; `suppressed` identical ones were held back since the
    /// previous delivery.
    Deliver {
        /// Duplicates suppressed since the last delivery of this key.
        suppressed: u64,
    },
    /// A duplicate within the window: do not deliver.
    Suppress,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    sent_at: Instant,
    window: Duration,
    suppressed: u64,
}

/// Pending counts are forgotten this long after their window closed, when no
/// duplicate came to carry them.
const PENDING_KEEP: Duration = Duration::from_secs(3600);

/// Duplicate suppression: the first notification of a key is delivered and
/// opens a window; identical ones inside it are counted, not delivered; the
/// first one after it is delivered with that count and opens a new window.
/// Memory is bounded: at most `capacity` keys.
pub struct Suppressor {
    entries: HashMap<DedupKey, Entry>,
    capacity: usize,
}

impl Suppressor {
    /// A suppressor remembering at most `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        Self { entries: HashMap::new(), capacity: capacity.max(1) }
    }

    /// Decide about a notification with `key` at `now`.
    pub fn check(&mut self, key: DedupKey, window: Duration, now: Instant) -> Verdict {
        if window.is_zero() {
            return Verdict::Deliver { suppressed: 0 };
        }
        if let Some(e) = self.entries.get_mut(&key) {
            if now.saturating_duration_since(e.sent_at) < e.window {
                e.suppressed += 1;
                return Verdict::Suppress;
            }
            let suppressed = e.suppressed;
            *e = Entry { sent_at: now, window, suppressed: 0 };
            return Verdict::Deliver { suppressed };
        }
        if self.entries.len() >= self.capacity {
            self.prune(now);
            if self.entries.len() >= self.capacity {
                // Still full of live windows: forget the oldest.
                if let Some(oldest) = self.entries.iter().min_by_key(|(_, e)| e.sent_at).map(|(k, _)| *k) {
                    self.entries.remove(&oldest);
                }
            }
        }
        self.entries.insert(key, Entry { sent_at: now, window, suppressed: 0 });
        Verdict::Deliver { suppressed: 0 }
    }

    /// Forget closed windows (those with a pending count an hour later).
    pub fn prune(&mut self, now: Instant) {
        self.entries.retain(|_, e| {
            let age = now.saturating_duration_since(e.sent_at);
            age < e.window || (e.suppressed > 0 && age < e.window + PENDING_KEEP)
        });
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Whether the event was recorded by the hub itself.
pub fn is_hub_event(e: &StoredEvent) -> bool {
    e.cluster == HUB_EVENT_SOURCE
}

#[cfg(test)]
mod tests {
    use super::*;
    use convoy_core::config::FleetConfig;

    fn rule(spec: &str) -> Rule {
        let text = format!(
            "apiVersion: convoy.dev/v1\nkind: Provider\nmetadata: {{name: p}}\nspec: {{type: webhook, address: \"http://x\"}}\n---\napiVersion: convoy.dev/v1\nkind: Alert\nmetadata: {{name: a}}\nspec:\n  providerRef: p\n{spec}"
        );
        let cfg = FleetConfig::parse([("f.yaml", text.as_str())]).unwrap();
        Rule::new("a", &cfg.alerts["a"].spec)
    }

    fn ev(sev: Severity, bundle: &str, reason: &str) -> EventRecord {
        EventRecord { severity: sev, bundle: bundle.into(), reason: reason.into(), ..Default::default() }
    }

    fn labels(s: &str) -> Labels {
        convoy_core::selector::parse_labels([s]).unwrap()
    }

    #[test]
    fn severity_bundle_and_reason_filters() {
        let r = rule("  severity: warning\n  bundles: [web, db]\n  reasons: [ApplyFailed]\n");
        let any = Subject::Cluster(None);
        assert!(r.matches(&ev(Severity::Error, "web", "ApplyFailed"), &any));
        assert!(r.matches(&ev(Severity::Warning, "db", "ApplyFailed"), &any));
        assert!(!r.matches(&ev(Severity::Info, "web", "ApplyFailed"), &any), "below the severity");
        assert!(!r.matches(&ev(Severity::Error, "api", "ApplyFailed"), &any), "other bundle");
        assert!(!r.matches(&ev(Severity::Error, "", "ApplyFailed"), &any), "no bundle");
        assert!(!r.matches(&ev(Severity::Error, "web", "Pruned"), &any), "other reason");

        let all = rule("  bundles: ['*']\n");
        assert!(all.bundles.is_none());
        assert!(all.matches(&ev(Severity::Info, "", "Anything"), &any));
    }

    #[test]
    fn cluster_selector_uses_labels_and_bundle_targets_for_hub_events() {
        let r = rule("  clusterSelector: {matchLabels: {env: prod}}\n");
        let prod = labels("env=prod,region=eu");
        let dev = labels("env=dev");
        let e = ev(Severity::Error, "web", "ApplyFailed");
        assert!(r.matches(&e, &Subject::Cluster(Some(&prod))));
        assert!(!r.matches(&e, &Subject::Cluster(Some(&dev))));
        assert!(!r.matches(&e, &Subject::Cluster(None)), "unknown cluster: no labels");

        let reaches_prod = |s: &LabelSelector| s.matches(&prod);
        let reaches_dev = |s: &LabelSelector| s.matches(&dev);
        assert!(r.matches(&e, &Subject::Hub { targets: &reaches_prod }));
        assert!(!r.matches(&e, &Subject::Hub { targets: &reaches_dev }));
        let no_bundle = ev(Severity::Error, "", "FleetConfigInvalid");
        assert!(!r.matches(&no_bundle, &Subject::Hub { targets: &reaches_prod }));
        // Without a selector, hub events pass.
        assert!(rule("").matches(&no_bundle, &Subject::Hub { targets: &reaches_dev }));
    }

    fn stored(cluster: &str, object: &str, message: &str) -> StoredEvent {
        StoredEvent {
            id: 1,
            cluster: cluster.into(),
            event: EventRecord {
                bundle: "web".into(),
                object: object.into(),
                reason: "R".into(),
                message: message.into(),
                ..Default::default()
            },
            stored_unix_ms: 0,
        }
    }

    #[test]
    fn dedup_key_covers_rule_cluster_object_and_message() {
        let base = dedup_key("a", &stored("c1", "o", "m"));
        assert_eq!(base, dedup_key("a", &StoredEvent { id: 9, ..stored("c1", "o", "m") }), "id ignored");
        assert_ne!(base, dedup_key("b", &stored("c1", "o", "m")));
        assert_ne!(base, dedup_key("a", &stored("c2", "o", "m")));
        assert_ne!(base, dedup_key("a", &stored("c1", "p", "m")));
        assert_ne!(base, dedup_key("a", &stored("c1", "o", "n")));
        assert_ne!(dedup_key("a", &stored("c1", "ob", "m")), dedup_key("a", &stored("c1", "o", "bm")));
    }

    #[test]
    fn suppression_window_counts_and_reports() {
        let mut s = Suppressor::new(100);
        let t0 = Instant::now();
        let w = Duration::from_secs(60);
        let k = [1u8; 16];
        assert_eq!(s.check(k, w, t0), Verdict::Deliver { suppressed: 0 });
        assert_eq!(s.check(k, w, t0 + Duration::from_secs(1)), Verdict::Suppress);
        assert_eq!(s.check(k, w, t0 + Duration::from_secs(59)), Verdict::Suppress);
        assert_eq!(s.check([2u8; 16], w, t0 + Duration::from_secs(2)), Verdict::Deliver { suppressed: 0 });
        assert_eq!(s.check(k, w, t0 + Duration::from_secs(60)), Verdict::Deliver { suppressed: 2 });
        assert_eq!(s.check(k, w, t0 + Duration::from_secs(61)), Verdict::Suppress, "a new window");
        assert_eq!(s.check(k, Duration::ZERO, t0), Verdict::Deliver { suppressed: 0 }, "no window");
    }

    #[test]
    fn suppressor_memory_is_bounded() {
        let mut s = Suppressor::new(3);
        let t0 = Instant::now();
        let w = Duration::from_secs(10);
        for i in 0..10u8 {
            s.check([i; 16], w, t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(s.len(), 3);
        // The newest keys are still suppressed; the oldest were forgotten.
        assert_eq!(s.check([9; 16], w, t0 + Duration::from_secs(1)), Verdict::Suppress);
        // Closed windows without a pending count are pruned.
        s.prune(t0 + Duration::from_secs(30));
        assert!(s.len() <= 1, "only the key with a pending count may stay: {}", s.len());
        s.prune(t0 + Duration::from_secs(30) + PENDING_KEEP);
        assert!(s.is_empty());
    }
}
