//! The agent runtime: wiring of identity, hub sync, controller, drift and metrics.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::{Error, Result};

/// The agent.
pub struct Agent;

impl Agent {
    /// Run until `shutdown`, then drain for at most `grace`.
    pub async fn run_with_grace(
        _cfg: AgentConfig,
        _shutdown: CancellationToken,
        _grace: Duration,
    ) -> Result<()> {
        Err(Error::Config("the hub-connected agent is not wired yet".into()))
    }
}
