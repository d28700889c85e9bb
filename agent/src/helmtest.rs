//! `convoy test` on the agent (Helm's `helm test`): the pure decisions of a
//! test run (whether it may start, the order of the test hooks, whether the
//! release is deployed, and the ONE event that reports the run). The
//! controller queues a hub's `RunTests` command on the bundle's slot and
//! starts it when the bundle is idle; crate::helmrelease runs the hooks.

use std::collections::BTreeMap;
use std::time::Duration;

use convoy_core::status::{Event, Severity};
use convoy_helm::release::{Revision, Status};

use crate::helmrelease::{HookObject, TestRun, helm_order};

/// How long each test hook may run when the hub does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Event reasons of a test run (one per run).
pub const SUCCEEDED: &str = "TestSucceeded";
/// Some test hook failed (or the run could not complete).
pub const FAILED: &str = "TestFailed";
/// The run did not start: nothing was written.
pub const REFUSED: &str = "TestRefused";

/// A test run the hub asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRequest {
    /// The hub's id of the run, echoed in the event's `details["requestId"]`.
    pub request_id: String,
    /// The bundle.
    pub bundle: String,
    /// The generation the hub saw applied (0: whatever is applied).
    pub generation: u64,
    /// Per test hook; `None` for [`DEFAULT_TIMEOUT`].
    pub timeout: Option<Duration>,
}

/// Whether a test run may start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Run the bundle's test hooks against this applied generation.
    Run(u64),
    /// Do not; why.
    Refuse(String),
}

/// Decide whether a run may start, from what the agent holds of the bundle:
/// whether the hub still wants it here and the generation applied. Pure.
pub fn decide(req: &TestRequest, desired: bool, applied: Option<u64>) -> Start {
    let b = &req.bundle;
    match applied {
        _ if !desired => Start::Refuse(format!("bundle {b} is not deployed to this cluster")),
        None => Start::Refuse(format!("bundle {b} has not been applied on this cluster")),
        Some(g) if req.generation != 0 && g != req.generation => Start::Refuse(format!(
            "bundle {b} has generation {g} applied, not generation {} the tests were asked for",
            req.generation
        )),
        Some(g) => Start::Run(g),
    }
}

/// The release revision tests run against: the newest revision, which must
/// be `deployed` (`helm test` on a failed or pending release fails). Pure.
pub fn deployed(release: &str, revisions: &[Revision]) -> Result<u64, String> {
    match revisions.iter().max_by_key(|r| r.version) {
        None => Err(format!("helm release {release} has no revision in the cluster")),
        Some(r) if r.status == Status::Deployed => Ok(r.version),
        Some(r) => Err(format!(
            "helm release {release} is not deployed: revision {} is {}",
            r.version,
            r.status.as_str()
        )),
    }
}

/// The test hooks in the order they run: Helm's hook order (weight, kind
/// install order, name). Pure.
pub fn order(tests: &[HookObject]) -> Vec<&HookObject> {
    let mut v: Vec<_> = tests.iter().filter(|h| h.is_test()).collect();
    v.sort_by(|a, b| helm_order(a, b));
    v
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It did not start (nothing written); why.
    Refused(String),
    /// It could not complete for another reason than a test (the artifact
    /// could not be read, the API server failed); why.
    Error(String),
    /// The test hooks ran against release revision `revision`; a failing
    /// one is the last of `runs`.
    Ran {
        /// The release name.
        release: String,
        /// The release revision tested.
        revision: u64,
        /// The hooks that ran, in order.
        runs: Vec<TestRun>,
    },
}

