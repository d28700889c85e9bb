//! Smoke tests of the real `convoy dev` binary, used as the README tour uses
//! it: read what it prints, use the printed kubeconfigs with kubectl and the
//! printed credentials with `convoy`, commit to the printed repository, and
//! stop it with Ctrl-C (SIGINT).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use convoy_testsupport::ProcessGuard;
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn convoy_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_convoy-e2e-convoy"))
}

/// A running `convoy dev` with its stdout lines.
struct Dev {
    /// Ends `convoy dev` and its process group on drop, panic or Ctrl-C.
    child: ProcessGuard,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Dev {
    fn spawn(args: &[&str]) -> Dev {
        let mut child = ProcessGuard::spawn(
            "convoy dev",
            Command::new(convoy_bin())
                .arg("dev")
                .args(args)
                .env("CONVOY_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        )
        .expect("spawn convoy dev");
        let out = child.child_mut().stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Dev { child, lines, seen: Vec::new() }
    }

    /// Wait for a printed line containing `needle`; returns it.
    fn wait_line(&mut self, needle: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?} within {secs} s; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The value printed after `label` on a banner line (`  label   value  (...)`).
    fn banner(&self, label: &str) -> Vec<String> {
        self.seen
            .iter()
            .filter_map(|l| l.trim_start().strip_prefix(label))
            .map(|rest| rest.split_whitespace().next().unwrap_or_default().to_string())
            .collect()
    }

    fn interrupt(&self) {
        self.child.signal(libc::SIGINT);
    }

    fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(l);
                }
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "convoy dev did not exit within {secs} s:\n{}",
                self.seen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn convoy_json(creds: &str, args: &[&str]) -> serde_json::Value {
    let out =
        run(Command::new(convoy_bin()).args(args).args(["-o", "json"]).env("CONVOY_CREDENTIALS", creds));
    serde_json::from_str(&out).expect("json")
}

/// Processes whose command line mentions `path` (children left behind).
fn processes_mentioning(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&needle) && !cmd.contains("cargo") {
                out.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// Helm's own view (helm-python-sdk) of release `podinfo` in `web`.
fn helm_view(kubeconfig: &str) -> serde_json::Value {
    convoy_e2e::helmview::helm_release(std::path::Path::new(kubeconfig), "web", "podinfo")
}

/// The Helm example of `convoy dev` (examples/helm-bundles.yaml): podinfo
/// from the chart directory in the example repository, Ready on every
/// cluster, each environment's values file visible in the applied objects,
/// rendered with the Kubernetes version the cluster's agent reported, its
/// pre-install hook Job complete, and a Helm release Helm itself lists.
/// `kubeconfigs` are staging, prod-eu, prod-us (the banner's order).
fn assert_helm_example(creds: &str, kubeconfigs: &[String]) {
    for (bundle, n) in [("podinfo-staging", 1), ("podinfo-prod", 2)] {
        let status = convoy_json(creds, &["status", bundle]);
        let cells = status["clusters"].as_array().unwrap();
        assert_eq!(cells.len(), n, "{status}");
        assert!(cells.iter().all(|c| c["phase"] == "Ready"), "{status}");
    }
    let expect = [
        (&kubeconfigs[0], 1, "podinfo on staging", "debug"),
        (&kubeconfigs[1], 3, "podinfo on prod", "warn"),
        (&kubeconfigs[2], 3, "podinfo on prod", "warn"),
    ];
    for (kc, replicas, message, level) in expect {
        let get = |what: &[&str]| {
            run(Command::new("kubectl").args(["--kubeconfig", kc, "-n", "web", "get"]).args(what))
        };
        assert_eq!(
            get(&["deploy", "podinfo", "-o", "jsonpath={.spec.replicas}"]),
            replicas.to_string(),
            "{kc}"
        );
        let cm: serde_json::Value =
            serde_json::from_str(&get(&["configmap", "podinfo", "-o", "json"])).expect("configmap json");
        assert_eq!(cm["data"]["PODINFO_UI_MESSAGE"], message, "{kc}: {cm}");
        assert_eq!(cm["data"]["PODINFO_LEVEL"], level, "{kc}: {cm}");
        // .Capabilities: the version kube-sim's /version reports, through the agent.
        assert_eq!(cm["data"]["RENDERED_FOR_KUBE"], "v1.32.0-kube-sim", "{kc}: {cm}");
        assert_eq!(cm["metadata"]["labels"]["helm.sh/chart"], "podinfo-0.1.0", "{kc}: {cm}");
        let job = get(&[
            "job",
            "podinfo-preflight",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Complete\")].status}",
        ]);
        assert_eq!(job, "True", "{kc}: the pre-install hook Job completed");
        let svc = get(&["svc", "podinfo", "-o", "jsonpath={.spec.ipFamilyPolicy}"]);
        assert_eq!(svc, "SingleStack", "{kc}");

        let h = helm_view(kc);
        let list = h["list"].as_array().unwrap();
        assert_eq!(list.len(), 1, "{kc}: {h}");
        assert_eq!(list[0]["name"], "podinfo", "{kc}: {h}");
        assert_eq!(list[0]["status"], "deployed", "{kc}: {h}");
        assert_eq!(
            h["values"]["ui"]["message"], message,
            "{kc}: helm get values shows the environment's file"
        );
        assert_eq!(h["values"]["replicaCount"], replicas, "{kc}: {h}");
    }
}

/// The README tour, automated: converge, kubectl on a printed kubeconfig,
/// `convoy status` with the printed credentials, a commit in the printed
/// repository rolls out, Ctrl-C stops everything (exit 0, no process left).
#[test]
fn heavy_convoy_dev_converges_rolls_out_a_commit_and_stops_on_ctrl_c() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("dev");
    let mut dev = Dev::spawn(&["--data-dir", data.to_str().unwrap(), "--readiness-delay", "200ms"]);
    dev.wait_line("==> fleet converged", 120);

    let kubeconfigs: Vec<String> = dev
        .seen
        .iter()
        .filter(|l| l.trim_start().starts_with("cluster "))
        .filter_map(|l| l.split("kubeconfig ").nth(1).map(|s| s.trim().to_string()))
        .collect();
    assert_eq!(kubeconfigs.len(), 3, "{:?}", dev.seen);
    for kc in &kubeconfigs {
        let out =
            run(Command::new("kubectl").args(["--kubeconfig", kc, "get", "deploy,ns", "-A", "-o", "name"]));
        assert!(out.contains("namespace/web"), "{kc}: {out}");
        assert!(out.contains("deployment.apps/web"), "{kc}: {out}");
    }
    let creds = dev
        .seen
        .iter()
        .find_map(|l| l.trim().strip_prefix("export CONVOY_CREDENTIALS="))
        .expect("the credentials export is printed")
        .to_string();
    let status = convoy_json(&creds, &["status", "web-prod"]);
    let cells = status["clusters"].as_array().unwrap();
    assert_eq!(cells.len(), 2, "{status}");
    assert!(cells.iter().all(|c| c["phase"] == "Ready"), "{status}");
    assert_helm_example(&creds, &kubeconfigs);

    // Commit in the printed repository, as the tour says (its local identity
    // is set by convoy dev, so this works without any git config).
    let repo = PathBuf::from(&dev.banner("git repo")[0]);
    let file = repo.join("apps/web/base/deployment.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("podinfo:6.7.0", "podinfo:6.7.1")).unwrap();
    run(Command::new("git")
        .current_dir(&repo)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .args(["commit", "-qam", "web 6.7.1"]));
    let head = run(Command::new("git").current_dir(&repo).args(["rev-parse", "HEAD"])).trim().to_string();
    dev.wait_line(&format!("==> {} rolled out", &head[..7]), 60);
    let status = convoy_json(&creds, &["status", "web-prod"]);
    assert!(status["revision"].as_str().unwrap().ends_with(&head), "{status}");
    for c in status["clusters"].as_array().unwrap() {
        assert_eq!(c["phase"], "Ready", "{c}");
        assert_eq!(c["revision"], status["revision"], "{c}");
    }
    let out = run(Command::new("kubectl").args([
        "--kubeconfig",
        &kubeconfigs[1],
        "get",
        "deploy",
        "web",
        "-n",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]));
    assert_eq!(out, "ghcr.io/stefanprodan/podinfo:6.7.1");

    dev.interrupt();
    let st = dev.wait_exit(30);
    assert!(st.success(), "exit status {st:?}:\n{}", dev.seen.join("\n"));
    assert_eq!(dev.seen.last().map(String::as_str), Some("Stopped."));
    let left = processes_mentioning(&data);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    // The hub is gone: operator commands now say the hub is unreachable (exit 3).
    let out = Command::new(convoy_bin())
        .args(["get", "clusters"])
        .env("CONVOY_CREDENTIALS", &creds)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}

/// `--exit-when-ready` (for scripts): exit 0 once converged, and the
/// temporary data dir is removed.
#[test]
fn heavy_convoy_dev_exit_when_ready() {
    let mut dev = Dev::spawn(&["--exit-when-ready", "--readiness-delay", "0s"]);
    let st = dev.wait_exit(120);
    assert!(st.success(), "exit status {st:?}:\n{}", dev.seen.join("\n"));
    assert!(dev.seen.iter().any(|l| l.contains("==> fleet converged")), "{}", dev.seen.join("\n"));
    let creds = dev.banner("credentials");
    assert_eq!(creds.len(), 1, "{:?}", dev.seen);
    let root = Path::new(&creds[0]).ancestors().nth(3).unwrap().to_path_buf();
    assert!(root.file_name().unwrap().to_string_lossy().starts_with("convoy-dev-"), "{}", root.display());
    assert!(!root.exists(), "{} was not removed", root.display());
}

/// `--kubeconfig` adds a real cluster with its own agent (here a kube-sim
/// over TLS standing in for kind or k3d, reached only through the file):
/// it registers as `local` with `env=staging,region=local` and gets `infra`
/// and `web-staging`.
#[test]
fn heavy_convoy_dev_with_a_kubeconfig_adds_that_cluster() {
    convoy_e2e::init();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let sim = rt
        .block_on(kube_sim::KubeSim::start(kube_sim::SimConfig {
            tls: true,
            name: "kind-dev".into(),
            ..Default::default()
        }))
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let kc = tmp.path().join("kubeconfig");
    sim.write_kubeconfig(&kc).unwrap();
    let mut dev =
        Dev::spawn(&["--exit-when-ready", "--readiness-delay", "0s", "--kubeconfig", kc.to_str().unwrap()]);
    let st = dev.wait_exit(120);
    assert!(st.success(), "exit status {st:?}:\n{}", dev.seen.join("\n"));
    assert!(
        dev.seen.iter().any(|l| l.contains("local")
            && l.contains("env=staging,region=local")
            && l.contains("real cluster")),
        "{}",
        dev.seen.join("\n")
    );
    assert!(
        dev.seen.iter().any(|l| l.contains("web-staging") && l.contains("Ready on local, staging")),
        "{}",
        dev.seen.join("\n")
    );
    let d = sim.object("apps", "deployments", "web", "web").expect("web-staging applied to the cluster");
    assert_eq!(d["metadata"]["labels"]["convoy.dev/bundle"], "web-staging");
    assert_eq!(d["spec"]["replicas"], 1);
    assert!(
        sim.object("", "secrets", "convoy-system", "convoy-agent-identity").is_some(),
        "the agent keeps its identity in the cluster"
    );
    assert!(
        sim.object("apps", "daemonsets", "monitoring", "node-exporter").is_none(),
        "monitoring is for prod only"
    );
    drop(sim);
}
