//! `convoy cluster add NAME --label k=v`: a bootstrap token bound to the
//! cluster name, and the exact `helm install` command of charts/convoy-agent
//! with the hub address, the hub CA, the trusted statement keys and the
//! token filled in (values built by [`agent_values`], quoted for a POSIX
//! shell by [`helm_install_command`]).

use std::collections::BTreeMap;

use convoy_core::duration::HumanDuration;
use convoy_hub::runtime::CredentialsFile;
use convoy_proto::v1 as pb;
use serde_json::{Value, json};

use crate::cmd_fleet::{Conn, Failure, Result, connect};

/// `convoy cluster ...`
#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Create a token bound to a new cluster and print the `helm install`
    /// command that installs its agent.
    Add(Box<ClusterAddArgs>),
}

/// `convoy cluster add`
#[derive(Debug, clap::Args)]
pub struct ClusterAddArgs {
    /// The cluster name (DNS-1123).
    pub name: String,
    /// Labels given to the cluster (k=v, repeatable or comma-separated).
    #[arg(long = "labels", alias = "label", short = 'l', value_delimiter = ',')]
    pub labels: Vec<String>,
    /// The token's lifetime (install the agent before it runs out).
    #[arg(long, default_value = "24h")]
    pub ttl: HumanDuration,
    /// The hub address agents use (default: the address this command
    /// connects to). Several replicas: comma separated.
    #[arg(long)]
    pub hub_address: Option<String>,
    /// The agent chart: a path, a `repo/chart` or an `oci://` reference.
    #[arg(long, default_value = "charts/convoy-agent")]
    pub chart: String,
    /// The Helm release name.
    #[arg(long, default_value = "convoy-agent")]
    pub release: String,
    /// The namespace the agent runs in.
    #[arg(long, default_value = "convoy-system")]
    pub namespace: String,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

/// Run a `convoy cluster` command.
pub async fn run(cmd: ClusterCommand) -> Result<()> {
    match cmd {
        ClusterCommand::Add(a) => add(*a).await,
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure { code: 2, message: message.into() }
}

async fn add(a: ClusterAddArgs) -> Result<()> {
    convoy_core::identity::validate_name(&a.name).map_err(|e| usage(e.to_string()))?;
    let labels = convoy_core::selector::parse_labels(a.labels.iter().map(String::as_str))
        .map_err(|e| usage(e.to_string()))?;
    let hub_address = match (&a.hub_address, &a.conn.hub, &a.conn.credentials) {
        (Some(h), _, _) | (None, Some(h), _) => h.clone(),
        (None, None, Some(p)) => CredentialsFile::load(p).map_err(|e| usage(e.to_string()))?.hub,
        (None, None, None) => {
            return Err(usage("no hub address: pass --hub-address, --hub or --credentials"));
        }
    };
    let mut client = connect(&a.conn).await?;
    let r = client
        .create_token(pb::CreateTokenRequest {
            cluster: a.name.clone(),
            labels: labels.clone().into_iter().collect(),
            ttl_seconds: a.ttl.get().as_secs().max(1),
            single_use: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    let values = agent_values(&AgentInstall {
        cluster: &a.name,
        labels: &labels,
        hub_address: &hub_address,
        ca_pem: &r.ca_pem,
        trusted_keys_pem: &r.trusted_keys_pem,
        token: &r.token,
    });
    println!("{}", helm_install_command(&a.release, &a.chart, &a.namespace, &values));
    eprintln!(
        "cluster {}: token {} (single use, expires in {}) is in the command above; it is shown only once",
        a.name, r.token_id, a.ttl
    );
    Ok(())
}

/// What the agent of a new cluster needs.
pub struct AgentInstall<'a> {
    /// The cluster name.
    pub cluster: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
    /// The hub address(es).
    pub hub_address: &'a str,
    /// The hub CA PEM.
    pub ca_pem: &'a str,
    /// The trusted statement keys (one or more SPKI PEM blocks).
    pub trusted_keys_pem: &'a str,
    /// The bootstrap token.
    pub token: &'a str,
}

/// The PEM blocks in `pem`, one string each.
pub fn pem_blocks(pem: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in pem.lines() {
        let line = line.trim_end();
        if line.starts_with("-----BEGIN ") {
            cur.clear();
        }
        cur.push_str(line);
        cur.push('\n');
        if line.starts_with("-----END ") {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

/// The values of charts/convoy-agent for `i` (top-level keys `hub`,
/// `cluster`, `bootstrap`, `trustedKeys`).
pub fn agent_values(i: &AgentInstall<'_>) -> Value {
    json!({
        "hub": {"address": i.hub_address, "ca": i.ca_pem},
        "cluster": {"name": i.cluster, "labels": i.labels},
        "bootstrap": {"token": i.token},
        "trustedKeys": pem_blocks(i.trusted_keys_pem),
    })
}

/// `s` quoted for a POSIX shell (single quotes; a single quote as `'\''`).
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `helm install` command line: one `--set-json` per top-level key of
/// `values` (Helm merges each over the chart's defaults).
pub fn helm_install_command(release: &str, chart: &str, namespace: &str, values: &Value) -> String {
    let mut parts = vec![format!(
        "helm install {} {} --namespace {} --create-namespace",
        shell_quote(release),
        shell_quote(chart),
        shell_quote(namespace)
    )];
    if let Some(map) = values.as_object() {
        for (k, v) in map {
            parts.push(format!("--set-json {}", shell_quote(&format!("{k}={v}"))));
        }
    }
    parts.join(" \\\n  ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n";

    #[test]
    fn values_carry_the_hub_the_cluster_and_every_trusted_key() {
        let labels = BTreeMap::from([("env".to_string(), "prod".to_string())]);
        let keys = format!("{KEY}{}", KEY.replace("MFkw", "MFkx"));
        let v = agent_values(&AgentInstall {
            cluster: "c1",
            labels: &labels,
            hub_address: "https://hub:8443",
            ca_pem: "-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n",
            trusted_keys_pem: &keys,
            token: "cvt_x",
        });
        assert_eq!(v["hub"]["address"], "https://hub:8443");
        assert_eq!(v["cluster"]["labels"]["env"], "prod");
        assert_eq!(v["bootstrap"]["token"], "cvt_x");
        assert_eq!(v["trustedKeys"].as_array().unwrap().len(), 2);
        assert_eq!(v["trustedKeys"][0], KEY);
    }

    #[test]
    fn the_command_is_quoted_for_a_shell() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        let v = json!({"cluster": {"name": "c1", "labels": {"team": "o'neil"}}});
        let cmd = helm_install_command("convoy-agent", "charts/convoy-agent", "convoy-system", &v);
        assert_eq!(
            cmd,
            "helm install 'convoy-agent' 'charts/convoy-agent' --namespace 'convoy-system' --create-namespace \\\n  \
             --set-json 'cluster={\"name\":\"c1\",\"labels\":{\"team\":\"o'\\''neil\"}}'"
        );
        // What a shell hands helm is the JSON again.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote(&format!("cluster={}", v["cluster"]))))
            .output()
            .unwrap();
        let back: Value =
            serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim_start_matches("cluster="))
                .unwrap();
        assert_eq!(back, v["cluster"]);
    }
}
