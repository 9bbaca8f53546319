//! The in-process fixture of the paywall tests: an axum app behind [`Paywall`], an in-memory
//! chain holding one channel, and a real store. Shared by the paywall, refusal and fuzz tests.

use std::sync::Arc;

use alloy::{
    primitives::{Address, B256, U256},
    signers::local::PrivateKeySigner,
};
use axum::{Extension, Router, body::Body, http::Request, response::IntoResponse, routing::get};
use http::StatusCode;
use tower::ServiceExt;
use x402_node::{
    Engine, Payment, Price, Terms,
    channel::OnchainChannel,
    metrics::Metrics,
    middleware::{Charge, Paywall},
    test_utils::MemoryChain,
};
use x402_protocol::{
    ChannelDomain, SignedVoucher, Voucher,
    wire::{self, PaymentPayload, PaymentRequired, PaymentRequirements, SettlementResponse},
};
use x402_store::KvStore;

pub(crate) const CHAIN_ID: u64 = 31337;
pub(crate) const PRICE: u64 = 1_000;

pub(crate) struct Fixture<S> {
    pub(crate) app: Router,
    pub(crate) engine: Engine<S, MemoryChain>,
    pub(crate) chain: MemoryChain,
    pub(crate) payer: PrivateKeySigner,
    pub(crate) id: B256,
    pub(crate) domain: ChannelDomain,
    pub(crate) requirements: PaymentRequirements,
    pub(crate) _store: Arc<S>,
}

pub(crate) fn terms() -> Terms {
    x402_node::test_utils::terms(CHAIN_ID)
}

pub(crate) fn onchain(payer: Address, deposit: u64) -> OnchainChannel {
    x402_node::test_utils::open_channel(&terms(), payer, U256::from(deposit))
}

pub(crate) fn app<S: KvStore>(engine: Engine<S, MemoryChain>) -> Router {
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

pub(crate) fn fixture<S: KvStore>(store: Arc<S>) -> Fixture<S> {
    fixture_of(store, PrivateKeySigner::random())
}

/// A fixture whose channel is paid by `payer`.
pub(crate) fn fixture_of<S: KvStore>(store: Arc<S>, payer: PrivateKeySigner) -> Fixture<S> {
    let chain = MemoryChain::default();
    let id = B256::repeat_byte(0x11);
    chain.set(id, onchain(payer.address(), 10 * PRICE));
    let domain = ChannelDomain::new(CHAIN_ID, terms().contract);
    let engine = Engine::new(terms(), Arc::clone(&store), chain.clone(), Metrics::new());
    let requirements = engine.requirements(&Price::exact(U256::from(PRICE)), None);
    Fixture { app: app(engine.clone()), engine, chain, payer, id, domain, requirements, _store: store }
}

impl<S: KvStore> Fixture<S> {
    pub(crate) fn header(&self, nonce: u64, amount: u64) -> String {
        wire::encode_header(&PaymentPayload::new(&self.requirements, &self.sign(nonce, amount)))
    }

    /// A voucher on the fixture's channel, signed by its payer.
    pub(crate) fn sign(&self, nonce: u64, amount: u64) -> SignedVoucher {
        self.domain
            .sign(&self.payer, Voucher { channelId: self.id, nonce, cumulativeAmount: U256::from(amount) })
            .expect("signs")
    }

    pub(crate) async fn send(&self, path: &str, header: Option<(&str, String)>) -> http::Response<Body> {
        let mut req = Request::get(path);
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        self.app.clone().oneshot(req.body(Body::empty()).expect("request")).await.expect("infallible")
    }

    pub(crate) async fn pay(&self, path: &str, nonce: u64, amount: u64) -> http::Response<Body> {
        self.send(path, Some((wire::PAYMENT_SIGNATURE, self.header(nonce, amount)))).await
    }
}

pub(crate) fn required(resp: &http::Response<Body>) -> PaymentRequired {
    let h = resp.headers().get(wire::PAYMENT_REQUIRED).expect("PAYMENT-REQUIRED header");
    wire::decode_header(h.as_bytes()).expect("decodes")
}

pub(crate) fn settlement(resp: &http::Response<Body>) -> SettlementResponse {
    let h = resp.headers().get(wire::PAYMENT_RESPONSE).expect("PAYMENT-RESPONSE header");
    wire::decode_header(h.as_bytes()).expect("decodes")
}

pub(crate) async fn body_json(resp: http::Response<Body>) -> serde_json::Value {
    let bytes = http_body_util::BodyExt::collect(resp.into_body()).await.expect("body").to_bytes();
    serde_json::from_slice(&bytes).expect("json body")
}
