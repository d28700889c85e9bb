//! Remote changes: the records another replica committed, decoded from the
//! store's key layout, and the pure decision of what they change in this
//! replica's fleet state ([`plan`]). No I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::domain::rollout::RolloutRecord;
use crate::domain::variants::VariantRecord;
use crate::domain::{ClusterRecord, DeploymentRecord, Liveness, StatusRecord, TokenRecord};

/// One record another replica committed (a put or a delete under the prefix).
#[derive(Debug, Clone, PartialEq)]
pub enum RemoteChange {
    /// An admin certificate was recorded or revoked (applied to the admin
    /// registry by the follower, not to the fleet state).
    AdminCert(crate::domain::admins::AdminCertRecord),
    /// A cluster was registered, renewed, relabelled or revoked.
    Cluster(ClusterRecord),
    /// A bootstrap token was created or used.
    Token(TokenRecord),
    /// A bundle got a new signed generation.
    Deployment(DeploymentRecord),
    /// A bundle was suspended or resumed.
    Suspended {
        /// The bundle.
        bundle: String,
        /// Suspended (true) or resumed.
        suspended: bool,
    },
    /// Every suspended bundle (after a resync: the feed was lost and the
    /// state read again).
    SuspendedSet(BTreeSet<String>),
    /// A source was suspended or resumed.
    SourceSuspended {
        /// The source.
        source: String,
        /// Suspended (true) or resumed.
        suspended: bool,
    },
    /// A cluster's status of one bundle, stored by the replica holding its stream.
    Status {
        /// The cluster.
        cluster: String,
        /// The stored status.
        status: StatusRecord,
    },
    /// A cluster's liveness, stored by the replica holding its stream.
    Liveness {
        /// The cluster.
        cluster: String,
        /// Last seen and agent version.
        liveness: Liveness,
    },
    /// A bundle's rollout was started, advanced or commanded (by the
    /// leader, the replica that signed its new generation, or the replica
    /// an operator's command reached).
    Rollout(Box<RolloutRecord>),
    /// A bundle's rollout record was deleted.
    RolloutDeleted(String),
    /// A per-cluster variant was signed (by the replica holding its
    /// bundle's source lock).
    Variant(Box<VariantRecord>),
    /// An agent command was queued (on any replica): the replica holding
    /// the cluster's Sync stream sends it (applied by the follower to
    /// [`crate::commands`], not to the fleet state).
    Command(Box<crate::domain::commands::CommandRecord>),
    /// An agent command was answered or expired.
    CommandDeleted {
        /// The cluster.
        cluster: String,
        /// The request id.
        request_id: String,
    },
}

/// Why a key could not be decoded (reported, never silently dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecodable {
    /// The key, after the prefix.
    pub key: String,
    /// What went wrong.
    pub reason: String,
}

/// Decode one event of the store's change feed: `rest` is the key after
/// the prefix, `value` the new value (`None` for a delete). `Ok(None)` for
/// keys that change nothing in memory (meta, sequence numbers, events, which
/// queries read from the store).
pub fn decode(rest: &str, value: Option<&[u8]>) -> Result<Option<RemoteChange>, Undecodable> {
    let bad = |reason: String| Undecodable { key: rest.to_string(), reason };
    fn json<T: serde::de::DeserializeOwned>(v: Option<&[u8]>) -> Result<Option<T>, String> {
        match v {
            None => Ok(None),
            Some(v) => serde_json::from_slice(v).map(Some).map_err(|e| e.to_string()),
        }
    }
    let Some((table, name)) = rest.split_once('/') else { return Ok(None) };
    Ok(match table {
        "clusters" => json(value).map_err(bad)?.map(RemoteChange::Cluster),
        "admin-certs" => json(value).map_err(bad)?.map(RemoteChange::AdminCert),
        "tokens" => json(value).map_err(bad)?.map(RemoteChange::Token),
        "deployments" => json(value).map_err(bad)?.map(RemoteChange::Deployment),
        "suspended" => Some(RemoteChange::Suspended { bundle: name.to_string(), suspended: value.is_some() }),
        "suspended-sources" => {
            Some(RemoteChange::SourceSuspended { source: name.to_string(), suspended: value.is_some() })
        }
        "status" => {
            let Some((cluster, _bundle)) = name.split_once('/') else {
                return Err(bad("a status key is status/<cluster>/<bundle>".into()));
            };
            json(value)
                .map_err(bad)?
                .map(|status| RemoteChange::Status { cluster: cluster.to_string(), status })
        }
        "liveness" => json(value)
            .map_err(bad)?
            .map(|liveness| RemoteChange::Liveness { cluster: name.to_string(), liveness }),
        "rollouts" => match json::<RolloutRecord>(value).map_err(bad)? {
            Some(r) => Some(RemoteChange::Rollout(Box::new(r))),
            None => Some(RemoteChange::RolloutDeleted(name.to_string())),
        },
        "variants" => json::<VariantRecord>(value).map_err(bad)?.map(|v| RemoteChange::Variant(Box::new(v))),
        "commands" => {
            let Some((cluster, request_id)) = name.split_once('/') else {
                return Err(bad("a command key is commands/<cluster>/<request id>".into()));
            };
            match json(value).map_err(bad)? {
                Some(c) => Some(RemoteChange::Command(Box::new(c))),
                None => Some(RemoteChange::CommandDeleted {
                    cluster: cluster.to_string(),
                    request_id: request_id.to_string(),
                }),
            }
        }
        _ => None,
    })
}

