//! [`Devnet`]: anvil with `PaymentChannel` and the test stablecoin deployed and accounts funded.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use alloy::{
    node_bindings::AnvilInstance,
    primitives::{Address, B256, U256},
    providers::DynProvider,
    signers::local::PrivateKeySigner,
};
use x402_client::{Client, ClientBuilder, Limits, Settings};
use x402_node::{config::Config, watcher::WatcherConfig};
use x402_protocol::{ChannelDomain, bindings::IPaymentChannel};

use crate::{
    Error, Result,
    artifacts::{Artifacts, CHALLENGE_PERIODS},
    chain, cheats,
    services::{Gateway, node_config, with_provider_key},
};

/// One unit of the test stablecoin (it has 6 decimals): `1_000_000` base units.
pub const TOKEN_UNIT: u64 = 1_000_000;

/// What [`DevnetBuilder::funds`] mints to each of anvil's accounts but the provider's by
/// default: 10,000 units of the test stablecoin.
pub const DEFAULT_FUNDS: u64 = 10_000 * TOKEN_UNIT;

/// The limits of the clients made by [`Devnet::client`]: at most 1 token unit per request,
/// 100 per channel, 1,000 over all channels.
pub const CLIENT_LIMITS: Limits = Limits::new(
    U256::from_limbs([TOKEN_UNIT, 0, 0, 0]),
    U256::from_limbs([100 * TOKEN_UNIT, 0, 0, 0]),
    U256::from_limbs([1_000 * TOKEN_UNIT, 0, 0, 0]),
);

/// Builds a [`Devnet`].
#[derive(Debug)]
pub struct DevnetBuilder {
    anvil_path: Option<PathBuf>,
    port: Option<u16>,
    artifacts: Artifacts,
    periods: (u32, u32),
    funds: U256,
}

impl Default for DevnetBuilder {
    fn default() -> Self {
        Self {
            anvil_path: None,
            port: None,
            artifacts: Artifacts::default(),
            periods: CHALLENGE_PERIODS,
            funds: U256::from(DEFAULT_FUNDS),
        }
    }
}

impl DevnetBuilder {
    /// The anvil binary. Default [`chain::default_anvil_path`] (the project's npm-installed
    /// Foundry).
    pub fn anvil_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.anvil_path = Some(path.into());
        self
    }

    /// anvil's port. Default: a free one.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Where the contracts' forge artifacts are. Default: the workspace's `out/`.
    pub fn artifacts(mut self, artifacts: Artifacts) -> Self {
        self.artifacts = artifacts;
        self
    }

    /// The challenge period bounds of the `PaymentChannel` deployment, in seconds. Default
    /// [`CHALLENGE_PERIODS`] (one hour to 30 days).
    pub fn challenge_periods(mut self, min: u32, max: u32) -> Self {
        self.periods = (min, max);
        self
    }

    /// The test stablecoin minted to each of anvil's accounts 1 to 9 (the provider, account 0,
    /// gets none, so its balance is what it earned). Zero mints nothing. Default
    /// [`DEFAULT_FUNDS`].
    pub fn funds(mut self, amount: U256) -> Self {
        self.funds = amount;
        self
    }

    /// Starts anvil, deploys `PaymentChannel` and the test stablecoin from account 0 (in that
    /// order, so a fresh anvil gives them the same addresses every time) and mints the funds.
    pub async fn start(self) -> Result<Devnet> {
        // Fail on unbuilt contracts before anything is started.
        self.artifacts.check()?;
        let (path, port) = (self.anvil_path, self.port);
        let anvil = tokio::task::spawn_blocking(move || chain::spawn_anvil(path.as_deref(), port))
            .await
            .map_err(|e| Error::chain("start anvil", e))??;
        let provider_key = chain::account(&anvil, 0);
        let chain = chain::provider(&anvil, provider_key.clone());
        let contract = self.artifacts.deploy_channel(&chain, self.periods).await?;
        let token = self.artifacts.deploy_stablecoin(&chain).await?;
        if !self.funds.is_zero() {
            for who in anvil.addresses().iter().skip(1) {
                chain::mint(&chain, token, *who, self.funds).await?;
            }
        }
        Ok(Devnet { anvil, provider_key, chain, contract, token })
    }
}

