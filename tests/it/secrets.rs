//! Keys never reach the output of the `x402-node` binary: the provider's, the relay's and the
//! watcher's keys (in environment variables or in files) and the admin and watcher tokens,
//! with `RUST_LOG=trace`, through `run` (paid requests, refusals, a cooperative close signed
//! with the provider key, a gasless open relayed with the relay key, a forced settlement, a
//! push to the watcher), `settle`, `watch`, every error path around keys and configuration,
//! and `--help` of every subcommand.

use std::{path::Path, process::Command, time::Duration};

use alloy::{primitives::U256, signers::local::PrivateKeySigner};
use x402_client::{Client, GaslessKind, Limits, Relayer};
use x402_e2e::{
    account,
    harness::{ADMIN, Env, PRICE, free_port, required},
    upstream,
};
use x402_node::config::{Config, WatcherTarget};
use x402_protocol::{
    close::{CLOSE_PATH, CloseRequestBody},
    open::OPEN_PATH,
    watch::{WATCH_PATH, WatchRequest},
    wire::{self, PaymentPayload},
};

use crate::process::{NodeProcess, node_command};

const WATCHER_TOKEN: &str = "watcher-token-secret-0123456789";
const FACILITATOR_TOKEN: &str = "facilitator-token-secret-0123456789abcdef";

