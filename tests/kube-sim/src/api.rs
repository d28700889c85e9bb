//! The API server: request routing (`/api`, `/apis`, discovery, OpenAPI),
//! the verbs (get, list, watch, create, update, patch incl. server-side apply,
//! delete, deletecollection), subresources (status, scale), dry-run, and the
//! write path shared with the simulated controllers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Method, Response};
use parking_lot::RwLock;
use serde_json::{Map, Value, json};

use crate::faults::Faults;
use crate::managed::{self, ApplyRequest, Scope};
use crate::patch::{self, PatchType};
use crate::registry::{GroupResource, Registry, ResourceType};
use crate::status::{self, ApiError, Cause};
use crate::store::{CommitError, Store, rv_of};
use crate::{Stats, crd, defaults, immutable, table, watch};

tokio::task_local! {
    /// Warnings of the request being served (answered as `Warning` headers).
    pub static WARNINGS: std::cell::RefCell<Vec<String>>;
}

/// Add warnings to the current request's response (no-op outside a request).
pub fn add_warnings(w: impl Iterator<Item = String>) {
    let w: Vec<String> = w.collect();
    let _ = WARNINGS.try_with(|cell| cell.borrow_mut().extend(w));
}

/// Query key set only by the in-process controllers (never parsed from HTTP).
pub const TRUSTED: &str = "\u{0}kube-sim-controller";

/// Largest accepted request body (the API server's limit).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Shared state of one simulated cluster.
pub struct Inner {
    pub store: Store,
    pub registry: RwLock<Registry>,
    pub faults: Arc<Faults>,
    pub stats: Arc<Stats>,
    pub readiness_delay: Duration,
    pub ips: parking_lot::Mutex<IpAlloc>,
    pub server_addr: RwLock<String>,
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Wakes the controllers (namespace/GC/workload queues).
    pub kick: tokio::sync::Notify,
}

/// Cluster IP, node port and load-balancer IP allocation.
pub struct IpAlloc {
    /// The service CIDR (network address, prefix length).
    pub range: (u32, u8),
    /// Cluster IPs handed out (released when their Service is deleted).
    pub used: std::collections::BTreeSet<u32>,
    pub next_cluster_ip: u32,
    pub next_node_port: u32,
    pub next_lb_ip: u32,
}

impl Default for IpAlloc {
    fn default() -> Self {
        IpAlloc::new((u32::from(std::net::Ipv4Addr::new(10, 96, 0, 0)), 12))
    }
}

/// Why a requested cluster IP cannot be allocated (the API server's wording).
#[derive(Debug, Clone, PartialEq)]
pub enum IpError {
    Taken,
    OutOfRange(String),
    Invalid,
    Full(String),
}

impl IpAlloc {
    pub fn new(range: (u32, u8)) -> IpAlloc {
        IpAlloc { range, used: Default::default(), next_cluster_ip: 0, next_node_port: 0, next_lb_ip: 0 }
    }

    /// `10.96.0.0/12`.
    pub fn cidr(&self) -> String {
        format!("{}/{}", std::net::Ipv4Addr::from(self.range.0), self.range.1)
    }

    /// The first usable address (the `kubernetes` Service's).
    pub fn first(&self) -> String {
        std::net::Ipv4Addr::from(self.range.0 + 1).to_string()
    }

    fn size(&self) -> u32 {
        if self.range.1 >= 31 { 0 } else { (1u32 << (32 - self.range.1)) - 2 }
    }

    /// A free cluster IP: the lowest not handed out and not held by `in_store`.
    pub fn cluster_ip(&mut self, in_store: &std::collections::HashSet<u32>) -> Result<String, IpError> {
        let size = self.size();
        for i in 0..size {
            let off = (self.next_cluster_ip + i) % size + 1;
            let ip = self.range.0 + off;
            if !self.used.contains(&ip) && !in_store.contains(&ip) {
                self.used.insert(ip);
                self.next_cluster_ip = off % size;
                return Ok(std::net::Ipv4Addr::from(ip).to_string());
            }
        }
        Err(IpError::Full(self.cidr()))
    }

    /// Reserve a requested cluster IP (a reservation no stored Service holds is stale and reused).
    pub fn request(&mut self, ip: &str, in_store: &std::collections::HashSet<u32>) -> Result<(), IpError> {
        let addr: std::net::Ipv4Addr = ip.parse().map_err(|_| IpError::Invalid)?;
        let n = u32::from(addr);
        let mask = if self.range.1 == 0 { 0 } else { u32::MAX << (32 - self.range.1) };
        let broadcast = self.range.0 | !mask;
        if n & mask != self.range.0 || n == self.range.0 || n == broadcast {
            return Err(IpError::OutOfRange(self.cidr()));
        }
        if in_store.contains(&n) {
            return Err(IpError::Taken);
        }
        self.used.insert(n);
        Ok(())
    }

    /// Forget a cluster IP (its Service is gone).
    pub fn release(&mut self, ip: &str) {
        if let Ok(a) = ip.parse::<std::net::Ipv4Addr>() {
            self.used.remove(&u32::from(a));
        }
    }

    pub fn node_port(&mut self) -> u32 {
        self.next_node_port += 1;
        30000 + (self.next_node_port % 2768)
    }
    pub fn lb_ip(&mut self) -> String {
        self.next_lb_ip += 1;
        format!("172.18.255.{}", self.next_lb_ip % 254 + 1)
    }
}

/// Parse `10.96.0.0/12` (IPv4 only).
pub fn parse_cidr(s: &str) -> Option<(u32, u8)> {
    let (ip, len) = s.split_once('/')?;
    let ip: std::net::Ipv4Addr = ip.parse().ok()?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 30)?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Some((u32::from(ip) & mask, len))
}

/// Computes the new object from the current one (None = unchanged).
pub type UpdateFn<'a> = dyn FnMut(Option<&Arc<Value>>) -> Result<Option<Value>, ApiError> + 'a;

/// Request options common to writes.
#[derive(Debug, Default, Clone)]
pub struct Query(pub HashMap<String, String>);

impl Query {
    pub fn parse(q: Option<&str>) -> Query {
        let mut m = HashMap::new();
        for part in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let k = pct_decode(k);
            if !k.starts_with('\0') {
                m.insert(k, pct_decode(v));
            }
        }
        Query(m)
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|s| !s.is_empty())
    }
    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }
    pub fn dry_run(&self) -> bool {
        self.get("dryRun") == Some("All")
    }
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h =
                    std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The current time as the API server prints it.
