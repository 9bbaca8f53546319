//! Chain faults on anvil, injected by a proxy between the node and its RPC endpoint
//! ([`crate::proxy`]): the endpoint goes away and comes back, hangs, answers slowly, is
//! restarted with its state; a settlement broadcast is lost; the endpoint fails while a
//! settlement is in flight; gas above the cap with an exit about to end.
//!
//! Throughout, the node keeps serving the channels it knows from its own records, refuses the
//! ones it cannot look up with `unavailable` (503), and once the chain is back it follows it
//! again (top-ups, exits) and settles exactly what it charged, once.
//!
//! (`tests/it/settlement.rs` covers a settlement killed before and after broadcasting, a
//! transaction dropped from the mempool or stuck past the resend time, a nonce taken by
//! another transaction, and gas above the cap with no exit pending.)

use std::{
    ops::RangeInclusive,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use alloy::{
    primitives::{B256, U256},
    providers::{Provider, ProviderBuilder},
};
use reqwest::StatusCode;
use x402_e2e::{
    cheats,
    harness::{ADMIN, Env, Gateway, PRICE, Payer, eventually, required},
    provider, upstream,
};
use x402_node::{
    Engine, Terms,
    chain::RpcChain,
    metrics::Metrics,
    settle::{BatchKind, SettlementPolicy, Settler},
};
use x402_protocol::{bindings::IPaymentChannel, wire::ErrorCode};
use x402_store::SledStore;

use crate::proxy::{Mode, RpcProxy};

const DEPOSIT: u64 = 100 * PRICE;
const FUNDS: u64 = 1_000 * PRICE;

/// A gateway following the chain through `proxy`, settling on demand (`POST /admin/settle`).
async fn gateway_behind(env: &Env, proxy: &RpcProxy, data: &std::path::Path) -> Gateway {
    let mut config = env.with_provider_key(env.gateway_config(upstream().await, data), data);
    config.chain.rpc_url = proxy.url();
    config.chain.rpc_timeout_ms = 1_000;
    config.settlement.interval_secs = 3600;
    Gateway::start(config).await
}

async fn settle(client: &reqwest::Client, gw: &Gateway) -> reqwest::Response {
    client
        .post(format!("{}/admin/settle?force=true", gw.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("settle")
}

/// Pays `voucher` on `id` until it is served (the node may not have seen the channel yet).
async fn served(gw: &Gateway, client: &reqwest::Client, payer: &Payer, id: B256, nonce: u64, amount: u64) {
    let terms = gw.terms(client).await;
    eventually(30, "the payment to be served", || async {
        gw.pay(client, &terms, &payer.sign(id, nonce, amount)).await.status() == StatusCode::OK
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rpc_outage_serves_known_channels_refuses_unknown_ones_and_catches_up() {
    let env = Env::new().await;
    let proxy = RpcProxy::start(&env.anvil.endpoint()).await;
    let data = tempfile::tempdir().unwrap();
    let gw = gateway_behind(&env, &proxy, data.path()).await;
    let client = reqwest::Client::new();
    let terms = gw.terms(&client).await;
    let provider_key = env.provider_key.address();
    let provider_before = env.balance(provider_key).await;
    let a = env.fresh_payer(FUNDS).await;
    let ida = a.open(provider_key, DEPOSIT, 1).await;
    served(&gw, &client, &a, ida, 1, PRICE).await;

    // The endpoint goes away. The payer of another channel opens it meanwhile, and the first
    // payer tops up.
    proxy.set_mode(Mode::Cut);
    let b = env.fresh_payer(FUNDS).await;
    let idb = b.open(provider_key, DEPOSIT, 2).await;
    a.channels()
        .topUp(a.params(ida), U256::from(10 * PRICE))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();

    // The known channel is served from the node's records, against what it knew.
    for n in 2..=6 {
        assert_eq!(gw.pay(&client, &terms, &a.sign(ida, n, n * PRICE)).await.status(), StatusCode::OK);
    }
    let over = a.sign(ida, 7, DEPOSIT + PRICE);
    assert_eq!(required(&gw.pay(&client, &terms, &over).await).error, Some(ErrorCode::InsufficientDeposit));
    // The channel it cannot look up is refused as unavailable, not unknown: nothing is
    // remembered about it, so the same voucher works once the chain is back.
    let first_b = b.sign(idb, 1, PRICE);
    for voucher in [&first_b, &b.sign(B256::repeat_byte(0x77), 1, PRICE)] {
        let resp = gw.pay(&client, &terms, voucher).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(required(&resp).error, Some(ErrorCode::Unavailable));
    }
    // Settling needs the chain: refused, and nothing is left in flight.
    let resp = settle(&client, &gw).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap()["error"], "unavailable");
    assert_eq!(client.get(format!("{}/healthz", gw.url)).send().await.unwrap().status(), StatusCode::OK);

    // The endpoint is back: the new channel is served with the same voucher, the top-up is
    // followed, and one settlement round pays exactly what was charged.
    proxy.set_mode(Mode::Open);
    served(&gw, &client, &b, idb, 1, PRICE).await;
    served(&gw, &client, &a, ida, 7, DEPOSIT + PRICE).await;
    let resp = settle(&client, &gw).await;
    assert_eq!(resp.status(), StatusCode::OK);
    for (id, charged, deposit) in [(ida, 7 * PRICE, DEPOSIT + 10 * PRICE), (idb, PRICE, DEPOSIT)] {
        let ch = env.channel(id).await;
        assert_eq!((U256::from(ch.paid), U256::from(ch.deposit)), (U256::from(charged), U256::from(deposit)));
    }
    assert_eq!(env.balance(provider_key).await - provider_before, U256::from(8 * PRICE));
    // Nothing is claimed twice, and the follower did not count the top-up twice.
    let again: serde_json::Value = settle(&client, &gw).await.json().await.unwrap();
    assert!(again["batches"].as_array().unwrap().is_empty(), "{again}");
    let listed: serde_json::Value = client
        .get(format!("{}/admin/channels", gw.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let a_listed =
        listed.as_array().unwrap().iter().find(|c| c["id"] == serde_json::json!(ida)).unwrap().clone();
    assert_eq!(a_listed["deposit"], (DEPOSIT + 10 * PRICE).to_string(), "{a_listed}");
    assert_eq!(a_listed["unsettled"], "0", "{a_listed}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_then_hung_rpc_is_timed_out_and_followed_again() {
    let env = Env::new().await;
    let proxy = RpcProxy::start(&env.anvil.endpoint()).await;
    let data = tempfile::tempdir().unwrap();
    let gw = gateway_behind(&env, &proxy, data.path()).await;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let terms = gw.terms(&client).await;
    let provider_key = env.provider_key.address();
    let a = env.fresh_payer(FUNDS).await;
    let ida = a.open(provider_key, DEPOSIT, 1).await;
    served(&gw, &client, &a, ida, 1, PRICE).await;

    // Slow answers (within the node's RPC timeout): a new channel is looked up and served, a
    // top-up is followed.
    proxy.set_delay(Duration::from_millis(200));
    let b = env.fresh_payer(FUNDS).await;
    let idb = b.open(provider_key, DEPOSIT, 2).await;
    served(&gw, &client, &b, idb, 1, PRICE).await;
    a.channels()
        .topUp(a.params(ida), U256::from(10 * PRICE))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    served(&gw, &client, &a, ida, 2, DEPOSIT + PRICE).await;
    proxy.set_delay(Duration::ZERO);

    // The endpoint hangs: connections stay open and nothing comes back. Known channels are
    // served; a channel the node must look up is refused as unavailable once the lookup times
    // out, instead of hanging the request.
    proxy.set_mode(Mode::Hang);
    let c = env.fresh_payer(FUNDS).await;
    let idc = c.open(provider_key, DEPOSIT, 3).await;
    assert_eq!(gw.pay(&client, &terms, &a.sign(ida, 3, DEPOSIT + 2 * PRICE)).await.status(), StatusCode::OK);
    let resp = gw.pay(&client, &terms, &c.sign(idc, 1, PRICE)).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(required(&resp).error, Some(ErrorCode::Unavailable));

    // The endpoint answers again on new connections; the hung ones stay dead. The follower
    // gets past them: it sees an exit on the first channel and the node stops taking its
    // vouchers; the third channel is served.
    proxy.set_mode(Mode::Open);
    a.channels().requestExit(a.params(ida)).send().await.unwrap().get_receipt().await.unwrap();
    // (The latest voucher again: answered with its receipt until the node sees the exit, then
    // refused as closing.)
    let latest = a.sign(ida, 3, DEPOSIT + 2 * PRICE);
    eventually(30, "the exit to reach the node", || async {
        {
            // (Before the exit reaches the node, a resend of the served voucher: its receipt.)
            let resp = gw.pay(&client, &terms, &latest).await;
            resp.status() != StatusCode::CONFLICT && required(&resp).error == Some(ErrorCode::ChannelClosing)
        }
    })
    .await;
    served(&gw, &client, &c, idc, 1, PRICE).await;
    // And it settles: the exiting channel is closed with its latest voucher.
    let provider_before = env.balance(provider_key).await;
    assert_eq!(settle(&client, &gw).await.status(), StatusCode::OK);
    assert_eq!(env.channel(ida).await.status, IPaymentChannel::Status::Closed);
    assert_eq!(env.balance(provider_key).await - provider_before, U256::from(3 * PRICE + 2 * PRICE));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rpc_node_restarted_with_its_state_is_followed_and_settled_against() {
    let mut env = Env::new().await;
    let proxy = RpcProxy::start(&env.anvil.endpoint()).await;
    let data = tempfile::tempdir().unwrap();
    let gw = gateway_behind(&env, &proxy, data.path()).await;
    let client = reqwest::Client::new();
    let terms = gw.terms(&client).await;
    let provider_key = env.provider_key.address();
    let provider_before = env.balance(provider_key).await;
    let mut a = env.fresh_payer(FUNDS).await;
    let ida = a.open(provider_key, DEPOSIT, 1).await;
    served(&gw, &client, &a, ida, 1, PRICE).await;
    let head = env.node_chain.get_block_number().await.unwrap();
    gw.followed(&client, head).await;

    // The RPC node goes down, and comes back elsewhere with its state (blocks and all).
    proxy.set_mode(Mode::Cut);
    let state: alloy::primitives::Bytes =
        env.node_chain.raw_request("anvil_dumpState".into(), ()).await.unwrap();
    let restarted = tokio::task::spawn_blocking(x402_e2e::anvil).await.unwrap();
    let loaded: bool = provider(&restarted, env.provider_key.clone())
        .raw_request("anvil_loadState".into(), (state,))
        .await
        .unwrap();
    assert!(loaded);
    let stopped = std::mem::replace(&mut env.anvil, restarted);
    tokio::task::spawn_blocking(move || drop(stopped)).await.unwrap();
    env.node_chain = provider(&env.anvil, env.provider_key.clone());
    a.chain = provider(&env.anvil, a.key.clone());
    assert_eq!(env.node_chain.get_block_number().await.unwrap(), head, "the chain was restored");
    // Served throughout from the node's records.
    assert_eq!(gw.pay(&client, &terms, &a.sign(ida, 2, 2 * PRICE)).await.status(), StatusCode::OK);
    proxy.retarget(&env.anvil.endpoint());
    proxy.set_mode(Mode::Open);

    // The restarted endpoint is followed: a top-up made on it is spendable, and the node
    // settles against it exactly what it charged.
    a.channels()
        .topUp(a.params(ida), U256::from(10 * PRICE))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    served(&gw, &client, &a, ida, 3, DEPOSIT + PRICE).await;
    assert_eq!(settle(&client, &gw).await.status(), StatusCode::OK);
    let ch = env.channel(ida).await;
    assert_eq!(U256::from(ch.paid), U256::from(3 * PRICE));
    assert_eq!(env.balance(provider_key).await - provider_before, U256::from(3 * PRICE));
    gw.stop().await;
}

/// The node's settler over its store, reading and sending through `rpc_url`, as a restarted
/// node would build it.
fn settler(env: &Env, data: &std::path::Path, rpc_url: &str, policy: SettlementPolicy) -> Settler<SledStore> {
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
    let rpc = x402_node::chain::http_provider(rpc_url.parse().expect("a URL"), Duration::from_secs(2))
        .expect("a provider");
    let engine = Engine::new(terms, store, RpcChain::new(rpc, env.contract), Metrics::new());
    Settler::new(engine, env.provider_key.clone(), policy)
}

/// Policy of the settlement tests: poll receipts fast.
fn policy() -> SettlementPolicy {
    SettlementPolicy { receipt_poll: Duration::from_millis(100), ..SettlementPolicy::default() }
}

/// Pays vouchers `nonces` (each for its nonce in prices) on each channel through a gateway on
/// `data`, then stops it.
async fn pay_through_gateway(
    env: &Env,
    data: &std::path::Path,
    payments: &[(&Payer, B256, RangeInclusive<u64>)],
) {
    let gw = Gateway::start(env.gateway_config(upstream().await, data)).await;
    let client = reqwest::Client::new();
    for (payer, id, nonces) in payments {
        for n in nonces.clone() {
            served(&gw, &client, payer, *id, n, n * PRICE).await;
        }
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_settlement_broadcast_is_retried_and_an_rpc_failure_in_flight_resolved_once() {
    let env = Env::new().await;
    let proxy = RpcProxy::start(&env.anvil.endpoint()).await;
    let data = tempfile::tempdir().unwrap();
    let provider_key = env.provider_key.address();
    let provider_before = env.balance(provider_key).await;
    let a = env.fresh_payer(FUNDS).await;
    let ida = a.open(provider_key, DEPOSIT, 1).await;
    pay_through_gateway(&env, data.path(), &[(&a, ida, 1..=3)]).await;

    // 1. Every broadcast is lost on the way to the endpoint: the settler keeps sending the
    // stored transaction until one arrives, and it is mined once.
    proxy.lose_requests_with(Some("eth_sendRawTransaction"));
    let round = tokio::spawn({
        let settler = settler(&env, data.path(), &proxy.url(), policy());
        async move { settler.round(true).await }
    });
    eventually(30, "three lost broadcasts", || async { proxy.lost() >= 3 }).await;
    assert_eq!(env.channel(ida).await.paid, 0, "nothing arrived yet");
    proxy.lose_requests_with(None);
    let report = round.await.unwrap().expect("the round succeeds once broadcasts arrive");
    assert_eq!(report.batches.len(), 1, "{report:?}");
    let batch = &report.batches[0];
    assert!(batch.success && !batch.recovered && batch.kind == BatchKind::Settle, "{report:?}");
    assert_eq!(batch.applied, [ida]);
    assert_eq!(env.channel(ida).await.paid, u128::from(3 * PRICE));

    // 2. The endpoint fails after the broadcast, while the settler waits for the receipt: the
    // round fails, the transaction stays recorded in flight, and the next round finds it
    // mined instead of sending another.
    pay_through_gateway(&env, data.path(), &[(&a, ida, 4..=5)]).await;
    cheats::set_automine(&env.node_chain, false).await.unwrap();
    let broadcasts = proxy.count_requests_with("eth_sendRawTransaction");
    let round = tokio::spawn({
        let settler = settler(&env, data.path(), &proxy.url(), policy());
        async move { settler.round(true).await }
    });
    eventually(30, "the broadcast", || async { broadcasts.load(Ordering::SeqCst) >= 1 }).await;
    proxy.set_mode(Mode::Cut);
    assert!(round.await.unwrap().is_err(), "the round cannot see its receipt");
    cheats::mine(&env.node_chain, 1).await.unwrap();
    cheats::set_automine(&env.node_chain, true).await.unwrap();
    proxy.set_mode(Mode::Open);
    let sent_before = broadcasts.load(Ordering::SeqCst);
    let report = settler(&env, data.path(), &proxy.url(), policy()).round(false).await.unwrap();
    assert_eq!(report.batches.len(), 1, "{report:?}");
    assert!(report.batches[0].recovered && report.batches[0].success, "{report:?}");
    assert_eq!(broadcasts.load(Ordering::SeqCst), sent_before, "nothing sent again: it was mined");
    assert_eq!(env.channel(ida).await.paid, u128::from(5 * PRICE));
    let report = settler(&env, data.path(), &proxy.url(), policy()).round(true).await.unwrap();
    assert!(report.batches.is_empty(), "nothing is claimed twice: {report:?}");
    assert_eq!(env.balance(provider_key).await - provider_before, U256::from(5 * PRICE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gas_above_the_cap_settles_only_an_exit_about_to_end() {
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    let provider_key = env.provider_key.address();
    let provider_before = env.balance(provider_key).await;
    let exiting = env.fresh_payer(FUNDS).await;
    let idx = exiting.open_with_period(provider_key, DEPOSIT, 1, 3600).await;
    let other = env.fresh_payer(FUNDS).await;
    let idy = other.open(provider_key, DEPOSIT, 2).await;
    pay_through_gateway(&env, data.path(), &[(&exiting, idx, 1..=2), (&other, idy, 1..=2)]).await;
    // The payer of the first channel starts an exit (challenge period: one hour); the node
    // records it.
    exiting.channels().requestExit(exiting.params(idx)).send().await.unwrap().get_receipt().await.unwrap();
    {
        let gw = Gateway::start(env.gateway_config(upstream().await, data.path())).await;
        let client = reqwest::Client::new();
        let terms = gw.terms(&client).await;
        // The latest voucher again: its receipt until the node sees the exit, then closing.
        let latest = exiting.sign(idx, 2, 2 * PRICE);
        eventually(30, "the exit to reach the node", || async {
            {
                // (Before the exit reaches the node, a resend of the served voucher: its receipt.)
                let resp = gw.pay(&client, &terms, &latest).await;
                resp.status() != StatusCode::CONFLICT
                    && required(&resp).error == Some(ErrorCode::ChannelClosing)
            }
        })
        .await;
        gw.stop().await;
    }
    let rpc = env.anvil.endpoint();
    let capped =
        |exit_margin: Duration| SettlementPolicy { max_fee_per_gas: Some(1), exit_margin, ..policy() };

    // The exit ends in an hour, outside a one-minute margin: everything waits for gas.
    let report = settler(&env, data.path(), &rpc, capped(Duration::from_secs(60))).round(true).await.unwrap();
    assert!(report.batches.is_empty() && report.postponed == 2, "{report:?}");
    assert_eq!(
        (U256::from(env.channel(idx).await.paid), U256::from(env.channel(idy).await.paid)),
        (U256::ZERO, U256::ZERO)
    );

    // Within a two-hour margin the exit is urgent: it is closed with its latest voucher at any
    // gas price, and only the other channel waits.
    let report =
        settler(&env, data.path(), &rpc, capped(Duration::from_secs(7200))).round(true).await.unwrap();
    assert_eq!(report.postponed, 1, "{report:?}");
    assert_eq!(report.batches.len(), 1, "{report:?}");
    let batch = &report.batches[0];
    assert!(batch.success && batch.kind == BatchKind::Close && batch.applied == [idx], "{report:?}");
    assert_eq!(env.channel(idx).await.status, IPaymentChannel::Status::Closed);
    assert_eq!(env.balance(exiting.address()).await, U256::from(FUNDS - 2 * PRICE), "refunded the rest");
    assert_eq!(env.channel(idy).await.paid, 0, "postponed");

    // Once gas is below the cap, the rest is settled, and nothing twice.
    let report = settler(&env, data.path(), &rpc, policy()).round(true).await.unwrap();
    assert_eq!(report.batches.len(), 1, "{report:?}");
    assert_eq!(env.channel(idy).await.paid, u128::from(2 * PRICE));
    assert_eq!(env.balance(provider_key).await - provider_before, U256::from(4 * PRICE));
    let report = settler(&env, data.path(), &rpc, policy()).round(true).await.unwrap();
    assert!(report.batches.is_empty(), "{report:?}");
}

alloy::sol! {
    #[sol(rpc)]
    interface IERC1271Wallet {
        function owner() external view returns (address);
    }
}

/// A smart-wallet payer's vouchers are checked by asking the wallet on-chain (EIP-1271): while
/// the endpoint is down that is `unavailable`, which the client retries, not an invalid
/// signature, which it would take as final.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smart_wallet_voucher_during_an_outage_is_unavailable_not_invalid() {
    use alloy::{
        network::TransactionBuilder,
        rpc::types::TransactionRequest,
        signers::local::PrivateKeySigner,
        sol_types::{SolCall, SolValue},
    };
    use x402_protocol::{Voucher, wire::PaymentPayload};

    let env = Env::new().await;
    let owner = PrivateKeySigner::random();
    let wallet = x402_e2e::deploy(
        &env.node_chain,
        x402_e2e::creation_code("ERC1271Wallet.sol", "ERC1271Wallet"),
        &owner.address().abi_encode(),
    )
    .await
    .unwrap();
    assert_eq!(IERC1271Wallet::new(wallet, &env.node_chain).owner().call().await.unwrap(), owner.address());
    // The wallet opens a native-token channel (anvil lets the test act as the wallet).
    let unsigned = ProviderBuilder::new().connect_http(env.anvil.endpoint_url());
    let _: () = unsigned.raw_request("anvil_impersonateAccount".into(), (wallet,)).await.unwrap();
    let _: () =
        unsigned.raw_request("anvil_setBalance".into(), (wallet, U256::from(10u128.pow(20)))).await.unwrap();
    let params = IPaymentChannel::ChannelParams {
        payer: wallet,
        payee: env.provider_key.address(),
        token: alloy::primitives::Address::ZERO,
        signer: alloy::primitives::Address::ZERO,
        challengePeriod: 86_400,
        salt: B256::repeat_byte(9),
    };
    let id = IPaymentChannel::new(env.contract, &env.node_chain)
        .computeChannelId(params.clone())
        .call()
        .await
        .unwrap();
    let open = TransactionRequest::default()
        .with_from(wallet)
        .with_to(env.contract)
        .with_value(U256::from(DEPOSIT))
        .with_input(IPaymentChannel::openCall { params, deposit: U256::from(DEPOSIT) }.abi_encode());
    assert!(unsigned.send_transaction(open).await.unwrap().get_receipt().await.unwrap().status());

    let proxy = RpcProxy::start(&env.anvil.endpoint()).await;
    let data = tempfile::tempdir().unwrap();
    let mut config = env.gateway_config(upstream().await, data.path());
    config.payment.asset = alloy::primitives::Address::ZERO;
    // A wallet signer: the node must ask it on-chain, which it only does when told to.
    config.payment.accept_contract_signers = true;
    config.chain.rpc_url = proxy.url();
    config.chain.rpc_timeout_ms = 1_000;
    let gw = Gateway::start(config).await;
    let client = reqwest::Client::new();
    let terms = gw.terms(&client).await;
    let domain = env.domain();
    let header = |nonce: u64| {
        let v = domain
            .sign(&owner, Voucher { channelId: id, nonce, cumulativeAmount: U256::from(nonce * PRICE) })
            .unwrap();
        x402_protocol::wire::encode_header(&PaymentPayload::new(&terms, &v))
    };
    let url = format!("{}/weather", gw.url);
    assert_eq!(x402_e2e::harness::paid(&client, &url, header(1)).await.status(), StatusCode::OK);
    // A signer that is a contract without `isValidSignature` (the call reverts) signs nothing.
    let payer = env.fresh_payer(FUNDS).await;
    let reverting = IPaymentChannel::ChannelParams {
        payer: payer.address(),
        payee: env.provider_key.address(),
        token: alloy::primitives::Address::ZERO,
        signer: env.usd,
        challengePeriod: 86_400,
        salt: B256::repeat_byte(10),
    };
    let other = payer.channels().computeChannelId(reverting.clone()).call().await.unwrap();
    let receipt = payer
        .channels()
        .open(reverting, U256::from(DEPOSIT))
        .value(U256::from(DEPOSIT))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await;
    assert!(receipt.unwrap().status());
    let v = domain
        .sign(&owner, Voucher { channelId: other, nonce: 1, cumulativeAmount: U256::from(PRICE) })
        .unwrap();
    let resp = x402_e2e::harness::paid(
        &client,
        &url,
        x402_protocol::wire::encode_header(&PaymentPayload::new(&terms, &v)),
    )
    .await;
    assert_eq!(required(&resp).error, Some(ErrorCode::InvalidSignature));

    proxy.set_mode(Mode::Cut);
    let resp = x402_e2e::harness::paid(&client, &url, header(2)).await;
    assert_eq!(required(&resp).error, Some(ErrorCode::Unavailable));
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    proxy.set_mode(Mode::Open);
    assert_eq!(x402_e2e::harness::paid(&client, &url, header(2)).await.status(), StatusCode::OK);
    gw.stop().await;
}
