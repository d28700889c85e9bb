//! One `Store` conformance suite, run against the embedded redb store and
//! (with the `etcd` feature, as scripts/test.sh runs it) against a real etcd:
//! Debian's `etcd-server`, started by each test on loopback and killed when
//! the test ends. Plus what only a shared store has: several replicas
//! committing at once, and a prefix written by a newer hub.

use convoy_core::status::{BundleStatus, Phase, Severity};
use convoy_hub::domain::{
    AgentBatch, ClusterRecord, EventFilter, EventRecord, OutboxEntry, StatusRecord, TokenRecord,
};
use convoy_hub::store::{RedbStore, Store, Write, WriteOutcome};

/// A store under test and how to open it again (a restart, or another replica).
trait Backend {
    fn open(&self, event_capacity: u64) -> Box<dyn Store>;
}

struct Redb(tempfile::TempDir);

impl Backend for Redb {
    fn open(&self, cap: u64) -> Box<dyn Store> {
        Box::new(RedbStore::open(&self.0.path().join("state.redb"), cap, 8 << 20).unwrap())
    }
}

fn redb() -> Redb {
    Redb(tempfile::tempdir().unwrap())
}

fn status(b: &str, gen_: u64) -> OutboxEntry {
    OutboxEntry::Status(StatusRecord {
        status: BundleStatus {
            bundle: b.into(),
            generation: gen_,
            phase: Phase::Ready,
            ..Default::default()
        },
        ..Default::default()
    })
}

fn event(b: &str, reason: &str) -> OutboxEntry {
    OutboxEntry::Event(EventRecord { bundle: b.into(), reason: reason.into(), ..Default::default() })
}

fn batch_outcome(out: &[WriteOutcome]) -> &convoy_hub::domain::BatchOutcome {
    match &out[0] {
        WriteOutcome::Batch(o) => o,
        other => panic!("not a batch outcome: {other:?}"),
    }
}

fn agent_batches_are_idempotent_and_survive_reopen(b: &dyn Backend) {
    {
        let s = b.open(100);
        let batch = AgentBatch {
            cluster: "c1".into(),
            epoch: 7,
            entries: vec![(1, status("a", 1)), (2, event("a", "Applied"))],
        };
        let out = s.commit(vec![Write::AgentBatch(batch.clone())], 5).unwrap();
        let o = batch_outcome(&out);
        assert_eq!((o.acked_seq, o.statuses.len(), o.events.len()), (2, 1, 1));
        assert_eq!(o.statuses[0].updated_unix_ms, 5);
        // Resending the same entries stores nothing new but still acks.
        let out = s.commit(vec![Write::AgentBatch(batch)], 6).unwrap();
        let o = batch_outcome(&out);
        assert_eq!(o.acked_seq, 2);
        assert!(o.statuses.is_empty() && o.events.is_empty());
        // A partly new batch stores only what is new.
        let more = AgentBatch {
            cluster: "c1".into(),
            epoch: 7,
            entries: vec![(2, event("a", "Applied")), (3, status("a", 2))],
        };
        let out = s.commit(vec![Write::AgentBatch(more)], 7).unwrap();
        let o = batch_outcome(&out);
        assert_eq!((o.acked_seq, o.statuses.len(), o.events.len()), (3, 1, 0));
    }
    let s = b.open(100);
    assert_eq!(s.last_seq("c1", 7).unwrap(), 3);
    assert_eq!(s.last_seq("c1", 8).unwrap(), 0);
    let loaded = s.load().unwrap();
    let c1: Vec<_> = loaded.statuses.iter().filter(|(c, _)| c == "c1").collect();
    assert_eq!(c1.len(), 1);
    assert_eq!(c1[0].1.status.generation, 2);
    assert_eq!(s.list_events(&EventFilter::default()).unwrap().len(), 1);
    // A new epoch replaces the old one.
    let batch = AgentBatch { cluster: "c1".into(), epoch: 9, entries: vec![(1, status("a", 3))] };
    s.commit(vec![Write::AgentBatch(batch)], 8).unwrap();
    assert_eq!(s.last_seq("c1", 7).unwrap(), 0);
    assert_eq!(s.last_seq("c1", 9).unwrap(), 1);
}

fn event_log_is_a_bounded_indexed_ring(b: &dyn Backend) {
    let s = b.open(5);
    for i in 0..12u64 {
        let cluster = if i % 2 == 0 { "even" } else { "odd" };
        let ev = EventRecord {
            bundle: format!("b{}", i % 3),
            severity: if i == 11 { Severity::Error } else { Severity::Info },
            ..Default::default()
        };
        s.commit(vec![Write::AppendEvents(vec![(cluster.into(), ev)])], i as i64).unwrap();
    }
    let ids = |f: EventFilter| s.list_events(&f).unwrap().iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(EventFilter { limit: 100, ..Default::default() }), vec![8, 9, 10, 11, 12]);
    assert_eq!(
        ids(EventFilter { cluster: Some("odd".into()), limit: 100, ..Default::default() }),
        vec![8, 10, 12]
    );
    let b1 =
        s.list_events(&EventFilter { bundle: Some("b1".into()), limit: 100, ..Default::default() }).unwrap();
    assert!(!b1.is_empty() && b1.iter().all(|e| e.event.bundle == "b1"));
    assert_eq!(ids(EventFilter { limit: 2, ..Default::default() }), vec![11, 12]);
    assert_eq!(ids(EventFilter { after_id: 10, limit: 100, ..Default::default() }), vec![11, 12]);
    let errors = ids(EventFilter { min_severity: Severity::Error, limit: 100, ..Default::default() });
    assert_eq!(errors, vec![12]);
    assert_eq!(s.load().unwrap().last_event_id, 12);
    // Several events in one commit get consecutive ids.
    let evs = (0..3).map(|_| ("odd".to_string(), EventRecord::default())).collect();
    let out = s.commit(vec![Write::AppendEvents(evs)], 20).unwrap();
    let WriteOutcome::Events(stored) = &out[0] else { panic!("{out:?}") };
    assert_eq!(stored.iter().map(|e| e.id).collect::<Vec<_>>(), vec![13, 14, 15]);
    assert_eq!(ids(EventFilter { limit: 100, ..Default::default() }), vec![11, 12, 13, 14, 15]);
}

