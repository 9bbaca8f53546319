//! The results: a machine-readable file, a chart, and the Markdown page that shows them with
//! each target marked met or missed.

use std::{fmt::Write as _, path::Path};

use serde::{Deserialize, Serialize};

use crate::{
    load::{Latency, Run, Soak},
    profile::Profile,
    settle::SettleFigures,
};

/// Prints a result line on stdout (the benchmark's only stdout output).
#[allow(clippy::print_stdout)]
pub fn say(line: &str) {
    println!("{line}");
}

/// Prints progress on stderr.
#[allow(clippy::print_stderr)]
pub fn note(line: &str) {
    eprintln!("{line}");
}

/// The raw cost of the unavoidable signature check, measured in the same run.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Verify {
    /// One libsecp256k1 ECDSA verification with a known key, nanoseconds.
    pub verify_ns: f64,
    /// One libsecp256k1 public-key recovery (what the node does, as it must check `v`).
    pub recover_ns: f64,
}

/// Paid against unpaid latency at a fixed rate.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct LatencyReport {
    /// Requests per second, half paid.
    pub rate: u64,
    /// Paid requests.
    pub paid: Latency,
    /// Unpaid requests of the same server.
    pub unpaid: Latency,
    /// Failed requests.
    pub errors: u64,
}

impl LatencyReport {
    /// p50 added by payment, microseconds.
    pub fn added_p50_us(&self) -> f64 {
        self.paid.p50_us - self.unpaid.p50_us
    }

    /// p99 added by payment, microseconds.
    pub fn added_p99_us(&self) -> f64 {
        self.paid.p99_us - self.unpaid.p99_us
    }
}

/// The store with many channels.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Scale {
    /// Channels in the store.
    pub channels: u64,
    /// Time to write them, seconds.
    pub prefill_seconds: f64,
    /// Size of the store on disk, bytes.
    pub disk_bytes: u64,
    /// From starting the node to its first answer, milliseconds.
    pub startup_ms: f64,
    /// Resident memory right after the start, KiB.
    pub rss_start_kib: u64,
    /// A paid run over channels of that store.
    pub run: Run,
}

/// Gas figures from the committed snapshot.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Gas {
    /// Marginal gas per channel in a 100-channel `closeMany`.
    pub marginal_close: f64,
    /// One ERC-20 transfer.
    pub erc20_transfer: f64,
    /// `(requests per channel, gas per paid request)`.
    pub per_request: Vec<(u64, f64)>,
}

impl Gas {
    /// Reads `snapshots/PaymentChannelGas.json`.
    pub fn from_snapshot(path: &Path) -> eyre::Result<Self> {
        let snapshot: std::collections::HashMap<String, String> =
            serde_json::from_str(&std::fs::read_to_string(path)?)?;
        let get = |key: &str| -> eyre::Result<f64> {
            Ok(snapshot.get(key).ok_or_else(|| eyre::eyre!("{key} missing in the gas snapshot"))?.parse()?)
        };
        let marginal_close = (get("close_many_100")? - get("close_many_10")?) / 90.0;
        let open = get("open_erc20")?;
        Ok(Self {
            marginal_close,
            erc20_transfer: get("erc20_transfer")?,
            per_request: [100u64, 1_000, 10_000]
                .iter()
                .map(|&n| (n, (open + marginal_close) / n as f64))
                .collect(),
        })
    }
}

/// The run of concurrent requests on one channel through the gateway, unpaid.
pub const ONE_CHANNEL_UNPAID: &str = "one channel via gateway, unpaid";
/// The same, paid.
pub const ONE_CHANNEL_PAID: &str = "one channel via gateway, paid";

/// A target of the issue, evaluated.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Target {
    /// What is measured.
    pub name: String,
    /// The goal.
    pub goal: String,
    /// The figure.
    pub value: String,
    /// Whether the goal is met.
    pub met: bool,
    /// Why, when it is missed (or how, when it is met).
    pub note: String,
}

/// Everything one `x402-bench run` measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Results {
    /// When (UTC, RFC 3339).
    pub generated: String,
    /// The command that produced it.
    pub command: String,
    /// Logical CPUs and the CPU model.
    pub machine: String,
    /// Raw signature costs.
    pub verify: Verify,
    /// Timed runs.
    pub runs: Vec<Run>,
    /// Latency at a fixed rate, a fresh voucher per paid request.
    pub latency: LatencyReport,
    /// The same with session tokens (a credit window of 10).
    pub latency_session: LatencyReport,
    /// The store at scale.
    pub scale: Scale,
    /// The soak run.
    pub soak: Soak,
    /// Gas.
    pub gas: Gas,
    /// Batch against single signature verification.
    pub batch: Vec<crate::batch::Figures>,
    /// Where the server's CPU went in the profiled run (`--profile`).
    #[serde(default)]
    pub profile: Option<Profile>,
    /// Why `--profile` gave no profile, when it did not.
    #[serde(default)]
    pub profile_error: Option<String>,
    /// The same for the code before issue 18 (`docs/bench/profile-before.json`).
    #[serde(default)]
    pub profile_before: Option<Profile>,
    /// The settlement benchmark.
    #[serde(default)]
    pub settlement: Option<SettleFigures>,
    /// Wall time of the whole run, seconds.
    #[serde(default)]
    pub seconds: f64,
}

impl Results {
    /// The run named `name`.
    pub fn run(&self, name: &str) -> Option<&Run> {
        self.runs.iter().find(|r| r.name == name)
    }

