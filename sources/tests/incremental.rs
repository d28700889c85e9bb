//! Incremental rendering through the running pipeline, with a real git
//! repository and kustomize: a commit re-renders exactly the bundles whose
//! inputs it touched, counted by the pipeline's render counters.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use convoy_core::config::FleetConfig;
use convoy_core::pipeline::BundleBuildState;
use convoy_sources::{Sources, SourcesConfig};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

type Builds = Arc<std::collections::BTreeMap<String, BundleBuildState>>;

const BUNDLES: [(&str, &str); 3] = [("web", "apps/web/prod"), ("api", "apps/api"), ("plain", "plain")];

fn fleet(url: &str) -> Arc<FleetConfig> {
    let mut text = format!(
        "apiVersion: convoy.dev/v1\nkind: GitSource\nmetadata:\n  name: fleet\nspec:\n  url: {url}\n  interval: 200ms\n  timeout: 30s\n"
    );
    for (name, path) in BUNDLES {
        text.push_str(&format!(
            "---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata:\n  name: {name}\nspec:\n  source: fleet\n  path: {path}\n  targets:\n  - clusterSelector: {{}}\n"
        ));
    }
    Arc::new(FleetConfig::parse([("fleet.yaml", text.as_str())]).unwrap())
}

/// Wait until every bundle is built (or failed) at `commit`.
async fn at_commit(rx: &mut watch::Receiver<Builds>, commit: &str) -> Builds {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        {
            let b = rx.borrow_and_update().clone();
            let done = BUNDLES.iter().all(|(n, _)| {
                b.get(*n).is_some_and(|s| match (&s.error, &s.artifact) {
                    (Some(e), _) => e.revision.as_deref().is_some_and(|r| r.ends_with(commit)),
                    (None, Some(a)) => a.revision.ends_with(commit),
                    (None, None) => false,
                })
            });
            if done {
                return b;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, rx.changed()).await.is_err() {
            panic!("timed out waiting for every bundle at {commit}: {:?}", rx.borrow());
        }
    }
}

