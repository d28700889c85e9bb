//! Commands from the hub to one agent over its Sync stream (not desired
//! state: each is sent once, never coalesced or replayed), and the pure
//! decision whether a `RunTests` call (`convoy test`) may be sent.

use super::Rejection;

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
    /// The cluster's agent holds a Sync stream with THIS hub replica.
    pub connected_here: bool,
}

/// Decide whether the test run may be sent to the cluster's agent, and
/// what it says. Pure.
pub fn run_tests(
    cluster: &str,
    bundle: &str,
    input: &RunTestsInput,
    request_id: String,
    timeout_seconds: u32,
) -> Result<AgentCommand, Rejection> {
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
    if !input.connected_here {
        return pre(format!(
            "the agent of cluster {cluster:?} is not connected to this hub replica (it may be offline, \
             or connected to another replica: commands reach only agents connected to the replica called)"
        ));
    }
    Ok(AgentCommand::RunTests {
        request_id,
        bundle: bundle.to_string(),
        generation: input.applied_generation,
        timeout_seconds,
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
            connected_here: true,
        }
    }

    fn decide(i: &RunTestsInput) -> Result<AgentCommand, Rejection> {
        run_tests("one", "web", i, "r1".into(), 30)
    }

    #[test]
    fn run_tests_table() {
        assert_eq!(
            decide(&ok()),
            Ok(AgentCommand::RunTests {
                request_id: "r1".into(),
                bundle: "web".into(),
                generation: 4,
                timeout_seconds: 30
            })
        );
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
            (
                RunTestsInput { connected_here: false, ..ok() },
                |r| matches!(r, Rejection::FailedPrecondition(_)),
                "not connected to this hub replica",
            ),
        ];
        for (input, kind, text) in cases {
            let e = decide(&input).unwrap_err();
            assert!(kind(&e) && e.to_string().contains(text), "{input:?}: {e}");
        }
        assert!(matches!(run_tests("", "web", &ok(), "r".into(), 0), Err(Rejection::InvalidArgument(_))));
        assert!(matches!(run_tests("one", "", &ok(), "r".into(), 0), Err(Rejection::InvalidArgument(_))));
    }
}
