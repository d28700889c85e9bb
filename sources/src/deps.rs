//! What a bundle's render reads from a revision's tree, and the render cache
//! key built from it: the sorted set of (path, git object id) the bundle
//! depends on, plus the render options. Pure over a [`TreeIds`] (a git tree
//! in the hub, an in-memory tree in tests); no process is run and nothing is
//! written.
//!
//! The dependency set is a superset of what [`crate::render::render`] reads:
//! - plain YAML: the bundle directory (its tree id covers every file below
//!   it); a Helm chart directory: the directory and, transitively, those of
//!   its `file://` dependencies;
//! - kustomize: every kustomization root reached from the overlay through
//!   `resources`, `bases`, `components`, `generators`, `transformers` and
//!   `validators` (each root's tree id covers the kustomization file, its
//!   patches and generator inputs), plus every file those entries, `patches`,
//!   `patchesStrategicMerge`, `patchesJson6902`, `configMapGenerator` /
//!   `secretGenerator` `files`/`envs`/`env`, `replacements`, `crds`,
//!   `configurations`, `openapi` and `helmCharts` (chart home, values files)
//!   name, present or missing (a missing file that appears later changes
//!   the key);
//! - for every directory above: the `.convoyignore` files of its ancestors
//!   (they change what is selected), and the resolved target of every
//!   symlink inside it.
//!
//! The test `every_path_the_renderer_reads_is_covered_by_the_dependencies`
//! checks that superset property against the renderer itself: a change to
//! what `render` reads must come with a change here.
//!
//! The key also covers the kustomize program (path, size, mtime: see
//! [`tool_fingerprint`]), so upgrading it re-renders.
//!
//! Anything that cannot be resolved (a remote resource, a path leaving the
//! repository, an unparsable kustomization, an unreadable tree) makes the
//! bundle depend on the whole source tree, with the reason in
//! [`Dependencies::fallback`]: a fallback only costs a render, never
//! correctness.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use convoy_artifact::tree::{join, normalize, resolve_link};
use convoy_artifact::{EntryKind, IGNORE_FILE, Tree};
use sha2::{Digest as _, Sha256};

use crate::render::{KUSTOMIZATION_FILES, RenderOptions};

/// A tree that can name the object behind a path: a git tree (tree or blob
/// id), or anything that gives equal ids to equal content.
pub trait TreeIds: Tree {
    /// The id of the entry at `path` ("" is the root), `None` if there is none.
    fn entry_id(&self, path: &str) -> convoy_artifact::Result<Option<String>>;
}

impl TreeIds for crate::git::GitTree {
    fn entry_id(&self, path: &str) -> convoy_artifact::Result<Option<String>> {
        Ok(self.entry_oid(path)?.map(|id| id.to_hex().to_string()))
    }
}

/// What a bundle's render reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dependencies {
    /// Path in the tree -> object id (`None`: nothing there, which is also
    /// an input: the render changes when it appears).
    pub entries: BTreeMap<String, Option<String>>,
    /// Why the bundle depends on the whole tree, when it does.
    pub fallback: Option<String>,
}

impl Dependencies {
    /// Whether the bundle had to fall back to the whole source tree.
    pub fn is_whole_tree(&self) -> bool {
        self.fallback.is_some()
    }
}

/// Resolve what rendering the bundle at `path` reads.
pub fn resolve<T: TreeIds>(tree: &T, path: &str) -> Dependencies {
    let mut r = Resolver { tree, deps: BTreeMap::new(), walked: HashSet::new() };
    match r.bundle(path) {
        Ok(()) => Dependencies { entries: r.deps, fallback: None },
        Err(reason) => whole_tree(tree, reason),
    }
}

/// The dependencies of a chart directory (a Helm bundle's `helm.path`): the
/// directory (its tree id covers `Chart.yaml`, `values.yaml`, templates and
/// the vendored `charts/`), and, transitively, the directory of every
/// `file://` dependency its `Chart.yaml` names. Remote dependencies are not
/// followed: Helm renders them from the vendored `charts/` (inside the
/// directory) or fails. Values files named by the bundle spec are the
/// caller's to add (the spec string is part of [`render_key`]; their content
/// is not).
pub fn chart_dir<T: TreeIds>(tree: &T, path: &str) -> Dependencies {
    let mut r = Resolver { tree, deps: BTreeMap::new(), walked: HashSet::new() };
    let done = normalize(path).map_err(|m| format!("path {path:?}: {m}")).and_then(|p| r.chart(&p));
    match done {
        Ok(()) => Dependencies { entries: r.deps, fallback: None },
        Err(reason) => whole_tree(tree, reason),
    }
}

fn whole_tree<T: TreeIds>(tree: &T, reason: String) -> Dependencies {
    let mut entries = BTreeMap::new();
    // If even the root is unreadable, the key still changes on every call's
    // root id being absent; the render will fail and report why.
    entries.insert(String::new(), tree.entry_id("").ok().flatten());
    Dependencies { entries, fallback: Some(reason) }
}

/// The render cache key: a sha256 over the bundle's spec (`bundle`: its path
/// and every spec field that affects rendering, as one string), the options
/// that change the output (ignore rules, kustomize program, limits), the
/// kustomize program actually run (`tool`: [`tool_fingerprint`]) and the
/// sorted dependencies. Equal keys mean equal render inputs.
pub fn render_key(bundle: &str, deps: &Dependencies, opts: &RenderOptions, tool: &str) -> String {
    let mut h = Sha256::new();
    let mut field = |name: &str, value: &str| {
        h.update(name.as_bytes());
        h.update((value.len() as u64).to_le_bytes());
        h.update(value.as_bytes());
    };
    field("v", "1");
    field("bundle", bundle);
    field("ignore", opts.ignore.as_deref().unwrap_or("\0none"));
    field("kustomize", &format!("{:?}", opts.kustomize));
    field("tool", tool);
    field("limits", &format!("{:?}", opts.limits));
    for (p, id) in &deps.entries {
        field("dep", p);
        field("id", id.as_deref().unwrap_or("\0absent"));
    }
    hex::encode(h.finalize())
}

