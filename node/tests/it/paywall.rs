//! The paywall end to end in-process: an axum app behind [`Paywall`], an in-memory chain, and
//! a real store. Every refusal of the wire format, corrective 402s, dynamic prices, restarts.

use std::sync::Arc;

use alloy::{
    primitives::{Address, B256, U256},
    signers::local::PrivateKeySigner,
};
use axum::{Router, body::Body, http::Request};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use http::StatusCode;
use tower::ServiceExt;
use x402_node::{
    Engine, Price,
    channel::OnchainChannel,
    metrics::Metrics,
    middleware::{PAYMENT_CHANNEL, Paywall},
    test_utils::{FlakyStore, MemoryChain},
};
use x402_protocol::{
    ChannelDomain, Voucher,
    wire::{self, ErrorCode, PaymentPayload},
};
use x402_store::{KvStore, MemoryStore, SledStore};

use crate::fixture::{
    CHAIN_ID, Fixture, PRICE, app, body_json, fixture, onchain, required, settlement, terms,
};

#[tokio::test]
async fn unpaid_request_gets_terms_in_header_and_body() {
    let f = fixture(Arc::new(MemoryStore::new()));
    let resp = f.send("/paid?q=1", None).await;
    assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
    let pr = required(&resp);
    assert_eq!(pr.x402_version, 2);
    assert_eq!(pr.error, Some(ErrorCode::PaymentRequired));
    assert_eq!(pr.resource.url, "http://localhost/paid?q=1", "absolute; no Host header here");
    assert_eq!(resp.headers()[http::header::CACHE_CONTROL], "no-store");
    let req = &pr.accepts[0];
    assert_eq!((req.scheme.as_str(), req.network.chain_id), ("channel-voucher", CHAIN_ID));
    assert_eq!(req.amount, U256::from(PRICE));
    assert_eq!((req.asset, req.pay_to, req.extra.contract), (terms().asset, terms().payee, terms().contract));
    assert_eq!(req.extra.min_challenge_period, 3600);
    assert_eq!(body_json(resp).await, serde_json::to_value(&pr).expect("json"));
    // Free routes pass through.
    assert_eq!(f.send("/free", None).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn resource_url_is_absolute_from_public_url_or_host() {
    use x402_node::middleware::PublicUrl;
    let f = fixture(Arc::new(MemoryStore::new()));
    let app = |public: PublicUrl| {
        axum::Router::new().route("/paid", axum::routing::get(|| async { "x" })).layer(
            Paywall::new(f.engine.clone()).route("/paid", Price::exact(U256::from(PRICE))).public_url(public),
        )
    };
    let get = |app: axum::Router, headers: Vec<(&'static str, &'static str)>| async move {
        let mut req = Request::get("/paid?a=1&b=%20");
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = app.oneshot(req.body(Body::empty()).expect("request")).await.expect("infallible");
        assert_eq!(resp.headers()[http::header::CACHE_CONTROL], "no-store");
        required(&resp).resource.url
    };
    let host = vec![("host", "api.test:8402"), ("x-forwarded-proto", "https")];
    assert_eq!(get(app(PublicUrl::default()), host.clone()).await, "http://api.test:8402/paid?a=1&b=%20");
    let trusting = PublicUrl { base: None, trust_forwarded: true };
    assert_eq!(get(app(trusting.clone()), host.clone()).await, "https://api.test:8402/paid?a=1&b=%20");
    assert_eq!(get(app(trusting), vec![("host", "api.test")]).await, "http://api.test/paid?a=1&b=%20");
    let public = PublicUrl { base: Some("https://example.com/api".into()), trust_forwarded: false };
    assert_eq!(get(app(public), host).await, "https://example.com/api/paid?a=1&b=%20");
    // A Host header that is not a plain host[:port] is not echoed.
    assert_eq!(
        get(app(PublicUrl::default()), vec![("host", "evil.test/\"><script>")]).await,
        "http://localhost/paid?a=1&b=%20"
    );
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
    assert_eq!(
        (s.extra.as_ref().expect("channel extra").channel_id, s.extra.as_ref().expect("channel extra").nonce),
        (f.id, 1)
    );
    assert_eq!(
        (
            s.extra.as_ref().expect("channel extra").charged,
            s.extra.as_ref().expect("channel extra").total_charged
        ),
        (U256::from(PRICE), U256::from(PRICE))
    );
    let bytes = http_body_util::BodyExt::collect(resp.into_body()).await.expect("body").to_bytes();
    assert_eq!(bytes, format!("hello {}", f.payer.address()).as_bytes());

    // The v1 alias header works too, for the next voucher.
    let resp = f.send("/paid", Some((wire::X_PAYMENT, f.header(2, 2 * PRICE)))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(settlement(&resp).extra.as_ref().expect("channel extra").total_charged, U256::from(2 * PRICE));
    // One chain lookup for the whole channel.
    assert_eq!(f.chain.lookups(), 1);
}

/// Every way a payment can be wrong, each with its exact status and x402 code: the header's
/// base64 and JSON (truncated, oversized, wrong types), the wire terms (version, scheme,
/// network), the EIP-712 domain (contract, chain id), the voucher's nonce and amount against
/// the node's state and the deposit, the signature (high-s, `v`, length, another key, another
/// channel), the channel's state and terms, and sessions. Nothing refused changes the store.
#[tokio::test]
async fn every_refusal_has_its_code() {
    use serde_json::{Value, json};
    use x402_protocol::SignedVoucher;

    let f = fixture(Arc::new(MemoryStore::new()));
    // The client signs a generous ceiling; the node charges the price.
    assert_eq!(f.pay("/paid", 5, 5 * PRICE).await.status(), StatusCode::OK);
    let before = f.engine.channel(f.id).expect("store").expect("record");

    // Channels in other states and on other terms, all paid by the fixture's payer.
    let payer = f.payer.address();
    let on = |byte: u8, change: fn(&mut OnchainChannel)| {
        let id = B256::repeat_byte(byte);
        let mut channel = onchain(payer, 10 * PRICE);
        change(&mut channel);
        f.chain.set(id, channel);
        id
    };
    let closing = on(0x21, |c| c.exit_at = 99);
    let closed = on(0x22, |c| c.open = false);
    let native = on(0x23, |c| c.params.token = Address::ZERO);
    let foreign = on(0x24, |c| c.params.payee = Address::repeat_byte(0x01));
    let short = on(0x25, |c| c.params.challengePeriod = 60);

    let sign_in = |domain: &ChannelDomain, key: &PrivateKeySigner, id: B256, nonce: u64, amount: u64| {
        domain
            .sign(key, Voucher { channelId: id, nonce, cumulativeAmount: U256::from(amount) })
            .expect("signs")
    };
    let encode = |v: &SignedVoucher| wire::encode_header(&PaymentPayload::new(&f.requirements, v));
    let on_channel = |id: B256| encode(&sign_in(&f.domain, &f.payer, id, 1, PRICE));
    // The voucher the node would accept next, and variants of it.
    let next = f.sign(6, 2 * PRICE);
    let json_of =
        |v: &SignedVoucher| serde_json::to_value(PaymentPayload::new(&f.requirements, v)).expect("json");
    let text = json_of(&next).to_string();
    let b64 = |text: &str| STANDARD.encode(text);
    let edit = |change: &dyn Fn(&mut Value)| {
        let mut value = json_of(&next);
        change(&mut value);
        b64(&value.to_string())
    };
    let with_signature = |signature: Vec<u8>| {
        encode(&SignedVoucher { voucher: next.voucher.clone(), signature: signature.into() })
    };
    // The same signature with s replaced by n - s and v flipped: as valid for ECDSA, refused by
    // the contract (and the node) as malleable.
    let high_s = {
        const N: U256 =
            alloy::primitives::uint!(0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141_U256);
        let mut sig = next.signature.to_vec();
        let s = U256::from_be_slice(&sig[32..64]);
        sig[32..64].copy_from_slice(&(N - s).to_be_bytes::<32>());
        sig[64] = 55 - sig[64];
        let alloy_sig = alloy::primitives::Signature::from_raw(&sig).expect("65 bytes");
        let digest = f.domain.signing_hash(&next.voucher);
        assert_eq!(alloy_sig.recover_address_from_prehash(&digest).ok(), Some(payer), "same signer");
        sig
    };
    let raw_v = {
        let mut sig = next.signature.to_vec();
        sig[64] -= 27;
        sig
    };
    let stranger = PrivateKeySigner::random();
    let other_channel = sign_in(&f.domain, &f.payer, B256::repeat_byte(0x99), 6, 2 * PRICE);
    let other_contract = ChannelDomain::new(CHAIN_ID, Address::repeat_byte(0xcd));
    let other_chain = ChannelDomain::new(1, terms().contract);
    let v1_without_network = edit(&|v| {
        v.as_object_mut().expect("object").remove("accepted");
        v["scheme"] = json!("channel-voucher");
    });

    use ErrorCode as E;
    let bad = StatusCode::BAD_REQUEST;
    let pay = StatusCode::PAYMENT_REQUIRED;
    let sig = wire::PAYMENT_SIGNATURE;
    let cases: Vec<(&str, &str, String, StatusCode, ErrorCode)> = vec![
        // base64
        ("base64: not base64", sig, "%%%".into(), bad, E::InvalidPayload),
        (
            "base64: truncated",
            sig,
            encode(&next)[..encode(&next).len() - 1].to_owned(),
            bad,
            E::InvalidPayload,
        ),
        ("base64: oversized", sig, "A".repeat(wire::MAX_HEADER_LEN + 4), bad, E::InvalidPayload),
        (
            "base64: oversized valid JSON",
            sig,
            edit(&|v| v["padding"] = json!("x".repeat(wire::MAX_HEADER_LEN))),
            bad,
            E::InvalidPayload,
        ),
        ("base64: empty", sig, String::new(), bad, E::InvalidPayload),
        // JSON
        ("json: truncated", sig, b64(&text[..text.len() / 2]), bad, E::InvalidPayload),
        ("json: not JSON", sig, b64("{nope"), bad, E::InvalidPayload),
        ("json: an array", sig, b64("[1,2]"), bad, E::InvalidPayload),
        ("json: a string", sig, b64("\"channel\""), bad, E::InvalidPayload),
        (
            "json: nonce above u64",
            sig,
            b64(&text.replace("\"nonce\":6", "\"nonce\":18446744073709551616")),
            bad,
            E::InvalidPayload,
        ),
        (
            "json: amount above u256",
            sig,
            edit(&|v| v["payload"]["cumulativeAmount"] = json!(format!("1{}", "0".repeat(78)))),
            bad,
            E::InvalidPayload,
        ),
        (
            "json: nonce a string",
            sig,
            edit(&|v| v["payload"]["nonce"] = json!("six")),
            bad,
            E::InvalidPayload,
        ),
        (
            "json: amount a number",
            sig,
            edit(&|v| v["payload"]["cumulativeAmount"] = json!(2 * PRICE)),
            bad,
            E::InvalidPayload,
        ),
        (
            "json: signature a number",
            sig,
            edit(&|v| v["payload"]["signature"] = json!(7)),
            bad,
            E::InvalidPayload,
        ),
        (
            "json: signature not hex",
            sig,
            edit(&|v| v["payload"]["signature"] = json!("0xzz")),
            bad,
            E::InvalidPayload,
        ),
        (
            "json: short channel id",
            sig,
            edit(&|v| v["payload"]["channelId"] = json!("0x11")),
            bad,
            E::InvalidPayload,
        ),
        ("json: payload an array", sig, edit(&|v| v["payload"] = json!([])), bad, E::InvalidPayload),
        ("json: version a string", sig, edit(&|v| v["x402Version"] = json!("2")), bad, E::InvalidPayload),
        (
            "json: network a number",
            sig,
            edit(&|v| v["accepted"]["network"] = json!(31337)),
            bad,
            E::InvalidPayload,
        ),
        (
            "json: unknown voucher field",
            sig,
            edit(&|v| v["payload"]["extra"] = json!(1)),
            bad,
            E::InvalidPayload,
        ),
        (
            "json: no signature",
            sig,
            edit(&|v| {
                v["payload"].as_object_mut().expect("object").remove("signature");
            }),
            bad,
            E::InvalidPayload,
        ),
        // The wire terms.
        ("version 0", sig, edit(&|v| v["x402Version"] = json!(0)), pay, E::InvalidX402Version),
        ("version 3", sig, edit(&|v| v["x402Version"] = json!(3)), pay, E::InvalidX402Version),
        ("scheme exact", sig, edit(&|v| v["accepted"]["scheme"] = json!("exact")), pay, E::InvalidScheme),
        (
            "no scheme",
            sig,
            edit(&|v| {
                v.as_object_mut().expect("object").remove("accepted");
            }),
            pay,
            E::InvalidScheme,
        ),
        (
            "network of another chain",
            sig,
            edit(&|v| v["accepted"]["network"] = json!("eip155:1")),
            pay,
            E::InvalidNetwork,
        ),
        (
            "network not CAIP-2",
            sig,
            edit(&|v| v["accepted"]["network"] = json!("31337")),
            pay,
            E::InvalidNetwork,
        ),
        ("v1 without a network", sig, v1_without_network, pay, E::InvalidNetwork),
        // The EIP-712 domain: the node cannot tell which domain was used, only that the
        // signature does not recover to the channel's signer.
        (
            "signed for another contract",
            sig,
            encode(&sign_in(&other_contract, &f.payer, f.id, 6, 2 * PRICE)),
            pay,
            E::InvalidSignature,
        ),
        (
            "signed for another chain id",
            sig,
            encode(&sign_in(&other_chain, &f.payer, f.id, 6, 2 * PRICE)),
            pay,
            E::InvalidSignature,
        ),
        // The voucher against the node's state (5, charged 1 price, ceiling 5) and the deposit.
        // (A resend of voucher 5 gets its receipt, and a lower unused nonce is served on the
        // latest voucher's credit: both below and in `flow`.)
        ("equal nonce, higher amount", sig, f.header(5, 7 * PRICE), pay, E::NonceTooLow),
        ("nonce zero", sig, f.header(0, 2 * PRICE), pay, E::NonceTooLow),
        ("amount below the price", sig, f.header(6, 2 * PRICE - 1), pay, E::AmountBelowPrice),
        ("amount of what was charged", sig, f.header(6, PRICE), pay, E::AmountBelowPrice),
        ("amount above the deposit", sig, f.header(6, 10 * PRICE + 1), pay, E::InsufficientDeposit),
        // The signature.
        ("high-s signature", sig, with_signature(high_s), pay, E::InvalidSignature),
        ("v of 0/1", sig, with_signature(raw_v), pay, E::InvalidSignature),
        ("64-byte signature", sig, with_signature(next.signature[..64].to_vec()), pay, E::InvalidSignature),
        ("empty signature", sig, with_signature(Vec::new()), pay, E::InvalidSignature),
        (
            "signed by another key",
            sig,
            encode(&sign_in(&f.domain, &stranger, f.id, 6, 2 * PRICE)),
            pay,
            E::InvalidSignature,
        ),
        (
            "signature of another channel",
            sig,
            with_signature(other_channel.signature.to_vec()),
            pay,
            E::InvalidSignature,
        ),
        // The channel.
        ("unknown channel", sig, on_channel(B256::repeat_byte(0x99)), pay, E::ChannelUnknown),
        ("exit pending", sig, on_channel(closing), pay, E::ChannelClosing),
        ("closed", sig, on_channel(closed), pay, E::ChannelClosed),
        ("native-token channel on a token route", sig, on_channel(native), pay, E::ChannelMismatch),
        ("channel of another provider", sig, on_channel(foreign), pay, E::ChannelMismatch),
        ("challenge period too short", sig, on_channel(short), pay, E::ChannelMismatch),
        // The v1 header and sessions.
        ("X-PAYMENT, bad JSON", wire::X_PAYMENT, b64("{nope"), bad, E::InvalidPayload),
        ("X-PAYMENT, a used nonce", wire::X_PAYMENT, f.header(5, 6 * PRICE), pay, E::NonceTooLow),
        ("session malformed", wire::PAYMENT_SESSION, "0x12:0x34".into(), bad, E::InvalidPayload),
        (
            "session unknown",
            wire::PAYMENT_SESSION,
            wire::encode_session(f.id, B256::repeat_byte(0x42)),
            pay,
            E::SessionInvalid,
        ),
    ];
    for (name, header, value, status, code) in cases {
        let resp = f.send("/paid", Some((header, value))).await;
        assert_eq!(resp.status(), status, "{name}");
        let pr = required(&resp);
        assert_eq!(pr.error, Some(code), "{name}");
        // The state goes only to a request proving it holds the signer's key: a forged session
        // token does not.
        let state = pr.accepts[0].extra.channel.as_ref().map(|s| s.nonce);
        if matches!(code, E::SessionInvalid | E::InvalidSignature | E::ChannelMismatch | E::ChannelClosed) {
            assert_eq!(state, None, "{name}: no state");
        } else if code.is_corrective() {
            assert_eq!(state, Some(5), "{name}: node state");
        }
        let body = body_json(resp).await;
        assert_eq!(body["error"], code.as_str(), "{name}: body carries the code");
    }
    // The very voucher served before: its receipt again, not a second service or charge.
    let resp = f.send("/paid", Some((wire::X_PAYMENT, f.header(5, 5 * PRICE)))).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert_eq!(
        (
            settlement(&resp).extra.as_ref().expect("channel extra").nonce,
            settlement(&resp).extra.as_ref().expect("channel extra").total_charged
        ),
        (5, U256::from(PRICE))
    );
    assert_eq!(body_json(resp).await["error"], "already_served");
    assert_eq!(f.engine.channel(f.id).expect("store").expect("record"), before, "refusals change nothing");
    // The next voucher itself is fine.
    assert_eq!(f.send("/paid", Some((sig, encode(&next)))).await.status(), StatusCode::OK);

    // Corrective refusals carry the node's state, so the client can resync at once.
    let resp = f.pay("/paid", 3, 3 * PRICE).await;
    let state = required(&resp).accepts[0].extra.channel.clone().expect("state in a corrective 402");
    assert_eq!(
        (state.nonce, state.charged, state.deposit),
        (6, U256::from(2 * PRICE), U256::from(10 * PRICE))
    );
    assert_eq!(state.cumulative_amount, U256::from(2 * PRICE));
    let resp = f.pay("/paid", state.nonce + 1, (state.charged + U256::from(PRICE)).to::<u64>()).await;
    assert_eq!(resp.status(), StatusCode::OK);

    // An unpaid request naming the channel gets no state: a bare id proves nothing.
    let named = f.send("/paid", Some((PAYMENT_CHANNEL, f.id.to_string()))).await;
    assert_eq!(required(&named).accepts[0].extra.channel, None);
    assert_eq!(f.engine.channel(f.id).expect("store").map(|r| r.nonce()), Some(7));
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
    assert_eq!(
        (
            s.extra.as_ref().expect("channel extra").charged,
            s.extra.as_ref().expect("channel extra").total_charged
        ),
        (U256::from(420), U256::from(420))
    );
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
async fn concurrent_requests_on_one_channel_are_all_served() {
    let f = Arc::new(fixture(Arc::new(MemoryStore::new())));
    f.chain.update(f.id, |c| c.deposit = U256::from(100 * PRICE));
    // 32 vouchers signed in order (each covering its price on top of the others'), sent all at
    // once: every one is served, once, and the node ends at the newest.
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
            best = best.max(settlement(&resp).extra.as_ref().expect("channel extra").nonce);
        } else {
            panic!("refused: {:?}", required(&resp).error);
        }
    }
    assert_eq!(ok, 32);
    let state = f.engine.channel(f.id).expect("store").expect("known channel").state();
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
    // The charge was rolled back in memory and store, and the voucher is not marked served
    // (it stays the latest: it is valid), so the same voucher is accepted once the disk works
    // again.
    let state = f.engine.channel(f.id).expect("store").expect("known channel").state();
    assert_eq!((state.nonce, state.charged), (2, U256::from(PRICE)));
    store.fail(false);
    let resp = f.pay("/paid", 2, 2 * PRICE).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(settlement(&resp).extra.as_ref().expect("channel extra").total_charged, U256::from(2 * PRICE));
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
    let revenue = body_json(get(app.clone(), "/admin/revenue", Some(token)).await).await;
    assert_eq!(revenue[0]["token"], terms().asset.to_checksum(None), "EIP-55");
    assert_eq!(
        (revenue[0]["charged"].as_str(), revenue[0]["unsettled"].as_str()),
        (Some("1000"), Some("1000"))
    );
    let channels = body_json(get(app, "/admin/channels", Some(token)).await).await;
    assert_eq!(channels[0]["nonce"], 1);
    assert_eq!(channels[0]["payer"], f.payer.address().to_checksum(None), "EIP-55");
}

/// Every admin endpoint (`/admin/channels`, `/admin/revenue`, `POST /admin/settle`) refuses every
/// credential but `Authorization: Bearer <admin_token>` with 401 and a `WWW-Authenticate:
/// Bearer` challenge, and does not exist without a configured token (404, whatever is sent).
#[tokio::test]
async fn admin_endpoints_refuse_every_wrong_credential() {
    use alloy::providers::{Provider, ProviderBuilder};
    use x402_node::{
        chain::RpcChain,
        gateway::{Upstream, router, settle_router},
        settle::{SettlementPolicy, Settler},
    };

    const TOKEN: &str = "admin-token-0123456789";
    let store = Arc::new(MemoryStore::new());
    let f = fixture(Arc::clone(&store));
    assert_eq!(f.pay("/paid", 1, PRICE).await.status(), StatusCode::OK);
    // The settle endpoint needs a settler, hence an RPC chain: nothing reaches it here (a round
    // with nothing due makes no call), so it may point nowhere.
    let rpc = ProviderBuilder::new().connect_http("http://127.0.0.1:9".parse().expect("url")).erased();
    let engine = Engine::new(terms(), store, RpcChain::new(rpc, terms().contract), Metrics::new());
    let settler =
        Arc::new(Settler::new(engine.clone(), PrivateKeySigner::random(), SettlementPolicy::default()));
    let upstream = Upstream::new("http://127.0.0.1:9", std::time::Duration::from_secs(1));
    let gateway = |token: Option<&str>| {
        router(engine.clone(), Paywall::new(engine.clone()), upstream.clone(), token.map(str::to_owned))
            .merge(settle_router(Arc::clone(&settler), token.map(str::to_owned)))
    };
    let endpoints = [("GET", "/admin/channels"), ("GET", "/admin/revenue"), ("POST", "/admin/settle")];
    let send = |app: Router, method: &str, path: &str, headers: &[(&str, String)]| {
        let mut req = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        app.oneshot(req.body(Body::empty()).expect("request"))
    };

    let basic = STANDARD.encode(format!("admin:{TOKEN}"));
    let auth = |v: String| vec![("authorization", v)];
    // (name, headers, query string)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str);
    let refused: Vec<Case<'_>> = vec![
        ("missing", vec![], ""),
        ("empty header", auth(String::new()), ""),
        ("scheme only", auth("Bearer".into()), ""),
        ("empty token", auth("Bearer ".into()), ""),
        ("wrong token", auth("Bearer wrong-token-0123456789".into()), ""),
        ("token with a suffix", auth(format!("Bearer {TOKEN}x")), ""),
        ("token prefix", auth(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])), ""),
        ("lower-case scheme", auth(format!("bearer {TOKEN}")), ""),
        ("upper-case scheme", auth(format!("BEARER {TOKEN}")), ""),
        ("two spaces", auth(format!("Bearer  {TOKEN}")), ""),
        ("no scheme", auth(TOKEN.into()), ""),
        ("basic", auth(format!("Basic {basic}")), ""),
        ("basic, raw token", auth(format!("Basic {TOKEN}")), ""),
        ("token scheme", auth(format!("Token {TOKEN}")), ""),
        ("another header", vec![("x-admin-token", TOKEN.into())], ""),
        ("query string", vec![], "?token=admin-token-0123456789&access_token=admin-token-0123456789"),
    ];
    let app = gateway(Some(TOKEN));
    for (method, path) in endpoints {
        for (name, headers, query) in &refused {
            let resp =
                send(app.clone(), method, &format!("{path}{query}"), headers).await.expect("infallible");
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {path}: {name}");
            assert_eq!(resp.headers()[http::header::WWW_AUTHENTICATE], "Bearer", "{method} {path}: {name}");
        }
        let resp =
            send(app.clone(), method, path, &auth(format!("Bearer {TOKEN}"))).await.expect("infallible");
        assert_eq!(resp.status(), StatusCode::OK, "{method} {path} with the token");
    }

    // Without a configured token the admin endpoints do not exist, for any credential.
    let closed = gateway(None);
    for (method, path) in endpoints {
        for headers in [vec![], auth(format!("Bearer {TOKEN}")), auth("Bearer ".into())] {
            let resp = send(closed.clone(), method, path, &headers).await.expect("infallible");
            assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{method} {path} without a configured token");
        }
    }
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
    other.params.payee = Address::repeat_byte(0x01);
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
    assert_eq!(
        settlement(&resp).extra.as_ref().expect("channel extra").session,
        None,
        "no session while the window is off"
    );

    f.engine.set_credit_window(5);
    assert_eq!(required(&f.send("/paid", None).await).accepts[0].extra.max_credit_window, Some(5));
    // The voucher pays for this request and four more.
    let resp = f.pay("/paid", 2, 6 * PRICE).await;
    let paid = settlement(&resp).extra.expect("channel extra");
    assert_eq!((paid.charged, paid.total_charged), (U256::from(PRICE), U256::from(2 * PRICE)));
    let grant = paid.session.expect("a session for the prepaid rest");
    assert_eq!(grant.uses, 4);

    let forged = f.session("/paid", B256::repeat_byte(0x01)).await;
    assert_eq!(forged.status(), StatusCode::PAYMENT_REQUIRED);
    let refusal = required(&forged);
    assert_eq!(refusal.error, Some(ErrorCode::SessionInvalid));
    assert_eq!(refusal.accepts[0].extra.channel, None, "a forged token sees no state");
    // A failing handler is not charged and uses nothing.
    assert_eq!(f.session("/broken", grant.token).await.status(), StatusCode::INTERNAL_SERVER_ERROR);

    for left in (0..4u32).rev() {
        let resp = f.session("/paid", grant.token).await;
        assert_eq!(resp.status(), StatusCode::OK, "{left} uses left");
        let paid = settlement(&resp).extra.expect("channel extra");
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
        f.engine.book().get(f.id).expect("store").expect("record").charged
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
    let first = settlement(&f.pay("/paid", 1, 9 * PRICE).await)
        .extra
        .as_ref()
        .expect("channel extra")
        .session
        .expect("session");
    assert_eq!(first.uses, 2);
    // A new voucher revokes the old token and grants a new one.
    let second = settlement(&f.pay("/paid", 2, 5 * PRICE).await)
        .extra
        .as_ref()
        .expect("channel extra")
        .session
        .expect("session");
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
    let third = settlement(&restarted.pay("/paid", 3, 7 * PRICE).await)
        .extra
        .as_ref()
        .expect("channel extra")
        .session
        .expect("session");

    // An exit revokes it at once.
    restarted.chain.update(restarted.id, |c| c.exit_at = 10);
    restarted.follow().await;
    let refused = restarted.session("/paid", third.token).await;
    assert_eq!(required(&refused).error, Some(ErrorCode::SessionInvalid));
}

