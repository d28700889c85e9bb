//! Notifications and their wire formats: the stable JSON document of the
//! `webhook` and `generic-hmac` providers, and the Slack, Microsoft Teams,
//! Discord and Alertmanager renderings of it. No I/O.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use convoy_core::status::Severity;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The `kind` of the JSON document.
pub const NOTIFICATION_KIND: &str = "Notification";

/// The cluster an event came from, with its identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRef {
    /// The cluster name.
    pub name: String,
    /// Its identity URI, `spiffe://convoy/cluster/<name>`.
    pub identity: String,
    /// Its labels when the event was routed.
    pub labels: BTreeMap<String, String>,
}

/// One notification: an event, routed by an Alert. This is the document the
/// `webhook` and `generic-hmac` providers POST (docs/alerts.md); fields are
/// only ever added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// `convoy.dev/v1`.
    pub api_version: String,
    /// `Notification`.
    pub kind: String,
    /// The hub's name.
    pub hub: String,
    /// The Alert that routed it.
    pub alert: String,
    /// The event's id in the hub's event log (unique per hub; receivers can
    /// use it to drop redeliveries).
    pub event_id: u64,
    /// info, warning or error.
    pub severity: Severity,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable text.
    pub message: String,
    /// When it happened, RFC 3339 UTC.
    pub time: String,
    /// When it happened, Unix ms.
    pub time_unix_ms: i64,
    /// `cluster` (an agent reported it) or `hub` (the hub recorded it).
    pub origin: String,
    /// The reporting cluster; `null` for hub events.
    pub cluster: Option<ClusterRef>,
    /// The bundle concerned, or empty.
    pub bundle: String,
    /// The revision concerned, or empty.
    pub revision: String,
    /// The object concerned (`kind/namespace/name`), or empty.
    pub object: String,
    /// Extra details.
    pub details: BTreeMap<String, String>,
    /// Identical notifications suppressed since the previous delivery of this one.
    pub suppressed: u64,
}

/// Provider-specific options of a rendering.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// Slack channel override.
    pub channel: Option<String>,
    /// Sender name (Slack, Discord).
    pub username: Option<String>,
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(unix_ms: i64) -> String {
    jiff::Timestamp::from_millisecond(unix_ms)
        .map(|t| format!("{t:.3}"))
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".into())
}

impl Notification {
    /// `[error] BuildFailed` style headline.
    pub fn headline(&self) -> String {
        format!("[{}] {}", self.severity.as_str(), self.reason)
    }

    /// Where it happened: `cluster c1` or `hub h1`.
    pub fn place(&self) -> String {
        match &self.cluster {
            Some(c) => format!("cluster {}", c.name),
            None => format!("hub {}", self.hub),
        }
    }

    /// `k=v,k=v` of the cluster's labels.
    pub fn labels_text(&self) -> String {
        self.cluster.as_ref().map(|c| convoy_core::labels::format(&c.labels)).unwrap_or_default()
    }

    /// One line of plain text with everything that matters.
    pub fn summary(&self) -> String {
        let mut s = format!("{} on {}", self.headline(), self.place());
        let labels = self.labels_text();
        if !labels.is_empty() {
            let _ = write!(s, " ({labels})");
        }
        if !self.bundle.is_empty() {
            let _ = write!(s, ", bundle {}", self.bundle);
        }
        let _ = write!(s, ": {}", self.message);
        s
    }

    /// `(title, value)` facts for card formats, empty ones left out.
    pub fn facts(&self) -> Vec<(&'static str, String)> {
        let mut f = Vec::new();
        let mut push = |k: &'static str, v: String| {
            if !v.is_empty() {
                f.push((k, v));
            }
        };
        match &self.cluster {
            Some(c) => {
                push("Cluster", c.name.clone());
                push("Labels", self.labels_text());
                push("Identity", c.identity.clone());
            }
            None => push("Origin", "hub".into()),
        }
        push("Bundle", self.bundle.clone());
        push("Revision", self.revision.clone());
        push("Object", self.object.clone());
        push("Severity", self.severity.as_str().into());
        push("Hub", self.hub.clone());
        push("Time", self.time.clone());
        push("Alert", self.alert.clone());
        if self.suppressed > 0 {
            push("Suppressed", format!("{} identical since the last one", self.suppressed));
        }
        f
    }
}

/// Cut `s` to at most `max` characters, marking the cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Slack mrkdwn escaping: `&`, `<` and `>` (so event text cannot form
/// links or `<!channel>` mentions).
pub fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn color_hex(s: Severity) -> &'static str {
    match s {
        Severity::Info => "#2eb886",
        Severity::Warning => "#daa038",
        Severity::Error => "#d50200",
    }
}

/// The generic JSON document (`webhook`, `generic-hmac`).
pub fn json_body(n: &Notification) -> Vec<u8> {
    serde_json::to_vec(n).unwrap_or_default()
}

