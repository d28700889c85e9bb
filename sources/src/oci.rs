//! Helm charts in OCI registries (`oci://host[:port]/path/chart`): a small
//! client of the OCI distribution API over the HTTP stack the crate already
//! uses (reqwest with rustls on ring; `oci-client` was not evaluated
//! against the one-TLS-provider rule, docs/helm.md). It lists tags, reads a manifest by tag or
//! digest (the manifest digest is what gets recorded), finds the chart layer
//! (`application/vnd.cncf.helm.chart.content.v1.tar+gzip`) and downloads it,
//! checked against its digest. Auth: basic (`user:password` file) sent
//! directly, a bearer token file, or the registry's token challenge
//! (`WWW-Authenticate: Bearer realm=…`, answered with the basic credentials
//! or anonymously). The tag choice ([`pick_tag`]) is pure.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::redact::redact_url;
use crate::{Error, Result};

/// The media type of a Helm chart layer.
pub const CHART_LAYER: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json";

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct OciAuth {
    /// A file with `user:password`.
    pub basic_auth_file: Option<PathBuf>,
    /// A file with a bearer token.
    pub bearer_token_file: Option<PathBuf>,
    /// A PEM CA bundle trusted for this registry.
    pub ca_file: Option<PathBuf>,
    /// Talk plain http (a registry without TLS).
    pub plain_http: bool,
    /// Request timeout (default 60 s).
    pub timeout: Option<Duration>,
    /// The largest chart accepted (default 20 MiB).
    pub max_chart_bytes: Option<u64>,
}

/// `oci://host[:port]/path` split into host and repository path. Pure.
pub fn parse_oci_url(url: &str) -> Result<(String, String)> {
    let rest =
        url.strip_prefix("oci://").ok_or_else(|| Error::Config(format!("{url}: not an oci:// URL")))?;
    let (host, path) = rest
        .split_once('/')
        .filter(|(h, p)| !h.is_empty() && !p.is_empty())
        .ok_or_else(|| Error::Config(format!("{url}: expected oci://host/path")))?;
    let path = path.trim_end_matches('/');
    if path.split('/').any(|s| s.is_empty() || s == "." || s == "..") || host.contains('@') {
        return Err(Error::Config(format!("{url}: expected oci://host/path")));
    }
    Ok((host.to_string(), path.to_string()))
}

/// Pick a tag: `constraint` is an exact tag, or a semver range (highest
/// match; pre-releases only for a range that names one; empty: the highest
/// release). Helm stores `+` of a version as `_` in a tag; both are read.
/// Returns the tag and the version it stands for. Pure.
pub fn pick_tag(tags: &[String], constraint: &str) -> Result<Option<(String, String)>> {
    if let Some(t) = tags.iter().find(|t| *t == constraint || t.replace('_', "+") == constraint) {
        return Ok(Some((t.clone(), t.replace('_', "+"))));
    }
    let range = if constraint.is_empty() { "*" } else { constraint };
    let req = convoy_core::chartsrc::parse_version_range(range)
        .map_err(|e| Error::Config(format!("chart version {e}")))?;
    Ok(tags
        .iter()
        .filter_map(|t| {
            let v = t.replace('_', "+");
            let parsed = semver::Version::parse(v.strip_prefix(['v', 'V']).unwrap_or(&v)).ok()?;
            req.matches(&parsed).then_some((parsed, (t.clone(), v)))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, x)| x))
}

/// The most pages of tags read from one repository.
pub const MAX_TAG_PAGES: usize = 100;

/// The target of a `Link` header value's `rel="next"` entry, if it has one.
/// Pure.
pub fn next_link(header: &str) -> Option<&str> {
    header.split(',').find_map(|entry| {
        let (target, params) = entry.trim().split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        params
            .split(';')
            .any(|p| {
                p.trim()
                    .split_once('=')
                    .is_some_and(|(k, v)| k.trim() == "rel" && v.trim().trim_matches('"') == "next")
            })
            .then_some(target)
    })
}

/// The URL of a next page on the registry at `base` (`scheme://host`): a
/// path (`/v2/…`), or an absolute URL on the same registry. Anything else is
/// refused (credentials never go to another host). Pure.
pub fn resolve_next(base: &str, next: &str) -> Option<String> {
    if next.starts_with("/v2/") {
        return Some(format!("{base}{next}"));
    }
    next.strip_prefix(base).filter(|rest| rest.starts_with("/v2/")).map(|_| next.to_string())
}

#[derive(Deserialize)]
struct Tags {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: u64,
}

