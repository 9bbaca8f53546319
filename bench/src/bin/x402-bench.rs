//! `x402-bench`: the benchmark of x402 Channels. A thin CLI over the `x402_bench` library.

use std::{path::PathBuf, sync::Arc, time::Duration};

use clap::{Parser, Subcommand};
use x402_bench::{
    fixture::Vouchers,
    load::{self, Plan, Server},
    profile::{self, Profile},
    report::{
        Gas, LatencyReport, ONE_CHANNEL_PAID, ONE_CHANNEL_UNPAID, Results, Scale, Verify, note, say,
        thousands,
    },
    server::{self, ServeArgs},
};

/// Benchmarks the x402 Channels node: throughput, CPU, latency, durability, scale and gas.
#[derive(Debug, Parser)]
#[command(name = "x402-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs every measurement and writes docs/BENCHMARKS.md, docs/bench/results.json and
    /// docs/bench/throughput.svg.
    Run(RunArgs),
    /// The node under test (started by `run`).
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        channels: u64,
        #[arg(long, default_value_t = 1)]
        window: u32,
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// Serve as the gateway in front of this upstream.
        #[arg(long)]
        upstream: Option<String>,
    },
    /// Summarises a `perf record` of the server (taken during a paid run) into the report's
    /// buckets, as JSON on stdout: how `docs/bench/profile-before.json` was made.
    Profile {
        /// The perf.data file (`perf report` must find the binary's symbols: by its path or in
        /// the build-id cache, `perf buildid-cache -a <binary>`).
        #[arg(long)]
        data: PathBuf,
        /// The server CPU per request that run measured, microseconds.
        #[arg(long)]
        cpu_us: f64,
        /// How the profile was taken (the run, the perf command, the code's commit).
        #[arg(long)]
        taken: String,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Length of each timed run, seconds.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// The most requests per timed run (their vouchers are signed beforehand).
    #[arg(long, default_value_t = 120_000)]
    requests: u64,
    /// Channels of the main runs.
    #[arg(long, default_value_t = 1_000)]
    channels: u64,
    /// Channels of the "many channels" run.
    #[arg(long, default_value_t = 100_000)]
    many_channels: u64,
    /// Channels in the store of the scale run.
    #[arg(long, default_value_t = 1_000_000)]
    scale_channels: u64,
    /// Requests per second of the latency run.
    #[arg(long, default_value_t = 200)]
    latency_rate: u64,
    /// Length of the soak run, seconds.
    #[arg(long, default_value_t = 180)]
    soak_secs: u64,
    /// Channels of the soak run.
    #[arg(long, default_value_t = 10_000)]
    soak_channels: u64,
    /// Where BENCHMARKS.md and bench/ are written.
    #[arg(long, default_value = "docs")]
    out: PathBuf,
    /// The gas snapshot.
    #[arg(long, default_value = "snapshots/PaymentChannelGas.json")]
    gas_snapshot: PathBuf,
    /// How long the upstream behind the gateway takes per request in the one-channel runs,
    /// milliseconds.
    #[arg(long, default_value_t = 20)]
    upstream_ms: u64,
    /// Only the timed runs whose name contains this (repeatable), then stop: no latency, soak,
    /// scale or report (for profiling one run; with `--profile`, the `paid k=1` run's buckets
    /// are printed). `--only settlement` runs the settlement benchmark alone.
    #[arg(long)]
    only: Vec<String>,
    /// Channels in the store of the settlement benchmark.
    #[arg(long, default_value_t = 1_000_000)]
    settle_store: u64,
    /// Of those, channels owing the provider (opened on anvil).
    #[arg(long, default_value_t = 10_000)]
    settle_due: u64,
    /// The most channels per settlement transaction in that benchmark.
    #[arg(long, default_value_t = 1_000)]
    settle_max_batch: usize,
    /// Profile the server with `perf record` inside the `paid k=1` run and report where its
    /// CPU goes (`scripts/bench` sets this when `perf` is on the PATH).
    #[arg(long)]
    profile: bool,
    /// Length of that profile, seconds (it also ends with the run's timed window).
    #[arg(long, default_value_t = 4.0)]
    profile_secs: f64,
    /// The profile of the code before issue 18, shown next to this run's.
    #[arg(long, default_value = "docs/bench/profile-before.json")]
    profile_before: PathBuf,
}

