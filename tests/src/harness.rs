//! A deployed contract, funded payers and the `x402-node` gateway, for the end-to-end tests.

use std::{net::SocketAddr, path::Path, time::Duration};

use alloy::{
    node_bindings::AnvilInstance,
    primitives::{Address, B256, U256},
    providers::DynProvider,
    signers::local::PrivateKeySigner,
    sol,
};
use tokio::sync::oneshot;
use x402_node::{
    config::{Config, RouteConfig},
    watcher::WatcherConfig,
};
use x402_protocol::{
    ChannelDomain, SignedVoucher, Voucher,
    bindings::IPaymentChannel,
    watch::{
        CHANNELS_PATH, WATCH_PATH, WatchOutcome, WatchRequest, WatchResponse, WatchedChannel, WatchedVoucher,
    },
    wire::{self, PaymentPayload, PaymentRequired, PaymentRequirements},
};

use crate::{account, anvil, deploy_channel, deploy_stablecoin, provider};

sol! {
    /// The test stablecoin's functions the tests use.
    #[sol(rpc)]
    interface ITestStablecoin {
        function mint(address to, uint256 amount) external;
        function approve(address spender, uint256 amount) external returns (bool);
        function balanceOf(address who) external view returns (uint256);
    }
}

/// The price of `/weather` in the gateway configurations below.
pub const PRICE: u64 = 1_000;
/// The admin token of those configurations.
pub const ADMIN: &str = "test-admin-token-0123456789";

/// Anvil with `PaymentChannel` and the test stablecoin deployed; anvil account 0 is the
/// provider.
#[derive(Debug)]
pub struct Env {
    /// The chain.
    pub anvil: AnvilInstance,
    /// The provider's key (anvil account 0).
    pub provider_key: PrivateKeySigner,
    /// A provider signing as the provider.
    pub node_chain: DynProvider,
    /// The `PaymentChannel` contract.
    pub contract: Address,
    /// The test stablecoin.
    pub usd: Address,
}

impl Env {
    /// Starts anvil and deploys.
    pub async fn new() -> Self {
        let anvil = anvil();
        let provider_key = account(&anvil, 0);
        let node_chain = provider(&anvil, provider_key.clone());
        let contract = deploy_channel(&node_chain).await.expect("deploys channel");
        let usd = deploy_stablecoin(&node_chain).await.expect("deploys token");
        Self { anvil, provider_key, node_chain, contract, usd }
    }

    /// The voucher domain.
    pub fn domain(&self) -> ChannelDomain {
        ChannelDomain::new(self.anvil.chain_id(), self.contract)
    }

    /// The token balance of `who`.
    pub async fn balance(&self, who: Address) -> U256 {
        ITestStablecoin::new(self.usd, &self.node_chain).balanceOf(who).call().await.expect("balanceOf")
    }

    /// The on-chain state of a channel.
    pub async fn channel(&self, id: B256) -> IPaymentChannel::Channel {
        IPaymentChannel::new(self.contract, &self.node_chain).getChannel(id).call().await.expect("getChannel")
    }

    /// A payer with `funds` of the stablecoin, approved for the contract.
    pub async fn payer(&self, key: PrivateKeySigner, funds: u64) -> Payer {
        let chain = provider(&self.anvil, key.clone());
        let token = ITestStablecoin::new(self.usd, &chain);
        token
            .mint(key.address(), U256::from(funds))
            .send()
            .await
            .expect("anvil call succeeds")
            .get_receipt()
            .await
            .expect("anvil call succeeds");
        token
            .approve(self.contract, U256::MAX)
            .send()
            .await
            .expect("anvil call succeeds")
            .get_receipt()
            .await
            .expect("anvil call succeeds");
        Payer { key, chain, contract: self.contract, usd: self.usd, domain: self.domain() }
    }

    /// A funded payer from a fresh key (given ETH for gas by anvil account 1).
    pub async fn fresh_payer(&self, funds: u64) -> Payer {
        let key = self.fresh_key(0).await;
        self.payer(key, funds).await
    }

    /// A fresh key with 1 ETH for gas (from anvil account 1) and `funds` of the stablecoin,
    /// approved for nothing.
    pub async fn fresh_key(&self, funds: u64) -> PrivateKeySigner {
        use alloy::{network::TransactionBuilder, providers::Provider, rpc::types::TransactionRequest};
        let key = PrivateKeySigner::random();
        let bank = provider(&self.anvil, account(&self.anvil, 1));
        let tx = TransactionRequest::default().with_to(key.address()).with_value(U256::from(10u128.pow(18)));
        bank.send_transaction(tx)
            .await
            .expect("anvil call succeeds")
            .get_receipt()
            .await
            .expect("anvil call succeeds");
        if funds > 0 {
            ITestStablecoin::new(self.usd, &bank)
                .mint(key.address(), U256::from(funds))
                .send()
                .await
                .expect("anvil call succeeds")
                .get_receipt()
                .await
                .expect("anvil call succeeds");
        }
        key
    }

