//! Bootstrap tokens: the text format, hashing, and the registration rules.
//!
//! A token reads `cvt_<id>.<secret>`: the id is public (it names the stored
//! record and appears in audit events), the secret is 32 random bytes in
//! base64url. The hub stores only SHA-256 of the secret and compares hashes in
//! constant time.
//!
//! A token binds identity: it names the cluster (or a name prefix) and the
//! labels that cluster gets. Labels the agent proposes are kept only for the
//! keys the token allows ([`registration_labels`]).

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use convoy_core::selector::Labels;

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
    if let Some(prefix) = &rec.name_prefix
        && !cluster.starts_with(prefix.as_str())
    {
        return Err(Rejection::PermissionDenied(format!(
            "this token registers names starting with {prefix:?}, not {cluster:?}"
        )));
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

/// Check a token to create: `cluster` and `name_prefix` are exclusive, a
/// prefix is a valid name start, and allowed agent label keys are non-empty.
pub fn check_token_input(
    cluster: Option<&str>,
    name_prefix: Option<&str>,
    agent_label_keys: &[String],
) -> Result<(), Rejection> {
    if let Some(p) = name_prefix {
        if cluster.is_some() {
            return Err(Rejection::InvalidArgument(
                "a token takes a cluster name or a name prefix, not both".into(),
            ));
        }
        let ok = !p.is_empty()
            && p.len() <= 40
            && p.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(Rejection::InvalidArgument(format!(
                "bad name prefix {p:?}: lowercase letters, digits and '-', starting with a letter or digit"
            )));
        }
    }
    if let Some(k) = agent_label_keys.iter().find(|k| k.is_empty() || k.contains(char::is_whitespace)) {
        return Err(Rejection::InvalidArgument(format!("bad agent label key {k:?}")));
    }
    Ok(())
}

/// Whether the certificate with `serial` may renew `rec`'s identity: only the
/// cluster's current (newest) certificate renews. An older one (kept valid for
/// open connections while the agent switches) cannot, so a thief holding an
/// old certificate cannot mint new ones and push the real agent's out.
pub fn check_renewal(rec: &ClusterRecord, serial: &str) -> Result<(), Rejection> {
    match rec.certs.last() {
        Some(c) if c.serial == serial => Ok(()),
        _ => Err(Rejection::PermissionDenied(format!(
            "certificate serial {serial} is not cluster {:?}'s current certificate; only the current one renews",
            rec.name
        ))),
    }
}

/// The labels a registration records: the token's labels, plus the labels
/// the agent proposes for keys the token lists in `agent_label_keys` (the
/// token wins on a clash). Returns them with the proposed keys that were
/// ignored, sorted, so that the caller can report them.
pub fn registration_labels(rec: &TokenRecord, proposed: &Labels) -> (Labels, Vec<String>) {
    let mut labels = Labels::new();
    let mut ignored = Vec::new();
    for (k, v) in proposed {
        if rec.agent_label_keys.iter().any(|a| a == k) {
            labels.insert(k.clone(), v.clone());
        } else if rec.labels.get(k) != Some(v) {
            ignored.push(k.clone());
        }
    }
    labels.extend(rec.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    ignored.sort();
    (labels, ignored)
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
            name_prefix: None,
            agent_label_keys: Vec::new(),
        }
    }

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn labels_come_from_the_token_and_allowed_keys_only() {
        let mut r = rec(Some("dev"), true);
        r.labels = labels(&[("env", "dev")]);
        // The agent cannot set or override a key the token does not allow.
        let (got, ignored) = registration_labels(&r, &labels(&[("env", "prod"), ("tier", "gold")]));
        assert_eq!(got, labels(&[("env", "dev")]));
        assert_eq!(ignored, vec!["env".to_string(), "tier".to_string()]);
        // An allowed key is taken from the agent; the token still wins on env.
        r.agent_label_keys = vec!["zone".into(), "env".into()];
        let (got, ignored) = registration_labels(&r, &labels(&[("env", "prod"), ("zone", "a"), ("x", "y")]));
        assert_eq!(got, labels(&[("env", "dev"), ("zone", "a")]));
        assert_eq!(ignored, vec!["x".to_string()]);
        // Proposing exactly the token's label is not reported as ignored.
        r.agent_label_keys.clear();
        let (_, ignored) = registration_labels(&r, &labels(&[("env", "dev")]));
        assert!(ignored.is_empty());
    }

    #[test]
    fn only_the_current_certificate_renews() {
        use crate::domain::CertRef;
        let mut c = ClusterRecord { name: "a".into(), ..Default::default() };
        assert!(check_renewal(&c, "1").is_err(), "no certificate at all");
        c.certs.push(CertRef { serial: "1".into(), not_after_unix_ms: 100 });
        c.certs.push(CertRef { serial: "2".into(), not_after_unix_ms: 200 });
        assert!(check_renewal(&c, "2").is_ok());
        assert!(matches!(check_renewal(&c, "1"), Err(Rejection::PermissionDenied(_))));
    }

    #[test]
    fn token_inputs_are_checked() {
        assert!(check_token_input(Some("a"), None, &[]).is_ok());
        assert!(check_token_input(None, Some("edge-"), &["zone".into()]).is_ok());
        assert!(check_token_input(Some("a"), Some("edge-"), &[]).is_err());
        assert!(check_token_input(None, Some("Edge"), &[]).is_err());
        assert!(check_token_input(None, Some(""), &[]).is_err());
        assert!(check_token_input(None, None, &["".into()]).is_err());
    }

    #[test]
    fn a_name_prefix_token_registers_only_new_names_with_that_prefix() {
        let mut r = rec(None, false);
        r.name_prefix = Some("edge-".into());
        assert!(check_registration(Some(&r), "s3cret", "edge-1", None, 10).is_ok());
        assert!(matches!(
            check_registration(Some(&r), "s3cret", "prod", None, 10),
            Err(Rejection::PermissionDenied(_))
        ));
        let existing = ClusterRecord { name: "edge-1".into(), ..Default::default() };
        assert!(check_registration(Some(&r), "s3cret", "edge-1", Some(&existing), 10).is_err());
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
