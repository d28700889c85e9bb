//! `/openapi/v3` (one document per group/version) and `/openapi/v2` (one
//! document, JSON or gnostic protobuf): the same operations for every served
//! kind with their query parameters, so that kubectl detects server-side field
//! validation, and the same CRD schemas (with `x-kubernetes-group-version-kind`).

use std::sync::Arc;

use axum::body::Body;
use http::{HeaderMap, Response};
use serde_json::{Map, Value, json};

use crate::api::{Inner, error_response, json_response};
use crate::status::ApiError;

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

fn hash(s: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    format!("{:016X}", h.finish())
}

fn param(name: &str, ty: &str) -> Value {
    json!({"name": name, "in": "query", "description": name, "schema": {"type": ty, "uniqueItems": true}})
}

fn gv_doc(inner: &Arc<Inner>, group: &str, version: &str) -> Option<Value> {
    let reg = inner.registry.read();
    if !reg.has_group_version(group, version) {
        return None;
    }
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for t in reg.all().filter(|t| t.group == group && t.version == version) {
        let gvk = json!({"group": group, "version": version, "kind": t.kind});
        let prefix = format!("/{}", gv_path(group, version));
        let item = if t.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
        } else {
            format!("{prefix}/{}/{{name}}", t.plural)
        };
        let op = |verb: &str| {
            json!({
                "operationId": format!("{verb}{}", t.kind),
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [param("dryRun", "string"), param("fieldManager", "string"), param("fieldValidation", "string"), param("force", "boolean")],
                "responses": {"200": {"description": "OK"}},
            })
        };
        paths.insert(
            item.clone(),
            json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}),
        );
        if t.status {
            paths.insert(
                format!("{item}/status"),
                json!({"get": op("get"), "put": op("put"), "patch": op("patch")}),
            );
        }
        // CRD schemas (kubectl explain); built-ins are resolved by kubectl's compiled-in types
        if let Some(oas) = &t.openapi {
            let mut s = (**oas).clone();
            if let Some(m) = s.as_object_mut() {
                m.insert("x-kubernetes-group-version-kind".into(), json!([gvk]));
            }
            let rev: Vec<&str> = t.group.split('.').rev().collect();
            schemas.insert(format!("{}.{}.{}", rev.join("."), t.version, t.kind), s);
        }
    }
    Some(
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": paths, "components": {"schemas": schemas}}),
    )
}

/// The CRD schema as published in OpenAPI v2: what v2 cannot say is dropped,
/// and objects that keep unknown fields become arbitrary values (no `type`), as
/// the API server publishes them.
fn v2_schema(v: &Value) -> Value {
    let Some(m) = v.as_object() else { return v.clone() };
    let mut out = Map::new();
    let preserve = m.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    let int_or_string = m.get("x-kubernetes-int-or-string") == Some(&json!(true));
    for (k, x) in m {
        match k.as_str() {
            "nullable" | "oneOf" | "anyOf" | "not" | "x-kubernetes-validations" => {}
            "type" if preserve || int_or_string => {}
            "properties" if preserve => {}
            "properties" => {
                let props: Map<String, Value> =
                    x.as_object().into_iter().flatten().map(|(n, p)| (n.clone(), v2_schema(p))).collect();
                out.insert(k.clone(), Value::Object(props));
            }
            "items" | "additionalProperties" if x.is_object() => {
                out.insert(k.clone(), v2_schema(x));
            }
            "allOf" => {
                out.insert(
                    k.clone(),
                    Value::Array(x.as_array().into_iter().flatten().map(v2_schema).collect()),
                );
            }
            _ => {
                out.insert(k.clone(), x.clone());
            }
        }
    }
    Value::Object(out)
}

