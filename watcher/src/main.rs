//! `x402-watcher`: the x402 Channels watchtower. A thin CLI over the `x402_watcher` library
//! (also reachable as `x402-node watch`).

use std::path::PathBuf;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// The x402 Channels watchtower: takes vouchers pushed by provider nodes and, if a payer starts
/// an exit, settles the best one before the challenge period ends.
#[derive(Debug, Parser)]
#[command(name = "x402-watcher", version, about)]
struct Cli {
    /// TOML configuration file of the watcher (see the README) [default: built-in defaults
    /// only].
    #[arg(long, short, env = "X402_WATCHER_CONFIG")]
    config: Option<PathBuf>,

    #[command(flatten)]
    overrides: x402_watcher::cli::Overrides,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        // No colour codes in a log file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The error is this binary's last word, on stderr.
            #[allow(clippy::print_stderr)]
            {
                eprintln!("{}", x402_watcher::cli::error_report(&e));
            }
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run(cli: Cli) -> Result<(), x402_watcher::WatcherError> {
    let (config, key) = x402_watcher::cli::load(cli.config.as_deref(), cli.overrides)?;
    x402_watcher::run(config, key, shutdown_signal()).await
}

/// Resolves on ctrl-c or, on unix, SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
