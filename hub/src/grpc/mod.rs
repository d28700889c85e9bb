//! The gRPC edge: tonic services for Registration, Agent and Fleet. Callers
//! are identified here (verified client certificate, else admin bearer token),
//! authorized with [`crate::domain::authz`], and domain errors become
//! `tonic::Status` here and nowhere else.

pub mod agent;
pub mod artifacts;
pub mod convert;
pub mod fleet;
pub mod registration;
pub mod rollout;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use convoy_core::identity::Identity;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status};

use crate::domain::authz::{Access, Caller, authorize};
use crate::domain::tokens::{hash_secret, hashes_equal};
use crate::domain::{Rejection, StoredEvent};
use crate::metrics::Metrics;
use crate::pipeline::SourcePipeline;
use crate::state::{ClusterEntry, StateHandle};
use crate::store::Store;
use crate::tls::ConnInfo;
use crate::writer::WriterHandle;
use crate::{Error, now_ms};

/// Sync session settings.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// How long an agent has to send Hello.
    pub hello_timeout: Duration,
    /// A stream with no message for this long is closed (agents heartbeat
    /// every ~15 s).
    pub idle_timeout: Duration,
    /// Messages buffered per stream toward the agent.
    pub send_queue: usize,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self { hello_timeout: Duration::from_secs(30), idle_timeout: Duration::from_secs(90), send_queue: 8 }
    }
}

/// Everything the services share.
pub struct Core {
    /// The fleet state actor.
    pub state: StateHandle,
    /// The store writer.
    pub writer: WriterHandle,
    /// The store, for reads.
    pub store: Arc<dyn Store>,
    /// The source pipeline.
    pub pipeline: Arc<dyn SourcePipeline>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Committed events, for FollowEvents.
    pub events: broadcast::Sender<Arc<StoredEvent>>,
    /// SHA-256 hex of each accepted admin token; swapped when the admin
    /// token file changes ([`spawn_admin_token_reload`]).
    pub admin_token_hashes: arc_swap::ArcSwap<Vec<String>>,
    /// The CA certificate(s) PEM handed to agents.
    pub ca_pem: String,
    /// Cancelled when the hub drains.
    pub drain: CancellationToken,
    /// Sync settings.
    pub sessions: SessionSettings,
    /// In-memory cache of artifact bytes.
    pub artifacts: artifacts::ArtifactCache,
    /// The statement-signing public keys agents pin (SPKI PEM).
    pub trusted_keys_pem: String,
    /// Artifact bytes from the other hub replicas (shared store only).
    pub peer_artifacts: Option<Arc<crate::ha::artifacts::PeerArtifacts>>,
    /// The admin certificates the hub issued, revoked ones included.
    pub admins: Arc<crate::admins::AdminRegistry>,
    /// The pending agent commands this replica knows.
    pub commands: Arc<crate::commands::Commands>,
    /// The hub clock (`HubOptions::clock`): command times and expiry.
    pub clock: convoy_core::clock::SharedClock,
}

impl Core {
    /// Who is calling: the verified client certificate wins; without one, an
    /// admin bearer token; else anonymous.
    pub fn caller<T>(&self, req: &Request<T>) -> Caller {
        if let Some(peer) = req.extensions().get::<ConnInfo>().and_then(|i| i.peer.as_ref()) {
            return match &peer.identity {
                Identity::Cluster(n) => Caller::Cluster { name: n.clone(), serial: peer.serial.clone() },
                Identity::Admin(n) => Caller::Admin { name: n.clone(), serial: Some(peer.serial.clone()) },
            };
        }
        if let Some(token) = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        {
            let h = hash_secret(token.trim());
            // Compare against every accepted hash, in constant time each.
            let ok = self.admin_token_hashes.load().iter().fold(false, |acc, a| acc | hashes_equal(a, &h));
            if ok {
                return Caller::Admin { name: "token".into(), serial: None };
            }
        }
        Caller::Anonymous
    }

    /// Authorize an agent call; returns the caller's cluster.
    pub fn agent<T>(&self, req: &Request<T>) -> Result<ClusterEntry, Status> {
        let caller = self.caller(req);
        let view = self.state.view();
        let entry = match &caller {
            Caller::Cluster { name, .. } => view.clusters.get(name).cloned(),
            _ => None,
        };
        authorize(&caller, Access::Agent, entry.as_ref().map(|e| &*e.record), &Default::default(), now_ms())
            .map_err(rejection)?;
        entry.ok_or_else(|| Status::internal("authorized cluster missing"))
    }

    /// Authorize a fleet call.
    pub fn admin<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let caller = self.caller(req);
        authorize(&caller, Access::Fleet, None, &self.admins.view(), now_ms()).map_err(rejection)?;
        Ok(caller)
    }
}

/// How often the admin token file is re-read.
pub const ADMIN_TOKEN_RELOAD: Duration = Duration::from_secs(2);

