//! A real etcd on loopback (Debian's `etcd-server`) for the HA tests and the
//! `ha` benchmark area: [`Server`] (killed with its process group, its data
//! dir removed on drop), [`Proxy`] (a TCP proxy to it the caller cuts and
//! heals), [`gateway`] (one call to etcd's JSON gateway) and [`metrics`] /
//! [`metric`] (etcd's own Prometheus counters).

use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ProcessGuard;

/// One etcd member on loopback.
pub struct Server {
    guard: ProcessGuard,
    /// Its client URL (`http://127.0.0.1:PORT`).
    pub url: String,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Server {
    /// Start etcd and wait (at most 20 s) until it answers `/health`; panics
    /// if it cannot (scripts/setup.sh installs `etcd-server`).
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// [`Server::start`] with extra command-line flags (e.g. a quota).
    pub fn start_with(extra: &[&str]) -> Server {
        // A group commit of many statuses is one transaction (docs/operations.md).
        let raised = ["--max-txn-ops", "10000", "--max-request-bytes", "10485760"];
        Server::spawn(&[&raised[..], extra].concat())
    }

    /// etcd left at its own transaction limits (`--max-txn-ops` 128,
    /// `--max-request-bytes` 1.5 MiB), with `extra` flags (which may raise
    /// one of them).
    pub fn start_with_default_limits(extra: &[&str]) -> Server {
        Server::spawn(extra)
    }

    fn spawn(flags: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let guard = ProcessGuard::spawn(
            "etcd",
            Command::new("etcd")
                .args(["--name", "t", "--data-dir"])
                .arg(dir.path().join("data"))
                .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
                .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("t={peer_url}")])
                .args(flags)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .expect("etcd runs (scripts/setup.sh installs Debian's etcd-server)");
        let server = Server { guard, url, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        // Up when it serves `/health` as healthy (it has a leader).
        loop {
            if get(&server.url, "/health").is_ok_and(|b| b.contains("\"health\":\"true\"")) {
                return server;
            }
            assert!(Instant::now() < deadline, "etcd did not start at {}", server.url);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The etcd process id.
    pub fn pid(&self) -> u32 {
        self.guard.id()
    }

    /// Its data directory.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }
}

/// A TCP proxy to etcd the test controls: [`Proxy::cut`] closes every
/// connection and refuses new ones (a replica cut off from etcd),
/// [`Proxy::heal`] lets them through again. Its threads end on drop.
pub struct Proxy {
    /// The URL to give the replica instead of etcd's.
    pub url: String,
    addr: std::net::SocketAddr,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// Listen on a free loopback port and forward to `target_url`.
    pub fn start(target_url: &str) -> Proxy {
        let target = target_url.trim_start_matches("http://").to_string();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (cut, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, s, cs) = (cut.clone(), stop.clone(), conns.clone());
        std::thread::spawn(move || {
            for down in l.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(down) = down else { continue };
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let Ok(up) = TcpStream::connect(&target) else { continue };
                let pairs = [(down.try_clone().unwrap(), up.try_clone().unwrap()), (up, down)];
                {
                    let mut g = cs.lock().unwrap();
                    g.push(pairs[0].0.try_clone().unwrap());
                    g.push(pairs[0].1.try_clone().unwrap());
                }
                for (mut from, mut to) in pairs {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = from.shutdown(Shutdown::Both);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { url: format!("http://{addr}"), addr, cut, stop, conns }
    }

    /// Close every connection and refuse new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Let connections through again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
        let _ = TcpStream::connect(self.addr);
    }
}

/// One call to etcd's JSON gateway (`/v3/...`), for what the hub's store
/// does not expose (revoking a replica's lease behind its back, compacting):
/// the whole HTTP response, headers included.
pub fn gateway(url: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: etcd\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// `GET path` on etcd's client URL: the response body.
fn get(url: &str, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(url.trim_start_matches("http://"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: etcd\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// etcd's own Prometheus metrics (`/metrics` on its client URL).
pub fn metrics(url: &str) -> std::io::Result<String> {
    get(url, "/metrics")
}

/// The value of the sample `name` (exactly, labels included if any: e.g.
/// `etcd_mvcc_put_total`) in a [`metrics`] text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (n, v) = l.rsplit_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_read_by_its_exact_name() {
        let text = "# HELP etcd_mvcc_put_total x\n# TYPE etcd_mvcc_put_total counter\n\
                    etcd_mvcc_put_total 42\netcd_mvcc_put_total_other 7\n\
                    etcd_debugging_mvcc_db_total_size_in_bytes 1.2e+06\n";
        assert_eq!(metric(text, "etcd_mvcc_put_total"), Some(42.0));
        assert_eq!(metric(text, "etcd_debugging_mvcc_db_total_size_in_bytes"), Some(1.2e6));
        assert_eq!(metric(text, "etcd_mvcc_delete_total"), None);
    }
}
