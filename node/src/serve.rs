//! What happens around serving a paid request besides the payment itself: the cost a streamed
//! response reports at its end, and the replay of a response whose voucher is sent again.
//!
//! **Streamed cost.** A response of an `upto` route whose size is not known in advance (a
//! chunked body, server-sent events) and that carries no [`Charge`](crate::middleware::Charge)
//! may report its actual cost at its end, in base units of the token, as a decimal (or `0x`
//! hexadecimal) integer:
//! - in an HTTP trailer [`COST_TRAILER`] (`X402-Cost: 1234`), or
//! - in a final server-sent event named [`COST_EVENT`] (`event: x402-cost` + `data: 1234`).
//!
//! Both are removed before the response reaches the client. The cost is capped at the route's
//! maximum; a missing or invalid report charges the maximum and logs a warning. The charge is
//! made when the body ends, in memory, and written by [`Engine::flush_charges`] like session
//! charges: a crash before that can only make the node claim less.
//!
//! **Replay.** A resend of the very voucher of a request already served gets that request's
//! receipt (`PAYMENT-RESPONSE`) and is not charged again. A route with
//! [`Price::replay_body`](crate::Price) set also gets its response replayed, if it was at most
//! [`REPLAY_MAX_BODY`] bytes and is at most [`REPLAY_TTL`] old; otherwise the answer is a
//! `409 Conflict` with the receipt and the JSON body `{"error": "already_served", ...}`. Both
//! carry the header [`REPLAYED`].
//!
//! [`Engine::flush_charges`]: crate::Engine::flush_charges

use std::{
    collections::{HashMap, VecDeque},
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use alloy::primitives::{B256, U256};
use axum::{body::Body, response::IntoResponse};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, StatusCode, header::CONTENT_TYPE};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tracing::warn;

use crate::engine::DeferredCharge;

/// Set (`1`) on the answer to a resend of a voucher already served, with its receipt: a
/// `409` means the response is not kept and the client should pay for the request again.
pub const REPLAYED: &str = "x402-replayed";

/// The trailer in which a streamed response may report its cost.
pub const COST_TRAILER: &str = "x402-cost";
/// The server-sent event in which a streamed response may report its cost.
pub const COST_EVENT: &str = "x402-cost";
/// The largest response body kept for replay.
pub const REPLAY_MAX_BODY: usize = 64 * 1024;
/// How long a response is kept for replay.
pub const REPLAY_TTL: Duration = Duration::from_secs(60);
/// The most responses kept for replay.
const REPLAY_CAPACITY: usize = 1024;
/// An event longer than this is passed on without being looked at.
const MAX_EVENT: usize = 64 * 1024;

/// Whether a response's cost may come at its end: an event stream, or a body of unknown size.
pub fn is_streamed(response: &http::Response<Body>) -> bool {
    let sse = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/event-stream"));
    sse || (!response.headers().contains_key(http::header::CONTENT_LENGTH)
        && response.body().size_hint().exact().is_none())
}

/// Wraps a streamed response's body so that its cost report is read, removed, and charged
/// through `charge` when the body ends.
pub fn charge_at_end(response: http::Response<Body>, charge: DeferredCharge) -> http::Response<Body> {
    let sse = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/event-stream"));
    let (mut parts, body) = response.into_parts();
    // The body changes length when the cost event is taken out.
    parts.headers.remove(http::header::CONTENT_LENGTH);
    let body = CostBody {
        inner: body,
        scanner: sse.then(SseScanner::default),
        reported: None,
        invalid: false,
        charge: Some(charge),
        ended: false,
    };
    http::Response::from_parts(parts, Body::new(body))
}

fn parse_cost(text: &str) -> Option<U256> {
    text.trim().parse::<U256>().ok()
}

/// Splits an event stream into events, keeping the cost events back.
#[derive(Debug, Default)]
struct SseScanner {
    buf: BytesMut,
}

impl SseScanner {
    /// Takes a chunk; returns what may be passed on and the cost reports found (`Err` for an
    /// invalid one).
    fn feed(&mut self, chunk: &[u8], costs: &mut Vec<Option<U256>>) -> Bytes {
        self.buf.extend_from_slice(chunk);
        let mut out = BytesMut::new();
        while let Some(end) = event_end(&self.buf) {
            let event = self.buf.split_to(end);
            match cost_event(&event) {
                Some(cost) => costs.push(cost),
                None => out.extend_from_slice(&event),
            }
        }
        if self.buf.len() > MAX_EVENT {
            out.extend_from_slice(&self.buf.split());
        }
        out.freeze()
    }

