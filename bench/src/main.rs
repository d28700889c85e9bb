//! `convoy-bench`: every Convoy benchmark behind one command, printed as one table.
//!
//! Run all: `cargo run --release -p convoy-bench`. Run some:
//! `cargo run --release -p convoy-bench -- --only kube-sim,artifacts`.
//! Each area module measures our code and, where the issue asks for one, a
//! baseline (kubectl, `git archive`, nginx) in the same run, and reports medians.

use std::process::ExitCode;

use clap::Parser;

use convoy_bench::report::{self, Measurement};

mod agent;
mod artifacts;
mod e2e;
mod ha;
mod helm;
mod hub;
mod incremental;
mod kubesim;
mod rollout;
mod scale;
mod variants;

/// Command line of `convoy-bench`.
#[derive(Debug, Parser)]
#[command(name = "convoy-bench")]
struct Args {
    /// Comma-separated areas to run (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Smaller sizes and fewer repetitions, for a smoke run.
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Simulated agents of the `scale` area (default 100000, 500 with --quick)
    /// and of the `ha` area (default 10000, 300 with --quick).
    #[arg(long)]
    agents: Option<usize>,
    /// Bundles every agent of the `scale` area gets (default 1; `ha`: 20, 3 with --quick).
    #[arg(long)]
    bundles: Option<usize>,
}

/// Options every area receives.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Smaller sizes and fewer repetitions.
    pub quick: bool,
    /// ../shared/corpus, resolved.
    pub corpus: std::path::PathBuf,
    /// `--agents`: the size of the `scale` area.
    pub agents: Option<usize>,
    /// `--bundles`: bundles per agent in the `scale` area.
    pub bundles: Option<usize>,
}

type AreaFn =
    fn(Ctx) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Vec<Measurement>>>>>;

/// The areas, in run order. Each area module adds itself here.
const AREAS: &[(&str, AreaFn)] = &[
    ("kube-sim", kubesim::run),
    ("hub", hub::run),
    ("artifacts", artifacts::run),
    ("agent", agent::run),
    ("e2e", e2e::run),
    ("incremental", incremental::run),
    ("rollout", rollout::run),
    ("variants", variants::run),
    ("helm", helm::run),
    ("scale", scale::run),
    ("ha", ha::run),
];

fn main() -> ExitCode {
    // The run marker, in this process's environment before any thread
    // exists, so that every process the benchmarks start (guarded or not)
    // inherits it and the leak check below finds whatever outlives them.
    let marker = convoy_testsupport::run_marker();
    // SAFETY: no other thread runs yet (the runtime is built below).
    unsafe { std::env::set_var(convoy_testsupport::MARKER_VAR, marker) };
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let corpus = report::corpus_dir();
    let ctx = Ctx { quick: args.quick, corpus, agents: args.agents, bundles: args.bundles };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let mut all = Vec::new();
    let mut failed = false;
    for (name, f) in AREAS {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == name) {
            continue;
        }
        eprintln!("== {name}");
        match rt.block_on(f(ctx.clone())) {
            Ok(ms) => all.extend(ms),
            Err(e) => {
                eprintln!("benchmark area {name} failed: {e:#}");
                failed = true;
            }
        }
    }
    println!("{}", report::table(&all));
    println!("{}", report::machine_line());
    if let Some(path) = args.json
        && let Err(e) = std::fs::write(&path, serde_json::to_vec_pretty(&all).unwrap_or_default())
    {
        eprintln!("cannot write {}: {e}", path.display());
    }
    drop(rt);
    // The runner's leak guard: nothing a benchmark started may outlive it.
    let leaks = convoy_testsupport::reap_leaks(marker);
    if !leaks.is_empty() {
        eprintln!(
            "leak check: {} process(es) started by the benchmarks outlived them (now killed):",
            leaks.len()
        );
        for p in &leaks {
            eprintln!("  {p}");
        }
        failed = true;
    }
    if failed || all.iter().any(|m| m.pass == Some(false)) { ExitCode::from(1) } else { ExitCode::SUCCESS }
}
