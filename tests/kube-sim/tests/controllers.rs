//! Simulated controllers (readiness after a delay, unpullable images, jobs,
//! PVCs, load balancers, pods), fault injection and many instances per process.

mod common;

use std::time::{Duration, Instant};

use common::{Sim, eventually};
use kube_sim::{FaultConfig, SimConfig};
use serde_json::{Value, json};

fn workload(kind: &str, name: &str, image: &str, annotations: Value) -> Value {
    let group = if kind == "Job" { "batch/v1" } else { "apps/v1" };
    let mut spec = json!({"selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}, "annotations": annotations}, "spec": {"containers": [{"name": "c", "image": image}]}}});
    if kind == "Job" {
        spec.as_object_mut().unwrap().remove("selector");
        spec["template"]["spec"]["restartPolicy"] = json!("Never");
    }
    if kind == "Deployment" {
        spec["replicas"] = json!(2);
    }
    json!({"apiVersion": group, "kind": kind, "metadata": {"name": name}, "spec": spec})
}

fn cond<'a>(v: &'a Value, t: &str) -> Option<&'a Value> {
    v["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_become_ready_after_the_delay() {
    let delay = Duration::from_millis(700);
    let s = Sim::with(SimConfig { readiness_delay: delay, ..Default::default() }).await;
    let t0 = Instant::now();
    for (kind, plural) in [
        ("Deployment", "deployments"),
        ("StatefulSet", "statefulsets"),
        ("DaemonSet", "daemonsets"),
        ("ReplicaSet", "replicasets"),
    ] {
        let (c, v) = s
            .apply(
                &format!("/apis/apps/v1/namespaces/default/{plural}/w"),
                "t",
                false,
                workload(kind, "w", "nginx:1", json!({})),
            )
            .await;
        assert_eq!(c, 201, "{kind}: {v}");
    }
    let (c, _) = s
        .apply(
            "/apis/batch/v1/namespaces/default/jobs/j",
            "t",
            false,
            workload("Job", "j", "busybox:1", json!({})),
        )
        .await;
    assert_eq!(c, 201);
    let (c, _) = s
        .apply(
            "/api/v1/namespaces/default/persistentvolumeclaims/data",
            "t",
            false,
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
        )
        .await;
    assert_eq!(c, 201);
    let (c, _) = s
        .apply(
            "/api/v1/namespaces/default/services/lb",
            "t",
            false,
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb"},
            "spec": {"type": "LoadBalancer", "selector": {"app": "w"}, "ports": [{"port": 80}]}}),
        )
        .await;
    assert_eq!(c, 201);
    let (c, _) = s.apply("/api/v1/namespaces/default/pods/p", "t", false, json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}})).await;
    assert_eq!(c, 201);

    // before the delay: progressing but not available
    let d = eventually(20, || async {
        let (_, d) = s.get("/apis/apps/v1/namespaces/default/deployments/w").await;
        (d["status"]["observedGeneration"] == 1).then_some(d)
    })
    .await;
    if t0.elapsed() < delay {
        assert_eq!(cond(&d, "Available").unwrap()["status"], "False", "{d}");
        assert_eq!(cond(&d, "Available").unwrap()["reason"], "MinimumReplicasUnavailable");
        let reason = cond(&d, "Progressing").unwrap()["reason"].as_str().unwrap().to_string();
        assert!(reason == "NewReplicaSetCreated" || reason == "ReplicaSetUpdated", "{reason}");
    }
    // after: ready, with the real controllers' reasons
    let d = eventually(30, || async {
        let (_, d) = s.get("/apis/apps/v1/namespaces/default/deployments/w").await;
        (d["status"]["availableReplicas"] == 2).then_some(d)
    })
    .await;
    assert!(t0.elapsed() >= delay);
    assert_eq!(d["status"]["readyReplicas"], 2);
    assert_eq!(d["status"]["updatedReplicas"], 2);
    assert_eq!(cond(&d, "Available").unwrap()["reason"], "MinimumReplicasAvailable");
    let p = cond(&d, "Progressing").unwrap();
    assert_eq!(p["reason"], "NewReplicaSetAvailable");
    assert!(p["message"].as_str().unwrap().starts_with("ReplicaSet \"w-"), "{p}");
    let sts = eventually(30, || async {
        let (_, v) = s.get("/apis/apps/v1/namespaces/default/statefulsets/w").await;
        (v["status"]["readyReplicas"] == 1).then_some(v)
    })
    .await;
    assert_eq!(sts["status"]["currentRevision"], sts["status"]["updateRevision"]);
    eventually(30, || async {
        let (_, v) = s.get("/apis/apps/v1/namespaces/default/daemonsets/w").await;
        (v["status"]["numberReady"] == 1 && v["status"]["desiredNumberScheduled"] == 1).then_some(())
    })
    .await;
    eventually(30, || async {
        let (_, v) = s.get("/apis/apps/v1/namespaces/default/replicasets/w").await;
        (v["status"]["readyReplicas"] == 1).then_some(())
    })
    .await;
    let job = eventually(30, || async {
        let (_, v) = s.get("/apis/batch/v1/namespaces/default/jobs/j").await;
        (cond(&v, "Complete").is_some_and(|c| c["status"] == "True")).then_some(v)
    })
    .await;
    assert_eq!(job["status"]["succeeded"], 1);
    assert_eq!(
        job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
        job["metadata"]["uid"]
    );
    let pvc = eventually(30, || async {
        let (_, v) = s.get("/api/v1/namespaces/default/persistentvolumeclaims/data").await;
        (v["status"]["phase"] == "Bound").then_some(v)
    })
    .await;
    assert_eq!(pvc["status"]["capacity"]["storage"], "1Gi");
    assert!(pvc["spec"]["volumeName"].as_str().unwrap().starts_with("pvc-"));
    eventually(30, || async {
        let (_, v) = s.get("/api/v1/namespaces/default/services/lb").await;
        v["status"]["loadBalancer"]["ingress"][0]["ip"].as_str().map(|_| ())
    })
    .await;
    let (_, svc) = s.get("/api/v1/namespaces/default/services/lb").await;
    assert!(svc["spec"]["clusterIP"].as_str().unwrap().starts_with("10.96."));
    assert!(svc["spec"]["ports"][0]["nodePort"].as_i64().unwrap() >= 30000);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);
    eventually(30, || async {
        let (_, v) = s.get("/api/v1/namespaces/default/pods/p").await;
        (v["status"]["phase"] == "Running").then_some(())
    })
    .await;
    // Pods behind the Deployment: owned by a ReplicaSet NAME-HASH owned by the Deployment
    let (_, pods) = s.get("/api/v1/namespaces/default/pods?labelSelector=app%3Dw").await;
    let pods = pods["items"].as_array().unwrap();
    let rs_pods: Vec<&Value> =
        pods.iter().filter(|p| p["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet").collect();
    assert!(rs_pods.len() >= 2, "{pods:?}");
    let (_, rsl) = s.get("/apis/apps/v1/namespaces/default/replicasets").await;
    let owned_rs = rsl["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["metadata"]["ownerReferences"][0]["kind"] == "Deployment")
        .unwrap()
        .clone();
    let hash = owned_rs["metadata"]["labels"]["pod-template-hash"].as_str().unwrap().to_string();
    assert_eq!(owned_rs["metadata"]["name"], format!("w-{hash}"));
    assert_eq!(owned_rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "1");
    assert!(
        rs_pods.iter().filter(|p| p["metadata"]["labels"]["pod-template-hash"] == hash.as_str()).count() == 2
    );
    assert!(pods.iter().any(|p| p["metadata"]["name"] == "w-0"), "StatefulSet pod w-0");
    assert_eq!(d["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "1");
    // a new template rolls out through a second ReplicaSet; the old one goes to zero
    let mut w2 = workload("Deployment", "w", "nginx:2", json!({}));
    w2["spec"]["replicas"] = json!(2);
    s.apply("/apis/apps/v1/namespaces/default/deployments/w", "t", false, w2).await;
    eventually(30, || async {
        let (_, d) = s.get("/apis/apps/v1/namespaces/default/deployments/w").await;
        (d["status"]["observedGeneration"] == 2
            && d["status"]["updatedReplicas"] == 2
            && d["status"]["availableReplicas"] == 2
            && d["status"]["replicas"] == 2
            && cond(&d, "Progressing").is_some_and(|c| c["reason"] == "NewReplicaSetAvailable"))
        .then_some(())
    })
    .await;
    let (_, old) = s.get(&format!("/apis/apps/v1/namespaces/default/replicasets/w-{hash}")).await;
    assert_eq!(old["spec"]["replicas"], 0);
    // deleting the Deployment collects its ReplicaSets and Pods
    s.req("DELETE", "/apis/apps/v1/namespaces/default/deployments/w", "", None).await;
    eventually(30, || async {
        let (_, pods) = s.get("/api/v1/namespaces/default/pods?labelSelector=app%3Dw").await;
        let left = pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| {
                p["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
                    && p["metadata"]["ownerReferences"][0]["name"].as_str().unwrap().starts_with("w-")
                    && p["metadata"]["ownerReferences"][0]["name"] != "w"
            })
            .count();
        (left == 0).then_some(())
    })
    .await;
    // the status writes are the controller's, under the status subresource
    let mf = d["metadata"]["managedFields"].as_array().unwrap();
    assert!(mf.iter().any(|e| e["manager"] == "kube-controller-manager" && e["subresource"] == "status"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpullable_images_never_become_ready() {
    let s = Sim::start().await;
    let mut d = workload("Deployment", "bad", "registry.example/app:does-not-exist", json!({}));
    d["spec"]["progressDeadlineSeconds"] = json!(1);
    let (c, _) = s.apply("/apis/apps/v1/namespaces/default/deployments/bad", "t", false, d).await;
    assert_eq!(c, 201);
    let (c, _) = s
        .apply(
            "/apis/apps/v1/namespaces/default/statefulsets/ann",
            "t",
            false,
            workload("StatefulSet", "ann", "nginx:1", json!({"kube-sim.convoy.dev/unpullable": "true"})),
        )
        .await;
    assert_eq!(c, 201);
    let (c, _) = s
        .apply("/api/v1/namespaces/default/pods/bp", "t", false, json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bp"}, "spec": {"containers": [{"name": "c", "image": "nginx:does-not-exist"}]}}))
        .await;
    assert_eq!(c, 201);
    let d = eventually(30, || async {
        let (_, v) = s.get("/apis/apps/v1/namespaces/default/deployments/bad").await;
        cond(&v, "Progressing").is_some_and(|c| c["reason"] == "ProgressDeadlineExceeded").then_some(v)
    })
    .await;
    assert_eq!(cond(&d, "Progressing").unwrap()["status"], "False");
    assert_eq!(cond(&d, "Available").unwrap()["status"], "False");
    assert_eq!(d["status"]["unavailableReplicas"], 2);
    assert!(d["status"].get("availableReplicas").is_none());
    let (_, sts) = s.get("/apis/apps/v1/namespaces/default/statefulsets/ann").await;
    assert_eq!(sts["status"]["observedGeneration"], 1);
    assert_ne!(sts["status"]["readyReplicas"], 1);
    let pod = eventually(30, || async {
        let (_, v) = s.get("/api/v1/namespaces/default/pods/bp").await;
        (v["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ImagePullBackOff").then_some(v)
    })
    .await;
    assert_eq!(pod["status"]["phase"], "Pending");
    // the Deployment's own Pods say why
    let (_, pods) = s.get("/api/v1/namespaces/default/pods?labelSelector=app%3Dbad").await;
    let pods = pods["items"].as_array().unwrap().clone();
    assert_eq!(pods.len(), 2);
    for p in &pods {
        let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
        assert_eq!(w["reason"], "ImagePullBackOff", "{p}");
        assert_eq!(w["message"], "Back-off pulling image \"registry.example/app:does-not-exist\"");
    }
    // the kubelet's events say so too
    let pod_name = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    let evs = eventually(30, || {
        let path =
            format!("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3D{pod_name}");
        let s = &s;
        async move {
            let (_, l) = s.get(&path).await;
            let items = l["items"].as_array().cloned().unwrap_or_default();
            items.iter().any(|e| e["message"] == "Error: ImagePullBackOff").then_some(items)
        }
    })
    .await;
    assert!(
        evs.iter().any(|e| e["type"] == "Warning"
            && e["reason"] == "Failed"
            && e["message"] == "Error: ErrImagePull"),
        "{evs:?}"
    );
    assert!(
        evs.iter().all(|e| e["involvedObject"]["kind"] == "Pod" && e["source"]["component"] == "kubelet"
            || e["reason"] == "Scheduled")
    );
    let (_, l) = s.get("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dbad,involvedObject.kind%3DDeployment").await;
    assert_eq!(l["items"][0]["reason"], "ScalingReplicaSet", "{l}");
    // an image called just does-not-exist is unpullable too
    let (c, _) = s
        .apply("/api/v1/namespaces/default/pods/bare", "t", false, json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare"}, "spec": {"containers": [{"name": "c", "image": "does-not-exist"}]}}))
        .await;
    assert_eq!(c, 201);
    eventually(30, || async {
        let (_, v) = s.get("/api/v1/namespaces/default/pods/bare").await;
        (v["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ImagePullBackOff")
            .then_some(())
    })
    .await;

    // a good rollout that is later broken: stays Available on the old pods, Progressing fails
    let mut good = workload("Deployment", "roll", "nginx:1", json!({}));
    good["spec"]["progressDeadlineSeconds"] = json!(1);
    s.apply("/apis/apps/v1/namespaces/default/deployments/roll", "t", false, good.clone()).await;
    eventually(30, || async {
        let (_, v) = s.get("/apis/apps/v1/namespaces/default/deployments/roll").await;
        (v["status"]["availableReplicas"] == 2).then_some(())
    })
    .await;
    good["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:does-not-exist");
    s.apply("/apis/apps/v1/namespaces/default/deployments/roll", "t", false, good).await;
    let v = eventually(30, || async {
        let (_, v) = s.get("/apis/apps/v1/namespaces/default/deployments/roll").await;
        cond(&v, "Progressing").is_some_and(|c| c["reason"] == "ProgressDeadlineExceeded").then_some(v)
    })
    .await;
    assert_eq!(cond(&v, "Available").unwrap()["status"], "True");
    assert_eq!(v["status"]["observedGeneration"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_errors_latency_pause() {
    let s = Sim::start().await;
    let path = "/api/v1/namespaces/default/configmaps";
    // every request fails with 500, then 429
    s.sim.faults().set_error_rate(1.0);
    let (c, e) = s.get(path).await;
    assert_eq!(c, 500);
    assert_eq!(e["reason"], "InternalError");
    s.sim.faults().set_error_rate(0.0);
    s.sim.faults().set_throttle_rate(1.0);
    let resp = s.http.get(s.url(path)).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    s.sim.faults().clear();
    assert_eq!(s.get(path).await.0, 200);
    assert!(s.sim.stats().injected_errors >= 2);
    // a rate of 0.5 fails some requests and not others
    s.sim.faults().set_error_rate(0.5);
    let mut codes = std::collections::HashSet::new();
    for _ in 0..60 {
        codes.insert(s.get(path).await.0);
    }
    assert!(codes.contains(&500) && codes.contains(&200), "{codes:?}");
    s.sim.faults().clear();
    // the next N requests fail, whatever the rates; then they are served
    s.sim.faults().fail_next(2);
    assert_eq!((s.get(path).await.0, s.get(path).await.0, s.get(path).await.0), (500, 500, 200));
    // latency
    s.sim.faults().set_latency(Duration::from_millis(300));
    let t = Instant::now();
    assert_eq!(s.get(path).await.0, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    s.sim.faults().clear();
    // pause: a request waits until resumed
    s.sim.faults().pause();
    let url = s.url(path);
    let http = s.http.clone();
    let pending = tokio::spawn(async move { http.get(url).send().await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "request answered while paused");
    s.sim.faults().resume();
    assert_eq!(pending.await.unwrap().unwrap(), 200);
    // the control endpoint
    let (c, v) = s
        .req("PUT", "/_sim/faults", "application/json", Some(json!({"errorRate": 1.0, "verbs": ["create"]})))
        .await;
    assert_eq!(c, 200, "{v}");
    assert_eq!(
        s.sim.faults().get(),
        FaultConfig { error_rate: 1.0, verbs: vec!["create".into()], ..Default::default() }
    );
    assert_eq!(s.get(path).await.0, 200, "only creates fail");
    let (c, _) = s
        .req(
            "POST",
            path,
            "application/json",
            Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "f"}})),
        )
        .await;
    assert_eq!(c, 500);
    let (c, _) = s.req("PUT", "/_sim/faults", "application/json", Some(json!({}))).await;
    assert_eq!(c, 200);
    let (c, st) = s.get("/_sim/stats").await;
    assert_eq!(c, 200);
    assert!(st["requests"]["list"].as_u64().unwrap() > 0, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_at_start_and_many_instances() {
    let sims = futures::future::join_all((0..3).map(|_| Sim::start())).await;
    let ports: std::collections::HashSet<u16> = sims.iter().map(|s| s.sim.addr().port()).collect();
    assert_eq!(ports.len(), 3);
    let (c, _) = sims[0]
        .req(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "only-here"}})),
        )
        .await;
    assert_eq!(c, 201);
    assert_eq!(sims[1].get("/api/v1/namespaces/default/configmaps/only-here").await.0, 404);
    let paused = Sim::with(SimConfig {
        faults: FaultConfig { throttle_rate: 1.0, ..Default::default() },
        ..Default::default()
    })
    .await;
    assert_eq!(paused.get("/api/v1/namespaces").await.0, 429);
    for s in sims {
        s.sim.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpa_keeps_replicas_within_bounds_and_owns_them() {
    let s = Sim::start().await;
    let mut d = workload("Deployment", "web", "nginx:1", json!({}));
    d["spec"].as_object_mut().unwrap().remove("replicas");
    let (c, _) = s.apply("/apis/apps/v1/namespaces/default/deployments/web", "agent", false, d.clone()).await;
    assert_eq!(c, 201);
    let hpa = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "web"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}, "minReplicas": 3, "maxReplicas": 5}});
    let (c, _) = s
        .apply("/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/web", "agent", false, hpa)
        .await;
    assert_eq!(c, 201);
    let dep = eventually(30, || async {
        let (_, v) = s.get("/apis/apps/v1/namespaces/default/deployments/web").await;
        (v["spec"]["replicas"] == 3).then_some(v)
    })
    .await;
    let owner = dep["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["manager"] == "kube-controller-manager" && e["subresource"].is_null())
        .cloned();
    assert!(owner.is_some_and(|o| o["fieldsV1"]["f:spec"]["f:replicas"].is_object()));
    let h = eventually(30, || async {
        let (_, v) = s.get("/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/web").await;
        (v["status"]["desiredReplicas"] == 3).then_some(v)
    })
    .await;
    assert_eq!(cond(&h, "ScalingActive").unwrap()["reason"], "FailedGetResourceMetric");
    // a Service selecting the pods gets Endpoints and an EndpointSlice with their IPs
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}});
    let (c, _) = s.apply("/api/v1/namespaces/default/services/web", "agent", false, svc).await;
    assert_eq!(c, 201);
    let ep = eventually(30, || async {
        let (_, v) = s.get("/api/v1/namespaces/default/endpoints/web").await;
        (v["subsets"][0]["addresses"].as_array().map(Vec::len) == Some(3)).then_some(v)
    })
    .await;
    assert_eq!(ep["subsets"][0]["ports"][0], json!({"name": "http", "port": 8080, "protocol": "TCP"}));
    eventually(30, || async {
        let (_, slices) = s
            .get("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dweb")
            .await;
        (slices["items"][0]["endpoints"].as_array().map(Vec::len) == Some(3)).then_some(())
    })
    .await;
    // a PodDisruptionBudget counts the ready pods it selects
    let pdb = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "web"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}});
    let (c, _) =
        s.apply("/apis/policy/v1/namespaces/default/poddisruptionbudgets/web", "agent", false, pdb).await;
    assert_eq!(c, 201);
    let p = eventually(30, || async {
        let (_, v) = s.get("/apis/policy/v1/namespaces/default/poddisruptionbudgets/web").await;
        (v["status"]["currentHealthy"] == 3).then_some(v)
    })
    .await;
    assert_eq!(p["status"]["desiredHealthy"], 2);
    assert_eq!(p["status"]["disruptionsAllowed"], 1);
    assert_eq!(p["status"]["expectedPods"], 3);
    assert_eq!(cond(&p, "DisruptionAllowed").unwrap()["reason"], "SufficientPods");
    // applying replicas now conflicts with the autoscaler's ownership, as on a real cluster
    let mut with_replicas = d.clone();
    with_replicas["spec"]["replicas"] = json!(1);
    let (c, e) =
        s.apply("/apis/apps/v1/namespaces/default/deployments/web", "agent", false, with_replicas).await;
    assert_eq!(c, 409, "{e}");
    assert!(e["message"].as_str().unwrap().contains("conflict with \"kube-controller-manager\""), "{e}");
}

const PDBS: &str = "/apis/policy/v1/namespaces/default/poddisruptionbudgets";

/// A PDB's (currentHealthy, desiredHealthy, expectedPods, disruptionsAllowed), -1 when absent.
type PdbCounts = (i64, i64, i64, i64);

/// A PDB's counts and the object.
async fn pdb_counts(s: &Sim, name: &str) -> (PdbCounts, Value) {
    let (_, v) = s.get(&format!("{PDBS}/{name}")).await;
    let n = |f: &str| v["status"][f].as_i64().unwrap_or(-1);
    ((n("currentHealthy"), n("desiredHealthy"), n("expectedPods"), n("disruptionsAllowed")), v)
}

/// Wait until every named PDB reports these counts.
async fn pdbs_reach(s: &Sim, want: &[(&str, PdbCounts)]) {
    eventually(30, || async {
        for (name, counts) in want {
            if pdb_counts(s, name).await.0 != *counts {
                return None;
            }
        }
        Some(())
    })
    .await
}

/// The disruption controller's status, as kube-controller-manager computes it:
/// `minAvailable: <int>` counts every selected pod as expected, a percentage or
/// `maxUnavailable` counts the replicas of the pods' controllers (the Deployment,
/// not its ReplicaSets), terminating pods are never healthy, and pod deletions
/// (old ReplicaSet scaled to zero) update the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pdb_status_follows_a_rollout() {
    let s = Sim::with(SimConfig { readiness_delay: Duration::from_millis(300), ..Default::default() }).await;
    const DEPLOY: &str = "/apis/apps/v1/namespaces/default/deployments/web";
    let mut d = workload("Deployment", "web", "nginx:1", json!({}));
    d["spec"]["replicas"] = json!(3);
    assert_eq!(s.apply(DEPLOY, "agent", false, d.clone()).await.0, 201);
    let selector = json!({"matchLabels": {"app": "web"}});
    for (name, spec) in [
        ("web", json!({"minAvailable": 2, "selector": selector})),
        ("web-pct", json!({"minAvailable": "50%", "selector": selector})),
        ("web-max", json!({"maxUnavailable": 1, "selector": selector})),
    ] {
        let pdb = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": name}, "spec": spec});
        assert_eq!(s.apply(&format!("{PDBS}/{name}"), "agent", false, pdb).await.0, 201);
    }
    let settled = [("web", (3, 2, 3, 1)), ("web-pct", (3, 2, 3, 1)), ("web-max", (3, 2, 3, 1))];
    pdbs_reach(&s, &settled).await;

    // a rollout stuck on an unpullable image: old and new pods coexist; the
    // integer budget expects all six pods, the others the Deployment's three replicas
    let mut stuck = d.clone();
    stuck["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:does-not-exist");
    assert_eq!(s.apply(DEPLOY, "agent", false, stuck).await.0, 200);
    pdbs_reach(&s, &[("web", (3, 2, 6, 1)), ("web-pct", (3, 2, 3, 1)), ("web-max", (3, 2, 3, 1))]).await;
    // a pullable template: a third ReplicaSet, then the old ones scaled to zero
    let mut d3 = d.clone();
    d3["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:2");
    assert_eq!(s.apply(DEPLOY, "agent", false, d3).await.0, 200);
    eventually(30, || async {
        let (_, d) = s.get(DEPLOY).await;
        (d["status"]["observedGeneration"] == 3
            && d["status"]["replicas"] == 3
            && d["status"]["updatedReplicas"] == 3
            && d["status"]["availableReplicas"] == 3)
            .then_some(())
    })
    .await;
    eventually(30, || async {
        let (_, pods) = s.get("/api/v1/namespaces/default/pods?labelSelector=app%3Dweb").await;
        (pods["items"].as_array().map(Vec::len) == Some(3)).then_some(())
    })
    .await;
    // once the old pods are gone, every budget counts the three new ones
    pdbs_reach(&s, &settled).await;
    let (_, p) = pdb_counts(&s, "web").await;
    assert_eq!(p["status"]["observedGeneration"], p["metadata"]["generation"], "{p}");
    let c = cond(&p, "DisruptionAllowed").unwrap();
    assert_eq!(
        (&c["status"], &c["reason"], &c["observedGeneration"]),
        (&json!("True"), &json!("SufficientPods"), &p["metadata"]["generation"]),
        "{c}"
    );

    // a terminating pod (held by a finalizer) is expected but never healthy
    let (_, pods) = s.get("/api/v1/namespaces/default/pods?labelSelector=app%3Dweb").await;
    let victim = pods["items"][0]["metadata"]["name"].as_str().unwrap().to_string();
    let pod_path = format!("/api/v1/namespaces/default/pods/{victim}");
    let set_finalizers = |finalizers: Value| {
        let (s, pod_path) = (&s, &pod_path);
        async move {
            let patch = json!({"metadata": {"finalizers": finalizers}});
            let (c, v) = s.req("PATCH", pod_path, "application/merge-patch+json", Some(patch)).await;
            assert_eq!(c, 200, "{v}");
        }
    };
    set_finalizers(json!(["test.convoy.dev/hold"])).await;
    let (c, _) = s.req("DELETE", &pod_path, "", None).await;
    assert!(c == 200 || c == 202, "{c}");
    // the ReplicaSet replaces it; the integer budget expects 4 pods, 3 of them healthy
    pdbs_reach(&s, &[("web", (3, 2, 4, 1)), ("web-max", (3, 2, 3, 1))]).await;
    // an unmanaged pod does not count towards a percentage budget's expected pods
    let stray = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "stray", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}});
    assert_eq!(s.apply("/api/v1/namespaces/default/pods/stray", "agent", false, stray).await.0, 201);
    pdbs_reach(&s, &[("web", (4, 2, 5, 2)), ("web-pct", (4, 2, 3, 2))]).await;
    // releasing the finalizer deletes the pod for good
    set_finalizers(Value::Null).await;
    pdbs_reach(&s, &[("web", (4, 2, 4, 2))]).await;

    // a percentage or maxUnavailable budget over pods whose controller cannot scale
    // (a DaemonSet) fails safe: nothing may be disrupted, and the condition says why
    let ds = workload("DaemonSet", "node-agent", "busybox:1", json!({}));
    assert_eq!(
        s.apply("/apis/apps/v1/namespaces/default/daemonsets/node-agent", "agent", false, ds).await.0,
        201
    );
    let pdb = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "node-agent"},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "node-agent"}}}});
    assert_eq!(s.apply(&format!("{PDBS}/node-agent"), "agent", false, pdb).await.0, 201);
    let p = eventually(30, || async {
        let (_, v) = pdb_counts(&s, "node-agent").await;
        (cond(&v, "DisruptionAllowed").is_some_and(|c| c["reason"] == "SyncFailed")).then_some(v)
    })
    .await;
    let c = cond(&p, "DisruptionAllowed").unwrap();
    assert_eq!(c["status"], "False");
    assert_eq!(c["message"], "daemonsets.apps does not implement the scale subresource");
    assert_eq!(p["status"]["disruptionsAllowed"], 0, "{p}");
}

