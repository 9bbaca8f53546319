//! The configuration file (TOML) and its merge with the environment and the flags.
//!
//! Precedence, highest first: a flag, its `X402_…` environment variable (clap resolves those
//! two), the file given by `--config` / `X402_CONFIG`, the defaults below.

use std::path::{Path, PathBuf};

use alloy::primitives::U256;
use serde::{Deserialize, Serialize};
use x402_client::{DepositPolicy, Limits};

use crate::{args::SettingArgs, error::CliError};

/// The `x402` configuration. Every key is optional.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Config {
    /// The chain's JSON-RPC endpoint. Default `http://127.0.0.1:8545`.
    pub(crate) rpc_url: String,
    /// Directory of the client's channel state (every signed voucher; keep it). Default:
    /// `$HOME/.x402`.
    pub(crate) state_dir: Option<PathBuf>,
    /// Blocks to wait for per transaction (at least 1: mined). Default 1.
    pub(crate) confirmations: u64,
    /// The most to wait for one transaction's confirmations, in seconds. Default 120.
    pub(crate) timeout: u64,
    /// Whether to approve the channel contract for a deposit when the token allowance is
    /// short. Default `true`; off, a short allowance is an error (exit code 4).
    pub(crate) auto_approve: bool,
    /// What the client may spend without asking.
    pub(crate) limits: LimitsConfig,
    /// How channels opened by `get` / `request` are funded.
    pub(crate) deposit: DepositConfig,
    /// Credit window: one voucher pays ahead for up to this many requests (bounded by the
    /// provider's maximum); the others present the node's session token instead of a
    /// signature. What is prepaid is at risk until used. Default 1 (off).
    pub(crate) credit_window: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            rpc_url: "http://127.0.0.1:8545".into(),
            state_dir: None,
            confirmations: 1,
            timeout: 120,
            auto_approve: true,
            limits: LimitsConfig::default(),
            deposit: DepositConfig::default(),
            credit_window: 1,
        }
    }
}

/// Spending limits, in token base units (a TOML integer or a decimal string). The defaults are
/// deliberately small, sized for a 6-decimals stablecoin (0.01 per request, 1 per channel, 5 in
/// total); with an 18-decimals token they are dust, so raise them on purpose.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct LimitsConfig {
    /// The most one request may cost. Default `10000`.
    #[serde(with = "amount")]
    pub(crate) max_price: U256,
    /// The most one channel may hold, after top-ups. Default `1000000`.
    #[serde(with = "amount")]
    pub(crate) max_deposit: U256,
    /// The most all channels in one token that are not closed may hold together. Default
    /// `5000000`.
    #[serde(with = "amount")]
    pub(crate) max_total_deposit: U256,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_price: U256::from(10_000),
            max_deposit: U256::from(1_000_000),
            max_total_deposit: U256::from(5_000_000),
        }
    }
}

/// The deposit policy of channels the client opens by itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct DepositConfig {
    /// A new channel (or an automatic top-up) is sized for this many requests at the route's
    /// price, at least the provider's minimum deposit, at most `limits.max_deposit`. Default
    /// `100`.
    pub(crate) requests: u64,
    /// Whether an exhausted channel is topped up (within the limits) instead of failing.
    /// Default `true`.
    pub(crate) auto_top_up: bool,
    /// Whether `get` / `request` open a channel when none with the provider is usable.
    /// Default `true`; off, open one with `x402 open`.
    pub(crate) auto_open: bool,
    /// The challenge period of new channels, in seconds. Default: the provider's minimum.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) challenge_period: Option<u32>,
}

impl Default for DepositConfig {
    fn default() -> Self {
        let policy = DepositPolicy::default();
        Self {
            requests: policy.requests,
            auto_top_up: policy.auto_top_up,
            auto_open: policy.auto_open,
            challenge_period: None,
        }
    }
}

impl Config {
    /// Reads a configuration file.
    pub(crate) fn load(path: &Path) -> Result<Self, CliError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("cannot read the config file {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| CliError::Usage(format!("config file {}: {e}", path.display())))
    }

