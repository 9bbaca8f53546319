//! The gateway's app (the code `x402-node run` serves) on a real socket, in front of the lenient
//! upstream of [`crate::lenient`], on an in-memory chain: the canonical path against every
//! spelling trick, route patterns and methods, the upstream-reported cost of `upto` routes,
//! CORS, the node's reserved paths, stripped headers, `min_deposit`, and what a request must
//! prove to see a channel's state.

use std::{net::SocketAddr, sync::Arc};

use alloy::{
    primitives::{B256, U256},
    signers::local::PrivateKeySigner,
};
use x402_node::{
    Engine, Price,
    config::CorsConfig,
    gateway::{CloseService, Upstream, close_router, harden, router},
    metrics::Metrics,
    middleware::{PAYMENT_CHANNEL, Paywall},
    routes::Routes,
    test_utils::{MemoryChain, open_channel, terms},
};
use x402_protocol::{
    ChannelDomain, Voucher,
    wire::{self, ErrorCode, PaymentPayload, PaymentRequired, PaymentRequirements, SettlementResponse},
};
use x402_store::MemoryStore;

use crate::lenient::{self, Lenient, Raw, SECRET, send};

const CHAIN_ID: u64 = 31337;
const PRICE: u64 = 1_000;
const ADMIN: &str = "admin-token-0123456789";

struct Gw {
    addr: SocketAddr,
    upstream: Lenient,
    payer: PrivateKeySigner,
    id: B256,
    /// A channel of the same payer holding less than the node's `min_deposit`.
    small: B256,
    domain: ChannelDomain,
    requirements: PaymentRequirements,
    nonce: u64,
    charged: u64,
}

/// The routes every test gateway prices.
fn routes() -> Routes {
    let mut r = Routes::new();
    r.add("/weather", &["GET"], Price::exact(U256::from(PRICE))).expect("route");
    r.add("/llm", &["POST"], Price::upto(U256::from(10 * PRICE))).expect("route");
    r.add("/items/{id}", &["GET"], Price::exact(U256::from(2 * PRICE))).expect("route");
    r.add("/items/special", &["get"], Price::exact(U256::from(3 * PRICE))).expect("route");
    r
}

async fn gateway(cors: CorsConfig) -> Gw {
    gateway_to(lenient::start().await, cors).await
}

/// A gateway in front of `upstream`.
async fn gateway_to(upstream: Lenient, cors: CorsConfig) -> Gw {
    let payer = PrivateKeySigner::random();
    let mut terms = terms(CHAIN_ID);
    terms.min_deposit = U256::from(10 * PRICE);
    let chain = MemoryChain::default();
    let (id, small) = (B256::repeat_byte(0x11), B256::repeat_byte(0x22));
    chain.set(id, open_channel(&terms, payer.address(), U256::from(1000 * PRICE)));
    chain.set(small, open_channel(&terms, payer.address(), U256::from(10 * PRICE - 1)));
    let engine = Engine::new(terms.clone(), Arc::new(MemoryStore::new()), chain, Metrics::new());
    let requirements = engine.requirements(&Price::exact(U256::from(PRICE)), None);
    let proxy = Upstream::new(format!("http://{}", upstream.addr), std::time::Duration::from_secs(5));
    let close = CloseService { key: None, ttl: 600, on_close: None };
    let app =
        router(engine.clone(), Paywall::new(engine.clone()).with_routes(routes()), proxy, Some(ADMIN.into()))
            .merge(close_router(engine, close));
    let app = harden(app, &cors);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let domain = ChannelDomain::new(CHAIN_ID, terms.contract);
    Gw { addr, upstream, payer, id, small, domain, requirements, nonce: 0, charged: 0 }
}

impl Gw {
    fn header(&self, key: &PrivateKeySigner, id: B256, nonce: u64, amount: u64) -> String {
        let v = self
            .domain
            .sign(key, Voucher { channelId: id, nonce, cumulativeAmount: U256::from(amount) })
            .expect("signs");
        wire::encode_header(&PaymentPayload::new(&self.requirements, &v))
    }

    /// Sends `method target` paid with the channel's next voucher, covering `max` more.
    async fn pay(&mut self, method: &str, target: &str, max: u64) -> Raw {
        let header = self.header(&self.payer.clone(), self.id, self.nonce + 1, self.charged + max);
        let resp = send(self.addr, method, target, &[(wire::PAYMENT_SIGNATURE, &header)]).await;
        if let Some(s) = resp.header(wire::PAYMENT_RESPONSE) {
            let s: SettlementResponse = wire::decode_header(s.as_bytes()).expect("PAYMENT-RESPONSE");
            self.nonce = s.extra.as_ref().expect("channel extra").nonce;
            self.charged = s.extra.as_ref().expect("channel extra").total_charged.to::<u64>();
        }
        resp
    }
}

