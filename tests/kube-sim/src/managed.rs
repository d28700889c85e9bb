//! Server-side apply and field ownership: `metadata.managedFields` entries per
//! manager (Apply / Update, per subresource), the apply merge with conflict
//! detection, force, removal of fields a manager stopped applying, and the
//! ownership bookkeeping of ordinary updates.

use serde_json::{Map, Value, json};

use crate::fieldpath::{self, FieldSet, Path, PathElement, compare, item_key, remove_path, to_field_set};
use crate::schema::{ListKind, Schema};

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    /// "Apply" or "Update".
    pub operation: String,
    pub api_version: String,
    pub time: Option<String>,
    pub subresource: String,
    pub set: FieldSet,
}

impl Entry {
    fn same_identity(&self, manager: &str, operation: &str, api_version: &str, subresource: &str) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource == subresource
            && (operation == "Apply" || self.api_version == api_version)
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), json!(self.manager));
        m.insert("operation".into(), json!(self.operation));
        m.insert("apiVersion".into(), json!(self.api_version));
        if let Some(t) = &self.time {
            m.insert("time".into(), json!(t));
        }
        m.insert("fieldsType".into(), json!("FieldsV1"));
        m.insert("fieldsV1".into(), self.set.to_json());
        if !self.subresource.is_empty() {
            m.insert("subresource".into(), json!(self.subresource));
        }
        Value::Object(m)
    }

    /// How the API server names a manager in conflict messages.
    pub fn display(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s = format!("{s} with subresource {:?}", self.subresource);
        }
        if self.operation == "Update" {
            match &self.time {
                Some(t) => s = format!("{s} using {} at {t}", self.api_version),
                None => s = format!("{s} using {}", self.api_version),
            }
        }
        s
    }
}

/// Read `metadata.managedFields`.
pub fn read(obj: &Value) -> Vec<Entry> {
    let Some(a) = obj.pointer("/metadata/managedFields").and_then(Value::as_array) else { return vec![] };
    a.iter()
        .filter_map(|e| {
            Some(Entry {
                manager: e.get("manager")?.as_str()?.to_string(),
                operation: e.get("operation").and_then(Value::as_str).unwrap_or("Update").to_string(),
                api_version: e.get("apiVersion").and_then(Value::as_str).unwrap_or("").to_string(),
                time: e.get("time").and_then(Value::as_str).map(str::to_string),
                subresource: e.get("subresource").and_then(Value::as_str).unwrap_or("").to_string(),
                set: FieldSet::from_json(e.get("fieldsV1").unwrap_or(&Value::Null)),
            })
        })
        .collect()
}

/// Write `metadata.managedFields` (sorted like the API server: operation, time, manager).
pub fn write(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.set.is_empty());
    entries.sort_by(|a, b| {
        (
            a.operation.as_str(),
            a.time.as_deref().unwrap_or(""),
            a.manager.as_str(),
            a.api_version.as_str(),
            a.subresource.as_str(),
        )
            .cmp(&(
                b.operation.as_str(),
                b.time.as_deref().unwrap_or(""),
                b.manager.as_str(),
                b.api_version.as_str(),
                b.subresource.as_str(),
            ))
    });
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if entries.is_empty() {
            meta.shift_remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(entries.iter().map(Entry::to_json).collect()));
        }
    }
}

/// Metadata fields that never take part in field ownership.
const STRIPPED_META: &[&str] = &[
    "name",
    "namespace",
    "generateName",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// The object as field ownership sees it: no apiVersion/kind, no
/// server-owned metadata, and only the part a (sub)resource may change.
pub fn strip(obj: &Value, scope: Scope) -> Value {
    // copy only what is kept (the object may be large: clone-then-remove would copy it all)
    let Some(m) = obj.as_object() else { return obj.clone() };
    let mut out = Map::new();
    for (k, v) in m {
        let keep = match scope {
            Scope::Status => k == "status",
            Scope::Main { has_status } => k != "apiVersion" && k != "kind" && !(has_status && k == "status"),
        };
        if !keep {
            continue;
        }
        if k == "metadata"
            && let Some(meta) = v.as_object()
        {
            let kept: Map<String, Value> = meta
                .iter()
                .filter(|(f, _)| !STRIPPED_META.contains(&f.as_str()))
                .map(|(f, x)| (f.clone(), x.clone()))
                .collect();
            if !kept.is_empty() {
                out.insert(k.clone(), Value::Object(kept));
            }
            continue;
        }
        out.insert(k.clone(), v.clone());
    }
    Value::Object(out)
}

/// Which part of an object a request may change.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    Main { has_status: bool },
    Status,
}

