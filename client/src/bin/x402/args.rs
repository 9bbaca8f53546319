//! The command line: global settings (each with an `X402_…` environment fallback) and the
//! subcommands.
//!
//! Secrets (the payer key, the session key, the keystore password) are read from the
//! environment or from files only, never from arguments: an argument is visible to every user
//! of the machine (`ps`) and lands in shell history. So no clap argument holds a secret; the
//! variables are read in `keys.rs` and documented in [`AFTER_HELP`].

use std::path::PathBuf;

use alloy::primitives::{B256, U256};
use clap::{ArgAction, Args, Parser, Subcommand};
use reqwest::{
    Method,
    header::{HeaderName, HeaderValue},
};

/// Shown after the top-level `--help`: the secrets' variables and the exit codes (kept in
/// step with `error::ExitKind` by a unit test there, and with the README).
pub(crate) const AFTER_HELP: &str = "\
Keys (never accepted as arguments, never printed):
  X402_PRIVATE_KEY        the payer's hex private key; or --key-file, or --keystore
  X402_KEYSTORE_PASSWORD  the password of --keystore; or --password-file
  X402_SESSION_KEY        a hex session key that signs vouchers; or --session-key-file

Amounts are whole numbers of the token's base units (1000000 is 1.0 of a 6-decimals token).

Exit codes:
  0  success
  1  other error (a transaction failed, an HTTP or state store error, an HTTP error status with --fail)
  2  usage: bad arguments, a malformed amount, key, channel id or config file, no key
  3  a limit refused it: price, deposit or total deposit above the limit; channel exhausted
  4  insufficient token balance or allowance
  5  unknown channel, or the channel's state does not allow it (e.g. withdraw before the period)
  6  the node or the RPC endpoint cannot be reached
  7  wrong network: the RPC endpoint is on another chain than the payment or the channel
  8  the node refused the payment or the close, or offers nothing this client can pay";

/// `x402`: pay for HTTP APIs through x402 payment channels, and manage the channels.
#[derive(Debug, Parser)]
#[command(
    name = "x402",
    version,
    about = "Pay for HTTP APIs through x402 payment channels, and manage the channels",
    after_help = AFTER_HELP
)]
pub(crate) struct Cli {
    /// Print the result as one JSON document on stdout (errors too).
    #[arg(long, global = true)]
    pub(crate) json: bool,

    /// More logs on stderr: -v info, -vv debug, -vvv trace (default: warnings; or RUST_LOG).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub(crate) verbose: u8,

    #[command(flatten)]
    pub(crate) settings: SettingArgs,

    #[command(flatten)]
    pub(crate) keys: KeyArgs,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Settings that override the configuration file.
#[derive(Debug, Default, Args)]
pub(crate) struct SettingArgs {
    /// TOML configuration file (see the README) [default: none, built-in defaults].
    #[arg(long, env = "X402_CONFIG", global = true, help_heading = "Settings")]
    pub(crate) config: Option<PathBuf>,
    /// Chain JSON-RPC URL [config: rpc_url; default http://127.0.0.1:8545].
    #[arg(long, env = "X402_RPC_URL", global = true, help_heading = "Settings")]
    pub(crate) rpc_url: Option<String>,
    /// Directory of the channel state [config: state_dir; default $HOME/.x402].
    #[arg(long, env = "X402_STATE_DIR", global = true, help_heading = "Settings")]
    pub(crate) state_dir: Option<PathBuf>,
    /// Blocks to wait for per transaction [config: confirmations; default 1].
    #[arg(long, env = "X402_CONFIRMATIONS", global = true, help_heading = "Settings")]
    pub(crate) confirmations: Option<u64>,
    /// Approve the channel contract for deposits when the allowance is short [config:
    /// auto_approve; default true].
    #[arg(long, env = "X402_AUTO_APPROVE", global = true, help_heading = "Settings")]
    pub(crate) auto_approve: Option<bool>,
    /// The most one request may cost [config: limits.max_price; default 10000].
    #[arg(long, env = "X402_MAX_PRICE", global = true, value_parser = parse_amount, value_name = "AMOUNT", help_heading = "Limits")]
    pub(crate) max_price: Option<U256>,
    /// The most one channel may hold [config: limits.max_deposit; default 1000000].
    #[arg(long, env = "X402_MAX_DEPOSIT", global = true, value_parser = parse_amount, value_name = "AMOUNT", help_heading = "Limits")]
    pub(crate) max_deposit: Option<U256>,
    /// The most all channels in one token may hold [config: limits.max_total_deposit;
    /// default 5000000].
    #[arg(long, env = "X402_MAX_TOTAL_DEPOSIT", global = true, value_parser = parse_amount, value_name = "AMOUNT", help_heading = "Limits")]
    pub(crate) max_total_deposit: Option<U256>,
    /// Size new channels for this many requests [config: deposit.requests; default 100].
    #[arg(long, env = "X402_DEPOSIT_REQUESTS", global = true, help_heading = "Limits")]
    pub(crate) deposit_requests: Option<u64>,
    /// Top up an exhausted channel instead of failing [config: deposit.auto_top_up; default
    /// true].
    #[arg(long, env = "X402_AUTO_TOP_UP", global = true, help_heading = "Limits")]
    pub(crate) auto_top_up: Option<bool>,
    /// Challenge period of new channels, seconds [config: deposit.challenge_period; default:
    /// the provider's minimum].
    #[arg(
        long,
        env = "X402_CHALLENGE_PERIOD",
        global = true,
        value_name = "SECONDS",
        help_heading = "Limits"
    )]
    pub(crate) challenge_period: Option<u32>,
    /// Credit window: one voucher pays ahead for up to this many requests (as far as the
    /// provider allows) and the rest present the session token the node grants, with no
    /// signature; what is prepaid is at risk until used [config: credit_window; default 1,
    /// off].
    #[arg(long, env = "X402_CREDIT_WINDOW", global = true, value_name = "REQUESTS", help_heading = "Limits")]
    pub(crate) credit_window: Option<u32>,
}

