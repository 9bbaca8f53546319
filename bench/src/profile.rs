//! Where the server's CPU goes on the paid path: `perf record` on the server process during a
//! timed run, `perf report` by thread, shared object and symbol (self time, no children), and
//! the samples put in a few buckets, converted to microseconds per request with the CPU per
//! request that run measured.
//!
//! Self time by symbol is enough for the buckets, so no call graphs are recorded (`-F 999`,
//! no `-g`): cheap to take and to report. The store's own threads are bucketed by thread
//! (whatever they run, kernel or user); the request threads by symbol.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// The buckets, in the order the report shows them.
pub const BUCKETS: [&str; 9] =
    [SIGNATURE, KECCAK, CODEC, HTTP, STORE_HOT, STORE_BACKGROUND, SCHEDULING, ALLOCATOR, OTHER];

/// libsecp256k1 (`rustsecp256k1_*`) and other elliptic-curve code.
pub const SIGNATURE: &str = "signature (secp256k1)";
/// The EIP-712 digest: keccak and the typed-data encoding.
pub const KECCAK: &str = "EIP-712 / keccak";
/// The payment's decoding and the receipt's encoding: base64, serde_json, the wire types.
pub const CODEC: &str = "payment decode/encode (base64, JSON)";
/// hyper, httparse, axum, tower, tokio's I/O and the kernel's TCP/loopback path.
pub const HTTP: &str = "HTTP server + kernel TCP";
/// The store on the request's path: sled, the journal, the committer thread, fdatasync.
pub const STORE_HOT: &str = "store, hot path (sled, journal, committer, fsync)";
/// The store's background threads: checkpoints, sled's I/O and flusher threads.
pub const STORE_BACKGROUND: &str = "store, background (checkpoint, sled-io)";
/// Context switches, futexes, wake-ups, tokio's park and unpark.
pub const SCHEDULING: &str = "scheduling (context switches, futex, park/unpark)";
/// malloc and free.
pub const ALLOCATOR: &str = "allocator (malloc/free)";
/// Everything else: the engine's own logic, memcpy, ...
pub const OTHER: &str = "other (engine logic, memcpy, ...)";

/// One bucket of a profile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Its name (one of [`BUCKETS`]).
    pub name: String,
    /// Its share of the samples, 0 to 1.
    pub share: f64,
    /// That share of the CPU per request, microseconds.
    pub us_per_request: f64,
}

/// A share of the samples under one name (a thread, or a symbol).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Share {
    /// The thread (numbered threads folded: `sled-io-3` is `sled-io`) or `dso: symbol`.
    pub name: String,
    /// Its share of the samples, 0 to 1.
    pub share: f64,
}

/// A CPU profile of the server during a paid run, summarised.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// How it was taken (the perf commands, the run, the code).
    pub taken: String,
    /// The run's server CPU per request, microseconds (what the shares are converted with).
    pub cpu_us_per_request: f64,
    /// Samples in the profile.
    pub samples: u64,
    /// By bucket, in the order of [`BUCKETS`].
    pub buckets: Vec<Bucket>,
    /// By thread, largest first.
    pub threads: Vec<Share>,
    /// The largest symbols (self time), largest first.
    pub top: Vec<Share>,
}

/// One line of `perf report -n --sort comm,dso,sym`.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    /// Samples.
    pub samples: u64,
    /// The thread's name.
    pub comm: String,
    /// The shared object (`x402-bench`, `libc.so.6`, `[kernel.kallsyms]`).
    pub dso: String,
    /// The symbol, without perf's `[.] ` or `[k] ` prefix.
    pub sym: String,
}

/// Parses the tab-separated output of `perf report --no-children -n --sort comm,dso,sym
/// --stdio -g none -t '\t'` (comment lines start with `#`).
pub fn parse(report: &str) -> Vec<Line> {
    report
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let fields: Vec<&str> = l.split('\t').collect();
            let [_, samples, comm, dso, sym] = fields.as_slice() else { return None };
            let sym = sym.trim();
            let sym = sym.strip_prefix("[.] ").or_else(|| sym.strip_prefix("[k] ")).unwrap_or(sym);
            Some(Line {
                samples: samples.trim().parse().ok()?,
                comm: comm.trim().to_owned(),
                dso: dso.trim().to_owned(),
                sym: sym.trim().to_owned(),
            })
        })
        .collect()
}

