//! `convoy.v1.Registration`: a bootstrap token and a CSR become a cluster certificate.

use std::sync::Arc;

use convoy_core::identity::Identity;
use convoy_proto::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::warn;

use super::{Core, status};
use crate::metrics::ResultLabels;
use crate::state::RegisterInput;

/// The Registration service.
pub struct RegistrationService {
    core: Arc<Core>,
}

impl RegistrationService {
    /// A service over `core`.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

#[tonic::async_trait]
impl pb::registration_server::Registration for RegistrationService {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let remote = req.extensions().get::<crate::tls::ConnInfo>().and_then(|i| i.remote);
        let r = req.into_inner();
        let cluster = r.cluster_name.clone();
        let input = RegisterInput {
            token: r.token,
            cluster: r.cluster_name,
            labels: r.labels.into_iter().collect(),
            csr_pem: r.csr_pem,
            agent_version: r.agent_version,
        };
        match self.core.state.register(input).await {
            Ok(out) => Ok(Response::new(pb::RegisterResponse {
                certificate_pem: out.cert.pem,
                ca_pem: self.core.ca_pem.clone(),
                identity: Identity::Cluster(cluster).uri(),
                not_after_unix_ms: out.cert.not_after_unix_ms,
                labels: out.labels.into_iter().collect(),
            })),
            Err(e) => {
                let s = status(e);
                warn!(cluster = %cluster, remote = ?remote, code = ?s.code(), error = %s.message(), "registration refused");
                self.core.metrics.registrations.get_or_create(&ResultLabels { result: "refused" }).inc();
                Err(s)
            }
        }
    }
}
