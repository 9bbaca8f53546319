//! The node's facilitator API on anvil, over real HTTP, as a JS or Python server using the
//! official x402 middleware calls it; and the wire details of the gateway's 402 (absolute
//! resource URL, no-store, the token's EIP-712 domain read from the chain, scheme first).

use alloy::primitives::U256;
use reqwest::StatusCode;
use serde_json::{Value, json};
use x402_e2e::{
    harness::{Env, Gateway, PRICE, paid, required},
    upstream,
};
use x402_protocol::wire::{self, ErrorCode, PaymentPayload};

const TOKEN: &str = "e2e-facilitator-token-0123456789abcdef";
const DEPOSIT: u64 = 100 * PRICE;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facilitator_verifies_settles_and_refuses_over_http() {
    let env = Env::new().await;
    let payer = env.fresh_payer(DEPOSIT).await;
    let id = payer.open(env.provider_key.address(), DEPOSIT, 7).await;
    let api = upstream().await;
    let data = tempfile::tempdir().expect("tempdir");
    let mut config = env.gateway_config(api, data.path());
    config.facilitator.token = Some(TOKEN.into());
    let gw = Gateway::start(config).await;
    let client = reqwest::Client::new();
    let base = format!("{}/facilitator", gw.url);

    // The 402 as the official middleware's server would build its requirements from.
    let resp = client.get(format!("{}/weather?city=Paris", gw.url)).send().await.expect("request");
    assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(resp.headers()[reqwest::header::CACHE_CONTROL], "no-store");
    let host = gw.url.trim_start_matches("http://").to_owned();
    let pr = required(&resp);
    assert_eq!(pr.resource.url, format!("http://{host}/weather?city=Paris"));
    let terms = pr.accepts[0].clone();
    // The token's domain, read from the chain at startup (EIP-5267), and the channel's.
    assert_eq!((terms.extra.name.as_deref(), terms.extra.version.as_deref()), (Some("Test USD"), Some("1")));
    assert_eq!(terms.extra.domain, wire::DomainInfo::channel());
    let raw: Value = resp.json().await.expect("json body");
    assert!(raw.get("message").is_none(), "no non-spec top-level field");
    assert_eq!(raw["accepts"][0]["payTo"], env.provider_key.address().to_checksum(None));
    assert_eq!(raw["accepts"][0]["asset"], env.usd.to_checksum(None));

    // An exact payment sent to the channel-only route: a wrong scheme, not a bad payload.
    let exact = json!({
        "x402Version": 2,
        "accepted": { "scheme": "exact", "network": terms.network.to_string() },
        "payload": { "signature": "0x00", "authorization": {} }
    });
    let header = wire::encode_header(&exact);
    let resp = paid(&client, &format!("{}/weather", gw.url), header).await;
    assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(required(&resp).error, Some(ErrorCode::InvalidScheme));

    // No token, no API.
    let resp = client.get(format!("{base}/supported")).send().await.expect("request");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let supported: Value = client
        .get(format!("{base}/supported"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(supported["kinds"][0]["scheme"], "channel-voucher");
    assert_eq!(supported["kinds"][0]["extra"]["contract"], env.contract.to_checksum(None));

    let requirements = serde_json::to_value(&terms).expect("json");
    let body = |nonce: u64, amount: u64| {
        let payment = PaymentPayload::new(&terms, &payer.sign(id, nonce, amount));
        json!({ "x402Version": 2, "paymentPayload": payment, "paymentRequirements": requirements })
    };
    let post = |endpoint: &'static str, body: Value| {
        let req = client.post(format!("{base}/{endpoint}")).bearer_auth(TOKEN).json(&body);
        async move {
            let resp = req.send().await.expect("request");
            let status = resp.status();
            (status, resp.json::<Value>().await.expect("json"))
        }
    };

    // verify → settle.
    let (status, v) = post("verify", body(1, PRICE)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v, json!({ "isValid": true, "payer": payer.address().to_checksum(None) }));
    let (_, s) = post("settle", body(1, PRICE)).await;
    assert_eq!(s["success"], true, "{s}");
    assert_eq!(s["amount"], PRICE.to_string());
    assert_eq!(s["extra"]["totalCharged"], PRICE.to_string());
    // Idempotent.
    let (_, again) = post("settle", body(1, PRICE)).await;
    assert_eq!(again, s);
    // settle alone.
    let (_, s2) = post("settle", body(2, 2 * PRICE)).await;
    assert_eq!((s2["success"].as_bool(), s2["extra"]["nonce"].as_u64()), (Some(true), Some(2)), "{s2}");
    // A stale voucher: refused with the state, signed by the payer.
    let (_, stale) = post("verify", body(2, 2 * PRICE)).await;
    assert_eq!(stale["isValid"], false);
    assert_eq!(stale["invalidReason"], "nonce_too_low");
    let state: wire::ChannelState = serde_json::from_value(stale["extra"]["channel"].clone()).expect("state");
    assert!(state.signed_by(&env.domain(), payer.address()));
    // A forged voucher.
    let mut forged = body(3, 3 * PRICE);
    forged["paymentPayload"]["payload"]["cumulativeAmount"] = json!((4 * PRICE).to_string());
    let (_, bad) = post("verify", forged).await;
    assert_eq!(bad["invalidReason"], "invalid_signature", "{bad}");
    // Malformed JSON.
    let resp = client
        .post(format!("{base}/verify"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let bad: Value = resp.json().await.expect("json");
    assert_eq!(
        (bad["isValid"].as_bool(), bad["invalidReason"].as_str()),
        (Some(false), Some("invalid_payload"))
    );
    // The gateway sees the same channel: the next voucher builds on what the facilitator
    // charged.
    let resp = paid(
        &client,
        &format!("{}/weather", gw.url),
        wire::encode_header(&PaymentPayload::new(&terms, &payer.sign(id, 3, 3 * PRICE))),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (_, total) = post("settle", body(3, 3 * PRICE)).await;
    assert_eq!(total["extra"]["totalCharged"], (3 * PRICE).to_string(), "{total}");
    assert_eq!(U256::from(3 * PRICE), state.charged + U256::from(PRICE));
    gw.stop().await;
}
