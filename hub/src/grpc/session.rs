//! One agent's Sync stream: Hello, then the ack and the desired-state snapshot;
//! then outbox entries in, stored in batches and acknowledged, and
//! desired-state updates out whenever the cluster's desired set changes.
//!
//! Flow control: each session owns a small bounded queue toward its agent.
//! Desired state is read through the cluster's `watch`, which keeps only the
//! latest value; while the agent is slow to read, changes collapse into one
//! diff against what was last sent. A slow agent therefore holds a few
//! messages of memory and never slows the fan-out to others.
//!
//! Commands (`convoy test`: crate::domain::commands) are not desired state:
//! they are stored first (crate::commands), then arrive on the session's own
//! bounded queue (from the Fleet RPC on this replica, or the change feed for
//! one committed on another), and at session start the cluster's pending
//! records are read from the store. A session sends each request id once,
//! in order, never coalesced with desired-state changes or acks. A command a
//! session did not get to send stays stored and is sent by the agent's next
//! session, on whichever replica, until it is answered or expires.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use convoy_proto::v1 as pb;
use convoy_proto::v1::agent_message::Msg as In;
use convoy_proto::v1::hub_message::Msg as Out;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::domain::commands::AgentCommand;
use crate::domain::desired::{ClusterDesired, diff};
use crate::domain::{AgentBatch, OutboxEntry, StatusRecord};
use crate::grpc::Core;
use crate::grpc::convert::{deployment_to_pb, event_from_pb, status_from_pb};
use crate::state::{ClusterEntry, ClusterShared};
use crate::store::{Write, WriteOutcome};
use crate::{Result, now_ms};
use convoy_core::status::BundleStatus;

/// Commands queued for one session: twice the pending bound of a cluster
/// (crate::domain::commands::MAX_PENDING), for resends that overlap.
const COMMAND_QUEUE: usize = 2 * crate::domain::commands::MAX_PENDING;

/// How many request ids a session remembers having sent (it sends each once).
const SENT_KEPT: usize = 64;

/// Entries received but not yet submitted are bounded; past this the session
/// stops reading from the agent until the store catches up.
const MAX_PENDING: usize = 1024;

type Reply = Result<pb::HubMessage, Status>;

