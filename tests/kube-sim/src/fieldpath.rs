//! Field sets in the structured-merge-diff model: path elements (`f:`, `k:`,
//! `v:`, `i:`), sets of paths, their `fieldsV1` JSON encoding, the set of
//! fields an object sets under a schema, and comparisons between objects.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Map, Value};

use crate::schema::{ListKind, Schema};

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathElement {
    /// A struct field or map key.
    Field(String),
    /// An associative list item, identified by its key fields (canonical JSON object).
    Key(String),
    /// A set item (canonical JSON value).
    Value(String),
    /// A list index (atomic lists never need it; kept for completeness).
    Index(usize),
}

impl PathElement {
    /// The `fieldsV1` key (`f:name`, `k:{...}`, `v:...`, `i:N`).
    pub fn encode(&self) -> String {
        match self {
            PathElement::Field(f) => format!("f:{f}"),
            PathElement::Key(k) => format!("k:{k}"),
            PathElement::Value(v) => format!("v:{v}"),
            PathElement::Index(i) => format!("i:{i}"),
        }
    }

    /// Parse a `fieldsV1` key.
    pub fn decode(s: &str) -> Option<PathElement> {
        let (p, rest) = s.split_at_checked(2)?;
        match p {
            "f:" => Some(PathElement::Field(rest.to_string())),
            "k:" => serde_json::from_str::<Value>(rest).ok().map(|v| PathElement::Key(canonical(&v))),
            "v:" => serde_json::from_str::<Value>(rest).ok().map(|v| PathElement::Value(canonical(&v))),
            "i:" => rest.parse().ok().map(PathElement::Index),
            _ => None,
        }
    }
}

impl fmt::Display for PathElement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathElement::Field(n) => write!(f, ".{n}"),
            PathElement::Key(k) => {
                let v: Value = serde_json::from_str(k).unwrap_or(Value::Null);
                let parts: Vec<String> = v
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| format!("{k}={}", compact(v))).collect())
                    .unwrap_or_default();
                write!(f, "[{}]", parts.join(","))
            }
            PathElement::Value(v) => write!(f, "[={v}]"),
            PathElement::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// A path from the object root.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Path(pub Vec<PathElement>);

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// JSON with object keys sorted, compact: the form of `k:` and `v:` elements.
pub fn canonical(v: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: BTreeMap<&String, Value> = m.iter().map(|(k, v)| (k, sort(v))).collect();
                let mut out = Map::new();
                for (k, v) in sorted {
                    out.insert(k.clone(), v);
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            o => o.clone(),
        }
    }
    compact(&sort(v))
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// A set of paths, as a trie: `members` are the paths ending here, `children`
/// the subtrees.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSet {
    pub members: BTreeSet<PathElement>,
    pub children: BTreeMap<PathElement, FieldSet>,
}

