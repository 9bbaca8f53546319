//! The payment logic of [`x402_client::Client`] against a mocked provider node and a mocked
//! chain: opening, limits, concurrency, resynchronisation, restarts, top-ups, lagging nodes,
//! closed channels, session keys, lying nodes.
//!
//! The mock node applies the real node's acceptance rule (nonce above its latest, amount
//! covering what it charged plus the price, within the deposit, signed by the channel's
//! signer) and counts everything it accepted, so "paid exactly once" is checked against what a
//! node would actually have charged.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use alloy::{
    primitives::{Address, B256, Bytes, Signature, U256},
    signers::local::PrivateKeySigner,
};
use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use parking_lot::Mutex;
use x402_client::{ChannelStatus, Client, DepositPolicy, Error, Funding, Limits, Settings, StateStore};
use x402_protocol::{
    ChannelDomain, Network, SignedVoucher,
    bindings::IPaymentChannel::ChannelParams,
    wire::{
        self, ChannelExtra, ChannelState, ErrorCode, PAYMENT_REQUIRED, PAYMENT_RESPONSE, PAYMENT_SIGNATURE,
        PaymentPayload, PaymentRequired, PaymentRequirements, Pricing, Resource, SettlementExtra,
        SettlementResponse,
    },
};

const CHAIN: u64 = 31337;
const PRICE: u64 = 1_000;

fn contract() -> Address {
    Address::repeat_byte(0xC0)
}

fn asset() -> Address {
    Address::repeat_byte(0xA5)
}

/// A channel on the mocked chain.
#[derive(Clone, Debug)]
struct ChainChannel {
    signer: Address,
    payee: Address,
    deposit: U256,
}

/// The mocked chain: opens and top-ups succeed at once.
#[derive(Debug, Default)]
struct MockChain {
    channels: Mutex<HashMap<B256, ChainChannel>>,
    opens: AtomicUsize,
    top_ups: AtomicUsize,
    payer: Address,
}

#[derive(Clone, Debug)]
struct MockFunding(Arc<MockChain>);

#[async_trait::async_trait]
impl Funding for MockFunding {
    fn chain_id(&self) -> u64 {
        CHAIN
    }

    fn payer(&self) -> Address {
        self.0.payer
    }

    async fn open(
        &self,
        contract: Address,
        params: ChannelParams,
        deposit: U256,
    ) -> x402_client::Result<(B256, U256)> {
        self.0.opens.fetch_add(1, Ordering::SeqCst);
        let id = params.channel_id(CHAIN, contract);
        let ch = ChainChannel { signer: params.signer, payee: params.payee, deposit };
        self.0.channels.lock().insert(id, ch);
        Ok((id, deposit))
    }

    async fn top_up(
        &self,
        contract: Address,
        params: &ChannelParams,
        amount: U256,
    ) -> x402_client::Result<U256> {
        let channel = params.channel_id(CHAIN, contract);
        self.0.top_ups.fetch_add(1, Ordering::SeqCst);
        let mut channels = self.0.channels.lock();
        let ch = channels.get_mut(&channel).ok_or(Error::UnknownChannel(channel))?;
        ch.deposit += amount;
        Ok(ch.deposit)
    }
}

/// What the mocked node holds per channel.
#[derive(Clone, Debug, Default)]
struct Held {
    nonce: u64,
    cumulative: U256,
    charged: U256,
    /// The latest voucher's signature, sent back in corrective 402s.
    signature: Bytes,
}

