//! Fetching with gix into a bare cache repository per source, resolving refs
//! to commits, and reading trees straight from the object database.
//!
//! What a poll does:
//! 1. An exact commit already in the cache: nothing at all (commits never change).
//! 2. Otherwise one connection: handshake and `ls-refs` limited to the ref
//!    (`refs/heads/<b>`, `refs/tags/<t>`, `refs/tags/*` for semver, or the
//!    full name). The ref resolves to a commit (annotated tags peeled). If it
//!    is the commit we already have, the connection is closed: no pack, no
//!    checkout, no artifact work.
//! 3. Otherwise the pack is fetched **shallow (depth 1)** for branches, tags,
//!    semver tags and full names, since only the tree at the tip is needed;
//!    refspecs are forced (`+`), so force-pushes just move the ref. A semver
//!    range fetches only the chosen tag, over a second connection. An exact
//!    commit is fetched by id with depth 1 when no branch is given, or with the
//!    branch's full history when one is (the commit may be anywhere in it).
//!
//! The cache is opened *isolated*: no system, global or user git config, no
//! credential helpers, no prompts. Credentials come only from the GitSource's
//! files.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use convoy_artifact::{EntryKind, Tree, TreeEntry};
use convoy_core::config::{RefSpec, format_revision};
use gix::ObjectId;
use gix::bstr::ByteSlice;
use gix::remote::Direction;
use gix::remote::fetch::{Shallow, Tags};

use crate::redact::{Secrets, redact_url};
use crate::{Error, Result};

/// How to reach a remote: credentials (read from the GitSource's files) and
/// transport settings.
#[derive(Clone, Default)]
pub struct FetchOptions {
    /// HTTP basic auth: user name and password (https only: gix refuses to
    /// send a password over plain http).
    pub basic: Option<(String, String)>,
    /// HTTP bearer token.
    pub bearer: Option<String>,
    /// SSH key and known_hosts.
    pub ssh: Option<SshKeys>,
    /// Extra CA certificates (PEM) to trust for https.
    pub ca_pem: Option<Vec<u8>>,
    /// HTTP connect timeout and ssh ConnectTimeout.
    pub connect_timeout: Option<std::time::Duration>,
    /// Send the bearer token over plain http to a loopback IP literal too
    /// (`auth.allowInsecureLoopback`); otherwise https only.
    pub allow_insecure_loopback: bool,
}

/// SSH credentials: a private key file (mode 0600, as ssh requires) and a
/// known_hosts file; host keys are always checked strictly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshKeys {
    /// The private key file.
    pub key: PathBuf,
    /// The known_hosts file.
    pub known_hosts: PathBuf,
}

impl std::fmt::Debug for FetchOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchOptions")
            .field("basic", &self.basic.as_ref().map(|(u, _)| u))
            .field("bearer", &self.bearer.as_ref().map(|_| "***"))
            .field("ssh", &self.ssh)
            .field("ca_pem", &self.ca_pem.as_ref().map(|p| p.len()))
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// A ref resolved to a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The commit id, 40 hex digits.
    pub commit: String,
    /// The `<ref>` part of the revision (`main`, `v1.2.3`, `refs/pull/1/head`, `HEAD`).
    pub reference: String,
    /// Whether a pack was fetched (false: the commit was already in the cache).
    pub fetched: bool,
}

impl Resolved {
    /// `<ref>@sha1:<commit>`.
    pub fn revision(&self) -> String {
        format_revision(&self.reference, &self.commit)
    }
}

/// Memory for decompressed delta bases while reading a commit's files.
const PACK_CACHE_BYTES: usize = 16 << 20;

/// A bare repository that caches one source's objects.
#[derive(Debug, Clone)]
pub struct GitCache {
    dir: PathBuf,
}

