//! `convoy build --chart REPO_URL/NAME | oci://…` offline: the chart is
//! pulled with the hub's resolvers from a real HTTP chart repository
//! (helm-python-sdk `package` + `repo_index_generate`, Python's
//! http.server) and a real OCI registry (Debian's docker-registry, charts
//! pushed by helm-python-sdk), a semver range picks the highest version, and
//! the signed statement names the chart, the resolved version and the
//! archive digest; a tampered index digest is refused with nothing written.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use convoy_testsupport::ProcessGuard;
use serde_json::Value;

fn convoy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_convoy"))
        .args(args)
        .env("CONVOY_LOG", "error")
        .output()
        .expect("convoy runs")
}

fn corpus() -> PathBuf {
    std::env::var_os("CONVOY_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"))
}

fn python(script: &str, args: &[&str]) {
    let out = Command::new("python3").arg("-c").arg(script).args(args).output().expect("python3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn package(dir: &Path, version: &str) -> PathBuf {
    python(
        "import sys\nfrom helm_python import package, repo_index_generate\n\
         package(sys.argv[1], destination=sys.argv[2], version=sys.argv[3])\nrepo_index_generate(sys.argv[2])\n",
        &[corpus().join("charts/podinfo").to_str().unwrap(), dir.to_str().unwrap(), version],
    );
    dir.join(format!("podinfo-{version}.tgz"))
}

fn sha256_file(p: &Path) -> String {
    convoy_artifact::digest_of(&std::fs::read(p).unwrap())
}

fn http_server(dir: &Path) -> (ProcessGuard, String) {
    let mut child = ProcessGuard::spawn(
        "chart repository",
        Command::new("python3")
            .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )
    .expect("python3 http.server starts");
    let mut line = String::new();
    BufReader::new(child.child_mut().stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port = line.split("port ").nth(1).and_then(|r| r.split_whitespace().next()).expect(&line).to_string();
    (child, format!("http://127.0.0.1:{port}"))
}

fn registry(dir: &Path) -> (ProcessGuard, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("registry-data").display()
        ),
    )
    .unwrap();
    let mut child = ProcessGuard::spawn(
        "docker-registry",
        Command::new("docker-registry").arg("serve").arg(&config).stdout(Stdio::null()).stderr(Stdio::null()),
    )
    .expect("docker-registry starts (scripts/setup.sh installs it)");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "docker-registry exited");
        assert!(std::time::Instant::now() < deadline, "docker-registry did not listen");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (child, port)
}

fn build(key: &Path, out: &Path, chart: &str, extra: &[&str]) -> Output {
    let mut args =
        vec!["build", "--chart", chart, "--key", key.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend(["--source-url", "https://charts.example", "--revision", "r1", "--generation", "1"]);
    args.extend(extra);
    convoy(&args)
}

/// A work directory and a signing key made by `convoy keygen` in it.
fn workdir_with_key() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let keys = d.path().join("keys");
    assert!(convoy(&["keygen", "--out", keys.to_str().unwrap()]).status.success());
    (d, keys.join("signing.key"))
}

/// podinfo 6.14.1 and 6.15.0 in a chart repository under `d` served over
/// HTTP: the repository, the 6.15.0 archive, the server and its URL.
fn served_podinfo(d: &tempfile::TempDir) -> (PathBuf, PathBuf, ProcessGuard, String) {
    let repo = d.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    package(&repo, "6.14.1");
    let t15 = package(&repo, "6.15.0");
    let (http, url) = http_server(&repo);
    (repo, t15, http, url)
}

fn statement(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("statement.json")).unwrap()).unwrap()
}

