//! Helpers for the hub's in-process gRPC tests: start a hub, build mTLS and
//! token clients, register fake agents, drive Sync streams.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use convoy_core::config::FleetConfig;
use convoy_core::selector::Labels;
use convoy_hub::{Hub, HubConfig, HubHandle, HubOptions, StaticPipeline};
use convoy_proto::v1 as pb;
use convoy_proto::v1::agent_message::Msg as In;
use convoy_proto::v1::hub_message::Msg as Out;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status, Streaming};

pub const WAIT: Duration = Duration::from_secs(30);

pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt().with_env_filter("warn,convoy_hub=info").with_test_writer().try_init();
}

/// The GitSource `repo` and the Bundle `web` (clusters labelled env=prod)
/// every test fleet starts with; a macro so that fleets can `concat!` it.
#[macro_export]
macro_rules! repo_and_web {
    () => {
        r#"
apiVersion: convoy.dev/v1
kind: GitSource
metadata: {name: repo}
spec: {url: "https://git.example/fleet.git"}
---
apiVersion: convoy.dev/v1
kind: Bundle
metadata: {name: web}
spec:
  source: repo
  path: web
  targets: [{clusterSelector: {matchLabels: {env: prod}}}]
"#
    };
}

/// `repo`, `web`, and `db` on cluster c2 after `web`.
pub const FLEET: &str = concat!(
    repo_and_web!(),
    r#"---
apiVersion: convoy.dev/v1
kind: Bundle
metadata: {name: db}
spec:
  source: repo
  path: db
  dependsOn: [web]
  targets: [{clusterName: c2}]
"#
);

pub fn fleet(text: &str) -> FleetConfig {
    FleetConfig::parse([("fleet.yaml", text)]).unwrap()
}

pub struct TestHub {
    pub hub: HubHandle,
    pub pipeline: Arc<StaticPipeline>,
    pub dir: std::path::PathBuf,
}

pub async fn start(dir: &std::path::Path, fleet_text: &str) -> TestHub {
    start_clocked(dir, fleet_text, None).await
}

/// [`start`] with the hub reading `clock` (`None`: the system clock).
pub async fn start_clocked(
    dir: &std::path::Path,
    fleet_text: &str,
    clock: Option<convoy_core::clock::SharedClock>,
) -> TestHub {
    init();
    let pipeline = StaticPipeline::new(dir.join("artifacts"));
    let mut cfg = HubConfig::local(dir.join("data"));
    cfg.certificates.cluster_ttl = convoy_core::duration::HumanDuration::from_secs(3600);
    let hub = Hub::start(
        cfg,
        HubOptions { pipeline: Some(pipeline.clone()), fleet: Some(fleet(fleet_text)), clock },
    )
    .await
    .unwrap();
    TestHub { hub, pipeline, dir: dir.to_path_buf() }
}

/// What a Helm bundle's build records (chart `web` 1.0.0, fixed digests).
#[allow(dead_code)]
pub fn built_helm() -> convoy_core::pipeline::BuiltHelm {
    convoy_core::pipeline::BuiltHelm {
        chart: "web".into(),
        version: "1.0.0".into(),
        chart_digest: format!("sha256:{}", "c".repeat(64)),
        values_digest: format!("sha256:{}", "d".repeat(64)),
        warnings: Vec::new(),
        input: None,
    }
}

/// An agent's `TestSucceeded` event answering the `convoy test` request `id`.
#[allow(dead_code)]
pub fn test_answer(seq: u64, id: &str) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(In::Event(pb::EventReport {
            seq,
            event: Some(pb::Event {
                severity: pb::Severity::Info as i32,
                reason: "TestSucceeded".into(),
                message: "3 test(s) passed".into(),
                bundle: "web".into(),
                details: [("requestId".to_string(), id.to_string())].into(),
                ..Default::default()
            }),
        })),
    }
}

pub async fn channel(hub: &HubHandle, identity: Option<(&str, &str)>) -> Channel {
    channel_with_window(hub, identity, None).await
}

pub async fn channel_with_window(
    hub: &HubHandle,
    identity: Option<(&str, &str)>,
    window: Option<u32>,
) -> Channel {
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&hub.ca_pem)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(hub.endpoint())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .initial_stream_window_size(window)
        .initial_connection_window_size(window)
        .connect()
        .await
        .unwrap()
}

pub async fn admin(hub: &HubHandle) -> pb::fleet_client::FleetClient<Channel> {
    pb::fleet_client::FleetClient::new(channel(hub, Some((&hub.admin.cert_pem, &hub.admin.key_pem))).await)
}

pub fn csr() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default().serialize_request(&key).unwrap().pem().unwrap();
    (csr, key.serialize_pem())
}

