//! Rendering with Helm's real engine through the worker process: parity
//! with helm-python-sdk's in-process `Chart.render` on real charts (podinfo,
//! ingress-nginx and each of its ci/ value files), Capabilities, and bad
//! input (template error, schema violation, oversized chart, looping render,
//! missing library). No test here touches a cluster.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use convoy_helm::output::parse_objects;
use convoy_helm::values::read_values_file;
use convoy_helm::{
    Capabilities, ChartInput, Error, Limits, RenderRequest, Rendered, Renderer, WorkerCommand,
};
use serde_json::{Value, json};

fn corpus() -> PathBuf {
    match std::env::var_os("CONVOY_CORPUS") {
        Some(p) => p.into(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"),
    }
}

fn worker() -> WorkerCommand {
    WorkerCommand { program: env!("CARGO_BIN_EXE_convoy-helm-worker").into(), args: vec![] }
}

fn renderer(limits: Limits) -> Renderer {
    Renderer::new(worker(), limits)
        .expect("libhelm_c is installed (scripts/setup.sh installs helm-python-sdk)")
}

fn request(chart: &Path, values: Value, caps: Capabilities) -> RenderRequest {
    RenderRequest {
        chart: ChartInput::Path(chart.to_path_buf()),
        values,
        release_name: "rel".into(),
        namespace: "apps".into(),
        revision: 1,
        is_upgrade: false,
        capabilities: caps,
    }
}

/// Kills a process group when dropped (a python3 that outlives a panicking test).
struct Kill(i32);
impl Drop for Kill {
    fn drop(&mut self) {
        // SAFETY: signalling the process group of our own child.
        unsafe { libc_kill(-self.0) };
    }
}
unsafe fn libc_kill(pid: i32) {
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    // SAFETY: plain kill(2).
    unsafe { kill(pid, 9) };
}

/// Render each case with helm-python-sdk in one python3 process: the
/// reference output, template path -> manifest text.
fn python_render(chart: &Path, cases: &[Option<PathBuf>]) -> Vec<BTreeMap<String, String>> {
    use std::os::unix::process::CommandExt;
    let script = r#"
import json, sys
from helm_python import Chart, values_from_yaml
req = json.load(sys.stdin)
out = []
with Chart.load(req["chart"]) as c:
    for case in req["cases"]:
        values = values_from_yaml(open(case["values"]).read()) if case["values"] else {}
        out.append(c.render(values, name="rel", namespace="apps"))
json.dump(out, sys.stdout)
"#;
    let req = json!({
        "chart": chart,
        "cases": cases.iter().map(|v| json!({"values": v})).collect::<Vec<_>>(),
    });
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("python3 starts");
    let _kill = Kill(child.id() as i32);
    child.stdin.take().unwrap().write_all(req.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python render failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("python wrote JSON")
}

/// Every object (release objects, hooks and tests) keyed by template.
fn ours(r: &Rendered) -> BTreeMap<String, Vec<Value>> {
    let mut m: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for o in &r.objects {
        m.entry(o.template.clone()).or_default().push(o.object.clone());
    }
    for h in r.hooks.iter().chain(&r.tests) {
        m.entry(h.template.clone()).or_default().push(h.object.clone());
    }
    m.values_mut().for_each(|objs| objs.iter_mut().for_each(mask_random_test_name));
    m
}

/// podinfo names its test Pods `...-{{ randAlphaNum 5 }}`: the one
/// intentionally random output; both sides get the suffix masked.
fn mask_random_test_name(o: &mut Value) {
    let is_test = o
        .pointer("/metadata/annotations/helm.sh~1hook")
        .and_then(|h| h.as_str())
        .is_some_and(|h| h.split(',').any(|e| e.trim().starts_with("test")));
    if let (true, Some(Value::String(name))) = (is_test, o.pointer_mut("/metadata/name"))
        && let Some((stem, suffix)) = name.rsplit_once('-')
        && suffix.len() == 5
    {
        *name = format!("{stem}-RANDOM");
    }
}

fn theirs(rendered: &BTreeMap<String, String>) -> BTreeMap<String, Vec<Value>> {
    let mut m = BTreeMap::new();
    for (t, text) in rendered {
        if t.ends_with("NOTES.txt") {
            continue;
        }
        let mut objs = parse_objects(t, text).expect("python's output parses");
        objs.iter_mut().for_each(mask_random_test_name);
        if !objs.is_empty() {
            m.insert(t.clone(), objs);
        }
    }
    m
}

fn assert_parity(chart: &Path, value_files: &[Option<PathBuf>]) {
    let r = renderer(Limits::default());
    let reference = python_render(chart, value_files);
    for (vf, expected) in value_files.iter().zip(&reference) {
        let values = vf.as_ref().map(|f| read_values_file(f).unwrap()).unwrap_or(json!({}));
        let got = r
            .render(&request(chart, values, Capabilities::default()))
            .unwrap_or_else(|e| panic!("{vf:?}: {e}"));
        let (a, b) = (ours(&got), theirs(expected));
        assert!(!a.is_empty(), "{vf:?}: rendered nothing");
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{vf:?}: templates differ");
        for (t, objs) in &a {
            assert_eq!(objs, &b[t], "{vf:?}: {t} differs");
        }
        let notes =
            expected.iter().find(|(k, _)| k.ends_with("/templates/NOTES.txt") && k.matches('/').count() == 2);
        assert_eq!(got.notes, notes.map(|(_, v)| v.clone()).unwrap_or_default(), "{vf:?}: notes differ");
    }
}

#[test]
fn podinfo_renders_like_helm_python_sdk_with_default_and_prod_values() {
    let chart = corpus().join("charts/podinfo");
    assert_parity(&chart, &[None, Some(chart.join("values-prod.yaml"))]);
}

#[test]
fn ingress_nginx_renders_like_helm_python_sdk_with_defaults_and_every_ci_values_file() {
    let chart = corpus().join("charts/ingress-nginx");
    let mut files: Vec<_> = std::fs::read_dir(chart.join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "the ci/ folder holds the value files: {files:?}");
    let mut cases = vec![None];
    cases.extend(files.into_iter().map(Some));
    assert_parity(&chart, &cases);
}

#[test]
fn ingress_nginx_hooks_are_separated_with_weights_and_policies() {
    let chart = corpus().join("charts/ingress-nginx");
    let got =
        renderer(Limits::default()).render(&request(&chart, json!({}), Capabilities::default())).unwrap();
    let jobs: Vec<_> = got.hooks.iter().filter(|h| h.object["kind"] == "Job").collect();
    assert_eq!(jobs.len(), 2, "the admission webhook's create and patch Jobs are hooks");
    assert!(
        jobs.iter().all(|j| j.events.contains(&"pre-install".to_string())
            || j.events.contains(&"post-install".to_string()))
    );
    assert!(jobs.iter().all(|j| j.delete_policies.contains(&"before-hook-creation".to_string())));
    assert!(got.objects.iter().all(|o| o.object.pointer("/metadata/annotations/helm.sh~1hook").is_none()));
    assert_eq!(got.chart.name, "ingress-nginx");
    assert!(!got.notes.is_empty());
}

#[test]
fn two_kubernetes_versions_give_the_outputs_the_chart_asks_for() {
    let chart = corpus().join("charts/ingress-nginx");
    let r = renderer(Limits::default());
    let render = |v: &str| {
        let caps = Capabilities { kube_version: v.into(), api_versions: vec![] };
        r.render(&request(&chart, json!({}), caps)).unwrap()
    };
    let service = |got: &Rendered| {
        got.objects
            .iter()
            .find(|o| o.template.ends_with("templates/controller-service.yaml"))
            .map(|o| o.object.clone())
            .expect("the controller Service")
    };
    let (old, new) = (render("v1.20.15"), render("v1.31.0"));
    // controller-service.yaml: `ipFamilyPolicy`/`ipFamilies` only from 1.21 on.
    assert!(service(&old)["spec"].get("ipFamilyPolicy").is_none(), "{}", service(&old));
    assert_eq!(service(&new)["spec"]["ipFamilyPolicy"], "SingleStack");
    assert_ne!(ours(&old), ours(&new));
}

fn write_chart(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    let chart = dir.join("c");
    for (name, body) in files {
        let p = chart.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    chart
}

const CHART_YAML: (&str, &str) = ("Chart.yaml", "apiVersion: v2\nname: c\nversion: 0.1.0\n");

#[test]
fn a_template_error_names_the_template_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let chart = write_chart(
        tmp.path(),
        &[
            CHART_YAML,
            (
                "templates/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  a: {{ .Values.foo.bar }}\n",
            ),
        ],
    );
    match renderer(Limits::default()).render(&request(&chart, json!({}), Capabilities::default())) {
        Err(Error::Render { template, line, message }) => {
            assert_eq!(template, "c/templates/cm.yaml");
            assert_eq!(line, 6, "{message}");
        }
        other => panic!("expected a render error, got {other:?}"),
    }
}

#[test]
fn values_that_fail_the_schema_name_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let chart = write_chart(
        tmp.path(),
        &[
            CHART_YAML,
            ("values.yaml", "image:\n  tag: \"1.0\"\n"),
            (
                "values.schema.json",
                r#"{"type":"object","properties":{"image":{"type":"object","properties":{"tag":{"type":"string"}}}}}"#,
            ),
            ("templates/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n"),
        ],
    );
    let r = renderer(Limits::default());
    r.render(&request(&chart, json!({"image": {"tag": "2.0"}}), Capabilities::default()))
        .expect("valid values render");
    match r.render(&request(&chart, json!({"image": {"tag": 2}}), Capabilities::default())) {
        Err(Error::Schema { field, .. }) => assert_eq!(field, "image.tag"),
        other => panic!("expected a schema error, got {other:?}"),
    }
}

#[test]
fn a_chart_over_the_size_limit_is_refused_before_rendering() {
    let tmp = tempfile::tempdir().unwrap();
    let big = "# padding\n".repeat(20_000);
    let chart = write_chart(tmp.path(), &[CHART_YAML, ("templates/big.yaml", &big)]);
    let limits = Limits { max_chart_bytes: 64 << 10, ..Limits::default() };
    match renderer(limits).render(&request(&chart, json!({}), Capabilities::default())) {
        Err(Error::ChartTooLarge { size, limit, .. }) => {
            assert!(size > limit);
            assert_eq!(limit, 64 << 10);
        }
        other => panic!("expected ChartTooLarge, got {other:?}"),
    }
    let archive = ChartInput::Archive(vec![0u8; 100 << 10]);
    let req = RenderRequest { chart: archive, ..request(&chart, json!({}), Capabilities::default()) };
    assert!(matches!(renderer(limits).render(&req), Err(Error::ChartTooLarge { .. })));
}

#[test]
fn a_looping_render_is_killed_at_its_time_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let chart = write_chart(
        tmp.path(),
        &[
            CHART_YAML,
            (
                "templates/loop.yaml",
                "{{- range $i := until 100000 }}{{- range $j := until 100000 }}{{- end }}{{- end }}\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n",
            ),
        ],
    );
    let limits = Limits { time: Duration::from_millis(1500), ..Limits::default() };
    let started = Instant::now();
    match renderer(limits).render(&request(&chart, json!({}), Capabilities::default())) {
        Err(Error::Timeout { limit, .. }) => assert_eq!(limit, Duration::from_millis(1500)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10), "killed promptly: {:?}", started.elapsed());
}

