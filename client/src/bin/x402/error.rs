//! What can go wrong, and the exit code and machine-readable code of each.

use x402_client::Error;

/// A failed command.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// From the client library.
    #[error(transparent)]
    Client(#[from] Error),
    /// Bad arguments, keys or configuration (clap's own usage errors exit before this).
    #[error("{0}")]
    Usage(String),
    /// The RPC endpoint could not be reached or did not answer as an Ethereum node.
    #[error("{0}")]
    RpcUnreachable(String),
    /// The payer's account has no ETH (or too little) for a transaction's gas.
    #[error("the payer {payer} has not enough ETH to pay for gas ({reason})")]
    NoGas {
        /// The account that sends the transaction.
        payer: alloy::primitives::Address,
        /// The endpoint's message.
        reason: String,
    },
    /// No channel of the state has the id prefix given.
    #[error("{0}")]
    NoSuchChannel(String),
    /// `--fail` and the server answered with an HTTP error status.
    #[error("the server answered {0}")]
    HttpStatus(reqwest::StatusCode),
    /// Anything else (local I/O).
    #[error("{0}")]
    Other(String),
}

/// The exit codes (documented in `args::AFTER_HELP` and the README).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum ExitKind {
    /// Anything not below.
    Other = 1,
    /// Bad arguments, keys, amounts, channel ids or configuration.
    Usage = 2,
    /// A limit (or the deposit policy) refused the payment or deposit.
    Limit = 3,
    /// The payer's balance or allowance does not cover it.
    Funds = 4,
    /// The channel is unknown or its state does not allow the operation.
    Channel = 5,
    /// The node or the RPC endpoint cannot be reached.
    Unreachable = 6,
    /// The RPC endpoint is on another chain.
    WrongNetwork = 7,
    /// The node refused (or offers nothing payable, or claims more than was signed).
    Refused = 8,
}

impl CliError {
    /// The exit code's class.
    pub(crate) fn kind(&self) -> ExitKind {
        match self {
            Self::Usage(_) => ExitKind::Usage,
            Self::RpcUnreachable(_) => ExitKind::Unreachable,
            Self::NoGas { .. } => ExitKind::Funds,
            Self::NoSuchChannel(_) => ExitKind::Channel,
            Self::HttpStatus(_) | Self::Other(_) => ExitKind::Other,
            Self::Client(e) => match e {
                Error::PriceAboveLimit { .. }
                | Error::DepositAboveLimit { .. }
                | Error::TotalDepositAboveLimit { .. }
                | Error::ChannelExhausted { .. }
                | Error::NoChannel { .. } => ExitKind::Limit,
                Error::InsufficientBalance { .. } | Error::InsufficientAllowance { .. } => ExitKind::Funds,
                Error::UnknownChannel(_) | Error::ChannelState { .. } | Error::NotPayer { .. } => {
                    ExitKind::Channel
                }
                Error::Unreachable { .. } | Error::StateLocked { .. } => ExitKind::Unreachable,
                Error::ZeroAmount(_) | Error::OtherPayer { .. } => ExitKind::Usage,
                Error::WrongNetwork { .. } => ExitKind::WrongNetwork,
                Error::Refused { .. }
                | Error::TooManyAttempts { .. }
                | Error::CloseRefused { .. }
                | Error::RelayRefused { .. }
                | Error::NoAcceptableRequirements(_)
                | Error::NodeClaimsUnsigned { .. }
                | Error::UnsignedState { .. }
                | Error::ContractNotAllowed { .. } => ExitKind::Refused,
                Error::Config(_) => ExitKind::Usage,
                _ => ExitKind::Other,
            },
        }
    }

    /// The process exit code.
    pub(crate) fn exit_code(&self) -> u8 {
        self.kind() as u8
    }

