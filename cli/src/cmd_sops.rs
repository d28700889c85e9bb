//! `convoy sops recipients`: the age recipients of the clusters a selector
//! matches, as their agents reported them, ready for `.sops.yaml`.

use convoy_proto::v1 as pb;

use crate::cmd_fleet::{Conn, Failure, Result, connect};

/// `convoy sops ...`.
#[derive(Debug, clap::Subcommand)]
pub enum SopsCommand {
    /// Print the age recipients of the matching clusters (one per line, or
    /// `--format sops-yaml` for a `.sops.yaml` creation rule).
    Recipients(Box<RecipientsArgs>),
}

/// Output of `convoy sops recipients`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RecipientsFormat {
    /// One recipient per line.
    Lines,
    /// Comma-separated, for `sops encrypt --age`.
    Comma,
    /// A `.sops.yaml` creation rule.
    SopsYaml,
}

/// `convoy sops recipients`.
#[derive(Debug, clap::Args)]
pub struct RecipientsArgs {
    /// Only clusters matching this label selector (`env=prod`).
    #[arg(long, short = 'l')]
    pub selector: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "lines")]
    pub format: RecipientsFormat,
    #[command(flatten)]
    pub conn: Conn,
}

/// Run `convoy sops ...`.
pub async fn run(cmd: SopsCommand) -> Result<()> {
    match cmd {
        SopsCommand::Recipients(a) => recipients(*a).await,
    }
}

async fn recipients(a: RecipientsArgs) -> Result<()> {
    let mut client = connect(&a.conn).await?;
    let r = client
        .list_clusters(pb::ListClustersRequest { label_selector: a.selector.unwrap_or_default() })
        .await?
        .into_inner();
    let (text, missing) = render(&r.clusters, a.format);
    for name in &missing {
        eprintln!(
            "cluster {name}: its agent has reported no age recipient yet (not connected since SOPS support?)"
        );
    }
    if text.is_empty() {
        // Exit code 5: not found.
        return Err(Failure { code: 5, message: "no matching cluster has reported an age recipient".into() });
    }
    print!("{text}");
    Ok(())
}

/// The recipients of `clusters` (sorted, without duplicates: clusters may
/// share a key) and the clusters that reported none.
pub fn render(clusters: &[pb::Cluster], format: RecipientsFormat) -> (String, Vec<String>) {
    let mut all: Vec<&str> = Vec::new();
    let mut missing = Vec::new();
    for c in clusters {
        if c.age_recipients.is_empty() {
            missing.push(c.name.clone());
        }
        all.extend(c.age_recipients.iter().map(String::as_str));
    }
    all.sort_unstable();
    all.dedup();
    if all.is_empty() {
        return (String::new(), missing);
    }
    let text = match format {
        RecipientsFormat::Lines => all.iter().map(|r| format!("{r}\n")).collect(),
        RecipientsFormat::Comma => format!("{}\n", all.join(",")),
        RecipientsFormat::SopsYaml => {
            let mut s =
                String::from("creation_rules:\n  - encrypted_regex: ^(data|stringData)$\n    age: >-\n");
            for (i, r) in all.iter().enumerate() {
                s.push_str(&format!("      {r}{}\n", if i + 1 < all.len() { "," } else { "" }));
            }
            s
        }
    };
    (text, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(name: &str, r: &[&str]) -> pb::Cluster {
        pb::Cluster {
            name: name.into(),
            age_recipients: r.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn recipients_are_sorted_deduplicated_and_missing_ones_named() {
        let cs = [
            cluster("a", &["age1b", "age1shared"]),
            cluster("b", &["age1a", "age1shared"]),
            cluster("c", &[]),
        ];
        let (text, missing) = render(&cs, RecipientsFormat::Lines);
        assert_eq!(text, "age1a\nage1b\nage1shared\n");
        assert_eq!(missing, vec!["c".to_string()]);
        assert_eq!(render(&cs, RecipientsFormat::Comma).0, "age1a,age1b,age1shared\n");
        let yaml = render(&cs, RecipientsFormat::SopsYaml).0;
        assert!(yaml.contains("age: >-\n      age1a,\n      age1b,\n      age1shared\n"), "{yaml}");
        assert_eq!(render(&cs[2..], RecipientsFormat::Lines).0, "");
    }
}
