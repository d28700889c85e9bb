//! What a bundle may touch, decided before anything of it is applied: the
//! agent's own namespace is reserved for the agent, an object that another
//! bundle's inventory holds is not taken without the takeover annotation, and
//! the bundle's tenancy rules (allowed namespaces, kinds, cluster scope).
//!
//! Pure: no I/O. `ownership.rs` gathers the inputs (the other bundles'
//! inventories) and carries out the takeovers this module allows.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use convoy_core::tenancy::{Tenancy, TenancyViolation};

use crate::objects::ObjKey;

/// Annotation on an object in a bundle that moves the object from the named
/// bundle's inventory to this one (the only way to move an object between
/// bundles). The old bundle then neither applies nor prunes it.
pub const TAKEOVER_ANNOTATION: &str = "convoy.dev/takeover-from";

/// An object a bundle wants to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// The object.
    pub key: &'a ObjKey,
    /// The bundle named by its takeover annotation, if any.
    pub takeover_from: Option<&'a str>,
}

/// Why an object was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// The object belongs to the agent (its namespace or what is in it).
    Reserved {
        /// The object.
        object: ObjKey,
    },
    /// Another bundle's inventory holds the object.
    OwnershipConflict {
        /// The object.
        object: ObjKey,
        /// The bundle that holds it.
        owner: String,
        /// The bundle the object's takeover annotation names, when it names
        /// another one than the owner.
        named: Option<String>,
    },
    /// The bundle's tenancy rules do not allow the object.
    NotAllowed {
        /// The object.
        object: ObjKey,
        /// The rule it broke.
        rule: TenancyViolation,
    },
}

impl Violation {
    /// The CamelCase reason reported in the bundle's Stalled condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Violation::Reserved { .. } => "Reserved",
            Violation::OwnershipConflict { .. } => "OwnershipConflict",
            Violation::NotAllowed { .. } => "NotAllowed",
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Violation::Reserved { .. } => 0,
            Violation::NotAllowed { .. } => 1,
            Violation::OwnershipConflict { .. } => 2,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Reserved { object } => {
                write!(f, "{object} is reserved for the agent (its own namespace and the objects in it)")
            }
            Violation::OwnershipConflict { object, owner, named: None } => write!(
                f,
                "{object} belongs to bundle {owner}; annotate it {TAKEOVER_ANNOTATION}: {owner} to move it"
            ),
            Violation::OwnershipConflict { object, owner, named: Some(n) } => write!(
                f,
                "{object} belongs to bundle {owner}, not {n} as its {TAKEOVER_ANNOTATION} annotation says"
            ),
            Violation::NotAllowed { object, rule } => write!(f, "{object}: {rule}"),
        }
    }
}

/// Every violation of one bundle, most serious first (Reserved, NotAllowed,
/// OwnershipConflict). Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violations(Vec<Violation>);

impl Violations {
    /// The violations, most serious first.
    pub fn list(&self) -> &[Violation] {
        &self.0
    }

    /// The reason of the most serious violation.
    pub fn reason(&self) -> &'static str {
        self.0[0].reason()
    }
}

/// How many violations the message lists before "and N more".
const LISTED: usize = 5;

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().take(LISTED).enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{v}")?;
        }
        if self.0.len() > LISTED {
            write!(f, "; and {} more", self.0.len() - LISTED)?;
        }
        Ok(())
    }
}

/// An object to move from another bundle's inventory into this bundle's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Takeover {
    /// The object.
    pub object: ObjKey,
    /// The bundle whose inventory holds it now.
    pub from: String,
}

/// What the engine must know to judge one bundle.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The bundle.
    pub bundle: &'a str,
    /// The agent's namespace (identity Secret, inventories, keys).
    pub agent_namespace: &'a str,
    /// The bundle's tenancy rules.
    pub tenancy: &'a Tenancy,
    /// Objects this bundle's own inventory already holds.
    pub own: &'a BTreeSet<ObjKey>,
    /// Objects other bundles' inventories hold, with the holder.
    pub owners: &'a BTreeMap<ObjKey, String>,
}

/// Whether an object is one of the agent's own: the agent's namespace, or
/// anything in it.
pub fn is_reserved(key: &ObjKey, agent_namespace: &str) -> bool {
    key.namespace.as_deref() == Some(agent_namespace)
        || (key.group.is_empty() && key.kind == "Namespace" && key.name == agent_namespace)
}

