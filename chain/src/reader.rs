//! Reading channels from the chain: the [`ChainReader`] trait and [`RpcChain`], its JSON-RPC
//! implementation.

use std::{
    future::Future,
    sync::{Arc, OnceLock},
};

use alloy::{
    eips::{BlockId, BlockNumberOrTag},
    network::TransactionBuilder,
    primitives::{Address, B256, Bytes},
    providers::{DynProvider, Provider},
    rpc::types::{Filter, TransactionRequest},
    sol_types::{SolCall, SolEvent},
    transports::RpcError,
};
use dashmap::DashMap;
use x402_protocol::bindings::IPaymentChannel::{self, ChannelParams};

use crate::{
    channel::OnchainChannel,
    verify::{SignerCode, erc1271_accepts, erc1271_call_gas},
};

pub use crate::error::ChainError;
use crate::error::{contract as contract_call, rpc};

/// What the node needs from the chain on the request path.
pub trait ChainReader: Send + Sync + 'static {
    /// The channel's on-chain facts as the node may rely on them (see
    /// [`OnchainChannel::confirmed_view`]), or `None` if it does not exist in a confirmed block.
    fn channel(&self, id: B256) -> impl Future<Output = Result<Option<OnchainChannel>, ChainError>> + Send;

    /// Takes the parameters of channel `id` learnt elsewhere (a `ChannelOpened` log the
    /// follower saw, a watcher's push), keeping them only if they hash to `id`; returns whether
    /// they do. Parameters never change, so a reader may cache them for good.
    fn learn_params(
        &self,
        id: B256,
        params: ChannelParams,
    ) -> impl Future<Output = Result<bool, ChainError>> + Send;

    /// ERC-1271, as the contract asks it: whether `signer` has code and its
    /// `isValidSignature(digest, signature)`, given the contract's gas stipend, answers the
    /// magic value.
    fn is_valid_contract_signature(
        &self,
        signer: Address,
        digest: B256,
        signature: Bytes,
    ) -> impl Future<Output = Result<bool, ChainError>> + Send;
}

/// A [`ChainReader`] over an alloy provider.
///
/// A channel's parameters are not stored on-chain: they come from its `ChannelOpened` log
/// (`eth_getLogs` filtered by the indexed channel id, from [`RpcChain::with_log_start`]),
/// are checked against the id, and are cached for good (they can never change). Its state comes
/// from `getChannel`.
#[derive(Clone, Debug)]
pub struct RpcChain {
    provider: DynProvider,
    contract: Address,
    confirmations: u64,
    log_start: u64,
    chain_id: Arc<OnceLock<u64>>,
    params: Arc<DashMap<B256, ChannelParams>>,
}

impl RpcChain {
    /// Reads the `PaymentChannel` at `contract` through `provider`, relying on blocks as soon as
    /// they are mined.
    pub fn new(provider: DynProvider, contract: Address) -> Self {
        Self {
            provider,
            contract,
            confirmations: 0,
            log_start: 0,
            chain_id: Arc::default(),
            params: Arc::default(),
        }
    }

    /// Relies on what increases a channel's spendable balance only once it is `confirmations`
    /// blocks deep.
    pub const fn with_confirmations(mut self, confirmations: u64) -> Self {
        self.confirmations = confirmations;
        self
    }

