//! Chart dependencies that a chart directory lists in `Chart.yaml` but does
//! not vendor in `charts/`: which ones are missing ([`missing`], pure), and
//! fetching each from the repository it names (an HTTP(S) chart repository's
//! `index.yaml`, or `oci://`) at its version constraint, checked against the
//! digest the index or the registry manifest gives, and kept in a
//! content-addressed cache ([`fetch_missing`]). The archives go into the
//! render input's `charts/`, so Helm's engine itself applies `condition`,
//! `tags`, `alias` and the subchart's values, exactly as for vendored
//! dependencies. A dependency whose repository is one the fleet declares (a
//! `HelmRepository` or `OCIRepository` with the same URL, or named by
//! `@name` / `alias:name`) is fetched with that repository's credentials and
//! CA ([`KnownRepository`], [`resolve`], pure).

use std::path::PathBuf;
use std::time::Duration;

use convoy_core::config::FleetConfig;
use serde::Deserialize;

use crate::helmrepo::{HelmRepo, RepoAuth};
use crate::oci::{OciAuth, OciClient};
use crate::redact::redact_url;
use crate::{ArtifactStore, Error, Result};

/// One entry of `Chart.yaml`'s `dependencies:` (the fields Convoy reads;
/// `condition`, `tags` and `import-values` are Helm's to apply).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Dependency {
    /// The chart's name in its repository.
    pub name: String,
    /// The version constraint (exact or a semver range; empty: the highest release).
    #[serde(default)]
    pub version: String,
    /// `https://…` / `http://…` (a chart repository), `oci://…`, `file://…`
    /// or a repository alias (`@name`).
    #[serde(default)]
    pub repository: String,
    /// The name the parent chart uses for it.
    #[serde(default)]
    pub alias: Option<String>,
}

#[derive(Deserialize)]
struct ChartYaml {
    #[serde(default)]
    dependencies: Vec<Dependency>,
}

/// The dependencies of `chart_yaml` (a `Chart.yaml`'s text) that the chart
/// does not vendor: no `charts/<name>/Chart.yaml` directory and no
/// `charts/<name>-*.tgz` archive among `files` (paths relative to the chart
/// directory). Pure.
pub fn missing(chart_yaml: &str, files: &[&str]) -> Result<Vec<Dependency>> {
    let c: ChartYaml = serde_saphyr::from_str(chart_yaml).map_err(|e| {
        Error::Config(format!("Chart.yaml: {}", e.to_string().lines().next().unwrap_or_default()))
    })?;
    Ok(c.dependencies.into_iter().filter(|d| !vendored(d, files)).collect())
}

fn vendored(d: &Dependency, files: &[&str]) -> bool {
    let dir = format!("{}/Chart.yaml", d.name);
    let archive = format!("{}-", d.name);
    files.iter().filter_map(|f| f.strip_prefix("charts/")).any(|rest| {
        rest == dir || (rest.starts_with(&archive) && rest.ends_with(".tgz") && !rest.contains('/'))
    })
}

/// Where a dependency is fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A chart repository (the URL of the directory holding `index.yaml`).
    Index(String),
    /// An OCI chart repository, the chart's name appended (`oci://host/path/name`).
    Oci(String),
}

/// Where `d` is fetched from, by its URL alone; an error for what Convoy
/// does not fetch (`file://`, a repository name, nothing). Pure.
pub fn origin(d: &Dependency) -> Result<Origin> {
    let r = d.repository.trim().trim_end_matches('/');
    if r.starts_with("https://") || r.starts_with("http://") {
        Ok(Origin::Index(r.to_string()))
    } else if r.starts_with("oci://") {
        Ok(Origin::Oci(format!("{r}/{}", d.name)))
    } else {
        Err(Error::Config(format!(
            "repository {r:?} is not fetched (only https://, http://, oci:// and the name of a HelmRepository or OCIRepository of the fleet, as @name, are); vendor the chart in charts/ (helm dependency build)"
        )))
    }
}

/// The kind of a [`KnownRepository`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepositoryKind {
    /// A `HelmRepository` (an HTTP(S) chart repository).
    Http,
    /// An `OCIRepository`.
    Oci,
}

/// A chart repository the fleet declares, whose credentials and CA serve
/// the chart dependencies that name it (by URL, or as `@name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownRepository {
    /// Its kind.
    pub kind: RepositoryKind,
    /// Its name in the fleet config.
    pub name: String,
    /// Its URL (`https://…`, or `oci://host/path`), without a trailing `/`.
    pub url: String,
    /// A file with `user:password`.
    pub basic_auth_file: Option<PathBuf>,
    /// A file with a bearer token.
    pub bearer_token_file: Option<PathBuf>,
    /// A PEM CA bundle trusted for it.
    pub ca_file: Option<PathBuf>,
    /// An `OCIRepository` with `insecure: true` (plain http).
    pub plain_http: bool,
    /// Its request timeout.
    pub timeout: Duration,
}

