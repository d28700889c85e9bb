//! `convoy rollout status|approve|pause|resume|abort|rollback BUNDLE`: a
//! bundle's progressive rollout over the Fleet API (docs/rollouts.md).

use convoy_proto::v1 as pb;
use serde::Serialize;

use crate::cmd_fleet::{
    Conn, Failure, Output, Result, age, connect, print_data, print_table, table, term_safe,
};

/// `convoy rollout ...`
#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// Waves, clusters per state, and the gate.
    Status(Box<StatusArgs>),
    /// Pass the current wave's approval gate.
    Approve(Box<ActionArgs>),
    /// Stop the rollout where it is.
    Pause(Box<ActionArgs>),
    /// Continue a paused rollout (a failed wave's failures are then tolerated).
    Resume(Box<ActionArgs>),
    /// End the rollout; clusters keep what they have.
    Abort(Box<ActionArgs>),
    /// Give every cluster that got the new revision its previous content
    /// back, as a new signed generation.
    Rollback(Box<ActionArgs>),
}

/// `convoy rollout status BUNDLE`
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The bundle.
    pub bundle: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: Output,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

/// `convoy rollout approve|pause|resume|abort|rollback BUNDLE`
#[derive(Debug, clap::Args)]
pub struct ActionArgs {
    /// The bundle.
    pub bundle: String,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

/// Run a rollout command.
pub async fn run(cmd: RolloutCommand) -> Result<()> {
    let (a, command) = match cmd {
        RolloutCommand::Status(a) => return status(*a).await,
        RolloutCommand::Approve(a) => (a, pb::RolloutCommand::Approve),
        RolloutCommand::Pause(a) => (a, pb::RolloutCommand::Pause),
        RolloutCommand::Resume(a) => (a, pb::RolloutCommand::Resume),
        RolloutCommand::Abort(a) => (a, pb::RolloutCommand::Abort),
        RolloutCommand::Rollback(a) => (a, pb::RolloutCommand::Rollback),
    };
    let mut client = connect(&a.conn).await?;
    let r = client
        .rollout_action(pb::RolloutActionRequest { bundle: a.bundle, command: command as i32 })
        .await
        .map_err(refused)?;
    println!("{}", term_safe(&r.into_inner().message));
    Ok(())
}

/// A refused rollout command as the CLI prints it: the hub's reason, after
/// what kind of refusal it is (docs/rollouts.md#operations).
fn refused(s: tonic::Status) -> Failure {
    use tonic::Code;
    let what = match s.code() {
        Code::FailedPrecondition => "refused",
        Code::Aborted => "refused (changed on another hub replica; run it again)",
        _ => return s.into(),
    };
    Failure::new(1, format!("{what}: {}", term_safe(s.message())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_command_prints_the_hubs_reason() {
        let f = refused(tonic::Status::failed_precondition(
            "rollout of \"web\": resume refused: the rollout is not paused",
        ));
        assert_eq!(
            (f.code, f.message.as_str()),
            (1, "refused: rollout of \"web\": resume refused: the rollout is not paused")
        );
        let f = refused(tonic::Status::aborted("the rollout changed on another hub replica; try again"));
        assert_eq!(f.code, 1);
        assert!(f.message.starts_with("refused (changed on another hub replica"), "{}", f.message);
        let f =
            refused(tonic::Status::not_found("rollout of \"web\": pause refused: the bundle has no rollout"));
        assert_eq!(f.code, 5);
        assert!(f.message.ends_with("the bundle has no rollout"), "{}", f.message);
    }
}

/// The stable JSON/YAML shape of `convoy rollout status`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutOut {
    /// The bundle.
    pub bundle: String,
    /// The revision rolled out.
    pub revision: String,
    /// Progressing, AwaitingApproval, Paused, Complete, RolledBack, Aborted, Superseded.
    pub status: String,
    /// Why it is paused or rolled back.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The current wave.
    pub current_wave: String,
    /// A queued newer revision.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub queued: String,
    /// The waves in order.
    pub waves: Vec<WaveOut>,
    /// Clusters in no wave.
    pub unwaved: Vec<ClusterOut>,
}

/// One wave.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WaveOut {
    /// Name.
    pub name: String,
    /// auto or approval.
    pub gate: String,
    /// Approved by an operator.
    pub approved: bool,
    /// Started (Unix ms, 0: not yet).
    pub started_unix_ms: i64,
    /// Completed (Unix ms, 0: not yet).
    pub completed_unix_ms: i64,
    /// Failed its threshold.
    pub failed: bool,
    /// Its clusters.
    pub clusters: Vec<ClusterOut>,
}

/// One cluster.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterOut {
    /// Name.
    pub name: String,
    /// Pending, Admitted, Soaking, Done, Failed, Skipped, Left, RolledBack.
    pub state: String,
    /// Why it failed or was skipped.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// When it entered its state (Unix ms, 0: unknown).
    pub since_unix_ms: i64,
}

