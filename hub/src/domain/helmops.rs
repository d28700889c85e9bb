//! Helm remediation decisions (`helm.rollbackOnFailure`), pure: which
//! rollout spec governs a bundle's new generations ([`remediation`],
//! [`effective_rollout`]) and how a Helm rollback is reported
//! ([`rollback_report`]). `rollbackOnFailure` is carried out by the rollout
//! machine ([`super::rollout::decide`]) with an implicit one-wave spec, so a
//! Helm rollback is the same durable record, the same re-signed generation
//! and the same overlay as a rollout's `onFailure: rollback`.

use std::borrow::Cow;

use convoy_core::config::BundleSpec;
use convoy_core::rollout::{
    Amount, Gate, NotInAnyWave, OfflineClusters, OnFailure, OnNewRevision, RolloutSpec, WaveSpec,
};
use convoy_core::selector::LabelSelector;

use super::rollout::{ClusterStep, RolloutRecord, RolloutStatus};

/// The name of the implicit wave of a `rollbackOnFailure` bundle (shown by
/// `convoy rollout status`).
pub const WAVE: &str = "helm-release";

/// What governs the new generations of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remediation<'a> {
    /// No rollout and no `rollbackOnFailure`: a new generation goes to every
    /// target at once; a failed Helm upgrade is retried by the agent.
    None,
    /// The bundle's own `rollout:` (its `onFailure` wins over `rollbackOnFailure`).
    Rollout(&'a RolloutSpec),
    /// `helm.rollbackOnFailure: true` without `rollout:`: the implicit spec.
    HelmRollback(RolloutSpec),
}

/// Decide what governs `spec`'s new generations.
pub fn remediation(spec: &BundleSpec) -> Remediation<'_> {
    match (&spec.rollout, &spec.helm) {
        (Some(r), _) => Remediation::Rollout(r),
        (None, Some(h)) if h.rollback_on_failure => Remediation::HelmRollback(implicit_spec(spec)),
        _ => Remediation::None,
    }
}

/// The rollout spec the hub runs for `spec`, if any: its own, or the
/// implicit one of `rollbackOnFailure`.
pub fn effective_rollout(spec: &BundleSpec) -> Option<Cow<'_, RolloutSpec>> {
    match remediation(spec) {
        Remediation::None => None,
        Remediation::Rollout(r) => Some(Cow::Borrowed(r)),
        Remediation::HelmRollback(r) => Some(Cow::Owned(r)),
    }
}

/// Whether `spec`'s rollouts are the implicit ones of `rollbackOnFailure`.
pub fn is_helm_rollback(spec: &BundleSpec) -> bool {
    matches!(remediation(spec), Remediation::HelmRollback(_))
}

/// The implicit spec: one wave of every targeted cluster, all admitted at
/// once, no soak; a cluster not Ready on the new generation within the
/// bundle's `timeout` (the agent's wait for the release), or Stalled on it,
/// fails the wave, which rolls back every cluster that got the generation.
/// Offline clusters are waited for (they get the generation when they come
/// back); a newer generation supersedes the running one at once, so a fix
/// is never queued behind a failing upgrade.
pub fn implicit_spec(spec: &BundleSpec) -> RolloutSpec {
    RolloutSpec {
        waves: vec![WaveSpec {
            name: WAVE.into(),
            selector: Some(LabelSelector::default()),
            cluster_group: None,
            max_concurrency: None,
            max_unavailable: None,
            soak: Default::default(),
            progress_deadline: spec.timeout,
            failure_threshold: Amount::Count(0),
            gate: Gate::Auto,
        }],
        on_failure: OnFailure::Rollback,
        clusters_not_in_any_wave: NotInAnyWave::LastWave,
        offline_clusters: OfflineClusters::Wait,
        on_new_revision: OnNewRevision::Supersede,
    }
}

