//! A real etcd on loopback for the HA tests (Debian's `etcd-server`),
//! killed with its process group and its data dir removed on drop.

#![allow(dead_code)]

use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Server {
    _guard: convoy_testsupport::ProcessGuard,
    pub url: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Server {
    pub fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let guard = convoy_testsupport::ProcessGuard::spawn(
            "etcd",
            Command::new("etcd")
                .args(["--name", "t", "--data-dir"])
                .arg(dir.path().join("data"))
                .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
                .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("t={peer_url}")])
                // A group commit of many statuses is one transaction (docs/operations.md).
                .args(["--max-txn-ops", "10000", "--max-request-bytes", "10485760"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .expect("etcd runs (scripts/setup.sh installs Debian's etcd-server)");
        let server = Server { _guard: guard, url, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        // Up when it accepts connections and serves a store.
        loop {
            if std::net::TcpStream::connect(server.url.trim_start_matches("http://")).is_ok()
                && convoy_hub::store::EtcdStore::open(
                    &convoy_hub::store::EtcdOptions::new(vec![server.url.clone()], "/probe/"),
                    1,
                )
                .is_ok()
            {
                return server;
            }
            assert!(Instant::now() < deadline, "etcd did not start at {}", server.url);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A TCP proxy to etcd the test controls: [`Proxy::cut`] closes every
/// connection and refuses new ones (a replica cut off from etcd),
/// [`Proxy::heal`] lets them through again. Its threads end on drop.
pub struct Proxy {
    pub url: String,
    addr: std::net::SocketAddr,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
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

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

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
/// does not expose (revoking a replica's lease behind its back).
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
