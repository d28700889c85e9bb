//! Manifests: parsing the YAML and JSON files of a bundle into Kubernetes
//! objects, with errors that name the file, the document and the line, and
//! flattening `List`s into their items as kubectl does.
//!
//! A YAML file may hold several documents separated by `---`; documents with
//! only comments, and documents that are `null`, are skipped. A JSON file
//! holds one value. Every object must be a mapping with a string
//! `apiVersion`, a string `kind` and a non-empty string `metadata.name`.
//! One bad document rejects the whole bundle.
//!
//! # Lists
//!
//! kubectl's rule (apimachinery's `UnstructuredJSONScheme` and
//! `Unstructured.IsList`, then the resource builder's `FlattenListVisitor`):
//! a document whose `items` field is an array is a list, whatever its kind
//! (`v1 List`, `ConfigMapList`, `RoleBindingList`, a CRD's `FooList`), and is
//! replaced by its items, in order. The list itself needs a string `kind`;
//! its `apiVersion` and `metadata` are dropped. `items: null` is an empty
//! list. `items` that is present but neither an array nor null is an error.
//! An item must be a mapping with `apiVersion`, `kind` and `metadata.name`;
//! an item that is itself a list (has an `items` array) is an error, because
//! kubectl refuses nested lists too (`is not a list: no Items field`).
//! Unlike kubectl, an item without `kind` and `apiVersion` is an error
//! rather than given the list's (kubectl guesses `ConfigMap` from
//! `ConfigMapList`): the artifact names every object's type. Errors name the
//! file, the document, the item index and the item's line.
//!
//! # Budget
//!
//! Every document of one artifact is parsed within one
//! [`convoy_core::yaml::Budget`] (aliases, nodes and bytes counted with
//! aliases expanded, and objects), so an alias bomb split over many
//! documents or files is a [`Error::Limit`] naming the limit, the file and
//! the document, and the parser stops when the budget is spent.
//!
//! # SOPS
//!
//! A SOPS-encrypted document (top-level `sops:` mapping) is kept as
//! ciphertext; its SOPS metadata must be well-formed (see docs/secrets.md).

use convoy_core::yaml::{Budget, BudgetUsage, Document};
use serde_json::Value;

use crate::tree::is_manifest_name;
use crate::{Error, Result};

/// One Kubernetes object from a bundle.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The file inside the bundle.
    pub file: String,
    /// The 0-based index of the document in the file.
    pub index: usize,
    /// The index in `items` when the document is a list (see the module docs).
    pub item: Option<usize>,
    /// The 1-based line where the document starts.
    pub line: u32,
    /// The object.
    pub object: Value,
}

impl Manifest {
    /// `apiVersion`.
    pub fn api_version(&self) -> &str {
        self.object["apiVersion"].as_str().unwrap_or_default()
    }

    /// `kind`.
    pub fn kind(&self) -> &str {
        self.object["kind"].as_str().unwrap_or_default()
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or_default()
    }

    /// `metadata.namespace`, if set.
    pub fn namespace(&self) -> Option<&str> {
        self.object["metadata"]["namespace"].as_str().filter(|s| !s.is_empty())
    }

    /// Where it came from, for messages: `file document 3` or
    /// `file document 3 item 1`.
    pub fn origin(&self) -> String {
        match self.item {
            Some(i) => format!("{} document {} item {i}", self.file, self.index),
            None => format!("{} document {}", self.file, self.index),
        }
    }
}

/// Parse one manifest file (YAML, multi-document, or JSON by extension),
/// within a default [`Budget`] of its own.
pub fn parse_file(file: &str, bytes: &[u8]) -> Result<Vec<Manifest>> {
    parse_file_within(file, bytes, &Budget::default())
}

/// Parse one manifest file within `budget`, shared with the other files of
/// the same artifact.
pub fn parse_file_within(file: &str, bytes: &[u8], budget: &Budget) -> Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for_each_object(file, bytes, budget, |m| {
        out.push(m);
        Ok(())
    })?;
    Ok(out)
}

/// Call `f` with each object of a manifest file as it is parsed, so that a
/// caller can convert and drop objects one at a time instead of holding a
/// whole file as values. Same objects and errors as [`parse_file`]; an error
/// returned by `f` stops the walk and is returned.
pub fn for_each_manifest(file: &str, bytes: &[u8], f: impl FnMut(Manifest) -> Result<()>) -> Result<()> {
    for_each_object(file, bytes, &Budget::default(), f)
}

/// [`for_each_manifest`] within `budget`, shared with the other files of the
/// same artifact.
pub fn for_each_manifest_within(
    file: &str,
    bytes: &[u8],
    budget: &Budget,
    f: impl FnMut(Manifest) -> Result<()>,
) -> Result<()> {
    for_each_object(file, bytes, budget, f)
}

