//! `x402-devnet`: a local devnet of x402 Channels (`scripts/devnet`) and the one-command demo
//! (`scripts/demo`). A thin CLI over the `x402_devnet` library.

mod output;

use std::path::PathBuf;

use alloy::{primitives::U256, providers::Provider};
use clap::{Args, Parser, Subcommand};
use eyre::WrapErr;
use tracing_subscriber::EnvFilter;
use x402_devnet::{
    Artifacts, Devnet, Runner,
    demo::{self, DemoOptions, units},
};

/// A local devnet of x402 Channels: anvil with `PaymentChannel` and the test stablecoin deployed
/// and anvil's accounts funded, and a ready node configuration. Stays up until interrupted.
#[derive(Debug, Parser)]
#[command(name = "x402-devnet", version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    up: UpArgs,

    /// forge's artifacts directory [default: the workspace's out/].
    #[arg(long, global = true)]
    artifacts: Option<PathBuf>,

    /// The anvil binary [default: the workspace's npm-installed Foundry].
    #[arg(long, global = true)]
    anvil: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Tell the demo story on a fresh anvil (paid requests, batch settlement, a cooperative
    /// close, an exit defended by a watcher), then stop everything.
    Demo(DemoArgs),
}

/// Settings of the devnet.
#[derive(Debug, Args)]
struct UpArgs {
    /// anvil's port.
    #[arg(long, default_value_t = 8545)]
    port: u16,
    /// Where to write the node configuration (TOML); the provider's key file and the node's
    /// store go next to it.
    #[arg(long, default_value = "./x402-devnet/node.toml")]
    config: PathBuf,
    /// The API the node's configuration puts the gateway in front of.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    upstream: String,
}

/// Settings of the demo.
#[derive(Debug, Args)]
struct DemoArgs {
    /// The `x402-node` binary to run the gateway and the watcher as processes [default: the
    /// x402-node next to this binary, if there is one].
    #[arg(long)]
    node_bin: Option<PathBuf>,
    /// Run the gateway and the watcher in this process instead (the same library code).
    #[arg(long, conflicts_with = "node_bin")]
    in_process: bool,
    /// Alice's paid requests.
    #[arg(long, default_value_t = 300)]
    requests: u64,
}

#[tokio::main]
async fn main() -> eyre::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let artifacts = cli.artifacts.map(Artifacts::new).unwrap_or_default();
    match cli.command {
        None => up(cli.up, artifacts, cli.anvil).await,
        Some(Command::Demo(args)) => run_demo(args, artifacts, cli.anvil).await,
    }
}

async fn up(args: UpArgs, artifacts: Artifacts, anvil: Option<PathBuf>) -> eyre::Result<()> {
    let mut builder = Devnet::builder().port(args.port).artifacts(artifacts);
    if let Some(path) = anvil {
        builder = builder.anvil_path(path);
    }
    let devnet = builder.start().await.wrap_err("cannot start the devnet")?;
    let files = devnet.write_node_config(&args.config, &args.upstream)?;
    output::line("x402 Channels devnet\n");
    output::line(format_args!("RPC             {} (chain {})", devnet.rpc_url(), devnet.chain_id()));
    output::line(format_args!("PaymentChannel  {}", devnet.contract));
    output::line(format_args!(
        "TestStablecoin  {} (tUSD: 6 decimals, EIP-2612, EIP-3009; anyone may mint)",
        devnet.token
    ));
    output::line(format_args!("node config     {}", files.config.display()));
    output::line(format_args!(
        "                run the gateway: cargo run -p x402-node -- --config {}",
        files.config.display()
    ));
    output::line(
        "\nFunded accounts: anvil's well-known TEST keys, public knowledge; never use them elsewhere.",
    );
    for (i, key) in devnet.accounts().iter().enumerate() {
        let who = key.address();
        let eth = devnet.chain.get_balance(who).await.wrap_err("eth_getBalance")?;
        let tokens = devnet.balance(who).await?;
        let role = if i == 0 { "  (the provider: the node config's key)" } else { "" };
        output::line(format_args!(
            "  ({i}) {who}  key {}  {} tUSD  {} ETH{role}",
            alloy::hex::encode_prefixed(key.to_bytes()),
            units(tokens),
            eth / U256::from(10u64).pow(U256::from(18)),
        ));
    }
    output::line("\nUp until interrupted (ctrl-c): then anvil is stopped and the files above removed.");
    x402_node::shutdown_signal().await;
    drop(devnet);
    let config = files.config.clone();
    files.remove()?;
    output::note(format_args!("stopped anvil; removed {} and the files next to it", config.display()));
    Ok(())
}

async fn run_demo(args: DemoArgs, artifacts: Artifacts, anvil: Option<PathBuf>) -> eyre::Result<()> {
    let beside = std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.join("x402-node")));
    let runner = match (args.in_process, args.node_bin, beside) {
        (true, _, _) => Runner::InProcess,
        (false, Some(bin), _) => {
            eyre::ensure!(
                bin.is_file(),
                "{} is not a file: build it with `cargo build -p x402-node`",
                bin.display()
            );
            Runner::Binary(bin)
        }
        (false, None, Some(bin)) if bin.is_file() => Runner::Binary(bin),
        (false, None, _) => {
            output::note(
                "no x402-node binary next to this one: running the gateway and the watcher in this process",
            );
            Runner::InProcess
        }
    };
    let options = DemoOptions {
        runner,
        artifacts,
        anvil_path: anvil,
        alice_requests: args.requests,
        ..DemoOptions::default()
    };
    let mut out = output::story();
    let interrupted = tokio::select! {
        outcome = demo::run(&options, &mut out) => {
            outcome.wrap_err("the demo failed")?;
            false
        }
        () = x402_node::shutdown_signal() => true,
    };
    if interrupted {
        // The story was dropped with the select: everything it started is stopped and its
        // directory removed.
        output::note(
            "interrupted: anvil, the gateway and the watcher are stopped, the work directory removed",
        );
        std::process::exit(130);
    }
    Ok(())
}
