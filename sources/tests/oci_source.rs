//! OCIRepository sources in the running source pipeline, against real OCI
//! registries: Debian's `docker-registry` (distribution 2.8) started on
//! loopback with a temp config, once open and once with htpasswd basic auth,
//! charts packaged and pushed by helm-python-sdk (`package`, `push`, its
//! `RegistryClient` logged in with a private credentials file). Covered: a
//! semver range over tags and a manifest-digest pin, each rendered by Helm's
//! engine with the manifest digest in the revision and the layer digest as
//! the chart digest; the source status lists them; a new tag picked up on
//! the next interval; basic auth from a file (and refused without it); a
//! chart missing from the registry reported with its 404. And a registry
//! front that answers like ghcr.io (a `Bearer` token challenge, the token
//! service taking the basic credentials), served by Python.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{ProcessGuard, corpus, free_port, wait_port};
use convoy_core::config::FleetConfig;
use convoy_core::pipeline::{BundleBuildState, SourceStatus};
use convoy_core::status::Phase;
use convoy_sources::helmrender::WorkerCommand;
use convoy_sources::{Sources, SourcesConfig};
use sha2::Digest as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

type Builds = Arc<BTreeMap<String, BundleBuildState>>;

/// A docker-registry on loopback; with `htpasswd`, basic auth is required.
fn registry(dir: &Path, htpasswd: Option<&Path>) -> (ProcessGuard, u16) {
    let port = free_port();
    let auth = htpasswd
        .map(|p| format!("auth:\n  htpasswd:\n    realm: convoy-test\n    path: {}\n", p.display()))
        .unwrap_or_default();
    let config = dir.join(format!("registry-{port}.yml"));
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
            dir.join(format!("data-{port}")).display()
        ),
    )
    .unwrap();
    let mut child = ProcessGuard::spawn(
        "docker-registry",
        Command::new("docker-registry").arg("serve").arg(&config).stdout(Stdio::null()).stderr(Stdio::null()),
    )
    .expect("docker-registry starts (scripts/setup.sh installs it)");
    wait_port(port, &mut child, "docker-registry");
    (child, port)
}

fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3").arg("-c").arg(script).args(args).output().expect("python3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Package podinfo at `version` into `dir` and push it to
/// `oci://127.0.0.1:<port>/charts` (logging in when `user` is given, with a
/// credentials file in `dir`). Returns the archive's path.
fn push(dir: &Path, port: u16, version: &str, user: Option<(&str, &str)>) -> std::path::PathBuf {
    let (u, p) = user.unwrap_or(("", ""));
    python(
        "import sys\nfrom helm_python import package, push, RegistryClient\n\
         src, dest, version, host, user, password, creds = sys.argv[1:8]\n\
         tgz = package(src, destination=dest, version=version)\n\
         c = RegistryClient(plain_http=True, credentials_file=creds)\n\
         if user:\n    c.login(host, user, password, plain_http=True)\n\
         push(tgz, 'oci://' + host + '/charts', client=c, plain_http=True)\n",
        &[
            corpus().join("charts/podinfo").to_str().unwrap(),
            dir.to_str().unwrap(),
            version,
            &format!("127.0.0.1:{port}"),
            u,
            p,
            dir.join("registry-credentials.json").to_str().unwrap(),
        ],
    );
    dir.join(format!("podinfo-{version}.tgz"))
}

/// The manifest digest the registry serves for a tag (read with Python).
fn manifest_digest(port: u16, tag: &str) -> String {
    python(
        "import sys, urllib.request\n\
         r = urllib.request.Request(sys.argv[1], headers={'Accept': 'application/vnd.oci.image.manifest.v1+json'})\n\
         print(urllib.request.urlopen(r).headers['Docker-Content-Digest'])\n",
        &[&format!("http://127.0.0.1:{port}/v2/charts/podinfo/manifests/{tag}")],
    )
}

fn sha256_file(p: &Path) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap())))
}

fn repo_doc(name: &str, port: u16, extra: &str) -> String {
    format!(
        "---\napiVersion: convoy.dev/v1\nkind: OCIRepository\nmetadata:\n  name: {name}\nspec:\n  url: oci://127.0.0.1:{port}/charts\n  insecure: true\n  interval: 1s\n  timeout: 20s\n{extra}"
    )
}

