//! Commit signature verification before a revision is used.
//!
//! - `mode: ssh`: `keysFile` is an ssh `allowed_signers` file; the commit's
//!   SSH signature must verify with `ssh-keygen -Y verify` for a principal
//!   listed there (at the committer time, so `valid-after`/`valid-before`
//!   work). An unknown key is refused.
//! - `mode: gpg`: `keysFile` is an armored OpenPGP keyring; it is imported
//!   into a private, throwaway `GNUPGHOME` and the signature must verify with
//!   `gpg` against those keys only.
//!
//! Unsigned commits are refused. The verifiers are run by gix
//! (`gix-object`'s signature support), as git would run them.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};

use convoy_core::config::CommitVerification;
use gix::ObjectId;
use gix::objs::signature::verify::{Options, TrustLevel};

use crate::git::GitCache;
use crate::{Error, Result};

/// Verify the signature of `commit` (in the cache) as configured.
pub fn verify_commit(cache: &GitCache, commit: &str, v: &CommitVerification) -> Result<()> {
    let repo = cache.repo()?;
    let id =
        ObjectId::from_hex(commit.as_bytes()).map_err(|e| Error::Verification(format!("{commit}: {e}")))?;
    let c = repo.find_commit(id).map_err(|e| Error::Verification(format!("commit {commit}: {e}")))?;
    let time = c.time().map_err(|e| Error::Verification(format!("commit {commit}: {e}")))?;
    let Some((signature, signed)) =
        c.signature().map_err(|e| Error::Verification(format!("commit {commit}: {e}")))?
    else {
        return Err(Error::Verification(format!("commit {commit} is not signed")));
    };
    let keys = Path::new(&v.keys_file);
    if !keys.is_file() {
        return Err(Error::Verification(format!("keysFile {}: not a file", v.keys_file)));
    }
    let _home; // keeps the temporary GNUPGHOME alive until verification ends
    let options = match v.mode.as_str() {
        "ssh" => Options::Ssh {
            program: "ssh-keygen".into(),
            program_arguments: Vec::new(),
            environment: Vec::new(),
            allowed_signers: keys.to_path_buf(),
            revocation_file: None,
            verify_time: time,
            // Fully: the signing key must be a principal of allowed_signers.
            minimum_trust: TrustLevel::Fully,
        },
        "gpg" => {
            let home = tempfile::Builder::new()
                .prefix("convoy-gnupg-")
                .tempdir()
                .map_err(|e| Error::Verification(format!("GNUPGHOME: {e}")))?;
            let out = Command::new("gpg")
                .args(["--batch", "--quiet", "--homedir"])
                .arg(home.path())
                .arg("--import")
                .arg(keys)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| Error::Verification(format!("cannot run gpg: {e}")))?;
            if !out.status.success() {
                return Err(Error::Verification(format!(
                    "gpg --import {}: {}",
                    v.keys_file,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            let env = vec![(OsString::from("GNUPGHOME"), home.path().as_os_str().to_owned())];
            _home = home;
            Options::OpenPgp {
                program: "gpg".into(),
                program_arguments: Vec::new(),
                environment: env,
                // Only keys from keysFile are in this keyring; their owner
                // trust is never set, so require a good signature, not trust.
                minimum_trust: TrustLevel::Undefined,
            }
        }
        other => return Err(Error::Verification(format!("unsupported mode {other:?}"))),
    };
    let outcome = signed
        .verify(&signature, options)
        .map_err(|e| Error::Verification(format!("commit {commit}: {e:#}")))?;
    if !outcome.is_valid() {
        let said = String::from_utf8_lossy(&outcome.output);
        let said: Vec<&str> = said.lines().map(str::trim).filter(|l| !l.is_empty()).take(5).collect();
        return Err(Error::Verification(format!(
            "commit {commit}: signature not accepted ({:?}, trust {:?}): {}",
            outcome.status,
            outcome.trust_level,
            said.join("; ")
        )));
    }
    Ok(())
}
