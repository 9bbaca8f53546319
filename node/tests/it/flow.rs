//! Reserve → serve → commit in-process: requests of one channel served in parallel whatever
//! the order of their vouchers, resends of a served voucher, failures giving reservations
//! back, and streamed `upto` responses charged what they report at their end.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use alloy::primitives::U256;
use axum::{Router, body::Body, response::IntoResponse, routing::get};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header::CONTENT_TYPE};
use http_body_util::{BodyExt, StreamBody};
use x402_node::{Engine, Price, middleware::Paywall, test_utils::MemoryChain};
use x402_protocol::wire::{self, ErrorCode};
use x402_store::{KvStore, MemoryStore};

use crate::fixture::{Fixture, PRICE, fixture, required, settlement};

const DELAY: Duration = Duration::from_millis(200);
const MAX: u64 = 5 * PRICE;

fn sse(chunks: Vec<&'static str>) -> axum::response::Response {
    let body =
        Body::from_stream(futures::stream::iter(chunks.into_iter().map(Ok::<_, std::convert::Infallible>)));
    ([(CONTENT_TYPE, "text/event-stream")], body).into_response()
}

/// A chunked body ending with `trailers`.
fn with_trailers(trailers: HeaderMap) -> axum::response::Response {
    let frames = vec![
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from_static(b"part one, "))),
        Ok(http_body::Frame::data(Bytes::from_static(b"part two"))),
        Ok(http_body::Frame::trailers(trailers)),
    ];
    Body::new(StreamBody::new(futures::stream::iter(frames))).into_response()
}

fn trailer(name: &'static str, value: &'static str) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert(name, HeaderValue::from_static(value));
    map
}

fn flow_app<S: KvStore>(engine: Engine<S, MemoryChain>) -> Router {
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(DELAY).await;
                "slow"
            }),
        )
        .route(
            "/kept",
            get(move || {
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move { format!("response {n}") }
            }),
        )
        .route("/broken", get(|| async { StatusCode::BAD_GATEWAY }))
        .route(
            "/sse",
            get(|| async { sse(vec!["data: a\n\n", "event: x402-", "cost\ndata: 1234\n\ndata: b\n\n"]) }),
        )
        .route("/sse-none", get(|| async { sse(vec!["data: a\n\n"]) }))
        .route("/sse-bad", get(|| async { sse(vec!["data: a\n\nevent: x402-cost\ndata: lots\n\n"]) }))
        .route("/sse-over", get(|| async { sse(vec!["event: x402-cost\ndata: 999999999\n\n"]) }))
        .route("/trailer", get(|| async { with_trailers(trailer("x402-cost", "777")) }))
        .route("/trailer-other", get(|| async { with_trailers(trailer("x-other", "1")) }))
        .layer(
            Paywall::new(engine)
                .route("/slow", Price::exact(U256::from(PRICE)))
                .route("/kept", Price::exact(U256::from(PRICE)).with_replay_body())
                .route("/broken", Price::exact(U256::from(PRICE)))
                .route("/sse", Price::upto(U256::from(MAX)))
                .route("/sse-none", Price::upto(U256::from(MAX)))
                .route("/sse-bad", Price::upto(U256::from(MAX)))
                .route("/sse-over", Price::upto(U256::from(MAX)))
                .route("/trailer", Price::upto(U256::from(MAX)))
                .route("/trailer-other", Price::upto(U256::from(MAX))),
        )
}

fn flow_fixture() -> Arc<Fixture<MemoryStore>> {
    let mut f = fixture(Arc::new(MemoryStore::new()));
    f.chain.update(f.id, |c| c.deposit = U256::from(1_000 * PRICE));
    f.app = flow_app(f.engine.clone());
    Arc::new(f)
}

async fn charged(f: &Fixture<MemoryStore>) -> U256 {
    f.engine.channel(f.id).expect("store").expect("record").charged
}

#[tokio::test]
async fn vouchers_of_one_channel_are_served_in_parallel_in_any_order() {
    let f = flow_fixture();
    // 32 vouchers (nonce n pays n prices), sent newest first, all at once, to a handler that
    // takes 200 ms: served in parallel, each once.
    let started = Instant::now();
    let tasks: Vec<_> = (1..=32u64)
        .rev()
        .map(|n| {
            let f = Arc::clone(&f);
            tokio::spawn(async move { (n, f.pay("/slow", n, n * PRICE).await) })
        })
        .collect();
    for t in tasks {
        let (n, resp) = t.await.expect("task");
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "voucher {n}: {:?}",
            resp.headers().get(wire::PAYMENT_REQUIRED)
        );
        assert_eq!(settlement(&resp).extra.as_ref().expect("channel extra").nonce, n);
    }
    let elapsed = started.elapsed();
    assert!(elapsed < 8 * DELAY, "32 requests of 200 ms took {elapsed:?}: serialised");
    assert_eq!(charged(&f).await, U256::from(32 * PRICE));
    let record = f.engine.channel(f.id).expect("store").expect("record");
    assert_eq!(record.latest.map(|v| v.nonce), Some(32));
    assert_eq!(record.served.len(), 32);

    // Beyond the newest voucher's amount, an older unused nonce is a corrective 402.
    let resp = f.pay("/slow", 40, 33 * PRICE).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = f.pay("/slow", 39, 39 * PRICE).await;
    assert_eq!(required(&resp).error, Some(ErrorCode::AmountBelowPrice));
}

