//! Walking a tree of files (a directory on disk, or a git tree in the sources
//! crate) to choose what goes into an artifact.
//!
//! The walk is depth-first from a base directory, applies [`IgnoreRules`]
//! (loading each `.convoyignore` it meets, and those of the base's
//! ancestors), and returns the chosen files sorted by their path in the
//! artifact. Symlinks: a link whose name would be packed must resolve, in at
//! most [`MAX_LINK_HOPS`] hops, to a regular file inside the tree; its
//! target's content is packed under the link's name as a regular file.
//! Absolute, dangling, escaping or directory targets are errors. Links whose
//! name would not be packed are skipped, so directory links are never
//! followed. Other entries (git submodules, sockets, devices) are skipped.

use std::path::{Path, PathBuf};

use crate::rules::{IGNORE_FILE, IgnoreRules};
use crate::{Error, Result};

/// How many symlinks may be chained before the walk gives up.
pub const MAX_LINK_HOPS: usize = 8;

/// The kind of a tree entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file (executable or not).
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else: a git submodule, a socket, a device.
    Other,
}

/// One entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// The file name (one path component).
    pub name: String,
    /// What it is.
    pub kind: EntryKind,
}

/// A read-only tree of files addressed by `/`-separated paths relative to its
/// root ("" is the root). Implemented for directories on disk ([`FsTree`])
/// and, in convoy-sources, for git trees read straight from the object
/// database.
pub trait Tree {
    /// The entries of a directory, in any order. Names that are not UTF-8
    /// must be reported as an error naming the directory.
    fn read_dir(&self, dir: &str) -> Result<Vec<TreeEntry>>;
    /// The content of a regular file.
    fn read_file(&self, path: &str) -> Result<Vec<u8>>;
    /// The target of a symlink, as stored.
    fn read_link(&self, path: &str) -> Result<String>;
    /// The kind of the entry at `path`, or `None` if there is none. The
    /// default looks the name up in its parent directory.
    fn kind(&self, path: &str) -> Result<Option<EntryKind>> {
        if path.is_empty() {
            return Ok(Some(EntryKind::Dir));
        }
        let (dir, name) = split_parent(path);
        match self.read_dir(dir) {
            Ok(entries) => Ok(entries.into_iter().find(|e| e.name == name).map(|e| e.kind)),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl<T: Tree + ?Sized> Tree for &T {
    fn read_dir(&self, dir: &str) -> Result<Vec<TreeEntry>> {
        (**self).read_dir(dir)
    }
    fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        (**self).read_file(path)
    }
    fn read_link(&self, path: &str) -> Result<String> {
        (**self).read_link(path)
    }
    fn kind(&self, path: &str) -> Result<Option<EntryKind>> {
        (**self).kind(path)
    }
}

/// Which files a walk chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// Only manifests: `*.yaml`, `*.yml`, `*.json` (what a plain-YAML bundle packs).
    Manifests,
    /// Every file that is not ignored (what kustomize gets as input).
    All,
}

/// Whether a file name is a manifest by its extension.
pub fn is_manifest_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".yaml") || lower.ends_with(".yml") || lower.ends_with(".json")
}

/// A file chosen by a walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedFile {
    /// Its path in the artifact, relative to the walk's base.
    pub path: String,
    /// Where its content is in the tree (differs from `base/path` for symlinks).
    pub source: String,
}

/// Walk `tree` from `base` ("" for the root) and return the chosen files,
/// sorted by artifact path (byte order).
pub fn select_files(
    tree: &dyn Tree,
    base: &str,
    rules: &IgnoreRules,
    selection: Selection,
) -> Result<Vec<SelectedFile>> {
    let base = normalize(base).map_err(|message| Error::Path { path: base.into(), message })?;
    let mut rules = rules.clone();
    // The .convoyignore files of the base's ancestors (and the base itself,
    // loaded by the walk below) apply as they would in a full walk.
    let mut anc = String::new();
    for part in base.split('/').filter(|p| !p.is_empty()) {
        load_ignore_file(tree, &anc, &mut rules)?;
        if rules.is_ignored(&join(&anc, part), true) {
            // The whole base is ignored: nothing to pack.
            return Ok(Vec::new());
        }
        anc = join(&anc, part);
    }
    match tree.kind(&base)? {
        Some(EntryKind::Dir) => {}
        Some(_) => return Err(Error::Path { path: base, message: "is not a directory".into() }),
        None => {
            return Err(Error::Io {
                path: if base.is_empty() { ".".into() } else { base },
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
            });
        }
    }
    let mut out = Vec::new();
    walk(tree, &base, &base, &mut rules, selection, &mut out)?;
    out.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    Ok(out)
}

