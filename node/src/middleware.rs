//! The tower [`Layer`] that puts a price on routes of an axum app.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use alloy::primitives::U256;
//! # use axum::{Router, routing::get};
//! # use x402_node::{Engine, Price, middleware::Paywall};
//! # fn app<S: x402_store::KvStore, C: x402_node::chain::ChainReader>(engine: Engine<S, C>) -> Router {
//! Router::new()
//!     .route("/weather", get(|| async { "sunny" }))
//!     .layer(Paywall::new(engine).route("/weather", Price::exact(U256::from(1000))))
//! # }
//! ```
//!
//! A priced request without a payment gets a 402 with the terms. A paid request runs the
//! handler with the verified [`Payment`] as a request extension; the handler of a
//! [`Pricing::Upto`] route reports the actual cost with a
//! [`Charge`] response extension, or, streaming, at the end of its body (see
//! [`crate::serve`]). The voucher is stored durably before the response is released; a
//! handler that fails with a 5xx is not charged for. A request inside a prepaid credit window
//! presents `PAYMENT-SESSION` instead (see [`Engine::set_credit_window`]).
//!
//! The handler runs with the price reserved on the channel but without any lock held, so
//! requests of one channel are served in parallel (see [`Engine::authorize`]).

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use alloy::primitives::U256;
use axum::{
    body::Body,
    response::{IntoResponse, Response},
};
use http::{HeaderName, HeaderValue, Request, StatusCode, header::CONTENT_TYPE};
use tower::{Layer, Service};
use x402_protocol::wire::{self, ErrorCode, PaymentEnvelope, Pricing, Scheme};
use x402_store::KvStore;

use crate::{
    Engine, Payment, Price, Refusal,
    chain::ChainReader,
    exact::ExactHandler,
    routes::Routes,
    serve::{self, ReplayCache},
};

/// Header an unpaid request may carry to name its channel. A bare channel id proves nothing, so
/// the node discloses no state for it: a channel's state goes only to a request holding its
/// signer key (in the refusal of a validly signed voucher, or of a valid session). The gateway
/// strips it before the upstream, like every payment header.
pub const PAYMENT_CHANNEL: &str = "payment-channel";

/// The actual cost of a request to a dynamically priced route, set by the handler as a
/// response extension. Capped at the route's maximum; without it the maximum is charged.
///
/// Handlers return it among the response parts: `(Charge(cost), body)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Charge(pub U256);

impl axum::response::IntoResponseParts for Charge {
    type Error = Infallible;

    fn into_response_parts(
        self,
        mut res: axum::response::ResponseParts,
    ) -> Result<axum::response::ResponseParts, Self::Error> {
        res.extensions_mut().insert(self);
        Ok(res)
    }
}

/// A [`Layer`] charging for requests to priced routes, matched as [`crate::routes`] says.
pub struct Paywall<S, C> {
    engine: Engine<S, C>,
    routes: Arc<Routes>,
    replay: Arc<ReplayCache>,
    /// The official `exact` scheme, for routes that take it ([`Self::with_exact`]).
    exact: Option<Arc<dyn ExactHandler>>,
    public: Arc<PublicUrl>,
}

/// How a 402 names the requested resource: `resource.url` is absolute, the configured public
/// base URL followed by the request's path and query, else `http://<Host>` (`https` when a
/// trusted proxy says so in `X-Forwarded-Proto`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublicUrl {
    /// The public base URL (`[server] public_url`), without a trailing slash.
    pub base: Option<String>,
    /// Whether `X-Forwarded-Proto` is believed (`[server] trust_forwarded`).
    pub trust_forwarded: bool,
}

impl PublicUrl {
    /// The absolute URL of a request for `path_and_query` with `headers`.
    pub fn absolute(&self, headers: &http::HeaderMap, path_and_query: &str) -> String {
        if let Some(base) = &self.base {
            return format!("{base}{path_and_query}");
        }
        // The Host header is the client's own: only a plain host[:port] is echoed back.
        let host = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| {
                !h.is_empty()
                    && h.len() <= 255
                    && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b))
            })
            .unwrap_or("localhost");
        let scheme = if self.trust_forwarded
            && headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').next().is_some_and(|p| p.trim().eq_ignore_ascii_case("https")))
        {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{host}{path_and_query}")
    }
}

