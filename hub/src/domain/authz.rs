//! Who may call what. The caller is read from the verified client certificate
//! (or an admin bearer token); request fields never name the caller.

use super::admins::{AdminCerts, honoured};
use super::{ClusterRecord, Rejection};

/// The authenticated caller of an RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No client certificate and no admin token.
    Anonymous,
    /// A cluster certificate issued by the hub CA.
    Cluster {
        /// The cluster name from the URI SAN.
        name: String,
        /// The certificate serial, lowercase hex.
        serial: String,
    },
    /// An admin certificate or the admin token.
    Admin {
        /// The admin name from the URI SAN (`token` for the bearer token).
        name: String,
        /// The certificate serial, lowercase hex; `None` for the admin token.
        serial: Option<String>,
    },
}

impl Caller {
    /// How events name the caller: `admin:NAME`, `cluster:NAME` or `anonymous`.
    pub fn identity(&self) -> String {
        match self {
            Caller::Anonymous => "anonymous".into(),
            Caller::Cluster { name, .. } => format!("cluster:{name}"),
            Caller::Admin { name, .. } => format!("admin:{name}"),
        }
    }
}

/// Which group of RPCs is being called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Registration: anyone (the token is checked by the call itself).
    Register,
    /// Agent calls: a cluster certificate the hub still honours.
    Agent,
    /// Fleet calls: an admin.
    Fleet,
}

