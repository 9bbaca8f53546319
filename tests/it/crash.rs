//! Crash under load: the real `x402-node` binary serves paying clients (`x402_client::Client`)
//! on anvil, settling in the background, and is killed with SIGKILL at random moments, then
//! restarted on the same data directory, again and again.
//!
//! What must hold:
//! - nothing lost: every paid response a client received (200 with a `PAYMENT-RESPONSE`) has
//!   its voucher, or a later one, and at least the charge it reported in the node's store after
//!   every restart and at the end;
//! - clients continue their channels: no refusal other than the node being unreachable for a
//!   moment, which the load loop retries once the node answers again;
//! - no overpayment: each channel closes at exactly what the node charged, which is one price
//!   per request the node committed: at least the responses received, at most those plus the
//!   requests cut off by a kill, and never more than the upstream served.
//!
//! The kill schedule is random; `X402_CRASH_SEED` replays one.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use alloy::primitives::{B256, U256};
use parking_lot::Mutex;
use rand::{Rng, SeedableRng, rngs::StdRng};
use x402_client::{Client, DepositPolicy, Error, Limits, Settings};
use x402_e2e::harness::{ADMIN, Env, PRICE};
use x402_node::book::ChannelBook;
use x402_protocol::{
    bindings::IPaymentChannel,
    wire::{self, SettlementResponse},
};
use x402_store::SledStore;

use crate::process::{NodeProcess, node_command};

/// SIGKILLs of the node under load.
const KILLS: usize = 24;
/// Paid requests each worker makes after the last restart, before the channels are closed.
const AFTER_LAST_KILL: usize = 5;
const FUNDS: u64 = 1_000_000 * PRICE;

/// What the clients saw, per channel: the highest voucher and charge the node reported paid.
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    received: u64,
    nonce: u64,
    cumulative: U256,
    total_charged: U256,
}

#[derive(Debug, Default)]
struct Ledger {
    channels: HashMap<B256, Seen>,
    /// Per client: requests that ended in a transport error (the node was killed under them).
    cut_off: HashMap<usize, u64>,
}

impl Ledger {
    fn paid(&mut self, s: &SettlementResponse) {
        let seen = self.channels.entry(s.extra.as_ref().expect("channel extra").channel_id).or_default();
        seen.received += 1;
        seen.nonce = seen.nonce.max(s.extra.as_ref().expect("channel extra").nonce);
        seen.cumulative = seen.cumulative.max(s.extra.as_ref().expect("channel extra").cumulative_amount);
        seen.total_charged = seen.total_charged.max(s.extra.as_ref().expect("channel extra").total_charged);
    }
}

