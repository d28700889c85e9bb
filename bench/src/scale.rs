//! The 100k-agent load generator: one `convoy hub` process and `--agents N`
//! lightweight simulated agents in this one (default 100,000; 500 with
//! `--quick`). Each agent is a real cluster: registered with a token (one
//! shared key pair and CSR, so the generator spends no CPU on key
//! generation), a real mTLS channel with small buffers, a real Sync stream
//! that records its generation of bundle `app`, reports a Ready status for
//! it and tracks the hub's acks; no Kubernetes. Agents spread over source
//! addresses 127.0.0.2.. so that N connections do not exhaust one address's
//! ephemeral ports. Reported:
//! - registration of the N new agents at once: agents/s and failures;
//! - idle hub memory per connected agent (RSS delta / N);
//! - a new revision to every agent: p99 from commit + Reconcile to receipt;
//! - a status storm (every agent reports at once): statuses not acked
//!   (lost), time until the last ack, and the hub's peak RSS (VmHWM);
//! - for the cost model (docs/benchmarks.md): the hub's CPU time (user +
//!   system, from /proc) per registration, per connect, per status, per
//!   agent per revision and while idle, and the store's size on disk.
//!
//! `--bundles B` gives every agent B bundles (`app`, `b1`..): each agent
//! reports a Ready status for each bundle it receives, so per-cluster state
//! and store size grow with B as in a real fleet.
//!
//! Limits met on the way (open files, memory) are printed, not hidden.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use convoy_bench::hubproc::{hub_tls, start_hub, workspace_binary};
use convoy_bench::report::{Measurement, median, percentile};
use convoy_proto::v1 as pb;
use convoy_proto::v1::agent_message::Msg as In;
use convoy_proto::v1::hub_message::Msg as Out;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::Ctx;
use crate::hub::{bundle, git, rss_kib, unix_ns};

const AREA: &str = "scale";
/// Connections per source address (below the 28k default ephemeral ports).
const PER_ADDRESS: usize = 20_000;
/// Registrations in flight at once.
pub(crate) const REGISTER_CONCURRENCY: usize = 1024;

/// One agent's state, shared with its stream task.
#[derive(Default)]
pub(crate) struct Sim {
    /// Highest generation of `app` received, and when (unix ns).
    pub(crate) app_gen: AtomicU64,
    pub(crate) app_ns: AtomicU64,
    /// Highest generation received of each other bundle `b1`.. (index i-1).
    pub(crate) others: Box<[AtomicU64]>,
    /// The snapshot arrived.
    pub(crate) ready: AtomicU64,
    /// Snapshots received over all of the agent's streams, and when the
    /// last one arrived (unix ns): a reconnected agent (the `ha` area) has
    /// one more.
    pub(crate) snapshots: AtomicU64,
    pub(crate) snapshot_ns: AtomicU64,
    /// Next outbox sequence number to use.
    seq: AtomicU64,
    /// Highest seq acknowledged by the hub.
    pub(crate) acked: AtomicU64,
    /// Highest seq actually sent (a full queue drops a status).
    pub(crate) sent: AtomicU64,
}

impl Sim {
    /// A fresh agent with `bundles` bundles (`app`, `b1`..).
    pub(crate) fn new(bundles: usize) -> Arc<Sim> {
        Arc::new(Sim { others: (1..bundles).map(|_| AtomicU64::new(0)).collect(), ..Default::default() })
    }
}

pub(crate) struct SimAgent {
    pub(crate) state: Arc<Sim>,
    tx: mpsc::Sender<pb::AgentMessage>,
}

impl SimAgent {
    /// Report `app` at its current generation with `message`; returns the seq.
    pub(crate) fn report(&self, message: &str) -> Option<u64> {
        let seq = self.state.seq.fetch_add(1, Ordering::AcqRel) + 1;
        let status = pb::BundleStatus {
            bundle: "app".into(),
            generation: self.state.app_gen.load(Ordering::Acquire),
            phase: pb::Phase::Ready as i32,
            message: message.into(),
            ..Default::default()
        };
        let msg = pb::AgentMessage { msg: Some(In::Status(pb::StatusReport { seq, status: Some(status) })) };
        self.tx.try_send(msg).ok().map(|_| {
            self.state.sent.fetch_max(seq, Ordering::AcqRel);
            seq
        })
    }
}

/// Bundle `b{i}`: a ConfigMap of its own, written once.
pub(crate) fn write_other(repo: &Path, i: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(repo.join(format!("b{i}")))?;
    std::fs::write(
        repo.join(format!("b{i}/cm.yaml")),
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b{i}\n  namespace: default\ndata:\n  i: \"{i}\"\n"
        ),
    )?;
    Ok(())
}