/// One field conflict.
#[derive(Debug, Clone)]
pub struct Conflict {
    pub manager: String,
    pub path: Path,
}

/// The `Apply failed with N conflict(s)` message of the API server.
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    if conflicts.len() == 1 {
        return format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            conflicts[0].manager, conflicts[0].path
        );
    }
    let mut by: Vec<(String, Vec<String>)> = Vec::new();
    for c in conflicts {
        match by.iter_mut().find(|(m, _)| *m == c.manager) {
            Some((_, ps)) => ps.push(c.path.to_string()),
            None => by.push((c.manager.clone(), vec![c.path.to_string()])),
        }
    }
    by.sort_by(|a, b| a.0.cmp(&b.0));
    let mut lines = Vec::new();
    for (m, ps) in by {
        lines.push(format!("conflicts with {m}:"));
        for p in ps {
            lines.push(format!("- {p}"));
        }
    }
    format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
}

/// Merge an apply configuration into a live object (SMD merge).
pub fn merge(live: &Value, cfg: &Value, s: &Schema) -> Value {
    if s.is_atomic() {
        return cfg.clone();
    }
    merge_values(live.clone(), cfg.clone(), s)
}

/// [`merge`] consuming both sides: no node is copied.
fn merge_values(live: Value, cfg: Value, s: &Schema) -> Value {
    if s.is_atomic() {
        return cfg;
    }
    match (live, cfg) {
        (Value::Object(mut out), Value::Object(c)) => {
            for (k, cv) in c {
                let (cs, _) = s.field(&k);
                match out.get_mut(&k) {
                    Some(lv) => {
                        let l = std::mem::take(lv);
                        *lv = merge_values(l, cv, &cs);
                    }
                    None => {
                        out.insert(k, cv);
                    }
                }
            }
            Value::Object(out)
        }
        (Value::Array(mut out), Value::Array(c)) => match s.list() {
            Some((kind @ (ListKind::Map(_) | ListKind::Set), elem)) => {
                // keys of the items so far (live items, then appended config items)
                let mut keys: Vec<Option<PathElement>> = out.iter().map(|li| item_key(li, kind)).collect();
                for ci in c {
                    let key = item_key(&ci, kind);
                    match key.as_ref().and_then(|k| keys.iter().position(|lk| lk.as_ref() == Some(k))) {
                        Some(pos) => {
                            if matches!(kind, ListKind::Map(_)) {
                                let l = std::mem::take(&mut out[pos]);
                                out[pos] = merge_values(l, ci, elem);
                                keys[pos] = item_key(&out[pos], kind);
                            }
                        }
                        None => {
                            out.push(ci);
                            keys.push(key);
                        }
                    }
                }
                Value::Array(out)
            }
            _ => Value::Array(c),
        },
        (_, c) => c,
    }
}

/// Remove nulls from an apply configuration (they carry no value to own).
pub fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            for v in m.values_mut() {
                drop_nulls(v);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// The request to apply.
pub struct ApplyRequest<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    pub subresource: &'a str,
    pub force: bool,
    pub now: &'a str,
    pub scope: Scope,
}

