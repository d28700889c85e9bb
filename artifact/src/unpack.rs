//! Safe unpacking of an artifact, in memory, for the agent.
//!
//! Only regular files (and directory entries, which are skipped) are
//! accepted; links, devices, FIFOs and pax global headers are refused. Paths
//! must pass [`crate::check_path`] (no absolute paths, no `..`), appear once,
//! and name manifests. The decompressed size, the file count and each file's
//! size are limited while reading, so a gzip bomb stops early.

use std::io::Read;

use crate::manifest::{self, Manifest};
use crate::pack::{Limits, check_path};
use crate::{Error, Result};

/// A file from an artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackedFile {
    /// Its path in the artifact.
    pub path: String,
    /// Its bytes.
    pub content: Vec<u8>,
}

/// Counts decompressed bytes and fails past a limit.
struct Bounded<R> {
    inner: R,
    read: u64,
    limit: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(std::io::Error::other(BombError(self.limit)));
        }
        Ok(n)
    }
}

#[derive(Debug)]
struct BombError(u64);

impl std::fmt::Display for BombError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "decompressed archive exceeds {} bytes", self.0)
    }
}

impl std::error::Error for BombError {}

/// Unpack a `.tar.gz` into memory with limits. Files come back in archive order.
pub fn unpack(targz: &[u8], limits: &Limits) -> Result<Vec<UnpackedFile>> {
    // Tar framing adds at most a 512-byte header (plus GNU long-name entries)
    // and padding per file, and 1 KiB at the end.
    let framing = (limits.max_files as u64 + 2) * 2048;
    let reader = Bounded {
        inner: flate2::read::GzDecoder::new(targz),
        read: 0,
        limit: limits.max_total_bytes.saturating_add(framing),
    };
    let mut archive = tar::Archive::new(reader);
    let map_io = |e: std::io::Error| -> Error {
        if let Some(b) = e.get_ref().and_then(|i| i.downcast_ref::<BombError>()) {
            return Error::Limit {
                what: "artifact size (uncompressed)",
                limit: limits.max_total_bytes,
                actual: b.0,
                path: None,
            };
        }
        Error::Archive(e.to_string())
    };
    let mut out: Vec<UnpackedFile> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    for entry in archive.entries().map_err(map_io)? {
        let mut entry = entry.map_err(map_io)?;
        let raw_path = entry.path_bytes().into_owned();
        let path = String::from_utf8(raw_path.clone()).map_err(|_| Error::Path {
            path: String::from_utf8_lossy(&raw_path).into_owned(),
            message: "not UTF-8".into(),
        })?;
        let ty = entry.header().entry_type();
        if ty.is_dir() {
            check_path(path.trim_end_matches('/'))?;
            continue;
        }
        if !(ty.is_file() || ty == tar::EntryType::Continuous) {
            return Err(Error::Archive(format!(
                "{path}: entry type {ty:?} is not allowed; only regular files"
            )));
        }
        check_path(&path)?;
        if !seen.insert(path.clone()) {
            return Err(Error::Archive(format!("{path}: appears twice")));
        }
        if out.len() as u32 >= limits.max_files {
            return Err(Error::Limit {
                what: "file count",
                limit: limits.max_files as u64,
                actual: out.len() as u64 + 1,
                path: None,
            });
        }
        let size = entry.header().size().map_err(map_io)?;
        if size > limits.max_file_bytes {
            return Err(Error::Limit {
                what: "file size",
                limit: limits.max_file_bytes,
                actual: size,
                path: Some(path),
            });
        }
        total += size;
        if total > limits.max_total_bytes {
            return Err(Error::Limit {
                what: "artifact size (uncompressed)",
                limit: limits.max_total_bytes,
                actual: total,
                path: None,
            });
        }
        let mut content = Vec::with_capacity(size as usize);
        (&mut entry).take(limits.max_file_bytes + 1).read_to_end(&mut content).map_err(map_io)?;
        if content.len() as u64 != size {
            return Err(Error::Archive(format!("{path}: truncated ({} of {size} bytes)", content.len())));
        }
        out.push(UnpackedFile { path, content });
    }
    Ok(out)
}

