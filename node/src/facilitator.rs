//! The x402 v2 facilitator API, as `HTTPFacilitatorClient` of `@x402/core` calls it: a server
//! using the official middleware (Express, Hono, Next) delegates payment checks and durable
//! recording to this node.
//!
//! - `GET  <path>/supported`: the schemes and networks the node facilitates.
//! - `POST <path>/verify`: `{ x402Version, paymentPayload, paymentRequirements }` →
//!   `{ isValid, invalidReason?, invalidMessage?, payer?, extra? }`. For `channel-voucher` a
//!   valid voucher is RESERVED, exactly as the gateway reserves it for a request in flight, for
//!   at most `paymentRequirements.maxTimeoutSeconds` (capped at [`MAX_RESERVATION_SECS`]);
//!   then the reservation lapses and the price is free again.
//! - `POST <path>/settle`: the same body → the receipt. For `channel-voucher` settle COMMITS
//!   the reserved voucher, charging `paymentRequirements.amount` (never more than verify
//!   reserved), durable before the answer. A settle without a verify verifies and commits at
//!   once; a second settle of the same voucher answers the same receipt (the engine's replay
//!   rule).
//!
//! Every endpoint needs `Authorization: Bearer <[facilitator] token>` (401 otherwise, compared
//! in constant time). Bodies over [`MAX_BODY`] get 413, malformed JSON 400. At most
//! [`MAX_RESERVATIONS`] reservations live at once: a flood of verifies without settles is
//! refused with `unavailable` once they are all live, never buffered without bound.
//!
//! The official `exact` scheme is plugged in through [`ExactScheme`]
//! ([`Facilitator::with_exact`]); without it, `exact` is refused with `invalid_scheme`.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use alloy::primitives::{Address, B256, Bytes as VoucherSignature, U256};
use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use http::StatusCode;
use prometheus::{IntCounterVec, Opts};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};
use x402_protocol::{
    Network,
    wire::{self, ChannelState, DomainInfo, ErrorCode, PaymentEnvelope, Scheme, SettlementExtra, u256_dec},
};
use x402_store::KvStore;

use crate::{Engine, Price, Refusal, auth::BearerToken, chain::ChainReader, engine::Pending};

/// The largest request body accepted, in bytes.
pub const MAX_BODY: usize = 64 * 1024;
/// The most reservations (verified, not yet settled vouchers) held at once.
pub const MAX_RESERVATIONS: usize = 10_000;
/// The longest a reservation is held, whatever `maxTimeoutSeconds` asks, in seconds.
pub const MAX_RESERVATION_SECS: u64 = 600;

/// A boxed future, for the [`ExactScheme`] hook.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The body of `/verify` and `/settle`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FacilitatorRequest {
    /// The caller's x402 version.
    pub x402_version: u32,
    /// The payment the client sent, its payload decoded only once its scheme is known.
    pub payment_payload: PaymentEnvelope,
    /// The requirements the server offered and wants paid.
    pub payment_requirements: Requirements,
}

/// `paymentRequirements` as the node reads it: what it checks is required, `extra` is
/// informative.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Requirements {
    /// The scheme.
    pub scheme: String,
    /// The network (`eip155:<id>`).
    pub network: String,
    /// The price (for `upto` at settle: the actual cost).
    #[serde(with = "u256_dec")]
    pub amount: U256,
    /// The token.
    pub asset: Address,
    /// The provider.
    pub pay_to: Address,
    /// How long the reservation may last.
    pub max_timeout_seconds: u64,
    /// Scheme-specific terms.
    #[serde(default)]
    pub extra: Option<serde_json::Value>,
}

/// The answer of `/verify`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyResponse {
    /// Whether the payment is valid (and, for `channel-voucher`, reserved).
    pub is_valid: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<ErrorCode>,
    /// Why not, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_message: Option<String>,
    /// The payer, when known.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "wire::checksummed::option")]
    pub payer: Option<Address>,
    /// The node's state of the channel, for a corrective refusal (as `extra.channel` of a 402).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<VerifyExtra>,
}

