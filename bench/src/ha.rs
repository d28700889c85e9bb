//! The `ha` area (issue 16): three `convoy hub` replicas on one real etcd
//! (loopback, [`convoy_testsupport::etcd`]) and `--agents N` simulated
//! agents (default 10,000; 300 with `--quick`) spread over them, each with
//! `--bundles B` bundles (default 20; 3 with `--quick`). The agents are the
//! `scale` area's (real mTLS, Sync streams, Ready statuses, acks), plus what
//! real agents do when their hub dies: they reconnect with exponential
//! backoff and full jitter (500 ms .. 60 s, the agent's defaults) to the
//! next address of their list, where an agent whose last statuses were not
//! acknowledged reports its current status again (the real agent replays
//! its outbox). Agent `i` starts on replica `i % 3`.
//! Reported:
//! - a new revision to every agent: p99 from the git commit (then
//!   `Reconcile` on the source-lock holder) to each agent's receipt,
//!   whichever replica it is connected to;
//! - etcd writes per status batch and per revision, from etcd's own metrics
//!   (`/metrics` on its client URL, before/after): write transactions are
//!   the store revisions added (`etcd_debugging_mvcc_current_revision`),
//!   keys put are `etcd_mvcc_put_total`;
//! - etcd's database size for N clusters × B bundles
//!   (`etcd_mvcc_db_total_size_in_bytes` and `..._in_use_in_bytes`), as the
//!   hub leaves it (the hub never compacts) and after a compaction at the
//!   current revision and a defragmentation (etcd's API, as
//!   `--auto-compaction-retention` and `etcdctl defrag` would);
//! - failover, from one kill -9 of the replica that holds the source lock
//!   and a third of the agents: to the next commit signed by another
//!   replica, and to the last of its agents reconnected (snapshot received)
//!   on another replica.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use convoy_bench::hubproc::{Creds, HubOpts, Kill, hub_tls, start_hub_with, workspace_binary_with};
use convoy_bench::report::{Measurement, median, percentile};
use convoy_proto::v1 as pb;
use convoy_testsupport::etcd;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::Ctx;
use crate::hub::{bundle, git, unix_ns};
use crate::scale::{
    REGISTER_CONCURRENCY, Sim, SimAgent, fleet_repo, open, raise_nofile, register, wait_all, write_app,
};

const AREA: &str = "ha";
/// Hub replicas.
const REPLICAS: usize = 3;
/// The etcd key prefix of the replicas.
const PREFIX: &str = "/bench/";
/// The agent's reconnect backoff (its defaults, `agent/src/config.rs`).
const RECONNECT_BASE: Duration = Duration::from_millis(500);
const RECONNECT_CAP: Duration = Duration::from_secs(60);

/// One `convoy hub` replica.
struct Replica {
    hub: Option<Kill>,
    creds: Creds,
    fleet: pb::fleet_client::FleetClient<Channel>,
    /// Its metrics endpoint, `http://127.0.0.1:<port>`.
    metrics: String,
}

/// Commits the live replicas computed again because another replica
/// changed a key they read (`convoy_hub_store_commit_retries_total`, summed).
fn commit_retries(replicas: &[Replica]) -> f64 {
    replicas
        .iter()
        .filter(|r| r.hub.is_some())
        .filter_map(|r| etcd::metrics(&r.metrics).ok())
        .filter_map(|m| etcd::metric(&m, "convoy_hub_store_commit_retries_total"))
        .sum()
}

/// Sync streams the agents opened after their first one.
fn reopened(agents: &[Arc<HaAgent>]) -> u64 {
    agents.iter().map(|a| a.streams.load(Ordering::Acquire).saturating_sub(1)).sum()
}

/// A simulated agent that reconnects.
struct HaAgent {
    state: Arc<Sim>,
    /// Its open stream (None while reconnecting).
    link: parking_lot::Mutex<Option<SimAgent>>,
    /// The replica its stream is on (usize::MAX: none).
    on: AtomicUsize,
    /// Streams opened (1 once connected the first time).
    streams: AtomicU64,
}

/// etcd's counters at one moment.
#[derive(Debug, Clone, Copy)]
struct EtcdCounters {
    /// The store revision: one per write transaction.
    revision: f64,
    /// Keys put.
    puts: f64,
    /// Keys deleted.
    deletes: f64,
}

