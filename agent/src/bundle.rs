//! Bundles as the agent sees them: the domain form of a hub deployment, the
//! verification rules of the Sync protocol (signature by a trusted key, digest,
//! size, bundle name, generation order), and turning a verified artifact into
//! manifests through convoy-artifact's safe unpacker. Nothing here talks to the
//! hub or the cluster.

use std::time::Duration;

use convoy_artifact::{Limits, Statement, TrustedKeys};
use serde::{Deserialize, Serialize};

use crate::objects::{Manifest, Origin};
use crate::{Error, Result};

/// What to do about drift, per bundle or agent-wide (the fleet config's type).
pub use convoy_core::config::DriftMode;

/// How to apply a bundle (the hub's ApplyOptions, in domain form).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleOptions {
    /// Namespace for namespaced objects without one.
    pub target_namespace: Option<String>,
    /// Delete objects that left the bundle, and everything when the bundle leaves.
    pub prune: bool,
    /// Wait for health before Ready.
    pub wait: bool,
    /// Apply plus wait timeout; `None` means the agent default.
    pub timeout: Option<Duration>,
    /// Bundles that must be Ready first.
    pub depends_on: Vec<String>,
    /// Leave the bundle alone.
    pub suspend: bool,
    /// Take ownership of fields other managers own.
    pub force: bool,
    /// Drift handling; `None` means the agent default.
    pub drift: Option<DriftMode>,
    /// Which namespaces and kinds the bundle may use (checked before apply).
    /// Default (records stored before it existed): unrestricted.
    #[serde(default)]
    pub tenancy: convoy_core::tenancy::Tenancy,
}

impl BundleOptions {
    /// Whether two option sets produce different objects (so that a change
    /// needs a re-apply even at the same generation).
    pub fn affects_objects(&self, other: &BundleOptions) -> bool {
        self.target_namespace != other.target_namespace
            || self.force != other.force
            || self.tenancy != other.tenancy
    }
}

/// One bundle as the hub wants it on this cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// The bundle name.
    pub name: String,
    /// The exact signed statement bytes.
    pub statement: Vec<u8>,
    /// The DER signature over `statement`.
    pub signature: Vec<u8>,
    /// sha256:<hex> of the artifact.
    pub digest: String,
    /// Artifact size in bytes.
    pub size: u64,
    /// The statement generation.
    pub generation: u64,
    /// How to apply it.
    pub options: BundleOptions,
}

/// The revision of a bundle that is applied on this cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedRevision {
    /// The generation.
    pub generation: u64,
    /// The artifact digest.
    pub digest: String,
    /// The source revision from the statement.
    pub revision: String,
    /// The signed statement that authorized it (re-verified on restart).
    pub statement: Vec<u8>,
    /// Its signature.
    pub signature: Vec<u8>,
    /// The options it was applied with.
    pub options: BundleOptions,
}

/// What the protocol rules say about a desired deployment given what is applied.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Same generation and digest, same object-affecting options: nothing to do.
    UpToDate,
    /// Verify, download and apply it.
    Apply,
    /// Refuse it (an older generation than applied, or a tampered generation).
    Refuse(&'static str, String),
}

/// Rule 6 of the Sync protocol.
pub fn decide(desired: &Deployment, applied: Option<&AppliedRevision>) -> Decision {
    let Some(a) = applied else { return Decision::Apply };
    // No flag can lower the floor: a rollback is a new, signed, higher generation.
    if desired.generation < a.generation {
        return Decision::Refuse(
            "GenerationRollback",
            format!(
                "refusing generation {} of bundle {}: generation {} is applied (a rollback must be a new, higher generation)",
                desired.generation, desired.name, a.generation
            ),
        );
    }
    if desired.generation == a.generation {
        if desired.digest != a.digest {
            return Decision::Refuse(
                "GenerationTampered",
                format!(
                    "refusing bundle {} generation {}: digest {} differs from the applied {} for the same generation",
                    desired.name, desired.generation, desired.digest, a.digest
                ),
            );
        }
        if desired.options.affects_objects(&a.options) {
            return Decision::Apply;
        }
        return Decision::UpToDate;
    }
    Decision::Apply
}

fn verify_err(e: convoy_artifact::Error) -> Error {
    let reason = e.reason();
    Error::Verification { reason, message: e.to_string() }
}

