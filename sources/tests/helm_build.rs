//! Helm bundles built by the running source pipeline from a chart directory
//! in a GitSource, rendered by Helm's engine through the real worker
//! process: values merged in the documented order (chart defaults <
//! valuesFiles < values < valuesFrom), the bundle's kubeVersion in
//! `.Capabilities`, the artifact in `convoy build --chart`'s layout (release
//! record, hooks apart), the chart named for the statement, a `lookup`
//! warning naming its template, a wrong chart version refused, `crds: Skip`
//! leaving `crds/` out, `crds: Create` in the release record (the default
//! not written), a failing template named with its line; and, without
//! Helm's library, a Helm bundle fails `HelmUnavailable` while a plain bundle
//! of the same source builds.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use convoy_core::config::FleetConfig;
use convoy_core::pipeline::BundleBuildState;
use convoy_sources::helmrender::WorkerCommand;
use convoy_sources::{Sources, SourcesConfig};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

type Builds = Arc<std::collections::BTreeMap<String, BundleBuildState>>;

const CHART: &str = "apiVersion: v2\nname: greeter\nversion: 0.3.0\nappVersion: \"1.0\"\n";
const VALUES: &str = "greeting: default\ncolor: default\nsize: default\n";
const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-settings\ndata:\n  greeting: {{ .Values.greeting | quote }}\n  color: {{ .Values.color | quote }}\n  size: {{ .Values.size | quote }}\n  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n  namespace: {{ .Release.Namespace | quote }}\n";
const HOOK: &str = "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {{ .Release.Name }}-migrate\n  annotations:\n    helm.sh/hook: pre-install,pre-upgrade\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: m\n        image: busybox\n";
const PROBE: &str = "{{- $ns := lookup \"v1\" \"Namespace\" \"\" \"kube-system\" }}\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-probe\ndata:\n  found: {{ if $ns }}\"yes\"{{ else }}\"no\"{{ end }}\n";

const CRD: &str = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: widgets.example.com\nspec:\n  group: example.com\n  scope: Namespaced\n  names: {kind: Widget, plural: widgets}\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema: {openAPIV3Schema: {type: object}}\n";
const BROKEN: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  k: {{ .Values.missing.deeper }}\n";

fn chart_files() -> Vec<(&'static str, &'static str)> {
    vec![
        ("charts/greeter/Chart.yaml", CHART),
        ("charts/greeter/values.yaml", VALUES),
        ("charts/greeter/templates/cm.yaml", CM),
        ("charts/greeter/templates/migrate.yaml", HOOK),
        ("charts/greeter/templates/probe.yaml", PROBE),
        ("charts/greeter/crds/widgets.yaml", CRD),
        ("charts/broken/Chart.yaml", "apiVersion: v2\nname: broken\nversion: 0.1.0\n"),
        ("charts/broken/templates/cm.yaml", BROKEN),
        ("envs/prod.yaml", "greeting: from-file\ncolor: from-file\nsize: from-file\n"),
        ("plain/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: plain\ndata:\n  k: v\n"),
    ]
}

fn fleet(url: &str, bundles: &str) -> Arc<FleetConfig> {
    let text = format!(
        "apiVersion: convoy.dev/v1\nkind: GitSource\nmetadata:\n  name: fleet\nspec:\n  url: {url}\n  interval: 1h\n  timeout: 60s\n\
         ---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata:\n  name: plain\nspec:\n  source: fleet\n  path: plain\n  targets:\n  - clusterSelector: {{}}\n{bundles}"
    );
    Arc::new(FleetConfig::parse([("fleet.yaml", text.as_str())]).unwrap())
}

async fn wait_for(
    rx: &mut watch::Receiver<Builds>,
    what: &str,
    mut ok: impl FnMut(&Builds) -> bool,
) -> Builds {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        {
            let v = rx.borrow_and_update().clone();
            if ok(&v) {
                return v;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, rx.changed()).await.is_err() {
            panic!("timed out waiting for {what}: {:?}", rx.borrow());
        }
    }
}

fn done(b: &Builds, bundle: &str) -> bool {
    b.get(bundle).is_some_and(|s| s.artifact.is_some() || s.error.is_some())
}

