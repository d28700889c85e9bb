//! A bundle's tenancy rules: which namespaces and kinds its objects may use,
//! and whether it may hold cluster-scoped objects. Pure matching, shared by the
//! hub (config validation) and the agent (enforcement before apply).
//!
//! Patterns:
//! - a namespace pattern is a name (`team-a`) or a prefix ending in `*`
//!   (`team-a-*`); `*` alone matches every namespace;
//! - a kind pattern is `Kind` for the core group (`ConfigMap`), or
//!   `Kind.group` (`Deployment.apps`, `Ingress.networking.k8s.io`); either
//!   part may be `*` (`*.apps`, `Deployment.*`, `*`).
//!
//! Empty lists mean "no restriction", so bundles without rules behave as
//! before. A rule is an allow-list: an object must match at least one entry.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The tenancy rules of one bundle.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tenancy {
    /// Namespaces the bundle's namespaced objects may live in. Empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_namespaces: Vec<String>,
    /// Kinds the bundle may contain. Empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_kinds: Vec<String>,
    /// Whether the bundle may contain cluster-scoped objects (Namespaces,
    /// ClusterRoles, CRDs, ...). Default true.
    #[serde(default = "yes")]
    pub allow_cluster_scoped: bool,
}

fn yes() -> bool {
    true
}

impl Default for Tenancy {
    fn default() -> Self {
        Self { allowed_namespaces: Vec::new(), allowed_kinds: Vec::new(), allow_cluster_scoped: true }
    }
}

/// Which rule an object broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenancyViolation {
    /// The object's namespace matches no `allowedNamespaces` entry.
    Namespace {
        /// The namespace.
        namespace: String,
    },
    /// The object's kind matches no `allowedKinds` entry.
    Kind,
    /// A cluster-scoped object in a bundle with `allowClusterScoped: false`.
    ClusterScoped,
}

impl fmt::Display for TenancyViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TenancyViolation::Namespace { namespace } => {
                write!(f, "namespace {namespace} is not in the bundle's allowedNamespaces")
            }
            TenancyViolation::Kind => f.write_str("kind is not in the bundle's allowedKinds"),
            TenancyViolation::ClusterScoped => {
                f.write_str("cluster-scoped objects are not allowed (allowClusterScoped: false)")
            }
        }
    }
}

impl Tenancy {
    /// Whether no rule restricts anything.
    pub fn is_unrestricted(&self) -> bool {
        self.allowed_namespaces.is_empty() && self.allowed_kinds.is_empty() && self.allow_cluster_scoped
    }

    /// Check one object: its API group (`""` for core), kind, and namespace
    /// (`None` for cluster-scoped objects).
    pub fn check(&self, group: &str, kind: &str, namespace: Option<&str>) -> Result<(), TenancyViolation> {
        match namespace {
            None if !self.allow_cluster_scoped => return Err(TenancyViolation::ClusterScoped),
            Some(ns)
                if !self.allowed_namespaces.is_empty()
                    && !self.allowed_namespaces.iter().any(|p| namespace_matches(p, ns)) =>
            {
                return Err(TenancyViolation::Namespace { namespace: ns.to_string() });
            }
            _ => {}
        }
        if !self.allowed_kinds.is_empty() && !self.allowed_kinds.iter().any(|p| kind_matches(p, group, kind))
        {
            return Err(TenancyViolation::Kind);
        }
        Ok(())
    }

    /// Syntax errors in the patterns, one message per bad entry.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        for p in &self.allowed_namespaces {
            let name = p.strip_suffix('*').unwrap_or(p);
            if (p.is_empty() || name.contains('*'))
                || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                errs.push(format!(
                    "allowedNamespaces: {p:?} is not a namespace name or a prefix ending in '*'"
                ));
            }
        }
        for p in &self.allowed_kinds {
            let (kind, group) = split_kind(p);
            let bad_kind =
                kind.is_empty() || (kind != "*" && !kind.chars().all(|c| c.is_ascii_alphanumeric()));
            let bad_group = group.is_some_and(|g| {
                g.is_empty()
                    || (g != "*" && !g.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'))
            });
            if bad_kind || bad_group {
                errs.push(format!("allowedKinds: {p:?} is not Kind, Kind.group, or a pattern with '*'"));
            }
        }
        errs
    }
}

/// `team-a` matches only `team-a`; `team-*` matches names starting with `team-`.
pub fn namespace_matches(pattern: &str, namespace: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => namespace.starts_with(prefix),
        None => pattern == namespace,
    }
}

/// `ConfigMap` is the core group's ConfigMap; `Deployment.apps`; `*.apps`;
/// `Deployment.*`; `*`.
pub fn kind_matches(pattern: &str, group: &str, kind: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let (pk, pg) = split_kind(pattern);
    let kind_ok = pk == "*" || pk == kind;
    let group_ok = match pg {
        None => group.is_empty(),
        Some("*") => true,
        Some(g) => g == group,
    };
    kind_ok && group_ok
}