/// The first of `names` present in etcd's metrics `text` (etcd renamed
/// some `etcd_debugging_mvcc_*` samples to `etcd_mvcc_*` over versions).
fn sample(text: &str, names: &[&str]) -> Option<f64> {
    names.iter().find_map(|n| etcd::metric(text, n))
}

fn counters(url: &str) -> anyhow::Result<EtcdCounters> {
    let m = etcd::metrics(url)?;
    let get =
        |names: &[&str]| sample(&m, names).with_context(|| format!("etcd's /metrics has none of {names:?}"));
    Ok(EtcdCounters {
        revision: get(&["etcd_debugging_mvcc_current_revision"])?,
        puts: get(&["etcd_mvcc_put_total", "etcd_debugging_mvcc_put_total"])?,
        deletes: get(&["etcd_mvcc_delete_total", "etcd_debugging_mvcc_delete_total"])?,
    })
}

/// etcd's database file size and the part of it in use, bytes.
fn db_size(url: &str) -> anyhow::Result<(f64, f64)> {
    let m = etcd::metrics(url)?;
    let total =
        sample(&m, &["etcd_mvcc_db_total_size_in_bytes", "etcd_debugging_mvcc_db_total_size_in_bytes"])
            .context("etcd's /metrics has no database size")?;
    let in_use = sample(&m, &["etcd_mvcc_db_total_size_in_use_in_bytes"]).unwrap_or(total);
    Ok((total, in_use))
}

/// Compact etcd's history at its current revision, then defragment.
fn compact_and_defrag(url: &str) -> anyhow::Result<()> {
    let rev = counters(url)?.revision as i64;
    let r = etcd::gateway(url, "/v3/kv/compaction", &format!("{{\"revision\": {rev}, \"physical\": true}}"));
    if !r.starts_with("HTTP/1.0 200") && !r.starts_with("HTTP/1.1 200") {
        bail!("etcd compaction: {r}");
    }
    let r = etcd::gateway(url, "/v3/maintenance/defragment", "{}");
    if !r.starts_with("HTTP/1.0 200") && !r.starts_with("HTTP/1.1 200") {
        bail!("etcd defragment: {r}");
    }
    Ok(())
}

/// Start replica `k` in `root/r{k}` on etcd `url`; replicas after the
/// first share the first one's CA and signing key.
async fn start_replica(
    convoy: &Path,
    root: &Path,
    k: usize,
    url: &str,
    ttl_s: u64,
    repo: &Path,
    docs: &str,
) -> anyhow::Result<Replica> {
    let dir = root.join(format!("r{k}"));
    std::fs::create_dir_all(&dir)?;
    let mut spec = format!(
        "  store: {{type: etcd, endpoints: [\"{url}\"], prefix: {PREFIX}, leaseTtl: {ttl_s}s, maxTxnBytes: 10485760}}\n"
    );
    if k > 0 {
        let shared = root.join("r0/data");
        spec.push_str(&format!(
            "  tls: {{caCertFile: {}, caKeyFile: {}}}\n  signing: {{keyFile: {}}}\n",
            shared.join("ca.crt").display(),
            shared.join("ca.key").display(),
            shared.join(convoy_artifact::PRIVATE_KEY_FILE).display()
        ));
    }
    // Polled every second, as the HA tests do: the replica that takes the
    // source lock after a failover fetches within a second.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let opts = HubOpts { interval: "1s".into(), spec, metrics_listen: format!("127.0.0.1:{port}") };
    let (hub, creds) = start_hub_with(convoy, &dir, &repo.display().to_string(), docs, &opts).await?;
    let admin = Endpoint::from_shared(creds.hub.clone())?.tls_config(creds.admin_tls())?.connect().await?;
    Ok(Replica {
        hub: Some(hub),
        creds,
        fleet: pb::fleet_client::FleetClient::new(admin),
        metrics: format!("http://127.0.0.1:{port}"),
    })
}