/// Decide whether `caller` may make a call of kind `access`. For cluster
/// callers, `cluster` is the stored record of the named cluster, if any; for
/// admin certificates, `admins` holds the recorded admin certificates (an
/// unrecorded, revoked or expired one is refused; the admin token is checked
/// by its hash before it becomes a caller).
pub fn authorize(
    caller: &Caller,
    access: Access,
    cluster: Option<&ClusterRecord>,
    admins: &AdminCerts,
    now_unix_ms: i64,
) -> Result<(), Rejection> {
    match (access, caller) {
        (Access::Register, _) => Ok(()),
        (Access::Agent, Caller::Cluster { name, serial }) => match cluster {
            None => Err(Rejection::PermissionDenied(format!("cluster {name:?} is not registered"))),
            Some(c) if c.revoked => Err(Rejection::PermissionDenied(format!("cluster {name:?} was revoked"))),
            Some(c) if !c.honours(serial, now_unix_ms) => Err(Rejection::PermissionDenied(format!(
                "the certificate presented for cluster {name:?} was replaced or has expired"
            ))),
            Some(_) => Ok(()),
        },
        (Access::Agent, Caller::Admin { .. }) => {
            Err(Rejection::PermissionDenied("agent calls need a cluster certificate".into()))
        }
        (Access::Fleet, Caller::Admin { serial: None, .. }) => Ok(()),
        (Access::Fleet, Caller::Admin { name, serial: Some(serial) }) => {
            honoured(admins, name, serial, now_unix_ms)
        }
        (Access::Fleet, Caller::Cluster { name, .. }) => {
            Err(Rejection::PermissionDenied(format!("cluster {name:?} may not call fleet (operator) RPCs")))
        }
        (_, Caller::Anonymous) => Err(Rejection::Unauthenticated(
            "a client certificate (or, for fleet calls, an admin token) is required".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::CertRef;
    use crate::domain::admins::AdminCertRecord;

    #[test]
    fn matrix() {
        let rec = ClusterRecord {
            name: "a".into(),
            certs: vec![CertRef { serial: "01".into(), not_after_unix_ms: 100 }],
            ..Default::default()
        };
        let cluster = Caller::Cluster { name: "a".into(), serial: "01".into() };
        let admin = Caller::Admin { name: "root".into(), serial: Some("aa".into()) };
        let token = Caller::Admin { name: "token".into(), serial: None };
        let rec_admin = |revoked| AdminCertRecord {
            serial: "aa".into(),
            name: "root".into(),
            issued_unix_ms: 0,
            not_after_unix_ms: 100,
            revoked,
        };
        let admins: AdminCerts = [("aa".to_string(), rec_admin(false))].into();
        let revoked_admins: AdminCerts = [("aa".to_string(), rec_admin(true))].into();
        let none = AdminCerts::new();
        assert!(authorize(&cluster, Access::Agent, Some(&rec), &none, 10).is_ok());
        assert!(authorize(&cluster, Access::Agent, Some(&rec), &none, 100).is_err(), "expired");
        assert!(authorize(&cluster, Access::Agent, None, &none, 10).is_err());
        assert!(authorize(&cluster, Access::Fleet, Some(&rec), &admins, 10).is_err());
        assert!(authorize(&admin, Access::Fleet, None, &admins, 10).is_ok());
        assert!(authorize(&admin, Access::Fleet, None, &admins, 100).is_err(), "expired admin certificate");
        assert!(authorize(&admin, Access::Fleet, None, &none, 10).is_err(), "unrecorded admin certificate");
        assert!(
            matches!(authorize(&admin, Access::Fleet, None, &revoked_admins, 10), Err(Rejection::PermissionDenied(m)) if m.contains("revoked")),
            "revoked admin certificate"
        );
        assert!(authorize(&token, Access::Fleet, None, &none, 10).is_ok(), "the admin token has no serial");
        assert!(authorize(&admin, Access::Agent, None, &admins, 10).is_err());
        assert!(authorize(&token, Access::Agent, None, &admins, 10).is_err());
        assert!(matches!(
            authorize(&Caller::Anonymous, Access::Fleet, None, &none, 10),
            Err(Rejection::Unauthenticated(_))
        ));
        assert!(authorize(&Caller::Anonymous, Access::Register, None, &none, 10).is_ok());
        let revoked = ClusterRecord { revoked: true, ..rec.clone() };
        assert!(authorize(&cluster, Access::Agent, Some(&revoked), &none, 10).is_err());
        let other = Caller::Cluster { name: "a".into(), serial: "02".into() };
        assert!(authorize(&other, Access::Agent, Some(&rec), &none, 10).is_err());
    }

    /// RunTests (`convoy test`) sends a command to a cluster's agent: a fleet
    /// call, admins only (an admin certificate that is honoured, or the admin
    /// token); a cluster may not run tests, not even on itself.
    #[test]
    fn run_tests_is_admin_only() {
        let rec = |revoked| AdminCertRecord {
            serial: "a1".into(),
            name: "alice".into(),
            issued_unix_ms: 0,
            not_after_unix_ms: 100,
            revoked,
        };
        let admins: AdminCerts = [("a1".to_string(), rec(false))].into();
        let revoked: AdminCerts = [("a1".to_string(), rec(true))].into();
        let admin = Caller::Admin { name: "alice".into(), serial: Some("a1".into()) };
        let token = Caller::Admin { name: "token".into(), serial: None };
        let cluster = Caller::Cluster { name: "one".into(), serial: "01".into() };
        let own = ClusterRecord {
            name: "one".into(),
            certs: vec![CertRef { serial: "01".into(), not_after_unix_ms: 100 }],
            ..Default::default()
        };
        for (caller, certs, allowed) in [
            (&admin, &admins, true),
            (&token, &admins, true),
            (&admin, &revoked, false),
            (&cluster, &admins, false),
            (&Caller::Anonymous, &admins, false),
        ] {
            assert_eq!(
                authorize(caller, Access::Fleet, Some(&own), certs, 10).is_ok(),
                allowed,
                "{caller:?} {certs:?}"
            );
        }
    }

    /// The rollout RPCs (GetRollout, RolloutAction: approve, pause, resume,
    /// abort, rollback) are fleet calls: admins only; their events name the
    /// caller by identity.
    #[test]
    fn rollout_operations_are_admin_only_and_name_the_caller() {
        let admin = Caller::Admin { name: "alice".into(), serial: Some("a1".into()) };
        let token = Caller::Admin { name: "token".into(), serial: None };
        let admins: AdminCerts = [(
            "a1".to_string(),
            AdminCertRecord {
                serial: "a1".into(),
                name: "alice".into(),
                issued_unix_ms: 0,
                not_after_unix_ms: 100,
                revoked: false,
            },
        )]
        .into();
        let cluster = Caller::Cluster { name: "prod-eu".into(), serial: "01".into() };
        for (caller, allowed) in
            [(&admin, true), (&token, true), (&cluster, false), (&Caller::Anonymous, false)]
        {
            assert_eq!(authorize(caller, Access::Fleet, None, &admins, 10).is_ok(), allowed, "{caller:?}");
        }
        assert_eq!(admin.identity(), "admin:alice");
        assert_eq!(token.identity(), "admin:token");
        assert_eq!(cluster.identity(), "cluster:prod-eu");
        assert_eq!(Caller::Anonymous.identity(), "anonymous");
    }
}