/// A git repository at `repo` with bundle `app` (revision 0) and `b1`..
/// (`bundles` in all), committed; returns the bundle names and their Bundle
/// documents, each targeting every cluster.
pub(crate) fn fleet_repo(repo: &Path, bundles: usize) -> anyhow::Result<(Vec<String>, String)> {
    std::fs::create_dir_all(repo)?;
    git(repo, &["init", "-q", "-b", "main"])?;
    write_app(repo, 0)?;
    for i in 1..bundles {
        write_other(repo, i)?;
    }
    git(repo, &["add", "-A"])?;
    git(repo, &["commit", "-q", "-m", "init"])?;
    let names: Vec<String> =
        std::iter::once("app".to_string()).chain((1..bundles).map(|i| format!("b{i}"))).collect();
    let docs = names
        .iter()
        .map(|b| {
            format!(
                "---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata: {{name: {b}}}\nspec: {{source: repo, path: {b}, targets: [{{clusterSelector: {{}}}}]}}\n"
            )
        })
        .collect();
    Ok((names, docs))
}

/// The hub's CPU time so far (user + system), in seconds.
pub(crate) fn cpu_s(pid: u32) -> anyhow::Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = s.rsplit_once(") ").map(|(_, r)| r).ok_or_else(|| anyhow!("bad /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz.max(1.0))
}

/// Bytes under `dir`, recursively (the hub's data directory).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

pub(crate) fn write_app(repo: &Path, n: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(repo.join("app"))?;
    std::fs::write(
        repo.join("app/cm.yaml"),
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n  namespace: default\ndata:\n  rev: \"{n}\"\n"
        ),
    )?;
    Ok(())
}

/// Raise the open-files limit (soft and, as root, hard) towards `want`;
/// returns what we got. The hub child inherits it.
pub(crate) fn raise_nofile(want: u64) -> u64 {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        if r.rlim_max < want {
            let up = libc::rlimit { rlim_cur: want, rlim_max: want };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &up) == 0 {
                return want;
            }
        }
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        r.rlim_cur
    }
}

