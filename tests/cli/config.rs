//! `x402 config` shows the effective settings: a flag beats its environment variable, which
//! beats the file, which beats the defaults; the state directory defaults to `$HOME/.x402`.

use crate::support::{Cli, write};

#[tokio::test]
async fn flags_beat_the_environment_which_beats_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "x402.toml",
        "rpc_url = \"http://file.example:8545\"\nconfirmations = 3\n[limits]\nmax_price = 7\nmax_deposit = \"123\"\n",
    );
    let mut cli = Cli::with_rpc("http://unused:1");
    cli.unset("X402_RPC_URL");
    cli.unset("X402_STATE_DIR");
    cli.set("X402_CONFIG", &file);

    let show = |c: &serde_json::Value| {
        (
            c["rpc_url"].as_str().unwrap().to_owned(),
            c["limits"]["max_price"].as_str().unwrap().to_owned(),
            c["limits"]["max_deposit"].as_str().unwrap().to_owned(),
            c["limits"]["max_total_deposit"].as_str().unwrap().to_owned(),
            c["confirmations"].as_u64().unwrap(),
        )
    };
    let file_only = cli.run(&["config", "--json"]).await.success().json();
    assert_eq!(
        show(&file_only),
        ("http://file.example:8545".into(), "7".into(), "123".into(), "5000000".into(), 3)
    );
    let home = cli.home.path().join(".x402").display().to_string();
    assert_eq!(file_only["state_dir"].as_str(), Some(home.as_str()), "the default state directory");

    cli.set("X402_MAX_PRICE", "8");
    cli.set("X402_STATE_DIR", "/tmp/x402-state");
    let env = cli.run(&["config", "--json"]).await.success().json();
    assert_eq!(show(&env).1, "8");
    assert_eq!(env["state_dir"].as_str(), Some("/tmp/x402-state"));

    let flag = cli
        .run(&["config", "--json", "--max-price", "9", "--rpc-url", "http://flag:1"])
        .await
        .success()
        .json();
    assert_eq!(show(&flag), ("http://flag:1".into(), "9".into(), "123".into(), "5000000".into(), 3));

    // The text form is TOML that reads back as the same configuration.
    let toml = cli.run(&["config"]).await.success().stdout;
    let again = write(dir.path(), "again.toml", &toml);
    cli.unset("X402_MAX_PRICE");
    let reread = cli.run(&["config", "--json", "--config", &again]).await.success().json();
    assert_eq!(reread, env);

    // A malformed variable is a usage error naming it.
    cli.set("X402_MAX_PRICE", "ten");
    cli.run(&["config"]).await.failure(2, "--max-price");
}
