//! The settlement benchmark: rounds over `due` channels that owe the provider, in a store of
//! `store` channels (the rest settled, owing nothing), against a real contract on anvil. It
//! measures what issue 17 asked to scale: the index build (one scan, once), the time of the
//! rounds, and the RPC calls they make (counted by a JSON-RPC proxy in front of anvil), with
//! the store's bytes per channel.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, atomic::AtomicU64},
    time::{Duration, Instant},
};

use alloy::{
    network::TransactionBuilder,
    node_bindings::Anvil,
    primitives::{Address, Bytes, U256, keccak256},
    providers::Provider,
    rpc::types::TransactionRequest,
    signers::local::PrivateKeySigner,
    sol_types::SolCall,
};
use axum::{Router, extract::State, routing::post};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use x402_node::{
    Engine, Terms,
    book::ChannelBook,
    chain::{RpcChain, http_provider},
    channel::{ChannelRecord, OnchainChannel, StoredVoucher},
    metrics::Metrics,
    settle::{SettlementPolicy, Settler},
};
use x402_protocol::{ChannelDomain, Voucher, bindings::IPaymentChannel};
use x402_store::{KvStore, SledStore};

use crate::report::note;

/// What one settlement benchmark measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettleFigures {
    /// Channels in the store.
    pub store_channels: u64,
    /// Of those, channels owing the provider (opened on anvil, each with a voucher).
    pub due_channels: u64,
    /// The most channels in one transaction.
    pub max_batch: usize,
    /// Seconds to build the book's index (one scan of the store, once per start).
    pub index_seconds: f64,
    /// Rounds until nothing was owed.
    pub rounds: usize,
    /// Seconds of those rounds (planning, simulations, transactions, receipts, records).
    pub round_seconds: f64,
    /// Channels settled on-chain.
    pub settled: usize,
    /// JSON-RPC calls the rounds made, in total and per method.
    pub rpc_calls: u64,
    /// Per method.
    pub rpc_by_method: BTreeMap<String, u64>,
    /// Gas of the settlement transactions.
    pub gas_used: u64,
    /// The store's size on disk divided by its channels.
    pub disk_bytes_per_channel: f64,
    /// The encoded record of a channel with a voucher.
    pub record_bytes: usize,
    /// Wall time of the whole benchmark (anvil, opening the channels, writing the store, the
    /// index and the rounds), seconds.
    #[serde(default)]
    pub seconds: f64,
}

/// A JSON-RPC proxy counting calls per method.
#[derive(Clone, Debug)]
struct Counter {
    upstream: String,
    http: alloy::transports::http::reqwest::Client,
    calls: Arc<parking_lot::Mutex<BTreeMap<String, u64>>>,
    total: Arc<AtomicU64>,
}

