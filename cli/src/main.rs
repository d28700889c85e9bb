//! The `convoy` binary: parses the command line and hands off to `convoy_cli`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // `convoy helm-worker`: the Helm render worker (JSON on stdin/stdout), started
    // by `convoy build --chart` and the hub under a time and memory bound.
    if std::env::args_os().nth(1).is_some_and(|a| a == "helm-worker") {
        return ExitCode::from(
            convoy_helm::worker::serve(std::io::stdin().lock(), std::io::stdout().lock()) as u8
        );
    }
    let cli = convoy_cli::Cli::parse();
    convoy_cli::main(cli)
}
