//! anvil, deployments and funding: the chain side of a devnet, as functions of a provider so
//! that harnesses with their own account conventions can use them too.

use std::path::{Path, PathBuf};

use alloy::{
    network::{EthereumWallet, TransactionBuilder},
    node_bindings::{Anvil, AnvilInstance},
    primitives::{Address, B256, Bytes, U256},
    providers::{DynProvider, PendingTransactionBuilder, Provider, ProviderBuilder},
    rpc::types::{TransactionReceipt, TransactionRequest},
    signers::local::PrivateKeySigner,
    sol,
};
use x402_protocol::bindings::IPaymentChannel;

use crate::{Error, Result};

sol! {
    /// The test stablecoin (`contracts/src/TestStablecoin.sol`), as far as the devnet uses it.
    #[sol(rpc)]
    interface ITestStablecoin {
        function mint(address to, uint256 amount) external;
        function approve(address spender, uint256 amount) external returns (bool);
        function transfer(address to, uint256 amount) external returns (bool);
        function balanceOf(address who) external view returns (uint256);
    }
}

/// Where anvil is by default: the project's npm-installed Foundry (`scripts/setup`).
pub fn default_anvil_path() -> PathBuf {
    crate::workspace_root().join("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
}

/// Starts anvil from `path` (default [`default_anvil_path`]) on `port` (default: a free one),
/// mining every transaction as it arrives. Killed when the instance is dropped.
///
/// This blocks until anvil listens (a fraction of a second); from async code, prefer
/// [`crate::Devnet::builder`], which runs it on the blocking pool.
pub fn spawn_anvil(path: Option<&Path>, port: Option<u16>) -> Result<AnvilInstance> {
    let path = path.map_or_else(default_anvil_path, Path::to_path_buf);
    if !path.is_file() {
        return Err(Error::AnvilMissing(path));
    }
    let mut anvil = Anvil::new().path(path);
    if let Some(port) = port {
        anvil = anvil.port(port);
    }
    Ok(anvil.try_spawn()?)
}

/// anvil's funded account `i` (0 to 9) as a signer. These are anvil's well-known test keys.
///
/// # Panics
///
/// If anvil has no account `i`.
pub fn account(anvil: &AnvilInstance, i: usize) -> PrivateKeySigner {
    anvil.keys()[i].clone().into()
}

/// A provider of `anvil`'s RPC that signs with `signer`.
pub fn provider(anvil: &AnvilInstance, signer: PrivateKeySigner) -> DynProvider {
    ProviderBuilder::new().wallet(EthereumWallet::from(signer)).connect_http(anvil.endpoint_url()).erased()
}

/// Waits for a sent transaction and checks that it succeeded.
pub async fn confirm(
    what: &str,
    pending: PendingTransactionBuilder<alloy::network::Ethereum>,
) -> Result<TransactionReceipt> {
    let hash = *pending.tx_hash();
    let receipt = pending.get_receipt().await.map_err(|e| Error::chain(what, e))?;
    if !receipt.status() {
        return Err(Error::Reverted { what: what.into(), hash });
    }
    Ok(receipt)
}

/// Deploys `code` with the ABI-encoded constructor arguments `args`; returns the address.
pub async fn deploy(chain: &DynProvider, mut code: Vec<u8>, args: &[u8]) -> Result<Address> {
    code.extend_from_slice(args);
    let tx = TransactionRequest::default().with_deploy_code(Bytes::from(code));
    let pending = chain.send_transaction(tx).await.map_err(|e| Error::chain("deploy", e))?;
    let receipt = confirm("deploy", pending).await?;
    receipt.contract_address.ok_or_else(|| Error::chain("deploy", "no contract created"))
}

/// Sends a contract call and waits for its successful receipt.
pub async fn send<P: Provider, D: alloy::contract::CallDecoder>(
    what: &str,
    call: alloy::contract::CallBuilder<P, D>,
) -> Result<TransactionReceipt> {
    let pending = call.send().await.map_err(|e| Error::chain(what, e))?;
    confirm(what, pending).await
}

/// Mints `amount` of the test stablecoin `token` to `to` (anyone may mint it), sent by
/// `chain`'s signer.
pub async fn mint(chain: &DynProvider, token: Address, to: Address, amount: U256) -> Result<()> {
    send("mint", ITestStablecoin::new(token, chain).mint(to, amount)).await.map(drop)
}

/// Approves `spender` for `amount` of `token`, as `chain`'s signer.
pub async fn approve(chain: &DynProvider, token: Address, spender: Address, amount: U256) -> Result<()> {
    send("approve", ITestStablecoin::new(token, chain).approve(spender, amount)).await.map(drop)
}

/// Sends `wei` of the native token to `to`, from `chain`'s signer.
pub async fn send_eth(chain: &DynProvider, to: Address, wei: U256) -> Result<()> {
    let tx = TransactionRequest::default().with_to(to).with_value(wei);
    let pending = chain.send_transaction(tx).await.map_err(|e| Error::chain("send ETH", e))?;
    confirm("send ETH", pending).await.map(drop)
}

/// The `token` balance of `who`.
pub async fn token_balance(chain: &DynProvider, token: Address, who: Address) -> Result<U256> {
    ITestStablecoin::new(token, chain).balanceOf(who).call().await.map_err(|e| Error::chain("balanceOf", e))
}

/// The on-chain state of channel `id` of `contract`.
pub async fn channel(chain: &DynProvider, contract: Address, id: B256) -> Result<IPaymentChannel::Channel> {
    IPaymentChannel::new(contract, chain)
        .getChannel(id)
        .call()
        .await
        .map_err(|e| Error::chain("getChannel", e))
}
