//! The command line: the subcommands, each with the settings it uses (each with an `X402_…`
//! environment fallback), so that its `--help` lists only those.
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
  X402_PRIVATE_KEY        the payer's hex private key; or --key-file, --keystore, --account NAME
  X402_KEYSTORE_PASSWORD  the password of --keystore / --account; or --password-file (ETH_PASSWORD);
                          asked for on a terminal
  X402_SESSION_KEY        a hex session key that signs vouchers; or --session-key-file
Foundry's ETH_RPC_URL, ETH_KEYSTORE and ETH_PASSWORD are used when the X402_ ones are not set.

Amounts are base units (1000000 is 1.0 of a 6-decimals token); a deposit or top-up may also be
given in tokens with decimals (0.05) when the token is known. Channel ids may be shortened to a
unique prefix.

Exit codes:
  0  success
  1  other error (a transaction failed, an HTTP or state store error, an HTTP error status with --fail)
  2  usage: bad arguments, a malformed amount, key, channel id or config file, no key, another payer's state
  3  a limit refused it: price, deposit or total deposit above the limit; channel exhausted; no channel
  4  insufficient funds: token balance or allowance, or ETH for gas
  5  unknown channel, or the channel's state does not allow it (e.g. withdraw before the period)
  6  the node or the RPC endpoint cannot be reached, or the state directory is busy
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

    /// TOML configuration file (see the README) [default: none, built-in defaults].
    #[arg(long, env = "X402_CONFIG", global = true)]
    pub(crate) config: Option<PathBuf>,

    /// Directory of the channel state [config: state_dir; default $HOME/.x402].
    #[arg(long, env = "X402_STATE_DIR", global = true)]
    pub(crate) state_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The chain connection (`-r`).
#[derive(Clone, Debug, Default, Args)]
pub(crate) struct RpcArgs {
    /// Chain JSON-RPC URL, http(s) [env X402_RPC_URL, else ETH_RPC_URL; config: rpc_url;
    /// default http://127.0.0.1:8545].
    #[arg(short = 'r', long, env = "X402_RPC_URL", help_heading = "Chain")]
    pub(crate) rpc_url: Option<String>,
}

/// How transactions are sent and awaited.
#[derive(Clone, Debug, Default, Args)]
pub(crate) struct TxArgs {
    /// Blocks to wait for per transaction [config: confirmations; default 1].
    #[arg(long, env = "X402_CONFIRMATIONS", help_heading = "Chain")]
    pub(crate) confirmations: Option<u64>,
    /// The most to wait for one transaction's confirmations, seconds [config: timeout;
    /// default 120].
    #[arg(long, env = "X402_TIMEOUT", value_name = "SECONDS", help_heading = "Chain")]
    pub(crate) timeout: Option<u64>,
    /// Approve the channel contract for deposits when the allowance is short [config:
    /// auto_approve; default true].
    #[arg(long, env = "X402_AUTO_APPROVE", help_heading = "Chain")]
    pub(crate) auto_approve: Option<bool>,
}

/// The spending limits.
#[derive(Clone, Debug, Default, Args)]
pub(crate) struct LimitArgs {
    /// The most one request may cost, in base units [config: limits.max_price; default 10000].
    #[arg(long, env = "X402_MAX_PRICE", value_parser = parse_amount, value_name = "AMOUNT", help_heading = "Limits")]
    pub(crate) max_price: Option<U256>,
    /// The most one channel may hold, in base units [config: limits.max_deposit; default
    /// 1000000].
    #[arg(long, env = "X402_MAX_DEPOSIT", value_parser = parse_amount, value_name = "AMOUNT", help_heading = "Limits")]
    pub(crate) max_deposit: Option<U256>,
    /// The most all channels in one token may hold, in base units [config:
    /// limits.max_total_deposit; default 5000000].
    #[arg(long, env = "X402_MAX_TOTAL_DEPOSIT", value_parser = parse_amount, value_name = "AMOUNT", help_heading = "Limits")]
    pub(crate) max_total_deposit: Option<U256>,
}

