//! The rollout driver: owns the fleet's [`RolloutRecord`]s inside the state
//! actor (the one writer), starts a rollout when a bundle with `rollout:` gets
//! a new generation, runs [`crate::domain::rollout::decide`] each tick and
//! turns its effects into store writes (the record, events) and re-signed
//! rollback generations. The actor commits the writes, then installs the
//! records and re-targets: durable before visible.

use std::collections::BTreeMap;
use std::sync::Arc;

use convoy_artifact::{SigningKey, Statement};
use convoy_core::config::FleetConfig;
use convoy_core::selector::Labels;
use convoy_core::status::{Phase, Severity};
use tracing::{info, warn};

use crate::domain::desired::ClusterBundles;
use crate::domain::helmops::effective_rollout;
use crate::domain::rollout::{
    self, ClusterObs, Command, Effect, Observations, RolloutRecord, RolloutState, RolloutStatus,
};
use crate::domain::{DeploymentRecord, EventRecord, HUB_EVENT_SOURCE};
use crate::index::BundleStatuses;
use crate::store::Write;

/// How often the state actor runs [`Rollouts::tick`] while a rollout is active.
pub const TICK: std::time::Duration = std::time::Duration::from_secs(1);
/// The least time between two rollout decisions that changed statuses
/// trigger (a status storm costs at most one decision per spacing).
pub const STATUS_TICK_SPACING: std::time::Duration = std::time::Duration::from_millis(20);

/// What the driver needs to know of one registered cluster.
pub struct ClusterInput {
    /// The cluster's name.
    pub name: String,
    /// Its effective labels (registered, then `Cluster` documents).
    pub labels: Labels,
    /// The ClusterGroups whose selector matches those labels.
    pub groups: Vec<String>,
    /// Whether an agent holds a Sync stream.
    pub connected: bool,
    /// Its committed statuses.
    pub statuses: Arc<BundleStatuses>,
}

/// The fleet's rollouts, by bundle. Owned by the state actor.
#[derive(Debug, Clone, Default)]
pub struct Rollouts {
    records: BTreeMap<String, Arc<RolloutRecord>>,
}

/// A change the actor commits, then installs with [`Rollouts::install`].
#[derive(Debug, Default)]
pub struct Pending {
    /// Records to store and install.
    pub records: Vec<RolloutRecord>,
    /// Everything to commit (the records and the events).
    pub writes: Vec<Write>,
}

impl Pending {
    /// Add the next version of `rec` (its version bumped: on a shared
    /// store, the write is refused if another replica wrote it meanwhile).
    fn push(&mut self, mut rec: RolloutRecord, fx: &[Effect], now: i64) {
        rec.version += 1;
        let events: Vec<(String, EventRecord)> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Event { severity, reason, message } => Some((
                    HUB_EVENT_SOURCE.to_string(),
                    EventRecord::new(*severity, reason, &rec.bundle, message.clone(), now),
                )),
                _ => None,
            })
            .collect();
        self.writes.push(Write::PutRollout(Box::new(rec.clone())));
        if !events.is_empty() {
            self.writes.push(Write::AppendEvents(events));
        }
        self.records.push(rec);
    }

    /// Whether there is nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

impl Rollouts {
    /// The rollouts the store held at start.
    pub fn load(records: Vec<RolloutRecord>) -> Self {
        Self { records: records.into_iter().map(|r| (r.bundle.clone(), Arc::new(r))).collect() }
    }

    /// A bundle's rollout.
    pub fn get(&self, bundle: &str) -> Option<&Arc<RolloutRecord>> {
        self.records.get(bundle)
    }

    /// Whether a rollout moves or has a queued revision to start: the actor
    /// ticks only then (a fleet without rollouts never wakes for them).
    pub fn is_active(&self) -> bool {
        self.records.values().any(|r| !r.state.status.is_terminal() || r.state.queued.is_some())
    }

    /// Every rollout, by bundle.
    pub fn all(&self) -> &BTreeMap<String, Arc<RolloutRecord>> {
        &self.records
    }

    /// Install committed records.
    pub fn install(&mut self, pending: Pending) {
        self.install_records(pending.records);
    }

    /// Take a record another hub replica committed (through the change
    /// feed) if it is newer than the one held here; whether it was taken.
    pub fn install_remote(&mut self, rec: RolloutRecord) -> bool {
        if self.records.get(&rec.bundle).is_some_and(|r| r.version >= rec.version) {
            return false;
        }
        self.records.insert(rec.bundle.clone(), Arc::new(rec));
        true
    }

