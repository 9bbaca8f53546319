//! The official x402 `exact` EVM scheme: a payer's EIP-3009 `TransferWithAuthorization` of the
//! price to the provider, verified here and settled by the node's own key, one on-chain
//! transfer per request (no third-party facilitator).
//!
//! Per request, in the official middleware's order (`x402HTTPResourceServer` of `@x402/core`):
//! 1. **verify** ([`Exact::verify`]), as `@x402/evm`'s exact facilitator does: the signature
//!    recovers to `from` (ECDSA, low `s`, under the token's domain), `to` is the provider,
//!    `value` is exactly the price, `validAfter ≤ now` and `validBefore ≥ now +`
//!    [`SETTLE_MARGIN`], the nonce is unused (by the token's `authorizationState` and by this
//!    node's store), the payer's balance covers `value`, and the token accepts the transfer in
//!    a simulation (`eth_call`).
//! 2. **record** ([`Exact::reserve`]): the authorisation `(token, from, nonce)` is written to the
//!    store and synced BEFORE anything else happens, under a lock that makes the check and the
//!    write one step, so a replay (at once, concurrently, or after a restart) is refused.
//! 3. the handler (the upstream) runs.
//! 4. **settle** ([`Exact::settle`]) only if it answered with a status below 400:
//!    `transferWithAuthorization` is sent from the node's key, its receipt awaited and its
//!    `Transfer` event checked; only then is the response released, with the transaction hash
//!    in `PAYMENT-RESPONSE`. A failed settlement answers an error, never the content.
//!    Otherwise **release** ([`Exact::release`]): nothing is sent, the authorisation is marked
//!    released and stays refused here; it lapses at `validBefore`.
//!
//! Contract wallets: the devnet token (like USDC's v1 EIP-3009) has only the `(v, r, s)`
//! variant of `transferWithAuthorization`, which checks ECDSA only, so a `from` with code whose
//! signature does not recover is refused with a clear message (an EIP-7702 EOA signs with its
//! key and passes).

use std::{future::Future, sync::Arc};

use alloy::{
    network::TransactionBuilder,
    primitives::{Address, B256, Bytes, U256},
    providers::Provider,
    rpc::types::TransactionRequest,
    sol_types::SolEvent,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use x402_chain::error::{contract, rpc};
use x402_protocol::{
    Network,
    exact::{ExactExtra, ExactPayload, ExactRequirements, IEip3009Token, SCHEME},
    open::TokenDomain,
    wire::{DomainInfo, ErrorCode, PaymentEnvelope, SettlementResponse},
};
use x402_store::KvStore;

use crate::{
    Refusal,
    chain::{ChainError, RpcChain},
    verify::{SignerCode, address_of, recover},
};

/// The store namespace of the `exact` authorisations this node has taken, keyed by
/// `token ‖ from ‖ nonce` (20 + 20 + 32 bytes).
pub const EXACT_AUTHORIZATIONS: &str = "exact-authorizations";

/// The least time an authorisation must still be valid for when it is verified, seconds: the
/// settlement transaction must be mined before `validBefore` (the official facilitator's 6 s).
pub const SETTLE_MARGIN: u64 = 6;

/// The least time an authorisation must still be valid for when its transfer is sent, seconds
/// (after the upstream answered).
pub const SEND_MARGIN: u64 = 2;

/// How long after its `validBefore` a record is kept (then the token itself refuses the
/// authorisation, so the record is no longer needed): [`Exact::prune`].
pub const PRUNE_AFTER: u64 = 3600;

/// Why an `exact` payment was refused: a protocol answer, like [`Refusal`] (into which it
/// converts), not an error of the node. [`Self::reason`] is the official facilitator's
/// `invalidReason` for the same case.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExactRefusal {
    /// The payload is not an `exact` EIP-3009 payload (bad JSON, a signature not 65 bytes).
    #[error("malformed exact payment: {0}")]
    Malformed(String),
    /// The network or asset is not this node's.
    #[error("{0}")]
    Mismatch(String),
    /// `to` is not the provider.
    #[error("the authorisation pays {to}, not this provider {payee}")]
    RecipientMismatch {
        /// The authorisation's recipient.
        to: Address,
        /// The provider.
        payee: Address,
    },
    /// `value` is not the price.
    #[error("the authorisation's value {value} is not the price {price}")]
    ValueMismatch {
        /// The authorisation's value.
        value: U256,
        /// The route's price.
        price: U256,
    },
    /// `validBefore` is past, or too close to settle in time.
    #[error("the authorisation expires at {valid_before}: it must be valid until at least {needed}")]
    Expired {
        /// The authorisation's `validBefore`.
        valid_before: U256,
        /// `now +` [`SETTLE_MARGIN`].
        needed: u64,
    },
    /// `validAfter` is in the future.
    #[error("the authorisation is valid only after {valid_after} (now {now})")]
    NotYetValid {
        /// The authorisation's `validAfter`.
        valid_after: U256,
        /// The node's time.
        now: u64,
    },
    /// The signature is not `from`'s under the token's domain.
    #[error("the signature is not {from}'s over this authorisation under the token's EIP-712 domain")]
    InvalidSignature {
        /// The authorisation's payer.
        from: Address,
    },
    /// `from` is a contract whose signature the token cannot check.
    #[error(
        "{from} is a contract wallet: the token's transferWithAuthorization checks ECDSA signatures only (no ERC-1271 variant), so it cannot pay with exact"
    )]
    ContractWallet {
        /// The authorisation's payer.
        from: Address,
    },
    /// The nonce was used before (on-chain, or taken by this node).
    #[error("the authorisation nonce {nonce} of {from} was used before")]
    NonceUsed {
        /// The payer.
        from: Address,
        /// The nonce.
        nonce: B256,
    },
    /// The payer's balance does not cover `value`.
    #[error("{from} holds {balance}, less than {value}")]
    InsufficientBalance {
        /// The payer.
        from: Address,
        /// Its balance.
        balance: U256,
        /// The authorisation's value.
        value: U256,
    },
    /// The token refuses the transfer in a simulation.
    #[error("the token refuses the transfer: {0}")]
    SimulationFailed(String),
    /// The transfer transaction failed or could not be sent.
    #[error("settlement failed: {0}")]
    TransactionFailed(String),
    /// The chain or the store could not be reached.
    #[error("{0}")]
    Unavailable(String),
}