fn load_ignore_file(tree: &dyn Tree, dir: &str, rules: &mut IgnoreRules) -> Result<()> {
    let path = join(dir, IGNORE_FILE);
    if tree.kind(&path)? == Some(EntryKind::File) {
        let bytes = tree.read_file(&path)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::Ignore { origin: path.clone(), message: "not UTF-8".into() })?;
        rules.add_ignore_file(dir, &text)?;
    }
    Ok(())
}

fn walk(
    tree: &dyn Tree,
    base: &str,
    dir: &str,
    rules: &mut IgnoreRules,
    selection: Selection,
    out: &mut Vec<SelectedFile>,
) -> Result<()> {
    rules.truncate_to(dir);
    let mut entries = tree.read_dir(dir)?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    if entries.iter().any(|e| e.name == IGNORE_FILE && e.kind == EntryKind::File) {
        load_ignore_file(tree, dir, rules)?;
    }
    for e in entries {
        let path = join(dir, &e.name);
        let rel = path.strip_prefix(base).map(|p| p.trim_start_matches('/')).unwrap_or(&path).to_string();
        match e.kind {
            EntryKind::Dir => {
                if !rules.is_ignored(&path, true) {
                    walk(tree, base, &path, rules, selection, out)?;
                    rules.truncate_to(dir);
                }
            }
            EntryKind::File => {
                if wanted(&e.name, selection) && !rules.is_ignored(&path, false) {
                    out.push(SelectedFile { path: rel, source: path });
                }
            }
            EntryKind::Symlink => {
                if wanted(&e.name, selection) && !rules.is_ignored(&path, false) {
                    let source = resolve_link(tree, &path)?;
                    out.push(SelectedFile { path: rel, source });
                }
            }
            EntryKind::Other => {}
        }
    }
    Ok(())
}

fn wanted(name: &str, selection: Selection) -> bool {
    match selection {
        Selection::All => true,
        Selection::Manifests => is_manifest_name(name),
    }
}

/// Resolve a symlink to the path of a regular file inside the tree.
pub fn resolve_link(tree: &dyn Tree, link: &str) -> Result<String> {
    let mut current = link.to_string();
    for _ in 0..MAX_LINK_HOPS {
        let target = tree.read_link(&current)?;
        if target.starts_with('/') {
            return Err(Error::Symlink {
                path: link.into(),
                message: format!("absolute target {target:?} leaves the tree"),
            });
        }
        let (dir, _) = split_parent(&current);
        let joined = if dir.is_empty() { target.clone() } else { format!("{dir}/{target}") };
        let next = normalize(&joined).map_err(|_| Error::Symlink {
            path: link.into(),
            message: format!("target {target:?} leaves the tree"),
        })?;
        match tree.kind(&next)? {
            Some(EntryKind::File) => return Ok(next),
            Some(EntryKind::Symlink) => current = next,
            Some(EntryKind::Dir) => {
                return Err(Error::Symlink {
                    path: link.into(),
                    message: format!("target {target:?} is a directory; only links to files are followed"),
                });
            }
            Some(EntryKind::Other) | None => {
                return Err(Error::Symlink {
                    path: link.into(),
                    message: format!("target {target:?} does not exist"),
                });
            }
        }
    }
    Err(Error::Symlink { path: link.into(), message: format!("more than {MAX_LINK_HOPS} links in a chain") })
}

/// Normalize a relative `/`-separated path: drop `.` and empty components,
/// apply `..`. Errors when it is absolute or climbs above the root.
pub fn normalize(path: &str) -> std::result::Result<String, String> {
    if path.starts_with('/') {
        return Err("must be a relative path".into());
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err("escapes the tree".into());
                }
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// Join a directory and a name ("" is the root).
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() { name.to_string() } else { format!("{dir}/{name}") }
}

fn split_parent(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

/// A directory on disk as a [`Tree`]. Symlinks are reported as such, never
/// followed by `read_dir`.
#[derive(Debug, Clone)]
pub struct FsTree {
    root: PathBuf,
}

impl FsTree {
    /// A tree rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn full(&self, rel: &str) -> PathBuf {
        if rel.is_empty() { self.root.clone() } else { self.root.join(rel) }
    }
}