impl FieldSet {
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.children.is_empty()
    }

    /// Insert a path.
    pub fn insert(&mut self, path: &[PathElement]) {
        match path {
            [] => {}
            [last] => {
                self.members.insert(last.clone());
            }
            [first, rest @ ..] => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }

    pub fn union(&self, o: &FieldSet) -> FieldSet {
        let mut r = self.clone();
        r.union_with(o);
        r
    }

    pub fn union_with(&mut self, o: &FieldSet) {
        self.members.extend(o.members.iter().cloned());
        for (k, c) in &o.children {
            self.children.entry(k.clone()).or_default().union_with(c);
        }
    }

    /// Paths in self that are not in o.
    pub fn difference(&self, o: &FieldSet) -> FieldSet {
        let mut r = FieldSet {
            members: self.members.difference(&o.members).cloned().collect(),
            children: BTreeMap::new(),
        };
        for (k, c) in &self.children {
            let d = match o.children.get(k) {
                Some(oc) => c.difference(oc),
                None => c.clone(),
            };
            if !d.is_empty() {
                r.children.insert(k.clone(), d);
            }
        }
        r
    }

    pub fn intersection(&self, o: &FieldSet) -> FieldSet {
        let mut r = FieldSet {
            members: self.members.intersection(&o.members).cloned().collect(),
            children: BTreeMap::new(),
        };
        for (k, c) in &self.children {
            if let Some(oc) = o.children.get(k) {
                let i = c.intersection(oc);
                if !i.is_empty() {
                    r.children.insert(k.clone(), i);
                }
            }
        }
        r
    }

    /// Whether the path is a member.
    pub fn has(&self, path: &[PathElement]) -> bool {
        match path {
            [] => false,
            [last] => self.members.contains(last),
            [first, rest @ ..] => self.children.get(first).is_some_and(|c| c.has(rest)),
        }
    }

    /// Whether the path, or any path below it, is a member.
    pub fn has_or_below(&self, path: &[PathElement]) -> bool {
        match path {
            [] => !self.is_empty(),
            [last] => self.members.contains(last) || self.children.get(last).is_some_and(|c| !c.is_empty()),
            [first, rest @ ..] => self.children.get(first).is_some_and(|c| c.has_or_below(rest)),
        }
    }

    /// Every member path, in order.
    pub fn paths(&self) -> Vec<Path> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Vec<PathElement>, out: &mut Vec<Path>) {
        let mut keys: BTreeSet<&PathElement> = self.members.iter().collect();
        keys.extend(self.children.keys());
        for k in keys {
            prefix.push(k.clone());
            if self.members.contains(k) {
                out.push(Path(prefix.clone()));
            }
            if let Some(c) = self.children.get(k) {
                c.collect(prefix, out);
            }
            prefix.pop();
        }
    }

    /// Leaf paths: members that have no members below them.
    pub fn leaves(&self) -> Vec<Path> {
        self.paths().into_iter().filter(|p| self.children_of(&p.0).is_none_or(|c| c.is_empty())).collect()
    }

    fn children_of(&self, path: &[PathElement]) -> Option<&FieldSet> {
        match path {
            [] => Some(self),
            [first, rest @ ..] => self.children.get(first).and_then(|c| c.children_of(rest)),
        }
    }

    /// The `fieldsV1` JSON encoding.
    pub fn to_json(&self) -> Value {
        let mut keys: BTreeSet<&PathElement> = self.members.iter().collect();
        keys.extend(self.children.keys());
        let mut m = Map::new();
        for k in keys {
            let v = match self.children.get(k) {
                Some(c) if !c.is_empty() => {
                    let mut inner = Map::new();
                    if self.members.contains(k) {
                        inner.insert(".".into(), Value::Object(Map::new()));
                    }
                    if let Value::Object(cm) = c.to_json() {
                        inner.extend(cm);
                    }
                    Value::Object(inner)
                }
                _ => Value::Object(Map::new()),
            };
            m.insert(k.encode(), v);
        }
        Value::Object(m)
    }

    /// Decode `fieldsV1`.
    pub fn from_json(v: &Value) -> FieldSet {
        let mut s = FieldSet::default();
        if let Some(m) = v.as_object() {
            for (k, c) in m {
                if k == "." {
                    continue;
                }
                let Some(pe) = PathElement::decode(k) else { continue };
                let cm = c.as_object();
                let has_dot = cm.is_some_and(|cm| cm.contains_key("."));
                let empty = cm.is_none_or(|cm| cm.is_empty());
                if empty || has_dot {
                    s.members.insert(pe.clone());
                }
                if !empty {
                    let child = FieldSet::from_json(c);
                    if !child.is_empty() {
                        s.children.insert(pe, child);
                    }
                }
            }
        }
        s
    }
}

/// Compute the key path element of an associative list item.
pub fn item_key(item: &Value, kind: &ListKind) -> Option<PathElement> {
    match kind {
        ListKind::Set => Some(PathElement::Value(canonical(item))),
        ListKind::Map(keys) => {
            let obj = item.as_object()?;
            let mut m = Map::new();
            let mut sorted: Vec<&(String, Option<Value>)> = keys.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(&b.0));
            for (k, d) in sorted {
                match obj.get(k).filter(|v| !v.is_null()).or(d.as_ref()) {
                    Some(v) => {
                        m.insert(k.clone(), v.clone());
                    }
                    None => return None,
                }
            }
            Some(PathElement::Key(canonical(&Value::Object(m))))
        }
        ListKind::Atomic => None,
    }
}