/// One cluster's Helm rollback, as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRollback {
    /// The cluster.
    pub cluster: String,
    /// The generation that failed there (what the rollout gave it).
    pub failed: Option<u64>,
    /// The generation whose content was restored.
    pub restored: u64,
    /// The new signed generation carrying that content.
    pub new: u64,
    /// The artifact digest restored.
    pub digest: String,
}

/// What a rolled-back record restored, per cluster, and why: `None` unless
/// `rec` is rolled back and at least one cluster got its re-signed record.
/// The event (`HelmRolledBack`) and the bundle's condition are made from it.
pub fn rollback_report(rec: &RolloutRecord) -> Option<(String, Vec<ClusterRollback>)> {
    let RolloutStatus::RolledBack { reason } = &rec.state.status else { return None };
    let rows: Vec<ClusterRollback> = rec
        .state
        .clusters
        .iter()
        .filter(|(_, c)| c.step == ClusterStep::RolledBack)
        .filter_map(|(name, _)| {
            let back = rec.rolled_back.get(name)?;
            let from = rec.held.get(name).or(rec.base.as_ref())?;
            Some(ClusterRollback {
                cluster: name.clone(),
                failed: rec.given.get(name).map(|g| g.generation),
                restored: from.generation,
                new: back.generation,
                digest: back.digest.clone(),
            })
        })
        .collect();
    (!rows.is_empty()).then(|| (reason.clone(), rows))
}

/// The message of the `HelmRolledBack` event and condition: names the
/// failed generation and the one restored on each cluster.
pub fn rollback_message(bundle: &str, reason: &str, rows: &[ClusterRollback]) -> String {
    let each: Vec<String> = rows
        .iter()
        .map(|r| {
            let failed = r.failed.map(|g| format!("generation {g} failed")).unwrap_or("failed".into());
            format!(
                "{}: {failed}, generation {} restored as generation {} ({})",
                r.cluster, r.restored, r.new, r.digest
            )
        })
        .collect();
    format!("helm release of bundle {bundle} rolled back ({reason}): {}", each.join("; "))
}

#[cfg(test)]
mod tests {
    use convoy_core::config::FleetConfig;
    use convoy_core::status::Phase;

    use super::super::DeploymentRecord;
    use super::super::rollout::{ClusterObs, Effect, Observations, RolloutState, decide};
    use super::*;

    const S: i64 = 1_000;

    fn bundle(extra: &str) -> BundleSpec {
        let yaml = format!(
            "apiVersion: convoy.dev/v1\nkind: GitSource\nmetadata: {{name: repo}}\nspec: {{url: \"https://example.com/r.git\"}}\n---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata: {{name: web}}\nspec:\n  source: repo\n  timeout: 30s\n  targets: [{{clusterSelector: {{}}}}]\n{extra}"
        );
        FleetConfig::parse([("f.yaml", yaml.as_str())]).unwrap().bundles["web"].spec.clone()
    }

    const HELM: &str = "  helm:\n    path: chart\n";
    const HELM_RB: &str = "  helm:\n    path: chart\n    rollbackOnFailure: true\n";
    const ROLLOUT: &str =
        "  rollout:\n    waves: [{name: eu, selector: {matchLabels: {region: eu}}}]\n    onFailure: pause\n";

    #[test]
    fn which_spec_governs_a_bundle() {
        // A plain bundle, a Helm bundle without the flag: nothing.
        assert_eq!(remediation(&bundle("")), Remediation::None);
        assert_eq!(remediation(&bundle(HELM)), Remediation::None);
        assert!(effective_rollout(&bundle(HELM)).is_none());
        // The flag: the implicit spec, timed by the bundle's timeout.
        let b = bundle(HELM_RB);
        let Remediation::HelmRollback(r) = remediation(&b) else { panic!("implicit") };
        assert_eq!(r.waves.len(), 1);
        assert_eq!(r.waves[0].progress_deadline.get().as_millis(), 30_000);
        assert_eq!(r.on_failure, OnFailure::Rollback);
        assert_eq!(r.on_new_revision, OnNewRevision::Supersede);
        assert!(r.validate().is_empty(), "{:?}", r.validate());
        assert!(is_helm_rollback(&b));
        // A rollout wins, with its own onFailure (pause here), flag or not.
        for extra in [format!("{ROLLOUT}{HELM_RB}"), format!("{ROLLOUT}{HELM}"), ROLLOUT.to_string()] {
            let b = bundle(&extra);
            let Remediation::Rollout(r) = remediation(&b) else { panic!("explicit rollout: {extra}") };
            assert_eq!(r.on_failure, OnFailure::Pause);
            assert!(!is_helm_rollback(&b));
            assert_eq!(effective_rollout(&b).unwrap().waves[0].name, "eu");
        }
    }

