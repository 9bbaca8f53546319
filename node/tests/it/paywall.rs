//! The paywall end to end in-process: an axum app behind [`Paywall`], an in-memory chain, and
//! a real store. Every refusal of the wire format, corrective 402s, dynamic prices, restarts.

use std::sync::Arc;

use alloy::{
    primitives::{Address, B256, U256},
    signers::local::PrivateKeySigner,
};
use axum::{Extension, Router, body::Body, http::Request, response::IntoResponse, routing::get};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use http::StatusCode;
use tower::ServiceExt;
use x402_node::{
    Engine, Payment, Price, Terms,
    channel::OnchainChannel,
    metrics::Metrics,
    middleware::{Charge, PAYMENT_CHANNEL, Paywall},
    test_utils::{FlakyStore, MemoryChain},
};
use x402_protocol::{
    ChannelDomain, Voucher,
    wire::{self, ErrorCode, PaymentPayload, PaymentRequired, PaymentRequirements, SettlementResponse},
};
use x402_store::{KvStore, MemoryStore, SledStore};

const CHAIN_ID: u64 = 31337;
const PRICE: u64 = 1_000;

struct Fixture<S> {
    app: Router,
    engine: Engine<S, MemoryChain>,
    chain: MemoryChain,
    payer: PrivateKeySigner,
    id: B256,
    domain: ChannelDomain,
    requirements: PaymentRequirements,
    _store: Arc<S>,
}

fn terms() -> Terms {
    Terms {
        chain_id: CHAIN_ID,
        contract: Address::repeat_byte(0xcc),
        payee: Address::repeat_byte(0xbb),
        asset: Address::repeat_byte(0xaa),
        min_challenge_period: 3600,
        min_deposit: U256::ZERO,
        max_timeout_seconds: 30,
    }
}

fn onchain(payer: Address, deposit: u64) -> OnchainChannel {
    OnchainChannel {
        payer,
        payee: terms().payee,
        token: terms().asset,
        signer: payer,
        signer_is_contract: false,
        deposit: U256::from(deposit),
        challenge_period: 86_400,
        exit_at: 0,
        open: true,
        nonce: 0,
        paid: U256::ZERO,
        pending_close: false,
    }
}

