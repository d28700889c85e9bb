//! The hub runtime: TLS material, store, the state and writer tasks, the gRPC,
//! HTTP and metrics servers, fleet config reload, and one drain.
//!
//! [`Hub::start`] runs a complete hub in-process and returns a [`HubHandle`]
//! with its addresses and admin credentials; `convoy hub` and `convoy dev`,
//! the end-to-end tests and the agent's tests all start hubs this way.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use convoy_artifact::{PublicKey, SigningKey};
use convoy_core::config::FleetConfig;
use convoy_core::identity::Identity;
use convoy_core::selector::Labels;
use convoy_core::status::Severity;
use convoy_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::config::{HubConfig, fingerprint, load_fleet};
use crate::domain::{EventRecord, HUB_EVENT_SOURCE};
use crate::grpc::agent::AgentService;
use crate::grpc::artifacts::ArtifactCache;
use crate::grpc::fleet::FleetService;
use crate::grpc::registration::RegistrationService;
use crate::grpc::{Core, SessionSettings};
use crate::metrics::{Metrics, ResultLabels};
use crate::pipeline::SourcePipeline;
use crate::pki::{Ca, certs_from_pem, key_from_pem};
use crate::state::{FleetView, StateDeps, StateHandle, TokenInput, TokenOutput};
use crate::store::{Store, Write};
use crate::writer::WriterHandle;
use crate::{Error, Result, files, now_ms};

/// How long a drain may take before the remaining tasks are aborted.
const GRACE: Duration = Duration::from_secs(10);

/// Options for an in-process hub beyond its config.
#[derive(Default, Clone)]
pub struct HubOptions {
    /// The source pipeline. Default: convoy-sources (git) over the data dir;
    /// tests pass a [`crate::StaticPipeline`].
    pub pipeline: Option<Arc<dyn SourcePipeline>>,
    /// An initial fleet config instead of reading files (no reload then; use
    /// [`HubHandle::set_fleet`] to change it).
    pub fleet: Option<FleetConfig>,
    /// The wall clock token expiry, certificate validity and generation
    /// stamps are read from. Default: the system clock; tests pass a
    /// [`convoy_core::clock::FakeClock`] to move time without sleeping.
    pub clock: Option<convoy_core::clock::SharedClock>,
}

/// Operator credentials the hub writes to its data dir on first start.
#[derive(Debug, Clone)]
pub struct AdminCredentials {
    /// The hub CA certificate, PEM.
    pub ca_pem: String,
    /// The admin client certificate (`spiffe://convoy/admin/admin`), PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// The admin bearer token.
    pub token: String,
    /// The credentials file (see [`CredentialsFile`]).
    pub file: PathBuf,
}

/// The one-file form of operator credentials that `convoy` reads with
/// `--credentials` (kind `Credentials`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsFile {
    /// `convoy.dev/v1`.
    pub api_version: String,
    /// `Credentials`.
    pub kind: String,
    /// The hub's gRPC endpoint, `https://host:port`.
    pub hub: String,
    /// The TLS server name to verify (`localhost` for a generated certificate).
    pub server_name: String,
    /// The hub CA, PEM.
    pub ca: String,
    /// Admin client certificate, PEM.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cert: String,
    /// Its private key, PEM.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// An admin bearer token (used when no certificate is given).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
}

impl CredentialsFile {
    /// Read a credentials file (YAML or JSON).
    pub fn load(path: &Path) -> Result<Self> {
        let text = files::read_string(path)?;
        serde_saphyr::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// The YAML text.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).unwrap_or_default()
    }
}