/// The secrets that must not appear, by name.
struct Secrets(Vec<(&'static str, String)>);

impl Secrets {
    fn key(&mut self, name: &'static str, key: &PrivateKeySigner) -> String {
        let hex = alloy::hex::encode(key.to_bytes());
        self.0.push((name, hex.clone()));
        hex
    }

    /// Panics if `output` holds any secret, or half of a key (either 32 hex digits), in any
    /// case, with or without `0x`.
    fn assert_absent(&self, what: &str, output: &str) {
        let lower = output.to_lowercase();
        for (name, secret) in &self.0 {
            let secret = secret.to_lowercase();
            let mut pieces = vec![secret.as_str()];
            if secret.len() == 64 {
                pieces.extend([&secret[..32], &secret[32..]]);
            }
            for piece in pieces {
                assert!(!lower.contains(piece), "{what}: the {name} appears in the output:\n{output}");
            }
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writes");
    path
}

/// Runs the binary to completion with `args` and `env`, returning whether it succeeded and its
/// output.
fn run_to_end(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd: Command = node_command();
    cmd.args(args).env("RUST_LOG", "trace");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn config_file(dir: &Path, name: &str, config: &Config) -> String {
    let path = write(dir, name, &toml::to_string(config).expect("renders"));
    path.to_str().expect("utf-8").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_tokens_never_reach_the_output() {
    let env = Env::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut secrets = Secrets(vec![
        ("admin token", ADMIN.into()),
        ("watcher token", WATCHER_TOKEN.into()),
        ("facilitator token", FACILITATOR_TOKEN.into()),
    ]);
    let provider_hex = secrets.key("provider key", &env.provider_key);
    let relay_key = account(&env.anvil, 2);
    let relay_hex = secrets.key("relay key", &relay_key);
    let watcher_hex = secrets.key("watcher key", &account(&env.anvil, 9));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    let rpc = env.anvil.endpoint();
    let contract = env.contract.to_string();

    // The watcher, its key and token in environment variables.
    let watcher_listen = free_port();
    let watcher_url = format!("http://{watcher_listen}");
    let mut cmd = node_command();
    cmd.args(["--rpc-url", &rpc, "--contract", &contract, "--listen", &watcher_listen.to_string()])
        .arg("--data-dir")
        .arg(dir.path().join("watcher"))
        .args(["watch", "--poll-interval-secs", "1"])
        .env("RUST_LOG", "trace")
        .env("X402_WATCHER_KEY", format!("0x{watcher_hex}"))
        .env("X402_WATCHER_TOKEN", WATCHER_TOKEN);
    let mut watcher = NodeProcess::spawn(cmd, dir.path(), "watch-env");
    watcher.wait_serving(&watcher_url).await;

    // The gateway: provider and relay keys in environment variables, settling, relaying,
    // pushing to the watcher, admin endpoints on.
    let api = upstream().await;
    let mut config = env.gateway_config(api, &dir.path().join("data"));
    config.provider.address = None;
    config.provider.key_env = "X402_PROVIDER_KEY".into();
    config.settlement.enabled = true;
    config.settlement.interval_secs = 3600;
    config.relay.enabled = true;
    config.facilitator.token = Some(FACILITATOR_TOKEN.into());
    config.watchers.push(WatcherTarget {
        url: watcher_url.clone(),
        token: WATCHER_TOKEN.into(),
        every: 1,
        interval_secs: 1,
    });
    let env_keys = [
        ("X402_PROVIDER_KEY", format!("0x{}", provider_hex.to_uppercase())),
        ("X402_RELAY_KEY", relay_hex.clone()),
    ];
    let file = config_file(dir.path(), "node.toml", &config);
    let url = format!("http://{}", config.listen);
    let mut cmd = node_command();
    cmd.args(["--config", &file, "run"]).env("RUST_LOG", "trace");
    for (k, v) in &env_keys {
        cmd.env(k, v);
    }
    let mut node = NodeProcess::spawn(cmd, dir.path(), "run-env");
    node.wait_serving(&url).await;
    exercise_gateway(&env, &http, &url).await;
    // The watcher got the vouchers; a push without the token is refused.
    let refused = http
        .post(format!("{watcher_url}{WATCH_PATH}"))
        .bearer_auth("not-the-watcher-token-0123")
        .json(&WatchRequest { vouchers: vec![] })
        .send()
        .await
        .expect("push");
    assert_eq!(refused.status(), reqwest::StatusCode::UNAUTHORIZED);
    node.kill();
    watcher.kill();
    let (run_out, watch_out) = (node.output(), watcher.output());
    for expected in [
        "TRACE",
        "gateway started",
        "relaying a gasless open",
        "cooperative close requested",
        "settlement mined",
    ] {
        assert!(run_out.contains(expected), "run logged {expected:?}:\n{run_out}");
    }
    for expected in ["TRACE", "watcher started", "push handled"] {
        assert!(watch_out.contains(expected), "watch logged {expected:?}:\n{watch_out}");
    }
    secrets.assert_absent("run (keys in env)", &run_out);
    secrets.assert_absent("watch (key in env)", &watch_out);

    // `settle`, the key in the environment, then in a file.
    let (ok, out) = run_to_end(
        &["--config", &file, "settle", "--force", "--json"],
        &[(env_keys[0].0, env_keys[0].1.as_str())],
    );
    assert!(ok, "settle: {out}");
    secrets.assert_absent("settle (key in env)", &out);
    let provider_file = write(dir.path(), "provider.key", &format!("0x{provider_hex}\n"));
    let provider_file = provider_file.to_str().expect("utf-8");
    let (ok, out) = run_to_end(&["--config", &file, "--provider-key-file", provider_file, "settle"], &[]);
    assert!(ok, "settle: {out}");
    secrets.assert_absent("settle (key in a file)", &out);

    // The gateway and the watcher with their keys in files.
    let relay_file = write(dir.path(), "relay.key", &relay_hex);
    config.relay.key_file = Some(relay_file.clone());
    let file = config_file(dir.path(), "node-files.toml", &config);
    let mut cmd = node_command();
    cmd.args(["--config", &file, "run"])
        .env("RUST_LOG", "trace")
        .env("X402_PROVIDER_KEY_FILE", provider_file);
    let mut node = NodeProcess::spawn(cmd, dir.path(), "run-files");
    node.wait_serving(&url).await;
    exercise_gateway(&env, &http, &url).await;
    node.kill();
    secrets.assert_absent("run (keys in files)", &node.output());
    let watcher_file = write(dir.path(), "watcher.key", &format!("{watcher_hex}\n"));
    let mut cmd = node_command();
    cmd.args(["--rpc-url", &rpc, "--contract", &contract, "--listen", &watcher_listen.to_string()])
        .arg("--data-dir")
        .arg(dir.path().join("watcher"))
        .args(["watch", "--token", WATCHER_TOKEN, "--key-file"])
        .arg(&watcher_file)
        .env("RUST_LOG", "trace");
    let mut watcher = NodeProcess::spawn(cmd, dir.path(), "watch-file");
    watcher.wait_serving(&watcher_url).await;
    let listed = http
        .get(format!("{watcher_url}{}", x402_protocol::watch::CHANNELS_PATH))
        .bearer_auth(WATCHER_TOKEN)
        .send()
        .await
        .expect("listing");
    assert_eq!(listed.status(), reqwest::StatusCode::OK);
    watcher.kill();
    secrets.assert_absent("watch (key in a file)", &watcher.output());

    // Error paths: bad keys, bad configurations, an unreachable chain.
    let bad_key = format!("0x{}zz", &provider_hex[..62]);
    let misplaced = write(dir.path(), "misplaced.toml", &format!("[provider]\nkey = \"0x{provider_hex}\"\n"));
    let misplaced = misplaced.to_str().expect("utf-8");
    let typed = write(dir.path(), "typed.toml", &format!("max_timeout_seconds = \"{provider_hex}\"\n"));
    let typed = typed.to_str().expect("utf-8");
    let noisy_file = write(dir.path(), "noisy.key", &format!("0x{provider_hex} # the provider\n"));
    let noisy_file = noisy_file.to_str().expect("utf-8");
    let bad_watcher_file = write(dir.path(), "bad-watcher.key", &format!("{watcher_hex}00"));
    let bad_watcher_file = bad_watcher_file.to_str().expect("utf-8");
    let mut mismatch = config.clone();
    mismatch.provider.address = Some(alloy::primitives::Address::repeat_byte(1));
    let mismatch = config_file(dir.path(), "mismatch.toml", &mismatch);
    let all_env = [
        ("X402_PROVIDER_KEY", provider_hex.as_str()),
        ("X402_RELAY_KEY", relay_hex.as_str()),
        ("X402_WATCHER_KEY", watcher_hex.as_str()),
        ("X402_ADMIN_TOKEN", ADMIN),
        ("X402_WATCHER_TOKEN", WATCHER_TOKEN),
    ];
    let with_bad_key = [("X402_PROVIDER_KEY", bad_key.as_str())];
    let with_bad_watcher = [("X402_WATCHER_KEY", bad_key.as_str()), ("X402_WATCHER_TOKEN", WATCHER_TOKEN)];
    // (name, arguments, environment, expected error)
    type Case<'a> = (&'a str, Vec<&'a str>, &'a [(&'a str, &'a str)], &'a str);
    let cases: Vec<Case<'_>> = vec![
        ("run, malformed key", vec!["--config", &file, "run"], &with_bad_key, "not a valid hex private key"),
        (
            "settle, malformed key",
            vec!["--config", &file, "settle"],
            &with_bad_key,
            "not a valid hex private key",
        ),
        (
            "settle, key file with a comment",
            vec!["--config", &file, "--provider-key-file", noisy_file, "settle"],
            &[],
            "not a valid hex private key",
        ),
        (
            "run, key of another address",
            vec!["--config", &mismatch, "run"],
            &all_env,
            "is not the address of the provider key",
        ),
        (
            "run, a key pasted into the config",
            vec!["--config", misplaced, "run"],
            &all_env,
            "unknown field `key`",
        ),
        ("run, a key as a number", vec!["--config", typed, "run"], &all_env, "invalid type"),
        (
            "run, unreachable chain",
            vec!["--contract", &contract, "--rpc-url", "http://127.0.0.1:9", "run"],
            &all_env,
            "cannot reach the chain RPC",
        ),
        (
            "watch, malformed key",
            vec!["--contract", &contract, "--rpc-url", &rpc, "watch"],
            &with_bad_watcher,
            "not a valid hex private key",
        ),
        (
            "watch, key file too long",
            vec!["--contract", &contract, "--rpc-url", &rpc, "watch", "--key-file", bad_watcher_file],
            &with_bad_watcher,
            "not a valid hex private key",
        ),
        (
            "watch, short token",
            vec!["--contract", &contract, "--rpc-url", &rpc, "watch", "--token", "short"],
            &all_env,
            "a bearer token needs",
        ),
    ];
    for (name, args, env, expected) in cases {
        let (ok, out) = run_to_end(&args, env);
        assert!(!ok, "{name}: must fail:\n{out}");
        assert!(out.contains(expected), "{name}: expected {expected:?} in:\n{out}");
        secrets.assert_absent(name, &out);
        assert!(!out.contains(&bad_key[2..40]), "{name}: the malformed key is echoed:\n{out}");
    }

    // `--help` of every subcommand, with every key and token in the environment.
    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["settle", "--help"],
        vec!["watch", "--help"],
        vec!["config", "--help"],
        vec!["help", "watch"],
    ] {
        let (ok, out) = run_to_end(&args, &all_env);
        assert!(ok, "{args:?}: {out}");
        assert!(out.contains("Usage"), "{args:?}: {out}");
        secrets.assert_absent(&format!("{args:?}"), &out);
    }
    // `config` prints the effective configuration without secrets.
    let (ok, out) = run_to_end(&["--config", &file, "config"], &all_env);
    assert!(ok, "config: {out}");
    secrets.assert_absent("config", &out);
}

/// Paid requests, refusals, a cooperative close (signed with the provider key), a gasless open
/// (sent with the relay key), a forced settlement round (signed with the provider key) and the
/// admin endpoints with and without the token.
async fn exercise_gateway(env: &Env, http: &reqwest::Client, url: &str) {
    let weather = format!("{url}/weather");
    let unpaid = http.get(&weather).send().await.expect("request");
    assert_eq!(unpaid.status(), reqwest::StatusCode::PAYMENT_REQUIRED);
    let terms = required(&unpaid).accepts.remove(0);
    let payer = env.fresh_payer(100 * PRICE).await;
    let id = payer.open(env.provider_key.address(), 10 * PRICE, rand::random()).await;
    let pay = |nonce: u64, amount: u64| {
        let header = wire::encode_header(&PaymentPayload::new(&terms, &payer.sign(id, nonce, amount)));
        http.get(&weather).header(wire::PAYMENT_SIGNATURE, header).send()
    };
    x402_e2e::harness::eventually(10, "the channel to be served", || async {
        pay(1, PRICE).await.expect("request").status() == reqwest::StatusCode::OK
    })
    .await;
    assert_eq!(pay(2, 2 * PRICE).await.expect("request").status(), reqwest::StatusCode::OK);
    assert_eq!(pay(2, 3 * PRICE).await.expect("request").status(), reqwest::StatusCode::PAYMENT_REQUIRED);
    assert_eq!(pay(3, 100 * PRICE).await.expect("request").status(), reqwest::StatusCode::PAYMENT_REQUIRED);
    let garbage = http.get(&weather).header(wire::PAYMENT_SIGNATURE, "%%%").send().await.expect("request");
    assert_eq!(garbage.status(), reqwest::StatusCode::BAD_REQUEST);

    // The facilitator API, without and with its token.
    let supported =
        |token: &'static str| http.get(format!("{url}/facilitator/supported")).bearer_auth(token).send();
    assert_eq!(
        supported("wrong-token-0123456789").await.expect("request").status(),
        reqwest::StatusCode::UNAUTHORIZED
    );
    assert_eq!(supported(FACILITATOR_TOKEN).await.expect("request").status(), reqwest::StatusCode::OK);

    // Admin, without and with the token.
    let admin = http.get(format!("{url}/admin/channels")).bearer_auth("wrong-token-0123456789").send();
    assert_eq!(admin.await.expect("admin").status(), reqwest::StatusCode::UNAUTHORIZED);
    let admin = http.get(format!("{url}/admin/channels")).bearer_auth(ADMIN).send();
    assert_eq!(admin.await.expect("admin").status(), reqwest::StatusCode::OK);

    // A gasless open through the node's relay.
    let key = env.gasless_key(100 * PRICE).await;
    let limits = Limits::from_units(u128::from(10 * PRICE), u128::from(100 * PRICE), u128::from(100 * PRICE));
    let client = Client::builder(key).rpc(env.anvil.endpoint()).limits(limits).build().await.expect("client");
    let offer = client.offer_for(&weather).await.expect("an offer");
    client
        .open_gasless(&offer, U256::from(10 * PRICE), GaslessKind::Permit, &Relayer::Node(url.into()), None)
        .await
        .expect("relayed");
    let malformed = http.post(format!("{url}{OPEN_PATH}")).body("{}").send().await.expect("open");
    assert_eq!(malformed.status(), reqwest::StatusCode::BAD_REQUEST);

    // A cooperative close, signed by the provider key, then a forced settlement round.
    let body =
        CloseRequestBody::sign(&env.domain(), &payer.key, id, x402_node::unix_now() + 600).expect("signs");
    let close = http.post(format!("{url}{CLOSE_PATH}")).json(&body).send().await.expect("close");
    assert_eq!(close.status(), reqwest::StatusCode::OK);
    let settled = http.post(format!("{url}/admin/settle?force=true")).bearer_auth(ADMIN).send();
    assert_eq!(settled.await.expect("settle").status(), reqwest::StatusCode::OK);
}