/// `KubeSim::changes`: every committed change of the asked resource types,
/// in resourceVersion order across types, deletions included, with the
/// resourceVersions a real client (kubectl) saw on the objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_list_commits_across_types_in_resource_version_order() {
    let s = Sim::start().await;
    let cm = |name: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}});
    let (c, a) = s.apply("/api/v1/namespaces/default/configmaps/a", "t", false, cm("a")).await;
    assert_eq!(c, 201, "{a}");
    let (c, _) = s
        .apply(
            "/apis/batch/v1/namespaces/default/jobs/j",
            "t",
            false,
            workload("Job", "j", "busybox:1", json!({})),
        )
        .await;
    assert_eq!(c, 201);
    let (c, b) = s.apply("/api/v1/namespaces/default/configmaps/b", "t", false, cm("b")).await;
    assert_eq!(c, 201, "{b}");
    // The Job completes (the job controller writes its status), then goes.
    eventually(10, || async {
        let (_, j) = s.get("/apis/batch/v1/namespaces/default/jobs/j").await;
        cond(&j, "Complete").map(|_| ())
    })
    .await;
    let out = s.kubectl_ok(&["delete", "job", "j", "--cascade=orphan"]).await;
    assert!(out.contains("deleted"), "{out}");

    let changes = s.sim.changes(&[("", "configmaps"), ("batch", "jobs")]);
    let rvs: Vec<u64> = changes.iter().map(|c| c.resource_version).collect();
    assert!(rvs.windows(2).all(|w| w[0] < w[1]), "resourceVersion order: {rvs:?}");
    let of = |name: &str, kind: &str| {
        changes
            .iter()
            .position(|c| c.name == name && c.kind == kind)
            .unwrap_or_else(|| panic!("{name} {kind}: {changes:?}"))
    };
    assert!(of("a", "ADDED") < of("j", "ADDED") && of("j", "ADDED") < of("b", "ADDED"));
    assert!(of("j", "MODIFIED") < of("j", "DELETED"), "the Job's status was written before it was deleted");
    let added_a = &changes[of("a", "ADDED")];
    assert_eq!(added_a.resource_version.to_string(), common::rv(&a), "the rv kubectl's server returned");
    assert_eq!(
        (added_a.group.as_str(), added_a.resource.as_str(), added_a.namespace.as_str()),
        ("", "configmaps", "default")
    );
    let deleted = &changes[of("j", "DELETED")];
    assert_eq!(deleted.object["kind"], "Job");
    assert!(cond(&deleted.object, "Complete").is_some(), "the last state of the deleted Job");
    // Only the asked types: the Job's pods are not listed.
    assert!(changes.iter().all(|c| c.resource == "configmaps" || c.resource == "jobs"), "{changes:?}");
}