/// anvil (mining each transaction as it arrives) with `PaymentChannel` and the test stablecoin
/// deployed. Account 0 deployed them and is the provider of the nodes started here; the last
/// account is the faucet of [`Devnet::fund`]. Dropping it kills anvil.
#[derive(Debug)]
pub struct Devnet {
    /// The chain.
    pub anvil: AnvilInstance,
    /// anvil's account 0: the deployer, and the provider (payee) of [`Devnet::node_config`].
    pub provider_key: PrivateKeySigner,
    /// A provider signing as `provider_key`.
    pub chain: DynProvider,
    /// The `PaymentChannel` contract.
    pub contract: Address,
    /// The test stablecoin (6 decimals, EIP-2612 and EIP-3009; anyone may mint).
    pub token: Address,
}

impl Devnet {
    /// A devnet with the defaults of [`DevnetBuilder`].
    pub async fn start() -> Result<Self> {
        Self::builder().start().await
    }

    /// Starts building a devnet.
    pub fn builder() -> DevnetBuilder {
        DevnetBuilder::default()
    }

    /// anvil's JSON-RPC URL.
    pub fn rpc_url(&self) -> String {
        self.anvil.endpoint()
    }

    /// The chain id (31337).
    pub fn chain_id(&self) -> u64 {
        self.anvil.chain_id()
    }

    /// The voucher domain of the contract.
    pub fn domain(&self) -> ChannelDomain {
        ChannelDomain::new(self.chain_id(), self.contract)
    }

    /// anvil's account `i` (0 to 9: anvil's well-known test keys).
    ///
    /// # Panics
    ///
    /// If anvil has no account `i`.
    pub fn account(&self, i: usize) -> PrivateKeySigner {
        chain::account(&self.anvil, i)
    }

    /// All of anvil's accounts.
    pub fn accounts(&self) -> Vec<PrivateKeySigner> {
        (0..self.anvil.keys().len()).map(|i| self.account(i)).collect()
    }

    /// A provider of the chain that signs with `key`.
    pub fn provider(&self, key: PrivateKeySigner) -> DynProvider {
        chain::provider(&self.anvil, key)
    }

    /// Sends `eth` wei and mints `tokens` of the test stablecoin to `to`, from the faucet (the
    /// last anvil account, so that the provider's nonces stay the settler's).
    pub async fn fund(&self, to: Address, eth: U256, tokens: U256) -> Result<()> {
        let faucet = self.provider(self.account(self.anvil.keys().len() - 1));
        if !eth.is_zero() {
            chain::send_eth(&faucet, to, eth).await?;
        }
        if !tokens.is_zero() {
            chain::mint(&faucet, self.token, to, tokens).await?;
        }
        Ok(())
    }

    /// A new random key with 1 ETH for gas and `tokens` of the test stablecoin.
    pub async fn fresh_key(&self, tokens: U256) -> Result<PrivateKeySigner> {
        let key = PrivateKeySigner::random();
        self.fund(key.address(), U256::from(10u64).pow(U256::from(18)), tokens).await?;
        Ok(key)
    }

    /// The test stablecoin balance of `who`.
    pub async fn balance(&self, who: Address) -> Result<U256> {
        chain::token_balance(&self.chain, self.token, who).await
    }

    /// The on-chain state of channel `id`.
    pub async fn channel(&self, id: B256) -> Result<IPaymentChannel::Channel> {
        chain::channel(&self.chain, self.contract, id).await
    }

    /// The latest block's timestamp.
    pub async fn now(&self) -> Result<u64> {
        cheats::now(&self.chain).await
    }

    /// Moves the chain's clock forward by `seconds` (and mines a block).
    pub async fn increase_time(&self, seconds: u64) -> Result<()> {
        cheats::increase_time(&self.chain, seconds).await
    }

    /// A ready gateway configuration: charges [`crate::PRICE`] of the test stablecoin on
    /// `GET /weather` of `upstream` (a base URL such as `http://127.0.0.1:8080`), holds the
    /// provider's key (in `dir/provider.key`) and settles, keeps its store in `dir/node-data`,
    /// listens on a free loopback port; see [`node_config`] for the rest.
    pub fn node_config(&self, upstream: &str, dir: &Path) -> Result<Config> {
        let config = node_config(
            &self.rpc_url(),
            self.contract,
            self.token,
            self.provider_key.address(),
            upstream,
            &dir.join("node-data"),
        )?;
        with_provider_key(config, &self.provider_key, dir)
    }

