//! Helpers of the end-to-end tests: anvil from the project's npm-installed Foundry, contract
//! deployment from forge's artifacts, a small upstream API. They are `x402-devnet`'s (which
//! users' integration tests use too), with the signatures the tests were written against:
//! panicking where a test could not go on anyway.

pub mod harness;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::SystemTime,
};

use alloy::{node_bindings::AnvilInstance, primitives::Address, providers::DynProvider};
use x402_devnet::{Artifacts, CHALLENGE_PERIODS};
pub use x402_devnet::{
    chain::{account, deploy, provider},
    cheats,
};

/// The repository root.
pub fn root() -> PathBuf {
    x402_devnet::workspace_root()
}

/// Starts anvil from `node_modules` (installed by `scripts/setup`) on a free port.
pub fn anvil() -> AnvilInstance {
    x402_devnet::chain::spawn_anvil(None, None).unwrap_or_else(|e| panic!("{e}"))
}

/// The creation bytecode of a contract from forge's `out/` (run `forge build` first).
pub fn creation_code(file: &str, contract: &str) -> Vec<u8> {
    Artifacts::default().creation_code(file, contract).unwrap_or_else(|e| panic!("{e}"))
}

/// Deploys `PaymentChannel` with a challenge period range of [1 hour, 30 days].
pub async fn deploy_channel(provider: &DynProvider) -> x402_devnet::Result<Address> {
    Artifacts::default().deploy_channel(provider, CHALLENGE_PERIODS).await
}

/// Deploys the 6-decimals test stablecoin.
pub async fn deploy_stablecoin(provider: &DynProvider) -> x402_devnet::Result<Address> {
    Artifacts::default().deploy_stablecoin(provider).await
}

/// Serves a small JSON API on a free loopback port: `/weather`, `/echo` and `/slow` (5 s).
pub async fn upstream() -> SocketAddr {
    x402_devnet::sample_api().await.expect("binds")
}

/// The `x402-node` binary, built for the profile these tests were built with.
pub fn node_binary() -> PathBuf {
    binary("x402-node", "x402-node")
}

/// The `x402` command-line binary (the client's `cli` feature, on by default).
pub fn cli_binary() -> PathBuf {
    binary("x402-client", "x402")
}

/// The path of the binary `bin` of the workspace package `package` in the target directory of
/// this test executable, built first by `cargo build -p <package> --bin <bin>` if it is missing
/// or older than a Rust source of the workspace.
///
/// `CARGO_BIN_EXE_*` exists only in the binary's own package, and these tests are not in it (the
/// package would then need this crate as a dev-dependency, which depends on it: a cycle). Cargo
/// puts a test executable in `<target>/<profile>/deps/` and binaries in `<target>/<profile>/`.
/// `cargo test --workspace` builds both binaries before it runs a test, so there the build is
/// skipped (a `cargo build` would resolve other features than the test build did, and rebuild
/// the node for nothing); a run of `cargo test -p x402-e2e` alone after an edit builds them.
fn binary(package: &str, bin: &str) -> PathBuf {
    static CHECKED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} is not in <target>/<profile>/deps", exe.display()));
    let path = dir.join(format!("{bin}{}", std::env::consts::EXE_SUFFIX));
    let mut checked = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    if !checked.iter().any(|b| b == bin) {
        let built = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if built.is_none_or(|built| newest_source().is_some_and(|source| source > built)) {
            build(package, bin, dir);
        }
        checked.push(bin.to_owned());
    }
    assert!(path.is_file(), "{} is not a file after building it", path.display());
    path
}

/// The latest modification time of `Cargo.lock` and the Rust sources under the workspace
/// members' `src/` directories, except this crate's (no binary depends on it).
fn newest_source() -> Option<SystemTime> {
    fn walk(dir: &Path, newest: &mut Option<SystemTime>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, newest);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let modified = entry.metadata().and_then(|m| m.modified()).ok();
                *newest = (*newest).max(modified);
            }
        }
    }
    let root = root();
    let mut newest = std::fs::metadata(root.join("Cargo.lock")).and_then(|m| m.modified()).ok();
    let this = Path::new(env!("CARGO_MANIFEST_DIR"));
    for member in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        if member.path() != this {
            walk(&member.path().join("src"), &mut newest);
        }
    }
    newest
}

/// Runs `cargo build -p <package> --bin <bin>` for the profile whose output directory is
/// `profile_dir`.
fn build(package: &str, bin: &str, profile_dir: &Path) {
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(name) => name,
        None => panic!("{} has no profile name", profile_dir.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root())
        .args(["build", "--quiet", "--profile", profile, "-p", package, "--bin", bin])
        .status()
        .unwrap_or_else(|e| panic!("cargo build -p {package} runs: {e}"));
    assert!(status.success(), "cargo build -p {package} --bin {bin} failed: {status}");
}
