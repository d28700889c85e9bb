//! `convoy.v1.Fleet`: operator queries answered from the in-memory indexes
//! (events from the store's indexed log), and operator actions.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use convoy_core::selector::{LabelSelector, parse_labels};
use convoy_core::status::{Condition, Phase};
use convoy_proto::v1 as pb;
use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{Instrument, info, info_span};

use super::convert::{
    condition_to_pb, phase_to_pb, severity_from_pb, source_to_pb, status_to_pb, stored_event_to_pb,
    summary_to_pb,
};
use super::{Core, status};
use crate::domain::EventFilter;
use crate::domain::admins::RevokeTarget;
use crate::domain::authz::Caller;
use crate::domain::summary::{PhaseCounts, effective_phase};
use crate::metrics::RpcLabels;
use crate::state::{ClusterEntry, FleetView, TokenInput};

/// The Fleet service.
pub struct FleetService {
    core: Arc<Core>,
}

impl FleetService {
    /// A service over `core`.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    fn timed(&self, rpc: &'static str) -> Timer<'_> {
        Timer { core: &self.core, rpc, start: Instant::now() }
    }
}

struct Timer<'a> {
    core: &'a Core,
    rpc: &'static str,
    start: Instant,
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.core
            .metrics
            .query_seconds
            .get_or_create(&RpcLabels { rpc: self.rpc })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

fn selector(s: &str) -> Result<LabelSelector, Status> {
    let sel = LabelSelector::parse(s).map_err(|e| Status::invalid_argument(e.to_string()))?;
    sel.validate().map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(sel)
}

/// Whether a bundle targets a cluster, on the cluster's effective labels
/// (registered, then the fleet's `Cluster` documents).
fn targets(view: &FleetView, spec: &convoy_core::config::BundleSpec, entry: &ClusterEntry) -> bool {
    let (labels, _) = view.fleet.cluster_facts(&entry.record.name, &entry.record.labels);
    spec.targets_cluster(&entry.record.name, &labels)
}

/// One fleet-matrix cell.
fn cell(view: &FleetView, entry: &ClusterEntry, bundle: &str) -> pb::ClusterBundleStatus {
    use crate::domain::desired::Placed;
    let placed = view.placements.get(&entry.record.name).and_then(|p| p.get(bundle));
    let (variant, variant_error) = match placed {
        Some(Placed::Variant(k)) => (k.clone(), String::new()),
        Some(Placed::Failed(m)) => (String::new(), m.clone()),
        _ => (String::new(), String::new()),
    };
    // What this cluster is sent (its variant, or what a rollout holds it
    // on), else what the hub computes for it.
    let sent = entry.shared.desired().bundles.get(bundle).cloned();
    let computed = match placed {
        Some(Placed::Variant(k)) => view.index.variants.get(&(bundle.to_string(), k.clone())),
        // A failed variant: the generation the cluster keeps.
        Some(Placed::Failed(_)) => None,
        _ => view.index.deployments.get(bundle),
    };
    let desired = sent.as_ref().or(computed);
    let statuses = entry.shared.statuses();
    let st = statuses.get(bundle);
    let desired_generation = desired.map(|d| d.record.generation).unwrap_or(0);
    let mut phase = phase_to_pb(effective_phase(desired_generation, st.map(|s| &**s)));
    if !variant_error.is_empty() {
        phase = phase_to_pb(Phase::Stalled);
    }
    pb::ClusterBundleStatus {
        variant,
        variant_error,
        cluster: entry.record.name.clone(),
        bundle: bundle.into(),
        status: st.map(|s| status_to_pb(s)),
        desired_generation,
        desired_revision: desired.map(|d| d.record.revision.clone()).unwrap_or_default(),
        updated_unix_ms: st.map(|s| s.updated_unix_ms).unwrap_or(0),
        phase: phase as i32,
    }
}

