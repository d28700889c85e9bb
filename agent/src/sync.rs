//! The hub session: obtain an identity (Secret, else register with the
//! bootstrap token), hold the Sync stream (Hello, Ack, snapshot, updates),
//! send the outbox in order after the hub's ack and then as it grows,
//! heartbeat when idle, renew the certificate before expiry (then reconnect
//! with it), and reconnect with exponential backoff and full jitter.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use convoy_proto::v1 as pb;
use convoy_proto::v1::agent_client::AgentClient;
use pb::agent_message::Msg as Out;
use pb::hub_message::Msg as In;
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::config::Tuning;
use crate::controller::HubInput;
use crate::identity::{self, AGENT_VERSION, ClusterIdentity};
use crate::metrics::Metrics;
use crate::store::{OutboxItem, Store};
use crate::{Error, Result};
use convoy_core::backoff::Backoff;
use convoy_core::clock::now_ms;

/// What the session needs.
pub struct SyncCtx {
    /// Hub address, or several hub replicas' addresses separated by commas
    /// (tried in turn: a failed session moves to the next, [`hub_addresses`]).
    pub address: String,
    /// Hub CA file for the first contact.
    pub hub_ca: Option<PathBuf>,
    /// Bootstrap token file.
    pub token_file: Option<PathBuf>,
    /// Cluster name.
    pub cluster: String,
    /// Labels for registration.
    pub labels: BTreeMap<String, String>,
    /// The agent namespace (identity Secret).
    pub namespace: String,
    /// Kubernetes (identity Secret).
    pub kube: kube::Client,
    /// The outbox.
    pub store: Store,
    /// Woken when the outbox grows.
    pub outbox: Arc<Notify>,
    /// Desired state to the controller.
    pub to_controller: mpsc::Sender<HubInput>,
    /// The current channel, for artifact downloads.
    pub channel: watch::Sender<Option<Channel>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Timers.
    pub tuning: Tuning,
    /// Shutdown.
    pub shutdown: CancellationToken,
    /// The age recipients reported in Hello (SOPS).
    pub age_recipients: Vec<String>,
}

enum End {
    Shutdown,
    Renewed,
}

/// The hub addresses in `list` (comma separated, blanks ignored): one per
/// hub replica, or one Service address.
pub fn hub_addresses(list: &str) -> Vec<String> {
    let v: Vec<String> = list.split(',').map(str::trim).filter(|a| !a.is_empty()).map(String::from).collect();
    if v.is_empty() { vec![list.to_string()] } else { v }
}

/// The address to try after a session with `addresses[at]` failed: the
/// next one, round robin (with the usual backoff between attempts).
pub fn next_address(at: usize, addresses: usize) -> usize {
    if addresses == 0 { 0 } else { (at + 1) % addresses }
}

