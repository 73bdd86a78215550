//! Entry point: parse the command line, run it, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use provision::cli::{self, Cli, UsageError};

fn main() -> ExitCode {
    cli::complete::answer_if_asked();
    let cli = Cli::parse();
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            cli::print_error(&e);
            if e.is::<UsageError>() {
                ExitCode::from(cli::EXIT_USAGE)
            } else {
                ExitCode::from(cli::EXIT_FAILED)
            }
        }
    }
}
