//! Bad input, fuzzed through the paywall in-process: arbitrary bytes in every payment header,
//! arbitrary JSON behind valid base64, and valid payloads with mutated fields and signatures.
//!
//! For every input the node must not panic, must answer 400 or 402 with a well-formed refusal
//! (a JSON body with an x402 `error` code, a `PAYMENT-REQUIRED` header that decodes to the
//! same code, 400 exactly for `invalid_payload`), and must store nothing: the store is
//! byte-for-byte unchanged. A mutated payload is served exactly when it still carries the
//! valid voucher it was made from on the node's terms (e.g. only an echoed field the node
//! ignores changed), and then the store holds exactly that voucher.

use std::sync::{Arc, LazyLock};

use alloy::{
    primitives::{B256, Bytes, U256},
    signers::local::PrivateKeySigner,
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use http::StatusCode;
use proptest::prelude::*;
use serde_json::{Value, json};
use x402_node::book::CHANNELS;
use x402_protocol::{
    SignedVoucher,
    wire::{self, ErrorCode, PaymentPayload},
};
use x402_store::{KvStore, MemoryStore};

use crate::fixture::{CHAIN_ID, Fixture, PRICE, body_json, fixture_of};

/// Cases per property (the CI budget: each runs in well under a second per thousand).
const CASES: u32 = 2_048;

/// The payer of every fixture, so that the voucher that sets the channel up is signed once.
static PAYER: LazyLock<PrivateKeySigner> = LazyLock::new(PrivateKeySigner::random);

thread_local! {
    static RUNTIME: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    RUNTIME.with(|rt| rt.block_on(f))
}

/// A fixture whose channel is loaded, holds a voucher (nonce 5, ceiling 5 prices, 1 charged)
/// and has a live session (credit window 3), so that every rule has state to be checked against.
async fn loaded() -> Fixture<MemoryStore> {
    let f = fixture_of(Arc::new(MemoryStore::new()), PAYER.clone());
    f.engine.set_credit_window(3);
    assert_eq!(f.pay("/paid", 5, 5 * PRICE).await.status(), StatusCode::OK);
    f
}

fn snapshot(f: &Fixture<MemoryStore>) -> Vec<(Vec<u8>, Vec<u8>)> {
    f.engine.store().list(CHANNELS).expect("lists")
}

/// Whether `value` still carries exactly `signed` on this node's terms, as the wire format
/// reads it: then the node must serve it; otherwise it must refuse it.
fn carries(value: &[u8], signed: &SignedVoucher) -> bool {
    let Ok(p) = wire::decode_header::<PaymentPayload>(value) else { return false };
    matches!(p.x402_version, 1 | 2)
        && p.scheme() == Some(wire::SCHEME)
        && p.network() == Some(format!("eip155:{CHAIN_ID}").as_str())
        && SignedVoucher::from(p.payload) == *signed
}

/// Sends `value` in header `name` and checks the answer. `signed` is the valid voucher the
/// value was made from, if any: the node serves the value exactly when it still carries it.
async fn check(f: &Fixture<MemoryStore>, name: &str, value: &[u8], signed: Option<&SignedVoucher>) {
    let Ok(header) = http::HeaderValue::from_bytes(value) else { return };
    let valid = signed.filter(|s| name != wire::PAYMENT_SESSION && carries(value, s));
    let before = snapshot(f);
    let req =
        http::Request::get("/paid").header(name, header).body(axum::body::Body::empty()).expect("request");
    let resp = tower::ServiceExt::oneshot(f.app.clone(), req).await.expect("infallible");
    let status = resp.status();
    if let Some(v) = valid {
        assert_eq!(status, StatusCode::OK, "{name}: the valid voucher {v:?} was refused");
        let record = f.engine.channel(f.id).expect("store").expect("record");
        let latest = record.latest.expect("a voucher");
        assert_eq!(
            (latest.nonce, latest.cumulative_amount, &latest.signature),
            (v.voucher.nonce, v.voucher.cumulativeAmount, &v.signature),
            "only the voucher sent is stored"
        );
        assert!(resp.headers().contains_key(wire::PAYMENT_RESPONSE));
        return;
    }
    assert!(
        status == StatusCode::BAD_REQUEST || status == StatusCode::PAYMENT_REQUIRED,
        "{name}: status {status}"
    );
    assert_eq!(snapshot(f), before, "{name}: a refused payment changed the store");
    let header = resp.headers().get(wire::PAYMENT_REQUIRED).expect("PAYMENT-REQUIRED");
    let required: wire::PaymentRequired =
        wire::decode_header(header.as_bytes()).expect("PAYMENT-REQUIRED decodes");
    let code = required.error.expect("an error code");
    assert_ne!(code, ErrorCode::PaymentRequired, "{name}: a payment was presented");
    assert_eq!(
        status == StatusCode::BAD_REQUEST,
        code == ErrorCode::InvalidPayload,
        "{name}: {code} as {status}"
    );
    assert_eq!(required.accepts.len(), 1);
    let body = body_json(resp).await;
    assert_eq!(body["error"], code.as_str(), "{name}: the body carries the header's code");
    assert_eq!(serde_json::from_value::<wire::PaymentRequired>(body).ok(), Some(required), "body = header");
}

fn header_name() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just(wire::PAYMENT_SIGNATURE), Just(wire::X_PAYMENT), Just(wire::PAYMENT_SESSION)]
}

