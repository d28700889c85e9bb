//! Deterministic packing: manifests in, a byte-for-byte reproducible
//! `.tar.gz` out.
//!
//! Entries are regular files only, sorted by path (bytes), with mode 0644,
//! uid/gid 0, empty user and group names, mtime 0, GNU headers (long paths use
//! the GNU long-name extension) and no directory entries. The gzip wrapper is
//! fixed too (see the `gzip` module). So the digest depends only on the paths
//! and contents of the packed files.

use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::gzip::GzipWriter;
use crate::manifest;
use crate::rules::IgnoreRules;
use crate::tree::{FsTree, SelectedFile, Selection, Tree, select_files};
use crate::{Error, Result};

/// Size and count limits, checked while packing and unpacking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The sum of all file sizes (uncompressed). Default 64 MiB.
    pub max_total_bytes: u64,
    /// The number of files. Default 10 000.
    pub max_files: u32,
    /// The size of one file. Default 16 MiB.
    pub max_file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_total_bytes: 64 << 20, max_files: 10_000, max_file_bytes: 16 << 20 }
    }
}

/// A packed artifact.
#[derive(Clone, PartialEq, Eq)]
pub struct PackedArtifact {
    /// The .tar.gz bytes.
    pub bytes: Vec<u8>,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
    /// `bytes.len()`.
    pub size: u64,
    /// The number of files in the archive.
    pub files: u32,
    /// The number of Kubernetes objects in those files.
    pub objects: u32,
}

impl std::fmt::Debug for PackedArtifact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedArtifact")
            .field("digest", &self.digest)
            .field("size", &self.size)
            .field("files", &self.files)
            .field("objects", &self.objects)
            .finish()
    }
}

/// The digest of some bytes: `sha256:<hex>`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Whether `s` is a well-formed digest: `sha256:` and 64 lowercase hex digits.
pub fn is_valid_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// Builds an artifact one file at a time. Files must be added in strictly
/// increasing path order (byte order); each is checked against the limits and
/// parsed as manifests before it is written.
pub struct Packer {
    tar: tar::Builder<GzipWriter<Vec<u8>>>,
    limits: Limits,
    files: u32,
    objects: u32,
    total: u64,
    last: Option<String>,
    /// The YAML budget of the whole artifact.
    budget: convoy_core::yaml::Budget,
}

impl Packer {
    /// A packer with the given limits.
    pub fn new(limits: Limits) -> Self {
        let gz = GzipWriter::new(Vec::with_capacity(64 * 1024)).expect("writing to a Vec cannot fail");
        let mut tar = tar::Builder::new(gz);
        tar.mode(tar::HeaderMode::Deterministic);
        Self { tar, limits, files: 0, objects: 0, total: 0, last: None, budget: Default::default() }
    }

    /// Check `path` and `content`, then append them.
    pub fn add(&mut self, path: &str, content: &[u8]) -> Result<()> {
        self.check(path, content.len() as u64)?;
        self.objects += manifest::check_file_within(path, content, &self.budget)? as u32;
        self.append(path, content)
    }

    fn check(&mut self, path: &str, len: u64) -> Result<()> {
        check_path(path)?;
        if let Some(last) = &self.last
            && last.as_bytes() >= path.as_bytes()
        {
            return Err(Error::Path {
                path: path.into(),
                message: format!("added out of order or twice (after {last:?})"),
            });
        }
        if len > self.limits.max_file_bytes {
            return Err(Error::Limit {
                what: "file size",
                limit: self.limits.max_file_bytes,
                actual: len,
                path: Some(path.into()),
            });
        }
        if self.files + 1 > self.limits.max_files {
            return Err(Error::Limit {
                what: "file count",
                limit: self.limits.max_files as u64,
                actual: self.files as u64 + 1,
                path: None,
            });
        }
        if self.total + len > self.limits.max_total_bytes {
            return Err(Error::Limit {
                what: "artifact size (uncompressed)",
                limit: self.limits.max_total_bytes,
                actual: self.total + len,
                path: None,
            });
        }
        Ok(())
    }

