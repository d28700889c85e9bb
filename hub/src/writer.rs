//! The store writer: the one task that commits to the store, with group commit.
//!
//! Every component submits a list of [`Write`]s and awaits its outcome. The
//! writer takes whatever is queued (up to a bound), commits it in ONE
//! transaction in `spawn_blocking`, then, before answering anyone, feeds the
//! committed results into the in-memory indexes it owns: the status index
//! ([`crate::index`]) and the event feed. So an ack reaches an agent only after
//! its entries are durable, and a fleet query never shows a status that is not
//! stored. It knows nothing of the state actor: last-seen times reach it
//! through a [`LivenessSource`] the runtime wires in.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info_span};

use crate::domain::{Liveness, StoredEvent};
use crate::index::StatusIndex;
use crate::metrics::Metrics;
use crate::store::{CommitSize, Store, Write, WriteOutcome, liveness_row_bytes};
use crate::{Error, Result, now_ms};

/// Most writes committed in one transaction.
const MAX_GROUP: usize = 4096;

/// How often last-seen times and agent versions are persisted.
const LIVENESS_PERIOD: Duration = Duration::from_secs(60);

struct Job {
    writes: Vec<Write>,
    reply: oneshot::Sender<Result<Vec<WriteOutcome>>>,
}

/// Takes the last-seen times and agent versions that changed since the last
/// call (persisted once per tick and at shutdown).
pub type LivenessSource = Box<dyn Fn() -> Vec<(String, Liveness)> + Send + Sync>;

/// A cheap handle to submit writes.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Job>,
    bound: CommitSize,
}

impl WriterHandle {
    /// Queue writes; the returned receiver resolves once they are committed.
    pub async fn submit(&self, writes: Vec<Write>) -> oneshot::Receiver<Result<Vec<WriteOutcome>>> {
        let (reply, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(job)) = self.tx.send(Job { writes, reply }).await {
            let _ = job.reply.send(Err(Error::ShuttingDown));
        }
        rx
    }

    /// The most one commit carries ([`Store::commit_bound`]): a job over it
    /// is tried alone, and a store with limits (etcd) refuses it whole.
    pub fn bound(&self) -> CommitSize {
        self.bound
    }

    /// Queue writes and wait for the commit.
    pub async fn commit(&self, writes: Vec<Write>) -> Result<Vec<WriteOutcome>> {
        self.submit(writes).await.await.unwrap_or(Err(Error::ShuttingDown))
    }
}