/// Where the keys come from (files; the keys themselves only from the environment).
#[derive(Debug, Default, Args)]
pub(crate) struct KeyArgs {
    /// File holding the payer's hex private key (instead of X402_PRIVATE_KEY).
    #[arg(long, env = "X402_KEY_FILE", global = true, help_heading = "Keys")]
    pub(crate) key_file: Option<PathBuf>,
    /// Encrypted JSON keystore of the payer's key (password: X402_KEYSTORE_PASSWORD or
    /// --password-file).
    #[arg(long, env = "X402_KEYSTORE", global = true, help_heading = "Keys")]
    pub(crate) keystore: Option<PathBuf>,
    /// File holding the keystore's password.
    #[arg(long, env = "X402_KEYSTORE_PASSWORD_FILE", global = true, help_heading = "Keys")]
    pub(crate) password_file: Option<PathBuf>,
    /// File holding a hex session key that signs vouchers instead of the payer's key (or
    /// X402_SESSION_KEY; default: none, the payer's key signs).
    #[arg(long, env = "X402_SESSION_KEY_FILE", global = true, help_heading = "Keys")]
    pub(crate) session_key_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Open a channel with the provider serving URL (learns its terms from a 402), without
    /// paying for a request.
    Open {
        /// A paid URL of the provider, e.g. http://127.0.0.1:8402/weather.
        url: String,
        /// The deposit [default: sized by the deposit policy: deposit.requests times the
        /// price, at least the provider's minimum, at most limits.max_deposit].
        #[arg(long, value_parser = parse_amount, value_name = "AMOUNT")]
        deposit: Option<U256>,
        /// Base URL of the provider's node, for cooperative closes [default: URL's origin].
        #[arg(long)]
        node: Option<String>,
        /// Open without paying gas: sign an EIP-2612 permit (`permit`) or an EIP-3009
        /// authorisation (`transfer`; `auto` picks it when the token has it) and let a relayer
        /// submit it [default: a normal open, paying gas].
        #[arg(long, value_name = "KIND", num_args = 0..=1, default_missing_value = "auto")]
        gasless: Option<GaslessArg>,
        /// The relayer of a gasless open: the base URL of a node that relays opens
        /// (`POST /x402/open`) [default: the provider's node, --node].
        #[arg(long, requires = "gasless")]
        relay: Option<String>,
    },
    /// Add to a channel's deposit (this also cancels a pending exit).
    Topup {
        /// The channel id (0x and 64 hex digits).
        #[arg(value_parser = parse_channel_id)]
        channel: B256,
        /// How much to add.
        #[arg(value_parser = parse_amount)]
        amount: U256,
    },
    /// List the channels in the state directory: deposit, spent, remaining, status.
    Channels {
        /// Re-read each channel that is not closed from the chain first (needs the RPC, not
        /// the key).
        #[arg(long)]
        refresh: bool,
    },
    /// GET a URL, paying if it asks for payment: the body on stdout, the payment on stderr.
    Get(GetArgs),
    /// Send any request, curl-like (-X, -H, -d), paying if asked.
    Request(RequestArgs),
    /// Close a channel cooperatively through its node: the refund comes at once.
    Close {
        /// The channel id.
        #[arg(value_parser = parse_channel_id)]
        channel: B256,
        /// Base URL of the node [default: the one the channel was opened for].
        #[arg(long)]
        node: Option<String>,
    },
    /// Start a unilateral exit (when the provider does not cooperate); `withdraw` after the
    /// challenge period.
    Exit {
        /// The channel id.
        #[arg(value_parser = parse_channel_id)]
        channel: B256,
    },
    /// Withdraw the unspent deposit after an exit's challenge period.
    Withdraw {
        /// The channel id.
        #[arg(value_parser = parse_channel_id)]
        channel: B256,
    },
    /// Print the effective configuration (file, environment and flags merged) and exit.
    Config,
}