/// Bytes a header value may hold: visible ASCII, space, tab and obs-text.
fn header_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop_oneof![8 => 0x20u8..0x7f, 1 => Just(b'\t'), 1 => 0x80u8..=0xff], 0..max)
}

/// Any JSON value, a few levels deep, with the field names the node reads among the keys.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|x| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)),
        "[ -~]{0,40}".prop_map(Value::from),
        "0x[0-9a-f]{0,140}".prop_map(Value::from),
        "[0-9]{1,90}".prop_map(Value::from),
    ];
    let key = prop_oneof![
        Just("x402Version".to_owned()),
        Just("accepted".to_owned()),
        Just("scheme".to_owned()),
        Just("network".to_owned()),
        Just("payload".to_owned()),
        Just("channelId".to_owned()),
        Just("nonce".to_owned()),
        Just("cumulativeAmount".to_owned()),
        Just("signature".to_owned()),
        "[a-zA-Z]{1,12}",
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A header value: raw bytes, base64 of raw bytes, base64 of any JSON, or a session-shaped
/// string.
fn any_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => header_bytes(300),
        2 => prop::collection::vec(any::<u8>(), 0..300).prop_map(|b| STANDARD.encode(b).into_bytes()),
        3 => any_json().prop_map(|v| STANDARD.encode(v.to_string()).into_bytes()),
        1 => ("0x[0-9a-fA-F]{60,66}", ":?", "0x[0-9a-fA-F]{60,66}")
            .prop_map(|(a, sep, b)| format!("{a}{sep}{b}").into_bytes()),
        // Well-formed sessions, on the fixture's channel (which has a live session) or another.
        2 => (prop_oneof![Just(format!("{:x}", B256::repeat_byte(0x11))), "0x[0-9a-f]{64}"], "0x[0-9a-f]{64}")
            .prop_map(|(channel, token)| format!("{channel}:{token}").into_bytes()),
    ]
}

/// A well-typed value for one of the fields the node reads.
fn typed_field() -> impl Strategy<Value = (&'static [&'static str], Value)> {
    prop_oneof![
        any::<u64>().prop_map(|n| (&["payload", "nonce"][..], json!(n))),
        prop_oneof![any::<u128>().prop_map(|n| n.to_string()), (0u64..20_000).prop_map(|n| n.to_string())]
            .prop_map(|a| (&["payload", "cumulativeAmount"][..], json!(a))),
        any::<[u8; 32]>().prop_map(|b| (&["payload", "channelId"][..], json!(B256::from(b)))),
        prop::collection::vec(any::<u8>(), 0..70)
            .prop_map(|b| (&["payload", "signature"][..], json!(Bytes::from(b)))),
        prop_oneof![any::<u64>().prop_map(|n| format!("eip155:{n}")), "[ -~]{0,20}"]
            .prop_map(|n| (&["accepted", "network"][..], json!(n))),
        "[ -~]{0,12}".prop_map(|n| (&["accepted", "scheme"][..], json!(n))),
        (0u32..5).prop_map(|v| (&["x402Version"][..], json!(v))),
    ]
}

