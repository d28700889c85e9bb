//! Trust boundaries of the hub (issue 12): bootstrap tokens bind identity and
//! labels, certificates renew only from the current serial and streams end
//! with their certificate, a hub behind its agents' generations recovers, and
//! a flooding agent leaves the hub bounded while others are served.

mod common;

use std::time::Duration;

use common::*;
use convoy_core::selector::Labels;
use convoy_hub::state::TokenInput;
use convoy_proto::v1 as pb;
use convoy_proto::v1::agent_message::Msg as In;
use convoy_proto::v1::hub_message::Msg as Out;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request};

fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

async fn cluster_labels(hub: &convoy_hub::HubHandle, name: &str) -> Labels {
    let mut fleet = admin(hub).await;
    let c = fleet.get_cluster(pb::GetClusterRequest { name: name.into() }).await.unwrap().into_inner();
    c.cluster.unwrap().labels.into_iter().collect()
}

/// Item 1: a token for `dev` cannot register `evil`, its agent cannot give
/// itself `env=prod`, and so it never gets prod's bundles or artifacts.
#[tokio::test]
async fn a_token_for_dev_cannot_register_evil_nor_claim_prod_labels_or_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), FLEET).await;
    let hub = &t.hub;
    t.pipeline
        .publish("web", "repo", "https://git.example/fleet.git", "main@sha1:aaaa", b"prod web")
        .unwrap();
    let prod = register(hub, "prod-1", &[("env", "prod")]).await;
    let (_s, _, snap) = open(hub, &prod, 1).await.unwrap();
    let web = snap.bundles.iter().find(|b| b.name == "web").expect("prod gets web").clone();

    let tok = hub
        .create_token(Some("dev"), labels(&[("env", "dev")]), Duration::from_secs(60), false)
        .await
        .unwrap();
    let e = register_with(hub, &tok.token, "evil", &[("env", "prod")]).await.err().unwrap();
    assert_eq!(e.code(), Code::PermissionDenied);

    // The agent proposes env=prod and another label: neither is its to set.
    let dev = register_with(hub, &tok.token, "dev", &[("env", "prod"), ("tier", "gold")]).await.unwrap();
    assert_eq!(cluster_labels(hub, "dev").await, labels(&[("env", "dev")]));
    let (_d, _, snap) = open(hub, &dev, 1).await.unwrap();
    assert!(snap.bundles.is_empty(), "dev got {:?}", snap.bundles);
    let mut client = agent_client(hub, &dev).await;
    let e = client
        .download_artifact(pb::DownloadArtifactRequest { digest: web.digest.clone(), offset: 0 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // A token without a bound name or label still cannot make an agent prod.
    let any = hub.create_token(None, Labels::new(), Duration::from_secs(60), false).await.unwrap();
    register_with(hub, &any.token, "stray", &[("env", "prod")]).await.unwrap();
    assert_eq!(cluster_labels(hub, "stray").await, Labels::new());

    // The ignored labels are reported, not silently dropped.
    let mut fleet = admin(hub).await;
    let events = fleet
        .list_events(pb::ListEventsRequest { cluster: "hub".into(), limit: 1000, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(
        events.iter().any(|e| {
            let ev = e.event.as_ref().unwrap();
            ev.reason == "ClusterRegistered" && ev.message.contains("dev") && ev.message.contains("env,tier")
        }),
        "{events:?}"
    );
    t.hub.shutdown().await.unwrap();
}

/// Item 1: a name-prefix token registers only new names with the prefix, and
/// keeps only the agent labels whose keys it allows.
#[tokio::test]
async fn a_name_prefix_token_binds_names_and_allowed_agent_label_keys() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), FLEET).await;
    let hub = &t.hub;
    let tok = hub
        .create_token_with(TokenInput {
            labels: labels(&[("env", "edge")]),
            ttl: Duration::from_secs(60),
            name_prefix: Some("edge-".into()),
            agent_label_keys: vec!["zone".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let e = register_with(hub, &tok.token, "prod-eu", &[]).await.err().unwrap();
    assert_eq!(e.code(), Code::PermissionDenied);
    register_with(hub, &tok.token, "edge-1", &[("zone", "a"), ("env", "prod")]).await.unwrap();
    assert_eq!(cluster_labels(hub, "edge-1").await, labels(&[("env", "edge"), ("zone", "a")]));
    // Not twice: it registers only new names.
    let e = register_with(hub, &tok.token, "edge-1", &[]).await.err().unwrap();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Both a name and a prefix is refused.
    let e = hub
        .create_token_with(TokenInput {
            cluster: Some("x".into()),
            name_prefix: Some("edge-".into()),
            ttl: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not both"), "{e}");
    t.hub.shutdown().await.unwrap();
}

/// Item 1 and 8: re-registering a name ends every serial it had (and open
/// streams); a certificate renews only from the cluster's current serial, so
/// three renewals by a thief holding an old certificate cannot evict the
/// real agent.
#[tokio::test]
async fn renewal_only_from_the_current_serial_and_re_registration_ends_old_serials() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), FLEET).await;
    let hub = &t.hub;
    let old = register(hub, "c1", &[("env", "prod")]).await;
    // The real agent renews: `old` is no longer the current certificate.
    let (csr_pem, key) = csr();
    let r = agent_client(hub, &old)
        .await
        .renew_certificate(pb::RenewCertificateRequest { csr_pem })
        .await
        .unwrap();
    let real = AgentIdentity { cluster: "c1".into(), cert_pem: r.into_inner().certificate_pem, key_pem: key };

    // A thief holding `old` tries three renewals: all refused.
    let mut thief = agent_client(hub, &old).await;
    for _ in 0..3 {
        let (csr_pem, _) = csr();
        let e = thief.renew_certificate(pb::RenewCertificateRequest { csr_pem }).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    }
    // The real agent still works, and can renew again.
    let (mut s, _, _) = open(hub, &real, 1).await.unwrap();
    let (csr_pem, _) = csr();
    agent_client(hub, &real).await.renew_certificate(pb::RenewCertificateRequest { csr_pem }).await.unwrap();

    // Re-registration ends every serial the name had, and closes its streams.
    let tok = hub
        .create_token(Some("c1"), labels(&[("env", "prod")]), Duration::from_secs(60), true)
        .await
        .unwrap();
    let fresh = register_with(hub, &tok.token, "c1", &[]).await.unwrap();
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match s.rx.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(e) => return Some(e.code()),
            }
        }
    })
    .await
    .expect("the old stream was not closed");
    assert!(matches!(closed, None | Some(Code::PermissionDenied | Code::Aborted)), "{closed:?}");
    for id in [&old, &real] {
        let e = open(hub, id, 2).await.err().expect("an ended serial still works");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    }
    open(hub, &fresh, 3).await.unwrap();
    t.hub.shutdown().await.unwrap();
}

