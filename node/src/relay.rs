//! The gasless-open relay: `POST` [`OPEN_PATH`] takes a payer's signed [`GaslessOpen`] and
//! submits it, paying the gas from the relay's own key.
//!
//! Only channels that pay this provider in its token on its terms are relayed, and each one is
//! simulated first, so a bad signature, a used permit or a short balance costs the relay no gas.
//! Transactions go through the durable [`TxSender`] (stored before broadcast, replaced with
//! higher fees when stuck, due before the authorisation expires). The relay key is separate
//! from the provider's key: the settler's sender owns that key's nonces, and a second sender
//! on it would race for them.

use std::sync::Arc;

use alloy::{
    network::TransactionBuilder,
    primitives::{Address, U256},
    providers::{DynProvider, Provider},
    rpc::types::TransactionRequest,
    signers::local::PrivateKeySigner,
};
use axum::{Json, Router, extract::State, response::IntoResponse, routing::post};
use bytes::Bytes;
use tracing::{info, warn};
use x402_chain::{Outcome, SenderConfig, TxSender};
use x402_protocol::{
    bindings::IPaymentChannel,
    open::{GaslessOpen, OPEN_PATH, OpenResponse},
    wire::ErrorCode,
};
use x402_store::KvStore;

use crate::{Refusal, Terms};

/// The longest an authorisation may stay valid, so that the relay is not asked to submit
/// something a payer could still use elsewhere much later. 1 day.
const MAX_AUTHORIZATION_LIFETIME: u64 = 86_400;

/// How long a request waits for its open to be mined; the sender keeps at it afterwards.
const RECEIPT_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Submits gasless opens for one provider.
pub struct Relay<S> {
    chain: DynProvider,
    relayer: Address,
    terms: Terms,
    sender: Arc<TxSender<S>>,
}

impl<S> Clone for Relay<S> {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            relayer: self.relayer,
            terms: self.terms.clone(),
            sender: Arc::clone(&self.sender),
        }
    }
}

impl<S> std::fmt::Debug for Relay<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("relayer", &self.relayer)
            .field("contract", &self.terms.contract)
            .finish()
    }
}

impl<S: KvStore> Relay<S> {
    /// A relay sending from `key` through the RPC at `rpc_url`, for channels on `terms`,
    /// keeping its transactions in flight in `store`. Opens left in flight by an earlier run
    /// are resolved in the background.
    pub fn new(
        rpc_url: &str,
        key: PrivateKeySigner,
        terms: Terms,
        store: Arc<S>,
    ) -> Result<Self, x402_chain::ChainError> {
        let relayer = key.address();
        // Calls time out, so a hung endpoint cannot hold the relay's nonce forever.
        let chain = x402_chain::rpc::http_provider(rpc_url, std::time::Duration::from_secs(30))?;
        let sender = TxSender::new(chain.clone(), key, terms.chain_id, store, SenderConfig::DEFAULT, "relay");
        let relay = Self { chain, relayer, terms, sender: Arc::new(sender) };
        for record in relay.sender.in_flight()? {
            relay.resolve_later(record);
        }
        Ok(relay)
    }

    /// Keeps waiting for `record` in the background, replacing it if it is stuck.
    fn resolve_later(&self, record: x402_chain::TxRecord) {
        let sender = Arc::clone(&self.sender);
        tokio::spawn(async move {
            if let Err(e) = sender.wait(record).await {
                warn!(target: "node::relay", error = %e, "cannot resolve a relayed open; retried at the next start");
            }
        });
    }

    /// The relay's address (it pays the gas).
    pub const fn relayer(&self) -> Address {
        self.relayer
    }

    /// The durable sender of the relay's transactions (its counters, its outbox).
    pub const fn sender(&self) -> &Arc<TxSender<S>> {
        &self.sender
    }