/// How new channels are sized.
#[derive(Clone, Debug, Default, Args)]
pub(crate) struct NewChannelArgs {
    /// Size new channels for this many requests [config: deposit.requests; default 100].
    #[arg(long, env = "X402_DEPOSIT_REQUESTS", help_heading = "New channels")]
    pub(crate) deposit_requests: Option<u64>,
    /// Challenge period of new channels, seconds; raised to the provider's minimum if below it
    /// (the tool says so) [config: deposit.challenge_period; default: the provider's minimum].
    #[arg(long, env = "X402_CHALLENGE_PERIOD", value_name = "SECONDS", help_heading = "New channels")]
    pub(crate) challenge_period: Option<u32>,
}

/// How `get` / `request` choose, open and top up channels.
#[derive(Clone, Debug, Default, Args)]
pub(crate) struct PayArgs {
    /// Pay from this channel (an id or a unique prefix of one) [default: the usable channel
    /// with the provider that has the most remaining].
    #[arg(long, value_name = "ID", help_heading = "Paying")]
    pub(crate) channel: Option<String>,
    /// Open a channel when none with the provider is usable [config: deposit.auto_open;
    /// default true].
    #[arg(long, env = "X402_AUTO_OPEN", help_heading = "Paying")]
    pub(crate) auto_open: Option<bool>,
    /// Top up an exhausted channel instead of failing [config: deposit.auto_top_up; default
    /// true].
    #[arg(long, env = "X402_AUTO_TOP_UP", help_heading = "Paying")]
    pub(crate) auto_top_up: Option<bool>,
    /// Credit window: one voucher pays ahead for up to this many requests (as far as the
    /// provider allows) and the rest present the session token the node grants, with no
    /// signature; what is prepaid is at risk until used [config: credit_window; default 1,
    /// off].
    #[arg(long, env = "X402_CREDIT_WINDOW", value_name = "REQUESTS", help_heading = "Paying")]
    pub(crate) credit_window: Option<u32>,
}

/// Every setting, merged from whichever groups a subcommand has (what `Config` applies).
#[derive(Clone, Debug, Default)]
pub(crate) struct SettingArgs {
    pub(crate) config: Option<PathBuf>,
    pub(crate) state_dir: Option<PathBuf>,
    pub(crate) rpc: RpcArgs,
    pub(crate) tx: TxArgs,
    pub(crate) limits: LimitArgs,
    pub(crate) new_channel: NewChannelArgs,
    pub(crate) pay: PayArgs,
}

/// Where the keys come from (files; the keys themselves only from the environment).
#[derive(Clone, Debug, Default, Args)]
pub(crate) struct KeyArgs {
    /// File holding the payer's hex private key (instead of X402_PRIVATE_KEY).
    #[arg(long, env = "X402_KEY_FILE", help_heading = "Keys")]
    pub(crate) key_file: Option<PathBuf>,
    /// Encrypted JSON keystore of the payer's key [env X402_KEYSTORE, else ETH_KEYSTORE]
    /// (password: X402_KEYSTORE_PASSWORD, --password-file, or asked on a terminal).
    #[arg(long, env = "X402_KEYSTORE", help_heading = "Keys")]
    pub(crate) keystore: Option<PathBuf>,
    /// A Foundry keystore by name: ~/.foundry/keystores/NAME (`cast wallet import NAME`).
    #[arg(long, value_name = "NAME", help_heading = "Keys")]
    pub(crate) account: Option<String>,
    /// File holding the keystore's password [env X402_KEYSTORE_PASSWORD_FILE, else
    /// ETH_PASSWORD].
    #[arg(long, env = "X402_KEYSTORE_PASSWORD_FILE", help_heading = "Keys")]
    pub(crate) password_file: Option<PathBuf>,
    /// File holding a hex session key that signs vouchers instead of the payer's key (or
    /// X402_SESSION_KEY; default: none, the payer's key signs).
    #[arg(long, env = "X402_SESSION_KEY_FILE", help_heading = "Keys")]
    pub(crate) session_key_file: Option<PathBuf>,
}