/// A small upstream that counts the requests it served per client (`x-client` header).
async fn counting_upstream() -> (std::net::SocketAddr, Arc<Mutex<HashMap<String, u64>>>) {
    use axum::{Router, http::HeaderMap, routing::get};
    let counts = Arc::new(Mutex::new(HashMap::<String, u64>::new()));
    let seen = Arc::clone(&counts);
    let app = Router::new().route(
        "/weather",
        get(move |headers: HeaderMap| {
            let seen = Arc::clone(&seen);
            async move {
                let client = headers.get("x-client").and_then(|v| v.to_str().ok()).unwrap_or("?").to_owned();
                *seen.lock().entry(client).or_default() += 1;
                "sunny"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, counts)
}

/// Waits until the node answers `/healthz` again.
async fn until_up(http: &reqwest::Client, url: &str) {
    for _ in 0..600 {
        if http.get(format!("{url}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the node did not come back within 30 s");
}

/// One load worker: paid `GET /weather` requests through `client` until `stop` is set and it
/// made `AFTER_LAST_KILL` more. Transport errors (the node was killed) are retried once the
/// node is back; any other error fails the test.
async fn worker(
    id: usize,
    client: Client,
    url: String,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let mut after_stop = 0;
    let mut received = 0;
    while after_stop < AFTER_LAST_KILL {
        let stopping = stop.load(Ordering::Acquire);
        let request =
            http.get(format!("{url}/weather")).header("x-client", id.to_string()).build().expect("request");
        match client.execute(request).await {
            Ok(response) => {
                assert_eq!(response.status(), reqwest::StatusCode::OK, "client {id}: only paid answers");
                let header = response
                    .headers()
                    .get(wire::PAYMENT_RESPONSE)
                    .unwrap_or_else(|| panic!("client {id}: a 200 without PAYMENT-RESPONSE"));
                let settled: SettlementResponse = wire::decode_header(header.as_bytes()).expect("decodes");
                ledger.lock().paid(&settled);
                received += 1;
                // The body may be cut off by a kill; the payment was made durable before the
                // headers were sent.
                let _ = response.bytes().await;
                if stopping {
                    after_stop += 1;
                }
            }
            // A kill: the connection was refused, timed out or was cut mid-request.
            Err(Error::Unreachable { .. }) => {
                *ledger.lock().cut_off.entry(id).or_default() += 1;
                until_up(&http, &url).await;
            }
            Err(e) => panic!("client {id}: refused or failed after {received} paid requests: {e}"),
        }
    }
    received
}

/// The node's channel records through `GET /admin/channels`: id → (nonce, charged).
async fn admin_channels(http: &reqwest::Client, url: &str) -> HashMap<B256, (u64, U256)> {
    let resp = http.get(format!("{url}/admin/channels")).bearer_auth(ADMIN).send().await.expect("admin");
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    let list: Vec<serde_json::Value> = resp.json().await.expect("a channel list");
    list.iter()
        .map(|c| {
            let id: B256 = c["id"].as_str().expect("id").parse().expect("an id");
            let charged: U256 = c["charged"].as_str().expect("charged").parse().expect("an amount");
            (id, (c["nonce"].as_u64().expect("nonce"), charged))
        })
        .collect()
}

/// Checks that the store holds, for every channel, at least what the clients were told was
/// paid. Returns how many paid responses that covers.
fn check_nothing_lost(seen: &HashMap<B256, Seen>, stored: &HashMap<B256, (u64, U256)>, when: &str) -> u64 {
    let mut responses = 0;
    for (id, s) in seen {
        let (nonce, charged) = stored.get(id).copied().unwrap_or_else(|| panic!("{when}: channel {id} lost"));
        assert!(
            nonce >= s.nonce,
            "{when}: channel {id}: store at nonce {nonce}, a client was served {}",
            s.nonce
        );
        assert!(
            charged >= s.total_charged,
            "{when}: channel {id}: store charged {charged}, a client was told {}",
            s.total_charged
        );
        responses += s.received;
    }
    responses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_killed_under_load_loses_nothing_and_overcharges_nobody() {
    tokio::time::timeout(Duration::from_secs(170), crash_under_load()).await.expect("finishes within 170 s");
}

async fn crash_under_load() {
    let seed =
        std::env::var("X402_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let env = Env::new().await;
    // Blocks every 200 ms instead of one per transaction, so that settlement transactions stay
    // in flight for a while and some kills land between their broadcast and their receipt.
    x402_e2e::cheats::set_automine(&env.node_chain, false).await.expect("automine off");
    let miner = tokio::spawn({
        let chain = env.node_chain.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = x402_e2e::cheats::mine(&chain, 1).await;
            }
        }
    });
    let (api, upstream_counts) = counting_upstream().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut config = env.with_provider_key(env.gateway_config(api, &data), dir.path());
    // No RPC call at start; settle in the background every second once a channel owes 20
    // prices, so that kills also land in settlement rounds.
    config.chain.chain_id = Some(env.anvil.chain_id());
    config.settlement.interval_secs = 1;
    config.settlement.threshold = U256::from(20 * PRICE);
    let url = format!("http://{}", config.listen);
    let config_file = dir.path().join("node.toml");
    std::fs::write(&config_file, toml::to_string(&config).expect("renders")).expect("writes");
    let start = || {
        let mut cmd = node_command();
        cmd.arg("--config").arg(&config_file).arg("run").env("RUST_LOG", "info");
        NodeProcess::spawn(cmd, dir.path(), "node")
    };
    let mut node = start();
    node.wait_serving(&url).await;

    let provider = env.provider_key.address();
    let provider_before = env.balance(provider).await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    // Three payers; the third sends two requests at a time on its one channel.
    let mut clients = Vec::new();
    for i in 0..3 {
        let key = env.fresh_key(FUNDS).await;
        let payer = key.address();
        let client = Client::builder(key)
            .rpc(env.anvil.endpoint())
            .limits(Limits::from_units(u128::from(10 * PRICE), u128::from(FUNDS), u128::from(FUNDS)))
            .deposit_policy(DepositPolicy { requests: 100, ..DepositPolicy::default() })
            .settings(Settings { backoff: Duration::from_millis(50), ..Settings::default() })
            .state_dir(dir.path().join(format!("client-{i}")))
            .http_client(reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client"))
            .build()
            .await
            .expect("client");
        clients.push((client, payer));
    }
    let mut workers = Vec::new();
    for (i, (client, _)) in clients.iter().enumerate() {
        for _ in 0..if i == 2 { 2 } else { 1 } {
            workers.push(tokio::spawn(worker(
                i,
                client.clone(),
                url.clone(),
                Arc::clone(&ledger),
                Arc::clone(&stop),
            )));
        }
    }

    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let mut store_checks = 0;
    for kill in 1..=KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..900))).await;
        node.kill();
        // Clients hit a dead node for a moment.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        node = start();
        node.wait_serving(&url).await;
        // Everything received so far was served by an earlier run (or by this one, which
        // stores before it answers): the store must hold all of it.
        let seen = ledger.lock().channels.clone();
        let stored = admin_channels(&http, &url).await;
        check_nothing_lost(&seen, &stored, &format!("after kill {kill}"));
        store_checks += seen.len();
    }
    stop.store(true, Ordering::Release);
    let mut received = 0;
    for w in workers {
        received += w.await.expect("worker");
    }

    // Every channel closes at exactly what the node charged, which is what the last receipt
    // said: no request was made after it.
    let seen = ledger.lock().channels.clone();
    let stored = admin_channels(&http, &url).await;
    let checked = check_nothing_lost(&seen, &stored, "after the run");
    store_checks += seen.len();
    assert_eq!(seen.len(), clients.len(), "every client was paid for");
    assert_eq!(checked, received, "every paid response is in the ledger");
    let mut finals = HashMap::new();
    let mut revenue = U256::ZERO;
    for (client, payer) in &clients {
        let channels = client.channels().await;
        assert_eq!(channels.len(), 1, "one channel per client, kept through every restart");
        let id = channels[0].id;
        assert!(env.channel(id).await.paid > 0, "channel {id} was settled while the node was being killed");
        let closed = client.close(id, None).await.expect("cooperative close");
        let s = seen[&id];
        assert_eq!(closed.final_amount, s.total_charged, "channel {id} closes at what the last receipt said");
        assert_eq!(closed.final_amount, stored[&id].1, "channel {id} closes at what the node charged");
        x402_e2e::harness::eventually(30, "the channel to be closed on-chain", || async {
            env.channel(id).await.status == IPaymentChannel::Status::Closed
        })
        .await;
        assert_eq!(
            env.balance(*payer).await,
            U256::from(FUNDS) - closed.final_amount,
            "payer refunded the rest"
        );
        revenue += closed.final_amount;
        finals.insert(id, closed.final_amount);
    }
    assert_eq!(
        env.balance(provider).await - provider_before,
        revenue,
        "the provider got exactly what was charged"
    );
    node.kill();
    miner.abort();

    // The store, read directly, agrees; every charge is one price per request the node served.
    let book = ChannelBook::new(std::sync::Arc::new(SledStore::open(&data).expect("opens the node's store")));
    let counts = upstream_counts.lock().clone();
    let cut_off = ledger.lock().cut_off.clone();
    let mut lines = Vec::new();
    for (i, (client, _)) in clients.iter().enumerate() {
        let id = client.channels().await[0].id;
        let record = book.get(id).expect("store").expect("a record");
        let s = seen[&id];
        let latest = record.latest.as_ref().expect("a voucher");
        assert!(
            latest.nonce >= s.nonce && latest.cumulative_amount >= s.cumulative,
            "channel {id}: voucher kept"
        );
        assert_eq!(record.charged(), finals[&id], "channel {id}: the store's charge is the closing amount");
        assert_eq!(record.charged() % U256::from(PRICE), U256::ZERO, "whole prices only");
        let charged = record.charged().to::<u64>() / PRICE;
        let cut = cut_off.get(&i).copied().unwrap_or(0);
        let served = counts.get(&i.to_string()).copied().unwrap_or(0);
        assert!(charged >= s.received, "channel {id}: {charged} charged for {} responses", s.received);
        assert!(
            charged <= s.received + cut,
            "channel {id}: {charged} charged, {} received, {cut} cut off by kills",
            s.received
        );
        assert!(charged <= served, "channel {id}: {charged} charged, the upstream served {served}");
        lines.push(format!(
            "client {i}: {} paid responses, {cut} requests cut off by kills, {} charged without a response, {served} served upstream",
            s.received,
            charged - s.received
        ));
    }
    let log = node.stderr_text();
    let recovered = log.matches("resolving a settlement left in flight").count();
    let settlements = log.matches("settlement mined").count();
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "crash under load (seed {seed}): {KILLS} SIGKILLs, each followed by a restart on the same \
             data directory; {received} paid responses received, all {checked} found in the store \
             ({store_checks} channel checks after restarts); {settlements} settlement transactions, \
             {recovered} resolved after a kill\n  {}",
            lines.join("\n  ")
        );
    }
}