/// The bundles targeted at a cluster, as cells.
fn cluster_cells(view: &FleetView, entry: &ClusterEntry) -> Vec<pb::ClusterBundleStatus> {
    view.fleet
        .bundles
        .iter()
        .filter(|(_, b)| targets(view, &b.spec, entry))
        .map(|(name, _)| cell(view, entry, name))
        .collect()
}

fn count(cells: &[pb::ClusterBundleStatus]) -> PhaseCounts {
    let mut c = PhaseCounts::default();
    for cell in cells {
        c.add(super::convert::phase_from_pb(cell.phase));
    }
    c
}

fn cluster_pb(entry: &ClusterEntry, cells: &[pb::ClusterBundleStatus]) -> pb::Cluster {
    let r = &entry.record;
    pb::Cluster {
        name: r.name.clone(),
        labels: r.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        connected: entry.shared.connected(),
        last_seen_unix_ms: entry.shared.last_seen(),
        agent_version: (*entry.shared.agent_version()).clone(),
        bundles: Some(summary_to_pb(&count(cells))),
        registered_unix_ms: r.registered_unix_ms,
        certificate_not_after_unix_ms: r.cert_not_after(),
        revoked: r.revoked,
        age_recipients: (*entry.shared.age_recipients()).clone(),
        vars: r.vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        kube_version: entry.shared.kube_version(),
    }
}

/// The hub-side conditions of a bundle: its build.
fn build_conditions(view: &FleetView, bundle: &str) -> Vec<Condition> {
    let build = view.builds.get(bundle);
    let record = view.records.get(bundle);
    let mut out = Vec::new();
    match (build.and_then(|b| b.error.as_ref()), record) {
        (Some(err), _) => {
            let keep = record.map(|r| format!(" (serving generation {})", r.generation)).unwrap_or_default();
            let mut ready = Condition::new("Ready", false, &err.reason, format!("{}{keep}", err.message));
            ready.last_transition_unix_ms = err.at_unix_ms;
            let mut stalled = Condition::new("Stalled", true, &err.reason, err.message.clone());
            stalled.last_transition_unix_ms = err.at_unix_ms;
            out.push(ready);
            out.push(stalled);
        }
        (None, Some(r)) => {
            let mut ready = Condition::new(
                "Ready",
                true,
                "Built",
                format!("generation {} of {} ({})", r.generation, r.revision, r.digest),
            );
            ready.last_transition_unix_ms = r.created_unix_ms;
            out.push(ready);
        }
        (None, None) => {
            out.push(Condition::new("Ready", false, "Pending", "no artifact built yet"));
            out.push(Condition::new("Reconciling", true, "Pending", "waiting for the first build"));
        }
    }
    // A Helm bundle's render warnings (a template calling `lookup`).
    if let Some(h) = build.and_then(|b| b.artifact.as_ref()).and_then(|a| a.helm.as_ref())
        && !h.warnings.is_empty()
    {
        out.push(Condition::new("Warning", true, "HelmRenderWarning", h.warnings.join("; ")));
    }
    // A `rollbackOnFailure` Helm bundle whose last upgrade was rolled back.
    if let Some(b) = view.fleet.bundles.get(bundle)
        && crate::domain::helmops::is_helm_rollback(&b.spec)
        && let Some((reason, rows)) =
            view.rollouts.get(bundle).and_then(|r| crate::domain::helmops::rollback_report(r))
    {
        let msg = crate::domain::helmops::rollback_message(bundle, &reason, &rows);
        out.push(Condition::new("RolledBack", true, "HelmRolledBack", msg));
    }
    out
}

