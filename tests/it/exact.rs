//! The official `exact` scheme through the gateway on anvil: an EIP-3009 authorisation of the
//! price pays a route, the node settles it from its own key before releasing the response, a
//! replay (sequential, concurrent, or after a restart) is refused, and an upstream error
//! transfers nothing.

use std::net::SocketAddr;

use alloy::{
    primitives::{Address, B256, U256},
    signers::local::PrivateKeySigner,
};
use axum::{Router, routing::get};
use reqwest::StatusCode;
use x402_e2e::harness::{Env, Gateway, PRICE};
use x402_node::config::{Config, RouteConfig};
use x402_protocol::{
    exact::{ExactAuthorization, ExactRequirements},
    open::TokenDomain,
    wire::{self, ErrorCode, PaymentPayload, PaymentRequired, Scheme, SettlementResponse},
};

/// `/weather` and `/exact-only/…` (200), `/fail` (500), `/missing` (404).
async fn api() -> SocketAddr {
    let app = Router::new()
        .route("/weather", get(|| async { axum::Json(serde_json::json!({"forecast": "sunny"})) }))
        .route("/exact-only/{*rest}", get(|| async { "only exact" }))
        .route("/fail", get(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "down") }))
        .route("/missing", get(|| async { (axum::http::StatusCode::NOT_FOUND, "no such item") }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn route(path: &str, schemes: &[Scheme]) -> RouteConfig {
    RouteConfig {
        path: path.into(),
        methods: Vec::new(),
        price: U256::from(PRICE),
        pricing: Default::default(),
        description: None,
        mime_type: None,
        replay_body: false,
        schemes: Some(schemes.to_vec()),
    }
}

/// The harness's gateway with the provider's key, `/weather` taking both schemes, `/fail` and
/// `/missing` taking `exact`, and `/exact-only` taking only `exact`.
fn config(env: &Env, upstream: SocketAddr, dir: &std::path::Path) -> Config {
    let mut config = env.with_provider_key(env.gateway_config(upstream, dir), dir);
    let both = [Scheme::ChannelVoucher, Scheme::Exact];
    for r in &mut config.routes {
        if r.path == "/weather" {
            r.schemes = Some(both.to_vec());
        }
    }
    config.routes.push(route("/fail", &both));
    config.routes.push(route("/missing", &both));
    config.routes.push(route("/exact-only/{*rest}", &[Scheme::Exact]));
    config
}

/// The 402 of `url`, and its `exact` offer.
async fn offer(http: &reqwest::Client, url: &str) -> (PaymentRequired, ExactRequirements) {
    let response = http.get(url).send().await.expect("request");
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    let header = response.headers().get(wire::PAYMENT_REQUIRED).expect("PAYMENT-REQUIRED").clone();
    let required: PaymentRequired = wire::decode_header(header.as_bytes()).expect("decodes");
    let exact = required.exact.first().expect("an exact offer").clone();
    (required, exact)
}

/// A signed `exact` payment of `requirements` by `key`, as the official client makes it.
fn pay(key: &PrivateKeySigner, requirements: &ExactRequirements, chain_id: u64) -> String {
    let domain = TokenDomain::new(
        requirements.extra.name.clone(),
        requirements.extra.version.clone(),
        chain_id,
        requirements.asset,
    );
    let now = x402_node::unix_now();
    let authorization = ExactAuthorization {
        from: key.address(),
        to: requirements.pay_to,
        value: requirements.amount,
        valid_after: U256::ZERO,
        valid_before: U256::from(now + requirements.max_timeout_seconds),
        nonce: B256::from(rand_bytes()),
    };
    let payload = authorization.sign(key, &domain).expect("signs");
    wire::encode_header(&PaymentPayload::with_payload(requirements, payload))
}

/// A fresh nonce: unique per call in this process, and unpredictable across runs.
fn rand_bytes() -> [u8; 32] {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    alloy::primitives::keccak256(format!("{n}:{:?}", std::time::SystemTime::now())).0
}

fn error_of(response: &reqwest::Response) -> Option<ErrorCode> {
    let header = response.headers().get(wire::PAYMENT_REQUIRED)?;
    wire::decode_header::<PaymentRequired>(header.as_bytes()).ok()?.error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_pays_a_route_and_replays_are_refused() {
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(&env, api().await, data.path())).await;
    let http = reqwest::Client::new();
    let chain_id = env.anvil.chain_id();
    let provider = env.provider_key.address();
    let key = env.fresh_key(10 * PRICE).await;

    // The 402 offers ours first, then exact with the token's domain.
    let url = format!("{}/weather", gw.url);
    let (required, exact) = offer(&http, &url).await;
    assert_eq!(required.accepts.len(), 1, "our offer comes first");
    let json: serde_json::Value = serde_json::from_str(&serde_json::to_string(&required).unwrap()).unwrap();
    assert_eq!(json["accepts"][0]["scheme"], wire::SCHEME);
    assert_eq!(json["accepts"][1]["scheme"], "exact");
    assert_eq!((exact.extra.name.as_str(), exact.extra.version.as_str()), ("Test USD", "1"));
    assert_eq!((exact.asset, exact.pay_to, exact.amount), (env.usd, provider, U256::from(PRICE)));

    // Paid: the transfer is mined before the response, whose receipt names it.
    let (payer_before, provider_before) = (env.balance(key.address()).await, env.balance(provider).await);
    let header = pay(&key, &exact, chain_id);
    let response = http.get(&url).header(wire::PAYMENT_SIGNATURE, &header).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let receipt: SettlementResponse =
        wire::decode_header(response.headers()[wire::PAYMENT_RESPONSE].as_bytes()).expect("a receipt");
    assert!(receipt.success && receipt.extra.is_none());
    assert_eq!((receipt.payer, receipt.amount), (key.address(), Some(U256::from(PRICE))));
    let tx: B256 = receipt.transaction.parse().expect("a transaction hash");
    let mined =
        alloy::providers::Provider::get_transaction_receipt(&env.node_chain, tx).await.unwrap().unwrap();
    assert!(mined.status());
    assert_eq!(response.text().await.unwrap(), r#"{"forecast":"sunny"}"#);
    assert_eq!(env.balance(key.address()).await, payer_before - U256::from(PRICE));
    assert_eq!(env.balance(provider).await, provider_before + U256::from(PRICE));

    // The very same payment again: refused, nothing moves.
    let again = http.get(&url).header(wire::PAYMENT_SIGNATURE, &header).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(error_of(&again), Some(ErrorCode::InvalidAuthorization));
    assert_eq!(env.balance(provider).await, provider_before + U256::from(PRICE));

    // Sixteen concurrent copies of one fresh payment: one is served, one transfer.
    let header = pay(&key, &exact, chain_id);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (http, url, header) = (http.clone(), url.clone(), header.clone());
            tokio::spawn(async move {
                http.get(&url).header(wire::PAYMENT_SIGNATURE, &header).send().await.unwrap().status()
            })
        })
        .collect();
    let mut served = 0;
    for t in tasks {
        let status = t.await.unwrap();
        assert!(status == StatusCode::OK || status == StatusCode::PAYMENT_REQUIRED, "{status}");
        served += usize::from(status == StatusCode::OK);
    }
    assert_eq!(served, 1);
    assert_eq!(env.balance(provider).await, provider_before + U256::from(2 * PRICE));

    // Wrong value, wrong recipient, another route's scheme.
    let cheap = ExactRequirements { amount: U256::from(PRICE - 1), ..exact.clone() };
    let r = http.get(&url).header(wire::PAYMENT_SIGNATURE, pay(&key, &cheap, chain_id)).send().await.unwrap();
    assert_eq!(
        (r.status(), error_of(&r)),
        (StatusCode::PAYMENT_REQUIRED, Some(ErrorCode::InvalidAuthorization))
    );
    let elsewhere = ExactRequirements { pay_to: Address::repeat_byte(7), ..exact.clone() };
    let r =
        http.get(&url).header(wire::PAYMENT_SIGNATURE, pay(&key, &elsewhere, chain_id)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PAYMENT_REQUIRED);
    let wrong_chain = pay(&key, &exact, chain_id + 1);
    let r = http.get(&url).header(wire::PAYMENT_SIGNATURE, wrong_chain).send().await.unwrap();
    assert_eq!((r.status(), error_of(&r)), (StatusCode::PAYMENT_REQUIRED, Some(ErrorCode::InvalidSignature)));
    let channel_only = format!("{}/llm", gw.url);
    let r = http
        .get(&channel_only)
        .header(wire::PAYMENT_SIGNATURE, pay(&key, &exact, chain_id))
        .send()
        .await
        .unwrap();
    assert_eq!((r.status(), error_of(&r)), (StatusCode::PAYMENT_REQUIRED, Some(ErrorCode::InvalidScheme)));
    assert_eq!(env.balance(provider).await, provider_before + U256::from(2 * PRICE));

    // An exact-only route offers exact alone, and refuses a voucher by its scheme.
    let exact_only = format!("{}/exact-only/x", gw.url);
    let (required, _) = offer(&http, &exact_only).await;
    assert!(required.accepts.is_empty());
    let voucher = serde_json::json!({
        "x402Version": 2,
        "accepted": { "scheme": wire::SCHEME, "network": format!("eip155:{chain_id}") },
        "payload": { "channelId": B256::repeat_byte(1), "nonce": 1, "cumulativeAmount": "1000", "signature": "0x00" },
    });
    let r = http
        .get(&exact_only)
        .header(wire::PAYMENT_SIGNATURE, wire::encode_header(&voucher))
        .send()
        .await
        .unwrap();
    assert_eq!((r.status(), error_of(&r)), (StatusCode::PAYMENT_REQUIRED, Some(ErrorCode::InvalidScheme)));
    let r = http
        .get(&exact_only)
        .header(wire::PAYMENT_SIGNATURE, pay(&key, &exact, chain_id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(env.balance(provider).await, provider_before + U256::from(3 * PRICE));
    assert_eq!(gw.metric(&http, "x402_requests_paid_total").await, 3.0);
    let refused = gw.metric(&http, "x402_requests_refused_total{reason=\"invalid_authorization\"}").await;
    assert_eq!(refused, 18.0, "the replays, the concurrent copies, the wrong value and recipient");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_error_transfers_nothing_and_the_guard_survives_a_restart() {
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    let upstream = api().await;
    let gw = Gateway::start(config(&env, upstream, data.path())).await;
    let http = reqwest::Client::new();
    let chain_id = env.anvil.chain_id();
    let key = env.fresh_key(10 * PRICE).await;
    let before = env.balance(key.address()).await;

    // A 500 and a 404 are passed on, unpaid: no transfer, no receipt.
    let mut released = Vec::new();
    for (path, status) in [("/fail", StatusCode::INTERNAL_SERVER_ERROR), ("/missing", StatusCode::NOT_FOUND)]
    {
        let (_, exact) = offer(&http, &format!("{}{path}", gw.url)).await;
        let header = pay(&key, &exact, chain_id);
        let r = http
            .get(format!("{}{path}", gw.url))
            .header(wire::PAYMENT_SIGNATURE, &header)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status);
        assert!(r.headers().get(wire::PAYMENT_RESPONSE).is_none());
        released.push(header);
    }
    assert_eq!(env.balance(key.address()).await, before);

    // After a restart, the released authorisations (never sent, so still good for the token)
    // are refused on a route that would serve them.
    let config = gw.config.clone();
    gw.stop().await;
    let gw = Gateway::start(config).await;
    let url = format!("{}/weather", gw.url);
    for header in released {
        let r = http.get(&url).header(wire::PAYMENT_SIGNATURE, &header).send().await.unwrap();
        assert_eq!(
            (r.status(), error_of(&r)),
            (StatusCode::PAYMENT_REQUIRED, Some(ErrorCode::InvalidAuthorization))
        );
    }
    assert_eq!(env.balance(key.address()).await, before);
    // And a fresh one pays.
    let (_, exact) = offer(&http, &url).await;
    let r = http.get(&url).header(wire::PAYMENT_SIGNATURE, pay(&key, &exact, chain_id)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(env.balance(key.address()).await, before - U256::from(PRICE));
    gw.stop().await;
}

const FACILITATOR_TOKEN: &str = "a-facilitator-token-of-at-least-32-chars";

/// `/facilitator/<endpoint>` with the body `{ x402Version, paymentPayload, paymentRequirements }`.
async fn facilitator(
    http: &reqwest::Client,
    gw: &Gateway,
    endpoint: &str,
    payment: &str,
    requirements: &ExactRequirements,
) -> serde_json::Value {
    let payload: serde_json::Value = wire::decode_header(payment.as_bytes()).expect("a payment");
    let r = http
        .post(format!("{}/facilitator/{endpoint}", gw.url))
        .bearer_auth(FACILITATOR_TOKEN)
        .json(&serde_json::json!({
            "x402Version": 2,
            "paymentPayload": payload,
            "paymentRequirements": requirements,
        }))
        .send()
        .await
        .expect("the facilitator answers");
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_facilitator_verifies_and_settles_exact() {
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    let mut config = config(&env, api().await, data.path());
    config.facilitator.token = Some(FACILITATOR_TOKEN.into());
    let gw = Gateway::start(config).await;
    let http = reqwest::Client::new();
    let chain_id = env.anvil.chain_id();
    let provider = env.provider_key.address();
    let key = env.fresh_key(10 * PRICE).await;

    let supported: serde_json::Value = http
        .get(format!("{}/facilitator/supported", gw.url))
        .bearer_auth(FACILITATOR_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schemes: Vec<&str> =
        supported["kinds"].as_array().unwrap().iter().map(|k| k["scheme"].as_str().unwrap()).collect();
    assert_eq!(schemes, [wire::SCHEME, "exact"]);

    let (_, exact) = offer(&http, &format!("{}/weather", gw.url)).await;
    let payment = pay(&key, &exact, chain_id);
    let provider_before = env.balance(provider).await;

    // verify checks and moves nothing (twice: it records nothing either).
    for _ in 0..2 {
        let v = facilitator(&http, &gw, "verify", &payment, &exact).await;
        assert_eq!(v["isValid"], true, "{v}");
        assert_eq!(v["payer"], key.address().to_checksum(None));
    }
    assert_eq!(env.balance(provider).await, provider_before);

    // settle transfers, and answers with the mined transaction.
    let s = facilitator(&http, &gw, "settle", &payment, &exact).await;
    assert_eq!(s["success"], true, "{s}");
    assert_eq!(s["amount"], PRICE.to_string());
    let tx: B256 = s["transaction"].as_str().unwrap().parse().unwrap();
    let mined =
        alloy::providers::Provider::get_transaction_receipt(&env.node_chain, tx).await.unwrap().unwrap();
    assert!(mined.status());
    assert_eq!(env.balance(provider).await, provider_before + U256::from(PRICE));

    // Used: verify and a second settle are refused, nothing moves.
    let v = facilitator(&http, &gw, "verify", &payment, &exact).await;
    assert_eq!(
        (v["isValid"].as_bool(), v["invalidReason"].as_str()),
        (Some(false), Some("invalid_authorization"))
    );
    let s = facilitator(&http, &gw, "settle", &payment, &exact).await;
    assert_eq!(
        (s["success"].as_bool(), s["errorReason"].as_str()),
        (Some(false), Some("invalid_authorization"))
    );
    assert_eq!(env.balance(provider).await, provider_before + U256::from(PRICE));

    // A settle for more than was authorised, or of a forged signature, is refused.
    let payment = pay(&key, &exact, chain_id);
    let dearer = ExactRequirements { amount: U256::from(PRICE + 1), ..exact.clone() };
    let s = facilitator(&http, &gw, "settle", &payment, &dearer).await;
    assert_eq!(s["success"], false, "{s}");
    let mut body: serde_json::Value =
        wire::decode_header(pay(&PrivateKeySigner::random(), &exact, chain_id).as_bytes()).unwrap();
    body["payload"]["authorization"]["from"] = serde_json::json!(key.address());
    let forged = wire::encode_header(&body);
    let v = facilitator(&http, &gw, "verify", &forged, &exact).await;
    assert_eq!(
        (v["isValid"].as_bool(), v["invalidReason"].as_str()),
        (Some(false), Some("invalid_signature"))
    );
    assert_eq!(env.balance(provider).await, provider_before + U256::from(PRICE));
    gw.stop().await;
}
