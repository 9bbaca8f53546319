//! [`Client`]: pays 402 `channel` payments by itself and manages the payer's channels.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use alloy::{
    primitives::{Address, B256, U256},
    signers::{SignerSync, local::PrivateKeySigner},
};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use reqwest::{Request, Response, StatusCode, header::HeaderValue};
use x402_protocol::{
    ChannelDomain, Network,
    bindings::IPaymentChannel::ChannelParams,
    close::{CLOSE_PATH, CloseRequestBody, CloseResponse},
    wire::{
        self, ErrorCode, PAYMENT_REQUIRED, PAYMENT_RESPONSE, PAYMENT_SESSION, PAYMENT_SIGNATURE,
        PaymentPayload, PaymentRequired, PaymentRequirements, SCHEME, SettlementResponse,
    },
};

use crate::{
    ChainClient, ChannelStatus, ChannelTerms, ClientChannel, DepositPolicy, Error, Funding, Limits, Result,
    StateStore,
};

/// The header the node sets on its answer to a resend of a voucher it already served.
const REPLAYED: &str = "x402-replayed";

/// What a paid request cost, attached to the response's extensions
/// (`response.extensions().get::<Payment>()`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payment {
    /// The channel that paid.
    pub channel_id: B256,
    /// The voucher's nonce.
    pub nonce: u64,
    /// The voucher's cumulative amount.
    pub cumulative_amount: U256,
    /// What this request was charged.
    pub charged: U256,
    /// What the channel has been charged in total.
    pub total_charged: U256,
    /// The channel's deposit, as the client knows it.
    pub deposit: U256,
    /// The token.
    pub asset: Address,
    /// How many vouchers were sent for this request (1 unless it had to resynchronise).
    pub attempts: u32,
}

/// Attached to a response whose request carried a voucher the node did not charge (the
/// upstream failed: a 5xx, or a 502 for an unreachable upstream). The voucher is void: the next
/// one builds on what the node charged, so nothing is counted as spent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotCharged {
    /// The channel whose voucher was sent.
    pub channel_id: B256,
    /// What the channel has been charged in total, as the client knows it.
    pub total_charged: U256,
    /// The channel's deposit.
    pub deposit: U256,
}

/// A channel the client opened or topped up by itself while paying (or on request), for a
/// caller that tells its user ([`ClientBuilder::on_event`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelEvent {
    /// A channel was opened.
    Opened {
        /// The channel.
        channel_id: B256,
        /// The provider.
        payee: Address,
        /// The deposit credited.
        deposit: U256,
        /// The challenge period, seconds.
        challenge_period: u32,
        /// The period asked for ([`DepositPolicy::challenge_period`]) when the provider's
        /// minimum raised it.
        raised_from: Option<u32>,
        /// Whether a payment opened it (not an explicit [`Client::open`]).
        automatic: bool,
    },
    /// A channel's deposit was raised.
    ToppedUp {
        /// The channel.
        channel_id: B256,
        /// What was added.
        amount: U256,
        /// The deposit after it.
        deposit: U256,
        /// Whether a payment topped it up (not an explicit [`Client::top_up`]).
        automatic: bool,
    },
}

/// Receives [`ChannelEvent`]s.
pub type EventHook = Arc<dyn Fn(&ChannelEvent) + Send + Sync>;

/// An [`EventHook`] in a struct that derives `Debug`.
#[derive(Clone)]
struct Hook(EventHook);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventHook")
    }
}

/// What a cooperative close achieved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Closed {
    /// The channel.
    pub channel_id: B256,
    /// What the provider is paid in total.
    pub final_amount: U256,
    /// What the payer gets back.
    pub refund: U256,
    /// Whether the client closed it on-chain at once with the provider's authorisation
    /// (otherwise the node closes it in its next settlement round).
    pub closed_on_chain: bool,
}

/// Tuning of the payment loop.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How many vouchers one request may try before giving up. Default 32 (races between
    /// many concurrent requests on one channel are resolved by retrying).
    pub max_attempts: u32,
    /// How long to wait for the node to see a channel just opened or topped up (it follows
    /// the chain with some confirmations), or to come back from `unavailable`. Default 60 s.
    pub node_wait: Duration,
    /// Pause between such waits. Default 250 ms.
    pub backoff: Duration,
    /// Lifetime of a cooperative close request's signature. Default 300 s.
    pub close_deadline: Duration,
    /// The credit window: one voucher pays ahead for up to this many requests (bounded by the
    /// node's `maxCreditWindow`), and the requests inside the window present the session token
    /// the node grants instead of a new signature. What is prepaid is at risk until used, so
    /// keep it small. Default 1: a voucher per request.
    pub credit_window: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_attempts: 32,
            node_wait: Duration::from_secs(60),
            backoff: Duration::from_millis(250),
            close_deadline: Duration::from_secs(300),
            credit_window: 1,
        }
    }
}

/// Builds a [`Client`].
#[derive(Debug)]
pub struct ClientBuilder {
    signer: PrivateKeySigner,
    session_key: Option<PrivateKeySigner>,
    rpc: Option<String>,
    chain: Option<ChainClient>,
    funding: Option<Arc<dyn Funding>>,
    limits: Option<Limits>,
    policy: DepositPolicy,
    settings: Settings,
    state_dir: Option<PathBuf>,
    store: Option<StateStore>,
    http: Option<reqwest::Client>,
    pinned: Option<B256>,
    events: Option<Hook>,
    inspect_only: bool,
    allowed_contracts: Option<Vec<Address>>,
}

impl ClientBuilder {
    /// Pays only from channel `id` (it is topped up when exhausted, within the limits and
    /// [`DepositPolicy::auto_top_up`], and never replaced by a new one). Default: the usable
    /// channel with the provider that has the most remaining.
    pub fn channel(mut self, id: B256) -> Self {
        self.pinned = Some(id);
        self
    }

    /// Pays only through these `PaymentChannel` contracts: a 402 naming another contract is
    /// refused ([`Error::ContractNotAllowed`]) before anything is opened or signed. Default:
    /// any contract the node names.
    pub fn allowed_contracts(mut self, contracts: impl IntoIterator<Item = Address>) -> Self {
        self.allowed_contracts = Some(contracts.into_iter().collect());
        self
    }

    /// Calls `hook` on every channel opened or topped up, automatic or not.
    pub fn on_event(mut self, hook: EventHook) -> Self {
        self.events = Some(Hook(hook));
        self
    }

    /// A client that only lists and refreshes channels: the state's payer is neither checked
    /// nor recorded, so any key (or a throwaway one) may stand in.
    pub fn inspect_only(mut self) -> Self {
        self.inspect_only = true;
        self
    }

    /// The chain's RPC endpoint (transactions are signed with the depositor's key).
    pub fn rpc(mut self, url: impl Into<String>) -> Self {
        self.rpc = Some(url.into());
        self
    }

    /// An already connected chain client (confirmations, observer, ...).
    pub fn chain(mut self, chain: ChainClient) -> Self {
        self.chain = Some(chain);
        self
    }

    /// Funding without a chain client (tests). Lifecycle operations then fail.
    pub fn funding(mut self, funding: Arc<dyn Funding>) -> Self {
        self.funding = Some(funding);
        self
    }

    /// Signs vouchers with `key` instead of the depositor's key. New channels name it as
    /// their signer, so it can only spend what those channels hold.
    pub fn session_key(mut self, key: PrivateKeySigner) -> Self {
        self.session_key = Some(key);
        self
    }