/// Item 8: an open Sync stream ends when the certificate that opened it expires.
#[tokio::test]
async fn a_sync_stream_ends_when_its_certificate_expires() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let pipeline = convoy_hub::StaticPipeline::new(dir.path().join("artifacts"));
    let mut cfg = convoy_hub::HubConfig::local(dir.path().join("data"));
    cfg.certificates.cluster_ttl = convoy_core::duration::HumanDuration::from_secs(2);
    let hub = convoy_hub::Hub::start(
        cfg,
        convoy_hub::HubOptions { pipeline: Some(pipeline), fleet: Some(fleet(FLEET)), ..Default::default() },
    )
    .await
    .unwrap();
    let id = register(&hub, "c1", &[("env", "prod")]).await;
    let started = std::time::Instant::now();
    let (mut s, _, _) = open(&hub, &id, 1).await.unwrap();
    // Heartbeats keep it alive otherwise.
    let tx = s.tx.clone();
    let beat = tokio::spawn(async move {
        loop {
            let hb = pb::AgentMessage { msg: Some(In::Heartbeat(pb::Heartbeat { time_unix_ms: 0 })) };
            if tx.send(hb).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let code = tokio::time::timeout(WAIT, async {
        loop {
            match s.rx.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(e) => return Some(e.code()),
            }
        }
    })
    .await
    .expect("the stream outlived its certificate");
    assert_eq!(code, Some(Code::Unauthenticated));
    assert!(started.elapsed() < Duration::from_secs(15));
    beat.abort();
    hub.shutdown().await.unwrap();
}

/// Open a Sync stream whose Hello reports `applied`.
async fn open_reporting(
    hub: &convoy_hub::HubHandle,
    id: &AgentIdentity,
    applied: Vec<pb::AppliedBundle>,
) -> (mpsc::Sender<pb::AgentMessage>, tonic::Streaming<pb::HubMessage>) {
    let mut client = agent_client(hub, id).await;
    let (tx, rx) = mpsc::channel(64);
    let hello = pb::Hello { agent_version: "test/1".into(), outbox_epoch: 1, applied, ..Default::default() };
    tx.send(pb::AgentMessage { msg: Some(In::Hello(hello)) }).await.unwrap();
    let rx = client.sync(Request::new(ReceiverStream::new(rx))).await.unwrap().into_inner();
    (tx, rx)
}

/// Item 4: a hub restored from an old backup (its generation of `web` is
/// below what the agent holds) re-signs the current artifact above the
/// agent's generation instead of being refused forever.
#[tokio::test]
async fn a_hub_restored_from_an_old_backup_continues_above_its_agents() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), FLEET).await;
    let id = register(&t.hub, "c1", &[("env", "prod")]).await;
    let (mut s, _, _) = open(&t.hub, &id, 1).await.unwrap();
    t.pipeline.publish("web", "repo", "https://git.example/fleet.git", "main@sha1:aaaa", b"v1").unwrap();
    let v1 = s.until_generation("web", 1).await;
    drop(s);
    t.hub.shutdown().await.unwrap();
    let db = dir.path().join("data").join("state.redb");
    let backup = dir.path().join("backup.redb");
    std::fs::copy(&db, &backup).unwrap();

    // Life goes on: generations 2 and 3, applied by the agent.
    let t = start(dir.path(), FLEET).await;
    let (mut s, _, snap) = open(&t.hub, &id, 1).await.unwrap();
    assert!(snap.bundles.iter().any(|b| b.name == "web" && b.generation == 1));
    t.pipeline.publish("web", "repo", "https://git.example/fleet.git", "main@sha1:bbbb", b"v2").unwrap();
    s.until_generation("web", 2).await;
    t.pipeline.publish("web", "repo", "https://git.example/fleet.git", "main@sha1:cccc", b"v3").unwrap();
    let v3 = s.until_generation("web", 3).await;
    drop(s);
    t.hub.shutdown().await.unwrap();

    // The hub comes back from the old backup: it knows generation 1 only.
    std::fs::copy(&backup, &db).unwrap();
    let t = start(dir.path(), FLEET).await;
    let held = pb::AppliedBundle {
        bundle: "web".into(),
        generation: 3,
        digest: v3.digest.clone(),
        revision: "main@sha1:cccc".into(),
    };
    let (_tx, mut rx) = open_reporting(&t.hub, &id, vec![held]).await;
    let got = tokio::time::timeout(WAIT, async {
        loop {
            let m = rx.message().await.unwrap().unwrap();
            let list = match m.msg {
                Some(Out::Snapshot(s)) => s.bundles,
                Some(Out::Update(u)) => u.upserts,
                _ => continue,
            };
            if let Some(b) = list.into_iter().find(|b| b.name == "web" && b.generation > 3) {
                return b;
            }
        }
    })
    .await
    .expect("the hub did not continue above the agent's generation");
    assert_eq!(got.generation, 4);
    assert_eq!(got.digest, v1.digest, "the restored hub's current artifact, re-signed");
    let st: serde_json::Value = serde_json::from_slice(&got.statement).unwrap();
    assert_eq!(st["generation"], 4);
    // Durable: after a restart the hub still serves generation 4.
    t.hub.shutdown().await.unwrap();
    let t = start(dir.path(), FLEET).await;
    let (_s, _, snap) = open(&t.hub, &id, 2).await.unwrap();
    assert!(snap.bundles.iter().any(|b| b.name == "web" && b.generation == 4), "{:?}", snap.bundles);
    t.hub.shutdown().await.unwrap();
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Item 5: one agent floods the hub with 100k statuses for bundles it is not
/// targeted by, and then with 4 MiB messages. The hub stores none of them
/// (one report event per name up to a bound, counted after), refuses the big
/// messages, stays bounded in memory, and keeps serving another agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_agent_leaves_the_hub_bounded_and_others_served() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), FLEET).await;
    let hub = &t.hub;
    t.pipeline.publish("web", "repo", "https://git.example/fleet.git", "main@sha1:aaaa", b"web").unwrap();
    let bad = register(hub, "bad", &[("env", "prod")]).await;
    let good = register(hub, "good", &[("env", "prod")]).await;
    let rss0 = rss_kib();

    const N: u64 = 100_000;
    let (s, _, _) = open(hub, &bad, 1).await.unwrap();
    let flood = {
        let tx = s.tx.clone();
        tokio::spawn(async move {
            for seq in 1..=N {
                let status =
                    pb::BundleStatus { bundle: format!("bogus-{seq}"), generation: 1, ..Default::default() };
                let m = pb::AgentMessage {
                    msg: Some(In::Status(pb::StatusReport { seq, status: Some(status) })),
                };
                if tx.send(m).await.is_err() {
                    return false;
                }
            }
            // A status for a bundle it does have, after the flood, is stored.
            let status = pb::BundleStatus { bundle: "web".into(), generation: 1, ..Default::default() };
            let m = pb::AgentMessage {
                msg: Some(In::Status(pb::StatusReport { seq: N + 1, status: Some(status) })),
            };
            tx.send(m).await.is_ok()
        })
    };

    // Meanwhile another agent is served: snapshot, then an ack for its report.
    let (mut g, _, snap) = open(hub, &good, 1).await.unwrap();
    assert!(snap.bundles.iter().any(|b| b.name == "web"));
    g.send_status(1, "web", 1, pb::Phase::Ready).await;
    g.until_ack(1).await;

    assert!(flood.await.unwrap(), "the flooding stream was closed early");
    let mut s = s;
    s.until_ack(N + 1).await;
    let view = hub.state().view();
    let statuses = view.clusters["bad"].shared.statuses();
    assert_eq!(statuses.keys().cloned().collect::<Vec<_>>(), vec!["web".to_string()]);
    drop(view);

    // 4 MiB messages: refused at decode, the stream ends; nothing stored.
    let big = pb::BundleStatus {
        bundle: "web".into(),
        message: "x".repeat(4 * 1024 * 1024 - 4096),
        ..Default::default()
    };
    let m = pb::AgentMessage { msg: Some(In::Status(pb::StatusReport { seq: N + 2, status: Some(big) })) };
    s.tx.send(m).await.unwrap();
    // The stream ends (with an error status, or closed by the hub).
    let code = tokio::time::timeout(WAIT, async {
        loop {
            match s.rx.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(e) => return Some(e.code()),
            }
        }
    })
    .await
    .expect("a 4 MiB message was accepted");
    assert!(code != Some(Code::Ok), "{code:?}");
    let st = hub.state().view().clusters["bad"].shared.statuses()["web"].clone();
    assert!(st.status.message.len() < 4096, "a big message was stored");

    // Reported, bounded: one event per refused name up to a bound, then one more.
    let mut fleet = admin(hub).await;
    let events = fleet
        .list_events(pb::ListEventsRequest { cluster: "bad".into(), limit: 10_000, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    let refused = events.iter().filter(|e| e.event.as_ref().unwrap().reason == "StatusRefused").count();
    assert!((1..=65).contains(&refused), "{refused} StatusRefused events");
    let metrics = hub.metrics_text();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("convoy_hub_agent_input_refused_total") && l.contains("untargeted_status"))
        .expect("refusals are counted");
    assert!(line.ends_with(&format!(" {N}")), "{line}");

    // The other agent is still served.
    g.send_status(2, "web", 1, pb::Phase::Ready).await;
    g.until_ack(2).await;
    let grown_mib = rss_kib().saturating_sub(rss0) / 1024;
    eprintln!("hub test process RSS grew by {grown_mib} MiB during the flood");
    assert!(grown_mib < 200, "RSS grew by {grown_mib} MiB");
    t.hub.shutdown().await.unwrap();
}

