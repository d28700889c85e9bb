//! Finding Helm's engine, `libhelm_c.so`: `CONVOY_HELM_LIBRARY` first, then
//! the copy bundled in the installed `helm-python-sdk` Python package.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Result};

/// The environment variable naming the library (a file, or a directory holding it).
pub const LIBRARY_ENV: &str = "CONVOY_HELM_LIBRARY";

/// File names tried in a directory, most specific first.
const NAMES: [&str; 3] = ["libhelm_c.so.0.2.2", "libhelm_c.so.0", "libhelm_c.so"];

/// Find the library. `HelmUnavailable` names every place that was searched.
pub fn find_library() -> Result<PathBuf> {
    let mut searched = Vec::new();
    if let Some(v) = std::env::var_os(LIBRARY_ENV).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(v);
        if let Some(found) = in_place(&p) {
            return Ok(found);
        }
        // An explicit setting that points nowhere is an error, not a fallback:
        // the operator asked for that library.
        return Err(Error::HelmUnavailable(format!(
            "{LIBRARY_ENV}={} is not a libhelm_c library file or a directory holding one",
            p.display()
        )));
    }
    match python_package_dir() {
        Some(dir) => {
            let lib = dir.join("lib");
            if let Some(found) = in_place(&lib) {
                return Ok(found);
            }
            searched.push(lib.display().to_string());
        }
        None => searched.push("the python3 package helm_python (helm-python-sdk): not installed".into()),
    }
    Err(Error::HelmUnavailable(format!(
        "libhelm_c.so not found; set {LIBRARY_ENV} or `pip install helm-python-sdk` (searched: {})",
        searched.join(", ")
    )))
}

/// The library at an explicitly configured path (a file, or a directory
/// holding `libhelm_c.so*`); `HelmUnavailable` if there is none.
pub fn library_at(p: &Path) -> Result<PathBuf> {
    in_place(p).ok_or_else(|| {
        Error::HelmUnavailable(format!(
            "{} is not a libhelm_c library file or a directory holding one",
            p.display()
        ))
    })
}

fn in_place(p: &Path) -> Option<PathBuf> {
    if p.is_file() {
        return Some(p.to_path_buf());
    }
    if p.is_dir() {
        return NAMES.iter().map(|n| p.join(n)).find(|c| c.is_file());
    }
    None
}

/// The directory of the `helm_python` package, asking `python3` where it is
/// (without importing it: importing loads the library).
fn python_package_dir() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import importlib.util as u, os; s = u.find_spec('helm_python'); \
             print(os.path.dirname(s.origin) if s and s.origin else '')",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir))
}
