//! The watcher on anvil, with no provider node running: vouchers pushed to it are settled when
//! the payer exits, whatever the order of pushes and exits, and survive a restart.

use std::{sync::Arc, time::Duration};

use alloy::{
    primitives::{B256, U256},
    providers::Provider,
    signers::local::PrivateKeySigner,
};
use reqwest::StatusCode;
use x402_e2e::{
    account, cheats,
    harness::{Env, Payer, Watchtower, eventually, free_port},
};
use x402_node::{
    chain::RpcChain,
    watcher::{Guard, GuardSettings, Watcher, WatcherConfig, settlement_provider},
};
use x402_protocol::{
    bindings::IPaymentChannel,
    claim,
    watch::{ApiError, ApiErrorCode, WatchOutcome, WatchRequest, WatchedStatus, WatchedVoucher},
};
use x402_store::MemoryStore;

const DEPOSIT: u64 = 1_000_000;
const PERIOD: u32 = 3_600;
const TOKEN: &str = "watcher-e2e-token-0123456789";

/// A deployment (anvil account 0 is the payee) and a funded payer (account 1).
struct World {
    env: Env,
    payer: Payer,
}

impl World {
    async fn new() -> Self {
        let env = Env::new().await;
        let payer = env.payer(account(&env.anvil, 1), 10 * DEPOSIT).await;
        Self { env, payer }
    }

    /// Opens a token channel paying the payee, with a 1-hour challenge period.
    async fn open(&self, salt: u8) -> B256 {
        self.payer.open_with_period(self.env.provider_key.address(), DEPOSIT, salt, PERIOD).await
    }

    async fn request_exit(&self, id: B256) {
        let receipt = self
            .payer
            .channels()
            .requestExit(self.payer.params(id))
            .send()
            .await
            .expect("exit sent")
            .get_receipt()
            .await
            .expect("exit mined");
        assert!(receipt.status());
    }

    async fn paid(&self, id: B256) -> U256 {
        U256::from(self.env.channel(id).await.paid)
    }

    /// A voucher of `amount`, claimed whole with the payee's authorisation.
    fn sign(&self, id: B256, nonce: u64, amount: u64) -> WatchedVoucher {
        self.claim(id, nonce, amount, amount)
    }

    /// A voucher of `amount` of which the payee claims `claimed`, as the node pushes it.
    fn claim(&self, id: B256, nonce: u64, amount: u64, claimed: u64) -> WatchedVoucher {
        let voucher = self.payer.sign(id, nonce, amount);
        let claimed = U256::from(claimed);
        let payee_signature =
            claim::sign(&self.env.domain(), &self.env.provider_key, id, nonce, claimed).expect("signs");
        WatchedVoucher {
            channel_id: id,
            nonce,
            cumulative_amount: voucher.cumulative_amount(),
            signature: voucher.signature,
            claimed,
            payee_signature,
            params: self.payer.params(id),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_settles_the_best_voucher_when_the_payer_exits() {
    let world = World::new().await;
    let id = world.open(1).await;
    let watcher_key = account(&world.env.anvil, 2);
    let data = tempfile::tempdir().unwrap();
    let config = WatcherConfig {
        listen: free_port(),
        data_dir: data.path().into(),
        rpc_url: world.env.anvil.endpoint(),
        chain_id: Some(world.env.anvil.chain_id()),
        contract: world.env.contract,
        token: TOKEN.into(),
        poll_interval: Duration::from_millis(100),
        ..WatcherConfig::default()
    };
    let watcher = Watchtower::start(config.clone(), watcher_key.clone()).await;

    // Without the token, or with a wrong one: 401, and nothing is stored.
    for token in [None, Some("not-the-token-not-the-token")] {
        let resp = watcher.push(token, vec![world.sign(id, 1, 1_000)]).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(resp.json::<ApiError>().await.unwrap().error, ApiErrorCode::Unauthorized);
    }
    assert!(watcher.channels(TOKEN).await.is_empty());

    // The provider pushes its vouchers as it accepts them.
    let outcomes = watcher
        .push_ok(TOKEN, vec![world.sign(id, 1, 1_000), world.sign(id, 2, 2_000), world.sign(id, 3, 3_000)])
        .await;
    assert_eq!(outcomes, [WatchOutcome::Stored, WatchOutcome::Stored, WatchOutcome::Stored]);

    // A restart on the same data directory keeps them; a late, older voucher does not replace
    // the best one.
    watcher.stop().await;
    let watcher = Watchtower::start(config, watcher_key.clone()).await;
    let listed = watcher.channels(TOKEN).await;
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].nonce, listed[0].cumulative_amount), (3, U256::from(3_000)));
    assert_eq!(listed[0].status, WatchedStatus::Open);
    assert_eq!(
        watcher.push_ok(TOKEN, vec![world.sign(id, 2, 2_000)]).await,
        [WatchOutcome::Kept { held_nonce: 3, held_amount: U256::from(3_000) }]
    );

