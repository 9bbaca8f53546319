//! The facilitator API in-process: the router the gateway nests under `[facilitator] path`,
//! on the fixture's engine (in-memory chain, real store).

use std::{sync::Arc, time::Duration};

use alloy::primitives::{Address, U256};
use axum::{Router, body::Body, http::Request};
use http::StatusCode;
use serde_json::{Value, json};
use tower::ServiceExt;
use x402_node::facilitator::{self, Facilitator, SettleResponse, VerifyResponse};
use x402_protocol::wire::{ErrorCode, PaymentPayload};
use x402_store::{KvStore, MemoryStore};

use crate::fixture::{CHAIN_ID, Fixture, PRICE, fixture, terms};

/// A change to a request body.
type Edit = dyn Fn(&mut Value);

const TOKEN: &str = "facilitator-token-0123456789abcdef";

struct Setup {
    f: Fixture<MemoryStore>,
    facilitator: Arc<Facilitator<MemoryStore, x402_node::test_utils::MemoryChain>>,
    app: Router,
}

fn setup() -> Setup {
    let f = fixture(Arc::new(MemoryStore::new()));
    let facilitator = Arc::new(Facilitator::new(f.engine.clone(), TOKEN));
    let app = Router::new().nest("/facilitator", facilitator::router(Arc::clone(&facilitator)));
    Setup { f, facilitator, app }
}

impl Setup {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path).header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp =
            self.app.clone().oneshot(req.body(Body::from(body)).expect("request")).await.expect("infallible");
        let status = resp.status();
        let bytes = http_body_util::BodyExt::collect(resp.into_body()).await.expect("body").to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// The body of verify/settle for the fixture's voucher `(nonce, amount)` at `price`.
    fn body(&self, nonce: u64, amount: u64, price: u64, timeout: u64) -> Value {
        let mut requirements = serde_json::to_value(&self.f.requirements).expect("json");
        requirements["amount"] = json!(price.to_string());
        requirements["maxTimeoutSeconds"] = json!(timeout);
        let payment = PaymentPayload::new(&self.f.requirements, &self.f.sign(nonce, amount));
        json!({ "x402Version": 2, "paymentPayload": payment, "paymentRequirements": requirements })
    }

    async fn verify(&self, body: &Value) -> VerifyResponse {
        let (status, json) =
            self.call("POST", "/facilitator/verify", Some(TOKEN), body.to_string().into()).await;
        assert_eq!(status, StatusCode::OK, "{json}");
        serde_json::from_value(json).expect("a verify response")
    }

    async fn settle(&self, body: &Value) -> (SettleResponse, Value) {
        let (status, json) =
            self.call("POST", "/facilitator/settle", Some(TOKEN), body.to_string().into()).await;
        assert_eq!(status, StatusCode::OK, "{json}");
        (serde_json::from_value(json.clone()).expect("a settle response"), json)
    }

    async fn charged(&self) -> U256 {
        self.f.engine.channel_state(self.f.id).await.map_or(U256::ZERO, |s| s.charged)
    }
}

