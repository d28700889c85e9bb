//! Test fixtures: git repositories made with the git CLI, and real git
//! servers (git daemon, nginx + fcgiwrap + git http-backend, sshd) on
//! loopback ports, each owned by a [`ProcessGuard`] that ends it and its
//! children (git-daemon, nginx workers, fcgiwrap's CGIs, sshd sessions) on
//! drop, on panic and on Ctrl-C.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use convoy_testsupport::ProcessGuard;

/// The shared real-world corpus.
pub fn corpus() -> PathBuf {
    std::env::var_os("CONVOY_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"))
}

/// Run git with no user or system config.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Convoy Test",
            "-c",
            "user.email=test@convoy.dev",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(["-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false", "-c", "protocol.file.allow=always"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}

pub fn configmap(name: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  k: v\n")
}

/// A bare "server" repository plus a working clone that pushes to it.
pub struct Upstream {
    pub root: tempfile::TempDir,
    /// The bare repository (what servers export).
    pub bare: PathBuf,
    /// The working clone.
    pub work: PathBuf,
}

impl Upstream {
    /// A bare repo named `name.git` with one commit on main holding `files`.
    pub fn new(name: &str, files: &[(&str, &str)]) -> Self {
        let root = tempfile::tempdir().unwrap();
        let bare = root.path().join("srv").join(format!("{name}.git"));
        std::fs::create_dir_all(&bare).unwrap();
        git(&bare, &["init", "-q", "--bare"]);
        git(&bare, &["config", "receive.denyDeleteCurrent", "ignore"]);
        let work = root.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q"]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        let u = Self { root, bare, work };
        u.commit(files, "initial");
        u.push(&["-u", "origin", "main"]);
        u
    }

    /// Write files (a `None`-like empty text deletes), commit, return the id.
    pub fn commit(&self, files: &[(&str, &str)], msg: &str) -> String {
        for (p, text) in files {
            if text.is_empty() {
                let _ = std::fs::remove_file(self.work.join(p));
            } else {
                write(&self.work, p, text);
            }
        }
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "--allow-empty", "-m", msg]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    pub fn push(&self, args: &[&str]) {
        let mut a = vec!["push", "-q"];
        a.extend_from_slice(args);
        git(&self.work, &a);
    }

    pub fn head(&self) -> String {
        git(&self.work, &["rev-parse", "HEAD"])
    }

    pub fn srv(&self) -> PathBuf {
        self.bare.parent().unwrap().to_path_buf()
    }
}

/// A free loopback port (bound and released; servers get it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn wait_port(port: u16, child: &mut ProcessGuard, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on {port} within 30s");
}

/// Server processes, each ended with its process group on drop (before
/// `dir`, which they serve from, is removed).
pub struct Server {
    pub children: Vec<ProcessGuard>,
    pub port: u16,
    pub dir: Option<tempfile::TempDir>,
}

