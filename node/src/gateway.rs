//! The `x402-node` gateway: a reverse proxy that charges for priced routes of any HTTP API.
//!
//! Routes served by the node itself:
//! - `GET /healthz`: liveness.
//! - `GET /metrics`: Prometheus metrics.
//! - `GET /admin/channels`, `GET /admin/revenue`, `POST /admin/settle[?force=true]`: need
//!   `Authorization: Bearer <admin_token>`.
//! - `POST /x402/close`: a client's cooperative close request ([`x402_protocol::close`]).
//!
//! Everything else under the node's reserved prefixes
//! ([`RESERVED_PREFIXES`](crate::routes::RESERVED_PREFIXES)) is answered by
//! the node too, never proxied: a JSON 404, or a 501 naming the setting of a disabled feature
//! (`POST /x402/open` without the relay, `POST /admin/settle` without settlement).
//!
//! Everything else goes through the [`Paywall`] to the upstream, on the one canonical path of
//! [`crate::path`] (a path without one is refused with 400 before anything else), and without
//! the payment headers, nor the headers some servers let override the path or the method
//! ([`STRIPPED_REQUEST_HEADERS`]). An `upto` route charges the cost the upstream reports in the
//! [`COST_HEADER`] response header. [`harden`] adds the canonical path and CORS around the app.
//!
//! In the background the gateway runs the event [`Follower`], the [`Settler`] (given the
//! provider's key) and the [`push`](crate::push) of vouchers to watchers.

use std::{future::Future, sync::Arc};

use alloy::signers::local::PrivateKeySigner;
use alloy::{
    primitives::{Address, U256},
    providers::Provider,
};
use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Query, Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Serialize;
use tracing::{info, warn};
use x402_protocol::{
    close::{CLOSE_PATH, CloseRequestBody},
    wire::{self, DomainInfo, ErrorCode},
};
use x402_store::{KvStore, SledStore};

use crate::{
    Engine, Error, Payment, Refusal, Terms,
    auth::BearerToken,
    chain::{ChainReader, RpcChain},
    channel::ChannelRecord,
    config::{Config, CorsConfig},
    follower::{Follower, FollowerConfig},
    metrics::Metrics,
    middleware::{Charge, PAYMENT_CHANNEL, Paywall, PublicUrl},
    path::{canonical, match_key},
    routes::{Routes, is_reserved},
    settle::Settler,
};

/// The response header in which the upstream reports the cost of a request to an `upto` route,
/// in token base units as a decimal integer (`X402-Cost: 1250`). The gateway charges it,
/// capped at the route's maximum, and removes the header before the response reaches the
/// client. A missing or invalid report is charged the maximum, with a warning in the log.
pub const COST_HEADER: &str = "x402-cost";

/// Request headers the gateway never forwards: payment credentials (bearer credentials for
/// the node, none of the upstream's business), and headers some frameworks let override the
/// request's path or method, which would let a request priced as one route be served as
/// another.
pub const STRIPPED_REQUEST_HEADERS: [&str; 11] = [
    wire::PAYMENT_SIGNATURE,
    wire::X_PAYMENT,
    wire::PAYMENT_SESSION,
    PAYMENT_CHANNEL,
    "x-original-url",
    "x-rewrite-url",
    "x-override-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-forwarded-prefix",
];

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
    /// The priced routes, to know which ones report their cost.
    routes: Arc<Routes>,
}

impl Upstream {
    /// Proxies to `base` (e.g. `http://127.0.0.1:8080`), giving up on a request after `timeout`
    /// (answered with 502, which is not charged for).
    pub fn new(base: impl Into<String>, timeout: std::time::Duration) -> Self {
        let base = base.into().trim_end_matches('/').to_owned();
        // Redirects go back to the client: followed here, a free path redirecting to a priced
        // one would be served under the free path's price.
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self { client, base, routes: Arc::default() }
    }
}

/// Builds the gateway's router around an engine.
pub fn router<S: KvStore, C: ChainReader>(
    engine: Engine<S, C>,
    paywall: Paywall<S, C>,
    upstream: Upstream,
    admin_token: Option<String>,
) -> Router {
    let admin = AdminState { engine: engine.clone(), token: admin_token.as_deref().map(BearerToken::new) };
    let metrics = engine.clone();
    let upstream = Upstream { routes: Arc::clone(paywall.routes()), ..upstream };
    Router::new()
        .fallback(proxy)
        .with_state(upstream)
        .layer(paywall)
        // Outside the paywall: the node's own paths are never priced nor proxied.
        .layer(axum::middleware::from_fn(reserved))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || async move {
                metrics.refresh_metrics();
                metrics.metrics().render()
            }),
        )
        .nest(
            "/admin",
            Router::new()
                .route("/channels", get(admin_channels::<S, C>))
                .route("/revenue", get(admin_revenue::<S, C>))
                .with_state(admin),
        )
}