#[tokio::test]
async fn every_endpoint_needs_the_token() {
    let s = setup();
    let body = s.body(1, PRICE, PRICE, 60).to_string();
    for (method, path) in [
        ("GET", "/facilitator/supported"),
        ("POST", "/facilitator/verify"),
        ("POST", "/facilitator/settle"),
        ("GET", "/facilitator/nothing"),
    ] {
        for token in [None, Some("wrong"), Some(&TOKEN[1..]), Some("facilitator-token-0123456789abcdeF")] {
            let (status, json) = s.call(method, path, token, body.clone().into()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} {token:?}");
            assert_eq!(json["error"], "unauthorized");
        }
    }
    // Nothing was reserved or charged by the refused calls.
    assert_eq!(s.facilitator.reservations(), 0);
    assert_eq!(s.charged().await, U256::ZERO);
    let (status, json) = s.call("GET", "/facilitator/nothing", Some(TOKEN), Vec::new()).await;
    assert_eq!((status, json["error"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
}

#[tokio::test]
async fn supported_lists_the_scheme_its_contract_and_the_provider() {
    let s = setup();
    let (status, json) = s.call("GET", "/facilitator/supported", Some(TOKEN), Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    let kinds = json["kinds"].as_array().expect("kinds");
    assert_eq!(kinds.len(), 1, "no exact scheme plugged in: {json}");
    assert_eq!(kinds[0]["scheme"], "channel-voucher");
    assert_eq!(kinds[0]["x402Version"], 2);
    assert_eq!(kinds[0]["network"], format!("eip155:{CHAIN_ID}"));
    assert_eq!(kinds[0]["extra"]["contract"], terms().contract.to_checksum(None));
    assert_eq!(kinds[0]["extra"]["domain"], json!({ "name": "x402 Payment Channel", "version": "2" }));
    assert_eq!(json["extensions"], json!([]));
    assert_eq!(json["signers"]["eip155:*"], json!([terms().payee.to_checksum(None)]));
}

#[tokio::test]
async fn malformed_and_oversized_bodies() {
    let s = setup();
    for bad in [&b"{nope"[..], b"[]", b"{}", b"{\"x402Version\":2}"] {
        let (status, json) = s.call("POST", "/facilitator/verify", Some(TOKEN), bad.to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(bad));
        assert_eq!(
            (json["isValid"].as_bool(), json["invalidReason"].as_str()),
            (Some(false), Some("invalid_payload"))
        );
        assert!(json["invalidMessage"].as_str().is_some_and(|m| !m.is_empty()));
        let (status, json) = s.call("POST", "/facilitator/settle", Some(TOKEN), bad.to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            (json["success"].as_bool(), json["errorReason"].as_str()),
            (Some(false), Some("invalid_payload"))
        );
        assert_eq!(json["transaction"], "");
    }
    let mut big = s.body(1, PRICE, PRICE, 60);
    big["padding"] = json!("x".repeat(facilitator::MAX_BODY));
    let (status, _) = s.call("POST", "/facilitator/verify", Some(TOKEN), big.to_string().into()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Unknown fields inside our payload are refused, not ignored.
    let mut extra = s.body(1, PRICE, PRICE, 60);
    extra["paymentPayload"]["payload"]["validBefore"] = json!("1");
    let v = s.verify(&extra).await;
    assert_eq!(v.invalid_reason, Some(ErrorCode::InvalidPayload), "{v:?}");
    assert!(v.invalid_message.unwrap_or_default().contains("unknown field"));
}

#[tokio::test]
async fn verify_reserves_and_settle_commits_durably_once() {
    let s = setup();
    let body = s.body(1, PRICE, PRICE, 60);
    let v = s.verify(&body).await;
    assert_eq!(v, VerifyResponse::valid(s.f.payer.address()));
    assert_eq!(s.facilitator.reservations(), 1);
    assert_eq!(s.charged().await, U256::ZERO, "verify charges nothing");
    let (settled, json) = s.settle(&body).await;
    assert!(settled.success, "{json}");
    assert_eq!(json["transaction"], "");
    assert_eq!(json["network"], format!("eip155:{CHAIN_ID}"));
    assert_eq!(json["payer"], s.f.payer.address().to_checksum(None), "EIP-55");
    assert_eq!(json["amount"], PRICE.to_string());
    let extra = settled.extra.clone().expect("channel extra");
    assert_eq!((extra.channel_id, extra.nonce), (s.f.id, 1));
    assert_eq!((extra.charged, extra.total_charged), (U256::from(PRICE), U256::from(PRICE)));
    assert!(json["extra"].get("session").is_none());
    assert_eq!(s.facilitator.reservations(), 0);
    assert_eq!(s.charged().await, U256::from(PRICE));
    // Durable: the store holds the voucher.
    assert!(!s.f._store.list("channels").expect("list").is_empty());
    // A second settle of the same voucher: the same answer, nothing charged again.
    let (again, again_json) = s.settle(&body).await;
    assert_eq!(again_json, json);
    assert_eq!(again, settled);
    assert_eq!(s.charged().await, U256::from(PRICE));
    // A verify of it now is a replay, refused with the state to resynchronise to, signed by
    // the payer.
    let v = s.verify(&body).await;
    assert_eq!(v.invalid_reason, Some(ErrorCode::NonceTooLow), "{v:?}");
    let state = v.extra.expect("the channel state").channel;
    assert_eq!((state.nonce, state.charged), (1, U256::from(PRICE)));
    assert!(state.signed_by(&s.f.domain, s.f.payer.address()), "extra.channel.signature is the payer's");
}

#[tokio::test]
async fn settle_without_verify_and_upto_settles_less() {
    let s = setup();
    let (settled, _) = s.settle(&s.body(1, PRICE, PRICE, 60)).await;
    assert!(settled.success);
    assert_eq!(s.charged().await, U256::from(PRICE));
    // upto: verify at the maximum, settle the actual cost.
    let verify = s.body(2, 3 * PRICE, 2 * PRICE, 60);
    assert!(s.verify(&verify).await.is_valid);
    let mut actual = verify.clone();
    actual["paymentRequirements"]["amount"] = json!("700");
    let (settled, json) = s.settle(&actual).await;
    assert!(settled.success, "{json}");
    assert_eq!(settled.amount, Some(U256::from(700)));
    assert_eq!(s.charged().await, U256::from(PRICE + 700));
    // Never more than verify reserved.
    let verify = s.body(3, 6 * PRICE, PRICE, 60);
    assert!(s.verify(&verify).await.is_valid);
    let mut more = verify.clone();
    more["paymentRequirements"]["amount"] = json!((2 * PRICE).to_string());
    let (refused, _) = s.settle(&more).await;
    assert_eq!(refused.error_reason, Some(ErrorCode::InvalidPayload));
    assert_eq!(s.charged().await, U256::from(PRICE + 700));
    assert!(s.settle(&verify).await.0.success, "the reservation is still there");
}

#[tokio::test]
async fn a_lapsed_reservation_frees_the_channel() {
    let s = setup();
    // The voucher covers the whole deposit and verify reserves all of it, for one second.
    let all = s.body(1, 10 * PRICE, 10 * PRICE, 1);
    assert!(s.verify(&all).await.is_valid);
    let next = s.body(2, 10 * PRICE, PRICE, 60);
    let v = s.verify(&next).await;
    assert!(!v.is_valid, "nothing left while the first is reserved: {v:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(s.facilitator.sweep(), 1);
    assert_eq!(s.facilitator.reservations(), 0);
    assert!(s.verify(&next).await.is_valid, "the lapsed reservation no longer blocks the channel");
    assert!(s.settle(&next).await.0.success);
    assert_eq!(s.charged().await, U256::from(PRICE));
    // A verify lapses on its own too (swept by the next call), and its settle still works as
    // a settle without verify.
    let third = s.body(3, 10 * PRICE, PRICE, 1);
    assert!(s.verify(&third).await.is_valid);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(s.settle(&third).await.0.success);
    assert_eq!(s.charged().await, U256::from(2 * PRICE));
}

#[tokio::test]
async fn mismatched_requirements_and_schemes_are_refused() {
    let s = setup();
    let body = s.body(1, PRICE, PRICE, 60);
    let cases: Vec<(&str, Box<Edit>, ErrorCode)> = vec![
        (
            "payTo",
            Box::new(|b| b["paymentRequirements"]["payTo"] = json!(Address::repeat_byte(9))),
            ErrorCode::ChannelMismatch,
        ),
        (
            "asset",
            Box::new(|b| b["paymentRequirements"]["asset"] = json!(Address::repeat_byte(9))),
            ErrorCode::InvalidPayload,
        ),
        (
            "network",
            Box::new(|b| b["paymentRequirements"]["network"] = json!("eip155:1")),
            ErrorCode::InvalidNetwork,
        ),
        (
            "unknown scheme",
            Box::new(|b| b["paymentRequirements"]["scheme"] = json!("channel")),
            ErrorCode::InvalidScheme,
        ),
        (
            "schemes differ",
            Box::new(|b| b["paymentPayload"]["accepted"]["scheme"] = json!("exact")),
            ErrorCode::InvalidScheme,
        ),
        (
            "accepted payTo differs",
            Box::new(|b| b["paymentPayload"]["accepted"]["payTo"] = json!(Address::repeat_byte(9))),
            ErrorCode::ChannelMismatch,
        ),
        (
            "exact, not plugged in",
            Box::new(|b| {
                b["paymentRequirements"]["scheme"] = json!("exact");
                b["paymentPayload"]["accepted"]["scheme"] = json!("exact");
                b["paymentPayload"]["payload"] = json!({
                    "signature": "0x00",
                    "authorization": { "from": Address::ZERO, "to": Address::ZERO, "value": "1",
                        "validAfter": "0", "validBefore": "1", "nonce": format!("0x{}", "00".repeat(32)) }
                });
            }),
            ErrorCode::InvalidScheme,
        ),
        ("version", Box::new(|b| b["x402Version"] = json!(3)), ErrorCode::InvalidX402Version),
    ];
    for (name, edit, code) in cases {
        let mut b = body.clone();
        edit(&mut b);
        let v = s.verify(&b).await;
        assert_eq!((v.is_valid, v.invalid_reason), (false, Some(code)), "verify {name}: {v:?}");
        let (settled, _) = s.settle(&b).await;
        assert_eq!((settled.success, settled.error_reason), (false, Some(code)), "settle {name}");
    }
    assert_eq!(s.facilitator.reservations(), 0);
    assert_eq!(s.charged().await, U256::ZERO);
    assert!(s.settle(&body).await.0.success, "the untouched body still settles");
}

#[tokio::test]
async fn concurrent_verifies_on_one_channel_never_reserve_beyond_the_voucher() {
    let s = Arc::new(setup());
    // Twenty vouchers each signing the whole deposit (10 prices), verified at once.
    let mut tasks = Vec::new();
    for nonce in 1..=20u64 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            let body = s.body(nonce, 10 * PRICE, PRICE, 60);
            (s.verify(&body).await.is_valid, body)
        }));
    }
    let mut valid = Vec::new();
    for t in tasks {
        let (ok, body) = t.await.expect("joins");
        if ok {
            valid.push(body);
        }
    }
    assert!(!valid.is_empty() && valid.len() <= 10, "{} reserved", valid.len());
    assert_eq!(s.facilitator.reservations(), valid.len());
    for body in &valid {
        assert!(s.settle(body).await.0.success);
    }
    assert_eq!(s.charged().await, U256::from(PRICE * valid.len() as u64));
    assert!(s.charged().await <= U256::from(10 * PRICE));
}

#[tokio::test]
async fn verifies_without_settles_are_bounded() {
    let f = fixture(Arc::new(MemoryStore::new()));
    let facilitator = Facilitator::new(f.engine.clone(), TOKEN).with_max_reservations(2);
    let body = |nonce: u64| -> facilitator::FacilitatorRequest {
        let mut requirements = serde_json::to_value(&f.requirements).expect("json");
        requirements["amount"] = json!(PRICE.to_string());
        let payment = PaymentPayload::new(&f.requirements, &f.sign(nonce, 10 * PRICE));
        serde_json::from_value(
            json!({ "x402Version": 2, "paymentPayload": payment, "paymentRequirements": requirements }),
        )
        .expect("decodes")
    };
    assert!(facilitator.verify(&body(1)).await.is_valid);
    assert!(facilitator.verify(&body(2)).await.is_valid);
    let full = facilitator.verify(&body(3)).await;
    assert_eq!(full.invalid_reason, Some(ErrorCode::Unavailable), "{full:?}");
    assert_eq!(facilitator.reservations(), 2);
    // The refused verify reserved nothing: once a slot is free the same voucher passes.
    assert!(facilitator.settle(&body(1)).await.success);
    assert!(facilitator.verify(&body(3)).await.is_valid);
    assert_eq!(facilitator.reservations(), 2);
}

#[tokio::test]
async fn the_store_failing_at_settle_is_not_a_success() {
    // Settle is durable before the answer: a store that cannot write answers a failure.
    let store = Arc::new(x402_node::test_utils::FlakyStore::default());
    let f = crate::fixture::fixture(Arc::clone(&store));
    let facilitator = Facilitator::new(f.engine.clone(), TOKEN);
    let mut requirements = serde_json::to_value(&f.requirements).expect("json");
    requirements["amount"] = json!(PRICE.to_string());
    let payment = PaymentPayload::new(&f.requirements, &f.sign(1, PRICE));
    let body: facilitator::FacilitatorRequest = serde_json::from_value(
        json!({ "x402Version": 2, "paymentPayload": payment, "paymentRequirements": requirements }),
    )
    .expect("decodes");
    assert!(facilitator.verify(&body).await.is_valid);
    store.fail(true);
    let settled = facilitator.settle(&body).await;
    assert!(!settled.success);
    assert_eq!(settled.error_reason, Some(ErrorCode::Unavailable));
    store.fail(false);
    assert!(facilitator.settle(&body).await.success, "settles once the store is back");
}