/// What identifies the kustomize program [`crate::render::render`] would run
/// with `kustomize`: its resolved path (after symlinks), size and
/// modification time. Replacing or upgrading the binary (or a `kubectl` on
/// `PATH` taking over from a removed `kustomize`) changes it, so every
/// kustomize bundle renders again; `"none"` when there is no program (the
/// render then fails and is retried on the next commit anyway).
pub fn tool_fingerprint(kustomize: &crate::render::Kustomize) -> String {
    let Ok((program, args)) = crate::render::kustomize_command(kustomize) else {
        return "none".into();
    };
    let resolved = std::fs::canonicalize(&program).unwrap_or_else(|_| program.clone());
    let stamp = std::fs::metadata(&resolved).map_or_else(
        |e| format!("unreadable: {}", e.kind()),
        |m| {
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            format!("{} bytes, mtime {mtime}", m.len())
        },
    );
    format!("{} {} ({stamp})", resolved.display(), args.join(" "))
}

/// Whether a bundle keeps its last good artifact without rendering: only when
/// its render key is known and equals the key of that artifact's render.
pub(crate) fn can_keep(key: Option<&str>, last_good: Option<&str>) -> bool {
    matches!((key, last_good), (Some(k), Some(prev)) if k == prev)
}

/// The key to remember for a bundle after a render: its key when the render
/// succeeded and the key is known; otherwise none, so that the next build
/// renders (a failed build is retried, an unknown key never matches).
pub(crate) fn remember(key: Option<String>, rendered_ok: bool) -> Option<String> {
    key.filter(|_| rendered_ok)
}

/// What the source pipeline did with bundles since the hub started, for the
/// hub's metrics: renders run, renders skipped because the key was
/// unchanged, and keys that fell back to the whole source tree.
#[derive(Debug, Default)]
pub struct RenderStats {
    renders: AtomicU64,
    reused: AtomicU64,
    whole_tree: AtomicU64,
}

impl RenderStats {
    /// Renders run (plain YAML packed or kustomize run), successful or not.
    pub fn renders(&self) -> u64 {
        self.renders.load(Ordering::Relaxed)
    }

    /// Builds skipped: the bundle kept its artifact because its render key
    /// did not change.
    pub fn reused(&self) -> u64 {
        self.reused.load(Ordering::Relaxed)
    }

    /// Render keys that depend on the whole source tree (see [`Dependencies::fallback`]).
    pub fn whole_tree(&self) -> u64 {
        self.whole_tree.load(Ordering::Relaxed)
    }

    pub(crate) fn count_render(&self) {
        self.renders.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_reuse(&self) {
        self.reused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_whole_tree(&self) {
        self.whole_tree.fetch_add(1, Ordering::Relaxed);
    }
}

/// The render key of each bundle (name, path, spec string for the key) at
/// `commit`, computed from one
/// read of the commit's trees. A bundle whose key cannot be computed (the
/// tree cannot be opened) gets `None` and is rendered. Fallbacks to the
/// whole tree are logged and counted.
pub(crate) fn keys_at(
    cache: &crate::git::GitCache,
    commit: &str,
    bundles: &[(String, String, String)],
    opts: &RenderOptions,
    stats: &RenderStats,
) -> Vec<Option<String>> {
    let tool = tool_fingerprint(&opts.kustomize);
    let tree = match cache.tree(commit) {
        Ok(t) => t,
        Err(error) => {
            tracing::warn!(%error, "cannot read the tree to compute render keys; rendering every bundle");
            return vec![None; bundles.len()];
        }
    };
    bundles
        .iter()
        .map(|(name, path, spec)| {
            let deps = resolve(&tree, path);
            if let Some(reason) = &deps.fallback {
                stats.count_whole_tree();
                tracing::info!(bundle = %name, %reason, "render depends on the whole source tree");
            }
            Some(render_key(spec, &deps, opts, &tool))
        })
        .collect()
}

/// Kustomization fields whose entries may be kustomization roots (directories).
const ROOT_FIELDS: [&str; 6] =
    ["resources", "bases", "components", "generators", "transformers", "validators"];

struct Resolver<'a, T> {
    tree: &'a T,
    deps: BTreeMap<String, Option<String>>,
    /// Directories already walked for symlinks and ignore files.
    walked: HashSet<String>,
}

type R<T = ()> = std::result::Result<T, String>;

fn tree_err(e: convoy_artifact::Error) -> String {
    format!("cannot read the tree: {e}")
}

impl<T: TreeIds> Resolver<'_, T> {
    fn kind(&self, path: &str) -> R<Option<EntryKind>> {
        self.tree.kind(path).map_err(tree_err)
    }

    fn id(&mut self, path: &str) -> R {
        let id = self.tree.entry_id(path).map_err(tree_err)?;
        self.deps.insert(path.to_string(), id);
        Ok(())
    }

    fn bundle(&mut self, path: &str) -> R {
        let path = normalize(path).map_err(|m| format!("bundle path {path:?}: {m}"))?;
        if self.kind(&path)? != Some(EntryKind::Dir) {
            // The render fails with PathNotFound; the key follows the path's presence.
            return self.id(&path);
        }
        if self.kustomization_in(&path)?.is_none() {
            return self.dir(&path);
        }
        let mut queue = vec![path];
        let mut seen = HashSet::new();
        while let Some(root) = queue.pop() {
            if !seen.insert(root.clone()) {
                continue;
            }
            self.dir(&root)?;
            let Some(kfile) = self.kustomization_in(&root)? else { continue };
            let text = self.tree.read_file(&kfile).map_err(tree_err)?;
            let k: serde_json::Value = serde_saphyr::from_slice(&text)
                .map_err(|e| format!("{kfile}: {}", e.to_string().lines().next().unwrap_or_default()))?;
            self.kustomization(&root, &kfile, &k, &mut queue)?;
        }
        Ok(())
    }