fn bundle_view(view: &FleetView, name: &str, sel: &LabelSelector) -> Option<pb::BundleView> {
    let b = view.fleet.bundles.get(name)?;
    let record = view.records.get(name);
    let cells: Vec<_> = view
        .clusters
        .values()
        .filter(|e| targets(view, &b.spec, e) && sel.matches(&e.record.labels))
        .map(|e| cell(view, e, name))
        .collect();
    Some(pb::BundleView {
        name: name.into(),
        source: b.spec.source.clone(),
        path: b.spec.path.clone(),
        revision: record.map(|r| r.revision.clone()).unwrap_or_default(),
        digest: record.map(|r| r.digest.clone()).unwrap_or_default(),
        generation: record.map(|r| r.generation).unwrap_or(0),
        suspended: b.spec.suspend || view.suspended.contains(name),
        conditions: build_conditions(view, name).iter().map(condition_to_pb).collect(),
        summary: Some(summary_to_pb(&count(&cells))),
        clusters: cells,
        depends_on: b.spec.depends_on.clone(),
        size: record.map(|r| r.size).unwrap_or(0),
        variants: view
            .placements
            .values()
            .filter_map(|p| match p.get(name) {
                Some(crate::domain::desired::Placed::Variant(k)) => Some(k),
                _ => None,
            })
            .collect::<std::collections::BTreeSet<_>>()
            .len() as u32,
        helm: record.and_then(|r| helm_chart(&r.statement)),
    })
}

/// The chart named by a signed statement, for a Helm bundle.
fn helm_chart(statement: &[u8]) -> Option<pb::HelmChartRef> {
    let st: convoy_artifact::Statement = serde_json::from_slice(statement).ok()?;
    st.helm.map(|h| pb::HelmChartRef {
        chart: h.chart,
        version: h.version,
        chart_digest: h.chart_digest,
        values_digest: h.values_digest,
    })
}

fn event_filter(r: &pb::ListEventsRequest) -> EventFilter {
    EventFilter {
        cluster: (!r.cluster.is_empty()).then(|| r.cluster.clone()),
        bundle: (!r.bundle.is_empty()).then(|| r.bundle.clone()),
        min_severity: severity_from_pb(r.min_severity),
        after_id: r.after_id,
        limit: if r.limit == 0 { 100 } else { (r.limit as usize).min(10_000) },
    }
}

