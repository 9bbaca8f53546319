//! The client speaks HTTPS (rustls) to APIs, nodes and RPC endpoints: an `https` URL fails
//! only because nothing listens there, not because the scheme is unsupported.
#![allow(missing_docs, clippy::unwrap_used)]

#[tokio::test]
async fn https_urls_reach_the_network() {
    let err = reqwest::Client::new().get("https://127.0.0.1:9/").send().await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    let err = x402_client::ChainClient::connect(
        "https://127.0.0.1:9",
        alloy::signers::local::PrivateKeySigner::random(),
    )
    .await
    .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("cannot reach the RPC endpoint"), "{message}");
    assert!(!message.to_lowercase().contains("scheme"), "{message}");
}