/// `git daemon` exporting every repository under `base`.
pub fn git_daemon(base: &Path) -> Server {
    for _ in 0..3 {
        let port = free_port();
        let pid_file = base.parent().unwrap_or(base).join(format!("git-daemon-{port}.pid"));
        let mut child = ProcessGuard::spawn(
            "git daemon",
            Command::new("git")
                .args(["daemon", "--reuseaddr", "--export-all", "--informative-errors", "--listen=127.0.0.1"])
                .arg(format!("--port={port}"))
                .arg(format!("--pid-file={}", pid_file.display()))
                .arg(format!("--base-path={}", base.display()))
                .arg(base)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .expect("git daemon starts");
        child.watch_pid_file(&pid_file);
        std::thread::sleep(Duration::from_millis(100));
        if child.try_wait().unwrap().is_none() {
            wait_port(port, &mut child, "git daemon");
            return Server { children: vec![child], port, dir: None };
        }
    }
    panic!("git daemon did not start");
}

fn git_exec_path() -> PathBuf {
    let out = Command::new("git").arg("--exec-path").output().unwrap();
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A test CA and a server certificate for 127.0.0.1 and localhost:
/// (CA PEM, server cert PEM, server key PEM).
pub fn tls_material() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "convoy test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// nginx (HTTPS) + fcgiwrap + `git http-backend` serving `base` under
/// `/git/` with HTTP basic auth for `user`/`password`, and under `/tok/` for
/// the bearer token `password`. Returns the server and the CA PEM to trust.
pub fn https_server(base: &Path, user: &str, password: &str) -> (Server, String) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca, cert, key) = tls_material();
    std::fs::write(d.join("server.crt"), cert).unwrap();
    std::fs::write(d.join("server.key"), key).unwrap();
    let out = Command::new("htpasswd")
        .args(["-cbB"])
        .arg(d.join("htpasswd"))
        .args([user, password])
        .output()
        .unwrap();
    assert!(out.status.success(), "htpasswd: {}", String::from_utf8_lossy(&out.stderr));
    let sock = d.join("fcgi.sock");
    let mut fcgi = ProcessGuard::spawn(
        "fcgiwrap",
        Command::new("/usr/sbin/fcgiwrap")
            .arg("-s")
            .arg(format!("unix:{}", sock.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("fcgiwrap starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "fcgiwrap socket");
        assert!(fcgi.try_wait().unwrap().is_none(), "fcgiwrap exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    for sub in ["tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi", "logs"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let backend = git_exec_path().join("git-http-backend");
    let mut server = Server { children: vec![fcgi], port: 0, dir: None };
    for _ in 0..3 {
        let port = free_port();
        let conf = format!(
            r#"
user root root;
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {d}/server.crt;
    ssl_certificate_key {d}/server.key;
    auth_basic "git";
    auth_basic_user_file {d}/htpasswd;
    location ~ ^/git(/.*)$ {{
      client_max_body_size 0;
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME {backend};
      fastcgi_param GIT_HTTP_EXPORT_ALL "";
      fastcgi_param GIT_PROJECT_ROOT {base};
      fastcgi_param PATH_INFO $1;
      fastcgi_param REMOTE_USER $remote_user;
      fastcgi_param GIT_PROTOCOL $http_git_protocol;
      fastcgi_pass unix:{sock};
    }}
    location ~ ^/tok(/.*)$ {{
      auth_basic off;
      if ($http_authorization != "Bearer {password}") {{ return 401; }}
      client_max_body_size 0;
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME {backend};
      fastcgi_param GIT_HTTP_EXPORT_ALL "";
      fastcgi_param GIT_PROJECT_ROOT {base};
      fastcgi_param PATH_INFO $1;
      fastcgi_param GIT_PROTOCOL $http_git_protocol;
      fastcgi_pass unix:{sock};
    }}
  }}
}}
"#,
            d = d.display(),
            backend = backend.display(),
            base = base.display(),
            sock = sock.display(),
        );
        std::fs::write(d.join("nginx.conf"), conf).unwrap();
        let mut nginx = ProcessGuard::spawn(
            "nginx",
            Command::new("/usr/sbin/nginx")
                .arg("-p")
                .arg(d)
                .arg("-c")
                .arg(d.join("nginx.conf"))
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        )
        .expect("nginx starts");
        nginx.watch_pid_file(d.join("nginx.pid"));
        // nginx writes its pid file only once it holds its listening socket;
        // if another process took the port first, nginx exits instead. Only
        // then is the port known to be ours: a bare connect could reach the
        // other process (seen once: a TLS handshake with an unknown CA).
        let deadline = Instant::now() + Duration::from_secs(30);
        while !d.join("nginx.pid").exists()
            && nginx.try_wait().unwrap().is_none()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        if nginx.try_wait().unwrap().is_none() && d.join("nginx.pid").exists() {
            wait_port(port, &mut nginx, "nginx");
            server.children.push(nginx);
            server.port = port;
            server.dir = Some(dir);
            return (server, ca);
        }
    }
    panic!("nginx did not start");
}

/// A throwaway sshd on a loopback port that accepts one generated client
/// key for the current user. Returns the server, the client key path and a
/// known_hosts file for it.
pub struct Ssh {
    pub server: Server,
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    pub user: String,
}

pub fn ssh_server() -> Ssh {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keygen = |path: &Path| {
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
    };
    keygen(&d.join("host_key"));
    keygen(&d.join("client_key"));
    std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    let user =
        String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap().trim().to_string();
    let host_pub = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
    let host_pub: Vec<&str> = host_pub.split_whitespace().collect();
    for _ in 0..3 {
        let port = free_port();
        let conf = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\nStrictModes no\nUsePAM no\nPermitRootLogin yes\nAllowUsers {user}\n\
             AcceptEnv GIT_PROTOCOL\nLogLevel ERROR\nSetEnv PATH=/usr/local/bin:/usr/bin:/bin\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), conf).unwrap();
        let mut child = ProcessGuard::spawn(
            "sshd",
            Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(d.join("sshd_config"))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .expect("sshd starts");
        child.watch_pid_file(d.join("sshd.pid"));
        std::thread::sleep(Duration::from_millis(150));
        if child.try_wait().unwrap().is_none() {
            wait_port(port, &mut child, "sshd");
            let known_hosts = d.join("known_hosts");
            std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {} {}\n", host_pub[0], host_pub[1]))
                .unwrap();
            let key = d.join("client_key");
            return Ssh {
                server: Server { children: vec![child], port, dir: Some(dir) },
                key,
                known_hosts,
                user,
            };
        }
    }
    panic!("sshd did not start");
}
