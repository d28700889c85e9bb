//! Artifact bytes for DownloadArtifact: read once per digest, shared by all
//! concurrent downloads, kept in a bounded in-memory cache (oldest first
//! out). Artifacts are content-addressed, so a cached entry is never stale.
//! A hit costs one map lookup under a short lock: no file system call, no
//! copy (chunks are slices of the one [`Bytes`]).

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::OnceCell;

use crate::{Error, Result};

/// A bounded cache of artifact bytes by digest.
pub struct ArtifactCache {
    budget: usize,
    inner: Mutex<Inner>,
}

struct Cell {
    bytes: Arc<OnceCell<Bytes>>,
    /// Counted in `used` and listed in `order`.
    resident: bool,
}

#[derive(Default)]
struct Inner {
    cells: HashMap<String, Cell>,
    /// Resident digests and their sizes, oldest first.
    order: VecDeque<(String, usize)>,
    used: usize,
}

impl ArtifactCache {
    /// A cache holding at most `budget` bytes (artifacts larger than the
    /// budget are read for each download and not kept).
    pub fn new(budget: usize) -> Self {
        Self { budget, inner: Mutex::new(Inner::default()) }
    }

    /// The bytes of `digest` if they are in memory.
    pub fn cached(&self, digest: &str) -> Option<Bytes> {
        self.inner.lock().cells.get(digest).and_then(|c| c.bytes.get().cloned())
    }

    /// The bytes of `digest`, read from `path` on a miss (once, however many
    /// downloads wait for them).
    pub async fn get(&self, digest: &str, path: &Path) -> Result<Bytes> {
        let cell = {
            let mut inner = self.inner.lock();
            let c = inner
                .cells
                .entry(digest.to_string())
                .or_insert_with(|| Cell { bytes: Arc::default(), resident: false });
            c.bytes.clone()
        };
        let read = cell
            .get_or_try_init(|| async {
                let p = path.to_path_buf();
                tokio::fs::read(&p).await.map(Bytes::from).map_err(|e| Error::io(p, e))
            })
            .await
            .cloned();
        let mut inner = self.inner.lock();
        let bytes = match read {
            Ok(b) => b,
            Err(e) => {
                // Nothing to keep: forget the empty cell (unless a later
                // caller filled it meanwhile).
                if inner.cells.get(digest).is_some_and(|c| c.bytes.get().is_none()) {
                    inner.cells.remove(digest);
                }
                return Err(e);
            }
        };
        let Inner { cells, order, used } = &mut *inner;
        let Some(c) = cells.get_mut(digest) else { return Ok(bytes) };
        if c.resident || !Arc::ptr_eq(&c.bytes, &cell) {
            return Ok(bytes);
        }
        if bytes.len() > self.budget {
            cells.remove(digest);
            return Ok(bytes);
        }
        c.resident = true;
        order.push_back((digest.to_string(), bytes.len()));
        *used += bytes.len();
        while *used > self.budget {
            let Some((old, n)) = order.pop_front() else { break };
            cells.remove(&old);
            *used -= n;
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, len: usize) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, vec![name.as_bytes()[0]; len]).unwrap();
        p
    }

    #[tokio::test]
    async fn a_hit_needs_no_file_and_shares_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(1000);
        let a = file(dir.path(), "a", 100);
        assert!(cache.cached("a").is_none());
        let first = cache.get("a", &a).await.unwrap();
        std::fs::remove_file(&a).unwrap();
        let hit = cache.cached("a").unwrap();
        assert_eq!(hit.as_ptr(), first.as_ptr(), "the same buffer, not a copy");
        assert_eq!(cache.get("a", &a).await.unwrap(), first);
        assert_eq!(cache.inner.lock().used, 100, "counted once");
    }

    #[tokio::test]
    async fn the_oldest_artifacts_leave_when_over_budget() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(250);
        for name in ["a", "b", "c"] {
            let p = file(dir.path(), name, 100);
            cache.get(name, &p).await.unwrap();
        }
        assert!(cache.cached("a").is_none());
        assert!(cache.cached("b").is_some() && cache.cached("c").is_some());
        let inner = cache.inner.lock();
        assert_eq!((inner.used, inner.order.len(), inner.cells.len()), (200, 2, 2));
    }

    #[tokio::test]
    async fn too_big_or_unreadable_artifacts_are_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(50);
        let big = file(dir.path(), "big", 100);
        assert_eq!(cache.get("big", &big).await.unwrap().len(), 100);
        assert!(cache.cached("big").is_none());
        let missing = dir.path().join("missing");
        assert!(cache.get("m", &missing).await.is_err());
        assert!(cache.inner.lock().cells.is_empty(), "no empty cell left behind");
        // It appears later: the next download reads it.
        std::fs::write(&missing, b"xyz").unwrap();
        assert_eq!(&cache.get("m", &missing).await.unwrap()[..], b"xyz");
        assert!(cache.cached("m").is_some());
    }

    #[tokio::test]
    async fn concurrent_downloads_of_one_digest_read_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(ArtifactCache::new(1 << 20));
        let p = file(dir.path(), "a", 1000);
        let all = futures::future::join_all((0..32).map(|_| {
            let (cache, p) = (cache.clone(), p.clone());
            async move { cache.get("a", &p).await.unwrap() }
        }))
        .await;
        assert!(all.iter().all(|b| b.as_ptr() == all[0].as_ptr()), "one read, one buffer");
        assert_eq!(cache.inner.lock().used, 1000);
    }
}
