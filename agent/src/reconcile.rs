//! The bundle reconcile state machine, pure: what to do next for one bundle,
//! as a function of its state and an input, returning effects for the
//! controller's loop to run. No I/O, no clock reads (the time is an input),
//! so every transition is unit-tested below.
//!
//! Inputs: a new desired deployment (or its removal) from the hub, a timer
//! tick (the loop's wake-up) with the dependency view, and the end of an
//! apply job (applied, refused, failed with a retry time). The generation
//! rules (`bundle::decide`: an older generation is always refused, since a
//! rollback is a new, higher, signed generation; a replay of the applied
//! generation with other bytes is refused; the same generation with other options re-applies) are
//! decided here, once per job.

use std::time::Instant;

use convoy_core::status::Phase;

use crate::bundle::{self, AppliedRevision, Decision, Deployment};

/// The decision-relevant state of one bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BundleState {
    /// What the hub wants; `None` once the bundle left the cluster.
    pub desired: Option<Deployment>,
    /// What is applied (persisted).
    pub applied: Option<AppliedRevision>,
    /// The deployment refused last (not retried until it changes).
    pub refused: Option<Deployment>,
    /// Whether the applied objects are known (restored from the cluster inventory).
    pub restored: bool,
    /// A job of this bundle is running.
    pub busy: bool,
    /// Not before this instant (backoff after a failure).
    pub retry_at: Option<Instant>,
    /// Drift to check from this instant.
    pub drift_due: Option<Instant>,
    /// Health to check again from this instant.
    pub health_due: Option<Instant>,
    /// The phase reported.
    pub phase: Phase,
    /// The generation the reported status is about.
    pub status_generation: u64,
}

impl BundleState {
    /// A bundle the agent has no state for.
    pub fn new() -> Self {
        BundleState {
            desired: None,
            applied: None,
            refused: None,
            restored: false,
            busy: false,
            retry_at: None,
            drift_due: None,
            health_due: None,
            phase: Phase::default(),
            status_generation: 0,
        }
    }
}

/// What happened.
#[derive(Debug, Clone)]
pub(crate) enum Input {
    /// The hub's desired deployment for this bundle; `None`: the bundle left the cluster.
    Desired(Option<Deployment>),
    /// The loop woke up at `now`; `deps` says whether the bundle's
    /// dependencies are Ready (else which ones are waited for).
    Tick {
        /// The time.
        now: Instant,
        /// Dependencies: ready, or the ones waited for.
        deps: Result<(), String>,
    },
    /// An apply job ended.
    ApplyResult(Outcome),
}

/// How an apply job ended.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// This revision is applied.
    Applied(AppliedRevision),
    /// Verification or manifests refused this deployment: nothing applied.
    Refused(Deployment),
    /// The apply failed; try again from `retry_at` (the backoff's choice).
    Failed {
        /// When to retry.
        retry_at: Instant,
    },
}

/// What the controller's loop is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Write the bundle record (desired and applied) to the local store.
    Persist,
    /// Forget the bundle: nothing applied, nothing desired.
    Forget,
    /// Remove the bundle's objects (prune, or orphan) and its inventory.
    Remove,
    /// Report the bundle suspended.
    ReportSuspended,
    /// Refuse the deployment (report Stalled with this reason), apply nothing.
    Refuse {
        /// CamelCase reason.
        reason: &'static str,
        /// Why.
        message: String,
    },
    /// Report Pending: waiting for these dependencies.
    ReportPending(String),
    /// Read the applied objects back from the cluster inventory (after a restart).
    Restore,
    /// Download (when not cached), verify, plan, apply, prune and wait for
    /// the desired deployment.
    Apply(Deployment),
    /// Check and correct (or report) drift of the objects marked dirty.
    CorrectDrift,
    /// Check health again.
    CheckHealth,
}

/// One transition: fold `input` into `s` and say what to do.
pub(crate) fn step(s: &mut BundleState, input: Input) -> Vec<Effect> {
    match input {
        Input::Desired(d) => desired(s, d),
        Input::Tick { now, deps } => tick(s, now, deps),
        Input::ApplyResult(o) => apply_result(s, o),
    }
}

fn apply_result(s: &mut BundleState, o: Outcome) -> Vec<Effect> {
    match o {
        Outcome::Applied(rev) => {
            s.applied = Some(rev);
            s.refused = None;
            s.retry_at = None;
            // Durable before the next decision relies on it (replay protection).
            vec![Effect::Persist]
        }
        Outcome::Refused(d) => {
            // Not retried until the deployment changes; what is applied stays.
            s.refused = Some(d);
            Vec::new()
        }
        Outcome::Failed { retry_at } => {
            // The applied revision does not change.
            s.retry_at = Some(retry_at);
            Vec::new()
        }
    }
}