/// What a command that sends transactions needs.
#[derive(Clone, Debug, Default, Args)]
pub(crate) struct TxCommand {
    #[command(flatten)]
    pub(crate) rpc: RpcArgs,
    #[command(flatten)]
    pub(crate) tx: TxArgs,
    #[command(flatten)]
    pub(crate) keys: KeyArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Open a channel with the provider serving URL (learns its terms from a 402), without
    /// paying for a request.
    Open {
        /// A paid URL of the provider, e.g. http://127.0.0.1:8402/weather.
        url: String,
        /// The deposit: base units, or with the token's decimals (`0.05`) [default: sized by
        /// the deposit policy: --deposit-requests times the price, at least the provider's
        /// minimum, at most --max-deposit].
        #[arg(long, value_parser = parse_amount_text, value_name = "AMOUNT")]
        deposit: Option<AmountText>,
        /// Base URL of the provider's node, for cooperative closes [default: URL's origin].
        #[arg(long)]
        node: Option<String>,
        /// Open without paying gas: sign an EIP-2612 permit (`--gasless=permit`) or an EIP-3009
        /// authorisation (`--gasless=transfer`; `--gasless` alone picks it when the token has
        /// it) and let a relayer submit it [default: a normal open, paying gas].
        #[arg(long, value_name = "KIND", num_args = 0..=1, require_equals = true, default_missing_value = "auto")]
        gasless: Option<GaslessArg>,
        /// The relayer of a gasless open: the base URL of a node that relays opens
        /// (`POST /x402/open`) [default: the provider's node, --node].
        #[arg(long, requires = "gasless")]
        relay: Option<String>,
        #[command(flatten)]
        common: TxCommand,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        new_channel: NewChannelArgs,
    },
    /// Add to a channel's deposit (this also cancels a pending exit).
    Topup {
        /// The channel: its id, or a unique prefix of it (`x402 channels` lists them).
        channel: String,
        /// How much to add: base units, or with the token's decimals (`0.05`).
        #[arg(value_parser = parse_amount_text)]
        amount: AmountText,
        #[command(flatten)]
        common: TxCommand,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// List the channels in the state directory: deposit, signed, charged, remaining, payee,
    /// node, status. No key needed.
    Channels {
        /// Re-read each channel that is not closed from the chain first (needs the RPC, not
        /// the key).
        #[arg(long)]
        refresh: bool,
        #[command(flatten)]
        rpc: RpcArgs,
    },
    /// GET a URL, paying if it asks for payment: the body on stdout, the payment on stderr.
    Get(GetArgs),
    /// Send any request, curl-like (-X, -H, -d), paying if asked.
    Request(RequestArgs),
    /// Show what a URL costs and on which terms, without paying (no key needed).
    Quote {
        /// The URL.
        url: String,
        #[command(flatten)]
        rpc: RpcArgs,
    },
    /// Show the payer's token balance, its allowance to the channel contract, and its ETH for
    /// gas.
    Balance {
        /// A paid URL: its token and channel contract are the ones shown [default: --token and
        /// --contract].
        url: Option<String>,
        /// The token.
        #[arg(long, required_unless_present = "url")]
        token: Option<alloy::primitives::Address>,
        /// The channel contract (the allowance's spender).
        #[arg(long, required_unless_present = "url")]
        contract: Option<alloy::primitives::Address>,
        #[command(flatten)]
        rpc: RpcArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Close a channel cooperatively through its node: the refund comes at once.
    Close {
        /// The channel: its id, or a unique prefix of it.
        channel: String,
        /// Base URL of the node [default: the one the channel was opened for].
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        common: TxCommand,
    },
    /// Start a unilateral exit (when the provider does not cooperate); `withdraw` after the
    /// challenge period.
    Exit {
        /// The channel: its id, or a unique prefix of it.
        channel: String,
        #[command(flatten)]
        common: TxCommand,
    },
    /// Withdraw the unspent deposit after an exit's challenge period.
    Withdraw {
        /// The channel: its id, or a unique prefix of it.
        channel: String,
        #[command(flatten)]
        common: TxCommand,
    },
    /// Print the effective configuration (file, environment and flags merged) and exit.
    Config {
        #[command(flatten)]
        rpc: RpcArgs,
        #[command(flatten)]
        tx: TxArgs,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        new_channel: NewChannelArgs,
        #[command(flatten)]
        pay: PayArgs,
    },
}

impl Cli {
    /// The settings this command was given, for [`crate::config::Config::resolve`].
    pub(crate) fn settings(&self) -> SettingArgs {
        let mut s = SettingArgs {
            config: self.config.clone(),
            state_dir: self.state_dir.clone(),
            ..SettingArgs::default()
        };
        let take = |s: &mut SettingArgs, c: &TxCommand| {
            s.rpc = c.rpc.clone();
            s.tx = c.tx.clone();
        };
        match &self.command {
            Command::Open { common, limits, new_channel, .. } => {
                take(&mut s, common);
                s.limits = limits.clone();
                s.new_channel = new_channel.clone();
            }
            Command::Topup { common, limits, .. } => {
                take(&mut s, common);
                s.limits = limits.clone();
            }
            Command::Get(get) | Command::Request(RequestArgs { get, .. }) => {
                take(&mut s, &get.common);
                s.limits = get.limits.clone();
                s.new_channel = get.new_channel.clone();
                s.pay = get.pay.clone();
            }
            Command::Close { common, .. }
            | Command::Exit { common, .. }
            | Command::Withdraw { common, .. } => {
                take(&mut s, common);
            }
            Command::Channels { rpc, .. } | Command::Quote { rpc, .. } | Command::Balance { rpc, .. } => {
                s.rpc = rpc.clone();
            }
            Command::Config { rpc, tx, limits, new_channel, pay } => {
                s.rpc = rpc.clone();
                s.tx = tx.clone();
                s.limits = limits.clone();
                s.new_channel = new_channel.clone();
                s.pay = pay.clone();
            }
        }
        s
    }
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
    #[command(flatten)]
    pub(crate) pay: PayArgs,
    #[command(flatten)]
    pub(crate) common: TxCommand,
    #[command(flatten)]
    pub(crate) limits: LimitArgs,
    #[command(flatten)]
    pub(crate) new_channel: NewChannelArgs,
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

/// An amount as given: whole base units, or a decimal number of tokens to scale by the
/// token's decimals once the token is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AmountText {
    /// Base units.
    Units(U256),
    /// `whole.fraction` tokens.
    Decimal { whole: String, fraction: String },
}

impl AmountText {
    /// The amount in base units of a token with `decimals`.
    pub(crate) fn resolve(&self, decimals: Option<u8>) -> Result<U256, String> {
        match self {
            Self::Units(v) => Ok(*v),
            Self::Decimal { whole, fraction } => {
                let Some(decimals) = decimals else {
                    return Err("this token's decimals are unknown: give the amount in base units".into());
                };
                let fraction = fraction.trim_end_matches('0');
                if fraction.len() > usize::from(decimals) {
                    return Err(format!(
                        "the token has {decimals} decimals: {whole}.{fraction} has more digits than that"
                    ));
                }
                let digits = format!("{whole}{fraction:0<width$}", width = usize::from(decimals));
                U256::from_str_radix(&digits, 10).map_err(|_| "amount too large".to_owned())
            }
        }
    }
}

/// Parses an amount: whole base units (see [`parse_amount`]) or a decimal number of tokens
/// (`0.05`).
pub(crate) fn parse_amount_text(s: &str) -> Result<AmountText, String> {
    if let Some((whole, fraction)) = s.split_once('.') {
        let whole = if whole.is_empty() { "0" } else { whole };
        if !whole.bytes().all(|b| b.is_ascii_digit())
            || fraction.is_empty()
            || !fraction.bytes().all(|b| b.is_ascii_digit())
        {
            return Err("not an amount: base units (1000000) or tokens with decimals (0.05)".into());
        }
        return Ok(AmountText::Decimal { whole: whole.to_owned(), fraction: fraction.to_owned() });
    }
    parse_amount(s).map(AmountText::Units)
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

/// Finds the channel `text` names among `ids`: its full id, or a unique prefix of it (at
/// least 4 hex digits, `0x` optional).
pub(crate) fn find_channel(text: &str, ids: &[B256]) -> Result<B256, ChannelRef> {
    let hex = text.strip_prefix("0x").unwrap_or(text).to_ascii_lowercase();
    if hex.is_empty() || hex.len() > 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ChannelRef::Malformed);
    }
    if hex.len() == 64 {
        let id: B256 = format!("0x{hex}").parse().map_err(|_| ChannelRef::Malformed)?;
        return if ids.contains(&id) { Ok(id) } else { Err(ChannelRef::Unknown(Some(id))) };
    }
    if hex.len() < 4 {
        return Err(ChannelRef::TooShort);
    }
    let matches: Vec<B256> =
        ids.iter().copied().filter(|id| alloy::hex::encode(id).starts_with(&hex)).collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => Err(ChannelRef::Unknown(None)),
        many => Err(ChannelRef::Ambiguous(many.to_vec())),
    }
}

