//! Input limits on what an agent sends over its Sync stream: statuses only for
//! bundles in the agent's desired set, capped text and conditions per entry,
//! and an event rate per stream. Pure logic (no I/O): the session asks an
//! [`InputGuard`] what to do with each decoded entry and stores the result.
//!
//! Nothing is dropped silently: the first refusal of each kind on a stream is
//! turned into a Warning event stored in the entry's place (so its sequence
//! number is acknowledged like any other), every refusal is counted by the
//! caller in `convoy_hub_agent_input_refused_total`, and later refusals of the
//! same kind are only counted.

use std::collections::HashSet;
use std::time::Duration;

use convoy_core::status::{BundleStatus, Event, Severity};

use crate::domain::{OutboxEntry, StatusRecord};

/// The largest message an agent may send on the Agent service (decoded size).
pub const MAX_AGENT_MESSAGE_BYTES: usize = 256 * 1024;
/// The largest Registration request.
pub const MAX_REGISTRATION_MESSAGE_BYTES: usize = 64 * 1024;
/// The largest Fleet request an operator may send.
pub const MAX_FLEET_MESSAGE_BYTES: usize = 1024 * 1024;
/// Conditions kept per status; more are dropped (and the status says so).
pub const MAX_CONDITIONS: usize = 16;
/// Longest message/reason text kept per status, condition or event field.
pub const MAX_TEXT: usize = 1024;
/// Longest short field (bundle, revision, digest, type, reason, object).
pub const MAX_SHORT: usize = 512;
/// Details kept per event.
pub const MAX_DETAILS: usize = 16;
/// Events accepted per second per stream (sustained), with this burst.
pub const EVENTS_PER_SECOND: u32 = 50;
/// Burst of events accepted at once per stream.
pub const EVENT_BURST: u32 = 500;
/// Distinct refused bundle names remembered per stream (for report-once);
/// past it, refusals are only counted.
const MAX_REMEMBERED: usize = 64;

/// The worst-case size of one stored entry after [`InputGuard`] capped it:
/// with the session's bound on entries received but not yet stored (1,024),
/// this bounds the pending bytes per stream (about 40 MiB worst case, in
/// practice a few KiB per entry).
pub const MAX_ENTRY_BYTES: usize =
    4 * MAX_SHORT + MAX_TEXT + MAX_CONDITIONS * (2 * MAX_SHORT + MAX_TEXT) + MAX_DETAILS * 2 * MAX_SHORT;

