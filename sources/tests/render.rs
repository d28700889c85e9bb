//! Rendering real-world bundles (shared corpus) from disk and from git
//! commits: plain YAML, kustomize overlays with bases outside the bundle,
//! determinism across trees and clones, and the clear errors.

mod common;

use std::sync::atomic::AtomicBool;

use common::*;
use convoy_artifact::{FsTree, load_manifests};
use convoy_core::config::RefSpec;
use convoy_sources::Error;
use convoy_sources::git::{FetchOptions, GitCache};
use convoy_sources::redact::Secrets;
use convoy_sources::render::{Kustomize, RENDERED_FILE, RenderOptions, render};

fn opts() -> RenderOptions {
    RenderOptions::default()
}

/// The corpus as a git repository: (upstream, commit).
fn corpus_repo() -> Upstream {
    let up = Upstream::new("corpus", &[("README.md", "corpus\n")]);
    for d in ["podinfo", "ingress-nginx", "argo-cd", "flux2-kustomize-helm-example"] {
        copy_dir(&corpus().join(d), &up.work.join(d));
    }
    up.commit(&[], "corpus");
    up.push(&["origin", "main"]);
    up
}

#[test]
fn heavy_corpus_renders_the_same_from_git_and_from_disk() {
    let up = corpus_repo();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = GitCache::new(cache_dir.path().join("c.git"));
    let r = cache
        .fetch(
            up.bare.to_str().unwrap(),
            &RefSpec::Branch("main".into()),
            &FetchOptions::default(),
            &Secrets::default(),
            None,
            &AtomicBool::new(false),
        )
        .unwrap();
    let git = cache.tree(&r.commit).unwrap();
    let disk = FsTree::new(&up.work);
    for (path, kustomized, min_objects) in [
        ("podinfo/kustomize", true, 3),
        ("ingress-nginx/deploy/static/provider/cloud", true, 15),
        ("argo-cd/manifests", false, 50),
        ("flux2-kustomize-helm-example/apps/production", true, 3),
        ("flux2-kustomize-helm-example/infrastructure/configs", true, 2),
    ] {
        let a = render(&git, path, &r.revision(), &opts()).unwrap_or_else(|e| panic!("{path}: {e}"));
        let b = render(&disk, path, "work tree", &opts()).unwrap();
        assert_eq!(a.kustomized, kustomized, "{path}");
        assert_eq!(a.artifact.digest, b.artifact.digest, "{path}: git and disk agree");
        assert!(a.artifact.objects >= min_objects, "{path}: {} objects", a.artifact.objects);
        let ms = load_manifests(&a.artifact.bytes, &Default::default()).unwrap();
        assert_eq!(ms.len() as u32, a.artifact.objects, "{path}");
        if kustomized {
            assert!(ms.iter().all(|m| m.file == RENDERED_FILE));
        }
    }
    // The production overlay applied its patch from outside the base.
    let prod = render(&git, "flux2-kustomize-helm-example/apps/production", "x", &opts()).unwrap();
    let ms = load_manifests(&prod.artifact.bytes, &Default::default()).unwrap();
    let hr = ms.iter().find(|m| m.kind() == "HelmRelease").unwrap();
    assert!(hr.object["spec"]["values"].is_object(), "{:?}", hr.object["spec"]);

    // A second clone, fetched independently, gives the same digests.
    let clone = tempfile::tempdir().unwrap();
    common::git(clone.path(), &["clone", "-q", up.bare.to_str().unwrap(), "c"]);
    let other = FsTree::new(clone.path().join("c"));
    for path in ["podinfo/kustomize", "argo-cd/manifests"] {
        assert_eq!(
            render(&other, path, "clone", &opts()).unwrap().artifact.digest,
            render(&git, path, "git", &opts()).unwrap().artifact.digest
        );
    }
}

#[test]
fn kustomize_errors_are_clear() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    write(
        root,
        "remote/kustomization.yaml",
        "resources:\n- github.com/kubernetes-sigs/kustomize/examples/helloWorld\n",
    );
    write(root, "escape/kustomization.yaml", "resources:\n- ../../../../etc\n");
    write(root, "broken/kustomization.yaml", "resources:\n- missing.yaml\n");
    write(root, "plain/a.yaml", &configmap("a"));
    write(root, "plain/sub/kustomization.yaml", "resources: [x.yaml]\n");
    let t = FsTree::new(root);
    let err = render(&t, "remote", "r", &opts()).unwrap_err();
    assert!(matches!(err, Error::Kustomize(_)) && err.to_string().contains("remote"), "{err}");
    let err = render(&t, "escape", "r", &opts()).unwrap_err();
    assert!(err.to_string().contains("escapes the repository"), "{err}");
    let err = render(&t, "broken", "r", &opts()).unwrap_err();
    assert!(matches!(err, Error::Kustomize(_)), "{err}");
    assert!(err.to_string().contains("missing.yaml"), "{err}");
    assert!(!err.to_string().contains("convoy-kustomize-"), "temp paths are scrubbed: {err}");
    let err = render(&t, "plain", "r", &opts()).unwrap_err();
    assert!(err.to_string().contains("plain/sub/kustomization.yaml is a kustomization inside"), "{err}");
    let err = render(&t, "nope", "main@sha1:abc", &opts()).unwrap_err();
    assert!(matches!(err, Error::PathNotFound { .. }), "{err}");
    assert_eq!(err.to_string(), "path \"nope\" not found at main@sha1:abc");
    let none = RenderOptions { kustomize: Kustomize::Binary("/nonexistent/kustomize".into()), ..opts() };
    write(root, "ok/kustomization.yaml", "resources: [a.yaml]\n");
    write(root, "ok/a.yaml", &configmap("a"));
    let err = render(&t, "ok", "r", &none).unwrap_err();
    assert!(err.to_string().contains("cannot run"), "{err}");
    let ok = render(&t, "ok", "r", &opts()).unwrap();
    assert_eq!(ok.artifact.objects, 1);
    // A generator reading a dotfile: dotfiles reach kustomize.
    write(root, "gen/kustomization.yaml", "configMapGenerator:\n- name: env\n  envs: [.env]\n");
    write(root, "gen/.env", "A=1\n");
    let g = render(&t, "gen", "r", &opts()).unwrap();
    let ms = load_manifests(&g.artifact.bytes, &Default::default()).unwrap();
    assert_eq!(ms[0].object["data"]["A"], "1");
}
