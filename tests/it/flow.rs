//! Reserve → serve → commit on anvil through the gateway: many requests of one channel served
//! at once in front of a slow upstream, vouchers arriving out of order, a lost response resent,
//! a failing upstream giving its reservation back, and a streamed `upto` response charged what
//! its final event reports.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use alloy::primitives::U256;
use axum::{Router, body::Body, http::header::CONTENT_TYPE, response::IntoResponse, routing::get};
use reqwest::StatusCode;
use x402_client::{Client, DepositPolicy, Limits, Payment, Settings};
use x402_e2e::harness::{Env, Gateway, PRICE, paid, required};
use x402_node::config::{Config, RouteConfig};
use x402_protocol::wire::{self, ErrorCode, PaymentPayload, SettlementResponse};

/// How long the upstream takes per request.
const DELAY: Duration = Duration::from_millis(300);
/// The most a streamed request may cost.
const STREAM_MAX: u64 = 5 * PRICE;

/// A slow upstream: `/weather` (after [`DELAY`]), `/fail` (500 after [`DELAY`]), and
/// `/stream` and `/stream-unreported` (server-sent events, with and without a final cost
/// event reporting `2 * PRICE + 7`).
async fn slow_upstream() -> SocketAddr {
    // Chunks split inside the cost event, as a real stream may be.
    let events = |report: bool| {
        let mut chunks = vec!["data: one\n\n".to_owned(), "data: two\n\n".to_owned()];
        if report {
            chunks.push("event: x402-".to_owned());
            chunks.push(format!("cost\ndata: {}\n\n", 2 * PRICE + 7));
        }
        let body = Body::from_stream(futures::stream::iter(
            chunks.into_iter().map(Ok::<_, std::convert::Infallible>),
        ));
        ([(CONTENT_TYPE, "text/event-stream")], body).into_response()
    };
    let app = Router::new()
        .route(
            "/weather",
            get(|| async {
                tokio::time::sleep(DELAY).await;
                axum::Json(serde_json::json!({"forecast": "sunny"}))
            }),
        )
        .route(
            "/fail",
            get(|| async {
                tokio::time::sleep(DELAY).await;
                (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "down")
            }),
        )
        .route("/stream", get(move || async move { events(true) }))
        .route("/stream-unreported", get(move || async move { events(false) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn route(toml: &str) -> RouteConfig {
    toml::from_str(toml).expect("a route")
}

fn config(env: &Env, upstream: SocketAddr, dir: &std::path::Path) -> Config {
    let mut config = env.gateway_config(upstream, dir);
    config.routes.push(route(&format!("path = \"/fail\"\nprice = \"{PRICE}\"")));
    for path in ["/stream", "/stream-unreported"] {
        config
            .routes
            .push(route(&format!("path = \"{path}\"\nprice = \"{STREAM_MAX}\"\npricing = \"upto\"")));
    }
    config
}

async fn refused(gw: &Gateway, code: &str) -> f64 {
    gw.metric(&reqwest::Client::new(), &format!("x402_requests_refused_total{{code=\"{code}\"}}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_requests_on_one_channel_need_no_corrective_round_trip() {
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    let config = env.with_provider_key(config(&env, slow_upstream().await, data.path()), data.path());
    let gw = Gateway::start(config).await;
    let provider = env.provider_key.address();
    let provider_before = env.balance(provider).await;
    let funds = 10_000 * PRICE;
    let client = Client::builder(env.fresh_key(funds).await)
        .rpc(env.anvil.endpoint())
        .limits(Limits::from_units(u128::from(PRICE) * 10, u128::from(funds), u128::from(funds)))
        .deposit_policy(DepositPolicy { requests: 1_000, ..DepositPolicy::default() })
        .settings(Settings { backoff: Duration::from_millis(50), ..Settings::default() })
        .build()
        .await
        .unwrap();
    let url = format!("{}/weather", gw.url);
    let get = |client: Client, url: String| async move {
        let response = client.http().get(&url).send().await.expect("paid request");
        assert_eq!(response.status(), StatusCode::OK);
        response.extensions().get::<Payment>().cloned().expect("a payment")
    };
    get(client.clone(), url.clone()).await; // opens the channel

    for round in 0..2 {
        let started = Instant::now();
        let tasks: Vec<_> = (0..64).map(|_| tokio::spawn(get(client.clone(), url.clone()))).collect();
        let mut payments = Vec::new();
        for task in tasks {
            payments.push(task.await.unwrap());
        }
        let elapsed = started.elapsed();
        // Served in parallel: serialised, 64 requests would take 64 × 300 ms.
        assert!(elapsed < 16 * DELAY, "round {round}: 64 requests took {elapsed:?}");
        assert!(
            payments.iter().all(|p| p.attempts == 1),
            "round {round}: corrective round trips: {:?}",
            payments.iter().map(|p| p.attempts).filter(|&a| a > 1).collect::<Vec<_>>()
        );
        let mut nonces: Vec<u64> = payments.iter().map(|p| p.nonce).collect();
        nonces.sort_unstable();
        nonces.dedup();
        assert_eq!(nonces.len(), 64, "every request paid by its own voucher");
    }
    assert_eq!(refused(&gw, "nonce_too_low").await, 0.0);
    assert_eq!(refused(&gw, "amount_below_price").await, 0.0);
    let channel = client.channels().await.pop().unwrap();
    assert_eq!(channel.spent, U256::from(129 * PRICE));

    // Closed on-chain at exactly what was served.
    client.close(channel.id, None).await.unwrap();
    assert_eq!(env.balance(provider).await - provider_before, U256::from(129 * PRICE));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_vouchers_a_lost_response_and_a_failed_upstream() {
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(&env, slow_upstream().await, data.path())).await;
    let payer = env.fresh_payer(100 * PRICE).await;
    let id = payer.open(env.provider_key.address(), 100 * PRICE, 1).await;
    let http = reqwest::Client::new();
    let terms = gw.terms(&http).await;
    let header = |nonce: u64, amount: u64| {
        wire::encode_header(&PaymentPayload::new(&terms, &payer.sign(id, nonce, amount)))
    };
    let weather = format!("{}/weather", gw.url);

    // Eight vouchers signed at once (nonce n pays n prices), sent newest first, all at once.
    let started = Instant::now();
    let tasks: Vec<_> = (1..=8u64)
        .rev()
        .map(|n| {
            let (http, url, h) = (http.clone(), weather.clone(), header(n, n * PRICE));
            tokio::spawn(async move {
                let resp = paid(&http, &url, h).await;
                (n, resp.status(), resp.headers().get(wire::PAYMENT_RESPONSE).cloned())
            })
        })
        .collect();
    let mut receipts = Vec::new();
    for task in tasks {
        let (n, status, receipt) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK, "voucher {n}");
        let receipt: SettlementResponse =
            wire::decode_header(receipt.expect("a receipt").as_bytes()).unwrap();
        assert_eq!(
            (
                receipt.extra.as_ref().expect("channel extra").nonce,
                receipt.extra.as_ref().expect("channel extra").charged
            ),
            (n, U256::from(PRICE))
        );
        receipts.push(receipt);
    }
    assert!(started.elapsed() < 4 * DELAY, "served in parallel: {:?}", started.elapsed());

    // The response of voucher 3 was lost: its resend gets the same receipt, no second charge.
    let resend = paid(&http, &weather, header(3, 3 * PRICE)).await;
    assert_eq!(resend.status(), StatusCode::CONFLICT);
    let again: SettlementResponse =
        wire::decode_header(resend.headers()[wire::PAYMENT_RESPONSE].as_bytes()).unwrap();
    assert_eq!(Some(&again), receipts.iter().find(|r| r.extra.as_ref().expect("channel extra").nonce == 3));
    // Another voucher with a used nonce is refused.
    let reused = paid(&http, &weather, header(3, 9 * PRICE)).await;
    assert_eq!(required(&reused).error, Some(ErrorCode::NonceTooLow));

    // A failing upstream gives the reservation back: voucher 9 (nine prices) still pays for
    // the next request after its request failed, and then voucher 10 for one more.
    let fail = paid(&http, &format!("{}/fail", gw.url), header(9, 9 * PRICE)).await;
    assert_eq!(fail.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(fail.headers().get(wire::PAYMENT_RESPONSE).is_none());
    let ok = paid(&http, &weather, header(9, 9 * PRICE)).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let ok = paid(&http, &weather, header(10, 10 * PRICE)).await;
    let receipt: SettlementResponse =
        wire::decode_header(ok.headers()[wire::PAYMENT_RESPONSE].as_bytes()).unwrap();
    assert_eq!(receipt.extra.as_ref().expect("channel extra").total_charged, U256::from(10 * PRICE));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_upto_response_is_charged_what_its_final_event_reports() {
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(&env, slow_upstream().await, data.path())).await;
    let payer = env.fresh_payer(100 * PRICE).await;
    let id = payer.open(env.provider_key.address(), 100 * PRICE, 1).await;
    let http = reqwest::Client::new();
    let terms = required(&http.get(format!("{}/stream", gw.url)).send().await.unwrap()).accepts.remove(0);
    let header = |nonce: u64, amount: u64| {
        wire::encode_header(&PaymentPayload::new(&terms, &payer.sign(id, nonce, amount)))
    };

    // Reported: the client gets the events without the cost report, charged the report.
    let resp = paid(&http, &format!("{}/stream", gw.url), header(1, STREAM_MAX)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let receipt: SettlementResponse =
        wire::decode_header(resp.headers()[wire::PAYMENT_RESPONSE].as_bytes()).unwrap();
    // Sent with the headers, before the cost is known: the maximum.
    assert_eq!(receipt.extra.as_ref().expect("channel extra").charged, U256::from(STREAM_MAX));
    let body = resp.text().await.unwrap();
    assert!(body.contains("data: one") && body.contains("data: two"), "{body}");
    assert!(!body.contains("x402-cost"), "the report is taken out: {body}");
    let reported = 2 * PRICE + 7;
    // The next voucher only has to cover what the report charged plus the route's maximum.
    let resp = paid(&http, &format!("{}/stream-unreported", gw.url), header(2, reported + STREAM_MAX)).await;
    assert_eq!(resp.status(), StatusCode::OK, "{:?}", resp.headers().get(wire::PAYMENT_REQUIRED));
    let receipt: SettlementResponse =
        wire::decode_header(resp.headers()[wire::PAYMENT_RESPONSE].as_bytes()).unwrap();
    assert_eq!(
        receipt.extra.as_ref().expect("channel extra").total_charged,
        U256::from(reported + STREAM_MAX)
    );
    let body = resp.text().await.unwrap();
    assert!(body.contains("data: two"));
    // Unreported: the maximum. A voucher one unit short of that is refused.
    let short =
        paid(&http, &format!("{}/weather", gw.url), header(3, reported + STREAM_MAX + PRICE - 1)).await;
    assert_eq!(required(&short).error, Some(ErrorCode::AmountBelowPrice));
    let state = required(&short).accepts[0].extra.channel.clone().expect("the channel's state");
    assert_eq!(state.charged, U256::from(reported + STREAM_MAX));
    gw.stop().await;
}