/// Call `f` with each object of one YAML document of `file` (as split by
/// [`convoy_core::yaml::documents`], so that callers can parse the documents
/// of a file on several threads), within `budget`. Indexes and lines in
/// objects and errors are the file's.
pub fn for_each_in_document(
    file: &str,
    doc: &Document<'_>,
    budget: &Budget,
    mut f: impl FnMut(Manifest) -> Result<()>,
) -> Result<()> {
    parse_yaml_document(file, doc, budget, &mut f)
}

/// Parse every file within one [`Budget`] for the whole set; the first bad
/// document fails the whole set.
pub fn parse_files<'a>(files: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Result<Vec<Manifest>> {
    let budget = Budget::default();
    let mut out = Vec::new();
    for (file, bytes) in files {
        out.extend(parse_file_within(file, bytes, &budget)?);
    }
    Ok(out)
}

/// Check a manifest file without keeping its objects; returns the object
/// count. Gives the same verdict and the same errors as [`parse_file`], but
/// most documents are checked on the raw YAML event stream without building
/// values (several times faster); any document the fast path is not sure
/// about (a syntax error, tags, aliases, merge keys, a scalar that might not
/// be a string, an alias, a list) goes through [`parse_file`]'s path.
pub fn check_file(file: &str, bytes: &[u8]) -> Result<usize> {
    check_file_within(file, bytes, &Budget::default())
}

/// [`check_file`] within `budget`, shared with the other files of the same
/// artifact.
pub fn check_file_within(file: &str, bytes: &[u8], budget: &Budget) -> Result<usize> {
    let text = manifest_text(file, bytes)?;
    let mut n = 0;
    for unit in check_units(file, text) {
        n += check_unit(file, text, &unit, budget)?;
    }
    Ok(n)
}

/// A piece of a manifest file that can be checked on its own.
#[derive(Debug, Clone, Copy)]
pub(crate) enum CheckUnit {
    /// The whole file, parsed as JSON.
    Json,
    /// One YAML document: byte range in the file, index, first line.
    Yaml { start: usize, end: usize, index: usize, line: u32 },
}

/// Split a file into independently checkable units (YAML documents).
/// `text` comes from [`manifest_text`].
pub(crate) fn check_units(file: &str, text: &str) -> Vec<CheckUnit> {
    if is_json(file) {
        return vec![CheckUnit::Json];
    }
    let base = text.as_ptr() as usize;
    convoy_core::yaml::documents(text)
        .into_iter()
        .map(|d| {
            let start = d.text.as_ptr() as usize - base;
            CheckUnit::Yaml { start, end: start + d.text.len(), index: d.index, line: d.start_line }
        })
        .collect()
}

/// Check one unit; returns its object count.
pub(crate) fn check_unit(file: &str, text: &str, unit: &CheckUnit, budget: &Budget) -> Result<usize> {
    match *unit {
        CheckUnit::Json => {
            let mut n = 0;
            parse_json(file, text, budget, &mut |_| {
                n += 1;
                Ok(())
            })?;
            Ok(n)
        }
        CheckUnit::Yaml { start, end, index, line } => {
            let doc_text = &text[start..end];
            if let Some(q) = quick::check(doc_text) {
                let usage = BudgetUsage {
                    nodes: q.nodes,
                    expanded_bytes: q.bytes,
                    objects: q.objects as u64,
                    aliases: 0,
                };
                budget.charge(file, index, Some(line), usage).map_err(core_error)?;
                return Ok(q.objects);
            }
            let doc = Document { index, start_line: line, text: doc_text };
            let mut n = 0;
            parse_yaml_document(file, &doc, budget, &mut |_| {
                n += 1;
                Ok(())
            })?;
            Ok(n)
        }
    }
}

fn is_json(file: &str) -> bool {
    file.to_ascii_lowercase().ends_with(".json")
}

/// The UTF-8 text of a manifest file (without a BOM), or the error naming it.
pub(crate) fn manifest_text<'a>(file: &str, bytes: &'a [u8]) -> Result<&'a str> {
    if !is_manifest_name(file) {
        return Err(Error::Manifest {
            file: file.into(),
            index: 0,
            line: None,
            message: "not a manifest file: only .yaml, .yml and .json files may be in a bundle".into(),
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| Error::Manifest {
        file: file.into(),
        index: 0,
        line: Some(line_of(bytes, e.valid_up_to())),
        message: "not UTF-8 text".into(),
    })?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(text))
}

fn for_each_object(
    file: &str,
    bytes: &[u8],
    budget: &Budget,
    mut f: impl FnMut(Manifest) -> Result<()>,
) -> Result<()> {
    let text = manifest_text(file, bytes)?;
    if is_json(file) {
        return parse_json(file, text, budget, &mut f);
    }
    for doc in convoy_core::yaml::documents(text) {
        parse_yaml_document(file, &doc, budget, &mut f)?;
    }
    Ok(())
}

