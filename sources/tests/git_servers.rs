//! GitCache against real git servers started by the tests: git daemon,
//! smart HTTP (nginx + fcgiwrap + git http-backend) with basic and bearer
//! auth, and sshd with a generated key and strict known_hosts.

mod common;

use std::sync::atomic::AtomicBool;

use common::*;
use convoy_core::config::RefSpec;
use convoy_sources::Error;
use convoy_sources::git::{FetchOptions, GitCache, Resolved, SshKeys};
use convoy_sources::redact::Secrets;

fn fetch(cache: &GitCache, url: &str, auth: &FetchOptions, last: Option<&str>) -> Result<Resolved, Error> {
    let mut secrets = Secrets::default();
    if let Some((_, p)) = &auth.basic {
        secrets.add(p);
    }
    if let Some(t) = &auth.bearer {
        secrets.add(t);
    }
    cache.fetch(url, &RefSpec::Branch("main".into()), auth, &secrets, last, &AtomicBool::new(false))
}

fn main_branch() -> RefSpec {
    RefSpec::Branch("main".into())
}

#[test]
fn heavy_git_daemon() {
    let up = Upstream::new("fleet", &[("cm.yaml", &configmap("a"))]);
    let daemon = git_daemon(&up.srv());
    let url = format!("git://127.0.0.1:{}/fleet.git", daemon.port);
    let dir = tempfile::tempdir().unwrap();
    let cache = GitCache::new(dir.path().join("c.git"));
    let c1 = up.head();
    let r = fetch(&cache, &url, &FetchOptions::default(), None).unwrap();
    assert_eq!((r.commit.as_str(), r.fetched), (c1.as_str(), true));
    assert!(!fetch(&cache, &url, &FetchOptions::default(), Some(&c1)).unwrap().fetched);
    let c2 = up.commit(&[("cm2.yaml", &configmap("b"))], "two");
    up.push(&["origin", "main"]);
    let r = fetch(&cache, &url, &FetchOptions::default(), Some(&c1)).unwrap();
    assert_eq!((r.commit.as_str(), r.fetched), (c2.as_str(), true));
    // A shallow cache: only the tip commit was fetched.
    assert!(dir.path().join("c.git/shallow").exists());
    let err = fetch(
        &cache,
        &format!("git://127.0.0.1:{}/missing.git", daemon.port),
        &FetchOptions::default(),
        None,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Fetch { .. }), "{err}");
    let err = cache
        .fetch(
            &url,
            &RefSpec::Tag("v9".into()),
            &FetchOptions::default(),
            &Secrets::default(),
            None,
            &AtomicBool::new(false),
        )
        .unwrap_err();
    assert!(matches!(err, Error::RefNotFound { .. }), "{err}");
    let _ = main_branch();
}

#[test]
fn heavy_smart_https_with_basic_and_bearer_auth() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let up = Upstream::new("fleet", &[("cm.yaml", &configmap("a"))]);
    let password = "s3cret-Pa55word";
    let (https, ca) = https_server(&up.srv(), "alice", password);
    let url = format!("https://127.0.0.1:{}/git/fleet.git", https.port);
    let dir = tempfile::tempdir().unwrap();
    let cache = GitCache::new(dir.path().join("c.git"));
    let ca_pem = Some(ca.into_bytes());
    let good = FetchOptions {
        basic: Some(("alice".into(), password.into())),
        ca_pem: ca_pem.clone(),
        ..Default::default()
    };
    let c1 = up.head();
    let r = fetch(&cache, &url, &good, None).unwrap();
    assert_eq!((r.commit.as_str(), r.fetched), (c1.as_str(), true));
    assert!(!fetch(&cache, &url, &good, Some(&c1)).unwrap().fetched);
    let c2 = up.commit(&[("cm2.yaml", &configmap("b"))], "two");
    up.push(&["origin", "main"]);
    assert_eq!(fetch(&cache, &url, &good, Some(&c1)).unwrap().commit, c2);

    // An untrusted server certificate.
    let untrusted = FetchOptions { basic: good.basic.clone(), ..Default::default() };
    let err = fetch(&cache, &url, &untrusted, None).unwrap_err();
    assert!(matches!(err, Error::Fetch { .. }), "{err}");

    // Wrong password, and none at all: authentication errors without the secret.
    let wrong = FetchOptions {
        basic: Some(("alice".into(), "wrong-password".into())),
        ca_pem: ca_pem.clone(),
        ..Default::default()
    };
    let err = fetch(&cache, &url, &wrong, None).unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    assert!(!err.to_string().contains("wrong-password"), "{err}");
    let none = FetchOptions { ca_pem: ca_pem.clone(), ..Default::default() };
    let err = fetch(&cache, &url, &none, None).unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    // Credentials in the URL are never echoed back.
    let in_url = format!("https://alice:{password}@127.0.0.1:{}/git/missing.git", https.port);
    let err = fetch(&cache, &in_url, &good, None).unwrap_err();
    assert!(!err.to_string().contains(password), "{err}");

    // Bearer token.
    let tok_url = format!("https://127.0.0.1:{}/tok/fleet.git", https.port);
    let bearer = FetchOptions { bearer: Some(password.into()), ca_pem: ca_pem.clone(), ..Default::default() };
    let fresh = tempfile::tempdir().unwrap();
    let r = fetch(&GitCache::new(fresh.path().join("c.git")), &tok_url, &bearer, None).unwrap();
    assert_eq!(r.commit, c2);
    let bad = FetchOptions { bearer: Some("nope-token".into()), ca_pem, ..Default::default() };
    let err = fetch(&GitCache::new(fresh.path().join("d.git")), &tok_url, &bad, None).unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    assert!(!err.to_string().contains("nope-token"), "{err}");
}

#[test]
fn heavy_ssh_with_key_and_strict_known_hosts() {
    let up = Upstream::new("fleet", &[("cm.yaml", &configmap("a"))]);
    let ssh = ssh_server();
    let url = format!("ssh://{}@127.0.0.1:{}{}", ssh.user, ssh.server.port, up.bare.display());
    let dir = tempfile::tempdir().unwrap();
    let cache = GitCache::new(dir.path().join("c.git"));
    let auth = FetchOptions {
        ssh: Some(SshKeys { key: ssh.key.clone(), known_hosts: ssh.known_hosts.clone() }),
        ..Default::default()
    };
    let c1 = up.head();
    let r = fetch(&cache, &url, &auth, None).unwrap();
    assert_eq!((r.commit.as_str(), r.fetched), (c1.as_str(), true));
    assert!(!fetch(&cache, &url, &auth, Some(&c1)).unwrap().fetched);

    // An unknown host key is refused.
    let empty_kh = dir.path().join("empty_known_hosts");
    std::fs::write(&empty_kh, "").unwrap();
    let strict = FetchOptions {
        ssh: Some(SshKeys { key: ssh.key.clone(), known_hosts: empty_kh }),
        ..Default::default()
    };
    let err = fetch(&GitCache::new(dir.path().join("d.git")), &url, &strict, None).unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    // A key the server does not accept is refused.
    let other = dir.path().join("other_key");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(out.status.success());
    let wrong = FetchOptions {
        ssh: Some(SshKeys { key: other, known_hosts: ssh.known_hosts.clone() }),
        ..Default::default()
    };
    let err = fetch(&GitCache::new(dir.path().join("e.git")), &url, &wrong, None).unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
}
