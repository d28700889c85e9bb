//! Multi-document YAML: splitting a stream into documents and parsing each one
//! with errors that name the file, the document index and the line in the file,
//! and the [`Budget`] that bounds what all the documents of one artifact may
//! expand to (aliases, nodes, bytes, objects), shared by every document.

use std::sync::atomic::{AtomicU64, Ordering};

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

/// The limits of a [`Budget`]: totals over every document of one artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetLimits {
    /// Alias (`*ref`) uses. Default 100 000.
    pub max_aliases: u64,
    /// YAML nodes (mappings, sequences, scalars), counting every copy an alias
    /// expands to. Default 8 000 000.
    pub max_nodes: u64,
    /// Bytes of scalar text, counting every copy an alias expands to.
    /// Default 128 MiB (twice the default artifact size limit).
    pub max_expanded_bytes: u64,
    /// Kubernetes objects (after `List`s are flattened). Default 100 000.
    pub max_objects: u64,
}

impl Default for BudgetLimits {
    fn default() -> Self {
        Self {
            max_aliases: 100_000,
            max_nodes: 8_000_000,
            max_expanded_bytes: 128 << 20,
            max_objects: 100_000,
        }
    }
}

/// What one document (or a whole artifact) used of a [`Budget`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetUsage {
    /// Alias uses.
    pub aliases: u64,
    /// Nodes, expanded.
    pub nodes: u64,
    /// Scalar bytes, expanded.
    pub expanded_bytes: u64,
    /// Kubernetes objects.
    pub objects: u64,
}

/// A YAML budget for a whole artifact: every document parsed with
/// [`parse_document_within`] (or charged with [`Budget::charge`]) draws from
/// the same totals, so splitting an alias bomb over many documents or files
/// does not reset it. Each document is parsed with serde-saphyr limits set to
/// what is left, so the parser stops as soon as the artifact's budget is
/// spent instead of expanding the document first. Shared between threads by
/// reference (the counters are atomic); documents parsed at the same moment
/// each see what was left when they started, so with `n` parser threads the
/// work done before the error is at most `n` times the limit.
#[derive(Debug, Default)]
pub struct Budget {
    limits: BudgetLimits,
    aliases: AtomicU64,
    nodes: AtomicU64,
    bytes: AtomicU64,
    objects: AtomicU64,
}

/// serde-saphyr's own per-document caps, kept as they were.
const PER_DOCUMENT: fn() -> serde_saphyr::Budget = serde_saphyr::Budget::default;

impl Budget {
    /// A fresh budget with these limits.
    pub fn new(limits: BudgetLimits) -> Self {
        Self { limits, ..Self::default() }
    }

    /// The limits.
    pub fn limits(&self) -> BudgetLimits {
        self.limits
    }

    /// What has been used so far.
    pub fn used(&self) -> BudgetUsage {
        BudgetUsage {
            aliases: self.aliases.load(Ordering::Relaxed),
            nodes: self.nodes.load(Ordering::Relaxed),
            expanded_bytes: self.bytes.load(Ordering::Relaxed),
            objects: self.objects.load(Ordering::Relaxed),
        }
    }