    fn chart(&mut self, path: &str) -> R {
        let mut queue = vec![path.to_string()];
        let mut seen = HashSet::new();
        while let Some(chart) = queue.pop() {
            if !seen.insert(chart.clone()) {
                continue;
            }
            self.dir(&chart)?;
            let file = join(&chart, "Chart.yaml");
            let file = match self.kind(&file)? {
                Some(EntryKind::File) => file,
                Some(EntryKind::Symlink) => resolve_link(self.tree, &file).map_err(tree_err)?,
                // Not a chart (yet): the render fails; the directory is the input.
                _ => continue,
            };
            let text = self.tree.read_file(&file).map_err(tree_err)?;
            let c: serde_json::Value = serde_saphyr::from_slice(&text)
                .map_err(|e| format!("{file}: {}", e.to_string().lines().next().unwrap_or_default()))?;
            let deps = c.get("dependencies").and_then(|d| d.as_array()).cloned().unwrap_or_default();
            for d in deps {
                let Some(repo) = d.get("repository").and_then(|r| r.as_str()) else { continue };
                if let Some(rel) = repo.strip_prefix("file://") {
                    queue.push(self.local(&chart, &file, "dependencies", rel)?);
                }
            }
        }
        Ok(())
    }

    /// The kustomization file in `dir` (a symlinked one is followed).
    fn kustomization_in(&mut self, dir: &str) -> R<Option<String>> {
        for name in KUSTOMIZATION_FILES {
            let p = join(dir, name);
            match self.kind(&p)? {
                Some(EntryKind::File) => return Ok(Some(p)),
                Some(EntryKind::Symlink) => {
                    let target = resolve_link(self.tree, &p).map_err(tree_err)?;
                    self.id(&target)?;
                    return Ok(Some(target));
                }
                _ => {}
            }
        }
        Ok(None)
    }

    fn kustomization(
        &mut self,
        root: &str,
        kfile: &str,
        k: &serde_json::Value,
        queue: &mut Vec<String>,
    ) -> R {
        let strs = |v: Option<&serde_json::Value>| -> Vec<String> {
            match v {
                Some(serde_json::Value::Array(a)) => {
                    a.iter().filter_map(|e| e.as_str().map(str::to_string)).collect()
                }
                Some(serde_json::Value::String(s)) => vec![s.clone()],
                _ => Vec::new(),
            }
        };
        let objects = |v: Option<&serde_json::Value>| -> Vec<serde_json::Value> {
            v.and_then(|v| v.as_array()).cloned().unwrap_or_default()
        };
        for field in ROOT_FIELDS {
            for entry in strs(k.get(field)) {
                if is_inline(&entry) {
                    continue;
                }
                // As the renderer decides: a path that exists in the tree is
                // local, even when it looks like a remote one (`config.d/x`).
                let local = self.local(root, kfile, field, &entry);
                let kind = match &local {
                    Ok(p) => self.kind(p)?,
                    Err(_) => None,
                };
                match (local, kind) {
                    (Ok(p), Some(EntryKind::Dir)) => queue.push(p),
                    (Ok(p), Some(_)) => self.file(&p)?,
                    _ if looks_remote(&entry) => {
                        return Err(format!("{kfile}: {field} entry {entry:?} is remote"));
                    }
                    (Err(e), _) => return Err(e),
                    (Ok(p), None) => self.file(&p)?,
                }
            }
        }
        let mut files: Vec<(&str, String)> = Vec::new();
        for s in strs(k.get("patchesStrategicMerge")) {
            files.push(("patchesStrategicMerge", s));
        }
        for field in ["patches", "patchesJson6902", "replacements"] {
            for o in objects(k.get(field)) {
                files.extend(strs(o.get("path")).into_iter().map(|s| (field, s)));
            }
        }
        for field in ["configMapGenerator", "secretGenerator"] {
            for o in objects(k.get(field)) {
                for f in strs(o.get("files")) {
                    // `key=path` or `path`.
                    let p = f.split_once('=').map_or(f.as_str(), |(_, p)| p).to_string();
                    files.push((field, p));
                }
                files.extend(strs(o.get("envs")).into_iter().map(|s| (field, s)));
                files.extend(strs(o.get("env")).into_iter().map(|s| (field, s)));
            }
        }
        for field in ["crds", "configurations"] {
            files.extend(strs(k.get(field)).into_iter().map(|s| (field, s)));
        }
        if let Some(o) = k.get("openapi") {
            files.extend(strs(o.get("path")).into_iter().map(|s| ("openapi", s)));
        }
        let charts = objects(k.get("helmCharts"));
        if !charts.is_empty() {
            let home = k
                .get("helmGlobals")
                .and_then(|g| g.get("chartHome"))
                .and_then(|h| h.as_str())
                .unwrap_or("charts")
                .to_string();
            files.push(("helmGlobals.chartHome", home));
            for c in &charts {
                files.extend(strs(c.get("valuesFile")).into_iter().map(|s| ("helmCharts", s)));
                files.extend(strs(c.get("additionalValuesFiles")).into_iter().map(|s| ("helmCharts", s)));
            }
        }
        for (field, entry) in files {
            if is_inline(&entry) {
                continue;
            }
            if looks_remote(&entry) {
                return Err(format!("{kfile}: {field} entry {entry:?} is remote"));
            }
            let p = self.local(root, kfile, field, &entry)?;
            match self.kind(&p)? {
                Some(EntryKind::Dir) => self.dir(&p)?,
                _ => self.file(&p)?,
            }
        }
        Ok(())
    }

    fn local(&self, root: &str, kfile: &str, field: &str, entry: &str) -> R<String> {
        if entry.starts_with('/') {
            return Err(format!("{kfile}: {field} entry {entry:?} is an absolute path"));
        }
        normalize(&join(root, entry))
            .map_err(|_| format!("{kfile}: {field} entry {entry:?} leaves the repository"))
    }