/// Check the signed statement of a deployment before anything is downloaded:
/// a trusted key signed the exact bytes, the statement names this bundle, and
/// digest, size and generation agree with the deployment.
pub fn verify_statement(d: &Deployment, trusted: &TrustedKeys) -> Result<Statement> {
    let st = convoy_artifact::verify_statement(&d.statement, &d.signature, trusted).map_err(verify_err)?;
    if st.bundle != d.name {
        return Err(Error::verification(
            "BundleMismatch",
            format!("the statement is for bundle {:?}, the hub sent it as {:?}", st.bundle, d.name),
        ));
    }
    if st.artifact.digest != d.digest {
        return Err(Error::verification(
            "DigestMismatch",
            format!("the statement names artifact {}, the hub sent {}", st.artifact.digest, d.digest),
        ));
    }
    if st.artifact.size != d.size {
        return Err(Error::verification(
            "SizeMismatch",
            format!("the statement says {} bytes, the hub says {}", st.artifact.size, d.size),
        ));
    }
    if st.generation != d.generation {
        return Err(Error::verification(
            "GenerationMismatch",
            format!("the statement has generation {}, the hub sent {}", st.generation, d.generation),
        ));
    }
    Ok(st)
}

/// Check downloaded (or cached) artifact bytes against a verified statement.
pub fn verify_artifact(st: &Statement, bundle: &str, bytes: &[u8]) -> Result<()> {
    let digest = convoy_artifact::digest_of(bytes);
    convoy_artifact::check_artifact(st, bundle, &digest, bytes.len() as u64).map_err(verify_err)
}

/// The whole check of a signed directory or cached artifact: signature,
/// bundle name (when one is expected), digest and size.
pub fn verify_all(
    statement: &[u8],
    signature: &[u8],
    artifact: &[u8],
    trusted: &TrustedKeys,
    bundle: Option<&str>,
) -> Result<Statement> {
    let st = convoy_artifact::verify_statement(statement, signature, trusted).map_err(verify_err)?;
    let name = bundle.unwrap_or(&st.bundle).to_string();
    verify_artifact(&st, &name, artifact)?;
    Ok(st)
}

/// Unpack a verified artifact safely (no traversal, absolute paths or links;
/// size and count limits) and parse every document. One bad document
/// rejects the bundle, naming file, document index and reason.
///
/// YAML files are split into documents and the documents are parsed on up
/// to four threads (parsing dominates the cost of a large bundle); each
/// object becomes compact JSON text as soon as it is parsed.
pub fn load_manifests(targz: &[u8], limits: &Limits) -> Result<Vec<Manifest>> {
    load_manifests_with(targz, limits, &convoy_sops::AgeKeys::new())
}

/// [`load_manifests`], decrypting SOPS files with `keys` (crate::sops): a
/// file that does not decrypt and verify refuses the bundle whole.
pub fn load_manifests_with(
    targz: &[u8],
    limits: &Limits,
    keys: &dyn convoy_sops::KeyProvider,
) -> Result<Vec<Manifest>> {
    let files = convoy_artifact::unpack(targz, limits)
        .map_err(|e| Error::Artifact { reason: e.reason(), message: e.to_string() })?;
    // Units of work: (file, document index, first line, text).
    let mut units: Vec<Unit<'_>> = Vec::new();
    let mut decrypted: Vec<Manifest> = Vec::new();
    for f in &files {
        if crate::sops::maybe_sops(&f.path, &f.content)
            && let Some(ms) = crate::sops::decrypt_file(&f.path, &f.content, keys)?
        {
            decrypted.extend(ms);
            continue;
        }
        let yaml = !f.path.to_ascii_lowercase().ends_with(".json");
        match std::str::from_utf8(&f.content) {
            Ok(text) if yaml => {
                let text = text.strip_prefix('\u{feff}').unwrap_or(text);
                for d in convoy_core::yaml::documents(text) {
                    units.push(Unit {
                        file: &f.path,
                        index: Some(d.index),
                        start_line: d.start_line,
                        bytes: d.text.as_bytes(),
                    });
                }
            }
            // JSON, or not UTF-8 (the parser names the problem): one unit.
            _ => units.push(Unit { file: &f.path, index: None, start_line: 1, bytes: &f.content }),
        }
    }
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 4);
    let total: usize = units.iter().map(|u| u.bytes.len()).sum();
    // One YAML budget for the whole artifact, shared by the parser threads.
    let budget = convoy_core::yaml::Budget::default();
    if threads == 1 || total < 256 * 1024 || units.len() < 2 {
        let mut out = parse_units(&units, &budget)?;
        out.append(&mut decrypted);
        return Ok(out);
    }
    // Contiguous chunks of about equal size keep the output in order.
    let per = total.div_ceil(threads);
    let mut chunks: Vec<&[Unit<'_>]> = Vec::new();
    let (mut start, mut acc) = (0, 0);
    for (i, u) in units.iter().enumerate() {
        acc += u.bytes.len();
        if acc >= per && chunks.len() + 1 < threads {
            chunks.push(&units[start..=i]);
            start = i + 1;
            acc = 0;
        }
    }
    if start < units.len() {
        chunks.push(&units[start..]);
    }
    let results: Vec<Result<Vec<Manifest>>> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks.iter().map(|c| s.spawn(|| parse_units(c, &budget))).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| Err(Error::Config("manifest parser thread panicked".into())))
            })
            .collect()
    });
    let mut out = Vec::new();
    for r in results {
        // The first failing chunk in order holds the first bad document.
        out.extend(r?);
    }
    out.append(&mut decrypted);
    Ok(out)
}

