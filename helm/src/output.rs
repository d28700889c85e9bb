//! Pure post-processing of what Helm rendered: split each template's output
//! into objects, separate hooks and test hooks from the release's objects,
//! take the notes, and turn Helm's error messages into typed errors that
//! name the template and line, or the schema field.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::protocol::{CrdFile, RawRender};
use crate::{Error, Result};

/// The hook annotation.
pub const HOOK_ANNOTATION: &str = "helm.sh/hook";
/// The hook weight annotation.
pub const HOOK_WEIGHT_ANNOTATION: &str = "helm.sh/hook-weight";
/// The hook delete policy annotation.
pub const HOOK_DELETE_POLICY_ANNOTATION: &str = "helm.sh/hook-delete-policy";

/// One rendered Kubernetes object and the template it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenderedObject {
    /// The template path, e.g. `podinfo/templates/deployment.yaml`.
    pub template: String,
    /// The object.
    pub object: serde_json::Value,
}

/// A hook object with its parsed annotations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hook {
    /// The template path.
    pub template: String,
    /// The events (`pre-install`, `post-upgrade`, `test`, ...).
    pub events: Vec<String>,
    /// `helm.sh/hook-weight` (0 when absent).
    pub weight: i64,
    /// `helm.sh/hook-delete-policy`; Helm's default `before-hook-creation` when absent.
    pub delete_policies: Vec<String>,
    /// The object.
    pub object: serde_json::Value,
}

impl Hook {
    /// Whether this is a `test` hook (never applied with the release).
    pub fn is_test(&self) -> bool {
        self.events.iter().any(|e| e == "test" || e == "test-success")
    }
}

/// The chart's identity, from `Chart.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChartMeta {
    /// `name`.
    pub name: String,
    /// `version`.
    pub version: String,
    /// `appVersion` (may be empty).
    pub app_version: String,
    /// The whole `Chart.yaml` as JSON (what Helm's release record stores).
    pub metadata: serde_json::Value,
    /// The chart's default values.
    #[serde(default)]
    pub default_values: serde_json::Value,
}

/// A rendered release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rendered {
    /// The chart.
    pub chart: ChartMeta,
    /// The release's objects (not hooks), in template order.
    pub objects: Vec<RenderedObject>,
    /// Hooks other than tests.
    pub hooks: Vec<Hook>,
    /// `test` hooks (not applied with the release).
    pub tests: Vec<Hook>,
    /// The rendered NOTES.txt of the top chart (empty when none).
    pub notes: String,
    /// CRDs from `crds/`.
    pub crds: Vec<CrdFile>,
    /// Warnings, e.g. a template that calls `lookup` (which returns empty here).
    pub warnings: Vec<String>,
    /// The Helm SDK version that rendered.
    pub helm_version: String,
}

impl Rendered {
    /// The release manifest as Helm stores it: `---\n# Source: <template>\n<yaml>` per object.
    pub fn manifest(&self) -> String {
        let mut out = String::new();
        for o in &self.objects {
            out.push_str("---\n# Source: ");
            out.push_str(&o.template);
            out.push('\n');
            out.push_str(&serde_saphyr::to_string(&o.object).unwrap_or_default());
        }
        out
    }
}

/// Whether a template's source calls `lookup` inside an action.
pub fn uses_lookup(source: &str) -> bool {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"\{\{[^}]*?[\s(|]lookup\s").expect("valid regex"));
    re.is_match(source)
}

/// Whether a template's source calls one of sprig's random functions inside
/// an action (`randAlphaNum`, `randAlpha`, `randNumeric`, `randAscii`,
/// `randBytes`, `randInt`, `uuidv4`).
pub fn uses_random(source: &str) -> bool {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r"\{\{[^}]*?\b(randAlphaNum|randAlpha|randNumeric|randAscii|randBytes|randInt|uuidv4)\b")
            .expect("valid regex")
    });
    re.is_match(source)
}

