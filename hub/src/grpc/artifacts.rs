//! Artifact bytes for DownloadArtifact: read once per digest, shared by all
//! concurrent downloads, kept in a bounded in-memory cache. Artifacts are
//! content-addressed, so a cached entry is never stale.

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

#[derive(Default)]
struct Inner {
    cells: HashMap<String, Arc<OnceCell<Bytes>>>,
    order: VecDeque<(String, usize)>,
    used: usize,
}

impl ArtifactCache {
    /// A cache holding at most `budget` bytes (artifacts larger than the
    /// budget are read for each download and not kept).
    pub fn new(budget: usize) -> Self {
        Self { budget, inner: Mutex::new(Inner::default()) }
    }

    /// The bytes of `digest`, read from `path` on a miss.
    pub async fn get(&self, digest: &str, path: &Path) -> Result<Bytes> {
        let cell = self.inner.lock().cells.entry(digest.to_string()).or_default().clone();
        let bytes = cell
            .get_or_try_init(|| async {
                let p = path.to_path_buf();
                tokio::fs::read(&p).await.map(Bytes::from).map_err(|e| Error::io(p, e))
            })
            .await?
            .clone();
        let mut inner = self.inner.lock();
        if !inner.order.iter().any(|(d, _)| d == digest) {
            if bytes.len() > self.budget {
                inner.cells.remove(digest);
            } else {
                inner.order.push_back((digest.to_string(), bytes.len()));
                inner.used += bytes.len();
                while inner.used > self.budget {
                    let Some((old, n)) = inner.order.pop_front() else { break };
                    inner.cells.remove(&old);
                    inner.used -= n;
                }
            }
        }
        Ok(bytes)
    }
}