pub fn now_rfc3339() -> String {
    let ts = jiff::Timestamp::now();
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub fn json_response(code: u16, v: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .body(Body::from(body))
        .expect("response")
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    let mut r = json_response(e.code, &e.to_json());
    if e.code == 429 {
        r.headers_mut().insert("retry-after", http::HeaderValue::from_static("1"));
    }
    r
}

/// A parsed resource URL.
#[derive(Debug, Clone)]
pub struct Target {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub plural: String,
    pub name: Option<String>,
    pub sub: Option<String>,
    pub legacy_watch: bool,
}

enum Route {
    Resource(Target),
    ResourceList(String, String),
    Group(String),
    NotFound,
}

fn route(path: &str) -> Route {
    let segs: Vec<String> =
        path.trim_matches('/').split('/').filter(|s| !s.is_empty()).map(pct_decode).collect();
    let (group, version, rest) = match segs.first().map(String::as_str) {
        Some("api") if segs.len() >= 2 => (String::new(), segs[1].clone(), &segs[2..]),
        Some("apis") if segs.len() == 2 => return Route::Group(segs[1].clone()),
        Some("apis") if segs.len() >= 3 => (segs[1].clone(), segs[2].clone(), &segs[3..]),
        _ => return Route::NotFound,
    };
    let mut rest = rest.to_vec();
    if rest.is_empty() {
        return Route::ResourceList(group, version);
    }
    let mut legacy_watch = false;
    if rest[0] == "watch" {
        legacy_watch = true;
        rest.remove(0);
    }
    let mut t = Target {
        group: group.clone(),
        version,
        namespace: None,
        plural: String::new(),
        name: None,
        sub: None,
        legacy_watch,
    };
    let is_ns_sub = group.is_empty()
        && rest.len() == 3
        && rest[0] == "namespaces"
        && (rest[2] == "status" || rest[2] == "finalize");
    if rest[0] == "namespaces" && rest.len() >= 3 && !is_ns_sub {
        t.namespace = Some(rest[1].clone());
        rest.drain(0..2);
    }
    t.plural = rest[0].clone();
    t.name = rest.get(1).cloned();
    t.sub = rest.get(2).cloned();
    if rest.len() > 3 {
        return Route::NotFound;
    }
    Route::Resource(t)
}

impl Inner {
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.registry.read().get(group, version, plural)
    }

    /// Handle one API request (faults already applied).
    pub async fn handle(
        self: &Arc<Self>,
        method: Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Response<Body> {
        let q = Query::parse(query);
        match path {
            "/version" => return json_response(200, &version_json()),
            "/healthz" | "/readyz" | "/livez" => {
                return Response::builder()
                    .header("content-type", "text/plain")
                    .body(Body::from("ok"))
                    .expect("response");
            }
            "/api" | "/apis" if wants_aggregated(headers) => {
                let doc = self.registry.read().aggregated(path == "/api");
                let mut r = json_response(200, &doc);
                r.headers_mut().insert(
                    "content-type",
                    http::HeaderValue::from_static(
                        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
                    ),
                );
                return r;
            }
            "/api" => {
                let addr = self.server_addr.read().clone();
                return json_response(
                    200,
                    &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}]}),
                );
            }
            "/apis" => return json_response(200, &self.registry.read().api_group_list()),
            _ => {}
        }
        if path == "/openapi/v2" || path.starts_with("/openapi/v3") {
            return crate::openapi::serve(self, path, headers);
        }
        match route(path) {
            Route::NotFound => error_response(&ApiError::no_resource()),
            Route::Group(g) => match self.registry.read().api_group(&g) {
                Some(v) => json_response(200, &v),
                None => error_response(&ApiError::no_resource()),
            },
            Route::ResourceList(g, v) => match self.registry.read().api_resource_list(&g, &v) {
                Some(v) => json_response(200, &v),
                None => error_response(&ApiError::no_resource()),
            },
            Route::Resource(t) => match self.resource(method, t, q, headers, body).await {
                Ok(r) => r,
                Err(e) => error_response(&e),
            },
        }
    }

    async fn resource(
        self: &Arc<Self>,
        method: Method,
        t: Target,
        q: Query,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response<Body>, ApiError> {
        let rt = self.lookup(&t.group, &t.version, &t.plural).ok_or_else(ApiError::no_resource)?;
        if rt.namespaced != t.namespace.is_some()
            && !(rt.namespaced && t.name.is_none() && method == Method::GET)
        {
            return Err(ApiError::no_resource());
        }
        if let Some(sub) = &t.sub {
            let ok = (sub == "status" && rt.status)
                || (sub == "scale" && rt.scale)
                || (sub == "finalize" && rt.kind == "Namespace")
                || (sub == "log" && rt.kind == "Pod" && rt.group.is_empty() && method == Method::GET);
            if !ok {
                return Err(ApiError::no_resource());
            }
        }
        let accept = headers.get("accept").and_then(|v| v.to_str().ok()).unwrap_or("");
        let want_table = accept.contains("as=Table");
        let ns = t.namespace.clone().unwrap_or_default();
        let is_watch = t.legacy_watch || q.flag("watch");
        match (method.clone(), t.name.as_deref()) {
            (Method::GET, None) if is_watch => {
                self.stats.count("watch", false);
                watch::serve(self.clone(), rt, t.namespace.clone(), q, want_table, headers).await
            }
            (Method::GET, Some(name)) if is_watch => {
                // legacy /watch/.../name: a watch with a name field selector
                self.stats.count("watch", false);
                let mut q = q;
                q.0.insert("fieldSelector".into(), format!("metadata.name={name}"));
                watch::serve(self.clone(), rt, t.namespace.clone(), q, want_table, headers).await
            }
            (Method::GET, None) => {
                self.stats.count("list", false);
                let list = self.list(&rt, t.namespace.as_deref(), &q)?;
                if want_table {
                    return Ok(json_response(200, &table::list_table(&rt, &list, &q)));
                }
                Ok(json_response(200, &list))
            }
            (Method::GET, Some(name)) => {
                self.stats.count("get", false);
                let obj =
                    self.store.get(&rt.gr(), &ns, name).ok_or_else(|| ApiError::not_found(&rt, name))?;
                if t.sub.as_deref() == Some("scale") {
                    return Ok(json_response(200, &scale_of(&rt, &obj)));
                }
                if t.sub.as_deref() == Some("log") {
                    return Ok(pod_log(&obj, &q));
                }
                if want_table {
                    let obj = for_version(&rt, &obj);
                    return Ok(json_response(200, &table::object_table(&rt, &obj, &q)));
                }
                Ok(versioned_response(200, &rt, &obj))
            }
            (Method::POST, None) => {
                let dry = q.dry_run();
                let body = parse_body(&body, headers)?;
                let out = self.create(&rt, &ns, body, &q, headers, dry)?;
                self.stats.count("create", !dry);
                if !dry {
                    self.stats.changed();
                }
                Ok(versioned_response(201, &rt, &out))
            }
            (Method::PUT, Some(name)) => {
                let dry = q.dry_run();
                let body = parse_body(&body, headers)?;
                let (out, changed) = self.update(&rt, &ns, name, t.sub.as_deref(), body, &q, headers, dry)?;
                self.stats.count("update", !dry);
                if changed && !dry {
                    self.stats.changed();
                }
                if t.sub.as_deref() == Some("scale") {
                    return Ok(json_response(200, &scale_of(&rt, &out)));
                }
                Ok(versioned_response(200, &rt, &out))
            }
            (Method::PATCH, Some(name)) => {
                let dry = q.dry_run();
                let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
                let pt = PatchType::from_content_type(ct).ok_or_else(|| {
                    ApiError::unsupported_media_type(
                        ct,
                        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json",
                    )
                })?;
                if pt == PatchType::Strategic && rt.crd.is_some() {
                    return Err(ApiError::unsupported_media_type(
                        ct,
                        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                    ));
                }
                let verb = if pt == PatchType::Apply { "apply" } else { "patch" };
                let (out, changed, created) =
                    self.patch(&rt, &ns, name, t.sub.as_deref(), pt, &body, &q, headers, dry)?;
                self.stats.count(verb, !dry);
                if changed && !dry {
                    self.stats.changed();
                }
                if t.sub.as_deref() == Some("scale") {
                    return Ok(json_response(200, &scale_of(&rt, &out)));
                }
                Ok(versioned_response(if created { 201 } else { 200 }, &rt, &out))
            }
            (Method::DELETE, Some(name)) => {
                let dry = q.dry_run();
                let opts =
                    if body.is_empty() { json!({}) } else { parse_body(&body, headers).unwrap_or(json!({})) };
                let r = self.delete(&rt, &ns, name, &q, &opts, dry)?;
                self.stats.count("delete", !dry);
                if !dry {
                    self.stats.changed();
                }
                Ok(r)
            }
            (Method::DELETE, None) => {
                let dry = q.dry_run();
                let opts =
                    if body.is_empty() { json!({}) } else { parse_body(&body, headers).unwrap_or(json!({})) };
                let list = self.list(&rt, t.namespace.as_deref(), &q)?;
                let mut n = 0;
                for it in list["items"].as_array().cloned().unwrap_or_default() {
                    let name = it.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
                    let ins =
                        it.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("").to_string();
                    if self.delete(&rt, &ins, &name, &q, &opts, dry).is_ok() {
                        n += 1;
                    }
                }
                self.stats.count("deletecollection", !dry);
                if n > 0 && !dry {
                    self.stats.changed();
                }
                let mut l = list;
                l["items"] = json!([]);
                Ok(json_response(200, &l))
            }
            _ => Err(ApiError::method_not_supported(&rt, method.as_str())),
        }
    }

    // ---------------- reads ----------------

    /// A list response (with label/field selectors and limit/continue).
    pub fn list(&self, rt: &ResourceType, ns: Option<&str>, q: &Query) -> Result<Value, ApiError> {
        let label = match q.get("labelSelector") {
            Some(s) => Some(crate::selector::LabelSelector::parse(s).map_err(ApiError::bad_request)?),
            None => None,
        };
        let field = match q.get("fieldSelector") {
            Some(s) => Some(crate::selector::FieldSelector::parse(s, rt).map_err(ApiError::bad_request)?),
            None => None,
        };
        let (items, rv) = self.store.list(&rt.gr(), ns);
        let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(0);
        let start_after = match q.get("continue") {
            Some(c) => Some(decode_continue(c)?),
            None => None,
        };
        let mut out = Vec::new();
        let mut next = None;
        for it in items {
            let key = key_of(&it);
            if let Some(sa) = &start_after
                && key <= *sa
            {
                continue;
            }
            if label.as_ref().is_some_and(|l| !l.matches(it.pointer("/metadata/labels"))) {
                continue;
            }
            if field.as_ref().is_some_and(|f| !f.matches(&it)) {
                continue;
            }
            if limit > 0 && out.len() == limit {
                next = out.last().map(|o: &Value| key_of(o));
                break;
            }
            let mut v = for_version(rt, &it);
            if rt.crd.is_none()
                && let Some(m) = v.as_object_mut()
            {
                m.shift_remove("apiVersion");
                m.shift_remove("kind");
            }
            out.push(v);
        }
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if let Some(n) = next {
            meta["continue"] = json!(encode_continue(&n, rv));
            meta["remainingItemCount"] = json!(0);
            meta.as_object_mut().expect("object").shift_remove("remainingItemCount");
        }
        Ok(
            json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": meta, "items": out}),
        )
    }

    // ---------------- writes ----------------

    fn manager(q: &Query, headers: &HeaderMap) -> String {
        if let Some(m) = q.get("fieldManager") {
            return m.to_string();
        }
        let ua = headers.get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or("unknown");
        ua.split('/').next().unwrap_or("unknown").to_string()
    }

    fn check_namespace(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<(), ApiError> {
        if !rt.namespaced {
            return Ok(());
        }
        let nsrt = self.lookup("", "v1", "namespaces").expect("namespaces");
        match self.store.get(&nsrt.gr(), "", ns) {
            None => Err(ApiError::namespace_not_found(ns)),
            Some(n) if n.pointer("/metadata/deletionTimestamp").is_some() => Err(ApiError::forbidden(
                rt,
                name,
                &format!("unable to create new content in namespace {ns} because it is being terminated"),
            )),
            Some(_) => Ok(()),
        }
    }

    /// Field validation: Strict rejects unknown fields, Warn/Ignore drop them.
    fn field_validation(
        &self,
        rt: &ResourceType,
        v: &mut Value,
        q: &Query,
        apply: bool,
    ) -> Result<(), ApiError> {
        // objects the simulated controllers build are known to be well-formed
        if q.0.contains_key(TRUSTED) {
            return Ok(());
        }
        let unknown = defaults::unknown_fields(rt, v)
            .map_err(|e| ApiError::bad_request(format!("{} in body: {e}", rt.kind)))?;
        if unknown.is_empty() {
            return Ok(());
        }
        if q.get("fieldValidation") == Some("Strict") {
            let msg = if apply {
                unknown
                    .iter()
                    .map(|p| format!(".{p}: field not declared in schema"))
                    .collect::<Vec<_>>()
                    .join(", ")
            } else {
                format!(
                    "strict decoding error: {}",
                    unknown.iter().map(|p| format!("unknown field {p:?}")).collect::<Vec<_>>().join(", ")
                )
            };
            return Err(ApiError::bad_request(msg));
        }
        if q.get("fieldValidation") != Some("Ignore") {
            add_warnings(unknown.iter().map(|p| format!("unknown field {p:?}")));
        }
        defaults::prune(v, &unknown);
        Ok(())
    }

    fn validate(&self, rt: &ResourceType, v: &Value) -> Result<(), ApiError> {
        let causes = defaults::validate(rt, v);
        if causes.is_empty() {
            return Ok(());
        }
        let name = v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
        Err(ApiError::invalid(rt, name, causes))
    }

    fn check_type(&self, rt: &ResourceType, v: &Value) -> Result<(), ApiError> {
        let av = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
        if kind.is_empty() {
            return Err(ApiError::bad_request("Object 'Kind' is missing in the request body"));
        }
        let (g, _ver) = av.rsplit_once('/').unwrap_or(("", av));
        if kind != rt.kind || g != rt.group {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                rt.api_version()
            )));
        }
        Ok(())
    }

    /// New object bookkeeping for a create.
    fn prepare_create(&self, rt: &ResourceType, ns: &str, v: &mut Value) -> Result<String, ApiError> {
        let m = v.as_object_mut().ok_or_else(|| ApiError::bad_request("object expected"))?;
        m.insert("apiVersion".into(), json!(rt.api_version()));
        m.insert("kind".into(), json!(rt.kind));
        let meta = m.entry("metadata").or_insert_with(|| json!({}));
        let meta = meta.as_object_mut().ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
        if meta.get("name").and_then(Value::as_str).is_none_or(str::is_empty)
            && let Some(g) = meta.get("generateName").and_then(Value::as_str)
        {
            let suffix: String = (0..5).map(|_| (b'a' + rand::random_range(0..26u8)) as char).collect();
            meta.insert("name".into(), json!(format!("{g}{suffix}")));
        }
        let name = meta.get("name").and_then(Value::as_str).unwrap_or("").to_string();
        if rt.namespaced {
            match meta.get("namespace").and_then(Value::as_str) {
                Some(n) if !n.is_empty() && n != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {
                    meta.insert("namespace".into(), json!(ns));
                }
            }
        } else {
            meta.shift_remove("namespace");
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        for k in ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"] {
            meta.shift_remove(k);
        }
        if rt.generation {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.shift_remove("generation");
        }
        Ok(name)
    }

    /// Cluster IPs held by stored Services.
    fn stored_cluster_ips(&self) -> std::collections::HashSet<u32> {
        let (items, _) = self.store.list(&gr("", "services"), None);
        items
            .iter()
            .filter_map(|s| s.pointer("/spec/clusterIPs").and_then(Value::as_array))
            .flatten()
            .filter_map(|ip| ip.as_str()?.parse::<std::net::Ipv4Addr>().ok())
            .map(u32::from)
            .collect()
    }

    /// Server-assigned fields on create (cluster IPs, node ports).
    fn allocate(&self, rt: &ResourceType, v: &mut Value) -> Result<(), ApiError> {
        if rt.group.is_empty() && rt.kind == "Service" {
            let ty = v.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP").to_string();
            let name = v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
            let in_store = if ty != "ExternalName" { self.stored_cluster_ips() } else { Default::default() };
            let mut ips = self.ips.lock();
            if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
                if ty != "ExternalName" {
                    let requested = spec
                        .get("clusterIP")
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .or_else(|| {
                            spec.get("clusterIPs")?.as_array()?.first()?.as_str().filter(|s| !s.is_empty())
                        })
                        .map(str::to_string);
                    let ip = match requested {
                        Some(ip) if ip == "None" => ip,
                        Some(ip) => {
                            ips.request(&ip, &in_store).map_err(|e| ip_error(rt, &name, &ip, &ips, e))?;
                            ip
                        }
                        None => ips.cluster_ip(&in_store).map_err(|e| ip_error(rt, &name, "", &ips, e))?,
                    };
                    spec.insert("clusterIP".into(), json!(ip));
                    spec.insert("clusterIPs".into(), json!([ip]));
                }
                if (ty == "NodePort" || ty == "LoadBalancer")
                    && let Some(Value::Array(ps)) = spec.get_mut("ports")
                {
                    for p in ps.iter_mut().filter_map(Value::as_object_mut) {
                        if p.get("nodePort").is_none() {
                            p.insert("nodePort".into(), json!(ips.node_port()));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Keep allocations on update (the client may not send them), with the
    /// API server's Service update strategy (see [`immutable::service_prepare_update`]).
    fn keep_allocations(&self, rt: &ResourceType, old: &Value, new: &mut Value) -> Result<(), ApiError> {
        if rt.group.is_empty() && rt.kind == "Service" {
            if immutable::service_prepare_update(old, new) {
                // leaving ExternalName: allocated as on create
                self.allocate(rt, new)?;
            }
            let old_ports = old.pointer("/spec/ports").and_then(Value::as_array).cloned().unwrap_or_default();
            if let Some(Value::Array(ps)) = new.pointer_mut("/spec/ports") {
                for p in ps.iter_mut().filter_map(Value::as_object_mut) {
                    if p.get("nodePort").is_none()
                        && let Some(np) = old_ports
                            .iter()
                            .find(|o| o.get("port") == p.get("port"))
                            .and_then(|o| o.get("nodePort"))
                    {
                        p.insert("nodePort".into(), np.clone());
                    }
                }
            }
        }
        Ok(())
    }

    /// Validation of an update: the immutable-field rules, then the object's own validation.
    fn validate_update(&self, rt: &ResourceType, old: &Value, new: &Value) -> Result<(), ApiError> {
        let mut causes =
            if rt.crd.is_none() { immutable::check(&rt.group, &rt.kind, old, new) } else { vec![] };
        causes.extend(defaults::validate(rt, new));
        if causes.is_empty() {
            return Ok(());
        }
        let name = new.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
        Err(ApiError::invalid(rt, name, causes))
    }

    /// Generation bump and server-owned fields when an object changes.
    fn finish_update(rt: &ResourceType, old: &Value, new: &mut Value) {
        // decoding into the API types drops JSON nulls (e.g. `creationTimestamp: null`)
        managed::drop_nulls(new);
        // server-owned metadata always comes from the stored object
        let old_meta = old.get("metadata").and_then(Value::as_object).cloned().unwrap_or_default();
        if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in [
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "name",
                "namespace",
            ] {
                match old_meta.get(k) {
                    Some(v) => {
                        meta.insert(k.into(), v.clone());
                    }
                    None => {
                        meta.shift_remove(k);
                    }
                }
            }
        }
        if let Some(m) = new.as_object_mut() {
            m.insert("apiVersion".into(), old.get("apiVersion").cloned().unwrap_or(json!(rt.api_version())));
            m.insert("kind".into(), json!(rt.kind));
        }
        if rt.generation {
            let skip = |k: &str| k == "metadata" || (rt.status && k == "status");
            if !eq_except(old, new, &skip) {
                let g = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0) + 1;
                if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert("generation".into(), json!(g));
                }
            }
        }
    }

    /// Commit with retries on concurrent change. `f` computes the new object
    /// from the current one; None from `f` means "unchanged".
    pub fn guaranteed_update(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        dry_run: bool,
        f: &mut UpdateFn<'_>,
    ) -> Result<(Arc<Value>, bool), ApiError> {
        let gr = rt.gr();
        let key = (ns.to_string(), name.to_string());
        for _ in 0..1000 {
            let cur = self.store.get(&gr, ns, name);
            let Some(mut new) = f(cur.as_ref())? else {
                return cur.map(|c| (c, false)).ok_or_else(|| ApiError::not_found(rt, name));
            };
            // ObjectMeta fields are omitempty: empty maps and lists are not stored
            if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                for k in ["labels", "annotations", "finalizers", "ownerReferences", "managedFields"] {
                    if m.get(k).is_some_and(|v| {
                        v.as_object().is_some_and(|o| o.is_empty())
                            || v.as_array().is_some_and(|a| a.is_empty())
                    }) {
                        m.shift_remove(k);
                    }
                }
            }
            if let Some(c) = &cur {
                // identical content: a no-op, no new resourceVersion
                let same_meta = match (new.get("metadata"), c.get("metadata")) {
                    (Some(a), Some(b)) => eq_except(a, b, &|k: &str| k == "resourceVersion"),
                    (a, b) => a == b,
                };
                if same_meta && eq_except(&new, c, &|k: &str| k == "metadata") {
                    return Ok((c.clone(), false));
                }
            }
            // finalizers all removed from an object being deleted: delete it
            let finalize = new.pointer("/metadata/deletionTimestamp").is_some()
                && new.pointer("/metadata/finalizers").and_then(Value::as_array).is_none_or(Vec::is_empty)
                && !(rt.kind == "Namespace"
                    && rt.group.is_empty()
                    && new
                        .pointer("/spec/finalizers")
                        .and_then(Value::as_array)
                        .is_some_and(|a| !a.is_empty()));
            if dry_run {
                if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut)
                    && let Some(c) = &cur
                {
                    m.insert(
                        "resourceVersion".into(),
                        c.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null),
                    );
                }
                return Ok((Arc::new(new), true));
            }
            if finalize && cur.is_some() {
                match self.store.commit(&gr, &key, cur.as_ref(), None) {
                    Ok(_) => {
                        self.after_delete(rt, &new);
                        return Ok((Arc::new(new), true));
                    }
                    Err(CommitError::Changed) => continue,
                }
            }
            if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                m.shift_remove("resourceVersion");
            }
            match self.store.commit(&gr, &key, cur.as_ref(), Some(new)) {
                Ok((_, Some(obj))) => {
                    self.after_write(rt, &obj);
                    return Ok((obj, true));
                }
                Ok((_, None)) => return Err(ApiError::internal("object vanished")),
                Err(CommitError::Changed) => {
                    if cur.is_none() {
                        // created concurrently
                        continue;
                    }
                    continue;
                }
            }
        }
        Err(ApiError::internal("too many concurrent updates"))
    }

    fn after_write(&self, rt: &ResourceType, obj: &Arc<Value>) {
        if rt.group == "apiextensions.k8s.io" && rt.kind == "CustomResourceDefinition" {
            crd::sync(self, obj);
        }
        self.kick.notify_one();
    }

    pub fn after_delete(&self, rt: &ResourceType, obj: &Value) {
        if rt.group.is_empty() && rt.kind == "Service" {
            let mut ips = self.ips.lock();
            for ip in obj.pointer("/spec/clusterIPs").and_then(Value::as_array).into_iter().flatten() {
                ips.release(ip.as_str().unwrap_or(""));
            }
        }
        if rt.group == "apiextensions.k8s.io" && rt.kind == "CustomResourceDefinition" {
            crd::remove(self, obj);
        }
        self.kick.notify_one();
    }

    /// POST.
    pub fn create(
        &self,
        rt: &ResourceType,
        ns: &str,
        mut body: Value,
        q: &Query,
        headers: &HeaderMap,
        dry: bool,
    ) -> Result<Arc<Value>, ApiError> {
        self.check_type(rt, &body)?;
        managed::drop_nulls(&mut body);
        self.field_validation(rt, &mut body, q, false)?;
        let name = self.prepare_create(rt, ns, &mut body)?;
        self.validate(rt, &body)?;
        self.check_namespace(rt, ns, &name)?;
        if rt.status
            && let Some(m) = body.as_object_mut()
        {
            // status is set by controllers; clients cannot create it (except CRD status we reset too)
            m.shift_remove("status");
        }
        defaults::apply_defaults(rt, &mut body);
        self.allocate(rt, &mut body)?;
        let manager = Self::manager(q, headers);
        let now = now_rfc3339();
        managed::update(
            None,
            &mut body,
            &rt.schema,
            &manager,
            &rt.api_version(),
            "",
            &now,
            Scope::Main { has_status: rt.status },
        );
        let mut body = Some(body);
        let (obj, _) = self.guaranteed_update(rt, ns, &name, dry, &mut |cur| {
            if cur.is_some() {
                return Err(ApiError::already_exists(rt, &name));
            }
            Ok(body.take())
        })?;
        Ok(obj)
    }

    /// PUT (main resource, status or scale).
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        sub: Option<&str>,
        body: Value,
        q: &Query,
        headers: &HeaderMap,
        dry: bool,
    ) -> Result<(Arc<Value>, bool), ApiError> {
        let manager = Self::manager(q, headers);
        if sub == Some("scale") {
            let replicas = body.pointer("/spec/replicas").cloned().unwrap_or(json!(0));
            return self.patch_with(rt, ns, name, None, &manager, dry, &mut |cur| {
                let mut v = (**cur).clone();
                set_scale(rt, &mut v, replicas.clone());
                Ok(v)
            });
        }
        if sub.is_none() {
            self.check_type(rt, &body)?;
        }
        let mut body = body;
        self.field_validation(rt, &mut body, q, false)?;
        let body_name = body.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let body_rv = body.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(str::to_string);
        let sub_s = sub.unwrap_or("").to_string();
        let (obj, changed) = self.guaranteed_update(rt, ns, name, dry, &mut |cur| {
            let Some(cur) = cur else { return Err(ApiError::not_found(rt, name)) };
            if let Some(rv) = &body_rv
                && !rv.is_empty()
                && *rv != rv_of(cur).to_string()
            {
                return Err(ApiError::stale(rt, name));
            }
            let mut new = self.merge_scope(rt, cur, &body, sub);
            self.finish_write(rt, cur, &mut new, &manager, &sub_s)?;
            Ok(Some(new))
        })?;
        Ok((obj, changed))
    }

    /// Combine a request body with the stored object according to the scope
    /// (main resource: status from stored; status: only status from body).
    fn merge_scope(&self, rt: &ResourceType, cur: &Value, body: &Value, sub: Option<&str>) -> Value {
        match sub {
            Some("status") => {
                let mut v = cur.clone();
                if let Some(m) = v.as_object_mut() {
                    match body.get("status") {
                        Some(s) => {
                            m.insert("status".into(), s.clone());
                        }
                        None => {
                            m.shift_remove("status");
                        }
                    }
                }
                v
            }
            Some("finalize") => {
                let mut v = cur.clone();
                if let Some(f) = body.pointer("/spec/finalizers")
                    && let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut)
                {
                    spec.insert("finalizers".into(), f.clone());
                }
                v
            }
            _ => {
                let mut v = body.clone();
                if rt.status
                    && let Some(m) = v.as_object_mut()
                {
                    match cur.get("status") {
                        Some(s) => {
                            m.insert("status".into(), s.clone());
                        }
                        None => {
                            m.shift_remove("status");
                        }
                    }
                }
                v
            }
        }
    }

    /// Shared tail of update/patch: server-owned fields, defaults, validation, managed fields.
    fn finish_write(
        &self,
        rt: &ResourceType,
        cur: &Value,
        new: &mut Value,
        manager: &str,
        sub: &str,
    ) -> Result<(), ApiError> {
        Self::finish_update(rt, cur, new);
        self.keep_allocations(rt, cur, new)?;
        defaults::apply_defaults(rt, new);
        self.validate_update(rt, cur, new)?;
        // deletion in progress: only finalizer removal and metadata changes are allowed for new finalizers
        if cur.pointer("/metadata/deletionTimestamp").is_some() {
            let old_f: Vec<Value> =
                cur.pointer("/metadata/finalizers").and_then(Value::as_array).cloned().unwrap_or_default();
            let new_f: Vec<Value> =
                new.pointer("/metadata/finalizers").and_then(Value::as_array).cloned().unwrap_or_default();
            if new_f.iter().any(|f| !old_f.contains(f)) {
                let name = cur.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
                return Err(ApiError::invalid(
                    rt,
                    name,
                    vec![Cause {
                        reason: "FieldValueForbidden".into(),
                        message: "Forbidden: no new finalizers can be added if the object is being deleted"
                            .into(),
                        field: "metadata.finalizers".into(),
                    }],
                ));
            }
        }
        let scope = if sub == "status" { Scope::Status } else { Scope::Main { has_status: rt.status } };
        managed::update(Some(cur), new, &rt.schema, manager, &rt.api_version(), sub, &now_rfc3339(), scope);
        Ok(())
    }

    /// Internal write by a controller or the server itself (manager, operation Update).
    #[allow(clippy::too_many_arguments)]
    pub fn patch_with(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        sub: Option<&str>,
        manager: &str,
        dry: bool,
        f: &mut dyn FnMut(&Arc<Value>) -> Result<Value, ApiError>,
    ) -> Result<(Arc<Value>, bool), ApiError> {
        let sub_s = sub.unwrap_or("").to_string();
        let (obj, changed) = self.guaranteed_update(rt, ns, name, dry, &mut |cur| {
            let Some(cur) = cur else { return Err(ApiError::not_found(rt, name)) };
            let patched = f(cur)?;
            let mut new = match sub {
                Some("status") => self.merge_scope(rt, cur, &patched, Some("status")),
                _ => patched,
            };
            self.finish_write(rt, cur, &mut new, manager, &sub_s)?;
            Ok(Some(new))
        })?;
        Ok((obj, changed))
    }

    /// PATCH (all four types). Returns (object, changed, created).
    #[allow(clippy::too_many_arguments)]
    fn patch(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        sub: Option<&str>,
        pt: PatchType,
        body: &Bytes,
        q: &Query,
        headers: &HeaderMap,
        dry: bool,
    ) -> Result<(Arc<Value>, bool, bool), ApiError> {
        let patch_v: Value =
            if pt == PatchType::Apply { parse_yaml_or_json(body)? } else { parse_json(body)? };
        if pt == PatchType::Apply {
            let (v, changed, created) = self.apply(rt, ns, name, sub, patch_v, q, dry)?;
            return Ok((v, changed, created));
        }
        if q.get("fieldManager").is_some_and(|m| m.len() > 128) {
            return Err(ApiError::bad_request("fieldManager must be at most 128 characters"));
        }
        let manager = Self::manager(q, headers);
        let strict = q.get("fieldValidation") == Some("Strict");
        let (v, changed) = self.patch_with(
            rt,
            ns,
            name,
            if sub == Some("scale") { None } else { sub },
            &manager,
            dry,
            &mut |cur| {
                if sub == Some("scale") {
                    let scale = scale_of(rt, cur);
                    let patched = apply_patch(pt, &scale, &patch_v, &crate::schema::Schema::Open)?;
                    let mut v = (**cur).clone();
                    set_scale(rt, &mut v, patched.pointer("/spec/replicas").cloned().unwrap_or(json!(0)));
                    return Ok(v);
                }
                let mut v = apply_patch(pt, cur, &patch_v, &rt.schema)?;
                let unknown = defaults::unknown_fields(rt, &v).map_err(ApiError::bad_request)?;
                if !unknown.is_empty() {
                    if strict {
                        return Err(ApiError::bad_request(format!(
                            "strict decoding error: {}",
                            unknown
                                .iter()
                                .map(|p| format!("unknown field {p:?}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                    }
                    if q.get("fieldValidation") != Some("Ignore") {
                        add_warnings(unknown.iter().map(|p| format!("unknown field {p:?}")));
                    }
                    defaults::prune(&mut v, &unknown);
                }
                if let Some(rv) = patch_v.pointer("/metadata/resourceVersion").and_then(Value::as_str)
                    && rv != rv_of(cur).to_string()
                {
                    return Err(ApiError::stale(rt, name));
                }
                Ok(v)
            },
        )?;
        Ok((v, changed, false))
    }

    /// Server-side apply.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        sub: Option<&str>,
        mut cfg: Value,
        q: &Query,
        dry: bool,
    ) -> Result<(Arc<Value>, bool, bool), ApiError> {
        let Some(manager) = q.get("fieldManager").map(str::to_string) else {
            return Err(ApiError::new(
                422,
                "Invalid",
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        };
        if !cfg.is_object() {
            return Err(ApiError::bad_request(
                "error decoding YAML: the apply configuration must be an object",
            ));
        }
        if sub != Some("status") {
            self.check_type(rt, &cfg)?;
        }
        let cfg_name = cfg.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
        if !cfg_name.is_empty() && cfg_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({cfg_name}) does not match the name on the URL ({name})"
            )));
        }
        if let Some(n) = cfg.pointer("/metadata/namespace").and_then(Value::as_str)
            && rt.namespaced
            && !n.is_empty()
            && n != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        managed::drop_nulls(&mut cfg);
        self.field_validation(rt, &mut cfg, q, true)?;
        let force = q.flag("force");
        let scope = if sub == Some("status") { Scope::Status } else { Scope::Main { has_status: rt.status } };
        let av = rt.api_version();
        let mut created = false;
        let (obj, changed) = self.guaranteed_update(rt, ns, name, dry, &mut |cur| {
            let now = now_rfc3339();
            let req = ApplyRequest {
                manager: &manager,
                api_version: &av,
                subresource: sub.unwrap_or(""),
                force,
                now: &now,
                scope,
            };
            match cur {
                None => {
                    if sub.is_some() {
                        return Err(ApiError::not_found(rt, name));
                    }
                    let mut base = json!({"apiVersion": av, "kind": rt.kind, "metadata": {"name": name}});
                    if rt.namespaced {
                        base["metadata"]["namespace"] = json!(ns);
                    }
                    self.check_namespace(rt, ns, name)?;
                    let mut new = managed::apply(&base, &cfg, &rt.schema, &req).map_err(conflict_error)?;
                    self.prepare_create(rt, ns, &mut new)?;
                    if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                        meta.insert("name".into(), json!(name));
                    }
                    self.validate(rt, &new)?;
                    if rt.status
                        && let Some(m) = new.as_object_mut()
                    {
                        m.shift_remove("status");
                    }
                    defaults::apply_defaults(rt, &mut new);
                    self.allocate(rt, &mut new)?;
                    created = true;
                    Ok(Some(new))
                }
                Some(cur) => {
                    created = false;
                    if let Some(rv) = cfg.pointer("/metadata/resourceVersion").and_then(Value::as_str)
                        && !rv.is_empty()
                        && rv != rv_of(cur).to_string()
                    {
                        return Err(ApiError::stale(rt, name));
                    }
                    let mut new = match managed::apply(cur, &cfg, &rt.schema, &req) {
                        Ok(v) => v,
                        // kubectl upgrading from client-side apply: conflicts on fields of the
                        // last-applied configuration are forced (the API server's lastAppliedManager)
                        Err(conflicts)
                            if manager == "kubectl" && last_applied_allows(cur, &conflicts, &rt.schema) =>
                        {
                            let forced = ApplyRequest { force: true, ..req };
                            managed::apply(cur, &cfg, &rt.schema, &forced).map_err(conflict_error)?
                        }
                        Err(conflicts) => return Err(conflict_error(conflicts)),
                    };
                    // ... and keeps the annotation in sync (lastAppliedUpdater)
                    if manager == "kubectl" && last_applied(cur).is_some() {
                        set_last_applied(&mut new, &cfg);
                    }
                    Self::finish_update(rt, cur, &mut new);
                    self.keep_allocations(rt, cur, &mut new)?;
                    defaults::apply_defaults(rt, &mut new);
                    self.validate_update(rt, cur, &new)?;
                    Ok(Some(new))
                }
            }
        })?;
        Ok((obj, changed, created && changed))
    }

    /// DELETE of one object.
    pub fn delete(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        q: &Query,
        opts: &Value,
        dry: bool,
    ) -> Result<Response<Body>, ApiError> {
        let policy = opts
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| q.get("propagationPolicy").map(str::to_string))
            .or_else(|| {
                match opts
                    .get("orphanDependents")
                    .and_then(Value::as_bool)
                    .or(q.get("orphanDependents").map(|v| v == "true"))
                {
                    Some(true) => Some("Orphan".into()),
                    Some(false) => Some("Background".into()),
                    None => None,
                }
            })
            .unwrap_or_else(|| "Background".into());
        let pre_uid = opts.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_string);
        let pre_rv =
            opts.pointer("/preconditions/resourceVersion").and_then(Value::as_str).map(str::to_string);
        let gr = rt.gr();
        let key = (ns.to_string(), name.to_string());
        for _ in 0..1000 {
            let Some(cur) = self.store.get(&gr, ns, name) else { return Err(ApiError::not_found(rt, name)) };
            if let Some(u) = &pre_uid
                && cur.pointer("/metadata/uid").and_then(Value::as_str) != Some(u.as_str())
            {
                return Err(ApiError::conflict(
                    rt,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {u}, UID in object meta: {}",
                        cur.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("")
                    ),
                ));
            }
            if let Some(r) = &pre_rv
                && *r != rv_of(&cur).to_string()
            {
                return Err(ApiError::conflict(
                    rt,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {r}, ResourceVersion in object meta: {}",
                        rv_of(&cur)
                    ),
                ));
            }
            let mut finalizers: Vec<Value> =
                cur.pointer("/metadata/finalizers").and_then(Value::as_array).cloned().unwrap_or_default();
            let is_ns = rt.group.is_empty() && rt.kind == "Namespace";
            let extra = match policy.as_str() {
                "Foreground" => Some("foregroundDeletion"),
                "Orphan" => Some("orphan"),
                _ => None,
            };
            let already = cur.pointer("/metadata/deletionTimestamp").is_some();
            if let Some(f) = extra
                && !already
                && !finalizers.contains(&json!(f))
            {
                finalizers.push(json!(f));
            }
            if !finalizers.is_empty() || is_ns {
                // mark for deletion; controllers (or clients) remove finalizers
                if already && extra.is_none() {
                    return Ok(versioned_response(if is_ns { 200 } else { 202 }, rt, &cur));
                }
                let mut v = (*cur).clone();
                if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                    if !already {
                        meta.insert("deletionTimestamp".into(), json!(now_rfc3339()));
                        meta.insert("deletionGracePeriodSeconds".into(), json!(0));
                    }
                    if !finalizers.is_empty() {
                        meta.insert("finalizers".into(), Value::Array(finalizers.clone()));
                    }
                }
                if is_ns && let Some(m) = v.as_object_mut() {
                    let st = m.entry("status").or_insert_with(|| json!({}));
                    st["phase"] = json!("Terminating");
                }
                if dry {
                    return Ok(versioned_response(200, rt, &v));
                }
                match self.store.commit(&gr, &key, Some(&cur), Some(v)) {
                    Ok((_, Some(obj))) => {
                        self.kick.notify_one();
                        return Ok(versioned_response(if is_ns { 200 } else { 202 }, rt, &obj));
                    }
                    Ok(_) => return Err(ApiError::internal("object vanished")),
                    Err(_) => continue,
                }
            }
            if dry {
                return Ok(self.delete_response(rt, &cur));
            }
            match self.store.commit(&gr, &key, Some(&cur), None) {
                Ok(_) => {
                    self.after_delete(rt, &cur);
                    return Ok(self.delete_response(rt, &cur));
                }
                Err(_) => continue,
            }
        }
        Err(ApiError::internal("too many concurrent updates"))
    }

    fn delete_response(&self, rt: &ResourceType, cur: &Value) -> Response<Body> {
        if rt.crd.is_some()
            || rt.kind == "Pod"
            || rt.kind == "Namespace"
            || rt.kind == "CustomResourceDefinition"
        {
            return versioned_response(200, rt, cur);
        }
        let name = cur.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
        let uid = cur.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("");
        json_response(200, &status::success(rt, name, uid))
    }
}