/// The whole OpenAPI v2 document: every served kind's operations (as in the
/// v3 documents) and the CRD schemas.
pub fn v2_doc(inner: &Arc<Inner>) -> Value {
    let reg = inner.registry.read();
    let mut gvs: Vec<(String, String)> = reg.all().map(|t| (t.group.clone(), t.version.clone())).collect();
    gvs.sort();
    gvs.dedup();
    drop(reg);
    let mut paths = Map::new();
    let mut definitions = Map::new();
    for (g, v) in gvs {
        let Some(doc) = gv_doc(inner, &g, &v) else { continue };
        for (p, item) in doc["paths"].as_object().into_iter().flatten() {
            let mut item = item.clone();
            // v2 parameters carry their type directly (v3 has a schema)
            for op in item.as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
                for prm in op.get_mut("parameters").and_then(Value::as_array_mut).into_iter().flatten() {
                    if let Some(sch) = prm.as_object_mut().and_then(|m| m.shift_remove("schema")) {
                        prm["type"] = sch["type"].clone();
                        prm["uniqueItems"] = json!(true);
                    }
                }
                if let Some(gvk) = op.get_mut("x-kubernetes-group-version-kind") {
                    // an operation names one kind (a definition lists them)
                    if let Some(first) = gvk.as_array().and_then(|a| a.first()).cloned() {
                        *gvk = first;
                    }
                }
                if let Some(m) = op.as_object_mut() {
                    m.insert(
                        "consumes".into(),
                        json!([
                            "application/json-patch+json",
                            "application/merge-patch+json",
                            "application/strategic-merge-patch+json",
                            "application/apply-patch+yaml"
                        ]),
                    );
                    m.insert("produces".into(), json!(["application/json", "application/yaml"]));
                }
            }
            paths.insert(p.clone(), item);
        }
        for (n, sch) in doc["components"]["schemas"].as_object().into_iter().flatten() {
            let mut d = v2_schema(sch);
            // the API server adds the envelope fields to a CRD's published schema
            // (metadata is left arbitrary: ObjectMeta's schema is not served)
            if let Some(props) = d.get_mut("properties").and_then(Value::as_object_mut) {
                props.entry("apiVersion").or_insert_with(|| json!({"type": "string"}));
                props.entry("kind").or_insert_with(|| json!({"type": "string"}));
                props
                    .entry("metadata")
                    .or_insert_with(|| json!({"description": "Standard object's metadata."}));
            }
            definitions.insert(n.clone(), d);
        }
    }
    json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": paths, "definitions": definitions})
}

/// Serve `/openapi/v2` and `/openapi/v3[/...]`.
pub fn serve(inner: &Arc<Inner>, path: &str, headers: &HeaderMap) -> Response<Body> {
    if path == "/openapi/v2" {
        let doc = v2_doc(inner);
        let accept = headers.get("accept").and_then(|v| v.to_str().ok()).unwrap_or("");
        if accept.contains("protobuf") {
            return Response::builder()
                .status(200)
                // the media type kubectl asks for has an `@`, which is not a valid MIME token;
                // the API server answers with the `.v1.0` spelling
                .header("content-type", "application/com.github.proto-openapi.spec.v2.v1.0+protobuf")
                .header("cache-control", "no-cache, private")
                .body(Body::from(crate::gnostic::encode(&doc)))
                .expect("response");
        }
        return json_response(200, &doc);
    }
    let rest = path.trim_start_matches("/openapi/v3").trim_start_matches('/');
    if rest.is_empty() {
        let reg = inner.registry.read();
        let mut gvs: Vec<(String, String)> =
            reg.all().map(|t| (t.group.clone(), t.version.clone())).collect();
        gvs.dedup();
        drop(reg);
        let mut paths = Map::new();
        for (g, v) in gvs {
            let p = gv_path(&g, &v);
            let h = hash(&gv_doc(inner, &g, &v).map(|d| d.to_string()).unwrap_or_default());
            paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={h}")}));
        }
        return json_response(200, &json!({"paths": paths}));
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let doc = match segs.as_slice() {
        ["api", v] => gv_doc(inner, "", v),
        ["apis", g, v] => gv_doc(inner, g, v),
        _ => None,
    };
    match doc {
        Some(d) => json_response(200, &d),
        None => error_response(&ApiError::no_resource()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_schema_drops_what_v2_cannot_say() {
        let s = json!({"type": "object", "nullable": true, "properties": {
            "any": {"type": "object", "x-kubernetes-preserve-unknown-fields": true, "properties": {"a": {"type": "string"}}},
            "port": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
            "list": {"type": "array", "items": {"type": "string", "nullable": true}},
            "rule": {"type": "string", "x-kubernetes-validations": [{"rule": "self != ''"}]}}});
        let v = v2_schema(&s);
        assert!(v.get("nullable").is_none());
        assert_eq!(v["properties"]["any"], json!({"x-kubernetes-preserve-unknown-fields": true}));
        assert_eq!(v["properties"]["port"], json!({"x-kubernetes-int-or-string": true}));
        assert_eq!(v["properties"]["list"], json!({"type": "array", "items": {"type": "string"}}));
        assert_eq!(v["properties"]["rule"], json!({"type": "string"}));
    }
}