    /// Parses a configuration.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.message().to_owned())
    }

    /// The file (if any) merged with the environment and flags, with the state directory
    /// resolved (`home` is `$HOME`).
    pub(crate) fn resolve(
        args: &SettingArgs,
        home: Option<PathBuf>,
        eth_rpc_url: Option<String>,
    ) -> Result<Self, CliError> {
        let mut config = match &args.config {
            Some(path) => Self::load(path)?,
            None => Self::default(),
        };
        // Foundry's variable, below x402's own flag and variable.
        set(&mut config.rpc_url, eth_rpc_url.filter(|u| !u.is_empty()));
        config.apply(args);
        if config.state_dir.is_none() {
            let home = home.filter(|h| !h.as_os_str().is_empty()).ok_or_else(|| {
                CliError::Usage(
                    "no state directory: set --state-dir or X402_STATE_DIR (HOME is not set)".into(),
                )
            })?;
            config.state_dir = Some(home.join(".x402"));
        }
        check_rpc_url(&config.rpc_url)?;
        if config.deposit.requests == 0 {
            return Err(CliError::Usage("deposit.requests must be at least 1".into()));
        }
        if config.credit_window == 0 {
            return Err(CliError::Usage(
                "credit_window must be at least 1 (1: a voucher per request)".into(),
            ));
        }
        Ok(config)
    }

    /// Overrides the file's settings with the flags and environment variables given.
    fn apply(&mut self, args: &SettingArgs) {
        let SettingArgs { config: _, state_dir, rpc, tx, limits, new_channel, pay } = args;
        set(&mut self.rpc_url, rpc.rpc_url.clone());
        if let Some(dir) = state_dir {
            self.state_dir = Some(dir.clone());
        }
        set(&mut self.confirmations, tx.confirmations);
        set(&mut self.timeout, tx.timeout);
        set(&mut self.auto_approve, tx.auto_approve);
        set(&mut self.limits.max_price, limits.max_price);
        set(&mut self.limits.max_deposit, limits.max_deposit);
        set(&mut self.limits.max_total_deposit, limits.max_total_deposit);
        set(&mut self.deposit.requests, new_channel.deposit_requests);
        set(&mut self.deposit.auto_top_up, pay.auto_top_up);
        set(&mut self.deposit.auto_open, pay.auto_open);
        if new_channel.challenge_period.is_some() {
            self.deposit.challenge_period = new_channel.challenge_period;
        }
        set(&mut self.credit_window, pay.credit_window);
    }

    /// The state directory (set by [`Self::resolve`]).
    pub(crate) fn state_dir(&self) -> &Path {
        self.state_dir.as_deref().unwrap_or(Path::new(".x402"))
    }

    /// The library's limits.
    pub(crate) fn limits(&self) -> Limits {
        let l = &self.limits;
        Limits::new(l.max_price, l.max_deposit, l.max_total_deposit)
    }

    /// The library's deposit policy.
    pub(crate) fn deposit_policy(&self) -> DepositPolicy {
        let d = &self.deposit;
        DepositPolicy {
            requests: d.requests,
            auto_top_up: d.auto_top_up,
            auto_open: d.auto_open,
            challenge_period: d.challenge_period,
        }
    }
}

