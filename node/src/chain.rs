//! Reading channels from the chain.

use std::future::Future;

use alloy::{
    primitives::{Address, B256, Bytes},
    providers::{DynProvider, Provider},
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
    /// The channel's on-chain facts, or `None` if it never existed.
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
}

impl RpcChain {
    /// Reads the `PaymentChannel` at `contract` through `provider`.
    pub const fn new(provider: DynProvider, contract: Address) -> Self {
        Self { provider, contract }
    }
}

alloy::sol! {
    #[sol(rpc)]
    interface IERC1271 {
        function isValidSignature(bytes32 hash, bytes signature) external view returns (bytes4);
    }
}

impl ChainReader for RpcChain {
    async fn channel(&self, id: B256) -> Result<Option<OnchainChannel>, ChainError> {
        let contract = IPaymentChannel::new(self.contract, &self.provider);
        let ch = contract.getChannel(id).call().await.map_err(|e| ChainError::Rpc(e.to_string()))?;
        if ch.status == IPaymentChannel::Status::None {
            return Ok(None);
        }
        let signer = if ch.signer.is_zero() { ch.payer } else { ch.signer };
        let code = self.provider.get_code_at(signer).await.map_err(|e| ChainError::Rpc(e.to_string()))?;
        Ok(Some(OnchainChannel {
            payer: ch.payer,
            payee: ch.payee,
            token: ch.token,
            signer,
            signer_is_contract: !code.is_empty(),
            deposit: alloy::primitives::U256::from(ch.deposit),
            challenge_period: u64::from(ch.challengePeriod),
            exit_at: ch.exitAt.to::<u64>(),
            open: ch.status == IPaymentChannel::Status::Open,
            nonce: ch.nonce,
            paid: alloy::primitives::U256::from(ch.paid),
        }))
    }

    async fn is_valid_contract_signature(
        &self,
        signer: Address,
        digest: B256,
        signature: Bytes,
    ) -> Result<bool, ChainError> {
        // Mirrors OpenZeppelin's SignatureChecker: a reverting call or a malformed answer is
        // simply "not valid".
        let wallet = IERC1271::new(signer, &self.provider);
        Ok(
            matches!(wallet.isValidSignature(digest, signature).call().await, Ok(magic) if magic.0 == [0x16, 0x26, 0xba, 0x7e]),
        )
    }
}
