//! The node's configuration: a TOML file, overridden by flags and environment variables.
//!
//! ```toml
//! listen = "127.0.0.1:8402"          # default
//! upstream = "http://127.0.0.1:8080" # default
//! data_dir = "x402-data"             # default
//! admin_token = "change-me"          # default: none (admin endpoints disabled)
//! max_timeout_seconds = 60           # default
//!
//! [chain]
//! rpc_url = "http://127.0.0.1:8545"  # default
//! contract = "0x5FbDB2315678afecb367f032d93F642f64180aa3"   # required
//! # chain_id = 31337                 # default: asked from the RPC
//! confirmations = 2                  # default: blocks before a deposit or top-up is spendable
//! poll_interval_ms = 1000            # default: how often the event follower polls
//! rpc_timeout_ms = 10000             # default: an RPC call taking longer fails (and is retried)
//!
//! [settlement]                       # needs the provider's key
//! enabled = true                     # default
//! interval_secs = 60                 # default: time between background rounds
//! threshold = "0"                    # default: settle a channel once it owes this (0: off)
//! max_age_secs = 86400               # default: settle anything owed for this long
//! exit_margin_secs = 3600            # default: gas cap ignored for exits ending this soon
//! max_batch = 100                    # default: channels per transaction
//! # max_fee_per_gas = 50000000000    # default none: wei; above it only urgent exits settle
//! resend_after_secs = 60             # default: replace a stuck transaction with higher fees
//! close_authorization_ttl_secs = 600 # default: validity of signed close authorisations
//!
//! [[watchers]]                       # default none: watchtowers to push vouchers to
//! url = "http://watcher:8403"
//! token = "a-long-random-secret"     # the watcher's bearer token
//! every = 1                          # default: push after this many new vouchers
//! interval_secs = 5                  # default: and at least this often while any are new
//!
//! [payment]
//! asset = "0x0000000000000000000000000000000000000000"      # default: native token
//! min_challenge_period = 3600        # default, seconds
//! min_deposit = "0"                  # default, token base units
//! max_credit_window = 100            # default: requests one voucher may prepay (1: off)
//! accept_contract_signers = false    # default: refuse ERC-1271 (contract) voucher signers
//! schemes = ["channel-voucher"]      # default; add "exact" for the official EIP-3009 scheme
//! # eip712_name = "USD Coin"         # default: read from the token (exact signs under it)
//! # eip712_version = "2"
//!
//! [provider]
//! key_env = "X402_PROVIDER_KEY"      # default: env var holding the provider's hex key
//! # key_file = "provider.key"        # or a file holding it
//! # address = "0x…"                  # or only the address (verify-only node, no settlement)
//!
//! [relay]                          # gasless opens (EIP-2612 / EIP-3009) at POST /x402/open
//! enabled = false                    # default
//! key_env = "X402_RELAY_KEY"         # default: env var holding the relay's hex key (pays gas)
//! # key_file = "relay.key"           # or a file holding it
//!
//! [cors]                             # browsers on other origins (default: no CORS headers)
//! allowed_origins = ["https://app.example"]  # default none; ["*"]: any origin
//! allowed_headers = ["content-type"] # default: request headers allowed besides the payment ones
//! max_age_secs = 600                 # default: how long browsers cache a preflight
//!
//! [[routes]]
//! path = "/weather"                  # axum syntax: "/items/{id}", "/files/{*path}"
//! methods = ["GET"]                  # default: every method (GET implies HEAD)
//! price = "1000"                     # token base units
//! pricing = "exact"                  # default; "upto": the upstream reports the actual cost
//! description = "Current weather"    #   in the X402-Cost response header
//! # schemes = ["channel-voucher", "exact"]  # default: payment.schemes
//! ```
//!
//! The most specific route wins; see [`crate::routes`].

use std::{net::SocketAddr, path::PathBuf};

use alloy::{
    primitives::{Address, U256},
    signers::local::PrivateKeySigner,
};
use serde::{Deserialize, Serialize};
use x402_protocol::wire::{Pricing, Scheme, u256_dec};

use crate::{Error, Price, Schemes, routes::Routes};

/// The node's configuration. Every field has a default, documented on the field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the gateway listens on. Default `127.0.0.1:8402`.
    pub listen: SocketAddr,
    /// Base URL of the API behind the gateway. Default `http://127.0.0.1:8080`.
    pub upstream: String,
    /// Directory of the node's store. Default `x402-data`.
    pub data_dir: PathBuf,
    /// Bearer token of the `/admin` endpoints. Default none: the endpoints are disabled.
    pub admin_token: Option<String>,
    /// The `maxTimeoutSeconds` advertised in 402s. Default 60.
    pub max_timeout_seconds: u64,
    /// The chain.
    pub chain: ChainConfig,
    /// The payment terms.
    pub payment: PaymentConfig,
    /// The provider's identity.
    pub provider: ProviderConfig,
    /// Priced routes. Default none (everything passes through unpaid).
    pub routes: Vec<RouteConfig>,
    /// Batch settlement.
    pub settlement: SettlementConfig,
    /// Watchtowers the node pushes its latest vouchers to. Default none.
    pub watchers: Vec<WatcherTarget>,
    /// The gasless-open relay.
    pub relay: RelayConfig,
    /// Cross-origin requests from browsers.
    pub cors: CorsConfig,
    /// How the node names itself to clients.
    pub server: ServerConfig,
    /// The x402 facilitator API (`/verify`, `/settle`, `/supported`) for servers that
    /// delegate payments to this node.
    pub facilitator: FacilitatorConfig,
}