impl ExactRefusal {
    /// The official `invalidReason` / `errorReason` (`@x402/evm` exact facilitator).
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "invalid_payload",
            Self::Mismatch(_) => "invalid_exact_evm_network_mismatch",
            Self::RecipientMismatch { .. } => "invalid_exact_evm_recipient_mismatch",
            Self::ValueMismatch { .. } => "invalid_exact_evm_payload_authorization_value_mismatch",
            Self::Expired { .. } => "invalid_exact_evm_payload_authorization_valid_before",
            Self::NotYetValid { .. } => "invalid_exact_evm_payload_authorization_valid_after",
            Self::InvalidSignature { .. } | Self::ContractWallet { .. } => "invalid_exact_evm_signature",
            Self::NonceUsed { .. } => "invalid_exact_evm_nonce_already_used",
            Self::InsufficientBalance { .. } => "invalid_exact_evm_insufficient_balance",
            Self::SimulationFailed(_) => "invalid_exact_evm_transaction_simulation_failed",
            Self::TransactionFailed(_) => "invalid_exact_evm_transaction_failed",
            Self::Unavailable(_) => "unavailable",
        }
    }

    /// The node's own error code, for a 402 of the gateway.
    pub const fn code(&self) -> ErrorCode {
        match self {
            Self::Malformed(_) => ErrorCode::InvalidPayload,
            Self::Mismatch(_) => ErrorCode::InvalidNetwork,
            Self::InvalidSignature { .. } | Self::ContractWallet { .. } => ErrorCode::InvalidSignature,
            Self::InsufficientBalance { .. } => ErrorCode::InsufficientFunds,
            Self::TransactionFailed(_) => ErrorCode::SettlementFailed,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::RecipientMismatch { .. }
            | Self::ValueMismatch { .. }
            | Self::Expired { .. }
            | Self::NotYetValid { .. }
            | Self::NonceUsed { .. }
            | Self::SimulationFailed(_) => ErrorCode::InvalidAuthorization,
        }
    }
}

impl From<ExactRefusal> for Refusal {
    /// The node's code, and a message ending with the official reason in brackets.
    fn from(e: ExactRefusal) -> Self {
        Self::new(e.code(), format!("{e} [{}]", e.reason()))
    }
}

/// What the node needs from the chain for `exact`, beyond sending.
pub trait TokenChain: Send + Sync + 'static {
    /// The token's `authorizationState(from, nonce)`.
    fn authorization_used(
        &self,
        token: Address,
        from: Address,
        nonce: B256,
    ) -> impl Future<Output = Result<bool, ChainError>> + Send;

    /// The token's `balanceOf(who)`.
    fn balance(&self, token: Address, who: Address) -> impl Future<Output = Result<U256, ChainError>> + Send;

    /// The code at `who`.
    fn code(&self, who: Address) -> impl Future<Output = Result<Bytes, ChainError>> + Send;

    /// An `eth_call` of `calldata` to `to` from `from` at the latest block: `Ok(Err(reason))`
    /// if it reverts.
    fn simulate(
        &self,
        from: Address,
        to: Address,
        calldata: Bytes,
    ) -> impl Future<Output = Result<Result<(), String>, ChainError>> + Send;
}

impl TokenChain for RpcChain {
    async fn authorization_used(
        &self,
        token: Address,
        from: Address,
        nonce: B256,
    ) -> Result<bool, ChainError> {
        IEip3009Token::new(token, self.provider())
            .authorizationState(from, nonce)
            .call()
            .await
            .map_err(contract("authorizationState"))
    }

    async fn balance(&self, token: Address, who: Address) -> Result<U256, ChainError> {
        IEip3009Token::new(token, self.provider()).balanceOf(who).call().await.map_err(contract("balanceOf"))
    }

    async fn code(&self, who: Address) -> Result<Bytes, ChainError> {
        self.provider().get_code_at(who).await.map_err(rpc("eth_getCode"))
    }

    async fn simulate(
        &self,
        from: Address,
        to: Address,
        calldata: Bytes,
    ) -> Result<Result<(), String>, ChainError> {
        let tx = TransactionRequest::default().with_from(from).with_to(to).with_input(calldata);
        match self.provider().call(tx).await {
            Ok(_) => Ok(Ok(())),
            // A revert is an answer; anything else (transport, timeout) is the chain failing.
            Err(e) if e.as_error_resp().is_some() => Ok(Err(e.to_string())),
            Err(e) => Err(rpc("eth_call")(e)),
        }
    }
}

/// A mined transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mined {
    /// Its hash.
    pub hash: B256,
    /// Whether it succeeded.
    pub success: bool,
    /// The logs of `emitter` in its receipt: `(topics, data)`.
    pub logs: Vec<(Vec<B256>, Bytes)>,
}

/// Submits one transaction and waits for its receipt: the one narrow way `exact` sends.
///
/// The node's single durable sender (stored before broadcast, resolved on restart, fees
/// bumped) is meant to implement this; `Arc<TxSender>` is the node's.
pub trait Sender: Send + Sync + 'static {
    /// The sending account (the simulations run from it).
    fn address(&self) -> Address;

    /// Sends `calldata` to `to` and waits until it is mined.
    fn send(&self, to: Address, calldata: Bytes) -> impl Future<Output = Result<Mined, String>> + Send;
}

/// The node's durable sender of the payee's key is the `exact` scheme's [`Sender`]: it owns the
/// account's nonces (shared with the settler), stores each transfer before broadcasting it and
/// replaces it with higher fees if it is stuck.
impl<S: KvStore> Sender for Arc<x402_chain::TxSender<S>> {
    fn address(&self) -> Address {
        x402_chain::TxSender::address(self)
    }

    async fn send(&self, to: Address, calldata: Bytes) -> Result<Mined, String> {
        let tx = TransactionRequest::default().with_to(to).with_input(calldata);
        // Not resolved here after a restart: the settler's first round resolves what is left.
        let context = serde_json::json!({ "kind": "exact" });
        let deadline = Some(crate::unix_now() + EXACT_SEND_DEADLINE_SECS);
        let record =
            x402_chain::TxSender::send(self, tx, context, deadline).await.map_err(|e| e.to_string())?;
        let outcome = self
            .wait_for(record, Some(std::time::Duration::from_secs(EXACT_SEND_DEADLINE_SECS)))
            .await
            .map_err(|e| e.to_string())?;
        match outcome {
            x402_chain::Outcome::Mined { receipt, .. } => {
                let logs = receipt
                    .inner
                    .logs()
                    .iter()
                    .filter(|l| l.address() == to)
                    .map(|l| (l.topics().to_vec(), l.data().data.clone()))
                    .collect();
                Ok(Mined { hash: receipt.transaction_hash, success: receipt.status(), logs })
            }
            x402_chain::Outcome::Replaced(r) => {
                Err(format!("the transfer's nonce {} was used by another transaction", r.nonce))
            }
            x402_chain::Outcome::Pending(r) => Err(format!(
                "the transfer {} was not mined within {EXACT_SEND_DEADLINE_SECS} s; it stays in flight",
                r.last().map(|v| v.hash).unwrap_or_default()
            )),
        }
    }
}