    // The provider is gone; the payer tries to leave without paying.
    world.request_exit(id).await;
    eventually(10, "the watcher to settle the best voucher", || async {
        world.paid(id).await == U256::from(3_000)
    })
    .await;
    eventually(5, "the watcher to record the settlement", || async {
        watcher.channels(TOKEN).await[0].paid == U256::from(3_000)
    })
    .await;
    let listed = watcher.channels(TOKEN).await;
    assert_eq!(listed[0].status, WatchedStatus::Exiting);
    assert_eq!(listed[0].paid, U256::from(3_000));
    assert!(listed[0].last_tx.is_some());
    // The sender's counters, the missed-deadline alert among them, are exported.
    let metrics = reqwest::get(format!("{}/metrics", watcher.url)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("x402_txs_sent_total{sender=\"watcher\"} 1"), "{metrics}");
    assert!(metrics.contains("x402_tx_missed_deadlines_total{sender=\"watcher\"} 0"), "{metrics}");
    watcher.stop().await;

    // After the challenge period the payer withdraws the rest.
    cheats::increase_time(&world.payer.chain, u64::from(PERIOD) + 1).await.unwrap();
    let receipt = world
        .payer
        .channels()
        .withdraw(world.payer.params(id))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(receipt.status());
    assert_eq!(world.env.balance(world.env.provider_key.address()).await, U256::from(3_000));
    assert_eq!(world.env.balance(world.payer.address()).await, U256::from(10 * DEPOSIT - 3_000));
    assert_eq!(world.env.balance(world.env.contract).await, U256::ZERO);
    // The watcher paid the gas and got nothing.
    assert_eq!(world.env.balance(watcher_key.address()).await, U256::ZERO);
    let eth = world.payer.chain.get_balance(watcher_key.address()).await.unwrap();
    assert!(eth < U256::from(10_000u64) * U256::from(10u64).pow(U256::from(18)), "gas was paid");
}

