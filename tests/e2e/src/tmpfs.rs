//! A small tmpfs mounted by a test (a full-disk scenario's data dir) and
//! unmounted on drop. Mounting needs root (CAP_SYS_ADMIN): when it is not
//! possible the scenario fails with the reason, it is never skipped.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// A tmpfs of a fixed size mounted on a directory; lazily unmounted on drop.
#[derive(Debug)]
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mount a `bytes`-sized tmpfs on `dir` (created if missing).
    pub fn mount(dir: &Path, bytes: u64) -> Result<Tmpfs> {
        std::fs::create_dir_all(dir)?;
        let target = CString::new(dir.as_os_str().as_bytes())?;
        let fstype = CString::new("tmpfs")?;
        let opts = CString::new(format!("size={bytes},mode=0700"))?;
        // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, opts.as_ptr().cast())
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            bail!(
                "cannot mount a {bytes}-byte tmpfs on {}: {e} (the full-disk scenario needs root; it is not skipped)",
                dir.display()
            );
        }
        Ok(Tmpfs { dir: dir.to_path_buf() })
    }

    /// The mount point.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Write zeros to `name` under the mount until the filesystem is full
    /// (ENOSPC); returns the file and how many bytes it holds.
    pub fn fill(&self, name: &str) -> Result<(PathBuf, u64)> {
        use std::io::Write;
        let path = self.dir.join(name);
        let mut f = std::fs::File::create(&path)?;
        let chunk = vec![0u8; 64 << 10];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e.into()),
            }
        }
        // Whatever partial page is left.
        while let Ok(n) = f.write(&chunk[..512]) {
            if n == 0 {
                break;
            }
            written += n as u64;
        }
        Ok((path, written))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.dir.as_os_str().as_bytes()) {
            // SAFETY: umount2(2) on the directory we mounted; MNT_DETACH so
            // that a file still open elsewhere does not keep it mounted.
            unsafe {
                libc::umount2(target.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}
