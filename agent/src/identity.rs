//! The agent's cluster identity: an ECDSA P-256 key generated here (rcgen),
//! a certificate the hub signs from our CSR at registration (bootstrap token)
//! and renews before expiry, and the hub CA. Kept in the Secret
//! `convoy-agent-identity` (`tls.crt`, `tls.key`, `ca.crt`) in the agent's
//! namespace so that a restarted pod does not register again. Also builds the
//! TLS endpoints for the hub.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use convoy_core::clock::now_ms;
use convoy_proto::v1::registration_client::RegistrationClient;
use convoy_proto::v1::{RegisterRequest, RenewCertificateRequest, agent_client::AgentClient};
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::kubeapi::ObjApi;
use crate::objects::ObjKey;
use crate::resource::ResourceInfo;
use crate::{Error, Result};

/// The Secret holding the identity.
pub const SECRET_NAME: &str = "convoy-agent-identity";

/// The agent version sent at registration and in Hello.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A key, its certificate and the hub CA.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterIdentity {
    /// The client certificate (PEM).
    pub cert_pem: String,
    /// The private key (PKCS#8 PEM). Never logged.
    pub key_pem: String,
    /// The hub CA (PEM).
    pub ca_pem: String,
    /// Certificate validity start (Unix ms).
    pub not_before_ms: i64,
    /// Certificate validity end (Unix ms).
    pub not_after_ms: i64,
}

impl std::fmt::Debug for ClusterIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterIdentity")
            .field("not_before_ms", &self.not_before_ms)
            .field("not_after_ms", &self.not_after_ms)
            .finish_non_exhaustive()
    }
}

impl ClusterIdentity {
    /// Build from PEMs, reading the validity from the certificate.
    pub fn from_pems(cert_pem: String, key_pem: String, ca_pem: String) -> Result<Self> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| Error::Tls(format!("certificate PEM: {e}")))?;
        let cert = pem.parse_x509().map_err(|e| Error::Tls(format!("certificate: {e}")))?;
        let v = cert.validity();
        let (nb, na) = (v.not_before.timestamp() * 1000, v.not_after.timestamp() * 1000);
        Ok(Self { cert_pem, key_pem, ca_pem, not_before_ms: nb, not_after_ms: na })
    }

    /// When to renew: after `fraction` of the lifetime (2/3 by default).
    pub fn renew_at_ms(&self, fraction: f64) -> i64 {
        let life = (self.not_after_ms - self.not_before_ms).max(0) as f64;
        self.not_before_ms + (life * fraction.clamp(0.1, 0.95)) as i64
    }

    /// Whether the certificate has expired.
    pub fn expired(&self) -> bool {
        now_ms() >= self.not_after_ms
    }

    /// A TLS endpoint presenting this identity and trusting the hub CA.
    pub fn endpoint(&self, address: &str) -> Result<Endpoint> {
        endpoint(address, &self.ca_pem, Some((&self.cert_pem, &self.key_pem)))
    }
}

/// A TLS endpoint for the hub (client certificate optional).
pub fn endpoint(address: &str, ca_pem: &str, identity: Option<(&str, &str)>) -> Result<Endpoint> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let ep = Endpoint::from_shared(address.to_string())
        .map_err(|e| Error::Config(format!("hub address {address:?}: {e}")))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(10))
        // Artifacts come in 64 KiB chunks: a large window avoids a round trip per chunk.
        .initial_stream_window_size(Some(1 << 20))
        .initial_connection_window_size(Some(2 << 20))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    Ok(ep)
}

/// A new ECDSA P-256 key and a CSR for it (PEMs). The hub takes only the
/// public key from the CSR.
pub fn new_key_and_csr(cluster: &str) -> Result<(String, String)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Error::Tls(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, cluster);
    let csr = params.serialize_request(&key).map_err(|e| Error::Tls(e.to_string()))?;
    let csr_pem = csr.pem().map_err(|e| Error::Tls(e.to_string()))?;
    Ok((key.serialize_pem(), csr_pem))
}

fn secrets() -> ResourceInfo {
    ResourceInfo {
        group: String::new(),
        version: "v1".into(),
        kind: "Secret".into(),
        plural: "secrets".into(),
        namespaced: true,
    }
}