fn required(resp: &Raw) -> PaymentRequired {
    let h =
        resp.header(wire::PAYMENT_REQUIRED).unwrap_or_else(|| panic!("a PAYMENT-REQUIRED header: {resp:?}"));
    wire::decode_header(h.as_bytes()).expect("decodes")
}

fn settled(resp: &Raw) -> SettlementResponse {
    let h =
        resp.header(wire::PAYMENT_RESPONSE).unwrap_or_else(|| panic!("a PAYMENT-RESPONSE header: {resp:?}"));
    wire::decode_header(h.as_bytes()).expect("decodes")
}

/// Every spelling of the priced `GET /weather` is charged (402) or refused (400); none is
/// served free by an upstream that reads paths as loosely as any real server.
#[tokio::test]
async fn no_spelling_of_a_priced_path_is_served_free() {
    let gw = gateway(CorsConfig::default()).await;
    let own = gw.addr.to_string();
    let absolute = format!("http://{own}/weather");
    // (method, target, extra headers, expected status)
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, u16);
    let cases: Vec<Case<'_>> = vec![
        ("GET", "/weather", vec![], 402),
        ("HEAD", "/weather", vec![], 402),
        ("get", "/weather", vec![], 402),
        ("GET", "/weather?x=1", vec![], 402),
        // Percent-encoding of unreserved characters, case.
        ("GET", "/%77eather", vec![], 402),
        ("GET", "/%57EATHER", vec![], 402),
        ("GET", "/WEATHER", vec![], 402),
        ("GET", "/Weather", vec![], 402),
        // Double slashes, trailing slashes, dot segments.
        ("GET", "//weather", vec![], 402),
        ("GET", "///weather//", vec![], 402),
        ("GET", "/weather/", vec![], 402),
        ("GET", "/./weather", vec![], 402),
        ("GET", "/free/../weather", vec![], 402),
        ("GET", "/../../weather", vec![], 402),
        ("GET", "/weather/.", vec![], 402),
        // `;` parameters.
        ("GET", "/weather;jsessionid=1", vec![], 402),
        ("GET", "/weather;/", vec![], 402),
        // Absolute-form targets; Host tricks.
        ("GET", absolute.as_str(), vec![], 402),
        ("GET", "http://evil.example/weather", vec![], 400),
        ("GET", "/weather", vec![("host", "evil.example")], 402),
        // Double encoding, encoded separators, encoded dot segments: refused.
        ("GET", "/%2577eather", vec![], 400),
        ("GET", "/%252577eather", vec![], 400),
        ("GET", "/weather%2F", vec![], 400),
        ("GET", "/free%2F..%2Fweather", vec![], 400),
        ("GET", "/free%5C..%5Cweather", vec![], 400),
        ("GET", "/%2e%2e/weather", vec![], 400),
        ("GET", "/free/%2E%2E/weather", vec![], 400),
        ("GET", "/free/.%2e/weather", vec![], 400),
        ("GET", "/free/..;/weather", vec![], 400),
        ("GET", "/free\\..\\weather", vec![], 400),
        ("GET", "/weather%00", vec![], 400),
        ("GET", "/weather%", vec![], 400),
        ("GET", "/weather%zz", vec![], 400),
        ("GET", "/weather%C3", vec![], 400),
        // Headers some servers let override the path or the method are not forwarded.
        ("GET", "/free", vec![("x-original-url", "/weather")], 200),
        ("GET", "/free", vec![("x-rewrite-url", "/weather")], 200),
        // A redirect goes back to the client, which then asks for the priced path.
        ("GET", "/moved", vec![], 302),
        ("POST", "/weather", vec![("x-http-method-override", "GET")], 404),
    ];
    for (method, target, headers, expected) in cases {
        let before = gw.upstream.hits();
        let resp = send(gw.addr, method, target, &headers).await;
        let case = format!("{method} {target} {headers:?}");
        assert!(!resp.body.contains(SECRET), "{case}: served free: {resp:?}");
        assert_eq!(resp.status, expected, "{case}: {resp:?}");
        match expected {
            402 => assert_eq!(required(&resp).accepts[0].amount, U256::from(PRICE), "{case}"),
            400 => assert!(resp.body.contains("invalid_path") || resp.header("server").is_none(), "{case}"),
            _ => {}
        }
        if matches!(expected, 400 | 402) {
            assert_eq!(gw.upstream.hits(), before, "{case}: reached the upstream");
        }
    }
}

