//! Operators' client certificates as the hub records them: which serials it
//! issued, which are revoked, and the pure decisions over them (is this
//! certificate honoured, which records a revocation changes).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Rejection;

/// One admin certificate the hub issued, keyed by its serial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AdminCertRecord {
    /// The certificate serial, lowercase hex (as [`crate::pki::PeerCert`]).
    pub serial: String,
    /// The admin name from the URI SAN (`spiffe://convoy/admin/<name>`).
    pub name: String,
    /// When it was issued (Unix ms).
    pub issued_unix_ms: i64,
    /// When it expires (Unix ms).
    pub not_after_unix_ms: i64,
    /// Whether an operator revoked it. A revoked record is kept (until it
    /// expires) so the serial stays refused.
    pub revoked: bool,
}

/// Every recorded admin certificate, by serial.
pub type AdminCerts = BTreeMap<String, AdminCertRecord>;

/// Whether the admin certificate `serial` (named `name`) is honoured at
/// `now`: the hub must have recorded it (it records every admin certificate
/// it issues), for that name, not revoked and not expired.
pub fn honoured(certs: &AdminCerts, name: &str, serial: &str, now_unix_ms: i64) -> Result<(), Rejection> {
    match certs.get(serial) {
        None => Err(Rejection::PermissionDenied(format!(
            "admin certificate {serial} was not issued by this hub (unrecorded serial)"
        ))),
        Some(r) if r.name != name => Err(Rejection::PermissionDenied(format!(
            "admin certificate {serial} is recorded for another name"
        ))),
        Some(r) if r.revoked => {
            Err(Rejection::PermissionDenied(format!("admin certificate {serial} ({name}) was revoked")))
        }
        Some(r) if r.not_after_unix_ms <= now_unix_ms => {
            Err(Rejection::PermissionDenied(format!("admin certificate {serial} ({name}) has expired")))
        }
        Some(_) => Ok(()),
    }
}

/// What an operator revokes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    /// Every recorded certificate of this admin name.
    Name(String),
    /// One certificate by serial (hex, case-insensitive, `:` separators allowed).
    Serial(String),
}

/// Normalize a serial as typed by an operator to the recorded form.
pub fn normalize_serial(s: &str) -> String {
    s.trim().trim_start_matches("0x").replace(':', "").to_ascii_lowercase()
}

/// The records a revocation writes (each with `revoked: true`). Already
/// revoked certificates are not rewritten; a target that matches no
/// recorded, unrevoked certificate is `NotFound` (nothing to do is reported,
/// never silently accepted).
pub fn revoke(certs: &AdminCerts, target: &RevokeTarget) -> Result<Vec<AdminCertRecord>, Rejection> {
    let matching: Vec<&AdminCertRecord> = match target {
        RevokeTarget::Name(n) => certs.values().filter(|r| &r.name == n).collect(),
        RevokeTarget::Serial(s) => certs.get(&normalize_serial(s)).into_iter().collect(),
    };
    let changed: Vec<AdminCertRecord> = matching
        .into_iter()
        .filter(|r| !r.revoked)
        .map(|r| AdminCertRecord { revoked: true, ..r.clone() })
        .collect();
    if changed.is_empty() {
        let what = match target {
            RevokeTarget::Name(n) => format!("admin {n:?}"),
            RevokeTarget::Serial(s) => format!("serial {s:?}"),
        };
        return Err(Rejection::NotFound(format!("no unrevoked admin certificate recorded for {what}")));
    }
    Ok(changed)
}

/// Merge admin certificate records another hub replica committed into
/// `certs`: a new serial is added; a known one only ever gains `revoked`
/// (a revocation is never undone by a late or replayed record).
pub fn merge_remote(certs: &AdminCerts, remote: &[AdminCertRecord]) -> AdminCerts {
    let mut out = certs.clone();
    for r in remote {
        out.entry(r.serial.clone()).and_modify(|e| e.revoked |= r.revoked).or_insert_with(|| r.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(serial: &str, name: &str, not_after: i64, revoked: bool) -> AdminCertRecord {
        AdminCertRecord {
            serial: serial.into(),
            name: name.into(),
            issued_unix_ms: 0,
            not_after_unix_ms: not_after,
            revoked,
        }
    }

    fn certs() -> AdminCerts {
        [rec("0a", "alice", 100, false), rec("0b", "alice", 100, false), rec("0c", "bob", 100, true)]
            .into_iter()
            .map(|r| (r.serial.clone(), r))
            .collect()
    }

    #[test]
    fn honoured_only_when_recorded_for_that_name_unrevoked_and_unexpired() {
        let c = certs();
        assert!(honoured(&c, "alice", "0a", 10).is_ok());
        assert!(honoured(&c, "alice", "0a", 100).is_err(), "expired at not_after");
        assert!(honoured(&c, "alice", "ff", 10).is_err(), "unrecorded serial");
        assert!(honoured(&c, "mallory", "0a", 10).is_err(), "serial recorded for another name");
        let e = honoured(&c, "bob", "0c", 10).unwrap_err();
        assert!(matches!(&e, Rejection::PermissionDenied(m) if m.contains("revoked")), "{e}");
    }

    #[test]
    fn revoke_by_name_marks_every_unrevoked_serial_of_the_name() {
        let c = certs();
        let out = revoke(&c, &RevokeTarget::Name("alice".into())).unwrap();
        assert_eq!(out.iter().map(|r| r.serial.as_str()).collect::<Vec<_>>(), ["0a", "0b"]);
        assert!(out.iter().all(|r| r.revoked && r.name == "alice"));
    }

    #[test]
    fn revoke_by_serial_accepts_operator_spellings() {
        let c = certs();
        for s in ["0B", "0x0b", " 0b ", "0:b"] {
            let out = revoke(&c, &RevokeTarget::Serial(s.into())).unwrap();
            assert_eq!(out.len(), 1, "{s}");
            assert_eq!(out[0].serial, "0b");
        }
    }

    #[test]
    fn remote_records_add_serials_and_revocations_are_never_undone() {
        let rec = |serial: &str, revoked| AdminCertRecord {
            serial: serial.into(),
            name: "root".into(),
            issued_unix_ms: 0,
            not_after_unix_ms: 100,
            revoked,
        };
        let mine: AdminCerts =
            [("aa".to_string(), rec("aa", false)), ("bb".to_string(), rec("bb", true))].into();
        // Another replica revoked aa, issued cc, and a stale record says bb is not revoked.
        let merged = merge_remote(&mine, &[rec("aa", true), rec("cc", false), rec("bb", false)]);
        assert!(merged["aa"].revoked, "a revocation from another replica is taken");
        assert!(merged["bb"].revoked, "a revocation is never undone");
        assert!(!merged["cc"].revoked && merged.len() == 3, "a serial issued elsewhere is added");
    }

    #[test]
    fn revoking_nothing_is_not_found() {
        let c = certs();
        assert!(matches!(revoke(&c, &RevokeTarget::Name("bob".into())), Err(Rejection::NotFound(_))));
        assert!(matches!(revoke(&c, &RevokeTarget::Name("carol".into())), Err(Rejection::NotFound(_))));
        assert!(matches!(revoke(&c, &RevokeTarget::Serial("ff".into())), Err(Rejection::NotFound(_))));
    }
}