/// The guard driven round by round: a voucher pushed after its channel's exit was already
/// scanned is still settled, a failed settlement is retried, several channels go in one
/// `settleMany`, and nothing is sent once the challenge period is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_settles_late_pushes_retries_and_batches() {
    let world = World::new().await;
    let (a, b, c) = (world.open(1).await, world.open(2).await, world.open(3).await);

    // A watcher account without funds: its first settlement cannot be paid for.
    let key = PrivateKeySigner::random();
    let chain = settlement_provider(&world.env.anvil.endpoint()).unwrap();
    let store = Arc::new(MemoryStore::new());
    let new_watcher = || {
        Watcher::new(
            world.env.anvil.chain_id(),
            world.env.contract,
            TOKEN,
            Arc::clone(&store),
            RpcChain::new(chain.clone(), world.env.contract),
        )
        .unwrap()
    };
    let watcher = new_watcher();
    let guard = Guard::new(watcher.clone(), chain.clone(), key.clone(), GuardSettings::default());
    let push = |vouchers: Vec<WatchedVoucher>| {
        let watcher = watcher.clone();
        async move {
            let response = watcher.watch(WatchRequest { vouchers }).await.unwrap();
            response.results.into_iter().map(|r| r.outcome).collect::<Vec<_>>()
        }
    };

    assert_eq!(push(vec![world.sign(a, 1, 1_000)]).await, [WatchOutcome::Stored]);
    let report = guard.tick().await.unwrap();
    assert_eq!((report.settled.len(), report.failures), (0, 0));
    assert_eq!(report.rechecked, 1, "a's first voucher queues a re-read");

    // Both payers exit; only a is watched so far.
    world.request_exit(a).await;
    world.request_exit(b).await;
    let report = guard.tick().await.unwrap();
    assert!(report.settled.is_empty());
    assert_eq!(report.failures, 1, "a is due, but the watcher cannot pay for gas");
    assert_eq!(report.scanned_to, Some(report.head));
    assert_eq!(world.paid(a).await, U256::ZERO);

    // b's voucher arrives after its exit was scanned; the watcher is funded.
    assert_eq!(push(vec![world.sign(b, 2, 2_000)]).await, [WatchOutcome::Stored]);
    let _: () = chain
        .raw_request("anvil_setBalance".into(), (key.address(), U256::from(10u128.pow(18))))
        .await
        .unwrap();
    let report = guard.tick().await.unwrap();
    assert_eq!(report.failures, 0);
    let mut settled: Vec<_> = report.settled.iter().map(|s| (s.channel_id, s.paid, s.payout)).collect();
    settled.sort();
    let mut expected =
        vec![(a, U256::from(1_000), U256::from(1_000)), (b, U256::from(2_000), U256::from(2_000))];
    expected.sort();
    assert_eq!(settled, expected);
    assert_eq!(report.settled[0].tx, report.settled[1].tx, "one settleMany for both");
    assert_eq!((world.paid(a).await, world.paid(b).await), (U256::from(1_000), U256::from(2_000)));

    // Nothing more to do for them.
    let report = guard.tick().await.unwrap();
    assert_eq!((report.settled.len(), report.failures), (0, 0));

    // A better voucher for a, pushed late in the period, is settled on top.
    assert_eq!(push(vec![world.sign(a, 5, 1_500)]).await, [WatchOutcome::Stored]);
    let report = guard.tick().await.unwrap();
    assert_eq!(report.settled.len(), 1);
    assert_eq!((report.settled[0].paid, report.settled[0].payout), (U256::from(1_500), U256::from(500)));

    // c exits and its period ends before the watcher hears of it: nothing can be sent.
    world.request_exit(c).await;
    cheats::increase_time(&world.payer.chain, u64::from(PERIOD) + 1).await.unwrap();
    assert_eq!(push(vec![world.sign(c, 1, 700)]).await, [WatchOutcome::Stored]);
    let report = guard.tick().await.unwrap();
    assert_eq!((report.settled.len(), report.failures), (0, 0));
    assert_eq!(world.paid(c).await, U256::ZERO);

    // A restarted watcher re-reads every open channel and knows where it stopped.
    drop(guard);
    let restarted = new_watcher();
    let guard = Guard::new(restarted.clone(), chain.clone(), key.clone(), GuardSettings::default());
    let report = guard.tick().await.unwrap();
    assert_eq!(report.rechecked, 3);
    assert_eq!((report.settled.len(), report.failures), (0, 0));
    let records = restarted.channels().unwrap();
    assert!(records.iter().all(|r| r.exiting()));
    assert_eq!(world.env.balance(world.env.provider_key.address()).await, U256::from(3_500));
}

