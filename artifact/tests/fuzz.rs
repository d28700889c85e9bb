//! Property tests over hostile input (issue 12, "Fuzzing"): artifact
//! unpacking, statement parsing and verification, and YAML parsing with List
//! flattening. Bounded in CI: each property runs `PROPTEST_CASES` cases (64
//! unless set); docs/fuzzing.md gives the longer command.

use std::io::{Read, Write};
use std::sync::LazyLock;

use convoy_artifact::manifest::check_file;
use convoy_artifact::{
    Limits, SigningKey, Statement, TrustedKeys, check_path, load_manifests, pack_files, parse_file, unpack,
    verify_bundle, verify_statement,
};
use proptest::prelude::*;
use serde_json::{Value, json};

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    // No regression files written into the source tree.
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  k: v\n";

/// A valid artifact with a few files in directories.
static ARTIFACT: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let files = vec![
        ("a.yaml".to_string(), CM.as_bytes().to_vec()),
        ("dir/b.yaml".to_string(), CM.replace("name: a", "name: b").into_bytes()),
        (
            "dir/sub/c.json".to_string(),
            br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"c"}}"#.to_vec(),
        ),
        (
            "list.yaml".to_string(),
            b"apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: d}}\n"
                .to_vec(),
        ),
    ];
    pack_files(files, &Limits::default()).unwrap().bytes
});

/// What every successful unpack must satisfy, whatever the input.
fn assert_safe(files: &[convoy_artifact::UnpackedFile], limits: &Limits) {
    assert!(files.len() as u64 <= limits.max_files as u64);
    let total: u64 = files.iter().map(|f| f.content.len() as u64).sum();
    assert!(total <= limits.max_total_bytes);
    for f in files {
        assert!(f.content.len() as u64 <= limits.max_file_bytes);
        // Relative, no `..`, no empty or `.` parts, no NUL or backslash: nothing
        // a caller writing the files under a directory could escape through.
        check_path(&f.path).unwrap_or_else(|e| panic!("unpacked an unsafe path {:?}: {e}", f.path));
        assert!(!f.path.starts_with('/') && !f.path.split('/').any(|p| p == ".." || p.is_empty()));
    }
    let mut paths: Vec<_> = files.iter().map(|f| &f.path).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), files.len(), "no duplicate paths");
}

fn small_limits() -> impl Strategy<Value = Limits> {
    (1u64..4096, 1u32..8, 1u64..2048).prop_map(|(t, n, f)| Limits {
        max_total_bytes: t,
        max_files: n,
        max_file_bytes: f,
    })
}

/// A raw tar entry with any name and entry type, written past the `tar`
/// crate's own path checks.
fn raw_entry(name: &[u8], kind: u8, content: &[u8], link: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_old();
    {
        let old = h.as_old_mut();
        let n = name.len().min(old.name.len());
        old.name[..n].copy_from_slice(&name[..n]);
        let l = link.len().min(old.linkname.len());
        old.linkname[..l].copy_from_slice(&link[..l]);
    }
    h.set_mode(0o644);
    h.set_size(content.len() as u64);
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(content);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn hostile_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"../evil.yaml".to_vec()),
        Just(b"/etc/evil.yaml".to_vec()),
        Just(b"a/../../evil.yaml".to_vec()),
        Just(b"./a.yaml".to_vec()),
        Just(b"a//b.yaml".to_vec()),
        Just(b"a\\..\\b.yaml".to_vec()),
        Just(b"ok.yaml".to_vec()),
        Just(b"dir/ok.yaml".to_vec()),
        Just(vec![0xff, 0xfe, b'.', b'y', b'a', b'm', b'l']),
        proptest::collection::vec(any::<u8>(), 0..40),
        "[a-z./]{1,30}".prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn unpack_of_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048), limits in small_limits()) {
        if let Ok(files) = unpack(&bytes, &limits) {
            assert_safe(&files, &limits);
        }
        // The same bytes inside a valid gzip stream reach the tar reader.
        if let Ok(files) = unpack(&gzip(&bytes), &limits) {
            assert_safe(&files, &limits);
        }
        let _ = load_manifests(&gzip(&bytes), &Limits::default());
    }

    #[test]
    fn unpack_of_a_mutated_artifact_never_panics_and_stays_safe(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8),
        in_tar in any::<bool>(),
        truncate in proptest::option::of(any::<prop::sample::Index>()),
        limits in prop_oneof![Just(Limits::default()), small_limits()],
    ) {
        // Mutate the gzip stream, or the tar inside it (re-compressed so that
        // the mutation gets past gzip's CRC to the tar reader).
        let mut bytes = if in_tar { gunzip(&ARTIFACT) } else { ARTIFACT.clone() };
        for (at, x) in &flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x;
        }
        if let Some(t) = truncate {
            bytes.truncate(t.index(bytes.len()));
        }
        let bytes = if in_tar { gzip(&bytes) } else { bytes };
        if let Ok(files) = unpack(&bytes, &limits) {
            assert_safe(&files, &limits);
        }
        let _ = load_manifests(&bytes, &limits);
    }

    #[test]
    fn hostile_entry_names_and_types_are_refused_or_safe(
        entries in proptest::collection::vec(
            (hostile_name(), prop_oneof![Just(b'0'), Just(b'1'), Just(b'2'), Just(b'3'), Just(b'5'), Just(b'6'), Just(b'L'), Just(b'x'), any::<u8>()], hostile_name()),
            1..6,
        ),
    ) {
        let mut tar = Vec::new();
        for (name, kind, link) in &entries {
            tar.extend(raw_entry(name, *kind, CM.as_bytes(), link));
        }
        tar.extend([0u8; 1024]);
        let limits = Limits::default();
        if let Ok(files) = unpack(&gzip(&tar), &limits) {
            assert_safe(&files, &limits);
            // Only regular files come out, each from an entry of that name.
            for f in &files {
                let from_regular = entries.iter().any(|(n, k, _)| n.as_slice() == f.path.as_bytes() && matches!(k, b'0' | 0));
                prop_assert!(from_regular, "{:?}", f.path);
            }
        }
    }
}

