//! The agent controller's Helm release path: around the hub-driven apply of a
//! Helm bundle it runs the same steps as `convoy-agent apply` (pre hooks,
//! the release's objects, post hooks, Helm's release Secret; all in
//! crate::helmrelease) and turns a failed install or upgrade into an error
//! the controller retries with backoff, after recording it as a `failed`
//! revision (never `pending-*`, so nothing needs manual unlocking).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::health::{HealthStatus, ObjectHealth};
use crate::helmrelease::{Guard, HelmParts, Release};
use crate::{Error, Result};

/// Prepare the release (next revision from the release records in the
/// cluster) and run its `pre-install`/`pre-upgrade` hooks.
/// A hook or the record outside the bundle's rules is [`Error::Policy`]
/// (the bundle is refused, nothing of the release written).
pub(crate) async fn before_apply(
    client: &kube::Client,
    parts: HelmParts,
    guard: &Guard<'_>,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<Release> {
    let name = parts.spec.name.clone();
    let (r, runs) =
        Release::begin(client.clone(), parts, guard, timeout, cancel).await.map_err(|e| match e {
            e @ Error::Policy(_) => e,
            e => release_failed(&name, None, &e.to_string()),
        })?;
    for h in runs {
        tracing::info!(release = %name, hook = %h.hook, event = %h.event, "helm hook {}", h.outcome);
    }
    Ok(r)
}

/// The release's objects failed to apply: record the revision `failed`.
/// A record that cannot be written is logged; the apply error is what the
/// controller reports.
pub(crate) async fn after_failed_apply(release: Option<&Release>, e: &Error, cancel: &CancellationToken) {
    let Some(r) = release else { return };
    if let Err(w) = r.finish(Some(e.to_string()), Duration::ZERO, cancel).await {
        tracing::warn!(revision = r.version(), "could not record the failed helm revision: {w}");
    }
}

/// The release's objects were applied (and, with `wait`, waited for): run
/// the `post-*` hooks unless some object is not ready, and record the
/// revision. A failure is an error after it was recorded.
pub(crate) async fn after_apply(
    r: &Release,
    waited: bool,
    health: &[ObjectHealth],
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<()> {
    let not_ready = health.iter().filter(|h| h.status != HealthStatus::Current).count();
    let failure =
        (waited && not_ready > 0).then(|| format!("{not_ready} object(s) not ready within the timeout"));
    let (runs, failure) = r.finish(failure, timeout, cancel).await?;
    for h in runs {
        tracing::info!(revision = r.version(), hook = %h.hook, event = %h.event, "helm hook {}", h.outcome);
    }
    match failure {
        Some(why) => Err(release_failed(r.name(), Some(r.version()), &why)),
        None => Ok(()),
    }
}

fn release_failed(name: &str, revision: Option<u64>, why: &str) -> Error {
    let rev = revision.map(|v| format!(" revision {v}")).unwrap_or_default();
    Error::Apply { message: format!("helm release {name}{rev} failed: {why}"), transient: false }
}
