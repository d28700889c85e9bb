//! The thin Kubernetes adapter: typed requests for dynamic resources (apply,
//! dry-run apply, get, get metadata, delete), retries of transient failures,
//! and turning 409 apply responses into field conflicts.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use kube::api::{DeleteParams, Patch, PatchParams, PropagationPolicy};
use kube::core::Request;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::{FieldConflict, ImmutableField};
use crate::objects::ObjKey;
use crate::resource::ResourceInfo;
use crate::{Error, Result};
use convoy_core::backoff::Backoff;

/// How many times one request is tried before its error is returned.
const ATTEMPTS: u32 = 6;

/// The metadata fields the agent uses. Everything else, notably
/// `managedFields` (hundreds of KiB on a large CRD), is skipped while
/// parsing and never allocated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeanMeta {
    /// metadata.name.
    #[serde(default)]
    pub name: Option<String>,
    /// metadata.namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// metadata.uid.
    #[serde(default)]
    pub uid: Option<String>,
    /// metadata.resourceVersion.
    #[serde(default)]
    pub resource_version: Option<String>,
    /// metadata.generation.
    #[serde(default)]
    pub generation: Option<i64>,
    /// metadata.labels.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// metadata.annotations.
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    /// metadata.deletionTimestamp.
    #[serde(default)]
    pub deletion_timestamp: Option<String>,
}

/// A condition's type and status, nothing else.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct LeanCondition {
    /// The condition type.
    #[serde(default, rename = "type")]
    pub type_: String,
    /// "True", "False", "Unknown".
    #[serde(default)]
    pub status: String,
}

/// `status.conditions` only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct LeanStatus {
    /// The conditions.
    #[serde(default)]
    pub conditions: Vec<LeanCondition>,
}

/// Only the metadata of an object (and its status conditions): parsing
/// skips everything else, so large objects (CRDs) cost little memory.
#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
pub struct MetaOnly {
    /// The object's metadata.
    #[serde(default)]
    pub metadata: LeanMeta,
    /// The object's status conditions, when it has them.
    #[serde(default, deserialize_with = "lenient_status")]
    pub status: LeanStatus,
}

/// Objects whose `status` is not a mapping with a `conditions` list still parse.
fn lenient_status<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<LeanStatus, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Any {
        Status(LeanStatus),
        #[allow(dead_code)]
        Other(serde::de::IgnoredAny),
    }
    Ok(match Any::deserialize(d)? {
        Any::Status(s) => s,
        Any::Other(_) => LeanStatus::default(),
    })
}

impl MetaOnly {
    /// metadata.resourceVersion or "".
    pub fn rv(&self) -> &str {
        self.metadata.resource_version.as_deref().unwrap_or("")
    }
    /// metadata.generation or 0.
    pub fn generation(&self) -> i64 {
        self.metadata.generation.unwrap_or(0)
    }
    /// metadata.labels.
    pub fn labels(&self) -> Option<&BTreeMap<String, String>> {
        self.metadata.labels.as_ref()
    }
    /// metadata.annotations.
    pub fn annotations(&self) -> Option<&BTreeMap<String, String>> {
        self.metadata.annotations.as_ref()
    }
    /// Whether status.conditions has `type_` with status True.
    pub fn condition_true(&self, type_: &str) -> bool {
        self.status.conditions.iter().any(|c| c.type_ == type_ && c.status == "True")
    }
}

pub use crate::error::is_transient_kube as is_transient;

/// Run `f` until it succeeds, fails permanently, or [`ATTEMPTS`] tries
/// failed transiently (exponential backoff with full jitter, 50 ms .. 2 s).
pub async fn retry_transient<T, F, Fut>(what: &str, mut f: F) -> std::result::Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, kube::Error>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let mut attempt = 1;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < ATTEMPTS && is_transient(&e) => {
                let d = backoff.next_delay();
                tracing::debug!(error = %e, what, attempt, delay_ms = d.as_millis() as u64, "retrying");
                tokio::time::sleep(d).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Send a request and decode a JSON body, returning the HTTP status too
/// (server-side apply answers 201 when it created the object). API errors
/// become `kube::Error::Api` exactly as `Client::request` makes them.
pub async fn send_json<T: serde::de::DeserializeOwned>(
    client: &kube::Client,
    req: http::Request<Vec<u8>>,
) -> std::result::Result<(u16, T), kube::Error> {
    use http_body_util::BodyExt;
    let res = client.send(req.map(kube::client::Body::from)).await?;
    let status = res.status();
    let bytes = res.into_body().collect().await?.to_bytes();
    if status.is_client_error() || status.is_server_error() {
        let st = match serde_json::from_slice::<kube::core::Status>(&bytes) {
            Ok(s) => s,
            Err(_) => kube::core::Status::failure(
                String::from_utf8_lossy(&bytes).trim(),
                "Failed to parse error data",
            )
            .with_code(status.as_u16()),
        };
        return Err(kube::Error::Api(st.boxed()));
    }
    let v = serde_json::from_slice(&bytes).map_err(kube::Error::SerdeError)?;
    Ok((status.as_u16(), v))
}

/// Requests for one object.
pub struct ObjApi<'a> {
    client: &'a kube::Client,
    req: Request,
    name: &'a str,
    what: String,
}