impl GitCache {
    /// A cache at `dir` (created on first fetch).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The repository directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn open(&self, mut overrides: Vec<String>) -> Result<gix::Repository> {
        let err = |e: &dyn std::fmt::Display| Error::Fetch {
            url: self.dir.display().to_string(),
            message: format!("cannot open the cache repository: {e}"),
        };
        if !self.dir.join("HEAD").exists() {
            std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
            gix::init_bare(&self.dir).map_err(|e| err(&e))?;
        }
        // Bound memory: the delta-base cache defaults to 96 MiB, and would
        // fill up while a large bundle is read. Blobs are read once, so no
        // object cache (trees are cached by GitTree).
        overrides.push(format!("gitoxide.core.defaultPackCacheMemoryLimit={}", PACK_CACHE_BYTES));
        let opts = gix::open::Options::isolated().config_overrides(overrides);
        let mut repo = gix::open_opts(&self.dir, opts).map_err(|e| err(&e))?;
        repo.object_cache_size(0);
        Ok(repo)
    }

    fn ssh_stderr(&self) -> PathBuf {
        let mut name = self.dir.file_name().unwrap_or_default().to_os_string();
        name.push(".ssh-stderr");
        self.dir.with_file_name(name)
    }

    /// Open the cache for reading trees.
    pub fn repo(&self) -> Result<gix::Repository> {
        self.open(Vec::new())
    }

    /// Resolve `spec` on the remote and fetch what is needed. `last` is the
    /// commit of the previous successful poll: when the ref still points
    /// there, nothing is fetched.
    pub fn fetch(
        &self,
        url: &str,
        spec: &RefSpec,
        auth: &FetchOptions,
        secrets: &Secrets,
        last: Option<&str>,
        interrupt: &AtomicBool,
    ) -> Result<Resolved> {
        let mut overrides = vec!["gitoxide.userAgent=convoy".to_string(), "protocol.version=2".to_string()];
        if let Some(keys) = &auth.ssh {
            let cmd = ssh_command(&keys.key, &keys.known_hosts, auth.connect_timeout, &self.ssh_stderr());
            overrides.push(format!("core.sshCommand={cmd}"));
            overrides.push("ssh.variant=ssh".into());
        }
        let repo = self.open(overrides)?;
        let stderr = self.ssh_stderr();
        let f = Fetcher {
            repo: &repo,
            url,
            auth,
            secrets,
            interrupt,
            ssh_stderr: auth.ssh.as_ref().map(|_| stderr),
        };

        if let RefSpec::Commit { commit, branch } = spec {
            let id = parse_id(commit)?;
            let reference = spec.revision_prefix(None);
            if is_commit(&repo, id) {
                return Ok(Resolved { commit: commit.clone(), reference, fetched: false });
            }
            match branch {
                Some(b) => f.fetch_refspec(&format!("+refs/heads/{b}:refs/heads/{b}"), None)?,
                None => f.fetch_refspec(&format!("+{commit}:refs/convoy/commit"), NonZeroU32::new(1))?,
            };
            if !is_commit(&repo, id) {
                return Err(Error::RefNotFound {
                    url: redact_url(url),
                    reference: format!("commit {commit}"),
                });
            }
            return Ok(Resolved { commit: commit.clone(), reference, fetched: true });
        }

        let (list_spec, display) = match spec {
            RefSpec::Branch(b) => (format!("+refs/heads/{b}:refs/heads/{b}"), format!("branch {b}")),
            RefSpec::Tag(t) => (format!("+refs/tags/{t}:refs/tags/{t}"), format!("tag {t}")),
            RefSpec::Name(n) => (format!("+{n}:{n}"), format!("ref {n}")),
            RefSpec::Semver(r) => {
                ("+refs/tags/*:refs/tags/*".to_string(), format!("a tag matching semver {r:?}"))
            }
            RefSpec::Commit { .. } => unreachable!("handled above"),
        };
        let not_found = || Error::RefNotFound { url: redact_url(url), reference: display.clone() };
        let remote = f.remote(&list_spec)?;
        let conn = f.connect(&remote)?;
        let prepare = conn
            .prepare_fetch(gix::progress::Discard, gix::remote::ref_map::Options::default())
            .map_err(|e| f.classify(&e))?;
        let refs: Vec<(String, ObjectId)> = prepare
            .ref_map()
            .mappings
            .iter()
            .filter_map(|m| match &m.remote {
                gix::remote::fetch::refmap::Source::Ref(r) => {
                    let (name, direct, peeled) = r.unpack();
                    Some((name.to_str_lossy().into_owned(), peeled.or(direct)?.to_owned()))
                }
                gix::remote::fetch::refmap::Source::ObjectId(_) => None,
            })
            .collect();
        let (name, commit) = match spec {
            RefSpec::Semver(range) => pick_semver(range, &refs)?.ok_or_else(not_found)?,
            _ => refs.into_iter().next().ok_or_else(not_found)?,
        };
        let reference = match spec {
            RefSpec::Semver(_) => spec.revision_prefix(name.strip_prefix("refs/tags/")),
            _ => spec.revision_prefix(None),
        };
        let hex = commit.to_hex().to_string();
        if last == Some(hex.as_str()) && is_commit(&repo, commit) {
            // Unchanged: dropping `prepare` ends the session without a pack.
            return Ok(Resolved { commit: hex, reference, fetched: false });
        }
        if matches!(spec, RefSpec::Semver(_)) {
            drop(prepare);
            f.fetch_refspec(&format!("+{name}:{name}"), NonZeroU32::new(1))?;
        } else {
            f.receive(prepare, NonZeroU32::new(1))?;
        }
        if !is_commit(&repo, commit) {
            return Err(Error::Fetch {
                url: redact_url(url),
                message: format!("{display} points to {hex}, which is not a commit we received"),
            });
        }
        Ok(Resolved { commit: hex, reference, fetched: true })
    }

    /// The tree of a commit in the cache.
    pub fn tree(&self, commit: &str) -> Result<GitTree> {
        let repo = self.repo()?;
        let id = parse_id(commit)?;
        let tree = repo.find_commit(id).and_then(|c| c.tree_id().map(|t| t.detach())).map_err(|e| {
            Error::Fetch { url: self.dir.display().to_string(), message: format!("commit {commit}: {e}") }
        })?;
        Ok(GitTree { repo, root: tree, dirs: Default::default() })
    }
}

