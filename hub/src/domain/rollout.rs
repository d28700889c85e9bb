//! Progressive rollouts of one bundle over health-gated waves: the pure state
//! machine ([`decide`], [`command`]), its durable record ([`RolloutRecord`])
//! and the desired-set overlay ([`overlay`]) that holds clusters on their
//! previous deployment until the rollout admits them. No I/O, no clock: the
//! caller passes `now`.
//!
//! The machine measures soak and progress deadlines on the hub's clock, from
//! the tick at which it first observed a state (never from agent timestamps),
//! so a skewed agent clock cannot shorten a soak.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use convoy_core::rollout::{Gate, NotInAnyWave, OfflineClusters, OnFailure, RolloutSpec};
use convoy_core::selector::Labels;
use convoy_core::status::{Phase, Severity};
use serde::{Deserialize, Serialize};

use super::DeploymentRecord;
use super::desired::{ClusterBundles, Deployment};

/// What the driver observed of one targeted cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterObs {
    /// The cluster's labels (wave selectors).
    pub labels: Labels,
    /// The ClusterGroups it belongs to (wave `clusterGroup`).
    pub groups: Vec<String>,
    /// Whether its agent holds a Sync stream.
    pub connected: bool,
    /// Whether it reports the generation and digest the rollout gave it.
    pub on_new: bool,
    /// The phase it reports for the bundle.
    pub phase: Phase,
    /// Its status message (quoted in failure reasons).
    pub message: String,
}

/// The clusters the bundle targets now, by name. A cluster absent from it
/// has left the bundle's targets.
pub type Observations = BTreeMap<String, ClusterObs>;

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "camelCase")]
pub enum RolloutStatus {
    /// The current wave is in progress (or starts at the next tick).
    Progressing,
    /// The current wave waits for `convoy rollout approve`.
    AwaitingApproval,
    /// Stopped where it is (operator pause, or a failed wave with `onFailure: pause`).
    Paused {
        /// Why.
        reason: String,
    },
    /// Every wave is done: every cluster has the new revision.
    Complete,
    /// A wave failed (or an operator asked) and every cluster that had the new
    /// revision got its previous content back as a new signed generation.
    RolledBack {
        /// Why.
        reason: String,
    },
    /// Stopped by an operator: clusters keep what they have.
    Aborted,
    /// Ended by a newer revision (`onNewRevision: supersede`).
    Superseded,
}

impl RolloutStatus {
    /// Whether the rollout moves no more.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            RolloutStatus::Complete
                | RolloutStatus::RolledBack { .. }
                | RolloutStatus::Aborted
                | RolloutStatus::Superseded
        )
    }

    /// A short name for tables.
    pub fn name(&self) -> &'static str {
        match self {
            RolloutStatus::Progressing => "Progressing",
            RolloutStatus::AwaitingApproval => "AwaitingApproval",
            RolloutStatus::Paused { .. } => "Paused",
            RolloutStatus::Complete => "Complete",
            RolloutStatus::RolledBack { .. } => "RolledBack",
            RolloutStatus::Aborted => "Aborted",
            RolloutStatus::Superseded => "Superseded",
        }
    }
}

/// Where one cluster stands in the rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "camelCase")]
pub enum ClusterStep {
    /// In a started wave, not admitted yet: keeps its previous deployment.
    Pending,
    /// Given the new revision at `at_ms`, not yet Ready on it.
    Admitted {
        /// When it was admitted.
        at_ms: i64,
    },
    /// Ready on the new revision since `since_ms`, soaking.
    Soaking {
        /// Since when (first tick that saw it Ready).
        since_ms: i64,
        /// When it was admitted.
        admitted_ms: i64,
    },
    /// Ready for the whole soak.
    Done {
        /// When.
        at_ms: i64,
    },
    /// Counted as failed.
    Failed {
        /// Why.
        reason: String,
        /// Whether it had been given the new revision.
        admitted: bool,
    },
    /// Left out (offline with `skip`, or in no wave with `skip`): keeps its previous deployment.
    Skipped {
        /// Why.
        reason: String,
        /// Whether it had been given the new revision (a failure an
        /// operator resumed past): it keeps the new revision.
        #[serde(default)]
        admitted: bool,
    },
    /// Left the bundle's targets mid-rollout.
    Left,
    /// Given its previous content back as a new generation.
    RolledBack,
}

impl ClusterStep {
    /// Whether the cluster has been given the new revision (and keeps it).
    pub fn has_new(&self) -> bool {
        matches!(
            self,
            ClusterStep::Admitted { .. }
                | ClusterStep::Soaking { .. }
                | ClusterStep::Done { .. }
                | ClusterStep::Failed { admitted: true, .. }
                | ClusterStep::Skipped { admitted: true, .. }
        )
    }

    /// A short name for tables.
    pub fn name(&self) -> &'static str {
        match self {
            ClusterStep::Pending => "Pending",
            ClusterStep::Admitted { .. } => "Admitted",
            ClusterStep::Soaking { .. } => "Soaking",
            ClusterStep::Done { .. } => "Done",
            ClusterStep::Failed { .. } => "Failed",
            ClusterStep::Skipped { .. } => "Skipped",
            ClusterStep::Left => "Left",
            ClusterStep::RolledBack => "RolledBack",
        }
    }

    fn settled(&self) -> bool {
        matches!(
            self,
            ClusterStep::Done { .. }
                | ClusterStep::Failed { .. }
                | ClusterStep::Skipped { .. }
                | ClusterStep::Left
                | ClusterStep::RolledBack
        )
    }
}

/// One cluster of the rollout: its wave (index) and step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterProgress {
    /// Index of its wave in the spec (`None`: in no wave, skipped).
    pub wave: Option<usize>,
    /// Where it stands.
    pub step: ClusterStep,
}

/// One wave's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveProgress {
    /// The wave's name.
    pub name: String,
    /// When its membership was snapshotted and it started.
    pub started_ms: Option<i64>,
    /// When it completed.
    pub completed_ms: Option<i64>,
    /// Whether an operator approved it (gate `approval`).
    pub approved: bool,
    /// Whether it failed its threshold.
    pub failed: bool,
}

/// The state of one bundle's rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutState {
    /// The revision rolled out (opaque to the machine: the driver's label).
    pub revision: String,
    /// When the rollout began.
    pub started_ms: i64,
    /// Where it stands.
    pub status: RolloutStatus,
    /// Index of the current wave (`waves.len()` once all are done).
    pub wave: usize,
    /// Each wave's progress, in spec order.
    pub waves: Vec<WaveProgress>,
    /// Clusters snapshotted into a wave (or skipped), by name.
    pub clusters: BTreeMap<String, ClusterProgress>,
    /// A newer revision waiting for this rollout to end (`onNewRevision: queue`).
    pub queued: Option<String>,
}

impl RolloutState {
    /// A rollout of `revision` that starts at wave 1 at the next [`decide`].
    pub fn new(spec: &RolloutSpec, revision: &str, now: i64) -> Self {
        Self {
            revision: revision.into(),
            started_ms: now,
            status: RolloutStatus::Progressing,
            wave: 0,
            waves: spec
                .waves
                .iter()
                .map(|w| WaveProgress { name: w.name.clone(), ..Default::default() })
                .collect(),
            clusters: BTreeMap::new(),
            queued: None,
        }
    }

    /// Whether `cluster` has been given the new revision.
    pub fn has_new(&self, cluster: &str) -> bool {
        self.clusters.get(cluster).is_some_and(|c| c.step.has_new())
    }

    /// The name of the current wave, or "" once all are done.
    pub fn wave_name(&self) -> &str {
        self.waves.get(self.wave).map(|w| w.name.as_str()).unwrap_or("")
    }
}

/// What the driver must do after a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Give these clusters the new revision (their computed deployment).
    Admit(Vec<String>),
    /// Keep these clusters on their previous deployment (snapshotted into a
    /// wave that does not admit them yet, or skipped).
    Hold(Vec<String>),
    /// A cluster became Ready on the new revision: its soak starts.
    StartSoak(String),
    /// A wave failed its threshold.
    FailWave {
        /// The wave.
        wave: String,
        /// The failed clusters and why.
        failed: Vec<(String, String)>,
    },
    /// Re-sign each cluster's previous content as a new, higher generation.
    Rollback(Vec<String>),
    /// The rollout stopped where it is.
    Pause(String),
    /// Record an event (Warning and above also raise an alert).
    Event {
        /// How serious.
        severity: Severity,
        /// CamelCase reason.
        reason: &'static str,
        /// Names the wave, the clusters and the reasons.
        message: String,
    },
}

fn event(effects: &mut Vec<Effect>, severity: Severity, reason: &'static str, message: String) {
    effects.push(Effect::Event { severity, reason, message });
}