/// A JSON error of the node's own: `{"error": code, "message": …}`.
fn node_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": code, "message": message.into() }))).into_response()
}

/// Answers requests under the node's reserved prefixes that no route of the node took: they
/// never reach the paywall or the upstream (an admin request's `Authorization` stays here).
async fn reserved(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if !is_reserved(path) {
        return next.run(req).await;
    }
    match match_key(path).as_str() {
        "/x402/open" => node_error(
            StatusCode::NOT_IMPLEMENTED,
            "not_enabled",
            "the gasless-open relay is not enabled on this node (relay.enabled)",
        ),
        "/facilitator/verify" | "/facilitator/settle" | "/facilitator/supported" => node_error(
            StatusCode::NOT_IMPLEMENTED,
            "not_enabled",
            "the facilitator API is not enabled on this node (facilitator.token)",
        ),
        "/admin/settle" => node_error(
            StatusCode::NOT_IMPLEMENTED,
            "not_enabled",
            "settlement is not enabled on this node (settlement.enabled and the provider's key)",
        ),
        _ => node_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{} {path} is not an endpoint of the node", req.method()),
        ),
    }
}

/// Wraps the gateway's app in what must run before its routing: the canonical path of
/// [`crate::path`] (a request without one is refused with 400), and, if origins are
/// configured, CORS (preflights are answered here, unpaid).
pub fn harden(app: Router, cors: &CorsConfig) -> Router {
    let mut outer = Router::new().fallback_service(app).layer(axum::middleware::from_fn(canonicalize));
    if let Some(layer) = cors_layer(cors) {
        outer = outer.layer(layer);
    }
    outer
}

/// Rewrites the request's target to its canonical origin form, or refuses it.
async fn canonicalize(mut req: Request, next: Next) -> Response {
    let uri = req.uri();
    if let Some(authority) = uri.authority() {
        // An absolute-form target: the gateway serves one upstream, so an authority other than
        // the Host header's is a request meant for someone else.
        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok());
        if host.is_some_and(|h| !h.eq_ignore_ascii_case(authority.as_str())) {
            return node_error(
                StatusCode::BAD_REQUEST,
                "invalid_path",
                "an absolute-form request target naming another host than the Host header",
            );
        }
    }
    let path = match canonical(uri.path()) {
        Ok(path) => path,
        Err(e) => return node_error(StatusCode::BAD_REQUEST, "invalid_path", e.reason()),
    };
    let target = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    match Uri::builder().path_and_query(target).build() {
        Ok(uri) => *req.uri_mut() = uri,
        Err(_) => return node_error(StatusCode::BAD_REQUEST, "invalid_path", "invalid request target"),
    }
    next.run(req).await
}

/// The CORS layer of `config`, if it allows any origin.
fn cors_layer(config: &CorsConfig) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowMethods, AllowOrigin, CorsLayer};
    if config.allowed_origins.is_empty() {
        return None;
    }
    let origin = if config.allowed_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(config.allowed_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let headers = [wire::PAYMENT_SIGNATURE, wire::X_PAYMENT, wire::PAYMENT_SESSION, PAYMENT_CHANNEL]
        .into_iter()
        .map(HeaderName::from_static)
        .chain(config.allowed_headers.iter().filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok()))
        .collect::<Vec<_>>();
    Some(
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods(AllowMethods::mirror_request())
            .allow_headers(headers)
            .expose_headers([
                HeaderName::from_static(wire::PAYMENT_REQUIRED),
                HeaderName::from_static(wire::PAYMENT_RESPONSE),
            ])
            .max_age(std::time::Duration::from_secs(config.max_age_secs)),
    )
}

