//! The command line of the watcher, shared by the `x402-watcher` binary and `x402-node watch`:
//! a TOML file ([`WatcherConfig::load`]) overridden by flags and their environment variables.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use alloy::{primitives::Address, signers::local::PrivateKeySigner};

use crate::{WatcherConfig, WatcherError};

/// Settings that override the watcher's configuration file. The defaults shown are
/// [`WatcherConfig::default`]'s.
#[derive(Debug, Default, clap::Args)]
pub struct Overrides {
    /// Address of the push API [config: listen; default 127.0.0.1:8403].
    #[arg(long, env = "X402_WATCHER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory of the watcher's store, never the gateway's [config: data_dir; default
    /// x402-watcher].
    #[arg(long, env = "X402_WATCHER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Chain JSON-RPC URL [config: rpc_url; default http://127.0.0.1:8545].
    #[arg(long, env = "X402_RPC_URL")]
    pub rpc_url: Option<String>,
    /// PaymentChannel contract address [config: contract; required].
    #[arg(long, env = "X402_CONTRACT")]
    pub contract: Option<Address>,
    /// Bearer token provider nodes must present, at least 16 characters [config: token;
    /// required].
    #[arg(long, env = "X402_WATCHER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the watcher's hex private key; it pays the gas of claims [config:
    /// key_file; default: the X402_WATCHER_KEY environment variable].
    #[arg(long, env = "X402_WATCHER_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Seconds between polls of the chain [config: poll_interval_secs; default 4].
    #[arg(long, env = "X402_WATCHER_POLL_INTERVAL_SECS")]
    pub poll_interval_secs: Option<u64>,
    /// Seconds to leave the provider to settle an exit by itself before the watcher does,
    /// capped at half the challenge period [config: submit_delay_secs; default 0].
    #[arg(long, env = "X402_WATCHER_SUBMIT_DELAY_SECS")]
    pub submit_delay_secs: Option<u64>,
}

impl Overrides {
    /// Applies the overrides to `config`.
    pub fn apply(self, config: &mut WatcherConfig) {
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = self.data_dir {
            config.data_dir = v;
        }
        if let Some(v) = self.rpc_url {
            config.rpc_url = v;
        }
        if let Some(v) = self.contract {
            config.contract = v;
        }
        if let Some(v) = self.token {
            config.token = v;
        }
        if let Some(v) = self.key_file {
            config.key_file = Some(v);
        }
        if let Some(v) = self.poll_interval_secs {
            config.poll_interval = Duration::from_secs(v);
        }
        if let Some(v) = self.submit_delay_secs {
            config.submit_delay = Duration::from_secs(v);
        }
    }
}

/// The effective configuration and key: the file at `path` (or the defaults), then
/// `overrides`, checked as [`run`](crate::run) checks it.
pub fn load(
    path: Option<&std::path::Path>,
    overrides: Overrides,
) -> Result<(WatcherConfig, PrivateKeySigner), WatcherError> {
    let mut config = match path {
        Some(path) => WatcherConfig::load(path)?,
        None => WatcherConfig::default(),
    };
    overrides.apply(&mut config);
    config.validate()?;
    let key = config.signer()?;
    Ok((config, key))
}

/// An error as a binary reports it on stderr: `Error: <message>`, then each cause on its own
/// line unless the message above already says it (errors that print their source), without
/// the source locations or colour of a debug report.
pub fn error_report(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = format!("Error: {error}");
    let mut above = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !above.contains(&text) {
            out.push_str("\n  caused by: ");
            out.push_str(&text);
        }
        above = text;
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Hides(#[source] std::io::Error);

    #[test]
    fn causes_are_shown_once() {
        let io = || std::io::Error::other("disk full");
        assert_eq!(error_report(&Repeats(io())), "Error: outer: disk full");
        assert_eq!(error_report(&Hides(io())), "Error: outer\n  caused by: disk full");
    }
}
