//! Per-cluster customization end to end (issue 14): four kube-sim clusters
//! in two regions × two envs, real agents, one bundle with `substitute:`,
//! a `ClusterGroup`, `Cluster` documents, layered `targets[]` (vars and a
//! strategic-merge patch) and `convoy vars`.
//! - the four clusters get four different renders (read back with kubectl);
//! - changing one cluster's var re-renders and re-applies that cluster only;
//! - `convoy render --explain` names the layer of every value, line by line;
//! - removing a variable a cluster needs stalls that cluster alone
//!   (SubstitutionFailed, naming variable, file, document and line) while it
//!   keeps its last good generation and the other three stay Ready.

use std::collections::BTreeMap;
use std::path::PathBuf;

use convoy_e2e::cluster::ClusterSpec;
use convoy_e2e::fleet::cell_ready_at;
use convoy_e2e::{Fleet, FleetOptions};
use convoy_proto::v1 as pb;

fn convoy_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_convoy-e2e-convoy"))
}

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: app\n";

const CONFIGMAP: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: app
  namespace: app
data:
  region: "${{ cluster.vars.region }}"
  env: "${{ cluster.labels.env }}"
  owner: "${{ cluster.vars.owner }}"
  greeting: '${{ cluster.vars.greeting | default "hello" }}'
  script: "echo ${HOME} $${{ not.a.variable }}"
"#;

const CONFIG: &str = r#"apiVersion: convoy.dev/v1
kind: ClusterGroup
metadata: {name: europe}
spec:
  selector: {matchLabels: {region: eu}}
---
apiVersion: convoy.dev/v1
kind: Cluster
metadata: {name: prod-owners}
spec:
  selector: {matchLabels: {env: prod}}
  vars: {owner: sre}
---
apiVersion: convoy.dev/v1
kind: Cluster
metadata: {name: eu-dev}
spec:
  name: eu-dev
  vars: {owner: web-team}
---
apiVersion: convoy.dev/v1
kind: Bundle
metadata: {name: app}
spec:
  source: fleet
  path: app
  prune: true
  substitute: {vars: {region: nowhere}}
  targets:
    - clusterSelector: {}
      vars: {region: us-east}
    - clusterGroup: europe
      vars: {region: eu-west}
    - clusterSelector: {matchLabels: {env: prod}}
      patches:
        - patch: |
            apiVersion: v1
            kind: ConfigMap
            metadata: {name: app, namespace: app}
            data: {tier: gold}
"#;

fn cell<'a>(b: &'a pb::BundleView, cluster: &str) -> &'a pb::ClusterBundleStatus {
    b.clusters.iter().find(|c| c.cluster == cluster).unwrap_or_else(|| panic!("no cell {cluster}"))
}

/// Every cell Ready at its own desired generation (variants have their own).
fn ready_everywhere(b: &pb::BundleView) -> bool {
    b.clusters.len() == 4
        && b.clusters.iter().all(|c| c.desired_generation > 0 && cell_ready_at(c, c.desired_generation))
}