/// The cost an upstream reported for a request to an `upto` route of maximum `max`: its
/// [`COST_HEADER`], capped at `max`; `None` (the maximum is charged) if missing or invalid.
fn reported_cost(value: Option<&HeaderValue>, method: &Method, route: &str, max: U256) -> Option<U256> {
    let Some(value) = value else {
        warn!(target: "node::gateway", %method, route, %max, "upstream reported no X402-Cost; charging the route's maximum");
        return None;
    };
    let text = value.to_str().unwrap_or_default().trim();
    let cost = (!text.is_empty() && text.len() <= 78 && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| U256::from_str_radix(text, 10).ok())
        .flatten();
    match cost {
        None => {
            warn!(target: "node::gateway", %method, route, %max, "upstream reported an invalid X402-Cost (not a decimal integer); charging the route's maximum");
            None
        }
        Some(cost) if cost > max => {
            warn!(target: "node::gateway", %method, route, %cost, %max, "upstream reported an X402-Cost above the route's maximum; charging the maximum");
            Some(max)
        }
        Some(cost) => Some(cost),
    }
}

async fn proxy(State(upstream): State<Upstream>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    // A paid request to an `upto` route: the upstream reports its cost.
    let upto = parts.extensions.get::<Payment>().and_then(|_| {
        let matched = upstream.routes.find(&parts.method, parts.uri.path())?;
        (matched.price.pricing == wire::Pricing::Upto)
            .then(|| (matched.pattern.to_owned(), matched.price.amount))
    });
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path}", upstream.base);
    let mut out = upstream
        .client
        .request(parts.method.clone(), &url)
        .body(reqwest::Body::wrap_stream(body.into_data_stream()));
    for (name, value) in &parts.headers {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || n == "host" || STRIPPED_REQUEST_HEADERS.contains(&n) {
            continue;
        }
        out = out.header(name, value);
    }
    match out.send().await {
        Ok(resp) => {
            let mut builder = Response::builder().status(resp.status());
            for (name, value) in resp.headers() {
                if !HOP_BY_HOP.contains(&name.as_str()) && name.as_str() != COST_HEADER {
                    builder = builder.header(name, value);
                }
            }
            let charge = upto.and_then(|(route, max)| {
                reported_cost(resp.headers().get(COST_HEADER), &parts.method, &route, max)
            });
            let mut response = builder
                .body(Body::from_stream(resp.bytes_stream()))
                .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response());
            if let Some(cost) = charge {
                response.extensions_mut().insert(Charge(cost));
            }
            response
        }
        Err(e) => {
            warn!(target: "node::gateway", error = %e, "upstream unreachable");
            (StatusCode::BAD_GATEWAY, "upstream unreachable").into_response()
        }
    }
}

struct AdminState<S, C> {
    engine: Engine<S, C>,
    token: Option<BearerToken>,
}

impl<S, C> Clone for AdminState<S, C> {
    fn clone(&self) -> Self {
        Self { engine: self.engine.clone(), token: self.token.clone() }
    }
}

impl<S, C> AdminState<S, C> {
    /// `None` if the request carries the admin bearer token.
    fn deny(&self, headers: &HeaderMap) -> Option<Response> {
        deny_without_bearer(self.token.as_ref(), headers)
    }
}

/// `None` if `headers` carry `Authorization: Bearer <token>`; 404 if no token is configured
/// (the endpoint is disabled), 401 otherwise.
pub fn deny_without_bearer(token: Option<&BearerToken>, headers: &HeaderMap) -> Option<Response> {
    match token {
        None => Some(StatusCode::NOT_FOUND.into_response()),
        Some(token) if token.authorizes(headers) => None,
        Some(_) => Some((StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")]).into_response()),
    }
}

/// One channel in the admin listing.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ChannelSummary {
    id: alloy::primitives::B256,
    #[serde(with = "wire::checksummed")]
    payer: Address,
    #[serde(with = "wire::checksummed")]
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
            payer: r.chain.payer(),
            token: r.chain.token(),
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
    match admin.engine.channels().await {
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
    let channels = match admin.engine.channels().await {
        Ok(c) => c,
        Err(r) => return (r.status(), r.message).into_response(),
    };
    let mut per_token = std::collections::BTreeMap::<Address, (U256, U256)>::new();
    for c in &channels {
        let e = per_token.entry(c.chain.token()).or_default();
        e.0 += c.charged();
        e.1 += c.unsettled();
    }
    let body: Vec<_> = per_token
        .into_iter()
        .map(|(token, (charged, unsettled))| {
            serde_json::json!({ "token": token.to_checksum(None), "charged": charged.to_string(), "unsettled": unsettled.to_string() })
        })
        .collect();
    Json(body).into_response()
}

/// What the close endpoint needs besides the engine.
#[derive(Clone)]
pub struct CloseService {
    /// The provider's key, to sign close authorisations; `None`: only queue the close.
    pub key: Option<Arc<PrivateKeySigner>>,
    /// Validity of signed authorisations, seconds.
    pub ttl: u64,
    /// Called after a close was accepted (wakes the settler); `None`: no batch will close it.
    pub on_close: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for CloseService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloseService")
            .field("signs", &self.key.is_some())
            .field("ttl", &self.ttl)
            .field("queues", &self.on_close.is_some())
            .finish()
    }
}

/// The cooperative close endpoint, `POST` [`CLOSE_PATH`].
pub fn close_router<S: KvStore, C: ChainReader>(engine: Engine<S, C>, service: CloseService) -> Router {
    Router::new().route(CLOSE_PATH, post(close_channel::<S, C>)).with_state((engine, service))
}

async fn close_channel<S: KvStore, C: ChainReader>(
    State((engine, service)): State<(Engine<S, C>, CloseService)>,
    body: Bytes,
) -> Response {
    let request: CloseRequestBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return api_error(&Refusal::new(
                ErrorCode::InvalidPayload,
                format!("malformed close request: {e}"),
            ));
        }
    };
    let key = service.key.as_deref().map(|k| k as &(dyn alloy::signers::SignerSync + Send + Sync));
    match engine.request_close(&request, key, service.ttl, service.on_close.is_some()).await {
        Ok(response) => {
            if let Some(wake) = &service.on_close {
                wake();
            }
            Json(response).into_response()
        }
        Err(refusal) => api_error(&refusal),
    }
}