    /// The spending limits. Required.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// How new channels are funded.
    pub fn deposit_policy(mut self, policy: DepositPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Tuning of the payment loop.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Keeps the client's state durably in `dir`. Without it (or [`Self::store`]) the state
    /// lives in memory and a restarted client cannot continue its channels.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// Uses an opened state store.
    pub fn store(mut self, store: StateStore) -> Self {
        self.store = Some(store);
        self
    }

    /// The HTTP client used for requests and close requests.
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    /// Connects (if an RPC URL was given), opens the state and loads the channels.
    pub async fn build(self) -> Result<Client> {
        let limits =
            self.limits.ok_or_else(|| Error::Config("Client::builder: limits are required".into()))?;
        let chain = match (self.chain, &self.rpc) {
            (Some(chain), _) => Some(chain),
            (None, Some(url)) => Some(ChainClient::connect(url, self.signer.clone()).await?),
            (None, None) => None,
        };
        let funding: Arc<dyn Funding> = match (self.funding, &chain) {
            (Some(f), _) => f,
            (None, Some(chain)) => Arc::new(chain.clone()),
            (None, None) => {
                return Err(Error::Chain("Client::builder: an RPC URL or a chain client is required".into()));
            }
        };
        let store = match (self.store, self.state_dir) {
            (Some(store), _) => store,
            (None, Some(dir)) => StateStore::open(dir)?,
            (None, None) => StateStore::in_memory(),
        };
        if !self.inspect_only {
            // One payer per state: another key's channels mixed in would be paid from, or
            // topped up with, the wrong account.
            store.bind_payer(funding.payer())?;
        }
        let depositor = self.signer.clone();
        let voucher_signer = self.session_key.unwrap_or_else(|| self.signer.clone());
        let known = store.channels()?;
        if let Some(id) = self.pinned
            && !known.iter().any(|ch| ch.id == id)
        {
            return Err(Error::UnknownChannel(id));
        }
        let channels = known.into_iter().map(|ch| (ch.id, Arc::new(tokio::sync::Mutex::new(ch)))).collect();
        Ok(Client {
            inner: Arc::new(Inner {
                funding,
                chain,
                depositor,
                signer: voucher_signer,
                store,
                limits,
                policy: self.policy,
                settings: self.settings,
                http: self.http.unwrap_or_default(),
                channels: Mutex::new(channels),
                pinned: self.pinned,
                allowed_contracts: self.allowed_contracts,
                events: self.events,
                opening: tokio::sync::Mutex::new(()),
                windows: Mutex::new(HashMap::new()),
                unsent: Mutex::new(HashMap::new()),
                in_flight: Mutex::new(HashMap::new()),
                offers: Mutex::new(HashMap::new()),
            }),
        })
    }
}

/// Pays HTTP 402 `channel` payments by itself, and manages the payer's channels.
///
/// Cheap to clone (all clones share channels and state). Use [`Client::http`] for a
/// `reqwest`-compatible client that pays, or [`Client::execute`].
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

type Slot = Arc<tokio::sync::Mutex<ClientChannel>>;

#[derive(Debug)]
struct Inner {
    funding: Arc<dyn Funding>,
    chain: Option<ChainClient>,
    /// The depositor's key (signs gasless opens).
    depositor: PrivateKeySigner,
    /// The voucher signer (the depositor or a session key).
    signer: PrivateKeySigner,
    store: StateStore,
    limits: Limits,
    policy: DepositPolicy,
    settings: Settings,
    http: reqwest::Client,
    /// Every channel the client knows, each behind the lock that serialises its signing.
    channels: Mutex<HashMap<B256, Slot>>,
    /// The only channel payments may use, if one was chosen.
    pinned: Option<B256>,
    /// The only `PaymentChannel` contracts payments may go through, if restricted.
    allowed_contracts: Option<Vec<Address>>,
    /// Told of every open and top-up.
    events: Option<Hook>,
    /// Serialises opening and topping up, so concurrent requests open one channel, not many.
    opening: tokio::sync::Mutex<()>,
    /// One prepaying voucher in flight per channel (credit windows).
    windows: Mutex<HashMap<B256, Arc<WindowGate>>>,
    /// Per channel, the latest voucher whose request failed in transport, to send again.
    unsent: Mutex<HashMap<B256, Prepared>>,
    /// Per channel, the most the requests in flight may be charged: the node reserves that
    /// much for them, so a voucher that rebases on the node's receipt covers it too.
    in_flight: Mutex<HashMap<B256, U256>>,
    /// The requirements last accepted per request target, so repeated requests pay at once
    /// instead of first collecting a 402.
    offers: Mutex<HashMap<String, PaymentRequirements>>,
}

/// A voucher (or session token) ready to be sent.
#[derive(Clone, Debug)]
struct Prepared {
    channel: B256,
    /// The cumulative amount the voucher was built on (what the node had charged, as far as
    /// the client knew).
    base: U256,
    /// The voucher's nonce (for a session: the nonce of the voucher that prepaid it).
    nonce: u64,
    /// `PAYMENT-SIGNATURE`, or `PAYMENT-SESSION` for a request inside a prepaid window.
    name: &'static str,
    header: HeaderValue,
    /// Held while a prepaying voucher is in flight (until its receipt is taken or the request
    /// ends).
    _window: Option<Arc<WindowGuard>>,
}

/// Whether a prepaying voucher of a channel is in flight, and a wake-up for the requests
/// waiting for its session.
#[derive(Debug, Default)]
struct WindowGate {
    busy: AtomicBool,
    done: tokio::sync::Notify,
}

/// A request in flight on a channel, counted in [`Inner::in_flight`] until dropped.
#[derive(Debug)]
struct InFlight {
    inner: Arc<Inner>,
    channel: B256,
    amount: U256,
}

impl InFlight {
    fn new(inner: &Arc<Inner>, channel: B256, amount: U256) -> Self {
        let mut map = inner.in_flight.lock();
        let total = map.entry(channel).or_default();
        *total = total.saturating_add(amount);
        Self { inner: Arc::clone(inner), channel, amount }
    }

    /// What the other requests in flight on the channel may be charged.
    fn others(&self) -> U256 {
        let map = self.inner.in_flight.lock();
        map.get(&self.channel).copied().unwrap_or_default().saturating_sub(self.amount)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut map = self.inner.in_flight.lock();
        if let Some(total) = map.get_mut(&self.channel) {
            *total = total.saturating_sub(self.amount);
            if total.is_zero() {
                map.remove(&self.channel);
            }
        }
    }
}

/// Frees a [`WindowGate`] when dropped.
#[derive(Debug)]
struct WindowGuard(Arc<WindowGate>);

impl Drop for WindowGuard {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Release);
        self.0.done.notify_waiters();
    }
}

impl Client {
    /// Starts building a client whose depositor (and, unless a session key is set, voucher
    /// signer) is `signer`.
    pub fn builder(signer: PrivateKeySigner) -> ClientBuilder {
        ClientBuilder {
            signer,
            session_key: None,
            rpc: None,
            chain: None,
            funding: None,
            limits: None,
            policy: DepositPolicy::default(),
            settings: Settings::default(),
            state_dir: None,
            store: None,
            http: None,
            pinned: None,
            events: None,
            inspect_only: false,
            allowed_contracts: None,
        }
    }

