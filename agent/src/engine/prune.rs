//! Pruning: deleting (or, with prune off, orphaning) the objects that left a
//! bundle, in reverse stage order, and the rules that keep an object from
//! being deleted (opted out by annotation, owned by another bundle now).

use futures::StreamExt;

use super::{Action, ApplyReport, Engine, ObjectResult};
use crate::Error;
use crate::inventory::Entry;
use crate::kubeapi::{MetaOnly, ObjApi};
use crate::objects::Stage;

impl Engine {
    /// Prune (or orphan) `stale` entries in reverse stage order, recording
    /// each in the report. Fails, after trying them all, when some could not
    /// be deleted; those are returned in the error's report and kept.
    pub(super) async fn prune_stale(
        &self,
        bundle: &str,
        mut stale: Vec<Entry>,
        prune: bool,
        report: &mut ApplyReport,
    ) -> Vec<Entry> {
        stale.sort_by_key(|e| std::cmp::Reverse(e.stage));
        let mut kept_for_retry = Vec::new();
        for stage in Stage::ALL.iter().rev() {
            let group: Vec<&Entry> = stale.iter().filter(|e| e.stage == *stage).collect();
            if group.is_empty() {
                continue;
            }
            let results: Vec<(ObjectResult, bool)> = futures::stream::iter(
                group.into_iter().map(|e| self.prune_one(bundle, e, prune)).collect::<Vec<_>>(),
            )
            .buffered(self.concurrency)
            .collect()
            .await;
            for ((r, wrote), e) in results.into_iter().zip(stale.iter().filter(|e| e.stage == *stage)) {
                if wrote {
                    report.writes += 1;
                }
                if r.action == Action::Failed {
                    kept_for_retry.push(e.clone());
                }
                report.objects.push(r);
            }
        }

        kept_for_retry
    }

    pub(super) async fn prune_one(&self, bundle: &str, e: &Entry, prune: bool) -> (ObjectResult, bool) {
        let key = e.key();
        if !prune {
            return (ObjectResult::new(key, Action::Orphaned), false);
        }
        let res = e.resource();
        let api = ObjApi::new(&self.client, &res, &key);
        let live = match api.get_meta().await {
            Ok(Some(l)) => l,
            Ok(None) => {
                let mut r = ObjectResult::new(key, Action::Pruned);
                r.message = "already gone".into();
                return (r, false);
            }
            Err(err) => {
                let mut r = ObjectResult::new(key, Action::Failed);
                r.message = err.to_string();
                return (r, false);
            }
        };
        if let Some(reason) = prune_skip_reason(bundle, &live) {
            let mut r = ObjectResult::new(key, Action::PruneSkipped);
            r.message = reason;
            return (r, false);
        }
        match api.delete().await {
            Ok(_) => (ObjectResult::new(key, Action::Pruned), true),
            Err(err) => {
                let mut r = ObjectResult::new(key, Action::Failed);
                r.message = err.to_string();
                (r, false)
            }
        }
    }
}

/// The error of a prune that left objects behind (retried later).
pub(super) fn prune_failed(report: &ApplyReport) -> Error {
    let failed: Vec<String> = report
        .objects
        .iter()
        .filter(|o| o.action == Action::Failed)
        .map(|o| format!("{}: {}", o.key, o.message))
        .collect();
    Error::Apply { message: format!("prune failed: {}", failed.join("; ")), transient: true }
}

/// Why an object that left the bundle must not be deleted, if it must not.
pub fn prune_skip_reason(bundle: &str, live: &MetaOnly) -> Option<String> {
    if live.annotations().and_then(|a| a.get(convoy_core::PRUNE_ANNOTATION)).map(String::as_str)
        == Some("disabled")
    {
        return Some(format!("{}: disabled", convoy_core::PRUNE_ANNOTATION));
    }
    match live.labels().and_then(|l| l.get(convoy_core::BUNDLE_LABEL)) {
        Some(b) if b == bundle => None,
        Some(other) => Some(format!("now belongs to bundle {other}")),
        None => Some(format!("no longer carries the {} label", convoy_core::BUNDLE_LABEL)),
    }
}