    /// The flag is serialized only when set: a Helm bundle without it keeps
    /// the exact spec bytes it had before the field existed.
    #[test]
    fn the_flag_is_left_out_of_a_spec_without_it() {
        let without = serde_json::to_value(bundle(HELM).helm.unwrap()).unwrap();
        assert!(without.get("rollbackOnFailure").is_none(), "{without}");
        let with = serde_json::to_value(bundle(HELM_RB).helm.unwrap()).unwrap();
        assert_eq!(with["rollbackOnFailure"], true);
    }

    #[test]
    fn the_implicit_wave_holds_every_cluster_whatever_its_labels() {
        let r = implicit_spec(&bundle(HELM_RB));
        let obs = ClusterObs {
            labels: convoy_core::selector::parse_labels(["x=y"]).unwrap(),
            ..Default::default()
        };
        assert_eq!(super::super::rollout::wave_of(&r, &obs), Some(0));
        assert_eq!(super::super::rollout::wave_of(&r, &ClusterObs::default()), Some(0));
    }

    fn obs(rows: &[(&str, bool, bool, Phase)]) -> Observations {
        rows.iter()
            .map(|(n, connected, on_new, phase)| {
                (
                    n.to_string(),
                    ClusterObs {
                        connected: *connected,
                        on_new: *on_new,
                        phase: *phase,
                        message: format!("{phase:?}"),
                        ..Default::default()
                    },
                )
            })
            .collect()
    }

    fn rolled_back(fx: &[Effect]) -> Vec<String> {
        fx.iter()
            .filter_map(|e| if let Effect::Rollback(v) = e { Some(v.clone()) } else { None })
            .flatten()
            .collect()
    }

    /// Start: both clusters connected are admitted at the first decision.
    fn started(spec: &RolloutSpec, o: &Observations) -> RolloutState {
        let (s, fx) = decide(&RolloutState::new(spec, "gen 2", 0), spec, o, 0);
        let admitted: Vec<String> = fx
            .iter()
            .filter_map(|e| if let Effect::Admit(v) = e { Some(v.clone()) } else { None })
            .flatten()
            .collect();
        let connected: Vec<String> = o.iter().filter(|(_, c)| c.connected).map(|(n, _)| n.clone()).collect();
        assert_eq!(admitted, connected, "every connected cluster at once");
        s
    }

