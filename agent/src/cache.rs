//! The local artifact cache in the state directory: downloads from the hub
//! with resume (a `.part` file grows chunk by chunk; a broken download
//! continues from its length), content-addressed by digest, checked on every
//! read, and garbage-collected to what applied and desired bundles reference.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use convoy_proto::v1::DownloadArtifactRequest;
use convoy_proto::v1::agent_client::AgentClient;
use tokio::io::AsyncWriteExt;
use tonic::transport::Channel;

use crate::{Error, Result};

/// The cache directory (cheap to clone).
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
}

fn hex_of(digest: &str) -> Result<&str> {
    if !convoy_artifact::is_valid_digest(digest) {
        return Err(Error::verification("DigestInvalid", format!("{digest:?} is not a sha256:<hex> digest")));
    }
    Ok(&digest["sha256:".len()..])
}

impl ArtifactCache {
    /// Open `<state>/artifacts`.
    pub fn open(state_dir: &Path) -> Result<Self> {
        let dir = state_dir.join("artifacts");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        Ok(Self { dir })
    }

    /// Where an artifact lives once complete.
    pub fn path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.dir.join(format!("{}.tar.gz", hex_of(digest)?)))
    }

    fn part_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.dir.join(format!("{}.part", hex_of(digest)?)))
    }

    /// The cached bytes, if present and intact (a corrupt file is removed).
    /// Reading and hashing a whole artifact is blocking work: it runs in
    /// `spawn_blocking`, off the async threads.
    pub async fn get(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        let this = self.clone();
        let digest = digest.to_string();
        tokio::task::spawn_blocking(move || this.get_blocking(&digest))
            .await
            .map_err(|e| Error::Store(format!("artifact cache read task: {e}")))?
    }

    fn get_blocking(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        let p = self.path(digest)?;
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("read {}", p.display()), e)),
        };
        if convoy_artifact::digest_of(&bytes) != digest {
            tracing::warn!(%digest, "cached artifact is corrupt; removing it");
            let _ = std::fs::remove_file(&p);
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    /// The artifact from the cache, or downloaded from the hub (resuming a
    /// partial download), checked against `digest` and `size`.
    pub async fn fetch(&self, hub: &mut AgentClient<Channel>, digest: &str, size: u64) -> Result<Vec<u8>> {
        if let Some(b) = self.get(digest).await? {
            return Ok(b);
        }
        let part = self.part_path(digest)?;
        let mut offset = match tokio::fs::metadata(&part).await {
            Ok(m) => m.len(),
            Err(_) => 0,
        };
        if offset > size {
            offset = 0;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&part)
            .await
            .map_err(|e| Error::io(format!("open {}", part.display()), e))?;
        file.set_len(offset).await.map_err(|e| Error::io("truncate partial download", e))?;
        let mut file = tokio::io::BufWriter::new(file);
        tokio::io::AsyncSeekExt::seek(&mut file, std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| Error::io("seek partial download", e))?;
        if offset > 0 {
            tracing::info!(%digest, offset, size, "resuming artifact download");
        }
        let result: Result<()> = async {
            let mut stream = hub
                .download_artifact(DownloadArtifactRequest { digest: digest.to_string(), offset })
                .await?
                .into_inner();
            while let Some(chunk) = stream.message().await? {
                if chunk.offset != offset {
                    return Err(Error::Transport(format!(
                        "artifact {digest}: chunk at offset {} while expecting {offset}",
                        chunk.offset
                    )));
                }
                if chunk.total_size != 0 && chunk.total_size != size {
                    return Err(Error::verification(
                        "SizeMismatch",
                        format!(
                            "the hub serves {} bytes for {digest}, the statement says {size}",
                            chunk.total_size
                        ),
                    ));
                }
                if offset + chunk.data.len() as u64 > size {
                    return Err(Error::verification(
                        "SizeMismatch",
                        format!("artifact {digest} is larger than {size} bytes"),
                    ));
                }
                file.write_all(&chunk.data).await.map_err(|e| Error::io("write partial download", e))?;
                offset += chunk.data.len() as u64;
            }
            Ok(())
        }
        .await;
        file.flush().await.map_err(|e| Error::io("flush partial download", e))?;
        drop(file);
        if let Err(e) = result {
            if matches!(e, Error::Verification { .. }) {
                let _ = tokio::fs::remove_file(&part).await;
            }
            return Err(e);
        }
        if offset != size {
            return Err(Error::Transport(format!(
                "artifact {digest}: download ended at {offset} of {size} bytes"
            )));
        }
        let bytes =
            tokio::fs::read(&part).await.map_err(|e| Error::io(format!("read {}", part.display()), e))?;
        let actual = convoy_artifact::digest_of(&bytes);
        if actual != digest {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(Error::verification(
                "DigestMismatch",
                format!("downloaded artifact is {actual}, expected {digest}"),
            ));
        }
        let fin = self.path(digest)?;
        tokio::fs::rename(&part, &fin)
            .await
            .map_err(|e| Error::io(format!("rename to {}", fin.display()), e))?;
        Ok(bytes)
    }

    /// Remove artifacts (and partial downloads) not in `keep`; returns how many.
    pub fn gc(&self, keep: &HashSet<String>) -> Result<usize> {
        let keep_hex: HashSet<&str> = keep.iter().filter_map(|d| d.strip_prefix("sha256:")).collect();
        let mut removed = 0;
        let rd =
            std::fs::read_dir(&self.dir).map_err(|e| Error::io(format!("list {}", self.dir.display()), e))?;
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let hex = name.split('.').next().unwrap_or("");
            if !keep_hex.contains(hex) && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn get_checks_digest_and_gc_keeps_referenced() {
        let dir = tempfile::tempdir().unwrap();
        let c = ArtifactCache::open(dir.path()).unwrap();
        let bytes = b"hello".to_vec();
        let d = convoy_artifact::digest_of(&bytes);
        assert!(c.get(&d).await.unwrap().is_none());
        std::fs::write(c.path(&d).unwrap(), &bytes).unwrap();
        assert_eq!(c.get(&d).await.unwrap().unwrap(), bytes);
        std::fs::write(c.path(&d).unwrap(), b"corrupt").unwrap();
        assert!(c.get(&d).await.unwrap().is_none(), "a corrupt file is not served");
        assert!(!c.path(&d).unwrap().exists());
        assert!(c.path("sha256:../../etc").is_err());

        let other = convoy_artifact::digest_of(b"x");
        std::fs::write(c.path(&d).unwrap(), &bytes).unwrap();
        std::fs::write(c.path(&other).unwrap(), b"x").unwrap();
        let keep: HashSet<String> = [d.clone()].into();
        assert_eq!(c.gc(&keep).unwrap(), 1);
        assert!(c.get(&d).await.unwrap().is_some());
    }
}
