//! Temporary directories for tests: removed on drop, kept (path printed)
//! when the test fails or `CONVOY_KEEP_TMP` is set.

use std::path::{Path, PathBuf};

/// A temporary directory that is removed on drop unless the dropping thread
/// is panicking (a failing test) or `CONVOY_KEEP_TMP` is set: then it is
/// kept and its path printed on stderr, so logs can be read.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    /// A new directory `$TMPDIR/<prefix>XXXXXX`.
    pub fn new(prefix: &str) -> std::io::Result<TestDir> {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
        let path = dir.path().to_path_buf();
        Ok(TestDir { dir: Some(dir), path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keep the directory whatever happens; returns its path.
    pub fn keep(mut self) -> PathBuf {
        if let Some(d) = self.dir.take() {
            let _ = d.keep();
        }
        self.path.clone()
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let Some(d) = self.dir.take() else { return };
        let keep_env = std::env::var_os("CONVOY_KEEP_TMP").is_some_and(|v| !v.is_empty() && v != "0");
        if std::thread::panicking() || keep_env {
            let p = d.keep();
            let why = if keep_env { "CONVOY_KEEP_TMP is set" } else { "the test failed" };
            eprintln!("kept test directory {} ({why})", p.display());
        }
        // Otherwise TempDir's drop removes it.
    }
}