/// The artifact's files by path, each parsed into its objects.
fn files(bytes: &[u8]) -> std::collections::BTreeMap<String, Vec<Value>> {
    convoy_artifact::unpack(bytes, &Default::default())
        .unwrap()
        .into_iter()
        .map(|f| {
            let objs = convoy_artifact::manifest::parse_file(&f.path, &f.content)
                .unwrap()
                .into_iter()
                .map(|m| m.object)
                .collect();
            (f.path, objs)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_chart_directory_in_a_gitsource_renders_with_merged_values() {
    let up = Upstream::new("fleet", &chart_files());
    let url = up.bare.to_str().unwrap().to_string();
    let hub_files = tempfile::tempdir().unwrap();
    let from = hub_files.path().join("sizes.yaml");
    std::fs::write(&from, "sizes: large\nunused: x\n").unwrap();
    let bundles = format!(
        "---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata:\n  name: web\nspec:\n  source: fleet\n  targets:\n  - clusterSelector: {{}}\n  helm:\n    path: charts/greeter\n    chart: greeter\n    version: 0.3.0\n    releaseName: web\n    namespace: apps\n    kubeVersion: \"1.29\"\n    valuesFiles: [envs/prod.yaml]\n    values:\n      color: inline\n      size: inline\n    valuesFrom:\n    - file: {}\n      key: sizes\n      targetPath: size\n\
         ---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata:\n  name: wrong-version\nspec:\n  source: fleet\n  targets:\n  - clusterSelector: {{}}\n  helm:\n    path: charts/greeter\n    version: 9.9.9\n\
         ---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata:\n  name: no-crds\nspec:\n  source: fleet\n  targets:\n  - clusterSelector: {{}}\n  helm:\n    path: charts/greeter\n    crds: Skip\n\
         ---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata:\n  name: crds-create\nspec:\n  source: fleet\n  targets:\n  - clusterSelector: {{}}\n  helm:\n    path: charts/greeter\n    crds: Create\n\
         ---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata:\n  name: broken\nspec:\n  source: fleet\n  targets:\n  - clusterSelector: {{}}\n  helm:\n    path: charts/broken\n",
        from.display()
    );
    let (_fleet_tx, fleet_rx) = watch::channel(fleet(&url, &bundles));
    let data = tempfile::tempdir().unwrap();
    let mut cfg = SourcesConfig::new(data.path());
    cfg.helm.worker = Some(WorkerCommand {
        program: env!("CARGO_BIN_EXE_convoy-sources-helm-worker").into(),
        args: vec![],
    });
    let shutdown = CancellationToken::new();
    let (sources, task) = Sources::start(cfg, fleet_rx, shutdown.clone()).unwrap();
    let mut builds = sources.builds();
    let b = wait_for(&mut builds, "six builds", |m| {
        ["web", "wrong-version", "plain", "no-crds", "crds-create", "broken"].iter().all(|n| done(m, n))
    })
    .await;

    let web = &b["web"];
    assert!(web.error.is_none(), "{:?}", web.error);
    let art = web.artifact.clone().unwrap();
    let helm = art.helm.clone().expect("a Helm bundle names its chart");
    assert_eq!((helm.chart.as_str(), helm.version.as_str()), ("greeter", "0.3.0"));
    let merged = json!({"greeting": "from-file", "color": "inline", "size": "large"});
    assert_eq!(helm.values_digest, convoy_helm::values::values_digest(&merged));
    assert!(helm.chart_digest.starts_with("sha256:"), "{}", helm.chart_digest);
    assert_eq!(helm.warnings.len(), 1, "{:?}", helm.warnings);
    assert!(
        helm.warnings[0].contains("greeter/templates/probe.yaml") && helm.warnings[0].contains("lookup"),
        "{:?}",
        helm.warnings
    );

    let fs = files(&sources.store().read(&art.digest).unwrap());
    assert_eq!(
        fs.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "helm/crds/greeter/crds/widgets.yaml",
            "helm/hooks/greeter/templates/migrate.yaml",
            "helm/release.yaml",
            "helm/templates/greeter/templates/cm.yaml",
            "helm/templates/greeter/templates/probe.yaml",
        ]
    );
    let cm = &fs["helm/templates/greeter/templates/cm.yaml"][0];
    assert_eq!(cm["metadata"]["name"], "web-settings");
    assert_eq!(
        cm["data"],
        json!({"greeting": "from-file", "color": "inline", "size": "large", "kube": "v1.29.0", "namespace": "apps"}),
        "chart defaults < valuesFiles < values < valuesFrom; the bundle's kubeVersion"
    );
    let hook = &fs["helm/hooks/greeter/templates/migrate.yaml"][0];
    assert_eq!(hook["metadata"]["annotations"]["helm.sh/hook"], "pre-install,pre-upgrade");
    let record = &fs["helm/release.yaml"][0];
    assert_eq!(
        (record["apiVersion"].as_str(), record["kind"].as_str()),
        (Some("convoy.dev/v1"), Some("HelmRelease"))
    );
    let spec = convoy_helm::release::ReleaseSpec::from_object(record).unwrap();
    assert_eq!((spec.name.as_str(), spec.namespace.as_str()), ("web", "apps"));
    assert_eq!(spec.config, merged, "the record holds the merged user values (what helm get values shows)");
    assert_eq!(spec.values_digest, helm.values_digest);
    // The default CRD policy is not written: default records keep their bytes.
    assert!(record["spec"].get("crds").is_none(), "{record}");
    assert_eq!(spec.crds, convoy_helm::release::CrdPolicy::CreateReplace);

    let err = b["wrong-version"].error.clone().expect("a wrong chart version fails the build");
    assert_eq!(err.reason, "InvalidConfig");
    assert!(err.message.contains("9.9.9") && err.message.contains("0.3.0"), "{}", err.message);
    assert!(b["plain"].artifact.as_ref().is_some_and(|a| a.helm.is_none()));

    // crds: Skip leaves the chart's crds/ out of the artifact.
    let no_crds = b["no-crds"].artifact.clone().expect("no-crds builds");
    let fs = files(&sources.store().read(&no_crds.digest).unwrap());
    assert!(
        fs.contains_key("helm/release.yaml") && !fs.keys().any(|k| k.starts_with("helm/crds/")),
        "{fs:?}"
    );
    // crds: Create keeps them and tells the agent in the release record.
    let create = b["crds-create"].artifact.clone().expect("crds-create builds");
    let fs = files(&sources.store().read(&create.digest).unwrap());
    assert!(fs.contains_key("helm/crds/greeter/crds/widgets.yaml"), "{fs:?}");
    assert_eq!(fs["helm/release.yaml"][0]["spec"]["crds"], "Create");
    let spec = convoy_helm::release::ReleaseSpec::from_object(&fs["helm/release.yaml"][0]).unwrap();
    assert_eq!(spec.crds, convoy_helm::release::CrdPolicy::Create);

    // A template that fails names the template and the line; nothing is built.
    let err = b["broken"].error.clone().expect("a broken template fails the build");
    assert_eq!(err.reason, "RenderFailed");
    assert!(
        err.message.contains("broken/templates/cm.yaml") && err.message.contains("line 6"),
        "{}",
        err.message
    );
    assert!(b["broken"].artifact.is_none());

    // A Helm bundle has no render key (its hub-side valuesFrom files are not
    // in one): a reconcile renders it again and picks up a changed file.
    std::fs::write(&from, "sizes: huge\n").unwrap();
    sources.reconcile("fleet").unwrap();
    let b = wait_for(&mut builds, "web rebuilt with the new valuesFrom", |m| {
        m.get("web").and_then(|s| s.artifact.as_ref()).is_some_and(|a| a.digest != art.digest)
    })
    .await;
    let again = b["web"].artifact.clone().unwrap();
    let fs = files(&sources.store().read(&again.digest).unwrap());
    assert_eq!(fs["helm/templates/greeter/templates/cm.yaml"][0]["data"]["size"], "huge");

    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_without_helm_a_helm_bundle_is_helm_unavailable_and_plain_bundles_build() {
    let up = Upstream::new("fleet", &chart_files());
    let url = up.bare.to_str().unwrap().to_string();
    let bundles = "---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata:\n  name: web\nspec:\n  source: fleet\n  targets:\n  - clusterSelector: {}\n  helm:\n    path: charts/greeter\n";
    let (_fleet_tx, fleet_rx) = watch::channel(fleet(&url, bundles));
    let data = tempfile::tempdir().unwrap();
    let mut cfg = SourcesConfig::new(data.path());
    let nowhere = data.path().join("no-such-libhelm_c.so");
    cfg.helm.library = Some(nowhere.clone());
    let shutdown = CancellationToken::new();
    let (sources, task) = Sources::start(cfg, fleet_rx, shutdown.clone()).unwrap();
    let mut builds = sources.builds();
    let b = wait_for(&mut builds, "both builds", |m| done(m, "web") && done(m, "plain")).await;
    let err = b["web"].error.clone().expect("the Helm bundle cannot render");
    assert_eq!(err.reason, "HelmUnavailable");
    assert!(err.message.contains(&nowhere.display().to_string()), "{}", err.message);
    assert_eq!(b["web"].phase(), convoy_core::status::Phase::Stalled);
    let plain = b["plain"].artifact.clone().expect("the plain bundle is unaffected");
    assert!(b["plain"].error.is_none());
    assert!(sources.store().path(&plain.digest).is_some());
    shutdown.cancel();
    task.await.unwrap();
}
