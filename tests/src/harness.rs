//! A deployed contract, funded payers and the `x402-node` gateway, for the end-to-end tests.
//!
//! The generic parts (anvil, deployment, funding, the gateway and the watcher) are
//! `x402-devnet`'s; what is here is the tests' own: their account conventions, raw voucher
//! signing and payment, and panicking signatures.

use std::{net::SocketAddr, path::Path};

use alloy::{
    node_bindings::AnvilInstance,
    primitives::{Address, B256, U256},
    providers::DynProvider,
    signers::local::PrivateKeySigner,
};
use x402_devnet::{Devnet, chain};
pub use x402_devnet::{ITestStablecoin, PRICE};
use x402_node::{config::Config, watcher::WatcherConfig};
use x402_protocol::{
    ChannelDomain, SignedVoucher, Voucher,
    bindings::IPaymentChannel,
    watch::{WATCH_PATH, WatchOutcome, WatchRequest, WatchResponse, WatchedChannel, WatchedVoucher},
    wire::{self, PaymentPayload, PaymentRequired, PaymentRequirements},
};

use crate::{account, provider};

/// The admin token of the gateway configurations below.
pub const ADMIN: &str = x402_devnet::ADMIN_TOKEN;

/// Anvil with `PaymentChannel` and the test stablecoin deployed; anvil account 0 is the
/// provider. Nothing is minted: every balance is what a test gave.
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

/// 1 ETH, in wei.
const ONE_ETH: u128 = 10u128.pow(18);

impl Env {
    /// Starts anvil and deploys.
    pub async fn new() -> Self {
        let devnet = Devnet::builder().funds(U256::ZERO).start().await.unwrap_or_else(|e| panic!("{e}"));
        let Devnet { anvil, provider_key, chain, contract, token } = devnet;
        Self { anvil, provider_key, node_chain: chain, contract, usd: token }
    }

    /// The voucher domain.
    pub fn domain(&self) -> ChannelDomain {
        ChannelDomain::new(self.anvil.chain_id(), self.contract)
    }

    /// The token balance of `who`.
    pub async fn balance(&self, who: Address) -> U256 {
        chain::token_balance(&self.node_chain, self.usd, who).await.expect("balanceOf")
    }

    /// The on-chain state of a channel.
    pub async fn channel(&self, id: B256) -> IPaymentChannel::Channel {
        chain::channel(&self.node_chain, self.contract, id).await.expect("getChannel")
    }

    /// The parameters of a channel, from its `ChannelOpened` log (checked against its id), as
    /// the node reads them.
    pub async fn params(&self, id: B256) -> IPaymentChannel::ChannelParams {
        x402_node::chain::RpcChain::new(self.node_chain.clone(), self.contract)
            .params(id)
            .await
            .expect("eth_getLogs")
            .expect("the channel was opened")
    }

    /// A payer with `funds` of the stablecoin, approved for the contract.
    pub async fn payer(&self, key: PrivateKeySigner, funds: u64) -> Payer {
        let chain = provider(&self.anvil, key.clone());
        chain::mint(&chain, self.usd, key.address(), U256::from(funds)).await.expect("anvil call succeeds");
        chain::approve(&chain, self.usd, self.contract, U256::MAX).await.expect("anvil call succeeds");
        Payer {
            key,
            chain,
            contract: self.contract,
            usd: self.usd,
            domain: self.domain(),
            opened: Default::default(),
        }
    }

    /// A funded payer from a fresh key (given ETH for gas by anvil account 1).
    pub async fn fresh_payer(&self, funds: u64) -> Payer {
        let key = self.fresh_key(0).await;
        self.payer(key, funds).await
    }