/// A refused cluster IP as the API server words it (422 on `spec.clusterIPs`).
fn ip_error(rt: &ResourceType, name: &str, ip: &str, ips: &IpAlloc, e: IpError) -> ApiError {
    let why = match e {
        IpError::Taken => format!("failed to allocate IP {ip}: provided IP is already allocated"),
        IpError::OutOfRange(cidr) => format!(
            "failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {cidr}"
        ),
        IpError::Invalid => "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)".into(),
        IpError::Full(cidr) => {
            return ApiError::internal(format!(
                "failed to allocate a serviceIP: range is full (service CIDR {cidr}, {} in use)",
                ips.used.len()
            ));
        }
    };
    let shown = format!("[]string{{{ip:?}}}");
    ApiError::invalid(
        rt,
        name,
        vec![Cause {
            reason: "FieldValueInvalid".into(),
            message: format!("Invalid value: {shown}: {why}"),
            field: "spec.clusterIPs".into(),
        }],
    )
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

fn last_applied(v: &Value) -> Option<Value> {
    let s = v.pointer("/metadata/annotations")?.get(LAST_APPLIED)?.as_str()?;
    serde_json::from_str(s).ok()
}

/// Whether every conflict is on a field of the client-side last-applied configuration.
fn last_applied_allows(cur: &Value, conflicts: &[managed::Conflict], schema: &crate::schema::Schema) -> bool {
    let Some(la) = last_applied(cur) else { return false };
    let set = crate::fieldpath::to_field_set(&managed::strip(&la, Scope::Main { has_status: false }), schema);
    conflicts.iter().all(|c| set.has(&c.path.0))
}

fn set_last_applied(new: &mut Value, cfg: &Value) {
    let mut c = cfg.clone();
    if let Some(a) = c.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
        a.shift_remove(LAST_APPLIED);
    }
    let text = crate::fieldpath::canonical(&c) + "\n";
    if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
        let a = meta.entry("annotations").or_insert_with(|| json!({}));
        a[LAST_APPLIED] = json!(text);
    }
}