    /// A `reqwest` client that pays 402s with this client.
    pub fn http(&self) -> reqwest_middleware::ClientWithMiddleware {
        reqwest_middleware::ClientBuilder::new(self.inner.http.clone())
            .with(crate::PaymentMiddleware::new(self.clone()))
            .build()
    }

    /// Sends `request`, paying if the server answers 402. The [`Payment`] is in the response's
    /// extensions.
    pub async fn execute(&self, request: Request) -> Result<Response> {
        let http = self.inner.http.clone();
        self.execute_with(request, move |r| {
            let http = http.clone();
            Box::pin(async move {
                let url = r.url().to_string();
                http.execute(r).await.map_err(|source| unreachable_or_http(url, source))
            })
        })
        .await
    }

    /// The payment requirement this client would pay for `GET url` (from an unpaid request),
    /// checked against the network and the price limit. A route that answers without a 402 is
    /// [`Error::NoAcceptableRequirements`].
    pub async fn offer_for(&self, url: &str) -> Result<PaymentRequirements> {
        let response = self
            .inner
            .http
            .get(url)
            .send()
            .await
            .map_err(|source| unreachable_or_http(url.to_owned(), source))?;
        if response.status() != StatusCode::PAYMENT_REQUIRED {
            return Err(Error::NoAcceptableRequirements(format!(
                "{url} answered {} without asking for payment",
                response.status()
            )));
        }
        self.choose(&read_402(response).await?)
    }

    /// The voucher signer's address.
    pub fn signer(&self) -> Address {
        self.inner.signer.address()
    }