/// The mocked provider node.
#[derive(Debug)]
struct MockNode {
    chain: Arc<MockChain>,
    payee: Address,
    price: AtomicU64,
    min_deposit: U256,
    network: u64,
    held: Mutex<HashMap<B256, Held>>,
    closed: Mutex<HashSet<B256>>,
    /// Paid requests served.
    served: AtomicUsize,
    /// 402s sent to requests without payment.
    unpaid: AtomicUsize,
    /// Refusals per code.
    refusals: Mutex<HashMap<ErrorCode, usize>>,
    /// Answer `channel_unknown` to this many paid requests first (a node that lags the chain).
    lag: AtomicUsize,
    /// Vouchers seen (nonce per channel), to check that a lagging node got the same voucher.
    seen: Mutex<Vec<(B256, u64)>>,
    /// Claim more than was signed in corrective 402s.
    lie: AtomicBool,
    /// Send corrective 402s with a signature that is not the payer's.
    forge: AtomicBool,
}

impl MockNode {
    fn new(chain: Arc<MockChain>) -> Arc<Self> {
        Arc::new(Self {
            chain,
            payee: Address::repeat_byte(0xBB),
            price: AtomicU64::new(PRICE),
            min_deposit: U256::ZERO,
            network: CHAIN,
            held: Mutex::default(),
            closed: Mutex::default(),
            served: AtomicUsize::new(0),
            unpaid: AtomicUsize::new(0),
            refusals: Mutex::default(),
            lag: AtomicUsize::new(0),
            seen: Mutex::default(),
            lie: AtomicBool::new(false),
            forge: AtomicBool::new(false),
        })
    }

    fn requirements(&self, state: Option<ChannelState>) -> PaymentRequirements {
        PaymentRequirements {
            scheme: wire::SCHEME.into(),
            network: Network::new(self.network),
            amount: U256::from(self.price.load(Ordering::SeqCst)),
            asset: asset(),
            pay_to: self.payee,
            max_timeout_seconds: 60,
            extra: ChannelExtra {
                name: None,
                version: None,
                contract: contract(),
                domain: wire::DomainInfo::channel(),
                min_challenge_period: 3600,
                min_deposit: self.min_deposit,
                pricing: Pricing::Exact,
                channel: state,
                max_credit_window: None,
            },
        }
    }

    fn refuse(&self, code: ErrorCode, state: Option<ChannelState>) -> Response {
        if code != ErrorCode::PaymentRequired {
            *self.refusals.lock().entry(code).or_default() += 1;
        } else {
            self.unpaid.fetch_add(1, Ordering::SeqCst);
        }
        let body = PaymentRequired::new(
            Some(code),
            Resource { url: "http://127.0.0.1/paid".into(), description: None, mime_type: None },
            vec![self.requirements(state)],
        );
        let header = wire::encode_header(&body);
        (StatusCode::PAYMENT_REQUIRED, [(PAYMENT_REQUIRED, header)], axum::Json(body)).into_response()
    }

    fn state(&self, id: B256, held: Held, deposit: U256) -> ChannelState {
        let mut state = ChannelState {
            channel_id: id,
            nonce: held.nonce,
            cumulative_amount: held.cumulative,
            charged: held.charged,
            deposit,
            signature: held.signature,
        };
        if self.forge.load(Ordering::SeqCst) {
            state.signature = Bytes::from(vec![0x11; 65]);
        }
        if self.lie.load(Ordering::SeqCst) {
            state.charged += U256::from(1_000_000);
            state.cumulative_amount += U256::from(1_000_000);
        }
        state
    }