/// What the remote changes of one store revision change in this replica's
/// fleet state. Built by [`plan`]; the state actor applies it and publishes.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RemotePlan {
    /// Cluster records to insert or replace.
    pub clusters: Vec<ClusterRecord>,
    /// Clusters whose open streams on this replica must close (revoked, or
    /// registered again elsewhere: their old certificates no longer work).
    pub kill_sessions: Vec<String>,
    /// Tokens to insert or replace.
    pub tokens: Vec<TokenRecord>,
    /// Deployments newer than this replica's.
    pub deployments: Vec<DeploymentRecord>,
    /// Bundle suspensions to set (true) or clear.
    pub suspended: BTreeMap<String, bool>,
    /// Source suspensions to hand to the source pipeline.
    pub source_suspended: BTreeMap<String, bool>,
    /// Statuses to put in the status index, by cluster.
    pub statuses: BTreeMap<String, Vec<StatusRecord>>,
    /// Liveness newer than this replica's, by cluster.
    pub liveness: BTreeMap<String, Liveness>,
    /// Whether the desired-state index must be rebuilt and clusters re-targeted.
    pub retarget_all: bool,
    /// Rollout records newer than this replica's (by version).
    pub rollouts: Vec<RolloutRecord>,
    /// Rollouts deleted.
    pub rollouts_deleted: Vec<String>,
    /// Signed variants this replica does not hold yet (or holds at a lower generation).
    pub variants: Vec<VariantRecord>,
    /// Clusters whose variants must be computed again here (new, or their
    /// labels or vars changed on another replica).
    pub recompute_variants: Vec<String>,
}

/// What [`plan`] compares against: this replica's current state.
pub struct Current<'a> {
    /// Cluster records by name.
    pub clusters: &'a dyn Fn(&str) -> Option<Arc<ClusterRecord>>,
    /// The current deployment of each bundle.
    pub records: &'a BTreeMap<String, Arc<DeploymentRecord>>,
    /// Suspended bundles.
    pub suspended: &'a BTreeSet<String>,
    /// The newest committed status's stamp of (cluster, bundle), if any.
    pub status_stamp: &'a dyn Fn(&str, &str) -> Option<i64>,
    /// The last seen stamp of a cluster.
    pub last_seen: &'a dyn Fn(&str) -> Option<i64>,
    /// The version of a bundle's rollout record held here.
    pub rollout_version: &'a dyn Fn(&str) -> Option<u64>,
    /// The generation of the signed variant (bundle, key) held here.
    pub variant_generation: &'a dyn Fn(&str, &str) -> Option<u64>,
}

