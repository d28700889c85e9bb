//! Artifact bytes between replicas: a replica asked for a digest it never
//! built (another replica holds the source's lock and built it) fetches the
//! bytes from the replicas that advertise themselves in the store, over the
//! same mTLS as agents (its admin certificate, issued by the shared CA),
//! checks them against the digest, and keeps them in its data dir. One
//! fetch per digest at a time; a peer request is never passed on.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use convoy_proto::v1 as pb;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tracing::{info, warn};

use crate::domain::Rejection;
use crate::store::Store;
use crate::{Error, Result, files};

/// The name every hub server certificate carries (the generated ones have
/// it; a replica with its own `tls.certFile` must list it too).
pub const PEER_SERVER_NAME: &str = "localhost";

/// The file name an artifact with `digest` is kept under, or why the digest
/// is not one (`sha256:` and 64 lowercase hex: nothing else reaches a path).
pub fn file_name(digest: &str) -> Result<String> {
    let hex = digest.strip_prefix("sha256:").unwrap_or("");
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(Rejection::InvalidArgument(format!("{digest:?} is not a sha256:<hex> digest")).into());
    }
    Ok(format!("{hex}.tar.gz"))
}

/// `store.advertise` with `${NAME}` replaced by `lookup(NAME)` (the chart
/// writes `https://${POD_IP}:8443`); an unset variable is an error.
pub fn expand(advertise: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::new();
    let mut rest = advertise;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let Some(end) = rest[i..].find('}') else {
            return Err(Error::Config(format!("store.advertise {advertise:?}: unclosed ${{")));
        };
        let name = &rest[i + 2..i + end];
        let v = lookup(name).ok_or_else(|| {
            Error::Config(format!("store.advertise {advertise:?}: environment variable {name} is not set"))
        })?;
        out.push_str(&v);
        rest = &rest[i + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether `bytes` are the artifact `digest` names.
pub fn verify(digest: &str, bytes: &[u8]) -> Result<()> {
    let got = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    if got == digest {
        Ok(())
    } else {
        Err(Error::Store(format!("a peer replica sent {got} for artifact {digest}; refused")))
    }
}

/// Fetches artifacts from the other replicas.
pub struct PeerArtifacts {
    store: Arc<dyn Store>,
    dir: PathBuf,
    ca_pem: String,
    identity: (String, String),
    inflight: Mutex<HashMap<String, Arc<OnceCell<PathBuf>>>>,
}

impl PeerArtifacts {
    /// Keep fetched artifacts in `dir`; call peers trusting `ca_pem`, as
    /// `identity` (certificate and key PEM of this replica's admin identity).
    pub fn new(store: Arc<dyn Store>, dir: PathBuf, ca_pem: String, identity: (String, String)) -> Self {
        Self { store, dir, ca_pem, identity, inflight: Mutex::new(HashMap::new()) }
    }

    /// The stored file of `digest`, fetched from a peer first if needed.
    pub async fn path(&self, digest: &str) -> Result<PathBuf> {
        let path = self.dir.join(file_name(digest)?);
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(path);
        }
        let cell = self.inflight.lock().entry(digest.to_string()).or_default().clone();
        let got = cell.get_or_try_init(|| self.fetch(digest, path)).await.cloned();
        if got.is_err() {
            // A failed fetch is tried again by the next download.
            self.inflight.lock().remove(digest);
        }
        got
    }

    async fn fetch(&self, digest: &str, path: PathBuf) -> Result<PathBuf> {
        let store = self.store.clone();
        let peers = tokio::task::spawn_blocking(move || store.peers())
            .await
            .map_err(|e| Error::Store(e.to_string()))??;
        let mut tried = Vec::new();
        for peer in peers {
            match self.download(&peer, digest).await {
                Ok(bytes) => {
                    let (d, p) = (digest.to_string(), path.clone());
                    tokio::task::spawn_blocking(move || {
                        verify(&d, &bytes)?;
                        files::write_public(&p, &bytes)
                    })
                    .await
                    .map_err(|e| Error::Store(e.to_string()))??;
                    info!(digest, peer = %peer, "artifact fetched from another hub replica");
                    return Ok(path);
                }
                Err(e) => {
                    warn!(digest, peer = %peer, error = %e, "a peer replica could not send the artifact");
                    tried.push(format!("{peer}: {e}"));
                }
            }
        }
        Err(Rejection::NotFound(format!(
            "artifact {digest:?} is not stored on this hub replica nor on its peers ({})",
            if tried.is_empty() { "no peer advertised".to_string() } else { tried.join("; ") }
        ))
        .into())
    }

    async fn download(&self, peer: &str, digest: &str) -> Result<Vec<u8>> {
        let net = |e: &dyn std::fmt::Display| Error::Store(format!("peer {peer}: {e}"));
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.identity.0, &self.identity.1))
            .domain_name(PEER_SERVER_NAME);
        let channel = Endpoint::from_shared(peer.to_string())
            .map_err(|e| net(&e))?
            .tls_config(tls)
            .map_err(|e| net(&e))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(300))
            .connect()
            .await
            .map_err(|e| net(&e))?;
        let mut client = pb::agent_client::AgentClient::new(channel).max_decoding_message_size(16 << 20);
        let mut stream = client
            .download_artifact(pb::DownloadArtifactRequest { digest: digest.to_string(), offset: 0 })
            .await
            .map_err(|e| net(&e.message()))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(|e| net(&e.message()))? {
            if chunk.offset != out.len() as u64 {
                return Err(net(&format!("chunk at {} after {} bytes", chunk.offset, out.len())));
            }
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sha256_digests_name_files() {
        let hex = "ab".repeat(32);
        assert_eq!(file_name(&format!("sha256:{hex}")).unwrap(), format!("{hex}.tar.gz"));
        for bad in
            ["", "sha256:", "sha256:../../etc/passwd", "md5:abcd", &format!("sha256:{}", "AB".repeat(32))]
        {
            assert!(file_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn advertise_expands_environment_variables() {
        let env = |n: &str| (n == "POD_IP").then(|| "10.1.2.3".to_string());
        assert_eq!(expand("https://${POD_IP}:8443", env).unwrap(), "https://10.1.2.3:8443");
        assert_eq!(expand("https://hub-0:8443", env).unwrap(), "https://hub-0:8443");
        assert!(expand("https://${NODE}:8443", env).unwrap_err().to_string().contains("NODE"));
        assert!(expand("https://${POD_IP:8443", env).is_err());
    }

    #[test]
    fn bytes_must_match_their_digest() {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(b"one")));
        assert!(verify(&digest, b"one").is_ok());
        let err = verify(&digest, b"two").unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
    }
}