    /// Forget a bundle's rollout (deleted by another replica).
    pub fn remove(&mut self, bundle: &str) -> bool {
        self.records.remove(bundle).is_some()
    }

    /// The version of a bundle's rollout record here, if any.
    pub fn version(&self, bundle: &str) -> Option<u64> {
        self.records.get(bundle).map(|r| r.version)
    }

    /// Install committed records.
    pub fn install_records(&mut self, records: Vec<RolloutRecord>) {
        for r in records {
            self.records.insert(r.bundle.clone(), Arc::new(r));
        }
    }

    /// Replace a cluster's computed deployments with what the rollouts give
    /// it. A bundle whose `rollout:` was removed from the fleet config is no
    /// longer overlaid: it goes to every target at once, as without rollouts.
    pub fn overlay(&self, fleet: &FleetConfig, cluster: &str, bundles: &mut ClusterBundles) {
        let active = |b: &str| fleet.bundles.get(b).is_some_and(|x| effective_rollout(&x.spec).is_some());
        if self.records.keys().all(|b| active(b)) {
            rollout::overlay(&self.records, cluster, bundles);
        } else {
            let only: BTreeMap<String, Arc<RolloutRecord>> =
                self.records.iter().filter(|(b, _)| active(b)).map(|(b, r)| (b.clone(), r.clone())).collect();
            rollout::overlay(&only, cluster, bundles);
        }
    }

    /// The newest generation a rollout issued for `bundle` (0 for none): a
    /// new build is signed above it.
    pub fn floor(&self, bundle: &str) -> u64 {
        self.records.get(bundle).map_or(0, |r| r.max_generation)
    }

    /// `bundle` (with `spec.rollout`) gets the new generation `new`, replacing
    /// `old`; `current` is what each cluster has now (its published desired
    /// deployment of the bundle). Returns the record to commit with the new
    /// generation, or `None` when the bundle has no rollout or no previous
    /// generation (a first generation has nothing to hold clusters on, so it
    /// goes everywhere at once, as without rollouts).
    pub fn on_new_generation(
        &self,
        fleet: &FleetConfig,
        old: Option<&DeploymentRecord>,
        new: &DeploymentRecord,
        current: BTreeMap<String, DeploymentRecord>,
        now: i64,
    ) -> Option<Pending> {
        let spec = effective_rollout(&fleet.bundles.get(&new.bundle)?.spec)?;
        let spec = spec.as_ref();
        let old = old?;
        let mut pending = Pending::default();
        let revision = format!("{} (generation {}, {})", new.revision, new.generation, new.digest);
        let prev = self.records.get(&new.bundle);
        if let Some(prev) = prev
            && !prev.state.status.is_terminal()
        {
            let (state, fx, start) = rollout::on_new_revision(&prev.state, spec, &revision);
            let mut rec = RolloutRecord { state, ..(**prev).clone() };
            if !start {
                // Queued: the running rollout keeps rolling its own revision.
                rec.max_generation = rec.max_generation.max(new.generation);
                pending.push(rec, &fx, now);
                return Some(pending);
            }
            // Superseded: the new rollout holds each cluster on what it has now.
            rec.max_generation = rec.max_generation.max(new.generation);
            pending.push(rec, &fx, now);
        }
        // The last completed revision, for clusters with nothing recorded:
        // the previous rollout's base while it had not completed, else `old`.
        let base = match prev {
            Some(p) if !matches!(p.state.status, RolloutStatus::Complete) => p.base.clone(),
            _ => Some(old.clone()),
        };
        // Versions go on from the record it replaces (and from the
        // superseded one written in this same commit).
        let version = pending
            .records
            .iter()
            .rev()
            .find(|r| r.bundle == new.bundle)
            .map(|r| r.version)
            .or(prev.map(|p| p.version))
            .unwrap_or(0);
        let rec = RolloutRecord {
            bundle: new.bundle.clone(),
            state: RolloutState::new(spec, &revision, now),
            held: current.into_iter().collect(),
            base,
            given: Default::default(),
            rolled_back: Default::default(),
            max_generation: self.floor(&new.bundle).max(new.generation),
            version,
        };
        info!(bundle = %new.bundle, generation = new.generation, "rollout started");
        let fx = [Effect::Event {
            severity: Severity::Info,
            reason: "RolloutStarted",
            message: format!(
                "rollout of {} started over waves [{}]",
                revision,
                spec.waves.iter().map(|w| w.name.as_str()).collect::<Vec<_>>().join(",")
            ),
        }];
        // Replaces the superseded record of the same bundle (installed last).
        pending.records.retain(|r| r.bundle != rec.bundle);
        pending.push(rec, &fx, now);
        Some(pending)
    }

