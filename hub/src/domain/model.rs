//! Records the hub stores and indexes: clusters, tokens, deployments (the signed
//! current generation of each bundle), per cluster × bundle status, and events.

use convoy_core::selector::Labels;
use convoy_core::status::{BundleStatus, Event, Severity};
use serde::{Deserialize, Serialize};

/// A certificate the hub issued to a cluster and still honours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRef {
    /// The serial number, lowercase hex.
    pub serial: String,
    /// When it expires (Unix ms).
    pub not_after_unix_ms: i64,
}

/// A registered cluster, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ClusterRecord {
    /// The cluster name (from its certificate).
    pub name: String,
    /// Its labels.
    pub labels: Labels,
    /// When it first registered (Unix ms).
    pub registered_unix_ms: i64,
    /// Certificates that still work: the newest last. Revocation empties it.
    pub certs: Vec<CertRef>,
    /// Whether an operator revoked it.
    pub revoked: bool,
    /// Variables set with `convoy vars` (over the fleet config's `Cluster`
    /// documents), for substitution.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub vars: std::collections::BTreeMap<String, String>,
}

impl ClusterRecord {
    /// Whether a certificate with `serial` is honoured at `now`.
    pub fn honours(&self, serial: &str, now_unix_ms: i64) -> bool {
        !self.revoked && self.certs.iter().any(|c| c.serial == serial && c.not_after_unix_ms > now_unix_ms)
    }

    /// Record a newly issued certificate; keep at most `keep` unexpired ones.
    pub fn add_cert(&mut self, cert: CertRef, now_unix_ms: i64, keep: usize) {
        self.certs.retain(|c| c.not_after_unix_ms > now_unix_ms);
        self.certs.push(cert);
        let n = self.certs.len();
        if n > keep {
            self.certs.drain(..n - keep);
        }
    }

    /// When the newest certificate expires.
    pub fn cert_not_after(&self) -> i64 {
        self.certs.last().map(|c| c.not_after_unix_ms).unwrap_or(0)
    }
}

/// What the hub last heard from a cluster's agent (kept apart from
/// [`ClusterRecord`] because it changes far more often).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Liveness {
    /// When the hub last heard from the agent (Unix ms).
    pub last_seen_unix_ms: i64,
    /// The agent version it reported.
    pub agent_version: String,
    /// The age recipients it reported (SOPS, docs/secrets.md).
    #[serde(default)]
    pub age_recipients: Vec<String>,
    /// The Kubernetes version it reported (`cluster.kubernetesVersion`), kept
    /// so that a restarted hub renders variants before the agent reconnects.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kube_version: String,
    /// The API versions it reported (`group/version`, sorted), kept for the
    /// same reason: a Helm bundle renders with them (`.Capabilities.APIVersions`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_versions: Vec<String>,
}

/// A bootstrap token, as stored (the secret itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The public id (the part before the dot).
    pub id: String,
    /// SHA-256 of the secret part, hex.
    pub hash: String,
    /// When it was created (Unix ms).
    pub created_unix_ms: i64,
    /// When it stops working (Unix ms).
    pub expires_unix_ms: i64,
    /// Whether it works once only.
    pub single_use: bool,
    /// How many registrations used it.
    pub uses: u32,
    /// The only cluster name it may register, if bound.
    pub cluster: Option<String>,
    /// Labels given to the cluster at registration (they win over the agent's).
    pub labels: Labels,
    /// The token registers only new names with this prefix (exclusive with
    /// `cluster`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_prefix: Option<String>,
    /// Label keys the agent may propose; its other labels are ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_label_keys: Vec<String>,
}

/// The signed current generation of a bundle. The same digest always keeps the
/// same record (statement bytes and signature), across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    /// The bundle name.
    pub bundle: String,
    /// The hub-assigned generation, increasing per bundle.
    pub generation: u64,
    /// `sha256:<hex>` of the artifact.
    pub digest: String,
    /// Artifact size in bytes.
    pub size: u64,
    /// The source revision, `<ref>@sha1:<commit>`.
    pub revision: String,
    /// The source name.
    pub source: String,
    /// The exact statement bytes that were signed.
    #[serde(with = "b64")]
    pub statement: Vec<u8>,
    /// DER ECDSA signature over SHA-256 of `statement`.
    #[serde(with = "b64")]
    pub signature: Vec<u8>,
    /// When this generation was created (Unix ms).
    pub created_unix_ms: i64,
}

mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

/// The status of one bundle on one cluster, as the agent reported it and the
/// hub stored it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StatusRecord {
    /// What the agent reported.
    #[serde(flatten)]
    pub status: BundleStatus,
    /// When the hub stored it (Unix ms).
    pub updated_unix_ms: i64,
}

/// An event as the hub records it (the shared domain event).
pub type EventRecord = Event;

/// The cluster name used for events the hub itself records.
pub const HUB_EVENT_SOURCE: &str = "hub";