fn parse_json(
    file: &str,
    text: &str,
    budget: &Budget,
    f: &mut impl FnMut(Manifest) -> Result<()>,
) -> Result<()> {
    let value: Value = serde_json::from_str(text).map_err(|e| Error::Manifest {
        file: file.into(),
        index: 0,
        line: (e.line() > 0).then_some(e.line() as u32),
        message: e.to_string().split(" at line ").next().unwrap_or_default().to_string(),
    })?;
    // JSON has no aliases: its expanded size is its text.
    let usage = BudgetUsage { expanded_bytes: text.len() as u64, ..BudgetUsage::default() };
    budget.charge(file, 0, Some(1), usage).map_err(core_error)?;
    emit(file, 0, 1, None, value, budget, f)
}

fn parse_yaml_document(
    file: &str,
    doc: &Document<'_>,
    budget: &Budget,
    f: &mut impl FnMut(Manifest) -> Result<()>,
) -> Result<()> {
    let value: Value = convoy_core::yaml::parse_document_within(file, doc, budget).map_err(core_error)?;
    emit(file, doc.index, doc.start_line, Some(doc.text), value, budget, f)
}

/// convoy-core's YAML errors as this crate's: syntax errors are
/// [`Error::Manifest`], budget breaches [`Error::Limit`] naming the file,
/// document and line.
fn core_error(e: convoy_core::Error) -> Error {
    match e {
        convoy_core::Error::Yaml { file, index, line, message } => {
            Error::Manifest { file, index, line, message }
        }
        convoy_core::Error::Limit { file, index, line, what, limit, actual } => Error::Limit {
            what,
            limit,
            actual,
            path: Some(match line {
                Some(l) => format!("{file}: document {index}, line {l}"),
                None => format!("{file}: document {index}"),
            }),
        },
        other => Error::Manifest { file: String::new(), index: 0, line: None, message: other.to_string() },
    }
}

/// Whether kubectl takes `v` for a list: a mapping whose `items` is an array
/// (apimachinery's `Unstructured.IsList`).
pub fn is_list(v: &Value) -> bool {
    matches!(v.get("items"), Some(Value::Array(_)))
}

/// Flatten one parsed document into objects, as kubectl does (see the module
/// docs), and charge them to `budget`. `text` is the YAML document's text,
/// to find the line of a bad item; `None` for JSON.
fn emit(
    file: &str,
    index: usize,
    line: u32,
    text: Option<&str>,
    value: Value,
    budget: &Budget,
    f: &mut impl FnMut(Manifest) -> Result<()>,
) -> Result<()> {
    let err =
        |line: u32, message: String| Error::Manifest { file: file.into(), index, line: Some(line), message };
    if value.is_null() {
        return Ok(());
    }
    if convoy_sops::is_sops(&value) {
        // A SOPS document passes through encrypted (the hub holds no key):
        // only its metadata and the form of its encrypted values are checked.
        convoy_sops::check(std::slice::from_ref(&value)).map_err(|e| err(line, format!("SOPS: {e}")))?;
    }
    let charge = |n: usize| {
        let usage = BudgetUsage { objects: n as u64, ..BudgetUsage::default() };
        budget.charge(file, index, Some(line), usage).map_err(core_error)
    };
    let items = match value.get("items") {
        Some(Value::Array(_)) => true,
        // `items: null` decodes to an empty list in kubectl too.
        Some(Value::Null) if value.get("kind").is_some_and(Value::is_string) => true,
        Some(other) if value.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List")) => {
            return Err(err(line, format!("items must be a list of objects, found {}", type_name(other))));
        }
        _ => false,
    };
    if !items {
        check_object(&value).map_err(|m| err(line, m))?;
        charge(1)?;
        return f(Manifest { file: file.into(), index, item: None, line, object: value });
    }
    let list_kind = match value.get("kind") {
        Some(Value::String(k)) if !k.is_empty() => k.clone(),
        Some(other) => {
            return Err(err(line, format!("a list's kind must be a string, found {}", type_name(other))));
        }
        None => {
            return Err(err(line, "not a Kubernetes object: a list (it has items) is missing kind".into()));
        }
    };
    let Value::Object(mut map) = value else { unreachable!("a value with items is a mapping") };
    let items = match map.remove("items") {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    };
    charge(items.len())?;
    let lines = text.map(|t| item_lines(t, items.len())).unwrap_or_default();
    for (i, item) in items.into_iter().enumerate() {
        let item_line = lines.get(i).copied().flatten().map_or(line, |l| line + l - 1);
        let bad = |m: String| err(item_line, format!("{list_kind} item {i} (line {item_line}): {m}"));
        if is_list(&item) {
            return Err(bad(
                "is itself a list (it has an items array); kubectl does not flatten nested lists".into(),
            ));
        }
        check_object(&item).map_err(|m| {
            let missing_both =
                item.is_object() && item.get("kind").is_none() && item.get("apiVersion").is_none();
            match list_kind.strip_suffix("List").filter(|k| missing_both && !k.is_empty()) {
                Some(k) => bad(format!(
                    "{m} (kubectl would guess kind {k} from the {list_kind}; Convoy wants it written)"
                )),
                None => bad(m),
            }
        })?;
        f(Manifest { file: file.into(), index, item: Some(i), line: item_line, object: item })?;
    }
    Ok(())
}

