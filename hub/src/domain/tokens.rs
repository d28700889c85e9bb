//! Bootstrap tokens: the text format, hashing, and the registration rules.
//!
//! A token reads `cvt_<id>.<secret>`: the id is public (it names the stored
//! record and appears in audit events), the secret is 32 random bytes in
//! base64url. The hub stores only SHA-256 of the secret and compares hashes in
//! constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ClusterRecord, Rejection, TokenRecord};

/// The prefix of every bootstrap token, to make leaked tokens easy to grep for.
pub const TOKEN_PREFIX: &str = "cvt_";

/// A token split into its public id and secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedToken<'a> {
    /// The public id.
    pub id: &'a str,
    /// The secret part.
    pub secret: &'a str,
}

/// Split `cvt_<id>.<secret>`.
pub fn parse_token(token: &str) -> Result<ParsedToken<'_>, Rejection> {
    let bad = || Rejection::Unauthenticated("malformed bootstrap token".into());
    let rest = token.trim().strip_prefix(TOKEN_PREFIX).ok_or_else(bad)?;
    let (id, secret) = rest.split_once('.').ok_or_else(bad)?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !ok(id) || !ok(secret) {
        return Err(bad());
    }
    Ok(ParsedToken { id, secret })
}

/// Format a token from its parts.
pub fn format_token(id: &str, secret: &str) -> String {
    format!("{TOKEN_PREFIX}{id}.{secret}")
}

/// SHA-256 of a secret, lowercase hex.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Compare two hex hashes in constant time.
pub fn hashes_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Decide whether `secret` (for the token record `rec`) may register
/// `cluster` at `now`. `existing` is the cluster's current record, if any.
///
/// Rules: the hash must match; the token must not be expired or already used
/// (single-use); a token bound to a name registers only that name; an unbound
/// token registers only new names, so that it cannot take over an existing
/// cluster's identity; a revoked cluster comes back only with a token bound to
/// its name.
pub fn check_registration(
    rec: Option<&TokenRecord>,
    secret: &str,
    cluster: &str,
    existing: Option<&ClusterRecord>,
    now_unix_ms: i64,
) -> Result<(), Rejection> {
    // One message for every token failure, so a caller cannot probe ids.
    let denied = || Rejection::Unauthenticated("invalid, expired or used bootstrap token".into());
    let Some(rec) = rec else { return Err(denied()) };
    if !hashes_equal(&rec.hash, &hash_secret(secret)) {
        return Err(denied());
    }
    if rec.expires_unix_ms <= now_unix_ms || (rec.single_use && rec.uses > 0) {
        return Err(denied());
    }
    match (&rec.cluster, existing) {
        (Some(bound), _) if bound != cluster => Err(Rejection::PermissionDenied(format!(
            "this token registers cluster {bound:?}, not {cluster:?}"
        ))),
        (None, Some(_)) => Err(Rejection::PermissionDenied(format!(
            "cluster {cluster:?} is already registered; re-registering it needs a token created for that cluster name"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(cluster: Option<&str>, single_use: bool) -> TokenRecord {
        TokenRecord {
            id: "abc".into(),
            hash: hash_secret("s3cret"),
            created_unix_ms: 0,
            expires_unix_ms: 1_000,
            single_use,
            uses: 0,
            cluster: cluster.map(Into::into),
            labels: Default::default(),
        }
    }

    #[test]
    fn parse_and_format() {
        let t = format_token("abc", "s3cret");
        assert_eq!(parse_token(&t).unwrap(), ParsedToken { id: "abc", secret: "s3cret" });
        assert!(parse_token("abc.def").is_err());
        assert!(parse_token("cvt_abc").is_err());
        assert!(parse_token("cvt_a b.c").is_err());
    }

    #[test]
    fn registration_rules() {
        let r = rec(None, true);
        assert!(check_registration(Some(&r), "s3cret", "a", None, 10).is_ok());
        assert!(check_registration(Some(&r), "wrong", "a", None, 10).is_err());
        assert!(check_registration(Some(&r), "s3cret", "a", None, 1_000).is_err(), "expired");
        assert!(check_registration(None, "s3cret", "a", None, 10).is_err());
        let used = TokenRecord { uses: 1, ..r.clone() };
        assert!(check_registration(Some(&used), "s3cret", "a", None, 10).is_err(), "used");
        let multi = TokenRecord { uses: 5, ..rec(None, false) };
        assert!(check_registration(Some(&multi), "s3cret", "a", None, 10).is_ok());
        let existing = ClusterRecord { name: "a".into(), ..Default::default() };
        assert!(matches!(
            check_registration(Some(&r), "s3cret", "a", Some(&existing), 10),
            Err(Rejection::PermissionDenied(_))
        ));
        let bound = rec(Some("a"), true);
        assert!(check_registration(Some(&bound), "s3cret", "a", Some(&existing), 10).is_ok());
        assert!(check_registration(Some(&bound), "s3cret", "b", None, 10).is_err());
    }
}
