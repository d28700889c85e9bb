//! HTTP(S) Helm chart repositories (`index.yaml`): fetch the index, pick a
//! chart version (exact, or the highest match of a semver range with the
//! same pre-release rules as git tags), download the `.tgz` and check it
//! against the digest the index gives. Credentials (basic auth or a bearer
//! token) and a CA bundle come from files; they never appear in errors.
//! The version choice ([`pick_version`]) is a pure function of the index.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::redact::redact_url;
use crate::{Error, Result};

/// How to reach a chart repository.
#[derive(Debug, Clone, Default)]
pub struct RepoAuth {
    /// A file with `user:password` for basic auth.
    pub basic_auth_file: Option<PathBuf>,
    /// A file with a bearer token.
    pub bearer_token_file: Option<PathBuf>,
    /// A PEM CA bundle trusted for this repository.
    pub ca_file: Option<PathBuf>,
    /// Request timeout (default 60 s).
    pub timeout: Option<Duration>,
    /// The largest chart accepted (default 20 MiB).
    pub max_chart_bytes: Option<u64>,
}

/// One chart version of an index.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IndexEntry {
    /// The chart version.
    pub version: String,
    /// Download URLs (absolute, or relative to the repository URL).
    #[serde(default)]
    pub urls: Vec<String>,
    /// The archive's sha256 (hex, as `helm repo index` writes it).
    #[serde(default)]
    pub digest: String,
}

/// The parts of `index.yaml` Convoy reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Index {
    /// Chart name -> versions.
    #[serde(default)]
    pub entries: std::collections::BTreeMap<String, Vec<IndexEntry>>,
}

/// A downloaded, checked chart.
#[derive(Debug, Clone)]
pub struct FetchedChart {
    /// The chart name.
    pub name: String,
    /// The resolved version.
    pub version: String,
    /// `sha256:<hex>` of the archive (checked against the index).
    pub digest: String,
    /// The archive bytes.
    pub bytes: Vec<u8>,
}

/// Parse an index.
pub fn parse_index(text: &str) -> Result<Index> {
    serde_saphyr::from_str(text)
        .map_err(|e| Error::Config(format!("index.yaml: {}", e.to_string().lines().next().unwrap_or(""))))
}

/// Pick the version: `constraint` is an exact version, or a semver range
/// (highest match; pre-releases only match a range that names one, as for
/// git tags); empty means the highest release. Pure.
pub fn pick_version<'a>(index: &'a Index, chart: &str, constraint: &str) -> Result<Option<&'a IndexEntry>> {
    let Some(versions) = index.entries.get(chart) else { return Ok(None) };
    if let Some(exact) = versions.iter().find(|e| e.version == constraint) {
        return Ok(Some(exact));
    }
    let range = if constraint.is_empty() { "*" } else { constraint };
    let req = convoy_core::chartsrc::parse_version_range(range)
        .map_err(|e| Error::Config(format!("chart version {e}")))?;
    Ok(versions
        .iter()
        .filter_map(|e| {
            let v = semver::Version::parse(e.version.strip_prefix(['v', 'V']).unwrap_or(&e.version)).ok()?;
            req.matches(&v).then_some((v, e))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, e)| e))
}

/// A client for one repository.
pub struct HelmRepo {
    url: String,
    client: reqwest::Client,
    auth: Option<Auth>,
    max_chart_bytes: u64,
}

enum Auth {
    Basic(String, String),
    Bearer(String),
}

