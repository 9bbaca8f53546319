//! Keys from a keystore and session keys pay; no key or password is ever printed, not in
//! `--help`, not in trace logs.

use alloy::{primitives::U256, signers::local::PrivateKeySigner};
use x402_e2e::{
    harness::{Env, Gateway, PRICE},
    upstream,
};

use crate::support::{Cli, address, id, write};

const FUNDS: u64 = 1_000_000;
const PASSWORD: &str = "correct horse battery staple";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keystore_key_pays_and_a_wrong_password_is_refused() {
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(env.gateway_config(upstream().await, data.path())).await;
    let key = env.fresh_key(FUNDS).await;
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand08::thread_rng();
    PrivateKeySigner::encrypt_keystore(dir.path(), &mut rng, key.to_bytes(), PASSWORD, Some("payer.json"))
        .unwrap();
    let keystore = dir.path().join("payer.json").display().to_string();
    let url = format!("{}/weather", gw.url);

    let mut cli = Cli::new(&env);
    cli.secret(&format!("0x{}", alloy::hex::encode(key.to_bytes())));
    cli.set_secret("X402_KEYSTORE_PASSWORD", PASSWORD);
    let run = cli.run(&["get", &url, "--keystore", &keystore, "--json"]).await.success();
    assert_eq!(run.json()["payment"]["nonce"].as_u64(), Some(1));
    let listed = cli.run(&["channels", "--json"]).await.success().json();
    assert_eq!(address(&listed["channels"][0]["payer"]), key.address(), "paid from the keystore's account");
    assert_eq!(env.balance(key.address()).await, U256::from(FUNDS - 100 * PRICE), "deposit of 100 requests");

    // The password from a file instead.
    cli.unset("X402_KEYSTORE_PASSWORD");
    let password_file = write(dir.path(), "password", &format!("{PASSWORD}\n"));
    let run =
        cli.run(&["get", &url, "--keystore", &keystore, "--password-file", &password_file]).await.success();
    assert!(run.stderr.contains("nonce 2"), "{run}");

    // Wrong or missing password.
    let mut wrong = Cli::new(&env);
    wrong.set_secret("X402_KEYSTORE_PASSWORD", "not the password");
    wrong.run(&["get", &url, "--keystore", &keystore]).await.failure(2, "wrong password for the keystore");
    Cli::new(&env).run(&["get", &url, "--keystore", &keystore]).await.failure(2, "X402_KEYSTORE_PASSWORD");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_key_signs_the_vouchers() {
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(env.gateway_config(upstream().await, data.path())).await;
    let key = env.fresh_key(FUNDS).await;
    let session = PrivateKeySigner::random();
    let url = format!("{}/weather", gw.url);

    let mut cli = Cli::new(&env).key(&key);
    cli.set_secret("X402_SESSION_KEY", &format!("0x{}", alloy::hex::encode(session.to_bytes())));
    for n in 1..=2 {
        let run = cli.run(&["get", &url]).await.success();
        assert!(run.stderr.contains(&format!("nonce {n} charged {PRICE}")), "{run}");
    }
    let ch = &cli.run(&["channels", "--json"]).await.success().json()["channels"][0];
    assert_eq!((address(&ch["signer"]), address(&ch["payer"])), (session.address(), key.address()));
    assert_eq!(
        env.params(id(&ch["id"])).await.signer,
        session.address(),
        "the channel names the session key"
    );

    // From a file, the same.
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "session.key", &alloy::hex::encode(session.to_bytes()));
    cli.unset("X402_SESSION_KEY");
    let run = cli.run(&["get", &url, "--session-key-file", &file]).await.success();
    assert!(run.stderr.contains("nonce 3"), "the same channel: {run}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_never_appears_in_help_logs_or_results() {
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(env.gateway_config(upstream().await, data.path())).await;
    let key = env.fresh_key(FUNDS).await;
    let mut cli = Cli::new(&env).key(&key);
    cli.set_secret(
        "X402_SESSION_KEY",
        &format!("0x{}", alloy::hex::encode(PrivateKeySigner::random().to_bytes())),
    );
    cli.set_secret("X402_KEYSTORE_PASSWORD", PASSWORD);
    let url = format!("{}/weather", gw.url);

    // `Cli::run` fails the test if any of the secrets above is printed.
    for args in [
        vec!["--help"],
        vec!["-h"],
        vec!["get", "--help"],
        vec!["open", "--help"],
        vec!["help", "request"],
        vec!["config"],
        vec!["config", "--json"],
    ] {
        let run = cli.run(&args).await.success();
        assert!(!run.stdout.is_empty(), "{run}");
    }
    let help = cli.run(&["--help"]).await.stdout;
    assert!(help.contains("X402_PRIVATE_KEY") && help.contains("Exit codes:"), "{help}");
    let run = cli.run(&["-vvv", "get", &url]).await.success();
    assert!(run.stderr.contains("TRACE") || run.stderr.contains("DEBUG"), "trace logs were on: {run}");
    cli.run(&["open", &url, "--json", "-vv"]).await.success();
    cli.run(&["channels", "-v"]).await.success();
    cli.run(&["get", &url, "--max-price", "1", "-vvv"]).await.failure(3, "above the limit");
    gw.stop().await;
}