/// A thread's name with its number folded (`sled-io-3` → `sled-io`).
pub fn thread_kind(comm: &str) -> &str {
    let trimmed = comm.trim_end_matches(|c: char| c.is_ascii_digit());
    if trimmed.len() < comm.len() && trimmed.len() > 1 {
        trimmed.trim_end_matches(['-', '_', ' '])
    } else {
        comm
    }
}

/// Symbols of the signature check.
const SIGNATURE_SYMBOLS: &[&str] = &["secp256k1", "k256::", "elliptic_curve::", "ecdsa::"];
/// Symbols of the EIP-712 digest.
const KECCAK_SYMBOLS: &[&str] =
    &["keccak", "Keccak", "eip712", "Eip712", "hash_struct", "SolStruct", "struct_hash"];
/// Allocator symbols: contained in a C symbol...
const ALLOCATOR_NAMES: &[&str] = &["malloc", "free", "realloc", "calloc", "memalign"];
/// ... or starting it (glibc internals, Rust's shims, mimalloc, jemalloc).
const ALLOCATOR_PREFIXES: &[&str] = &[
    "_int_",
    "unlink_chunk",
    "tcache",
    "__rust_alloc",
    "__rust_dealloc",
    "__rust_realloc",
    "__rdl_",
    "sdallocx",
    "mi_",
    "_mi_",
    "_rjem_",
    "je_",
    "tikv_jemalloc",
];
/// Symbols of the payment's decoding and the receipt's encoding.
const CODEC_SYMBOLS: &[&str] =
    &["base64", "serde_json", "serde::", "serde_core::", "x402_protocol::wire", "hex::", "const_hex"];
/// Symbols of the store on the request threads (the record codec included).
const STORE_SYMBOLS: &[&str] = &[
    "sled::",
    "x402_store",
    "x402_node::book",
    "crc32",
    "fdatasync",
    "fsync",
    "ext4",
    "jbd2",
    "blk_",
    "bio_",
    "submit_bio",
];
/// Kernel symbols of scheduling: context switches, wake-ups, futexes, the return to user space.
const SCHEDULING_KERNEL: &[&str] = &[
    "finish_task_switch",
    "schedule",
    "futex",
    "try_to_wake_up",
    "wake_up",
    "wake_q",
    "pick_next",
    "enqueue_task",
    "dequeue_task",
    "update_curr",
    "_raw_spin_unlock_irqrestore",
    "irqentry_exit",
    "exit_to_user_mode",
    "rseq",
    "hrtimer",
    "switch_to",
    "sched_",
    "ttwu",
];
/// User-space symbols of scheduling: tokio's and parking_lot's park, unpark and notify.
const SCHEDULING_USER: &[&str] = &[
    "park",
    "unpark",
    "Parker",
    "Unparker",
    "parking_lot",
    "Notify",
    "notify::",
    "notify_",
    "task::coop",
    "wake_by",
    "Condvar",
    "steal",
    "worker::Context::run",
    "scheduler::multi_thread",
    "scheduler::inject",
    "runtime::task::",
];
/// Symbols of the HTTP server and the kernel's TCP over loopback.
const HTTP_SYMBOLS: &[&str] = &[
    "hyper",
    "httparse",
    "axum",
    "tower",
    "http::",
    "h1::",
    "bytes::",
    "tokio::net",
    "tokio::io",
    "tokio::runtime::io",
    "mio::",
    "epoll",
    "tcp_",
    "sock_",
    "sk_",
    "inet_",
    "ip_",
    "ipv4",
    "skb",
    "netif",
    "net_rx",
    "process_backlog",
    "loopback",
    "napi",
    "__dev_queue",
    "dev_hard_start",
    "eth_type_trans",
    "bbr_",
    "softirq",
    "__local_bh_enable",
    "release_sock",
    "sendmsg",
    "recvmsg",
    "sendto",
    "recvfrom",
    "writev",
    "__libc_recv",
    "__libc_send",
    "copy_to_iter",
    "copy_from_iter",
    "copy_user",
    "copy_iovec",
    "__check_object_size",
    "__virt_addr_valid",
    "fdget",
    "__x64_sys_read",
    "__x64_sys_write",
    "ksys_read",
    "ksys_write",
    "vfs_read",
    "vfs_write",
];

