//! The node under test: the real engine, paywall and sled store, with the chain in memory, as
//! its own process (`x402-bench serve`), so that its CPU time and memory are its own.
//!
//! Routes: `/paid` (priced), `/free` (the same handler, unpriced), `/_bench/stats` (the
//! process's [`Usage`] and the store's and engine's counters), `/healthz`.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use alloy::primitives::{Bytes, U256};
use axum::{Json, Router, routing::get};
use serde::{Deserialize, Serialize};
use x402_node::{
    Engine, Price,
    book::ChannelBook,
    channel::{ChannelRecord, StoredVoucher},
    metrics::Metrics,
    middleware::Paywall,
    test_utils::MemoryChain,
};
use x402_store::{KvStore, SledStore};

use crate::{
    fixture::{self, PRICE},
    sys::{Usage, usage},
};

/// What the server is started with.
#[derive(Clone, Debug)]
pub struct ServeArgs {
    /// Channels `0..channels` exist on the (in-memory) chain.
    pub channels: u64,
    /// The node's credit window (1: off).
    pub window: u32,
    /// The store's directory.
    pub data: PathBuf,
    /// Where to listen (port 0: any free port; the address is printed on stdout).
    pub listen: SocketAddr,
    /// Serve as the `x402-node` gateway in front of this upstream (`/paid` priced, everything
    /// else proxied unpriced) instead of with the in-process handler.
    pub upstream: Option<String>,
}

/// The server's counters, from `/_bench/stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// CPU time and memory of the server process.
    pub usage: Usage,
    /// Group commits (flush + fsync) of the store.
    pub flushes: u64,
    /// Checkpoint fsyncs of the store (off the hot path).
    #[serde(default)]
    pub checkpoints: u64,
    /// Writes made durable by them.
    pub synced_writes: u64,
    /// The largest group commit so far.
    pub max_batch: u64,
    /// Paid requests served.
    pub paid: u64,
    /// Of those, paid with a session token.
    pub paid_by_session: u64,
}

/// Runs the server until stdin is closed (the load generator ends it by dropping the pipe).
pub async fn serve(args: ServeArgs) -> eyre::Result<()> {
    let chain = MemoryChain::default();
    let signer = fixture::signer().address();
    for i in 0..args.channels {
        chain.set(fixture::channel_id(i), fixture::onchain(signer));
    }
    let store = Arc::new(SledStore::open(&args.data)?);
    let engine = Engine::new(fixture::terms(), Arc::clone(&store), chain, Metrics::new());
    engine.set_credit_window(args.window);
    let stats_engine = engine.clone();
    let stats_store = Arc::clone(&store);
    let stats = get(move || {
        let (engine, store) = (stats_engine.clone(), Arc::clone(&stats_store));
        async move {
            let commits = store.stats();
            let m = engine.metrics();
            Json(Stats {
                usage: usage(),
                flushes: commits.flushes,
                checkpoints: commits.checkpoints,
                synced_writes: commits.synced_writes,
                max_batch: commits.max_batch,
                paid: m.paid.get(),
                paid_by_session: m.paid_by_session.get(),
            })
        }
    });
    let paywall = Paywall::new(engine.clone()).route("/paid", Price::exact(U256::from(PRICE)));
    let app = match args.upstream {
        Some(upstream) => x402_node::gateway::router(
            engine,
            paywall,
            x402_node::gateway::Upstream::new(upstream, std::time::Duration::from_secs(30)),
            None,
        )
        .route("/_bench/stats", stats),
        None => bench_app(paywall, stats),
    };

    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    crate::report::say(&format!("listening {}", listener.local_addr()?));
    let stdin_closed = async {
        // The parent holds our stdin; EOF means it is gone.
        let _ =
            tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink())).await;
    };
    axum::serve(listener, app).with_graceful_shutdown(stdin_closed).await?;
    Ok(())
}

fn bench_app<S: KvStore, C: x402_node::chain::ChainReader>(
    paywall: Paywall<S, C>,
    stats: axum::routing::MethodRouter,
) -> Router {
    Router::new()
        .route("/paid", get(handler))
        .route("/free", get(handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/_bench/stats", stats)
        .layer(paywall)
}

/// An upstream API that takes `delay` per request, on `listener`, until the process ends.
pub async fn slow_upstream(
    listener: tokio::net::TcpListener,
    delay: std::time::Duration,
) -> eyre::Result<()> {
    let app = Router::new().fallback(move || async move {
        tokio::time::sleep(delay).await;
        r#"{"forecast":"sunny"}"#
    });
    axum::serve(listener, app).await?;
    Ok(())
}

async fn handler() -> &'static str {
    r#"{"forecast":"sunny"}"#
}

/// Writes `n` channels that have been paid a while (each with a stored voucher) into the store
/// in `dir`, as a node with a million channels would have them.
pub fn prefill(dir: &std::path::Path, n: u64) -> eyre::Result<()> {
    let book = ChannelBook::new(std::sync::Arc::new(SledStore::open(dir)?));
    let signer = fixture::signer().address();
    for i in 0..n {
        let id = fixture::channel_id(i);
        let mut record = ChannelRecord::new(id, fixture::onchain(signer));
        record.latest = Some(StoredVoucher {
            nonce: 100,
            cumulative_amount: U256::from(100 * PRICE),
            signature: Bytes::from(vec![0x5a; 65]),
        });
        record.charged = U256::from(100 * PRICE);
        book.put(&record)?;
    }
    book.store().sync_blocking()?;
    Ok(())
}