    /// The main paid run (`paid k=1`).
    fn base(&self) -> Option<&Run> {
        self.run("paid k=1")
    }

    /// The paid run over the most channels, each active (a voucher per request), other than
    /// the main one: `paid, 100,000 channels` in a full run.
    fn many(&self) -> Option<&Run> {
        let base = self.base()?;
        self.runs
            .iter()
            .filter(|r| r.paid && r.window == 1 && r.name.starts_with("paid, ") && r.channels > base.channels)
            .max_by_key(|r| r.channels)
    }

    /// Server CPU per request as a multiple of one raw verification.
    fn per_verify(&self, cpu_us: f64) -> f64 {
        cpu_us * 1_000.0 / self.verify.verify_ns.max(1e-9)
    }

    /// The issue's targets, evaluated on these results.
    pub fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        let unpaid = self.run("unpaid");
        let verify_us = self.verify.verify_ns / 1_000.0;
        if let (Some(paid), Some(unpaid)) = (self.base(), unpaid) {
            let ratio = self.per_verify(paid.cpu_us_per_request);
            let http = unpaid.cpu_us_per_request;
            let profile = self.profile.as_ref().map_or(String::new(), |p| {
                let mut buckets: Vec<&crate::profile::Bucket> = p.buckets.iter().collect();
                buckets.sort_by(|a, b| b.us_per_request.total_cmp(&a.us_per_request));
                let top: Vec<String> = buckets
                    .iter()
                    .take(4)
                    .map(|b| format!("{} {:.1} µs", b.name, b.us_per_request))
                    .collect();
                format!(
                    "; by the profile, the largest parts are {} (see where the µs go, below)",
                    top.join(", ")
                )
            });
            out.push(Target {
                name: "server CPU per paid request, k = 1, vs one libsecp256k1 verification in the same run".into(),
                goal: "≤ 1.5 ×".into(),
                value: format!("{:.1} µs = {ratio:.2} × {verify_us:.1} µs", paid.cpu_us_per_request),
                met: ratio <= 1.5,
                note: format!(
                    "{http:.1} µs of it is what the HTTP server spends on any request (the unpaid route: accept, \
                     parse, route, respond; {:.2} × a verification by itself) and {:.1} µs the payment; the \
                     public-key recovery the node must run (verification cannot check `v`) costs {:.1} µs \
                     alone{profile}",
                    self.per_verify(http),
                    paid.cpu_us_per_request - http,
                    self.verify.recover_ns / 1_000.0,
                ),
            });
        }
        if let Some(base) = self.base() {
            let scale = Some(&self.scale.run).filter(|r| r.ok > 0);
            let many = self.many();
            if many.is_some() || scale.is_some() {
                let growth = |r: &Run| r.cpu_us_per_request / base.cpu_us_per_request.max(1e-9) - 1.0;
                let show = |r: Option<&Run>| {
                    r.map_or("not run".to_owned(), |r| {
                        format!(
                            "{:.2} × ({:.1} µs, {:+.0}%)",
                            self.per_verify(r.cpu_us_per_request),
                            r.cpu_us_per_request,
                            growth(r) * 100.0
                        )
                    })
                };
                // 1e-9: "within 10%" includes 10% itself, whatever the float rounding.
                let within = |r: Option<&Run>| r.is_some_and(|r| growth(r) <= 0.10 + 1e-9);
                out.push(Target {
                    name: format!(
                        "the same with {} active channels / with a store of {} channels",
                        many.map_or("many".to_owned(), |r| thousands(r.channels)),
                        thousands(self.scale.channels)
                    ),
                    goal: format!(
                        "within 10% of the {}-channel figure ({:.2} ×)",
                        thousands(base.channels),
                        self.per_verify(base.cpu_us_per_request)
                    ),
                    value: format!("{} / {}", show(many), show(scale)),
                    met: within(many) && within(scale),
                    note: format!(
                        "the {}-channel run loads every channel once before its timed window, so it measures the \
                         voucher path over that many live channels; the store run restarts the node on a store \
                         written beforehand and spreads its vouchers over {} of its channels, so each one's first \
                         voucher in the window also reads its record from the store",
                        many.map_or("many".to_owned(), |r| thousands(r.channels)),
                        thousands(scale.map_or(0, |r| r.channels)),
                    ),
                });
            }
        }
        if let (Some(k10), Some(k100), Some(unpaid)) = (self.run("paid k=10"), self.run("paid k=100"), unpaid)
        {
            let (r10, r100) = (k10.rps / unpaid.rps.max(1e-9), k100.rps / unpaid.rps.max(1e-9));
            out.push(Target {
                name: "paid throughput, k = 10 / k = 100, vs unpaid".into(),
                goal: "≥ 70% / ≥ 90%".into(),
                value: format!(
                    "{:.0}% / {:.0}% ({:.0} / {:.0} against {:.0} req/s)",
                    r10 * 100.0,
                    r100 * 100.0,
                    k10.rps,
                    k100.rps,
                    unpaid.rps
                ),
                met: r10 >= 0.7 && r100 >= 0.9,
                note: format!(
                    "`k − 1` requests in `k` present a session token (constant-time compare, no ECDSA, no fsync), \
                     the `k`-th carries a voucher; server CPU per request {:.1} µs at k = 10 and {:.1} µs at \
                     k = 100 against {:.1} µs unpaid. The load generator shares the machine's cores with the \
                     server, so the throughput ratio also carries the client's own cost per request",
                    k10.cpu_us_per_request, k100.cpu_us_per_request, unpaid.cpu_us_per_request
                ),
            });
        }
        let l = &self.latency;
        let ls = &self.latency_session;
        if l.paid.count > 0 {
            out.push(Target {
                name: format!("p99 latency added by payment at {} req/s, k = 1", l.rate),
                goal: "< 1 ms".into(),
                value: format!("{:.0} µs (p50 {:.0} µs)", l.added_p99_us(), l.added_p50_us()),
                met: l.added_p99_us() < 1_000.0,
                note: format!(
                    "paid p50/p99 {:.0}/{:.0} µs, unpaid {:.0}/{:.0} µs. A voucher is made durable before its \
                     response, and a lone request at moderate load has nobody to share its commit with, so it \
                     waits for a whole commit; inside a credit window (session tokens, nothing to make durable) \
                     payment adds {:.0} µs at p99 (p50 {:.0} µs)",
                    l.paid.p50_us,
                    l.paid.p99_us,
                    l.unpaid.p50_us,
                    l.unpaid.p99_us,
                    ls.added_p99_us(),
                    ls.added_p50_us()
                ),
            });
        }
        if let Some(paid) = self.base() {
            let total = paid.fsyncs_per_request + paid.checkpoints_per_request;
            out.push(Target {
                name: format!("fsyncs per paid request at {} in flight, k = 1", paid.concurrency),
                goal: "≤ 1 / 32".into(),
                value: format!("1 / {:.1}", 1.0 / total.max(1e-9)),
                met: total <= 1.0 / 32.0,
                note: format!(
                    "hot-path commits {:.4} per paid request (mean group commit {:.1} writes, largest {}) plus \
                     the store's checkpoints {:.4} per paid request (off the hot path); every voucher is durable \
                     before its response and concurrent vouchers share one commit, so a commit's size is bounded \
                     by the {} requests in flight",
                    paid.fsyncs_per_request,
                    paid.mean_batch,
                    paid.max_batch,
                    paid.checkpoints_per_request,
                    paid.concurrency
                ),
            });
        }
        let s = &self.scale;
        if s.channels > 0 && s.disk_bytes > 0 {
            let per = s.disk_bytes as f64 / s.channels as f64;
            out.push(Target {
                name: "bytes per channel in the store".into(),
                goal: "≤ 300".into(),
                value: format!("{per:.0}"),
                met: per <= 300.0,
                note: format!(
                    "the whole store directory (every file, the journal's included, at its length on disk) after \
                     writing {} channels that each hold a voucher: {:.1} MiB",
                    thousands(s.channels),
                    s.disk_bytes as f64 / 1_048_576.0
                ),
            });
        }
        if s.channels > 0 && s.startup_ms > 0.0 {
            out.push(Target {
                name: format!("restart with {} channels, to the first answer", thousands(s.channels)),
                goal: "< 1 s".into(),
                value: format!("{:.0} ms", s.startup_ms),
                met: s.startup_ms < 1_000.0,
                note: format!(
                    "from spawning the node on that store to its first answer (`/healthz`), process start \
                     included; resident memory {:.0} MiB right after",
                    s.rss_start_kib as f64 / 1024.0
                ),
            });
        }
        if let (Some(paid), Some(unpaid)) = (self.run(ONE_CHANNEL_PAID), self.run(ONE_CHANNEL_UNPAID)) {
            let ratio = paid.rps / unpaid.rps.max(1e-9);
            out.push(Target {
                name: format!(
                    "{} concurrent requests on one channel through the gateway (slow upstream)",
                    paid.concurrency
                ),
                goal: "≥ 90% of the unpaid throughput, zero corrective 402s".into(),
                value: format!(
                    "{:.0} / {:.0} req/s = {:.0}%, {} corrective 402s",
                    paid.rps,
                    unpaid.rps,
                    ratio * 100.0,
                    paid.corrective
                ),
                met: ratio >= 0.9 && paid.corrective == 0 && paid.errors == 0,
                note: format!(
                    "the channel is locked only to admit a voucher (reserve its price) and to commit it, never \
                     while the upstream works, so its requests are served in parallel in whatever order their \
                     vouchers arrive; the commits share group commits (mean {:.1} writes per commit)",
                    paid.mean_batch
                ),
            });
        }
        let soak = &self.soak;
        if !soak.rss_samples_kib.is_empty() {
            let (first, last) = (
                soak.rss_samples_kib[soak.rss_samples_kib.len() / 4].1,
                soak.rss_samples_kib[soak.rss_samples_kib.len() - 1].1,
            );
            let growth = last as f64 / first.max(1) as f64 - 1.0;
            out.push(Target {
                name: format!("soak: {} s of paid load over {} channels", soak.seconds.round(), soak.channels),
                goal: "resident memory flat, zero errors".into(),
                value: format!(
                    "{:+.1}% RSS after the first quarter, {} errors in {} requests",
                    growth * 100.0,
                    soak.errors,
                    soak.ok
                ),
                met: soak.errors == 0 && growth < 0.10,
                note: "memory grows while the run touches new channels (one record and slot each) and then holds; \
                       flat means under 10% growth after the first quarter"
                    .into(),
            });
        }
        out
    }

    /// Writes `results.json`, `throughput.svg` (under `dir/bench`) and `dir/BENCHMARKS.md`.
    pub fn write(&self, dir: &Path) -> eyre::Result<()> {
        let bench = dir.join("bench");
        std::fs::create_dir_all(&bench)?;
        std::fs::write(bench.join("results.json"), serde_json::to_string_pretty(self)? + "\n")?;
        std::fs::write(bench.join("throughput.svg"), self.chart())?;
        std::fs::write(dir.join("BENCHMARKS.md"), self.markdown())?;
        Ok(())
    }

    /// A horizontal bar chart of the runs' throughput.
    pub fn chart(&self) -> String {
        let runs: Vec<&Run> =
            self.runs.iter().chain(std::iter::once(&self.scale.run)).filter(|r| r.ok > 0).collect();
        let max = runs.iter().map(|r| r.rps).fold(1.0, f64::max);
        let (left, width, row) = (230.0, 420.0, 28.0);
        let height = 50.0 + row * runs.len() as f64;
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"760\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"13\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">Requests per second (same server, loopback)</text>\n"
        );
        for (n, r) in runs.iter().enumerate() {
            let y = 40.0 + row * n as f64;
            let w = width * r.rps / max;
            let colour = if !r.paid {
                "#888888"
            } else if r.window > 1 {
                "#2e7d32"
            } else {
                "#1565c0"
            };
            let _ = writeln!(
                svg,
                "<text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"end\">{}</text>\
                 <rect x=\"{left}\" y=\"{:.0}\" width=\"{w:.1}\" height=\"18\" fill=\"{colour}\"/>\
                 <text x=\"{:.0}\" y=\"{:.0}\">{:.0}</text>",
                left - 8.0,
                y + 14.0,
                escape(&r.name),
                y,
                left + w + 6.0,
                y + 14.0,
                r.rps
            );
        }
        svg.push_str("</svg>\n");
        svg
    }

    /// The Markdown page.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let w = &mut md;
        let _ = writeln!(w, "# Benchmarks\n");
        let _ = writeln!(
            w,
            "Generated by `{}` on {} ({}), in {:.0} min {:.0} s. Every figure below comes from that one run on \
             one machine; the raw data is in [`bench/results.json`](bench/results.json).\n",
            self.command,
            self.generated,
            self.machine,
            (self.seconds / 60.0).floor(),
            self.seconds % 60.0
        );
        let _ = writeln!(
            w,
            "Regenerate with:\n\n```sh\nscripts/bench            # release build, then every measurement (with a CPU profile when perf is installed)\n```\n"
        );
        let _ = writeln!(
            w,
            "How it measures: `x402-bench run` starts the node as its own process (`x402-bench serve`: the real \
             engine, paywall and sled store with group commit; the chain is in memory, since chain reads are off \
             the request path), signs every voucher before the timed window, and drives it over loopback with one \
             keep-alive connection per worker, each owning its channels so that a channel's vouchers arrive in \
             order. Server CPU time comes from the server's own `getrusage`; memory from its `VmRSS`. The load \
             generator shares the machine's cores with the server, for the paid and the unpaid runs alike.\n"
        );
        let _ = writeln!(w, "## Targets\n\n| target | goal | measured | |\n|---|---|---|---|");
        let targets = self.targets();
        for t in &targets {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} |",
                t.name,
                t.goal,
                t.value,
                if t.met { "**met**" } else { "**missed**" }
            );
        }
        let _ = writeln!(w);
        for t in &targets {
            let _ = writeln!(w, "- **{}** ({}): {}.", t.name, if t.met { "met" } else { "missed" }, t.note);
        }
        let _ = writeln!(w, "\n![throughput](bench/throughput.svg)\n");
        let _ = writeln!(w, "## Throughput and CPU\n");
        let _ = writeln!(
            w,
            "One raw secp256k1 verification (libsecp256k1, known key): **{:.1} µs**; one public-key recovery (what the \
             node runs, because verification cannot check `v`): {:.1} µs.\n",
            self.verify.verify_ns / 1_000.0,
            self.verify.recover_ns / 1_000.0
        );
        let _ = writeln!(
            w,
            "| run | channels | connections | req/s | vs unpaid | server CPU / request | × one verification | commits / paid request | checkpoints / paid request | mean commit batch | errors |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let unpaid_rps = self.run("unpaid").map_or(0.0, |r| r.rps);
        for r in self.runs.iter().chain(std::iter::once(&self.scale.run)).filter(|r| r.ok + r.errors > 0) {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {:.0} | {:.0}% | {:.1} µs | {:.2} | {} | {} | {} | {} |",
                r.name,
                r.channels,
                r.concurrency,
                r.rps,
                if unpaid_rps > 0.0 { r.rps / unpaid_rps * 100.0 } else { 0.0 },
                r.cpu_us_per_request,
                r.cpu_us_per_request * 1_000.0 / self.verify.verify_ns,
                if r.paid { format!("{:.4}", r.fsyncs_per_request) } else { "–".into() },
                if r.paid { format!("{:.4}", r.checkpoints_per_request) } else { "–".into() },
                if r.paid { format!("{:.1}", r.mean_batch) } else { "–".into() },
                r.errors
            );
        }
        let _ = writeln!(
            w,
            "\n`k` is the client's credit window: one voucher pays for `k` requests, the other `k − 1` present the \
             session token the node granted (no signature check, no fsync). With `k = 1` every request carries a \
             voucher that is verified and made durable before the response."
        );
        self.profile_section(w);
        let l = &self.latency;
        let _ = writeln!(w, "\n## Latency at a moderate rate\n");
        let _ = writeln!(
            w,
            "{} requests per second, alternating paid (a fresh voucher each, `k = 1`) and unpaid, open loop.\n\n\
             | | p50 | p99 |\n|---|---:|---:|\n| unpaid | {:.0} µs | {:.0} µs |\n| paid | {:.0} µs | {:.0} µs |\n\
             | **added by payment** | **{:.0} µs** | **{:.0} µs** |\n\n{} errors. The same with session tokens (a credit \
             window of 10, so nothing to verify or fsync):\n\n| | p50 | p99 |\n|---|---:|---:|\n| unpaid | {:.0} µs | {:.0} µs |\n\
             | paid by session | {:.0} µs | {:.0} µs |\n| **added by payment** | **{:.0} µs** | **{:.0} µs** |\n\n{} errors.",
            l.rate,
            l.unpaid.p50_us,
            l.unpaid.p99_us,
            l.paid.p50_us,
            l.paid.p99_us,
            l.added_p50_us(),
            l.added_p99_us(),
            l.errors,
            self.latency_session.unpaid.p50_us,
            self.latency_session.unpaid.p99_us,
            self.latency_session.paid.p50_us,
            self.latency_session.paid.p99_us,
            self.latency_session.added_p50_us(),
            self.latency_session.added_p99_us(),
            self.latency_session.errors
        );
        let s = &self.scale;
        let _ = writeln!(w, "\n## Scale: {} channels in the store\n", thousands(s.channels));
        let _ = writeln!(
            w,
            "| | |\n|---|---:|\n| store on disk | {:.0} MiB ({:.0} bytes per channel) |\n| written in | {:.1} s |\n\
             | node start to first answer (restart) | {:.0} ms |\n| resident memory after start | {:.0} MiB |\n\
             | resident memory after a paid run over {} of them | {:.0} MiB |\n| that run | {:.0} req/s |\n",
            s.disk_bytes as f64 / 1_048_576.0,
            s.disk_bytes as f64 / s.channels.max(1) as f64,
            s.prefill_seconds,
            s.startup_ms,
            s.rss_start_kib as f64 / 1024.0,
            s.run.channels,
            s.run.server_rss_kib as f64 / 1024.0,
            s.run.rps
        );
        let _ = writeln!(
            w,
            "Spread of CPU and throughput over few and many active channels: see the `paid, …` rows above."
        );
        self.settlement_section(w);
        let soak = &self.soak;
        let _ = writeln!(w, "\n## Soak\n");
        let _ = writeln!(
            w,
            "{:.0} s of paid load over {} channels, vouchers signed as the load runs: {} paid requests ({:.0}/s), {} errors. \
             Server resident memory (MiB) every few seconds:\n",
            soak.seconds, soak.channels, soak.ok, soak.rps, soak.errors
        );
        let samples: Vec<String> = soak
            .rss_samples_kib
            .iter()
            .map(|(t, kib)| format!("{t:.0} s: {:.1}", *kib as f64 / 1024.0))
            .collect();
        let _ = writeln!(w, "{}\n", samples.join(" · "));
        let g = &self.gas;
        let _ = writeln!(w, "## Gas\n");
        let _ = writeln!(
            w,
            "From the committed gas snapshot (`snapshots/PaymentChannelGas.json`, checked in CI). Marginal gas per \
             channel in a 100-channel `closeMany`: **{:.0}**. One ERC-20 transfer: {:.0}.\n\n\
             | requests per channel | gas per paid request (open + share of a batch close) | one ERC-20 transfer per request |\n|---:|---:|---:|",
            g.marginal_close, g.erc20_transfer
        );
        for (n, gas) in &g.per_request {
            let _ = writeln!(w, "| {n} | {gas:.1} | {:.0}× more |", g.erc20_transfer / gas);
        }
        let _ = writeln!(w, "\n## Batch verification\n");
        let _ = writeln!(
            w,
            "Batch ECDSA verification (`bench/src/batch.rs`): R is rebuilt from `r` and the parity in `v`, random \
             128-bit weights, one Straus multi-scalar multiplication over k256 with the coefficients of equal keys \
             merged, and single checks to find a bad item when a batch fails. Microseconds per signature, measured \
             in the same run:\n\n\
             | batch | signers | libsecp256k1 verify | libsecp256k1 recover (the node) | k256 verify | batch |\n|---:|---|---:|---:|---:|---:|"
        );
        for b in &self.batch {
            let _ = writeln!(
                w,
                "| {} | {} | {:.1} | {:.1} | {:.1} | **{:.1}** |",
                b.n,
                if b.distinct { "distinct" } else { "one, repeated" },
                b.secp256k1_verify_us,
                b.secp256k1_recover_us,
                b.k256_verify_us,
                b.batch_us
            );
        }
        let wins: Vec<String> = self
            .batch
            .iter()
            .filter(|b| b.batch_us < b.secp256k1_recover_us)
            .map(|b| format!("{} {}", b.n, if b.distinct { "distinct signers" } else { "repeated signer" }))
            .collect();
        let _ = writeln!(
            w,
            "\n{}",
            if wins.is_empty() {
                "No batch beats the node's single libsecp256k1 check here. The credit window removes the signature \
                 check from `k − 1` of every `k` requests outright, which no batching can match."
                    .to_owned()
            } else {
                format!(
                    "Faster than the node's single check for: {}. On the request path a batch makes every request \
                     in it wait for the slowest arrival and for the whole multiplication, and a bad signature costs \
                     the batch plus single checks; the credit window removes the signature check from `k − 1` of \
                     every `k` requests outright.",
                    wins.join(", ")
                )
            }
        );
        md
    }

    /// "Where the µs go": the profile of this run's paid path next to the one before issue 18.
    fn profile_section(&self, w: &mut String) {
        let _ = writeln!(w, "\n## Where the µs go (paid request, k = 1)\n");
        let Some(after) = &self.profile else {
            let _ = match &self.profile_error {
                Some(e) => writeln!(w, "The profile of this run failed: {e}."),
                None => writeln!(
                    w,
                    "Not profiled in this run (`--profile`, which `scripts/bench` passes when `perf` is installed)."
                ),
            };
            return;
        };
        let before = self.profile_before.as_ref();
        let _ = writeln!(
            w,
            "The server's CPU samples (self time, by thread, shared object and symbol) put in buckets, each \
             bucket's share converted to microseconds of the run's server CPU per request. The store's own \
             threads count as store whatever they run; the request threads are bucketed by symbol.\n"
        );
        let cell = |p: &Profile, name: &str| {
            p.buckets
                .iter()
                .find(|b| b.name == name)
                .map_or("–".to_owned(), |b| format!("{:.1} µs ({:.0}%)", b.us_per_request, b.share * 100.0))
        };
        if let Some(before) = before {
            let _ = writeln!(w, "| bucket | before issue 18 | this run | change |\n|---|---:|---:|---:|");
            let mut names: Vec<&str> = after.buckets.iter().map(|b| b.name.as_str()).collect();
            for b in &before.buckets {
                if !names.contains(&b.name.as_str()) {
                    names.push(&b.name);
                }
            }
            let us = |p: &Profile, name: &str| {
                p.buckets.iter().find(|b| b.name == name).map_or(0.0, |b| b.us_per_request)
            };
            for name in names {
                let _ = writeln!(
                    w,
                    "| {name} | {} | {} | {:+.1} µs |",
                    cell(before, name),
                    cell(after, name),
                    us(after, name) - us(before, name)
                );
            }
            let _ = writeln!(
                w,
                "| **server CPU per paid request** | **{:.1} µs** | **{:.1} µs** | **{:+.1} µs** |\n",
                before.cpu_us_per_request,
                after.cpu_us_per_request,
                after.cpu_us_per_request - before.cpu_us_per_request
            );
        } else {
            let _ = writeln!(w, "| bucket | this run |\n|---|---:|");
            for b in &after.buckets {
                let _ = writeln!(w, "| {} | {} |", b.name, cell(after, &b.name));
            }
            let _ =
                writeln!(w, "| **server CPU per paid request** | **{:.1} µs** |\n", after.cpu_us_per_request);
        }
        let threads = |p: &Profile| {
            p.threads
                .iter()
                .map(|t| format!("{} {:.1}%", t.name, t.share * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(before) = before {
            let _ = writeln!(
                w,
                "- Before: {} samples; {}. By thread: {}.",
                before.samples,
                before.taken,
                threads(before)
            );
        }
        let _ = writeln!(
            w,
            "- This run: {} samples; {}. By thread: {}.",
            after.samples,
            after.taken,
            threads(after)
        );
        let _ = writeln!(
            w,
            "\nThe largest symbols of this run (self time):\n\n| symbol | share | per request |\n|---|---:|---:|"
        );
        for t in after.top.iter().take(12) {
            let _ = writeln!(
                w,
                "| `{}` | {:.1}% | {:.1} µs |",
                t.name.replace('|', "\\|"),
                t.share * 100.0,
                t.share * after.cpu_us_per_request
            );
        }
    }

    /// The settlement benchmark's figures.
    fn settlement_section(&self, w: &mut String) {
        let Some(f) = &self.settlement else { return };
        let _ = writeln!(w, "\n## Settlement at scale\n");
        let _ = writeln!(
            w,
            "Part of this run ({:.0} s of it; `x402-bench run --only settlement` runs it alone): the settler's rounds \
             over {} channels that owe the provider, opened on anvil against the real contract, in a store of {} \
             channels (the rest owe nothing), with every JSON-RPC call counted by a proxy in front of anvil.\n",
            f.seconds,
            thousands(f.due_channels),
            thousands(f.store_channels)
        );
        let methods: Vec<String> = f.rpc_by_method.iter().map(|(m, n)| format!("{m} {n}")).collect();
        let _ = writeln!(
            w,
            "| | |\n|---|---:|\n| index built (one scan of the store, once per start) | {:.2} s |\n\
             | rounds until nothing is owed (at most {} channels per transaction) | {} in {:.2} s |\n\
             | channels settled | {} |\n| JSON-RPC calls | {} ({:.2} per owing channel) |\n| gas of the settlements | {} ({:.0} per channel) |\n\
             | store on disk | {:.0} bytes per channel |\n| a record with a voucher, encoded | {} bytes |\n\nRPC calls by method: {}.",
            f.index_seconds,
            f.max_batch,
            f.rounds,
            f.round_seconds,
            thousands(u64::try_from(f.settled).unwrap_or(0)),
            thousands(f.rpc_calls),
            f.rpc_calls as f64 / f.due_channels.max(1) as f64,
            thousands(f.gas_used),
            f.gas_used as f64 / f.settled.max(1) as f64,
            f.disk_bytes_per_channel,
            f.record_bytes,
            methods.join(", ")
        );
    }
}

/// `n` with thousands separators: `1,000,000`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results() -> Results {
        let run = |name: &str, paid, window, channels, rps, cpu| Run {
            name: name.into(),
            paid,
            window,
            channels,
            concurrency: 8,
            ok: 1000,
            rps,
            cpu_us_per_request: cpu,
            fsyncs_per_request: if paid { 0.01 } else { 0.0 },
            checkpoints_per_request: if paid { 0.005 } else { 0.0 },
            ..Run::default()
        };
        Results {
            verify: Verify { verify_ns: 20_000.0, recover_ns: 24_000.0 },
            runs: vec![
                run("unpaid", false, 1, 10, 10_000.0, 10.0),
                run("paid k=1", true, 1, 1_000, 4_000.0, 40.0),
                run("paid k=10", true, 10, 1_000, 8_000.0, 14.0),
                run("paid k=100", true, 100, 1_000, 9_500.0, 11.0),
                run("paid, 10 channels", true, 1, 10, 4_100.0, 30.0),
                run("paid, 100,000 channels", true, 1, 100_000, 3_800.0, 43.0),
            ],
            latency: LatencyReport {
                rate: 100,
                paid: Latency { count: 10, p50_us: 300.0, p99_us: 1_500.0 },
                unpaid: Latency { count: 10, p50_us: 100.0, p99_us: 200.0 },
                errors: 0,
            },
            scale: Scale {
                channels: 1_000_000,
                prefill_seconds: 30.0,
                disk_bytes: 250_000_000,
                startup_ms: 400.0,
                rss_start_kib: 10_240,
                run: run("paid, store of 1,000,000 channels", true, 1, 10_000, 3_000.0, 48.0),
            },
            soak: Soak {
                channels: 100,
                seconds: 10.0,
                ok: 5,
                errors: 0,
                rps: 0.5,
                rss_samples_kib: vec![(1.0, 100), (2.0, 100), (3.0, 104), (4.0, 105)],
            },
            ..Results::default()
        }
    }

    fn target(r: &Results, name: &str) -> Target {
        r.targets().into_iter().find(|t| t.name.contains(name)).unwrap_or_else(|| panic!("no target {name}"))
    }

    #[test]
    fn targets_are_judged_from_the_figures() {
        let r = results();
        let names: Vec<String> = r.targets().into_iter().map(|t| t.name).collect();
        assert_eq!(names.len(), 8, "{names:?}");
        let cpu = target(&r, "server CPU per paid request, k = 1");
        assert!(!cpu.met, "40 µs is 2 × a 20 µs verification");
        assert!(cpu.value.contains("2.00 ×"), "{}", cpu.value);
        let flat = target(&r, "active channels");
        assert!(!flat.met, "48 µs in the big store is 20% over 40 µs");
        assert!(flat.name.contains("100,000 active channels") && flat.name.contains("1,000,000 channels"));
        assert!(flat.value.contains("2.15 ×") && flat.value.contains("2.40 ×"), "{}", flat.value);
        assert!(flat.goal.contains("1,000-channel figure (2.00 ×)"), "{}", flat.goal);
        let k = target(&r, "k = 10 / k = 100");
        assert!(k.met, "80% and 95%");
        assert_eq!(k.value, "80% / 95% (8000 / 9500 against 10000 req/s)");
        assert!(!target(&r, "p99 latency").met, "1,300 µs added at p99");
        let fsync = target(&r, "fsyncs per paid request at 8 in flight");
        assert!(fsync.met, "0.01 + 0.005 per request is 1 per 67");
        assert_eq!(fsync.value, "1 / 66.7");
        let bytes = target(&r, "bytes per channel");
        assert!(bytes.met && bytes.value == "250", "{}", bytes.value);
        let restart = target(&r, "restart with 1,000,000 channels");
        assert!(restart.met && restart.value == "400 ms");
        assert!(target(&r, "soak").met, "5% growth, no errors");
    }

    #[test]
    fn target_edges() {
        // Each case changes one figure of `results()` and names the target it flips.
        type Change = fn(&mut Results);
        let cases: [(&str, Change, bool); 10] = [
            ("k = 1, vs one", |r| r.runs[1].cpu_us_per_request = 30.0, true),
            ("k = 1, vs one", |r| r.runs[1].cpu_us_per_request = 30.1, false),
            ("active channels", |r| r.scale.run.cpu_us_per_request = 44.0, true),
            ("active channels", |r| r.runs[5].cpu_us_per_request = 44.5, false),
            ("k = 10 / k = 100", |r| r.runs[3].rps = 8_900.0, false),
            ("fsyncs per paid", |r| r.runs[1].checkpoints_per_request = 0.03, false),
            ("fsyncs per paid", |r| r.runs[1].fsyncs_per_request = 1.0 / 32.0 - 0.005, true),
            ("bytes per channel", |r| r.scale.disk_bytes = 300_000_001, false),
            ("restart with", |r| r.scale.startup_ms = 1_000.0, false),
            ("p99 latency", |r| r.latency.paid.p99_us = 1_199.0, true),
        ];
        for (name, change, met) in cases {
            let mut r = results();
            change(&mut r);
            assert_eq!(target(&r, name).met, met, "{name}: {}", target(&r, name).value);
        }
    }

    #[test]
    fn targets_without_their_runs_are_left_out() {
        let mut r = results();
        r.runs.retain(|run| run.name == "unpaid" || run.name == "paid k=1");
        r.scale = Scale::default();
        r.latency = LatencyReport::default();
        let names: Vec<String> = r.targets().into_iter().map(|t| t.name).collect();
        assert_eq!(names.len(), 3, "CPU, fsyncs and soak: {names:?}");
        let mut only_store = results();
        only_store.runs.truncate(4);
        assert!(target(&only_store, "active channels").value.starts_with("not run / 2.40 ×"));
    }

    #[test]
    fn one_channel_target_needs_throughput_and_no_corrective_402() {
        let one = |name: &str, paid, rps, corrective| Run {
            name: name.into(),
            paid,
            channels: 1,
            concurrency: 64,
            ok: 1000,
            rps,
            corrective,
            ..Run::default()
        };
        for (paid_rps, corrective, met) in [(2_900.0, 0, true), (2_700.0, 0, false), (3_000.0, 1, false)] {
            let mut r = results();
            r.runs.push(one(ONE_CHANNEL_UNPAID, false, 3_100.0, 0));
            r.runs.push(one(ONE_CHANNEL_PAID, true, paid_rps, corrective));
            let targets = r.targets();
            let t = targets.iter().find(|t| t.name.contains("on one channel")).expect("the target");
            assert_eq!(t.met, met, "{paid_rps} req/s, {corrective} corrective: {}", t.value);
            assert!(r.markdown().contains(&t.value));
        }
    }

    #[test]
    fn the_page_and_chart_show_every_run_and_verdict() {
        let r = results();
        let md = r.markdown();
        for needle in
            ["| paid k=10 |", "**met**", "**missed**", "added by payment", "## Soak", "bench/throughput.svg"]
        {
            assert!(md.contains(needle), "{needle} missing from:\n{md}");
        }
        let svg = r.chart();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(
            svg.matches("<rect x=").count(),
            r.runs.len() + 1,
            "one bar per run, the store's included"
        );
    }

    #[test]
    fn the_page_shows_where_the_microseconds_go_before_and_after() {
        use crate::profile::{Line, summarise};
        let line = |samples, comm: &str, sym: &str| Line {
            samples,
            comm: comm.into(),
            dso: "x402-bench".into(),
            sym: sym.into(),
        };
        let before = summarise(
            &[line(50, "tokio-rt-worker", "rustsecp256k1_v0_10_0_fe_mul_inner"), line(50, "sled-io-1", "x")],
            100.0,
            "the old code",
        );
        let after =
            summarise(&[line(80, "tokio-rt-worker", "rustsecp256k1_v0_10_0_fe_mul_inner")], 40.0, "now");
        let mut r = results();
        assert!(r.markdown().contains("Not profiled in this run"));
        r.profile_error = Some("perf record has exited early".into());
        assert!(r.markdown().contains("The profile of this run failed: perf record has exited early."));
        r.profile = Some(after);
        let md = r.markdown();
        assert!(md.contains("| bucket | this run |"), "no before: one column");
        r.profile_before = Some(before);
        let md = r.markdown();
        for needle in [
            "## Where the µs go",
            "| signature (secp256k1) | 50.0 µs (50%) | 40.0 µs (100%) | -10.0 µs |",
            "| store, background (checkpoint, sled-io) | 50.0 µs (50%) | 0.0 µs (0%) | -50.0 µs |",
            "| **server CPU per paid request** | **100.0 µs** | **40.0 µs** | **-60.0 µs** |",
            "- Before: 100 samples; the old code. By thread: sled-io 50.0%, tokio-rt-worker 50.0%.",
            "| `x402-bench: rustsecp256k1_v0_10_0_fe_mul_inner` | 100.0% | 40.0 µs |",
        ] {
            assert!(md.contains(needle), "{needle} missing from:\n{md}");
        }
        let cpu = target(&r, "server CPU per paid request, k = 1");
        assert!(cpu.note.contains("signature (secp256k1) 40.0 µs"), "{}", cpu.note);
    }

    #[test]
    fn the_page_shows_the_settlement_figures() {
        let mut r = results();
        assert!(!r.markdown().contains("## Settlement"));
        r.settlement = Some(SettleFigures {
            store_channels: 1_000_000,
            due_channels: 10_000,
            max_batch: 1_000,
            index_seconds: 4.05,
            rounds: 10,
            round_seconds: 24.86,
            settled: 10_000,
            rpc_calls: 10_089,
            rpc_by_method: [("eth_call".to_owned(), 10_000), ("eth_sendRawTransaction".to_owned(), 10)]
                .into(),
            gas_used: 166_455_814,
            disk_bytes_per_channel: 590.3,
            record_bytes: 238,
            seconds: 67.4,
        });
        let md = r.markdown();
        for needle in [
            "## Settlement at scale",
            "Part of this run (67 s of it",
            "over 10,000 channels that owe the provider",
            "| rounds until nothing is owed (at most 1000 channels per transaction) | 10 in 24.86 s |",
            "| JSON-RPC calls | 10,089 (1.01 per owing channel) |",
            "| gas of the settlements | 166,455,814 (16646 per channel) |",
            "eth_call 10000, eth_sendRawTransaction 10",
        ] {
            assert!(md.contains(needle), "{needle} missing from:\n{md}");
        }
    }

    #[test]
    fn gas_comes_from_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gas.json");
        std::fs::write(
            &path,
            r#"{"close_many_100": "1000900", "close_many_10": "100000", "open_erc20": "150000", "erc20_transfer": "34000"}"#,
        )
        .unwrap();
        let gas = Gas::from_snapshot(&path).unwrap();
        assert_eq!(gas.marginal_close, 10_010.0);
        assert_eq!(gas.per_request[0], (100, 1_600.1));
        std::fs::write(&path, "{}").unwrap();
        assert!(Gas::from_snapshot(&path).is_err());
    }
}
