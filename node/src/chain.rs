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

alloy::sol! {
    /// EIP-5267 and the plain getters, for a token's EIP-712 domain.
    interface ITokenDomain {
        function eip712Domain() external view returns (bytes1 fields, string name, string version, uint256 chainId, address verifyingContract, bytes32 salt, uint256[] extensions);
        function name() external view returns (string);
        function version() external view returns (string);
    }
}

/// The EIP-712 domain name and version of `token`: EIP-5267 `eip712Domain()` (when its
/// `fields` say it has both), else `name()` and `version()`; `None` for the native token or
/// when neither answers.
pub async fn token_domain(
    provider: &alloy::providers::DynProvider,
    token: alloy::primitives::Address,
) -> Option<x402_protocol::wire::DomainInfo> {
    use alloy::{
        network::TransactionBuilder, primitives::Bytes, providers::Provider, rpc::types::TransactionRequest,
        sol_types::SolCall,
    };
    if token.is_zero() {
        return None;
    }
    let call = |data: Vec<u8>| {
        let tx = TransactionRequest::default().with_to(token).with_input(Bytes::from(data));
        async move { provider.call(tx).await.ok() }
    };
    if let Some(out) = call(ITokenDomain::eip712DomainCall {}.abi_encode()).await
        && let Ok(d) = ITokenDomain::eip712DomainCall::abi_decode_returns(&out)
        // Bit 0: name, bit 1: version.
        && d.fields.0[0] & 0b11 == 0b11
    {
        return Some(x402_protocol::wire::DomainInfo { name: d.name, version: d.version });
    }
    let name = call(ITokenDomain::nameCall {}.abi_encode()).await?;
    let version = call(ITokenDomain::versionCall {}.abi_encode()).await?;
    Some(x402_protocol::wire::DomainInfo {
        name: ITokenDomain::nameCall::abi_decode_returns(&name).ok()?,
        version: ITokenDomain::versionCall::abi_decode_returns(&version).ok()?,
    })
}
