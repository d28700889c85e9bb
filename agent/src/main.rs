//! The `convoy-agent` binary: parse flags, install the ring crypto provider
//! once, run.

use std::process::ExitCode;

use clap::Parser;
use convoy_agent::cli::{Cli, init_logging, run};

fn main() -> ExitCode {
    // A small async process: two malloc arenas are plenty and fragment less.
    convoy_agent::mem::limit_arenas(2);
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(run(cli))
}