    /// Starts a gateway with [`Self::node_config`] in this process.
    pub async fn start_node(&self, upstream: &str, dir: &Path) -> Result<Gateway> {
        Gateway::start(self.node_config(upstream, dir)?).await
    }

    /// A watcher configuration for the contract, its store in `data_dir`, on a free port,
    /// polling every second, accepting pushes with the bearer `token` (16 characters or more).
    pub fn watcher_config(&self, data_dir: &Path, token: &str) -> Result<WatcherConfig> {
        Ok(WatcherConfig {
            listen: crate::free_port()?,
            data_dir: data_dir.into(),
            rpc_url: self.rpc_url(),
            chain_id: Some(self.chain_id()),
            contract: self.contract,
            token: token.into(),
            poll_interval: Duration::from_secs(1),
            ..WatcherConfig::default()
        })
    }

    /// A client builder for `key` on this chain with [`CLIENT_LIMITS`], its state in memory;
    /// change what you need, then `build()`.
    pub fn client_builder(&self, key: PrivateKeySigner) -> ClientBuilder {
        Client::builder(key)
            .rpc(self.rpc_url())
            .limits(CLIENT_LIMITS)
            .settings(Settings { backoff: Duration::from_millis(50), ..Settings::default() })
    }

    /// A paying client for `key` (see [`Self::client_builder`]).
    pub async fn client(&self, key: PrivateKeySigner) -> Result<Client> {
        Ok(self.client_builder(key).build().await?)
    }

    /// Writes a ready node configuration to `path` (TOML, for `x402-node --config`): the
    /// configuration of [`Self::node_config`] in front of `upstream`, with the provider's key in
    /// `provider.key` and the store in `node-data/` next to it. Returns what it wrote, to
    /// [`NodeFiles::remove`] later.
    pub fn write_node_config(&self, path: &Path, upstream: &str) -> Result<NodeFiles> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let created_dir = (!dir.exists()).then(|| dir.clone());
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let dir = std::fs::canonicalize(&dir).map_err(Error::io(&dir))?;
        let mut config = self.node_config(upstream, &dir)?;
        config.listen = Config::default().listen;
        let text = toml::to_string_pretty(&config)
            .map_err(|e| Error::Io { path: path.into(), source: std::io::Error::other(e) })?;
        let header = format!(
            "# x402-node configuration for the local devnet at {} (chain {}), written by x402-devnet.\n\
             # Run: x402-node --config {}\n\
             # The provider key in provider.key is anvil's test account 0: for local use only.\n\n",
            self.rpc_url(),
            self.chain_id(),
            path.display(),
        );
        std::fs::write(path, header + &text).map_err(Error::io(path))?;
        Ok(NodeFiles {
            config: path.to_path_buf(),
            key: dir.join("provider.key"),
            data_dir: config.data_dir,
            created_dir: created_dir.map(|_| dir),
        })
    }
}

/// The files [`Devnet::write_node_config`] wrote.
#[derive(Debug)]
pub struct NodeFiles {
    /// The TOML configuration.
    pub config: PathBuf,
    /// The provider's key file.
    pub key: PathBuf,
    /// The node's store (created by the node when it runs).
    pub data_dir: PathBuf,
    /// The directory, when it was created for them.
    pub created_dir: Option<PathBuf>,
}

impl NodeFiles {
    /// Removes the files, the node's store, and the directory if it was created for them and
    /// is empty now.
    pub fn remove(self) -> Result<()> {
        for file in [&self.config, &self.key] {
            match std::fs::remove_file(file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(file)(e)),
                _ => {}
            }
        }
        if self.data_dir.exists() {
            std::fs::remove_dir_all(&self.data_dir).map_err(Error::io(&self.data_dir))?;
        }
        if let Some(dir) = &self.created_dir {
            // Fails, as it should, if anything else was put there.
            let _ = std::fs::remove_dir(dir);
        }
        Ok(())
    }
}
