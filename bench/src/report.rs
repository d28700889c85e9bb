//! Measurements, medians and the results table.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

/// One benchmark figure, with its baseline from the same run when there is one.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// The area (kube-sim, artifacts, hub, agent, e2e).
    pub area: String,
    /// What was measured.
    pub name: String,
    /// The unit of `value` (ms, ops/s, MiB, KiB/agent, ...).
    pub unit: String,
    /// Our median (or the figure itself when there is one sample).
    pub value: f64,
    /// The worst sample, when it matters.
    pub max: Option<f64>,
    /// The baseline's name (kubectl, git archive | gzip, nginx).
    pub baseline: Option<String>,
    /// The baseline's median in the same unit.
    pub baseline_value: Option<f64>,
    /// The target, as text ("<= 1.5x baseline", ">= 3000 ops/s").
    pub target: String,
    /// Whether the target was met, when it can be judged.
    pub pass: Option<bool>,
    /// Samples taken.
    pub samples: usize,
}

impl Measurement {
    /// A figure from samples: the median, the worst, and how many, with no
    /// baseline (set `baseline` and `baseline_value` after, when there is one).
    pub fn from_samples(
        area: &str,
        name: &str,
        unit: &str,
        samples: &[f64],
        target: &str,
        pass: Option<bool>,
    ) -> Self {
        Measurement {
            area: area.into(),
            name: name.into(),
            unit: unit.into(),
            value: median(samples),
            max: samples.iter().copied().reduce(f64::max),
            baseline: None,
            baseline_value: None,
            target: target.into(),
            pass,
            samples: samples.len(),
        }
    }

    /// value / baseline_value.
    pub fn ratio(&self) -> Option<f64> {
        match self.baseline_value {
            Some(b) if b > 0.0 => Some(self.value / b),
            _ => None,
        }
    }
}

/// The median of samples (the mean of the middle two for an even count).
pub fn median(samples: &[f64]) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// The p-th percentile (0..=100), nearest-rank.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

/// Render the results table.
pub fn table(ms: &[Measurement]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED);
    t.set_header(["area", "benchmark", "median", "max", "baseline", "ratio", "target", "ok"]);
    for m in ms {
        let fmt = |v: f64| format!("{} {}", trim(v), m.unit);
        t.add_row([
            m.area.clone(),
            m.name.clone(),
            fmt(m.value),
            m.max.map(fmt).unwrap_or_default(),
            match (&m.baseline, m.baseline_value) {
                (Some(n), Some(v)) => format!("{n}: {}", fmt(v)),
                _ => String::new(),
            },
            m.ratio().map(|r| format!("{r:.2}x")).unwrap_or_default(),
            m.target.clone(),
            match m.pass {
                Some(true) => "yes".into(),
                Some(false) => "NO".into(),
                None => String::new(),
            },
        ]);
    }
    t
}

fn trim(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// ../shared/corpus next to the repository (or CONVOY_CORPUS).
pub fn corpus_dir() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("CONVOY_CORPUS") {
        return p.into();
    }
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    here.join("../../shared/corpus")
}

/// A line naming the machine, for docs/benchmarks.md.
pub fn machine_line() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    format!("machine: {cpus} CPUs, {model}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentile() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 99.0), 4.0);
    }
}