/// Validate the Hello, send the ack and snapshot, and start the session task.
pub async fn start(
    core: Arc<Core>,
    entry: ClusterEntry,
    mut inbound: Streaming<pb::AgentMessage>,
) -> std::result::Result<ReceiverStream<Reply>, Status> {
    let name = entry.record.name.clone();
    let hello = match tokio::time::timeout(core.sessions.hello_timeout, inbound.message()).await {
        Ok(Ok(Some(pb::AgentMessage { msg: Some(In::Hello(h)) }))) => h,
        Ok(Ok(Some(_))) => {
            return Err(Status::invalid_argument("the first message on a Sync stream must be Hello"));
        }
        Ok(Ok(None)) => return Err(Status::cancelled("the stream closed before Hello")),
        Ok(Err(s)) => return Err(s),
        Err(_) => return Err(Status::deadline_exceeded("no Hello in time")),
    };
    core.metrics.message("in", "hello");
    let shared = entry.shared.clone();
    let now = now_ms();
    shared.set_agent_version(&hello.agent_version);
    shared.set_age_recipients(&hello.age_recipients);
    if shared.set_kube(&hello.kube_version, &hello.api_versions) {
        // `cluster.kubernetesVersion` may be used: recompute this cluster's
        // variants before its snapshot is taken below.
        core.state.refresh_variants(name.clone()).await.map_err(crate::grpc::status)?;
    }
    shared.touch(now);
    if core.store.is_shared() {
        // The other replicas (the rollout leader) learn at once that the
        // agent is connected here, not at the next liveness tick (crate::ha).
        drop(core.writer.submit(vec![Write::PutLiveness(vec![(name.clone(), shared.liveness())])]).await);
    }
    let epoch = hello.outbox_epoch;
    let store = core.store.clone();
    let n = name.clone();
    let acked = tokio::task::spawn_blocking(move || store.last_seq(&n, epoch))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(crate::grpc::status)?;

    // What the agent says it has applied fills cells the hub knows nothing about.
    let statuses = shared.statuses();
    let seeds: Vec<StatusRecord> = hello
        .applied
        .iter()
        .filter(|a| !a.bundle.is_empty() && !statuses.contains_key(&a.bundle))
        .map(|a| StatusRecord {
            status: BundleStatus {
                bundle: a.bundle.clone(),
                generation: a.generation,
                revision: a.revision.clone(),
                digest: a.digest.clone(),
                applied_generation: a.generation,
                applied_revision: a.revision.clone(),
                message: "applied (reported at connect)".into(),
                ..Default::default()
            },
            ..Default::default()
        })
        .collect();
    // In as many commits as the store's transaction bounds take.
    let mut seeds = seeds;
    while !seeds.is_empty() {
        let rest = seeds.split_off(crate::store::seed_fitting(&name, &seeds, core.writer.bound()));
        drop(core.writer.submit(vec![Write::SeedStatuses { cluster: name.clone(), statuses: seeds }]).await);
        seeds = rest;
    }
    // A hub behind what its agents hold continues above them (crate::state).
    if !hello.applied.is_empty() {
        let held =
            hello.applied.iter().take(4096).map(|a| (a.bundle.clone(), a.generation, a.digest.clone()));
        core.state.report_applied(name.clone(), held.collect()).await;
    }

    // Customized bundles join a cluster's desired set once the hub has
    // computed its variants after start: a snapshot before that would remove them.
    if !core.state.wait_ready(std::time::Duration::from_secs(30)).await {
        return Err(Status::unavailable("the hub is still computing desired state; retry"));
    }
    let (tx, rx) = mpsc::channel(core.sessions.send_queue.max(2));
    let mut desired = shared.subscribe_desired();
    let snapshot = desired.borrow_and_update().clone();
    let _ = tx.try_send(Ok(ack(acked)));
    let _ = tx.try_send(Ok(snapshot_msg(&snapshot)));
    core.metrics.message("out", "ack");
    core.metrics.message("out", "snapshot");
    core.metrics.desired_pushes.inc();

    let token = core.drain.child_token();
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let id = shared.begin_session(token.clone(), cmd_tx);
    // The cluster's pending commands, read after the session registered: one
    // committed later reaches it through its queue (the session sends each
    // request id once).
    let mut initial = Vec::new();
    if core.commands.has_pending(&name) {
        let store = core.store.clone();
        let n = name.clone();
        match tokio::task::spawn_blocking(move || store.commands(&n)).await {
            Ok(Ok(recs)) => {
                let now = core.clock.now_ms();
                let mut recs: Vec<_> = recs.into_iter().filter(|c| !c.expired(now)).collect();
                // In the order they were asked for.
                recs.sort_by(|a, b| {
                    (a.created_unix_ms, &a.request_id).cmp(&(b.created_unix_ms, &b.request_id))
                });
                initial = recs.iter().map(|c| c.command()).collect();
            }
            Ok(Err(e)) => {
                warn!(cluster = %name, error = %e, "cannot read the pending commands; they are sent at the next connect")
            }
            Err(e) => {
                warn!(cluster = %name, error = %e, "cannot read the pending commands; they are sent at the next connect")
            }
        }
    }
    core.metrics.connected_agents.inc();
    info!(cluster = %name, epoch, acked, bundles = snapshot.bundles.len(), agent_version = %hello.agent_version, "agent connected");
    let session = Session {
        core: core.clone(),
        shared,
        name: name.clone(),
        epoch,
        last_sent: snapshot,
        stored_seq: acked,
        received_seq: acked,
        pending: Vec::new(),
        queue_depth: 0,
        guard: crate::limits::InputGuard::new(),
        sent: VecDeque::new(),
        initial,
    };
    tokio::spawn(
        async move {
            let reason = session.run(inbound, tx, desired, cmd_rx, token, id).await;
            debug!(reason, "sync session ended");
        }
        .instrument(info_span!("sync", cluster = %name)),
    );
    Ok(ReceiverStream::new(rx))
}

fn ack(seq: u64) -> pb::HubMessage {
    pb::HubMessage { msg: Some(Out::Ack(pb::Ack { acked_seq: seq })) }
}

fn command_msg(c: AgentCommand) -> pb::HubMessage {
    match c {
        AgentCommand::RunTests { request_id, bundle, generation, timeout_seconds } => pb::HubMessage {
            msg: Some(Out::RunTests(pb::RunTests { request_id, bundle, generation, timeout_seconds })),
        },
    }
}

fn snapshot_msg(d: &ClusterDesired) -> pb::HubMessage {
    pb::HubMessage {
        msg: Some(Out::Snapshot(pb::DesiredState {
            version: d.version,
            bundles: d.bundles.values().map(|b| deployment_to_pb(b)).collect(),
        })),
    }
}

struct Session {
    core: Arc<Core>,
    shared: Arc<ClusterShared>,
    name: String,
    epoch: u64,
    last_sent: Arc<ClusterDesired>,
    /// The highest seq the store holds (the last ack).
    stored_seq: u64,
    /// The highest seq accepted into `pending` or stored.
    received_seq: u64,
    pending: Vec<(u64, OutboxEntry)>,
    queue_depth: i64,
    /// Input limits of this stream (crate::limits).
    guard: crate::limits::InputGuard,
    /// The request ids of the commands this session sent, newest last.
    sent: VecDeque<String>,
    /// The cluster's pending commands read at start, sent first.
    initial: Vec<AgentCommand>,
}

