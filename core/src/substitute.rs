//! Cluster-variable substitution: the `${{ cluster.… }}` grammar applied to the
//! string values of one parsed document, with an explanation of every value it
//! set. Pure: the caller hands in the variables, the documents and their source.
//!
//! Grammar (whitespace inside the braces is optional):
//!
//! ```text
//! expr    = "${{" path [ "|" "default" quoted ] "}}"
//! path    = "cluster.name" | "cluster.kubernetesVersion"
//!         | "cluster.labels" key | "cluster.vars" key
//! key     = "." [A-Za-z0-9_-]+ | "[" quoted "]"
//! quoted  = '"' { any char but '"' and '\' | '\"' | '\\' } '"'
//!           (any other backslash is kept as written: "a\nb" is 4 characters)
//! escape  = "$${{"   (emits a literal "${{")
//! ```
//!
//! `${VAR}`, `$VAR` and `{{ .Values.x }}` are plain text to this engine.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use crate::yaml::Document;
use crate::{Error, Result};

/// What a cluster contributes to substitution.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Variables {
    /// The cluster's name (`cluster.name`).
    pub name: String,
    /// The cluster's labels (`cluster.labels.<k>`).
    pub labels: BTreeMap<String, String>,
    /// The cluster's vars (`cluster.vars.<k>`).
    pub vars: BTreeMap<String, String>,
    /// The Kubernetes version the agent reported (`cluster.kubernetesVersion`),
    /// `None` until it has reported one.
    pub kubernetes_version: Option<String>,
}

/// A variable an expression names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Variable {
    /// `cluster.name`.
    Name,
    /// `cluster.kubernetesVersion`.
    KubernetesVersion,
    /// `cluster.labels.<k>`.
    Label(String),
    /// `cluster.vars.<k>`.
    Var(String),
}

impl fmt::Display for Variable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn key(f: &mut fmt::Formatter<'_>, map: &str, k: &str) -> fmt::Result {
            if is_simple_key(k) {
                write!(f, "cluster.{map}.{k}")
            } else {
                write!(f, "cluster.{map}[{}]", quote(k))
            }
        }
        match self {
            Variable::Name => f.write_str("cluster.name"),
            Variable::KubernetesVersion => f.write_str("cluster.kubernetesVersion"),
            Variable::Label(k) => key(f, "labels", k),
            Variable::Var(k) => key(f, "vars", k),
        }
    }
}

/// Where a substituted value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The cluster's name.
    Name,
    /// The Kubernetes version the agent reported.
    KubernetesVersion,
    /// The cluster label with this key.
    Label(String),
    /// The cluster var with this key.
    Var(String),
    /// The expression's default: the variable was not set.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Name => f.write_str("name"),
            Origin::KubernetesVersion => f.write_str("kubernetesVersion"),
            Origin::Label(k) => write!(f, "label {}", quote(k)),
            Origin::Var(k) => write!(f, "var {}", quote(k)),
            Origin::Default => f.write_str("default"),
        }
    }
}

/// One expression that was replaced, for `convoy render --explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The 0-based index of the document in its file.
    pub index: usize,
    /// JSONPath-like location of the string value (`$.spec.replicas`,
    /// `$.metadata.labels["app.kubernetes.io/name"]`, `$.items[0]`).
    pub path: String,
    /// The expression as written, `${{` … `}}` included.
    pub expression: String,
    /// The text it was replaced with.
    pub value: String,
    /// Where that text came from.
    pub origin: Origin,
}

/// Why an expression could not be substituted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    /// The variable is not set for this cluster and the expression has no default.
    Missing(Variable),
    /// `${{` without a closing `}}`.
    Unclosed,
    /// The path does not start with `cluster.` or names no known variable.
    UnknownPath(String),
    /// The `| default "…"` part is not a double-quoted string, or another
    /// function than `default` follows the `|`.
    BadDefault(String),
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProblemKind::Missing(v) => write!(f, "variable {v} is not set and has no default"),
            ProblemKind::Unclosed => f.write_str("unclosed `${{` (no `}}`)"),
            ProblemKind::UnknownPath(m) => write!(f, "unknown path: {m}"),
            ProblemKind::BadDefault(m) => write!(f, "bad default: {m}"),
        }
    }
}

/// One substitution failure, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The 0-based index of the document in its file.
    pub index: usize,
    /// The 1-based line in the file, when the source text was given and the
    /// expression was found in it (best effort).
    pub line: Option<u32>,
    /// JSONPath-like location of the string value.
    pub path: String,
    /// The offending expression as written (to the end of the value when unclosed).
    pub expression: String,
    /// What is wrong.
    pub kind: ProblemKind,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.index)?;
        if let Some(line) = self.line {
            write!(f, ", line {line}")?;
        }
        write!(f, ", {}: {}: {}", self.path, self.expression, self.kind)
    }
}