    fn handle(&self, headers: &HeaderMap) -> Response {
        let Some(value) = headers.get(PAYMENT_SIGNATURE).or_else(|| headers.get(wire::X_PAYMENT)) else {
            return self.refuse(ErrorCode::PaymentRequired, None);
        };
        let Ok(payload) = wire::decode_header::<PaymentPayload>(value.as_bytes()) else {
            return self.refuse(ErrorCode::InvalidPayload, None);
        };
        let voucher: SignedVoucher = payload.payload.into();
        let id = voucher.channel_id();
        self.seen.lock().push((id, voucher.nonce()));
        if self.lag.load(Ordering::SeqCst) > 0 {
            self.lag.fetch_sub(1, Ordering::SeqCst);
            return self.refuse(ErrorCode::ChannelUnknown, None);
        }
        let Some(onchain) = self.chain.channels.lock().get(&id).cloned() else {
            return self.refuse(ErrorCode::ChannelUnknown, None);
        };
        if self.closed.lock().contains(&id) {
            return self.refuse(ErrorCode::ChannelClosed, None);
        }
        let domain = ChannelDomain::new(CHAIN, contract());
        let signer = Signature::from_raw(&voucher.signature)
            .ok()
            .and_then(|s| s.recover_address_from_prehash(&domain.signing_hash(&voucher.voucher)).ok());
        if signer != Some(onchain.signer) || onchain.payee != self.payee {
            return self.refuse(ErrorCode::InvalidSignature, None);
        }
        let price = U256::from(self.price.load(Ordering::SeqCst));
        let mut held_map = self.held.lock();
        let held = held_map.entry(id).or_default();
        let state = self.state(id, held.clone(), onchain.deposit);
        if voucher.nonce() <= held.nonce {
            drop(held_map);
            return self.refuse(ErrorCode::NonceTooLow, Some(state));
        }
        if voucher.cumulative_amount() < held.charged + price {
            drop(held_map);
            return self.refuse(ErrorCode::AmountBelowPrice, Some(state));
        }
        if voucher.cumulative_amount() > onchain.deposit {
            drop(held_map);
            return self.refuse(ErrorCode::InsufficientDeposit, Some(state));
        }
        held.nonce = voucher.nonce();
        held.cumulative = voucher.cumulative_amount();
        held.charged += price;
        held.signature = voucher.signature.clone();
        let receipt = SettlementResponse {
            success: true,
            transaction: String::new(),
            network: Network::new(CHAIN),
            payer: self.chain.payer,
            amount: Some(price),
            extra: Some(SettlementExtra {
                channel_id: id,
                nonce: held.nonce,
                cumulative_amount: held.cumulative,
                charged: price,
                total_charged: held.charged,
                session: None,
            }),
        };
        drop(held_map);
        self.served.fetch_add(1, Ordering::SeqCst);
        (StatusCode::OK, [(PAYMENT_RESPONSE, wire::encode_header(&receipt))], "paid content").into_response()
    }

    fn charged(&self) -> U256 {
        self.held.lock().values().map(|h| h.charged).sum()
    }

    fn refusals(&self, code: ErrorCode) -> usize {
        self.refusals.lock().get(&code).copied().unwrap_or(0)
    }
}

async fn serve(node: Arc<MockNode>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
    serve_on(node, listener).0
}

/// Serves `node` on `listener`; aborting the task takes the node off the network.
fn serve_on(
    node: Arc<MockNode>,
    listener: tokio::net::TcpListener,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    async fn paid(State(node): State<Arc<MockNode>>, headers: HeaderMap) -> Response {
        node.handle(&headers)
    }
    let app =
        Router::new().route("/paid", get(paid)).route("/free", get(|| async { "free" })).with_state(node);
    let addr = listener.local_addr().expect("has an address");
    (addr, tokio::spawn(async move { axum::serve(listener, app).await.expect("serves") }))
}

struct Setup {
    chain: Arc<MockChain>,
    node: Arc<MockNode>,
    url: String,
    key: PrivateKeySigner,
}

async fn setup() -> Setup {
    let key = PrivateKeySigner::random();
    let chain = Arc::new(MockChain { payer: key.address(), ..Default::default() });
    let node = MockNode::new(chain.clone());
    let addr = serve(node.clone()).await;
    Setup { chain, node, url: format!("http://{addr}/paid"), key }
}

fn limits() -> Limits {
    Limits::from_units(u128::from(PRICE) * 10, 1_000_000, 10_000_000)
}

fn fast() -> Settings {
    Settings { node_wait: Duration::from_secs(5), backoff: Duration::from_millis(10), ..Settings::default() }
}

impl Setup {
    fn builder(&self) -> x402_client::ClientBuilder {
        Client::builder(self.key.clone())
            .funding(Arc::new(MockFunding(self.chain.clone())))
            .limits(limits())
            .settings(fast())
    }