/// A bare Pod that runs to completion (`restartPolicy: Never`, as Helm test
/// hooks are) ends Succeeded once started, or Failed with the exit code
/// `kube-sim.convoy.dev/exit-code` gives; an unpullable one stays Pending
/// in ImagePullBackOff; a `restartPolicy: Always` Pod keeps Running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_to_completion_pods_succeed_or_fail_with_their_exit_code() {
    let s = Sim::with(SimConfig { readiness_delay: Duration::from_millis(200), ..Default::default() }).await;
    let pod = |name: &str, image: &str, restart: &str, annotations: Value| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "annotations": annotations},
            "spec": {"restartPolicy": restart, "containers": [{"name": "t", "image": image}]}})
    };
    for p in [
        pod("ok", "curlimages/curl:7.69.0", "Never", json!({})),
        pod("fails", "alpine:3.11", "Never", json!({"kube-sim.convoy.dev/exit-code": "3"})),
        pod("pull", "alpine:does-not-exist", "Never", json!({})),
        pod("server", "nginx:1", "Always", json!({"kube-sim.convoy.dev/exit-code": "3"})),
    ] {
        let name = p["metadata"]["name"].as_str().unwrap().to_string();
        let (code, body) = s.apply(&format!("/api/v1/namespaces/default/pods/{name}"), "t", false, p).await;
        assert!(code < 300, "{body}");
    }
    let phase_of = |name: &'static str, want: &'static str| {
        let s = &s;
        async move {
            eventually(30, || async {
                let (_, v) = s.get(&format!("/api/v1/namespaces/default/pods/{name}")).await;
                (v["status"]["phase"] == want).then_some(v)
            })
            .await
        }
    };
    let ok = phase_of("ok", "Succeeded").await;
    let t = &ok["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!((t["exitCode"].as_i64(), t["reason"].as_str()), (Some(0), Some("Completed")));
    let failed = phase_of("fails", "Failed").await;
    let t = &failed["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!((t["exitCode"].as_i64(), t["reason"].as_str()), (Some(3), Some("Error")));
    let server = phase_of("server", "Running").await;
    assert_eq!(server["status"]["containerStatuses"][0]["ready"], true, "Always: never completes");
    // The unpullable one reports the back-off (it never starts).
    let pull = eventually(30, || async {
        let (_, v) = s.get("/api/v1/namespaces/default/pods/pull").await;
        (v["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ImagePullBackOff").then_some(v)
    })
    .await;
    assert_eq!(pull["status"]["phase"], "Pending");
    // Finished pods stay finished: the ok and failed pods did not change
    // while the others were observed (their resourceVersion is the same).
    for (name, before) in [("ok", &ok), ("fails", &failed)] {
        let (_, now) = s.get(&format!("/api/v1/namespaces/default/pods/{name}")).await;
        assert_eq!(now["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"], "{name}");
    }
}

/// The TTL-after-finished controller (kube-controller-manager's
/// `ttlafterfinished`): a finished Job with `ttlSecondsAfterFinished` is
/// deleted that many seconds after it finished (0: at once), with foreground
/// propagation, so its pods go first; its last state (Complete) is what a
/// watcher sees deleted. A Job without the field stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_with_a_ttl_are_deleted_after_it() {
    let s = Sim::with(SimConfig { readiness_delay: Duration::from_millis(50), ..Default::default() }).await;
    let job = |name: &str, ttl: Option<i64>| {
        let mut j = workload("Job", name, "busybox:1", json!({}));
        if let Some(ttl) = ttl {
            j["spec"]["ttlSecondsAfterFinished"] = json!(ttl);
        }
        j
    };
    for (name, ttl) in [("keep", None), ("now", Some(0)), ("later", Some(2))] {
        let (c, v) = s
            .apply(&format!("/apis/batch/v1/namespaces/default/jobs/{name}"), "t", false, job(name, ttl))
            .await;
        assert_eq!(c, 201, "{v}");
    }
    let path = |name: &str| format!("/apis/batch/v1/namespaces/default/jobs/{name}");
    // `later` is seen Complete, then deleted no sooner than its TTL allows
    // (lastTransitionTime has whole seconds: at least 1 s of the 2 remain).
    eventually(20, || async {
        let (_, j) = s.get(&path("later")).await;
        cond(&j, "Complete").map(|_| ())
    })
    .await;
    let complete_seen = Instant::now();
    for name in ["now", "later"] {
        eventually(20, || async { (s.get(&path(name)).await.0 == 404).then_some(()) }).await;
    }
    let waited = complete_seen.elapsed();
    assert!(waited >= Duration::from_millis(800), "deleted {waited:?} after it was seen Complete");
    let changes = s.sim.changes(&[("batch", "jobs"), ("", "pods")]);
    for name in ["now", "later"] {
        let deleted = changes
            .iter()
            .find(|c| c.resource == "jobs" && c.name == name && c.kind == "DELETED")
            .unwrap_or_else(|| panic!("{name} deleted: {changes:?}"));
        let complete = cond(&deleted.object, "Complete").expect("it finished before it was deleted");
        assert_eq!(complete["status"], "True");
        // Foreground: the Job's pods were deleted before the Job.
        let pods_deleted: Vec<u64> = changes
            .iter()
            .filter(|c| {
                c.resource == "pods" && c.kind == "DELETED" && c.name.starts_with(&format!("{name}-"))
            })
            .map(|c| c.resource_version)
            .collect();
        assert!(!pods_deleted.is_empty(), "{name}'s pods deleted: {changes:?}");
        assert!(pods_deleted.iter().all(|rv| *rv < deleted.resource_version), "{changes:?}");
    }
    // The Job without a TTL finished with the others and is still there.
    let (c, keep) = s.get(&path("keep")).await;
    assert_eq!(c, 200);
    assert_eq!(cond(&keep, "Complete").unwrap()["status"], "True");
}
