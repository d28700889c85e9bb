//! Pending agent commands (`convoy test`) on this replica: the registry of
//! the stored [`CommandRecord`]s it knows (loaded at start, its own commits,
//! the other replicas' through the change feed), their delivery to the
//! cluster's Sync session when that session is on this replica, and their
//! expiry (run by the leader only).
//!
//! The store is the truth: a record is committed before any session sees it
//! (durable before visible), it is deleted in the transaction that stores its
//! answer ([`crate::domain::commands::answered`]), and an expired one is
//! deleted with its report event in one transaction that finds it still
//! stored ([`Write::ExpireCommand`]), so it is reported once. The registry
//! may hold a record already answered on another replica until the feed
//! brings the deletion (or, after a lost feed, until it expires: the expiry
//! then finds it gone and reports nothing).
//!
//! Delivery is at least once per session and at most once per session: a
//! session sends each request id once ([`crate::grpc::session`]); a record
//! still pending when the agent connects again (to any replica) is sent
//! again, and the agent runs a request id once (it remembers the ids it was
//! given: `agent/src/helmtest.rs`, `Seen`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use convoy_core::clock::SharedClock;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::domain::commands::{CommandRecord, expired_event};
use crate::ha::RemoteChange;
use crate::ha::locks::Leadership;
use crate::state::{ClusterShared, CommandRefused, FleetView};
use crate::store::{Write, WriteOutcome};
use crate::writer::WriterHandle;

/// How often the leader looks for expired commands (the hub clock is read
/// each time, so a test moving a fake clock sees the expiry within it).
pub const EXPIRY_TICK: Duration = Duration::from_secs(1);

/// At most how many commands one expiry commit deletes.
const EXPIRE_BATCH: usize = 256;

/// The pending commands this replica knows, by (cluster, request id).
#[derive(Default)]
pub struct Commands {
    pending: Mutex<BTreeMap<(String, String), CommandRecord>>,
}

impl Commands {
    /// A registry holding the records the store loaded.
    pub fn new(loaded: Vec<CommandRecord>) -> Self {
        let pending = loaded.into_iter().map(|c| ((c.cluster.clone(), c.request_id.clone()), c)).collect();
        Self { pending: Mutex::new(pending) }
    }

    /// A record committed (here or elsewhere).
    pub fn insert(&self, rec: CommandRecord) {
        self.pending.lock().insert((rec.cluster.clone(), rec.request_id.clone()), rec);
    }

    /// A record answered or expired.
    pub fn remove(&self, cluster: &str, request_id: &str) {
        self.pending.lock().remove(&(cluster.to_string(), request_id.to_string()));
    }

    /// Whether a record of `cluster` may be pending (its session then reads
    /// the store's at start). A record committed elsewhere and not yet
    /// brought by the feed is delivered by the feed to the session, which
    /// registers before it asks.
    pub fn has_pending(&self, cluster: &str) -> bool {
        let p = self.pending.lock();
        p.range((cluster.to_string(), String::new())..).next().is_some_and(|((c, _), _)| c == cluster)
    }

    /// How many records this replica knows.
    pub fn len(&self) -> usize {
        self.pending.lock().len()
    }

    /// Whether it knows none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The records expired at `now`, oldest expiry first, at most `max`.
    fn expired(&self, now: i64, max: usize) -> Vec<CommandRecord> {
        let mut v: Vec<CommandRecord> =
            self.pending.lock().values().filter(|c| c.expired(now)).cloned().collect();
        v.sort_by_key(|c| c.expires_unix_ms);
        v.truncate(max);
        v
    }

    /// The other replicas' command changes (from the change feed): new
    /// records are registered and offered to the cluster's session if it is
    /// here; deleted ones are forgotten.
    pub fn apply_remote(&self, changes: Vec<RemoteChange>, view: &FleetView, now: i64) {
        for ch in changes {
            match ch {
                RemoteChange::Command(rec) => {
                    let rec = *rec;
                    self.insert(rec.clone());
                    if let Some(e) = view.clusters.get(&rec.cluster) {
                        offer(&e.shared, &rec, now);
                    }
                }
                RemoteChange::CommandDeleted { cluster, request_id } => self.remove(&cluster, &request_id),
                _ => {}
            }
        }
    }
}