fn split_kind(pattern: &str) -> (&str, Option<&str>) {
    match pattern.split_once('.') {
        Some((k, g)) => (k, Some(g)),
        None => (pattern, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ns: &[&str], kinds: &[&str], cluster: bool) -> Tenancy {
        Tenancy {
            allowed_namespaces: ns.iter().map(|s| s.to_string()).collect(),
            allowed_kinds: kinds.iter().map(|s| s.to_string()).collect(),
            allow_cluster_scoped: cluster,
        }
    }

    /// The whole matrix: rules × objects → allowed or which violation.
    #[test]
    fn check_table() {
        use TenancyViolation as V;
        let ns = |n: &str| V::Namespace { namespace: n.into() };
        #[rustfmt::skip]
        // (rules, group, kind, namespace, verdict)
        type Case<'a> = (Tenancy, &'a str, &'a str, Option<&'a str>, Result<(), V>);
        let cases: Vec<Case<'_>> = vec![
            // No rules: everything goes.
            (Tenancy::default(), "", "ConfigMap", Some("x"), Ok(())),
            (Tenancy::default(), "rbac.authorization.k8s.io", "ClusterRole", None, Ok(())),
            // Namespaces: exact and prefix.
            (t(&["team-a"], &[], true), "", "ConfigMap", Some("team-a"), Ok(())),
            (t(&["team-a"], &[], true), "", "ConfigMap", Some("team-ab"), Err(ns("team-ab"))),
            (t(&["team-a-*"], &[], true), "", "ConfigMap", Some("team-a-web"), Ok(())),
            (t(&["team-a-*"], &[], true), "", "ConfigMap", Some("team-b-web"), Err(ns("team-b-web"))),
            (t(&["*"], &[], true), "", "ConfigMap", Some("anything"), Ok(())),
            (t(&["a", "b"], &[], true), "", "ConfigMap", Some("b"), Ok(())),
            // Namespace rules do not restrict cluster-scoped objects; allowClusterScoped does.
            (t(&["team-a"], &[], true), "", "Namespace", None, Ok(())),
            (t(&[], &[], false), "", "Namespace", None, Err(V::ClusterScoped)),
            (t(&["team-a"], &[], false), "", "ConfigMap", Some("team-a"), Ok(())),
            // Kinds: core, grouped, wildcards.
            (t(&[], &["ConfigMap"], true), "", "ConfigMap", Some("x"), Ok(())),
            (t(&[], &["ConfigMap"], true), "example.com", "ConfigMap", Some("x"), Err(V::Kind)),
            (t(&[], &["ConfigMap"], true), "", "Secret", Some("x"), Err(V::Kind)),
            (t(&[], &["Deployment.apps"], true), "apps", "Deployment", Some("x"), Ok(())),
            (t(&[], &["Deployment.apps"], true), "", "Deployment", Some("x"), Err(V::Kind)),
            (t(&[], &["*.apps"], true), "apps", "StatefulSet", Some("x"), Ok(())),
            (t(&[], &["*.apps"], true), "batch", "Job", Some("x"), Err(V::Kind)),
            (t(&[], &["Ingress.*"], true), "networking.k8s.io", "Ingress", Some("x"), Ok(())),
            (t(&[], &["Ingress.*"], true), "", "Ingress", Some("x"), Ok(())),
            (t(&[], &["*"], true), "rbac.authorization.k8s.io", "Role", Some("x"), Ok(())),
            (
                t(&[], &["Role.rbac.authorization.k8s.io"], true),
                "rbac.authorization.k8s.io",
                "Role",
                Some("x"),
                Ok(()),
            ),
            // The namespace rule is checked before the kind rule.
            (t(&["a"], &["ConfigMap"], true), "", "Secret", Some("b"), Err(ns("b"))),
            (t(&["a"], &["ConfigMap"], false), "", "Namespace", None, Err(V::ClusterScoped)),
        ];
        for (i, (rules, group, kind, namespace, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                rules.check(group, kind, namespace),
                want,
                "case {i}: {rules:?} {group}/{kind} {namespace:?}"
            );
        }
    }

    #[test]
    fn validate_patterns() {
        assert!(
            t(&["team-a", "team-*", "*"], &["ConfigMap", "Deployment.apps", "*.apps", "*"], true)
                .validate()
                .is_empty()
        );
        let errs = t(&["Team", "a*b", ""], &["", "Foo.", "a b", "Foo.bar/baz"], true).validate();
        assert_eq!(errs.len(), 7, "{errs:?}");
    }

    #[test]
    fn serde_defaults_and_names() {
        let t: Tenancy = serde_json::from_str("{}").unwrap();
        assert!(t.is_unrestricted());
        let t: Tenancy = serde_json::from_str(
            r#"{"allowedNamespaces":["a"],"allowedKinds":["ConfigMap"],"allowClusterScoped":false}"#,
        )
        .unwrap();
        assert!(!t.is_unrestricted());
        assert!(serde_json::from_str::<Tenancy>(r#"{"allowedNamespace":["a"]}"#).is_err());
    }
}