/// The wave a cluster belongs to: the first whose selector or group matches;
/// clusters matching none go to the last wave (`last-wave`) or nowhere (`skip`).
pub fn wave_of(spec: &RolloutSpec, obs: &ClusterObs) -> Option<usize> {
    spec.waves.iter().position(|w| w.matches(&obs.labels, &obs.groups)).or_else(|| {
        match spec.clusters_not_in_any_wave {
            NotInAnyWave::LastWave => spec.waves.len().checked_sub(1),
            NotInAnyWave::Skip => None,
        }
    })
}

/// One tick of the rollout: from the state, the spec, what the clusters
/// report and the time, the next state and what to do.
pub fn decide(
    state: &RolloutState,
    spec: &RolloutSpec,
    obs: &Observations,
    now: i64,
) -> (RolloutState, Vec<Effect>) {
    let mut s = state.clone();
    let mut fx = Vec::new();
    if s.status.is_terminal() {
        return (s, fx);
    }
    // A cluster that left the targets does not block the rollout.
    let mut left = Vec::new();
    for (name, c) in s.clusters.iter_mut() {
        if !obs.contains_key(name) && !c.step.settled() {
            c.step = ClusterStep::Left;
            left.push(name.clone());
        }
    }
    if !left.is_empty() {
        event(
            &mut fx,
            Severity::Info,
            "RolloutClusterLeft",
            format!("clusters {} left the targets of the rollout of {}", left.join(","), s.revision),
        );
    }
    adopt_waves(&mut s, spec, &mut fx);
    if matches!(s.status, RolloutStatus::Paused { .. }) {
        return (s, fx);
    }
    // Waves may complete and start within one tick; each pass moves one wave.
    for _ in 0..=spec.waves.len() {
        if s.wave >= spec.waves.len() {
            s.status = RolloutStatus::Complete;
            event(
                &mut fx,
                Severity::Info,
                "RolloutComplete",
                format!("revision {} reached every wave", s.revision),
            );
            break;
        }
        let w = s.wave;
        let ws = &spec.waves[w];
        if s.waves[w].started_ms.is_none() {
            if ws.gate == Gate::Approval && !s.waves[w].approved {
                if s.status != RolloutStatus::AwaitingApproval {
                    s.status = RolloutStatus::AwaitingApproval;
                    event(
                        &mut fx,
                        Severity::Info,
                        "RolloutAwaitingApproval",
                        format!("wave {} of revision {} waits for approval", ws.name, s.revision),
                    );
                }
                break;
            }
            start_wave(&mut s, spec, obs, now, &mut fx);
        }
        s.status = RolloutStatus::Progressing;
        if !step_wave(&mut s, spec, obs, now, &mut fx) {
            break;
        }
    }
    (s, fx)
}

/// The fleet config changed the rollout's waves mid-rollout: keep the
/// progress of waves that kept their name, start new ones fresh, and carry on
/// from the first wave not completed. Clusters of a removed wave stay where
/// they are (out of every wave).
fn adopt_waves(s: &mut RolloutState, spec: &RolloutSpec, fx: &mut Vec<Effect>) {
    if s.waves.iter().map(|w| w.name.as_str()).eq(spec.waves.iter().map(|w| w.name.as_str())) {
        return;
    }
    let old = std::mem::take(&mut s.waves);
    s.waves = spec
        .waves
        .iter()
        .map(|w| {
            old.iter()
                .find(|o| o.name == w.name)
                .cloned()
                .unwrap_or_else(|| WaveProgress { name: w.name.clone(), ..Default::default() })
        })
        .collect();
    for c in s.clusters.values_mut() {
        c.wave =
            c.wave.and_then(|i| old.get(i)).and_then(|o| spec.waves.iter().position(|w| w.name == o.name));
    }
    s.wave = s.waves.iter().position(|w| w.completed_ms.is_none()).unwrap_or(s.waves.len());
    event(
        fx,
        Severity::Warning,
        "RolloutWavesChanged",
        format!(
            "the waves of the rollout of {} changed to [{}]; it continues at wave {}",
            s.revision,
            spec.waves.iter().map(|w| w.name.as_str()).collect::<Vec<_>>().join(","),
            s.wave_name()
        ),
    );
}

/// Snapshot the membership of the current wave and start it.
fn start_wave(s: &mut RolloutState, spec: &RolloutSpec, obs: &Observations, now: i64, fx: &mut Vec<Effect>) {
    let w = s.wave;
    let mut members = Vec::new();
    let mut skipped = Vec::new();
    for (name, o) in obs {
        if s.clusters.contains_key(name) {
            continue;
        }
        match wave_of(spec, o) {
            Some(i) if i == w => {
                s.clusters
                    .insert(name.clone(), ClusterProgress { wave: Some(w), step: ClusterStep::Pending });
                members.push(name.clone());
            }
            None => {
                s.clusters.insert(
                    name.clone(),
                    ClusterProgress {
                        wave: None,
                        step: ClusterStep::Skipped {
                            reason: "in no wave (clustersNotInAnyWave: skip)".into(),
                            admitted: false,
                        },
                    },
                );
                skipped.push(name.clone());
            }
            Some(_) => {}
        }
    }
    s.waves[w].started_ms = Some(now);
    event(
        fx,
        Severity::Info,
        "RolloutWaveStarted",
        format!(
            "wave {} of revision {} started with clusters [{}]",
            spec.waves[w].name,
            s.revision,
            members.join(",")
        ),
    );
    if !skipped.is_empty() {
        event(
            fx,
            Severity::Warning,
            "RolloutClustersSkipped",
            format!(
                "clusters [{}] match no wave of the rollout of {} and keep their previous deployment",
                skipped.join(","),
                s.revision
            ),
        );
        fx.push(Effect::Hold(skipped));
    }
    if !members.is_empty() {
        fx.push(Effect::Hold(members));
    }
}

/// Advance the current wave's clusters; returns true when the wave completed
/// (the caller then starts the next one).
fn step_wave(
    s: &mut RolloutState,
    spec: &RolloutSpec,
    obs: &Observations,
    now: i64,
    fx: &mut Vec<Effect>,
) -> bool {
    let w = s.wave;
    let ws = &spec.waves[w];
    let deadline = i64::try_from(ws.progress_deadline.get().as_millis()).unwrap_or(i64::MAX);
    let soak = i64::try_from(ws.soak.get().as_millis()).unwrap_or(i64::MAX);
    let members: Vec<String> =
        s.clusters.iter().filter(|(_, c)| c.wave == Some(w)).map(|(n, _)| n.clone()).collect();
    let mut newly_failed = Vec::new();
    let mut newly_skipped = Vec::new();
    for name in &members {
        let Some(o) = obs.get(name) else { continue };
        let c = s.clusters.get_mut(name).expect("member");
        let next = match &c.step {
            ClusterStep::Pending if !o.connected => match spec.offline_clusters {
                OfflineClusters::Wait => None,
                OfflineClusters::Skip => {
                    newly_skipped.push(name.clone());
                    Some(ClusterStep::Skipped {
                        reason: "offline (offlineClusters: skip)".into(),
                        admitted: false,
                    })
                }
                OfflineClusters::Fail => Some(ClusterStep::Failed {
                    reason: "offline (offlineClusters: fail)".into(),
                    admitted: false,
                }),
            },
            ClusterStep::Admitted { at_ms } => {
                let late = now.saturating_sub(*at_ms) > deadline;
                if o.on_new && o.phase == Phase::Ready && soak == 0 {
                    // No soak: done as soon as it is Ready, so the wave can
                    // complete and the next one start in this same decision.
                    Some(ClusterStep::Done { at_ms: now })
                } else if o.on_new && o.phase == Phase::Ready {
                    fx.push(Effect::StartSoak(name.clone()));
                    Some(ClusterStep::Soaking { since_ms: now, admitted_ms: *at_ms })
                } else if o.on_new && o.phase == Phase::Stalled {
                    Some(ClusterStep::Failed { reason: format!("Stalled: {}", o.message), admitted: true })
                } else if late && o.on_new {
                    Some(ClusterStep::Failed {
                        reason: format!("{:?} past progressDeadline: {}", o.phase, o.message),
                        admitted: true,
                    })
                } else if late {
                    Some(ClusterStep::Failed {
                        reason: "did not report the new generation within progressDeadline".into(),
                        admitted: true,
                    })
                } else {
                    None
                }
            }
            ClusterStep::Soaking { since_ms, .. } => {
                if !o.on_new || o.phase != Phase::Ready {
                    Some(ClusterStep::Failed {
                        reason: format!("health regression during soak: {:?}: {}", o.phase, o.message),
                        admitted: true,
                    })
                } else if now.saturating_sub(*since_ms) >= soak {
                    Some(ClusterStep::Done { at_ms: now })
                } else {
                    None
                }
            }
            _ => None,
        };
        if let Some(step) = next {
            if let ClusterStep::Failed { reason, .. } = &step {
                newly_failed.push((name.clone(), reason.clone()));
            }
            c.step = step;
        }
    }
    if !newly_skipped.is_empty() {
        event(
            fx,
            Severity::Warning,
            "RolloutClustersSkipped",
            format!(
                "wave {}: offline clusters [{}] are skipped and keep their previous deployment",
                ws.name,
                newly_skipped.join(",")
            ),
        );
    }
    if !newly_failed.is_empty() {
        event(
            fx,
            Severity::Warning,
            "RolloutClusterFailed",
            format!("wave {}: {}", ws.name, fmt_reasons(&newly_failed)),
        );
    }
    let total = members.len();
    let failed: Vec<(String, String)> = members
        .iter()
        .filter_map(|n| match &s.clusters[n].step {
            ClusterStep::Failed { reason, .. } => Some((n.clone(), reason.clone())),
            _ => None,
        })
        .collect();
    if failed.len() > ws.failure_threshold.resolve(total) {
        fail_wave(s, spec, failed, fx);
        return false;
    }
    // Admit within maxConcurrency and maxUnavailable.
    let count = |f: &dyn Fn(&ClusterStep) -> bool| members.iter().filter(|n| f(&s.clusters[*n].step)).count();
    let in_flight = count(&|st| matches!(st, ClusterStep::Admitted { .. } | ClusterStep::Soaking { .. }));
    let mut unavailable =
        count(&|st| matches!(st, ClusterStep::Admitted { .. } | ClusterStep::Failed { admitted: true, .. }));
    let cap = ws.max_concurrency.map(|a| a.resolve(total).max(1)).unwrap_or(total);
    let max_unavailable = ws.max_unavailable.map(|a| a.resolve(total).max(1)).unwrap_or(usize::MAX);
    let mut admitted = Vec::new();
    for name in &members {
        if in_flight + admitted.len() >= cap || unavailable >= max_unavailable {
            break;
        }
        let connected = obs.get(name).is_some_and(|o| o.connected);
        let c = s.clusters.get_mut(name).expect("member");
        if c.step == ClusterStep::Pending && connected {
            c.step = ClusterStep::Admitted { at_ms: now };
            admitted.push(name.clone());
            unavailable += 1;
        }
    }
    if !admitted.is_empty() {
        fx.push(Effect::Admit(admitted));
    }
    if members.iter().all(|n| s.clusters[n].step.settled()) {
        s.waves[w].completed_ms = Some(now);
        event(
            fx,
            Severity::Info,
            "RolloutWaveCompleted",
            format!(
                "wave {} of revision {} completed ({} clusters{})",
                ws.name,
                s.revision,
                total,
                if failed.is_empty() {
                    String::new()
                } else {
                    format!(", tolerated failures: {}", fmt_reasons(&failed))
                }
            ),
        );
        s.wave += 1;
        return true;
    }
    false
}

