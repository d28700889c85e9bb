//! Helm releases as data: the `convoy.dev/v1 HelmRelease` record a Helm
//! bundle's artifact carries (chart metadata and defaults, the user values,
//! notes, the release manifest, digests), Helm's own release JSON and its
//! storage Secret (`sh.helm.release.v1.<name>.v<N>`, type
//! `helm.sh/release.v1`, `release` = base64(gzip(JSON)) as Helm encodes it),
//! and the pure history decision (next revision, what to supersede, what
//! `maxHistory` drops). No I/O: the agent runs the effects.

use std::io::{Read, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use convoy_core::config::CrdPolicy;

use crate::{Error, Result};

/// `apiVersion` of the release record in an artifact.
pub const RECORD_API_VERSION: &str = "convoy.dev/v1";
/// `kind` of the release record in an artifact (never applied to a cluster).
pub const RECORD_KIND: &str = "HelmRelease";
/// Helm's release Secret type.
pub const SECRET_TYPE: &str = "helm.sh/release.v1";
/// Helm's default and Convoy's default number of kept revisions.
pub const DEFAULT_MAX_HISTORY: u32 = 10;

/// What the agent needs to write Helm's release record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseSpec {
    /// The release name.
    pub name: String,
    /// The release namespace (where the Secret goes, and the default namespace of its objects).
    pub namespace: String,
    /// `Chart.yaml` as JSON.
    pub chart_metadata: Value,
    /// The chart's default values.
    pub chart_values: Value,
    /// The user-supplied (merged) values: what `helm get values` shows.
    pub config: Value,
    /// The rendered NOTES.txt.
    #[serde(default)]
    pub notes: String,
    /// The release manifest (non-hook objects) as Helm stores it.
    #[serde(default)]
    pub manifest: String,
    /// `sha256:` of the chart.
    pub chart_digest: String,
    /// `sha256:` of the values.
    pub values_digest: String,
    /// Revisions kept (older records are deleted). 0 means the default.
    #[serde(default)]
    pub max_history: u32,
    /// How the agent applies the chart's `crds/` (`helm/crds/` in the
    /// artifact). Written only when it is not the default `CreateReplace`, so
    /// records of default bundles keep their bytes.
    #[serde(default, skip_serializing_if = "CrdPolicy::is_default")]
    pub crds: CrdPolicy,
}

impl ReleaseSpec {
    /// The record as a `convoy.dev/v1 HelmRelease` object for the artifact.
    pub fn to_object(&self) -> Value {
        json!({
            "apiVersion": RECORD_API_VERSION,
            "kind": RECORD_KIND,
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": self,
        })
    }

    /// Whether an object is a release record.
    pub fn is_record(object: &Value) -> bool {
        object.get("apiVersion").and_then(Value::as_str) == Some(RECORD_API_VERSION)
            && object.get("kind").and_then(Value::as_str) == Some(RECORD_KIND)
    }

    /// Read a record object back.
    pub fn from_object(object: &Value) -> Result<Self> {
        let spec = object.get("spec").cloned().unwrap_or(Value::Null);
        serde_json::from_value(spec).map_err(|e| Error::Values(format!("HelmRelease record: {e}")))
    }

    /// `maxHistory` with the default applied.
    pub fn history_limit(&self) -> u32 {
        if self.max_history == 0 { DEFAULT_MAX_HISTORY } else { self.max_history }
    }
}

/// A release status as Helm spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// The current release.
    Deployed,
    /// An earlier release.
    Superseded,
    /// A failed install or upgrade.
    Failed,
    /// An install in progress.
    PendingInstall,
    /// An upgrade in progress.
    PendingUpgrade,
}

impl Status {
    /// Helm's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Deployed => "deployed",
            Status::Superseded => "superseded",
            Status::Failed => "failed",
            Status::PendingInstall => "pending-install",
            Status::PendingUpgrade => "pending-upgrade",
        }
    }
}

/// Helm's secret name for a revision.
pub fn secret_name(release: &str, version: u64) -> String {
    format!("sh.helm.release.v1.{release}.v{version}")
}

/// A hook as Helm's release JSON lists it (`release/v1` `Hook`): what
/// `helm status`/`helm test` read. `last_run` is Helm's `HookExecution`
/// (`started_at`, `completed_at`, `phase`: `Unknown`, `Running`,
/// `Succeeded`, `Failed`); empty strings for a hook that never ran.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HookRecord {
    /// `metadata.name`.
    pub name: String,
    /// `kind`.
    pub kind: String,
    /// The template path (`podinfo/templates/tests/grpc.yaml`).
    pub path: String,
    /// The object as YAML.
    pub manifest: String,
    /// The events (`test`, `pre-install`, ...).
    pub events: Vec<String>,
    /// `helm.sh/hook-weight`.
    pub weight: i64,
    /// `helm.sh/hook-delete-policy`.
    pub delete_policies: Vec<String>,
    /// The last run: started, completed (RFC 3339), phase.
    pub last_run: Option<(String, String, String)>,
}