/// The 1-based line (relative to the document) where each of the first `n`
/// entries of the top-level `items` sequence starts, read from the YAML
/// events; `None` where it cannot be told (the caller falls back to the
/// document's line).
fn item_lines(text: &str, n: usize) -> Vec<Option<u32>> {
    use granit_parser::{Event, Parser};
    struct Frame {
        mapping: bool,
        key_next: bool,
        items: bool,
    }
    let mut out = Vec::with_capacity(n);
    let mut stack: Vec<Frame> = Vec::new();
    // The top-level key just read was `items`.
    let mut items_key = false;
    let mut p = Parser::new_from_str(text);
    while let Some(Ok((ev, span))) = p.next_event() {
        let start = matches!(ev, Event::MappingStart(..) | Event::SequenceStart(..));
        if !(start || matches!(ev, Event::Scalar(..) | Event::Alias(..))) {
            if matches!(ev, Event::MappingEnd | Event::SequenceEnd) {
                stack.pop();
            }
            continue;
        }
        let mut opens_items = false;
        let depth = stack.len();
        if let Some(top) = stack.last_mut() {
            if top.items {
                out.push(Some(span.start.line() as u32));
                if out.len() >= n {
                    break;
                }
            }
            if top.mapping {
                if top.key_next {
                    items_key = depth == 1 && matches!(&ev, Event::Scalar(k, ..) if k == "items");
                    top.key_next = false;
                } else {
                    opens_items = depth == 1 && items_key;
                    items_key = false;
                    top.key_next = true;
                }
            }
        }
        match ev {
            Event::MappingStart(..) => stack.push(Frame { mapping: true, key_next: true, items: false }),
            Event::SequenceStart(..) => {
                stack.push(Frame { mapping: false, key_next: false, items: opens_items })
            }
            _ => {}
        }
    }
    out.resize(n, None);
    out
}

