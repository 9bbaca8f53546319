//! EIP-7702 cannot revoke vouchers (issue 13): a payer is served by the node, then delegates
//! its EOA to a wallet whose `isValidSignature` says no, and exits. The node's claim lands while
//! it is online, the watcher's while it is offline, and the provider gets exactly what it
//! charged.

use std::time::Duration;

use alloy::{
    eips::eip7702::Authorization,
    network::{TransactionBuilder, TransactionBuilder7702},
    primitives::{Address, B256, U256},
    providers::Provider,
    rpc::types::TransactionRequest,
    signers::SignerSync,
};
use reqwest::StatusCode;
use x402_e2e::{
    account, cheats, creation_code, deploy,
    harness::{ADMIN, Env, Gateway, Watchtower, eventually, free_port},
    provider, upstream,
};
use x402_node::{config::WatcherTarget, watcher::WatcherConfig};
use x402_protocol::bindings::IPaymentChannel;

const DEPOSIT: u64 = 1_000_000;
const PRICE: u64 = x402_e2e::harness::PRICE;
const FUNDS: u64 = 10 * DEPOSIT;
const PERIOD: u32 = 3_600;
const TOKEN: &str = "revocation-watcher-token-0123";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_7702_delegation_after_being_served_cannot_revoke_the_vouchers() {
    let env = Env::new().await;
    let provider_addr = env.provider_key.address();
    let watcher_listen = free_port();
    let watcher_data = tempfile::tempdir().unwrap();
    let watcher = Watchtower::start(
        WatcherConfig {
            listen: watcher_listen,
            data_dir: watcher_data.path().into(),
            rpc_url: env.anvil.endpoint(),
            chain_id: Some(env.anvil.chain_id()),
            contract: env.contract,
            token: TOKEN.into(),
            poll_interval: Duration::from_millis(200),
            ..WatcherConfig::default()
        },
        account(&env.anvil, 9),
    )
    .await;
    let data = tempfile::tempdir().unwrap();
    let mut config = env.with_provider_key(env.gateway_config(upstream().await, data.path()), data.path());
    config.watchers.push(WatcherTarget {
        url: format!("http://{watcher_listen}"),
        token: TOKEN.into(),
        every: 1,
        interval_secs: 1,
    });
    let gw = Gateway::start(config).await;
    let client = reqwest::Client::new();
    let terms = gw.terms(&client).await;

    // The payer (an EOA signing its own vouchers) opens two channels and is served on both.
    let payer = env.fresh_payer(FUNDS).await;
    let online = payer.open_with_period(provider_addr, DEPOSIT, 1, PERIOD).await;
    let offline = payer.open_with_period(provider_addr, DEPOSIT, 2, PERIOD).await;
    for (id, requests) in [(online, 3u64), (offline, 2)] {
        for n in 1..=requests {
            let voucher = payer.sign(id, n, n * PRICE);
            eventually(10, "a paid request", || async {
                gw.pay(&client, &terms, &voucher).await.status() == StatusCode::OK
            })
            .await;
        }
    }
    eventually(10, "the watcher to hold the offline channel's claim", || async {
        watcher.channels(TOKEN).await.iter().any(|c| c.channel_id == offline && c.nonce == 2)
    })
    .await;

    // The payer delegates its account with EIP-7702 (a type-4 transaction another account
    // sends) to a wallet whose isValidSignature refuses everything.
    let bank = provider(&env.anvil, account(&env.anvil, 1));
    let refusing = deploy(&bank, creation_code("HostileWallets.sol", "FalseDelegate"), &[]).await.unwrap();
    let nonce = env.node_chain.get_transaction_count(payer.address()).await.unwrap();
    let authorization =
        Authorization { chain_id: U256::from(env.anvil.chain_id()), address: refusing, nonce };
    let signature = payer.key.sign_hash_sync(&authorization.signature_hash()).unwrap();
    let delegate = TransactionRequest::default()
        .with_to(Address::repeat_byte(0x77))
        .with_authorization_list(vec![authorization.into_signed(signature)]);
    let receipt = bank.send_transaction(delegate).await.unwrap().get_receipt().await.unwrap();
    assert!(receipt.status(), "the delegation was mined");
    let code = env.node_chain.get_code_at(payer.address()).await.unwrap();
    assert_eq!(&code[..3], &[0xef, 0x01, 0x00], "the payer is delegated: {code}");
    assert_eq!(&code[3..], refusing.as_slice());

    // The node keeps serving the delegated EOA: its ECDSA vouchers stay valid.
    let voucher = payer.sign(online, 4, 4 * PRICE);
    assert_eq!(gw.pay(&client, &terms, &voucher).await.status(), StatusCode::OK);
    let provider_before = env.balance(provider_addr).await;
    // The authorisation used a nonce of the payer's: a fresh provider reads the next one.
    let payer_chain = provider(&env.anvil, payer.key.clone());
    let as_payer = IPaymentChannel::new(env.contract, &payer_chain);

    // A channel the node first sees after the delegation is taken too: a delegated EOA is not
    // a contract signer (which the node refuses by default).
    let params = IPaymentChannel::ChannelParams { salt: B256::repeat_byte(3), ..payer.params(online) };
    let receipt =
        as_payer.open(params.clone(), U256::from(DEPOSIT)).send().await.unwrap().get_receipt().await.unwrap();
    assert!(receipt.status());
    let third = params.channel_id(env.anvil.chain_id(), env.contract);
    let voucher = payer.sign(third, 1, PRICE);
    eventually(10, "a paid request on a channel opened after the delegation", || async {
        gw.pay(&client, &terms, &voucher).await.status() == StatusCode::OK
    })
    .await;

    // The payer exits the first channel; the node (online) closes it with its claim.
    as_payer.requestExit(payer.params(online)).send().await.unwrap().get_receipt().await.unwrap();
    eventually(10, "the node to see the exit", || async {
        let resp = client.get(format!("{}/admin/channels", gw.url)).bearer_auth(ADMIN).send().await.unwrap();
        let channels: serde_json::Value = resp.json().await.unwrap();
        channels.as_array().is_some_and(|list| {
            list.iter().any(|c| c["id"] == serde_json::json!(online) && c["status"] == "closing")
        })
    })
    .await;
    let report: serde_json::Value = client
        .post(format!("{}/admin/settle", gw.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The exit also wakes the settler's own loop, which may have closed the channel in a round
    // of its own before this forced one ran (rounds are serialised): then this one has nothing
    // left to do. Either way the channel is closed once, paying what the node charged.
    let batches = report["batches"].as_array().expect("a round report");
    assert!(batches.iter().all(|b| b["success"] == true), "{report}");
    // The watcher guards every exit too: it may land its payee-signed claim first, and then
    // the node has nothing left to claim and leaves the closing to the payer's exit. Either
    // way the provider is paid exactly what the node charged, once.
    eventually(10, "the channel closed by the node or claimed by the watcher", || async {
        let channel = env.channel(online).await;
        channel.status == IPaymentChannel::Status::Closed || U256::from(channel.paid) == U256::from(4 * PRICE)
    })
    .await;
    assert_eq!(env.balance(provider_addr).await - provider_before, U256::from(4 * PRICE), "what it charged");

    // The node goes offline; the payer exits the second channel; the watcher's payee-signed
    // claim lands although the payer's key now belongs to a refusing wallet.
    gw.stop().await;
    as_payer.requestExit(payer.params(offline)).send().await.unwrap().get_receipt().await.unwrap();
    eventually(10, "the watcher to claim", || async {
        U256::from(env.channel(offline).await.paid) == U256::from(2 * PRICE)
    })
    .await;
    watcher.stop().await;
    cheats::increase_time(&bank, u64::from(PERIOD) + 1).await.unwrap();
    let receipt = as_payer.withdraw(payer.params(offline)).send().await.unwrap().get_receipt().await.unwrap();
    assert!(receipt.status());
    if env.channel(online).await.status != IPaymentChannel::Status::Closed {
        // Claimed by the watcher above: the payer's exit ends it.
        let receipt =
            as_payer.withdraw(payer.params(online)).send().await.unwrap().get_receipt().await.unwrap();
        assert!(receipt.status());
    }
    assert_eq!(env.balance(provider_addr).await - provider_before, U256::from(6 * PRICE));
    // The payer keeps the rest (the third channel's deposit is still locked in it).
    assert_eq!(env.balance(payer.address()).await, U256::from(FUNDS - 6 * PRICE - DEPOSIT));
    assert_eq!(env.balance(env.contract).await, U256::from(DEPOSIT));
}