/// The set of fields an object sets under a schema (SMD's ToFieldSet).
pub fn to_field_set(v: &Value, schema: &Schema) -> FieldSet {
    walk(v, schema).1
}

/// Returns (the node itself is a member, its children).
fn walk(v: &Value, schema: &Schema) -> (bool, FieldSet) {
    if schema.is_atomic() {
        return (true, FieldSet::default());
    }
    match v {
        Value::Object(m) => {
            let mut set = FieldSet::default();
            for (k, cv) in m {
                let (cs, declared) = schema.field(k);
                let pe = PathElement::Field(k.clone());
                let (member, children) = walk(cv, &cs);
                let empty_obj = cv.is_null() || cv.as_object().is_some_and(|o| o.is_empty());
                if member || empty_obj || !declared {
                    set.members.insert(pe.clone());
                }
                if !children.is_empty() {
                    set.children.insert(pe, children);
                }
            }
            (false, set)
        }
        Value::Array(items) => match schema.list() {
            Some((kind @ (ListKind::Map(_) | ListKind::Set), elem)) => {
                let mut set = FieldSet::default();
                for (i, item) in items.iter().enumerate() {
                    let pe = item_key(item, kind).unwrap_or(PathElement::Index(i));
                    let (_, children) = if matches!(kind, ListKind::Map(_)) {
                        walk(item, elem)
                    } else {
                        (true, FieldSet::default())
                    };
                    set.members.insert(pe.clone());
                    if !children.is_empty() {
                        set.children.insert(pe, children);
                    }
                }
                (false, set)
            }
            _ => (true, FieldSet::default()),
        },
        _ => (true, FieldSet::default()),
    }
}

/// Differences between two objects, as sets: Added, Removed, Modified (leaves).
#[derive(Debug, Default)]
pub struct Comparison {
    pub added: FieldSet,
    pub removed: FieldSet,
    pub modified: FieldSet,
}

impl Comparison {
    pub fn changed(&self) -> FieldSet {
        self.added.union(&self.modified)
    }
}

/// Compare two objects under a schema.
pub fn compare(old: &Value, new: &Value, schema: &Schema) -> Comparison {
    let a = to_field_set(old, schema);
    let b = to_field_set(new, schema);
    let mut c =
        Comparison { added: b.difference(&a), removed: a.difference(&b), modified: FieldSet::default() };
    // a granular map that appears is itself added (SMD reports the map's own path)
    added_maps(old, new, schema, &mut Vec::new(), &mut c.added);
    let both = a.intersection(&b);
    for p in both.leaves() {
        if get_path(old, &p.0, schema) != get_path(new, &p.0, schema) {
            c.modified.insert(&p.0);
        }
    }
    c
}

fn added_maps(old: &Value, new: &Value, schema: &Schema, prefix: &mut Vec<PathElement>, out: &mut FieldSet) {
    if schema.is_atomic() {
        return;
    }
    if let Value::Object(nm) = new {
        for (k, nv) in nm {
            let (cs, _) = schema.field(k);
            let ov = old.as_object().and_then(|o| o.get(k));
            prefix.push(PathElement::Field(k.clone()));
            if matches!(cs, Schema::Map(_)) && nv.is_object() && ov.is_none_or(Value::is_null) {
                out.insert(prefix);
            }
            if nv.is_object() {
                added_maps(ov.unwrap_or(&Value::Null), nv, &cs, prefix, out);
            } else if let (Value::Array(items), Some((kind @ ListKind::Map(_), elem))) = (nv, cs.list()) {
                for it in items {
                    if let Some(pe) = item_key(it, kind) {
                        let old_item = ov
                            .and_then(Value::as_array)
                            .and_then(|a| a.iter().find(|o| item_key(o, kind).as_ref() == Some(&pe)));
                        prefix.push(pe);
                        added_maps(old_item.unwrap_or(&Value::Null), it, elem, prefix, out);
                        prefix.pop();
                    }
                }
            }
            prefix.pop();
        }
    }
}

