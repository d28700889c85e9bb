//! Shared test helpers: a simulator with a kubeconfig on disk, kubectl runs
//! with a deadline, raw HTTP requests, and polling.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube_sim::{KubeSim, SimConfig};
use parking_lot::Mutex;
use serde_json::Value;

pub struct Sim {
    pub sim: KubeSim,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub http: reqwest::Client,
}

pub fn corpus() -> PathBuf {
    match std::env::var("CONVOY_CORPUS") {
        Ok(p) => p.into(),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"),
    }
}

impl Sim {
    pub async fn start() -> Sim {
        Self::with(SimConfig::default()).await
    }

    pub async fn with(cfg: SimConfig) -> Sim {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let sim = KubeSim::start(cfg).await.expect("start kube-sim");
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig).expect("kubeconfig");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
        Sim { sim, dir, kubeconfig, http }
    }

    /// kubectl against this simulator (its kubeconfig, a private HOME), stdout
    /// piped, killed when dropped.
    fn kubectl_command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("kubectl");
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Run kubectl (60 s deadline); returns (exit code, stdout, stderr).
    pub async fn kubectl(&self, args: &[&str]) -> (i32, String, String) {
        self.kubectl_stdin(args, None).await
    }

    pub async fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
        use tokio::io::AsyncWriteExt;
        let mut child = self
            .kubectl_command(args)
            .stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() })
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        if let Some(s) = stdin {
            let mut i = child.stdin.take().expect("stdin");
            i.write_all(s.as_bytes()).await.expect("write stdin");
            drop(i);
        }
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("kubectl finished in time")
            .expect("kubectl output");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A long-running kubectl (`get --watch`): the child (killed on drop) and
    /// the stdout lines it has printed so far, collected by a background task.
    pub fn kubectl_lines(&self, args: &[&str]) -> (tokio::process::Child, Arc<Mutex<Vec<String>>>) {
        let mut child =
            self.kubectl_command(args).stderr(std::process::Stdio::null()).spawn().expect("kubectl runs");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut r = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(l)) = r.next_line().await {
                sink.lock().push(l);
            }
        });
        (child, lines)
    }

    /// kubectl that must succeed; returns stdout.
    pub async fn kubectl_ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.kubectl(args).await;
        assert_eq!(code, 0, "kubectl {args:?} failed: {err}\n{out}");
        out
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.url())
    }

    /// A raw request: (status, JSON body).
    pub async fn req(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self.http.request(method.parse().expect("method"), self.url(path));
        if let Some(b) = body {
            r = r.header("content-type", content_type).body(serde_json::to_vec(&b).expect("json"));
        }
        let resp = r.send().await.expect("request");
        let code = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.req("GET", path, "", None).await
    }

    /// Server-side apply of a JSON object.
    pub async fn apply(&self, path: &str, manager: &str, force: bool, obj: Value) -> (u16, Value) {
        let sep = if path.contains('?') { '&' } else { '?' };
        self.req(
            "PATCH",
            &format!("{path}{sep}fieldManager={manager}&force={force}"),
            "application/apply-patch+yaml",
            Some(obj),
        )
        .await
    }
}

/// Poll `f` until it returns Some, up to `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "condition not reached within {secs}s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn rv(v: &Value) -> String {
    v["metadata"]["resourceVersion"].as_str().unwrap_or("").to_string()
}