/// The `extra` of a refused [`VerifyResponse`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyExtra {
    /// The channel state, with the payer's own signature of its latest voucher.
    pub channel: ChannelState,
}

impl VerifyResponse {
    /// A valid payment of `payer`.
    pub const fn valid(payer: Address) -> Self {
        Self { is_valid: true, invalid_reason: None, invalid_message: None, payer: Some(payer), extra: None }
    }

    /// A refusal.
    pub fn invalid(refusal: &Refusal) -> Self {
        Self {
            is_valid: false,
            invalid_reason: Some(refusal.code),
            invalid_message: Some(refusal.message.clone()),
            payer: None,
            extra: refusal.state.as_deref().map(|s| VerifyExtra { channel: s.clone() }),
        }
    }
}

/// The answer of `/settle`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettleResponse {
    /// Whether the payment was recorded (or, for `exact`, transferred).
    pub success: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<ErrorCode>,
    /// Why not, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// Empty for `channel-voucher`; the transaction hash for `exact`.
    pub transaction: String,
    /// The network.
    pub network: Network,
    /// The payer.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "wire::checksummed::option")]
    pub payer: Option<Address>,
    /// What was charged.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "u256_dec::option")]
    pub amount: Option<U256>,
    /// The channel after this payment (`channel-voucher`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<SettlementExtra>,
}

impl SettleResponse {
    /// A refusal on `network`.
    pub fn failed(network: Network, refusal: &Refusal) -> Self {
        Self {
            success: false,
            error_reason: Some(refusal.code),
            error_message: Some(refusal.message.clone()),
            transaction: String::new(),
            network,
            payer: None,
            amount: None,
            extra: None,
        }
    }

    /// A receipt of the engine, without the session token of a credit window (a facilitator's
    /// caller pays per request; the token is a bearer credential of the node's own gateway).
    pub fn from_settlement(s: wire::SettlementResponse) -> Self {
        Self {
            success: s.success,
            error_reason: None,
            error_message: None,
            transaction: s.transaction,
            network: s.network,
            payer: Some(s.payer),
            amount: s.amount,
            extra: s.extra.map(|e| SettlementExtra { session: None, ..e }),
        }
    }
}

/// One entry of `/supported`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupportedKind {
    /// The x402 version.
    pub x402_version: u32,
    /// The scheme.
    pub scheme: String,
    /// The network.
    pub network: Network,
    /// Scheme-specific facts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Value>,
}

/// The `exact` scheme's facilitator side, plugged into [`Facilitator::with_exact`]. The
/// facilitator has already checked the caller's token, the body, the scheme on both sides,
/// the network, `payTo` and `asset` when it calls these.
pub trait ExactScheme: Send + Sync + 'static {
    /// Verifies an `exact` payment.
    fn verify<'a>(
        &'a self,
        payment: &'a PaymentEnvelope,
        requirements: &'a Requirements,
    ) -> BoxFuture<'a, VerifyResponse>;
    /// Settles an `exact` payment: submits the transfer and answers after its receipt.
    fn settle<'a>(
        &'a self,
        payment: &'a PaymentEnvelope,
        requirements: &'a Requirements,
    ) -> BoxFuture<'a, SettleResponse>;
    /// The `/supported` entry.
    fn kind(&self) -> SupportedKind;
}

/// A verified voucher waiting for its settle.
struct Reservation<S: KvStore, C: ChainReader> {
    pending: Pending<S, C>,
    cumulative_amount: U256,
    signature: VoucherSignature,
    expires: Instant,
}

/// The facilitator: the engine, the caller's token, and the live reservations.
pub struct Facilitator<S: KvStore, C: ChainReader> {
    engine: Engine<S, C>,
    token: BearerToken,
    reservations: parking_lot::Mutex<HashMap<(B256, u64), Reservation<S, C>>>,
    exact: Option<Arc<dyn ExactScheme>>,
    calls: IntCounterVec,
    max_reservations: usize,
}

impl<S: KvStore, C: ChainReader> std::fmt::Debug for Facilitator<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Facilitator")
            .field("reservations", &self.reservations.lock().len())
            .field("exact", &self.exact.is_some())
            .finish_non_exhaustive()
    }
}

