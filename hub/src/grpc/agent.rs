//! `convoy.v1.Agent`: the Sync stream, artifact download and certificate renewal.
//!
//! A Sync stream lives no longer than the certificate that opened it: at its
//! `notAfter` the hub ends the stream with `UNAUTHENTICATED`, so an agent
//! reconnects with its renewed certificate (and a stolen, expired one stops
//! at once). Revocation and re-registration close streams through the state.

use std::pin::Pin;
use std::sync::Arc;

use convoy_proto::v1 as pb;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::info;

use super::{Core, status};

/// Artifacts are streamed in chunks of this size.
pub const CHUNK_SIZE: usize = 64 * 1024;

/// The Agent service.
pub struct AgentService {
    core: Arc<Core>,
}

impl AgentService {
    /// A service over `core`.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    type SyncStream = BoxStream<pb::HubMessage>;
    type DownloadArtifactStream = BoxStream<pb::ArtifactChunk>;

    async fn sync(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let entry = self.core.agent(&req)?;
        let not_after = peer_cert(&req).map(|p| p.not_after_unix_ms);
        let out = super::session::start(self.core.clone(), entry, req.into_inner()).await?;
        Ok(Response::new(match not_after {
            Some(t) => until_expiry(out, t),
            None => Box::pin(out),
        }))
    }

    async fn download_artifact(
        &self,
        req: Request<pb::DownloadArtifactRequest>,
    ) -> Result<Response<Self::DownloadArtifactStream>, Status> {
        // Another hub replica (an admin certificate of the shared CA) may
        // fetch any artifact it lacks (crate::ha::artifacts).
        let replica =
            peer_cert(&req).is_some_and(|p| matches!(p.identity, convoy_core::identity::Identity::Admin(_)));
        let digest_req = req.get_ref().digest.clone();
        if !replica {
            let entry = self.core.agent(&req)?;
            if !entry.shared.desired().has_digest(&digest_req) {
                return Err(Status::permission_denied(format!(
                    "cluster {:?} is not targeted by a bundle whose current artifact is {digest_req:?}",
                    entry.record.name
                )));
            }
        }
        let pb::DownloadArtifactRequest { digest, offset } = req.into_inner();
        // A hot artifact is served from memory without touching the disk.
        let bytes = match self.core.artifacts.cached(&digest) {
            Some(b) => b,
            None => {
                let path = match (self.core.pipeline.artifact_path(&digest), &self.core.peer_artifacts) {
                    (Some(p), _) => p,
                    // Fetched from the replica that has it (never for a replica's own request).
                    (None, Some(peers)) if !replica => peers.path(&digest).await.map_err(status)?,
                    _ => {
                        return Err(Status::not_found(format!(
                            "artifact {digest:?} is not stored on the hub"
                        )));
                    }
                };
                self.core.artifacts.get(&digest, &path).await.map_err(status)?
            }
        };
        let total = bytes.len() as u64;
        if offset > total {
            return Err(Status::out_of_range(format!(
                "offset {offset} is past the artifact's {total} bytes"
            )));
        }
        let metrics = self.core.metrics.clone();
        let start = offset as usize;
        let chunks = futures::stream::iter((start..bytes.len()).step_by(CHUNK_SIZE)).map(move |off| {
            let end = (off + CHUNK_SIZE).min(bytes.len());
            metrics.artifact_bytes_served.inc_by((end - off) as u64);
            Ok(pb::ArtifactChunk { offset: off as u64, data: bytes.slice(off..end), total_size: total })
        });
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn renew_certificate(
        &self,
        req: Request<pb::RenewCertificateRequest>,
    ) -> Result<Response<pb::RenewCertificateResponse>, Status> {
        let entry = self.core.agent(&req)?;
        let serial = peer_cert(&req).map(|p| p.serial.clone()).unwrap_or_default();
        let csr = req.into_inner().csr_pem;
        let cert = self.core.state.renew(entry.record.name.clone(), serial, csr).await.map_err(status)?;
        info!(cluster = %entry.record.name, "certificate renewed");
        Ok(Response::new(pb::RenewCertificateResponse {
            certificate_pem: cert.pem,
            ca_pem: self.core.ca_pem.clone(),
            not_after_unix_ms: cert.not_after_unix_ms,
        }))
    }
}

/// The verified client certificate of a request, if any.
fn peer_cert<T>(req: &Request<T>) -> Option<Arc<crate::pki::PeerCert>> {
    req.extensions().get::<crate::tls::ConnInfo>().and_then(|i| i.peer.clone())
}

/// `inner`, ended with `UNAUTHENTICATED` when the certificate that opened the
/// stream expires (`not_after_unix_ms`).
fn until_expiry<S>(inner: S, not_after_unix_ms: i64) -> BoxStream<pb::HubMessage>
where
    S: Stream<Item = Result<pb::HubMessage, Status>> + Send + Unpin + 'static,
{
    let left = u64::try_from(not_after_unix_ms.saturating_sub(crate::now_ms())).unwrap_or(0);
    let sleep = Box::pin(tokio::time::sleep(std::time::Duration::from_millis(left)));
    Box::pin(futures::stream::unfold((inner, sleep, false), |(mut inner, mut sleep, done)| async move {
        if done {
            return None;
        }
        tokio::select! {
            item = inner.next() => item.map(|i| (i, (inner, sleep, false))),
            _ = &mut sleep => Some((
                Err(Status::unauthenticated("the client certificate of this stream expired; reconnect with a renewed one")),
                (inner, sleep, true),
            )),
        }
    }))
}