/// Judge a bundle's objects. `Ok` lists the takeovers to carry out before the
/// apply (possibly none); `Err` refuses the whole bundle.
pub fn check(ctx: &Context<'_>, objects: &[Candidate<'_>]) -> Result<Vec<Takeover>, Violations> {
    let mut violations = Vec::new();
    let mut takeovers = Vec::new();
    for c in objects {
        let key = c.key;
        if is_reserved(key, ctx.agent_namespace) {
            violations.push(Violation::Reserved { object: key.clone() });
            continue;
        }
        if let Err(rule) = ctx.tenancy.check(&key.group, &key.kind, key.namespace.as_deref()) {
            violations.push(Violation::NotAllowed { object: key.clone(), rule });
            continue;
        }
        // Objects already in this bundle's inventory were taken before: only
        // objects new to the bundle can conflict.
        if ctx.own.contains(key) {
            continue;
        }
        match ctx.owners.get(key) {
            Some(owner) if owner != ctx.bundle => match c.takeover_from {
                Some(named) if named == owner => {
                    takeovers.push(Takeover { object: key.clone(), from: owner.clone() });
                }
                named => violations.push(Violation::OwnershipConflict {
                    object: key.clone(),
                    owner: owner.clone(),
                    named: named.map(str::to_string),
                }),
            },
            _ => {}
        }
    }
    if violations.is_empty() {
        Ok(takeovers)
    } else {
        violations.sort_by_key(Violation::rank);
        Err(Violations(violations))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: &str = "convoy-system";

    fn cm(ns: &str, name: &str) -> ObjKey {
        ObjKey::new("", "ConfigMap", Some(ns), name)
    }

    fn cluster(group: &str, kind: &str, name: &str) -> ObjKey {
        ObjKey::new(group, kind, None, name)
    }

    struct World {
        tenancy: Tenancy,
        own: BTreeSet<ObjKey>,
        owners: BTreeMap<ObjKey, String>,
    }

    impl World {
        fn new() -> Self {
            World { tenancy: Tenancy::default(), own: BTreeSet::new(), owners: BTreeMap::new() }
        }
        fn owned_by(mut self, key: ObjKey, bundle: &str) -> Self {
            self.owners.insert(key, bundle.into());
            self
        }
        fn mine(mut self, key: ObjKey) -> Self {
            self.own.insert(key);
            self
        }
        fn tenancy(mut self, t: Tenancy) -> Self {
            self.tenancy = t;
            self
        }
        fn check(&self, objects: &[(ObjKey, Option<&str>)]) -> Result<Vec<Takeover>, Violations> {
            let ctx = Context {
                bundle: "b",
                agent_namespace: NS,
                tenancy: &self.tenancy,
                own: &self.own,
                owners: &self.owners,
            };
            let cands: Vec<Candidate<'_>> =
                objects.iter().map(|(k, t)| Candidate { key: k, takeover_from: *t }).collect();
            check(&ctx, &cands)
        }
    }

    fn reasons(r: &Result<Vec<Takeover>, Violations>) -> Vec<&'static str> {
        match r {
            Ok(_) => vec![],
            Err(v) => v.list().iter().map(Violation::reason).collect(),
        }
    }

    /// The whole matrix of (reserved, tenancy, ownership, takeover) for one object.
    #[test]
    fn one_object_table() {
        let app = cm("app", "x");
        let restricted = Tenancy {
            allowed_namespaces: vec!["app".into()],
            allowed_kinds: vec!["ConfigMap".into()],
            allow_cluster_scoped: false,
        };
        #[rustfmt::skip]
        // (what, world, object, takeover annotation, reasons, takeovers)
        type Case<'a> = (&'a str, World, ObjKey, Option<&'a str>, Vec<&'a str>, usize);
        let cases: Vec<Case<'_>> = vec![
            // (what, world, object, takeover annotation, reasons, takeovers)
            ("free object", World::new(), app.clone(), None, vec![], 0),
            (
                "identity Secret",
                World::new(),
                ObjKey::new("", "Secret", Some(NS), "convoy-agent-identity"),
                None,
                vec!["Reserved"],
                0,
            ),
            ("an inventory", World::new(), cm(NS, "convoy-inventory-other"), None, vec!["Reserved"], 0),
            (
                "any object in the agent namespace",
                World::new(),
                cm(NS, "anything"),
                None,
                vec!["Reserved"],
                0,
            ),
            (
                "the agent namespace itself",
                World::new(),
                cluster("", "Namespace", NS),
                None,
                vec!["Reserved"],
                0,
            ),
            ("another namespace", World::new(), cluster("", "Namespace", "app"), None, vec![], 0),
            (
                "reserved even with a takeover",
                World::new().owned_by(cm(NS, "x"), "a"),
                cm(NS, "x"),
                Some("a"),
                vec!["Reserved"],
                0,
            ),
            (
                "reserved even when already held",
                World::new().mine(cm(NS, "x")),
                cm(NS, "x"),
                None,
                vec!["Reserved"],
                0,
            ),
            (
                "held by another bundle",
                World::new().owned_by(app.clone(), "a"),
                app.clone(),
                None,
                vec!["OwnershipConflict"],
                0,
            ),
            (
                "takeover from the owner",
                World::new().owned_by(app.clone(), "a"),
                app.clone(),
                Some("a"),
                vec![],
                1,
            ),
            (
                "takeover naming the wrong bundle",
                World::new().owned_by(app.clone(), "a"),
                app.clone(),
                Some("c"),
                vec!["OwnershipConflict"],
                0,
            ),
            ("takeover of an unowned object", World::new(), app.clone(), Some("a"), vec![], 0),
            (
                "held by this bundle (same name in owners)",
                World::new().owned_by(app.clone(), "b"),
                app.clone(),
                None,
                vec![],
                0,
            ),
            (
                "already in this bundle's inventory",
                World::new().mine(app.clone()).owned_by(app.clone(), "a"),
                app.clone(),
                None,
                vec![],
                0,
            ),
            ("tenancy allows", World::new().tenancy(restricted.clone()), app.clone(), None, vec![], 0),
            (
                "tenancy: namespace",
                World::new().tenancy(restricted.clone()),
                cm("other", "x"),
                None,
                vec!["NotAllowed"],
                0,
            ),
            (
                "tenancy: kind",
                World::new().tenancy(restricted.clone()),
                ObjKey::new("", "Secret", Some("app"), "x"),
                None,
                vec!["NotAllowed"],
                0,
            ),
            (
                "tenancy: cluster scope",
                World::new().tenancy(restricted.clone()),
                cluster("rbac.authorization.k8s.io", "ClusterRole", "x"),
                None,
                vec!["NotAllowed"],
                0,
            ),
            (
                "tenancy applies to objects already held",
                World::new().tenancy(restricted.clone()).mine(cm("other", "x")),
                cm("other", "x"),
                None,
                vec!["NotAllowed"],
                0,
            ),
        ];
        for (what, world, key, takeover, want, takeovers) in cases {
            let r = world.check(&[(key.clone(), takeover)]);
            assert_eq!(reasons(&r), want, "{what}");
            if let Ok(t) = &r {
                assert_eq!(t.len(), takeovers, "{what}");
            }
        }
    }

    #[test]
    fn takeover_names_object_and_old_owner() {
        let app = cm("app", "x");
        let r = World::new().owned_by(app.clone(), "a").check(&[(app.clone(), Some("a"))]).unwrap();
        assert_eq!(r, vec![Takeover { object: app, from: "a".into() }]);
    }

    #[test]
    fn violations_are_sorted_and_named_in_the_message() {
        let w = World::new()
            .owned_by(cm("app", "taken"), "first")
            .tenancy(Tenancy { allowed_namespaces: vec!["app".into()], ..Default::default() });
        let err = w
            .check(&[
                (cm("app", "taken"), None),
                (cm("elsewhere", "x"), None),
                (ObjKey::new("", "Secret", Some(NS), "convoy-agent-identity"), None),
            ])
            .unwrap_err();
        assert_eq!(
            err.list().iter().map(Violation::reason).collect::<Vec<_>>(),
            ["Reserved", "NotAllowed", "OwnershipConflict"]
        );
        assert_eq!(err.reason(), "Reserved");
        let msg = err.to_string();
        assert!(msg.contains("Secret/convoy-system/convoy-agent-identity is reserved"), "{msg}");
        assert!(msg.contains("ConfigMap/elsewhere/x: namespace elsewhere is not in"), "{msg}");
        assert!(
            msg.contains(
                "ConfigMap/app/taken belongs to bundle first; annotate it convoy.dev/takeover-from: first"
            ),
            "{msg}"
        );
    }

    #[test]
    fn long_lists_are_cut() {
        let keys: Vec<(ObjKey, Option<&str>)> = (0..8).map(|i| (cm(NS, &format!("c{i}")), None)).collect();
        let msg = World::new().check(&keys).unwrap_err().to_string();
        assert!(msg.ends_with("; and 3 more"), "{msg}");
        assert_eq!(msg.matches("is reserved").count(), 5, "{msg}");
    }

    #[test]
    fn wrong_takeover_message_names_both() {
        let app = cm("app", "x");
        let msg = World::new().owned_by(app.clone(), "a").check(&[(app, Some("c"))]).unwrap_err().to_string();
        assert!(
            msg.contains("belongs to bundle a, not c as its convoy.dev/takeover-from annotation says"),
            "{msg}"
        );
    }
}
