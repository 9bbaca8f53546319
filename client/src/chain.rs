//! The payer's on-chain side: open, top up, exit, withdraw, and close with the provider's
//! authorisation.
//!
//! Every transaction is checked before it is sent (network, balance, allowance) so that a
//! failure is a clear [`Error`], not a reverted transaction, and waits for the configured
//! confirmations. A [`TxObserver`] sees each transaction sent and confirmed (the CLI shows a
//! progress indicator with it).

use std::{fmt, sync::Arc, time::Duration};

use alloy::{
    network::{EthereumWallet, TransactionBuilder},
    primitives::{Address, B256, TxHash, U256},
    providers::{DynProvider, PendingTransactionBuilder, Provider, ProviderBuilder},
    rpc::types::{TransactionReceipt, TransactionRequest},
    signers::local::PrivateKeySigner,
    sol,
};
use async_trait::async_trait;
use x402_protocol::{
    bindings::IPaymentChannel::{self, ChannelParams, IPaymentChannelErrors},
    close::SignedCloseAuthorization,
    open::{GaslessOpen, IERC20Permit, IERC5267, TokenDomain},
};

use crate::{Error, Result};

sol! {
    /// The part of ERC-20 the client uses.
    #[sol(rpc)]
    interface IERC20 {
        function balanceOf(address owner) external view returns (uint256);
        function allowance(address owner, address spender) external view returns (uint256);
        function approve(address spender, uint256 value) external returns (bool);
    }

    /// EIP-3009's view of used authorisations (its presence tells that a token has EIP-3009).
    #[sol(rpc)]
    interface IERC3009State {
        function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
    }
}

/// How long one RPC call may take before it fails.
pub(crate) const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// A transaction's progress, as reported to a [`TxObserver`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxEvent {
    /// Sent; waiting for `confirmations` blocks.
    Sent {
        /// What the transaction does (`"open"`, `"approve"`, ...).
        what: &'static str,
        /// Its hash.
        hash: TxHash,
        /// How many confirmations are awaited.
        confirmations: u64,
    },
    /// Mined with enough confirmations.
    Confirmed {
        /// What the transaction does.
        what: &'static str,
        /// Its hash.
        hash: TxHash,
        /// The block it is in.
        block: u64,
    },
}

/// Sees every transaction the client sends.
pub type TxObserver = Arc<dyn Fn(TxEvent) + Send + Sync>;

/// What opening and topping up channels needs; [`ChainClient`] is the real one. Abstract so
/// that the payment logic can be tested without a chain.
#[async_trait]
pub trait Funding: Send + Sync + fmt::Debug + 'static {
    /// The chain id of the RPC endpoint.
    fn chain_id(&self) -> u64;

    /// The depositor.
    fn payer(&self) -> Address;

    /// Opens the channel `params` with `deposit`, returning its id and the deposit the
    /// contract credited.
    async fn open(&self, contract: Address, params: ChannelParams, deposit: U256) -> Result<(B256, U256)>;

    /// Adds `amount` to the deposit of the channel `params`, returning the new deposit.
    async fn top_up(&self, contract: Address, params: &ChannelParams, amount: U256) -> Result<U256>;
}

/// The payer's connection to the chain: a provider that signs as the depositor.
#[derive(Clone)]
pub struct ChainClient {
    provider: DynProvider,
    payer: Address,
    chain_id: u64,
    confirmations: u64,
    receipt_timeout: Duration,
    auto_approve: bool,
    observer: Option<TxObserver>,
}

impl fmt::Debug for ChainClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainClient")
            .field("payer", &self.payer)
            .field("chain_id", &self.chain_id)
            .field("confirmations", &self.confirmations)
            .finish_non_exhaustive()
    }
}

impl ChainClient {
    /// Connects to `rpc_url`, signing transactions with `payer`. Asks the endpoint for its chain
    /// id once.
    pub async fn connect(rpc_url: &str, payer: PrivateKeySigner) -> Result<Self> {
        let url = rpc_url.parse().map_err(|e| Error::Chain(format!("invalid RPC URL {rpc_url:?}: {e}")))?;
        let address = payer.address();
        // Every call times out, so a hung endpoint is an error, not a hang.
        let http = reqwest::Client::builder()
            .timeout(RPC_TIMEOUT)
            .build()
            .map_err(|e| Error::Config(format!("cannot build the RPC client: {e}")))?;
        let provider =
            ProviderBuilder::new().wallet(EthereumWallet::from(payer)).connect_reqwest(http, url).erased();
        let chain_id = provider
            .get_chain_id()
            .await
            .map_err(|e| Error::Chain(format!("cannot reach the RPC endpoint {rpc_url}: {e}")))?;
        Ok(Self::new(provider, address, chain_id))
    }

