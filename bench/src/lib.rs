//! Shared pieces of the benchmark harness: measurements, statistics, the table.

pub mod hubproc;
pub mod report;
