//! Offline artifact commands: `convoy keygen`, `convoy build`, `convoy verify`.
//!
//! `build` runs the hub's own code path (convoy-sources' `render`, so plain
//! YAML or a real kustomize, then convoy-artifact's packing and signing), so
//! a CI pipeline or an air-gapped user gets the same digest the hub would.
//! The output directory holds `artifact.tar.gz`, `statement.json` (the exact
//! signed bytes) and `statement.sig` (DER); `convoy verify` and
//! `convoy-agent apply DIR --key PUB` read that layout.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use convoy_artifact::{
    ARTIFACT_FILE, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, SIGNATURE_FILE, STATEMENT_FILE, SigningKey, Statement,
    TrustedKeys, check_artifact, digest_of, verify_statement,
};
use convoy_sources::render::{Kustomize, RenderOptions, render};

/// Artifact commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Generate a signing key pair: DIR/signing.key (PKCS#8 PEM, mode 0600)
    /// and DIR/signing.pub (SPKI PEM).
    Keygen(KeygenArgs),
    /// Build and sign an artifact from a directory, as the hub would.
    Build(Box<BuildArgs>),
    /// Verify a built artifact: the signature by a trusted key and the digest.
    Verify(VerifyArgs),
}

/// `convoy keygen`.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Where to write signing.key and signing.pub (created if missing;
    /// existing keys are never overwritten).
    #[arg(long, env = "CONVOY_KEYGEN_OUT")]
    pub out: PathBuf,
}

/// `convoy build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The bundle directory: plain YAML, or a kustomization.
    #[arg(long, env = "CONVOY_BUILD_DIR", required_unless_present = "chart", conflicts_with = "chart")]
    pub dir: Option<PathBuf>,
    /// The private signing key (PKCS#8 PEM).
    #[arg(long, env = "CONVOY_SIGNING_KEY")]
    pub key: PathBuf,
    /// Where to write artifact.tar.gz, statement.json and statement.sig.
    #[arg(long, env = "CONVOY_BUILD_OUT")]
    pub out: PathBuf,
    /// The bundle name in the statement (default: the directory's name).
    #[arg(long, env = "CONVOY_BUNDLE_NAME")]
    pub name: Option<String>,
    /// The revision in the statement, e.g. `main@sha1:<commit>`.
    #[arg(long, env = "CONVOY_REVISION", default_value = "unversioned")]
    pub revision: String,
    /// The generation in the statement (agents refuse lower generations).
    #[arg(long, env = "CONVOY_GENERATION", default_value_t = 1)]
    pub generation: u64,
    /// The source URL in the statement.
    #[arg(long, env = "CONVOY_SOURCE_URL", default_value = "")]
    pub source_url: String,
    /// The tree root for a kustomization that refers to directories above
    /// --dir (like a repository root). Default: --dir itself.
    #[arg(long, env = "CONVOY_BUILD_ROOT")]
    pub root: Option<PathBuf>,
    /// Extra ignore rules (gitignore syntax) on top of .convoyignore files.
    #[arg(long, env = "CONVOY_IGNORE_FILE")]
    pub ignore_file: Option<PathBuf>,
    /// The kustomize binary (default: `kustomize` on PATH, else `kubectl kustomize`).
    #[arg(long, env = "CONVOY_KUSTOMIZE")]
    pub kustomize: Option<PathBuf>,
    /// Helm options (`--chart` instead of `--dir`).
    #[command(flatten)]
    pub helm: crate::cmd_helm::HelmBuildArgs,
}

/// `convoy verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Trusted public keys (SPKI PEM; repeatable, or a comma-separated list;
    /// a file may hold several keys).
    #[arg(long = "key", env = "CONVOY_TRUSTED_KEYS", value_delimiter = ',', required = true)]
    pub keys: Vec<PathBuf>,
    /// Also require the statement to name this bundle.
    #[arg(long, env = "CONVOY_BUNDLE_NAME")]
    pub bundle: Option<String>,
    /// The directory `convoy build` wrote.
    pub dir: PathBuf,
}