    /// Bundles whose rollout ended with a newer revision queued.
    pub fn queued(&self) -> Vec<String> {
        self.records
            .values()
            .filter(|r| r.state.status.is_terminal() && r.state.queued.is_some())
            .map(|r| r.bundle.clone())
            .collect()
    }

    /// Start the queued revision `new` of a bundle whose rollout ended;
    /// `current` is what each cluster has now.
    pub fn start_queued(
        &self,
        fleet: &FleetConfig,
        new: &DeploymentRecord,
        current: BTreeMap<String, DeploymentRecord>,
        now: i64,
    ) -> Option<Pending> {
        let prev = self.records.get(&new.bundle)?;
        // The completed revision is the last completed one (any admitted
        // cluster's), else the previous base.
        let old = match prev.state.status {
            RolloutStatus::Complete => prev.given.values().next().cloned().or_else(|| prev.base.clone()),
            _ => prev.base.clone(),
        };
        let mut p = self.on_new_generation(fleet, old.as_ref(), new, current, now);
        if p.is_none() {
            // No rollout any more (spec removed): just clear the queue.
            let mut rec = (**prev).clone();
            rec.state.queued = None;
            let mut pending = Pending::default();
            pending.push(rec, &[], now);
            p = Some(pending);
        }
        p
    }

    /// One tick of every active rollout: observations, decision, effects.
    /// `computed` gives a cluster's computed deployment of a bundle (what it
    /// gets once admitted). Rollback generations are signed here.
    pub fn tick(
        &self,
        fleet: &FleetConfig,
        clusters: &[ClusterInput],
        computed: &dyn Fn(&str, &str) -> Option<DeploymentRecord>,
        signer: &SigningKey,
        now: i64,
    ) -> Pending {
        let mut pending = Pending::default();
        for (bundle, rec) in &self.records {
            if rec.state.status.is_terminal() {
                continue;
            }
            let Some(b) = fleet.bundles.get(bundle) else { continue };
            let Some(spec) = effective_rollout(&b.spec) else { continue };
            let mut now_rec = (**rec).clone();
            let repinned = pin_admitted(&mut now_rec, computed);
            let obs = observe(&now_rec, &b.spec, clusters);
            let (state, mut fx) = rollout::decide(&now_rec.state, &spec, &obs, now);
            if state == now_rec.state && fx.is_empty() && !repinned {
                continue;
            }
            let next = RolloutRecord { state, ..now_rec };
            let next = self.apply_effects(next, &fx, computed, signer, now);
            helm_rollback_event(&b.spec, rec, &next, &mut fx);
            pending.push(next, &fx, now);
        }
        pending
    }

    /// An operator's command on `bundle`'s rollout.
    pub fn command(
        &self,
        bundle: &str,
        cmd: Command,
        who: &str,
        computed: &dyn Fn(&str, &str) -> Option<DeploymentRecord>,
        signer: &SigningKey,
        now: i64,
    ) -> Result<Pending, crate::Error> {
        let refused =
            |reason| crate::Error::RolloutRefused { bundle: bundle.to_string(), command: cmd.verb(), reason };
        let rec = self.records.get(bundle).ok_or_else(|| refused(rollout::Refusal::NoRollout))?;
        let (state, fx) = rollout::command(&rec.state, cmd, who, now).map_err(refused)?;
        let next = RolloutRecord { state, ..(**rec).clone() };
        let next = self.apply_effects(next, &fx, computed, signer, now);
        let mut pending = Pending::default();
        pending.push(next, &fx, now);
        Ok(pending)
    }

    fn apply_effects(
        &self,
        mut rec: RolloutRecord,
        fx: &[Effect],
        computed: &dyn Fn(&str, &str) -> Option<DeploymentRecord>,
        signer: &SigningKey,
        now: i64,
    ) -> RolloutRecord {
        let target = rollout_generation(&rec.state.revision);
        for e in fx {
            if let Effect::Admit(clusters) = e {
                for c in clusters {
                    // Pin what the cluster is given, so a queued newer revision
                    // does not leak into this rollout. A cluster whose own
                    // variant of the new generation is not built yet is
                    // pinned later ([`pin_admitted`]).
                    if let Some(d) = computed(&rec.bundle, c)
                        && target.is_none_or(|g| d.generation == g)
                    {
                        rec.given.insert(c.clone(), d);
                    }
                }
            }
        }
        let back = rec.pending_rollbacks();
        if !back.is_empty() {
            let generation = rec.max_generation.saturating_add(1);
            for c in back {
                let Some(prev) = rec.held.get(&c).or(rec.base.as_ref()) else {
                    warn!(bundle = %rec.bundle, cluster = %c, "nothing to roll back to");
                    continue;
                };
                match resign(signer, prev, generation, now) {
                    Ok(r) => {
                        rec.rolled_back.insert(c, r);
                    }
                    Err(e) => warn!(bundle = %rec.bundle, cluster = %c, error = %e, "cannot sign a rollback"),
                }
            }
            rec.max_generation = generation;
        }
        rec
    }
}