/// A Slack incoming-webhook message: `text` (the fallback) and one colored
/// attachment with blocks.
pub fn slack_body(n: &Notification, o: &RenderOptions) -> Vec<u8> {
    let mut head = format!("*{}* on {}", slack_escape(&n.headline()), slack_escape(&n.place()));
    if !n.bundle.is_empty() {
        let _ = write!(head, ", bundle `{}`", slack_escape(&n.bundle));
    }
    let text = format!("{head}\n{}", slack_escape(&truncate(&n.message, 2800)));
    // Section fields: at most 10, 2000 characters each.
    let fields: Vec<Value> = n
        .facts()
        .into_iter()
        .filter(|(k, _)| !matches!(*k, "Severity" | "Time" | "Alert" | "Identity"))
        .take(10)
        .map(|(k, v)| json!({"type": "mrkdwn", "text": format!("*{k}*\n{}", slack_escape(&truncate(&v, 1900)))}))
        .collect();
    let mut context = Vec::new();
    if let Some(c) = &n.cluster {
        context.push(c.identity.clone());
    }
    context.push(format!("hub {}", n.hub));
    context.push(n.time.clone());
    context.push(format!("alert {}", n.alert));
    if n.suppressed > 0 {
        context.push(format!("{} identical suppressed", n.suppressed));
    }
    let mut blocks = vec![json!({"type": "section", "text": {"type": "mrkdwn", "text": text}})];
    if !fields.is_empty() {
        blocks.push(json!({"type": "section", "fields": fields}));
    }
    blocks.push(json!({"type": "context", "elements": [
        {"type": "mrkdwn", "text": slack_escape(&context.join(" · "))}
    ]}));
    let summary = slack_escape(&truncate(&n.summary(), 3000));
    let mut body = json!({
        "text": summary,
        "attachments": [{
            "color": color_hex(n.severity),
            "fallback": summary,
            "blocks": blocks,
        }],
    });
    if let Some(c) = &o.channel {
        body["channel"] = json!(c);
    }
    if let Some(u) = &o.username {
        body["username"] = json!(u);
    }
    serde_json::to_vec(&body).unwrap_or_default()
}

/// A Microsoft Teams message (Workflows / incoming webhook) carrying an
/// Adaptive Card.
pub fn teams_body(n: &Notification) -> Vec<u8> {
    let color = match n.severity {
        Severity::Info => "Good",
        Severity::Warning => "Warning",
        Severity::Error => "Attention",
    };
    let facts: Vec<Value> =
        n.facts().into_iter().map(|(k, v)| json!({"title": k, "value": truncate(&v, 1000)})).collect();
    let card = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "msteams": {"width": "Full"},
        "body": [
            {"type": "TextBlock", "text": format!("{} on {}", n.headline(), n.place()), "weight": "Bolder", "size": "Medium", "color": color, "wrap": true},
            {"type": "TextBlock", "text": truncate(&n.message, 4000), "wrap": true},
            {"type": "FactSet", "facts": facts},
        ],
    });
    let body = json!({
        "type": "message",
        "summary": truncate(&n.summary(), 250),
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": card,
        }],
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// A Discord webhook message with one embed. Mentions are disabled, so
/// event text cannot ping anyone.
pub fn discord_body(n: &Notification, o: &RenderOptions) -> Vec<u8> {
    let color = match n.severity {
        Severity::Info => 0x2eb886,
        Severity::Warning => 0xdaa038,
        Severity::Error => 0xd50200,
    };
    // At most 25 fields; names 256 and values 1024 characters.
    let fields: Vec<Value> = n
        .facts()
        .into_iter()
        .filter(|(k, _)| !matches!(*k, "Time"))
        .take(25)
        .map(|(k, v)| json!({"name": k, "value": truncate(&v, 1024), "inline": v.len() < 40}))
        .collect();
    let mut body = json!({
        "content": "",
        "allowed_mentions": {"parse": []},
        "embeds": [{
            "title": truncate(&format!("{} on {}", n.headline(), n.place()), 256),
            "description": truncate(&n.message, 4000),
            "color": color,
            "fields": fields,
            "timestamp": n.time,
            "footer": {"text": truncate(&format!("convoy hub {}", n.hub), 2048)},
        }],
    });
    if let Some(u) = &o.username {
        body["username"] = json!(truncate(u, 80));
    }
    serde_json::to_vec(&body).unwrap_or_default()
}

/// A Prometheus label name from any key: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn label_name(key: &str) -> String {
    let mut s: String = key.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) || s.is_empty() {
        s.insert(0, '_');
    }
    s
}

