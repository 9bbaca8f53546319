//! The payment engine: turns a payment header into an accepted, durably stored voucher.
//!
//! Per request: decode → check version/scheme/network → lock the channel (requests on one
//! channel are serialised, different channels run in parallel) → load the channel (memory,
//! then the store, then — once — the chain) → check the voucher against the node's state →
//! verify the signature → on [`Pending::commit`], store the voucher and
//! wait for the group commit to make it durable. Only then is the response released.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use alloy::primitives::{Address, B256, Bytes, U256};
use dashmap::DashMap;
use secp256k1::PublicKey;
use tokio::sync::{Mutex, OwnedMutexGuard};
use tracing::{debug, info, warn};
use x402_protocol::{
    Network, SignedVoucher,
    close::{CloseRequestBody, CloseResponse, SignedCloseAuthorization},
    voucher::{DOMAIN_NAME, DOMAIN_VERSION},
    wire::{
        self, ChannelExtra, ChannelState, ErrorCode, PaymentPayload, PaymentRequired, PaymentRequirements,
        Pricing, Resource, SessionGrant, SettlementExtra, SettlementResponse,
    },
};
use x402_store::KvStore;

use crate::{
    Refusal,
    chain::ChainReader,
    channel::{ChannelRecord, ChannelStatus, OnchainChannel},
    metrics::Metrics,
    verify::{VoucherVerifier, signed_by_channel_signer},
};

/// The store namespace holding one [`ChannelRecord`] per channel id.
pub const CHANNELS: &str = "channels";

/// How long a channel id the chain did not know is refused without asking again.
const UNKNOWN_TTL: Duration = Duration::from_secs(2);
/// The most channel ids remembered as unknown.
const UNKNOWN_CAPACITY: usize = 65_536;
/// The most chain lookups in flight at once.
const MAX_CONCURRENT_LOOKUPS: usize = 32;

/// The node's payment terms.
#[derive(Clone, Debug)]
pub struct Terms {
    /// The chain.
    pub chain_id: u64,
    /// The `PaymentChannel` contract.
    pub contract: Address,
    /// The provider: the payee channels must pay.
    pub payee: Address,
    /// The token accepted (zero: the native token).
    pub asset: Address,
    /// The shortest challenge period accepted, in seconds.
    pub min_challenge_period: u64,
    /// The smallest deposit accepted.
    pub min_deposit: U256,
    /// Advertised `maxTimeoutSeconds`.
    pub max_timeout_seconds: u64,
    /// Whether channels whose voucher signer is a contract (ERC-1271: its wallet decides at
    /// redemption time, so it can revoke what it signed) are accepted.
    pub accept_contract_signers: bool,
}

/// The price of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Price {
    /// The price, or for [`Pricing::Upto`] the most one request may cost.
    pub amount: U256,
    /// Fixed, or the actual cost up to `amount`.
    pub pricing: Pricing,
    /// What the route does (shown in the 402).
    pub description: Option<String>,
    /// The MIME type of the paid response (shown in the 402).
    pub mime_type: Option<String>,
}

impl Price {
    /// A fixed price.
    pub const fn exact(amount: U256) -> Self {
        Self { amount, pricing: Pricing::Exact, description: None, mime_type: None }
    }

    /// A dynamic price of at most `max`: the handler reports the actual cost with a
    /// [`Charge`](crate::middleware::Charge) response extension.
    pub const fn upto(max: U256) -> Self {
        Self { amount: max, pricing: Pricing::Upto, description: None, mime_type: None }
    }

    /// Sets the description.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }
}

#[derive(Debug, Default)]
struct Slot {
    record: Option<ChannelRecord>,
    key: Option<PublicKey>,
    /// The session of the channel's prepaid credit window, in memory only: a restarted node
    /// has none, and clients fall back to signing.
    session: Option<Session>,
    /// The record in memory is ahead of the store (charges made with a session token, written
    /// by [`Engine::flush_charges`]).
    dirty: bool,
}

/// A granted session: the token and how many more requests it may pay for.
#[derive(Debug)]
struct Session {
    token: [u8; 32],
    uses: u32,
}

/// Channels whose latest voucher changed, for pushing to watchers. Off until
/// [`VoucherFeed::enable`] is called, so a node without watchers keeps no set.
#[derive(Debug, Default)]
pub struct VoucherFeed {
    on: AtomicBool,
    dirty: parking_lot::Mutex<HashSet<B256>>,
    count: AtomicU64,
    notify: tokio::sync::Notify,
}