fn conflict_error(conflicts: Vec<managed::Conflict>) -> ApiError {
    let causes = conflicts
        .iter()
        .map(|c| Cause {
            reason: "FieldManagerConflict".into(),
            message: format!("conflict with {}", c.manager),
            field: c.path.to_string(),
        })
        .collect();
    ApiError::apply_conflict(managed::conflict_message(&conflicts), causes)
}

fn apply_patch(
    pt: PatchType,
    cur: &Value,
    p: &Value,
    schema: &crate::schema::Schema,
) -> Result<Value, ApiError> {
    match pt {
        PatchType::Merge => Ok(patch::merge_patch(cur, p)),
        PatchType::Json => patch::json_patch(cur, p).map_err(|e| ApiError::new(422, "Invalid", e)),
        PatchType::Strategic => patch::strategic(cur, p, schema).map_err(ApiError::bad_request),
        PatchType::Apply => Err(ApiError::internal("apply handled elsewhere")),
    }
}

/// A JSON response with an object as served at `rt`'s version (see [`for_version`]),
/// serialized without copying the object.
pub fn versioned_response(code: u16, rt: &ResourceType, v: &Value) -> Response<Body> {
    match (rt.crd.is_some(), v.as_object()) {
        (true, Some(m)) => {
            let av = rt.api_version();
            if m.get("apiVersion").and_then(Value::as_str) == Some(av.as_str()) {
                return json_response(code, v);
            }
            json_response(code, &Versioned { obj: m, api_version: &av })
        }
        _ => json_response(code, v),
    }
}