/// How long an `exact` transfer may take to be mined before the request fails (it stays in
/// flight and may still land; the authorisation stays recorded, so it is never served twice).
pub const EXACT_SEND_DEADLINE_SECS: u64 = 60;

/// The node's `exact` terms: one token, one provider.
#[derive(Clone, Debug)]
pub struct ExactTerms {
    /// The chain.
    pub network: Network,
    /// The token (EIP-3009).
    pub token: Address,
    /// The provider: every transfer must pay it.
    pub payee: Address,
    /// The token's EIP-712 domain name and version.
    pub extra: ExactExtra,
    /// The `maxTimeoutSeconds` of the requirements (the official client's validity window).
    pub max_timeout_seconds: u64,
}

impl ExactTerms {
    /// The token's EIP-712 domain.
    pub fn domain(&self) -> TokenDomain {
        TokenDomain::new(
            self.extra.name.clone(),
            self.extra.version.clone(),
            self.network.chain_id,
            self.token,
        )
    }

    /// The `exact` requirements of a route priced `price`.
    pub fn requirements(&self, price: U256) -> ExactRequirements {
        ExactRequirements {
            scheme: SCHEME.into(),
            network: self.network,
            amount: price,
            asset: self.token,
            pay_to: self.payee,
            max_timeout_seconds: self.max_timeout_seconds,
            extra: self.extra.clone(),
        }
    }
}

/// An authorisation's state in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordState {
    /// Taken for a request; not (known to be) sent.
    Reserved,
    /// Transferred by this transaction.
    Settled,
    /// Not sent: the request was not served (upstream error). It stays refused.
    Released,
    /// Sent, and the transaction failed.
    Failed,
}

/// The record of one authorisation (JSON; this module is its only reader and writer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExactRecord {
    /// Where it is.
    pub state: RecordState,
    /// The payer.
    pub from: Address,
    /// The value.
    pub value: U256,
    /// Its `validBefore`, for pruning (saturated to `u64`).
    pub valid_before: u64,
    /// The settlement transaction, once sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<B256>,
}

/// The store key of an authorisation.
pub fn record_key(token: Address, from: Address, nonce: B256) -> [u8; 72] {
    let mut key = [0u8; 72];
    key[..20].copy_from_slice(token.as_slice());
    key[20..40].copy_from_slice(from.as_slice());
    key[40..].copy_from_slice(nonce.as_slice());
    key
}

/// A verified authorisation, recorded durably, not settled yet.
#[derive(Debug)]
#[must_use = "settle or release it"]
pub struct Reserved {
    payload: ExactPayload,
    key: [u8; 72],
}

impl Reserved {
    /// The payer.
    pub const fn payer(&self) -> Address {
        self.payload.authorization.from
    }

    /// The amount.
    pub const fn amount(&self) -> U256 {
        self.payload.authorization.value
    }
}

/// A settled `exact` payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settled {
    /// The transfer's transaction.
    pub transaction: B256,
    /// The payer.
    pub payer: Address,
    /// The amount transferred.
    pub amount: U256,
}

/// The `exact` scheme of one node.
pub struct Exact<S, C, T> {
    terms: ExactTerms,
    domain: TokenDomain,
    store: Arc<S>,
    chain: C,
    sender: T,
    /// Makes "is it recorded? record it" one step for concurrent requests (store reads and
    /// writes only, no I/O of others; the sync happens after).
    taking: parking_lot::Mutex<()>,
}

impl<S, C, T: Sender> std::fmt::Debug for Exact<S, C, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exact").field("terms", &self.terms).field("sender", &self.sender.address()).finish()
    }
}

impl<S: KvStore, C: TokenChain, T: Sender> Exact<S, C, T> {
    /// The scheme on `terms`, recording in `store`, reading `chain`, settling through `sender`.
    pub fn new(terms: ExactTerms, store: Arc<S>, chain: C, sender: T) -> Self {
        let domain = terms.domain();
        Self { terms, domain, store, chain, sender, taking: parking_lot::Mutex::new(()) }
    }

    /// The terms.
    pub const fn terms(&self) -> &ExactTerms {
        &self.terms
    }

    /// Verifies `payload` for a request priced `price` at unix time `now`, without recording
    /// it; returns the payer. The checks and their order are the official facilitator's (see
    /// the module docs), plus this node's own record of the nonce.
    pub async fn verify(
        &self,
        payload: &ExactPayload,
        price: U256,
        now: u64,
    ) -> Result<Address, ExactRefusal> {
        let a = &payload.authorization;
        let digest = a.signing_hash(&self.domain);
        let recovered = recover(&digest, &payload.signature).map(|k| address_of(&k));
        if recovered != Some(a.from) {
            let code = self.chain.code(a.from).await.map_err(unavailable)?;
            if SignerCode::of(&code) == SignerCode::Contract {
                return Err(ExactRefusal::ContractWallet { from: a.from });
            }
            return Err(ExactRefusal::InvalidSignature { from: a.from });
        }
        if a.to != self.terms.payee {
            return Err(ExactRefusal::RecipientMismatch { to: a.to, payee: self.terms.payee });
        }
        let needed = now.saturating_add(SETTLE_MARGIN);
        if a.valid_before < U256::from(needed) {
            return Err(ExactRefusal::Expired { valid_before: a.valid_before, needed });
        }
        if a.valid_after > U256::from(now) {
            return Err(ExactRefusal::NotYetValid { valid_after: a.valid_after, now });
        }
        if a.value != price {
            return Err(ExactRefusal::ValueMismatch { value: a.value, price });
        }
        let key = record_key(self.terms.token, a.from, a.nonce);
        if self.store.get(EXACT_AUTHORIZATIONS, &key).map_err(storage)?.is_some() {
            return Err(ExactRefusal::NonceUsed { from: a.from, nonce: a.nonce });
        }
        let (used, balance) = futures::future::join(
            self.chain.authorization_used(self.terms.token, a.from, a.nonce),
            self.chain.balance(self.terms.token, a.from),
        )
        .await;
        if used.map_err(unavailable)? {
            return Err(ExactRefusal::NonceUsed { from: a.from, nonce: a.nonce });
        }
        let balance = balance.map_err(unavailable)?;
        if balance < a.value {
            return Err(ExactRefusal::InsufficientBalance { from: a.from, balance, value: a.value });
        }
        let calldata = payload.calldata().map_err(|e| ExactRefusal::Malformed(e.to_string()))?;
        self.chain
            .simulate(self.sender.address(), self.terms.token, calldata)
            .await
            .map_err(unavailable)?
            .map_err(ExactRefusal::SimulationFailed)?;
        Ok(a.from)
    }