    /// Looks for `ChannelOpened` logs from block `block` on (default 0): the contract's
    /// deployment block spares the RPC a scan of the chain before it.
    pub const fn with_log_start(mut self, block: u64) -> Self {
        self.log_start = block;
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

    async fn chain_id(&self) -> Result<u64, ChainError> {
        if let Some(id) = self.chain_id.get() {
            return Ok(*id);
        }
        let id = self.provider.get_chain_id().await.map_err(rpc("eth_chainId"))?;
        Ok(*self.chain_id.get_or_init(|| id))
    }

    /// The parameters of channel `id`, from its `ChannelOpened` log (cached), or `None` if no
    /// log of the contract opened it.
    pub async fn params(&self, id: B256) -> Result<Option<ChannelParams>, ChainError> {
        if let Some(params) = self.params.get(&id) {
            return Ok(Some(params.clone()));
        }
        let filter = Filter::new()
            .address(self.contract)
            .event_signature(IPaymentChannel::ChannelOpened::SIGNATURE_HASH)
            .topic1(id)
            .from_block(self.log_start)
            .to_block(BlockNumberOrTag::Latest);
        let logs = self.provider.get_logs(&filter).await.map_err(rpc("eth_getLogs"))?;
        let chain_id = self.chain_id().await?;
        for log in logs {
            let Ok(opened) = log.log_decode::<IPaymentChannel::ChannelOpened>() else { continue };
            let params = params_of(&opened.inner.data);
            // Only what hashes to the id is believed: a log cannot make up parameters.
            if log.address() == self.contract && params.channel_id(chain_id, self.contract) == id {
                self.params.insert(id, params.clone());
                return Ok(Some(params));
            }
        }
        Ok(None)
    }

    /// The channel as stored in `block`, or `None` if it does not exist there.
    pub async fn channel_at(&self, id: B256, block: BlockId) -> Result<Option<OnchainChannel>, ChainError> {
        let contract = IPaymentChannel::new(self.contract, &self.provider);
        let state = contract.getChannel(id).block(block).call().await.map_err(contract_call("getChannel"))?;
        if state.status == IPaymentChannel::Status::None {
            return Ok(None);
        }
        let params = self.params(id).await?.ok_or_else(|| {
            ChainError::Inconsistent(format!("channel {id} exists but its ChannelOpened log was not found"))
        })?;
        let code = self
            .provider
            .get_code_at(params.voucher_signer())
            .block_id(block)
            .await
            .map_err(rpc("eth_getCode"))?;
        Ok(OnchainChannel::new(params, &state, SignerCode::of(&code) == SignerCode::Contract))
    }
}

/// The parameters a `ChannelOpened` event announces.
pub fn params_of(event: &IPaymentChannel::ChannelOpened) -> ChannelParams {
    ChannelParams {
        payer: event.payer,
        payee: event.payee,
        token: event.token,
        signer: event.signer,
        challengePeriod: event.challengePeriod,
        salt: event.salt,
    }
}

alloy::sol! {
    interface IERC1271 {
        function isValidSignature(bytes32 hash, bytes signature) external view returns (bytes4);
    }
}

impl ChainReader for RpcChain {
    async fn learn_params(&self, id: B256, params: ChannelParams) -> Result<bool, ChainError> {
        if params.channel_id(self.chain_id().await?, self.contract) != id {
            return Ok(false);
        }
        self.params.insert(id, params);
        Ok(true)
    }

    async fn channel(&self, id: B256) -> Result<Option<OnchainChannel>, ChainError> {
        if self.confirmations == 0 {
            return self.channel_at(id, BlockId::latest()).await;
        }
        // Both reads at one head, so that they are consistent with each other.
        let head = self.provider.get_block_number().await.map_err(rpc("eth_blockNumber"))?;
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
        // The contract asks ERC-1271 only if the signer has code (a 7702-delegated EOA has).
        let code = self.provider.get_code_at(signer).await.map_err(rpc("eth_getCode"))?;
        if code.is_empty() {
            return Ok(false);
        }
        let input = IERC1271::isValidSignatureCall { hash: digest, signature }.abi_encode();
        // The wallet gets exactly the contract's stipend: the call's gas minus what the
        // transaction itself costs.
        let gas = erc1271_call_gas(&input);
        let tx = TransactionRequest::default().with_to(signer).with_input(input).with_gas_limit(gas);
        match self.provider.call(tx).await {
            Ok(output) => Ok(erc1271_accepts(&output)),
            // A reverting, failing or gas-exhausting wallet says "not valid", as on-chain. An
            // answer that never came is not: the chain is unavailable and the check can be
            // retried.
            Err(RpcError::ErrorResp(e)) if is_execution_error(e.code, &e.message) => Ok(false),
            Err(e) => Err(rpc("eth_call")(e)),
        }
    }
}

fn is_execution_error(code: i64, message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    code == 3
        || ["revert", "out of gas", "outofgas", "gas", "invalid opcode", "stack"]
            .iter()
            .any(|m| message.contains(m))
}