/// A test hook's name made stable: charts name test Pods with a random
/// suffix (`{{ ... }}-grpc-test-{{ randAlphaNum 5 | lower }}`) so that each
/// `helm test` creates new ones; in an artifact that would change the digest
/// on every render. The last `-` segment of the name of a test hook from a
/// template that calls a random function is replaced by as many characters
/// of `[a-z0-9]` derived from the template, the document's position and the
/// name before it, so the same render input gives the same name (the agent
/// deletes a test hook's previous object before each run instead). Pure.
pub fn stable_test_name(name: &str, template: &str, index: usize) -> String {
    use sha2::{Digest as _, Sha256};
    let (prefix, random) = match name.rsplit_once('-') {
        Some((p, r)) if !r.is_empty() => (format!("{p}-"), r),
        _ => (String::new(), name),
    };
    let mut out = prefix.clone();
    let mut counter = 0u32;
    while out.len() < prefix.len() + random.len() {
        let h = Sha256::new()
            .chain_update(template.as_bytes())
            .chain_update([0])
            .chain_update(index.to_le_bytes())
            .chain_update(prefix.as_bytes())
            .chain_update(counter.to_le_bytes())
            .finalize();
        for b in h {
            if out.len() == prefix.len() + random.len() {
                break;
            }
            out.push(b"abcdefghijklmnopqrstuvwxyz0123456789"[usize::from(b) % 36] as char);
        }
        counter += 1;
    }
    out
}

/// Turn the worker's raw output into a [`Rendered`].
pub fn assemble(raw: RawRender) -> Result<Rendered> {
    let meta = &raw.metadata;
    let field = |k: &str| meta.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let chart = ChartMeta {
        name: field("name"),
        version: field("version"),
        app_version: field("appVersion"),
        metadata: raw.metadata.clone(),
        default_values: raw.default_values.clone(),
    };
    let notes_key = format!("{}/templates/NOTES.txt", chart.name);
    let mut notes = String::new();
    let (mut objects, mut hooks, mut tests) = (Vec::new(), Vec::new(), Vec::new());
    for (template, text) in &raw.manifests {
        if template.ends_with("NOTES.txt") {
            if *template == notes_key {
                notes = text.clone();
            }
            continue;
        }
        let random = raw.random_templates.iter().any(|t| t == template);
        for (index, object) in parse_objects(template, text)?.into_iter().enumerate() {
            match hook_of(template, &object) {
                Some(mut h) if h.is_test() => {
                    if random && let Some(n) = h.object.pointer_mut("/metadata/name") {
                        let stable = stable_test_name(n.as_str().unwrap_or_default(), template, index);
                        *n = stable.into();
                    }
                    tests.push(h)
                }
                Some(h) => hooks.push(h),
                None => objects.push(RenderedObject { template: template.clone(), object }),
            }
        }
    }
    let warnings = raw
        .lookup_templates
        .iter()
        .map(|t| format!("template {t} calls lookup, which returns empty: Convoy renders without a cluster"))
        .collect();
    Ok(Rendered {
        chart,
        objects,
        hooks,
        tests,
        notes,
        crds: raw.crds,
        warnings,
        helm_version: raw.helm_version,
    })
}

/// Parse a rendered template's YAML stream into objects, dropping empty documents.
pub fn parse_objects(template: &str, text: &str) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for doc in convoy_core::yaml::documents(text) {
        let v: serde_json::Value = serde_saphyr::from_str(doc.text).map_err(|e| Error::Output {
            template: template.to_string(),
            message: format!("document {}: {}", doc.index, e.to_string().lines().next().unwrap_or("")),
        })?;
        match v {
            serde_json::Value::Null => {}
            serde_json::Value::Object(_) => out.push(v),
            _ => {
                return Err(Error::Output {
                    template: template.to_string(),
                    message: format!("document {} is not a mapping", doc.index),
                });
            }
        }
    }
    Ok(out)
}

fn hook_of(template: &str, object: &serde_json::Value) -> Option<Hook> {
    let ann = object.pointer("/metadata/annotations")?.as_object()?;
    let events = split_list(ann.get(HOOK_ANNOTATION)?.as_str()?);
    let weight = ann
        .get(HOOK_WEIGHT_ANNOTATION)
        .and_then(|w| w.as_str().map(|s| s.trim().parse().unwrap_or(0)).or_else(|| w.as_i64()))
        .unwrap_or(0);
    let mut delete_policies =
        ann.get(HOOK_DELETE_POLICY_ANNOTATION).and_then(|v| v.as_str()).map(split_list).unwrap_or_default();
    if delete_policies.is_empty() {
        delete_policies.push("before-hook-creation".into());
    }
    Some(Hook { template: template.to_string(), events, weight, delete_policies, object: object.clone() })
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(String::from).collect()
}

