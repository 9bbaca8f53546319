//! The load generator: drives the server over loopback with vouchers signed before the timed
//! window, one worker per connection, each owning a disjoint set of channels (so a channel's
//! vouchers arrive in nonce order, as one client's would).

use std::{
    collections::VecDeque,
    path::Path,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use alloy::primitives::{B256, U256};
use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use x402_protocol::wire::{self, PaymentRequired, SettlementResponse};

use crate::{
    fixture::{PRICE, Vouchers},
    server::Stats,
};

/// A running server process.
#[derive(Debug)]
pub struct Server {
    child: tokio::process::Child,
    /// Its base URL.
    pub url: String,
    http: Http,
    /// How long it took from spawning to answering `/healthz`.
    pub startup: Duration,
}

impl Server {
    /// Starts `x402-bench serve` (this executable) with `channels` on its chain, credit window
    /// `window`, storing in `data`; with `upstream`, as the gateway in front of it.
    pub async fn start(
        channels: u64,
        window: u32,
        data: &Path,
        upstream: Option<&str>,
    ) -> eyre::Result<Self> {
        let started = Instant::now();
        let mut command = tokio::process::Command::new(std::env::current_exe()?);
        command
            .args(["serve", "--channels", &channels.to_string(), "--window", &window.to_string()])
            .arg("--data")
            .arg(data);
        if let Some(upstream) = upstream {
            command.args(["--upstream", upstream]);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| eyre::eyre!("no stdout"))?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let addr = loop {
            let line = tokio::time::timeout(Duration::from_secs(600), lines.next_line())
                .await
                .map_err(|_| eyre::eyre!("the server did not start"))??
                .ok_or_else(|| eyre::eyre!("the server exited before listening"))?;
            if let Some(addr) = line.strip_prefix("listening ") {
                break addr.to_owned();
            }
        };
        let url = format!("http://{addr}");
        let http = Http::new();
        let (status, _) = http.get(&format!("{url}/healthz"), None).await?;
        eyre::ensure!(status == StatusCode::OK, "healthz answered {status}");
        Ok(Self { child, url, http, startup: started.elapsed() })
    }

    /// The server process's id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The server's counters now.
    pub async fn stats(&self) -> eyre::Result<Stats> {
        let (status, body) = self.http.get_body(&format!("{}/_bench/stats", self.url)).await?;
        eyre::ensure!(status == StatusCode::OK, "stats answered {status}");
        Ok(serde_json::from_slice(&body)?)
    }

    /// The `/paid` requirements, from an unpaid request.
    pub async fn requirements(&self) -> eyre::Result<x402_protocol::wire::PaymentRequirements> {
        let (status, body) = self.http.get_body(&format!("{}/paid", self.url)).await?;
        eyre::ensure!(status == StatusCode::PAYMENT_REQUIRED, "/paid answered {status} without payment");
        let mut required: PaymentRequired = serde_json::from_slice(&body)?;
        eyre::ensure!(!required.accepts.is_empty(), "no requirements");
        Ok(required.accepts.remove(0))
    }

    /// Stops the server (closing its stdin) and waits for it.
    pub async fn stop(mut self) -> eyre::Result<()> {
        drop(self.child.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await??;
        eyre::ensure!(status.success(), "the server exited with {status}");
        Ok(())
    }
}

/// A keep-alive HTTP/1 client.
#[derive(Clone, Debug)]
pub struct Http {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    /// A client with a connection pool.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self { client: Client::builder(TokioExecutor::new()).pool_max_idle_per_host(1024).build(connector) }
    }

    /// `GET url` with an optional header; returns the status and the `PAYMENT-RESPONSE`.
    pub async fn get(
        &self,
        url: &str,
        header: Option<(&'static str, HeaderValue)>,
    ) -> eyre::Result<(StatusCode, Option<HeaderValue>)> {
        let mut req = Request::get(url);
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        let resp = self.client.request(req.body(Empty::new())?).await?;
        let status = resp.status();
        let receipt = resp.headers().get(wire::PAYMENT_RESPONSE).cloned();
        // Read the body so the connection is reused.
        resp.into_body().collect().await?;
        Ok((status, receipt))
    }

    async fn get_body(&self, url: &str) -> eyre::Result<(StatusCode, Bytes)> {
        let resp = self.client.request(Request::get(url).body(Empty::new())?).await?;
        let status = resp.status();
        Ok((status, resp.into_body().collect().await?.to_bytes()))
    }
}

/// One channel's pre-signed vouchers and its session.
#[derive(Debug)]
struct Lane {
    channel: B256,
    vouchers: VecDeque<HeaderValue>,
    session: Option<(HeaderValue, u32)>,
}

/// Pre-signs, for channels `first..first + channels`, `per_channel` vouchers each, where
/// voucher `j` pays `window` requests on top of the `window * (j - 1)` paid before it, starting
/// after nonce `start_nonce` and amount `start_nonce * PRICE` (what a warm-up paid). Spread
/// over `workers` workers by channel.
fn presign(
    vouchers: &Vouchers,
    first: u64,
    channels: u64,
    per_channel: u64,
    window: u32,
    start_nonce: u64,
    workers: usize,
) -> Vec<Vec<Lane>> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let ids: Vec<u64> = (first..first + channels).collect();
    let chunk = ids.len().div_ceil(threads).max(1);
    let lanes: Vec<Lane> = std::thread::scope(|scope| {
        let handles: Vec<_> = ids
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|&i| {
                            let vouchers = (1..=per_channel)
                                .map(|j| {
                                    let amount =
                                        U256::from(start_nonce * PRICE + j * u64::from(window) * PRICE);
                                    let header = vouchers.header(i, start_nonce + j, amount);
                                    HeaderValue::from_str(&header).expect("base64 is a valid header")
                                })
                                .collect();
                            Lane { channel: crate::fixture::channel_id(i), vouchers, session: None }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("signing thread")).collect()
    });
    let mut out: Vec<Vec<Lane>> = (0..workers).map(|_| Vec::new()).collect();
    for (n, lane) in lanes.into_iter().enumerate() {
        out[n % workers].push(lane);
    }
    out
}

/// What one timed run measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Run {
    /// What was run.
    pub name: String,
    /// Paid or not.
    pub paid: bool,
    /// The credit window the client used.
    pub window: u32,
    /// Channels the load was spread over.
    pub channels: u64,
    /// Concurrent connections.
    pub concurrency: usize,
    /// Requests answered 200.
    pub ok: u64,
    /// Requests that failed or were refused.
    pub errors: u64,
    /// Wall time of the timed window, seconds.
    pub seconds: f64,
    /// `ok / seconds`.
    pub rps: f64,
    /// Server CPU time per answered request, microseconds.
    pub cpu_us_per_request: f64,
    /// Group commits (hot-path fsyncs) per paid request.
    pub fsyncs_per_request: f64,
    /// The store's checkpoint fsyncs (off the hot path) per paid request.
    #[serde(default)]
    pub checkpoints_per_request: f64,
    /// Mean writes per group commit.
    pub mean_batch: f64,
    /// The largest group commit so far.
    pub max_batch: u64,
    /// Paid requests served with a session token.
    pub paid_by_session: u64,
    /// Server resident memory at the end, KiB.
    pub server_rss_kib: u64,
    /// Paid requests refused with a corrective 402 (`nonce_too_low`, `amount_below_price`).
    #[serde(default)]
    pub corrective: u64,
}