/// The soft limit on open files of this process.
fn open_files_limit() -> usize {
    let s = std::fs::read_to_string("/proc/self/limits").unwrap();
    s.lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// Whether the peer closed `s` within `within`.
async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Item 7: a slowloris of trickling sockets on the gRPC port (from one
/// address) and on the HTTP port leaves gRPC serving agents: sockets over the
/// per-address handshake cap are closed at once, HTTP sockets that never
/// finish their headers are closed after the header-read timeout, and
/// meanwhile an agent syncs and a new cluster registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_leaves_grpc_serving_agents() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), FLEET).await;
    let hub = &t.hub;
    let id = register(hub, "c1", &[("env", "prod")]).await;
    // 1,000 sockets per port (2,000 in all), fewer if the fd limit is low:
    // each socket costs two descriptors in this process (client and server).
    let n = ((open_files_limit().saturating_sub(1024)) / 4).min(1000);
    assert!(n > 300, "open files limit too low for this test: {}", open_files_limit());
    let grpc = hub.grpc_addr;
    let http = hub.http_addr.expect("the test hub serves HTTP");

    let mut grpc_socks = Vec::with_capacity(n);
    for _ in 0..n {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut s = sock.connect(grpc).await.unwrap();
        // The first byte of a TLS ClientHello record, then nothing.
        s.write_all(&[0x16]).await.unwrap();
        grpc_socks.push(s);
    }
    let mut http_socks = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
        // Most trickle an unfinished request; some send nothing at all.
        if i % 10 != 0 {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        }
        http_socks.push(s);
    }
    let flood_started = std::time::Instant::now();

    // Agents are served meanwhile.
    let (mut s, _, _) = open(hub, &id, 1).await.unwrap();
    s.send_status(1, "web", 0, pb::Phase::Pending).await;
    s.until_ack(1).await;
    register(hub, "c2", &[("env", "prod")]).await;
    let served_in = flood_started.elapsed();
    assert!(served_in < Duration::from_secs(10), "agents waited {served_in:?}");

    // gRPC: one address holds at most MAX_HANDSHAKES_PER_IP unfinished handshakes.
    let closed =
        futures::future::join_all(grpc_socks.iter_mut().map(|s| closed_within(s, Duration::from_secs(3))))
            .await
            .into_iter()
            .filter(|c| *c)
            .count();
    let cap = convoy_hub::tls::MAX_HANDSHAKES_PER_IP;
    assert!(closed >= n - cap, "only {closed} of {n} trickling gRPC sockets were closed");
    // The HTTP port still answers a well-formed request.
    {
        use tokio::io::AsyncReadExt;
        let mut h = tokio::net::TcpStream::connect(http).await.unwrap();
        h.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(WAIT, h.read_to_string(&mut out)).await.unwrap().unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }

    // HTTP: headers not finished within the timeout close the connection.
    let limit = convoy_hub::http::HEADER_READ_TIMEOUT + Duration::from_secs(10);
    let closed = futures::future::join_all(http_socks.iter_mut().map(|s| closed_within(s, limit)))
        .await
        .into_iter()
        .filter(|c| *c)
        .count();
    assert_eq!(closed, n, "slowloris HTTP sockets stayed open");
    assert!(flood_started.elapsed() < limit + Duration::from_secs(10));
    eprintln!("slowloris: {n} gRPC + {n} HTTP sockets; agents served in {served_in:?}");

    // And the agent's stream is still alive.
    s.send_status(2, "web", 0, pb::Phase::Pending).await;
    s.until_ack(2).await;
    drop(grpc_socks);
    t.hub.shutdown().await.unwrap();
}