/// How the node names itself in 402s.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The public base URL of the gateway, as clients reach it (`https://api.example.com`, or
    /// with a path prefix `https://example.com/api`; no trailing slash, query or fragment):
    /// the 402's `resource.url` is this followed by the request's path and query. Default
    /// none: `http://<the request's Host header>`.
    pub public_url: Option<String>,
    /// Whether to believe `X-Forwarded-Proto` (set by a reverse proxy in front) for the
    /// scheme of `resource.url` when `public_url` is not set. Default `false`.
    pub trust_forwarded: bool,
}

/// The facilitator API. Off unless `token` is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FacilitatorConfig {
    /// The bearer token callers must present (`Authorization: Bearer <token>`), at least 32
    /// characters. Default none: the API is off.
    pub token: Option<String>,
    /// Where the API is mounted: a reserved prefix, never forwarded upstream. Default
    /// `/facilitator`.
    pub path: String,
}

impl Default for FacilitatorConfig {
    fn default() -> Self {
        Self { token: None, path: "/facilitator".into() }
    }
}

/// The shortest facilitator token accepted.
pub const MIN_FACILITATOR_TOKEN_LEN: usize = 32;

/// Checks a `[server] public_url`: `http(s)://host[:port][/path]`, without trailing slash,
/// query, fragment, user info or whitespace.
pub fn check_public_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("{url:?} must start with http:// or https://"))?;
    let host = rest.split('/').next().unwrap_or_default();
    let bad = rest.is_empty()
        || host.is_empty()
        || url.ends_with('/')
        || url.contains(['?', '#', '@', '\\'])
        || url.contains(|c: char| c.is_whitespace() || c.is_control())
        || rest.contains("//")
        || http::HeaderValue::from_str(url).is_err()
        || url.parse::<http::Uri>().is_err();
    if bad {
        return Err(format!(
            "{url:?} is not a base URL like \"https://api.example.com\" (a path prefix is allowed; no trailing \
             slash, query or fragment)"
        ));
    }
    Ok(())
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8402)),
            upstream: "http://127.0.0.1:8080".into(),
            data_dir: PathBuf::from("x402-data"),
            admin_token: None,
            max_timeout_seconds: 60,
            chain: ChainConfig::default(),
            payment: PaymentConfig::default(),
            provider: ProviderConfig::default(),
            routes: Vec::new(),
            settlement: SettlementConfig::default(),
            watchers: Vec::new(),
            relay: RelayConfig::default(),
            cors: CorsConfig::default(),
            server: ServerConfig::default(),
            facilitator: FacilitatorConfig::default(),
        }
    }
}

/// Cross-origin resource sharing, for browser apps on other origins that pay. Preflights
/// (`OPTIONS` with `Access-Control-Request-Method`) are answered by the node without payment;
/// `PAYMENT-REQUIRED` and `PAYMENT-RESPONSE` are exposed to scripts, and the payment request
/// headers are allowed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins allowed (`https://app.example`), or `["*"]` for any. Default none: no CORS
    /// headers are sent and preflights go to the upstream like any request.
    pub allowed_origins: Vec<String>,
    /// Request headers allowed besides `PAYMENT-SIGNATURE`, `X-PAYMENT`, `PAYMENT-SESSION` and
    /// `PAYMENT-CHANNEL`. Default `["content-type"]`.
    pub allowed_headers: Vec<String>,
    /// How long a browser may cache a preflight's answer, in seconds. Default 600.
    pub max_age_secs: u64,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self { allowed_origins: Vec::new(), allowed_headers: vec!["content-type".into()], max_age_secs: 600 }
    }
}

/// Chain settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChainConfig {
    /// JSON-RPC URL. Default `http://127.0.0.1:8545`.
    pub rpc_url: String,
    /// Chain id. Default: asked from the RPC at start.
    pub chain_id: Option<u64>,
    /// The `PaymentChannel` contract. Required.
    pub contract: Option<Address>,
    /// Blocks a deposit or top-up must be buried under before it is spendable. Exits and
    /// closes count at once. Default 2.
    pub confirmations: u64,
    /// How often the event follower polls, in milliseconds. Default 1000.
    pub poll_interval_ms: u64,
    /// How long one RPC call may take, in milliseconds, before it fails: the follower and the
    /// settler then retry, and a payment that needs a chain lookup is refused as
    /// `unavailable`. Without it an endpoint that accepts connections but never answers
    /// would stop the node from following the chain for good. Default 10000.
    pub rpc_timeout_ms: u64,
}

impl Default for ChainConfig {
    fn default() -> Self {
        Self {
            rpc_url: "http://127.0.0.1:8545".into(),
            chain_id: None,
            contract: None,
            confirmations: 2,
            poll_interval_ms: 1000,
            rpc_timeout_ms: 10_000,
        }
    }
}

