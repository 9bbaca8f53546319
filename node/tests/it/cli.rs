//! The `x402-node` binary as a process: help, configuration errors, effective configuration.

use std::process::Command;

fn node() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_x402-node"));
    // Keep the environment from leaking settings into these tests.
    for var in [
        "X402_CONFIG",
        "X402_CONTRACT",
        "X402_ADMIN_TOKEN",
        "X402_PROVIDER_KEY",
        "X402_LISTEN",
        "X402_WATCHER_KEY",
        "X402_WATCHER_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

#[test]
fn help_documents_every_option_with_defaults() {
    let out = node().arg("--help").output().expect("runs");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).expect("utf-8");
    for flag in [
        "--config",
        "--listen",
        "--upstream",
        "--rpc-url",
        "--contract",
        "--asset",
        "--data-dir",
        "--min-challenge-period",
        "--admin-token",
        "--provider-key-file",
    ] {
        assert!(help.contains(flag), "--help lists {flag}:\n{help}");
    }
    for default in ["127.0.0.1:8402", "http://127.0.0.1:8080", "http://127.0.0.1:8545", "3600", "X402_LISTEN"]
    {
        assert!(help.contains(default), "--help shows {default}");
    }
}

/// Each command's help lists its own flags, with the defaults that apply to it.
#[test]
fn subcommand_help_lists_only_its_own_flags() {
    let help = |command: &str| {
        let out = node().args([command, "--help"]).output().expect("runs");
        assert!(out.status.success());
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let watch = help("watch");
    for own in [
        "--listen",
        "--data-dir",
        "--rpc-url",
        "--contract",
        "--token",
        "--key-file",
        "127.0.0.1:8403",
        "x402-watcher",
    ] {
        assert!(watch.contains(own), "watch --help lists {own}:\n{watch}");
    }
    for foreign in ["--upstream", "--asset", "--admin-token", "--provider-key-file", "8402", "x402-data"] {
        assert!(!watch.contains(foreign), "watch --help does not list {foreign}:\n{watch}");
    }
    let settle = help("settle");
    for own in ["--force", "--contract", "--rpc-url", "--provider-key-file", "--data-dir"] {
        assert!(settle.contains(own), "settle --help lists {own}:\n{settle}");
    }
    for foreign in ["--listen", "--upstream", "--admin-token", "--token"] {
        assert!(!settle.contains(foreign), "settle --help does not list {foreign}:\n{settle}");
    }
}

#[test]
fn config_prints_effective_settings_with_overrides() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "admin_token = \"0123456789abcdef-secret\"\n[[routes]]\npath = \"/a\"\nprice = \"5\"\n\
         [[watchers]]\nurl = \"http://w:8403\"\ntoken = \"watcher-token-secret-1234\"\n",
    )
    .expect("writes");
    let out = node()
        .args(["--config", file.to_str().expect("utf-8"), "config"])
        .args(["--contract", "0x5FbDB2315678afecb367f032d93F642f64180aa3"])
        .env("X402_UPSTREAM", "http://api.internal:9000")
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(text.contains("upstream = \"http://api.internal:9000\""), "{text}");
    assert!(text.contains("path = \"/a\""), "{text}");
    assert!(!text.contains("secret"), "the admin token must not be printed: {text}");
}

#[test]
fn bad_configuration_fails_with_a_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "listen = 5\n").expect("writes");
    let key_file = dir.path().join("watcher.key");
    std::fs::write(
        &key_file,
        alloy::hex::encode(alloy::signers::local::PrivateKeySigner::random().to_bytes()),
    )
    .expect("writes");
    let key_file = key_file.to_str().expect("utf-8");
    let contract = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        // An empty admin or watcher token is refused, not an open endpoint.
        (vec!["--contract", contract, "--admin-token", "", "run"], "admin_token: a bearer token needs"),
        (
            vec!["watch", "--contract", contract, "--token", "", "--key-file", key_file],
            "a bearer token needs",
        ),
        (vec!["--config", file.to_str().expect("utf-8")], "invalid config"),
        (vec!["--config", "/nonexistent/x402.toml"], "cannot read config"),
        // No contract configured.
        (vec!["run"], "chain.contract is required"),
        (vec!["settle"], "chain.contract is required"),
        (vec!["watch", "--contract", contract, "--token", "0123456789abcdef"], "the watcher needs a key"),
        // The flags before `watch` apply to it.
        (vec!["--contract", contract, "watch", "--token", "0123456789abcdef"], "the watcher needs a key"),
        (
            vec!["watch", "--token", "0123456789abcdef", "--key-file", key_file],
            "contract address is required",
        ),
        // `watch --config` names the watcher's own file, which refuses the gateway's keys.
        (vec!["watch", "--config", file.to_str().expect("utf-8")], "invalid configuration file"),
        // Settling needs the key.
        (
            vec!["--contract", "0x5FbDB2315678afecb367f032d93F642f64180aa3", "settle"],
            "settling needs the provider's key",
        ),
    ];
    for (args, expected) in cases {
        let out = node().args(&args).output().expect("runs");
        assert!(!out.status.success(), "{args:?} must fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        // A message for people: no source locations, no colour codes in a pipe.
        assert!(!stderr.contains("Location:") && !stderr.contains('\u{1b}'), "{args:?}: {stderr}");
    }
}

/// `x402-node config` refuses what `run` would refuse: a route table that cannot be built, a
/// bad CORS origin, a missing contract.
#[test]
fn config_validates_like_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let contract = "chain.contract = \"0x5FbDB2315678afecb367f032d93F642f64180aa3\"\n";
    let route = |path: &str, methods: &str| {
        format!("[[routes]]\npath = \"{path}\"\nmethods = [{methods}]\nprice = \"5\"\n")
    };
    for (name, text, ok) in [
        (
            "patterns",
            format!("{contract}{}{}", route("/items/{id}", "\"GET\""), route("/files/{*p}", "")),
            true,
        ),
        ("no contract", route("/a", ""), false),
        (
            "overlap",
            format!("{contract}{}{}", route("/items/{id}", "\"GET\""), route("/items/{n}", "\"get\"")),
            false,
        ),
        ("reserved", format!("{contract}{}", route("/admin/x", "")), false),
        ("bad pattern", format!("{contract}{}", route("/a/{*p}/b", "")), false),
        ("bad method", format!("{contract}{}", route("/a", "\"G T\"")), false),
        ("bad origin", format!("{contract}[cors]\nallowed_origins = [\"app.example\"]\n"), false),
        ("origin", format!("{contract}[cors]\nallowed_origins = [\"https://app.example\"]\n"), true),
    ] {
        let file = dir.path().join("node.toml");
        std::fs::write(&file, text).expect("writes");
        let out = node().args(["--config", file.to_str().expect("utf-8"), "config"]).output().expect("runs");
        assert_eq!(out.status.success(), ok, "{name}: {}", String::from_utf8_lossy(&out.stderr));
        if !ok {
            assert!(String::from_utf8_lossy(&out.stderr).contains("invalid config"), "{name}");
        }
    }
}