    /// Verifies `payload` (see [`Self::verify`]) and records it durably: once this returns, the
    /// authorisation is refused to any other request, even after a restart.
    pub async fn reserve(&self, payload: ExactPayload, price: U256) -> Result<Reserved, ExactRefusal> {
        self.verify(&payload, price, crate::unix_now()).await?;
        let a = &payload.authorization;
        let key = record_key(self.terms.token, a.from, a.nonce);
        let record = ExactRecord {
            state: RecordState::Reserved,
            from: a.from,
            value: a.value,
            valid_before: a.valid_before.saturating_to(),
            transaction: None,
        };
        {
            let _taking = self.taking.lock();
            if self.store.get(EXACT_AUTHORIZATIONS, &key).map_err(storage)?.is_some() {
                return Err(ExactRefusal::NonceUsed { from: a.from, nonce: a.nonce });
            }
            self.put(&key, &record)?;
        }
        // Durable before anything else (the upstream, the transfer) happens. If the sync fails
        // the record stays: the authorisation is refused rather than risked twice.
        self.store.sync().await.map_err(storage)?;
        Ok(Reserved { payload, key })
    }

    /// Transfers a reserved authorisation from the node's key and waits for the receipt.
    pub async fn settle(&self, reserved: Reserved) -> Result<Settled, ExactRefusal> {
        let a = &reserved.payload.authorization;
        // The transfer must be mined before `validBefore`: too close to it (a slow upstream
        // used up the window), it is not sent at all rather than sent to revert.
        let needed = crate::unix_now().saturating_add(SEND_MARGIN);
        if a.valid_before < U256::from(needed) {
            self.mark(&reserved, RecordState::Failed, None).await;
            return Err(ExactRefusal::TransactionFailed(format!(
                "the authorisation expires at {} before the transfer could be mined (needed {needed})",
                a.valid_before
            )));
        }
        let calldata = reserved.payload.calldata().map_err(|e| ExactRefusal::Malformed(e.to_string()))?;
        let mined = match self.sender.send(self.terms.token, calldata).await {
            Ok(mined) => mined,
            Err(e) => {
                // Unknown whether it was broadcast: the record stays `reserved` (refused).
                warn!(target: "node::exact", payer = %a.from, nonce = %a.nonce, error = %e, "exact settlement not sent");
                return Err(ExactRefusal::TransactionFailed(e));
            }
        };
        let transferred = mined.logs.iter().any(|(topics, data)| {
            IEip3009Token::Transfer::decode_raw_log(topics.iter().copied(), data)
                .is_ok_and(|t| t.from == a.from && t.to == a.to && t.value == a.value)
        });
        if !mined.success || !transferred {
            warn!(target: "node::exact", payer = %a.from, tx = %mined.hash, success = mined.success, "exact settlement failed");
            self.mark(&reserved, RecordState::Failed, Some(mined.hash)).await;
            return Err(ExactRefusal::TransactionFailed(format!(
                "transaction {} {}",
                mined.hash,
                if mined.success { "did not transfer the authorised amount" } else { "reverted" }
            )));
        }
        self.mark(&reserved, RecordState::Settled, Some(mined.hash)).await;
        info!(target: "node::exact", payer = %a.from, amount = %a.value, tx = %mined.hash, "exact payment settled");
        Ok(Settled { transaction: mined.hash, payer: a.from, amount: a.value })
    }

    /// Gives up a reserved authorisation without sending it (the request was not served). It
    /// stays refused here and lapses at its `validBefore`.
    pub async fn release(&self, reserved: Reserved) {
        self.mark(&reserved, RecordState::Released, None).await;
    }

    /// Removes records whose authorisation expired more than [`PRUNE_AFTER`] seconds before
    /// `now` (the token refuses them by itself); returns how many.
    pub fn prune(&self, now: u64) -> Result<usize, ExactRefusal> {
        let mut removed = 0;
        for (key, value) in self.store.list(EXACT_AUTHORIZATIONS).map_err(storage)? {
            let Ok(record) = serde_json::from_slice::<ExactRecord>(&value) else { continue };
            if record.valid_before.saturating_add(PRUNE_AFTER) < now {
                self.store.remove(EXACT_AUTHORIZATIONS, &key).map_err(storage)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The record of an authorisation, if this node took it.
    pub fn record(&self, from: Address, nonce: B256) -> Result<Option<ExactRecord>, ExactRefusal> {
        let key = record_key(self.terms.token, from, nonce);
        let Some(bytes) = self.store.get(EXACT_AUTHORIZATIONS, &key).map_err(storage)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ExactRefusal::Unavailable(format!("corrupt record: {e}")))
    }

    fn put(&self, key: &[u8], record: &ExactRecord) -> Result<(), ExactRefusal> {
        let bytes = serde_json::to_vec(record).map_err(|e| ExactRefusal::Unavailable(e.to_string()))?;
        self.store.put(EXACT_AUTHORIZATIONS, key, &bytes).map_err(storage)
    }

    async fn mark(&self, reserved: &Reserved, state: RecordState, transaction: Option<B256>) {
        let a = &reserved.payload.authorization;
        let record = ExactRecord {
            state,
            from: a.from,
            value: a.value,
            valid_before: a.valid_before.saturating_to(),
            transaction,
        };
        // Best effort: the `reserved` record already refuses the authorisation; this one only
        // tells what became of it.
        if let Err(e) = self.put(&reserved.key, &record) {
            warn!(target: "node::exact", error = %e, "cannot update an exact record");
            return;
        }
        if let Err(e) = self.store.sync().await {
            warn!(target: "node::exact", error = %e, "cannot sync an exact record");
        }
    }
}

/// Builds the gateway's `exact` scheme: the token's EIP-712 domain as the engine resolved it
/// (`payment.eip712_name`/`eip712_version`, else read from the token at start), the node's
/// store, chain reads through `chain`, transfers sent by `sender` (the payee key's one durable
/// sender, shared with the settler); and drops records of authorisations long expired.
pub fn for_gateway<S: KvStore>(
    terms: &crate::Terms,
    domain: Option<DomainInfo>,
    store: Arc<S>,
    chain: RpcChain,
    sender: Arc<x402_chain::TxSender<S>>,
) -> crate::Result<Exact<S, RpcChain, Arc<x402_chain::TxSender<S>>>> {
    let domain = domain.ok_or_else(|| {
        crate::Error::Missing(format!(
            "the exact scheme needs the EIP-712 domain of the token {}, which it does not report: set payment.eip712_name and payment.eip712_version",
            terms.asset
        ))
    })?;
    let extra = ExactExtra { name: domain.name, version: domain.version };
    let exact_terms = ExactTerms {
        network: Network::new(terms.chain_id),
        token: terms.asset,
        payee: terms.payee,
        extra,
        max_timeout_seconds: terms.max_timeout_seconds,
    };
    if sender.address() != terms.payee {
        warn!(target: "node::exact", sender = %sender.address(), payee = %terms.payee, "exact transfers are sent by a key other than the payee's");
    }
    let exact = Exact::new(exact_terms, store, chain, sender);
    let pruned = exact.prune(crate::unix_now())?;
    info!(target: "node::exact", token = %exact.terms.token, name = %exact.terms.extra.name, version = %exact.terms.extra.version, pruned, "taking the exact scheme");
    Ok(exact)
}

/// A boxed future, for the object-safe [`ExactHandler`].
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The `exact` scheme as the paywall and the facilitator hold it, whatever its store, chain and
/// sender ([`Exact`] implements it).
pub trait ExactHandler: Send + Sync + 'static {
    /// The terms.
    fn terms(&self) -> &ExactTerms;

    /// [`Exact::verify`] at the current time.
    fn verify<'a>(
        &'a self,
        payload: &'a ExactPayload,
        price: U256,
    ) -> BoxFuture<'a, Result<Address, ExactRefusal>>;