#[derive(Clone)]
pub struct AgentIdentity {
    pub cluster: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub async fn register_with(
    hub: &HubHandle,
    token: &str,
    name: &str,
    labels: &[(&str, &str)],
) -> Result<AgentIdentity, Status> {
    let mut c = pb::registration_client::RegistrationClient::new(channel(hub, None).await);
    let (csr, key) = csr();
    let r = c
        .register(pb::RegisterRequest {
            token: token.into(),
            cluster_name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            csr_pem: csr,
            agent_version: "test/1".into(),
        })
        .await?
        .into_inner();
    assert_eq!(r.identity, format!("spiffe://convoy/cluster/{name}"));
    assert_eq!(r.ca_pem, hub.ca_pem);
    Ok(AgentIdentity { cluster: name.into(), cert_pem: r.certificate_pem, key_pem: key })
}

pub async fn register(hub: &HubHandle, name: &str, labels: &[(&str, &str)]) -> AgentIdentity {
    // Labels come from the token, never from the agent.
    let l: Labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let t = hub.create_token(Some(name), l, Duration::from_secs(600), true).await.unwrap();
    register_with(hub, &t.token, name, labels).await.unwrap()
}

pub async fn agent_client(hub: &HubHandle, id: &AgentIdentity) -> pb::agent_client::AgentClient<Channel> {
    pb::agent_client::AgentClient::new(channel(hub, Some((&id.cert_pem, &id.key_pem))).await)
}

/// A fake agent's Sync stream.
pub struct Stream {
    pub tx: mpsc::Sender<pb::AgentMessage>,
    pub rx: Streaming<pb::HubMessage>,
    pub client: pb::agent_client::AgentClient<Channel>,
}

pub fn hello(epoch: u64) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(In::Hello(pb::Hello {
            agent_version: "test/1".into(),
            outbox_epoch: epoch,
            applied: vec![],
            age_recipients: vec![],
            ..Default::default()
        })),
    }
}

pub async fn open(
    hub: &HubHandle,
    id: &AgentIdentity,
    epoch: u64,
) -> Result<(Stream, u64, pb::DesiredState), Status> {
    open_with_window(hub, id, epoch, 0).await
}

pub async fn open_with_window(
    hub: &HubHandle,
    id: &AgentIdentity,
    epoch: u64,
    window: u32,
) -> Result<(Stream, u64, pb::DesiredState), Status> {
    open_with_hello(hub, id, hello(epoch), window).await
}

/// Open a Sync stream whose first message is `hello` (e.g. with the
/// cluster's Kubernetes version and API versions).
pub async fn open_with_hello(
    hub: &HubHandle,
    id: &AgentIdentity,
    hello: pb::AgentMessage,
    window: u32,
) -> Result<(Stream, u64, pb::DesiredState), Status> {
    let ch =
        channel_with_window(hub, Some((&id.cert_pem, &id.key_pem)), (window > 0).then_some(window)).await;
    let mut client = pb::agent_client::AgentClient::new(ch);
    let (tx, rx) = mpsc::channel(64);
    tx.send(hello).await.unwrap();
    let mut rx = client.sync(Request::new(ReceiverStream::new(rx))).await?.into_inner();
    let ack = match rx.message().await?.and_then(|m| m.msg) {
        Some(Out::Ack(a)) => a.acked_seq,
        other => panic!("expected Ack first, got {other:?}"),
    };
    let snap = match rx.message().await?.and_then(|m| m.msg) {
        Some(Out::Snapshot(s)) => s,
        other => panic!("expected Snapshot second, got {other:?}"),
    };
    Ok((Stream { tx, rx, client }, ack, snap))
}

impl Stream {
    pub async fn send_status(&self, seq: u64, bundle: &str, generation: u64, phase: pb::Phase) {
        let status = pb::BundleStatus {
            bundle: bundle.into(),
            generation,
            phase: phase as i32,
            message: format!("seq {seq}"),
            ..Default::default()
        };
        self.tx
            .send(pb::AgentMessage { msg: Some(In::Status(pb::StatusReport { seq, status: Some(status) })) })
            .await
            .unwrap();
    }

    pub async fn send_event(&self, seq: u64, bundle: &str, reason: &str) {
        let event = pb::Event {
            severity: pb::Severity::Info as i32,
            reason: reason.into(),
            message: format!("seq {seq}"),
            bundle: bundle.into(),
            ..Default::default()
        };
        self.tx
            .send(pb::AgentMessage { msg: Some(In::Event(pb::EventReport { seq, event: Some(event) })) })
            .await
            .unwrap();
    }

    /// Read messages until `f` returns Some, within WAIT.
    pub async fn until<T>(&mut self, mut f: impl FnMut(&Out) -> Option<T>) -> T {
        tokio::time::timeout(WAIT, async {
            loop {
                let m = self.rx.message().await.expect("stream error").expect("stream ended");
                if let Some(msg) = m.msg
                    && let Some(t) = f(&msg)
                {
                    return t;
                }
            }
        })
        .await
        .expect("timed out waiting for a hub message")
    }

    /// Download the artifact `digest` whole, over this stream's connection.
    pub async fn download(&mut self, digest: &str) -> Vec<u8> {
        let mut chunks = self
            .client
            .download_artifact(pb::DownloadArtifactRequest { digest: digest.into(), offset: 0 })
            .await
            .expect("download starts")
            .into_inner();
        let mut got = Vec::new();
        while let Some(c) = chunks.message().await.expect("download chunk") {
            got.extend_from_slice(&c.data);
        }
        got
    }

    pub async fn until_ack(&mut self, seq: u64) {
        self.until(|m| matches!(m, Out::Ack(a) if a.acked_seq >= seq).then_some(())).await
    }

    /// Wait for an update or snapshot containing `bundle` at `generation`.
    pub async fn until_generation(&mut self, bundle: &str, generation: u64) -> pb::BundleDeployment {
        self.until(|m| {
            let list = match m {
                Out::Update(u) => &u.upserts,
                Out::Snapshot(s) => &s.bundles,
                Out::Ack(_) | Out::RunTests(_) => return None,
            };
            list.iter().find(|b| b.name == bundle && b.generation == generation).cloned()
        })
        .await
    }

    pub async fn until_removed(&mut self, bundle: &str) {
        self.until(|m| matches!(m, Out::Update(u) if u.removed.iter().any(|r| r == bundle)).then_some(()))
            .await
    }
}

/// Poll `f` until it returns Some, within WAIT.
pub async fn eventually<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(tokio::time::Instant::now() < deadline, "condition not reached in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
