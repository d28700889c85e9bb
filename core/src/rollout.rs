//! A bundle's `rollout:` config: health-gated waves, what happens on failure,
//! to clusters outside every wave, to offline clusters and to new revisions.
//! Parsing and validation only; the hub's `domain::rollout` decides.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::duration::HumanDuration;
use crate::selector::{LabelSelector, Labels};

/// `spec.rollout` of a Bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutSpec {
    /// The waves, in order. At least one.
    pub waves: Vec<WaveSpec>,
    /// `pause` (default) or `rollback`.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// `last-wave` (default) or `skip`.
    #[serde(default)]
    pub clusters_not_in_any_wave: NotInAnyWave,
    /// `wait` (default), `skip` or `fail`.
    #[serde(default)]
    pub offline_clusters: OfflineClusters,
    /// `queue` (default) or `supersede`.
    #[serde(default)]
    pub on_new_revision: OnNewRevision,
}

/// One wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaveSpec {
    /// The wave's name (unique in the rollout).
    pub name: String,
    /// Clusters whose labels match (exclusive with `clusterGroup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Clusters of a ClusterGroup (exclusive with `selector`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_group: Option<String>,
    /// How many clusters of the wave update at once (count or `N%`). Default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<Amount>,
    /// How many clusters of the wave may be unavailable (admitted and not
    /// Ready, or failed) at once before no more are admitted. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<Amount>,
    /// How long a cluster must stay Ready on the new revision to count as done.
    #[serde(default)]
    pub soak: HumanDuration,
    /// How long an admitted cluster may stay not Ready before it counts as failed. Default 10m.
    #[serde(default = "default_progress_deadline")]
    pub progress_deadline: HumanDuration,
    /// How many failed clusters the wave tolerates (count or `N%`). Default 0.
    #[serde(default)]
    pub failure_threshold: Amount,
    /// `auto` (default) or `approval` (an operator approves before the wave starts).
    #[serde(default)]
    pub gate: Gate,
}

fn default_progress_deadline() -> HumanDuration {
    HumanDuration::from_secs(600)
}

impl WaveSpec {
    /// Whether a cluster with these labels and ClusterGroups belongs to the wave.
    pub fn matches(&self, labels: &Labels, groups: &[String]) -> bool {
        match (&self.selector, &self.cluster_group) {
            (Some(s), _) => s.matches(labels),
            (None, Some(g)) => groups.iter().any(|x| x == g),
            (None, None) => false,
        }
    }
}

/// A count or a percentage of a wave's clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    /// This many clusters.
    Count(u32),
    /// This percentage of the wave's clusters, rounded down (at least 1 for
    /// concurrency, see [`Amount::resolve`]).
    Percent(u32),
}

impl Default for Amount {
    fn default() -> Self {
        Amount::Count(0)
    }
}

impl Amount {
    /// The number of clusters this amounts to in a wave of `total`.
    pub fn resolve(self, total: usize) -> usize {
        match self {
            Amount::Count(n) => n as usize,
            Amount::Percent(p) => total.saturating_mul(p as usize) / 100,
        }
    }

    fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let v: u32 = p.trim().parse().map_err(|_| format!("{s:?} is not a percentage"))?;
            if v > 100 {
                return Err(format!("{s:?} is above 100%"));
            }
            Ok(Amount::Percent(v))
        } else {
            s.parse().map(Amount::Count).map_err(|_| format!("{s:?} is not a count or a percentage"))
        }
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Amount::Count(n) => s.serialize_u32(*n),
            Amount::Percent(p) => s.serialize_str(&format!("{p}%")),
        }
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u32),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Amount::Count(n)),
            Raw::S(s) => Amount::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// What a failed wave does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Stop where it is.
    #[default]
    Pause,
    /// Give every cluster that received the new revision its previous
    /// content back, as a new signed generation.
    Rollback,
}

/// What happens to targeted clusters that match no wave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NotInAnyWave {
    /// They join the last wave.
    #[default]
    LastWave,
    /// They keep their previous deployment (reported as skipped).
    Skip,
}

/// What happens to a wave's clusters that are offline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OfflineClusters {
    /// The wave waits for them.
    #[default]
    Wait,
    /// They are skipped (they keep their previous deployment).
    Skip,
    /// They count as failed.
    Fail,
}