/// An object whose `apiVersion` is replaced (or appended), as [`for_version`] does.
struct Versioned<'a> {
    obj: &'a serde_json::Map<String, Value>,
    api_version: &'a str,
}

impl serde::Serialize for Versioned<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let has = self.obj.contains_key("apiVersion");
        let mut m = ser.serialize_map(Some(self.obj.len() + usize::from(!has)))?;
        for (k, v) in self.obj {
            if k == "apiVersion" {
                m.serialize_entry(k, self.api_version)?;
            } else {
                m.serialize_entry(k, v)?;
            }
        }
        if !has {
            m.serialize_entry("apiVersion", self.api_version)?;
        }
        m.end()
    }
}

/// Rewrite apiVersion for the served version (CRDs with several versions share a store).
pub fn for_version(rt: &ResourceType, v: &Value) -> Value {
    let mut v = v.clone();
    if rt.crd.is_some()
        && let Some(m) = v.as_object_mut()
    {
        m.insert("apiVersion".into(), json!(rt.api_version()));
    }
    v
}

fn key_of(v: &Value) -> String {
    format!(
        "{}/{}",
        v.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or(""),
        v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("")
    )
}

fn encode_continue(key: &str, rv: u64) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"v": "meta.k8s.io/v1", "rv": rv, "start": key}).to_string())
}