/// One change to a valid payload's JSON.
#[derive(Clone, Debug)]
enum Mutation {
    /// Sets a field (by path) to a value.
    Set(&'static [&'static str], Value),
    /// Removes a field.
    Remove(&'static [&'static str]),
    /// Flips bits of one byte of the signature.
    FlipSignature(usize, u8),
    /// Cuts the signature (or pads it with zeros) to a length.
    ResizeSignature(usize),
    /// Replaces `v`.
    SetV(u8),
    /// Replaces `s` by `n - s` (the malleable twin) and flips `v`.
    HighS,
    /// Changes the nonce, the amount or the channel id by an offset (a different voucher
    /// under the same signature).
    Nonce(i64),
    Amount(i64),
    Channel(u8),
    /// Truncates the JSON text or the base64 text.
    TruncateJson(usize),
    TruncateBase64(usize),
}

const PATHS: &[&[&str]] = &[
    &["x402Version"],
    &["accepted"],
    &["accepted", "scheme"],
    &["accepted", "network"],
    &["accepted", "asset"],
    &["scheme"],
    &["network"],
    &["payload"],
    &["payload", "channelId"],
    &["payload", "nonce"],
    &["payload", "cumulativeAmount"],
    &["payload", "signature"],
    &["payload", "extra"],
];

fn mutation() -> impl Strategy<Value = Mutation> {
    let path = prop::sample::select(PATHS);
    prop_oneof![
        4 => typed_field().prop_map(|(p, v)| Mutation::Set(p, v)),
        1 => (path.clone(), any_json()).prop_map(|(p, v)| Mutation::Set(p, v)),
        1 => path.prop_map(Mutation::Remove),
        2 => (0usize..65, 1u8..=255).prop_map(|(i, bits)| Mutation::FlipSignature(i, bits)),
        1 => (0usize..100).prop_map(Mutation::ResizeSignature),
        1 => any::<u8>().prop_map(Mutation::SetV),
        1 => Just(Mutation::HighS),
        1 => (-6i64..6).prop_filter("a change", |d| *d != 0).prop_map(Mutation::Nonce),
        1 => prop_oneof![(-3000i64..9000), Just(i64::MAX)].prop_filter("a change", |d| *d != 0).prop_map(Mutation::Amount),
        1 => (1u8..=255).prop_map(Mutation::Channel),
        1 => (0usize..400).prop_map(Mutation::TruncateJson),
        1 => (1usize..400).prop_map(Mutation::TruncateBase64),
    ]
}

fn set_path(value: &mut Value, path: &[&str], to: Option<Value>) {
    let (last, parents) = path.split_last().expect("a path");
    let mut at = value;
    for p in parents {
        match at.get_mut(*p) {
            Some(next) => at = next,
            None => return,
        }
    }
    if let Some(object) = at.as_object_mut() {
        match to {
            Some(v) => {
                object.insert((*last).to_owned(), v);
            }
            None => {
                object.remove(*last);
            }
        }
    }
}

/// secp256k1's group order.
const N: U256 =
    alloy::primitives::uint!(0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141_U256);

