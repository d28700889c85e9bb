//! Prometheus metrics of the hub, served on the metrics port at `/metrics`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of stream message counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    /// `in` (agent to hub) or `out` (hub to agent).
    pub direction: &'static str,
    /// hello, status, event, heartbeat, snapshot, update, ack.
    pub kind: &'static str,
}

/// Labels of per-RPC metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// The RPC name.
    pub rpc: &'static str,
}

/// Labels of results.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// ok or an error kind.
    pub result: &'static str,
}

/// Labels of alert delivery results.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertSentLabels {
    /// The Provider name.
    pub provider: String,
    /// `ok`, or `error` (given up after retries, or refused by the endpoint).
    pub result: &'static str,
}

/// Labels of per-provider alert metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// The Provider name.
    pub provider: String,
}

/// Labels of per-rule alert metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    /// The Alert name.
    pub alert: String,
}

/// Every hub metric.
pub struct Metrics {
    /// The registry they are registered in.
    pub registry: Registry,
    /// Agents holding a Sync stream.
    pub connected_agents: Gauge,
    /// Sync stream messages.
    pub stream_messages: Family<MessageLabels, Counter>,
    /// Messages waiting in per-agent send queues, summed.
    pub send_queue_depth: Gauge,
    /// Desired-state updates sent (snapshot or incremental).
    pub desired_pushes: Counter,
    /// Fleet query latency.
    pub query_seconds: Family<RpcLabels, Histogram>,
    /// Artifact bytes served by DownloadArtifact.
    pub artifact_bytes_served: Counter,
    /// Registrations by result.
    pub registrations: Family<ResultLabels, Counter>,
    /// Store commit latency.
    pub store_commit_seconds: Histogram,
    /// Writes per store commit (group commit size).
    pub store_commit_writes: Histogram,
    /// Commits computed again because another hub replica changed a key
    /// they read (etcd store; always 0 on redb).
    pub store_commit_retries: Counter,
    /// Signed bundle generations created.
    pub generations_created: Counter,
    /// Fleet config reloads by result.
    pub config_reloads: Family<ResultLabels, Counter>,
    /// Notifications delivered or given up, by provider and result.
    pub alerts_sent: Family<AlertSentLabels, Counter>,
    /// Duplicate notifications suppressed, by Alert.
    pub alerts_suppressed: Family<AlertLabels, Counter>,
    /// Notifications dropped from a full provider queue (the oldest go first).
    pub alerts_dropped: Family<ProviderLabels, Counter>,
    /// Notifications waiting per provider.
    pub alerts_queue_depth: Family<ProviderLabels, Gauge>,
    /// Agent input refused by the limits (`result` names the kind:
    /// untargeted_status, event_rate); see `crate::limits`.
    pub agent_input_refused: Family<ResultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("convoy_hub");
        let connected_agents = Gauge::default();
        registry.register("connected_agents", "Agents holding a Sync stream", connected_agents.clone());
        let stream_messages = Family::<MessageLabels, Counter>::default();
        registry.register(
            "stream_messages",
            "Sync stream messages by direction and kind",
            stream_messages.clone(),
        );
        let send_queue_depth = Gauge::default();
        registry.register(
            "send_queue_depth",
            "Messages queued to agents, summed over streams",
            send_queue_depth.clone(),
        );
        let desired_pushes = Counter::default();
        registry.register(
            "desired_pushes",
            "Desired-state snapshots and updates sent to agents",
            desired_pushes.clone(),
        );
        let query_seconds = Family::<RpcLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 4.0, 10))
        });
        registry.register("query_duration_seconds", "Fleet RPC latency", query_seconds.clone());
        let artifact_bytes_served = Counter::default();
        registry.register(
            "artifact_bytes_served",
            "Artifact bytes sent by DownloadArtifact",
            artifact_bytes_served.clone(),
        );
        let registrations = Family::<ResultLabels, Counter>::default();
        registry.register("registrations", "Cluster registrations by result", registrations.clone());
        let store_commit_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "store_commit_duration_seconds",
            "State store commit latency",
            store_commit_seconds.clone(),
        );
        let store_commit_writes = Histogram::new(exponential_buckets(1.0, 4.0, 8));
        registry.register(
            "store_commit_writes",
            "Writes grouped into one store commit",
            store_commit_writes.clone(),
        );
        let store_commit_retries = Counter::default();
        registry.register(
            "store_commit_retries",
            "Commits computed again because another hub replica changed a key they read",
            store_commit_retries.clone(),
        );
        let generations_created = Counter::default();
        registry.register(
            "generations_created",
            "Signed bundle generations created",
            generations_created.clone(),
        );
        let config_reloads = Family::<ResultLabels, Counter>::default();
        registry.register("config_reloads", "Fleet config reloads by result", config_reloads.clone());
        let alerts_sent = Family::<AlertSentLabels, Counter>::default();
        registry.register(
            "alerts_sent",
            "Alert notifications delivered (ok) or given up (error), by provider",
            alerts_sent.clone(),
        );
        let alerts_suppressed = Family::<AlertLabels, Counter>::default();
        registry.register(
            "alerts_suppressed",
            "Duplicate alert notifications suppressed within the window, by Alert",
            alerts_suppressed.clone(),
        );
        let alerts_dropped = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "alerts_dropped",
            "Alert notifications dropped because the provider queue was full",
            alerts_dropped.clone(),
        );
        let alerts_queue_depth = Family::<ProviderLabels, Gauge>::default();
        registry.register(
            "alerts_queue_depth",
            "Alert notifications waiting for delivery, by provider",
            alerts_queue_depth.clone(),
        );
        let agent_input_refused = Family::<ResultLabels, Counter>::default();
        registry.register(
            "agent_input_refused",
            "Agent Sync input refused by the input limits, by kind",
            agent_input_refused.clone(),
        );
        Self {
            registry,
            connected_agents,
            stream_messages,
            send_queue_depth,
            desired_pushes,
            query_seconds,
            artifact_bytes_served,
            registrations,
            store_commit_seconds,
            store_commit_writes,
            store_commit_retries,
            generations_created,
            config_reloads,
            alerts_sent,
            alerts_suppressed,
            alerts_dropped,
            alerts_queue_depth,
            agent_input_refused,
        }
    }

    /// Count a stream message.
    pub fn message(&self, direction: &'static str, kind: &'static str) {
        self.stream_messages.get_or_create(&MessageLabels { direction, kind }).inc();
    }

    /// Export the source pipeline's render counters (read at scrape time):
    /// `bundle_renders` (renders run), `bundle_renders_skipped` (new commits
    /// that left a bundle's inputs unchanged) and `bundle_render_whole_tree`
    /// (render keys that fell back to the whole source tree).
    pub fn register_render_stats(&mut self, stats: Arc<convoy_sources::deps::RenderStats>) {
        self.registry.register_collector(Box::new(RenderCollector(stats)));
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[derive(Debug)]
struct RenderCollector(Arc<convoy_sources::deps::RenderStats>);

impl prometheus_client::collector::Collector for RenderCollector {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        for (name, help, value) in [
            ("bundle_renders", "Bundle renders run by the source pipeline", self.0.renders()),
            (
                "bundle_renders_skipped",
                "Bundle builds skipped because the trees the bundle reads did not change",
                self.0.reused(),
            ),
            (
                "bundle_render_whole_tree",
                "Render keys that depend on the whole source tree (unresolvable dependencies)",
                self.0.whole_tree(),
            ),
        ] {
            let counter = ConstCounter::new(value);
            let m = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod render_tests {
    use super::*;

    #[test]
    fn render_counters_are_exported() {
        let mut m = Metrics::new();
        m.register_render_stats(Arc::default());
        let text = m.encode();
        for name in [
            "convoy_hub_bundle_renders_total 0",
            "convoy_hub_bundle_renders_skipped_total 0",
            "convoy_hub_bundle_render_whole_tree_total 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