fn digests(b: &Builds) -> Vec<String> {
    BUNDLES
        .iter()
        .map(|(n, _)| b[*n].artifact.as_ref().map(|a| a.digest.clone()).unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_commit_renders_only_the_bundles_whose_inputs_changed() {
    let up = Upstream::new(
        "fleet",
        &[
            ("apps/web/base/kustomization.yaml", "resources: [cm.yaml]\n"),
            ("apps/web/base/cm.yaml", &configmap("web")),
            (
                "apps/web/prod/kustomization.yaml",
                "resources: [../base]\nnamePrefix: prod-\nconfigMapGenerator:\n- name: gen\n  files: [app.conf]\n",
            ),
            ("apps/web/prod/app.conf", "a=1\n"),
            (
                "components/label/kustomization.yaml",
                "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\ncommonLabels:\n  tier: web\n",
            ),
            ("apps/api/kustomization.yaml", "resources: [cm.yaml]\n"),
            ("apps/api/cm.yaml", &configmap("api")),
            ("plain/cm.yaml", &configmap("plain")),
            ("README.md", "fleet\n"),
        ],
    );
    let url = up.bare.to_str().unwrap().to_string();
    let (_fleet_tx, fleet_rx) = watch::channel(fleet(&url));
    let data = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let (sources, task) =
        Sources::start(SourcesConfig::new(data.path()), fleet_rx, shutdown.clone()).unwrap();
    let stats = sources.render_stats();
    let mut builds = sources.builds();

    let b1 = at_commit(&mut builds, &up.head()).await;
    assert_eq!((stats.renders(), stats.reused()), (3, 0), "first build renders every bundle");
    assert!(BUNDLES.iter().all(|(n, _)| b1[*n].error.is_none()), "{b1:?}");
    let d1 = digests(&b1);

    // A file outside every dependency: no render, same artifacts, new revision.
    let c = up.commit(&[("README.md", "fleet, again\n")], "docs");
    up.push(&["origin", "main"]);
    let b = at_commit(&mut builds, &c).await;
    assert_eq!((stats.renders(), stats.reused()), (3, 3));
    assert_eq!(digests(&b), d1);
    assert_eq!(
        b["web"].artifact.as_ref().unwrap().built_unix_ms,
        b1["web"].artifact.as_ref().unwrap().built_unix_ms
    );

    // A change in the base: only the overlay on it renders.
    let c = up.commit(&[("apps/web/base/cm.yaml", &configmap("web2"))], "base");
    up.push(&["origin", "main"]);
    let b = at_commit(&mut builds, &c).await;
    assert_eq!((stats.renders(), stats.reused()), (4, 5));
    let d = digests(&b);
    assert_ne!(d[0], d1[0]);
    assert_eq!(d[1..], d1[1..]);

    // Renaming the base (and pointing the overlay at the new name) renders it.
    let text = std::fs::read_to_string(up.work.join("apps/web/base/cm.yaml")).unwrap();
    let c = up.commit(
        &[
            ("apps/web/base/kustomization.yaml", ""),
            ("apps/web/base/cm.yaml", ""),
            ("apps/web/common/kustomization.yaml", "resources: [cm.yaml]\n"),
            ("apps/web/common/cm.yaml", &text),
            (
                "apps/web/prod/kustomization.yaml",
                "resources: [../common]\nnamePrefix: prod-\nconfigMapGenerator:\n- name: gen\n  files: [app.conf]\n",
            ),
        ],
        "rename base",
    );
    up.push(&["origin", "main"]);
    let b = at_commit(&mut builds, &c).await;
    assert_eq!((stats.renders(), stats.reused()), (5, 7));
    assert_eq!(digests(&b)[0], d[0], "same content after the rename");

    // A file a generator reads.
    let c = up.commit(&[("apps/web/prod/app.conf", "a=2\n")], "generator input");
    up.push(&["origin", "main"]);
    let b = at_commit(&mut builds, &c).await;
    assert_eq!((stats.renders(), stats.reused()), (6, 9));
    let d2 = digests(&b);
    assert_ne!(d2[0], d[0]);

    // Adding a component renders; then changing that component renders again.
    let c = up.commit(
        &[(
            "apps/web/prod/kustomization.yaml",
            "resources: [../common]\ncomponents: [../../../components/label]\nnamePrefix: prod-\nconfigMapGenerator:\n- name: gen\n  files: [app.conf]\n",
        )],
        "component",
    );
    up.push(&["origin", "main"]);
    let b = at_commit(&mut builds, &c).await;
    assert_eq!((stats.renders(), stats.reused()), (7, 11));
    assert!(b["web"].error.is_none(), "{:?}", b["web"].error);
    assert_ne!(digests(&b)[0], d2[0], "the component's label is in the output");
    let c = up.commit(
        &[(
            "components/label/kustomization.yaml",
            "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\ncommonLabels:\n  tier: web2\n",
        )],
        "component change",
    );
    up.push(&["origin", "main"]);
    at_commit(&mut builds, &c).await;
    assert_eq!((stats.renders(), stats.reused()), (8, 13));

    // A patch file: referencing it renders, and so does changing it.
    let patch =
        |v: &str| format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web2\ndata:\n  k: {v}\n");
    let c = up.commit(
        &[
            (
                "apps/web/prod/kustomization.yaml",
                "resources: [../common]\ncomponents: [../../../components/label]\nnamePrefix: prod-\nconfigMapGenerator:\n- name: gen\n  files: [app.conf]\npatches:\n- path: patch.yaml\n",
            ),
            ("apps/web/prod/patch.yaml", &patch("patched")),
        ],
        "patch",
    );
    up.push(&["origin", "main"]);
    let b = at_commit(&mut builds, &c).await;
    assert_eq!((stats.renders(), stats.reused()), (9, 15));
    assert!(b["web"].error.is_none(), "{:?}", b["web"].error);
    let d3 = digests(&b);
    let c = up.commit(&[("apps/web/prod/patch.yaml", &patch("patched-again"))], "patch change");
    up.push(&["origin", "main"]);
    let b = at_commit(&mut builds, &c).await;
    assert_eq!((stats.renders(), stats.reused()), (10, 17));
    assert!(b["web"].error.is_none(), "{:?}", b["web"].error);
    assert_ne!(digests(&b)[0], d3[0], "the patched value is in the output");
    assert_eq!(digests(&b)[1..], d3[1..]);
    assert_eq!(stats.whole_tree(), 0);

    // A remote resource: the bundle depends on the whole tree (and fails to
    // build, keeping its last good artifact); any commit renders it again.
    let c = up.commit(
        &[("apps/api/kustomization.yaml", "resources: [cm.yaml, https://example.com/x.yaml]\n")],
        "remote",
    );
    up.push(&["origin", "main"]);
    let b = at_commit(&mut builds, &c).await;
    assert_eq!(b["api"].error.as_ref().unwrap().reason, "KustomizeFailed");
    assert_eq!((stats.renders(), stats.reused()), (11, 19));
    assert!(stats.whole_tree() >= 1);
    let c = up.commit(&[("README.md", "fleet, third\n")], "docs again");
    up.push(&["origin", "main"]);
    at_commit(&mut builds, &c).await;
    assert_eq!(
        (stats.renders(), stats.reused()),
        (12, 21),
        "a failed (whole-tree) bundle renders on any commit"
    );

    // A reconcile fetches and retries the failed bundle only: the others'
    // inputs did not change, and rendering is deterministic.
    sources.reconcile("fleet").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while stats.renders() + stats.reused() < 36 {
        assert!(Instant::now() < deadline, "reconcile did not build: {} {}", stats.renders(), stats.reused());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!((stats.renders(), stats.reused()), (13, 23));

    // Fixing the failed bundle renders it; its last good artifact was kept meanwhile.
    let c =
        up.commit(&[("apps/api/kustomization.yaml", "resources: [cm.yaml]\nnamePrefix: fixed-\n")], "fix");
    up.push(&["origin", "main"]);
    let b = at_commit(&mut builds, &c).await;
    assert!(b["api"].error.is_none());
    assert_ne!(digests(&b)[1], d1[1]);
    assert_eq!((stats.renders(), stats.reused()), (14, 25));

    shutdown.cancel();
    task.await.unwrap();
}