impl HookRecord {
    /// Helm's JSON of the hook.
    pub fn to_json(&self) -> Value {
        let (started, completed, phase) = self.last_run.clone().unwrap_or_default();
        let mut v = json!({
            "name": self.name,
            "kind": self.kind,
            "path": self.path,
            "manifest": self.manifest,
            "events": self.events,
            "last_run": {"started_at": started, "completed_at": completed, "phase": phase},
        });
        // Go's `omitempty`.
        if self.weight != 0 {
            v["weight"] = self.weight.into();
        }
        if !self.delete_policies.is_empty() {
            v["delete_policies"] = json!(self.delete_policies);
        }
        v
    }
}

/// Helm's release JSON (package `release/v1`). `hooks` are listed as Helm
/// lists them (omitted when there are none, as Go's `omitempty` does).
pub fn release_json(
    spec: &ReleaseSpec,
    version: u64,
    status: Status,
    first: &str,
    last: &str,
    description: &str,
    hooks: &[HookRecord],
) -> Value {
    let mut v = json!({
        "name": spec.name,
        "info": {
            "first_deployed": first,
            "last_deployed": last,
            "deleted": "",
            "description": description,
            "status": status.as_str(),
            "notes": spec.notes,
        },
        "chart": {
            "metadata": spec.chart_metadata,
            "lock": null,
            "templates": [],
            "values": spec.chart_values,
            "schema": null,
            "files": [],
        },
        "config": spec.config,
        "manifest": spec.manifest,
        "version": version,
        "namespace": spec.namespace,
    });
    if !hooks.is_empty() {
        v["hooks"] = hooks.iter().map(HookRecord::to_json).collect();
    }
    v
}

/// base64(gzip(JSON)), as Helm's storage driver encodes a release.
pub fn encode_release(release: &Value) -> String {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(release.to_string().as_bytes()).expect("writing to memory");
    STANDARD.encode(gz.finish().expect("writing to memory"))
}

/// The inverse of [`encode_release`] (also accepts plain, ungzipped JSON as Helm does).
pub fn decode_release(encoded: &str) -> Result<Value> {
    let bytes = STANDARD.decode(encoded.trim()).map_err(|e| Error::Values(format!("release record: {e}")))?;
    let json = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::Values(format!("release record: {e}")))?;
        out
    } else {
        bytes
    };
    serde_json::from_slice(&json).map_err(|e| Error::Values(format!("release record: {e}")))
}

/// The Secret Helm stores a revision in.
pub fn release_secret(spec: &ReleaseSpec, version: u64, release: &Value, status: Status) -> Value {
    let encoded = encode_release(release);
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret_name(&spec.name, version),
            "namespace": spec.namespace,
            "labels": {
                "name": spec.name,
                "owner": "helm",
                "status": status.as_str(),
                "version": version.to_string(),
            },
        },
        "type": SECRET_TYPE,
        // The API's `data` is base64 of the stored bytes, which are themselves base64 text.
        "data": {"release": STANDARD.encode(encoded.as_bytes())},
    })
}

/// An existing revision: its number and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revision {
    /// The revision number.
    pub version: u64,
    /// Its status.
    pub status: Status,
}

/// What to do with the history when writing a new revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPlan {
    /// The new revision number.
    pub version: u64,
    /// Whether this is an upgrade (a revision existed) or an install.
    pub is_upgrade: bool,
    /// Revisions now `deployed` that become `superseded`.
    pub supersede: Vec<u64>,
    /// Revisions to delete so that at most `max_history` remain, oldest first.
    pub delete: Vec<u64>,
    /// When the release was first deployed: keep the first revision's time.
    pub keeps_first_deployed_of: Option<u64>,
}

/// Decide the next revision from the existing ones. Pure.
pub fn plan_history(existing: &[Revision], max_history: u32) -> HistoryPlan {
    let mut versions: Vec<u64> = existing.iter().map(|r| r.version).collect();
    versions.sort_unstable();
    let version = versions.last().map_or(1, |v| v + 1);
    let supersede =
        existing.iter().filter(|r| r.status == Status::Deployed).map(|r| r.version).collect::<Vec<_>>();
    // After writing, versions.len() + 1 records exist; keep max_history of them.
    let keep = max_history.max(1) as usize;
    let total = versions.len() + 1;
    let delete = if total > keep { versions[..total - keep].to_vec() } else { vec![] };
    HistoryPlan {
        version,
        is_upgrade: !versions.is_empty(),
        supersede,
        delete,
        keeps_first_deployed_of: versions.first().copied(),
    }
}

