//! Reading channels from the chain: the reader lives in `x402-chain` (shared with the watcher).

pub use x402_chain::{
    ChainError,
    reader::{ChainReader, RpcChain, params_of},
};

/// A provider of the JSON-RPC endpoint at `url` whose calls fail after `timeout`. Without a
/// timeout a call to an endpoint that accepts the connection but never answers waits forever,
/// and with it whatever made the call: the follower, a settlement round, a payment's lookup.
pub fn http_provider(
    url: reqwest::Url,
    timeout: std::time::Duration,
) -> Result<alloy::providers::DynProvider, ChainError> {
    x402_chain::rpc::http_provider(url.as_str(), timeout)
}
