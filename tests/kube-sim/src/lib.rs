//! kube-sim: a Kubernetes API server simulator that the real `kubectl` and
//! kube-rs accept. Start any number of instances in one process, each on its
//! own loopback port:
//!
//! ```no_run
//! # async fn demo() -> Result<(), kube_sim::Error> {
//! let sim = kube_sim::KubeSim::start(kube_sim::SimConfig::default()).await?;
//! std::fs::write("/tmp/kubeconfig", sim.kubeconfig_yaml()).unwrap();
//! println!("{}", sim.url());
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! What is and is not simulated is documented in `docs/kube-sim.md`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

mod api;
mod controllers;
mod crd;
mod crdschema;
mod defaults;
pub mod faults;
pub mod fieldpath;
mod gnostic;
pub mod immutable;
pub mod managed;
mod openapi;
pub mod patch;
mod proto;
pub mod registry;
pub mod schema;
mod selector;
pub mod status;
mod store;
mod table;
mod tls;
mod watch;

pub use faults::{FaultConfig, Faults};

/// Errors of the library API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("invalid snapshot {path}: {reason}")]
    Snapshot { path: PathBuf, reason: String },
    #[error("invalid service CIDR {0:?}: expected an IPv4 network like 10.96.0.0/12 (prefix at most /30)")]
    ServiceCidr(String),
}

/// Configuration of one simulated cluster.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Serve HTTPS with a self-signed CA (the kubeconfig carries the CA).
    pub tls: bool,
    /// How long simulated workloads take to become ready (Deployments,
    /// StatefulSets, DaemonSets, ReplicaSets, Jobs, PVCs, LoadBalancers, Pods).
    pub readiness_delay: Duration,
    /// Faults active from the start.
    pub faults: FaultConfig,
    /// Load state from this file at start (if it exists) and save it at shutdown.
    pub snapshot_file: Option<PathBuf>,
    /// Name of the cluster, context and user in the kubeconfig.
    pub name: String,
    /// Watch history kept per resource type (older resourceVersions get 410 Gone).
    pub watch_history: usize,
    /// Service cluster IP range (the API server's `--service-cluster-ip-range`), IPv4.
    pub service_cidr: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: false,
            readiness_delay: Duration::ZERO,
            faults: FaultConfig::default(),
            snapshot_file: None,
            name: "kube-sim".into(),
            watch_history: 10_000,
            service_cidr: "10.96.0.0/12".into(),
        }
    }
}

/// Request counters.
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<StatsSnapshot>,
}

/// A copy of the counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsSnapshot {
    /// Requests by verb (get, list, watch, create, update, patch, apply, delete, deletecollection).
    pub requests: BTreeMap<String, u64>,
    /// Mutating requests that were not dry-run.
    pub writes: u64,
    /// Writes that changed stored state (a new resourceVersion).
    pub changed: u64,
    /// Requests failed by fault injection.
    pub injected_errors: u64,
}

impl StatsSnapshot {
    /// Requests of one verb.
    pub fn verb(&self, verb: &str) -> u64 {
        self.requests.get(verb).copied().unwrap_or(0)
    }
}

impl Stats {
    pub(crate) fn count(&self, verb: &str, write: bool) {
        let mut s = self.inner.lock();
        *s.requests.entry(verb.to_string()).or_default() += 1;
        if write {
            s.writes += 1;
        }
    }
    pub(crate) fn changed(&self) {
        self.inner.lock().changed += 1;
    }
    pub(crate) fn injected(&self) {
        self.inner.lock().injected_errors += 1;
    }
    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        self.inner.lock().clone()
    }
    /// Zero every counter.
    pub fn reset(&self) {
        *self.inner.lock() = StatsSnapshot::default();
    }
}

/// One committed change to one object (see [`KubeSim::changes`]).
#[derive(Debug, Clone)]
pub struct Change {
    /// The resourceVersion the change got.
    pub resource_version: u64,
    /// `ADDED`, `MODIFIED` or `DELETED`, as in a watch event.
    pub kind: &'static str,
    /// The API group ("" for core).
    pub group: String,
    /// The resource (plural).
    pub resource: String,
    /// The namespace ("" for cluster-scoped objects).
    pub namespace: String,
    /// The object's name.
    pub name: String,
    /// The object after the change (its last state for `DELETED`).
    pub object: Value,
}

