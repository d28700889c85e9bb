//! Watch streams: newline-delimited JSON events from a resourceVersion (replay
//! from the history ring buffer, 410 Gone when too old), initial events,
//! bookmarks, selectors, timeouts, Table output, and dropped streams on faults.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::api::{Inner, Query, for_version};
use crate::registry::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{EventType, WatchStart};
use crate::table;

/// How often bookmarks are sent when the client allows them.
const BOOKMARK_EVERY: Duration = Duration::from_secs(5);

fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

struct Filter {
    ns: Option<String>,
    label: Option<LabelSelector>,
    field: Option<FieldSelector>,
}

impl Filter {
    fn matches(&self, v: &Value) -> bool {
        if let Some(ns) = &self.ns
            && v.pointer("/metadata/namespace").and_then(Value::as_str) != Some(ns.as_str())
        {
            return false;
        }
        if self.label.as_ref().is_some_and(|l| !l.matches(v.pointer("/metadata/labels"))) {
            return false;
        }
        self.field.as_ref().is_none_or(|f| f.matches(v))
    }
}

/// Serve a watch request.
pub async fn serve(
    inner: Arc<Inner>,
    rt: Arc<ResourceType>,
    ns: Option<String>,
    q: Query,
    want_table: bool,
    _headers: &HeaderMap,
) -> Result<Response<Body>, ApiError> {
    let filter = Filter {
        ns,
        label: q.get("labelSelector").map(LabelSelector::parse).transpose().map_err(ApiError::bad_request)?,
        field: q
            .get("fieldSelector")
            .map(|f| FieldSelector::parse(f, &rt))
            .transpose()
            .map_err(ApiError::bad_request)?,
    };
    let bookmarks = q.flag("allowWatchBookmarks");
    let send_initial = q.flag("sendInitialEvents");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let rv_param = q.get("resourceVersion").map(str::to_string);
    let gr = rt.gr();

    // initial events: rv unset or "0" => current state as ADDED, then changes
    let mut initial: Vec<Value> = Vec::new();
    let (replay, mut rx, mut last_rv) = match rv_param.as_deref() {
        None | Some("0") => {
            let (objs, rv, rx) = inner.store.snapshot_and_watch(&gr);
            for o in objs.iter().filter(|o| filter.matches(o)) {
                initial.push(json!({"type": "ADDED", "object": for_version(&rt, o)}));
            }
            (vec![], rx, rv)
        }
        Some(rv) => {
            let from: u64 =
                rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?;
            if send_initial {
                let (objs, cur, rx) = inner.store.snapshot_and_watch(&gr);
                for o in objs.iter().filter(|o| filter.matches(o)) {
                    initial.push(json!({"type": "ADDED", "object": for_version(&rt, o)}));
                }
                (vec![], rx, cur.max(from))
            } else {
                match inner.store.watch(&gr, Some(from)) {
                    WatchStart::Gone => {
                        // the API server answers 200 and sends an ERROR event
                        let ev = json!({"type": "ERROR", "object": ApiError::gone(format!("too old resource version: {from} ({})", inner.store.current_rv())).to_json()});
                        let body = Body::from(line(&ev));
                        return Ok(stream_response(body));
                    }
                    WatchStart::Events(evs, rx) => (evs, rx, from),
                }
            }
        }
    };
    if send_initial && bookmarks {
        initial.push(json!({"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version(),
            "metadata": {"resourceVersion": last_rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}}}));
    }
    let faults = inner.faults.clone();
    let drop_epoch = faults.watch_drop_epoch();
    let mut drop_rx = faults.drop_signal();
    let rt2 = rt.clone();
    let shutdown = inner.shutdown.clone();
    let q2 = q.clone();
    let (tx, rxb) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    let render = move |typ: &str, obj: &Value| -> Value {
        if want_table {
            json!({"type": typ, "object": table::object_table(&rt2, obj, &q2)})
        } else {
            json!({"type": typ, "object": obj})
        }
    };
    let task = async move {
        for ev in initial {
            let ev = if ev["type"] == "ADDED" { render("ADDED", &ev["object"]) } else { ev };
            if tx.send(Ok(line(&ev))).await.is_err() {
                return;
            }
        }
        for ev in replay {
            if filter.matches(&ev.object) || ev.old.as_ref().is_some_and(|o| filter.matches(o)) {
                let v = render(ev.typ.as_str(), &for_version(&rt, &ev.object));
                if tx.send(Ok(line(&v))).await.is_err() {
                    return;
                }
            }
            last_rv = ev.rv;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = tokio::time::interval(BOOKMARK_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => return,
                _ = drop_rx.changed() => return,
                _ = tx.closed() => return,
                _ = tick.tick() => {
                    if faults.watch_drop_epoch() != drop_epoch || tx.is_closed() { return; }
                    if bookmarks {
                        let b = json!({"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": {"resourceVersion": last_rv.to_string()}}});
                        if tx.send(Ok(line(&b))).await.is_err() { return; }
                    }
                }
                r = rx.recv() => match r {
                    Ok(ev) => {
                        if faults.watch_drop_epoch() != drop_epoch { return; }
                        if ev.rv <= last_rv { continue; }
                        last_rv = ev.rv;
                        let now = filter.matches(&ev.object);
                        let before = ev.old.as_ref().is_some_and(|o| filter.matches(o));
                        // an object leaving the selection is reported as DELETED
                        let typ = match (ev.typ, before, now) {
                            (EventType::Modified, true, false) => "DELETED",
                            (EventType::Modified, false, true) => "ADDED",
                            (t, _, true) => t.as_str(),
                            (EventType::Deleted, true, _) => "DELETED",
                            _ => continue,
                        };
                        let v = render(typ, &for_version(&rt, &ev.object));
                        if tx.send(Ok(line(&v))).await.is_err() { return; }
                    }
                    Err(RecvError::Lagged(_)) => {
                        // too slow: end the stream so the client re-lists (like the API server)
                        return;
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        }
    };
    tokio::spawn(tracing::Instrument::instrument(
        task,
        tracing::info_span!("watch", resource = %gr.resource),
    ));
    let stream = tokio_stream::wrappers::ReceiverStream::new(rxb).boxed();
    Ok(stream_response(Body::from_stream(stream)))
}

fn stream_response(body: Body) -> Response<Body> {
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .body(body)
        .expect("response")
}
