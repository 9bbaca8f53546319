//! The watcher (watchtower): guards a provider's channels while the provider is offline.
//!
//! A provider pushes the vouchers it accepted to the watcher (`POST /v1/vouchers`, see
//! [`x402_protocol::watch`]), each with the channel's parameters and the payee's signed
//! `ClaimAuthorization` of what it charged. The watcher verifies each one exactly as the
//! contract would (parameters against the channel id, the voucher signer's signature, the
//! payee's signature, the amounts against the chain) and keeps durably, per channel, the claim
//! that pays the payee the most. Its [`Guard`] follows the chain; when a payer starts a
//! unilateral exit (`requestExit`) on a watched channel, the guard submits the held claim with
//! `settleAuthorized` (or `settleManyAuthorized` for several channels at once) before the
//! challenge period ends, from the watcher's own key. The payout goes to the payee; the watcher
//! only pays the gas.
//!
//! Only the payee's signature lets anyone else claim, and it fixes the amount: a stranger
//! cannot claim (`NotPayee`), and the watcher claims what the provider charged, never the
//! voucher's ceiling. A payee-authorised claim does not depend on the exit: a payer's top-up
//! that cancels the exit does not void it.
//!
//! Pieces:
//! - [`Watcher`]: the push API's logic and the store of watched channels ([`Watcher::router`]
//!   serves it over HTTP).
//! - [`Guard`]: the chain follower; [`Guard::tick`] is one round, [`Guard::run`] the loop.
//! - [`run`]: both, as the `x402-watcher` binary and `x402-node watch` run them, with
//!   `GET /metrics` (the sender's counters).
//!
//! Storage (its own store, not the gateway's): namespace [`WATCHED`] holds one
//! [`WatchRecord`] per channel id; namespace [`META`] holds the deployment the store belongs
//! to; the guard's cursor and its claims in flight are kept by `x402-chain`'s follower and
//! sender (namespaces `follower` and `outbox`).
//!
//! Tracing targets: `watcher` (this crate), `chain::sender` and `chain::follower` (its sender and
//! follower).

mod api;
pub mod cli;
mod config;
mod guard;

use std::{
    collections::HashSet, fmt, future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration,
};

use alloy::{
    primitives::{Address, B256, U256},
    providers::{DynProvider, Provider},
    signers::local::PrivateKeySigner,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};
use x402_protocol::{
    ChannelDomain, SignedVoucher,
    bindings::IPaymentChannel,
    claim,
    watch::{
        RejectCode, WatchOutcome, WatchRequest, WatchResponse, WatchResult, WatchedChannel, WatchedStatus,
        WatchedVoucher,
    },
};
use x402_store::{KvStore, SledStore};

pub use self::{
    config::{KEY_ENV, WatcherConfig},
    guard::{Guard, GuardLogs, GuardSettings, Settlement, TickReport},
};
use x402_chain::{
    ChainError,
    channel::{OnchainChannel, StoredVoucher},
    reader::{ChainReader, RpcChain},
    verify::VoucherVerifier,
};
use x402_protocol::auth::BearerToken;

/// The store namespace holding one [`WatchRecord`] (JSON) per channel id.
pub const WATCHED: &str = "watched";
/// The store namespace of the watcher's own metadata: the deployment.
pub const META: &str = "watcher_meta";
pub use x402_protocol::auth::MIN_TOKEN_LEN;

const DEPLOYMENT_KEY: &[u8] = b"deployment";
/// Channels are locked in stripes: a fixed set of locks, chosen by the id's first byte.
const LOCK_STRIPES: usize = 64;

