//! The `lora-tune` binary: parse the command line, run one command, print the error chain once.

use std::process::ExitCode;

use clap::Parser;
use lora_tune::{cli::Cli, commands};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
