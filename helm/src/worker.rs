//! The render worker's side: read one request, render it with Helm's engine
//! in this process, write one reply. The process runs under the limits its
//! parent ([`crate::client`]) set, and is killed when it overruns them.

use std::io::{Read, Write};

use crate::ffi::{CallError, Engine};
use crate::output::uses_lookup;
use crate::protocol::{CODE_UNAVAILABLE, ChartInput, CrdFile, RawRender, WorkerReply, WorkerRequest};

/// Serve one request from `input` to `output`; returns the process exit code
/// (0 when a reply was written, whatever it says).
pub fn serve(mut input: impl Read, mut output: impl Write) -> i32 {
    let mut buf = Vec::new();
    let reply = match input.read_to_end(&mut buf) {
        Err(e) => WorkerReply::Err { code: 1, message: format!("reading the request: {e}") },
        Ok(_) => match serde_json::from_slice::<WorkerRequest>(&buf) {
            Err(e) => WorkerReply::Err { code: 1, message: format!("bad request: {e}") },
            Ok(req) => handle(&req),
        },
    };
    let bytes = serde_json::to_vec(&reply).expect("a reply serializes");
    match output.write_all(&bytes).and_then(|()| output.flush()) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn handle(req: &WorkerRequest) -> WorkerReply {
    let engine = match Engine::load(&req.library) {
        Ok(e) => e,
        Err(e) => return WorkerReply::Err { code: CODE_UNAVAILABLE, message: e.to_string() },
    };
    match render(&engine, req) {
        Ok(r) => WorkerReply::Ok(Box::new(r)),
        Err(e) => WorkerReply::Err { code: e.code, message: e.message },
    }
}

fn render(engine: &Engine, req: &WorkerRequest) -> Result<RawRender, CallError> {
    let chart = match &req.chart {
        ChartInput::Path(p) => engine.load_path(&p.to_string_lossy())?,
        ChartInput::Archive(bytes) => engine.load_archive(bytes)?,
    };
    let metadata = json(&chart.metadata()?)?;
    let default_values = json(&chart.values()?)?;
    let crds: Vec<CrdFile> = serde_json::from_str(&chart.crds()?).map_err(bad)?;
    #[derive(serde::Deserialize)]
    struct Template {
        name: String,
        data: String,
    }
    let templates: Vec<Template> = serde_json::from_str(&chart.templates()?).map_err(bad)?;
    // Template names are chart-relative; rendered output names them `<chart>/templates/...`.
    let chart_name = metadata.get("name").and_then(|n| n.as_str()).unwrap_or_default();
    let lookup_templates = templates
        .iter()
        .filter(|t| uses_lookup(&t.data))
        .map(|t| format!("{chart_name}/{}", t.name))
        .collect();
    let mut opts = serde_json::json!({
        "name": req.release_name,
        "namespace": req.namespace,
        "revision": req.revision.max(1),
        "is_install": !req.is_upgrade,
        "is_upgrade": req.is_upgrade,
    });
    if !req.capabilities.kube_version.is_empty() {
        opts["kube_version"] = req.capabilities.kube_version.clone().into();
    }
    if !req.capabilities.api_versions.is_empty() {
        opts["api_versions"] = req.capabilities.api_versions.clone().into();
    }
    let values = if req.values.is_null() { serde_json::json!({}) } else { req.values.clone() };
    let rendered = chart.render(&values.to_string(), &opts.to_string())?;
    let manifests = serde_json::from_str(&rendered).map_err(bad)?;
    Ok(RawRender {
        manifests,
        crds,
        metadata,
        default_values,
        lookup_templates,
        helm_version: engine.sdk_version(),
    })
}

fn json(s: &str) -> Result<serde_json::Value, CallError> {
    serde_json::from_str(s).map_err(bad)
}

fn bad(e: serde_json::Error) -> CallError {
    CallError { code: 1, message: format!("the library returned invalid JSON: {e}") }
}
