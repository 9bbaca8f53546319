//! `x402-node`: the x402 Channels provider node. A thin CLI over the `x402_node` library.

use std::path::PathBuf;

use alloy::primitives::Address;
use clap::{Parser, Subcommand};
use eyre::WrapErr;
use tracing_subscriber::EnvFilter;
use x402_node::config::Config;

/// The x402 Channels provider node: charges for HTTP API requests through payment channels.
#[derive(Debug, Parser)]
#[command(name = "x402-node", version, about)]
struct Cli {
    /// TOML configuration file (see the README): the node's, or with `watch` the watcher's.
    /// Default: built-in defaults only.
    #[arg(long, short, env = "X402_CONFIG", global = true)]
    config: Option<PathBuf>,

    #[command(flatten)]
    overrides: Overrides,

    #[command(subcommand)]
    command: Option<Command>,
}

/// Settings that override the configuration file.
#[derive(Debug, clap::Args)]
struct Overrides {
    /// Address to listen on [config: listen; default 127.0.0.1:8402].
    #[arg(long, env = "X402_LISTEN", global = true)]
    listen: Option<std::net::SocketAddr>,
    /// Base URL of the upstream API [config: upstream; default http://127.0.0.1:8080].
    #[arg(long, env = "X402_UPSTREAM", global = true)]
    upstream: Option<String>,
    /// Chain JSON-RPC URL [config: chain.rpc_url; default http://127.0.0.1:8545].
    #[arg(long, env = "X402_RPC_URL", global = true)]
    rpc_url: Option<String>,
    /// PaymentChannel contract address [config: chain.contract; required].
    #[arg(long, env = "X402_CONTRACT", global = true)]
    contract: Option<Address>,
    /// Token accepted, zero address for the native token [config: payment.asset; default native].
    #[arg(long, env = "X402_ASSET", global = true)]
    asset: Option<Address>,
    /// Directory of the node's store [config: data_dir; default ./x402-data].
    #[arg(long, env = "X402_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Shortest challenge period accepted, seconds [config: payment.min_challenge_period; default 3600].
    #[arg(long, env = "X402_MIN_CHALLENGE_PERIOD", global = true)]
    min_challenge_period: Option<u64>,
    /// Bearer token of the /admin endpoints [config: admin_token; default none = disabled].
    #[arg(long, env = "X402_ADMIN_TOKEN", global = true, hide_env_values = true)]
    admin_token: Option<String>,
    /// File holding the provider's hex private key [config: provider.key_file; default: the
    /// X402_PROVIDER_KEY environment variable].
    #[arg(long, env = "X402_PROVIDER_KEY_FILE", global = true)]
    provider_key_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway in front of the upstream API (the default).
    Run,
    /// Check the effective configuration (after overrides) as `run` does, print it as TOML and
    /// exit.
    Config,
    /// Run a watchtower (as the `x402-watcher` binary does): take vouchers pushed by provider
    /// nodes and, if a payer starts an exit, settle the best one before the challenge period
    /// ends. --config names the watcher's TOML file; --listen (default 127.0.0.1:8403),
    /// --data-dir (default x402-watcher), --rpc-url and --contract override it.
    Watch(WatchArgs),
    /// Catch up with the chain and run one settlement round now, then exit. The gateway must
    /// not be running on the same data_dir (use `POST /admin/settle` on a running gateway).
    Settle {
        /// Settle every channel that owes anything, whatever the settlement policy says.
        #[arg(long)]
        force: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Settings of `x402-node watch` beyond the global ones (see `x402_watcher::cli::Overrides`,
/// which the `x402-watcher` binary takes as flags; the defaults are the watcher's).
#[derive(Debug, clap::Args)]
struct WatchArgs {
    /// Bearer token provider nodes must present, at least 16 characters [config: token].
    #[arg(long, env = "X402_WATCHER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the watcher's hex private key (it pays the gas of settlements) [config:
    /// key_file; default: the X402_WATCHER_KEY environment variable].
    #[arg(long, env = "X402_WATCHER_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Seconds between polls of the chain [config: poll_interval_secs; default 4].
    #[arg(long)]
    poll_interval_secs: Option<u64>,
    /// Seconds to leave the provider to settle an exit by itself before the watcher does,
    /// capped at half the challenge period [config: submit_delay_secs; default 0].
    #[arg(long)]
    submit_delay_secs: Option<u64>,
}

impl WatchArgs {
    /// The watcher's overrides: these flags and the global ones that apply to a watcher.
    fn overrides(self, global: &Overrides) -> x402_node::watcher::cli::Overrides {
        x402_node::watcher::cli::Overrides {
            listen: global.listen,
            data_dir: global.data_dir.clone(),
            rpc_url: global.rpc_url.clone(),
            contract: global.contract,
            token: self.token,
            key_file: self.key_file,
            poll_interval_secs: self.poll_interval_secs,
            submit_delay_secs: self.submit_delay_secs,
        }
    }
}

impl Overrides {
    fn apply(self, c: &mut Config) {
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = self.upstream {
            c.upstream = v;
        }
        if let Some(v) = self.rpc_url {
            c.chain.rpc_url = v;
        }
        if let Some(v) = self.contract {
            c.chain.contract = Some(v);
        }
        if let Some(v) = self.asset {
            c.payment.asset = v;
        }
        if let Some(v) = self.data_dir {
            c.data_dir = v;
        }
        if let Some(v) = self.min_challenge_period {
            c.payment.min_challenge_period = v;
        }
        if let Some(v) = self.admin_token {
            c.admin_token = Some(v);
        }
        if let Some(v) = self.provider_key_file {
            c.provider.key_file = Some(v);
        }
    }
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        // No colour codes in a log file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The error is this binary's last word, on stderr: its message and causes, without
            // a debug report's source locations.
            #[allow(clippy::print_stderr)]
            {
                eprintln!("{}", x402_node::watcher::cli::error_report(&*e));
            }
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run(cli: Cli) -> eyre::Result<()> {
    let command = cli.command.unwrap_or(Command::Run);
    if let Command::Watch(args) = command {
        // The watcher's own configuration: its file, then the flags.
        let (watcher, key) =
            x402_node::watcher::cli::load(cli.config.as_deref(), args.overrides(&cli.overrides))?;
        x402_node::watcher::run(watcher, key, x402_node::shutdown_signal()).await?;
        return Ok(());
    }
    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    cli.overrides.apply(&mut config);
    match command {
        Command::Watch(_) => unreachable!("handled above"),
        Command::Run => x402_node::gateway::run(config, x402_node::shutdown_signal()).await,
        Command::Settle { force, json } => {
            let report = x402_node::gateway::settle_once(config, force).await?;
            let text = if json {
                serde_json::to_string_pretty(&report).wrap_err("cannot render the report")?
            } else {
                render_report(&report)
            };
            // The report is this command's output.
            #[allow(clippy::print_stdout)]
            {
                println!("{text}");
            }
            Ok(())
        }
        Command::Config => {
            // The same checks as `run` makes before it starts.
            config.validate()?;
            let mut shown = config.clone();
            if shown.admin_token.is_some() {
                shown.admin_token = Some("<redacted>".into());
            }
            for w in &mut shown.watchers {
                w.token = "<redacted>".into();
            }
            let text = toml::to_string_pretty(&shown).wrap_err("cannot render the config")?;
            // The configuration is this command's output.
            #[allow(clippy::print_stdout)]
            {
                print!("{text}");
            }
            Ok(())
        }
    }
}

fn render_report(report: &x402_node::settle::RoundReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if report.batches.is_empty() {
        out.push_str("nothing to settle");
    }
    for b in &report.batches {
        let _ = writeln!(
            out,
            "{:?} tx {}: {} channel(s){}, {} skipped, gas {}{}",
            b.kind,
            b.tx,
            b.applied.len(),
            if b.success { "" } else { " (FAILED)" },
            b.skipped.len(),
            b.gas_used,
            if b.recovered { " (recovered from an earlier run)" } else { "" },
        );
    }
    if !report.dropped.is_empty() {
        let _ = write!(out, "\n{} claim(s) left out after a failed simulation", report.dropped.len());
    }
    if report.postponed > 0 {
        let _ = write!(out, "\n{} claim(s) postponed: gas above the cap", report.postponed);
    }
    out.trim_end().to_owned()
}
