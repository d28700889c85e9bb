//! Manifests: parsing the YAML and JSON files of a bundle into Kubernetes
//! objects, with errors that name the file, the document and the line.
//!
//! A YAML file may hold several documents separated by `---`; documents with
//! only comments, and documents that are `null`, are skipped. A JSON file
//! holds one value. Every object must be a mapping with a string
//! `apiVersion`, a string `kind` and a non-empty string `metadata.name`.
//! A `kind: List` (apiVersion `v1`) is expanded into its `items`, as kubectl
//! does. One bad document rejects the whole bundle. A SOPS-encrypted document
//! (top-level `sops:` mapping) is kept as ciphertext; its SOPS metadata must
//! be well-formed (see docs/secrets.md).

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
    /// The index in `items` when the document is a `v1/List`.
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

/// Parse one manifest file (YAML, multi-document, or JSON by extension).
pub fn parse_file(file: &str, bytes: &[u8]) -> Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for_each_object(file, bytes, |m| {
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
    for_each_object(file, bytes, f)
}

/// Parse every file; the first bad document fails the whole set.
pub fn parse_files<'a>(files: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for (file, bytes) in files {
        out.extend(parse_file(file, bytes)?);
    }
    Ok(out)
}

/// Check a manifest file without keeping its objects; returns the object
/// count. Gives the same verdict and the same errors as [`parse_file`], but
/// most documents are checked on the raw YAML event stream without building
/// values (several times faster); any document the fast path is not sure
/// about (a syntax error, tags, aliases, merge keys, a scalar that might not
/// be a string, a `v1/List`) goes through [`parse_file`]'s path.
pub fn check_file(file: &str, bytes: &[u8]) -> Result<usize> {
    let text = manifest_text(file, bytes)?;
    let mut n = 0;
    for unit in check_units(file, text) {
        n += check_unit(file, text, &unit)?;
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
pub(crate) fn check_unit(file: &str, text: &str, unit: &CheckUnit) -> Result<usize> {
    match *unit {
        CheckUnit::Json => {
            let mut n = 0;
            parse_json(file, text, &mut |_| {
                n += 1;
                Ok(())
            })?;
            Ok(n)
        }
        CheckUnit::Yaml { start, end, index, line } => {
            let doc_text = &text[start..end];
            if let Some(n) = quick::check(doc_text) {
                return Ok(n);
            }
            let doc = convoy_core::yaml::Document { index, start_line: line, text: doc_text };
            let mut n = 0;
            parse_yaml_document(file, &doc, &mut |_| {
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

fn for_each_object(file: &str, bytes: &[u8], mut f: impl FnMut(Manifest) -> Result<()>) -> Result<()> {
    let text = manifest_text(file, bytes)?;
    if is_json(file) {
        return parse_json(file, text, &mut f);
    }
    for doc in convoy_core::yaml::documents(text) {
        parse_yaml_document(file, &doc, &mut f)?;
    }
    Ok(())
}

fn parse_json(file: &str, text: &str, f: &mut impl FnMut(Manifest) -> Result<()>) -> Result<()> {
    let value: Value = serde_json::from_str(text).map_err(|e| Error::Manifest {
        file: file.into(),
        index: 0,
        line: (e.line() > 0).then_some(e.line() as u32),
        message: e.to_string().split(" at line ").next().unwrap_or_default().to_string(),
    })?;
    emit(file, 0, 1, value, f)
}

fn parse_yaml_document(
    file: &str,
    doc: &convoy_core::yaml::Document<'_>,
    f: &mut impl FnMut(Manifest) -> Result<()>,
) -> Result<()> {
    let value: Value = match convoy_core::yaml::parse_document(file, doc) {
        Ok(v) => v,
        Err(convoy_core::Error::Yaml { file, index, line, message }) => {
            return Err(Error::Manifest { file, index, line, message });
        }
        Err(other) => {
            return Err(Error::Manifest {
                file: file.into(),
                index: doc.index,
                line: Some(doc.start_line),
                message: other.to_string(),
            });
        }
    };
    emit(file, doc.index, doc.start_line, value, f)
}

fn emit(
    file: &str,
    index: usize,
    line: u32,
    value: Value,
    f: &mut impl FnMut(Manifest) -> Result<()>,
) -> Result<()> {
    let err = |message: String| Error::Manifest { file: file.into(), index, line: Some(line), message };
    if value.is_null() {
        return Ok(());
    }
    if convoy_sops::is_sops(&value) {
        // A SOPS document passes through encrypted (the hub holds no key):
        // only its metadata and the form of its encrypted values are checked.
        convoy_sops::check(std::slice::from_ref(&value)).map_err(|e| err(format!("SOPS: {e}")))?;
    }
    let is_list = value.get("apiVersion").and_then(Value::as_str) == Some("v1")
        && value.get("kind").and_then(Value::as_str) == Some("List");
    if is_list {
        let Some(Value::Array(items)) = value.get("items").cloned() else {
            return Err(err("a v1 List must have an items array".into()));
        };
        for (i, item) in items.into_iter().enumerate() {
            check_object(&item).map_err(|m| err(format!("items[{i}]: {m}")))?;
            f(Manifest { file: file.into(), index, item: Some(i), line, object: item })?;
        }
        return Ok(());
    }
    check_object(&value).map_err(err)?;
    f(Manifest { file: file.into(), index, item: None, line, object: value })
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
    }

    pub(super) fn check(text: &str) -> Option<usize> {
        let mut opts = Options::default();
        opts.emit_comments = false;
        let mut p = Parser::new_from_str_with_options(text, opts);
        let mut count = 0;
        loop {
            let (ev, _) = p.next_event()?.ok()?;
            match ev {
                Event::StreamStart | Event::DocumentStart(..) | Event::DocumentEnd => {}
                Event::StreamEnd => return Some(count),
                Event::MappingStart(_, _, None) => {
                    let mut f = Fields::default();
                    mapping(&mut p, Role::Top, &mut f, 1)?;
                    let (api_version, kind) = (f.api_version?, f.kind?);
                    if !f.name || (api_version == "v1" && kind == "List") {
                        return None;
                    }
                    count += 1;
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
                Event::Scalar(k, style, _, None) if !(style == ScalarStyle::Plain && k == "<<") => k,
                _ => return None,
            };
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
                Some(0) => f.api_version = Some(string(p)?),
                Some(1) => f.kind = Some(string(p)?),
                Some(_) => {
                    string(p)?;
                    f.name = true;
                }
                None if is_metadata => {
                    let Event::MappingStart(_, _, None) = p.next_event()?.ok()?.0 else { return None };
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
        match ev {
            Event::Scalar(_, _, _, None) | Event::Alias(_) => Some(()),
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
    fn string(p: &mut P<'_>) -> Option<String> {
        match p.next_event()?.ok()?.0 {
            Event::Scalar(v, style, _, None)
                if !v.is_empty() && (style != ScalarStyle::Plain || plain_string(&v)) =>
            {
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