fn decode_continue(c: &str) -> Result<String, ApiError> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c.trim_end_matches('='))
        .map_err(|_| ApiError::bad_request("continue key is not valid: illegal base64 data"))?;
    let v: Value =
        serde_json::from_slice(&bytes).map_err(|_| ApiError::bad_request("continue key is not valid"))?;
    Ok(v.get("start").and_then(Value::as_str).unwrap_or("").to_string())
}

fn parse_json(b: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(b).map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))
}

fn parse_yaml_or_json(b: &Bytes) -> Result<Value, ApiError> {
    if let Ok(v) = serde_json::from_slice::<Value>(b) {
        return Ok(v);
    }
    let s = std::str::from_utf8(b).map_err(|_| ApiError::bad_request("body is not UTF-8"))?;
    serde_saphyr::from_str::<Value>(s).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
}

fn parse_body(b: &Bytes, headers: &HeaderMap) -> Result<Value, ApiError> {
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    if ct.contains("protobuf") {
        return crate::proto::decode(b).map_err(|e| {
            tracing::debug!(body = %hex_dump(b), "protobuf body not decoded");
            ApiError::unsupported_media_type(ct, &format!("application/json, application/yaml ({e})"))
        });
    }
    if ct.contains("cbor") {
        return Err(ApiError::unsupported_media_type(
            ct,
            "application/json, application/yaml, application/vnd.kubernetes.protobuf",
        ));
    }
    if ct.contains("yaml") { parse_yaml_or_json(b) } else { parse_json(b) }
}