/// A JSON error `{"error": code, "message": …}` with a status fitting a non-payment endpoint.
pub(crate) fn api_error(refusal: &Refusal) -> Response {
    let status = match refusal.code {
        ErrorCode::InvalidPayload => StatusCode::BAD_REQUEST,
        ErrorCode::InvalidSignature | ErrorCode::ChannelMismatch => StatusCode::FORBIDDEN,
        ErrorCode::ChannelUnknown => StatusCode::NOT_FOUND,
        ErrorCode::ChannelClosed => StatusCode::CONFLICT,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    let body = serde_json::json!({ "error": refusal.code.as_str(), "message": refusal.message });
    (status, Json(body)).into_response()
}

#[derive(Debug, serde::Deserialize)]
struct SettleQuery {
    #[serde(default)]
    force: bool,
}

/// `POST /admin/settle[?force=true]`: runs a settlement round now and returns its report.
pub fn settle_router<S: KvStore>(settler: Arc<Settler<S>>, admin_token: Option<String>) -> Router {
    let token = admin_token.as_deref().map(BearerToken::new);
    Router::new().route(
        "/admin/settle",
        post(move |headers: HeaderMap, Query(q): Query<SettleQuery>| async move {
            if let Some(denied) = deny_without_bearer(token.as_ref(), &headers) {
                return denied;
            }
            match settler.round(q.force).await {
                Ok(report) => Json(report).into_response(),
                Err(e) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(serde_json::json!({ "error": "unavailable", "message": e.to_string() })),
                )
                    .into_response(),
            }
        }),
    )
}

/// Runs one settlement round for the node described by `config` (which must not be running:
/// the store is opened here), after catching up with the chain's events. With `force`, every
/// channel that owes anything is settled, whatever the policy.
pub async fn settle_once(config: Config, force: bool) -> crate::Result<crate::settle::RoundReport> {
    config.validate()?;
    let key = config.provider.signer()?.ok_or_else(|| {
        Error::Missing(format!(
            "settling needs the provider's key ({} or provider.key_file)",
            config.provider.key_env
        ))
    })?;
    let (engine, _) = open_engine(&config).await?;
    let mut follower = Follower::new(engine.clone(), FollowerConfig::default());
    follower.poll_once().await.map_err(|e| Error::CatchUp(Box::new(e)))?;
    let settler = Settler::new(engine, key, config.settlement.policy());
    settler.round(force).await
}