async fn configmap(fleet: &Fleet, cluster: &str) -> BTreeMap<String, String> {
    let out = fleet
        .cluster(cluster)
        .kubectl_ok(&["-n", "app", "get", "configmap", "app", "-o", "jsonpath={.data}"])
        .await
        .unwrap();
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{cluster}: {e}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_four_clusters_get_four_renders_and_one_var_change_touches_one_cluster() {
    let opts = FleetOptions {
        clusters: vec![
            ClusterSpec::new("eu-prod", "env=prod,region=eu"),
            ClusterSpec::new("eu-dev", "env=dev,region=eu"),
            ClusterSpec::new("us-prod", "env=prod,region=us"),
            ClusterSpec::new("us-dev", "env=dev,region=us"),
        ],
        files: vec![
            ("app/namespace.yaml".into(), NAMESPACE.as_bytes().to_vec()),
            ("app/configmap.yaml".into(), CONFIGMAP.as_bytes().to_vec()),
        ],
        bundles_yaml: CONFIG.into(),
        ..Default::default()
    };
    let fleet = Fleet::start(opts).await.unwrap();
    // us-dev has no owner from the fleet config: the operator sets it.
    let out = fleet.convoy_ok(&convoy_bin(), &["vars", "us-dev", "owner=qa"]).await.unwrap();
    assert_eq!(out.trim(), "owner=qa");

    let b = fleet.wait_bundle("app", 120, "app Ready on all four clusters", ready_everywhere).await;
    assert_eq!(b.variants, 4, "four distinct effective inputs, four signed variants");
    let want = [
        ("eu-prod", "eu-west", "prod", "sre", Some("gold")),
        ("eu-dev", "eu-west", "dev", "web-team", None),
        ("us-prod", "us-east", "prod", "sre", Some("gold")),
        ("us-dev", "us-east", "dev", "qa", None),
    ];
    let mut renders = std::collections::BTreeSet::new();
    for (c, region, env, owner, tier) in want {
        let data = configmap(&fleet, c).await;
        assert_eq!(data["region"], region, "{c}: {data:?}");
        assert_eq!(data["env"], env, "{c}");
        assert_eq!(data["owner"], owner, "{c}");
        assert_eq!(data["greeting"], "hello", "{c}: the default applies");
        assert_eq!(data.get("tier").map(String::as_str), tier, "{c}: the prod patch");
        // Shell syntax and an escaped expression are left alone.
        assert_eq!(data["script"], "echo ${HOME} ${{ not.a.variable }}", "{c}");
        renders.insert(format!("{data:?}"));
        assert!(!cell(&b, c).variant.is_empty(), "{c} runs a variant");
    }
    assert_eq!(renders.len(), 4, "four different renders");
    // The agents reported their cluster's Kubernetes version and APIs (Hello), stored per cluster.
    let c = fleet.hub_cluster("eu-prod").await.unwrap().cluster.unwrap();
    assert!(c.kube_version.starts_with('v'), "{:?}", c.kube_version);
    assert!(c.vars.is_empty(), "eu-prod's vars come from the fleet config, not convoy vars");
    let c = fleet.hub_cluster("us-dev").await.unwrap().cluster.unwrap();
    assert_eq!(c.vars.get("owner").map(String::as_str), Some("qa"));
    let before: BTreeMap<String, (u64, u64)> = b
        .clusters
        .iter()
        .map(|c| (c.cluster.clone(), (c.desired_generation, c.status.as_ref().unwrap().generation)))
        .collect();

    // One cluster's var changes: that cluster alone gets a new generation.
    fleet.convoy_ok(&convoy_bin(), &["vars", "eu-dev", "greeting=hi"]).await.unwrap();
    let b = fleet
        .wait_bundle("app", 60, "eu-dev re-rendered and Ready", |b| {
            ready_everywhere(b) && cell(b, "eu-dev").desired_generation > before["eu-dev"].0
        })
        .await;
    assert_eq!(configmap(&fleet, "eu-dev").await["greeting"], "hi");
    for c in ["eu-prod", "us-prod", "us-dev"] {
        let cl = cell(&b, c);
        assert_eq!(
            (cl.desired_generation, cl.status.as_ref().unwrap().generation),
            before[c],
            "{c} keeps its generation"
        );
        assert_eq!(configmap(&fleet, c).await["greeting"], "hello", "{c}");
    }
    assert_eq!(b.variants, 4);

    // The explanation, line by line.
    let eu_prod = cell(&b, "eu-prod");
    let out = fleet
        .convoy_ok(&convoy_bin(), &["render", "app", "--cluster", "eu-prod", "--explain"])
        .await
        .unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "bundle app on cluster eu-prod: generation {}, variant {}, artifact {}",
            eu_prod.desired_generation,
            eu_prod.variant,
            eu_prod.status.as_ref().unwrap().digest
        )
    );
    assert_eq!(lines[1], format!("base app {} ({})", b.revision, b.digest));
    assert_eq!(
        &lines[2..],
        &[
            r#"configmap.yaml document 0 $.data.region: ${{ cluster.vars.region }} = "eu-west" <- variable cluster.vars.region from targets[1] (clusterGroup=europe)"#,
            r#"configmap.yaml document 0 $.data.env: ${{ cluster.labels.env }} = "prod" <- variable cluster.labels.env (cluster label)"#,
            r#"configmap.yaml document 0 $.data.owner: ${{ cluster.vars.owner }} = "sre" <- variable cluster.vars.owner from cluster vars"#,
            r#"configmap.yaml document 0 $.data.greeting: ${{ cluster.vars.greeting | default "hello" }} = "hello" <- default of the expression"#,
            "patch ConfigMap/app <- targets[2].patches[0] (clusterSelector=env=prod)",
        ],
        "{out}"
    );
    // And the objects it prints are the ones the cluster runs.
    let yaml = fleet.convoy_ok(&convoy_bin(), &["render", "app", "--cluster", "eu-prod"]).await.unwrap();
    assert!(yaml.contains("region: eu-west") && yaml.contains("tier: gold"), "{yaml}");

    // A variable us-dev needs goes away: us-dev alone is Stalled, keeps what it has.
    fleet.convoy_ok(&convoy_bin(), &["vars", "us-dev", "owner-"]).await.unwrap();
    let b = fleet
        .wait_bundle("app", 60, "us-dev Stalled, the others Ready", |b| {
            cell(b, "us-dev").phase == pb::Phase::Stalled as i32
                && b.clusters
                    .iter()
                    .filter(|c| c.cluster != "us-dev")
                    .all(|c| cell_ready_at(c, c.desired_generation))
        })
        .await;
    let us_dev = cell(&b, "us-dev");
    for part in ["cluster.vars.owner", "configmap.yaml", "document 0", "line 9"] {
        assert!(us_dev.variant_error.contains(part), "names {part}: {}", us_dev.variant_error);
    }
    assert_eq!(us_dev.desired_generation, before["us-dev"].0, "keeps its last good generation");
    assert_eq!(configmap(&fleet, "us-dev").await["owner"], "qa");
    let status = fleet.convoy_ok(&convoy_bin(), &["status", "app"]).await.unwrap();
    assert!(status.contains("SubstitutionFailed"), "{status}");
    let out = fleet.convoy(&convoy_bin(), &["render", "app", "--cluster", "us-dev"]).await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cluster.vars.owner"));
    let events = fleet.events("us-dev").await.unwrap();
    assert!(
        events.iter().any(|e| e.event.as_ref().is_some_and(|e| e.reason == "SubstitutionFailed")),
        "{events:?}"
    );
    fleet.shutdown().await;
}

/// The example fleet (`convoy dev`'s): `web-prod` says where it runs, from
/// the `region` cluster variable its `Cluster` documents set per region label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_example_web_prod_differs_between_prod_eu_and_prod_us() {
    let fleet = Fleet::start(FleetOptions::default()).await.unwrap();
    let views = fleet.wait_converged(120).await;
    let web = views.iter().find(|b| b.name == "web-prod").unwrap();
    assert_eq!(web.variants, 2, "{web:?}");
    for (c, region) in [("prod-eu", "europe-west1"), ("prod-us", "us-east1")] {
        let d = fleet.cluster(c).object("apps", "deployments", "web", "web").unwrap();
        let env = &d["spec"]["template"]["spec"]["containers"][0]["env"];
        assert_eq!(env[0]["name"], "REGION", "{c}: {env}");
        assert_eq!(env[0]["value"], region, "{c}: {env}");
        // One generation per revision: the variants share the base's.
        assert_eq!(cell(web, c).desired_generation, web.generation);
    }
    fleet.shutdown().await;
}