/// The ONE event reporting a run: `TestSucceeded` (info), `TestFailed`
/// (error, naming the failed hook, its phase and message) or `TestRefused`
/// (warning), with `requestId` and `generation` in its details. Pure.
pub fn event(req: &TestRequest, generation: u64, outcome: &Outcome, now_ms: i64) -> Event {
    let mut details = BTreeMap::from([
        ("requestId".to_string(), req.request_id.clone()),
        ("generation".to_string(), generation.to_string()),
    ]);
    let (severity, reason, message, object) = match outcome {
        Outcome::Refused(why) => (Severity::Warning, REFUSED, format!("tests not run: {why}"), String::new()),
        Outcome::Error(why) => {
            (Severity::Error, FAILED, format!("tests could not run: {why}"), String::new())
        }
        Outcome::Ran { release, revision, runs } => {
            details.insert("release".into(), release.clone());
            details.insert("releaseRevision".into(), revision.to_string());
            let passed: Vec<&str> =
                runs.iter().filter(|r| r.failure.is_none()).map(|r| r.hook.as_str()).collect();
            details.insert("passed".into(), passed.len().to_string());
            match runs.iter().find(|r| r.failure.is_some()) {
                Some(f) => {
                    details.insert("failedHook".into(), f.hook.clone());
                    let before = if passed.is_empty() {
                        String::new()
                    } else {
                        format!("; passed before it: {}", passed.join(", "))
                    };
                    let why = f.failure.as_deref().unwrap_or_default();
                    (
                        Severity::Error,
                        FAILED,
                        format!(
                            "helm release {release} revision {revision}: test {} failed: {why}{before}",
                            f.hook
                        ),
                        f.hook.clone(),
                    )
                }
                None if runs.is_empty() => (
                    Severity::Info,
                    SUCCEEDED,
                    format!("helm release {release} revision {revision}: the chart has no test hooks"),
                    String::new(),
                ),
                None => (
                    Severity::Info,
                    SUCCEEDED,
                    format!(
                        "helm release {release} revision {revision}: {} test(s) passed: {}",
                        passed.len(),
                        passed.join(", ")
                    ),
                    String::new(),
                ),
            }
        }
    };
    let mut ev = Event::new(severity, reason, &req.bundle, message, now_ms);
    ev.object = object;
    ev.details = details;
    ev
}

/// How many request ids the agent remembers ([`Seen`]).
pub const SEEN_KEPT: usize = 1024;

/// The request ids of the test runs the hub gave this agent process, the
/// newest `cap`: the hub keeps a run pending (stored) until its answer is
/// stored, and sends it again to each new Sync session, so a run is taken
/// once however often it arrives. Not persisted: an agent restarted before
/// its answer reached the hub may run it again.
#[derive(Debug, Clone)]
pub struct Seen {
    ids: std::collections::VecDeque<String>,
    cap: usize,
}

impl Seen {
    /// Remember at most `cap` ids (at least one).
    pub fn new(cap: usize) -> Self {
        Self { ids: Default::default(), cap: cap.max(1) }
    }