/// Every `HelmRepository` and `OCIRepository` of `fleet`, by name. Pure.
pub fn known_repositories(fleet: &FleetConfig) -> Vec<KnownRepository> {
    let path = |f: &Option<String>| f.as_ref().map(PathBuf::from);
    let http = fleet.helm_repositories.values().map(|r| KnownRepository {
        kind: RepositoryKind::Http,
        name: r.name.clone(),
        url: r.spec.url.trim().trim_end_matches('/').to_string(),
        basic_auth_file: path(&r.spec.basic_auth_file),
        bearer_token_file: path(&r.spec.bearer_token_file),
        ca_file: path(&r.spec.ca_file),
        plain_http: false,
        timeout: r.spec.timeout.get(),
    });
    let oci = fleet.oci_repositories.values().map(|r| KnownRepository {
        kind: RepositoryKind::Oci,
        name: r.name.clone(),
        url: r.spec.url.trim().trim_end_matches('/').to_string(),
        basic_auth_file: path(&r.spec.basic_auth_file),
        bearer_token_file: path(&r.spec.bearer_token_file),
        ca_file: path(&r.spec.ca_file),
        plain_http: r.spec.insecure,
        timeout: r.spec.timeout.get(),
    });
    http.chain(oci).collect()
}

/// Where `d` is fetched from and with which declared repository's
/// credentials: `@name` or `alias:name` is the fleet's repository of that
/// name (an error if there is none); a URL takes the credentials of the
/// declared repository of the same kind and URL, if any (else it is fetched
/// anonymously, with the system's CAs). Pure.
pub fn resolve<'a>(
    d: &Dependency,
    known: &'a [KnownRepository],
) -> Result<(Origin, Option<&'a KnownRepository>)> {
    let r = d.repository.trim().trim_end_matches('/');
    if let Some(name) = r.strip_prefix('@').or_else(|| r.strip_prefix("alias:")) {
        let k = known.iter().find(|k| k.name == name).ok_or_else(|| {
            Error::Config(format!(
                "repository {r:?}: the fleet has no HelmRepository or OCIRepository named {name:?}"
            ))
        })?;
        let origin = match k.kind {
            RepositoryKind::Http => Origin::Index(k.url.clone()),
            RepositoryKind::Oci => Origin::Oci(format!("{}/{}", k.url, d.name)),
        };
        return Ok((origin, Some(k)));
    }
    let origin = origin(d)?;
    let kind = match origin {
        Origin::Index(_) => RepositoryKind::Http,
        Origin::Oci(_) => RepositoryKind::Oci,
    };
    Ok((origin, known.iter().find(|k| k.kind == kind && k.url == r)))
}

/// Where [`fetch_missing`] looks: the content-addressed cache (none: no
/// cache) and the fleet's declared repositories.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lookup<'a> {
    /// Checked archives by digest.
    pub cache: Option<&'a ArtifactStore>,
    /// The fleet's `HelmRepository`s and `OCIRepository`s ([`known_repositories`]).
    pub repositories: &'a [KnownRepository],
}

/// A fetched, checked dependency archive.
#[derive(Debug, Clone)]
pub struct FetchedDependency {
    /// The dependency's chart name.
    pub name: String,
    /// The version the constraint resolved to.
    pub version: String,
    /// `sha256:<hex>` of the archive (what the index or manifest gives).
    pub digest: String,
    /// Where it goes in the chart: `charts/<name>-<version>.tgz`.
    pub file: String,
    /// The archive.
    pub bytes: Vec<u8>,
}

fn stalled(d: &Dependency, e: Error) -> Error {
    Error::ChartDependency {
        name: d.name.clone(),
        version: if d.version.is_empty() { "*".into() } else { d.version.clone() },
        repository: redact_url(&d.repository),
        source: Box::new(e),
    }
}