fn parse_id(hex: &str) -> Result<ObjectId> {
    ObjectId::from_hex(hex.as_bytes()).map_err(|e| Error::Config(format!("{hex:?} is not a commit id: {e}")))
}

fn is_commit(repo: &gix::Repository, id: ObjectId) -> bool {
    repo.try_find_header(id).ok().flatten().is_some_and(|h| h.kind() == gix::object::Kind::Commit)
}

/// The highest tag whose version matches `range` (a leading `v` is allowed).
fn pick_semver(range: &str, refs: &[(String, ObjectId)]) -> Result<Option<(String, ObjectId)>> {
    let req =
        semver::VersionReq::parse(range).map_err(|e| Error::Config(format!("semver {range:?}: {e}")))?;
    Ok(refs
        .iter()
        .filter_map(|(name, id)| {
            let tag = name.strip_prefix("refs/tags/")?;
            let v = semver::Version::parse(tag.strip_prefix(['v', 'V']).unwrap_or(tag)).ok()?;
            req.matches(&v).then_some((v, name, id))
        })
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)))
        .map(|(_, n, id)| (n.clone(), *id)))
}

/// A shell-quoted ssh command with the source's key and strict host checking;
/// its stderr goes to a file so that failures can be explained.
fn ssh_command(
    key: &Path,
    known_hosts: &Path,
    connect_timeout: Option<std::time::Duration>,
    stderr: &Path,
) -> String {
    let q = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
    let timeout = connect_timeout.map_or(30, |d| d.as_secs().max(1));
    format!(
        "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o IdentityAgent=none -o UserKnownHostsFile={} \
         -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o BatchMode=yes \
         -o PasswordAuthentication=no -o LogLevel=ERROR -o ConnectTimeout={timeout} \
         -o ServerAliveInterval=15 -o ServerAliveCountMax=3 2>{}",
        q(key),
        q(known_hosts),
        q(stderr)
    )
}

struct Fetcher<'a> {
    repo: &'a gix::Repository,
    url: &'a str,
    auth: &'a FetchOptions,
    secrets: &'a Secrets,
    interrupt: &'a AtomicBool,
    ssh_stderr: Option<PathBuf>,
}

type Conn<'r, 'a> = gix::remote::Connection<
    'r,
    'a,
    'a,
    Box<dyn gix::protocol::transport::client::blocking_io::Transport + Send>,
>;