impl<S, C> Clone for Paywall<S, C> {
    fn clone(&self) -> Self {
        Self {
            engine: self.engine.clone(),
            routes: Arc::clone(&self.routes),
            replay: Arc::clone(&self.replay),
            exact: self.exact.clone(),
            public: Arc::clone(&self.public),
        }
    }
}

impl<S, C> std::fmt::Debug for Paywall<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Paywall").field("routes", &self.routes).finish_non_exhaustive()
    }
}

impl<S, C> Paywall<S, C> {
    /// A paywall with no priced routes yet.
    pub fn new(engine: Engine<S, C>) -> Self {
        Self { engine, routes: Arc::default(), replay: Arc::default(), exact: None, public: Arc::default() }
    }

    /// Takes the official `exact` scheme (see [`crate::exact`]) on the routes whose
    /// [`Price::schemes`](crate::Price) include it. Without it such routes offer and take only
    /// the schemes they have besides.
    pub fn with_exact(mut self, exact: Arc<dyn ExactHandler>) -> Self {
        self.exact = Some(exact);
        self
    }

    /// Names resources in 402s with `public` (default: `http://<Host>`).
    pub fn public_url(mut self, public: PublicUrl) -> Self {
        self.public = Arc::new(public);
        self
    }

    /// Prices the route `path` (a pattern in axum's syntax) for every method.
    ///
    /// # Panics
    ///
    /// If `path` is not a valid pattern or overlaps a route added before (as axum's
    /// `Router::route` does); use [`Self::with_routes`] to handle the error.
    pub fn route(mut self, path: impl Into<String>, price: Price) -> Self {
        let path = path.into();
        let mut routes = (*self.routes).clone();
        if let Err(e) = routes.add::<&str>(&path, &[], price) {
            panic!("{e}");
        }
        self.routes = Arc::new(routes);
        self
    }

    /// The priced routes.
    pub fn routes(&self) -> &Arc<Routes> {
        &self.routes
    }

    /// Prices the routes of `routes` (replacing any added before).
    pub fn with_routes(mut self, routes: Routes) -> Self {
        self.routes = Arc::new(routes);
        self
    }
}

impl<Svc, S, C> Layer<Svc> for Paywall<S, C> {
    type Service = PaywallService<Svc, S, C>;

    fn layer(&self, inner: Svc) -> Self::Service {
        PaywallService { inner, paywall: self.clone() }
    }
}

/// The service produced by [`Paywall`].
pub struct PaywallService<Svc, S, C> {
    inner: Svc,
    paywall: Paywall<S, C>,
}

impl<Svc: Clone, S, C> Clone for PaywallService<Svc, S, C> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), paywall: self.paywall.clone() }
    }
}

impl<Svc, S, C> std::fmt::Debug for PaywallService<Svc, S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaywallService").field("paywall", &self.paywall).finish_non_exhaustive()
    }
}

impl<Svc, S, C> Service<Request<Body>> for PaywallService<Svc, S, C>
where
    Svc: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    Svc::Future: Send + 'static,
    S: KvStore,
    C: ChainReader,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The ready service handles this request; a fresh clone takes its place.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let Some(price) = self.paywall.routes.find(req.method(), req.uri().path()).map(|m| m.price.clone())
        else {
            let mut inner = inner;
            return Box::pin(inner.call(req));
        };
        let engine = self.paywall.engine.clone();
        let replay = Arc::clone(&self.paywall.replay);
        let exact = self.paywall.exact.clone().filter(|_| price.schemes.exact);
        let url = self
            .paywall
            .public
            .absolute(req.headers(), req.uri().path_and_query().map_or("/", |p| p.as_str()));
        Box::pin(async move { Ok(paid(engine, inner, req, price, replay, url, exact).await) })
    }
}

