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
use crate::store::{Store, Write, WriteOutcome};
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
    let task = tokio::spawn(
        run(store, statuses, liveness, events, metrics, rx, shutdown).instrument(info_span!("store_writer")),
    );
    (WriterHandle { tx }, task)
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
    // Most `Write::ops` in one commit (etcd's transaction bound), and the
    // job that did not fit into the last group: it starts the next one.
    let budget = store.max_commit_ops();
    let mut pending: Option<Job> = None;
    // Liveness rows that did not fit into a commit: they go with the next ones.
    let mut liveness_left: Vec<(String, Liveness)> = Vec::new();
    loop {
        let mut flush_liveness = false;
        let first = if let Some(j) = pending.take() {
            Some(j)
        } else if !liveness_left.is_empty() {
            rx.try_recv().ok()
        } else {
            tokio::select! {
            job = rx.recv() => match job {
                Some(j) => Some(j),
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
        let mut ops = 0;
        if let Some(j) = first {
            n += j.writes.len();
            ops += job_ops(&j);
            jobs.push(j);
            while n < MAX_GROUP {
                match rx.try_recv() {
                    Ok(j) if ops + job_ops(&j) > budget => {
                        pending = Some(j);
                        break;
                    }
                    Ok(j) => {
                        n += j.writes.len();
                        ops += job_ops(&j);
                        jobs.push(j);
                    }
                    Err(_) => break,
                }
            }
        }
        if flush_liveness {
            liveness_left.extend(dirty_liveness());
        }
        // As many liveness rows as fit beside the jobs; the rest go with the
        // next commits (the loop comes back at once while rows are left).
        let room = budget.saturating_sub(ops).min(liveness_left.len());
        let room = if room == 0 && jobs.is_empty() { budget.min(liveness_left.len()) } else { room };
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
        if has_liveness {
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
                error!(error = %e, writes = n, "store commit failed");
                let msg = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(Error::Store(msg.clone())));
                }
            }
        }
    }
    debug!("store writer stopped");
}

/// The store operations a job's writes take ([`Write::ops`]).
fn job_ops(j: &Job) -> usize {
    j.writes.iter().map(Write::ops).sum()
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

    /// A redb store that takes at most `max` ops per commit, as etcd's
    /// `--max-txn-ops` bounds a transaction, and records each commit's ops.
    struct Bounded {
        inner: RedbStore,
        max: usize,
        commits: Mutex<Vec<usize>>,
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
            let ops: usize = writes.iter().map(Write::ops).sum();
            self.commits.lock().unwrap().push(ops);
            if ops > self.max {
                return Err(Error::Store(format!("too many operations: {ops} > {}", self.max)));
            }
            self.inner.commit(writes, now)
        }
        fn max_commit_ops(&self) -> usize {
            self.max
        }
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
        let store = Arc::new(Bounded {
            inner: RedbStore::open(&dir.path().join("s.redb"), 100, 1 << 20).unwrap(),
            max: 10,
            commits: Mutex::new(Vec::new()),
        });
        let rows: Vec<(String, Liveness)> = (0..25)
            .map(|i| (format!("c{i}"), Liveness { last_seen_unix_ms: i, ..Default::default() }))
            .collect();
        let once = Mutex::new(Some(rows));
        let liveness: LivenessSource = Box::new(move || once.lock().unwrap().take().unwrap_or_default());
        let shutdown = CancellationToken::new();
        let (events, _) = broadcast::channel(16);
        let (writer, task) = spawn(
            store.clone(),
            Arc::new(StatusIndex::default()),
            liveness,
            events,
            Arc::new(Metrics::new()),
            shutdown.clone(),
        );
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
        let commits = store.commits.lock().unwrap().clone();
        assert!(commits.iter().all(|&ops| ops <= 10), "{commits:?}");
        assert!(commits.len() >= 3 + 12, "30 × 4 ops and 25 rows need at least 15 commits: {commits:?}");
        let l = store.load().unwrap();
        assert_eq!(l.statuses.len(), 60);
        assert_eq!(l.liveness.len(), 25);
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
