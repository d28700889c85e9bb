//! Commands from the hub to one agent over its Sync stream (not desired
//! state: never coalesced), their stored form, and the pure decisions around
//! them: whether a `RunTests` call (`convoy test`) may be queued, which
//! agent event answers a command, and the event that reports one expired.
//!
//! A command is durable before it is sent: the Fleet RPC commits a
//! [`CommandRecord`], and whichever hub replica holds the cluster's Sync
//! stream sends it (at once, or when the agent connects) until the agent's
//! answer is stored or the record expires (crate::commands).

use std::collections::BTreeMap;

use convoy_core::status::Severity;
use serde::{Deserialize, Serialize};

use super::{EventRecord, Rejection};

/// At most how many commands of one cluster are pending (stored, not yet
/// answered or expired); the store refuses more (`RESOURCE_EXHAUSTED`).
pub const MAX_PENDING: usize = 16;

/// The agent's own limit per test hook when the caller gives none (seconds).
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 300;

/// How long a command stays pending beyond its run's timeout: time for an
/// agent that is away to connect, and for its answer to reach the store.
pub const DELIVERY_SLACK_SECONDS: u64 = 60;

/// Event reasons the agent answers a test run with (one per run).
pub const ANSWERS: [&str; 3] = ["TestSucceeded", "TestFailed", "TestRefused"];

/// The event reason of a command that expired unanswered (stored by the hub).
pub const EXPIRED: &str = "TestExpired";

/// A command for one cluster's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentCommand {
    /// Run a Helm bundle's test hooks (the agent answers with one event
    /// carrying `request_id` in `details["requestId"]`).
    RunTests {
        /// The run's id.
        request_id: String,
        /// The bundle.
        bundle: String,
        /// The generation the hub saw applied on the cluster.
        generation: u64,
        /// Per test hook, seconds (0: the agent's default).
        timeout_seconds: u32,
    },
}

impl AgentCommand {
    /// The command's request id.
    pub fn request_id(&self) -> &str {
        match self {
            AgentCommand::RunTests { request_id, .. } => request_id,
        }
    }
}

/// A pending command, as stored (`commands/<cluster>/<request id>`): from the
/// commit of the Fleet RPC until the agent's answer is stored (deleted in the
/// same transaction) or it expires (deleted with a [`EXPIRED`] event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRecord {
    /// The cluster whose agent runs it.
    pub cluster: String,
    /// The request id (unique, random).
    pub request_id: String,
    /// The bundle.
    pub bundle: String,
    /// The generation the hub saw applied when it was asked.
    pub generation: u64,
    /// Per test hook, seconds (0: the agent's default).
    pub timeout_seconds: u32,
    /// When it was committed (Unix ms, hub clock).
    pub created_unix_ms: i64,
    /// After this it is no longer sent, and is deleted and reported.
    pub expires_unix_ms: i64,
}

impl CommandRecord {
    /// What goes on the Sync stream.
    pub fn command(&self) -> AgentCommand {
        AgentCommand::RunTests {
            request_id: self.request_id.clone(),
            bundle: self.bundle.clone(),
            generation: self.generation,
            timeout_seconds: self.timeout_seconds,
        }
    }

    /// Its key under the store's `commands` table: `<cluster>/<request id>`.
    pub fn store_key(&self) -> String {
        format!("{}/{}", self.cluster, self.request_id)
    }

    /// Whether it expired at `now`.
    pub fn expired(&self, now_ms: i64) -> bool {
        now_ms >= self.expires_unix_ms
    }
}

/// How long a command with this timeout stays pending (ms): the run's
/// timeout (the agent's default for 0) plus [`DELIVERY_SLACK_SECONDS`]. The
/// CLI waits the timeout and 15 s, so it has given up before a command
/// expires. Pure.
pub fn pending_window_ms(timeout_seconds: u32) -> i64 {
    let t = if timeout_seconds == 0 { DEFAULT_TIMEOUT_SECONDS } else { u64::from(timeout_seconds) };
    ((t + DELIVERY_SLACK_SECONDS) * 1000) as i64
}

