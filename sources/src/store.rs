//! The content-addressed artifact store under the hub's data dir.
//!
//! Layout: `<dir>/sha256/<64 hex>.tar.gz`. Writes go to a temp file in the
//! same directory, are fsynced, then renamed into place (and the directory
//! fsynced), so a reader never sees a partial artifact and a crash leaves at
//! worst a stray temp file that [`ArtifactStore::gc`] removes. The file's
//! mtime records the last `put`; garbage collection deletes artifacts that no
//! bundle references once they are older than the retention period.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use convoy_artifact::{digest_of, is_valid_digest};

use crate::{Error, Result};

const TMP_PREFIX: &str = ".tmp-";

/// A content-addressed store of artifacts. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    dir: PathBuf,
}

impl ArtifactStore {
    /// Open (creating if needed) a store rooted at `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let blobs = dir.join("sha256");
        std::fs::create_dir_all(&blobs).map_err(|e| Error::io(&blobs, e))?;
        Ok(Self { dir: dir.to_path_buf() })
    }

    /// The store's root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, hex: &str) -> PathBuf {
        self.dir.join("sha256").join(format!("{hex}.tar.gz"))
    }

    /// Store bytes; returns their digest and size. Idempotent: storing bytes
    /// that are already there only refreshes their timestamp.
    pub fn put(&self, bytes: &[u8]) -> Result<(String, u64)> {
        let digest = digest_of(bytes);
        let size = bytes.len() as u64;
        let path = self.file(&digest["sha256:".len()..]);
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.len() == size
        {
            touch(&path)?;
            return Ok((digest, size));
        }
        let blobs = self.dir.join("sha256");
        let mut tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempfile_in(&blobs)
            .map_err(|e| Error::io(&blobs, e))?;
        tmp.write_all(bytes).map_err(|e| Error::io(tmp.path(), e))?;
        tmp.as_file().sync_all().map_err(|e| Error::io(tmp.path(), e))?;
        tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
        // Make the rename durable.
        if let Ok(d) = std::fs::File::open(&blobs) {
            let _ = d.sync_all();
        }
        Ok((digest, size))
    }

    /// The file holding an artifact, or `None` when the digest is malformed
    /// or absent.
    pub fn path(&self, digest: &str) -> Option<PathBuf> {
        if !is_valid_digest(digest) {
            return None;
        }
        let p = self.file(&digest["sha256:".len()..]);
        p.is_file().then_some(p)
    }

    /// Read an artifact's bytes and check them against the digest.
    pub fn read(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.path(digest).ok_or_else(|| Error::ArtifactNotFound(digest.to_string()))?;
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        if digest_of(&bytes) != digest {
            return Err(Error::Corrupt { path: path.display().to_string(), digest: digest.to_string() });
        }
        Ok(bytes)
    }

    /// Every stored digest.
    pub fn list(&self) -> Result<Vec<String>> {
        let blobs = self.dir.join("sha256");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&blobs).map_err(|e| Error::io(&blobs, e))? {
            let e = e.map_err(|e| Error::io(&blobs, e))?;
            if let Some(hex) = e.file_name().to_str().and_then(|n| n.strip_suffix(".tar.gz")) {
                let d = format!("sha256:{hex}");
                if is_valid_digest(&d) {
                    out.push(d);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Delete artifacts not in `referenced` whose last `put` is older than
    /// `retention`, and stray temp files older than `retention`. Returns how
    /// many artifacts were deleted.
    pub fn gc(&self, referenced: &HashSet<String>, retention: Duration) -> Result<usize> {
        let blobs = self.dir.join("sha256");
        let now = SystemTime::now();
        let mut deleted = 0;
        for e in std::fs::read_dir(&blobs).map_err(|e| Error::io(&blobs, e))? {
            let e = e.map_err(|e| Error::io(&blobs, e))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| now.duration_since(t).unwrap_or_default() >= retention)
                .unwrap_or(false);
            if !old {
                continue;
            }
            if name.starts_with(TMP_PREFIX) {
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            let Some(hex) = name.strip_suffix(".tar.gz") else { continue };
            let digest = format!("sha256:{hex}");
            if is_valid_digest(&digest) && !referenced.contains(&digest) {
                std::fs::remove_file(e.path()).map_err(|err| Error::io(e.path(), err))?;
                tracing::debug!(%digest, "deleted unreferenced artifact");
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

fn touch(path: &Path) -> Result<()> {
    let f = std::fs::OpenOptions::new().append(true).open(path).map_err(|e| Error::io(path, e))?;
    f.set_modified(SystemTime::now()).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(path: &Path, by: Duration) {
        let f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - by).unwrap();
    }

    #[test]
    fn put_path_read_and_idempotence() {
        let d = tempfile::tempdir().unwrap();
        let s = ArtifactStore::open(&d.path().join("artifacts")).unwrap();
        let (digest, size) = s.put(b"hello").unwrap();
        assert_eq!((digest.as_str(), size), (digest_of(b"hello").as_str(), 5));
        let p = s.path(&digest).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"hello");
        assert_eq!(s.put(b"hello").unwrap(), (digest.clone(), 5));
        assert_eq!(s.read(&digest).unwrap(), b"hello");
        assert_eq!(s.list().unwrap(), vec![digest.clone()]);
        // Malformed or absent digests.
        assert!(s.path("sha256:../../etc/passwd").is_none());
        assert!(s.path(&digest.to_uppercase()).is_none());
        assert!(s.path(&digest_of(b"other")).is_none());
        assert!(matches!(s.read(&digest_of(b"other")), Err(Error::ArtifactNotFound(_))));
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(d.path().join("artifacts/sha256")).unwrap().collect();
        assert_eq!(names.len(), 1);
        // Corruption is detected on read.
        std::fs::write(&p, b"jello").unwrap();
        assert!(matches!(s.read(&digest), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn gc_keeps_referenced_and_recent() {
        let d = tempfile::tempdir().unwrap();
        let s = ArtifactStore::open(d.path()).unwrap();
        let (a, _) = s.put(b"a").unwrap();
        let (b, _) = s.put(b"b").unwrap();
        let (c, _) = s.put(b"c").unwrap();
        let tmp = d.path().join("sha256/.tmp-stray");
        std::fs::write(&tmp, b"x").unwrap();
        for x in [&a, &b] {
            age(&s.path(x).unwrap(), Duration::from_secs(7200));
        }
        age(&tmp, Duration::from_secs(7200));
        let referenced: HashSet<String> = [a.clone()].into();
        assert_eq!(s.gc(&referenced, Duration::from_secs(3600)).unwrap(), 1);
        assert!(s.path(&a).is_some(), "referenced");
        assert!(s.path(&b).is_none(), "old and unreferenced");
        assert!(s.path(&c).is_some(), "recent");
        assert!(!tmp.exists());
        // A put refreshes the timestamp.
        age(&s.path(&c).unwrap(), Duration::from_secs(7200));
        s.put(b"c").unwrap();
        assert_eq!(s.gc(&referenced, Duration::from_secs(3600)).unwrap(), 0);
        assert!(s.path(&c).is_some());
    }
}
