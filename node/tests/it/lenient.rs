//! An upstream that reads request paths as loosely as real servers do, all at once, to put the
//! gateway's paywall to the test; and a raw HTTP/1.1 client that sends request targets exactly
//! as written (HTTP client libraries normalise them first).
//!
//! The upstream serves a secret forecast at `/weather` for `GET` and `HEAD`, and reads a path
//! like the loosest servers: it percent-decodes it twice (including `%2F` and `%5C`), takes `\`
//! for `/`, ignores case, `;parameters`, empty segments and a trailing slash, resolves dot
//! segments (as Python's `http.server` does), and honours `X-Original-URL` and
//! `X-HTTP-Method-Override`. Other paths:
//! - `/llm`: an `upto` route; reports the cost given in the query (`?cost=…`) in `X402-Cost`,
//!   and with `?slow=ms` waits that long first;
//! - `/echo`: answers with the method, raw target and headers it received, as JSON;
//! - `/free`: unpriced;
//! - `/moved`: a redirect to `/weather`.
//!
//! Every raw request target it received is recorded.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, body::Body, http::Request, response::IntoResponse};
use http::StatusCode;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The body of the priced route: no unpaid response may contain it.
pub(crate) const SECRET: &str = "SECRET-FORECAST";

/// The lenient upstream: its address and every raw request target it received.
#[derive(Clone, Debug)]
pub(crate) struct Lenient {
    pub(crate) addr: SocketAddr,
    pub(crate) seen: Arc<Mutex<Vec<String>>>,
}

impl Lenient {
    /// How many requests reached it.
    pub(crate) fn hits(&self) -> usize {
        self.seen.lock().len()
    }
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The path as the loosest server reads it.
pub(crate) fn loose(raw: &str) -> String {
    let path = raw.split('?').next().unwrap_or_default();
    let path = decode(&decode(path)).replace('\\', "/").to_ascii_lowercase();
    let mut out: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment.split(';').next().unwrap_or_default() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

async fn serve(seen: Arc<Mutex<Vec<String>>>, req: Request<Body>) -> axum::response::Response {
    let raw = req.uri().path_and_query().map_or_else(|| req.uri().to_string(), |p| p.to_string());
    seen.lock().push(raw.clone());
    let headers = req.headers();
    let target = headers.get("x-original-url").and_then(|v| v.to_str().ok()).unwrap_or(&raw).to_owned();
    let method = headers
        .get("x-http-method-override")
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| req.method().to_string(), str::to_ascii_uppercase);
    let query = raw.split_once('?').map(|(_, q)| q.to_owned()).unwrap_or_default();
    let param = |name: &str| {
        query.split('&').find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('='))).map(decode)
    };
    match (method.as_str(), loose(&target).as_str()) {
        ("GET" | "HEAD", "/weather") => SECRET.into_response(),
        (_, "/llm") => {
            if let Some(ms) = param("slow").and_then(|v| v.parse().ok()) {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            match param("cost") {
                Some(cost) => ([("x402-cost", cost)], "completion").into_response(),
                None => "completion".into_response(),
            }
        }
        (_, "/echo") => {
            let headers: serde_json::Map<String, serde_json::Value> =
                headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().into())).collect();
            axum::Json(serde_json::json!({ "method": method, "target": raw, "headers": headers }))
                .into_response()
        }
        (_, "/free") => "free".into_response(),
        (_, "/moved") => (StatusCode::FOUND, [("location", "/weather")]).into_response(),
        _ => (StatusCode::NOT_FOUND, "no such page").into_response(),
    }
}

/// Starts the lenient upstream on a free loopback port.
pub(crate) async fn start() -> Lenient {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new().fallback({
        let seen = Arc::clone(&seen);
        move |req: Request<Body>| serve(Arc::clone(&seen), req)
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    Lenient { addr, seen }
}

/// A raw HTTP/1.1 response.
#[derive(Debug)]
pub(crate) struct Raw {
    pub(crate) status: u16,
    /// The header block, names lower-cased.
    pub(crate) head: String,
    /// Everything after the header block (chunked framing left in).
    pub(crate) body: String,
}

impl Raw {
    /// The value of header `name` (lower case), if present.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            (n.trim() == name).then(|| v.trim())
        })
    }
}

/// Sends `method target HTTP/1.1` to `addr` with `headers` (a `Host` header is added unless
/// given) and reads the whole response.
pub(crate) async fn send(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Raw {
    let mut request = format!("{method} {target} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("host: {addr}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("connection: close\r\ncontent-length: 0\r\n\r\n");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connects");
    stream.write_all(request.as_bytes()).await.expect("writes");
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut bytes))
        .await
        .expect("answers in time")
        .expect("reads");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let head = head
        .lines()
        .map(|l| match l.split_once(':') {
            Some((n, v)) => format!("{}:{v}", n.to_ascii_lowercase()),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    Raw { status, head, body: body.to_owned() }
}

#[test]
fn the_upstream_reads_paths_loosely() {
    for (raw, path) in [
        ("/%2577eather", "/weather"),
        ("/WEATHER/", "/weather"),
        ("/x/..;/weather", "/weather"),
        ("/x\\..\\weather", "/weather"),
        ("/weather;jsessionid=1?x", "/weather"),
        ("//a/./b/../weather", "/a/weather"),
        ("/a%2F..%2Fweather", "/weather"),
    ] {
        assert_eq!(loose(raw), path, "{raw}");
    }
}