async fn list_with_token(hub: &convoy_hub::HubHandle, token: &str) -> Code {
    let token = token.to_string();
    let mut c = pb::fleet_client::FleetClient::with_interceptor(
        channel(hub, None).await,
        move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
            Ok(r)
        },
    );
    match c.list_clusters(pb::ListClustersRequest::default()).await {
        Ok(_) => Code::Ok,
        Err(e) => e.code(),
    }
}

/// Item 8: a rotated admin token file takes effect without a restart.
#[tokio::test]
async fn a_rotated_admin_token_file_takes_effect_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), FLEET).await;
    let hub = &t.hub;
    let old = hub.admin.token.clone();
    assert_eq!(list_with_token(hub, &old).await, Code::Ok);
    let new = "rotated-admin-token-0123456789abcdef";
    std::fs::write(hub.data_dir.join("admin-token"), format!("{new}\n")).unwrap();
    eventually(|| async { (list_with_token(hub, new).await == Code::Ok).then_some(()) }).await;
    assert_eq!(list_with_token(hub, &old).await, Code::Unauthenticated);
    t.hub.shutdown().await.unwrap();
}

fn serial_of(cert_pem: &str) -> String {
    let der = convoy_hub::pki::certs_from_pem(cert_pem).unwrap();
    convoy_hub::pki::peer_cert(&der[0]).unwrap().serial
}

