//! The `x402-node` gateway: a reverse proxy that charges for priced routes of any HTTP API.
//!
//! Routes served by the node itself:
//! - `GET /healthz`: liveness.
//! - `GET /metrics`: Prometheus metrics.
//! - `GET /admin/channels`, `GET /admin/revenue`: need `Authorization: Bearer <admin_token>`.
//!
//! Everything else goes through the [`Paywall`] to the upstream.

use std::{future::Future, sync::Arc};

use alloy::{
    primitives::{Address, U256},
    providers::{Provider, ProviderBuilder},
};
use axum::{
    Json, Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use eyre::WrapErr;
use serde::Serialize;
use subtle::ConstantTimeEq;
use tracing::{info, warn};
use x402_protocol::wire;
use x402_store::{KvStore, SledStore};

use crate::{
    Engine, Terms,
    chain::{ChainReader, RpcChain},
    channel::ChannelRecord,
    config::Config,
    metrics::Metrics,
    middleware::Paywall,
};

/// Headers that belong to one connection, not to the proxied message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The upstream API.
#[derive(Clone, Debug)]
pub struct Upstream {
    client: reqwest::Client,
    base: String,
}

impl Upstream {
    /// Proxies to `base` (e.g. `http://127.0.0.1:8080`), giving up on a request after `timeout`
    /// (answered with 502, which is not charged for).
    pub fn new(base: impl Into<String>, timeout: std::time::Duration) -> Self {
        let base = base.into().trim_end_matches('/').to_owned();
        let client = reqwest::Client::builder().timeout(timeout).build().unwrap_or_default();
        Self { client, base }
    }
}

/// Builds the gateway's router around an engine.
pub fn router<S: KvStore, C: ChainReader>(
    engine: Engine<S, C>,
    paywall: Paywall<S, C>,
    upstream: Upstream,
    admin_token: Option<String>,
) -> Router {
    let admin = AdminState { engine: engine.clone(), token: admin_token.map(Arc::from) };
    let metrics = engine.metrics().clone();
    Router::new()
        .fallback(proxy)
        .with_state(upstream)
        .layer(paywall)
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(move || async move { metrics.render() }))
        .nest(
            "/admin",
            Router::new()
                .route("/channels", get(admin_channels::<S, C>))
                .route("/revenue", get(admin_revenue::<S, C>))
                .with_state(admin),
        )
}

async fn proxy(State(upstream): State<Upstream>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path}", upstream.base);
    let mut out =
        upstream.client.request(parts.method, &url).body(reqwest::Body::wrap_stream(body.into_data_stream()));
    for (name, value) in &parts.headers {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || n == "host" || n == wire::PAYMENT_SIGNATURE || n == wire::X_PAYMENT {
            continue;
        }
        out = out.header(name, value);
    }
    match out.send().await {
        Ok(resp) => {
            let mut builder = Response::builder().status(resp.status());
            for (name, value) in resp.headers() {
                if !HOP_BY_HOP.contains(&name.as_str()) {
                    builder = builder.header(name, value);
                }
            }
            builder
                .body(Body::from_stream(resp.bytes_stream()))
                .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
        }
        Err(e) => {
            warn!(target: "node::gateway", error = %e, "upstream unreachable");
            (StatusCode::BAD_GATEWAY, "upstream unreachable").into_response()
        }
    }
}

struct AdminState<S, C> {
    engine: Engine<S, C>,
    token: Option<Arc<str>>,
}

impl<S, C> Clone for AdminState<S, C> {
    fn clone(&self) -> Self {
        Self { engine: self.engine.clone(), token: self.token.clone() }
    }
}