/// `/version`.
pub fn version_json() -> Value {
    json!({
        "major": "1", "minor": "32", "gitVersion": "v1.32.0-kube-sim", "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23.0", "compiler": "gc", "platform": "linux/amd64",
        "emulationMajor": "1", "emulationMinor": "32", "minCompatibilityMajor": "1", "minCompatibilityMinor": "31"
    })
}

/// The autoscaling/v1 Scale of an object.
pub fn scale_of(rt: &ResourceType, v: &Value) -> Value {
    let (spec_p, status_p, sel_p) = match &rt.scale_paths {
        Some((a, b, c)) => (a.clone(), b.clone(), c.clone()),
        None => (".spec.replicas".into(), ".status.replicas".into(), None),
    };
    let get = |p: &str| v.pointer(&p.replace('.', "/")).cloned();
    let selector = match &sel_p {
        Some(p) => get(p).and_then(|s| s.as_str().map(str::to_string)),
        None => v.pointer("/spec/selector/matchLabels").and_then(Value::as_object).map(|m| {
            m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(",")
        }),
    };
    let meta = v.get("metadata").cloned().unwrap_or(json!({}));
    let mut m = Map::new();
    for k in ["name", "namespace", "uid", "resourceVersion", "creationTimestamp"] {
        if let Some(x) = meta.get(k) {
            m.insert(k.into(), x.clone());
        }
    }
    let mut status = json!({"replicas": get(&status_p).unwrap_or(json!(0))});
    if let Some(s) = selector {
        status["selector"] = json!(s);
    }
    json!({"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": Value::Object(m),
        "spec": {"replicas": get(&spec_p).unwrap_or(json!(0))}, "status": status})
}

