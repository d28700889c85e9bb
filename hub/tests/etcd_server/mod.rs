//! A real etcd on loopback for the HA tests (Debian's `etcd-server`),
//! killed with its process group and its data dir removed on drop.

use std::net::TcpListener;
use std::process::{Command, Stdio};
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
                .args(["--max-txn-ops", "10000", "--max-request-bytes", "10485760"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .expect("etcd runs (scripts/setup.sh installs Debian's etcd-server)");
        let server = Server { _guard: guard, url, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(server.url.trim_start_matches("http://")).is_err() {
            assert!(Instant::now() < deadline, "etcd did not start at {}", server.url);
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}