/// A paid request on any spelling is charged as the route, and the upstream receives exactly
/// the canonical path (and the original query), without the payment headers or the client's
/// Host.
#[tokio::test]
async fn the_canonical_path_is_charged_and_forwarded() {
    let mut gw = gateway(CorsConfig::default()).await;
    for target in ["/%77eather", "//WEATHER/", "/free/../weather;x"] {
        let resp = gw.pay("GET", target, PRICE).await;
        assert_eq!(resp.status, 200, "{target}: {resp:?}");
        assert!(resp.body.contains(SECRET));
        assert_eq!(
            settled(&resp).extra.as_ref().expect("channel extra").charged,
            U256::from(PRICE),
            "{target}"
        );
    }
    let seen = gw.upstream.seen.lock().clone();
    assert_eq!(seen, ["/weather", "/WEATHER/", "/weather;x"]);

    let session = wire::encode_session(gw.id, B256::repeat_byte(7));
    let id = gw.id.to_string();
    let signature = gw.header(&gw.payer.clone(), gw.id, 99, 99 * PRICE);
    let resp = send(
        gw.addr,
        "GET",
        "/free/..//%65ch%6F?q=%2F..&b",
        &[
            (wire::PAYMENT_SIGNATURE, &signature),
            (wire::X_PAYMENT, &signature),
            (wire::PAYMENT_SESSION, &session),
            (PAYMENT_CHANNEL, &id),
            ("x-http-method-override", "DELETE"),
            ("host", "evil.example"),
            ("x-custom", "kept"),
        ],
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let body = resp.body.lines().find(|l| l.starts_with('{')).unwrap_or(&resp.body);
    let echo: serde_json::Value = serde_json::from_str(body).expect("json");
    assert_eq!(echo["target"], "/echo?q=%2F..&b");
    assert_eq!(echo["method"], "GET");
    let headers = echo["headers"].as_object().expect("headers");
    for name in [
        wire::PAYMENT_SIGNATURE,
        wire::X_PAYMENT,
        wire::PAYMENT_SESSION,
        PAYMENT_CHANNEL,
        "x-http-method-override",
    ] {
        assert!(!headers.contains_key(name), "{name} reached the upstream");
    }
    assert_eq!(headers["host"], gw.upstream.addr.to_string());
    assert_eq!(headers["x-custom"], "kept");
}

/// Patterns and methods: the most specific route wins, and unpriced methods pass through.
#[tokio::test]
async fn route_patterns_and_methods() {
    let gw = gateway(CorsConfig::default()).await;
    for (method, target, price) in [
        ("GET", "/items/42", Some(2 * PRICE)),
        ("HEAD", "/items/42", Some(2 * PRICE)),
        ("GET", "/items/special", Some(3 * PRICE)),
        ("GET", "/Items/Special/", Some(3 * PRICE)),
        ("POST", "/llm", Some(10 * PRICE)),
        ("GET", "/llm", None),
        ("POST", "/items/42", None),
        ("GET", "/items/42/more", None),
        ("GET", "/items", None),
    ] {
        let resp = send(gw.addr, method, target, &[]).await;
        match price {
            Some(p) => {
                assert_eq!(resp.status, 402, "{method} {target}");
                assert_eq!(required(&resp).accepts[0].amount, U256::from(p), "{method} {target}");
            }
            None => {
                assert_ne!(resp.status, 402, "{method} {target} passes through: {resp:?}");
                assert!(resp.header(wire::PAYMENT_REQUIRED).is_none(), "{method} {target}");
            }
        }
    }
}

/// An `upto` route charges what the upstream reports in `X402-Cost`, capped at the route's
/// maximum; a missing or invalid report is charged the maximum. The header never reaches the
/// client.
#[tokio::test]
async fn upto_routes_charge_the_reported_cost() {
    let mut gw = gateway(CorsConfig::default()).await;
    let max = 10 * PRICE;
    for (target, charged) in [
        ("/llm?cost=250", 250),
        ("/llm?cost=0", 0),
        ("/llm?cost=%20%20777", 777),
        ("/llm?cost=10000", max),
        ("/llm?cost=10001", max),
        ("/llm?cost=1000000000000000000000000000000000", max),
        ("/llm", max),
        ("/llm?cost=abc", max),
        ("/llm?cost=-5", max),
        ("/llm?cost=1.5", max),
        ("/llm?cost=0x10", max),
        ("/llm?cost=12&slow=300", 12),
    ] {
        let before = gw.charged;
        let resp = gw.pay("POST", target, max).await;
        assert_eq!(resp.status, 200, "{target}: {resp:?}");
        assert!(resp.header(x402_node::gateway::COST_HEADER).is_none(), "{target}: the cost header leaked");
        let s = settled(&resp);
        assert_eq!(s.extra.as_ref().expect("channel extra").charged, U256::from(charged), "{target}");
        assert_eq!(gw.charged, before + charged, "{target}");
    }
    // On an exact route the header is ignored (and stripped).
    let resp = gw.pay("GET", "/weather", PRICE).await;
    assert_eq!(settled(&resp).extra.as_ref().expect("channel extra").charged, U256::from(PRICE));
}

/// The node's own paths are answered by the node, whatever the spelling; nothing under them
/// reaches the upstream, not even with the admin's token.
#[tokio::test]
async fn reserved_paths_never_reach_the_upstream() {
    let gw = gateway(CorsConfig::default()).await;
    let bearer = format!("Bearer {ADMIN}");
    let auth = vec![("authorization", bearer.as_str())];
    for (method, target, headers, status, error) in [
        ("GET", "/admin/channel", auth.clone(), 404, Some("not_found")),
        ("GET", "/admin", auth.clone(), 404, Some("not_found")),
        ("GET", "/ADMIN/channels", auth.clone(), 404, Some("not_found")),
        ("GET", "/admin/channels/", auth.clone(), 404, Some("not_found")),
        ("GET", "//admin//channels", auth.clone(), 200, None),
        ("GET", "/admin/./channels", auth.clone(), 200, None),
        ("POST", "/x402/open", vec![], 501, Some("not_enabled")),
        ("POST", "/X402/Open/", vec![], 501, Some("not_enabled")),
        ("POST", "/admin/settle", auth.clone(), 501, Some("not_enabled")),
        ("GET", "/x402", vec![], 404, Some("not_found")),
        ("GET", "/x402/close", vec![], 405, None),
        ("GET", "/healthz/", vec![], 404, Some("not_found")),
        ("GET", "/healthz", vec![], 200, None),
        ("GET", "/metrics", vec![], 200, None),
        ("GET", "/metrics/x", vec![], 404, Some("not_found")),
    ] {
        let resp = send(gw.addr, method, target, &headers).await;
        assert_eq!(resp.status, status, "{method} {target}: {resp:?}");
        if let Some(code) = error {
            assert!(resp.body.contains(&format!("\"error\":\"{code}\"")), "{method} {target}: {resp:?}");
            assert!(resp.header("content-type").is_some_and(|c| c.contains("json")), "{target}");
        }
    }
    assert_eq!(gw.upstream.hits(), 0, "{:?}", gw.upstream.seen.lock());
}

/// CORS: preflights are answered by the node without payment; the payment headers are exposed.
#[tokio::test]
async fn cors_preflights_are_free_and_payment_headers_exposed() {
    let cors = CorsConfig { allowed_origins: vec!["https://app.example".into()], ..CorsConfig::default() };
    let gw = gateway(cors).await;
    let preflight = send(
        gw.addr,
        "OPTIONS",
        "/weather",
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "payment-signature, payment-session, content-type"),
        ],
    )
    .await;
    assert!(preflight.status == 200 || preflight.status == 204, "{preflight:?}");
    assert_eq!(preflight.header("access-control-allow-origin"), Some("https://app.example"));
    let allowed = preflight.header("access-control-allow-headers").unwrap_or_default().to_ascii_lowercase();
    for h in ["payment-signature", "x-payment", "payment-session", "content-type"] {
        assert!(allowed.contains(h), "{h} allowed: {allowed}");
    }
    assert!(preflight.header(wire::PAYMENT_REQUIRED).is_none());

    let resp = send(gw.addr, "GET", "/weather", &[("origin", "https://app.example")]).await;
    assert_eq!(resp.status, 402);
    assert_eq!(resp.header("access-control-allow-origin"), Some("https://app.example"));
    let exposed = resp.header("access-control-expose-headers").unwrap_or_default().to_ascii_lowercase();
    assert!(exposed.contains("payment-required") && exposed.contains("payment-response"), "{exposed}");

    let other = send(gw.addr, "GET", "/weather", &[("origin", "https://evil.example")]).await;
    assert_eq!(other.status, 402);
    assert!(other.header("access-control-allow-origin").is_none());
    assert_eq!(gw.upstream.hits(), 0, "no preflight reached the upstream");
}

