//! Shared test helpers: a kube-sim cluster with a client, signed build
//! directories made with convoy-artifact, the corpus.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use convoy_artifact::{Limits, PackedArtifact, SigningKey, Statement};
use kube_sim::{KubeSim, SimConfig};

pub mod fakehub;

pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CONVOY_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn corpus() -> PathBuf {
    if let Ok(p) = std::env::var("CONVOY_CORPUS") {
        return p.into();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus")
}

pub async fn sim() -> KubeSim {
    sim_with(SimConfig::default()).await
}

pub async fn sim_with(cfg: SimConfig) -> KubeSim {
    KubeSim::start(cfg).await.expect("kube-sim starts")
}

pub fn client(sim: &KubeSim) -> kube::Client {
    let mut cfg = kube::Config::new(sim.url().parse().unwrap());
    cfg.read_timeout = Some(Duration::from_secs(60));
    kube::Client::try_from(cfg).unwrap()
}

/// Pack files (path, text) into an artifact.
pub fn pack(files: &[(&str, String)]) -> PackedArtifact {
    convoy_artifact::pack_files(
        files.iter().map(|(p, c)| (p.to_string(), c.clone().into_bytes())),
        &Limits::default(),
    )
    .unwrap()
}

pub fn pack_dir(dir: &Path) -> PackedArtifact {
    convoy_artifact::pack_dir(dir, &Limits::default()).unwrap()
}

/// Write a `convoy build` directory for `packed`, signed by `key`.
pub fn write_build_dir(out: &Path, key: &SigningKey, bundle: &str, generation: u64, packed: &PackedArtifact) {
    std::fs::create_dir_all(out).unwrap();
    let st = Statement::new(
        bundle,
        "https://git.example/fleet.git",
        format!("main@sha1:{:040x}", generation),
        packed.digest.clone(),
        packed.size,
        generation,
    );
    let (bytes, sig) = key.sign_statement(&st).unwrap();
    std::fs::write(out.join(convoy_artifact::ARTIFACT_FILE), &packed.bytes).unwrap();
    std::fs::write(out.join(convoy_artifact::STATEMENT_FILE), bytes).unwrap();
    std::fs::write(out.join(convoy_artifact::SIGNATURE_FILE), sig).unwrap();
}

/// Write the public key PEM and return its path.
pub fn write_pub(dir: &Path, key: &SigningKey) -> PathBuf {
    let p = dir.join("signing.pub");
    std::fs::write(&p, key.public_key().to_spki_pem()).unwrap();
    p
}

/// Poll `f` until it returns Some, or panic after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn deployment(name: &str, image: &str, replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels:\n      app: {name}\n  template:\n    metadata:\n      labels:\n        app: {name}\n    spec:\n      containers:\n      - name: app\n        image: {image}\n"
    )
}

pub fn configmap(name: &str, data: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  k: \"{data}\"\n")
}

/// A gzipped tar of `files` as is (no checks, unlike the artifact builder),
/// to hand the agent archives the hub would never build.
pub fn raw_targz(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, content.as_bytes()).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    gz.finish().unwrap()
}