    /// Wraps a provider that signs as `payer`, on chain `chain_id`.
    pub fn new(provider: DynProvider, payer: Address, chain_id: u64) -> Self {
        Self {
            provider,
            payer,
            chain_id,
            confirmations: 1,
            receipt_timeout: Duration::from_secs(120),
            auto_approve: true,
            observer: None,
        }
    }

    /// Waits for `n` confirmations per transaction (default 1: mined).
    pub fn with_confirmations(mut self, n: u64) -> Self {
        self.confirmations = n.max(1);
        self
    }

    /// Whether to approve the channel contract for a deposit when the allowance is short
    /// (default on). Off, a short allowance is [`Error::InsufficientAllowance`].
    pub fn with_auto_approve(mut self, on: bool) -> Self {
        self.auto_approve = on;
        self
    }

    /// How long to wait for a transaction's receipt and confirmations (default 120 s).
    pub fn with_receipt_timeout(mut self, timeout: Duration) -> Self {
        self.receipt_timeout = timeout;
        self
    }

    /// Reports every transaction to `observer`.
    pub fn with_observer(mut self, observer: TxObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The provider.
    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// The depositor's address.
    pub fn payer(&self) -> Address {
        self.payer
    }

    /// The chain id.
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// Fails with [`Error::WrongNetwork`] unless the endpoint is on `chain_id`.
    pub fn ensure_chain(&self, chain_id: u64) -> Result<()> {
        if chain_id != self.chain_id {
            return Err(Error::WrongNetwork { rpc: self.chain_id, wanted: chain_id });
        }
        Ok(())
    }

    /// A channel's on-chain state.
    pub async fn channel(&self, contract: Address, id: B256) -> Result<IPaymentChannel::Channel> {
        IPaymentChannel::new(contract, &self.provider).getChannel(id).call().await.map_err(contract_error)
    }

    /// `owner`'s balance of `token` (`0x0`: the native token).
    pub async fn balance(&self, token: Address, owner: Address) -> Result<U256> {
        if token == Address::ZERO {
            return self.provider.get_balance(owner).await.map_err(Error::chain);
        }
        IERC20::new(token, &self.provider).balanceOf(owner).call().await.map_err(Error::chain)
    }

    /// The latest block's timestamp.
    pub async fn now(&self) -> Result<u64> {
        let block = self
            .provider
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await
            .map_err(Error::chain)?
            .ok_or_else(|| Error::Chain("no latest block".into()))?;
        Ok(block.header.timestamp)
    }

    /// The id of the channel `params` at `contract`.
    pub fn channel_id(&self, contract: Address, params: &ChannelParams) -> B256 {
        params.channel_id(self.chain_id, contract)
    }

    /// Makes sure the payer holds `amount` of `token` and, for an ERC-20, that the contract
    /// may pull it (approving it if allowed).
    async fn fund(&self, contract: Address, token: Address, amount: U256) -> Result<()> {
        let balance = self.balance(token, self.payer).await?;
        if balance < amount {
            return Err(Error::InsufficientBalance { token, balance, needed: amount });
        }
        if token == Address::ZERO {
            return Ok(());
        }
        let erc20 = IERC20::new(token, &self.provider);
        let allowance = erc20.allowance(self.payer, contract).call().await.map_err(Error::chain)?;
        if allowance >= amount {
            return Ok(());
        }
        if !self.auto_approve {
            return Err(Error::InsufficientAllowance { token, spender: contract, allowance, needed: amount });
        }
        let pending = erc20.approve(contract, amount).send().await.map_err(Error::chain)?;
        self.confirm("approve", pending).await?;
        Ok(())
    }

    /// Waits for a sent transaction, reporting it to the observer.
    async fn confirm(
        &self,
        what: &'static str,
        pending: PendingTransactionBuilder<alloy::network::Ethereum>,
    ) -> Result<TransactionReceipt> {
        let hash = *pending.tx_hash();
        tracing::info!(target: "x402_client::chain", what, %hash, "transaction sent");
        if let Some(observer) = &self.observer {
            observer(TxEvent::Sent { what, hash, confirmations: self.confirmations });
        }
        // alloy's own timeout covers the wait for the receipt, not for further confirmations
        // (on a chain that mines nothing more that wait would never end): bound both.
        let waiting = pending
            .with_required_confirmations(self.confirmations)
            .with_timeout(Some(self.receipt_timeout))
            .get_receipt();
        let receipt = tokio::time::timeout(self.receipt_timeout, waiting)
            .await
            .map_err(|_| {
                Error::Chain(format!(
                    "{what} transaction {hash}: not confirmed by {} blocks within {} s",
                    self.confirmations,
                    self.receipt_timeout.as_secs()
                ))
            })?
            .map_err(|e| Error::Chain(format!("{what} transaction {hash}: {e}")))?;
        if !receipt.status() {
            return Err(Error::Reverted(hash));
        }
        let block = receipt.block_number.unwrap_or_default();
        tracing::info!(target: "x402_client::chain", what, %hash, block, "transaction confirmed");
        if let Some(observer) = &self.observer {
            observer(TxEvent::Confirmed { what, hash, block });
        }
        Ok(receipt)
    }

    /// Opens the channel `params` with `deposit`; returns its id and the deposit credited.
    pub async fn open_channel(
        &self,
        contract: Address,
        params: ChannelParams,
        deposit: U256,
    ) -> Result<(B256, U256)> {
        self.fund(contract, params.token, deposit).await?;
        let id = self.channel_id(contract, &params);
        let value = if params.token == Address::ZERO { deposit } else { U256::ZERO };
        let pending = IPaymentChannel::new(contract, &self.provider)
            .open(params, deposit)
            .value(value)
            .send()
            .await
            .map_err(contract_error)?;
        self.confirm("open", pending).await?;
        let deposit = U256::from(self.channel(contract, id).await?.deposit);
        Ok((id, deposit))
    }

    /// Adds `amount` to a channel's deposit (cancelling a pending exit); returns the new
    /// deposit.
    pub async fn top_up_channel(
        &self,
        contract: Address,
        params: &ChannelParams,
        amount: U256,
    ) -> Result<U256> {
        let id = self.channel_id(contract, params);
        let ch = self.channel(contract, id).await?;
        if ch.status != IPaymentChannel::Status::Open {
            return Err(Error::ChannelState {
                channel: id,
                status: status_name(ch.status),
                what: "a top-up",
            });
        }
        self.fund(contract, params.token, amount).await?;
        let value = if params.token == Address::ZERO { amount } else { U256::ZERO };
        let pending = IPaymentChannel::new(contract, &self.provider)
            .topUp(params.clone(), amount)
            .value(value)
            .send()
            .await
            .map_err(contract_error)?;
        self.confirm("top-up", pending).await?;
        Ok(U256::from(self.channel(contract, id).await?.deposit))
    }

    /// Starts a unilateral exit; returns when the payer may withdraw (unix seconds).
    pub async fn request_exit(&self, contract: Address, params: &ChannelParams) -> Result<u64> {
        let id = self.channel_id(contract, params);
        let channels = IPaymentChannel::new(contract, &self.provider);
        let pending = channels.requestExit(params.clone()).send().await.map_err(contract_error)?;
        self.confirm("exit", pending).await?;
        Ok(self.channel(contract, id).await?.exitAt.to::<u64>())
    }

    /// Withdraws the unspent deposit after the challenge period; returns the refund.
    pub async fn withdraw(&self, contract: Address, params: &ChannelParams) -> Result<U256> {
        let ch = self.channel(contract, self.channel_id(contract, params)).await?;
        let refund = U256::from(ch.deposit).saturating_sub(U256::from(ch.paid));
        let pending = IPaymentChannel::new(contract, &self.provider)
            .withdraw(params.clone())
            .send()
            .await
            .map_err(contract_error)?;
        self.confirm("withdraw", pending).await?;
        Ok(refund)
    }

    /// The EIP-712 domain of `token` (ERC-5267 `eip712Domain()`), for permits and EIP-3009
    /// authorisations.
    pub async fn token_domain(&self, token: Address) -> Result<TokenDomain> {
        let d = IERC5267::new(token, &self.provider).eip712Domain().call().await.map_err(|e| {
            Error::Config(format!("token {token} does not report its EIP-712 domain (ERC-5267), so it cannot be used gaslessly: {e}"))
        })?;
        if d.verifyingContract != token {
            return Err(Error::Config(format!(
                "token {token} reports the EIP-712 domain of {}",
                d.verifyingContract
            )));
        }
        Ok(TokenDomain::new(d.name, d.version, d.chainId.to::<u64>(), token))
    }

    /// `owner`'s EIP-2612 nonce at `token`.
    pub async fn permit_nonce(&self, token: Address, owner: Address) -> Result<U256> {
        IERC20Permit::new(token, &self.provider)
            .nonces(owner)
            .call()
            .await
            .map_err(|e| Error::Config(format!("token {token} has no EIP-2612 permit: {e}")))
    }

    /// Whether `token` implements EIP-3009 (it answers `authorizationState`).
    pub async fn supports_eip3009(&self, token: Address, owner: Address) -> bool {
        IERC3009State::new(token, &self.provider).authorizationState(owner, B256::ZERO).call().await.is_ok()
    }

    /// Submits a payer's gasless open, paying the gas as this client's account (the relayer);
    /// returns the channel id and the deposit credited. Simulated first, so a refused open
    /// costs no gas.
    pub async fn submit_gasless(&self, contract: Address, open: &GaslessOpen) -> Result<(B256, U256)> {
        let id = self.channel_id(contract, &open.params);
        let tx = TransactionRequest::default().with_to(contract).with_input(open.calldata()?);
        self.provider
            .call(tx.clone())
            .await
            .map_err(|e| Error::Chain(format!("the gasless open would fail: {e}")))?;
        let pending = self.provider.send_transaction(tx).await.map_err(Error::chain)?;
        self.confirm("gasless open", pending).await?;
        Ok((id, U256::from(self.channel(contract, id).await?.deposit)))
    }

    /// Closes a channel at once with the provider's signed authorisation; returns the refund.
    pub async fn close_with_authorization(
        &self,
        contract: Address,
        params: &ChannelParams,
        authorization: &SignedCloseAuthorization,
    ) -> Result<U256> {
        let ch = self.channel(contract, self.channel_id(contract, params)).await?;
        let refund = U256::from(ch.deposit).saturating_sub(authorization.final_amount);
        let pending = IPaymentChannel::new(contract, &self.provider)
            .closeWithAuthorization(
                params.clone(),
                authorization.final_amount,
                U256::from(authorization.deadline),
                authorization.signature.clone(),
            )
            .send()
            .await
            .map_err(contract_error)?;
        self.confirm("close", pending).await?;
        Ok(refund)
    }
}

#[async_trait]
impl Funding for ChainClient {
    fn chain_id(&self) -> u64 {
        self.chain_id
    }

    fn payer(&self) -> Address {
        self.payer
    }

    async fn open(&self, contract: Address, params: ChannelParams, deposit: U256) -> Result<(B256, U256)> {
        self.open_channel(contract, params, deposit).await
    }

    async fn top_up(&self, contract: Address, params: &ChannelParams, amount: U256) -> Result<U256> {
        self.top_up_channel(contract, params, amount).await
    }
}

/// The name of an on-chain status.
pub(crate) fn status_name(status: IPaymentChannel::Status) -> &'static str {
    match status {
        IPaymentChannel::Status::None => "unknown on-chain",
        IPaymentChannel::Status::Open => "open",
        IPaymentChannel::Status::Closed => "closed",
        _ => "in an unknown state",
    }
}

/// A contract call's error, with the contract's custom error decoded when there is one.
fn contract_error(e: alloy::contract::Error) -> Error {
    match e.as_decoded_interface_error::<IPaymentChannelErrors>() {
        Some(decoded) => Error::Chain(format!(
            "the channel contract refused: {}",
            x402_protocol::revert::sentence(&decoded)
        )),
        None => Error::chain(e),
    }
}