/// A running hub.
pub struct HubHandle {
    /// The gRPC (TLS) address.
    pub grpc_addr: SocketAddr,
    /// The HTTP address (health, webhooks), if enabled.
    pub http_addr: Option<SocketAddr>,
    /// The metrics address, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// The data dir.
    pub data_dir: PathBuf,
    /// The CA certificate agents pin, PEM.
    pub ca_pem: String,
    /// The public keys agents should trust for statements (SPKI PEM, one or more).
    pub trusted_keys_pem: String,
    /// Operator credentials.
    pub admin: AdminCredentials,
    state: StateHandle,
    core: Option<Arc<Core>>,
    pipeline: Arc<dyn SourcePipeline>,
    shutdown: CancellationToken,
    tasks: Vec<(&'static str, tokio::task::JoinHandle<()>)>,
    writer_task: Option<tokio::task::JoinHandle<()>>,
    /// The source pipeline's fleet config, for hubs started with a fixed
    /// config (`HubOptions::fleet`): `set_fleet` updates it.
    fleet_tx: Option<watch::Sender<Arc<FleetConfig>>>,
    leadership: crate::ha::locks::Leadership,
}

/// Starts hubs.
pub struct Hub;

impl Hub {
    /// Start a hub with `config`; it runs until [`HubHandle::shutdown`] (or
    /// the token from [`HubHandle::shutdown_token`] is cancelled).
    pub async fn start(config: HubConfig, options: HubOptions) -> Result<HubHandle> {
        start(config, options).await
    }
}

fn sock(listen: &str) -> Result<SocketAddr> {
    listen.parse().map_err(|e| Error::Config(format!("listen address {listen:?}: {e}")))
}

async fn bind(what: &str, listen: &str) -> Result<TcpListener> {
    TcpListener::bind(sock(listen)?)
        .await
        .map_err(|e| Error::Net { context: format!("cannot listen on {listen} ({what})"), source: e })
}

fn random_token() -> String {
    use base64::Engine;
    let b: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The signing key: the configured file, or `<dataDir>/signing.key`
/// (generated on first start, with `signing.pub` beside it).
fn signing_key(cfg: &HubConfig) -> Result<SigningKey> {
    let path =
        cfg.signing.key_file.clone().unwrap_or_else(|| cfg.data_dir.join(convoy_artifact::PRIVATE_KEY_FILE));
    let key = if path.exists() {
        SigningKey::load(&path).map_err(Error::Signing)?
    } else {
        let k = SigningKey::generate().map_err(Error::Signing)?;
        k.save(&path).map_err(Error::Signing)?;
        k
    };
    Ok(key)
}

async fn start(cfg: HubConfig, options: HubOptions) -> Result<HubHandle> {
    let dir = cfg.data_dir.clone();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let now = now_ms();

    // CA and server certificate.
    let ca = match (&cfg.tls.ca_cert_file, &cfg.tls.ca_key_file) {
        (Some(c), Some(k)) => Ca::from_pem(&files::read_string(c)?, &files::read_string(k)?)?,
        (None, None) => Ca::load_or_create(&dir.join("ca.crt"), &dir.join("ca.key"), now)?,
        _ => return Err(Error::Config("tls.caCertFile and tls.caKeyFile go together".into())),
    };
    let (server_chain, server_key) = match (&cfg.tls.cert_file, &cfg.tls.key_file) {
        (Some(c), Some(k)) => (files::read_string(c)?, files::read_string(k)?),
        (None, None) => {
            let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
            names.extend(cfg.grpc.server_names.iter().cloned());
            let (c, k) = ca.issue_server(&names, cfg.certificates.server_ttl.get(), now)?;
            files::write_public(&dir.join("server.crt"), c.as_bytes())?;
            files::write_private(&dir.join("server.key"), k.as_bytes())?;
            (c, k)
        }
        _ => return Err(Error::Config("tls.certFile and tls.keyFile go together".into())),
    };
    let tls = crate::tls::server_config(
        &[ca.cert_der().clone()],
        certs_from_pem(&server_chain)?,
        key_from_pem(&server_key)?,
    )?;

    // Statement signing key and the trusted public keys agents pin.
    let signer = signing_key(&cfg)?;
    let own_pub = signer.public_key();
    files::write_public(&dir.join(convoy_artifact::PUBLIC_KEY_FILE), own_pub.to_spki_pem().as_bytes())?;
    let mut trusted = own_pub.to_spki_pem();
    for p in &cfg.signing.trusted_public_key_files {
        let k = PublicKey::load(p).map_err(Error::Signing)?;
        trusted.push_str(&k.to_spki_pem());
    }
    files::write_public(&dir.join("trusted-keys.pem"), trusted.as_bytes())?;

    // Admin token and certificate.
    let token_file = cfg.admin.token_file.clone().unwrap_or_else(|| dir.join("admin-token"));
    let admin_token = if token_file.exists() {
        files::read_string(&token_file)?.trim().to_string()
    } else {
        let t = random_token();
        files::write_private(&token_file, t.as_bytes())?;
        t
    };
    if admin_token.is_empty() {
        return Err(Error::Config(format!("{}: the admin token file is empty", token_file.display())));
    }

    // Store and indexes.
    let store: Arc<dyn Store> = {
        let (settings, dir, retain) = (cfg.store.clone(), dir.clone(), cfg.events.retain);
        tokio::task::spawn_blocking(move || crate::store::open_configured(&settings, &dir, retain))
            .await
            .map_err(|e| Error::Store(e.to_string()))??
    };
    let st = store.clone();
    let mut loaded =
        tokio::task::spawn_blocking(move || st.load()).await.map_err(|e| Error::Store(e.to_string()))??;
    // The admin certificate: reissued when the one on disk was revoked.
    let (admin_cert, admin_key, admin_record) =
        admin_cert(&ca, &dir, cfg.certificates.admin_ttl.get(), now, &loaded.admin_certs)?;
    let fixed_fleet = options.fleet.is_some();
    let clock = options.clock.clone().unwrap_or_else(convoy_core::clock::system);
    let fleet = match options.fleet {
        Some(f) => f,
        None => load_fleet(&cfg)?,
    };
    let fleet = Arc::new(fleet);
    let (fleet_tx, fleet_rx) = watch::channel(fleet.clone());
    let shutdown = CancellationToken::new();
    let mut sources_task = None;
    let pipeline: Arc<dyn SourcePipeline> = match options.pipeline {
        Some(p) => p,
        None => {
            let (p, task) = crate::sources_pipeline::GitPipeline::start(
                dir.clone(),
                cfg.artifacts.retention.get(),
                fleet_rx,
                shutdown.clone(),
                &cfg.helm,
            )?;
            sources_task = Some(task);
            p
        }
    };
    // Per-cluster variant artifacts are stored by the hub and served with the pipeline's.
    // Helm variants render per cluster with the same engine settings as the builds.
    let variant_store = crate::variants::VariantStore::with_helm(
        dir.join("variants"),
        Arc::new(crate::variants::SettingsRender::from_config(&cfg.helm)),
    );
    let pipeline: Arc<dyn SourcePipeline> =
        crate::variants::ServingVariants::new(pipeline, variant_store.clone());
    // Several replicas: only the holder of a source's lock polls it (crate::ha).
    let (pipeline, leadership, ha_tasks) =
        crate::ha::gate(store.as_ref(), pipeline, fleet_tx.subscribe(), shutdown.clone());
    for source in &loaded.suspended_sources {
        if let Err(e) = pipeline.set_suspended(source, true) {
            warn!(source = %source, error = %e, "cannot re-apply the suspension of a source");
        }
    }

    let mut metrics = Metrics::new();
    if let Some(stats) = pipeline.render_stats() {
        metrics.register_render_stats(stats);
    }
    metrics.registry.register_collector(Box::new(crate::variants::VariantCollector(variant_store.clone())));
    let metrics = Arc::new(metrics);
    let (events_tx, _) = broadcast::channel(4096);
    // Subscribed before anything commits, so alerts see every event.
    let alert_events = events_tx.subscribe();
    let (view_tx, view_rx) = watch::channel(Arc::new(FleetView::default()));
    // The committed statuses: owned by the writer, read through cluster entries.
    let statuses = Arc::new(crate::index::StatusIndex::from_loaded(std::mem::take(&mut loaded.statuses)));
    let liveness_view = view_rx;
    let (writer, writer_task) = crate::writer::spawn(
        store.clone(),
        statuses.clone(),
        Box::new(move || crate::state::dirty_liveness(&liveness_view.borrow())),
        events_tx.clone(),
        metrics.clone(),
        shutdown.clone(),
    );
    let admins = Arc::new(crate::admins::AdminRegistry::new(
        std::mem::take(&mut loaded.admin_certs),
        writer.clone(),
        clock.clone(),
    ));
    // Recorded (durably) before the gRPC port serves: only recorded admin
    // certificates are honoured.
    admins.record(admin_record).await?;
    let ca = Arc::new(ca);
    let initial_fleet = fleet.clone();
    let commands = Arc::new(crate::commands::Commands::new(std::mem::take(&mut loaded.commands)));
    // Artifacts another replica built are fetched from it (crate::ha).
    let peer_artifacts = store.is_shared().then(|| {
        Arc::new(crate::ha::artifacts::PeerArtifacts::new(
            store.clone(),
            dir.join("peer-artifacts"),
            ca.cert_pem().to_string(),
            (admin_cert.clone(), admin_key.clone()),
        ))
    });
    let (state, state_task) = crate::state::spawn(
        loaded,
        fleet,
        pipeline.builds(),
        StateDeps {
            ca: ca.clone(),
            signer: Arc::new(signer),
            writer: writer.clone(),
            metrics: metrics.clone(),
            cluster_cert_ttl: cfg.certificates.cluster_ttl.get(),
            statuses,
            pipeline: pipeline.clone(),
            clock: clock.clone(),
            variant_store: variant_store.clone(),
            rollout_tick: crate::rollout::TICK,
            ha: crate::ha::Coordination {
                leadership: leadership.clone(),
                peers: peer_artifacts.clone(),
                ..Default::default()
            },
        },
        view_tx,
        shutdown.clone(),
    );
    let core = Arc::new(Core {
        state: state.clone(),
        writer: writer.clone(),
        store: store.clone(),
        pipeline: pipeline.clone(),
        metrics: metrics.clone(),
        events: events_tx,
        admin_token_hashes: arc_swap::ArcSwap::from_pointee(vec![crate::domain::tokens::hash_secret(
            &admin_token,
        )]),
        ca_pem: ca.cert_pem().to_string(),
        drain: shutdown.clone(),
        sessions: SessionSettings {
            idle_timeout: cfg.grpc.idle_timeout.get(),
            send_queue: cfg.grpc.send_queue,
            ..Default::default()
        },
        artifacts: ArtifactCache::new(cfg.artifacts.cache_mib << 20),
        trusted_keys_pem: trusted.clone(),
        peer_artifacts,
        admins: admins.clone(),
        commands: commands.clone(),
        clock: clock.clone(),
    });

    let alerts_task = crate::alerts::spawn(
        crate::alerts::AlertDeps {
            state: state.clone(),
            fleet: initial_fleet,
            store: store.clone(),
            metrics: metrics.clone(),
            settings: cfg.alerts.clone(),
            events: alert_events,
            clock: clock.clone(),
        },
        shutdown.clone(),
    );

    let mut tasks = vec![("fleet_state", state_task), ("alerts", alerts_task)];
    tasks.extend(ha_tasks);
    tasks.push((
        "command_expiry",
        crate::commands::spawn_expiry(
            commands.clone(),
            writer.clone(),
            leadership.clone(),
            clock.clone(),
            shutdown.clone(),
        ),
    ));
    // Several replicas on one store: the others' commits reach this one's state.
    if let Some(feed) = store.follow() {
        tasks.push((
            "replica_follower",
            crate::ha::follow::spawn(
                feed,
                state.clone(),
                admins.clone(),
                commands.clone(),
                clock.clone(),
                shutdown.clone(),
            ),
        ));
    }
    if let Some(t) = sources_task {
        tasks.push(("sources", t));
    }

    // gRPC.
    let listener = bind("gRPC", &cfg.grpc.listen).await?;
    let grpc_addr =
        listener.local_addr().map_err(|e| Error::Net { context: "gRPC address".into(), source: e })?;
    tasks.push(("grpc", serve_grpc(core.clone(), &cfg, listener, tls, shutdown.clone()).await?));
    tasks.push((
        "admin_token_reload",
        crate::grpc::spawn_admin_token_reload(core.clone(), token_file.clone(), shutdown.clone()),
    ));

    // HTTP and metrics.
    let mut http_addr = None;
    if !cfg.http.listen.is_empty() {
        let l = bind("HTTP", &cfg.http.listen).await?;
        http_addr = l.local_addr().ok();
        let router = crate::http::health_router(shutdown.clone(), pipeline.webhook_router());
        tasks.push(("http", crate::http::serve("http", l, router, shutdown.clone())));
    }
    let mut metrics_addr = None;
    if !cfg.metrics.listen.is_empty() {
        let l = bind("metrics", &cfg.metrics.listen).await?;
        metrics_addr = l.local_addr().ok();
        tasks.push((
            "metrics",
            crate::http::serve("metrics", l, crate::http::metrics_router(metrics.clone()), shutdown.clone()),
        ));
    }

    // Fleet config reload (files), or changes through `HubHandle::set_fleet`,
    // which must reach the source pipeline too.
    let mut fixed_fleet_tx = None;
    if fixed_fleet {
        fixed_fleet_tx = Some(fleet_tx);
    } else {
        tasks.push((
            "reload",
            spawn_reload(
                cfg.clone(),
                state.clone(),
                writer.clone(),
                metrics.clone(),
                fleet_tx,
                shutdown.clone(),
                clock.clone(),
            ),
        ));
    }

    // The credentials file, now that the address is known.
    let host =
        if grpc_addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { grpc_addr.ip().to_string() };
    let endpoint = if host.contains(':') {
        format!("https://[{host}]:{}", grpc_addr.port())
    } else {
        format!("https://{host}:{}", grpc_addr.port())
    };
    let creds = CredentialsFile {
        api_version: convoy_core::API_VERSION.into(),
        kind: "Credentials".into(),
        hub: endpoint,
        server_name: "localhost".into(),
        ca: ca.cert_pem().to_string(),
        cert: admin_cert.clone(),
        key: admin_key.clone(),
        token: admin_token.clone(),
    };
    let cred_path = dir.join("admin-credentials.yaml");
    files::write_private(&cred_path, creds.to_yaml().as_bytes())?;
    if store.is_shared() {
        // Where the other replicas fetch artifact bytes from (crate::ha::artifacts).
        let adv = match &cfg.store.advertise {
            Some(a) => crate::ha::artifacts::expand(a, |n| std::env::var(n).ok())?,
            None => creds.hub.clone(),
        };
        let st = store.clone();
        tokio::task::spawn_blocking(move || st.advertise(&adv))
            .await
            .map_err(|e| Error::Store(e.to_string()))??;
    }

    info!(grpc = %grpc_addr, http = ?http_addr, metrics = ?metrics_addr, data_dir = %dir.display(), "hub started");
    Ok(HubHandle {
        grpc_addr,
        http_addr,
        metrics_addr,
        data_dir: dir,
        ca_pem: ca.cert_pem().to_string(),
        trusted_keys_pem: trusted,
        admin: AdminCredentials {
            ca_pem: ca.cert_pem().to_string(),
            cert_pem: admin_cert,
            key_pem: admin_key,
            token: admin_token,
            file: cred_path,
        },
        state,
        core: Some(core),
        pipeline,
        shutdown,
        tasks,
        writer_task: Some(writer_task),
        fleet_tx: fixed_fleet_tx,
        leadership,
    })
}

/// The admin certificate in the data dir: reused while more than a third of
/// its life is left and its serial is not revoked, else reissued. Returns the
/// certificate, its key and the record to store.
fn admin_cert(
    ca: &Ca,
    dir: &Path,
    ttl: Duration,
    now: i64,
    recorded: &[crate::domain::admins::AdminCertRecord],
) -> Result<(String, String, crate::domain::admins::AdminCertRecord)> {
    let record = |p: &crate::pki::PeerCert| crate::domain::admins::AdminCertRecord {
        serial: p.serial.clone(),
        name: "admin".into(),
        issued_unix_ms: now,
        not_after_unix_ms: p.not_after_unix_ms,
        revoked: false,
    };
    let (cf, kf) = (dir.join("admin.crt"), dir.join("admin.key"));
    if cf.exists() && kf.exists() {
        let cert = files::read_string(&cf)?;
        let key = files::read_string(&kf)?;
        let peer = certs_from_pem(&cert).ok().and_then(|c| crate::pki::peer_cert(&c[0]));
        let fresh = peer.as_ref().is_some_and(|p| {
            p.not_after_unix_ms - now > (ttl.as_millis() as i64) / 3
                && !recorded.iter().any(|r| r.serial == p.serial && r.revoked)
        });
        // Only reuse a certificate signed by the current CA.
        let ours = crate::pki::certs_from_pem(&cert)
            .ok()
            .and_then(|c| {
                x509_parser::parse_x509_certificate(&c[0]).ok().map(|(_, x)| x.issuer().to_string())
            })
            .zip(
                x509_parser::parse_x509_certificate(ca.cert_der()).ok().map(|(_, x)| x.subject().to_string()),
            )
            .is_some_and(|(a, b)| a == b);
        if let (true, true, Some(p)) = (fresh, ours, &peer) {
            return Ok((cert, key, record(p)));
        }
    }
    let (cert, key) = ca.issue_with_key(&Identity::Admin("admin".into()), ttl, now)?;
    files::write_private(&kf, key.as_bytes())?;
    files::write_public(&cf, cert.pem.as_bytes())?;
    let rec = crate::domain::admins::AdminCertRecord {
        serial: cert.serial.clone(),
        name: "admin".into(),
        issued_unix_ms: now,
        not_after_unix_ms: cert.not_after_unix_ms,
        revoked: false,
    };
    Ok((cert.pem, key, rec))
}

async fn serve_grpc(
    core: Arc<Core>,
    cfg: &HubConfig,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>> {
    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<pb::registration_server::RegistrationServer<RegistrationService>>().await;
    health.set_serving::<pb::agent_server::AgentServer<AgentService>>().await;
    health.set_serving::<pb::fleet_server::FleetServer<FleetService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Config(format!("reflection: {e}")))?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| Error::Config(format!("reflection: {e}")))?;
    let incoming = crate::tls::incoming(listener, tls, shutdown.clone());
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(cfg.grpc.keepalive.get()))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .max_concurrent_streams(Some(cfg.grpc.max_concurrent_streams))
        // Hardening (docs/operations.md): requests in flight per connection,
        // and a bound on request headers.
        .concurrency_limit_per_connection(256)
        .http2_max_header_list_size(Some(16 * 1024))
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(
            pb::registration_server::RegistrationServer::new(RegistrationService::new(core.clone()))
                .max_decoding_message_size(crate::limits::MAX_REGISTRATION_MESSAGE_BYTES),
        )
        .add_service(
            pb::agent_server::AgentServer::new(AgentService::new(core.clone()))
                .max_decoding_message_size(crate::limits::MAX_AGENT_MESSAGE_BYTES),
        )
        .add_service(
            pb::fleet_server::FleetServer::new(FleetService::new(core))
                .max_decoding_message_size(crate::limits::MAX_FLEET_MESSAGE_BYTES),
        );
    let drain = shutdown.clone();
    Ok(tokio::spawn(
        async move {
            let signal = async move {
                drain.cancelled().await;
                health.set_not_serving::<pb::agent_server::AgentServer<AgentService>>().await;
            };
            if let Err(e) = router.serve_with_incoming_shutdown(incoming, signal).await {
                warn!(error = %e, "gRPC server failed");
            }
        }
        .instrument(info_span!("grpc")),
    ))
}