    /// The depositor's address.
    pub fn payer(&self) -> Address {
        self.inner.funding.payer()
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The chain client, if the client has one.
    pub fn chain(&self) -> Option<&ChainClient> {
        self.inner.chain.as_ref()
    }

    /// Every known channel, in id order.
    pub async fn channels(&self) -> Vec<ClientChannel> {
        let slots: Vec<Slot> = {
            let map = self.inner.channels.lock();
            let mut ids: Vec<_> = map.keys().copied().collect();
            ids.sort();
            ids.iter().filter_map(|id| map.get(id).cloned()).collect()
        };
        let mut out = Vec::with_capacity(slots.len());
        for slot in slots {
            out.push(slot.lock().await.clone());
        }
        out
    }

    /// One channel.
    pub async fn channel(&self, id: B256) -> Result<ClientChannel> {
        Ok(self.slot(id)?.lock().await.clone())
    }

    fn slot(&self, id: B256) -> Result<Slot> {
        self.inner.channels.lock().get(&id).cloned().ok_or(Error::UnknownChannel(id))
    }

    fn chain_client(&self) -> Result<&ChainClient> {
        self.inner.chain.as_ref().ok_or_else(|| Error::Config("this client has no chain connection".into()))
    }

    /// The core loop: `send` performs one HTTP exchange.
    pub(crate) async fn execute_with<'a, F>(&self, request: Request, mut send: F) -> Result<Response>
    where
        F: FnMut(Request) -> BoxFuture<'a, Result<Response>>,
    {
        let target = format!("{} {}", request.method(), request.url());
        let origin = request.url().origin().ascii_serialization();
        let mut offer = self.inner.offers.lock().get(&target).cloned();
        if offer.is_none() {
            let response = send(try_clone(&request)?).await?;
            if response.status() != StatusCode::PAYMENT_REQUIRED {
                return Ok(response);
            }
            let required = read_402(response).await?;
            offer = Some(self.choose(&required)?);
        }
        let mut offer = offer.ok_or_else(|| Error::Malformed("no payment requirements".into()))?;
        let mut resend: Option<Prepared> = None;
        let mut waiting_since: Option<Instant> = None;
        let mut last = ErrorCode::PaymentRequired;
        for attempt in 1..=self.inner.settings.max_attempts {
            let prepared = match resend.take() {
                Some(p) => p,
                None => self.prepare(&offer, &origin).await?,
            };
            let mut paid = try_clone(&request)?;
            paid.headers_mut().insert(prepared.name, prepared.header.clone());
            // Concurrent requests each sign a voucher covering their own price on top of the
            // others' (nonces and amounts both rise), so the node serves them in any order
            // without a corrective round trip; a voucher rebased on a receipt covers what is
            // still in flight.
            let flight = InFlight::new(&self.inner, prepared.channel, offer.amount);
            let mut response = match send(paid).await {
                Ok(response) => response,
                Err(e) => {
                    if prepared.name == PAYMENT_SIGNATURE {
                        let keep = Prepared { _window: None, ..prepared };
                        self.inner.unsent.lock().insert(keep.channel, keep);
                    }
                    return Err(e);
                }
            };
            if response.status() == StatusCode::CONFLICT && response.headers().contains_key(REPLAYED) {
                // A voucher resent after a transport failure had paid for a response that was
                // lost, and the node does not keep it: take that request's receipt, and pay
                // for this one again.
                self.receipt(&prepared, &response, &offer, attempt, &flight).await?;
                continue;
            }
            if response.status() != StatusCode::PAYMENT_REQUIRED {
                let payment = self.receipt(&prepared, &response, &offer, attempt, &flight).await?;
                self.inner.offers.lock().insert(target, offer);
                if payment.is_none() {
                    let not_charged = self.not_charged(&prepared).await?;
                    tracing::debug!(target: "x402_client::pay", channel = %prepared.channel, status = %response.status(), "not charged");
                    response.extensions_mut().insert(not_charged);
                }
                if let Some(payment) = payment {
                    tracing::debug!(
                        target: "x402_client::pay",
                        channel = %payment.channel_id,
                        nonce = payment.nonce,
                        charged = %payment.charged,
                        attempts = attempt,
                        "paid"
                    );
                    response.extensions_mut().insert(payment);
                }
                return Ok(response);
            }
            let required = read_402(response).await?;
            let code = required.error.unwrap_or(ErrorCode::PaymentRequired);
            last = code;
            tracing::debug!(target: "x402_client::pay", channel = %prepared.channel, %code, attempt, "payment refused");
            match code {
                ErrorCode::NonceTooLow | ErrorCode::AmountBelowPrice => {
                    let state = required
                        .accepts
                        .iter()
                        .find_map(|a| a.extra.channel.as_ref().filter(|s| s.channel_id == prepared.channel))
                        .ok_or_else(|| Error::Malformed(format!("{code} without the channel's state")))?;
                    let slot = self.slot(prepared.channel)?;
                    let mut ch = slot.lock().await;
                    if ch.resync(state)? == crate::state::Resync::Rebased {
                        ch.cumulative = ch.spent.max(ch.cumulative).saturating_add(flight.others());
                    }
                    self.inner.store.put(&ch)?;
                    drop(ch);
                    // The price may have changed.
                    offer = self.choose(&required)?;
                }
                ErrorCode::ChannelUnknown | ErrorCode::InsufficientDeposit | ErrorCode::Unavailable => {
                    // The node has not seen the channel (or its latest deposit) yet, or is
                    // briefly down: send the same voucher again in a moment. Nothing new is
                    // signed, so nothing more is put at risk.
                    let since = *waiting_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.inner.settings.node_wait {
                        return Err(Error::Refused { code, message: None });
                    }
                    tokio::time::sleep(self.inner.settings.backoff).await;
                    resend = Some(prepared);
                }
                ErrorCode::SessionInvalid => {
                    // The window is used up, or the node revoked or forgot the session: pay
                    // with a voucher again, resynchronised to the node's state if it sent it.
                    let slot = self.slot(prepared.channel)?;
                    let mut ch = slot.lock().await;
                    ch.session = None;
                    let state = required
                        .accepts
                        .iter()
                        .find_map(|a| a.extra.channel.as_ref().filter(|s| s.channel_id == prepared.channel));
                    if let Some(state) = state {
                        ch.resync(state)?;
                        self.inner.store.put(&ch)?;
                    }
                }
                ErrorCode::ChannelClosing if self.exit_cancelled(prepared.channel).await? => {
                    // The chain says open without an exit (a top-up cancelled it): the node
                    // has not followed yet. Send the same voucher again in a moment.
                    let since = *waiting_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.inner.settings.node_wait {
                        return Err(Error::Refused { code, message: None });
                    }
                    tokio::time::sleep(self.inner.settings.backoff).await;
                    resend = Some(prepared);
                }
                ErrorCode::ChannelClosing | ErrorCode::ChannelClosed => {
                    self.retire(prepared.channel, code).await?;
                }
                _ => return Err(Error::Refused { code, message: None }),
            }
        }
        Err(Error::TooManyAttempts { attempts: self.inner.settings.max_attempts, last })
    }

    /// The node did not charge the request `prepared` paid: its voucher is void (the node did
    /// not keep it), so the next one builds on what was charged before it.
    async fn not_charged(&self, prepared: &Prepared) -> Result<NotCharged> {
        let slot = self.slot(prepared.channel)?;
        let mut ch = slot.lock().await;
        if prepared.name == PAYMENT_SIGNATURE {
            ch.not_charged(prepared.nonce, prepared.base);
            self.inner.store.put(&ch)?;
        }
        Ok(NotCharged { channel_id: ch.id, total_charged: ch.spent, deposit: ch.deposit })
    }

    /// Whether the node's `channel_closing` is only the node lagging the chain: the client
    /// holds the channel open and the chain agrees (no exit pending). Without a chain
    /// connection, whether the client believes it open.
    async fn exit_cancelled(&self, id: B256) -> Result<bool> {
        let slot = self.slot(id)?;
        let (contract, usable) = {
            let ch = slot.lock().await;
            (ch.terms.contract, ch.usable())
        };
        if !usable {
            return Ok(false);
        }
        let Some(chain) = &self.inner.chain else { return Ok(true) };
        let onchain = chain.channel(contract, id).await?;
        Ok(onchain.status == x402_protocol::bindings::IPaymentChannel::Status::Open
            && onchain.exitAt.to::<u64>() == 0)
    }

    /// Picks the requirement to pay: scheme `channel-voucher` on the client's chain, within the price
    /// limit.
    fn choose(&self, required: &PaymentRequired) -> Result<PaymentRequirements> {
        let chain_id = self.inner.funding.chain_id();
        let mut ours: Vec<&PaymentRequirements> =
            required.accepts.iter().filter(|a| a.scheme == SCHEME).collect();
        if ours.is_empty() {
            let schemes: Vec<&str> = required.exact.iter().map(|a| a.scheme.as_str()).collect();
            return Err(Error::NoAcceptableRequirements(format!("no `{SCHEME}` scheme among {schemes:?}")));
        }
        // The vouchers are signed under this client's `PaymentChannel` domain: an offer naming
        // another one is for another contract version.
        ours.retain(|a| a.extra.domain == wire::DomainInfo::channel());
        if ours.is_empty() {
            return Err(Error::NoAcceptableRequirements(format!(
                "the `{SCHEME}` offers name another EIP-712 domain than {:?}",
                wire::DomainInfo::channel()
            )));
        }
        if let Some(allowed) = &self.inner.allowed_contracts {
            let named = ours[0].extra.contract;
            ours.retain(|a| allowed.contains(&a.extra.contract));
            if ours.is_empty() {
                return Err(Error::ContractNotAllowed { contract: named });
            }
        }
        let Some(on_chain) = ours.iter().find(|a| a.network.chain_id == chain_id) else {
            return Err(Error::WrongNetwork { rpc: chain_id, wanted: ours[0].network.chain_id });
        };
        self.inner.limits.check_price(on_chain.amount)?;
        Ok((*on_chain).clone())
    }

    /// Signs the next voucher for `offer`, opening or topping up a channel if needed. The
    /// voucher is durable before this returns.
    async fn prepare(&self, offer: &PaymentRequirements, origin: &str) -> Result<Prepared> {
        let terms = terms_of(offer);
        let price = offer.amount;
        let domain = ChannelDomain::new(offer.network.chain_id, offer.extra.contract);
        let window = self.inner.settings.credit_window.min(offer.extra.max_credit_window.unwrap_or(1)).max(1);
        let mut tries = 0;
        let waiting_since = Instant::now();
        while tries < 4 {
            let slot = match self.pick(&terms).await? {
                Some(slot) => slot,
                None => self.open_for(offer, origin).await?,
            };
            let mut ch = slot.lock().await;
            // A voucher whose request failed in transport is sent again rather than replaced
            // by a new one a price higher: the node may never have seen it, and raising the
            // signed ceiling on every failed attempt would put more at risk each time.
            let unsent = self.inner.unsent.lock().remove(&ch.id);
            if let Some(unsent) = unsent.filter(|p| p.nonce == ch.nonce && ch.status == ChannelStatus::Open) {
                return Ok(unsent);
            }
            let mut gate = None;
            if window > 1 {
                if let Some(token) = ch.take_session_use() {
                    // Inside the prepaid window: nothing is signed, nothing more is put at risk.
                    let header = HeaderValue::from_str(&wire::encode_session(ch.id, token))
                        .map_err(|e| Error::Malformed(e.to_string()))?;
                    return Ok(Prepared {
                        channel: ch.id,
                        base: ch.cumulative,
                        nonce: ch.nonce,
                        name: PAYMENT_SESSION,
                        header,
                        _window: None,
                    });
                }
                // One prepaying voucher at a time per channel: requests that find no session
                // wait for the grant of the voucher in flight instead of each prepaying
                // another window, which would multiply what is at risk.
                let g = self.window_gate(ch.id);
                let notified = g.done.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if g.busy.load(Ordering::Acquire) && waiting_since.elapsed() < self.inner.settings.node_wait {
                    drop(ch);
                    let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
                    continue;
                }
                g.busy.store(true, Ordering::Release);
                gate = Some(Arc::new(WindowGuard(Arc::clone(&g))));
            }
            let base = ch.cumulative;
            match ch.next_voucher_ahead(price, window) {
                Ok(voucher) => {
                    let signed = domain.sign(&self.inner.signer, voucher)?;
                    ch.signed(signed.signature.clone());
                    let payload = PaymentPayload::new(offer, &signed);
                    self.inner.store.put(&ch)?;
                    drop(ch);
                    // Group commit: concurrent requests share one fsync.
                    self.inner.store.sync().await?;
                    let header = HeaderValue::from_str(&wire::encode_header(&payload))
                        .map_err(|e| Error::Malformed(e.to_string()))?;
                    return Ok(Prepared {
                        channel: signed.channel_id(),
                        base,
                        nonce: signed.nonce(),
                        name: PAYMENT_SIGNATURE,
                        header,
                        _window: gate,
                    });
                }
                Err(Error::ChannelExhausted { .. }) => {
                    let id = ch.id;
                    drop((ch, gate));
                    self.replenish(id, offer, origin).await?;
                }
                Err(e @ Error::ChannelState { .. }) => {
                    if self.inner.pinned.is_some() {
                        return Err(e);
                    }
                    // Not usable any more: the next pick skips it.
                    drop((ch, gate));
                }
                Err(e) => return Err(e),
            }
            tries += 1;
        }
        Err(Error::Chain("could not find, open or top up a channel for this payment".into()))
    }

    fn window_gate(&self, id: B256) -> Arc<WindowGate> {
        Arc::clone(self.inner.windows.lock().entry(id).or_default())
    }

    /// Whether payments under `terms` may use `ch`: usable, on these terms, and signed and
    /// funded by this client's keys on its chain.
    fn fits(&self, ch: &ClientChannel, terms: &ChannelTerms) -> bool {
        ch.usable()
            && ch.terms == *terms
            && ch.signer == self.inner.signer.address()
            && ch.payer == self.inner.funding.payer()
            && ch.terms.network.chain_id == self.inner.funding.chain_id()
    }

    /// The channel a payment under `terms` goes to: the chosen one ([`ClientBuilder::channel`]),
    /// or else the usable one with the most remaining (ties: the lowest id), or none.
    async fn pick(&self, terms: &ChannelTerms) -> Result<Option<Slot>> {
        if let Some(id) = self.inner.pinned {
            let slot = self.slot(id)?;
            let ch = slot.lock().await;
            if ch.terms != *terms {
                return Err(Error::Config(format!(
                    "channel {id} pays {} in token {} on chain {}; this URL asks for {} in token {} on chain {}",
                    ch.terms.payee,
                    ch.terms.asset,
                    ch.terms.network.chain_id,
                    terms.payee,
                    terms.asset,
                    terms.network.chain_id
                )));
            }
            if !ch.usable() {
                return Err(ch.state_error("paying with it"));
            }
            drop(ch);
            return Ok(Some(slot));
        }
        let slots: Vec<(B256, Slot)> =
            self.inner.channels.lock().iter().map(|(id, slot)| (*id, slot.clone())).collect();
        // A channel with a voucher lost in transport comes first: that voucher pays the next
        // request without signing anything new.
        let mut best: Option<((bool, U256), B256, Slot)> = None;
        for (id, slot) in slots {
            let available = {
                let ch = slot.lock().await;
                if !self.fits(&ch, terms) {
                    continue;
                }
                ch.available()
            };
            let rank = (self.inner.unsent.lock().contains_key(&id), available);
            let better = match &best {
                None => true,
                Some((r, b, _)) => rank > *r || (rank == *r && id < *b),
            };
            if better {
                best = Some((rank, id, slot));
            }
        }
        Ok(best.map(|(_, _, slot)| slot))
    }

    /// Opens a channel for `offer` (unless a concurrent request just did, or automatic opens
    /// are off).
    async fn open_for(&self, offer: &PaymentRequirements, origin: &str) -> Result<Slot> {
        let _opening = self.inner.opening.lock().await;
        let terms = terms_of(offer);
        if let Some(slot) = self.pick(&terms).await? {
            return Ok(slot);
        }
        if !self.inner.policy.auto_open {
            return Err(Error::NoChannel { payee: terms.payee, asset: terms.asset });
        }
        let deposit = self.inner.policy.deposit(offer.amount, offer.extra.min_deposit, &self.inner.limits)?;
        self.open_channel(offer, deposit, Some(origin.to_owned()), true).await
    }

    fn emit(&self, event: ChannelEvent) {
        if let Some(Hook(hook)) = &self.inner.events {
            hook(&event);
        }
    }

    /// Opens a channel for `offer` with `deposit`, within the limits.
    async fn open_channel(
        &self,
        offer: &PaymentRequirements,
        deposit: U256,
        node: Option<String>,
        automatic: bool,
    ) -> Result<Slot> {
        let params = self.new_channel_params(offer, deposit).await?;
        let terms = terms_of(offer);
        tracing::info!(target: "x402_client::channel", payee = %terms.payee, %deposit, "opening a channel");
        let (id, credited) = self.inner.funding.open(terms.contract, params.clone(), deposit).await?;
        let payee = terms.payee;
        let slot = self.register(id, terms, &params, credited, node).await?;
        let raised_from = self.inner.policy.challenge_period.filter(|asked| *asked < params.challengePeriod);
        self.emit(ChannelEvent::Opened {
            channel_id: id,
            payee,
            deposit: credited,
            challenge_period: params.challengePeriod,
            raised_from,
            automatic,
        });
        Ok(slot)
    }

    /// The parameters of a new channel for `offer` with `deposit`, checked against the limits
    /// and the network.
    async fn new_channel_params(&self, offer: &PaymentRequirements, deposit: U256) -> Result<ChannelParams> {
        let limits = &self.inner.limits;
        if deposit > limits.max_deposit {
            return Err(Error::DepositAboveLimit { deposit, limit: limits.max_deposit });
        }
        let terms = terms_of(offer);
        let total = self.locked_total(terms.asset).await.saturating_add(deposit);
        if total > limits.max_total_deposit {
            return Err(Error::TotalDepositAboveLimit {
                asset: terms.asset,
                total,
                limit: limits.max_total_deposit,
            });
        }
        let chain_id = self.inner.funding.chain_id();
        if terms.network.chain_id != chain_id {
            return Err(Error::WrongNetwork { rpc: chain_id, wanted: terms.network.chain_id });
        }
        let min_period = u32::try_from(offer.extra.min_challenge_period).unwrap_or(u32::MAX);
        let period = self.inner.policy.challenge_period.unwrap_or(min_period).max(min_period);
        Ok(ChannelParams {
            payer: self.inner.funding.payer(),
            payee: terms.payee,
            token: terms.asset,
            signer: self.inner.signer.address(),
            challengePeriod: period,
            salt: B256::from(rand::random::<[u8; 32]>()),
        })
    }

    /// Records a channel just opened on-chain.
    async fn register(
        &self,
        id: B256,
        terms: ChannelTerms,
        params: &ChannelParams,
        credited: U256,
        node: Option<String>,
    ) -> Result<Slot> {
        let mut ch = ClientChannel::new(
            id,
            terms.clone(),
            params.payer,
            params.signer,
            params.challengePeriod,
            credited,
            node,
            unix_now(),
        );
        ch.salt = params.salt;
        self.inner.store.save(&ch).await?;
        let slot = Arc::new(tokio::sync::Mutex::new(ch));
        self.inner.channels.lock().insert(id, slot.clone());
        tracing::info!(target: "x402_client::channel", channel = %id, deposit = %credited, "channel opened");
        Ok(slot)
    }

    /// The deposits of all channels in `asset` that are not closed.
    async fn locked_total(&self, asset: Address) -> U256 {
        let slots: Vec<Slot> = self.inner.channels.lock().values().cloned().collect();
        let mut total = U256::ZERO;
        for slot in slots {
            let ch = slot.lock().await;
            if ch.terms.asset == asset && ch.status != ChannelStatus::Closed {
                total = total.saturating_add(ch.deposit);
            }
        }
        total
    }

    /// An exhausted channel: top it up within the limits, or else open a new one.
    async fn replenish(&self, id: B256, offer: &PaymentRequirements, origin: &str) -> Result<()> {
        let _opening = self.inner.opening.lock().await;
        let slot = self.slot(id)?;
        let (deposit, needed, terms, params) = {
            let ch = slot.lock().await;
            if ch.can_pay(offer.amount) {
                return Ok(()); // a concurrent request topped it up
            }
            (ch.deposit, ch.cumulative.saturating_add(offer.amount), ch.terms.clone(), ch.params())
        };
        if self.inner.pinned.is_none()
            && let Some(other) = self.pick(&terms).await?
            && other.lock().await.can_pay(offer.amount)
        {
            return Ok(()); // a concurrent request opened or topped up another
        }
        let limits = &self.inner.limits;
        let policy = &self.inner.policy;
        if !policy.auto_top_up {
            return Err(Error::ChannelExhausted { channel: id, needed, deposit });
        }
        let wanted = policy.deposit(offer.amount, U256::ZERO, limits)?;
        let missing = needed.saturating_sub(deposit);
        // As much as the policy wants, as far as the per-channel limit allows.
        let amount = wanted.max(missing).min(limits.max_deposit.saturating_sub(deposit));
        if !amount.is_zero() && amount >= missing {
            let total = self.locked_total(offer.asset).await.saturating_add(amount);
            if total > limits.max_total_deposit {
                return Err(Error::TotalDepositAboveLimit {
                    asset: offer.asset,
                    total,
                    limit: limits.max_total_deposit,
                });
            }
            tracing::info!(target: "x402_client::channel", channel = %id, %amount, "topping up");
            let new_deposit = self.inner.funding.top_up(offer.extra.contract, &params, amount).await?;
            let mut ch = slot.lock().await;
            let added = new_deposit.saturating_sub(ch.deposit);
            ch.topped_up(added);
            self.inner.store.save(&ch).await?;
            let deposit = ch.deposit;
            drop(ch);
            self.emit(ChannelEvent::ToppedUp { channel_id: id, amount: added, deposit, automatic: true });
            return Ok(());
        }
        if self.inner.pinned.is_some() || !policy.auto_open {
            return Err(Error::ChannelExhausted { channel: id, needed, deposit });
        }
        // The channel is at its limit: continue on a new one.
        let deposit = policy.deposit(offer.amount, offer.extra.min_deposit, limits)?;
        self.open_channel(offer, deposit, Some(origin.to_owned()), true).await?;
        Ok(())
    }

    /// The node says the channel is closing or closed: stop using it.
    async fn retire(&self, id: B256, code: ErrorCode) -> Result<()> {
        let slot = self.slot(id)?;
        let mut ch = slot.lock().await;
        if ch.status == ChannelStatus::Open {
            ch.status =
                if code == ErrorCode::ChannelClosed { ChannelStatus::Closed } else { ChannelStatus::Closing };
            self.inner.store.save(&ch).await?;
        }
        tracing::info!(target: "x402_client::channel", channel = %id, %code, "channel no longer usable");
        Ok(())
    }

    /// Takes the `PAYMENT-RESPONSE` of a paid request.
    async fn receipt(
        &self,
        prepared: &Prepared,
        response: &Response,
        offer: &PaymentRequirements,
        attempts: u32,
        flight: &InFlight,
    ) -> Result<Option<Payment>> {
        let Some(value) = response.headers().get(PAYMENT_RESPONSE) else {
            // Not served (e.g. the upstream failed): the node does not charge.
            return Ok(None);
        };
        let settled: SettlementResponse = wire::decode_header(value.as_bytes())
            .map_err(|e| Error::Malformed(format!("PAYMENT-RESPONSE: {e}")))?;
        let extra = settled
            .extra
            .ok_or_else(|| Error::Malformed("PAYMENT-RESPONSE without the channel state".into()))?;
        if extra.channel_id != prepared.channel {
            return Err(Error::Malformed(format!(
                "PAYMENT-RESPONSE for channel {} to a voucher of channel {}",
                extra.channel_id, prepared.channel
            )));
        }
        let slot = self.slot(prepared.channel)?;
        let mut ch = slot.lock().await;
        ch.receipt(&extra)?;
        if extra.nonce == ch.nonce {
            // Rebased on what the node charged: the requests still in flight are reserved on
            // the node on top of that. Receipts arrive in any order, so the base is the most
            // the node ever reported charged (a request committed after this one may have
            // been answered first, and is no longer in flight).
            ch.cumulative = ch.spent.max(ch.cumulative).saturating_add(flight.others());
        }
        self.inner.store.put(&ch)?;
        Ok(Some(Payment {
            channel_id: extra.channel_id,
            nonce: extra.nonce,
            cumulative_amount: extra.cumulative_amount,
            charged: extra.charged,
            total_charged: extra.total_charged,
            deposit: ch.deposit,
            asset: offer.asset,
            attempts,
        }))
    }

    // -------------------------------------------------------------------------------------
    // Channel lifecycle
    // -------------------------------------------------------------------------------------

    /// Opens a channel for the route `offer` (from a 402) with `deposit`, without paying.
    /// `node` is the base URL of the provider's node (for cooperative closes).
    pub async fn open(
        &self,
        offer: &PaymentRequirements,
        deposit: U256,
        node: Option<String>,
    ) -> Result<ClientChannel> {
        let _opening = self.inner.opening.lock().await;
        if deposit.is_zero() {
            return Err(Error::ZeroAmount("a deposit"));
        }
        let offer = PaymentRequirements { amount: U256::ZERO, ..offer.clone() };
        let slot = self.open_channel(&offer, deposit, node, false).await?;
        let ch = slot.lock().await.clone();
        Ok(ch)
    }

    /// Opens a channel for the route `offer` with `deposit` *gaslessly*: the depositor signs an
    /// EIP-2612 permit plus an open authorisation, or an EIP-3009 authorisation (by `kind`),
    /// and `relayer` submits it and pays the gas. The depositor needs the tokens but no native
    /// gas. The channel is checked on-chain before it is used, so a relayer cannot make the
    /// client pay into a channel other than the one it signed.
    pub async fn open_gasless(
        &self,
        offer: &PaymentRequirements,
        deposit: U256,
        kind: GaslessKind,
        relayer: &Relayer,
        node: Option<String>,
    ) -> Result<ClientChannel> {
        use x402_protocol::{ChannelDomain, open::GaslessOpen};
        let _opening = self.inner.opening.lock().await;
        if deposit.is_zero() {
            return Err(Error::ZeroAmount("a deposit"));
        }
        let chain = self.chain_client()?;
        let offer = PaymentRequirements { amount: U256::ZERO, ..offer.clone() };
        let params = self.new_channel_params(&offer, deposit).await?;
        let terms = terms_of(&offer);
        if terms.asset.is_zero() {
            return Err(Error::Config(
                "a gasless open needs an ERC-20 token; this route takes the native token".into(),
            ));
        }
        let payer = self.inner.depositor.address();
        let balance = chain.balance(terms.asset, payer).await?;
        if balance < deposit {
            return Err(Error::InsufficientBalance { token: terms.asset, balance, needed: deposit });
        }
        let id = chain.channel_id(terms.contract, &params);
        let token = chain.token_domain(terms.asset).await?;
        let channels = ChannelDomain::new(terms.network.chain_id, terms.contract);
        let now = chain.now().await?;
        let ttl = self.inner.settings.close_deadline.as_secs().max(60);
        let kind = match kind {
            GaslessKind::Auto if chain.supports_eip3009(terms.asset, payer).await => GaslessKind::Transfer,
            GaslessKind::Auto => GaslessKind::Permit,
            kind => kind,
        };
        let open = match kind {
            GaslessKind::Transfer => GaslessOpen::sign_transfer(
                &channels,
                &token,
                &self.inner.depositor,
                &params,
                deposit,
                0,
                now + ttl,
            )?,
            _ => {
                let nonce = chain.permit_nonce(terms.asset, payer).await?;
                GaslessOpen::sign_permit(
                    &channels,
                    &token,
                    &self.inner.depositor,
                    &params,
                    deposit,
                    nonce,
                    now + ttl,
                )?
            }
        };
        tracing::info!(target: "x402_client::channel", channel = %id, kind = open.authorization.kind(), %deposit, "opening a channel gaslessly");
        match relayer {
            Relayer::Chain(relay) => {
                relay.ensure_chain(terms.network.chain_id)?;
                relay.submit_gasless(terms.contract, &open).await?;
            }
            Relayer::Node(base) => self.relay_via_node(base, &open).await?,
        }
        // Trust the chain, not the relayer. The id binds every parameter, the payer included.
        let onchain = chain.channel(terms.contract, id).await?;
        if onchain.status != x402_protocol::bindings::IPaymentChannel::Status::Open {
            return Err(Error::Chain(format!(
                "the relayer reported an open, but channel {id} is not open for {payer}"
            )));
        }
        let payee = terms.payee;
        let slot = self.register(id, terms, &params, U256::from(onchain.deposit), node).await?;
        let ch = slot.lock().await.clone();
        self.emit(ChannelEvent::Opened {
            channel_id: id,
            payee,
            deposit: ch.deposit,
            challenge_period: params.challengePeriod,
            raised_from: self.inner.policy.challenge_period.filter(|asked| *asked < params.challengePeriod),
            automatic: false,
        });
        Ok(ch)
    }

    async fn relay_via_node(&self, base: &str, open: &x402_protocol::open::GaslessOpen) -> Result<()> {
        let url = format!("{}{}", base.trim_end_matches('/'), x402_protocol::open::OPEN_PATH);
        let response = self
            .inner
            .http
            .post(&url)
            .json(open)
            .send()
            .await
            .map_err(|source| unreachable_or_http(url.clone(), source))?;
        let status = response.status();
        if !status.is_success() {
            let (code, message) = error_body(response).await;
            return Err(Error::RelayRefused { status: status.as_u16(), code, message });
        }
        let _: x402_protocol::open::OpenResponse = response.json().await.map_err(|_| Error::RelayRefused {
            status: status.as_u16(),
            code: None,
            message: format!(
                "{url} answered, but not as a relay of gasless opens (is the node's [relay] enabled? or pass \
                 another relay)"
            ),
        })?;
        Ok(())
    }

    /// Adds `amount` to a channel's deposit (within the limits).
    pub async fn top_up(&self, id: B256, amount: U256) -> Result<ClientChannel> {
        let _opening = self.inner.opening.lock().await;
        if amount.is_zero() {
            return Err(Error::ZeroAmount("a top-up"));
        }
        let slot = self.slot(id)?;
        let (terms, deposit, params) = {
            let ch = slot.lock().await;
            self.own(&ch)?;
            (ch.terms.clone(), ch.deposit, ch.params())
        };
        let limits = &self.inner.limits;
        let after = deposit.saturating_add(amount);
        if after > limits.max_deposit {
            return Err(Error::DepositAboveLimit { deposit: after, limit: limits.max_deposit });
        }
        let total = self.locked_total(terms.asset).await.saturating_add(amount);
        if total > limits.max_total_deposit {
            return Err(Error::TotalDepositAboveLimit {
                asset: terms.asset,
                total,
                limit: limits.max_total_deposit,
            });
        }
        let new_deposit = self.inner.funding.top_up(terms.contract, &params, amount).await?;
        let mut ch = slot.lock().await;
        let added = new_deposit.saturating_sub(ch.deposit);
        ch.topped_up(added);
        self.inner.store.save(&ch).await?;
        self.emit(ChannelEvent::ToppedUp {
            channel_id: id,
            amount: added,
            deposit: ch.deposit,
            automatic: false,
        });
        Ok(ch.clone())
    }

    /// Fails unless this client's depositor funds `ch` (a state directory holds one payer's
    /// channels, but a channel may have been adopted).
    fn own(&self, ch: &ClientChannel) -> Result<()> {
        if ch.payer != self.inner.funding.payer() {
            return Err(Error::NotPayer { channel: ch.id, payer: ch.payer, key: self.inner.funding.payer() });
        }
        Ok(())
    }

    /// Asks the channel's node to close cooperatively. With the provider's signed
    /// authorisation in the answer the client closes on-chain at once (refund now); otherwise
    /// the node closes it in its next settlement round. `node` overrides the node URL the
    /// channel was opened for.
    pub async fn close(&self, id: B256, node: Option<&str>) -> Result<Closed> {
        let slot = self.slot(id)?;
        let mut ch = slot.lock().await;
        if ch.status == ChannelStatus::Closed {
            return Err(ch.state_error("a close"));
        }
        let base = node
            .map(str::to_owned)
            .or_else(|| ch.node.clone())
            .ok_or_else(|| Error::Config(format!("no node URL known for channel {id}: pass one")))?;
        let domain = ChannelDomain::new(ch.terms.network.chain_id, ch.terms.contract);
        let deadline = unix_now() + self.inner.settings.close_deadline.as_secs();
        let body = CloseRequestBody::sign(&domain, &self.inner.signer, id, deadline)?;
        let url = format!("{}{CLOSE_PATH}", base.trim_end_matches('/'));
        let response = self
            .inner
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|source| unreachable_or_http(url.clone(), source))?;
        let status = response.status();
        if !status.is_success() {
            let (_, message) = error_body(response).await;
            return Err(Error::CloseRefused { status: status.as_u16(), message });
        }
        let answer: CloseResponse =
            response.json().await.map_err(|e| Error::Malformed(format!("close response: {e}")))?;
        if answer.channel_id != id || answer.final_amount > ch.max_signed {
            return Err(Error::NodeClaimsUnsigned {
                channel: id,
                node_nonce: ch.nonce,
                node_amount: answer.final_amount,
                signed_nonce: ch.nonce,
                signed_amount: ch.max_signed,
            });
        }
        ch.status = ChannelStatus::Closing;
        ch.close_requested = true;
        ch.spent = ch.spent.max(answer.final_amount);
        self.inner.store.save(&ch).await?;
        let mut closed = Closed {
            channel_id: id,
            final_amount: answer.final_amount,
            refund: answer.refund,
            closed_on_chain: false,
        };
        if let (Some(auth), Some(chain)) = (&answer.authorization, &self.inner.chain) {
            chain.ensure_chain(ch.terms.network.chain_id)?;
            match chain.close_with_authorization(ch.terms.contract, &ch.params(), auth).await {
                Ok(refund) => closed.refund = refund,
                // The node's settler may close the channel first (it was queued): the same
                // close at the same amount, so the refund is the node's figure.
                Err(e) => {
                    let onchain = chain.channel(ch.terms.contract, id).await?;
                    if onchain.status != x402_protocol::bindings::IPaymentChannel::Status::Closed {
                        if answer.queued {
                            // E.g. a payer without gas: the node closes it in its next batch.
                            tracing::warn!(target: "x402_client::channel", channel = %id, error = %e, "could not close on-chain; the node will close the channel");
                            return Ok(closed);
                        }
                        return Err(e);
                    }
                    tracing::info!(target: "x402_client::channel", channel = %id, "the node closed the channel first");
                }
            }
            closed.closed_on_chain = true;
            ch.status = ChannelStatus::Closed;
            self.inner.store.save(&ch).await?;
        }
        Ok(closed)
    }