/// Run sessions until shutdown.
pub async fn run(ctx: SyncCtx) {
    let mut backoff = Backoff::new(ctx.tuning.reconnect_base, ctx.tuning.reconnect_cap);
    let mut identity: Option<ClusterIdentity> = None;
    let addresses = hub_addresses(&ctx.address);
    let mut at = 0;
    loop {
        let address = addresses[at].as_str();
        if ctx.shutdown.is_cancelled() {
            break;
        }
        let started = Instant::now();
        let result = async {
            let id = match identity.take() {
                Some(id) => id,
                None => obtain_identity(&ctx, address).await?,
            };
            ctx.metrics.cert_expiry.set(id.not_after_ms / 1000);
            let r = session(&ctx, &id, address).await;
            identity = Some(id);
            r
        }
        .await;
        ctx.metrics.hub_connected.set(0);
        ctx.channel.send_replace(None);
        match result {
            Ok(End::Shutdown) => break,
            Ok(End::Renewed) => {
                identity = None; // reload the renewed identity from the Secret
                backoff.reset();
                continue;
            }
            Err(e) => {
                // A stream that lived a while was a success: start over small.
                if started.elapsed() > Duration::from_secs(30) {
                    backoff.reset();
                }
                if matches!(
                    &e,
                    Error::Hub {
                        code: crate::error::HubCode::Unauthenticated
                            | crate::error::HubCode::PermissionDenied,
                        ..
                    }
                ) {
                    // The certificate may have been revoked or expired: read it again next time.
                    identity = None;
                }
                let delay = backoff.next_delay();
                at = next_address(at, addresses.len());
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, next = %addresses[at], "hub session ended");
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

fn read_ca(ctx: &SyncCtx) -> Result<String> {
    let p = ctx.hub_ca.as_ref().ok_or_else(|| {
        Error::Config("no identity yet and no --hub-ca to trust the hub at first contact".into())
    })?;
    std::fs::read_to_string(p).map_err(|e| Error::io(format!("read hub CA {}", p.display()), e))
}

async fn obtain_identity(ctx: &SyncCtx, address: &str) -> Result<ClusterIdentity> {
    if let Some(id) = identity::load(&ctx.kube, &ctx.namespace).await? {
        if !id.expired() {
            return Ok(id);
        }
        tracing::warn!("the stored certificate has expired; registering again with the bootstrap token");
    }
    let token_file = ctx.token_file.as_ref().ok_or_else(|| {
        Error::Config("no valid identity in the cluster and no --token-file to register with".into())
    })?;
    let token = identity::read_token(token_file)?;
    let ca = read_ca(ctx)?;
    let id = identity::register(identity::Registration {
        address,
        ca_pem: &ca,
        token: &token,
        cluster: &ctx.cluster,
        labels: &ctx.labels,
    })
    .await?;
    identity::save(&ctx.kube, &ctx.namespace, &ctx.cluster, &id).await?;
    tracing::info!(cluster = %ctx.cluster, not_after_ms = id.not_after_ms, "registered with the hub");
    Ok(id)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Store(format!("blocking task: {e}")))?
}

fn wire(seq: u64, item: OutboxItem) -> Option<pb::AgentMessage> {
    use prost::Message;
    let msg = match item {
        OutboxItem::Status { bytes, .. } => Out::Status(pb::StatusReport {
            seq,
            status: Some(pb::BundleStatus::decode(bytes.as_slice()).ok()?),
        }),
        OutboxItem::Event(bytes) => {
            Out::Event(pb::EventReport { seq, event: Some(pb::Event::decode(bytes.as_slice()).ok()?) })
        }
    };
    Some(pb::AgentMessage { msg: Some(msg) })
}

async fn renew_and_store(ctx: &SyncCtx, channel: Channel, id: &ClusterIdentity) -> Result<()> {
    let new = identity::renew(channel, id, &ctx.cluster).await?;
    identity::save(&ctx.kube, &ctx.namespace, &ctx.cluster, &new).await?;
    ctx.metrics.cert_expiry.set(new.not_after_ms / 1000);
    tracing::info!(not_after_ms = new.not_after_ms, "certificate renewed");
    Ok(())
}

async fn session(ctx: &SyncCtx, id: &ClusterIdentity, address: &str) -> Result<End> {
    let channel = id
        .endpoint(address)?
        .http2_keep_alive_interval(ctx.tuning.keepalive_interval)
        .keep_alive_timeout(ctx.tuning.keepalive_timeout)
        .connect()
        .await?;
    let renew_at = id.renew_at_ms(ctx.tuning.renew_fraction);
    if now_ms() >= renew_at {
        renew_and_store(ctx, channel, id).await?;
        return Ok(End::Renewed);
    }
    ctx.metrics.reconnects.inc();
    let applied: Vec<pb::AppliedBundle> = {
        let store = ctx.store.clone();
        blocking(move || store.bundles())
            .await?
            .iter()
            .filter_map(|(n, r)| r.applied.as_ref().map(|a| crate::convert::applied(n, a)))
            .collect()
    };
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(256);
    let (kube_version, api_versions) = kube_facts(&ctx.kube).await;
    let hello = pb::Hello {
        agent_version: AGENT_VERSION.to_string(),
        outbox_epoch: ctx.store.epoch(),
        applied,
        age_recipients: ctx.age_recipients.clone(),
        kube_version,
        api_versions,
    };
    tx.send(pb::AgentMessage { msg: Some(Out::Hello(hello)) })
        .await
        .map_err(|_| Error::Transport("stream closed".into()))?;
    let mut client = AgentClient::new(channel.clone());
    let mut inbound = client.sync(ReceiverStream::new(rx)).await?.into_inner();
    ctx.channel.send_replace(Some(channel.clone()));
    ctx.metrics.hub_connected.set(1);
    tracing::info!(address = %address, "connected to the hub");

    // Entries with seq <= sent were handed to the stream; None until the hub's first ack.
    let mut sent: Option<u64> = None;
    let mut last_send = Instant::now();
    let renew_in = Duration::from_millis((renew_at - now_ms()).max(0) as u64);
    let renew_timer = tokio::time::sleep(renew_in);
    tokio::pin!(renew_timer);
    loop {
        let heartbeat_at = last_send + ctx.tuning.heartbeat;
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(End::Shutdown),
            _ = &mut renew_timer => {
                renew_and_store(ctx, channel.clone(), id).await?;
                return Ok(End::Renewed);
            }
            msg = inbound.message() => {
                let Some(msg) = msg? else {
                    return Err(Error::Transport("the hub closed the stream".into()));
                };
                match msg.msg {
                    Some(In::Ack(a)) => {
                        let store = ctx.store.clone();
                        let acked = a.acked_seq;
                        let depth = blocking(move || { store.ack(acked)?; store.depth() }).await?;
                        ctx.metrics.outbox_depth.set(depth as i64);
                        if sent.is_none() {
                            // The first ack says where the hub stands: resend everything after it.
                            sent = Some(acked);
                            flush(ctx, &tx, &mut sent, &mut last_send).await?;
                        }
                    }
                    Some(In::Snapshot(s)) => {
                        let ds = s.bundles.into_iter().map(crate::convert::deployment).collect();
                        ctx.to_controller.send(HubInput::Snapshot(ds)).await.map_err(|_| Error::Cancelled)?;
                    }
                    Some(In::Update(u)) => {
                        let upserts = u.upserts.into_iter().map(crate::convert::deployment).collect();
                        ctx.to_controller
                            .send(HubInput::Update { upserts, removed: u.removed })
                            .await
                            .map_err(|_| Error::Cancelled)?;
                    }
                    Some(In::RunTests(r)) => {
                        let req = crate::helmtest::TestRequest {
                            request_id: r.request_id,
                            bundle: r.bundle,
                            generation: r.generation,
                            timeout: (r.timeout_seconds > 0)
                                .then(|| Duration::from_secs(u64::from(r.timeout_seconds))),
                        };
                        ctx.to_controller.send(HubInput::RunTests(req)).await.map_err(|_| Error::Cancelled)?;
                    }
                    None => {}
                }
            }
            _ = ctx.outbox.notified(), if sent.is_some() => {
                flush(ctx, &tx, &mut sent, &mut last_send).await?;
            }
            _ = tokio::time::sleep_until(heartbeat_at.into()) => {
                let hb = pb::Heartbeat { time_unix_ms: now_ms() };
                tx.send(pb::AgentMessage { msg: Some(Out::Heartbeat(hb)) })
                    .await
                    .map_err(|_| Error::Transport("stream closed".into()))?;
                last_send = Instant::now();
            }
        }
    }
}

/// Send every outbox entry after `sent`, in order.
async fn flush(
    ctx: &SyncCtx,
    tx: &mpsc::Sender<pb::AgentMessage>,
    sent: &mut Option<u64>,
    last_send: &mut Instant,
) -> Result<()> {
    loop {
        let after = sent.unwrap_or(0);
        let store = ctx.store.clone();
        let batch = blocking(move || store.pending(after, 256)).await?;
        if batch.is_empty() {
            return Ok(());
        }
        for (seq, item) in batch {
            if let Some(m) = wire(seq, item) {
                tx.send(m).await.map_err(|_| Error::Transport("stream closed".into()))?;
                *last_send = Instant::now();
            }
            *sent = Some(seq);
        }
    }
}

/// The cluster's Kubernetes version (`/version`) and served API versions
/// (discovery), reported in Hello for `cluster.kubernetesVersion`. Best
/// effort, bounded: on failure the Hello carries what was found and a
/// warning is logged.
async fn kube_facts(client: &kube::Client) -> (String, Vec<String>) {
    let limit = std::time::Duration::from_secs(10);
    let version = match tokio::time::timeout(limit, client.apiserver_version()).await {
        Ok(Ok(info)) => info.git_version,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read the cluster's Kubernetes version");
            String::new()
        }
        Err(_) => {
            tracing::warn!("reading the cluster's Kubernetes version timed out");
            String::new()
        }
    };
    let mut apis = Vec::new();
    match tokio::time::timeout(limit, client.list_core_api_versions()).await {
        Ok(Ok(core)) => apis.extend(core.versions),
        _ => tracing::warn!("cannot list the cluster's core API versions"),
    }
    match tokio::time::timeout(limit, client.list_api_groups()).await {
        Ok(Ok(groups)) => {
            for g in groups.groups {
                apis.extend(g.versions.into_iter().map(|v| v.group_version));
            }
        }
        _ => tracing::warn!("cannot list the cluster's API groups"),
    }
    apis.sort();
    apis.dedup();
    (version, apis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_hub_replicas_are_tried_in_turn() {
        let a = hub_addresses("https://hub-0:8443, https://hub-1:8443,,https://hub-2:8443");
        assert_eq!(a, vec!["https://hub-0:8443", "https://hub-1:8443", "https://hub-2:8443"]);
        assert_eq!(hub_addresses("https://hub:8443"), vec!["https://hub:8443"]);
        assert_eq!(hub_addresses(""), vec![String::new()], "an empty address is kept (and fails loudly)");
        let mut at = 0;
        let tried: Vec<usize> = (0..4)
            .map(|_| {
                at = next_address(at, a.len());
                at
            })
            .collect();
        assert_eq!(tried, vec![1, 2, 0, 1]);
        assert_eq!(next_address(0, 1), 0);
    }
}