/// Errors of the watcher.
#[derive(Debug, thiserror::Error)]
pub enum WatcherError {
    /// A setting is missing or invalid.
    #[error("invalid watcher configuration: {0}")]
    Config(String),
    /// The store failed.
    #[error("storage: {0}")]
    Storage(#[from] x402_store::Error),
    /// A stored value could not be decoded.
    #[error("corrupt {what} in the watcher's store: {source}")]
    Corrupt {
        /// What was being read.
        what: String,
        /// Why it did not decode.
        source: serde_json::Error,
    },
    /// The data directory was created for another deployment: its vouchers are meaningless here.
    #[error(
        "the store belongs to contract {stored_contract} on chain {stored_chain_id}, not {contract} on \
         chain {chain_id}: use another data directory"
    )]
    DeploymentMismatch {
        /// The chain id the store was created for.
        stored_chain_id: u64,
        /// The contract the store was created for.
        stored_contract: Address,
        /// The configured chain id.
        chain_id: u64,
        /// The configured contract.
        contract: Address,
    },
    /// Reading the chain failed.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The configuration file cannot be read.
    #[error("cannot read the configuration file {path}: {source}")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML for the watcher.
    #[error("invalid configuration file {path}: {message}")]
    ParseConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong (the parser's message, without the file's contents).
        message: String,
    },
    /// The push API cannot listen or serve.
    #[error("cannot serve on {addr}: {source}")]
    Serve {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with [`WatcherError`].
pub type Result<T, E = WatcherError> = std::result::Result<T, E>;

pub(crate) fn check_token(token: &str) -> Result<(), WatcherError> {
    x402_protocol::auth::check_token(token).map_err(WatcherError::Config)
}

/// What the watcher stores about one channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRecord {
    /// The channel id.
    pub id: B256,
    /// The contract's facts, as last read.
    pub chain: OnchainChannel,
    /// The verified voucher of the claim paying the payee the most.
    pub voucher: StoredVoucher,
    /// What the claim pays the payee in total (≤ the voucher's amount).
    pub claimed: U256,
    /// The payee's signature over `ClaimAuthorization(channelId, nonce, claimed)`.
    pub payee_signature: alloy::primitives::Bytes,
    /// The watcher's last settlement transaction on this channel.
    pub last_tx: Option<B256>,
}

impl WatchRecord {
    /// The claim the watcher submits with the payee's signature (`settleAuthorized`).
    pub fn claim(&self) -> IPaymentChannel::Claim {
        IPaymentChannel::Claim {
            channel: self.chain.params.clone(),
            nonce: self.voucher.nonce,
            cumulativeAmount: self.voucher.cumulative_amount,
            claimed: self.claimed,
            signature: self.voucher.signature.clone(),
        }
    }

    /// The channel as the listing shows it.
    pub fn summary(&self) -> WatchedChannel {
        let c = &self.chain;
        let status = match (c.open, c.exit_at) {
            (false, _) => WatchedStatus::Closed,
            (true, 0) => WatchedStatus::Open,
            (true, _) => WatchedStatus::Exiting,
        };
        WatchedChannel {
            channel_id: self.id,
            payer: c.payer(),
            payee: c.payee(),
            token: c.token(),
            status,
            deposit: c.deposit,
            paid: c.paid,
            exit_at: c.exit_at,
            nonce: self.voucher.nonce,
            cumulative_amount: self.voucher.cumulative_amount,
            claimed: self.claimed,
            last_tx: self.last_tx,
        }
    }

    /// Whether an exit is pending on the channel, as last read (its period may have ended).
    pub const fn exiting(&self) -> bool {
        self.chain.open && self.chain.exit_at != 0
    }
}

/// The deployment a store belongs to.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Deployment {
    chain_id: u64,
    contract: Address,
}

struct Inner<S, C> {
    verifier: VoucherVerifier,
    store: Arc<S>,
    chain: C,
    /// The bearer token of the push API.
    token: BearerToken,
    locks: Box<[tokio::sync::Mutex<()>]>,
    /// Channels the guard must re-read with `getChannel` on its next round.
    recheck: parking_lot::Mutex<HashSet<B256>>,
    /// Wakes the guard early: a voucher arrived for a channel that may need it now.
    wake: tokio::sync::Notify,
}

/// The push API's logic and the store of watched channels. Cheap to clone.
pub struct Watcher<S, C> {
    inner: Arc<Inner<S, C>>,
}

impl<S, C> Clone for Watcher<S, C> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner) }
    }
}

impl<S, C> fmt::Debug for Watcher<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let domain = self.inner.verifier.domain();
        f.debug_struct("Watcher")
            .field("chain_id", &domain.chain_id())
            .field("contract", &domain.contract())
            .finish_non_exhaustive()
    }
}

/// How a pushed voucher fared before it is compared with the held one.
type Verdict = Result<(), (RejectCode, String)>;