    /// A file (or a missing path): its id, and its target's when it is a symlink.
    fn file(&mut self, path: &str) -> R {
        self.ancestors_ignore(path)?;
        self.id(path)?;
        if self.kind(path)? == Some(EntryKind::Symlink) {
            let target = resolve_link(self.tree, path).map_err(tree_err)?;
            self.id(&target)?;
        }
        Ok(())
    }

    /// A directory: its tree id, the ignore files above it, and the target of
    /// every symlink below it.
    fn dir(&mut self, path: &str) -> R {
        self.ancestors_ignore(path)?;
        self.id(path)?;
        self.symlinks_below(path)
    }

    /// `.convoyignore` files of the ancestors of `path` (present or not).
    fn ancestors_ignore(&mut self, path: &str) -> R {
        let mut anc = String::new();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for part in parts.iter().take(parts.len().saturating_sub(1)).chain(std::iter::once(&"")) {
            let f = join(&anc, IGNORE_FILE);
            if !self.deps.contains_key(&f) {
                self.id(&f)?;
            }
            if part.is_empty() {
                break;
            }
            anc = join(&anc, part);
        }
        Ok(())
    }

    fn symlinks_below(&mut self, dir: &str) -> R {
        if !self.walked.insert(dir.to_string()) {
            return Ok(());
        }
        let entries = self.tree.read_dir(dir).map_err(tree_err)?;
        for e in entries {
            let p = join(dir, &e.name);
            match e.kind {
                EntryKind::Dir => self.symlinks_below(&p)?,
                EntryKind::Symlink => {
                    // A broken link fails the render; its target's presence is the input.
                    match resolve_link(self.tree, &p) {
                        Ok(target) => self.id(&target)?,
                        Err(e) => return Err(format!("symlink {p}: {e}")),
                    }
                }
                EntryKind::File | EntryKind::Other => {}
            }
        }
        Ok(())
    }
}

/// An inline patch or plugin config (YAML in the kustomization itself).
fn is_inline(entry: &str) -> bool {
    entry.contains('\n') || entry.trim().is_empty()
}