fn fmt_reasons(failed: &[(String, String)]) -> String {
    failed.iter().map(|(n, r)| format!("{n}: {r}")).collect::<Vec<_>>().join("; ")
}

fn fail_wave(s: &mut RolloutState, spec: &RolloutSpec, failed: Vec<(String, String)>, fx: &mut Vec<Effect>) {
    let ws = &spec.waves[s.wave];
    s.waves[s.wave].failed = true;
    let reason = format!("wave {} failed its threshold: {}", ws.name, fmt_reasons(&failed));
    fx.push(Effect::FailWave { wave: ws.name.clone(), failed });
    match spec.on_failure {
        OnFailure::Pause => {
            event(
                fx,
                Severity::Error,
                "RolloutFailed",
                format!("{reason}; the rollout of {} is paused", s.revision),
            );
            s.status = RolloutStatus::Paused { reason: reason.clone() };
            fx.push(Effect::Pause(reason));
        }
        OnFailure::Rollback => rollback(s, reason, fx),
    }
}

fn rollback(s: &mut RolloutState, reason: String, fx: &mut Vec<Effect>) {
    let mut back = Vec::new();
    for (name, c) in s.clusters.iter_mut() {
        if c.step.has_new() {
            c.step = ClusterStep::RolledBack;
            back.push(name.clone());
        } else if c.step == ClusterStep::Pending {
            c.step = ClusterStep::Skipped { reason: "rolled back before its turn".into(), admitted: false };
        }
    }
    event(
        fx,
        Severity::Error,
        "RolloutRolledBack",
        format!(
            "{reason}; rolling back revision {} on clusters [{}] to their previous content",
            s.revision,
            back.join(",")
        ),
    );
    s.status = RolloutStatus::RolledBack { reason };
    fx.push(Effect::Rollback(back));
}

/// An operator's command on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Pass the current wave's approval gate.
    Approve,
    /// Stop where it is.
    Pause,
    /// Continue after a pause.
    Resume,
    /// End it: clusters keep what they have.
    Abort,
    /// Give every cluster that had the new revision its previous content back.
    Rollback,
}

impl Command {
    /// The lower-case verb.
    pub fn verb(self) -> &'static str {
        match self {
            Command::Approve => "approve",
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Abort => "abort",
            Command::Rollback => "rollback",
        }
    }
}

/// Why an operator's rollout command was refused: a value the gRPC edge
/// maps to a status code ([`Refusal::kind`]) and the CLI prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The bundle has no rollout (none was ever started, or it is unknown).
    NoRollout,
    /// The rollout has ended (complete, aborted, rolled back, superseded).
    Ended {
        /// The revision it rolled out.
        revision: String,
        /// Its terminal status (`Complete`, ...).
        status: &'static str,
    },
    /// `approve` with every wave started.
    NoWaveLeft,
    /// `approve` of a wave that is not waiting for its approval.
    NotAwaitingApproval {
        /// The current wave.
        wave: String,
    },
    /// `pause` of a paused rollout.
    AlreadyPaused,
    /// `resume` of a rollout that is not paused.
    NotPaused,
    /// Another hub replica wrote the rollout record after this replica read
    /// it: the command was decided on a stale copy and is not applied.
    ChangedOnAnotherReplica {
        /// The stored record's version.
        stored: u64,
        /// The version this replica decided on.
        seen: u64,
    },
}

/// The class of a [`Refusal`], which the gRPC edge maps to a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// Nothing to act on (gRPC `NOT_FOUND`).
    NotFound,
    /// The rollout's state does not allow the command (`FAILED_PRECONDITION`).
    State,
    /// A concurrent write on another replica; retrying may succeed (`ABORTED`).
    Conflict,
}

impl Refusal {
    /// The class of this refusal.
    pub fn kind(&self) -> RefusalKind {
        match self {
            Refusal::NoRollout => RefusalKind::NotFound,
            Refusal::Ended { .. }
            | Refusal::NoWaveLeft
            | Refusal::NotAwaitingApproval { .. }
            | Refusal::AlreadyPaused
            | Refusal::NotPaused => RefusalKind::State,
            Refusal::ChangedOnAnotherReplica { .. } => RefusalKind::Conflict,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NoRollout => write!(f, "the bundle has no rollout"),
            Refusal::Ended { revision, status } => {
                write!(f, "the rollout of {revision} is {status} already")
            }
            Refusal::NoWaveLeft => write!(f, "no wave left to approve"),
            Refusal::NotAwaitingApproval { wave } => write!(f, "wave {wave} is not waiting for approval"),
            Refusal::AlreadyPaused => write!(f, "the rollout is paused already"),
            Refusal::NotPaused => write!(f, "the rollout is not paused"),
            Refusal::ChangedOnAnotherReplica { stored, seen } => write!(
                f,
                "the rollout changed on another hub replica (stored version {stored}, this replica's \
                 decision was made on version {seen}); try again"
            ),
        }
    }
}

/// Apply an operator's command; `who` names the caller in the event. A
/// [`Refusal`] (a command that makes no sense in this state) leaves the
/// state as is.
pub fn command(
    state: &RolloutState,
    cmd: Command,
    who: &str,
    now: i64,
) -> Result<(RolloutState, Vec<Effect>), Refusal> {
    let _ = now;
    let mut s = state.clone();
    let mut fx = Vec::new();
    if s.status.is_terminal() {
        return Err(Refusal::Ended { revision: s.revision.clone(), status: s.status.name() });
    }
    match cmd {
        Command::Approve => {
            let Some(w) = s.waves.get_mut(s.wave) else {
                return Err(Refusal::NoWaveLeft);
            };
            if w.started_ms.is_some() || w.approved {
                return Err(Refusal::NotAwaitingApproval { wave: w.name.clone() });
            }
            w.approved = true;
            let name = w.name.clone();
            if s.status == RolloutStatus::AwaitingApproval {
                s.status = RolloutStatus::Progressing;
            }
            event(
                &mut fx,
                Severity::Info,
                "RolloutApproved",
                format!("{who} approved wave {name} of {}", s.revision),
            );
        }
        Command::Pause => {
            if matches!(s.status, RolloutStatus::Paused { .. }) {
                return Err(Refusal::AlreadyPaused);
            }
            let reason = format!("paused by {who}");
            s.status = RolloutStatus::Paused { reason: reason.clone() };
            event(
                &mut fx,
                Severity::Warning,
                "RolloutPaused",
                format!("{who} paused the rollout of {}", s.revision),
            );
            fx.push(Effect::Pause(reason));
        }
        Command::Resume => {
            if !matches!(s.status, RolloutStatus::Paused { .. }) {
                return Err(Refusal::NotPaused);
            }
            if s.waves.get(s.wave).is_some_and(|w| w.failed) {
                // Resuming a failed wave: its failures are tolerated from now on.
                let w = s.wave;
                s.waves[w].failed = false;
                for c in s.clusters.values_mut() {
                    if c.wave == Some(w)
                        && let ClusterStep::Failed { reason, admitted } = &c.step
                    {
                        c.step = ClusterStep::Skipped {
                            reason: format!("failed ({reason}), resumed by an operator"),
                            admitted: *admitted,
                        };
                    }
                }
            }
            s.status = RolloutStatus::Progressing;
            event(
                &mut fx,
                Severity::Info,
                "RolloutResumed",
                format!("{who} resumed the rollout of {}", s.revision),
            );
        }
        Command::Abort => {
            s.status = RolloutStatus::Aborted;
            event(
                &mut fx,
                Severity::Warning,
                "RolloutAborted",
                format!("{who} aborted the rollout of {}; clusters keep what they have", s.revision),
            );
        }
        Command::Rollback => rollback(&mut s, format!("rollback requested by {who}"), &mut fx),
    }
    Ok((s, fx))
}