impl<S: KvStore, C: ChainReader> Facilitator<S, C> {
    /// A facilitator for `engine`, answering callers presenting `token`. Its call counter
    /// (`x402_facilitator_calls_total{endpoint, result}`) joins the engine's metrics.
    pub fn new(engine: Engine<S, C>, token: &str) -> Self {
        let calls = IntCounterVec::new(
            Opts::new("x402_facilitator_calls_total", "Facilitator API calls, by endpoint and result"),
            &["endpoint", "result"],
        )
        .expect("valid metric");
        if engine.metrics().register(Box::new(calls.clone())).is_err() {
            debug!(target: "node::facilitator", "call counter already registered");
        }
        Self {
            engine,
            token: BearerToken::new(token),
            reservations: parking_lot::Mutex::default(),
            exact: None,
            calls,
            max_reservations: MAX_RESERVATIONS,
        }
    }

    /// Holds at most `max` reservations at once (default [`MAX_RESERVATIONS`]).
    #[must_use]
    pub fn with_max_reservations(mut self, max: usize) -> Self {
        self.max_reservations = max;
        self
    }

    /// Facilitates the `exact` scheme with `exact`.
    #[must_use]
    pub fn with_exact(mut self, exact: Arc<dyn ExactScheme>) -> Self {
        self.exact = Some(exact);
        self
    }

    /// How many reservations are live (expired ones not yet swept included).
    pub fn reservations(&self) -> usize {
        self.reservations.lock().len()
    }

