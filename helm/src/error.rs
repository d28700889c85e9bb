//! The one error type of convoy-helm.

use std::time::Duration;

/// Everything that can go wrong while rendering a chart.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Helm's engine (`libhelm_c.so`) is not installed or could not be loaded.
    /// Helm bundles are Stalled with reason `HelmUnavailable`; plain and
    /// kustomize bundles are unaffected.
    #[error("HelmUnavailable: {0}")]
    HelmUnavailable(String),
    /// The render worker program could not be started.
    #[error("cannot start the helm render worker {program}: {source}")]
    WorkerSpawn {
        /// The program that was run.
        program: String,
        /// Why it did not start.
        #[source]
        source: std::io::Error,
    },
    /// The chart is bigger than the configured limit; nothing was rendered.
    #[error("chart {chart} is {size} bytes, more than the limit of {limit} bytes")]
    ChartTooLarge {
        /// The chart (path or reference).
        chart: String,
        /// Its size in bytes (archive bytes, or the sum of a directory's files).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The chart could not be read or is not a valid chart.
    #[error("chart {chart} could not be loaded: {message}")]
    ChartLoad {
        /// The chart (path or reference).
        chart: String,
        /// Helm's message.
        message: String,
    },
    /// The values do not satisfy the chart's `values.schema.json`.
    #[error("values do not match the chart's schema at {field}: {message}")]
    Schema {
        /// The offending field as a dotted path (`image.tag`), or `(root)`.
        field: String,
        /// Helm's full message.
        message: String,
    },
    /// The values are malformed (not a schema violation).
    #[error("invalid values: {0}")]
    Values(String),
    /// A template failed to render.
    #[error("template {template} line {line}: {message}")]
    Render {
        /// The template, e.g. `podinfo/templates/deployment.yaml`.
        template: String,
        /// The 1-based line in the template (0 when Helm did not say).
        line: u32,
        /// Helm's message.
        message: String,
    },
    /// The render did not finish within its time limit; the worker was killed.
    #[error("helm render of {chart} killed after its time limit of {limit:?}")]
    Timeout {
        /// The chart.
        chart: String,
        /// The limit that was hit.
        limit: Duration,
    },
    /// The worker ran out of its memory bound and died.
    #[error("helm render of {chart} exceeded its memory limit of {limit_bytes} bytes")]
    MemoryLimit {
        /// The chart.
        chart: String,
        /// The address-space limit the worker ran under.
        limit_bytes: u64,
    },
    /// The worker failed in an unexpected way (crash, bad reply).
    #[error("helm render worker failed: {0}")]
    Worker(String),
    /// A rendered manifest is not valid YAML or not a Kubernetes object.
    #[error("rendered template {template}: {message}")]
    Output {
        /// The template that produced it.
        template: String,
        /// What is wrong.
        message: String,
    },
    /// Helm's engine reported another error.
    #[error("helm: {message} (code {code})")]
    Helm {
        /// The `helm_error_code`.
        code: i32,
        /// Helm's message.
        message: String,
    },
    /// Reading a chart or values file failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A short machine-readable reason, used as a condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::HelmUnavailable(_) => "HelmUnavailable",
            Error::WorkerSpawn { .. } => "HelmUnavailable",
            Error::ChartTooLarge { .. } => "ChartTooLarge",
            Error::ChartLoad { .. } => "ChartLoadFailed",
            Error::Schema { .. } | Error::Values(_) => "ValuesInvalid",
            Error::Render { .. } | Error::Output { .. } => "RenderFailed",
            Error::Timeout { .. } => "RenderTimeout",
            Error::MemoryLimit { .. } => "RenderMemoryLimit",
            Error::Worker(_) | Error::Helm { .. } | Error::Io { .. } => "RenderFailed",
        }
    }
}