/// RFC 3339 time as Helm's JSON carries it.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ReleaseSpec {
        ReleaseSpec {
            name: "web".into(),
            namespace: "apps".into(),
            chart_metadata: json!({"name": "podinfo", "version": "6.14.1", "apiVersion": "v2"}),
            chart_values: json!({"replicaCount": 1}),
            config: json!({"replicaCount": 2}),
            notes: "hi".into(),
            manifest: "---\n# Source: x\n".into(),
            chart_digest: "sha256:a".into(),
            values_digest: "sha256:b".into(),
            max_history: 0,
            crds: CrdPolicy::CreateReplace,
        }
    }

    #[test]
    fn the_record_round_trips_through_an_object() {
        let o = spec().to_object();
        assert!(ReleaseSpec::is_record(&o));
        assert_eq!(ReleaseSpec::from_object(&o).unwrap(), spec());
        // The default CRD policy is not written (records keep their bytes);
        // any other is, and reads back.
        assert!(o["spec"].get("crds").is_none(), "{o}");
        for policy in [CrdPolicy::Create, CrdPolicy::Skip] {
            let s = ReleaseSpec { crds: policy, ..spec() };
            let o = s.to_object();
            assert_eq!(o["spec"]["crds"], serde_json::to_value(policy).unwrap());
            assert_eq!(ReleaseSpec::from_object(&o).unwrap(), s);
        }
        assert_eq!(spec().history_limit(), 10);
        assert!(!ReleaseSpec::is_record(&json!({"apiVersion": "v1", "kind": "HelmRelease"})));
    }

    #[test]
    fn the_secret_is_helms_encoding() {
        let r = release_json(
            &spec(),
            3,
            Status::Deployed,
            "2026-01-01T00:00:00Z",
            "2026-01-02T00:00:00Z",
            "Upgrade complete",
            &[],
        );
        assert!(r.get("hooks").is_none(), "no hooks: omitted as Go's omitempty does");
        let s = release_secret(&spec(), 3, &r, Status::Deployed);
        assert_eq!(s["metadata"]["name"], "sh.helm.release.v1.web.v3");
        assert_eq!(s["type"], "helm.sh/release.v1");
        assert_eq!(
            s["metadata"]["labels"],
            json!({"name": "web", "owner": "helm", "status": "deployed", "version": "3"})
        );
        let stored = STANDARD.decode(s["data"]["release"].as_str().unwrap()).unwrap();
        let decoded = decode_release(std::str::from_utf8(&stored).unwrap()).unwrap();
        assert_eq!(decoded, r);
        assert_eq!(decoded["info"]["status"], "deployed");
        assert_eq!(decoded["config"], json!({"replicaCount": 2}));
        // The stored text is gzip, as Helm writes it.
        assert_eq!(&STANDARD.decode(&stored).unwrap()[..2], &[0x1f, 0x8b]);
    }

    #[test]
    fn hooks_are_listed_in_helms_shape() {
        let t = HookRecord {
            name: "web-test".into(),
            kind: "Pod".into(),
            path: "c/templates/tests/t.yaml".into(),
            manifest: "kind: Pod\n".into(),
            events: vec!["test".into()],
            weight: 0,
            delete_policies: vec!["before-hook-creation".into()],
            last_run: None,
        };
        let ran = HookRecord {
            weight: -1,
            last_run: Some(("2026-01-01T00:00:00Z".into(), "2026-01-01T00:00:05Z".into(), "Failed".into())),
            ..t.clone()
        };
        let r = release_json(&spec(), 1, Status::Deployed, "a", "b", "Install complete", &[t, ran]);
        let h = r["hooks"].as_array().unwrap();
        assert_eq!(
            h[0],
            json!({"name": "web-test", "kind": "Pod", "path": "c/templates/tests/t.yaml", "manifest": "kind: Pod\n",
                "events": ["test"], "last_run": {"started_at": "", "completed_at": "", "phase": ""},
                "delete_policies": ["before-hook-creation"]})
        );
        assert_eq!(h[1]["weight"], -1);
        assert_eq!(h[1]["last_run"]["phase"], "Failed");
    }

    #[test]
    fn history_installs_upgrades_supersedes_and_trims() {
        let p = plan_history(&[], 10);
        assert_eq!(
            (p.version, p.is_upgrade, p.supersede.clone(), p.delete.clone()),
            (1, false, vec![], vec![])
        );
        let r = |version, status| Revision { version, status };
        let p = plan_history(&[r(1, Status::Superseded), r(2, Status::Deployed)], 10);
        assert_eq!((p.version, p.is_upgrade, p.supersede, p.delete), (3, true, vec![2], vec![]));
        assert_eq!(p.keeps_first_deployed_of, Some(1));
        let many: Vec<_> =
            (1..=10).map(|v| r(v, if v == 10 { Status::Deployed } else { Status::Superseded })).collect();
        let p = plan_history(&many, 10);
        assert_eq!((p.version, p.delete), (11, vec![1]));
        let p = plan_history(&many, 3);
        assert_eq!(p.delete, (1..=8).collect::<Vec<_>>());
        let p = plan_history(&[r(4, Status::Failed)], 1);
        assert_eq!((p.version, p.supersede, p.delete), (5, vec![], vec![4]));
    }
}