    /// Drops the reservations whose time is up, freeing what they reserved. Called on every
    /// request and, by the gateway, every second.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let expired: Vec<Reservation<S, C>> = {
            let mut map = self.reservations.lock();
            let keys: Vec<(B256, u64)> =
                map.iter().filter(|(_, r)| r.expires <= now).map(|(k, _)| *k).collect();
            keys.into_iter().filter_map(|k| map.remove(&k)).collect()
        };
        let n = expired.len();
        if n > 0 {
            debug!(target: "node::facilitator", lapsed = n, "reservations lapsed");
        }
        // Dropped outside the map's lock: each drop releases its channel's reservation.
        drop(expired);
        n
    }

    /// `/supported`.
    pub fn supported(&self) -> serde_json::Value {
        let t = self.engine.terms();
        let mut kinds = vec![SupportedKind {
            x402_version: wire::X402_VERSION,
            scheme: wire::SCHEME.into(),
            network: Network::new(t.chain_id),
            extra: Some(serde_json::json!({
                "contract": t.contract.to_checksum(None),
                "domain": DomainInfo::channel(),
            })),
        }];
        if let Some(exact) = &self.exact {
            kinds.push(exact.kind());
        }
        serde_json::json!({
            "kinds": kinds,
            "extensions": [],
            "signers": { "eip155:*": [t.payee.to_checksum(None)] },
        })
    }

    /// The checks common to both endpoints and both schemes: the scheme (the payment's and the
    /// requirements' must agree, and be one the node facilitates), then the network, `payTo`
    /// and `asset`.
    fn check(&self, req: &FacilitatorRequest) -> Result<Scheme, Refusal> {
        let r = &req.payment_requirements;
        if !matches!(req.x402_version, 1 | 2) {
            return Err(Refusal::new(
                ErrorCode::InvalidX402Version,
                format!("x402 version {} is not supported (1 or 2)", req.x402_version),
            ));
        }
        let scheme = match Scheme::parse(&r.scheme) {
            Some(Scheme::ChannelVoucher) => Scheme::ChannelVoucher,
            Some(Scheme::Exact) if self.exact.is_some() => Scheme::Exact,
            _ => {
                return Err(Refusal::new(
                    ErrorCode::InvalidScheme,
                    format!("scheme {:?} is not facilitated by this node", r.scheme),
                ));
            }
        };
        if req.payment_payload.scheme_name() != Some(r.scheme.as_str()) {
            return Err(Refusal::new(
                ErrorCode::InvalidScheme,
                format!(
                    "the payment's scheme {:?} is not the requirements' {:?}",
                    req.payment_payload.scheme_name(),
                    r.scheme
                ),
            ));
        }
        let t = self.engine.terms();
        let network = Network::new(t.chain_id).to_string();
        if r.network != network {
            return Err(Refusal::new(
                ErrorCode::InvalidNetwork,
                format!("network {:?} is not this node's {network}", r.network),
            ));
        }
        if r.pay_to != t.payee {
            return Err(Refusal::new(
                ErrorCode::ChannelMismatch,
                format!("payTo {} is not this node's provider {}", r.pay_to, t.payee),
            ));
        }
        if r.asset != t.asset {
            return Err(Refusal::new(
                ErrorCode::InvalidPayload,
                format!("asset {} is not the token this node accepts ({})", r.asset, t.asset),
            ));
        }
        Ok(scheme)
    }

    /// `/verify`.
    pub async fn verify(&self, req: &FacilitatorRequest) -> VerifyResponse {
        self.sweep();
        let scheme = match self.check(req) {
            Ok(s) => s,
            Err(r) => return VerifyResponse::invalid(&r),
        };
        if scheme == Scheme::Exact
            && let Some(exact) = &self.exact
        {
            return exact.verify(&req.payment_payload, &req.payment_requirements).await;
        }
        let r = &req.payment_requirements;
        let pending =
            match self.engine.authorize_envelope(&req.payment_payload, &Price::exact(r.amount)).await {
                Ok(p) => p,
                Err(refusal) => return VerifyResponse::invalid(&refusal),
            };
        let payment = pending.payment();
        if pending.replayed().is_some() {
            // Served before: a verify must not let it be served again.
            let state = self.engine.channel_state(payment.channel_id).await;
            let refusal = Refusal::new(ErrorCode::NonceTooLow, "this voucher was settled already");
            return VerifyResponse::invalid(&match state {
                Some(s) => refusal.with_state(s),
                None => refusal,
            });
        }
        let signature = match req.payment_payload.payload::<wire::VoucherPayload>() {
            Ok(p) => p.signature,
            Err(e) => {
                return VerifyResponse::invalid(&Refusal::new(ErrorCode::InvalidPayload, e.to_string()));
            }
        };
        let secs = r.max_timeout_seconds.clamp(1, MAX_RESERVATION_SECS);
        let reservation = Reservation {
            cumulative_amount: payment.cumulative_amount,
            signature,
            expires: Instant::now() + Duration::from_secs(secs),
            pending,
        };
        let (refused, replaced) = {
            let mut map = self.reservations.lock();
            if map.len() >= self.max_reservations {
                (Some(reservation), None)
            } else {
                // The engine refuses a voucher already in flight, so the key is free; a stale
                // entry would be replaced (its reservation released when dropped, below).
                (None, map.insert((payment.channel_id, payment.nonce), reservation))
            }
        };
        drop(replaced);
        if let Some(dropped) = refused {
            drop(dropped);
            warn!(target: "node::facilitator", max = self.max_reservations, "too many live reservations; verify refused");
            return VerifyResponse::invalid(&Refusal::new(
                ErrorCode::Unavailable,
                "too many verified payments await their settle; retry later",
            ));
        }
        VerifyResponse::valid(payment.payer)
    }

    /// `/settle`.
    pub async fn settle(&self, req: &FacilitatorRequest) -> SettleResponse {
        self.sweep();
        let network = Network::new(self.engine.terms().chain_id);
        let scheme = match self.check(req) {
            Ok(s) => s,
            Err(r) => return SettleResponse::failed(network, &r),
        };
        if scheme == Scheme::Exact
            && let Some(exact) = &self.exact
        {
            return exact.settle(&req.payment_payload, &req.payment_requirements).await;
        }
        let signed = match self.engine.check_envelope(&req.payment_payload) {
            Ok(s) => s,
            Err(r) => return SettleResponse::failed(network, &r),
        };
        let amount = req.payment_requirements.amount;
        let key = (signed.channel_id(), signed.nonce());
        let reserved = self.reservations.lock().remove(&key);
        let pending = match reserved {
            Some(r)
                if r.cumulative_amount == signed.cumulative_amount() && r.signature == signed.signature =>
            {
                if amount > r.pending.payment().max_amount {
                    let max = r.pending.payment().max_amount;
                    self.reservations.lock().insert(key, r);
                    return SettleResponse::failed(
                        network,
                        &Refusal::new(
                            ErrorCode::InvalidPayload,
                            format!("settle amount {amount} is above the {max} verified"),
                        ),
                    );
                }
                r.pending
            }
            other => {
                // Not verified (or verified as another voucher): verify now, then commit.
                drop(other);
                match self.engine.authorize_envelope(&req.payment_payload, &Price::exact(amount)).await {
                    Ok(p) => p,
                    Err(r) => return SettleResponse::failed(network, &r),
                }
            }
        };
        // A voucher settled before answers its receipt again (nothing is charged twice).
        match pending.commit(amount).await {
            Ok(s) => SettleResponse::from_settlement(s),
            Err(r) => SettleResponse::failed(network, &r),
        }
    }
}