impl VoucherFeed {
    /// Starts recording changed channels.
    pub fn enable(&self) {
        self.on.store(true, Ordering::Release);
    }

    fn record(&self, id: B256) {
        if self.on.load(Ordering::Acquire) {
            self.dirty.lock().insert(id);
            self.count.fetch_add(1, Ordering::AcqRel);
            self.notify.notify_one();
        }
    }

    /// How many vouchers were stored since the feed was enabled.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Takes the set of channels changed since the last call.
    pub fn drain(&self) -> HashSet<B256> {
        std::mem::take(&mut *self.dirty.lock())
    }

    /// Waits until a voucher is stored.
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

struct Inner<S, C> {
    terms: Terms,
    network: Network,
    /// `network` as sent on the wire, compared against every payment.
    network_id: String,
    /// The revenue counter of the node's token, resolved once.
    revenue: prometheus::Counter,
    verifier: VoucherVerifier,
    store: Arc<S>,
    chain: C,
    channels: DashMap<B256, Arc<Mutex<Slot>>>,
    /// Ids the chain recently said do not exist: requests naming random ids cost no RPC call.
    unknown: parking_lot::Mutex<std::collections::HashMap<B256, (Instant, Option<Refusal>)>>,
    lookups: tokio::sync::Semaphore,
    metrics: Metrics,
    feed: VoucherFeed,
    /// The most requests one voucher may pay ahead for; 1: no sessions.
    credit_window: AtomicU32,
    /// Channels whose record in memory is ahead of the store.
    dirty: parking_lot::Mutex<HashSet<B256>>,
}

/// The payment engine. Cheap to clone.
pub struct Engine<S, C> {
    inner: Arc<Inner<S, C>>,
}

impl<S, C> Clone for Engine<S, C> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner) }
    }
}

impl<S, C> std::fmt::Debug for Engine<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("terms", &self.inner.terms).finish_non_exhaustive()
    }
}

impl<S: KvStore, C: ChainReader> Engine<S, C> {
    /// An engine with `terms`, storing into `store` and reading the chain through `chain`.
    pub fn new(terms: Terms, store: Arc<S>, chain: C, metrics: Metrics) -> Self {
        let verifier = VoucherVerifier::new(terms.chain_id, terms.contract);
        let network = Network::new(terms.chain_id);
        let revenue = metrics.revenue.with_label_values(&[terms.asset.to_string().as_str()]);
        Self {
            inner: Arc::new(Inner {
                terms,
                network,
                network_id: network.to_string(),
                revenue,
                verifier,
                store,
                chain,
                channels: DashMap::new(),
                unknown: parking_lot::Mutex::default(),
                lookups: tokio::sync::Semaphore::new(MAX_CONCURRENT_LOOKUPS),
                metrics,
                feed: VoucherFeed::default(),
                credit_window: AtomicU32::new(1),
                dirty: parking_lot::Mutex::default(),
            }),
        }
    }

    /// Lets a voucher pay ahead for up to `k` requests (a credit window): the node then grants
    /// a session token for the prepaid rest, and requests presenting it are served with a
    /// constant-time compare instead of a signature check. `k <= 1` turns sessions off (the
    /// default). What a client prepays is at its own risk, and small: it bounds `k` itself.
    pub fn set_credit_window(&self, k: u32) {
        self.inner.credit_window.store(k.max(1), Ordering::Relaxed);
    }

    /// The credit window (1: off).
    pub fn credit_window(&self) -> u32 {
        self.inner.credit_window.load(Ordering::Relaxed)
    }

