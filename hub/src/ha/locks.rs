//! Exactly-once work across replicas: which locks a replica wants (one per
//! source, one `leader`), what to acquire and release, which builds of the
//! source pipeline may become generations here, and [`Leadership`], the
//! read side other modules use (`is_leader()`, a watch of it). Pure
//! decisions; the store takes the locks under its lease
//! ([`crate::store::Store::coordinate`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use convoy_core::config::FleetConfig;
use tokio::sync::watch;

use crate::pipeline::Builds;

/// The lock of the singleton work of the whole hub (the rollout state
/// machine, anything that must run on one replica).
pub const LEADER: &str = "leader";

/// The lock name of `source`: only its holder polls, fetches and builds it.
pub fn source_lock(source: &str) -> String {
    format!("source/{source}")
}

/// The locks a replica competes for under `fleet`: the leader and one per source.
pub fn wanted(fleet: &FleetConfig) -> BTreeSet<String> {
    // Every source kind (GitSource, HelmRepository) is polled by its lock's holder.
    let mut w: BTreeSet<String> = fleet.source_names().iter().map(|s| source_lock(s)).collect();
    w.insert(LEADER.to_string());
    w
}

/// What to do with the locks: acquire the wanted ones not held, release the
/// held ones no longer wanted (a source removed from the fleet).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LockPlan {
    /// Try to take these (each only if free).
    pub acquire: Vec<String>,
    /// Give these up.
    pub release: Vec<String>,
}

/// Decide [`LockPlan`] from the wanted and the held locks.
pub fn plan(wanted: &BTreeSet<String>, held: &BTreeSet<String>) -> LockPlan {
    LockPlan {
        acquire: wanted.difference(held).cloned().collect(),
        release: held.difference(wanted).cloned().collect(),
    }
}

/// Whether the pipeline must keep `source` from polling here: the operator
/// suspended it, or another replica holds its lock (standby).
pub fn standby(operator_suspended: bool, held: &BTreeSet<String>, source: &str) -> bool {
    operator_suspended || !held.contains(&source_lock(source))
}

/// The builds this replica may turn into generations: a bundle's new build
/// passes only while this replica holds its source's lock; otherwise the
/// build passed before (if any) stays. A replica that is not the source's
/// holder (a late poll before it stood by, a lock lost mid-build) never
/// signs a generation for it.
pub fn admit_builds(passed: &Builds, incoming: &Builds, held: &BTreeSet<String>) -> Builds {
    let mut out: BTreeMap<String, _> = BTreeMap::new();
    for (bundle, b) in incoming.iter() {
        let owned = b.artifact.as_ref().is_none_or(|a| held.contains(&source_lock(&a.source)));
        if owned {
            out.insert(bundle.clone(), b.clone());
        } else if let Some(prev) = passed.get(bundle) {
            out.insert(bundle.clone(), prev.clone());
        }
    }
    Arc::new(out)
}

/// Leadership of the singleton work, for the modules that need it (e.g. a
/// rollout state machine): `is_leader()` now, or a watch to follow it. A
/// hub on redb (one process) is always the leader.
#[derive(Clone, Debug)]
pub struct Leadership {
    rx: watch::Receiver<bool>,
    /// The locks held (`None`: one hub, it holds everything).
    held: Option<watch::Receiver<BTreeSet<String>>>,
}

impl Default for Leadership {
    fn default() -> Self {
        Self::always()
    }
}

impl Leadership {
    /// Always the leader (one hub, no other replica).
    pub fn always() -> Self {
        Self { rx: watch::channel(true).1, held: None }
    }