/// The facilitator's routes, to be nested under `[facilitator] path`: everything under it,
/// including unknown paths (404), needs the token.
pub fn router<S: KvStore, C: ChainReader>(facilitator: Arc<Facilitator<S, C>>) -> Router {
    Router::new()
        .route("/supported", get(supported::<S, C>))
        .route("/verify", post(verify::<S, C>))
        .route("/settle", post(settle::<S, C>))
        .fallback(|| async {
            error(StatusCode::NOT_FOUND, "not_found", "not an endpoint of the facilitator API")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&facilitator), authorize::<S, C>))
        .with_state(facilitator)
}

/// A JSON error of the facilitator's own (auth, routing, size).
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": code, "message": message }))).into_response()
}

async fn authorize<S: KvStore, C: ChainReader>(
    State(f): State<Arc<Facilitator<S, C>>>,
    req: Request,
    next: Next,
) -> Response {
    if !f.token.authorizes(req.headers()) {
        f.calls.with_label_values(&["any", "unauthorized"]).inc();
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the facilitator API needs Authorization: Bearer <facilitator.token>",
        );
    }
    next.run(req).await
}

async fn supported<S: KvStore, C: ChainReader>(State(f): State<Arc<Facilitator<S, C>>>) -> Response {
    f.calls.with_label_values(&["supported", "ok"]).inc();
    Json(f.supported()).into_response()
}

/// The body, decoded; `Err` is the 400 to answer.
fn decode(body: &[u8]) -> Result<FacilitatorRequest, String> {
    serde_json::from_slice(body).map_err(|e| format!("malformed request: {e}"))
}

async fn verify<S: KvStore, C: ChainReader>(
    State(f): State<Arc<Facilitator<S, C>>>,
    body: Bytes,
) -> Response {
    let req = match decode(&body) {
        Ok(r) => r,
        Err(message) => {
            f.calls.with_label_values(&["verify", "malformed"]).inc();
            let refusal = Refusal::new(ErrorCode::InvalidPayload, message);
            return (StatusCode::BAD_REQUEST, Json(VerifyResponse::invalid(&refusal))).into_response();
        }
    };
    let answer = f.verify(&req).await;
    f.calls.with_label_values(&["verify", if answer.is_valid { "valid" } else { "invalid" }]).inc();
    Json(answer).into_response()
}

async fn settle<S: KvStore, C: ChainReader>(
    State(f): State<Arc<Facilitator<S, C>>>,
    body: Bytes,
) -> Response {
    let network = Network::new(f.engine.terms().chain_id);
    let req = match decode(&body) {
        Ok(r) => r,
        Err(message) => {
            f.calls.with_label_values(&["settle", "malformed"]).inc();
            let refusal = Refusal::new(ErrorCode::InvalidPayload, message);
            return (StatusCode::BAD_REQUEST, Json(SettleResponse::failed(network, &refusal)))
                .into_response();
        }
    };
    let answer = f.settle(&req).await;
    f.calls.with_label_values(&["settle", if answer.success { "success" } else { "failed" }]).inc();
    Json(answer).into_response()
}