    async fn client(&self) -> Client {
        self.builder().build().await.expect("builds")
    }
}

async fn get_paid(client: &Client, url: &str) -> x402_client::Result<(String, x402_client::Payment)> {
    let response = client.execute(reqwest::Client::new().get(url).build().expect("request")).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let payment = response.extensions().get::<x402_client::Payment>().cloned().expect("payment attached");
    Ok((response.text().await.expect("body"), payment))
}

#[tokio::test]
async fn pays_on_402_and_then_pays_up_front() {
    let s = setup().await;
    let client = s.client().await;
    for i in 1..=10u64 {
        let (body, payment) = get_paid(&client, &s.url).await.unwrap();
        assert_eq!(body, "paid content");
        assert_eq!(payment.nonce, i);
        assert_eq!(payment.total_charged, U256::from(PRICE * i));
    }
    assert_eq!(s.chain.opens.load(Ordering::SeqCst), 1, "one channel");
    assert_eq!(s.node.unpaid.load(Ordering::SeqCst), 1, "only the first request went unpaid");
    assert_eq!(s.node.charged(), U256::from(PRICE * 10));
    let ch = &client.channels().await[0];
    assert_eq!((ch.nonce, ch.spent, ch.max_signed), (10, U256::from(PRICE * 10), U256::from(PRICE * 10)));
    // The deposit follows the policy: 100 requests at the price.
    assert_eq!(ch.deposit, U256::from(PRICE * 100));
    // A free route passes through untouched.
    let free = s.url.replace("/paid", "/free");
    let response = client.execute(reqwest::Client::new().get(&free).build().unwrap()).await.unwrap();
    assert!(response.extensions().get::<x402_client::Payment>().is_none());
}

#[tokio::test]
async fn the_middleware_pays_like_execute() {
    let s = setup().await;
    let client = s.client().await;
    let http = client.http();
    for _ in 0..3 {
        let response = http.get(&s.url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.extensions().get::<x402_client::Payment>().is_some());
    }
    assert_eq!(s.node.served.load(Ordering::SeqCst), 3);
    // Errors come back as middleware errors wrapping the client's error.
    s.node.price.store(PRICE * 11, Ordering::SeqCst);
    let fresh = s.builder().build().await.unwrap().http();
    let err = fresh.get(&s.url).send().await.unwrap_err();
    let reqwest_middleware::Error::Middleware(inner) = err else { panic!("a middleware error") };
    assert!(matches!(inner.downcast_ref::<Error>(), Some(Error::PriceAboveLimit { .. })), "{inner}");
}