/// A chart manifest in a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciChart {
    /// The tag it was read by (or the digest asked for).
    pub reference: String,
    /// `sha256:<hex>` of the manifest.
    pub manifest_digest: String,
    /// `sha256:<hex>` of the chart layer (the `.tgz`).
    pub chart_digest: String,
    /// The layer's size.
    pub size: u64,
}

enum Auth {
    Basic(String, String),
    Bearer(String),
}

/// A client for one chart repository in a registry.
pub struct OciClient {
    base: String,
    repository: String,
    client: reqwest::Client,
    auth: Option<Auth>,
    /// A token from the registry's challenge, reused while it works.
    token: std::sync::Mutex<Option<String>>,
    max_chart_bytes: u64,
}

impl OciClient {
    /// A client for `oci://host/path` (the chart's repository).
    pub fn new(url: &str, opts: &OciAuth) -> Result<Self> {
        let (host, repository) = parse_oci_url(url)?;
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).map_err(|e| Error::Credentials(format!("{}: {e}", p.display())))
        };
        let auth = match (&opts.basic_auth_file, &opts.bearer_token_file) {
            (Some(f), _) => {
                let text = read(f)?;
                let (u, p) = text
                    .trim()
                    .split_once(':')
                    .ok_or_else(|| Error::Credentials(format!("{}: expected user:password", f.display())))?;
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
                std::fs::read(ca).map_err(|e| Error::Credentials(format!("caFile {}: {e}", ca.display())))?;
            for c in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Error::Config(format!("caFile: not a PEM bundle of certificates: {e}")))?
            {
                b = b.add_root_certificate(c);
            }
        }
        let client = b.build().map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        let scheme = if opts.plain_http { "http" } else { "https" };
        Ok(Self {
            base: format!("{scheme}://{host}"),
            repository,
            client,
            auth,
            token: std::sync::Mutex::new(None),
            max_chart_bytes: opts.max_chart_bytes.unwrap_or(20 << 20),
        })
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/v2/{}/{tail}", self.base, self.repository)
    }

    fn shown(&self) -> String {
        redact_url(&format!("oci://{}/{}", self.base.split("://").nth(1).unwrap_or(""), self.repository))
    }

    fn request(&self, url: &str, accept: Option<&str>) -> reqwest::RequestBuilder {
        let mut req = self.client.get(url);
        if let Some(a) = accept {
            req = req.header(reqwest::header::ACCEPT, a);
        }
        let token = self.token.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match (&token, &self.auth) {
            (Some(t), _) => req.bearer_auth(t),
            (None, Some(Auth::Basic(u, p))) => req.basic_auth(u, Some(p)),
            (None, Some(Auth::Bearer(t))) => req.bearer_auth(t),
            (None, None) => req,
        }
    }

    async fn get(
        &self,
        url: &str,
        accept: Option<&str>,
        limit: u64,
    ) -> Result<(reqwest::header::HeaderMap, Vec<u8>)> {
        let fetch = |message: String| Error::Fetch { url: self.shown(), message };
        let mut resp =
            self.request(url, accept).send().await.map_err(|e| fetch(e.without_url().to_string()))?;
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED
            && let Some(challenge) =
                resp.headers().get(reqwest::header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok())
            && challenge.len() > 7
            && challenge[..7].eq_ignore_ascii_case("bearer ")
        {
            let token = self.token_for(&challenge[7..]).await?;
            *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(token);
            resp = self.request(url, accept).send().await.map_err(|e| fetch(e.without_url().to_string()))?;
        }
        match resp.status() {
            s if s.is_success() => {}
            s if s == reqwest::StatusCode::UNAUTHORIZED || s == reqwest::StatusCode::FORBIDDEN => {
                return Err(Error::Auth { url: self.shown(), message: s.to_string() });
            }
            s => return Err(fetch(format!("HTTP {s}"))),
        }
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(fetch(format!("more than {limit} bytes")));
        }
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(|e| fetch(e.without_url().to_string()))?;
        if bytes.len() as u64 > limit {
            return Err(fetch(format!("more than {limit} bytes")));
        }
        Ok((headers, bytes.to_vec()))
    }

    /// Answer a `Bearer realm=…,service=…,scope=…` challenge: ask the realm
    /// for a token, with the basic credentials if there are any.
    async fn token_for(&self, params: &str) -> Result<String> {
        let mut realm = None;
        let mut query = Vec::new();
        for part in split_params(params) {
            if let Some((k, v)) = part.split_once('=') {
                let v = v.trim().trim_matches('"').to_string();
                match k.trim() {
                    "realm" => realm = Some(v),
                    k @ ("service" | "scope") => query.push((k.to_string(), v)),
                    _ => {}
                }
            }
        }
        let realm = realm.ok_or_else(|| Error::Auth {
            url: self.shown(),
            message: "token challenge without realm".into(),
        })?;
        // Credentials go to an https realm, or to an http one only when the
        // registry itself is plain http.
        let realm_ok = realm.starts_with("https://")
            || (realm.starts_with("http://") && self.base.starts_with("http://"));
        if !realm_ok {
            return Err(Error::Auth { url: self.shown(), message: "token realm is not https".into() });
        }
        let realm_url = reqwest::Url::parse_with_params(&realm, &query)
            .map_err(|e| Error::Auth { url: self.shown(), message: format!("token realm: {e}") })?;
        let mut req = self.client.get(realm_url);
        if let Some(Auth::Basic(u, p)) = &self.auth {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Error::Auth { url: self.shown(), message: e.without_url().to_string() })?;
        if !resp.status().is_success() {
            return Err(Error::Auth { url: self.shown(), message: format!("token: {}", resp.status()) });
        }
        #[derive(Deserialize)]
        struct Token {
            #[serde(default)]
            token: String,
            #[serde(default)]
            access_token: String,
        }
        let t: Token = resp
            .json()
            .await
            .map_err(|e| Error::Auth { url: self.shown(), message: e.without_url().to_string() })?;
        Ok(if t.token.is_empty() { t.access_token } else { t.token })
    }

    /// The repository's tags, every page of them (the registry's page size).
    pub async fn tags(&self) -> Result<Vec<String>> {
        self.tags_in_pages(None).await
    }

    /// The repository's tags, asking for pages of at most `n` (`None`: the
    /// registry's default). Each page's `Link: <…>; rel="next"` is followed
    /// (OCI distribution spec, "Listing Tags"), on this registry only, for at
    /// most [`MAX_TAG_PAGES`] pages.
    pub async fn tags_in_pages(&self, n: Option<u32>) -> Result<Vec<String>> {
        let mut url = match n {
            Some(n) => self.url(&format!("tags/list?n={n}")),
            None => self.url("tags/list"),
        };
        let mut all = Vec::new();
        for _ in 0..MAX_TAG_PAGES {
            let (headers, body) = self.get(&url, None, 8 << 20).await?;
            let t: Tags = serde_json::from_slice(&body)
                .map_err(|e| Error::Fetch { url: self.shown(), message: format!("tags list: {e}") })?;
            all.extend(t.tags.unwrap_or_default());
            let link = headers
                .get_all(reqwest::header::LINK)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(next_link);
            match link {
                None => return Ok(all),
                Some(next) => {
                    url = resolve_next(&self.base, next).ok_or_else(|| Error::Fetch {
                        url: self.shown(),
                        message: format!("tags list: next page {next:?} is not on this registry"),
                    })?
                }
            }
        }
        Err(Error::Fetch {
            url: self.shown(),
            message: format!("tags list: more than {MAX_TAG_PAGES} pages"),
        })
    }

    /// The tag `constraint` picks ([`pick_tag`] over every tag), with the
    /// version it stands for; `RefNotFound` naming the constraint if none.
    pub async fn resolve(&self, constraint: &str) -> Result<(String, String)> {
        let tags = self.tags().await?;
        pick_tag(&tags, constraint)?.ok_or_else(|| Error::RefNotFound {
            url: self.shown(),
            reference: format!("version {:?}", if constraint.is_empty() { "*" } else { constraint }),
        })
    }

    /// The chart manifest at a tag or digest: its digest and the chart layer.
    pub async fn manifest(&self, reference: &str) -> Result<OciChart> {
        let (headers, body) =
            self.get(&self.url(&format!("manifests/{reference}")), Some(MANIFEST_ACCEPT), 4 << 20).await?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        if let Some(h) = headers.get("docker-content-digest").and_then(|v| v.to_str().ok())
            && h.starts_with("sha256:")
            && h != digest
        {
            return Err(Error::DigestMismatch { url: self.shown(), expected: h.to_string(), actual: digest });
        }
        if reference.starts_with("sha256:") && reference != digest {
            return Err(Error::DigestMismatch {
                url: self.shown(),
                expected: reference.to_string(),
                actual: digest,
            });
        }
        let m: Manifest = serde_json::from_slice(&body)
            .map_err(|e| Error::Fetch { url: self.shown(), message: format!("manifest: {e}") })?;
        let layer = m.layers.into_iter().find(|l| l.media_type == CHART_LAYER).ok_or_else(|| {
            Error::Config(format!(
                "{} {reference}: the manifest has no Helm chart layer ({CHART_LAYER})",
                self.shown()
            ))
        })?;
        if !layer.digest.starts_with("sha256:") {
            return Err(Error::Config(format!(
                "{} {reference}: chart layer digest {} is not sha256",
                self.shown(),
                layer.digest
            )));
        }
        Ok(OciChart {
            reference: reference.to_string(),
            manifest_digest: digest,
            chart_digest: layer.digest,
            size: layer.size,
        })
    }

    /// Download the chart layer and check it against its digest.
    pub async fn chart(&self, chart: &OciChart) -> Result<Vec<u8>> {
        if chart.size > self.max_chart_bytes {
            return Err(Error::Helm(convoy_helm::Error::ChartTooLarge {
                chart: format!("{}@{}", self.shown(), chart.reference),
                size: chart.size,
                limit: self.max_chart_bytes,
            }));
        }
        let (_, bytes) =
            self.get(&self.url(&format!("blobs/{}", chart.chart_digest)), None, self.max_chart_bytes).await?;
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if actual != chart.chart_digest {
            return Err(Error::DigestMismatch {
                url: self.shown(),
                expected: chart.chart_digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }
}

/// Split `a="x,y",b=z` on the commas outside quotes.
fn split_params(s: &str) -> Vec<&str> {
    let (mut out, mut start, mut quoted) = (Vec::new(), 0, false);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_urls() {
        assert_eq!(
            parse_oci_url("oci://ghcr.io/stefanprodan/charts/podinfo").unwrap(),
            ("ghcr.io".into(), "stefanprodan/charts/podinfo".into())
        );
        assert_eq!(
            parse_oci_url("oci://127.0.0.1:5000/charts/").unwrap(),
            ("127.0.0.1:5000".into(), "charts".into())
        );
        for bad in ["https://x/y", "oci://x", "oci:///y", "oci://x//y", "oci://x/../y", "oci://u:p@x/y"] {
            assert!(parse_oci_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn next_page_links() {
        let h = r#"</v2/charts/podinfo/tags/list?last=6.14.1&n=1>; rel="next""#;
        assert_eq!(next_link(h), Some("/v2/charts/podinfo/tags/list?last=6.14.1&n=1"));
        assert_eq!(
            next_link(r#"<https://r.example/v2/a/tags/list?n=2>; rel=next"#),
            Some("https://r.example/v2/a/tags/list?n=2")
        );
        assert_eq!(next_link(r#"</x>; rel="prev", </y>; rel="next""#), Some("/y"));
        for none in ["", r#"</x>; rel="prev""#, "/x; rel=next", r#"<x> rel="next""#] {
            assert_eq!(next_link(none), None, "{none}");
        }
        let base = "http://127.0.0.1:5000";
        assert_eq!(
            resolve_next(base, "/v2/a/tags/list?n=1").as_deref(),
            Some("http://127.0.0.1:5000/v2/a/tags/list?n=1")
        );
        assert_eq!(
            resolve_next(base, "http://127.0.0.1:5000/v2/a").as_deref(),
            Some("http://127.0.0.1:5000/v2/a")
        );
        for elsewhere in
            ["http://127.0.0.1:50001/v2/a", "https://evil.example/v2/a", "//evil.example/v2/a", "v2/a"]
        {
            assert_eq!(resolve_next(base, elsewhere), None, "{elsewhere}");
        }
    }

    #[test]
    fn tags_exact_range_and_build_metadata() {
        let tags: Vec<String> =
            ["6.14.1", "6.15.0", "7.0.0-rc.1", "6.15.0_build.1", "latest"].map(String::from).to_vec();
        let t = |c: &str| pick_tag(&tags, c).unwrap().map(|(t, _)| t);
        assert_eq!(t("6.14.1").as_deref(), Some("6.14.1"));
        assert_eq!(t("6.15.0+build.1").as_deref(), Some("6.15.0_build.1"), "+ is stored as _");
        assert_eq!(t(">=6.0.0 <7.0.0").as_deref().map(|s| s.starts_with("6.15.0")), Some(true));
        assert_eq!(
            t("").as_deref().map(|s| s.starts_with("6.15.0")),
            Some(true),
            "no pre-release without asking"
        );
        assert_eq!(t(">=7.0.0-rc.0").as_deref(), Some("7.0.0-rc.1"));
        assert_eq!(t("latest").as_deref(), Some("latest"), "an exact tag need not be a version");
        assert_eq!(t(">=8"), None);
        assert!(pick_tag(&tags, "not a range").is_err());
    }

    #[test]
    fn challenge_params_split_outside_quotes() {
        assert_eq!(
            split_params(r#"realm="https://r/token",service="reg",scope="repository:a/b:pull,push""#),
            [r#"realm="https://r/token""#, r#"service="reg""#, r#"scope="repository:a/b:pull,push""#]
        );
    }
}
