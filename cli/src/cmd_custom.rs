//! `convoy vars` and `convoy render`: per-cluster customization from the
//! command line (cluster variables, and what one cluster gets of a bundle,
//! with which layer set each value; docs/config.md).

use std::collections::BTreeMap;

use convoy_proto::v1 as pb;

use crate::cmd_fleet::{Conn, Failure, Result, connect, term_safe};

/// `convoy vars CLUSTER k=v k-`
#[derive(Debug, clap::Args)]
pub struct VarsArgs {
    /// The cluster.
    pub cluster: String,
    /// `k=v` sets a variable, `k-` removes it; none: print the variables.
    pub changes: Vec<String>,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

/// How `convoy render` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RenderOutput {
    /// The objects, as a YAML stream (one `# Source:` comment per file).
    Yaml,
    /// Files, variant, digest, generation and explanation as JSON.
    Json,
}

/// `convoy render BUNDLE --cluster C`
#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// The bundle.
    pub bundle: String,
    /// The cluster.
    #[arg(long)]
    pub cluster: String,
    /// List which layer set each value (base, target entry, variable,
    /// default) instead of printing the objects.
    #[arg(long)]
    pub explain: bool,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "yaml")]
    pub output: RenderOutput,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

/// Parse `k=v` and `k-` arguments.
pub fn parse_changes(args: &[String]) -> Result<(BTreeMap<String, String>, Vec<String>)> {
    let mut set = BTreeMap::new();
    let mut unset = Vec::new();
    for a in args {
        if let Some((k, v)) = a.split_once('=') {
            set.insert(k.to_string(), v.to_string());
        } else if let Some(k) = a.strip_suffix('-') {
            unset.push(k.to_string());
        } else {
            return Err(Failure::usage(format!("{a:?}: expected k=v (set) or k- (remove)")));
        }
    }
    Ok((set, unset))
}

/// `convoy vars`.
pub async fn vars(a: VarsArgs) -> Result<()> {
    let (set, unset) = parse_changes(&a.changes)?;
    let mut client = connect(&a.conn).await?;
    let vars: BTreeMap<String, String> = if set.is_empty() && unset.is_empty() {
        let c = client.get_cluster(pb::GetClusterRequest { name: a.cluster.clone() }).await?.into_inner();
        c.cluster.map(|c| c.vars.into_iter().collect()).unwrap_or_default()
    } else {
        client
            .set_cluster_vars(pb::SetClusterVarsRequest {
                name: a.cluster.clone(),
                set: set.into_iter().collect(),
                unset,
            })
            .await?
            .into_inner()
            .vars
            .into_iter()
            .collect()
    };
    for (k, v) in &vars {
        println!("{}={}", term_safe(k), term_safe(v));
    }
    Ok(())
}

/// The `--explain` text of a render response.
pub fn explain_text(bundle: &str, cluster: &str, r: &pb::RenderBundleResponse) -> Vec<String> {
    let variant =
        if r.variant.is_empty() { "base artifact".to_string() } else { format!("variant {}", r.variant) };
    let mut out = vec![format!(
        "bundle {bundle} on cluster {cluster}: generation {}, {variant}, artifact {}",
        r.generation, r.digest
    )];
    out.extend(r.explain.iter().cloned());
    out
}

/// `convoy render`.
pub async fn render(a: RenderArgs) -> Result<()> {
    let mut client = connect(&a.conn).await?;
    let r = client
        .render_bundle(pb::RenderBundleRequest { bundle: a.bundle.clone(), cluster: a.cluster.clone() })
        .await?
        .into_inner();
    if !r.error.is_empty() {
        return Err(Failure::new(
            1,
            format!(
                "SubstitutionFailed: cluster {} cannot get its variant of {} (it keeps its last good generation): {}",
                a.cluster, a.bundle, r.error
            ),
        ));
    }
    if a.explain {
        for line in explain_text(&a.bundle, &a.cluster, &r) {
            println!("{}", term_safe(&line));
        }
        return Ok(());
    }
    match a.output {
        RenderOutput::Json => {
            let files: Vec<serde_json::Value> = r
                .files
                .iter()
                .map(|f| serde_json::json!({"path": f.path, "content": String::from_utf8_lossy(&f.content)}))
                .collect();
            let v = serde_json::json!({
                "bundle": a.bundle,
                "cluster": a.cluster,
                "variant": r.variant,
                "digest": r.digest,
                "generation": r.generation,
                "files": files,
                "explain": r.explain,
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        RenderOutput::Yaml => {
            for f in &r.files {
                println!("---\n# Source: {}", term_safe(&f.path));
                let text = String::from_utf8_lossy(&f.content);
                let text = text.strip_prefix("---\n").unwrap_or(&text);
                print!("{text}");
                if !text.ends_with('\n') {
                    println!();
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_parse_sets_and_removals() {
        let (set, unset) = parse_changes(&["region=eu".into(), "a=b=c".into(), "old-".into()]).unwrap();
        assert_eq!(set, BTreeMap::from([("region".into(), "eu".into()), ("a".into(), "b=c".into())]));
        assert_eq!(unset, vec!["old".to_string()]);
        assert!(parse_changes(&["bare".into()]).is_err());
    }
}