fn records_round_trip_and_seeding_never_overwrites(b: &dyn Backend) {
    let s = b.open(5);
    let c = ClusterRecord { name: "c1".into(), ..Default::default() };
    let t = TokenRecord {
        id: "tok-1".into(),
        hash: "ab".repeat(32),
        created_unix_ms: 1,
        expires_unix_ms: 2,
        single_use: true,
        uses: 0,
        cluster: Some("c1".into()),
        labels: Default::default(),
        name_prefix: None,
        agent_label_keys: vec!["zone".into()],
    };
    let seed = |generation| Write::SeedStatuses {
        cluster: "c1".into(),
        statuses: vec![StatusRecord {
            status: BundleStatus { bundle: "x".into(), generation, ..Default::default() },
            ..Default::default()
        }],
    };
    let out = s
        .commit(
            vec![
                Write::PutCluster(c.clone()),
                Write::PutToken(t.clone()),
                Write::SetSuspended { bundle: "web".into(), suspended: true },
                Write::SetSuspended { bundle: "api".into(), suspended: true },
                Write::SetSourceSuspended { source: "repo".into(), suspended: true },
                seed(1),
                // A later write of the same commit sees the earlier one.
                seed(2),
            ],
            1,
        )
        .unwrap();
    let WriteOutcome::Seeded { statuses, .. } = &out[5] else { panic!("{out:?}") };
    assert_eq!(statuses.len(), 1);
    assert_eq!(out[6], WriteOutcome::Seeded { cluster: "c1".into(), statuses: vec![] });
    s.commit(vec![Write::SetSuspended { bundle: "api".into(), suspended: false }], 2).unwrap();
    let out = s.commit(vec![seed(9)], 3).unwrap();
    assert_eq!(
        out,
        vec![WriteOutcome::Seeded { cluster: "c1".into(), statuses: vec![] }],
        "never overwrites"
    );
    // What a restart (or another replica) reads back.
    drop(s);
    let s = b.open(5);
    let l = s.load().unwrap();
    assert_eq!(l.clusters, vec![c]);
    assert_eq!(l.tokens, vec![t.clone()]);
    assert_eq!(l.suspended.iter().collect::<Vec<_>>(), ["web"]);
    assert!(l.suspended_sources.contains("repo"));
    assert_eq!(l.statuses.len(), 1);
    assert_eq!(l.statuses[0].1.status.generation, 1);
}

fn rollouts_are_stored_replaced_and_deleted(b: &dyn Backend) {
    use convoy_hub::domain::DeploymentRecord;
    use convoy_hub::domain::rollout::{RolloutRecord, RolloutState};
    let spec: convoy_core::rollout::RolloutSpec = serde_json::from_value(serde_json::json!({
        "waves": [{"name": "eu", "selector": {"matchLabels": {"region": "eu"}}, "soak": "30s"}],
        "onFailure": "rollback"
    }))
    .unwrap();
    let held = DeploymentRecord {
        bundle: "web".into(),
        generation: 3,
        digest: "sha256:old".into(),
        size: 10,
        revision: "main@sha1:aa".into(),
        source: "repo".into(),
        statement: b"{\"held\":1}".to_vec(),
        signature: vec![7, 8, 9],
        created_unix_ms: 5,
    };
    let mut r = RolloutRecord {
        bundle: "web".into(),
        state: RolloutState::new(&spec, "main@sha1:bb", 10),
        held: [("c1".to_string(), held.clone())].into(),
        base: Some(held),
        given: Default::default(),
        rolled_back: Default::default(),
        max_generation: 4,
        version: 1,
    };
    let s = b.open(5);
    s.commit(vec![Write::PutRollout(Box::new(r.clone()))], 1).unwrap();
    let mut other = r.clone();
    other.bundle = "api".into();
    // Replaced in place (a newer version), and a second bundle beside it.
    r.max_generation = 5;
    r.version = 2;
    s.commit(vec![Write::PutRollout(Box::new(r.clone())), Write::PutRollout(Box::new(other.clone()))], 2)
        .unwrap();
    drop(s);
    let s = b.open(5);
    let mut l = s.load().unwrap().rollouts;
    l.sort_by(|a, b| a.bundle.cmp(&b.bundle));
    assert_eq!(l, vec![other, r.clone()], "statement bytes and signatures survive a restart");
    s.commit(vec![Write::DeleteRollout("api".into())], 3).unwrap();
    assert_eq!(s.load().unwrap().rollouts, vec![r]);
}