/// The same test the renderer uses to refuse remote resources.
fn looks_remote(entry: &str) -> bool {
    if entry.contains("://") || entry.starts_with("git@") || entry.starts_with("git::") {
        return true;
    }
    let first = entry.split('/').next().unwrap_or_default();
    !first.starts_with('.') && first.contains('.') && entry.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use convoy_artifact::TreeEntry;

    /// An in-memory tree: files and symlinks by path; directories are
    /// implied; ids are content hashes (directories hash their listing), as
    /// git's are.
    #[derive(Clone, Default)]
    struct Mem {
        files: BTreeMap<String, (EntryKind, String)>,
    }

    impl Mem {
        fn new(files: &[(&str, &str)]) -> Self {
            let mut m = Mem::default();
            for (p, c) in files {
                m.put(p, c);
            }
            m
        }
        fn put(&mut self, p: &str, c: &str) {
            self.files.insert(p.into(), (EntryKind::File, c.into()));
        }
        fn link(&mut self, p: &str, target: &str) {
            self.files.insert(p.into(), (EntryKind::Symlink, target.into()));
        }
        fn rm(&mut self, prefix: &str) {
            self.files.retain(|p, _| !(p == prefix || p.starts_with(&format!("{prefix}/"))));
        }
        fn mv(&mut self, from: &str, to: &str) {
            let moved: Vec<_> = self
                .files
                .iter()
                .filter(|(p, _)| p.starts_with(&format!("{from}/")))
                .map(|(p, v)| (format!("{to}{}", &p[from.len()..]), v.clone()))
                .collect();
            self.rm(from);
            self.files.extend(moved);
        }
    }

    impl Tree for Mem {
        fn read_dir(&self, dir: &str) -> convoy_artifact::Result<Vec<TreeEntry>> {
            let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
            let mut out: BTreeMap<String, EntryKind> = BTreeMap::new();
            for (p, (k, _)) in &self.files {
                if let Some(rest) = p.strip_prefix(&prefix) {
                    match rest.split_once('/') {
                        Some((d, _)) => out.insert(d.into(), EntryKind::Dir),
                        None => out.insert(rest.into(), *k),
                    };
                }
            }
            if out.is_empty() && !dir.is_empty() {
                return Err(convoy_artifact::Error::Io {
                    path: dir.into(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
                });
            }
            Ok(out.into_iter().map(|(name, kind)| TreeEntry { name, kind }).collect())
        }
        fn read_file(&self, path: &str) -> convoy_artifact::Result<Vec<u8>> {
            Ok(self.files.get(path).map(|(_, c)| c.clone().into_bytes()).unwrap_or_default())
        }
        fn read_link(&self, path: &str) -> convoy_artifact::Result<String> {
            Ok(self.files.get(path).map(|(_, c)| c.clone()).unwrap_or_default())
        }
    }

    impl TreeIds for Mem {
        fn entry_id(&self, path: &str) -> convoy_artifact::Result<Option<String>> {
            if let Some((k, c)) = self.files.get(path) {
                return Ok(Some(hex::encode(Sha256::digest(format!("{k:?}{c}")))));
            }
            let prefix = if path.is_empty() { String::new() } else { format!("{path}/") };
            let below: Vec<_> = self.files.iter().filter(|(p, _)| p.starts_with(&prefix)).collect();
            if below.is_empty() {
                return Ok(None);
            }
            Ok(Some(hex::encode(Sha256::digest(format!("{below:?}").as_bytes()))))
        }
    }

    fn key(t: &Mem, path: &str) -> String {
        render_key(path, &resolve(t, path), &RenderOptions::default(), "kustomize")
    }

    const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n";

    fn repo() -> Mem {
        Mem::new(&[
            ("apps/web/base/kustomization.yaml", "resources: [deploy.yaml]\n"),
            ("apps/web/base/deploy.yaml", CM),
            (
                "apps/web/prod/kustomization.yaml",
                "resources: [../base]\ncomponents: [../../../components/tls]\n",
            ),
            ("apps/web/prod/patch.yaml", CM),
            ("components/tls/kustomization.yaml", "kind: Component\n"),
            ("components/tls/cert.yaml", CM),
            ("components/audit/kustomization.yaml", "kind: Component\n"),
            ("apps/api/base/kustomization.yaml", "resources: [svc.yaml]\n"),
            ("apps/api/base/svc.yaml", CM),
            ("plain/cm.yaml", CM),
            ("shared/values.env", "A=1\n"),
            ("README.md", "hello\n"),
        ])
    }

    #[test]
    fn a_change_outside_every_dependency_keeps_the_key() {
        let t = repo();
        let before = (key(&t, "apps/web/prod"), key(&t, "plain"));
        let mut t2 = t.clone();
        t2.put("README.md", "changed\n");
        t2.put("apps/api/base/svc.yaml", "changed\n");
        t2.put("components/audit/x.yaml", CM);
        assert_eq!((key(&t2, "apps/web/prod"), key(&t2, "plain")), before);
        assert!(!resolve(&t2, "apps/web/prod").is_whole_tree());
    }

    #[test]
    fn a_change_in_a_base_changes_every_overlay_on_it_and_only_those() {
        let t = repo();
        let mut t2 = t.clone();
        t2.put("apps/web/base/deploy.yaml", "changed\n");
        assert_ne!(key(&t, "apps/web/prod"), key(&t2, "apps/web/prod"));
        assert_ne!(key(&t, "apps/web/base"), key(&t2, "apps/web/base"));
        assert_eq!(key(&t, "apps/api/base"), key(&t2, "apps/api/base"));
        assert_eq!(key(&t, "plain"), key(&t2, "plain"));
    }

    #[test]
    fn renaming_a_base_changes_the_key() {
        let t = repo();
        let mut t2 = t.clone();
        t2.mv("apps/web/base", "apps/web/common");
        t2.put(
            "apps/web/prod/kustomization.yaml",
            "resources: [../common]\ncomponents: [../../../components/tls]\n",
        );
        assert_ne!(key(&t, "apps/web/prod"), key(&t2, "apps/web/prod"));
        // Renamed without touching the overlay: still a change (the base is now missing).
        let mut t3 = t.clone();
        t3.mv("apps/web/base", "apps/web/common");
        assert_ne!(key(&t, "apps/web/prod"), key(&t3, "apps/web/prod"));
    }

    #[test]
    fn adding_a_component_or_changing_one_changes_the_key() {
        let t = repo();
        let mut t2 = t.clone();
        t2.put(
            "apps/web/prod/kustomization.yaml",
            "resources: [../base]\ncomponents: [../../../components/tls, ../../../components/audit]\n",
        );
        let k2 = key(&t2, "apps/web/prod");
        assert_ne!(key(&t, "apps/web/prod"), k2);
        // Now the audit component is a dependency: changing it changes the key.
        let mut t3 = t2.clone();
        t3.put("components/audit/x.yaml", CM);
        assert_ne!(k2, key(&t3, "apps/web/prod"));
        let mut t4 = t.clone();
        t4.put("components/tls/cert.yaml", "changed\n");
        assert_ne!(key(&t, "apps/web/prod"), key(&t4, "apps/web/prod"));
    }

    #[test]
    fn generator_and_patch_files_outside_the_roots_are_dependencies() {
        let k = "resources: [../base]\n\
                 configMapGenerator:\n- name: c\n  files: [cfg=../../../shared/app.conf]\n  envs: [../../../shared/values.env]\n\
                 secretGenerator:\n- name: s\n  env: ../../../shared/secret.env\n\
                 patches:\n- path: ../../../shared/patch.yaml\n- patch: |-\n    - op: add\n\
                 patchesStrategicMerge:\n- ../../../shared/psm.yaml\n\
                 patchesJson6902:\n- path: ../../../shared/json.yaml\n\
                 replacements:\n- path: ../../../shared/repl.yaml\n\
                 crds: [../../../shared/crd.json]\n\
                 openapi:\n  path: ../../../shared/schema.json\n\
                 helmGlobals:\n  chartHome: ../../../charts\n\
                 helmCharts:\n- name: x\n  valuesFile: ../../../shared/values.yaml\n";
        let mut t = repo();
        t.put("apps/web/prod/kustomization.yaml", k);
        let base = key(&t, "apps/web/prod");
        assert!(!resolve(&t, "apps/web/prod").is_whole_tree());
        for f in [
            "shared/app.conf",
            "shared/values.env",
            "shared/secret.env",
            "shared/patch.yaml",
            "shared/psm.yaml",
            "shared/json.yaml",
            "shared/repl.yaml",
            "shared/crd.json",
            "shared/schema.json",
            "shared/values.yaml",
            "charts/x/Chart.yaml",
        ] {
            let mut t2 = t.clone();
            t2.put(f, "new\n");
            let k2 = key(&t2, "apps/web/prod");
            assert_ne!(base, k2, "{f} appearing changes the key");
            let mut t3 = t2.clone();
            t3.put(f, "changed\n");
            assert_ne!(k2, key(&t3, "apps/web/prod"), "{f} changing changes the key");
        }
        let mut t2 = t.clone();
        t2.put("shared/unrelated.yaml", "new\n");
        assert_eq!(base, key(&t2, "apps/web/prod"));
    }

    #[test]
    fn a_generator_file_inside_the_overlay_is_covered_by_its_tree() {
        let mut t = repo();
        t.put(
            "apps/web/prod/kustomization.yaml",
            "resources: [../base]\nconfigMapGenerator:\n- name: c\n  files: [app.conf]\n",
        );
        t.put("apps/web/prod/app.conf", "a\n");
        let mut t2 = t.clone();
        t2.put("apps/web/prod/app.conf", "b\n");
        assert_ne!(key(&t, "apps/web/prod"), key(&t2, "apps/web/prod"));
    }

    #[test]
    fn remote_absolute_escaping_or_broken_kustomizations_fall_back_to_the_whole_tree() {
        for k in [
            "resources: [https://github.com/x/y//base?ref=v1]\n",
            "resources: [github.com/kubernetes-sigs/kustomize/examples/helloWorld]\n",
            "resources: [../../../../outside]\n",
            "patches:\n- path: /etc/passwd\n",
            "resources: [\n",
        ] {
            let mut t = repo();
            t.put("apps/web/prod/kustomization.yaml", k);
            let d = resolve(&t, "apps/web/prod");
            assert!(d.is_whole_tree(), "{k}");
            assert_eq!(d.entries.keys().collect::<Vec<_>>(), [""], "{k}");
            // Any change anywhere changes the key.
            let mut t2 = t.clone();
            t2.put("README.md", "changed\n");
            assert_ne!(key(&t, "apps/web/prod"), key(&t2, "apps/web/prod"), "{k}");
        }
    }

    #[test]
    fn symlink_targets_and_ignore_files_above_are_dependencies() {
        let mut t = repo();
        t.link("plain/linked.yaml", "../shared/cm.yaml");
        t.put("shared/cm.yaml", CM);
        let k = key(&t, "plain");
        let mut t2 = t.clone();
        t2.put("shared/cm.yaml", "changed\n");
        assert_ne!(k, key(&t2, "plain"), "symlink target changed");
        let mut t3 = t.clone();
        t3.put(".convoyignore", "*.tmp\n");
        assert_ne!(k, key(&t3, "plain"), "root ignore file appeared");
        let mut t4 = t.clone();
        t4.put("apps/.convoyignore", "x\n");
        assert_eq!(k, key(&t4, "plain"), "an ignore file above another bundle");
        assert_ne!(key(&t, "apps/web/base"), key(&t4, "apps/web/base"));
        let mut t5 = t.clone();
        t5.link("plain/broken.yaml", "../nowhere.yaml");
        assert!(resolve(&t5, "plain").is_whole_tree());
    }

    #[test]
    fn options_and_path_are_part_of_the_key() {
        let t = repo();
        let d = resolve(&t, "plain");
        let base = render_key("plain", &d, &RenderOptions::default(), "kustomize");
        let ignore = RenderOptions { ignore: Some("*.md".into()), ..Default::default() };
        assert_ne!(base, render_key("plain", &d, &ignore, "kustomize"));
        let kz =
            RenderOptions { kustomize: crate::render::Kustomize::Binary("/x".into()), ..Default::default() };
        assert_ne!(base, render_key("plain", &d, &kz, "kustomize"));
        let mut limits = RenderOptions::default();
        limits.limits.max_files += 1;
        assert_ne!(base, render_key("plain", &d, &limits, "kustomize"));
        assert_ne!(base, render_key("plain/", &d, &RenderOptions::default(), "kustomize"));
        assert_ne!(base, render_key("plain", &d, &RenderOptions::default(), "kustomize v5.4"));
        // The timeout does not change the output.
        let slow = RenderOptions { timeout: std::time::Duration::from_secs(1), ..Default::default() };
        assert_eq!(base, render_key("plain", &d, &slow, "kustomize"));
    }

    #[test]
    fn plain_directories_charts_and_missing_paths() {
        let t = repo();
        let d = resolve(&t, "plain");
        assert_eq!(d.entries.keys().collect::<Vec<_>>(), [".convoyignore", "plain"]);
        let mut t2 = t.clone();
        t2.put("plain/kustomization.yaml", "resources: [cm.yaml]\n");
        assert_ne!(key(&t, "plain"), key(&t2, "plain"), "becoming a kustomization");
        let c = chart_dir(&t, "apps/api/base");
        assert!(c.entries.contains_key("apps/api/base") && c.fallback.is_none());
        // A bundle path that does not exist yet: appearing changes the key.
        let missing = key(&t, "later");
        let mut t3 = t.clone();
        t3.put("later/cm.yaml", CM);
        assert_ne!(missing, key(&t3, "later"));
    }

    #[test]
    fn patch_files_in_the_overlay_or_a_base_change_the_key() {
        let mut t = repo();
        t.put(
            "apps/web/prod/kustomization.yaml",
            "resources: [../base]\npatches:\n- path: patch.yaml\npatchesStrategicMerge: [psm.yaml]\n",
        );
        t.put("apps/web/prod/patch.yaml", CM);
        t.put("apps/web/prod/psm.yaml", CM);
        t.put(
            "apps/web/base/kustomization.yaml",
            "resources: [deploy.yaml]\npatches:\n- path: base-patch.yaml\n",
        );
        t.put("apps/web/base/base-patch.yaml", CM);
        let k = key(&t, "apps/web/prod");
        for f in ["apps/web/prod/patch.yaml", "apps/web/prod/psm.yaml", "apps/web/base/base-patch.yaml"] {
            let mut t2 = t.clone();
            t2.put(f, "changed\n");
            assert_ne!(k, key(&t2, "apps/web/prod"), "{f}");
        }
    }

    #[test]
    fn nested_roots_resource_files_and_a_symlinked_kustomization() {
        let mut t = repo();
        // A root inside the overlay that reaches outside it, and a resource
        // file in another directory that is not a root.
        t.put("apps/web/prod/kustomization.yaml", "resources: [sub, ../../../shared/extra.yaml]\n");
        t.put("apps/web/prod/sub/kustomization.yaml", "resources: [../../../../components/tls]\n");
        t.put("shared/extra.yaml", CM);
        let k = key(&t, "apps/web/prod");
        assert!(!resolve(&t, "apps/web/prod").is_whole_tree());
        let mut t2 = t.clone();
        t2.put("components/tls/cert.yaml", "changed\n");
        assert_ne!(k, key(&t2, "apps/web/prod"), "a root reached through a nested root");
        let mut t3 = t.clone();
        t3.put("shared/extra.yaml", "changed\n");
        assert_ne!(k, key(&t3, "apps/web/prod"), "a resource file outside the roots");
        let mut t4 = t.clone();
        t4.put("shared/other.yaml", CM);
        assert_eq!(k, key(&t4, "apps/web/prod"), "a sibling of a resource file");

        // The kustomization file itself is a link: its target is an input.
        let mut t = repo();
        t.files.remove("apps/web/base/kustomization.yaml");
        t.link("apps/web/base/kustomization.yaml", "../../../shared/kustomization.yaml");
        t.put("shared/kustomization.yaml", "resources: [deploy.yaml]\n");
        let k = key(&t, "apps/web/prod");
        let mut t2 = t.clone();
        t2.put("shared/kustomization.yaml", "resources: [deploy.yaml]\nnamePrefix: x-\n");
        assert_ne!(k, key(&t2, "apps/web/prod"));
    }

    #[test]
    fn an_ignore_file_above_a_base_only_changes_the_bundles_on_it() {
        let t = repo();
        let mut t2 = t.clone();
        // Above components/tls (read by apps/web/prod), not above apps/api.
        t2.put("components/.convoyignore", "cert.yaml\n");
        assert_ne!(key(&t, "apps/web/prod"), key(&t2, "apps/web/prod"));
        assert_eq!(key(&t, "apps/api/base"), key(&t2, "apps/api/base"));
        // Inside a base: its tree id changes.
        let mut t3 = t.clone();
        t3.put("apps/web/base/.convoyignore", "deploy.yaml\n");
        assert_ne!(key(&t, "apps/web/prod"), key(&t3, "apps/web/prod"));
    }

    #[test]
    fn a_directory_symlink_in_a_bundle_falls_back_to_the_whole_tree() {
        // The renderer refuses links to directories (when it would pack
        // them); the resolver does not guess which ones it skips.
        let mut t = repo();
        t.link("plain/more", "../shared");
        let d = resolve(&t, "plain");
        assert!(d.is_whole_tree(), "{d:?}");
        let mut t2 = t.clone();
        t2.put("apps/api/base/svc.yaml", "changed\n");
        assert_ne!(key(&t, "plain"), key(&t2, "plain"));
    }

    #[test]
    fn the_tool_fingerprint_follows_the_kustomize_binary() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("kustomize");
        std::fs::write(&bin, "#!/bin/sh\necho v1\n").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let k = crate::render::Kustomize::Binary(bin.clone());
        let before = tool_fingerprint(&k);
        assert!(before.contains(&bin.display().to_string()) && before.contains(" build "), "{before}");
        assert_eq!(before, tool_fingerprint(&k), "stable while the binary is unchanged");
        std::fs::write(&bin, "#!/bin/sh\necho v2, longer\n").unwrap();
        assert_ne!(before, tool_fingerprint(&k), "an upgraded binary");
        // Through a symlink: the target is what counts.
        let link = dir.path().join("kubectl");
        std::os::unix::fs::symlink(&bin, &link).unwrap();
        let via = tool_fingerprint(&crate::render::Kustomize::Binary(link));
        assert!(via.starts_with(&bin.display().to_string()) && via.contains(" kustomize "), "{via}");
        std::fs::remove_file(&bin).unwrap();
        assert!(tool_fingerprint(&k).contains("unreadable"), "a missing binary");
    }

    /// A tree that records every path the renderer looks at.
    struct Recorder<'a> {
        inner: &'a Mem,
        reads: std::cell::RefCell<Vec<String>>,
    }

    impl Tree for Recorder<'_> {
        fn read_dir(&self, dir: &str) -> convoy_artifact::Result<Vec<TreeEntry>> {
            self.reads.borrow_mut().push(dir.into());
            self.inner.read_dir(dir)
        }
        fn read_file(&self, path: &str) -> convoy_artifact::Result<Vec<u8>> {
            self.reads.borrow_mut().push(path.into());
            self.inner.read_file(path)
        }
        fn read_link(&self, path: &str) -> convoy_artifact::Result<String> {
            self.reads.borrow_mut().push(path.into());
            self.inner.read_link(path)
        }
        fn kind(&self, path: &str) -> convoy_artifact::Result<Option<EntryKind>> {
            // What is at `path` (or that nothing is) is covered by the id of
            // `path` or of a directory above it.
            self.reads.borrow_mut().push(path.into());
            self.inner.kind(path)
        }
    }

    /// The soundness property the render key rests on, checked against the
    /// real renderer: every path [`crate::render::render`] reads (a file, a
    /// link, a directory listing, an entry's kind) is a dependency or lies
    /// below a dependency directory, so equal ids mean equal reads, hence
    /// equal output. kustomize itself only sees what was materialized from
    /// those reads; a program that does not exist stands in for it, so
    /// nothing runs.
    #[test]
    fn every_path_the_renderer_reads_is_covered_by_the_dependencies() {
        let opts = RenderOptions {
            kustomize: crate::render::Kustomize::Binary("/nonexistent/convoy-test-kustomize".into()),
            ..Default::default()
        };
        let mut fixtures: Vec<(Mem, &str)> = Vec::new();
        for p in ["apps/web/prod", "apps/web/base", "apps/api/base", "plain", "later", "components/tls"] {
            fixtures.push((repo(), p));
        }
        let mut t = repo();
        t.put(
            "apps/web/prod/kustomization.yaml",
            "resources: [../base, sub, ../../../shared/extra.yaml]\ncomponents: [../../../components/tls]\n\
             configMapGenerator:\n- name: c\n  files: [cfg=../../../shared/app.conf]\n\
             patches:\n- path: ../../../shared/patch.yaml\n",
        );
        t.put("apps/web/prod/sub/kustomization.yaml", "bases: [../../../../components/audit]\n");
        t.put("shared/extra.yaml", CM);
        t.put("shared/app.conf", "a\n");
        t.put("components/.convoyignore", "*.tmp\n");
        t.put("components/audit/a.yaml", CM);
        fixtures.push((t, "apps/web/prod"));
        let mut t = repo();
        t.files.remove("apps/web/base/kustomization.yaml");
        t.link("apps/web/base/kustomization.yaml", "../../../shared/kustomization.yaml");
        t.put("shared/kustomization.yaml", "resources: [deploy.yaml]\n");
        t.link("apps/web/base/linked.yaml", "../../../shared/extra.yaml");
        t.put("shared/extra.yaml", CM);
        fixtures.push((t.clone(), "apps/web/prod"));
        t.link("plain/linked.yaml", "../shared/extra.yaml");
        t.put(".convoyignore", "*.md\n");
        t.put("plain/.convoyignore", "skip.yaml\n");
        t.put("plain/sub/more.yaml", CM);
        fixtures.push((t, "plain"));

        let mut t = repo();
        t.put("apps/web/prod/kustomization.yaml", "resources: [conf.d/extra, ../base]\n");
        t.put(
            "apps/web/prod/conf.d/extra/kustomization.yaml",
            "resources: [../../../../../components/tls]\n",
        );
        fixtures.push((t, "apps/web/prod"));

        let mut checked_kustomize = false;
        for (t, path) in &fixtures {
            let deps = resolve(t, path);
            assert!(!deps.is_whole_tree(), "{path}: {:?}", deps.fallback);
            let rec = Recorder { inner: t, reads: Default::default() };
            let _ = crate::render::render(&rec, path, "test", &opts);
            let reads = rec.reads.into_inner();
            assert!(!reads.is_empty(), "{path}");
            for r in &reads {
                let covered = deps.entries.keys().any(|e| {
                    e.is_empty() || r == e || (r.starts_with(e.as_str()) && r.as_bytes()[e.len()] == b'/')
                });
                assert!(covered, "{path}: the renderer read {r:?}, not covered by {:?}", deps.entries.keys());
            }
            checked_kustomize |= reads.iter().any(|r| r == "components/audit/a.yaml");
        }
        assert!(checked_kustomize, "the kustomize fixtures were materialized");
    }

    #[test]
    fn keep_and_remember_decisions() {
        // Every combination of (key now, key of the last good render).
        for (now, last, keep) in [
            (None, None, false),
            (None, Some("a"), false),
            (Some("a"), None, false),
            (Some("a"), Some("a"), true),
            (Some("a"), Some("b"), false),
        ] {
            assert_eq!(can_keep(now, last), keep, "{now:?} {last:?}");
        }
        for (key, ok, kept) in
            [(Some("a"), true, Some("a")), (Some("a"), false, None), (None, true, None), (None, false, None)]
        {
            assert_eq!(remember(key.map(String::from), ok).as_deref(), kept, "{key:?} {ok}");
        }
    }

    #[test]
    fn a_chart_depends_on_its_directory_and_its_file_dependencies() {
        let mut t = repo();
        t.put(
            "charts/web/Chart.yaml",
            "apiVersion: v2\nname: web\nversion: 1.0.0\ndependencies:\n\
             - name: common\n  version: 1.0.0\n  repository: file://../common\n\
             - name: redis\n  version: 18.0.0\n  repository: https://charts.example.com\n",
        );
        t.put("charts/web/templates/cm.yaml", CM);
        t.put("charts/web/charts/redis-18.0.0.tgz", "vendored\n");
        t.put("charts/common/Chart.yaml", "apiVersion: v2\nname: common\nversion: 1.0.0\n");
        t.put("charts/common/templates/_helpers.tpl", "{{/* x */}}\n");
        t.put("charts/other/Chart.yaml", "apiVersion: v2\nname: other\nversion: 1.0.0\n");
        let d = chart_dir(&t, "charts/web");
        assert!(!d.is_whole_tree(), "{d:?}");
        assert!(d.entries.contains_key("charts/web") && d.entries.contains_key("charts/common"), "{d:?}");
        let k = render_key("web", &d, &RenderOptions::default(), "helm");
        let k_of =
            |t: &Mem| render_key("web", &chart_dir(t, "charts/web"), &RenderOptions::default(), "helm");
        for f in [
            "charts/web/values.yaml",
            "charts/web/charts/redis-18.0.0.tgz",
            "charts/common/templates/_helpers.tpl",
        ] {
            let mut t2 = t.clone();
            t2.put(f, "changed\n");
            assert_ne!(k, k_of(&t2), "{f}");
        }
        let mut t3 = t.clone();
        t3.put("charts/other/values.yaml", "x: 1\n");
        assert_eq!(k, k_of(&t3), "a sibling chart nobody depends on");
        let mut t4 = t.clone();
        t4.put("charts/web/Chart.yaml", "apiVersion: v2\nname: web\nversion: 1.0.0\ndependencies:\n- name: x\n  repository: file://../../../../up\n");
        assert!(chart_dir(&t4, "charts/web").is_whole_tree(), "a dependency leaving the repository");
    }

    #[test]
    fn a_local_path_that_looks_remote_is_local_when_it_exists() {
        let mut t = repo();
        t.put("apps/web/prod/kustomization.yaml", "resources: [conf.d/extra]\n");
        t.put(
            "apps/web/prod/conf.d/extra/kustomization.yaml",
            "resources: [../../../../../components/tls]\n",
        );
        let d = resolve(&t, "apps/web/prod");
        assert!(!d.is_whole_tree(), "{d:?}");
        assert!(d.entries.contains_key("components/tls"), "{d:?}");
        // Gone: now it can only be remote, which the renderer refuses.
        t.rm("apps/web/prod/conf.d");
        assert!(resolve(&t, "apps/web/prod").is_whole_tree());
    }
}