/// Why [`find_channel`] found none.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ChannelRef {
    /// Not hex, or too long.
    Malformed,
    /// Under 4 hex digits.
    TooShort,
    /// No channel has it (the full id, when one was given).
    Unknown(Option<B256>),
    /// Several channels start with it.
    Ambiguous(Vec<B256>),
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
    fn channel_ids_headers_and_decimal_amounts() {
        let a = B256::repeat_byte(0xab);
        let b = B256::left_padding_from(&[0xab, 0xcd]);
        let c = B256::repeat_byte(0xac);
        let ids = [a, c];
        assert_eq!(find_channel(&a.to_string(), &ids), Ok(a));
        assert_eq!(find_channel("0xabab", &ids), Ok(a));
        assert_eq!(find_channel("ACAC", &ids), Ok(c));
        assert_eq!(find_channel("0xab", &ids), Err(ChannelRef::TooShort));
        assert_eq!(find_channel(&b.to_string(), &ids), Err(ChannelRef::Unknown(Some(b))));
        assert_eq!(find_channel("0xffff", &ids), Err(ChannelRef::Unknown(None)));
        assert_eq!(find_channel("0xzz12", &ids), Err(ChannelRef::Malformed));
        let half = B256::from_slice(&[[0xab; 16], [0; 16]].concat());
        assert!(matches!(find_channel("abab", &[a, half]), Err(ChannelRef::Ambiguous(v)) if v.len() == 2));

        let amount =
            |s: &str, d: Option<u8>| parse_amount_text(s).and_then(|a| a.resolve(d)).map(|v| v.to_string());
        assert_eq!(amount("0.05", Some(6)).as_deref(), Ok("50000"));
        assert_eq!(amount("1.5", Some(6)).as_deref(), Ok("1500000"));
        assert_eq!(amount(".5", Some(2)).as_deref(), Ok("50"));
        assert_eq!(amount("2.10", Some(1)).as_deref(), Ok("21"));
        assert_eq!(amount("50000", None).as_deref(), Ok("50000"));
        assert!(amount("0.0000001", Some(6)).unwrap_err().contains("6 decimals"));
        assert!(amount("0.5", None).unwrap_err().contains("base units"));
        for bad in ["1.", "1.2.3", "-0.5", "0x1.0", "1,5"] {
            assert!(parse_amount_text(bad).is_err(), "{bad:?}");
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
    fn globals_parse_after_the_subcommand_and_help_is_per_subcommand() {
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
            "-r",
            "http://rpc:1",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.verbose, 2);
        let settings = cli.settings();
        assert_eq!(settings.limits.max_price, Some(U256::from(5)));
        assert_eq!(settings.rpc.rpc_url.as_deref(), Some("http://rpc:1"));
        let Command::Get(get) = cli.command else { panic!("get") };
        assert_eq!(get.headers.len(), 1);

        let help = |sub: &str| {
            let mut cmd = Cli::command();
            cmd.find_subcommand_mut(sub).unwrap().render_long_help().to_string()
        };
        let channels = help("channels");
        for absent in ["--max-price", "--auto-top-up", "--keystore", "--credit-window", "--confirmations"] {
            assert!(!channels.contains(absent), "`channels --help` lists {absent}:\n{channels}");
        }
        assert!(channels.contains("--rpc-url"));
        let exit = help("exit");
        assert!(!exit.contains("--max-price") && exit.contains("--keystore") && exit.contains("--timeout"));
        let get = help("get");
        assert!(get.contains("--channel") && get.contains("--auto-open") && get.contains("--max-price"));
        // `open --gasless URL` is the URL, not the kind.
        let open = Cli::try_parse_from(["x402", "open", "--gasless", "http://x/y"]).unwrap();
        let Command::Open { url, gasless, .. } = open.command else { panic!("open") };
        assert_eq!((url.as_str(), gasless), ("http://x/y", Some(GaslessArg::Auto)));
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
