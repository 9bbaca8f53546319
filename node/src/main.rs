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

/// The node's settings that override its configuration file: those of the chain and the
/// provider (every command of the node) and those of the gateway (`run`, `config`).
#[derive(Debug, Default, clap::Args)]
struct Overrides {
    #[command(flatten)]
    chain: ChainOverrides,
    #[command(flatten)]
    gateway: GatewayOverrides,
}

/// The chain, the store and the provider's key [`run`, `config`, `settle`].
#[derive(Debug, Default, clap::Args)]
struct ChainOverrides {
    /// Chain JSON-RPC URL [config: chain.rpc_url; default http://127.0.0.1:8545].
    #[arg(long, env = "X402_RPC_URL")]
    rpc_url: Option<String>,
    /// PaymentChannel contract address [config: chain.contract; required].
    #[arg(long, env = "X402_CONTRACT")]
    contract: Option<Address>,
    /// Token accepted, zero address for the native token [config: payment.asset; default native].
    #[arg(long, env = "X402_ASSET")]
    asset: Option<Address>,
    /// Directory of the node's store [config: data_dir; default ./x402-data].
    #[arg(long, env = "X402_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Shortest challenge period accepted, seconds [config: payment.min_challenge_period; default 3600].
    #[arg(long, env = "X402_MIN_CHALLENGE_PERIOD")]
    min_challenge_period: Option<u64>,
    /// File holding the provider's hex private key [config: provider.key_file; default: the
    /// X402_PROVIDER_KEY environment variable].
    #[arg(long, env = "X402_PROVIDER_KEY_FILE")]
    provider_key_file: Option<PathBuf>,
}

/// The gateway's own settings [`run`, `config`].
#[derive(Debug, Default, clap::Args)]
struct GatewayOverrides {
    /// Address to listen on [config: listen; default 127.0.0.1:8402].
    #[arg(long, env = "X402_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Base URL of the upstream API [config: upstream; default http://127.0.0.1:8080].
    #[arg(long, env = "X402_UPSTREAM")]
    upstream: Option<String>,
    /// Bearer token of the /admin endpoints [config: admin_token; default none = disabled].
    #[arg(long, env = "X402_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway in front of the upstream API (the default).
    Run {
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Check the effective configuration (after overrides) as `run` does, print it as TOML and
    /// exit.
    Config {
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Run a watchtower (as the `x402-watcher` binary does): take vouchers pushed by provider
    /// nodes and, if a payer starts an exit, settle the best one before the challenge period
    /// ends. --config names the watcher's own TOML file; --listen, --data-dir, --rpc-url and
    /// --contract given before `watch` apply to it unless given after.
    Watch {
        #[command(flatten)]
        overrides: x402_node::watcher::cli::Overrides,
    },
    /// Catch up with the chain and run one settlement round now, then exit. The gateway must
    /// not be running on the same data_dir (use `POST /admin/settle` on a running gateway).
    Settle {
        /// Settle every channel that owes anything, whatever the settlement policy says.
        #[arg(long)]
        force: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        overrides: ChainOverrides,
    },
}

impl Overrides {
    fn apply(self, c: &mut Config) {
        self.chain.apply(c);
        self.gateway.apply(c);
    }
}

impl ChainOverrides {
    fn apply(self, c: &mut Config) {
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
        if let Some(v) = self.provider_key_file {
            c.provider.key_file = Some(v);
        }
    }
}

impl GatewayOverrides {
    fn apply(self, c: &mut Config) {
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = self.upstream {
            c.upstream = v;
        }
        if let Some(v) = self.admin_token {
            c.admin_token = Some(v);
        }
    }
}

/// mimalloc: the paid path allocates a few dozen small buffers per request (headers, JSON,
/// base64), which glibc's malloc serves measurably slower under two busy threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    // The flags before the command are the gateway's (the default command is `run`).
    let (top, command) = (cli.overrides, cli.command);
    // The node's file, then the flags before the command, then the command's own.
    let load = |top: Overrides| -> eyre::Result<Config> {
        let mut config = match &cli.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        top.apply(&mut config);
        Ok(config)
    };
    match command {
        None => Ok(x402_node::gateway::run(load(top)?, x402_node::shutdown_signal()).await?),
        Some(Command::Run { overrides }) => {
            let mut config = load(top)?;
            overrides.apply(&mut config);
            Ok(x402_node::gateway::run(config, x402_node::shutdown_signal()).await?)
        }
        Some(Command::Watch { mut overrides }) => {
            // The flags before `watch` apply to the watcher too, unless it has its own.
            overrides.listen = overrides.listen.or(top.gateway.listen);
            overrides.data_dir = overrides.data_dir.or(top.chain.data_dir);
            overrides.rpc_url = overrides.rpc_url.or(top.chain.rpc_url);
            overrides.contract = overrides.contract.or(top.chain.contract);
            // The watcher's own configuration: its file, then the flags.
            let (watcher, key) = x402_node::watcher::cli::load(cli.config.as_deref(), overrides)?;
            x402_node::watcher::run(watcher, key, x402_node::shutdown_signal()).await?;
            Ok(())
        }
        Some(Command::Settle { force, json, overrides }) => {
            let mut config = load(top)?;
            overrides.apply(&mut config);
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
        Some(Command::Config { overrides }) => {
            let mut config = load(top)?;
            overrides.apply(&mut config);
            // The same checks as `run` makes before it starts.
            config.validate()?;
            let mut shown = config.clone();
            if shown.admin_token.is_some() {
                shown.admin_token = Some("<redacted>".into());
            }
            for w in &mut shown.watchers {
                w.token = "<redacted>".into();
            }
            if shown.facilitator.token.is_some() {
                shown.facilitator.token = Some("<redacted>".into());
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
