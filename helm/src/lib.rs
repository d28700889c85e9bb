//! Helm charts rendered by Helm's own engine: `libhelm_c.so` (the C ABI over
//! Helm v4's Go SDK, shipped in the `helm-python-sdk` package) loaded with
//! `libloading` in a separate worker process, so a hostile or looping chart
//! can only take down that process.
//!
//! - [`locate`] finds the library (`CONVOY_HELM_LIBRARY`, then the Python package).
//! - [`client::Renderer`] runs renders on reused workers, each with a time limit, a
//!   memory bound and a chart size limit.
//! - [`worker::serve`] is the worker's main (binary `convoy-helm-worker`, or
//!   `convoy helm-worker`); [`ffi`] is the C ABI it calls.
//! - [`output`] turns Helm's output into objects, hooks, tests, notes and
//!   warnings, and Helm's errors into [`Error`]s naming template and line or
//!   schema field.
//! - [`values`] merges value layers and computes the digests that name a render.

pub mod client;
mod error;
pub mod ffi;
pub mod locate;
pub mod output;
pub mod protocol;
pub mod values;
pub mod worker;

pub use client::{Limits, RenderRequest, Renderer, WorkerCommand};
pub use error::{Error, Result};
pub use output::{ChartMeta, Hook, Rendered, RenderedObject};
pub use protocol::{Capabilities, ChartInput, CrdFile};
pub mod bundle;
pub mod release;