/// An operator command's commit error as the command's refusal: the etcd
/// store's version fence refusing the record (another replica wrote it in
/// between) becomes [`rollout::Refusal::ChangedOnAnotherReplica`]; any other
/// error (the store failed, the replica lost its lease) is returned as is.
pub fn command_error(e: crate::Error, bundle: &str, cmd: Command) -> crate::Error {
    match e {
        crate::Error::RolloutChanged { stored, seen, .. } => crate::Error::RolloutRefused {
            bundle: bundle.to_string(),
            command: cmd.verb(),
            reason: rollout::Refusal::ChangedOnAnotherReplica { stored, seen },
        },
        e => e,
    }
}

/// The generation a rollout rolls out, from its revision label
/// (`"<revision> (generation N, <digest>)"`, [`Rollouts::on_new_generation`]).
fn rollout_generation(revision: &str) -> Option<u64> {
    let rest = &revision[revision.rfind("(generation ")? + "(generation ".len()..];
    rest.split(',').next()?.trim().parse().ok()
}

/// Pin the admitted clusters that have no record of the rollout's
/// generation yet: a per-cluster variant (a Helm bundle's render with the
/// cluster's Capabilities) is built after the base generation, so at
/// admission the cluster's computed deployment may still be its previous
/// one, which must not count as "on the new revision". Whether a pin changed.
fn pin_admitted(rec: &mut RolloutRecord, computed: &dyn Fn(&str, &str) -> Option<DeploymentRecord>) -> bool {
    let Some(target) = rollout_generation(&rec.state.revision) else { return false };
    let mut changed = false;
    let admitted: Vec<String> = rec
        .state
        .clusters
        .keys()
        .filter(|c| rec.state.has_new(c) && rec.given.get(c).is_none_or(|g| g.generation != target))
        .cloned()
        .collect();
    for c in admitted {
        if let Some(d) = computed(&rec.bundle, &c).filter(|d| d.generation == target) {
            rec.given.insert(c, d);
            changed = true;
        }
    }
    changed
}

/// A `rollbackOnFailure` bundle whose rollback was just signed (`next`
/// re-signed clusters `prev` had not): the `HelmRolledBack` event naming the
/// failed generation and the one restored on each cluster.
fn helm_rollback_event(
    spec: &convoy_core::config::BundleSpec,
    prev: &RolloutRecord,
    next: &RolloutRecord,
    fx: &mut Vec<Effect>,
) {
    if !crate::domain::helmops::is_helm_rollback(spec) || next.rolled_back.len() <= prev.rolled_back.len() {
        return;
    }
    if let Some((reason, rows)) = crate::domain::helmops::rollback_report(next) {
        fx.push(Effect::Event {
            severity: Severity::Error,
            reason: "HelmRolledBack",
            message: crate::domain::helmops::rollback_message(&next.bundle, &reason, &rows),
        });
    }
}

/// Re-sign `prev`'s statement at `generation`: every field as signed before
/// (source, revision, digest, size, Helm chart, variant, ...) but the
/// generation, with the same signer as every generation the hub issues. The
/// hub's one re-sign: rollbacks, generation recovery and re-signed bases.
pub fn resign(
    signer: &SigningKey,
    prev: &DeploymentRecord,
    generation: u64,
    now: i64,
) -> Result<DeploymentRecord, convoy_artifact::Error> {
    let mut statement = Statement::parse(&prev.statement)?;
    statement.generation = generation;
    statement.key_id = None;
    let (statement, signature) = signer.sign_statement(&statement)?;
    Ok(DeploymentRecord { generation, statement, signature, created_unix_ms: now, ..prev.clone() })
}

