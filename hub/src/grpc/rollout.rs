//! `GetRollout` and `RolloutAction`: a bundle's rollout as the operator sees
//! it (from the published view), and operator commands handed to the state
//! actor (which records them as events naming the caller).

use convoy_proto::v1 as pb;
use tonic::Status;

use super::{Core, status};
use crate::domain::authz::Caller;
use crate::domain::rollout::{ClusterStep, Command, RolloutRecord, RolloutStatus};

/// The rollout of `bundle`, or NotFound.
pub fn get(core: &Core, bundle: &str) -> Result<pb::RolloutView, Status> {
    let view = core.state.view();
    let rec = view
        .rollouts
        .get(bundle)
        .ok_or_else(|| Status::not_found(format!("bundle {bundle:?} has no rollout")))?;
    // A `rollbackOnFailure` Helm bundle's rollout runs its implicit spec.
    let spec = view
        .fleet
        .bundles
        .get(bundle)
        .and_then(|b| crate::domain::helmops::effective_rollout(&b.spec).map(|r| r.into_owned()));
    Ok(to_view(rec, spec.as_ref()))
}

/// Run an operator's command on `bundle`'s rollout.
pub async fn action(
    core: &Core,
    caller: &Caller,
    r: pb::RolloutActionRequest,
) -> Result<pb::ActionResponse, Status> {
    let cmd = match pb::RolloutCommand::try_from(r.command).unwrap_or(pb::RolloutCommand::Unspecified) {
        pb::RolloutCommand::Approve => Command::Approve,
        pb::RolloutCommand::Pause => Command::Pause,
        pb::RolloutCommand::Resume => Command::Resume,
        pb::RolloutCommand::Abort => Command::Abort,
        pb::RolloutCommand::Rollback => Command::Rollback,
        pb::RolloutCommand::Unspecified => {
            return Err(Status::invalid_argument(
                "command must be approve, pause, resume, abort or rollback",
            ));
        }
    };
    let who = caller.identity();
    core.state.rollout_command(r.bundle.clone(), cmd, who.clone()).await.map_err(status)?;
    tracing::info!(bundle = %r.bundle, command = cmd.verb(), caller = %who, "rollout command");
    Ok(pb::ActionResponse { message: format!("rollout of {}: {} done", r.bundle, cmd.verb()) })
}

/// A stored rollout as the proto view; `spec` gives the waves' gates.
pub fn to_view(rec: &RolloutRecord, spec: Option<&convoy_core::rollout::RolloutSpec>) -> pb::RolloutView {
    let s = &rec.state;
    let reason = match &s.status {
        RolloutStatus::Paused { reason } | RolloutStatus::RolledBack { reason } => reason.clone(),
        _ => String::new(),
    };
    let cluster = |name: &str, step: &ClusterStep| {
        let (reason, since) = match step {
            ClusterStep::Admitted { at_ms } => (String::new(), *at_ms),
            ClusterStep::Soaking { since_ms, .. } => (String::new(), *since_ms),
            ClusterStep::Done { at_ms } => (String::new(), *at_ms),
            ClusterStep::Failed { reason, .. } | ClusterStep::Skipped { reason, .. } => (reason.clone(), 0),
            _ => (String::new(), 0),
        };
        pb::RolloutCluster { name: name.into(), state: step.name().into(), reason, since_unix_ms: since }
    };
    let waves = s
        .waves
        .iter()
        .enumerate()
        .map(|(i, w)| pb::RolloutWave {
            name: w.name.clone(),
            gate: spec
                .and_then(|sp| sp.waves.get(i))
                .map(|ws| match ws.gate {
                    convoy_core::rollout::Gate::Auto => "auto",
                    convoy_core::rollout::Gate::Approval => "approval",
                })
                .unwrap_or("")
                .into(),
            approved: w.approved,
            started_unix_ms: w.started_ms.unwrap_or(0),
            completed_unix_ms: w.completed_ms.unwrap_or(0),
            failed: w.failed,
            clusters: s
                .clusters
                .iter()
                .filter(|(_, c)| c.wave == Some(i))
                .map(|(n, c)| cluster(n, &c.step))
                .collect(),
        })
        .collect();
    pb::RolloutView {
        bundle: rec.bundle.clone(),
        revision: s.revision.clone(),
        status: s.status.name().into(),
        reason,
        current_wave: s.wave_name().into(),
        waves,
        queued: s.queued.clone().unwrap_or_default(),
        started_unix_ms: s.started_ms,
        unwaved: s
            .clusters
            .iter()
            .filter(|(_, c)| c.wave.is_none())
            .map(|(n, c)| cluster(n, &c.step))
            .collect(),
    }
}
