//! API errors as Kubernetes `Status` objects (reason, code, details.causes),
//! worded like the API server's.

use serde_json::{Value, json};

use crate::registry::ResourceType;

/// One cause of an Invalid / BadRequest / Conflict error.
#[derive(Debug, Clone)]
pub struct Cause {
    pub reason: String,
    pub message: String,
    pub field: String,
}

/// An error answered with a `Status` object.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { code, reason, message: message.into(), details: None }
    }

    fn with_details(mut self, d: Value) -> ApiError {
        self.details = Some(d);
        self
    }

    fn named(rt: &ResourceType, name: &str) -> Value {
        let mut d = json!({"name": name, "kind": rt.plural});
        if !rt.group.is_empty() {
            d["group"] = json!(rt.group);
        }
        d
    }

    pub fn not_found(rt: &ResourceType, name: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("{} {name:?} not found", rt.qualified()))
            .with_details(Self::named(rt, name))
    }

    pub fn namespace_not_found(ns: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("namespaces {ns:?} not found"))
            .with_details(json!({"name": ns, "kind": "namespaces"}))
    }

    pub fn no_resource() -> ApiError {
        ApiError::new(404, "NotFound", "the server could not find the requested resource")
            .with_details(json!({}))
    }

    pub fn already_exists(rt: &ResourceType, name: &str) -> ApiError {
        ApiError::new(409, "AlreadyExists", format!("{} {name:?} already exists", rt.qualified()))
            .with_details(Self::named(rt, name))
    }

    pub fn conflict(rt: &ResourceType, name: &str, why: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {} {name:?}: {why}", rt.qualified()),
        )
        .with_details(Self::named(rt, name))
    }

    pub fn stale(rt: &ResourceType, name: &str) -> ApiError {
        Self::conflict(
            rt,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn apply_conflict(message: String, causes: Vec<Cause>) -> ApiError {
        ApiError::new(409, "Conflict", message).with_details(json!({"causes": causes_json(&causes)}))
    }

    pub fn invalid(rt: &ResourceType, name: &str, causes: Vec<Cause>) -> ApiError {
        let parts: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        let what = if rt.group.is_empty() { rt.kind.clone() } else { format!("{}.{}", rt.kind, rt.group) };
        let msg = if parts.len() == 1 {
            format!("{what} {name:?} is invalid: {}", parts[0])
        } else {
            format!("{what} {name:?} is invalid: [{}]", parts.join(", "))
        };
        let mut d = json!({"name": name, "kind": rt.kind, "causes": causes_json(&causes)});
        if !rt.group.is_empty() {
            d["group"] = json!(rt.group);
        }
        ApiError::new(422, "Invalid", msg).with_details(d)
    }

    pub fn bad_request(msg: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", msg)
    }

    pub fn gone(msg: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", msg)
    }

    pub fn too_large() -> ApiError {
        ApiError::new(413, "RequestEntityTooLarge", "Request entity too large: limit is 3145728")
    }

    /// What the API server answers when etcd refuses a write over its request
    /// size limit: the etcd error as an unknown-reason 500.
    pub fn etcd_too_large() -> ApiError {
        ApiError::new(500, "", "etcdserver: request is too large")
    }

    pub fn method_not_supported(rt: &ResourceType, verb: &str) -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{verb} is not supported on resources of kind {:?}", rt.kind),
        )
    }

    pub fn unsupported_media_type(ct: &str, accepted: &str) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {accepted}"
            ),
        )
        .with_details(json!({"causes": [{"reason": "UnsupportedMediaType", "message": ct}]}))
    }

    pub fn forbidden(rt: &ResourceType, name: &str, why: &str) -> ApiError {
        ApiError::new(403, "Forbidden", format!("{} {name:?} is forbidden: {why}", rt.qualified()))
            .with_details(Self::named(rt, name))
    }

    pub fn internal(msg: impl Into<String>) -> ApiError {
        ApiError::new(500, "InternalError", msg)
    }

    pub fn too_many_requests() -> ApiError {
        ApiError::new(
            429,
            "TooManyRequests",
            "the server has received too many requests and has asked us to try again later",
        )
        .with_details(json!({"retryAfterSeconds": 1}))
    }

    pub fn unavailable(msg: impl Into<String>) -> ApiError {
        ApiError::new(503, "ServiceUnavailable", msg)
    }

    /// The Status object.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if self.reason.is_empty()
            && let Some(m) = v.as_object_mut()
        {
            m.shift_remove("reason");
        }
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

fn causes_json(causes: &[Cause]) -> Value {
    Value::Array(
        causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect(),
    )
}

/// A `Status` reporting success (DELETE of most built-ins).
pub fn success(rt: &ResourceType, name: &str, uid: &str) -> Value {
    let mut d = json!({"name": name, "kind": rt.plural, "uid": uid});
    if !rt.group.is_empty() {
        d["group"] = json!(rt.group);
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d})
}

/// A Required-value cause.
pub fn required(field: &str, msg: &str) -> Cause {
    Cause {
        reason: "FieldValueRequired".into(),
        message: format!("Required value{}", if msg.is_empty() { String::new() } else { format!(": {msg}") }),
        field: field.into(),
    }
}

/// An Invalid-value cause.
pub fn invalid_value(field: &str, value: &Value, msg: &str) -> Cause {
    let shown = match value {
        Value::String(s) => format!("{s:?}"),
        o => o.to_string(),
    };
    Cause {
        reason: "FieldValueInvalid".into(),
        message: format!("Invalid value: {shown}: {msg}"),
        field: field.into(),
    }
}