fn desired(s: &mut BundleState, d: Option<Deployment>) -> Vec<Effect> {
    if s.desired == d {
        return Vec::new();
    }
    let upsert = d.is_some();
    if !upsert && s.desired.is_none() {
        return Vec::new();
    }
    s.desired = d;
    // A new deployment (or a removal) is tried at once.
    s.retry_at = None;
    vec![Effect::Persist]
}

fn tick(s: &mut BundleState, now: Instant, deps: Result<(), String>) -> Vec<Effect> {
    if s.busy {
        return Vec::new();
    }
    let restore_needed = s.applied.is_some() && !s.restored;
    let restore = || if restore_needed { vec![Effect::Restore] } else { Vec::new() };
    let Some(d) = s.desired.clone() else {
        // Removal needs only the inventory in the cluster.
        return if s.applied.is_some() {
            if s.retry_at.is_none_or(|t| t <= now) { vec![Effect::Remove] } else { Vec::new() }
        } else {
            vec![Effect::Forget]
        };
    };
    if d.options.suspend {
        return if s.phase == Phase::Suspended { Vec::new() } else { vec![Effect::ReportSuspended] };
    }
    if s.retry_at.is_some_and(|t| t > now) {
        return Vec::new();
    }
    match bundle::decide(&d, s.applied.as_ref()) {
        Decision::Refuse(reason, message) => {
            if s.refused.as_ref() != Some(&d) {
                s.refused = Some(d);
                vec![Effect::Refuse { reason, message }]
            } else {
                restore()
            }
        }
        Decision::Apply => {
            if s.refused.as_ref() == Some(&d) {
                return restore();
            }
            match deps {
                Ok(()) => vec![Effect::Apply(d)],
                Err(waiting) => {
                    let mut e = vec![Effect::ReportPending(waiting)];
                    e.extend(restore());
                    e
                }
            }
        }
        Decision::UpToDate => {
            let applied_gen = s.applied.as_ref().map(|a| a.generation).unwrap_or(0);
            let stale =
                !matches!(s.phase, Phase::Ready | Phase::NotReady) || s.status_generation != applied_gen;
            if restore_needed {
                vec![Effect::Restore]
            } else if s.drift_due.is_some_and(|t| t <= now) {
                vec![Effect::CorrectDrift]
            } else if s.health_due.is_some_and(|t| t <= now) || stale {
                vec![Effect::CheckHealth]
            } else {
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bundle::BundleOptions;

    fn dep(generation: u64, digest: &str) -> Deployment {
        Deployment {
            name: "app".into(),
            statement: Vec::new(),
            signature: Vec::new(),
            digest: digest.into(),
            size: 1,
            generation,
            options: BundleOptions::default(),
        }
    }

    fn applied(generation: u64, digest: &str) -> AppliedRevision {
        AppliedRevision {
            generation,
            digest: digest.into(),
            revision: format!("rev{generation}"),
            statement: Vec::new(),
            signature: Vec::new(),
            options: BundleOptions::default(),
        }
    }

    fn tick(s: &mut BundleState, now: Instant) -> Vec<Effect> {
        step(s, Input::Tick { now, deps: Ok(()) })
    }

    /// A bundle applied at `generation` (restored, Ready).
    fn ready(generation: u64) -> BundleState {
        let mut s = BundleState::new();
        s.desired = Some(dep(generation, "sha256:a"));
        s.applied = Some(applied(generation, "sha256:a"));
        s.restored = true;
        s.phase = Phase::Ready;
        s.status_generation = generation;
        s
    }

    #[test]
    fn applied_records_the_revision_and_persists() {
        let now = Instant::now();
        let mut s = BundleState::new();
        s.desired = Some(dep(2, "sha256:b"));
        s.refused = Some(dep(1, "sha256:x"));
        s.retry_at = Some(now + Duration::from_secs(9));
        let e = step(&mut s, Input::ApplyResult(Outcome::Applied(applied(2, "sha256:b"))));
        assert_eq!(e, vec![Effect::Persist]);
        assert_eq!(s.applied, Some(applied(2, "sha256:b")));
        assert_eq!((s.refused.as_ref(), s.retry_at), (None, None));
        // Up to date now: nothing more to apply.
        s.restored = true;
        s.phase = Phase::Ready;
        s.status_generation = 2;
        assert!(tick(&mut s, now).is_empty());
    }

    #[test]
    fn a_refused_apply_is_not_retried_until_the_deployment_changes() {
        let now = Instant::now();
        let mut s = ready(1);
        s.desired = Some(dep(2, "sha256:bad"));
        assert!(step(&mut s, Input::ApplyResult(Outcome::Refused(dep(2, "sha256:bad")))).is_empty());
        assert_eq!(s.applied, Some(applied(1, "sha256:a")), "what is applied stays");
        assert!(tick(&mut s, now).is_empty());
        step(&mut s, Input::Desired(Some(dep(3, "sha256:c"))));
        assert_eq!(tick(&mut s, now), vec![Effect::Apply(dep(3, "sha256:c"))]);
    }

    #[test]
    fn a_failed_apply_is_retried_after_its_backoff() {
        let now = Instant::now();
        let mut s = ready(1);
        s.desired = Some(dep(2, "sha256:b"));
        let retry_at = now + Duration::from_millis(300);
        assert!(step(&mut s, Input::ApplyResult(Outcome::Failed { retry_at })).is_empty());
        assert_eq!(s.applied, Some(applied(1, "sha256:a")), "the applied revision does not change");
        assert!(tick(&mut s, now).is_empty());
        assert_eq!(tick(&mut s, retry_at), vec![Effect::Apply(dep(2, "sha256:b"))]);
    }

    #[test]
    fn desired_new_persists_and_clears_backoff() {
        let now = Instant::now();
        let mut s = BundleState::new();
        s.retry_at = Some(now + Duration::from_secs(60));
        assert_eq!(step(&mut s, Input::Desired(Some(dep(1, "sha256:a")))), vec![Effect::Persist]);
        assert_eq!(s.retry_at, None);
        assert_eq!(s.desired.as_ref().map(|d| d.generation), Some(1));
    }

    #[test]
    fn desired_unchanged_does_nothing() {
        let mut s = ready(2);
        s.retry_at = Some(Instant::now());
        assert!(step(&mut s, Input::Desired(Some(dep(2, "sha256:a")))).is_empty());
        assert!(s.retry_at.is_some(), "an unchanged deployment keeps its backoff");
    }

    #[test]
    fn desired_removed_persists_then_removes() {
        let now = Instant::now();
        let mut s = ready(2);
        assert_eq!(step(&mut s, Input::Desired(None)), vec![Effect::Persist]);
        assert_eq!(tick(&mut s, now), vec![Effect::Remove]);
        // A removal of what is not there is nothing.
        let mut empty = BundleState::new();
        assert!(step(&mut empty, Input::Desired(None)).is_empty());
    }

    #[test]
    fn removal_waits_for_backoff() {
        let now = Instant::now();
        let mut s = ready(2);
        s.desired = None;
        s.retry_at = Some(now + Duration::from_secs(5));
        assert!(tick(&mut s, now).is_empty());
        assert_eq!(tick(&mut s, now + Duration::from_secs(5)), vec![Effect::Remove]);
    }

    #[test]
    fn nothing_desired_nothing_applied_is_forgotten() {
        let mut s = BundleState::new();
        assert_eq!(tick(&mut s, Instant::now()), vec![Effect::Forget]);
    }

    #[test]
    fn busy_bundles_wait() {
        let mut s = BundleState::new();
        s.desired = Some(dep(1, "sha256:a"));
        s.busy = true;
        assert!(tick(&mut s, Instant::now()).is_empty());
    }

    #[test]
    fn first_generation_applies() {
        let mut s = BundleState::new();
        s.desired = Some(dep(1, "sha256:a"));
        assert_eq!(tick(&mut s, Instant::now()), vec![Effect::Apply(dep(1, "sha256:a"))]);
    }

    #[test]
    fn newer_generation_applies() {
        let mut s = ready(1);
        s.desired = Some(dep(2, "sha256:b"));
        assert_eq!(tick(&mut s, Instant::now()), vec![Effect::Apply(dep(2, "sha256:b"))]);
    }

    #[test]
    fn backoff_delays_apply() {
        let now = Instant::now();
        let mut s = BundleState::new();
        s.desired = Some(dep(1, "sha256:a"));
        s.retry_at = Some(now + Duration::from_secs(1));
        assert!(tick(&mut s, now).is_empty());
        assert_eq!(tick(&mut s, now + Duration::from_secs(1)), vec![Effect::Apply(dep(1, "sha256:a"))]);
    }

    #[test]
    fn older_generation_is_refused_once() {
        let now = Instant::now();
        let mut s = ready(3);
        s.desired = Some(dep(2, "sha256:old"));
        let e = tick(&mut s, now);
        assert!(
            matches!(&e[..], [Effect::Refuse { reason: "GenerationRollback", .. }]),
            "an older generation is always refused (a rollback is a new, higher generation): {e:?}"
        );
        assert_eq!(s.refused, Some(dep(2, "sha256:old")));
        // Not refused again (nor applied) until it changes.
        assert!(tick(&mut s, now).is_empty());
    }

    #[test]
    fn replay_of_the_applied_generation_with_other_bytes_is_refused() {
        let mut s = ready(3);
        s.desired = Some(dep(3, "sha256:other"));
        let e = tick(&mut s, Instant::now());
        assert!(matches!(&e[..], [Effect::Refuse { reason: "GenerationTampered", .. }]), "{e:?}");
    }

    #[test]
    fn same_generation_with_other_options_reapplies() {
        let mut s = ready(3);
        let mut d = dep(3, "sha256:a");
        d.options.force = true;
        s.desired = Some(d.clone());
        assert_eq!(tick(&mut s, Instant::now()), vec![Effect::Apply(d)]);
    }

    #[test]
    fn a_refused_deployment_that_changes_is_decided_again() {
        let now = Instant::now();
        let mut s = ready(3);
        s.desired = Some(dep(2, "sha256:old"));
        assert_eq!(tick(&mut s, now).len(), 1);
        step(&mut s, Input::Desired(Some(dep(4, "sha256:new"))));
        assert_eq!(tick(&mut s, now), vec![Effect::Apply(dep(4, "sha256:new"))]);
    }

    #[test]
    fn refused_bundles_still_restore_what_is_applied() {
        let now = Instant::now();
        let mut s = ready(3);
        s.restored = false;
        s.desired = Some(dep(2, "sha256:old"));
        s.refused = Some(dep(2, "sha256:old"));
        assert_eq!(tick(&mut s, now), vec![Effect::Restore]);
    }

    #[test]
    fn dependencies_not_ready_report_pending_and_restore() {
        let mut s = ready(1);
        s.restored = false;
        s.desired = Some(dep(2, "sha256:b"));
        let e = step(&mut s, Input::Tick { now: Instant::now(), deps: Err("db (Reconciling)".into()) });
        assert_eq!(e, vec![Effect::ReportPending("db (Reconciling)".into()), Effect::Restore]);
    }

    #[test]
    fn suspended_bundles_are_left_alone() {
        let mut s = ready(1);
        let mut d = dep(2, "sha256:b");
        d.options.suspend = true;
        s.desired = Some(d);
        s.drift_due = Some(Instant::now());
        assert_eq!(tick(&mut s, Instant::now()), vec![Effect::ReportSuspended]);
        s.phase = Phase::Suspended;
        assert!(tick(&mut s, Instant::now()).is_empty());
    }

    #[test]
    fn up_to_date_restores_first_after_a_restart() {
        let mut s = ready(2);
        s.restored = false;
        s.drift_due = Some(Instant::now());
        assert_eq!(tick(&mut s, Instant::now()), vec![Effect::Restore]);
    }

    #[test]
    fn up_to_date_corrects_due_drift_before_health() {
        let now = Instant::now();
        let mut s = ready(2);
        s.drift_due = Some(now + Duration::from_millis(200));
        s.health_due = Some(now);
        assert_eq!(tick(&mut s, now), vec![Effect::CheckHealth]);
        assert_eq!(tick(&mut s, now + Duration::from_millis(200)), vec![Effect::CorrectDrift]);
    }

    #[test]
    fn up_to_date_and_healthy_is_idle() {
        let mut s = ready(2);
        assert!(tick(&mut s, Instant::now()).is_empty());
    }

    #[test]
    fn a_stale_status_is_refreshed_by_a_health_check() {
        let now = Instant::now();
        // Reported as Reconciling (e.g. a restart mid-apply) while up to date.
        let mut s = ready(2);
        s.phase = Phase::Reconciling;
        assert_eq!(tick(&mut s, now), vec![Effect::CheckHealth]);
        // Reported about another generation.
        let mut s = ready(2);
        s.status_generation = 1;
        assert_eq!(tick(&mut s, now), vec![Effect::CheckHealth]);
    }
}
