//! Custom resources against their CRD's OpenAPI v3 schema, the way the
//! apiextensions server does it: structural defaulting (`default`), then value
//! validation (type, required, enum, bounds, lengths, pattern, items, nullable)
//! with the API server's messages.

use serde_json::{Map, Value, json};

use crate::status::Cause;

fn ty_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        o => o.to_string(),
    }
}

/// Fill `default`s of missing properties (recursively), like structural defaulting.
pub fn apply_defaults(v: &mut Value, s: &Value) {
    match v {
        Value::Object(m) => {
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                for (k, ps) in props {
                    if !m.contains_key(k)
                        && let Some(d) = ps.get("default")
                    {
                        m.insert(k.clone(), d.clone());
                    }
                    if let Some(child) = m.get_mut(k) {
                        apply_defaults(child, ps);
                    }
                }
            } else if let Some(ap) = s.get("additionalProperties").filter(|a| a.is_object()) {
                for child in m.values_mut() {
                    apply_defaults(child, ap);
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = s.get("items") {
                for it in a.iter_mut() {
                    apply_defaults(it, items);
                }
            }
        }
        _ => {}
    }
}

/// Validate a custom resource (metadata excluded) against its schema.
pub fn validate(v: &Value, s: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    if let Value::Object(m) = v {
        let mut body = Map::new();
        for (k, x) in m {
            if k != "metadata" && k != "apiVersion" && k != "kind" {
                body.insert(k.clone(), x.clone());
            }
        }
        let mut root = s.clone();
        if let Some(req) = root.get_mut("required").and_then(Value::as_array_mut) {
            req.retain(|r| !matches!(r.as_str(), Some("metadata" | "apiVersion" | "kind")));
        }
        if let Some(p) = root.get_mut("properties").and_then(Value::as_object_mut) {
            p.shift_remove("metadata");
            p.shift_remove("apiVersion");
            p.shift_remove("kind");
        }
        check(&Value::Object(body), &root, "", &mut out);
    }
    out
}

fn invalid(path: &str, v: &Value, msg: String) -> Cause {
    Cause {
        reason: "FieldValueInvalid".into(),
        message: format!("Invalid value: {}: {msg}", shown(v)),
        field: path.into(),
    }
}

/// maxItems / maxProperties exceeded (the API server says "items" for both).
fn too_many(path: &str, n: usize, max: u64) -> Cause {
    Cause {
        reason: "FieldValueTooMany".into(),
        message: format!("Too many: {n}: must have at most {max} items"),
        field: path.into(),
    }
}

fn check(v: &Value, s: &Value, path: &str, out: &mut Vec<Cause>) {
    let p = if path.is_empty() { "<root>" } else { path };
    if v.is_null() {
        if s.get("nullable").and_then(Value::as_bool) == Some(true) {
            return;
        }
        // nulls of non-nullable fields are pruned by the server before validation
        return;
    }
    let int_or_string = s.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true);
    if int_or_string {
        if !matches!(ty_name(v), "integer" | "string") {
            out.push(invalid(
                p,
                &json!(ty_name(v)),
                format!("{p} in body must be of type integer,string: {:?}", ty_name(v)),
            ));
        }
        return;
    }
    if let Some(ty) = s.get("type").and_then(Value::as_str) {
        let actual = ty_name(v);
        let ok = actual == ty || (ty == "number" && actual == "integer");
        if !ok {
            out.push(invalid(p, &json!(actual), format!("{p} in body must be of type {ty}: {:?}", actual)));
            return;
        }
    }
    if let Some(en) = s.get("enum").and_then(Value::as_array)
        && !en.contains(v)
    {
        let supported: Vec<String> = en.iter().map(shown).collect();
        out.push(Cause {
            reason: "FieldValueNotSupported".into(),
            message: format!("Unsupported value: {}: supported values: {}", shown(v), supported.join(", ")),
            field: p.into(),
        });
    }
    match v {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
                let excl = s.get("exclusiveMinimum").and_then(Value::as_bool) == Some(true);
                if x < min || (excl && x == min) {
                    let op = if excl { "greater than" } else { "greater than or equal to" };
                    out.push(invalid(
                        p,
                        v,
                        format!(
                            "{p} in body should be {op} {}",
                            json!(min).as_f64().map(fmt_num).unwrap_or_default()
                        ),
                    ));
                }
            }
            if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
                let excl = s.get("exclusiveMaximum").and_then(Value::as_bool) == Some(true);
                if x > max || (excl && x == max) {
                    let op = if excl { "less than" } else { "less than or equal to" };
                    out.push(invalid(p, v, format!("{p} in body should be {op} {}", fmt_num(max))));
                }
            }
        }
        Value::String(st) => {
            let len = st.chars().count() as u64;
            if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
                && len > max
            {
                out.push(Cause {
                    reason: "FieldValueTooLong".into(),
                    message: format!("Too long: may not be more than {max} bytes"),
                    field: p.into(),
                });
            }
            if let Some(min) = s.get("minLength").and_then(Value::as_u64)
                && len < min
            {
                out.push(invalid(p, v, format!("{p} in body should be at least {min} chars long")));
            }
            if let Some(pat) = s.get("pattern").and_then(Value::as_str)
                && let Ok(re) = regex::Regex::new(pat)
                && !re.is_match(st)
            {
                out.push(invalid(p, v, format!("{p} in body should match '{pat}'")));
            }
        }
        Value::Array(a) => {
            if let Some(max) = s.get("maxItems").and_then(Value::as_u64)
                && a.len() as u64 > max
            {
                out.push(too_many(p, a.len(), max));
            }
            if let Some(min) = s.get("minItems").and_then(Value::as_u64)
                && (a.len() as u64) < min
            {
                out.push(invalid(p, v, format!("{p} in body should have at least {min} items")));
            }
            if let Some(items) = s.get("items") {
                for (i, it) in a.iter().enumerate() {
                    check(it, items, &format!("{path}[{i}]"), out);
                }
            }
        }
        Value::Object(m) => {
            for r in
                s.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str)
            {
                if m.get(r).is_none_or(Value::is_null) {
                    let f = if path.is_empty() { r.to_string() } else { format!("{path}.{r}") };
                    out.push(Cause {
                        reason: "FieldValueRequired".into(),
                        message: "Required value".into(),
                        field: f,
                    });
                }
            }
            let props = s.get("properties").and_then(Value::as_object);
            let addl = s.get("additionalProperties").filter(|a| a.is_object());
            for (k, cv) in m {
                let cp = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                if let Some(ps) = props.and_then(|p| p.get(k)) {
                    check(cv, ps, &cp, out);
                } else if let Some(ap) = addl {
                    check(cv, ap, &cp, out);
                }
            }
            if let Some(max) = s.get("maxProperties").and_then(Value::as_u64)
                && m.len() as u64 > max
            {
                out.push(too_many(p, m.len(), max));
            }
        }
        _ => {}
    }
}

fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 { format!("{}", x as i64) } else { format!("{x}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {"spec": {"type": "object", "required": ["size"], "properties": {
            "size": {"type": "integer", "minimum": 1},
            "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
            "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
            "port": {"x-kubernetes-int-or-string": true}}}}})
    }

    #[test]
    fn defaults_and_validation() {
        let mut v =
            json!({"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "w"}, "spec": {"size": 2}});
        apply_defaults(&mut v, &schema());
        assert_eq!(v["spec"]["mode"], "a");
        assert!(validate(&v, &schema()).is_empty());
        let bad = json!({"spec": {"size": "two", "mode": "c", "name": "ABCDEFG", "port": true}});
        let c = validate(&bad, &schema());
        let msgs: Vec<String> = c.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        assert!(msgs.contains(&"spec.size: Invalid value: \"string\": spec.size in body must be of type integer: \"string\"".to_string()), "{msgs:?}");
        assert!(
            msgs.contains(&"spec.mode: Unsupported value: \"c\": supported values: \"a\", \"b\"".to_string()),
            "{msgs:?}"
        );
        assert!(msgs.iter().any(|m| m.starts_with("spec.name: Too long")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.contains("should match '^[a-z]+$'")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.starts_with("spec.port: Invalid value")), "{msgs:?}");
        let missing = validate(&json!({"spec": {}}), &schema());
        assert_eq!(missing[0].field, "spec.size");
        assert_eq!(missing[0].message, "Required value");
        let low = validate(&json!({"spec": {"size": 0}}), &schema());
        assert_eq!(
            low[0].message,
            "Invalid value: 0: spec.size in body should be greater than or equal to 1"
        );
    }
}