fn app<S: KvStore>(engine: Engine<S, MemoryChain>) -> Router {
    Router::new()
        .route("/paid", get(|Extension(p): Extension<Payment>| async move { format!("hello {}", p.payer) }))
        .route(
            "/llm",
            get(|| async { ([("x-tokens", "42")], Charge(U256::from(420)), "completion").into_response() }),
        )
        .route("/broken", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .route("/free", get(|| async { "free" }))
        .layer(
            Paywall::new(engine)
                .route("/paid", Price::exact(U256::from(PRICE)))
                .route("/broken", Price::exact(U256::from(PRICE)))
                .route("/llm", Price::upto(U256::from(PRICE))),
        )
}

fn fixture<S: KvStore>(store: Arc<S>) -> Fixture<S> {
    let chain = MemoryChain::default();
    let payer = PrivateKeySigner::random();
    let id = B256::repeat_byte(0x11);
    chain.set(id, onchain(payer.address(), 10 * PRICE));
    let domain = ChannelDomain::new(CHAIN_ID, terms().contract);
    let engine = Engine::new(terms(), Arc::clone(&store), chain.clone(), Metrics::new());
    let requirements = engine.requirements(&Price::exact(U256::from(PRICE)), None);
    Fixture { app: app(engine.clone()), engine, chain, payer, id, domain, requirements, _store: store }
}

impl<S: KvStore> Fixture<S> {
    fn header(&self, nonce: u64, amount: u64) -> String {
        let signed = self
            .domain
            .sign(&self.payer, Voucher { channelId: self.id, nonce, cumulativeAmount: U256::from(amount) })
            .expect("signs");
        wire::encode_header(&PaymentPayload::new(&self.requirements, &signed))
    }

    async fn send(&self, path: &str, header: Option<(&str, String)>) -> http::Response<Body> {
        let mut req = Request::get(path);
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        self.app.clone().oneshot(req.body(Body::empty()).expect("request")).await.expect("infallible")
    }

    async fn pay(&self, path: &str, nonce: u64, amount: u64) -> http::Response<Body> {
        self.send(path, Some((wire::PAYMENT_SIGNATURE, self.header(nonce, amount)))).await
    }
}

fn required(resp: &http::Response<Body>) -> PaymentRequired {
    let h = resp.headers().get(wire::PAYMENT_REQUIRED).expect("PAYMENT-REQUIRED header");
    wire::decode_header(h.as_bytes()).expect("decodes")
}

fn settlement(resp: &http::Response<Body>) -> SettlementResponse {
    let h = resp.headers().get(wire::PAYMENT_RESPONSE).expect("PAYMENT-RESPONSE header");
    wire::decode_header(h.as_bytes()).expect("decodes")
}

async fn body_json(resp: http::Response<Body>) -> serde_json::Value {
    let bytes = http_body_util::BodyExt::collect(resp.into_body()).await.expect("body").to_bytes();
    serde_json::from_slice(&bytes).expect("json body")
}

#[tokio::test]
async fn unpaid_request_gets_terms_in_header_and_body() {
    let f = fixture(Arc::new(MemoryStore::new()));
    let resp = f.send("/paid?q=1", None).await;
    assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
    let pr = required(&resp);
    assert_eq!(pr.x402_version, 2);
    assert_eq!(pr.error, Some(ErrorCode::PaymentRequired));
    assert_eq!(pr.resource.url, "/paid?q=1");
    let req = &pr.accepts[0];
    assert_eq!((req.scheme.as_str(), req.network.chain_id), ("channel", CHAIN_ID));
    assert_eq!(req.amount, U256::from(PRICE));
    assert_eq!((req.asset, req.pay_to, req.extra.contract), (terms().asset, terms().payee, terms().contract));
    assert_eq!(req.extra.min_challenge_period, 3600);
    assert_eq!(body_json(resp).await, serde_json::to_value(&pr).expect("json"));
    // Free routes pass through.
    assert_eq!(f.send("/free", None).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn paid_request_is_served_with_payment_response_and_extension() {
    let f = fixture(Arc::new(MemoryStore::new()));
    let resp = f.pay("/paid", 1, PRICE).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let s = settlement(&resp);
    assert!(s.success);
    assert_eq!(s.transaction, "");
    assert_eq!(s.payer, f.payer.address());
    assert_eq!((s.extra.channel_id, s.extra.nonce), (f.id, 1));
    assert_eq!((s.extra.charged, s.extra.total_charged), (U256::from(PRICE), U256::from(PRICE)));
    let bytes = http_body_util::BodyExt::collect(resp.into_body()).await.expect("body").to_bytes();
    assert_eq!(bytes, format!("hello {}", f.payer.address()).as_bytes());

    // The v1 alias header works too, for the next voucher.
    let resp = f.send("/paid", Some((wire::X_PAYMENT, f.header(2, 2 * PRICE)))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(settlement(&resp).extra.total_charged, U256::from(2 * PRICE));
    // One chain lookup for the whole channel.
    assert_eq!(f.chain.lookups(), 1);
}

#[tokio::test]
async fn every_refusal_has_its_code() {
    let f = fixture(Arc::new(MemoryStore::new()));
    // The client signs a generous ceiling; the node charges the price.
    assert_eq!(f.pay("/paid", 5, 5 * PRICE).await.status(), StatusCode::OK);

    let signed = f
        .domain
        .sign(&f.payer, Voucher { channelId: f.id, nonce: 9, cumulativeAmount: U256::from(9 * PRICE) })
        .expect("signs");
    let mut wrong_scheme = PaymentPayload::new(&f.requirements, &signed);
    wrong_scheme.accepted.as_mut().expect("accepted").scheme = "exact".into();
    let mut wrong_network = PaymentPayload::new(&f.requirements, &signed);
    wrong_network.accepted.as_mut().expect("accepted").network = "eip155:1".into();
    let mut wrong_version = PaymentPayload::new(&f.requirements, &signed);
    wrong_version.x402_version = 7;
    let mut unknown = PaymentPayload::new(&f.requirements, &signed);
    unknown.payload.channel_id = B256::repeat_byte(0x99);
    let stranger = PrivateKeySigner::random();
    let forged = f
        .domain
        .sign(&stranger, Voucher { channelId: f.id, nonce: 9, cumulativeAmount: U256::from(9 * PRICE) })
        .expect("signs");
    let mut bad_types = serde_json::to_value(PaymentPayload::new(&f.requirements, &signed)).expect("json");
    bad_types["payload"]["nonce"] = serde_json::json!("nine");

    let cases: Vec<(&str, String, StatusCode, ErrorCode)> = vec![
        ("bad base64", "%%%".into(), StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload),
        ("bad json", STANDARD.encode("{nope"), StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload),
        (
            "wrong types",
            STANDARD.encode(bad_types.to_string()),
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidPayload,
        ),
        ("huge", "A".repeat(wire::MAX_HEADER_LEN + 4), StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload),
        (
            "version",
            wire::encode_header(&wrong_version),
            StatusCode::PAYMENT_REQUIRED,
            ErrorCode::InvalidX402Version,
        ),
        (
            "scheme",
            wire::encode_header(&wrong_scheme),
            StatusCode::PAYMENT_REQUIRED,
            ErrorCode::InvalidScheme,
        ),
        (
            "network",
            wire::encode_header(&wrong_network),
            StatusCode::PAYMENT_REQUIRED,
            ErrorCode::InvalidNetwork,
        ),
        ("unknown", wire::encode_header(&unknown), StatusCode::PAYMENT_REQUIRED, ErrorCode::ChannelUnknown),
        ("stale nonce", f.header(5, 6 * PRICE), StatusCode::PAYMENT_REQUIRED, ErrorCode::NonceTooLow),
        (
            "below price",
            f.header(6, 2 * PRICE - 1),
            StatusCode::PAYMENT_REQUIRED,
            ErrorCode::AmountBelowPrice,
        ),
        (
            "over deposit",
            f.header(6, 10 * PRICE + 1),
            StatusCode::PAYMENT_REQUIRED,
            ErrorCode::InsufficientDeposit,
        ),
        (
            "forged",
            wire::encode_header(&PaymentPayload::new(&f.requirements, &forged)),
            StatusCode::PAYMENT_REQUIRED,
            ErrorCode::InvalidSignature,
        ),
    ];
    for (name, header, status, code) in cases {
        let resp = f.send("/paid", Some((wire::PAYMENT_SIGNATURE, header))).await;
        assert_eq!(resp.status(), status, "{name}");
        let pr = required(&resp);
        assert_eq!(pr.error, Some(code), "{name}");
        assert!(pr.message.as_deref().is_some_and(|m| !m.is_empty()), "{name}: has a message");
        let body = body_json(resp).await;
        assert_eq!(body["error"], code.as_str(), "{name}: body carries the code");
    }

    // Corrective refusals carry the node's state, so the client can resync at once.
    let resp = f.pay("/paid", 3, 3 * PRICE).await;
    let state = required(&resp).accepts[0].extra.channel.clone().expect("state in a corrective 402");
    assert_eq!((state.nonce, state.charged, state.deposit), (5, U256::from(PRICE), U256::from(10 * PRICE)));
    assert_eq!(state.cumulative_amount, U256::from(5 * PRICE));
    let resp = f.pay("/paid", state.nonce + 1, (state.charged + U256::from(PRICE)).to::<u64>()).await;
    assert_eq!(resp.status(), StatusCode::OK);

    // An unpaid request naming the channel gets the node's state in its 402.
    let named = f.send("/paid", Some((PAYMENT_CHANNEL, f.id.to_string()))).await;
    assert_eq!(required(&named).accepts[0].extra.channel.as_ref().map(|s| s.nonce), Some(6));
}

impl<S: KvStore> Fixture<S> {
    /// Delivers the chain's current view of the channel, as the event follower does.
    async fn follow(&self) {
        let view = x402_node::chain::ChainReader::channel(&self.chain, self.id).await.expect("chain up");
        self.engine.sync_channel(self.id, view, false).await.expect("synced");
    }
}

#[tokio::test]
async fn chain_updates_reach_admission() {
    let f = fixture(Arc::new(MemoryStore::new()));
    assert_eq!(f.pay("/paid", 1, 10 * PRICE).await.status(), StatusCode::OK);
    let over = f.pay("/paid", 2, 11 * PRICE).await;
    assert_eq!(required(&over).error, Some(ErrorCode::InsufficientDeposit));
    // A top-up counts only once the follower delivers it; refusals do not ask the chain.
    f.chain.update(f.id, |c| c.deposit = U256::from(20 * PRICE));
    let lookups = f.chain.lookups();
    assert_eq!(required(&f.pay("/paid", 2, 11 * PRICE).await).error, Some(ErrorCode::InsufficientDeposit));
    assert_eq!(f.chain.lookups(), lookups);
    f.follow().await;
    assert_eq!(f.pay("/paid", 2, 11 * PRICE).await.status(), StatusCode::OK);

    // An exit stops vouchers at once.
    f.chain.update(f.id, |c| c.exit_at = 10);
    f.follow().await;
    assert_eq!(required(&f.pay("/paid", 3, 12 * PRICE).await).error, Some(ErrorCode::ChannelClosing));

    // The payer tops up, which cancels the exit on-chain: the channel accepts vouchers again,
    // up to the new deposit.
    f.chain.update(f.id, |c| {
        c.exit_at = 0;
        c.deposit = U256::from(30 * PRICE);
    });
    f.follow().await;
    assert_eq!(required(&f.pay("/paid", 3, 31 * PRICE).await).error, Some(ErrorCode::InsufficientDeposit));
    assert_eq!(f.pay("/paid", 3, 13 * PRICE).await.status(), StatusCode::OK);

    // A close is final and the record is kept as a tombstone.
    f.chain.update(f.id, |c| c.open = false);
    f.follow().await;
    f.chain.update(f.id, |c| c.open = true);
    f.follow().await;
    assert_eq!(required(&f.pay("/paid", 4, 14 * PRICE).await).error, Some(ErrorCode::ChannelClosed));
    let record = f.engine.channel(f.id).expect("store").expect("tombstone");
    assert_eq!(record.status, x402_node::channel::ChannelStatus::Closed);
}

#[tokio::test]
async fn dynamic_price_charges_actual_cost_and_failures_are_free() {
    let f = fixture(Arc::new(MemoryStore::new()));
    // The handler reports 420 of at most 1,000.
    let resp = f.pay("/llm", 1, PRICE).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-tokens"], "42");
    let s = settlement(&resp);
    assert_eq!((s.extra.charged, s.extra.total_charged), (U256::from(420), U256::from(420)));
    // The next voucher only has to cover 420 + 1,000.
    assert_eq!(f.pay("/llm", 2, 1420).await.status(), StatusCode::OK);
    // A failing handler is not charged: the same voucher works afterwards.
    assert_eq!(f.pay("/broken", 3, 1840 + PRICE).await.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(f.pay("/paid", 3, 1840 + PRICE).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn restart_resumes_from_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let payer;
    let chain;
    let id;
    {
        let f = fixture(Arc::new(SledStore::open(dir.path()).expect("opens")));
        assert_eq!(f.pay("/paid", 1, PRICE).await.status(), StatusCode::OK);
        assert_eq!(f.pay("/paid", 2, 2 * PRICE).await.status(), StatusCode::OK);
        payer = f.payer.clone();
        chain = f.chain.clone();
        id = f.id;
    }
    // A new node over the same directory continues the channel where it stopped, without
    // asking the chain again.
    let store = Arc::new(SledStore::open(dir.path()).expect("reopens"));
    let engine = Engine::new(terms(), Arc::clone(&store), chain.clone(), Metrics::new());
    let f = Fixture {
        app: app(engine.clone()),
        engine,
        chain,
        payer,
        id,
        domain: ChannelDomain::new(CHAIN_ID, terms().contract),
        requirements: Engine::new(terms(), Arc::clone(&store), MemoryChain::default(), Metrics::new())
            .requirements(&Price::exact(U256::from(PRICE)), None),
        _store: store,
    };
    let lookups = f.chain.lookups();
    assert_eq!(required(&f.pay("/paid", 2, 3 * PRICE).await).error, Some(ErrorCode::NonceTooLow));
    assert_eq!(f.pay("/paid", 3, 3 * PRICE).await.status(), StatusCode::OK);
    assert_eq!(f.chain.lookups(), lookups);
}

#[tokio::test]
async fn concurrent_requests_on_one_channel_are_serialised() {
    let f = Arc::new(fixture(Arc::new(MemoryStore::new())));
    f.chain.update(f.id, |c| c.deposit = U256::from(100 * PRICE));
    // 32 vouchers signed in order, sent all at once: each is accepted or refused as stale,
    // never double-charged, and the node ends at the best accepted voucher.
    let headers: Vec<_> = (1..=32).map(|n| f.header(n, n * PRICE)).collect();
    let tasks: Vec<_> = headers
        .into_iter()
        .map(|h| {
            let f = Arc::clone(&f);
            tokio::spawn(async move { f.send("/paid", Some((wire::PAYMENT_SIGNATURE, h))).await })
        })
        .collect();
    let mut best = 0;
    let mut ok = 0u64;
    for t in tasks {
        let resp = t.await.expect("task");
        if resp.status() == StatusCode::OK {
            ok += 1;
            best = best.max(settlement(&resp).extra.nonce);
        } else {
            assert_eq!(required(&resp).error, Some(ErrorCode::NonceTooLow));
        }
    }
    assert!(ok >= 1);
    let state = required(&f.send("/paid", Some((PAYMENT_CHANNEL, f.id.to_string()))).await).accepts[0]
        .extra
        .channel
        .clone()
        .expect("known channel");
    assert_eq!(state.nonce, best);
    assert_eq!(state.charged, U256::from(ok * PRICE));
}

#[tokio::test]
async fn unknown_channels_cost_one_lookup_until_they_exist() {
    let f = fixture(Arc::new(MemoryStore::new()));
    let other = B256::repeat_byte(0x42);
    let signed = f
        .domain
        .sign(&f.payer, Voucher { channelId: other, nonce: 1, cumulativeAmount: U256::from(PRICE) })
        .expect("signs");
    let header = wire::encode_header(&PaymentPayload::new(&f.requirements, &signed));
    for _ in 0..5 {
        let resp = f.send("/paid", Some((wire::PAYMENT_SIGNATURE, header.clone()))).await;
        assert_eq!(required(&resp).error, Some(ErrorCode::ChannelUnknown));
    }
    assert_eq!(f.chain.lookups(), 1, "a flood of unknown ids must not flood the RPC");
    // Once the channel exists on-chain, it is accepted after the short negative-cache window.
    f.chain.set(other, onchain(f.payer.address(), 10 * PRICE));
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let resp = f.send("/paid", Some((wire::PAYMENT_SIGNATURE, header))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(f.chain.lookups(), 2);
}

#[tokio::test]
async fn chain_down_is_unavailable_not_unknown() {
    let f = fixture(Arc::new(MemoryStore::new()));
    f.chain.set_down(true);
    let resp = f.pay("/paid", 1, PRICE).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(required(&resp).error, Some(ErrorCode::Unavailable));
    // Nothing was remembered about the channel: once the chain is back it is served.
    f.chain.set_down(false);
    assert_eq!(f.pay("/paid", 1, PRICE).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_voucher_that_is_not_durable_is_not_served() {
    let store = Arc::new(FlakyStore::default());
    let f = fixture(Arc::clone(&store));
    assert_eq!(f.pay("/paid", 1, PRICE).await.status(), StatusCode::OK);

    store.fail(true);
    let resp = f.pay("/paid", 2, 2 * PRICE).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(required(&resp).error, Some(ErrorCode::Unavailable));
    assert!(resp.headers().get(wire::PAYMENT_RESPONSE).is_none());
    // Memory and store were rolled back: the node still stands at the last durable voucher,
    // so the same voucher is accepted once the disk works again.
    let state = required(&f.send("/paid", Some((PAYMENT_CHANNEL, f.id.to_string()))).await).accepts[0]
        .extra
        .channel
        .clone()
        .expect("known channel");
    assert_eq!((state.nonce, state.charged), (1, U256::from(PRICE)));
    store.fail(false);
    let resp = f.pay("/paid", 2, 2 * PRICE).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(settlement(&resp).extra.total_charged, U256::from(2 * PRICE));
}

#[tokio::test]
async fn admin_endpoints_need_the_token_and_report_revenue() {
    use x402_node::gateway::{Upstream, router};

    let store = Arc::new(MemoryStore::new());
    let f = fixture(Arc::clone(&store));
    assert_eq!(f.pay("/paid", 1, PRICE).await.status(), StatusCode::OK);
    let engine = Engine::new(terms(), store, f.chain.clone(), Metrics::new());
    let token = "admin-token-0123456789";
    let get = |app: Router, path: &'static str, bearer: Option<&'static str>| async move {
        let mut req = Request::get(path);
        if let Some(b) = bearer {
            req = req.header("authorization", format!("Bearer {b}"));
        }
        app.oneshot(req.body(Body::empty()).expect("request")).await.expect("infallible")
    };
    let upstream = Upstream::new("http://127.0.0.1:9", std::time::Duration::from_secs(1));
    let app = router(engine.clone(), Paywall::new(engine.clone()), upstream.clone(), Some(token.into()));
    assert_eq!(get(app.clone(), "/admin/revenue", None).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(get(app.clone(), "/admin/revenue", Some("wrong")).await.status(), StatusCode::UNAUTHORIZED);
    let revenue = body_json(get(app.clone(), "/admin/revenue", Some(token)).await).await;
    assert_eq!(revenue[0]["token"], serde_json::json!(terms().asset));
    assert_eq!(
        (revenue[0]["charged"].as_str(), revenue[0]["unsettled"].as_str()),
        (Some("1000"), Some("1000"))
    );
    let channels = body_json(get(app, "/admin/channels", Some(token)).await).await;
    assert_eq!(channels[0]["nonce"], 1);

    // Without a configured token the admin endpoints do not exist.
    let closed = router(engine.clone(), Paywall::new(engine), upstream, None);
    assert_eq!(get(closed, "/admin/channels", Some(token)).await.status(), StatusCode::NOT_FOUND);
}

/// The cooperative close endpoint, in-process: every answer, the authorisation it signs, and a
/// close that cannot be made durable.
#[tokio::test]
async fn close_endpoint_answers_and_signs() {
    use alloy::sol_types::SolStruct;
    use x402_node::gateway::{CloseService, close_router};
    use x402_protocol::close::{CLOSE_PATH, CloseAuthorization, CloseRequestBody, CloseResponse};

    let store = Arc::new(FlakyStore::default());
    let f = fixture(Arc::clone(&store));
    assert_eq!(f.pay("/paid", 1, 3 * PRICE).await.status(), StatusCode::OK);
    let provider_key = PrivateKeySigner::random();
    let woken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let service = |key: Option<PrivateKeySigner>| {
        let woken = Arc::clone(&woken);
        CloseService {
            key: key.map(Arc::new),
            ttl: 600,
            on_close: Some(Arc::new(move || {
                woken.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })),
        }
    };
    let app = close_router(f.engine.clone(), service(Some(provider_key.clone())));
    let post = |app: Router, body: String| async move {
        let req = Request::post(CLOSE_PATH).header("content-type", "application/json").body(Body::from(body));
        app.oneshot(req.expect("request")).await.expect("infallible")
    };
    let later = x402_node::unix_now() + 600;
    let request = |key: &PrivateKeySigner, id: B256, deadline: u64| {
        serde_json::to_string(&CloseRequestBody::sign(&f.domain, key, id, deadline).expect("signs"))
            .expect("json")
    };

    // A channel of another provider.
    let foreign = B256::repeat_byte(0x66);
    let mut other = onchain(f.payer.address(), 10 * PRICE);
    other.payee = Address::repeat_byte(0x01);
    f.chain.set(foreign, other);
    // A closed channel.
    let closed = B256::repeat_byte(0x67);
    let mut gone = onchain(f.payer.address(), 10 * PRICE);
    gone.open = false;
    f.chain.set(closed, gone);

    let cases = [
        ("malformed", "{\"channelId\": 1}".to_owned(), StatusCode::BAD_REQUEST, "invalid_payload"),
        ("expired", request(&f.payer, f.id, 1), StatusCode::BAD_REQUEST, "invalid_payload"),
        ("forged", request(&provider_key, f.id, later), StatusCode::FORBIDDEN, "invalid_signature"),
        ("other provider", request(&f.payer, foreign, later), StatusCode::FORBIDDEN, "channel_mismatch"),
        (
            "unknown",
            request(&f.payer, B256::repeat_byte(0x68), later),
            StatusCode::NOT_FOUND,
            "channel_unknown",
        ),
        ("closed", request(&f.payer, closed, later), StatusCode::CONFLICT, "channel_closed"),
    ];
    for (name, body, status, code) in cases {
        let resp = post(app.clone(), body).await;
        assert_eq!(resp.status(), status, "{name}");
        assert_eq!(body_json(resp).await["error"], code, "{name}");
    }
    assert_eq!(woken.load(std::sync::atomic::Ordering::SeqCst), 0, "refusals queue nothing");

    // The disk fails: 503, and the channel still takes vouchers (nothing half-written).
    store.fail(true);
    let resp = post(app.clone(), request(&f.payer, f.id, later)).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    store.fail(false);
    assert_eq!(f.engine.channel(f.id).expect("store").expect("record").close, None);
    assert_eq!(f.pay("/paid", 2, 4 * PRICE).await.status(), StatusCode::OK);

    // Accepted: the node signs an authorisation at what it charged, recoverable to the
    // provider's key over the contract's CloseAuthorization, and refuses vouchers from now on.
    let resp = post(app, request(&f.payer, f.id, later)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let answer: CloseResponse = serde_json::from_value(body_json(resp).await).expect("CloseResponse");
    assert_eq!((answer.final_amount, answer.refund), (U256::from(2 * PRICE), U256::from(8 * PRICE)));
    assert!(answer.queued);
    assert_eq!(woken.load(std::sync::atomic::Ordering::SeqCst), 1);
    let auth = answer.authorization.expect("signed");
    let digest = CloseAuthorization {
        channelId: f.id,
        finalAmount: auth.final_amount,
        deadline: U256::from(auth.deadline),
    }
    .eip712_signing_hash(f.domain.domain());
    let sig = alloy::primitives::Signature::from_raw(&auth.signature).expect("65 bytes");
    assert_eq!(sig.recover_address_from_prehash(&digest).expect("recovers"), provider_key.address());
    let record = f.engine.channel(f.id).expect("store").expect("record");
    assert_eq!(record.close.map(|c| c.authorization_deadline), Some(auth.deadline));
    assert_eq!(required(&f.pay("/paid", 3, 5 * PRICE).await).error, Some(ErrorCode::ChannelClosing));

    // Without the provider's key the node only queues the close.
    let unsigned = close_router(f.engine.clone(), CloseService { key: None, ttl: 600, on_close: None });
    let resp = post(unsigned, request(&f.payer, f.id, later)).await;
    let answer: CloseResponse = serde_json::from_value(body_json(resp).await).expect("CloseResponse");
    assert!(answer.authorization.is_none() && !answer.queued);
}

impl<S: KvStore> Fixture<S> {
    async fn session(&self, path: &str, token: B256) -> http::Response<Body> {
        self.send(path, Some((wire::PAYMENT_SESSION, wire::encode_session(self.id, token)))).await
    }
}

#[tokio::test]
async fn a_credit_window_pays_later_requests_with_a_session_token() {
    let f = fixture(Arc::new(MemoryStore::new()));
    assert_eq!(
        required(&f.send("/paid", None).await).accepts[0].extra.max_credit_window,
        None,
        "off by default"
    );
    let resp = f.pay("/paid", 1, 5 * PRICE).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(settlement(&resp).extra.session, None, "no session while the window is off");

    f.engine.set_credit_window(5);
    assert_eq!(required(&f.send("/paid", None).await).accepts[0].extra.max_credit_window, Some(5));
    // The voucher pays for this request and four more.
    let resp = f.pay("/paid", 2, 6 * PRICE).await;
    let paid = settlement(&resp).extra;
    assert_eq!((paid.charged, paid.total_charged), (U256::from(PRICE), U256::from(2 * PRICE)));
    let grant = paid.session.expect("a session for the prepaid rest");
    assert_eq!(grant.uses, 4);

    let forged = f.session("/paid", B256::repeat_byte(0x01)).await;
    assert_eq!(forged.status(), StatusCode::PAYMENT_REQUIRED);
    let refusal = required(&forged);
    assert_eq!(refusal.error, Some(ErrorCode::SessionInvalid));
    assert_eq!(refusal.accepts[0].extra.channel.as_ref().map(|s| s.charged), Some(U256::from(2 * PRICE)));
    // A failing handler is not charged and uses nothing.
    assert_eq!(f.session("/broken", grant.token).await.status(), StatusCode::INTERNAL_SERVER_ERROR);

    for left in (0..4u32).rev() {
        let resp = f.session("/paid", grant.token).await;
        assert_eq!(resp.status(), StatusCode::OK, "{left} uses left");
        let paid = settlement(&resp).extra;
        assert_eq!(paid.nonce, 2, "no new voucher");
        assert_eq!(paid.charged, U256::from(PRICE));
        assert_eq!(paid.total_charged, U256::from(u64::from(6 - left) * PRICE));
        assert_eq!(paid.session.map(|s| (s.token, s.uses)), Some((grant.token, left)));
    }
    let used_up = f.session("/paid", grant.token).await;
    assert_eq!(required(&used_up).error, Some(ErrorCode::SessionInvalid));
    let record = f.engine.channel(f.id).expect("store").expect("record");
    assert_eq!(record.charged, U256::from(6 * PRICE), "exactly one price per request served");
    // Session charges cost no store write per request; they are written in a batch.
    let stored = |f: &Fixture<MemoryStore>| -> U256 {
        let bytes =
            f.engine.store().get(x402_node::engine::CHANNELS, f.id.as_slice()).expect("store").expect("row");
        serde_json::from_slice::<x402_node::channel::ChannelRecord>(&bytes).expect("record").charged
    };
    assert_eq!(stored(&f), U256::from(2 * PRICE), "the voucher's charge only");
    assert_eq!(f.engine.flush_charges().await.expect("flushes"), 1);
    assert_eq!(stored(&f), U256::from(6 * PRICE));
    assert_eq!(f.engine.flush_charges().await.expect("flushes"), 0, "nothing left to write");
    let metrics = f.engine.metrics().render();
    assert!(metrics.contains("x402_requests_paid_by_session_total 4"), "{metrics}");
    assert!(metrics.contains("x402_requests_paid_total 6"), "{metrics}");
    // The window is used up: the next request needs a voucher covering it.
    assert_eq!(required(&f.pay("/paid", 3, 6 * PRICE).await).error, Some(ErrorCode::AmountBelowPrice));
    assert_eq!(f.pay("/paid", 3, 7 * PRICE).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn sessions_die_with_a_new_voucher_an_exit_and_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SledStore::open(dir.path()).expect("opens"));
    let f = fixture(Arc::clone(&store));
    f.engine.set_credit_window(3);
    // Prepaying beyond the node's window grants only the window.
    let first = settlement(&f.pay("/paid", 1, 9 * PRICE).await).extra.session.expect("session");
    assert_eq!(first.uses, 2);
    // A new voucher revokes the old token and grants a new one.
    let second = settlement(&f.pay("/paid", 2, 5 * PRICE).await).extra.session.expect("session");
    assert_ne!(second.token, first.token);
    assert_eq!(required(&f.session("/paid", first.token).await).error, Some(ErrorCode::SessionInvalid));
    assert_eq!(f.session("/paid", second.token).await.status(), StatusCode::OK);

    // Malformed and unknown: no lookups for random ids.
    let lookups = f.chain.lookups();
    let bad = f.send("/paid", Some((wire::PAYMENT_SESSION, "0x12:0x34".into()))).await;
    assert_eq!(
        (bad.status(), required(&bad).error),
        (StatusCode::BAD_REQUEST, Some(ErrorCode::InvalidPayload))
    );
    let stranger = wire::encode_session(B256::repeat_byte(0x99), second.token);
    let unknown = f.send("/paid", Some((wire::PAYMENT_SESSION, stranger))).await;
    assert_eq!(required(&unknown).error, Some(ErrorCode::SessionInvalid));
    assert_eq!(f.chain.lookups(), lookups);

    // A restarted node has no sessions; the charges made with one are in the store once written
    // (the gateway writes them every second and when it stops; the settler before each round).
    let channels = f.engine.channels().await.expect("lists");
    assert_eq!(channels[0].charged, U256::from(3 * PRICE), "listing takes the session charges along");
    let engine = Engine::new(terms(), Arc::clone(&store), f.chain.clone(), Metrics::new());
    engine.set_credit_window(3);
    let restarted = Fixture { app: app(engine.clone()), engine, ..f };
    assert_eq!(
        required(&restarted.session("/paid", second.token).await).error,
        Some(ErrorCode::SessionInvalid)
    );
    store.sync().await.expect("syncs");
    assert_eq!(
        restarted.engine.channel(restarted.id).expect("store").expect("record").charged,
        U256::from(3 * PRICE)
    );
    let third = settlement(&restarted.pay("/paid", 3, 7 * PRICE).await).extra.session.expect("session");

    // An exit revokes it at once.
    restarted.chain.update(restarted.id, |c| c.exit_at = 10);
    restarted.follow().await;
    let refused = restarted.session("/paid", third.token).await;
    assert_eq!(required(&refused).error, Some(ErrorCode::SessionInvalid));
}
