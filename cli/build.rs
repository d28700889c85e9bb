//! Embeds the example fleet (`examples/fleet/**`, `examples/bundles.yaml` and
//! `examples/helm-bundles.yaml`)
//! into the `convoy` binary, so that `convoy dev` works from any directory.
//! Generates `$OUT_DIR/examples.rs` with `include_bytes!` of every file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(root, &p, out);
        } else if p.is_file() {
            let rel = p.strip_prefix(root).expect("below the root").to_string_lossy().replace('\\', "/");
            out.push((rel, p));
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let examples = manifest.join("../examples");
    let fleet = examples.join("fleet");
    let bundles = examples.join("bundles.yaml");
    let helm_bundles = examples.join("helm-bundles.yaml");
    println!("cargo:rerun-if-changed={}", fleet.display());
    println!("cargo:rerun-if-changed={}", bundles.display());
    println!("cargo:rerun-if-changed={}", helm_bundles.display());
    let mut files = Vec::new();
    walk(&fleet, &fleet, &mut files);
    let mut src = String::from("/// Every file of examples/fleet: (path relative to it, content).\n");
    src.push_str("pub static FLEET_FILES: &[(&str, &[u8])] = &[\n");
    for (rel, path) in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let abs = path.canonicalize().expect("canonical path");
        let _ = writeln!(src, "    ({rel:?}, include_bytes!({:?})),", abs.display().to_string());
    }
    src.push_str("];\n");
    let abs = bundles.canonicalize().expect("examples/bundles.yaml exists");
    let _ = writeln!(
        src,
        "/// examples/bundles.yaml: the Bundles of the example fleet.\npub static BUNDLES_YAML: &str = include_str!({:?});",
        abs.display().to_string()
    );
    let abs = helm_bundles.canonicalize().expect("examples/helm-bundles.yaml exists");
    let _ = writeln!(
        src,
        "/// examples/helm-bundles.yaml: the Helm bundles of the example fleet (`convoy dev` only).\npub static HELM_BUNDLES_YAML: &str = include_str!({:?});",
        abs.display().to_string()
    );
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("examples.rs");
    std::fs::write(&out, src).expect("write examples.rs");
}
