//! The benchmark as a process, at a tiny size: every measurement runs, the server's counters
//! add up with what the load generator saw, and the page, data and chart are written. (No
//! figure is judged here: speed is for `scripts/bench` to report, not for a test to assert.)
#![allow(missing_docs, clippy::unwrap_used)]

use std::process::Command;

#[test]
fn a_tiny_run_measures_everything_and_writes_the_page() {
    let out = tempfile::tempdir().unwrap();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let perf = x402_bench::profile::perf_available();
    let status = Command::new(env!("CARGO_BIN_EXE_x402-bench"))
        .current_dir(root)
        .arg("run")
        .args(perf.then_some("--profile").into_iter().chain([
            "--duration-secs",
            "3",
            "--concurrency",
            "4",
            "--requests",
            "300",
            "--channels",
            "12",
            "--many-channels",
            "50",
            "--scale-channels",
            "500",
            "--latency-rate",
            "20",
            "--soak-secs",
            "2",
            "--soak-channels",
            "8",
            "--settle-store",
            "300",
            "--settle-due",
            "20",
            "--settle-max-batch",
            "8",
            "--out",
        ]))
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success());

    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("bench/results.json")).unwrap())
            .unwrap();
    let runs = results["runs"].as_array().unwrap();
    let names: Vec<&str> = runs.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "unpaid",
            "paid k=1",
            "paid k=10",
            "paid k=100",
            "paid, 10 channels",
            "paid, 50 channels",
            "one channel via gateway, unpaid",
            "one channel via gateway, paid",
        ]
    );
    for r in runs {
        assert!(r["ok"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["errors"], 0, "{r}");
        assert!(r["cpu_us_per_request"].as_f64().unwrap() > 0.0, "{r}");
    }
    let by_name = |n: &str| runs.iter().find(|r| r["name"] == n).unwrap();
    // k = 1: no sessions, every paid request made durable; k = 10: nine in ten by session.
    assert_eq!(by_name("paid k=1")["paid_by_session"], 0);
    assert!(by_name("paid k=1")["fsyncs_per_request"].as_f64().unwrap() > 0.0);
    let k10 = by_name("paid k=10");
    let (ok, sessions) = (k10["ok"].as_u64().unwrap(), k10["paid_by_session"].as_u64().unwrap());
    // One voucher per ten requests on each channel (a channel's last window may be partial).
    let channels = k10["channels"].as_u64().unwrap();
    assert!(sessions < ok && sessions + ok.div_ceil(10) + channels >= ok, "{k10}");
    // Concurrent requests on one channel through the gateway: every one admitted at once.
    assert_eq!(by_name("one channel via gateway, paid")["corrective"], 0);
    assert_eq!(results["latency"]["errors"], 0);
    assert_eq!(results["latency_session"]["errors"], 0);
    assert!(results["latency_session"]["paid"]["count"].as_u64().unwrap() > 0);
    assert!(results["latency"]["paid"]["count"].as_u64().unwrap() > 0);
    assert_eq!(results["soak"]["errors"], 0);
    // Settlement: every owing channel settled, in rounds of at most 8, one simulation each.
    let settlement: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("bench/settlement.json")).unwrap())
            .unwrap();
    assert_eq!(settlement["settled"], 20, "{settlement}");
    assert_eq!(settlement["rounds"], 3, "{settlement}");
    assert_eq!(settlement["rpcByMethod"]["eth_call"], 20, "{settlement}");
    assert_eq!(settlement["rpcByMethod"]["eth_sendRawTransaction"], 3, "{settlement}");
    assert!(results["soak"]["ok"].as_u64().unwrap() > 0);
    assert_eq!(results["scale"]["channels"], 500);
    assert!(results["scale"]["disk_bytes"].as_u64().unwrap() > 0);
    assert!(results["scale"]["run"]["ok"].as_u64().unwrap() > 0);
    assert_eq!(results["scale"]["run"]["errors"], 0);
    assert!(results["gas"]["marginal_close"].as_f64().unwrap() > 0.0);
    let batch = results["batch"].as_array().unwrap();
    assert_eq!(batch.len(), 6, "16, 64, 256 signatures, distinct and repeated signers");
    assert!(batch.iter().all(|b| b["batch_us"].as_f64().unwrap() > 0.0), "{batch:?}");

    let page = std::fs::read_to_string(out.path().join("BENCHMARKS.md")).unwrap();
    assert!(page.contains("## Targets") && page.contains("scripts/bench"));
    for row in [
        "| server CPU per paid request, k = 1, vs one libsecp256k1 verification in the same run |",
        "| the same with 50 active channels / with a store of 500 channels |",
        "| paid throughput, k = 10 / k = 100, vs unpaid |",
        "| p99 latency added by payment at 20 req/s, k = 1 |",
        "| fsyncs per paid request at 4 in flight, k = 1 |",
        "| bytes per channel in the store |",
        "| restart with 500 channels, to the first answer |",
        "## Settlement at scale",
        "## Where the µs go",
    ] {
        assert!(page.contains(row), "{row} missing from:\n{page}");
    }
    assert_eq!(results["settlement"]["settled"], 20);
    if perf {
        // So short a window mostly ends before the profile's start; either way the page says
        // what became of the profile (the profile itself is checked on a longer run below).
        let profiled = results["profile"].is_object();
        assert!(profiled || results["profile_error"].is_string(), "{results}");
        assert!(
            page.contains(if profiled { "| bucket |" } else { "The profile of this run failed" }),
            "{page}"
        );
    }
    assert!(page.contains("## Batch verification") && page.contains("| 256 | distinct |"), "{page}");
    assert!(std::fs::read_to_string(out.path().join("bench/throughput.svg")).unwrap().starts_with("<svg"));
}

/// `--profile` on a paid k=1 run long enough to be profiled: perf records the server and every
/// bucket is reported, their shares adding up to the whole.
#[test]
fn a_profiled_run_reports_where_the_cpu_goes() {
    if !x402_bench::profile::perf_available() {
        x402_bench::report::note("perf is not installed: nothing to profile with");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_x402-bench"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(["run", "--profile", "--only", "paid k=1", "--duration-secs", "3", "--concurrency", "4"])
        .args(["--requests", "6000", "--channels", "12", "--many-channels", "50"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let buckets: Vec<&str> =
        stdout.lines().filter(|l| l.starts_with("profile: ") && l.contains(" µs ")).collect();
    assert_eq!(buckets.len(), x402_bench::profile::BUCKETS.len(), "{stdout}");
    let share: f64 = buckets
        .iter()
        .map(|l| l.split_whitespace().nth(3).unwrap().trim_end_matches('%').parse::<f64>().unwrap())
        .sum();
    assert!((share - 100.0).abs() < 0.5, "the shares add up to {share}%: {stdout}");
    let signature = buckets.iter().find(|l| l.contains("signature")).unwrap();
    assert!(!signature.contains(" 0.0%"), "a paid run spends time on signatures: {signature}");
    assert!(stdout.contains("profile: by thread: "), "{stdout}");
}