    /// A fresh key with 1 ETH for gas (from anvil account 1) and `funds` of the stablecoin,
    /// approved for nothing.
    pub async fn fresh_key(&self, funds: u64) -> PrivateKeySigner {
        let key = PrivateKeySigner::random();
        let bank = provider(&self.anvil, account(&self.anvil, 1));
        chain::send_eth(&bank, key.address(), U256::from(ONE_ETH)).await.expect("anvil call succeeds");
        if funds > 0 {
            chain::mint(&bank, self.usd, key.address(), U256::from(funds))
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
        chain::mint(&bank, self.usd, key.address(), U256::from(funds)).await.expect("anvil call succeeds");
        key
    }

    /// Turns on the gasless-open relay of `config`, paying gas from anvil account 2 (its key in
    /// a file under `dir`).
    pub fn with_relay(&self, mut config: Config, dir: &Path) -> Config {
        let path = x402_devnet::write_key(dir, "relay.key", &account(&self.anvil, 2)).expect("writes key");
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
    pub fn with_provider_key(&self, config: Config, dir: &Path) -> Config {
        x402_devnet::with_provider_key(config, &self.provider_key, dir).expect("writes key")
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
    opened: std::sync::Mutex<std::collections::HashMap<B256, IPaymentChannel::ChannelParams>>,
}

impl Payer {
    /// The parameters of a channel this payer opened (every call about it passes them).
    pub fn params(&self, id: B256) -> IPaymentChannel::ChannelParams {
        self.opened.lock().expect("not poisoned").get(&id).cloned().expect("a channel this payer opened")
    }

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
        let params = IPaymentChannel::ChannelParams {
            payer: self.address(),
            payee,
            token: self.usd,
            signer: Address::ZERO,
            challengePeriod: period,
            salt: B256::repeat_byte(salt),
        };
        let channels = self.channels();
        let id = channels.computeChannelId(params.clone()).call().await.expect("anvil call succeeds");
        assert_eq!(id, params.channel_id(self.domain.chain_id(), self.contract), "the ids agree");
        self.opened.lock().expect("not poisoned").insert(id, params.clone());
        let receipt = channels
            .open(params, U256::from(deposit))
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
    inner: x402_devnet::Gateway,
    /// Its base URL.
    pub url: String,
    /// Its configuration, to restart it.
    pub config: Config,
}

impl Gateway {
    /// Starts the gateway and waits until it answers.
    pub async fn start(config: Config) -> Self {
        let inner = x402_devnet::Gateway::start(config).await.unwrap_or_else(|e| panic!("{e}"));
        Self { url: inner.url().into(), config: inner.config().clone(), inner }
    }

    /// Runs `x402-node run` from the binary `bin` (its `node.toml` and `node.log` in `dir`) and
    /// waits until it answers.
    pub async fn spawn(bin: &Path, config: Config, dir: &Path) -> Self {
        let inner = x402_devnet::Gateway::spawn(bin, config, dir).await.unwrap_or_else(|e| panic!("{e}"));
        Self { url: inner.url().into(), config: inner.config().clone(), inner }
    }

    /// Stops the gateway and waits until its store is closed.
    pub async fn stop(self) {
        self.inner.stop().await.expect("gateway ran cleanly");
    }

    /// A counter or gauge from `/metrics` (0 if absent). (`_client` is the tests' own; the
    /// devnet gateway has one.)
    pub async fn metric(&self, _client: &reqwest::Client, name: &str) -> f64 {
        self.inner.metric(name).await.expect("metrics")
    }

    /// Waits until the event follower has processed block `block` as confirmed.
    pub async fn followed(&self, _client: &reqwest::Client, block: u64) {
        self.inner.followed(block).await.unwrap_or_else(|e| panic!("{e}"));
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
    x402_devnet::node_config(&anvil.endpoint(), contract, asset, payee, &format!("http://{upstream}"), data)
        .expect("a free port")
}

/// A watcher run by [`x402_node::watcher::run`], as the `x402-node watch` subcommand runs it.
#[derive(Debug)]
pub struct Watchtower {
    inner: x402_devnet::Watchtower,
    /// Its base URL.
    pub url: String,
}

impl Watchtower {
    /// Starts a watcher paying gas from `key` and waits until it answers.
    pub async fn start(config: WatcherConfig, key: PrivateKeySigner) -> Self {
        let inner = x402_devnet::Watchtower::start(config, key).await.unwrap_or_else(|e| panic!("{e}"));
        Self { url: inner.url().into(), inner }
    }

    /// Stops the watcher and waits until its store is closed.
    pub async fn stop(self) {
        self.inner.stop().await.expect("watcher ran cleanly");
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
        self.inner.channels(token).await.expect("listing")
    }
}

/// A free loopback address.
pub fn free_port() -> SocketAddr {
    x402_devnet::free_port().expect("a free port")
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
pub async fn eventually<F, Fut>(secs: u64, what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    x402_devnet::wait_for(secs, what, check).await.unwrap_or_else(|e| panic!("{e}"));
}