/// The bucket of a sample of `sym` in `dso`, run by the thread `comm`.
pub fn bucket(comm: &str, dso: &str, sym: &str) -> &'static str {
    let thread = comm.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| sym.contains(n));
    // The store's threads, whatever they run.
    if thread.contains("ckpt")
        || thread.contains("checkpoint")
        // `x402-store-checkpoint`, as the kernel keeps it (15 bytes).
        || thread.starts_with("x402-store-chec")
        || thread.starts_with("sled-")
        || thread == "log flusher"
    {
        return STORE_BACKGROUND;
    }
    if thread.starts_with("x402-store") || thread.contains("journal") || thread.contains("commit") {
        return STORE_HOT;
    }
    // The request threads, by symbol.
    let kernel = dso.contains("kernel");
    if has(SIGNATURE_SYMBOLS) {
        SIGNATURE
    } else if has(KECCAK_SYMBOLS) {
        KECCAK
    } else if !kernel
        && !sym.contains("::")
        && (has(ALLOCATOR_NAMES)
            || ALLOCATOR_PREFIXES.iter().any(|p| sym.starts_with(p))
            || dso.contains("jemalloc")
            || dso.contains("mimalloc"))
    {
        ALLOCATOR
    } else if has(CODEC_SYMBOLS) {
        CODEC
    } else if has(STORE_SYMBOLS) {
        STORE_HOT
    } else if kernel && has(SCHEDULING_KERNEL) || has(SCHEDULING_USER) || sym == "syscall" {
        SCHEDULING
    } else if has(HTTP_SYMBOLS) {
        HTTP
    } else {
        OTHER
    }
}

/// Summarises `lines` (a profile of a run at `cpu_us_per_request` µs of server CPU per request).
pub fn summarise(lines: &[Line], cpu_us_per_request: f64, taken: &str) -> Profile {
    let total: u64 = lines.iter().map(|l| l.samples).sum();
    let share = |n: u64| if total == 0 { 0.0 } else { n as f64 / total as f64 };
    let mut by_bucket = [0u64; BUCKETS.len()];
    let mut threads: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let mut symbols: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for l in lines {
        let b = bucket(&l.comm, &l.dso, &l.sym);
        let i = BUCKETS.iter().position(|n| *n == b).unwrap_or(BUCKETS.len() - 1);
        by_bucket[i] += l.samples;
        *threads.entry(thread_kind(&l.comm).to_owned()).or_default() += l.samples;
        *symbols.entry(format!("{}: {}", l.dso, l.sym)).or_default() += l.samples;
    }
    let ranked = |map: std::collections::BTreeMap<String, u64>, n: usize| {
        let mut v: Vec<(String, u64)> = map.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.into_iter().take(n).map(|(name, s)| Share { name, share: share(s) }).collect::<Vec<_>>()
    };
    Profile {
        taken: taken.to_owned(),
        cpu_us_per_request,
        samples: total,
        buckets: BUCKETS
            .iter()
            .zip(by_bucket)
            .map(|(name, n)| Bucket {
                name: (*name).to_owned(),
                share: share(n),
                us_per_request: share(n) * cpu_us_per_request,
            })
            .collect(),
        threads: ranked(threads, 12),
        top: ranked(symbols, 20),
    }
}

/// `perf report` of `data` by thread, shared object and symbol, parsed.
pub fn report(data: &Path) -> eyre::Result<Vec<Line>> {
    let out = std::process::Command::new("perf")
        .arg("report")
        .arg("-i")
        .arg(data)
        .args(REPORT_ARGS)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()?;
    eyre::ensure!(out.status.success(), "perf report failed with {}", out.status);
    let lines = parse(&String::from_utf8_lossy(&out.stdout));
    eyre::ensure!(!lines.is_empty(), "perf report of {} has no samples", data.display());
    Ok(lines)
}

/// The arguments of `perf report` (after `-i <data>`).
pub const REPORT_ARGS: [&str; 11] = [
    "--no-children",
    "--sort",
    "comm,dso,sym",
    "--stdio",
    "-g",
    "none",
    "-n",
    "--percent-limit",
    "0",
    "-t",
    "\t",
];