    fn append(&mut self, path: &str, content: &[u8]) -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(content.len() as u64);
        h.set_username("").map_err(|e| Error::io(path, e))?;
        h.set_groupname("").map_err(|e| Error::io(path, e))?;
        self.tar.append_data(&mut h, path, content).map_err(|e| Error::io(path, e))?;
        self.files += 1;
        self.total += content.len() as u64;
        self.last = Some(path.to_string());
        Ok(())
    }

    /// Finish the archive and compute its digest.
    pub fn finish(self) -> Result<PackedArtifact> {
        let gz = self.tar.into_inner().map_err(|e| Error::io("artifact", e))?;
        let bytes = gz.finish().map_err(|e| Error::io("artifact", e))?;
        let digest = digest_of(&bytes);
        Ok(PackedArtifact {
            size: bytes.len() as u64,
            digest,
            bytes,
            files: self.files,
            objects: self.objects,
        })
    }
}

/// A path as it may appear in an artifact: relative, `/`-separated, no `.`,
/// `..` or empty components, no NUL or backslash, UTF-8.
pub fn check_path(path: &str) -> Result<()> {
    let bad = |m: &str| Err(Error::Path { path: path.into(), message: m.into() });
    if path.is_empty() {
        return bad("empty path");
    }
    if path.starts_with('/') {
        return bad("absolute paths are not allowed");
    }
    if path.contains('\0') || path.contains('\\') {
        return bad("NUL and backslash are not allowed in paths");
    }
    for part in path.split('/') {
        match part {
            "" => return bad("empty path component"),
            "." | ".." => {
                return bad("`.` and `..` are not allowed in paths (the path would leave the bundle)");
            }
            _ => {}
        }
    }
    Ok(())
}

/// Pack `(path, content)` pairs in any order (they are sorted first).
pub fn pack_files(
    files: impl IntoIterator<Item = (String, Vec<u8>)>,
    limits: &Limits,
) -> Result<PackedArtifact> {
    let mut files: Vec<_> = files.into_iter().collect();
    files.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    if files.len() as u64 > limits.max_files as u64 {
        return Err(Error::Limit {
            what: "file count",
            limit: limits.max_files as u64,
            actual: files.len() as u64,
            path: None,
        });
    }
    let mut total = 0u64;
    for (path, content) in &files {
        total += content.len() as u64;
        check_size(limits, path, content.len() as u64, total)?;
    }
    pack_sorted(&files, limits)
}

/// Pack the manifests under `base` in `tree`, honouring ignore rules.
///
/// The bundle's files are read one by one (stopping at the first limit
/// exceeded; the repository is never read as a whole), then archived and
/// compressed on this thread while the manifests are checked in parallel, one
/// YAML document per work item, on the other cores.
pub fn pack_tree(
    tree: &dyn Tree,
    base: &str,
    rules: &IgnoreRules,
    limits: &Limits,
) -> Result<PackedArtifact> {
    pack_selected(tree, select_files(tree, base, rules, Selection::Manifests)?, limits)
}

/// Pack files already chosen by [`select_files`] (sorted by path), for
/// callers that inspect the selection first.
pub fn pack_selected(
    tree: &dyn Tree,
    selected: Vec<SelectedFile>,
    limits: &Limits,
) -> Result<PackedArtifact> {
    if selected.len() as u64 > limits.max_files as u64 {
        return Err(Error::Limit {
            what: "file count",
            limit: limits.max_files as u64,
            actual: selected.len() as u64,
            path: None,
        });
    }
    let mut files = Vec::with_capacity(selected.len());
    let mut total = 0u64;
    for f in selected {
        let content = tree.read_file(&f.source)?;
        total += content.len() as u64;
        check_size(limits, &f.path, content.len() as u64, total)?;
        files.push((f.path, content));
    }
    pack_sorted(&files, limits)
}

