//! The watcher's configuration: a TOML file (every key optional but `contract`, `token` and a
//! key), overridden by flags and the environment (see [`cli`](crate::cli)).
//!
//! ```toml
//! listen = "127.0.0.1:8403"          # the push API
//! data_dir = "x402-watcher"          # its own store, never the gateway's
//! rpc_url = "http://127.0.0.1:8545"
//! # chain_id = 8453                  # checked against the RPC's; default: asked from it
//! contract = "0x…"                   # the PaymentChannel contract (required)
//! # token = "…"                      # the push API's bearer token; better: X402_WATCHER_TOKEN
//! key_file = "/run/secrets/watcher.key"  # default: the X402_WATCHER_KEY environment variable
//! poll_interval_secs = 4
//! submit_delay_secs = 0
//! max_log_range = 2000
//! receipt_timeout_secs = 120
//! resend_after_secs = 60             # replace a claim not mined after this long (shorter near the deadline)
//! ```

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use alloy::{primitives::Address, signers::local::PrivateKeySigner};
use serde::{Deserialize, Serialize};

#[cfg(doc)]
use crate::MIN_TOKEN_LEN;
use crate::{GuardSettings, WatcherError, check_token};

/// The environment variable holding the watcher's hex private key when no `key_file` is set.
pub const KEY_ENV: &str = "X402_WATCHER_KEY";

/// The watcher's configuration. The watcher's key is passed to [`run`](crate::run)
/// separately (see [`WatcherConfig::signer`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatcherConfig {
    /// Address of the push API. Default `127.0.0.1:8403`.
    pub listen: SocketAddr,
    /// Directory of the watcher's store (never the gateway's). Default `x402-watcher`.
    pub data_dir: PathBuf,
    /// Chain JSON-RPC URL. Default `http://127.0.0.1:8545`.
    pub rpc_url: String,
    /// The chain id; checked against the RPC's. Default: asked from the RPC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_id: Option<u64>,
    /// The `PaymentChannel` contract. Required.
    pub contract: Address,
    /// Bearer token of the push API, at least [`MIN_TOKEN_LEN`] characters. Required.
    pub token: String,
    /// File holding the watcher's hex private key (it pays the gas of claims). Default: the
    /// [`KEY_ENV`] environment variable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// How often the guard follows the chain (`poll_interval_secs`). Default 4 s.
    #[serde(rename = "poll_interval_secs", with = "secs")]
    pub poll_interval: Duration,
    /// How long after `requestExit` the guard leaves the provider to settle by itself before
    /// it submits (saving the watcher's gas), capped at half of each channel's challenge
    /// period (`submit_delay_secs`). Default zero: submit as soon as the exit is seen.
    #[serde(rename = "submit_delay_secs", with = "secs")]
    pub submit_delay: Duration,
    /// The most blocks asked for in one `eth_getLogs`. Default 2,000.
    pub max_log_range: u64,
    /// How long a round waits for a claim's receipt before moving on; the claim stays in
    /// flight and is waited for again next round (`receipt_timeout_secs`). Default 120 s.
    #[serde(rename = "receipt_timeout_secs", with = "secs")]
    pub receipt_timeout: Duration,
    /// Replace a claim not mined after this long with one paying higher fees; halved within
    /// four intervals of the exit's end, quartered within one (`resend_after_secs`).
    /// Default 60 s.
    #[serde(rename = "resend_after_secs", with = "secs")]
    pub resend_after: Duration,
}

impl Default for WatcherConfig {
    fn default() -> Self {
        let guard = GuardSettings::default();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8403)),
            data_dir: PathBuf::from("x402-watcher"),
            rpc_url: "http://127.0.0.1:8545".into(),
            chain_id: None,
            contract: Address::ZERO,
            token: String::new(),
            key_file: None,
            poll_interval: Duration::from_secs(4),
            submit_delay: guard.submit_delay,
            max_log_range: guard.max_log_range,
            receipt_timeout: guard.receipt_timeout,
            resend_after: guard.sender.resend_after,
        }
    }
}