/// Batch settlement settings (see [`crate::settle`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SettlementConfig {
    /// Whether the gateway settles in the background (it needs the provider's key). Default true.
    pub enabled: bool,
    /// Seconds between background rounds. Default 60.
    pub interval_secs: u64,
    /// Settle a channel once its unsettled amount reaches this, in base units; 0 turns the
    /// rule off. Default `"0"`.
    #[serde(with = "u256_dec")]
    pub threshold: U256,
    /// Settle a channel that owes anything once it was last settled this many seconds ago.
    /// Default 86400.
    pub max_age_secs: u64,
    /// Exits whose challenge period ends within this many seconds are settled even above the
    /// gas cap. Default 3600.
    pub exit_margin_secs: u64,
    /// The most channels in one transaction. Default 100.
    pub max_batch: usize,
    /// The gas cap: above this `maxFeePerGas` (wei) only urgent exits are settled. Default none.
    pub max_fee_per_gas: Option<u64>,
    /// Replace a settlement transaction not mined after this many seconds (sooner near an
    /// exit's end). Default 60 (`x402_chain::SenderConfig::DEFAULT`).
    pub resend_after_secs: u64,
    /// How long a close authorisation signed for a client stays valid, seconds. Default 600.
    pub close_authorization_ttl_secs: u64,
}

impl Default for SettlementConfig {
    fn default() -> Self {
        // One source of the defaults: the policy's.
        let policy = crate::settle::SettlementPolicy::default();
        Self {
            enabled: true,
            interval_secs: policy.interval.as_secs(),
            threshold: policy.threshold,
            max_age_secs: policy.max_age.as_secs(),
            exit_margin_secs: policy.exit_margin.as_secs(),
            max_batch: policy.max_batch,
            max_fee_per_gas: None,
            resend_after_secs: policy.resend_after.as_secs(),
            close_authorization_ttl_secs: 600,
        }
    }
}

impl SettlementConfig {
    /// The settlement policy these settings describe.
    pub fn policy(&self) -> crate::settle::SettlementPolicy {
        use std::time::Duration;
        crate::settle::SettlementPolicy {
            threshold: self.threshold,
            max_age: Duration::from_secs(self.max_age_secs),
            exit_margin: Duration::from_secs(self.exit_margin_secs),
            max_batch: self.max_batch,
            max_fee_per_gas: self.max_fee_per_gas.map(u128::from),
            interval: Duration::from_secs(self.interval_secs),
            resend_after: Duration::from_secs(self.resend_after_secs),
            ..crate::settle::SettlementPolicy::default()
        }
    }
}

/// A watchtower the node pushes its latest vouchers to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatcherTarget {
    /// The watcher's base URL.
    pub url: String,
    /// The watcher's bearer token.
    pub token: String,
    /// Push once this many new vouchers were stored. Default 1 (every voucher).
    #[serde(default = "one")]
    pub every: u64,
    /// And at least this often, in seconds, while any voucher is unpushed. Default 5.
    #[serde(default = "five")]
    pub interval_secs: u64,
}

const fn one() -> u64 {
    1
}

const fn five() -> u64 {
    5
}

/// Payment terms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentConfig {
    /// The token accepted. Default the zero address: the native token.
    pub asset: Address,
    /// The shortest challenge period accepted, in seconds. Default 3600.
    pub min_challenge_period: u64,
    /// The smallest deposit accepted, in token base units. Default `"0"`.
    #[serde(with = "u256_dec")]
    pub min_deposit: U256,
    /// The most requests one voucher may pay ahead for (a credit window): the rest of a
    /// prepaying voucher is spent with a session token instead of a signature per request.
    /// What a client prepays is its own risk, bounded by its own setting. Default 100; 1 turns
    /// sessions off.
    pub max_credit_window: u32,
    /// Whether to accept channels whose voucher signer is a contract (an ERC-1271 wallet), and
    /// ERC-1271 signatures. Such a wallet decides at redemption time whether a signature is
    /// valid, so it can revoke vouchers it signed after being served; only turn this on for
    /// wallets you trust. An EOA delegated with EIP-7702 is not a contract here: its ECDSA
    /// signatures stay valid whatever its code. Default `false`: such channels are refused
    /// with `channel_mismatch`.
    pub accept_contract_signers: bool,
    /// The payment schemes priced routes take unless a route says otherwise:
    /// `"channel-voucher"` (this project's) and/or `"exact"` (the official x402 EVM scheme: an
    /// EIP-3009 transfer per request, settled by the provider's key; fixed-price routes of an
    /// EIP-3009 token only). The 402 lists them in that order. Default `["channel-voucher"]`.
    pub schemes: Vec<Scheme>,
    /// The token's EIP-712 domain name, advertised in 402s as `extra.name` (what EIP-2612 and
    /// EIP-3009 signatures use). Default none: read from the token at startup (EIP-5267
    /// `eip712Domain()`, else `name()` and `version()`), else not advertised.
    pub eip712_name: Option<String>,
    /// The token's EIP-712 domain version (`extra.version`); set with `eip712_name`. Default
    /// none, as `eip712_name`.
    pub eip712_version: Option<String>,
}

impl Default for PaymentConfig {
    fn default() -> Self {
        Self {
            asset: Address::ZERO,
            min_challenge_period: 3600,
            min_deposit: U256::ZERO,
            max_credit_window: 100,
            accept_contract_signers: false,
            schemes: vec![Scheme::ChannelVoucher],
            eip712_name: None,
            eip712_version: None,
        }
    }
}