fn set_scale(rt: &ResourceType, v: &mut Value, replicas: Value) {
    let spec_p = rt.scale_paths.as_ref().map(|p| p.0.clone()).unwrap_or_else(|| ".spec.replicas".into());
    let parts: Vec<&str> = spec_p.trim_start_matches('.').split('.').collect();
    let mut cur = v;
    for (i, p) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            if let Some(m) = cur.as_object_mut() {
                m.insert(p.to_string(), replicas.clone());
            }
            return;
        }
        let Some(m) = cur.as_object_mut() else { return };
        cur = m.entry(p.to_string()).or_insert_with(|| json!({}));
    }
}

/// Re-exported for controllers.
pub fn gr(group: &str, resource: &str) -> GroupResource {
    GroupResource { group: group.into(), resource: resource.into() }
}

fn hex_dump(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether the client asks for aggregated discovery (apidiscovery.k8s.io/v2).
fn wants_aggregated(headers: &HeaderMap) -> bool {
    headers.get("accept").and_then(|v| v.to_str().ok()).is_some_and(|a| {
        a.split(',').any(|part| {
            part.contains("g=apidiscovery.k8s.io")
                && part.contains("v=v2;")
                && part.contains("as=APIGroupDiscoveryList")
        }) || a.split(',').any(|part| {
            part.contains("g=apidiscovery.k8s.io")
                && part.trim_end().ends_with("v=v2")
                && part.contains("as=APIGroupDiscoveryList")
        })
    })
}

/// `pods/log`: simulated containers write one line when they start.
fn pod_log(pod: &Value, q: &Query) -> Response<Body> {
    let containers: Vec<&str> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    let name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    let container = match q.get("container") {
        Some(c) => c.to_string(),
        None if containers.len() == 1 => containers[0].to_string(),
        None => {
            let e = ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            ));
            return error_response(&e);
        }
    };
    if !containers.contains(&container.as_str()) {
        return error_response(&ApiError::bad_request(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
    let running = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|c| c["name"] == container.as_str()))
        .is_some_and(|c| c.pointer("/state/running").is_some() || c.pointer("/state/terminated").is_some());
    if !running {
        let reason = pod
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|c| c["name"] == container.as_str()))
            .and_then(|c| c.pointer("/state/waiting/reason").and_then(Value::as_str))
            .unwrap_or("ContainerCreating");
        let why = if reason == "ImagePullBackOff" { "trying and failing to pull image" } else { reason };
        return error_response(&ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: {why}"
        )));
    }
    let started = pod.pointer("/status/startTime").and_then(Value::as_str).unwrap_or("");
    let body =
        format!("{started} kube-sim: container {container} of pod {name} is simulated and writes no logs\n");
    Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .body(Body::from(body))
        .expect("response")
}

/// Object equality ignoring some top-level keys (no clones).
fn eq_except(a: &Value, b: &Value, skip: &dyn Fn(&str) -> bool) -> bool {
    match (a.as_object(), b.as_object()) {
        (Some(x), Some(y)) => {
            let xs = x.iter().filter(|(k, _)| !skip(k));
            let ys = y.iter().filter(|(k, _)| !skip(k));
            xs.clone().count() == ys.count() && xs.into_iter().all(|(k, v)| y.get(k) == Some(v))
        }
        _ => a == b,
    }
}