/// Only the payee authorises claims: during an exit a stranger holding a voucher cannot claim
/// it (`NotPayee`), nor with a claim authorisation it signed itself; the watcher's payee-signed
/// claim of what the provider charged (below the voucher's ceiling) lands, and a payer's top-up
/// that cancels the exit does not void it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_payee_authorised_claims_land_and_a_top_up_does_not_void_them() {
    let world = World::new().await;
    let id = world.open(1).await;
    let key = account(&world.env.anvil, 2);
    // The stranger's own wallet (the watcher's reads need none).
    let chain = alloy::providers::ProviderBuilder::new()
        .wallet(alloy::network::EthereumWallet::from(key.clone()))
        .connect_http(world.env.anvil.endpoint_url())
        .erased();
    let watcher = Watcher::new(
        world.env.anvil.chain_id(),
        world.env.contract,
        TOKEN,
        Arc::new(MemoryStore::new()),
        RpcChain::new(chain.clone(), world.env.contract),
    )
    .unwrap();
    // The provider charged 1,000 of a voucher of 5,000 (the rest was prepaid credit).
    let pushed = world.claim(id, 4, 5_000, 1_000);
    let response = watcher.watch(WatchRequest { vouchers: vec![pushed.clone()] }).await.unwrap();
    assert_eq!(response.results[0].outcome, WatchOutcome::Stored);
    world.request_exit(id).await;

    let record = watcher.record(id).unwrap().expect("watched");
    let claim = record.claim();
    assert_eq!((claim.cumulativeAmount, claim.claimed), (U256::from(5_000), U256::from(1_000)));
    let stranger = IPaymentChannel::new(world.env.contract, &chain);
    // A stranger cannot claim the voucher's ceiling (or anything) without the payee.
    let full = IPaymentChannel::Claim { claimed: claim.cumulativeAmount, ..claim.clone() };
    let Err(err) = stranger.settle(full.clone()).call().await else { panic!("a stranger settled") };
    let decoded = err.as_decoded_interface_error::<IPaymentChannel::IPaymentChannelErrors>();
    assert!(matches!(decoded, Some(IPaymentChannel::IPaymentChannelErrors::NotPayee(_))), "{err}");
    // Nor with an authorisation of its own, nor by raising the payee-signed amount.
    let forged = claim::sign(&world.env.domain(), &key, id, 4, U256::from(5_000)).unwrap();
    let Err(err) = stranger.settleAuthorized(full.clone(), forged).call().await else { panic!("forged") };
    let decoded = err.as_decoded_interface_error::<IPaymentChannel::IPaymentChannelErrors>();
    assert!(
        matches!(decoded, Some(IPaymentChannel::IPaymentChannelErrors::InvalidClaimAuthorization(_))),
        "{err}"
    );
    let Err(err) = stranger.settleAuthorized(full, record.payee_signature.clone()).call().await else {
        panic!("raised above the authorisation")
    };
    let decoded = err.as_decoded_interface_error::<IPaymentChannel::IPaymentChannelErrors>();
    assert!(
        matches!(decoded, Some(IPaymentChannel::IPaymentChannelErrors::InvalidClaimAuthorization(_))),
        "{err}"
    );

    // The payer tops up by 1 unit, cancelling the exit, before the watcher's claim is mined.
    let receipt = world
        .payer
        .channels()
        .topUp(world.payer.params(id), U256::from(1))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(receipt.status());
    assert_eq!(world.env.channel(id).await.exitAt.to::<u64>(), 0, "the exit is cancelled");
    // The payee-signed claim does not depend on the exit: it lands, for exactly the charge.
    let receipt = stranger
        .settleAuthorized(claim, record.payee_signature.clone())
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(receipt.status());
    assert_eq!(world.paid(id).await, U256::from(1_000));
    assert_eq!(world.env.balance(world.env.provider_key.address()).await, U256::from(1_000));
}

