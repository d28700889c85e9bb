//! Chart repositories as fleet sources: the `kind: HelmRepository` document
//! (an HTTP(S) repository serving `index.yaml`), the `kind: OCIRepository`
//! document (charts in an OCI registry) and their validation. Pure: the
//! hub's source pipeline (convoy-sources `chartsrc`) does the fetching.

use serde::{Deserialize, Serialize};

use crate::config::{WEBHOOK_TYPES, WebhookSpec};
use crate::duration::HumanDuration;

/// `kind: HelmRepository`: an HTTP(S) chart repository (`<url>/index.yaml`)
/// the hub reads once for the whole fleet. Bundles name it in
/// `spec.helm.repository`, with `chart` and `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HelmRepositorySpec {
    /// `https://` (or `http://`) URL of the directory holding `index.yaml`.
    pub url: String,
    /// How often to read the index. Default 10m.
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// Timeout of one index read or chart download. Default 60s.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Stop polling.
    #[serde(default)]
    pub suspend: bool,
    /// A file holding `user:password` for HTTP basic auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth_file: Option<String>,
    /// A file holding an HTTP bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<String>,
    /// A PEM file of CA certificates to trust, in addition to the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Accept webhooks at `POST /hooks/<name>` (as for a GitSource); a valid
    /// one reads the index at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSpec>,
}

/// `kind: OCIRepository`: Helm charts in an OCI registry
/// (`oci://host[:port]/path`), read once for the whole fleet. Bundles name
/// it in `spec.helm.ociRepository`; `helm.chart` (if set) is appended to the
/// path, and `helm.version` (a tag or semver range) or `helm.digest` (a
/// manifest digest) picks the chart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OciRepositorySpec {
    /// `oci://host[:port]/path`.
    pub url: String,
    /// How often to resolve the tags. Default 10m.
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// Timeout of one registry request or chart download. Default 60s.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Stop polling.
    #[serde(default)]
    pub suspend: bool,
    /// A file holding `user:password` (sent as basic auth, or to the
    /// registry's token service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth_file: Option<String>,
    /// A file holding a bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<String>,
    /// A PEM file of CA certificates to trust, in addition to the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Talk plain http to the registry (no TLS). Credentials are then only
    /// accepted for a loopback registry.
    #[serde(default)]
    pub insecure: bool,
    /// Accept webhooks at `POST /hooks/<name>`; a valid one resolves at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSpec>,
}

impl OciRepositorySpec {
    /// Check the spec; the message names the field.
    pub fn check(&self) -> std::result::Result<(), String> {
        let rest = self.url.strip_prefix("oci://").unwrap_or_default();
        let ok = rest
            .split_once('/')
            .is_some_and(|(h, p)| !h.is_empty() && !h.contains('@') && !p.trim_end_matches('/').is_empty());
        if !ok || self.url.contains(char::is_whitespace) {
            return Err("spec.url must be oci://host[:port]/path".into());
        }
        if self.basic_auth_file.is_some() && self.bearer_token_file.is_some() {
            return Err("spec: set only one of basicAuthFile, bearerTokenFile".into());
        }
        let has_credentials = self.basic_auth_file.is_some() || self.bearer_token_file.is_some();
        if has_credentials && self.insecure && !is_loopback_host(rest) {
            return Err("spec.insecure: credentials are sent over https only (plain http is accepted \
                        for a loopback registry)"
                .into());
        }
        if self.interval.get().is_zero() {
            return Err("spec.interval must be more than 0".into());
        }
        if self.timeout.get().is_zero() {
            return Err("spec.timeout must be more than 0".into());
        }
        if let Some(t) = self.webhook.as_ref().and_then(|w| w.type_.as_ref())
            && !WEBHOOK_TYPES.contains(&t.as_str())
        {
            return Err(format!(
                "spec.webhook.type must be one of {}, found {t:?}",
                WEBHOOK_TYPES.join(", ")
            ));
        }
        Ok(())
    }
}

/// Whether `d` is `sha256:<64 lowercase hex>`.
pub fn is_sha256_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)))
}

fn default_interval() -> HumanDuration {
    HumanDuration::from_secs(600)
}

fn default_timeout() -> HumanDuration {
    HumanDuration::from_secs(60)
}

impl HelmRepositorySpec {
    /// Check the spec; the message names the field.
    pub fn check(&self) -> std::result::Result<(), String> {
        let rest = self.url.strip_prefix("https://").or_else(|| self.url.strip_prefix("http://"));
        let Some(rest) = rest.filter(|r| !r.is_empty() && !r.starts_with('/')) else {
            return Err("spec.url must be an http:// or https:// URL".into());
        };
        if self.url.contains(char::is_whitespace) {
            return Err("spec.url must not contain whitespace".into());
        }
        if self.basic_auth_file.is_some() && self.bearer_token_file.is_some() {
            return Err("spec: set only one of basicAuthFile, bearerTokenFile".into());
        }
        let has_credentials = self.basic_auth_file.is_some() || self.bearer_token_file.is_some();
        if has_credentials && self.url.starts_with("http://") && !is_loopback_host(rest) {
            return Err("spec.url: credentials are sent over https only (plain http is accepted \
                        for a loopback address)"
                .into());
        }
        if self.interval.get().is_zero() {
            return Err("spec.interval must be more than 0".into());
        }
        if self.timeout.get().is_zero() {
            return Err("spec.timeout must be more than 0".into());
        }
        if let Some(t) = self.webhook.as_ref().and_then(|w| w.type_.as_ref())
            && !WEBHOOK_TYPES.contains(&t.as_str())
        {
            return Err(format!(
                "spec.webhook.type must be one of {}, found {t:?}",
                WEBHOOK_TYPES.join(", ")
            ));
        }
        Ok(())
    }
}