/// Where the provider's key comes from. The key is never printed or logged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderConfig {
    /// Environment variable holding the hex private key. Default `X402_PROVIDER_KEY`.
    pub key_env: String,
    /// File holding the hex private key. Default none.
    pub key_file: Option<PathBuf>,
    /// The provider's address, for a node without a key (it cannot settle). Default none.
    pub address: Option<Address>,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self { key_env: "X402_PROVIDER_KEY".into(), key_file: None, address: None }
    }
}

/// A hex private key from `key_file`, or else from the `key_env` variable, if either is set.
/// The key material is never echoed in an error.
fn load_key(
    key_file: Option<&PathBuf>,
    key_env: &str,
    what: &str,
) -> Result<Option<PrivateKeySigner>, Error> {
    let raw = if let Some(path) = key_file {
        Some(
            std::fs::read_to_string(path)
                .map_err(|source| Error::ConfigRead { path: path.clone(), source })?,
        )
    } else {
        std::env::var(key_env).ok()
    };
    raw.map(|k| {
        k.trim()
            .parse::<PrivateKeySigner>()
            .map_err(|_| Error::Config(format!("the {what} key is not a valid hex private key")))
    })
    .transpose()
}

/// The relay of gasless opens: it submits payers' signed opens and pays their gas from its own
/// key (never the provider's, whose transactions the settler owns).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Whether `POST /x402/open` relays gasless opens. Default false.
    pub enabled: bool,
    /// Environment variable holding the relay's hex private key. Default `X402_RELAY_KEY`.
    pub key_env: String,
    /// File holding the relay's hex private key. Default none.
    pub key_file: Option<PathBuf>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self { enabled: false, key_env: "X402_RELAY_KEY".into(), key_file: None }
    }
}

impl RelayConfig {
    /// The relay's key, from `key_file` or else the `key_env` variable, if either is set.
    pub fn signer(&self) -> Result<Option<PrivateKeySigner>, Error> {
        load_key(self.key_file.as_ref(), &self.key_env, "relay")
    }
}

impl ProviderConfig {
    /// The provider's key, from `key_file` or else the `key_env` variable, if either is set.
    pub fn signer(&self) -> Result<Option<PrivateKeySigner>, Error> {
        load_key(self.key_file.as_ref(), &self.key_env, "provider")
    }

    /// The provider's address: the key's, or the configured one.
    pub fn address(&self) -> Result<Address, Error> {
        match (self.signer()?, self.address) {
            (Some(key), Some(addr)) if key.address() != addr => Err(Error::Config(format!(
                "provider.address {addr} is not the address of the provider key ({})",
                key.address()
            ))),
            (Some(key), _) => Ok(key.address()),
            (None, Some(addr)) => Ok(addr),
            (None, None) => Err(Error::Config(format!(
                "no provider identity: set {} (or provider.key_file, or provider.address)",
                self.key_env
            ))),
        }
    }
}

/// A priced route (see [`crate::routes`] for the syntax and which route wins).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The path pattern, in axum's syntax: `/weather`, `/items/{id}`, `/files/{*path}`.
    pub path: String,
    /// The methods priced. Default none: every method. `GET` prices `HEAD` too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// The price in token base units (the maximum, for `upto`).
    #[serde(with = "u256_dec")]
    pub price: U256,
    /// `exact` (default) or `upto`.
    #[serde(default)]
    pub pricing: Pricing,
    /// What the route does.
    #[serde(default)]
    pub description: Option<String>,
    /// MIME type of its response.
    #[serde(default)]
    pub mime_type: Option<String>,
    /// Whether a resend of an already-served voucher (its response was lost) gets the kept
    /// response body again (up to 64 KiB, kept 60 s in memory) instead of a `409` with the
    /// receipt only. Default `false`.
    #[serde(default)]
    pub replay_body: bool,
    /// The payment schemes this route takes (see [`PaymentConfig::schemes`]). Default: the
    /// node's `payment.schemes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schemes: Option<Vec<Scheme>>,
}

impl RouteConfig {
    /// The route's [`Price`], taking the node's default `schemes` unless the route names its
    /// own.
    pub fn price_with(&self, schemes: &[Scheme]) -> Price {
        Price {
            amount: self.price,
            pricing: self.pricing,
            description: self.description.clone(),
            mime_type: self.mime_type.clone(),
            replay_body: self.replay_body,
            schemes: Schemes::of(self.schemes.as_deref().unwrap_or(schemes)),
        }
    }

    /// The route's [`Price`], with the schemes it names (default: [`wire::SCHEME`](x402_protocol::wire::SCHEME) only).
    pub fn price(&self) -> Price {
        self.price_with(&[Scheme::ChannelVoucher])
    }
}

impl Config {
    /// Reads a TOML file.
    pub fn load(path: &std::path::Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| Error::ConfigRead { path: path.into(), source })?;
        Self::parse(&text).map_err(|e| match e {
            Error::ConfigParse { line, column, message, .. } => {
                Error::ConfigParse { path: path.into(), line, column, message }
            }
            other => other,
        })
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, Error> {
        toml::from_str(text).map_err(|e| {
            // Not `e.to_string()`: toml quotes the offending line of the file.
            let (line, column) = e.span().map_or((0, 0), |span| position(text, span.start));
            Error::ConfigParse { path: PathBuf::new(), line, column, message: redact_keys(e.message()) }
        })
    }