static KEY: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::generate().unwrap());

fn signed() -> (Vec<u8>, Vec<u8>, Statement) {
    let digest = convoy_artifact::digest_of(&ARTIFACT);
    let st = Statement::new(
        "app",
        "https://git.example/fleet.git",
        "main@sha1:0123",
        digest,
        ARTIFACT.len() as u64,
        7,
    );
    let (bytes, sig) = KEY.sign_statement(&st).unwrap();
    (bytes, sig, st)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_statements_and_signatures_never_verify(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        on_signature in any::<bool>(),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let trusted = TrustedKeys::new([KEY.public_key()]);
        let (mut statement, mut sig, _) = signed();
        let target = if on_signature { &mut sig } else { &mut statement };
        for (at, x) in &flips {
            let i = at.index(target.len());
            target[i] ^= x;
        }
        if let Some(c) = cut {
            let n = c.index(target.len());
            target.truncate(n);
        }
        prop_assert!(verify_statement(&statement, &sig, &trusted).is_err());
        prop_assert!(verify_bundle(&statement, &sig, &ARTIFACT, &trusted, "app").is_err());
    }

    #[test]
    fn arbitrary_statements_never_panic_and_never_verify(
        statement in proptest::collection::vec(any::<u8>(), 0..600),
        sig in proptest::collection::vec(any::<u8>(), 0..96),
    ) {
        let _ = Statement::parse(&statement);
        let trusted = TrustedKeys::new([KEY.public_key()]);
        prop_assert!(verify_statement(&statement, &sig, &trusted).is_err());
        // A real signature over other bytes does not carry over.
        let (_, good_sig, _) = signed();
        prop_assert!(verify_statement(&statement, &good_sig, &trusted).is_err());
    }

    #[test]
    fn a_signed_statement_verifies_only_for_its_artifact(generation in 1u64..u64::MAX, flip in any::<prop::sample::Index>()) {
        let digest = convoy_artifact::digest_of(&ARTIFACT);
        let st = Statement::new("app", "https://git.example/fleet.git", "main@sha1:0123", digest, ARTIFACT.len() as u64, generation);
        let (bytes, sig) = KEY.sign_statement(&st).unwrap();
        let trusted = TrustedKeys::new([KEY.public_key()]);
        prop_assert_eq!(verify_bundle(&bytes, &sig, &ARTIFACT, &trusted, "app").unwrap().generation, generation);
        let mut other = ARTIFACT.clone();
        let i = flip.index(other.len());
        other[i] ^= 1;
        prop_assert!(verify_bundle(&bytes, &sig, &other, &trusted, "app").is_err());
        prop_assert!(verify_bundle(&bytes, &sig, &ARTIFACT, &trusted, "other").is_err());
    }
}