fn bundle_doc(name: &str, repo: &str, chart: &str, pick: &str) -> String {
    format!(
        "---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata:\n  name: {name}\nspec:\n  targets:\n  - clusterSelector: {{}}\n  helm:\n    ociRepository: {repo}\n    chart: {chart}\n    {pick}\n    namespace: apps\n"
    )
}

async fn wait<T: Clone>(rx: &mut watch::Receiver<T>, what: &str, mut ok: impl FnMut(&T) -> bool) -> T {
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
            panic!("timed out waiting for {what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_oci_registries_resolve_tags_and_digests_with_and_without_auth() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let htpasswd = tmp.path().join("htpasswd");
    let out =
        Command::new("htpasswd").args(["-Bbn", "user", "secret"]).output().expect("htpasswd (apache2-utils)");
    assert!(out.status.success());
    std::fs::write(&htpasswd, out.stdout).unwrap();
    let (_open, open_port) = registry(tmp.path(), None);
    let (_private, private_port) = registry(tmp.path(), Some(&htpasswd));
    let charts = tmp.path().join("charts");
    std::fs::create_dir_all(&charts).unwrap();
    let t14 = push(&charts, open_port, "6.14.1", None);
    let t15 = push(&charts, open_port, "6.15.0", None);
    push(&charts, private_port, "6.14.1", Some(("user", "secret")));
    let m14 = manifest_digest(open_port, "6.14.1");
    let m15 = manifest_digest(open_port, "6.15.0");
    let hub_files = tempfile::tempdir().unwrap();
    let auth = hub_files.path().join("auth");
    std::fs::write(&auth, "user:secret\n").unwrap();

    let text = [
        repo_doc("open", open_port, ""),
        repo_doc("private", private_port, &format!("  basicAuthFile: {}\n", auth.display())),
        repo_doc("no-auth", private_port, ""),
        bundle_doc("range", "open", "podinfo", "version: \">=6.0.0 <7.0.0\""),
        bundle_doc("pinned", "open", "podinfo", &format!("digest: {m14}")),
        bundle_doc("missing", "open", "nginx", "version: \"*\""),
        bundle_doc("authed", "private", "podinfo", "version: 6.14.1"),
        bundle_doc("refused", "no-auth", "podinfo", "version: 6.14.1"),
    ]
    .concat();
    let fleet = Arc::new(FleetConfig::parse([("fleet.yaml", text.as_str())]).unwrap());
    let (_fleet_tx, fleet_rx) = watch::channel(fleet);
    let data = tempfile::tempdir().unwrap();
    let mut cfg = SourcesConfig::new(data.path());
    cfg.backoff_base = Duration::from_millis(200);
    cfg.backoff_max = Duration::from_secs(1);
    cfg.helm.worker = Some(WorkerCommand {
        program: env!("CARGO_BIN_EXE_convoy-sources-helm-worker").into(),
        args: vec![],
    });
    let shutdown = CancellationToken::new();
    let (sources, task) = Sources::start(cfg, fleet_rx, shutdown.clone()).unwrap();
    let mut builds = sources.builds();
    let all = ["range", "pinned", "missing", "authed", "refused"];
    let b = wait(&mut builds, "every bundle built or failed", |m: &Builds| {
        all.iter().all(|n| m.get(*n).is_some_and(|s| s.artifact.is_some() || s.error.is_some()))
    })
    .await;

    let art = |n: &str| b[n].artifact.clone().unwrap_or_else(|| panic!("{n}: {:?}", b[n].error));
    let range = art("range");
    assert_eq!(range.source, "open");
    assert_eq!(range.revision, format!("6.15.0@{m15}"), "the manifest digest is the revision");
    let helm = range.helm.clone().unwrap();
    assert_eq!((helm.chart.as_str(), helm.version.as_str()), ("podinfo", "6.15.0"));
    assert_eq!(helm.chart_digest, sha256_file(&t15), "the chart digest is the layer's, checked on download");
    let pinned = art("pinned");
    assert_eq!(pinned.revision, format!("6.14.1@{m14}"));
    assert_eq!(pinned.helm.as_ref().unwrap().chart_digest, sha256_file(&t14));
    assert_eq!(art("authed").helm.unwrap().version, "6.14.1", "basic auth from a file");
    let e = b["refused"].error.clone().unwrap();
    assert_eq!(e.reason, "AuthenticationFailed", "{}", e.message);
    assert!(!e.message.contains("secret"), "{}", e.message);
    let e = b["missing"].error.clone().unwrap();
    assert_eq!(e.reason, "FetchFailed", "{}", e.message);
    assert!(e.message.contains("404"), "{}", e.message);
    assert!(b["missing"].artifact.is_none() && b["refused"].artifact.is_none());

    let mut statuses = sources.statuses();
    let st = wait(&mut statuses, "the charts in the status", |m: &Arc<BTreeMap<String, SourceStatus>>| {
        m.get("open").is_some_and(|s| s.charts.len() == 2)
    })
    .await;
    assert_eq!((st["open"].kind.as_str(), st["open"].phase), ("OCIRepository", Phase::Ready));
    let resolved: Vec<(&str, &str, &str)> = st["open"]
        .charts
        .iter()
        .map(|c| (c.bundle.as_str(), c.version.as_str(), c.manifest_digest.as_str()))
        .collect();
    assert_eq!(resolved, [("pinned", "6.14.1", m14.as_str()), ("range", "6.15.0", m15.as_str())]);
    assert_eq!(st["no-auth"].phase, Phase::Stalled, "every bundle of it is refused: the source is stalled");

    // A new tag: the next interval picks it up for the range only.
    push(&charts, open_port, "6.16.0", None);
    let m16 = manifest_digest(open_port, "6.16.0");
    let b2 = wait(&mut builds, "the range at 6.16.0", |m: &Builds| {
        m["range"].artifact.as_ref().is_some_and(|a| a.revision.starts_with("6.16.0@"))
    })
    .await;
    assert_eq!(b2["range"].artifact.as_ref().unwrap().revision, format!("6.16.0@{m16}"));
    assert_eq!(b2["pinned"].artifact.as_ref().unwrap(), &pinned, "the pinned digest was not rebuilt");

    shutdown.cancel();
    task.await.unwrap();
}

/// A registry front that answers like ghcr.io: 401 with a `Bearer` challenge
/// naming a token service, which hands out a token for the right basic
/// credentials; with the token, the registry API files under `root`.
const TOKEN_REGISTRY: &str = r#"
import base64, http.server, json, os, sys
root = sys.argv[1]
want = "Basic " + base64.b64encode(b"user:secret").decode()
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def reply(self, code, body=b"", headers=()):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        port = self.server.server_address[1]
        if self.path.startswith("/token?"):
            if self.headers.get("Authorization") != want or "scope=repository" not in self.path:
                return self.reply(401)
            return self.reply(200, json.dumps({"token": "tok-123"}).encode())
        if self.headers.get("Authorization") != "Bearer tok-123":
            challenge = 'Bearer realm="http://127.0.0.1:%d/token",service="test",scope="repository:charts/podinfo:pull"' % port
            return self.reply(401, b"", [("WWW-Authenticate", challenge)])
        path = os.path.join(root, self.path.lstrip("/").replace(":", "_"))
        if not os.path.isfile(path):
            return self.reply(404)
        with open(path, "rb") as f:
            self.reply(200, f.read())
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_token_challenge_is_answered_with_the_basic_credentials() {
    use convoy_sources::oci::{OciAuth, OciClient};
    use std::io::{BufRead, BufReader};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let charts = tmp.path().join("charts");
    std::fs::create_dir_all(&charts).unwrap();
    python(
        "import sys\nfrom helm_python import package\npackage(sys.argv[1], destination=sys.argv[2], version='6.14.1')\n",
        &[corpus().join("charts/podinfo").to_str().unwrap(), charts.to_str().unwrap()],
    );
    let tgz = std::fs::read(charts.join("podinfo-6.14.1.tgz")).unwrap();
    let layer = convoy_artifact::digest_of(&tgz);
    let manifest = format!(
        r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.cncf.helm.config.v1+json","digest":"sha256:{z}","size":2}},"layers":[{{"mediaType":"application/vnd.cncf.helm.chart.content.v1.tar+gzip","digest":"{layer}","size":{}}}]}}"#,
        tgz.len(),
        z = "0".repeat(64)
    );
    let api = tmp.path().join("api/v2/charts/podinfo");
    for d in ["tags", "manifests", "blobs"] {
        std::fs::create_dir_all(api.join(d)).unwrap();
    }
    std::fs::write(api.join("tags/list"), r#"{"name":"charts/podinfo","tags":["6.14.1"]}"#).unwrap();
    std::fs::write(api.join("manifests/6.14.1"), &manifest).unwrap();
    std::fs::write(api.join(format!("blobs/{}", layer.replace(':', "_"))), &tgz).unwrap();
    let mut server = ProcessGuard::spawn(
        "token registry",
        Command::new("python3")
            .args(["-u", "-c", TOKEN_REGISTRY])
            .arg(tmp.path().join("api"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(server.child_mut().stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = format!("oci://127.0.0.1:{}/charts/podinfo", line.trim());
    let auth = tmp.path().join("auth");
    std::fs::write(&auth, "user:secret\n").unwrap();

    let client = OciClient::new(
        &url,
        &OciAuth { basic_auth_file: Some(auth), plain_http: true, ..Default::default() },
    )
    .unwrap();
    assert_eq!(client.tags().await.unwrap(), ["6.14.1"]);
    let m = client.manifest("6.14.1").await.unwrap();
    assert_eq!(m.manifest_digest, convoy_artifact::digest_of(manifest.as_bytes()));
    assert_eq!(m.chart_digest, layer);
    assert_eq!(client.chart(&m).await.unwrap(), tgz);

    // Without credentials the token service refuses: AuthenticationFailed.
    let anonymous = OciClient::new(&url, &OciAuth { plain_http: true, ..Default::default() }).unwrap();
    let e = anonymous.tags().await.unwrap_err();
    assert_eq!(e.reason(), "AuthenticationFailed", "{e}");
    // A pinned digest that is not the manifest's is refused.
    let wrong = format!("sha256:{}", "1".repeat(64));
    std::fs::write(api.join(format!("manifests/{}", wrong.replace(':', "_"))), &manifest).unwrap();
    let e = client.manifest(&wrong).await.unwrap_err();
    assert_eq!(e.reason(), "DigestMismatch", "{e}");
}

/// A registry that pages its tag list as the OCI distribution spec allows
/// (`?n=` and `&last=`, `Link: <…>; rel="next"`), as ghcr.io and Harbor do
/// (Debian's docker-registry 2.8 returns every tag at once, so it cannot test
/// this). With `evil` in the path, the next page points to another host.
const PAGING_REGISTRY: &str = r#"
import http.server, json, urllib.parse
tags = ["6.%d.0" % i for i in range(7)]
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        u = urllib.parse.urlparse(self.path)
        q = urllib.parse.parse_qs(u.query)
        n = int(q.get("n", ["3"])[0])
        last = q.get("last", [None])[0]
        start = tags.index(last) + 1 if last else 0
        page = tags[start:start + n]
        body = json.dumps({"name": "charts/podinfo", "tags": page}).encode()
        self.send_response(200)
        if start + n < len(tags):
            nxt = "%s?n=%d&last=%s" % (u.path, n, page[-1])
            if "evil" in u.path:
                nxt = "http://evil.example" + nxt
            self.send_header("Link", '<%s>; rel="next"' % nxt)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_are_read_page_by_page_and_a_next_page_elsewhere_is_refused() {
    use convoy_sources::oci::{OciAuth, OciClient};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut server = ProcessGuard::spawn(
        "paging registry",
        Command::new("python3").args(["-c", PAGING_REGISTRY]).stdout(Stdio::piped()),
    )
    .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.child_mut().stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let port: u16 = line.trim().parse().unwrap();
    let open = |path: &str| {
        OciClient::new(
            &format!("oci://127.0.0.1:{port}/{path}"),
            &OciAuth { plain_http: true, ..Default::default() },
        )
        .unwrap()
    };
    let all: Vec<String> = (0..7).map(|i| format!("6.{i}.0")).collect();
    // The registry's default page (3 tags), and pages of 2: every tag, once.
    assert_eq!(open("charts/podinfo").tags().await.unwrap(), all);
    assert_eq!(open("charts/podinfo").tags_in_pages(Some(2)).await.unwrap(), all);
    // A next page on another host is refused, naming it (credentials for
    // this registry never go elsewhere).
    let e = open("charts/evil").tags().await.unwrap_err().to_string();
    assert!(e.contains("evil.example") && e.contains("not on this registry"), "{e}");
}