/// Opens the store and builds the engine of `config`.
async fn open_engine(config: &Config) -> crate::Result<(Engine<SledStore, RpcChain>, Arc<SledStore>)> {
    let contract =
        config.chain.contract.ok_or_else(|| Error::Missing("chain.contract is required".to_owned()))?;
    let payee = config.provider.address()?;
    let provider = crate::chain::http_provider(
        config.chain.rpc_url.parse().map_err(|e| Error::Config(format!("invalid chain.rpc_url: {e}")))?,
        std::time::Duration::from_millis(config.chain.rpc_timeout_ms),
    )?;
    let chain_id = match config.chain.chain_id {
        Some(id) => id,
        None => provider.get_chain_id().await.map_err(Error::ChainId)?,
    };
    let store = Arc::new(
        SledStore::open(&config.data_dir)
            .map_err(|source| Error::OpenStore { dir: config.data_dir.clone(), source })?,
    );
    let terms = Terms {
        chain_id,
        contract,
        payee,
        asset: config.payment.asset,
        min_challenge_period: config.payment.min_challenge_period,
        min_deposit: config.payment.min_deposit,
        max_timeout_seconds: config.max_timeout_seconds,
        accept_contract_signers: config.payment.accept_contract_signers,
    };
    let token_domain = match (&config.payment.eip712_name, &config.payment.eip712_version) {
        (Some(name), Some(version)) => Some(DomainInfo { name: name.clone(), version: version.clone() }),
        _ => crate::chain::token_domain(&provider, config.payment.asset).await,
    };
    match &token_domain {
        Some(d) => {
            info!(target: "node::gateway", name = %d.name, version = %d.version, "token EIP-712 domain")
        }
        None => info!(target: "node::gateway", "token EIP-712 domain unknown: not advertised"),
    }
    let chain = RpcChain::new(provider, contract).with_confirmations(config.chain.confirmations);
    let engine = Engine::new(terms, Arc::clone(&store), chain, Metrics::new());
    engine.set_credit_window(config.payment.max_credit_window);
    engine.set_token_domain(token_domain);
    Ok((engine, store))
}