impl<'a> Fetcher<'a> {
    fn remote(&self, refspec: &str) -> Result<gix::Remote<'a>> {
        self.repo
            .remote_at(self.url)
            .map_err(|e| {
                Error::Config(format!(
                    "url {}: {}",
                    redact_url(self.url),
                    self.secrets.scrub(&e.to_string(), self.url)
                ))
            })?
            .with_fetch_tags(Tags::None)
            .with_refspecs([refspec], Direction::Fetch)
            .map_err(|e| Error::Config(format!("refspec {refspec:?}: {e}")))
    }

    fn connect<'r>(&self, remote: &'r gix::Remote<'a>) -> Result<Conn<'r, 'a>> {
        let mut conn = if self.url.to_ascii_lowercase().starts_with("git://") {
            remote.to_connection_with_transport(self.git_daemon_transport()?)
        } else {
            remote.connect(Direction::Fetch).map_err(|e| self.classify(&e))?
        };
        let basic = self.auth.basic.clone();
        conn.set_credentials(move |action| match action {
            gix::credentials::helper::Action::Get(ctx) => match &basic {
                Some((user, password)) => Ok(Some(gix::credentials::protocol::Outcome {
                    identity: gix::sec::identity::Account {
                        username: user.clone(),
                        password: password.clone(),
                        oauth_refresh_token: None,
                    },
                    next: ctx.into(),
                })),
                // No credentials configured: fail instead of prompting.
                None => Ok(None),
            },
            _ => Ok(None),
        });
        let lower = self.url.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            if rustls::crypto::CryptoProvider::get_default().is_none() {
                return Err(Error::Config(
                    "no rustls crypto provider is installed; the binary must install ring's before fetching over HTTP"
                        .into(),
                ));
            }
            let mut opts = gix::protocol::transport::client::blocking_io::http::Options {
                user_agent: Some(format!("convoy/{}", env!("CARGO_PKG_VERSION"))),
                connect_timeout: self.auth.connect_timeout,
                // Abort a transfer that stalls below 1 KiB/s for 30 s.
                low_speed_limit_bytes_per_second: 1024,
                low_speed_time_seconds: 30,
                ..Default::default()
            };
            if let Some(token) = &self.auth.bearer {
                if !crate::webhook::bearer_allowed_with(self.url, self.auth.allow_insecure_loopback) {
                    return Err(Error::Config(format!(
                        "refusing to send the bearer token over plain http to {}: use https (auth.allowInsecureLoopback allows http to a loopback IP only)",
                        redact_url(self.url)
                    )));
                }
                opts.extra_headers.push(format!("Authorization: Bearer {token}"));
            }
            let certs = match &self.auth.ca_pem {
                Some(pem) => reqwest::Certificate::from_pem_bundle(pem)
                    .map_err(|e| Error::Config(format!("caFile: not a PEM bundle of certificates: {e}")))?,
                None => Vec::new(),
            };
            // gix's reqwest backend hard-codes a 20 s connect timeout; use the
            // source's (reqwest's blocking client bounds each request at 30 s
            // of inactivity by default, so a silent server cannot hold a fetch
            // slot for long after the fetch timed out).
            let connect = self.auth.connect_timeout.unwrap_or(std::time::Duration::from_secs(20));
            let configure = move |mut b: reqwest::blocking::ClientBuilder| {
                for c in &certs {
                    b = b.add_root_certificate(c.clone());
                }
                Ok(b.connect_timeout(connect))
            };
            let backend = gix::protocol::transport::client::blocking_io::http::reqwest::Options {
                configure_client: Some(Box::new(configure)),
                ..Default::default()
            };
            opts.backend = Some(std::sync::Arc::new(std::sync::Mutex::new(backend)));
            conn.set_transport_options(Box::new(opts));
        }
        Ok(conn)
    }

    /// A git:// connection with TCP_NODELAY: gix's own leaves Nagle on, and
    /// its small request packets then wait for delayed ACKs (about 40 ms a
    /// poll on Linux).
    fn git_daemon_transport(
        &self,
    ) -> Result<Box<dyn gix::protocol::transport::client::blocking_io::Transport + Send>> {
        use std::net::{TcpStream, ToSocketAddrs};
        let err = |m: String| Error::Fetch { url: redact_url(self.url), message: m };
        let url = gix::url::parse(gix::bstr::BStr::new(self.url.as_bytes()))
            .map_err(|e| err(format!("invalid url: {e}")))?;
        let host = url.host().ok_or_else(|| err("no host".into()))?.to_string();
        let port = url.port;
        let addr = (host.as_str(), port.unwrap_or(9418))
            .to_socket_addrs()
            .map_err(|e| err(format!("cannot resolve {host}: {e}")))?
            .next()
            .ok_or_else(|| err(format!("cannot resolve {host}")))?;
        let timeout = self.auth.connect_timeout.unwrap_or(std::time::Duration::from_secs(30));
        let read =
            TcpStream::connect_timeout(&addr, timeout).map_err(|e| err(format!("cannot connect: {e}")))?;
        read.set_nodelay(true).map_err(|e| err(format!("socket: {e}")))?;
        // A server that stops talking must not hold a fetch slot forever.
        read.set_read_timeout(Some(timeout.max(std::time::Duration::from_secs(30))))
            .map_err(|e| err(format!("socket: {e}")))?;
        let write = read.try_clone().map_err(|e| err(format!("socket: {e}")))?;
        Ok(Box::new(gix::protocol::transport::client::git::blocking_io::Connection::new(
            read,
            write,
            gix::protocol::transport::Protocol::V2,
            url.path.clone(),
            Some((host, port)),
            gix::protocol::transport::client::git::ConnectMode::Daemon,
            false,
        )))
    }

    fn receive(
        &self,
        prepare: gix::remote::fetch::Prepare<
            '_,
            '_,
            impl gix::protocol::transport::client::blocking_io::Transport,
        >,
        depth: Option<NonZeroU32>,
    ) -> Result<()> {
        let prepare = match depth {
            Some(d) => prepare.with_shallow(Shallow::DepthAtRemote(d)),
            None => prepare,
        };
        prepare
            .with_write_packed_refs_only(true)
            .receive(gix::progress::Discard, self.interrupt)
            .map_err(|e| self.classify(&e))?;
        Ok(())
    }

    fn fetch_refspec(&self, refspec: &str, depth: Option<NonZeroU32>) -> Result<()> {
        let remote = self.remote(refspec)?;
        let conn = self.connect(&remote)?;
        let prepare = conn
            .prepare_fetch(gix::progress::Discard, gix::remote::ref_map::Options::default())
            .map_err(|e| self.classify(&e))?;
        if prepare.ref_map().mappings.is_empty() {
            return Err(Error::RefNotFound {
                url: redact_url(self.url),
                reference: refspec.trim_start_matches('+').to_string(),
            });
        }
        self.receive(prepare, depth)
    }

    /// Turn a gix error into ours, scrubbed of secrets, with what ssh said.
    fn classify(&self, e: &dyn std::fmt::Display) -> Error {
        let mut message = format!("{e:#}");
        if let Some(path) = &self.ssh_stderr
            && let Ok(text) = std::fs::read_to_string(path)
        {
            let said: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            if !said.is_empty() {
                message = format!("ssh: {}; {message}", said.join("; "));
            }
        }
        classify_message(self.url, self.secrets.scrub(&message, self.url))
    }
}