/// Map a failed library call to a typed error. `chart` names the chart.
pub fn error_from_helm(code: i32, message: &str, chart: &str) -> Error {
    use crate::ffi::code;
    match code {
        crate::protocol::CODE_UNAVAILABLE => Error::HelmUnavailable(message.to_string()),
        code::CHART_LOAD | code::CHART_INVALID => {
            Error::ChartLoad { chart: chart.to_string(), message: message.to_string() }
        }
        code::VALUES => match schema_field(message) {
            Some(field) => Error::Schema { field, message: message.trim().to_string() },
            None => Error::Values(message.trim().to_string()),
        },
        code::RENDER => {
            let (template, line) = template_position(message).unwrap_or_default();
            Error::Render { template, line, message: message.trim().to_string() }
        }
        _ => Error::Helm { code, message: message.trim().to_string() },
    }
}

/// `chart/templates/x.yaml:12:3` (or `template: chart/templates/x.yaml:12:3:`)
/// at the start of Helm's render error.
fn template_position(message: &str) -> Option<(String, u32)> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r"(?:template: )?([A-Za-z0-9_.\-/]+?\.(?:ya?ml|tpl|txt|json)):(\d+)(?::\d+)?")
            .expect("valid regex")
    });
    let c = re.captures(message)?;
    Some((c[1].to_string(), c[2].parse().ok()?))
}

/// The first field named by a schema error: `- at '/image/tag': ...` gives
/// `image.tag`; a root-level error (`at ''`) gives `(root)`.
fn schema_field(message: &str) -> Option<String> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"at '([^']*)'").expect("valid regex"));
    let path = re.captures(message)?[1].to_string();
    let dotted = path.trim_start_matches('/').replace('/', ".");
    Some(if dotted.is_empty() { "(root)".into() } else { dotted })
}