/// A gas-price spike while an exit is pending: the watcher's first claim is priced for the
/// base fee before the spike and cannot be mined; the sender replaces it with fees the new
/// base fee allows, and the claim lands, for exactly the charge, before the exit ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_underpriced_by_a_gas_spike_is_replaced_and_lands_before_the_exit_ends() {
    let world = World::new().await;
    let id = world.open(1).await;
    let key = account(&world.env.anvil, 2);
    let chain = settlement_provider(&world.env.anvil.endpoint()).unwrap();
    let watcher = Watcher::new(
        world.env.anvil.chain_id(),
        world.env.contract,
        TOKEN,
        Arc::new(MemoryStore::new()),
        RpcChain::new(chain.clone(), world.env.contract),
    )
    .unwrap();
    let settings = GuardSettings {
        sender: x402_chain::SenderConfig {
            resend_after: Duration::from_secs(2),
            receipt_poll: Duration::from_millis(100),
            ..x402_chain::SenderConfig::DEFAULT
        },
        receipt_timeout: Duration::from_secs(60),
        ..GuardSettings::default()
    };
    let guard = Arc::new(Guard::new(watcher.clone(), chain.clone(), key, settings));
    let pushed = world.claim(id, 3, 4_000, 3_000);
    assert_eq!(
        watcher.watch(WatchRequest { vouchers: vec![pushed] }).await.unwrap().results[0].outcome,
        WatchOutcome::Stored
    );
    guard.tick().await.unwrap();
    world.request_exit(id).await;
    let exit_at = world.env.channel(id).await.exitAt.to::<u64>();

    // Blocks are mined only on demand: the claim waits in the mempool.
    cheats::set_automine(&chain, false).await.unwrap();
    let round = tokio::spawn({
        let guard = Arc::clone(&guard);
        async move { guard.tick().await }
    });
    let mut first = None;
    eventually(30, "the claim is sent", || {
        let found = guard.sender().in_flight().unwrap().first().cloned();
        let sent = found.is_some();
        first = found;
        async move { sent }
    })
    .await;
    let first = first.expect("in flight");
    let v1 = first.versions[0].clone();
    // The spike: the next block's base fee is 50 times what the claim may pay.
    cheats::set_next_base_fee(&chain, v1.fees.max_fee_per_gas * 50).await.unwrap();
    cheats::mine(&chain, 1).await.unwrap();
    assert!(
        chain.get_transaction_receipt(v1.hash).await.unwrap().is_none(),
        "the underpriced claim was not mined"
    );
    cheats::set_interval_mining(&chain, 1).await.unwrap();

    let report = round.await.unwrap().unwrap();
    cheats::set_interval_mining(&chain, 0).await.unwrap();
    cheats::set_automine(&chain, true).await.unwrap();
    assert_eq!(report.settled.len(), 1, "{report:?}");
    let settled = &report.settled[0];
    assert_eq!((settled.channel_id, settled.paid), (id, U256::from(3_000)));
    assert_ne!(settled.tx, v1.hash, "a replacement was mined, not the underpriced claim");
    assert!(guard.sender().metrics().replaced.get() >= 1);
    let receipt = chain.get_transaction_receipt(settled.tx).await.unwrap().expect("mined");
    let block = chain.get_block_by_number(receipt.block_number.unwrap().into()).await.unwrap().unwrap();
    assert!(block.header.timestamp < exit_at, "landed before the exit ends");
    assert!(receipt.effective_gas_price > v1.fees.max_fee_per_gas, "paid the spiked base fee");
    assert_eq!(world.paid(id).await, U256::from(3_000));
    assert!(guard.sender().in_flight().unwrap().is_empty(), "nothing left in flight");
    assert_eq!(guard.sender().metrics().missed_deadline.get(), 0);
}

