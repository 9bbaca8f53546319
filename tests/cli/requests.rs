//! `x402 request` and `get` are curl-like: -X, -H, -d / --data @file reach the server as
//! given, an unpriced URL is not paid, and --fail turns an HTTP error status into exit code 1.

use std::net::SocketAddr;

use axum::{Router, body::Bytes, http::HeaderMap, routing::any};
use x402_e2e::{
    harness::{Env, Gateway, PRICE},
    upstream,
};

use crate::support::{Cli, write};

/// Answers every request with what it received, as JSON.
async fn echo_server() -> SocketAddr {
    let app = Router::new().route(
        "/echo",
        any(|method: axum::http::Method, headers: HeaderMap, body: Bytes| async move {
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            axum::Json(serde_json::json!({
                "method": method.as_str(),
                "body": String::from_utf8_lossy(&body),
                "contentType": header("content-type"),
                "test": header("x-test"),
                "tests": headers.get_all("x-multi").iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>(),
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_send_method_headers_and_body_as_given() {
    let env = Env::new().await;
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(env.gateway_config(upstream().await, data.path())).await;
    let echo = format!("http://{}/echo", echo_server().await);
    let key = env.fresh_key(1_000_000).await;
    let cli = Cli::new(&env).key(&key);
    let dir = tempfile::tempdir().unwrap();

    let run = cli
        .run(&[
            "request",
            &echo,
            "-X",
            "put",
            "-H",
            "X-Test: yes",
            "-H",
            "Content-Type: text/plain",
            "-d",
            "hello",
        ])
        .await
        .success();
    let got: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        (got["method"].as_str(), got["body"].as_str(), got["contentType"].as_str(), got["test"].as_str()),
        (Some("PUT"), Some("hello"), Some("text/plain"), Some("yes"))
    );
    assert!(!run.stderr.contains("paid:"), "an unpriced URL is not paid: {run}");

    // --data @file, POST by default; a repeated header is sent twice.
    let file = write(dir.path(), "body.json", "{\"q\": 1}\n");
    let run = cli
        .run(&["request", &echo, "--data", &format!("@{file}"), "-H", "X-Multi: a", "-H", "X-Multi: b"])
        .await
        .success();
    let got: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!((got["method"].as_str(), got["body"].as_str()), (Some("POST"), Some("{\"q\": 1}\n")));
    assert_eq!(got["tests"], serde_json::json!(["a", "b"]));

    // A priced URL through `request` is paid like `get`.
    let weather = format!("{}/weather", gw.url);
    let run = cli.run(&["request", "-X", "GET", "-H", "Accept: application/json", &weather]).await.success();
    assert_eq!(run.stdout, r#"{"forecast":"sunny"}"#);
    assert!(run.stderr.contains(&format!("nonce 1 charged {PRICE} total {PRICE}")), "{run}");

    // An HTTP error status: printed and noted, exit 0; with --fail, exit 1 and no body.
    let missing = format!("{}/nope", gw.url);
    let run = cli.run(&["get", &missing]).await.success();
    assert!(run.stderr.contains("HTTP 404"), "{run}");
    let run = cli.run(&["get", &missing, "--fail"]).await.failure(1, "the server answered 404 Not Found");
    assert_eq!(run.stdout, "");
    let run = cli.run(&["get", &missing, "-f", "--json"]).await.failure(1, "404");
    assert_eq!(run.json()["error"]["code"].as_str(), Some("http_status"));
    gw.stop().await;
}