    /// Whether `id` is new (then it is remembered, the oldest forgotten
    /// beyond the bound). Pure.
    pub fn first(&mut self, id: &str) -> bool {
        if self.ids.iter().any(|s| s == id) {
            return false;
        }
        if self.ids.len() >= self.cap {
            self.ids.pop_front();
        }
        self.ids.push_back(id.to_string());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_request_sent_again_is_taken_once_within_the_bound() {
        let mut s = Seen::new(2);
        assert!(s.first("a") && s.first("b"));
        assert!(!s.first("a") && !s.first("b"), "sent again after a reconnect");
        assert!(s.first("c"), "a new run");
        assert!(s.first("a"), "beyond the bound the oldest is forgotten");
        let mut one = Seen::new(0);
        assert!(one.first("x") && !one.first("x"), "a bound of at least one");
    }

    fn req(generation: u64) -> TestRequest {
        TestRequest { request_id: "r1".into(), bundle: "web".into(), generation, timeout: None }
    }

    fn hook(name: &str, kind: &str, events: &[&str], weight: i64) -> HookObject {
        HookObject {
            path: format!("c/templates/tests/{name}.yaml"),
            events: events.iter().map(|e| e.to_string()).collect(),
            weight,
            delete_policies: vec!["before-hook-creation".into()],
            object: json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": name}}),
        }
    }

    fn run(hook: &str, failure: Option<&str>) -> TestRun {
        TestRun {
            hook: hook.into(),
            path: String::new(),
            started: "s".into(),
            completed: "c".into(),
            failure: failure.map(String::from),
        }
    }

    #[test]
    fn decide_table() {
        assert_eq!(decide(&req(3), true, Some(3)), Start::Run(3));
        assert_eq!(decide(&req(0), true, Some(7)), Start::Run(7), "0 means whatever is applied");
        assert!(
            matches!(decide(&req(3), true, Some(4)), Start::Refuse(m) if m.contains("generation 4 applied, not generation 3"))
        );
        assert!(
            matches!(decide(&req(3), true, None), Start::Refuse(m) if m.contains("has not been applied"))
        );
        assert!(
            matches!(decide(&req(3), false, Some(3)), Start::Refuse(m) if m.contains("not deployed to this cluster"))
        );
        assert!(
            matches!(decide(&req(0), false, None), Start::Refuse(m) if m.contains("not deployed to this cluster"))
        );
    }

    #[test]
    fn only_a_deployed_newest_revision_is_tested() {
        let r = |version, status| Revision { version, status };
        assert_eq!(deployed("web", &[r(1, Status::Superseded), r(2, Status::Deployed)]), Ok(2));
        assert_eq!(
            deployed("web", &[r(2, Status::Deployed), r(3, Status::Failed)]),
            Err("helm release web is not deployed: revision 3 is failed".into())
        );
        assert!(deployed("web", &[r(1, Status::PendingInstall)]).unwrap_err().contains("pending-install"));
        assert!(deployed("web", &[]).unwrap_err().contains("no revision"));
    }

    #[test]
    fn tests_run_by_weight_then_kind_then_name_and_only_test_hooks() {
        let hooks = vec![
            hook("b", "Pod", &["test"], 0),
            hook("a", "Pod", &["test-success"], 0),
            hook("late", "Pod", &["test"], 5),
            hook("early", "Job", &["test"], -5),
            hook("sa", "ServiceAccount", &["test"], 0),
            hook("pre", "Job", &["pre-install"], -10),
        ];
        let names: Vec<_> = order(&hooks).iter().map(|h| h.name().to_string()).collect();
        assert_eq!(names, ["early", "sa", "a", "b", "late"]);
    }

    #[test]
    fn one_event_per_run() {
        let ran = |runs| Outcome::Ran { release: "web".into(), revision: 2, runs };
        let ok = event(&req(3), 3, &ran(vec![run("Pod/a", None), run("Pod/b", None)]), 5);
        assert_eq!((ok.reason.as_str(), ok.severity, ok.bundle.as_str()), (SUCCEEDED, Severity::Info, "web"));
        assert_eq!(ok.message, "helm release web revision 2: 2 test(s) passed: Pod/a, Pod/b");
        assert_eq!(ok.details["requestId"], "r1");
        assert_eq!(ok.details["generation"], "3");
        assert_eq!(ok.details["releaseRevision"], "2");
        assert_eq!(ok.time_unix_ms, 5);

        let bad = event(
            &req(3),
            3,
            &ran(vec![run("Pod/a", None), run("Pod/b", Some("the Pod failed: phase Failed"))]),
            5,
        );
        assert_eq!((bad.reason.as_str(), bad.severity), (FAILED, Severity::Error));
        assert_eq!(
            bad.message,
            "helm release web revision 2: test Pod/b failed: the Pod failed: phase Failed; passed before it: Pod/a"
        );
        assert_eq!((bad.details["failedHook"].as_str(), bad.object.as_str()), ("Pod/b", "Pod/b"));
        assert_eq!(bad.details["passed"], "1");

        let first = event(&req(3), 3, &ran(vec![run("Pod/a", Some("timeout"))]), 5);
        assert_eq!(first.message, "helm release web revision 2: test Pod/a failed: timeout");

        let none = event(&req(3), 3, &ran(vec![]), 5);
        assert_eq!(none.reason, SUCCEEDED);
        assert!(none.message.contains("no test hooks"));

        let refused = event(&req(3), 0, &Outcome::Refused("bundle web has not been applied".into()), 5);
        assert_eq!((refused.reason.as_str(), refused.severity), (REFUSED, Severity::Warning));
        assert_eq!(refused.details["requestId"], "r1");

        let err = event(&req(3), 3, &Outcome::Error("artifact not cached".into()), 5);
        assert_eq!((err.reason.as_str(), err.severity), (FAILED, Severity::Error));
        assert!(err.message.contains("could not run: artifact not cached"));
    }
}
