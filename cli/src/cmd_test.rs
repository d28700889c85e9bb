//! `convoy test BUNDLE --cluster C`: run a Helm bundle's test hooks on one
//! cluster (Helm's `helm test`). The hub hands the run to the cluster's
//! agent (Fleet `RunTests`); the agent reports ONE event (`TestSucceeded`,
//! `TestFailed`, `TestRefused`) carrying the run's request id, which this
//! command follows (FollowEvents) and prints; the hub's `TestExpired` (no
//! answer within the run's window) ends it too. Exit code 0 when the tests
//! passed, 1 when one failed, the run was refused or no result came within
//! `--timeout`; 3 hub unreachable, 4 not authorized, 5 not found.

use std::time::Duration;

use convoy_proto::v1 as pb;

use crate::cmd_fleet::{Conn, Failure, Output, Result, connect, event_out, term_safe};

/// `convoy test BUNDLE --cluster C [--timeout 5m]`
#[derive(Debug, clap::Args)]
#[command(mut_arg("timeout", |a| a
    .default_value("5m")
    .help("How long each test hook may run on the cluster, and how long to wait for the result")))]
pub struct TestArgs {
    /// The bundle (a Helm bundle).
    pub bundle: String,
    /// The cluster.
    #[arg(long)]
    pub cluster: String,
    /// Output format: the result line (table) or the result event (json, yaml).
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: Output,
    /// Connection (`--timeout` is the test's time limit here).
    #[command(flatten)]
    pub conn: Conn,
}

/// How a result event ends the command: exit code and the line to print.
/// `None` for an event of another run. Pure.
pub fn verdict(request_id: &str, e: &pb::Event) -> Option<(u8, String)> {
    if e.details.get("requestId").map(String::as_str) != Some(request_id) {
        return None;
    }
    let code = match e.reason.as_str() {
        "TestSucceeded" => 0,
        // The hub stopped offering the run: no answer came in its window.
        "TestFailed" | "TestRefused" | "TestExpired" => 1,
        // Another event naming the run: not its result.
        _ => return None,
    };
    Some((code, format!("{}: {}", e.reason, e.message)))
}

/// Run `convoy test`.
pub async fn run(a: TestArgs) -> Result<()> {
    let limit = a.conn.timeout.get();
    // Connecting is bounded as for every command, not by the test's limit.
    let mut conn = a.conn.clone();
    conn.timeout = convoy_core::duration::HumanDuration(limit.min(Duration::from_secs(10)));
    let mut client = connect(&conn).await?;
    // Where the event log stands before the run: its result comes after.
    let filter = |after_id, limit| pb::ListEventsRequest {
        cluster: a.cluster.clone(),
        bundle: a.bundle.clone(),
        min_severity: 0,
        after_id,
        limit,
    };
    let last = client.list_events(filter(0, 1)).await?.into_inner().events.last().map(|e| e.id).unwrap_or(0);
    let r = client
        .run_tests(pb::RunTestsRequest {
            bundle: a.bundle.clone(),
            cluster: a.cluster.clone(),
            timeout_seconds: u32::try_from(limit.as_secs().max(1)).unwrap_or(u32::MAX),
        })
        .await?
        .into_inner();
    if a.output == Output::Table || a.output == Output::Wide {
        eprintln!(
            "{}",
            term_safe(&format!(
                "running the tests of {} generation {} on {} (request {})",
                a.bundle, r.generation, a.cluster, r.request_id
            ))
        );
    }
    let mut stream = client.follow_events(filter(last, 10_000)).await?.into_inner();
    // The agent's own limit applies per test hook; a little slack for the
    // report to travel through its outbox and the hub.
    let deadline = tokio::time::Instant::now() + limit + Duration::from_secs(15);
    loop {
        let m = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                return Err(Failure::new(1, format!(
                    "no test result from cluster {} within {} (request {}); the run may still finish: `convoy events --cluster {} --bundle {}`",
                    a.cluster, a.conn.timeout, r.request_id, a.cluster, a.bundle
                )));
            }
            m = stream.message() => m?,
        };
        let Some(stored) = m else {
            return Err(Failure::new(3, "the hub closed the event stream before the test result"));
        };
        let Some(ev) = stored.event.as_ref() else { continue };
        let Some((code, line)) = verdict(&r.request_id, ev) else { continue };
        match a.output {
            Output::Json => println!(
                "{}",
                serde_json::to_string(&event_out(stored)).map_err(|x| Failure::new(1, x.to_string()))?
            ),
            Output::Yaml => print!(
                "---\n{}",
                serde_saphyr::to_string(&event_out(stored)).map_err(|x| Failure::new(1, x.to_string()))?
            ),
            Output::Table | Output::Wide if code == 0 => println!("{}", term_safe(&line)),
            Output::Table | Output::Wide => {}
        }
        return if code == 0 { Ok(()) } else { Err(Failure::new(code, line)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(reason: &str, id: &str) -> pb::Event {
        pb::Event {
            reason: reason.into(),
            message: "m".into(),
            details: [("requestId".to_string(), id.to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn only_this_runs_result_ends_the_command() {
        assert_eq!(verdict("r1", &ev("TestSucceeded", "r1")), Some((0, "TestSucceeded: m".into())));
        assert_eq!(verdict("r1", &ev("TestFailed", "r1")), Some((1, "TestFailed: m".into())));
        assert_eq!(verdict("r1", &ev("TestRefused", "r1")), Some((1, "TestRefused: m".into())));
        assert_eq!(verdict("r1", &ev("TestExpired", "r1")), Some((1, "TestExpired: m".into())));
        assert_eq!(verdict("r1", &ev("TestSucceeded", "r2")), None, "another run");
        assert_eq!(verdict("r1", &ev("Applied", "r1")), None, "not a result");
        assert_eq!(verdict("r1", &pb::Event { reason: "TestFailed".into(), ..Default::default() }), None);
    }
}