fn hwm_kib(pid: u32) -> anyhow::Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).ok_or_else(|| anyhow!("no VmHWM"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

/// Register agent `i`; returns its certificate.
pub(crate) async fn register(
    mut registrar: pb::registration_client::RegistrationClient<Channel>,
    token: String,
    csr: String,
    i: usize,
) -> anyhow::Result<String> {
    let r = registrar
        .register(pb::RegisterRequest {
            token,
            cluster_name: format!("s{i:06}"),
            labels: Default::default(),
            csr_pem: csr,
            agent_version: "bench-scale/1".into(),
        })
        .await?
        .into_inner();
    Ok(r.certificate_pem)
}

/// Connect agent `i` with its certificate and open its Sync stream.
pub(crate) async fn connect(
    endpoint: &str,
    ca: &str,
    cert: &str,
    key: &str,
    i: usize,
    bundles: usize,
) -> anyhow::Result<SimAgent> {
    let epoch = unix_ns() ^ i as u64;
    Ok(open(endpoint, ca, cert, key, i, bundles, Sim::new(bundles), epoch).await?.0)
}

/// Open one Sync stream for agent `i` (outbox epoch `epoch`) that records
/// what it receives in `state`; the task returned ends with the stream (the
/// `ha` area reconnects then, with the same state and epoch).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn open(
    endpoint: &str,
    ca: &str,
    cert: &str,
    key: &str,
    i: usize,
    bundles: usize,
    state: Arc<Sim>,
    epoch: u64,
) -> anyhow::Result<(SimAgent, tokio::task::JoinHandle<()>)> {
    let local =
        IpAddr::V4(Ipv4Addr::new(127, 0, (i / PER_ADDRESS / 250) as u8, 2 + (i / PER_ADDRESS % 250) as u8));
    let ch = Endpoint::from_shared(endpoint.to_string())?
        .tls_config(hub_tls(ca, Some((cert, key))))?
        .local_address(Some(local))
        .buffer_size(Some(4))
        .initial_stream_window_size(Some(64 << 10))
        .initial_connection_window_size(Some(64 << 10))
        .connect()
        .await?;
    let mut client = pb::agent_client::AgentClient::new(ch);
    // Room for one status per bundle of a snapshot or update, plus heartbeats.
    let (tx, rx) = mpsc::channel(4 + bundles);
    tx.send(pb::AgentMessage {
        msg: Some(In::Hello(pb::Hello {
            agent_version: "bench-scale/1".into(),
            outbox_epoch: epoch,
            ..Default::default()
        })),
    })
    .await?;
    let mut stream = client.sync(ReceiverStream::new(rx)).await?.into_inner();
    let agent = SimAgent { state: state.clone(), tx: tx.clone() };
    let task = tokio::spawn(async move {
        let mut hb = tokio::time::interval(Duration::from_secs(15));
        hb.tick().await;
        loop {
            tokio::select! {
                _ = hb.tick() => {
                    let _ = tx.try_send(pb::AgentMessage { msg: Some(In::Heartbeat(pb::Heartbeat { time_unix_ms: 0 })) });
                }
                m = stream.message() => {
                    let Ok(Some(m)) = m else { return };
                    let list = match m.msg {
                        Some(Out::Snapshot(s)) => {
                            state.ready.store(1, Ordering::Release);
                            state.snapshot_ns.store(unix_ns(), Ordering::Release);
                            state.snapshots.fetch_add(1, Ordering::AcqRel);
                            s.bundles
                        }
                        Some(Out::Update(u)) => u.upserts,
                        Some(Out::Ack(a)) => { state.acked.fetch_max(a.acked_seq, Ordering::AcqRel); continue }
                        Some(Out::RunTests(_)) | None => continue,
                    };
                    for b in &list {
                        let slot = if b.name == "app" {
                            &state.app_gen
                        } else {
                            match b.name.strip_prefix('b').and_then(|i| i.parse::<usize>().ok()).and_then(|i| state.others.get(i.wrapping_sub(1))) {
                                Some(slot) => slot,
                                None => continue,
                            }
                        };
                        if b.generation <= slot.load(Ordering::Acquire) {
                            continue;
                        }
                        if b.name == "app" {
                            state.app_ns.store(unix_ns(), Ordering::Release);
                        }
                        slot.store(b.generation, Ordering::Release);
                        let seq = state.seq.fetch_add(1, Ordering::AcqRel) + 1;
                        let status = pb::BundleStatus { bundle: b.name.clone(), generation: b.generation, digest: b.digest.clone(), phase: pb::Phase::Ready as i32, ..Default::default() };
                        // A full queue drops the status: the storm below counts that, and an
                        // unsent status at connect only lowers the store size measured.
                        if tx.try_send(pb::AgentMessage { msg: Some(In::Status(pb::StatusReport { seq, status: Some(status) })) }).is_ok() {
                            state.sent.fetch_max(seq, Ordering::AcqRel);
                        }
                    }
                }
            }
        }
    });
    Ok((agent, task))
}

pub(crate) async fn wait_all(
    what: &str,
    secs: u64,
    mut missing: impl FnMut() -> usize,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    loop {
        let m = missing();
        if m == 0 {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(secs) {
            bail!("{m} agents still missing {what} after {secs} s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn one(name: String, unit: &str, value: f64, target: &str, pass: Option<bool>) -> Measurement {
    Measurement::from_samples(AREA, &name, unit, &[value], target, pass)
}

/// The area entry point.
pub fn run(
    ctx: Ctx,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Vec<Measurement>>>>> {
    Box::pin(run_inner(ctx))
}

async fn run_inner(ctx: Ctx) -> anyhow::Result<Vec<Measurement>> {
    let n = ctx.agents.unwrap_or(if ctx.quick { 500 } else { 100_000 });
    let nb = ctx.bundles.unwrap_or(1).max(1);
    let trials = if ctx.quick { 2 } else { 5 };
    let nofile = raise_nofile(n as u64 + 4096);
    if nofile < n as u64 + 1024 {
        eprintln!(
            "scale bench: RLIMIT_NOFILE is {nofile}: each agent holds one socket here and one in the hub, \
             so at most ~{} agents fit (the limit this run hits)",
            nofile.saturating_sub(1024)
        );
    }
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let repo = dir.join("repo");
    let (_, docs) = fleet_repo(&repo, nb)?;
    let convoy = workspace_binary("convoy-cli", "convoy", None)?;
    let (hub, creds) = start_hub(&convoy, dir, &repo.display().to_string(), &docs).await?;
    let pid = hub.0.id();
    let admin = Endpoint::from_shared(creds.hub.clone())?.tls_config(creds.admin_tls())?.connect().await?;
    let mut fleet = pb::fleet_client::FleetClient::new(admin);
    let deadline = Instant::now() + Duration::from_secs(120);
    for name in std::iter::once("app".to_string()).chain((1..nb).map(|i| format!("b{i}"))) {
        while bundle(&mut fleet, &name).await?.generation < 1 {
            if Instant::now() > deadline {
                bail!("the hub did not build {name}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let token = fleet
        .create_token(pb::CreateTokenRequest { ttl_seconds: 24 * 3600, ..Default::default() })
        .await?
        .into_inner()
        .token;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss0 = rss_kib(pid)?;
    let mut out = Vec::new();

    // Registration of N new agents at once.
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?.pem()?;
    let key_pem = key.serialize_pem();
    let registrar = pb::registration_client::RegistrationClient::new(
        Endpoint::from_shared(creds.hub.clone())?.tls_config(hub_tls(&creds.ca, None))?.connect().await?,
    );
    let cpu0 = cpu_s(pid)?;
    let t0 = Instant::now();
    let certs: Vec<anyhow::Result<String>> = futures::stream::iter(0..n)
        .map(|i| register(registrar.clone(), token.clone(), csr.clone(), i))
        .buffer_unordered(REGISTER_CONCURRENCY)
        .collect()
        .await;
    let reg_s = t0.elapsed().as_secs_f64();
    let reg_cpu = cpu_s(pid)? - cpu0;
    let failures = certs.iter().filter(|c| c.is_err()).count();
    if let Some(Err(e)) = certs.iter().find(|c| c.is_err()) {
        eprintln!("scale bench: {failures} registrations failed, first: {e:#}");
    }
    out.push(one(
        format!("registration of {n} new agents at once ({REGISTER_CONCURRENCY} in flight)"),
        "agents/s",
        (n - failures) as f64 / reg_s,
        "no failure",
        Some(failures == 0),
    ));
    out.push(one(
        format!("registration failures ({n} agents)"),
        "agents",
        failures as f64,
        "0",
        Some(failures == 0),
    ));

    out.push(one(
        format!("hub CPU per registration ({n} agents)"),
        "µs",
        reg_cpu * 1e6 / (n - failures).max(1) as f64,
        "",
        None,
    ));

    // Connect every registered agent and wait for its snapshot.
    let cpu0 = cpu_s(pid)?;
    let t0 = Instant::now();
    let conns: Vec<anyhow::Result<SimAgent>> = futures::stream::iter(certs.into_iter().enumerate())
        .filter_map(|(i, c)| async move { c.ok().map(|c| (i, c)) })
        .map(|(i, cert)| {
            let (endpoint, ca, key) = (creds.hub.clone(), creds.ca.clone(), key_pem.clone());
            async move { connect(&endpoint, &ca, &cert, &key, i, nb).await }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let connect_failures = conns.iter().filter(|c| c.is_err()).count();
    if let Some(Err(e)) = conns.iter().find(|c| c.is_err()) {
        eprintln!("scale bench: {connect_failures} connections failed, first: {e:#}");
    }
    let agents: Vec<SimAgent> = conns.into_iter().filter_map(|c| c.ok()).collect();
    wait_all("their snapshot", 600, || {
        agents.iter().filter(|a| a.state.ready.load(Ordering::Acquire) == 0).count()
    })
    .await?;
    wait_all("their statuses acked", 600, || {
        agents
            .iter()
            .filter(|a| a.state.acked.load(Ordering::Acquire) < a.state.sent.load(Ordering::Acquire))
            .count()
    })
    .await?;
    let connect_cpu = cpu_s(pid)? - cpu0;
    let connected = agents.len();
    eprintln!(
        "scale bench: {connected} agents connected with their snapshot in {:.1}s ({connect_failures} failed)",
        t0.elapsed().as_secs_f64()
    );

    out.push(one(
        format!("hub CPU per agent connect (TLS, snapshot of {nb} bundles, {nb} statuses acked)"),
        "µs",
        connect_cpu * 1e6 / connected.max(1) as f64,
        "",
        None,
    ));

    // Idle memory, and idle CPU over one heartbeat period (15 s).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu0 = cpu_s(pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let idle_cpu = (cpu_s(pid)? - cpu0) / t0.elapsed().as_secs_f64();
    out.push(one(
        format!("hub idle CPU per 1,000 agents ({connected} agents, a heartbeat each per 15 s)"),
        "ms CPU/s",
        idle_cpu * 1e3 * 1000.0 / connected.max(1) as f64,
        "",
        None,
    ));
    let rss = rss_kib(pid)?;
    let per_agent = (rss - rss0) / connected.max(1) as f64;
    eprintln!(
        "scale bench: hub RSS {:.0} MiB idle with {connected} agents ({:.0} MiB before); \
         this load generator's own RSS {:.0} MiB (it shares the machine's memory with the hub)",
        rss / 1024.0,
        rss0 / 1024.0,
        rss_kib(std::process::id()).unwrap_or(0.0) / 1024.0
    );
    out.push(one(
        format!("idle hub memory per connected agent ({connected} agents, {nb} bundles)"),
        "KiB/agent",
        per_agent,
        "< 50 KiB/agent",
        Some(per_agent < 50.0),
    ));

    // A new revision to every agent.
    let mut p99 = Vec::new();
    let mut fan_cpu = Vec::new();
    for rev in 1..=trials {
        write_app(&repo, rev)?;
        git(&repo, &["commit", "-q", "-am", &format!("rev {rev}")])?;
        let before = bundle(&mut fleet, "app").await?.generation;
        let t0 = unix_ns();
        let cpu0 = cpu_s(pid)?;
        fleet.reconcile(pb::ObjectRef { kind: pb::ObjectKind::Source as i32, name: "repo".into() }).await?;
        wait_all("the new generation", 300, || {
            agents.iter().filter(|a| a.state.app_gen.load(Ordering::Acquire) <= before).count()
        })
        .await?;
        let lat: Vec<f64> = agents
            .iter()
            .map(|a| a.state.app_ns.load(Ordering::Acquire).saturating_sub(t0) as f64 / 1e6)
            .collect();
        p99.push(percentile(&lat, 99.0));
        // Until the agents' Ready statuses are acked: the whole round trip.
        wait_all("the ack of their new status", 300, || {
            agents
                .iter()
                .filter(|a| a.state.acked.load(Ordering::Acquire) < a.state.sent.load(Ordering::Acquire))
                .count()
        })
        .await?;
        fan_cpu.push((cpu_s(pid)? - cpu0) * 1e6 / connected.max(1) as f64);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    out.push(Measurement::from_samples(
        AREA,
        &format!("new revision to every agent, p99 ({connected} agents; commit+Reconcile to receipt)"),
        "ms",
        &p99,
        "p99 < 2000 ms",
        Some(median(&p99) < 2000.0),
    ));

    out.push(Measurement::from_samples(
        AREA,
        &format!("hub CPU per agent per new revision (render, sign, send, status acked; {connected} agents)"),
        "µs",
        &fan_cpu,
        "",
        None,
    ));

    // Status storm: every agent reports at once; each status must be acked.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu0 = cpu_s(pid)?;
    let t0 = Instant::now();
    let seqs: Vec<Option<u64>> = agents.iter().map(|a| a.report("storm")).collect();
    let not_sent = seqs.iter().filter(|s| s.is_none()).count();
    let absorbed = wait_all("the ack of their storm status", 300, || {
        agents
            .iter()
            .zip(&seqs)
            .filter(|(a, s)| s.is_some_and(|s| a.state.acked.load(Ordering::Acquire) < s))
            .count()
    })
    .await;
    let lost = match &absorbed {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("scale bench: {e}");
            agents
                .iter()
                .zip(&seqs)
                .filter(|(a, s)| s.is_some_and(|s| a.state.acked.load(Ordering::Acquire) < s))
                .count()
        }
    };
    let storm_ms = t0.elapsed().as_secs_f64() * 1e3;
    let storm_cpu = cpu_s(pid)? - cpu0;
    let peak = hwm_kib(pid)?;
    out.push(one(
        format!(
            "status storm: {connected} statuses at once, not acked ({not_sent} not sent by a full queue)"
        ),
        "statuses",
        (lost + not_sent) as f64,
        "0 lost",
        Some(lost + not_sent == 0),
    ));
    out.push(one(format!("status storm: until the last ack ({connected} agents)"), "ms", storm_ms, "", None));
    out.push(one(
        format!("hub CPU per status (storm of {connected})"),
        "µs",
        storm_cpu * 1e6 / (connected - not_sent).max(1) as f64,
        "",
        None,
    ));
    let store = dir_bytes(&dir.join("data"));
    out.push(one(
        format!("hub data directory ({connected} clusters × {nb} bundles)"),
        "MiB",
        store as f64 / (1 << 20) as f64,
        "",
        None,
    ));
    out.push(one(
        format!("hub peak memory (VmHWM) over the run ({connected} agents)"),
        "MiB",
        peak / 1024.0,
        "",
        None,
    ));
    drop(agents);
    drop(hub);
    Ok(out)
}