    /// Checks `open` against the provider's terms, simulates it and submits it; returns once it
    /// is mined.
    pub async fn submit(&self, open: &GaslessOpen) -> Result<OpenResponse, Refusal> {
        self.check_terms(open)?;
        let now = self.now().await?;
        let expires = open.authorization.expires();
        if expires < now {
            return Err(Refusal::new(
                ErrorCode::InvalidPayload,
                format!("the authorisation expired at {expires}"),
            ));
        }
        if expires > now + MAX_AUTHORIZATION_LIFETIME {
            return Err(Refusal::new(
                ErrorCode::InvalidPayload,
                format!("the authorisation is valid for more than {MAX_AUTHORIZATION_LIFETIME} s"),
            ));
        }
        let channels = IPaymentChannel::new(self.terms.contract, &self.chain);
        let id = open.params.channel_id(self.terms.chain_id, self.terms.contract);
        let calldata = open
            .calldata()
            .map_err(|e| Refusal::new(ErrorCode::InvalidPayload, format!("malformed authorisation: {e}")))?;
        let tx = TransactionRequest::default().with_to(self.terms.contract).with_input(calldata);
        // Simulate: whatever the contract refuses (bad signature, used permit, balance, an
        // existing channel) is refused here, before any gas is spent.
        if let Err(e) = self.chain.call(tx.clone()).await {
            return Err(Refusal::new(
                ErrorCode::InvalidPayload,
                format!(
                    "the contract refuses this open: {}",
                    x402_protocol::revert::of_transport_error(&e).unwrap_or_else(|| e.to_string())
                ),
            ));
        }
        // The open must be mined before the authorisation expires.
        let context = serde_json::json!({ "channel": id });
        let record = self.sender.send(tx, context, Some(expires)).await.map_err(unavailable)?;
        let first = record.versions.first().map(|v| v.hash).unwrap_or_default();
        info!(target: "node::relay", channel = %id, payer = %open.payer(), kind = open.authorization.kind(), hash = %first, "relaying a gasless open");
        let receipt = match self.sender.wait_for(record, Some(RECEIPT_WAIT)).await.map_err(unavailable)? {
            Outcome::Mined { receipt, .. } => receipt,
            Outcome::Pending(record) => {
                self.resolve_later(record);
                return Err(Refusal::new(
                    ErrorCode::Unavailable,
                    format!("the open transaction {first} is not mined yet; it is still being sent"),
                ));
            }
            Outcome::Replaced(_) => {
                return Err(Refusal::new(
                    ErrorCode::Unavailable,
                    "the relay's nonce was used by another transaction; submit the open again",
                ));
            }
        };
        let hash = receipt.transaction_hash;
        if !receipt.status() {
            warn!(target: "node::relay", channel = %id, %hash, "gasless open reverted");
            return Err(Refusal::new(
                ErrorCode::Unavailable,
                format!("the open transaction {hash} reverted"),
            ));
        }
        let ch = channels.getChannel(id).call().await.map_err(unavailable)?;
        Ok(OpenResponse { channel_id: id, transaction_hash: hash, deposit: U256::from(ch.deposit) })
    }

    fn check_terms(&self, open: &GaslessOpen) -> Result<(), Refusal> {
        let p = &open.params;
        let t = &self.terms;
        let mismatch = |what: String| Err(Refusal::new(ErrorCode::ChannelMismatch, what));
        if p.payee != t.payee {
            return mismatch(format!("the channel pays {}, not this provider {}", p.payee, t.payee));
        }
        if p.token != t.asset {
            return mismatch(format!("the channel is in token {}, this provider takes {}", p.token, t.asset));
        }
        if u64::from(p.challengePeriod) < t.min_challenge_period {
            return mismatch(format!(
                "challenge period {} s is below the provider's minimum of {} s",
                p.challengePeriod, t.min_challenge_period
            ));
        }
        if open.deposit.is_zero() || open.deposit < t.min_deposit {
            return mismatch(format!(
                "deposit {} is below the provider's minimum of {}",
                open.deposit, t.min_deposit
            ));
        }
        Ok(())
    }

    async fn now(&self) -> Result<u64, Refusal> {
        let block = self
            .chain
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| Refusal::new(ErrorCode::Unavailable, "the chain has no latest block"))?;
        Ok(block.header.timestamp)
    }
}

fn unavailable(e: impl std::fmt::Display) -> Refusal {
    Refusal::new(ErrorCode::Unavailable, format!("chain: {e}"))
}

/// The relay endpoint, `POST` [`OPEN_PATH`].
pub fn open_router<S: KvStore>(relay: Relay<S>) -> Router {
    Router::new().route(OPEN_PATH, post(open_channel)).with_state(relay)
}

async fn open_channel<S: KvStore>(State(relay): State<Relay<S>>, body: Bytes) -> axum::response::Response {
    let open: GaslessOpen = match serde_json::from_slice(&body) {
        Ok(open) => open,
        Err(e) => {
            return crate::gateway::api_error(&Refusal::new(
                ErrorCode::InvalidPayload,
                format!("malformed gasless open: {e}"),
            ));
        }
    };
    match relay.submit(&open).await {
        Ok(response) => Json(response).into_response(),
        Err(refusal) => crate::gateway::api_error(&refusal),
    }
}
