//! kube-rs against the simulator: discovery, Api<DynamicObject>, server-side
//! apply with conflicts, typed APIs, and `kube::runtime::watcher` (including
//! recovery from 410 Gone and dropped streams).

mod common;

use std::time::Duration;

use common::{Sim, eventually};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::{Discovery, Scope};
use kube::runtime::watcher;
use serde_json::json;

async fn client(s: &Sim) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(&s.kubeconfig).unwrap();
    let cfg =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await.unwrap();
    kube::Client::try_from(cfg).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_and_dynamic_server_side_apply() {
    let s = Sim::start().await;
    let c = client(&s).await;
    let d = Discovery::new(c.clone()).run().await.unwrap();
    let (ar, caps) =
        d.groups().flat_map(|g| g.recommended_resources()).find(|(ar, _)| ar.kind == "Deployment").unwrap();
    assert_eq!(ar.group, "apps");
    assert_eq!(caps.scope, Scope::Namespaced);
    assert!(caps.supports_operation(kube::discovery::verbs::PATCH));
    let api: Api<DynamicObject> = Api::namespaced_with(c.clone(), "default", &ar);
    let obj: DynamicObject = serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "dyn"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
        "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}}}}))
    .unwrap();
    let pp = PatchParams::apply("convoy-agent");
    let applied = api.patch("dyn", &pp, &Patch::Apply(&obj)).await.unwrap();
    let rv1 = applied.metadata.resource_version.clone();
    assert_eq!(applied.metadata.managed_fields.as_ref().unwrap()[0].manager.as_deref(), Some("convoy-agent"));
    // no-op re-apply keeps the resourceVersion (status writes by the simulated controller aside)
    let settled = eventually(20, || async {
        let d = api.get("dyn").await.unwrap();
        (d.data["status"]["availableReplicas"] == 1).then_some(d)
    })
    .await;
    let again = api.patch("dyn", &pp, &Patch::Apply(&obj)).await.unwrap();
    assert_eq!(again.metadata.resource_version, settled.metadata.resource_version);
    assert_ne!(rv1, None);
    // a conflicting apply from another manager is a 409 error
    let mut other = obj.clone();
    other.data["spec"]["replicas"] = json!(5);
    let err = api.patch("dyn", &PatchParams::apply("someone-else"), &Patch::Apply(&other)).await.unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 409);
            assert!(s.message.contains("conflict with \"convoy-agent\": .spec.replicas"), "{}", s.message);
        }
        e => panic!("unexpected {e}"),
    }
    let forced =
        api.patch("dyn", &PatchParams::apply("someone-else").force(), &Patch::Apply(&other)).await.unwrap();
    assert_eq!(forced.data["spec"]["replicas"], 5);
    // dry-run apply
    let mut dry = other.clone();
    dry.data["spec"]["replicas"] = json!(7);
    let mut dpp = PatchParams::apply("someone-else");
    dpp.dry_run = true;
    let d = api.patch("dyn", &dpp, &Patch::Apply(&dry)).await.unwrap();
    assert_eq!(d.data["spec"]["replicas"], 7);
    assert_eq!(api.get("dyn").await.unwrap().data["spec"]["replicas"], 5);
    // typed API
    let deps: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let dep = deps.get("dyn").await.unwrap();
    assert_eq!(dep.spec.replicas, Some(5));
    deps.delete("dyn", &DeleteParams::background()).await.unwrap();
    assert!(deps.get_opt("dyn").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_sees_events_and_recovers_from_gone_and_drops() {
    let s = Sim::start().await;
    let c = client(&s).await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let seen2 = seen.clone();
    let cfg = watcher::Config::default().timeout(5);
    let task = tokio::spawn(async move {
        let mut stream = watcher(cms, cfg).boxed();
        while let Ok(Some(ev)) = stream.try_next().await {
            match ev {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                    seen2.lock().push(format!("apply:{}", o.metadata.name.unwrap_or_default()))
                }
                watcher::Event::Delete(o) => {
                    seen2.lock().push(format!("delete:{}", o.metadata.name.unwrap_or_default()))
                }
                watcher::Event::Init => seen2.lock().push("init".into()),
                watcher::Event::InitDone => seen2.lock().push("init-done".into()),
            }
        }
    });
    eventually(30, || async { seen.lock().iter().any(|e| e == "init-done").then_some(()) }).await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let pp = PatchParams::apply("test");
    let cm = |n: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": n}, "data": {"k": "v"}});
    cms.patch("one", &pp, &Patch::Apply(cm("one"))).await.unwrap();
    eventually(30, || async { seen.lock().iter().any(|e| e == "apply:one").then_some(()) }).await;
    cms.delete("one", &DeleteParams::default()).await.unwrap();
    eventually(30, || async { seen.lock().iter().any(|e| e == "delete:one").then_some(()) }).await;

    // drop every watch stream and forget the history: the watcher re-lists and keeps going
    let inits = seen.lock().iter().filter(|e| *e == "init").count();
    s.sim.compact();
    s.sim.faults().drop_watches();
    cms.patch("two", &pp, &Patch::Apply(cm("two"))).await.unwrap();
    eventually(30, || async { seen.lock().iter().any(|e| e == "apply:two").then_some(()) }).await;
    // after the drop the watcher reconnected (it re-lists when its resourceVersion is gone)
    cms.patch("three", &pp, &Patch::Apply(cm("three"))).await.unwrap();
    eventually(30, || async { seen.lock().iter().any(|e| e == "apply:three").then_some(()) }).await;
    assert!(seen.lock().iter().filter(|e| *e == "init").count() >= inits, "{:?}", seen.lock());
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pagination_and_label_selectors() {
    let s = Sim::start().await;
    let c = client(&s).await;
    let cms: Api<ConfigMap> = Api::namespaced(c, "default");
    for i in 0..7 {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("p{i}"), "labels": {"set": "p"}}}))
                .unwrap();
        cms.create(&Default::default(), &cm).await.unwrap();
    }
    let mut lp = ListParams::default().labels("set=p").limit(3);
    let mut names = Vec::new();
    loop {
        let page = cms.list(&lp).await.unwrap();
        names.extend(page.items.iter().map(|c| c.metadata.name.clone().unwrap()));
        match page.metadata.continue_ {
            Some(t) if !t.is_empty() => lp = lp.continue_token(&t),
            _ => break,
        }
    }
    assert_eq!(names.len(), 7);
    let _ = Duration::from_secs(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_over_tls_with_the_kubeconfig() {
    let s = Sim::with(kube_sim::SimConfig { tls: true, ..Default::default() }).await;
    let c = client(&s).await;
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c);
    let names: Vec<String> = nss
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.contains(&"kube-system".to_string()), "{names:?}");
}