/// The run that is profiled with `--profile`.
const PROFILED_RUN: &str = "paid k=1";

/// mimalloc: the paid path allocates a few dozen small buffers per request (headers, JSON,
/// base64), which glibc's malloc serves measurably slower under two busy threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> eyre::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve { channels, window, data, listen, upstream } => {
            server::serve(ServeArgs { channels, window, data, listen, upstream }).await
        }
        Command::Run(args) => run(args).await,
        Command::Profile { data, cpu_us, taken } => {
            let p = profile::summarise(&profile::report(&data)?, cpu_us, &taken);
            say(&serde_json::to_string_pretty(&p)?);
            Ok(())
        }
    }
}

async fn run(args: RunArgs) -> eyre::Result<()> {
    if args.only.iter().any(|o| o == "settlement") {
        return settlement(&args).await.map(drop);
    }
    let run_started = std::time::Instant::now();
    eyre::ensure!(!args.profile || profile::perf_available(), "--profile needs `perf` on the PATH");
    let command = format!("x402-bench run {}", std::env::args().skip(2).collect::<Vec<_>>().join(" "))
        .trim_end()
        .to_owned();
    let gas = Gas::from_snapshot(&args.gas_snapshot)?;
    let verify = measure_verify();
    note(&format!(
        "raw verification {:.1} µs, recovery {:.1} µs",
        verify.verify_ns / 1e3,
        verify.recover_ns / 1e3
    ));
    note("batch verification: 16, 64 and 256 signatures, distinct and repeated signers");
    let batch: Vec<x402_bench::batch::Figures> = [16, 64, 256]
        .iter()
        .flat_map(|&n| [x402_bench::batch::measure(n, true), x402_bench::batch::measure(n, false)])
        .collect();

    let tmp = tempdir()?;
    let duration = Duration::from_secs(args.duration_secs);
    let (c, n) = (args.concurrency, args.channels);
    // Disjoint channel ranges, so every run starts its channels at nonce 1.
    let mut next = 0u64;
    let mut range = |count: u64| {
        let first = next;
        next += count;
        first
    };
    let plan = |name: &str, paid, window, first, channels, warm_up| Plan {
        name: name.into(),
        paid,
        window,
        first,
        channels,
        concurrency: c,
        duration,
        requests: args.requests,
        warm_up,
        start: 0,
    };
    let plans = [
        plan("unpaid", false, 1, 0, n, false),
        plan("paid k=1", true, 1, range(n), n, true),
        plan("paid k=10", true, 10, range(n), n, true),
        plan("paid k=100", true, 100, range(n), n, true),
        plan("paid, 10 channels", true, 1, range(10), 10, true),
        plan(
            &format!("paid, {} channels", thousands(args.many_channels)),
            true,
            1,
            range(args.many_channels),
            args.many_channels,
            true,
        ),
    ];
    let latency_first = range(args.latency_rate * args.duration_secs / 2);
    let session_latency_first = range(args.latency_rate * args.duration_secs / 2);
    let soak_first = range(args.soak_channels);
    let total = next;

    note(&format!("starting the node with {total} channels on its chain"));
    let server = Server::start(total, 100, &tmp.path().join("node"), None).await?;
    let vouchers = Arc::new(Vouchers::new(server.requirements().await?));
    let mut runs = Vec::new();
    let mut profile = None;
    let mut profile_error = None;
    for p in
        plans.iter().filter(|p| args.only.is_empty() || args.only.iter().any(|o| p.name.contains(o.as_str())))
    {
        note(&format!("run: {} ({} channels, {} connections)", p.name, p.channels, p.concurrency));
        let r = if args.profile && p.name == PROFILED_RUN {
            let (r, p) = profiled(&args, &server, &vouchers, p, tmp.path()).await?;
            match p {
                Ok(p) => profile = Some(p),
                Err(e) => profile_error = Some(e),
            }
            r
        } else {
            load::run(&server, &vouchers, p).await?
        };
        note(&format!(
            "  {:.0} req/s, {:.1} µs server CPU per request, {:.3} fsyncs per paid request (mean batch {:.1}), {} errors",
            r.rps, r.cpu_us_per_request, r.fsyncs_per_request, r.mean_batch, r.errors
        ));
        runs.push(r);
    }
    runs.extend(one_channel_runs(&args, c, duration, tmp.path()).await?);
    if !args.only.is_empty() {
        return server.stop().await;
    }
    note(&format!("latency at {} req/s", args.latency_rate));
    let (paid, unpaid, errors) =
        load::latency_at_rate(&server, &vouchers, latency_first, args.latency_rate, duration, false).await?;
    let latency = LatencyReport { rate: args.latency_rate, paid, unpaid, errors };
    let (paid, unpaid, errors) =
        load::latency_at_rate(&server, &vouchers, session_latency_first, args.latency_rate, duration, true)
            .await?;
    let latency_session = LatencyReport { rate: args.latency_rate, paid, unpaid, errors };
    note(&format!("soak: {} s over {} channels", args.soak_secs, args.soak_channels));
    let soak = load::soak(
        &server,
        Arc::clone(&vouchers),
        soak_first,
        args.soak_channels,
        c.min(32),
        Duration::from_secs(args.soak_secs),
        Duration::from_secs((args.soak_secs / 30).max(1)),
    )
    .await?;
    server.stop().await?;

    note(&format!("scale: writing {} channels into a store", args.scale_channels));
    let scale_dir = tmp.path().join("scale");
    let started = std::time::Instant::now();
    {
        let (dir, count) = (scale_dir.clone(), args.scale_channels);
        tokio::task::spawn_blocking(move || server::prefill(&dir, count)).await??;
    }
    let prefill_seconds = started.elapsed().as_secs_f64();
    let disk_bytes = x402_bench::sys::disk_usage(&scale_dir);
    let server = Server::start(0, 100, &scale_dir, None).await?;
    let startup_ms = server.startup.as_secs_f64() * 1e3;
    let rss_start_kib = server.stats().await?.usage.rss_kib;
    let scale_run = Plan {
        name: format!("paid, store of {} channels", thousands(args.scale_channels)),
        paid: true,
        window: 1,
        first: 0,
        channels: args.scale_channels.min(10_000),
        concurrency: c,
        duration,
        requests: args.requests,
        warm_up: false,
        // The prefilled channels already hold nonce 100.
        start: 100,
    };
    let run = load::run(&server, &Vouchers::new(server.requirements().await?), &scale_run).await;
    server.stop().await?;
    let scale = Scale {
        channels: args.scale_channels,
        prefill_seconds,
        disk_bytes,
        startup_ms,
        rss_start_kib,
        run: run?,
    };

    let settlement = settlement(&args).await?;
    let profile_before = match std::fs::read(&args.profile_before) {
        Ok(bytes) => Some(serde_json::from_slice::<Profile>(&bytes)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    let results = Results {
        generated: now_rfc3339(),
        command,
        machine: machine(),
        verify,
        runs,
        latency,
        latency_session,
        scale,
        soak,
        gas,
        batch,
        profile,
        profile_error,
        profile_before,
        settlement: Some(settlement),
        seconds: run_started.elapsed().as_secs_f64(),
    };
    results.write(&args.out)?;
    for t in results.targets() {
        say(&format!("{}: {} — {} [{}]", t.name, t.goal, t.value, if t.met { "met" } else { "missed" }));
    }
    say(&format!("wrote {}", args.out.join("BENCHMARKS.md").display()));
    Ok(())
}

/// The settlement benchmark: rounds over `--settle-due` owing channels in a store of
/// `--settle-store`, on anvil. Prints its figures and writes `<out>/bench/settlement.json`.
async fn settlement(args: &RunArgs) -> eyre::Result<x402_bench::settle::SettleFigures> {
    let tmp = tempdir()?;
    let started = std::time::Instant::now();
    let anvil = x402_devnet::chain::default_anvil_path();
    let mut f = x402_bench::settle::run(
        &anvil,
        tmp.path(),
        args.settle_store,
        args.settle_due,
        args.settle_max_batch,
    )
    .await?;
    f.seconds = started.elapsed().as_secs_f64();
    say(&format!(
        "settlement: {} owing channels in a store of {}: index built in {:.2} s; {} rounds ({} per transaction) in {:.2} s, {} settled, {} RPC calls ({:.2} per channel), {} gas",
        thousands(f.due_channels),
        thousands(f.store_channels),
        f.index_seconds,
        f.rounds,
        f.max_batch,
        f.round_seconds,
        f.settled,
        f.rpc_calls,
        f.rpc_calls as f64 / f.due_channels.max(1) as f64,
        f.gas_used,
    ));
    say(&format!("settlement: RPC calls by method: {:?}", f.rpc_by_method));
    say(&format!(
        "settlement: store {:.0} bytes per channel on disk; a record with a voucher encodes to {} bytes",
        f.disk_bytes_per_channel, f.record_bytes
    ));
    let dir = args.out.join("bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("settlement.json"), serde_json::to_vec_pretty(&f)?)?;
    Ok(f)
}

/// Runs `plan` with `perf record` on the server from a tenth of the way into its timed window
/// (at most 1 s) for `--profile-secs` or until the window ends, and summarises the profile with
/// the CPU per request the run measured.
async fn profiled(
    args: &RunArgs,
    server: &Server,
    vouchers: &x402_bench::fixture::Vouchers,
    plan: &Plan,
    tmp: &std::path::Path,
) -> eyre::Result<(load::Run, Result<Profile, String>)> {
    let pid = server.pid().ok_or_else(|| eyre::eyre!("the server has exited"))?;
    let delay = plan.duration.mul_f64(0.1).min(Duration::from_secs(1));
    let length = Duration::from_secs_f64(args.profile_secs.max(0.5));
    let data = tmp.join("perf.data");
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let record = async {
        started_rx.await?;
        let mut done_rx = done_rx;
        tokio::select! {
            _ = &mut done_rx => eyre::bail!("the timed window ended before the profile's start"),
            () = tokio::time::sleep(delay) => {}
        }
        let recording = profile::Recording::start(pid, &data)?;
        tokio::select! {
            _ = done_rx => {}
            () = tokio::time::sleep(length) => {}
        }
        recording.stop().await
    };
    let on_start = move || {
        let _ = started_tx.send(());
    };
    let run = async {
        let r = load::run_observed(server, vouchers, plan, on_start).await;
        let _ = done_tx.send(());
        r
    };
    let (run, recorded) = tokio::join!(run, record);
    let run = run?;
    let (lines, recorded) = match recorded {
        Ok(recorded) => recorded,
        Err(e) => {
            // A failed profile costs its section of the page, not the run.
            note(&format!("profile: none taken: {e:#}"));
            return Ok((run, Err(format!("{e:#}"))));
        }
    };
    let taken = format!(
        "`{}` for {:.1} s from {:.1} s into the timed window of `{}` ({} channels, {} connections, {:.1} µs \
         server CPU per request), then `perf report {}`",
        profile::record_command(),
        recorded.as_secs_f64(),
        delay.as_secs_f64(),
        plan.name,
        plan.channels,
        run.concurrency,
        run.cpu_us_per_request,
        profile::REPORT_ARGS.join(" ").replace('\t', "'\\t'"),
    );
    let p = profile::summarise(&lines, run.cpu_us_per_request, &taken);
    for b in &p.buckets {
        say(&format!("profile: {:>6.1} µs {:>5.1}%  {}", b.us_per_request, b.share * 100.0, b.name));
    }
    let threads: Vec<String> =
        p.threads.iter().map(|t| format!("{} {:.1}%", t.name, t.share * 100.0)).collect();
    say(&format!("profile: by thread: {}", threads.join(", ")));
    Ok((run, Ok(p)))
}

/// The one-channel runs: `c` concurrent requests on one single channel through the gateway,
/// in front of an upstream that takes `--upstream-ms`, paid and unpaid (in its own server).
async fn one_channel_runs(
    args: &RunArgs,
    c: usize,
    duration: Duration,
    tmp: &std::path::Path,
) -> eyre::Result<Vec<load::Run>> {
    let names = [(ONE_CHANNEL_UNPAID, false), (ONE_CHANNEL_PAID, true)];
    if !args.only.is_empty() && !names.iter().any(|(n, _)| args.only.iter().any(|o| n.contains(o.as_str()))) {
        return Ok(Vec::new());
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream = format!("http://{}", listener.local_addr()?);
    let delay = Duration::from_millis(args.upstream_ms);
    let upstream_task = tokio::spawn(server::slow_upstream(listener, delay));
    let server = Server::start(1, 1, &tmp.join("gateway"), Some(&upstream)).await?;
    let vouchers = Vouchers::new(server.requirements().await?);
    let mut runs = Vec::new();
    for (name, paid) in names {
        note(&format!("run: {name} ({c} connections, upstream {} ms)", args.upstream_ms));
        let plan = Plan {
            name: name.into(),
            paid,
            window: 1,
            first: 0,
            channels: 1,
            concurrency: c,
            duration,
            requests: args.requests,
            warm_up: true,
            start: 0,
        };
        let r = load::one_channel(&server, &vouchers, &plan).await?;
        note(&format!("  {:.0} req/s, {} corrective 402s, {} errors", r.rps, r.corrective, r.errors));
        runs.push(r);
    }
    server.stop().await?;
    upstream_task.abort();
    Ok(runs)
}

/// One raw libsecp256k1 verification and one recovery, timed over many iterations.
fn measure_verify() -> Verify {
    use alloy::signers::SignerSync;
    use secp256k1::{Message, SECP256K1, ecdsa::Signature};
    let key = x402_bench::fixture::signer();
    let digest = alloy::primitives::keccak256(b"x402-bench digest");
    let sig = key.sign_hash_sync(&digest).expect("signs").as_bytes();
    let pubkey = x402_node::verify::recover(&digest, &sig).expect("recovers");
    let compact = Signature::from_compact(&sig[..64]).expect("a compact signature");
    let msg = Message::from_digest(digest.0);
    let time = |f: &dyn Fn() -> bool| {
        let n = 5_000u32;
        let started = std::time::Instant::now();
        for _ in 0..n {
            assert!(std::hint::black_box(f()));
        }
        started.elapsed().as_nanos() as f64 / f64::from(n)
    };
    let verify_ns = time(&|| SECP256K1.verify_ecdsa(&msg, &compact, &pubkey).is_ok());
    let recover_ns = time(&|| x402_node::verify::recover(&digest, &sig).is_some());
    Verify { verify_ns, recover_ns }
}

fn tempdir() -> eyre::Result<TempDir> {
    let path = std::env::temp_dir().join(format!("x402-bench-{}", std::process::id()));
    std::fs::create_dir_all(&path)?;
    Ok(TempDir(path))
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} logical CPUs, {model}")
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}
