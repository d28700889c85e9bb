//! A reusable fleet harness for end-to-end tests and benchmarks: a real git
//! server (`git daemon`) with a repository made from `examples/`, a hub (the
//! real `convoy hub` process or in-process), kube-sim clusters with a real
//! in-process agent each (optionally behind a TCP proxy that can be cut), a
//! local alert receiver, and the queries the scenarios assert on.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use convoy_e2e::{Fleet, FleetOptions};
//! let fleet = Fleet::start(FleetOptions::default()).await?;   // staging, prod-eu, prod-us
//! let converged = fleet.wait_converged(120).await;             // every targeted cell Ready
//! fleet.repo.write("apps/web/base/deployment.yaml", "...")?;
//! fleet.repo.commit("bump")?;
//! fleet.push().await?;                                          // git push + signed webhook
//! fleet.shutdown().await;
//! # Ok(()) }
//! ```

pub mod cluster;
pub mod examples;
pub mod fleet;
pub mod git;
pub mod helmview;
pub mod hub;
pub mod proxy;
pub mod receiver;
pub mod tmpfs;
pub mod wire;

use std::future::Future;
use std::time::{Duration, Instant};

pub use cluster::{Cluster, ClusterSpec};
pub use fleet::{Fleet, FleetOptions};
pub use git::{GitDaemon, GitRepo};
pub use hub::{HubMode, HubRunner};
pub use proxy::CutProxy;
pub use receiver::AlertReceiver;
pub use tmpfs::Tmpfs;

/// The rustls provider (ring) and a test log subscriber (`CONVOY_TEST_LOG`,
/// default `warn`). Call at the start of every test; repeated calls are fine.
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CONVOY_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Poll `f` every 50 ms until it returns `Some`, or panic naming `what`
/// after `secs` seconds (with the last observation when `f` gives one).
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; the caller binds it
/// next, and the OS does not hand it out again at once).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// `main@sha1:<40 hex>` -> the commit.
pub fn commit_of(revision: &str) -> &str {
    revision.rsplit_once("@sha1:").map(|(_, c)| c).unwrap_or(revision)
}
