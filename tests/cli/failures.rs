//! Every class of failure has its exit code, a clear `error:` line, and with `--json` a JSON
//! error document; none of them spends anything.

use alloy::{node_bindings::Anvil, primitives::U256, providers::Provider};
use x402_e2e::{
    harness::{Env, Gateway, PRICE, free_port},
    root, upstream,
};

use crate::support::{Cli, write};

const FUNDS: u64 = 1_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_has_its_exit_code_and_spends_nothing() {
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(env.gateway_config(upstream().await, data.path())).await;
    let key = env.fresh_key(FUNDS).await;
    let payer = key.address();
    let cli = Cli::new(&env).key(&key);
    let url = format!("{}/weather", gw.url);
    let below = (PRICE - 1).to_string();
    let unknown = format!("0x{}", "01".repeat(32));
    let nobody = format!("http://{}/weather", free_port());

    // (arguments, exit code, in the error message)
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        // 3: a limit refused it.
        (vec!["get", &url, "--max-price", &below], 3, "price 1000 per request is above the limit of 999"),
        (vec!["open", &url, "--max-price", &below], 3, "above the limit of 999"),
        (
            vec!["open", &url, "--deposit", "1000001"],
            3,
            "a deposit of 1000001 would exceed the per-channel limit",
        ),
        (
            vec!["open", &url, "--deposit", "20000", "--max-total-deposit", "10000"],
            3,
            "would exceed the limit of 10000",
        ),
        // 5: unknown channel.
        (vec!["topup", &unknown, "1000"], 5, "unknown channel"),
        (vec!["close", &unknown], 5, "unknown channel"),
        (vec!["exit", &unknown], 5, "unknown channel"),
        (vec!["withdraw", &unknown], 5, "unknown channel"),
        // 6: the node is not there.
        (vec!["get", &nobody], 6, "cannot reach"),
        (vec!["open", &nobody], 6, "cannot reach"),
        // 2: malformed input, refused before anything is contacted.
        (vec!["open", &url, "--deposit", "1.5x"], 2, "not an amount"),
        (vec!["open", &url, "--deposit", "0.0000001"], 2, "the token has 6 decimals"),
        (vec!["open", &url, "--deposit", "0"], 2, "a deposit of 0 is not possible"),
        (vec!["topup", &unknown, "12abc"], 2, "base units"),
        (vec!["get", &url, "--max-price=-1"], 2, "base units"),
        (vec!["topup", "0x12", "5"], 2, "at least 4 hex digits"),
        (vec!["topup", "0xzz12", "5"], 2, "is not a channel id"),
        (vec!["topup", "0x1234", "5"], 5, "no channel id starts with 0x1234"),
        (vec!["get", "localhost:8402/weather"], 2, "invalid URL"),
        (vec!["get", &url, "-H", "no colon"], 2, "Name: value"),
        (vec!["request", &url, "-d", "@/nonexistent/body"], 2, "cannot read the request body"),
        (vec!["frobnicate"], 2, "unrecognized subcommand"),
    ];
    for (args, code, message) in &cases {
        cli.run(args).await.failure(*code, message);
    }
    // Nothing was spent, no channel opened, no transaction sent.
    assert_eq!(env.balance(payer).await, U256::from(FUNDS));
    assert_eq!(env.node_chain.get_transaction_count(payer).await.unwrap(), 0);
    let listed = cli.run(&["channels", "--json"]).await.success().json();
    assert_eq!(listed["channels"], serde_json::json!([]));

    // With --json, the error is also a JSON document on stdout.
    let run = cli.run(&["get", &url, "--max-price", &below, "--json"]).await.failure(3, "above the limit");
    let doc = run.json();
    assert_eq!(
        (doc["error"]["code"].as_str(), doc["error"]["exitCode"].as_u64()),
        (Some("price_above_limit"), Some(3))
    );
    assert!(doc["error"]["message"].as_str().unwrap().contains("limit of 999"));
    let run = cli.run(&["topup", &unknown, "1.5x", "--json"]).await.failure(2, "not an amount");
    assert_eq!(run.json()["error"]["code"].as_str(), Some("usage"));
    let run = cli.run(&["withdraw", &unknown, "--json"]).await.failure(5, "unknown channel");
    assert_eq!(run.json()["error"]["code"].as_str(), Some("unknown_channel"));
    // Without --json, nothing on stdout.
    let run = cli.run(&["get", &url, "--max-price", &below]).await.failure(3, "above the limit");
    assert_eq!(run.stdout, "");
    assert!(run.stderr.contains("hint: raise --max-price"), "{run}");

    // 4: a payer without the tokens.
    let poor = env.fresh_key(0).await;
    let poor_cli = Cli::new(&env).key(&poor);
    poor_cli.run(&["open", &url, "--deposit", "10000"]).await.failure(4, "insufficient balance of token");
    let run = poor_cli.run(&["get", &url, "--json"]).await.failure(4, "0 available, 100000 needed");
    assert_eq!(run.json()["error"]["code"].as_str(), Some("insufficient_balance"));
    // 4: allowance short and approval off.
    cli.run(&["open", &url, "--deposit", "10000", "--auto-approve", "false"])
        .await
        .failure(4, "insufficient allowance");
    assert_eq!(env.node_chain.get_transaction_count(payer).await.unwrap(), 0);

    // 6: the RPC endpoint is not there.
    let nowhere = Cli::with_rpc(&format!("http://{}", free_port())).key(&key);
    let run = nowhere.run(&["get", &url, "--json"]).await.failure(6, "cannot reach the RPC endpoint");
    assert_eq!(run.json()["error"]["code"].as_str(), Some("rpc_unreachable"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rpc_endpoint_on_another_chain_is_the_wrong_network() {
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(env.gateway_config(upstream().await, data.path())).await;
    let other = Anvil::new()
        .path(root().join("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"))
        .chain_id(99)
        .spawn();
    let key = env.fresh_key(FUNDS).await;
    let cli = Cli::with_rpc(&other.endpoint()).key(&key);
    let url = format!("{}/weather", gw.url);
    for args in [vec!["get", url.as_str()], vec!["open", &url, "--deposit", "10000"]] {
        cli.run(&args).await.failure(7, "the RPC endpoint is on chain 99, the payment is on chain 31337");
    }
    let run = cli.run(&["get", &url, "--json"]).await.failure(7, "wrong network");
    assert_eq!(run.json()["error"]["code"].as_str(), Some("wrong_network"));
    assert_eq!(env.balance(key.address()).await, U256::from(FUNDS));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_and_settings_are_usage_errors_that_never_echo_the_key() {
    let env = Env::new().await;
    let url = "http://127.0.0.1:1/weather";
    let dir = tempfile::tempdir().unwrap();

    // No key at all.
    Cli::new(&env).run(&["get", url]).await.failure(2, "needs the payer's key");

    // Malformed keys, in the environment and in a file: refused, the text never shown.
    let marker = "c0ffee15bad";
    for bad in [format!("0x{marker}"), format!("{marker}{}", "z".repeat(53)), format!("0x{}", "0".repeat(64))]
    {
        let mut cli = Cli::new(&env);
        cli.set_secret("X402_PRIVATE_KEY", &bad);
        cli.secret(marker);
        cli.run(&["get", url]).await.failure(2, "X402_PRIVATE_KEY is not a");

        let mut cli = Cli::new(&env);
        let file = write(dir.path(), "bad.key", &bad);
        cli.secret(marker);
        cli.secret(&bad);
        cli.run(&["get", url, "--key-file", &file]).await.failure(2, "is not a");
    }

    // Two sources for the payer key: refused, not guessed.
    let key = env.fresh_key(0).await;
    let cli = Cli::new(&env).key(&key);
    let file = write(dir.path(), "good.key", &alloy::hex::encode(key.to_bytes()));
    cli.run(&["get", url, "--key-file", &file])
        .await
        .failure(2, "given more than once (--key-file, X402_PRIVATE_KEY)");

    // Input is checked before anything is contacted: with no RPC endpoint, still usage errors.
    let offline = Cli::with_rpc(&format!("http://{}", free_port())).key(&key);
    offline.run(&["get", "localhost:8402/weather"]).await.failure(2, "invalid URL");
    offline
        .run(&["request", url, "-d", "@/nonexistent/body"])
        .await
        .failure(2, "cannot read the request body");
    offline.run(&["open", "ftp://x/weather"]).await.failure(2, "only http and https");
    offline.run(&["get", url]).await.failure(6, "cannot reach the RPC endpoint");

    // A config file with a typo.
    let config = write(dir.path(), "x402.toml", "[limits]\nmax_prize = 5\n");
    cli.run(&["get", url, "--config", &config]).await.failure(2, "unknown field `max_prize`");
    cli.run(&["channels", "--config", "/nonexistent/x402.toml"])
        .await
        .failure(2, "cannot read the config file");
}