impl<S: KvStore, C: ChainReader> Watcher<S, C> {
    /// A watcher of the contract `contract` on chain `chain_id`, accepting pushes with the
    /// bearer `token`, keeping its state in `store` and reading channels through `chain`.
    ///
    /// Refuses a store created for another deployment. Every open channel in the store is
    /// queued for a `getChannel` re-check on the guard's first round: an exit may have been
    /// requested while the watcher was down.
    pub fn new(
        chain_id: u64,
        contract: Address,
        token: &str,
        store: Arc<S>,
        chain: C,
    ) -> Result<Self, WatcherError> {
        check_token(token)?;
        let deployment = Deployment { chain_id, contract };
        match store.get(META, DEPLOYMENT_KEY)? {
            Some(bytes) => {
                let stored: Deployment = decode(&bytes, "deployment")?;
                if stored != deployment {
                    return Err(WatcherError::DeploymentMismatch {
                        stored_chain_id: stored.chain_id,
                        stored_contract: stored.contract,
                        chain_id,
                        contract,
                    });
                }
            }
            None => store.put(META, DEPLOYMENT_KEY, &encode(&deployment))?,
        }
        let watcher = Self {
            inner: Arc::new(Inner {
                verifier: VoucherVerifier::new(chain_id, contract),
                store,
                chain,
                token: BearerToken::new(token),
                locks: (0..LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
                recheck: parking_lot::Mutex::default(),
                wake: tokio::sync::Notify::new(),
            }),
        };
        let open: HashSet<B256> =
            watcher.channels()?.into_iter().filter(|r| r.chain.open).map(|r| r.id).collect();
        debug!(target: "watcher", channels = open.len(), "watched channels loaded");
        *watcher.inner.recheck.lock() = open;
        Ok(watcher)
    }

    /// The EIP-712 domain vouchers are checked under.
    pub fn domain(&self) -> &ChannelDomain {
        self.inner.verifier.domain()
    }

    /// The store.
    pub fn store(&self) -> &Arc<S> {
        &self.inner.store
    }

    /// The chain reader.
    pub fn chain(&self) -> &C {
        &self.inner.chain
    }

    /// Whether `presented` is the bearer token, compared in constant time.
    pub fn authorized(&self, presented: &str) -> bool {
        self.inner.token.matches(presented)
    }

    /// The bearer token of the push API.
    pub(crate) fn token(&self) -> &BearerToken {
        &self.inner.token
    }

    /// Every watched channel, in id order.
    pub fn channels(&self) -> Result<Vec<WatchRecord>, WatcherError> {
        self.inner.store.list(WATCHED)?.iter().map(|(_, v)| decode(v, "channel record")).collect()
    }

    /// The record of one channel, if watched.
    pub fn record(&self, id: B256) -> Result<Option<WatchRecord>, WatcherError> {
        self.load(id)
    }

    /// Takes a batch of pushed vouchers: checks each, keeps per channel the one paying the
    /// most, and returns once every stored voucher is durable. One result per voucher, in
    /// order; an error only if the store failed (then nothing may be assumed durable).
    pub async fn watch(&self, request: WatchRequest) -> Result<WatchResponse, WatcherError> {
        let mut results = Vec::with_capacity(request.vouchers.len());
        for pushed in request.vouchers {
            let outcome = self.watch_one(&pushed).await?;
            results.push(WatchResult {
                channel_id: pushed.channel_id,
                nonce: pushed.nonce,
                cumulative_amount: pushed.cumulative_amount,
                outcome,
            });
        }
        // Also when nothing new was written: an identical voucher stored by an earlier request
        // whose sync failed is reported as stored, so it must be made durable now.
        self.inner.store.sync().await?;
        Ok(WatchResponse { results })
    }

    /// Checks one pushed claim and stores it if it pays more than the held one. Not yet
    /// durable.
    async fn watch_one(&self, pushed: &WatchedVoucher) -> Result<WatchOutcome, WatcherError> {
        let id = pushed.channel_id;
        let domain = self.domain();
        if pushed.params.channel_id(domain.chain_id(), domain.contract()) != id {
            return Ok(rejected(
                RejectCode::ParamsMismatch,
                format!("the parameters do not hash to channel {id} at this contract and chain"),
            ));
        }
        let _lock = self.lock(id).await;
        let held = self.load(id)?;
        let (nonce, claimed) = (pushed.nonce, pushed.claimed);

        // The chain's facts: cached for a watched channel, read for a new one.
        let mut chain = match &held {
            Some(record) => record.chain.clone(),
            None => {
                if let Err(e) = self.inner.chain.learn_params(id, pushed.params.clone()).await {
                    return Ok(unavailable(e));
                }
                match self.inner.chain.channel(id).await {
                    Ok(Some(chain)) => chain,
                    Ok(None) => {
                        return Ok(rejected(
                            RejectCode::ChannelUnknown,
                            format!("channel {id} does not exist at the watcher's contract"),
                        ));
                    }
                    Err(e) => return Ok(unavailable(e)),
                }
            }
        };
        if let Some(record) = &held
            && chain.open
            && pushed.cumulative_amount > chain.deposit
        {
            // The payer may have topped up since the watcher last looked.
            match self.inner.chain.channel(id).await {
                Ok(Some(fresh)) => {
                    chain = fresh;
                    if chain != record.chain {
                        let mut updated = record.clone();
                        updated.chain = chain.clone();
                        self.persist(&updated)?;
                    }
                }
                Ok(None) => warn!(target: "watcher", %id, "watched channel no longer exists"),
                Err(e) => return Ok(unavailable(e)),
            }
        }

        if let Err((code, message)) = self.check(pushed, &chain).await {
            debug!(target: "watcher", %id, nonce, %claimed, %code, %message, "claim rejected");
            return Ok(rejected(code, message));
        }

        if let Some(record) = &held {
            let kept = (record.claimed, record.voucher.nonce);
            if kept == (claimed, nonce) {
                return Ok(WatchOutcome::Stored);
            }
            if kept > (claimed, nonce) {
                return Ok(WatchOutcome::Kept { held_nonce: kept.1, held_amount: kept.0 });
            }
        }
        let record = WatchRecord {
            id,
            chain,
            voucher: StoredVoucher {
                nonce,
                cumulative_amount: pushed.cumulative_amount,
                signature: pushed.signature.clone(),
            },
            claimed,
            payee_signature: pushed.payee_signature.clone(),
            last_tx: held.as_ref().and_then(|r| r.last_tx),
        };
        self.persist(&record)?;
        if held.is_none() {
            info!(
                target: "watcher",
                %id,
                nonce,
                %claimed,
                exiting = record.exiting(),
                "watching a new channel"
            );
            // The guard may have scanned past this channel's `ExitRequested` before the channel
            // was watched: it re-reads the channel after this write.
            self.inner.recheck.lock().insert(id);
            self.inner.wake.notify_one();
        } else if record.exiting() {
            info!(target: "watcher", %id, nonce, %claimed, "claim stored during an exit");
            // Submit it without waiting for the next poll.
            self.inner.wake.notify_one();
        } else {
            debug!(target: "watcher", %id, nonce, %claimed, "claim stored");
        }
        Ok(WatchOutcome::Stored)
    }

    /// The checks a claim must pass, cheapest first, against `chain` (possibly cached: its
    /// paid and status only move forward, so a stale view never refuses a good claim for
    /// those; the deposit is re-read before refusing). The signatures are checked by the
    /// contract's rule: ECDSA first, ERC-1271 only otherwise.
    async fn check(&self, pushed: &WatchedVoucher, chain: &OnchainChannel) -> Verdict {
        let (amount, claimed) = (pushed.cumulative_amount, pushed.claimed);
        if !chain.open {
            return Err((RejectCode::ChannelClosed, "the channel is closed on-chain".into()));
        }
        if claimed > amount {
            return Err((
                RejectCode::InvalidClaimAuthorization,
                format!("the claim of {claimed} is above the voucher's {amount}"),
            ));
        }
        if amount > chain.deposit {
            return Err((
                RejectCode::ExceedsDeposit,
                format!("cumulative amount {amount} exceeds the deposit {}", chain.deposit),
            ));
        }
        if claimed <= chain.paid {
            return Err((
                RejectCode::Stale,
                format!("the claim of {claimed} does not exceed the {} already paid on-chain", chain.paid),
            ));
        }
        let signed: SignedVoucher = pushed.voucher();
        let unavailable = |e: x402_chain::verify::CheckError| (RejectCode::Unavailable, e.to_string());
        let digest = self.inner.verifier.digest(&signed.voucher);
        let chain_reader = &self.inner.chain;
        let valid = x402_chain::verify::signed_by_channel_signer(
            chain_reader,
            chain,
            digest,
            &signed.signature,
            &mut None,
            true,
        )
        .await
        .map_err(unavailable)?;
        if !valid {
            return Err((
                RejectCode::InvalidSignature,
                format!(
                    "not signed by the channel's signer {} under chain {} contract {}",
                    chain.signer(),
                    self.domain().chain_id(),
                    self.domain().contract()
                ),
            ));
        }
        let digest = claim::digest(self.domain(), pushed.channel_id, pushed.nonce, claimed);
        let payee = chain.payee();
        let valid = x402_chain::verify::signed_by(
            chain_reader,
            payee,
            digest,
            &pushed.payee_signature,
            &mut None,
            true,
        )
        .await
        .map_err(unavailable)?;
        if !valid {
            return Err((
                RejectCode::InvalidClaimAuthorization,
                format!("the claim authorisation is not signed by the channel's payee {payee}"),
            ));
        }
        Ok(())
    }

    /// Re-reads a watched channel from the chain and stores what changed. `None` if the
    /// channel is not watched.
    pub async fn refresh(&self, id: B256) -> Result<Option<WatchRecord>, WatcherError> {
        let _lock = self.lock(id).await;
        let Some(mut record) = self.load(id)? else { return Ok(None) };
        match self.inner.chain.channel(id).await? {
            Some(chain) => {
                if record.chain.update_from(chain) {
                    let chain = &record.chain;
                    debug!(
                        target: "watcher",
                        %id,
                        open = chain.open,
                        exit_at = chain.exit_at,
                        paid = %chain.paid,
                        "channel changed on-chain"
                    );
                    self.persist(&record)?;
                }
            }
            // Only a reorg can un-open a channel; keep what we know.
            None => warn!(target: "watcher", %id, "watched channel not found on-chain"),
        }
        Ok(Some(record))
    }

    /// Applies `f` to a watched channel's record and stores it (not yet durable).
    pub(crate) async fn update(
        &self,
        id: B256,
        f: impl FnOnce(&mut WatchRecord),
    ) -> Result<Option<WatchRecord>, WatcherError> {
        let _lock = self.lock(id).await;
        let Some(mut record) = self.load(id)? else { return Ok(None) };
        f(&mut record);
        self.persist(&record)?;
        Ok(Some(record))
    }

    /// Queues channels for a `getChannel` re-check on the guard's next round.
    pub fn mark_for_recheck(&self, ids: impl IntoIterator<Item = B256>) {
        self.inner.recheck.lock().extend(ids);
    }

    /// Takes the channels queued for a re-check.
    pub(crate) fn take_rechecks(&self) -> Vec<B256> {
        let mut ids: Vec<B256> = self.inner.recheck.lock().drain().collect();
        ids.sort_unstable();
        ids
    }

    /// Resolves when a push asks the guard to run early.
    pub(crate) async fn woken(&self) {
        self.inner.wake.notified().await;
    }

    /// Whether the channel is watched and still open as last read.
    pub(crate) fn watches_open(&self, id: B256) -> Result<bool, WatcherError> {
        Ok(self.load(id)?.is_some_and(|r| r.chain.open))
    }

    async fn lock(&self, id: B256) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.locks[usize::from(id.0[0]) % LOCK_STRIPES].lock().await
    }