fn observe(
    rec: &RolloutRecord,
    spec: &convoy_core::config::BundleSpec,
    clusters: &[ClusterInput],
) -> Observations {
    clusters
        .iter()
        .filter(|c| spec.targets_cluster(&c.name, &c.labels))
        .map(|c| {
            let st = c.statuses.get(&rec.bundle);
            let given = rec.record_for(&c.name);
            let on_new = match (st, given) {
                (Some(s), Some(g)) => s.status.generation == g.generation && s.status.digest == g.digest,
                _ => false,
            };
            (
                c.name.clone(),
                ClusterObs {
                    labels: c.labels.clone(),
                    groups: c.groups.clone(),
                    connected: c.connected,
                    on_new,
                    phase: st.map_or(Phase::Unknown, |s| s.status.phase),
                    message: st.map(|s| s.status.message.clone()).unwrap_or_default(),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::StatusRecord;
    use convoy_core::status::BundleStatus;

    fn fleet(on_new_revision: &str) -> FleetConfig {
        let yaml = format!(
            r#"
apiVersion: convoy.dev/v1
kind: GitSource
metadata: {{name: repo}}
spec: {{url: "https://example.com/repo.git"}}
---
apiVersion: convoy.dev/v1
kind: Bundle
metadata: {{name: web}}
spec:
  source: repo
  targets: [{{clusterSelector: {{}}}}]
  rollout:
    waves:
      - {{name: eu, selector: {{matchLabels: {{region: eu}}}}, progressDeadline: 10s}}
      - {{name: us, selector: {{matchLabels: {{region: us}}}}}}
    onFailure: rollback
    onNewRevision: {on_new_revision}
"#
        );
        FleetConfig::parse([("fleet.yaml", yaml.as_str())]).unwrap()
    }

    fn signed(signer: &SigningKey, generation: u64, digest: &str) -> DeploymentRecord {
        let st = Statement::new("web", "https://example.com/repo.git", "main@sha1:aa", digest, 7, generation);
        let (statement, signature) = signer.sign_statement(&st).unwrap();
        DeploymentRecord {
            bundle: "web".into(),
            generation,
            digest: digest.into(),
            size: 7,
            revision: "main@sha1:aa".into(),
            source: "repo".into(),
            statement,
            signature,
            created_unix_ms: 0,
        }
    }

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn input(name: &str, region: &str, status: Option<(u64, &str, Phase)>) -> ClusterInput {
        let statuses: BundleStatuses = status
            .map(|(generation, digest, phase)| {
                (
                    "web".to_string(),
                    Arc::new(StatusRecord {
                        status: BundleStatus {
                            bundle: "web".into(),
                            generation,
                            digest: digest.into(),
                            phase,
                            message: format!("{phase:?}"),
                            ..Default::default()
                        },
                        updated_unix_ms: 0,
                    }),
                )
            })
            .into_iter()
            .collect();
        ClusterInput {
            name: name.into(),
            labels: convoy_core::selector::parse_labels([format!("region={region}").as_str()]).unwrap(),
            groups: Vec::new(),
            connected: true,
            statuses: Arc::new(statuses),
        }
    }

    fn has_event(p: &Pending, reason: &str) -> bool {
        p.writes
            .iter()
            .any(|w| matches!(w, Write::AppendEvents(evs) if evs.iter().any(|(_, e)| e.reason == reason)))
    }

    #[test]
    fn a_first_generation_goes_everywhere_and_a_second_starts_a_rollout_holding_everyone() {
        let signer = SigningKey::generate().unwrap();
        let fleet = fleet("queue");
        let (old, new) = (signed(&signer, 1, &digest('a')), signed(&signer, 2, &digest('b')));
        let r = Rollouts::default();
        assert!(r.on_new_generation(&fleet, None, &old, BTreeMap::new(), 0).is_none());
        let current: BTreeMap<String, DeploymentRecord> =
            [("eu1".to_string(), old.clone()), ("us1".to_string(), old.clone())].into();
        let p = r.on_new_generation(&fleet, Some(&old), &new, current, 5).unwrap();
        assert!(has_event(&p, "RolloutStarted"));
        assert!(p.writes.iter().any(|w| matches!(w, Write::PutRollout(x) if x.bundle == "web")));
        let rec = &p.records[0];
        assert_eq!((rec.held.len(), rec.base.as_ref(), rec.max_generation), (2, Some(&old), 2));
        assert_eq!(rec.record_for("eu1"), Some(&old), "held until admitted");
        assert_eq!(rec.record_for("joiner"), Some(&old), "a joiner gets the last completed revision");
    }

    #[test]
    fn a_failed_wave_is_rolled_back_with_the_old_content_re_signed_above_every_generation() {
        let signer = SigningKey::generate().unwrap();
        let fleet = fleet("queue");
        let (old, new) = (signed(&signer, 1, &digest('a')), signed(&signer, 2, &digest('b')));
        let mut r = Rollouts::default();
        let current = [("eu1".to_string(), old.clone()), ("us1".to_string(), old.clone())].into();
        r.install(r.on_new_generation(&fleet, Some(&old), &new, current, 0).unwrap());
        let computed = |_: &str, _: &str| Some(new.clone());
        // Tick 1: eu1 admitted and pinned to the new record; us1 untouched.
        let clusters = [input("eu1", "eu", Some((1, &old.digest, Phase::Ready))), input("us1", "us", None)];
        let p = r.tick(&fleet, &clusters, &computed, &signer, 1_000);
        assert!(has_event(&p, "RolloutWaveStarted"));
        r.install(p);
        let rec = r.get("web").unwrap().clone();
        assert_eq!(rec.record_for("eu1"), Some(&new));
        assert_eq!(rec.record_for("us1"), Some(&old));
        // NotReady on the new generation past the 10s deadline: rollback.
        let clusters =
            [input("eu1", "eu", Some((2, &new.digest, Phase::NotReady))), input("us1", "us", None)];
        let p = r.tick(&fleet, &clusters, &computed, &signer, 12_000);
        assert!(has_event(&p, "RolloutRolledBack"));
        r.install(p);
        let rec = r.get("web").unwrap().clone();
        assert!(matches!(rec.state.status, RolloutStatus::RolledBack { .. }));
        let back = rec.record_for("eu1").unwrap();
        assert_eq!((back.generation, back.digest.as_str()), (3, old.digest.as_str()));
        assert!(signer.public_key().verify(&back.statement, &back.signature), "signed by the hub's key");
        let st = Statement::parse(&back.statement).unwrap();
        assert_eq!(
            (st.generation, st.artifact.digest.as_str(), st.source.url.as_str()),
            (3, old.digest.as_str(), "https://example.com/repo.git")
        );
        assert_eq!(rec.record_for("us1"), Some(&old), "us1 never gets the new revision");
        assert_eq!(r.floor("web"), 3, "the next build is signed above the rollback");
        // Nothing moves any more.
        assert!(r.tick(&fleet, &clusters, &computed, &signer, 20_000).is_empty());
    }

    /// `helm.rollbackOnFailure` runs the same machine with its implicit
    /// one-wave spec: a Stalled cluster rolls back every cluster that got the
    /// generation, re-signed by the one `resign`, and a `HelmRolledBack`
    /// event names the failed and the restored generations.
    #[test]
    fn a_helm_bundle_with_rollback_on_failure_is_rolled_back_and_reported() {
        let yaml = r#"
apiVersion: convoy.dev/v1
kind: GitSource
metadata: {name: repo}
spec: {url: "https://example.com/repo.git"}
---
apiVersion: convoy.dev/v1
kind: Bundle
metadata: {name: web}
spec:
  source: repo
  targets: [{clusterSelector: {}}]
  helm: {path: chart, rollbackOnFailure: true}
"#;
        let fleet = FleetConfig::parse([("fleet.yaml", yaml)]).unwrap();
        let signer = SigningKey::generate().unwrap();
        let (old, new) = (signed(&signer, 1, &digest('a')), signed(&signer, 2, &digest('b')));
        let mut r = Rollouts::default();
        let current = [("eu1".to_string(), old.clone()), ("us1".to_string(), old.clone())].into();
        r.install(r.on_new_generation(&fleet, Some(&old), &new, current, 0).unwrap());
        let computed = |_: &str, _: &str| Some(new.clone());
        let ready = |c: &str, r: &str| input(c, r, Some((1, &old.digest, Phase::Ready)));
        let p = r.tick(&fleet, &[ready("eu1", "eu"), ready("us1", "us")], &computed, &signer, 1_000);
        r.install(p);
        let rec = r.get("web").unwrap().clone();
        assert_eq!((rec.record_for("eu1"), rec.record_for("us1")), (Some(&new), Some(&new)), "all at once");
        let clusters = [
            input("eu1", "eu", Some((2, &new.digest, Phase::Stalled))),
            input("us1", "us", Some((2, &new.digest, Phase::Ready))),
        ];
        let p = r.tick(&fleet, &clusters, &computed, &signer, 2_000);
        assert!(has_event(&p, "RolloutRolledBack") && has_event(&p, "HelmRolledBack"));
        let msg = p
            .writes
            .iter()
            .find_map(|w| match w {
                Write::AppendEvents(evs) => evs.iter().find(|(_, e)| e.reason == "HelmRolledBack"),
                _ => None,
            })
            .map(|(_, e)| e.message.clone())
            .unwrap();
        assert!(msg.contains("eu1: generation 2 failed, generation 1 restored as generation 3"), "{msg}");
        r.install(p);
        let rec = r.get("web").unwrap().clone();
        for c in ["eu1", "us1"] {
            let back = rec.record_for(c).unwrap();
            assert_eq!((back.generation, back.digest.as_str()), (3, old.digest.as_str()), "{c}");
            assert!(signer.public_key().verify(&back.statement, &back.signature));
        }
        // Terminal: the rolled-back generation failing as well decides nothing.
        let clusters = [
            input("eu1", "eu", Some((3, &old.digest, Phase::Stalled))),
            input("us1", "us", Some((3, &old.digest, Phase::Stalled))),
        ];
        assert!(r.tick(&fleet, &clusters, &computed, &signer, 3_000).is_empty());
        assert!(!r.is_active());
    }

    /// A cluster's own variant of the new generation is built after the
    /// base: admitted while its computed deployment is still the previous
    /// one, it is not pinned to it (its Ready status on the previous
    /// generation must not complete the rollout), and is pinned once the
    /// variant of the rollout's generation exists.
    #[test]
    fn an_admitted_cluster_is_pinned_only_to_the_rollouts_generation() {
        let signer = SigningKey::generate().unwrap();
        let fleet = fleet("queue");
        let (old, new) = (signed(&signer, 1, &digest('a')), signed(&signer, 2, &digest('b')));
        let mut r = Rollouts::default();
        let current = [("eu1".to_string(), old.clone())].into();
        r.install(r.on_new_generation(&fleet, Some(&old), &new, current, 0).unwrap());
        let ready_old = [input("eu1", "eu", Some((1, &old.digest, Phase::Ready)))];
        // The variant is not built yet: the cluster's computed record is its old one.
        let stale = |_: &str, _: &str| Some(old.clone());
        let p = r.tick(&fleet, &ready_old, &stale, &signer, 1_000);
        r.install(p);
        let rec = r.get("web").unwrap().clone();
        assert!(rec.state.has_new("eu1") && rec.given.get("eu1").is_none(), "admitted, not pinned");
        assert_eq!(rec.state.status, RolloutStatus::Progressing, "Ready on generation 1 is not done");
        // The variant of generation 2 exists now: pinned at the next tick.
        let variant = DeploymentRecord { digest: digest('v'), ..new.clone() };
        let built = |_: &str, _: &str| Some(variant.clone());
        let p = r.tick(&fleet, &ready_old, &built, &signer, 2_000);
        r.install(p);
        let rec = r.get("web").unwrap().clone();
        assert_eq!(rec.given.get("eu1"), Some(&variant));
        assert_eq!(rec.state.status, RolloutStatus::Progressing);
        let ready_new = [input("eu1", "eu", Some((2, &variant.digest, Phase::Ready)))];
        let p = r.tick(&fleet, &ready_new, &built, &signer, 3_000);
        r.install(p);
        assert_eq!(r.get("web").unwrap().state.clusters["eu1"].step.name(), "Done");
        assert_eq!(rollout_generation("main@sha1:aa (generation 12, sha256:x)"), Some(12));
        assert_eq!(rollout_generation("rev2"), None);
    }

    #[test]
    fn supersede_ends_the_rollout_and_starts_over_holding_what_clusters_have() {
        let signer = SigningKey::generate().unwrap();
        let fleet = fleet("supersede");
        let (g1, g2, g3) = (
            signed(&signer, 1, &digest('a')),
            signed(&signer, 2, &digest('b')),
            signed(&signer, 3, &digest('c')),
        );
        let mut r = Rollouts::default();
        r.install(
            r.on_new_generation(&fleet, Some(&g1), &g2, [("eu1".to_string(), g1.clone())].into(), 0).unwrap(),
        );
        let current = [("eu1".to_string(), g2.clone()), ("us1".to_string(), g1.clone())].into();
        let p = r.on_new_generation(&fleet, Some(&g2), &g3, current, 10).unwrap();
        assert!(has_event(&p, "RolloutSuperseded") && has_event(&p, "RolloutStarted"));
        r.install(p);
        let rec = r.get("web").unwrap();
        assert!(rec.state.revision.contains("generation 3"));
        assert_eq!(rec.state.status, RolloutStatus::Progressing);
        assert_eq!(rec.record_for("eu1"), Some(&g2), "held on what it had");
        assert_eq!(rec.base.as_ref(), Some(&g1), "the last completed revision stays the base");
    }

    #[test]
    fn queue_keeps_the_running_revision_and_starts_the_queued_one_when_it_ends() {
        let signer = SigningKey::generate().unwrap();
        let fleet = fleet("queue");
        let (g1, g2, g3) = (
            signed(&signer, 1, &digest('a')),
            signed(&signer, 2, &digest('b')),
            signed(&signer, 3, &digest('c')),
        );
        let mut r = Rollouts::default();
        r.install(
            r.on_new_generation(&fleet, Some(&g1), &g2, [("eu1".to_string(), g1.clone())].into(), 0).unwrap(),
        );
        let p = r.on_new_generation(&fleet, Some(&g2), &g3, BTreeMap::new(), 10).unwrap();
        assert!(has_event(&p, "RolloutQueued"));
        r.install(p);
        let rec = r.get("web").unwrap().clone();
        assert!(rec.state.revision.contains("generation 2") && rec.state.queued.is_some());
        assert!(r.queued().is_empty(), "starts only once the running rollout ended");
        let mut ended = (*rec).clone();
        ended.state.status = RolloutStatus::Aborted;
        r.install_records(vec![ended]);
        assert_eq!(r.queued(), ["web".to_string()]);
        let p = r.start_queued(&fleet, &g3, [("eu1".to_string(), g1.clone())].into(), 20).unwrap();
        r.install(p);
        let rec = r.get("web").unwrap();
        assert!(rec.state.revision.contains("generation 3") && rec.state.queued.is_none());
        assert_eq!(rec.record_for("eu1"), Some(&g1));
    }

    #[test]
    fn every_write_is_a_newer_version_and_only_newer_remote_records_are_taken() {
        let signer = SigningKey::generate().unwrap();
        let fleet = fleet("supersede");
        let (g1, g2, g3) = (
            signed(&signer, 1, &digest('a')),
            signed(&signer, 2, &digest('b')),
            signed(&signer, 3, &digest('c')),
        );
        let mut r = Rollouts::default();
        let p =
            r.on_new_generation(&fleet, Some(&g1), &g2, [("eu1".to_string(), g1.clone())].into(), 0).unwrap();
        assert_eq!(p.records[0].version, 1);
        r.install(p);
        // Superseded and started again in one commit: the writes of the key
        // go up within the commit too (2 for the superseded record, 3 for the new one).
        let p = r.on_new_generation(&fleet, Some(&g2), &g3, BTreeMap::new(), 10).unwrap();
        let versions: Vec<u64> = p
            .writes
            .iter()
            .filter_map(|w| match w {
                Write::PutRollout(x) => Some(x.version),
                _ => None,
            })
            .collect();
        assert_eq!(versions, vec![2, 3]);
        r.install(p);
        let computed = |_: &str, _: &str| Some(g3.clone());
        let p = r.command("web", Command::Pause, "admin", &computed, &signer, 20).unwrap();
        assert_eq!(p.records[0].version, 4);

        // From the feed: an older or equal version changes nothing, a newer one is taken.
        let mut older = (**r.get("web").unwrap()).clone();
        older.state.revision = "stale".into();
        assert!(!r.install_remote(older.clone()), "version 3 is held");
        older.version = 5;
        assert!(r.install_remote(older));
        assert_eq!((r.version("web"), r.get("web").unwrap().state.revision.as_str()), (Some(5), "stale"));
        assert!(r.remove("web") && r.version("web").is_none());
    }

    #[test]
    fn a_bundle_whose_rollout_was_removed_is_no_longer_held() {
        let signer = SigningKey::generate().unwrap();
        let with = fleet("queue");
        let (g1, g2) = (signed(&signer, 1, &digest('a')), signed(&signer, 2, &digest('b')));
        let mut r = Rollouts::default();
        r.install(
            r.on_new_generation(&with, Some(&g1), &g2, [("eu1".to_string(), g1.clone())].into(), 0).unwrap(),
        );
        let computed = || -> ClusterBundles {
            [(
                "web".to_string(),
                Arc::new(crate::domain::desired::Deployment {
                    record: Arc::new(g2.clone()),
                    options: Default::default(),
                }),
            )]
            .into()
        };
        let mut b = computed();
        r.overlay(&with, "eu1", &mut b);
        assert_eq!(b["web"].record.generation, 1);
        let mut without = with.clone();
        without.bundles.get_mut("web").unwrap().spec.rollout = None;
        let mut b = computed();
        r.overlay(&without, "eu1", &mut b);
        assert_eq!(b["web"].record.generation, 2);
    }
}