    /// The terms.
    pub fn terms(&self) -> &Terms {
        &self.inner.terms
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The store.
    pub fn store(&self) -> &Arc<S> {
        &self.inner.store
    }

    /// The chain reader.
    pub fn chain(&self) -> &C {
        &self.inner.chain
    }

    /// The EIP-712 domain of the node's contract.
    pub fn domain(&self) -> &x402_protocol::ChannelDomain {
        self.inner.verifier.domain()
    }

    /// The feed of channels whose latest voucher changed.
    pub fn voucher_feed(&self) -> &VoucherFeed {
        &self.inner.feed
    }

    /// Whether the node has a record of the channel.
    pub fn knows(&self, id: B256) -> Result<bool, Refusal> {
        if self.inner.channels.contains_key(&id) {
            return Ok(true);
        }
        Ok(self.inner.store.get(CHANNELS, id.as_slice()).map_err(Refusal::storage)?.is_some())
    }

    /// One channel's record: the node's current one if it is in memory (and not locked by a
    /// request right now), else the store's.
    pub fn channel(&self, id: B256) -> Result<Option<ChannelRecord>, Refusal> {
        if let Some(slot) = self.inner.channels.get(&id).map(|s| Arc::clone(&s))
            && let Ok(guard) = slot.try_lock()
            && let Some(record) = guard.record.as_ref()
        {
            return Ok(Some(record.clone()));
        }
        self.inner
            .store
            .get(CHANNELS, id.as_slice())
            .map_err(Refusal::storage)?
            .map(|b| decode_record(&b))
            .transpose()
    }

    /// Applies fresh on-chain facts of a channel (from the event follower or after a
    /// settlement). `None` means the channel does not exist in a confirmed block. A channel the
    /// node has no record of is recorded if `adopt` is set. Returns the status after the
    /// update, if the node has a record. The change is written to the store but not synced:
    /// call [`KvStore::sync`] after a batch of updates.
    pub async fn sync_channel(
        &self,
        id: B256,
        chain: Option<OnchainChannel>,
        adopt: bool,
    ) -> Result<Option<ChannelStatus>, Refusal> {
        let slot = Arc::clone(&*self.inner.channels.entry(id).or_default());
        let mut guard = slot.lock().await;
        self.load_stored(id, &mut guard)?;
        let status = match (guard.record.as_mut(), chain) {
            (Some(record), Some(chain)) => {
                let before = record.status;
                if record.sync_chain(chain) {
                    self.persist(record)?;
                    if record.status != before {
                        debug!(target: "node::engine", %id, from = ?before, to = ?record.status, "channel status changed");
                    }
                }
                Some(record.status)
            }
            (Some(record), None) => {
                if record.vanish() {
                    warn!(target: "node::engine", %id, "channel no longer on the confirmed chain; refusing vouchers");
                    self.persist(record)?;
                }
                Some(record.status)
            }
            (None, Some(chain)) if adopt => {
                let mut record = ChannelRecord::new(id, chain);
                record.settled_at = crate::unix_now();
                self.persist(&record)?;
                let status = record.status;
                guard.record = Some(record);
                Some(status)
            }
            (None, _) => None,
        };
        if status.is_none() || status == Some(ChannelStatus::Closed) {
            // Closed channels are forgotten in memory; their tombstone stays in the store.
            drop(guard);
            self.inner.channels.remove(&id);
        }
        Ok(status)
    }

    /// Changes a stored channel's record under its lock; `f` returns whether it changed
    /// anything, and only then is the record written (not synced).
    pub async fn update_channel(
        &self,
        id: B256,
        f: impl FnOnce(&mut ChannelRecord) -> bool,
    ) -> Result<Option<ChannelRecord>, Refusal> {
        let slot = Arc::clone(&*self.inner.channels.entry(id).or_default());
        let mut guard = slot.lock().await;
        self.load_stored(id, &mut guard)?;
        let Some(record) = guard.record.as_mut() else {
            drop(guard);
            self.inner.channels.remove(&id);
            return Ok(None);
        };
        if f(record) {
            self.persist(record)?;
        }
        Ok(Some(record.clone()))
    }

    /// A client's cooperative close request: checks the signature of the channel's signer,
    /// stops accepting vouchers on the channel, and, given the provider's key, signs a close
    /// authorisation at what the node charged, valid for `ttl` seconds. Durable before it
    /// returns.
    pub async fn request_close(
        &self,
        body: &CloseRequestBody,
        authorizer: Option<&(dyn alloy::signers::SignerSync + Send + Sync)>,
        ttl: u64,
        queued: bool,
    ) -> Result<CloseResponse, Refusal> {
        let now = crate::unix_now();
        if body.deadline < now {
            return Err(Refusal::new(
                ErrorCode::InvalidPayload,
                format!("the close request expired at {}", body.deadline),
            ));
        }
        let id = body.channel_id;
        let mut guard = self.lock_live(id).await?;
        self.check_signer(&mut guard, body.digest(self.domain()), &body.signature, "close request").await?;

        let record = guard.record.as_mut().ok_or_else(|| Refusal::unknown(id))?;
        let before = record.clone();
        record.request_close(now);
        let final_amount = record.final_amount();
        let authorization = match authorizer {
            Some(key) => {
                let deadline = now + ttl;
                if let Some(close) = record.close.as_mut() {
                    close.authorization_deadline = close.authorization_deadline.max(deadline);
                }
                Some(
                    SignedCloseAuthorization::sign(self.domain(), key, id, final_amount, deadline)
                        .map_err(|e| Refusal::new(ErrorCode::Unavailable, format!("cannot sign: {e}")))?,
                )
            }
            None => None,
        };
        let response = CloseResponse {
            channel_id: id,
            final_amount,
            refund: record.chain.deposit.saturating_sub(final_amount),
            queued,
            authorization,
        };
        let record = record.clone();
        if let Err(e) = self.persist(&record) {
            guard.record = Some(before);
            return Err(e);
        }
        // The authorisation must not leave the node before the promise it implies (no more
        // vouchers on this channel) is durable.
        if let Err(e) = self.inner.store.sync().await {
            let _ = self.persist(&before);
            guard.record = Some(before);
            return Err(Refusal::storage(e));
        }
        info!(target: "node::engine", %id, %final_amount, queued, "cooperative close requested");
        Ok(response)
    }

    /// The payment requirements of a route.
    pub fn requirements(&self, price: &Price, channel: Option<ChannelState>) -> PaymentRequirements {
        let t = &self.inner.terms;
        PaymentRequirements {
            scheme: wire::SCHEME.into(),
            network: self.inner.network,
            amount: price.amount,
            asset: t.asset,
            pay_to: t.payee,
            max_timeout_seconds: t.max_timeout_seconds,
            extra: ChannelExtra {
                contract: t.contract,
                name: DOMAIN_NAME.into(),
                version: DOMAIN_VERSION.into(),
                min_challenge_period: t.min_challenge_period,
                min_deposit: t.min_deposit,
                pricing: price.pricing,
                channel,
                max_credit_window: Some(self.credit_window()).filter(|&k| k > 1),
            },
        }
    }

    /// The body of a 402 for `url`, explaining `refusal` if a payment was refused.
    pub fn payment_required(&self, url: &str, price: &Price, refusal: Option<&Refusal>) -> PaymentRequired {
        PaymentRequired {
            x402_version: wire::X402_VERSION,
            error: Some(refusal.map_or(ErrorCode::PaymentRequired, |r| r.code)),
            message: Some(refusal.map_or_else(|| "payment required".to_owned(), |r| r.message.clone())),
            resource: Resource {
                url: url.to_owned(),
                description: price.description.clone(),
                mime_type: price.mime_type.clone(),
            },
            accepts: vec![self.requirements(price, refusal.and_then(|r| r.state.as_deref().cloned()))],
        }
    }

    /// The node's state of a channel it knows, for a 402 that names the channel.
    pub async fn channel_state(&self, id: B256) -> Option<ChannelState> {
        let slot = self.inner.channels.get(&id).map(|s| Arc::clone(&s))?;
        let guard = slot.lock().await;
        guard.record.as_ref().map(ChannelRecord::state)
    }

    /// Every channel the node has in memory or in its store, with every charge made so far
    /// (see [`Self::flush_charges`]).
    pub async fn channels(&self) -> Result<Vec<ChannelRecord>, Refusal> {
        self.flush_charges().await?;
        let entries = self.inner.store.list(CHANNELS).map_err(Refusal::storage)?;
        entries.iter().map(|(_, v)| decode_record(v)).collect()
    }

    /// Writes the charges made with session tokens since the last write to the store (not
    /// synced: call [`KvStore::sync`] to make them durable). Requests paid from a prepaid
    /// window update the record in memory only, so that they cost no store write; the
    /// gateway calls this every second and before it stops, the settler before every round,
    /// and any other write of the record (a voucher, a chain event, a close request) takes
    /// them along. A crash can only lose charges inside windows the clients prepaid: the node
    /// then claims less, never more.
    pub async fn flush_charges(&self) -> Result<usize, Refusal> {
        let mut ids: Vec<B256> = self.inner.dirty.lock().drain().collect();
        let mut written = 0;
        while let Some(id) = ids.pop() {
            let Some(slot) = self.inner.channels.get(&id).map(|s| Arc::clone(&s)) else { continue };
            let mut guard = slot.lock().await;
            if !guard.dirty {
                continue;
            }
            if let Some(record) = guard.record.as_ref() {
                if let Err(e) = self.persist(record) {
                    // Keep this one and the rest for the next flush.
                    self.inner.dirty.lock().extend(ids.into_iter().chain([id]));
                    return Err(e);
                }
                written += 1;
            }
            guard.dirty = false;
        }
        Ok(written)
    }

    /// Checks a payment header (base64 JSON) for a request priced `price`. On success the
    /// channel stays locked until the returned [`Pending`] is committed or dropped.
    pub async fn authorize(&self, header: &[u8], price: &Price) -> Result<Pending<S, C>, Refusal> {
        let started = Instant::now();
        let result = self.authorize_inner(header, price).await;
        let m = &self.inner.metrics;
        m.verify_seconds.observe(started.elapsed().as_secs_f64());
        if let Err(r) = &result {
            m.refused.with_label_values(&[r.code.as_str()]).inc();
        }
        result
    }

    async fn authorize_inner(&self, header: &[u8], price: &Price) -> Result<Pending<S, C>, Refusal> {
        let payload: PaymentPayload = wire::decode_header(header)
            .map_err(|e| Refusal::new(ErrorCode::InvalidPayload, format!("malformed payment: {e}")))?;
        if !matches!(payload.x402_version, 1 | 2) {
            return Err(Refusal::new(
                ErrorCode::InvalidX402Version,
                format!("x402 version {} is not supported (1 or 2)", payload.x402_version),
            ));
        }
        match payload.scheme() {
            Some(wire::SCHEME) => {}
            other => {
                return Err(Refusal::new(
                    ErrorCode::InvalidScheme,
                    format!("scheme {other:?} is not supported: this node takes \"channel\""),
                ));
            }
        }
        let network = self.inner.network_id.as_str();
        if payload.network() != Some(network) {
            return Err(Refusal::new(
                ErrorCode::InvalidNetwork,
                format!("network {:?} is not this node's {network}", payload.network()),
            ));
        }
        let signed = SignedVoucher::from(payload.payload);
        let id = signed.channel_id();
        let mut guard = self.lock_live(id).await?;
        self.check_deposit(guard.record.as_ref().ok_or_else(|| Refusal::unknown(id))?)?;
        // The signature first: a refusal below carries the channel's state, which only its
        // signer may see.
        let digest = self.inner.verifier.digest(&signed.voucher);
        self.check_signer(&mut guard, digest, &signed.signature, "voucher").await?;
        let record = guard.record.as_ref().ok_or_else(|| Refusal::unknown(id))?;
        // Top-ups, exits and closes reach the record through the event follower.
        record.admit(&signed.voucher, price.amount)?;
        Ok(Pending { engine: self.clone(), guard, signed: Some(signed), max: price.amount })
    }

    /// Checks a `PAYMENT-SESSION` header (a request paid from a prepaid credit window) for a
    /// request priced `price`: no signature, a constant-time compare with the channel's token.
    /// On success the channel stays locked until the returned [`Pending`] is committed or
    /// dropped; only a committed request uses up the session.
    pub async fn authorize_session(&self, header: &[u8], price: &Price) -> Result<Pending<S, C>, Refusal> {
        let started = Instant::now();
        let result = self.authorize_session_inner(header, price).await;
        let m = &self.inner.metrics;
        m.verify_seconds.observe(started.elapsed().as_secs_f64());
        if let Err(r) = &result {
            m.refused.with_label_values(&[r.code.as_str()]).inc();
        }
        result
    }

    async fn authorize_session_inner(&self, header: &[u8], price: &Price) -> Result<Pending<S, C>, Refusal> {
        use subtle::ConstantTimeEq;
        let (id, token) = wire::decode_session(header).ok_or_else(|| {
            Refusal::new(ErrorCode::InvalidPayload, "malformed PAYMENT-SESSION: expected <channelId>:<token>")
        })?;
        let invalid = |message: &str, state: Option<ChannelState>| {
            let refusal = Refusal::new(ErrorCode::SessionInvalid, message);
            match state {
                Some(state) => refusal.with_state(state),
                None => refusal,
            }
        };
        // Sessions live in memory only: a channel that is not loaded has none, and a random id
        // costs no store or chain lookup.
        let slot = self
            .inner
            .channels
            .get(&id)
            .map(|s| Arc::clone(&s))
            .ok_or_else(|| invalid("no session", None))?;
        let guard = slot.lock_owned().await;
        let record = guard.record.as_ref().ok_or_else(|| invalid("no session", None))?;
        let valid = guard.session.as_ref().is_some_and(|s| s.uses > 0 && bool::from(s.token.ct_eq(&token.0)));
        if !valid {
            // No state: the token, not the channel id, proves the request is the payer's.
            return Err(invalid(
                "the session token is unknown, used up or revoked; sign a new voucher",
                None,
            ));
        }
        if record.status != ChannelStatus::Open {
            return Err(invalid("the channel is closing: sessions are revoked", Some(record.state())));
        }
        let credit = record.cumulative_amount().saturating_sub(record.charged());
        if credit < price.amount {
            return Err(invalid("the prepaid credit does not cover this request", Some(record.state())));
        }
        Ok(Pending { engine: self.clone(), guard, signed: None, max: price.amount })
    }

    /// Locks a channel with its record loaded (from memory, the store, or once the chain),
    /// refusing ids the chain does not know, closed channels, and channels on other terms.
    async fn lock_live(&self, id: B256) -> Result<OwnedMutexGuard<Slot>, Refusal> {
        if let Some(refusal) = self.recently_refused(id) {
            return Err(refusal);
        }
        let slot = Arc::clone(&*self.inner.channels.entry(id).or_default());
        let mut guard = slot.lock_owned().await;
        self.load(id, &mut guard).await?;
        let record = guard.record.as_ref().ok_or_else(|| Refusal::unknown(id))?;
        if record.status == ChannelStatus::Closed {
            return Err(Refusal::new(ErrorCode::ChannelClosed, "the channel is closed"));
        }
        self.check_terms(record)?;
        Ok(guard)
    }

    /// Loads a stored channel into the slot, if the store has it.
    fn load_stored(&self, id: B256, slot: &mut Slot) -> Result<(), Refusal> {
        if slot.record.is_none()
            && let Some(bytes) = self.inner.store.get(CHANNELS, id.as_slice()).map_err(Refusal::storage)?
        {
            slot.record = Some(decode_record(&bytes)?);
        }
        Ok(())
    }

    /// Loads the channel into the slot: from the store, or else (once) from the chain.
    async fn load(&self, id: B256, slot: &mut Slot) -> Result<(), Refusal> {
        self.load_stored(id, slot)?;
        if slot.record.is_some() {
            return Ok(());
        }
        let chain = {
            // The semaphore is never closed.
            let _permit = self.inner.lookups.acquire().await.map_err(|_| Refusal::unknown(id))?;
            self.inner.chain.channel(id).await.map_err(Refusal::chain)?
        };
        let Some(chain) = chain else {
            // Do not keep slots for ids that do not exist, and do not ask again for a while.
            self.inner.channels.remove(&id);
            self.remember_refused(id, None);
            return Err(Refusal::unknown(id));
        };
        debug!(target: "node::engine", %id, payer = %chain.payer(), "channel loaded from chain");
        let mut record = ChannelRecord::new(id, chain);
        record.settled_at = crate::unix_now();
        if let Err(refusal) = self.check_terms(&record) {
            // Another provider's channel (or terms this node does not take): keep no record
            // of it, so that naming other channels costs the node neither storage nor a place
            // in what the follower re-reads, and do not ask the chain again for a while.
            self.inner.channels.remove(&id);
            self.remember_refused(id, Some(refusal.clone()));
            return Err(refusal);
        }
        self.persist(&record)?;
        slot.record = Some(record);
        Ok(())
    }

    /// The refusal of an id the chain recently did not know (or that is not this provider's).
    fn recently_refused(&self, id: B256) -> Option<Refusal> {
        let unknown = self.inner.unknown.lock();
        let (seen, refusal) = unknown.get(&id)?;
        (seen.elapsed() < UNKNOWN_TTL).then(|| refusal.clone().unwrap_or_else(|| Refusal::unknown(id)))
    }

    fn remember_refused(&self, id: B256, refusal: Option<Refusal>) {
        let mut unknown = self.inner.unknown.lock();
        if unknown.len() >= UNKNOWN_CAPACITY {
            unknown.retain(|_, (seen, _)| seen.elapsed() < UNKNOWN_TTL);
            if unknown.len() >= UNKNOWN_CAPACITY {
                unknown.clear();
            }
        }
        unknown.insert(id, (Instant::now(), refusal));
    }

    fn check_terms(&self, record: &ChannelRecord) -> Result<(), Refusal> {
        let t = &self.inner.terms;
        let c = &record.chain;
        let mismatch = if c.payee() != t.payee {
            Some(format!("the channel pays {}, not this provider {}", c.payee(), t.payee))
        } else if c.token() != t.asset {
            Some(format!("the channel holds token {}, this node takes {}", c.token(), t.asset))
        } else if c.challenge_period() < t.min_challenge_period {
            Some(format!(
                "challenge period {}s is below the node's minimum {}s",
                c.challenge_period(),
                t.min_challenge_period
            ))
        } else if c.signer_is_contract && !t.accept_contract_signers {
            Some(format!(
                "the channel's signer {} is a contract (ERC-1271), which can revoke its signatures; \
                 this node does not accept contract signers",
                c.signer()
            ))
        } else {
            None
        };
        // No state: anyone can name a channel id.
        mismatch.map_or(Ok(()), |message| Err(Refusal::new(ErrorCode::ChannelMismatch, message)))
    }

    /// Refuses a payment on a channel holding less than the node's `min_deposit`, however it
    /// was opened (a cooperative close of it is still taken).
    fn check_deposit(&self, record: &ChannelRecord) -> Result<(), Refusal> {
        let (deposit, min) = (record.chain.deposit, self.inner.terms.min_deposit);
        if deposit < min {
            return Err(Refusal::new(
                ErrorCode::ChannelMismatch,
                format!("the channel's deposit {deposit} is below the node's minimum {min}; top it up"),
            ));
        }
        Ok(())
    }

    /// Refuses unless `signature` over `digest` is the channel signer's.
    async fn check_signer(
        &self,
        slot: &mut Slot,
        digest: B256,
        signature: &Bytes,
        what: &str,
    ) -> Result<(), Refusal> {
        let record =
            slot.record.as_ref().ok_or_else(|| Refusal::new(ErrorCode::Unavailable, "no record loaded"))?;
        let accept_contracts = self.inner.terms.accept_contract_signers;
        let valid = signed_by_channel_signer(
            &self.inner.chain,
            &record.chain,
            digest,
            signature,
            &mut slot.key,
            accept_contracts,
        )
        .await
        .map_err(|e| Refusal::new(ErrorCode::Unavailable, e.to_string()))?;
        if valid {
            return Ok(());
        }
        // No state: the request did not prove it holds the signer's key.
        Err(Refusal::new(
            ErrorCode::InvalidSignature,
            format!("the {what} is not signed by the channel's signer {}", record.chain.signer()),
        ))
    }

    fn persist(&self, record: &ChannelRecord) -> Result<(), Refusal> {
        let bytes =
            serde_json::to_vec(record).map_err(|e| Refusal::new(ErrorCode::Unavailable, e.to_string()))?;
        self.inner.store.put(CHANNELS, record.id.as_slice(), &bytes).map_err(Refusal::storage)
    }
}

fn decode_record(bytes: &[u8]) -> Result<ChannelRecord, Refusal> {
    serde_json::from_slice(bytes)
        .map_err(|e| Refusal::new(ErrorCode::Unavailable, format!("corrupt channel record: {e}")))
}

/// An authorised payment whose channel is locked until it is committed or dropped.
pub struct Pending<S, C> {
    engine: Engine<S, C>,
    guard: OwnedMutexGuard<Slot>,
    /// The voucher that pays; `None`: paid from the prepaid window of the latest voucher.
    signed: Option<SignedVoucher>,
    max: U256,
}

impl<S, C> std::fmt::Debug for Pending<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("voucher", &self.signed)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

/// A verified payment, passed to handlers as a request extension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payment {
    /// The channel.
    pub channel_id: B256,
    /// The channel's payer.
    pub payer: Address,
    /// The voucher's nonce.
    pub nonce: u64,
    /// The voucher's cumulative amount.
    pub cumulative_amount: U256,
    /// The most this request may cost.
    pub max_amount: U256,
}