struct Unit<'a> {
    file: &'a str,
    /// The document index in its file (`None`: the whole file is one unit).
    index: Option<usize>,
    start_line: u32,
    bytes: &'a [u8],
}

fn parse_units(units: &[Unit<'_>], budget: &convoy_core::yaml::Budget) -> Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for u in units {
        let mut local_err = None;
        let each = |m: convoy_artifact::Manifest| {
            let index = m.index;
            let origin = Origin { file: m.file, index };
            match Manifest::from_value(origin, m.object) {
                Ok(ms) => {
                    out.extend(ms);
                    Ok(())
                }
                Err(e) => {
                    local_err = Some(e);
                    Err(convoy_artifact::Error::Other("stopped".into()))
                }
            }
        };
        // Indexes and lines in objects and errors are the file's.
        let r = match (u.index, std::str::from_utf8(u.bytes)) {
            (Some(index), Ok(text)) => {
                let doc = convoy_core::yaml::Document { index, start_line: u.start_line, text };
                convoy_artifact::for_each_in_document(u.file, &doc, budget, each)
            }
            _ => convoy_artifact::for_each_manifest_within(u.file, u.bytes, budget, each),
        };
        if let Some(e) = local_err {
            return Err(e);
        }
        r.map_err(|e| match e {
            convoy_artifact::Error::Manifest { file, index, line, message } => Error::Manifest {
                file,
                index,
                message: match line {
                    Some(l) => format!("line {l}: {message}"),
                    None => message,
                },
            },
            e => Error::Artifact { reason: e.reason(), message: e.to_string() },
        })?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use convoy_artifact::{SigningKey, pack_files};

    fn signed(
        key: &SigningKey,
        bundle: &str,
        generation: u64,
        files: &[(&str, &str)],
    ) -> (Deployment, Vec<u8>) {
        let packed =
            pack_files(files.iter().map(|(p, c)| (p.to_string(), c.as_bytes().to_vec())), &Limits::default())
                .unwrap();
        let st = Statement::new(
            bundle,
            "https://git.example/r.git",
            "main@sha1:0000000000000000000000000000000000000000",
            packed.digest.clone(),
            packed.size,
            generation,
        );
        let (bytes, sig) = key.sign_statement(&st).unwrap();
        let d = Deployment {
            name: bundle.into(),
            statement: bytes,
            signature: sig,
            digest: packed.digest.clone(),
            size: packed.size,
            generation,
            options: BundleOptions::default(),
        };
        (d, packed.bytes)
    }

    const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  k: v\n";

    #[test]
    fn good_bundle_verifies_and_parses() {
        let key = SigningKey::generate().unwrap();
        let trusted = TrustedKeys::new([key.public_key()]);
        let (d, bytes) = signed(&key, "app", 3, &[("cm.yaml", CM)]);
        let st = verify_statement(&d, &trusted).unwrap();
        verify_artifact(&st, "app", &bytes).unwrap();
        let ms = load_manifests(&bytes, &Limits::default()).unwrap();
        assert_eq!(ms.len(), 1);
        assert_eq!(ms[0].kind, "ConfigMap");
        assert_eq!(ms[0].origin.file, "cm.yaml");
    }

    #[test]
    fn wrong_key_tampered_artifact_and_wrong_bundle_are_refused() {
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let (d, bytes) = signed(&key, "app", 3, &[("cm.yaml", CM)]);
        let e = verify_statement(&d, &TrustedKeys::new([other.public_key()])).unwrap_err();
        assert_eq!(e.reason(), "SignatureInvalid");

        let trusted = TrustedKeys::new([other.public_key(), key.public_key()]);
        let st = verify_statement(&d, &trusted).expect("any trusted key verifies (rotation)");
        let mut tampered = bytes.clone();
        let n = tampered.len();
        tampered[n - 10] ^= 0xff;
        assert_eq!(verify_artifact(&st, "app", &tampered).unwrap_err().reason(), "DigestMismatch");

        let mut renamed = d.clone();
        renamed.name = "other".into();
        assert_eq!(verify_statement(&renamed, &trusted).unwrap_err().reason(), "BundleMismatch");
        let mut lying = d.clone();
        lying.generation = 9;
        assert_eq!(verify_statement(&lying, &trusted).unwrap_err().reason(), "GenerationMismatch");
    }

    /// A .tar.gz built by hand (the packer refuses broken manifests, an
    /// attacker's archive would not).
    pub(crate) fn raw_targz(files: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, content) in files {
            let mut h = tar::Header::new_old();
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(content.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append(&h, content.as_bytes()).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn broken_document_names_file_and_index() {
        let broken = format!("{CM}---\napiVersion: v1\nkind: ConfigMap\nmetadata: [oops\n");
        let bytes = raw_targz(&[("a.yaml", CM), ("x/bad.yaml", &broken)]);
        let e = load_manifests(&bytes, &Limits::default()).unwrap_err();
        match &e {
            Error::Manifest { file, index, .. } => {
                assert_eq!(file, "x/bad.yaml");
                assert_eq!(*index, 1);
            }
            other => panic!("unexpected {other:?}"),
        }
        let missing_name = raw_targz(&[("a.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n")]);
        let e = load_manifests(&missing_name, &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("a.yaml: document 0"), "{e}");
        let traversal = raw_targz(&[("../evil.yaml", CM)]);
        assert!(load_manifests(&traversal, &Limits::default()).is_err());
    }

    #[test]
    fn large_files_parse_in_order_with_file_indexes_and_lines() {
        let mut text = String::new();
        for i in 0..400 {
            text.push_str(&format!(
                "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i}\ndata:\n  pad: \"{}\"\n",
                "x".repeat(1000)
            ));
        }
        let ok = raw_targz(&[("big.yaml", &text)]);
        let ms = load_manifests(&ok, &Limits::default()).unwrap();
        assert_eq!(ms.len(), 400);
        assert!(ms.iter().enumerate().all(|(i, m)| m.name == format!("cm-{i}") && m.origin.index == i));
        // Break document 317: the error names it and its line in the file.
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        let pos = lines.iter().position(|l| l == "  name: cm-317").unwrap();
        lines[pos] = "  name: [broken".into();
        let bad = lines.join("\n");
        let e = load_manifests(&raw_targz(&[("big.yaml", &bad)]), &Limits::default()).unwrap_err();
        match e {
            Error::Manifest { file, index, message } => {
                assert_eq!((file.as_str(), index), ("big.yaml", 317));
                let line: u32 =
                    message.strip_prefix("line ").and_then(|r| r.split(':').next()).unwrap().parse().unwrap();
                assert!((pos as u32..=pos as u32 + 3).contains(&line), "line {line} near {}", pos + 1);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn generation_rules() {
        let applied = AppliedRevision {
            generation: 5,
            digest: "sha256:a".into(),
            revision: "r".into(),
            statement: vec![],
            signature: vec![],
            options: BundleOptions::default(),
        };
        let mut d = Deployment {
            name: "b".into(),
            statement: vec![],
            signature: vec![],
            digest: "sha256:a".into(),
            size: 1,
            generation: 5,
            options: BundleOptions::default(),
        };
        assert_eq!(decide(&d, None), Decision::Apply);
        assert_eq!(decide(&d, Some(&applied)), Decision::UpToDate);
        d.options.target_namespace = Some("x".into());
        assert_eq!(decide(&d, Some(&applied)), Decision::Apply);
        d.options.target_namespace = None;
        d.options.prune = true;
        assert_eq!(decide(&d, Some(&applied)), Decision::UpToDate);
        d.digest = "sha256:b".into();
        assert!(matches!(decide(&d, Some(&applied)), Decision::Refuse("GenerationTampered", _)));
        d.generation = 4;
        assert!(matches!(decide(&d, Some(&applied)), Decision::Refuse("GenerationRollback", _)));
        // Nothing in the (unsigned) options can lower the floor.
        d.options = BundleOptions { force: true, suspend: true, ..Default::default() };
        assert!(matches!(decide(&d, Some(&applied)), Decision::Refuse("GenerationRollback", _)));
        d.generation = 6;
        assert_eq!(decide(&d, Some(&applied)), Decision::Apply);
    }
}