/// What a new revision does while a rollout is in progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnNewRevision {
    /// It starts once the current rollout ends.
    #[default]
    Queue,
    /// The current rollout ends and the new one starts from wave 1.
    Supersede,
}

/// A wave's gate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gate {
    /// The wave starts as soon as the previous one is done.
    #[default]
    Auto,
    /// The wave starts once an operator approves it.
    Approval,
}

impl RolloutSpec {
    /// Problems with the spec (empty when valid), as `rollout.<field>: message`.
    pub fn validate(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.waves.is_empty() {
            out.push("rollout.waves: at least one wave".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, w) in self.waves.iter().enumerate() {
            if w.name.trim().is_empty() {
                out.push(format!("rollout.waves[{i}].name must not be empty"));
            }
            if !names.insert(w.name.as_str()) {
                out.push(format!("rollout.waves[{i}].name {:?} is used twice", w.name));
            }
            if w.selector.is_some() == w.cluster_group.is_some() {
                out.push(format!("rollout.waves[{i}]: set exactly one of selector, clusterGroup"));
            }
            if let Some(s) = &w.selector
                && let Err(e) = s.validate()
            {
                out.push(format!("rollout.waves[{i}].selector: {e}"));
            }
            if matches!(w.max_concurrency, Some(Amount::Count(0)) | Some(Amount::Percent(0))) {
                out.push(format!("rollout.waves[{i}].maxConcurrency must be above 0"));
            }
            if matches!(w.max_unavailable, Some(Amount::Count(0)) | Some(Amount::Percent(0))) {
                out.push(format!("rollout.waves[{i}].maxUnavailable must be above 0"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_amounts_and_defaults() {
        let spec: RolloutSpec = serde_json::from_value(serde_json::json!({
            "waves": [
                {"name": "canary", "selector": {"matchLabels": {"tier": "canary"}}, "maxConcurrency": 1,
                 "soak": "30s", "failureThreshold": "50%", "gate": "auto"},
                {"name": "rest", "clusterGroup": "prod", "maxConcurrency": "25%", "gate": "approval"}
            ],
            "onFailure": "rollback",
            "clustersNotInAnyWave": "skip",
            "offlineClusters": "fail",
            "onNewRevision": "supersede"
        }))
        .unwrap();
        assert_eq!(spec.waves[0].max_concurrency, Some(Amount::Count(1)));
        assert_eq!(spec.waves[0].failure_threshold, Amount::Percent(50));
        assert_eq!(spec.waves[0].soak, HumanDuration::from_secs(30));
        assert_eq!(spec.waves[1].progress_deadline, HumanDuration::from_secs(600));
        assert_eq!(spec.waves[1].max_concurrency, Some(Amount::Percent(25)));
        assert_eq!(spec.waves[1].gate, Gate::Approval);
        assert_eq!(spec.on_failure, OnFailure::Rollback);
        assert_eq!(spec.clusters_not_in_any_wave, NotInAnyWave::Skip);
        assert_eq!(spec.offline_clusters, OfflineClusters::Fail);
        assert_eq!(spec.on_new_revision, OnNewRevision::Supersede);
        assert!(spec.validate().is_empty());
        assert_eq!(Amount::Percent(25).resolve(8), 2);
        assert_eq!(Amount::Count(3).resolve(8), 3);
        let bad: Result<RolloutSpec, _> =
            serde_json::from_value(serde_json::json!({"waves": [{"name": "a", "maxConcurrency": "150%"}]}));
        assert!(bad.is_err());
    }

    #[test]
    fn validation_names_each_problem() {
        let spec: RolloutSpec = serde_json::from_value(serde_json::json!({
            "waves": [
                {"name": "a"},
                {"name": "a", "selector": {}, "clusterGroup": "g", "maxConcurrency": 0}
            ]
        }))
        .unwrap();
        let errs = spec.validate();
        assert!(errs.iter().any(|e| e.contains("waves[0]: set exactly one")), "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("used twice")), "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("waves[1]: set exactly one")), "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("maxConcurrency must be above 0")), "{errs:?}");
        let empty = RolloutSpec {
            waves: vec![],
            on_failure: OnFailure::Pause,
            clusters_not_in_any_wave: NotInAnyWave::LastWave,
            offline_clusters: OfflineClusters::Wait,
            on_new_revision: OnNewRevision::Queue,
        };
        assert_eq!(empty.validate(), vec!["rollout.waves: at least one wave".to_string()]);
    }
}