/// Check that a value is a Kubernetes object: a mapping with string
/// `apiVersion`, string `kind` and non-empty string `metadata.name`.
pub fn check_object(v: &Value) -> std::result::Result<(), String> {
    let Some(map) = v.as_object() else {
        return Err(format!("not a Kubernetes object: expected a mapping, found {}", type_name(v)));
    };
    let field = |name: &str| -> std::result::Result<(), String> {
        match map.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Ok(()),
            Some(other) => {
                Err(format!("not a Kubernetes object: {name} must be a string, found {}", type_name(other)))
            }
            None => Err(format!("not a Kubernetes object: missing {name}")),
        }
    };
    field("apiVersion")?;
    field("kind")?;
    match map.get("metadata").and_then(|m| m.get("name")) {
        Some(Value::String(s)) if !s.is_empty() => Ok(()),
        Some(other) => Err(format!("metadata.name must be a non-empty string, found {}", type_name(other))),
        None => Err(format!(
            "{} {}: missing metadata.name",
            map["apiVersion"].as_str().unwrap_or_default(),
            map["kind"].as_str().unwrap_or_default()
        )),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(s) if s.is_empty() => "an empty string",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn line_of(bytes: &[u8], offset: usize) -> u32 {
    1 + bytes[..offset.min(bytes.len())].iter().filter(|b| **b == b'\n').count() as u32
}

/// The fast path: check a YAML document on its event stream. `None` means
/// "not sure": the caller parses the document fully. It is sure only about
/// plain documents: no tags, no merge keys, no complex or repeated keys, no
/// nesting deeper than [`quick::MAX_DEPTH`], and identifying fields that are
/// certainly non-empty strings.
mod quick {
    use std::borrow::Cow;
    use std::collections::HashSet;

    use granit_parser::{Event, Options, Parser, ScalarStyle, StrInput};

    pub(super) const MAX_DEPTH: usize = 128;

    type P<'a> = Parser<'a, StrInput<'a>>;

    #[derive(Clone, Copy, PartialEq)]
    enum Role {
        Top,
        Metadata,
        Other,
    }

    #[derive(Default)]
    struct Fields {
        api_version: Option<String>,
        kind: Option<String>,
        name: bool,
        /// Nodes and scalar bytes seen, for the YAML budget.
        nodes: u64,
        bytes: u64,
    }

    /// What a document the fast path is sure about holds.
    pub(super) struct Checked {
        pub(super) objects: usize,
        pub(super) nodes: u64,
        pub(super) bytes: u64,
    }

    pub(super) fn check(text: &str) -> Option<Checked> {
        let mut opts = Options::default();
        opts.emit_comments = false;
        let mut p = Parser::new_from_str_with_options(text, opts);
        let mut out = Checked { objects: 0, nodes: 0, bytes: 0 };
        loop {
            let (ev, _) = p.next_event()?.ok()?;
            match ev {
                Event::StreamStart | Event::DocumentStart(..) | Event::DocumentEnd => {}
                Event::StreamEnd => return Some(out),
                Event::MappingStart(_, _, None) => {
                    let mut f = Fields { nodes: 1, ..Fields::default() };
                    mapping(&mut p, Role::Top, &mut f, 1)?;
                    f.api_version?;
                    f.kind?;
                    if !f.name {
                        return None;
                    }
                    out.objects += 1;
                    out.nodes += f.nodes;
                    out.bytes += f.bytes;
                }
                Event::Scalar(v, ScalarStyle::Plain, _, None) if is_null(&v) => {}
                _ => return None,
            }
        }
    }

    /// The keys seen in one mapping.
    #[derive(Default)]
    struct Keys<'a> {
        few: Vec<Cow<'a, str>>,
        many: Option<HashSet<Cow<'a, str>>>,
    }

    impl<'a> Keys<'a> {
        /// False when the key was already there.
        fn insert(&mut self, k: Cow<'a, str>) -> bool {
            if let Some(set) = &mut self.many {
                return set.insert(k);
            }
            if self.few.contains(&k) {
                return false;
            }
            self.few.push(k);
            if self.few.len() > 16 {
                self.many = Some(self.few.drain(..).collect());
            }
            true
        }
    }

    /// The rest of a mapping, after its MappingStart.
    fn mapping<'a>(p: &mut P<'a>, role: Role, f: &mut Fields, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        let mut keys = Keys::default();
        loop {
            let key = match p.next_event()?.ok()?.0 {
                Event::MappingEnd => return Some(()),
                // A top-level `items` may make the document a list: the full parse decides.
                Event::Scalar(k, ..) if role == Role::Top && k == "items" => return None,
                Event::Scalar(k, style, _, None) if !(style == ScalarStyle::Plain && k == "<<") => k,
                _ => return None,
            };
            f.nodes += 1;
            f.bytes += key.len() as u64;
            let field = match (role, key.as_ref()) {
                (Role::Top, "apiVersion") => Some(0),
                (Role::Top, "kind") => Some(1),
                (Role::Metadata, "name") => Some(2),
                _ => None,
            };
            let is_metadata = role == Role::Top && key == "metadata";
            if role == Role::Top && key == "sops" {
                // SOPS metadata is checked on the full path.
                return None;
            }
            if !keys.insert(key) {
                return None;
            }
            match field {
                Some(0) => f.api_version = Some(string(p, f)?),
                Some(1) => f.kind = Some(string(p, f)?),
                Some(_) => {
                    string(p, f)?;
                    f.name = true;
                }
                None if is_metadata => {
                    let Event::MappingStart(_, _, None) = p.next_event()?.ok()?.0 else { return None };
                    f.nodes += 1;
                    mapping(p, Role::Metadata, f, depth + 1)?;
                }
                None => {
                    let ev = p.next_event()?.ok()?.0;
                    node(p, ev, f, depth + 1)?;
                }
            }
        }
    }

    /// One node whose first event is `ev`.
    fn node<'a>(p: &mut P<'a>, ev: Event<'a>, f: &mut Fields, depth: usize) -> Option<()> {
        f.nodes += 1;
        match ev {
            Event::Scalar(v, _, _, None) => {
                f.bytes += v.len() as u64;
                Some(())
            }
            // An alias expands to a copy of its anchor: the full parse charges it.
            Event::Alias(_) => None,
            Event::MappingStart(_, _, None) => mapping(p, Role::Other, f, depth),
            Event::SequenceStart(_, _, None) => {
                if depth > MAX_DEPTH {
                    return None;
                }
                loop {
                    match p.next_event()?.ok()?.0 {
                        Event::SequenceEnd => return Some(()),
                        ev => node(p, ev, f, depth + 1)?,
                    }
                }
            }
            _ => None,
        }
    }

    /// A scalar that is certainly a non-empty string.
    fn string(p: &mut P<'_>, f: &mut Fields) -> Option<String> {
        match p.next_event()?.ok()?.0 {
            Event::Scalar(v, style, _, None)
                if !v.is_empty() && (style != ScalarStyle::Plain || plain_string(&v)) =>
            {
                f.nodes += 1;
                f.bytes += v.len() as u64;
                Some(v.into_owned())
            }
            _ => None,
        }
    }

    fn is_null(v: &str) -> bool {
        matches!(v, "" | "~" | "null" | "Null" | "NULL")
    }

    /// A plain scalar that no YAML schema reads as null, bool or number.
    fn plain_string(v: &str) -> bool {
        let first = v.as_bytes()[0];
        if first.is_ascii_digit() || matches!(first, b'+' | b'-' | b'.' | b'~') {
            return false;
        }
        let lower = v.to_ascii_lowercase();
        !matches!(lower.as_str(), "null" | "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  k: v\n";

    #[test]
    fn multi_document_yaml_with_empty_documents() {
        let text = format!("# header\n---\n{CM}---\n# nothing\n---\n{}", CM.replace("name: a", "name: b"));
        let ms = parse_file("x.yaml", text.as_bytes()).unwrap();
        assert_eq!(ms.len(), 2);
        assert_eq!((ms[0].name(), ms[0].index, ms[0].line), ("a", 0, 3));
        assert_eq!((ms[1].name(), ms[1].kind(), ms[1].index), ("b", "ConfigMap", 1));
    }

    #[test]
    fn broken_yaml_names_file_document_and_line() {
        let text = format!("{CM}---\n{CM}  bad: [1, 2\n");
        let err = parse_file("dir/x.yaml", text.as_bytes()).unwrap_err();
        match &err {
            Error::Manifest { file, index, line, .. } => {
                assert_eq!((file.as_str(), *index), ("dir/x.yaml", 1));
                assert!(matches!(line, Some(13) | Some(14)), "{err}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sops_documents_pass_encrypted_with_their_metadata_checked() {
        let secret = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"k": "c2VjcmV0"}});
        let recipients = convoy_sops::AgeKeys::generate().recipients();
        let regex = convoy_sops::Rules { encrypted_regex: Some("^data$".into()), ..Default::default() };
        for rules in [convoy_sops::Rules::default(), regex] {
            let opts =
                convoy_sops::EncryptOptions { recipients: recipients.clone(), rules, lastmodified: None };
            let enc = convoy_sops::encrypt(std::slice::from_ref(&secret), &opts).unwrap().remove(0);
            let text = serde_json::to_string(&enc).unwrap();
            // data values are ENC[...] strings, not base64: still accepted, as YAML and JSON.
            for file in ["s.yaml", "s.json"] {
                assert_eq!(check_file(file, text.as_bytes()).unwrap(), 1, "{file}");
                let ms = parse_file(file, text.as_bytes()).unwrap();
                assert_eq!(ms[0].object, enc, "passes through unchanged");
            }
            let mut broken = enc.clone();
            broken["sops"]["mac"] = "not a mac".into();
            let err = check_file("s.yaml", serde_json::to_string(&broken).unwrap().as_bytes()).unwrap_err();
            assert!(err.to_string().contains("SOPS: malformed SOPS metadata: mac"), "{err}");
            let mut plain = enc.clone();
            plain["data"]["k"] = "c2VjcmV0".into();
            let err = check_file("s.yaml", serde_json::to_string(&plain).unwrap().as_bytes()).unwrap_err();
            assert!(err.to_string().contains("data:k:") && !err.to_string().contains("c2VjcmV0"), "{err}");
        }
    }

    #[test]
    fn objects_need_api_version_kind_and_name() {
        let err = parse_file("x.yaml", b"kind: ConfigMap\nmetadata: {name: a}\n").unwrap_err();
        assert!(err.to_string().contains("missing apiVersion"), "{err}");
        let err = parse_file("x.yaml", b"apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n").unwrap_err();
        assert!(err.to_string().contains("v1 ConfigMap: missing metadata.name"), "{err}");
        let err = parse_file("x.yaml", b"- a\n- b\n").unwrap_err();
        assert!(err.to_string().contains("expected a mapping, found a list"), "{err}");
        let err = parse_file("x.yaml", b"apiVersion: v1\nkind: 3\nmetadata: {name: a}\n").unwrap_err();
        assert!(err.to_string().contains("kind must be a string"), "{err}");
    }

    #[test]
    fn for_each_manifest_streams_objects_and_stops_on_error() {
        let text = format!("{CM}---\n{}", CM.replace("name: a", "name: b"));
        let mut names = Vec::new();
        for_each_manifest("x.yaml", text.as_bytes(), |m| {
            names.push(m.name().to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(names, ["a", "b"]);
        let mut seen = 0;
        let err = for_each_manifest("x.yaml", text.as_bytes(), |_| {
            seen += 1;
            Err(Error::Other("stop".into()))
        })
        .unwrap_err();
        assert_eq!((seen, err.to_string()), (1, "stop".to_string()));
    }

    #[test]
    fn json_and_lists() {
        let json = br#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"}},
            {"apiVersion":"v1","kind":"Secret","metadata":{"name":"b"}}]}"#;
        let ms = parse_file("l.json", json).unwrap();
        assert_eq!(
            ms.iter().map(|m| m.origin()).collect::<Vec<_>>(),
            ["l.json document 0 item 0", "l.json document 0 item 1"]
        );
        let err = parse_file("bad.json", b"{\n\"a\": 1,\n}").unwrap_err();
        assert!(matches!(err, Error::Manifest { line: Some(3), .. }), "{err}");
        let err = parse_file("README.md", b"# hi").unwrap_err();
        assert!(err.to_string().contains("not a manifest file"), "{err}");
    }

    const CM_LIST: &str = "# rendered\napiVersion: v1\nkind: ConfigMapList\nmetadata: {resourceVersion: \"\"}\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata:\n    name: one\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: two, namespace: ns}\n";

    #[test]
    fn every_kind_of_list_is_flattened_with_item_lines() {
        let text = format!("{CM}---\n{CM_LIST}");
        let ms = parse_file("m.yaml", text.as_bytes()).unwrap();
        let got: Vec<_> = ms.iter().map(|m| (m.name(), m.namespace(), m.index, m.item, m.line)).collect();
        assert_eq!(
            got,
            [("a", None, 0, None, 1), ("one", None, 1, Some(0), 13), ("two", Some("ns"), 1, Some(1), 17)]
        );
        // Any kind with an items array is a list, as kubectl decides (a v1 List, a RoleBindingList,
        // even a ConfigMap), and a list needs no apiVersion.
        for head in [
            "apiVersion: v1\nkind: List",
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBindingList",
            "kind: ConfigMap",
            "kind: FooList",
        ] {
            let doc = format!("{head}\nitems:\n- {{apiVersion: v1, kind: Secret, metadata: {{name: s}}}}\n");
            let ms = parse_file("l.yaml", doc.as_bytes()).unwrap();
            let line = head.lines().count() as u32 + 2;
            assert_eq!(
                (ms.len(), ms[0].kind(), ms[0].item, ms[0].line),
                (1, "Secret", Some(0), line),
                "{head}"
            );
        }
        // Empty and null items are empty lists; items that is not a list is an error for a *List.
        assert!(parse_file("e.yaml", b"apiVersion: v1\nkind: List\nitems: []\n").unwrap().is_empty());
        assert!(parse_file("e.yaml", b"apiVersion: v1\nkind: ConfigMapList\nitems: ~\n").unwrap().is_empty());
        let err = parse_file("e.yaml", b"apiVersion: v1\nkind: ConfigMapList\nitems: {a: b}\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "e.yaml: document 0, line 1: items must be a list of objects, found a mapping"
        );
        let err = parse_file("e.yaml", b"items: [{apiVersion: v1, kind: Secret, metadata: {name: s}}]\n")
            .unwrap_err();
        assert!(err.to_string().contains("a list (it has items) is missing kind"), "{err}");
    }

    #[test]
    fn bad_items_name_file_document_item_and_line() {
        let bad = |doc: &str| {
            let text = format!("{CM}---\n{doc}");
            parse_file("dir/l.yaml", text.as_bytes()).unwrap_err().to_string()
        };
        let list = |items: &str| {
            format!(
                "apiVersion: v1\nkind: ConfigMapList\nitems:\n- {{apiVersion: v1, kind: ConfigMap, metadata: {{name: ok}}}}\n{items}"
            )
        };
        assert_eq!(
            bad(&list("- apiVersion: v1\n  kind: ConfigMap\n  metadata: {}\n")),
            "dir/l.yaml: document 1, line 12: ConfigMapList item 1 (line 12): v1 ConfigMap: missing metadata.name"
        );
        assert_eq!(
            bad(&list("- just text\n")),
            "dir/l.yaml: document 1, line 12: ConfigMapList item 1 (line 12): not a Kubernetes object: expected a mapping, found a string"
        );
        assert!(
            bad(&list("- {kind: ConfigMap, metadata: {name: x}}\n"))
                .contains("item 1 (line 12): not a Kubernetes object: missing apiVersion")
        );
        let e = bad(&list("-\n  metadata: {name: x}\n"));
        assert!(e.contains("item 1 (line 13): not a Kubernetes object: missing apiVersion (kubectl would guess kind ConfigMap"), "{e}");
        // kubectl refuses a list inside a list ("is not a list: no Items field in this object").
        let e = bad(&list("- apiVersion: v1\n  kind: List\n  items: []\n"));
        assert!(e.contains("item 1 (line 12): is itself a list"), "{e}");
        // JSON lists carry the item index, at the document's line.
        let json = br#"{"kind":"List","items":[{"apiVersion":"v1","kind":"ConfigMap"}]}"#;
        let e = parse_file("l.json", json).unwrap_err().to_string();
        assert_eq!(
            e,
            "l.json: document 0, line 1: List item 0 (line 1): v1 ConfigMap: missing metadata.name"
        );
    }

    #[test]
    fn flattening_is_idempotent_and_lists_agree_between_check_and_parse() {
        let ms = parse_file("m.yaml", CM_LIST.as_bytes()).unwrap();
        let again = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": ms.iter().map(|m| m.object.clone()).collect::<Vec<_>>()});
        let twice = parse_file("m.json", again.to_string().as_bytes()).unwrap();
        assert_eq!(
            ms.iter().map(|m| &m.object).collect::<Vec<_>>(),
            twice.iter().map(|m| &m.object).collect::<Vec<_>>()
        );
        assert_eq!(check_file("m.yaml", CM_LIST.as_bytes()).unwrap(), 2);
    }

    /// A ConfigMap document of about 4.3 KB whose data expands, through
    /// aliases, to 9^4 copies of a 4 KiB string: 26 MiB.
    pub(crate) fn bomb_document() -> String {
        let mut doc = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: bomb}}\ndata:\n  a0: &a0 \"{}\"\n",
            "x".repeat(4096)
        );
        for i in 1..=4 {
            doc.push_str(&format!("  a{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); 9].join(", ")));
        }
        doc
    }

    #[test]
    fn an_alias_bomb_split_over_documents_and_files_is_a_limit() {
        // 25 documents per file, 4 files: 430 KB that would expand to 2.6 GB. Every document is
        // under serde-saphyr's per-document caps; the artifact's budget stops the fifth.
        let doc = bomb_document();
        let file = [doc.as_str(); 25].join("---\n");
        let files: Vec<(String, Vec<u8>)> =
            (0..4).map(|i| (format!("f{i}.yaml"), file.clone().into_bytes())).collect();
        let err = parse_files(files.iter().map(|(p, b)| (p.as_str(), b.as_slice()))).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, Error::Limit { what: "YAML bytes in the artifact (aliases expanded)", .. }),
            "{msg}"
        );
        assert!(msg.starts_with("f0.yaml: document 4, line "), "{msg}");
        assert!(msg.ends_with("exceeds the limit of 134217728"), "{msg}");
        // The packer checks the same budget, across files.
        let err = crate::pack_files(files.clone(), &crate::Limits::default()).unwrap_err();
        assert!(matches!(err, Error::Limit { .. }), "{err}");
        // A few such documents are within it.
        let few = [doc.as_str(); 3].join("---\n");
        assert_eq!(parse_file("f.yaml", few.as_bytes()).unwrap().len(), 3);
    }

    #[test]
    fn fast_check_agrees_with_the_full_parse() {
        let docs = [
            CM,
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, labels: {x: y}}\ndata: {k: [1, {a: b}]}\n",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"123\"\n",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: 123\n",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: yes\n",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ~\n",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: !!str 5\n",
            "base: &b {apiVersion: v1, kind: ConfigMap}\n<<: *b\nmetadata: {name: m}\n",
            "apiVersion: &v v1\nkind: ConfigMap\nmetadata: {name: *v}\n",
            "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: i}}\n",
            "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {}}\n",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  s: |\n    ---\n    x: [\n",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  name: b\n",
            "apiVersion: v1\nkind: ConfigMap\n? [complex, key]\n: v\nmetadata:\n  name: a\n",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n bad indent: x\n",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: 'a'\n  # c\n",
            "~\n",
            "- a\n",
            "just a scalar\n",
            "kind: ConfigMap\nmetadata:\n  name: a\n",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: []\n",
            "apiVersion: \"\"\nkind: ConfigMap\nmetadata:\n  name: a\n",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata: {a: [1, 2}\n",
            "%YAML 1.2\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n",
        ];
        for (i, d) in docs.iter().enumerate() {
            let full = parse_file("f.yaml", d.as_bytes()).map(|v| v.len()).map_err(|e| e.to_string());
            let fast = check_file("f.yaml", d.as_bytes()).map_err(|e| e.to_string());
            assert_eq!(fast, full, "case {i}: {d}");
        }
        // And in a multi-document file, errors carry the same document and line.
        let text = docs.join("---\n");
        let full = parse_file("f.yaml", text.as_bytes()).map(|v| v.len()).map_err(|e| e.to_string());
        assert_eq!(check_file("f.yaml", text.as_bytes()).map_err(|e| e.to_string()), full);
        assert!(full.is_err());
    }
}
