//! An independent client: Python grpcio + grpcio-reflection (installed by
//! scripts/setup.sh) lists the services through reflection and calls health
//! and a fleet query over mTLS, with no Convoy code or .proto file.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_python_grpcio_reflection_health_and_fleet_query_over_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), FLEET).await;
    register(&t.hub, "edge-1", &[("env", "prod")]).await;
    let data = t.hub.data_dir.clone();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/hub_client.py");
    let address = format!("127.0.0.1:{}", t.hub.grpc_addr.port());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .args(["--address", &address])
            .arg("--ca")
            .arg(data.join("ca.crt"))
            .arg("--cert")
            .arg(data.join("admin.crt"))
            .arg("--key")
            .arg(data.join("admin.key"))
            .output()
            .expect("python3 runs (scripts/setup.sh installs grpcio and grpcio-reflection)")
    })
    .await
    .unwrap();
    assert!(out.status.success(), "python client failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let services: Vec<&str> = v["services"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert!(
        services.contains(&"grpc.reflection.v1.ServerReflection")
            || services.contains(&"grpc.reflection.v1alpha.ServerReflection")
    );
    assert_eq!(v["health"]["status"], "SERVING");
    assert_eq!(v["health_fleet"]["status"], "SERVING");
    assert_eq!(v["clusters"][0]["name"], "edge-1");
    assert_eq!(v["clusters"][0]["labels"]["env"], "prod");
    assert_eq!(v["anonymous"], "UNAUTHENTICATED");
    t.hub.shutdown().await.unwrap();
}