/// Fetch one dependency: resolve its constraint against the repository, take
/// the archive from `cache` when the resolved digest is there, else download
/// it, check it against the digest, and keep it in `cache`.
pub async fn fetch(d: &Dependency, lookup: Lookup<'_>, max_bytes: u64) -> Result<FetchedDependency> {
    let cache = lookup.cache;
    let cached = |digest: &str| cache.and_then(|c| c.path(digest).and_then(|_| c.read(digest).ok()));
    let (origin, known) = resolve(d, lookup.repositories)?;
    let (version, digest, bytes) = match origin {
        Origin::Index(url) => {
            let repo = HelmRepo::new(
                &url,
                &RepoAuth {
                    basic_auth_file: known.and_then(|k| k.basic_auth_file.clone()),
                    bearer_token_file: known.and_then(|k| k.bearer_token_file.clone()),
                    ca_file: known.and_then(|k| k.ca_file.clone()),
                    timeout: known.map(|k| k.timeout),
                    max_chart_bytes: Some(max_bytes),
                },
            )?;
            let index = repo.index().await?;
            let entry = repo.resolve(&index, &d.name, &d.version)?;
            let digest =
                format!("sha256:{}", entry.digest.trim_start_matches("sha256:").to_ascii_lowercase());
            match cached(&digest) {
                Some(b) => (entry.version.clone(), digest, b),
                None => {
                    let f = repo.download(&d.name, entry).await?;
                    (f.version, f.digest, f.bytes)
                }
            }
        }
        Origin::Oci(reference) => {
            let client = OciClient::new(
                &reference,
                &OciAuth {
                    basic_auth_file: known.and_then(|k| k.basic_auth_file.clone()),
                    bearer_token_file: known.and_then(|k| k.bearer_token_file.clone()),
                    ca_file: known.and_then(|k| k.ca_file.clone()),
                    plain_http: known.is_some_and(|k| k.plain_http),
                    timeout: known.map(|k| k.timeout),
                    max_chart_bytes: Some(max_bytes),
                },
            )?;
            let (tag, version) = client.resolve(&d.version).await?;
            let m = client.manifest(&tag).await?;
            match cached(&m.chart_digest) {
                Some(b) => (version, m.chart_digest, b),
                None => {
                    let b = client.chart(&m).await?;
                    (version, m.chart_digest, b)
                }
            }
        }
    };
    if let Some(c) = cache {
        c.put(&bytes)?;
    }
    Ok(FetchedDependency {
        name: d.name.clone(),
        file: format!("charts/{}-{version}.tgz", d.name),
        version,
        digest,
        bytes,
    })
}