    /// [`Exact::reserve`].
    fn reserve(&self, payload: ExactPayload, price: U256) -> BoxFuture<'_, Result<Reserved, ExactRefusal>>;

    /// [`Exact::settle`].
    fn settle(&self, reserved: Reserved) -> BoxFuture<'_, Result<Settled, ExactRefusal>>;

    /// [`Exact::release`].
    fn release(&self, reserved: Reserved) -> BoxFuture<'_, ()>;
}

impl<S: KvStore, C: TokenChain, T: Sender> ExactHandler for Exact<S, C, T> {
    fn terms(&self) -> &ExactTerms {
        &self.terms
    }

    fn verify<'a>(
        &'a self,
        payload: &'a ExactPayload,
        price: U256,
    ) -> BoxFuture<'a, Result<Address, ExactRefusal>> {
        Box::pin(Self::verify(self, payload, price, crate::unix_now()))
    }

    fn reserve(&self, payload: ExactPayload, price: U256) -> BoxFuture<'_, Result<Reserved, ExactRefusal>> {
        Box::pin(Self::reserve(self, payload, price))
    }

    fn settle(&self, reserved: Reserved) -> BoxFuture<'_, Result<Settled, ExactRefusal>> {
        Box::pin(Self::settle(self, reserved))
    }

    fn release(&self, reserved: Reserved) -> BoxFuture<'_, ()> {
        Box::pin(Self::release(self, reserved))
    }
}

impl<S: KvStore, C: TokenChain, T: Sender> crate::facilitator::ExactScheme for Exact<S, C, T> {
    fn verify<'a>(
        &'a self,
        payment: &'a PaymentEnvelope,
        requirements: &'a crate::facilitator::Requirements,
    ) -> BoxFuture<'a, crate::facilitator::VerifyResponse> {
        use crate::facilitator::VerifyResponse;
        Box::pin(async move {
            let payload = match check_envelope(&self.terms, payment) {
                Ok(p) => p,
                Err(refusal) => return VerifyResponse::invalid(&refusal),
            };
            let payer = payload.authorization.from;
            match Self::verify(self, &payload, requirements.amount, crate::unix_now()).await {
                Ok(payer) => VerifyResponse::valid(payer),
                Err(e) => VerifyResponse { payer: Some(payer), ..VerifyResponse::invalid(&e.into()) },
            }
        })
    }

    fn settle<'a>(
        &'a self,
        payment: &'a PaymentEnvelope,
        requirements: &'a crate::facilitator::Requirements,
    ) -> BoxFuture<'a, crate::facilitator::SettleResponse> {
        use crate::facilitator::SettleResponse;
        Box::pin(async move {
            let network = self.terms.network;
            let payload = match check_envelope(&self.terms, payment) {
                Ok(p) => p,
                Err(refusal) => return SettleResponse::failed(network, &refusal),
            };
            let payer = payload.authorization.from;
            // Recorded before the transfer, as for the gateway: a second settle of the same
            // authorisation is refused (the resource must not be served twice for it).
            let settled = match Self::reserve(self, payload, requirements.amount).await {
                Ok(reserved) => Self::settle(self, reserved).await,
                Err(e) => Err(e),
            };
            match settled {
                Ok(s) => SettleResponse {
                    success: true,
                    error_reason: None,
                    error_message: None,
                    transaction: s.transaction.to_string(),
                    network,
                    payer: Some(s.payer),
                    amount: Some(s.amount),
                    extra: None,
                },
                Err(e) => SettleResponse { payer: Some(payer), ..SettleResponse::failed(network, &e.into()) },
            }
        })
    }

    fn kind(&self) -> crate::facilitator::SupportedKind {
        crate::facilitator::SupportedKind {
            x402_version: x402_protocol::wire::X402_VERSION,
            scheme: SCHEME.into(),
            network: self.terms.network,
            extra: None,
        }
    }
}

/// Checks a payment's envelope for `exact` on `terms`: version, network, and the echoed
/// `asset` and `payTo` when present; then decodes the payload strictly. (The scheme was read
/// first, by the caller's dispatch.)
pub fn check_envelope(terms: &ExactTerms, envelope: &PaymentEnvelope) -> Result<ExactPayload, Refusal> {
    if !matches!(envelope.x402_version, 1 | 2) {
        return Err(Refusal::new(
            ErrorCode::InvalidX402Version,
            format!("x402 version {} is not supported (1 or 2)", envelope.x402_version),
        ));
    }
    let network = terms.network.to_string();
    if envelope.network() != Some(network.as_str()) {
        return Err(Refusal::new(
            ErrorCode::InvalidNetwork,
            format!("network {:?} is not this node's {network}", envelope.network()),
        ));
    }
    if let Some(accepted) = &envelope.accepted
        && (accepted.asset.is_some_and(|a| a != terms.token)
            || accepted.pay_to.is_some_and(|p| p != terms.payee))
    {
        return Err(Refusal::new(
            ErrorCode::InvalidAuthorization,
            format!(
                "the accepted offer (asset {:?}, payTo {:?}) is not one of this node's",
                accepted.asset, accepted.pay_to
            ),
        ));
    }
    envelope
        .payload()
        .map_err(|e| Refusal::new(ErrorCode::InvalidPayload, format!("malformed exact payload: {e}")))
}