/// Chain faults during an exit, through a TCP proxy in front of the watcher's RPC: while the
/// endpoint is cut or hangs, rounds fail fast (the RPC timeout) and nothing is lost; a claim
/// already sent when the endpoint is cut is found in flight and resolved once it is back, not
/// sent again; with slow answers the guard still settles, before the exit ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_rides_out_a_cut_hung_and_slow_rpc_during_an_exit() {
    use crate::proxy::{Mode, RpcProxy};

    let world = World::new().await;
    let (a, b) = (world.open(1).await, world.open(2).await);
    let key = account(&world.env.anvil, 2);
    let proxy = RpcProxy::start(&world.env.anvil.endpoint()).await;
    let chain = x402_chain::rpc::http_provider(&proxy.url(), Duration::from_secs(2)).unwrap();
    let direct = &world.payer.chain;
    let watcher = Watcher::new(
        world.env.anvil.chain_id(),
        world.env.contract,
        TOKEN,
        Arc::new(MemoryStore::new()),
        RpcChain::new(chain.clone(), world.env.contract),
    )
    .unwrap();
    let settings = GuardSettings {
        sender: x402_chain::SenderConfig {
            resend_after: Duration::from_secs(2),
            receipt_poll: Duration::from_millis(100),
            ..x402_chain::SenderConfig::DEFAULT
        },
        receipt_timeout: Duration::from_secs(20),
        ..GuardSettings::default()
    };
    let guard = Arc::new(Guard::new(watcher.clone(), chain.clone(), key, settings));
    let pushed = vec![world.claim(a, 2, 3_000, 2_500), world.claim(b, 1, 1_000, 1_000)];
    let response = watcher.watch(WatchRequest { vouchers: pushed }).await.unwrap();
    assert!(response.results.iter().all(|r| r.outcome == WatchOutcome::Stored));
    guard.tick().await.unwrap();
    world.request_exit(a).await;
    let exit_at = world.env.channel(a).await.exitAt.to::<u64>();

    // Cut: the round fails at once; hung: it fails after the RPC timeout, not never.
    proxy.set_mode(Mode::Cut);
    assert!(guard.tick().await.is_err());
    proxy.set_mode(Mode::Hang);
    let started = std::time::Instant::now();
    assert!(guard.tick().await.is_err());
    assert!(started.elapsed() < Duration::from_secs(15), "a hung RPC held the round {:?}", started.elapsed());
    assert_eq!(world.paid(a).await, U256::ZERO);

    // Back, but the claim is sent just before the endpoint is cut again: the round cannot
    // follow it, and the claim is mined meanwhile.
    proxy.set_mode(Mode::Open);
    cheats::set_automine(direct, false).await.unwrap();
    let round = tokio::spawn({
        let guard = Arc::clone(&guard);
        async move { guard.tick().await }
    });
    eventually(30, "the claim is sent", || {
        let sent = !guard.sender().in_flight().unwrap().is_empty();
        async move { sent }
    })
    .await;
    proxy.set_mode(Mode::Cut);
    cheats::mine(direct, 1).await.unwrap();
    cheats::set_automine(direct, true).await.unwrap();
    let report = round.await.unwrap().unwrap();
    assert!(report.settled.is_empty() && report.failures > 0, "{report:?}");
    assert_eq!(world.paid(a).await, U256::from(2_500), "mined while the watcher could not see it");
    assert_eq!(guard.sender().in_flight().unwrap().len(), 1, "still in flight for the watcher");

    // Slow answers: the next round resolves the claim in flight (reported, not sent again),
    // then settles b's exit too.
    proxy.set_mode(Mode::Open);
    proxy.set_delay(Duration::from_millis(300));
    let sent_before = guard.sender().metrics().sent.get();
    let report = guard.tick().await.unwrap();
    assert_eq!(
        report.settled.iter().map(|s| (s.channel_id, s.paid)).collect::<Vec<_>>(),
        [(a, U256::from(2_500))]
    );
    assert_eq!(guard.sender().metrics().sent.get(), sent_before, "resolved, not sent again");
    assert!(guard.sender().in_flight().unwrap().is_empty());
    world.request_exit(b).await;
    let report = guard.tick().await.unwrap();
    assert_eq!(
        report.settled.iter().map(|s| (s.channel_id, s.paid)).collect::<Vec<_>>(),
        [(b, U256::from(1_000))]
    );
    assert_eq!((world.paid(a).await, world.paid(b).await), (U256::from(2_500), U256::from(1_000)));
    assert!(cheats::now(direct).await.unwrap() < exit_at);
}