/// YAML-ish text: pieces that reach anchors, aliases, lists, flow and block
/// collections, tags, and document markers.
fn yamlish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("apiVersion: v1\n".to_string()),
        Just("kind: ConfigMap\n".to_string()),
        Just("kind: List\n".to_string()),
        Just("kind: FooList\n".to_string()),
        Just("metadata:\n  name: a\n".to_string()),
        Just("metadata: {name: b}\n".to_string()),
        Just("items:\n".to_string()),
        Just("items: []\n".to_string()),
        Just("items: ~\n".to_string()),
        Just("- {apiVersion: v1, kind: ConfigMap, metadata: {name: i}}\n".to_string()),
        Just("- apiVersion: v1\n  kind: List\n  items: []\n".to_string()),
        Just("- 3\n".to_string()),
        Just("x: &a [1, 2]\n".to_string()),
        Just("y: *a\n".to_string()),
        Just("<<: *a\n".to_string()),
        Just("z: !!str 5\n".to_string()),
        Just("---\n".to_string()),
        Just("...\n".to_string()),
        Just("  ".to_string()),
        Just("[".to_string()),
        Just("{".to_string()),
        Just("\"".to_string()),
        Just(": ".to_string()),
        "[ -~]{0,12}\n",
    ];
    proptest::collection::vec(piece, 0..16).prop_map(|v| v.concat())
}

/// A Kubernetes-like object.
fn object() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            Just("v1"),
            Just("apps/v1"),
            Just("rbac.authorization.k8s.io/v1"),
            Just("example.com/v1alpha1")
        ],
        prop_oneof![Just("ConfigMap"), Just("Secret"), Just("Role"), Just("Widget")],
        "[a-z][a-z0-9-]{0,20}",
        proptest::option::of("[a-z]{1,10}"),
        proptest::collection::btree_map("[a-z]{1,8}", "[ -~]{0,20}", 0..4),
    )
        .prop_map(|(v, k, name, ns, data)| {
            let mut meta = json!({ "name": name });
            if let Some(ns) = ns {
                meta["namespace"] = json!(ns);
            }
            json!({ "apiVersion": v, "kind": k, "metadata": meta, "data": data })
        })
}

fn objects_of(text: &str, file: &str) -> Vec<Value> {
    parse_file(file, text.as_bytes()).unwrap().into_iter().map(|m| m.object).collect()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn yaml_parsing_and_flattening_never_panic(text in yamlish(), raw in "\\PC{0,200}") {
        for t in [&text, &raw] {
            let full = parse_file("f.yaml", t.as_bytes());
            let fast = check_file("f.yaml", t.as_bytes());
            // The fast check and the full parse agree on the verdict and the count.
            prop_assert_eq!(fast.as_ref().ok().copied(), full.as_ref().ok().map(Vec::len), "{:?}", t);
            let _ = parse_file("f.json", t.as_bytes());
        }
    }

    #[test]
    fn flattening_keeps_every_item_in_order_and_is_idempotent(
        items in proptest::collection::vec(object(), 0..8),
        list_kind in prop_oneof![Just("List"), Just("ConfigMapList"), Just("WidgetList")],
        before in proptest::collection::vec(object(), 0..3),
    ) {
        let list = json!({"apiVersion": "v1", "kind": list_kind, "metadata": {"resourceVersion": ""}, "items": items});
        // JSON is YAML: the same list as a .json file and inside a multi-document .yaml file.
        let mut docs: Vec<String> = before.iter().map(Value::to_string).collect();
        docs.push(list.to_string());
        let yaml = docs.join("\n---\n");
        let from_yaml = objects_of(&yaml, "l.yaml");
        let expected: Vec<Value> = before.iter().chain(items.iter()).cloned().collect();
        prop_assert_eq!(&from_yaml, &expected);
        prop_assert_eq!(objects_of(&list.to_string(), "l.json"), items.clone());
        prop_assert_eq!(check_file("l.yaml", yaml.as_bytes()).unwrap(), expected.len());
        // Flattening what was flattened changes nothing: as a list again, or as plain documents.
        let again = json!({"apiVersion": "v1", "kind": "List", "items": from_yaml});
        prop_assert_eq!(objects_of(&again.to_string(), "again.yaml"), expected.clone());
        let plain = expected.iter().map(Value::to_string).collect::<Vec<_>>().join("\n---\n");
        prop_assert_eq!(objects_of(&plain, "plain.yaml"), expected.clone());
        // Item indexes are the items' positions.
        let ms = parse_file("l.yaml", yaml.as_bytes()).unwrap();
        let idx: Vec<Option<usize>> = ms.iter().map(|m| m.item).collect();
        let want: Vec<Option<usize>> = before.iter().map(|_| None).chain((0..items.len()).map(Some)).collect();
        prop_assert_eq!(idx, want);
    }
}