/// Start the writer task. It ends when every handle is dropped, or on
/// `shutdown` after committing what is queued.
pub fn spawn(
    store: Arc<dyn Store>,
    statuses: Arc<StatusIndex>,
    liveness: LivenessSource,
    events: broadcast::Sender<Arc<StoredEvent>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> (WriterHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(8192);
    let bound = store.commit_bound();
    let task = tokio::spawn(
        run(store, statuses, liveness, events, metrics, rx, shutdown).instrument(info_span!("store_writer")),
    );
    (WriterHandle { tx, bound }, task)
}

async fn run(
    store: Arc<dyn Store>,
    statuses: Arc<StatusIndex>,
    dirty_liveness: LivenessSource,
    events: broadcast::Sender<Arc<StoredEvent>>,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<Job>,
    shutdown: CancellationToken,
) {
    // Last-seen times change with every heartbeat; they are persisted in one
    // batch per tick (and at shutdown), not with every commit.
    let mut liveness_tick = tokio::time::interval(LIVENESS_PERIOD);
    liveness_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    liveness_tick.tick().await;
    let mut stopping = false;
    let mut final_flush = false;
    // Most `Write::ops` and `Write::bytes` in one commit (etcd's transaction
    // bounds), and the job that did not fit into the last group, with its
    // size: it starts the next one.
    let bound = store.commit_bound();
    let with_bytes = bound.bounds_bytes();
    let mut pending: Option<(Job, CommitSize)> = None;
    // Liveness rows that did not fit into a commit: they go with the next ones.
    let mut liveness_left: Vec<(String, Liveness)> = Vec::new();
    // Liveness rows of a commit that failed: they go with the next flush,
    // unless that flush has a newer row of the same cluster.
    let mut liveness_failed: Vec<(String, Liveness)> = Vec::new();
    loop {
        let mut flush_liveness = false;
        let first = if let Some(j) = pending.take() {
            Some(j)
        } else if !liveness_left.is_empty() {
            rx.try_recv().ok().map(|j| sized(j, with_bytes))
        } else {
            tokio::select! {
            job = rx.recv() => match job {
                Some(j) => Some(sized(j, with_bytes)),
                None => {
                    if final_flush {
                        break;
                    }
                    // Every handle is gone: persist the last liveness, then stop.
                    final_flush = true;
                    flush_liveness = true;
                    None
                }
            },
            _ = liveness_tick.tick() => {
                flush_liveness = true;
                None
            }
            _ = shutdown.cancelled(), if !stopping => {
                // Keep committing what arrives while sessions close; the
                // runtime drops the handles to end us.
                stopping = true;
                flush_liveness = true;
                None
            }
            }
        };
        let mut jobs = Vec::new();
        let mut n = 0;
        let mut used = CommitSize::default();
        if let Some((j, size)) = first {
            // A first job over the bound on its own is still tried alone.
            n += j.writes.len();
            used = used.plus(size);
            jobs.push(j);
            while n < MAX_GROUP {
                match rx.try_recv() {
                    Ok(j) => {
                        let (j, size) = sized(j, with_bytes);
                        if !used.plus(size).fits(bound) {
                            pending = Some((j, size));
                            break;
                        }
                        n += j.writes.len();
                        used = used.plus(size);
                        jobs.push(j);
                    }
                    Err(_) => break,
                }
            }
        }
        if flush_liveness {
            let fresh = dirty_liveness();
            liveness_left.extend(not_superseded(std::mem::take(&mut liveness_failed), &fresh));
            liveness_left.extend(fresh);
        }
        // As many liveness rows as fit beside the jobs; the rest go with the
        // next commits (the loop comes back at once while rows are left).
        let room = liveness_room(used, &liveness_left, bound, jobs.is_empty());
        let liveness: Vec<(String, Liveness)> = liveness_left.drain(..room).collect();
        if jobs.is_empty() && liveness.is_empty() {
            if final_flush && pending.is_none() {
                break;
            }
            continue;
        }
        let mut writes: Vec<Write> = Vec::with_capacity(n + 1);
        let mut counts = Vec::with_capacity(jobs.len());
        let mut replies = Vec::with_capacity(jobs.len());
        for j in jobs {
            counts.push(j.writes.len());
            writes.extend(j.writes);
            replies.push(j.reply);
        }
        let has_liveness = !liveness.is_empty();
        // Kept until the commit's outcome: a failed commit's rows are tried again.
        let mut rows = Vec::new();
        if has_liveness {
            rows.clone_from(&liveness);
            writes.push(Write::PutLiveness(liveness));
        }
        let started = Instant::now();
        let st = store.clone();
        let result = match tokio::task::spawn_blocking(move || st.commit(writes, now_ms())).await {
            Ok(r) => r,
            Err(e) => Err(Error::Store(format!("commit task failed: {e}"))),
        };
        metrics.store_commit_seconds.observe(started.elapsed().as_secs_f64());
        metrics.store_commit_writes.observe(n as f64);
        let retries = store.commit_retries();
        metrics.store_commit_retries.inc_by(retries.saturating_sub(metrics.store_commit_retries.get()));
        match result {
            Ok(mut outcomes) => {
                if has_liveness {
                    outcomes.pop();
                }
                apply_outcomes(&statuses, &outcomes, &events);
                let mut it = outcomes.into_iter();
                for (count, reply) in counts.into_iter().zip(replies) {
                    let part: Vec<WriteOutcome> = it.by_ref().take(count).collect();
                    let _ = reply.send(Ok(part));
                }
            }
            Err(e) => {
                error!(error = %e, writes = n, liveness = rows.len(), "store commit failed");
                liveness_failed.extend(rows);
                let msg = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(Error::Store(msg.clone())));
                }
            }
        }
    }
    debug!("store writer stopped");
}

