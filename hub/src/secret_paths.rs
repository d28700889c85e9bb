//! Owns the rule that secret-file paths in the fleet config (git credentials,
//! webhook secrets, commit-verification keys, alert provider secrets and
//! addresses) never point at the hub's own secrets: its data dir (CA key,
//! signing key, admin credentials, state) or the key files configured outside
//! it. Otherwise whoever writes the fleet repository could make the hub send
//! its CA key as a git password or an alert's bearer token.

use std::path::{Path, PathBuf};

use convoy_core::config::FleetConfig;

use crate::config::HubConfig;
use crate::{Error, Result};

/// Every secret-file path of `fleet`, with where it is set.
pub fn secret_files(fleet: &FleetConfig) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, s) in &fleet.sources {
        let at = |field: &str| format!("GitSource {name}: spec.{field}");
        if let Some(a) = &s.spec.auth {
            if let Some(f) = &a.bearer_token_file {
                out.push((at("auth.bearerTokenFile"), f.clone()));
            }
            if let Some(b) = &a.basic {
                out.push((at("auth.basic.passwordFile"), b.password_file.clone()));
                if let Some(f) = &b.username_file {
                    out.push((at("auth.basic.usernameFile"), f.clone()));
                }
            }
            if let Some(k) = &a.ssh {
                out.push((at("auth.ssh.privateKeyFile"), k.private_key_file.clone()));
                out.push((at("auth.ssh.knownHostsFile"), k.known_hosts_file.clone()));
            }
        }
        if let Some(w) = &s.spec.webhook {
            out.push((at("webhook.secretFile"), w.secret_file.clone()));
        }
        if let Some(v) = &s.spec.verify {
            out.push((at("verify.keysFile"), v.keys_file.clone()));
        }
        if let Some(f) = &s.spec.ca_file {
            out.push((at("caFile"), f.clone()));
        }
    }
    for (name, r) in &fleet.helm_repositories {
        let at = |field: &str| format!("HelmRepository {name}: spec.{field}");
        let files = [
            ("basicAuthFile", &r.spec.basic_auth_file),
            ("bearerTokenFile", &r.spec.bearer_token_file),
            ("caFile", &r.spec.ca_file),
        ];
        out.extend(files.into_iter().filter_map(|(field, f)| f.clone().map(|f| (at(field), f))));
        if let Some(w) = &r.spec.webhook {
            out.push((at("webhook.secretFile"), w.secret_file.clone()));
        }
    }
    for (name, r) in &fleet.oci_repositories {
        let at = |field: &str| format!("OCIRepository {name}: spec.{field}");
        let files = [
            ("basicAuthFile", &r.spec.basic_auth_file),
            ("bearerTokenFile", &r.spec.bearer_token_file),
            ("caFile", &r.spec.ca_file),
        ];
        out.extend(files.into_iter().filter_map(|(field, f)| f.clone().map(|f| (at(field), f))));
        if let Some(w) = &r.spec.webhook {
            out.push((at("webhook.secretFile"), w.secret_file.clone()));
        }
    }
    for (name, p) in &fleet.providers {
        if let Some(f) = &p.spec.secret_file {
            out.push((format!("Provider {name}: spec.secretFile"), f.clone()));
        }
        if let Some(f) = &p.spec.address_file {
            out.push((format!("Provider {name}: spec.addressFile"), f.clone()));
        }
    }
    out
}

/// `p` made absolute and with symlinks resolved as far as it exists (a file
/// created later still resolves through its existing parent).
fn resolve(p: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf())
    };
    // Where it exists, the kernel's answer (symlinks, then `..`).
    if let Ok(c) = joined.canonicalize() {
        return c;
    }
    // Otherwise `..` lexically, so that a missing directory before it cannot
    // hide where the path leads, then the longest existing parent.
    let mut abs = PathBuf::new();
    for c in joined.components() {
        match c {
            std::path::Component::ParentDir => {
                abs.pop();
            }
            std::path::Component::CurDir => {}
            other => abs.push(other),
        }
    }
    if let Ok(c) = abs.canonicalize() {
        return c;
    }
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => resolve(parent).join(name),
        _ => abs,
    }
}

/// Refuse `fleet` when a secret-file path points into the hub's data dir or
/// at one of its configured key files.
pub fn check(fleet: &FleetConfig, cfg: &HubConfig) -> Result<()> {
    let data_dir = resolve(&cfg.data_dir);
    let own: Vec<PathBuf> =
        [&cfg.tls.ca_key_file, &cfg.tls.key_file, &cfg.signing.key_file, &cfg.admin.token_file]
            .into_iter()
            .flatten()
            .map(|p| resolve(p))
            .collect();
    for (at, file) in secret_files(fleet) {
        let p = resolve(Path::new(&file));
        if p.starts_with(&data_dir) || own.contains(&p) {
            return Err(Error::Config(format!(
                "{at}: {file:?} points at the hub's own secrets (its data dir {} or a configured key file); use a file outside them",
                cfg.data_dir.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(secret: &str, provider_secret: &str) -> FleetConfig {
        let text = format!(
            r#"
apiVersion: convoy.dev/v1
kind: GitSource
metadata: {{name: repo}}
spec:
  url: "https://git.example/fleet.git"
  auth: {{bearerTokenFile: "{secret}"}}
---
apiVersion: convoy.dev/v1
kind: Provider
metadata: {{name: am}}
spec: {{type: alertmanager, address: "https://am.example", secretFile: "{provider_secret}"}}
"#
        );
        FleetConfig::parse([("fleet.yaml", text.as_str())]).unwrap()
    }

    #[test]
    fn secret_files_cannot_point_into_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("ca.key"), "k").unwrap();
        let outside = dir.path().join("token");
        std::fs::write(&outside, "t").unwrap();
        let cfg = HubConfig::local(data.clone());
        let ok = |a: &Path, b: &Path| check(&fleet(&a.display().to_string(), &b.display().to_string()), &cfg);
        assert!(ok(&outside, &outside).is_ok());
        let e = ok(&data.join("ca.key"), &outside).unwrap_err().to_string();
        assert!(e.contains("GitSource repo: spec.auth.bearerTokenFile"), "{e}");
        // Through `..` and a symlink, and a file not created yet.
        assert!(ok(&outside, &dir.path().join("x/../data/signing.key")).is_err());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&data, &link).unwrap();
        assert!(ok(&link.join("ca.key"), &outside).is_err());
        // A configured key file outside the data dir is protected too.
        let mut cfg2 = cfg.clone();
        cfg2.signing.key_file = Some(outside.clone());
        assert!(check(&fleet(&outside.display().to_string(), "/etc/hostname"), &cfg2).is_err());
    }
}