    /// A stable snake_case code for `--json` error documents.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::Usage(_) => "usage",
            Self::RpcUnreachable(_) => "rpc_unreachable",
            Self::NoGas { .. } => "insufficient_gas",
            Self::NoSuchChannel(_) => "unknown_channel",
            Self::HttpStatus(_) => "http_status",
            Self::Other(_) => "other",
            Self::Client(e) => match e {
                Error::PriceAboveLimit { .. } => "price_above_limit",
                Error::DepositAboveLimit { .. } => "deposit_above_limit",
                Error::TotalDepositAboveLimit { .. } => "total_deposit_above_limit",
                Error::ChannelExhausted { .. } => "channel_exhausted",
                Error::NoChannel { .. } => "no_channel",
                Error::ZeroAmount(_) => "zero_amount",
                Error::NotPayer { .. } => "not_payer",
                Error::OtherPayer { .. } => "other_payer",
                Error::StateLocked { .. } => "state_locked",
                Error::InsufficientBalance { .. } => "insufficient_balance",
                Error::InsufficientAllowance { .. } => "insufficient_allowance",
                Error::UnknownChannel(_) => "unknown_channel",
                Error::ChannelState { .. } => "channel_state",
                Error::Unreachable { .. } => "unreachable",
                Error::WrongNetwork { .. } => "wrong_network",
                Error::Refused { .. } => "payment_refused",
                Error::TooManyAttempts { .. } => "too_many_attempts",
                Error::CloseRefused { .. } => "close_refused",
                Error::RelayRefused { .. } => "relay_refused",
                Error::NoAcceptableRequirements(_) => "no_acceptable_requirements",
                Error::NodeClaimsUnsigned { .. } => "node_claims_unsigned",
                Error::UnsignedState { .. } => "unsigned_state",
                Error::ContractNotAllowed { .. } => "contract_not_allowed",
                Error::Config(_) => "config",
                Error::Chain(_) => "chain",
                Error::Reverted(_) => "reverted",
                Error::Http(_) => "http",
                Error::Store(_) => "state_store",
                Error::Corrupt { .. } => "corrupt_state",
                Error::Malformed(_) => "malformed_response",
                _ => "other",
            },
        }
    }

    /// A hint shown under the message, when there is an obvious next step.
    pub(crate) fn hint(&self) -> Option<String> {
        self.static_hint().map(str::to_owned).or_else(|| match self {
            Self::NoGas { payer, .. } => Some(format!(
                "send ETH to {payer} for gas, or open without gas: x402 open URL --gasless (the provider's node \
                 submits it)"
            )),
            Self::Client(Error::ChannelExhausted { channel, .. }) => Some(format!(
                "top it up (x402 topup {channel} AMOUNT), or allow automatic top-ups (--auto-top-up true)"
            )),
            _ => None,
        })
    }

    fn static_hint(&self) -> Option<&'static str> {
        match self {
            Self::Client(Error::NoChannel { .. }) => {
                Some("open one with `x402 open URL`, or allow automatic opens (--auto-open true)")
            }
            Self::Client(Error::OtherPayer { .. }) => {
                Some("each payer needs its own state directory: pass --state-dir (or X402_STATE_DIR)")
            }
            Self::Client(Error::StateLocked { .. }) => {
                Some("wait for the other x402 process to finish, or use another --state-dir")
            }
            Self::Client(Error::NotPayer { .. }) => Some("use the key of the channel's payer"),
            Self::Client(Error::ChannelState { status, .. }) if status.starts_with("already closed") => {
                Some("nothing to withdraw: `x402 channels --refresh` shows it closed")
            }
            Self::Client(Error::PriceAboveLimit { .. }) => {
                Some("raise --max-price (limits.max_price) to pay it")
            }
            Self::Client(Error::DepositAboveLimit { .. } | Error::TotalDepositAboveLimit { .. }) => {
                Some("raise --max-deposit / --max-total-deposit, or ask for a smaller deposit")
            }
            Self::Client(Error::UnknownChannel(_)) | Self::NoSuchChannel(_) => {
                Some("`x402 channels` lists the channels of this state directory (--state-dir)")
            }
            Self::Client(Error::Store(_)) => Some("is another x402 process using the same --state-dir?"),
            Self::RpcUnreachable(_) => {
                Some("check --rpc-url / X402_RPC_URL / ETH_RPC_URL: it must be a chain's JSON-RPC endpoint")
            }
            _ => None,
        }
    }
}