    /// The table of priced routes.
    pub fn route_table(&self) -> Result<Routes, Error> {
        let mut table = Routes::new();
        for r in &self.routes {
            if r.price.is_zero() {
                return Err(Error::Config(format!("route {} has a zero price", r.path)));
            }
            let price = r.price_with(&self.payment.schemes);
            check_schemes(r.schemes.as_deref().unwrap_or(&self.payment.schemes), &r.path, &price, self)?;
            table.add(&r.path, &r.methods, price).map_err(|e| Error::Config(e.to_string()))?;
        }
        Ok(table)
    }

    /// Whether the node takes the `exact` scheme: named in `payment.schemes` (then the
    /// facilitator API offers it too) or by a route.
    pub fn takes_exact(&self) -> bool {
        self.payment.schemes.contains(&Scheme::Exact)
            || self.routes.iter().any(|r| r.schemes.as_deref().is_some_and(|s| s.contains(&Scheme::Exact)))
    }

    /// Checks settings that TOML types cannot express.
    pub fn validate(&self) -> Result<(), Error> {
        if self.chain.contract.is_none() {
            return Err(Error::Config("chain.contract is required".into()));
        }
        check_schemes(&self.payment.schemes, "payment.schemes", &Price::exact(U256::from(1)), self)?;
        if self.payment.eip712_name.is_some() != self.payment.eip712_version.is_some() {
            return Err(Error::Config("payment.eip712_name and payment.eip712_version go together".into()));
        }
        self.route_table()?;
        for origin in &self.cors.allowed_origins {
            let valid = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.trim_end_matches('/').contains(|c: char| c.is_whitespace())
                    && origin.matches('/').count() == 2
                    && http::HeaderValue::from_str(origin).is_ok());
            if !valid {
                return Err(Error::Config(format!(
                    "cors.allowed_origins: {origin:?} is not \"*\" or an origin like \"https://app.example\""
                )));
            }
        }
        if self.cors.allowed_origins.len() > 1 && self.cors.allowed_origins.iter().any(|o| o == "*") {
            return Err(Error::Config("cors.allowed_origins: \"*\" must be alone".into()));
        }
        for h in &self.cors.allowed_headers {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(Error::Config(format!("cors.allowed_headers: {h:?} is not a header name")));
            }
        }
        if let Some(token) = &self.admin_token {
            crate::auth::check_token(token).map_err(|e| Error::Config(format!("admin_token: {e}")))?;
        }
        if let Some(url) = &self.server.public_url {
            check_public_url(url).map_err(|e| Error::Config(format!("server.public_url: {e}")))?;
        }
        if self.payment.eip712_name.is_some() != self.payment.eip712_version.is_some() {
            return Err(Error::Config("payment.eip712_name and payment.eip712_version go together".into()));
        }
        let f = &self.facilitator;
        if let Some(token) = &f.token {
            crate::auth::check_token(token).map_err(|e| Error::Config(format!("facilitator.token: {e}")))?;
            if token.len() < MIN_FACILITATOR_TOKEN_LEN {
                return Err(Error::Config(format!(
                    "facilitator.token: at least {MIN_FACILITATOR_TOKEN_LEN} characters"
                )));
            }
        }
        let segment_ok =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !f.path.starts_with('/') || f.path.len() < 2 || !f.path[1..].split('/').all(segment_ok) {
            return Err(Error::Config(format!(
                "facilitator.path: {:?} is not a path like \"/facilitator\"",
                f.path
            )));
        }
        // Under a reserved prefix, every spelling of the path (another case, a trailing part) is
        // answered by the node and never forwarded upstream with the caller's bearer token.
        if !crate::routes::is_reserved(&f.path) {
            return Err(Error::Config(format!(
                "facilitator.path: {:?} must be under one of the node's reserved prefixes ({})",
                f.path,
                crate::routes::RESERVED_PREFIXES.join(", ")
            )));
        }
        if f.token.is_some() {
            let prefix = format!("{}/", f.path);
            for r in &self.routes {
                if r.path == f.path || r.path.starts_with(&prefix) {
                    return Err(Error::Config(format!(
                        "route {} is under facilitator.path {}, which is reserved",
                        r.path, f.path
                    )));
                }
            }
        }
        if self.chain.poll_interval_ms == 0 || self.chain.rpc_timeout_ms == 0 {
            return Err(Error::Config(
                "chain.poll_interval_ms and chain.rpc_timeout_ms must be positive".into(),
            ));
        }
        let s = &self.settlement;
        if s.max_batch == 0 || s.interval_secs == 0 || s.resend_after_secs == 0 {
            return Err(Error::Config(
                "settlement.max_batch, interval_secs and resend_after_secs must be positive".into(),
            ));
        }
        for w in &self.watchers {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                return Err(Error::Config(format!("watcher url {:?} must be http(s)", w.url)));
            }
            crate::auth::check_token(&w.token)
                .map_err(|e| Error::Config(format!("the token of watcher {}: {e}", w.url)))?;
            if w.every == 0 || w.interval_secs == 0 {
                return Err(Error::Config(format!(
                    "watcher {}: every and interval_secs must be positive",
                    w.url
                )));
            }
        }
        Ok(())
    }
}

