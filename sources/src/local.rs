//! Local working repositories, made and read with gix: the example fleet that
//! `convoy dev` serves is created here (files committed on `main`, with an
//! index so that the user's `git status` is clean), and its branch head is
//! read back to notice the user's commits.

use std::path::Path;

use gix::bstr::ByteSlice;
use gix::refs::transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog};

use crate::{Error, Result};

fn err(dir: &Path, e: impl std::fmt::Display) -> Error {
    Error::LocalRepo { path: dir.display().to_string(), message: e.to_string() }
}

/// Who commits.
#[derive(Debug, Clone)]
pub struct Identity<'a> {
    /// The author and committer name.
    pub name: &'a str,
    /// Their email.
    pub email: &'a str,
}

/// Create a repository in `dir` (a new or empty directory) with `files`
/// (relative paths, `/`-separated) written to the working tree and committed
/// as the first commit of `branch`, which HEAD points at. The identity is
/// also written to the repository's config, so the user can commit there
/// with any git. Returns the commit id in hex.
pub fn init_with_files<'f>(
    dir: &Path,
    files: impl IntoIterator<Item = (&'f str, &'f [u8])>,
    branch: &str,
    message: &str,
    who: &Identity<'_>,
) -> Result<String> {
    let repo = gix::init(dir).map_err(|e| err(dir, e))?;
    let mut tree = repo.edit_tree(gix::ObjectId::empty_tree(repo.object_hash())).map_err(|e| err(dir, e))?;
    for (rel, bytes) in files {
        if rel.split('/').any(|c| c.is_empty() || c == "." || c == ".." || c == ".git") {
            return Err(err(dir, format!("refusing the path {rel:?}")));
        }
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
        let blob = repo.write_blob(bytes).map_err(|e| err(dir, e))?;
        tree.upsert(rel, gix::object::tree::EntryKind::Blob, blob).map_err(|e| err(dir, e))?;
    }
    let tree_id = tree.write().map_err(|e| err(dir, e))?.detach();

    let time = gix::date::Time::now_local_or_utc();
    let mut time_buf = gix::date::parse::TimeBuf::default();
    let sig = gix::actor::SignatureRef {
        name: who.name.into(),
        email: who.email.into(),
        time: time.to_str(&mut time_buf),
    };
    let branch_ref = format!("refs/heads/{branch}");
    let commit = repo
        .commit_as(sig, sig, branch_ref.as_str(), message, tree_id, Vec::<gix::ObjectId>::new())
        .map_err(|e| err(dir, e))?
        .detach();
    repo.edit_reference(RefEdit {
        change: Change::Update {
            log: LogChange { mode: RefLog::AndReference, force_create_reflog: false, message: "init".into() },
            expected: PreviousValue::Any,
            new: gix::refs::Target::Symbolic(branch_ref.as_str().try_into().map_err(|e| err(dir, e))?),
        },
        name: "HEAD".try_into().map_err(|e| err(dir, e))?,
        deref: false,
    })
    .map_err(|e| err(dir, e))?;

    // The index matching the commit, so the working tree reads as clean.
    let mut index = repo.index_from_tree(&tree_id).map_err(|e| err(dir, e))?;
    index.write(Default::default()).map_err(|e| err(dir, e))?;

    let config = dir.join(".git").join("config");
    let mut text = std::fs::read_to_string(&config).map_err(|e| Error::io(&config, e))?;
    text.push_str(&format!("[user]\n\tname = {}\n\temail = {}\n", who.name, who.email));
    std::fs::write(&config, text).map_err(|e| Error::io(&config, e))?;
    Ok(commit.to_string())
}

/// The commit `branch` points at in the repository at `dir`, with its
/// subject line; `None` when the branch does not exist.
pub fn branch_head(dir: &Path, branch: &str) -> Result<Option<(String, String)>> {
    let repo = gix::open_opts(dir, gix::open::Options::isolated()).map_err(|e| err(dir, e))?;
    let Some(mut r) = repo.try_find_reference(&format!("refs/heads/{branch}")).map_err(|e| err(dir, e))?
    else {
        return Ok(None);
    };
    let commit = r.peel_to_commit().map_err(|e| err(dir, e))?;
    let subject = commit
        .message_raw()
        .map_err(|e| err(dir, e))?
        .lines()
        .next()
        .map(|l| l.to_str_lossy().trim().to_string())
        .unwrap_or_default();
    Ok(Some((commit.id.to_string(), subject)))
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .current_dir(dir)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[test]
    fn real_git_sees_a_clean_commit_on_main_and_can_commit_on_top() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fleet");
        let who = Identity { name: "Convoy Dev", email: "dev@convoy.local" };
        let files: [(&str, &[u8]); 3] = [
            ("bundles.yaml", b"a: 1\n"),
            ("web/base/deploy.yaml", b"kind: Deployment\n"),
            ("web/README", b"hi\n"),
        ];
        let id = init_with_files(&dir, files, "main", "The example fleet", &who).unwrap();

        assert_eq!(git(&dir, &["rev-parse", "HEAD"]), id);
        assert_eq!(git(&dir, &["symbolic-ref", "HEAD"]), "refs/heads/main");
        assert_eq!(git(&dir, &["status", "--porcelain"]), "", "working tree and index match the commit");
        assert_eq!(git(&dir, &["show", "HEAD:web/base/deploy.yaml"]), "kind: Deployment");
        assert_eq!(
            git(&dir, &["log", "-1", "--format=%an <%ae> %s"]),
            "Convoy Dev <dev@convoy.local> The example fleet"
        );
        git(&dir, &["fsck", "--strict"]);
        assert_eq!(branch_head(&dir, "main").unwrap(), Some((id.clone(), "The example fleet".to_string())));
        assert_eq!(branch_head(&dir, "nope").unwrap(), None);

        // the user commits with their git and the identity from the repo config
        std::fs::write(dir.join("bundles.yaml"), "a: 2\n").unwrap();
        git(&dir, &["commit", "-q", "-am", "bump a\n\nbody"]);
        let (head, subject) = branch_head(&dir, "main").unwrap().unwrap();
        assert_ne!(head, id);
        assert_eq!(subject, "bump a");
    }

    #[test]
    fn paths_leaving_the_tree_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let who = Identity { name: "a", email: "a@b" };
        let e = init_with_files(tmp.path(), [("../x", b"1".as_slice())], "main", "m", &who).unwrap_err();
        assert!(e.to_string().contains("refusing the path"), "{e}");
    }
}