#[test]
fn a_render_over_the_memory_bound_is_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    // until 50M allocates a 50M-element list (~800 MiB of interfaces).
    let chart = write_chart(
        tmp.path(),
        &[
            CHART_YAML,
            (
                "templates/mem.yaml",
                "{{- $l := until 50000000 }}\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n",
            ),
        ],
    );
    let limits = Limits { memory_bytes: 1 << 30, time: Duration::from_secs(30), ..Limits::default() };
    match renderer(limits).render(&request(&chart, json!({}), Capabilities::default())) {
        Err(Error::MemoryLimit { limit_bytes, .. }) => assert_eq!(limit_bytes, 1 << 30),
        other => panic!("expected MemoryLimit, got {other:?}"),
    }
}

#[test]
fn lookup_renders_empty_with_a_warning_naming_the_template() {
    let tmp = tempfile::tempdir().unwrap();
    let chart = write_chart(
        tmp.path(),
        &[
            CHART_YAML,
            (
                "templates/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  found: {{ lookup \"v1\" \"Secret\" .Release.Namespace \"s\" | toJson | quote }}\n",
            ),
        ],
    );
    let got =
        renderer(Limits::default()).render(&request(&chart, json!({}), Capabilities::default())).unwrap();
    assert_eq!(got.objects[0].object["data"]["found"], "{}");
    assert_eq!(got.warnings.len(), 1);
    assert!(got.warnings[0].contains("c/templates/cm.yaml"), "{:?}", got.warnings);
}

