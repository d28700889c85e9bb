//! Talking to a `convoy hub` process a benchmark started: its admin
//! credentials file and TLS settings for the hub's gRPC port.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The admin credentials a hub writes to `<dataDir>/admin-credentials.yaml`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Creds {
    /// The gRPC endpoint.
    pub hub: String,
    /// The hub CA (PEM).
    pub ca: String,
    /// The admin certificate (PEM).
    pub cert: String,
    /// Its key (PEM).
    pub key: String,
}

impl Creds {
    /// Wait (at most 60 s) until a starting hub has written `file` in full,
    /// then read it.
    pub async fn wait_for(file: &Path) -> anyhow::Result<Creds> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(text) = std::fs::read_to_string(file)
                && let Ok(creds) = serde_saphyr::from_str::<Creds>(&text)
            {
                return Ok(creds);
            }
            if Instant::now() > deadline {
                bail!("the hub did not write {} within 60 s", file.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// TLS to the hub as the operator.
    pub fn admin_tls(&self) -> ClientTlsConfig {
        hub_tls(&self.ca, Some((&self.cert, &self.key)))
    }
}

/// TLS to a hub whose certificate names `localhost`, with a client identity
/// (certificate and key PEM) when given.
pub fn hub_tls(ca: &str, identity: Option<(&str, &str)>) -> ClientTlsConfig {
    let mut t = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    if let Some((c, k)) = identity {
        t = t.identity(Identity::from_pem(c, k));
    }
    t
}