    /// Starts a unilateral exit (when the provider does not cooperate). Returns when
    /// [`Self::withdraw`] becomes possible (unix seconds).
    pub async fn exit(&self, id: B256) -> Result<u64> {
        let chain = self.chain_client()?;
        let slot = self.slot(id)?;
        let mut ch = slot.lock().await;
        chain.ensure_chain(ch.terms.network.chain_id)?;
        self.own(&ch)?;
        if matches!(ch.status, ChannelStatus::Closed | ChannelStatus::Exiting { .. }) {
            return Err(ch.state_error("an exit"));
        }
        // No voucher may be signed from here on: mark it before the transaction.
        let before = ch.status;
        ch.status = ChannelStatus::Closing;
        self.inner.store.save(&ch).await?;
        match chain.request_exit(ch.terms.contract, &ch.params()).await {
            Ok(exit_at) => {
                ch.status = ChannelStatus::Exiting { exit_at };
                self.inner.store.save(&ch).await?;
                Ok(exit_at)
            }
            Err(e) => {
                ch.status = before;
                self.inner.store.save(&ch).await?;
                Err(e)
            }
        }
    }

    /// Withdraws the unspent deposit after an exit's challenge period; returns the refund.
    pub async fn withdraw(&self, id: B256) -> Result<U256> {
        let chain = self.chain_client()?;
        let slot = self.slot(id)?;
        let mut ch = slot.lock().await;
        chain.ensure_chain(ch.terms.network.chain_id)?;
        self.own(&ch)?;
        let onchain = chain.channel(ch.terms.contract, id).await?;
        if onchain.status == x402_protocol::bindings::IPaymentChannel::Status::Closed {
            if ch.status != ChannelStatus::Closed {
                ch.status = ChannelStatus::Closed;
                self.inner.store.save(&ch).await?;
            }
            return Err(Error::ChannelState {
                channel: id,
                status: "already closed on-chain (the provider closed it and the unspent deposit \
                         went back to the payer)",
                what: "a withdrawal",
            });
        }
        if onchain.status != x402_protocol::bindings::IPaymentChannel::Status::Open {
            return Err(Error::ChannelState {
                channel: id,
                status: crate::chain::status_name(onchain.status),
                what: "a withdrawal",
            });
        }
        let exit_at = onchain.exitAt.to::<u64>();
        if exit_at == 0 {
            return Err(Error::ChannelState {
                channel: id,
                status: "open without an exit",
                what: "a withdrawal",
            });
        }
        let now = chain.now().await?;
        if now < exit_at {
            return Err(Error::ChannelState {
                channel: id,
                status: "in its challenge period",
                what: "a withdrawal",
            });
        }
        let refund = chain.withdraw(ch.terms.contract, &ch.params()).await?;
        ch.status = ChannelStatus::Closed;
        ch.spent = ch.spent.max(U256::from(onchain.paid));
        self.inner.store.save(&ch).await?;
        Ok(refund)
    }