fn classify_message(url: &str, message: String) -> Error {
    let lower = message.to_ascii_lowercase();
    let url = redact_url(url);
    let auth_hints = [
        "authentication",
        "401",
        "403",
        "permission denied",
        "unauthorized",
        "forbidden",
        "host key verification failed",
        "credentials",
    ];
    if auth_hints.iter().any(|h| lower.contains(h)) {
        Error::Auth { url, message }
    } else {
        Error::Fetch { url, message }
    }
}

/// The decoded entries of one directory: name, kind, object id.
type Entries = std::rc::Rc<Vec<(String, EntryKind, ObjectId)>>;

/// A commit's tree as a [`Tree`], read blob by blob from the object database.
pub struct GitTree {
    repo: gix::Repository,
    root: ObjectId,
    /// Directory entries by path, decoded once.
    dirs: std::cell::RefCell<std::collections::HashMap<String, Entries>>,
}

impl GitTree {
    fn entries(&self, dir: &str) -> convoy_artifact::Result<Entries> {
        if let Some(e) = self.dirs.borrow().get(dir) {
            return Ok(e.clone());
        }
        let tree_id = if dir.is_empty() {
            self.root
        } else {
            let (parent, name) = dir.rsplit_once('/').unwrap_or(("", dir));
            let parent = self.entries(parent)?;
            match parent.iter().find(|(n, _, _)| n == name) {
                Some((_, EntryKind::Dir, id)) => *id,
                Some(_) => return Err(not_found(dir, "not a directory")),
                None => return Err(not_found(dir, "no such directory")),
            }
        };
        let tree = self.repo.find_tree(tree_id).map_err(|e| git_err(dir, e))?;
        let decoded = tree.decode().map_err(|e| git_err(dir, e))?;
        let mut out = Vec::with_capacity(decoded.entries.len());
        for e in &decoded.entries {
            let name = e.filename.to_str().map_err(|_| convoy_artifact::Error::Path {
                path: format!("{dir}/{}", e.filename.to_str_lossy()),
                message: "file name is not UTF-8".into(),
            })?;
            let kind = match e.mode.kind() {
                gix::object::tree::EntryKind::Tree => EntryKind::Dir,
                gix::object::tree::EntryKind::Blob | gix::object::tree::EntryKind::BlobExecutable => {
                    EntryKind::File
                }
                gix::object::tree::EntryKind::Link => EntryKind::Symlink,
                gix::object::tree::EntryKind::Commit => EntryKind::Other,
            };
            out.push((name.to_string(), kind, e.oid.to_owned()));
        }
        let out = std::rc::Rc::new(out);
        self.dirs.borrow_mut().insert(dir.to_string(), out.clone());
        Ok(out)
    }