/// Item 8: admin certificates are recorded when issued and revocable like
/// cluster ones: a revoked one is refused on its open connection, its open
/// FollowEvents stream ends at once, the revocation survives a restart (which
/// issues a fresh admin certificate), and a CA-signed admin certificate the
/// hub never recorded is refused.
#[tokio::test]
async fn a_revoked_admin_certificate_is_refused_at_once_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), FLEET).await;
    let hub = &t.hub;
    let old_serial = serial_of(&hub.admin.cert_pem);
    let mut fleet = admin(hub).await;
    assert!(fleet.list_clusters(pb::ListClustersRequest::default()).await.is_ok());
    let mut follow = admin(hub)
        .await
        .follow_events(pb::ListEventsRequest::default())
        .await
        .expect("an admin certificate follows events")
        .into_inner();

    // Signed by the hub's CA but never recorded by the hub: refused.
    let data = hub.data_dir.clone();
    let ca = convoy_hub::pki::Ca::from_pem(
        &std::fs::read_to_string(data.join("ca.crt")).unwrap(),
        &std::fs::read_to_string(data.join("ca.key")).unwrap(),
    )
    .unwrap();
    let (forged, forged_key) = ca
        .issue_with_key(
            &convoy_core::identity::Identity::Admin("admin".into()),
            Duration::from_secs(3600),
            convoy_hub::now_ms(),
        )
        .unwrap();
    let mut unrecorded =
        pb::fleet_client::FleetClient::new(channel(hub, Some((&forged.pem, &forged_key))).await);
    let e = unrecorded.list_clusters(pb::ListClustersRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // Revoke by name with the admin token.
    let token = hub.admin.token.clone();
    let mut by_token = pb::fleet_client::FleetClient::with_interceptor(
        channel(hub, None).await,
        move |mut r: Request<()>| {
            r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
            Ok(r)
        },
    );
    let r = by_token
        .revoke_admin(pb::RevokeAdminRequest { name: "admin".into(), serial: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert!(r.message.contains(&old_serial), "{}", r.message);

    // The open stream ends at once with PERMISSION_DENIED...
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match follow.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(s) => return Some(s.code()),
            }
        }
    })
    .await
    .expect("the follow stream of a revoked admin certificate ends");
    assert_eq!(ended, Some(Code::PermissionDenied));
    // ...and the next call on the already open connection is refused.
    let e = fleet.list_clusters(pb::ListClustersRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("revoked"), "{e:?}");
    // Nothing left to revoke: said so, not silently accepted.
    let e = by_token
        .revoke_admin(pb::RevokeAdminRequest { name: String::new(), serial: old_serial.to_uppercase() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // The revocation is a hub event.
    let events = by_token.list_events(pb::ListEventsRequest::default()).await.unwrap().into_inner().events;
    assert!(events.iter().any(|e| e.event.as_ref().is_some_and(|e| e.reason == "AdminCertificateRevoked")));
    let old = (hub.admin.cert_pem.clone(), hub.admin.key_pem.clone());
    t.hub.shutdown().await.unwrap();

    // After a restart the revocation holds and a fresh admin certificate works.
    let t = start(dir.path(), FLEET).await;
    let hub = &t.hub;
    assert_ne!(serial_of(&hub.admin.cert_pem), old_serial, "a revoked admin certificate is reissued");
    assert!(admin(hub).await.list_clusters(pb::ListClustersRequest::default()).await.is_ok());
    let mut stale = pb::fleet_client::FleetClient::new(channel(hub, Some((&old.0, &old.1))).await);
    let e = stale.list_clusters(pb::ListClustersRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    t.hub.shutdown().await.unwrap();
}

/// Issue 11: hub events are stamped by the injected clock
/// (`HubOptions.clock`), not the system clock: with a fake clock standing a
/// minute in the past, `ClusterRegistered` carries exactly the fake time, and
/// moves only when the fake clock does.
#[tokio::test]
async fn hub_events_are_stamped_by_the_injected_clock() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let t0 = convoy_hub::now_ms() - 60_000;
    let clock = convoy_core::clock::FakeClock::new(t0);
    let hub = convoy_hub::Hub::start(
        convoy_hub::HubConfig::local(dir.path().join("data")),
        convoy_hub::HubOptions {
            pipeline: Some(convoy_hub::StaticPipeline::new(dir.path().join("artifacts"))),
            fleet: Some(fleet(FLEET)),
            clock: Some(std::sync::Arc::new(clock.clone())),
        },
    )
    .await
    .unwrap();
    register(&hub, "c1", &[("env", "prod")]).await;
    clock.advance(Duration::from_secs(10));
    register(&hub, "c2", &[("env", "prod")]).await;
    let events = admin(&hub)
        .await
        .list_events(pb::ListEventsRequest { cluster: "hub".into(), limit: 1000, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    let at = |name: &str| {
        events
            .iter()
            .filter_map(|e| e.event.as_ref())
            .find(|e| e.reason == "ClusterRegistered" && e.message.contains(name))
            .unwrap_or_else(|| panic!("no ClusterRegistered for {name}: {events:?}"))
            .time_unix_ms
    };
    assert_eq!(at("c1"), t0);
    assert_eq!(at("c2"), t0 + 10_000);
    hub.shutdown().await.unwrap();
}