    /// Add what a document used; the first total over its limit is an
    /// [`Error::Limit`] naming `file` and the document.
    pub fn charge(&self, file: &str, index: usize, line: Option<u32>, u: BudgetUsage) -> Result<()> {
        let l = self.limits;
        let checks: [(&AtomicU64, u64, u64, &'static str); 4] = [
            (&self.aliases, u.aliases, l.max_aliases, "YAML aliases in the artifact"),
            (&self.nodes, u.nodes, l.max_nodes, "YAML nodes in the artifact (aliases expanded)"),
            (
                &self.bytes,
                u.expanded_bytes,
                l.max_expanded_bytes,
                "YAML bytes in the artifact (aliases expanded)",
            ),
            (&self.objects, u.objects, l.max_objects, "objects in the artifact"),
        ];
        for (counter, add, limit, what) in checks {
            if add == 0 {
                continue;
            }
            let total = counter.fetch_add(add, Ordering::Relaxed).saturating_add(add);
            if total > limit {
                return Err(Error::Limit { file: file.into(), index, line, what, limit, actual: total });
            }
        }
        Ok(())
    }

    /// serde-saphyr limits for the next document: its usual per-document caps,
    /// lowered to what is left of the artifact's budget.
    fn for_document(&self) -> serde_saphyr::Budget {
        let used = self.used();
        let left = |limit: u64, used: u64| usize::try_from(limit.saturating_sub(used)).unwrap_or(usize::MAX);
        let mut b = PER_DOCUMENT();
        b.max_aliases = b.max_aliases.min(left(self.limits.max_aliases, used.aliases));
        b.max_nodes = b.max_nodes.min(left(self.limits.max_nodes, used.nodes));
        b.max_total_scalar_bytes =
            b.max_total_scalar_bytes.min(left(self.limits.max_expanded_bytes, used.expanded_bytes));
        b
    }
}

/// Parse one document into `T` within an artifact-wide [`Budget`]: the
/// document's aliases, nodes and scalar bytes (aliases expanded) are charged
/// to it, and the parser stops with [`Error::Limit`] as soon as a limit is
/// passed, whether the artifact's total or serde-saphyr's per-document caps
/// (depth, events, anchors...). Syntax errors are [`Error::Yaml`] as with
/// [`parse_document`].
pub fn parse_document_within<T: DeserializeOwned>(
    file: &str,
    doc: &Document<'_>,
    budget: &Budget,
) -> Result<T> {
    use std::cell::RefCell;
    use std::rc::Rc;

    let report: Rc<RefCell<Option<serde_saphyr::budget::BudgetReport>>> = Rc::default();
    let sink = report.clone();
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget.for_document());
    let options = options.with_budget_report(move |r| *sink.borrow_mut() = Some(r));
    let parsed = serde_saphyr::from_str_with_options::<T>(doc.text, options);
    let report = report.borrow_mut().take();
    let line_of = |e: &serde_saphyr::Error| {
        e.location().map(|l| l.line() as u32).filter(|l| *l > 0).map(|l| l + doc.start_line - 1)
    };
    if let Some(r) = &report {
        let usage = BudgetUsage {
            aliases: r.aliases as u64,
            nodes: r.nodes as u64,
            expanded_bytes: r.total_scalar_bytes as u64,
            objects: 0,
        };
        if let Some(breach) = &r.breached {
            let line = parsed.as_ref().err().and_then(line_of).or(Some(doc.start_line));
            return Err(breach_error(file, doc.index, line, breach, budget, usage));
        }
        budget.charge(file, doc.index, Some(doc.start_line), usage)?;
    }
    parsed.map_err(|e| yaml_error(file, doc, &e))
}

