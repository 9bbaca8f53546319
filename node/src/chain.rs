//! Reading channels from the chain.

use std::future::Future;

use alloy::{
    eips::BlockId,
    primitives::{Address, B256, Bytes, U256},
    providers::{DynProvider, Provider, ProviderBuilder},
};
use x402_protocol::bindings::IPaymentChannel;

use crate::channel::OnchainChannel;

/// Errors reading the chain.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The RPC call failed.
    #[error("rpc: {0}")]
    Rpc(String),
}

/// What the node needs from the chain on the request path.
pub trait ChainReader: Send + Sync + 'static {
    /// The channel's on-chain facts as the node may rely on them (see
    /// [`OnchainChannel::confirmed_view`]), or `None` if it does not exist in a confirmed block.
    fn channel(&self, id: B256) -> impl Future<Output = Result<Option<OnchainChannel>, ChainError>> + Send;

    /// EIP-1271: whether the contract `signer` accepts `signature` over `digest`.
    fn is_valid_contract_signature(
        &self,
        signer: Address,
        digest: B256,
        signature: Bytes,
    ) -> impl Future<Output = Result<bool, ChainError>> + Send;
}

/// A [`ChainReader`] over an alloy provider.
#[derive(Clone, Debug)]
pub struct RpcChain {
    provider: DynProvider,
    contract: Address,
    confirmations: u64,
}

impl RpcChain {
    /// Reads the `PaymentChannel` at `contract` through `provider`, relying on blocks as soon as
    /// they are mined.
    pub const fn new(provider: DynProvider, contract: Address) -> Self {
        Self { provider, contract, confirmations: 0 }
    }

    /// Relies on what increases a channel's spendable balance only once it is `confirmations`
    /// blocks deep.
    pub const fn with_confirmations(mut self, confirmations: u64) -> Self {
        self.confirmations = confirmations;
        self
    }

    /// The confirmation depth.
    pub const fn confirmations(&self) -> u64 {
        self.confirmations
    }

    /// The provider.
    pub const fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// The contract.
    pub const fn contract(&self) -> Address {
        self.contract
    }

    /// The channel as stored in `block`, or `None` if it does not exist there.
    pub async fn channel_at(&self, id: B256, block: BlockId) -> Result<Option<OnchainChannel>, ChainError> {
        let contract = IPaymentChannel::new(self.contract, &self.provider);
        let ch = contract.getChannel(id).block(block).call().await.map_err(rpc)?;
        if ch.status == IPaymentChannel::Status::None {
            return Ok(None);
        }
        let signer = if ch.signer.is_zero() { ch.payer } else { ch.signer };
        let code = self.provider.get_code_at(signer).block_id(block).await.map_err(rpc)?;
        Ok(Some(OnchainChannel {
            payer: ch.payer,
            payee: ch.payee,
            token: ch.token,
            signer,
            signer_is_contract: !code.is_empty(),
            deposit: U256::from(ch.deposit),
            challenge_period: u64::from(ch.challengePeriod),
            exit_at: ch.exitAt.to::<u64>(),
            open: ch.status == IPaymentChannel::Status::Open,
            nonce: ch.nonce,
            paid: U256::from(ch.paid),
            pending_close: false,
        }))
    }
}

fn rpc(e: impl std::fmt::Display) -> ChainError {
    ChainError::Rpc(e.to_string())
}

/// A provider of the JSON-RPC endpoint at `url` whose calls fail after `timeout`. Without a
/// timeout a call to an endpoint that accepts the connection but never answers waits forever,
/// and with it whatever made the call: the follower, a settlement round, a payment's lookup.
pub fn http_provider(url: reqwest::Url, timeout: std::time::Duration) -> Result<DynProvider, ChainError> {
    let client = reqwest::Client::builder().timeout(timeout).build().map_err(rpc)?;
    Ok(ProviderBuilder::new().connect_reqwest(client, url).erased())
}

alloy::sol! {
    #[sol(rpc)]
    interface IERC1271 {
        function isValidSignature(bytes32 hash, bytes signature) external view returns (bytes4);
    }
}

impl ChainReader for RpcChain {
    async fn channel(&self, id: B256) -> Result<Option<OnchainChannel>, ChainError> {
        if self.confirmations == 0 {
            return self.channel_at(id, BlockId::latest()).await;
        }
        // Both reads at one head, so that they are consistent with each other.
        let head = self.provider.get_block_number().await.map_err(rpc)?;
        let latest = self.channel_at(id, BlockId::number(head)).await?;
        let confirmed = self.channel_at(id, BlockId::number(head.saturating_sub(self.confirmations))).await?;
        Ok(match (confirmed, latest) {
            (Some(confirmed), Some(latest)) => Some(OnchainChannel::confirmed_view(confirmed, &latest)),
            // Opened in a block not yet confirmed, or undone by a reorg.
            _ => None,
        })
    }

    async fn is_valid_contract_signature(
        &self,
        signer: Address,
        digest: B256,
        signature: Bytes,
    ) -> Result<bool, ChainError> {
        // Mirrors OpenZeppelin's SignatureChecker: a reverting call or a malformed answer is
        // simply "not valid". A call that did not get an answer is not: the chain is
        // unavailable, and the payment can be retried.
        use alloy::{contract::Error, transports::RpcError};
        let wallet = IERC1271::new(signer, &self.provider);
        match wallet.isValidSignature(digest, signature).call().await {
            Ok(magic) => Ok(magic.0 == [0x16, 0x26, 0xba, 0x7e]),
            Err(Error::TransportError(RpcError::ErrorResp(e)))
                if e.code == 3 || e.message.contains("revert") =>
            {
                Ok(false)
            }
            Err(Error::AbiError(_) | Error::ZeroData(..)) => Ok(false),
            Err(e) => Err(rpc(e)),
        }
    }
}
