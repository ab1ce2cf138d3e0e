//! gpuvisorctl: the host admin's command line for gpuvisord's admin API.

use clap::Parser;
use gpuvisor_admin::ctl::{run, Cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    match run(&cli, &mut stdout.lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpuvisorctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
