//! The library's API as a user's integration test uses it.

use alloy::primitives::U256;
use x402_client::Payment;
use x402_devnet::{DEFAULT_FUNDS, Devnet, PRICE, TOKEN_UNIT, sample_api};
use x402_node::config::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_request_through_a_started_node_in_a_few_lines() {
    let devnet = Devnet::start().await.unwrap();
    let api = sample_api().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = devnet.start_node(&format!("http://{api}"), dir.path()).await.unwrap();
    let client = devnet.client(devnet.account(1)).await.unwrap();
    let response = client.http().get(format!("{}/weather", node.url())).send().await.unwrap();
    assert!(response.status().is_success());

    let payment = response.extensions().get::<Payment>().cloned().unwrap();
    assert_eq!((payment.nonce, payment.total_charged), (1, U256::from(PRICE)));
    assert_eq!(response.text().await.unwrap(), r#"{"forecast":"sunny"}"#);
    // The client deposited 100 requests' worth (the default policy) from the minted funds.
    let payer = devnet.account(1).address();
    assert_eq!(devnet.balance(payer).await.unwrap(), U256::from(DEFAULT_FUNDS - 100 * PRICE));
    assert_eq!(devnet.channel(payment.channel_id).await.unwrap().deposit, u128::from(100 * PRICE));
    // The provider holds no tokens until the node settles; then exactly what it charged.
    let provider = devnet.provider_key.address();
    assert_eq!(devnet.balance(provider).await.unwrap(), U256::ZERO);
    let report = node.settle(true).await.unwrap();
    assert_eq!(report["batches"][0]["kind"], "settle", "{report}");
    assert_eq!(devnet.balance(provider).await.unwrap(), U256::from(PRICE));
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn funding_fresh_keys_and_moving_time() {
    let devnet = Devnet::builder().funds(U256::ZERO).challenge_periods(60, 600).start().await.unwrap();
    for key in devnet.accounts() {
        assert_eq!(devnet.balance(key.address()).await.unwrap(), U256::ZERO, "nothing minted");
    }
    let key = devnet.fresh_key(U256::from(5 * TOKEN_UNIT)).await.unwrap();
    assert_eq!(devnet.balance(key.address()).await.unwrap(), U256::from(5 * TOKEN_UNIT));
    let channels = x402_protocol::bindings::IPaymentChannel::new(devnet.contract, &devnet.chain);
    assert_eq!(channels.minChallengePeriod().call().await.unwrap(), 60);
    assert_eq!(channels.maxChallengePeriod().call().await.unwrap(), 600);
    let now = devnet.now().await.unwrap();
    devnet.increase_time(3_600).await.unwrap();
    assert!(devnet.now().await.unwrap() >= now + 3_600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_written_node_config_parses_validates_and_is_removed() {
    let devnet = Devnet::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x402-devnet/node.toml");
    let files = devnet.write_node_config(&path, "http://127.0.0.1:8080").unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("# x402-node configuration for the local devnet"), "{text}");

    let config = Config::parse(&text).unwrap();
    config.validate().unwrap();
    assert_eq!(config.chain.contract, Some(devnet.contract));
    assert_eq!(config.chain.rpc_url, devnet.rpc_url());
    assert_eq!(config.payment.asset, devnet.token);
    assert_eq!(config.chain.confirmations, 0);
    assert_eq!(config.upstream, "http://127.0.0.1:8080");
    assert_eq!(config.listen, Config::default().listen);
    assert_eq!(config.routes[0].path, "/weather");
    let llm = config.routes.iter().find(|r| r.path == "/llm").expect("the upto sample route");
    assert_eq!(
        (llm.pricing, llm.price),
        (x402_protocol::wire::Pricing::Upto, U256::from(x402_devnet::LLM_MAX_PRICE))
    );
    assert!(config.settlement.enabled);
    assert_eq!(
        config.provider.address().unwrap(),
        devnet.provider_key.address(),
        "the key file is the provider's"
    );
    assert!(config.data_dir.is_absolute() && config.data_dir.starts_with(dir.path().canonicalize().unwrap()));

    // The node runs on it.
    let mut runnable = config.clone();
    runnable.listen = x402_devnet::free_port().unwrap();
    let node = x402_devnet::Gateway::start(runnable).await.unwrap();
    node.stop().await.unwrap();

    files.remove().unwrap();
    assert!(!dir.path().join("x402-devnet").exists(), "the directory it created is gone");
}

#[tokio::test]
async fn a_missing_anvil_or_artifact_is_a_clear_error() {
    let err = Devnet::builder().anvil_path("/nonexistent/anvil").start().await.unwrap_err();
    assert!(err.to_string().contains("run `scripts/setup`"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let err = Devnet::builder().artifacts(x402_devnet::Artifacts::new(dir.path())).start().await.unwrap_err();
    assert!(err.to_string().contains("run `forge build`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upto_sample_route_reports_its_cost() {
    let devnet = Devnet::start().await.unwrap();
    let api = sample_api().await.unwrap();
    let prompt = "what is six times seven?";
    // The upstream itself: the cost in `X402-Cost`.
    let direct = reqwest::Client::new().post(format!("http://{api}/llm")).body(prompt).send().await.unwrap();
    let cost = x402_devnet::llm_cost(prompt.len());
    assert_eq!(
        direct.headers().get(x402_devnet::LLM_COST_HEADER).and_then(|v| v.to_str().ok()),
        Some(cost.to_string().as_str())
    );
    assert!(cost < x402_devnet::LLM_MAX_PRICE);
    // Through the node: charged exactly the reported cost, and the header does not reach the
    // client.
    let dir = tempfile::tempdir().unwrap();
    let node = devnet.start_node(&format!("http://{api}"), dir.path()).await.unwrap();
    let client = devnet.client(devnet.account(1)).await.unwrap();
    let response = client.http().post(format!("{}/llm", node.url())).body(prompt).send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let payment = response.extensions().get::<Payment>().cloned().unwrap();
    assert_eq!(payment.charged, U256::from(cost), "{payment:?}");
    assert!(response.headers().get(x402_devnet::LLM_COST_HEADER).is_none());
    node.stop().await.unwrap();
}