#[test]
fn heavy_build_pulls_charts_from_a_repository_and_a_registry() {
    let (d, key) = workdir_with_key();

    // An HTTP chart repository, a semver range.
    let (repo, t15, _http, url) = served_podinfo(&d);
    let out = d.path().join("from-repo");
    let o = build(&key, &out, &format!("{url}/podinfo"), &["--chart-version", ">=6.0.0 <7.0.0"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let st = statement(&out);
    assert_eq!(st["bundle"], "podinfo", "named after the chart");
    assert_eq!((&st["helm"]["chart"], &st["helm"]["version"]), (&"podinfo".into(), &"6.15.0".into()), "{st}");
    assert_eq!(st["helm"]["chartDigest"], sha256_file(&t15));

    // A tampered index digest: refused, nothing written.
    let index = std::fs::read_to_string(repo.join("index.yaml")).unwrap();
    let good = sha256_file(&repo.join("podinfo-6.14.1.tgz"));
    std::fs::write(
        repo.join("index.yaml"),
        index.replace(good.trim_start_matches("sha256:"), &"0".repeat(64)),
    )
    .unwrap();
    let bad_out = d.path().join("tampered");
    let o = build(&key, &bad_out, &format!("{url}/podinfo"), &["--chart-version", "6.14.1"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("digest") && err.contains("refused"), "{err}");
    assert!(!bad_out.join("statement.json").exists());

    // An OCI registry, the highest release by default.
    let (_reg, port) = registry(d.path());
    let pushed = d.path().join("pushed");
    std::fs::create_dir_all(&pushed).unwrap();
    for v in ["6.14.1", "6.15.0"] {
        let tgz = package(&pushed, v);
        python(
            "import sys\nfrom helm_python import push, RegistryClient\n\
             c = RegistryClient(plain_http=True, credentials_file=sys.argv[3])\n\
             push(sys.argv[1], 'oci://' + sys.argv[2] + '/charts', client=c, plain_http=True)\n",
            &[
                tgz.to_str().unwrap(),
                &format!("127.0.0.1:{port}"),
                d.path().join("creds.json").to_str().unwrap(),
            ],
        );
    }
    let out = d.path().join("from-oci");
    let o = build(&key, &out, &format!("oci://127.0.0.1:{port}/charts/podinfo"), &["--plain-http"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let st = statement(&out);
    assert_eq!(st["helm"]["version"], "6.15.0", "{st}");
    assert_eq!(st["helm"]["chartDigest"], sha256_file(&pushed.join("podinfo-6.15.0.tgz")));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("manifest sha256:"), "the manifest digest is reported: {stderr}");
}

/// A chart repository that answers only `user:secret` (basic auth), serving
/// the files under its directory argument.
const PRIVATE_REPO: &str = r#"
import base64, functools, http.server, sys
want = "Basic " + base64.b64encode(b"user:secret").decode()
class H(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        if self.headers.get("Authorization") != want:
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(H, directory=sys.argv[1]))
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

/// `--basic-auth-file` reaches a private repository; without it, or with
/// the wrong password, the pull is refused as an authentication failure and
/// nothing is written.
#[test]
fn heavy_build_pulls_a_chart_from_a_private_repository_with_credentials_from_a_file() {
    let (d, key) = workdir_with_key();
    let repo = d.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let tgz = package(&repo, "6.15.0");
    let mut server = ProcessGuard::spawn(
        "private chart repository",
        Command::new("python3").args(["-u", "-c", PRIVATE_REPO]).arg(&repo).stdout(Stdio::piped()),
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(server.child_mut().stdout.take().unwrap()).read_line(&mut line).unwrap();
    let chart = format!("http://127.0.0.1:{}/podinfo", line.trim());
    let (good, bad) = (d.path().join("good"), d.path().join("bad"));
    std::fs::write(&good, "user:secret\n").unwrap();
    std::fs::write(&bad, "user:wrong\n").unwrap();

    for (name, extra) in [("anonymous", vec![]), ("wrong", vec!["--basic-auth-file", bad.to_str().unwrap()])]
    {
        let out = d.path().join(name);
        let o = build(&key, &out, &chart, &extra);
        assert!(!o.status.success(), "{name}: pulled without the right credentials");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("401"), "{name}: {err}");
        assert!(!out.join("statement.json").exists(), "{name}: nothing is written");
    }
    let out = d.path().join("with-credentials");
    let o = build(&key, &out, &chart, &["--basic-auth-file", good.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let st = statement(&out);
    assert_eq!(st["helm"]["version"], "6.15.0", "{st}");
    assert_eq!(st["helm"]["chartDigest"], sha256_file(&tgz));
}

/// `convoy build --chart DIR` fetches the dependencies the chart lists in
/// `Chart.yaml` but does not vendor, as the hub's build does (range
/// resolved, digest checked), and Helm renders them; the chart directory
/// itself is left untouched. A dependency no version matches fails naming
/// it, with nothing written.
#[test]
fn heavy_build_of_a_chart_directory_fetches_its_dependencies() {
    let (d, key) = workdir_with_key();
    let (_repo, t15, _http, url) = served_podinfo(&d);
    let app = d.path().join("app");
    let chart_yaml = |range: &str| {
        format!(
            "apiVersion: v2\nname: app\nversion: 1.0.0\ndependencies:\n- name: podinfo\n  version: \"{range}\"\n  repository: {url}\n"
        )
    };
    std::fs::create_dir_all(app.join("templates")).unwrap();
    std::fs::write(app.join("Chart.yaml"), chart_yaml("^6.14.0")).unwrap();
    std::fs::write(app.join("values.yaml"), "podinfo:\n  replicaCount: 2\n").unwrap();
    std::fs::write(
        app.join("templates/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-app\ndata: {}\n",
    )
    .unwrap();

    let out = d.path().join("out");
    let o = build(&key, &out, app.to_str().unwrap(), &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("fetched dependency podinfo 6.15.0 ({})", sha256_file(&t15))),
        "{stderr}"
    );
    assert!(!app.join("charts").exists(), "the chart directory is not changed");
    let files =
        convoy_artifact::unpack(&std::fs::read(out.join("artifact.tar.gz")).unwrap(), &Default::default())
            .unwrap();
    let objects: Vec<Value> = files
        .iter()
        .filter(|f| f.path.starts_with("helm/templates/"))
        .flat_map(|f| {
            convoy_helm::output::parse_objects(&f.path, std::str::from_utf8(&f.content).unwrap()).unwrap()
        })
        .collect();
    let deployment =
        objects.iter().find(|o| o["kind"] == "Deployment").expect("podinfo's Deployment is rendered");
    assert_eq!(deployment["spec"]["replicas"], 2, "the parent's values for the subchart");
    assert!(objects.iter().any(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "app-app"));

    // No version matches: refused naming the dependency, nothing written.
    std::fs::write(app.join("Chart.yaml"), chart_yaml("^7.0.0")).unwrap();
    let out = d.path().join("out2");
    let o = build(&key, &out, app.to_str().unwrap(), &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("podinfo") && stderr.contains("^7.0.0"), "{stderr}");
    assert!(!out.exists(), "nothing written");
}