impl CliError {
    /// Names the payer and the way out when a transaction failed for want of ETH for gas
    /// (the endpoint's `insufficient funds for gas * price + value`).
    pub(crate) fn with_payer(self, payer: alloy::primitives::Address) -> Self {
        match self {
            Self::Client(Error::Chain(message)) if message.to_lowercase().contains("insufficient funds") => {
                let lower = message.to_lowercase();
                let at = lower.find("insufficient funds").unwrap_or(0);
                let reason =
                    message.get(at..).unwrap_or(&message).split(['\n', ';']).next().unwrap_or("").to_owned();
                Self::NoGas { payer, reason: reason.trim().to_owned() }
            }
            other => other,
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        Self::Other(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use alloy::primitives::{Address, B256, U256};
    use x402_protocol::wire::ErrorCode;

    use super::*;

    #[test]
    fn every_error_has_its_exit_code() {
        let n = U256::from(1);
        let id = B256::ZERO;
        let a = Address::ZERO;
        let cases: Vec<(CliError, u8, &str)> = vec![
            (CliError::Usage("x".into()), 2, "usage"),
            (CliError::RpcUnreachable("x".into()), 6, "rpc_unreachable"),
            (CliError::HttpStatus(reqwest::StatusCode::NOT_FOUND), 1, "http_status"),
            (CliError::Other("x".into()), 1, "other"),
            (Error::PriceAboveLimit { price: n, limit: n }.into(), 3, "price_above_limit"),
            (Error::DepositAboveLimit { deposit: n, limit: n }.into(), 3, "deposit_above_limit"),
            (
                Error::TotalDepositAboveLimit { asset: a, total: n, limit: n }.into(),
                3,
                "total_deposit_above_limit",
            ),
            (Error::ChannelExhausted { channel: id, needed: n, deposit: n }.into(), 3, "channel_exhausted"),
            (
                Error::InsufficientBalance { token: a, balance: n, needed: n }.into(),
                4,
                "insufficient_balance",
            ),
            (
                Error::InsufficientAllowance { token: a, spender: a, allowance: n, needed: n }.into(),
                4,
                "insufficient_allowance",
            ),
            (Error::UnknownChannel(id).into(), 5, "unknown_channel"),
            (Error::ChannelState { channel: id, status: "open", what: "x" }.into(), 5, "channel_state"),
            (Error::WrongNetwork { rpc: 99, wanted: 31337 }.into(), 7, "wrong_network"),
            (
                Error::Refused { code: ErrorCode::InvalidSignature, message: None }.into(),
                8,
                "payment_refused",
            ),
            (
                Error::TooManyAttempts { attempts: 3, last: ErrorCode::NonceTooLow }.into(),
                8,
                "too_many_attempts",
            ),
            (Error::CloseRefused { status: 409, message: "x".into() }.into(), 8, "close_refused"),
            (
                Error::RelayRefused {
                    status: 403,
                    code: Some("channel_mismatch".into()),
                    message: "x".into(),
                }
                .into(),
                8,
                "relay_refused",
            ),
            (Error::NoAcceptableRequirements("x".into()).into(), 8, "no_acceptable_requirements"),
            (
                Error::NodeClaimsUnsigned {
                    channel: id,
                    node_nonce: 2,
                    node_amount: n,
                    signed_nonce: 1,
                    signed_amount: n,
                }
                .into(),
                8,
                "node_claims_unsigned",
            ),
            (Error::Config("x".into()).into(), 2, "config"),
            (Error::Chain("x".into()).into(), 1, "chain"),
            (Error::Reverted(id).into(), 1, "reverted"),
            (Error::Malformed("x".into()).into(), 1, "malformed_response"),
            (Error::Corrupt { key: "k".into(), reason: "r".into() }.into(), 1, "corrupt_state"),
            (Error::RequestNotCloneable.into(), 1, "other"),
            (CliError::NoGas { payer: a, reason: "x".into() }, 4, "insufficient_gas"),
            (Error::NoChannel { payee: a, asset: a }.into(), 3, "no_channel"),
            (Error::ZeroAmount("a top-up").into(), 2, "zero_amount"),
            (Error::NotPayer { channel: id, payer: a, key: a }.into(), 5, "not_payer"),
            (Error::OtherPayer { state: a, key: a }.into(), 2, "other_payer"),
            (Error::StateLocked { dir: "d".into(), waited_secs: 5 }.into(), 6, "state_locked"),
        ];
        for (err, code, name) in cases {
            assert_eq!((err.exit_code(), err.code()), (code, name), "{err}");
        }
    }

    #[test]
    fn no_gas_names_the_payer_and_the_gasless_way() {
        let payer = Address::repeat_byte(0x11);
        let raw = Error::Chain(
            "server returned an error response: error code -32003: Insufficient funds for gas * price + value".into(),
        );
        let err = CliError::from(raw).with_payer(payer);
        assert_eq!(err.exit_code(), 4);
        assert!(err.to_string().contains(&payer.to_string()), "{err}");
        assert!(!err.to_string().contains("-32003"), "{err}");
        assert!(err.hint().unwrap().contains("--gasless"));
        let other = CliError::from(Error::Chain("nonce too low".into())).with_payer(payer);
        assert_eq!(other.exit_code(), 1);
    }

    #[test]
    fn the_help_documents_every_exit_code() {
        let help = crate::args::AFTER_HELP;
        for kind in [
            ExitKind::Other,
            ExitKind::Usage,
            ExitKind::Limit,
            ExitKind::Funds,
            ExitKind::Channel,
            ExitKind::Unreachable,
            ExitKind::WrongNetwork,
            ExitKind::Refused,
        ] {
            assert!(help.contains(&format!("\n  {}  ", kind as u8)), "exit code {kind:?} undocumented");
        }
    }
}