/// Group objects by template (for writing one file per template).
pub fn by_template(objects: &[RenderedObject]) -> BTreeMap<String, Vec<&serde_json::Value>> {
    let mut m: BTreeMap<String, Vec<&serde_json::Value>> = BTreeMap::new();
    for o in objects {
        m.entry(o.template.clone()).or_default().push(&o.object);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_is_detected_in_actions_only() {
        assert!(uses_lookup(r#"{{ $s := lookup "v1" "Secret" .Release.Namespace "x" }}"#));
        assert!(uses_lookup("{{- if (lookup \"v1\" \"Namespace\" \"\" \"a\") }}"));
        assert!(!uses_lookup("# we never lookup anything\nkind: ConfigMap"));
        assert!(!uses_lookup("{{ .Values.lookupTable }}"));
    }

    #[test]
    fn random_functions_are_detected_and_test_names_made_stable() {
        assert!(uses_random("name: x-{{ randAlphaNum 5 | lower }}"));
        assert!(uses_random("{{- $id := uuidv4 }}"));
        assert!(!uses_random("# randAlphaNum in a comment\nname: x"));
        assert!(!uses_random("{{ .Values.randAlphaNumber }}"));
        let a = stable_test_name("web-podinfo-grpc-test-ab1cd", "podinfo/templates/tests/grpc.yaml", 0);
        let b = stable_test_name("web-podinfo-grpc-test-zz9qx", "podinfo/templates/tests/grpc.yaml", 0);
        assert_eq!(a, b, "the random segment does not matter");
        assert!(
            a.starts_with("web-podinfo-grpc-test-") && a.len() == "web-podinfo-grpc-test-ab1cd".len(),
            "{a}"
        );
        assert!(
            a["web-podinfo-grpc-test-".len()..].chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert_ne!(a, stable_test_name("web-podinfo-grpc-test-ab1cd", "podinfo/templates/tests/jwt.yaml", 0));
        assert_ne!(
            a,
            stable_test_name("web-podinfo-grpc-test-ab1cd", "podinfo/templates/tests/grpc.yaml", 1)
        );
        assert_eq!(stable_test_name("abc", "t", 0).len(), 3, "no dash: the whole name");
        assert_eq!(stable_test_name("x-", "t", 0).len(), 2);
    }

    #[test]
    fn render_errors_name_template_and_line() {
        let e = error_from_helm(
            -23,
            "bad/templates/cm.yaml:6:15\n  executing \"bad/templates/cm.yaml\" at <.Values.foo.bar>:\n    nil pointer",
            "bad",
        );
        match e {
            Error::Render { template, line, .. } => {
                assert_eq!((template.as_str(), line), ("bad/templates/cm.yaml", 6))
            }
            other => panic!("{other:?}"),
        }
        let e = error_from_helm(-23, "template: x/templates/_helpers.tpl:3:4: executing ...", "x");
        assert!(
            matches!(e, Error::Render { ref template, line: 3, .. } if template == "x/templates/_helpers.tpl")
        );
    }

    #[test]
    fn schema_errors_name_the_field() {
        let msg = "values don't meet the specifications of the schema(s) in the following chart(s):\nbad:\n- at '/image/tag': got number, want string\n";
        assert!(
            matches!(error_from_helm(-22, msg, "bad"), Error::Schema { ref field, .. } if field == "image.tag")
        );
        assert!(
            matches!(error_from_helm(-22, "- at '': missing property 'x'", "bad"), Error::Schema { ref field, .. } if field == "(root)")
        );
        assert!(matches!(error_from_helm(-22, "yaml: line 2: bad", "bad"), Error::Values(_)));
        assert!(matches!(error_from_helm(2, "no lib", "bad"), Error::HelmUnavailable(_)));
        assert!(matches!(error_from_helm(-20, "no chart", "bad"), Error::ChartLoad { .. }));
    }

    #[test]
    fn assemble_splits_hooks_tests_notes_and_warns_about_lookup() {
        let mut manifests = BTreeMap::new();
        manifests.insert("c/templates/NOTES.txt".to_string(), "hello".to_string());
        manifests.insert("c/templates/sub/NOTES.txt".to_string(), "not ours".to_string());
        manifests.insert(
            "c/templates/a.yaml".to_string(),
            "---\n# comment only\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\napiVersion: batch/v1\nkind: Job\nmetadata:\n  name: j\n  annotations:\n    helm.sh/hook: pre-install,pre-upgrade\n    helm.sh/hook-weight: \"-5\"\n".to_string(),
        );
        manifests.insert(
            "c/templates/t.yaml".to_string(),
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: t\n  annotations:\n    helm.sh/hook: test\n    helm.sh/hook-delete-policy: hook-succeeded, hook-failed\n".to_string(),
        );
        let raw = RawRender {
            manifests,
            crds: vec![],
            metadata: serde_json::json!({"name": "c", "version": "1.2.3", "appVersion": "9"}),
            default_values: serde_json::json!({}),
            lookup_templates: vec!["c/templates/a.yaml".into()],
            random_templates: vec!["c/templates/t.yaml".into()],
            helm_version: "v4".into(),
        };
        let r = assemble(raw).unwrap();
        assert_eq!(r.notes, "hello");
        assert_eq!(r.chart.version, "1.2.3");
        assert_eq!(r.objects.len(), 1);
        assert_eq!(r.hooks.len(), 1);
        assert_eq!(r.hooks[0].events, vec!["pre-install", "pre-upgrade"]);
        assert_eq!(r.hooks[0].weight, -5);
        assert_eq!(r.hooks[0].delete_policies, vec!["before-hook-creation"]);
        assert_eq!(r.tests.len(), 1);
        assert_eq!(r.tests[0].delete_policies, vec!["hook-succeeded", "hook-failed"]);
        // A test from a template calling a random function gets a stable name.
        assert_eq!(r.tests[0].object["metadata"]["name"], stable_test_name("t", "c/templates/t.yaml", 0));
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].contains("c/templates/a.yaml"));
        assert!(r.manifest().starts_with("---\n# Source: c/templates/a.yaml\n"));
    }

    #[test]
    fn a_scalar_document_is_refused_with_its_template() {
        let e = parse_objects("c/templates/x.yaml", "just a string\n").unwrap_err();
        assert!(matches!(e, Error::Output { ref template, .. } if template == "c/templates/x.yaml"));
    }
}