    /// Re-reads a channel's status from the chain (closed by the node, exit started
    /// elsewhere) and stores it.
    pub async fn refresh(&self, id: B256) -> Result<ClientChannel> {
        let chain = self.chain_client()?;
        let slot = self.slot(id)?;
        let mut ch = slot.lock().await;
        chain.ensure_chain(ch.terms.network.chain_id)?;
        let onchain = chain.channel(ch.terms.contract, id).await?;
        use x402_protocol::bindings::IPaymentChannel::Status;
        let open = match onchain.status {
            Status::Open => true,
            Status::Closed => false,
            // Unknown on-chain (another chain or contract): nothing to learn.
            _ => return Ok(ch.clone()),
        };
        let before = ch.clone();
        ch.chain_status(
            open,
            onchain.exitAt.to::<u64>(),
            U256::from(onchain.deposit),
            U256::from(onchain.paid),
        );
        if *ch != before {
            self.inner.store.save(&ch).await?;
        }
        Ok(ch.clone())
    }

    /// Imports a channel opened elsewhere (e.g. by a gasless open) so that payments use it.
    pub async fn adopt(&self, channel: ClientChannel) -> Result<()> {
        if channel.signer != self.inner.signer.address() {
            return Err(Error::ChannelState {
                channel: channel.id,
                status: "signed by another key",
                what: "adoption",
            });
        }
        self.inner.store.save(&channel).await?;
        let id = channel.id;
        self.inner.channels.lock().insert(id, Arc::new(tokio::sync::Mutex::new(channel)));
        Ok(())
    }