/// The liveness rows of a failed commit that a fresh flush does not
/// replace (a cluster heard from again has a newer row). Pure.
fn not_superseded(failed: Vec<(String, Liveness)>, fresh: &[(String, Liveness)]) -> Vec<(String, Liveness)> {
    let newer: std::collections::HashSet<&str> = fresh.iter().map(|(c, _)| c.as_str()).collect();
    failed.into_iter().filter(|(c, _)| !newer.contains(c.as_str())).collect()
}

/// A job with the share of a commit its writes take ([`Write::size`]).
fn sized(j: Job, with_bytes: bool) -> (Job, CommitSize) {
    let size = j.writes.iter().fold(CommitSize::default(), |s, w| s.plus(w.size(with_bytes)));
    (j, size)
}

/// How many of the first `rows` fit into a commit that already carries
/// `used` within `bound`, as one [`Write::PutLiveness`]. A commit that
/// carries nothing else (`alone`) takes at least one row, so that a row
/// over the bound on its own is still tried (and reported) instead of
/// waiting forever. Pure.
fn liveness_room(used: CommitSize, rows: &[(String, Liveness)], bound: CommitSize, alone: bool) -> usize {
    let with_bytes = bound.bounds_bytes();
    let mut total = used;
    let mut fit = 0;
    for (name, l) in rows {
        let size = CommitSize { ops: 1, bytes: if with_bytes { liveness_row_bytes(name, l) } else { 0 } };
        total = total.plus(size);
        if !total.fits(bound) {
            break;
        }
        fit += 1;
    }
    if fit == 0 && alone { rows.len().min(1) } else { fit }
}