/// An event in the hub's bounded event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Position in the log (increasing, never reused).
    pub id: u64,
    /// The reporting cluster, or `hub`.
    pub cluster: String,
    /// The event.
    pub event: EventRecord,
    /// When the hub stored it (Unix ms).
    pub stored_unix_ms: i64,
}

/// One outbox entry from an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxEntry {
    /// A bundle status.
    Status(StatusRecord),
    /// An event.
    Event(EventRecord),
}

/// Outbox entries of one cluster and epoch, in seq order, to store in one
/// transaction with the new last seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentBatch {
    /// The cluster (from its certificate).
    pub cluster: String,
    /// The agent's outbox epoch.
    pub epoch: u64,
    /// `(seq, entry)` pairs, in the order received.
    pub entries: Vec<(u64, OutboxEntry)>,
}

/// What storing an [`AgentBatch`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BatchOutcome {
    /// The cluster.
    pub cluster: String,
    /// The highest seq durably stored for the cluster and epoch (the ack).
    pub acked_seq: u64,
    /// Statuses newly stored (entries at or below the stored seq are skipped).
    pub statuses: Vec<StatusRecord>,
    /// Events newly stored, with their log ids.
    pub events: Vec<StoredEvent>,
}

/// Which entries of a batch are new: those with seq above `stored` and above
/// every earlier entry of the batch (duplicates and reordering are dropped).
pub fn fresh_entries(stored: u64, entries: &[(u64, OutboxEntry)]) -> (u64, Vec<usize>) {
    let mut last = stored;
    let mut keep = Vec::new();
    for (i, (seq, _)) in entries.iter().enumerate() {
        if *seq > last {
            last = *seq;
            keep.push(i);
        }
    }
    (last, keep)
}

/// A filter over the event log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventFilter {
    /// Only this cluster (`hub` for hub events).
    pub cluster: Option<String>,
    /// Only this bundle.
    pub bundle: Option<String>,
    /// Only this severity or worse.
    pub min_severity: Severity,
    /// Only ids above this.
    pub after_id: u64,
    /// At most this many, the newest.
    pub limit: usize,
}

impl EventFilter {
    /// Whether an event passes the filter (ignoring `limit`).
    pub fn matches(&self, e: &StoredEvent) -> bool {
        e.id > self.after_id
            && self.cluster.as_ref().is_none_or(|c| *c == e.cluster)
            && self.bundle.as_ref().is_none_or(|b| *b == e.event.bundle)
            && e.event.severity >= self.min_severity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_records_keep_their_flat_stored_form() {
        // as hubs before the shared BundleStatus stored it: one flat object
        let stored = r#"{"bundle":"web","generation":3,"revision":"main@sha1:ab","digest":"sha256:cd",
            "phase":"Ready","conditions":[],"objects":{"total":2,"ready":2,"created":0,"configured":0,
            "unchanged":2,"pruned":0,"drift_corrected":0,"drifted":0},"message":"ok","apply_duration_ms":5,
            "ready_duration_ms":9,"observed_unix_ms":11,"applied_generation":3,
            "applied_revision":"main@sha1:ab","updated_unix_ms":12}"#;
        let r: StatusRecord = serde_json::from_str(stored).unwrap();
        assert_eq!(r.status.bundle, "web");
        assert_eq!(r.status.objects.unchanged, 2);
        assert_eq!(r.updated_unix_ms, 12);
        let again: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(again, serde_json::from_str::<serde_json::Value>(stored).unwrap());
    }

    fn st(b: &str) -> OutboxEntry {
        OutboxEntry::Status(StatusRecord {
            status: BundleStatus { bundle: b.into(), ..Default::default() },
            ..Default::default()
        })
    }

    #[test]
    fn fresh_entries_skip_stored_and_duplicates() {
        let entries = vec![(3, st("a")), (4, st("b")), (4, st("b")), (2, st("c")), (7, st("d"))];
        let (last, keep) = fresh_entries(3, &entries);
        assert_eq!(last, 7);
        assert_eq!(keep, vec![1, 4]);
        let (last, keep) = fresh_entries(9, &entries);
        assert_eq!(last, 9);
        assert!(keep.is_empty());
    }

    #[test]
    fn certs_are_bounded_and_revocation_wins() {
        let mut c = ClusterRecord { name: "a".into(), ..Default::default() };
        c.add_cert(CertRef { serial: "01".into(), not_after_unix_ms: 100 }, 0, 2);
        c.add_cert(CertRef { serial: "02".into(), not_after_unix_ms: 200 }, 0, 2);
        c.add_cert(CertRef { serial: "03".into(), not_after_unix_ms: 300 }, 0, 2);
        assert!(!c.honours("01", 10));
        assert!(c.honours("02", 10));
        assert!(c.honours("03", 250));
        assert!(!c.honours("02", 250), "expired");
        c.revoked = true;
        assert!(!c.honours("03", 10));
    }
}