    /// Signs with the voucher signer (for gasless opens by a session key holder).
    pub fn voucher_signer(&self) -> &(dyn SignerSync + Send + Sync) {
        &self.inner.signer
    }
}

/// The terms a requirement pays under.
pub(crate) fn terms_of(offer: &PaymentRequirements) -> ChannelTerms {
    ChannelTerms {
        network: Network::new(offer.network.chain_id),
        contract: offer.extra.contract,
        payee: offer.pay_to,
        asset: offer.asset,
    }
}

/// The `{"error": code, "message": …}` of a node's JSON error answer (the raw text otherwise).
async fn error_body(response: Response) -> (Option<String>, String) {
    let text = response.text().await.unwrap_or_default();
    let json = serde_json::from_str::<serde_json::Value>(&text).ok();
    let field = |name: &str| json.as_ref().and_then(|v| v.get(name)?.as_str().map(str::to_owned));
    (field("error"), field("message").unwrap_or(text))
}

/// How a gasless open authorises the deposit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GaslessKind {
    /// EIP-3009 if the token has it, else EIP-2612.
    #[default]
    Auto,
    /// EIP-2612 `permit` plus the payer's `OpenAuthorization`.
    Permit,
    /// EIP-3009 `receiveWithAuthorization` with the channel id as nonce.
    Transfer,
}

