//! Ignore rules: gitignore syntax from built-in defaults, `.convoyignore`
//! files in the tree and the GitSource's `ignore` setting.
//!
//! Precedence, highest first: the config rules, then the deepest
//! `.convoyignore` down to the one at the tree root, then the defaults. The
//! first layer with a match decides (a `!pattern` re-includes). As in git, a
//! file under an ignored directory cannot be re-included: the walk does not
//! descend into ignored directories.

use std::path::{Path, PathBuf};

use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::{Error, Result};

/// The name of the per-directory ignore file.
pub const IGNORE_FILE: &str = ".convoyignore";

/// Rules applied before any `.convoyignore`: hidden files and directories
/// (`.git/`, `.github/`, `.gitlab-ci.yml`, `.convoyignore` itself, ...) and
/// well-known CI files that are YAML but not Kubernetes objects.
pub const DEFAULT_RULES: &str = "\
.*
appveyor.yml
cloudbuild.yaml
codeship-services.yml
codeship-steps.yml
";

/// A virtual root so that tree paths can be given to the `ignore` crate,
/// which works on filesystem paths; nothing is read from it.
const ROOT: &str = "/convoy-tree";

fn abs(rel: &str) -> PathBuf {
    if rel.is_empty() { PathBuf::from(ROOT) } else { Path::new(ROOT).join(rel) }
}

fn build(dir: &str, origin: &str, text: &str) -> Result<Gitignore> {
    let mut b = GitignoreBuilder::new(abs(dir));
    for line in text.lines() {
        b.add_line(None, line)
            .map_err(|e| Error::Ignore { origin: origin.into(), message: e.to_string() })?;
    }
    b.build().map_err(|e| Error::Ignore { origin: origin.into(), message: e.to_string() })
}

/// The ignore rules in effect during a walk.
#[derive(Debug, Clone)]
pub struct IgnoreRules {
    defaults: Gitignore,
    config: Option<Gitignore>,
    /// `.convoyignore` matchers by directory, shallowest first.
    dirs: Vec<(String, Gitignore)>,
}

impl Default for IgnoreRules {
    fn default() -> Self {
        Self::new(None).expect("the default rules parse")
    }
}

impl IgnoreRules {
    /// The defaults plus optional config rules (gitignore syntax, anchored at
    /// the tree root).
    pub fn new(config: Option<&str>) -> Result<Self> {
        Self::build_rules(config, DEFAULT_RULES)
    }

    /// Like [`IgnoreRules::new`] but without [`DEFAULT_RULES`]: for inputs
    /// such as a kustomization's files, where `.env` files and the like matter.
    pub fn without_defaults(config: Option<&str>) -> Result<Self> {
        Self::build_rules(config, "")
    }

    fn build_rules(config: Option<&str>, defaults: &str) -> Result<Self> {
        let defaults = build("", "defaults", defaults)?;
        let config = match config {
            Some(text) if !text.trim().is_empty() => Some(build("", "config", text)?),
            _ => None,
        };
        Ok(Self { defaults, config, dirs: Vec::new() })
    }

    /// Add the rules of the `.convoyignore` in `dir` ("" for the tree root).
    /// Directories must be added shallowest first (a walk does that).
    pub fn add_ignore_file(&mut self, dir: &str, text: &str) -> Result<()> {
        let origin = if dir.is_empty() { IGNORE_FILE.to_string() } else { format!("{dir}/{IGNORE_FILE}") };
        let gi = build(dir, &origin, text)?;
        if !gi.is_empty() {
            self.dirs.push((dir.to_string(), gi));
        }
        Ok(())
    }

    /// Forget the `.convoyignore` rules of directories that are not `dir` or
    /// one of its ancestors (called by a depth-first walk when it moves on).
    pub(crate) fn truncate_to(&mut self, dir: &str) {
        self.dirs.retain(|(d, _)| is_ancestor_or_self(d, dir));
    }

    /// Whether a path (relative to the tree root) is ignored. Its ancestors
    /// are not consulted: the walk never descends into ignored directories.
    pub fn is_ignored(&self, path: &str, is_dir: bool) -> bool {
        let p = abs(path);
        if let Some(c) = &self.config {
            match c.matched(&p, is_dir) {
                Match::Ignore(_) => return true,
                Match::Whitelist(_) => return false,
                Match::None => {}
            }
        }
        for (dir, gi) in self.dirs.iter().rev() {
            if !is_ancestor_or_self(dir, parent(path)) {
                continue;
            }
            match gi.matched(&p, is_dir) {
                Match::Ignore(_) => return true,
                Match::Whitelist(_) => return false,
                Match::None => {}
            }
        }
        self.defaults.matched(&p, is_dir).is_ignore()
    }
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

fn is_ancestor_or_self(anc: &str, dir: &str) -> bool {
    anc.is_empty() || anc == dir || (dir.starts_with(anc) && dir.as_bytes().get(anc.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_hide_dotfiles_and_ci_files() {
        let r = IgnoreRules::default();
        assert!(r.is_ignored(".github", true));
        assert!(r.is_ignored("a/.convoyignore", false));
        assert!(r.is_ignored("cloudbuild.yaml", false));
        assert!(!r.is_ignored("deploy.yaml", false));
    }

    #[test]
    fn deeper_files_and_config_take_precedence() {
        let mut r = IgnoreRules::new(Some("/secret.yaml\n")).unwrap();
        r.add_ignore_file("", "*.json\ntmp/\n").unwrap();
        r.add_ignore_file("a", "!keep.json\n").unwrap();
        assert!(r.is_ignored("x.json", false));
        assert!(r.is_ignored("b/x.json", false));
        assert!(!r.is_ignored("a/keep.json", false));
        assert!(r.is_ignored("a/other.json", false));
        assert!(r.is_ignored("tmp", true));
        assert!(!r.is_ignored("tmp", false));
        assert!(r.is_ignored("secret.yaml", false));
        assert!(!r.is_ignored("a/secret.yaml", false), "config rules are anchored at the root");
        // A sibling's rules do not apply.
        assert!(r.is_ignored("ab/keep.json", false));
        r.truncate_to("b");
        assert!(r.is_ignored("a/keep.json", false));
    }

    #[test]
    fn without_defaults_keeps_dotfiles() {
        let r = IgnoreRules::without_defaults(Some("*.tmp\n")).unwrap();
        assert!(!r.is_ignored(".env", false));
        assert!(r.is_ignored("x.tmp", false));
    }

    #[test]
    fn whitelisting_in_config_beats_defaults() {
        let r = IgnoreRules::new(Some("!.well-known\n")).unwrap();
        assert!(!r.is_ignored(".well-known", true));
    }
}