/// A timed run's shape.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Name in the report.
    pub name: String,
    /// Whether `/paid` (with vouchers) or `/free` is requested.
    pub paid: bool,
    /// Credit window (1: a voucher per request).
    pub window: u32,
    /// First channel index.
    pub first: u64,
    /// How many channels.
    pub channels: u64,
    /// Connections.
    pub concurrency: usize,
    /// At most this long.
    pub duration: Duration,
    /// At most this many requests (vouchers are signed for them beforehand).
    pub requests: u64,
    /// Whether every channel gets one paid request (untimed) before the window.
    pub warm_up: bool,
    /// Vouchers already paid on each channel (nonce and amount in prices), e.g. in a store
    /// written beforehand.
    pub start: u64,
}

/// Runs `plan` against `server`.
pub async fn run(server: &Server, vouchers: &Vouchers, plan: &Plan) -> eyre::Result<Run> {
    run_observed(server, vouchers, plan, || {}).await
}

/// Runs `plan` against `server`, calling `on_start` as its timed window opens (after the
/// warm-up and the signing), e.g. to start a profile of the server.
pub async fn run_observed(
    server: &Server,
    vouchers: &Vouchers,
    plan: &Plan,
    on_start: impl FnOnce(),
) -> eyre::Result<Run> {
    let concurrency = plan.concurrency.min(usize::try_from(plan.channels).unwrap_or(usize::MAX)).max(1);
    let mut start_nonce = plan.start;
    if plan.paid && plan.warm_up {
        // One voucher per channel, outside the timed window: the node loads each channel (a
        // chain lookup, a new record) before the measurement.
        let lanes = presign(vouchers, plan.first, plan.channels, 1, 1, start_nonce, concurrency);
        drive(server, lanes, true, Duration::from_secs(3600), u64::MAX).await?;
        start_nonce += 1;
    }
    let lanes = if plan.paid {
        let per_request = u64::from(plan.window.max(1));
        let per_channel = plan.requests.div_ceil(plan.channels).div_ceil(per_request).max(1);
        presign(
            vouchers,
            plan.first,
            plan.channels,
            per_channel,
            plan.window.max(1),
            start_nonce,
            concurrency,
        )
    } else {
        (0..concurrency).map(|_| Vec::new()).collect()
    };
    let before = server.stats().await?;
    let started = Instant::now();
    on_start();
    let (ok, errors) = drive(server, lanes, plan.paid, plan.duration, plan.requests).await?;
    let seconds = started.elapsed().as_secs_f64();
    let after = server.stats().await?;
    let served = ok.max(1) as f64;
    let paid = after.paid.saturating_sub(before.paid).max(1) as f64;
    let flushes = after.flushes.saturating_sub(before.flushes);
    let checkpoints = after.checkpoints.saturating_sub(before.checkpoints);
    let writes = after.synced_writes.saturating_sub(before.synced_writes);
    Ok(Run {
        name: plan.name.clone(),
        paid: plan.paid,
        window: plan.window,
        channels: plan.channels,
        concurrency,
        ok,
        errors,
        seconds,
        rps: ok as f64 / seconds,
        cpu_us_per_request: after.usage.cpu_us.saturating_sub(before.usage.cpu_us) as f64 / served,
        fsyncs_per_request: if plan.paid { flushes as f64 / paid } else { 0.0 },
        checkpoints_per_request: if plan.paid { checkpoints as f64 / paid } else { 0.0 },
        mean_batch: if flushes == 0 { 0.0 } else { writes as f64 / flushes as f64 },
        max_batch: after.max_batch,
        paid_by_session: after.paid_by_session.saturating_sub(before.paid_by_session),
        server_rss_kib: after.usage.rss_kib,
        corrective: 0,
    })
}

