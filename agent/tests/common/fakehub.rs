//! A fake hub for agent tests: an in-process tonic server implementing
//! convoy.v1 Registration and Agent over mTLS with a test CA, fully under the
//! test's control (desired state, artifacts, acks on/off, dropped streams,
//! stop and restart on the same port), recording what the agent sends.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use convoy_proto::v1 as pb;
use convoy_proto::v1::agent_server::{Agent, AgentServer};
use convoy_proto::v1::registration_server::{Registration, RegistrationServer};
use futures::Stream;
use parking_lot::Mutex;
use pb::agent_message::Msg as In;
use pb::hub_message::Msg as Out;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub ca_pem: String,
}

impl TestCa {
    pub fn new() -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, "fake hub CA");
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let cert = p.self_signed(&key).unwrap();
        let ca_pem = cert.pem();
        let issuer = rcgen::Issuer::new(p, key);
        Self { issuer, ca_pem }
    }

    fn server_identity(&self) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Sign a CSR for a cluster, valid for `ttl`.
    pub fn sign_cluster(&self, csr_pem: &str, cluster: &str, ttl: Duration) -> Result<String, String> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| e.to_string())?;
        let mut p = rcgen::CertificateParams::default();
        p.subject_alt_names = vec![rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from(format!("spiffe://convoy/cluster/{cluster}")).unwrap(),
        )];
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let now = time_now();
        p.not_before = now - time::Duration::seconds(1);
        p.not_after = now + time::Duration::milliseconds(ttl.as_millis() as i64);
        csr.params = p;
        Ok(csr.signed_by(&self.issuer).map_err(|e| e.to_string())?.pem())
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

type DesiredTx = watch::Sender<(u64, Vec<pb::BundleDeployment>)>;

/// Everything the fake hub records and is told.
#[derive(Default)]
pub struct HubState {
    pub token: String,
    pub cert_ttl_ms: AtomicU64,
    pub registrations: AtomicU64,
    pub renewals: AtomicU64,
    pub acking: AtomicBool,
    /// Highest stored seq per epoch.
    pub stored: Mutex<HashMap<u64, u64>>,
    /// Every stored outbox entry: (epoch, seq) -> message.
    pub entries: Mutex<BTreeMap<(u64, u64), pb::AgentMessage>>,
    /// The same entries in the order they were stored (across epochs).
    pub log: Mutex<Vec<pb::AgentMessage>>,
    /// Duplicates received (seq <= stored), for the test to inspect.
    pub duplicates: AtomicU64,
    pub hellos: Mutex<Vec<pb::Hello>>,
    pub heartbeats: AtomicU64,
    pub artifacts: Mutex<HashMap<String, Vec<u8>>>,
    /// Offsets of DownloadArtifact requests.
    pub download_offsets: Mutex<Vec<u64>>,
    /// Fail the next download after this many bytes (once).
    pub fail_download_after: Mutex<Option<u64>>,
    pub connected: AtomicU64,
    pub kill: Mutex<CancellationToken>,
    desired: Mutex<Option<DesiredTx>>,
}

impl HubState {
    fn desired_tx(&self) -> DesiredTx {
        let mut d = self.desired.lock();
        d.get_or_insert_with(|| watch::channel((0, Vec::new())).0).clone()
    }
}

#[derive(Clone)]
struct Svc {
    ca: Arc<TestCa>,
    st: Arc<HubState>,
}

fn peer_cluster<T>(req: &Request<T>) -> Result<String, Status> {
    let certs = req.peer_certs().ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let der = certs.first().ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|_| Status::unauthenticated("bad cert"))?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(u) = n
                && let Some(name) = u.strip_prefix("spiffe://convoy/cluster/")
            {
                return Ok(name.to_string());
            }
        }
    }
    Err(Status::permission_denied("not a cluster certificate"))
}