/// Hand a committed record to the cluster's Sync session if one is open on
/// this replica and the record has not expired; otherwise it waits for the
/// agent's next session (on any replica).
pub fn offer(shared: &ClusterShared, rec: &CommandRecord, now: i64) {
    if rec.expired(now) {
        return;
    }
    match shared.send_command(rec.command()) {
        Ok(()) => {
            debug!(cluster = %rec.cluster, request = %rec.request_id, "command handed to the agent's session")
        }
        Err(CommandRefused::NotConnected) => {
            debug!(cluster = %rec.cluster, request = %rec.request_id, "no session here; sent when the agent connects")
        }
        Err(CommandRefused::Busy) => warn!(
            cluster = %rec.cluster, request = %rec.request_id,
            "the session's command queue is full; the command is sent when the agent connects again, or expires"
        ),
    }
}

/// Expire pending commands: on the leader only (another replica's expiry
/// reaches this registry through the feed), every [`EXPIRY_TICK`], each
/// expired record deleted with its report event in one commit.
pub fn spawn_expiry(
    commands: Arc<Commands>,
    writer: WriterHandle,
    leadership: Leadership,
    clock: SharedClock,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(
        async move {
            let mut tick = tokio::time::interval(EXPIRY_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if commands.is_empty() || !leadership.is_leader() {
                    continue;
                }
                let now = clock.now_ms();
                let due = commands.expired(now, EXPIRE_BATCH);
                if due.is_empty() {
                    continue;
                }
                let writes: Vec<Write> = due
                    .iter()
                    .map(|c| Write::ExpireCommand {
                        cluster: c.cluster.clone(),
                        request_id: c.request_id.clone(),
                        event: expired_event(c, now),
                    })
                    .collect();
                match writer.commit(writes).await {
                    Ok(outcomes) => {
                        for (c, o) in due.iter().zip(outcomes) {
                            commands.remove(&c.cluster, &c.request_id);
                            if matches!(&o, WriteOutcome::Events(e) if !e.is_empty()) {
                                info!(cluster = %c.cluster, bundle = %c.bundle, request = %c.request_id, "command expired unanswered; reported");
                            } else {
                                debug!(cluster = %c.cluster, request = %c.request_id, "command answered or expired elsewhere");
                            }
                        }
                    }
                    Err(e) => warn!(error = %e, commands = due.len(), "cannot expire commands; retrying"),
                }
            }
        }
        .instrument(info_span!("command_expiry")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(cluster: &str, id: &str, expires: i64) -> CommandRecord {
        CommandRecord {
            cluster: cluster.into(),
            request_id: id.into(),
            bundle: "web".into(),
            generation: 1,
            timeout_seconds: 1,
            created_unix_ms: 0,
            expires_unix_ms: expires,
        }
    }

    #[test]
    fn the_registry_follows_puts_and_deletes_and_lists_what_expired() {
        let c = Commands::new(vec![rec("a", "1", 10), rec("b", "2", 30)]);
        assert!(c.has_pending("a") && c.has_pending("b") && !c.has_pending("c"));
        assert!(!c.has_pending(""), "no cluster is a prefix of another");
        c.apply_remote(
            vec![
                RemoteChange::Command(Box::new(rec("c", "3", 20))),
                RemoteChange::CommandDeleted { cluster: "a".into(), request_id: "1".into() },
            ],
            &FleetView::default(),
            0,
        );
        assert!(!c.has_pending("a") && c.has_pending("c"));
        assert_eq!(c.expired(19, 10), vec![]);
        let ids = |v: Vec<CommandRecord>| v.into_iter().map(|r| r.request_id).collect::<Vec<_>>();
        assert_eq!(ids(c.expired(30, 10)), ["3", "2"], "oldest expiry first");
        assert_eq!(ids(c.expired(30, 1)), ["3"]);
        c.remove("c", "3");
        assert_eq!(c.len(), 1);
    }
}