/// A document after substitution.
#[derive(Debug, Clone, PartialEq)]
pub struct Substituted {
    /// The document with every expression replaced.
    pub document: Value,
    /// One entry per replaced expression, in document order.
    pub explanations: Vec<Explanation>,
}

/// One input document: its parsed value, its 0-based index in `file` and,
/// optionally, its source text (used only to find line numbers for errors).
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The parsed document.
    pub value: &'a Value,
    /// The 0-based document index in the file.
    pub index: usize,
    /// The document's source, from [`crate::yaml::documents`], if known.
    pub source: Option<&'a Document<'a>>,
}

/// Substitute every document of `file` for one cluster.
///
/// Only string values change; keys, numbers, booleans and nulls are kept, and
/// a value that is exactly one expression stays a string. On failure the
/// error lists every problem of every document, not just the first.
pub fn substitute_all(vars: &Variables, file: &str, inputs: &[Input<'_>]) -> Result<Vec<Substituted>> {
    let mut out = Vec::with_capacity(inputs.len());
    let mut problems = Vec::new();
    for input in inputs {
        let mut run = Run {
            vars,
            index: input.index,
            source: input.source,
            explanations: Vec::new(),
            problems: Vec::new(),
            seen: BTreeMap::new(),
        };
        let mut path = String::from("$");
        let document = run.value(input.value, &mut path);
        problems.append(&mut run.problems);
        out.push(Substituted { document, explanations: run.explanations });
    }
    if problems.is_empty() { Ok(out) } else { Err(Error::Substitution { file: file.to_string(), problems }) }
}

/// Substitute one document; see [`substitute_all`].
pub fn substitute(vars: &Variables, file: &str, input: Input<'_>) -> Result<Substituted> {
    substitute_all(vars, file, &[input]).map(|mut v| v.remove(0))
}

/// The variables the expressions in `value`'s strings name, each with
/// whether at least one expression names it WITHOUT a default (so its absence
/// is an error). Escapes (`$${{`) and malformed expressions name nothing
/// (substitution reports the latter). Used by the hub to key variants on the
/// variables a bundle actually uses.
pub fn used_variables(value: &Value, out: &mut BTreeMap<Variable, bool>) {
    match value {
        Value::String(s) => {
            let mut rest = s.as_str();
            while let Some(pos) = rest.find("${{") {
                if pos > 0 && rest.as_bytes()[pos - 1] == b'$' {
                    rest = &rest[pos + 3..];
                    continue;
                }
                let expr_text = &rest[pos..];
                let len = match parse(expr_text) {
                    Ok((expr, len)) => {
                        let required = out.entry(expr.variable).or_insert(false);
                        *required |= expr.default.is_none();
                        len
                    }
                    Err((_, len)) => len,
                };
                rest = &expr_text[len.max(3)..];
            }
        }
        Value::Array(items) => items.iter().for_each(|v| used_variables(v, out)),
        Value::Object(map) => map.values().for_each(|v| used_variables(v, out)),
        _ => {}
    }
}

/// The value of `variable` for a cluster, `None` when it is not set.
pub fn lookup(vars: &Variables, variable: &Variable) -> Option<String> {
    match variable {
        Variable::Name => Some(vars.name.clone()),
        Variable::KubernetesVersion => vars.kubernetes_version.clone(),
        Variable::Label(k) => vars.labels.get(k).cloned(),
        Variable::Var(k) => vars.vars.get(k).cloned(),
    }
}

struct Run<'a> {
    vars: &'a Variables,
    index: usize,
    source: Option<&'a Document<'a>>,
    explanations: Vec<Explanation>,
    problems: Vec<Problem>,
    /// How many times each raw expression text has been met, to find the
    /// n-th occurrence in the source.
    seen: BTreeMap<String, usize>,
}

