//! The JSON-RPC client.

use std::time::Duration;

use alloy::providers::{DynProvider, Provider, ProviderBuilder};

use crate::error::{ChainError, Result};

/// How long one RPC call may take by default before it fails (and is retried by its caller).
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// A provider of the JSON-RPC endpoint at `url` whose calls fail after `timeout`. Without a
/// timeout a call to an endpoint that accepts the connection but never answers waits forever,
/// and with it whatever made the call: the follower, a settlement, a payment's lookup.
///
/// The provider signs nothing: transactions go through a [`TxSender`](crate::TxSender).
pub fn http_provider(url: &str, timeout: Duration) -> Result<DynProvider> {
    let parsed = url.parse().map_err(|source| ChainError::Url { url: url.to_owned(), source })?;
    let client = reqwest::Client::builder().timeout(timeout).build().map_err(ChainError::Client)?;
    Ok(ProviderBuilder::new().connect_reqwest(client, parsed).erased())
}
