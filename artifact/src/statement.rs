//! The signed statement: a small canonical JSON document that binds a bundle
//! name, its source, the artifact digest and size, and a generation.
//!
//! Canonical form: compact JSON (no whitespace, no trailing newline), keys in
//! this order: `apiVersion`, `kind`, `bundle`, `source` (`url`, `revision`),
//! `artifact` (`digest`, `size`), `generation`, `helm` only for a Helm bundle
//! (`chart`, `version`, `chartDigest`, `valuesDigest`), `keyId` only when set,
//! and `variant` (the variant key) only for a per-cluster variant:
//!
//! ```json
//! {"apiVersion":"convoy.dev/v1","kind":"Statement","bundle":"app","source":{"url":"https://git.example/fleet.git","revision":"main@sha1:0123456789abcdef0123456789abcdef01234567"},"artifact":{"digest":"sha256:<64 hex>","size":1234},"generation":7,"keyId":"sha256:<64 hex>"}
//! ```
//!
//! Verifiers check the signature over the exact bytes they received and then
//! parse them; they never re-serialize.

use serde::{Deserialize, Serialize};

use crate::pack::is_valid_digest;
use crate::{Error, Result};

/// `apiVersion` of a statement.
pub const STATEMENT_API_VERSION: &str = "convoy.dev/v1";
/// `kind` of a statement.
pub const STATEMENT_KIND: &str = "Statement";
/// Statements larger than this are refused before parsing.
pub const MAX_STATEMENT_BYTES: usize = 64 * 1024;

/// A statement about one artifact of one bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Statement {
    /// Always [`STATEMENT_API_VERSION`].
    pub api_version: String,
    /// Always [`STATEMENT_KIND`].
    pub kind: String,
    /// The bundle name.
    pub bundle: String,
    /// Where the artifact was built from.
    pub source: StatementSource,
    /// The artifact.
    pub artifact: StatementArtifact,
    /// Per-bundle, monotonically increasing; lets agents refuse rollback and replay.
    pub generation: u64,
    /// For a Helm bundle: the chart, its version and the digests of the chart
    /// and of the values it was rendered with. Absent (not serialized) otherwise,
    /// so non-Helm statements keep their bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helm: Option<StatementHelm>,
    /// Which key signed it ([`crate::PublicKey::key_id`]), a hint for rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// For a per-cluster variant of the bundle: the variant key (the digest of
    /// the variant's effective input). Absent (not serialized) for the bundle's
    /// base artifact, so base statements keep their bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// The source part of a statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatementSource {
    /// The repository URL, without credentials.
    pub url: String,
    /// `<ref>@sha1:<commit>`, or what the builder was given.
    pub revision: String,
}

/// The artifact part of a statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatementArtifact {
    /// `sha256:<hex>` of the .tar.gz bytes.
    pub digest: String,
    /// The .tar.gz size in bytes.
    pub size: u64,
}

/// The Helm part of a statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatementHelm {
    /// The chart name.
    pub chart: String,
    /// The chart version.
    pub version: String,
    /// `sha256:<hex>` of the chart (archive bytes, or the canonical listing of a chart directory).
    pub chart_digest: String,
    /// `sha256:<hex>` of the canonical JSON of the merged user values.
    pub values_digest: String,
}

impl From<&convoy_core::pipeline::BuiltHelm> for StatementHelm {
    fn from(h: &convoy_core::pipeline::BuiltHelm) -> Self {
        Self {
            chart: h.chart.clone(),
            version: h.version.clone(),
            chart_digest: h.chart_digest.clone(),
            values_digest: h.values_digest.clone(),
        }
    }
}

impl Statement {
    /// A statement with `keyId` unset.
    pub fn new(
        bundle: impl Into<String>,
        url: impl Into<String>,
        revision: impl Into<String>,
        digest: impl Into<String>,
        size: u64,
        generation: u64,
    ) -> Self {
        Self {
            api_version: STATEMENT_API_VERSION.into(),
            kind: STATEMENT_KIND.into(),
            bundle: bundle.into(),
            source: StatementSource { url: url.into(), revision: revision.into() },
            artifact: StatementArtifact { digest: digest.into(), size },
            generation,
            helm: None,
            key_id: None,
            variant: None,
        }
    }