impl<'a> ObjApi<'a> {
    /// Requests for `key` served as `res`.
    pub fn new(client: &'a kube::Client, res: &ResourceInfo, key: &'a ObjKey) -> Self {
        Self {
            client,
            req: Request::new(res.url_path(key.namespace.as_deref())),
            name: &key.name,
            what: key.to_string(),
        }
    }

    /// GET the metadata only (a PartialObjectMetadata request: API servers
    /// that support it send no spec); `None` when the object does not exist.
    pub async fn get_meta(&self) -> Result<Option<MetaOnly>> {
        let r = retry_transient(&self.what, || async {
            let req =
                self.req.get_metadata(self.name, &Default::default()).map_err(kube::Error::BuildRequest)?;
            self.client.request::<MetaOnly>(req).await
        })
        .await;
        not_found_is_none(r).map_err(|e| Error::kube(format!("get {}", self.what), e))
    }

    /// GET the object decoded as `T` (fields `T` does not name are skipped
    /// without being allocated); `None` when it does not exist.
    pub async fn get_as<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>> {
        let r = retry_transient(&self.what, || async {
            let req = self.req.get(self.name, &Default::default()).map_err(kube::Error::BuildRequest)?;
            self.client.request::<T>(req).await
        })
        .await;
        not_found_is_none(r).map_err(|e| Error::kube(format!("get {}", self.what), e))
    }

    /// GET the whole object; `None` when it does not exist.
    pub async fn get(&self) -> Result<Option<Value>> {
        let r = retry_transient(&self.what, || async {
            let req = self.req.get(self.name, &Default::default()).map_err(kube::Error::BuildRequest)?;
            self.client.request::<Value>(req).await
        })
        .await;
        not_found_is_none(r).map_err(|e| Error::kube(format!("get {}", self.what), e))
    }

    fn apply_params(force: bool, dry_run: bool) -> PatchParams {
        let mut pp = PatchParams::apply(convoy_core::FIELD_MANAGER);
        pp.force = force;
        pp.dry_run = dry_run;
        pp
    }

    /// Server-side apply `body`; returns the resulting metadata.
    pub async fn apply(&self, body: &str, force: bool) -> Result<MetaOnly> {
        self.apply_as::<MetaOnly>(body, force, false).await.map(|(_, m)| m)
    }

