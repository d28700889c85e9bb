//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), which
//! kubectl's typed generators send (`kubectl create namespace|configmap|secret|
//! serviceaccount|deployment|service|job|cronjob|role|rolebinding|clusterrole|
//! clusterrolebinding`): the `k8s\0` envelope (runtime.Unknown), the protobuf wire
//! format, and a field table for the kinds those generators produce, decoded
//! into the JSON form the rest of the server works with. Other kinds answer 415.

use base64::Engine;
use serde_json::{Map, Value, json};

/// The type of a field in the table.
#[derive(Clone, Copy)]
enum Ty {
    Str,
    Bool,
    Int,
    Msg(&'static [F]),
    MapStr,
    MapBytes,
    RepStr,
    RepMsg(&'static [F]),
    Time,
    /// intstr.IntOrString {type, intVal, strVal}
    IntOrString,
}

type F = (u32, &'static str, Ty);

const OWNER_REF: &[F] = &[
    (5, "apiVersion", Ty::Str),
    (1, "kind", Ty::Str),
    (3, "name", Ty::Str),
    (4, "uid", Ty::Str),
    (6, "controller", Ty::Bool),
    (7, "blockOwnerDeletion", Ty::Bool),
];

const OBJECT_META: &[F] = &[
    (1, "name", Ty::Str),
    (2, "generateName", Ty::Str),
    (3, "namespace", Ty::Str),
    (5, "uid", Ty::Str),
    (6, "resourceVersion", Ty::Str),
    (7, "generation", Ty::Int),
    (8, "creationTimestamp", Ty::Time),
    (11, "labels", Ty::MapStr),
    (12, "annotations", Ty::MapStr),
    (13, "ownerReferences", Ty::RepMsg(OWNER_REF)),
    (14, "finalizers", Ty::RepStr),
];

const LOCAL_REF: &[F] = &[(1, "name", Ty::Str)];
const OBJ_REF: &[F] = &[(1, "kind", Ty::Str), (2, "namespace", Ty::Str), (3, "name", Ty::Str)];

const LABEL_SELECTOR: &[F] = &[(1, "matchLabels", Ty::MapStr)];
const CONTAINER_PORT: &[F] = &[
    (1, "name", Ty::Str),
    (2, "hostPort", Ty::Int),
    (3, "containerPort", Ty::Int),
    (4, "protocol", Ty::Str),
];
const ENV_VAR: &[F] = &[(1, "name", Ty::Str), (2, "value", Ty::Str)];
const CONTAINER: &[F] = &[
    (1, "name", Ty::Str),
    (2, "image", Ty::Str),
    (3, "command", Ty::RepStr),
    (4, "args", Ty::RepStr),
    (5, "workingDir", Ty::Str),
    (6, "ports", Ty::RepMsg(CONTAINER_PORT)),
    (7, "env", Ty::RepMsg(ENV_VAR)),
    (14, "imagePullPolicy", Ty::Str),
];
const POD_SPEC: &[F] = &[(2, "containers", Ty::RepMsg(CONTAINER)), (3, "restartPolicy", Ty::Str)];
const POD_TEMPLATE: &[F] = &[(1, "metadata", Ty::Msg(OBJECT_META)), (2, "spec", Ty::Msg(POD_SPEC))];
const DEPLOYMENT_STRATEGY: &[F] = &[(1, "type", Ty::Str)];
const DEPLOYMENT_SPEC: &[F] = &[
    (1, "replicas", Ty::Int),
    (2, "selector", Ty::Msg(LABEL_SELECTOR)),
    (3, "template", Ty::Msg(POD_TEMPLATE)),
    (4, "strategy", Ty::Msg(DEPLOYMENT_STRATEGY)),
    (5, "minReadySeconds", Ty::Int),
];
const DEPLOYMENT: &[F] = &[(1, "metadata", Ty::Msg(OBJECT_META)), (2, "spec", Ty::Msg(DEPLOYMENT_SPEC))];

const SERVICE_PORT: &[F] = &[
    (1, "name", Ty::Str),
    (2, "protocol", Ty::Str),
    (3, "port", Ty::Int),
    (4, "targetPort", Ty::IntOrString),
    (5, "nodePort", Ty::Int),
];
const SERVICE_SPEC: &[F] = &[
    (1, "ports", Ty::RepMsg(SERVICE_PORT)),
    (2, "selector", Ty::MapStr),
    (3, "clusterIP", Ty::Str),
    (4, "type", Ty::Str),
    (10, "externalName", Ty::Str),
];
const SERVICE: &[F] = &[(1, "metadata", Ty::Msg(OBJECT_META)), (2, "spec", Ty::Msg(SERVICE_SPEC))];
const JOB_SPEC: &[F] = &[
    (1, "parallelism", Ty::Int),
    (2, "completions", Ty::Int),
    (3, "activeDeadlineSeconds", Ty::Int),
    (6, "template", Ty::Msg(POD_TEMPLATE)),
    (7, "backoffLimit", Ty::Int),
];
const JOB: &[F] = &[(1, "metadata", Ty::Msg(OBJECT_META)), (2, "spec", Ty::Msg(JOB_SPEC))];
const JOB_TEMPLATE: &[F] = &[(1, "metadata", Ty::Msg(OBJECT_META)), (2, "spec", Ty::Msg(JOB_SPEC))];
const CRON_JOB_SPEC: &[F] = &[
    (1, "schedule", Ty::Str),
    (3, "concurrencyPolicy", Ty::Str),
    (5, "jobTemplate", Ty::Msg(JOB_TEMPLATE)),
    (8, "timeZone", Ty::Str),
];
const CRON_JOB: &[F] = &[(1, "metadata", Ty::Msg(OBJECT_META)), (2, "spec", Ty::Msg(CRON_JOB_SPEC))];
const POLICY_RULE: &[F] = &[
    (1, "verbs", Ty::RepStr),
    (2, "apiGroups", Ty::RepStr),
    (3, "resources", Ty::RepStr),
    (4, "resourceNames", Ty::RepStr),
    (5, "nonResourceURLs", Ty::RepStr),
];
const ROLE: &[F] = &[(1, "metadata", Ty::Msg(OBJECT_META)), (2, "rules", Ty::RepMsg(POLICY_RULE))];
const SUBJECT: &[F] =
    &[(1, "kind", Ty::Str), (2, "apiGroup", Ty::Str), (3, "name", Ty::Str), (4, "namespace", Ty::Str)];
const ROLE_REF: &[F] = &[(1, "apiGroup", Ty::Str), (2, "kind", Ty::Str), (3, "name", Ty::Str)];
const ROLE_BINDING: &[F] = &[
    (1, "metadata", Ty::Msg(OBJECT_META)),
    (2, "subjects", Ty::RepMsg(SUBJECT)),
    (3, "roleRef", Ty::Msg(ROLE_REF)),
];

const CONFIG_MAP: &[F] = &[
    (1, "metadata", Ty::Msg(OBJECT_META)),
    (2, "data", Ty::MapStr),
    (3, "binaryData", Ty::MapBytes),
    (4, "immutable", Ty::Bool),
];
const SECRET: &[F] = &[
    (1, "metadata", Ty::Msg(OBJECT_META)),
    (2, "data", Ty::MapBytes),
    (3, "type", Ty::Str),
    (4, "stringData", Ty::MapStr),
    (5, "immutable", Ty::Bool),
];
const NAMESPACE_SPEC: &[F] = &[(1, "finalizers", Ty::RepStr)];
const NAMESPACE: &[F] = &[(1, "metadata", Ty::Msg(OBJECT_META)), (2, "spec", Ty::Msg(NAMESPACE_SPEC))];
const SERVICE_ACCOUNT: &[F] = &[
    (1, "metadata", Ty::Msg(OBJECT_META)),
    (2, "secrets", Ty::RepMsg(OBJ_REF)),
    (3, "imagePullSecrets", Ty::RepMsg(LOCAL_REF)),
    (4, "automountServiceAccountToken", Ty::Bool),
];

enum Wire<'a> {
    Varint(u64),
    Len(&'a [u8]),
    Fixed,
}

fn varint(b: &[u8], i: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i).ok_or("truncated varint")?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint too long".into())
}

fn fields(b: &[u8]) -> Result<Vec<(u32, Wire<'_>)>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let key = varint(b, &mut i)?;
        let num = (key >> 3) as u32;
        match key & 7 {
            0 => out.push((num, Wire::Varint(varint(b, &mut i)?))),
            2 => {
                let len = varint(b, &mut i)? as usize;
                let end = i.checked_add(len).filter(|e| *e <= b.len()).ok_or("truncated field")?;
                out.push((num, Wire::Len(&b[i..end])));
                i = end;
            }
            1 => {
                i += 8;
                out.push((num, Wire::Fixed));
            }
            5 => {
                i += 4;
                out.push((num, Wire::Fixed));
            }
            t => return Err(format!("unsupported wire type {t}")),
        }
    }
    Ok(out)
}

fn text(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "invalid UTF-8 in string field".to_string())
}

