//! The gateway of issue 14 end to end: the `x402-node` binary on anvil, configured by its
//! `node.toml` (route patterns and methods, an `upto` route, CORS, `min_deposit`), in front of
//! the lenient upstream. Path tricks are charged or refused, the node's paths stay the node's,
//! preflights are free, the upstream's reported cost is charged (and a bad report logged),
//! small channels are refused, and a bare channel id shows nothing.

use alloy::primitives::U256;
use x402_e2e::harness::{ADMIN, Env, Gateway, PRICE};
use x402_node::config::RouteConfig;
use x402_protocol::{
    Network,
    wire::{self, ErrorCode, PaymentPayload, PaymentRequired, Pricing, SettlementResponse},
};

use crate::lenient::{self, Raw, SECRET, send};

fn route(path: &str, methods: &[&str], price: u64, pricing: Pricing) -> RouteConfig {
    RouteConfig {
        path: path.into(),
        methods: methods.iter().map(|m| (*m).to_owned()).collect(),
        price: U256::from(price),
        pricing,
        description: None,
        mime_type: None,
        replay_body: false,
        schemes: None,
    }
}

fn required(resp: &Raw) -> PaymentRequired {
    let h = resp.header(wire::PAYMENT_REQUIRED).unwrap_or_else(|| panic!("PAYMENT-REQUIRED: {resp:?}"));
    wire::decode_header(h.as_bytes()).expect("decodes")
}

fn settled(resp: &Raw) -> SettlementResponse {
    let h = resp.header(wire::PAYMENT_RESPONSE).unwrap_or_else(|| panic!("PAYMENT-RESPONSE: {resp:?}"));
    wire::decode_header(h.as_bytes()).expect("decodes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_gateway_charges_every_spelling_and_guards_its_paths() {
    let env = Env::new().await;
    let payer = env.fresh_payer(1_000 * PRICE).await;
    let provider = env.provider_key.address();
    let id = payer.open(provider, 100 * PRICE, 1).await;
    let small = payer.open(provider, 5 * PRICE, 2).await;

    let upstream = lenient::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = env.gateway_config(upstream.addr, &dir.path().join("data"));
    config.payment.min_deposit = U256::from(10 * PRICE);
    config.cors.allowed_origins = vec!["https://app.example".into()];
    config.routes = vec![
        route("/weather", &["GET"], PRICE, Pricing::Exact),
        route("/llm", &["POST"], 10 * PRICE, Pricing::Upto),
        route("/items/{id}", &["GET"], 2 * PRICE, Pricing::Exact),
        route("/items/special", &["GET"], 3 * PRICE, Pricing::Exact),
    ];
    let gw = Gateway::spawn(&x402_e2e::node_binary(), config, dir.path()).await;
    let addr = gw.config.listen;

    // An expected status plus this: the request is answered by the upstream.
    const PROXIED: u16 = 1000;
    // Unpaid: every spelling of a priced path is charged or refused; the node's paths are its
    // own; a preflight is free.
    let bearer = format!("Bearer {ADMIN}");
    for (method, target, headers, status) in [
        ("GET", "/weather", vec![], 402),
        ("GET", "/%77eather", vec![], 402),
        ("GET", "//Weather/", vec![], 402),
        ("GET", "/x/../weather;a=b", vec![], 402),
        ("HEAD", "/weather", vec![], 402),
        ("GET", "/%2577eather", vec![], 400),
        ("GET", "/weather%2F", vec![], 400),
        ("GET", "/x/%2e%2e/weather", vec![], 400),
        ("GET", "http://evil.example/weather", vec![], 400),
        ("GET", "/free", vec![("x-original-url", "/weather")], 200 + PROXIED),
        ("GET", "/items/special", vec![], 402),
        ("GET", "/items/7", vec![], 402),
        ("POST", "/items/7", vec![], 404 + PROXIED),
        ("GET", "/admin/channel", vec![("authorization", bearer.as_str())], 404),
        ("POST", "/x402/open", vec![], 501),
        ("POST", "/admin/settle", vec![("authorization", bearer.as_str())], 501),
        (
            "OPTIONS",
            "/weather",
            vec![("origin", "https://app.example"), ("access-control-request-method", "GET")],
            200,
        ),
    ] {
        let before = upstream.hits();
        let resp = send(addr, method, target, &headers).await;
        assert_eq!(resp.status, status % PROXIED, "{method} {target}: {resp:?}");
        assert!(!resp.body.contains(SECRET), "{method} {target} served free");
        let proxied = status >= PROXIED;
        assert_eq!(upstream.hits(), before + usize::from(proxied), "{method} {target}: proxied {proxied}");
    }
    let prices = [("/items/special", 3 * PRICE), ("/items/7", 2 * PRICE)];
    for (target, price) in prices {
        assert_eq!(required(&send(addr, "GET", target, &[]).await).accepts[0].amount, U256::from(price));
    }
    let cors = send(addr, "GET", "/weather", &[("origin", "https://app.example")]).await;
    assert_eq!(cors.header("access-control-allow-origin"), Some("https://app.example"));
    assert!(cors.header("access-control-expose-headers").is_some_and(|h| h.contains("payment-response")));

    // Paid.
    let terms = required(&send(addr, "GET", "/weather", &[]).await).accepts.remove(0);
    assert_eq!(terms.network, Network::new(env.anvil.chain_id()));
    let header = |channel, nonce, amount| {
        wire::encode_header(&PaymentPayload::new(&terms, &payer.sign(channel, nonce, amount)))
    };
    let resp = send(addr, "GET", "/%77EATHER/", &[(wire::PAYMENT_SIGNATURE, &header(id, 1, PRICE))]).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(resp.body.contains(SECRET));
    assert_eq!(upstream.seen.lock().last().map(String::as_str), Some("/wEATHER/"));
    // The upstream reports the cost of an upto route.
    let resp =
        send(addr, "POST", "/llm?cost=250", &[(wire::PAYMENT_SIGNATURE, &header(id, 2, 11 * PRICE))]).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(resp.header("x402-cost").is_none());
    let s = settled(&resp);
    assert_eq!(
        (
            s.extra.as_ref().expect("channel extra").charged,
            s.extra.as_ref().expect("channel extra").total_charged
        ),
        (U256::from(250), U256::from(PRICE + 250))
    );
    // An invalid report is charged the maximum, and logged.
    let resp = send(
        addr,
        "POST",
        "/llm?cost=lots",
        &[(wire::PAYMENT_SIGNATURE, &header(id, 3, PRICE + 250 + 10 * PRICE))],
    )
    .await;
    assert_eq!(settled(&resp).extra.as_ref().expect("channel extra").charged, U256::from(10 * PRICE));

    // A channel below min_deposit is refused; a bare id shows no state.
    let resp = send(addr, "GET", "/weather", &[(wire::PAYMENT_SIGNATURE, &header(small, 1, PRICE))]).await;
    assert_eq!(required(&resp).error, Some(ErrorCode::ChannelMismatch), "{resp:?}");
    let bare =
        send(addr, "GET", "/weather", &[(x402_node::middleware::PAYMENT_CHANNEL, &id.to_string())]).await;
    assert_eq!(required(&bare).accepts[0].extra.channel, None);

    gw.stop().await;
    let log = std::fs::read_to_string(dir.path().join("node.log")).expect("the node's log");
    assert!(log.contains("invalid X402-Cost") && log.contains("/llm"), "the bad report is logged:\n{log}");
}
