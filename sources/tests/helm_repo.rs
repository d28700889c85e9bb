//! A real chart repository: charts packaged and indexed by helm-python-sdk
//! (`package`, `repo_index_generate`), served by a real HTTP server
//! (python3 -m http.server), resolved and downloaded by `helmrepo::HelmRepo`:
//! an exact version, a semver range, a new version appearing, a bad digest
//! (refused) and a 404.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use convoy_sources::Error;
use convoy_sources::helmrepo::{HelmRepo, RepoAuth};
use sha2::Digest as _;

fn corpus() -> PathBuf {
    std::env::var_os("CONVOY_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"))
}

/// Kills the server's process group when dropped.
struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        unsafe extern "C" {
            fn kill(pid: i32, sig: i32) -> i32;
        }
        // SAFETY: plain kill(2) of our own child's process group.
        unsafe { kill(-(self.0.id() as i32), 9) };
        let _ = self.0.wait();
    }
}

fn python(script: &str, args: &[&str]) {
    let out = Command::new("python3").arg("-c").arg(script).args(args).output().expect("python3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Package podinfo at `version` into `repo` and (re)index the repository.
fn publish(repo: &Path, version: &str) {
    python(
        "import sys\nfrom helm_python import package, repo_index_generate\n\
         package(sys.argv[1], destination=sys.argv[2], version=sys.argv[3])\nrepo_index_generate(sys.argv[2])\n",
        &[corpus().join("charts/podinfo").to_str().unwrap(), repo.to_str().unwrap(), version],
    );
}

fn serve(dir: &Path) -> (Server, String) {
    let mut child = Command::new("python3")
        .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("python3 http.server starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
    let port = line.split("port ").nth(1).and_then(|r| r.split_whitespace().next()).expect(&line).to_string();
    (Server(child), format!("http://127.0.0.1:{port}"))
}

#[tokio::test]
async fn a_chart_repository_resolves_versions_checks_digests_and_reports_404() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let d = tempfile::tempdir().unwrap();
    let repo = d.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    publish(&repo, "6.14.1");
    publish(&repo, "6.15.0");
    let (_server, url) = serve(&repo);
    let client = HelmRepo::new(&url, &RepoAuth::default()).unwrap();

    let exact = client.fetch("podinfo", "6.14.1").await.unwrap();
    assert_eq!(exact.version, "6.14.1");
    let on_disk = std::fs::read(repo.join("podinfo-6.14.1.tgz")).unwrap();
    assert_eq!(exact.bytes, on_disk);
    assert_eq!(exact.digest, format!("sha256:{}", hex::encode(sha2::Sha256::digest(&on_disk))));

    let range = ">=6.0.0, <7.0.0";
    assert_eq!(client.fetch("podinfo", range).await.unwrap().version, "6.15.0");

    // A new version appears: the same range now resolves to it.
    publish(&repo, "6.16.0");
    assert_eq!(client.fetch("podinfo", range).await.unwrap().version, "6.16.0");
    assert_eq!(client.fetch("podinfo", "").await.unwrap().version, "6.16.0");

    // A .tgz that does not match the index's digest is refused.
    std::fs::copy(repo.join("podinfo-6.15.0.tgz"), repo.join("podinfo-6.14.1.tgz")).unwrap();
    match client.fetch("podinfo", "6.14.1").await {
        Err(Error::DigestMismatch { url, .. }) => assert!(url.ends_with("podinfo-6.14.1.tgz"), "{url}"),
        other => panic!("expected a digest mismatch, got {other:?}"),
    }

    // Not in the index, and in the index but missing on the server (404).
    assert!(matches!(client.fetch("nginx", "*").await, Err(Error::RefNotFound { .. })));
    assert!(matches!(client.fetch("podinfo", ">=8").await, Err(Error::RefNotFound { .. })));
    std::fs::remove_file(repo.join("podinfo-6.15.0.tgz")).unwrap();
    match client.fetch("podinfo", "6.15.0").await {
        Err(Error::Fetch { message, .. }) => assert!(message.contains("404"), "{message}"),
        other => panic!("expected a 404, got {other:?}"),
    }
    let missing = HelmRepo::new(&format!("{url}/nothing-here"), &RepoAuth::default()).unwrap();
    assert!(
        matches!(missing.index().await, Err(Error::Fetch { ref message, .. }) if message.contains("404"))
    );
}