/// A running simulated cluster.
pub struct KubeSim {
    inner: Arc<api::Inner>,
    addr: SocketAddr,
    url: String,
    ca_pem: Option<String>,
    name: String,
    snapshot_file: Option<PathBuf>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for KubeSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSim").field("url", &self.url).finish()
    }
}

impl KubeSim {
    /// Start a simulator (binds now; serves on a background task).
    pub async fn start(cfg: SimConfig) -> Result<KubeSim, Error> {
        let cidr =
            api::parse_cidr(&cfg.service_cidr).ok_or_else(|| Error::ServiceCidr(cfg.service_cidr.clone()))?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| Error::Bind { addr: cfg.listen.to_string(), source })?;
        let addr =
            listener.local_addr().map_err(|source| Error::Bind { addr: cfg.listen.to_string(), source })?;
        let (acceptor, ca_pem) = if cfg.tls {
            let (a, ca) = tls::acceptor()?;
            (Some(a), Some(ca))
        } else {
            (None, None)
        };
        let url = format!("{}://{addr}", if cfg.tls { "https" } else { "http" });
        let shutdown = CancellationToken::new();
        let inner = Arc::new(api::Inner {
            store: store::Store::new(cfg.watch_history.max(1)),
            registry: parking_lot::RwLock::new(registry::Registry::with_builtins()),
            faults: Arc::new(Faults::new(cfg.faults.clone())),
            stats: Arc::new(Stats::default()),
            readiness_delay: cfg.readiness_delay,
            ips: Mutex::new(api::IpAlloc::new(cidr)),
            server_addr: parking_lot::RwLock::new(addr.to_string()),
            shutdown: shutdown.clone(),
            kick: tokio::sync::Notify::new(),
        });
        let restored = match &cfg.snapshot_file {
            Some(p) if p.exists() => {
                load_snapshot(&inner, p)?;
                true
            }
            _ => false,
        };
        let ctl = controllers::start(inner.clone());
        if !restored {
            controllers::seed(&inner);
        }
        let server = tokio::spawn(
            serve(listener, acceptor, inner.clone()).instrument(tracing::info_span!("kube-sim", %addr)),
        );
        Ok(KubeSim {
            inner,
            addr,
            url,
            ca_pem,
            name: cfg.name.clone(),
            snapshot_file: cfg.snapshot_file.clone(),
            tasks: Mutex::new(vec![server, ctl]),
        })
    }

    /// `http://127.0.0.1:PORT` (or https).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA certificate (PEM) when serving TLS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// A kubeconfig that kubectl and kube-rs use as is.
    pub fn kubeconfig_yaml(&self) -> String {
        kubeconfig(&self.name, &self.url, self.ca_pem.as_deref())
    }

    /// Write the kubeconfig to a file.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), Error> {
        std::fs::write(path, self.kubeconfig_yaml())
            .map_err(|source| Error::Io { path: path.to_path_buf(), source })
    }

    /// The fault-injection handle.
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// Request counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// Zero the request counters.
    pub fn reset_stats(&self) {
        self.inner.stats.reset()
    }

    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.inner.store.current_rv()
    }

    /// Forget watch history: watches from any older resourceVersion get 410 Gone.
    pub fn compact(&self) {
        self.inner.store.compact()
    }

    /// Every stored object of a resource (`group`, plural), e.g. `("apps", "deployments")`.
    pub fn objects(&self, group: &str, resource: &str) -> Vec<Value> {
        self.inner.store.list(&api::gr(group, resource), None).0.iter().map(|o| (**o).clone()).collect()
    }

    /// One stored object.
    pub fn object(&self, group: &str, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.inner.store.get(&api::gr(group, resource), namespace, name).map(|o| (*o).clone())
    }

    /// Number of stored objects.
    pub fn object_count(&self) -> usize {
        self.inner.store.object_count()
    }

    /// The changes to objects of these resource types (`(group, plural)`)
    /// still in the watch history (`SimConfig::watch_history` per type), in
    /// resourceVersion order across the types: the order the API server
    /// committed them, as watches from the oldest retained version see it.
    /// Deleted objects stay visible here (tests assert the order in which
    /// hook Jobs were created and deleted).
    pub fn changes(&self, resources: &[(&str, &str)]) -> Vec<Change> {
        let mut out: Vec<Change> = resources
            .iter()
            .flat_map(|(g, r)| self.inner.store.history(&api::gr(g, r)))
            .map(|e| Change {
                resource_version: e.rv,
                kind: e.typ.as_str(),
                group: e.gr.group.clone(),
                resource: e.gr.resource.clone(),
                namespace: e
                    .object
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .into(),
                name: e.object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").into(),
                object: (*e.object).clone(),
            })
            .collect();
        out.sort_by_key(|c| c.resource_version);
        out
    }

    /// Save all objects to a JSON file.
    pub fn save_snapshot(&self, path: &Path) -> Result<(), Error> {
        save_snapshot(&self.inner, path)
    }

    /// Stop serving (and save the snapshot when configured).
    pub async fn shutdown(self) {
        self.inner.shutdown.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        if let Some(p) = &self.snapshot_file
            && let Err(error) = save_snapshot(&self.inner, p)
        {
            tracing::warn!(%error, "snapshot not saved");
        }
    }
}

