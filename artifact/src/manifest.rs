//! Manifests: parsing the YAML and JSON files of a bundle into Kubernetes
//! objects, with errors that name the file, the document and the line.
//!
//! A YAML file may hold several documents separated by `---`; documents with
//! only comments, and documents that are `null`, are skipped. A JSON file
//! holds one value. Every object must be a mapping with a string
//! `apiVersion`, a string `kind` and a non-empty string `metadata.name`.
//! A `kind: List` (apiVersion `v1`) is expanded into its `items`, as kubectl
//! does. One bad document rejects the whole bundle.

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

/// Parse every file; the first bad document fails the whole set.
pub fn parse_files<'a>(files: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for (file, bytes) in files {
        out.extend(parse_file(file, bytes)?);
    }
    Ok(out)
}

/// Check a manifest file without keeping its objects; returns the object count.
pub fn check_file(file: &str, bytes: &[u8]) -> Result<usize> {
    let mut n = 0;
    for_each_object(file, bytes, |_| {
        n += 1;
        Ok(())
    })?;
    Ok(n)
}

fn for_each_object(file: &str, bytes: &[u8], mut f: impl FnMut(Manifest) -> Result<()>) -> Result<()> {
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
    if file.to_ascii_lowercase().ends_with(".json") {
        let value: Value = serde_json::from_str(text).map_err(|e| Error::Manifest {
            file: file.into(),
            index: 0,
            line: (e.line() > 0).then_some(e.line() as u32),
            message: e.to_string().split(" at line ").next().unwrap_or_default().to_string(),
        })?;
        return emit(file, 0, 1, value, &mut f);
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for doc in convoy_core::yaml::documents(text) {
        let value: Value = match convoy_core::yaml::parse_document(file, &doc) {
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
        emit(file, doc.index, doc.start_line, value, &mut f)?;
    }
    Ok(())
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
}