/// A newer revision arrived while `state` is not terminal: with `supersede`
/// the current rollout ends (the caller starts a new one); with `queue` it
/// is remembered and starts when this one ends. Returns whether the caller
/// starts the new rollout now.
pub fn on_new_revision(
    state: &RolloutState,
    spec: &RolloutSpec,
    revision: &str,
) -> (RolloutState, Vec<Effect>, bool) {
    let mut s = state.clone();
    let mut fx = Vec::new();
    if s.status.is_terminal() {
        return (s, fx, true);
    }
    match spec.on_new_revision {
        convoy_core::rollout::OnNewRevision::Supersede => {
            s.status = RolloutStatus::Superseded;
            event(
                &mut fx,
                Severity::Info,
                "RolloutSuperseded",
                format!(
                    "revision {revision} supersedes the rollout of {} (at wave {})",
                    s.revision,
                    s.wave_name()
                ),
            );
            (s, fx, true)
        }
        convoy_core::rollout::OnNewRevision::Queue => {
            s.queued = Some(revision.into());
            event(
                &mut fx,
                Severity::Info,
                "RolloutQueued",
                format!("revision {revision} waits for the rollout of {} to end", s.revision),
            );
            (s, fx, false)
        }
    }
}

/// Deployment records by cluster, each distinct record kept once: most
/// clusters of a rollout are held on the same previous record and given the
/// same new one, so 1,000 clusters share one or two records, in memory
/// (through `Arc`) and in the stored form (`{records: [...], clusters:
/// {name: index}}`). The older stored form, a plain map of cluster to
/// record, is still read.
#[derive(Debug, Clone, Default)]
pub struct ClusterRecords {
    by_cluster: BTreeMap<String, Arc<DeploymentRecord>>,
    /// The distinct records, by (generation, digest), to share on insert.
    pool: BTreeMap<(u64, String), Vec<Arc<DeploymentRecord>>>,
}

impl ClusterRecords {
    /// The record of `cluster`.
    pub fn get(&self, cluster: &str) -> Option<&DeploymentRecord> {
        self.by_cluster.get(cluster).map(|r| &**r)
    }

    /// Whether `cluster` has a record.
    pub fn contains_key(&self, cluster: &str) -> bool {
        self.by_cluster.contains_key(cluster)
    }

    /// Set the record of `cluster`, sharing an equal record already held.
    pub fn insert(&mut self, cluster: String, record: DeploymentRecord) {
        let same = self.pool.entry((record.generation, record.digest.clone())).or_default();
        let shared = match same.iter().find(|r| ***r == record) {
            Some(r) => r.clone(),
            None => {
                let r = Arc::new(record);
                same.push(r.clone());
                r
            }
        };
        self.by_cluster.insert(cluster, shared);
    }

    /// Every cluster's record, by cluster name.
    pub fn values(&self) -> impl Iterator<Item = &DeploymentRecord> {
        self.by_cluster.values().map(|r| &**r)
    }

    /// How many clusters have a record.
    pub fn len(&self) -> usize {
        self.by_cluster.len()
    }

    /// Whether no cluster has a record.
    pub fn is_empty(&self) -> bool {
        self.by_cluster.is_empty()
    }

    /// How many distinct records the clusters have.
    pub fn distinct(&self) -> usize {
        self.by_cluster.values().map(Arc::as_ptr).collect::<BTreeSet<_>>().len()
    }
}

/// Equal when every cluster has an equal record (however they are shared).
impl PartialEq for ClusterRecords {
    fn eq(&self, other: &Self) -> bool {
        self.by_cluster == other.by_cluster
    }
}

impl Eq for ClusterRecords {}

impl FromIterator<(String, DeploymentRecord)> for ClusterRecords {
    fn from_iter<I: IntoIterator<Item = (String, DeploymentRecord)>>(iter: I) -> Self {
        let mut out = Self::default();
        for (c, r) in iter {
            out.insert(c, r);
        }
        out
    }
}

impl<const N: usize> From<[(String, DeploymentRecord); N]> for ClusterRecords {
    fn from(a: [(String, DeploymentRecord); N]) -> Self {
        a.into_iter().collect()
    }
}

/// The stored form of [`ClusterRecords`].
#[derive(Serialize, Deserialize)]
struct StoredClusterRecords {
    records: Vec<DeploymentRecord>,
    clusters: BTreeMap<String, usize>,
}

impl Serialize for ClusterRecords {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        // Only the records some cluster has (a replaced one may linger in the pool).
        let mut records: Vec<DeploymentRecord> = Vec::new();
        let mut index: HashMap<*const DeploymentRecord, usize> = HashMap::new();
        let mut clusters = BTreeMap::new();
        for (c, r) in &self.by_cluster {
            let i = *index.entry(Arc::as_ptr(r)).or_insert_with(|| {
                records.push((**r).clone());
                records.len() - 1
            });
            clusters.insert(c.clone(), i);
        }
        StoredClusterRecords { records, clusters }.serialize(ser)
    }
}

impl<'de> Deserialize<'de> for ClusterRecords {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Shared(StoredClusterRecords),
            Plain(BTreeMap<String, DeploymentRecord>),
        }
        Ok(match Form::deserialize(de)? {
            Form::Plain(m) => m.into_iter().collect(),
            Form::Shared(StoredClusterRecords { records, clusters }) => {
                let mut out = Self::default();
                for (c, i) in clusters {
                    let r = records.get(i).cloned().ok_or_else(|| {
                        serde::de::Error::custom(format!("cluster {c}: no stored record {i}"))
                    })?;
                    out.insert(c, r);
                }
                out
            }
        })
    }
}

/// A rollout as stored: the machine's state and the signed deployments it
/// holds clusters on. Everything an agent may be sent is a signed record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRecord {
    /// The bundle.
    pub bundle: String,
    /// The machine's state.
    pub state: RolloutState,
    /// What each cluster had before the rollout began (its held deployment).
    pub held: ClusterRecords,
    /// What a cluster that had nothing recorded gets while held: the
    /// bundle's last completed revision (joiners get this).
    pub base: Option<DeploymentRecord>,
    /// What each admitted cluster was given (its computed deployment at admission).
    pub given: ClusterRecords,
    /// The re-signed previous content of each rolled-back cluster.
    pub rolled_back: ClusterRecords,
    /// The newest generation issued for the bundle: rollbacks and later
    /// builds go above it.
    pub max_generation: u64,
    /// Bumped by every write of the record: on a shared store (several hub
    /// replicas) a write must be above the stored version, so a replica
    /// deciding on a stale copy (another replica wrote in between) is
    /// refused instead of undoing the other's progress. 0 in records
    /// written before versions existed.
    #[serde(default)]
    pub version: u64,
}

impl RolloutRecord {
    /// The deployment record `cluster` should get while this rollout
    /// overlays the bundle, or `None` to let the computed one through.
    pub fn record_for(&self, cluster: &str) -> Option<&DeploymentRecord> {
        if self.state.status == RolloutStatus::Complete {
            // Done: the computed deployment passes through, except to
            // clusters the rollout skipped, which keep their previous one.
            return match self.state.clusters.get(cluster).map(|c| &c.step) {
                Some(ClusterStep::Skipped { admitted: false, .. }) => {
                    self.held.get(cluster).or(self.base.as_ref())
                }
                _ => None,
            };
        }
        if let Some(r) = self.rolled_back.get(cluster) {
            return Some(r);
        }
        if self.state.has_new(cluster) {
            return self.given.get(cluster);
        }
        self.held.get(cluster).or(self.base.as_ref())
    }