async fn forward(State(c): State<Counter>, body: axum::body::Bytes) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) {
        let calls = match &value {
            serde_json::Value::Array(items) => items.clone(),
            one => vec![one.clone()],
        };
        let mut counts = c.calls.lock();
        for call in calls {
            let method = call["method"].as_str().unwrap_or("?").to_owned();
            *counts.entry(method).or_default() += 1;
            c.total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let sent =
        c.http.post(&c.upstream).header("content-type", "application/json").body(body.to_vec()).send().await;
    match sent {
        Ok(resp) => {
            let bytes = resp.bytes().await.unwrap_or_default();
            ([(axum::http::header::CONTENT_TYPE, "application/json")], bytes.to_vec()).into_response()
        }
        Err(e) => (axum::http::StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

/// Runs the benchmark in `dir` with anvil from `anvil_path` and the contract artifacts of
/// `x402_devnet`.
pub async fn run(
    anvil_path: &Path,
    dir: &Path,
    store_channels: u64,
    due: u64,
    max_batch: usize,
) -> eyre::Result<SettleFigures> {
    let anvil = Anvil::new()
        .path(anvil_path)
        .args(["--gas-limit", "3000000000", "--disable-code-size-limit"])
        .try_spawn()?;
    let provider_key: PrivateKeySigner = anvil.keys()[0].clone().into();
    let payer: PrivateKeySigner = anvil.keys()[1].clone().into();
    let deployer = x402_devnet::chain::provider(&anvil, provider_key.clone());
    let contract =
        x402_devnet::Artifacts::default().deploy_channel(&deployer, x402_devnet::CHALLENGE_PERIODS).await?;
    let chain_id = anvil.chain_id();
    let payee = provider_key.address();
    let domain = ChannelDomain::new(chain_id, contract);
    let deposit = U256::from(1_000_000_000_000_000u64);
    let amount = U256::from(400_000_000_000_000u64);

    note(&format!("settlement: opening {due} channels on anvil"));
    let params_of = |i: u64| IPaymentChannel::ChannelParams {
        payer: payer.address(),
        payee,
        token: Address::ZERO,
        signer: Address::ZERO,
        challengePeriod: x402_devnet::CHALLENGE_PERIODS.0,
        salt: keccak256(i.to_be_bytes()),
    };
    let opener = x402_devnet::chain::provider(&anvil, payer.clone());
    x402_devnet::cheats::set_automine(&opener, false).await?;
    let first_nonce = opener.get_transaction_count(payer.address()).await?;
    let fees = opener.estimate_eip1559_fees().await?;
    let sends = futures::stream::iter(0..due)
        .map(|i| {
            let call = IPaymentChannel::openCall { params: params_of(i), deposit };
            let request = TransactionRequest::default()
                .with_to(contract)
                .with_input(call.abi_encode())
                .with_value(deposit)
                .with_nonce(first_nonce + i)
                .with_chain_id(chain_id)
                .with_gas_limit(300_000)
                .with_max_fee_per_gas(fees.max_fee_per_gas * 2)
                .with_max_priority_fee_per_gas(fees.max_priority_fee_per_gas);
            let opener = &opener;
            async move { opener.send_transaction(request).await.map(|p| *p.tx_hash()) }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let last = sends.into_iter().collect::<Result<Vec<_>, _>>()?;
    while opener.get_transaction_count(payer.address()).await? < first_nonce + due {
        x402_devnet::cheats::mine(&opener, 1).await?;
    }
    x402_devnet::cheats::set_automine(&opener, true).await?;
    for hash in last.iter().take(3) {
        let receipt = opener.get_transaction_receipt(*hash).await?;
        eyre::ensure!(receipt.is_some_and(|r| r.status()), "an open failed");
    }

    note(&format!("settlement: writing a store of {store_channels} channels ({due} owing)"));
    let store_dir = dir.join("store");
    let record_bytes;
    {
        let book = ChannelBook::new(Arc::new(SledStore::open(&store_dir)?));
        let onchain = |params: IPaymentChannel::ChannelParams| OnchainChannel {
            params,
            signer_is_contract: false,
            deposit,
            exit_at: 0,
            open: true,
            paid: U256::ZERO,
            pending_close: false,
        };
        for i in 0..due {
            let params = params_of(i);
            let id = params.channel_id(chain_id, contract);
            let mut record = ChannelRecord::new(id, onchain(params));
            let voucher = Voucher { channelId: id, nonce: 1, cumulativeAmount: amount };
            let signed = domain.sign(&payer, voucher.clone())?;
            record.apply(&voucher, signed.signature, amount);
            book.put(&record)?;
        }
        // The others were paid everything they were charged: nothing to settle.
        for i in due..store_channels {
            let mut params = params_of(i);
            params.payer = Address::repeat_byte(0x11);
            let id = keccak256([b"idle".as_slice(), &i.to_be_bytes()].concat());
            let mut record = ChannelRecord::new(id, onchain(params));
            record.latest = Some(StoredVoucher {
                nonce: 100,
                cumulative_amount: amount,
                signature: Bytes::from(vec![0x5a; 65]),
            });
            record.charged = amount;
            record.chain.paid = amount;
            record.settled_at = 1_764_000_000;
            book.put(&record)?;
        }
        let sample = book.get(params_of(0).channel_id(chain_id, contract))?;
        record_bytes = match sample {
            Some(r) => book.encode(&r)?.len(),
            None => 0,
        };
        book.store().sync_blocking()?;
    }
    let disk = crate::sys::disk_usage(&store_dir);

    // The node: its reads and transactions through the counting proxy.
    let counter = Counter {
        upstream: anvil.endpoint(),
        http: alloy::transports::http::reqwest::Client::new(),
        calls: Arc::default(),
        total: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let proxy = format!("http://{}", listener.local_addr()?);
    let app = Router::new().route("/", post(forward)).with_state(counter.clone());
    let proxy_task = tokio::spawn(async move { axum::serve(listener, app).await });
    let rpc = http_provider(proxy.parse()?, Duration::from_secs(60))?;
    let terms = Terms {
        chain_id,
        contract,
        payee,
        asset: Address::ZERO,
        min_challenge_period: 0,
        min_deposit: U256::ZERO,
        max_timeout_seconds: 60,
        accept_contract_signers: false,
    };
    let store = Arc::new(SledStore::open(&store_dir)?);
    let engine = Engine::new(terms, store, RpcChain::new(rpc, contract), Metrics::new());
    let policy = SettlementPolicy {
        max_batch,
        receipt_poll: Duration::from_millis(20),
        ..SettlementPolicy::default()
    };
    let settler = Settler::new(engine.clone(), provider_key, policy);

    note("settlement: building the index");
    let started = Instant::now();
    engine.build_index().await.map_err(|r| eyre::eyre!(r.message))?;
    let index_seconds = started.elapsed().as_secs_f64();
    note(&format!("settlement: rounds (at most {max_batch} channels per transaction)"));
    counter.calls.lock().clear();
    counter.total.store(0, std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let (mut rounds, mut settled, mut gas_used) = (0, 0, 0);
    loop {
        let report = settler.round(true).await?;
        if report.batches.is_empty() {
            break;
        }
        rounds += 1;
        for b in &report.batches {
            settled += b.applied.len();
            gas_used += b.gas_used;
        }
        eyre::ensure!(rounds <= due as usize + 1, "settlement does not converge");
    }
    let round_seconds = started.elapsed().as_secs_f64();
    let rpc_by_method = counter.calls.lock().clone();
    let rpc_calls = counter.total.load(std::sync::atomic::Ordering::Relaxed);
    proxy_task.abort();
    // The chain agrees: every owing channel was paid its voucher.
    for i in [0, due / 2, due.saturating_sub(1)] {
        let id = params_of(i).channel_id(chain_id, contract);
        let channel = x402_devnet::chain::channel(&deployer, contract, id).await?;
        eyre::ensure!(U256::from(channel.paid) == amount, "channel {i} not paid");
    }
    eyre::ensure!(engine.book().summary().due == 0, "channels still due after the rounds");
    Ok(SettleFigures {
        store_channels,
        due_channels: due,
        max_batch,
        index_seconds,
        rounds,
        round_seconds,
        settled,
        rpc_calls,
        rpc_by_method,
        gas_used,
        disk_bytes_per_channel: disk as f64 / store_channels.max(1) as f64,
        record_bytes,
        seconds: 0.0,
    })
}
