//! A small sample API to put a gateway in front of.

use std::{net::SocketAddr, time::Duration};

use axum::{Router, http::HeaderMap, routing::get};

/// The response header in which an `upto` upstream reports what a request cost (token base
/// units, a decimal integer); the gateway charges it, up to the route's maximum.
pub const LLM_COST_HEADER: &str = "x402-cost";

/// What the sample `/llm` endpoint charges for a request body of `bytes`: 100 plus 10 per byte,
/// at most [`crate::LLM_MAX_PRICE`].
pub fn llm_cost(bytes: usize) -> u64 {
    (100 + 10 * bytes as u64).min(crate::LLM_MAX_PRICE)
}

use crate::{Error, Result};

/// Serves a small JSON API on a free loopback port, in a task of the current runtime (it stops
/// with the runtime):
///
/// - `GET /weather`: `{"forecast": "sunny"}` (the route [`crate::Devnet::node_config`] prices);
/// - `GET /echo`: `payment-header-seen=<bool>`, whether a payment header reached the upstream;
/// - `GET /slow`: answers after 5 s, for timeouts;
/// - `GET` or `POST /llm`: an LLM-like endpoint priced `upto` [`crate::LLM_MAX_PRICE`]: it
///   "completes" the request body and reports what that cost in the `X402-Cost` response header
///   ([`llm_cost`] of the body's length), which the gateway charges instead of the maximum.
pub async fn sample_api() -> Result<SocketAddr> {
    let llm = |body: String| async move {
        let cost = llm_cost(body.len());
        (
            [(LLM_COST_HEADER, cost.to_string())],
            axum::Json(serde_json::json!({ "completion": "42", "promptBytes": body.len(), "cost": cost })),
        )
    };
    let app = Router::new()
        .route("/llm", get(llm).post(llm))
        .route("/weather", get(|| async { axum::Json(serde_json::json!({"forecast": "sunny"})) }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "too late"
            }),
        )
        .route(
            "/echo",
            get(|headers: HeaderMap| async move {
                format!(
                    "payment-header-seen={}",
                    headers.contains_key(x402_protocol::wire::PAYMENT_SIGNATURE)
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(Error::io("127.0.0.1:0"))?;
    let addr = listener.local_addr().map_err(Error::io("127.0.0.1:0"))?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}