/// `min_deposit` holds for every channel, and a channel's state is shown only to a request
/// that proves it holds the signer's key.
#[tokio::test]
async fn min_deposit_and_state_disclosure() {
    let mut gw = gateway(CorsConfig::default()).await;
    let payer = gw.payer.clone();
    let small = gw.header(&payer, gw.small, 1, PRICE);
    let resp = send(gw.addr, "GET", "/weather", &[(wire::PAYMENT_SIGNATURE, &small)]).await;
    let refused = required(&resp);
    assert_eq!(refused.error, Some(ErrorCode::ChannelMismatch), "{resp:?}");

    assert_eq!(gw.pay("GET", "/weather", PRICE).await.status, 200);
    let state_of = |resp: &Raw| required(resp).accepts[0].extra.channel.clone();
    // A bare id, a stranger's signature, a forged session token: no state.
    let id = gw.id.to_string();
    let bare = send(gw.addr, "GET", "/weather", &[(PAYMENT_CHANNEL, &id)]).await;
    assert_eq!((bare.status, state_of(&bare)), (402, None));
    let stranger = gw.header(&PrivateKeySigner::random(), gw.id, 0, 0);
    let forged = send(gw.addr, "GET", "/weather", &[(wire::PAYMENT_SIGNATURE, &stranger)]).await;
    assert_eq!(required(&forged).error, Some(ErrorCode::InvalidSignature));
    assert_eq!(state_of(&forged), None);
    let session = wire::encode_session(gw.id, B256::repeat_byte(9));
    let forged = send(gw.addr, "GET", "/weather", &[(wire::PAYMENT_SESSION, &session)]).await;
    assert_eq!(required(&forged).error, Some(ErrorCode::SessionInvalid));
    assert_eq!(state_of(&forged), None);
    // The payer's own stale voucher (a used nonce, another amount; the very same voucher would
    // be a resend, answered with its receipt): the state, to resynchronise.
    let stale = gw.header(&payer, gw.id, 1, 2 * PRICE);
    let resp = send(gw.addr, "GET", "/weather", &[(wire::PAYMENT_SIGNATURE, &stale)]).await;
    assert_eq!(required(&resp).error, Some(ErrorCode::NonceTooLow));
    let state = state_of(&resp).expect("the signer sees its channel's state");
    assert_eq!((state.nonce, state.charged), (gw.nonce, U256::from(gw.charged)));
}