/// An Alertmanager `POST /api/v2/alerts` body: one alert with labels
/// (alertname = the reason, severity, cluster, bundle, object, hub, the
/// Alert name and the cluster's labels as `label_<key>`) and annotations.
pub fn alertmanager_body(n: &Notification) -> Vec<u8> {
    let mut labels = BTreeMap::new();
    let mut put = |k: String, v: &str| {
        if !v.is_empty() {
            labels.insert(k, v.to_string());
        }
    };
    put("alertname".into(), &n.reason);
    put("severity".into(), n.severity.as_str());
    put("source".into(), "convoy");
    put("hub".into(), &n.hub);
    put("convoy_alert".into(), &n.alert);
    put("origin".into(), &n.origin);
    put("bundle".into(), &n.bundle);
    put("object".into(), &n.object);
    if let Some(c) = &n.cluster {
        put("cluster".into(), &c.name);
        for (k, v) in &c.labels {
            put(format!("label_{}", label_name(k)), v);
        }
    }
    let mut annotations = BTreeMap::new();
    annotations.insert("summary".to_string(), n.summary());
    annotations.insert("message".to_string(), n.message.clone());
    annotations.insert("time".to_string(), n.time.clone());
    annotations.insert("event_id".to_string(), n.event_id.to_string());
    if let Some(c) = &n.cluster {
        annotations.insert("identity".to_string(), c.identity.clone());
        annotations.insert("cluster_labels".to_string(), n.labels_text());
    }
    if !n.revision.is_empty() {
        annotations.insert("revision".to_string(), n.revision.clone());
    }
    if n.suppressed > 0 {
        annotations.insert("suppressed".to_string(), n.suppressed.to_string());
    }
    let body = json!([{
        "labels": labels,
        "annotations": annotations,
        "startsAt": n.time,
    }]);
    serde_json::to_vec(&body).unwrap_or_default()
}

/// A filled-in notification for unit tests.
#[cfg(test)]
pub(crate) fn sample() -> Notification {
    Notification {
        api_version: convoy_core::API_VERSION.into(),
        kind: NOTIFICATION_KIND.into(),
        hub: "hub-1".into(),
        alert: "prod".into(),
        event_id: 7,
        severity: Severity::Error,
        reason: "ApplyFailed".into(),
        message: "apply failed: <!channel> & @everyone".into(),
        time: rfc3339(1_764_151_200_123),
        time_unix_ms: 1_764_151_200_123,
        origin: "cluster".into(),
        cluster: Some(ClusterRef {
            name: "c1".into(),
            identity: "spiffe://convoy/cluster/c1".into(),
            labels: [("env".to_string(), "prod".to_string()), ("topology.k8s.io/zone".into(), "a".into())]
                .into(),
        }),
        bundle: "web".into(),
        revision: "main@sha1:abc".into(),
        object: "apps/v1/Deployment/default/web".into(),
        details: BTreeMap::new(),
        suppressed: 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_is_rfc3339_utc_with_millis() {
        assert_eq!(rfc3339(1_764_151_200_123), "2025-11-26T10:00:00.123Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn json_document_is_stable() {
        let v: Value = serde_json::from_slice(&json_body(&sample())).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "apiVersion",
                "kind",
                "hub",
                "alert",
                "eventId",
                "severity",
                "reason",
                "message",
                "time",
                "timeUnixMs",
                "origin",
                "cluster",
                "bundle",
                "revision",
                "object",
                "details",
                "suppressed"
            ]
        );
        assert_eq!(v["cluster"]["identity"], "spiffe://convoy/cluster/c1");
        assert_eq!(v["severity"], "error");
        let back: Notification = serde_json::from_value(v).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn slack_escapes_mentions_and_carries_identity() {
        let v: Value = serde_json::from_slice(&slack_body(&sample(), &RenderOptions::default())).unwrap();
        let text = v["text"].as_str().unwrap();
        assert!(text.contains("&lt;!channel&gt; &amp;"), "{text}");
        assert!(!v.to_string().contains("<!channel>"));
        let context = &v["attachments"][0]["blocks"][2]["elements"][0]["text"];
        assert!(context.as_str().unwrap().contains("spiffe://convoy/cluster/c1"), "{context}");
        assert!(v.get("channel").is_none());
    }

    #[test]
    fn alertmanager_labels_are_valid_names() {
        let v: Value = serde_json::from_slice(&alertmanager_body(&sample())).unwrap();
        let labels = v[0]["labels"].as_object().unwrap();
        assert_eq!(labels["alertname"], "ApplyFailed");
        assert_eq!(labels["label_topology_k8s_io_zone"], "a");
        for k in labels.keys() {
            assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{k}");
        }
        assert_eq!(label_name("1a-b"), "_1a_b");
        assert_eq!(v[0]["annotations"]["suppressed"], "3");
    }

    #[test]
    fn truncation_is_on_characters() {
        assert_eq!(truncate("héllo", 10), "héllo");
        assert_eq!(truncate("héllo wörld", 5), "héll…");
        let d: Value = serde_json::from_slice(&discord_body(
            &Notification { message: "x".repeat(10_000), ..sample() },
            &RenderOptions { username: Some("convoy".into()), ..Default::default() },
        ))
        .unwrap();
        assert_eq!(d["embeds"][0]["description"].as_str().unwrap().chars().count(), 4000);
        assert_eq!(d["allowed_mentions"]["parse"].as_array().unwrap().len(), 0);
        assert_eq!(d["username"], "convoy");
    }
}