fn map_entry(b: &[u8], bytes: bool) -> Result<(String, Value), String> {
    let mut k = String::new();
    let mut v = json!("");
    for (n, w) in fields(b)? {
        if let Wire::Len(x) = w {
            match n {
                1 => k = text(x)?,
                2 => {
                    v = if bytes {
                        json!(base64::engine::general_purpose::STANDARD.encode(x))
                    } else {
                        json!(text(x)?)
                    }
                }
                _ => {}
            }
        }
    }
    Ok((k, v))
}

fn message(b: &[u8], table: &[F]) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for (n, w) in fields(b)? {
        let Some((_, name, ty)) = table.iter().find(|(num, _, _)| *num == n) else { continue };
        let name = name.to_string();
        match (ty, w) {
            // empty strings and zero numbers are omitted, as in the JSON form
            (Ty::Str, Wire::Len(x)) => {
                if !x.is_empty() {
                    out.insert(name, json!(text(x)?));
                }
            }
            (Ty::Bool, Wire::Varint(v)) => {
                out.insert(name, json!(v != 0));
            }
            (Ty::Int, Wire::Varint(v)) => {
                if v != 0 {
                    out.insert(name, json!(v as i64));
                }
            }
            (Ty::Msg(t), Wire::Len(x)) => {
                out.insert(name, Value::Object(message(x, t)?));
            }
            (Ty::MapStr | Ty::MapBytes, Wire::Len(x)) => {
                let (k, v) = map_entry(x, matches!(ty, Ty::MapBytes))?;
                out.entry(name).or_insert_with(|| json!({}))[k] = v;
            }
            (Ty::RepStr, Wire::Len(x)) => {
                let e = out.entry(name).or_insert_with(|| json!([]));
                if let Some(a) = e.as_array_mut() {
                    a.push(json!(text(x)?));
                }
            }
            (Ty::RepMsg(t), Wire::Len(x)) => {
                let m = message(x, t)?;
                let e = out.entry(name).or_insert_with(|| json!([]));
                if let Some(a) = e.as_array_mut() {
                    a.push(Value::Object(m));
                }
            }
            (Ty::IntOrString, Wire::Len(x)) => {
                let (mut ty, mut int, mut st) = (0u64, 0i64, String::new());
                for (m, w2) in fields(x)? {
                    match (m, w2) {
                        (1, Wire::Varint(v)) => ty = v,
                        (2, Wire::Varint(v)) => int = v as i64,
                        (3, Wire::Len(b)) => st = text(b)?,
                        _ => {}
                    }
                }
                out.insert(name, if ty == 1 { json!(st) } else { json!(int) });
            }
            (Ty::Time, Wire::Len(x)) => {
                let mut secs = 0i64;
                for (n, w) in fields(x)? {
                    if let (1, Wire::Varint(v)) = (n, w) {
                        secs = v as i64;
                    }
                }
                if secs != 0
                    && let Ok(ts) = jiff::Timestamp::from_second(secs)
                {
                    out.insert(name, json!(ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()));
                }
            }
            _ => return Err(format!("field {n} of {name} has an unexpected wire type")),
        }
    }
    Ok(out)
}