impl Tree for FsTree {
    fn read_dir(&self, dir: &str) -> Result<Vec<TreeEntry>> {
        let full = self.full(dir);
        let rd = std::fs::read_dir(&full).map_err(|e| Error::io(full.display(), e))?;
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| Error::io(full.display(), e))?;
            let name = entry.file_name().into_string().map_err(|n| Error::Path {
                path: full.join(&n).display().to_string(),
                message: "file name is not UTF-8".into(),
            })?;
            let ft = entry.file_type().map_err(|e| Error::io(entry.path().display(), e))?;
            let kind = if ft.is_symlink() {
                EntryKind::Symlink
            } else if ft.is_dir() {
                EntryKind::Dir
            } else if ft.is_file() {
                EntryKind::File
            } else {
                EntryKind::Other
            };
            out.push(TreeEntry { name, kind });
        }
        Ok(out)
    }

    fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let full = self.full(path);
        std::fs::read(&full).map_err(|e| Error::io(full.display(), e))
    }

    fn read_link(&self, path: &str) -> Result<String> {
        let full = self.full(path);
        let target = std::fs::read_link(&full).map_err(|e| Error::io(full.display(), e))?;
        target
            .into_os_string()
            .into_string()
            .map_err(|_| Error::Symlink { path: path.into(), message: "target is not UTF-8".into() })
    }

    fn kind(&self, path: &str) -> Result<Option<EntryKind>> {
        let full = self.full(path);
        match std::fs::symlink_metadata(&full) {
            Ok(m) => {
                let ft = m.file_type();
                Ok(Some(if ft.is_symlink() {
                    EntryKind::Symlink
                } else if ft.is_dir() {
                    EntryKind::Dir
                } else if ft.is_file() {
                    EntryKind::File
                } else {
                    EntryKind::Other
                }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(full.display(), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn normalize_rules() {
        assert_eq!(normalize("a/./b//c/../d").unwrap(), "a/b/d");
        assert_eq!(normalize("").unwrap(), "");
        assert!(normalize("../a").is_err());
        assert!(normalize("a/../../b").is_err());
        assert!(normalize("/etc").is_err());
    }

    #[test]
    fn walks_sorted_with_ignores_and_in_tree_links() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        write(r, "app/b.yaml", "b");
        write(r, "app/a.yml", "a");
        write(r, "app/README.md", "readme");
        write(r, "app/sub/c.json", "{}");
        write(r, "app/tmp/x.yaml", "x");
        write(r, "app/.convoyignore", "tmp/\n");
        write(r, "app/.github/ci.yaml", "ci");
        write(r, "shared/common.yaml", "common");
        write(r, ".convoyignore", "*.json\n");
        std::os::unix::fs::symlink("../shared/common.yaml", r.join("app/link.yaml")).unwrap();
        std::os::unix::fs::symlink("../shared", r.join("app/dirlink")).unwrap();
        let files =
            select_files(&FsTree::new(r), "app", &IgnoreRules::default(), Selection::Manifests).unwrap();
        let paths: Vec<_> = files.iter().map(|f| (f.path.as_str(), f.source.as_str())).collect();
        assert_eq!(
            paths,
            [("a.yml", "app/a.yml"), ("b.yaml", "app/b.yaml"), ("link.yaml", "shared/common.yaml")],
            "root .convoyignore drops sub/c.json, app/.convoyignore drops tmp/, dotdirs and non-manifests skipped"
        );
    }

    #[test]
    fn escaping_and_dangling_links_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path().join("tree");
        write(&r, "ok.yaml", "a");
        write(d.path(), "outside.yaml", "secret");
        std::os::unix::fs::symlink("../outside.yaml", r.join("evil.yaml")).unwrap();
        let err =
            select_files(&FsTree::new(&r), "", &IgnoreRules::default(), Selection::Manifests).unwrap_err();
        assert!(matches!(&err, Error::Symlink { path, .. } if path == "evil.yaml"), "{err}");
        assert!(err.to_string().contains("leaves the tree"), "{err}");

        std::fs::remove_file(r.join("evil.yaml")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", r.join("abs.yaml")).unwrap();
        let err =
            select_files(&FsTree::new(&r), "", &IgnoreRules::default(), Selection::Manifests).unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");

        std::fs::remove_file(r.join("abs.yaml")).unwrap();
        std::os::unix::fs::symlink("nope.yaml", r.join("dangling.yaml")).unwrap();
        let err =
            select_files(&FsTree::new(&r), "", &IgnoreRules::default(), Selection::Manifests).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");

        std::fs::remove_file(r.join("dangling.yaml")).unwrap();
        std::os::unix::fs::symlink("loop2.yaml", r.join("loop1.yaml")).unwrap();
        std::os::unix::fs::symlink("loop1.yaml", r.join("loop2.yaml")).unwrap();
        let err =
            select_files(&FsTree::new(&r), "", &IgnoreRules::default(), Selection::Manifests).unwrap_err();
        assert!(err.to_string().contains("links in a chain"), "{err}");
    }

    #[test]
    fn ignored_base_and_missing_base() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a/x.yaml", "x");
        write(d.path(), ".convoyignore", "a/\n");
        let t = FsTree::new(d.path());
        assert!(select_files(&t, "a", &IgnoreRules::default(), Selection::Manifests).unwrap().is_empty());
        let err = select_files(&t, "nope", &IgnoreRules::default(), Selection::Manifests).unwrap_err();
        assert!(err.to_string().contains("no such directory"), "{err}");
        assert!(select_files(&t, "../x", &IgnoreRules::default(), Selection::Manifests).is_err());
    }
}
