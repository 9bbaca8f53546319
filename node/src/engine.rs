//! The payment engine: turns a payment header into an accepted, durably stored voucher.
//!
//! Per request: reserve → serve → commit. Decode → check version/scheme/network → lock the
//! channel → load it (memory, then the store, then — once — the chain) → check the voucher
//! against the node's state and what requests in flight reserved → verify the signature →
//! reserve the price and unlock. The request is served without any lock. On
//! [`Pending::commit`] the channel is locked again to charge and record the voucher, and the
//! response is released once the group commit made that durable; a [`Pending`] dropped
//! uncommitted (the upstream failed) gives its reservation back.
//!
//! At every step `charged + reserved <= the latest voucher's amount <= deposit`, and no
//! voucher nonce is served twice (the record keeps a window of the nonces it served).

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
    wire::{
        self, ChannelExtra, ChannelState, DomainInfo, ErrorCode, PaymentEnvelope, PaymentRequired,
        PaymentRequirements, Pricing, Resource, Scheme, SessionGrant, SettlementExtra, SettlementResponse,
        VoucherPayload,
    },
};
use x402_store::KvStore;

use crate::{
    Refusal,
    book::ChannelBook,
    chain::ChainReader,
    channel::{Admission, ChannelRecord, ChannelStatus, OnchainChannel},
    metrics::Metrics,
    verify::{VoucherVerifier, signed_by_channel_signer},
};

pub use crate::book::CHANNELS;

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
    /// Whether a resend of a voucher already served gets the response again (bodies up to
    /// [`REPLAY_MAX_BODY`](crate::serve::REPLAY_MAX_BODY), for
    /// [`REPLAY_TTL`](crate::serve::REPLAY_TTL)) rather than only its receipt. Default off:
    /// the node then keeps no response bodies.
    pub replay_body: bool,
    /// The payment schemes the route takes. Default: [`wire::SCHEME`] only.
    pub schemes: Schemes,
}

/// Which payment schemes a route takes: this project's [`wire::SCHEME`], the official `exact`
/// (EIP-3009, see [`crate::exact`]; fixed prices in a token only), or both. The 402 lists ours
/// first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Schemes {
    /// [`wire::SCHEME`].
    pub channel_voucher: bool,
    /// The official `exact` scheme.
    pub exact: bool,
}

impl Default for Schemes {
    fn default() -> Self {
        Self { channel_voucher: true, exact: false }
    }
}

impl Schemes {
    /// The set of `schemes`.
    pub fn of(schemes: &[Scheme]) -> Self {
        Self {
            channel_voucher: schemes.contains(&Scheme::ChannelVoucher),
            exact: schemes.contains(&Scheme::Exact),
        }
    }

    /// Whether `scheme` is in the set.
    pub const fn takes(self, scheme: Scheme) -> bool {
        match scheme {
            Scheme::ChannelVoucher => self.channel_voucher,
            Scheme::Exact => self.exact,
            _ => false,
        }
    }
}

impl Price {
    /// A fixed price.
    pub const fn exact(amount: U256) -> Self {
        Self {
            amount,
            pricing: Pricing::Exact,
            description: None,
            mime_type: None,
            replay_body: false,
            schemes: Schemes { channel_voucher: true, exact: false },
        }
    }

    /// A dynamic price of at most `max`: the handler reports the actual cost with a
    /// [`Charge`](crate::middleware::Charge) response extension.
    pub const fn upto(max: U256) -> Self {
        Self {
            amount: max,
            pricing: Pricing::Upto,
            description: None,
            mime_type: None,
            replay_body: false,
            schemes: Schemes { channel_voucher: true, exact: false },
        }
    }

    /// Replays the response to a resend of the voucher that paid for it (see
    /// [`Self::replay_body`]).
    #[must_use]
    pub const fn with_replay_body(mut self) -> Self {
        self.replay_body = true;
        self
    }