/// Server-side apply: merge `cfg` into `live` (both full objects; `live` is
/// `{}`-like for a create), returning the new object with managedFields set,
/// or the conflicts.
pub fn apply(
    live: &Value,
    cfg: &Value,
    schema: &Schema,
    req: &ApplyRequest<'_>,
) -> Result<Value, Vec<Conflict>> {
    let mut managers = read(live);
    let live_s = strip(live, req.scope);
    let cfg_s = strip(cfg, req.scope);
    let new_set = to_field_set(&cfg_s, schema);
    let idx =
        managers.iter().position(|e| e.same_identity(req.manager, "Apply", req.api_version, req.subresource));
    let last_set = idx.map(|i| managers[i].set.clone()).unwrap_or_default();

    // 1. merge and detect conflicts with every other manager
    // the merge takes both sides by value: the stripped configuration is not needed after it
    let merged_s = if schema.is_atomic() { cfg_s } else { merge_values(live_s.clone(), cfg_s, schema) };
    let cmp = compare(&live_s, &merged_s, schema);
    let changed = cmp.changed();
    let mut conflicts = Vec::new();
    for (i, e) in managers.iter().enumerate() {
        if Some(i) == idx {
            continue;
        }
        let c = e.set.intersection(&changed);
        for p in c.leaves() {
            conflicts.push(Conflict { manager: e.display(), path: p });
        }
    }
    if !conflicts.is_empty() && !req.force {
        return Err(conflicts);
    }
    for (i, e) in managers.iter_mut().enumerate() {
        if Some(i) != idx {
            e.set = e.set.difference(&changed);
        }
    }

    // 2. the applier now owns exactly what it applied
    let set_changed = last_set != new_set;
    match idx {
        Some(i) => {
            managers[i].set = new_set.clone();
            if set_changed {
                managers[i].time = Some(req.now.to_string());
            }
            managers[i].api_version = req.api_version.to_string();
        }
        None => managers.push(Entry {
            manager: req.manager.to_string(),
            operation: "Apply".into(),
            api_version: req.api_version.to_string(),
            time: Some(req.now.to_string()),
            subresource: req.subresource.to_string(),
            set: new_set.clone(),
        }),
    }

    // 3. remove what it stopped applying, unless someone still owns it
    let mut pruned_s = merged_s;
    let dropped = last_set.difference(&new_set);
    if !dropped.is_empty() {
        let mut owned = FieldSet::default();
        for e in &managers {
            owned.union_with(&e.set);
        }
        for p in dropped.paths() {
            if !owned.has_or_below(&p.0) {
                remove_path(&mut pruned_s, &p.0, schema);
            }
        }
        let cmp2 = compare(&live_s, &pruned_s, schema);
        for e in managers.iter_mut() {
            e.set = e.set.difference(&cmp2.removed);
        }
    }

    // 4. rebuild the full object: server-owned metadata from live, the rest from the result
    let mut out = rebuild(live, cfg, pruned_s, req.scope);
    write(&mut out, managers);
    Ok(out)
}

/// Put the server-owned parts of `live` back around a stripped result.
fn rebuild(live: &Value, cfg: &Value, result_s: Value, scope: Scope) -> Value {
    let mut out = result_s;
    let om = out.as_object_mut().expect("object");
    // apiVersion/kind first, like the API server prints them
    let mut head = Map::new();
    for k in ["apiVersion", "kind"] {
        if let Some(v) = live.get(k).or_else(|| cfg.get(k)) {
            head.insert(k.into(), v.clone());
        }
    }
    // server-owned metadata
    let mut meta = live.get("metadata").and_then(Value::as_object).cloned().unwrap_or_default();
    for k in ["labels", "annotations", "finalizers", "ownerReferences"] {
        meta.shift_remove(k);
    }
    if let Some(m) = cfg.get("metadata").and_then(Value::as_object) {
        for k in ["name", "namespace", "generateName"] {
            if !meta.contains_key(k)
                && let Some(v) = m.get(k)
            {
                meta.insert(k.into(), v.clone());
            }
        }
    }
    if let Some(rm) = om.get("metadata").and_then(Value::as_object) {
        for (k, v) in rm {
            meta.insert(k.clone(), v.clone());
        }
    }
    head.insert("metadata".into(), Value::Object(meta));
    match scope {
        Scope::Main { has_status: true } => {
            om.shift_remove("status");
            if let Some(st) = live.get("status") {
                om.insert("status".into(), st.clone());
            }
        }
        Scope::Status => {
            let status = om.get("status").cloned();
            let mut base = live.clone();
            if let Some(b) = base.as_object_mut() {
                match status {
                    Some(s) => {
                        b.insert("status".into(), s);
                    }
                    None => {
                        b.shift_remove("status");
                    }
                }
            }
            return base;
        }
        Scope::Main { has_status: false } => {}
    }
    om.shift_remove("metadata");
    for (k, v) in std::mem::take(om) {
        head.insert(k, v);
    }
    Value::Object(head)
}

