//! The watcher's HTTP API.
//!
//! - `GET /healthz`: liveness.
//! - `POST /v1/vouchers`: push vouchers ([`WatchRequest`] → [`WatchResponse`]).
//! - `GET /v1/channels`: the watched channels ([`WatchedChannel`] list).
//!
//! Both `/v1` routes need `Authorization: Bearer <token>`; the token is checked before the
//! body is read.

use axum::{
    Json, Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use tracing::{debug, error};
use x402_protocol::watch::{
    ApiError, ApiErrorCode, CHANNELS_PATH, MAX_VOUCHERS_PER_REQUEST, WATCH_PATH, WatchRequest, WatchedChannel,
};
use x402_store::KvStore;

use x402_chain::reader::ChainReader;

use crate::{WatchRecord, Watcher};

/// The largest push body accepted, in bytes: room for [`MAX_VOUCHERS_PER_REQUEST`] vouchers.
const MAX_BODY: usize = 1024 * 1024;

impl<S: KvStore, C: ChainReader> Watcher<S, C> {
    /// The HTTP API: `GET /healthz`, `POST /v1/vouchers`, `GET /v1/channels`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route(WATCH_PATH, post(push::<S, C>))
            .route(CHANNELS_PATH, get(list::<S, C>))
            .with_state(self.clone())
    }

    /// `None` if the request carries the bearer token, else the 401 to answer.
    fn deny(&self, headers: &HeaderMap) -> Option<Response> {
        if self.token().authorizes(headers) {
            return None;
        }
        let mut resp = api_error(
            StatusCode::UNAUTHORIZED,
            ApiErrorCode::Unauthorized,
            "missing or wrong bearer token".into(),
        );
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        Some(resp)
    }
}

fn api_error(status: StatusCode, error: ApiErrorCode, message: String) -> Response {
    (status, Json(ApiError { error, message })).into_response()
}

async fn push<S: KvStore, C: ChainReader>(
    State(watcher): State<Watcher<S, C>>,
    req: Request<Body>,
) -> Response {
    let (parts, body) = req.into_parts();
    if let Some(denied) = watcher.deny(&parts.headers) {
        return denied;
    }
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(e) => {
            let too_large = e.into_inner().downcast::<http_body_util::LengthLimitError>().is_ok();
            let (status, message) = if too_large {
                (StatusCode::PAYLOAD_TOO_LARGE, format!("the body exceeds {MAX_BODY} bytes"))
            } else {
                (StatusCode::BAD_REQUEST, "cannot read the body".to_owned())
            };
            return api_error(status, ApiErrorCode::InvalidRequest, message);
        }
    };
    let request: WatchRequest = match serde_json::from_slice(&bytes) {
        Ok(request) => request,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                ApiErrorCode::InvalidRequest,
                format!("invalid JSON: {e}"),
            );
        }
    };
    if request.vouchers.len() > MAX_VOUCHERS_PER_REQUEST {
        return api_error(
            StatusCode::BAD_REQUEST,
            ApiErrorCode::InvalidRequest,
            format!("{} vouchers: at most {MAX_VOUCHERS_PER_REQUEST} per request", request.vouchers.len()),
        );
    }
    let count = request.vouchers.len();
    match watcher.watch(request).await {
        Ok(response) => {
            debug!(
                target: "watcher",
                vouchers = count,
                stored = response.stored(),
                rejected = response.rejected().count(),
                "push handled"
            );
            Json(response).into_response()
        }
        Err(e) => {
            error!(target: "watcher", error = %e, "cannot store pushed vouchers");
            api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                ApiErrorCode::Unavailable,
                format!("vouchers not stored durably: {e}"),
            )
        }
    }
}

async fn list<S: KvStore, C: ChainReader>(
    State(watcher): State<Watcher<S, C>>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = watcher.deny(&headers) {
        return denied;
    }
    match watcher.channels() {
        Ok(records) => {
            Json(records.iter().map(WatchRecord::summary).collect::<Vec<WatchedChannel>>()).into_response()
        }
        Err(e) => {
            error!(target: "watcher", error = %e, "cannot list watched channels");
            api_error(StatusCode::SERVICE_UNAVAILABLE, ApiErrorCode::Unavailable, e.to_string())
        }
    }
}