/// What became of one agent entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Store this (possibly capped) entry.
    Store(OutboxEntry),
    /// Store this hub-made Warning event in the entry's place (the first
    /// refusal of its kind on this stream); `kind` names the refusal.
    Report(OutboxEntry, &'static str),
    /// Drop the entry; it is counted under `kind`.
    Drop(&'static str),
}

/// Per-stream input state.
#[derive(Debug)]
pub struct InputGuard {
    refused_bundles: HashSet<String>,
    refused_overflow_reported: bool,
    tokens: f64,
    last_refill_ms: Option<i64>,
    rate_reported_in_window: bool,
}

impl Default for InputGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl InputGuard {
    /// A fresh guard for one stream.
    pub fn new() -> Self {
        Self {
            refused_bundles: HashSet::new(),
            refused_overflow_reported: false,
            tokens: f64::from(EVENT_BURST),
            last_refill_ms: None,
            rate_reported_in_window: false,
        }
    }

    /// Decide about a status for `status.bundle`; `desired` says whether the
    /// bundle is in this cluster's desired set; `now_ms` is the hub's clock.
    pub fn status(&mut self, mut rec: StatusRecord, desired: bool, now_ms: i64) -> Verdict {
        if !desired {
            let bundle = cap(&rec.status.bundle, MAX_SHORT);
            let first = if self.refused_bundles.contains(&bundle) {
                false
            } else if self.refused_bundles.len() < MAX_REMEMBERED {
                self.refused_bundles.insert(bundle.clone());
                true
            } else if !self.refused_overflow_reported {
                self.refused_overflow_reported = true;
                return Verdict::Report(
                    OutboxEntry::Event(warning(
                        "StatusRefused",
                        "",
                        format!(
                            "statuses for more than {MAX_REMEMBERED} bundles not targeted at this cluster were refused; further ones are only counted (convoy_hub_agent_input_refused_total)"
                        ),
                        now_ms,
                    )),
                    "untargeted_status",
                );
            } else {
                false
            };
            if !first {
                return Verdict::Drop("untargeted_status");
            }
            return Verdict::Report(
                OutboxEntry::Event(warning(
                    "StatusRefused",
                    "",
                    format!(
                        "a status for bundle {bundle:?}, which is not targeted at this cluster, was refused (further ones on this stream are only counted)"
                    ),
                    now_ms,
                )),
                "untargeted_status",
            );
        }
        cap_status(&mut rec.status);
        Verdict::Store(OutboxEntry::Status(rec))
    }

    /// Decide about an event at `now_ms` (token bucket per stream).
    pub fn event(&mut self, mut ev: Event, now_ms: i64) -> Verdict {
        let last = *self.last_refill_ms.get_or_insert(now_ms);
        if now_ms > last {
            let add = (now_ms - last) as f64 / 1000.0 * f64::from(EVENTS_PER_SECOND);
            self.tokens = (self.tokens + add).min(f64::from(EVENT_BURST));
            self.last_refill_ms = Some(now_ms);
            if self.tokens >= 1.0 {
                self.rate_reported_in_window = false;
            }
        }
        if self.tokens < 1.0 {
            if self.rate_reported_in_window {
                return Verdict::Drop("event_rate");
            }
            self.rate_reported_in_window = true;
            return Verdict::Report(
                OutboxEntry::Event(warning(
                    "EventsRateLimited",
                    "",
                    format!(
                        "the agent sent more than {EVENTS_PER_SECOND} events/s (burst {EVENT_BURST}); events over the rate are dropped and counted until it slows down"
                    ),
                    now_ms,
                )),
                "event_rate",
            );
        }
        self.tokens -= 1.0;
        cap_event(&mut ev);
        Verdict::Store(OutboxEntry::Event(ev))
    }
}

/// A hub-made Warning event about this stream's input.
fn warning(reason: &str, bundle: &str, message: String, now_ms: i64) -> Event {
    Event::new(Severity::Warning, reason, bundle, message, now_ms)
}

/// `s` cut to at most `max` bytes on a char boundary.
pub fn cap(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn cap_in_place(s: &mut String, max: usize) {
    if s.len() > max {
        *s = cap(s, max);
    }
}

/// Cap a status: text fields and the number of conditions.
pub fn cap_status(s: &mut BundleStatus) {
    cap_in_place(&mut s.bundle, MAX_SHORT);
    cap_in_place(&mut s.revision, MAX_SHORT);
    cap_in_place(&mut s.digest, MAX_SHORT);
    cap_in_place(&mut s.applied_revision, MAX_SHORT);
    cap_in_place(&mut s.message, MAX_TEXT);
    if s.conditions.len() > MAX_CONDITIONS {
        let dropped = s.conditions.len() - MAX_CONDITIONS;
        s.conditions.truncate(MAX_CONDITIONS);
        s.message = cap(
            &format!("{} ({dropped} conditions over the limit of {MAX_CONDITIONS} dropped)", s.message),
            MAX_TEXT + 64,
        );
    }
    for c in &mut s.conditions {
        cap_in_place(&mut c.type_, MAX_SHORT);
        cap_in_place(&mut c.reason, MAX_SHORT);
        cap_in_place(&mut c.message, MAX_TEXT);
    }
}

/// Cap an event's text fields and details.
pub fn cap_event(e: &mut Event) {
    cap_in_place(&mut e.reason, MAX_SHORT);
    cap_in_place(&mut e.bundle, MAX_SHORT);
    cap_in_place(&mut e.object, MAX_SHORT);
    cap_in_place(&mut e.revision, MAX_SHORT);
    cap_in_place(&mut e.message, MAX_TEXT);
    if e.details.len() > MAX_DETAILS {
        let keep: Vec<String> = e.details.keys().take(MAX_DETAILS).cloned().collect();
        e.details.retain(|k, _| keep.contains(k));
    }
    e.details = std::mem::take(&mut e.details)
        .into_iter()
        .map(|(k, v)| (cap(&k, MAX_SHORT), cap(&v, MAX_SHORT)))
        .collect();
}

/// The sustained event interval, for docs and tests.
pub fn event_interval() -> Duration {
    Duration::from_millis(1000 / u64::from(EVENTS_PER_SECOND))
}

#[cfg(test)]
mod tests {
    use super::*;
    use convoy_core::status::Condition;

    fn status(bundle: &str) -> StatusRecord {
        StatusRecord {
            status: BundleStatus { bundle: bundle.into(), ..Default::default() },
            updated_unix_ms: 0,
        }
    }

    #[test]
    fn untargeted_statuses_are_reported_once_then_counted() {
        let mut g = InputGuard::new();
        assert!(matches!(g.status(status("app"), true, 0), Verdict::Store(_)));
        let v = g.status(status("bogus"), false, 0);
        let Verdict::Report(OutboxEntry::Event(e), "untargeted_status") = v else { panic!("{v:?}") };
        assert_eq!(e.reason, "StatusRefused");
        assert!(e.message.contains("bogus"));
        assert_eq!(g.status(status("bogus"), false, 0), Verdict::Drop("untargeted_status"));
        // A flood of distinct names: 64 reports, one overflow report, then drops.
        let mut reports = 1;
        for i in 0..100_000 {
            match g.status(status(&format!("b{i}")), false, 0) {
                Verdict::Report(..) => reports += 1,
                Verdict::Drop(_) => {}
                Verdict::Store(_) => panic!("stored an untargeted status"),
            }
        }
        assert_eq!(reports, MAX_REMEMBERED + 1);
        assert!(g.refused_bundles.len() <= MAX_REMEMBERED);
    }

    #[test]
    fn statuses_are_capped() {
        let mut s = status(&"x".repeat(10_000));
        s.status.message = "m".repeat(100_000);
        s.status.conditions = (0..1000)
            .map(|i| Condition { type_: format!("T{i}"), message: "c".repeat(5000), ..Default::default() })
            .collect();
        let mut g = InputGuard::new();
        let Verdict::Store(OutboxEntry::Status(r)) = g.status(s, true, 0) else { panic!() };
        assert_eq!(r.status.conditions.len(), MAX_CONDITIONS);
        assert!(r.status.message.len() <= MAX_TEXT + 64 + 8);
        assert!(r.status.message.contains("984 conditions over the limit"));
        assert!(r.status.conditions.iter().all(|c| c.message.len() <= MAX_TEXT + 3));
        assert!(r.status.bundle.len() <= MAX_SHORT + 3);
    }

    #[test]
    fn events_are_rate_limited_per_stream_with_one_report_per_episode() {
        let mut g = InputGuard::new();
        let ev = || Event::new(Severity::Info, "Applied", "app", "ok", 0);
        let mut stored = 0;
        let mut reported = 0;
        for _ in 0..10_000 {
            match g.event(ev(), 1_000) {
                Verdict::Store(_) => stored += 1,
                Verdict::Report(..) => reported += 1,
                Verdict::Drop(k) => assert_eq!(k, "event_rate"),
            }
        }
        assert_eq!(stored, EVENT_BURST as usize);
        assert_eq!(reported, 1);
        // One second later the bucket holds EVENTS_PER_SECOND more.
        let mut later = 0;
        for _ in 0..1_000 {
            if let Verdict::Store(_) = g.event(ev(), 2_000) {
                later += 1;
            }
        }
        assert_eq!(later, EVENTS_PER_SECOND as usize);
        assert_eq!(event_interval(), Duration::from_millis(20));
    }

    #[test]
    fn cap_keeps_char_boundaries() {
        assert_eq!(cap("héllo", 2), "h…");
        assert_eq!(cap("abc", 3), "abc");
    }
}