    /// Set the variant key.
    pub fn with_variant(mut self, key: impl Into<String>) -> Self {
        self.variant = Some(key.into());
        self
    }

    /// Set the Helm part.
    pub fn with_helm(mut self, helm: StatementHelm) -> Self {
        self.helm = Some(helm);
        self
    }

    /// Set `keyId`.
    pub fn with_key_id(mut self, key_id: impl Into<String>) -> Self {
        self.key_id = Some(key_id.into());
        self
    }

    /// The canonical bytes (what gets signed).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a statement always serializes")
    }

    /// Parse and validate statement bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_STATEMENT_BYTES {
            return Err(Error::Statement(format!(
                "{} bytes is more than the {MAX_STATEMENT_BYTES} allowed",
                bytes.len()
            )));
        }
        let s: Statement = serde_json::from_slice(bytes).map_err(|e| Error::Statement(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// Check the fixed fields and the digest syntax.
    pub fn validate(&self) -> Result<()> {
        if self.api_version != STATEMENT_API_VERSION || self.kind != STATEMENT_KIND {
            return Err(Error::Statement(format!(
                "expected apiVersion {STATEMENT_API_VERSION:?} and kind {STATEMENT_KIND:?}, found {:?} and {:?}",
                self.api_version, self.kind
            )));
        }
        if self.bundle.is_empty() {
            return Err(Error::Statement("bundle is empty".into()));
        }
        if !is_valid_digest(&self.artifact.digest) {
            return Err(Error::Statement(format!(
                "artifact.digest {:?} is not sha256:<64 lowercase hex>",
                self.artifact.digest
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_bytes_are_stable_and_round_trip() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let s = Statement::new("app", "https://git.example/fleet.git", "main@sha1:0123", &d, 1234, 7);
        let bytes = s.to_bytes();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            format!(
                r#"{{"apiVersion":"convoy.dev/v1","kind":"Statement","bundle":"app","source":{{"url":"https://git.example/fleet.git","revision":"main@sha1:0123"}},"artifact":{{"digest":"{d}","size":1234}},"generation":7}}"#
            )
        );
        assert_eq!(Statement::parse(&bytes).unwrap(), s);
        let h = s.clone().with_helm(StatementHelm {
            chart: "podinfo".into(),
            version: "6.14.1".into(),
            chart_digest: d.clone(),
            values_digest: d.clone(),
        });
        assert!(String::from_utf8(h.to_bytes()).unwrap().ends_with(&format!(
            r#","generation":7,"helm":{{"chart":"podinfo","version":"6.14.1","chartDigest":"{d}","valuesDigest":"{d}"}}}}"#
        )));
        assert_eq!(Statement::parse(&h.to_bytes()).unwrap(), h);
        let k = s.clone().with_key_id("sha256:k");
        assert!(String::from_utf8(k.to_bytes()).unwrap().ends_with(r#","generation":7,"keyId":"sha256:k"}"#));
        assert_eq!(Statement::parse(&k.to_bytes()).unwrap(), k);
        let v = s.clone().with_variant("sha256:v");
        assert!(
            String::from_utf8(v.to_bytes()).unwrap().ends_with(r#","generation":7,"variant":"sha256:v"}"#)
        );
        assert_eq!(Statement::parse(&v.to_bytes()).unwrap(), v);
    }

    #[test]
    fn invalid_statements_are_refused() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let good = String::from_utf8(Statement::new("app", "u", "r", &d, 1, 1).to_bytes()).unwrap();
        for bad in [
            good.replace("Statement", "Other"),
            good.replace(&d, "sha256:xyz"),
            good.replace(r#""generation":1"#, r#""generation":1,"extra":true"#),
            good.replace(r#""bundle":"app""#, r#""bundle":"""#),
            "not json".into(),
        ] {
            assert!(Statement::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