    /// The clusters that should be rolled back and have no re-signed record yet.
    pub fn pending_rollbacks(&self) -> BTreeSet<String> {
        self.state
            .clusters
            .iter()
            .filter(|(n, c)| c.step == ClusterStep::RolledBack && !self.rolled_back.contains_key(n))
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// The overlay: `bundles` is the cluster's computed set; each bundle with a
/// rollout in `rollouts` carries the deployment the rollout gives this
/// cluster instead (same apply options). Bundles no longer targeted stay
/// absent, as without rollouts.
pub fn overlay(rollouts: &BTreeMap<String, Arc<RolloutRecord>>, cluster: &str, bundles: &mut ClusterBundles) {
    if rollouts.is_empty() {
        return;
    }
    for (name, dep) in bundles.iter_mut() {
        let Some(r) = rollouts.get(name) else { continue };
        let Some(rec) = r.record_for(cluster) else { continue };
        if *dep.record == *rec {
            continue;
        }
        *dep = Arc::new(Deployment { record: Arc::new(rec.clone()), options: dep.options.clone() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use convoy_core::rollout::{Amount, OnNewRevision, WaveSpec};
    use convoy_core::selector::LabelSelector;

    const S: i64 = 1000;

    fn wave(name: &str, tier: &str) -> WaveSpec {
        WaveSpec {
            name: name.into(),
            selector: Some(LabelSelector {
                match_labels: [("tier".to_string(), tier.to_string())].into(),
                ..Default::default()
            }),
            cluster_group: None,
            max_concurrency: None,
            max_unavailable: None,
            soak: convoy_core::duration::HumanDuration::from_secs(10),
            progress_deadline: convoy_core::duration::HumanDuration::from_secs(60),
            failure_threshold: Amount::Count(0),
            gate: Gate::Auto,
        }
    }

    fn spec3() -> RolloutSpec {
        RolloutSpec {
            waves: vec![wave("w1", "a"), wave("w2", "b"), wave("w3", "c")],
            on_failure: OnFailure::Rollback,
            clusters_not_in_any_wave: NotInAnyWave::LastWave,
            offline_clusters: OfflineClusters::Wait,
            on_new_revision: OnNewRevision::Queue,
        }
    }

    fn obs(list: &[(&str, &str)]) -> Observations {
        list.iter()
            .map(|(n, tier)| {
                (
                    n.to_string(),
                    ClusterObs {
                        labels: convoy_core::selector::parse_labels([format!("tier={tier}").as_str()])
                            .unwrap(),
                        connected: true,
                        ..Default::default()
                    },
                )
            })
            .collect()
    }

    fn six() -> Observations {
        obs(&[("a1", "a"), ("a2", "a"), ("b1", "b"), ("b2", "b"), ("c1", "c"), ("c2", "c")])
    }

    fn set(o: &mut Observations, names: &[&str], on_new: bool, phase: Phase) {
        for n in names {
            let c = o.get_mut(*n).unwrap();
            c.on_new = on_new;
            c.phase = phase;
            c.message = format!("{phase:?} here");
        }
    }

    fn steps(s: &RolloutState) -> Vec<(String, &'static str)> {
        s.clusters.iter().map(|(n, c)| (n.clone(), c.step.name())).collect()
    }

    fn step(s: &RolloutState, n: &str) -> &'static str {
        s.clusters[n].step.name()
    }

    fn admitted(fx: &[Effect]) -> Vec<String> {
        fx.iter()
            .filter_map(|e| if let Effect::Admit(v) = e { Some(v.clone()) } else { None })
            .flatten()
            .collect()
    }

    fn reasons(fx: &[Effect]) -> Vec<&'static str> {
        fx.iter()
            .filter_map(|e| if let Effect::Event { reason, .. } = e { Some(*reason) } else { None })
            .collect()
    }

    /// With no soak, the decision that sees a wave's last cluster Ready
    /// completes the wave and admits the next one: the hub adds no tick per
    /// wave (the `rollout` benchmark measures what it adds in time).
    #[test]
    fn without_soak_one_decision_completes_a_wave_and_admits_the_next() {
        let mut spec = spec3();
        for w in &mut spec.waves {
            w.soak = convoy_core::duration::HumanDuration::from_secs(0);
        }
        let mut o = six();
        let (s, fx) = decide(&RolloutState::new(&spec, "rev2", 0), &spec, &o, 0);
        assert_eq!(admitted(&fx), ["a1", "a2"]);
        // Only a1 is Ready: it is done, the wave is not.
        set(&mut o, &["a1"], true, Phase::Ready);
        let (s, fx) = decide(&s, &spec, &o, S);
        assert_eq!(step(&s, "a1"), "Done");
        assert!(admitted(&fx).is_empty() && !fx.contains(&Effect::StartSoak("a1".into())));
        assert_eq!(s.wave, 0);
        // a2 Ready: wave 1 completes and wave 2 is admitted in the same decision.
        set(&mut o, &["a2"], true, Phase::Ready);
        let (s, fx) = decide(&s, &spec, &o, 2 * S);
        assert_eq!(s.wave, 1);
        assert_eq!(admitted(&fx), ["b1", "b2"]);
        // Both later waves the same way; the rollout completes.
        set(&mut o, &["b1", "b2"], true, Phase::Ready);
        let (s, fx) = decide(&s, &spec, &o, 3 * S);
        assert_eq!(admitted(&fx), ["c1", "c2"]);
        set(&mut o, &["c1", "c2"], true, Phase::Ready);
        let (s, _) = decide(&s, &spec, &o, 4 * S);
        assert_eq!(s.status, RolloutStatus::Complete);
    }

    #[test]
    fn a_good_revision_rolls_wave_by_wave_with_soak() {
        let spec = spec3();
        let mut o = six();
        let s0 = RolloutState::new(&spec, "rev2", 0);
        // Tick 1: wave 1 starts, both admitted; waves 2 and 3 are not snapshotted.
        let (s, fx) = decide(&s0, &spec, &o, 0);
        assert_eq!(admitted(&fx), ["a1", "a2"]);
        assert!(reasons(&fx).contains(&"RolloutWaveStarted"));
        assert_eq!(steps(&s), [("a1".into(), "Admitted"), ("a2".into(), "Admitted")]);
        assert!(s.has_new("a1") && !s.has_new("b1"));
        // Ready on the new generation: the soak starts.
        set(&mut o, &["a1", "a2"], true, Phase::Ready);
        let (s, fx) = decide(&s, &spec, &o, 2 * S);
        assert!(fx.contains(&Effect::StartSoak("a1".into())));
        assert_eq!(step(&s, "a1"), "Soaking");
        // Mid-soak: nothing moves.
        let (s, fx) = decide(&s, &spec, &o, 11 * S);
        assert!(admitted(&fx).is_empty());
        assert_eq!(s.wave, 0);
        // Soak over: wave 1 completes and wave 2 starts in the same tick.
        let (s, fx) = decide(&s, &spec, &o, 12 * S);
        assert_eq!(step(&s, "a1"), "Done");
        assert_eq!(s.waves[0].completed_ms, Some(12 * S));
        assert_eq!(s.wave, 1);
        assert_eq!(admitted(&fx), ["b1", "b2"]);
        set(&mut o, &["b1", "b2"], true, Phase::Ready);
        let (s, _) = decide(&s, &spec, &o, 13 * S);
        let (s, fx) = decide(&s, &spec, &o, 23 * S);
        assert_eq!(admitted(&fx), ["c1", "c2"]);
        set(&mut o, &["c1", "c2"], true, Phase::Ready);
        let (s, _) = decide(&s, &spec, &o, 24 * S);
        let (s, fx) = decide(&s, &spec, &o, 34 * S);
        assert_eq!(s.status, RolloutStatus::Complete);
        assert!(reasons(&fx).contains(&"RolloutComplete"));
        // Terminal: nothing more.
        let (s2, fx) = decide(&s, &spec, &o, 99 * S);
        assert_eq!(s2, s);
        assert!(fx.is_empty());
    }

    #[test]
    fn a_ready_report_of_the_old_generation_does_not_start_the_soak() {
        let spec = spec3();
        let mut o = six();
        let (s, _) = decide(&RolloutState::new(&spec, "r", 0), &spec, &o, 0);
        set(&mut o, &["a1"], false, Phase::Ready);
        let (s, _) = decide(&s, &spec, &o, S);
        assert_eq!(step(&s, "a1"), "Admitted");
    }

    #[test]
    fn max_concurrency_admits_one_at_a_time() {
        let mut spec = spec3();
        spec.waves[0].max_concurrency = Some(Amount::Count(1));
        spec.waves[0].soak = convoy_core::duration::HumanDuration::from_secs(0);
        let mut o = six();
        let (s, fx) = decide(&RolloutState::new(&spec, "r", 0), &spec, &o, 0);
        assert_eq!(admitted(&fx), ["a1"]);
        assert_eq!(step(&s, "a2"), "Pending");
        let (s, fx) = decide(&s, &spec, &o, S);
        assert!(admitted(&fx).is_empty());
        set(&mut o, &["a1"], true, Phase::Ready);
        // Ready with no soak: done at once, and its slot goes to a2 in the
        // same decision.
        let (s, fx) = decide(&s, &spec, &o, 2 * S);
        assert_eq!(step(&s, "a1"), "Done");
        assert_eq!(admitted(&fx), ["a2"]);
    }

    #[test]
    fn percent_concurrency_rounds_up_to_one() {
        let mut spec = spec3();
        spec.waves[0].max_concurrency = Some(Amount::Percent(10));
        let (_, fx) = decide(&RolloutState::new(&spec, "r", 0), &spec, &six(), 0);
        assert_eq!(admitted(&fx), ["a1"]);
    }

    #[test]
    fn max_unavailable_counts_admitted_and_failed() {
        let mut spec = spec3();
        spec.waves[0].max_unavailable = Some(Amount::Count(1));
        spec.waves[0].failure_threshold = Amount::Count(1);
        let mut o = six();
        let (s, fx) = decide(&RolloutState::new(&spec, "r", 0), &spec, &o, 0);
        assert_eq!(admitted(&fx), ["a1"]);
        set(&mut o, &["a1"], true, Phase::Stalled);
        let (s, fx) = decide(&s, &spec, &o, S);
        // a1 failed (tolerated by the threshold) and still counts as unavailable.
        assert_eq!(step(&s, "a1"), "Failed");
        assert!(admitted(&fx).is_empty());
        assert!(reasons(&fx).contains(&"RolloutClusterFailed"));
    }

    #[test]
    fn stalled_fails_the_wave_and_rolls_back_only_what_got_the_new_revision() {
        let spec = spec3();
        let mut o = six();
        let (s, _) = decide(&RolloutState::new(&spec, "bad", 0), &spec, &o, 0);
        set(&mut o, &["a1"], true, Phase::Stalled);
        let (s, fx) = decide(&s, &spec, &o, S);
        assert!(matches!(s.status, RolloutStatus::RolledBack { .. }));
        let rb: Vec<_> = fx
            .iter()
            .filter_map(|e| if let Effect::Rollback(v) = e { Some(v.clone()) } else { None })
            .collect();
        assert_eq!(rb, vec![vec!["a1".to_string(), "a2".to_string()]]);
        let fw = fx.iter().find_map(|e| {
            if let Effect::FailWave { wave, failed } = e { Some((wave, failed)) } else { None }
        });
        let (wave, failed) = fw.unwrap();
        assert_eq!(wave, "w1");
        assert_eq!(failed[0].0, "a1");
        assert!(failed[0].1.contains("Stalled"));
        // The event names the wave, the clusters and the reasons.
        let msg = fx.iter().find_map(|e| match e {
            Effect::Event { reason: "RolloutRolledBack", message, .. } => Some(message.clone()),
            _ => None,
        });
        let msg = msg.unwrap();
        assert!(msg.contains("wave w1") && msg.contains("a1: Stalled") && msg.contains("[a1,a2]"), "{msg}");
        // Waves 2 and 3 were never snapshotted: they never saw the revision.
        assert!(!s.clusters.contains_key("b1") && !s.clusters.contains_key("c1"));
        assert!(!s.has_new("a1"));
    }

    #[test]
    fn not_ready_past_the_progress_deadline_fails() {
        let mut spec = spec3();
        spec.on_failure = OnFailure::Pause;
        let mut o = six();
        let (s, _) = decide(&RolloutState::new(&spec, "r", 0), &spec, &o, 0);
        set(&mut o, &["a1", "a2"], true, Phase::NotReady);
        let (s, fx) = decide(&s, &spec, &o, 60 * S);
        assert_eq!(s.status, RolloutStatus::Progressing, "{fx:?}");
        let (s, fx) = decide(&s, &spec, &o, 61 * S);
        assert!(matches!(&s.status, RolloutStatus::Paused { reason } if reason.contains("progressDeadline")));
        assert!(fx.iter().any(|e| matches!(e, Effect::Pause(_))));
        assert!(reasons(&fx).contains(&"RolloutFailed"));
        // Paused on failure: the clusters keep the new revision, nothing moves.
        assert!(s.has_new("a1"));
        let (s2, _) = decide(&s, &spec, &o, 99 * S);
        assert_eq!(s2.status, s.status);
    }

    #[test]
    fn a_cluster_that_never_reports_the_new_generation_fails_at_the_deadline() {
        let spec = spec3();
        let o = six();
        let (s, _) = decide(&RolloutState::new(&spec, "r", 0), &spec, &o, 0);
        let (s, _) = decide(&s, &spec, &o, 61 * S);
        assert!(matches!(&s.clusters["a1"].step, ClusterStep::RolledBack));
        assert!(
            matches!(&s.status, RolloutStatus::RolledBack { reason } if reason.contains("did not report"))
        );
    }

    #[test]
    fn a_regression_during_soak_fails() {
        let spec = spec3();
        let mut o = six();
        let (s, _) = decide(&RolloutState::new(&spec, "r", 0), &spec, &o, 0);
        set(&mut o, &["a1", "a2"], true, Phase::Ready);
        let (s, _) = decide(&s, &spec, &o, S);
        set(&mut o, &["a2"], true, Phase::NotReady);
        let (s, fx) = decide(&s, &spec, &o, 2 * S);
        assert!(matches!(s.status, RolloutStatus::RolledBack { .. }));
        let fw = fx
            .iter()
            .find_map(|e| if let Effect::FailWave { failed, .. } = e { Some(failed.clone()) } else { None });
        assert!(fw.unwrap()[0].1.contains("health regression during soak"));
    }

    #[test]
    fn a_tolerated_failure_lets_the_wave_complete() {
        let mut spec = spec3();
        spec.waves[0].failure_threshold = Amount::Percent(50);
        spec.waves[0].soak = convoy_core::duration::HumanDuration::from_secs(0);
        let mut o = six();
        let (s, _) = decide(&RolloutState::new(&spec, "r", 0), &spec, &o, 0);
        set(&mut o, &["a1"], true, Phase::Stalled);
        set(&mut o, &["a2"], true, Phase::Ready);
        // No soak: the decision that sees wave 1 Ready also moves on.
        let (s, fx) = decide(&s, &spec, &o, S);
        assert_eq!(s.wave, 1, "{fx:?}");
        assert_eq!(admitted(&fx), ["b1", "b2"]);
    }

    #[test]
    fn an_approval_gate_holds_the_wave_until_approved() {
        let mut spec = spec3();
        spec.waves[1].gate = Gate::Approval;
        spec.waves[0].soak = convoy_core::duration::HumanDuration::from_secs(0);
        let mut o = six();
        let (s, _) = decide(&RolloutState::new(&spec, "r", 0), &spec, &o, 0);
        set(&mut o, &["a1", "a2"], true, Phase::Ready);
        // No soak: the decision that sees wave 1 Ready also moves on.
        let (s, fx) = decide(&s, &spec, &o, S);
        assert_eq!(s.status, RolloutStatus::AwaitingApproval);
        assert!(reasons(&fx).contains(&"RolloutAwaitingApproval"));
        assert!(admitted(&fx).is_empty());
        // Still waiting later, without repeating the event.
        let (s, fx) = decide(&s, &spec, &o, 100 * S);
        assert_eq!(s.status, RolloutStatus::AwaitingApproval);
        assert!(fx.is_empty());
        let (s, fx) = command(&s, Command::Approve, "admin:alice", 101 * S).unwrap();
        let msg = format!("{fx:?}");
        assert!(msg.contains("admin:alice approved wave w2"), "{msg}");
        let (s, fx) = decide(&s, &spec, &o, 102 * S);
        assert_eq!(admitted(&fx), ["b1", "b2"]);
        assert_eq!(s.status, RolloutStatus::Progressing);
        // Approving twice is refused.
        assert_eq!(
            command(&s, Command::Approve, "x", 0).unwrap_err(),
            Refusal::NotAwaitingApproval { wave: "w2".into() }
        );
    }

    #[test]
    fn every_refusal_has_its_kind_and_names_its_reason() {
        let spec = spec3();
        // Approving when every wave has started: no wave left.
        let mut s = RolloutState::new(&spec, "r", 0);
        s.wave = s.waves.len();
        assert_eq!(command(&s, Command::Approve, "ops", 0).unwrap_err(), Refusal::NoWaveLeft);
        let all = [
            (Refusal::NoRollout, RefusalKind::NotFound, "no rollout"),
            (
                Refusal::Ended { revision: "r".into(), status: "Complete" },
                RefusalKind::State,
                "Complete already",
            ),
            (Refusal::NoWaveLeft, RefusalKind::State, "no wave left"),
            (
                Refusal::NotAwaitingApproval { wave: "eu".into() },
                RefusalKind::State,
                "wave eu is not waiting",
            ),
            (Refusal::AlreadyPaused, RefusalKind::State, "paused already"),
            (Refusal::NotPaused, RefusalKind::State, "not paused"),
            (
                Refusal::ChangedOnAnotherReplica { stored: 4, seen: 3 },
                RefusalKind::Conflict,
                "stored version 4, this replica's decision was made on version 3",
            ),
        ];
        for (r, kind, text) in all {
            assert_eq!(r.kind(), kind, "{r:?}");
            assert!(r.to_string().contains(text), "{r}");
        }
    }

    #[test]
    fn an_approval_given_ahead_of_the_gate_is_kept() {
        let mut spec = spec3();
        spec.waves[0].gate = Gate::Approval;
        let s = RolloutState::new(&spec, "r", 0);
        let (s, _) = command(&s, Command::Approve, "ops", 0).unwrap();
        let (_, fx) = decide(&s, &spec, &six(), S);
        assert_eq!(admitted(&fx), ["a1", "a2"]);
    }

    #[test]
    fn pause_resume_abort_and_operator_rollback() {
        let spec = spec3();
        let mut o = six();
        let (s, _) = decide(&RolloutState::new(&spec, "r", 0), &spec, &o, 0);
        let (s, fx) = command(&s, Command::Pause, "ops", S).unwrap();
        assert!(matches!(s.status, RolloutStatus::Paused { .. }));
        assert!(fx.iter().any(|e| matches!(e, Effect::Pause(_))));
        assert_eq!(command(&s, Command::Pause, "ops", S).unwrap_err(), Refusal::AlreadyPaused);
        // Paused: even a Ready cluster does not advance.
        set(&mut o, &["a1", "a2"], true, Phase::Ready);
        let (s, _) = decide(&s, &spec, &o, 2 * S);
        assert_eq!(step(&s, "a1"), "Admitted");
        let (s, _) = command(&s, Command::Resume, "ops", 3 * S).unwrap();
        assert_eq!(command(&s, Command::Resume, "ops", 3 * S).unwrap_err(), Refusal::NotPaused);
        let (s, _) = decide(&s, &spec, &o, 3 * S);
        assert_eq!(step(&s, "a1"), "Soaking");
        // Operator rollback.
        let (rb, fx) = command(&s, Command::Rollback, "ops", 4 * S).unwrap();
        assert!(matches!(&rb.status, RolloutStatus::RolledBack { reason } if reason.contains("ops")));
        assert!(fx.contains(&Effect::Rollback(vec!["a1".into(), "a2".into()])));
        assert_eq!(
            command(&rb, Command::Abort, "ops", 0).unwrap_err(),
            Refusal::Ended { revision: "r".into(), status: "RolledBack" }
        );
        // Abort: clusters keep what they have.
        let (ab, fx) = command(&s, Command::Abort, "ops", 4 * S).unwrap();
        assert_eq!(ab.status, RolloutStatus::Aborted);
        assert!(ab.has_new("a1") && !ab.has_new("b1"));
        assert!(reasons(&fx).contains(&"RolloutAborted"));
    }

    #[test]
    fn resuming_a_failed_wave_tolerates_its_failures() {
        let mut spec = spec3();
        spec.on_failure = OnFailure::Pause;
        spec.waves[0].soak = convoy_core::duration::HumanDuration::from_secs(0);
        let mut o = six();
        let (s, _) = decide(&RolloutState::new(&spec, "r", 0), &spec, &o, 0);
        set(&mut o, &["a1"], true, Phase::Stalled);
        set(&mut o, &["a2"], true, Phase::Ready);
        let (s, _) = decide(&s, &spec, &o, S);
        assert!(matches!(s.status, RolloutStatus::Paused { .. }));
        let (s, _) = command(&s, Command::Resume, "ops", 2 * S).unwrap();
        let (s, _) = decide(&s, &spec, &o, 3 * S);
        let (s, fx) = decide(&s, &spec, &o, 4 * S);
        assert_eq!(s.wave, 1, "{fx:?}");
        assert_eq!(step(&s, "a1"), "Skipped");
    }

    #[test]
    fn offline_clusters_wait() {
        let spec = spec3();
        let mut o = six();
        o.get_mut("a2").unwrap().connected = false;
        let (s, fx) = decide(&RolloutState::new(&spec, "r", 0), &spec, &o, 0);
        assert_eq!(admitted(&fx), ["a1"]);
        set(&mut o, &["a1"], true, Phase::Ready);
        let (s, _) = decide(&s, &spec, &o, S);
        let (s, _) = decide(&s, &spec, &o, 100 * S);
        // a1 is done, a2 waits: the wave does not complete.
        assert_eq!(step(&s, "a1"), "Done");
        assert_eq!(step(&s, "a2"), "Pending");
        assert_eq!(s.wave, 0);
        // It comes back: admitted.
        o.get_mut("a2").unwrap().connected = true;
        let (_, fx) = decide(&s, &spec, &o, 101 * S);
        assert_eq!(admitted(&fx), ["a2"]);
    }

    #[test]
    fn offline_clusters_skip() {
        let mut spec = spec3();
        spec.offline_clusters = OfflineClusters::Skip;
        spec.waves[0].soak = convoy_core::duration::HumanDuration::from_secs(0);
        let mut o = six();
        o.get_mut("a2").unwrap().connected = false;
        let (s, fx) = decide(&RolloutState::new(&spec, "r", 0), &spec, &o, 0);
        assert_eq!(step(&s, "a2"), "Skipped");
        assert!(!s.has_new("a2"));
        assert!(reasons(&fx).contains(&"RolloutClustersSkipped"));
        set(&mut o, &["a1"], true, Phase::Ready);
        let (s, _) = decide(&s, &spec, &o, S);
        let (s, _) = decide(&s, &spec, &o, 2 * S);
        assert_eq!(s.wave, 1);
    }

    #[test]
    fn offline_clusters_fail() {
        let mut spec = spec3();
        spec.offline_clusters = OfflineClusters::Fail;
        spec.on_failure = OnFailure::Pause;
        let mut o = six();
        o.get_mut("a2").unwrap().connected = false;
        let (s, fx) = decide(&RolloutState::new(&spec, "r", 0), &spec, &o, 0);
        assert!(
            matches!(&s.status, RolloutStatus::Paused { reason } if reason.contains("a2: offline")),
            "{fx:?}"
        );
    }

    #[test]
    fn clusters_in_no_wave_go_last_or_are_skipped() {
        let mut spec = spec3();
        spec.waves.truncate(1);
        let o = obs(&[("a1", "a"), ("x1", "other")]);
        // last-wave: x1 joins the only (last) wave.
        let (_, fx) = decide(&RolloutState::new(&spec, "r", 0), &spec, &o, 0);
        assert_eq!(admitted(&fx), ["a1", "x1"]);
        spec.clusters_not_in_any_wave = NotInAnyWave::Skip;
        let (s, fx) = decide(&RolloutState::new(&spec, "r", 0), &spec, &o, 0);
        assert_eq!(admitted(&fx), ["a1"]);
        assert_eq!(step(&s, "x1"), "Skipped");
        assert!(fx.contains(&Effect::Hold(vec!["x1".into()])));
    }

    #[test]
    fn membership_is_snapshotted_per_wave() {
        let mut spec = spec3();
        spec.waves[0].soak = convoy_core::duration::HumanDuration::from_secs(0);
        let mut o = six();
        let (s, _) = decide(&RolloutState::new(&spec, "r", 0), &spec, &o, 0);
        // a3 joins wave 1's selector after wave 1 started: not in the
        // snapshot, it keeps the last completed revision.
        o.extend(obs(&[("a3", "a"), ("b3", "b")]));
        set(&mut o, &["a1", "a2"], true, Phase::Ready);
        // No soak: the decision that sees wave 1 Ready also moves on.
        let (s, fx) = decide(&s, &spec, &o, S);
        assert!(!s.clusters.contains_key("a3"));
        assert!(!s.has_new("a3"));
        // b3 joined before wave 2 started: it is in wave 2's snapshot.
        assert_eq!(admitted(&fx), ["b1", "b2", "b3"]);
        // A cluster relabelled after its wave's snapshot stays in that wave.
        o.get_mut("b1").unwrap().labels = convoy_core::selector::parse_labels(["tier=c"]).unwrap();
        let (s, _) = decide(&s, &spec, &o, 3 * S);
        assert_eq!(s.clusters["b1"].wave, Some(1));
    }

    #[test]
    fn a_cluster_that_leaves_does_not_block() {
        let mut spec = spec3();
        spec.waves[0].soak = convoy_core::duration::HumanDuration::from_secs(0);
        let mut o = six();
        let (s, _) = decide(&RolloutState::new(&spec, "r", 0), &spec, &o, 0);
        o.remove("a2");
        set(&mut o, &["a1"], true, Phase::Ready);
        let (s, fx) = decide(&s, &spec, &o, S);
        assert_eq!(step(&s, "a2"), "Left");
        assert!(reasons(&fx).contains(&"RolloutClusterLeft"));
        let (s, _) = decide(&s, &spec, &o, 2 * S);
        assert_eq!(s.wave, 1);
    }

    #[test]
    fn waves_changed_mid_rollout_keep_their_progress_by_name() {
        let spec = spec3();
        let mut o = six();
        let (s, _) = decide(&RolloutState::new(&spec, "r2", 0), &spec, &o, 0);
        set(&mut o, &["a1", "a2"], true, Phase::Ready);
        let (s, _) = decide(&s, &spec, &o, S);
        let (s, _) = decide(&s, &spec, &o, 12 * S);
        assert_eq!((s.wave, step(&s, "b1")), (1, "Admitted"));
        // w2 removed, a new w0 in front: w1 stays completed, w3 is next.
        let mut changed = spec3();
        changed.waves = vec![wave("w0", "z"), wave("w1", "a"), wave("w3", "c")];
        let (s2, fx) = decide(&s, &changed, &o, 13 * S);
        assert!(reasons(&fx).contains(&"RolloutWavesChanged"));
        assert_eq!(s2.waves.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(), ["w0", "w1", "w3"]);
        assert!(s2.waves[1].completed_ms.is_some());
        assert_eq!(s2.clusters["a1"].wave, Some(1));
        assert_eq!(s2.clusters["b1"].wave, None, "its wave is gone");
        // The first wave not completed (the new w0, empty) runs and completes, then w3.
        assert!(s2.waves[0].completed_ms.is_some(), "{s2:?}");
        assert_eq!(s2.wave_name(), "w3");
        assert!(s2.has_new("c1") && s2.has_new("b1"), "b1 keeps what it was given");
        // Fewer waves than the current index: no panic, the rollout completes.
        let mut one = spec3();
        one.waves.truncate(1);
        let (s3, _) = decide(&s, &one, &o, 14 * S);
        assert_eq!(s3.status, RolloutStatus::Complete);
    }

    #[test]
    fn new_revisions_queue_or_supersede() {
        let mut spec = spec3();
        let (s, _) = decide(&RolloutState::new(&spec, "r1", 0), &spec, &six(), 0);
        let (q, fx, start) = on_new_revision(&s, &spec, "r2");
        assert!(!start);
        assert_eq!(q.queued.as_deref(), Some("r2"));
        assert!(reasons(&fx).contains(&"RolloutQueued"));
        spec.on_new_revision = OnNewRevision::Supersede;
        let (sup, fx, start) = on_new_revision(&s, &spec, "r2");
        assert!(start);
        assert_eq!(sup.status, RolloutStatus::Superseded);
        assert!(reasons(&fx).contains(&"RolloutSuperseded"));
        // A finished rollout lets the new one start whatever the policy.
        let done = RolloutState { status: RolloutStatus::Complete, ..s };
        spec.on_new_revision = OnNewRevision::Queue;
        assert!(on_new_revision(&done, &spec, "r3").2);
    }

    /// 1,000 clusters held on one record and given another keep two
    /// records, in memory and in the stored form (so a rollout over a big
    /// fleet fits in one etcd value), and both stored forms read back.
    #[test]
    fn cluster_records_share_equal_records_in_memory_and_when_stored() {
        let mut old = rec(1, "sha256:old");
        old.statement = vec![b'x'; 1024];
        let mut new = rec(2, "sha256:new");
        new.statement = vec![b'y'; 1024];
        let held: ClusterRecords = (0..1000).map(|i| (format!("c{i:04}"), old.clone())).collect();
        let mut given = ClusterRecords::default();
        for i in 0..1000 {
            given.insert(format!("c{i:04}"), new.clone());
        }
        // One re-signed record differs only in its signature: kept apart.
        let mut resigned = new.clone();
        resigned.signature = vec![9];
        given.insert("c0000".into(), resigned.clone());
        assert_eq!((held.len(), held.distinct()), (1000, 1));
        assert_eq!((given.len(), given.distinct()), (1000, 2));
        assert_eq!(given.get("c0000"), Some(&resigned));
        assert_eq!(given.get("c0001"), Some(&new));
        let json = serde_json::to_string(&held).unwrap();
        assert!(json.len() < 30_000, "stored form is {} bytes", json.len());
        let back: ClusterRecords = serde_json::from_str(&json).unwrap();
        assert_eq!(back, held);
        let back: ClusterRecords = serde_json::from_str(&serde_json::to_string(&given).unwrap()).unwrap();
        assert_eq!(back, given);
        // The older form: a plain map of cluster to record.
        let plain: BTreeMap<String, DeploymentRecord> = [("a".to_string(), old.clone())].into();
        let back: ClusterRecords = serde_json::from_str(&serde_json::to_string(&plain).unwrap()).unwrap();
        assert_eq!(back.get("a"), Some(&old));
        // A stored form naming a record that is not there is refused.
        assert!(serde_json::from_str::<ClusterRecords>(r#"{"records":[],"clusters":{"a":0}}"#).is_err());
    }

    fn rec(generation: u64, digest: &str) -> DeploymentRecord {
        DeploymentRecord {
            bundle: "web".into(),
            generation,
            digest: digest.into(),
            size: 1,
            revision: "main@sha1:00".into(),
            source: "repo".into(),
            statement: b"{}".to_vec(),
            signature: vec![1],
            created_unix_ms: 0,
        }
    }

    #[test]
    fn the_overlay_holds_admits_and_rolls_back() {
        let spec = spec3();
        let (state, _) = decide(&RolloutState::new(&spec, "r2", 0), &spec, &six(), 0);
        let mut record = RolloutRecord {
            bundle: "web".into(),
            state,
            held: [("b1".to_string(), rec(1, "sha256:old"))].into(),
            base: Some(rec(1, "sha256:base")),
            given: [("a1".to_string(), rec(2, "sha256:new"))].into(),
            rolled_back: Default::default(),
            max_generation: 2,
            version: 0,
        };
        let computed = |d: &str| -> ClusterBundles {
            [(
                "web".to_string(),
                Arc::new(Deployment { record: Arc::new(rec(2, d)), options: Default::default() }),
            )]
            .into()
        };
        let mut rollouts = BTreeMap::new();
        rollouts.insert("web".to_string(), Arc::new(record.clone()));
        // Admitted: what it was given.
        let mut b = computed("sha256:new");
        overlay(&rollouts, "a1", &mut b);
        assert_eq!(b["web"].record.digest, "sha256:new");
        // Held: what it had before.
        let mut b = computed("sha256:new");
        overlay(&rollouts, "b1", &mut b);
        assert_eq!(b["web"].record.digest, "sha256:old");
        // A joiner with nothing held: the last completed revision.
        let mut b = computed("sha256:new");
        overlay(&rollouts, "z9", &mut b);
        assert_eq!(b["web"].record.digest, "sha256:base");
        // Not targeted: stays absent.
        let mut b = ClusterBundles::new();
        overlay(&rollouts, "b1", &mut b);
        assert!(b.is_empty());
        // Rolled back: the re-signed old content.
        record.state.clusters.get_mut("a1").unwrap().step = ClusterStep::RolledBack;
        assert_eq!(record.pending_rollbacks(), ["a1".to_string()].into());
        record.rolled_back.insert("a1".into(), rec(3, "sha256:old"));
        assert!(record.pending_rollbacks().is_empty());
        rollouts.insert("web".to_string(), Arc::new(record.clone()));
        let mut b = computed("sha256:new");
        overlay(&rollouts, "a1", &mut b);
        assert_eq!((b["web"].record.generation, b["web"].record.digest.as_str()), (3, "sha256:old"));
        // Complete: the computed deployment passes through, but a skipped
        // cluster keeps what it had, and one resumed past a failure keeps
        // the new revision it was given.
        record.state.status = RolloutStatus::Complete;
        record.state.clusters.insert(
            "c1".into(),
            ClusterProgress {
                wave: Some(2),
                step: ClusterStep::Skipped { reason: "offline".into(), admitted: false },
            },
        );
        record.held.insert("c1".into(), rec(1, "sha256:c1-old"));
        rollouts.insert("web".to_string(), Arc::new(record.clone()));
        let mut b = computed("sha256:new");
        overlay(&rollouts, "b1", &mut b);
        assert_eq!(b["web"].record.digest, "sha256:new");
        let mut b = computed("sha256:new");
        overlay(&rollouts, "c1", &mut b);
        assert_eq!(b["web"].record.digest, "sha256:c1-old");
        record.state.status = RolloutStatus::Paused { reason: "x".into() };
        record.state.clusters.insert(
            "a2".into(),
            ClusterProgress {
                wave: Some(0),
                step: ClusterStep::Skipped { reason: "failed, resumed".into(), admitted: true },
            },
        );
        record.given.insert("a2".into(), rec(2, "sha256:new-a2"));
        rollouts.insert("web".to_string(), Arc::new(record));
        let mut b = computed("sha256:new");
        overlay(&rollouts, "a2", &mut b);
        assert_eq!(b["web"].record.digest, "sha256:new-a2", "resumed past a failure: keeps the new revision");
    }
}