    /// Following the locks this replica holds.
    pub fn from_held(held: watch::Receiver<BTreeSet<String>>) -> Self {
        let keep = held.clone();
        let mut held = held;
        let (tx, rx) = watch::channel(held.borrow().contains(LEADER));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = held.changed() => if r.is_err() { let _ = tx.send(false); return },
                    _ = tx.closed() => return,
                }
                let l = held.borrow().contains(LEADER);
                tx.send_if_modified(|v| std::mem::replace(v, l) != l);
            }
        });
        Self { rx, held: Some(keep) }
    }

    /// Whether this replica signs the generations of bundles built from
    /// `source`, base and per-cluster variants: it holds the source's lock
    /// (so it has the base artifact's bytes, and one replica at a time
    /// issues the bundle's generations). A hub on its own signs everything.
    pub fn signs_for(&self, source: &str) -> bool {
        self.held.as_ref().is_none_or(|h| h.borrow().contains(&source_lock(source)))
    }

    /// Whether other replicas share the work (a shared store).
    pub fn is_shared(&self) -> bool {
        self.held.is_some()
    }

    /// A watch of the locks held (`None` for a hub alone): a replica that
    /// takes a source's lock becomes the signer of its bundles.
    pub fn held_watch(&self) -> Option<watch::Receiver<BTreeSet<String>>> {
        self.held.clone()
    }

    /// Whether this replica runs the singleton work now.
    pub fn is_leader(&self) -> bool {
        *self.rx.borrow()
    }

    /// A watch of [`Leadership::is_leader`]: singleton work starts when it
    /// turns true and stops when it turns false (the lease was lost).
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use convoy_core::pipeline::{BuiltArtifact, BundleBuildState};

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn build(bundle: &str, source: &str, digest: &str) -> BundleBuildState {
        BundleBuildState {
            bundle: bundle.into(),
            artifact: Some(BuiltArtifact {
                bundle: bundle.into(),
                source: source.into(),
                source_url: String::new(),
                revision: "main@sha1:1".into(),
                digest: digest.into(),
                size: 1,
                files: 1,
                built_unix_ms: 0,
                helm: None,
            }),
            error: None,
        }
    }

    fn builds(v: Vec<BundleBuildState>) -> Builds {
        Arc::new(v.into_iter().map(|b| (b.bundle.clone(), b)).collect())
    }

    #[test]
    fn plans_acquire_the_missing_and_release_the_unwanted() {
        let p = plan(&set(&["leader", "source/a", "source/b"]), &set(&["source/a", "source/gone"]));
        assert_eq!(p.acquire, vec!["leader".to_string(), "source/b".to_string()]);
        assert_eq!(p.release, vec!["source/gone".to_string()]);
        assert_eq!(plan(&set(&["leader"]), &set(&["leader"])), LockPlan::default());
    }

    #[test]
    fn a_source_stands_by_unless_its_lock_is_held_and_the_operator_did_not_suspend_it() {
        let held = set(&["source/a"]);
        assert!(!standby(false, &held, "a"));
        assert!(standby(true, &held, "a"), "an operator suspension wins");
        assert!(standby(false, &held, "b"), "another replica holds b");
    }

    #[test]
    fn only_the_holders_builds_become_generations() {
        let none = builds(vec![]);
        let incoming = builds(vec![build("web", "a", "d1"), build("db", "b", "d2")]);
        let got = admit_builds(&none, &incoming, &set(&["source/a"]));
        assert_eq!(got.keys().collect::<Vec<_>>(), vec!["web"], "b is not held: its build never passes");

        // The lock of a is lost: a new build of web keeps the one passed before.
        let newer = builds(vec![build("web", "a", "d3")]);
        let kept = admit_builds(&got, &newer, &set(&[]));
        assert_eq!(kept["web"].artifact.as_ref().unwrap().digest, "d1");
        // Held again: it passes.
        let got = admit_builds(&kept, &newer, &set(&["source/a"]));
        assert_eq!(got["web"].artifact.as_ref().unwrap().digest, "d3");
        // A bundle with no artifact yet (pending) passes: there is nothing to sign.
        let pending = builds(vec![BundleBuildState { bundle: "x".into(), artifact: None, error: None }]);
        assert!(admit_builds(&none, &pending, &set(&[])).contains_key("x"));
    }

    #[test]
    fn every_source_and_the_leader_are_wanted() {
        let fleet = convoy_core::config::FleetConfig::default();
        assert_eq!(wanted(&fleet), set(&["leader"]));
    }

    #[tokio::test]
    async fn leadership_follows_the_leader_lock() {
        let (tx, rx) = watch::channel(set(&[]));
        let l = Leadership::from_held(rx);
        assert!(!l.is_leader());
        let mut w = l.watch();
        tx.send(set(&["leader", "source/a"])).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), w.wait_for(|v| *v)).await.unwrap().unwrap();
        assert!(l.is_leader());
        assert!(l.signs_for("a") && !l.signs_for("b"), "variants are signed by the source's holder");
        tx.send(set(&["source/a"])).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), w.wait_for(|v| !*v)).await.unwrap().unwrap();
        assert!(l.signs_for("a") && l.is_shared());
        let one = Leadership::always();
        assert!(one.is_leader() && one.signs_for("anything") && !one.is_shared());
    }
}
