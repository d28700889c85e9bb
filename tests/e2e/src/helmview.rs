//! Helm's own view of a release on a kube-sim cluster: helm-python-sdk's
//! `Config(kubeconfig_path=…)` `list()`, `get_values()` and `history()`,
//! run in a guarded `python3`, so tests check what `helm` itself would show.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use convoy_testsupport::ProcessGuard;
use serde_json::Value;

const SCRIPT: &str = r#"
import json, sys
from helm_python import Config
with Config(kubeconfig_path=sys.argv[1], namespace=sys.argv[2]) as cfg:
    out = {"list": cfg.list(), "values": cfg.get_values(sys.argv[3]), "history": cfg.history(sys.argv[3])}
json.dump(out, sys.stdout, default=str)
"#;

/// `{"list": …, "values": …, "history": …}` of release `release` in
/// `namespace`, as helm-python-sdk reads it from the cluster. Panics (a test
/// helper) if helm-python-sdk fails.
pub fn helm_release(kubeconfig: &Path, namespace: &str, release: &str) -> Value {
    static N: AtomicU64 = AtomicU64::new(0);
    let out = std::env::temp_dir().join(format!(
        "convoy-helm-view-{}-{}.json",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let file = std::fs::File::create(&out).unwrap();
    let mut child = ProcessGuard::spawn(
        "python3 helm view",
        Command::new("python3")
            .args(["-c", SCRIPT])
            .arg(kubeconfig)
            .args([namespace, release])
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::inherit()),
    )
    .expect("python3 starts (scripts/setup.sh installs helm-python-sdk)");
    let status = child.child_mut().wait().unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    assert!(status.success(), "helm-python-sdk failed: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}
