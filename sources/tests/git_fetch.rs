//! GitCache against real repositories: a local path and file://.

mod common;

use std::sync::atomic::AtomicBool;

use common::*;
use convoy_core::config::RefSpec;
use convoy_sources::Error;
use convoy_sources::git::{FetchOptions, GitCache, Resolved};
use convoy_sources::redact::Secrets;

fn fetch(cache: &GitCache, url: &str, spec: &RefSpec, last: Option<&str>) -> Result<Resolved, Error> {
    cache.fetch(url, spec, &FetchOptions::default(), &Secrets::default(), last, &AtomicBool::new(false))
}

fn branch(b: &str) -> RefSpec {
    RefSpec::Branch(b.into())
}

#[test]
fn branch_new_commits_force_push_and_deleted_branch_over_a_local_path() {
    let up = Upstream::new("fleet", &[("app/cm.yaml", &configmap("a"))]);
    let c1 = up.head();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = GitCache::new(cache_dir.path().join("repo.git"));
    let url = up.bare.to_str().unwrap().to_string();

    let r = fetch(&cache, &url, &branch("main"), None).unwrap();
    assert_eq!((r.commit.as_str(), r.reference.as_str(), r.fetched), (c1.as_str(), "main", true));
    assert_eq!(r.revision(), format!("main@sha1:{c1}"));

    // Unchanged: no pack.
    let r = fetch(&cache, &url, &branch("main"), Some(&c1)).unwrap();
    assert!(!r.fetched);
    assert_eq!(r.commit, c1);

    // A new commit.
    let c2 = up.commit(&[("app/cm2.yaml", &configmap("b"))], "second");
    up.push(&["origin", "main"]);
    let r = fetch(&cache, &url, &branch("main"), Some(&c1)).unwrap();
    assert_eq!((r.commit.as_str(), r.fetched), (c2.as_str(), true));
    let files = cache.tree(&c2).unwrap();
    let art = convoy_artifact::pack_tree(&files, "app", &Default::default(), &Default::default()).unwrap();
    assert_eq!(art.files, 2);

    // A force-push to an unrelated history.
    common::git(&up.work, &["reset", "-q", "--hard", &c1]);
    let c3 = up.commit(&[("app/cm3.yaml", &configmap("c"))], "rewritten");
    up.push(&["--force", "origin", "main"]);
    let r = fetch(&cache, &url, &branch("main"), Some(&c2)).unwrap();
    assert_eq!((r.commit.as_str(), r.fetched), (c3.as_str(), true));

    // A branch that is deleted.
    common::git(&up.work, &["checkout", "-q", "-b", "feature"]);
    let f1 = up.commit(&[("app/f.yaml", &configmap("f"))], "feature");
    up.push(&["origin", "feature"]);
    assert_eq!(fetch(&cache, &url, &branch("feature"), None).unwrap().commit, f1);
    up.push(&["origin", "--delete", "feature"]);
    let err = fetch(&cache, &url, &branch("feature"), Some(&f1)).unwrap_err();
    assert!(matches!(err, Error::RefNotFound { .. }), "{err}");
    assert_eq!(err.reason(), "RefNotFound");

    // A ref that never existed.
    let err = fetch(&cache, &url, &branch("nope"), None).unwrap_err();
    assert!(matches!(err, Error::RefNotFound { .. }), "{err}");
    assert!(err.to_string().contains("branch nope"), "{err}");
}

#[test]
fn tags_semver_names_and_commits_over_file_url() {
    let up = Upstream::new("fleet", &[("cm.yaml", &configmap("a"))]);
    let c1 = up.head();
    common::git(&up.work, &["tag", "v1.0.0"]);
    let c2 = up.commit(&[("cm.yaml", &configmap("b"))], "two");
    common::git(&up.work, &["tag", "-a", "-m", "release", "v1.2.0"]);
    let c3 = up.commit(&[("cm.yaml", &configmap("c"))], "three");
    common::git(&up.work, &["tag", "v2.0.0-rc.1"]);
    common::git(&up.work, &["tag", "not-semver"]);
    up.push(&["origin", "main", "--tags"]);
    let url = format!("file://{}", up.bare.display());
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = GitCache::new(cache_dir.path().join("repo.git"));

    let r = fetch(&cache, &url, &RefSpec::Tag("v1.0.0".into()), None).unwrap();
    assert_eq!((r.commit.as_str(), r.reference.as_str()), (c1.as_str(), "v1.0.0"));
    // Annotated tags resolve to the commit, not the tag object.
    let r = fetch(&cache, &url, &RefSpec::Tag("v1.2.0".into()), None).unwrap();
    assert_eq!(r.commit, c2);
    let r = fetch(&cache, &url, &RefSpec::Semver(">=1.0.0".into()), None).unwrap();
    assert_eq!((r.commit.as_str(), r.revision()), (c2.as_str(), format!("v1.2.0@sha1:{c2}")));
    let r = fetch(&cache, &url, &RefSpec::Semver(">=2.0.0-0".into()), None).unwrap();
    assert_eq!(r.reference, "v2.0.0-rc.1");
    let err = fetch(&cache, &url, &RefSpec::Semver(">=3".into()), None).unwrap_err();
    assert!(matches!(err, Error::RefNotFound { .. }), "{err}");

    let r = fetch(&cache, &url, &RefSpec::Name("refs/heads/main".into()), None).unwrap();
    assert_eq!((r.commit.as_str(), r.reference.as_str()), (c3.as_str(), "refs/heads/main"));

    // An exact commit, fetched by id, then never fetched again.
    let fresh = tempfile::tempdir().unwrap();
    let cache2 = GitCache::new(fresh.path().join("repo.git"));
    let spec = RefSpec::Commit { commit: c2.clone(), branch: None };
    let r = fetch(&cache2, &url, &spec, None).unwrap();
    assert_eq!((r.commit.as_str(), r.reference.as_str(), r.fetched), (c2.as_str(), "HEAD", true));
    let r = fetch(&cache2, "file:///nonexistent/anymore", &spec, None).unwrap();
    assert!(!r.fetched, "an exact commit in the cache needs no network");
    // An exact commit via its branch.
    let spec = RefSpec::Commit { commit: c1.clone(), branch: Some("main".into()) };
    let r = fetch(&GitCache::new(fresh.path().join("b.git")), &url, &spec, None).unwrap();
    assert_eq!((r.commit.as_str(), r.reference.as_str()), (c1.as_str(), "main"));
}

#[test]
fn unreachable_repositories_fail_cleanly() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = GitCache::new(cache_dir.path().join("repo.git"));
    let err = fetch(&cache, "/nonexistent/repo.git", &branch("main"), None).unwrap_err();
    assert!(matches!(err, Error::Fetch { .. }), "{err}");
    // Port 1 on loopback: nothing listens there (a port from free_port()
    // could be taken by another test process meanwhile).
    let port = 1;
    let err = fetch(&cache, &format!("git://127.0.0.1:{port}/x.git"), &branch("main"), None).unwrap_err();
    assert!(matches!(err, Error::Fetch { .. }), "{err}");
    let err = fetch(&cache, &format!("http://127.0.0.1:{port}/x.git"), &branch("main"), None).unwrap_err();
    assert!(matches!(err, Error::Fetch { .. }), "{err}");
}
