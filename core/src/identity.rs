//! Names and the SPIFFE-like identities written into certificates.

use std::fmt;

use crate::{Error, Result};

/// The trust domain of every Convoy identity.
pub const TRUST_DOMAIN: &str = "convoy";

/// Who is calling the hub, as read from a verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    /// An agent acting for one cluster: `spiffe://convoy/cluster/<name>`.
    Cluster(String),
    /// An operator: `spiffe://convoy/admin/<name>`.
    Admin(String),
}

impl Identity {
    /// The URI written into the certificate's SAN.
    pub fn uri(&self) -> String {
        match self {
            Identity::Cluster(n) => format!("spiffe://{TRUST_DOMAIN}/cluster/{n}"),
            Identity::Admin(n) => format!("spiffe://{TRUST_DOMAIN}/admin/{n}"),
        }
    }

    /// Parse a SAN URI back into an identity.
    pub fn parse_uri(uri: &str) -> Result<Self> {
        let bad = |m: &str| Error::Name { name: uri.into(), message: m.into() };
        let rest = uri.strip_prefix("spiffe://").ok_or_else(|| bad("not a spiffe:// URI"))?;
        let rest = rest
            .strip_prefix(TRUST_DOMAIN)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| bad("wrong trust domain"))?;
        let (kind, name) = rest.split_once('/').ok_or_else(|| bad("missing kind"))?;
        validate_name(name)?;
        match kind {
            "cluster" => Ok(Identity::Cluster(name.into())),
            "admin" => Ok(Identity::Admin(name.into())),
            _ => Err(bad("unknown identity kind")),
        }
    }

    /// The name part.
    pub fn name(&self) -> &str {
        match self {
            Identity::Cluster(n) | Identity::Admin(n) => n,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// Check a cluster, bundle, source or alert name: a DNS-1123 label-like name
/// (lowercase alphanumerics, '-' and '.', at most 253 characters, starting and
/// ending with an alphanumeric).
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |m: &str| Err(Error::Name { name: name.into(), message: m.into() });
    if name.is_empty() {
        return bad("must not be empty");
    }
    if name.len() > 253 {
        return bad("must be at most 253 characters");
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    if !name.chars().all(ok_char) {
        return bad("must consist of lowercase letters, digits, '-' and '.'");
    }
    let first = name.chars().next().unwrap_or('-');
    let last = name.chars().last().unwrap_or('-');
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return bad("must start and end with a letter or digit");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips() {
        let id = Identity::Cluster("prod-eu-1".into());
        assert_eq!(id.uri(), "spiffe://convoy/cluster/prod-eu-1");
        assert_eq!(Identity::parse_uri(&id.uri()).unwrap(), id);
        let admin = Identity::Admin("alice".into());
        assert_eq!(Identity::parse_uri(&admin.uri()).unwrap(), admin);
    }

    #[test]
    fn identity_rejects_foreign_uris() {
        assert!(Identity::parse_uri("spiffe://other/cluster/a").is_err());
        assert!(Identity::parse_uri("https://convoy/cluster/a").is_err());
        assert!(Identity::parse_uri("spiffe://convoy/cluster/A_B").is_err());
        assert!(Identity::parse_uri("spiffe://convoy/root/a").is_err());
        assert!(Identity::parse_uri("spiffe://convoy/cluster/a/b").is_err());
    }

    #[test]
    fn names() {
        assert!(validate_name("a").is_ok());
        assert!(validate_name("my-app.v2").is_ok());
        assert!(validate_name("-a").is_err());
        assert!(validate_name("A").is_err());
        assert!(validate_name("").is_err());
        assert!(validate_name(&"a".repeat(254)).is_err());
    }
}