    fn rest(&mut self, costs: &mut Vec<Option<U256>>) -> Bytes {
        let rest = self.buf.split();
        match cost_event(&rest) {
            Some(cost) => {
                costs.push(cost);
                Bytes::new()
            }
            None => rest.freeze(),
        }
    }
}

/// Where the first event of `buf` ends (after its blank line), if it is complete.
fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `Some(report)` if `event` is a cost event (`Some(None)`: its data is not a cost).
fn cost_event(event: &[u8]) -> Option<Option<U256>> {
    let text = std::str::from_utf8(event).ok()?;
    let mut name = None;
    let mut data = String::new();
    for line in text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)) {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => name = Some(value),
            "data" => data.push_str(value),
            _ => {}
        }
    }
    (name == Some(COST_EVENT)).then(|| parse_cost(&data))
}

struct CostBody {
    inner: Body,
    scanner: Option<SseScanner>,
    /// The latest cost reported.
    reported: Option<U256>,
    invalid: bool,
    charge: Option<DeferredCharge>,
    ended: bool,
}

impl CostBody {
    fn note(&mut self, costs: Vec<Option<U256>>) {
        for cost in costs {
            match cost {
                Some(c) => self.reported = Some(c),
                None => self.invalid = true,
            }
        }
    }

    fn finish(&mut self) {
        let Some(charge) = self.charge.take() else { return };
        match self.reported {
            Some(cost) => {
                if cost > charge.max() {
                    warn!(target: "node::serve", %cost, max = %charge.max(), "reported cost above the route's maximum; capped");
                }
                charge.finish(cost);
            }
            None => {
                let max = charge.max();
                warn!(target: "node::serve", invalid = self.invalid, %max, "streamed response without a valid cost report; charging the maximum");
                charge.finish(max);
            }
        }
    }
}