/// Re-read the admin token `file` every [`ADMIN_TOKEN_RELOAD`]: a rotated
/// token takes effect (and the old one stops working) without a restart. An
/// unreadable or empty file keeps the current token and logs a warning once.
pub fn spawn_admin_token_reload(
    core: Arc<Core>,
    file: std::path::PathBuf,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut warned = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(ADMIN_TOKEN_RELOAD) => {}
            }
            let f = file.clone();
            let read = tokio::task::spawn_blocking(move || std::fs::read_to_string(f)).await;
            match read {
                Ok(Ok(t)) if !t.trim().is_empty() => {
                    warned = false;
                    let h = hash_secret(t.trim());
                    if core.admin_token_hashes.load().as_slice() != std::slice::from_ref(&h) {
                        core.admin_token_hashes.store(Arc::new(vec![h]));
                        tracing::info!(file = %file.display(), "admin token file changed; the new token is in force");
                    }
                }
                _ if !warned => {
                    warned = true;
                    tracing::warn!(file = %file.display(), "cannot read the admin token file (or it is empty); keeping the current token");
                }
                _ => {}
            }
        }
    })
}

/// A domain rejection as a gRPC status.
pub fn rejection(r: Rejection) -> Status {
    match r {
        Rejection::Unauthenticated(m) => Status::unauthenticated(m),
        Rejection::PermissionDenied(m) => Status::permission_denied(m),
        Rejection::NotFound(m) => Status::not_found(m),
        Rejection::InvalidArgument(m) => Status::invalid_argument(m),
        Rejection::FailedPrecondition(m) => Status::failed_precondition(m),
    }
}

/// A hub error as a gRPC status.
pub fn status(e: Error) -> Status {
    match e {
        Error::Rejected(r) => rejection(r),
        Error::ShuttingDown => Status::unavailable("the hub is shutting down"),
        Error::Core(e) => Status::invalid_argument(e.to_string()),
        Error::Sources(e) => Status::failed_precondition(e.to_string()),
        e @ Error::RolloutRefused { .. } => rollout_refused(e),
        e @ Error::RolloutChanged { .. } => Status::aborted(e.to_string()),
        e @ Error::LeaseLost { .. } => Status::unavailable(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

/// A refused rollout command: no rollout is `NOT_FOUND`, a state that does
/// not allow the command is `FAILED_PRECONDITION`, another replica's write in
/// between is `ABORTED` (retry). The message names the bundle, the command
/// and the reason.
fn rollout_refused(e: Error) -> Status {
    use crate::domain::rollout::RefusalKind;
    let Error::RolloutRefused { reason, .. } = &e else { return Status::internal(e.to_string()) };
    match reason.kind() {
        RefusalKind::NotFound => Status::not_found(e.to_string()),
        RefusalKind::State => Status::failed_precondition(e.to_string()),
        RefusalKind::Conflict => Status::aborted(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::rollout::Refusal;
    use tonic::Code;

    fn refused(reason: Refusal) -> Status {
        status(Error::RolloutRefused { bundle: "web".into(), command: "resume", reason })
    }

    #[test]
    fn a_rollout_command_on_a_bundle_without_rollout_is_not_found() {
        let s = refused(Refusal::NoRollout);
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "rollout of \"web\": resume refused: the bundle has no rollout");
    }

    #[test]
    fn a_rollout_command_the_state_does_not_allow_is_failed_precondition() {
        for reason in [
            Refusal::Ended { revision: "main@abc".into(), status: "Complete" },
            Refusal::NoWaveLeft,
            Refusal::NotAwaitingApproval { wave: "eu".into() },
            Refusal::AlreadyPaused,
            Refusal::NotPaused,
        ] {
            let text = reason.to_string();
            let s = refused(reason);
            assert_eq!(s.code(), Code::FailedPrecondition, "{text}");
            assert!(
                s.message().ends_with(&text) && s.message().contains("resume refused"),
                "{}",
                s.message()
            );
        }
    }

    #[test]
    fn a_rollout_command_raced_by_another_replica_is_aborted() {
        let s = refused(Refusal::ChangedOnAnotherReplica { stored: 5, seen: 4 });
        assert_eq!(s.code(), Code::Aborted);
        assert!(s.message().contains("another hub replica") && s.message().contains("try again"));
        // A rollout record the store refused outside a command (a leader's tick).
        let s = status(Error::RolloutChanged { bundle: "web".into(), stored: 5, seen: 4 });
        assert_eq!(s.code(), Code::Aborted);
    }

    #[test]
    fn a_replica_that_lost_its_lease_is_unavailable() {
        let s = status(Error::LeaseLost { replica: "r1".into() });
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.message().contains("lost its lease"), "{}", s.message());
    }

    #[test]
    fn a_rollout_command_from_a_caller_that_is_not_an_admin_is_permission_denied() {
        // Checked before the command reaches the rollout (Fleet access).
        let caller = Caller::Cluster { name: "c1".into(), serial: "01".into() };
        let r = authorize(&caller, Access::Fleet, None, &Default::default(), 0).unwrap_err();
        let s = status(Error::Rejected(r));
        assert_eq!(s.code(), Code::PermissionDenied);
        assert!(s.message().contains("may not call fleet"), "{}", s.message());
    }
}
