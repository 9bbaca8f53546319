//! The client SDK (`x402-client`) against the real node on anvil: 1,000 paid requests and a
//! cooperative close to the exact unit, 64 concurrent requests on one channel, a client
//! restarted mid-channel, a unilateral exit and withdrawal, and limits refusing an over-priced
//! route, gasless opens relayed by the node or by any account.

use std::time::Duration;

use alloy::{primitives::U256, providers::Provider, signers::local::PrivateKeySigner};
use reqwest::StatusCode;
use x402_client::{
    ChainClient, ChannelStatus, Client, DepositPolicy, Error, GaslessKind, Limits, Payment, Relayer, Settings,
};
use x402_e2e::{
    cheats,
    harness::{Env, Gateway, PRICE},
    upstream,
};
use x402_protocol::bindings::IPaymentChannel;

const FUNDS: u64 = 10_000 * PRICE;

fn limits() -> Limits {
    Limits::from_units(u128::from(PRICE) * 10, u128::from(FUNDS), u128::from(FUNDS))
}

fn builder(env: &Env, key: PrivateKeySigner, requests: u64) -> x402_client::ClientBuilder {
    Client::builder(key)
        .rpc(env.anvil.endpoint())
        .limits(limits())
        .deposit_policy(DepositPolicy { requests, ..DepositPolicy::default() })
        .settings(Settings { backoff: Duration::from_millis(50), ..Settings::default() })
}

