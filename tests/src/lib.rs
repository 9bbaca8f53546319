//! Helpers of the end-to-end tests: anvil from the project's npm-installed Foundry, contract
//! deployment from forge's artifacts, a small upstream API. They are `x402-devnet`'s (which
//! users' integration tests use too), with the signatures the tests were written against:
//! panicking where a test could not go on anyway.

pub mod harness;

use std::{net::SocketAddr, path::PathBuf};

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
