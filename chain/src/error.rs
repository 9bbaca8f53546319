//! The crate's one error type.

use alloy::transports::TransportError;

/// Errors talking to the chain or keeping what was sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// A JSON-RPC call failed (transport, timeout, or an error answer).
    #[error("rpc {call}: {source}")]
    Rpc {
        /// The call that failed, e.g. `eth_getLogs`.
        call: &'static str,
        /// Why.
        #[source]
        source: TransportError,
    },
    /// A contract call failed (revert or RPC error).
    #[error("contract call {call}: {source}")]
    Contract {
        /// The function called.
        call: &'static str,
        /// Why (boxed: the contract error is large).
        #[source]
        source: Box<alloy::contract::Error>,
    },
    /// The chain answered something that cannot be true of a well-behaved node (a block or a
    /// log missing that must exist), or a test double refused.
    #[error("chain: {0}")]
    Inconsistent(String),
    /// The chain cannot be reached, for a reason without a source (a test double, an injected
    /// fault).
    #[error("chain unavailable: {0}")]
    Unavailable(String),
    /// Building the HTTP client of the RPC failed.
    #[error("cannot build the RPC client: {0}")]
    Client(#[source] reqwest::Error),
    /// The RPC URL does not parse.
    #[error("invalid RPC URL {url:?}: {source}")]
    Url {
        /// The URL given.
        url: String,
        /// Why it does not parse.
        #[source]
        source: url::ParseError,
    },
    /// Signing a transaction failed.
    #[error("cannot sign the transaction: {0}")]
    Sign(#[source] alloy::signers::Error),
    /// Building a transaction failed (a field is missing).
    #[error("cannot build the transaction: {0}")]
    Build(String),
    /// The store of transactions in flight or of the follower's cursor failed.
    #[error("store: {0}")]
    Store(#[from] x402_store::Error),
    /// A stored record does not decode.
    #[error("corrupt {what} in the store: {source}")]
    Corrupt {
        /// What was read.
        what: &'static str,
        /// Why it does not decode.
        #[source]
        source: serde_json::Error,
    },
    /// A test stopped the sender here, as a crash would (`test-utils` only).
    #[error("injected crash at {0:?}")]
    InjectedCrash(crate::sender::CrashPoint),
}

/// `Result` with [`ChainError`].
pub type Result<T, E = ChainError> = std::result::Result<T, E>;

/// Wraps a failed JSON-RPC call `call`.
pub fn rpc(call: &'static str) -> impl FnOnce(TransportError) -> ChainError {
    move |source| ChainError::Rpc { call, source }
}

/// Wraps a failed contract call `call`.
pub fn contract(call: &'static str) -> impl FnOnce(alloy::contract::Error) -> ChainError {
    move |source| ChainError::Contract { call, source: Box::new(source) }
}
