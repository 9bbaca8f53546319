//! A small sample API to put a gateway in front of.

use std::{net::SocketAddr, time::Duration};

use axum::{Router, http::HeaderMap, routing::get};

use crate::{Error, Result};

/// Serves a small JSON API on a free loopback port, in a task of the current runtime (it stops
/// with the runtime):
///
/// - `GET /weather`: `{"forecast": "sunny"}` (the route [`crate::Devnet::node_config`] prices);
/// - `GET /echo`: `payment-header-seen=<bool>`, whether a payment header reached the upstream;
/// - `GET /slow`: answers after 5 s, for timeouts.
pub async fn sample_api() -> Result<SocketAddr> {
    let app = Router::new()
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