#[tokio::test]
async fn a_resent_voucher_gets_its_receipt_and_a_kept_response_once_charged() {
    let f = flow_fixture();
    let first = f.pay("/kept", 1, PRICE).await;
    assert_eq!(first.status(), StatusCode::OK);
    let receipt = settlement(&first);
    let body = first.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body, "response 0");
    // Resent (the response was lost): the kept response and the same receipt, not served again.
    for _ in 0..2 {
        let again = f.pay("/kept", 1, PRICE).await;
        assert_eq!(again.status(), StatusCode::OK);
        assert_eq!(settlement(&again), receipt);
        assert_eq!(again.into_body().collect().await.expect("body").to_bytes(), "response 0");
    }
    assert_eq!(charged(&f).await, U256::from(PRICE));
    // A route without replay answers 409 with the receipt.
    let resp = f.pay("/slow", 2, 2 * PRICE).await;
    let receipt = settlement(&resp);
    let again = f.pay("/slow", 2, 2 * PRICE).await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert_eq!(settlement(&again), receipt);
    assert_eq!(again.headers()[x402_node::serve::REPLAYED], "1");
    assert_eq!(charged(&f).await, U256::from(2 * PRICE));
    // The receipt survives a restart (it is stored with the voucher).
    let store = Arc::new(MemoryStore::new());
    let g = fixture(Arc::clone(&store));
    let ok = g.pay("/paid", 1, PRICE).await;
    let receipt = settlement(&ok);
    let h = fixture_on(store, &g);
    let again = h.pay("/paid", 1, PRICE).await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert_eq!(settlement(&again), receipt);
}

/// A fresh node (engine, app) on `store`, paid by `like`'s payer.
fn fixture_on(store: Arc<MemoryStore>, like: &Fixture<MemoryStore>) -> Fixture<MemoryStore> {
    crate::fixture::fixture_of(store, like.payer.clone())
}

#[tokio::test]
async fn a_failed_upstream_gives_its_reservation_back() {
    let f = flow_fixture();
    let resp = f.pay("/broken", 1, PRICE).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert!(resp.headers().get(wire::PAYMENT_RESPONSE).is_none());
    // The same voucher pays for the next request: nothing is reserved or charged any more.
    let resp = f.pay("/slow", 1, PRICE).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(settlement(&resp).extra.as_ref().expect("channel extra").total_charged, U256::from(PRICE));
}

#[tokio::test]
async fn streamed_responses_are_charged_what_they_report_at_their_end() {
    let f = flow_fixture();
    // (route, expected body, expected charge)
    let cases: [(&str, &str, u64); 7] = [
        ("/sse", "data: a\n\ndata: b\n\n", 1234),
        ("/sse-none", "data: a\n\n", MAX),
        ("/sse-bad", "data: a\n\n", MAX),
        ("/sse-over", "", MAX),
        ("/trailer", "part one, part two", 777),
        ("/trailer-other", "part one, part two", MAX),
        ("/sse", "data: a\n\ndata: b\n\n", 1234),
    ];
    let mut total = 0;
    for (n, (path, body, cost)) in cases.into_iter().enumerate() {
        let nonce = n as u64 + 1;
        let resp = f.pay(path, nonce, total + MAX).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}: {:?}", resp.headers().get(wire::PAYMENT_REQUIRED));
        // The receipt goes out with the headers, before the cost is known: the maximum.
        assert_eq!(
            settlement(&resp).extra.as_ref().expect("channel extra").charged,
            U256::from(MAX),
            "{path}"
        );
        let collected = resp.into_body().collect().await.expect("body");
        let trailers = collected.trailers().cloned();
        assert_eq!(collected.to_bytes(), body, "{path}");
        assert!(trailers.is_none_or(|t| !t.contains_key("x402-cost")), "{path}: the report is taken out");
        total += cost;
        assert_eq!(charged(&f).await, U256::from(total), "{path}");
    }
    // A client that hangs up before the end is charged the maximum.
    let resp = f.pay("/sse", 8, total + MAX).await;
    assert_eq!(resp.status(), StatusCode::OK);
    drop(resp);
    tokio::task::yield_now().await;
    total += MAX;
    assert_eq!(charged(&f).await, U256::from(total));
    // Charged in memory: written by the next flush.
    assert!(f.engine.flush_charges().await.expect("flush") >= 1);
    let stored = f.engine.book().get(f.id).expect("get").expect("stored");
    assert_eq!(stored.charged, U256::from(total));
}