/// Decode a `k8s\0`-framed protobuf object into JSON.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let rest = body.strip_prefix(b"k8s\0").ok_or("missing the k8s protobuf envelope")?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for (n, w) in fields(rest)? {
        match (n, w) {
            (1, Wire::Len(tm)) => {
                for (m, w2) in fields(tm)? {
                    match (m, w2) {
                        (1, Wire::Len(x)) => api_version = text(x)?,
                        (2, Wire::Len(x)) => kind = text(x)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Len(x)) => raw = x,
            (3 | 4, Wire::Len(x)) if n == 3 && !x.is_empty() => {
                return Err("encoded protobuf content is not supported".into());
            }
            _ => {}
        }
    }
    let table = match (api_version.as_str(), kind.as_str()) {
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "Secret") => SECRET,
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "ServiceAccount") => SERVICE_ACCOUNT,
        ("apps/v1", "Deployment") => DEPLOYMENT,
        ("v1", "Service") => SERVICE,
        ("batch/v1", "Job") => JOB,
        ("batch/v1", "CronJob") => CRON_JOB,
        ("rbac.authorization.k8s.io/v1", "Role" | "ClusterRole") => ROLE,
        ("rbac.authorization.k8s.io/v1", "RoleBinding" | "ClusterRoleBinding") => ROLE_BINDING,
        _ => {
            return Err(format!(
                "protobuf bodies of {api_version} {kind} are not supported by kube-sim; send JSON"
            ));
        }
    };
    let mut m = Map::new();
    m.insert("apiVersion".into(), json!(api_version));
    m.insert("kind".into(), json!(kind));
    m.extend(message(raw, table)?);
    Ok(Value::Object(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len_field(n: u32, b: &[u8]) -> Vec<u8> {
        let mut out = vec![((n << 3) | 2) as u8, b.len() as u8];
        out.extend_from_slice(b);
        out
    }

    #[test]
    fn decodes_a_config_map() {
        let meta = len_field(1, b"cm");
        let entry = [len_field(1, b"k"), len_field(2, b"v")].concat();
        let raw = [len_field(1, &meta), len_field(2, &entry)].concat();
        let tm = [len_field(1, b"v1"), len_field(2, b"ConfigMap")].concat();
        let body = [b"k8s\0".to_vec(), len_field(1, &tm), len_field(2, &raw)].concat();
        let v = decode(&body).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"k": "v"}})
        );
    }
}
