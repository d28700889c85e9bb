//! The workspace binaries a benchmark runs (`convoy`, `convoy-agent`), and
//! talking to a `convoy hub` process it started: its admin credentials file
//! and TLS settings for the hub's gRPC port.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use convoy_testsupport::ProcessGuard;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// A workspace binary built (or brought up to date: cargo does nothing when
/// it is) with the benchmark's own profile, or with `profile` when the
/// benchmark runs optimized, so a benchmark never measures a stale binary.
pub fn workspace_binary(package: &str, bin: &str, profile: Option<&str>) -> anyhow::Result<PathBuf> {
    workspace_binary_with(package, bin, profile, &[])
}

/// [`workspace_binary`] with cargo `features` (e.g. `convoy-hub/etcd`). With
/// features, the build names the whole workspace (`--workspace --bin`), as
/// scripts/test.sh does, so cargo unifies features as for that build and
/// reuses its dependencies instead of building them again.
pub fn workspace_binary_with(
    package: &str,
    bin: &str,
    profile: Option<&str>,
    features: &[&str],
) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or_else(|| anyhow!("no exe dir"))?;
    let release = exe.to_string_lossy().contains("/release/");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    if features.is_empty() {
        cmd.args(["build", "--quiet", "-p", package, "--bin", bin]);
    } else {
        cmd.args(["build", "--quiet", "--workspace", "--bin", bin, "--features", &features.join(",")]);
    }
    let path = match (release, profile) {
        (true, Some(p)) => {
            cmd.args(["--profile", p]);
            dir.parent().ok_or_else(|| anyhow!("no target dir"))?.join(p).join(bin)
        }
        (true, None) => {
            cmd.arg("--release");
            dir.join(bin)
        }
        (false, _) => dir.join(bin),
    };
    if !cmd.status()?.success() {
        bail!("cannot build {bin}");
    }
    Ok(path)
}

/// A child process: its [`ProcessGuard`] ends it and its process group
/// when dropped, on panic and on Ctrl-C.
pub struct Kill(pub ProcessGuard);

/// Start `convoy` (the binary) as a hub in `dir`: `dir/hub.yaml` with
/// loopback listeners on free ports, data in `dir/data`, the GitSource `repo`
/// at `repo_url` polled hourly (so only webhooks and Reconcile fetch), then
/// `bundles` (Bundle documents, each starting with `---`). Returns the
/// process and its admin credentials once the hub has written them.
pub async fn start_hub(
    convoy: &Path,
    dir: &Path,
    repo_url: &str,
    bundles: &str,
) -> anyhow::Result<(Kill, Creds)> {
    start_hub_with_metrics(convoy, dir, repo_url, bundles, "127.0.0.1:0").await
}

/// [`start_hub`] with the metrics port on `metrics_listen` (to scrape it).
pub async fn start_hub_with_metrics(
    convoy: &Path,
    dir: &Path,
    repo_url: &str,
    bundles: &str,
    metrics_listen: &str,
) -> anyhow::Result<(Kill, Creds)> {
    let opts = HubOpts { metrics_listen: metrics_listen.into(), ..Default::default() };
    start_hub_with(convoy, dir, repo_url, bundles, &opts).await
}

/// What a benchmark changes in the hub's config ([`start_hub_with`]).
#[derive(Debug, Clone)]
pub struct HubOpts {
    /// `metrics.listen` (`127.0.0.1:0` by default).
    pub metrics_listen: String,
    /// The GitSource's poll interval (`1h` by default: only webhooks and
    /// Reconcile fetch).
    pub interval: String,
    /// More lines of the HubConfig `spec`, each indented by two spaces and
    /// ending with a newline (e.g. `  store: {type: etcd, ...}\n`).
    pub spec: String,
}

impl Default for HubOpts {
    fn default() -> Self {
        HubOpts { metrics_listen: "127.0.0.1:0".into(), interval: "1h".into(), spec: String::new() }
    }
}

/// [`start_hub`] with `opts`.
pub async fn start_hub_with(
    convoy: &Path,
    dir: &Path,
    repo_url: &str,
    bundles: &str,
    opts: &HubOpts,
) -> anyhow::Result<(Kill, Creds)> {
    let HubOpts { metrics_listen, interval, spec } = opts;
    let cfg = dir.join("hub.yaml");
    std::fs::write(
        &cfg,
        format!(
            "apiVersion: convoy.dev/v1\nkind: HubConfig\nspec:\n  dataDir: data\n  grpc: {{listen: \"127.0.0.1:0\"}}\n  http: {{listen: \"127.0.0.1:0\"}}\n  metrics: {{listen: \"{metrics_listen}\"}}\n{spec}\
---\napiVersion: convoy.dev/v1\nkind: GitSource\nmetadata: {{name: repo}}\nspec: {{url: \"{repo_url}\", interval: {interval}}}\n{bundles}"
        ),
    )?;
    // Its scratch dirs (kustomize renders) under `dir`, removed with it.
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    // A profiling wrapper (`CONVOY_BENCH_HUB_WRAP="heaptrack -o /tmp/hub"`):
    // the hub runs under it. The RSS figures the areas print are then the
    // wrapper's, not the hub's: use it to find where memory goes, not to
    // measure how much.
    let wrap = std::env::var("CONVOY_BENCH_HUB_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut cmd = match words.next() {
        Some(w) => {
            let mut c = Command::new(w);
            c.args(words).arg(convoy);
            c
        }
        None => Command::new(convoy),
    };
    let hub = Kill(
        ProcessGuard::spawn(
            "convoy hub",
            cmd.args(["hub", "--config"])
                .arg(&cfg)
                .current_dir(dir)
                .env("CONVOY_LOG", "warn")
                .env("TMPDIR", &tmp),
        )
        .context("start convoy hub")?,
    );
    let creds = Creds::wait_for(&dir.join("data/admin-credentials.yaml")).await?;
    Ok((hub, creds))
}

/// The admin credentials a hub writes to `<dataDir>/admin-credentials.yaml`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Creds {
    /// The gRPC endpoint.
    pub hub: String,
    /// The hub CA (PEM).
    pub ca: String,
    /// The admin certificate (PEM).
    pub cert: String,
    /// Its key (PEM).
    pub key: String,
}

impl Creds {
    /// Wait (at most 60 s) until a starting hub has written `file` in full,
    /// then read it.
    pub async fn wait_for(file: &Path) -> anyhow::Result<Creds> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(text) = std::fs::read_to_string(file)
                && let Ok(creds) = serde_saphyr::from_str::<Creds>(&text)
            {
                return Ok(creds);
            }
            if Instant::now() > deadline {
                bail!("the hub did not write {} within 60 s", file.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// TLS to the hub as the operator.
    pub fn admin_tls(&self) -> ClientTlsConfig {
        hub_tls(&self.ca, Some((&self.cert, &self.key)))
    }
}

/// TLS to a hub whose certificate names `localhost`, with a client identity
/// (certificate and key PEM) when given.
pub fn hub_tls(ca: &str, identity: Option<(&str, &str)>) -> ClientTlsConfig {
    let mut t = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    if let Some((c, k)) = identity {
        t = t.identity(Identity::from_pem(c, k));
    }
    t
}

/// A free loopback port (bound, then released), for a listener the
/// benchmark must know in advance.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Scrape `http://127.0.0.1:<port>/metrics` and return the value of the
/// sample named `name` (no labels), if present.
pub fn scrape(port: u16, name: &str) -> anyhow::Result<Option<f64>> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    }))
}
