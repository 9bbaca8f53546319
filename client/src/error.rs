//! The client's errors.

use alloy::primitives::{Address, B256, U256};
use x402_protocol::wire::ErrorCode;

/// Why a payment, a channel operation or a request failed.
///
/// Every variant that concerns money says which limit or which balance was involved, so that a
/// user (or an agent) can act on it without reading logs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A route asks more per request than [`Limits::max_price`](crate::Limits::max_price).
    #[error("price {price} per request is above the limit of {limit}")]
    PriceAboveLimit {
        /// What the route asks.
        price: U256,
        /// The limit.
        limit: U256,
    },
    /// A deposit (a new channel, or a channel after a top-up) would exceed
    /// [`Limits::max_deposit`](crate::Limits::max_deposit).
    #[error("a deposit of {deposit} would exceed the per-channel limit of {limit}")]
    DepositAboveLimit {
        /// The channel's deposit after the operation.
        deposit: U256,
        /// The limit.
        limit: U256,
    },
    /// The deposits of all open channels in one token would exceed
    /// [`Limits::max_total_deposit`](crate::Limits::max_total_deposit).
    #[error("total deposits of {total} in token {asset} would exceed the limit of {limit}")]
    TotalDepositAboveLimit {
        /// The token.
        asset: Address,
        /// The total after the operation.
        total: U256,
        /// The limit.
        limit: U256,
    },
    /// The payer's token balance does not cover a deposit.
    #[error("insufficient balance of token {token}: {balance} available, {needed} needed")]
    InsufficientBalance {
        /// The token (`0x0` for the native token).
        token: Address,
        /// The payer's balance.
        balance: U256,
        /// What the operation needs.
        needed: U256,
    },
    /// The payer's allowance to the channel contract does not cover a deposit and automatic
    /// approval is off.
    #[error("insufficient allowance of token {token} to {spender}: {allowance} approved, {needed} needed")]
    InsufficientAllowance {
        /// The token.
        token: Address,
        /// The channel contract.
        spender: Address,
        /// The current allowance.
        allowance: U256,
        /// What the operation needs.
        needed: U256,
    },
    /// The channel's deposit does not cover the next payment and automatic top-up is off or
    /// not allowed by the limits.
    #[error("channel {channel} is exhausted: {needed} needed, deposit {deposit}")]
    ChannelExhausted {
        /// The channel.
        channel: B256,
        /// The cumulative amount the next voucher needs.
        needed: U256,
        /// The deposit.
        deposit: U256,
    },
    /// No usable channel with the provider, and automatic opens are off
    /// ([`DepositPolicy::auto_open`](crate::DepositPolicy::auto_open)).
    #[error("no open channel with provider {payee} in token {asset}, and automatic opens are off")]
    NoChannel {
        /// The provider.
        payee: Address,
        /// The token.
        asset: Address,
    },
    /// An amount (a deposit, a top-up) is zero.
    #[error("{0} of 0 is not possible: give an amount above 0")]
    ZeroAmount(&'static str),
    /// The key's account is not the channel's payer.
    #[error("channel {channel} belongs to payer {payer}, not to this key's account {key}")]
    NotPayer {
        /// The channel.
        channel: B256,
        /// Its payer.
        payer: Address,
        /// This client's depositor.
        key: Address,
    },
    /// The state directory holds another payer's channels.
    #[error("the state directory belongs to payer {state}, not to this key's account {key}")]
    OtherPayer {
        /// The payer recorded in the state.
        state: Address,
        /// This client's depositor.
        key: Address,
    },
    /// Another process holds the state directory.
    #[error("the state directory {dir} is in use by another process (waited {waited_secs} s for it)")]
    StateLocked {
        /// The directory.
        dir: String,
        /// How long the client waited.
        waited_secs: u64,
    },
    /// No channel with this id is known locally.
    #[error("unknown channel {0}")]
    UnknownChannel(B256),
    /// The channel cannot take this operation in its current state.
    #[error("channel {channel} is {status}: {what} is not possible")]
    ChannelState {
        /// The channel.
        channel: B256,
        /// Its status.
        status: &'static str,
        /// The refused operation.
        what: &'static str,
    },
    /// The channel state in a corrective 402 does not carry this client's signer's signature
    /// of the voucher it claims (`extra.channel.signature`): it is not trusted, and nothing
    /// changes.
    #[error(
        "the node's state of channel {channel} (nonce {nonce}, amount {amount}) is not signed by \
         this client's signer: refused"
    )]
    UnsignedState {
        /// The channel.
        channel: B256,
        /// The nonce the state claims.
        nonce: u64,
        /// The cumulative amount the state claims.
        amount: U256,
    },
    /// A 402 names a `PaymentChannel` contract outside the client's `allowed_contracts`.
    #[error("the 402 names contract {contract}, which is not in the client's allowed contracts")]
    ContractNotAllowed {
        /// The contract the 402 named.
        contract: Address,
    },
    /// The node claims a voucher the client never signed (a higher nonce or amount). The
    /// client refuses to go on with that channel.
    #[error(
        "node claims more than was signed on channel {channel}: nonce {node_nonce} / {node_amount}, \
         signed up to nonce {signed_nonce} / {signed_amount}"
    )]
    NodeClaimsUnsigned {
        /// The channel.
        channel: B256,
        /// The node's nonce.
        node_nonce: u64,
        /// The highest amount the node claims (charged or signed ceiling).
        node_amount: U256,
        /// The client's latest nonce.
        signed_nonce: u64,
        /// The highest cumulative amount the client ever signed.
        signed_amount: U256,
    },
    /// The server refused the payment for a reason retrying cannot fix.
    #[error("payment refused ({code}){}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Refused {
        /// The x402 error code.
        code: ErrorCode,
        /// The server's message.
        message: Option<String>,
    },
    /// The 402 offers no `channel` payment on the client's network and contract.
    #[error("no acceptable payment option: {0}")]
    NoAcceptableRequirements(String),
    /// The RPC endpoint is on another chain than the one a payment or channel is on.
    #[error("wrong network: the RPC endpoint is on chain {rpc}, the payment is on chain {wanted}")]
    WrongNetwork {
        /// The RPC endpoint's chain id.
        rpc: u64,
        /// The chain the payment or channel is on.
        wanted: u64,
    },
    /// The payment was still refused after the configured number of attempts.
    #[error("payment not accepted after {attempts} attempts (last: {last})")]
    TooManyAttempts {
        /// How many vouchers were tried.
        attempts: u32,
        /// The last refusal code.
        last: ErrorCode,
    },
    /// The 402 or `PAYMENT-RESPONSE` could not be parsed.
    #[error("malformed payment message from the server: {0}")]
    Malformed(String),
    /// The request's body is a stream and cannot be sent twice (once unpaid, once paid).
    #[error("the request cannot be retried with a payment (streaming body)")]
    RequestNotCloneable,
    /// The node (or another HTTP endpoint) could not be reached.
    #[error("cannot reach {url}: {}", transport_reason(source))]
    Unreachable {
        /// The URL.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// An HTTP error other than reaching the server.
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    /// A middleware error of the wrapped client stack.
    #[error(transparent)]
    Middleware(anyhow::Error),
    /// The node answered a close request with an error.
    #[error("the node refused the close request ({status}): {message}")]
    CloseRefused {
        /// The HTTP status.
        status: u16,
        /// The node's error message.
        message: String,
    },
    /// The relayer (the provider's node) refused to submit a gasless open.
    #[error("the relayer refused the gasless open ({status}{}): {message}", code.as_deref().map(|c| format!(", {c}")).unwrap_or_default())]
    RelayRefused {
        /// The HTTP status.
        status: u16,
        /// The x402 error code, if the answer had one.
        code: Option<String>,
        /// The relayer's message.
        message: String,
    },
    /// The client is not configured for this (no limits, no RPC, no node URL, ...).
    #[error("configuration: {0}")]
    Config(String),
    /// A chain call or transaction failed.
    #[error("chain: {0}")]
    Chain(String),
    /// A transaction was mined but reverted.
    #[error("transaction {0} reverted")]
    Reverted(B256),
    /// Signing failed.
    #[error("signing: {0}")]
    Signing(#[from] alloy::signers::Error),
    /// The local state store failed. Nothing was paid with a voucher that could not be stored.
    #[error("state store: {0}")]
    Store(#[from] x402_store::Error),
    /// A stored record could not be decoded.
    #[error("corrupt state record {key}: {reason}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// Protocol-level encoding or signing error.
    #[error(transparent)]
    Protocol(#[from] x402_protocol::Error),
}

impl Error {
    /// A chain error from anything displayable.
    pub(crate) fn chain(e: impl std::fmt::Display) -> Self {
        Self::Chain(e.to_string())
    }
}

/// Why a request did not get an answer, in words: refused, DNS, TLS or a timeout told apart
/// (reqwest's own message is `error sending request for url (…)` for all of them).
pub fn transport_reason(e: &reqwest::Error) -> String {
    let mut chain = Vec::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        chain.push(s.to_string());
        source = s.source();
    }
    let all = chain.join(": ").to_lowercase();
    let innermost = chain.last().cloned().unwrap_or_default();
    if e.is_timeout() || all.contains("timed out") {
        "no answer in time (timeout)".into()
    } else if all.contains("dns error")
        || all.contains("failed to lookup")
        || all.contains("name or service not known")
    {
        "the host name does not resolve (DNS); check the URL's host".into()
    } else if all.contains("connection refused") {
        "connection refused: nothing listens at that address and port".into()
    } else if all.contains("certificate")
        || all.contains("tls")
        || all.contains("handshake")
        || all.contains("invalidcontenttype")
    {
        format!(
            "TLS failed ({innermost}); is it an https URL for an http server, or an untrusted certificate?"
        )
    } else if all.contains("connection reset")
        || all.contains("connection closed")
        || all.contains("incomplete message")
    {
        format!("the connection was closed before an answer ({innermost})")
    } else {
        innermost
    }
}

/// Result with the client's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