    /// Sets the schemes the route takes (`exact` needs a fixed price: see
    /// [`Schemes`]).
    #[must_use]
    pub const fn with_schemes(mut self, schemes: Schemes) -> Self {
        self.schemes = schemes;
        self
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
    /// What the requests in flight reserved (memory only: a crash ends them).
    reserved: U256,
    /// The nonces of the vouchers paying for requests in flight.
    in_flight: HashSet<u64>,
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
    book: ChannelBook<S>,
    chain: C,
    channels: DashMap<B256, Arc<Mutex<Slot>>>,
    /// Ids the chain recently said do not exist: requests naming random ids cost no RPC call.
    unknown: parking_lot::Mutex<std::collections::HashMap<B256, (Instant, Option<Refusal>)>>,
    lookups: tokio::sync::Semaphore,
    metrics: Metrics,
    feed: VoucherFeed,
    /// The most requests one voucher may pay ahead for; 1: no sessions.
    credit_window: AtomicU32,
    /// The token's EIP-712 domain, advertised as `extra.name` / `extra.version`.
    token_domain: parking_lot::RwLock<Option<DomainInfo>>,
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
                book: ChannelBook::new(store),
                chain,
                channels: DashMap::new(),
                unknown: parking_lot::Mutex::default(),
                lookups: tokio::sync::Semaphore::new(MAX_CONCURRENT_LOOKUPS),
                metrics,
                feed: VoucherFeed::default(),
                credit_window: AtomicU32::new(1),
                token_domain: parking_lot::RwLock::new(None),
                dirty: parking_lot::Mutex::default(),
            }),
        }
    }

    /// Sets the token's EIP-712 domain, advertised in 402s as `extra.name` / `extra.version`
    /// (what EIP-2612 and EIP-3009 signatures of the token use). Default none: not advertised.
    pub fn set_token_domain(&self, domain: Option<DomainInfo>) {
        *self.inner.token_domain.write() = domain;
    }

    /// The token's EIP-712 domain, if known (see [`Self::set_token_domain`]).
    pub fn token_domain(&self) -> Option<DomainInfo> {
        self.inner.token_domain.read().clone()
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
        self.inner.book.store()
    }

    /// The channel book (the records and their index).
    pub fn book(&self) -> &ChannelBook<S> {
        &self.inner.book
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
        self.inner.book.contains(id).map_err(Refusal::book)
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
        self.inner.book.get(id).map_err(Refusal::book)
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
        if let Err(e) = self.inner.book.store().sync().await {
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
        let token = self.token_domain();
        PaymentRequirements {
            scheme: wire::SCHEME.into(),
            network: self.inner.network,
            amount: price.amount,
            asset: t.asset,
            pay_to: t.payee,
            max_timeout_seconds: t.max_timeout_seconds,
            extra: ChannelExtra {
                name: token.as_ref().map(|d| d.name.clone()),
                version: token.map(|d| d.version),
                contract: t.contract,
                domain: DomainInfo::channel(),
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
        self.inner.metrics.payment_required.inc();
        if let Some(r) = refusal {
            debug!(target: "node::engine", code = %r.code, message = %r.message, url, "payment refused");
        }
        PaymentRequired::new(
            Some(refusal.map_or(ErrorCode::PaymentRequired, |r| r.code)),
            Resource {
                url: url.to_owned(),
                description: price.description.clone(),
                mime_type: price.mime_type.clone(),
            },
            vec![self.requirements(price, refusal.and_then(|r| r.state.as_deref().cloned()))],
        )
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
        self.inner.book.list().map_err(Refusal::book)
    }

    /// The channels the settlement index marks as due (something claimable, or a close
    /// requested), with every charge made so far: what the planner looks at, without listing
    /// the store. The first call builds the index (one scan of the store, off the runtime).
    pub async fn due_channels(&self) -> Result<Vec<ChannelRecord>, Refusal> {
        self.flush_charges().await?;
        self.build_index().await?;
        let mut records = Vec::new();
        for id in self.inner.book.due() {
            if let Some(record) = self.channel(id)? {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// Builds the book's index if it is not built yet (one scan of the store, on a blocking
    /// thread); every write keeps it current afterwards.
    pub async fn build_index(&self) -> Result<(), Refusal> {
        if self.inner.book.indexed() {
            return Ok(());
        }
        let engine = self.clone();
        tokio::task::spawn_blocking(move || engine.inner.book.build_index())
            .await
            .map_err(|e| Refusal::new(ErrorCode::Unavailable, format!("index build failed: {e}")))?
            .map_err(Refusal::book)
    }

    /// Sets the channel gauges (channels by status, unsettled amount per token) from the
    /// book's index, if it is built: call before rendering the metrics.
    pub fn refresh_metrics(&self) {
        if !self.inner.book.indexed() {
            return;
        }
        let summary = self.inner.book.summary();
        let m = &self.inner.metrics;
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for (status, n) in [("open", summary.open), ("closing", summary.closing), ("closed", summary.closed)]
        {
            m.channels.with_label_values(&[status]).set(clamp(n));
        }
        for (token, amount) in summary.unsettled {
            m.unsettled.with_label_values(&[token.to_string().as_str()]).set(f64::from(amount));
        }
    }

    /// Applies a payment the chain reports for a channel (a `Settled` or `Closed` event, from
    /// a settlement receipt or the event follower): `paid` in total so far, `closed` if the
    /// channel was closed, `settled_at` if the node settled it itself. No RPC, one write.
    /// A close read from an event accepts nothing more at once, and becomes final once the
    /// follower reads the channel closed in a confirmed block.
    pub async fn apply_paid(
        &self,
        id: B256,
        paid: U256,
        closed: bool,
        settled_at: Option<u64>,
    ) -> Result<Option<ChannelStatus>, Refusal> {
        let record = self.update_channel(id, |r| r.paid_onchain(paid, closed, settled_at)).await?;
        let status = record.map(|r| r.status);
        if status == Some(ChannelStatus::Closed) {
            self.inner.channels.remove(&id);
        }
        Ok(status)
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

    /// Checks a payment's envelope for this node's [`wire::SCHEME`], in this order: version,
    /// scheme (an unknown or other scheme is `invalid_scheme` whatever its payload), network,
    /// the echoed `asset` and `payTo` when present, and only then the payload, strictly.
    /// Other schemes are dispatched before this (see the gateway and the facilitator).
    pub fn check_envelope(&self, envelope: &PaymentEnvelope) -> Result<SignedVoucher, Refusal> {
        if !matches!(envelope.x402_version, 1 | 2) {
            return Err(Refusal::new(
                ErrorCode::InvalidX402Version,
                format!("x402 version {} is not supported (1 or 2)", envelope.x402_version),
            ));
        }
        match envelope.scheme() {
            Some(Scheme::ChannelVoucher) => {}
            _ => {
                return Err(Refusal::new(
                    ErrorCode::InvalidScheme,
                    format!(
                        "scheme {:?} is not accepted here: this route takes {:?}",
                        envelope.scheme_name(),
                        wire::SCHEME
                    ),
                ));
            }
        }
        let network = self.inner.network_id.as_str();
        if envelope.network() != Some(network) {
            return Err(Refusal::new(
                ErrorCode::InvalidNetwork,
                format!("network {:?} is not this node's {network}", envelope.network()),
            ));
        }
        if let Some(accepted) = &envelope.accepted {
            let t = &self.inner.terms;
            if accepted.asset.is_some_and(|a| a != t.asset) || accepted.pay_to.is_some_and(|p| p != t.payee) {
                return Err(Refusal::new(
                    ErrorCode::ChannelMismatch,
                    format!(
                        "the accepted offer (asset {:?}, payTo {:?}) is not one of this node's",
                        accepted.asset, accepted.pay_to
                    ),
                ));
            }
        }
        let payload: VoucherPayload = envelope.payload().map_err(|e| {
            Refusal::new(ErrorCode::InvalidPayload, format!("malformed voucher payload: {e}"))
        })?;
        Ok(SignedVoucher::from(payload))
    }

    /// Checks a payment header (base64 JSON) for a request priced `price`. On success the
    /// price is reserved on the channel (no lock is held) until the returned [`Pending`] is
    /// committed or dropped. A resend of a voucher already served is not reserved again: the
    /// [`Pending`] then carries that request's receipt ([`Pending::replayed`]).
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
        let envelope = PaymentEnvelope::decode(header)
            .map_err(|e| Refusal::new(ErrorCode::InvalidPayload, format!("malformed payment: {e}")))?;
        self.authorize_signed(self.check_envelope(&envelope)?, price).await
    }

    /// [`Self::authorize`] for a payment already decoded (the facilitator API's).
    pub async fn authorize_envelope(
        &self,
        envelope: &PaymentEnvelope,
        price: &Price,
    ) -> Result<Pending<S, C>, Refusal> {
        let started = Instant::now();
        let result = match self.check_envelope(envelope) {
            Ok(signed) => self.authorize_signed(signed, price).await,
            Err(r) => Err(r),
        };
        let m = &self.inner.metrics;
        m.verify_seconds.observe(started.elapsed().as_secs_f64());
        if let Err(r) = &result {
            m.refused.with_label_values(&[r.code.as_str()]).inc();
        }
        result
    }

    async fn authorize_signed(&self, signed: SignedVoucher, price: &Price) -> Result<Pending<S, C>, Refusal> {
        let id = signed.channel_id();
        let mut guard = self.lock_live(id).await?;
        self.check_deposit(guard.record.as_ref().ok_or_else(|| Refusal::unknown(id))?)?;
        // The signature first: a refusal below carries the channel's state, which only its
        // signer may see, and a resend is answered with its receipt only to the signer.
        let digest = self.inner.verifier.digest(&signed.voucher);
        self.check_signer(&mut guard, digest, &signed.signature, "voucher").await?;
        let slot = Arc::clone(OwnedMutexGuard::mutex(&guard));
        let record = guard.record.as_ref().ok_or_else(|| Refusal::unknown(id))?;
        // Top-ups, exits and closes reach the record through the event follower.
        let admission = record.admit(&signed.voucher, price.amount, guard.reserved, &guard.in_flight)?;
        let record = guard.record.as_mut().ok_or_else(|| Refusal::unknown(id))?;
        let payer = record.chain.payer();
        let (nonce, amount) = (signed.nonce(), signed.cumulative_amount());
        let kind = match admission {
            Admission::Replay(served) => {
                debug!(target: "node::engine", %id, nonce, "voucher served before: its receipt again");
                Kind::Replay(Box::new(self.settlement(
                    record,
                    served.nonce,
                    served.amount,
                    served.cost,
                    served.total,
                    None,
                )))
            }
            admission => {
                if admission == Admission::Latest {
                    record.adopt(&signed.voucher, signed.signature.clone());
                }
                guard.reserved = guard.reserved.saturating_add(price.amount);
                guard.in_flight.insert(nonce);
                Kind::Voucher { nonce, amount }
            }
        };
        drop(guard);
        Ok(Pending { engine: self.clone(), id, slot, payer, kind, max: price.amount, done: false })
    }

    /// Checks a `PAYMENT-SESSION` header (a request paid from a prepaid credit window) for a
    /// request priced `price`: no signature, a constant-time compare with the channel's token.
    /// On success the price and one use of the session are reserved until the returned
    /// [`Pending`] is committed or dropped; only a committed request uses up the session.
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
        let mut guard = slot.lock().await;
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
        let credit =
            record.cumulative_amount().saturating_sub(record.charged()).saturating_sub(guard.reserved);
        if credit < price.amount {
            return Err(invalid("the prepaid credit does not cover this request", Some(record.state())));
        }
        let (payer, nonce, amount) = (record.chain.payer(), record.nonce(), record.cumulative_amount());
        guard.reserved = guard.reserved.saturating_add(price.amount);
        if let Some(session) = guard.session.as_mut() {
            // A use is taken now and given back if the request is not charged.
            session.uses -= 1;
        }
        drop(guard);
        Ok(Pending {
            engine: self.clone(),
            id,
            slot,
            payer,
            kind: Kind::Session { token: token.0, nonce, amount },
            max: price.amount,
            done: false,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn settlement(
        &self,
        record: &ChannelRecord,
        nonce: u64,
        amount: U256,
        cost: U256,
        total: U256,
        session: Option<SessionGrant>,
    ) -> SettlementResponse {
        SettlementResponse {
            success: true,
            transaction: String::new(),
            network: self.inner.network,
            payer: record.chain.payer(),
            amount: Some(cost),
            extra: Some(SettlementExtra {
                channel_id: record.id,
                nonce,
                cumulative_amount: amount,
                charged: cost,
                total_charged: total,
                session,
            }),
        }
    }

    /// Locks a channel with its record loaded (from memory, the store, or once the chain),
    /// refusing ids the chain does not know, closed channels, and channels on other terms.
    async fn lock_live(&self, id: B256) -> Result<OwnedMutexGuard<Slot>, Refusal> {
        // A loaded channel has its slot: the negative cache (one global lock) is asked only
        // about ids the node does not hold, never on the paid path of a known channel.
        let known = self.inner.channels.get(&id).map(|s| Arc::clone(&s));
        let slot = match known {
            Some(slot) => slot,
            None => {
                if let Some(refusal) = self.recently_refused(id) {
                    return Err(refusal);
                }
                Arc::clone(&*self.inner.channels.entry(id).or_default())
            }
        };
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
            && let Some(record) = self.inner.book.get(id).map_err(Refusal::book)?
        {
            slot.record = Some(record);
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
        self.inner.book.put(record).map_err(Refusal::book)
    }
}

/// An authorised payment: its price is reserved on the channel (no lock is held) until it is
/// committed, or dropped (which gives the reservation back).
pub struct Pending<S: KvStore, C: ChainReader> {
    engine: Engine<S, C>,
    id: B256,
    slot: Arc<Mutex<Slot>>,
    payer: Address,
    kind: Kind,
    max: U256,
    done: bool,
}

#[derive(Clone, Debug)]
enum Kind {
    /// Paid by a voucher (the latest, or an older one covered by the latest).
    Voucher { nonce: u64, amount: U256 },
    /// Paid from the prepaid window of the latest voucher.
    Session { token: [u8; 32], nonce: u64, amount: U256 },
    /// A resend of a voucher already served: its receipt.
    Replay(Box<SettlementResponse>),
}

impl<S: KvStore, C: ChainReader> std::fmt::Debug for Pending<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("channel", &self.id)
            .field("kind", &self.kind)
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

/// Runs `f` on the slot now if it is free, else as soon as it is (on the runtime): for
/// releasing reservations from `Drop` and from a response body's last poll.
fn with_slot(slot: &Arc<Mutex<Slot>>, f: impl FnOnce(&mut Slot) + Send + 'static) {
    if let Ok(mut guard) = slot.try_lock() {
        f(&mut guard);
    } else if let Ok(handle) = tokio::runtime::Handle::try_current() {
        let slot = Arc::clone(slot);
        handle.spawn(async move { f(&mut *slot.lock().await) });
    } else {
        warn!(target: "node::engine", "no runtime to release a reservation on; it stays until restart");
    }
}

impl<S: KvStore, C: ChainReader> Pending<S, C> {
    /// The payment, for the handler.
    pub fn payment(&self) -> Payment {
        let (nonce, cumulative_amount) = match &self.kind {
            Kind::Voucher { nonce, amount } | Kind::Session { nonce, amount, .. } => (*nonce, *amount),
            Kind::Replay(s) => s.extra.as_ref().map_or((0, U256::ZERO), |e| (e.nonce, e.cumulative_amount)),
        };
        Payment { channel_id: self.id, payer: self.payer, nonce, cumulative_amount, max_amount: self.max }
    }

    /// The receipt of the request this very voucher already paid for, if it is a resend:
    /// then nothing is reserved, the request must not be served again, and committing it
    /// charges nothing and returns this receipt.
    pub fn replayed(&self) -> Option<&SettlementResponse> {
        match &self.kind {
            Kind::Replay(s) => Some(s),
            _ => None,
        }
    }

    /// Records the voucher with this request's `cost` (capped at the route's maximum) and waits
    /// until it is durable. Only then may the response be released. The channel is locked only
    /// to update the record; the wait for the disk is shared with every concurrent commit.
    ///
    /// A request paid from a session adds its cost to what the node charged without waiting
    /// for the disk: the voucher that prepaid it is already durable, so a crash can only make
    /// the node forget charges within the window (it then claims less, never more).
    pub async fn commit(self, cost: U256) -> Result<SettlementResponse, Refusal> {
        let cost = cost.min(self.max);
        self.commit_inner(cost, false).await
    }

    /// Like [`Self::commit`] for a response whose cost is known only once its body has been
    /// sent (a streamed `upto` response): the voucher is made durable now with the route's
    /// maximum still reserved, and the returned [`DeferredCharge`] charges the actual cost
    /// when it is [finished](DeferredCharge::finish), the way session charges are (in memory,
    /// written by [`Engine::flush_charges`]). The receipt reports the maximum as the charge.
    pub async fn commit_deferred(self) -> Result<(SettlementResponse, DeferredCharge), Refusal> {
        let (slot, id, max, voucher) = (Arc::clone(&self.slot), self.id, self.max, self.voucher_nonce());
        let dirty = Arc::clone(&self.engine.inner) as Arc<dyn DirtySink>;
        let settlement = self.commit_inner(max, true).await?;
        Ok((settlement, DeferredCharge { slot, id, max, voucher, sink: Some(dirty) }))
    }

    fn voucher_nonce(&self) -> Option<u64> {
        match self.kind {
            Kind::Voucher { nonce, .. } => Some(nonce),
            _ => None,
        }
    }

    async fn commit_inner(mut self, cost: U256, deferred: bool) -> Result<SettlementResponse, Refusal> {
        self.done = true;
        let engine = self.engine.clone();
        let inner = &engine.inner;
        let id = self.id;
        let max = self.max;
        let kind = self.kind.clone();
        if let Kind::Replay(settlement) = kind {
            return Ok(*settlement);
        }
        let mut guard = self.slot.lock().await;
        let slot = &mut *guard;
        // A deferred charge keeps the reservation until the body is done.
        if !deferred {
            slot.reserved = slot.reserved.saturating_sub(max);
        }
        let window = engine.credit_window();
        let record = slot.record.as_mut().ok_or_else(|| Refusal::new(ErrorCode::Unavailable, "no record"))?;
        if record.close.is_some() || record.status == ChannelStatus::Closed {
            // The close authorisation was signed at what was charged before this request (or
            // the channel closed on-chain meanwhile: nothing more can be claimed).
            if let Kind::Voucher { nonce, .. } = kind {
                slot.in_flight.remove(&nonce);
            }
            if deferred {
                slot.reserved = slot.reserved.saturating_sub(max);
            }
            return Err(Refusal::new(
                ErrorCode::ChannelClosing,
                "the channel's close was requested meanwhile",
            )
            .with_state(record.state()));
        }
        // What this request is charged now: a deferred one later.
        let now = if deferred { U256::ZERO } else { cost };
        let settlement = match kind {
            Kind::Voucher { nonce, amount } => {
                slot.in_flight.remove(&nonce);
                record.charge(now);
                let mut served = record.serve(nonce, amount, cost);
                if deferred {
                    served.total = record.charged().saturating_add(max);
                    if let Some(last) = record.served.iter_mut().find(|s| s.nonce == nonce) {
                        last.total = served.total;
                    }
                }
                if let Err(e) = engine.persist(record) {
                    record.unserve(nonce, now);
                    if deferred {
                        slot.reserved = slot.reserved.saturating_sub(max);
                    }
                    return Err(e);
                }
                // Taken now: it covers the write just made, whoever waits on it.
                let sync = inner.book.store().sync();
                // The record just written holds any session charges too.
                slot.dirty = false;
                // The latest voucher replaces any session; grant one for what it prepaid.
                let mut grant = None;
                if nonce == record.nonce() && window > 1 {
                    let credit = record
                        .cumulative_amount()
                        .saturating_sub(record.charged())
                        .saturating_sub(slot.reserved);
                    let uses = if max.is_zero() { U256::ZERO } else { credit / max };
                    let uses = u32::try_from(uses).unwrap_or(u32::MAX).min(window - 1);
                    slot.session = (uses > 0).then(|| Session { token: rand::random(), uses });
                    grant = slot
                        .session
                        .as_ref()
                        .map(|s| SessionGrant { token: B256::from(s.token), uses: s.uses });
                }
                let settlement = engine.settlement(record, nonce, amount, served.cost, served.total, grant);
                drop(guard);
                if let Err(e) = sync.await {
                    warn!(target: "node::engine", %id, error = %e, "voucher not durable; refusing to serve");
                    let mut guard = self.slot.lock().await;
                    if deferred {
                        guard.reserved = guard.reserved.saturating_sub(max);
                    }
                    if let Some(record) = guard.record.as_mut() {
                        record.unserve(nonce, now);
                        let _ = engine.persist(record);
                    }
                    guard.session = None;
                    return Err(Refusal::storage(e));
                }
                inner.feed.record(id);
                settlement
            }
            Kind::Session { token, nonce, amount } => {
                record.charge(now);
                let grant = match slot.session.as_ref() {
                    Some(s) if s.token == token => {
                        Some(SessionGrant { token: B256::from(s.token), uses: s.uses })
                    }
                    _ => None,
                };
                if slot.session.as_ref().is_some_and(|s| s.token == token && s.uses == 0) {
                    slot.session = None;
                }
                // In memory only: see `Engine::flush_charges`.
                if !now.is_zero() && !slot.dirty {
                    slot.dirty = true;
                    inner.dirty.lock().insert(id);
                }
                inner.metrics.paid_by_session.inc();
                let total = record.charged().saturating_add(if deferred { max } else { U256::ZERO });
                engine.settlement(record, nonce, amount, cost, total, grant)
            }
            Kind::Replay(_) => unreachable!("returned above"),
        };
        inner.metrics.paid.inc();
        if !deferred {
            inner.revenue.inc_by(f64::from(cost));
        }
        debug!(target: "node::engine", %id, nonce = settlement.extra.as_ref().map_or(0, |e| e.nonce), %cost, deferred, "payment recorded");
        Ok(settlement)
    }
}

impl<S: KvStore, C: ChainReader> Drop for Pending<S, C> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let max = self.max;
        let kind = self.kind.clone();
        with_slot(&self.slot, move |slot| {
            match kind {
                Kind::Voucher { nonce, .. } => {
                    slot.in_flight.remove(&nonce);
                }
                Kind::Session { token, .. } => {
                    if let Some(s) = slot.session.as_mut().filter(|s| s.token == token) {
                        s.uses += 1;
                    }
                }
                Kind::Replay(_) => return,
            }
            slot.reserved = slot.reserved.saturating_sub(max);
        });
    }
}

/// Where a [`DeferredCharge`] marks its channel as ahead of the store.
trait DirtySink: Send + Sync {
    fn mark_dirty(&self, id: B256, cost: U256);
}

impl<S: Send + Sync, C: Send + Sync> DirtySink for Inner<S, C> {
    fn mark_dirty(&self, id: B256, cost: U256) {
        self.dirty.lock().insert(id);
        self.revenue.inc_by(f64::from(cost));
    }
}

/// The charge of a streamed response, made when its body ends (see
/// [`Pending::commit_deferred`]). Dropped unfinished, it charges the reserved maximum.
pub struct DeferredCharge {
    slot: Arc<Mutex<Slot>>,
    id: B256,
    max: U256,
    voucher: Option<u64>,
    sink: Option<Arc<dyn DirtySink>>,
}

impl std::fmt::Debug for DeferredCharge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeferredCharge")
            .field("channel", &self.id)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl DeferredCharge {
    /// The most this response may be charged.
    pub const fn max(&self) -> U256 {
        self.max
    }

    /// Charges `cost` (capped at the maximum) and gives the rest of the reservation back. The
    /// charge is in memory until the next [`Engine::flush_charges`].
    pub fn finish(mut self, cost: U256) {
        self.charge(cost.min(self.max));
    }

    fn charge(&mut self, cost: U256) {
        let Some(sink) = self.sink.take() else { return };
        let (id, max, voucher) = (self.id, self.max, self.voucher);
        with_slot(&self.slot, move |slot| {
            slot.reserved = slot.reserved.saturating_sub(max);
            let Some(record) = slot.record.as_mut() else { return };
            if record.close.is_some() {
                warn!(target: "node::engine", %id, %cost, "streamed response ended after a close request; not charged");
                return;
            }
            record.charge(cost);
            let total = record.charged();
            if let Some(served) = voucher.and_then(|n| record.served.iter_mut().find(|s| s.nonce == n)) {
                served.cost = cost;
                served.total = total;
            }
            slot.dirty = true;
            sink.mark_dirty(id, cost);
        });
    }
}

impl Drop for DeferredCharge {
    fn drop(&mut self) {
        if self.sink.is_some() {
            warn!(target: "node::engine", id = %self.id, max = %self.max, "streamed response ended without a cost report; charging the maximum");
            self.charge(self.max);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use alloy::signers::local::PrivateKeySigner;
    use proptest::prelude::*;
    use x402_protocol::{ChannelDomain, Voucher};

    use super::*;
    use crate::test_utils::{MemoryChain, open_channel, terms};

    /// Namespace and key to value.
    type Entries = BTreeMap<(String, Vec<u8>), Vec<u8>>;

    /// A store that keeps what was synced apart from what was only written: a crash keeps
    /// only the former.
    #[derive(Debug, Default)]
    struct CrashStore {
        written: parking_lot::Mutex<Entries>,
        durable: parking_lot::Mutex<Entries>,
    }

    impl CrashStore {
        fn crashed(&self) -> Self {
            let durable = self.durable.lock().clone();
            Self {
                written: parking_lot::Mutex::new(durable.clone()),
                durable: parking_lot::Mutex::new(durable),
            }
        }
    }

    impl KvStore for CrashStore {
        fn get(&self, ns: &str, key: &[u8]) -> x402_store::Result<Option<Vec<u8>>> {
            Ok(self.written.lock().get(&(ns.to_owned(), key.to_vec())).cloned())
        }

        fn put(&self, ns: &str, key: &[u8], value: &[u8]) -> x402_store::Result<()> {
            self.written.lock().insert((ns.to_owned(), key.to_vec()), value.to_vec());
            Ok(())
        }

        fn remove(&self, ns: &str, key: &[u8]) -> x402_store::Result<()> {
            self.written.lock().remove(&(ns.to_owned(), key.to_vec()));
            Ok(())
        }

        fn list(&self, ns: &str) -> x402_store::Result<Vec<(Vec<u8>, Vec<u8>)>> {
            let written = self.written.lock();
            Ok(written
                .iter()
                .filter(|((n, _), _)| n == ns)
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect())
        }

        async fn sync(&self) -> x402_store::Result<()> {
            self.sync_blocking()
        }

        fn sync_blocking(&self) -> x402_store::Result<()> {
            let written = self.written.lock().clone();
            *self.durable.lock() = written;
            Ok(())
        }
    }

    const PRICE: u64 = 100;

    struct Node {
        engine: Engine<CrashStore, MemoryChain>,
        id: B256,
        key: PrivateKeySigner,
        price: Price,
    }

    impl Node {
        fn new(store: CrashStore, chain: MemoryChain, key: PrivateKeySigner, id: B256) -> Self {
            let engine = Engine::new(terms(31337), Arc::new(store), chain, Metrics::new());
            Self { engine, id, key, price: Price::upto(U256::from(PRICE)) }
        }

        fn header(&self, nonce: u64, amount: u64) -> Vec<u8> {
            let t = self.engine.terms();
            let voucher = Voucher { channelId: self.id, nonce, cumulativeAmount: U256::from(amount) };
            let signed = ChannelDomain::new(t.chain_id, t.contract).sign(&self.key, voucher).expect("signs");
            let payload = wire::PaymentPayload::new(&self.engine.requirements(&self.price, None), &signed);
            wire::encode_header(&payload).into_bytes()
        }

        /// (charged, reserved, latest amount, latest nonce, deposit) in memory.
        fn state(&self) -> Option<(U256, U256, U256, u64, U256)> {
            let slot = self.engine.inner.channels.get(&self.id).map(|s| Arc::clone(&s))?;
            let guard = slot.try_lock().expect("no lock held between steps");
            let r = guard.record.as_ref()?;
            Some((r.charged(), guard.reserved, r.cumulative_amount(), r.nonce(), r.chain.deposit))
        }
    }

    #[tokio::test]
    async fn the_index_follows_payments_settlements_and_closes() {
        let key = PrivateKeySigner::random();
        let id = B256::repeat_byte(7);
        let chain = MemoryChain::default();
        chain.set(id, open_channel(&terms(31337), key.address(), U256::from(10 * PRICE)));
        let node = Node::new(CrashStore::default(), chain, key, id);
        node.engine.build_index().await.expect("builds");
        let book = node.engine.book();
        assert!(book.due().is_empty());
        let pending = node.engine.authorize(&node.header(1, PRICE), &node.price).await.expect("admits");
        assert!(book.due().is_empty(), "nothing charged before the commit");
        pending.commit(U256::from(PRICE)).await.expect("commits");
        assert_eq!(book.due(), vec![id]);
        let token = node.engine.terms().asset;
        assert_eq!(book.summary().unsettled[&token], U256::from(PRICE));
        assert_eq!(book.summary().open, 1);
        assert_eq!(node.engine.due_channels().await.expect("reads").len(), 1);
        // A receipt's `Settled`: nothing due, one write, no chain read.
        let status = node.engine.apply_paid(id, U256::from(PRICE), false, Some(5)).await.expect("applies");
        assert_eq!(status, Some(ChannelStatus::Open));
        assert!(book.due().is_empty());
        assert_eq!(book.summary().unsettled[&token], U256::ZERO);
        assert_eq!(node.engine.channel(id).expect("reads").map(|r| r.settled_at), Some(5));
        // A `Closed`: no more vouchers; not due.
        node.engine.apply_paid(id, U256::from(PRICE), true, None).await.expect("applies");
        assert_eq!((book.summary().open, book.summary().closing), (0, 1));
        let refused =
            node.engine.authorize(&node.header(2, 2 * PRICE), &node.price).await.expect_err("closing");
        assert_eq!(refused.code, ErrorCode::ChannelClosing);
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// The voucher of the client's request `k` (nonce `k + 1`) arrives.
        Arrive(usize),
        /// The request in flight `i` (modulo) ends: served and delivered at `cost`, upstream
        /// failure, or served at `cost` but the response is lost (the client resends later).
        Finish(usize, Outcome),
        /// The node crashes and restarts from what is durable.
        Crash,
    }

    #[derive(Clone, Copy, Debug)]
    enum Outcome {
        Delivered(u64),
        Failed,
        Lost(u64),
    }

    fn op(n: usize) -> impl Strategy<Value = Op> {
        let outcome = prop_oneof![
            4 => (0..=PRICE).prop_map(Outcome::Delivered),
            1 => Just(Outcome::Failed),
            1 => (0..=PRICE).prop_map(Outcome::Lost),
        ];
        prop_oneof![
            6 => (0..n).prop_map(Op::Arrive),
            6 => (0usize..64, outcome).prop_map(|(i, o)| Op::Finish(i, o)),
            1 => Just(Op::Crash),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// A client signs `n` vouchers for concurrent requests, each covering its own price on
        /// top of the previous ones (nonce k + 1, amount (k + 1) * price). They arrive in any
        /// order, some twice, their requests end in any order (served, failed, or served with
        /// the response lost), and the node crashes at any point. At every step
        /// `charged + reserved <= latest amount <= deposit`; every voucher is admitted exactly
        /// when the latest voucher's unspent amount covers it (no corrective round trip
        /// otherwise); no voucher is served twice; a resend of a served voucher gets its
        /// receipt; and what the node charged is exactly what it released responses for.
        #[test]
        fn reserve_serve_commit(n in 1usize..12, deposit_prices in 1u64..14, ops in prop::collection::vec(op(12), 1..60)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let key = PrivateKeySigner::random();
                let id = B256::repeat_byte(7);
                let chain = MemoryChain::default();
                let deposit = U256::from(deposit_prices * PRICE);
                chain.set(id, open_channel(&terms(31337), key.address(), deposit));
                let mut node = Node::new(CrashStore::default(), chain.clone(), key.clone(), id);
                let mut in_flight: Vec<(usize, Pending<CrashStore, MemoryChain>)> = Vec::new();
                // Per request: the receipt of its service, if it was served.
                let mut served: HashMap<usize, SettlementResponse> = HashMap::new();
                let mut charged_total = U256::ZERO;
                // The requests whose receipts the node must still have.
                let mut remembered = std::collections::HashSet::new();
                let mut last_stored = None;
                for op in ops {
                    match op {
                        Op::Arrive(k) if k < n => {
                            let (nonce, amount) = (k as u64 + 1, (k as u64 + 1) * PRICE);
                            // Loaded (after a restart) so that its state can be read.
                            node.engine.update_channel(id, |_| false).await.expect("loads");
                            let before = node.state();
                            let flying = in_flight.iter().any(|(j, _)| *j == k);
                            let result = node.engine.authorize(&node.header(nonce, amount), &node.price).await;
                            if let Some(receipt) = served.get(&k) {
                                // A resend of a voucher already served: its receipt, no service.
                                // A restarted node keeps the receipt of the last voucher it
                                // stored only: an older one is refused as a used nonce.
                                match result {
                                    Ok(pending) => prop_assert_eq!(pending.replayed(), Some(receipt)),
                                    Err(refusal) => {
                                        prop_assert!(!remembered.contains(&k), "receipt of request {} lost", k);
                                        prop_assert_eq!(refusal.code, ErrorCode::NonceTooLow);
                                    }
                                }
                                prop_assert_eq!(node.state(), before);
                                continue;
                            }
                            let (charged, reserved, latest, latest_nonce) = before
                                .map_or((U256::ZERO, U256::ZERO, U256::ZERO, 0), |(c, r, l, ln, _)| (c, r, l, ln));
                            let needed = charged + reserved + U256::from(PRICE);
                            let ceiling = if nonce > latest_nonce { U256::from(amount) } else { latest };
                            let covered = !flying && U256::from(amount) <= deposit && needed <= ceiling;
                            prop_assert_eq!(result.is_ok(), covered, "voucher {} {:?}: {:?}", nonce, before, result.as_ref().err());
                            if let Ok(pending) = result {
                                prop_assert!(pending.replayed().is_none());
                                in_flight.push((k, pending));
                            }
                        }
                        Op::Arrive(_) => {}
                        Op::Finish(i, outcome) if !in_flight.is_empty() => {
                            let (k, pending) = in_flight.remove(i % in_flight.len());
                            match outcome {
                                Outcome::Failed => drop(pending),
                                Outcome::Delivered(cost) | Outcome::Lost(cost) => {
                                    let receipt = pending.commit(U256::from(cost)).await.expect("commits");
                                    prop_assert!(!served.contains_key(&k), "request {} served twice", k);
                                    prop_assert_eq!(receipt.extra.as_ref().expect("channel extra").charged, U256::from(cost));
                                    charged_total += U256::from(cost);
                                    prop_assert_eq!(receipt.extra.as_ref().expect("channel extra").total_charged, charged_total);
                                    served.insert(k, receipt);
                                    remembered.insert(k);
                                    last_stored = Some(k);
                                }
                            }
                        }
                        Op::Finish(..) => {}
                        Op::Crash => {
                            // Responses in flight are never released.
                            in_flight.clear();
                            remembered.retain(|k| Some(*k) == last_stored);
                            let store = node.engine.store().crashed();
                            node = Node::new(store, chain.clone(), key.clone(), id);
                        }
                    }
                    if let Some((charged, reserved, latest, _, deposit)) = node.state() {
                        prop_assert!(charged + reserved <= latest, "{} + {} > {}", charged, reserved, latest);
                        prop_assert!(latest <= deposit);
                        // Every released response is charged, and nothing else.
                        prop_assert_eq!(charged, charged_total);
                    }
                }
                // Every request ends: all reservations are given back.
                in_flight.clear();
                tokio::task::yield_now().await;
                if let Some((charged, reserved, ..)) = node.state() {
                    prop_assert_eq!(reserved, U256::ZERO);
                    prop_assert_eq!(charged, charged_total);
                }
                Ok(())
            })?;
        }
    }
}
