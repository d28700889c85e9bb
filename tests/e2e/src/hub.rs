//! The hub under test: the real `convoy hub --config` process (which a test
//! can SIGKILL and restart on the same data dir), or the same config started
//! in-process with `Hub::start`. Either way it reads a `HubConfig` file with
//! fixed loopback ports and its fleet documents from a directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use convoy_cli::cmd_fleet::{Conn, FleetClient, connect};
use convoy_hub::{Hub, HubConfig, HubHandle, HubOptions};
use convoy_proto::v1 as pb;
use convoy_testsupport::ProcessGuard;

/// How the hub runs.
#[derive(Debug, Clone)]
pub enum HubMode {
    /// `Hub::start` in the test's runtime.
    InProcess,
    /// The `convoy` binary at this path, as `convoy hub --config FILE`.
    Process(PathBuf),
}

/// A hub with a config file, a data dir and fixed ports.
pub struct HubRunner {
    /// Holds `hub.yaml`, `data/`, `fleet/` and the process logs.
    pub dir: PathBuf,
    /// The HubConfig file.
    pub config: PathBuf,
    /// The data dir.
    pub data_dir: PathBuf,
    /// The fleet documents directory (reloaded live).
    pub fleet_dir: PathBuf,
    /// The gRPC (TLS) address.
    pub grpc_addr: SocketAddr,
    /// The HTTP address (webhooks, health).
    pub http_addr: SocketAddr,
    mode: HubMode,
    inproc: Option<HubHandle>,
    /// The hub process; its guard ends it (and anything it started) on drop.
    child: Option<ProcessGuard>,
    starts: u32,
    /// A tmpfs mounted on the data dir (full-disk scenarios); after `child`,
    /// so that the hub is gone before it is unmounted.
    tmpfs: Option<crate::Tmpfs>,
}

impl HubRunner {
    /// Write `dir/hub.yaml` (fleet documents are read from `dir/fleet`) and start the hub.
    pub async fn start(dir: &Path, mode: HubMode) -> Result<HubRunner> {
        HubRunner::start_with(dir, mode, None).await
    }

    /// Like [`HubRunner::start`], with the data dir on a tmpfs of
    /// `data_tmpfs` bytes when given (mounted before the hub starts; the
    /// test fails if it cannot be mounted).
    pub async fn start_with(dir: &Path, mode: HubMode, data_tmpfs: Option<u64>) -> Result<HubRunner> {
        let fleet_dir = dir.join("fleet");
        std::fs::create_dir_all(&fleet_dir)?;
        let (grpc, http, metrics) = (crate::free_port(), crate::free_port(), crate::free_port());
        let config = dir.join("hub.yaml");
        std::fs::write(
            &config,
            format!(
                "apiVersion: convoy.dev/v1\nkind: HubConfig\nspec:\n  dataDir: data\n  grpc: {{listen: \"127.0.0.1:{grpc}\"}}\n  http: {{listen: \"127.0.0.1:{http}\"}}\n  metrics: {{listen: \"127.0.0.1:{metrics}\"}}\n  fleet: {{paths: [fleet], reloadInterval: 500ms}}\n  alerts: {{hubName: e2e-hub, backoffBase: 200ms, backoffMax: 2s}}\n"
            ),
        )?;
        let mut hub = HubRunner {
            dir: dir.to_path_buf(),
            config,
            data_dir: dir.join("data"),
            fleet_dir,
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], grpc)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], http)),
            mode,
            inproc: None,
            child: None,
            starts: 0,
            tmpfs: None,
        };
        if let Some(bytes) = data_tmpfs {
            hub.tmpfs = Some(crate::Tmpfs::mount(&hub.data_dir, bytes)?);
        }
        hub.launch().await?;
        Ok(hub)
    }

    async fn launch(&mut self) -> Result<()> {
        self.starts += 1;
        match &self.mode {
            HubMode::InProcess => {
                let cfg = HubConfig::from_file(&self.config)?;
                self.inproc = Some(Hub::start(cfg, HubOptions::default()).await?);
            }
            HubMode::Process(bin) => {
                let log = std::fs::File::create(self.dir.join(format!("hub-{}.log", self.starts)))?;
                // Its scratch dirs (kustomize renders) under the test's own
                // directory: a SIGKILL mid-render leaves nothing in /tmp.
                let tmp = self.dir.join("tmp");
                std::fs::create_dir_all(&tmp)?;
                let child = ProcessGuard::spawn(
                    "convoy hub",
                    Command::new(bin)
                        .arg("hub")
                        .arg("--config")
                        .arg(&self.config)
                        .env("CONVOY_LOG", "info")
                        .env("TMPDIR", &tmp)
                        .stdin(Stdio::null())
                        .stdout(log.try_clone()?)
                        .stderr(log),
                )
                .with_context(|| format!("spawn {} hub", bin.display()))?;
                self.child = Some(child);
            }
        }
        // Ready when an operator call answers.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("the hub exited at start ({status}); log:\n{}", self.log_tail());
            }
            if self.credentials().exists()
                && let Ok(mut admin) = self.admin().await
                && admin.list_clusters(pb::ListClustersRequest::default()).await.is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the hub did not answer within 60 s; log:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of the current hub process log.
    pub fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("hub-{}.log", self.starts))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `https://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.grpc_addr)
    }

    /// The webhook URL of a GitSource.
    pub fn webhook_url(&self, source: &str) -> String {
        format!("http://{}/hooks/{source}", self.http_addr)
    }

    /// `admin-credentials.yaml` in the data dir (what `convoy --credentials` reads).
    pub fn credentials(&self) -> PathBuf {
        self.data_dir.join("admin-credentials.yaml")
    }

    /// The hub CA agents pin.
    pub fn ca_file(&self) -> PathBuf {
        self.data_dir.join("ca.crt")
    }

    /// The statement keys agents trust.
    pub fn trusted_keys_file(&self) -> PathBuf {
        self.data_dir.join("trusted-keys.pem")
    }

    /// An operator client (admin certificate from the credentials file).
    pub async fn admin(&self) -> Result<FleetClient> {
        let conn =
            Conn::from_credentials(self.credentials(), convoy_core::duration::HumanDuration::from_secs(5));
        connect(&conn).await.map_err(|f| anyhow::anyhow!("connect to the hub: {}", f.message))
    }

    /// The in-process hub, if it runs in-process.
    pub fn handle(&self) -> Option<&HubHandle> {
        self.inproc.as_ref()
    }

    /// The process id of the hub process, if it runs as one.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The tmpfs under the data dir, if the hub was started with one.
    pub fn tmpfs(&self) -> Option<&crate::Tmpfs> {
        self.tmpfs.as_ref()
    }

    /// The hub process's exit status if it has exited (None while it runs,
    /// or when it runs in-process or is stopped).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL the hub process: no drain, no flush, nothing after this instant.
    pub fn kill(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { bail!("only a hub process can be killed") };
        child.kill().context("SIGKILL the hub")?;
        Ok(())
    }

    /// Start the hub again on the same data dir and ports.
    pub async fn restart(&mut self) -> Result<()> {
        if self.child.is_some() || self.inproc.is_some() {
            bail!("the hub is still running");
        }
        self.launch().await
    }

    /// Drain the hub (SIGTERM for a process, at most 20 s, then SIGKILL).
    pub async fn shutdown(&mut self) {
        if let Some(h) = self.inproc.take() {
            let _ = h.shutdown().await;
        }
        if let Some(mut child) = self.child.take() {
            child.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Whatever is left of its process group ends with the guard.
            let _ = child.kill();
        }
    }
}