    /// A fresh key holding `funds` of the stablecoin and no native gas at all (a payer that can
    /// only open gaslessly).
    pub async fn gasless_key(&self, funds: u64) -> PrivateKeySigner {
        let key = PrivateKeySigner::random();
        let bank = provider(&self.anvil, account(&self.anvil, 1));
        ITestStablecoin::new(self.usd, &bank)
            .mint(key.address(), U256::from(funds))
            .send()
            .await
            .expect("anvil call succeeds")
            .get_receipt()
            .await
            .expect("anvil call succeeds");
        key
    }

    /// Turns on the gasless-open relay of `config`, paying gas from anvil account 2 (its key in
    /// a file under `dir`).
    pub fn with_relay(&self, mut config: Config, dir: &Path) -> Config {
        let path = dir.join("relay.key");
        std::fs::write(&path, alloy::hex::encode(account(&self.anvil, 2).to_bytes())).expect("writes key");
        config.relay.enabled = true;
        config.relay.key_file = Some(path);
        config
    }

    /// A gateway configuration charging `PRICE` in the stablecoin on `/weather`, following the
    /// chain with no confirmation depth, polling every 100 ms, not settling.
    pub fn gateway_config(&self, upstream: SocketAddr, data: &Path) -> Config {
        gateway_config(&self.anvil, self.contract, self.usd, self.provider_key.address(), upstream, data)
    }

    /// Gives `config` the provider's key (in a file under `dir`) and turns settlement on.
    pub fn with_provider_key(&self, mut config: Config, dir: &Path) -> Config {
        let path = dir.join("provider.key");
        std::fs::write(&path, alloy::hex::encode(self.provider_key.to_bytes())).expect("writes key");
        config.provider.key_file = Some(path);
        config.settlement.enabled = true;
        config
    }
}

/// A payer: its key, a provider signing as it, and helpers.
#[derive(Debug)]
pub struct Payer {
    /// Its key (signs vouchers too).
    pub key: PrivateKeySigner,
    /// A provider signing as the payer.
    pub chain: DynProvider,
    contract: Address,
    usd: Address,
    domain: ChannelDomain,
}

impl Payer {
    /// The payer's address.
    pub fn address(&self) -> Address {
        self.key.address()
    }

    /// The contract, as the payer.
    pub fn channels(&self) -> IPaymentChannel::IPaymentChannelInstance<&DynProvider> {
        IPaymentChannel::new(self.contract, &self.chain)
    }

    /// Opens a stablecoin channel to `payee` with a challenge period of one day.
    pub async fn open(&self, payee: Address, deposit: u64, salt: u8) -> B256 {
        self.open_with_period(payee, deposit, salt, 86_400).await
    }

    /// Opens a stablecoin channel to `payee` with a challenge period of `period` seconds.
    pub async fn open_with_period(&self, payee: Address, deposit: u64, salt: u8, period: u32) -> B256 {
        let params = IPaymentChannel::OpenParams {
            payee,
            token: self.usd,
            signer: Address::ZERO,
            challengePeriod: period,
            deposit: U256::from(deposit),
            salt: B256::repeat_byte(salt),
        };
        let channels = self.channels();
        let id = channels
            .computeChannelId(self.address(), params.clone())
            .call()
            .await
            .expect("anvil call succeeds");
        let receipt = channels
            .open(params)
            .send()
            .await
            .expect("anvil call succeeds")
            .get_receipt()
            .await
            .expect("anvil call succeeds");
        assert!(receipt.status(), "channel opened");
        id
    }

    /// Signs a voucher.
    pub fn sign(&self, id: B256, nonce: u64, amount: u64) -> SignedVoucher {
        self.domain
            .sign(&self.key, Voucher { channelId: id, nonce, cumulativeAmount: U256::from(amount) })
            .expect("signs")
    }
}

/// The gateway, run in-process.
#[derive(Debug)]
pub struct Gateway {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<eyre::Result<()>>,
    /// Its base URL.
    pub url: String,
    /// Its configuration, to restart it.
    pub config: Config,
}

impl Gateway {
    /// Starts the gateway and waits until it answers.
    pub async fn start(config: Config) -> Self {
        let url = format!("http://{}", config.listen);
        let (stop, stopped) = oneshot::channel::<()>();
        let mut task = tokio::spawn(x402_node::gateway::run(config.clone(), async move {
            let _ = stopped.await;
        }));
        wait_until_serving(&url, "gateway", &mut task).await;
        Self { stop: Some(stop), task, url, config }
    }

    /// Stops the gateway and waits until its store is closed.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.expect("joins").expect("gateway ran cleanly");
    }

    /// The payment terms of `/weather`.
    pub async fn terms(&self, client: &reqwest::Client) -> PaymentRequirements {
        let resp = client.get(format!("{}/weather", self.url)).send().await.expect("request");
        required(&resp).accepts.remove(0)
    }

    /// `GET /weather` paid with `voucher`.
    pub async fn pay(
        &self,
        client: &reqwest::Client,
        terms: &PaymentRequirements,
        voucher: &SignedVoucher,
    ) -> reqwest::Response {
        let header = wire::encode_header(&PaymentPayload::new(terms, voucher));
        paid(client, &format!("{}/weather", self.url), header).await
    }
}

