//! Patches other than apply: JSON merge patch (RFC 7386), JSON patch
//! (RFC 6902, via the json-patch crate) and strategic merge patch for built-in
//! types, with the directives kubectl's client-side apply sends (`$patch`,
//! `$setElementOrder/`, `$deleteFromPrimitiveList/`, `$retainKeys`).

use serde_json::{Map, Value};

use crate::fieldpath::item_key;
use crate::schema::{ListKind, Schema};

/// The patch types the API server accepts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        let ct = ct.split(';').next().unwrap_or("").trim();
        match ct {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml"
            | "application/apply-patch+json"
            | "application/apply-patch+cbor" => Some(PatchType::Apply),
            _ => None,
        }
    }
}

/// JSON merge patch.
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    let mut t = target.clone();
    json_patch::merge(&mut t, patch);
    t
}

/// JSON patch.
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, String> {
    let p: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| format!("invalid JSON patch: {e}"))?;
    let mut t = target.clone();
    json_patch::patch(&mut t, &p).map_err(|e| e.to_string())?;
    Ok(t)
}

/// Strategic merge patch.
pub fn strategic(target: &Value, patch: &Value, s: &Schema) -> Result<Value, String> {
    match smp(Some(target), patch, s)? {
        Some(v) => Ok(v),
        None => Ok(Value::Object(Map::new())),
    }
}

fn smp_schema_obj(s: &Schema) -> Schema {
    // SMP merges maps even where SSA treats the struct as atomic.
    if s.is_atomic() { Schema::Open } else { s.clone() }
}

/// Returns None when the node is deleted.
fn smp(target: Option<&Value>, patch: &Value, s: &Schema) -> Result<Option<Value>, String> {
    let Value::Object(p) = patch else { return Ok(Some(patch.clone())) };
    let s = smp_schema_obj(s);
    match p.get("$patch").and_then(Value::as_str) {
        Some("delete") => return Ok(None),
        Some("replace") => {
            let mut r = p.clone();
            r.shift_remove("$patch");
            return Ok(Some(Value::Object(r)));
        }
        _ => {}
    }
    let mut out = match target {
        Some(Value::Object(t)) => t.clone(),
        _ => Map::new(),
    };
    let mut orders: Vec<(String, &Vec<Value>)> = Vec::new();
    for (k, pv) in p {
        if k == "$patch" || k == "$retainKeys" {
            continue;
        }
        if let Some(f) = k.strip_prefix("$setElementOrder/") {
            if let Value::Array(a) = pv {
                orders.push((f.to_string(), a));
            }
            continue;
        }
        if let Some(f) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(cur)), Value::Array(del)) = (out.get_mut(f), pv) {
                cur.retain(|x| !del.contains(x));
            }
            continue;
        }
        if pv.is_null() {
            out.shift_remove(k);
            continue;
        }
        let (cs, _) = s.field(k);
        let merged = match pv {
            Value::Object(_) => smp(out.get(k), pv, &cs)?,
            Value::Array(items) => Some(smp_list(out.get(k), items, &cs)?),
            _ => Some(pv.clone()),
        };
        match merged {
            Some(v) => {
                out.insert(k.clone(), v);
            }
            None => {
                out.shift_remove(k);
            }
        }
    }
    for (f, order) in orders {
        let (cs, _) = s.field(&f);
        if let Some(Value::Array(cur)) = out.get_mut(&f) {
            reorder(cur, order, &cs);
        }
    }
    if let Some(Value::Array(keep)) = p.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(Some(Value::Object(out)))
}

fn merge_key(s: &Schema) -> Option<(String, ListKind)> {
    match s.list() {
        Some((ListKind::Map(keys), _)) => {
            keys.first().map(|(k, _)| (k.clone(), ListKind::Map(vec![(k.clone(), None)])))
        }
        Some((ListKind::Set, _)) => Some((String::new(), ListKind::Set)),
        _ => None,
    }
}

fn smp_list(target: Option<&Value>, items: &[Value], s: &Schema) -> Result<Value, String> {
    let Some((_, kind)) = merge_key(s) else {
        // atomic: the patch replaces the list (minus directive items)
        return Ok(Value::Array(items.iter().filter(|i| i.get("$patch").is_none()).cloned().collect()));
    };
    if items.iter().any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace")) {
        return Ok(Value::Array(items.iter().filter(|i| i.get("$patch").is_none()).cloned().collect()));
    }
    let elem = s.list().map(|(_, e)| e.clone()).unwrap_or(Schema::Open);
    let mut out: Vec<Value> = match target {
        Some(Value::Array(a)) => a.clone(),
        _ => vec![],
    };
    for it in items {
        let key = item_key(it, &kind);
        let pos = key.as_ref().and_then(|k| out.iter().position(|o| item_key(o, &kind).as_ref() == Some(k)));
        if it.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(pos) = pos {
                out.remove(pos);
            }
            continue;
        }
        match (pos, &kind) {
            (Some(_), ListKind::Set) => {}
            (Some(pos), _) => {
                if let Some(v) = smp(Some(&out[pos]), it, &elem)? {
                    out[pos] = v;
                } else {
                    out.remove(pos);
                }
            }
            (None, _) => {
                let v = smp(None, it, &elem)?.unwrap_or(Value::Null);
                if !v.is_null() {
                    out.push(v);
                }
            }
        }
    }
    Ok(Value::Array(out))
}

fn reorder(cur: &mut Vec<Value>, order: &[Value], s: &Schema) {
    let Some((_, kind)) = merge_key(s) else { return };
    let keys: Vec<_> = order.iter().filter_map(|o| item_key(o, &kind)).collect();
    let mut listed: Vec<(usize, Value)> = Vec::new();
    let mut rest = Vec::new();
    for it in cur.drain(..) {
        match item_key(&it, &kind).and_then(|k| keys.iter().position(|x| *x == k)) {
            Some(p) => listed.push((p, it)),
            None => rest.push(it),
        }
    }
    listed.sort_by_key(|(p, _)| *p);
    cur.extend(listed.into_iter().map(|(_, v)| v));
    cur.extend(rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema;
    use serde_json::json;

    #[test]
    fn strategic_merges_containers_by_name() {
        let s = schema::builtin("apps", "Deployment");
        let live = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b:1"}]}}}});
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
            "containers": [{"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]}, {"name": "b", "$patch": "delete"}]}}}});
        let out = strategic(&live, &patch, &s).unwrap();
        let cs = out["spec"]["template"]["spec"]["containers"].as_array().unwrap();
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0]["image"], "a:2");
        assert_eq!(cs[0]["env"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn merge_and_json_patch() {
        let t = json!({"a": 1, "b": {"c": 2}});
        assert_eq!(merge_patch(&t, &json!({"b": {"c": null, "d": 3}})), json!({"a": 1, "b": {"d": 3}}));
        assert_eq!(json_patch(&t, &json!([{"op": "replace", "path": "/a", "value": 5}])).unwrap()["a"], 5);
    }
}