fn variants_round_trip_keyed_by_bundle_and_key(b: &dyn Backend) {
    use convoy_hub::domain::DeploymentRecord;
    use convoy_hub::domain::variants::VariantRecord;
    let s = b.open(5);
    let v = |bundle: &str, key: &str, generation: u64| VariantRecord {
        key: key.into(),
        base_digest: format!("sha256:{}", "b".repeat(64)),
        record: DeploymentRecord {
            bundle: bundle.into(),
            generation,
            digest: format!("sha256:{}", "c".repeat(64)),
            size: 1,
            revision: "main@sha1:0".into(),
            source: "repo".into(),
            statement: b"{}".to_vec(),
            signature: vec![1],
            created_unix_ms: 1,
        },
    };
    let (k1, k2) = (format!("sha256:{}", "1".repeat(64)), format!("sha256:{}", "2".repeat(64)));
    s.commit(vec![Write::PutVariant(v("web", &k1, 2)), Write::PutVariant(v("web", &k2, 3))], 1).unwrap();
    // Same (bundle, key): replaced; another bundle with the same key: its own record.
    s.commit(vec![Write::PutVariant(v("web", &k1, 4)), Write::PutVariant(v("api", &k1, 5))], 2).unwrap();
    drop(s);
    let mut l = b.open(5).load().unwrap().variants;
    l.sort_by_key(|v| v.record.generation);
    assert_eq!(l, vec![v("web", &k2, 3), v("web", &k1, 4), v("api", &k1, 5)]);
    assert!(b.open(5).load().unwrap().deployments.is_empty(), "variants are not base deployments");
}

/// What an agent reported (Kubernetes version and API versions, which Helm
/// bundles render with) is kept across a restart.
fn liveness_keeps_kube_and_api_versions(b: &dyn Backend) {
    use convoy_hub::domain::Liveness;
    let s = b.open(5);
    let l = Liveness {
        last_seen_unix_ms: 7,
        agent_version: "1.0".into(),
        age_recipients: vec![],
        kube_version: "v1.31.2".into(),
        api_versions: vec!["apps/v1".into(), "policy/v1".into(), "v1".into()],
    };
    s.commit(vec![Write::PutLiveness(vec![("c1".into(), l.clone())])], 1).unwrap();
    let older = Liveness { api_versions: vec![], kube_version: "v1.29.0".into(), ..l.clone() };
    s.commit(vec![Write::PutLiveness(vec![("c2".into(), older.clone())])], 2).unwrap();
    drop(s);
    let mut got = b.open(5).load().unwrap().liveness;
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, vec![("c1".to_string(), l), ("c2".to_string(), older)]);
}