/// Python's `http.server` as the upstream, serving a file `weather` (it percent-decodes the
/// whole path, `%2F` included, and resolves dot segments and double slashes): every trick on the
/// priced `GET /weather` is charged or refused, none serves the file free.
#[tokio::test]
async fn python_http_server_serves_nothing_free() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("weather"), SECRET).expect("writes");
    std::fs::create_dir(dir.path().join("free")).expect("mkdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("binds").local_addr().expect("addr").port();
    let mut python = std::process::Command::new("python3")
        .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 runs");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut up = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(up, "python's http.server did not start");
    // The upstream itself serves every spelling.
    for target in
        ["/weather", "//weather", "/%77eather", "/free/../weather", "/%2e%2e/weather", "/free%2F..%2Fweather"]
    {
        assert!(send(addr, "GET", target, &[]).await.body.contains(SECRET), "python serves {target}");
    }
    let mut gw = gateway_to(Lenient { addr, seen: Default::default() }, CorsConfig::default()).await;
    for target in [
        "/weather",
        "//weather",
        "/%77eather",
        "/./weather",
        "/free/../weather",
        "/free//..//weather",
        "/%2e%2e/weather",
        "/free/%2E%2E/weather",
        "/free%2F..%2Fweather",
        "/%2577eather",
        "/weather%00",
        "/weather?x",
        "/weather#x",
        "/WEATHER",
        "/weather;x",
        "/weather/",
    ] {
        let resp = send(gw.addr, "GET", target, &[]).await;
        assert!(!resp.body.contains(SECRET), "{target} served free: {resp:?}");
        assert!(matches!(resp.status, 400 | 402 | 404), "{target}: {resp:?}");
    }
    let resp = gw.pay("GET", "/free/..//%77eather", PRICE).await;
    assert!(resp.status == 200 && resp.body.contains(SECRET), "{resp:?}");
    assert_eq!(settled(&resp).extra.as_ref().expect("channel extra").charged, U256::from(PRICE));
    let _ = python.kill();
    let _ = python.wait();
}