impl Drop for KubeSim {
    fn drop(&mut self) {
        self.inner.shutdown.cancel();
        for t in self.tasks.lock().iter() {
            t.abort();
        }
    }
}

/// A kubeconfig for one cluster.
pub fn kubeconfig(name: &str, url: &str, ca_pem: Option<&str>) -> String {
    use base64::Engine;
    let cluster = match ca_pem {
        Some(ca) => {
            json!({"server": url, "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(ca)})
        }
        None => json!({"server": url}),
    };
    let user = if ca_pem.is_some() { json!({"token": "kube-sim"}) } else { json!({}) };
    let v = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": "default"}}],
        "current-context": name,
        "preferences": {},
        "users": [{"name": name, "user": user}],
    });
    // JSON is YAML; kubectl and kube-rs read it as is.
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}

async fn serve(listener: TcpListener, acceptor: Option<tokio_rustls::TlsAcceptor>, inner: Arc<api::Inner>) {
    let app = axum::Router::new().fallback(handler).with_state(inner.clone());
    let shutdown = inner.shutdown.clone();
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let sd = shutdown.clone();
        conns.spawn(
            async move {
                let svc = hyper_util::service::TowerToHyperService::new(app);
                let builder =
                    hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                let fut = async {
                    match acceptor {
                        Some(a) => match a.accept(stream).await {
                            Ok(tls) => {
                                let _ =
                                    builder.serve_connection(hyper_util::rt::TokioIo::new(tls), svc).await;
                            }
                            Err(error) => tracing::debug!(%error, "TLS handshake failed"),
                        },
                        None => {
                            let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await;
                        }
                    }
                };
                tokio::select! {
                    _ = sd.cancelled() => {}
                    _ = fut => {}
                }
            }
            .instrument(tracing::debug_span!("conn")),
        );
    }
    conns.abort_all();
}

fn verb_of(method: &http::Method, path: &str, query: &str) -> &'static str {
    let watch = query.contains("watch=true") || query.contains("watch=1") || path.contains("/watch/");
    match *method {
        http::Method::GET if watch => "watch",
        http::Method::GET => "get",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "other",
    }
}