/// Whether the authority part of a URL (after the scheme) is a loopback IP
/// literal or `localhost`.
fn is_loopback_host(rest: &str) -> bool {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Parse a chart version range. Helm's (Masterminds) space-separated form
/// (`>=6.0.0 <7.0.0`, `>= 6.0`) is accepted besides the comma-separated one
/// (`>=6.0.0, <7.0.0`); `||` (alternatives) is refused with a message.
pub fn parse_version_range(range: &str) -> std::result::Result<semver::VersionReq, String> {
    if range.contains("||") {
        return Err(format!("{range:?}: alternatives (||) are not supported; use one range"));
    }
    let text = if range.contains(',') {
        range.to_string()
    } else {
        let mut parts: Vec<String> = Vec::new();
        let mut pending_op = String::new();
        for tok in range.split_whitespace() {
            if tok.chars().all(|c| "<>=~^".contains(c)) {
                pending_op.push_str(tok);
            } else {
                parts.push(format!("{}{tok}", std::mem::take(&mut pending_op)));
            }
        }
        if !pending_op.is_empty() {
            parts.push(pending_op);
        }
        parts.join(", ")
    };
    semver::VersionReq::parse(&text).map_err(|e| format!("{range:?}: {e}"))
}

/// A chart name as it appears in an index: one path segment.
pub fn check_chart_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
        return Err(format!("chart name {name:?} must be one non-empty path segment"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str) -> HelmRepositorySpec {
        HelmRepositorySpec {
            url: url.into(),
            interval: default_interval(),
            timeout: default_timeout(),
            suspend: false,
            basic_auth_file: None,
            bearer_token_file: None,
            ca_file: None,
            webhook: None,
        }
    }

    #[test]
    fn urls_credentials_and_loopback() {
        assert!(spec("https://charts.example.com/stable").check().is_ok());
        assert!(spec("http://charts.example.com").check().is_ok(), "no credentials: http is allowed");
        for bad in ["oci://x/y", "ftp://x", "https://", "https:///x", "charts.example.com"] {
            assert!(spec(bad).check().unwrap_err().contains("spec.url"), "{bad}");
        }
        let mut s = spec("http://charts.example.com");
        s.basic_auth_file = Some("/etc/convoy/repo-auth".into());
        assert!(s.check().unwrap_err().contains("https only"));
        for ok in ["http://127.0.0.1:8080/charts", "http://localhost/x", "http://[::1]:9/", "https://x"] {
            s.url = ok.into();
            assert!(s.check().is_ok(), "{ok}");
        }
        s.bearer_token_file = Some("/t".into());
        assert!(s.check().unwrap_err().contains("only one of"));
        let mut s = spec("https://x");
        s.interval = HumanDuration::from_secs(0);
        assert!(s.check().unwrap_err().contains("interval"));
        let mut s = spec("https://x");
        s.webhook = Some(WebhookSpec { secret_file: "/s".into(), type_: Some("bitbucket".into()) });
        assert!(s.check().unwrap_err().contains("webhook.type"));
    }

    #[test]
    fn oci_repositories() {
        let mut s = OciRepositorySpec {
            url: "oci://ghcr.io/stefanprodan/charts".into(),
            interval: default_interval(),
            timeout: default_timeout(),
            suspend: false,
            basic_auth_file: None,
            bearer_token_file: None,
            ca_file: None,
            insecure: false,
            webhook: None,
        };
        assert!(s.check().is_ok());
        for bad in ["https://x/y", "oci://x", "oci:///y", "oci://u:p@x/y"] {
            s.url = bad.into();
            assert!(s.check().unwrap_err().contains("spec.url"), "{bad}");
        }
        s.url = "oci://registry.example.com/charts".into();
        s.insecure = true;
        s.basic_auth_file = Some("/a".into());
        assert!(s.check().unwrap_err().contains("https only"));
        s.url = "oci://127.0.0.1:5000/charts".into();
        assert!(s.check().is_ok());
        assert!(is_sha256_digest(&format!("sha256:{}", "ab".repeat(32))));
        assert!(!is_sha256_digest("sha256:AB") && !is_sha256_digest("6.14.1"));
    }

    #[test]
    fn helm_style_ranges_parse() {
        let v = |s: &str| semver::Version::parse(s).unwrap();
        let r = parse_version_range(">=6.0.0 <7.0.0").unwrap();
        assert!(r.matches(&v("6.15.0")) && !r.matches(&v("7.0.0")));
        assert_eq!(parse_version_range(">= 6.0, < 7").unwrap(), parse_version_range(">=6.0 <7").unwrap());
        assert!(parse_version_range("^6").unwrap().matches(&v("6.1.0")));
        assert!(parse_version_range("1.x || 2.x").unwrap_err().contains("||"));
        assert!(parse_version_range("six").is_err());
    }

    #[test]
    fn chart_names_are_one_segment() {
        assert!(check_chart_name("podinfo").is_ok());
        for bad in ["", "a/b", "..", "."] {
            assert!(check_chart_name(bad).is_err(), "{bad}");
        }
    }
}