/// Refuses an RPC URL the client cannot use, saying what to write instead.
pub(crate) fn check_rpc_url(text: &str) -> Result<(), CliError> {
    let usage = |why: String| Err(CliError::Usage(format!("invalid RPC URL {text:?}: {why}")));
    if !text.contains("://") {
        return usage(format!("it has no scheme; did you mean http://{text}?"));
    }
    let url = match url::Url::parse(text) {
        Ok(url) => url,
        Err(e) => return usage(e.to_string()),
    };
    match url.scheme() {
        "http" | "https" => Ok(()),
        "ws" | "wss" => usage(format!(
            "x402 speaks JSON-RPC over HTTP; use the endpoint's http{}:// URL",
            if url.scheme() == "wss" { "s" } else { "" }
        )),
        other => usage(format!("the scheme {other}:// is not supported; use http:// or https://")),
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}

/// Serde of an amount: a decimal string or a non-negative TOML integer; written as a string
/// (TOML integers stop at 2^63).
mod amount {
    use alloy::primitives::U256;
    use serde::{Deserializer, Serializer, de};

    pub(super) fn serialize<S: Serializer>(value: &U256, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<U256, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = U256;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an amount in token base units (an integer or a decimal string)")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<U256, E> {
                Ok(U256::from(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<U256, E> {
                u64::try_from(v).map(U256::from).map_err(|_| E::custom("an amount cannot be negative"))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<U256, E> {
                crate::args::parse_amount(v).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.rpc_url, "http://127.0.0.1:8545");
        assert_eq!(c.confirmations, 1);
        assert_eq!(c.limits(), Limits::from_units(10_000, 1_000_000, 5_000_000));
        assert_eq!(c.deposit_policy(), DepositPolicy::default());
    }

    #[test]
    fn the_readme_example_parses() {
        let readme = include_str!("../../../../README.md");
        let section = readme.split("## The `x402` command line").nth(1).expect("the README's CLI section");
        let toml =
            section.split("```toml\n").nth(1).and_then(|s| s.split("```").next()).expect("a toml block");
        let c = Config::parse(toml).unwrap();
        assert_eq!(c.limits.max_price, U256::from(10_000));
        assert_eq!(c.deposit.challenge_period, Some(86_400));
    }

    #[test]
    fn files_parse_or_are_refused_with_the_reason() {
        let full = r#"
            rpc_url = "https://rpc.example"
            state_dir = "/var/lib/x402"
            confirmations = 3
            auto_approve = false
            credit_window = 10
            timeout = 30
            [limits]
            max_price = 5
            max_deposit = "1_000"
            max_total_deposit = "100000000000000000000000"
            [deposit]
            requests = 7
            auto_top_up = false
            challenge_period = 7200
        "#;
        let c = Config::parse(full).unwrap();
        assert_eq!(
            c,
            Config {
                rpc_url: "https://rpc.example".into(),
                state_dir: Some("/var/lib/x402".into()),
                confirmations: 3,
                timeout: 30,
                auto_approve: false,
                limits: LimitsConfig {
                    max_price: U256::from(5),
                    max_deposit: U256::from(1_000),
                    max_total_deposit: U256::from(10u128.pow(23)),
                },
                deposit: DepositConfig {
                    requests: 7,
                    auto_top_up: false,
                    auto_open: true,
                    challenge_period: Some(7200),
                },
                credit_window: 10,
            }
        );
        // The effective configuration printed by `x402 config` reads back the same.
        assert_eq!(Config::parse(&toml::to_string(&c).unwrap()).unwrap(), c);

        for (text, reason) in [
            ("rpc = \"x\"", "unknown field `rpc`"),
            ("[limits]\nmax_prize = 1", "unknown field `max_prize`"),
            ("[deposit]\nrequest = 1", "unknown field `request`"),
            ("[limits]\nmax_price = -1", "negative"),
            ("[limits]\nmax_price = \"1.5\"", "base units"),
            ("[limits]\nmax_price = 1.5", "an amount in token base units"),
            ("confirmations = \"two\"", "invalid type"),
            ("rpc_url = ", "string"),
        ] {
            let err = Config::parse(text).unwrap_err();
            assert!(err.contains(reason), "{text:?}: {err}");
        }
    }

    #[test]
    fn flags_and_environment_override_the_file() {
        use crate::args::{LimitArgs, NewChannelArgs, PayArgs, RpcArgs, TxArgs};
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x402.toml");
        std::fs::write(&file, "rpc_url = \"http://file:8545\"\nconfirmations = 4\n[limits]\nmax_price = 7\n")
            .unwrap();
        let home = Some(PathBuf::from("/home/u"));
        let base = || SettingArgs { config: Some(file.clone()), ..SettingArgs::default() };

        // (what is given, ETH_RPC_URL, the field it should change, its expected value)
        type Case = (SettingArgs, Option<&'static str>, fn(&Config) -> String, &'static str);
        let cases: Vec<Case> = vec![
            (base(), None, |c| c.rpc_url.clone(), "http://file:8545"),
            (base(), None, |c| c.confirmations.to_string(), "4"),
            (base(), None, |c| c.limits.max_price.to_string(), "7"),
            (base(), None, |c| c.limits.max_deposit.to_string(), "1000000"),
            (base(), None, |c| c.state_dir().display().to_string(), "/home/u/.x402"),
            (
                SettingArgs { rpc: RpcArgs { rpc_url: Some("http://flag:1".into()) }, ..base() },
                Some("http://eth:2"),
                |c| c.rpc_url.clone(),
                "http://flag:1",
            ),
            (base(), Some("http://eth:2"), |c| c.rpc_url.clone(), "http://eth:2"),
            (SettingArgs::default(), Some("http://eth:2"), |c| c.rpc_url.clone(), "http://eth:2"),
            (
                SettingArgs {
                    limits: LimitArgs { max_price: Some(U256::from(9)), ..LimitArgs::default() },
                    ..base()
                },
                None,
                |c| c.limits.max_price.to_string(),
                "9",
            ),
            (
                SettingArgs {
                    tx: TxArgs { confirmations: Some(0), timeout: Some(5), ..TxArgs::default() },
                    ..base()
                },
                None,
                |c| format!("{} {}", c.confirmations, c.timeout),
                "0 5",
            ),
            (
                SettingArgs { state_dir: Some("/tmp/s".into()), ..base() },
                None,
                |c| c.state_dir().display().to_string(),
                "/tmp/s",
            ),
            (
                SettingArgs {
                    pay: PayArgs { auto_top_up: Some(false), auto_open: Some(false), ..PayArgs::default() },
                    ..base()
                },
                None,
                |c| format!("{} {}", c.deposit.auto_top_up, c.deposit.auto_open),
                "false false",
            ),
            (
                SettingArgs {
                    new_channel: NewChannelArgs { deposit_requests: Some(3), challenge_period: Some(3601) },
                    ..base()
                },
                None,
                |c| format!("{} {:?}", c.deposit.requests, c.deposit.challenge_period),
                "3 Some(3601)",
            ),
            (SettingArgs::default(), None, |c| c.rpc_url.clone(), "http://127.0.0.1:8545"),
        ];
        for (i, (args, eth, field, want)) in cases.into_iter().enumerate() {
            let c = Config::resolve(&args, home.clone(), eth.map(str::to_owned)).unwrap();
            assert_eq!(field(&c), want, "case {i}");
        }
    }

    #[test]
    fn unusable_settings_are_usage_errors() {
        use crate::args::{NewChannelArgs, RpcArgs};
        let no_home = Config::resolve(&SettingArgs::default(), None, None).unwrap_err();
        assert!(no_home.to_string().contains("--state-dir"), "{no_home}");
        for (url, says) in [
            ("not a url", "no scheme"),
            ("127.0.0.1:8545", "did you mean http://127.0.0.1:8545?"),
            ("localhost:8545", "did you mean http://localhost:8545?"),
            ("ws://127.0.0.1:8545", "use the endpoint's http:// URL"),
            ("wss://rpc.example", "https://"),
            ("ftp://rpc.example", "not supported"),
        ] {
            let args = SettingArgs { rpc: RpcArgs { rpc_url: Some(url.into()) }, ..SettingArgs::default() };
            let err = Config::resolve(&args, Some("/h".into()), None).unwrap_err();
            assert!(matches!(err, CliError::Usage(_)) && err.to_string().contains(says), "{url}: {err}");
            assert!(err.to_string().contains("invalid RPC URL"), "{err}");
        }
        let args = SettingArgs {
            new_channel: NewChannelArgs { deposit_requests: Some(0), ..NewChannelArgs::default() },
            ..SettingArgs::default()
        };
        assert!(Config::resolve(&args, Some("/h".into()), None).is_err());
        let missing = SettingArgs { config: Some("/nonexistent/x402.toml".into()), ..SettingArgs::default() };
        let err = Config::resolve(&missing, Some("/h".into()), None).unwrap_err();
        assert!(err.to_string().contains("cannot read the config file"), "{err}");
    }
}