/// Feed committed results into the in-memory indexes, then the event feed.
fn apply_outcomes(
    index: &StatusIndex,
    outcomes: &[WriteOutcome],
    events: &broadcast::Sender<Arc<StoredEvent>>,
) {
    let mut stored_events: Vec<&StoredEvent> = Vec::new();
    for o in outcomes {
        match o {
            WriteOutcome::Batch(b) => {
                if !b.statuses.is_empty() {
                    index.put(&b.cluster, &b.statuses);
                }
                stored_events.extend(b.events.iter());
            }
            WriteOutcome::Seeded { cluster, statuses } => index.put(cluster, statuses),
            WriteOutcome::Events(evs) => stored_events.extend(evs.iter()),
            WriteOutcome::Done | WriteOutcome::CommandQueued(_) => {}
        }
    }
    for e in stored_events {
        let _ = events.send(Arc::new(e.clone()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::domain::{AgentBatch, Liveness, OutboxEntry, StatusRecord};
    use crate::store::{Loaded, RedbStore};
    use convoy_core::status::BundleStatus;

    /// A redb store that takes at most `max` ops and bytes per commit, as
    /// etcd's `--max-txn-ops` and `--max-request-bytes` bound a
    /// transaction, refuses a larger commit whole (as etcd does), and
    /// records each commit's size.
    struct Bounded {
        inner: RedbStore,
        max: CommitSize,
        commits: Mutex<Vec<CommitSize>>,
        /// How many of the next commits to refuse (a failing store).
        refuse: Mutex<usize>,
    }

    impl Bounded {
        fn open(dir: &std::path::Path, max: CommitSize) -> Arc<Bounded> {
            let inner = RedbStore::open(&dir.join("s.redb"), 100, 1 << 20).unwrap();
            Arc::new(Bounded { inner, max, commits: Mutex::new(Vec::new()), refuse: Mutex::new(0) })
        }
    }

    impl Store for Bounded {
        fn load(&self) -> Result<Loaded> {
            self.inner.load()
        }
        fn last_seq(&self, cluster: &str, epoch: u64) -> Result<u64> {
            self.inner.last_seq(cluster, epoch)
        }
        fn list_events(&self, f: &crate::domain::EventFilter) -> Result<Vec<StoredEvent>> {
            self.inner.list_events(f)
        }
        fn commands(&self, cluster: &str) -> Result<Vec<crate::domain::commands::CommandRecord>> {
            self.inner.commands(cluster)
        }
        fn commit(&self, writes: Vec<Write>, now: i64) -> Result<Vec<WriteOutcome>> {
            let size = writes.iter().fold(CommitSize::default(), |s, w| s.plus(w.size(true)));
            self.commits.lock().unwrap().push(size);
            if !size.fits(self.max) {
                return Err(Error::Store(format!("request too large: {size:?} > {:?}", self.max)));
            }
            let mut refuse = self.refuse.lock().unwrap();
            if *refuse > 0 {
                *refuse -= 1;
                return Err(Error::Store("store unavailable".into()));
            }
            self.inner.commit(writes, now)
        }
        fn max_commit_ops(&self) -> usize {
            self.max.ops
        }
        fn max_commit_bytes(&self) -> usize {
            self.max.bytes
        }
    }

    /// The writer over `store`, with `rows` as the liveness it flushes once.
    fn writer_over(
        store: Arc<Bounded>,
        rows: Vec<(String, Liveness)>,
    ) -> (WriterHandle, tokio::task::JoinHandle<()>, CancellationToken) {
        writer_with(store, vec![rows])
    }

    /// The writer over `store`; each liveness flush takes the next of `flushes`.
    fn writer_with(
        store: Arc<Bounded>,
        flushes: Vec<Vec<(String, Liveness)>>,
    ) -> (WriterHandle, tokio::task::JoinHandle<()>, CancellationToken) {
        let flushes = Mutex::new(std::collections::VecDeque::from(flushes));
        let liveness: LivenessSource =
            Box::new(move || flushes.lock().unwrap().pop_front().unwrap_or_default());
        let shutdown = CancellationToken::new();
        let (events, _) = broadcast::channel(16);
        let (writer, task) = spawn(
            store,
            Arc::new(StatusIndex::default()),
            liveness,
            events,
            Arc::new(Metrics::new()),
            shutdown.clone(),
        );
        (writer, task, shutdown)
    }

    /// An agent batch of one status whose message is `message_len` bytes.
    fn long_status(cluster: &str, message_len: usize) -> Write {
        Write::AgentBatch(AgentBatch {
            cluster: cluster.into(),
            epoch: 1,
            entries: vec![(
                1,
                OutboxEntry::Status(StatusRecord {
                    status: BundleStatus {
                        bundle: "web".into(),
                        generation: 1,
                        message: "m".repeat(message_len),
                        ..Default::default()
                    },
                    ..Default::default()
                }),
            )],
        })
    }

    fn batch(cluster: &str) -> Write {
        let status = |b: &str| {
            OutboxEntry::Status(StatusRecord {
                status: BundleStatus { bundle: b.into(), generation: 1, ..Default::default() },
                ..Default::default()
            })
        };
        Write::AgentBatch(AgentBatch {
            cluster: cluster.into(),
            epoch: 1,
            entries: vec![(1, status("a")), (2, status("b"))],
        })
    }

    /// Group commits stay within the store's bound: queued jobs that would
    /// not fit start the next commit, and liveness rows beyond the bound are
    /// split over several commits; everything is stored, nothing refused.
    #[tokio::test]
    async fn group_commits_never_exceed_the_stores_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = Bounded::open(dir.path(), CommitSize { ops: 10, bytes: usize::MAX });
        let rows: Vec<(String, Liveness)> = (0..25)
            .map(|i| (format!("c{i}"), Liveness { last_seen_unix_ms: i, ..Default::default() }))
            .collect();
        let (writer, task, shutdown) = writer_over(store.clone(), rows);
        // 30 jobs of 4 ops each, all queued before the writer looks.
        let mut pending = Vec::new();
        for i in 0..30 {
            pending.push(writer.submit(vec![batch(&format!("c{i}"))]).await);
        }
        for rx in pending {
            rx.await.unwrap().expect("every job is committed");
        }
        // Shutdown flushes the 25 liveness rows.
        shutdown.cancel();
        drop(writer);
        task.await.unwrap();
        let commits: Vec<usize> = store.commits.lock().unwrap().iter().map(|c| c.ops).collect();
        assert!(commits.iter().all(|&ops| ops <= 10), "{commits:?}");
        assert!(commits.len() >= 3 + 12, "30 × 4 ops and 25 rows need at least 15 commits: {commits:?}");
        let l = store.load().unwrap();
        assert_eq!(l.statuses.len(), 60);
        assert_eq!(l.liveness.len(), 25);
    }

    /// The byte bound is the second dimension of the same budget: statuses
    /// with long messages are grouped only as far as their bytes fit (the
    /// ops bound is far away), liveness rows are split by bytes too, and
    /// everything is stored.
    #[tokio::test]
    async fn group_commits_never_exceed_the_stores_byte_bound() {
        let dir = tempfile::tempdir().unwrap();
        let one = long_status("c0", 1000).bytes();
        // Room for three such jobs, not four.
        let max = CommitSize { ops: 10_000, bytes: 3 * one + one / 2 };
        let store = Bounded::open(dir.path(), max);
        let row = |i: usize| {
            (format!("cluster-{i:04}"), Liveness { agent_version: "v".repeat(200), ..Default::default() })
        };
        let rows: Vec<(String, Liveness)> = (0..40).map(row).collect();
        let row_bytes = liveness_row_bytes(&rows[0].0, &rows[0].1);
        let (writer, task, shutdown) = writer_over(store.clone(), rows);
        let mut pending = Vec::new();
        for i in 0..30 {
            pending.push(writer.submit(vec![long_status(&format!("c{i}"), 1000)]).await);
        }
        for rx in pending {
            rx.await.unwrap().expect("every job is committed");
        }
        shutdown.cancel();
        drop(writer);
        task.await.unwrap();
        let commits = store.commits.lock().unwrap().clone();
        assert!(commits.iter().all(|c| c.fits(max)), "{commits:?}");
        let rows_per_commit = max.bytes / row_bytes;
        assert!(
            commits.len() >= 30 / 3 + 40usize.div_ceil(rows_per_commit),
            "30 jobs at 3 per commit and 40 rows at {rows_per_commit} per commit: {commits:?}"
        );
        let l = store.load().unwrap();
        assert_eq!(l.statuses.len(), 30);
        assert_eq!(l.liveness.len(), 40);
    }

    /// A job over the bound on its own is still tried, alone: the store
    /// refuses it whole and its caller gets that error; the jobs queued
    /// around it are committed in commits of their own.
    #[tokio::test]
    async fn a_job_over_the_bound_is_tried_alone_and_its_error_reported() {
        let dir = tempfile::tempdir().unwrap();
        let max = CommitSize { ops: 10_000, bytes: 4 * long_status("c", 1000).bytes() };
        let store = Bounded::open(dir.path(), max);
        let (writer, task, shutdown) = writer_over(store.clone(), Vec::new());
        let before = writer.submit(vec![long_status("before", 1000)]).await;
        let huge = writer.submit(vec![long_status("huge", 10_000)]).await;
        let after = writer.submit(vec![long_status("after", 1000)]).await;
        before.await.unwrap().expect("committed");
        let err = huge.await.unwrap().expect_err("refused by the store");
        assert!(err.to_string().contains("request too large"), "the store's error: {err}");
        after.await.unwrap().expect("committed");
        shutdown.cancel();
        drop(writer);
        task.await.unwrap();
        let commits = store.commits.lock().unwrap().clone();
        assert_eq!(commits.len(), 3, "before, huge alone, after: {commits:?}");
        assert!(!commits[1].fits(max) && commits[0].fits(max) && commits[2].fits(max), "{commits:?}");
        let mut stored: Vec<String> = store.load().unwrap().statuses.into_iter().map(|(c, _)| c).collect();
        stored.sort();
        assert_eq!(stored, vec!["after".to_string(), "before".to_string()]);
    }

    /// The liveness rows of a commit the store refused are not lost: they
    /// go with the next flush, where a newer row of the same cluster wins.
    #[tokio::test]
    async fn liveness_rows_of_a_failed_commit_go_with_the_next_flush() {
        let dir = tempfile::tempdir().unwrap();
        let store = Bounded::open(dir.path(), CommitSize::UNBOUNDED);
        *store.refuse.lock().unwrap() = 1;
        let seen =
            |c: &str, at: i64| (c.to_string(), Liveness { last_seen_unix_ms: at, ..Default::default() });
        let first = vec![seen("a", 1), seen("b", 1), seen("c", 1)];
        let (writer, task, shutdown) = writer_with(store.clone(), vec![first, vec![seen("b", 2)]]);
        // Shutdown begins with a flush: the store refuses it.
        shutdown.cancel();
        while store.commits.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(store.load().unwrap().liveness.is_empty());
        // The last handle gone, the final flush: the refused rows, with b's
        // newer row instead of its old one.
        drop(writer);
        task.await.unwrap();
        let mut l = store.load().unwrap().liveness;
        l.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(l, vec![seen("a", 1), seen("b", 2), seen("c", 1)]);
        assert_eq!(store.commits.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_batch_takes_the_outbox_entries_that_fit_and_leaves_the_rest() {
        use crate::store::agent_batch_fitting;
        let entries: Vec<(u64, OutboxEntry)> = (1..=10)
            .map(|seq| {
                let Write::AgentBatch(b) = long_status("c", 500) else { unreachable!() };
                let mut e = b.entries[0].1.clone();
                if seq % 3 == 0 {
                    e = OutboxEntry::Event(crate::domain::EventRecord {
                        bundle: "web".into(),
                        ..Default::default()
                    });
                }
                (seq, e)
            })
            .collect();
        let size = |n: usize| {
            Write::AgentBatch(AgentBatch { cluster: "c".into(), epoch: 1, entries: entries[..n].to_vec() })
                .size(true)
        };
        // Unbounded (redb): all of them.
        assert_eq!(agent_batch_fitting("c", &entries, CommitSize::UNBOUNDED), 10);
        // Each bound, in either dimension, takes the longest prefix that fits.
        for bound in [
            CommitSize { ops: 9, bytes: usize::MAX },
            CommitSize { ops: 20, bytes: usize::MAX },
            CommitSize { ops: 1000, bytes: size(4).bytes },
            CommitSize { ops: 1000, bytes: size(7).bytes - 1 },
            CommitSize { ops: 12, bytes: size(6).bytes },
        ] {
            let n = agent_batch_fitting("c", &entries, bound);
            assert!(size(n).fits(bound) && !size(n + 1).fits(bound), "{bound:?}: {n}");
        }
        // An entry over the bound alone is still taken, alone; nothing of nothing.
        assert_eq!(agent_batch_fitting("c", &entries, CommitSize { ops: 1000, bytes: 10 }), 1);
        assert_eq!(agent_batch_fitting("c", &[], CommitSize { ops: 1, bytes: 1 }), 0);
    }

    #[test]
    fn a_seed_takes_the_statuses_that_fit_and_leaves_the_rest() {
        use crate::store::seed_fitting;
        let statuses: Vec<StatusRecord> = (0..10)
            .map(|i| StatusRecord {
                status: BundleStatus {
                    bundle: format!("b{i}"),
                    message: "m".repeat(i * 100),
                    ..Default::default()
                },
                ..Default::default()
            })
            .collect();
        let size = |n: usize| {
            Write::SeedStatuses { cluster: "c".into(), statuses: statuses[..n].to_vec() }.size(true)
        };
        assert_eq!(seed_fitting("c", &statuses, CommitSize::UNBOUNDED), 10);
        for bound in [
            CommitSize { ops: 3, bytes: usize::MAX },
            CommitSize { ops: 100, bytes: size(5).bytes },
            CommitSize { ops: 100, bytes: size(8).bytes - 1 },
        ] {
            let n = seed_fitting("c", &statuses, bound);
            assert!(size(n).fits(bound) && !size(n + 1).fits(bound), "{bound:?}: {n}");
        }
        assert_eq!(seed_fitting("c", &statuses, CommitSize { ops: 100, bytes: 1 }), 1);
    }

    #[test]
    fn liveness_rows_take_the_room_left_in_both_dimensions() {
        let rows: Vec<(String, Liveness)> = (0..5).map(|i| (format!("c{i}"), Liveness::default())).collect();
        let b = liveness_row_bytes("c0", &Liveness::default());
        let bound = |ops, bytes| CommitSize { ops, bytes };
        let used = |ops, bytes| CommitSize { ops, bytes };
        // Unbounded bytes: the ops left.
        assert_eq!(liveness_room(used(0, 0), &rows, bound(3, usize::MAX), true), 3);
        assert_eq!(liveness_room(used(2, 0), &rows, bound(10, usize::MAX), false), 5);
        assert_eq!(liveness_room(used(9, 0), &rows, bound(10, usize::MAX), false), 1);
        // The bytes left bound it.
        assert_eq!(liveness_room(used(0, 0), &rows, bound(100, 2 * b), true), 2);
        assert_eq!(liveness_room(used(1, b), &rows, bound(100, 3 * b + 1), false), 2);
        // The tighter dimension wins.
        assert_eq!(liveness_room(used(0, 0), &rows, bound(1, 4 * b), true), 1);
        // A full commit takes none beside its jobs; an empty one takes one
        // row even over the bound, so that it is tried and reported.
        assert_eq!(liveness_room(used(10, 0), &rows, bound(10, usize::MAX), false), 0);
        assert_eq!(liveness_room(used(0, 0), &rows, bound(100, b - 1), false), 0);
        assert_eq!(liveness_room(used(0, 0), &rows, bound(100, b - 1), true), 1);
        assert_eq!(liveness_room(used(0, 0), &[], bound(100, b - 1), true), 0);
    }

    #[test]
    fn bytes_bound_the_encoded_keys_and_values() {
        // A value counts as encoded: a longer message, that many more bytes.
        let short = long_status("c", 10).bytes();
        assert_eq!(long_status("c", 1010).bytes(), short + 1000);
        // At least the JSON of the status and its key.
        let Write::AgentBatch(b) = long_status("c", 1000) else { unreachable!() };
        let OutboxEntry::Status(s) = &b.entries[0].1 else { unreachable!() };
        assert!(short + 990 >= serde_json::to_vec(s).unwrap().len() + "status/c/web".len());
        // An event counts its record and the index keys of the event it
        // pushes out of the ring, whose names it cannot know: at their longest.
        let ev = crate::domain::EventRecord {
            bundle: "web".into(),
            message: "x".repeat(500),
            ..Default::default()
        };
        let one = Write::AppendEvents(vec![("c".into(), ev.clone())]).bytes();
        let two = Write::AppendEvents(vec![("c".into(), ev.clone()), ("c".into(), ev)]).bytes();
        assert!(one > 500 + 2 * 253, "{one}");
        assert!(two > one && two < 2 * one, "the next event id once per write: {one} {two}");
        // Liveness, per row; records of one key.
        let rows = vec![("a".to_string(), Liveness::default()), ("bb".to_string(), Liveness::default())];
        assert_eq!(
            Write::PutLiveness(rows.clone()).bytes(),
            liveness_row_bytes("a", &rows[0].1) + liveness_row_bytes("bb", &rows[1].1)
        );
        assert_eq!(
            Write::DeleteRollout("web".into()).bytes(),
            "rollouts/web".len() + crate::store::KEY_OVERHEAD_BYTES
        );
        assert_eq!(Write::PutLiveness(rows).size(false), CommitSize { ops: 2, bytes: 0 });
    }

    #[test]
    fn ops_count_keys_put_deleted_or_compared() {
        assert_eq!(batch("c").ops(), 4);
        assert_eq!(Write::PutLiveness(vec![Default::default(); 7]).ops(), 7);
        let ev = |b: &str| {
            (String::from("c"), crate::domain::EventRecord { bundle: b.into(), ..Default::default() })
        };
        assert_eq!(Write::AppendEvents(vec![ev("a"), ev("b")]).ops(), 13);
        let with_event = Write::AgentBatch(AgentBatch {
            cluster: "c".into(),
            epoch: 1,
            entries: vec![(1, OutboxEntry::Event(ev("a").1))],
        });
        assert_eq!(with_event.ops(), 8);
        assert_eq!(Write::DeleteRollout("web".into()).ops(), 1);
    }
}