/// The [`Error::Limit`] for a serde-saphyr budget breach. `usage` is what the
/// document had used when the parser stopped.
fn breach_error(
    file: &str,
    index: usize,
    line: Option<u32>,
    breach: &serde_saphyr::budget::BudgetBreach,
    budget: &Budget,
    usage: BudgetUsage,
) -> Error {
    use serde_saphyr::budget::BudgetBreach as B;
    let before = budget.used();
    let l = budget.limits();
    let per_doc = PER_DOCUMENT();
    // Artifact totals when the document was cut to what was left of them,
    // serde-saphyr's per-document cap otherwise.
    let (what, limit, actual) = match breach {
        B::Aliases { aliases } if before.aliases + per_doc.max_aliases as u64 > l.max_aliases => {
            ("YAML aliases in the artifact", l.max_aliases, before.aliases + *aliases as u64)
        }
        B::Nodes { nodes } if before.nodes + per_doc.max_nodes as u64 > l.max_nodes => {
            ("YAML nodes in the artifact (aliases expanded)", l.max_nodes, before.nodes + *nodes as u64)
        }
        B::ScalarBytes { total_scalar_bytes }
            if before.expanded_bytes + per_doc.max_total_scalar_bytes as u64 > l.max_expanded_bytes =>
        {
            (
                "YAML bytes in the artifact (aliases expanded)",
                l.max_expanded_bytes,
                before.expanded_bytes + *total_scalar_bytes as u64,
            )
        }
        B::Aliases { aliases } => {
            ("YAML aliases in one document", per_doc.max_aliases as u64, *aliases as u64)
        }
        B::Nodes { nodes } => {
            ("YAML nodes in one document (aliases expanded)", per_doc.max_nodes as u64, *nodes as u64)
        }
        B::ScalarBytes { total_scalar_bytes } => (
            "YAML bytes in one document (aliases expanded)",
            per_doc.max_total_scalar_bytes as u64,
            *total_scalar_bytes as u64,
        ),
        B::Events { events } => ("YAML events in one document", per_doc.max_events as u64, *events as u64),
        B::Anchors { anchors } => {
            ("YAML anchors in one document", per_doc.max_anchors as u64, *anchors as u64)
        }
        B::Depth { depth } => ("YAML nesting depth", per_doc.max_depth as u64, *depth as u64),
        B::MergeKeys { merge_keys } => {
            ("YAML merge keys in one document", per_doc.max_merge_keys as u64, *merge_keys as u64)
        }
        B::AliasAnchorRatio { aliases, anchors } => (
            "YAML aliases per anchor",
            per_doc.alias_anchor_ratio_multiplier as u64 * (*anchors as u64),
            *aliases as u64,
        ),
        _ => ("YAML parser budget", 0, usage.nodes),
    };
    Error::Limit { file: file.into(), index, line, what, limit, actual }
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

    /// A document where each level multiplies the one below by `width`.
    fn bomb(levels: usize, width: usize) -> String {
        let mut s = String::from("a0: &a0 \"xxxxxxxxxxxxxxxx\"\n");
        for i in 1..=levels {
            let refs = vec![format!("*a{}", i - 1); width].join(", ");
            s.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        s
    }

    #[test]
    fn budget_is_shared_by_documents_and_charges_expanded_aliases() {
        // 4^6 = 4096 copies of a 16-byte scalar per document: 64 KiB and
        // about 5 500 nodes expanded from under 300 bytes.
        let text = bomb(6, 4);
        let doc = documents(&text)[0];
        let one = Budget::default();
        let _: serde_json::Value = parse_document_within("b.yaml", &doc, &one).unwrap();
        let used = one.used();
        // every copy of the 16-byte scalar, plus the seven 2-byte keys
        assert_eq!(used.expanded_bytes, 16 * (1 + 4 + 16 + 64 + 256 + 1024 + 4096) + 7 * 2);
        assert!(used.nodes > 5_000 && used.aliases == 24, "{used:?}");

        // Three such documents pass a limit of 3.5 documents' bytes; the fourth does not.
        let limit = used.expanded_bytes * 7 / 2;
        let budget = Budget::new(BudgetLimits { max_expanded_bytes: limit, ..BudgetLimits::default() });
        for i in 0..3 {
            let d = Document { index: i, ..doc };
            let _: serde_json::Value = parse_document_within("b.yaml", &d, &budget).unwrap();
        }
        let d = Document { index: 3, start_line: 40, ..doc };
        let err = parse_document_within::<serde_json::Value>("b.yaml", &d, &budget).unwrap_err();
        match &err {
            Error::Limit { file, index, what, limit: l, actual, .. } => {
                assert_eq!((file.as_str(), *index, *l), ("b.yaml", 3, limit));
                assert!(what.contains("bytes in the artifact"), "{err}");
                assert!(*actual > limit, "{err}");
            }
            other => panic!("{other:?}"),
        }
        // The parser stopped early: the fourth document was not fully charged.
        assert!(budget.used().expanded_bytes <= 4 * used.expanded_bytes);
        assert!(err.to_string().starts_with("b.yaml: document 3"), "{err}");
    }

    #[test]
    fn alias_and_node_totals_and_objects_are_limits_too() {
        let text = bomb(3, 4);
        let doc = documents(&text)[0];
        let budget = Budget::new(BudgetLimits { max_aliases: 20, ..BudgetLimits::default() });
        let _: serde_json::Value = parse_document_within("b.yaml", &doc, &budget).unwrap();
        let err = parse_document_within::<serde_json::Value>("b.yaml", &doc, &budget).unwrap_err();
        assert!(matches!(err, Error::Limit { what: "YAML aliases in the artifact", limit: 20, .. }), "{err}");

        let budget = Budget::new(BudgetLimits { max_nodes: 100, ..BudgetLimits::default() });
        let err = parse_document_within::<serde_json::Value>("b.yaml", &doc, &budget).unwrap_err();
        assert!(
            matches!(err, Error::Limit { what: "YAML nodes in the artifact (aliases expanded)", .. }),
            "{err}"
        );

        let budget = Budget::new(BudgetLimits { max_objects: 2, ..BudgetLimits::default() });
        let one = BudgetUsage { objects: 1, ..BudgetUsage::default() };
        budget.charge("f.yaml", 0, Some(1), one).unwrap();
        budget.charge("f.yaml", 1, Some(5), one).unwrap();
        let err = budget.charge("f.yaml", 2, Some(9), one).unwrap_err();
        assert_eq!(
            err.to_string(),
            "f.yaml: document 2, line 9: objects in the artifact 3 exceeds the limit of 2"
        );
    }

    #[test]
    fn per_document_caps_are_limits_and_syntax_errors_stay_yaml_errors() {
        let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        let doc = documents(&deep)[0];
        let err = parse_document_within::<serde_json::Value>("d.yaml", &doc, &Budget::default()).unwrap_err();
        assert!(matches!(err, Error::Limit { what: "YAML nesting depth", .. }), "{err}");
        let text = "a: [1, 2\n";
        let doc = documents(text)[0];
        let err = parse_document_within::<serde_json::Value>("s.yaml", &doc, &Budget::default()).unwrap_err();
        assert!(matches!(err, Error::Yaml { .. }), "{err}");
    }

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