/// Fetch every dependency of `chart_yaml` that `files` do not vendor, in
/// `Chart.yaml` order (see [`fetch`]); the first that cannot be fetched is
/// an [`Error::ChartDependency`] naming it. Blocking: call it from a
/// blocking thread (it runs the fetches on the current Tokio runtime, or on
/// its own when there is none). A chart without missing dependencies does
/// no I/O.
pub fn fetch_missing(
    chart_yaml: &str,
    files: &[&str],
    lookup: Lookup<'_>,
    max_bytes: u64,
) -> Result<Vec<FetchedDependency>> {
    let deps = missing(chart_yaml, files)?;
    if deps.is_empty() {
        return Ok(Vec::new());
    }
    let run = async {
        let mut out = Vec::with_capacity(deps.len());
        for d in &deps {
            out.push(fetch(d, lookup, max_bytes).await.map_err(|e| stalled(d, e))?);
        }
        Ok(out)
    };
    match tokio::runtime::Handle::try_current() {
        Ok(h) => h.block_on(run),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Config(format!("a runtime to fetch chart dependencies: {e}")))?
            .block_on(run),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHART: &str = "apiVersion: v2\nname: app\nversion: 1.0.0\ndependencies:\n- name: redis\n  version: \"^17.0.0\"\n  repository: https://charts.example.com/stable/\n  condition: redis.enabled\n- name: common\n  version: 2.x\n  repository: oci://registry.example.com/charts\n- name: local\n  version: 0.1.0\n  repository: file://../local\n- name: vendored\n  version: 1.0.0\n  repository: https://x\n- name: packed\n  alias: p\n  version: 1.0.0\n  repository: https://x\n";

    #[test]
    fn missing_dependencies_are_those_not_in_charts() {
        let files = [
            "Chart.yaml",
            "charts/vendored/Chart.yaml",
            "charts/vendored/templates/a.yaml",
            "charts/packed-1.0.0.tgz",
            "charts/redis/values.yaml",
            "charts/commonx-1.0.0.tgz",
        ];
        let m = missing(CHART, &files).unwrap();
        let names: Vec<&str> = m.iter().map(|d| d.name.as_str()).collect();
        // A directory without Chart.yaml is not a chart; `commonx-` is another chart.
        assert_eq!(names, ["redis", "common", "local"]);
        assert_eq!(m[0].version, "^17.0.0");
        assert_eq!(missing("apiVersion: v2\nname: x\nversion: 1.0.0\n", &[]).unwrap(), []);
        assert!(missing("dependencies: 3\n", &[]).is_err());
    }

    #[test]
    fn origins_by_repository_scheme() {
        let m = missing(CHART, &[]).unwrap();
        assert_eq!(origin(&m[0]).unwrap(), Origin::Index("https://charts.example.com/stable".into()));
        assert_eq!(origin(&m[1]).unwrap(), Origin::Oci("oci://registry.example.com/charts/common".into()));
        let e = origin(&m[2]).unwrap_err().to_string();
        assert!(e.contains("file://../local") && e.contains("vendor"), "{e}");
        let alias = Dependency {
            name: "x".into(),
            version: String::new(),
            repository: "@stable".into(),
            alias: None,
        };
        assert!(origin(&alias).is_err());
    }

    #[test]
    fn declared_repositories_lend_their_credentials_by_url_or_name() {
        let fleet = FleetConfig::parse([(
            "f.yaml",
            "apiVersion: convoy.dev/v1\nkind: HelmRepository\nmetadata: {name: stable}\nspec: {url: \"https://charts.example.com/stable/\", basicAuthFile: /etc/convoy/stable.auth, caFile: /etc/convoy/ca.pem}\n---\napiVersion: convoy.dev/v1\nkind: OCIRepository\nmetadata: {name: reg}\nspec: {url: \"oci://127.0.0.1:5000/charts\", bearerTokenFile: /etc/convoy/reg.token, insecure: true}\n",
        )])
        .unwrap();
        let known = known_repositories(&fleet);
        assert_eq!(known.len(), 2);
        assert_eq!(
            (known[0].kind, known[0].url.as_str()),
            (RepositoryKind::Http, "https://charts.example.com/stable")
        );
        assert_eq!(known[1].kind, RepositoryKind::Oci);
        assert!(known[1].plain_http);
        let dep = |repository: &str| Dependency {
            name: "redis".into(),
            version: String::new(),
            repository: repository.into(),
            alias: None,
        };
        let name = |r: Option<&KnownRepository>| r.map(|k| k.name.clone());
        type Case = (&'static str, std::result::Result<(Origin, Option<String>), &'static str>);
        let cases: [Case; 9] = [
            // By URL, with or without the trailing slash: the declared one's credentials.
            (
                "https://charts.example.com/stable",
                Ok((Origin::Index("https://charts.example.com/stable".into()), Some("stable".into()))),
            ),
            (
                "https://charts.example.com/stable/",
                Ok((Origin::Index("https://charts.example.com/stable".into()), Some("stable".into()))),
            ),
            (
                "oci://127.0.0.1:5000/charts",
                Ok((Origin::Oci("oci://127.0.0.1:5000/charts/redis".into()), Some("reg".into()))),
            ),
            // Another URL: anonymous.
            ("https://other.example.com", Ok((Origin::Index("https://other.example.com".into()), None))),
            // An http URL never takes an OCI repository's credentials, nor the reverse.
            (
                "oci://charts.example.com/stable",
                Ok((Origin::Oci("oci://charts.example.com/stable/redis".into()), None)),
            ),
            // By name.
            (
                "@stable",
                Ok((Origin::Index("https://charts.example.com/stable".into()), Some("stable".into()))),
            ),
            ("alias:reg", Ok((Origin::Oci("oci://127.0.0.1:5000/charts/redis".into()), Some("reg".into())))),
            ("@nope", Err("no HelmRepository or OCIRepository named \"nope\"")),
            ("file://../redis", Err("is not fetched")),
        ];
        for (repository, want) in cases {
            let got = resolve(&dep(repository), &known);
            match (got, want) {
                (Ok((o, k)), Ok((wo, wk))) => assert_eq!((o, name(k)), (wo, wk), "{repository}"),
                (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{repository}: {e}"),
                (got, want) => panic!("{repository}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn a_failed_dependency_names_itself_and_its_repository_without_credentials() {
        let d = Dependency {
            name: "redis".into(),
            version: String::new(),
            repository: "https://user:pw@charts.example.com/x".into(),
            alias: None,
        };
        let e = stalled(&d, Error::Config("boom".into()));
        let s = e.to_string();
        assert!(
            s.contains("redis")
                && s.contains("\"*\"")
                && s.contains("charts.example.com")
                && s.contains("boom"),
            "{s}"
        );
        assert!(!s.contains("pw"), "{s}");
        assert_eq!(e.reason(), "ChartDependencyFailed");
    }

    #[test]
    fn nothing_missing_does_no_io() {
        // No runtime, no server: a chart whose dependencies are vendored returns at once.
        let chart = "apiVersion: v2\nname: a\nversion: 1.0.0\ndependencies:\n- {name: b, version: 1.0.0, repository: \"https://127.0.0.1:1\"}\n";
        assert!(
            fetch_missing(chart, &["charts/b-1.0.0.tgz"], Lookup::default(), 1 << 20).unwrap().is_empty()
        );
    }
}
