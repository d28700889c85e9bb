//! Multi-document YAML: splitting a stream into documents and parsing each one
//! with errors that name the file, the document index and the line in the file.

use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// One document of a YAML stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Document<'a> {
    /// 0-based index among the non-empty documents of the stream.
    pub index: usize,
    /// 1-based line of the document's first line in the stream.
    pub start_line: u32,
    /// The document text, without its `---` marker line.
    pub text: &'a str,
}

/// Split a YAML stream on `---` document markers at column 0, dropping
/// documents that hold only comments and whitespace.
pub fn documents(text: &str) -> Vec<Document<'_>> {
    fn push<'a>(docs: &mut Vec<Document<'a>>, t: &'a str, first_line: u32) {
        if has_content(t) {
            docs.push(Document { index: docs.len(), start_line: first_line, text: t });
        }
    }
    let mut docs = Vec::new();
    let mut start = 0usize; // byte offset of the current document
    let mut start_line = 1u32;
    let mut offset = 0usize;
    for (line_no, line) in (1u32..).zip(text.split_inclusive('\n')) {
        let bare = line.trim_end_matches(['\n', '\r']);
        let marker_with_content = bare.starts_with("--- ") || bare.starts_with("---\t");
        if bare == "---" || bare == "..." || marker_with_content {
            push(&mut docs, &text[start..offset], start_line);
            if marker_with_content {
                // `--- value` keeps the content after the marker in the next document.
                start = offset + 4;
                start_line = line_no;
            } else {
                start = offset + line.len();
                start_line = line_no + 1;
            }
        }
        offset += line.len();
    }
    push(&mut docs, &text[start..], start_line);
    docs
}

fn has_content(t: &str) -> bool {
    t.lines().any(|l| {
        let l = l.trim();
        !l.is_empty() && !l.starts_with('#')
    })
}

/// Parse one document into `T`, naming `file`, the document index and the
/// absolute line on failure.
pub fn parse_document<T: DeserializeOwned>(file: &str, doc: &Document<'_>) -> Result<T> {
    serde_saphyr::from_str::<T>(doc.text).map_err(|e| yaml_error(file, doc, &e))
}

/// Turn a serde-saphyr error into [`Error::Yaml`] with the absolute line.
pub fn yaml_error(file: &str, doc: &Document<'_>, e: &serde_saphyr::Error) -> Error {
    let line = e.location().map(|l| l.line() as u32).filter(|l| *l > 0).map(|l| l + doc.start_line - 1);
    // The error's Display carries a source snippet with relative line numbers;
    // keep only its first line, which is the message.
    let full = e.to_string();
    let first = full.lines().next().unwrap_or("").trim();
    let message = strip_location_prefix(first).to_string();
    Error::Yaml { file: file.into(), index: doc.index, line, message }
}

fn strip_location_prefix(s: &str) -> &str {
    let s = s.strip_prefix("error: ").unwrap_or(s);
    // "line 4 column 6: message"
    if let Some(rest) = s.strip_prefix("line ")
        && let Some((_, msg)) = rest.split_once(": ")
    {
        return msg;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_skips_empty_documents() {
        let text = "# header\n---\na: 1\n---\n# only a comment\n---\nb: 2\nc: 3\n";
        let docs = documents(text);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].text, "a: 1\n");
        assert_eq!(docs[0].start_line, 3);
        assert_eq!(docs[1].index, 1);
        assert_eq!(docs[1].start_line, 7);
    }

    #[test]
    fn no_marker_is_one_document() {
        let docs = documents("a: 1\nb: 2");
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].start_line, 1);
    }

    #[test]
    fn block_scalar_with_dashes_inside_is_not_split() {
        let docs = documents("a: |\n  ---\n  x\n");
        assert_eq!(docs.len(), 1);
    }

    #[test]
    fn errors_name_file_document_and_absolute_line() {
        let text = "a: 1\n---\nb: 2\nc: [1, 2\n";
        let docs = documents(text);
        let err = parse_document::<serde_json::Value>("x.yaml", &docs[1]).unwrap_err();
        match err {
            Error::Yaml { file, index, line, .. } => {
                assert_eq!(file, "x.yaml");
                assert_eq!(index, 1);
                assert!(matches!(line, Some(4) | Some(5)), "line {line:?}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