/// `x402 get`.
#[derive(Debug, Args)]
pub(crate) struct GetArgs {
    /// The URL.
    pub(crate) url: String,
    /// A request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    /// Fail (exit code 1, no body printed) when the server answers with an HTTP error status
    /// (400 and above), like curl -f.
    #[arg(short, long)]
    pub(crate) fail: bool,
}

/// `x402 request`.
#[derive(Debug, Args)]
pub(crate) struct RequestArgs {
    #[command(flatten)]
    pub(crate) get: GetArgs,
    /// The method [default: POST with --data, else GET].
    #[arg(short = 'X', long = "request", value_name = "METHOD", value_parser = parse_method)]
    pub(crate) method: Option<Method>,
    /// The request body, sent as is; `@FILE` reads it from a file, `@-` from stdin.
    #[arg(short, long, value_name = "DATA")]
    pub(crate) data: Option<String>,
}

/// Parses a token amount: a whole number of base units (`_` may separate digit groups).
pub(crate) fn parse_amount(s: &str) -> Result<U256, String> {
    const HINT: &str = "amounts are whole numbers of the token's base units, e.g. 1000000 for 1.0 of a \
                        6-decimals token";
    let digits: String = s.chars().filter(|c| *c != '_').collect();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || s.starts_with('_') {
        return Err(format!("not an amount: {HINT}"));
    }
    U256::from_str_radix(&digits, 10).map_err(|_| "amount too large (above 2^256 - 1)".to_owned())
}

/// Parses a channel id: `0x` and 64 hex digits.
pub(crate) fn parse_channel_id(s: &str) -> Result<B256, String> {
    let hex = s.strip_prefix("0x").unwrap_or(s);
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("a channel id is 0x followed by 64 hex digits (see `x402 channels`)".into());
    }
    s.parse().map_err(|_| "not a channel id".into())
}

/// Parses `Name: value`.
pub(crate) fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = s.split_once(':').ok_or("a header is `Name: value`")?;
    let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| "invalid header name")?;
    let value = HeaderValue::from_str(value.trim()).map_err(|_| "invalid header value")?;
    Ok((name, value))
}

fn parse_method(s: &str) -> Result<Method, String> {
    Method::from_bytes(s.to_ascii_uppercase().as_bytes()).map_err(|_| "invalid HTTP method".into())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn amounts() {
        let ok = |s: &str| parse_amount(s).map(|v| v.to_string());
        for (input, want) in [
            ("0", "0"),
            ("1000000", "1000000"),
            ("1_000_000", "1000000"),
            ("007", "7"),
            (
                "115792089237316195423570985008687907853269984665640564039457584007913129639935",
                "115792089237316195423570985008687907853269984665640564039457584007913129639935",
            ),
        ] {
            assert_eq!(ok(input).as_deref(), Ok(want), "{input}");
        }
        for bad in [
            "",
            "_",
            "_1",
            "1.5",
            "-5",
            "+5",
            "0x10",
            "1e6",
            "12abc",
            " 1",
            "115792089237316195423570985008687907853269984665640564039457584007913129639936",
        ] {
            assert!(parse_amount(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_amount("1.5").unwrap_err().contains("base units"));
    }

    #[test]
    fn channel_ids_and_headers() {
        let id = format!("0x{}", "ab".repeat(32));
        assert_eq!(parse_channel_id(&id).unwrap(), B256::repeat_byte(0xab));
        for bad in ["", "0x", "0x1234", &format!("0x{}", "zz".repeat(32)), &format!("0x{}", "ab".repeat(33))]
        {
            assert!(parse_channel_id(bad).is_err(), "{bad:?}");
        }
        let (name, value) = parse_header("X-Test:  a b ").unwrap();
        assert_eq!((name.as_str(), value.to_str().unwrap()), ("x-test", "a b"));
        assert_eq!(parse_header("Accept:").unwrap().1, "");
        for bad in ["no colon", ": value", "bad name: v", "x: a\nb"] {
            assert!(parse_header(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_method("post").unwrap(), Method::POST);
    }

    #[test]
    fn globals_parse_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "x402",
            "get",
            "http://x/weather",
            "-H",
            "A: 1",
            "--max-price",
            "5",
            "--json",
            "-vv",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.verbose, 2);
        assert_eq!(cli.settings.max_price, Some(U256::from(5)));
        let Command::Get(get) = cli.command else { panic!("get") };
        assert_eq!(get.headers.len(), 1);
    }
}

/// `--gasless KIND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum GaslessArg {
    /// EIP-3009 when the token has it, else EIP-2612.
    Auto,
    /// EIP-2612 permit plus an open authorisation.
    Permit,
    /// EIP-3009 `receiveWithAuthorization`.
    Transfer,
}

impl From<GaslessArg> for x402_client::GaslessKind {
    fn from(arg: GaslessArg) -> Self {
        match arg {
            GaslessArg::Auto => Self::Auto,
            GaslessArg::Permit => Self::Permit,
            GaslessArg::Transfer => Self::Transfer,
        }
    }
}