/// Unpack and parse every manifest: the objects the agent will apply, with
/// their file and document index. One bad document fails the whole artifact.
pub fn load_manifests(targz: &[u8], limits: &Limits) -> Result<Vec<Manifest>> {
    let files = unpack(targz, limits)?;
    manifest::parse_files(files.iter().map(|f| (f.path.as_str(), f.content.as_slice())))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::pack::pack_files;

    const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n";

    /// A raw tar.gz with hand-made headers, to build hostile archives.
    type RawEntry<'a> = (&'a [u8], tar::EntryType, &'a [u8], Option<&'a str>);

    fn raw(entries: &[RawEntry<'_>]) -> Vec<u8> {
        let mut data = Vec::new();
        for (path, ty, content, link) in entries {
            let mut h = tar::Header::new_old();
            h.as_old_mut().name[..path.len()].copy_from_slice(path);
            h.set_entry_type(*ty);
            h.set_size(content.len() as u64);
            h.set_mode(0o644);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            h.set_cksum();
            data.extend_from_slice(h.as_bytes());
            data.extend_from_slice(content);
            data.resize(data.len().div_ceil(512) * 512, 0);
        }
        data.extend_from_slice(&[0; 1024]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&data).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn round_trip_and_manifests() {
        let p = pack_files(
            vec![("a.yaml".into(), CM.into()), ("s/b.yaml".into(), format!("{CM}---\n{CM}").into_bytes())],
            &Limits::default(),
        )
        .unwrap();
        let files = unpack(&p.bytes, &Limits::default()).unwrap();
        assert_eq!(files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["a.yaml", "s/b.yaml"]);
        let ms = load_manifests(&p.bytes, &Limits::default()).unwrap();
        assert_eq!(
            ms.iter().map(|m| m.origin()).collect::<Vec<_>>(),
            ["a.yaml document 0", "s/b.yaml document 0", "s/b.yaml document 1"]
        );
    }

    #[test]
    fn hostile_archives_are_refused() {
        let l = Limits::default();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (raw(&[(b"../evil.yaml", tar::EntryType::Regular, CM.as_bytes(), None)]), ".."),
            (raw(&[(b"/etc/evil.yaml", tar::EntryType::Regular, CM.as_bytes(), None)]), "absolute"),
            (raw(&[(b"l.yaml", tar::EntryType::Symlink, b"", Some("/etc/passwd"))]), "not allowed"),
            (raw(&[(b"h.yaml", tar::EntryType::Link, b"", Some("a.yaml"))]), "not allowed"),
            (raw(&[(b"dev", tar::EntryType::Char, b"", None)]), "not allowed"),
            (
                raw(&[
                    (b"a.yaml", tar::EntryType::Regular, CM.as_bytes(), None),
                    (b"a.yaml", tar::EntryType::Regular, CM.as_bytes(), None),
                ]),
                "twice",
            ),
        ];
        for (bytes, want) in cases {
            let err = unpack(&bytes, &l).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
        let err =
            load_manifests(&raw(&[(b"x.sh", tar::EntryType::Regular, b"rm -rf /", None)]), &l).unwrap_err();
        assert!(err.to_string().contains("not a manifest file"), "{err}");
        assert!(unpack(b"not gzip at all", &l).is_err());
    }

    #[test]
    fn limits_stop_bombs_early() {
        let big = vec![b'#'; 4 << 20];
        let bytes = raw(&[(b"a.yaml", tar::EntryType::Regular, &big, None)]);
        assert!(bytes.len() < 64 << 10, "compresses well");
        let l = Limits { max_total_bytes: 1 << 20, max_files: 10, max_file_bytes: 8 << 20 };
        let err = unpack(&bytes, &l).unwrap_err();
        assert!(matches!(err, Error::Limit { .. }), "{err}");
        let l = Limits { max_total_bytes: 64 << 20, max_files: 10, max_file_bytes: 1 << 20 };
        let err = unpack(&bytes, &l).unwrap_err();
        assert!(matches!(err, Error::Limit { what: "file size", .. }), "{err}");
        let many: Vec<_> = (0..3).map(|i| (format!("{i}.yaml"), CM.as_bytes().to_vec())).collect();
        let p = pack_files(many, &Limits::default()).unwrap();
        let err = unpack(&p.bytes, &Limits { max_files: 2, ..Limits::default() }).unwrap_err();
        assert!(matches!(err, Error::Limit { what: "file count", .. }), "{err}");
    }
}
