//! Settlement and chain following on anvil: many clients batch-settled and closed to the exact
//! unit, top-ups spendable only once confirmed, a reorg that removes a top-up, cooperative
//! close by a provider-signed authorisation, and a node killed in the middle of a settlement
//! round.

use std::{sync::Arc, time::Duration};

use alloy::{
    primitives::{B256, U256},
    providers::Provider,
};
use reqwest::StatusCode;
use x402_e2e::{
    account, cheats,
    harness::{ADMIN, Env, Gateway, PRICE, eventually, required},
    upstream,
};
use x402_node::{
    Engine, Terms,
    chain::RpcChain,
    metrics::Metrics,
    settle::{CrashPoint, SettlementPolicy, Settler},
};
use x402_protocol::{
    bindings::IPaymentChannel,
    close::{CLOSE_PATH, CloseRequestBody, CloseResponse},
    wire::ErrorCode,
};
use x402_store::SledStore;

const DEPOSIT: u64 = 100 * PRICE;
const FUNDS: u64 = 1_000 * PRICE;

fn in_ten_minutes() -> u64 {
    x402_node::unix_now() + 600
}

async fn close_request(client: &reqwest::Client, gw: &Gateway, body: &CloseRequestBody) -> reqwest::Response {
    client.post(format!("{}{CLOSE_PATH}", gw.url)).json(body).send().await.expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_are_batch_settled_and_closed_to_the_unit() {
    let env = Env::new().await;
    let api = upstream().await;
    let data = tempfile::tempdir().unwrap();
    let mut config = env.with_provider_key(env.gateway_config(api, data.path()), data.path());
    // Rounds run on demand here, and when a client asks for a close.
    config.settlement.interval_secs = 3600;
    let gw = Gateway::start(config).await;
    let client = reqwest::Client::new();
    let terms = gw.terms(&client).await;
    let provider = env.provider_key.address();
    let provider_before = env.balance(provider).await;

    // Six clients, each with its own channel and a different number of paid requests.
    let mut clients = Vec::new();
    for i in 0..6u64 {
        let payer = env.payer(account(&env.anvil, 2 + i as usize), FUNDS).await;
        let id = payer.open(provider, DEPOSIT, i as u8 + 1).await;
        let requests = 3 + 2 * i;
        for n in 1..=requests {
            let resp = gw.pay(&client, &terms, &payer.sign(id, n, n * PRICE)).await;
            assert_eq!(resp.status(), StatusCode::OK, "client {i} request {n}");
        }
        clients.push((payer, id, requests));
    }
    let charged = |requests: u64| requests * PRICE;
    let total: u64 = clients.iter().map(|c| charged(c.2)).sum();

    // One forced round settles every channel in one settleMany.
    let settle = |force: bool| {
        let client = client.clone();
        let url = format!("{}/admin/settle?force={force}", gw.url);
        async move {
            let resp = client.post(url).bearer_auth(ADMIN).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            resp.json::<serde_json::Value>().await.unwrap()
        }
    };
    assert_eq!(
        client.post(format!("{}/admin/settle", gw.url)).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let report = settle(true).await;
    let batches = report["batches"].as_array().unwrap();
    assert_eq!(batches.len(), 1, "{report}");
    assert_eq!(batches[0]["kind"], "settle");
    assert_eq!(batches[0]["applied"].as_array().unwrap().len(), 6, "{report}");
    assert_eq!(env.balance(provider).await - provider_before, U256::from(total));
    for (_, id, requests) in &clients {
        let ch = env.channel(*id).await;
        assert_eq!(U256::from(ch.paid), U256::from(charged(*requests)));
    }
    // Nothing is claimed twice.
    let again = settle(true).await;
    assert!(again["batches"].as_array().unwrap().is_empty(), "{again}");

    // Two more requests each, then every client asks for a cooperative close.
    let mut total = total;
    let mut finals = Vec::new();
    for (payer, id, requests) in &clients {
        for n in requests + 1..=requests + 2 {
            let resp = gw.pay(&client, &terms, &payer.sign(*id, n, n * PRICE)).await;
            assert_eq!(resp.status(), StatusCode::OK);
        }
        total += 2 * PRICE;
        finals.push(charged(requests + 2));
    }
    for ((payer, id, requests), final_amount) in clients.iter().zip(&finals) {
        let body = CloseRequestBody::sign(&env.domain(), &payer.key, *id, in_ten_minutes()).unwrap();
        let resp = close_request(&client, &gw, &body).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let answer: CloseResponse = resp.json().await.unwrap();
        assert_eq!(answer.final_amount, U256::from(*final_amount));
        assert_eq!(answer.refund, U256::from(DEPOSIT - final_amount));
        assert!(answer.queued && answer.authorization.is_some());
        // No more vouchers once a close was requested.
        let late = gw.pay(&client, &terms, &payer.sign(*id, requests + 3, final_amount + PRICE)).await;
        assert_eq!(required(&late).error, Some(ErrorCode::ChannelClosing));
    }

    // The settler closes them all (woken by the requests); every balance is exact.
    for (_, id, _) in &clients {
        eventually(30, "the channel to be closed on-chain", || async {
            env.channel(*id).await.status == IPaymentChannel::Status::Closed
        })
        .await;
    }
    assert_eq!(env.balance(provider).await - provider_before, U256::from(total));
    for ((payer, _, _), final_amount) in clients.iter().zip(&finals) {
        assert_eq!(env.balance(payer.address()).await, U256::from(FUNDS - final_amount));
    }
    // The settler records the closes once it has seen the receipt.
    eventually(10, "12 settlements in the metrics", || async {
        gw.metric(&client, "x402_channels_settled_total").await == 12.0
    })
    .await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_up_is_spendable_only_once_confirmed_and_close_by_authorization() {
    let env = Env::new().await;
    let api = upstream().await;
    let data = tempfile::tempdir().unwrap();
    // The provider's key signs close authorisations, but this node does not settle.
    let mut config = env.with_provider_key(env.gateway_config(api, data.path()), data.path());
    config.settlement.enabled = false;
    config.chain.confirmations = 2;
    let gw = Gateway::start(config).await;
    let client = reqwest::Client::new();
    let terms = gw.terms(&client).await;
    let chain = &env.node_chain;
    let payer = env.fresh_payer(FUNDS).await;
    let id = payer.open(env.provider_key.address(), DEPOSIT, 1).await;

    // Not spendable before the open is two blocks deep.
    let resp = gw.pay(&client, &terms, &payer.sign(id, 1, DEPOSIT)).await;
    assert_eq!(required(&resp).error, Some(ErrorCode::ChannelUnknown));
    cheats::mine(chain, 2).await.unwrap();
    pay_once_confirmed(&gw, &client, &terms, &payer, id).await;
    let over = payer.sign(id, 2, DEPOSIT + PRICE);
    assert_eq!(required(&gw.pay(&client, &terms, &over).await).error, Some(ErrorCode::InsufficientDeposit));

    // A top-up: refused while it has fewer than two confirmations.
    payer
        .channels()
        .topUp(payer.params(id), U256::from(10 * PRICE))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    let head = chain.get_block_number().await.unwrap();
    gw.followed(&client, head - 2).await;
    assert_eq!(required(&gw.pay(&client, &terms, &over).await).error, Some(ErrorCode::InsufficientDeposit));
    cheats::mine(chain, 1).await.unwrap();
    gw.followed(&client, head - 1).await;
    assert_eq!(required(&gw.pay(&client, &terms, &over).await).error, Some(ErrorCode::InsufficientDeposit));
    cheats::mine(chain, 1).await.unwrap();
    gw.followed(&client, head).await;
    assert_eq!(gw.pay(&client, &terms, &over).await.status(), StatusCode::OK);

    // A top-up while the node is down: the restarted node catches up from its stored cursor.
    let config = gw.config.clone();
    gw.stop().await;
    payer
        .channels()
        .topUp(payer.params(id), U256::from(10 * PRICE))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    cheats::mine(chain, 2).await.unwrap();
    let head = chain.get_block_number().await.unwrap();
    let gw = Gateway::start(config).await;
    gw.followed(&client, head - 2).await;
    let more = payer.sign(id, 3, DEPOSIT + 11 * PRICE);
    assert_eq!(gw.pay(&client, &terms, &more).await.status(), StatusCode::OK);

    // Bad close requests.
    let stranger = alloy::signers::local::PrivateKeySigner::random();
    let forged = CloseRequestBody::sign(&env.domain(), &stranger, id, in_ten_minutes()).unwrap();
    let expired = CloseRequestBody::sign(&env.domain(), &payer.key, id, 1).unwrap();
    let unknown =
        CloseRequestBody::sign(&env.domain(), &payer.key, B256::repeat_byte(9), in_ten_minutes()).unwrap();
    for (name, body, status, code) in [
        ("forged", &forged, StatusCode::FORBIDDEN, "invalid_signature"),
        ("expired", &expired, StatusCode::BAD_REQUEST, "invalid_payload"),
        ("unknown", &unknown, StatusCode::NOT_FOUND, "channel_unknown"),
    ] {
        let resp = close_request(&client, &gw, body).await;
        assert_eq!(resp.status(), status, "{name}");
        assert_eq!(resp.json::<serde_json::Value>().await.unwrap()["error"], code, "{name}");
    }
    let malformed =
        client.post(format!("{}{CLOSE_PATH}", gw.url)).body("{\"channelId\": 1}").send().await.unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);

    // A cooperative close: the node signs an authorisation at what it charged, and the client
    // submits it itself, getting the rest back at once.
    let body = CloseRequestBody::sign(&env.domain(), &payer.key, id, in_ten_minutes()).unwrap();
    let answer: CloseResponse = close_request(&client, &gw, &body).await.json().await.unwrap();
    assert!(!answer.queued, "this node does not settle");
    assert_eq!(answer.final_amount, U256::from(3 * PRICE));
    let auth = answer.authorization.expect("the node holds the provider key");
    let next = payer.sign(id, 4, 4 * PRICE);
    assert_eq!(required(&gw.pay(&client, &terms, &next).await).error, Some(ErrorCode::ChannelClosing));
    let provider_before = env.balance(env.provider_key.address()).await;
    let receipt = payer
        .channels()
        .closeWithAuthorization(
            payer.params(id),
            auth.final_amount,
            U256::from(auth.deadline),
            auth.signature,
        )
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(receipt.status());
    assert_eq!(env.balance(env.provider_key.address()).await - provider_before, U256::from(3 * PRICE));
    assert_eq!(env.balance(payer.address()).await, U256::from(FUNDS - 3 * PRICE));
    cheats::mine(chain, 2).await.unwrap();
    eventually(10, "the close to reach the node", || async {
        required(&gw.pay(&client, &terms, &next).await).error == Some(ErrorCode::ChannelClosed)
    })
    .await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reorg_that_removes_a_top_up_shrinks_the_spendable_deposit() {
    let env = Env::new().await;
    let api = upstream().await;
    let data = tempfile::tempdir().unwrap();
    let mut config = env.gateway_config(api, data.path());
    config.chain.confirmations = 1;
    let gw = Gateway::start(config).await;
    let client = reqwest::Client::new();
    let terms = gw.terms(&client).await;
    let chain = &env.node_chain;
    let payer = env.fresh_payer(FUNDS).await;
    let id = payer.open(env.provider_key.address(), DEPOSIT, 1).await;
    cheats::mine(chain, 1).await.unwrap();
    pay_once_confirmed(&gw, &client, &terms, &payer, id).await;

    let fork = cheats::snapshot(chain).await.unwrap();
    payer
        .channels()
        .topUp(payer.params(id), U256::from(10 * PRICE))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    cheats::mine(chain, 2).await.unwrap();
    let head = chain.get_block_number().await.unwrap();
    gw.followed(&client, head - 1).await;
    assert_eq!(gw.pay(&client, &terms, &payer.sign(id, 2, DEPOSIT + PRICE)).await.status(), StatusCode::OK);

    // The blocks with the top-up are disconnected; the new chain grows past the old head.
    cheats::revert(chain, &fork).await.unwrap();
    cheats::mine(chain, 5).await.unwrap();
    assert_eq!(env.channel(id).await.deposit, DEPOSIT as u128);
    eventually(10, "the reorg to be detected", || async {
        gw.metric(&client, "x402_reorgs_total").await >= 1.0
    })
    .await;
    let resp = gw.pay(&client, &terms, &payer.sign(id, 3, DEPOSIT + 2 * PRICE)).await;
    let refusal = required(&resp);
    assert_eq!(refusal.error, Some(ErrorCode::InsufficientDeposit));
    assert_eq!(refusal.accepts[0].extra.channel.as_ref().unwrap().deposit, U256::from(DEPOSIT));
    gw.stop().await;
}

/// Pays voucher 1 (the whole deposit) as soon as the node counts the channel's opening as
/// confirmed.
async fn pay_once_confirmed(
    gw: &Gateway,
    client: &reqwest::Client,
    terms: &x402_protocol::wire::PaymentRequirements,
    payer: &x402_e2e::harness::Payer,
    id: B256,
) {
    eventually(10, "the open to be confirmed", || async {
        gw.pay(client, terms, &payer.sign(id, 1, DEPOSIT)).await.status() == StatusCode::OK
    })
    .await;
}

/// Builds the node's engine and settler over the data directory, as a restarted node would.
fn node(env: &Env, data: &std::path::Path, policy: SettlementPolicy) -> Settler<SledStore> {
    Settler::new(engine(env, data), env.provider_key.clone(), policy)
}

fn engine(env: &Env, data: &std::path::Path) -> Engine<SledStore, RpcChain> {
    let store = Arc::new(SledStore::open(data).expect("opens the store"));
    let terms = Terms {
        chain_id: env.anvil.chain_id(),
        contract: env.contract,
        payee: env.provider_key.address(),
        asset: env.usd,
        min_challenge_period: 3600,
        min_deposit: U256::ZERO,
        max_timeout_seconds: 30,
        accept_contract_signers: false,
    };
    let chain = RpcChain::new(x402_e2e::provider(&env.anvil, env.provider_key.clone()), env.contract);
    Engine::new(terms, store, chain, Metrics::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_during_settlement_neither_loses_nor_doubles() {
    let env = Env::new().await;
    let api = upstream().await;
    let data = tempfile::tempdir().unwrap();
    let config = env.gateway_config(api, data.path());
    let client = reqwest::Client::new();
    let chain = &env.node_chain;
    let provider = env.provider_key.address();
    let provider_before = env.balance(provider).await;
    let a = env.payer(account(&env.anvil, 2), FUNDS).await;
    let b = env.payer(account(&env.anvil, 3), FUNDS).await;
    let ida = a.open(provider, DEPOSIT, 1).await;
    let idb = b.open(provider, DEPOSIT, 2).await;
    let mut nonce = 0;
    let mut pay_round = |requests: u64| {
        let config = config.clone();
        let client = client.clone();
        let (a, b) = (&a, &b);
        let first = nonce + 1;
        nonce += requests;
        async move {
            let gw = Gateway::start(config).await;
            let terms = gw.terms(&client).await;
            for n in first..first + requests {
                for (payer, id) in [(a, ida), (b, idb)] {
                    assert_eq!(
                        gw.pay(&client, &terms, &payer.sign(id, n, n * PRICE)).await.status(),
                        StatusCode::OK
                    );
                }
            }
            gw.stop().await;
        }
    };
    let policy = SettlementPolicy {
        resend_after: Duration::from_secs(2),
        receipt_poll: Duration::from_millis(100),
        ..SettlementPolicy::default()
    };
    let paid_onchain = || async { env.balance(provider).await - provider_before };

    // 1. Killed after the transaction was stored, before it was broadcast.
    pay_round(3).await;
    let settler = node(&env, data.path(), policy.clone()).crash_at(Some(CrashPoint::BeforeBroadcast));
    assert!(matches!(settler.round(true).await, Err(x402_node::Error::InjectedCrash(_))));
    drop(settler);
    assert_eq!(paid_onchain().await, U256::ZERO, "nothing was sent");
    // The restarted node sends the stored transaction, even though the policy (no threshold,
    // a day's age) would not settle these channels now.
    let report = node(&env, data.path(), policy.clone()).round(false).await.unwrap();
    assert_eq!(report.batches.len(), 1);
    assert!(report.batches[0].recovered && report.batches[0].success);
    assert_eq!(report.batches[0].applied.len(), 2);
    assert_eq!(paid_onchain().await, U256::from(2 * 3 * PRICE));

    // 2. Killed after broadcasting; the transaction is then dropped from the mempool while the
    // node is down. The restarted node broadcasts it again.
    pay_round(2).await;
    cheats::set_automine(chain, false).await.unwrap();
    let settler = node(&env, data.path(), policy.clone()).crash_at(Some(CrashPoint::AfterBroadcast));
    assert!(matches!(settler.round(true).await, Err(x402_node::Error::InjectedCrash(_))));
    drop(settler);
    cheats::drop_all_transactions(chain).await.unwrap();
    let report = settle_while_mining(node(&env, data.path(), policy.clone()), chain, Duration::ZERO).await;
    assert!(report.batches[0].recovered && report.batches[0].success);
    assert_eq!(report.batches[0].replacements, 0);
    assert_eq!(paid_onchain().await, U256::from(2 * 5 * PRICE));

    // 3. Killed after broadcasting; the transaction stays pending longer than `resend_after`,
    // so the restarted node replaces it with higher fees. Only one of them can be mined.
    pay_round(2).await;
    let settler = node(&env, data.path(), policy.clone()).crash_at(Some(CrashPoint::AfterBroadcast));
    assert!(matches!(settler.round(true).await, Err(x402_node::Error::InjectedCrash(_))));
    drop(settler);
    let report =
        settle_while_mining(node(&env, data.path(), policy.clone()), chain, Duration::from_secs(4)).await;
    assert!(report.batches[0].recovered && report.batches[0].success);
    assert!(report.batches[0].replacements >= 1, "{report:?}");
    cheats::set_automine(chain, true).await.unwrap();
    assert_eq!(paid_onchain().await, U256::from(2 * 7 * PRICE));

    // Nothing is left to claim, and nothing is claimed twice.
    let report = node(&env, data.path(), policy.clone()).round(true).await.unwrap();
    assert!(report.batches.is_empty(), "{report:?}");
    for id in [ida, idb] {
        let ch = env.channel(id).await;
        assert_eq!(U256::from(ch.paid), U256::from(7 * PRICE));
    }

    // Gas above the cap postpones settlement (no exit is pending).
    pay_round(1).await;
    let capped = SettlementPolicy { max_fee_per_gas: Some(1), ..policy };
    let report = node(&env, data.path(), capped).round(true).await.unwrap();
    assert!(report.batches.is_empty() && report.postponed == 2, "{report:?}");
    assert_eq!(paid_onchain().await, U256::from(2 * 7 * PRICE));

    // 4. Killed after broadcasting; while it is down the transaction is dropped and its nonce
    // is used by another transaction from the same key. The restarted node finds the nonce
    // taken by none of its versions, reports the batch replaced and plans it again later.
    cheats::set_automine(chain, false).await.unwrap();
    let settler = node(&env, data.path(), policy.clone()).crash_at(Some(CrashPoint::AfterBroadcast));
    assert!(matches!(settler.round(true).await, Err(x402_node::Error::InjectedCrash(_))));
    drop(settler);
    cheats::drop_all_transactions(chain).await.unwrap();
    {
        use alloy::{network::TransactionBuilder, rpc::types::TransactionRequest};
        let nonce = chain.get_transaction_count(provider).pending().await.unwrap();
        let other = TransactionRequest::default().with_to(provider).with_value(U256::ZERO).with_nonce(nonce);
        let _pending = chain.send_transaction(other).await.unwrap();
        cheats::mine(chain, 1).await.unwrap();
    }
    let report = node(&env, data.path(), policy.clone()).round(false).await.unwrap();
    cheats::set_automine(chain, true).await.unwrap();
    assert_eq!(report.batches.len(), 1, "{report:?}");
    let replaced = &report.batches[0];
    assert!(replaced.recovered && !replaced.success && replaced.tx == B256::ZERO, "{report:?}");
    assert_eq!(paid_onchain().await, U256::from(2 * 7 * PRICE));

    // What `x402-node settle --force` runs: catch up with the chain, then one round.
    let report =
        x402_node::gateway::settle_once(env.with_provider_key(config, data.path()), true).await.unwrap();
    assert_eq!(report.batches.len(), 1, "{report:?}");
    assert_eq!(paid_onchain().await, U256::from(2 * 8 * PRICE));
}

/// Runs a round while a block is mined every 300 ms, starting after `quiet`.
async fn settle_while_mining(
    settler: Settler<SledStore>,
    chain: &alloy::providers::DynProvider,
    quiet: Duration,
) -> x402_node::settle::RoundReport {
    let miner = async {
        tokio::time::sleep(quiet).await;
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            cheats::mine(chain, 1).await.expect("mines");
        }
    };
    tokio::select! {
        report = settler.round(false) => report.expect("the round succeeds"),
        () = miner => unreachable!("the miner never stops"),
    }
}

/// The provider's node pushes its vouchers to a watcher, then goes down. The payer starts an
/// exit; the watcher settles the latest voucher within the challenge period; after it the payer
/// withdraws. The provider holds exactly what was signed, the payer the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_while_the_node_is_down_is_defended_by_the_watcher() {
    use x402_node::{config::WatcherTarget, watcher::WatcherConfig};

    const TOKEN: &str = "watcher-token-0123456789";
    let env = Env::new().await;
    let api = upstream().await;
    let data = tempfile::tempdir().unwrap();
    let watcher_data = tempfile::tempdir().unwrap();
    let watcher_listen = x402_e2e::harness::free_port();
    let watcher_config = WatcherConfig {
        listen: watcher_listen,
        data_dir: watcher_data.path().into(),
        rpc_url: env.anvil.endpoint(),
        chain_id: Some(env.anvil.chain_id()),
        contract: env.contract,
        token: TOKEN.into(),
        poll_interval: Duration::from_millis(200),
        ..WatcherConfig::default()
    };
    let watcher = x402_e2e::harness::Watchtower::start(watcher_config, account(&env.anvil, 9)).await;

    // The node needs the provider's key to authorise the watcher's claims (it does not settle).
    let mut config = env.with_provider_key(env.gateway_config(api, data.path()), data.path());
    config.settlement.enabled = false;
    config.watchers.push(WatcherTarget {
        url: format!("http://{watcher_listen}"),
        token: TOKEN.into(),
        every: 1,
        interval_secs: 1,
    });
    let gw = Gateway::start(config).await;
    let client = reqwest::Client::new();
    let terms = gw.terms(&client).await;
    let payer = env.fresh_payer(FUNDS).await;
    let provider = env.provider_key.address();
    let id = payer.open(provider, DEPOSIT, 1).await;
    for n in 1..=5 {
        assert_eq!(gw.pay(&client, &terms, &payer.sign(id, n, n * PRICE)).await.status(), StatusCode::OK);
    }
    // The watcher holds the latest voucher once the node has pushed it.
    eventually(20, "the watcher to hold the latest voucher", || async {
        watcher.channels(TOKEN).await.iter().any(|c| c.nonce == 5)
    })
    .await;
    gw.stop().await;

    // The node is down. The payer exits; the watcher settles within the period.
    let provider_before = env.balance(provider).await;
    payer.channels().requestExit(payer.params(id)).send().await.unwrap().get_receipt().await.unwrap();
    eventually(30, "the watcher to settle", || async { env.channel(id).await.paid == 5 * PRICE as u128 })
        .await;
    assert_eq!(env.balance(provider).await - provider_before, U256::from(5 * PRICE));
    cheats::increase_time(&env.node_chain, 86_400 + 1).await.unwrap();
    payer.channels().withdraw(payer.params(id)).send().await.unwrap().get_receipt().await.unwrap();
    assert_eq!(env.channel(id).await.status, IPaymentChannel::Status::Closed);
    assert_eq!(env.balance(payer.address()).await, U256::from(FUNDS - 5 * PRICE));
    assert_eq!(env.balance(provider).await - provider_before, U256::from(5 * PRICE));

    watcher.stop().await;
}

/// `/admin/channels`, `/admin/revenue` and the channel metrics agree with the chain for an open
/// channel, a settled one, one with an exit pending, one the node closed and one its payer
/// closed with the node's authorisation (which the node does not close again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_view_agrees_with_the_chain_in_every_state() {
    let env = Env::new().await;
    let api = upstream().await;
    let data = tempfile::tempdir().unwrap();
    let mut config = env.with_provider_key(env.gateway_config(api, data.path()), data.path());
    config.settlement.interval_secs = 3600;
    let gw = Gateway::start(config).await;
    let client = reqwest::Client::new();
    let terms = gw.terms(&client).await;
    let provider = env.provider_key.address();
    let settle = || async {
        let resp = client
            .post(format!("{}/admin/settle?force=true", gw.url))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json::<serde_json::Value>().await.unwrap()
    };
    let admin = |path: &'static str| {
        let (client, url) = (client.clone(), format!("{}/admin/{path}", gw.url));
        async move {
            let resp = client.get(url).bearer_auth(ADMIN).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            resp.json::<serde_json::Value>().await.unwrap()
        }
    };
    let pay = |payer: &x402_e2e::harness::Payer, id: B256, from: u64, to: u64| {
        let (client, gw, terms) = (&client, &gw, &terms);
        let vouchers: Vec<_> = (from..=to).map(|n| payer.sign(id, n, n * PRICE)).collect();
        async move {
            for v in vouchers {
                assert_eq!(gw.pay(client, terms, &v).await.status(), StatusCode::OK);
            }
        }
    };

    let mut payers = Vec::new();
    for salt in 1..=5u8 {
        let payer = env.fresh_payer(FUNDS).await;
        let id = payer.open(provider, DEPOSIT, salt).await;
        payers.push((payer, id));
    }
    let [(open, open_id), (settled, settled_id), (exiting, exiting_id), (closed, closed_id), (own, own_id)] =
        <[_; 5]>::try_from(payers).ok().unwrap();

    // Settled: three requests settled on-chain, then one more.
    pay(&settled, settled_id, 1, 3).await;
    let report = settle().await;
    assert_eq!(report["batches"][0]["applied"].as_array().unwrap().len(), 1, "{report}");
    pay(&settled, settled_id, 4, 4).await;
    pay(&open, open_id, 1, 2).await;
    pay(&exiting, exiting_id, 1, 2).await;

    // Closed by the node, and closed by its payer with the node's authorisation.
    pay(&closed, closed_id, 1, 2).await;
    pay(&own, own_id, 1, 2).await;
    for (payer, id) in [(&closed, closed_id), (&own, own_id)] {
        let body = CloseRequestBody::sign(&env.domain(), &payer.key, id, in_ten_minutes()).unwrap();
        let answer: CloseResponse = close_request(&client, &gw, &body).await.json().await.unwrap();
        assert_eq!(answer.final_amount, U256::from(2 * PRICE));
        if id == own_id {
            let auth = answer.authorization.expect("signed");
            let channels = payer.channels();
            let call = channels.closeWithAuthorization(
                payer.params(id),
                auth.final_amount,
                U256::from(auth.deadline),
                auth.signature,
            );
            assert!(call.send().await.unwrap().get_receipt().await.unwrap().status());
        }
    }
    for id in [closed_id, own_id] {
        eventually(30, "the channel to be closed on-chain", || async {
            env.channel(id).await.status == IPaymentChannel::Status::Closed
        })
        .await;
    }
    eventually(10, "the node to see both closes", || async {
        gw.metric(&client, "x402_channels{status=\"closed\"}").await == 2.0
    })
    .await;
    // Only the channel whose payer did not close it was closed by the node.
    let closes = "x402_settlement_transactions_total{kind=\"close\"}";
    assert_eq!(gw.metric(&client, closes).await, 1.0);

    // An exit pending.
    let channels = exiting.channels();
    let call = channels.requestExit(exiting.params(exiting_id));
    assert!(call.send().await.unwrap().get_receipt().await.unwrap().status());
    eventually(10, "the exit to reach the node", || async {
        gw.metric(&client, "x402_channels{status=\"closing\"}").await == 1.0
    })
    .await;

    let listing = admin("channels").await;
    let rows = listing.as_array().unwrap();
    assert_eq!(rows.len(), 5, "{listing}");
    let row = |id: B256| rows.iter().find(|r| r["id"] == id.to_string()).cloned().expect("listed");
    let amount = |v: &serde_json::Value| v.as_str().unwrap().parse::<u64>().unwrap();
    // (channel, status, charged, paid on-chain, unsettled)
    let expected = [
        (open_id, "open", 2, 0, 2),
        (settled_id, "open", 4, 3, 1),
        (exiting_id, "closing", 2, 0, 2),
        (closed_id, "closed", 2, 2, 0),
        (own_id, "closed", 2, 2, 0),
    ];
    for (id, status, charged, paid, unsettled) in expected {
        let r = row(id);
        let chain = env.channel(id).await;
        assert_eq!(r["status"], status, "{r}");
        assert_eq!(amount(&r["charged"]), charged * PRICE, "{r}");
        assert_eq!(amount(&r["paidOnchain"]), paid * PRICE, "{r}");
        assert_eq!(amount(&r["unsettled"]), unsettled * PRICE, "{r}");
        if chain.status == IPaymentChannel::Status::Closed {
            // The contract zeroes a closed channel: what it paid is what the payer got back less.
            let payer = [&closed, &own][usize::from(id == own_id)];
            assert_eq!(env.balance(payer.address()).await, U256::from(FUNDS - paid * PRICE), "{r}");
        } else {
            assert_eq!(U256::from(chain.paid), U256::from(paid * PRICE), "{r}");
            assert_eq!(amount(&r["deposit"]), u64::try_from(chain.deposit).unwrap(), "{r}");
            assert_eq!(chain.exitAt.to::<u64>() != 0, status == "closing", "{r}");
        }
    }
    let revenue = admin("revenue").await;
    assert_eq!(revenue[0]["charged"], (12 * PRICE).to_string(), "{revenue}");
    assert_eq!(revenue[0]["unsettled"], (5 * PRICE).to_string(), "{revenue}");
    let unsettled = format!("x402_unsettled_base_units{{token=\"{}\"}}", env.usd);
    assert_eq!(gw.metric(&client, &unsettled).await, (5 * PRICE) as f64);
    assert_eq!(gw.metric(&client, "x402_channels{status=\"open\"}").await, 2.0);
    assert!(gw.metric(&client, "x402_payment_required_total").await >= 1.0);
    gw.stop().await;
}

/// A gas-price spike while an exit is pending: the settler's first `closeMany` is priced for
/// the base fee before the spike and cannot be mined; the sender replaces it with fees the new
/// base fee allows, and the channel is closed, paying the provider what it charged, before the
/// exit ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_underpriced_by_a_gas_spike_is_replaced_and_lands_before_the_exit_ends() {
    let env = Env::new().await;
    let api = upstream().await;
    let data = tempfile::tempdir().unwrap();
    let config = env.gateway_config(api, data.path());
    let client = reqwest::Client::new();
    let chain = &env.node_chain;
    let provider = env.provider_key.address();
    let provider_before = env.balance(provider).await;
    let payer = env.payer(account(&env.anvil, 2), FUNDS).await;
    let id = payer.open(provider, DEPOSIT, 1).await;
    let gw = Gateway::start(config).await;
    let terms = gw.terms(&client).await;
    for n in 1..=4 {
        assert_eq!(gw.pay(&client, &terms, &payer.sign(id, n, n * PRICE)).await.status(), StatusCode::OK);
    }
    gw.stop().await;
    payer.channels().requestExit(payer.params(id)).send().await.unwrap().get_receipt().await.unwrap();
    let exit_at = env.channel(id).await.exitAt.to::<u64>();

    let policy = SettlementPolicy {
        resend_after: Duration::from_secs(2),
        receipt_poll: Duration::from_millis(100),
        ..SettlementPolicy::default()
    };
    let engine = engine(&env, data.path());
    // The node learns of the exit from the chain.
    let mut follower = x402_node::follower::Follower::new(engine.clone(), Default::default());
    follower.poll_once().await.unwrap();
    let settler = Arc::new(Settler::new(engine, env.provider_key.clone(), policy));

    cheats::set_automine(chain, false).await.unwrap();
    let round = tokio::spawn({
        let settler = Arc::clone(&settler);
        async move { settler.round(false).await }
    });
    let mut first = None;
    eventually(30, "the close is sent", || {
        let found = settler.sender().in_flight().unwrap().first().cloned();
        let sent = found.is_some();
        first = found;
        async move { sent }
    })
    .await;
    let v1 = first.expect("in flight").versions[0].clone();
    cheats::set_next_base_fee(chain, v1.fees.max_fee_per_gas * 50).await.unwrap();
    cheats::mine(chain, 1).await.unwrap();
    assert!(
        chain.get_transaction_receipt(v1.hash).await.unwrap().is_none(),
        "the underpriced close was not mined"
    );
    cheats::set_interval_mining(chain, 1).await.unwrap();

    let report = round.await.unwrap().unwrap();
    cheats::set_interval_mining(chain, 0).await.unwrap();
    cheats::set_automine(chain, true).await.unwrap();
    assert_eq!(report.batches.len(), 1, "{report:?}");
    let batch = &report.batches[0];
    assert!(batch.success && batch.applied == [id], "{report:?}");
    assert!(batch.replacements >= 1 && batch.tx != v1.hash, "{report:?}");
    let receipt = chain.get_transaction_receipt(batch.tx).await.unwrap().expect("mined");
    let block = chain.get_block_by_number(receipt.block_number.unwrap().into()).await.unwrap().unwrap();
    assert!(block.header.timestamp < exit_at, "landed before the exit ends");
    assert!(receipt.effective_gas_price > v1.fees.max_fee_per_gas, "paid the spiked base fee");
    assert_eq!(env.balance(provider).await - provider_before, U256::from(4 * PRICE));
    assert!(settler.sender().in_flight().unwrap().is_empty());
}