impl<S, C> AdminState<S, C> {
    /// `None` if the request carries the admin bearer token.
    fn deny(&self, headers: &HeaderMap) -> Option<Response> {
        let Some(token) = &self.token else {
            return Some(StatusCode::NOT_FOUND.into_response());
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
            None
        } else {
            Some((StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")]).into_response())
        }
    }
}

/// One channel in the admin listing.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ChannelSummary {
    id: alloy::primitives::B256,
    payer: Address,
    token: Address,
    status: crate::channel::ChannelStatus,
    nonce: u64,
    #[serde(with = "wire::u256_dec")]
    deposit: U256,
    #[serde(with = "wire::u256_dec")]
    charged: U256,
    #[serde(with = "wire::u256_dec")]
    paid_onchain: U256,
    #[serde(with = "wire::u256_dec")]
    unsettled: U256,
}

impl From<&ChannelRecord> for ChannelSummary {
    fn from(r: &ChannelRecord) -> Self {
        Self {
            id: r.id,
            payer: r.chain.payer,
            token: r.chain.token,
            status: r.status,
            nonce: r.nonce(),
            deposit: r.chain.deposit,
            charged: r.charged(),
            paid_onchain: r.chain.paid,
            unsettled: r.unsettled(),
        }
    }
}

async fn admin_channels<S: KvStore, C: ChainReader>(
    State(admin): State<AdminState<S, C>>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = admin.deny(&headers) {
        return denied;
    }
    match admin.engine.channels() {
        Ok(channels) => Json(channels.iter().map(ChannelSummary::from).collect::<Vec<_>>()).into_response(),
        Err(r) => (r.status(), r.message).into_response(),
    }
}

async fn admin_revenue<S: KvStore, C: ChainReader>(
    State(admin): State<AdminState<S, C>>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = admin.deny(&headers) {
        return denied;
    }
    let channels = match admin.engine.channels() {
        Ok(c) => c,
        Err(r) => return (r.status(), r.message).into_response(),
    };
    let mut per_token = std::collections::BTreeMap::<Address, (U256, U256)>::new();
    for c in &channels {
        let e = per_token.entry(c.chain.token).or_default();
        e.0 += c.charged();
        e.1 += c.unsettled();
    }
    let body: Vec<_> = per_token
        .into_iter()
        .map(|(token, (charged, unsettled))| {
            serde_json::json!({ "token": token, "charged": charged.to_string(), "unsettled": unsettled.to_string() })
        })
        .collect();
    Json(body).into_response()
}

/// Runs the gateway described by `config` until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> eyre::Result<()> {
    config.validate()?;
    let contract = config.chain.contract.ok_or_else(|| eyre::eyre!("chain.contract is required"))?;
    let payee = config.provider.address()?;
    let provider = ProviderBuilder::new()
        .connect_http(config.chain.rpc_url.parse().wrap_err("invalid chain.rpc_url")?)
        .erased();
    let chain_id = match config.chain.chain_id {
        Some(id) => id,
        None => provider.get_chain_id().await.wrap_err("cannot reach the chain RPC")?,
    };
    std::fs::create_dir_all(&config.data_dir)
        .wrap_err_with(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let store = Arc::new(SledStore::open(&config.data_dir).wrap_err("cannot open the store")?);
    let terms = Terms {
        chain_id,
        contract,
        payee,
        asset: config.payment.asset,
        min_challenge_period: config.payment.min_challenge_period,
        min_deposit: config.payment.min_deposit,
        max_timeout_seconds: config.max_timeout_seconds,
    };
    let metrics = Metrics::new();
    let engine = Engine::new(terms, Arc::clone(&store), RpcChain::new(provider, contract), metrics.clone());
    // Group-commit statistics for /metrics.
    let stats_store = Arc::clone(&store);
    let stats_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            metrics.set_store_stats(stats_store.stats());
        }
    });
    let mut paywall = Paywall::new(engine.clone());
    for route in &config.routes {
        paywall = paywall.route(route.path.clone(), route.price());
    }
    let app = router(
        engine,
        paywall,
        Upstream::new(&config.upstream, std::time::Duration::from_secs(config.max_timeout_seconds)),
        config.admin_token.clone(),
    );
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .wrap_err_with(|| format!("cannot listen on {}", config.listen))?;
    info!(
        target: "node::gateway",
        listen = %listener.local_addr()?,
        upstream = %config.upstream,
        %contract,
        chain_id,
        %payee,
        routes = config.routes.len(),
        "gateway started"
    );
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    // The task holds the store: wait until it is really gone, so that the store is closed (and
    // its file lock released) when this function returns.
    stats_task.abort();
    let _ = stats_task.await;
    // Connection tasks may hold the engine a moment longer; close the store (final flush, file
    // lock released) only once this is the last reference, so a restart can open it at once.
    for _ in 0..500 {
        if Arc::strong_count(&store) == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    if Arc::strong_count(&store) > 1 {
        warn!(target: "node::gateway", "store still in use at shutdown; it closes when the last user ends");
    }
    drop(store);
    served?;
    info!(target: "node::gateway", "gateway stopped");
    Ok(())
}