async fn paid<Svc, S, C>(
    engine: Engine<S, C>,
    mut inner: Svc,
    mut req: Request<Body>,
    price: Price,
    replay: Arc<ReplayCache>,
    url: String,
    exact: Option<Arc<dyn ExactHandler>>,
) -> Response
where
    Svc: Service<Request<Body>, Response = Response, Error = Infallible>,
    S: KvStore,
    C: ChainReader,
{
    let authorized = if let Some(session) = req.headers().get(wire::PAYMENT_SESSION) {
        if !price.schemes.channel_voucher {
            let refusal = Refusal::new(ErrorCode::InvalidScheme, "this route does not take channel payments");
            return payment_required(
                &engine,
                exact.as_deref(),
                &url,
                &price,
                Some(&refusal),
                refusal.status(),
            );
        }
        engine.authorize_session(session.as_bytes(), &price).await
    } else {
        let header =
            req.headers().get(wire::PAYMENT_SIGNATURE).or_else(|| req.headers().get(wire::X_PAYMENT));
        let Some(header) = header else {
            return payment_required(
                &engine,
                exact.as_deref(),
                &url,
                &price,
                None,
                StatusCode::PAYMENT_REQUIRED,
            );
        };
        if exact.is_some() || !price.schemes.channel_voucher {
            // The scheme first: the payload is decoded only for a scheme the route takes.
            let envelope = match PaymentEnvelope::decode(header.as_bytes()) {
                Ok(envelope) => envelope,
                Err(e) => {
                    let refusal = Refusal::new(ErrorCode::InvalidPayload, format!("malformed payment: {e}"));
                    return payment_required(
                        &engine,
                        exact.as_deref(),
                        &url,
                        &price,
                        Some(&refusal),
                        refusal.status(),
                    );
                }
            };
            match (envelope.scheme(), exact.as_deref()) {
                (Some(Scheme::Exact), Some(exact)) => {
                    let metrics = engine.metrics();
                    return match crate::exact::serve(exact, inner, req, price.amount, &envelope).await {
                        Ok(response) => {
                            if response.headers().contains_key(wire::PAYMENT_RESPONSE) {
                                metrics.paid.inc();
                                let token = engine.terms().asset.to_string();
                                metrics
                                    .revenue
                                    .with_label_values(&[token.as_str()])
                                    .inc_by(f64::from(price.amount));
                            }
                            response
                        }
                        Err(refusal) => {
                            metrics.refused.with_label_values(&[refusal.code.as_str()]).inc();
                            payment_required(
                                &engine,
                                Some(exact),
                                &url,
                                &price,
                                Some(&refusal),
                                refusal.status(),
                            )
                        }
                    };
                }
                (Some(Scheme::ChannelVoucher), _) if price.schemes.channel_voucher => {}
                _ => {
                    let refusal = Refusal::new(
                        ErrorCode::InvalidScheme,
                        format!("scheme {:?} is not accepted on this route", envelope.scheme_name()),
                    );
                    return payment_required(
                        &engine,
                        exact.as_deref(),
                        &url,
                        &price,
                        Some(&refusal),
                        refusal.status(),
                    );
                }
            }
        }
        engine.authorize(header.as_bytes(), &price).await
    };
    // The price is reserved on the channel now, and no lock is held while the request is served.
    let pending = match authorized {
        Ok(p) => p,
        Err(refusal) => {
            return payment_required(
                &engine,
                exact.as_deref(),
                &url,
                &price,
                Some(&refusal),
                refusal.status(),
            );
        }
    };
    let payment: Payment = pending.payment();
    if let Some(settlement) = pending.replayed() {
        // A resend of a voucher already served (its response was lost): not served or charged
        // again, answered with that request's receipt.
        let mut response = replay
            .response(payment.channel_id, payment.nonce)
            .filter(|_| price.replay_body)
            .unwrap_or_else(serve::already_served);
        with_receipt(&mut response, settlement);
        response
            .headers_mut()
            .insert(HeaderName::from_static(serve::REPLAYED), HeaderValue::from_static("1"));
        return response;
    }
    req.extensions_mut().insert(payment.clone());

    let Ok(response) = inner.call(req).await;
    if response.status().is_server_error() {
        // Not charged: dropping `pending` gives the reservation back, and the voucher (never
        // marked served) may be sent again.
        return response;
    }
    let charge = response.extensions().get::<Charge>().map(|c| c.0);
    if price.pricing == Pricing::Upto && charge.is_none() && serve::is_streamed(&response) {
        // The cost comes at the end of the body: the voucher is made durable now, the charge
        // when the body ends.
        return match pending.commit_deferred().await {
            Ok((settlement, deferred)) => {
                let mut response = serve::charge_at_end(response, deferred);
                with_receipt(&mut response, &settlement);
                response
            }
            Err(refusal) => {
                payment_required(&engine, exact.as_deref(), &url, &price, Some(&refusal), refusal.status())
            }
        };
    }
    let cost = match price.pricing {
        Pricing::Exact => price.amount,
        Pricing::Upto => charge.unwrap_or(price.amount),
    };
    // A small response of a route with replay is kept until it is committed.
    let (mut response, kept) = if price.replay_body && small(&response) {
        let (parts, body) = response.into_parts();
        match http_body_util::BodyExt::collect(http_body_util::Limited::new(body, serve::REPLAY_MAX_BODY))
            .await
        {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                let kept = (parts.status, parts.headers.clone(), bytes.clone());
                (Response::from_parts(parts, Body::from(bytes)), Some(kept))
            }
            // The upstream failed mid-body: not served, not charged.
            Err(_) => return (StatusCode::BAD_GATEWAY, "the response body failed").into_response(),
        }
    } else {
        (response, None)
    };
    match pending.commit(cost).await {
        Ok(settlement) => {
            if let Some((status, headers, body)) = kept {
                replay.insert(
                    payment.channel_id,
                    settlement.extra.as_ref().map_or(0, |e| e.nonce),
                    status,
                    &headers,
                    body,
                );
            }
            with_receipt(&mut response, &settlement);
            response
        }
        Err(refusal) => {
            payment_required(&engine, exact.as_deref(), &url, &price, Some(&refusal), refusal.status())
        }
    }
}

