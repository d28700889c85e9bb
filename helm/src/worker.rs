//! The render worker's side: read a request, render it with Helm's engine
//! in this process, write the reply. One request per process, or (with
//! [`FRAMES_ENV`] set, as [`crate::client`] starts it) framed requests one
//! after another with the library loaded once. The process runs under the
//! limits its parent set, and is killed when it overruns them.

use std::io::{Read, Write};
use std::path::PathBuf;

use crate::ffi::{CallError, Engine};
use crate::output::{uses_lookup, uses_random};
use crate::protocol::{CODE_UNAVAILABLE, ChartInput, CrdFile, RawRender, WorkerReply, WorkerRequest};

/// Set in a worker's environment: it serves framed requests until its input
/// ends ([`serve_frames`]), instead of one unframed request.
pub const FRAMES_ENV: &str = "CONVOY_HELM_WORKER_FRAMES";

/// The largest request frame a worker reads (a chart archive is at most the
/// client's chart limit, base64 in JSON).
pub const MAX_FRAME: u64 = 256 << 20;

/// Serve `input` to `output`: framed requests when [`FRAMES_ENV`] is set,
/// else one request. Returns the process exit code.
pub fn serve(input: impl Read, output: impl Write) -> i32 {
    if std::env::var_os(FRAMES_ENV).is_some() {
        serve_frames(input, output)
    } else {
        serve_one(input, output)
    }
}

/// Serve framed requests (an 8-byte big-endian length, then the request's
/// JSON) until `input` ends, each answered by a framed reply. The library is
/// loaded once, by the first request; a request naming another library is
/// refused (a loaded Go runtime is never unloaded). Returns 0 at the end of
/// input, 1 on a broken frame or output.
pub fn serve_frames(mut input: impl Read, mut output: impl Write) -> i32 {
    let mut engine: Option<(PathBuf, Engine)> = None;
    loop {
        let mut len = [0u8; 8];
        match input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return 0,
            Err(_) => return 1,
        }
        let n = u64::from_be_bytes(len);
        if n > MAX_FRAME {
            return 1;
        }
        let mut buf = vec![0u8; n as usize];
        if input.read_exact(&mut buf).is_err() {
            return 1;
        }
        let reply = match serde_json::from_slice::<WorkerRequest>(&buf) {
            Err(e) => WorkerReply::Err { code: 1, message: format!("bad request: {e}") },
            Ok(req) => {
                if engine.is_none() {
                    match Engine::load(&req.library) {
                        Ok(e) => engine = Some((req.library.clone(), e)),
                        Err(e) => {
                            let reply = WorkerReply::Err { code: CODE_UNAVAILABLE, message: e.to_string() };
                            if write_frame(&mut output, &reply).is_err() {
                                return 1;
                            }
                            continue;
                        }
                    }
                }
                match &engine {
                    Some((lib, e)) if *lib == req.library => match render(e, &req) {
                        Ok(r) => WorkerReply::Ok(Box::new(r)),
                        Err(e) => WorkerReply::Err { code: e.code, message: e.message },
                    },
                    Some((lib, _)) => WorkerReply::Err {
                        code: 1,
                        message: format!(
                            "this worker serves {}, not {}",
                            lib.display(),
                            req.library.display()
                        ),
                    },
                    None => unreachable!("loaded above"),
                }
            }
        };
        if write_frame(&mut output, &reply).is_err() {
            return 1;
        }
    }
}

/// One framed reply.
fn write_frame(output: &mut impl Write, reply: &WorkerReply) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(reply).expect("a reply serializes");
    output.write_all(&(bytes.len() as u64).to_be_bytes())?;
    output.write_all(&bytes)?;
    output.flush()
}

/// Serve one unframed request from `input` (read to its end) to `output`;
/// returns the process exit code (0 when a reply was written, whatever it says).
pub fn serve_one(mut input: impl Read, mut output: impl Write) -> i32 {
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
    let random_templates = templates
        .iter()
        .filter(|t| uses_random(&t.data))
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
        random_templates,
        helm_version: engine.sdk_version(),
    })
}

fn json(s: &str) -> Result<serde_json::Value, CallError> {
    serde_json::from_str(s).map_err(bad)
}

fn bad(e: serde_json::Error) -> CallError {
    CallError { code: 1, message: format!("the library returned invalid JSON: {e}") }
}