/// Wait until `fleet` serves every bundle of `names` at a generation above
/// `above`.
async fn wait_built(
    fleet: &mut pb::fleet_client::FleetClient<Channel>,
    names: &[String],
    above: u64,
    secs: u64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    for name in names {
        while bundle(fleet, name).await.map(|b| b.generation).unwrap_or(0) <= above {
            if Instant::now() > deadline {
                bail!("bundle {name} is not above generation {above} after {secs} s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Full jitter below an exponential ceiling, as the agent's reconnect.
fn backoff(i: usize, attempt: u32) -> Duration {
    let ceiling = RECONNECT_BASE.saturating_mul(1 << attempt.min(16)).min(RECONNECT_CAP);
    // A cheap per-agent pseudo-random draw (no crypto needed for jitter).
    let x = (unix_ns() ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    Duration::from_nanos((x >> 11) % ceiling.as_nanos().max(1) as u64)
}

/// Agent `i`'s life: a stream to `addrs[first]`; when it ends, back off and
/// try the next address, until `stop`.
#[allow(clippy::too_many_arguments)]
async fn run_agent(
    agent: Arc<HaAgent>,
    addrs: Arc<Vec<String>>,
    first: usize,
    ca: Arc<String>,
    cert: String,
    key: Arc<String>,
    i: usize,
    bundles: usize,
    stop: CancellationToken,
) {
    let epoch = unix_ns() ^ i as u64;
    let mut k = first;
    let mut attempt = 0u32;
    loop {
        let opened = tokio::select! {
            o = open(&addrs[k], &ca, &cert, &key, i, bundles, agent.state.clone(), epoch) => o,
            _ = stop.cancelled() => return,
        };
        if let Ok((link, mut task)) = opened {
            // Statuses the last stream left unacknowledged (the hub closes a
            // stream whose reports it could not store): report again, as the
            // real agent replays its outbox after a reconnect.
            if agent.state.acked.load(Ordering::Acquire) < agent.state.sent.load(Ordering::Acquire) {
                link.report("replayed after a reconnect");
            }
            *agent.link.lock() = Some(link);
            agent.on.store(k, Ordering::Release);
            agent.streams.fetch_add(1, Ordering::AcqRel);
            attempt = 0;
            tokio::select! {
                _ = &mut task => {}
                _ = stop.cancelled() => {
                    task.abort();
                    return;
                }
            }
            agent.on.store(usize::MAX, Ordering::Release);
            *agent.link.lock() = None;
        }
        let wait = backoff(i, attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        k = (k + 1) % addrs.len();
    }
}

fn one(name: String, unit: &str, value: f64, target: &str, pass: Option<bool>) -> Measurement {
    Measurement::from_samples(AREA, &name, unit, &[value], target, pass)
}

/// Agents whose last status is not acked yet.
fn unacked(agents: &[Arc<HaAgent>]) -> usize {
    agents
        .iter()
        .filter(|a| a.state.acked.load(Ordering::Acquire) < a.state.sent.load(Ordering::Acquire))
        .count()
}

/// The area entry point.
pub fn run(
    ctx: Ctx,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Vec<Measurement>>>>> {
    Box::pin(run_inner(ctx))
}

async fn run_inner(ctx: Ctx) -> anyhow::Result<Vec<Measurement>> {
    let n = ctx.agents.unwrap_or(if ctx.quick { 300 } else { 10_000 });
    let nb = ctx.bundles.unwrap_or(if ctx.quick { 3 } else { 20 }).max(1);
    let trials = if ctx.quick { 2 } else { 5 };
    let ttl_s: u64 = if ctx.quick { 2 } else { 10 };
    // This process holds one socket per agent; each replica one per agent
    // it serves (a third, two thirds after the failover).
    let nofile = raise_nofile(n as u64 + 4096);
    if nofile < n as u64 + 1024 {
        bail!("RLIMIT_NOFILE is {nofile}: {n} agents need about {} open files in this process", n + 1024);
    }
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();
    let repo = root.join("repo");
    let (names, docs) = fleet_repo(&repo, nb)?;
    // The hub with the etcd store (feature `etcd`).
    let convoy =
        workspace_binary_with("convoy-cli", "convoy", None, &["convoy-hub/etcd", "convoy-cli/etcd"])?;
    // A quota well above N × B statuses and their history (2 GiB by default).
    let etcd = etcd::Server::start_with(&["--quota-backend-bytes", "8589934592"]);
    eprintln!(
        "ha bench: etcd at {}; {n} agents × {nb} bundles on {REPLICAS} replicas, lease TTL {ttl_s}s",
        etcd.url
    );

    let mut replicas = Vec::new();
    replicas.push(start_replica(&convoy, root, 0, &etcd.url, ttl_s, &repo, &docs).await?);
    wait_built(&mut replicas[0].fleet, &names, 0, 300).await?;
    for k in 1..REPLICAS {
        let mut r = start_replica(&convoy, root, k, &etcd.url, ttl_s, &repo, &docs).await?;
        wait_built(&mut r.fleet, &names, 0, 120).await?;
        replicas.push(r);
    }
    let addrs: Vec<String> = replicas.iter().map(|r| r.creds.hub.clone()).collect();
    let ca = Arc::new(replicas[0].creds.ca.clone());

    // Register every agent (through replica 0: registration is not what
    // this area measures; the `scale` area does).
    let token = replicas[0]
        .fleet
        .create_token(pb::CreateTokenRequest { ttl_seconds: 24 * 3600, ..Default::default() })
        .await?
        .into_inner()
        .token;
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?.pem()?;
    let key_pem = Arc::new(key.serialize_pem());
    let registrar = pb::registration_client::RegistrationClient::new(
        Endpoint::from_shared(addrs[0].clone())?.tls_config(hub_tls(&ca, None))?.connect().await?,
    );
    let t0 = Instant::now();
    let certs: Vec<anyhow::Result<String>> = futures::stream::iter(0..n)
        .map(|i| register(registrar.clone(), token.clone(), csr.clone(), i))
        .buffer_unordered(REGISTER_CONCURRENCY)
        .collect()
        .await;
    let certs: Vec<String> = certs.into_iter().collect::<anyhow::Result<_>>().context("registration")?;
    eprintln!("ha bench: {n} agents registered in {:.1}s", t0.elapsed().as_secs_f64());

    // Connect them, spread over the replicas, and wait for their snapshot
    // and the acks of their first statuses.
    let stop = CancellationToken::new();
    let _stop_on_exit = stop.clone().drop_guard();
    let addrs = Arc::new(addrs);
    let mut agents = Vec::with_capacity(n);
    let t0 = Instant::now();
    for (i, cert) in certs.into_iter().enumerate() {
        let agent = Arc::new(HaAgent {
            state: Sim::new(nb),
            link: parking_lot::Mutex::new(None),
            on: AtomicUsize::new(usize::MAX),
            streams: AtomicU64::new(0),
        });
        agents.push(agent.clone());
        tokio::spawn(run_agent(
            agent,
            addrs.clone(),
            i % REPLICAS,
            ca.clone(),
            cert,
            key_pem.clone(),
            i,
            nb,
            stop.clone(),
        ));
        if i % 256 == 255 {
            // Let the first connections through before starting more.
            tokio::task::yield_now().await;
        }
    }
    wait_all("their snapshot", 900, || {
        agents.iter().filter(|a| a.state.ready.load(Ordering::Acquire) == 0).count()
    })
    .await?;
    wait_all("their statuses acked", 900, || unacked(&agents)).await?;
    let per: Vec<usize> =
        (0..REPLICAS).map(|k| agents.iter().filter(|a| a.on.load(Ordering::Acquire) == k).count()).collect();
    eprintln!(
        "ha bench: {n} agents connected, snapshot and {nb} statuses each acked, in {:.1}s; per replica {per:?}",
        t0.elapsed().as_secs_f64()
    );
    let mut out = Vec::new();

    // etcd writes per status batch: every agent reports once, at once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let c0 = counters(&etcd.url)?;
    let (retries0, reopened0) = (commit_retries(&replicas), reopened(&agents));
    let seqs: Vec<Option<u64>> =
        agents.iter().map(|a| a.link.lock().as_ref().and_then(|l| l.report("ha-storm"))).collect();
    let sent = seqs.iter().filter(|s| s.is_some()).count();
    let t0 = Instant::now();
    wait_all("the ack of their status", 600, || {
        agents
            .iter()
            .zip(&seqs)
            .filter(|(a, s)| s.is_some_and(|s| a.state.acked.load(Ordering::Acquire) < s))
            .count()
    })
    .await?;
    let storm_ms = t0.elapsed().as_secs_f64() * 1e3;
    let c1 = counters(&etcd.url)?;
    let storm_retries = commit_retries(&replicas) - retries0;
    let storm_reopened = reopened(&agents) - reopened0;
    let txns = c1.revision - c0.revision;
    let puts = c1.puts - c0.puts;
    out.push(one(
        format!("status storm: {sent} statuses at once over {REPLICAS} replicas, until the last ack"),
        "ms",
        storm_ms,
        "",
        None,
    ));
    out.push(one(
        format!("etcd write transactions per status batch (group commits; {sent} statuses in {txns:.0})"),
        "statuses/txn",
        sent as f64 / txns.max(1.0),
        "",
        None,
    ));
    out.push(one(
        format!(
            "etcd keys put per status (storm of {sent}; {puts:.0} puts, {:.0} deletes)",
            c1.deletes - c0.deletes
        ),
        "puts/status",
        puts / (sent.max(1)) as f64,
        "",
        None,
    ));
    out.push(one(
        format!(
            "status storm: commits computed again because another replica changed a key they read (all replicas; {storm_reopened} agent streams reopened)"
        ),
        "commits",
        storm_retries,
        "",
        None,
    ));

    // A new revision to every agent, from the commit.
    let mut p99 = Vec::new();
    let mut rev_txns = Vec::new();
    let mut rev_puts = Vec::new();
    let (retries0, reopened0) = (commit_retries(&replicas), reopened(&agents));
    for rev in 1..=trials {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = bundle(&mut replicas[0].fleet, "app").await?.generation;
        let c0 = counters(&etcd.url)?;
        write_app(&repo, rev)?;
        let t0 = unix_ns();
        git(&repo, &["commit", "-q", "-am", &format!("rev {rev}")])?;
        // The holder of the source lock is replica 0 (it started first).
        replicas[0]
            .fleet
            .reconcile(pb::ObjectRef { kind: pb::ObjectKind::Source as i32, name: "repo".into() })
            .await?;
        wait_all("the new generation", 300, || {
            agents.iter().filter(|a| a.state.app_gen.load(Ordering::Acquire) <= before).count()
        })
        .await?;
        let lat = |k: Option<usize>| -> Vec<f64> {
            agents
                .iter()
                .filter(|a| k.is_none_or(|k| a.on.load(Ordering::Acquire) == k))
                .map(|a| a.state.app_ns.load(Ordering::Acquire).saturating_sub(t0) as f64 / 1e6)
                .collect()
        };
        let all = lat(None);
        p99.push(percentile(&all, 99.0));
        eprintln!(
            "ha bench: revision {rev}: p99 {:.0} ms (agents on replica 0, the signer: {:.0} ms; on 1: {:.0} ms; on 2: {:.0} ms)",
            percentile(&all, 99.0),
            percentile(&lat(Some(0)), 99.0),
            percentile(&lat(Some(1)), 99.0),
            percentile(&lat(Some(2)), 99.0)
        );
        wait_all("the ack of their new status", 300, || unacked(&agents)).await?;
        let c1 = counters(&etcd.url)?;
        rev_txns.push(c1.revision - c0.revision);
        rev_puts.push(c1.puts - c0.puts);
    }
    out.push(Measurement::from_samples(
        AREA,
        &format!(
            "new revision to every agent, p99 ({n} agents on {REPLICAS} replicas; git commit to receipt)"
        ),
        "ms",
        &p99,
        "p99 < 1000 ms",
        Some(median(&p99) < 1000.0),
    ));
    let stated = |name: String, unit: &str, samples: &[f64]| {
        Measurement::from_samples(AREA, &name, unit, samples, "", None)
    };
    out.push(stated(
        format!("etcd write transactions per revision (the generation, then {n} × 1 statuses acked)"),
        "txns",
        &rev_txns,
    ));
    out.push(stated(format!("etcd keys put per revision ({n} agents)"), "puts", &rev_puts));
    out.push(one(
        format!(
            "revisions: commits computed again over {trials} revisions (all replicas; {} agent streams reopened)",
            reopened(&agents) - reopened0
        ),
        "commits",
        commit_retries(&replicas) - retries0,
        "",
        None,
    ));

    // etcd's database for N clusters × B bundles.
    let (total, in_use) = db_size(&etcd.url)?;
    compact_and_defrag(&etcd.url)?;
    let (total_c, in_use_c) = db_size(&etcd.url)?;
    let mib = |b: f64| b / (1 << 20) as f64;
    out.push(one(
        format!(
            "etcd database, {n} clusters × {nb} bundles, as the hub leaves it (file; {:.1} MiB in use)",
            mib(in_use)
        ),
        "MiB",
        mib(total),
        "",
        None,
    ));
    out.push(one(
        format!(
            "etcd database, {n} clusters × {nb} bundles, after compaction + defrag (in use {:.1} MiB)",
            mib(in_use_c)
        ),
        "MiB",
        mib(total_c),
        "",
        None,
    ));
    out.push(one(
        format!("etcd database per cluster × bundle, after compaction + defrag ({n} × {nb})"),
        "bytes",
        total_c / (n * nb).max(1) as f64,
        "",
        None,
    ));

    // Failover: kill -9 of replica 0 (the source-lock holder, with a third
    // of the agents), then a commit.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = bundle(&mut replicas[1].fleet, "app").await?.generation;
    let orphans: Vec<(Arc<HaAgent>, u64)> = agents
        .iter()
        .filter(|a| a.on.load(Ordering::Acquire) == 0)
        .map(|a| (a.clone(), a.state.snapshots.load(Ordering::Acquire)))
        .collect();
    let hub0 = replicas[0].hub.take().context("replica 0 runs")?;
    hub0.0.signal(9);
    let killed = Instant::now();
    let killed_ns = unix_ns();
    write_app(&repo, trials + 1)?;
    git(&repo, &["commit", "-q", "-am", "after the kill"])?;
    let mut signed_after = None;
    let mut reconnected_after = None;
    let deadline = killed + Duration::from_secs(ttl_s * 3 + 120);
    while signed_after.is_none() || reconnected_after.is_none() {
        if Instant::now() > deadline {
            bail!(
                "failover: after {:?}, next commit signed: {signed_after:?}; agents of the dead replica reconnected: {reconnected_after:?}",
                killed.elapsed()
            );
        }
        if signed_after.is_none() {
            for r in replicas.iter_mut().skip(1) {
                if bundle(&mut r.fleet, "app").await.map(|b| b.generation).unwrap_or(0) > before {
                    signed_after = Some(killed.elapsed());
                }
            }
        }
        if reconnected_after.is_none()
            && orphans.iter().all(|(a, s)| a.state.snapshots.load(Ordering::Acquire) > *s)
        {
            let last = orphans
                .iter()
                .map(|(a, _)| a.state.snapshot_ns.load(Ordering::Acquire))
                .max()
                .unwrap_or(killed_ns);
            reconnected_after = Some(Duration::from_nanos(last.saturating_sub(killed_ns)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(hub0);
    let (signed, reconnected) = (signed_after.unwrap_or_default(), reconnected_after.unwrap_or_default());
    out.push(one(
        format!("failover: kill -9 of the source-lock holder to the next commit signed by another replica (lease TTL {ttl_s}s, poll 1s)"),
        "ms",
        signed.as_secs_f64() * 1e3,
        &format!("< {ttl_s} s + poll"),
        Some(signed < Duration::from_secs(ttl_s + 2)),
    ));
    out.push(one(
        format!(
            "failover: kill -9 of a replica to the last of its {} agents reconnected elsewhere (backoff 500 ms..60 s, full jitter)",
            orphans.len()
        ),
        "ms",
        reconnected.as_secs_f64() * 1e3,
        "",
        None,
    ));
    // And the commit reaches every agent, wherever it is now.
    wait_all("the commit made after the kill", 300, || {
        agents.iter().filter(|a| a.state.app_gen.load(Ordering::Acquire) <= before).count()
    })
    .await?;
    eprintln!(
        "ha bench: the commit made after the kill reached all {n} agents {:.1}s after the kill",
        killed.elapsed().as_secs_f64()
    );
    stop.cancel();
    drop(agents);
    drop(replicas);
    drop(etcd);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_are_full_jitter_below_an_exponential_ceiling_capped_at_60_s() {
        for attempt in 0..40u32 {
            let ceiling = RECONNECT_BASE.saturating_mul(1 << attempt.min(16)).min(RECONNECT_CAP);
            for i in 0..50 {
                assert!(backoff(i, attempt) < ceiling, "agent {i}, attempt {attempt}");
            }
        }
        // Spread: the first retries of many agents do not all land together.
        let first: std::collections::BTreeSet<u128> = (0..50).map(|i| backoff(i, 0).as_millis()).collect();
        assert!(first.len() > 10, "{first:?}");
    }

    #[test]
    fn an_etcd_sample_is_read_under_its_current_or_older_name() {
        let text = "etcd_debugging_mvcc_put_total 7\netcd_debugging_mvcc_current_revision 12\n";
        assert_eq!(sample(text, &["etcd_mvcc_put_total", "etcd_debugging_mvcc_put_total"]), Some(7.0));
        let text = "etcd_mvcc_put_total 9\netcd_debugging_mvcc_put_total 7\n";
        assert_eq!(sample(text, &["etcd_mvcc_put_total", "etcd_debugging_mvcc_put_total"]), Some(9.0));
        assert_eq!(sample(text, &["etcd_mvcc_txn_total"]), None);
    }
}
