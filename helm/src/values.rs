//! Values layers and digests: merging layers the way Helm coalesces `-f`
//! files (maps merge key by key, later layers win, `null` removes a key),
//! and the canonical digests that name a render (values, capabilities, and
//! the render cache key).

use std::path::Path;

use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use crate::{Capabilities, Error, Result};

/// Merge `over` into `base`: objects merge recursively, anything else is replaced;
/// a `null` in `over` deletes the key (as Helm does).
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(k);
                } else if let Some(existing) = b.get_mut(k) {
                    merge(existing, v);
                } else {
                    b.insert(k.clone(), v.clone());
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// Merge layers, lowest precedence first, into one object.
pub fn merge_layers<'a>(layers: impl IntoIterator<Item = &'a Value>) -> Value {
    let mut out = Value::Object(Map::new());
    for l in layers {
        merge(&mut out, l);
    }
    out
}

/// Parse a values document (YAML or JSON); an empty document is `{}`.
pub fn parse_values(name: &str, text: &str) -> Result<Value> {
    let v: Value = serde_saphyr::from_str(text)
        .map_err(|e| Error::Values(format!("{name}: {}", e.to_string().lines().next().unwrap_or(""))))?;
    match v {
        Value::Null => Ok(Value::Object(Map::new())),
        Value::Object(_) => Ok(v),
        _ => Err(Error::Values(format!("{name}: a values file must be a mapping"))),
    }
}

/// A Kubernetes version for `.Capabilities.KubeVersion`: `1.31` gives
/// `v1.31.0`; `v1.20.15` and `1.29.3` keep their patch (with a `v`).
pub fn normalize_kube_version(v: &str) -> String {
    let v = v.trim().trim_start_matches('v');
    if v.matches('.').count() == 1 { format!("v{v}.0") } else { format!("v{v}") }
}

/// Read and parse a values file.
pub fn read_values_file(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| Error::Io { path: path.display().to_string(), source })?;
    parse_values(&path.display().to_string(), &text)
}

/// JSON with object keys sorted, no whitespace: the same value always gives the same bytes.
pub fn canonical_json(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<_> = m.keys().collect();
                keys.sort();
                Value::Object(keys.into_iter().map(|k| (k.clone(), sorted(&m[k]))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(v).to_string()
}

/// `sha256:<hex>` of bytes.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The digest of a values object (of its canonical JSON).
pub fn values_digest(v: &Value) -> String {
    sha256(canonical_json(v).as_bytes())
}

/// The digest of a capability set (API versions sorted and deduplicated).
pub fn capabilities_digest(c: &Capabilities) -> String {
    let mut apis = c.api_versions.clone();
    apis.sort();
    apis.dedup();
    sha256(serde_json::json!({"kubeVersion": c.kube_version, "apiVersions": apis}).to_string().as_bytes())
}

/// The render cache key: identical inputs render once for the whole fleet.
pub fn render_key(
    chart_digest: &str,
    values: &Value,
    caps: &Capabilities,
    release: &str,
    namespace: &str,
) -> String {
    sha256(
        format!(
            "{chart_digest}\n{}\n{}\n{release}\n{namespace}",
            values_digest(values),
            capabilities_digest(caps)
        )
        .as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn later_layers_win_maps_merge_and_null_deletes() {
        let a = json!({"image": {"repo": "a", "tag": "1"}, "replicas": 1, "list": [1, 2], "gone": true});
        let b = json!({"image": {"tag": "2"}, "list": [3], "gone": null});
        let c = json!({"replicas": 3});
        let m = merge_layers([&a, &b, &c]);
        assert_eq!(m, json!({"image": {"repo": "a", "tag": "2"}, "replicas": 3, "list": [3]}));
    }

    #[test]
    fn digests_ignore_key_order_and_api_order() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":{"c":2,"d":3}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"b":{"d":3,"c":2},"a":1}"#).unwrap();
        assert_eq!(values_digest(&a), values_digest(&b));
        assert_ne!(values_digest(&a), values_digest(&json!({"a": 2})));
        let c1 =
            Capabilities { kube_version: "v1.30.0".into(), api_versions: vec!["a/v1".into(), "b/v1".into()] };
        let c2 =
            Capabilities { kube_version: "v1.30.0".into(), api_versions: vec!["b/v1".into(), "a/v1".into()] };
        let c3 = Capabilities { kube_version: "v1.31.0".into(), ..c1.clone() };
        assert_eq!(capabilities_digest(&c1), capabilities_digest(&c2));
        assert_ne!(capabilities_digest(&c1), capabilities_digest(&c3));
        let k = |c: &Capabilities, r: &str| render_key("sha256:x", &a, c, r, "ns");
        assert_eq!(k(&c1, "r"), k(&c2, "r"));
        assert_ne!(k(&c1, "r"), k(&c3, "r"));
        assert_ne!(k(&c1, "r"), k(&c1, "other"));
    }

    #[test]
    fn values_files_must_be_mappings() {
        assert_eq!(parse_values("v", "").unwrap(), json!({}));
        assert_eq!(parse_values("v", "a: 1\n").unwrap(), json!({"a": 1}));
        assert!(matches!(parse_values("v", "- 1\n"), Err(Error::Values(m)) if m.contains("v: ")));
    }
}
