//! Protocol-level agents: a registered cluster identity and a Sync stream
//! speaking `convoy.v1` directly, without kube-sim or the agent's reconcile
//! machinery. They make herds of a thousand streams affordable in CI and let
//! a test know exactly which outbox entries the hub acknowledged.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use convoy_proto::v1 as pb;
use convoy_proto::v1::agent_message::Msg as In;
use convoy_proto::v1::hub_message::Msg as Out;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::HubRunner;

/// A registered cluster identity.
#[derive(Clone)]
pub struct WireAgent {
    /// The cluster name.
    pub name: String,
    cert_pem: String,
    key_pem: String,
    ca_pem: String,
}

/// A bootstrap token for any new name (no labels, 1 h).
pub async fn token(hub: &HubRunner) -> Result<String> {
    let mut admin = hub.admin().await?;
    let r = admin
        .create_token(pb::CreateTokenRequest { ttl_seconds: 3600, ..Default::default() })
        .await
        .context("create a token")?;
    Ok(r.into_inner().token)
}

async fn channel(hub: &HubRunner, ca_pem: &str, identity: Option<(&str, &str)>) -> Result<Channel> {
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Ok(Endpoint::from_shared(hub.endpoint())?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await?)
}

impl WireAgent {
    /// Register `name` with `token`.
    pub async fn register(hub: &HubRunner, token: &str, name: &str) -> Result<WireAgent> {
        let ca_pem = std::fs::read_to_string(hub.ca_file())?;
        let key = rcgen::KeyPair::generate()?;
        let csr_pem = rcgen::CertificateParams::default().serialize_request(&key)?.pem()?;
        let mut c = pb::registration_client::RegistrationClient::new(channel(hub, &ca_pem, None).await?);
        let r = c
            .register(pb::RegisterRequest {
                token: token.into(),
                cluster_name: name.into(),
                csr_pem,
                agent_version: "wire/1".into(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("register {name}"))?
            .into_inner();
        Ok(WireAgent { name: name.into(), cert_pem: r.certificate_pem, key_pem: key.serialize_pem(), ca_pem })
    }

    /// Open a Sync stream (Hello with `epoch`): the hub answers with the
    /// highest seq it stored for this outbox, then a snapshot.
    pub async fn connect(&self, hub: &HubRunner, epoch: u64) -> Result<WireSession> {
        let ch = channel(hub, &self.ca_pem, Some((&self.cert_pem, &self.key_pem))).await?;
        let mut client = pb::agent_client::AgentClient::new(ch);
        let (tx, rx) = mpsc::channel(256);
        let hello = pb::Hello { agent_version: "wire/1".into(), outbox_epoch: epoch, ..Default::default() };
        tx.send(pb::AgentMessage { msg: Some(In::Hello(hello)) }).await?;
        let mut rx = client.sync(ReceiverStream::new(rx)).await?.into_inner();
        let acked = match rx.message().await?.and_then(|m| m.msg) {
            Some(Out::Ack(a)) => a.acked_seq,
            other => bail!("{}: expected an Ack first, got {other:?}", self.name),
        };
        match rx.message().await?.and_then(|m| m.msg) {
            Some(Out::Snapshot(_)) => {}
            other => bail!("{}: expected a Snapshot second, got {other:?}", self.name),
        }
        Ok(WireSession { tx, rx, acked })
    }

    /// [`WireAgent::connect`], retried with full-jitter backoff (from 50 ms
    /// up to 2 s) until it succeeds or `within` passes, as agents do.
    pub async fn reconnect(&self, hub: &HubRunner, epoch: u64, within: Duration) -> Result<WireSession> {
        let deadline = tokio::time::Instant::now() + within;
        let mut ceiling = Duration::from_millis(50);
        loop {
            match self.connect(hub, epoch).await {
                Ok(s) => return Ok(s),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(e.context(format!("{}: no reconnect within {within:?}", self.name)));
                }
                Err(_) => {
                    let wait = ceiling.mul_f64(rand::random::<f64>());
                    tokio::time::sleep(wait).await;
                    ceiling = (ceiling * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

/// An open Sync stream.
pub struct WireSession {
    /// What the agent sends (see [`event`]).
    pub tx: mpsc::Sender<pb::AgentMessage>,
    /// What the hub sends.
    pub rx: tonic::Streaming<pb::HubMessage>,
    /// The highest seq the hub acknowledged (stored durably) on this stream.
    pub acked: u64,
}

/// Outbox entry `seq` as an event (reason `reason`, message `seq <seq>`).
pub fn event(seq: u64, reason: &str) -> pb::AgentMessage {
    let event = pb::Event {
        severity: pb::Severity::Info as i32,
        reason: reason.into(),
        message: format!("seq {seq}"),
        time_unix_ms: 1,
        ..Default::default()
    };
    pb::AgentMessage { msg: Some(In::Event(pb::EventReport { seq, event: Some(event) })) }
}

/// The `seq` of every stored event of `cluster` with `reason`, in id order.
pub async fn stored_seqs(hub: &HubRunner, cluster: &str, reason: &str) -> Result<Vec<u64>> {
    let mut admin = hub.admin().await?;
    let evs = admin
        .list_events(pb::ListEventsRequest { cluster: cluster.into(), limit: 10_000, ..Default::default() })
        .await?
        .into_inner()
        .events;
    Ok(evs
        .into_iter()
        .filter_map(|e| e.event)
        .filter(|e| e.reason == reason)
        .filter_map(|e| e.message.strip_prefix("seq ")?.parse().ok())
        .collect())
}

impl WireSession {
    /// Send outbox entry `seq` as an event (see [`event`]).
    pub async fn send_event(&self, seq: u64, reason: &str) -> Result<()> {
        self.tx.send(event(seq, reason)).await.map_err(|_| anyhow::anyhow!("the stream is closed"))
    }

    /// Read hub messages until an Ack of at least `seq` (updating `acked`),
    /// for at most `within`.
    pub async fn until_ack(&mut self, seq: u64, within: Duration) -> Result<()> {
        tokio::time::timeout(within, async {
            while self.acked < seq {
                match self.rx.message().await?.and_then(|m| m.msg) {
                    Some(Out::Ack(a)) => self.acked = self.acked.max(a.acked_seq),
                    Some(_) => {}
                    None => bail!("the stream ended"),
                }
            }
            Ok(())
        })
        .await
        .map_err(|_| anyhow::anyhow!("no ack of {seq} within {within:?} (acked {})", self.acked))?
    }

    /// The next Ack, if one comes within `within` (updates `acked`).
    pub async fn next_ack(&mut self, within: Duration) -> Option<u64> {
        let r = tokio::time::timeout(within, async {
            loop {
                match self.rx.message().await.ok()?.and_then(|m| m.msg) {
                    Some(Out::Ack(a)) => return Some(a.acked_seq),
                    Some(_) => {}
                    None => return None,
                }
            }
        })
        .await
        .ok()
        .flatten();
        if let Some(a) = r {
            self.acked = self.acked.max(a);
        }
        r
    }
}