/// Decide what `changes` (in commit order) change here. Pure: a deployment
/// is taken only if its generation is above this replica's (generations only
/// go up), a status only if it is not older than the one held, a liveness
/// only if it was seen later.
pub fn plan(cur: &Current<'_>, changes: Vec<RemoteChange>) -> RemotePlan {
    let mut p = RemotePlan::default();
    let mut gens: BTreeMap<String, u64> = BTreeMap::new();
    for c in changes {
        match c {
            // The admin registry and the command registry take these (crate::ha::follow).
            RemoteChange::AdminCert(_) | RemoteChange::Command(_) | RemoteChange::CommandDeleted { .. } => {}
            RemoteChange::Cluster(rec) => {
                if let Some(old) = (cur.clusters)(&rec.name) {
                    let old_newest = old.certs.last().map(|c| &c.serial);
                    let still_valid = old_newest.is_none_or(|s| rec.certs.iter().any(|c| &c.serial == s));
                    if (rec.revoked && !old.revoked) || !still_valid {
                        p.kill_sessions.push(rec.name.clone());
                    }
                    if old.labels != rec.labels || old.revoked != rec.revoked {
                        p.retarget_all = true;
                    }
                    if (old.labels != rec.labels || old.vars != rec.vars || old.revoked != rec.revoked)
                        && !p.recompute_variants.contains(&rec.name)
                    {
                        p.recompute_variants.push(rec.name.clone());
                    }
                } else {
                    p.retarget_all = true;
                    if !p.recompute_variants.contains(&rec.name) {
                        p.recompute_variants.push(rec.name.clone());
                    }
                }
                p.clusters.retain(|c| c.name != rec.name);
                p.clusters.push(rec);
            }
            RemoteChange::Token(t) => {
                p.tokens.retain(|x| x.id != t.id);
                p.tokens.push(t);
            }
            RemoteChange::Deployment(d) => {
                let held = gens
                    .get(&d.bundle)
                    .copied()
                    .or_else(|| cur.records.get(&d.bundle).map(|r| r.generation))
                    .unwrap_or(0);
                if d.generation > held {
                    gens.insert(d.bundle.clone(), d.generation);
                    p.deployments.retain(|x| x.bundle != d.bundle);
                    p.deployments.push(d);
                    p.retarget_all = true;
                }
            }
            RemoteChange::Suspended { bundle, suspended } => {
                if cur.suspended.contains(&bundle) != suspended || p.suspended.contains_key(&bundle) {
                    p.suspended.insert(bundle, suspended);
                    p.retarget_all = true;
                }
            }
            RemoteChange::SuspendedSet(set) => {
                for b in cur.suspended.iter().filter(|b| !set.contains(*b)) {
                    p.suspended.insert(b.clone(), false);
                    p.retarget_all = true;
                }
                for b in set.into_iter().filter(|b| !cur.suspended.contains(b)) {
                    p.suspended.insert(b, true);
                    p.retarget_all = true;
                }
            }
            RemoteChange::SourceSuspended { source, suspended } => {
                p.source_suspended.insert(source, suspended);
            }
            RemoteChange::Status { cluster, status } => {
                let held = (cur.status_stamp)(&cluster, &status.status.bundle);
                if held.is_none_or(|h| status.updated_unix_ms >= h) {
                    let v = p.statuses.entry(cluster).or_default();
                    v.retain(|s| s.status.bundle != status.status.bundle);
                    v.push(status);
                }
            }
            RemoteChange::Liveness { cluster, liveness } => {
                if (cur.last_seen)(&cluster).is_none_or(|l| liveness.last_seen_unix_ms > l) {
                    p.liveness.insert(cluster, liveness);
                }
            }
            RemoteChange::Rollout(r) => {
                let held = p
                    .rollouts
                    .iter()
                    .find(|x| x.bundle == r.bundle)
                    .map(|x| x.version)
                    .or_else(|| (cur.rollout_version)(&r.bundle));
                if held.is_none_or(|v| r.version > v) {
                    p.rollouts_deleted.retain(|b| *b != r.bundle);
                    p.rollouts.retain(|x| x.bundle != r.bundle);
                    p.rollouts.push(*r);
                    p.retarget_all = true;
                }
            }
            RemoteChange::RolloutDeleted(bundle) => {
                p.rollouts.retain(|x| x.bundle != bundle);
                if (cur.rollout_version)(&bundle).is_some() && !p.rollouts_deleted.contains(&bundle) {
                    p.rollouts_deleted.push(bundle);
                    p.retarget_all = true;
                }
            }
            RemoteChange::Variant(v) => {
                let (bundle, key) = (&v.record.bundle, &v.key);
                let held = p
                    .variants
                    .iter()
                    .find(|x| x.record.bundle == *bundle && x.key == *key)
                    .map(|x| x.record.generation)
                    .or_else(|| (cur.variant_generation)(bundle, key));
                if held.is_none_or(|g| v.record.generation > g) {
                    p.variants.retain(|x| !(x.record.bundle == *bundle && x.key == *key));
                    p.variants.push(*v);
                    p.retarget_all = true;
                }
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::CertRef;

    fn cluster(name: &str, serials: &[&str], revoked: bool) -> ClusterRecord {
        ClusterRecord {
            name: name.into(),
            certs: serials
                .iter()
                .map(|s| CertRef { serial: s.to_string(), not_after_unix_ms: i64::MAX })
                .collect(),
            revoked,
            ..Default::default()
        }
    }

    fn deployment(bundle: &str, generation: u64) -> DeploymentRecord {
        DeploymentRecord {
            bundle: bundle.into(),
            generation,
            digest: format!("sha256:{generation}"),
            size: 1,
            revision: "main@sha1:0".into(),
            source: "git".into(),
            statement: Vec::new(),
            signature: Vec::new(),
            created_unix_ms: 0,
        }
    }

    fn status(bundle: &str, at: i64) -> StatusRecord {
        let mut s = StatusRecord::default();
        s.status.bundle = bundle.into();
        s.updated_unix_ms = at;
        s
    }

    struct Fixture {
        clusters: BTreeMap<String, Arc<ClusterRecord>>,
        records: BTreeMap<String, Arc<DeploymentRecord>>,
        suspended: BTreeSet<String>,
    }

    impl Fixture {
        fn new() -> Self {
            let mut clusters = BTreeMap::new();
            clusters.insert("c1".to_string(), Arc::new(cluster("c1", &["s1"], false)));
            let mut records = BTreeMap::new();
            records.insert("web".to_string(), Arc::new(deployment("web", 3)));
            Self { clusters, records, suspended: BTreeSet::from(["db".to_string()]) }
        }

        fn plan(&self, changes: Vec<RemoteChange>) -> RemotePlan {
            let clusters = |n: &str| self.clusters.get(n).cloned();
            let stamp = |c: &str, b: &str| (c == "c1" && b == "web").then_some(100);
            let seen = |c: &str| (c == "c1").then_some(50);
            let rollout = |b: &str| (b == "web").then_some(4);
            let variant = |b: &str, k: &str| (b == "web" && k == "k1").then_some(3);
            plan(
                &Current {
                    clusters: &clusters,
                    records: &self.records,
                    suspended: &self.suspended,
                    status_stamp: &stamp,
                    last_seen: &seen,
                    rollout_version: &rollout,
                    variant_generation: &variant,
                },
                changes,
            )
        }
    }

    #[test]
    fn decodes_every_table_and_ignores_bookkeeping() {
        let c = cluster("c1", &["s1"], false);
        let v = serde_json::to_vec(&c).unwrap();
        assert_eq!(decode("clusters/c1", Some(&v)), Ok(Some(RemoteChange::Cluster(c))));
        let a = crate::domain::admins::AdminCertRecord {
            serial: "aa".into(),
            name: "root".into(),
            issued_unix_ms: 1,
            not_after_unix_ms: 2,
            revoked: true,
        };
        let v = serde_json::to_vec(&a).unwrap();
        assert_eq!(decode("admin-certs/aa", Some(&v)), Ok(Some(RemoteChange::AdminCert(a))));
        assert_eq!(
            decode("suspended/web", None),
            Ok(Some(RemoteChange::Suspended { bundle: "web".into(), suspended: false }))
        );
        assert_eq!(
            decode("suspended-sources/git", Some(b"")),
            Ok(Some(RemoteChange::SourceSuspended { source: "git".into(), suspended: true }))
        );
        let s = status("web", 7);
        let v = serde_json::to_vec(&s).unwrap();
        assert_eq!(
            decode("status/c1/web", Some(&v)),
            Ok(Some(RemoteChange::Status { cluster: "c1".into(), status: s }))
        );
        for k in ["meta/commit", "seq/c1/00000000000000000001", "events/00000000000000000001", "x"] {
            assert_eq!(decode(k, Some(b"1")), Ok(None), "{k}");
        }
        // A record deleted (no table deletes records today) changes nothing.
        assert_eq!(decode("clusters/c1", None), Ok(None));
        let err = decode("tokens/t1", Some(b"{not json")).unwrap_err();
        assert_eq!(err.key, "tokens/t1");
        assert!(decode("status/c1", Some(&v)).is_err(), "a status key names cluster and bundle");
        let cmd = crate::domain::commands::CommandRecord {
            cluster: "c1".into(),
            request_id: "r1".into(),
            bundle: "web".into(),
            generation: 2,
            timeout_seconds: 30,
            created_unix_ms: 1,
            expires_unix_ms: 2,
        };
        let v = serde_json::to_vec(&cmd).unwrap();
        assert_eq!(decode("commands/c1/r1", Some(&v)), Ok(Some(RemoteChange::Command(Box::new(cmd)))));
        assert_eq!(
            decode("commands/c1/r1", None),
            Ok(Some(RemoteChange::CommandDeleted { cluster: "c1".into(), request_id: "r1".into() }))
        );
        assert!(decode("commands/c1", None).is_err(), "a command key names cluster and request");
    }

    #[test]
    fn a_new_cluster_or_new_labels_retarget_and_a_revocation_kills_sessions() {
        let f = Fixture::new();
        let p = f.plan(vec![RemoteChange::Cluster(cluster("c2", &["x"], false))]);
        assert!(p.retarget_all && p.kill_sessions.is_empty());
        assert_eq!(p.clusters.len(), 1);

        // A renewal elsewhere keeps the old serial valid: nothing to kill.
        let p = f.plan(vec![RemoteChange::Cluster(cluster("c1", &["s1", "s2"], false))]);
        assert!(p.kill_sessions.is_empty() && !p.retarget_all);

        let p = f.plan(vec![RemoteChange::Cluster(cluster("c1", &[], true))]);
        assert_eq!(p.kill_sessions, vec!["c1".to_string()]);
        assert!(p.retarget_all);

        // Registered again elsewhere: the old certificates are gone.
        let p = f.plan(vec![RemoteChange::Cluster(cluster("c1", &["s9"], false))]);
        assert_eq!(p.kill_sessions, vec!["c1".to_string()]);

        let mut relabelled = cluster("c1", &["s1"], false);
        relabelled.labels.insert("env".into(), "prod".into());
        let p = f.plan(vec![RemoteChange::Cluster(relabelled)]);
        assert!(p.retarget_all && p.kill_sessions.is_empty());
    }

    #[test]
    fn generations_only_go_up() {
        let f = Fixture::new();
        let p = f.plan(vec![
            RemoteChange::Deployment(deployment("web", 2)),
            RemoteChange::Deployment(deployment("web", 3)),
        ]);
        assert!(p.deployments.is_empty() && !p.retarget_all, "not above the held generation 3");
        let p = f.plan(vec![
            RemoteChange::Deployment(deployment("web", 5)),
            RemoteChange::Deployment(deployment("web", 4)),
            RemoteChange::Deployment(deployment("api", 1)),
        ]);
        let got: Vec<(String, u64)> =
            p.deployments.iter().map(|d| (d.bundle.clone(), d.generation)).collect();
        assert_eq!(got, vec![("web".to_string(), 5), ("api".to_string(), 1)]);
        assert!(p.retarget_all);
    }

    #[test]
    fn suspensions_apply_only_when_they_change_something() {
        let f = Fixture::new();
        let p = f.plan(vec![RemoteChange::Suspended { bundle: "db".into(), suspended: true }]);
        assert!(p.suspended.is_empty() && !p.retarget_all);
        let p = f.plan(vec![
            RemoteChange::Suspended { bundle: "web".into(), suspended: true },
            RemoteChange::Suspended { bundle: "web".into(), suspended: false },
        ]);
        assert_eq!(p.suspended.get("web"), Some(&false), "the last of the revision wins");
        let p = f.plan(vec![RemoteChange::SuspendedSet(BTreeSet::from(["web".to_string()]))]);
        assert_eq!(p.suspended, BTreeMap::from([("db".to_string(), false), ("web".to_string(), true)]));
        let p = f.plan(vec![RemoteChange::SourceSuspended { source: "git".into(), suspended: true }]);
        assert_eq!(p.source_suspended.get("git"), Some(&true));
    }

    fn rollout(bundle: &str, version: u64) -> RolloutRecord {
        let spec: convoy_core::rollout::RolloutSpec =
            serde_json::from_value(serde_json::json!({"waves": [{"name": "eu"}]})).unwrap();
        RolloutRecord {
            bundle: bundle.into(),
            state: crate::domain::rollout::RolloutState::new(&spec, "r", 0),
            held: Default::default(),
            base: None,
            given: Default::default(),
            rolled_back: Default::default(),
            max_generation: 1,
            version,
        }
    }

    fn variant(key: &str, generation: u64) -> VariantRecord {
        VariantRecord {
            key: key.into(),
            base_digest: "sha256:b".into(),
            record: deployment("web", generation),
        }
    }

    #[test]
    fn rollouts_and_variants_decode_and_only_newer_ones_are_taken() {
        let r = rollout("web", 5);
        let v = serde_json::to_vec(&r).unwrap();
        assert_eq!(decode("rollouts/web", Some(&v)), Ok(Some(RemoteChange::Rollout(Box::new(r.clone())))));
        assert_eq!(decode("rollouts/web", None), Ok(Some(RemoteChange::RolloutDeleted("web".into()))));
        let va = variant("k1", 4);
        let v = serde_json::to_vec(&va).unwrap();
        assert_eq!(
            decode("variants/web/k1", Some(&v)),
            Ok(Some(RemoteChange::Variant(Box::new(va.clone()))))
        );

        let f = Fixture::new();
        // Version 4 is held: 3 and 4 change nothing, 5 and then 6 are taken.
        let p = f.plan(vec![
            RemoteChange::Rollout(Box::new(rollout("web", 3))),
            RemoteChange::Rollout(Box::new(rollout("web", 4))),
        ]);
        assert!(p.rollouts.is_empty() && !p.retarget_all);
        let p = f.plan(vec![
            RemoteChange::Rollout(Box::new(rollout("web", 6))),
            RemoteChange::Rollout(Box::new(rollout("web", 5))),
            RemoteChange::Rollout(Box::new(rollout("api", 1))),
        ]);
        let got: Vec<(String, u64)> = p.rollouts.iter().map(|r| (r.bundle.clone(), r.version)).collect();
        assert_eq!(got, vec![("web".to_string(), 6), ("api".to_string(), 1)]);
        assert!(p.retarget_all);
        let p = f
            .plan(vec![RemoteChange::RolloutDeleted("web".into()), RemoteChange::RolloutDeleted("x".into())]);
        assert_eq!(p.rollouts_deleted, vec!["web".to_string()], "only a rollout held here is removed");

        // Variant (web, k1) is held at generation 3.
        let p = f.plan(vec![RemoteChange::Variant(Box::new(variant("k1", 3)))]);
        assert!(p.variants.is_empty() && !p.retarget_all, "the same generation again");
        let p = f.plan(vec![
            RemoteChange::Variant(Box::new(variant("k1", 5))),
            RemoteChange::Variant(Box::new(variant("k2", 5))),
        ]);
        assert_eq!(p.variants.len(), 2);
        assert!(p.retarget_all);
    }

    #[test]
    fn a_cluster_new_or_with_new_vars_or_labels_has_its_variants_computed_again() {
        let f = Fixture::new();
        let p = f.plan(vec![RemoteChange::Cluster(cluster("c2", &["x"], false))]);
        assert_eq!(p.recompute_variants, vec!["c2".to_string()]);
        let mut with_vars = cluster("c1", &["s1"], false);
        with_vars.vars.insert("region".into(), "eu".into());
        let p = f.plan(vec![RemoteChange::Cluster(with_vars)]);
        assert_eq!(p.recompute_variants, vec!["c1".to_string()]);
        assert!(!p.retarget_all, "vars alone change no base targeting");
        let p = f.plan(vec![RemoteChange::Cluster(cluster("c1", &["s1", "s2"], false))]);
        assert!(p.recompute_variants.is_empty(), "a renewal changes no variant");
    }

    #[test]
    fn older_statuses_and_liveness_do_not_overwrite_newer_ones() {
        let f = Fixture::new();
        let p = f.plan(vec![
            RemoteChange::Status { cluster: "c1".into(), status: status("web", 99) },
            RemoteChange::Liveness {
                cluster: "c1".into(),
                liveness: Liveness { last_seen_unix_ms: 40, ..Default::default() },
            },
        ]);
        assert!(p.statuses.is_empty() && p.liveness.is_empty());
        let p = f.plan(vec![
            RemoteChange::Status { cluster: "c1".into(), status: status("web", 100) },
            RemoteChange::Status { cluster: "c1".into(), status: status("api", 1) },
            RemoteChange::Liveness {
                cluster: "c1".into(),
                liveness: Liveness { last_seen_unix_ms: 60, ..Default::default() },
            },
        ]);
        assert_eq!(p.statuses["c1"].len(), 2);
        assert_eq!(p.liveness["c1"].last_seen_unix_ms, 60);
    }
}