async fn get(client: &Client, url: &str) -> Payment {
    let response = client.http().get(url).send().await.expect("paid request");
    assert_eq!(response.status(), StatusCode::OK);
    response.extensions().get::<Payment>().cloned().expect("a payment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_paid_requests_then_a_cooperative_close_to_the_unit() {
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    let config = env.with_provider_key(env.gateway_config(upstream().await, data.path()), data.path());
    let gw = Gateway::start(config).await;
    let provider = env.provider_key.address();
    let provider_before = env.balance(provider).await;

    let key = env.fresh_key(FUNDS).await;
    let payer = key.address();
    let client = builder(&env, key, 2_000).build().await.unwrap();
    let url = format!("{}/weather", gw.url);
    for n in 1..=1_000u64 {
        let payment = get(&client, &url).await;
        assert_eq!((payment.nonce, payment.total_charged), (n, U256::from(n * PRICE)));
    }
    let channel = client.channels().await.pop().unwrap();
    assert_eq!(client.channels().await.len(), 1, "one channel for all requests");
    assert_eq!((channel.deposit, channel.spent), (U256::from(2_000 * PRICE), U256::from(1_000 * PRICE)));
    assert_eq!(
        env.balance(payer).await,
        U256::from(FUNDS - 2_000 * PRICE),
        "the client approved and deposited"
    );

    let closed = client.close(channel.id, None).await.unwrap();
    assert!(closed.closed_on_chain, "closed at once with the provider's authorisation");
    assert_eq!((closed.final_amount, closed.refund), (U256::from(1_000 * PRICE), U256::from(1_000 * PRICE)));
    assert_eq!(env.channel(channel.id).await.status, IPaymentChannel::Status::Closed);
    assert_eq!(env.balance(payer).await, U256::from(FUNDS - 1_000 * PRICE));
    assert_eq!(env.balance(provider).await - provider_before, U256::from(1_000 * PRICE));
    assert_eq!(client.channel(channel.id).await.unwrap().status, ChannelStatus::Closed);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_requests_on_one_channel_are_each_paid_once() {
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    let config = env.with_provider_key(env.gateway_config(upstream().await, data.path()), data.path());
    let gw = Gateway::start(config).await;
    let provider = env.provider_key.address();
    let provider_before = env.balance(provider).await;
    let key = env.fresh_key(FUNDS).await;
    let payer = key.address();
    let client = builder(&env, key, 1_000).build().await.unwrap();
    let url = format!("{}/weather", gw.url);
    get(&client, &url).await; // opens the channel

    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { get(&client, &url).await })
        })
        .collect();
    let mut nonces = Vec::new();
    for task in tasks {
        nonces.push(task.await.unwrap().nonce);
    }
    nonces.sort_unstable();
    nonces.dedup();
    assert_eq!(nonces.len(), 64, "every request was paid by its own voucher");
    let channel = client.channels().await.pop().unwrap();
    assert_eq!(channel.spent, U256::from(65 * PRICE));

    // Settled and closed on-chain: the provider got exactly one price per request.
    client.close(channel.id, None).await.unwrap();
    assert_eq!(env.balance(provider).await - provider_before, U256::from(65 * PRICE));
    assert_eq!(env.balance(payer).await, U256::from(FUNDS - 65 * PRICE));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_client_continues_its_channel_without_overpaying() {
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let config = env.with_provider_key(env.gateway_config(upstream().await, data.path()), data.path());
    let gw = Gateway::start(config).await;
    let key = env.fresh_key(FUNDS).await;
    let payer = key.address();
    let url = format!("{}/weather", gw.url);
    let id = {
        let client = builder(&env, key.clone(), 100).state_dir(state.path()).build().await.unwrap();
        for _ in 0..10 {
            get(&client, &url).await;
        }
        client.channels().await[0].id
        // The client is dropped here, as if the process ended.
    };
    let client = builder(&env, key, 100).state_dir(state.path()).build().await.unwrap();
    for n in 11..=20 {
        let payment = get(&client, &url).await;
        assert_eq!(
            (payment.channel_id, payment.nonce, payment.attempts),
            (id, n, 1),
            "no refusal, same channel"
        );
    }
    assert_eq!(client.channels().await.len(), 1);
    client.close(id, None).await.unwrap();
    assert_eq!(env.balance(payer).await, U256::from(FUNDS - 20 * PRICE));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_returns_the_unspent_deposit_after_the_challenge_period() {
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    // The node follows the chain but holds no key: it cannot settle, so the exit decides.
    let gw = Gateway::start(env.gateway_config(upstream().await, data.path())).await;
    let key = env.fresh_key(FUNDS).await;
    let payer = key.address();
    let chain = ChainClient::connect(&env.anvil.endpoint(), key.clone()).await.unwrap();
    let client = builder(&env, key, 50).chain(chain).build().await.unwrap();
    let url = format!("{}/weather", gw.url);
    for _ in 0..7 {
        get(&client, &url).await;
    }
    let id = client.channels().await[0].id;
    let exit_at = client.exit(id).await.unwrap();
    assert!(
        matches!(client.channel(id).await.unwrap().status, ChannelStatus::Exiting { exit_at: at } if at == exit_at)
    );
    let err = client.withdraw(id).await.unwrap_err();
    assert!(matches!(err, Error::ChannelState { .. }), "{err}");

    let now = client.chain().unwrap().now().await.unwrap();
    cheats::increase_time(&env.node_chain, exit_at - now + 1).await.unwrap();
    let refund = client.withdraw(id).await.unwrap();
    // Nobody submitted a voucher in the period: the whole deposit comes back.
    assert_eq!(refund, U256::from(50 * PRICE));
    assert_eq!(env.balance(payer).await, U256::from(FUNDS));
    assert_eq!(client.channel(id).await.unwrap().status, ChannelStatus::Closed);
    assert_eq!(env.channel(id).await.status, IPaymentChannel::Status::Closed);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_an_over_priced_route() {
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(env.gateway_config(upstream().await, data.path())).await;
    let key = env.fresh_key(FUNDS).await;
    let payer = key.address();
    let client = builder(&env, key, 10)
        .limits(Limits::from_units(u128::from(PRICE) - 1, u128::from(FUNDS), u128::from(FUNDS)))
        .build()
        .await
        .unwrap();
    let err = client.http().get(format!("{}/weather", gw.url)).send().await.unwrap_err();
    let reqwest_middleware::Error::Middleware(err) = err else { panic!("a payment error") };
    assert!(matches!(err.downcast_ref::<Error>(), Some(Error::PriceAboveLimit { .. })), "{err}");
    assert!(client.channels().await.is_empty(), "no channel opened");
    assert_eq!(env.balance(payer).await, U256::from(FUNDS), "nothing spent");
    let nonce = env.node_chain.get_transaction_count(payer).await.unwrap();
    assert_eq!(nonce, 0, "no transaction sent");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payer_without_gas_opens_through_the_node_relay_by_permit_and_by_eip3009() {
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    let config = env.with_relay(env.gateway_config(upstream().await, data.path()), data.path());
    let gw = Gateway::start(config).await;
    let url = format!("{}/weather", gw.url);
    let relayer = x402_e2e::account(&env.anvil, 2).address();

    for (kind, n) in [(GaslessKind::Permit, 3u64), (GaslessKind::Transfer, 4), (GaslessKind::Auto, 2)] {
        let key = env.gasless_key(FUNDS).await;
        let payer = key.address();
        let client = builder(&env, key, 100).build().await.unwrap();
        let offer = client.offer_for(&url).await.unwrap();
        let relayer_eth = env.node_chain.get_balance(relayer).await.unwrap();
        let deposit = U256::from(100 * PRICE);
        let ch = client
            .open_gasless(&offer, deposit, kind, &Relayer::Node(gw.url.clone()), Some(gw.url.clone()))
            .await
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        assert_eq!(ch.deposit, deposit);
        let onchain = env.channel(ch.id).await;
        assert_eq!(
            (env.params(ch.id).await.payer, onchain.status),
            (payer, IPaymentChannel::Status::Open),
            "{kind:?}"
        );
        assert_eq!(env.balance(payer).await, U256::from(FUNDS) - deposit, "{kind:?}: the deposit was pulled");
        assert!(
            env.node_chain.get_balance(relayer).await.unwrap() < relayer_eth,
            "{kind:?}: the relay paid gas"
        );
        assert_eq!(
            env.node_chain.get_balance(payer).await.unwrap(),
            U256::ZERO,
            "{kind:?}: the payer has no gas"
        );
        assert_eq!(
            env.node_chain.get_transaction_count(payer).await.unwrap(),
            0,
            "{kind:?}: the payer sent nothing"
        );
        for i in 1..=n {
            let payment = get(&client, &url).await;
            assert_eq!(
                (payment.channel_id, payment.nonce),
                (ch.id, i),
                "{kind:?}: pays on the gasless channel"
            );
        }
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_refuses_what_it_must_not_pay_gas_for() {
    use x402_protocol::{
        ChannelDomain,
        bindings::IPaymentChannel::ChannelParams,
        open::{GaslessAuthorization, GaslessOpen, OPEN_PATH},
    };
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    let plain = Gateway::start(env.gateway_config(upstream().await, data.path())).await;
    let http = reqwest::Client::new();
    // No relay configured: the node says so (501), and nothing reaches the upstream.
    let resp = http.post(format!("{}{OPEN_PATH}", plain.url)).body("{}").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_IMPLEMENTED);
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap()["error"], "not_enabled");
    plain.stop().await;

    // A relay on the provider's own key would race the settler's sender for its nonces: the
    // node refuses to start, saying why.
    let data = tempfile::tempdir().unwrap();
    let mut config = env.with_provider_key(env.gateway_config(upstream().await, data.path()), data.path());
    config.relay.enabled = true;
    config.relay.key_file = config.provider.key_file.clone();
    let refused = x402_node::gateway::run(config, std::future::pending()).await.unwrap_err();
    assert!(refused.to_string().contains("is the provider's key"), "{refused}");

    let data = tempfile::tempdir().unwrap();
    let config = env.with_relay(env.gateway_config(upstream().await, data.path()), data.path());
    let gw = Gateway::start(config).await;
    let relayer = x402_e2e::account(&env.anvil, 2).address();
    let relayer_nonce = env.node_chain.get_transaction_count(relayer).await.unwrap();
    let key = env.gasless_key(FUNDS).await;
    let chain = ChainClient::connect(&env.anvil.endpoint(), key.clone()).await.unwrap();
    let tokens = chain.token_domain(env.usd).await.unwrap();
    let channels = ChannelDomain::new(env.anvil.chain_id(), env.contract);
    let now = chain.now().await.unwrap();
    let params = |payee, deposit: u64, period: u32| {
        let params = ChannelParams {
            payer: key.address(),
            payee,
            token: env.usd,
            signer: key.address(),
            challengePeriod: period,
            salt: alloy::primitives::B256::repeat_byte(1),
        };
        (params, U256::from(deposit))
    };
    let signed = async |(p, deposit): &(ChannelParams, U256), valid_before: u64| {
        GaslessOpen::sign_transfer(&channels, &tokens, &key, p, *deposit, 0, valid_before).unwrap()
    };
    let post = |body: String| {
        let (http, url) = (http.clone(), format!("{}{OPEN_PATH}", gw.url));
        async move {
            let resp = http.post(url).body(body).send().await.unwrap();
            let status = resp.status();
            let json: serde_json::Value = resp.json().await.unwrap();
            (status, json["error"].as_str().unwrap_or_default().to_owned())
        }
    };
    let provider = env.provider_key.address();
    let good = params(provider, 100 * PRICE, 3600);
    let cases = [
        ("malformed JSON", "{not json".to_owned(), StatusCode::BAD_REQUEST, "invalid_payload"),
        (
            "another payee",
            serde_json::to_string(&signed(&params(relayer, 100 * PRICE, 3600), now + 600).await).unwrap(),
            StatusCode::FORBIDDEN,
            "channel_mismatch",
        ),
        (
            "another token",
            serde_json::to_string(&{
                let (mut p, deposit) = params(provider, 100 * PRICE, 3600);
                p.token = alloy::primitives::Address::repeat_byte(9);
                let tokens = x402_protocol::open::TokenDomain::new(
                    "Test USD".into(),
                    "1".into(),
                    env.anvil.chain_id(),
                    p.token,
                );
                GaslessOpen::sign_transfer(&channels, &tokens, &key, &p, deposit, 0, now + 600).unwrap()
            })
            .unwrap(),
            StatusCode::FORBIDDEN,
            "channel_mismatch",
        ),
        (
            "zero deposit",
            serde_json::to_string(&signed(&params(provider, 0, 3600), now + 600).await).unwrap(),
            StatusCode::FORBIDDEN,
            "channel_mismatch",
        ),
        (
            "challenge period below the minimum",
            serde_json::to_string(&signed(&params(provider, 100 * PRICE, 3599), now + 600).await).unwrap(),
            StatusCode::FORBIDDEN,
            "channel_mismatch",
        ),
        (
            "expired",
            serde_json::to_string(&signed(&good, now - 10).await).unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_payload",
        ),
        (
            "valid for too long",
            serde_json::to_string(&signed(&good, now + 10 * 86_400).await).unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_payload",
        ),
        (
            "deposit above the payer's balance",
            serde_json::to_string(&signed(&params(provider, FUNDS + 1, 3600), now + 600).await).unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_payload",
        ),
        (
            "signed by another key",
            {
                let mut open = signed(&good, now + 600).await;
                let other_key = PrivateKeySigner::random();
                let theirs = ChannelParams { payer: other_key.address(), ..good.0.clone() };
                let other =
                    GaslessOpen::sign_transfer(&channels, &tokens, &other_key, &theirs, good.1, 0, now + 600)
                        .unwrap();
                open.authorization = other.authorization;
                serde_json::to_string(&open).unwrap()
            },
            StatusCode::BAD_REQUEST,
            "invalid_payload",
        ),
    ];
    for (what, body, status, code) in cases {
        assert_eq!(post(body).await, (status, code.to_owned()), "{what}");
    }
    assert_eq!(
        env.node_chain.get_transaction_count(relayer).await.unwrap(),
        relayer_nonce,
        "no refused open cost the relay a transaction"
    );
    // The good one goes through, once.
    let open = signed(&good, now + 600).await;
    assert!(matches!(open.authorization, GaslessAuthorization::Transfer { .. }));
    let body = serde_json::to_string(&open).unwrap();
    let resp = http.post(format!("{}{OPEN_PATH}", gw.url)).body(body.clone()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let answer: x402_protocol::open::OpenResponse = resp.json().await.unwrap();
    assert_eq!(env.params(answer.channel_id).await.payer, key.address());
    assert_eq!(post(body).await, (StatusCode::BAD_REQUEST, "invalid_payload".to_owned()), "a replay");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_funded_account_can_relay_a_gasless_open() {
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(env.gateway_config(upstream().await, data.path())).await;
    let url = format!("{}/weather", gw.url);
    let key = env.gasless_key(FUNDS).await;
    let client = builder(&env, key.clone(), 100).build().await.unwrap();
    let offer = client.offer_for(&url).await.unwrap();
    let relay = ChainClient::connect(&env.anvil.endpoint(), env.fresh_key(0).await).await.unwrap();
    let ch = client
        .open_gasless(&offer, U256::from(10 * PRICE), GaslessKind::Permit, &Relayer::Chain(relay), None)
        .await
        .unwrap();
    assert_eq!(env.channel(ch.id).await.deposit, 10 * u128::from(PRICE));
    assert_eq!(get(&client, &url).await.channel_id, ch.id);
    // A deposit above the limit is refused before anything is signed.
    let relay = ChainClient::connect(&env.anvil.endpoint(), env.fresh_key(0).await).await.unwrap();
    let err = client
        .open_gasless(&offer, U256::from(FUNDS + 1), GaslessKind::Permit, &Relayer::Chain(relay), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DepositAboveLimit { .. }), "{err}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credit_window_pays_most_requests_without_a_signature_and_charges_exactly() {
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    let config = env.with_provider_key(env.gateway_config(upstream().await, data.path()), data.path());
    let gw = Gateway::start(config).await;
    let provider = env.provider_key.address();
    let provider_before = env.balance(provider).await;
    let key = env.fresh_key(FUNDS).await;
    let payer = key.address();
    let client = builder(&env, key, 1_000)
        .settings(Settings { backoff: Duration::from_millis(50), credit_window: 10, ..Settings::default() })
        .build()
        .await
        .unwrap();
    let url = format!("{}/weather", gw.url);
    for n in 1..=100u64 {
        let payment = get(&client, &url).await;
        assert_eq!(payment.total_charged, U256::from(n * PRICE), "request {n}");
        assert_eq!(payment.nonce, n.div_ceil(10), "one voucher per ten requests");
    }
    let http = reqwest::Client::new();
    assert_eq!(gw.metric(&http, "x402_requests_paid_by_session_total").await, 90.0);

    // Concurrent requests share the window; every one is paid exactly once.
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { get(&client, &url).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let channel = client.channels().await.pop().unwrap();
    assert_eq!(channel.spent, U256::from(164 * PRICE));
    assert!(channel.max_signed - channel.spent <= U256::from(10 * PRICE), "at most one window at risk");

    let closed = client.close(channel.id, None).await.unwrap();
    assert_eq!(closed.final_amount, U256::from(164 * PRICE), "unused prepaid credit is refunded");
    assert_eq!(env.balance(provider).await - provider_before, U256::from(164 * PRICE));
    assert_eq!(env.balance(payer).await, U256::from(FUNDS - 164 * PRICE));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayer_that_lies_or_refuses_opens_nothing_for_the_client() {
    use axum::{Json, Router, routing::post};
    use x402_protocol::open::{OPEN_PATH, OpenResponse};
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(env.gateway_config(upstream().await, data.path())).await;
    let url = format!("{}/weather", gw.url);
    let key = env.gasless_key(FUNDS).await;
    let client = builder(&env, key.clone(), 100).build().await.unwrap();
    let offer = client.offer_for(&url).await.unwrap();

    // A relay that answers "opened" without submitting anything.
    let liar = Router::new().route(
        OPEN_PATH,
        post(|| async {
            Json(OpenResponse {
                channel_id: alloy::primitives::B256::repeat_byte(1),
                transaction_hash: alloy::primitives::B256::repeat_byte(2),
                deposit: U256::from(10 * PRICE),
            })
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let liar_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, liar).await });
    let deposit = U256::from(10 * PRICE);
    let err = client
        .open_gasless(&offer, deposit, GaslessKind::Permit, &Relayer::Node(liar_url), None)
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::Chain(m) if m.contains("is not open for")), "{err}");
    assert!(client.channels().await.is_empty(), "nothing registered");

    // A node without a relay: the refusal comes back with its status.
    let err = client
        .open_gasless(&offer, deposit, GaslessKind::Permit, &Relayer::Node(gw.url.clone()), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RelayRefused { status: 501, .. }), "{err}");
    // More than the payer holds is refused before anything is signed or sent.
    let poor = env.gasless_key(5 * PRICE).await;
    let poor_client = builder(&env, poor.clone(), 100).build().await.unwrap();
    let err = poor_client
        .open_gasless(&offer, deposit, GaslessKind::Permit, &Relayer::Node(gw.url.clone()), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InsufficientBalance { .. }), "{err}");
    assert!(client.channels().await.is_empty() && poor_client.channels().await.is_empty());
    assert_eq!(env.balance(poor.address()).await, U256::from(5 * PRICE), "nothing moved");
    assert_eq!(env.balance(key.address()).await, U256::from(FUNDS), "nothing moved");
    gw.stop().await;
}