/// Read the identity Secret; `None` when there is none (or it is incomplete).
pub async fn load(client: &kube::Client, namespace: &str) -> Result<Option<ClusterIdentity>> {
    let key = ObjKey::new("", "Secret", Some(namespace), SECRET_NAME);
    let Some(s) = ObjApi::new(client, &secrets(), &key).get().await? else {
        return Ok(None);
    };
    let field = |k: &str| -> Option<String> {
        let b64 = s["data"][k].as_str()?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        String::from_utf8(bytes).ok().filter(|v| !v.is_empty())
    };
    let (Some(cert), Some(key_pem), Some(ca)) = (field("tls.crt"), field("tls.key"), field("ca.crt")) else {
        tracing::warn!(namespace, "identity Secret {SECRET_NAME} is incomplete; registering again");
        return Ok(None);
    };
    ClusterIdentity::from_pems(cert, key_pem, ca).map(Some)
}

/// Write the identity Secret.
pub async fn save(client: &kube::Client, namespace: &str, cluster: &str, id: &ClusterIdentity) -> Result<()> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let body = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": SECRET_NAME,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": convoy_core::FIELD_MANAGER},
            "annotations": {
                "convoy.dev/cluster": cluster,
                "convoy.dev/not-after": id.not_after_ms.to_string(),
            },
        },
        "data": {
            "tls.crt": b64(&id.cert_pem),
            "tls.key": b64(&id.key_pem),
            "ca.crt": b64(&id.ca_pem),
        },
    })
    .to_string();
    let key = ObjKey::new("", "Secret", Some(namespace), SECRET_NAME);
    let api = ObjApi::new(client, &secrets(), &key);
    api.apply_own(&body, namespace).await
}

/// What registration needs.
#[derive(Debug, Clone)]
pub struct Registration<'a> {
    /// Hub address.
    pub address: &'a str,
    /// Hub CA PEM trusted for the first contact.
    pub ca_pem: &'a str,
    /// The bootstrap token.
    pub token: &'a str,
    /// The cluster name.
    pub cluster: &'a str,
    /// Labels to report.
    pub labels: &'a BTreeMap<String, String>,
}

/// Trade the bootstrap token and a fresh CSR for a certificate.
pub async fn register(r: Registration<'_>) -> Result<ClusterIdentity> {
    let (key_pem, csr_pem) = new_key_and_csr(r.cluster)?;
    let channel = endpoint(r.address, r.ca_pem, None)?.connect().await?;
    let resp = RegistrationClient::new(channel)
        .register(RegisterRequest {
            token: r.token.to_string(),
            cluster_name: r.cluster.to_string(),
            labels: r.labels.clone().into_iter().collect(),
            csr_pem,
            agent_version: AGENT_VERSION.to_string(),
        })
        .await?
        .into_inner();
    let ca = if resp.ca_pem.is_empty() { r.ca_pem.to_string() } else { resp.ca_pem };
    ClusterIdentity::from_pems(resp.certificate_pem, key_pem, ca)
}

/// Renew the certificate over an authenticated channel, with a new key.
pub async fn renew(channel: Channel, current: &ClusterIdentity, cluster: &str) -> Result<ClusterIdentity> {
    let (key_pem, csr_pem) = new_key_and_csr(cluster)?;
    let resp =
        AgentClient::new(channel).renew_certificate(RenewCertificateRequest { csr_pem }).await?.into_inner();
    let ca = if resp.ca_pem.is_empty() { current.ca_pem.clone() } else { resp.ca_pem };
    ClusterIdentity::from_pems(resp.certificate_pem, key_pem, ca)
}

/// Read the bootstrap token (trimmed).
pub fn read_token(path: &Path) -> Result<String> {
    let t =
        std::fs::read_to_string(path).map_err(|e| Error::io(format!("read token {}", path.display()), e))?;
    let t = t.trim().to_string();
    if t.is_empty() {
        return Err(Error::Config(format!("token file {} is empty", path.display())));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_carries_a_p256_key_and_validity_is_read() {
        let (key_pem, csr_pem) = new_key_and_csr("c1").unwrap();
        assert!(key_pem.contains("PRIVATE KEY"));
        assert!(csr_pem.contains("CERTIFICATE REQUEST"));
        // Self-sign with the key to get a certificate with a known validity.
        let kp = rcgen::KeyPair::from_pem(&key_pem).unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.not_before = rcgen::date_time_ymd(2026, 1, 1);
        p.not_after = rcgen::date_time_ymd(2026, 1, 4);
        let cert = p.self_signed(&kp).unwrap();
        let id = ClusterIdentity::from_pems(cert.pem(), key_pem, cert.pem()).unwrap();
        let day = 86_400_000;
        assert_eq!(id.not_after_ms - id.not_before_ms, 3 * day);
        assert_eq!(id.renew_at_ms(2.0 / 3.0), id.not_before_ms + 2 * day);
        assert!(id.expired());
        assert!(!format!("{id:?}").contains("PRIVATE"), "keys never reach logs");
    }
}