    /// Server-side apply (forced) of one of the agent's own objects in its
    /// `namespace`, creating the namespace first when it does not exist yet
    /// (one-shot mode, or a first start, on a fresh cluster).
    pub async fn apply_own(&self, body: &str, namespace: &str) -> Result<()> {
        match self.apply(body, true).await {
            Ok(_) => Ok(()),
            Err(Error::Kube { source: kube::Error::Api(s), .. }) if s.is_not_found() => {
                ensure_namespace(self.client, namespace).await?;
                self.apply(body, true).await.map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    /// Server-side apply `body`; returns whether it created the object, and
    /// the resulting metadata.
    pub async fn apply_created(&self, body: &str, force: bool) -> Result<(bool, MetaOnly)> {
        self.apply_as::<MetaOnly>(body, force, false).await.map(|(code, m)| (code == 201, m))
    }

    /// Server-side dry-run apply; returns the whole object the apply would produce.
    pub async fn dry_run(&self, body: &str, force: bool) -> Result<Value> {
        self.apply_as::<Value>(body, force, true).await.map(|(_, v)| v)
    }

    async fn apply_as<T: serde::de::DeserializeOwned>(
        &self,
        body: &str,
        force: bool,
        dry: bool,
    ) -> Result<(u16, T)> {
        let raw: &RawValue = serde_json::from_str(body)
            .map_err(|e| Error::Config(format!("{}: body is not JSON: {e}", self.what)))?;
        let pp = Self::apply_params(force, dry);
        let r = retry_transient(&self.what, || async {
            let req =
                self.req.patch(self.name, &pp, &Patch::Apply(raw)).map_err(kube::Error::BuildRequest)?;
            send_json::<T>(self.client, req).await
        })
        .await;
        r.map_err(|e| {
            if let Some(c) = conflicts(&self.what, &e) {
                Error::Conflict(c)
            } else if let Some(f) = immutable_fields(&self.what, &e) {
                Error::Immutable(f)
            } else {
                Error::kube(format!("apply {}", self.what), e)
            }
        })
    }

    /// DELETE with background propagation; `false` when it was already gone.
    pub async fn delete(&self) -> Result<bool> {
        self.delete_with(PropagationPolicy::Background).await
    }

    /// DELETE with this propagation policy (foreground: the object stays,
    /// with a deletionTimestamp, until its dependents are gone); `false`
    /// when it was already gone.
    pub async fn delete_with(&self, propagation: PropagationPolicy) -> Result<bool> {
        let dp = DeleteParams { propagation_policy: Some(propagation), ..Default::default() };
        let r = retry_transient(&self.what, || async {
            let req = self.req.delete(self.name, &dp).map_err(kube::Error::BuildRequest)?;
            self.client.request::<Value>(req).await
        })
        .await;
        match r {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(false),
            Err(e) => Err(Error::kube(format!("delete {}", self.what), e)),
        }
    }
}

fn not_found_is_none<T>(
    r: std::result::Result<T, kube::Error>,
) -> std::result::Result<Option<T>, kube::Error> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The field conflicts of a 409 server-side apply response, if it is one.
pub fn conflicts(object: &str, e: &kube::Error) -> Option<Vec<FieldConflict>> {
    let kube::Error::Api(s) = e else { return None };
    if s.code != 409 {
        return None;
    }
    let causes = s.details.as_ref().map(|d| d.causes.as_slice()).unwrap_or_default();
    let mut out: Vec<FieldConflict> = causes
        .iter()
        .filter(|c| c.reason.is_empty() || c.reason == "FieldManagerConflict")
        .map(|c| FieldConflict { object: object.into(), field: c.field.clone(), message: c.message.clone() })
        .collect();
    if out.is_empty() {
        out.push(FieldConflict { object: object.into(), field: String::new(), message: s.message.clone() });
    }
    Some(out)
}

/// The fields of a 422 Invalid response that the API server does not let
/// change ("field is immutable", "cannot change roleRef", "spec is immutable
/// after creation", or a Forbidden update of a spec that only allows some
/// fields to change), if it is one. The field path comes from
/// the status causes, else from the message (`<Kind> "x" is invalid:
/// spec.selector: ...`).
pub fn immutable_fields(object: &str, e: &kube::Error) -> Option<Vec<ImmutableField>> {
    let kube::Error::Api(s) = e else { return None };
    if s.code != 422 || s.reason != "Invalid" {
        return None;
    }
    // The API server's wordings: "field is immutable", "spec is immutable
    // after creation ...", "cannot change roleRef", "Forbidden: updates to
    // statefulset spec for fields other than ... are forbidden".
    let immutable = |m: &str| {
        m.contains("is immutable") || m.contains("cannot change") || m.contains("Forbidden: updates to")
    };
    let causes = s.details.as_ref().map(|d| d.causes.as_slice()).unwrap_or_default();
    let mut out: Vec<ImmutableField> = causes
        .iter()
        .filter(|c| immutable(&c.message))
        .map(|c| ImmutableField { object: object.into(), field: c.field.clone(), message: c.message.clone() })
        .collect();
    if out.is_empty() && immutable(&s.message) {
        let field = s
            .message
            .split_once(" is invalid: ")
            .and_then(|(_, rest)| rest.split_once(": "))
            .map(|(f, _)| f.to_string())
            .unwrap_or_default();
        out.push(ImmutableField { object: object.into(), field, message: s.message.clone() });
    }
    (!out.is_empty()).then_some(out)
}

/// Whether deleting this kind should wait for its dependents (pods of a
/// workload) before the object itself goes.
pub fn foreground_delete(group: &str, kind: &str) -> bool {
    matches!(
        (group, kind),
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet")
            | ("batch", "Job" | "CronJob")
            | ("", "ReplicationController")
    )
}

/// Make sure a namespace exists (server-side apply of a bare Namespace);
/// `true` when it had to be created.
pub async fn ensure_namespace(client: &kube::Client, ns: &str) -> Result<bool> {
    let res = ResourceInfo {
        group: String::new(),
        version: "v1".into(),
        kind: "Namespace".into(),
        plural: "namespaces".into(),
        namespaced: false,
    };
    let key = ObjKey::new("", "Namespace", None, ns);
    let api = ObjApi::new(client, &res, &key);
    if api.get_meta().await?.is_some() {
        return Ok(false);
    }
    let body =
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}).to_string();
    api.apply(&body, false).await.map(|_| true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::response::StatusDetails;

    #[test]
    fn conflict_causes_become_field_conflicts() {
        let details: StatusDetails = serde_json::from_value(serde_json::json!({
            "causes": [{"reason": "FieldManagerConflict", "field": ".spec.replicas",
                        "message": "conflict with \"kubectl-edit\" using apps/v1"}]
        }))
        .unwrap();
        let st = kube::core::Status::failure("Apply failed with 1 conflict", "Conflict")
            .with_code(409)
            .with_details(details);
        let c = conflicts("Deployment/a/b", &kube::Error::Api(st.boxed())).unwrap();
        assert_eq!(c[0].field, ".spec.replicas");
        assert!(c[0].message.contains("kubectl-edit"));
        let not = kube::core::Status::failure("x", "NotFound").with_code(404);
        assert!(conflicts("x", &kube::Error::Api(not.boxed())).is_none());
    }

    fn invalid(message: &str, causes: serde_json::Value) -> kube::Error {
        let details: StatusDetails = serde_json::from_value(serde_json::json!({ "causes": causes })).unwrap();
        kube::Error::Api(
            kube::core::Status::failure(message, "Invalid").with_code(422).with_details(details).boxed(),
        )
    }

    #[test]
    fn immutable_classification() {
        // The API server's answer to a new Deployment selector.
        let e = invalid(
            "Deployment.apps \"web\" is invalid: spec.selector: Invalid value: v1.LabelSelector{}: field is immutable",
            serde_json::json!([{"reason": "FieldValueInvalid", "field": "spec.selector",
                "message": "Invalid value: v1.LabelSelector{}: field is immutable"}]),
        );
        let f = immutable_fields("Deployment/apps/web", &e).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].field, "spec.selector");
        assert_eq!(f[0].object, "Deployment/apps/web");
        // No causes: the field comes from the message.
        let e = invalid(
            "RoleBinding.rbac.authorization.k8s.io \"rb\" is invalid: roleRef: Invalid value: x: cannot change roleRef",
            serde_json::json!([]),
        );
        assert_eq!(immutable_fields("RoleBinding/a/rb", &e).unwrap()[0].field, "roleRef");
        // StatefulSet: a Forbidden update of the spec.
        let e = invalid(
            "StatefulSet.apps \"db\" is invalid: spec: Forbidden: updates to statefulset spec for fields other than 'replicas' are forbidden",
            serde_json::json!([{"reason": "FieldValueForbidden", "field": "spec",
                "message": "Forbidden: updates to statefulset spec for fields other than 'replicas' are forbidden"}]),
        );
        assert_eq!(immutable_fields("StatefulSet/a/db", &e).unwrap()[0].field, "spec");
        // Other validation failures are not immutable changes.
        let e = invalid(
            "ConfigMap \"x\" is invalid: metadata.name: Invalid value: \"X\": a lowercase RFC 1123 subdomain",
            serde_json::json!([{"reason": "FieldValueInvalid", "field": "metadata.name", "message": "Invalid value"}]),
        );
        assert!(immutable_fields("ConfigMap/a/x", &e).is_none());
        let conflict = kube::Error::Api(kube::core::Status::failure("x", "Conflict").with_code(409).boxed());
        assert!(immutable_fields("x", &conflict).is_none());
        assert!(foreground_delete("apps", "Deployment"));
        assert!(!foreground_delete("", "Service"));
    }

    #[test]
    fn transient_classification() {
        let e = |code| kube::Error::Api(kube::core::Status::failure("x", "y").with_code(code).boxed());
        assert!(is_transient(&e(500)));
        assert!(is_transient(&e(503)));
        assert!(is_transient(&e(429)));
        assert!(!is_transient(&e(404)));
        assert!(!is_transient(&e(409)));
        assert!(!is_transient(&e(422)));
    }
}