    fn load(&self, id: B256) -> Result<Option<WatchRecord>, WatcherError> {
        self.inner.store.get(WATCHED, id.as_slice())?.map(|b| decode(&b, "channel record")).transpose()
    }

    fn persist(&self, record: &WatchRecord) -> Result<(), WatcherError> {
        Ok(self.inner.store.put(WATCHED, record.id.as_slice(), &encode(record))?)
    }
}

fn rejected(code: RejectCode, message: String) -> WatchOutcome {
    WatchOutcome::Rejected { code, message }
}

fn unavailable(e: ChainError) -> WatchOutcome {
    rejected(RejectCode::Unavailable, format!("chain unavailable: {e}"))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of primitives: serialising cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, WatcherError> {
    serde_json::from_slice(bytes).map_err(|source| WatcherError::Corrupt { what: what.into(), source })
}

/// How long one RPC call of the watcher may take before it fails (and is retried).
pub const RPC_TIMEOUT: std::time::Duration = x402_chain::rpc::RPC_TIMEOUT;

/// The provider the watcher reads the chain through; every call times out after
/// [`RPC_TIMEOUT`], so a connection that never answers cannot keep the guard from settling
/// before a challenge period ends. It signs nothing: the guard's claims go through its
/// [`TxSender`](x402_chain::TxSender).
pub fn settlement_provider(rpc_url: &str) -> Result<DynProvider, WatcherError> {
    Ok(x402_chain::rpc::http_provider(rpc_url, RPC_TIMEOUT)?)
}

/// Runs the watcher described by `config`, settling from `key`'s account, until `shutdown`
/// resolves: the push API on `config.listen` and the guard following the chain.
///
/// `key` pays the gas of settlements (it needs native tokens); payouts go to the payees.
pub async fn run(
    config: WatcherConfig,
    key: PrivateKeySigner,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    config.validate()?;
    let from = key.address();
    let provider = settlement_provider(&config.rpc_url)?;
    let rpc_chain_id = provider.get_chain_id().await.map_err(x402_chain::error::rpc("eth_chainId"))?;
    if let Some(configured) = config.chain_id
        && configured != rpc_chain_id
    {
        return Err(WatcherError::Config(format!(
            "the RPC serves chain {rpc_chain_id}, not the configured chain {configured}"
        )));
    }
    let code = provider.get_code_at(config.contract).await.map_err(x402_chain::error::rpc("eth_getCode"))?;
    if code.is_empty() {
        return Err(WatcherError::Config(format!(
            "no contract at {} on chain {rpc_chain_id}",
            config.contract
        )));
    }
    match provider.get_balance(from).await {
        Ok(balance) if balance == U256::ZERO => {
            warn!(
                target: "watcher",
                watcher = %from,
                "the watcher's account has no funds: it cannot pay for settlements"
            );
        }
        Ok(_) => {}
        Err(e) => {
            warn!(target: "watcher", watcher = %from, error = %e, "cannot read the watcher's balance")
        }
    }

    let store = Arc::new(SledStore::open(&config.data_dir)?);
    let watcher = Watcher::new(
        rpc_chain_id,
        config.contract,
        &config.token,
        Arc::clone(&store),
        RpcChain::new(provider.clone(), config.contract),
    )?;
    let guard = Guard::new(watcher.clone(), provider, key, config.guard_settings());
    // `GET /metrics`: the sender's counters, the alert of a claim not mined by its exit's end
    // among them.
    let registry = prometheus::Registry::new();
    guard
        .sender()
        .metrics()
        .register(&registry)
        .map_err(|e| WatcherError::Config(format!("metrics: {e}")))?;
    let metrics = axum::routing::get(move || {
        let registry = registry.clone();
        async move {
            let mut buf = Vec::new();
            let _ =
                prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut buf);
            String::from_utf8(buf).unwrap_or_default()
        }
    });

    let serve_error = |source| WatcherError::Serve { addr: config.listen, source };
    let listener = tokio::net::TcpListener::bind(config.listen).await.map_err(serve_error)?;
    info!(
        target: "watcher",
        listen = %listener.local_addr().map_err(serve_error)?,
        contract = %config.contract,
        chain_id = rpc_chain_id,
        watcher = %from,
        channels = watcher.channels()?.len(),
        "watcher started"
    );

    let (stop_guard, guard_stopped) = tokio::sync::oneshot::channel::<()>();
    let poll = config.poll_interval;
    let guard_task = tokio::spawn(async move {
        guard
            .run(poll, async move {
                let _ = guard_stopped.await;
            })
            .await;
    });
    let app = watcher.router().route("/metrics", metrics);
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    let _ = stop_guard.send(());
    if let Err(e) = guard_task.await {
        warn!(target: "watcher", error = %e, "guard task failed");
    }
    drop(watcher);
    close_store(store).await;
    served.map_err(serve_error)?;
    info!(target: "watcher", "watcher stopped");
    Ok(())
}

/// Waits (up to 5 s) until `store` has no other user, so that it closes (and flushes) when
/// dropped here.
async fn close_store(store: Arc<SledStore>) {
    for _ in 0..500 {
        if Arc::strong_count(&store) == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    warn!(target: "watcher", "store still in use at shutdown; it closes when the last user ends");
}

#[cfg(test)]
mod tests;
