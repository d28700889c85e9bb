//! `/openapi/v3` (and a minimal `/openapi/v2`): one document per
//! group/version with the PATCH operations and their query parameters, so that
//! kubectl detects server-side field validation; CRD schemas are included.

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

/// Serve `/openapi/v2` and `/openapi/v3[/...]`.
pub fn serve(inner: &Arc<Inner>, path: &str, _headers: &HeaderMap) -> Response<Body> {
    if path == "/openapi/v2" {
        // kubectl only needs v2 when v3 is missing; an empty document is valid
        return json_response(
            200,
            &json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": {}, "definitions": {}}),
        );
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
