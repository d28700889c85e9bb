//! The project's example fleet (`examples/fleet`, `examples/bundles.yaml`),
//! read from the source tree: what `convoy dev` embeds, the scenarios use.

use std::path::{Path, PathBuf};

/// `examples/` in the source tree.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// Every file of `examples/fleet` as (path relative to it, bytes), sorted.
pub fn fleet_files() -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let mut entries: Vec<_> =
            std::fs::read_dir(dir).expect("read examples").flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).expect("below root").to_string_lossy().replace('\\', "/");
                out.push((rel, std::fs::read(&p).expect("read example file")));
            }
        }
    }
    let root = dir().join("fleet");
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    out
}

/// `examples/bundles.yaml`: the Bundles of the example fleet (source `fleet`).
pub fn bundles_yaml() -> String {
    std::fs::read_to_string(dir().join("bundles.yaml")).expect("read examples/bundles.yaml")
}