/// Whether a response is small enough to be kept for replay.
fn small(response: &Response) -> bool {
    http_body::Body::size_hint(response.body()).upper().is_some_and(|n| n <= serve::REPLAY_MAX_BODY as u64)
        || response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .is_some_and(|n| n <= serve::REPLAY_MAX_BODY)
}

fn with_receipt(response: &mut Response, settlement: &wire::SettlementResponse) {
    // Base64 is always a valid header value; the String's buffer is taken, not copied.
    if let Ok(v) = HeaderValue::try_from(wire::encode_header(settlement)) {
        response.headers_mut().insert(HeaderName::from_static(wire::PAYMENT_RESPONSE), v);
    }
}

/// A 402 (or 400/503) with the terms in the `PAYMENT-REQUIRED` header and the body: the
/// route's [`wire::SCHEME`] offer, then its `exact` one.
fn payment_required<S: KvStore, C: ChainReader>(
    engine: &Engine<S, C>,
    exact: Option<&dyn ExactHandler>,
    url: &str,
    price: &Price,
    refusal: Option<&Refusal>,
    status: StatusCode,
) -> Response {
    let mut body = engine.payment_required(url, price, refusal);
    if !price.schemes.channel_voucher {
        body.accepts.clear();
    }
    if let Some(exact) = exact.filter(|_| price.schemes.exact) {
        body.exact.push(exact.terms().requirements(price.amount));
    }
    let mut response = (status, axum::Json(&body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&wire::encode_header(&body)) {
        response.headers_mut().insert(HeaderName::from_static(wire::PAYMENT_REQUIRED), v);
    }
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // Terms and channel state are per request: no cache may keep or share them.
    response.headers_mut().insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