/// The value at a path.
pub fn get_path<'a>(v: &'a Value, path: &[PathElement], schema: &Schema) -> Option<&'a Value> {
    let mut cur = v;
    let mut s = schema.clone();
    for pe in path {
        match pe {
            PathElement::Field(f) => {
                let (cs, _) = s.field(f);
                cur = cur.as_object()?.get(f)?;
                s = cs;
            }
            PathElement::Key(_) | PathElement::Value(_) => {
                let (kind, elem) = s.list().map(|(k, e)| (k.clone(), e.clone()))?;
                cur = cur.as_array()?.iter().find(|it| item_key(it, &kind).as_ref() == Some(pe))?;
                s = elem;
            }
            PathElement::Index(i) => {
                cur = cur.as_array()?.get(*i)?;
                s = Schema::Open;
            }
        }
    }
    Some(cur)
}

/// Remove the value at a path; returns whether something was removed.
pub fn remove_path(v: &mut Value, path: &[PathElement], schema: &Schema) -> bool {
    match path {
        [] => false,
        [last] => match last {
            PathElement::Field(f) => v.as_object_mut().is_some_and(|m| m.shift_remove(f).is_some()),
            PathElement::Key(_) | PathElement::Value(_) => {
                let Some((kind, _)) = schema.list() else { return false };
                let kind = kind.clone();
                match v.as_array_mut() {
                    Some(a) => {
                        let before = a.len();
                        a.retain(|it| item_key(it, &kind).as_ref() != Some(last));
                        a.len() != before
                    }
                    None => false,
                }
            }
            PathElement::Index(i) => match v.as_array_mut() {
                Some(a) if *i < a.len() => {
                    a.remove(*i);
                    true
                }
                _ => false,
            },
        },
        [first, rest @ ..] => match first {
            PathElement::Field(f) => {
                let (cs, _) = schema.field(f);
                match v.as_object_mut().and_then(|m| m.get_mut(f)) {
                    Some(c) => remove_path(c, rest, &cs),
                    None => false,
                }
            }
            PathElement::Key(_) | PathElement::Value(_) => {
                let Some((kind, elem)) = schema.list().map(|(k, e)| (k.clone(), e.clone())) else {
                    return false;
                };
                match v
                    .as_array_mut()
                    .and_then(|a| a.iter_mut().find(|it| item_key(it, &kind).as_ref() == Some(first)))
                {
                    Some(c) => remove_path(c, rest, &elem),
                    None => false,
                }
            }
            PathElement::Index(i) => match v.as_array_mut().and_then(|a| a.get_mut(*i)) {
                Some(c) => remove_path(c, rest, &Schema::Open),
                None => false,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema;
    use serde_json::json;

    #[test]
    fn deployment_field_set_matches_apiserver_shape() {
        let s = schema::builtin("apps", "Deployment");
        let obj = json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "nginx", "image": "nginx:1", "ports": [{"containerPort": 80}]}]}}}
        });
        let fs = to_field_set(&obj, &s);
        let j = fs.to_json();
        assert_eq!(
            j,
            json!({
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {"f:replicas": {}, "f:selector": {}, "f:template": {
                    "f:metadata": {"f:labels": {"f:app": {}}},
                    "f:spec": {"f:containers": {"k:{\"name\":\"nginx\"}": {
                        ".": {}, "f:image": {}, "f:name": {},
                        "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}}
                    }}}
                }}
            })
        );
        assert_eq!(FieldSet::from_json(&j), fs);
        let paths: Vec<String> = fs.leaves().iter().map(|p| p.to_string()).collect();
        assert!(paths.contains(&".spec.replicas".to_string()));
        assert!(paths.contains(&".spec.template.spec.containers[name=\"nginx\"].image".to_string()));
    }

    #[test]
    fn compare_and_remove() {
        let s = schema::builtin("", "ConfigMap");
        let a = json!({"data": {"a": "1", "b": "2"}});
        let b = json!({"data": {"a": "1", "b": "3", "c": "4"}});
        let c = compare(&a, &b, &s);
        assert_eq!(c.modified.paths()[0].to_string(), ".data.b");
        assert_eq!(c.added.paths()[0].to_string(), ".data.c");
        let mut b2 = b.clone();
        assert!(remove_path(&mut b2, &c.added.paths()[0].0, &s));
        assert_eq!(b2, json!({"data": {"a": "1", "b": "3"}}));
    }
}