#[tonic::async_trait]
impl Registration for Svc {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let r = req.into_inner();
        if r.token != self.st.token {
            return Err(Status::unauthenticated("bad token"));
        }
        let ttl = Duration::from_millis(self.st.cert_ttl_ms.load(Ordering::Relaxed));
        let cert =
            self.ca.sign_cluster(&r.csr_pem, &r.cluster_name, ttl).map_err(Status::invalid_argument)?;
        self.st.registrations.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(pb::RegisterResponse {
            certificate_pem: cert,
            ca_pem: self.ca.ca_pem.clone(),
            identity: format!("spiffe://convoy/cluster/{}", r.cluster_name),
            labels: r.labels,
            ..Default::default()
        }))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for Svc {
    type SyncStream = BoxStream<pb::HubMessage>;
    type DownloadArtifactStream = BoxStream<pb::ArtifactChunk>;

    async fn sync(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let _cluster = peer_cluster(&req)?;
        let mut inbound = req.into_inner();
        let hello = match inbound.message().await? {
            Some(pb::AgentMessage { msg: Some(In::Hello(h)) }) => h,
            _ => return Err(Status::invalid_argument("Hello first")),
        };
        let epoch = hello.outbox_epoch;
        self.st.hellos.lock().push(hello);
        let (tx, rx) = mpsc::channel::<Result<pb::HubMessage, Status>>(64);
        let stored = *self.st.stored.lock().get(&epoch).unwrap_or(&0);
        let mut desired_rx = self.st.desired_tx().subscribe();
        let (version, snapshot) = desired_rx.borrow_and_update().clone();
        let _ = tx.send(Ok(pb::HubMessage { msg: Some(Out::Ack(pb::Ack { acked_seq: stored })) })).await;
        let _ = tx
            .send(Ok(pb::HubMessage {
                msg: Some(Out::Snapshot(pb::DesiredState { version, bundles: snapshot.clone() })),
            }))
            .await;
        let st = self.st.clone();
        let kill = st.kill.lock().clone();
        st.connected.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let mut last: Vec<pb::BundleDeployment> = snapshot;
            loop {
                tokio::select! {
                    _ = kill.cancelled() => break,
                    ch = desired_rx.changed() => {
                        if ch.is_err() { break; }
                        let (version, now) = desired_rx.borrow_and_update().clone();
                        let upserts: Vec<_> = now.iter().filter(|d| !last.contains(d)).cloned().collect();
                        let removed: Vec<String> = last.iter().filter(|o| !now.iter().any(|n| n.name == o.name)).map(|o| o.name.clone()).collect();
                        last = now;
                        let u = pb::DesiredStateUpdate { version, upserts, removed };
                        if tx.send(Ok(pb::HubMessage { msg: Some(Out::Update(u)) })).await.is_err() { break; }
                    }
                    m = inbound.message() => {
                        let Ok(Some(m)) = m else { break };
                        let seq = match &m.msg {
                            Some(In::Status(s)) => s.seq,
                            Some(In::Event(e)) => e.seq,
                            Some(In::Heartbeat(_)) => { st.heartbeats.fetch_add(1, Ordering::Relaxed); continue; }
                            _ => continue,
                        };
                        if !st.acking.load(Ordering::Relaxed) {
                            continue;
                        }
                        let acked = {
                            let mut stored = st.stored.lock();
                            let cur = stored.entry(epoch).or_insert(0);
                            if seq <= *cur {
                                st.duplicates.fetch_add(1, Ordering::Relaxed);
                            } else {
                                st.log.lock().push(m.clone());
                                st.entries.lock().insert((epoch, seq), m);
                                *cur = seq;
                            }
                            *cur
                        };
                        if tx.send(Ok(pb::HubMessage { msg: Some(Out::Ack(pb::Ack { acked_seq: acked })) })).await.is_err() { break; }
                    }
                }
            }
            st.connected.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn download_artifact(
        &self,
        req: Request<pb::DownloadArtifactRequest>,
    ) -> Result<Response<Self::DownloadArtifactStream>, Status> {
        let _cluster = peer_cluster(&req)?;
        let r = req.into_inner();
        self.st.download_offsets.lock().push(r.offset);
        let bytes = self
            .st
            .artifacts
            .lock()
            .get(&r.digest)
            .cloned()
            .ok_or_else(|| Status::permission_denied("unknown digest"))?;
        let fail_after = self.st.fail_download_after.lock().take();
        let total = bytes.len() as u64;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut off = r.offset as usize;
            let mut sent = 0u64;
            while off < bytes.len() {
                let end = (off + 64 * 1024).min(bytes.len());
                if let Some(limit) = fail_after
                    && sent >= limit
                {
                    let _ = tx.send(Err(Status::unavailable("injected download failure"))).await;
                    return;
                }
                let chunk = pb::ArtifactChunk {
                    offset: off as u64,
                    data: bytes[off..end].to_vec().into(),
                    total_size: total,
                };
                sent += (end - off) as u64;
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
                off = end;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn renew_certificate(
        &self,
        req: Request<pb::RenewCertificateRequest>,
    ) -> Result<Response<pb::RenewCertificateResponse>, Status> {
        let cluster = peer_cluster(&req)?;
        let r = req.into_inner();
        let ttl = Duration::from_millis(self.st.cert_ttl_ms.load(Ordering::Relaxed));
        let cert = self.ca.sign_cluster(&r.csr_pem, &cluster, ttl).map_err(Status::invalid_argument)?;
        self.st.renewals.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(pb::RenewCertificateResponse {
            certificate_pem: cert,
            ca_pem: self.ca.ca_pem.clone(),
            ..Default::default()
        }))
    }
}

pub struct FakeHub {
    pub addr: SocketAddr,
    pub ca: Arc<TestCa>,
    pub state: Arc<HubState>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl FakeHub {
    pub async fn start(token: &str, cert_ttl: Duration) -> FakeHub {
        let st = Arc::new(HubState { token: token.into(), ..Default::default() });
        st.cert_ttl_ms.store(cert_ttl.as_millis() as u64, Ordering::Relaxed);
        st.acking.store(true, Ordering::Relaxed);
        let ca = Arc::new(TestCa::new());
        let mut hub = FakeHub {
            addr: "127.0.0.1:0".parse().unwrap(),
            ca,
            state: st,
            stop: CancellationToken::new(),
            task: None,
        };
        hub.serve().await;
        hub
    }

    async fn serve(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.expect("bind fake hub");
        self.addr = listener.local_addr().unwrap();
        let (cert, key) = self.ca.server_identity();
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .client_ca_root(Certificate::from_pem(&self.ca.ca_pem))
            .client_auth_optional(true);
        let svc = Svc { ca: self.ca.clone(), st: self.state.clone() };
        self.stop = CancellationToken::new();
        *self.state.kill.lock() = CancellationToken::new();
        let stop = self.stop.clone();
        let fut = Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(RegistrationServer::new(svc.clone()))
            .add_service(AgentServer::new(svc))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled_owned());
        self.task = Some(tokio::spawn(async move {
            let _ = fut.await;
        }));
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// Stop serving: sessions end, the port closes.
    pub async fn stop(&mut self) {
        self.state.kill.lock().cancel();
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    /// Serve again on the same port, with the same state.
    pub async fn restart(&mut self) {
        for _ in 0..50 {
            if tokio::net::TcpListener::bind(self.addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.serve().await;
    }

    /// End every open Sync stream (the agent reconnects).
    pub fn drop_streams(&self) {
        let mut k = self.state.kill.lock();
        k.cancel();
        *k = CancellationToken::new();
    }

    pub fn set_desired(&self, bundles: Vec<pb::BundleDeployment>) {
        let tx = self.state.desired_tx();
        let v = tx.borrow().0 + 1;
        tx.send_replace((v, bundles));
    }

    pub fn add_artifact(&self, bytes: Vec<u8>) -> String {
        let d = convoy_artifact::digest_of(&bytes);
        self.state.artifacts.lock().insert(d.clone(), bytes);
        d
    }

    pub fn set_acking(&self, on: bool) {
        self.state.acking.store(on, Ordering::Relaxed);
    }

    /// The latest stored status per bundle.
    pub fn statuses(&self) -> BTreeMap<String, pb::BundleStatus> {
        let mut out = BTreeMap::new();
        for m in self.state.log.lock().iter() {
            if let Some(In::Status(s)) = &m.msg
                && let Some(st) = &s.status
            {
                out.insert(st.bundle.clone(), st.clone());
            }
        }
        out
    }

    pub fn status(&self, bundle: &str) -> Option<pb::BundleStatus> {
        self.statuses().remove(bundle)
    }

    /// Every stored event, in seq order.
    pub fn events(&self) -> Vec<pb::Event> {
        self.state
            .log
            .lock()
            .iter()
            .filter_map(|m| match &m.msg {
                Some(In::Event(e)) => e.event.clone(),
                _ => None,
            })
            .collect()
    }

    pub fn seqs(&self) -> Vec<(u64, u64)> {
        self.state.entries.lock().keys().copied().collect()
    }

    pub fn connected(&self) -> bool {
        self.state.connected.load(Ordering::Relaxed) > 0
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.state.kill.lock().cancel();
        self.stop.cancel();
    }
}