/// Pending agent commands: stored per cluster (a cluster's name is no
/// prefix of another's), bounded per cluster in the store, deleted with the
/// answer that names them, and expired once (the second expiry finds it gone
/// and reports nothing); they survive a reopen.
fn commands_are_listed_per_cluster_bounded_answered_and_expired_once(b: &dyn Backend) {
    use convoy_hub::domain::commands::{CommandRecord, MAX_PENDING, expired_event};
    let rec = |cluster: &str, id: &str, at: i64| CommandRecord {
        cluster: cluster.into(),
        request_id: id.into(),
        bundle: "web".into(),
        generation: 3,
        timeout_seconds: 30,
        created_unix_ms: at,
        expires_unix_ms: at + 90_000,
    };
    let queued = |out: Vec<WriteOutcome>| match out.as_slice() {
        [WriteOutcome::CommandQueued(q)] => *q,
        other => panic!("not a command outcome: {other:?}"),
    };
    let ids = |v: Vec<CommandRecord>| {
        let mut ids: Vec<String> = v.into_iter().map(|c| c.request_id).collect();
        ids.sort();
        ids
    };
    let s = b.open(100);
    assert!(queued(s.commit(vec![Write::PutCommand(rec("c1", "r1", 1))], 1).unwrap()));
    assert!(queued(s.commit(vec![Write::PutCommand(rec("c1", "r2", 2))], 2).unwrap()));
    assert!(queued(s.commit(vec![Write::PutCommand(rec("c10", "r3", 3))], 3).unwrap()));
    assert_eq!(s.commands("c1").unwrap(), vec![rec("c1", "r1", 1), rec("c1", "r2", 2)]);
    assert_eq!(ids(s.commands("c10").unwrap()), ["r3"]);
    assert!(s.commands("c").unwrap().is_empty(), "a name that is a prefix of others has none");

    // The bound per cluster: MAX_PENDING stored, the next refused (and not
    // stored), another cluster unaffected, the same record again accepted.
    for i in 2..MAX_PENDING {
        assert!(queued(s.commit(vec![Write::PutCommand(rec("c1", &format!("x{i:02}"), 10))], 4).unwrap()));
    }
    assert_eq!(s.commands("c1").unwrap().len(), MAX_PENDING);
    assert!(!queued(s.commit(vec![Write::PutCommand(rec("c1", "over", 11))], 5).unwrap()));
    assert!(!s.commands("c1").unwrap().iter().any(|c| c.request_id == "over"));
    assert!(queued(s.commit(vec![Write::PutCommand(rec("c1", "r1", 1))], 6).unwrap()));
    assert!(queued(s.commit(vec![Write::PutCommand(rec("c10", "r4", 12))], 7).unwrap()));

    // The agent's answer deletes its command in the same commit; an event
    // naming another request, or not an answer, deletes nothing.
    let answer = |reason: &str, id: &str| {
        let mut e = EventRecord { bundle: "web".into(), reason: reason.into(), ..Default::default() };
        e.details.insert("requestId".into(), id.into());
        OutboxEntry::Event(e)
    };
    let batch = AgentBatch {
        cluster: "c1".into(),
        epoch: 1,
        entries: vec![
            (1, answer("TestSucceeded", "r1")),
            (2, answer("Applied", "r2")),
            (3, answer("TestFailed", "r3")),
        ],
    };
    let out = s.commit(vec![Write::AgentBatch(batch)], 8).unwrap();
    assert_eq!(batch_outcome(&out).events.len(), 3);
    let c1 = ids(s.commands("c1").unwrap());
    assert!(!c1.contains(&"r1".to_string()) && c1.contains(&"r2".to_string()), "{c1:?}");
    assert_eq!(ids(s.commands("c10").unwrap()), ["r3", "r4"], "r3 is c10's: c1's answer leaves it");

    // Expired: deleted with its report, once.
    let r2 = rec("c1", "r2", 2);
    let expire = || Write::ExpireCommand {
        cluster: "c1".into(),
        request_id: "r2".into(),
        event: expired_event(&r2, 100_000),
    };
    let out = s.commit(vec![expire()], 9).unwrap();
    let WriteOutcome::Events(evs) = &out[0] else { panic!("{out:?}") };
    assert_eq!(evs.len(), 1);
    assert_eq!((evs[0].cluster.as_str(), evs[0].event.reason.as_str()), ("c1", "TestExpired"));
    assert_eq!(evs[0].event.details["requestId"], "r2");
    let out = s.commit(vec![expire()], 10).unwrap();
    assert_eq!(out, vec![WriteOutcome::Events(vec![])], "gone already: nothing reported");
    drop(s);

    let s = b.open(100);
    let left = ids(s.commands("c1").unwrap());
    assert_eq!(left.len(), MAX_PENDING - 2, "r1 answered, r2 expired: {left:?}");
    let mut all = ids(s.load().unwrap().commands);
    all.retain(|id| id.starts_with('r'));
    assert_eq!(all, ["r3", "r4"]);
    let reported = s
        .list_events(&EventFilter { cluster: Some("c1".into()), limit: 100, ..Default::default() })
        .unwrap()
        .into_iter()
        .filter(|e| e.event.reason == "TestExpired")
        .count();
    assert_eq!(reported, 1);
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[test]
            fn redb() {
                super::$case(&super::redb());
            }
            #[cfg(feature = "etcd")]
            #[test]
            fn etcd() {
                use super::etcd::Backends;
                let server = super::etcd::Server::start();
                super::$case(&server.backend("/convoy-test/"));
            }
        }
    )*};
}

conformance!(
    agent_batches_are_idempotent_and_survive_reopen,
    event_log_is_a_bounded_indexed_ring,
    records_round_trip_and_seeding_never_overwrites,
    rollouts_are_stored_replaced_and_deleted,
    variants_round_trip_keyed_by_bundle_and_key,
    liveness_keeps_kube_and_api_versions,
    commands_are_listed_per_cluster_bounded_answered_and_expired_once,
);

#[cfg(feature = "etcd")]
mod etcd_server;

#[cfg(feature = "etcd")]
mod etcd {
    use std::time::Duration;

    use convoy_hub::domain::{AgentBatch, OutboxEntry};
    use convoy_hub::store::{CommitSize, EtcdOptions, EtcdStore, Store, Write, WriteOutcome};

    use super::Backend;

    /// The real etcd of the HA tests (`etcd_server`), as a conformance backend.
    pub use super::etcd_server::Server;

    pub trait Backends {
        fn backend(&self, prefix: &str) -> Etcd;
    }

    impl Backends for Server {
        fn backend(&self, prefix: &str) -> Etcd {
            Etcd { url: self.url.clone(), prefix: prefix.to_string() }
        }
    }

    pub struct Etcd {
        url: String,
        prefix: String,
    }

    impl Backend for Etcd {
        fn open(&self, cap: u64) -> Box<dyn Store> {
            Box::new(EtcdStore::open(&EtcdOptions::new(vec![self.url.clone()], &self.prefix), cap).unwrap())
        }
    }