/// The `PAYMENT-RESPONSE` of a settled `exact` payment.
pub fn settlement_response(terms: &ExactTerms, settled: &Settled) -> SettlementResponse {
    SettlementResponse {
        success: true,
        transaction: settled.transaction.to_string(),
        network: terms.network,
        payer: settled.payer,
        amount: Some(settled.amount),
        extra: None,
    }
}

/// Serves one request paid with `exact`, in the official middleware's order: verify and
/// record, run `inner`, and only if it answered below 400 settle before the response (its
/// headers; the body streams after) is released with its `PAYMENT-RESPONSE`. An answer of 400
/// or above is passed on unpaid (the authorisation is released); a failed settlement is a
/// refusal (`settlement_failed`) and the content is dropped.
pub async fn serve<Svc>(
    exact: &dyn ExactHandler,
    mut inner: Svc,
    req: http::Request<axum::body::Body>,
    price: U256,
    envelope: &PaymentEnvelope,
) -> Result<axum::response::Response, Refusal>
where
    Svc: tower::Service<
            http::Request<axum::body::Body>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        >,
{
    let payload = check_envelope(exact.terms(), envelope)?;
    let reserved = exact.reserve(payload, price).await?;
    let Ok(mut response) = inner.call(req).await;
    if response.status().as_u16() >= 400 {
        exact.release(reserved).await;
        return Ok(response);
    }
    let settled = exact.settle(reserved).await?;
    let receipt = x402_protocol::wire::encode_header(&settlement_response(exact.terms(), &settled));
    if let Ok(v) = http::HeaderValue::from_str(&receipt) {
        response
            .headers_mut()
            .insert(http::HeaderName::from_static(x402_protocol::wire::PAYMENT_RESPONSE), v);
    }
    Ok(response)
}

fn unavailable(e: ChainError) -> ExactRefusal {
    ExactRefusal::Unavailable(format!("chain unavailable: {e}"))
}