/// Runs the gateway described by `config` until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> crate::Result<()> {
    config.validate()?;
    let key = config.provider.signer()?;
    // One sender per account: the payee key's nonces belong to the settler's sender, so the
    // relay needs a key of its own. Checked before anything starts.
    if config.relay.enabled
        && let (Some(provider), Some(relay)) = (&key, config.relay.signer()?)
        && provider.address() == relay.address()
    {
        return Err(Error::Config(format!(
            "relay key {} is the provider's key: give the relay a key of its own (its transactions would race the settler's for nonces)",
            relay.address()
        )));
    }
    let (engine, store) = open_engine(&config).await?;
    let metrics = engine.metrics().clone();
    let (contract, chain_id, payee) =
        (engine.terms().contract, engine.terms().chain_id, engine.terms().payee);
    let mut tasks = Vec::new();
    let follower = Follower::new(
        engine.clone(),
        FollowerConfig {
            poll_interval: std::time::Duration::from_millis(config.chain.poll_interval_ms),
            ..FollowerConfig::default()
        },
    );
    tasks.push(tokio::spawn(follower.run(std::future::pending())));
    // One durable sender owns the payee key's nonces: the settler and the `exact` transfers
    // share it.
    let payee_sender = key
        .as_ref()
        .map(|key| Arc::new(Settler::sender_for(&engine, key.clone(), &config.settlement.policy())));
    let settler = match (&payee_sender, config.settlement.enabled) {
        (Some(sender), true) => {
            let settler = Arc::new(Settler::with_sender(
                engine.clone(),
                Arc::clone(sender),
                config.settlement.policy(),
            ));
            tasks.push(tokio::spawn(Arc::clone(&settler).run(std::future::pending())));
            Some(settler)
        }
        (None, true) => {
            warn!(target: "node::gateway", "no provider key: vouchers are stored but not settled; run `x402-node settle` with the key");
            None
        }
        (_, false) => None,
    };
    match (&key, config.watchers.is_empty()) {
        (Some(key), false) => {
            engine.voucher_feed().enable();
            tasks.push(tokio::spawn(crate::push::run(engine.clone(), key.clone(), config.watchers.clone())));
        }
        (None, false) => {
            warn!(target: "node::gateway", "no provider key: watchers get no claims (a watcher's claim needs the provider's signature)");
        }
        (_, true) => {}
    }
    // Group-commit statistics for /metrics.
    // and the charges made with session tokens, written (and synced) every second.
    let stats_store = Arc::clone(&store);
    let charges = engine.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            metrics.set_store_stats(stats_store.stats());
            match charges.flush_charges().await {
                Ok(0) => {}
                Ok(_) => {
                    if let Err(e) = stats_store.sync().await {
                        warn!(target: "node::gateway", error = %e, "cannot sync session charges; retrying");
                    }
                }
                Err(e) => warn!(target: "node::gateway", error = %e.message, "cannot write session charges; retrying"),
            }
        }
    }));
    // The settlement index and the channel gauges, built once in the background.
    let index = engine.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = index.build_index().await {
            warn!(target: "node::gateway", error = %e.message, "cannot index the channel book; settlement builds it later");
        }
    }));
    let final_flush = engine.clone();
    let mut paywall = Paywall::new(engine.clone()).with_routes(config.route_table()?).public_url(PublicUrl {
        base: config.server.public_url.clone(),
        trust_forwarded: config.server.trust_forwarded,
    });
    let mut exact = None;
    if config.takes_exact() {
        let sender = payee_sender.clone().ok_or_else(|| {
            Error::Missing(format!(
                "the exact scheme needs the provider's key to settle ({} or provider.key_file)",
                config.provider.key_env
            ))
        })?;
        let scheme = Arc::new(crate::exact::for_gateway(
            engine.terms(),
            engine.token_domain(),
            Arc::clone(&store),
            engine.chain().clone(),
            sender,
        )?);
        paywall = paywall.with_exact(Arc::clone(&scheme) as Arc<dyn crate::exact::ExactHandler>);
        exact = Some(scheme);
    }
    let close = CloseService {
        key: key.map(Arc::new),
        ttl: config.settlement.close_authorization_ttl_secs,
        on_close: settler.as_ref().map(|s| {
            let s = Arc::clone(s);
            Arc::new(move || s.wake()) as Arc<dyn Fn() + Send + Sync>
        }),
    };
    let mut app = router(
        engine.clone(),
        paywall,
        Upstream::new(&config.upstream, std::time::Duration::from_secs(config.max_timeout_seconds)),
        config.admin_token.clone(),
    )
    .merge(close_router(engine.clone(), close));
    if config.relay.enabled {
        let key = config.relay.signer()?.ok_or_else(|| {
            Error::Missing(format!(
                "relay.enabled needs the relay's key ({} or relay.key_file)",
                config.relay.key_env
            ))
        })?;
        let relay =
            crate::relay::Relay::new(&config.chain.rpc_url, key, engine.terms().clone(), Arc::clone(&store))?;
        // Its alerts (a missed deadline) on /metrics, as the settler's.
        for collector in relay.sender().metrics().collectors() {
            let _ = engine.metrics().register(collector);
        }
        info!(target: "node::gateway", relayer = %relay.relayer(), "relaying gasless opens");
        app = app.merge(crate::relay::open_router(relay));
    }
    if let Some(settler) = &settler {
        app = app.merge(settle_router(Arc::clone(settler), config.admin_token.clone()));
    }
    if let Some(token) = &config.facilitator.token {
        let mut facilitator = crate::facilitator::Facilitator::new(engine.clone(), token);
        if let Some(exact) = &exact {
            facilitator =
                facilitator.with_exact(Arc::clone(exact) as Arc<dyn crate::facilitator::ExactScheme>);
        }
        let facilitator = Arc::new(facilitator);
        let sweeper = Arc::clone(&facilitator);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                sweeper.sweep();
            }
        }));
        info!(target: "node::gateway", path = %config.facilitator.path, "facilitator API enabled");
        app = app.nest(&config.facilitator.path, crate::facilitator::router(facilitator));
    }
    let app = harden(app, &config.cors);
    drop((engine, settler));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Listen { addr: config.listen, source })?;
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
    // The background tasks hold the store: wait until they are really gone, so that the store
    // is closed (and its file lock released) when this function returns. Stopping the settler
    // mid-round is safe: a transaction in flight is stored before it is sent, and resolved on
    // the next start.
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
    if let Err(e) = final_flush.flush_charges().await {
        warn!(target: "node::shutdown", error = %e.message, "session charges not written");
    }
    drop(final_flush);
    if let Err(e) = store.sync().await {
        warn!(target: "node::shutdown", error = %e, "final sync failed");
    }
    close_store(store).await;
    served?;
    info!(target: "node::gateway", "gateway stopped");
    Ok(())
}

/// Closes a store at shutdown (final flush, file lock released) once this is its last
/// reference: connection tasks may hold it a moment longer, and a restart must be able to open
/// it at once. Waits at most 5 s.
pub(crate) async fn close_store(store: Arc<SledStore>) {
    for _ in 0..500 {
        if Arc::strong_count(&store) == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    if Arc::strong_count(&store) > 1 {
        warn!(target: "node::shutdown", "store still in use at shutdown; it closes when the last user ends");
    }
}