/// Each worker sends requests back to back, round-robin over its lanes, until `duration` has
/// passed, `limit` requests were sent, or (paid) its vouchers are used up.
async fn drive(
    server: &Server,
    lanes: Vec<Vec<Lane>>,
    paid: bool,
    duration: Duration,
    limit: u64,
) -> eyre::Result<(u64, u64)> {
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + duration;
    let url = Arc::new(format!("{}/{}", server.url, if paid { "paid" } else { "free" }));
    let mut tasks = Vec::new();
    for mut lanes in lanes {
        let (http, ok, errors, sent, stop, url) =
            (server.http.clone(), ok.clone(), errors.clone(), sent.clone(), stop.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut next = 0usize;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if sent.load(Ordering::Relaxed) >= limit {
                    break;
                }
                let mut by_voucher = false;
                let header = if paid {
                    if lanes.is_empty() {
                        break;
                    }
                    next = (next + 1) % lanes.len();
                    let lane = &mut lanes[next];
                    match lane.session.as_mut() {
                        Some((token, uses)) if *uses > 0 => {
                            *uses -= 1;
                            Some((wire::PAYMENT_SESSION, token.clone()))
                        }
                        _ => match lane.vouchers.pop_front() {
                            Some(v) => {
                                by_voucher = true;
                                Some((wire::PAYMENT_SIGNATURE, v))
                            }
                            None => {
                                lanes.swap_remove(next);
                                continue;
                            }
                        },
                    }
                } else {
                    None
                };
                sent.fetch_add(1, Ordering::Relaxed);
                match http.get(&url, header).await {
                    Ok((StatusCode::OK, receipt)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        // Only a voucher's receipt can grant a new session; a client need not
                        // decode the others.
                        if by_voucher
                            && let Some(receipt) = receipt
                            && let Ok(settled) = wire::decode_header::<SettlementResponse>(receipt.as_bytes())
                            && let Some(extra) = settled.extra
                            && let Some(grant) = extra.session
                            && let Some(lane) = lanes.iter_mut().find(|l| l.channel == extra.channel_id)
                        {
                            let value = wire::encode_session(extra.channel_id, grant.token);
                            let fresh =
                                lane.session.as_ref().is_none_or(|(t, _)| t.as_bytes() != value.as_bytes());
                            if fresh {
                                lane.session = HeaderValue::from_str(&value).ok().map(|v| (v, grant.uses));
                            }
                        }
                    }
                    Ok(_) | Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    stop.store(true, Ordering::Relaxed);
    Ok((ok.load(Ordering::Relaxed), errors.load(Ordering::Relaxed)))
}

/// Runs `plan.concurrency` workers sending requests at once on the single channel
/// `plan.first` (paid: each with the next voucher, nonce `n` paying `n` prices, taken from one
/// queue, so they reach the node in about, not exactly, nonce order) for `plan.duration`, at
/// most `plan.requests` requests. The channel first gets one paid request outside the timed
/// window.
pub async fn one_channel(server: &Server, vouchers: &Vouchers, plan: &Plan) -> eyre::Result<Run> {
    let (name, paid, channel, concurrency, duration, requests) =
        (plan.name.as_str(), plan.paid, plan.first, plan.concurrency, plan.duration, plan.requests);
    let url = Arc::new(format!("{}/{}", server.url, if paid { "paid" } else { "free" }));
    let queue: Arc<queue::Queue> = Arc::new(queue::Queue::default());
    if paid {
        let warm = HeaderValue::from_str(&vouchers.header(channel, 1, U256::from(PRICE)))?;
        let (status, _) = server.http.get(&url, Some((wire::PAYMENT_SIGNATURE, warm))).await?;
        eyre::ensure!(status == StatusCode::OK, "the warm-up request answered {status}");
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
        let per = requests.div_ceil(threads).max(1);
        let signed: Vec<HeaderValue> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    scope.spawn(move || {
                        (t * per..((t + 1) * per).min(requests))
                            .map(|k| {
                                let nonce = k + 2;
                                let header = vouchers.header(channel, nonce, U256::from(nonce * PRICE));
                                HeaderValue::from_str(&header).expect("base64 is a valid header")
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().expect("signing thread")).collect()
        });
        queue.fill(signed);
    }
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let corrective = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let before = server.stats().await?;
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, url, queue) = (server.http.clone(), Arc::clone(&url), Arc::clone(&queue));
        let (ok, errors, corrective, sent) =
            (Arc::clone(&ok), Arc::clone(&errors), Arc::clone(&corrective), Arc::clone(&sent));
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline && sent.fetch_add(1, Ordering::Relaxed) < requests {
                let header = if paid {
                    match queue.pop() {
                        Some(v) => Some((wire::PAYMENT_SIGNATURE, v)),
                        None => break,
                    }
                } else {
                    None
                };
                match http.get(&url, header).await {
                    Ok((StatusCode::OK, _)) => ok.fetch_add(1, Ordering::Relaxed),
                    Ok((StatusCode::PAYMENT_REQUIRED, _)) => corrective.fetch_add(1, Ordering::Relaxed),
                    Ok(_) | Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = server.stats().await?;
    let served = ok.load(Ordering::Relaxed);
    let flushes = after.flushes.saturating_sub(before.flushes);
    let checkpoints = after.checkpoints.saturating_sub(before.checkpoints);
    let writes = after.synced_writes.saturating_sub(before.synced_writes);
    let paid_count = after.paid.saturating_sub(before.paid).max(1) as f64;
    Ok(Run {
        name: name.into(),
        paid,
        window: 1,
        channels: 1,
        concurrency,
        ok: served,
        errors: errors.load(Ordering::Relaxed),
        seconds,
        rps: served as f64 / seconds,
        cpu_us_per_request: after.usage.cpu_us.saturating_sub(before.usage.cpu_us) as f64
            / served.max(1) as f64,
        fsyncs_per_request: if paid { flushes as f64 / paid_count } else { 0.0 },
        checkpoints_per_request: if paid { checkpoints as f64 / paid_count } else { 0.0 },
        mean_batch: if flushes == 0 { 0.0 } else { writes as f64 / flushes as f64 },
        max_batch: after.max_batch,
        paid_by_session: 0,
        server_rss_kib: after.usage.rss_kib,
        corrective: corrective.load(Ordering::Relaxed),
    })
}

/// A queue of vouchers shared by the workers of one channel.
mod queue {
    use std::{collections::VecDeque, sync::Mutex};

    use http::HeaderValue;

    #[derive(Debug, Default)]
    pub(super) struct Queue(Mutex<VecDeque<HeaderValue>>);

    impl Queue {
        pub(super) fn fill(&self, items: Vec<HeaderValue>) {
            self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(items);
        }

        pub(super) fn pop(&self) -> Option<HeaderValue> {
            self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop_front()
        }
    }
}

/// Latency percentiles, microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Requests measured.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
}

/// `q`-quantile (0..=1) of sorted `values`, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn latency(mut samples: Vec<f64>) -> Latency {
    samples.sort_by(f64::total_cmp);
    Latency { count: samples.len() as u64, p50_us: quantile(&samples, 0.5), p99_us: quantile(&samples, 0.99) }
}

/// Paid and unpaid latency at a fixed, moderate rate: `rate` requests per second alternating
/// paid and unpaid, each paid one on a channel of its own (channels
/// `first..first + rate * secs / 2`, warmed up before), open loop. With `session`, the paid
/// requests present session tokens (the warm-up vouchers prepaid a window); otherwise each
/// carries a fresh voucher.
pub async fn latency_at_rate(
    server: &Server,
    vouchers: &Vouchers,
    first: u64,
    rate: u64,
    duration: Duration,
    session: bool,
) -> eyre::Result<(Latency, Latency, u64)> {
    let paid_count = rate * duration.as_secs() / 2;
    let headers: Vec<(&'static str, HeaderValue)> = if session {
        let mut warm = presign(vouchers, first, paid_count, 1, 10, 0, 1).remove(0);
        let mut tokens = Vec::new();
        for lane in &mut warm {
            let voucher = lane.vouchers.pop_front().ok_or_else(|| eyre::eyre!("no voucher"))?;
            let (status, receipt) = server
                .http
                .get(&format!("{}/paid", server.url), Some((wire::PAYMENT_SIGNATURE, voucher)))
                .await?;
            eyre::ensure!(status == StatusCode::OK, "warm-up voucher answered {status}");
            let receipt = receipt.ok_or_else(|| eyre::eyre!("no PAYMENT-RESPONSE"))?;
            let settled: SettlementResponse = wire::decode_header(receipt.as_bytes())?;
            let grant =
                settled.extra.and_then(|e| e.session).ok_or_else(|| eyre::eyre!("no session granted"))?;
            tokens.push((
                wire::PAYMENT_SESSION,
                HeaderValue::from_str(&wire::encode_session(lane.channel, grant.token))?,
            ));
        }
        tokens
    } else {
        let warm = presign(vouchers, first, paid_count, 1, 1, 0, 16);
        drive(server, warm, true, Duration::from_secs(3600), u64::MAX).await?;
        presign(vouchers, first, paid_count, 1, 1, 1, 1)
            .into_iter()
            .flatten()
            .filter_map(|mut lane| lane.vouchers.pop_front().map(|v| (wire::PAYMENT_SIGNATURE, v)))
            .collect()
    };
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    for header in headers {
        for paid in [true, false] {
            tick.tick().await;
            let http = server.http.clone();
            let url = format!("{}/{}", server.url, if paid { "paid" } else { "free" });
            let header = paid.then(|| header.clone());
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                let result = http.get(&url, header).await;
                let micros = started.elapsed().as_secs_f64() * 1e6;
                (paid, matches!(result, Ok((StatusCode::OK, _))), micros)
            }));
        }
    }
    let (mut paid, mut free, mut errors) = (Vec::new(), Vec::new(), 0);
    for task in tasks {
        let (is_paid, ok, micros) = task.await?;
        if !ok {
            errors += 1;
        } else if is_paid {
            paid.push(micros);
        } else {
            free.push(micros);
        }
    }
    Ok((latency(paid), latency(free), errors))
}