#[tokio::test]
async fn limits_refuse_before_anything_is_paid() {
    let s = setup().await;
    s.node.price.store(PRICE * 10 + 1, Ordering::SeqCst);
    let client = s.client().await;
    let err = get_paid(&client, &s.url).await.unwrap_err();
    assert!(matches!(err, Error::PriceAboveLimit { .. }), "{err}");
    assert_eq!(s.chain.opens.load(Ordering::SeqCst), 0, "no channel opened");
    assert!(s.node.seen.lock().is_empty(), "no voucher sent");

    // A provider minimum above the per-channel limit.
    let s = setup().await;
    let node = Arc::new(MockNode {
        min_deposit: U256::from(2_000_000),
        ..Arc::try_unwrap(MockNode::new(s.chain.clone())).unwrap()
    });
    let addr = serve(node).await;
    let err = get_paid(&s.client().await, &format!("http://{addr}/paid")).await.unwrap_err();
    assert!(matches!(err, Error::DepositAboveLimit { .. }), "{err}");
    assert_eq!(s.chain.opens.load(Ordering::SeqCst), 0);

    // The total over all channels: two providers, room for one deposit.
    let s = setup().await;
    let other = Arc::new(MockNode {
        payee: Address::repeat_byte(0xCC),
        ..Arc::try_unwrap(MockNode::new(s.chain.clone())).unwrap()
    });
    let other_url = format!("http://{}/paid", serve(other).await);
    let client =
        s.builder().limits(Limits::from_units(u128::from(PRICE), 100_000, 150_000)).build().await.unwrap();
    get_paid(&client, &s.url).await.unwrap();
    let err = get_paid(&client, &other_url).await.unwrap_err();
    assert!(matches!(err, Error::TotalDepositAboveLimit { .. }), "{err}");
    assert_eq!(s.chain.opens.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn concurrent_requests_on_one_channel_are_each_paid_once() {
    let s = setup().await;
    let client = s.client().await;
    get_paid(&client, &s.url).await.unwrap(); // opens the channel
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let client = client.clone();
            let url = s.url.clone();
            tokio::spawn(async move { get_paid(&client, &url).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(s.chain.opens.load(Ordering::SeqCst), 1);
    assert_eq!(s.node.served.load(Ordering::SeqCst), 65);
    assert_eq!(s.node.charged(), U256::from(PRICE * 65), "each request paid exactly once");
    let ch = &client.channels().await[0];
    assert_eq!(ch.spent, U256::from(PRICE * 65));
}

#[tokio::test]
async fn concurrent_first_requests_open_one_channel() {
    let s = setup().await;
    let client = s.client().await;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let client = client.clone();
            let url = s.url.clone();
            tokio::spawn(async move { get_paid(&client, &url).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(s.chain.opens.load(Ordering::SeqCst), 1);
    assert_eq!(s.node.charged(), U256::from(PRICE * 16));
}

#[tokio::test]
async fn a_restarted_client_continues_its_channel() {
    let s = setup().await;
    let dir = tempfile::tempdir().unwrap();
    {
        let client = s.builder().state_dir(dir.path()).build().await.unwrap();
        for _ in 0..5 {
            get_paid(&client, &s.url).await.unwrap();
        }
    }
    let client = s.builder().state_dir(dir.path()).build().await.unwrap();
    for i in 6..=10 {
        let (_, payment) = get_paid(&client, &s.url).await.unwrap();
        assert_eq!(payment.nonce, i);
    }
    assert_eq!(s.chain.opens.load(Ordering::SeqCst), 1, "the same channel");
    assert_eq!(s.node.charged(), U256::from(PRICE * 10), "no overpayment");
    assert_eq!(s.node.refusals(ErrorCode::NonceTooLow) + s.node.refusals(ErrorCode::AmountBelowPrice), 0);
    // Without its state, a client would start a new channel (nothing is guessed).
    let forgetful = s.client().await;
    get_paid(&forgetful, &s.url).await.unwrap();
    assert_eq!(s.chain.opens.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn exhausted_channels_are_topped_up_within_limits() {
    let s = setup().await;
    let policy = DepositPolicy { requests: 2, ..DepositPolicy::default() };
    let client = s.builder().deposit_policy(policy).build().await.unwrap();
    for _ in 0..5 {
        get_paid(&client, &s.url).await.unwrap();
    }
    assert_eq!(s.chain.opens.load(Ordering::SeqCst), 1);
    assert_eq!(s.chain.top_ups.load(Ordering::SeqCst), 2);
    assert_eq!(client.channels().await[0].deposit, U256::from(PRICE * 6));

    // Without top-ups the client says the channel is exhausted.
    let s = setup().await;
    let policy = DepositPolicy { requests: 2, auto_top_up: false, ..DepositPolicy::default() };
    let client = s.builder().deposit_policy(policy).build().await.unwrap();
    get_paid(&client, &s.url).await.unwrap();
    get_paid(&client, &s.url).await.unwrap();
    let err = get_paid(&client, &s.url).await.unwrap_err();
    assert!(matches!(err, Error::ChannelExhausted { .. }), "{err}");

    // At the per-channel limit a new channel is opened instead.
    let s = setup().await;
    let policy = DepositPolicy { requests: 2, ..DepositPolicy::default() };
    let client = s
        .builder()
        .deposit_policy(policy)
        .limits(Limits::from_units(u128::from(PRICE), u128::from(PRICE * 2), u128::from(PRICE * 10)))
        .build()
        .await
        .unwrap();
    for _ in 0..3 {
        get_paid(&client, &s.url).await.unwrap();
    }
    assert_eq!((s.chain.opens.load(Ordering::SeqCst), s.chain.top_ups.load(Ordering::SeqCst)), (2, 0));
}

#[tokio::test]
async fn a_lagging_node_gets_the_same_voucher_again() {
    let s = setup().await;
    s.node.lag.store(3, Ordering::SeqCst);
    let client = s.client().await;
    let (_, payment) = get_paid(&client, &s.url).await.unwrap();
    assert_eq!(payment.attempts, 4);
    assert_eq!(payment.nonce, 1, "nothing new was signed while waiting");
    let seen = s.node.seen.lock().clone();
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(|(_, nonce)| *nonce == 1));
    assert_eq!(client.channels().await[0].max_signed, U256::from(PRICE));

    // A node that never sees the channel: a clear error after the wait.
    let s = setup().await;
    s.node.lag.store(usize::MAX, Ordering::SeqCst);
    let settings = Settings { node_wait: Duration::from_millis(100), ..fast() };
    let client = s.builder().settings(settings).build().await.unwrap();
    let err = get_paid(&client, &s.url).await.unwrap_err();
    assert!(matches!(err, Error::Refused { code: ErrorCode::ChannelUnknown, .. }), "{err}");
}

#[tokio::test]
async fn a_closed_channel_is_replaced() {
    let s = setup().await;
    let client = s.client().await;
    let (_, first) = get_paid(&client, &s.url).await.unwrap();
    s.node.closed.lock().insert(first.channel_id);
    let (_, second) = get_paid(&client, &s.url).await.unwrap();
    assert_ne!(second.channel_id, first.channel_id);
    assert_eq!(client.channel(first.channel_id).await.unwrap().status, ChannelStatus::Closed);
}

#[tokio::test]
async fn session_keys_sign_vouchers() {
    let s = setup().await;
    let session = PrivateKeySigner::random();
    let client = s.builder().session_key(session.clone()).build().await.unwrap();
    get_paid(&client, &s.url).await.unwrap();
    let ch = &client.channels().await[0];
    assert_eq!((ch.signer, ch.payer), (session.address(), s.key.address()));
    assert_eq!(s.chain.channels.lock()[&ch.id].signer, session.address());
    // Restarted with the depositor key as signer, the client does not use the session key's
    // channel (its vouchers would be refused) and opens its own.
    let store = StateStore::in_memory();
    let with_session = s.builder().session_key(session).store(store.clone()).build().await.unwrap();
    get_paid(&with_session, &s.url).await.unwrap();
    let without = s.builder().store(store).build().await.unwrap();
    get_paid(&without, &s.url).await.unwrap();
    assert_eq!(s.node.refusals(ErrorCode::InvalidSignature), 0);
    assert_eq!(s.chain.opens.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_node_claiming_more_than_signed_is_refused() {
    let s = setup().await;
    let client = s.client().await;
    get_paid(&client, &s.url).await.unwrap();
    let before = client.channels().await[0].clone();
    // Make the node refuse the next voucher as "too low" with an inflated state.
    s.node.lie.store(true, Ordering::SeqCst);
    s.node.held.lock().values_mut().for_each(|h| h.nonce += 1);
    let err = get_paid(&client, &s.url).await.unwrap_err();
    assert!(matches!(err, Error::NodeClaimsUnsigned { .. }), "{err}");
    let after = client.channels().await[0].clone();
    assert_eq!((after.max_signed, after.spent), (before.max_signed + U256::from(PRICE), before.spent));
}

#[tokio::test]
async fn a_corrective_state_without_the_payers_signature_is_refused() {
    let s = setup().await;
    let client = s.client().await;
    get_paid(&client, &s.url).await.unwrap();
    get_paid(&client, &s.url).await.unwrap();
    let before = client.channels().await[0].clone();
    // The node claims to hold the client's next voucher (as if a request had raced it), with
    // amounts the client could have signed, but the signature is not the client's.
    s.node.forge.store(true, Ordering::SeqCst);
    s.node.held.lock().values_mut().for_each(|h| h.nonce += 1);
    let err = get_paid(&client, &s.url).await.unwrap_err();
    assert!(matches!(err, Error::UnsignedState { .. }), "{err}");
    assert!(err.to_string().contains("not signed by this client's signer"), "{err}");
    let after = client.channels().await[0].clone();
    assert_eq!(after.spent, before.spent, "the forged state was not taken");
    // With the real signature the same refusal resynchronises and pays.
    s.node.forge.store(false, Ordering::SeqCst);
    s.node.held.lock().values_mut().for_each(|h| h.nonce -= 1);
    get_paid(&client, &s.url).await.unwrap();
}

#[tokio::test]
async fn contracts_outside_the_allowlist_are_refused() {
    let s = setup().await;
    let client = s.builder().allowed_contracts([Address::repeat_byte(0xEE)]).build().await.unwrap();
    let err = get_paid(&client, &s.url).await.unwrap_err();
    assert!(matches!(err, Error::ContractNotAllowed { contract: c } if c == contract()), "{err}");
    assert_eq!(s.chain.opens.load(Ordering::SeqCst), 0, "nothing opened");
    let client = s.builder().allowed_contracts([contract()]).build().await.unwrap();
    get_paid(&client, &s.url).await.unwrap();
}

#[tokio::test]
async fn other_networks_and_schemes_are_refused() {
    let s = setup().await;
    let node = Arc::new(MockNode { network: 1, ..Arc::try_unwrap(MockNode::new(s.chain.clone())).unwrap() });
    let addr = serve(node).await;
    let err = get_paid(&s.client().await, &format!("http://{addr}/paid")).await.unwrap_err();
    assert!(matches!(err, Error::WrongNetwork { rpc: CHAIN, wanted: 1 }), "{err}");
    assert_eq!(s.chain.opens.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    let s = setup().await;
    let client = s.client().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let request = reqwest::Client::new().get(format!("http://127.0.0.1:{port}/x")).build().unwrap();
    let err = client.execute(request).await.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");
}

#[tokio::test]
async fn a_voucher_lost_in_transport_is_sent_again_not_raised() {
    let s = setup().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let (addr, server) = serve_on(s.node.clone(), listener);
    let url = format!("http://{addr}/paid");
    let client = s.client().await;
    let request = || reqwest::Client::new().get(&url).build().expect("request");
    assert_eq!(client.execute(request()).await.expect("paid").status(), StatusCode::OK);

    // The node goes away: the next voucher (nonce 2) is signed and lost on the way.
    server.abort();
    let _ = server.await;
    for _ in 0..3 {
        let err = client.execute(request()).await.expect_err("the node is down");
        assert!(matches!(err, x402_client::Error::Unreachable { .. }), "{err}");
    }
    let ch = &client.channels().await[0];
    assert_eq!((ch.nonce, ch.max_signed), (2, U256::from(2 * PRICE)), "retries did not raise the ceiling");

    // It comes back at the same address: the lost voucher is what pays.
    let listener = tokio::net::TcpListener::bind(addr).await.expect("rebinds");
    let (_, _server) = serve_on(s.node.clone(), listener);
    let response = client.execute(request()).await.expect("paid");
    let payment = response.extensions().get::<x402_client::Payment>().cloned().expect("payment");
    assert_eq!((payment.nonce, payment.total_charged, payment.attempts), (2, U256::from(2 * PRICE), 1));
    assert_eq!(s.node.charged(), U256::from(2 * PRICE));
}
