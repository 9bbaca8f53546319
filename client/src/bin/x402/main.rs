//! `x402`: the command-line tool of x402 Channels. Pays HTTP APIs through payment channels
//! (`get`, `request`) and manages the channels (`open`, `topup`, `channels`, `close`, `exit`,
//! `withdraw`). A thin layer over the `x402_client` library: parse, run, print, exit with a
//! code that says what went wrong (`x402 --help` lists them).
//!
//! Modules: `args` (the command line), `config` (the TOML file and its merge with flags and
//! environment), `keys`, `commands`, `progress` (the confirmation spinner), `output` (the
//! only writer to stdout and stderr), `error` (exit codes). Tracing target: `x402::cli`.

mod args;
mod commands;
mod config;
mod error;
mod keys;
mod output;
mod progress;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let json = std::env::args_os().any(|a| a == "--json");
            return ExitCode::from(output::clap_error(&e, json));
        }
    };
    init_logging(cli.verbose);
    let out = output::Output::new(cli.json);
    let progress = progress::Progress::new();
    let result = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(commands::run(cli, out, progress.clone())),
        Err(e) => Err(error::CliError::Other(format!("cannot start the async runtime: {e}"))),
    };
    progress.finish();
    match result {
        Ok(outcome) => {
            out.outcome(outcome);
            ExitCode::SUCCESS
        }
        Err(e) => {
            out.error(&e);
            ExitCode::from(e.exit_code())
        }
    }
}

/// Logs on stderr: warnings by default (or `RUST_LOG`), more with `-v`.
fn init_logging(verbose: u8) {
    let filter = match verbose {
        0 => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        1 => EnvFilter::new("info"),
        2 => EnvFilter::new("info,x402=debug,x402_client=debug"),
        _ => EnvFilter::new("debug,x402=trace,x402_client=trace"),
    };
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