/// A soak run: steady paid load over `channels` channels (from `first`) for `duration`,
/// vouchers signed as it goes, sampling the server's memory every `every`.
pub async fn soak(
    server: &Server,
    vouchers: Arc<Vouchers>,
    first: u64,
    channels: u64,
    concurrency: usize,
    duration: Duration,
    every: Duration,
) -> eyre::Result<Soak> {
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    let per_worker = channels / concurrency as u64;
    for w in 0..concurrency as u64 {
        let (http, ok, errors, vouchers) =
            (server.http.clone(), ok.clone(), errors.clone(), vouchers.clone());
        let url = format!("{}/paid", server.url);
        tasks.push(tokio::spawn(async move {
            let mut nonces = vec![0u64; usize::try_from(per_worker).unwrap_or(0)];
            let mut lane = 0usize;
            while Instant::now() < deadline && !nonces.is_empty() {
                lane = (lane + 1) % nonces.len();
                nonces[lane] += 1;
                let (i, nonce) = (first + w * per_worker + lane as u64, nonces[lane]);
                let v = vouchers.clone();
                let header =
                    tokio::task::spawn_blocking(move || v.header(i, nonce, U256::from(nonce * PRICE)))
                        .await
                        .ok()
                        .and_then(|h| HeaderValue::from_str(&h).ok());
                let counter = match http.get(&url, header.map(|h| (wire::PAYMENT_SIGNATURE, h))).await {
                    Ok((StatusCode::OK, _)) => &ok,
                    _ => &errors,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(every.min(deadline.saturating_duration_since(Instant::now()))).await;
        let stats = server.stats().await?;
        samples.push((started.elapsed().as_secs_f64(), stats.usage.rss_kib));
    }
    for task in tasks {
        task.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    Ok(Soak {
        channels,
        seconds,
        ok,
        errors: errors.load(Ordering::Relaxed),
        rps: ok as f64 / seconds,
        rss_samples_kib: samples,
    })
}

/// What a soak run saw.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Soak {
    /// Channels.
    pub channels: u64,
    /// Length, seconds.
    pub seconds: f64,
    /// Paid requests served.
    pub ok: u64,
    /// Failed or refused requests.
    pub errors: u64,
    /// Paid requests per second.
    pub rps: f64,
    /// `(seconds since start, server RSS KiB)`.
    pub rss_samples_kib: Vec<(f64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
    }
}
