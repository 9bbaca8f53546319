//! The x402 Channels provider node.
//!
//! It answers unpaid requests with `402 Payment Required` and the terms of the
//! `channel-voucher` scheme, verifies the EIP-712 vouchers clients pay with, stores the latest voucher of each
//! channel durably (group-committed) before the paid response is released, and exposes all of
//! it as a tower [`Layer`](tower::Layer) for axum apps ([`middleware::Paywall`]) and as a
//! reverse-proxy [`gateway`] (the `x402-node` binary).
//!
//! Errors: the crate's one [`Error`] enum; a refused payment is a [`Refusal`] instead.
//!
//! Modules:
//! - [`engine`]: the request path: decode, check, verify, commit.
//! - [`channel`]: a channel's record and the rules a voucher must pass.
//! - [`exact`]: the official x402 `exact` EVM scheme (EIP-3009), verified and settled by the node.
//! - [`verify`]: the contract's signature rule: ECDSA first, ERC-1271 only otherwise.
//! - [`auth`]: bearer tokens of the admin and watcher endpoints.
//! - [`chain`]: reading channels from the chain.
//! - [`follower`]: follows the contract's events into the channel records.
//! - [`push`]: pushes the latest vouchers to watchtowers.
//! - [`relay`]: submits payers' gasless opens (EIP-2612 / EIP-3009), paying their gas.
//! - [`settle`]: batch settlement of stored vouchers on-chain.
//! - [`middleware`]: the axum/tower layer.
//! - [`facilitator`]: the x402 facilitator API (`/verify`, `/settle`, `/supported`) for
//!   servers that delegate payments to the node.
//! - [`path`], [`routes`]: the canonical request path and the priced routes' patterns.
//! - [`gateway`], [`config`]: the binary's reverse proxy and its TOML configuration.
//! - [`metrics`]: Prometheus metrics.
//! - [`watcher`]: the watchtower (the `x402-watcher` crate, re-exported): takes pushed
//!   vouchers and settles them if a payer exits.
//!
//! Feature flags:
//! - `test-utils`: an in-memory [`ChainReader`](chain::ChainReader) and fixtures for tests.

pub mod auth;
pub mod book;
pub mod chain;
pub mod channel;
pub mod config;
pub mod engine;
pub mod error;
pub mod exact;
pub mod facilitator;
pub mod follower;
pub mod gateway;
pub mod metrics;
pub mod middleware;
pub mod path;
pub mod push;
pub mod relay;
pub mod routes;
pub mod serve;
pub mod settle;
pub mod verify;

#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;

use http::StatusCode;
use x402_protocol::wire::{ChannelState, ErrorCode};

pub use engine::{Engine, Payment, Price, Schemes, Terms};
pub use error::{Error, Result};
/// The watchtower, its own crate (`x402-watcher`); `x402-node watch` runs it.
pub use x402_watcher as watcher;

/// Resolves on ctrl-c or, on unix, SIGTERM: the shutdown signal of the node's binaries.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// The current unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Why a payment was refused: an x402 error code, a message, and the node's channel state when
/// it helps the client resynchronise.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    /// The machine-readable code.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
    /// The node's state of the channel, if it knows it (boxed: refusals travel in `Result`s).
    pub state: Option<Box<ChannelState>>,
}

impl Refusal {
    /// A refusal without channel state.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), state: None }
    }

    /// Attaches the node's channel state.
    pub fn with_state(mut self, state: ChannelState) -> Self {
        self.state = Some(Box::new(state));
        self
    }

    /// The HTTP status to answer with: 400 for malformed input, 503 when the node cannot
    /// process payments, 402 otherwise.
    pub const fn status(&self) -> StatusCode {
        match self.code {
            ErrorCode::InvalidPayload => StatusCode::BAD_REQUEST,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::PAYMENT_REQUIRED,
        }
    }

    pub(crate) fn unknown(id: alloy::primitives::B256) -> Self {
        Self::new(ErrorCode::ChannelUnknown, format!("channel {id} does not exist on-chain"))
    }

    pub(crate) fn storage(e: x402_store::Error) -> Self {
        Self::new(ErrorCode::Unavailable, format!("storage unavailable: {e}"))
    }

    pub(crate) fn book(e: Error) -> Self {
        match e {
            Error::Store(e) => Self::storage(e),
            e => Self::new(ErrorCode::Unavailable, e.to_string()),
        }
    }

    pub(crate) fn chain(e: chain::ChainError) -> Self {
        Self::new(ErrorCode::Unavailable, format!("chain unavailable: {e}"))
    }
}