/// The request id a stored agent event answers, if it is a command's answer
/// (one of [`ANSWERS`] with `details["requestId"]`). Pure.
pub fn answered(event: &EventRecord) -> Option<&str> {
    if !ANSWERS.contains(&event.reason.as_str()) {
        return None;
    }
    event.details.get("requestId").map(String::as_str).filter(|id| !id.is_empty())
}

/// The event that reports `rec` expired unanswered at `now` (stored under
/// its cluster and bundle, so `convoy test` and `convoy events` see it). Pure.
pub fn expired_event(rec: &CommandRecord, now_ms: i64) -> EventRecord {
    let waited = (rec.expires_unix_ms - rec.created_unix_ms).max(0) / 1000;
    let mut ev = EventRecord::new(
        Severity::Warning,
        EXPIRED,
        &rec.bundle,
        format!(
            "tests of generation {} not run or not reported: no answer from the agent of cluster {} within {waited}s \
             of the request (it was not connected, or its result did not reach the hub); the hub no longer sends it",
            rec.generation, rec.cluster
        ),
        now_ms,
    );
    ev.details = BTreeMap::from([
        ("requestId".to_string(), rec.request_id.clone()),
        ("generation".to_string(), rec.generation.to_string()),
    ]);
    ev
}

/// What the hub knows when `RunTests` is called.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunTestsInput {
    /// The cluster is registered (and not revoked).
    pub cluster_known: bool,
    /// The cluster was revoked.
    pub cluster_revoked: bool,
    /// The bundle is in the fleet config.
    pub bundle_known: bool,
    /// The bundle is in the cluster's desired set; `Some(is_helm)` then
    /// (whether its signed statement names a chart).
    pub deployed_helm: Option<bool>,
    /// The generation the cluster reported applied (0: none).
    pub applied_generation: u64,
}