fn check_size(limits: &Limits, path: &str, len: u64, total: u64) -> Result<()> {
    if len > limits.max_file_bytes {
        return Err(Error::Limit {
            what: "file size",
            limit: limits.max_file_bytes,
            actual: len,
            path: Some(path.into()),
        });
    }
    if total > limits.max_total_bytes {
        return Err(Error::Limit {
            what: "artifact size (uncompressed)",
            limit: limits.max_total_bytes,
            actual: total,
            path: None,
        });
    }
    Ok(())
}

/// Archive sorted files on this thread while other threads check the
/// manifests; the first failing document (in file and document order) wins
/// over any packing error.
fn pack_sorted(files: &[(String, Vec<u8>)], limits: &Limits) -> Result<PackedArtifact> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let mut units = Vec::new();
    let mut texts = Vec::with_capacity(files.len());
    for (i, (path, content)) in files.iter().enumerate() {
        check_path(path)?;
        let text = manifest::manifest_text(path, content)?;
        for u in manifest::check_units(path, text) {
            units.push((i, u));
        }
        texts.push(text);
    }
    let next = AtomicUsize::new(0);
    let first_error = AtomicUsize::new(usize::MAX);
    let errors: Mutex<Vec<(usize, Error)>> = Mutex::new(Vec::new());
    let objects = AtomicUsize::new(0);
    // One YAML budget for the whole artifact, shared by the checking threads.
    let budget = convoy_core::yaml::Budget::default();
    let work = || {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= units.len() {
                break;
            }
            if i > first_error.load(Ordering::Relaxed) {
                continue;
            }
            let (f, unit) = &units[i];
            match manifest::check_unit(&files[*f].0, texts[*f], unit, &budget) {
                Ok(n) => {
                    objects.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    first_error.fetch_min(i, Ordering::Relaxed);
                    errors.lock().unwrap_or_else(|p| p.into_inner()).push((i, e));
                }
            }
        }
    };
    let helpers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(2, 4) - 1;
    let helpers = helpers.min(units.len().saturating_sub(1));
    let packed = std::thread::scope(|s| {
        let handles: Vec<_> = (0..helpers).map(|_| s.spawn(work)).collect();
        let packed = (|| {
            let mut p = Packer::new(*limits);
            for (path, content) in files {
                p.check(path, content.len() as u64)?;
                p.append(path, content)?;
            }
            p.finish()
        })();
        work();
        for h in handles {
            if h.join().is_err() {
                return Err(Error::Other("manifest check panicked".into()));
            }
        }
        Ok(packed)
    })?;
    let mut errors = errors.into_inner().unwrap_or_else(|p| p.into_inner());
    errors.sort_by_key(|(i, _)| *i);
    if let Some((_, e)) = errors.into_iter().next() {
        return Err(e);
    }
    let mut packed = packed?;
    packed.objects = objects.into_inner() as u32;
    Ok(packed)
}

