//! A channel's whole life through the CLI, every figure checked on-chain.

use alloy::{
    network::EthereumWallet,
    primitives::U256,
    providers::{Provider, ProviderBuilder},
};
use x402_e2e::{
    cheats,
    harness::{Env, Gateway, PRICE},
    upstream,
};
use x402_protocol::bindings::IPaymentChannel;

use crate::support::{Cli, id, row};

const FUNDS: u64 = 1_000_000;
const WEATHER: &str = r#"{"forecast":"sunny"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_get_top_up_and_close_cooperatively() {
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    let config = env.with_provider_key(env.gateway_config(upstream().await, data.path()), data.path());
    let gw = Gateway::start(config).await;
    let provider = env.provider_key.address();
    let provider_before = env.balance(provider).await;
    let key = env.fresh_key(FUNDS).await;
    let payer = key.address();
    let cli = Cli::new(&env).key(&key).state_dir_flag();
    let url = format!("{}/weather", gw.url);

    // Open: approve + open, the deposit on-chain.
    let opened = cli.run(&["open", &url, "--deposit", "50000", "--json"]).await.success().json();
    let channel = id(&opened["channel"]["id"]);
    assert_eq!(
        (opened["channel"]["deposit"].as_str(), opened["price"].as_str()),
        (Some("50000"), Some("1000"))
    );
    let whats: Vec<&str> =
        opened["transactions"].as_array().unwrap().iter().map(|t| t["what"].as_str().unwrap()).collect();
    assert_eq!(whats, ["approve", "open"]);
    assert!(opened["transactions"][1]["block"].as_u64().is_some(), "confirmed: {opened}");
    let onchain = env.channel(channel).await;
    assert_eq!(
        (onchain.status, U256::from(onchain.deposit)),
        (IPaymentChannel::Status::Open, U256::from(50_000))
    );
    let params = env.params(channel).await;
    assert_eq!((params.payee, params.payer), (provider, payer));
    assert_eq!(env.balance(payer).await, U256::from(FUNDS - 50_000));

    // Listed, nothing spent yet.
    let table = cli.run(&["channels"]).await.success().stdout;
    // DEPOSIT SIGNED CHARGED REMAINING NONCE PAYEE NODE STATUS
    assert_eq!(
        row(&table, channel),
        [
            channel.to_string().as_str(),
            "50000",
            "0",
            "0",
            "50000",
            "0",
            provider.to_string().as_str(),
            gw.url.as_str(),
            "open"
        ]
    );
    assert!(table.starts_with("CHANNEL"), "{table}");

    // Each `get` is a new process: the nonce goes on from the state directory.
    for n in 1..=3u64 {
        let run = cli.run(&["get", &url]).await.success();
        assert_eq!(run.stdout, WEATHER, "the body exactly");
        let paid = format!("paid: channel {channel} nonce {n} charged {PRICE} total {}", n * PRICE);
        assert!(run.stderr.contains(&paid), "{paid:?} in\n{run}");
    }
    let listed = cli.run(&["channels", "--json"]).await.success().json();
    let channels = listed["channels"].as_array().unwrap();
    assert_eq!(channels.len(), 1, "every request went to the channel opened: {listed}");
    let ch = &channels[0];
    assert_eq!(
        (ch["deposit"].as_str(), ch["charged"].as_str(), ch["remaining"].as_str(), ch["status"].as_str()),
        (Some("50000"), Some("3000"), Some("47000"), Some("open"))
    );
    assert_eq!((ch["nonce"].as_u64(), ch["node"].as_str()), (Some(3), Some(gw.url.as_str())));
    // The state is in that directory: another one knows nothing of the channel.
    let elsewhere = tempfile::tempdir().unwrap();
    let empty =
        Cli::new(&env).run(&["channels", "--state-dir", &elsewhere.path().display().to_string()]).await;
    assert_eq!(empty.success().stdout, "no channels\n");

    // Top up.
    let topped = cli.run(&["topup", &channel.to_string(), "20000", "--json"]).await.success().json();
    assert_eq!(
        (topped["channel"]["deposit"].as_str(), topped["added"].as_str()),
        (Some("70000"), Some("20000"))
    );
    assert_eq!(U256::from(env.channel(channel).await.deposit), U256::from(70_000));
    assert_eq!(env.balance(payer).await, U256::from(FUNDS - 70_000));

    // With --json the body and the payment are one document on stdout.
    let run = cli.run(&["get", &url, "--json"]).await.success();
    let doc = run.json();
    assert_eq!((doc["status"].as_u64(), doc["body"].as_str()), (Some(200), Some(WEATHER)));
    assert_eq!(
        (doc["payment"]["nonce"].as_u64(), doc["payment"]["totalCharged"].as_str()),
        (Some(4), Some("4000"))
    );
    assert_eq!(id(&doc["payment"]["channelId"]), channel);
    assert!(!run.stderr.contains("paid:"), "{run}");

    // Close cooperatively: the provider's authorisation, submitted by the client, refunds now.
    let closed = cli.run(&["close", &channel.to_string()]).await.success();
    assert!(closed.stdout.contains(&format!("closed channel {channel}")), "{closed}");
    assert!(
        closed.stdout.contains("paid       4000") && closed.stdout.contains("refunded   66000"),
        "{closed}"
    );
    assert_eq!(env.channel(channel).await.status, IPaymentChannel::Status::Closed);
    assert_eq!(env.balance(payer).await, U256::from(FUNDS - 4 * PRICE), "the refund to the unit");
    assert_eq!(env.balance(provider).await - provider_before, U256::from(4 * PRICE));
    let table = cli.run(&["channels"]).await.success().stdout;
    let cells = row(&table, channel);
    assert_eq!(
        [&cells[1..6], &cells[8..]].concat(),
        ["70000", "4000", "4000", "0", "4", "closed"],
        "nothing left once closed"
    );

    // A closed channel takes no more lifecycle operations.
    cli.run(&["close", &channel.to_string()]).await.failure(5, "is closed");
    cli.run(&["topup", &channel.to_string(), "1000"]).await.failure(5, "closed");
    // Nothing to withdraw from a channel the provider closed and refunded: said as such.
    let run = cli.run(&["withdraw", &channel.to_string()[..10]]).await.failure(5, "already closed on-chain");
    assert!(run.stderr.contains("nothing to withdraw"), "{run}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_then_withdraw_after_the_challenge_period() {
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    // The node follows the chain but holds no key: it cannot settle, so the exit decides.
    let gw = Gateway::start(env.gateway_config(upstream().await, data.path())).await;
    let key = env.fresh_key(FUNDS).await;
    let payer = key.address();
    let cli = Cli::new(&env).key(&key);
    let url = format!("{}/weather", gw.url);

    let opened = cli.run(&["open", &url, "--deposit", "30000", "--json"]).await.success().json();
    let channel = id(&opened["channel"]["id"]);
    assert_eq!(opened["channel"]["challengePeriod"].as_u64(), Some(3600), "the provider's minimum");
    for _ in 0..2 {
        cli.run(&["get", &url]).await.success();
    }

    let exit = cli.run(&["exit", &channel.to_string(), "--json"]).await.success().json();
    let exit_at = exit["exitAt"].as_u64().unwrap();
    assert_eq!(env.channel(channel).await.exitAt.to::<u64>(), exit_at);
    let listed = cli.run(&["channels", "--json"]).await.success().json();
    assert_eq!(
        (listed["channels"][0]["status"].as_str(), listed["channels"][0]["exitAt"].as_u64()),
        (Some("exiting"), Some(exit_at))
    );
    let table = cli.run(&["channels"]).await.success().stdout;
    assert!(row(&table, channel).join(" ").contains(" exiting (withdraw from "), "{table}");
    // No payment on an exiting channel: a new `get` would open a new one, so none is tried.
    cli.run(&["exit", &channel.to_string()]).await.failure(5, "is exiting");

    // Too early: refused with the reason, nothing sent.
    let early = cli.run(&["withdraw", &channel.to_string()]).await.failure(5, "challenge period");
    assert!(early.stderr.contains("ends at"), "{early}");
    assert_eq!(env.balance(payer).await, U256::from(FUNDS - 30_000));

    let now = cheats::now(&env.node_chain).await.unwrap();
    cheats::increase_time(&env.node_chain, exit_at - now + 1).await.unwrap();
    let withdrew = cli.run(&["withdraw", &channel.to_string(), "--json"]).await.success().json();
    // Nobody submitted a voucher in the period: the whole deposit comes back.
    assert_eq!(withdrew["refund"].as_str(), Some("30000"));
    assert_eq!(withdrew["transactions"][0]["what"].as_str(), Some("withdraw"));
    assert_eq!(env.balance(payer).await, U256::from(FUNDS));
    assert_eq!(env.channel(channel).await.status, IPaymentChannel::Status::Closed);
    let table = cli.run(&["channels"]).await.success().stdout;
    assert_eq!(row(&table, channel).last().map(String::as_str), Some("closed"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_refresh_reads_what_happened_on_chain_without_the_key() {
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(env.gateway_config(upstream().await, data.path())).await;
    let key = env.fresh_key(FUNDS).await;
    let mut cli = Cli::new(&env).key(&key);
    let url = format!("{}/weather", gw.url);
    let opened = cli.run(&["open", &url, "--deposit", "10000", "--json"]).await.success().json();
    let channel = id(&opened["channel"]["id"]);

    // The payer starts an exit from elsewhere (another machine, another wallet).
    let wallet = ProviderBuilder::new()
        .wallet(EthereumWallet::from(key.clone()))
        .connect_http(env.anvil.endpoint_url());
    let receipt = IPaymentChannel::new(env.contract, &wallet)
        .requestExit(env.params(channel).await)
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(receipt.status());
    let exit_at = env.channel(channel).await.exitAt.to::<u64>();

    // Listing reads the state directory only, and needs no key.
    cli.unset("X402_PRIVATE_KEY");
    let stale = cli.run(&["channels", "--json"]).await.success().json();
    assert_eq!(stale["channels"][0]["status"].as_str(), Some("open"));
    let fresh = cli.run(&["channels", "--refresh", "--json"]).await.success().json();
    assert_eq!(
        (fresh["channels"][0]["status"].as_str(), fresh["channels"][0]["exitAt"].as_u64()),
        (Some("exiting"), Some(exit_at))
    );
    // Stored: a plain listing now says so too.
    let table = cli.run(&["channels"]).await.success().stdout;
    assert!(row(&table, channel).join(" ").contains(" exiting (withdraw from "), "{table}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payer_without_gas_opens_gaslessly_and_pays_through_a_credit_window() {
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    let config = env.with_relay(env.gateway_config(upstream().await, data.path()), data.path());
    let gw = Gateway::start(env.with_provider_key(config, data.path())).await;
    let key = env.gasless_key(FUNDS).await;
    let payer = key.address();
    let cli = Cli::new(&env).key(&key);
    let url = format!("{}/weather", gw.url);

    // No ETH at all: the provider's node relays the open.
    let opened =
        cli.run(&["open", &url, "--deposit", "40000", "--gasless=permit", "--json"]).await.success().json();
    let channel = id(&opened["channel"]["id"]);
    let onchain = env.channel(channel).await;
    assert_eq!((env.params(channel).await.payer, U256::from(onchain.deposit)), (payer, U256::from(40_000)));
    assert_eq!(env.node_chain.get_transaction_count(payer).await.unwrap(), 0, "the payer sent nothing");
    // A relay that is not there: exit 6; one that refuses (not this provider's relay): 8.
    cli.run(&["open", &url, "--gasless", "--relay", "http://127.0.0.1:9"]).await.failure(6, "cannot reach");
    let plain =
        Gateway::start(env.gateway_config(upstream().await, tempfile::tempdir().unwrap().path())).await;
    cli.run(&["open", &url, "--gasless", "--relay", &plain.url]).await.failure(8, "relayer refused");
    plain.stop().await;

    // A credit window of 5: one voucher per five requests, each request still paid once.
    for n in 1..=10u64 {
        let run = cli.run(&["get", &url, "--credit-window", "5", "--json"]).await.success();
        let payment = &run.json()["payment"];
        assert_eq!(payment["totalCharged"].as_str(), Some((n * PRICE).to_string().as_str()), "{run}");
        // Sessions live in the process: each new process signs one voucher (prepaying 5).
        assert_eq!(payment["nonce"].as_u64(), Some(n), "{run}");
    }
    let listed = cli.run(&["channels", "--json"]).await.success().json();
    let ch = &listed["channels"][0];
    assert_eq!(ch["charged"].as_str(), Some("10000"));
    // Without gas the payer cannot submit the provider's authorisation; the node closes it.
    cli.run(&["close", &channel.to_string()]).await.success();
    x402_e2e::harness::eventually(30, "the node closes the channel", || async {
        env.channel(channel).await.status == IPaymentChannel::Status::Closed
    })
    .await;
    assert_eq!(env.balance(payer).await, U256::from(FUNDS - 10 * PRICE), "unused prepaid credit is refunded");
    gw.stop().await;
}
