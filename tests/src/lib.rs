//! Helpers of the end-to-end tests: anvil from the project's npm-installed Foundry, contract
//! deployment from forge's artifacts, a small upstream API.

pub mod cheats;
pub mod harness;

use std::{net::SocketAddr, path::PathBuf};

use alloy::{
    network::{EthereumWallet, TransactionBuilder},
    node_bindings::{Anvil, AnvilInstance},
    primitives::{Address, Bytes},
    providers::{DynProvider, Provider, ProviderBuilder},
    rpc::types::TransactionRequest,
    signers::local::PrivateKeySigner,
    sol_types::SolValue,
};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Starts anvil from `node_modules` (installed by `scripts/setup`).
pub fn anvil() -> AnvilInstance {
    let bin = root().join("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
    assert!(bin.exists(), "{} missing: run scripts/setup", bin.display());
    Anvil::new().path(bin).spawn()
}

/// Anvil's funded account `i` as a signer.
pub fn account(anvil: &AnvilInstance, i: usize) -> PrivateKeySigner {
    anvil.keys()[i].clone().into()
}

/// A provider that signs with `signer`.
pub fn provider(anvil: &AnvilInstance, signer: PrivateKeySigner) -> DynProvider {
    ProviderBuilder::new().wallet(EthereumWallet::from(signer)).connect_http(anvil.endpoint_url()).erased()
}

/// The creation bytecode of a contract from forge's `out/` (run `forge build` first).
pub fn creation_code(file: &str, contract: &str) -> Vec<u8> {
    let path = root().join(format!("out/{file}/{contract}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `forge build` (scripts/test does) first", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("artifact is JSON");
    alloy::hex::decode(json["bytecode"]["object"].as_str().expect("bytecode")).expect("hex")
}

/// Deploys `code` with ABI-encoded constructor `args`, returning the address.
pub async fn deploy(provider: &DynProvider, mut code: Vec<u8>, args: &[u8]) -> eyre::Result<Address> {
    code.extend_from_slice(args);
    let tx = TransactionRequest::default().with_deploy_code(Bytes::from(code));
    let receipt = provider.send_transaction(tx).await?.get_receipt().await?;
    receipt.contract_address.ok_or_else(|| eyre::eyre!("no contract created"))
}

/// Deploys `PaymentChannel` with a challenge period range of [1 hour, 30 days].
pub async fn deploy_channel(provider: &DynProvider) -> eyre::Result<Address> {
    deploy(
        provider,
        creation_code("PaymentChannel.sol", "PaymentChannel"),
        &(3600u32, 30 * 86_400u32).abi_encode_params(),
    )
    .await
}

/// Deploys the 6-decimals test stablecoin.
pub async fn deploy_stablecoin(provider: &DynProvider) -> eyre::Result<Address> {
    deploy(provider, creation_code("TestStablecoin.sol", "TestStablecoin"), &[]).await
}

/// Serves a small JSON API on a free loopback port: `/weather`, `/echo` and `/slow` (5 s).
pub async fn upstream() -> SocketAddr {
    use axum::{Router, routing::get};
    let app = Router::new()
        .route("/weather", get(|| async { axum::Json(serde_json::json!({"forecast": "sunny"})) }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                "too late"
            }),
        )
        .route(
            "/echo",
            get(|headers: axum::http::HeaderMap| async move {
                // Shows whether payment headers leaked to the upstream.
                format!("payment-header-seen={}", headers.contains_key("payment-signature"))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}
