//! The project's example fleet (`examples/fleet`, `examples/bundles.yaml`),
//! read from the source tree: what `convoy dev` embeds, the scenarios use.

use std::path::{Path, PathBuf};

/// `examples/` in the source tree.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// Every file of `examples/fleet` as (path relative to it, bytes), sorted.
pub fn fleet_files() -> Vec<(String, Vec<u8>)> {
    files_under(&dir().join("fleet"), "")
}

/// The shared real-world corpus (`../shared/corpus` beside the repository,
/// or `CONVOY_CORPUS`): read at test time, never copied into the repository.
pub fn corpus() -> PathBuf {
    std::env::var_os("CONVOY_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"))
}

/// Every file below `root` as (`prefix` + path relative to it, bytes),
/// sorted by path.
pub fn files_under(root: &Path, prefix: &str) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, prefix: &str, out: &mut Vec<(String, Vec<u8>)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(root, &p, prefix, out);
            } else {
                let rel = p.strip_prefix(root).expect("below root").to_string_lossy().replace('\\', "/");
                out.push((format!("{prefix}{rel}"), std::fs::read(&p).expect("read a file")));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, prefix, &mut out);
    out
}

/// `examples/bundles.yaml`: the Bundles of the example fleet (source `fleet`).
pub fn bundles_yaml() -> String {
    std::fs::read_to_string(dir().join("bundles.yaml")).expect("read examples/bundles.yaml")
}

/// [`bundles_yaml`] without its `rollout:` blocks: the fleet scenarios of
/// issue 6 and the reliability rows assert that a new generation reaches
/// every target at once; tests/e2e/tests/rollout.rs covers rollouts (and
/// `convoy dev`'s test runs the example fleet as it is).
pub fn bundles_yaml_all_at_once() -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in bundles_yaml().lines() {
        let indent = line.len() - line.trim_start().len();
        if skipping && (line.trim().is_empty() || indent > 2) {
            continue;
        }
        skipping = line.trim_end() == "  rollout:";
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn all_at_once_drops_only_the_rollout_blocks() {
        let full = super::bundles_yaml();
        let flat = super::bundles_yaml_all_at_once();
        assert!(
            full.contains("  rollout:\n") && full.contains("soak: 10s"),
            "the example rolls web-prod out in waves"
        );
        assert!(!flat.contains("rollout:") && !flat.contains("soak:"), "{flat}");
        for name in ["infra", "web-staging", "web-prod", "monitoring"] {
            assert!(flat.contains(&format!("name: {name}\n")), "{name} kept");
        }
        assert_eq!(flat.matches("\n---\n").count(), full.matches("\n---\n").count());
    }
}