/// A hub event stamped `now_ms` (from `HubOptions.clock`).
fn hub_event(now_ms: i64, severity: Severity, reason: &str, message: String) -> Write {
    Write::AppendEvents(vec![(
        HUB_EVENT_SOURCE.to_string(),
        EventRecord::new(severity, reason, "", message, now_ms),
    )])
}

/// Watch the fleet files; on a change, load and validate them and put the new
/// config in force. A bad config keeps the old one and records an error event
/// naming the file (and line, when the YAML is at fault).
fn spawn_reload(
    cfg: HubConfig,
    state: StateHandle,
    writer: WriterHandle,
    metrics: Arc<Metrics>,
    fleet_tx: watch::Sender<Arc<FleetConfig>>,
    shutdown: CancellationToken,
    clock: convoy_core::clock::SharedClock,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(
        async move {
            let c = cfg.clone();
            let mut last = tokio::task::spawn_blocking(move || fingerprint(&c)).await.unwrap_or_default();
            let mut tick =
                tokio::time::interval(cfg.fleet.reload_interval.get().max(Duration::from_millis(100)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let c = cfg.clone();
                let Ok((fp, loaded)) = tokio::task::spawn_blocking(move || {
                    let fp = fingerprint(&c);
                    (fp, None::<Result<FleetConfig>>)
                })
                .await
                else {
                    continue;
                };
                let _ = loaded;
                if fp == last {
                    continue;
                }
                last = fp;
                let c = cfg.clone();
                let result = tokio::task::spawn_blocking(move || load_fleet(&c)).await;
                match result {
                    Ok(Ok(fleet)) => {
                        let fleet = Arc::new(fleet);
                        if state.set_fleet(fleet.clone()).await.is_err() {
                            break;
                        }
                        fleet_tx.send_replace(fleet.clone());
                        metrics.config_reloads.get_or_create(&ResultLabels { result: "ok" }).inc();
                        info!(bundles = fleet.bundles.len(), "fleet config reloaded");
                        drop(
                            writer
                                .submit(vec![hub_event(
                                    clock.now_ms(),
                                    Severity::Info,
                                    "FleetConfigReloaded",
                                    format!(
                                        "fleet config reloaded: {} sources, {} bundles",
                                        fleet.sources.len(),
                                        fleet.bundles.len()
                                    ),
                                )])
                                .await,
                        );
                    }
                    Ok(Err(e)) => {
                        metrics.config_reloads.get_or_create(&ResultLabels { result: "error" }).inc();
                        warn!(error = %e, "fleet config is invalid; keeping the previous one");
                        drop(
                            writer
                                .submit(vec![hub_event(
                                    clock.now_ms(),
                                    Severity::Error,
                                    "FleetConfigInvalid",
                                    format!("fleet config not applied (the previous one stays): {e}"),
                                )])
                                .await,
                        );
                    }
                    Err(_) => break,
                }
            }
        }
        .instrument(info_span!("fleet_reload")),
    )
}

impl HubHandle {
    /// Whether this replica runs the hub's singleton work (the `leader`
    /// lock of [`crate::ha::locks`]; always true on redb), with a watch.
    pub fn leadership(&self) -> &crate::ha::locks::Leadership {
        &self.leadership
    }

    /// The gRPC endpoint, `https://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        let ip = if self.grpc_addr.ip().is_unspecified() {
            "127.0.0.1".into()
        } else {
            self.grpc_addr.ip().to_string()
        };
        format!("https://{ip}:{}", self.grpc_addr.port())
    }

    /// The TLS server name to verify against the hub certificate.
    pub fn server_name(&self) -> &'static str {
        "localhost"
    }

    /// Create a bootstrap token (as `convoy token create` does).
    pub async fn create_token(
        &self,
        cluster: Option<&str>,
        labels: Labels,
        ttl: Duration,
        single_use: bool,
    ) -> Result<TokenOutput> {
        self.state
            .create_token(TokenInput {
                cluster: cluster.map(Into::into),
                labels,
                ttl,
                single_use,
                ..Default::default()
            })
            .await
    }

    /// Create a bootstrap token with every option (name prefix, label keys
    /// the agent may propose).
    pub async fn create_token_with(&self, input: TokenInput) -> Result<TokenOutput> {
        self.state.create_token(input).await
    }

    /// Replace the fleet config (for hubs started with [`HubOptions::fleet`]).
    pub async fn set_fleet(&self, fleet: FleetConfig) -> Result<()> {
        let fleet = Arc::new(fleet);
        self.state.set_fleet(fleet.clone()).await?;
        // The source pipeline follows (new or changed sources and bundle paths).
        if let Some(tx) = &self.fleet_tx {
            tx.send_replace(fleet);
        }
        Ok(())
    }

    /// The state actor handle (fleet view, commands).
    pub fn state(&self) -> &StateHandle {
        &self.state
    }

    /// The source pipeline in use.
    pub fn pipeline(&self) -> Arc<dyn SourcePipeline> {
        self.pipeline.clone()
    }

    /// The metrics in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.core.as_ref().map(|c| c.metrics.encode()).unwrap_or_default()
    }

    /// The token that drains the hub when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Wait until the hub is told to stop (its shutdown token), then drain.
    pub async fn wait(self) -> Result<()> {
        self.shutdown.cancelled().await;
        self.shutdown().await
    }

    /// Drain: stop accepting, close every stream (agents reconnect later),
    /// commit what is queued, and wait for the tasks, at most a grace period.
    pub async fn shutdown(mut self) -> Result<()> {
        info!("hub draining");
        self.shutdown.cancel();
        self.core = None;
        let deadline = tokio::time::Instant::now() + GRACE;
        for (name, task) in self.tasks.drain(..) {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                warn!(task = name, "task did not stop within the grace period; aborting it");
                abort.abort();
            }
        }
        // Sessions hold the writer through Core; they end with the drain.
        if let Some(w) = self.writer_task.take() {
            let abort = w.abort_handle();
            drop(self.state);
            if tokio::time::timeout_at(deadline, w).await.is_err() {
                warn!("store writer did not finish within the grace period");
                abort.abort();
            }
        }
        info!("hub stopped");
        Ok(())
    }
}