impl HttpBody for CostBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    // Cut off: whatever was reported so far, or the maximum.
                    this.finish();
                    this.ended = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let frame = match frame.into_data() {
                        Ok(data) => {
                            let Some(scanner) = this.scanner.as_mut() else {
                                return Poll::Ready(Some(Ok(Frame::data(data))));
                            };
                            let mut costs = Vec::new();
                            let out = scanner.feed(&data, &mut costs);
                            this.note(costs);
                            if out.is_empty() {
                                continue;
                            }
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                        Err(frame) => frame,
                    };
                    let Ok(mut trailers) = frame.into_trailers() else { continue };
                    if let Some(value) = trailers.remove(HeaderName::from_static(COST_TRAILER)) {
                        this.note(vec![value.to_str().ok().and_then(parse_cost)]);
                    }
                    // Trailers end the body: the rest of the event stream goes first.
                    let rest = this.take_rest();
                    this.finish();
                    this.ended = true;
                    if !rest.is_empty() {
                        warn!(target: "node::serve", "an unterminated event before the trailers; dropped");
                    }
                    if trailers.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Poll::Ready(None) => {
                    let rest = this.take_rest();
                    this.finish();
                    this.ended = true;
                    if rest.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl CostBody {
    fn take_rest(&mut self) -> Bytes {
        let Some(scanner) = self.scanner.as_mut() else { return Bytes::new() };
        let mut costs = Vec::new();
        let rest = scanner.rest(&mut costs);
        self.note(costs);
        rest
    }
}

impl Drop for CostBody {
    fn drop(&mut self) {
        // The client went away before the end: the cost is what was reported, or the maximum.
        self.finish();
    }
}

/// A response kept to be replayed to a resend of the voucher that paid for it.
#[derive(Clone, Debug)]
struct Kept {
    at: Instant,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// A channel and a voucher nonce.
type Key = (B256, u64);

/// Responses of routes with body replay, by channel and voucher nonce: bounded in number,
/// size and age.
#[derive(Debug, Default)]
pub struct ReplayCache {
    inner: parking_lot::Mutex<(HashMap<Key, Kept>, VecDeque<Key>)>,
}

impl ReplayCache {
    /// Keeps a response (its body at most [`REPLAY_MAX_BODY`] bytes).
    pub fn insert(&self, channel: B256, nonce: u64, status: StatusCode, headers: &HeaderMap, body: Bytes) {
        if body.len() > REPLAY_MAX_BODY {
            return;
        }
        let mut guard = self.inner.lock();
        let (map, order) = &mut *guard;
        while order.len() >= REPLAY_CAPACITY
            || order.front().is_some_and(|k| map.get(k).is_none_or(|e| e.at.elapsed() > REPLAY_TTL))
        {
            let Some(key) = order.pop_front() else { break };
            map.remove(&key);
        }
        let mut headers = headers.clone();
        headers.remove(HeaderName::from_static(x402_protocol::wire::PAYMENT_RESPONSE));
        if map.insert((channel, nonce), Kept { at: Instant::now(), status, headers, body }).is_none() {
            order.push_back((channel, nonce));
        }
    }

    /// The response kept for the voucher, if it is still fresh.
    pub fn response(&self, channel: B256, nonce: u64) -> Option<http::Response<Body>> {
        let guard = self.inner.lock();
        let kept = guard.0.get(&(channel, nonce)).filter(|k| k.at.elapsed() <= REPLAY_TTL)?.clone();
        drop(guard);
        let mut response = http::Response::new(Body::from(kept.body));
        *response.status_mut() = kept.status;
        *response.headers_mut() = kept.headers;
        Some(response)
    }
}

/// The answer to a resend of a voucher already served when its response is not kept.
pub fn already_served() -> http::Response<Body> {
    let body = serde_json::json!({
        "error": "already_served",
        "message": "this voucher already paid for a response, which is not kept; its receipt is in PAYMENT-RESPONSE",
    });
    (StatusCode::CONFLICT, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_scanner_takes_out_cost_events_only() {
        let cases: &[(&[&str], &str, Option<u64>, bool)] = &[
            (&["data: a\n\n", "event: x402-cost\ndata: 42\n\n"], "data: a\n\n", Some(42), false),
            // Split anywhere, CRLF lines, no space after the colon.
            (&["data: a\r\n\r\nevent:x4", "02-cost\r\ndata:7\r\n\r\n"], "data: a\r\n\r\n", Some(7), false),
            // The last report wins; an unterminated final cost event still counts.
            (
                &["event: x402-cost\ndata: 1\n\ndata: b\n\n", "event: x402-cost\ndata: 2"],
                "data: b\n\n",
                Some(2),
                false,
            ),
            // Another event's name or a data line mentioning the cost is left alone.
            (&["event: other\ndata: x402-cost\n\n"], "event: other\ndata: x402-cost\n\n", None, false),
            // An invalid report.
            (&["event: x402-cost\ndata: lots\n\n"], "", None, true),
            (&["event: x402-cost\ndata: -1\n\n"], "", None, true),
        ];
        for (chunks, passed, cost, invalid) in cases {
            let mut scanner = SseScanner::default();
            let mut costs = Vec::new();
            let mut out = Vec::new();
            for chunk in *chunks {
                out.extend_from_slice(&scanner.feed(chunk.as_bytes(), &mut costs));
            }
            out.extend_from_slice(&scanner.rest(&mut costs));
            assert_eq!(std::str::from_utf8(&out).unwrap(), *passed, "{chunks:?}");
            let valid: Vec<U256> = costs.iter().flatten().copied().collect();
            assert_eq!(valid.last().copied(), cost.map(U256::from), "{chunks:?}");
            assert_eq!(costs.iter().any(Option::is_none), *invalid, "{chunks:?}");
        }
    }

    #[test]
    fn replay_cache_is_bounded() {
        let cache = ReplayCache::default();
        let id = B256::repeat_byte(1);
        cache.insert(id, 1, StatusCode::OK, &HeaderMap::new(), Bytes::from_static(b"one"));
        cache.insert(id, 2, StatusCode::OK, &HeaderMap::new(), Bytes::from(vec![0; REPLAY_MAX_BODY + 1]));
        assert!(cache.response(id, 1).is_some());
        assert!(cache.response(id, 2).is_none());
        for n in 10..10 + REPLAY_CAPACITY as u64 {
            cache.insert(id, n, StatusCode::OK, &HeaderMap::new(), Bytes::new());
        }
        assert!(cache.response(id, 1).is_none(), "the oldest leaves first");
        assert!(cache.response(id, 10 + REPLAY_CAPACITY as u64 - 1).is_some());
    }
}