fn cluster_out(c: pb::RolloutCluster) -> ClusterOut {
    ClusterOut { name: c.name, state: c.state, reason: c.reason, since_unix_ms: c.since_unix_ms }
}

/// The proto view as the output shape.
pub fn rollout_out(v: pb::RolloutView) -> RolloutOut {
    RolloutOut {
        bundle: v.bundle,
        revision: v.revision,
        status: v.status,
        reason: v.reason,
        current_wave: v.current_wave,
        queued: v.queued,
        waves: v
            .waves
            .into_iter()
            .map(|w| WaveOut {
                name: w.name,
                gate: w.gate,
                approved: w.approved,
                started_unix_ms: w.started_unix_ms,
                completed_unix_ms: w.completed_unix_ms,
                failed: w.failed,
                clusters: w.clusters.into_iter().map(cluster_out).collect(),
            })
            .collect(),
        unwaved: v.unwaved.into_iter().map(cluster_out).collect(),
    }
}

async fn status(a: StatusArgs) -> Result<()> {
    let mut client = connect(&a.conn).await?;
    let v = client.get_rollout(pb::GetRolloutRequest { bundle: a.bundle }).await?.into_inner();
    let out = rollout_out(v);
    if matches!(a.output, Output::Json | Output::Yaml) {
        return print_data(a.output, &out);
    }
    println!("{}", term_safe(&format!("Bundle:    {}", out.bundle)));
    println!("{}", term_safe(&format!("Revision:  {}", out.revision)));
    let status =
        if out.reason.is_empty() { out.status.clone() } else { format!("{} ({})", out.status, out.reason) };
    println!("{}", term_safe(&format!("Status:    {status}")));
    if !out.current_wave.is_empty() {
        println!("{}", term_safe(&format!("Wave:      {}", out.current_wave)));
    }
    if !out.queued.is_empty() {
        println!("{}", term_safe(&format!("Queued:    {}", out.queued)));
    }
    println!();
    let mut t = table(&["WAVE", "GATE", "STARTED", "COMPLETED", "CLUSTERS"]);
    for w in &out.waves {
        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
        for c in &w.clusters {
            *counts.entry(c.state.as_str()).or_default() += 1;
        }
        let gate = match (w.gate.as_str(), w.approved) {
            ("approval", true) => "approval (approved)".to_string(),
            ("approval", false) if w.started_unix_ms == 0 => "approval (waiting)".to_string(),
            (g, _) => g.to_string(),
        };
        let clusters = if w.clusters.is_empty() {
            "-".to_string()
        } else {
            counts.iter().map(|(s, n)| format!("{s}={n}")).collect::<Vec<_>>().join(" ")
        };
        let completed = if w.failed { "failed".to_string() } else { age(w.completed_unix_ms) };
        t.add_row(vec![w.name.clone(), gate, age(w.started_unix_ms), completed, clusters]);
    }
    print_table(t);
    println!();
    let mut t = table(&["CLUSTER", "WAVE", "STATE", "SINCE", "REASON"]);
    for w in &out.waves {
        for c in &w.clusters {
            t.add_row(vec![
                c.name.clone(),
                w.name.clone(),
                c.state.clone(),
                age(c.since_unix_ms),
                c.reason.clone(),
            ]);
        }
    }
    for c in &out.unwaved {
        t.add_row(vec![c.name.clone(), "-".into(), c.state.clone(), age(c.since_unix_ms), c.reason.clone()]);
    }
    print_table(t);
    Ok(())
}