/// Pack the manifests of a directory on disk (the `convoy build` path for a
/// plain-YAML directory), with the default ignore rules plus the tree's
/// `.convoyignore` files.
pub fn pack_dir(dir: &Path, limits: &Limits) -> Result<PackedArtifact> {
    pack_tree(&FsTree::new(dir), "", &IgnoreRules::default(), limits)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n";

    type Entry = (String, tar::EntryType, u32, u64, u64, u64, Vec<u8>);

    fn entries(bytes: &[u8]) -> Vec<Entry> {
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
        ar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let h = e.header().clone();
                let mut content = Vec::new();
                e.read_to_end(&mut content).unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.entry_type(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    h.mtime().unwrap(),
                    content,
                )
            })
            .collect()
    }

    #[test]
    fn entries_are_sorted_and_normalized() {
        let long = format!("{}/deep.yaml", "d".repeat(120));
        let files = vec![
            ("b.yaml".to_string(), CM.as_bytes().to_vec()),
            (long.clone(), CM.as_bytes().to_vec()),
            ("a/x.yml".to_string(), CM.as_bytes().to_vec()),
        ];
        let p = pack_files(files, &Limits::default()).unwrap();
        assert_eq!((p.files, p.objects), (3, 3));
        assert_eq!(p.digest, digest_of(&p.bytes));
        assert!(is_valid_digest(&p.digest));
        let es = entries(&p.bytes);
        let names: Vec<_> = es.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["a/x.yml", "b.yaml", long.as_str()]);
        for e in &es {
            assert_eq!((e.1, e.2, e.3, e.4, e.5), (tar::EntryType::Regular, 0o644, 0, 0, 0));
            assert_eq!(e.6, CM.as_bytes());
        }
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&p.bytes[..]));
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            assert_eq!(e.header().username().unwrap(), Some(""));
            assert_eq!(e.header().groupname().unwrap(), Some(""));
        }
    }

    #[test]
    fn same_files_same_digest_in_any_order() {
        let a =
            pack_files(vec![("x.yaml".into(), CM.into()), ("y.yaml".into(), CM.into())], &Limits::default())
                .unwrap();
        let b =
            pack_files(vec![("y.yaml".into(), CM.into()), ("x.yaml".into(), CM.into())], &Limits::default())
                .unwrap();
        assert_eq!(a.bytes, b.bytes);
        let c = pack_files(vec![("y.yaml".into(), CM.into())], &Limits::default()).unwrap();
        assert_ne!(a.digest, c.digest);
    }

    #[test]
    fn limits_and_paths_are_enforced() {
        let small = Limits { max_total_bytes: 100, max_files: 2, max_file_bytes: 60 };
        let err = pack_files(vec![("a.yaml".into(), CM.repeat(2).into())], &small).unwrap_err();
        assert!(
            matches!(&err, Error::Limit { what: "file size", path: Some(p), .. } if p == "a.yaml"),
            "{err}"
        );
        let three = (0..3).map(|i| (format!("{i}.yaml"), CM.as_bytes().to_vec()));
        let err =
            pack_files(three, &Limits { max_file_bytes: 1000, max_total_bytes: 1000, ..small }).unwrap_err();
        assert!(matches!(err, Error::Limit { what: "file count", .. }), "{err}");
        let two = (0..2).map(|i| (format!("{i}.yaml"), CM.as_bytes().to_vec()));
        let err = pack_files(two, &small).unwrap_err();
        assert!(err.to_string().contains("artifact size"), "{err}");
        for bad in ["../x.yaml", "/x.yaml", "a//b.yaml", "a/./b.yaml"] {
            let err = pack_files(vec![(bad.into(), CM.into())], &Limits::default()).unwrap_err();
            assert!(matches!(err, Error::Path { .. }), "{bad}: {err}");
        }
        let mut p = Packer::new(Limits::default());
        p.add("b.yaml", CM.as_bytes()).unwrap();
        assert!(p.add("a.yaml", CM.as_bytes()).is_err());
        assert!(p.add("b.yaml", CM.as_bytes()).is_err());
    }

    #[test]
    fn pack_dir_validates_manifests_and_matches_pack_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.yaml"), CM).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/b.yaml"), CM).unwrap();
        std::fs::write(d.path().join("notes.txt"), "hi").unwrap();
        let p = pack_dir(d.path(), &Limits::default()).unwrap();
        let q = pack_files(
            vec![("sub/b.yaml".into(), CM.into()), ("a.yaml".into(), CM.into())],
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(p.digest, q.digest);
        assert_eq!(p.objects, 2);

        // A no-op .convoyignore changes nothing.
        std::fs::write(d.path().join(".convoyignore"), "*.txt\nnothing-here/\n").unwrap();
        assert_eq!(pack_dir(d.path(), &Limits::default()).unwrap().digest, p.digest);

        std::fs::write(d.path().join("sub/bad.yaml"), "apiVersion: v1\nkind: [\n").unwrap();
        let err = pack_dir(d.path(), &Limits::default()).unwrap_err();
        assert!(matches!(&err, Error::Manifest { file, .. } if file == "sub/bad.yaml"), "{err}");
    }
}