#[test]
fn without_the_library_rendering_is_helm_unavailable() {
    let tmp = tempfile::tempdir().unwrap();
    let chart = write_chart(tmp.path(), &[CHART_YAML]);
    let r = Renderer::with_library(worker(), tmp.path().join("no-libhelm_c.so"), Limits::default());
    match r.render(&request(&chart, json!({}), Capabilities::default())) {
        Err(e @ Error::HelmUnavailable(_)) => assert_eq!(e.reason(), "HelmUnavailable"),
        other => panic!("expected HelmUnavailable, got {other:?}"),
    }
    let missing = WorkerCommand { program: tmp.path().join("no-worker"), args: vec![] };
    let r = Renderer::with_library(missing, tmp.path().join("x.so"), Limits::default());
    let e = r.render(&request(&chart, json!({}), Capabilities::default())).unwrap_err();
    assert_eq!(e.reason(), "HelmUnavailable", "{e}");
}

/// Workers are reused: one that answered (a render, or Helm's own error) goes
/// back to the pool; one that overran its time limit is killed and never
/// reused, and the next render gets a new one.
#[test]
fn a_worker_serves_many_renders_and_one_that_overran_is_never_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let good = write_chart(
        &tmp.path().join("good"),
        &[CHART_YAML, ("templates/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n")],
    );
    let bad = write_chart(
        &tmp.path().join("bad"),
        &[
            CHART_YAML,
            ("templates/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Values.a.b }}\n"),
        ],
    );
    let looping = write_chart(
        &tmp.path().join("loop"),
        &[
            CHART_YAML,
            (
                "templates/loop.yaml",
                "{{- range $i := until 100000 }}{{- range $j := until 100000 }}{{- end }}{{- end }}\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n",
            ),
        ],
    );
    let r = renderer(Limits { time: Duration::from_millis(1500), ..Limits::default() });
    let req = |c: &Path| request(c, json!({}), Capabilities::default());
    assert_eq!(r.idle_workers(), 0);
    r.render(&req(&good)).unwrap();
    assert_eq!(r.idle_workers(), 1, "the worker waits for the next render");
    r.render(&req(&good)).unwrap();
    assert_eq!(r.idle_workers(), 1, "the same worker served it and waits again");
    assert!(matches!(r.render(&req(&bad)), Err(Error::Render { .. })));
    assert_eq!(r.idle_workers(), 1, "a render error is an answer: the worker stays");
    assert!(matches!(r.render(&req(&looping)), Err(Error::Timeout { .. })));
    assert_eq!(r.idle_workers(), 0, "the worker that overran was killed");
    r.render(&req(&good)).unwrap();
    assert_eq!(r.idle_workers(), 1);
}