    /// The decision table of `rollbackOnFailure`: statuses of the new
    /// generation on two clusters (`a`, `b`) at a time after admission ->
    /// status and the clusters rolled back.
    #[test]
    fn decision_table() {
        let spec = implicit_spec(&bundle(HELM_RB)); // 30 s deadline
        use Phase::*;
        type Row = (&'static str, [(bool, bool, Phase); 2], i64, &'static str, &'static [&'static str]);
        let table: &[Row] = &[
            ("both Ready", [(true, true, Ready), (true, true, Ready)], S, "Complete", &[]),
            (
                "one still applying, in time",
                [(true, true, Ready), (true, true, Reconciling)],
                10 * S,
                "Progressing",
                &[],
            ),
            (
                "one NotReady, in time",
                [(true, true, Ready), (true, true, NotReady)],
                29 * S,
                "Progressing",
                &[],
            ),
            (
                "transient error retried, in time",
                [(true, true, Ready), (true, true, Reconciling)],
                29 * S,
                "Progressing",
                &[],
            ),
            (
                "NotReady past the timeout",
                [(true, true, Ready), (true, true, NotReady)],
                31 * S,
                "RolledBack",
                &["a", "b"],
            ),
            (
                "transient errors past the timeout",
                [(true, true, Reconciling), (true, true, Ready)],
                31 * S,
                "RolledBack",
                &["a", "b"],
            ),
            (
                "release failed (Stalled)",
                [(true, true, Stalled), (true, true, Reconciling)],
                S,
                "RolledBack",
                &["a", "b"],
            ),
            (
                "never reported the new generation",
                [(true, false, Ready), (true, true, Ready)],
                31 * S,
                "RolledBack",
                &["a", "b"],
            ),
            (
                "old generation Ready is not success",
                [(true, false, Ready), (true, true, Ready)],
                10 * S,
                "Progressing",
                &[],
            ),
            (
                "offline cluster waited for",
                [(true, true, Ready), (false, false, Unknown)],
                31 * S,
                "Progressing",
                &[],
            ),
        ];
        for (what, rows, at, status, back) in table {
            let start = obs(&[("a", true, false, Ready), ("b", rows[1].0, false, Ready)]);
            let s = started(&spec, &start);
            let o = obs(&[("a", rows[0].0, rows[0].1, rows[0].2), ("b", rows[1].0, rows[1].1, rows[1].2)]);
            let (s, fx) = decide(&s, &spec, &o, *at);
            assert_eq!(s.status.name(), *status, "{what}: {fx:?}");
            assert_eq!(rolled_back(&fx), back.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "{what}");
            // A rolled-back or completed rollout never decides again: a
            // rollback that itself fails does not loop.
            if s.status.is_terminal() {
                let worse = obs(&[("a", true, false, Stalled), ("b", true, false, Stalled)]);
                let (s2, fx2) = decide(&s, &spec, &worse, at + 3_600 * S);
                assert_eq!((s2, fx2), (s.clone(), vec![]), "{what}: terminal");
            }
        }
    }

    fn rec(generation: u64, digest: char) -> DeploymentRecord {
        DeploymentRecord {
            bundle: "web".into(),
            generation,
            digest: format!("sha256:{}", digest.to_string().repeat(64)),
            size: 1,
            revision: "main@sha1:aa".into(),
            source: "repo".into(),
            statement: Vec::new(),
            signature: Vec::new(),
            created_unix_ms: 0,
        }
    }

    #[test]
    fn the_report_names_the_failed_and_the_restored_generation() {
        let spec = implicit_spec(&bundle(HELM_RB));
        let o = obs(&[("a", true, false, Phase::Ready), ("b", true, false, Phase::Ready)]);
        let s = started(&spec, &o);
        let mut r = RolloutRecord {
            bundle: "web".into(),
            state: s.clone(),
            held: [("a".to_string(), rec(1, 'a')), ("b".to_string(), rec(1, 'a'))].into(),
            base: Some(rec(1, 'a')),
            given: [("a".to_string(), rec(2, 'b')), ("b".to_string(), rec(2, 'b'))].into(),
            rolled_back: Default::default(),
            max_generation: 2,
            version: 1,
        };
        assert!(rollback_report(&r).is_none(), "progressing");
        let (s, _) =
            decide(&s, &spec, &obs(&[("a", true, true, Phase::Stalled), ("b", true, true, Phase::Ready)]), S);
        r.state = s;
        assert!(rollback_report(&r).is_none(), "rolled back, nothing re-signed yet");
        r.rolled_back = [("a".to_string(), rec(3, 'a')), ("b".to_string(), rec(3, 'a'))].into();
        let (reason, rows) = rollback_report(&r).unwrap();
        assert!(reason.contains("a: Stalled"), "{reason}");
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].failed, rows[0].restored, rows[0].new), (Some(2), 1, 3));
        let m = rollback_message("web", &reason, &rows);
        assert!(
            m.contains("a: generation 2 failed, generation 1 restored as generation 3 (sha256:aaaa"),
            "{m}"
        );
    }
}