    /// Three replicas appending events at once: every commit lands exactly
    /// once, ids are unique and consecutive, the ring's indexes agree.
    #[test]
    fn replicas_committing_at_once_are_serialized() {
        let server = Server::start();
        let b = server.backend("/race/");
        let handles: Vec<_> = (0..3)
            .map(|r| {
                let s = b.open(10_000);
                std::thread::spawn(move || {
                    for i in 0..20 {
                        let ev = convoy_hub::domain::EventRecord {
                            bundle: format!("r{r}"),
                            reason: format!("{i}"),
                            ..Default::default()
                        };
                        s.commit(vec![Write::AppendEvents(vec![(format!("c{r}"), ev)])], i).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let s = b.open(10_000);
        let all =
            s.list_events(&convoy_hub::domain::EventFilter { limit: 1000, ..Default::default() }).unwrap();
        assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), (1..=60).collect::<Vec<u64>>());
        for r in 0..3 {
            let mine = s
                .list_events(&convoy_hub::domain::EventFilter {
                    cluster: Some(format!("c{r}")),
                    limit: 1000,
                    ..Default::default()
                })
                .unwrap();
            let reasons: Vec<String> = mine.iter().map(|e| e.event.reason.clone()).collect();
            assert_eq!(reasons, (0..20).map(|i| i.to_string()).collect::<Vec<_>>(), "replica {r} in order");
        }
        assert_eq!(s.load().unwrap().last_event_id, 60);
    }

    /// Commits fence on the keys they read, not on one counter: three
    /// replicas storing status batches of their own clusters at the same time
    /// never make each other compute a commit again, and each stores its
    /// statuses and outbox seqs once. (Fenced on one commit counter, as
    /// before, these commits retried each other.)
    #[test]
    fn replicas_writing_different_clusters_never_retry() {
        let server = Server::start();
        let b = server.backend("/disjoint/");
        let stores: Vec<std::sync::Arc<dyn Store>> = (0..3).map(|_| b.open(100).into()).collect();
        let start = std::sync::Arc::new(std::sync::Barrier::new(3));
        let handles: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(r, s)| {
                let (s, start) = (s.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    for seq in 1..=30u64 {
                        // Each replica holds 4 clusters of its own; one batch each per round.
                        let writes = (0..4)
                            .map(|c| {
                                Write::AgentBatch(AgentBatch {
                                    cluster: format!("r{r}-c{c}"),
                                    epoch: 1,
                                    entries: vec![(seq, super::status("web", seq))],
                                })
                            })
                            .collect();
                        let out = s.commit(writes, seq as i64).unwrap();
                        assert_eq!(out.len(), 4);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let retries: Vec<u64> = stores.iter().map(|s| s.commit_retries()).collect();
        assert_eq!(retries, vec![0, 0, 0], "disjoint commits made each other retry");
        let l = b.open(100).load().unwrap();
        assert_eq!(l.statuses.len(), 12);
        assert!(l.statuses.iter().all(|(_, s)| s.status.generation == 30), "{:?}", l.statuses);
        for r in 0..3 {
            assert_eq!(stores[0].last_seq(&format!("r{r}-c0"), 1).unwrap(), 30);
        }
    }

    /// Two replicas storing the same cluster's outbox (an agent moving
    /// between them) conflict on its stored seq: the second recomputes on
    /// the first's seq and stores only what is new, so nothing is stored twice.
    #[test]
    fn replicas_storing_the_same_outbox_store_each_entry_once() {
        let server = Server::start();
        let b = server.backend("/same-outbox/");
        let stores: Vec<std::sync::Arc<dyn Store>> = (0..2).map(|_| b.open(1000).into()).collect();
        let start = std::sync::Arc::new(std::sync::Barrier::new(2));
        let handles: Vec<_> = stores
            .iter()
            .map(|s| {
                let (s, start) = (s.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let mut stored = 0;
                    for seq in 1..=20u64 {
                        // Both replicas got the same resent outbox entries.
                        let out = s
                            .commit(
                                vec![Write::AgentBatch(AgentBatch {
                                    cluster: "moving".into(),
                                    epoch: 1,
                                    entries: vec![(seq, super::event("web", &format!("e{seq}")))],
                                })],
                                seq as i64,
                            )
                            .unwrap();
                        stored += super::batch_outcome(&out).events.len();
                    }
                    stored
                })
            })
            .collect();
        let stored: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(stored, 20, "each entry stored by exactly one replica");
        let evs = stores[0]
            .list_events(&convoy_hub::domain::EventFilter {
                cluster: Some("moving".into()),
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        let reasons: Vec<String> = evs.iter().map(|e| e.event.reason.clone()).collect();
        assert_eq!(reasons, (1..=20).map(|i| format!("e{i}")).collect::<Vec<_>>());
    }

    fn next_changes(
        rt: &tokio::runtime::Runtime,
        feed: &mut tokio::sync::mpsc::Receiver<convoy_hub::ha::follow::Feed>,
    ) -> Vec<convoy_hub::ha::RemoteChange> {
        use convoy_hub::ha::follow::Feed;
        rt.block_on(async {
            match tokio::time::timeout(Duration::from_secs(10), feed.recv()).await {
                Ok(Some(Feed::Changes { changes, .. })) => changes,
                other => panic!("no changes from the feed: {other:?}"),
            }
        })
    }

    fn deployment(generation: u64, digest: &str) -> convoy_hub::domain::DeploymentRecord {
        convoy_hub::domain::DeploymentRecord {
            bundle: "web".into(),
            generation,
            digest: digest.into(),
            size: 1,
            revision: "main@sha1:1".into(),
            source: "git".into(),
            statement: b"{}".to_vec(),
            signature: vec![1],
            created_unix_ms: 0,
        }
    }

    /// The change feed of a replica: what another replica commits arrives,
    /// one message per commit, decoded; its own commits do not; nothing
    /// committed between its load and its feed's start is missed.
    #[test]
    fn a_replica_follows_the_others_commits_but_not_its_own() {
        use convoy_hub::ha::RemoteChange;
        let server = Server::start();
        let b = server.backend("/follow/");
        let (a, other) = (b.open(100), b.open(100));
        a.load().unwrap();
        // Committed after A's load and before its feed starts: still delivered.
        other.commit(vec![Write::SetSuspended { bundle: "web".into(), suspended: true }], 1).unwrap();
        let mut feed = a.follow().expect("etcd has a change feed");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        assert_eq!(
            next_changes(&rt, &mut feed),
            vec![RemoteChange::Suspended { bundle: "web".into(), suspended: true }]
        );
        // A's own commit is skipped; the next one from the other replica arrives alone.
        a.commit(vec![Write::SetSuspended { bundle: "own".into(), suspended: true }], 2).unwrap();
        let cluster = convoy_hub::domain::ClusterRecord { name: "c1".into(), ..Default::default() };
        other
            .commit(
                vec![
                    Write::PutCluster(cluster.clone()),
                    Write::PutDeployment(deployment(1, "sha256:a")),
                    Write::AgentBatch(AgentBatch {
                        cluster: "c1".into(),
                        epoch: 1,
                        entries: vec![(1, super::status("web", 1)), (2, super::event("web", "Applied"))],
                    }),
                ],
                3,
            )
            .unwrap();
        let changes = next_changes(&rt, &mut feed);
        assert_eq!(
            changes.len(),
            3,
            "cluster, deployment, status (events and seqs are read from the store): {changes:?}"
        );
        assert!(changes.contains(&RemoteChange::Cluster(cluster)));
        assert!(changes.contains(&RemoteChange::Deployment(deployment(1, "sha256:a"))));
        assert!(changes.iter().any(|c| matches!(c, RemoteChange::Status { cluster, status }
            if cluster == "c1" && status.status.bundle == "web" && status.updated_unix_ms == 3)));
        // A resume (a delete) arrives too.
        other.commit(vec![Write::SetSuspended { bundle: "web".into(), suspended: false }], 4).unwrap();
        assert_eq!(
            next_changes(&rt, &mut feed),
            vec![RemoteChange::Suspended { bundle: "web".into(), suspended: false }]
        );
    }

    /// Two replicas deciding on stale copies: a single-use token works once,
    /// and a generation is never signed twice for different artifacts nor
    /// goes backwards.
    #[test]
    fn token_use_and_generations_are_fenced_across_replicas() {
        let server = Server::start();
        let b = server.backend("/fence/");
        let (a, other) = (b.open(100), b.open(100));
        let token = convoy_hub::domain::TokenRecord {
            id: "t1".into(),
            hash: "h".into(),
            created_unix_ms: 0,
            expires_unix_ms: i64::MAX,
            single_use: true,
            uses: 0,
            cluster: None,
            labels: Default::default(),
            name_prefix: None,
            agent_label_keys: Vec::new(),
        };
        a.commit(vec![Write::PutToken(token.clone())], 1).unwrap();
        // Both replicas saw uses = 0 and register with it.
        let used = convoy_hub::domain::TokenRecord { uses: 1, ..token };
        a.commit(vec![Write::PutToken(used.clone())], 2).unwrap();
        let err = other.commit(vec![Write::PutToken(used)], 2).unwrap_err();
        assert!(err.to_string().contains("already used"), "{err}");
        assert_eq!(other.load().unwrap().tokens[0].uses, 1);

        a.commit(vec![Write::PutDeployment(deployment(1, "sha256:a"))], 3).unwrap();
        assert!(other.commit(vec![Write::PutDeployment(deployment(1, "sha256:b"))], 3).is_err());
        a.commit(vec![Write::PutDeployment(deployment(2, "sha256:b"))], 4).unwrap();
        assert!(other.commit(vec![Write::PutDeployment(deployment(1, "sha256:a"))], 4).is_err());
        other.commit(vec![Write::PutDeployment(deployment(2, "sha256:b"))], 5).unwrap();
        let d = &a.load().unwrap().deployments[0];
        assert_eq!((d.generation, d.digest.as_str()), (2, "sha256:b"));
    }

    /// A rollout record is fenced on its stored version: a replica that
    /// decided on a stale copy (another replica wrote the next version in
    /// between) writes nothing, and the whole commit with it.
    #[test]
    fn a_rollout_decided_on_a_stale_copy_is_refused_across_replicas() {
        use convoy_hub::domain::rollout::{RolloutRecord, RolloutState};
        let server = Server::start();
        let b = server.backend("/rollout-fence/");
        let (leader, follower) = (b.open(100), b.open(100));
        let spec: convoy_core::rollout::RolloutSpec =
            serde_json::from_value(serde_json::json!({"waves": [{"name": "eu"}]})).unwrap();
        let rec = |version: u64, revision: &str| RolloutRecord {
            bundle: "web".into(),
            state: RolloutState::new(&spec, revision, 0),
            held: Default::default(),
            base: None,
            given: Default::default(),
            rolled_back: Default::default(),
            max_generation: 2,
            version,
        };
        leader.commit(vec![Write::PutRollout(Box::new(rec(1, "r1")))], 1).unwrap();
        // Both replicas hold version 1; the leader's tick writes version 2 first.
        leader.commit(vec![Write::PutRollout(Box::new(rec(2, "tick")))], 2).unwrap();
        let err = follower
            .commit(
                vec![
                    Write::SetSuspended { bundle: "db".into(), suspended: true },
                    Write::PutRollout(Box::new(rec(2, "approve"))),
                ],
                3,
            )
            .unwrap_err();
        assert!(err.to_string().contains("changed on another hub replica"), "{err}");
        assert!(matches!(err, convoy_hub::Error::RolloutChanged { stored: 2, seen: 1, .. }), "{err}");
        let l = follower.load().unwrap();
        assert_eq!(l.rollouts, vec![rec(2, "tick")], "the leader's write stands");
        assert!(l.suspended.is_empty(), "nothing of the refused commit is written");
        // Decided again on version 2: taken.
        follower.commit(vec![Write::PutRollout(Box::new(rec(3, "approve")))], 4).unwrap();
        assert_eq!(leader.load().unwrap().rollouts[0].version, 3);
    }

    /// The etcd store, recording for each commit the size its writes were
    /// measured at ([`Write::size`]), the encoded size of the request it
    /// sent, and whether etcd took it.
    struct Measured {
        inner: EtcdStore,
        commits: std::sync::Mutex<Vec<(CommitSize, usize, bool)>>,
    }

    impl Store for Measured {
        fn load(&self) -> convoy_hub::Result<convoy_hub::store::Loaded> {
            self.inner.load()
        }
        fn last_seq(&self, cluster: &str, epoch: u64) -> convoy_hub::Result<u64> {
            self.inner.last_seq(cluster, epoch)
        }
        fn list_events(
            &self,
            f: &convoy_hub::domain::EventFilter,
        ) -> convoy_hub::Result<Vec<convoy_hub::domain::StoredEvent>> {
            self.inner.list_events(f)
        }
        fn commit(&self, writes: Vec<Write>, now: i64) -> convoy_hub::Result<Vec<WriteOutcome>> {
            let size = writes.iter().fold(CommitSize::default(), |s, w| s.plus(w.size(true)));
            let r = self.inner.commit(writes, now);
            self.commits.lock().unwrap().push((size, self.inner.last_request_bytes(), r.is_ok()));
            r
        }
        fn commands(
            &self,
            cluster: &str,
        ) -> convoy_hub::Result<Vec<convoy_hub::domain::commands::CommandRecord>> {
            self.inner.commands(cluster)
        }
        fn max_commit_ops(&self) -> usize {
            self.inner.max_commit_ops()
        }
        fn max_commit_bytes(&self) -> usize {
            self.inner.max_commit_bytes()
        }
    }

    /// A burst of `agents` agent batches (a status with a `message_len`
    /// message and an event each) queued at once, then the liveness of
    /// every agent flushed at shutdown, through the hub's writer into an
    /// etcd store with `max_txn_ops` and the default `maxTxnBytes`. Every
    /// job is stored, and every commit's request stays within etcd's
    /// default `--max-request-bytes`: the commits it made.
    fn burst(
        server: &Server,
        prefix: &str,
        max_txn_ops: usize,
        agents: usize,
        message_len: usize,
    ) -> Vec<(CommitSize, usize, bool)> {
        use convoy_hub::domain::{Liveness, StatusRecord};
        let mut opts = EtcdOptions::new(vec![server.url.clone()], prefix);
        opts.max_txn_ops = max_txn_ops;
        assert_eq!(opts.max_txn_bytes, 1_572_864, "etcd's default --max-request-bytes");
        let capacity = (agents * 3 / 4) as u64;
        let store = std::sync::Arc::new(Measured {
            inner: EtcdStore::open(&opts, capacity).unwrap(),
            commits: std::sync::Mutex::new(Vec::new()),
        });
        let bound = store.commit_bound();
        let name = |i: usize| format!("cluster-{i:05}");
        let rows: Vec<(String, Liveness)> = (0..agents)
            .map(|i| {
                (
                    name(i),
                    Liveness {
                        last_seen_unix_ms: i as i64,
                        agent_version: "0.1.0".into(),
                        ..Default::default()
                    },
                )
            })
            .collect();
        let once = std::sync::Mutex::new(Some(rows));
        let liveness: convoy_hub::writer::LivenessSource =
            Box::new(move || once.lock().unwrap().take().unwrap_or_default());
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let failed = rt.block_on(async {
            let shutdown = tokio_util::sync::CancellationToken::new();
            let (events, _) = tokio::sync::broadcast::channel(16);
            let (writer, task) = convoy_hub::writer::spawn(
                store.clone(),
                std::sync::Arc::new(convoy_hub::index::StatusIndex::default()),
                liveness,
                events,
                std::sync::Arc::new(convoy_hub::metrics::Metrics::new()),
                shutdown.clone(),
            );
            let mut pending = Vec::new();
            for i in 0..agents {
                let status = StatusRecord {
                    status: convoy_core::status::BundleStatus {
                        bundle: "web".into(),
                        generation: 1,
                        message: "m".repeat(message_len),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                let mut event = super::event("web", "Applied");
                if let OutboxEntry::Event(e) = &mut event {
                    e.message = "e".repeat(message_len / 4);
                }
                let batch = AgentBatch {
                    cluster: name(i),
                    epoch: 1,
                    entries: vec![(1, OutboxEntry::Status(status)), (2, event)],
                };
                pending.push(writer.submit(vec![Write::AgentBatch(batch)]).await);
            }
            let mut failed = 0;
            for rx in pending {
                if rx.await.unwrap().is_err() {
                    failed += 1;
                }
            }
            shutdown.cancel();
            drop(writer);
            task.await.unwrap();
            failed
        });
        let commits = store.commits.lock().unwrap().clone();
        assert_eq!(failed, 0, "no job failed");
        assert!(commits.iter().all(|c| c.2), "every commit was taken by etcd: {commits:?}");
        for (size, request, _) in &commits {
            assert!(size.fits(bound), "within the bound: {size:?} {bound:?}");
            // The request as sent, with the room etcd's raft header takes.
            assert!(request + 512 <= 1_572_864, "{request} bytes sent");
            // Write::bytes and the margin are an upper bound of what was sent.
            assert!(
                *request
                    <= size.bytes
                        + prefix.len() * (2 * size.ops + 4)
                        + convoy_hub::store::COMMIT_MARGIN_BYTES,
                "estimated {size:?}, sent {request}"
            );
        }
        let l = store.load().unwrap();
        assert_eq!(l.statuses.len(), agents, "every status stored");
        assert!(l.statuses.iter().all(|(_, s)| s.status.message.len() == message_len));
        assert_eq!(l.liveness.len(), agents, "every liveness row stored");
        assert_eq!(l.last_event_id, agents as u64, "every event stored");
        let evs = store
            .list_events(&convoy_hub::domain::EventFilter { limit: agents, ..Default::default() })
            .unwrap();
        assert_eq!(evs.len() as u64, capacity, "the ring keeps its capacity, older events trimmed");
        for i in [0, agents / 2, agents - 1] {
            assert_eq!(store.last_seq(&name(i), 1).unwrap(), 2, "outbox of {} acknowledged", name(i));
        }
        drop(rt);
        commits
    }

    /// etcd at its defaults (128 operations, 1.5 MiB per request) with
    /// `store.maxTxnOps: 128`: a burst of 2,000 statuses with 1 KiB
    /// messages and their events is stored completely in many small
    /// commits, none refused.
    #[test]
    fn etcd_at_its_default_limits_stores_a_burst_with_max_txn_ops_128() {
        let server = Server::start_with_default_limits(&[]);
        let commits = burst(&server, "/defaults/", 128, 2000, 1024);
        assert!(commits.iter().all(|(s, _, _)| s.ops <= 128 - 16), "{commits:?}");
        // 2,000 jobs of 9 ops at 112 per commit, and 2,000 liveness rows.
        assert!(commits.len() >= 2000 / 12 + 2000 / 112, "{} commits", commits.len());
    }

    /// etcd with raised `--max-txn-ops` but its default `--max-request-bytes`:
    /// the ops bound would take the whole burst in two commits of several
    /// MiB each, which etcd refuses; the byte bound splits it instead.
    #[test]
    fn the_byte_bound_splits_a_burst_etcd_would_refuse_whole() {
        let server = Server::start_with_default_limits(&["--max-txn-ops", "10000"]);
        let commits = burst(&server, "/bytes/", 10_000, 2000, 2048);
        let total: usize = commits.iter().map(|(s, _, _)| s.bytes).sum();
        assert!(total > 4 * 1_572_864, "the burst is several requests' worth: {total} bytes");
        let by_ops = commits.iter().map(|(s, _, _)| s.ops).sum::<usize>().div_ceil(10_000 - 16);
        assert!(commits.len() > by_ops, "split by bytes, not only by ops: {} commits", commits.len());
        assert!(commits.len() >= total.div_ceil(1_572_864), "{} commits", commits.len());
        let largest = commits.iter().map(|(_, r, _)| *r).max().unwrap();
        assert!(largest > 1_572_864 / 2, "commits are filled up to the byte bound: {largest}");
    }

    /// Prefixes are separate hubs; a prefix written by a newer hub is refused.
    #[test]
    fn prefixes_are_separate_and_a_newer_schema_is_refused() {
        let server = Server::start();
        let a = server.backend("/a/").open(10);
        a.commit(vec![Write::SetSuspended { bundle: "web".into(), suspended: true }], 1).unwrap();
        assert!(server.backend("/b/").open(10).load().unwrap().suspended.is_empty());
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut c = etcd_client::Client::connect([server.url.as_str()], None).await.unwrap();
            c.put("/a/meta/schema", "2", None).await.unwrap();
        });
        let err =
            EtcdStore::open(&EtcdOptions::new(vec![server.url.clone()], "/a/"), 10).err().expect("refused");
        assert!(err.to_string().contains("newer hub"), "{err}");
        let mut unreachable = EtcdOptions::new(vec!["http://127.0.0.1:1".into()], "/a/");
        unreachable.connect_timeout = std::time::Duration::from_millis(500);
        unreachable.request_timeout = std::time::Duration::from_secs(1);
        let err = EtcdStore::open(&unreachable, 10).err();
        assert!(err.is_some(), "an unreachable etcd is an error, not an empty store");
    }
}