/// Decide whether the test run may be queued for the cluster's agent, and
/// the record to commit. Whether the agent is connected (to this replica, to
/// another, or not at all) does not matter: the record waits for it until it
/// expires. Pure.
pub fn run_tests(
    cluster: &str,
    bundle: &str,
    input: &RunTestsInput,
    request_id: String,
    timeout_seconds: u32,
    now_ms: i64,
) -> Result<CommandRecord, Rejection> {
    let pre = |m: String| Err(Rejection::FailedPrecondition(m));
    if cluster.is_empty() || bundle.is_empty() {
        return Err(Rejection::InvalidArgument("bundle and cluster are required".into()));
    }
    if !input.cluster_known {
        return Err(Rejection::NotFound(format!("cluster {cluster:?}")));
    }
    if input.cluster_revoked {
        return pre(format!("cluster {cluster:?} was revoked"));
    }
    if !input.bundle_known {
        return Err(Rejection::NotFound(format!("bundle {bundle:?}")));
    }
    match input.deployed_helm {
        None => return pre(format!("bundle {bundle:?} is not deployed to cluster {cluster:?}")),
        Some(false) => return pre(format!("bundle {bundle:?} is not a Helm bundle: it has no test hooks")),
        Some(true) => {}
    }
    if input.applied_generation == 0 {
        return pre(format!("cluster {cluster:?} has not reported bundle {bundle:?} applied yet"));
    }
    Ok(CommandRecord {
        cluster: cluster.to_string(),
        request_id,
        bundle: bundle.to_string(),
        generation: input.applied_generation,
        timeout_seconds,
        created_unix_ms: now_ms,
        expires_unix_ms: now_ms.saturating_add(pending_window_ms(timeout_seconds)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> RunTestsInput {
        RunTestsInput {
            cluster_known: true,
            cluster_revoked: false,
            bundle_known: true,
            deployed_helm: Some(true),
            applied_generation: 4,
        }
    }

    fn decide(i: &RunTestsInput) -> Result<CommandRecord, Rejection> {
        run_tests("one", "web", i, "r1".into(), 30, 1_000)
    }

    #[test]
    fn run_tests_table() {
        let rec = decide(&ok()).unwrap();
        assert_eq!(
            rec,
            CommandRecord {
                cluster: "one".into(),
                request_id: "r1".into(),
                bundle: "web".into(),
                generation: 4,
                timeout_seconds: 30,
                created_unix_ms: 1_000,
                expires_unix_ms: 1_000 + 90_000,
            }
        );
        assert_eq!(
            rec.command(),
            AgentCommand::RunTests {
                request_id: "r1".into(),
                bundle: "web".into(),
                generation: 4,
                timeout_seconds: 30
            }
        );
        assert_eq!(rec.store_key(), "one/r1");
        type Case = (RunTestsInput, fn(&Rejection) -> bool, &'static str);
        let cases: Vec<Case> = vec![
            (
                RunTestsInput { cluster_known: false, ..ok() },
                |r| matches!(r, Rejection::NotFound(_)),
                "cluster \"one\"",
            ),
            (
                RunTestsInput { cluster_revoked: true, ..ok() },
                |r| matches!(r, Rejection::FailedPrecondition(_)),
                "revoked",
            ),
            (
                RunTestsInput { bundle_known: false, ..ok() },
                |r| matches!(r, Rejection::NotFound(_)),
                "bundle \"web\"",
            ),
            (
                RunTestsInput { deployed_helm: None, ..ok() },
                |r| matches!(r, Rejection::FailedPrecondition(_)),
                "not deployed to cluster",
            ),
            (
                RunTestsInput { deployed_helm: Some(false), ..ok() },
                |r| matches!(r, Rejection::FailedPrecondition(_)),
                "not a Helm bundle",
            ),
            (
                RunTestsInput { applied_generation: 0, ..ok() },
                |r| matches!(r, Rejection::FailedPrecondition(_)),
                "not reported",
            ),
        ];
        for (input, kind, text) in cases {
            let e = decide(&input).unwrap_err();
            assert!(kind(&e) && e.to_string().contains(text), "{input:?}: {e}");
        }
        let at = |c: &str, b: &str| run_tests(c, b, &ok(), "r".into(), 0, 0);
        assert!(matches!(at("", "web"), Err(Rejection::InvalidArgument(_))));
        assert!(matches!(at("one", ""), Err(Rejection::InvalidArgument(_))));
    }

    #[test]
    fn a_command_stays_pending_for_its_timeout_and_the_slack_then_expires() {
        assert_eq!(pending_window_ms(30), 90_000);
        assert_eq!(pending_window_ms(0), 360_000, "the agent's default of 300 s");
        assert_eq!(pending_window_ms(u32::MAX), (u64::from(u32::MAX) + 60) as i64 * 1000);
        let rec = run_tests("one", "web", &ok(), "r1".into(), 0, 5_000).unwrap();
        assert!(!rec.expired(5_000 + 359_999));
        assert!(rec.expired(5_000 + 360_000));
        let ev = expired_event(&rec, 400_000);
        assert_eq!(
            (ev.reason.as_str(), ev.severity, ev.bundle.as_str()),
            (EXPIRED, Severity::Warning, "web")
        );
        assert_eq!(ev.details["requestId"], "r1");
        assert_eq!(ev.details["generation"], "4");
        assert!(ev.message.contains("cluster one within 360s"), "{}", ev.message);
        assert_eq!(answered(&ev), None, "an expiry is not an answer");
    }

    #[test]
    fn only_a_test_result_with_a_request_id_answers_a_command() {
        let ev = |reason: &str, id: Option<&str>| {
            let mut e = EventRecord::new(Severity::Info, reason, "web", "m", 0);
            if let Some(id) = id {
                e.details.insert("requestId".into(), id.into());
            }
            e
        };
        for r in ANSWERS {
            assert_eq!(answered(&ev(r, Some("r1"))), Some("r1"), "{r}");
            assert_eq!(answered(&ev(r, None)), None, "{r}");
            assert_eq!(answered(&ev(r, Some(""))), None, "{r}");
        }
        assert_eq!(answered(&ev("Applied", Some("r1"))), None);
        assert_eq!(answered(&ev(EXPIRED, Some("r1"))), None);
    }
}