/// Who submits a gasless open (and pays its gas).
#[derive(Clone, Debug)]
pub enum Relayer {
    /// The provider's node, at its base URL (`POST /x402/open`).
    Node(String),
    /// Any account with gas, through its own chain client.
    Chain(ChainClient),
}

fn try_clone(request: &Request) -> Result<Request> {
    request.try_clone().ok_or(Error::RequestNotCloneable)
}

/// Reads a 402's requirements: the `PAYMENT-REQUIRED` header, or else the JSON body.
pub async fn read_402(response: Response) -> Result<PaymentRequired> {
    if let Some(value) = response.headers().get(PAYMENT_REQUIRED) {
        return wire::decode_header(value.as_bytes())
            .map_err(|e| Error::Malformed(format!("PAYMENT-REQUIRED: {e}")));
    }
    let body = response.bytes().await?;
    serde_json::from_slice(&body)
        .map_err(|e| Error::Malformed(format!("402 without PAYMENT-REQUIRED, body: {e}")))
}

fn unreachable_or_http(url: String, source: reqwest::Error) -> Error {
    // A refused connection, a timeout, or a connection lost while the request was sent.
    if source.is_connect() || source.is_timeout() || source.is_request() {
        Error::Unreachable { url, source }
    } else {
        Error::Http(source)
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