impl fmt::Debug for WatcherConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatcherConfig")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("rpc_url", &self.rpc_url)
            .field("chain_id", &self.chain_id)
            .field("contract", &self.contract)
            .field("token", &"<redacted>")
            .field("key_file", &self.key_file)
            .field("poll_interval", &self.poll_interval)
            .field("submit_delay", &self.submit_delay)
            .field("max_log_range", &self.max_log_range)
            .field("receipt_timeout", &self.receipt_timeout)
            .field("resend_after", &self.resend_after)
            .finish()
    }
}

impl WatcherConfig {
    /// Reads a TOML configuration file. Parse errors name the line, not its contents (the
    /// file may hold the token).
    pub fn load(path: &Path) -> Result<Self, WatcherError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| WatcherError::ReadConfig { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            let message = match line {
                Some(line) => format!("line {line}: {}", e.message()),
                None => e.message().to_owned(),
            };
            WatcherError::ParseConfig { path: path.to_owned(), message }
        })
    }

    /// Checks that every required setting is present and sane.
    pub fn validate(&self) -> Result<(), WatcherError> {
        let invalid = |m: &str| Err(WatcherError::Config(m.into()));
        if self.contract.is_zero() {
            return invalid("the PaymentChannel contract address is required");
        }
        check_token(&self.token)?;
        if self.poll_interval.is_zero() {
            return invalid("poll_interval_secs must be above zero");
        }
        if self.max_log_range == 0 {
            return invalid("max_log_range must be at least 1");
        }
        if self.receipt_timeout.is_zero() {
            return invalid("receipt_timeout_secs must be above zero");
        }
        if self.resend_after.is_zero() {
            return invalid("resend_after_secs must be above zero");
        }
        if self.rpc_url.trim().is_empty() {
            return invalid("rpc_url is required");
        }
        Ok(())
    }

    /// The watcher's key: from `key_file`, or else the [`KEY_ENV`] environment variable. The
    /// key material is never echoed in errors.
    pub fn signer(&self) -> Result<PrivateKeySigner, WatcherError> {
        let raw = match &self.key_file {
            Some(path) => std::fs::read_to_string(path).map_err(|e| {
                WatcherError::Config(format!("cannot read the watcher key file {}: {e}", path.display()))
            })?,
            None => std::env::var(KEY_ENV).map_err(|_| {
                WatcherError::Config(format!(
                    "the watcher needs a key: set {KEY_ENV} or key_file (--key-file)"
                ))
            })?,
        };
        raw.trim()
            .parse()
            .map_err(|_| WatcherError::Config("the watcher key is not a valid hex private key".into()))
    }

    /// The guard's settings.
    pub fn guard_settings(&self) -> GuardSettings {
        GuardSettings {
            max_log_range: self.max_log_range,
            submit_delay: self.submit_delay,
            receipt_timeout: self.receipt_timeout,
            sender: x402_chain::SenderConfig {
                resend_after: self.resend_after,
                ..GuardSettings::DEFAULT.sender
            },
            ..GuardSettings::DEFAULT
        }
    }
}

/// Durations as whole seconds.
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_sets_what_it_names_and_defaults_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watcher.toml");
        std::fs::write(
            &path,
            "contract = \"0x00000000000000000000000000000000000000cc\"\nlisten = \"0.0.0.0:9000\"\n\
             poll_interval_secs = 2\nresend_after_secs = 30\n",
        )
        .unwrap();
        let c = WatcherConfig::load(&path).unwrap();
        assert_eq!(c.contract, "0x00000000000000000000000000000000000000cc".parse::<Address>().unwrap());
        assert_eq!(c.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!((c.poll_interval, c.resend_after), (Duration::from_secs(2), Duration::from_secs(30)));
        assert_eq!(c.data_dir, WatcherConfig::default().data_dir);
        assert_eq!(c.guard_settings().sender.resend_after, Duration::from_secs(30));
        assert_eq!(WatcherConfig::default().guard_settings(), GuardSettings::DEFAULT);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_without_quoting_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watcher.toml");
        std::fs::write(&path, "token = \"secret-token-value-123\"\nupstream = \"x\"\n").unwrap();
        let e = WatcherConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("upstream"), "{e}");
        assert!(!e.contains("secret-token-value-123"), "{e}");
        std::fs::write(&path, "poll_interval_secs = \"soon\"\n").unwrap();
        assert!(WatcherConfig::load(&path).is_err());
    }
}