async fn handler(
    axum::extract::State(inner): axum::extract::State<Arc<api::Inner>>,
    req: Request<Body>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().map(str::to_string);
    if let Some(ctl) = path.strip_prefix("/_sim/") {
        let body = axum::body::to_bytes(body, api::MAX_BODY).await.unwrap_or_default();
        return control(&inner, &parts.method, ctl, &body);
    }
    let verb = verb_of(&parts.method, &path, query.as_deref().unwrap_or(""));
    if path.starts_with("/api")
        && let Err(code) = inner.faults.before(&path, verb).await
    {
        inner.stats.injected();
        let e = if code == 429 {
            status::ApiError::too_many_requests()
        } else {
            status::ApiError::internal("injected fault: internal error")
        };
        return api::error_response(&e);
    }
    let body = match axum::body::to_bytes(body, api::MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return api::error_response(&status::ApiError::too_large()),
    };
    let (mut resp, warnings) = api::WARNINGS
        .scope(std::cell::RefCell::new(Vec::new()), async {
            let r = inner.handle(parts.method, &path, query.as_deref(), &parts.headers, body).await;
            (r, api::WARNINGS.with(|w| w.borrow().clone()))
        })
        .await;
    for w in warnings {
        let text = format!("299 - {}", serde_json::Value::String(w));
        if let Ok(v) = http::HeaderValue::from_str(&text) {
            resp.headers_mut().append("warning", v);
        }
    }
    resp
}

fn control(inner: &Arc<api::Inner>, method: &http::Method, path: &str, body: &[u8]) -> Response<Body> {
    match (method.as_str(), path) {
        ("GET", "faults") => {
            api::json_response(200, &serde_json::to_value(inner.faults.get()).unwrap_or_default())
        }
        ("PUT" | "POST", "faults") => match serde_json::from_slice::<FaultConfig>(body) {
            Ok(cfg) => {
                inner.faults.set(cfg);
                api::json_response(200, &serde_json::to_value(inner.faults.get()).unwrap_or_default())
            }
            Err(e) => {
                api::error_response(&status::ApiError::bad_request(format!("invalid fault config: {e}")))
            }
        },
        ("POST", "drop-watches") => {
            inner.faults.drop_watches();
            api::json_response(200, &json!({"dropped": true}))
        }
        ("GET", "stats") => {
            api::json_response(200, &serde_json::to_value(inner.stats.snapshot()).unwrap_or_default())
        }
        ("POST", "compact") => {
            inner.store.compact();
            api::json_response(200, &json!({"resourceVersion": inner.store.current_rv().to_string()}))
        }
        _ => api::error_response(&status::ApiError::no_resource()),
    }
}

fn save_snapshot(inner: &api::Inner, path: &Path) -> Result<(), Error> {
    let mut out = serde_json::Map::new();
    for (gr, objs) in inner.store.dump() {
        let key =
            if gr.group.is_empty() { gr.resource.clone() } else { format!("{}.{}", gr.resource, gr.group) };
        out.insert(key, Value::Array(objs.iter().map(|o| (**o).clone()).collect()));
    }
    let doc = json!({"resourceVersion": inner.store.current_rv(), "resources": out});
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&doc).unwrap_or_default())
        .map_err(|source| Error::Io { path: tmp.clone(), source })?;
    std::fs::rename(&tmp, path).map_err(|source| Error::Io { path: path.to_path_buf(), source })
}

fn load_snapshot(inner: &api::Inner, path: &Path) -> Result<(), Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let doc: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Snapshot { path: path.to_path_buf(), reason: e.to_string() })?;
    let res = doc
        .get("resources")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::Snapshot { path: path.to_path_buf(), reason: "no resources".into() })?;
    // CRDs first, so that their types are registered
    let mut keys: Vec<&String> = res.keys().collect();
    keys.sort_by_key(|k| !k.starts_with("customresourcedefinitions."));
    for k in keys {
        let (resource, group) = k
            .split_once('.')
            .map(|(r, g)| (r.to_string(), g.to_string()))
            .unwrap_or((k.clone(), String::new()));
        let objs: Vec<Value> = res[k].as_array().cloned().unwrap_or_default();
        if group == "apiextensions.k8s.io" && resource == "customresourcedefinitions" {
            for o in &objs {
                crd::sync(inner, &Arc::new(o.clone()));
            }
        }
        inner.store.load(&registry::GroupResource { group, resource }, objs);
    }
    Ok(())
}
