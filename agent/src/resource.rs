//! Kubernetes resource identities, the leaf every Kubernetes-facing module
//! shares: how a kind is served (`ResourceInfo`: group, version, plural,
//! scope, URL paths) and which object a key names (`ObjKey`). Pure data; it
//! depends on no other module of the crate.

use std::fmt;

/// How a kind is served.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceInfo {
    /// The API group ("" for core).
    pub group: String,
    /// The version.
    pub version: String,
    /// The kind.
    pub kind: String,
    /// The plural resource name used in URLs.
    pub plural: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
}

impl ResourceInfo {
    /// `group/version` or `v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// The collection URL for a namespace (or cluster-wide).
    pub fn url_path(&self, namespace: Option<&str>) -> String {
        let base = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        match namespace {
            Some(ns) if self.namespaced => format!("{base}/namespaces/{ns}/{}", self.plural),
            _ => format!("{base}/{}", self.plural),
        }
    }

    /// The kube-rs dynamic resource description.
    pub fn api_resource(&self) -> kube::core::ApiResource {
        kube::core::ApiResource {
            group: self.group.clone(),
            version: self.version.clone(),
            api_version: self.api_version(),
            kind: self.kind.clone(),
            plural: self.plural.clone(),
        }
    }

    #[cfg(test)]
    pub(crate) fn test(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            namespaced,
        }
    }
}

/// The identity of an object in a cluster. The API version is not part of it:
/// `apps/v1` and `apps/v1beta1` Deployments with the same name are one object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct ObjKey {
    /// The API group ("" for the core group).
    pub group: String,
    /// The kind.
    pub kind: String,
    /// The namespace, for namespaced objects.
    pub namespace: Option<String>,
    /// The name.
    pub name: String,
}

impl ObjKey {
    /// A key.
    pub fn new(group: &str, kind: &str, namespace: Option<&str>, name: &str) -> Self {
        Self {
            group: group.into(),
            kind: kind.into(),
            namespace: namespace.map(Into::into),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjKey {
    /// `Kind/namespace/name` or `Kind/name` (the event `object` format).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{}/{}", self.kind, ns, self.name),
            None => write!(f, "{}/{}", self.kind, self.name),
        }
    }
}

/// The group part of an apiVersion ("" for `v1`).
pub fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("")
}

/// The version part of an apiVersion.
pub fn version_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map(|(_, v)| v).unwrap_or(api_version)
}
