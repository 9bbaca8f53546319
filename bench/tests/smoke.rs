//! The benchmark as a process, at a tiny size: every measurement runs, the server's counters
//! add up with what the load generator saw, and the page, data and chart are written. (No
//! figure is judged here: speed is for `scripts/bench` to report, not for a test to assert.)
#![allow(missing_docs, clippy::unwrap_used)]

use std::process::Command;

#[test]
fn a_tiny_run_measures_everything_and_writes_the_page() {
    let out = tempfile::tempdir().unwrap();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let status = Command::new(env!("CARGO_BIN_EXE_x402-bench"))
        .current_dir(root)
        .args([
            "run",
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
        ])
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
    assert!(page.contains("## Batch verification") && page.contains("| 256 | distinct |"), "{page}");
    assert!(std::fs::read_to_string(out.path().join("bench/throughput.svg")).unwrap().starts_with("<svg"));
}