impl HelmRepo {
    /// A client for `url` (the directory holding `index.yaml`).
    pub fn new(url: &str, opts: &RepoAuth) -> Result<Self> {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).map_err(|source| Error::Io { path: p.display().to_string(), source })
        };
        let auth = match (&opts.basic_auth_file, &opts.bearer_token_file) {
            (Some(f), _) => {
                let text = read(f)?;
                let (u, p) = text
                    .trim()
                    .split_once(':')
                    .ok_or_else(|| Error::Config(format!("{}: expected user:password", f.display())))?;
                Some(Auth::Basic(u.to_string(), p.to_string()))
            }
            (None, Some(f)) => Some(Auth::Bearer(read(f)?.trim().to_string())),
            (None, None) => None,
        };
        let mut b = reqwest::Client::builder()
            .timeout(opts.timeout.unwrap_or(Duration::from_secs(60)))
            .user_agent(format!("convoy/{}", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &opts.ca_file {
            let pem =
                std::fs::read(ca).map_err(|source| Error::Io { path: ca.display().to_string(), source })?;
            for c in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Error::Config(format!("caFile: not a PEM bundle of certificates: {e}")))?
            {
                b = b.add_root_certificate(c);
            }
        }
        let client = b.build().map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            url: url.trim_end_matches('/').to_string(),
            client,
            auth,
            max_chart_bytes: opts.max_chart_bytes.unwrap_or(20 << 20),
        })
    }

    async fn get(&self, url: &str, limit: u64) -> Result<Vec<u8>> {
        let shown = redact_url(url);
        let mut req = self.client.get(url);
        req = match &self.auth {
            Some(Auth::Basic(u, p)) => req.basic_auth(u, Some(p)),
            Some(Auth::Bearer(t)) => req.bearer_auth(t),
            None => req,
        };
        let fetch = |message: String| Error::Fetch { url: shown.clone(), message };
        let resp = req.send().await.map_err(|e| fetch(e.without_url().to_string()))?;
        match resp.status() {
            s if s.is_success() => {}
            s if s == reqwest::StatusCode::UNAUTHORIZED || s == reqwest::StatusCode::FORBIDDEN => {
                return Err(Error::Auth { url: shown.clone(), message: s.to_string() });
            }
            s => return Err(fetch(format!("HTTP {s}"))),
        }
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(fetch(format!("more than {limit} bytes")));
        }
        let bytes = resp.bytes().await.map_err(|e| fetch(e.without_url().to_string()))?;
        if bytes.len() as u64 > limit {
            return Err(fetch(format!("more than {limit} bytes")));
        }
        Ok(bytes.to_vec())
    }

    /// Fetch and parse `index.yaml`.
    pub async fn index(&self) -> Result<Index> {
        Ok(self.index_with_digest().await?.0)
    }

    /// Fetch and parse `index.yaml`; also `sha256:<hex>` of its bytes (the
    /// repository's revision: a changed index is a new revision).
    pub async fn index_with_digest(&self) -> Result<(Index, String)> {
        let bytes = self.get(&format!("{}/index.yaml", self.url), 64 << 20).await?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        Ok((parse_index(&String::from_utf8_lossy(&bytes))?, digest))
    }

    /// Resolve `chart` at `constraint` and download it, checking its digest.
    pub async fn fetch(&self, chart: &str, constraint: &str) -> Result<FetchedChart> {
        let index = self.index().await?;
        let entry = self.resolve(&index, chart, constraint)?;
        self.download(chart, entry).await
    }

    /// The entry of `chart` at `constraint`, or `RefNotFound`.
    pub fn resolve<'a>(&self, index: &'a Index, chart: &str, constraint: &str) -> Result<&'a IndexEntry> {
        pick_version(index, chart, constraint)?.ok_or_else(|| Error::RefNotFound {
            url: redact_url(&self.url),
            reference: format!(
                "chart {chart} version {:?}",
                if constraint.is_empty() { "*" } else { constraint }
            ),
        })
    }

    /// Download the archive of an index entry (its first URL; a relative
    /// URL resolves against the repository URL) and check it against the
    /// entry's digest. An entry without a digest is refused: there would be
    /// nothing to check the download against.
    pub async fn download(&self, chart: &str, entry: &IndexEntry) -> Result<FetchedChart> {
        let rel = entry
            .urls
            .first()
            .ok_or_else(|| Error::Config(format!("index.yaml: {chart} {} has no urls", entry.version)))?;
        let expected = entry.digest.trim_start_matches("sha256:").to_ascii_lowercase();
        if expected.len() != 64 || !expected.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::Config(format!(
                "index.yaml: {chart} {} has no sha256 digest; a chart without one is refused",
                entry.version
            )));
        }
        let url = if rel.contains("://") {
            rel.clone()
        } else {
            format!("{}/{}", self.url, rel.trim_start_matches('/'))
        };
        let bytes = self.get(&url, self.max_chart_bytes).await?;
        let digest = hex::encode(Sha256::digest(&bytes));
        if digest != expected {
            return Err(Error::DigestMismatch {
                url: redact_url(&url),
                expected: format!("sha256:{expected}"),
                actual: format!("sha256:{digest}"),
            });
        }
        Ok(FetchedChart {
            name: chart.to_string(),
            version: entry.version.clone(),
            digest: format!("sha256:{digest}"),
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = "apiVersion: v1\nentries:\n  podinfo:\n  - version: 6.14.1\n    urls: [podinfo-6.14.1.tgz]\n    digest: aa\n  - version: 6.15.0\n    urls: [podinfo-6.15.0.tgz]\n  - version: 7.0.0-rc.1\n    urls: [x]\n  - version: v5.0.0\n    urls: [y]\n";

    #[test]
    fn versions_exact_range_highest_and_prereleases() {
        let i = parse_index(INDEX).unwrap();
        let v = |c: &str| pick_version(&i, "podinfo", c).unwrap().map(|e| e.version.clone());
        assert_eq!(v("6.14.1").as_deref(), Some("6.14.1"));
        assert_eq!(v(">=6.0.0, <7.0.0").as_deref(), Some("6.15.0"));
        assert_eq!(v("").as_deref(), Some("6.15.0"), "pre-releases only for a range that names one");
        assert_eq!(v(">=7.0.0-rc.0").as_deref(), Some("7.0.0-rc.1"));
        assert_eq!(v("^5").as_deref(), Some("v5.0.0"));
        assert_eq!(v(">=6.0.0 <6.15.0").as_deref(), Some("6.14.1"), "Helm's space-separated form");
        assert_eq!(v(">=8"), None);
        assert!(pick_version(&i, "other", "*").unwrap().is_none());
        assert!(pick_version(&i, "podinfo", "not a range").is_err());
    }
}