/// Applies `mutations` to the payload of `signed`; returns the header value.
fn mutate(f: &Fixture<MemoryStore>, signed: &SignedVoucher, mutations: &[Mutation]) -> Vec<u8> {
    let mut voucher = signed.voucher.clone();
    let mut sig = signed.signature.to_vec();
    let mut json_cut = None;
    let mut b64_cut = None;
    let mut sets = Vec::new();
    for m in mutations {
        match m {
            Mutation::FlipSignature(i, bits) => {
                if let Some(b) = sig.get_mut(*i) {
                    *b ^= bits;
                }
            }
            Mutation::ResizeSignature(len) => sig.resize(*len, 0),
            Mutation::SetV(v) => {
                if let Some(b) = sig.get_mut(64) {
                    *b = *v;
                }
            }
            Mutation::HighS => {
                if sig.len() == 65 {
                    let s = U256::from_be_slice(&sig[32..64]);
                    sig[32..64].copy_from_slice(&N.wrapping_sub(s).to_be_bytes::<32>());
                    sig[64] = sig[64].wrapping_sub(27) ^ 1;
                    sig[64] = sig[64].wrapping_add(27);
                }
            }
            Mutation::Nonce(d) => voucher.nonce = voucher.nonce.saturating_add_signed(*d),
            Mutation::Amount(d) => {
                let delta = U256::from(d.unsigned_abs());
                voucher.cumulativeAmount = if *d < 0 {
                    voucher.cumulativeAmount.saturating_sub(delta)
                } else {
                    voucher.cumulativeAmount.saturating_add(delta)
                };
            }
            Mutation::Channel(b) => voucher.channelId.0[usize::from(*b) % 32] ^= b,
            Mutation::TruncateJson(n) => json_cut = Some(*n),
            Mutation::TruncateBase64(n) => b64_cut = Some(*n),
            Mutation::Set(..) | Mutation::Remove(..) => sets.push(m.clone()),
        }
    }
    let changed = SignedVoucher { voucher, signature: Bytes::from(sig) };
    let mut value = serde_json::to_value(PaymentPayload::new(&f.requirements, &changed)).expect("json");
    for m in sets {
        match m {
            Mutation::Set(path, v) => set_path(&mut value, path, Some(v)),
            Mutation::Remove(path) => set_path(&mut value, path, None),
            _ => {}
        }
    }
    let mut text = value.to_string();
    if let Some(n) = json_cut {
        text.truncate(n.min(text.len()));
    }
    let mut b64 = STANDARD.encode(text);
    if let Some(n) = b64_cut {
        b64.truncate(b64.len().saturating_sub(n));
    }
    b64.into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    /// Arbitrary bytes, base64 and JSON in every payment header.
    #[test]
    fn arbitrary_payment_headers_are_refused_cleanly(name in header_name(), value in any_value()) {
        block_on(async {
            let f = loaded().await;
            check(&f, name, &value, None).await;
        });
    }

    /// Valid-looking payloads (the next voucher the node would accept) with mutated fields,
    /// signatures and encodings.
    #[test]
    fn mutated_payloads_are_refused_cleanly(
        nonce in 6u64..9,
        extra in 0u64..4,
        mutations in prop::collection::vec(mutation(), 1..4),
        x_payment in any::<bool>(),
    ) {
        block_on(async {
            let f = loaded().await;
            let signed = f.sign(nonce, 2 * PRICE + extra * PRICE);
            let value = mutate(&f, &signed, &mutations);
            let name = if x_payment { wire::X_PAYMENT } else { wire::PAYMENT_SIGNATURE };
            check(&f, name, &value, Some(&signed)).await;
        });
    }
}

/// The oracle itself: the unmutated voucher is served and stored, and the checks above would
/// notice a store that changed.
#[test]
fn the_oracle_accepts_the_valid_voucher() {
    block_on(async {
        let f = loaded().await;
        let signed = f.sign(6, 2 * PRICE);
        let value = mutate(&f, &signed, &[Mutation::Set(&["accepted", "asset"], json!(null))]);
        check(&f, wire::PAYMENT_SIGNATURE, &value, Some(&signed)).await;
        assert_eq!(f.engine.channel(f.id).expect("store").expect("record").nonce(), 6);
        // A mutated one is refused, and stores nothing.
        let value = mutate(&f, &f.sign(7, 3 * PRICE), &[Mutation::Nonce(1)]);
        check(&f, wire::PAYMENT_SIGNATURE, &value, Some(&f.sign(7, 3 * PRICE))).await;
        assert_eq!(f.engine.channel(f.id).expect("store").expect("record").nonce(), 6);
    });
}