impl<S: KvStore, C: ChainReader> Pending<S, C> {
    /// The payment, for the handler.
    pub fn payment(&self) -> Payment {
        let record = self.guard.record.as_ref();
        let (channel_id, nonce, cumulative_amount) = match &self.signed {
            Some(signed) => (signed.channel_id(), signed.nonce(), signed.cumulative_amount()),
            None => (
                record.map(|r| r.id).unwrap_or_default(),
                record.map(ChannelRecord::nonce).unwrap_or_default(),
                record.map(ChannelRecord::cumulative_amount).unwrap_or_default(),
            ),
        };
        Payment {
            channel_id,
            payer: record.map(|r| r.chain.payer()).unwrap_or_default(),
            nonce,
            cumulative_amount,
            max_amount: self.max,
        }
    }

    /// Records the voucher with this request's `cost` (capped at the route's maximum) and waits
    /// until it is durable. Only then may the response be released.
    ///
    /// A request paid from a session adds its cost to what the node charged without waiting
    /// for the disk: the voucher that prepaid it is already durable, so a crash can only make
    /// the node forget charges within the window (it then claims less, never more).
    pub async fn commit(mut self, cost: U256) -> Result<SettlementResponse, Refusal> {
        let cost = cost.min(self.max);
        let engine = self.engine.clone();
        let inner = &engine.inner;
        let window = engine.credit_window();
        let slot = &mut *self.guard;
        let record = slot.record.as_mut().ok_or_else(|| Refusal::new(ErrorCode::Unavailable, "no record"))?;
        let id = record.id;
        let session = match &self.signed {
            Some(signed) => {
                let before = record.clone();
                record.apply(&signed.voucher, signed.signature.clone(), cost);
                if let Err(e) = engine.persist(record) {
                    slot.record = Some(before);
                    return Err(e);
                }
                if let Err(e) = inner.store.sync().await {
                    warn!(target: "node::engine", %id, error = %e, "voucher not durable; refusing to serve");
                    // Put the previous state back so memory matches what a restart would see.
                    let _ = engine.persist(&before);
                    slot.record = Some(before);
                    return Err(Refusal::storage(e));
                }
                // The record just written holds any session charges too.
                slot.dirty = false;
                inner.feed.record(id);
                // A new voucher replaces any session; grant one for what it prepaid.
                let credit = record.cumulative_amount().saturating_sub(record.charged());
                let uses = if self.max.is_zero() { U256::ZERO } else { credit / self.max };
                let uses = u32::try_from(uses).unwrap_or(u32::MAX).min(window - 1);
                slot.session = (uses > 0).then(|| Session { token: rand::random(), uses });
                slot.session.as_ref().map(|s| SessionGrant { token: B256::from(s.token), uses: s.uses })
            }
            None => {
                // `authorize_session` checked the session under this same lock.
                let session = slot
                    .session
                    .as_mut()
                    .ok_or_else(|| Refusal::new(ErrorCode::SessionInvalid, "no session"))?;
                session.uses -= 1;
                let grant = SessionGrant { token: B256::from(session.token), uses: session.uses };
                if session.uses == 0 {
                    slot.session = None;
                }
                // In memory only: see `Engine::flush_charges`.
                record.charged = record.charged().saturating_add(cost).min(record.cumulative_amount());
                if !slot.dirty {
                    slot.dirty = true;
                    inner.dirty.lock().insert(id);
                }
                inner.metrics.paid_by_session.inc();
                Some(grant)
            }
        };
        let record = slot.record.as_ref().ok_or_else(|| Refusal::new(ErrorCode::Unavailable, "no record"))?;
        inner.metrics.paid.inc();
        inner.revenue.inc_by(f64::from(cost));
        debug!(target: "node::engine", %id, nonce = record.nonce(), %cost, session = self.signed.is_none(), "payment recorded");
        Ok(SettlementResponse {
            success: true,
            transaction: String::new(),
            network: inner.network,
            payer: record.chain.payer(),
            extra: SettlementExtra {
                channel_id: id,
                nonce: record.nonce(),
                cumulative_amount: record.cumulative_amount(),
                charged: cost,
                total_charged: record.charged(),
                session,
            },
        })
    }
}
