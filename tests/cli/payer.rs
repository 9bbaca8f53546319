//! Issue 15, the payer's side, as a user meets it: failed upstreams are not counted as spent,
//! payments go to the channel with the most remaining (or the one chosen), a cancelled exit
//! leaves the channel usable, a state directory keeps to its payer, every automatic open says
//! so, and the errors name the cause and the next step.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use alloy::primitives::U256;
use axum::{Router, http::StatusCode, response::IntoResponse, routing::get};
use x402_e2e::harness::{Env, Gateway, PRICE, free_port};

use crate::support::{Cli, id};

const FUNDS: u64 = 1_000_000;

/// `/weather` that fails with a 500 while `fail` is set.
async fn flaky_upstream(fail: Arc<AtomicBool>) -> SocketAddr {
    let app = Router::new().route(
        "/weather",
        get(move || {
            let fail = fail.clone();
            async move {
                if fail.load(Ordering::SeqCst) {
                    (StatusCode::INTERNAL_SERVER_ERROR, "upstream down").into_response()
                } else {
                    axum::Json(serde_json::json!({"forecast": "sunny"})).into_response()
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_choice_and_errors_of_the_payer() {
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    let fail = Arc::new(AtomicBool::new(false));
    let gw = Gateway::start(env.gateway_config(flaky_upstream(fail.clone()).await, data.path())).await;
    let key = env.fresh_key(FUNDS).await;
    let cli = Cli::new(&env).key(&key);
    let url = format!("{}/weather", gw.url);

    // Bug 1: 3,000 deposit, no top-ups; failed upstreams in between are not spent.
    let opened = cli.run(&["open", &url, "--deposit", "3000", "--json"]).await.success().json();
    let first = id(&opened["channel"]["id"]);
    cli.run(&["get", &url, "--auto-top-up", "false"]).await.success();
    fail.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let run = cli.run(&["get", &url, "--auto-top-up", "false"]).await.success();
        assert!(run.stderr.contains("HTTP 500") && run.stderr.contains("not charged"), "{run}");
        assert!(!run.stderr.contains("paid:"), "{run}");
    }
    fail.store(false, Ordering::SeqCst);
    for n in 2..=3u64 {
        let run = cli.run(&["get", &url, "--auto-top-up", "false"]).await.success();
        assert!(run.stderr.contains(&format!("total {}", n * PRICE)), "{run}");
        assert!(run.stderr.contains(&format!("(deposit 3000, {} left)", 3000 - n * PRICE)), "{run}");
    }
    let ch = cli.run(&["channels", "--json"]).await.success().json()["channels"][0].clone();
    assert_eq!(
        (ch["deposit"].as_str(), ch["charged"].as_str(), ch["remaining"].as_str()),
        (Some("3000"), Some("3000"), Some("0"))
    );
    // Exhausted now, with a hint; nothing topped up by itself.
    let run = cli.run(&["get", &url, "--auto-top-up", "false"]).await.failure(3, "exhausted");
    assert!(run.stderr.contains("hint: top it up"), "{run}");

    // Bug 3: a second and third channel (warned about); payments go to the one with the most
    // remaining, or to the one --channel names (by a prefix of its id).
    let run = cli.run(&["open", &url, "--deposit", "2000", "--json"]).await.success();
    assert!(run.stderr.contains("open channel(s) with this provider already"), "{run}");
    let small = id(&run.json()["channel"]["id"]);
    let big =
        id(&cli.run(&["open", &url, "--deposit", "9000", "--json"]).await.success().json()["channel"]["id"]);
    let run = cli.run(&["get", &url, "--json"]).await.success();
    assert_eq!(id(&run.json()["payment"]["channelId"]), big, "{run}");
    let prefix = &small.to_string()[..10];
    let run = cli.run(&["get", &url, "--channel", prefix, "--json"]).await.success();
    assert_eq!(id(&run.json()["payment"]["channelId"]), small, "{run}");
    assert_eq!(run.json()["transactions"], serde_json::json!([]), "nothing opened or topped up");

    // Bug 2: exit, then a top-up cancels it: the channel is usable again (not replaced).
    let big_text = big.to_string();
    cli.run(&["exit", &big_text[..12]]).await.success();
    cli.run(&["topup", &big_text[..12], "1000"]).await.success();
    let run = cli.run(&["get", &url, "--json"]).await.success();
    assert_eq!(id(&run.json()["payment"]["channelId"]), big, "{run}");
    let refreshed = cli.run(&["channels", "--refresh", "--json"]).await.success().json();
    let statuses: Vec<&str> =
        refreshed["channels"].as_array().unwrap().iter().map(|c| c["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["open", "open", "open"], "{refreshed}");
    assert_ne!(first, big);

    // Bug 4: the state directory belongs to this payer.
    let other = env.fresh_key(FUNDS).await;
    let mut intruder = Cli::new(&env).key(&other);
    intruder.set("X402_STATE_DIR", &cli.state.path().display().to_string());
    let run = intruder.run(&["topup", &big_text, "1000"]).await.failure(2, "belongs to payer");
    assert!(run.stderr.contains("--state-dir"), "{run}");

    // Friction: zero amounts, RPC URLs, a gateway given as the RPC endpoint.
    cli.run(&["topup", &big_text, "0"]).await.failure(2, "a top-up of 0 is not possible");
    let host = env.anvil.endpoint().trim_start_matches("http://").to_owned();
    cli.run(&["get", &url, "-r", &host]).await.failure(2, &format!("did you mean http://{host}?"));
    cli.run(&["get", &url, "-r", &format!("ws://{host}")]).await.failure(2, "JSON-RPC over HTTP");
    cli.run(&["get", &url, "--rpc-url", &gw.url]).await.failure(6, "is not a JSON-RPC endpoint");
    let nobody = format!("http://127.0.0.1:{}", free_port().port());
    cli.run(&["channels", "--refresh", "-r", &nobody]).await.failure(6, "connection refused");

    // Auto-open off: a fresh state does not open by itself.
    let fresh = Cli::new(&env).key(&env.fresh_key(FUNDS).await);
    let run = fresh.run(&["get", &url, "--auto-open", "false"]).await.failure(3, "automatic opens are off");
    assert!(run.stderr.contains("x402 open"), "{run}");
    // On: one line says what was opened, and that the challenge period was raised.
    let run = fresh.run(&["get", &url, "--challenge-period", "600"]).await.success();
    assert!(run.stderr.contains("opened a channel automatically"), "{run}");
    assert!(run.stderr.contains("raised from the 600 s asked"), "{run}");
    assert!(
        run.stderr.contains("tx approve") && run.stderr.contains("sent"),
        "a line per transaction: {run}"
    );

    // No ETH for gas: exit 4, the payer's address, the gasless way.
    let poor = env.gasless_key(FUNDS).await;
    let run = Cli::new(&env).key(&poor).run(&["open", &url, "--deposit", "1000"]).await;
    let run = run.failure(4, &poor.address().to_string());
    assert!(run.stderr.contains("--gasless"), "{run}");

    // quote: no key; balance: tokens, allowance, ETH.
    let quote = Cli::new(&env).run(&["quote", &url, "--json"]).await.success().json();
    assert_eq!(quote["accepts"][0]["price"].as_str(), Some("1000"));
    assert_eq!(quote["accepts"][0]["decimals"].as_u64(), Some(6));
    let balance = fresh.run(&["balance", &url, "--json"]).await.success().json();
    assert!(balance["balance"].as_str().unwrap().parse::<u64>().unwrap() < FUNDS, "{balance}");
    assert!(U256::from_str_radix(balance["eth"].as_str().unwrap(), 10).unwrap() > U256::ZERO);
    // A decimal deposit with the token's 6 decimals.
    let dec = fresh.run(&["open", &url, "--deposit", "0.005", "--json"]).await.success().json();
    assert_eq!(dec["channel"]["deposit"].as_str(), Some("5000"));
    gw.stop().await;
}

/// A stalled chain: one line says the transaction was sent and is awaited, and `--timeout`
/// bounds the wait. Transport failures say refused, DNS or TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_chain_is_bounded_and_transport_failures_are_named() {
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(env.gateway_config(x402_e2e::upstream().await, data.path())).await;
    let key = env.fresh_key(FUNDS).await;
    let cli = Cli::new(&env).key(&key);
    let url = format!("{}/weather", gw.url);

    x402_e2e::cheats::set_automine(&env.node_chain, false).await.unwrap();
    let started = std::time::Instant::now();
    let run = cli.run(&["open", &url, "--deposit", "1000", "--timeout", "2"]).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "bounded: {run}");
    let run = run.failure(1, "not confirmed by 1 blocks within 2 s");
    assert!(
        run.stderr.contains("tx approve") && run.stderr.contains("sent; waiting for 1 confirmation"),
        "{run}"
    );
    x402_e2e::cheats::set_automine(&env.node_chain, true).await.unwrap();

    // DNS, TLS against a plain HTTP server, and a refused connection, each named.
    cli.run(&["get", "http://no-such-host.invalid/weather"]).await.failure(6, "does not resolve (DNS)");
    let tls = url.replacen("http://", "https://", 1);
    cli.run(&["get", &tls]).await.failure(6, "TLS failed");
    let refused = format!("http://{}/weather", free_port());
    cli.run(&["get", &refused]).await.failure(6, "connection refused");

    // Another process holds the state directory: said while waiting, then a clear error.
    let held = x402_client::StateStore::open(cli.state.path()).unwrap();
    let run = cli.run(&["channels"]).await.failure(6, "in use by another process");
    assert!(run.stderr.contains("waiting for the state directory"), "{run}");
    assert!(run.stderr.contains("hint: wait for the other x402 process"), "{run}");
    drop(held);
    gw.stop().await;
}
