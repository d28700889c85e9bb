//! The `kube-sim` binary: port 0, printed address, kubeconfig for kubectl,
//! run-time faults through the control endpoint, snapshot saved on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The kube-sim process; its guard ends it on drop, panic or Ctrl-C.
struct Child(convoy_testsupport::ProcessGuard);

fn kubectl(kc: &std::path::Path, home: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out =
        Command::new("kubectl").args(args).env("KUBECONFIG", kc).env("HOME", home).output().expect("kubectl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn heavy_binary_serves_kubectl_and_saves_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    let snap = dir.path().join("state.json");
    let start = |tls: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kube-sim"));
        cmd.args(["--listen", "127.0.0.1:0", "--readiness-delay", "0s", "--kubeconfig-out"])
            .arg(&kc)
            .arg("--snapshot")
            .arg(&snap)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if tls {
            cmd.arg("--tls");
        }
        let mut child =
            Child(convoy_testsupport::ProcessGuard::spawn("kube-sim", &mut cmd).expect("kube-sim starts"));
        let mut line = String::new();
        BufReader::new(child.0.child_mut().stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.trim().strip_prefix("kube-sim listening on ").expect("address printed").to_string();
        (child, url)
    };
    let (child, url) = start(false);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(!url.ends_with(":0"));
    let (code, out) = kubectl(&kc, dir.path(), &["create", "configmap", "persisted", "--from-literal=k=v"]);
    assert_eq!(code, 0, "{out}");
    // faults at run time through the control endpoint (kubectl get --raw only does GET; use curl-free std HTTP)
    let host = url.trim_start_matches("http://").to_string();
    let mut s = std::net::TcpStream::connect(&host).unwrap();
    use std::io::{Read, Write};
    let body = r#"{"errorRate": 1.0}"#;
    write!(s, "PUT /_sim/faults HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let (code, out) = kubectl(&kc, dir.path(), &["get", "cm", "persisted", "--request-timeout=3s"]);
    assert_ne!(code, 0, "failed by the injected fault: {out}");
    assert!(out.contains("InternalError"), "{out}");
    // SIGTERM: graceful stop, snapshot written
    let pid = child.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let mut child = child;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.0.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "kube-sim did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(snap.exists(), "snapshot saved");
    // restart over TLS from the snapshot: the object is still there
    let (_child2, url2) = start(true);
    assert!(url2.starts_with("https://"), "{url2}");
    let (code, out) = kubectl(&kc, dir.path(), &["get", "cm", "persisted", "-o", "jsonpath={.data.k}"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "v");
}
