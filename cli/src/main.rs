//! The `convoy` binary: parses the command line and hands off to `convoy_cli`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = convoy_cli::Cli::parse();
    convoy_cli::main(cli)
}
