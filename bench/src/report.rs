//! The results: a machine-readable file, a chart, and the Markdown page that shows them with
//! each target marked met or missed.

use std::{fmt::Write as _, path::Path};

use serde::{Deserialize, Serialize};

use crate::load::{Latency, Run, Soak};

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
}

impl Results {
    /// The run named `name`.
    pub fn run(&self, name: &str) -> Option<&Run> {
        self.runs.iter().find(|r| r.name == name)
    }

    /// The issue's targets, evaluated on these results.
    pub fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        let unpaid = self.run("unpaid");
        if let (Some(paid), Some(unpaid)) = (self.run("paid k=1"), unpaid) {
            let ratio = paid.cpu_us_per_request * 1_000.0 / self.verify.verify_ns;
            let http = unpaid.cpu_us_per_request;
            out.push(Target {
                name: "server CPU per paid request (one signature per request)".into(),
                goal: "≤ 1.5 × one raw secp256k1 verification".into(),
                value: format!(
                    "{:.1} µs = {ratio:.2} × {:.1} µs",
                    paid.cpu_us_per_request,
                    self.verify.verify_ns / 1_000.0
                ),
                met: ratio <= 1.5,
                note: format!(
                    "of which {http:.1} µs is what the HTTP server spends on any request (the unpaid route: \
                     accept, parse, route, respond) and {:.1} µs the payment itself (base64 and JSON decoding, \
                     EIP-712 hash, public-key recovery at {:.1} µs, the record update and its share of a group \
                     commit); the HTTP part alone is {:.2} × a verification",
                    paid.cpu_us_per_request - http,
                    self.verify.recover_ns / 1_000.0,
                    http * 1_000.0 / self.verify.verify_ns
                ),
            });
        }
        if let (Some(k10), Some(unpaid)) = (self.run("paid k=10"), unpaid) {
            let ratio = k10.rps / unpaid.rps;
            out.push(Target {
                name: "paid throughput with a credit window of 10".into(),
                goal: "≥ 70% of the unpaid route".into(),
                value: format!("{:.0} / {:.0} req/s = {:.0}%", k10.rps, unpaid.rps, ratio * 100.0),
                met: ratio >= 0.7,
                note: format!(
                    "nine requests in ten present a session token (constant-time compare, no ECDSA, no fsync); \
                     the tenth carries a voucher; server CPU {:.1} µs per request against {:.1} µs unpaid",
                    k10.cpu_us_per_request, unpaid.cpu_us_per_request
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
                    "the channel is locked only to admit a voucher (reserve its price) and to commit it, never while the upstream works, so its requests are served in parallel in whatever order their vouchers arrive; the commits share group commits (mean {:.1} writes per fsync)",
                    paid.mean_batch
                ),
            });
        }
        let l = &self.latency;
        let ls = &self.latency_session;
        out.push(Target {
            name: format!("latency added by payment at {} req/s (p99)", l.rate),
            goal: "< 1 ms".into(),
            value: format!("{:.0} µs (p50 {:.0} µs)", l.added_p99_us(), l.added_p50_us()),
            met: l.added_p99_us() < 1_000.0 && l.paid.count > 0,
            note: format!(
                "paid p50/p99 {:.0}/{:.0} µs, unpaid {:.0}/{:.0} µs. A voucher is made durable before its response, \
                 and a lone request at moderate load has nobody to share the group commit with, so it pays one \
                 whole flush + fsync of the store; that is what this disk adds. Inside a credit window (session \
                 tokens, nothing to fsync) payment adds {:.0} µs at p99 (p50 {:.0} µs)",
                l.paid.p50_us,
                l.paid.p99_us,
                l.unpaid.p50_us,
                l.unpaid.p99_us,
                ls.added_p99_us(),
                ls.added_p50_us()
            ),
        });
        if let Some(paid) = self.run("paid k=1") {
            out.push(Target {
                name: "fsyncs under load (one signature per request)".into(),
                goal: "≤ 1 per 32 paid requests".into(),
                value: format!(
                    "1 per {:.1} (mean group commit {:.1} writes, max {})",
                    1.0 / paid.fsyncs_per_request.max(1e-9),
                    paid.mean_batch,
                    paid.max_batch
                ),
                met: paid.fsyncs_per_request <= 1.0 / 32.0,
                note: format!(
                    "every voucher is durable before its response; concurrent vouchers share one flush + fsync, \
                     so the batch size is bounded by the {} requests in flight",
                    paid.concurrency
                ),
            });
        }
        let s = &self.soak;
        if !s.rss_samples_kib.is_empty() {
            let (first, last) = (
                s.rss_samples_kib[s.rss_samples_kib.len() / 4].1,
                s.rss_samples_kib[s.rss_samples_kib.len() - 1].1,
            );
            let growth = last as f64 / first.max(1) as f64 - 1.0;
            out.push(Target {
                name: format!("soak: {} s of paid load over {} channels", s.seconds.round(), s.channels),
                goal: "resident memory flat, zero errors".into(),
                value: format!("{:+.1}% RSS after the first quarter, {} errors in {} requests", growth * 100.0, s.errors, s.ok),
                met: s.errors == 0 && growth < 0.10,
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
            "Generated by `{}` on {} ({}). Every figure below comes from that one run on one machine; \
             the raw data is in [`bench/results.json`](bench/results.json).\n",
            self.command, self.generated, self.machine
        );
        let _ = writeln!(
            w,
            "Regenerate with:\n\n```sh\nscripts/bench            # release build, then every measurement (~10 minutes)\n```\n"
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
            "| run | channels | connections | req/s | vs unpaid | server CPU / request | × one verification | fsyncs / paid request | mean commit batch | errors |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let unpaid_rps = self.run("unpaid").map_or(0.0, |r| r.rps);
        for r in self.runs.iter().chain(std::iter::once(&self.scale.run)).filter(|r| r.ok + r.errors > 0) {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {:.0} | {:.0}% | {:.1} µs | {:.2} | {} | {} | {} |",
                r.name,
                r.channels,
                r.concurrency,
                r.rps,
                if unpaid_rps > 0.0 { r.rps / unpaid_rps * 100.0 } else { 0.0 },
                r.cpu_us_per_request,
                r.cpu_us_per_request * 1_000.0 / self.verify.verify_ns,
                if r.paid { format!("{:.4}", r.fsyncs_per_request) } else { "–".into() },
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
        let l = &self.latency;
        let _ = writeln!(w, "\n## Latency at a moderate rate\n");
        let _ = writeln!(
            w,
            "{} requests per second, alternating paid (a fresh voucher each, `k = 1`) and unpaid, open loop.\n\n\
             | | p50 | p99 |\n|---|---:|---:|\n| unpaid | {:.0} µs | {:.0} µs |\n| paid | {:.0} µs | {:.0} µs |\n\
             | **added by payment** | **{:.0} µs** | **{:.0} µs** |\n\n{} errors. The same with session tokens (a credit \
             window of 10, so nothing to verify or fsync):\n\n| | p50 | p99 |\n|---|---:|---:|\n| unpaid | {:.0} µs | {:.0} µs |\n\
             | paid by session | {:.0} µs | {:.0} µs |\n| **added by payment** | **{:.0} µs** | **{:.0} µs** |\n\n{} errors. For comparison, \
             the x402 site quotes ~50 ms for signature verification by a facilitator.",
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
        let _ = writeln!(w, "\n## Scale: {} channels in the store\n", s.channels);
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
            "The node loads a channel's record on its first voucher and keeps it in memory; a restart reopens the \
             store without reading every record. Spread of throughput over few and many active channels: see the \
             `paid, 10 channels` and `paid, 100,000 channels` rows above."
        );
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
                "Not adopted: no batch beats the node's single libsecp256k1 check here. The credit window removes the \
                 signature check from `k − 1` of every `k` requests outright, which no batching can match."
                    .to_owned()
            } else {
                format!(
                    "Faster than the node's single check only for: {}. Not adopted on the request path: a batch \
                     makes every request in it wait for the slowest arrival and for the whole multiplication, a \
                     bad signature costs the batch plus single checks, and the credit window removes the \
                     signature check from `k − 1` of every `k` requests outright.",
                    wins.join(", ")
                )
            }
        );
        md
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results() -> Results {
        let run = |name: &str, paid, window, rps, cpu| Run {
            name: name.into(),
            paid,
            window,
            channels: 10,
            concurrency: 8,
            ok: 1000,
            rps,
            cpu_us_per_request: cpu,
            fsyncs_per_request: if paid { 0.01 } else { 0.0 },
            ..Run::default()
        };
        Results {
            verify: Verify { verify_ns: 20_000.0, recover_ns: 24_000.0 },
            runs: vec![
                run("unpaid", false, 1, 10_000.0, 10.0),
                run("paid k=1", true, 1, 4_000.0, 40.0),
                run("paid k=10", true, 10, 8_000.0, 14.0),
            ],
            latency: LatencyReport {
                rate: 100,
                paid: Latency { count: 10, p50_us: 300.0, p99_us: 1_500.0 },
                unpaid: Latency { count: 10, p50_us: 100.0, p99_us: 200.0 },
                errors: 0,
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

    #[test]
    fn targets_are_judged_from_the_figures() {
        let targets = results().targets();
        let met: Vec<(String, bool)> = targets.iter().map(|t| (t.name.clone(), t.met)).collect();
        assert_eq!(met.len(), 5, "{met:?}");
        assert!(!targets[0].met, "40 µs is 2 × a 20 µs verification");
        assert!(targets[0].value.contains("2.00 ×"), "{}", targets[0].value);
        assert!(targets[1].met, "8000 / 10000 = 80% ≥ 70%");
        assert!(!targets[2].met, "1,300 µs added at p99");
        assert!(targets[3].met, "0.01 fsyncs per request is 1 per 100");
        assert!(targets[4].met, "5% growth, no errors");
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
        assert_eq!(svg.matches("<rect x=").count(), 3, "one bar per run");
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