/// A gateway configuration for `contract` on `anvil`, charging `PRICE` in `asset` on
/// `/weather` for `payee`, following the chain with no confirmation depth, polling every
/// 100 ms, not settling.
pub fn gateway_config(
    anvil: &AnvilInstance,
    contract: Address,
    asset: Address,
    payee: Address,
    upstream: SocketAddr,
    data: &Path,
) -> Config {
    let mut config = Config {
        listen: free_port(),
        upstream: format!("http://{upstream}"),
        data_dir: data.into(),
        ..Config::default()
    };
    config.admin_token = Some(ADMIN.into());
    config.chain.rpc_url = anvil.endpoint();
    config.chain.contract = Some(contract);
    config.chain.confirmations = 0;
    config.chain.poll_interval_ms = 100;
    config.payment.asset = asset;
    config.provider.address = Some(payee);
    config.provider.key_env = "X402_E2E_UNSET".into();
    config.settlement.enabled = false;
    config.routes.push(RouteConfig {
        path: "/weather".into(),
        price: U256::from(PRICE),
        pricing: Default::default(),
        description: Some("Current weather".into()),
        mime_type: Some("application/json".into()),
    });
    config
}

/// A watcher run by [`x402_node::watcher::run`], as the `x402-node watch` subcommand runs it.
#[derive(Debug)]
pub struct Watchtower {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<eyre::Result<()>>,
    /// Its base URL.
    pub url: String,
}

impl Watchtower {
    /// Starts a watcher paying gas from `key` and waits until it answers.
    pub async fn start(config: WatcherConfig, key: PrivateKeySigner) -> Self {
        let url = format!("http://{}", config.listen);
        let (stop, stopped) = oneshot::channel::<()>();
        let mut task = tokio::spawn(x402_node::watcher::run(config, key, async move {
            let _ = stopped.await;
        }));
        wait_until_serving(&url, "watcher", &mut task).await;
        Self { stop: Some(stop), task, url }
    }

    /// Stops the watcher and waits until its store is closed.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.expect("joins").expect("watcher ran cleanly");
    }

    /// Pushes `vouchers`, with the bearer `token` if any.
    pub async fn push(&self, token: Option<&str>, vouchers: Vec<WatchedVoucher>) -> reqwest::Response {
        let mut req = reqwest::Client::new().post(format!("{}{WATCH_PATH}", self.url));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.json(&WatchRequest { vouchers }).send().await.expect("push")
    }

    /// Pushes `vouchers` with `token`, expecting 200, and returns the outcomes.
    pub async fn push_ok(&self, token: &str, vouchers: Vec<WatchedVoucher>) -> Vec<WatchOutcome> {
        let resp = self.push(Some(token), vouchers).await;
        assert_eq!(resp.status(), reqwest::StatusCode::OK);
        let answer: WatchResponse = resp.json().await.expect("a WatchResponse");
        answer.results.into_iter().map(|r| r.outcome).collect()
    }

    /// The watched channels, listed with `token`.
    pub async fn channels(&self, token: &str) -> Vec<WatchedChannel> {
        let resp = reqwest::Client::new()
            .get(format!("{}{CHANNELS_PATH}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .expect("listing");
        assert_eq!(resp.status(), reqwest::StatusCode::OK);
        resp.json().await.expect("a channel list")
    }
}

/// Waits until the server run by `task` answers `GET {url}/healthz`, for at most 10 s;
/// panics with its error if it exits first.
pub async fn wait_until_serving(url: &str, what: &str, task: &mut tokio::task::JoinHandle<eyre::Result<()>>) {
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client.get(format!("{url}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        if task.is_finished() {
            panic!("{what} exited: {:?}", task.await);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not start within 10 s");
}

/// A free loopback address.
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    l.local_addr().expect("addr")
}

/// `GET url` with a `PAYMENT-SIGNATURE` header.
pub async fn paid(client: &reqwest::Client, url: &str, header: String) -> reqwest::Response {
    client.get(url).header(wire::PAYMENT_SIGNATURE, header).send().await.expect("request")
}

/// The `PAYMENT-REQUIRED` header of a 402.
pub fn required(resp: &reqwest::Response) -> PaymentRequired {
    wire::decode_header(resp.headers()[wire::PAYMENT_REQUIRED].as_bytes()).expect("PAYMENT-REQUIRED")
}

/// Polls `check` every 50 ms until it holds, for at most `secs` seconds.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {secs} s waiting for: {what}");
}

impl Gateway {
    /// A counter or gauge from `/metrics` (0 if absent).
    pub async fn metric(&self, client: &reqwest::Client, name: &str) -> f64 {
        let text = client
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until the event follower has processed block `block` as confirmed.
    pub async fn followed(&self, client: &reqwest::Client, block: u64) {
        eventually(20, "the follower to reach the block", || async {
            self.metric(client, "x402_follower_block").await >= block as f64
        })
        .await;
    }
}