/// Whether `perf` is on the `PATH` and runs.
pub fn perf_available() -> bool {
    std::process::Command::new("perf")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A `perf record` of one process, running until [`Recording::stop`].
#[derive(Debug)]
pub struct Recording {
    child: tokio::process::Child,
    data: PathBuf,
    started: std::time::Instant,
}

/// The sampling frequency, Hz.
pub const FREQUENCY: u32 = 999;

impl Recording {
    /// Starts `perf record -F 999 -p <pid>` into `data`.
    pub fn start(pid: u32, data: &Path) -> eyre::Result<Self> {
        let child = tokio::process::Command::new("perf")
            .args(["record", "-F", &FREQUENCY.to_string(), "-p", &pid.to_string(), "-o"])
            .arg(data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        Ok(Self { child, data: data.to_owned(), started: std::time::Instant::now() })
    }

    /// Stops the recording (SIGINT, as perf expects), reports it, and returns the lines with
    /// how long it recorded.
    pub async fn stop(mut self) -> eyre::Result<(Vec<Line>, Duration)> {
        let length = self.started.elapsed();
        let pid = self.child.id().ok_or_else(|| eyre::eyre!("perf record has exited early"))?;
        let pid = libc::pid_t::try_from(pid)?;
        // SAFETY: `kill` only sends a signal, to the perf process this recording started and
        // still owns (it has not been waited for, so the id is not reused).
        let sent = unsafe { libc::kill(pid, libc::SIGINT) };
        eyre::ensure!(sent == 0, "could not stop perf record: {}", std::io::Error::last_os_error());
        // perf's exit status after SIGINT varies by version; the report below is the check.
        let _ = tokio::time::timeout(Duration::from_secs(120), self.child.wait()).await?;
        let data = self.data.clone();
        let lines = tokio::task::spawn_blocking(move || report(&data)).await??;
        Ok((lines, length))
    }
}

/// The `perf record` command line of a [`Recording`], for the report.
pub fn record_command() -> String {
    format!("perf record -F {FREQUENCY} -p <server pid>")
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "# Samples: 22K of event 'cpu-clock:ppp'\n\
        # Overhead\t     Samples\tCommand        \tShared Object    \tSymbol\n\
         18.77% \t 4000       \ttokio-rt-worker\tx402-bench       \t[.] rustsecp256k1_v0_10_0_fe_mul_inner\n\
         2.67%  \t 1000       \ttokio-rt-worker\t[kernel.kallsyms]\t[k] finish_task_switch.isra.0\n\
         1.00%  \t 500        \ttokio-rt-worker\tx402-bench       \t[.] keccak::backends::soft::keccak_p\n\
         1.00%  \t 500        \ttokio-rt-worker\tlibc.so.6        \t[.] _int_malloc\n\
         1.00%  \t 1000       \tx402-store-comm\t[kernel.kallsyms]\t[k] finish_task_switch.isra.0\n\
         1.00%  \t 600        \tsled-io-0      \t[kernel.kallsyms]\t[k] iowrite16\n\
         1.00%  \t 400        \tsled-io-5      \tx402-bench       \t[.] sled::pagecache::PageCache::get\n\
         1.00%  \t 1000       \ttokio-rt-worker\t[kernel.kallsyms]\t[k] tcp_sendmsg_locked\n\
         1.00%  \t 500        \ttokio-rt-worker\tx402-bench       \t[.] <base64::engine::general_purpose::GeneralPurpose as base64::engine::Engine>::internal_decode\n\
         1.00%  \t 500        \ttokio-rt-worker\tx402-bench       \t[.] x402_node::channel::ChannelRecord::admit\n\
        \n#\n# (Tip: ...)\n";

    #[test]
    fn perf_report_lines_are_parsed() {
        let lines = parse(REPORT);
        assert_eq!(lines.len(), 10);
        assert_eq!(
            lines[0],
            Line {
                samples: 4000,
                comm: "tokio-rt-worker".into(),
                dso: "x402-bench".into(),
                sym: "rustsecp256k1_v0_10_0_fe_mul_inner".into()
            }
        );
        assert_eq!(lines[5].comm, "sled-io-0");
        assert!(parse("# only comments\n\n").is_empty());
        assert!(parse(" 1%\tnot-a-number\ta\tb\tc\n").is_empty(), "a line that is not a sample is skipped");
    }

    #[test]
    fn samples_land_in_their_bucket() {
        let w = "tokio-rt-worker";
        let k = "[kernel.kallsyms]";
        for (comm, dso, sym, want) in [
            (w, "x402-bench", "rustsecp256k1_v0_10_0_ecmult_strauss_wnaf.constprop.0", SIGNATURE),
            (w, "x402-bench", "k256::arithmetic::field::FieldElement::mul", SIGNATURE),
            (w, "x402-bench", "keccak::backends::soft::keccak_p", KECCAK),
            (w, "x402-bench", "x402_protocol::voucher::Voucher::eip712_signing_hash", KECCAK),
            (
                w,
                "x402-bench",
                "<base64::engine::general_purpose::GeneralPurpose as base64::engine::Engine>::internal_decode",
                CODEC,
            ),
            (w, "x402-bench", "serde_json::read::SliceRead::skip_to_escape", CODEC),
            (w, "x402-bench", "hyper::proto::h1::dispatch::Dispatcher<D,Bs,I,T>::poll_write", HTTP),
            (w, "x402-bench", "httparse::parse_headers_iter_uninit", HTTP),
            (w, k, "tcp_sendmsg_locked", HTTP),
            (w, k, "__tcp_transmit_skb", HTTP),
            (w, "x402-bench", "sled::pagecache::PageCache::get", STORE_HOT),
            (w, "x402-bench", "core::ptr::drop_in_place<sled::node::Data>", STORE_HOT),
            (w, k, "ext4_sync_file", STORE_HOT),
            ("x402-store-comm", k, "finish_task_switch.isra.0", STORE_HOT),
            ("x402-store-comm", "x402-bench", "rustsecp256k1_v0_10_0_fe_mul_inner", STORE_HOT),
            ("sled-io-3", k, "iowrite16", STORE_BACKGROUND),
            ("log flusher", "x402-bench", "sled::pagecache::logger::Log::flush", STORE_BACKGROUND),
            ("x402-checkpoint", k, "fdatasync", STORE_BACKGROUND),
            ("x402-store-chec", "x402-bench", "sled::tree::Tree::insert", STORE_BACKGROUND),
            ("x402-store-comm", k, "ext4_sync_file", STORE_HOT),
            (w, k, "finish_task_switch.isra.0", SCHEDULING),
            (w, k, "_raw_spin_unlock_irqrestore", SCHEDULING),
            (w, k, "futex_wake", SCHEDULING),
            (w, "libc.so.6", "syscall", SCHEDULING),
            (w, "x402-bench", "tokio::runtime::scheduler::multi_thread::park::Parker::park", SCHEDULING),
            (w, "libc.so.6", "_int_malloc", ALLOCATOR),
            (w, "libc.so.6", "cfree@GLIBC_2.2.5", ALLOCATOR),
            (w, "libc.so.6", "malloc", ALLOCATOR),
            (w, "x402-bench", "mi_malloc_aligned", ALLOCATOR),
            (w, "x402-bench", "_rjem_sdallocx", ALLOCATOR),
            (w, "x402-bench", "<alloc::vec::Vec<T,A> as core::clone::Clone>::clone", OTHER),
            (w, "libc.so.6", "__memmove_avx512_unaligned_erms", OTHER),
            (w, "x402-bench", "x402_node::channel::ChannelRecord::admit", OTHER),
        ] {
            assert_eq!(bucket(comm, dso, sym), want, "{comm} {dso} {sym}");
        }
    }

    #[test]
    fn threads_fold_their_numbers() {
        assert_eq!(thread_kind("sled-io-12"), "sled-io");
        assert_eq!(thread_kind("tokio-rt-worker"), "tokio-rt-worker");
        assert_eq!(thread_kind("x402-bench"), "x402-bench");
        assert_eq!(thread_kind("7"), "7");
    }

    #[test]
    fn a_summary_converts_shares_to_microseconds() {
        let p = summarise(&parse(REPORT), 100.0, "test");
        assert_eq!(p.samples, 10_000);
        assert_eq!(p.buckets.len(), BUCKETS.len());
        let get = |name: &str| p.buckets.iter().find(|b| b.name == name).unwrap().us_per_request;
        assert!((get(SIGNATURE) - 40.0).abs() < 1e-9);
        assert!((get(SCHEDULING) - 10.0).abs() < 1e-9);
        assert!((get(STORE_HOT) - 10.0).abs() < 1e-9, "the committer thread");
        assert!((get(STORE_BACKGROUND) - 10.0).abs() < 1e-9, "two sled-io threads");
        assert!((get(HTTP) - 10.0).abs() < 1e-9);
        assert!((get(OTHER) - 5.0).abs() < 1e-9);
        let sum: f64 = p.buckets.iter().map(|b| b.us_per_request).sum();
        assert!((sum - 100.0).abs() < 1e-9, "the buckets add up to the CPU per request: {sum}");
        assert_eq!(p.threads[0], Share { name: "tokio-rt-worker".into(), share: 0.8 });
        assert_eq!(p.threads[1], Share { name: "sled-io".into(), share: 0.1 });
        assert_eq!(p.top[0].name, "x402-bench: rustsecp256k1_v0_10_0_fe_mul_inner");
        let empty = summarise(&[], 100.0, "nothing");
        assert!(empty.buckets.iter().all(|b| b.share == 0.0));
    }
}