/// Checks the schemes `what` (a route's path, or `payment.schemes`) takes: at least one, none
/// twice, and `exact` only for a fixed price in a token (EIP-3009 moves a token, and one fixed
/// amount).
fn check_schemes(schemes: &[Scheme], what: &str, price: &Price, config: &Config) -> Result<(), Error> {
    if schemes.is_empty() {
        return Err(Error::Config(format!("{what}: schemes must name at least one scheme")));
    }
    if schemes.iter().enumerate().any(|(i, s)| schemes[..i].contains(s)) {
        return Err(Error::Config(format!("{what}: a scheme is named twice")));
    }
    if schemes.contains(&Scheme::Exact) {
        if price.pricing == Pricing::Upto {
            return Err(Error::Config(format!(
                "{what}: the exact scheme needs a fixed price; give this upto route schemes = [\"channel-voucher\"]"
            )));
        }
        if config.payment.asset.is_zero() {
            return Err(Error::Config(format!(
                "{what}: the exact scheme needs an EIP-3009 token (payment.asset), not the native token"
            )));
        }
    }
    Ok(())
}

/// The 1-based line and column of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// `text` with every run of 64 or more hex digits (a private key, with or without `0x`)
/// replaced by `<redacted>`: parse errors may quote a value.
fn redact_keys(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 64 {
            out.push_str("<redacted>");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_full_file() {
        let c = Config::parse("").unwrap();
        assert_eq!(c, Config::default());
        assert!(c.validate().is_err(), "contract is required");

        let c = Config::parse(
            r#"
            listen = "0.0.0.0:9000"
            upstream = "http://api:80"
            admin_token = "0123456789abcdef"
            [chain]
            contract = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
            chain_id = 31337
            [payment]
            min_deposit = "1000000"
            [[routes]]
            path = "/llm"
            price = "5000"
            pricing = "upto"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.payment.min_deposit, U256::from(1_000_000));
        assert_eq!(c.routes[0].price().pricing, Pricing::Upto);
        assert_eq!(c.payment.min_challenge_period, 3600);
        assert!(!c.payment.accept_contract_signers, "contract signers are refused by default");
        let opted_in = Config::parse("[payment]\naccept_contract_signers = true").unwrap();
        assert!(opted_in.payment.accept_contract_signers);
    }

    #[test]
    fn rejects_bad_files() {
        for bad in [
            "unknown_key = 1",
            "[[routes]]\npath = \"/x\"\nprice = \"0x10\"",
            "[[routes]]\npath = \"/x\"\nprice = 10",
            "[chain]\ncontract = \"0x12\"",
        ] {
            assert!(Config::parse(bad).is_err(), "{bad}");
        }
        let mut c = Config::default();
        c.chain.contract = Some(Address::repeat_byte(1));
        c.routes.push(RouteConfig {
            path: "x".into(),
            methods: Vec::new(),
            price: U256::from(1),
            pricing: Pricing::Exact,
            description: None,
            mime_type: None,
            replay_body: false,
            schemes: None,
        });
        assert!(c.validate().is_err());
    }

    #[test]
    fn server_and_facilitator() {
        let base = "[chain]\ncontract = \"0x5FbDB2315678afecb367f032d93F642f64180aa3\"\n";
        let good = [
            "[server]\npublic_url = \"https://api.example.com\"",
            "[server]\npublic_url = \"http://127.0.0.1:8402\"\ntrust_forwarded = true",
            "[server]\npublic_url = \"https://example.com/api/v1\"",
            "[facilitator]\ntoken = \"0123456789abcdef0123456789abcdef\"",
            "[facilitator]\ntoken = \"0123456789abcdef0123456789abcdef\"\npath = \"/x402/facilitator\"",
            "[payment]\neip712_name = \"USD Coin\"\neip712_version = \"2\"",
        ];
        for text in good {
            let c = Config::parse(&format!("{base}{text}")).unwrap();
            c.validate().unwrap_or_else(|e| panic!("{text}: {e}"));
        }
        let c = Config::parse(&format!("{base}{}", good[2])).unwrap();
        assert_eq!(c.server.public_url.as_deref(), Some("https://example.com/api/v1"));
        assert_eq!(Config::default().facilitator.path, "/facilitator");
        let bad = [
            "[server]\npublic_url = \"api.example.com\"",
            "[server]\npublic_url = \"https://api.example.com/\"",
            "[server]\npublic_url = \"https://api.example.com?x=1\"",
            "[server]\npublic_url = \"https://api.example.com#f\"",
            "[server]\npublic_url = \"https://user@api.example.com\"",
            "[server]\npublic_url = \"https://\"",
            "[server]\npublic_url = \"https://a b\"",
            "[server]\npublic_url = \"ftp://api.example.com\"",
            "[facilitator]\ntoken = \"0123456789abcdef\"",
            "[facilitator]\ntoken = \"0123456789abcdef0123456789abcdef\"\npath = \"facilitator\"",
            "[facilitator]\ntoken = \"0123456789abcdef0123456789abcdef\"\npath = \"/\"",
            "[facilitator]\ntoken = \"0123456789abcdef0123456789abcdef\"\npath = \"/f/\"",
            "[facilitator]\ntoken = \"0123456789abcdef0123456789abcdef\"\npath = \"/pay/facilitator\"",
            "[facilitator]\ntoken = \"0123456789abcdef0123456789abcdef\"\n[[routes]]\npath = \"/facilitator/verify\"\nprice = \"1\"",
            "[payment]\neip712_name = \"USD Coin\"",
        ];
        for text in bad {
            let c = Config::parse(&format!("{base}{text}")).unwrap();
            assert!(c.validate().is_err(), "{text}");
        }
    }

    #[test]
    fn settlement_and_watchers() {
        let c = Config::parse(
            r#"
            [chain]
            contract = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
            confirmations = 6
            [settlement]
            threshold = "5000000"
            max_fee_per_gas = 50000000000
            max_batch = 20
            [[watchers]]
            url = "https://w.example"
            token = "0123456789abcdef"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        let policy = c.settlement.policy();
        assert_eq!(
            (policy.threshold, policy.max_fee_per_gas, policy.max_batch),
            (U256::from(5_000_000), Some(50_000_000_000), 20)
        );
        assert_eq!(policy.max_age.as_secs(), 86_400);
        assert_eq!((c.chain.confirmations, c.watchers[0].every, c.watchers[0].interval_secs), (6, 1, 5));
        assert_eq!(c.chain.rpc_timeout_ms, 10_000, "default");

        let bad = [
            ("short watcher token", "[[watchers]]\nurl = \"http://w\"\ntoken = \"short\""),
            ("watcher url", "[[watchers]]\nurl = \"w:1\"\ntoken = \"0123456789abcdef\""),
            ("zero batch", "[settlement]\nmax_batch = 0"),
            ("zero poll", "[chain]\npoll_interval_ms = 0"),
            ("zero rpc timeout", "[chain]\nrpc_timeout_ms = 0"),
        ];
        for (name, text) in bad {
            let mut c = Config::parse(text).unwrap();
            c.chain.contract = Some(Address::repeat_byte(1));
            assert!(c.validate().is_err(), "{name}");
        }
    }

    #[test]
    fn provider_identity() {
        let p = ProviderConfig { key_env: "X402_TEST_NO_SUCH_VAR".into(), ..Default::default() };
        assert!(p.address().is_err());
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKeySigner::random();
        let path = dir.path().join("k");
        std::fs::write(&path, format!("{}\n", alloy::hex::encode(key.to_bytes()))).unwrap();
        let p = ProviderConfig { key_file: Some(path.clone()), ..Default::default() };
        assert_eq!(p.address().unwrap(), key.address());
        let p = ProviderConfig {
            key_file: Some(path),
            address: Some(Address::repeat_byte(1)),
            ..Default::default()
        };
        assert!(p.address().is_err());
        std::fs::write(dir.path().join("bad"), "not a key").unwrap();
        let p = ProviderConfig { key_file: Some(dir.path().join("bad")), ..Default::default() };
        let err = p.address().unwrap_err().to_string();
        assert!(!err.contains("not a key"), "the key material must not be echoed: {err}");
    }

    /// A key pasted into the file by mistake (a field that does not exist, a value of the wrong
    /// type) is not quoted back in the error, which ends up in logs.
    #[test]
    fn parse_errors_do_not_quote_the_file() {
        let key = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
        for (text, expected, line) in [
            (format!("[provider]\nkey = \"0x{key}\""), "unknown field `key`", 2),
            (format!("\n\n[provider]\nkey_env = 0x{key}\n"), "integer", 4),
            (format!("[chain]\npoll_interval_ms = \"{}\"", key.to_uppercase()), "invalid type", 2),
            (format!("max_timeout_seconds = \"{key}\""), "invalid type", 1),
        ] {
            let err = Config::parse(&text).unwrap_err();
            let Error::ConfigParse { line: at, .. } = &err else { panic!("a parse error: {err}") };
            let shown = format!("{err} {err:?}");
            assert!(!shown.to_lowercase().contains(&key[..32]), "{shown}");
            assert!(!shown.to_lowercase().contains(&key[32..]), "{shown}");
            assert!(shown.contains(expected), "{shown}");
            assert_eq!(*at, line, "{shown}");
        }
        assert_eq!(redact_keys(&format!("a 0x{key}, b")), "a 0x<redacted>, b");
        assert_eq!(
            redact_keys("address 0x5FbDB2315678afecb367f032d93F642f64180aa3"),
            "address 0x5FbDB2315678afecb367f032d93F642f64180aa3"
        );
    }

    #[test]
    fn relay_settings_and_key() {
        let c = Config::parse("[relay]\nenabled = true\nkey_file = \"relay.key\"").unwrap();
        assert!(c.relay.enabled);
        assert_eq!(c.relay.key_env, "X402_RELAY_KEY", "default kept");
        assert!(Config::parse("[relay]\nkey = \"0x01\"").is_err(), "unknown field");
        assert_eq!(Config::default().relay, RelayConfig::default());
        assert!(!RelayConfig::default().enabled, "off unless asked for");

        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKeySigner::random();
        let path = dir.path().join("relay.key");
        std::fs::write(&path, alloy::hex::encode(key.to_bytes())).unwrap();
        let r = RelayConfig { key_file: Some(path), ..Default::default() };
        assert_eq!(r.signer().unwrap().map(|k| k.address()), Some(key.address()));
        let r = RelayConfig { key_env: "X402_TEST_NO_SUCH_VAR".into(), ..Default::default() };
        assert!(r.signer().unwrap().is_none());
        std::fs::write(dir.path().join("bad"), "0xdeadbeef-secret").unwrap();
        let r = RelayConfig { key_file: Some(dir.path().join("bad")), ..Default::default() };
        let err = r.signer().unwrap_err().to_string();
        assert!(err.contains("relay key") && !err.contains("secret"), "{err}");
    }

    #[test]
    fn schemes_node_wide_and_per_route() {
        let base = "[chain]\ncontract = \"0x5FbDB2315678afecb367f032d93F642f64180aa3\"\n";
        let token = "[payment]\nasset = \"0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512\"\n";
        let parse = |text: String| {
            let c = Config::parse(&text).unwrap();
            c.validate().map(|()| c)
        };
        let c = parse(format!("{base}[[routes]]\npath = \"/a\"\nprice = \"1\"")).unwrap();
        assert_eq!(c.payment.schemes, [Scheme::ChannelVoucher], "default");
        assert!(!c.takes_exact());
        let c = parse(format!(
            "{base}{token}schemes = [\"channel-voucher\", \"exact\"]\n[[routes]]\npath = \"/a\"\nprice = \"1\"\n[[routes]]\npath = \"/b\"\nprice = \"9\"\npricing = \"upto\"\nschemes = [\"channel-voucher\"]\n[[routes]]\npath = \"/c\"\nprice = \"1\"\nschemes = [\"exact\"]"
        ))
        .unwrap();
        assert!(c.takes_exact());
        let table = c.route_table().unwrap();
        let schemes = |path: &str| table.find(&http::Method::GET, path).unwrap().price.schemes;
        assert_eq!(schemes("/a"), Schemes { channel_voucher: true, exact: true });
        assert_eq!(schemes("/b"), Schemes { channel_voucher: true, exact: false });
        assert_eq!(schemes("/c"), Schemes { channel_voucher: false, exact: true });

        for (name, text) in [
            (
                "exact on an upto route",
                format!(
                    "{base}{token}schemes = [\"exact\"]\n[[routes]]\npath = \"/b\"\nprice = \"9\"\npricing = \"upto\""
                ),
            ),
            (
                "exact per route on an upto route",
                format!(
                    "{base}{token}[[routes]]\npath = \"/b\"\nprice = \"9\"\npricing = \"upto\"\nschemes = [\"exact\"]"
                ),
            ),
            ("exact in the native token", format!("{base}[payment]\nschemes = [\"exact\"]")),
            (
                "exact per route in the native token",
                format!("{base}[[routes]]\npath = \"/a\"\nprice = \"1\"\nschemes = [\"exact\"]"),
            ),
            ("no scheme", format!("{base}{token}schemes = []")),
            ("no scheme on a route", format!("{base}[[routes]]\npath = \"/a\"\nprice = \"1\"\nschemes = []")),
            ("twice", format!("{base}{token}schemes = [\"exact\", \"exact\"]")),
            ("half a domain", format!("{base}{token}eip712_name = \"Test USD\"")),
        ] {
            assert!(parse(text).is_err(), "{name}");
        }
        assert!(Config::parse(&format!("{base}{token}schemes = [\"channel\"]")).is_err(), "unknown scheme");
    }

    /// The README's example of a gateway taking both schemes.
    #[test]
    fn the_readme_both_schemes_example_is_valid() {
        let readme = include_str!("../../README.md");
        let start = readme.find("### The gateway accepts both schemes").expect("the section");
        let block = &readme[start..];
        let block = &block[block.find("```toml\n").expect("its example") + 8..];
        let block = &block[..block.find("```").expect("the end of the example")];
        let mut config = Config::parse(block).expect("parses");
        config.chain.contract = Some(Address::repeat_byte(1));
        config.validate().expect("validates");
        assert!(config.takes_exact());
        let mut upto = config.clone();
        upto.routes[1].schemes = None;
        assert!(upto.validate().is_err(), "exact is refused for the upto route");
    }

    #[test]
    fn the_readme_example_is_a_valid_config() {
        let readme = include_str!("../../README.md");
        let start = readme.find("# node.toml:").expect("the README's node.toml example");
        let block = &readme[start..];
        let block = &block[..block.find("```").expect("the end of the example")];
        let config = Config::parse(block).expect("the README's node.toml parses");
        config.validate().expect("and validates");
        assert_eq!(config.payment.max_credit_window, 100);
        assert!(!config.relay.enabled);
        assert_eq!(config.chain.rpc_timeout_ms, 10_000);
        assert!(!config.payment.accept_contract_signers);
        let replayed: Vec<_> =
            config.routes.iter().map(|r| (r.path.as_str(), r.price().replay_body)).collect();
        assert_eq!(replayed, [("/weather", false), ("/v1/chat/completions", false), ("/items/{id}", true)]);
    }
}