/// Ownership bookkeeping for an ordinary write (create, update, patch):
/// the manager takes every field it changed; others lose those fields.
#[allow(clippy::too_many_arguments)]
pub fn update(
    old: Option<&Value>,
    new: &mut Value,
    schema: &Schema,
    manager: &str,
    api_version: &str,
    subresource: &str,
    now: &str,
    scope: Scope,
) {
    let mut managers = match new.pointer("/metadata/managedFields") {
        // the client sent managedFields that differ from the live ones: take them
        Some(Value::Array(a))
            if old.is_none_or(|o| o.pointer("/metadata/managedFields") != Some(&Value::Array(a.clone()))) =>
        {
            if a.len() == 1 && a[0].as_object().is_some_and(|m| m.is_empty()) {
                vec![]
            } else {
                read(new)
            }
        }
        _ => old.map(read).unwrap_or_default(),
    };
    let empty = json!({});
    let old_s = strip(old.unwrap_or(&empty), scope);
    let new_s = strip(new, scope);
    let cmp = compare(&old_s, &new_s, schema);
    let changed = cmp.changed();
    let idx = managers.iter().position(|e| e.same_identity(manager, "Update", api_version, subresource));
    for (i, e) in managers.iter_mut().enumerate() {
        if Some(i) != idx {
            e.set = e.set.difference(&changed).difference(&cmp.removed);
        }
    }
    if !changed.is_empty() || idx.is_some() {
        match idx {
            Some(i) => {
                let s = managers[i].set.difference(&cmp.removed).union(&changed);
                if s != managers[i].set {
                    managers[i].set = s;
                    managers[i].time = Some(now.to_string());
                }
            }
            None => managers.push(Entry {
                manager: manager.to_string(),
                operation: "Update".into(),
                api_version: api_version.to_string(),
                time: Some(now.to_string()),
                subresource: subresource.to_string(),
                set: changed,
            }),
        }
    }
    write(new, managers);
}

/// Re-export for callers that print paths.
pub use fieldpath::Path as FieldPath;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema;

    const NOW: &str = "2026-01-01T00:00:00Z";

    fn req(m: &str, force: bool) -> ApplyRequest<'_> {
        ApplyRequest {
            manager: m,
            api_version: "apps/v1",
            subresource: "",
            force,
            now: NOW,
            scope: Scope::Main { has_status: true },
        }
    }

    fn deploy(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image}]}}}})
    }

    #[test]
    fn conflict_force_and_removal() {
        let s = schema::builtin("apps", "Deployment");
        let live = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"}});
        let a = apply(&live, &deploy(2, "nginx:1"), &s, &req("a", false)).unwrap();
        assert_eq!(a["spec"]["replicas"], 2);
        // same values from b: shared ownership, no conflict
        let b = apply(&a, &deploy(2, "nginx:1"), &s, &req("b", false)).unwrap();
        assert_eq!(read(&b).len(), 2);
        // b changes replicas: conflict with a
        let err = apply(&b, &deploy(3, "nginx:1"), &s, &req("b", false)).unwrap_err();
        assert_eq!(
            conflict_message(&err),
            "Apply failed with 1 conflict: conflict with \"a\": .spec.replicas"
        );
        // forced: b takes replicas, a loses it
        let c = apply(&b, &deploy(3, "nginx:1"), &s, &req("b", true)).unwrap();
        assert_eq!(c["spec"]["replicas"], 3);
        let ma = read(&c).into_iter().find(|e| e.manager == "a").unwrap();
        assert!(!ma.set.has(&[
            crate::fieldpath::PathElement::Field("spec".into()),
            crate::fieldpath::PathElement::Field("replicas".into())
        ]));
        // re-apply identical: identical object (no-op)
        let d = apply(&c, &deploy(3, "nginx:1"), &s, &req("b", false)).unwrap();
        assert_eq!(c, d);
        // b stops applying replicas: removed since a no longer owns it
        let mut cfg = deploy(3, "nginx:1");
        cfg["spec"].as_object_mut().unwrap().shift_remove("replicas");
        let e = apply(&d, &cfg, &s, &req("b", false)).unwrap();
        assert!(e["spec"].get("replicas").is_none());
        // b stops applying the image, but a co-owns it: kept
        let mut cfg2 = cfg.clone();
        cfg2["spec"]["template"]["spec"]["containers"][0].as_object_mut().unwrap().shift_remove("image");
        let f = apply(&e, &cfg2, &s, &req("b", false)).unwrap();
        assert_eq!(f["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:1");
    }

    #[test]
    fn update_takes_changed_fields() {
        let s = schema::builtin("", "ConfigMap");
        let live = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
        let a = apply(
            &live,
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"k": "1"}}),
            &s,
            &ApplyRequest {
                manager: "a",
                api_version: "v1",
                subresource: "",
                force: false,
                now: NOW,
                scope: Scope::Main { has_status: false },
            },
        )
        .unwrap();
        let mut b = a.clone();
        b["data"]["k"] = json!("2");
        update(Some(&a), &mut b, &s, "editor", "v1", "", NOW, Scope::Main { has_status: false });
        let m = read(&b);
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!(m[0].manager, "editor");
        assert_eq!(m[0].operation, "Update");
    }
}