fn storage(e: x402_store::Error) -> ExactRefusal {
    ExactRefusal::Unavailable(format!("storage unavailable: {e}"))
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use alloy::{signers::local::PrivateKeySigner, sol_types::SolCall};
    use x402_protocol::exact::ExactAuthorization as Authorization;
    use x402_store::{MemoryStore, SledStore};

    use super::*;

    const PRICE: u64 = 1000;
    const TOKEN: Address = Address::repeat_byte(0x70);
    const PAYEE: Address = Address::repeat_byte(0xee);

    #[derive(Default)]
    struct FakeChain {
        used: parking_lot::Mutex<HashSet<(Address, B256)>>,
        balances: parking_lot::Mutex<HashMap<Address, U256>>,
        code: HashMap<Address, Bytes>,
        revert: Option<String>,
        down: bool,
    }

    impl TokenChain for Arc<FakeChain> {
        async fn authorization_used(
            &self,
            token: Address,
            from: Address,
            nonce: B256,
        ) -> Result<bool, ChainError> {
            assert_eq!(token, TOKEN);
            if self.down {
                return Err(ChainError::Unavailable("down".into()));
            }
            Ok(self.used.lock().contains(&(from, nonce)))
        }

        async fn balance(&self, _: Address, who: Address) -> Result<U256, ChainError> {
            Ok(self.balances.lock().get(&who).copied().unwrap_or_default())
        }

        async fn code(&self, who: Address) -> Result<Bytes, ChainError> {
            Ok(self.code.get(&who).cloned().unwrap_or_default())
        }

        async fn simulate(&self, _: Address, _: Address, _: Bytes) -> Result<Result<(), String>, ChainError> {
            Ok(self.revert.clone().map_or(Ok(()), Err))
        }
    }

    /// Applies the transfer to the fake chain and answers with its `Transfer` log.
    struct FakeSender {
        chain: Arc<FakeChain>,
        sent: parking_lot::Mutex<Vec<Bytes>>,
        revert: bool,
    }

    impl Sender for Arc<FakeSender> {
        fn address(&self) -> Address {
            Address::repeat_byte(0x5e)
        }

        async fn send(&self, to: Address, calldata: Bytes) -> Result<Mined, String> {
            assert_eq!(to, TOKEN);
            self.sent.lock().push(calldata.clone());
            let call = IEip3009Token::transferWithAuthorizationCall::abi_decode(&calldata)
                .map_err(|e| e.to_string())?;
            let hash = alloy::primitives::keccak256(&calldata);
            if self.revert || !self.chain.used.lock().insert((call.from, call.nonce)) {
                return Ok(Mined { hash, success: false, logs: Vec::new() });
            }
            let log = IEip3009Token::Transfer { from: call.from, to: call.to, value: call.value };
            let data = log.encode_log_data();
            Ok(Mined { hash, success: true, logs: vec![(data.topics().to_vec(), data.data.clone())] })
        }
    }

    fn terms() -> ExactTerms {
        ExactTerms {
            network: Network::new(31337),
            token: TOKEN,
            payee: PAYEE,
            extra: ExactExtra { name: "Test USD".into(), version: "1".into() },
            max_timeout_seconds: 60,
        }
    }

    struct Fixture<S: KvStore> {
        exact: Exact<S, Arc<FakeChain>, Arc<FakeSender>>,
        chain: Arc<FakeChain>,
        sender: Arc<FakeSender>,
        payer: PrivateKeySigner,
    }

    fn fixture_with<S: KvStore>(store: Arc<S>, chain: FakeChain) -> Fixture<S> {
        let payer = PrivateKeySigner::random();
        chain.balances.lock().insert(payer.address(), U256::from(1_000_000));
        let chain = Arc::new(chain);
        let sender =
            Arc::new(FakeSender { chain: Arc::clone(&chain), sent: Default::default(), revert: false });
        let exact = Exact::new(terms(), store, Arc::clone(&chain), Arc::clone(&sender));
        Fixture { exact, chain, sender, payer }
    }

    fn fixture() -> Fixture<MemoryStore> {
        fixture_with(Arc::new(MemoryStore::new()), FakeChain::default())
    }

    fn authorization(from: Address) -> Authorization {
        let now = crate::unix_now();
        Authorization {
            from,
            to: PAYEE,
            value: U256::from(PRICE),
            valid_after: U256::ZERO,
            valid_before: U256::from(now + 60),
            nonce: B256::from(rand::random::<[u8; 32]>()),
        }
    }

    fn sign(key: &PrivateKeySigner, a: Authorization) -> ExactPayload {
        a.sign(key, &terms().domain()).unwrap()
    }

    fn high_s(sig: &[u8]) -> Bytes {
        const N: U256 = U256::from_be_bytes([
            0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE,
            0xBA, 0xAE, 0xDC, 0xE6, 0xAF, 0x48, 0xA0, 0x3B, 0xBF, 0xD2, 0x5E, 0x8C, 0xD0, 0x36, 0x41, 0x41,
        ]);
        let s = U256::from_be_slice(&sig[32..64]);
        let mut out = sig[..32].to_vec();
        out.extend_from_slice(&(N - s).to_be_bytes::<32>());
        out.push(if sig[64] == 27 { 28 } else { 27 });
        out.into()
    }

    #[tokio::test]
    async fn every_refusal() {
        let f = fixture();
        let from = f.payer.address();
        let now = crate::unix_now();
        let other = PrivateKeySigner::random();
        let used = authorization(from);
        f.chain.used.lock().insert((from, used.nonce));
        let domain_of = |name: &str, version: &str, chain: u64, token: Address| {
            TokenDomain::new(name.into(), version.into(), chain, token)
        };
        let signed_under = |domain: TokenDomain| authorization(from).sign(&f.payer, &domain).unwrap();
        let valid = sign(&f.payer, authorization(from));
        let cases: Vec<(&str, ExactPayload, &str)> = vec![
            (
                "wrong to",
                sign(&f.payer, Authorization { to: Address::repeat_byte(1), ..authorization(from) }),
                "recipient_mismatch",
            ),
            (
                "low value",
                sign(&f.payer, Authorization { value: U256::from(PRICE - 1), ..authorization(from) }),
                "value_mismatch",
            ),
            // The official facilitator wants the exact price: more is refused too.
            (
                "high value",
                sign(&f.payer, Authorization { value: U256::from(PRICE + 1), ..authorization(from) }),
                "value_mismatch",
            ),
            (
                "expired",
                sign(&f.payer, Authorization { valid_before: U256::from(now - 1), ..authorization(from) }),
                "valid_before",
            ),
            (
                "too close to expiry",
                sign(
                    &f.payer,
                    Authorization {
                        valid_before: U256::from(now + SETTLE_MARGIN - 1),
                        ..authorization(from)
                    },
                ),
                "valid_before",
            ),
            (
                "not yet valid",
                sign(&f.payer, Authorization { valid_after: U256::from(now + 30), ..authorization(from) }),
                "valid_after",
            ),
            ("reused nonce on-chain", sign(&f.payer, used), "nonce_already_used"),
            ("signed by another key", sign(&other, authorization(from)), "evm_signature"),
            (
                "high s",
                ExactPayload { signature: high_s(&valid.signature), ..valid.clone() },
                "evm_signature",
            ),
            (
                "v = 0",
                ExactPayload {
                    signature: {
                        let mut s = valid.signature.to_vec();
                        s[64] -= 27;
                        s.into()
                    },
                    ..valid.clone()
                },
                "evm_signature",
            ),
            (
                "64 bytes",
                ExactPayload { signature: valid.signature.slice(..64), ..valid.clone() },
                "evm_signature",
            ),
            ("wrong chain", signed_under(domain_of("Test USD", "1", 1, TOKEN)), "evm_signature"),
            (
                "wrong token",
                signed_under(domain_of("Test USD", "1", 31337, Address::repeat_byte(9))),
                "evm_signature",
            ),
            ("wrong name", signed_under(domain_of("USD Coin", "1", 31337, TOKEN)), "evm_signature"),
            ("wrong version", signed_under(domain_of("Test USD", "2", 31337, TOKEN)), "evm_signature"),
            (
                "poor payer",
                {
                    let poor = PrivateKeySigner::random();
                    sign(&poor, authorization(poor.address()))
                },
                "insufficient_balance",
            ),
        ];
        for (name, payload, reason) in cases {
            let err = f.exact.verify(&payload, U256::from(PRICE), now).await.expect_err(name);
            assert!(err.reason().contains(reason), "{name}: {err} ({})", err.reason());
        }
        assert_eq!(f.exact.verify(&valid, U256::from(PRICE), now).await, Ok(from));
        // A field changed after signing is a bad signature, whichever field.
        let tampered = ExactPayload {
            authorization: Authorization { value: U256::from(PRICE + 1), ..valid.authorization.clone() },
            ..valid
        };
        let err = f.exact.verify(&tampered, U256::from(PRICE + 1), now).await.unwrap_err();
        assert!(matches!(err, ExactRefusal::InvalidSignature { .. }), "{err}");
        assert!(f.sender.sent.lock().is_empty(), "nothing was sent");
    }

    #[tokio::test]
    async fn contract_wallets_and_simulation_failures_are_refused_clearly() {
        let wallet = Address::repeat_byte(0xca);
        let chain = FakeChain {
            code: HashMap::from([(wallet, Bytes::from_static(&[0x60, 0x80]))]),
            ..Default::default()
        };
        let f = fixture_with(Arc::new(MemoryStore::new()), chain);
        let payload = sign(&f.payer, authorization(wallet));
        let err = f.exact.verify(&payload, U256::from(PRICE), crate::unix_now()).await.unwrap_err();
        assert!(
            matches!(err, ExactRefusal::ContractWallet { .. }) && err.to_string().contains("ERC-1271"),
            "{err}"
        );

        let chain = FakeChain { revert: Some("AuthorizationNotInValidWindow".into()), ..Default::default() };
        let f = fixture_with(Arc::new(MemoryStore::new()), chain);
        let payload = sign(&f.payer, authorization(f.payer.address()));
        let err = f.exact.verify(&payload, U256::from(PRICE), crate::unix_now()).await.unwrap_err();
        assert_eq!(err.reason(), "invalid_exact_evm_transaction_simulation_failed");

        let chain = FakeChain { down: true, ..Default::default() };
        let f = fixture_with(Arc::new(MemoryStore::new()), chain);
        let payload = sign(&f.payer, authorization(f.payer.address()));
        let err = f.exact.reserve(payload, U256::from(PRICE)).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::Unavailable);
        assert!(f.exact.store.list(EXACT_AUTHORIZATIONS).unwrap().is_empty(), "nothing recorded");
    }

    #[tokio::test]
    async fn reserve_settle_and_replays() {
        let f = fixture();
        let payload = sign(&f.payer, authorization(f.payer.address()));
        let nonce = payload.authorization.nonce;
        let reserved = f.exact.reserve(payload.clone(), U256::from(PRICE)).await.unwrap();
        assert_eq!(f.exact.record(f.payer.address(), nonce).unwrap().unwrap().state, RecordState::Reserved);
        // Recorded: refused before it was even sent.
        let err = f.exact.reserve(payload.clone(), U256::from(PRICE)).await.unwrap_err();
        assert!(matches!(err, ExactRefusal::NonceUsed { .. }), "{err}");
        let settled = f.exact.settle(reserved).await.unwrap();
        assert_eq!((settled.payer, settled.amount), (f.payer.address(), U256::from(PRICE)));
        let sent = f.sender.sent.lock().clone();
        assert_eq!(sent, vec![payload.calldata().unwrap()]);
        let record = f.exact.record(f.payer.address(), nonce).unwrap().unwrap();
        assert_eq!((record.state, record.transaction), (RecordState::Settled, Some(settled.transaction)));
        let err = f.exact.reserve(payload, U256::from(PRICE)).await.unwrap_err();
        assert!(matches!(err, ExactRefusal::NonceUsed { .. }), "{err}");
        assert_eq!(f.sender.sent.lock().len(), 1);
    }

    #[tokio::test]
    async fn released_stays_refused_and_a_failed_transfer_is_an_error() {
        let f = fixture();
        let payload = sign(&f.payer, authorization(f.payer.address()));
        let reserved = f.exact.reserve(payload.clone(), U256::from(PRICE)).await.unwrap();
        f.exact.release(reserved).await;
        let record = f.exact.record(f.payer.address(), payload.authorization.nonce).unwrap().unwrap();
        assert_eq!(record.state, RecordState::Released);
        assert!(f.exact.reserve(payload, U256::from(PRICE)).await.is_err());
        assert!(f.sender.sent.lock().is_empty());

        let payer = PrivateKeySigner::random();
        let chain = FakeChain::default();
        chain.balances.lock().insert(payer.address(), U256::from(PRICE));
        let chain = Arc::new(chain);
        let sender =
            Arc::new(FakeSender { chain: Arc::clone(&chain), sent: Default::default(), revert: true });
        let exact = Exact::new(terms(), Arc::new(MemoryStore::new()), chain, sender);
        let payload = sign(&payer, authorization(payer.address()));
        let reserved = exact.reserve(payload.clone(), U256::from(PRICE)).await.unwrap();
        let err = exact.settle(reserved).await.unwrap_err();
        assert_eq!(err.reason(), "invalid_exact_evm_transaction_failed");
        assert_eq!(
            exact.record(payer.address(), payload.authorization.nonce).unwrap().unwrap().state,
            RecordState::Failed
        );
    }

    #[tokio::test]
    async fn an_authorisation_about_to_expire_is_not_sent() {
        let f = fixture();
        let now = crate::unix_now();
        let payload = sign(
            &f.payer,
            Authorization {
                valid_before: U256::from(now + SETTLE_MARGIN),
                ..authorization(f.payer.address())
            },
        );
        let reserved = f.exact.reserve(payload.clone(), U256::from(PRICE)).await.unwrap();
        // The upstream took the rest of the window.
        let late = Reserved {
            payload: ExactPayload {
                authorization: Authorization {
                    valid_before: U256::from(now + 1),
                    ..payload.authorization.clone()
                },
                ..payload.clone()
            },
            key: reserved.key,
        };
        let err = f.exact.settle(late).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::SettlementFailed, "{err}");
        assert!(f.sender.sent.lock().is_empty(), "not sent to revert");
        let record = f.exact.record(f.payer.address(), payload.authorization.nonce).unwrap().unwrap();
        assert_eq!(record.state, RecordState::Failed);
        drop(reserved);
    }

    #[tokio::test]
    async fn concurrent_replays_get_one_reservation() {
        let f = Arc::new(fixture());
        let payload = sign(&f.payer, authorization(f.payer.address()));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (f, payload) = (Arc::clone(&f), payload.clone());
                tokio::spawn(async move { f.exact.reserve(payload, U256::from(PRICE)).await.is_ok() })
            })
            .collect();
        let mut won = 0;
        for t in tasks {
            won += usize::from(t.await.unwrap());
        }
        assert_eq!(won, 1);
    }

    #[tokio::test]
    async fn the_guard_survives_a_restart_and_expired_records_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let payer = PrivateKeySigner::random();
        let payload = sign(&payer, authorization(payer.address()));
        {
            let store = Arc::new(SledStore::open(dir.path()).unwrap());
            let f = fixture_with(Arc::clone(&store), FakeChain::default());
            f.chain.balances.lock().insert(payer.address(), U256::from(PRICE));
            // Reserved, then the node dies before settling.
            std::mem::forget(f.exact.reserve(payload.clone(), U256::from(PRICE)).await.unwrap());
            drop(f);
            crate::gateway::close_store(store).await;
        }
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let f = fixture_with(Arc::clone(&store), FakeChain::default());
        f.chain.balances.lock().insert(payer.address(), U256::from(PRICE));
        let err = f.exact.reserve(payload.clone(), U256::from(PRICE)).await.unwrap_err();
        assert!(matches!(err, ExactRefusal::NonceUsed { .. }), "{err}");
        let now = crate::unix_now();
        assert_eq!(f.exact.prune(now).unwrap(), 0, "not expired yet");
        assert_eq!(f.exact.prune(now + 60 + PRUNE_AFTER + 1).unwrap(), 1);
        assert!(f.exact.record(payer.address(), payload.authorization.nonce).unwrap().is_none());
    }

    #[test]
    fn the_requirements_are_the_official_shape() {
        let json = serde_json::to_value(terms().requirements(U256::from(PRICE))).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "scheme": "exact",
                "network": "eip155:31337",
                "amount": "1000",
                "asset": TOKEN.to_checksum(None),
                "payTo": PAYEE.to_checksum(None),
                "maxTimeoutSeconds": 60,
                "extra": { "name": "Test USD", "version": "1" }
            })
        );
    }
}