async fn list_events(core: &Core, f: EventFilter) -> Result<Vec<crate::domain::StoredEvent>, Status> {
    let store = core.store.clone();
    tokio::task::spawn_blocking(move || store.list_events(&f))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(status)
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::fleet_server::Fleet for FleetService {
    type FollowEventsStream = BoxStream<pb::StoredEvent>;

    async fn list_clusters(
        &self,
        req: Request<pb::ListClustersRequest>,
    ) -> Result<Response<pb::ListClustersResponse>, Status> {
        let _t = self.timed("ListClusters");
        self.core.admin(&req)?;
        let sel = selector(&req.get_ref().label_selector)?;
        let view = self.core.state.view();
        let clusters = view
            .clusters
            .values()
            .filter(|e| sel.matches(&e.record.labels))
            .map(|e| cluster_pb(e, &cluster_cells(&view, e)))
            .collect();
        Ok(Response::new(pb::ListClustersResponse { clusters }))
    }

    async fn get_cluster(
        &self,
        req: Request<pb::GetClusterRequest>,
    ) -> Result<Response<pb::ClusterDetail>, Status> {
        let _t = self.timed("GetCluster");
        self.core.admin(&req)?;
        let name = &req.get_ref().name;
        let view = self.core.state.view();
        let e = view
            .clusters
            .get(name)
            .ok_or_else(|| Status::not_found(format!("cluster {name:?} is not registered")))?;
        let cells = cluster_cells(&view, e);
        Ok(Response::new(pb::ClusterDetail { cluster: Some(cluster_pb(e, &cells)), bundles: cells }))
    }

    async fn list_bundles(
        &self,
        req: Request<pb::ListBundlesRequest>,
    ) -> Result<Response<pb::ListBundlesResponse>, Status> {
        let _t = self.timed("ListBundles");
        self.core.admin(&req)?;
        let r = req.get_ref();
        let sel = selector(&r.cluster_selector)?;
        let phase = match r.phase.trim() {
            "" => None,
            p => Some(
                Phase::parse(p).ok_or_else(|| Status::invalid_argument(format!("unknown phase {p:?}")))?,
            ),
        };
        let view = self.core.state.view();
        let bundles = view
            .fleet
            .bundles
            .keys()
            .filter_map(|n| bundle_view(&view, n, &sel))
            .filter(|b| {
                phase.is_none_or(|p| b.clusters.iter().any(|c| super::convert::phase_from_pb(c.phase) == p))
            })
            .collect();
        Ok(Response::new(pb::ListBundlesResponse { bundles }))
    }

    async fn get_bundle(
        &self,
        req: Request<pb::GetBundleRequest>,
    ) -> Result<Response<pb::BundleView>, Status> {
        let _t = self.timed("GetBundle");
        self.core.admin(&req)?;
        let r = req.get_ref();
        let sel = selector(&r.cluster_selector)?;
        let view = self.core.state.view();
        bundle_view(&view, &r.name, &sel)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("bundle {:?} is not in the fleet config", r.name)))
    }

    async fn list_sources(
        &self,
        req: Request<pb::ListSourcesRequest>,
    ) -> Result<Response<pb::ListSourcesResponse>, Status> {
        let _t = self.timed("ListSources");
        self.core.admin(&req)?;
        let statuses = self.core.pipeline.statuses().borrow().clone();
        let view = self.core.state.view();
        let mut sources: Vec<pb::SourceView> = statuses.values().map(source_to_pb).collect();
        // Sources in the config that the pipeline has not reported on yet.
        for (name, s) in &view.fleet.sources {
            if !statuses.contains_key(name) {
                sources.push(pb::SourceView {
                    name: name.clone(),
                    url: s.spec.url.clone(),
                    suspended: s.spec.suspend,
                    interval_seconds: u32::try_from(s.spec.interval.get().as_secs()).unwrap_or(u32::MAX),
                    conditions: vec![condition_to_pb(&Condition::new(
                        "Ready",
                        false,
                        "Pending",
                        "not fetched yet",
                    ))],
                    ..Default::default()
                });
            }
        }
        sources.extend(crate::grpc::convert::pending_chart_sources(&view.fleet, &statuses));
        sources.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(pb::ListSourcesResponse { sources }))
    }

    async fn list_events(
        &self,
        req: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let _t = self.timed("ListEvents");
        self.core.admin(&req)?;
        let events = list_events(&self.core, event_filter(req.get_ref())).await?;
        Ok(Response::new(pb::ListEventsResponse { events: events.iter().map(stored_event_to_pb).collect() }))
    }

    async fn follow_events(
        &self,
        req: Request<pb::ListEventsRequest>,
    ) -> Result<Response<Self::FollowEventsStream>, Status> {
        let caller = self.core.admin(&req)?;
        // An admin certificate's stream ends when that certificate is revoked.
        let mut admin_cert = match caller {
            Caller::Admin { name, serial: Some(serial) } => {
                Some((self.core.admins.subscribe(), name, serial))
            }
            _ => None,
        };
        let filter = event_filter(req.get_ref());
        // Subscribe first, then read the backlog: nothing falls in between.
        let mut sub = self.core.events.subscribe();
        let backlog = list_events(&self.core, filter.clone()).await?;
        let (tx, rx) = mpsc::channel(64);
        let core = self.core.clone();
        tokio::spawn(
            async move {
                let mut last = filter.after_id;
                for e in backlog {
                    last = last.max(e.id);
                    if tx.send(Ok(stored_event_to_pb(&e))).await.is_err() {
                        return;
                    }
                }
                loop {
                    let e = tokio::select! {
                        _ = core.drain.cancelled() => {
                            let _ = tx.send(Err(Status::unavailable("the hub is shutting down"))).await;
                            return;
                        }
                        _ = tx.closed() => return,
                        Some(refused) = admin_cert_refused(&mut admin_cert) => {
                            let _ = tx.send(Err(super::rejection(refused))).await;
                            return;
                        }
                        r = sub.recv() => r,
                    };
                    let batch = match e {
                        Ok(e) => vec![(*e).clone()],
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            // Too slow for the live feed: catch up from the store.
                            let f = EventFilter { after_id: last, limit: 10_000, ..filter.clone() };
                            match list_events(&core, f).await {
                                Ok(v) => v,
                                Err(s) => {
                                    let _ = tx.send(Err(s)).await;
                                    return;
                                }
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    for e in batch {
                        if e.id <= last || !(EventFilter { after_id: last, ..filter.clone() }).matches(&e) {
                            continue;
                        }
                        last = e.id;
                        if tx.send(Ok(stored_event_to_pb(&e))).await.is_err() {
                            return;
                        }
                    }
                }
            }
            .instrument(info_span!("follow_events")),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn reconcile(&self, req: Request<pb::ObjectRef>) -> Result<Response<pb::ActionResponse>, Status> {
        let _t = self.timed("Reconcile");
        self.core.admin(&req)?;
        let r = req.into_inner();
        let source = match pb::ObjectKind::try_from(r.kind).unwrap_or(pb::ObjectKind::Unspecified) {
            pb::ObjectKind::Source => {
                if !self.core.state.view().fleet.has_source(&r.name) {
                    return Err(Status::not_found(format!("source {:?} is not in the fleet config", r.name)));
                }
                r.name.clone()
            }
            pb::ObjectKind::Bundle => {
                let view = self.core.state.view();
                let b = view.fleet.bundles.get(&r.name).ok_or_else(|| {
                    Status::not_found(format!("bundle {:?} is not in the fleet config", r.name))
                })?;
                b.spec.source.clone()
            }
            pb::ObjectKind::Unspecified => {
                return Err(Status::invalid_argument("kind must be source or bundle"));
            }
        };
        self.core.pipeline.reconcile(&source).map_err(status)?;
        info!(source = %source, "reconcile requested");
        Ok(Response::new(pb::ActionResponse { message: format!("source {source} will be fetched now") }))
    }

    async fn suspend(&self, req: Request<pb::ObjectRef>) -> Result<Response<pb::ActionResponse>, Status> {
        let _t = self.timed("Suspend");
        self.core.admin(&req)?;
        self.suspend_resume(req.into_inner(), true).await
    }

    async fn resume(&self, req: Request<pb::ObjectRef>) -> Result<Response<pb::ActionResponse>, Status> {
        let _t = self.timed("Resume");
        self.core.admin(&req)?;
        self.suspend_resume(req.into_inner(), false).await
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let _t = self.timed("CreateToken");
        self.core.admin(&req)?;
        let r = req.into_inner();
        let labels = parse_labels([convoy_core::labels::format(&r.labels).as_str()])
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let out = self
            .core
            .state
            .create_token(TokenInput {
                cluster: (!r.cluster.is_empty()).then_some(r.cluster),
                labels,
                ttl: Duration::from_secs(r.ttl_seconds),
                single_use: r.single_use,
                name_prefix: (!r.name_prefix.is_empty()).then_some(r.name_prefix),
                agent_label_keys: r.agent_label_keys,
            })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateTokenResponse {
            token: out.token,
            token_id: out.id,
            expires_unix_ms: out.expires_unix_ms,
            ca_pem: self.core.ca_pem.clone(),
            trusted_keys_pem: self.core.trusted_keys_pem.clone(),
        }))
    }

    async fn get_rollout(
        &self,
        req: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<pb::RolloutView>, Status> {
        let _t = self.timed("GetRollout");
        self.core.admin(&req)?;
        super::rollout::get(&self.core, &req.into_inner().bundle).map(Response::new)
    }

    async fn rollout_action(
        &self,
        req: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        let _t = self.timed("RolloutAction");
        let caller = self.core.admin(&req)?;
        super::rollout::action(&self.core, &caller, req.into_inner()).await.map(Response::new)
    }

    async fn revoke_cluster(
        &self,
        req: Request<pb::RevokeClusterRequest>,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        let _t = self.timed("RevokeCluster");
        self.core.admin(&req)?;
        let name = req.into_inner().name;
        self.core.state.revoke(name.clone()).await.map_err(status)?;
        Ok(Response::new(pb::ActionResponse {
            message: format!("cluster {name} revoked; its certificates no longer work"),
        }))
    }

    async fn revoke_admin(
        &self,
        req: Request<pb::RevokeAdminRequest>,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        let _t = self.timed("RevokeAdmin");
        let caller = self.core.admin(&req)?;
        let r = req.into_inner();
        let target = match (r.name.trim(), r.serial.trim()) {
            (n, "") if !n.is_empty() => RevokeTarget::Name(n.to_string()),
            ("", s) if !s.is_empty() => RevokeTarget::Serial(s.to_string()),
            _ => return Err(Status::invalid_argument("give exactly one of an admin name or a serial")),
        };
        let by = match &caller {
            Caller::Admin { name, serial: Some(s) } => format!("{name} (certificate {s})"),
            Caller::Admin { name, serial: None } => name.clone(),
            _ => "?".into(),
        };
        let revoked = self.core.admins.revoke(&target, &by).await.map_err(status)?;
        let list: Vec<String> = revoked.iter().map(|r| format!("{} ({})", r.serial, r.name)).collect();
        Ok(Response::new(pb::ActionResponse {
            message: format!("admin certificate(s) revoked: {}; they no longer work", list.join(", ")),
        }))
    }

    async fn set_cluster_labels(
        &self,
        req: Request<pb::SetClusterLabelsRequest>,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        let _t = self.timed("SetClusterLabels");
        self.core.admin(&req)?;
        let r = req.into_inner();
        self.core.state.set_labels(r.name.clone(), r.labels.into_iter().collect()).await.map_err(status)?;
        Ok(Response::new(pb::ActionResponse {
            message: format!("labels of cluster {} replaced; bundles re-targeted", r.name),
        }))
    }

    async fn set_cluster_vars(
        &self,
        req: Request<pb::SetClusterVarsRequest>,
    ) -> Result<Response<pb::SetClusterVarsResponse>, Status> {
        let _t = self.timed("SetClusterVars");
        self.core.admin(&req)?;
        let r = req.into_inner();
        let vars =
            self.core.state.set_vars(r.name, r.set.into_iter().collect(), r.unset).await.map_err(status)?;
        Ok(Response::new(pb::SetClusterVarsResponse { vars: vars.into_iter().collect() }))
    }

    async fn render_bundle(
        &self,
        req: Request<pb::RenderBundleRequest>,
    ) -> Result<Response<pb::RenderBundleResponse>, Status> {
        let _t = self.timed("RenderBundle");
        self.core.admin(&req)?;
        let r = req.into_inner();
        let view = self.core.state.view();
        let render = crate::variants::explain_for(&view, &r.bundle, &r.cluster).map_err(status)?;
        let pipeline = self.core.pipeline.clone();
        let out = tokio::task::spawn_blocking(move || crate::variants::render_response(&*pipeline, render))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(status)?;
        Ok(Response::new(pb::RenderBundleResponse {
            files: out.files.into_iter().map(|(path, content)| pb::RenderedFile { path, content }).collect(),
            variant: out.variant,
            digest: out.digest,
            generation: out.generation,
            explain: out.explain,
            error: out.error,
        }))
    }

    async fn run_tests(
        &self,
        req: Request<pb::RunTestsRequest>,
    ) -> Result<Response<pb::RunTestsResponse>, Status> {
        let _t = self.timed("RunTests");
        let caller = self.core.admin(&req)?;
        let r = req.into_inner();
        let view = self.core.state.view();
        let entry = view.clusters.get(&r.cluster);
        let input = crate::domain::commands::RunTestsInput {
            cluster_known: entry.is_some(),
            cluster_revoked: entry.is_some_and(|e| e.record.revoked),
            bundle_known: view.fleet.bundles.contains_key(&r.bundle),
            deployed_helm: entry.and_then(|e| {
                e.shared.desired().bundles.get(&r.bundle).map(|d| helm_chart(&d.record.statement).is_some())
            }),
            applied_generation: entry
                .and_then(|e| e.shared.statuses().get(&r.bundle).map(|s| s.status.applied_generation))
                .unwrap_or(0),
        };
        let request_id = format!("{:032x}", rand::random::<u128>());
        let rec = crate::domain::commands::run_tests(
            &r.cluster,
            &r.bundle,
            &input,
            request_id.clone(),
            r.timeout_seconds,
            self.core.clock.now_ms(),
        )
        .map_err(super::rejection)?;
        let generation = rec.generation;
        // Durable before visible: stored first (on any replica), then sent by
        // whichever replica holds the agent's stream (crate::commands).
        let out = self
            .core
            .writer
            .commit(vec![crate::store::Write::PutCommand(rec.clone())])
            .await
            .map_err(status)?;
        if !matches!(out.first(), Some(crate::store::WriteOutcome::CommandQueued(true))) {
            return Err(Status::resource_exhausted(format!(
                "cluster {:?} has {} commands pending already (not yet answered by its agent, nor expired); retry later",
                r.cluster,
                crate::domain::commands::MAX_PENDING
            )));
        }
        self.core.commands.insert(rec.clone());
        let entry = entry.expect("checked by the decision");
        let here = entry.shared.has_session();
        crate::commands::offer(&entry.shared, &rec, self.core.clock.now_ms());
        info!(caller = %caller.identity(), cluster = %r.cluster, bundle = %r.bundle, generation, request = %request_id, connected_here = here, "helm tests queued for the agent");
        Ok(Response::new(pb::RunTestsResponse { request_id, generation }))
    }
}

impl FleetService {
    async fn suspend_resume(
        &self,
        r: pb::ObjectRef,
        suspend: bool,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        let verb = if suspend { "suspended" } else { "resumed" };
        match pb::ObjectKind::try_from(r.kind).unwrap_or(pb::ObjectKind::Unspecified) {
            pb::ObjectKind::Bundle => {
                self.core.state.set_suspended(r.name.clone(), suspend).await.map_err(status)?;
                Ok(Response::new(pb::ActionResponse { message: format!("bundle {} {verb}", r.name) }))
            }
            pb::ObjectKind::Source => {
                // The state actor owns it: stored first, then handed to the pipeline.
                self.core.state.set_source_suspended(r.name.clone(), suspend).await.map_err(status)?;
                Ok(Response::new(pb::ActionResponse { message: format!("source {} {verb}", r.name) }))
            }
            pb::ObjectKind::Unspecified => Err(Status::invalid_argument("kind must be source or bundle")),
        }
    }
}

/// Resolves when the followed admin certificate stops being honoured (with
/// the refusal), never for the admin token or once the registry is gone.
async fn admin_cert_refused(
    cert: &mut Option<(tokio::sync::watch::Receiver<Arc<crate::domain::admins::AdminCerts>>, String, String)>,
) -> Option<crate::domain::Rejection> {
    let Some((rx, name, serial)) = cert.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
        let certs = rx.borrow_and_update().clone();
        if let Err(r) = crate::domain::admins::honoured(&certs, name, serial, crate::now_ms()) {
            return Some(r);
        }
    }
}
