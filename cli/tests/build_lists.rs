//! `convoy build` of a directory holding List files (flattened as kubectl
//! does), a broken List item (the error names file, document, item and line),
//! and an alias bomb split over documents and files (a limit error, with the
//! process's address space capped well below what the bomb expands to).

use std::path::Path;
use std::process::{Command, Output};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `convoy build` of `dir`, with `ulimit -v` (KiB) when given.
fn build(dir: &Path, out: &Path, key: &Path, ulimit_kib: Option<u64>) -> Output {
    let mut cmd = match ulimit_kib {
        Some(k) => {
            let mut c = Command::new("sh");
            c.args(["-c", &format!("ulimit -v {k} && exec \"$0\" \"$@\"")]).arg(env!("CARGO_BIN_EXE_convoy"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_convoy")),
    };
    cmd.arg("build")
        .arg("--dir")
        .arg(dir)
        .arg("--key")
        .arg(key)
        .arg("--out")
        .arg(out)
        .args(["--name", "lists", "--revision", "main@sha1:0123456789abcdef0123456789abcdef01234567"])
        .env("CONVOY_LOG", "error")
        .output()
        .expect("convoy runs")
}

fn keygen(dir: &Path) -> std::path::PathBuf {
    let keys = dir.join("keys");
    let out =
        Command::new(env!("CARGO_BIN_EXE_convoy")).arg("keygen").arg("--out").arg(&keys).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    keys.join("signing.key")
}

const LISTS: &str = "\
apiVersion: v1
kind: ConfigMapList
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: one}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: two}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleList
items:
- apiVersion: rbac.authorization.k8s.io/v1
  kind: Role
  metadata: {name: reader}
  rules: []
---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Secret, metadata: {name: s}}
- {apiVersion: v1, kind: ServiceAccount, metadata: {name: sa}}
";

#[test]
fn lists_are_flattened_and_a_broken_item_is_named_with_its_line() {
    let d = tempfile::tempdir().unwrap();
    let key = keygen(d.path());
    let src = d.path().join("bundle");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("lists.yaml"), LISTS).unwrap();
    std::fs::write(src.join("plain.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: plain}\n")
        .unwrap();
    let out = build(&src, &d.path().join("out"), &key, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // 2 + 1 + 2 list items and the plain ConfigMap.
    assert!(text(&out.stderr).contains("2 files, 6 objects"), "{}", text(&out.stderr));

    // A third item without a name, in the second document of another file.
    let broken = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: fine}\n---\n# a list\napiVersion: v1\nkind: ConfigMapList\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: a}}\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: b}}\n- apiVersion: v1\n  kind: ConfigMap\n  metadata:\n    labels: {x: y}\n";
    std::fs::write(src.join("broken.yaml"), broken).unwrap();
    let out = build(&src, &d.path().join("out2"), &key, None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("broken.yaml: document 1, line 11: ConfigMapList item 2 (line 11): v1 ConfigMap: missing metadata.name"),
        "{err}"
    );
    assert!(!d.path().join("out2").exists(), "nothing written for a refused bundle");

    // A list inside a list is refused, as kubectl refuses it.
    std::fs::write(
        src.join("broken.yaml"),
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: List\n  items: []\n",
    )
    .unwrap();
    let out = build(&src, &d.path().join("out3"), &key, None);
    assert!(
        text(&out.stderr).contains("broken.yaml: document 0, line 4: List item 0 (line 4): is itself a list"),
        "{}",
        text(&out.stderr)
    );
}

/// A ConfigMap of about 4.3 KB whose data expands through aliases to 9^4
/// copies of a 4 KiB string (26 MiB).
fn bomb_document() -> String {
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
fn an_alias_bomb_over_many_documents_and_files_is_a_limit_within_bounded_memory() {
    let d = tempfile::tempdir().unwrap();
    let key = keygen(d.path());
    let src = d.path().join("bomb");
    std::fs::create_dir_all(&src).unwrap();
    // 4 files of 25 documents: 430 KB of YAML that would expand to 2.6 GB.
    let file = vec![bomb_document(); 25].join("---\n");
    for i in 0..4 {
        std::fs::write(src.join(format!("f{i}.yaml")), &file).unwrap();
    }
    // 1.5 GiB of address space (threads' stacks and malloc arenas included):
    // far below the expansion, enough for the budget's 128 MiB.
    let out = build(&src, &d.path().join("out"), &key, Some(1536 * 1024));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("YAML bytes in the artifact (aliases expanded)"), "{err}");
    assert!(err.contains("exceeds the limit of 134217728"), "{err}");
    assert!(err.contains("f0.yaml: document "), "{err}");
}
