//! Field-level comparison of a live object with what an apply would make of it
//! (the result of a server-side dry-run apply): the field paths that differ,
//! ignoring what the server changes on every write.

use serde_json::Value;

/// At most this many paths are listed; the rest are counted.
pub const MAX_PATHS: usize = 20;

/// The differing field paths (`.spec.replicas`, `.metadata.labels.app`,
/// `.spec.template.spec.containers[0].image`), sorted, at most [`MAX_PATHS`]
/// plus a final `(+N more)` entry. Empty means in sync.
pub fn changed_fields(live: &Value, proposed: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut extra = 0usize;
    walk(&mut String::new(), live, proposed, 0, &mut out, &mut extra);
    out.sort();
    if extra > 0 {
        out.push(format!("(+{extra} more)"));
    }
    out
}

fn ignored(path: &str) -> bool {
    matches!(
        path,
        ".metadata.managedFields" | ".metadata.resourceVersion" | ".metadata.generation" | ".status"
    )
}

fn push(out: &mut Vec<String>, extra: &mut usize, p: &str) {
    if out.len() < MAX_PATHS { out.push(p.to_string()) } else { *extra += 1 }
}

fn walk(path: &mut String, a: &Value, b: &Value, depth: usize, out: &mut Vec<String>, extra: &mut usize) {
    if ignored(path) {
        return;
    }
    match (a, b) {
        (Value::Object(ma), Value::Object(mb)) if depth < 64 => {
            for (k, va) in ma {
                let len = path.len();
                push_key(path, k);
                match mb.get(k) {
                    Some(vb) => walk(path, va, vb, depth + 1, out, extra),
                    None if !ignored(path) => push(out, extra, path),
                    None => {}
                }
                path.truncate(len);
            }
            for k in mb.keys() {
                if !ma.contains_key(k) {
                    let len = path.len();
                    push_key(path, k);
                    if !ignored(path) {
                        push(out, extra, path);
                    }
                    path.truncate(len);
                }
            }
        }
        (Value::Array(xa), Value::Array(xb)) if depth < 64 => {
            if xa.len() != xb.len() {
                push(out, extra, path);
                return;
            }
            for (i, (va, vb)) in xa.iter().zip(xb).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(path, va, vb, depth + 1, out, extra);
                path.truncate(len);
            }
        }
        _ => {
            if a != b {
                push(out, extra, if path.is_empty() { "." } else { path });
            }
        }
    }
}

fn push_key(path: &mut String, k: &str) {
    if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        path.push('.');
        path.push_str(k);
    } else {
        path.push_str(&format!("[{k:?}]"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn same_object_with_server_fields_is_in_sync() {
        let live = json!({"metadata": {"name": "a", "resourceVersion": "5", "generation": 2,
                           "managedFields": [{"manager": "x"}]},
                          "spec": {"replicas": 1}, "status": {"ready": 0}});
        let dry = json!({"metadata": {"name": "a", "resourceVersion": "5", "generation": 3,
                          "managedFields": [{"manager": "y"}]},
                         "spec": {"replicas": 1}, "status": {"ready": 1}});
        assert!(changed_fields(&live, &dry).is_empty());
    }

    #[test]
    fn names_changed_added_and_removed_fields() {
        let live = json!({"metadata": {"labels": {"app": "a", "convoy.dev/bundle": "b"}},
                          "spec": {"replicas": 3, "template": {"spec": {"containers": [{"image": "x:1"}]}},
                                   "old": 1}});
        let dry = json!({"metadata": {"labels": {"app": "b", "convoy.dev/bundle": "b"}},
                         "spec": {"replicas": 1, "template": {"spec": {"containers": [{"image": "x:2"}]}},
                                  "new": 1}});
        assert_eq!(
            changed_fields(&live, &dry),
            [
                ".metadata.labels.app",
                ".spec.new",
                ".spec.old",
                ".spec.replicas",
                ".spec.template.spec.containers[0].image"
            ]
        );
    }

    #[test]
    fn odd_keys_are_quoted_and_long_lists_truncated() {
        let live = json!({"metadata": {"labels": {"convoy.dev/bundle": "a"}}});
        let dry = json!({"metadata": {"labels": {"convoy.dev/bundle": "b"}}});
        assert_eq!(changed_fields(&live, &dry), [".metadata.labels[\"convoy.dev/bundle\"]"]);
        let a: serde_json::Map<String, Value> = (0..30).map(|i| (format!("k{i:02}"), json!(i))).collect();
        let out = changed_fields(&json!({"data": a}), &json!({"data": {}}));
        assert_eq!(out.len(), MAX_PATHS + 1);
        assert_eq!(out.last().unwrap(), "(+10 more)");
    }
}