#[tokio::test]
async fn another_providers_channel_leaves_no_record_and_costs_one_lookup() {
    let f = fixture(Arc::new(MemoryStore::new()));
    let foreign = B256::repeat_byte(0x77);
    let mut other = onchain(f.payer.address(), 10 * PRICE);
    other.params.payee = Address::repeat_byte(0x01);
    f.chain.set(foreign, other);
    let voucher = Voucher { channelId: foreign, nonce: 1, cumulativeAmount: U256::from(PRICE) };
    let signed = f.domain.sign(&f.payer, voucher).expect("signs");
    let header = wire::encode_header(&PaymentPayload::new(&f.requirements, &signed));
    let lookups = f.chain.lookups();
    for _ in 0..3 {
        let resp = f.send("/paid", Some((wire::PAYMENT_SIGNATURE, header.clone()))).await;
        assert_eq!(required(&resp).error, Some(ErrorCode::ChannelMismatch));
    }
    assert_eq!(f.chain.lookups(), lookups + 1, "the chain is asked once, then the refusal is remembered");
    assert_eq!(f.engine.channel(foreign).expect("store"), None, "no record kept");
    assert!(f.engine.channels().await.expect("lists").iter().all(|r| r.id != foreign));
    // The node's own channel is recorded as before.
    assert_eq!(f.pay("/paid", 1, PRICE).await.status(), StatusCode::OK);
    assert!(f.engine.channel(f.id).expect("store").is_some());
}

#[tokio::test]
async fn a_voucher_write_takes_the_session_charges_along() {
    let f = fixture(Arc::new(MemoryStore::new()));
    f.engine.set_credit_window(3);
    let grant = settlement(&f.pay("/paid", 1, 3 * PRICE).await)
        .extra
        .as_ref()
        .expect("channel extra")
        .session
        .expect("session");
    assert_eq!(f.session("/paid", grant.token).await.status(), StatusCode::OK);
    assert_eq!(f.pay("/paid", 2, 5 * PRICE).await.status(), StatusCode::OK);
    assert_eq!(f.engine.flush_charges().await.expect("flushes"), 0, "the voucher's write held the charge");
    let stored = f.engine.book().get(f.id).expect("store").expect("record");
    assert_eq!(stored.charged, U256::from(3 * PRICE));
}