    fn blob(&self, path: &str) -> convoy_artifact::Result<Vec<u8>> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let entries = self.entries(dir)?;
        let Some((_, _, id)) = entries.iter().find(|(n, k, _)| n == name && *k != EntryKind::Dir) else {
            return Err(not_found(path, "no such file"));
        };
        let blob = self.repo.find_blob(*id).map_err(|e| git_err(path, e))?;
        // Copy out exactly: the decode buffer can be much larger than the
        // blob, and goes back to the repository's free list for the next read.
        Ok(blob.data.clone())
    }

    /// The object id of the entry at `path` ("" is the commit's tree), or
    /// `None` if there is none. Reads only tree objects.
    pub fn entry_oid(&self, path: &str) -> convoy_artifact::Result<Option<ObjectId>> {
        if path.is_empty() {
            return Ok(Some(self.root));
        }
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        match self.entries(dir) {
            Ok(entries) => Ok(entries.iter().find(|(n, _, _)| n == name).map(|(_, _, id)| *id)),
            Err(convoy_artifact::Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The commit tree's id.
    pub fn root(&self) -> ObjectId {
        self.root
    }
}

fn not_found(path: &str, msg: &str) -> convoy_artifact::Error {
    convoy_artifact::Error::Io {
        path: path.to_string(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, msg.to_string()),
    }
}

fn git_err(path: &str, e: impl std::fmt::Display) -> convoy_artifact::Error {
    convoy_artifact::Error::Io { path: path.to_string(), source: std::io::Error::other(e.to_string()) }
}

impl Tree for GitTree {
    fn read_dir(&self, dir: &str) -> convoy_artifact::Result<Vec<TreeEntry>> {
        Ok(self.entries(dir)?.iter().map(|(n, k, _)| TreeEntry { name: n.clone(), kind: *k }).collect())
    }

    fn read_file(&self, path: &str) -> convoy_artifact::Result<Vec<u8>> {
        self.blob(path)
    }

    fn read_link(&self, path: &str) -> convoy_artifact::Result<String> {
        String::from_utf8(self.blob(path)?).map_err(|_| convoy_artifact::Error::Symlink {
            path: path.into(),
            message: "target is not UTF-8".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semver_picks_the_highest_match() {
        let id = ObjectId::null(gix::hash::Kind::Sha1);
        let refs: Vec<(String, ObjectId)> = ["v1.0.0", "v1.2.0", "1.10.1", "v2.0.0", "v1.3.0-rc.1", "junk"]
            .iter()
            .map(|t| (format!("refs/tags/{t}"), id))
            .collect();
        assert_eq!(pick_semver(">=1.0.0, <2.0.0", &refs).unwrap().unwrap().0, "refs/tags/1.10.1");
        assert_eq!(pick_semver("~1.2", &refs).unwrap().unwrap().0, "refs/tags/v1.2.0");
        assert_eq!(pick_semver("*", &refs).unwrap().unwrap().0, "refs/tags/v2.0.0");
        assert!(pick_semver(">=3", &refs).unwrap().is_none());
        assert!(pick_semver("not a range", &refs).is_err());
    }

    #[test]
    fn ssh_command_quotes_paths() {
        let c = ssh_command(Path::new("/d/it's key"), Path::new("/d/kh"), None, Path::new("/d/err"));
        assert!(c.contains(r"-i '/d/it'\''s key'"), "{c}");
        assert!(c.contains("StrictHostKeyChecking=yes") && c.contains("BatchMode=yes"), "{c}");
    }
}