/// Run an artifact command. Exit codes: 0 success, 1 verification failed,
/// 2 input error.
pub async fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    let result = tokio::task::spawn_blocking(move || match cmd {
        Command::Keygen(a) => keygen(&a),
        Command::Build(a) => build(&a),
        Command::Verify(a) => verify(&a),
    })
    .await
    .context("the command's worker thread failed")?;
    match result {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(ExitCode::from(2))
        }
    }
}

fn keygen(a: &KeygenArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let (private, public) = (a.out.join(PRIVATE_KEY_FILE), a.out.join(PUBLIC_KEY_FILE));
    for p in [&private, &public] {
        if p.exists() {
            bail!("{} exists; refusing to overwrite a key", p.display());
        }
    }
    let key = SigningKey::generate()?;
    key.save(&private)?;
    key.public_key().save(&public)?;
    println!("{}", key.public_key().key_id());
    eprintln!("wrote {} and {}", private.display(), public.display());
    Ok(ExitCode::SUCCESS)
}

fn build(a: &BuildArgs) -> anyhow::Result<ExitCode> {
    let Some(dir) = &a.dir else {
        return crate::cmd_helm::build_chart(a);
    };
    let dir = dir.canonicalize().with_context(|| format!("--dir {}", dir.display()))?;
    let root = match &a.root {
        Some(r) => r.canonicalize().with_context(|| format!("--root {}", r.display()))?,
        None => dir.clone(),
    };
    let rel = dir
        .strip_prefix(&root)
        .with_context(|| format!("--dir {} is not inside --root {}", dir.display(), root.display()))?;
    let rel = rel.to_str().context("--dir is not UTF-8")?.to_string();
    let name = match &a.name {
        Some(n) => n.clone(),
        None => dir
            .file_name()
            .and_then(|n| n.to_str())
            .context("cannot name the bundle; pass --name")?
            .to_string(),
    };
    convoy_core::identity::validate_name(&name).map_err(|e| anyhow::anyhow!("bundle name: {e}"))?;
    let key = SigningKey::load(&a.key)?;
    let ignore = match &a.ignore_file {
        Some(f) => {
            Some(std::fs::read_to_string(f).with_context(|| format!("--ignore-file {}", f.display()))?)
        }
        None => None,
    };
    let opts = RenderOptions {
        ignore,
        kustomize: a.kustomize.clone().map_or(Kustomize::Auto, Kustomize::Binary),
        ..RenderOptions::default()
    };
    let tree = convoy_artifact::FsTree::new(&root);
    let rendered = render(&tree, &rel, &dir.display().to_string(), &opts)?;
    let art = rendered.artifact;
    let statement = Statement::new(&name, &a.source_url, &a.revision, &art.digest, art.size, a.generation);
    let (statement_bytes, signature) = key.sign_statement(&statement)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    write_atomic(&a.out.join(ARTIFACT_FILE), &art.bytes)?;
    write_atomic(&a.out.join(STATEMENT_FILE), &statement_bytes)?;
    write_atomic(&a.out.join(SIGNATURE_FILE), &signature)?;
    println!("{}", art.digest);
    eprintln!(
        "built {name}: {} files, {} objects, {} bytes{}; signed by {}",
        art.files,
        art.objects,
        art.size,
        if rendered.kustomized { " (kustomize)" } else { "" },
        key.public_key().key_id()
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn verify(a: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let trusted = TrustedKeys::load(&a.keys)?;
    let read = |name: &str| {
        let p = a.dir.join(name);
        std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
    };
    let (statement_bytes, signature, artifact) =
        (read(STATEMENT_FILE)?, read(SIGNATURE_FILE)?, read(ARTIFACT_FILE)?);
    let checked = verify_statement(&statement_bytes, &signature, &trusted).and_then(|s| {
        let bundle = a.bundle.clone().unwrap_or_else(|| s.bundle.clone());
        check_artifact(&s, &bundle, &digest_of(&artifact), artifact.len() as u64).map(|()| s)
    });
    match checked {
        Ok(s) => {
            println!(
                "OK: bundle {} generation {} revision {} digest {} signed by {}",
                s.bundle,
                s.generation,
                s.source.revision,
                s.artifact.digest,
                s.key_id.as_deref().unwrap_or("a trusted key")
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(convoy_artifact::Error::Verify(failure)) => {
            eprintln!("FAILED: {failure}");
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}