impl Session {
    async fn run(
        mut self,
        mut inbound: Streaming<pb::AgentMessage>,
        tx: mpsc::Sender<Reply>,
        mut desired: watch::Receiver<Arc<ClusterDesired>>,
        mut commands: mpsc::Receiver<AgentCommand>,
        token: CancellationToken,
        id: u64,
    ) -> &'static str {
        let mut out: VecDeque<pb::HubMessage> = VecDeque::new();
        for cmd in std::mem::take(&mut self.initial) {
            if self.first_send(&cmd) {
                debug!(?cmd, "pending command for the agent");
                out.push_back(command_msg(cmd));
            }
        }
        let mut inflight: Option<oneshot::Receiver<Result<Vec<WriteOutcome>>>> = None;
        let mut dirty = false;
        let idle = self.core.sessions.idle_timeout;
        let mut last_heard = Instant::now();
        let reason = loop {
            self.track_queue(&tx, out.len());
            tokio::select! {
                biased;
                _ = token.cancelled() => break self.close_reason(&tx).await,
                r = async { inflight.as_mut().expect("guarded").await }, if inflight.is_some() => {
                    inflight = None;
                    match r {
                        Ok(Ok(outcomes)) => {
                            if let Some(WriteOutcome::Batch(b)) = outcomes.into_iter().next() {
                                // Answers stored: their commands were deleted with them.
                                for e in &b.events {
                                    if let Some(rid) = crate::domain::commands::answered(&e.event) {
                                        self.core.commands.remove(&self.name, rid);
                                    }
                                }
                                self.stored_seq = b.acked_seq;
                                out.push_back(ack(b.acked_seq));
                            }
                        }
                        Ok(Err(e)) => {
                            warn!(error = %e, "cannot store agent reports; closing the stream so the agent resends");
                            let _ = tx.send(Err(Status::unavailable("the hub cannot store reports right now"))).await;
                            break "store failed";
                        }
                        Err(_) => break "hub shutting down",
                    }
                    if !self.pending.is_empty() {
                        inflight = Some(self.submit().await);
                    }
                }
                permit = tx.reserve(), if !out.is_empty() || dirty => {
                    let Ok(permit) = permit else { break "agent went away" };
                    if let Some(m) = out.pop_front() {
                        let kind = if matches!(m.msg, Some(Out::RunTests(_))) { "run_tests" } else { "ack" };
                        self.core.metrics.message("out", kind);
                        permit.send(Ok(m));
                    } else {
                        dirty = false;
                        let cur = desired.borrow_and_update().clone();
                        let d = diff(&self.last_sent.bundles, &cur.bundles);
                        self.last_sent = cur.clone();
                        if !d.is_empty() {
                            self.core.metrics.message("out", "update");
                            self.core.metrics.desired_pushes.inc();
                            permit.send(Ok(pb::HubMessage { msg: Some(Out::Update(pb::DesiredStateUpdate {
                                version: cur.version,
                                upserts: d.upserts.iter().map(|b| deployment_to_pb(b)).collect(),
                                removed: d.removed,
                            }))}));
                        }
                    }
                }
                // Commands queue behind what is already queued and are sent
                // once each; acks raised later never merge into them.
                Some(cmd) = commands.recv() => {
                    if self.first_send(&cmd) {
                        debug!(?cmd, "command for the agent");
                        out.push_back(command_msg(cmd));
                    }
                }
                changed = desired.changed(), if !dirty => {
                    if changed.is_err() {
                        break "cluster removed";
                    }
                    dirty = true;
                }
                msg = inbound.message(), if self.pending.len() < MAX_PENDING => {
                    last_heard = Instant::now();
                    match msg {
                        Ok(Some(m)) => {
                            self.shared.touch(now_ms());
                            match self.on_message(m) {
                                Ok(Some(dup_ack)) if inflight.is_none() && self.pending.is_empty() => {
                                    // Acks are cumulative: a queued one is raised, not repeated,
                                    // so a flood of dropped input queues one message.
                                    match out.back_mut().and_then(|m| m.msg.as_mut()) {
                                        Some(Out::Ack(a)) => a.acked_seq = a.acked_seq.max(dup_ack),
                                        _ => out.push_back(ack(dup_ack)),
                                    }
                                }
                                Ok(_) => {}
                                Err(s) => {
                                    let _ = tx.send(Err(s)).await;
                                    break "protocol error";
                                }
                            }
                            if inflight.is_none() && !self.pending.is_empty() {
                                inflight = Some(self.submit().await);
                            }
                        }
                        Ok(None) => break "agent closed the stream",
                        Err(s) => {
                            debug!(error = %s, "agent stream error");
                            break "agent stream error";
                        }
                    }
                }
                _ = tokio::time::sleep_until(last_heard + idle) => {
                    warn!(idle_secs = idle.as_secs(), "no message from the agent; closing the stream");
                    break "idle timeout";
                }
            }
        };
        self.track_queue(&tx, 0);
        self.shared.touch(now_ms());
        self.shared.end_session(id);
        self.core.metrics.connected_agents.dec();
        info!(cluster = %self.name, reason, "agent disconnected");
        reason
    }

    /// Whether `cmd` was not sent on this session yet (then it is recorded
    /// as sent): the store, the feed and the Fleet RPC may each offer it.
    fn first_send(&mut self, cmd: &AgentCommand) -> bool {
        let rid = cmd.request_id();
        if self.sent.iter().any(|s| s == rid) {
            return false;
        }
        if self.sent.len() >= SENT_KEPT {
            self.sent.pop_front();
        }
        self.sent.push_back(rid.to_string());
        true
    }

    /// Account this session's queued messages in the global gauge.
    fn track_queue(&mut self, tx: &mpsc::Sender<Reply>, out_len: usize) {
        let depth = (tx.max_capacity() - tx.capacity() + out_len) as i64;
        if depth != self.queue_depth {
            self.core.metrics.send_queue_depth.inc_by(depth - self.queue_depth);
            self.queue_depth = depth;
        }
    }

    async fn close_reason(&self, tx: &mpsc::Sender<Reply>) -> &'static str {
        let (status, reason) = if self.core.drain.is_cancelled() {
            (Status::unavailable("the hub is shutting down; reconnect later"), "hub draining")
        } else if self.core.state.view().clusters.get(&self.name).is_none_or(|e| e.record.revoked) {
            (Status::permission_denied(format!("cluster {:?} was revoked", self.name)), "revoked")
        } else {
            (Status::aborted("replaced by a newer Sync stream of the same cluster"), "replaced")
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(Err(status))).await;
        reason
    }

    /// Handle one agent message. Returns `Some(seq)` when the message was a
    /// duplicate that needs only a re-ack.
    fn on_message(&mut self, m: pb::AgentMessage) -> std::result::Result<Option<u64>, Status> {
        let (seq, entry) = match m.msg {
            Some(In::Status(s)) => {
                self.core.metrics.message("in", "status");
                let st = s.status.ok_or_else(|| Status::invalid_argument("StatusReport without status"))?;
                if st.bundle.is_empty() {
                    return Err(Status::invalid_argument("StatusReport.status.bundle is empty"));
                }
                // Statuses only for bundles in this cluster's desired set.
                let desired = self.shared.desired().bundles.contains_key(&st.bundle);
                (s.seq, self.guard.status(status_from_pb(&st), desired, now_ms()))
            }
            Some(In::Event(e)) => {
                self.core.metrics.message("in", "event");
                let ev = e.event.ok_or_else(|| Status::invalid_argument("EventReport without event"))?;
                (e.seq, self.guard.event(event_from_pb(&ev), now_ms()))
            }
            Some(In::Heartbeat(_)) => {
                self.core.metrics.message("in", "heartbeat");
                return Ok(None);
            }
            Some(In::Hello(_)) => {
                return Err(Status::invalid_argument("Hello may only be the first message"));
            }
            None => return Err(Status::invalid_argument("empty AgentMessage")),
        };
        if seq <= self.received_seq {
            // Already stored or queued: acknowledged cumulatively.
            return Ok(Some(self.stored_seq));
        }
        self.received_seq = seq;
        let entry = match entry {
            crate::limits::Verdict::Store(e) => e,
            crate::limits::Verdict::Report(e, kind) => {
                self.core
                    .metrics
                    .agent_input_refused
                    .get_or_create(&crate::metrics::ResultLabels { result: kind })
                    .inc();
                e
            }
            crate::limits::Verdict::Drop(kind) => {
                self.core
                    .metrics
                    .agent_input_refused
                    .get_or_create(&crate::metrics::ResultLabels { result: kind })
                    .inc();
                // Nothing to store: acknowledged at once (when nothing is
                // pending) so that the agent's outbox moves on.
                return Ok(Some(seq));
            }
        };
        self.pending.push((seq, entry));
        Ok(None)
    }

    async fn submit(&mut self) -> oneshot::Receiver<Result<Vec<WriteOutcome>>> {
        // As many entries as one commit carries (etcd's transaction bounds):
        // the rest go with the next submit, once this one is stored.
        let n = crate::store::agent_batch_fitting(&self.name, &self.pending, self.core.writer.bound());
        let rest = self.pending.split_off(n);
        let entries = std::mem::replace(&mut self.pending, rest);
        let batch = AgentBatch { cluster: self.name.clone(), epoch: self.epoch, entries };
        self.core.writer.submit(vec![Write::AgentBatch(batch)]).await
    }
}