impl Run<'_> {
    fn value(&mut self, v: &Value, path: &mut String) -> Value {
        match v {
            Value::String(s) => Value::String(self.string(s, path)),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let len = path.len();
                        path.push_str(&format!("[{i}]"));
                        let r = self.value(item, path);
                        path.truncate(len);
                        r
                    })
                    .collect(),
            ),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, item)| {
                        let len = path.len();
                        if is_simple_key(k) {
                            path.push('.');
                            path.push_str(k);
                        } else {
                            path.push_str(&format!("[{}]", quote(k)));
                        }
                        let r = self.value(item, path);
                        path.truncate(len);
                        (k.clone(), r)
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    fn string(&mut self, s: &str, path: &str) -> String {
        if !s.contains("${{") {
            return s.to_string();
        }
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(pos) = rest.find("${{") {
            if pos > 0 && rest.as_bytes()[pos - 1] == b'$' {
                // `$${{` → literal `${{`.
                out.push_str(&rest[..pos - 1]);
                out.push_str("${{");
                rest = &rest[pos + 3..];
                continue;
            }
            out.push_str(&rest[..pos]);
            let expr_text = &rest[pos..];
            match parse(expr_text) {
                Ok((expr, len)) => {
                    let raw = &expr_text[..len];
                    match self.resolve(&expr) {
                        Ok((value, origin)) => {
                            self.note(raw);
                            out.push_str(&value);
                            self.explanations.push(Explanation {
                                index: self.index,
                                path: path.to_string(),
                                expression: raw.to_string(),
                                value,
                                origin,
                            });
                        }
                        Err(kind) => {
                            out.push_str(raw);
                            self.problem(path, raw, kind);
                        }
                    }
                    rest = &expr_text[len..];
                }
                Err((kind, len)) => {
                    let raw = &expr_text[..len];
                    out.push_str(raw);
                    self.problem(path, raw, kind);
                    rest = &expr_text[len..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    fn resolve(&self, expr: &Expr) -> std::result::Result<(String, Origin), ProblemKind> {
        let found = match &expr.variable {
            Variable::Name => Some((self.vars.name.clone(), Origin::Name)),
            Variable::KubernetesVersion => {
                self.vars.kubernetes_version.clone().map(|v| (v, Origin::KubernetesVersion))
            }
            Variable::Label(k) => self.vars.labels.get(k).map(|v| (v.clone(), Origin::Label(k.clone()))),
            Variable::Var(k) => self.vars.vars.get(k).map(|v| (v.clone(), Origin::Var(k.clone()))),
        };
        match (found, &expr.default) {
            (Some(found), _) => Ok(found),
            (None, Some(d)) => Ok((d.clone(), Origin::Default)),
            (None, None) => Err(ProblemKind::Missing(expr.variable.clone())),
        }
    }

    /// Count one occurrence of `raw` and return the 1-based line of that
    /// occurrence in the file, if the source is known and contains it.
    fn note(&mut self, raw: &str) -> Option<u32> {
        let n = self.seen.entry(raw.to_string()).or_default();
        let nth = *n;
        *n += 1;
        let doc = self.source?;
        // `$${{ … }}` in the source is an escape, not an occurrence.
        let bytes = doc.text.as_bytes();
        let (offset, _) =
            doc.text.match_indices(raw).filter(|(i, _)| *i == 0 || bytes[i - 1] != b'$').nth(nth)?;
        let lines_before = doc.text[..offset].matches('\n').count() as u32;
        Some(doc.start_line + lines_before)
    }

    fn problem(&mut self, path: &str, raw: &str, kind: ProblemKind) {
        let line = self.note(raw);
        self.problems.push(Problem {
            index: self.index,
            line,
            path: path.to_string(),
            expression: raw.to_string(),
            kind,
        });
    }
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expr {
    variable: Variable,
    default: Option<String>,
}

/// Parse the expression at the start of `s` (which starts with `${{`).
/// Returns it and its length in bytes, or the problem and how many bytes the
/// malformed text spans (to its `}}`, or to the end of `s` when unclosed).
fn parse(s: &str) -> std::result::Result<(Expr, usize), (ProblemKind, usize)> {
    let mut p = Parser { s, pos: 3 };
    let malformed = |p: &Parser<'_>, kind: ProblemKind| {
        // Skip to the closing `}}` so the rest of the value is still scanned.
        match s[p.pos..].find("}}") {
            Some(i) => (kind, p.pos + i + 2),
            None => (ProblemKind::Unclosed, s.len()),
        }
    };
    p.ws();
    let variable = match p.path() {
        Ok(v) => v,
        Err(kind) => return Err(malformed(&p, kind)),
    };
    p.ws();
    let mut default = None;
    if p.eat("|") {
        p.ws();
        let func_start = p.pos;
        let func = p.ident();
        if func != "default" {
            let found = if func.is_empty() {
                s[func_start..].chars().next().map(String::from).unwrap_or_default()
            } else {
                func.to_string()
            };
            return Err(malformed(
                &p,
                ProblemKind::BadDefault(format!("expected `default` after `|`, found {found:?}")),
            ));
        }
        p.ws();
        match p.quoted() {
            Ok(Some(d)) => default = Some(d),
            Ok(None) => {
                return Err(malformed(
                    &p,
                    ProblemKind::BadDefault("the default value must be a double-quoted string".into()),
                ));
            }
            Err(()) => return Err((ProblemKind::Unclosed, s.len())),
        }
        p.ws();
    }
    if p.eat("}}") {
        Ok((Expr { variable, default }, p.pos))
    } else if s[p.pos..].contains("}}") {
        let found: String = s[p.pos..].chars().take_while(|c| *c != '}').collect();
        let message = format!("unexpected {:?} before `}}}}`", found.trim());
        let kind = if default.is_some() {
            ProblemKind::BadDefault(message)
        } else {
            ProblemKind::UnknownPath(message)
        };
        Err(malformed(&p, kind))
    } else {
        Err((ProblemKind::Unclosed, s.len()))
    }
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    fn ws(&mut self) {
        let r = self.rest();
        self.pos += r.len() - r.trim_start().len();
    }

    fn eat(&mut self, t: &str) -> bool {
        if self.rest().starts_with(t) {
            self.pos += t.len();
            true
        } else {
            false
        }
    }

    fn ident(&mut self) -> &'a str {
        let r = self.rest();
        let n = r.find(|c: char| !is_key_char(c)).unwrap_or(r.len());
        self.pos += n;
        &r[..n]
    }

    /// A double-quoted string: `Ok(None)` when the next char is not `"`,
    /// `Err` when it is never closed.
    fn quoted(&mut self) -> std::result::Result<Option<String>, ()> {
        if !self.eat("\"") {
            return Ok(None);
        }
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += i + 1;
                    return Ok(Some(out));
                }
                '\\' => match chars.next() {
                    Some((_, e @ ('"' | '\\'))) => out.push(e),
                    // Any other backslash is kept as written (`\n` stays two characters).
                    Some((_, e)) => {
                        out.push('\\');
                        out.push(e);
                    }
                    None => return Err(()),
                },
                c => out.push(c),
            }
        }
        Err(())
    }

    fn path(&mut self) -> std::result::Result<Variable, ProblemKind> {
        let start = self.pos;
        let root = self.ident();
        if root != "cluster" {
            return Err(ProblemKind::UnknownPath(format!(
                "{:?}: paths start with `cluster.`",
                self.word_at(start)
            )));
        }
        if !self.eat(".") {
            return Err(ProblemKind::UnknownPath("expected `.` after `cluster`".into()));
        }
        let field = self.ident();
        match field {
            "name" => Ok(Variable::Name),
            "kubernetesVersion" => Ok(Variable::KubernetesVersion),
            "labels" => self.key().map(Variable::Label),
            "vars" => self.key().map(Variable::Var),
            _ => Err(ProblemKind::UnknownPath(format!(
                "cluster.{field:?}: expected name, kubernetesVersion, labels or vars"
            ))),
        }
    }

    fn key(&mut self) -> std::result::Result<String, ProblemKind> {
        if self.eat(".") {
            let k = self.ident();
            if k.is_empty() {
                return Err(ProblemKind::UnknownPath(
                    "empty key after `.` (write keys with `.`, `/` as [\"…\"])".into(),
                ));
            }
            Ok(k.to_string())
        } else if self.eat("[") {
            self.ws();
            match self.quoted() {
                Ok(Some(k)) if !k.is_empty() => {
                    self.ws();
                    if self.eat("]") {
                        Ok(k)
                    } else {
                        Err(ProblemKind::UnknownPath("expected `]` after the quoted key".into()))
                    }
                }
                _ => Err(ProblemKind::UnknownPath(
                    "expected a non-empty double-quoted key inside `[…]`".into(),
                )),
            }
        } else {
            Err(ProblemKind::UnknownPath("expected `.key` or `[\"key\"]`".into()))
        }
    }

    fn word_at(&self, start: usize) -> &'a str {
        let r = &self.s[start..];
        let n = r.find(|c: char| c.is_whitespace() || c == '}' || c == '|').unwrap_or(r.len());
        &r[..n]
    }
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn is_simple_key(k: &str) -> bool {
    !k.is_empty() && k.chars().all(is_key_char)
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn vars() -> Variables {
        Variables {
            name: "prod-eu".into(),
            labels: [("env", "prod"), ("topology.kubernetes.io/region", "eu-west-1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            vars: [("region", "eu"), ("replicas", "3"), ("empty", "")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            kubernetes_version: Some("1.31.2".into()),
        }
    }

    fn one(v: &Value) -> Result<Substituted> {
        substitute(&vars(), "bundle.yaml", Input { value: v, index: 0, source: None })
    }

    fn problems(r: Result<Substituted>) -> Vec<Problem> {
        match r {
            Err(Error::Substitution { file, problems }) => {
                assert_eq!(file, "bundle.yaml");
                problems
            }
            other => panic!("expected a substitution error, got {other:?}"),
        }
    }

    #[test]
    fn grammar_table() {
        let cases: &[(&str, &str)] = &[
            ("${{ cluster.name }}", "prod-eu"),
            ("${{cluster.name}}", "prod-eu"),
            ("${{   cluster.name\t}}", "prod-eu"),
            ("${{ cluster.kubernetesVersion }}", "1.31.2"),
            ("${{ cluster.vars.region }}", "eu"),
            ("${{ cluster.labels.env }}", "prod"),
            (r#"${{ cluster.labels["topology.kubernetes.io/region"] }}"#, "eu-west-1"),
            (r#"${{ cluster.labels[ "topology.kubernetes.io/region" ] }}"#, "eu-west-1"),
            (r#"${{ cluster.vars["region"] }}"#, "eu"),
            ("${{ cluster.vars.empty }}", ""),
            ("host-${{ cluster.vars.region }}.example.com", "host-eu.example.com"),
            ("${{ cluster.name }}/${{ cluster.vars.region }}", "prod-eu/eu"),
            ("${{ cluster.vars.region }}${{ cluster.vars.region }}", "eueu"),
            ("no expression", "no expression"),
            ("", ""),
            ("héllo ${{ cluster.vars.region }} wörld", "héllo eu wörld"),
        ];
        for (input, want) in cases {
            let got = one(&json!(input)).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got.document, json!(want), "input {input:?}");
        }
    }

    #[test]
    fn defaults_table() {
        let cases: &[(&str, &str)] = &[
            (r#"${{ cluster.vars.zone | default "a" }}"#, "a"),
            (r#"${{cluster.vars.zone|default"a"}}"#, "a"),
            (r#"${{ cluster.vars.region | default "us" }}"#, "eu"),
            (r#"${{ cluster.vars.zone | default "" }}"#, ""),
            (r#"${{ cluster.vars.zone | default "say \"hi\" \\ }}" }}"#, r#"say "hi" \ }}"#),
            (r#"${{ cluster.labels["a/b"] | default "x y" }}"#, "x y"),
            (r#"${{ cluster.vars.empty | default "set" }}"#, ""),
        ];
        for (input, want) in cases {
            let got = one(&json!(input)).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got.document, json!(want), "input {input:?}");
        }
    }

    #[test]
    fn default_applies_when_kubernetes_version_not_reported() {
        let mut v = vars();
        v.kubernetes_version = None;
        let doc = json!(r#"${{ cluster.kubernetesVersion | default "unknown" }}"#);
        let got = substitute(&v, "f", Input { value: &doc, index: 0, source: None }).unwrap();
        assert_eq!(got.document, json!("unknown"));
        assert_eq!(got.explanations[0].origin, Origin::Default);
        let doc = json!("${{ cluster.kubernetesVersion }}");
        let err = substitute(&v, "f", Input { value: &doc, index: 0, source: None }).unwrap_err();
        assert!(err.to_string().contains("cluster.kubernetesVersion is not set"), "{err}");
    }

    #[test]
    fn escaping_table() {
        let cases: &[(&str, &str)] = &[
            ("$${{ cluster.name }}", "${{ cluster.name }}"),
            ("$${{ not.even.a.path }}", "${{ not.even.a.path }}"),
            ("$${{ unclosed", "${{ unclosed"),
            ("a $${{ x }} b ${{ cluster.name }}", "a ${{ x }} b prod-eu"),
            ("${{ cluster.name }}$${{", "prod-eu${{"),
        ];
        for (input, want) in cases {
            let got = one(&json!(input)).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got.document, json!(want), "input {input:?}");
            assert!(got.explanations.iter().all(|e| e.origin == Origin::Name), "{input}");
        }
    }

    #[test]
    fn shell_and_helm_text_is_left_alone() {
        let untouched = [
            "echo ${HOME} $PATH",
            "#!/bin/sh\nset -eu\nfor f in $DIR/*; do echo \"${f}\" ${#f} $(date) ${x:-default}; done\n",
            "{{ .Values.image.tag }}",
            "{{- include \"chart.labels\" . | nindent 4 }}",
            "${ {not} } $ {{ cluster.name }} {{ cluster.name }}",
            "price: $5 {{",
            "$$ ${",
            "}}",
        ];
        for s in untouched {
            let got = one(&json!(s)).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(got.document, json!(s));
            assert!(got.explanations.is_empty());
        }
        // A ConfigMap whose script mixes shell variables with one expression:
        // only the expression changes.
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "script"},
            "data": {"run.sh": "echo ${HOME} $PATH in ${{ cluster.vars.region }}\n"}
        });
        let got = one(&cm).unwrap();
        assert_eq!(got.document["data"]["run.sh"], json!("echo ${HOME} $PATH in eu\n"));
    }

    #[test]
    fn keys_are_never_touched() {
        let doc = json!({
            "${{ cluster.name }}": "${{ cluster.name }}",
            "$${{ x }}": {"${{ cluster.vars.nope }}": 1},
        });
        let got = one(&doc).unwrap();
        assert_eq!(
            got.document,
            json!({"${{ cluster.name }}": "prod-eu", "$${{ x }}": {"${{ cluster.vars.nope }}": 1}})
        );
    }

    #[test]
    fn non_strings_and_exact_expressions_keep_their_types() {
        let doc = json!({
            "replicas": "${{ cluster.vars.replicas }}",
            "n": 3, "f": 1.5, "b": true, "z": null,
        });
        let got = one(&doc).unwrap();
        // A value that is exactly one expression stays a string: no coercion.
        assert_eq!(got.document["replicas"], json!("3"));
        assert_eq!(got.document["n"], json!(3));
        assert_eq!(got.document["f"], json!(1.5));
        assert_eq!(got.document["b"], json!(true));
        assert_eq!(got.document["z"], Value::Null);
    }

    #[test]
    fn nested_maps_and_lists_with_explain() {
        let doc = json!({
            "metadata": {"labels": {"app.kubernetes.io/instance": "${{ cluster.name }}"}},
            "spec": {"containers": [
                {"env": [
                    {"name": "REGION", "value": "${{ cluster.vars.region }}"},
                    {"name": "ZONE", "value": "${{ cluster.vars.zone | default \"a\" }}"},
                ]},
                ["${{ cluster.labels[\"topology.kubernetes.io/region\"] }}", "${{ cluster.kubernetesVersion }}"],
            ]},
        });
        let got = one(&doc).unwrap();
        assert_eq!(got.document["metadata"]["labels"]["app.kubernetes.io/instance"], json!("prod-eu"));
        assert_eq!(got.document["spec"]["containers"][0]["env"][1]["value"], json!("a"));
        assert_eq!(got.document["spec"]["containers"][1], json!(["eu-west-1", "1.31.2"]));
        let explained: Vec<(String, String, String, String)> = got
            .explanations
            .iter()
            .map(|e| (e.path.clone(), e.expression.clone(), e.value.clone(), e.origin.to_string()))
            .collect();
        let want: Vec<(String, String, String, String)> = [
            ("$.metadata.labels[\"app.kubernetes.io/instance\"]", "${{ cluster.name }}", "prod-eu", "name"),
            ("$.spec.containers[0].env[0].value", "${{ cluster.vars.region }}", "eu", "var \"region\""),
            ("$.spec.containers[0].env[1].value", "${{ cluster.vars.zone | default \"a\" }}", "a", "default"),
            (
                "$.spec.containers[1][0]",
                "${{ cluster.labels[\"topology.kubernetes.io/region\"] }}",
                "eu-west-1",
                "label \"topology.kubernetes.io/region\"",
            ),
            ("$.spec.containers[1][1]", "${{ cluster.kubernetesVersion }}", "1.31.2", "kubernetesVersion"),
        ]
        .into_iter()
        .map(|(a, b, c, d)| (a.into(), b.into(), c.into(), d.into()))
        .collect();
        assert_eq!(explained, want);
        assert!(got.explanations.iter().all(|e| e.index == 0));
    }

    #[test]
    fn all_missing_variables_of_a_document_are_listed_with_lines() {
        let text = "apiVersion: v1\nkind: ConfigMap\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ${{ cluster.name }}\ndata:\n  a: ${{ cluster.vars.zone }}\n  b: ${{ cluster.labels[\"tier/x\"] }}\n  c: x ${{ cluster.vars.zone }} y\n  d: ${{ cluster.vars.region }}\n";
        let docs = crate::yaml::documents(text);
        assert_eq!(docs.len(), 2);
        let doc = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "${{ cluster.name }}"},
            "data": {
                "a": "${{ cluster.vars.zone }}",
                "b": "${{ cluster.labels[\"tier/x\"] }}",
                "c": "x ${{ cluster.vars.zone }} y",
                "d": "${{ cluster.vars.region }}",
            }
        });
        let ps = problems(one_at(&doc, 1, Some(&docs[1])));
        let got: Vec<(usize, Option<u32>, String, String)> =
            ps.iter().map(|p| (p.index, p.line, p.path.clone(), p.kind.to_string())).collect();
        assert_eq!(
            got,
            vec![
                (
                    1,
                    Some(9),
                    "$.data.a".into(),
                    "variable cluster.vars.zone is not set and has no default".into()
                ),
                (
                    1,
                    Some(10),
                    "$.data.b".into(),
                    "variable cluster.labels[\"tier/x\"] is not set and has no default".into()
                ),
                (
                    1,
                    Some(11),
                    "$.data.c".into(),
                    "variable cluster.vars.zone is not set and has no default".into()
                ),
            ]
        );
        let msg = Error::Substitution { file: "bundle.yaml".into(), problems: ps }.to_string();
        assert!(
            msg.starts_with("bundle.yaml: 3 substitution problem(s): document 1, line 9, $.data.a:"),
            "{msg}"
        );
    }

    #[test]
    fn lines_follow_repeated_expressions_and_skip_escapes() {
        let text = "# comment\nkind: ConfigMap\ndata:\n  a: $${{ cluster.vars.zone }}\n  b: ${{ cluster.vars.zone }}\n  c: ok\n  d: ${{ cluster.vars.zone }} and ${{ cluster.vars.zone }}\n";
        let docs = crate::yaml::documents(text);
        let doc = json!({
            "kind": "ConfigMap",
            "data": {
                "a": "$${{ cluster.vars.zone }}",
                "b": "${{ cluster.vars.zone }}",
                "c": "ok",
                "d": "${{ cluster.vars.zone }} and ${{ cluster.vars.zone }}",
            }
        });
        let ps = problems(one_at(&doc, 0, Some(&docs[0])));
        let lines: Vec<(Option<u32>, &str)> = ps.iter().map(|p| (p.line, p.path.as_str())).collect();
        assert_eq!(lines, vec![(Some(5), "$.data.b"), (Some(7), "$.data.d"), (Some(7), "$.data.d")]);
        // An expression written differently in the source (here: a YAML
        // double-quoted scalar with escaped quotes) is reported without a line.
        let text = "a: \"${{ cluster.vars.zone | default \\\"x\\\" | nope }}\"\n";
        let docs = crate::yaml::documents(text);
        let doc = json!({"a": "${{ cluster.vars.zone | default \"x\" | nope }}"});
        let ps = problems(one_at(&doc, 0, Some(&docs[0])));
        assert_eq!(ps.len(), 1);
        assert_eq!(ps[0].line, None);
    }

    fn one_at(v: &Value, index: usize, source: Option<&Document<'_>>) -> Result<Substituted> {
        substitute(&vars(), "bundle.yaml", Input { value: v, index, source })
    }

    #[test]
    fn missing_without_source_has_no_line() {
        let ps = problems(one(&json!(["${{ cluster.vars.a }}", "${{ cluster.vars.b }}"])));
        assert_eq!(ps.len(), 2);
        assert!(ps.iter().all(|p| p.line.is_none()));
        assert_eq!(ps[1].kind, ProblemKind::Missing(Variable::Var("b".into())));
        assert_eq!(ps[1].path, "$[1]");
    }

    #[test]
    fn substitute_all_reports_every_document_and_is_per_cluster() {
        let a = json!({"x": "${{ cluster.vars.zone }}"});
        let b = json!({"y": "${{ cluster.vars.zone }}", "z": "${{ cluster.vars.rack }}"});
        let inputs =
            [Input { value: &a, index: 0, source: None }, Input { value: &b, index: 1, source: None }];
        let err = substitute_all(&vars(), "f.yaml", &inputs).unwrap_err();
        let Error::Substitution { problems, .. } = err else { panic!("wrong error") };
        let where_: Vec<(usize, &str)> = problems.iter().map(|p| (p.index, p.path.as_str())).collect();
        assert_eq!(where_, vec![(0, "$.x"), (1, "$.y"), (1, "$.z")]);
        // Another cluster that sets the vars renders the same documents fine.
        let mut other = vars();
        other.vars.insert("zone".into(), "b".into());
        other.vars.insert("rack".into(), "r1".into());
        let ok = substitute_all(&other, "f.yaml", &inputs).unwrap();
        assert_eq!(ok[1].document, json!({"y": "b", "z": "r1"}));
        assert_eq!(ok[1].explanations[0].index, 1);
    }

    #[test]
    fn malformed_expressions_table() {
        let cases: &[(&str, &str, &str)] = &[
            ("${{ cluster.name", "${{ cluster.name", "unclosed"),
            ("a ${{", "${{", "unclosed"),
            ("${{ cluster.vars.x | default \"open }}", "${{ cluster.vars.x | default \"open }}", "unclosed"),
            ("${{ env.HOME }}", "${{ env.HOME }}", "unknown path: \"env.HOME\": paths start with `cluster.`"),
            ("${{ }}", "${{ }}", "unknown path"),
            ("${{ cluster }}", "${{ cluster }}", "expected `.` after `cluster`"),
            (
                "${{ cluster.region }}",
                "${{ cluster.region }}",
                "expected name, kubernetesVersion, labels or vars",
            ),
            ("${{ cluster.vars }}", "${{ cluster.vars }}", "expected `.key`"),
            ("${{ cluster.vars. }}", "${{ cluster.vars. }}", "empty key"),
            ("${{ cluster.labels.a.b }}", "${{ cluster.labels.a.b }}", "unexpected \".b\""),
            ("${{ cluster.labels[a] }}", "${{ cluster.labels[a] }}", "double-quoted key"),
            ("${{ cluster.labels[\"a\" }}", "${{ cluster.labels[\"a\" }}", "expected `]`"),
            ("${{ cluster.vars.x | default 'eu' }}", "${{ cluster.vars.x | default 'eu' }}", "bad default"),
            ("${{ cluster.vars.x | default eu }}", "${{ cluster.vars.x | default eu }}", "double-quoted"),
            (
                "${{ cluster.vars.x | upper }}",
                "${{ cluster.vars.x | upper }}",
                "expected `default` after `|`",
            ),
            ("${{ cluster.vars.x | }}", "${{ cluster.vars.x | }}", "expected `default`"),
            (
                "${{ cluster.vars.x | default \"a\" \"b\" }}",
                "${{ cluster.vars.x | default \"a\" \"b\" }}",
                "bad default: unexpected",
            ),
            (
                "${{ cluster.name | default \"a\" | nope }}",
                "${{ cluster.name | default \"a\" | nope }}",
                "bad default",
            ),
        ];
        for (input, expr, msg) in cases {
            let ps = problems(one(&json!(input)));
            assert_eq!(ps.len(), 1, "{input}: {ps:?}");
            assert_eq!(ps[0].expression, *expr, "{input}");
            let text = ps[0].kind.to_string();
            assert!(text.contains(msg), "{input}: {text:?} lacks {msg:?}");
        }
    }

    #[test]
    fn a_malformed_expression_does_not_hide_later_ones() {
        let ps = problems(one(&json!("${{ bad }} ${{ cluster.vars.zone }} ${{ cluster.name }}")));
        let kinds: Vec<&ProblemKind> = ps.iter().map(|p| &p.kind).collect();
        assert!(matches!(kinds[0], ProblemKind::UnknownPath(_)));
        assert_eq!(kinds[1], &ProblemKind::Missing(Variable::Var("zone".into())));
        assert_eq!(ps.len(), 2);
    }

    #[test]
    fn result_is_still_a_valid_document() {
        let doc = json!({"data": {"q": "${{ cluster.vars.quote | default \"a \\\"b\\\": c\\n- d\" }}"}});
        let got = one(&doc).unwrap();
        assert_eq!(got.document["data"]["q"], json!("a \"b\": c\\n- d"));
        let text = serde_json::to_string(&got.document).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, got.document);
        let yaml = serde_saphyr::to_string(&got.document).unwrap();
        let back: Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back, got.document);
    }

    #[test]
    fn variable_display_round_trips_through_the_parser() {
        for v in [
            Variable::Name,
            Variable::KubernetesVersion,
            Variable::Label("env".into()),
            Variable::Label("topology.kubernetes.io/region".into()),
            Variable::Var("we\"ird\\key".into()),
        ] {
            let text = format!("${{{{ {v} }}}}");
            let (expr, len) = parse(&text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
            assert_eq!(len, text.len());
            assert_eq!(expr.variable, v, "{text}");
        }
    }

    #[test]
    fn used_variables_lists_each_variable_and_whether_it_is_required() {
        let v: Value = serde_json::json!({
            "a": "${{ cluster.vars.region }}-${{ cluster.name }}",
            "b": ["${{ cluster.vars.zone | default \"z\" }}", "$${{ cluster.vars.escaped }}", "${HOME}"],
            "c": {"d": "${{ cluster.labels[\"topology.kubernetes.io/region\"] | default \"x\" }}", "e": "${{ cluster.vars.zone }}"},
            "${{ cluster.vars.key }}": 3,
        });
        let mut used = BTreeMap::new();
        used_variables(&v, &mut used);
        let want: BTreeMap<Variable, bool> = [
            (Variable::Name, true),
            (Variable::Label("topology.kubernetes.io/region".into()), false),
            (Variable::Var("region".into()), true),
            (Variable::Var("zone".into()), true),
        ]
        .into_iter()
        .collect();
        assert_eq!(used, want);
        let vars = Variables { name: "c1".into(), ..Default::default() };
        assert_eq!(lookup(&vars, &Variable::Name).as_deref(), Some("c1"));
        assert_eq!(lookup(&vars, &Variable::Var("region".into())), None);
    }
}
