//! Kubernetes label selectors: the structured form used in config and the
//! string form (`env=prod,region in (eu,us),!canary`) used on the command line.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

pub use crate::labels::Labels;

/// A Kubernetes label selector. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Every key must have exactly this value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Every expression must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// How to compare.
    pub operator: Operator,
    /// The values for In and NotIn; empty for Exists and DoesNotExist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// A `matchExpressions` operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operator {
    /// The label's value is one of the values.
    In,
    /// The label is missing or its value is none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is missing.
    DoesNotExist,
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(&self.key);
        match self.operator {
            Operator::In => v.is_some_and(|v| self.values.iter().any(|x| x == v)),
            Operator::NotIn => v.is_none_or(|v| !self.values.iter().any(|x| x == v)),
            Operator::Exists => v.is_some(),
            Operator::DoesNotExist => v.is_none(),
        }
    }
}

impl LabelSelector {
    /// Whether `labels` satisfy every term.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// Whether this selector has no terms (and so matches everything).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Check that In/NotIn have values and Exists/DoesNotExist have none.
    pub fn validate(&self) -> Result<()> {
        for r in &self.match_expressions {
            let needs_values = matches!(r.operator, Operator::In | Operator::NotIn);
            if needs_values == r.values.is_empty() {
                return Err(Error::Selector {
                    selector: self.to_string(),
                    message: format!(
                        "operator {:?} on key {:?} {} values",
                        r.operator,
                        r.key,
                        if needs_values { "needs" } else { "takes no" }
                    ),
                });
            }
        }
        Ok(())
    }

    /// Parse the string form: `a=b`, `a==b`, `a!=b`, `a in (x,y)`,
    /// `a notin (x,y)`, `a`, `!a`, joined by commas.
    pub fn parse(s: &str) -> Result<Self> {
        let err = |m: String| Error::Selector { selector: s.into(), message: m };
        let mut sel = LabelSelector::default();
        for term in split_terms(s) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let req = if let Some(key) = term.strip_prefix('!') {
                Requirement { key: key.trim().into(), operator: Operator::DoesNotExist, values: vec![] }
            } else if let Some((k, v)) = term.split_once("!=") {
                Requirement { key: k.trim().into(), operator: Operator::NotIn, values: vec![v.trim().into()] }
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                sel.match_labels.insert(k.trim().into(), v.trim().into());
                continue;
            } else if let Some((k, vals)) = split_set(term, " notin ") {
                Requirement { key: k, operator: Operator::NotIn, values: vals.map_err(err)? }
            } else if let Some((k, vals)) = split_set(term, " in ") {
                Requirement { key: k, operator: Operator::In, values: vals.map_err(err)? }
            } else {
                Requirement { key: term.into(), operator: Operator::Exists, values: vec![] }
            };
            if req.key.is_empty() || req.key.contains(char::is_whitespace) {
                return Err(err(format!("bad term {term:?}")));
            }
            sel.match_expressions.push(req);
        }
        for k in sel.match_labels.keys() {
            if k.is_empty() || k.contains(char::is_whitespace) {
                return Err(err(format!("bad key {k:?}")));
            }
        }
        Ok(sel)
    }
}

/// Split on commas that are not inside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn split_set(term: &str, op: &str) -> Option<(String, std::result::Result<Vec<String>, String>)> {
    let (k, rest) = term.split_once(op)?;
    let rest = rest.trim();
    let vals = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .map(|inner| {
            inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect::<Vec<_>>()
        })
        .ok_or_else(|| format!("expected (v1,v2) after {:?}", op.trim()));
    Some((k.trim().to_string(), vals))
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut terms: Vec<String> = self.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for r in &self.match_expressions {
            terms.push(match r.operator {
                Operator::In => format!("{} in ({})", r.key, r.values.join(",")),
                Operator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        f.write_str(&terms.join(","))
    }
}

/// Parse `k=v,k2=v2` (or repeated `k=v` flags) into labels: [`crate::labels::parse`].
pub use crate::labels::parse as parse_labels;

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(s: &str) -> Labels {
        parse_labels([s]).unwrap()
    }

    #[test]
    fn empty_matches_all() {
        assert!(LabelSelector::default().matches(&labels("a=b")));
        assert!(LabelSelector::parse("").unwrap().is_empty());
    }

    #[test]
    fn string_form() {
        let s = LabelSelector::parse("env=prod,region in (eu, us),!canary,tier").unwrap();
        assert!(s.matches(&labels("env=prod,region=eu,tier=web")));
        assert!(!s.matches(&labels("env=prod,region=ap,tier=web")));
        assert!(!s.matches(&labels("env=prod,region=eu,tier=web,canary=1")));
        assert!(!s.matches(&labels("env=prod,region=eu")));
        let s = LabelSelector::parse("env!=prod,zone notin (a,b)").unwrap();
        assert!(s.matches(&labels("env=dev")));
        assert!(s.matches(&labels("zone=c")));
        assert!(!s.matches(&labels("env=prod")));
        assert!(!s.matches(&labels("zone=a")));
        assert_eq!(LabelSelector::parse(&s.to_string()).unwrap(), s);
    }

    #[test]
    fn bad_selectors() {
        assert!(LabelSelector::parse("a in eu").is_err());
        assert!(LabelSelector::parse("a b").is_err());
        let bad = LabelSelector {
            match_expressions: vec![Requirement { key: "a".into(), operator: Operator::In, values: vec![] }],
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }
}
